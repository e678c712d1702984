//! Admitting a device with an invite that carries no group secret (issue 14; docs/DESIGN.md
//! §4 "Membership").
//!
//! An invite holds a random one-time **invite secret** (with the group's relays, its name and
//! an expiry; never the group secret or the group id). From the invite secret
//! ([`InviteKeys`]):
//! - the **invite mailbox**: its signing key makes the relays' join proof, so joiner and
//!   members can meet there; the relay sees one more mailbox of ciphertext;
//! - the **invite box key**: XChaCha20-Poly1305, sealing what they exchange.
//!
//! The joiner posts a [`JoinRequest`] (its device id, wrap key and name) there. A member
//! that knows the invite (it made it, or read it in the roster) checks the expiry by its own
//! clock and that the invite was not used, writes the roster `Add`, and answers with an
//! [`Admission`]: the group, its relays, the epoch, the epoch's secret wrapped to the
//! joiner's wrap key ([`super::wrap`], purpose `Admission`), and the epoch's roster. Each
//! message is signed by its author's device key and sealed under the box key, bound to the
//! invite mailbox and its kind ([`seal`], [`open`]).
//!
//! So a token opens nothing of the group by itself: an expired or used one is answered by no
//! member. What the token still gives its holder: the invite mailbox, and the box key, so a
//! thief who has it before the joiner can pose as the group to that joiner (as with any
//! invite link, the token is the joiner's trust anchor) or ask a member to admit it (the
//! member sees an unexpected device in its roster and can remove it).

use super::envelope::DeviceKey;
use super::keys::MailboxSigner;
use super::roster::{EpochId, Member};
use crate::rng::Rng;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;
use zerok_messages::client::MailboxSeed;
use zerok_messages::{DeviceId, MailboxId, Signature64};

/// Format byte of a sealed admission message.
const FORMAT: u8 = 1;
/// Leads the AEAD's associated data and every signed message.
const DOMAIN: &[u8] = b"zerok admit v1";
/// BLAKE3 context of the invite mailbox's signing seed.
const CONTEXT_MAILBOX: &str = "zerok invite mailbox v1";
/// BLAKE3 context of the invite box key.
const CONTEXT_BOX: &str = "zerok invite box v1";
const NONCE_BYTES: usize = 24;
/// Largest sealed message (an admission with a full roster of 256 is ~50 KiB).
pub const SEALED_BYTES_MAX: usize = 256 * 1024;

/// The keys an invite secret gives.
pub struct InviteKeys {
    signer: MailboxSigner,
    box_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for InviteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteKeys")
            .field("mailbox", &self.signer.mailbox_id())
            .finish_non_exhaustive()
    }
}

impl InviteKeys {
    /// The invite mailbox's signer and the box key of `invite_secret`.
    pub fn from_secret(invite_secret: &[u8; 32]) -> InviteKeys {
        let seed = MailboxSeed(Zeroizing::new(blake3::derive_key(
            CONTEXT_MAILBOX,
            invite_secret,
        )));
        InviteKeys {
            signer: MailboxSigner::from_seed(&seed),
            box_key: Zeroizing::new(blake3::derive_key(CONTEXT_BOX, invite_secret)),
        }
    }

    /// The invite mailbox's signer (its key and the join proofs for it).
    pub fn signer(&self) -> &MailboxSigner {
        &self.signer
    }

    /// The invite mailbox's id (also the invite's id in the roster).
    pub fn mailbox_id(&self) -> MailboxId {
        self.signer.mailbox_id()
    }
}

/// What a joining device asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The joiner's device id (it signs the request).
    pub device: DeviceId,
    /// Its wrap key's public half.
    #[serde(with = "serde_bytes")]
    pub wrap_key: [u8; 32],
    /// Its display name.
    pub name: String,
    /// Its wall clock when it asked (unix ms; informational: members judge expiry by their
    /// own clock).
    pub at_ms: u64,
}

