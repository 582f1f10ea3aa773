//! `completions` subcommand (placeholder while the skeleton is built).

use anyhow::Result;

use super::Context;
use crate::exit::ExitStatus;

pub fn run(_ctx: &Context, _args: crate::cli::CompletionsArgs) -> Result<ExitStatus> {
    anyhow::bail!("not built yet")
}

pub fn man(_ctx: &Context, _args: crate::cli::ManArgs) -> Result<ExitStatus> {
    anyhow::bail!("not built yet")
}
