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

fn relay_loses_all_its_data(seed: u64) -> Outcome {
    // One of two relays comes back from a dead disk, empty, under its old id.
    let mut world = world(seed, 2, 2)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "before", 15);
    until(&mut world, "pushes acked", |s| {
        lock(&s.devices[0].acked).len() == 15
    })?;
    world.wipe_relay(1);
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&relay_host(1));
    pushed.push(&world, 0, "after", 15);
    pushed.push(&world, 1, "after", 15);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_wiped_while_a_device_was_offline(seed: u64) -> Outcome {
    // The offline device's records are on both relays; one loses them; the other serves.
    let mut world = world(seed, 2, 2)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    world.partition(&device_host(1), &relay_host(1));
    pushed.push(&world, 0, "kept-once", 20);
    until(&mut world, "acked by both relays", |s| {
        lock(&s.devices[0].acked).len() == 20
    })?;
    run(&mut world, Duration::from_secs(2))?;
    world.wipe_relay(0);
    world.bounce(&relay_host(0));
    world.repair(&device_host(1), &relay_host(0));
    world.repair(&device_host(1), &relay_host(1));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn quorum_two_of_three_with_one_down(seed: u64) -> Outcome {
    let mut world = world_with(WorldConfig {
        seed,
        relays: 3,
        ack_quorum: 2,
        ..WorldConfig::default()
    })?;
    let mut pushed = Pushed::default();
    world.crash(&relay_host(2));
    pushed.push(&world, 0, "q23", 15);
    pushed.push(&world, 1, "q23", 15);
    until(&mut world, "acked by the two relays up", |s| {
        s.devices.iter().all(|d| lock(&d.acked).len() == 15)
    })?;
    world.bounce(&relay_host(2));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn rolling_relay_restarts(seed: u64) -> Outcome {
    // An operator restarts each of two relays in turn while devices push.
    let mut world = world(seed, 2, 2)?;
    let mut pushed = Pushed::default();
    for round in 0..4 {
        pushed.push(&world, round % 2, &format!("roll{round}"), 10);
        run(&mut world, Duration::from_millis(500))?;
        world.crash(&relay_host(round % 2));
        run(&mut world, Duration::from_secs(2))?;
        world.bounce(&relay_host(round % 2));
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn three_relays_each_device_cut_from_one(seed: u64) -> Outcome {
    let mut world = world(seed, 3, 3)?;
    let mut pushed = Pushed::default();
    for dev in 0..3 {
        world.partition(&device_host(dev), &relay_host(dev));
    }
    for dev in 0..3 {
        pushed.push(&world, dev, "three", 10);
    }
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
    Scenario {
        name: "relay_loses_all_its_data",
        group: "multi-relay",
        proves: "one of two relays coming back empty (dead disk, same id) loses no acked push; new pushes reach everyone",
        run: relay_loses_all_its_data,
    },
    Scenario {
        name: "relay_wiped_while_a_device_was_offline",
        group: "multi-relay",
        proves: "records an offline device missed survive one relay's data loss on the other relay",
        run: relay_wiped_while_a_device_was_offline,
    },
    Scenario {
        name: "quorum_two_of_three_with_one_down",
        group: "multi-relay",
        proves: "with a quorum of two of three relays and one down, pushes are acked by the other two; the third catches up",
        run: quorum_two_of_three_with_one_down,
    },
    Scenario {
        name: "rolling_relay_restarts",
        group: "multi-relay",
        proves: "two relays restarted in turn four times while devices push: nothing lost or duplicated",
        run: rolling_relay_restarts,
    },
    Scenario {
        name: "three_relays_each_device_cut_from_one",
        group: "multi-relay",
        proves: "three devices each cut from a different one of three relays converge through the others",
        run: three_relays_each_device_cut_from_one,
    },
];
