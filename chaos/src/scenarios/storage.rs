//! Storage: the relay's writes and syncs failing, a full disk, power lost (everything not
//! synced dropped, or a torn part of it kept) after acks, mid-stream and at a sync point;
//! the same power losses on the devices' disks.

use super::*;
use zerok_actors::relay::blob_store::core::MAILBOX_INDEX_ENTRIES;
use zerok_actors::relay::blob_store::fs::{PowerCut, SimFlaw};

fn relay_store_writes_fail(seed: u64) -> Outcome {
    let point = FaultPoint::BeforeStoreWrite;
    let (mut world, faults) = world_with_relay_fault(seed, point, 0.3)?;
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0, 1], 5, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_store_syncs_fail(seed: u64) -> Outcome {
    let point = FaultPoint::BeforeFlush;
    let (mut world, faults) = world_with_relay_fault(seed, point, 0.3)?;
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0, 1], 5, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_disk_full_then_freed(seed: u64) -> Outcome {
    let (mut world, faults) = world_with_relay_fault(seed, FaultPoint::StoreDiskFull, 1.0)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "full", 15);
    run(&mut world, Duration::from_secs(10))?;
    ensure(&world, acked(&world, 0) == 0, "acked on a full disk")?;
    fired(&world, &faults, FaultPoint::StoreDiskFull)?;
    faults.set(FaultPoint::StoreDiskFull, 0.0);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

/// A torn cut drawn from the scenario's seed.
fn torn(seed: u64) -> PowerCut {
    PowerCut::Torn {
        seed: seed ^ 0x70E1,
    }
}

/// The receiver (dev1) cut off while dev0's pushes are acked; the relay then loses power
/// (`cut`) and restarts; the receiver comes back: what was acked was durable. `flaw` breaks
/// the relay's disk once the world is up (to show the invariants catch a store that acks
/// before its sync).
pub fn acked_then_power_lost(
    seed: u64,
    cut: PowerCut,
    flaw: Option<SimFlaw>,
) -> Result<(SimWorld, Pushed), String> {
    let mut world = world(seed, 2, 1)?;
    world.relay_disk(0).set_flaw(flaw);
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "synced", 20);
    until(&mut world, "every push acked", |s| {
        lock(&s.devices[0].acked).len() == 20
    })?;
    world.power_loss(0, cut);
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&relay_host(0));
    world.repair(&device_host(1), &relay_host(0));
    Ok((world, pushed))
}

