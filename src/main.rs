//! The `cloud` binary: parses the command line and hands over to [`minicloud::cli`].

use std::process::ExitCode;

/// mimalloc returns freed memory to the system far more readily than glibc's allocator, whose
/// per-thread arenas kept the server at several times its working set after large requests
/// (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    minicloud::cli::run().await
}
