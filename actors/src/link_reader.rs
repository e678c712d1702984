//! LinkReader: reads one link's frames for its owner (a relay Session, or a client
//! RelayConnection), linked to it so either's exit stops the other.
//!
//! Bound: before reading each frame it takes a permit from the connection's in-flight
//! semaphore and hands it over with the frame; the owner releases it when the request is
//! answered. With all permits taken the reader stops reading, QUIC flow control pushes back
//! on the peer, and a flooding client slows itself down instead of growing the relay's
//! memory.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use tokio::sync::Semaphore;
use zerok_messages::link::LinkReceiver;
use zerok_messages::relay::{LinkReaderMsg, SessionMsg};

/// The reader's actor type.
pub struct LinkReaderActor;

/// What a reader needs.
pub struct LinkReaderArgs {
    /// The link's receiving half.
    pub receiver: LinkReceiver,
    /// Where frames go.
    pub owner: ActorRef<SessionMsg>,
    /// In-flight slots of the connection.
    pub inflight: Arc<Semaphore>,
}

/// Reader state: the args.
pub struct LinkReaderState {
    receiver: LinkReceiver,
    owner: ActorRef<SessionMsg>,
    inflight: Arc<Semaphore>,
}

impl Actor for LinkReaderActor {
    type Msg = LinkReaderMsg;
    type State = LinkReaderState;
    type Arguments = LinkReaderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LinkReaderArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(LinkReaderMsg::ReadNext)?;
        Ok(LinkReaderState {
            receiver: args.receiver,
            owner: args.owner,
            inflight: args.inflight,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LinkReaderMsg::ReadNext => {
                let Ok(permit) = Arc::clone(&state.inflight).acquire_owned().await else {
                    myself.stop(None);
                    return Ok(());
                };
                match state.receiver.recv().await {
                    Ok(Some(body)) => {
                        if state
                            .owner
                            .send_message(SessionMsg::FrameReceived { body, permit })
                            .is_err()
                        {
                            myself.stop(None);
                            return Ok(());
                        }
                        myself.send_message(LinkReaderMsg::ReadNext)?;
                    }
                    Ok(None) => {
                        let _ = state
                            .owner
                            .send_message(SessionMsg::LinkClosed { error: None });
                        myself.stop(None);
                    }
                    Err(error) => {
                        let _ = state
                            .owner
                            .send_message(SessionMsg::LinkClosed { error: Some(error) });
                        myself.stop(None);
                    }
                }
            }
        }
        Ok(())
    }
}
