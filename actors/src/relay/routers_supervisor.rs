//! RoutersSupervisor: owns one GroupRouter per active mailbox (DESIGN.md §2).
//!
//! Sessions ask `GetRouter{mailbox}`; the router is spawned linked on first use. Policy
//! one-for-one under the shared [`RestartPolicy`] ([`crate::supervision`]), one tracker per
//! mailbox, the policy set in [`RoutersSupervisorArgs`] ([`ROUTER_RESTART_POLICY`] in the
//! relay): a crashed router (or one that fails to start) is respawned after a capped,
//! jittered exponential backoff; while it backs off, `GetRouter` answers `Unavailable` and
//! sessions tell clients to retry. The new router inherits the subscriber table and notifies
//! every subscriber, so live delivery resumes without clients noticing. A router that
//! stopped normally (idle) is forgotten and respawned on demand. Restarts are counted in
//! `actor_restarts_total{actor="group_router"}`.
//!
//! Escalation is per mailbox, not to the relay: a router that crashes more often than the
//! policy's intensity is *parked*. Its mailbox answers `Unavailable` for one `period`, then
//! the router is started again with a fresh streak (and its subscribers are told to catch up).
//! One mailbox whose router keeps dying (a bug triggered by its data or its traffic) must not
//! take every other mailbox of the relay down with it; parking bounds what it costs to
//! `intensity + 1` starts per `period` plus the backoffs. The supervisor itself fails only on
//! a bug of its own, which RelayRoot escalates (DESIGN.md §2).

use crate::fault::FaultPlan;
use crate::relay::group_router::{GroupRouterActor, GroupRouterArgs, SubscriberTable};
use crate::relay::metrics::RelayMetrics;
use crate::rng::Rng;
use crate::shared_ref::SharedRef;
use crate::supervision::{Restart, RestartPolicy, RestartTracker};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{BTreeMap, HashMap};
use tracing::{info, warn};
use zerok_messages::MailboxId;
use zerok_messages::relay::{BlobStoreMsg, GroupRouterMsg, RoutersMsg, StoreError};

/// A GroupRouter's restart policy in the relay: the standard one. Past its intensity the
/// mailbox is parked for the policy's `period` (see the module doc), not the relay stopped.
pub const ROUTER_RESTART_POLICY: RestartPolicy = RestartPolicy::STANDARD;

/// The supervisor's actor type.
pub struct RoutersSupervisorActor;

/// What the supervisor needs.
pub struct RoutersSupervisorArgs {
    /// The BlobStore, for the routers.
    pub store: SharedRef<BlobStoreMsg>,
    /// Metrics.
    pub metrics: RelayMetrics,
    /// How each mailbox's router is restarted ([`ROUTER_RESTART_POLICY`] in the relay).
    pub router_restart: RestartPolicy,
    /// Draws the restart delays' jitter.
    pub rng: Rng,
    /// Fault injection, handed to every router.
    pub faults: FaultPlan,
}

/// Whether a mailbox's router runs, waits for its restart, or is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouterPhase {
    /// Running, or not started (then started on the next `GetRouter`).
    Ready,
    /// Crashed; a `RestartDue` is scheduled after the backoff.
    BackingOff,
    /// Crashed past the policy's intensity; a `RestartDue` is scheduled after its period.
    Parked,
}

struct MailboxEntry {
    router: Option<ActorRef<GroupRouterMsg>>,
    subscribers: SubscriberTable,
    restarts: RestartTracker,
    phase: RouterPhase,
}

impl MailboxEntry {
    fn new(policy: RestartPolicy) -> Self {
        Self {
            router: None,
            subscribers: SubscriberTable::default(),
            restarts: RestartTracker::new(policy),
            phase: RouterPhase::Ready,
        }
    }
}

/// Supervisor state.
pub struct RoutersSupervisorState {
    store: SharedRef<BlobStoreMsg>,
    metrics: RelayMetrics,
    policy: RestartPolicy,
    rng: Rng,
    faults: FaultPlan,
    mailboxes: BTreeMap<MailboxId, MailboxEntry>,
    by_actor: HashMap<ActorId, MailboxId>,
    restarts: u64,
}

impl RoutersSupervisorState {
    async fn spawn_router(
        &mut self,
        myself: &ActorRef<RoutersMsg>,
        mailbox: MailboxId,
        is_restart: bool,
    ) -> Result<ActorRef<GroupRouterMsg>, StoreError> {
        let policy = self.policy;
        let entry = self
            .mailboxes
            .entry(mailbox)
            .or_insert_with(|| MailboxEntry::new(policy));
        let args = GroupRouterArgs {
            mailbox,
            store: self.store.clone(),
            subscribers: entry.subscribers.clone(),
            is_restart,
            metrics: self.metrics.clone(),
            faults: self.faults.clone(),
        };
        let (router, _) = Actor::spawn_linked(None, GroupRouterActor, args, myself.get_cell())
            .await
            .map_err(|err| StoreError::Unavailable(format!("router failed to start: {err}")))?;
        entry.router = Some(router.clone());
        self.by_actor.insert(router.get_id(), mailbox);
        Ok(router)
    }

