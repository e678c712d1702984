//! A hostile relay host: frames rewritten between the real relay and the clients
//! ([`crate::hostile`]). With a second, honest relay everything still converges; with the
//! hostile relay alone, what it drops or tampers with is lost for good, and the scenario
//! checks that the client says so (gaps, undecryptable items) and still never delivers a
//! record twice, out of order unannounced, or one nobody pushed.

use super::*;
use crate::world::Shared;
use std::collections::BTreeMap;
use zerok_messages::DeviceId;

/// How long a world with a lossy relay runs once every push was acked: the catch-up after a
/// heal takes a few seconds, and a minute spans four keep-alive pings.
const SETTLE: Duration = Duration::from_secs(60);

/// Two relays, relay 1's host rewriting what it serves as `rewrite`.
fn world_with_hostile_relay(seed: u64, rewrite: Rewrite) -> Result<SimWorld, String> {
    world_with(WorldConfig {
        seed,
        relays: 2,
        hostile: vec![Rewrite::default(), rewrite],
        ..WorldConfig::default()
    })
}

/// Relay 1's host rewriting as `rewrite` beside an honest relay 0; both devices push `n`
/// records tagged `tag`; everything converges through the honest relay.
fn hostile_relay_beside_an_honest_one(seed: u64, rewrite: Rewrite, tag: &str, n: usize) -> Outcome {
    let mut world = world_with_hostile_relay(seed, rewrite)?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, tag, n);
    pushed.push(&world, 1, tag, n);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn tampering_relay(seed: u64) -> Outcome {
    // A tampered copy is reported as undecryptable when it comes first; when the honest
    // relay's copy came first, it is skipped by its blob id before it is opened (the sweep
    // found seeds of both kinds). Either way nothing tampered reaches an app.
    hostile_relay_beside_an_honest_one(
        seed,
        Rewrite {
            flip_every: 3,
            ..Rewrite::default()
        },
        "tamper",
        20,
    )
}

fn duplicating_relay(seed: u64) -> Outcome {
    hostile_relay_beside_an_honest_one(
        seed,
        Rewrite {
            duplicate_every: 2,
            ..Rewrite::default()
        },
        "dup",
        20,
    )
}

fn dropping_relay(seed: u64) -> Outcome {
    hostile_relay_beside_an_honest_one(
        seed,
        Rewrite {
            drop_every: 3,
            ..Rewrite::default()
        },
        "drop",
        20,
    )
}

/// The group's only relay, its host rewriting what it serves as `rewrite`.
fn world_with_one_hostile_relay(seed: u64, rewrite: Rewrite) -> Result<SimWorld, String> {
    world_with(WorldConfig {
        seed,
        hostile: vec![rewrite],
        ..WorldConfig::default()
    })
}

/// Device 1 is cut off from relay 0 while device 0 pushes `behind` records, so that it
/// catches up through pull pages after the heal (live deliveries alone would leave pages
/// untested); then both push `live` records each.
fn behind_then_live(
    world: &mut SimWorld,
    pushed: &mut Pushed,
    tag: &str,
    behind: usize,
    live: usize,
) -> Outcome {
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(world, 0, &format!("{tag}-behind"), behind);
    run(world, Duration::from_secs(20))?;
    ensure(
        world,
        received(world, 1) == 0,
        "received through a partition",
    )?;
    world.repair(&device_host(1), &relay_host(0));
    pushed.push(world, 0, &format!("{tag}-live"), live);
    pushed.push(world, 1, &format!("{tag}-live"), live);
    Ok(())
}

fn gaps(world: &SimWorld, dev: usize) -> usize {
    lock(&world.device(dev).gaps).len()
}

fn undecryptable(world: &SimWorld, dev: usize) -> u64 {
    *lock(&world.device(dev).undecryptable)
}

