//! The `gatehouse` binary: parse the command line, run it, map the result to an exit code.

use clap::Parser;

/// mimalloc rather than glibc's malloc: the proxy allocates and frees on many threads (a record
/// built on a proxy thread is freed on the store's writer thread), where glibc's slow paths
/// cost a tenth of the proxy's CPU per call (`benches/proxy_load.rs` measures with it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Logs go to stderr (stdout is for command output); RUST_LOG overrides the level.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,hyper=warn".into()),
        )
        .init();
    let cli = gatehouse::cli::Cli::parse();
    let code = match gatehouse::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            gatehouse::cli::EXIT_INVALID
        }
    };
    std::process::exit(code);
}
