//! `cargo bench --bench validate`: times `kheishctl validate --offline` on a generated
//! 1 000-connector file (all four kinds) against Python's `tomllib` merely parsing the same
//! file, in the same run. Target (SPEC §14): validate faster than the bare parse.

#![allow(clippy::print_stdout)]

mod common;

use std::process::Command;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = common::write(dir.path(), "connectors.toml", &common::connector_file(1000));
    let bin = env!("CARGO_BIN_EXE_kheishctl");
    let state_root = dir.path().join("state");

    let validate = common::time_runs(runs, || {
        let mut c = Command::new(bin);
        c.args(["validate", "--offline"])
            .arg(&file)
            .env_clear()
            .env("KHEISH_STATE_ROOT", &state_root);
        c
    });
    let python = common::time_runs(runs, || {
        let mut c = Command::new("python3");
        c.args([
            "-c",
            "import tomllib,sys; tomllib.load(open(sys.argv[1],\"rb\"))",
        ])
        .arg(&file);
        c
    });
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    println!("validate bench: 1000 connectors (250 per kind), {size} bytes, {runs} runs each after 1 warm-up");
    println!(
        "  kheishctl validate --offline   min {:7.2} ms   median {:7.2} ms",
        common::ms(validate[0]),
        common::ms(common::median(&validate))
    );
    println!(
        "  python3 tomllib.load (parse)   min {:7.2} ms   median {:7.2} ms",
        common::ms(python[0]),
        common::ms(common::median(&python))
    );
    println!(
        "  ratio validate/tomllib (median): {:.2} (target < 1.0)",
        common::median(&validate).as_secs_f64() / common::median(&python).as_secs_f64()
    );
}
