//! Encryptor: seals outgoing records and opens received ones (DESIGN.md §2, §4).
//!
//! It holds the device signing key and each group's epoch keys; nothing else in the client
//! touches content keys. It never waits: a batch of records is split into one chunk per core,
//! each sealed or opened on the blocking pool, and a task answers once every chunk is done,
//! in the batch's order. A chunk's records of one group are signed as one batch (one Ed25519
//! signature over their Merkle root, DESIGN.md §4); opening verifies each batch's signature
//! once ([`OpenCache`]), so per record what remains is BLAKE3, XChaCha20-Poly1305 and CBOR. The coordinator sends one batch at a time and gathers what arrives
//! meanwhile into the next, so concurrent app calls and relay pages share the cores.

use crate::crypto::envelope::{
    self, DeviceKey, NONCE_BYTES, OpenCache, OpenError, OpenedRecord, RecordIn, SealError, Sealed,
};
use crate::crypto::keys::EpochKeys;
use crate::fault::{FaultPlan, FaultPoint};
use crate::rng::Rng;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::sync::Arc;
use zerok_messages::BlobId;
use zerok_messages::client::{EncryptorMsg, GroupId, Resealed, ToOpen, ToSeal};

/// Records per chunk at least, so a chunk's work (~25–45 µs a record) outweighs the cost of
/// handing it to the blocking pool (a thread wake-up, tens of µs when threads are parked);
/// fewer records than this are sealed or opened on the answering task itself (< 0.4 ms).
pub const CHUNK_RECORDS_MIN: usize = 8;

