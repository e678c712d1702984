//! Clocks: hosts whose wall clocks disagree by hours or days, and clocks that jump back or
//! forward while records flow (HLC stamps, stored-at stamps, TTL expiry, invite expiry).

use super::*;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn skewed(seed: u64, skews: &[(String, i64)]) -> Result<SimWorld, String> {
    world_with(WorldConfig {
        seed,
        clock_skew_ms: skews.to_vec(),
        ..WorldConfig::default()
    })
}

fn device_clocks_hours_apart(seed: u64) -> Outcome {
    let mut world = skewed(
        seed,
        &[
            (device_host(0), 3 * HOUR_MS),
            (device_host(1), -3 * HOUR_MS),
        ],
    )?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "ahead", 20);
    pushed.push(&world, 1, "behind", 20);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_clock_days_behind(seed: u64) -> Outcome {
    let mut world = skewed(seed, &[(relay_host(0), -2 * DAY_MS)])?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "late-relay", 20);
    pushed.push(&world, 1, "late-relay", 20);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

/// dev0 pushes 15; once 5 are acked, `host`'s wall clock jumps by `by_ms`; then each of
/// `after_from` pushes 15 more, and all must converge once, in order.
fn clock_jumps_mid_stream(seed: u64, host: &str, by_ms: i64, after_from: &[usize]) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "before", 15);
    until(&mut world, "first acks", |s| {
        lock(&s.devices[0].acked).len() >= 5
    })?;
    world.shift_clock(host, by_ms);
    for &dev in after_from {
        pushed.push(&world, dev, "after", 15);
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn relay_clock_jumps_back(seed: u64) -> Outcome {
    // Stored-at stamps go back an hour mid-stream; cursors must not.
    clock_jumps_mid_stream(seed, &relay_host(0), -HOUR_MS, &[0, 1])
}

fn device_clock_jumps_back(seed: u64) -> Outcome {
    // The pusher's HLC must not follow its wall clock back: order is by seq regardless.
    clock_jumps_mid_stream(seed, &device_host(0), -2 * HOUR_MS, &[0])
}

fn clocks_jump_both_ways_repeatedly(seed: u64) -> Outcome {
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    let mut rng = Rng::seeded(seed);
    let hosts = [relay_host(0), device_host(0), device_host(1)];
    for round in 0..6 {
        pushed.push(&world, round % 2, &format!("jump{round}"), 6);
        run(&mut world, Duration::from_millis(300))?;
        let host = &hosts[rng.below(3) as usize];
        let by = (rng.below(4 * HOUR_MS as u64) as i64) - 2 * HOUR_MS;
        world.shift_clock(host, by);
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn expired_records_are_reported_as_a_gap(seed: u64) -> Outcome {
    // A device offline for longer than the relay keeps items: what expired is gone, and its
    // app is told (a gap) instead of silently missing it; what came after still arrives.
    let mut world = world(seed, 2, 1)?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "expires", 10);
    until(&mut world, "the first pushes acked", |s| {
        lock(&s.devices[0].acked).len() == 10
    })?;
    world.shift_clock(&relay_host(0), 8 * DAY_MS);
    run(&mut world, Duration::from_secs(70))?;
    pushed.push(&world, 0, "fresh", 5);
    until(&mut world, "the fresh pushes acked", |s| {
        lock(&s.devices[0].acked).len() == 15
    })?;
    world.repair(&device_host(1), &relay_host(0));
    until(
        &mut world,
        "the fresh records reach the device back online",
        |s| {
            lock(&s.devices[1].received)
                .iter()
                .filter(|r| r.payload.windows(5).any(|w| w == b"fresh"))
                .count()
                == 5
        },
    )?;
    run(&mut world, Duration::from_secs(2))?;
    let got_expired = lock(&world.device(1).received)
        .iter()
        .any(|r| r.payload.windows(7).any(|w| w == b"expires"));
    ensure(&world, !got_expired, "an expired record was served")?;
    let gaps = lock(&world.device(1).gaps).clone();
    ensure(
        &world,
        gaps.iter().any(|g| g.from <= 1 && g.to > 10),
        &format!("the expired seqs 1..=10 were not reported as a gap: {gaps:?}"),
    )?;
    safety_holds(&world, &pushed, Delivery::ExactlyOnce)
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "device_clocks_hours_apart",
        group: "clock",
        proves: "two devices whose clocks are six hours apart exchange every record once, in order",
        run: device_clocks_hours_apart,
    },
    Scenario {
        name: "relay_clock_days_behind",
        group: "clock",
        proves: "a relay whose clock is two days behind its devices stores, serves and keeps every push",
        run: relay_clock_days_behind,
    },
    Scenario {
        name: "relay_clock_jumps_back",
        group: "clock",
        proves: "a relay clock jumping back an hour mid-stream loses, duplicates and reorders nothing",
        run: relay_clock_jumps_back,
    },
    Scenario {
        name: "device_clock_jumps_back",
        group: "clock",
        proves: "a pusher whose clock jumps back two hours mid-stream keeps its records in order for others",
        run: device_clock_jumps_back,
    },
    Scenario {
        name: "clocks_jump_both_ways_repeatedly",
        group: "clock",
        proves: "six seeded jumps of up to two hours either way on any host while pushing: all converge once",
        run: clocks_jump_both_ways_repeatedly,
    },
    Scenario {
        name: "expired_records_are_reported_as_a_gap",
        group: "clock",
        proves: "records that expired on the relay while a device was offline are reported to it as a gap; later ones arrive",
        run: expired_records_are_reported_as_a_gap,
    },
];
