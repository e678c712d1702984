//! The pure core of a relay Session: protocol state and decisions, no I/O, no actors.
//!
//! It checks the handshake (`Hello` first, version 1), join proofs against this connection's
//! nonce, membership before push/pull/subscribe, frame and blob limits and blob ids, and turns
//! each client frame into one [`Action`] for the actor to carry out.

use crate::crypto::join::verify_join;
use std::collections::BTreeSet;
use zerok_messages::codec::DecodeError;
use zerok_messages::wire::{AdmissionText, ByeReason, PROTOCOL_VERSION};
use zerok_messages::{BlobId, Cursor, DeviceId, ErrorCode, Frame, Limits, MailboxId, ReqId};

/// Protocol errors a connection may make before it is closed: enough to survive a client
/// bug or a newer client probing, few enough that garbage floods end quickly.
pub const PROTOCOL_ERRORS_MAX: u32 = 16;
/// Mailboxes one connection may join: a device is in a handful of groups; the bound keeps a
/// client that mints keys from making one connection hold unbounded state.
pub const JOINED_MAX: usize = 256;

/// What the actor should do with one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this frame back.
    Reply(Frame),
    /// Send this frame, then close the connection.
    ReplyAndClose(Frame),
    /// Close without a word (the peer said `Bye`).
    Close,
    /// Nothing to do (e.g. a `Pong`).
    Nothing,
    /// The join proof checked out: if the Join creates the mailbox, admit it
    /// ([`crate::relay::admission`]; on refusal call [`SessionCore::on_join_refused`]), then answer
    /// `Joined` with the mailbox's latest cursor.
    Joined {
        /// Request id.
        req: ReqId,
        /// The mailbox joined.
        mailbox: MailboxId,
        /// The admission token the Join carried.
        admission: Option<AdmissionText>,
        /// False when this connection had joined the mailbox already (so it was admitted).
        is_new_on_connection: bool,
    },
    /// Store a push.
    Push {
        /// Request id.
        req: ReqId,
        /// Mailbox.
        mailbox: MailboxId,
        /// Verified `BLAKE3(ciphertext)`.
        blob_id: BlobId,
        /// The ciphertext.
        ciphertext: bytes::Bytes,
        /// Requested TTL.
        ttl_secs: Option<u32>,
    },
    /// Read a page.
    Pull {
        /// Request id.
        req: ReqId,
        /// Mailbox.
        mailbox: MailboxId,
        /// Exclusive lower bound.
        after: Cursor,
        /// Clamped item count.
        max_items: u32,
        /// Clamped byte count.
        max_bytes: u32,
    },
    /// Start live delivery.
    Subscribe {
        /// Request id.
        req: ReqId,
        /// Mailbox.
        mailbox: MailboxId,
        /// The client has everything up to here; newer stored items are announced with a
        /// `Notify` right after `Subscribed`, so it pulls them.
        after: Cursor,
    },
    /// Stop live delivery.
    Unsubscribe {
        /// Request id.
        req: ReqId,
        /// Mailbox.
        mailbox: MailboxId,
    },
    /// Ask the content service to take (or keep) a file for a joined mailbox.
    ContentOffer {
        /// Request id.
        req: ReqId,
        /// Mailbox.
        mailbox: MailboxId,
        /// BLAKE3 of the sealed file.
        hash: BlobId,
        /// Its size.
        size: u64,
        /// Requested TTL.
        ttl_secs: Option<u32>,
    },
    /// Ask the content service for a fetch of a joined mailbox's file.
    ContentOpen {
        /// Request id.
        req: ReqId,
        /// Mailbox.
        mailbox: MailboxId,
        /// BLAKE3 of the sealed file.
        hash: BlobId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Ready,
}

/// Per-connection protocol state.
#[derive(Debug)]
pub struct SessionCore {
    relay_id: DeviceId,
    peer: DeviceId,
    nonce: [u8; 32],
    limits: Limits,
    phase: Phase,
    joined: BTreeSet<MailboxId>,
    subscribed: BTreeSet<MailboxId>,
    protocol_errors: u32,
}

