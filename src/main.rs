//! The `cloud` binary: parses the command line and hands over to [`minicloud::cli`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    minicloud::cli::run().await
}
