//! The `kheishctl` binary: parse the command line, run the command, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

use kheishctl::cli::Cli;
use kheishctl::exit::{is_broken_pipe, status_for, ExitStatus};
use kheishctl::{commands, output};

/// mimalloc instead of glibc's malloc (see `Cargo.toml`): the daemon's threads allocate many
/// small JSON values on one thread and free them on another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `COMPLETE=<shell> kheishctl ...` answers the shell and exits; otherwise a no-op.
    commands::complete::handle_env();
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(status) => status.into(),
        Err(err) if is_broken_pipe(&err) => ExitStatus::Success.into(),
        Err(err) => {
            output::print_fatal(&err);
            status_for(&err).into()
        }
    }
}
