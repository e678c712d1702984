//! The chaos catalogue: scenarios over a [`SimWorld`] (the real relay and client trees on
//! turmoil's simulated network and time), each run under a seed and ended by the
//! invariants of [`crate::invariants`]. `cargo test -p zerok-chaos` runs each under a fixed
//! seed; `cargo run -p zerok-chaos --bin sweep` runs many seeds.

use crate::hostile::Rewrite;
use crate::invariants::{
    acked_pushes_reach_every_other_device, budgets_hold, cursors_never_go_back,
    no_escalation_beyond_policy, no_plaintext_on_relays, nothing_undecryptable_served,
    one_record_per_seq, only_pushed_records_are_received, per_sender_order, received_exactly_once,
};
use crate::world::{SimWorld, WorldConfig, device_host, relay_host};
use std::collections::BTreeSet;
use std::time::Duration;
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::rng::Rng;
use zerok_messages::sync::lock;

/// What a scenario answers: `Err` says what broke (with the trace's tail).
pub type Outcome = Result<(), String>;

/// One entry of the catalogue.
pub struct Scenario {
    /// Its name (the test's and the sweep's).
    pub name: &'static str,
    /// Its group in the catalogue.
    pub group: &'static str,
    /// What it proves, in one line.
    pub proves: &'static str,
    /// Run it under a seed.
    pub run: fn(u64) -> Outcome,
}

/// Every scenario payload starts with this (the relays' disks must never show it).
pub const MARKER: &[u8] = b"chaos-plaintext-";

/// Longest a scenario waits for the world to converge (simulated time).
const CONVERGE: Duration = Duration::from_secs(300);

/// Trace lines shown with a failure.
const TRACE_TAIL: usize = 60;

/// The payloads a scenario pushed.
#[derive(Default)]
pub struct Pushed(pub BTreeSet<Vec<u8>>);

impl Pushed {
    /// Queue `n` pushes on device `dev`, tagged `tag`.
    pub fn push(&mut self, world: &SimWorld, dev: usize, tag: &str, n: usize) {
        for k in 0..n {
            let mut payload = MARKER.to_vec();
            payload.extend_from_slice(format!("dev{dev}-{tag}-{k:04}").as_bytes());
            self.0.insert(payload.clone());
            world.push(dev, payload);
        }
    }
}

/// How a scenario's delivery is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// No receiver restarted: exactly once.
    ExactlyOnce,
    /// A receiver restarted: at least once (DESIGN.md §6).
    AtLeastOnce,
}

/// A world of `devices` and `relays` under `seed`, every device in the group.
pub fn world(seed: u64, devices: usize, relays: usize) -> Result<SimWorld, String> {
    world_with(WorldConfig {
        seed,
        devices,
        relays,
        ..WorldConfig::default()
    })
}

/// A world as `config` says, every device in the group.
pub fn world_with(config: WorldConfig) -> Result<SimWorld, String> {
    let mut world = SimWorld::new(config).map_err(|e| e.to_string())?;
    world.settle().map_err(|e| e.to_string())?;
    Ok(world)
}

fn failed(world: &SimWorld, what: String) -> String {
    let trace = world.trace();
    let tail = &trace[trace.len().saturating_sub(TRACE_TAIL)..];
    format!(
        "{what}\n--- trace (last {} lines)\n{}",
        tail.len(),
        tail.join("\n")
    )
}

/// Fail with `what` and the trace's tail unless `ok`.
pub fn ensure(world: &SimWorld, ok: bool, what: &str) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(failed(world, what.to_owned()))
    }
}

/// Whether the apps were told `expected` pushes were acked, all devices together.
pub fn all_acked(shared: &crate::world::Shared, expected: usize) -> bool {
    shared
        .devices
        .iter()
        .map(|d| lock(&d.acked).len())
        .sum::<usize>()
        == expected
}

