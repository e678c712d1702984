//! The client's actor tree (DESIGN.md §2), started by [`crate::Client::start`].
//!
//! ```text
//! ClientRoot                        a dead child stops the client (calls answer `Stopped`)
//! ├── Encryptor                     device key + group keys; seal / open
//! └── SyncCoordinator               outbox, dedupe, seq checks, events; owns LocalStore (sled)
//!     └── RelayConnection × relay   reconnects with jittered backoff; restarted if it dies
//!         └── LinkReader
//! ```
//!
//! Wiring: the root spawns the Encryptor, then the coordinator with the Encryptor's ref; the
//! coordinator spawns one RelayConnection per relay of any group (and re-wires them when
//! groups or relay lists change); each connection spawns its LinkReader per link. No global
//! registry: several clients run in one process without sharing anything.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::{Arc, Mutex};
use tracing::error;
use zerok_actors::client::encryptor::{EncryptorActor, EncryptorArgs};
use zerok_actors::client::sync_coordinator::{CoordinatorActor, CoordinatorArgs};
use zerok_messages::client::{CoordMsg, EncryptorMsg};

/// The root has no messages of its own: it only supervises.
pub enum RootMsg {}

/// The client tree's root actor.
pub struct ClientRoot;

/// What the root needs to start its children.
pub struct RootArgs {
    /// The Encryptor's args.
    pub encryptor: EncryptorArgs,
    /// Builds the coordinator's args once the Encryptor exists.
    pub coordinator: Box<dyn FnOnce(ActorRef<EncryptorMsg>) -> CoordinatorArgs + Send>,
    /// Where the coordinator's ref is left for the handle.
    pub coordinator_ref: Arc<Mutex<Option<ActorRef<CoordMsg>>>>,
}

/// How long the root waits for each child to stop when the client shuts down.
const CHILD_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The root's children, stopped (and waited for) in order when the root stops, so that when
/// `Client::shutdown` returns the local store is closed and its lock released: a client
/// restarted at once on the same home dir opens it.
pub struct RootState {
    coordinator: ActorRef<CoordMsg>,
    encryptor: ActorRef<EncryptorMsg>,
}

impl Actor for ClientRoot {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let (encryptor, _) =
            Actor::spawn_linked(None, EncryptorActor, args.encryptor, myself.get_cell()).await?;
        let (coordinator, _) = Actor::spawn_linked(
            None,
            CoordinatorActor,
            (args.coordinator)(encryptor.clone()),
            myself.get_cell(),
        )
        .await?;
        *zerok_messages::sync::lock(&args.coordinator_ref) = Some(coordinator.clone());
        Ok(RootState {
            coordinator,
            encryptor,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // The coordinator first (it owns the local store), then the Encryptor it uses.
        let _ = state
            .coordinator
            .stop_and_wait(Some("shutdown".into()), Some(CHILD_STOP_TIMEOUT))
            .await;
        let _ = state
            .encryptor
            .stop_and_wait(Some("shutdown".into()), Some(CHILD_STOP_TIMEOUT))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(_, err) => {
                error!(error = %err, "client actor failed; the client stops");
                myself.stop(Some("child failed".into()));
            }
            SupervisionEvent::ActorTerminated(_, _, reason) => {
                if reason.as_deref() != Some("shutdown") {
                    error!("client actor stopped; the client stops");
                }
                myself.stop(reason);
            }
            _ => {}
        }
        Ok(())
    }
}
