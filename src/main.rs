//! The `authgate` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a proxied request makes a few dozen short-lived
/// allocations (header maps, boxed bodies, futures), and glibc spent ~10 % of all
/// instructions on them (callgrind, docs/performance.md); mimalloc's thread-local free
/// lists serve them in a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    authgate::run(authgate::cli::Cli::parse())
}
