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
];
