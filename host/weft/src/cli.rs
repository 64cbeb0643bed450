//! The command line: `weft <command> [flags]`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use weft_config::{ByteSize, Duration};

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
    /// Run a proxy, from a static config file (--config) or following a control plane (--control).
    ///
    /// A file is re-read on SIGHUP and whenever it changes; an invalid file is refused and the
    /// running config stays. With --control, each version the control plane sends is prepared
    /// whole, swapped in and acknowledged (or refused with the reason); the last good one is kept
    /// in --data and served while the control plane is away. SIGTERM or Ctrl-C drain: stop
    /// accepting, finish in-flight requests.
    Proxy(ProxyArgs),
    /// Run everything on localhost to try weft: a control plane, a proxy following it, demo
    /// upstreams, and the built-in router, policy and chaos filters deployed through it.
    Up(UpArgs),
    /// Run the control plane: it stores filter modules and config versions and serves them.
    ///
    /// The first start makes an admin token, writes it to DATA/admin-token and prints it once.
    /// SIGTERM or Ctrl-C stop it; everything acknowledged is on disk already.
    Control(ControlArgs),
    /// Filter modules on a control plane.
    Module(ModuleArgs),
    /// Apply config resources (YAML or JSON) on a control plane, atomically, as a new version.
    ///
    /// The document is validated whole first; nothing changes when any of it is wrong. Filters
    /// name modules by digest (sha256:<hex>, as `weft module push` prints it).
    Apply(ApplyArgs),
    /// Show what a control plane holds, as a table or JSON.
    Get(GetArgs),
    /// Make an earlier config version current again (as a new version: history only grows).
    Rollback(RollbackArgs),
    /// Chaos experiments on a control plane: run one and follow it, list them, show one's
    /// report, abort one or all (the kill switch).
    Chaos(ChaosArgs),
    /// Join tokens, with which new proxies get their mesh identity.
    Token(crate::mesh_cmd::TokenArgs),
    /// The mesh's certificate authority: its status and root rotation.
    Mesh(crate::mesh_cmd::MeshArgs),
}

/// The control plane's data dir when `--data` is not given (relative to the working folder).
pub const DEFAULT_DATA_DIR: &str = "weft-data";

#[derive(Args)]
pub struct ControlArgs {
    /// Where the store (modules, config versions) and the admin token are kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Where the API listens (REST, and gRPC for proxies, on one port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// The largest module `weft module push` may upload (413 beyond).
    #[arg(long, default_value = "32MiB")]
    pub max_module_size: ByteSize,
    #[command(flatten)]
    pub mesh: crate::mesh_cmd::ControlMeshArgs,
}

/// How a command reaches the control plane.
#[derive(Args)]
pub struct RemoteArgs {
    /// The control plane's URL.
    #[arg(long, env = "WEFT_CONTROL", default_value = "http://127.0.0.1:7700")]
    pub control: String,
    /// The admin token. Without it, a control plane on this machine is asked with the token in
    /// ./weft-data/admin-token, when that file exists.
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args)]
pub struct ModuleArgs {
    #[command(subcommand)]
    pub command: ModuleCommand,
}

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Upload a Proxy-Wasm module; prints its digest (sha256:<hex>) for configs to name it by.
    Push {
        /// The module (.wasm).
        file: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Args)]
