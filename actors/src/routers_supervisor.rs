//! RoutersSupervisor: owns one GroupRouter per active mailbox (DESIGN.md §2).
//!
//! Sessions ask `GetRouter{mailbox}`; the router is spawned linked on first use. Policy
//! one-for-one: a crashed router is respawned after a capped exponential backoff
//! ([`crate::supervision`]); while it backs off, `GetRouter` answers `Unavailable` and sessions tell clients
//! to retry. The new router inherits the subscriber table and notifies every subscriber, so
//! live delivery resumes without clients noticing. A router that stopped normally (idle) is
//! forgotten and respawned on demand. Restarts are counted in `actor_restarts_total`.

use crate::group_router::{GroupRouterActor, GroupRouterArgs, SubscriberTable};
use crate::metrics::RelayMetrics;
use crate::shared_ref::SharedRef;
use crate::supervision::RestartTracker;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{BTreeMap, HashMap};
use tracing::{info, warn};
use zerok_messages::MailboxId;
use zerok_messages::relay::{BlobStoreMsg, GroupRouterMsg, RoutersMsg, StoreError};

/// The supervisor's actor type.
pub struct RoutersSupervisorActor;

/// What the supervisor needs.
pub struct RoutersSupervisorArgs {
    /// The BlobStore, for the routers.
    pub store: SharedRef<BlobStoreMsg>,
    /// Metrics.
    pub metrics: RelayMetrics,
}

#[derive(Default)]
struct MailboxEntry {
    router: Option<ActorRef<GroupRouterMsg>>,
    subscribers: SubscriberTable,
    restarts: RestartTracker,
    is_backing_off: bool,
}

/// Supervisor state.
pub struct RoutersSupervisorState {
    store: SharedRef<BlobStoreMsg>,
    metrics: RelayMetrics,
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
        let entry = self.mailboxes.entry(mailbox).or_default();
        let args = GroupRouterArgs {
            mailbox,
            store: self.store.clone(),
            subscribers: entry.subscribers.clone(),
            is_restart,
            metrics: self.metrics.clone(),
        };
        let (router, _) = Actor::spawn_linked(None, GroupRouterActor, args, myself.get_cell())
            .await
            .map_err(|err| StoreError::Unavailable(format!("router failed to start: {err}")))?;
        entry.router = Some(router.clone());
        self.by_actor.insert(router.get_id(), mailbox);
        Ok(router)
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
                let entry = state.mailboxes.entry(mailbox).or_default();
                // A router that stopped itself (idle) but whose end this supervisor has not
                // handled yet is replaced now rather than handed out dead; its late
                // termination event finds no entry in `by_actor` and is ignored.
                if let Some(router) = &entry.router
                    && router.get_status() != ractor::ActorStatus::Running
                {
                    state.by_actor.remove(&router.get_id());
                    entry.router = None;
                }
                let answer = if let Some(router) = &entry.router {
                    Ok(router.clone())
                } else if entry.is_backing_off {
                    Err(StoreError::Unavailable("mailbox router restarting".into()))
                } else {
                    state.spawn_router(&myself, mailbox, false).await
                };
                let _ = reply.send(answer);
            }
            RoutersMsg::RestartDue { mailbox } => {
                if let Some(entry) = state.mailboxes.get_mut(&mailbox) {
                    entry.is_backing_off = false;
                    if entry.router.is_none()
                        && let Err(err) = state.spawn_router(&myself, mailbox, true).await
                    {
                        warn!(error = %err, "router restart failed");
                        let entry = state.mailboxes.entry(mailbox).or_default();
                        entry.is_backing_off = true;
                        let delay = entry.restarts.on_crash();
                        myself.send_after(delay, move || RoutersMsg::RestartDue { mailbox });
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
                if reason.as_deref() == Some(crate::group_router::IDLE_STOP_REASON) =>
            {
                if let Some(mailbox) = state.by_actor.remove(&cell.get_id())
                    && let Some(entry) = state.mailboxes.get_mut(&mailbox)
                {
                    entry.router = None;
                    let is_forgettable = entry.restarts.crashes() == 0
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
            SupervisionEvent::ActorFailed(cell, _)
            | SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(mailbox) = state.by_actor.remove(&cell.get_id()) {
                    let entry = state.mailboxes.entry(mailbox).or_default();
                    entry.router = None;
                    entry.is_backing_off = true;
                    let delay = entry.restarts.on_crash();
                    state.restarts += 1;
                    state
                        .metrics
                        .actor_restarts_total
                        .with_label_values(&["group_router"])
                        .inc();
                    info!(mailbox = %mailbox.short(), delay_ms = delay.as_millis() as u64, "router crashed, restarting");
                    myself.send_after(delay, move || RoutersMsg::RestartDue { mailbox });
                }
            }
            _ => {}
        }
        Ok(())
    }
}
