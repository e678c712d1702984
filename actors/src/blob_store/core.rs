//! The BlobStore's pure core: limits, the group-commit plan, and the record format of the
//! segment log.
//!
//! The store is an append-only log of segment files (see [`super::log`]); each segment holds
//! a header and then records, each framed as
//!
//! | field | bytes |
//! |---|---|
//! | body length (LE) | 4 |
//! | CRC-32 of the body (LE) | 4 |
//! | body | length |
//!
//! and each body is one of
//!
//! | kind | body |
//! |---|---|
//! | `1` item | mailbox ‖ cursor ‖ blob_id ‖ stored_at_ms ‖ expires_at_ms ‖ ciphertext |
//! | `2` mark | mailbox ‖ latest cursor (keeps a mailbox's cursor when the segment that held its newest item is deleted) |
//!
//! Numbers are little-endian. A record is whole or absent: a torn tail (a crash in the middle
//! of a write that was never acknowledged) fails its length or CRC and is cut off when the
//! store opens.

use std::collections::HashMap;
use zerok_messages::relay::{AppendRequest, StoreError, StoreOutcome};
use zerok_messages::{BlobId, Cursor, MailboxId};

/// The store's format, written to the `FORMAT` file of its directory.
pub const FORMAT_VERSION: &str = "zerok-store-3";
/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"zkseg03\n";
/// Bytes of a record's frame before its body.
pub const FRAME_HEADER: usize = 8;
/// Body kind of an item.
pub const KIND_ITEM: u8 = 1;
/// Body kind of a mark.
pub const KIND_MARK: u8 = 2;
/// Bytes of an item body before its ciphertext.
pub const ITEM_HEADER: usize = 1 + 32 + 8 + 32 + 8 + 8;
/// Bytes of a mark body.
pub const MARK_BODY: usize = 1 + 32 + 8;
/// Largest body a record may declare (anything larger is corruption).
pub const BODY_MAX: usize = ITEM_HEADER + 16 * 1024 * 1024;

/// Limits the store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest ciphertext of one item.
    pub blob_bytes_max: usize,
    /// Ciphertext bytes one mailbox may hold.
    pub mailbox_quota_bytes: u64,
    /// TTL of a push that names none.
    pub ttl_default_secs: u32,
    /// Largest TTL; larger requests are capped to it.
    pub ttl_max_secs: u32,
    /// Most pushes in one group commit.
    pub commit_max_items: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            blob_bytes_max: zerok_messages::wire::BLOB_BYTES_MAX,
            mailbox_quota_bytes: 100 * 1024 * 1024,
            ttl_default_secs: 7 * 24 * 3600,
            ttl_max_secs: 30 * 24 * 3600,
            commit_max_items: 4096,
        }
    }
}

impl StoreLimits {
    /// The TTL a push gets: its own, or the default, capped to the maximum.
    pub fn ttl_secs(&self, requested: Option<u32>) -> u32 {
        requested
            .unwrap_or(self.ttl_default_secs)
            .min(self.ttl_max_secs)
    }
}

/// Per-mailbox totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxMeta {
    /// Newest cursor ever assigned (0 = none).
    pub latest: u64,
    /// Ciphertext bytes stored now.
    pub bytes: u64,
    /// Items stored now.
    pub count: u64,
}

/// One item a commit adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewItem {
    /// Index of its request in the batch.
    pub request: usize,
    /// Its cursor.
    pub cursor: u64,
    /// When it expires.
    pub expires_at_ms: u64,
}

/// What one group commit writes and answers.
#[derive(Debug, Default)]
pub struct CommitPlan {
    /// One outcome per request, in request order (valid once the batch is durable).
    pub outcomes: Vec<StoreOutcome>,
    /// Items to write, in request order.
    pub new: Vec<NewItem>,
    /// Mailbox metas after the batch.
    pub metas: HashMap<MailboxId, MailboxMeta>,
    /// New ciphertext bytes written.
    pub new_bytes: u64,
    /// Mailboxes that held nothing before and hold items after.
    pub new_mailboxes: u64,
    /// When the batch is stored.
    pub now_ms: u64,
}