/// What a member answers a joiner it admits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The admitted device (the one the secret is wrapped to).
    pub joiner: DeviceId,
    /// The group's id.
    pub group: MailboxId,
    /// The group's name.
    pub group_name: String,
    /// The group's relays (text form).
    pub relays: Vec<String>,
    /// The epoch the joiner starts in.
    pub epoch: EpochId,
    /// That epoch's secret wrapped to the joiner's wrap key.
    #[serde(with = "serde_bytes")]
    pub wrapped: Vec<u8>,
    /// The group's founder.
    pub founder: Member,
    /// The members of `epoch` (the joiner among them).
    pub members: Vec<Member>,
    /// Devices removed on the way to `epoch` (a recovery snapshot's: a recovering device
    /// disregards snapshots by any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<DeviceId>,
}

/// What a sealed message is (bound into its AEAD data and its signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A [`JoinRequest`].
    Request = 1,
    /// An [`Admission`].
    Admission = 2,
}

/// Why a sealed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// Too long, too short, an unknown format, or not what it says it is.
    #[error("not an admission message")]
    Malformed,
    /// It does not open with this invite's box key (another invite, or tampered).
    #[error("the message does not open with this invite")]
    Open,
    /// Its signature does not verify with its author's key.
    #[error("the message's signature does not verify")]
    Signature,
}

#[derive(Serialize, Deserialize)]
struct Signed {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    author: DeviceId,
    signature: Signature64,
}

fn signed_message(kind: Kind, mailbox: &MailboxId, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + 1 + 32 + body.len());
    message.extend_from_slice(DOMAIN);
    message.push(kind as u8);
    message.extend_from_slice(mailbox.as_bytes());
    message.extend_from_slice(body);
    message
}

fn aad(kind: Kind, mailbox: &MailboxId) -> Vec<u8> {
    signed_message(kind, mailbox, &[])
}

/// Seal `value` (a [`JoinRequest`] or an [`Admission`], as `kind` says) for the invite of
/// `keys`, signed by `author`.
pub fn seal<T: Serialize>(
    keys: &InviteKeys,
    kind: Kind,
    author: &DeviceKey,
    value: &T,
    rng: &mut Rng,
) -> Result<Vec<u8>, AdmitError> {
    let mailbox = keys.mailbox_id();
    let mut body = Vec::new();
    ciborium::into_writer(value, &mut body).map_err(|_| AdmitError::Malformed)?;
    let signature = author.sign(&signed_message(kind, &mailbox, &body));
    let signed = Signed {
        body,
        author: author.device_id(),
        signature,
    };
    let mut plaintext = Zeroizing::new(Vec::new());
    ciborium::into_writer(&signed, &mut *plaintext).map_err(|_| AdmitError::Malformed)?;
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill(&mut nonce);
    let cipher = XChaCha20Poly1305::new(&(*keys.box_key).into());
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &plaintext,
                aad: &aad(kind, &mailbox),
            },
        )
        .map_err(|_| AdmitError::Malformed)?;
    let mut out = Vec::with_capacity(2 + NONCE_BYTES + sealed.len());
    out.push(FORMAT);
    out.push(kind as u8);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    if out.len() > SEALED_BYTES_MAX {
        return Err(AdmitError::Malformed);
    }
    Ok(out)
}

