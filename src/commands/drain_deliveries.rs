//! `kheishctl drain-deliveries` (being built).

use anyhow::Result;

use super::Context;
use crate::cli::DrainDeliveriesArgs;
use crate::exit::ExitStatus;

pub fn run(_ctx: &Context, _args: DrainDeliveriesArgs) -> Result<ExitStatus> {
    anyhow::bail!("not built yet")
}
