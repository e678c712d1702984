//! A hostile relay host: a frame-rewriting `Link` middleware in front of the real relay. The
//! relay runs as ever; what it sends to clients passes through a [`Rewrite`] that drops,
//! flips, duplicates, replays or reorders the items it serves and forges its pull pages, as a
//! compromised host or a broken proxy would. What clients send reaches the relay unchanged.
//! This is the only hostile relay of the project: no second relay implementation exists,
//! every lie is told about frames the real relay sent.
//!
//! # Counting
//!
//! "Every n-th" counts the items the relay serves on one connection (live `Deliver`s and the
//! items of pull pages alike, dropped ones included, after a page was cut to
//! [`Rewrite::page_items_max`]), from 1. A new connection starts a new count.
//!
//! # Replays and the real relay's cursors
//!
//! The real relay numbers a mailbox's items 1, 2, 3, ...: there is no fresh cursor between
//! two items under which an old one could come back. A client takes an item only when its
//! cursor is beyond what it has of that relay (a pull page is judged as a whole against the
//! cursor before the page; a live `Deliver` must be exactly the next cursor). So a replay
//! (an earlier item served again) is sent under the cursor of the item it follows:
//!
//! - In a pull page it goes right after that item, under its cursor: both pass the client's
//!   cursor filter, so the replay reaches the client's blob-id dedup and seq tracker. This is
//!   the strongest attack on the dedup the relay's cursors allow without losing the real item.
//! - Live, it is one more `Deliver` right after the real one, under its cursor: the client
//!   drops it on the cursor alone. Sent first, it would take the cursor from the real item,
//!   which the client would then never take from this relay: a drop ([`Rewrite::drop_every`]
//!   covers drops).
//!
//! The replayed item is the oldest of the connection's last [`REPLAY_WINDOW`] served items,
//! so replays come back many items after their original. The chaos world's
//! devices are in one group each, so a connection serves one mailbox; with several, a replay
//! could carry another mailbox's item (which does not open there either).
//!
//! # Forged pages
//!
//! A page is first cut to [`Rewrite::page_items_max`] items (then it says `has_more`, and its
//! `next` is the last item kept), then [`Rewrite::hide_more`] may deny that more exist, then
//! its `next` is moved forward by [`Rewrite::forge_next_by`] (empty pages too), as if the
//! items in between had been served. Extra copies (duplicates, replays) go into a page only
//! while it still fits one frame.

use bytes::Bytes;
use std::collections::VecDeque;
use tokio::sync::mpsc;
use zerok_actors::link::{Link, LinkListener, LinkReceiver, LinkSender, channel};
use zerok_messages::codec;
use zerok_messages::wire::{FRAME_BYTES_MAX, Frame, Item};
use zerok_messages::{Cursor, ReqId};
use zerok_relay::config::{PULL_ITEM_OVERHEAD_BYTES, PULL_PAGE_OVERHEAD_BYTES};

/// Served items a connection remembers as replay targets. With 16, a replay in a page of a
/// few items brings back an item of an earlier frame (the client's dedup must remember it
/// across batches), and one in a large page mostly an item of the same page (dedup within a
/// batch); the memory stays small.
pub const REPLAY_WINDOW: usize = 16;

/// What a hostile relay host does to the items its relay serves (live deliveries and pull
/// pages, counted per connection from 1, see the module docs); 0 and `false` = never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Flip one ciphertext byte of every n-th item (its blob id unchanged).
    pub flip_every: u64,
    /// Serve every n-th item twice (same cursor, same bytes): two `Deliver`s live, two
    /// copies side by side in a page.
    pub duplicate_every: u64,
    /// Silently skip every n-th item, live or in a page (a page's `next` still claims it).
    pub drop_every: u64,
    /// After every n-th item, serve an earlier served item again under its cursor (see
    /// "Replays" in the module docs).
    pub replay_every: u64,
    /// Serve each pull page's items in reverse order (cursors going down).
    pub reorder: bool,
    /// Cut every pull page to at most this many items (it then says `has_more`); 0 = the
    /// relay's pages as they are.
    pub page_items_max: u32,
    /// Claim in every pull page a `next` this far beyond the page's real end (empty pages
    /// too), as if the items in between had been served.
    pub forge_next_by: u64,
    /// Say `has_more: false` in every pull page, also when more exist.
    pub hide_more: bool,
    /// Replace the nonce of the relay's `Welcome` (a man in the middle of the handshake):
    /// every join proof a client signs is then for a nonce the relay never gave.
    pub forge_nonce: bool,
    /// Claim another relay id in the `Welcome` (a host impersonating another relay).
    pub impersonate: bool,
}

