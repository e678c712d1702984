//! Infra supervisor: owns the BlobStore and the CleanupSweeper (DESIGN.md §2).
//!
//! It holds the opened [`Store`](crate::relay::blob_store::Store) and hands it to each BlobStore it
//! spawns, so a restarted store finds everything durable where it was. Policy one-for-one
//! under the shared [`RestartPolicy`] ([`crate::supervision`]), one per child, set in
//! [`InfraArgs`] ([`STORE_RESTART_POLICY`], [`SWEEPER_RESTART_POLICY`] in the relay): a
//! crashed store is respawned after its backoff and the [`SharedRef`] everyone reaches it
//! through is pointed at the new one; routers resend pushes that were queued in the dead store
//! (they were never acked, and appends are idempotent). While the store is down, pushes and
//! pulls are answered `unavailable` with a retry hint. A child that fails to start counts as a
//! crash. When a child crashes more often than its policy's intensity, Infra stops the other
//! child and itself with the reason; RelayRoot then stops the relay, which exits non-zero for
//! the service manager to restart it (DESIGN.md §2: a dead top-level child stops the node).
//! Restarts are counted in `actor_restarts_total{actor="blob_store"|"cleanup_sweeper"}`.

use crate::clock::Clock;
use crate::fault::FaultPlan;
use crate::relay::blob_store::core::StoreLimits;
use crate::relay::blob_store::{BlobStoreActor, BlobStoreArgs, ItemStore};
use crate::relay::cleanup_sweeper::{CleanupSweeperActor, CleanupSweeperArgs};
use crate::relay::metrics::RelayMetrics;
use crate::rng::Rng;
use crate::shared_ref::SharedRef;
use crate::supervision::{Restart, RestartPolicy, RestartTracker};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};
use zerok_messages::relay::{BlobStoreMsg, CleanupSweeperMsg, InfraMsg};

/// The BlobStore's restart policy in the relay: the standard one. A store that fails six times
/// within a minute (a bug, or a disk that refuses every write) is not repaired by another
/// restart of the actor; the relay exits and the service manager restarts the process, which
/// reopens the store from disk.
pub const STORE_RESTART_POLICY: RestartPolicy = RestartPolicy::STANDARD;

/// The CleanupSweeper's restart policy in the relay: the standard one. It only drives sweeps,
/// so it has no state to lose; one that keeps dying is a bug worth a process restart.
pub const SWEEPER_RESTART_POLICY: RestartPolicy = RestartPolicy::STANDARD;

/// The supervisor's actor type.
pub struct InfraActor;

/// What Infra needs.
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
    /// How the BlobStore is restarted ([`STORE_RESTART_POLICY`] in the relay).
    pub store_restart: RestartPolicy,
    /// How the CleanupSweeper is restarted ([`SWEEPER_RESTART_POLICY`] in the relay).
    pub sweeper_restart: RestartPolicy,
    /// Draws the restart delays' jitter.
    pub rng: Rng,
}

/// Infra's children, to name them in logs, metrics and the escalation reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Store,
    Sweeper,
}

impl Child {
    fn label(self) -> &'static str {
        match self {
            Child::Store => "blob_store",
            Child::Sweeper => "cleanup_sweeper",
        }
    }
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

    /// `child` ended (crashed, or failed to start): schedule its restart, or escalate by
    /// stopping Infra when it crashed more often than its policy allows.
    fn on_child_crash(&mut self, myself: &ActorRef<InfraMsg>, child: Child, why: &str) {
        let now = tokio::time::Instant::now();
        let tracker = match child {
            Child::Store => &mut self.store_restarts,
            Child::Sweeper => &mut self.sweeper_restarts,
        };
        match tracker.on_crash(now, &mut self.args.rng) {
            Restart::After(delay) => {
                self.restarts += 1;
                self.args
                    .metrics
                    .actor_restarts_total
                    .with_label_values(&[child.label()])
                    .inc();
                warn!(
                    actor = child.label(),
                    error = why,
                    delay_ms = delay.as_millis() as u64,
                    "child ended, restarting"
                );
                let due = move || match child {
                    Child::Store => InfraMsg::StoreRestartDue,
                    Child::Sweeper => InfraMsg::SweeperRestartDue,
                };
                myself.send_after(delay, due);
            }
            Restart::Escalate => {
                let policy = tracker.policy();
                let reason = format!(
                    "{} crashed more than {} times within {} s; giving up",
                    child.label(),
                    policy.intensity,
                    policy.period.as_secs()
                );
                error!(
                    actor = child.label(),
                    intensity = policy.intensity,
                    period_s = policy.period.as_secs(),
                    error = why,
                    "child keeps crashing; stopping infra"
                );
                myself.stop_children(Some(reason.clone()));
                myself.stop(Some(reason));
            }
        }
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
        let (store_restart, sweeper_restart) = (args.store_restart, args.sweeper_restart);
        let mut state = InfraState {
            args,
            store: SharedRef::new(store),
            sweeper: None,
            store_restarts: RestartTracker::new(store_restart),
            sweeper_restarts: RestartTracker::new(sweeper_restart),
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
                        state.on_child_crash(&myself, Child::Store, &err.to_string());
                    }
                }
            }
            InfraMsg::SweeperRestartDue => {
                if let Err(err) = state.spawn_sweeper(&myself).await {
                    state.on_child_crash(&myself, Child::Sweeper, &err.to_string());
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
        let Some((id, why)) = crate::supervision::ended(&event) else {
            return Ok(());
        };
        if id == state.store.get().get_id() {
            state.on_child_crash(&myself, Child::Store, &why);
        } else if state
            .sweeper
            .as_ref()
            .is_some_and(|sweeper| sweeper.get_id() == id)
        {
            state.sweeper = None;
            state.on_child_crash(&myself, Child::Sweeper, &why);
        }
        Ok(())
    }
}
