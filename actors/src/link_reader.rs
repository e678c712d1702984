//! LinkReader: reads one link's frames for its owner (a relay Session, or a client
//! RelayConnection), linked to it so either's exit stops the other.
//!
//! Bound: before reading each frame it takes a permit from the connection's in-flight
//! semaphore, and after reading it, where the owner bounds bytes, as many byte permits as the
//! frame is long; it hands both over with the frame ([`FramePermit`]) and the owner releases
//! them when the request is answered. With all permits taken the reader stops reading, QUIC
//! flow control pushes back on the peer, and a flooding client slows itself down instead of
//! growing the relay's memory: a connection holds at most `inflight` requests and
//! `inflight_bytes` of their frames.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::Semaphore;
use zerok_messages::link::{FramePermit, LinkEvent, LinkReceiver};
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
    /// Byte budgets the connection's frames in flight count against, in the order they are
    /// taken (the connection's own, then one shared by every connection); empty: only slots
    /// count.
    pub inflight_bytes: Vec<Arc<Semaphore>>,
}

/// Reader state: the args.
pub struct LinkReaderState<M> {
    receiver: LinkReceiver,
    owner: ActorRef<M>,
    inflight: Arc<Semaphore>,
    inflight_bytes: Vec<(Arc<Semaphore>, u32)>,
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
        let inflight_bytes = args
            .inflight_bytes
            .into_iter()
            .map(|bytes| {
                let capacity = u32::try_from(bytes.available_permits()).unwrap_or(u32::MAX);
                (bytes, capacity)
            })
            .collect();
        Ok(LinkReaderState {
            receiver: args.receiver,
            owner: args.owner,
            inflight: args.inflight,
            inflight_bytes,
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
                        let mut bytes = Vec::with_capacity(state.inflight_bytes.len());
                        for (budget, capacity) in &state.inflight_bytes {
                            // A frame larger than a whole budget waits for all of it.
                            let wanted = u32::try_from(body.len())
                                .unwrap_or(u32::MAX)
                                .clamp(1, *capacity);
                            let Ok(permit) = Arc::clone(budget).acquire_many_owned(wanted).await
                            else {
                                myself.stop(None);
                                return Ok(());
                            };
                            bytes.push(permit);
                        }
                        let permit = FramePermit::new(permit, bytes);
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
