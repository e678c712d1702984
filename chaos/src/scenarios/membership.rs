//! Membership under faults (issue 14): devices admitted by a member through the relays while
//! the member crashes, a relay is cut off from it, or the joiner itself is killed mid-join.
//! Every scenario ends with every device in the group, syncing, and the usual invariants.

use super::*;

/// A world whose devices are still joining: the first device has published its invites
/// (pairing codes if `pairing`).
fn world_joining(
    seed: u64,
    devices: usize,
    relays: usize,
    pairing: bool,
) -> Result<SimWorld, String> {
    let mut world = SimWorld::new(WorldConfig {
        seed,
        devices,
        relays,
        pairing,
        ..WorldConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let published = world
        .run_until(Duration::from_secs(60), |shared| shared.invites_published())
        .map_err(|e| failed(&world, e.to_string()))?;
    ensure(&world, published, "the first device published no invites")?;
    Ok(world)
}

/// Every device joined (admitted by the member), then each pushes and all converge.
fn joined_then_converge(world: &mut SimWorld, devices: usize, tag: &str) -> Outcome {
    world.settle().map_err(|e| failed(world, e.to_string()))?;
    let mut pushed = Pushed::default();
    for dev in 0..devices {
        pushed.push(world, dev, tag, 10);
    }
    converge_and_check(world, &pushed, Delivery::ExactlyOnce)
}

/// Device `dev` of a world of `devices` crashes `after` the invites were published, is down
/// for `down`, starts again; then everyone joined, pushed and converged.
fn crash_while_joining(
    seed: u64,
    devices: usize,
    dev: usize,
    after: Duration,
    down: Duration,
) -> Outcome {
    let mut world = world_joining(seed, devices, 1, false)?;
    run(&mut world, after)?;
    world.crash(&device_host(dev));
    run(&mut world, down)?;
    world.bounce(&device_host(dev));
    joined_then_converge(&mut world, devices, "after-restart")
}

fn member_restarts_while_devices_join(seed: u64) -> Outcome {
    // The admitting device crashes as the joiners ask (maybe after writing an `Add`, before
    // posting its admission): started again, it answers them from its invite mailboxes.
    // The crash falls anywhere from before the member reached the relay to after it
    // answered.
    let after = Duration::from_millis(100 + seed.wrapping_mul(37) % 500);
    crash_while_joining(seed, 3, 0, after, Duration::from_secs(3))
}

fn admission_with_a_relay_cut_off_from_the_member(seed: u64) -> Outcome {
    // The member reaches one of two relays: its `Add` is acked there only, and the
    // admission goes out once the wait for the other relay is over.
    let mut world = world_joining(seed, 2, 2, false)?;
    world.partition(&device_host(0), &relay_host(1));
    world.settle().map_err(|e| failed(&world, e.to_string()))?;
    world.repair(&device_host(0), &relay_host(1));
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "member", 10);
    pushed.push(&world, 1, "joiner", 10);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn joiner_killed_mid_join(seed: u64) -> Outcome {
    // The joiner dies while it waits for its admission; started again, it asks again with
    // the same invite and is admitted (once: a second `Add` of it changes nothing).
    let after = Duration::from_millis(60 + seed.wrapping_mul(29) % 400);
    crash_while_joining(seed, 2, 1, after, Duration::from_secs(2))
}

fn devices_pair_while_a_relay_is_cut_off(seed: u64) -> Outcome {
    // Two devices pair with the first one at once (two codes, two rendezvous mailboxes);
    // one of them reaches only one of the two relays for a while, from a moment that
    // falls anywhere in its exchange or its admission.
    let mut world = world_joining(seed, 3, 2, true)?;
    run(
        &mut world,
        Duration::from_millis(seed.wrapping_mul(31) % 400),
    )?;
    world.partition(&device_host(1), &relay_host(1));
    run(&mut world, Duration::from_secs(5))?;
    world.repair(&device_host(1), &relay_host(1));
    joined_then_converge(&mut world, 3, "paired")
}

fn device_removed_while_a_relay_restarts(seed: u64) -> Outcome {
    // Three devices on two relays sync; the first removes the third while one relay is
    // down (from a moment anywhere around the removal), and it comes back. The two left
    // keep syncing in the new epoch; the removed one is told, and reads nothing the remover
    // wrote after (the other member's pushes from before it took the rekey may reach it).
    let mut world = world_joining(seed, 3, 2, false)?;
    world.settle().map_err(|e| failed(&world, e.to_string()))?;
    let mut pushed = Pushed::default();
    for dev in 0..3 {
        pushed.push(&world, dev, "before", 5);
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)?;
    world.crash(&relay_host(1));
    run(
        &mut world,
        Duration::from_millis(seed.wrapping_mul(41) % 300),
    )?;
    world.remove(0, 2);
    pushed.push(&world, 0, "after", 10);
    pushed.push(&world, 1, "after", 10);
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&relay_host(1));
    let told = world
        .run_until(Duration::from_secs(60), |shared| {
            *zerok_messages::sync::lock(&shared.devices[2].removed)
        })
        .map_err(|e| failed(&world, e.to_string()))?;
    ensure(&world, told, "the removed device was not told")?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)?;
    let read_after = zerok_messages::sync::lock(&world.device(2).received)
        .iter()
        .filter(|r| crate::world::show(&r.payload).contains("dev0-after-"))
        .count();
    ensure(
        &world,
        read_after == 0,
        &format!("the removed device read {read_after} records the remover wrote after"),
    )
}

/// The membership scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "member_restarts_while_devices_join",
        group: "membership",
        proves: "the admitting device crashes while two devices ask to join; started again, it admits both from its invite mailboxes, and all sync",
        run: member_restarts_while_devices_join,
    },
    Scenario {
        name: "admission_with_a_relay_cut_off_from_the_member",
        group: "membership",
        proves: "a member that reaches one of two relays admits a device after the ack quorum and a bounded wait; the group syncs once the cut heals",
        run: admission_with_a_relay_cut_off_from_the_member,
    },
    Scenario {
        name: "joiner_killed_mid_join",
        group: "membership",
        proves: "a device killed while it waits for its admission asks again with the same invite after its restart and is admitted",
        run: joiner_killed_mid_join,
    },
    Scenario {
        name: "devices_pair_while_a_relay_is_cut_off",
        group: "membership",
        proves: "two devices pair with a member at once by codes (SPAKE2 through rendezvous mailboxes) while one reaches only one relay for a while; both are admitted and all sync",
        run: devices_pair_while_a_relay_is_cut_off,
    },
    Scenario {
        name: "device_removed_while_a_relay_restarts",
        group: "membership",
        proves: "a device removed while one of two relays is down is told and reads nothing written after; the others move to the new epoch and every acked push reaches them once",
        run: device_removed_while_a_relay_restarts,
    },
];