/// Open a message of `kind` sealed for the invite of `keys`: answers it and its author
/// (whose signature verified).
pub fn open<T: for<'de> Deserialize<'de>>(
    keys: &InviteKeys,
    kind: Kind,
    sealed: &[u8],
) -> Result<(T, DeviceId), AdmitError> {
    if sealed.len() > SEALED_BYTES_MAX || sealed.len() < 2 + NONCE_BYTES {
        return Err(AdmitError::Malformed);
    }
    if sealed[0] != FORMAT || sealed[1] != kind as u8 {
        return Err(AdmitError::Malformed);
    }
    let mailbox = keys.mailbox_id();
    let (nonce, ciphertext) = sealed[2..].split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| AdmitError::Malformed)?;
    let cipher = XChaCha20Poly1305::new(&(*keys.box_key).into());
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad(kind, &mailbox),
                },
            )
            .map_err(|_| AdmitError::Open)?,
    );
    let signed: Signed =
        ciborium::from_reader(plaintext.as_slice()).map_err(|_| AdmitError::Malformed)?;
    let key =
        VerifyingKey::from_bytes(signed.author.as_bytes()).map_err(|_| AdmitError::Signature)?;
    key.verify_strict(
        &signed_message(kind, &mailbox, &signed.body),
        &Signature::from_bytes(&signed.signature.0),
    )
    .map_err(|_| AdmitError::Signature)?;
    let value = ciborium::from_reader(signed.body.as_slice()).map_err(|_| AdmitError::Malformed)?;
    Ok((value, signed.author))
}

/// Why a member does not admit a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No member made this invite known (or it was never made).
    #[error("unknown invite")]
    UnknownInvite,
    /// Past its expiry, by the admitting member's clock.
    #[error("the invite expired")]
    Expired,
    /// Another device was admitted with it.
    #[error("the invite was already used")]
    Used,
    /// This device is not a member of the head epoch (it was removed).
    #[error("this device is not a member")]
    NotMember,
    /// The request does not open, verify or parse, or is not signed by the device it names.
    #[error("bad request: {0}")]
    BadRequest(AdmitError),
    /// A name longer than a roster entry holds.
    #[error("device name too long")]
    NameTooLong,
}

/// What a member needs to admit a device into a group.
pub struct Admitter<'a> {
    /// This device (it signs the `Add` and the admission).
    pub device: &'a DeviceKey,
    /// The group's id.
    pub group: MailboxId,
    /// The group's name.
    pub group_name: &'a str,
    /// The group's relays (text form).
    pub relays: &'a [String],
    /// The group's roster as this device knows it.
    pub roster: &'a super::roster::Roster,
    /// The head epoch's secret.
    pub epoch_secret: &'a [u8; 32],
}

/// A request a member admits: the roster operation to write first (`None` when the device
/// was already admitted with this invite and asks again), and the sealed admission to post
/// in the invite mailbox once that operation is durable on the group's relays.
#[derive(Debug)]
pub struct Served {
    /// The device admitted.
    pub joiner: DeviceId,
    /// The `Add` (via the invite) to write in the head epoch.
    pub add: Option<super::roster::Op>,
    /// The admission, sealed for the invite.
    pub admission: Vec<u8>,
}

