//! Several relays: relay loss, split relay sets, ack quorums.

use super::*;

fn one_of_two_relays_down(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 2)?;
    let mut pushed = Pushed::default();
    world.crash(&relay_host(1));
    pushed.push(&world, 0, "one-up", 20);
    until(&mut world, "acked by the relay left", |s| {
        lock(&s.devices[0].acked).len() == 20
    })?;
    world.bounce(&relay_host(1));
    pushed.push(&world, 1, "both-up", 10);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn split_relay_sets(seed: u64) -> Outcome {
    // Each device reaches a different relay; the group's records still meet.
    let mut world = world(seed, 2, 2)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(0), &relay_host(1));
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "left", 15);
    pushed.push(&world, 1, "right", 15);
    until(&mut world, "pushes acked", |s| {
        s.devices.iter().all(|d| lock(&d.acked).len() == 15)
    })?;
    ensure(&world, received(&world, 1) == 0, "crossed a split")?;
    world.repair(&device_host(0), &relay_host(1));
    world.repair(&device_host(1), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn quorum_two_waits_for_both_relays(seed: u64) -> Outcome {
    let mut world = world_with(WorldConfig {
        seed,
        relays: 2,
        ack_quorum: 2,
        ..WorldConfig::default()
    })?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(0), &relay_host(1));
    pushed.push(&world, 0, "q2", 10);
    run(&mut world, Duration::from_secs(10))?;
    ensure(
        &world,
        acked(&world, 0) == 0,
        "acked by one relay with a quorum of two",
    )?;
    world.repair(&device_host(0), &relay_host(1));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "one_of_two_relays_down",
        group: "multi-relay",
        proves: "with one of two relays down pushes are acked by the other; it catches up after",
        run: one_of_two_relays_down,
    },
    Scenario {
        name: "split_relay_sets",
        group: "multi-relay",
        proves: "two devices that each reach a different relay converge once both reach both",
        run: split_relay_sets,
    },
    Scenario {
        name: "quorum_two_waits_for_both_relays",
        group: "multi-relay",
        proves: "with a quorum of two a push is not acked until both relays stored it",
        run: quorum_two_waits_for_both_relays,
    },
];
