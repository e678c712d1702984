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
    // Deaths past the restart policy's intensity stop the client by design (the sweep
    // found seed 20 doing so); its app then starts it again.
    world.expect_escalation(&device_host(0));
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

fn relay_sends_fail(seed: u64) -> Outcome {
    let point = FaultPoint::FrameSend;
    let (mut world, faults) = world_with_relay_fault(seed, point, 0.03)?;
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0, 1], 5, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn device_sends_fail(seed: u64) -> Outcome {
    let point = FaultPoint::FrameSend;
    let (mut world, faults) = world_with_device_fault(seed, 0, point, 0.05)?;
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0], 6, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_receives_fail(seed: u64) -> Outcome {
    let point = FaultPoint::FrameReceive;
    let (mut world, faults) = world_with_relay_fault(seed, point, 0.03)?;
    let mut pushed = Pushed::default();
    push_until_fired(&mut world, &mut pushed, &[0, 1], 5, &faults, point)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

/// Two devices pushing; once the first acks came, `kind` is killed on `host` (twice, a few
/// seconds apart); then everything must converge.
fn kill_mid_stream(seed: u64, host: &str, kind: &str, delivery: Delivery) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "kill", 25);
    pushed.push(&world, 1, "kill", 25);
    until(&mut world, "first acks", |s| {
        lock(&s.devices[0].acked).len() >= 3
    })?;
    ensure(
        &world,
        world.kill_actor(host, kind),
        &format!("no {kind} running on {host}"),
    )?;
    run(&mut world, Duration::from_secs(3))?;
    pushed.push(&world, 0, "after", 10);
    run(&mut world, Duration::from_millis(300))?;
    world.kill_actor(host, kind);
    converge_and_check(&mut world, &pushed, delivery)
}

fn relay_store_actor_killed(seed: u64) -> Outcome {
    kill_mid_stream(seed, &relay_host(0), "store", Delivery::ExactlyOnce)
}

fn relay_router_killed(seed: u64) -> Outcome {
    kill_mid_stream(seed, &relay_host(0), "router", Delivery::ExactlyOnce)
}

fn relay_session_killed(seed: u64) -> Outcome {
    kill_mid_stream(seed, &relay_host(0), "session", Delivery::ExactlyOnce)
}

fn relay_sweeper_killed(seed: u64) -> Outcome {
    kill_mid_stream(seed, &relay_host(0), "sweeper", Delivery::ExactlyOnce)
}

fn relay_escalates_to_a_restart(seed: u64) -> Outcome {
    // A top-level actor dies: the relay tree stops (no supervisor above it) and its service
    // manager starts it again.
    kill_mid_stream(seed, &relay_host(0), "sessions", Delivery::ExactlyOnce)
}

fn device_connection_killed(seed: u64) -> Outcome {
    kill_mid_stream(seed, &device_host(1), "connection", Delivery::ExactlyOnce)
}

fn device_encryptor_killed(seed: u64) -> Outcome {
    kill_mid_stream(seed, &device_host(0), "encryptor", Delivery::ExactlyOnce)
}

fn device_coordinator_killed(seed: u64) -> Outcome {
    kill_mid_stream(seed, &device_host(0), "coordinator", Delivery::AtLeastOnce)
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
        proves: "a device whose Encryptor dies on 20% of batches is restarted (past the intensity the client stops and its app starts it again) and loses no push",
        run: encryptor_crashes,
    },
    Scenario {
        name: "connection_fails_on_frames",
        group: "supervision",
        proves: "a receiver whose relay connection dies on 5% of frames is restarted and misses nothing",
        run: connection_fails_on_frames,
    },
    Scenario {
        name: "relay_sends_fail",
        group: "supervision",
        proves: "a relay failing 3% of its frame sends (sessions ended) loses nothing; clients reconnect and converge",
        run: relay_sends_fail,
    },
    Scenario {
        name: "device_sends_fail",
        group: "supervision",
        proves: "a pusher whose relay connection fails 5% of its sends is restarted and every push lands once",
        run: device_sends_fail,
    },
    Scenario {
        name: "relay_receives_fail",
        group: "supervision",
        proves: "a relay failing on 3% of received frames (sessions ended) loses nothing acked; all converge once",
        run: relay_receives_fail,
    },
    Scenario {
        name: "relay_store_actor_killed",
        group: "supervision",
        proves: "the relay's BlobStore actor killed twice mid-stream is restarted on the same store; nothing acked is lost",
        run: relay_store_actor_killed,
    },
    Scenario {
        name: "relay_router_killed",
        group: "supervision",
        proves: "a mailbox's GroupRouter killed twice mid-stream is restarted, its subscribers notified; all converge once",
        run: relay_router_killed,
    },
    Scenario {
        name: "relay_session_killed",
        group: "supervision",
        proves: "a device's relay session killed twice mid-stream: the device reconnects and nothing is lost or doubled",
        run: relay_session_killed,
    },
    Scenario {
        name: "relay_sweeper_killed",
        group: "supervision",
        proves: "the relay's CleanupSweeper killed twice is restarted; storing and delivering go on",
        run: relay_sweeper_killed,
    },
    Scenario {
        name: "relay_escalates_to_a_restart",
        group: "supervision",
        proves: "a top-level relay actor killed stops the tree (escalation); restarted by its service manager, nothing acked is lost",
        run: relay_escalates_to_a_restart,
    },
    Scenario {
        name: "device_connection_killed",
        group: "supervision",
        proves: "a receiver's RelayConnection killed twice is restarted and resumes from its cursor without doubles",
        run: device_connection_killed,
    },
    Scenario {
        name: "device_encryptor_killed",
        group: "supervision",
        proves: "a pusher's Encryptor killed twice mid-batch is restarted and every push lands once",
        run: device_encryptor_killed,
    },
    Scenario {
        name: "device_coordinator_killed",
        group: "supervision",
        proves: "a pusher's SyncCoordinator killed twice is restarted from its local store; acked pushes all arrive",
        run: device_coordinator_killed,
    },
];