impl Admitter<'_> {
    /// Judge a sealed request posted in the invite mailbox of `invite_id` at `now_ms` (this
    /// device's clock: expiry and single use are the members' to enforce, not the joiner's).
    pub fn serve(
        &self,
        invite_id: &MailboxId,
        sealed_request: &[u8],
        now_ms: u64,
        rng: &mut Rng,
    ) -> Result<Served, Refusal> {
        use super::roster::{Change, DEVICE_NAME_BYTES_MAX, Op};
        use super::wrap::{Purpose, WrapContext, wrap};
        let me = self.device.device_id();
        let head = self.roster.head();
        if !self.roster.is_member(&head, &me) {
            return Err(Refusal::NotMember);
        }
        let invite = self
            .roster
            .invites()
            .into_iter()
            .find(|i| i.id == *invite_id)
            .ok_or(Refusal::UnknownInvite)?;
        let keys = InviteKeys::from_secret(&invite.secret.0);
        if keys.mailbox_id() != *invite_id {
            return Err(Refusal::UnknownInvite);
        }
        let (request, author): (JoinRequest, DeviceId) =
            open(&keys, Kind::Request, sealed_request).map_err(Refusal::BadRequest)?;
        if author != request.device {
            return Err(Refusal::BadRequest(AdmitError::Signature));
        }
        if request.name.len() > DEVICE_NAME_BYTES_MAX {
            return Err(Refusal::NameTooLong);
        }
        let again = match invite.used_by {
            Some(device) if device == request.device => true,
            Some(_) => return Err(Refusal::Used),
            None => false,
        };
        if !again && now_ms >= invite.expires_at_ms {
            return Err(Refusal::Expired);
        }
        let add = (!again).then(|| Op {
            author: me,
            epoch: head,
            at_ms: now_ms,
            change: Change::Add {
                device: request.device,
                wrap_key: request.wrap_key,
                name: request.name.clone(),
                via: Some(*invite_id),
                recovery: None,
                endorsed: None,
            },
        });
        // The members the joiner will see: the head's, with itself as the add will make it.
        let mut members: Vec<Member> = self.roster.members().cloned().collect();
        if !members.iter().any(|m| m.device == request.device) {
            members.push(Member {
                device: request.device,
                wrap_key: request.wrap_key,
                name: request.name.clone(),
                added_by: me,
                added_at_ms: now_ms,
                via: Some(*invite_id),
                recovery: None,
            });
        }
        let context = WrapContext {
            purpose: Purpose::Admission,
            group: self.group,
            written_in: head,
            opens: head.number,
            author: me,
            recipient: request.device,
        };
        let wrapped = wrap(&request.wrap_key, &context, self.epoch_secret, rng)
            .map_err(|_| Refusal::BadRequest(AdmitError::Malformed))?;
        let admission = Admission {
            joiner: request.device,
            group: self.group,
            group_name: self.group_name.to_owned(),
            relays: self.relays.to_vec(),
            epoch: head,
            wrapped,
            founder: self.roster.founder().clone(),
            members,
            removed: Vec::new(),
        };
        let admission = seal(&keys, Kind::Admission, self.device, &admission, rng)
            .map_err(Refusal::BadRequest)?;
        Ok(Served {
            joiner: request.device,
            add,
            admission,
        })
    }
}

/// What a joiner learns from an admission it accepted.
#[derive(Debug)]
pub struct Joined {
    /// The admission (group, name, relays, epoch, founder, members).
    pub admission: Admission,
    /// The member that admitted it.
    pub admitted_by: DeviceId,
    /// The epoch's secret.
    pub secret: Zeroizing<[u8; 32]>,
}

/// Why a joiner does not accept an admission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// It does not open or verify with the invite.
    #[error("not an admission for this invite: {0}")]
    Message(AdmitError),
    /// It admits another device.
    #[error("the admission is for another device")]
    NotForMe,
    /// Its author, or this device, is not among the members it lists.
    #[error("the admission's roster does not hold its author and this device")]
    Roster,
    /// The wrapped secret does not open for this device.
    #[error("the admission's secret does not open for this device")]
    Secret,
    /// The secret does not give the group it names (epoch 0).
    #[error("the admission's secret does not match its group")]
    Group,
}