/// What one connection's rewriter carries from frame to frame.
#[derive(Debug, Default)]
pub struct Serving {
    /// Items the relay served on this connection so far (the "every n-th" count).
    counted: u64,
    /// The last served items, oldest first, at most [`REPLAY_WINDOW`]: replay targets.
    served: VecDeque<Item>,
}

impl Serving {
    fn remember(&mut self, item: Item) {
        self.served.push_back(item);
        while self.served.len() > REPLAY_WINDOW {
            self.served.pop_front();
        }
    }
}

/// Whether the `n`-th item is one of every `every` (0 = none is).
fn hits(every: u64, n: u64) -> bool {
    every > 0 && n.is_multiple_of(every)
}

/// Bytes an item may add to a pull page frame (the relay's own bound).
fn page_item_bytes(item: &Item) -> usize {
    item.ciphertext.len() + PULL_ITEM_OVERHEAD_BYTES as usize
}

impl Rewrite {
    /// Whether it changes anything.
    pub fn is_honest(&self) -> bool {
        *self == Rewrite::default()
    }

    /// The frames that go to the client for one frame the relay sent.
    pub fn rewrite(&self, serving: &mut Serving, frame: Frame) -> Vec<Frame> {
        match frame {
            Frame::Deliver { mailbox, item } => self
                .serve(serving, item)
                .into_iter()
                .map(|item| Frame::Deliver { mailbox, item })
                .collect(),
            Frame::PullPage {
                req,
                items,
                next,
                has_more,
            } => vec![self.page(serving, req, items, next, has_more)],
            Frame::Welcome {
                version,
                mut relay_id,
                mut nonce,
                limits,
            } => {
                if self.forge_nonce {
                    nonce = nonce.map(|b| !b);
                }
                if self.impersonate {
                    relay_id.0 = relay_id.0.map(|b| b ^ 0x5A);
                }
                vec![Frame::Welcome {
                    version,
                    relay_id,
                    nonce,
                    limits,
                }]
            }
            other => vec![other],
        }
    }

    /// What goes out for the relay's next item: nothing (dropped), or the item (perhaps
    /// flipped), then its copy, then a replay, as this rewrite says.
    fn serve(&self, serving: &mut Serving, item: Item) -> Vec<Item> {
        serving.counted += 1;
        let n = serving.counted;
        if hits(self.drop_every, n) {
            return Vec::new();
        }
        let item = self.flip(n, item);
        let mut out = vec![item.clone()];
        if hits(self.duplicate_every, n) {
            out.push(item.clone());
        }
        if hits(self.replay_every, n)
            && let Some(earlier) = serving.served.front()
        {
            out.push(Item {
                cursor: item.cursor,
                ..earlier.clone()
            });
        }
        serving.remember(item);
        out
    }

    fn flip(&self, n: u64, mut item: Item) -> Item {
        if hits(self.flip_every, n) && !item.ciphertext.is_empty() {
            let mut bytes = item.ciphertext.to_vec();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x01;
            item.ciphertext = Bytes::from(bytes);
        }
        item
    }

