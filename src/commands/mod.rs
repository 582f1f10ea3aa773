//! One module per subcommand. Each turns its clap args into calls to library functions and
//! prints through the [`Printer`]; none contains SQL, HTTP or secret handling of its own.

pub mod complete;
mod completions;
mod drain_deliveries;
mod inspect_receipts;
mod put_external;
mod replay;
mod rotate_secret;
mod serve;
mod sign;
mod validate;

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::exit::ExitStatus;
use crate::output::{LogLevel, Printer};

/// What every command gets besides its own args: resolved global options and the printer.
#[derive(Debug, Clone)]
pub struct Context {
    /// The state root (flag, env, or the XDG default).
    pub state_root: PathBuf,
    /// `--connectors-config` / `KHEISH_CONNECTORS_CONFIG`.
    pub connectors_config: Option<PathBuf>,
    pub out: Printer,
}

impl Context {
    fn from_global(global: &GlobalArgs) -> Result<Context> {
        let level = if global.quiet {
            LogLevel::Error
        } else if global.verbose {
            LogLevel::Debug
        } else {
            match std::env::var("KHEISH_LOG") {
                Ok(v) if !v.trim().is_empty() => LogLevel::parse(&v).ok_or_else(|| {
                    anyhow::anyhow!(
                        "KHEISH_LOG=`{v}` is not a log level; use error, warn, info or debug"
                    )
                })?,
                _ => LogLevel::Info,
            }
        };
        Ok(Context {
            state_root: match &global.state_root {
                Some(dir) => dir.clone(),
                None => default_state_root()?,
            },
            connectors_config: global.connectors_config.clone(),
            out: Printer::new(global.json, level, global.color),
        })
    }
}

/// `$XDG_STATE_HOME/kheishctl`, else `~/.local/state/kheishctl` (SPEC §1.1).
fn default_state_root() -> Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("kheishctl"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
        anyhow::anyhow!("cannot find a default state root: neither XDG_STATE_HOME nor HOME is set; pass --state-root DIR")
    })?;
    Ok(PathBuf::from(home).join(".local/state/kheishctl"))
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitStatus> {
    let ctx = Context::from_global(&cli.global)?;
    match cli.command {
        Command::Serve(args) => serve::run(&ctx, args),
        Command::Validate(args) => validate::run(&ctx, args),
        Command::InspectReceipts(args) => inspect_receipts::run(&ctx, args),
        Command::Replay(args) => replay::run(&ctx, args),
        Command::DrainDeliveries(args) => drain_deliveries::run(&ctx, args),
        Command::Sign(args) => sign::run(&ctx, args),
        Command::RotateSecret(args) => rotate_secret::run(&ctx, args),
        Command::PutExternal(args) => put_external::run(&ctx, args),
        Command::Completions(args) => completions::run(&ctx, args),
        Command::Man(args) => completions::man(&ctx, args),
    }
}
