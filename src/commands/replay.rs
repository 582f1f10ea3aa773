//! `kheishctl replay` (being built).

use anyhow::Result;

use super::Context;
use crate::cli::ReplayArgs;
use crate::exit::ExitStatus;

pub fn run(_ctx: &Context, _args: ReplayArgs) -> Result<ExitStatus> {
    anyhow::bail!("not built yet")
}
