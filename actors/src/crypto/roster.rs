//! A group's device roster: who may write in which epoch (issue 14; docs/DESIGN.md §4
//! "Membership").
//!
//! The roster is kept as signed operations ([`Op`]) in the group's own mailbox; the relay
//! stores them as ciphertext like any record and learns nothing new. This module is the pure
//! state machine over them: [`Roster`] holds every operation it was given and derives, from
//! the *set* alone, the members of every epoch it knows. So every device that saw the same
//! operations, in any order, from any relay, agrees on the roster (property-tested below).
//!
//! - **Epochs** are named by their number and the rekey that began them ([`EpochId`]): two
//!   devices that remove someone at the same time both start an epoch `n + 1`, under two
//!   different secrets, until they see each other's.
//! - **Genesis**: the founder is the only member of epoch 0. A device learns the founder from
//!   its own state (it created the group, or the member that admitted it said so inside the
//!   admission, authenticated by the invite), never from an operation: a secret holder
//!   cannot claim to be the founder.
//! - **Add**: a member of an epoch puts a device on that epoch's roster. Members added in
//!   an epoch stay members of the epochs after it unless a rekey removes them. An add whose
//!   author is not (yet) a member does not count; it counts once its author's own add is
//!   seen (chains of adds in one epoch resolve to a fixpoint).
//! - **Rekey**: a member of epoch `e` starts `e + 1` without the devices it removes, with a
//!   fresh secret wrapped to each remaining member (the wraps are opaque here). Of several
//!   valid rekeys from one epoch the one with the smallest [`OpId`] wins: it is the epoch
//!   everyone writes in next. Every removal of every valid rekey from `e` holds in the
//!   winner's roster, so a stale device's concurrent rekey cannot undo a removal. The
//!   winner may have wrapped its secret to a device another rekey removed:
//!   [`Roster::rekey_needed`] says so, and a member then rekeys again to shut it out.
//! - A record of epoch `E` is accepted from its sender only if the sender is a member of `E`
//!   ([`Roster::is_member`]); a losing epoch keeps its own roster, so records written in it
//!   before its writers saw the winner are still accepted from its members.
//!
//! Bounds: at most [`ROSTER_OPS_MAX`] operations and [`EPOCH_MEMBERS_MAX`] members per epoch;
//! past them an operation is refused ([`RosterError`]), and a device name is at most
//! [`DEVICE_NAME_BYTES_MAX`] bytes.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use zerok_messages::{DeviceId, Epoch, MailboxId};

/// Most operations a roster holds (a group that adds and removes a device a day for 25
/// years stays under it).
pub const ROSTER_OPS_MAX: usize = 20_000;
/// Most members of one epoch.
pub const EPOCH_MEMBERS_MAX: usize = 256;
/// Longest device display name, in bytes.
pub const DEVICE_NAME_BYTES_MAX: usize = 64;
/// BLAKE3 key-derivation context of an operation's id.
const OP_ID_CONTEXT: &str = "zerok roster op v1";
/// Domain of an [`Endorsement`]'s signature.
const ENDORSE_DOMAIN: &[u8] = b"zerok roster endorse v1";

/// An operation's id: BLAKE3 (keyed by [`OP_ID_CONTEXT`]) of its canonical CBOR.
pub type OpId = [u8; 32];

/// An epoch: its number and the rekey that began it (all zeros for epoch 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochId {
    /// The number in every envelope of the epoch.
    pub number: Epoch,
    /// The id of the rekey operation that began it.
    #[serde(with = "serde_bytes")]
    pub origin: OpId,
}

impl EpochId {
    /// Epoch 0, which the founder began.
    pub const GENESIS: EpochId = EpochId {
        number: Epoch(0),
        origin: [0; 32],
    };
}

/// A device on the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The device (its Ed25519 key: it signs the device's records).
    pub device: DeviceId,
    /// Its X25519 public key: epoch secrets are wrapped to it.
    #[serde(with = "serde_bytes")]
    pub wrap_key: [u8; 32],
    /// Its display name (chosen by its user; not unique).
    pub name: String,
    /// Who put it on the roster (itself for the founder).
    pub added_by: DeviceId,
    /// When, by the adder's wall clock (unix ms).
    pub added_at_ms: u64,
    /// The invite it was admitted with (its invite mailbox id), if any.
    pub via: Option<MailboxId>,
    /// A recovery phrase's entry (not a device): the secret of the mailbox its members
    /// keep a snapshot of the group in (`crate::crypto::recovery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<SecretBytes>,
}

/// A secret inside a roster operation (an invite's): redacted in `Debug`, zeroized on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBytes(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// An invite as the roster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteView {
    /// Its id (its invite mailbox's id).
    pub id: MailboxId,
    /// Its secret (any member admits with it).
    pub secret: SecretBytes,
    /// Past this time (unix ms, by the admitting member's clock) nobody admits with it.
    pub expires_at_ms: u64,
    /// The member that made it.
    pub issued_by: DeviceId,
    /// When it was made (unix ms, by its member's clock).
    pub issued_at_ms: u64,
    /// The device admitted with it (it is used up), if any.
    pub used_by: Option<DeviceId>,
}