/// Plan a group commit: assign cursors, answer duplicates with their original cursor (also
/// within the batch), and refuse what is too large or over quota. `meta` reads a mailbox's
/// current meta; `existing` looks a blob up in the idempotency index and answers its cursor
/// and `stored_at_ms`.
pub fn plan_commit(
    requests: &[AppendRequest],
    now_ms: u64,
    limits: &StoreLimits,
    mut meta: impl FnMut(&MailboxId) -> MailboxMeta,
    mut existing: impl FnMut(&MailboxId, &BlobId) -> Option<(u64, u64)>,
) -> CommitPlan {
    let mut plan = CommitPlan {
        now_ms,
        ..CommitPlan::default()
    };
    let mut in_batch: HashMap<(MailboxId, BlobId), u64> = HashMap::new();
    for (index, request) in requests.iter().enumerate() {
        let outcome = plan_one(
            index,
            request,
            limits,
            &mut plan,
            &mut in_batch,
            &mut meta,
            &mut existing,
        );
        plan.outcomes.push(outcome);
    }
    plan
}

fn plan_one(
    index: usize,
    request: &AppendRequest,
    limits: &StoreLimits,
    plan: &mut CommitPlan,
    in_batch: &mut HashMap<(MailboxId, BlobId), u64>,
    meta: &mut impl FnMut(&MailboxId) -> MailboxMeta,
    existing: &mut impl FnMut(&MailboxId, &BlobId) -> Option<(u64, u64)>,
) -> StoreOutcome {
    let mailbox = request.mailbox;
    let size = request.ciphertext.len();
    if size > limits.blob_bytes_max {
        return StoreOutcome::Rejected(StoreError::TooLarge {
            bytes: size,
            limit: limits.blob_bytes_max,
        });
    }
    let seen = match in_batch.get(&(mailbox, request.blob_id)) {
        Some(cursor) => Some((*cursor, plan.now_ms)),
        None => existing(&mailbox, &request.blob_id),
    };
    if let Some((cursor, stored_at_ms)) = seen {
        return StoreOutcome::Stored {
            cursor: Cursor(cursor),
            duplicate: true,
            stored_at_ms,
        };
    }
    let current = match plan.metas.get(&mailbox) {
        Some(current) => *current,
        None => meta(&mailbox),
    };
    if current.bytes.saturating_add(size as u64) > limits.mailbox_quota_bytes {
        return StoreOutcome::Rejected(StoreError::QuotaExceeded {
            quota_bytes: limits.mailbox_quota_bytes,
        });
    }
    let cursor = current.latest + 1;
    let ttl_ms = u64::from(limits.ttl_secs(request.ttl_secs)) * 1000;
    plan.new.push(NewItem {
        request: index,
        cursor,
        expires_at_ms: plan.now_ms.saturating_add(ttl_ms),
    });
    if current.count == 0 {
        plan.new_mailboxes += 1;
    }
    plan.metas.insert(
        mailbox,
        MailboxMeta {
            latest: cursor,
            bytes: current.bytes + size as u64,
            count: current.count + 1,
        },
    );
    in_batch.insert((mailbox, request.blob_id), cursor);
    plan.new_bytes += size as u64;
    StoreOutcome::Stored {
        cursor: Cursor(cursor),
        duplicate: false,
        stored_at_ms: plan.now_ms,
    }
}

/// A stored item as its record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord<'a> {
    /// Its mailbox.
    pub mailbox: MailboxId,
    /// Its cursor.
    pub cursor: u64,
    /// `BLAKE3(ciphertext)`.
    pub blob_id: BlobId,
    /// When it became durable.
    pub stored_at_ms: u64,
    /// When it expires.
    pub expires_at_ms: u64,
    /// The sealed record.
    pub ciphertext: &'a [u8],
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// An item.
    Item(ItemRecord<'a>),
    /// A mailbox's latest cursor.
    Mark {
        /// The mailbox.
        mailbox: MailboxId,
        /// Its newest cursor ever assigned.
        latest: u64,
    },
}

/// Append the framed record of `item` to `out`; returns the frame's length.
pub fn encode_item(out: &mut Vec<u8>, item: &ItemRecord<'_>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.push(KIND_ITEM);
    out.extend_from_slice(item.mailbox.as_bytes());
    out.extend_from_slice(&item.cursor.to_le_bytes());
    out.extend_from_slice(item.blob_id.as_bytes());
    out.extend_from_slice(&item.stored_at_ms.to_le_bytes());
    out.extend_from_slice(&item.expires_at_ms.to_le_bytes());
    out.extend_from_slice(item.ciphertext);
    seal_frame(out, start)
}

