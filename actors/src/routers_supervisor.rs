//! RoutersSupervisor: owns one GroupRouter per active mailbox (DESIGN.md §2).
//!
//! Sessions ask `GetRouter{mailbox}`; the router is spawned linked on first use. Policy
//! one-for-one: a crashed router is respawned after a capped exponential backoff
//! ([`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`], reset after [`RESTART_WINDOW`] without
//! crashes); while it backs off, `GetRouter` answers `Unavailable` and sessions tell clients
//! to retry. The new router inherits the subscriber table and notifies every subscriber, so
//! live delivery resumes without clients noticing. A router that stopped normally (idle) is
//! forgotten and respawned on demand. Restarts are counted in `actor_restarts_total`.

use crate::group_router::{GroupRouterActor, GroupRouterArgs, SubscriberTable};
use crate::metrics::RelayMetrics;
use crate::shared_ref::SharedRef;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tracing::{info, warn};
use zerok_messages::MailboxId;
use zerok_messages::relay::{BlobStoreMsg, GroupRouterMsg, RoutersMsg, StoreError};

/// First restart delay of a crashed router.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest restart delay: a mailbox whose router keeps crashing is retried twice a minute.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A router that ran this long without crashing starts again from the first delay.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

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
    crashes: u32,
    last_crash: Option<tokio::time::Instant>,
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

fn backoff(crashes: u32) -> Duration {
    let factor = 1u32 << crashes.saturating_sub(1).min(5);
    (BACKOFF_FIRST * factor).min(BACKOFF_MAX)
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
                        entry.crashes += 1;
                        entry.is_backing_off = true;
                        let delay = backoff(entry.crashes);
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
                    let is_forgettable = entry.crashes == 0
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
                    let now = tokio::time::Instant::now();
                    if entry
                        .last_crash
                        .is_some_and(|at| now.duration_since(at) > RESTART_WINDOW)
                    {
                        entry.crashes = 0;
                    }
                    entry.crashes += 1;
                    entry.last_crash = Some(now);
                    entry.is_backing_off = true;
                    let delay = backoff(entry.crashes);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(6), Duration::from_secs(30));
        assert_eq!(backoff(60), Duration::from_secs(30));
    }
}