/// What an operation changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Put a device on the roster of the operation's epoch.
    Add {
        /// The device.
        device: DeviceId,
        /// Its X25519 public key.
        #[serde(with = "serde_bytes")]
        wrap_key: [u8; 32],
        /// Its display name.
        name: String,
        /// The invite it was admitted with, if any (which uses the invite up).
        via: Option<MailboxId>,
        /// For a recovery phrase's entry: its snapshot mailbox's secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovery: Option<SecretBytes>,
        /// For a device that adds itself with a recovery phrase: the phrase entry's
        /// signature over the add ([`Endorsement`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endorsed: Option<Endorsement>,
    },
    /// Make an invite known to every member, so any of them can admit with it.
    Invite {
        /// The invite's id (its invite mailbox's id).
        id: MailboxId,
        /// Its secret.
        secret: SecretBytes,
        /// Past this time (unix ms) no member admits with it.
        expires_at_ms: u64,
    },
    /// Begin the next epoch without `removed`, its secret wrapped to every other member.
    Rekey {
        /// Devices left out of the next epoch.
        removed: BTreeSet<DeviceId>,
        /// The next epoch's secret, wrapped to each remaining member (opaque here).
        wrapped: BTreeMap<DeviceId, serde_bytes::ByteBuf>,
    },
}

/// A member's signature that lets a device add itself (`Change::Add` with `author ==
/// device`): what a recovery phrase's entry gives a new device ([`endorsement_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    /// The member that signs (a recovery phrase's entry).
    pub by: DeviceId,
    /// Its Ed25519 signature over [`endorsement_message`].
    pub signature: zerok_messages::Signature64,
}

/// What an [`Endorsement`] signs: the epoch, device, wrap key and name of the add.
pub fn endorsement_message(
    epoch: &EpochId,
    device: &DeviceId,
    wrap_key: &[u8; 32],
    name: &str,
) -> Vec<u8> {
    let mut message = ENDORSE_DOMAIN.to_vec();
    message.extend_from_slice(&epoch.number.0.to_be_bytes());
    message.extend_from_slice(&epoch.origin);
    message.extend_from_slice(device.as_bytes());
    message.extend_from_slice(wrap_key);
    message.extend_from_slice(name.as_bytes());
    message
}

/// Whether `endorsed` is `by`'s valid signature of the self-add of `device`.
fn endorsement_verifies(
    endorsed: &Endorsement,
    epoch: &EpochId,
    device: &DeviceId,
    wrap_key: &[u8; 32],
    name: &str,
) -> bool {
    use ed25519_dalek::{Signature, VerifyingKey};
    let Ok(key) = VerifyingKey::from_bytes(endorsed.by.as_bytes()) else {
        return false;
    };
    key.verify_strict(
        &endorsement_message(epoch, device, wrap_key, name),
        &Signature::from_bytes(&endorsed.signature.0),
    )
    .is_ok()
}

/// A roster operation as a device wrote it: `author` is the sender of the record that
/// carries it (the record's signature proves it), `epoch` the epoch it was written in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The device that wrote it.
    pub author: DeviceId,
    /// The epoch it was written in.
    pub epoch: EpochId,
    /// The author's wall clock when it wrote it (unix ms; informational).
    pub at_ms: u64,
    /// What it changes.
    pub change: Change,
}

impl Op {
    /// Its id: the hash of its canonical encoding.
    pub fn id(&self) -> OpId {
        let mut cbor = Vec::new();
        // Writing CBOR into a Vec cannot fail for these types.
        if ciborium::into_writer(self, &mut cbor).is_err() {
            cbor.clear();
        }
        blake3::derive_key(OP_ID_CONTEXT, &cbor)
    }
}

/// Why an operation was refused outright (it is not kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// The roster holds [`ROSTER_OPS_MAX`] operations.
    #[error("the roster is full ({ROSTER_OPS_MAX} operations)")]
    Full,
    /// A device name longer than [`DEVICE_NAME_BYTES_MAX`].
    #[error("device name longer than {DEVICE_NAME_BYTES_MAX} bytes")]
    NameTooLong,
    /// A rekey wraps to more devices than an epoch can hold.
    #[error("a rekey wraps its secret to more than {EPOCH_MEMBERS_MAX} devices")]
    TooManyWraps,
}

/// One epoch as the roster derives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochView {
    /// Its members, by device.
    pub members: BTreeMap<DeviceId, Member>,
    /// The epoch it follows (`None` for genesis).
    pub parent: Option<EpochId>,
    /// The winning rekey from it: the epoch written in after it (`None`: it is a head).
    pub next: Option<EpochId>,
    /// Devices that a valid rekey from its parent removed (the union of all of them).
    pub removed: BTreeSet<DeviceId>,
}

