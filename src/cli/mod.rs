//! The `cloud` command line: argument parsing (clap) and one module per command.

mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// minicloud: a self-hosted mini cloud on Docker, run the way Kubernetes runs a cluster.
#[derive(Debug, Parser)]
#[command(name = "cloud", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests without a server: YAML, schema and semantic rules, with file:line:col
    /// for every problem.
    Validate {
        /// Manifest files, directories, or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Include subdirectories of directories.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
}

/// Runs the command line and returns the process exit code (0 success, 1 error).
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Validate { files, recursive } => validate::run(&files, recursive),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