/// Every record a device lacks from a sender, below the highest seq it got from that sender,
/// was announced by a `GapDetected` (a loss after a sender's last received record shows only
/// when a later one arrives).
fn missing_records_are_reported_as_gaps(shared: &Shared) -> Result<(), String> {
    for (j, device) in shared.devices.iter().enumerate() {
        let gaps = lock(&device.gaps).clone();
        let mut by_sender: BTreeMap<DeviceId, BTreeSet<u64>> = BTreeMap::new();
        for r in lock(&device.received).iter() {
            by_sender.entry(r.sender).or_default().insert(r.seq);
        }
        // Roster records hold seqs of their senders too (not handed over as records).
        for (sender, seq) in lock(&device.roster).iter() {
            by_sender.entry(*sender).or_default().insert(*seq);
        }
        for (sender, seqs) in by_sender {
            let highest = seqs.last().copied().unwrap_or_default();
            let unannounced = (1..highest).find(|seq| {
                !seqs.contains(seq)
                    && !gaps
                        .iter()
                        .any(|g| g.sender == sender && g.from <= *seq && *seq < g.to)
            });
            if let Some(seq) = unannounced {
                return Err(format!(
                    "missing_records_are_reported_as_gaps: dev{j} lacks seq {seq} of {} (it has seq {highest}) and was told of no gap",
                    sender.short()
                ));
            }
        }
    }
    Ok(())
}

/// Run until every push was acked (the hostile relay stores honestly), then [`SETTLE`]
/// longer, and check what holds although records were lost for good: nothing twice, nothing
/// out of order unannounced, nothing nobody pushed, every loss below a later record reported,
/// no plaintext on the relay.
fn settle_and_check_losses(world: &mut SimWorld, pushed: &Pushed) -> Outcome {
    let expected = pushed.0.len();
    until(world, "not every push was acked", |shared| {
        all_acked(shared, expected)
    })?;
    run(world, SETTLE)?;
    all_hold(world, [missing_records_are_reported_as_gaps(&world.shared)])?;
    safety_holds(world, pushed, Delivery::ExactlyOnce)
}

