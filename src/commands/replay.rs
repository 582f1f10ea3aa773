//! `kheishctl replay` (SPEC §1.3, §11.6): replay dead-lettered deliveries — each becomes a NEW
//! pending delivery with `replayed_from_delivery_id`, the dead letter stays as history — or
//! mark them resolved with `--resolve --reason`. Ids are named, or selected with `--all` and
//! filters. `--dry-run` shows what would happen and changes nothing.
//!
//! The work is `delivery::replay`/`resolve` (and their `_matching` forms), the same calls as
//! the `/v1/deliveries/…` routes; the rows and `--json` use the same redacted views
//! (`views::ItemView`), so a target's secrets never reach the terminal.
//!
//! A running daemon picks the new deliveries up on its workers' next look at the queue; this
//! process cannot wake them. There is nothing to replay without a state root: exit 1.
//! Exit 0 when every item was replayed, found replayed, resolved, or would be; exit 1 when an
//! id was not found or is not dead-lettered.

use anyhow::Result;

use super::Context;
use crate::cli::ReplayArgs;
use crate::delivery;
use crate::exit::{ExitStatus, StatusError};
use crate::model::delivery::DeliveryStatus;
use crate::model::{now_ms, parse_when};
use crate::store::deliveries::DeliveryFilter;
use crate::store::Store;
use crate::views::{check_plugin, ItemList, ItemView};

pub fn run(ctx: &Context, args: ReplayArgs) -> Result<ExitStatus> {
    let now = now_ms();
    let filter = if args.all {
        Some(filter(&args, now)?)
    } else {
        None
    };
    let Some(store) = Store::open_existing(&ctx.state_root)? else {
        return Err(StatusError::new(
            ExitStatus::Failure,
            format!(
                "no state root at `{}`, so there are no deliveries to replay; pass --state-root DIR",
                ctx.state_root.display()
            ),
        )
        .into());
    };
    let reason = args.reason.as_deref();
    let items = match (&filter, args.resolve) {
        (None, false) => {
            delivery::replay(&store, &args.delivery_ids, args.force, args.dry_run, now)?
        }
        (Some(f), false) => delivery::replay_matching(&store, f, args.force, args.dry_run, now)?,
        (None, true) => delivery::resolve(&store, &args.delivery_ids, reason, args.dry_run, now)?,
        (Some(f), true) => delivery::resolve_matching(&store, f, reason, args.dry_run, now)?,
    };
    let list = ItemList::new(&items);

    if ctx.out.json_mode() {
        ctx.out.json(&list)?;
    } else if list.items.is_empty() {
        ctx.out.info("no dead letters match");
    } else {
        for line in rows(&list.items) {
            ctx.out.line(&line)?;
        }
    }

    let failed: Vec<String> = list
        .items
        .iter()
        .filter(|i| !i.is_success())
        .map(|i| match i.result {
            "not_found" => format!("`{}` does not exist", i.delivery_id),
            _ => format!(
                "`{}` is {}, not dead-lettered",
                i.delivery_id,
                i.delivery
                    .as_ref()
                    .map_or("not dead-lettered", |d| d.status.as_str())
            ),
        })
        .collect();
    if failed.is_empty() {
        return Ok(ExitStatus::Success);
    }
    let verb = if args.resolve { "resolved" } else { "replayed" };
    Err(StatusError::new(
        ExitStatus::Failure,
        format!(
            "{} of {} deliveries could not be {verb}: {}",
            failed.len(),
            list.items.len(),
            failed.join("; ")
        ),
    )
    .into())
}

/// The store filter of `--all` and its flags.
fn filter(args: &ReplayArgs, now: i64) -> Result<DeliveryFilter> {
    let usage =
        |flag: &str, e: String| StatusError::new(ExitStatus::Usage, format!("`{flag}`: {e}"));
    let since_ms = args
        .since
        .as_deref()
        .map(|s| parse_when(s, now))
        .transpose()
        .map_err(|e| usage("--since", e))?;
    let plugin = args
        .plugin
        .as_deref()
        .map(check_plugin)
        .transpose()
        .map_err(|e| usage("--plugin", e))?;
    Ok(DeliveryFilter {
        status: Some(DeliveryStatus::DeadLettered),
        plugin,
        connector: args
            .connector
            .as_ref()
            .map(|c| (c.kind, c.name.as_str().to_string())),
        session_id: args.session.clone(),
        run_id: args.run.clone(),
        since_ms,
        include_resolved: args.include_resolved,
        limit: args.limit,
    })
}

/// One aligned row per item: `RESULT  DELIVERY_ID  → NEW_ID  PLUGIN ADDRESS` (the address
/// redacted; `-` where an item has no new delivery or no target).
fn rows(items: &[ItemView]) -> Vec<String> {
    let cells: Vec<[String; 4]> = items
        .iter()
        .map(|i| {
            let target = i.delivery.as_ref().or(i.source.as_ref()).map_or_else(
                || "-".to_string(),
                |d| format!("{} {}", d.target.plugin, d.target.address),
            );
            [
                i.result.to_string(),
                i.delivery_id.clone(),
                format!("→ {}", i.new_delivery_id.as_deref().unwrap_or("-")),
                target,
            ]
        })
        .collect();
    let mut widths = [0usize; 3];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    cells
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (idx, w) in widths.iter().enumerate() {
                line.push_str(&row[idx]);
                line.push_str(&" ".repeat(w - row[idx].chars().count() + 2));
            }
            line.push_str(&row[3]);
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::ReplayItem;
    use crate::model::delivery::Delivery;
    use crate::model::reply::{ReplyPlugin, ReplyTarget};

    fn delivery(id: &str, status: DeliveryStatus) -> Delivery {
        let target = ReplyTarget {
            plugin: ReplyPlugin::Http,
            address: r#"{"url":"https://e.com/","headers":{"X-S":"s3cret"}}"#.into(),
        };
        Delivery {
            attempts: 1,
            ..Delivery::sample(id, target, status)
        }
    }

    #[test]
    fn rows_align_and_redact() {
        let items = ItemList::new(&[
            ReplayItem::Replayed {
                source: delivery("dlv_a", DeliveryStatus::DeadLettered),
                replay: delivery("dlv_new", DeliveryStatus::Pending),
            },
            ReplayItem::NotFound {
                id: "dlv_missing".into(),
            },
            ReplayItem::WouldReplay {
                source: delivery("dlv_b", DeliveryStatus::DeadLettered),
            },
        ])
        .items;
        let target = r#"http {"url":"https://e.com/","headers":{"X-S":"<redacted>"}}"#;
        assert_eq!(
            rows(&items),
            [
                format!("replayed      dlv_a        → dlv_new  {target}"),
                "not_found     dlv_missing  → -        -".to_string(),
                format!("would_replay  dlv_b        → -        {target}"),
            ]
        );
    }
}
