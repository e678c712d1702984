//! A typed handle on the SyncCoordinator: one method per request, each bounded by a named
//! timeout and answering a typed error, so callers (the `Client` API) never build messages or
//! pick timeouts at call sites.

use super::*;
use zerok_messages::client::{DeviceInfo, Founder, InviteWatch, RecoveryAdded};

/// How long a call to the coordinator may take. The coordinator never waits for the app, a
/// relay or the disk in its handler (seals, opens and flushes run elsewhere), so only a
/// stopped or wedged client exceeds this; the caller then gets `Stopped`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The coordinator, as callers see it. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    actor: ActorRef<CoordMsg>,
}

/// A call that found the coordinator gone or not answering: the client has stopped.
fn stopped<E>(_: E) -> ClientError {
    ClientError::Stopped
}

impl Coordinator {
    /// A handle on a running coordinator.
    pub fn new(actor: ActorRef<CoordMsg>) -> Self {
        Self { actor }
    }

    /// The actor (to stop or supervise it).
    pub fn actor(&self) -> &ActorRef<CoordMsg> {
        &self.actor
    }

    /// Seal and queue `payloads` durably, in order: `(seq, blob_id)` of each once all are
    /// durable.
    pub async fn enqueue(
        &self,
        group: GroupId,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<(u64, BlobId)>, ClientError> {
        self.enqueue_as(group, RecordKind::APP, payloads).await
    }

    /// [`Coordinator::enqueue`] of records of `kind` (a file's announcement).
    pub async fn enqueue_as(
        &self,
        group: GroupId,
        kind: RecordKind,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<(u64, BlobId)>, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::Enqueue {
                group,
                kind,
                payloads,
                reply,
            },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// The keys to move content of `group` (its current epoch's, or `mailbox`'s epoch's).
    pub async fn content_access(
        &self,
        group: GroupId,
        mailbox: Option<zerok_messages::MailboxId>,
    ) -> Result<zerok_messages::client::ContentAccess, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::ContentAccess {
                group,
                mailbox,
                reply,
            },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// The receipt of `blob_id` once enough relays acked it; `None` waits as long as it
    /// takes, else `NotYetAcked` with the acks so far when `timeout` passes.
    pub async fn wait_acked(
        &self,
        group: GroupId,
        blob_id: BlobId,
        timeout: Option<Duration>,
    ) -> Result<Receipt, ClientError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.actor
            .cast(CoordMsg::WaitAcked {
                group,
                blob_id,
                reply: tx.into(),
            })
            .map_err(stopped)?;
        let waited = match timeout {
            Some(limit) => tokio::time::timeout(limit, rx).await.ok(),
            None => Some(rx.await),
        };
        match waited {
            Some(Ok(receipt)) => Ok(receipt),
            Some(Err(_)) => Err(ClientError::Stopped),
            None => {
                let (acked, needed) = ractor::call_t!(
                    self.actor,
                    |reply| CoordMsg::AckState {
                        group,
                        blob_id,
                        reply
                    },
                    millis(CALL_TIMEOUT)
                )
                .map_err(stopped)?;
                Err(ClientError::NotYetAcked {
                    acked: acked.len(),
                    needed,
                })
            }
        }
    }

    /// Pull every relay of `group` to its end (each relay bounded by [`SYNC_TIMEOUT`]).
    pub async fn sync_now(&self, group: GroupId) -> Result<SyncReport, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::SyncNow { group, reply },
            millis(SYNC_TIMEOUT + CALL_TIMEOUT)
        )
        .map_err(stopped)
    }

    /// Status of every group.
    pub async fn status(&self) -> Result<Status, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::Status { reply },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)
    }

    /// A group's record.
    pub async fn group(&self, id: GroupId) -> Result<GroupRecord, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::GetGroup { id, reply },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
        .ok_or(ClientError::UnknownGroup(id))
    }

    /// Add or replace a group; `founder` starts its roster (a new group, or one joined by
    /// admission).
    pub async fn put_group(
        &self,
        id: GroupId,
        record: GroupRecord,
        founder: Option<Founder>,
    ) -> Result<(), ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::PutGroup {
                id,
                record,
                founder,
                reply
            },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// The devices on `group`'s roster.
    pub async fn devices(&self, group: GroupId) -> Result<Vec<DeviceInfo>, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::Devices { group, reply },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// Remove `device` from `group`: re-key the group without it. Answered once the rekey
    /// is durable here; the group moves to the new epoch right after.
    pub async fn remove_device(&self, group: GroupId, device: DeviceId) -> Result<(), ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::RemoveDevice {
                group,
                device,
                reply
            },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// Put a recovery phrase's entry on `group`'s roster and keep its snapshot mailbox.
    pub async fn add_recovery(
        &self,
        group: GroupId,
        entry: DeviceId,
        wrap_key: [u8; 32],
        mailbox_secret: Zeroizing<[u8; 32]>,
    ) -> Result<RecoveryAdded, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::AddRecovery {
                group,
                entry,
                wrap_key,
                mailbox_secret,
                reply
            },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// Write this device's roster operation `op` (CBOR) in `group`: its outbox
    /// `(seq, blob_id)` once durable.
    pub async fn write_roster_op(
        &self,
        group: GroupId,
        op: Vec<u8>,
    ) -> Result<Vec<(u64, BlobId)>, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::WriteRosterOp { group, op, reply },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// Make an invite of `group` known to its members; its secret once that is durable.
    pub async fn invite(
        &self,
        group: GroupId,
        expires_at_ms: u64,
        secret: Option<Zeroizing<[u8; 32]>>,
    ) -> Result<Zeroizing<[u8; 32]>, ClientError> {
        ractor::call_t!(
            self.actor,
            |reply| CoordMsg::Invite {
                group,
                expires_at_ms,
                secret,
                reply
            },
            millis(CALL_TIMEOUT)
        )
        .map_err(stopped)?
    }

    /// Meet members in an invite mailbox (the joiner's side) until [`Self::unwatch_invite`].
    pub fn watch_invite(&self, watch: InviteWatch) -> Result<(), ClientError> {
        self.actor
            .cast(CoordMsg::WatchInvite(watch))
            .map_err(stopped)
    }

    /// Post `bytes` in a watched mailbox.
    pub fn watch_post(&self, mailbox: MailboxId, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.actor
            .cast(CoordMsg::WatchPost { mailbox, bytes })
            .map_err(stopped)
    }

    /// The device admitted with one of this device's invites (by its mailbox), once a relay
    /// acked the admission this device posted for it; `None` if this device does not (or no
    /// longer) serve that invite. Waits until then: bound it with a timeout.
    pub async fn admission_posted(
        &self,
        mailbox: MailboxId,
    ) -> Result<Option<DeviceId>, ClientError> {
        let (told, heard) = tokio::sync::oneshot::channel();
        self.actor
            .cast(CoordMsg::AdmissionPosted { mailbox, told })
            .map_err(stopped)?;
        Ok(heard.await.ok())
    }

    /// Stop meeting in an invite mailbox.
    pub fn unwatch_invite(&self, mailbox: MailboxId) {
        let _ = self.actor.cast(CoordMsg::UnwatchInvite { mailbox });
    }
}

fn millis(timeout: Duration) -> u64 {
    timeout.as_millis() as u64
}