    /// A pull page as this rewrite serves it (see "Forged pages" in the module docs).
    fn page(
        &self,
        serving: &mut Serving,
        req: ReqId,
        mut items: Vec<Item>,
        mut next: Cursor,
        mut has_more: bool,
    ) -> Frame {
        let cut = self.page_items_max as usize;
        if cut > 0 && items.len() > cut {
            items.truncate(cut);
            next = items.last().map_or(next, |item| item.cursor);
            has_more = true;
        }
        if self.hide_more {
            has_more = false;
        }
        let next = Cursor(next.0.saturating_add(self.forge_next_by));
        // The relay's items fit one frame; extra copies only while the frame has room.
        let mut bytes =
            PULL_PAGE_OVERHEAD_BYTES as usize + items.iter().map(page_item_bytes).sum::<usize>();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mut served = self.serve(serving, item).into_iter();
            out.extend(served.next());
            for extra in served {
                let with_extra = bytes + page_item_bytes(&extra);
                if with_extra <= FRAME_BYTES_MAX {
                    bytes = with_extra;
                    out.push(extra);
                }
            }
        }
        if self.reorder {
            out.reverse();
        }
        Frame::PullPage {
            req,
            items: out,
            next,
            has_more,
        }
    }

    /// The frame bodies that go to the client for one the relay sent (undecodable ones pass
    /// as they are).
    fn apply(&self, serving: &mut Serving, body: Bytes) -> Vec<Bytes> {
        let Ok(frame) = codec::decode(&body) else {
            return vec![body];
        };
        self.rewrite(serving, frame)
            .iter()
            .filter_map(|frame| codec::encode(frame).ok().map(Bytes::from))
            .collect()
    }
}

/// The links of `inner`, each with what the relay sends rewritten by `rewrite`.
pub fn rewriting(mut inner: LinkListener, rewrite: Rewrite) -> LinkListener {
    let id = inner.local_id();
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        while let Some(link) = inner.accept().await {
            let Link {
                peer,
                remote_addr,
                sender: to_client,
                receiver: from_client,
            } = link;
            let (from_relay_tx, from_relay_rx) = channel();
            tokio::spawn(pump(from_relay_rx, to_client, rewrite));
            let relay_side = Link {
                peer,
                remote_addr,
                sender: from_relay_tx,
                receiver: from_client,
            };
            if tx.send(relay_side).await.is_err() {
                return;
            }
        }
    });
    LinkListener::new(id, rx)
}

