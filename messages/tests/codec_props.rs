//! Property tests of the wire codec: every frame round-trips; hostile bytes never panic the
//! decoder; oversize frames are refused before they are buffered.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use zerok_messages::codec::{self, DecodeError, LENGTH_PREFIX_BYTES};
use zerok_messages::wire::{ByeReason, FRAME_BYTES_MAX, FRAME_TAGS};
use zerok_messages::*;

fn id32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn bytes_up_to(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn item() -> impl Strategy<Value = Item> {
    (any::<u64>(), id32(), bytes_up_to(2048), any::<u64>()).prop_map(
        |(cursor, blob, ciphertext, stored_at_ms)| Item {
            cursor: Cursor(cursor),
            blob_id: BlobId(blob),
            ciphertext,
            stored_at_ms,
        },
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::Unsupported),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::NotJoined),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::QuotaExceeded),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Internal),
        Just(ErrorCode::NotFound),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(a, b, c, d, e, f, g)| Limits {
            frame_bytes_max: a,
            blob_bytes_max: b,
            mailbox_quota_bytes: c,
            ttl_default_secs: d,
            ttl_max_secs: e,
            inflight_max: f,
            pull_items_max: g,
            pull_bytes_max: 512 * 1024,
        })
}

/// One strategy per frame variant: adding a variant without adding it here fails
/// `every_tag_is_covered`.
fn frame() -> impl Strategy<Value = Frame> {
    let req = any::<u64>().prop_map(ReqId);
    prop_oneof![
        (prop::collection::vec(any::<u16>(), 0..4), ".{0,40}").prop_map(
            |(versions, client_agent)| Frame::Hello {
                versions,
                client_agent
            }
        ),
        (any::<u16>(), id32(), id32(), limits()).prop_map(|(version, relay, nonce, limits)| {
            Frame::Welcome {
                version,
                relay_id: DeviceId(relay),
                nonce,
                limits,
            }
        }),
        (
            req.clone(),
            id32(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            proptest::option::of("[A-Z2-7]{0,300}")
        )
            .prop_map(|(req, key, a, b, admission)| {
                let mut proof = [0; 64];
                proof[..32].copy_from_slice(&a);
                proof[32..].copy_from_slice(&b);
                Frame::Join {
                    req,
                    mailbox_key: MailboxKey(key),
                    proof: Signature64(proof),
                    admission: admission.map(zerok_messages::wire::AdmissionText),
                }
            }),
        (req.clone(), id32(), any::<u64>()).prop_map(|(req, mailbox, latest)| Frame::Joined {
            req,
            mailbox: MailboxId(mailbox),
            latest: Cursor(latest)
        }),
        (
            req.clone(),
            id32(),
            id32(),
            bytes_up_to(4096),
            any::<Option<u32>>()
        )
            .prop_map(|(req, mailbox, blob, ciphertext, ttl_secs)| Frame::Push {
                req,
                mailbox: MailboxId(mailbox),
                blob_id: BlobId(blob),
                ciphertext,
                ttl_secs
            }),
        (req.clone(), any::<u64>(), any::<bool>()).prop_map(|(req, cursor, duplicate)| {
            Frame::PushAck {
                req,
                cursor: Cursor(cursor),
                duplicate,
            }
        }),
        (
            req.clone(),
            id32(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(req, mailbox, after, max_items, max_bytes)| Frame::Pull {
                req,
                mailbox: MailboxId(mailbox),
                after: Cursor(after),
                max_items,
                max_bytes
            }),
        (
            req.clone(),
            prop::collection::vec(item(), 0..4),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(req, items, next, has_more)| Frame::PullPage {
                req,
                items,
                next: Cursor(next),
                has_more
            }),
        (req.clone(), id32(), any::<u64>()).prop_map(|(req, mailbox, after)| Frame::Subscribe {
            req,
            mailbox: MailboxId(mailbox),
            after: Cursor(after)
        }),
        (req.clone(), id32(), any::<u64>()).prop_map(|(req, mailbox, latest)| Frame::Subscribed {
            req,
            mailbox: MailboxId(mailbox),
            latest: Cursor(latest)
        }),
        (req.clone(), id32()).prop_map(|(req, mailbox)| Frame::Unsubscribe {
            req,
            mailbox: MailboxId(mailbox)
        }),
        req.clone().prop_map(|req| Frame::Unsubscribed { req }),
        (id32(), item()).prop_map(|(mailbox, item)| Frame::Deliver {
            mailbox: MailboxId(mailbox),
            item
        }),
        (id32(), any::<u64>()).prop_map(|(mailbox, latest)| Frame::Notify {
            mailbox: MailboxId(mailbox),
            latest: Cursor(latest)
        }),
        req.clone().prop_map(|req| Frame::Ping { req }),
        req.clone().prop_map(|req| Frame::Pong { req }),
        (
            any::<Option<u64>>(),
            error_code(),
            ".{0,60}",
            any::<Option<u64>>()
        )
            .prop_map(|(req, code, message, retry_after_ms)| Frame::Error {
                req: req.map(ReqId),
                code,
                message,
                retry_after_ms
            }),
        prop_oneof![
            Just(ByeReason::Shutdown),
            Just(ByeReason::Idle),
            Just(ByeReason::ClientDone),
            Just(ByeReason::ProtocolViolation)
        ]
        .prop_map(|reason| Frame::Bye { reason }),
        (
            req.clone(),
            id32(),
            id32(),
            any::<u64>(),
            any::<Option<u32>>()
        )
            .prop_map(|(req, mailbox, hash, size, ttl_secs)| Frame::ContentOffer {
                req,
                mailbox: MailboxId(mailbox),
                hash: BlobId(hash),
                size,
                ttl_secs
            }),
        (req.clone(), id32(), id32()).prop_map(|(req, mailbox, hash)| Frame::ContentOpen {
            req,
            mailbox: MailboxId(mailbox),
            hash: BlobId(hash)
        }),
        (req.clone(), id32(), any::<u64>(), any::<u64>()).prop_map(|(req, hash, size, have)| {
            Frame::ContentGrant {
                req,
                hash: BlobId(hash),
                size,
                have,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let body = codec::encode(&frame).unwrap();
        prop_assert_eq!(codec::decode(&body).unwrap(), frame.clone());
        let prefixed = codec::encode_prefixed(&frame).unwrap();
        let len = codec::body_len(prefixed[..4].try_into().unwrap()).unwrap();
        prop_assert_eq!(len, body.len());
        prop_assert_eq!(&prefixed[LENGTH_PREFIX_BYTES..], &body[..]);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(frame in frame(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let original = codec::encode(&frame).unwrap();
        let mut body = original.clone();
        for (index, value) in flips {
            let at = index.index(body.len());
            body[at] = value;
        }
        // Mutated bytes decode to an error or to some frame, never a panic. (A mutated frame
        // may decode to another frame whose encoding has another length: an unknown bye
        // reason, a shorter string, ...; nothing more is promised for it.)
        let _ = codec::decode(&body);
        let cut_at = cut.index(body.len() + 1);
        let _ = codec::decode(&body[..cut_at]);
        // A valid frame cut short never decodes.
        if cut_at < original.len() {
            prop_assert!(codec::decode(&original[..cut_at]).is_err());
        }
    }

    #[test]
    fn oversize_prefixes_are_refused(len in (FRAME_BYTES_MAX as u32 + 1)..=u32::MAX) {
        let refused = matches!(codec::body_len(len.to_be_bytes()), Err(DecodeError::TooLarge { .. }));
        prop_assert!(refused);
    }
}

#[test]
fn every_tag_is_covered() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        let frame = frame().new_tree(&mut runner).unwrap().current();
        seen.insert(frame.tag());
    }
    let all: std::collections::BTreeSet<_> = FRAME_TAGS.iter().copied().collect();
    assert_eq!(seen, all);
}

#[test]
fn limit_sized_push_fits_and_one_byte_more_blob_does_not_break_the_frame_limit() {
    let push = |len: usize| Frame::Push {
        req: ReqId(u64::MAX),
        mailbox: MailboxId([1; 32]),
        blob_id: BlobId([2; 32]),
        ciphertext: Bytes::from(vec![0xff; len]),
        ttl_secs: Some(u32::MAX),
    };
    let body = codec::encode(&push(wire::BLOB_BYTES_MAX)).unwrap();
    assert!(body.len() <= FRAME_BYTES_MAX);
    // A ciphertext that by itself exceeds the frame limit cannot be encoded.
    assert!(matches!(
        codec::encode(&push(FRAME_BYTES_MAX)),
        Err(codec::EncodeError::TooLarge { .. })
    ));
    // And a body over the limit is refused by the decoder without parsing.
    let big = vec![0u8; FRAME_BYTES_MAX + 1];
    assert!(matches!(
        codec::decode(&big),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn ciphertext_is_a_cbor_byte_string() {
    let ciphertext = Bytes::from(vec![0xAB; 1000]);
    let frame = Frame::Push {
        req: ReqId(1),
        mailbox: MailboxId([0; 32]),
        blob_id: BlobId([0; 32]),
        ciphertext,
        ttl_secs: None,
    };
    let body = codec::encode(&frame).unwrap();
    // Bytes as integers would cost ~2 bytes each; as a byte string the frame is ~1.1 KB.
    assert!(body.len() < 1000 + 150, "frame is {} bytes", body.len());
    // The byte string header for 1000 bytes: major type 2, 2-byte length.
    let needle = [0x59, 0x03, 0xE8];
    assert!(body.windows(3).any(|w| w == needle));
}

fn cbor(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

#[test]
fn unknown_tag_is_unsupported_with_req() {
    use ciborium::Value;
    let body = cbor(&Value::Map(vec![(
        Value::Text("teleport".into()),
        Value::Map(vec![(Value::Text("req".into()), Value::Integer(42.into()))]),
    )]));
    assert_eq!(
        codec::decode(&body),
        Err(DecodeError::Unsupported {
            tag: "teleport".into(),
            req: Some(ReqId(42))
        })
    );
}

#[test]
fn known_tag_with_bad_fields_is_malformed_with_req() {
    use ciborium::Value;
    let body = cbor(&Value::Map(vec![(
        Value::Text("push".into()),
        Value::Map(vec![(Value::Text("req".into()), Value::Integer(7.into()))]),
    )]));
    match codec::decode(&body) {
        Err(DecodeError::Malformed { req, .. }) => assert_eq!(req, Some(ReqId(7))),
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn unknown_error_code_decodes_as_unknown() {
    use ciborium::Value;
    let body = cbor(&Value::Map(vec![(
        Value::Text("error".into()),
        Value::Map(vec![
            (
                Value::Text("code".into()),
                Value::Text("disk_on_fire".into()),
            ),
            (Value::Text("message".into()), Value::Text("hot".into())),
        ]),
    )]));
    match codec::decode(&body).unwrap() {
        Frame::Error { code, req, .. } => {
            assert_eq!(code, ErrorCode::Unknown);
            assert_eq!(req, None);
        }
        other => panic!("expected error frame, got {other:?}"),
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut body = codec::encode(&Frame::Ping { req: ReqId(1) }).unwrap();
    body.push(0);
    assert!(matches!(
        codec::decode(&body),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
    // 100k nested arrays: ciborium's recursion limit turns this into an error.
    let body = vec![0x81u8; 100_000];
    assert!(codec::decode(&body).is_err());
}

#[test]
fn forged_inner_length_does_not_allocate_it() {
    // A push whose ciphertext claims 2^63 bytes but the body ends: error, no allocation.
    use ciborium::Value;
    let mut body = cbor(&Value::Map(vec![(
        Value::Text("push".into()),
        Value::Map(vec![(
            Value::Text("ciphertext".into()),
            Value::Bytes(vec![]),
        )]),
    )]));
    // Replace the empty byte string header (0x40) with an 8-byte length of 2^63.
    let at = body.iter().rposition(|b| *b == 0x40).unwrap();
    body.splice(at..=at, [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert!(codec::decode(&body).is_err());
}
