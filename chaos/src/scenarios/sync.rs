//! The sync state machine: concurrent pushers, quiet periods, convergence.

use super::*;

fn steady_pushes(seed: u64) -> Outcome {
    let mut world = world(seed, 3, 1)?;
    let mut pushed = Pushed::default();
    for dev in 0..3 {
        pushed.push(&world, dev, "steady", 20);
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn a_late_burst_after_quiet(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "early", 3);
    run(&mut world, Duration::from_secs(120))?;
    pushed.push(&world, 0, "late", 40);
    pushed.push(&world, 1, "late", 40);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn three_pushers_one_cut_off(seed: u64) -> Outcome {
    let mut world = world(seed, 3, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(2), &relay_host(0));
    for dev in 0..3 {
        pushed.push(&world, dev, "three", 12);
    }
    run(&mut world, Duration::from_secs(10))?;
    ensure(
        &world,
        acked(&world, 2) == 0,
        "the cut-off device was acked",
    )?;
    world.repair(&device_host(2), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn four_concurrent_pushers(seed: u64) -> Outcome {
    let mut world = world(seed, 4, 1)?;
    let mut pushed = Pushed::default();
    for dev in 0..4 {
        pushed.push(&world, dev, "four", 15);
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn seeded_bursts(seed: u64) -> Outcome {
    // Bursts of seeded sizes from seeded devices at seeded intervals.
    let mut world = world(seed, 3, 1)?;
    let mut pushed = Pushed::default();
    let mut rng = Rng::seeded(seed);
    for round in 0..10 {
        let dev = rng.below(3) as usize;
        let n = 1 + rng.below(12) as usize;
        pushed.push(&world, dev, &format!("burst{round}"), n);
        run(&mut world, Duration::from_millis(rng.below(2_000)))?;
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn large_backlog_catch_up(seed: u64) -> Outcome {
    // A device offline while 400 records pile up catches up in pages, in order.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "pile", 400);
    until(&mut world, "the backlog acked", |s| {
        lock(&s.devices[0].acked).len() == 400
    })?;
    world.repair(&device_host(1), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn catch_up_paused_and_resumed(seed: u64) -> Outcome {
    // A catch-up cut off twice half-way resumes from where it stopped.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "paused", 300);
    until(&mut world, "the backlog acked", |s| {
        lock(&s.devices[0].acked).len() == 300
    })?;
    for stop_at in [40, 150] {
        world.repair(&device_host(1), &relay_host(0));
        until(&mut world, "catch-up under way", |s| {
            lock(&s.devices[1].received).len() >= stop_at
        })?;
        world.partition(&device_host(1), &relay_host(0));
        run(&mut world, Duration::from_secs(5))?;
    }
    pushed.push(&world, 0, "meanwhile", 10);
    world.repair(&device_host(1), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn pushing_while_catching_up(seed: u64) -> Outcome {
    // Live records arrive while the receiver still pulls its backlog: each once, in order.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "old", 200);
    until(&mut world, "the backlog acked", |s| {
        lock(&s.devices[0].acked).len() == 200
    })?;
    world.repair(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "live", 30);
    pushed.push(&world, 1, "live", 30);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "steady_pushes",
        group: "sync",
        proves: "three devices pushing at once each get the others' records once, in order",
        run: steady_pushes,
    },
    Scenario {
        name: "a_late_burst_after_quiet",
        group: "sync",
        proves: "after two idle minutes (pings, idle timeouts) a burst from two devices still converges",
        run: a_late_burst_after_quiet,
    },
    Scenario {
        name: "three_pushers_one_cut_off",
        group: "sync",
        proves: "of three concurrent pushers, the one cut off is not acked and all converge after the heal",
        run: three_pushers_one_cut_off,
    },
    Scenario {
        name: "four_concurrent_pushers",
        group: "sync",
        proves: "four devices pushing at once each get the three others' records once, in order",
        run: four_concurrent_pushers,
    },
    Scenario {
        name: "seeded_bursts",
        group: "sync",
        proves: "ten bursts of seeded sizes from seeded devices at seeded intervals converge exactly once",
        run: seeded_bursts,
    },
    Scenario {
        name: "large_backlog_catch_up",
        group: "sync",
        proves: "a device offline while 400 records pile up catches up page by page, each once, in order",
        run: large_backlog_catch_up,
    },
    Scenario {
        name: "catch_up_paused_and_resumed",
        group: "sync",
        proves: "a 300-record catch-up cut off twice half-way resumes where it stopped, without doubles",
        run: catch_up_paused_and_resumed,
    },
    Scenario {
        name: "pushing_while_catching_up",
        group: "sync",
        proves: "live records arriving during a 200-record catch-up are delivered once each, in per-sender order",
        run: pushing_while_catching_up,
    },
];