/// Run `work` over `inputs` in chunks on the blocking pool, one chunk per core; the outputs
/// in the inputs' order (`work` answers a chunk's outputs in its order).
async fn in_parallel<I, O>(
    inputs: Vec<I>,
    cores: usize,
    work: Arc<dyn Fn(Vec<I>) -> Vec<O> + Send + Sync>,
) -> Vec<O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    if inputs.len() < CHUNK_RECORDS_MIN || crate::exec::is_inline() {
        // A few records (a live record, one push awaited by the app) take less than the
        // round trip through the blocking pool: done here, on the answering task (and
        // everything, in a simulation: `crate::exec`).
        return work(inputs);
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
        chunks.push(tokio::task::spawn_blocking(move || work(part)));
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

/// Seal `chunk` (indices into `records`, grouped by group, each with its nonce): one signed
/// batch per group run (DESIGN.md §4), one result per index, in order.
fn seal_chunk(
    records: &[ToSeal],
    keys: &HashMap<GroupId, Arc<EpochKeys>>,
    device: &DeviceKey,
    chunk: Vec<(usize, [u8; NONCE_BYTES])>,
) -> Vec<Result<Sealed, SealError>> {
    let mut out = Vec::with_capacity(chunk.len());
    for run in chunk.chunk_by(|a, b| records[a.0].group == records[b.0].group) {
        let group = records[run[0].0].group;
        let Some(keys) = keys.get(&group) else {
            out.extend(run.iter().map(|_| Err(SealError::NoKeys(group))));
            continue;
        };
        let inputs: Vec<RecordIn<'_>> = run
            .iter()
            .map(|(i, _)| RecordIn {
                seq: records[*i].seq,
                hlc: records[*i].hlc,
                kind: records[*i].kind,
                payload: &records[*i].payload,
            })
            .collect();
        let mut nonces = run.iter().map(|(_, nonce)| *nonce);
        out.extend(envelope::seal_batch(keys, device, &inputs, &mut || {
            nonces.next().expect("one nonce per record")
        }));
    }
    out
}

/// The Encryptor's actor type.
/// This device's own `envelopes`, opened with the first of `from` (stream, keys) each
/// opens under, sealed again under `to` (same seq, timestamp, kind and payload); the
/// client's own kinds stay, in the stream that opened them. Inline: a rekey moves at most an
/// outbox.
fn reseal(
    from: &[(GroupId, Arc<EpochKeys>)],
    to: &EpochKeys,
    device: &DeviceKey,
    envelopes: &[Vec<u8>],
    nonce: &mut dyn FnMut() -> [u8; NONCE_BYTES],
) -> Vec<Result<Resealed, SealError>> {
    let opened: Vec<Option<(GroupId, OpenedRecord)>> = envelopes
        .iter()
        .map(|e| {
            let blob_id = BlobId(*blake3::hash(e).as_bytes());
            from.iter()
                .find_map(|(stream, keys)| {
                    envelope::open(keys, &blob_id, e).ok().map(|r| (*stream, r))
                })
                .filter(|(_, r)| r.sender == device.device_id())
        })
        .collect();
    let moving: Vec<RecordIn<'_>> = opened
        .iter()
        .flatten()
        .filter(|(_, r)| !r.kind.is_system())
        .map(|(_, r)| RecordIn {
            seq: r.seq,
            hlc: r.hlc,
            kind: r.kind,
            payload: &r.payload,
        })
        .collect();
    let mut sealed = envelope::seal_batch(to, device, &moving, nonce).into_iter();
    let no_keys = || SealError::NoKeys(GroupId(to.mailbox_id()));
    opened
        .iter()
        .map(|record| match record {
            None => Err(no_keys()),
            Some((stream, r)) if r.kind.is_system() => Ok(Resealed::Kept(*stream)),
            Some(_) => sealed
                .next()
                .unwrap_or_else(|| Err(no_keys()))
                .map(Resealed::Moved),
        })
        .collect()
}

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
    /// Senders' public keys and verified batch signatures (shared by the opening threads).
    senders: Arc<OpenCache>,
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
                // By group (stable), so each chunk signs one batch per group it holds.
                let mut order: Vec<usize> = (0..records.len()).collect();
                order.sort_by_key(|i| records[*i].group);
                let inputs: Vec<(usize, [u8; NONCE_BYTES])> =
                    order.into_iter().map(|i| (i, state.rng.bytes())).collect();
                let indices: Vec<usize> = inputs.iter().map(|(i, _)| *i).collect();
                let keys = state.groups.clone();
                let work = Arc::new(move |chunk: Vec<(usize, [u8; NONCE_BYTES])>| {
                    seal_chunk(&records, &keys, &device, chunk)
                });
                let cores = state.cores;
                tokio::spawn(async move {
                    let sealed = in_parallel(inputs, cores, work).await;
                    if sealed.len() < indices.len() {
                        // Cut short (the runtime is stopping): no answer, the batch is
                        // sealed again.
                        return;
                    }
                    let mut in_order: Vec<Option<Result<Sealed, SealError>>> =
                        (0..indices.len()).map(|_| None).collect();
                    for (i, result) in indices.into_iter().zip(sealed) {
                        in_order[i] = Some(result);
                    }
                    let _ = reply.send(in_order.into_iter().flatten().collect());
                });
            }
            EncryptorMsg::Reseal {
                group,
                from,
                envelopes,
                reply,
            } => {
                let from: Vec<(GroupId, Arc<EpochKeys>)> = from
                    .iter()
                    .filter_map(|g| state.groups.get(g).map(|k| (*g, Arc::clone(k))))
                    .collect();
                let resealed = match state.groups.get(&group).cloned() {
                    Some(to) => {
                        let mut nonce = || state.rng.bytes();
                        reseal(&from, &to, &state.device, &envelopes, &mut nonce)
                    }
                    None => envelopes
                        .iter()
                        .map(|_| Err(SealError::NoKeys(group)))
                        .collect(),
                };
                let _ = reply.send(resealed);
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
                let open = move |(keys, e): (Option<Arc<EpochKeys>>, ToOpen)| match keys {
                    // This device's own records come back from relays and are dropped: their
                    // signatures are not checked.
                    Some(keys) => {
                        envelope::open_unless_own(&keys, &e.blob_id, &e.envelope, &own, &senders)
                    }
                    None => Err(OpenError::Malformed),
                };
                let work = Arc::new(move |chunk: Vec<(Option<Arc<EpochKeys>>, ToOpen)>| {
                    chunk.into_iter().map(&open).collect::<Vec<_>>()
                });
                let cores = state.cores;
                tokio::spawn(async move {
                    let _ = reply.send(in_parallel(inputs, cores, work).await);
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::RecordKind;
    use crate::crypto::keys::GroupSecret;
    use zerok_messages::{Epoch, MailboxId};

    #[test]
    fn a_chunk_seals_each_group_run_and_refuses_groups_without_keys() {
        let keys_a = Arc::new(GroupSecret::from_bytes([1; 32]).epoch_keys(Epoch(0)));
        let keys_b = Arc::new(GroupSecret::from_bytes([2; 32]).epoch_keys(Epoch(0)));
        let (a, b, none) = (
            GroupId(keys_a.mailbox_id()),
            GroupId(keys_b.mailbox_id()),
            GroupId(MailboxId([7; 32])),
        );
        let device = DeviceKey::from_secret_bytes(&[3; 32]);
        // Each record's kind is sealed as given (seq 2: a roster record).
        let kind_of = |seq| match seq {
            2 => RecordKind::ROSTER,
            _ => RecordKind::APP,
        };
        let record = |group, seq| ToSeal {
            group,
            seq,
            hlc: seq,
            kind: kind_of(seq),
            payload: format!("{seq}").into_bytes(),
        };
        let records = vec![record(a, 1), record(a, 2), record(none, 1), record(b, 1)];
        let keys = HashMap::from([(a, Arc::clone(&keys_a)), (b, Arc::clone(&keys_b))]);
        let chunk: Vec<(usize, [u8; NONCE_BYTES])> = (0..records.len())
            .map(|i| (i, [i as u8; NONCE_BYTES]))
            .collect();
        let sealed = seal_chunk(&records, &keys, &device, chunk);
        assert_eq!(sealed.len(), 4);
        assert_eq!(sealed[2], Err(SealError::NoKeys(none)));
        for (at, group_keys, seq) in [(0, &keys_a, 1), (1, &keys_a, 2), (3, &keys_b, 1)] {
            let s = sealed[at].as_ref().unwrap();
            let opened = envelope::open(group_keys, &s.blob_id, &s.envelope).unwrap();
            assert_eq!(
                (opened.seq, opened.kind, opened.payload),
                (seq, kind_of(seq), format!("{seq}").into_bytes())
            );
        }
    }

    #[test]
    fn reseal_moves_own_app_records_to_the_new_epoch_and_leaves_roster_records() {
        let old = Arc::new(GroupSecret::from_bytes([1; 32]).epoch_keys(Epoch(0)));
        let new = GroupSecret::from_bytes([2; 32]).epoch_keys(Epoch(1));
        let device = DeviceKey::from_secret_bytes(&[3; 32]);
        let other = DeviceKey::from_secret_bytes(&[4; 32]);
        let sealed = |by: &DeviceKey, seq, kind| {
            envelope::seal(
                &old,
                by,
                seq,
                10 + seq,
                kind,
                b"payload",
                [seq as u8; NONCE_BYTES],
            )
            .unwrap()
            .envelope
        };
        let envelopes = vec![
            sealed(&device, 1, RecordKind::APP),
            sealed(&device, 2, RecordKind::ROSTER),
            sealed(&other, 3, RecordKind::APP),
            vec![0u8; 40],
        ];
        let mut n = 0u8;
        let mut nonce = || {
            n += 1;
            [n; NONCE_BYTES]
        };
        let stream = GroupId(MailboxId([5; 32]));
        let out = reseal(
            &[(stream, Arc::clone(&old))],
            &new,
            &device,
            &envelopes,
            &mut nonce,
        );
        assert_eq!(out.len(), 4);
        let Ok(Resealed::Moved(moved)) = &out[0] else {
            panic!("moved: {:?}", out[0]);
        };
        let opened = envelope::open(&new, &moved.blob_id, &moved.envelope).unwrap();
        assert_eq!(
            (
                opened.sender,
                opened.seq,
                opened.hlc,
                opened.kind,
                opened.payload
            ),
            (
                device.device_id(),
                1,
                11,
                RecordKind::APP,
                b"payload".to_vec()
            )
        );
        assert!(envelope::open(&old, &moved.blob_id, &moved.envelope).is_err());
        // A roster operation stays in its epoch; another device's record, or one that
        // opens under no key given, is not moved.
        assert_eq!(out[1], Ok(Resealed::Kept(stream)));
        assert!(out[2].is_err());
        assert!(out[3].is_err());
    }
}
