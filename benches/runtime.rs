//! `cargo bench --bench runtime`: time from a `PUT /v1/runtime/connectors/http/{name}` to the
//! new connector answering ingress (issue 12: under 2 s; SPEC §5: "within 2 seconds").
//!
//! A release `serve` with a 1 000-connector file (so a rebuild of the registry costs what it
//! would in a large deployment); `BENCH_PUTS` times (default 20)
//! a new HTTP connector is PUT and its ingress route is polled back to back until it answers 202;
//! the distribution (min, median, p90, max) is printed. Baseline in the same run: the round
//! trip of an ingress request on a connector that already exists.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
#[path = "common/load.rs"]
mod load;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> u16 {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    load::status_of(&load::request(addr, method, path, &headers, body))
}

fn main() {
    let puts = load::env_num("BENCH_PUTS", 20) as usize;
    let work = tempfile::tempdir().unwrap();
    let mut config = String::new();
    for i in 0..1000 {
        config.push_str(&format!(
            "[[http_connectors]]\nname = \"filed-{i}\"\nbearer_token_env = \"BENCH_TOKEN\"\ndefault_binding_keys = [\"f{i}\"]\nrequire_idempotency_key = true\n\n"
        ));
    }
    config.push_str(
        "[[http_connectors]]\nname = \"existing\"\nallow_unauthenticated_ingress = true\ndefault_binding_keys = [\"e\"]\n[http_connectors.session_policy]\ncreate_if_missing = true\n",
    );
    let daemon = load::Daemon::start(work.path(), &config, &["--delivery-workers", "0"], &[]);
    let addr = daemon.addr;

    let ingest = |name: &str, n: usize| {
        let body = format!(r#"{{"content":"x","idempotency_key":"k{n}"}}"#);
        request(
            addr,
            "POST",
            &format!("/v1/connectors/http/{name}"),
            None,
            &body,
        )
    };
    let mut base = Vec::new();
    for n in 0..puts {
        let t = Instant::now();
        assert_eq!(ingest("existing", n), 202);
        base.push(t.elapsed());
    }
    let mut times = Vec::new();
    for i in 0..puts {
        let name = format!("live-{i}");
        let body = r#"{"allow_unauthenticated_ingress":true,"default_binding_keys":["l"],"session_policy":{"create_if_missing":true}}"#;
        let t = Instant::now();
        let status = request(
            addr,
            "PUT",
            &format!("/v1/runtime/connectors/http/{name}"),
            Some(load::ADMIN),
            body,
        );
        assert_eq!(status, 201, "PUT failed");
        let mut n = 0;
        loop {
            n += 1;
            match ingest(&name, n) {
                202 => break,
                404 => {}
                other => panic!("unexpected status {other}"),
            }
            assert!(t.elapsed() < Duration::from_secs(30), "never applied");
        }
        times.push(t.elapsed());
    }
    daemon.stop();
    base.sort();
    times.sort();
    let pct = |v: &[Duration], p: f64| common::ms(v[((v.len() - 1) as f64 * p).round() as usize]);
    println!("PUT -> ingress 202 on a daemon with 1001 file connectors, {puts} PUTs");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "", "min ms", "p50 ms", "p90 ms", "max ms"
    );
    for (label, v) in [
        ("baseline: ingress round trip", &base),
        ("PUT to first 202", &times),
    ] {
        println!(
            "{label:<34} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            pct(v, 0.0),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 1.0)
        );
    }
    println!("target: every PUT applied in under 2000 ms");
}
