//! Test fixtures shared by the actor tests.

#![allow(dead_code, clippy::unwrap_used)]

use ractor::{Actor, ActorProcessingErr, ActorRef};
use zerok_messages::Cursor;
use zerok_messages::relay::{BlobStoreMsg, GroupRouterMsg, StoreOutcome};

/// A BlobStore stand-in: every append is "durable" at once with the next cursor.
pub struct ProbeStore;

impl Actor for ProbeStore {
    type Msg = BlobStoreMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        latest: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BlobStoreMsg::Append { requests, reply_to } => {
                let results = requests
                    .into_iter()
                    .map(|request| {
                        *latest += 1;
                        let outcome = StoreOutcome::Stored {
                            cursor: Cursor(*latest),
                            duplicate: false,
                            stored_at_ms: 1,
                        };
                        (request.token, outcome)
                    })
                    .collect();
                reply_to.cast(GroupRouterMsg::Stored { results })?;
            }
            BlobStoreMsg::GetLatest { reply, .. } => {
                let _ = reply.send(Ok(Cursor(*latest)));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A GroupRouter stand-in that forwards every `Stored` it gets to a channel.
pub struct Collector;

impl Actor for Collector {
    type Msg = GroupRouterMsg;
    type State = tokio::sync::mpsc::UnboundedSender<Vec<(u64, StoreOutcome)>>;
    type Arguments = tokio::sync::mpsc::UnboundedSender<Vec<(u64, StoreOutcome)>>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let GroupRouterMsg::Stored { results } = message {
            let _ = tx.send(results);
        }
        Ok(())
    }
}

/// Spawn a [`Collector`] and the channel it forwards to.
pub async fn collector() -> (
    ActorRef<GroupRouterMsg>,
    tokio::sync::mpsc::UnboundedReceiver<Vec<(u64, StoreOutcome)>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Collector, tx).await.unwrap();
    (actor, rx)
}
