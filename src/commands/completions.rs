//! `completions SHELL` and the hidden `man [SUBCOMMAND]`: print the bytes `gen` renders, which
//! are the same bytes checked in under `completions/` and `man/` (a test keeps them equal).

use anyhow::Result;

use super::Context;
use crate::cli::{CompletionsArgs, ManArgs};
use crate::exit::{ExitStatus, StatusError};
use crate::gen;

pub fn run(ctx: &Context, args: CompletionsArgs) -> Result<ExitStatus> {
    ctx.out.raw(&gen::render_completion(args.shell))?;
    Ok(ExitStatus::Success)
}

pub fn man(ctx: &Context, args: ManArgs) -> Result<ExitStatus> {
    let wanted = gen::man_file_name(args.subcommand.as_deref());
    let Some((_, page)) = gen::render_man_pages()
        .into_iter()
        .find(|(name, _)| *name == wanted)
    else {
        let valid = gen::man_subcommands().join(", ");
        return Err(StatusError::new(
            ExitStatus::Failure,
            format!(
                "no man page for `{}`; valid subcommands: {valid} (or none for the kheishctl.1 overview)",
                args.subcommand.unwrap_or_default()
            ),
        )
        .into());
    };
    ctx.out.raw(&page)?;
    Ok(ExitStatus::Success)
}
