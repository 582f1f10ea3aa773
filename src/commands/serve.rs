//! `kheishctl serve`: turns the flags into [`daemon::Settings`] and runs the daemon
//! ([`daemon::serve`] owns start and shutdown order). A refused start (bad config, missing
//! secret, invalid delivery environment) is exit 4.

use anyhow::Result;

use super::Context;
use crate::cli::{HandlerKind, ServeArgs};
use crate::daemon::{self, HandlerConfig, HandlerMode, Limits, Settings};
use crate::exit::ExitStatus;

pub fn run(ctx: &Context, args: ServeArgs) -> Result<ExitStatus> {
    let mode = match args.handler {
        HandlerKind::None => HandlerMode::None,
        HandlerKind::Echo => HandlerMode::Echo,
        HandlerKind::Exec => HandlerMode::Exec {
            command: args.handler_command,
            timeout: args.handler_timeout,
        },
    };
    daemon::serve(
        &ctx.out,
        Settings {
            state_root: ctx.state_root.clone(),
            connectors_config: ctx.connectors_config.clone(),
            listen: args.listen,
            workers: args.workers,
            limits: Limits {
                max_connections: args.max_connections as usize,
                max_connections_per_client: args.max_connections_per_client as usize,
                header_timeout: args.header_timeout,
                request_timeout: args.request_timeout,
                idle_timeout: args.idle_timeout,
            },
            handler: HandlerConfig {
                mode,
                concurrency: args.handler_concurrency,
            },
            admin_token_env: args.admin_token_env,
            admin_token_file: args.admin_token_file,
            readonly_token_env: args.readonly_token_env,
            readonly_token_file: args.readonly_token_file,
            delivery_workers: args.delivery_workers,
            receipt_retention: args.receipt_retention,
            receipt_max_per_connector: args.receipt_max_per_connector,
        },
    )?;
    Ok(ExitStatus::Success)
}
