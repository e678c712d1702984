//! A hostile relay host: frames rewritten between the real relay and the clients.

use super::*;

/// Two relays, relay 1's host rewriting what it serves as `rewrite`.
fn world_with_hostile_relay(seed: u64, rewrite: Rewrite) -> Result<SimWorld, String> {
    world_with(WorldConfig {
        seed,
        relays: 2,
        hostile: vec![Rewrite::default(), rewrite],
        ..WorldConfig::default()
    })
}

fn tampering_relay(seed: u64) -> Outcome {
    let mut world = world_with_hostile_relay(
        seed,
        Rewrite {
            flip_every: 3,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "tamper", 20);
    pushed.push(&world, 1, "tamper", 20);
    // A tampered copy is reported as undecryptable when it comes first; when the honest
    // relay's copy came first, it is skipped by its blob id before it is opened (the sweep
    // found seeds of both kinds). Either way nothing tampered reaches an app.
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn duplicating_relay(seed: u64) -> Outcome {
    let mut world = world_with_hostile_relay(
        seed,
        Rewrite {
            duplicate_every: 2,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "dup", 20);
    pushed.push(&world, 1, "dup", 20);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
}

fn dropping_relay(seed: u64) -> Outcome {
    let mut world = world_with_hostile_relay(
        seed,
        Rewrite {
            drop_every: 3,
            ..Rewrite::default()
        },
    )?;
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "drop", 20);
    pushed.push(&world, 1, "drop", 20);
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
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
        proves: "a relay host serving every second live item twice: every app gets each record once",
        run: duplicating_relay,
    },
    Scenario {
        name: "dropping_relay",
        group: "adversarial",
        proves: "a relay host dropping every third live item: the records still reach every app once",
        run: dropping_relay,
    },
];
