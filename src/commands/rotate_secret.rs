//! `rotate_secret` subcommand (placeholder while the skeleton is built).

use anyhow::Result;

use super::Context;
use crate::exit::ExitStatus;

pub fn run(_ctx: &Context, _args: crate::cli::RotateSecretArgs) -> Result<ExitStatus> {
    anyhow::bail!("not built yet")
}
