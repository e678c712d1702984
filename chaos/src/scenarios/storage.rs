//! Storage: the relay's writes and syncs failing, a full disk.

use super::*;

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
];
