//! The `weft` binary: command-line parsing and wiring. The work happens in the library crates.

mod allocator;
mod chaos_cmd;
mod cli;
mod client;
mod control_cmd;
mod demo_upstream;
mod identity;
mod logging;
mod managed;
mod managed_experiments;
mod mesh_cmd;
mod proxy_cmd;
mod remote_cmd;
mod table;
mod up;

use clap::Parser;
use std::process::ExitCode;

/// Exit code for bad usage or an invalid config, as every weft command uses it.
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log);
    let workers = cli.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    // One worker needs no work stealing: the single-threaded scheduler is cheaper per request.
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            cli::Command::Proxy(args) => proxy_cmd::run(args, workers).await,
            cli::Command::Up(args) => up::run(args).await,
            cli::Command::Control(args) => control_cmd::run(args).await,
            cli::Command::Module(cli::ModuleArgs { command: cli::ModuleCommand::Push { file, remote } }) => {
                remote_cmd::push(&file, &remote).await
            }
            cli::Command::Apply(args) => remote_cmd::apply(&args).await,
            cli::Command::Get(args) => remote_cmd::get(&args).await,
            cli::Command::Rollback(args) => remote_cmd::rollback(&args).await,
            cli::Command::Token(args) => mesh_cmd::token(&args).await,
            cli::Command::Mesh(args) => mesh_cmd::mesh(&args).await,
            cli::Command::Chaos(args) => chaos_cmd::run(args.command).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How a command failed, which decides the exit code.
pub enum Failure {
    /// Bad usage or invalid config: exit 2.
    Invalid(String),
    /// Anything else: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}
