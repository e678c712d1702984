//! The client's actor tree (docs/DESIGN.md §2), started by [`crate::Client::start`].
//!
//! ```text
//! ClientRoot                        restarts the Encryptor (shared policy); a dead
//! │                                 coordinator stops the client (calls answer `Stopped`)
//! ├── Encryptor                     device key + group keys; seal / open
//! ├── SyncCoordinator               outbox, dedupe, seq checks, events; owns LocalStore (fjall)
//! │   └── RelayConnection × relay   reconnects with jittered backoff; restarted (shared
//! │       └── LinkReader            policy), a relay left for a period past its intensity
//! └── ContentTransfer               large files over iroh-blobs (iroh transport only); its
//!                                   death ends file transfers, not the client
//! ```
//!
//! Wiring: the root spawns the Encryptor, then the coordinator with the Encryptor's ref; the
//! coordinator spawns one RelayConnection per relay of any group (and re-wires them when
//! groups or relay lists change); each connection spawns its LinkReader per link. No global
//! registry: several clients run in one process without sharing anything.
//!
//! Supervision ([`zerok_actors::supervision`]): an Encryptor that dies is restarted after the
//! policy's backoff and handed to the coordinator, which gives it every group's keys again
//! from the local store and the batches the old one died with; past the policy's intensity
//! the client stops. The coordinator owns the store, so its death stops the client: a
//! restarted coordinator would reopen the store under a client whose calls are in flight.
//! A failed journal sync of the store is final for that open store (nothing written after
//! it can be trusted to be durable), so the coordinator dies on it: the app starts the
//! client again, which reopens the store from its journal.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::{Arc, Mutex};
use tracing::{error, warn};
use zerok_actors::client::content_transfer::{
    ContentTransferActor, ContentTransferArgs, TransferMsg,
};
use zerok_actors::client::encryptor::{EncryptorActor, EncryptorArgs};
use zerok_actors::client::sync_coordinator::{CoordinatorActor, CoordinatorArgs};
use zerok_actors::crypto::envelope::DeviceKey;
use zerok_actors::fault::FaultPlan;
use zerok_actors::rng::Rng;
use zerok_actors::supervision::{Restart, RestartPolicy, RestartTracker};
use zerok_messages::client::{CoordMsg, EncryptorMsg};

/// The root's own messages.
pub enum RootMsg {
    /// Start the Encryptor again after its restart delay.
    RestartEncryptor,
}

/// The client tree's root actor.
pub struct ClientRoot;

/// What the root needs to start its children.
pub struct RootArgs {
    /// This device's signing key, for every Encryptor the root starts.
    pub device: Arc<DeviceKey>,
    /// Randomness: each Encryptor's nonces and the restart jitter.
    pub rng: Rng,
    /// Faults to inject (none in production).
    pub faults: FaultPlan,
    /// How the Encryptor is restarted.
    pub encryptor_restart: RestartPolicy,
    /// Builds the coordinator's args once the Encryptor exists.
    pub coordinator: Box<dyn FnOnce(ActorRef<EncryptorMsg>) -> CoordinatorArgs + Send>,
    /// Where the coordinator's ref is left for the handle.
    pub coordinator_ref: Arc<Mutex<Option<ActorRef<CoordMsg>>>>,
    /// The ContentTransfer's args (`None` on a transport without iroh-blobs).
    pub content: Option<ContentTransferArgs>,
    /// Where its ref is left for the handle.
    pub content_ref: Arc<Mutex<Option<ActorRef<TransferMsg>>>>,
}

/// How the client restarts its Encryptor: the shared standard policy.
pub const ENCRYPTOR_RESTART_POLICY: RestartPolicy = RestartPolicy::STANDARD;

/// How long the root waits for each child to stop when the client shuts down.
const CHILD_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The root's children, stopped (and waited for) in order when the root stops, so that when
/// `Client::shutdown` returns the local store is closed and its lock released: a client
/// restarted at once on the same home dir opens it.
pub struct RootState {
    coordinator: ActorRef<CoordMsg>,
    content: Option<ActorRef<TransferMsg>>,
    encryptor: Option<ActorRef<EncryptorMsg>>,
    device: Arc<DeviceKey>,
    rng: Rng,
    faults: FaultPlan,
    encryptor_restarts: RestartTracker,
}