/// Append the framed mark record of `mailbox` to `out`; returns the frame's length.
pub fn encode_mark(out: &mut Vec<u8>, mailbox: &MailboxId, latest: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.push(KIND_MARK);
    out.extend_from_slice(mailbox.as_bytes());
    out.extend_from_slice(&latest.to_le_bytes());
    seal_frame(out, start)
}

/// Fill in the length and CRC of the frame starting at `start`.
fn seal_frame(out: &mut [u8], start: usize) -> usize {
    let body_len = out.len() - start - FRAME_HEADER;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    body_len + FRAME_HEADER
}

/// What a frame header declares: the body length and CRC; `None` when the length is
/// impossible.
pub fn parse_frame_header(header: &[u8; FRAME_HEADER]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (1..=BODY_MAX).contains(&len).then_some((len, crc))
}

/// Decode a whole frame (header and body); `None` when it is short, fails its CRC or is not a
/// known record.
pub fn decode_frame(frame: &[u8]) -> Option<Record<'_>> {
    let header: &[u8; FRAME_HEADER] = frame.get(..FRAME_HEADER)?.try_into().ok()?;
    let (len, crc) = parse_frame_header(header)?;
    let body = frame.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    decode_body(body)
}

/// Decode a record body whose CRC was checked.
pub fn decode_body(body: &[u8]) -> Option<Record<'_>> {
    let mailbox = MailboxId(body.get(1..33)?.try_into().ok()?);
    match *body.first()? {
        KIND_ITEM if body.len() >= ITEM_HEADER => Some(Record::Item(ItemRecord {
            mailbox,
            cursor: le_u64(&body[33..41])?,
            blob_id: BlobId(body[41..73].try_into().ok()?),
            stored_at_ms: le_u64(&body[73..81])?,
            expires_at_ms: le_u64(&body[81..89])?,
            ciphertext: &body[ITEM_HEADER..],
        })),
        KIND_MARK if body.len() == MARK_BODY => Some(Record::Mark {
            mailbox,
            latest: le_u64(&body[33..41])?,
        }),
        _ => None,
    }
}

