//! The `gatehouse` binary: parse the command line, run it, map the result to an exit code.

use clap::Parser;

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