/// Accept a sealed admission posted in the invite mailbox: it must be for `me`, signed by a
/// member it lists (this device among them), and its secret must open with `my_wrap` (and,
/// for epoch 0, give the group it names).
pub fn accept(
    keys: &InviteKeys,
    sealed: &[u8],
    me: &DeviceId,
    my_wrap: &super::wrap::WrapKey,
) -> Result<Joined, AcceptError> {
    use super::wrap::{Purpose, WrapContext, unwrap};
    let (admission, author): (Admission, DeviceId) =
        open(keys, Kind::Admission, sealed).map_err(AcceptError::Message)?;
    if admission.joiner != *me {
        return Err(AcceptError::NotForMe);
    }
    let listed = |d: &DeviceId| admission.members.iter().any(|m| m.device == *d);
    if !listed(&author) || !listed(me) {
        return Err(AcceptError::Roster);
    }
    let context = WrapContext {
        purpose: Purpose::Admission,
        group: admission.group,
        written_in: admission.epoch,
        opens: admission.epoch.number,
        author,
        recipient: *me,
    };
    let secret = unwrap(my_wrap, &context, &admission.wrapped).map_err(|_| AcceptError::Secret)?;
    if admission.epoch == EpochId::GENESIS {
        let derived = super::keys::GroupSecret::from_bytes(*secret)
            .epoch_keys(zerok_messages::Epoch(0))
            .mailbox_id();
        if derived != admission.group {
            return Err(AcceptError::Group);
        }
    }
    Ok(Joined {
        admission,
        admitted_by: author,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::wrap::{Purpose, WrapContext, WrapKey, unwrap, wrap};
    use zerok_messages::Epoch;

    fn request(joiner: &DeviceKey, wrap_key: &WrapKey) -> JoinRequest {
        JoinRequest {
            device: joiner.device_id(),
            wrap_key: wrap_key.public(),
            name: "laptop".to_owned(),
            at_ms: 5,
        }
    }

    #[test]
    fn a_request_and_an_admission_round_trip_and_the_secret_reaches_only_the_joiner() {
        let mut rng = Rng::seeded(4);
        let invite = InviteKeys::from_secret(&[9; 32]);
        let (joiner, joiner_wrap) = (
            DeviceKey::from_secret_bytes(&[2; 32]),
            WrapKey::from_device_secret(&[2; 32]),
        );
        let member = DeviceKey::from_secret_bytes(&[1; 32]);
        let ask = request(&joiner, &joiner_wrap);
        let sealed = seal(&invite, Kind::Request, &joiner, &ask, &mut rng).expect("seal");
        let (got, author): (JoinRequest, DeviceId) =
            open(&invite, Kind::Request, &sealed).expect("open");
        assert_eq!((got.clone(), author), (ask, joiner.device_id()));

        // The member wraps the epoch secret to the key in the request.
        let group = MailboxId([7; 32]);
        let epoch_secret = [0x42; 32];
        let context = WrapContext {
            purpose: Purpose::Admission,
            group,
            written_in: EpochId::GENESIS,
            opens: Epoch(0),
            author: member.device_id(),
            recipient: got.device,
        };
        let founder = Member {
            device: member.device_id(),
            wrap_key: [1; 32],
            name: "phone".to_owned(),
            added_by: member.device_id(),
            added_at_ms: 0,
            via: None,
            recovery: None,
        };
        let admission = Admission {
            joiner: got.device,
            group,
            group_name: "family".to_owned(),
            relays: vec!["relay".to_owned()],
            epoch: EpochId::GENESIS,
            wrapped: wrap(&got.wrap_key, &context, &epoch_secret, &mut rng).expect("wrap"),
            founder: founder.clone(),
            members: vec![founder],
            removed: Vec::new(),
        };
        let sealed = seal(&invite, Kind::Admission, &member, &admission, &mut rng).expect("seal");
        assert!(
            !sealed.windows(32).any(|w| w == epoch_secret),
            "no secret in clear"
        );
        let (got, author): (Admission, DeviceId) =
            open(&invite, Kind::Admission, &sealed).expect("open");
        assert_eq!(author, member.device_id());
        assert_eq!(
            *unwrap(&joiner_wrap, &context, &got.wrapped).expect("the joiner opens it"),
            epoch_secret
        );
        // Another device that saw the admission cannot open the secret.
        let thief = WrapKey::from_device_secret(&[3; 32]);
        assert!(unwrap(&thief, &context, &got.wrapped).is_err());
    }

    #[test]
    fn another_invite_a_wrong_kind_a_flipped_byte_or_a_forged_author_is_refused() {
        let mut rng = Rng::seeded(5);
        let invite = InviteKeys::from_secret(&[9; 32]);
        let joiner = DeviceKey::from_secret_bytes(&[2; 32]);
        let ask = request(&joiner, &WrapKey::from_device_secret(&[2; 32]));
        let sealed = seal(&invite, Kind::Request, &joiner, &ask, &mut rng).expect("seal");
        let other = InviteKeys::from_secret(&[8; 32]);
        assert_ne!(other.mailbox_id(), invite.mailbox_id());
        assert_eq!(
            open::<JoinRequest>(&other, Kind::Request, &sealed).map(|_| ()),
            Err(AdmitError::Open)
        );
        assert_eq!(
            open::<JoinRequest>(&invite, Kind::Admission, &sealed).map(|_| ()),
            Err(AdmitError::Malformed)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(
                open::<JoinRequest>(&invite, Kind::Request, &bad).is_err(),
                "byte {i}"
            );
        }
        assert!(open::<JoinRequest>(&invite, Kind::Request, &sealed[..20]).is_err());
        // A holder of the box key who re-seals a request under another device's name, with
        // its own signature, is caught by the signature.
        let signed = Signed {
            body: {
                let mut body = Vec::new();
                ciborium::into_writer(&ask, &mut body).expect("cbor");
                body
            },
            author: DeviceId([1; 32]),
            signature: joiner.sign(b"something else"),
        };
        let mut plaintext = Vec::new();
        ciborium::into_writer(&signed, &mut plaintext).expect("cbor");
        let nonce = [3u8; NONCE_BYTES];
        let cipher = XChaCha20Poly1305::new(&(*invite.box_key).into());
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plaintext,
                    aad: &aad(Kind::Request, &invite.mailbox_id()),
                },
            )
            .expect("seal");
        let mut forged = vec![FORMAT, Kind::Request as u8];
        forged.extend_from_slice(&nonce);
        forged.extend_from_slice(&ciphertext);
        assert!(matches!(
            open::<JoinRequest>(&invite, Kind::Request, &forged),
            Err(AdmitError::Signature)
        ));
    }

    #[test]
    fn the_invite_keys_hold_no_group_key_and_redact_their_debug() {
        let invite = InviteKeys::from_secret(&[9; 32]);
        let shown = format!("{invite:?}");
        assert!(!shown.contains("box_key"), "{shown}");
        assert_ne!(*invite.box_key, [9; 32]);
    }

    /// A group founded by device 1, with an invite (expiring at 1,000 ms) made known.
    fn group_with_invite() -> (super::super::roster::Roster, [u8; 32], MailboxId, MailboxId) {
        use super::super::roster::{Change, EpochId, Op, Roster, SecretBytes};
        let founder = DeviceKey::from_secret_bytes(&[1; 32]);
        let mut roster = Roster::new(Member {
            device: founder.device_id(),
            wrap_key: WrapKey::from_device_secret(&[1; 32]).public(),
            name: "phone".into(),
            added_by: founder.device_id(),
            added_at_ms: 0,
            via: None,
            recovery: None,
        });
        let group_secret = [0x33; 32];
        let group = crate::crypto::keys::GroupSecret::from_bytes(group_secret)
            .epoch_keys(Epoch(0))
            .mailbox_id();
        let invite_secret = [0x44; 32];
        let invite_id = InviteKeys::from_secret(&invite_secret).mailbox_id();
        roster
            .apply(Op {
                author: founder.device_id(),
                epoch: EpochId::GENESIS,
                at_ms: 1,
                change: Change::Invite {
                    id: invite_id,
                    secret: SecretBytes(invite_secret),
                    expires_at_ms: 1_000,
                },
            })
            .expect("kept");
        (roster, group_secret, group, invite_id)
    }

    #[test]
    fn a_member_admits_once_before_expiry_and_the_joiner_accepts() {
        let mut rng = Rng::seeded(6);
        let (mut roster, secret, group, invite_id) = group_with_invite();
        let founder = DeviceKey::from_secret_bytes(&[1; 32]);
        let keys = InviteKeys::from_secret(&[0x44; 32]);
        let (joiner, joiner_wrap) = (
            DeviceKey::from_secret_bytes(&[2; 32]),
            WrapKey::from_device_secret(&[2; 32]),
        );
        let asked = seal(
            &keys,
            Kind::Request,
            &joiner,
            &request(&joiner, &joiner_wrap),
            &mut rng,
        )
        .expect("seal");
        let relays = vec!["relay".to_owned()];
        let serve =
            |roster: &super::super::roster::Roster, sealed: &[u8], now_ms, rng: &mut Rng| {
                Admitter {
                    device: &founder,
                    group,
                    group_name: "family",
                    relays: &relays,
                    roster,
                    epoch_secret: &secret,
                }
                .serve(&invite_id, sealed, now_ms, rng)
            };
        // Expired by the member's clock: refused, whatever the joiner's clock said.
        assert_eq!(
            serve(&roster, &asked, 1_000, &mut rng).map(|_| ()),
            Err(Refusal::Expired)
        );
        let served = serve(&roster, &asked, 500, &mut rng).expect("admitted");
        let add = served.add.expect("an add");
        let joined =
            accept(&keys, &served.admission, &joiner.device_id(), &joiner_wrap).expect("accepted");
        assert_eq!(*joined.secret, secret);
        assert_eq!(
            (joined.admission.group, joined.admitted_by),
            (group, founder.device_id())
        );
        assert_eq!(joined.admission.members.len(), 2);
        // Once the add is in the roster the invite is used: the same device asking again
        // gets its admission again (no second add); any other device is refused.
        roster.apply(add).expect("kept");
        assert!(roster.is_member(&roster.head(), &joiner.device_id()));
        let again = serve(&roster, &asked, 2_000, &mut rng).expect("asked again");
        assert!(again.add.is_none());
        let other = DeviceKey::from_secret_bytes(&[3; 32]);
        let other_request = seal(
            &keys,
            Kind::Request,
            &other,
            &request(&other, &WrapKey::from_device_secret(&[3; 32])),
            &mut rng,
        )
        .expect("seal");
        assert_eq!(
            serve(&roster, &other_request, 500, &mut rng).map(|_| ()),
            Err(Refusal::Used)
        );
        // An admission for the joiner does not open for another device.
        assert_eq!(
            accept(
                &keys,
                &served.admission,
                &other.device_id(),
                &WrapKey::from_device_secret(&[3; 32])
            )
            .map(|_| ()),
            Err(AcceptError::NotForMe)
        );
    }

    #[test]
    fn unknown_invites_forged_requests_and_removed_members_are_refused() {
        let mut rng = Rng::seeded(7);
        let (roster, secret, group, invite_id) = group_with_invite();
        let founder = DeviceKey::from_secret_bytes(&[1; 32]);
        let keys = InviteKeys::from_secret(&[0x44; 32]);
        let joiner = DeviceKey::from_secret_bytes(&[2; 32]);
        let ask = request(&joiner, &WrapKey::from_device_secret(&[2; 32]));
        let relays = vec!["relay".to_owned()];
        let admitter = |device| Admitter {
            device,
            group,
            group_name: "family",
            relays: &relays,
            roster: &roster,
            epoch_secret: &secret,
        };
        let good = seal(&keys, Kind::Request, &joiner, &ask, &mut rng).expect("seal");
        assert_eq!(
            admitter(&founder)
                .serve(&MailboxId([9; 32]), &good, 5, &mut rng)
                .map(|_| ()),
            Err(Refusal::UnknownInvite)
        );
        // Signed by one device in the name of another.
        let impostor = DeviceKey::from_secret_bytes(&[5; 32]);
        let forged = seal(&keys, Kind::Request, &impostor, &ask, &mut rng).expect("seal");
        assert_eq!(
            admitter(&founder)
                .serve(&invite_id, &forged, 5, &mut rng)
                .map(|_| ()),
            Err(Refusal::BadRequest(AdmitError::Signature))
        );
        assert!(matches!(
            admitter(&founder).serve(&invite_id, &good[..good.len() - 1], 5, &mut rng),
            Err(Refusal::BadRequest(_))
        ));
        // A device that is not a member (say, removed) admits nobody.
        assert_eq!(
            admitter(&impostor)
                .serve(&invite_id, &good, 5, &mut rng)
                .map(|_| ()),
            Err(Refusal::NotMember)
        );
    }
}
