//! LinkReader: reads one link's frames for its owner (a relay Session, or a client
//! RelayConnection), linked to it so either's exit stops the other.
//!
//! Bound: before reading each frame it takes a permit from the connection's in-flight
//! semaphore and hands it over with the frame; the owner releases it when the request is
//! answered. With all permits taken the reader stops reading, QUIC flow control pushes back
//! on the peer, and a flooding client slows itself down instead of growing the relay's
//! memory.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::Semaphore;
use zerok_messages::link::{LinkEvent, LinkReceiver};
use zerok_messages::relay::LinkReaderMsg;

/// The reader's actor type, for an owner with messages `M`.
pub struct LinkReaderActor<M>(PhantomData<fn() -> M>);

impl<M> Default for LinkReaderActor<M> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// What a reader needs.
pub struct LinkReaderArgs<M> {
    /// The link's receiving half.
    pub receiver: LinkReceiver,
    /// Where frames go.
    pub owner: ActorRef<M>,
    /// In-flight slots of the connection.
    pub inflight: Arc<Semaphore>,
}

/// Reader state: the args.
pub struct LinkReaderState<M> {
    receiver: LinkReceiver,
    owner: ActorRef<M>,
    inflight: Arc<Semaphore>,
}

impl<M> Actor for LinkReaderActor<M>
where
    M: ractor::Message + From<LinkEvent>,
{
    type Msg = LinkReaderMsg;
    type State = LinkReaderState<M>;
    type Arguments = LinkReaderArgs<M>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LinkReaderArgs<M>,
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
                            .send_message(LinkEvent::Frame { body, permit }.into())
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
                            .send_message(LinkEvent::Closed { error: None }.into());
                        myself.stop(None);
                    }
                    Err(error) => {
                        let _ = state
                            .owner
                            .send_message(LinkEvent::Closed { error: Some(error) }.into());
                        myself.stop(None);
                    }
                }
            }
        }
        Ok(())
    }
}