    /// The router of `mailbox` crashed or failed to start: schedule its restart after the
    /// backoff, or park the mailbox for the policy's period.
    fn on_router_crash(&mut self, myself: &ActorRef<RoutersMsg>, mailbox: MailboxId, why: &str) {
        let policy = self.policy;
        let entry = self
            .mailboxes
            .entry(mailbox)
            .or_insert_with(|| MailboxEntry::new(policy));
        entry.router = None;
        let now = tokio::time::Instant::now();
        let delay = match entry.restarts.on_crash(now, &mut self.rng) {
            Restart::After(delay) => {
                entry.phase = RouterPhase::BackingOff;
                self.restarts += 1;
                self.metrics
                    .actor_restarts_total
                    .with_label_values(&["group_router"])
                    .inc();
                info!(mailbox = %mailbox.short(), error = why, delay_ms = delay.as_millis() as u64, "router crashed, restarting");
                delay
            }
            Restart::Escalate => {
                entry.phase = RouterPhase::Parked;
                warn!(
                    mailbox = %mailbox.short(),
                    error = why,
                    intensity = policy.intensity,
                    parked_s = policy.period.as_secs(),
                    "router keeps crashing; mailbox parked"
                );
                policy.period
            }
        };
        myself.send_after(delay, move || RoutersMsg::RestartDue { mailbox });
    }
}

impl Actor for RoutersSupervisorActor {
    type Msg = RoutersMsg;
    type State = RoutersSupervisorState;
    type Arguments = RoutersSupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RoutersSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RoutersSupervisorState {
            store: args.store,
            metrics: args.metrics,
            policy: args.router_restart,
            rng: args.rng,
            faults: args.faults,
            mailboxes: BTreeMap::new(),
            by_actor: HashMap::new(),
            restarts: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoutersMsg::GetRouter { mailbox, reply } => {
                let policy = state.policy;
                let entry = state
                    .mailboxes
                    .entry(mailbox)
                    .or_insert_with(|| MailboxEntry::new(policy));
                // A router that stopped itself (idle) but whose end this supervisor has not
                // handled yet is replaced now rather than handed out dead; its late
                // termination event finds no entry in `by_actor` and is ignored. A router
                // still starting is alive: ractor marks an actor `Running` only once its
                // task runs, after `spawn` returned, and replacing it then made a second
                // router for the mailbox (pushes went through one, subscribers asked the
                // other how far the mailbox goes).
                if let Some(router) = &entry.router
                    && !ractor::ACTIVE_STATES.contains(&router.get_status())
                {
                    state.by_actor.remove(&router.get_id());
                    entry.router = None;
                }
                let answer = match (&entry.router, entry.phase) {
                    (Some(router), _) => Ok(router.clone()),
                    (None, RouterPhase::BackingOff) => {
                        Err(StoreError::Unavailable("mailbox router restarting".into()))
                    }
                    (None, RouterPhase::Parked) => Err(StoreError::Unavailable(
                        "mailbox router failing; retry later".into(),
                    )),
                    (None, RouterPhase::Ready) => state.spawn_router(&myself, mailbox, false).await,
                };
                let _ = reply.send(answer);
            }
            RoutersMsg::RestartDue { mailbox } => {
                if let Some(entry) = state.mailboxes.get_mut(&mailbox) {
                    entry.phase = RouterPhase::Ready;
                    if entry.router.is_none()
                        && let Err(err) = state.spawn_router(&myself, mailbox, true).await
                    {
                        state.on_router_crash(&myself, mailbox, &err.to_string());
                    }
                }
            }
            RoutersMsg::GetRestarts { reply } => {
                let _ = reply.send(state.restarts);
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
        match event {
            // A router stops normally only when idle; any other end (a kill, a panic, an
            // error) is a crash and gets the restart treatment.
            SupervisionEvent::ActorTerminated(cell, _, reason)
                if reason.as_deref() == Some(crate::relay::group_router::IDLE_STOP_REASON) =>
            {
                if let Some(mailbox) = state.by_actor.remove(&cell.get_id())
                    && let Some(entry) = state.mailboxes.get_mut(&mailbox)
                {
                    entry.router = None;
                    let is_forgettable = entry.restarts.streak() == 0
                        && entry
                            .subscribers
                            .lock()
                            .map(|table| table.is_empty())
                            .unwrap_or(false);
                    if is_forgettable {
                        state.mailboxes.remove(&mailbox);
                    }
                }
            }
            SupervisionEvent::ActorFailed(..) | SupervisionEvent::ActorTerminated(..) => {
                if let Some((id, why)) = crate::supervision::ended(&event)
                    && let Some(mailbox) = state.by_actor.remove(&id)
                {
                    state.on_router_crash(&myself, mailbox, &why);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