fn replaying_relay(seed: u64) -> Outcome {
    let mut world = world_with_one_hostile_relay(
        seed,
        Rewrite {
            replay_every: 1,
            duplicate_every: 2,
            // Pages of four, so most replays bring back an item of an earlier page: the
            // client's dedup must remember it across batches, not only within one.
            page_items_max: 4,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    behind_then_live(&mut world, &mut pushed, "replay", 30, 10)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)?;
    // Replays and copies are old bytes, not tampered ones.
    all_hold(&world, [nothing_undecryptable_served(&world.shared)])
}

fn reordering_relay(seed: u64) -> Outcome {
    let mut world = world_with_one_hostile_relay(
        seed,
        Rewrite {
            reorder: true,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    behind_then_live(&mut world, &mut pushed, "reorder", 30, 10)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)?;
    all_hold(&world, [nothing_undecryptable_served(&world.shared)])?;
    // The catch-up page came backwards: its newest record first, announced as a gap that the
    // rest of the page then filled (per_sender_order allowed them only because of it).
    ensure(
        &world,
        gaps(&world, 1) > 0,
        "device 1 saw no gap: its catch-up page did not come backwards",
    )
}

fn forging_relay(seed: u64) -> Outcome {
    let mut world = world_with_one_hostile_relay(
        seed,
        Rewrite {
            page_items_max: 3,
            forge_next_by: 1000,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    behind_then_live(&mut world, &mut pushed, "forge", 30, 10)?;
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)?;
    all_hold(&world, [nothing_undecryptable_served(&world.shared)])?;
    // Pages of three that each claim a thousand cursors more: nothing was skipped, so no
    // record was ever missing on its way.
    ensure(
        &world,
        gaps(&world, 0) + gaps(&world, 1) == 0,
        "a gap: a forged page made a device skip records",
    )
}

fn truncating_relay(seed: u64) -> Outcome {
    let mut world = world_with_one_hostile_relay(
        seed,
        Rewrite {
            page_items_max: 3,
            forge_next_by: 1000,
            hide_more: true,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "truncate-behind", 30);
    run(&mut world, Duration::from_secs(20))?;
    world.repair(&device_host(1), &relay_host(0));
    until(
        &mut world,
        "device 1 took no page after the heal",
        |shared| !lock(&shared.devices[1].received).is_empty(),
    )?;
    run(&mut world, Duration::from_secs(5))?;
    let after_heal = received(&world, 1);
    // Each live push shows device 1 it is behind: it pulls on from what it really has.
    for round in 0..10 {
        pushed.push(&world, 0, &format!("truncate-live{round}"), 1);
        run(&mut world, Duration::from_secs(1))?;
    }
    run(&mut world, Duration::from_secs(20))?;
    ensure(
        &world,
        received(&world, 1) > after_heal,
        "device 1 took nothing more after a page that claimed cursors it did not carry",
    )?;
    all_hold(&world, [nothing_undecryptable_served(&world.shared)])?;
    safety_holds(&world, &pushed, Delivery::ExactlyOnce)?;
    // The relay can withhold its tail (nothing tells a client more exists), never make a
    // device skip: what device 1 has of device 0 (its records and its roster records) is a
    // prefix, 1..=n, with no gap.
    let records: Vec<u64> = lock(&world.device(1).received)
        .iter()
        .map(|r| r.seq)
        .collect();
    let dev0 = world.device(0).id.get().copied();
    let mut seqs = records.clone();
    seqs.extend(
        lock(&world.device(1).roster)
            .iter()
            .filter(|(sender, _)| Some(*sender) == dev0)
            .map(|(_, seq)| *seq),
    );
    seqs.sort_unstable();
    let prefix: Vec<u64> = (1..=seqs.len() as u64).collect();
    ensure(
        &world,
        gaps(&world, 1) == 0 && seqs == prefix && records.is_sorted(),
        &format!("device 1 got seqs {seqs:?}, not a prefix of device 0's"),
    )
}

fn dropping_only_relay(seed: u64) -> Outcome {
    let mut world = world_with_one_hostile_relay(
        seed,
        Rewrite {
            drop_every: 4,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    behind_then_live(&mut world, &mut pushed, "droponly", 30, 10)?;
    settle_and_check_losses(&mut world, &pushed)?;
    all_hold(&world, [nothing_undecryptable_served(&world.shared)])?;
    let from_dev0 = lock(&world.device(0).acked).len();
    ensure(
        &world,
        received(&world, 1) < from_dev0,
        "device 1 got every record: the relay dropped none of its catch-up for good",
    )?;
    ensure(&world, gaps(&world, 1) > 0, "device 1 was told of no gap")
}

fn tampering_only_relay(seed: u64) -> Outcome {
    let mut world = world_with_one_hostile_relay(
        seed,
        Rewrite {
            flip_every: 3,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    behind_then_live(&mut world, &mut pushed, "tamperonly", 30, 10)?;
    settle_and_check_losses(&mut world, &pushed)?;
    ensure(
        &world,
        undecryptable(&world, 1) > 0,
        "device 1 was told of no undecryptable item",
    )?;
    // Every record of the other device either arrived intact or was reported: none was
    // skipped silently, and none tampered was delivered (only_pushed_records_are_received).
    for (dev, other) in [(0, 1), (1, 0)] {
        let others = lock(&world.device(other).acked).len() as u64;
        let told = received(&world, dev) as u64 + undecryptable(&world, dev);
        ensure(
            &world,
            told >= others,
            &format!("dev{dev} received or was told of {told} of dev{other}'s {others} records"),
        )?;
    }
    Ok(())
}

fn forged_handshake_relay(seed: u64) -> Outcome {
    // A man in the middle of one relay's handshake: the relay refuses every join proof
    // (signed for a nonce it never gave), and the group syncs through the other relay.
    hostile_relay_beside_an_honest_one(
        seed,
        Rewrite {
            forge_nonce: true,
            ..Rewrite::default()
        },
        "mitm",
        15,
    )
}

fn impersonating_relay(seed: u64) -> Outcome {
    // A host whose Welcome claims another relay's id: clients do not sync through it, and
    // the group still converges through the honest relay.
    hostile_relay_beside_an_honest_one(
        seed,
        Rewrite {
            impersonate: true,
            ..Rewrite::default()
        },
        "imposter",
        15,
    )
}

/// This group's scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "tampering_relay",
        group: "adversarial",
        proves: "a relay host flipping bytes of every third item: nothing tampered reaches an app, the honest relay delivers all",
        run: tampering_relay,
    },
    Scenario {
        name: "duplicating_relay",
        group: "adversarial",
        proves: "a relay host serving every second item twice, live and in pages: every app gets each record once",
        run: duplicating_relay,
    },
    Scenario {
        name: "dropping_relay",
        group: "adversarial",
        proves: "a relay host dropping every third item, live and in pages: the honest relay still brings every app each record once",
        run: dropping_relay,
    },
    Scenario {
        name: "replaying_relay",
        group: "adversarial",
        proves: "the only relay following every item with an older one (in pages of four: across batches) and serving every second twice: each record reaches every app once",
        run: replaying_relay,
    },
    Scenario {
        name: "reordering_relay",
        group: "adversarial",
        proves: "the only relay serving every pull page backwards: the gap it opens is announced and filled, each record arrives once",
        run: reordering_relay,
    },
    Scenario {
        name: "forging_relay",
        group: "adversarial",
        proves: "the only relay cutting pages to three items whose next claims 1000 more: no device skips a record, all converge",
        run: forging_relay,
    },
    Scenario {
        name: "truncating_relay",
        group: "adversarial",
        proves: "the only relay cutting pages to three, forging next and denying more exist: a receiver gets a gap-free prefix and keeps pulling",
        run: truncating_relay,
    },
    Scenario {
        name: "dropping_only_relay",
        group: "adversarial",
        proves: "the only relay dropping every fourth item, live and in pages: losses are reported as gaps, nothing arrives twice or unannounced out of order",
        run: dropping_only_relay,
    },
    Scenario {
        name: "tampering_only_relay",
        group: "adversarial",
        proves: "the only relay flipping bytes of every third item: each is reported undecryptable, none tampered reaches an app",
        run: tampering_only_relay,
    },
    Scenario {
        name: "forged_handshake_relay",
        group: "adversarial",
        proves: "a man in the middle of one relay's handshake (forged nonce): every join there is refused, the group converges through the other relay",
        run: forged_handshake_relay,
    },
    Scenario {
        name: "impersonating_relay",
        group: "adversarial",
        proves: "a relay host claiming another relay's id in its Welcome is not synced through; the group converges through the honest relay",
        run: impersonating_relay,
    },
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::world::{Gap, Received};

    const SENDER: DeviceId = DeviceId([1; 32]);

    #[test]
    fn a_loss_below_a_later_record_must_have_been_announced() {
        let shared = Shared::with_devices(2);
        let got = |seq: u64| {
            lock(&shared.devices[1].received).push(Received {
                sender: SENDER,
                seq,
                payload: format!("p{seq}").into_bytes(),
            });
        };
        got(1);
        got(2);
        assert!(missing_records_are_reported_as_gaps(&shared).is_ok());
        // Seq 3 and 4 never came: unknown until a later record shows it.
        got(5);
        assert!(missing_records_are_reported_as_gaps(&shared).is_err());
        lock(&shared.devices[1].gaps).push(Gap {
            sender: SENDER,
            from: 3,
            to: 4,
            after_received: 2,
        });
        assert!(
            missing_records_are_reported_as_gaps(&shared).is_err(),
            "seq 4 is still unannounced"
        );
        lock(&shared.devices[1].gaps).push(Gap {
            sender: SENDER,
            from: 4,
            to: 5,
            after_received: 2,
        });
        assert!(missing_records_are_reported_as_gaps(&shared).is_ok());
    }
}
