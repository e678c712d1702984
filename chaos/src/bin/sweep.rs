//! `sweep`: run chaos scenarios under many seeds and print every failing seed with the
//! command that reproduces it.
//!
//! ```sh
//! cargo run -p zerok-chaos --bin sweep -- --seeds 200
//! cargo run -p zerok-chaos --bin sweep -- --scenario relay_restart_storm --first-seed 41 --seeds 1
//! ```

// The sweep reports its own wall time, outside any simulation.
#![allow(clippy::disallowed_methods)]

use clap::Parser;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::Instant;
use zerok_chaos::scenarios::{Scenario, catalogue, find};
use zerok_chaos::world::last_trace;

#[derive(Parser)]
#[command(about = "Run chaos scenarios under many seeds")]
struct Args {
    /// Seeds per scenario.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed (seeds run from it upwards).
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// One scenario (default: the whole catalogue).
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
    /// List the catalogue and exit.
    #[arg(long)]
    list: bool,
    /// Print each run's event trace.
    #[arg(long)]
    trace: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for s in catalogue() {
            println!("{:<12} {:<36} {}", s.group, s.name, s.proves);
        }
        return ExitCode::SUCCESS;
    }
    let scenarios: Vec<&Scenario> = match &args.scenario {
        Some(name) => match find(name) {
            Some(s) => vec![s],
            None => {
                eprintln!("error: no scenario {name:?} (see --list)");
                return ExitCode::from(2);
            }
        },
        None => catalogue().collect(),
    };
    // Scenario failures print their own report; keep panics' default output short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let mut failures = Vec::new();
    let started = Instant::now();
    for scenario in scenarios {
        let began = Instant::now();
        let mut failed = 0;
        for seed in args.first_seed..args.first_seed + args.seeds {
            let outcome = catch_unwind(AssertUnwindSafe(|| (scenario.run)(seed)))
                .unwrap_or_else(|_| Err("panicked".into()));
            if args.trace {
                println!("--- trace of {} seed {seed}", scenario.name);
                for line in last_trace() {
                    println!("  {line}");
                }
            }
            if let Err(why) = outcome {
                failed += 1;
                let first_line = why.lines().next().unwrap_or_default().to_owned();
                println!(
                    "FAIL {} seed {seed}: {first_line}\n  reproduce: cargo run -p zerok-chaos --bin sweep -- --scenario {} --first-seed {seed} --seeds 1",
                    scenario.name, scenario.name
                );
                if args.seeds == 1 {
                    println!("{why}");
                }
                failures.push((scenario.name, seed));
            }
        }
        println!(
            "{:<36} {} seeds, {} failed, {:.1} s",
            scenario.name,
            args.seeds,
            failed,
            began.elapsed().as_secs_f64()
        );
    }
    println!(
        "{} failing (scenario, seed) pairs in {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
