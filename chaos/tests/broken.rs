//! The checker can fail: a deliberately broken component, run through a scenario, is caught
//! by the invariants, which name what broke.

use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_chaos::scenarios::{Delivery, Pushed, converge_and_check, world_with};
use zerok_chaos::world::WorldConfig;

/// A client that skips received records (drops some and goes on as if it had handed them
/// over, cursor and all): the invariants report the acked pushes it never delivered.
#[test]
fn a_client_that_skips_received_records_is_caught() {
    let skipping = FaultPlan::seeded(3);
    skipping.set(FaultPoint::SkipReceived, 0.2);
    let mut world = world_with(WorldConfig {
        seed: 5,
        faults: vec![FaultPlan::none(), skipping.clone()],
        ..WorldConfig::default()
    })
    .expect("world");
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "skipped", 20);
    let outcome = converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce);
    assert!(
        skipping.fired(FaultPoint::SkipReceived) > 0,
        "the fault fired"
    );
    let failure = outcome.expect_err("the invariants catch the skipped records");
    assert!(
        failure.starts_with("acked_pushes_reach_every_other_device: dev1 lacks"),
        "{failure}"
    );
    // The same world without the fault converges (the failure was the fault's).
    let mut healthy = world_with(WorldConfig {
        seed: 5,
        ..WorldConfig::default()
    })
    .expect("world");
    let mut pushed = Pushed::default();
    pushed.push(&healthy, 0, "skipped", 20);
    converge_and_check(&mut healthy, &pushed, Delivery::ExactlyOnce).expect("converges");
}
