//! What a store must still hold after a crash or a power cut, as named invariants over any
//! [`ItemStore`]: the power-loss model test (`actors/tests/power_loss.rs`) checks them after
//! every simulated power cut, and a chaos harness can check them after its crashes.
//!
//! An [`AckModel`] records what was pushed and what was acknowledged (a commit that returned
//! `Ok` with a `Stored` outcome, duplicate or not: the relay answers that to a client only
//! after it). After a restart:
//!
//! - [`acked_items_are_served`]: every acknowledged item not yet expired is served, at its
//!   cursor, with its ciphertext;
//! - [`nothing_served_was_never_pushed`]: everything served was pushed to that mailbox (an
//!   unacknowledged push may survive, as the client cannot tell it from a lost ack), each
//!   blob once, its ciphertext matching its id;
//! - [`cursors_never_go_back`]: a mailbox's newest cursor is at least the newest it ever
//!   acknowledged, and the next push gets a higher cursor than any acknowledged or served.

use super::ItemStore;
use super::core::{CommitPlan, StoreLimits};
use crate::fault::FaultPlan;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use zerok_messages::relay::{AppendRequest, StoreOutcome};
use zerok_messages::{BlobId, MailboxId};

/// Largest page the checks read at once; small enough to exercise paging.
const CHECK_PAGE_ITEMS: u32 = 64;
/// Byte bound of a page the checks read.
const CHECK_PAGE_BYTES: u32 = 1024 * 1024;

/// An invariant that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{invariant}: {detail}")]
pub struct Violation {
    /// The invariant's name (its function's).
    pub invariant: &'static str,
    /// What was found.
    pub detail: String,
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// An acknowledged item as the model knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedItem {
    /// Its blob id.
    pub blob_id: BlobId,
    /// When it expires (`None`: acknowledged as a duplicate of an item the model never saw
    /// acknowledged, whose expiry it does not know; only its cursor is checked).
    pub expires_at_ms: Option<u64>,
}

/// What was pushed and acknowledged, per mailbox.
#[derive(Debug, Clone, Default)]
pub struct AckModel {
    /// Blob ids ever pushed.
    pub pushed: BTreeMap<MailboxId, BTreeSet<BlobId>>,
    /// Acknowledged items by cursor.
    pub acked: BTreeMap<MailboxId, BTreeMap<u64, AckedItem>>,
}

impl AckModel {
    /// Note `requests` as pushed (before their commit: a push may land without an ack).
    pub fn note_pushed(&mut self, requests: &[AppendRequest]) {
        for request in requests {
            self.pushed
                .entry(request.mailbox)
                .or_default()
                .insert(request.blob_id);
        }
    }

    /// Note the acknowledgements of a commit of `requests` that returned `plan`.
    pub fn note_committed(&mut self, requests: &[AppendRequest], plan: &CommitPlan) {
        for (n, (request, outcome)) in requests.iter().zip(&plan.outcomes).enumerate() {
            let StoreOutcome::Stored {
                cursor, duplicate, ..
            } = outcome
            else {
                continue;
            };
            let expires_at_ms = plan
                .new
                .iter()
                .find(|new| new.request == n)
                .map(|new| new.expires_at_ms);
            let acked = self.acked.entry(request.mailbox).or_default();
            if *duplicate && acked.contains_key(&cursor.0) {
                continue;
            }
            acked.insert(
                cursor.0,
                AckedItem {
                    blob_id: request.blob_id,
                    expires_at_ms,
                },
            );
        }
    }

    /// The newest cursor acknowledged in `mailbox` (0: none).
    pub fn latest_acked(&self, mailbox: &MailboxId) -> u64 {
        self.acked
            .get(mailbox)
            .and_then(|items| items.keys().next_back().copied())
            .unwrap_or(0)
    }

    /// Every mailbox pushed to.
    pub fn mailboxes(&self) -> impl Iterator<Item = &MailboxId> {
        self.pushed.keys()
    }
}

/// An item as served.
#[derive(Debug, Clone)]
pub struct Served {
    /// Its cursor.
    pub cursor: u64,
    /// Its blob id.
    pub blob_id: BlobId,
    /// Its ciphertext.
    pub ciphertext: Bytes,
}

/// Everything `store` serves of `mailbox` at `now_ms`, page by page.
pub fn served(
    store: &dyn ItemStore,
    mailbox: &MailboxId,
    now_ms: u64,
) -> Result<Vec<Served>, Violation> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read_page(mailbox, after, CHECK_PAGE_ITEMS, CHECK_PAGE_BYTES, now_ms)
            .map_err(|err| violation("served", format!("reading {mailbox:?}: {err}")))?;
        if page.next.0 < after {
            return Err(violation(
                "served",
                format!("a page went back from {after} to {}", page.next.0),
            ));
        }
        out.extend(page.items.iter().map(|item| Served {
            cursor: item.cursor.0,
            blob_id: item.blob_id,
            ciphertext: item.ciphertext.clone(),
        }));
        if !page.has_more {
            return Ok(out);
        }
        if page.next.0 == after {
            return Err(violation("served", "a full page that does not move".into()));
        }
        after = page.next.0;
    }
}