/// Run until every push was acked and reached every other device (or `CONVERGE` passed),
/// then check every invariant.
pub fn converge_and_check(world: &mut SimWorld, pushed: &Pushed, delivery: Delivery) -> Outcome {
    let expected = pushed.0.len();
    let acked_all = |shared: &crate::world::Shared| all_acked(shared, expected);
    world
        .run_until(CONVERGE, |shared| {
            acked_all(shared) && acked_pushes_reach_every_other_device(shared).is_ok()
        })
        .map_err(|e| failed(world, e.to_string()))?;
    // A little longer: a duplicate or a late forgery would show now.
    world
        .run_for(Duration::from_secs(2))
        .map_err(|e| failed(world, e.to_string()))?;
    let shared = &world.shared;
    ensure(world, acked_all(shared), "not every push was acked")?;
    all_hold(
        world,
        [
            acked_pushes_reach_every_other_device(shared),
            if world.is_hostile {
                Ok(())
            } else {
                nothing_undecryptable_served(shared)
            },
        ],
    )?;
    safety_holds(world, pushed, delivery)
}

/// The invariants that hold in every world, whatever it lost: nothing twice (where no
/// receiver restarted: `delivery`), one record per seq, per-sender order, cursors never
/// back, no escalation beyond the supervision policies, relay budgets held, only pushed
/// records, no plaintext on the relays.
pub fn safety_holds(world: &SimWorld, pushed: &Pushed, delivery: Delivery) -> Outcome {
    let shared = &world.shared;
    all_hold(
        world,
        [
            if delivery == Delivery::ExactlyOnce {
                received_exactly_once(shared)
            } else {
                Ok(())
            },
            one_record_per_seq(shared),
            per_sender_order(shared),
            cursors_never_go_back(shared, &world.wiped_relays()),
            no_escalation_beyond_policy(shared, &world.escalated_hosts()),
            budgets_hold(shared),
            only_pushed_records_are_received(shared, &pushed.0),
            no_plaintext_on_relays(&world.relay_dirs(), world.relay_disks(), MARKER),
        ],
    )
}

/// Fail with the trace's tail on the first broken check.
pub fn all_hold(world: &SimWorld, checks: impl IntoIterator<Item = Result<(), String>>) -> Outcome {
    for check in checks {
        check.map_err(|e| failed(world, e))?;
    }
    Ok(())
}

fn run(world: &mut SimWorld, d: Duration) -> Outcome {
    world.run_for(d).map_err(|e| failed(world, e.to_string()))
}

fn until(
    world: &mut SimWorld,
    what: &str,
    done: impl FnMut(&crate::world::Shared) -> bool,
) -> Outcome {
    let reached = world
        .run_until(CONVERGE, done)
        .map_err(|e| failed(world, e.to_string()))?;
    ensure(world, reached, what)
}

fn acked(world: &SimWorld, dev: usize) -> usize {
    lock(&world.device(dev).acked).len()
}

fn received(world: &SimWorld, dev: usize) -> usize {
    lock(&world.device(dev).received).len()
}

/// After a sender's crash: pushes in flight at the crash may or may not arrive (never
/// acked, their app does not count on them), so not every push is awaited as in
/// `converge_and_check`. Each of `devs` pushes `n` more tagged `tag`; run until those were
/// acked and every acked push reached every other device, then check the invariants
/// (`delivery`: whether a receiver restarted too).
fn pushes_after_a_crash_arrive(
    world: &mut SimWorld,
    pushed: &mut Pushed,
    tag: &str,
    n: usize,
    devs: &[usize],
    delivery: Delivery,
) -> Outcome {
    for &dev in devs {
        pushed.push(world, dev, tag, n);
    }
    let tag = tag.as_bytes();
    until(world, "the pushes after the crash acked", |s| {
        devs.iter().all(|&dev| {
            lock(&s.devices[dev].acked)
                .iter()
                .filter(|p| p.windows(tag.len()).any(|w| w == tag))
                .count()
                == n
        })
    })?;
    until(world, "acked pushes delivered", |s| {
        acked_pushes_reach_every_other_device(s).is_ok()
    })?;
    run(world, Duration::from_secs(2))?;
    all_hold(
        world,
        [acked_pushes_reach_every_other_device(&world.shared)],
    )?;
    safety_holds(world, pushed, delivery)
}