/// A group's roster: every operation seen, and the epochs they derive (derived when first
/// asked for after a change, so taking a joiner's history record by record costs one
/// derivation per query, not one per operation).
#[derive(Debug, Clone)]
pub struct Roster {
    founder: Member,
    /// Where this device's knowledge starts: genesis (the founder alone), or the epoch a
    /// device was admitted in after a rekey, with the members its admission listed (it
    /// holds no operation of the epochs before).
    base: EpochId,
    base_members: BTreeMap<DeviceId, Member>,
    ops: BTreeMap<OpId, Op>,
    epochs: std::sync::OnceLock<BTreeMap<EpochId, EpochView>>,
}

impl Roster {
    /// A roster whose epoch 0 has `founder` alone.
    pub fn new(founder: Member) -> Roster {
        Roster {
            base: EpochId::GENESIS,
            base_members: BTreeMap::from([(founder.device, founder.clone())]),
            founder,
            ops: BTreeMap::new(),
            epochs: std::sync::OnceLock::new(),
        }
    }

    /// A roster that starts at `base` with `members` (a device admitted after a rekey: its
    /// admission named the epoch and its members; what came before is not known to it).
    pub fn starting_at(founder: Member, base: EpochId, members: Vec<Member>) -> Roster {
        Roster {
            founder,
            base,
            base_members: members
                .into_iter()
                .take(EPOCH_MEMBERS_MAX)
                .map(|m| (m.device, m))
                .collect(),
            ops: BTreeMap::new(),
            epochs: std::sync::OnceLock::new(),
        }
    }

    /// The epoch this roster's knowledge starts at (genesis, or the one a device was
    /// admitted in) and its members then.
    pub fn base(&self) -> (EpochId, Vec<Member>) {
        (self.base, self.base_members.values().cloned().collect())
    }

    /// The founder's entry.
    pub fn founder(&self) -> &Member {
        &self.founder
    }

    /// Take `op` (answers whether it was new). An operation that does not count yet (its
    /// author is not a member of its epoch, or its epoch is not known yet) is kept: it counts
    /// once what it depends on arrives.
    pub fn apply(&mut self, op: Op) -> Result<bool, RosterError> {
        Ok(self.apply_many([op])? == 1)
    }

    /// Take many operations at once: answers how many were new;
    /// stops at the first refused.
    pub fn apply_many(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<usize, RosterError> {
        let mut new = 0;
        let mut result = Ok(());
        for op in ops {
            if let Err(e) = check(&op) {
                result = Err(e);
                break;
            }
            let id = op.id();
            if self.ops.contains_key(&id) {
                continue;
            }
            if self.ops.len() >= ROSTER_OPS_MAX {
                result = Err(RosterError::Full);
                break;
            }
            self.ops.insert(id, op);
            new += 1;
        }
        if new > 0 {
            self.epochs = std::sync::OnceLock::new();
        }
        result.map(|()| new)
    }

    /// Every operation held, by id.
    pub fn ops(&self) -> impl Iterator<Item = (&OpId, &Op)> {
        self.ops.iter()
    }

    /// An epoch as derived so far (`None`: not known, or not begun by a valid rekey).
    pub fn epoch(&self, epoch: &EpochId) -> Option<&EpochView> {
        self.epochs().get(epoch)
    }

    /// Whether `device` may write in `epoch`.
    pub fn is_member(&self, epoch: &EpochId, device: &DeviceId) -> bool {
        self.epochs()
            .get(epoch)
            .is_some_and(|view| view.members.contains_key(device))
    }

    /// Whether `op` is a device's add of itself that a member of the op's epoch endorsed
    /// (a device recovered with a phrase): it counts without its author being a member.
    pub fn admits_itself(&self, op: &Op) -> bool {
        let Change::Add {
            device,
            wrap_key,
            name,
            endorsed: Some(endorsed),
            ..
        } = &op.change
        else {
            return false;
        };
        op.author == *device
            && self.is_member(&op.epoch, &endorsed.by)
            && endorsement_verifies(endorsed, &op.epoch, device, wrap_key, name)
    }

    /// Whether a rekey on the way from this roster's base to its head removed `device`.
    pub fn removed(&self, device: &DeviceId) -> bool {
        self.removed_devices().contains(device)
    }

    /// Every device a rekey on the way from this roster's base to its head removed.
    pub fn removed_devices(&self) -> BTreeSet<DeviceId> {
        let mut removed = BTreeSet::new();
        let mut at = Some(self.base);
        while let Some(view) = at.and_then(|epoch| self.epochs().get(&epoch)) {
            removed.extend(view.removed.iter().copied());
            at = view.next;
        }
        removed
    }

    /// Whether `device` is a member of any epoch known (a device never admitted, such as a
    /// copied home dir with its new key, is not).
    pub fn was_member(&self, device: &DeviceId) -> bool {
        self.epochs()
            .values()
            .any(|view| view.members.contains_key(device))
    }

    /// The epoch everyone writes in: follow the winning rekeys from genesis.
    pub fn head(&self) -> EpochId {
        let mut at = self.base;
        while let Some(next) = self.epochs().get(&at).and_then(|view| view.next) {
            at = next;
        }
        at
    }

    /// The members of the head epoch.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.epochs()
            .get(&self.head())
            .into_iter()
            .flat_map(|view| view.members.values())
    }

