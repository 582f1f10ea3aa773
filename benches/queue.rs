//! `cargo bench --bench queue`: the delivery queue's own cost, with no network at all. A queue
//! of `BENCH_DELIVERIES` (default 100 000) http deliveries over 64 targets is emptied by the
//! same store calls the delivery dispatcher makes (`Store::settle_all_and_claim`: each round
//! settles the sends that "finished" as delivered and claims as many again, in one
//! transaction), keeping 64 claims in flight like 16 senders with their prefetch. Printed: the
//! queue's deliveries/s and microseconds per delivery, and the same store's rate for a bare
//! `UPDATE` of one column per delivery (the baseline: the least a durable settlement costs).
//! Environment: `BENCH_DELIVERIES`, `BENCH_ROUND` (settlements per round, default 16).

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
#[path = "common/load.rs"]
mod load;

use std::time::Instant;

use kheishctl::model::reply::{ReplyPlugin, ReplyTarget};
use kheishctl::store::deliveries::{ClaimFilter, Settlement, TargetPacing};
use kheishctl::store::Store;

const TARGETS: usize = 64;
const IN_FLIGHT: usize = 64;

fn main() {
    let n = load::env_num("BENCH_DELIVERIES", 100_000) as usize;
    let round = load::env_num("BENCH_ROUND", 16).max(1) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let root = work.join("state");
    // Port 9 (discard) on loopback: nothing is ever sent; the address only has to be valid.
    let targets: Vec<ReplyTarget> = (0..TARGETS)
        .map(|i| {
            let address =
                format!(r#"{{"url":"http://127.0.0.1:9/sink/{i}","allow_private_network":true}}"#);
            ReplyTarget::new(ReplyPlugin::Http, &address).unwrap().0
        })
        .collect();
    let queued = load::fill_queue(work, &root, (load::QUEUE_CONNECTOR, &[]), &targets, n);
    let store = Store::open(&root).expect("opening the state root");
    let filter = ClaimFilter::default();
    let pacing = TargetPacing::default();
    let owner = "bench-queue";
    let mut in_flight = Vec::new();
    let mut done = 0usize;
    let mut rounds = 0u64;
    let t0 = Instant::now();
    loop {
        let k = round.min(in_flight.len());
        let settled: Vec<_> = in_flight
            .drain(..k)
            .map(|c| {
                (
                    c,
                    Settlement::Delivered {
                        http_status: Some(200),
                    },
                )
            })
            .collect();
        let want = IN_FLIGHT - in_flight.len();
        let now = kheishctl::model::now_ms();
        let (outcomes, claims) = store
            .settle_all_and_claim(owner, &settled, want, 30_000, now, &filter, &pacing)
            .expect("a queue round");
        rounds += 1;
        done += outcomes.len();
        if claims.is_empty() && in_flight.is_empty() {
            break;
        }
        in_flight.extend(claims);
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(done, queued, "every queued delivery settled");

    // Baseline: one durable single-column UPDATE per delivery, in rounds of the same size.
    let t1 = Instant::now();
    drop(store);
    let base_n = touch_each(&root.join("state.db"), queued, round);
    let base_secs = t1.elapsed().as_secs_f64();

    println!("queue bench: {queued} deliveries over {TARGETS} targets, {IN_FLIGHT} in flight, {round} settlements per round");
    println!(
        "  claim + settle: {:.0} deliveries/s = {:.1} µs per delivery ({rounds} rounds)",
        done as f64 / secs,
        secs * 1e6 / done as f64
    );
    println!(
        "  baseline, one UPDATE per delivery in the same rounds: {:.0}/s = {:.1} µs; queue/baseline cost {:.1}x",
        base_n as f64 / base_secs,
        base_secs * 1e6 / base_n as f64,
        (secs / done as f64) / (base_secs / base_n as f64)
    );
}

/// Updates one column of each of the first `n` deliveries, `round` per transaction, on a plain
/// connection with the store's durability (WAL, `synchronous=FULL`); returns how many.
fn touch_each(db: &std::path::Path, n: usize, round: usize) -> usize {
    let conn = rusqlite::Connection::open(db).expect("opening state.db");
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .expect("pragmas");
    let mut seqs: Vec<i64> = Vec::with_capacity(n);
    {
        let mut stmt = conn
            .prepare("SELECT seq FROM deliveries ORDER BY seq LIMIT ?1")
            .unwrap();
        let rows = stmt.query_map([n as i64], |row| row.get(0)).unwrap();
        for seq in rows {
            seqs.push(seq.unwrap());
        }
    }
    for chunk in seqs.chunks(round) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE deliveries SET updated_at_ms = updated_at_ms + 1 WHERE seq = ?1",
                )
                .unwrap();
            for seq in chunk {
                stmt.execute([seq]).unwrap();
            }
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    seqs.len()
}