/// dev1 cut off while dev0's `n` pushes (tagged `backlog`) are acked; then back, and run
/// until its catch-up is under way (20 records in).
fn catch_up_under_way(world: &mut SimWorld, pushed: &mut Pushed, n: usize) -> Outcome {
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(world, 0, "backlog", n);
    until(world, "the backlog acked", |s| {
        lock(&s.devices[0].acked).len() == n
    })?;
    world.repair(&device_host(1), &relay_host(0));
    until(world, "catch-up under way", |s| {
        lock(&s.devices[1].received).len() >= 20
    })
}

/// A world whose relay 0 runs with `point` failing at probability `p` (seeded by `seed`).
fn world_with_relay_fault(
    seed: u64,
    point: FaultPoint,
    p: f64,
) -> Result<(SimWorld, FaultPlan), String> {
    let faults = FaultPlan::seeded(seed ^ 0xFA17);
    let world = world_with(WorldConfig {
        seed,
        relay_faults: vec![faults.clone()],
        ..WorldConfig::default()
    })?;
    // Armed once the devices joined: their admission goes through the relay too.
    faults.set(point, p);
    Ok((world, faults))
}
/// A world whose device `dev` runs with `point` failing at probability `p`.
fn world_with_device_fault(
    seed: u64,
    dev: usize,
    point: FaultPoint,
    p: f64,
) -> Result<(SimWorld, FaultPlan), String> {
    let faults = FaultPlan::seeded(seed ^ 0xD0D0);
    faults.set(point, p);
    let mut all = vec![FaultPlan::none(); dev + 1];
    all[dev] = faults.clone();
    let world = world_with(WorldConfig {
        seed,
        faults: all,
        ..WorldConfig::default()
    })?;
    Ok((world, faults))
}
fn fired(world: &SimWorld, faults: &FaultPlan, point: FaultPoint) -> Outcome {
    ensure(
        world,
        faults.fired(point) > 0,
        &format!("{point:?} never fired"),
    )
}
/// Push rounds of `n` records from each of `devs`, half a second apart, until `point` fired
/// at least once and three rounds went (the fault is drawn per operation; at most 30 rounds).
fn push_until_fired(
    world: &mut SimWorld,
    pushed: &mut Pushed,
    devs: &[usize],
    n: usize,
    faults: &FaultPlan,
    point: FaultPoint,
) -> Outcome {
    for round in 0..30 {
        for &dev in devs {
            pushed.push(world, dev, &format!("{point:?}{round}"), n);
        }
        run(world, Duration::from_millis(500))?;
        if faults.fired(point) > 0 && round >= 2 {
            return Ok(());
        }
    }
    fired(world, faults, point)
}

mod adversarial;
mod clock;
mod membership;
mod multi_relay;
mod process;
mod storage;
mod supervision;
mod sync;
mod transport;

pub use storage::{acked_then_power_lost, pushed_then_device_power_lost};

/// The catalogue, group by group.
pub fn catalogue() -> impl Iterator<Item = &'static Scenario> {
    [
        sync::SCENARIOS,
        transport::SCENARIOS,
        process::SCENARIOS,
        multi_relay::SCENARIOS,
        storage::SCENARIOS,
        supervision::SCENARIOS,
        clock::SCENARIOS,
        adversarial::SCENARIOS,
        membership::SCENARIOS,
    ]
    .into_iter()
    .flatten()
}

/// The scenario named `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    catalogue().find(|s| s.name == name)
}
