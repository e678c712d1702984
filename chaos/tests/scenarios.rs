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
    relay_power_loss_after_acks,
    relay_torn_power_loss_after_acks,
    relay_power_loss_mid_stream,
    relay_power_lost_at_a_sync,
    relay_power_loss_storm,
    relay_power_loss_after_sweeps,
    damaged_relay_segment,
    device_local_commits_fail,
    device_power_loss_after_acks,
    device_torn_power_loss_mid_stream,
    receiver_power_loss_during_catch_up,
    device_power_lost_at_a_sync,
    device_power_loss_storm,
    every_host_loses_power,
    relay_item_budget_reached,
    relay_sweeps_fail,
    device_clocks_hours_apart,
    relay_clock_days_behind,
    relay_clock_jumps_back,
    device_clock_jumps_back,
    clocks_jump_both_ways_repeatedly,
    expired_records_are_reported_as_a_gap,
    relay_loses_all_its_data,
    relay_wiped_while_a_device_was_offline,
    quorum_two_of_three_with_one_down,
    rolling_relay_restarts,
    three_relays_each_device_cut_from_one,
    receiver_restarted_repeatedly,
    relay_killed_during_catch_up,
    sender_and_relay_killed_together,
    four_concurrent_pushers,
    seeded_bursts,
    large_backlog_catch_up,
    catch_up_paused_and_resumed,
    pushing_while_catching_up,
    lossy_link,
    acks_held_back,
    long_partition_with_backoff,
    narrow_link,
    narrow_uplink_and_partition,
    relay_sends_fail,
    device_sends_fail,
    relay_receives_fail,
    relay_store_actor_killed,
    relay_router_killed,
    relay_session_killed,
    relay_sweeper_killed,
    relay_escalates_to_a_restart,
    device_connection_killed,
    device_encryptor_killed,
    device_coordinator_killed,
    encryptor_crashes,
    connection_fails_on_frames,
    one_way_partition,
    three_pushers_one_cut_off,
    tampering_relay,
    duplicating_relay,
    dropping_relay,
    // adversarial (hostile middleware)
    replaying_relay,
    reordering_relay,
    forging_relay,
    truncating_relay,
    dropping_only_relay,
    tampering_only_relay,
    forged_handshake_relay,
    impersonating_relay,
    // membership
    member_restarts_while_devices_join,
    admission_with_a_relay_cut_off_from_the_member,
    joiner_killed_mid_join,
    devices_pair_while_a_relay_is_cut_off,
    device_removed_while_a_relay_restarts,
);
