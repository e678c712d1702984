//! CleanupSweeper: evicts expired items, under the Infra supervisor (DESIGN.md §2, §5).
//!
//! Every `interval` it asks the BlobStore to `Sweep` one slice of at most `slice_items`
//! expired items (oldest expiry first, by the expiry index). While the store reports more,
//! it sends itself the next slice at once: each slice is one short message to the store, so
//! pushes interleave with a long sweep instead of waiting for it. Expired items are never
//! returned by reads even before they are swept; sweeping only frees the space.

use crate::relay::metrics::RelayMetrics;
use crate::shared_ref::SharedRef;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Duration;
use tracing::{debug, warn};
use zerok_messages::relay::{BlobStoreMsg, CleanupSweeperMsg};

/// How long one sweep call may take before the sweeper gives up on it until the next tick.
const SWEEP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The sweeper's actor type.
pub struct CleanupSweeperActor;

/// What the sweeper needs.
pub struct CleanupSweeperArgs {
    /// The store.
    pub store: SharedRef<BlobStoreMsg>,
    /// Time between sweeps.
    pub interval: Duration,
    /// Most items evicted per slice.
    pub slice_items: u32,
    /// Metrics.
    pub metrics: RelayMetrics,
}

/// Sweeper state.
pub struct CleanupSweeperState {
    args: CleanupSweeperArgs,
    evicted: u64,
}

impl Actor for CleanupSweeperActor {
    type Msg = CleanupSweeperMsg;
    type State = CleanupSweeperState;
    type Arguments = CleanupSweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CleanupSweeperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(args.interval, || CleanupSweeperMsg::SweepDue);
        Ok(CleanupSweeperState { args, evicted: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CleanupSweeperMsg::SweepDue => {
                let max_items = state.args.slice_items;
                let report = ractor::call_t!(
                    state.args.store.get(),
                    |reply| BlobStoreMsg::Sweep { max_items, reply },
                    SWEEP_CALL_TIMEOUT.as_millis() as u64
                );
                match report {
                    Ok(report) => {
                        state.evicted += report.evicted;
                        state
                            .args
                            .metrics
                            .sweeper_evictions_total
                            .inc_by(report.evicted);
                        if report.evicted > 0 {
                            debug!(evicted = report.evicted, more = report.more, "sweep slice");
                        }
                        if report.more {
                            myself.send_message(CleanupSweeperMsg::SweepDue)?;
                            return Ok(());
                        }
                    }
                    Err(err) => warn!(error = %err, "sweep call failed"),
                }
                myself.send_after(state.args.interval, || CleanupSweeperMsg::SweepDue);
            }
            CleanupSweeperMsg::GetEvicted { reply } => {
                let _ = reply.send(state.evicted);
            }
        }
        Ok(())
    }
}
