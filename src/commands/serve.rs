//! `kheishctl serve` (being built).

use anyhow::Result;

use super::Context;
use crate::cli::ServeArgs;
use crate::exit::ExitStatus;

pub fn run(_ctx: &Context, _args: ServeArgs) -> Result<ExitStatus> {
    anyhow::bail!("not built yet")
}
