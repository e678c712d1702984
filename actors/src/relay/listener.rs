//! Listener: accepts links from the transport and hands each to the SessionsSupervisor
//! (DESIGN.md §2).
//!
//! The accept loop runs in a task the actor owns; stopping the actor (shutdown) stops
//! accepting at once. Limits (connection count, connections per IP) are applied by the
//! SessionsSupervisor, which knows how many sessions are open.

use crate::link::LinkListener;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::task::JoinHandle;
use tracing::{debug, info};
use zerok_messages::relay::{ListenerMsg, SessionsMsg};

/// The listener's actor type.
pub struct ListenerActor;

/// What the listener needs.
pub struct ListenerArgs {
    /// Accepted links of the transport.
    pub listener: LinkListener,
    /// Where links go.
    pub sessions: ActorRef<SessionsMsg>,
}

/// Listener state.
pub struct ListenerState {
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Actor for ListenerActor {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ListenerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let ListenerArgs {
            mut listener,
            sessions,
        } = args;
        let task = tokio::spawn(async move {
            while let Some(link) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %link.peer.short(), "link accepted");
                let accepted = SessionsMsg::Accepted {
                    peer: link.peer,
                    remote_addr: link.remote_addr,
                    sender: link.sender,
                    receiver: link.receiver,
                };
                if sessions.cast(accepted).is_err() {
                    break;
                }
            }
            info!("listener stopped accepting");
        });
        Ok(ListenerState { accepted, task })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ListenerMsg::GetAccepted { reply } => {
                let _ = reply.send(state.accepted.load(Ordering::Relaxed));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        Ok(())
    }
}