/// Every acknowledged item of `model` not expired at `now_ms` is served at its cursor.
pub fn acked_items_are_served(
    store: &dyn ItemStore,
    model: &AckModel,
    now_ms: u64,
) -> Result<(), Violation> {
    const NAME: &str = "acked_items_are_served";
    for (mailbox, acked) in &model.acked {
        let served: BTreeMap<u64, BlobId> = served(store, mailbox, now_ms)?
            .into_iter()
            .map(|s| (s.cursor, s.blob_id))
            .collect();
        for (cursor, item) in acked {
            let Some(expires_at_ms) = item.expires_at_ms else {
                continue;
            };
            if expires_at_ms <= now_ms {
                continue;
            }
            match served.get(cursor) {
                Some(blob_id) if *blob_id == item.blob_id => {}
                Some(other) => {
                    return Err(violation(
                        NAME,
                        format!("{mailbox:?} cursor {cursor} serves {other:?}, acked {item:?}"),
                    ));
                }
                None => {
                    return Err(violation(
                        NAME,
                        format!(
                            "{mailbox:?} cursor {cursor} was acked (expires {expires_at_ms}, now {now_ms}) and is gone"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Everything served was pushed to its mailbox, once, with a ciphertext matching its id,
/// in ascending cursor order.
pub fn nothing_served_was_never_pushed(
    store: &dyn ItemStore,
    model: &AckModel,
    now_ms: u64,
) -> Result<(), Violation> {
    const NAME: &str = "nothing_served_was_never_pushed";
    for (mailbox, pushed) in &model.pushed {
        let mut seen = BTreeSet::new();
        let mut last = 0;
        for item in served(store, mailbox, now_ms)? {
            if item.cursor <= last {
                return Err(violation(
                    NAME,
                    format!("{mailbox:?} cursor {} after {last}", item.cursor),
                ));
            }
            last = item.cursor;
            if BlobId::of_ciphertext(&item.ciphertext) != item.blob_id {
                return Err(violation(
                    NAME,
                    format!(
                        "{mailbox:?} cursor {} serves bytes that are not its blob",
                        item.cursor
                    ),
                ));
            }
            if !pushed.contains(&item.blob_id) {
                return Err(violation(
                    NAME,
                    format!(
                        "{mailbox:?} cursor {} serves a blob never pushed",
                        item.cursor
                    ),
                ));
            }
            if !seen.insert(item.blob_id) {
                return Err(violation(
                    NAME,
                    format!(
                        "{mailbox:?} serves {:?} twice (again at {})",
                        item.blob_id, item.cursor
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every mailbox's newest cursor is at least its newest acknowledged one, and a new push
/// (a probe, written to the store and noted in `model`) gets a cursor above every
/// acknowledged and served one.
pub fn cursors_never_go_back(
    store: &dyn ItemStore,
    model: &mut AckModel,
    now_ms: u64,
) -> Result<(), Violation> {
    const NAME: &str = "cursors_never_go_back";
    let mailboxes: Vec<MailboxId> = model.mailboxes().copied().collect();
    for mailbox in mailboxes {
        let latest_acked = model.latest_acked(&mailbox);
        let latest = store.meta(&mailbox).latest;
        if latest < latest_acked {
            return Err(violation(
                NAME,
                format!("{mailbox:?} newest cursor {latest}, acked up to {latest_acked}"),
            ));
        }
        let served_max = served(store, &mailbox, now_ms)?
            .last()
            .map_or(0, |s| s.cursor);
        let ciphertext = Bytes::from(format!("probe {mailbox:?} after {latest}").into_bytes());
        let probe = AppendRequest {
            token: 0,
            mailbox,
            blob_id: BlobId::of_ciphertext(&ciphertext),
            ciphertext,
            ttl_secs: Some(60),
        };
        let requests = [probe];
        model.note_pushed(&requests);
        let plan = store
            .commit(
                &requests,
                now_ms,
                &StoreLimits::default(),
                &FaultPlan::none(),
            )
            .map_err(|err| violation(NAME, format!("the probe push failed: {err}")))?;
        model.note_committed(&requests, &plan);
        match plan.outcomes.first() {
            Some(StoreOutcome::Stored { cursor, .. })
                if cursor.0 > latest_acked && cursor.0 > served_max => {}
            other => {
                return Err(violation(
                    NAME,
                    format!(
                        "{mailbox:?} probe got {other:?}; acked up to {latest_acked}, served up to {served_max}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// All three invariants, in order (the last writes a probe item per mailbox).
pub fn check_after_restart(
    store: &dyn ItemStore,
    model: &mut AckModel,
    now_ms: u64,
) -> Result<(), Violation> {
    acked_items_are_served(store, model, now_ms)?;
    nothing_served_was_never_pushed(store, model, now_ms)?;
    cursors_never_go_back(store, model, now_ms)
}