fn le_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn request(token: u64, mailbox: u8, payload: &[u8]) -> AppendRequest {
        AppendRequest {
            token,
            mailbox: MailboxId([mailbox; 32]),
            blob_id: BlobId::of_ciphertext(payload),
            ciphertext: Bytes::copy_from_slice(payload),
            ttl_secs: None,
        }
    }

    fn plan(requests: &[AppendRequest], limits: &StoreLimits) -> CommitPlan {
        plan_commit(
            requests,
            1_000,
            limits,
            |_| MailboxMeta::default(),
            |_, _| None,
        )
    }

    fn cursor(outcome: &StoreOutcome) -> (u64, bool) {
        match outcome {
            StoreOutcome::Stored {
                cursor, duplicate, ..
            } => (cursor.0, *duplicate),
            StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
        }
    }

    #[test]
    fn cursors_increase_per_mailbox_and_duplicates_reuse_them() {
        let requests = [
            request(0, 1, b"a"),
            request(1, 2, b"a"),
            request(2, 1, b"b"),
            request(3, 1, b"a"),
        ];
        let plan = plan(&requests, &StoreLimits::default());
        let got: Vec<_> = plan.outcomes.iter().map(cursor).collect();
        assert_eq!(got, vec![(1, false), (1, false), (2, false), (1, true)]);
        assert_eq!(plan.new.len(), 3);
        assert_eq!(plan.new_mailboxes, 2);
        assert_eq!(plan.metas[&MailboxId([1; 32])].latest, 2);
    }

    #[test]
    fn an_existing_blob_is_answered_with_its_cursor_and_time() {
        let requests = [request(0, 1, b"old"), request(1, 1, b"new")];
        let plan = plan_commit(
            &requests,
            5_000,
            &StoreLimits::default(),
            |_| MailboxMeta {
                latest: 7,
                bytes: 3,
                count: 1,
            },
            |_, blob| (*blob == BlobId::of_ciphertext(b"old")).then_some((7, 1_000)),
        );
        assert_eq!(
            plan.outcomes[0],
            StoreOutcome::Stored {
                cursor: Cursor(7),
                duplicate: true,
                stored_at_ms: 1_000
            }
        );
        assert_eq!(cursor(&plan.outcomes[1]), (8, false));
        assert_eq!(plan.new_mailboxes, 0);
    }

    #[test]
    fn quota_and_size_are_enforced_within_a_batch() {
        let limits = StoreLimits {
            blob_bytes_max: 4,
            mailbox_quota_bytes: 6,
            ..StoreLimits::default()
        };
        let requests = [
            request(0, 1, b"1234"),
            request(1, 1, b"12345"),
            request(2, 1, b"abc"),
            request(3, 1, b"xy"),
        ];
        let plan = plan(&requests, &limits);
        assert!(matches!(plan.outcomes[0], StoreOutcome::Stored { .. }));
        assert!(matches!(
            plan.outcomes[1],
            StoreOutcome::Rejected(StoreError::TooLarge { bytes: 5, limit: 4 })
        ));
        assert!(matches!(
            plan.outcomes[2],
            StoreOutcome::Rejected(StoreError::QuotaExceeded { quota_bytes: 6 })
        ));
        assert_eq!(cursor(&plan.outcomes[3]), (2, false));
        let written: Vec<usize> = plan.new.iter().map(|n| n.request).collect();
        assert_eq!(written, vec![0, 3]);
    }

    #[test]
    fn ttl_defaults_and_caps() {
        let limits = StoreLimits {
            ttl_default_secs: 10,
            ttl_max_secs: 100,
            ..StoreLimits::default()
        };
        assert_eq!(limits.ttl_secs(None), 10);
        assert_eq!(limits.ttl_secs(Some(50)), 50);
        assert_eq!(limits.ttl_secs(Some(5000)), 100);
        let mut short = request(0, 1, b"x");
        short.ttl_secs = Some(60);
        let plan = plan(&[short, request(1, 1, b"y")], &limits);
        let expiries: Vec<u64> = plan.new.iter().map(|n| n.expires_at_ms).collect();
        assert_eq!(expiries, vec![1_000 + 60_000, 1_000 + 10_000]);
    }

    fn item(ciphertext: &[u8]) -> ItemRecord<'_> {
        ItemRecord {
            mailbox: MailboxId([7; 32]),
            cursor: 9,
            blob_id: BlobId::of_ciphertext(ciphertext),
            stored_at_ms: 11,
            expires_at_ms: 12,
            ciphertext,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        let first = encode_item(&mut out, &item(b"sealed bytes"));
        assert_eq!(first, FRAME_HEADER + ITEM_HEADER + 12);
        let second = encode_mark(&mut out, &MailboxId([3; 32]), 44);
        assert_eq!(second, FRAME_HEADER + MARK_BODY);
        assert_eq!(out.len(), first + second);
        assert_eq!(
            decode_frame(&out[..first]),
            Some(Record::Item(item(b"sealed bytes")))
        );
        assert_eq!(
            decode_frame(&out[first..]),
            Some(Record::Mark {
                mailbox: MailboxId([3; 32]),
                latest: 44
            })
        );
        let mut empty = Vec::new();
        let len = encode_item(&mut empty, &item(b""));
        assert_eq!(decode_frame(&empty[..len]), Some(Record::Item(item(b""))));
    }

    #[test]
    fn torn_or_flipped_records_do_not_decode() {
        let mut out = Vec::new();
        let len = encode_item(&mut out, &item(b"sealed bytes"));
        for cut in 0..len {
            assert_eq!(decode_frame(&out[..cut]), None, "cut at {cut}");
        }
        for at in 0..len {
            let mut flipped = out.clone();
            flipped[at] ^= 0x10;
            assert_eq!(decode_frame(&flipped), None, "flip at {at}");
        }
        assert_eq!(
            parse_frame_header(&[0; FRAME_HEADER]),
            None,
            "zeros end a log"
        );
        let mut mark = Vec::new();
        encode_mark(&mut mark, &MailboxId([1; 32]), 1);
        mark[FRAME_HEADER] = 9;
        let body = mark[FRAME_HEADER..].to_vec();
        assert_eq!(decode_body(&body), None, "unknown kind");
    }
}
