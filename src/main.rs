//! The `gatehouse` binary: parse the command line, run it, map the result to an exit code.

use clap::Parser;

fn main() {
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
