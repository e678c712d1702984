//! The network: partitions (both ways and one way), held frames, flapping links, latency.

use super::*;

fn partitioned_receiver(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "cut", 30);
    run(&mut world, Duration::from_secs(20))?;
    ensure(
        &world,
        received(&world, 1) == 0,
        "received through a partition",
    )?;
    world.repair(&device_host(1), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn partitioned_pusher(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(0), &relay_host(0));
    pushed.push(&world, 0, "offline", 25);
    run(&mut world, Duration::from_secs(15))?;
    ensure(&world, acked(&world, 0) == 0, "acked while cut off")?;
    world.repair(&device_host(0), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn held_then_released(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.hold(&device_host(0), &relay_host(0));
    pushed.push(&world, 0, "held", 15);
    run(&mut world, Duration::from_secs(3))?;
    world.release(&device_host(0), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn flapping_link(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    for round in 0..5 {
        pushed.push(&world, 0, &format!("flap{round}"), 6);
        run(&mut world, Duration::from_millis(700))?;
        world.partition(&device_host(0), &relay_host(0));
        run(&mut world, Duration::from_secs(2))?;
        world.repair(&device_host(0), &relay_host(0));
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn slow_network(seed: u64) -> Outcome {
    let mut world = world_with(WorldConfig {
        seed,
        max_latency: Duration::from_millis(500),
        ..WorldConfig::default()
    })?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "slow", 30);
    pushed.push(&world, 1, "slow", 30);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn one_way_partition(seed: u64) -> Outcome {
    // The relay's frames to the receiver are lost, the receiver's to the relay are not.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition_oneway(&relay_host(0), &device_host(1));
    pushed.push(&world, 0, "oneway", 15);
    run(&mut world, Duration::from_secs(20))?;
    ensure(
        &world,
        received(&world, 1) == 0,
        "received across a one-way cut",
    )?;
    world.repair(&relay_host(0), &device_host(1));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn lossy_link(seed: u64) -> Outcome {
    // Messages lost at 2% on the pusher's link: every loss resets the connection.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.lossy(&device_host(0), &relay_host(0), 0.02);
    for round in 0..5 {
        pushed.push(&world, 0, &format!("lossy{round}"), 6);
        run(&mut world, Duration::from_millis(800))?;
    }
    world.lossy(&device_host(0), &relay_host(0), 0.0);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn acks_held_back(seed: u64) -> Outcome {
    // The relay's acks to the pusher are held for 20 s (past the push timeout), then
    // released: late and repeated acks change nothing.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.hold(&relay_host(0), &device_host(0));
    pushed.push(&world, 0, "held-acks", 15);
    run(&mut world, Duration::from_secs(20))?;
    world.release(&relay_host(0), &device_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn long_partition_with_backoff(seed: u64) -> Outcome {
    // Three minutes cut off (reconnect backoff at its longest), then healed.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(0), &relay_host(0));
    pushed.push(&world, 0, "long", 20);
    run(&mut world, Duration::from_secs(180))?;
    ensure(&world, acked(&world, 0) == 0, "acked while cut off")?;
    world.repair(&device_host(0), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn narrow_link(seed: u64) -> Outcome {
    // The relay sends at 16 KiB/s: live deliveries and catch-up queue behind each other.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.bandwidth(&relay_host(0), Some(16 * 1024));
    pushed.push(&world, 0, "narrow", 60);
    pushed.push(&world, 1, "narrow", 60);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn narrow_uplink_and_partition(seed: u64) -> Outcome {
    // A pusher on a 4 KiB/s uplink is cut off mid-stream and comes back.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.bandwidth(&device_host(0), Some(4 * 1024));
    pushed.push(&world, 0, "uplink", 30);
    run(&mut world, Duration::from_secs(3))?;
    world.partition(&device_host(0), &relay_host(0));
    run(&mut world, Duration::from_secs(5))?;
    world.repair(&device_host(0), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "partitioned_receiver",
        group: "transport",
        proves: "a receiver cut off for 20 s gets nothing meanwhile and everything after the heal",
        run: partitioned_receiver,
    },
    Scenario {
        name: "partitioned_pusher",
        group: "transport",
        proves: "pushes made while cut off are not acked, and all are once the link heals",
        run: partitioned_pusher,
    },
    Scenario {
        name: "held_then_released",
        group: "transport",
        proves: "frames held in the network for 3 s and then released are delivered once",
        run: held_then_released,
    },
    Scenario {
        name: "flapping_link",
        group: "transport",
        proves: "a pusher's link cut and healed five times loses and duplicates nothing",
        run: flapping_link,
    },
    Scenario {
        name: "slow_network",
        group: "transport",
        proves: "with up to 500 ms of latency per message both devices converge in order",
        run: slow_network,
    },
    Scenario {
        name: "one_way_partition",
        group: "transport",
        proves: "a receiver the relay cannot reach (it can reach the relay) gets everything after the repair",
        run: one_way_partition,
    },
    Scenario {
        name: "lossy_link",
        group: "transport",
        proves: "2% message loss on a pusher's link (each loss a connection reset) loses and duplicates nothing",
        run: lossy_link,
    },
    Scenario {
        name: "acks_held_back",
        group: "transport",
        proves: "acks held for 20 s past the push timeout, then released: late and repeated acks change nothing",
        run: acks_held_back,
    },
    Scenario {
        name: "long_partition_with_backoff",
        group: "transport",
        proves: "a device cut off for three minutes (reconnect backoff at its longest) converges after the heal",
        run: long_partition_with_backoff,
    },
    Scenario {
        name: "narrow_link",
        group: "transport",
        proves: "a relay sending at 16 KiB/s: deliveries queue but every record arrives once, in order",
        run: narrow_link,
    },
    Scenario {
        name: "narrow_uplink_and_partition",
        group: "transport",
        proves: "a pusher on a 4 KiB/s uplink cut off mid-stream: nothing lost or doubled after it is back",
        run: narrow_uplink_and_partition,
    },
];
