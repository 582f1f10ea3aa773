//! `kheishctl drain-deliveries` (SPEC §1.3): run delivery workers in this process until no
//! matching delivery is due (with `--ignore-backoff`: until none is open), then print a summary.
//!
//! The work is [`delivery::drain`], over the same claim/settle functions as `serve`'s workers,
//! so it is safe beside a running daemon: leases keep two workers from sending one delivery at
//! once. Exit status: 0 when nothing was dead-lettered, 1 when something was, 3 when
//! `--timeout` passed with due deliveries left, 4 when the state root cannot be opened or a
//! `KHEISH_DELIVERY_*` variable is invalid (the same code `serve` uses for it: the retry
//! configuration could not be parsed). A missing state root means an empty queue: the summary
//! is all zeros and nothing is created.
//!
//! External deliveries need the connector file (`--connectors-config`), resolved like `serve`
//! resolves it (exit 4 when it is invalid or a secret is missing); without one they are retried
//! later (`connector_config_unavailable`), and `--ignore-backoff` is refused while some are
//! open (see `docs/sidecar-delivery.md`).

use std::sync::Arc;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::Context;
use crate::cli::DrainDeliveriesArgs;
use crate::daemon::watcher;
use crate::delivery::policy::RetryPolicy;
use crate::delivery::pool::DEFAULT_LEASE;
use crate::delivery::{self, DrainConfig, DrainSummary, Observer};
use crate::exit::{ExitStatus, StatusError};
use crate::model::reply::ReplyPlugin;
use crate::output::Printer;
use crate::registry::Registry;
use crate::store::deliveries::ClaimFilter;
use crate::store::Store;

pub fn run(ctx: &Context, args: DrainDeliveriesArgs) -> Result<ExitStatus> {
    let policy = RetryPolicy::from_env(&|name| std::env::var(name).ok())
        .map_err(|e| StatusError::new(ExitStatus::Unavailable, e.to_string()))?;
    let lease =
        crate::delivery::policy::lease_from_env(&|name| std::env::var(name).ok(), DEFAULT_LEASE)
            .map_err(|e| StatusError::new(ExitStatus::Unavailable, e.to_string()))?;
    let plugin = args
        .plugin
        .as_deref()
        .map(ReplyPlugin::parse)
        .transpose()
        .map_err(|e| StatusError::new(ExitStatus::Usage, format!("`--plugin`: {e}")))?;
    let filter = ClaimFilter {
        plugin: plugin.map(|p| p.as_str().to_string()),
        connector: args
            .connector
            .as_ref()
            .map(|id| (id.kind, id.name.as_str().to_string())),
        ignore_backoff: args.ignore_backoff,
    };

    let existing = Store::open_existing(&ctx.state_root)?;
    let summary = if existing.is_none() {
        ctx.out.info(&format!(
            "no state root at `{}`, so nothing to deliver",
            ctx.state_root.display()
        ));
        DrainSummary::default()
    } else {
        let bar = if ctx.out.progress_allowed() {
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} deliveries ({msg}) {elapsed_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        } else {
            ProgressBar::hidden()
        };
        let connectors = match &ctx.connectors_config {
            Some(path) => Some(Arc::new(Registry::new(watcher::load(
                &ctx.out,
                &ctx.state_root,
                Some(path),
            )?))),
            None => {
                if let Some(store) = &existing {
                    check_external_without_config(ctx, store, &filter)?;
                }
                None
            }
        };
        let transports = crate::delivery::transport::for_this_build(
            connectors,
            Arc::default(),
            Arc::default(),
            Arc::default(),
        );
        let observer = Arc::new(CliObserver {
            out: ctx.out.clone(),
            bar: bar.clone(),
        });
        let cfg = DrainConfig {
            state_root: ctx.state_root.clone(),
            concurrency: usize::from(args.concurrency),
            policy,
            transports: Arc::new(transports),
            filter,
            timeout: args.timeout,
            lease,
            owner_prefix: "drain".into(),
            observer,
        };
        let summary = delivery::drain(cfg, &|p| {
            bar.set_length(p.open_at_start.max(p.delivered + p.dead_lettered));
            bar.set_position(p.delivered + p.dead_lettered);
            bar.set_message(format!("{} retried", p.retried));
        })?;
        bar.finish_and_clear();
        summary
    };

    print_summary(&ctx.out, &summary)?;
    if summary.timed_out {
        return Err(StatusError::new(
            ExitStatus::Deadline,
            format!(
                "--timeout passed with {} due deliveries left",
                summary.remaining_due
            ),
        )
        .into());
    }
    if summary.dead_lettered > 0 {
        ctx.out.warn(&format!(
            "{} deliveries were dead-lettered; list them with `kheishctl replay --all --dry-run`",
            summary.dead_lettered
        ));
        return Ok(ExitStatus::Failure);
    }
    Ok(ExitStatus::Success)
}

