//! The `authgate` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    authgate::run(authgate::cli::Cli::parse())
}
