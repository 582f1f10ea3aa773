//! `cargo bench --bench external` (or `benches/run.sh external`, which installs wrk first):
//! external sidecar ingress throughput (SPEC §10.2, issue 11) of a release `kheishctl serve`,
//! in events per second, through `/events/batch` (64 events per request) and `/events` (one
//! event per request), against HTTP-connector ingress (bearer token, one event per request)
//! measured in the same run. Target: batch ingress at least 2x the single-event figure.
//!
//! Load: wrk, 64 keep-alive connections (2 threads), every event new (unique ids), in the
//! exact shape the Kheish sidecar SDK sends (explicit nulls, `thread.path`, empty
//! `input_items`/`attachments`). Each run gets a fresh state root. Events per second are the
//! events the daemon ACCEPTED during the run (from `/metrics`) divided by its length, so a
//! wrapped-around request file (duplicates) cannot inflate a figure.
//!
//! Environment: `BENCH_SECONDS` (per run, default 5), `BENCH_REQUESTS` (single events per wrk
//! thread, default 60 000), `BENCH_BATCHES` (batch requests per wrk thread, default 2 500).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "common/load.rs"]
mod load;

use std::path::Path;

use load::{env_num, Daemon, WrkResult, CONNECTIONS, TOKEN, WRK_THREADS};

const BATCH: usize = 64;

fn main() -> std::process::ExitCode {
    if !load::wrk_installed() {
        eprintln!("wrk is not installed: run `benches/run.sh external` (installs it) or `apt-get install wrk`");
        return std::process::ExitCode::from(2);
    }
    let seconds = env_num("BENCH_SECONDS", 5);
    let singles = env_num("BENCH_REQUESTS", 60_000) as usize;
    let batches = env_num("BENCH_BATCHES", 2_500) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    println!("external ingress bench: {CONNECTIONS} keep-alive connections, {WRK_THREADS} wrk threads, {seconds}s per run, bearer token, every event new");

    write_bodies(work, "http", singles, |t, i| {
        format!(
            r#"{{"content":"event {i} from thread {t}","idempotency_key":"h-{t}-{i}","metadata":{{"source":"bench"}}}}"#
        )
    });
    write_bodies(work, "single", singles, |t, i| {
        format!(
            r#"{{"protocol_version":2,{}}}"#,
            event_members(&format!("s-{t}-{i}"), i)
        )
    });
    write_bodies(work, "batch", batches, |t, i| {
        let events: Vec<String> = (0..BATCH)
            .map(|k| {
                format!(
                    "{{{}}}",
                    event_members(&format!("b-{t}-{i}-{k}"), i * BATCH + k)
                )
            })
            .collect();
        format!(
            r#"{{"protocol_version":2,"events":[{}]}}"#,
            events.join(",")
        )
    });

    let runs = [
        ("http", "/v1/connectors/http/bench", "http/bench"),
        (
            "single",
            "/v1/connectors/external/side/events",
            "external/side",
        ),
        (
            "batch",
            "/v1/connectors/external/side/events/batch",
            "external/side",
        ),
    ];
    let mut results = Vec::new();
    for (set, target, connector) in runs {
        let script = load::write_replay_script(
            work,
            set,
            target,
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Content-Type", "application/json"),
            ],
            &[],
        );
        let state_root = work.join(format!("state-{set}"));
        let daemon = Daemon::start_in(&state_root, work, &config(), &["-q"], &[], &[]);
        let measured = load::Measured::wrk(&daemon, &script, work, set, seconds);
        daemon.stop();
        let events = measured.accepted(connector);
        let commits = measured.grew("kheish_store_commits_total");
        let run = measured.run;
        results.push((set, run, events, commits));
    }

    println!();
    println!(
        "  {:<40} {:>10} {:>9} {:>9} {:>8} {:>11} {:>13}",
        "", "req/s", "p50 ms", "p99 ms", "non-2xx", "events/s", "commits/event"
    );
    let mut rate = std::collections::HashMap::new();
    for (set, run, events, commits) in &results {
        let per_second = events / seconds as f64;
        rate.insert(*set, per_second);
        print_row(label(set), run, per_second, commits / events.max(1.0));
    }
    println!();
    let (http, single, batch) = (rate["http"], rate["single"], rate["batch"]);
    println!(
        "  batch vs single events/s: {:.2}x (target >= 2x)",
        batch / single.max(1.0)
    );
    println!(
        "  single vs http connector: {:.2}x; batch vs http connector: {:.2}x",
        single / http.max(1.0),
        batch / http.max(1.0)
    );
    std::process::ExitCode::SUCCESS
}

fn label(set: &str) -> &'static str {
    match set {
        "http" => "http connector, 1 event per request",
        "single" => "external /events, 1 event per request",
        _ => "external /events/batch, 64 per request",
    }
}

fn print_row(label: &str, run: &WrkResult, events_per_second: f64, commits_per_event: f64) {
    println!(
        "  {label:<40} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>11.0} {:>13.4}",
        run.rps, run.p50_ms, run.p99_ms, run.non_2xx, events_per_second, commits_per_event
    );
}

/// The members of one event as the Kheish sidecar SDK sends it (without the braces, so the
/// single-event body can add `protocol_version`).
fn event_members(event_id: &str, n: usize) -> String {
    format!(
        r#""instance_id":"bench-1","event_id":"{event_id}","fingerprint":null,"occurred_at_ms":null,"actor_id":"user-{}","source_kind":null,"intent":"message","relation":null,"thread":{{"path":["guild-{}","chan-{}"]}},"routing_key":null,"content":"message {n}","input_items":[],"attachments":[],"reply_route":"{{}}","metadata":null"#,
        n % 100,
        n % 8,
        n % 64
    )
}

fn config() -> String {
    format!(
        "[[http_connectors]]\nname = \"bench\"\nbearer_token_env = \"BENCH_TOKEN\"\n\
         ingress_events_per_second = {max}\ndefault_binding_keys = [\"bench\"]\n\
         [http_connectors.session_policy]\ncreate_if_missing = true\n\n\
         [[external_connectors]]\nname = \"side\"\nplatform = \"discord\"\n\
         base_url = \"http://127.0.0.1:9\"\nallow_private_network = true\n\
         shared_token_env = \"BENCH_TOKEN\"\ninclude_self_output = false\n\
         ingress_events_per_second = {max}\n\
         [external_connectors.session_policy]\ncreate_if_missing = true\n",
        max = u32::MAX
    )
}

/// Writes `per_thread` request bodies for each wrk thread, one JSON document per line.
fn write_bodies(dir: &Path, set: &str, per_thread: usize, body: impl Fn(usize, usize) -> String) {
    for t in 0..WRK_THREADS {
        let mut out = String::new();
        for i in 0..per_thread {
            out.push_str(&body(t, i));
            out.push('\n');
        }
        std::fs::write(dir.join(format!("{set}-{t}.txt")), out).unwrap();
    }
}
