//! The command line: `weft <command> [flags]`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use weft_config::Duration;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "A programmable proxy: HTTP/1.1, HTTP/2, gRPC, TLS and TCP, with WebAssembly filters"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    /// Worker threads of the runtime (default: one per core).
    #[arg(long, global = true, env = "WEFT_WORKER_THREADS")]
    pub workers: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct LogArgs {
    /// Log level or filter (`info`, `debug`, `weft_proxy=debug,info`).
    #[arg(long, global = true, env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a proxy from a static config file.
    ///
    /// The file is re-read on SIGHUP and whenever it changes; an invalid file is refused and the
    /// running config stays. SIGTERM or Ctrl-C drain: stop accepting, finish in-flight requests.
    Proxy(ProxyArgs),
    /// Run everything on localhost to try weft: a demo upstream and a proxy in front of it.
    Up(UpArgs),
}

#[derive(Args)]
pub struct ProxyArgs {
    /// The config file (YAML, or JSON when it ends in .json).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Where the admin API listens (/ready, /metrics, /config, /clusters).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// How long open connections may finish on shutdown or when their listener is removed.
    #[arg(long, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Where compiled filter modules are kept, so a restart does not compile them again
    /// (default: $XDG_CACHE_HOME/weft/modules, or ~/.cache/weft/modules).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Check the config file and exit: 0 when valid, 2 with the errors when not.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args)]
pub struct UpArgs {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the proxy's admin API listens.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Where the demo upstream listens.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub upstream: SocketAddr,
}
