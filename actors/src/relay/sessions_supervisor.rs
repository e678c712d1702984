//! SessionsSupervisor: one Session per connection (DESIGN.md §2).
//!
//! It admits each accepted link or refuses it with one `Error` frame and a close:
//! `rate_limited` (+ `retry_after_ms`) when the peer's IP opens connections too fast,
//! `unavailable` when [`SessionsConfig::max_connections`] sessions are open or the relay is
//! shutting down. Admitted links get a Session spawned linked, with a fresh join nonce and a
//! relay-unique subscriber id. Sessions are never restarted: a session's end is a closed
//! connection and the client reconnects. On `Shutdown` every session says `Bye{shutdown}`
//! and the supervisor answers once all have ended or the grace time passed.

use crate::fault::FaultPlan;
use crate::relay::admission::{Admission, SessionAdmission};
use crate::relay::metrics::RelayMetrics;
use crate::relay::rate_limit::RelayLimiters;
use crate::relay::session::{SessionActor, SessionArgs};
use crate::rng::Rng;
use crate::shared_ref::SharedRef;
use bytes::Bytes;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};
use zerok_messages::link::LinkSender;
use zerok_messages::relay::{BlobStoreMsg, ContentMsg, RoutersMsg, SessionMsg, SessionsMsg};
use zerok_messages::wire::ByeReason;
use zerok_messages::{DeviceId, ErrorCode, Frame, Limits, codec};

/// How often idle rate-limit keys are forgotten.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// How often a shutdown in progress checks whether every session ended.
const SHUTDOWN_CHECK_EVERY: Duration = Duration::from_millis(20);

/// Settings of the sessions.
#[derive(Clone)]
pub struct SessionsConfig {
    /// This relay's id.
    pub relay_id: DeviceId,
    /// Limits announced in `Welcome`.
    pub limits: Limits,
    /// Most sessions at once.
    pub max_connections: usize,
    /// Close a session after this long without a frame.
    pub idle_timeout: Duration,
    /// Bytes of request frames one connection may hold in flight.
    pub inflight_bytes_max: usize,
    /// Bytes of request frames all connections together may hold in flight.
    pub inflight_bytes_total: Option<Arc<tokio::sync::Semaphore>>,
    /// Fault injection for every session (none in production).
    pub faults: FaultPlan,
}

/// The supervisor's actor type.
pub struct SessionsSupervisorActor;

/// What the supervisor needs.
pub struct SessionsSupervisorArgs {
    /// Session settings.
    pub config: SessionsConfig,
    /// The BlobStore.
    pub store: SharedRef<BlobStoreMsg>,
    /// The routers supervisor.
    pub routers: ActorRef<RoutersMsg>,
    /// The content service (`None`: the relay keeps no content).
    pub content: Option<ActorRef<ContentMsg>>,
    /// Rate limiters shared with every session.
    pub limiters: Arc<RelayLimiters>,
    /// Who may create mailboxes (shared by every session).
    pub admission: Arc<Admission>,
    /// Randomness for join nonces.
    pub rng: Rng,
    /// Metrics.
    pub metrics: RelayMetrics,
}

struct ShuttingDown {
    deadline: tokio::time::Instant,
    reply: RpcReplyPort<usize>,
}

/// Supervisor state.
pub struct SessionsSupervisorState {
    args: SessionsSupervisorArgs,
    /// By actor id (ordered: the sessions are told to stop in the order they started, the
    /// same in every run of a simulation).
    sessions: BTreeMap<ActorId, ActorRef<SessionMsg>>,
    next_subscriber: u64,
    is_accepting: bool,
    shutting_down: Option<ShuttingDown>,
}

/// Send one error frame and a `Bye`, then half-close.
fn refuse(sender: LinkSender, code: ErrorCode, message: &str, retry_after_ms: Option<u64>) {
    let frames = [
        Frame::Error {
            req: None,
            code,
            message: message.to_owned(),
            retry_after_ms,
        },
        Frame::Bye {
            reason: ByeReason::Shutdown,
        },
    ];
    for frame in frames {
        if let Ok(body) = codec::encode(&frame) {
            let _ = sender.try_send(Bytes::from(body));
        }
    }
    sender.finish();
}