    /// Every invite a member made known (in the epoch it was written in), and whether a
    /// device was admitted with it (in any epoch).
    pub fn invites(&self) -> Vec<InviteView> {
        let used: BTreeMap<MailboxId, DeviceId> = self
            .epochs()
            .values()
            .flat_map(|view| view.members.values())
            .filter_map(|m| m.via.map(|via| (via, m.device)))
            .collect();
        self.ops
            .values()
            .filter(|op| self.is_member(&op.epoch, &op.author))
            .filter_map(|op| match &op.change {
                Change::Invite {
                    id,
                    secret,
                    expires_at_ms,
                } => Some(InviteView {
                    id: *id,
                    secret: secret.clone(),
                    expires_at_ms: *expires_at_ms,
                    issued_by: op.author,
                    issued_at_ms: op.at_ms,
                    used_by: used.get(id).copied(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The invite `id` if a member may admit with it at `now_ms`: made known by a member,
    /// not expired, not used.
    pub fn open_invite(&self, id: &MailboxId, now_ms: u64) -> Option<InviteView> {
        self.invites()
            .into_iter()
            .find(|i| i.id == *id && now_ms < i.expires_at_ms && i.used_by.is_none())
    }

    /// Devices that must be shut out of the head epoch by another rekey: a concurrent,
    /// losing rekey removed them, and the winner (not knowing) wrapped its secret to them.
    pub fn rekey_needed(&self) -> Option<(EpochId, BTreeSet<DeviceId>)> {
        let head = self.head();
        let origin = self.ops.get(&head.origin)?;
        let Change::Rekey { wrapped, .. } = &origin.change else {
            return None;
        };
        let view = self.epochs().get(&head)?;
        let exposed: BTreeSet<DeviceId> = view
            .removed
            .iter()
            .filter(|device| wrapped.contains_key(*device))
            .copied()
            .collect();
        (!exposed.is_empty()).then_some((head, exposed))
    }

    /// The epochs, derived now if an operation came since the last time.
    fn epochs(&self) -> &BTreeMap<EpochId, EpochView> {
        self.epochs.get_or_init(|| self.derive())
    }

    /// Derive every epoch from the operations (a function of the set, not of their order).
    fn derive(&self) -> BTreeMap<EpochId, EpochView> {
        let mut by_epoch: BTreeMap<EpochId, Vec<(&OpId, &Op)>> = BTreeMap::new();
        for (id, op) in &self.ops {
            by_epoch.entry(op.epoch).or_default().push((id, op));
        }
        let mut epochs = BTreeMap::new();
        // (epoch, its parent, its starting members, the devices removed on the way in)
        let mut todo = vec![(self.base, None, self.base_members.clone(), BTreeSet::new())];
        while let Some((epoch, parent, mut members, removed)) = todo.pop() {
            let ops = by_epoch.get(&epoch).map(Vec::as_slice).unwrap_or_default();
            add_fixpoint(&mut members, ops);
            // Valid rekeys from this epoch: by members, to the next number.
            type Wraps = BTreeMap<DeviceId, serde_bytes::ByteBuf>;
            let rekeys: Vec<(&OpId, &DeviceId, &BTreeSet<DeviceId>, &Wraps)> = ops
                .iter()
                .filter(|(_, op)| members.contains_key(&op.author))
                .filter_map(|(id, op)| match &op.change {
                    Change::Rekey { removed, wrapped } => Some((*id, &op.author, removed, wrapped)),
                    Change::Add { .. } | Change::Invite { .. } => None,
                })
                .collect();
            let mut next = None;
            if let Some(number) = epoch.number.0.checked_add(1) {
                let gone: BTreeSet<DeviceId> = rekeys
                    .iter()
                    .flat_map(|(_, _, removed, _)| removed.iter().copied())
                    .collect();
                // Ids are sorted: the first valid rekey is the winner.
                next = rekeys.first().map(|(id, ..)| EpochId {
                    number: Epoch(number),
                    origin: **id,
                });
                // A child's members are the parent's that its rekey gave the secret to (and
                // its author), less every removal: a device added in the parent after the
                // rekey was written (by a device the rekey removed, say) is not one.
                for (id, author, _, wrapped) in &rekeys {
                    let child = EpochId {
                        number: Epoch(number),
                        origin: **id,
                    };
                    let kept: BTreeMap<DeviceId, Member> = members
                        .iter()
                        .filter(|(device, _)| {
                            !gone.contains(*device)
                                && (wrapped.contains_key(*device) || *device == *author)
                        })
                        .map(|(device, member)| (*device, member.clone()))
                        .collect();
                    todo.push((child, Some(epoch), kept, gone.clone()));
                }
            }
            epochs.insert(
                epoch,
                EpochView {
                    members,
                    parent,
                    next,
                    removed,
                },
            );
        }
        epochs
    }
}

/// Refuse what no roster keeps: an oversize name or wrap list.
fn check(op: &Op) -> Result<(), RosterError> {
    match &op.change {
        Change::Add { name, .. } if name.len() > DEVICE_NAME_BYTES_MAX => {
            Err(RosterError::NameTooLong)
        }
        Change::Rekey { wrapped, .. } if wrapped.len() > EPOCH_MEMBERS_MAX => {
            Err(RosterError::TooManyWraps)
        }
        _ => Ok(()),
    }
}

/// Add every device that a member of the epoch added, until nothing changes (an add by a
/// device added in the same epoch counts once that device's add does). Passes go in id
/// order, and among several adds of one device the first that counts gives its entry: a
/// function of the set of operations, whatever order they came in.
fn add_fixpoint(members: &mut BTreeMap<DeviceId, Member>, ops: &[(&OpId, &Op)]) {
    loop {
        let mut changed = false;
        for (_, op) in ops {
            let Change::Add {
                device,
                wrap_key,
                name,
                via,
                recovery,
                endorsed,
            } = &op.change
            else {
                continue;
            };
            // By a member, or by the device itself with a member's endorsement (which is
            // then who added it).
            let added_by = if members.contains_key(&op.author) {
                op.author
            } else {
                match endorsed {
                    Some(e)
                        if op.author == *device
                            && members.contains_key(&e.by)
                            && endorsement_verifies(e, &op.epoch, device, wrap_key, name) =>
                    {
                        e.by
                    }
                    _ => continue,
                }
            };
            if members.len() >= EPOCH_MEMBERS_MAX || members.contains_key(device) {
                continue;
            }
            members.insert(
                *device,
                Member {
                    device: *device,
                    wrap_key: *wrap_key,
                    name: name.clone(),
                    added_by,
                    added_at_ms: op.at_ms,
                    via: *via,
                    recovery: recovery.clone(),
                },
            );
            changed = true;
        }
        if !changed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn member(n: u8) -> Member {
        Member {
            device: dev(n),
            wrap_key: [n ^ 0x55; 32],
            name: format!("device {n}"),
            added_by: dev(n),
            added_at_ms: 0,
            via: None,
            recovery: None,
        }
    }

    fn add(author: u8, epoch: EpochId, device: u8) -> Op {
        Op {
            author: dev(author),
            epoch,
            at_ms: 1000 + u64::from(device),
            change: Change::Add {
                device: dev(device),
                wrap_key: [device ^ 0x55; 32],
                name: format!("device {device}"),
                via: None,
                recovery: None,
                endorsed: None,
            },
        }
    }

    /// A rekey by `author` from `epoch` removing `removed`, wrapped to `to`.
    fn rekey(author: u8, epoch: EpochId, removed: &[u8], to: &[u8]) -> Op {
        Op {
            author: dev(author),
            epoch,
            at_ms: 2000,
            change: Change::Rekey {
                removed: removed.iter().map(|&n| dev(n)).collect(),
                wrapped: to
                    .iter()
                    .map(|&n| (dev(n), serde_bytes::ByteBuf::from(vec![n; 8])))
                    .collect(),
            },
        }
    }

    fn next_of(op: &Op) -> EpochId {
        EpochId {
            number: Epoch(op.epoch.number.0 + 1),
            origin: op.id(),
        }
    }

    fn members(roster: &Roster, epoch: &EpochId) -> Vec<u8> {
        roster
            .epoch(epoch)
            .map(|view| view.members.keys().map(|d| d.0[0]).collect())
            .unwrap_or_default()
    }

    const G: EpochId = EpochId::GENESIS;

    #[test]
    fn the_founder_alone_is_a_member_of_epoch_zero() {
        let roster = Roster::new(member(1));
        assert_eq!(roster.head(), G);
        assert!(roster.is_member(&G, &dev(1)));
        assert!(!roster.is_member(&G, &dev(2)));
        assert_eq!(roster.members().count(), 1);
    }

    #[test]
    fn an_add_counts_only_once_its_author_is_a_member_in_any_order() {
        // 2 adds 3, then 1 adds 2: the first counts once the second arrives.
        let mut roster = Roster::new(member(1));
        assert!(roster.apply(add(2, G, 3)).expect("kept"));
        assert_eq!(
            members(&roster, &G),
            vec![1],
            "an add by a non-member does not count"
        );
        assert!(roster.apply(add(1, G, 2)).expect("kept"));
        assert_eq!(members(&roster, &G), vec![1, 2, 3]);
        let entry = &roster.epoch(&G).expect("genesis").members[&dev(3)];
        assert_eq!((entry.added_by, entry.name.as_str()), (dev(2), "device 3"));
        // The same op again is not new.
        assert!(!roster.apply(add(1, G, 2)).expect("kept"));
        // A device nobody on the roster added never counts.
        roster.apply(add(9, G, 8)).expect("kept");
        assert!(!roster.is_member(&G, &dev(8)));
    }

    #[test]
    fn a_rekey_removes_a_device_from_the_next_epoch_only() {
        let mut roster = Roster::new(member(1));
        roster
            .apply_many([add(1, G, 2), add(1, G, 3)])
            .expect("kept");
        let removal = rekey(1, G, &[2], &[1, 3]);
        roster.apply(removal.clone()).expect("kept");
        let e1 = next_of(&removal);
        assert_eq!(roster.head(), e1);
        assert_eq!(members(&roster, &e1), vec![1, 3]);
        assert!(!roster.is_member(&e1, &dev(2)), "removed from epoch 1");
        assert!(
            roster.is_member(&G, &dev(2)),
            "its epoch-0 records still count"
        );
        assert_eq!(roster.epoch(&e1).expect("e1").parent, Some(G));
        assert_eq!(roster.rekey_needed(), None);
        // The removed device cannot write itself back into epoch 1, nor rekey it.
        roster.apply(add(2, e1, 2)).expect("kept");
        roster.apply(rekey(2, e1, &[1], &[2])).expect("kept");
        assert_eq!(roster.head(), e1);
        assert!(!roster.is_member(&e1, &dev(2)));
        // A member can add it again, explicitly.
        roster.apply(add(3, e1, 2)).expect("kept");
        assert!(roster.is_member(&e1, &dev(2)));
    }

    #[test]
    fn concurrent_rekeys_converge_on_the_smallest_id_and_keep_every_removal() {
        let mut roster = Roster::new(member(1));
        roster
            .apply_many([add(1, G, 2), add(1, G, 3), add(1, G, 4)])
            .expect("kept");
        // 1 removes 2 while 3, not knowing, removes 4 (and wraps its secret to 2).
        let a = rekey(1, G, &[2], &[1, 3, 4]);
        let b = rekey(3, G, &[4], &[1, 2, 3]);
        roster.apply_many([a.clone(), b.clone()]).expect("kept");
        let (winner, loser) = if a.id() < b.id() { (&a, &b) } else { (&b, &a) };
        assert_eq!(roster.head(), next_of(winner));
        // Neither removal is undone by the other rekey.
        assert_eq!(members(&roster, &next_of(winner)), vec![1, 3]);
        assert_eq!(members(&roster, &next_of(loser)), vec![1, 3]);
        // The winner wrapped its secret to the device the loser removed: rekey again.
        let exposed = if winner == &a { dev(4) } else { dev(2) };
        assert_eq!(
            roster.rekey_needed(),
            Some((next_of(winner), BTreeSet::from([exposed])))
        );
        let again = rekey(1, next_of(winner), &[exposed.0[0]], &[1, 3]);
        roster.apply(again.clone()).expect("kept");
        assert_eq!(roster.head(), next_of(&again));
        assert_eq!(roster.rekey_needed(), None);
    }

    #[test]
    fn an_add_the_rekey_did_not_wrap_to_stays_in_the_old_epoch() {
        // 2 adds 5 in epoch 0 while 1 rekeys (removing 3): 5 is a member of epoch 0 only
        // (the rekey gave it no secret); it is not removed either.
        let mut roster = Roster::new(member(1));
        roster
            .apply_many([add(1, G, 2), add(1, G, 3)])
            .expect("kept");
        let removal = rekey(1, G, &[3], &[1, 2]);
        roster.apply(removal.clone()).expect("kept");
        roster.apply(add(2, G, 5)).expect("kept");
        assert_eq!(members(&roster, &next_of(&removal)), vec![1, 2]);
        assert!(roster.is_member(&G, &dev(5)));
        assert!(!roster.removed(&dev(5)));
        assert!(roster.removed(&dev(3)));
    }

    #[test]
    fn a_removed_device_cannot_carry_a_device_it_adds_afterwards_into_the_next_epoch() {
        // 3 is removed; it then adds 7 in epoch 0 (where it is still a member). 7 must not
        // be a member of epoch 1: a later rekey would wrap the group's secret to it.
        let mut roster = Roster::new(member(1));
        roster
            .apply_many([add(1, G, 2), add(1, G, 3)])
            .expect("kept");
        let removal = rekey(1, G, &[3], &[1, 2]);
        roster.apply(removal.clone()).expect("kept");
        roster.apply(add(3, G, 7)).expect("kept");
        let e1 = next_of(&removal);
        assert!(roster.is_member(&G, &dev(7)));
        assert!(!roster.is_member(&e1, &dev(7)));
        assert!(
            roster.members().all(|m| m.device != dev(7)),
            "a rekey from epoch 1 wraps to the head's members"
        );
    }

    /// `device` adding itself in `epoch`, endorsed by `key`.
    fn self_add(key: &ed25519_dalek::SigningKey, epoch: EpochId, device: u8) -> Op {
        use ed25519_dalek::Signer;
        let (wrap_key, name) = ([device ^ 0x55; 32], format!("device {device}"));
        let message = endorsement_message(&epoch, &dev(device), &wrap_key, &name);
        Op {
            author: dev(device),
            epoch,
            at_ms: 3000,
            change: Change::Add {
                device: dev(device),
                wrap_key,
                name,
                via: None,
                recovery: None,
                endorsed: Some(Endorsement {
                    by: DeviceId(key.verifying_key().to_bytes()),
                    signature: zerok_messages::Signature64(key.sign(&message).to_bytes()),
                }),
            },
        }
    }

    #[test]
    fn a_device_adds_itself_only_with_a_members_endorsement_of_exactly_that_add() {
        let phrase = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
        let phrase_id = DeviceId(phrase.verifying_key().to_bytes());
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[0x43; 32]);
        let mut roster = Roster::new(member(1));
        // Endorsed by a key that is not on the roster: nothing.
        roster.apply(self_add(&phrase, G, 6)).expect("kept");
        assert!(!roster.is_member(&G, &dev(6)));
        // Once 1 puts the phrase's entry on the roster, its endorsement counts.
        let mut entry = add(1, G, 0);
        if let Change::Add { device, .. } = &mut entry.change {
            *device = phrase_id;
        }
        roster.apply(entry).expect("kept");
        assert!(roster.is_member(&G, &dev(6)));
        // A stranger's endorsement, one for another epoch, or a changed name do not count.
        roster.apply(self_add(&stranger, G, 8)).expect("kept");
        assert!(!roster.is_member(&G, &dev(8)));
        let mut renamed = self_add(&phrase, G, 9);
        if let Change::Add { name, .. } = &mut renamed.change {
            *name = "another".into();
        }
        roster.apply(renamed).expect("kept");
        assert!(!roster.is_member(&G, &dev(9)));
        let elsewhere = EpochId {
            number: Epoch(1),
            origin: [7; 32],
        };
        let mut moved = self_add(&phrase, elsewhere, 10);
        moved.epoch = G;
        roster.apply(moved).expect("kept");
        assert!(!roster.is_member(&G, &dev(10)));
        // Nor does an endorsement carried by another author (not a member) than the device
        // it adds.
        let mut relayed = self_add(&phrase, G, 11);
        relayed.author = dev(12);
        roster.apply(relayed).expect("kept");
        assert!(!roster.is_member(&G, &dev(11)));
    }

    #[test]
    fn an_old_operation_encodes_and_hashes_as_before_the_recovery_fields() {
        // Ops written before `recovery`/`endorsed` existed keep their ids (they are stored
        // and referenced by id: an epoch's origin is one).
        let op = add(1, G, 2);
        let mut cbor = Vec::new();
        ciborium::into_writer(&op, &mut cbor).expect("cbor");
        let text = String::from_utf8_lossy(&cbor);
        assert!(!text.contains("recovery") && !text.contains("endorsed"));
        let back: Op = ciborium::from_reader(cbor.as_slice()).expect("parse");
        assert_eq!(back, op);
    }

    #[test]
    fn an_invite_is_open_until_it_expires_or_admits_a_device() {
        let mut roster = Roster::new(member(1));
        let id = MailboxId([0x1D; 32]);
        let invite = |author: u8| Op {
            author: dev(author),
            epoch: G,
            at_ms: 10,
            change: Change::Invite {
                id,
                secret: SecretBytes([0xAB; 32]),
                expires_at_ms: 1_000,
            },
        };
        // An invite made known by a non-member opens nothing.
        roster.apply(invite(9)).expect("kept");
        assert_eq!(roster.open_invite(&id, 500), None);
        roster.apply(invite(1)).expect("kept");
        let open = roster.open_invite(&id, 500).expect("open");
        assert_eq!((open.issued_by, open.secret.0), (dev(1), [0xAB; 32]));
        assert!(
            !format!("{open:?}").contains("171"),
            "the secret is redacted"
        );
        assert_eq!(roster.open_invite(&id, 1_000), None, "expired");
        // Admitting a device with it uses it up.
        let mut admit = add(1, G, 2);
        if let Change::Add { via, .. } = &mut admit.change {
            *via = Some(id);
        }
        roster.apply(admit).expect("kept");
        assert_eq!(roster.open_invite(&id, 500), None, "used");
        assert_eq!(roster.invites()[0].used_by, Some(dev(2)));
    }

    #[test]
    fn oversize_operations_are_refused_and_not_kept() {
        let mut roster = Roster::new(member(1));
        let mut long = add(1, G, 2);
        if let Change::Add { name, .. } = &mut long.change {
            *name = "x".repeat(DEVICE_NAME_BYTES_MAX + 1);
        }
        assert_eq!(roster.apply(long), Err(RosterError::NameTooLong));
        let wraps: Vec<u8> = (0..=255).collect();
        let mut many = rekey(1, G, &[], &wraps);
        if let Change::Rekey { wrapped, .. } = &mut many.change {
            // One more than an epoch holds (dev(n) for every n is 256 devices).
            let mut extra = [0u8; 32];
            extra[31] = 1;
            wrapped.insert(DeviceId(extra), serde_bytes::ByteBuf::new());
        }
        assert_eq!(roster.apply(many), Err(RosterError::TooManyWraps));
        assert_eq!(roster.ops().count(), 0);
    }

    /// A random history over devices 1..=6: `(author, device added, epoch pick, removal
    /// mask, is a rekey)` steps, in epochs the history reached so far (rekeys by
    /// non-members and adds of non-members' adds included: they must not count).
    fn history() -> impl Strategy<Value = Vec<(u8, u8, u8, u8, bool)>> {
        prop::collection::vec((1u8..=6, 1u8..=6, 0u8..4, 0u8..64, any::<bool>()), 1..40)
    }

    fn build(steps: &[(u8, u8, u8, u8, bool)]) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut epochs = vec![G];
        for &(author, other, which, mask, is_rekey) in steps {
            let epoch = epochs[usize::from(which) % epochs.len()];
            if is_rekey {
                // Removes the devices of `mask`'s bits (a random subset of 1..=6).
                let removed: Vec<u8> = (1..=6).filter(|d| mask & (1 << (d - 1)) != 0).collect();
                let to: Vec<u8> = (1..=6).filter(|d| !removed.contains(d)).collect();
                let op = rekey(author, epoch, &removed, &to);
                epochs.push(next_of(&op));
                ops.push(op);
            } else {
                ops.push(add(author, epoch, other));
            }
        }
        ops
    }

    fn summary(roster: &Roster) -> Vec<(EpochId, Vec<u8>, Option<EpochId>)> {
        let mut out = Vec::new();
        let mut todo = vec![G];
        let mut seen = BTreeSet::new();
        while let Some(e) = todo.pop() {
            if !seen.insert(e) {
                continue;
            }
            if let Some(view) = roster.epoch(&e) {
                out.push((e, members(roster, &e), view.next));
            }
            for (id, op) in roster.ops() {
                if op.epoch == e && matches!(op.change, Change::Rekey { .. }) {
                    todo.push(EpochId {
                        number: Epoch(e.number.0 + 1),
                        origin: *id,
                    });
                }
            }
        }
        out.sort();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any two orders of the same operations (one at a time, or all at once) give the
        /// same epochs, members and head.
        #[test]
        fn the_roster_is_a_function_of_the_set_of_operations(
            steps in history(),
            seed in any::<u64>(),
        ) {
            let ops = build(&steps);
            let mut shuffled = ops.clone();
            let mut rng = crate::rng::Rng::seeded(seed);
            for i in (1..shuffled.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                shuffled.swap(i, j);
            }
            let mut one = Roster::new(member(1));
            for op in ops.clone() {
                one.apply(op).expect("kept");
            }
            let mut two = Roster::new(member(1));
            for op in shuffled {
                two.apply(op).expect("kept");
            }
            let mut three = Roster::new(member(1));
            three.apply_many(ops).expect("kept");
            prop_assert_eq!(one.head(), two.head());
            prop_assert_eq!(summary(&one), summary(&two));
            prop_assert_eq!(summary(&one), summary(&three));
        }

        /// No device that any valid rekey from an epoch removed is a member of any epoch
        /// that follows it, unless a member of that epoch added it again there.
        #[test]
        fn a_removal_holds_in_every_next_epoch(steps in history()) {
            let mut roster = Roster::new(member(1));
            roster.apply_many(build(&steps)).expect("kept");
            for (e, _, _) in summary(&roster) {
                let Some(view) = roster.epoch(&e) else { continue };
                for device in &view.removed {
                    let readded = roster.ops().any(|(_, op)| {
                        op.epoch == e
                            && matches!(&op.change, Change::Add { device: d, .. } if d == device)
                    });
                    prop_assert!(readded || !view.members.contains_key(device));
                }
            }
        }
    }
}