fn relay_power_loss_after_acks(seed: u64) -> Outcome {
    let (mut world, pushed) = acked_then_power_lost(seed, PowerCut::DropUnsynced, None)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_torn_power_loss_after_acks(seed: u64) -> Outcome {
    let (mut world, pushed) = acked_then_power_lost(seed, torn(seed), None)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_power_loss_mid_stream(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "stream", 40);
    pushed.push(&world, 1, "stream", 40);
    until(&mut world, "some pushes acked", |s| {
        lock(&s.devices[0].acked).len() >= 8
    })?;
    // Pushes written and not yet synced are lost with the power: never acked, so resent.
    world.power_loss(0, torn(seed));
    run(&mut world, Duration::from_secs(3))?;
    world.bounce(&relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_power_lost_at_a_sync(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    // The disk dies at the k-th sync from now: that sync and everything after fail.
    let k = 1 + Rng::seeded(seed).below(30);
    world.relay_disk(0).fail_at_sync(k);
    for round in 0..40 {
        pushed.push(&world, round % 2, &format!("sync{round}"), 3);
        run(&mut world, Duration::from_millis(250))?;
        if world.relay_disk(0).is_powered_off() {
            break;
        }
    }
    ensure(
        &world,
        world.relay_disk(0).is_powered_off(),
        "the disk never died",
    )?;
    run(&mut world, Duration::from_secs(1))?;
    world.power_loss(0, torn(seed));
    world.bounce(&relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_power_loss_storm(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    for round in 0..4 {
        pushed.push(&world, 0, &format!("storm{round}"), 8);
        pushed.push(&world, 1, &format!("storm{round}"), 8);
        run(&mut world, Duration::from_millis(400))?;
        let cut = if round % 2 == 0 {
            PowerCut::DropUnsynced
        } else {
            torn(seed + round as u64)
        };
        world.power_loss(0, cut);
        run(&mut world, Duration::from_millis(500))?;
        world.bounce(&relay_host(0));
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_power_loss_after_sweeps(seed: u64) -> Outcome {
    // Sweeps run (every 60 s) and the index checkpoints between pushes; then the power goes.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    for round in 0..3 {
        pushed.push(&world, 0, &format!("swept{round}"), 10);
        run(&mut world, Duration::from_secs(70))?;
    }
    until(&mut world, "every push acked", |s| {
        lock(&s.devices[0].acked).len() == 30
    })?;
    world.power_loss(0, torn(seed));
    world.bounce(&relay_host(0));
    world.repair(&device_host(1), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn damaged_relay_segment(seed: u64) -> Outcome {
    // A bad sector under one of two relays' records: the damaged record is never served
    // (every read is verified), the rest are, and the other relay has everything.
    let mut world = world(seed, 2, 2)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    world.partition(&device_host(1), &relay_host(1));
    pushed.push(&world, 0, "sector", 40);
    until(&mut world, "every push acked", |s| {
        lock(&s.devices[0].acked).len() == 40
    })?;
    run(&mut world, Duration::from_secs(3))?;
    world.crash(&relay_host(0));
    ensure(
        &world,
        world.damage_relay_segment(0),
        "no segment with data to damage",
    )?;
    world.bounce(&relay_host(0));
    world.repair(&device_host(1), &relay_host(0));
    world.repair(&device_host(1), &relay_host(1));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn device_local_commits_fail(seed: u64) -> Outcome {
    // 20% of a pusher's local journal syncs fail. A failed sync is final for an open store,
    // so the client stops (its coordinator dies: the documented escalation); its pushes
    // fail to its app, which starts the client again and pushes them again. Every record
    // lands once. (Before, the client stayed up and failed every later push.)
    let point = FaultPoint::BeforeFlush;
    // From the first push on: the group is created and joined on healthy disks (a sweep
    // found seeds where creating it failed, which this scenario is not about).
    let (mut world, faults) = world_with_device_fault(seed, 0, point, 0.0)?;
    faults.set(point, 0.2);
    world.expect_escalation(&device_host(0));
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0], 5, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_item_budget_reached(seed: u64) -> Outcome {
    // The relay's item budget holds 20 records (one index entry per item, and
    // `MAILBOX_INDEX_ENTRIES` per mailbox) beyond what the world's setup stores: the group's
    // mailbox and the invite's, the invite and the `Add` (the group's roster records), the
    // join request and the admission. Past it pushes are refused (`quota_exceeded`, retried
    // after the hint) and never acked; the 20 acked are delivered, and `budgets_hold` sees
    // the relay's index entries stay within the budget all along.
    const SETUP_ITEMS: u64 = 4;
    let mut world = world_with(WorldConfig {
        seed,
        relay_max_items: Some(2 * MAILBOX_INDEX_ENTRIES + SETUP_ITEMS + 20),
        ..WorldConfig::default()
    })?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "budget", 30);
    until(&mut world, "the budget's pushes acked", |s| {
        lock(&s.devices[0].acked).len() >= 20
    })?;
    run(&mut world, Duration::from_secs(20))?;
    ensure(
        &world,
        acked(&world, 0) == 20,
        "exactly the budget's 20 pushes acked",
    )?;
    until(&mut world, "the acked pushes delivered", |s| {
        acked_pushes_reach_every_other_device(s).is_ok()
    })?;
    run(&mut world, Duration::from_secs(2))?;
    safety_holds(&world, &pushed, Delivery::ExactlyOnce)
}

/// Device `i`'s power cut as `cut` (its host crashes; see [`SimWorld::device_power_loss`]).
fn device_power_loss(world: &mut SimWorld, i: usize, cut: PowerCut) -> Outcome {
    world
        .device_power_loss(i, cut)
        .map_err(|e| failed(world, format!("power cut on dev{i}'s disk: {e}")))
}

fn starts(world: &SimWorld, dev: usize) -> u64 {
    *lock(&world.device(dev).starts)
}

/// The device that pushes in [`pushed_then_device_power_lost`].
pub const PUSHER: usize = 1;

/// [`PUSHER`]'s pushes all acked, then its disk loses power (`cut`) and it starts again on
/// what its store synced, and pushes 20 more (tagged `after`). With `broken`, its disk keeps
/// nothing its store syncs once the world is up (to show the invariants catch a device
/// that forgets what it synced).
pub fn pushed_then_device_power_lost(
    seed: u64,
    cut: PowerCut,
    broken: bool,
) -> Result<(SimWorld, Pushed), String> {
    // The pusher is the device that joined: it wrote no roster record while the world was
    // set up, so nothing it synced before its disk breaks covers its seqs.
    let mut world = world(seed, 2, 1)?;
    if broken {
        world.device_disk(PUSHER).break_syncs();
    }
    let mut pushed = Pushed::default();
    pushed.push(&world, PUSHER, "before", 20);
    until(&mut world, "every push acked", |s| {
        lock(&s.devices[PUSHER].acked).len() == 20
    })?;
    device_power_loss(&mut world, PUSHER, cut)?;
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&device_host(PUSHER));
    pushed.push(&world, PUSHER, "after", 20);
    Ok((world, pushed))
}

fn device_power_loss_after_acks(seed: u64) -> Outcome {
    let (mut world, pushed) = pushed_then_device_power_lost(seed, PowerCut::DropUnsynced, false)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)?;
    ensure(
        &world,
        starts(&world, PUSHER) == 2,
        "the pusher started twice",
    )
}

fn device_torn_power_loss_mid_stream(seed: u64) -> Outcome {
    // Pushes go to the relay before their local sync ends: the cut loses some that the relay
    // has. They may reach the other device (never acked to their app), under seqs the
    // device reserved durably before sending, so no later record takes them.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "first", 40);
    until(&mut world, "first acks", |s| {
        lock(&s.devices[0].acked).len() >= 8
    })?;
    device_power_loss(&mut world, 0, torn(seed))?;
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
    ensure(&world, starts(&world, 0) == 2, "the pusher started twice")
}

fn receiver_power_loss_during_catch_up(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    catch_up_under_way(&mut world, &mut pushed, 100)?;
    // Its cursor and seq tracker go back to the last sync: it reads again from there.
    device_power_loss(&mut world, 1, torn(seed))?;
    run(&mut world, Duration::from_secs(2))?;
    world.bounce(&device_host(1));
    converge_and_check(&mut world, &pushed, Delivery::AtLeastOnce)?;
    ensure(&world, starts(&world, 1) == 2, "the receiver started twice")
}

fn device_power_lost_at_a_sync(seed: u64) -> Outcome {
    // Both devices push and receive; dev0's power goes right after the k-th sync of its
    // store from now (seeded), before anything else runs on it.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    let disk = world.device_disk(0).clone();
    let at = disk.syncs() + 1 + Rng::seeded(seed).below(40);
    let mut reached = false;
    for round in 0..60 {
        pushed.push(&world, 0, &format!("sync{round}"), 3);
        pushed.push(&world, 1, &format!("sync{round}"), 2);
        reached = world
            .run_until(Duration::from_millis(250), |_| disk.syncs() >= at)
            .map_err(|e| failed(&world, e.to_string()))?;
        if reached {
            break;
        }
    }
    ensure(&world, reached, "the sync point never came")?;
    device_power_loss(&mut world, 0, PowerCut::DropUnsynced)?;
    run(&mut world, Duration::from_secs(1))?;
    world.bounce(&device_host(0));
    pushes_after_a_crash_arrive(
        &mut world,
        &mut pushed,
        "after",
        10,
        &[0, 1],
        Delivery::AtLeastOnce,
    )
}

fn device_power_loss_storm(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    for round in 0..4 {
        pushed.push(&world, 0, &format!("storm{round}"), 6);
        pushed.push(&world, 1, &format!("storm{round}"), 6);
        run(&mut world, Duration::from_millis(400))?;
        let cut = if round % 2 == 0 {
            PowerCut::DropUnsynced
        } else {
            torn(seed + round as u64)
        };
        device_power_loss(&mut world, round % 2, cut)?;
        run(&mut world, Duration::from_millis(500))?;
        world.bounce(&device_host(round % 2));
    }
    pushes_after_a_crash_arrive(
        &mut world,
        &mut pushed,
        "after",
        10,
        &[0, 1],
        Delivery::AtLeastOnce,
    )
}

fn every_host_loses_power(seed: u64) -> Outcome {
    // An outage takes the relay and both devices at once, pushes in flight: each comes back
    // on what it synced (torn), the relay with every push it acked.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "acked", 10);
    pushed.push(&world, 1, "acked", 10);
    until(&mut world, "pushes acked", |s| all_acked(s, 20))?;
    pushed.push(&world, 0, "inflight", 5);
    pushed.push(&world, 1, "inflight", 5);
    run(&mut world, Duration::from_millis(60))?;
    world.power_loss(0, torn(seed));
    device_power_loss(&mut world, 0, torn(seed + 1))?;
    device_power_loss(&mut world, 1, torn(seed + 2))?;
    run(&mut world, Duration::from_secs(3))?;
    for host in [relay_host(0), device_host(0), device_host(1)] {
        world.bounce(&host);
    }
    pushes_after_a_crash_arrive(
        &mut world,
        &mut pushed,
        "after",
        10,
        &[0, 1],
        Delivery::AtLeastOnce,
    )
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "relay_store_writes_fail",
        group: "storage",
        proves: "with 30% of the relay's store writes failing, refused pushes are retried and all converge once",
        run: relay_store_writes_fail,
    },
    Scenario {
        name: "relay_store_syncs_fail",
        group: "storage",
        proves: "with 30% of the relay's syncs failing, nothing is acked before durable and all converge once",
        run: relay_store_syncs_fail,
    },
    Scenario {
        name: "relay_disk_full_then_freed",
        group: "storage",
        proves: "a relay whose disk is full acks nothing, and takes every push once space is back",
        run: relay_disk_full_then_freed,
    },
    Scenario {
        name: "relay_power_loss_after_acks",
        group: "storage",
        proves: "a relay losing power after acking (unsynced writes dropped) still serves every acked push to a device that was offline",
        run: relay_power_loss_after_acks,
    },
    Scenario {
        name: "relay_torn_power_loss_after_acks",
        group: "storage",
        proves: "the same with a torn cut (a random page-granular part of unsynced writes kept): nothing acked lost, nothing torn served",
        run: relay_torn_power_loss_after_acks,
    },
    Scenario {
        name: "relay_power_loss_mid_stream",
        group: "storage",
        proves: "power lost while two devices stream pushes: unacked ones are resent, acked ones survive, all converge once",
        run: relay_power_loss_mid_stream,
    },
    Scenario {
        name: "relay_power_lost_at_a_sync",
        group: "storage",
        proves: "a relay disk dying at a seeded sync point (that sync and all after fail) then cut torn: nothing acked is lost",
        run: relay_power_lost_at_a_sync,
    },
    Scenario {
        name: "relay_power_loss_storm",
        group: "storage",
        proves: "four power losses in a row, dropped and torn, while two devices push: nothing lost or duplicated",
        run: relay_power_loss_storm,
    },
    Scenario {
        name: "relay_power_loss_after_sweeps",
        group: "storage",
        proves: "after minutes of sweeps and index checkpoints a torn power loss keeps every acked push for an offline device",
        run: relay_power_loss_after_sweeps,
    },
    Scenario {
        name: "damaged_relay_segment",
        group: "storage",
        proves: "a bad sector under one of two relays' records: nothing damaged is served, the records reach an offline device once",
        run: damaged_relay_segment,
    },
    Scenario {
        name: "device_local_commits_fail",
        group: "storage",
        proves: "a pusher whose local journal syncs fail 20% of the time stops, is started again by its app, and every record lands once",
        run: device_local_commits_fail,
    },
    Scenario {
        name: "device_power_loss_after_acks",
        group: "storage",
        proves: "a pusher losing power after its acks (unsynced writes dropped) comes back on its synced store and pushes on under new seqs; all land once",
        run: device_power_loss_after_acks,
    },
    Scenario {
        name: "device_torn_power_loss_mid_stream",
        group: "storage",
        proves: "a torn power cut while a device streams pushes ahead of their local sync: nothing acked lost, no seq names two records",
        run: device_torn_power_loss_mid_stream,
    },
    Scenario {
        name: "receiver_power_loss_during_catch_up",
        group: "storage",
        proves: "a device losing power while it pulls a backlog resumes from its synced cursor and gets every record",
        run: receiver_power_loss_during_catch_up,
    },
    Scenario {
        name: "device_power_lost_at_a_sync",
        group: "storage",
        proves: "a device's power cut right after a seeded sync of its store, while it pushes and receives: what that sync made durable is what it resumes from",
        run: device_power_lost_at_a_sync,
    },
    Scenario {
        name: "device_power_loss_storm",
        group: "storage",
        proves: "both devices lose power in turn four times, dropped and torn, while pushing: every acked record arrives, no seq reused",
        run: device_power_loss_storm,
    },
    Scenario {
        name: "every_host_loses_power",
        group: "storage",
        proves: "an outage cuts the relay and both devices at once with pushes in flight (torn): every acked push survives and all resume",
        run: every_host_loses_power,
    },
    Scenario {
        name: "relay_item_budget_reached",
        group: "storage",
        proves: "a relay at its item budget acks exactly what fits, refuses the rest without losing the acked, and its budget holds all along",
        run: relay_item_budget_reached,
    },
];