pub struct ApplyArgs {
    /// The config document (YAML, or JSON when it ends in .json); `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Args)]
pub struct GetArgs {
    /// What to show.
    #[arg(value_enum)]
    pub what: GetWhat,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GetWhat {
    /// The stored modules and the filters that use them.
    Modules,
    /// The current config version and its resources.
    Config,
    /// The config version history.
    Versions,
    /// The proxies that connected: labels, the version each runs, the last it refused.
    Proxies,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub command: ChaosCommand,
}

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Start an experiment (or a schedule of them) from FILE and follow it to its end.
    ///
    /// The experiment is checked whole first; nothing starts when any of it is wrong. While it
    /// runs, what happens is printed as it happens (faults applied per proxy, guard readings), and
    /// its report at the end. Ctrl-C aborts it: its faults are taken out at once. Exit code 0 when
    /// it ran its course, 1 when its guard or someone ended it early, 2 when it was refused.
    Run {
        /// The experiment (YAML, or JSON when it ends in .json); `-` reads standard input.
        file: PathBuf,
        /// Start it and return at once, printing its id (follow it with `weft chaos show ID`).
        #[arg(long)]
        detach: bool,
        /// Output format of the final report.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Every experiment and schedule: status, proxies, how each ended.
    List {
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// One experiment's report: target, faults, timeline, guard readings, results before,
    /// during and after the faults, and each proxy's part (live while it runs).
    Show {
        /// The experiment's id (exp-7).
        id: String,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// End an experiment now (a schedule: no more runs), or every one with --all: their faults
    /// are taken out at once.
    Abort {
        /// The experiment's id (exp-7).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// The kill switch: every experiment and schedule.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Args)]
pub struct RollbackArgs {
    /// The version to make current again (see `weft get versions`).
    pub version: u64,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Args)]
pub struct ProxyArgs {
    /// The config file (YAML, or JSON when it ends in .json).
    #[arg(long, short = 'c', value_name = "FILE", required_unless_present = "control", conflicts_with = "control")]
    pub config: Option<PathBuf>,
    /// Take config from this control plane instead of a file (its gRPC port, e.g.
    /// http://127.0.0.1:7700); keeps serving its last config while it is away.
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,
    /// The control plane's admin token (with --control). A proxy with a mesh identity
    /// (--service) needs none: it authenticates with the credential it got when it joined.
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true, requires = "control")]
    pub token: Option<String>,
    /// This proxy's name at the control plane (with --control; default: the host name).
    #[arg(long, value_name = "ID", requires = "control")]
    pub node: Option<String>,
    /// A label the control plane's selectors match, as KEY=VALUE (repeatable; with --control).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, requires = "control")]
    pub labels: Vec<(String, String)>,
    /// Where a managed proxy keeps its last acknowledged config and modules (with --control),
    /// and its mesh identity (identity/).
    #[arg(long, value_name = "DIR", default_value = "weft-proxy-data")]
    pub data: PathBuf,
    #[command(flatten)]
    pub identity: crate::identity::IdentityArgs,
    /// Where the admin API listens (/ready, /metrics, /config, /clusters).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Serve the Toxiproxy HTTP API here (off unless given; Toxiproxy's port is 8474), so
    /// Toxiproxy's clients make tcp proxies with L4 toxics (latency, bandwidth, slow_close,
    /// timeout, reset_peer, slicer, limit_data) on this proxy. Port 0 picks a free port; the
    /// address bound is logged and shown in the admin /config.
    #[arg(long, value_name = "ADDR")]
    pub toxiproxy_listen: Option<SocketAddr>,
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
    /// Where the second demo upstream (the canary of the traffic split) listens.
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub canary: SocketAddr,
    /// Where the control plane listens (REST and gRPC).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub control: SocketAddr,
    /// Where the proxy serves the Toxiproxy HTTP API (L4 toxics on tcp proxies, for
    /// Toxiproxy's clients).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8474")]
    pub toxiproxy_listen: SocketAddr,
    /// Do not serve the Toxiproxy API.
    #[arg(long, conflicts_with = "toxiproxy_listen")]
    pub no_toxiproxy: bool,
    /// Where the control plane keeps its store and admin token, and the proxy its copy of the
    /// config: the same folder `weft get …` reads the token from by default.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// A folder with the built-in filters already built (weft_router.wasm, weft_policy.wasm,
    /// weft_chaos.wasm); without it they are built from weft's source tree.
    #[arg(long, value_name = "DIR", env = "WEFT_UP_FILTERS")]
    pub filters: Option<PathBuf>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE, e.g. env=prod")),
    }
}
