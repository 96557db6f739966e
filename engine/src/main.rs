//! The `tandem` command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tandem::cli::Cli::parse();
    tandem::cli::init_logging(&cli.log);
    match tandem::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