fn error(req: Option<ReqId>, code: ErrorCode, message: &str) -> Frame {
    Frame::error(req, code, message)
}

impl SessionCore {
    /// A session with `peer` on relay `relay_id`; `nonce` must be fresh and random.
    pub fn new(relay_id: DeviceId, peer: DeviceId, nonce: [u8; 32], limits: Limits) -> Self {
        Self {
            relay_id,
            peer,
            nonce,
            limits,
            phase: Phase::AwaitHello,
            joined: BTreeSet::new(),
            subscribed: BTreeSet::new(),
            protocol_errors: 0,
        }
    }

    /// Mailboxes with live delivery on, to unsubscribe when the session ends.
    pub fn subscribed(&self) -> &BTreeSet<MailboxId> {
        &self.subscribed
    }

    /// Record that a subscription took effect (or ended).
    pub fn set_subscribed(&mut self, mailbox: MailboxId, is_on: bool) {
        if is_on {
            self.subscribed.insert(mailbox);
        } else {
            self.subscribed.remove(&mailbox);
        }
    }

    /// The Join of `mailbox` was refused admission: the connection is not a member.
    pub fn on_join_refused(&mut self, mailbox: &MailboxId) {
        self.joined.remove(mailbox);
    }

    /// A frame body that did not decode.
    pub fn on_decode_error(&mut self, err: &DecodeError) -> Action {
        let (code, message) = match err {
            DecodeError::TooLarge { .. } => (ErrorCode::TooLarge, "frame too large"),
            DecodeError::Unsupported { .. } => (ErrorCode::Unsupported, "unsupported frame"),
            DecodeError::Malformed { .. } => (ErrorCode::BadRequest, "malformed frame"),
            _ => (ErrorCode::BadRequest, "undecodable frame"),
        };
        self.protocol_error(err.req(), code, message)
    }

    fn protocol_error(&mut self, req: Option<ReqId>, code: ErrorCode, message: &str) -> Action {
        self.protocol_errors += 1;
        if self.phase == Phase::AwaitHello || self.protocol_errors > PROTOCOL_ERRORS_MAX {
            Action::ReplyAndClose(error(req, code, message))
        } else {
            Action::Reply(error(req, code, message))
        }
    }

    fn require_joined(&mut self, req: ReqId, mailbox: &MailboxId) -> Option<Action> {
        (!self.joined.contains(mailbox)).then(|| {
            Action::Reply(error(
                Some(req),
                ErrorCode::Unauthorized,
                "join the mailbox with a valid proof first",
            ))
        })
    }

