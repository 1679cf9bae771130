//! The `cloud` binary, minicloud's composition of client and server: it parses the whole
//! command line, runs `cloud server` and `cloud up` (which start a server in this process,
//! [`serve`] and [`up`]) itself and hands every other command to `minicloud-cli`.

mod serve;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc returns freed memory to the system far more readily than glibc's allocator, whose
/// per-thread arenas kept the server at several times its working set after large requests
/// (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// minicloud: a self-hosted mini cloud on Docker, run the way Kubernetes runs a cluster.
#[derive(Debug, Parser)]
#[command(name = "cloud", version, about, propagate_version = true)]
struct Cloud {
    #[command(flatten)]
    global: minicloud_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server and the controllers (SQLite in the data directory unless
    /// --database-url says otherwise).
    Server(serve::ServerArgs),
    /// Start an embedded control plane, apply manifests, wait until they are Ready, print the
    /// endpoints and keep running until Ctrl-C (`--down` removes everything then).
    Up(up::UpArgs),
    #[command(flatten)]
    Client(minicloud_cli::Command),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cloud = Cloud::parse();
    // The catalog of every command: the CLI's, and the server's (the console's gallery, and
    // Stacks naming a template, validated by the API).
    cloud.global.use_template_directories();
    let outcome = match cloud.command {
        Command::Client(command) => return minicloud_cli::run(cloud.global, command, Cloud::command).await,
        Command::Server(args) => serve::run(args).await,
        Command::Up(args) => up::run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            minicloud_cli::report(&error);
            ExitCode::FAILURE
        }
    }
}