/// Without a connector file, external deliveries cannot be sent (their connector's base URL
/// and shared token are in that file): each attempt is a retryable
/// `connector_config_unavailable`. Says so when some are open, and refuses `--ignore-backoff`
/// then, which would spend every attempt of those deliveries at once.
fn check_external_without_config(ctx: &Context, store: &Store, filter: &ClaimFilter) -> Result<()> {
    if filter
        .plugin
        .as_deref()
        .is_some_and(|p| p != ReplyPlugin::External.as_str())
    {
        return Ok(());
    }
    let external = ClaimFilter {
        plugin: Some(ReplyPlugin::External.as_str().to_string()),
        ..filter.clone()
    };
    let open = store.count_open(&external, crate::model::now_ms())?.pending;
    if open == 0 {
        return Ok(());
    }
    let why = format!(
        "{open} external deliveries are open and no connector file was given \
         (--connectors-config / KHEISH_CONNECTORS_CONFIG), so their sidecars are unknown here"
    );
    if filter.ignore_backoff {
        return Err(StatusError::new(
            ExitStatus::Unavailable,
            format!(
                "{why}; --ignore-backoff would spend their attempts at once: pass the connector \
                 file, or `--plugin http` to drain the others"
            ),
        )
        .into());
    }
    ctx.out.warn(&format!(
        "{why}; they are retried later (`connector_config_unavailable`), not sent"
    ));
    Ok(())
}

fn print_summary(out: &Printer, summary: &DrainSummary) -> std::io::Result<()> {
    if out.json_mode() {
        // Exactly the six summary members (`timed_out` is the exit status's business).
        return out.json(summary);
    }
    for line in summary_lines(summary) {
        out.line(&line)?;
    }
    Ok(())
}

/// The human summary: one `name: value` line per member.
fn summary_lines(s: &DrainSummary) -> Vec<String> {
    [
        ("delivered", s.delivered),
        ("retried", s.retried),
        ("dead_lettered", s.dead_lettered),
        ("remaining_due", s.remaining_due),
        ("remaining_pending", s.remaining_pending),
        ("elapsed_ms", s.elapsed_ms),
    ]
    .iter()
    .map(|(name, value)| format!("{name}: {value}"))
    .collect()
}

/// Logs worker warnings to stderr without tearing the progress bar.
struct CliObserver {
    out: Printer,
    bar: ProgressBar,
}

impl Observer for CliObserver {
    fn attempt(&self, _plugin: &str, _outcome: &str) {}

    fn warn(&self, message: &str) {
        self.bar.suspend(|| self.out.warn(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_summary_has_one_line_per_member() {
        let s = DrainSummary {
            delivered: 3,
            retried: 1,
            dead_lettered: 2,
            remaining_due: 0,
            remaining_pending: 1,
            elapsed_ms: 12,
            timed_out: false,
        };
        assert_eq!(
            summary_lines(&s),
            [
                "delivered: 3",
                "retried: 1",
                "dead_lettered: 2",
                "remaining_due: 0",
                "remaining_pending: 1",
                "elapsed_ms: 12"
            ]
        );
        let json = serde_json::to_value(s).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys.len(), 6, "{json}");
        assert_eq!(json["dead_lettered"], 2);
    }
}
