//! Infra supervisor: owns the BlobStore and the CleanupSweeper (DESIGN.md §2).
//!
//! It holds the opened [`Store`] and hands it to each BlobStore it spawns, so a restarted
//! store finds everything durable where it was. Policy one-for-one with the shared backoff
//! ([`crate::supervision`]): a crashed store is respawned and the [`SharedRef`] everyone
//! reaches it through is pointed at the new one; routers resend pushes that were queued in the
//! dead store (they were never acked, and appends are idempotent). While the store is down,
//! pushes and pulls are answered `unavailable` with a retry hint. Restarts are counted in
//! `actor_restarts_total{actor="blob_store"|"cleanup_sweeper"}`.

use crate::blob_store::core::StoreLimits;
use crate::blob_store::{BlobStoreActor, BlobStoreArgs, ItemStore};
use crate::cleanup_sweeper::{CleanupSweeperActor, CleanupSweeperArgs};
use crate::clock::Clock;
use crate::fault::FaultPlan;
use crate::metrics::RelayMetrics;
use crate::shared_ref::SharedRef;
use crate::supervision::RestartTracker;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use zerok_messages::relay::{BlobStoreMsg, CleanupSweeperMsg, InfraMsg};

/// The supervisor's actor type.
pub struct InfraActor;

/// What Infra needs.
#[derive(Clone)]
pub struct InfraArgs {
    /// The opened store.
    pub store: Arc<dyn ItemStore>,
    /// Store limits.
    pub limits: StoreLimits,
    /// Wall time.
    pub clock: Clock,
    /// Fault injection.
    pub faults: FaultPlan,
    /// Metrics.
    pub metrics: RelayMetrics,
    /// Time between sweeps.
    pub sweep_interval: Duration,
    /// Items per sweep slice.
    pub sweep_slice_items: u32,
}

/// Infra state.
pub struct InfraState {
    args: InfraArgs,
    store: SharedRef<BlobStoreMsg>,
    sweeper: Option<ActorRef<CleanupSweeperMsg>>,
    store_restarts: RestartTracker,
    sweeper_restarts: RestartTracker,
    restarts: u64,
}

impl InfraState {
    async fn spawn_sweeper(
        &mut self,
        myself: &ActorRef<InfraMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let args = CleanupSweeperArgs {
            store: self.store.clone(),
            interval: self.args.sweep_interval,
            slice_items: self.args.sweep_slice_items,
            metrics: self.args.metrics.clone(),
        };
        let (sweeper, _) =
            Actor::spawn_linked(None, CleanupSweeperActor, args, myself.get_cell()).await?;
        self.sweeper = Some(sweeper);
        Ok(())
    }
}

fn store_args(args: &InfraArgs) -> BlobStoreArgs {
    BlobStoreArgs {
        store: args.store.clone(),
        limits: args.limits,
        clock: args.clock.clone(),
        faults: args.faults.clone(),
        metrics: args.metrics.clone(),
    }
}

impl Actor for InfraActor {
    type Msg = InfraMsg;
    type State = InfraState;
    type Arguments = InfraArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: InfraArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (store, _) =
            Actor::spawn_linked(None, BlobStoreActor, store_args(&args), myself.get_cell()).await?;
        let mut state = InfraState {
            args,
            store: SharedRef::new(store),
            sweeper: None,
            store_restarts: RestartTracker::default(),
            sweeper_restarts: RestartTracker::default(),
            restarts: 0,
        };
        state.spawn_sweeper(&myself).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            InfraMsg::StoreRestartDue => {
                match Actor::spawn_linked(
                    None,
                    BlobStoreActor,
                    store_args(&state.args),
                    myself.get_cell(),
                )
                .await
                {
                    Ok((store, _)) => {
                        state.store.set(store);
                        info!("blob store restarted");
                    }
                    Err(err) => {
                        let delay = state.store_restarts.on_crash();
                        warn!(error = %err, delay_ms = delay.as_millis() as u64, "blob store restart failed");
                        myself.send_after(delay, || InfraMsg::StoreRestartDue);
                    }
                }
            }
            InfraMsg::SweeperRestartDue => {
                if let Err(err) = state.spawn_sweeper(&myself).await {
                    let delay = state.sweeper_restarts.on_crash();
                    warn!(error = %err, "sweeper restart failed");
                    myself.send_after(delay, || InfraMsg::SweeperRestartDue);
                }
            }
            InfraMsg::GetRestarts { reply } => {
                let _ = reply.send(state.restarts);
            }
            InfraMsg::GetStore { reply } => {
                let _ = reply.send(state.store.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((id, _)) = crate::supervision::ended(&event) else {
            return Ok(());
        };
        if id == state.store.get().get_id() {
            let delay = state.store_restarts.on_crash();
            state.restarts += 1;
            state
                .args
                .metrics
                .actor_restarts_total
                .with_label_values(&["blob_store"])
                .inc();
            warn!(
                delay_ms = delay.as_millis() as u64,
                "blob store stopped, restarting"
            );
            myself.send_after(delay, || InfraMsg::StoreRestartDue);
        } else if state
            .sweeper
            .as_ref()
            .is_some_and(|sweeper| sweeper.get_id() == id)
        {
            state.sweeper = None;
            let delay = state.sweeper_restarts.on_crash();
            state.restarts += 1;
            state
                .args
                .metrics
                .actor_restarts_total
                .with_label_values(&["cleanup_sweeper"])
                .inc();
            warn!(
                delay_ms = delay.as_millis() as u64,
                "sweeper stopped, restarting"
            );
            myself.send_after(delay, || InfraMsg::SweeperRestartDue);
        }
        Ok(())
    }
}
