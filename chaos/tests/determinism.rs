//! A scenario run twice under one seed records byte-identical event traces (simulated-time
//! stamps included): every scenario of the catalogue in two processes (the sweep binary, as
//! a failing seed is reproduced), and calm ones twice in one process.
//!
//! In one process, scenarios that crash a relay still differ: tokio drops a crashed host's
//! tasks in the order of their ids, which are process-wide counters, so the order of the
//! relay's connection resets (and the latency each draws) depends on what ran before.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use zerok_chaos::scenarios::{catalogue, find};
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

/// A sweep of every scenario under `SEED`, tracing, started.
fn start_sweep() -> Child {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(["--first-seed", &SEED.to_string(), "--seeds", "1", "--trace"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sweep starts")
}

/// A sweep's trace of every scenario, by scenario (its wall-time lines left out).
fn sweep_traces(sweep: Child) -> BTreeMap<String, Vec<String>> {
    let output = sweep.wait_with_output().expect("sweep runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut traces: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if let Some(rest) = line.strip_prefix("--- trace of ") {
            let name = rest.split(' ').next().unwrap_or_default().to_owned();
            traces.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let Some(event) = line.strip_prefix("  ")
            && let Some(name) = &current
            && let Some(trace) = traces.get_mut(name)
        {
            // Trace lines are indented by the sweep; its reproduce lines say so.
            if !event.starts_with("reproduce:") {
                trace.push(event.to_owned());
            }
        }
    }
    traces
}

#[test]
fn every_scenario_records_the_same_trace_in_two_processes() {
    // Both at once: two processes, and half the wait.
    let (first, second) = (start_sweep(), start_sweep());
    let (first, second) = (sweep_traces(first), sweep_traces(second));
    for scenario in catalogue() {
        let (a, b) = (&first[scenario.name], &second[scenario.name]);
        assert!(a.len() > 10, "{} traced", scenario.name);
        let first_difference = a.iter().zip(b).position(|(x, y)| x != y);
        assert_eq!(
            (a.len(), first_difference),
            (b.len(), None),
            "{}: first difference: {:?} vs {:?}",
            scenario.name,
            first_difference.map(|i| &a[i]),
            first_difference.map(|i| &b[i]),
        );
    }
}