    /// Decide what to do with one decoded frame.
    pub fn on_frame(&mut self, frame: Frame) -> Action {
        if self.phase == Phase::AwaitHello {
            return match frame {
                Frame::Hello { versions, .. } if versions.contains(&PROTOCOL_VERSION) => {
                    self.phase = Phase::Ready;
                    Action::Reply(Frame::Welcome {
                        version: PROTOCOL_VERSION,
                        relay_id: self.relay_id,
                        nonce: self.nonce,
                        limits: self.limits.clone(),
                    })
                }
                Frame::Hello { .. } => Action::ReplyAndClose(error(
                    None,
                    ErrorCode::Unsupported,
                    "no common protocol version; this relay speaks version 1",
                )),
                other => {
                    self.protocol_error(other.req(), ErrorCode::BadRequest, "send hello first")
                }
            };
        }
        match frame {
            Frame::Join {
                req,
                mailbox_key,
                proof,
                admission,
            } => {
                if verify_join(
                    &mailbox_key,
                    &proof,
                    &self.relay_id,
                    &self.peer,
                    &self.nonce,
                ) {
                    let mailbox = mailbox_key.mailbox_id();
                    if self.joined.len() >= JOINED_MAX && !self.joined.contains(&mailbox) {
                        return Action::Reply(error(
                            Some(req),
                            ErrorCode::BadRequest,
                            "too many mailboxes joined on one connection",
                        ));
                    }
                    let is_new_on_connection = self.joined.insert(mailbox);
                    Action::Joined {
                        req,
                        mailbox,
                        admission,
                        is_new_on_connection,
                    }
                } else {
                    Action::Reply(error(
                        Some(req),
                        ErrorCode::Unauthorized,
                        "invalid join proof",
                    ))
                }
            }
            Frame::Push {
                req,
                mailbox,
                blob_id,
                ciphertext,
                ttl_secs,
            } => {
                if let Some(refused) = self.require_joined(req, &mailbox) {
                    return refused;
                }
                if ciphertext.len() > self.limits.blob_bytes_max as usize {
                    return Action::Reply(error(Some(req), ErrorCode::TooLarge, "blob too large"));
                }
                if BlobId::of_ciphertext(&ciphertext) != blob_id {
                    return Action::Reply(error(
                        Some(req),
                        ErrorCode::BadRequest,
                        "blob_id is not BLAKE3 of the ciphertext",
                    ));
                }
                Action::Push {
                    req,
                    mailbox,
                    blob_id,
                    ciphertext,
                    ttl_secs,
                }
            }
            Frame::Pull {
                req,
                mailbox,
                after,
                max_items,
                max_bytes,
            } => {
                if let Some(refused) = self.require_joined(req, &mailbox) {
                    return refused;
                }
                Action::Pull {
                    req,
                    mailbox,
                    after,
                    max_items: max_items.clamp(1, self.limits.pull_items_max),
                    max_bytes: max_bytes.clamp(1, self.limits.pull_bytes_max.max(1)),
                }
            }
            Frame::Subscribe {
                req,
                mailbox,
                after,
            } => {
                if let Some(refused) = self.require_joined(req, &mailbox) {
                    return refused;
                }
                Action::Subscribe {
                    req,
                    mailbox,
                    after,
                }
            }
            Frame::Unsubscribe { req, mailbox } => Action::Unsubscribe { req, mailbox },
            Frame::ContentOffer {
                req,
                mailbox,
                hash,
                size,
                ttl_secs,
            } => {
                if let Some(refused) = self.require_joined(req, &mailbox) {
                    return refused;
                }
                Action::ContentOffer {
                    req,
                    mailbox,
                    hash,
                    size,
                    ttl_secs,
                }
            }
            Frame::ContentOpen { req, mailbox, hash } => {
                if let Some(refused) = self.require_joined(req, &mailbox) {
                    return refused;
                }
                Action::ContentOpen { req, mailbox, hash }
            }
            Frame::Ping { req } => Action::Reply(Frame::Pong { req }),
            Frame::Pong { .. } => Action::Nothing,
            Frame::Bye { .. } => Action::Close,
            Frame::Hello { .. } => {
                self.protocol_error(None, ErrorCode::BadRequest, "hello was already received")
            }
            other => self.protocol_error(other.req(), ErrorCode::BadRequest, "not a client frame"),
        }
    }

