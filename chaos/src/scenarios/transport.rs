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
];
