//! Processes: relays and devices killed and restarted.

use super::*;

fn relay_killed_and_restarted(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "before", 20);
    until(&mut world, "first acks", |s| {
        lock(&s.devices[0].acked).len() >= 5
    })?;
    world.crash(&relay_host(0));
    pushed.push(&world, 0, "during", 10);
    run(&mut world, Duration::from_secs(5))?;
    world.bounce(&relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_restart_storm(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    for round in 0..4 {
        pushed.push(&world, 0, &format!("storm{round}"), 8);
        pushed.push(&world, 1, &format!("storm{round}"), 8);
        run(&mut world, Duration::from_millis(300))?;
        world.bounce(&relay_host(0));
        run(&mut world, Duration::from_secs(1))?;
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn receiver_killed_and_restarted(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "a", 20);
    until(&mut world, "first records", |s| {
        lock(&s.devices[1].received).len() >= 5
    })?;
    world.crash(&device_host(1));
    pushed.push(&world, 0, "b", 20);
    run(&mut world, Duration::from_secs(5))?;
    world.bounce(&device_host(1));
    converge_and_check(&mut world, &pushed, Delivery::AtLeastOnce)?;
    ensure(
        &world,
        *lock(&world.device(1).starts) == 2,
        "the receiver started twice",
    )
}

fn sender_killed_mid_stream(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "first", 30);
    until(&mut world, "first acks", |s| {
        !lock(&s.devices[0].acked).is_empty()
    })?;
    // Killed with pushes sealed, sent and not all acked: what its app was never told is
    // acked may or may not arrive, under a seq no later record takes.
    world.crash(&device_host(0));
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&device_host(0));
    pushes_after_a_crash_arrive(
        &mut world,
        &mut pushed,
        "second",
        20,
        &[0],
        Delivery::ExactlyOnce,
    )?;
    ensure(
        &world,
        *lock(&world.device(0).starts) == 2,
        "the sender started twice",
    )
}

fn every_host_restarted(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "x", 10);
    pushed.push(&world, 1, "x", 10);
    until(&mut world, "pushes acked", |s| {
        s.devices.iter().all(|d| lock(&d.acked).len() == 10)
    })?;
    for host in [relay_host(0), device_host(0), device_host(1)] {
        world.crash(&host);
    }
    run(&mut world, Duration::from_secs(3))?;
    for host in [relay_host(0), device_host(0), device_host(1)] {
        world.bounce(&host);
    }
    pushed.push(&world, 0, "y", 10);
    pushed.push(&world, 1, "y", 10);
    converge_and_check(&mut world, &pushed, Delivery::AtLeastOnce)
}

fn receiver_restarted_repeatedly(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    for round in 0..3 {
        pushed.push(&world, 0, &format!("r{round}"), 10);
        run(&mut world, Duration::from_millis(600))?;
        world.bounce(&device_host(1));
    }
    converge_and_check(&mut world, &pushed, Delivery::AtLeastOnce)?;
    ensure(
        &world,
        *lock(&world.device(1).starts) == 4,
        "the receiver started four times",
    )
}

fn relay_killed_during_catch_up(seed: u64) -> Outcome {
    // A device back from offline pulls a backlog; the relay dies half-way and comes back.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    catch_up_under_way(&mut world, &mut pushed, 150)?;
    world.crash(&relay_host(0));
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn sender_and_relay_killed_together(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "both", 20);
    until(&mut world, "first acks", |s| {
        lock(&s.devices[0].acked).len() >= 5
    })?;
    world.crash(&device_host(0));
    world.crash(&relay_host(0));
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&relay_host(0));
    world.bounce(&device_host(0));
    pushes_after_a_crash_arrive(
        &mut world,
        &mut pushed,
        "later",
        10,
        &[0, 1],
        Delivery::ExactlyOnce,
    )
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "relay_killed_and_restarted",
        group: "process",
        proves: "a relay killed mid-stream loses no acked push; pushes made while it is down go after",
        run: relay_killed_and_restarted,
    },
    Scenario {
        name: "relay_restart_storm",
        group: "process",
        proves: "four relay restarts within seconds while two devices push lose and duplicate nothing",
        run: relay_restart_storm,
    },
    Scenario {
        name: "receiver_killed_and_restarted",
        group: "process",
        proves: "a receiver killed while records flow gets every acked record after its restart",
        run: receiver_killed_and_restarted,
    },
    Scenario {
        name: "sender_killed_mid_stream",
        group: "process",
        proves: "a sender killed with pushes in flight keeps what was acked and never reuses a seq",
        run: sender_killed_mid_stream,
    },
    Scenario {
        name: "every_host_restarted",
        group: "process",
        proves: "the relay and both devices killed at once and restarted converge with new pushes",
        run: every_host_restarted,
    },
    Scenario {
        name: "receiver_restarted_repeatedly",
        group: "process",
        proves: "a receiver restarted three times while records flow ends with every acked record",
        run: receiver_restarted_repeatedly,
    },
    Scenario {
        name: "relay_killed_during_catch_up",
        group: "process",
        proves: "a relay killed half-way through a device's 150-record catch-up: the catch-up resumes, nothing lost or doubled",
        run: relay_killed_during_catch_up,
    },
    Scenario {
        name: "sender_and_relay_killed_together",
        group: "process",
        proves: "a sender and its relay killed at once: acked pushes survive, no seq is reused, later pushes converge",
        run: sender_and_relay_killed_together,
    },
];
