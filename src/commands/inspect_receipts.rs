//! `kheishctl inspect-receipts` (SPEC §1.3): list ingress receipts newest first, as a table or
//! `--json` (`{"receipts":[…]}`, the same view as `GET /v1/receipts`).
//!
//! Read-only and safe beside a running daemon (WAL readers never block the writer). It never
//! creates a state root: when there is none there are no receipts, so a listing prints nothing
//! (`{"receipts":[]}` under `--json`) and exits 0, while a `--key`/`--run` lookup exits 1 like
//! any lookup that finds nothing. A raw `--key` is hashed the way ingress hashes it and is never
//! echoed: messages name only the first 12 hex digits of its SHA-256.

use anyhow::Result;

use super::Context;
use crate::cli::InspectReceiptsArgs;
use crate::exit::{ExitStatus, StatusError};
use crate::ingress;
use crate::model::run::Receipt;
use crate::model::{now_ms, parse_when, rfc3339_ms};
use crate::store::Store;
use crate::views::{receipt_filter, ReceiptList};

pub fn run(ctx: &Context, args: InspectReceiptsArgs) -> Result<ExitStatus> {
    let since_ms = args
        .since
        .as_deref()
        .map(|s| parse_when(s, now_ms()))
        .transpose()
        .map_err(|e| StatusError::new(ExitStatus::Usage, format!("`--since`: {e}")))?;
    let filter = receipt_filter(
        args.connector.as_ref(),
        args.key.as_deref(),
        args.run.clone(),
        args.session.clone(),
        since_ms,
        args.limit,
    )
    .map_err(|e| StatusError::new(ExitStatus::Usage, format!("`--key`: {e}")))?;
    let is_lookup = args.key.is_some() || args.run.is_some();

    let receipts = match Store::open_existing(&ctx.state_root)? {
        Some(store) => store.list_receipts(&filter)?,
        None => {
            if !is_lookup {
                ctx.out.info(&format!(
                    "no state root at `{}`, so no receipts yet",
                    ctx.state_root.display()
                ));
            }
            Vec::new()
        }
    };

    if ctx.out.json_mode() {
        ctx.out.json(&ReceiptList::new(&receipts))?;
    } else if !receipts.is_empty() {
        for line in table(&receipts) {
            ctx.out.line(&line)?;
        }
    } else if !is_lookup {
        ctx.out.info("no receipts match");
    }

    if is_lookup && receipts.is_empty() {
        return Err(StatusError::new(ExitStatus::Failure, not_found(&args)).into());
    }
    Ok(ExitStatus::Success)
}

/// What a lookup that found nothing was looking for, without the raw key.
fn not_found(args: &InspectReceiptsArgs) -> String {
    let mut what = Vec::new();
    if let (Some(raw), Some(id)) = (&args.key, &args.connector) {
        let (_, digest) = ingress::receipt_key(id.kind, id.name.as_str(), raw);
        what.push(format!(
            "connector `{id}` and a key whose SHA-256 starts `{}`",
            &digest[..12]
        ));
    } else if let Some(raw) = &args.key {
        what.push(format!(
            "any connector and a key whose SHA-256 starts `{}`",
            &ingress::sha256_hex(raw.trim().as_bytes())[..12]
        ));
    } else if let Some(id) = &args.connector {
        what.push(format!("connector `{id}`"));
    }
    if let Some(run) = &args.run {
        what.push(format!("run `{run}`"));
    }
    if let Some(session) = &args.session {
        what.push(format!("session `{session}`"));
    }
    if let Some(since) = &args.since {
        what.push(format!("received since `{since}`"));
    }
    format!("no ingress receipt for {}", what.join(", "))
}

/// The human table: a header and one aligned row per receipt. Fingerprints are cut to 12 hex
/// digits (enough to compare by eye; `--json` has them in full).
fn table(receipts: &[Receipt]) -> Vec<String> {
    let header = [
        "RECEIVED",
        "CONNECTOR",
        "RECEIPT KEY",
        "FINGERPRINT",
        "STATUS",
        "RUN",
        "SESSION",
        "DUPLICATES",
    ];
    let rows: Vec<[String; 8]> = receipts
        .iter()
        .map(|r| {
            [
                rfc3339_ms(r.received_at_ms),
                format!("{}/{}", r.connector_kind, r.connector_name),
                r.receipt_key.clone(),
                r.fingerprint.chars().take(12).collect(),
                r.status.clone(),
                r.run_id.clone(),
                r.session_id.clone(),
                r.duplicate_hits.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: [&str; 8]| {
        let mut line = String::new();
        for (idx, cell) in cells.iter().enumerate() {
            if idx + 1 == cells.len() {
                line.push_str(cell);
            } else {
                let pad = widths[idx] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        line
    };
    let mut out = vec![render(header)];
    for row in &rows {
        out.push(render(row.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnectorKind;

    #[test]
    fn table_aligns_columns_and_shortens_fingerprints() {
        let r = Receipt {
            receipt_key: "http:orders:0123456789abcdef0123456789abcdef".into(),
            connector_kind: ConnectorKind::Http,
            connector_name: "orders".into(),
            key_sha256: "a".repeat(64),
            fingerprint: "b".repeat(64),
            status: "submitted".into(),
            run_id: "run_1".into(),
            session_id: "http:orders:55aa".into(),
            received_at_ms: 1_700_000_000_000,
            duplicate_hits: 3,
            last_duplicate_at_ms: None,
        };
        assert_eq!(
            table(&[r]),
            [
                "RECEIVED                  CONNECTOR    RECEIPT KEY                                   FINGERPRINT   STATUS     RUN    SESSION           DUPLICATES",
                "2023-11-14T22:13:20.000Z  http/orders  http:orders:0123456789abcdef0123456789abcdef  bbbbbbbbbbbb  submitted  run_1  http:orders:55aa  3",
            ]
        );
    }

    #[test]
    fn not_found_never_shows_the_raw_key() {
        let args = InspectReceiptsArgs {
            connector: Some("http/orders".parse().unwrap()),
            key: Some("secret-order-key".into()),
            run: Some("run_9".into()),
            session: None,
            since: None,
            limit: 100,
        };
        let msg = not_found(&args);
        assert!(!msg.contains("secret-order-key"), "{msg}");
        let digest = ingress::sha256_hex(b"secret-order-key");
        assert_eq!(
            msg,
            format!(
                "no ingress receipt for connector `http/orders` and a key whose SHA-256 starts `{}`, run `run_9`",
                &digest[..12]
            )
        );
    }
}