async fn pump(mut from_relay: LinkReceiver, to_client: LinkSender, rewrite: Rewrite) {
    let mut serving = Serving::default();
    loop {
        match from_relay.recv().await {
            Ok(Some(body)) => {
                for out in rewrite.apply(&mut serving, body) {
                    if to_client.send(out).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(err) => {
                to_client.abort(&err.to_string());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each rewrite on frames: what the relay sent in, what the client gets out.

    #![allow(clippy::unwrap_used)]

    use super::*;
    use zerok_messages::{BlobId, DeviceId, MailboxId};

    const MAILBOX: MailboxId = MailboxId([3; 32]);
    const REQ: ReqId = ReqId(9);

    /// The relay's item under `cursor` (its ciphertext names it).
    fn item(cursor: u64) -> Item {
        item_of(cursor, 8)
    }

    fn item_of(cursor: u64, bytes: usize) -> Item {
        let mut ciphertext = format!("sealed {cursor:04} ").into_bytes();
        ciphertext.resize(bytes.max(ciphertext.len()), b'.');
        let ciphertext = Bytes::from(ciphertext);
        Item {
            cursor: Cursor(cursor),
            blob_id: BlobId::of_ciphertext(&ciphertext),
            ciphertext,
            stored_at_ms: cursor,
        }
    }

    fn page(cursors: std::ops::RangeInclusive<u64>, has_more: bool) -> Frame {
        let items: Vec<Item> = cursors.map(item).collect();
        let next = items.last().map_or(Cursor(0), |item| item.cursor);
        Frame::PullPage {
            req: REQ,
            items,
            next,
            has_more,
        }
    }

    fn deliver(cursor: u64) -> Frame {
        Frame::Deliver {
            mailbox: MAILBOX,
            item: item(cursor),
        }
    }

    fn is_intact(item: &Item) -> bool {
        BlobId::of_ciphertext(&item.ciphertext) == item.blob_id
    }

    /// The page's items, `next` and `has_more` (panics on another frame).
    fn parts(frames: Vec<Frame>) -> (Vec<Item>, Cursor, bool) {
        match frames.as_slice() {
            [
                Frame::PullPage {
                    req,
                    items,
                    next,
                    has_more,
                },
            ] => {
                assert_eq!(*req, REQ);
                (items.clone(), *next, *has_more)
            }
            other => panic!("expected one page, got {other:?}"),
        }
    }

    /// The items of live deliveries (panics on another frame).
    fn delivered(frames: Vec<Frame>) -> Vec<Item> {
        frames
            .into_iter()
            .map(|frame| match frame {
                Frame::Deliver { mailbox, item } => {
                    assert_eq!(mailbox, MAILBOX);
                    item
                }
                other => panic!("expected a delivery, got {other:?}"),
            })
            .collect()
    }

    fn cursors(items: &[Item]) -> Vec<u64> {
        items.iter().map(|item| item.cursor.0).collect()
    }

    /// Serve `n` live items one by one.
    fn live(rewrite: Rewrite, n: u64) -> Vec<Item> {
        let mut serving = Serving::default();
        (1..=n)
            .flat_map(|c| delivered(rewrite.rewrite(&mut serving, deliver(c))))
            .collect()
    }

    #[test]
    fn a_forged_welcome_carries_another_nonce_or_relay_id_and_nothing_else_changes() {
        let welcome = Frame::Welcome {
            version: 1,
            relay_id: DeviceId([7; 32]),
            nonce: [3; 32],
            limits: zerok_relay::config::LimitsConfig::default().to_wire(),
        };
        let mut serving = Serving::default();
        let forged = |rewrite: Rewrite, serving: &mut Serving| match rewrite
            .rewrite(serving, welcome.clone())
            .as_slice()
        {
            [
                Frame::Welcome {
                    relay_id, nonce, ..
                },
            ] => (*relay_id, *nonce),
            other => panic!("one welcome expected, got {other:?}"),
        };
        let nonce_forged = Rewrite {
            forge_nonce: true,
            ..Rewrite::default()
        };
        assert_eq!(
            forged(nonce_forged, &mut serving),
            (DeviceId([7; 32]), [!3; 32])
        );
        let impersonating = Rewrite {
            impersonate: true,
            ..Rewrite::default()
        };
        let (relay_id, nonce) = forged(impersonating, &mut serving);
        assert_ne!(relay_id, DeviceId([7; 32]));
        assert_eq!(nonce, [3; 32]);
        let passed = Rewrite::default().rewrite(&mut serving, welcome.clone());
        assert_eq!(passed, [welcome]);
    }

    #[test]
    fn an_honest_rewrite_changes_nothing_and_other_frames_pass() {
        let honest = Rewrite::default();
        assert!(honest.is_honest());
        let mut serving = Serving::default();
        assert_eq!(honest.rewrite(&mut serving, deliver(1)), [deliver(1)]);
        assert_eq!(
            honest.rewrite(&mut serving, page(2..=6, true)),
            [page(2..=6, true)]
        );
        let hostile = Rewrite {
            drop_every: 1,
            replay_every: 1,
            reorder: true,
            forge_next_by: 5,
            hide_more: true,
            ..Rewrite::default()
        };
        assert!(!hostile.is_honest());
        for frame in [
            Frame::Notify {
                mailbox: MAILBOX,
                latest: Cursor(4),
            },
            Frame::Pong { req: REQ },
            Frame::PushAck {
                req: REQ,
                cursor: Cursor(4),
                duplicate: false,
            },
        ] {
            assert_eq!(hostile.rewrite(&mut serving, frame.clone()), [frame]);
        }
        // Bytes that do not decode pass as they are.
        let junk = Bytes::from_static(b"\xff\x00 not cbor");
        assert_eq!(hostile.apply(&mut serving, junk.clone()), [junk]);
    }

    #[test]
    fn drops_count_live_and_page_items_alike_and_the_page_still_claims_them() {
        let rewrite = Rewrite {
            drop_every: 3,
            ..Rewrite::default()
        };
        let mut serving = Serving::default();
        // Items 1, 2 live (kept), 3 live (dropped), then a page of 4..=10: counts 4..=10,
        // of which 6 and 9 are dropped.
        let mut got = Vec::new();
        for c in 1..=3 {
            got.extend(delivered(rewrite.rewrite(&mut serving, deliver(c))));
        }
        assert_eq!(cursors(&got), [1, 2]);
        let (items, next, has_more) = parts(rewrite.rewrite(&mut serving, page(4..=10, false)));
        assert_eq!(cursors(&items), [4, 5, 7, 8, 10]);
        assert!(items.iter().all(is_intact));
        assert_eq!((next, has_more), (Cursor(10), false));
        // A new connection counts afresh.
        assert_eq!(cursors(&live(rewrite, 4)), [1, 2, 4]);
    }

    #[test]
    fn flips_change_one_byte_of_every_nth_item_and_keep_its_blob_id() {
        let rewrite = Rewrite {
            flip_every: 2,
            ..Rewrite::default()
        };
        let mut serving = Serving::default();
        let (items, _, _) = parts(rewrite.rewrite(&mut serving, page(1..=6, false)));
        assert_eq!(cursors(&items), [1, 2, 3, 4, 5, 6]);
        for served in &items {
            let original = item(served.cursor.0);
            assert_eq!(served.blob_id, original.blob_id);
            assert_eq!(served.ciphertext.len(), original.ciphertext.len());
            let differing = served
                .ciphertext
                .iter()
                .zip(original.ciphertext.iter())
                .filter(|(a, b)| a != b)
                .count();
            let flipped = served.cursor.0 % 2 == 0;
            assert_eq!(differing, usize::from(flipped), "{}", served.cursor.0);
            assert_eq!(is_intact(served), !flipped);
        }
        // Live too, counting on: the 8th item is flipped.
        let live7 = delivered(rewrite.rewrite(&mut serving, deliver(7)));
        let live8 = delivered(rewrite.rewrite(&mut serving, deliver(8)));
        assert!(is_intact(&live7[0]) && !is_intact(&live8[0]));
    }

    #[test]
    fn duplicates_come_twice_live_and_side_by_side_in_pages() {
        let rewrite = Rewrite {
            duplicate_every: 2,
            ..Rewrite::default()
        };
        assert_eq!(cursors(&live(rewrite, 4)), [1, 2, 2, 3, 4, 4]);
        let every = Rewrite {
            duplicate_every: 1,
            ..Rewrite::default()
        };
        let (items, next, _) = parts(every.rewrite(&mut Serving::default(), page(1..=3, false)));
        assert_eq!(cursors(&items), [1, 1, 2, 2, 3, 3]);
        for pair in items.chunks(2) {
            assert_eq!(pair[0], pair[1]);
            assert_eq!(pair[0], item(pair[0].cursor.0));
        }
        assert_eq!(next, Cursor(3));
    }

    #[test]
    fn reordered_pages_come_backwards_and_live_items_do_not() {
        let rewrite = Rewrite {
            reorder: true,
            ..Rewrite::default()
        };
        let mut serving = Serving::default();
        let (items, next, has_more) = parts(rewrite.rewrite(&mut serving, page(1..=5, true)));
        assert_eq!(cursors(&items), [5, 4, 3, 2, 1]);
        assert!(items.iter().all(|served| *served == item(served.cursor.0)));
        assert_eq!((next, has_more), (Cursor(5), true));
        let (second, _, _) = parts(rewrite.rewrite(&mut serving, page(6..=10, false)));
        assert_eq!(cursors(&second), [10, 9, 8, 7, 6]);
        assert_eq!(
            rewrite.rewrite(&mut serving, deliver(11)),
            [deliver(11)],
            "a delivery is one item"
        );
    }

    #[test]
    fn replays_bring_back_an_earlier_item_under_the_cursor_of_the_one_they_follow() {
        let rewrite = Rewrite {
            replay_every: 1,
            ..Rewrite::default()
        };
        // Live: each item but the first is followed by the oldest remembered one.
        let items = live(rewrite, 4);
        assert_eq!(cursors(&items), [1, 2, 2, 3, 3, 4, 4]);
        for (at, original) in [(2, 1), (4, 1), (6, 1)] {
            assert_eq!(items[at].blob_id, item(original).blob_id);
            assert_eq!(items[at].ciphertext, item(original).ciphertext);
        }
        assert!(items.iter().all(is_intact), "old bytes, not tampered ones");

        // In pages: cursors never go down, and past the window the replays move on.
        let mut serving = Serving::default();
        let total = REPLAY_WINDOW as u64 + 4;
        let (items, next, _) = parts(rewrite.rewrite(&mut serving, page(1..=total, false)));
        assert_eq!(next, Cursor(total));
        assert!(
            items
                .windows(2)
                .all(|pair| pair[0].cursor <= pair[1].cursor)
        );
        let replays: Vec<(u64, BlobId)> = items
            .iter()
            .filter(|served| served.blob_id != item(served.cursor.0).blob_id)
            .map(|served| (served.cursor.0, served.blob_id))
            .collect();
        assert_eq!(replays.len() as u64, total - 1, "every item but the first");
        for (cursor, blob_id) in replays {
            // The oldest of the last REPLAY_WINDOW items served before it.
            let original = cursor.saturating_sub(REPLAY_WINDOW as u64).max(1);
            assert_eq!(blob_id, item(original).blob_id, "replay at {cursor}");
        }
        // A later frame replays items of this one: the dedup must remember across batches.
        let later = delivered(rewrite.rewrite(&mut serving, deliver(total + 1)));
        assert_eq!(cursors(&later), [total + 1, total + 1]);
        assert_eq!(
            later[1].blob_id,
            item(total + 1 - REPLAY_WINDOW as u64).blob_id
        );
        // A dropped item is never a replay target.
        let dropping = Rewrite {
            drop_every: 2,
            replay_every: 3,
            ..Rewrite::default()
        };
        let items = live(dropping, 3);
        assert_eq!(cursors(&items), [1, 3, 3]);
        assert_eq!(items[2].blob_id, item(1).blob_id);
    }

    #[test]
    fn forged_pages_claim_more_than_they_carry() {
        let rewrite = Rewrite {
            page_items_max: 3,
            forge_next_by: 1000,
            ..Rewrite::default()
        };
        let mut serving = Serving::default();
        let (items, next, has_more) = parts(rewrite.rewrite(&mut serving, page(1..=10, false)));
        assert_eq!(cursors(&items), [1, 2, 3]);
        assert_eq!((next, has_more), (Cursor(1003), true));
        // A page the relay cut itself keeps its `has_more`; a short one is not cut.
        let (items, next, has_more) = parts(rewrite.rewrite(&mut serving, page(4..=5, false)));
        assert_eq!(cursors(&items), [4, 5]);
        assert_eq!((next, has_more), (Cursor(1005), false));
        // Past the end: an empty page that still claims progress.
        let empty = Frame::PullPage {
            req: REQ,
            items: Vec::new(),
            next: Cursor(10),
            has_more: false,
        };
        let (items, next, has_more) = parts(rewrite.rewrite(&mut serving, empty));
        assert!(items.is_empty());
        assert_eq!((next, has_more), (Cursor(1010), false));
        // Cut items were not served: the count goes on from the items kept.
        assert_eq!(serving.counted, 5);

        let hiding = Rewrite {
            hide_more: true,
            ..rewrite
        };
        let (items, next, has_more) =
            parts(hiding.rewrite(&mut Serving::default(), page(1..=10, true)));
        assert_eq!(cursors(&items), [1, 2, 3]);
        assert_eq!((next, has_more), (Cursor(1003), false), "more exist");
    }

    #[test]
    fn extra_copies_never_make_a_page_too_large_for_a_frame() {
        let rewrite = Rewrite {
            duplicate_every: 1,
            replay_every: 1,
            ..Rewrite::default()
        };
        // Two items that fill most of a frame: their copies do not fit.
        let big = 400 * 1024;
        let items = vec![item_of(1, big), item_of(2, big)];
        let frame = Frame::PullPage {
            req: REQ,
            items: items.clone(),
            next: Cursor(2),
            has_more: false,
        };
        let out = rewrite.rewrite(&mut Serving::default(), frame);
        let encoded = codec::encode(&out[0]).unwrap();
        assert!(encoded.len() <= FRAME_BYTES_MAX, "{}", encoded.len());
        let (served, _, _) = parts(out);
        assert_eq!(served, items, "the relay's items, no copies");
        // Small ones all get their copies.
        let (served, _, _) = parts(rewrite.rewrite(&mut Serving::default(), page(1..=3, false)));
        assert_eq!(cursors(&served), [1, 1, 2, 2, 2, 3, 3, 3]);
    }
}