    /// The `Bye` to send when the relay closes the session.
    pub fn bye(reason: ByeReason) -> Frame {
        Frame::Bye { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::join::sign_join;
    use crate::crypto::keys::GroupSecret;
    use zerok_messages::{Epoch, Signature64};

    const RELAY: DeviceId = DeviceId([1; 32]);
    const PEER: DeviceId = DeviceId([2; 32]);
    const NONCE: [u8; 32] = [3; 32];

    fn limits() -> Limits {
        Limits {
            frame_bytes_max: 1 << 20,
            blob_bytes_max: 1000,
            mailbox_quota_bytes: 1 << 20,
            ttl_default_secs: 60,
            ttl_max_secs: 600,
            inflight_max: 8,
            pull_items_max: 100,
            pull_bytes_max: 512 * 1024,
        }
    }

    fn ready() -> SessionCore {
        let mut core = SessionCore::new(RELAY, PEER, NONCE, limits());
        let welcome = core.on_frame(Frame::Hello {
            versions: vec![1],
            client_agent: "test".into(),
        });
        assert!(matches!(
            welcome,
            Action::Reply(Frame::Welcome { version: 1, .. })
        ));
        core
    }

    fn push(mailbox: MailboxId, ciphertext: &[u8]) -> Frame {
        Frame::Push {
            req: ReqId(9),
            mailbox,
            blob_id: BlobId::of_ciphertext(ciphertext),
            ciphertext: bytes::Bytes::copy_from_slice(ciphertext),
            ttl_secs: None,
        }
    }

    fn is_error(action: &Action, code: ErrorCode) -> bool {
        matches!(action, Action::Reply(Frame::Error { code: c, .. }) | Action::ReplyAndClose(Frame::Error { code: c, .. }) if *c == code)
    }

    #[test]
    fn hello_must_come_first_with_a_common_version() {
        let mut core = SessionCore::new(RELAY, PEER, NONCE, limits());
        assert!(matches!(
            core.on_frame(Frame::Ping { req: ReqId(1) }),
            Action::ReplyAndClose(_)
        ));
        let mut core = SessionCore::new(RELAY, PEER, NONCE, limits());
        let action = core.on_frame(Frame::Hello {
            versions: vec![2, 3],
            client_agent: String::new(),
        });
        assert!(
            matches!(&action, Action::ReplyAndClose(_))
                && is_error(&action, ErrorCode::Unsupported)
        );
    }

    #[test]
    fn nothing_works_on_a_mailbox_without_a_valid_join() {
        let keys = GroupSecret::from_bytes([7; 32]).epoch_keys(Epoch(0));
        let mailbox = keys.mailbox_id();
        let mut core = ready();
        assert!(is_error(
            &core.on_frame(push(mailbox, b"x")),
            ErrorCode::Unauthorized
        ));
        let pull = Frame::Pull {
            req: ReqId(2),
            mailbox,
            after: Cursor(0),
            max_items: 10,
            max_bytes: 10,
        };
        assert!(is_error(
            &core.on_frame(pull.clone()),
            ErrorCode::Unauthorized
        ));
        let subscribe = Frame::Subscribe {
            req: ReqId(3),
            mailbox,
            after: Cursor(0),
        };
        assert!(is_error(
            &core.on_frame(subscribe.clone()),
            ErrorCode::Unauthorized
        ));
        // A proof for another nonce (replayed from another connection) is refused.
        let replayed = sign_join(&keys, &RELAY, &PEER, &[4; 32]);
        let join = |proof: Signature64| Frame::Join {
            req: ReqId(4),
            mailbox_key: keys.mailbox_key(),
            proof,
            admission: None,
        };
        assert!(is_error(
            &core.on_frame(join(replayed)),
            ErrorCode::Unauthorized
        ));
        // A proof made for another device is refused.
        let stolen = sign_join(&keys, &RELAY, &DeviceId([5; 32]), &NONCE);
        assert!(is_error(
            &core.on_frame(join(stolen)),
            ErrorCode::Unauthorized
        ));
        assert!(is_error(
            &core.on_frame(push(mailbox, b"x")),
            ErrorCode::Unauthorized
        ));
        // The real proof works, and only for its own mailbox.
        let proof = sign_join(&keys, &RELAY, &PEER, &NONCE);
        assert_eq!(
            core.on_frame(join(proof)),
            Action::Joined {
                req: ReqId(4),
                mailbox,
                admission: None,
                is_new_on_connection: true,
            }
        );
        assert!(matches!(
            core.on_frame(push(mailbox, b"x")),
            Action::Push { .. }
        ));
        assert!(matches!(
            core.on_frame(pull),
            Action::Pull { max_items: 10, .. }
        ));
        assert!(matches!(core.on_frame(subscribe), Action::Subscribe { .. }));
        assert!(is_error(
            &core.on_frame(push(MailboxId([8; 32]), b"x")),
            ErrorCode::Unauthorized
        ));
    }

    #[test]
    fn limits_and_blob_ids_are_checked() {
        let keys = GroupSecret::from_bytes([7; 32]).epoch_keys(Epoch(0));
        let mut core = ready();
        let proof = sign_join(&keys, &RELAY, &PEER, &NONCE);
        core.on_frame(Frame::Join {
            req: ReqId(1),
            mailbox_key: keys.mailbox_key(),
            proof,
            admission: None,
        });
        let mailbox = keys.mailbox_id();
        assert!(is_error(
            &core.on_frame(push(mailbox, &[0; 1001])),
            ErrorCode::TooLarge
        ));
        let mut forged = push(mailbox, b"abc");
        if let Frame::Push { blob_id, .. } = &mut forged {
            *blob_id = BlobId([0; 32]);
        }
        assert!(is_error(&core.on_frame(forged), ErrorCode::BadRequest));
        let pull = Frame::Pull {
            req: ReqId(2),
            mailbox,
            after: Cursor(0),
            max_items: 1_000_000,
            max_bytes: 0,
        };
        assert!(matches!(
            core.on_frame(pull),
            Action::Pull {
                max_items: 100,
                max_bytes: 1,
                ..
            }
        ));
    }

    #[test]
    fn repeated_protocol_errors_close_the_connection() {
        let mut core = ready();
        for _ in 0..PROTOCOL_ERRORS_MAX {
            assert!(matches!(
                core.on_frame(Frame::Pong { req: ReqId(0) }),
                Action::Nothing
            ));
            assert!(matches!(
                core.on_frame(Frame::Notify {
                    mailbox: MailboxId([0; 32]),
                    latest: Cursor(0)
                }),
                Action::Reply(_)
            ));
        }
        assert!(matches!(
            core.on_frame(Frame::Unsubscribed { req: ReqId(0) }),
            Action::ReplyAndClose(_)
        ));
    }

    #[test]
    fn joins_are_bounded_per_connection() {
        let mut core = ready();
        for n in 0..=JOINED_MAX as u32 {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&n.to_be_bytes());
            let keys = GroupSecret::from_bytes(secret).epoch_keys(Epoch(0));
            let proof = sign_join(&keys, &RELAY, &PEER, &NONCE);
            let action = core.on_frame(Frame::Join {
                req: ReqId(u64::from(n)),
                mailbox_key: keys.mailbox_key(),
                proof,
                admission: None,
            });
            if (n as usize) < JOINED_MAX {
                assert!(matches!(action, Action::Joined { .. }), "join {n}");
            } else {
                assert!(
                    matches!(
                        action,
                        Action::Reply(Frame::Error {
                            code: ErrorCode::BadRequest,
                            ..
                        })
                    ),
                    "join {n} over the bound"
                );
            }
        }
    }

    #[test]
    fn a_join_carries_its_token_and_a_refused_join_is_no_membership() {
        let keys = GroupSecret::from_bytes([7; 32]).epoch_keys(Epoch(0));
        let mailbox = keys.mailbox_id();
        let mut core = ready();
        let token = AdmissionText("ZKA1TOKEN".into());
        let join = |admission: Option<AdmissionText>| Frame::Join {
            req: ReqId(1),
            mailbox_key: keys.mailbox_key(),
            proof: sign_join(&keys, &RELAY, &PEER, &NONCE),
            admission,
        };
        assert_eq!(
            core.on_frame(join(Some(token.clone()))),
            Action::Joined {
                req: ReqId(1),
                mailbox,
                admission: Some(token),
                is_new_on_connection: true,
            }
        );
        core.on_join_refused(&mailbox);
        assert!(is_error(
            &core.on_frame(push(mailbox, b"x")),
            ErrorCode::Unauthorized
        ));
        // Admitted this time; a second Join on the same connection is not new.
        assert!(matches!(
            core.on_frame(join(None)),
            Action::Joined {
                is_new_on_connection: true,
                ..
            }
        ));
        assert!(matches!(
            core.on_frame(join(None)),
            Action::Joined {
                is_new_on_connection: false,
                ..
            }
        ));
        assert!(matches!(
            core.on_frame(push(mailbox, b"x")),
            Action::Push { .. }
        ));
    }
}
