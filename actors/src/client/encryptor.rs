//! Encryptor: seals outgoing records and opens received ones (DESIGN.md §2, §4).
//!
//! It holds the device signing key and each group's epoch keys; nothing else in the client
//! touches content keys. It never waits: a batch of records is split into one chunk per core,
//! each sealed or opened on the blocking pool (Ed25519 sign / `verify_strict` dominate, ~25 /
//! ~45 µs per 1 KiB record here), and a task answers once every chunk is done, in the
//! batch's order. The coordinator sends one batch at a time and gathers what arrives
//! meanwhile into the next, so concurrent app calls and relay pages share the cores.

use crate::crypto::envelope::{self, DeviceKey, NONCE_BYTES, OpenError, RecordKind};
use crate::crypto::keys::EpochKeys;
use crate::fault::{FaultPlan, FaultPoint};
use crate::rng::Rng;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::sync::Arc;
use zerok_messages::client::{EncryptorMsg, GroupId, ToOpen};

/// Records per chunk at least, so a chunk's work (~25–45 µs a record) outweighs the cost of
/// handing it to the blocking pool (a thread wake-up, tens of µs when threads are parked);
/// fewer records than this are sealed or opened on the answering task itself (< 0.4 ms).
pub const CHUNK_RECORDS_MIN: usize = 8;

/// The record kind of app payloads.
pub const KIND_APP: RecordKind = RecordKind::APP;

/// Run `work` over `inputs` in chunks on the blocking pool, one chunk per core; the outputs
/// in the inputs' order.
async fn in_parallel<I, O>(
    inputs: Vec<I>,
    cores: usize,
    work: Arc<dyn Fn(I) -> O + Send + Sync>,
) -> Vec<O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    if inputs.len() < CHUNK_RECORDS_MIN {
        // A few records (a live record, one push awaited by the app) take less than the
        // round trip through the blocking pool: done here, on the answering task.
        return inputs.into_iter().map(|i| work(i)).collect();
    }
    let chunk = inputs.len().div_ceil(cores.max(1)).max(CHUNK_RECORDS_MIN);
    let mut inputs = inputs.into_iter();
    let mut chunks = Vec::new();
    loop {
        let part: Vec<I> = inputs.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let work = Arc::clone(&work);
        chunks.push(tokio::task::spawn_blocking(move || {
            part.into_iter().map(|i| work(i)).collect::<Vec<O>>()
        }));
    }
    let mut out = Vec::new();
    for part in chunks {
        match part.await {
            Ok(done) => out.extend(done),
            // The pool is shutting down with the runtime; the caller sees fewer results.
            Err(_) => break,
        }
    }
    out
}

/// The Encryptor's actor type.
pub struct EncryptorActor;

/// What the Encryptor needs.
pub struct EncryptorArgs {
    /// This device's signing key.
    pub device: Arc<DeviceKey>,
    /// Randomness for nonces.
    pub rng: Rng,
    /// Faults to inject (none in production): `EncryptorBatch` makes it fail on a batch.
    pub faults: FaultPlan,
}

/// Encryptor state.
pub struct EncryptorState {
    device: Arc<DeviceKey>,
    rng: Rng,
    groups: HashMap<GroupId, Arc<EpochKeys>>,
    cores: usize,
    faults: FaultPlan,
    /// Senders' public keys, decompressed once (shared by the opening threads).
    senders: Arc<envelope::SenderKeys>,
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
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            faults: args.faults,
            senders: Arc::default(),
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
                state
                    .groups
                    .insert(group, Arc::new(EpochKeys::from_secret(&keys)));
            }
            EncryptorMsg::SealMany { records, reply } => {
                if state.faults.should_fail(FaultPoint::EncryptorBatch) {
                    return Err("fault injected: the Encryptor fails on a batch".into());
                }
                let device = Arc::clone(&state.device);
                let inputs: Vec<(Option<Arc<EpochKeys>>, usize, [u8; NONCE_BYTES])> = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (state.groups.get(&r.group).cloned(), i, state.rng.bytes()))
                    .collect();
                let work = Arc::new(
                    move |(keys, i, nonce): (Option<Arc<EpochKeys>>, usize, [u8; NONCE_BYTES])| {
                        let r = &records[i];
                        let Some(keys) = keys else {
                            return Err(format!("no keys for group {}", r.group));
                        };
                        envelope::seal(&keys, &device, r.seq, r.hlc, KIND_APP, &r.payload, nonce)
                            .map_err(|e| e.to_string())
                    },
                );
                let cores = state.cores;
                tokio::spawn(async move {
                    let _ = reply.send(in_parallel(inputs, cores, work).await);
                });
            }
            EncryptorMsg::OpenMany { envelopes, reply } => {
                let own = state.device.device_id();
                let senders = Arc::clone(&state.senders);
                if state.faults.should_fail(FaultPoint::EncryptorBatch) {
                    return Err("fault injected: the Encryptor fails on a batch".into());
                }
                let inputs: Vec<(Option<Arc<EpochKeys>>, ToOpen)> = envelopes
                    .into_iter()
                    .map(|e| (state.groups.get(&e.group).cloned(), e))
                    .collect();
                let work = Arc::new(
                    move |(keys, e): (Option<Arc<EpochKeys>>, ToOpen)| match keys {
                        // This device's own records come back from relays and are dropped: their
                        // signatures are not checked.
                        Some(keys) => envelope::open_unless_own(
                            &keys,
                            &e.blob_id,
                            &e.envelope,
                            &own,
                            &senders,
                        ),
                        None => Err(OpenError::Malformed),
                    },
                );
                let cores = state.cores;
                tokio::spawn(async move {
                    let _ = reply.send(in_parallel(inputs, cores, work).await);
                });
            }
        }
        Ok(())
    }
}
