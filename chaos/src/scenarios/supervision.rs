//! Supervision: actors of either tree failing and restarted.

use super::*;

fn relay_sweeps_fail(seed: u64) -> Outcome {
    let (mut world, faults) = world_with_relay_fault(seed, FaultPoint::Sweep, 1.0)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "s", 10);
    run(&mut world, Duration::from_secs(400))?;
    pushed.push(&world, 1, "s", 10);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)?;
    fired(&world, &faults, FaultPoint::Sweep)
}

fn encryptor_crashes(seed: u64) -> Outcome {
    let point = FaultPoint::EncryptorBatch;
    let (mut world, faults) = world_with_device_fault(seed, 0, point, 0.2)?;
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0, 1], 5, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn connection_fails_on_frames(seed: u64) -> Outcome {
    let point = FaultPoint::FrameReceive;
    let (mut world, faults) = world_with_device_fault(seed, 1, point, 0.05)?;
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0], 8, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "relay_sweeps_fail",
        group: "supervision",
        proves: "a relay whose every sweep fails keeps storing and delivering",
        run: relay_sweeps_fail,
    },
    Scenario {
        name: "encryptor_crashes",
        group: "supervision",
        proves: "a device whose Encryptor dies on 20% of batches is restarted and loses no push",
        run: encryptor_crashes,
    },
    Scenario {
        name: "connection_fails_on_frames",
        group: "supervision",
        proves: "a receiver whose relay connection dies on 5% of frames is restarted and misses nothing",
        run: connection_fails_on_frames,
    },
];
