//! A scenario run twice under one seed records byte-identical event traces (simulated-time
//! stamps included): every scenario of the catalogue in two processes (the sweep binary, as
//! a failing seed is reproduced), and calm ones twice in one process.
//!
//! In one process, scenarios that crash a relay still differ: tokio drops a crashed host's
//! tasks in the order of their ids, which are process-wide counters, so the order of the
//! relay's connection resets (and the latency each draws) depends on what ran before.

use std::process::Command;
use zerok_chaos::scenarios::{CATALOGUE, find};
use zerok_chaos::world::last_trace;

const SEED: u64 = 11;

fn same_trace_twice_in_this_process(name: &str) {
    let scenario = find(name).expect("scenario");
    let mut traces = Vec::new();
    for _ in 0..2 {
        (scenario.run)(SEED).expect("passes");
        traces.push(last_trace());
    }
    assert!(traces[0].len() > 10, "{name}: a trace was recorded");
    assert_eq!(traces[0], traces[1], "{name}: the same trace twice");
}

#[test]
fn calm_scenarios_record_the_same_trace_twice_in_one_process() {
    for name in [
        "steady_pushes",
        "partitioned_receiver",
        "sender_killed_mid_stream",
    ] {
        same_trace_twice_in_this_process(name);
    }
}

/// The sweep's traces of every scenario under `SEED`, without its wall-time lines.
fn sweep_traces() -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(["--first-seed", &SEED.to_string(), "--seeds", "1", "--trace"])
        .output()
        .expect("sweep runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("--- trace") || line.starts_with(' '))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_scenario_records_the_same_trace_in_two_processes() {
    let (first, second) = (sweep_traces(), sweep_traces());
    for scenario in CATALOGUE {
        let header = format!("--- trace of {} seed {SEED}", scenario.name);
        assert!(first.contains(&header), "{} traced", scenario.name);
    }
    assert!(first.len() > CATALOGUE.len() * 10);
    let first_difference = first.iter().zip(&second).position(|(a, b)| a != b);
    assert_eq!(
        (first.len(), first_difference),
        (second.len(), None),
        "first difference: {:?} vs {:?}",
        first_difference.map(|i| &first[i]),
        first_difference.map(|i| &second[i]),
    );
}
