//! Every scenario of the chaos catalogue (`zerok_chaos::scenarios::catalogue()`) under its
//! fixed seed; `cargo run -p zerok-chaos --bin sweep` runs many seeds.

use zerok_chaos::scenarios::{catalogue, find};

/// The seed `cargo test` runs every scenario under.
const SEED: u64 = 7;

fn run(name: &str) {
    let scenario = find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    if let Err(failure) = (scenario.run)(SEED) {
        panic!(
            "{name} (seed {SEED}) failed: {failure}\nreproduce: cargo run -p zerok-chaos --bin sweep -- --scenario {name} --first-seed {SEED} --seeds 1"
        );
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        #[test]
        fn every_catalogued_scenario_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for scenario in catalogue() {
                assert!(tested.contains(&scenario.name), "{} has no test", scenario.name);
            }
        }
    };
}

scenarios!(
    steady_pushes,
    a_late_burst_after_quiet,
    partitioned_receiver,
    partitioned_pusher,
    held_then_released,
    flapping_link,
    slow_network,
    relay_killed_and_restarted,
    relay_restart_storm,
    receiver_killed_and_restarted,
    sender_killed_mid_stream,
    every_host_restarted,
    one_of_two_relays_down,
    split_relay_sets,
    quorum_two_waits_for_both_relays,
    relay_store_writes_fail,
    relay_store_syncs_fail,
    relay_disk_full_then_freed,
    relay_sweeps_fail,
    encryptor_crashes,
    connection_fails_on_frames,
    one_way_partition,
    three_pushers_one_cut_off,
    tampering_relay,
    duplicating_relay,
    dropping_relay,
);