async fn spawn_encryptor(
    root: &ActorRef<RootMsg>,
    device: &Arc<DeviceKey>,
    rng: &mut Rng,
    faults: &FaultPlan,
) -> Result<ActorRef<EncryptorMsg>, ActorProcessingErr> {
    let args = EncryptorArgs {
        device: Arc::clone(device),
        rng: rng.fork(),
        faults: faults.clone(),
    };
    let (encryptor, _) = Actor::spawn_linked(None, EncryptorActor, args, root.get_cell()).await?;
    Ok(encryptor)
}

impl Actor for ClientRoot {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        mut args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let encryptor = spawn_encryptor(&myself, &args.device, &mut args.rng, &args.faults).await?;
        let (coordinator, _) = Actor::spawn_linked(
            None,
            CoordinatorActor,
            (args.coordinator)(encryptor.clone()),
            myself.get_cell(),
        )
        .await?;
        *zerok_messages::sync::lock(&args.coordinator_ref) = Some(coordinator.clone());
        let content = match args.content.take() {
            Some(content_args) => Some(
                Actor::spawn_linked(None, ContentTransferActor, content_args, myself.get_cell())
                    .await?
                    .0,
            ),
            None => None,
        };
        *zerok_messages::sync::lock(&args.content_ref) = content.clone();
        Ok(RootState {
            coordinator,
            content,
            encryptor: Some(encryptor),
            device: args.device,
            rng: args.rng,
            faults: args.faults,
            encryptor_restarts: RestartTracker::new(args.encryptor_restart),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::RestartEncryptor => {
                let encryptor =
                    spawn_encryptor(&myself, &state.device, &mut state.rng, &state.faults).await?;
                state.encryptor = Some(encryptor.clone());
                state
                    .coordinator
                    .cast(CoordMsg::EncryptorRestarted(encryptor))?;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Transfers first (they use the endpoint), the coordinator (it owns the local store),
        // then the Encryptor it uses.
        if let Some(content) = &state.content {
            let _ = content
                .stop_and_wait(Some("shutdown".into()), Some(CHILD_STOP_TIMEOUT))
                .await;
        }
        let _ = state
            .coordinator
            .stop_and_wait(Some("shutdown".into()), Some(CHILD_STOP_TIMEOUT))
            .await;
        if let Some(encryptor) = &state.encryptor {
            let _ = encryptor
                .stop_and_wait(Some("shutdown".into()), Some(CHILD_STOP_TIMEOUT))
                .await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((id, reason)) = zerok_actors::supervision::ended(&event) else {
            return Ok(());
        };
        if reason == "shutdown" {
            myself.stop(Some(reason));
            return Ok(());
        }
        if state.content.as_ref().is_some_and(|c| c.get_id() == id) {
            // Transfers fail with `Stopped` from now on; records sync on.
            error!(reason = %reason, "content transfer stopped; files cannot be moved until restart");
            state.content = None;
            return Ok(());
        }
        let is_encryptor = state.encryptor.as_ref().is_some_and(|e| e.get_id() == id);
        if !is_encryptor {
            error!(reason = %reason, "client coordinator stopped; the client stops");
            myself.stop(Some("coordinator stopped".into()));
            return Ok(());
        }
        state.encryptor = None;
        match state
            .encryptor_restarts
            .on_crash(tokio::time::Instant::now(), &mut state.rng)
        {
            Restart::After(delay) => {
                warn!(reason = %reason, delay_ms = delay.as_millis() as u64, "encryptor died; restarting it");
                myself.send_after(delay, || RootMsg::RestartEncryptor);
            }
            Restart::Escalate => {
                error!(reason = %reason, "encryptor keeps dying; the client stops");
                myself.stop(Some("encryptor keeps dying".into()));
            }
        }
        Ok(())
    }
}
