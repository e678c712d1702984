//! Encryptor: seals outgoing records and opens received ones (DESIGN.md §2, §4).
//!
//! It holds the device signing key and each group's epoch keys; nothing else in the client
//! touches content keys. Sealing and opening a record up to ~1 MiB take well under a
//! millisecond to a few milliseconds, so they run in the actor; records over
//! [`BLOCKING_BYTES_MIN`] go to the blocking pool so the runtime is never held up.

use crate::types::GroupId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::sync::Arc;
use zerok_actors::crypto::envelope::{
    self, DeviceKey, NONCE_BYTES, OpenError, OpenedRecord, RecordKind, Sealed,
};
use zerok_actors::crypto::keys::EpochKeys;
use zerok_actors::rng::Rng;
use zerok_messages::BlobId;

/// Records at least this large are sealed and opened on the blocking pool.
pub const BLOCKING_BYTES_MIN: usize = 64 * 1024;

/// The record kind of app payloads.
pub const KIND_APP: RecordKind = RecordKind::APP;

/// Messages of the Encryptor.
pub enum EncryptorMsg {
    /// Keys of a group (added or replaced).
    SetGroup {
        /// The group.
        group: GroupId,
        /// Its current epoch keys.
        keys: Arc<EpochKeys>,
    },
    /// Seal a payload as this device's record `seq`.
    Seal {
        /// The group.
        group: GroupId,
        /// This device's seq in the group.
        seq: u64,
        /// HLC timestamp.
        hlc: u64,
        /// The app's bytes.
        payload: Vec<u8>,
        /// The sealed envelope.
        reply: RpcReplyPort<Result<Sealed, String>>,
    },
    /// Open a received envelope.
    Open {
        /// The group.
        group: GroupId,
        /// The id it was served under.
        blob_id: BlobId,
        /// The envelope.
        envelope: bytes::Bytes,
        /// The record, or why it does not open.
        reply: RpcReplyPort<Result<OpenedRecord, OpenError>>,
    },
}

/// The Encryptor's actor type.
pub struct EncryptorActor;

/// What the Encryptor needs.
pub struct EncryptorArgs {
    /// This device's signing key.
    pub device: Arc<DeviceKey>,
    /// Randomness for nonces.
    pub rng: Rng,
}

/// Encryptor state.
pub struct EncryptorState {
    device: Arc<DeviceKey>,
    rng: Rng,
    groups: HashMap<GroupId, Arc<EpochKeys>>,
}

impl Actor for EncryptorActor {
    type Msg = EncryptorMsg;
    type State = EncryptorState;
    type Arguments = EncryptorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: EncryptorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(EncryptorState {
            device: args.device,
            rng: args.rng,
            groups: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EncryptorMsg::SetGroup { group, keys } => {
                state.groups.insert(group, keys);
            }
            EncryptorMsg::Seal {
                group,
                seq,
                hlc,
                payload,
                reply,
            } => {
                let Some(keys) = state.groups.get(&group).cloned() else {
                    let _ = reply.send(Err(format!("no keys for group {group}")));
                    return Ok(());
                };
                let nonce: [u8; NONCE_BYTES] = state.rng.bytes();
                let device = Arc::clone(&state.device);
                let is_small = payload.len() < BLOCKING_BYTES_MIN;
                let seal = move || {
                    envelope::seal(&keys, &device, seq, hlc, KIND_APP, &payload, nonce)
                        .map_err(|e| e.to_string())
                };
                if is_small {
                    let _ = reply.send(seal());
                } else {
                    let sealed = tokio::task::spawn_blocking(seal)
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    let _ = reply.send(sealed);
                }
            }
            EncryptorMsg::Open {
                group,
                blob_id,
                envelope,
                reply,
            } => {
                let Some(keys) = state.groups.get(&group).cloned() else {
                    let _ = reply.send(Err(OpenError::Malformed));
                    return Ok(());
                };
                if envelope.len() < BLOCKING_BYTES_MIN {
                    let _ = reply.send(envelope::open(&keys, &blob_id, &envelope));
                } else {
                    let opened = tokio::task::spawn_blocking(move || {
                        envelope::open(&keys, &blob_id, &envelope)
                    })
                    .await
                    .unwrap_or(Err(OpenError::Malformed));
                    let _ = reply.send(opened);
                }
            }
        }
        Ok(())
    }
}
