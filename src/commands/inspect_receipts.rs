//! `kheishctl inspect-receipts` (being built).

use anyhow::Result;

use super::Context;
use crate::cli::InspectReceiptsArgs;
use crate::exit::ExitStatus;

pub fn run(_ctx: &Context, _args: InspectReceiptsArgs) -> Result<ExitStatus> {
    anyhow::bail!("not built yet")
}