impl SessionsSupervisorState {
    async fn admit(
        &mut self,
        myself: &ActorRef<SessionsMsg>,
        peer: DeviceId,
        remote_addr: Option<std::net::SocketAddr>,
        sender: LinkSender,
        receiver: zerok_messages::link::LinkReceiver,
    ) {
        let metrics = &self.args.metrics;
        if !self.is_accepting {
            metrics.connections_refused_total.inc();
            refuse(
                sender,
                ErrorCode::Unavailable,
                "relay shutting down",
                Some(1000),
            );
            return;
        }
        if let Some(addr) = remote_addr
            && let Err(limited) = self.args.limiters.check_connection(addr.ip())
        {
            metrics.connections_refused_total.inc();
            metrics
                .rate_limited_total
                .with_label_values(&[limited.scope.as_str()])
                .inc();
            refuse(
                sender,
                ErrorCode::RateLimited,
                "too many connections from this address",
                Some(limited.retry_after_ms()),
            );
            return;
        }
        if self.sessions.len() >= self.args.config.max_connections {
            metrics.connections_refused_total.inc();
            refuse(
                sender,
                ErrorCode::Unavailable,
                "relay at its connection limit",
                Some(1000),
            );
            return;
        }
        let mut nonce = [0u8; 32];
        self.args.rng.fill(&mut nonce);
        self.next_subscriber += 1;
        let session_args = SessionArgs {
            peer,
            sender,
            receiver,
            relay_id: self.args.config.relay_id,
            nonce,
            limits: self.args.config.limits.clone(),
            store: self.args.store.clone(),
            routers: self.args.routers.clone(),
            content: self.args.content.clone(),
            subscriber_id: self.next_subscriber,
            source: remote_addr.map(|addr| addr.ip()),
            inflight_bytes_max: self.args.config.inflight_bytes_max,
            inflight_bytes_total: self.args.config.inflight_bytes_total.clone(),
            idle_timeout: self.args.config.idle_timeout,
            limiters: Arc::clone(&self.args.limiters),
            metrics: metrics.clone(),
            admission: SessionAdmission::new(
                Arc::clone(&self.args.admission),
                remote_addr.map(|addr| addr.ip()),
            ),
            faults: self.args.config.faults.clone(),
        };
        match Actor::spawn_linked(None, SessionActor, session_args, myself.get_cell()).await {
            Ok((session, _)) => {
                metrics.connections_total.inc();
                self.sessions.insert(session.get_id(), session);
            }
            Err(err) => warn!(error = %err, "session failed to start"),
        }
    }

    fn finish_shutdown_if_done(&mut self) -> bool {
        let Some(shutting) = &self.shutting_down else {
            return true;
        };
        if !self.sessions.is_empty() && tokio::time::Instant::now() < shutting.deadline {
            return false;
        }
        if let Some(shutting) = self.shutting_down.take() {
            let _ = shutting.reply.send(self.sessions.len());
        }
        true
    }
}

impl Actor for SessionsSupervisorActor {
    type Msg = SessionsMsg;
    type State = SessionsSupervisorState;
    type Arguments = SessionsSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionsSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(HOUSEKEEPING_EVERY, || SessionsMsg::HousekeepingDue);
        Ok(SessionsSupervisorState {
            args,
            sessions: BTreeMap::new(),
            next_subscriber: 0,
            is_accepting: true,
            shutting_down: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionsMsg::Accepted {
                peer,
                remote_addr,
                sender,
                receiver,
            } => {
                state
                    .admit(&myself, peer, remote_addr, sender, receiver)
                    .await
            }
            SessionsMsg::Shutdown { grace, reply } => {
                state.is_accepting = false;
                info!(
                    sessions = state.sessions.len(),
                    "saying bye to every session"
                );
                for session in state.sessions.values() {
                    let _ = session.cast(SessionMsg::Shutdown);
                }
                state.shutting_down = Some(ShuttingDown {
                    deadline: tokio::time::Instant::now() + grace,
                    reply,
                });
                if !state.finish_shutdown_if_done() {
                    myself.send_after(SHUTDOWN_CHECK_EVERY, || SessionsMsg::ShutdownCheckDue);
                }
            }
            SessionsMsg::ShutdownCheckDue => {
                if !state.finish_shutdown_if_done() {
                    myself.send_after(SHUTDOWN_CHECK_EVERY, || SessionsMsg::ShutdownCheckDue);
                }
            }
            SessionsMsg::GetSessions { reply } => {
                let _ = reply.send(state.sessions.len());
            }
            SessionsMsg::HousekeepingDue => state.args.limiters.shrink(),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                debug!(reason = reason.as_deref().unwrap_or(""), "session ended");
                state.sessions.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                warn!(error = %err, "session failed");
                state.sessions.remove(&cell.get_id());
            }
            _ => {}
        }
        state.finish_shutdown_if_done();
        Ok(())
    }
}
