//! ContentTransfer: puts and gets large files of a group (DESIGN.md §4 "Large content"), in
//! the client tree.
//!
//! A put hashes the file (on every core), derives its key ([`FileKey::derive`]: convergent
//! inside one epoch), seals it once into a [`SealedSource`] (only the ciphertext's BLAKE3
//! tree and the chunks' tags go to `content/` of the home), then offers it to every relay
//! of the group on a zerok link that joined the epoch's mailbox (the relay answers the
//! verified prefix it holds) and pushes the rest over iroh-blobs from the same endpoint:
//! iroh-blobs' push request, then the ranges encoded from the file, its chunks sealed again
//! as they go, in large writes. An interrupted upload resumes from the relay's prefix. No
//! client keeps an iroh-blobs store.
//!
//! A get asks a relay for a grant the same way and streams the sealed bytes it lacks
//! straight from the relay (BLAKE3-verified as they arrive, no local store): a thread opens
//! each chunk as soon as it is whole into `dest.partial` ([`PartialDownload`]), trying the
//! group's relays in turn, and renames it to `dest` once every chunk opened. An interrupted
//! get resumes after the chunks it kept that still check out.
//!
//! Each transfer runs in its own task (at most [`TRANSFERS_MAX`] at once); stopping the
//! actor aborts them. A put's tree and tags are removed when it ends.

use crate::client::partial_download::PartialDownload;
use crate::client::sealed_source::SealedSource;
use crate::crypto::content::{
    ContentError as ChunkError, FileKey, plaintext_hash_file, sealed_len,
};
use crate::crypto::join::sign_join;
use crate::crypto::keys::MailboxSigner;
use crate::link::Dialer;
use crate::link::hello::hello;
use crate::link::iroh::IrohNode;
use crate::relay::content::{push_chunks, push_ranges};
use bao_tree::io::fsm::BaoContentItem;
use bytes::Bytes;
use iroh::endpoint::Connection;
use iroh_blobs::Hash;
use iroh_blobs::get::GetError;
use iroh_blobs::get::fsm;
use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt, GetRequest, PushRequest, RequestType};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};
use zerok_messages::client::{ContentAccess, ContentError, FileRef, GroupId, Progress};
use zerok_messages::link::{LinkReceiver, LinkSender};
use zerok_messages::{BlobId, ErrorCode, Frame, RelayAddr, ReqId, codec};

/// Transfers at once: one keeps a device within a relay's per-device connection slots
/// (its sync link, a transfer's zerok link and its iroh-blobs connection), and one
/// transfer already fills the path.
pub const TRANSFERS_MAX: usize = 1;
/// How long one request on the zerok link may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Times the relay is asked whether it holds a pushed file, and the pause between.
const CONFIRM_TRIES: u32 = 100;
const CONFIRM_PAUSE: Duration = Duration::from_millis(50);
/// Tries of one relay whose connection was lost before the next relay is tried.
const ATTEMPTS_PER_RELAY: u32 = 3;
/// Pause between them.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The directory of sealed copies and of the tags of interrupted downloads, in the home.
pub const CONTENT_DIR: &str = "content";
/// The tags of interrupted downloads, in [`CONTENT_DIR`].
const PARTIAL_DIR: &str = "partial";

/// Messages of the ContentTransfer actor.
pub enum TransferMsg {
    /// Seal `path` and upload it to the group's relays.
    Put {
        /// The keys of the group's current epoch.
        access: ContentAccess,
        /// The group.
        group: GroupId,
        /// The file.
        path: PathBuf,
        /// Told how far it is.
        progress: Option<mpsc::Sender<Progress>>,
        /// The file's reference once a relay holds all of it.
        reply: RpcReplyPort<Result<FileRef, ContentError>>,
    },
    /// Fetch `file` from the group's relays and open it into `dest`.
    Get {
        /// The keys of the file's epoch.
        access: ContentAccess,
        /// The file.
        file: FileRef,
        /// Where it goes.
        dest: PathBuf,
        /// Told how far it is.
        progress: Option<mpsc::Sender<Progress>>,
        /// Bytes fetched from relays by this get.
        reply: RpcReplyPort<Result<u64, ContentError>>,
    },
}

/// The actor's type.
pub struct ContentTransferActor;

/// What it needs.
pub struct ContentTransferArgs {
    /// The home's `content/`.
    pub dir: PathBuf,
    /// The device's endpoint (the relays' grants name this device).
    pub endpoint: IrohNode,
    /// Wall time (how long ago a get stopped).
    pub clock: crate::clock::Clock,
}

/// Its state.
pub struct ContentTransferState {
    dir: PathBuf,
    endpoint: IrohNode,
    slots: Arc<Semaphore>,
    tasks: JoinSet<()>,
}

fn io_err(path: &Path, err: impl std::fmt::Display) -> ContentError {
    ContentError::Io {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

fn report(progress: &Option<mpsc::Sender<Progress>>, event: Progress) {
    if let Some(tx) = progress {
        let _ = tx.try_send(event);
    }
}

/// A zerok link to one relay that joined one mailbox.
struct RelayLink {
    relay: RelayAddr,
    sender: LinkSender,
    receiver: LinkReceiver,
    next_req: u64,
}

impl RelayLink {
    async fn open(
        endpoint: &IrohNode,
        relay: &RelayAddr,
        access: &ContentAccess,
    ) -> Result<RelayLink, ContentError> {
        let unreachable = |e: String| ContentError::Unreachable(format!("{relay}: {e}"));
        let dialer = endpoint.dialer();
        let link = dialer
            .dial(relay)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let welcomed = hello(
            link,
            concat!("zerok/", env!("CARGO_PKG_VERSION")),
            REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| unreachable(e.to_string()))?;
        let mut link = RelayLink {
            relay: relay.clone(),
            sender: welcomed.sender,
            receiver: welcomed.receiver,
            next_req: 1,
        };
        let signer = MailboxSigner::from_seed(&access.seed);
        let proof = sign_join(
            &signer,
            &welcomed.relay_id,
            &dialer.local_id(),
            &welcomed.nonce,
        );
        link.request(|req| Frame::Join {
            req,
            mailbox_key: signer.mailbox_key(),
            proof,
            admission: None,
        })
        .await?;
        Ok(link)
    }

    /// Send one request, answer its reply (an error frame as `Refused`).
    async fn request(&mut self, frame: impl FnOnce(ReqId) -> Frame) -> Result<Frame, ContentError> {
        let req = ReqId(self.next_req);
        self.next_req += 1;
        let relay = self.relay.to_string();
        let body =
            codec::encode(&frame(req)).map_err(|e| ContentError::Unreachable(e.to_string()))?;
        self.sender
            .send(Bytes::from(body))
            .await
            .map_err(|e| ContentError::Unreachable(format!("{relay}: {e}")))?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.receiver.recv()).await;
            let body = match next {
                Ok(Ok(Some(body))) => body,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    return Err(ContentError::Unreachable(format!("{relay}: link closed")));
                }
                Err(_) => return Err(ContentError::Unreachable(format!("{relay}: timed out"))),
            };
            let Ok(frame) = codec::decode(&body) else {
                continue;
            };
            if frame.req() != Some(req) {
                continue;
            }
            return match frame {
                Frame::Error { code, message, .. } => Err(if code == ErrorCode::NotFound {
                    ContentError::NotFound
                } else {
                    ContentError::Refused {
                        relay,
                        code,
                        message,
                    }
                }),
                other => Ok(other),
            };
        }
    }

    async fn grant(
        &mut self,
        frame: impl FnOnce(ReqId) -> Frame,
    ) -> Result<(u64, u64), ContentError> {
        match self.request(frame).await? {
            Frame::ContentGrant { size, have, .. } => Ok((size, have)),
            other => Err(ContentError::Unreachable(format!(
                "{}: unexpected {}",
                self.relay,
                other.tag()
            ))),
        }
    }

    async fn bye(self) {
        drop(self.sender);
    }
}

/// Hash the file, derive its key, seal it once into a [`SealedSource`] (its tree and tags in
/// `dir`). Answers the source, the key and the plaintext size.
async fn prepare(
    dir: &Path,
    access: &ContentAccess,
    path: &Path,
    progress: &Option<mpsc::Sender<Progress>>,
) -> Result<(Arc<SealedSource>, FileKey, u64), ContentError> {
    let started = tokio::time::Instant::now();
    let source = path.to_path_buf();
    let (hash, size) = crate::exec::blocking(move || plaintext_hash_file(&source))
        .await
        .map_err(|e| io_err(path, e))?
        .map_err(|e| io_err(path, e))?;
    debug!(
        ms = started.elapsed().as_millis() as u64,
        "content put: plaintext hashed"
    );
    let key = FileKey::derive(&access.content_key, &hash);
    let sealing_key = key.clone();
    let (source, dir) = (path.to_path_buf(), dir.to_path_buf());
    let sealing = progress.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        SealedSource::seal(&sealing_key, &source, size, &dir, |done| {
            report(&sealing, Progress::Sealing { done, total: size })
        })
    })
    .await
    .map_err(|e| io_err(path, e))?
    .map_err(|e| chunk_error(e, path))?;
    debug!(
        ms = started.elapsed().as_millis() as u64,
        "content put: sealed"
    );
    Ok((Arc::new(prepared), key, size))
}

/// Bytes of one write of a push.
const PUSH_PIECE_BYTES: usize = 256 * 1024;
/// Pieces between the encoding thread and the connection.
const PUSH_QUEUE: usize = 8;

/// The encoding thread's writer: pieces of [`PUSH_PIECE_BYTES`] for the connection.
struct Pieces {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl std::io::Write for Pieces {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PUSH_PIECE_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(2 * PUSH_PIECE_BYTES));
            self.tx
                .blocking_send(Bytes::from(piece))
                .map_err(|_| std::io::Error::other("the push ended"))?;
        }
        Ok(())
    }
}

/// Push the chunks from `have` on of `source` to `relay` over iroh-blobs: its push request,
/// then the encoded ranges, which a thread seals and encodes in large pieces.
async fn push(
    connection: &Connection,
    source: &Arc<SealedSource>,
    have: u64,
    relay: &RelayAddr,
    progress: &Option<mpsc::Sender<Progress>>,
) -> Result<(), ContentError> {
    let lost = |e: &dyn std::fmt::Display| ContentError::Unreachable(format!("{relay}: push: {e}"));
    let size = source.sealed_size();
    let request = PushRequest::new(Hash::from_bytes(source.hash()), push_ranges(have, size));
    let mut head = vec![RequestType::Push as u8];
    irpc::util::WriteVarintExt::write_length_prefixed(&mut head, &request).map_err(|e| lost(&e))?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
    // A push is answered by nothing on this stream.
    let _ = recv.stop(0u32.into());
    send.write_all(&head).await.map_err(|e| lost(&e))?;
    let (pieces, mut encoded) = mpsc::channel::<Bytes>(PUSH_QUEUE);
    let encoding = Arc::clone(source);
    let ranges = push_chunks(have, size);
    let encoder = tokio::task::spawn_blocking(move || {
        encoding.encode(
            &ranges,
            Pieces {
                tx: pieces,
                buf: Vec::with_capacity(2 * PUSH_PIECE_BYTES),
            },
        )
    });
    let total = size - have;
    let mut sent = 0u64;
    while let Some(piece) = encoded.recv().await {
        sent += piece.len() as u64;
        send.write_chunk(piece).await.map_err(|e| lost(&e))?;
        report(
            progress,
            Progress::Uploading {
                done: sent.min(total),
                total,
                resumed_from: have,
            },
        );
    }
    encoder
        .await
        .map_err(|e| lost(&e))?
        .map_err(|e| ContentError::Io {
            path: source.path().display().to_string(),
            message: e.to_string(),
        })?;
    send.finish().map_err(|e| lost(&e))?;
    Ok(())
}

/// Offer the sealed source to one relay and push what it lacks.
async fn upload(
    endpoint: &IrohNode,
    source: &Arc<SealedSource>,
    relay: &RelayAddr,
    access: &ContentAccess,
    progress: &Option<mpsc::Sender<Progress>>,
) -> Result<(), Failed> {
    let mut link = RelayLink::open(endpoint, relay, access).await?;
    let sealed_size = source.sealed_size();
    let offer = |req| Frame::ContentOffer {
        req,
        mailbox: access.mailbox,
        hash: BlobId(source.hash()),
        size: sealed_size,
        ttl_secs: None,
    };
    let (_, have) = link.grant(offer).await?;
    retryable(async {
        if have < sealed_size {
            let connection = endpoint
                .connect_blobs(relay)
                .await
                .map_err(|e| ContentError::Unreachable(e.to_string()))?;
            let started = tokio::time::Instant::now();
            push(&connection, source, have, relay, progress).await?;
            debug!(
                ms = started.elapsed().as_millis() as u64,
                "content put: push sent"
            );
            // The relay holds the file once it read the whole push: ask until it says so.
            let mut confirmed = false;
            for _ in 0..CONFIRM_TRIES {
                let (_, have) = link.grant(offer).await?;
                if have == sealed_size {
                    confirmed = true;
                    break;
                }
                tokio::time::sleep(CONFIRM_PAUSE).await;
            }
            debug!(
                ms = started.elapsed().as_millis() as u64,
                confirmed, "content put: push confirmed"
            );
            connection.close(0u32.into(), b"done");
            if !confirmed {
                return Err(ContentError::Unreachable(format!(
                    "{relay}: the push did not complete the file"
                )));
            }
        }
        link.bye().await;
        Ok::<(), ContentError>(())
    })
    .await
}

/// A transfer that failed after its relay answered: a lost connection is worth another
/// try from the verified prefix, an unreachable or refusing relay is not.
#[derive(Debug)]
enum Failed {
    /// The relay could not be reached, or refused: go to the next relay.
    Final(ContentError),
    /// The connection was lost mid-transfer: try this relay again.
    Lost(ContentError),
}

impl From<ContentError> for Failed {
    fn from(err: ContentError) -> Self {
        Failed::Final(err)
    }
}

/// Mark the `Unreachable` failures of `work` (which runs once the relay answered) as lost
/// connections.
async fn retryable<T>(
    work: impl std::future::Future<Output = Result<T, ContentError>>,
) -> Result<T, Failed> {
    work.await.map_err(|err| match err {
        ContentError::Unreachable(_) => Failed::Lost(err),
        other => Failed::Final(other),
    })
}

/// Run `attempt` on one relay until it succeeds, fails for good, or lost its connection
/// [`ATTEMPTS_PER_RELAY`] times.
async fn with_retries<T, F: std::future::Future<Output = Result<T, Failed>>>(
    mut attempt: impl FnMut() -> F,
) -> Result<T, ContentError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(Failed::Final(err)) => return Err(err),
            Err(Failed::Lost(err)) if tries >= ATTEMPTS_PER_RELAY => return Err(err),
            Err(Failed::Lost(_)) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

fn get_error(relay: &RelayAddr, err: iroh_blobs::get::GetError) -> ContentError {
    let detail = format!("{err:?}");
    if detail.contains("HashMismatch") {
        ContentError::Integrity(format!("relay {relay} served bytes that do not verify"))
    } else if err.iroh_error_code() == Some(iroh_blobs::protocol::ERR_INTERNAL) {
        // The relay's store checks what it reads against the hash: a stored copy that does
        // not verify ends the transfer with an internal error.
        ContentError::Integrity(format!(
            "relay {relay} stopped the transfer: its stored copy does not verify"
        ))
    } else {
        ContentError::Unreachable(format!("{relay}: fetch: {err}"))
    }
}

/// What the fetching side tells the thread that opens a download.
enum Feed {
    /// Verified sealed bytes at an offset of the file.
    Bytes(u64, Bytes),
    /// Answer the offset of the next byte needed once everything before was taken (or
    /// why the download cannot go on).
    Mark(oneshot::Sender<Result<u64, ContentError>>),
}

/// Verified sealed bytes queued for the opening thread (iroh-blobs hands them over 16 KiB
/// at a time): a few MiB at most.
const FEED_QUEUE: usize = 256;

fn chunk_error(err: ChunkError, at: &Path) -> ContentError {
    match err {
        ChunkError::Integrity(i) => ContentError::Integrity(format!("chunk {i} does not open")),
        ChunkError::Length(len) => {
            ContentError::Integrity(format!("{len} sealed bytes are no whole chunks"))
        }
        ChunkError::Io(e) => io_err(at, e),
    }
}

/// The opening thread: feeds `download` until the fetching side hangs up, and answers it.
fn open_as_fed(
    mut download: PartialDownload,
    mut feed: mpsc::Receiver<Feed>,
    dest: &Path,
) -> (PartialDownload, Result<(), ContentError>) {
    let mut outcome = Ok(());
    while let Some(item) = feed.blocking_recv() {
        match item {
            Feed::Bytes(offset, bytes) => {
                if outcome.is_ok() {
                    outcome = download
                        .feed(offset, &bytes)
                        .map_err(|e| chunk_error(e, dest));
                }
            }
            Feed::Mark(reply) => {
                let _ = reply.send(outcome.clone().map(|()| download.next_offset()));
            }
        }
    }
    (download, outcome)
}

/// The offset of the next sealed byte the opening thread needs.
async fn next_needed(feed: &mpsc::Sender<Feed>) -> Result<u64, ContentError> {
    let (tx, rx) = oneshot::channel();
    let gone = || ContentError::Integrity("the download stopped opening".into());
    feed.send(Feed::Mark(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// Fetch the rest of `file` from one relay (BLAKE3-verified as it arrives) into the opening
/// thread. `fetched` counts the sealed bytes received.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    endpoint: &IrohNode,
    relay: &RelayAddr,
    access: &ContentAccess,
    file: &FileRef,
    feed: &mpsc::Sender<Feed>,
    kept: u64,
    fetched: &AtomicU64,
    progress: &Option<mpsc::Sender<Progress>>,
) -> Result<(), Failed> {
    let mut link = RelayLink::open(endpoint, relay, access).await?;
    let (size, _) = link
        .grant(|req| Frame::ContentOpen {
            req,
            mailbox: access.mailbox,
            hash: file.hash,
        })
        .await?;
    if size != file.sealed_size {
        return Err(Failed::Final(ContentError::Integrity(format!(
            "relay {relay} holds {size} bytes, the file has {}",
            file.sealed_size
        ))));
    }
    // An opening thread that failed (a chunk that does not open) fails the get for good.
    let from = next_needed(feed).await?;
    retryable(async {
        let connection = endpoint
            .connect_blobs(relay)
            .await
            .map_err(|e| ContentError::Unreachable(e.to_string()))?;
        let fail = |err: GetError| get_error(relay, err);
        let request = GetRequest::blob_ranges(
            Hash::from_bytes(file.hash.0),
            // The chunks that hold `from` and everything after.
            ChunkRanges::bytes(from..),
        );
        let connected = fsm::start(connection.clone(), request, Default::default())
            .next()
            .await
            .map_err(|e| fail(e.into()))?;
        let fsm::ConnectedNext::StartRoot(root) =
            connected.next().await.map_err(|e| fail(e.into()))?
        else {
            return Err(ContentError::Unreachable(format!(
                "{relay}: unexpected answer"
            )));
        };
        let (mut content, size) = root.next().next().await.map_err(|e| fail(e.into()))?;
        if size != file.sealed_size {
            return Err(ContentError::Integrity(format!(
                "relay {relay} serves {size} bytes, the file has {}",
                file.sealed_size
            )));
        }
        let total = file.sealed_size - kept;
        while let fsm::BlobContentNext::More((next, item)) = content.next().await {
            content = next;
            let BaoContentItem::Leaf(leaf) = item.map_err(|e| fail(e.into()))? else {
                continue;
            };
            let len = leaf.data.len() as u64;
            let done = fetched.fetch_add(len, Ordering::Relaxed) + len;
            if feed
                .send(Feed::Bytes(leaf.offset, leaf.data))
                .await
                .is_err()
            {
                break;
            }
            report(
                progress,
                Progress::Downloading {
                    done: done.min(total),
                    total,
                    resumed_from: kept,
                },
            );
        }
        connection.close(0u32.into(), b"done");
        link.bye().await;
        Ok(())
    })
    .await
}

async fn put(
    endpoint: IrohNode,
    dir: PathBuf,
    access: ContentAccess,
    group: GroupId,
    path: PathBuf,
    progress: Option<mpsc::Sender<Progress>>,
) -> Result<FileRef, ContentError> {
    let started = tokio::time::Instant::now();
    let (source, key, size) = prepare(&dir, &access, &path, &progress).await?;
    let blob = BlobId(source.hash());
    let sealed_size = source.sealed_size();
    let mut failures = Vec::new();
    let mut uploaded = 0;
    for relay in &access.relays {
        // A lost connection: the relay kept the verified prefix; go on from it.
        let result = with_retries(|| upload(&endpoint, &source, relay, &access, &progress)).await;
        match result {
            Ok(()) => uploaded += 1,
            // The file itself failed (unreadable, changed): no relay will do better.
            Err(err @ ContentError::Io { .. }) => return Err(err),
            Err(err) => {
                warn!(relay = %relay.id.short(), error = %err, "content not uploaded to a relay");
                failures.push(err);
            }
        }
    }
    drop(source);
    debug!(
        ms = started.elapsed().as_millis() as u64,
        uploaded, "content put: uploaded"
    );
    if uploaded == 0 {
        return Err(match failures.into_iter().next() {
            Some(err) => err,
            None => ContentError::Unreachable("the group has no relays".into()),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = truncate(name, crate::crypto::content::FileAnnounce::NAME_BYTES_MAX);
    Ok(FileRef {
        group,
        mailbox: access.mailbox,
        hash: blob,
        sealed_size,
        size,
        name,
        key: zeroize::Zeroizing::new(*key.expose_bytes()),
    })
}

/// Names in `content/` of the iroh-blobs store clients kept before puts and gets went
/// without one.
const RETIRED_STORE: [&str; 3] = ["blobs.db", "data", "temp"];

/// How long the tags of a get that stopped are kept for it to resume: past this, its
/// `dest.partial` is fetched again from the start (or is gone from the relays by then).
pub const PARTIAL_TAGS_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Remove the tags of gets that stopped and were not resumed for [`PARTIAL_TAGS_KEEP`] by
/// `now` (a get writes its tags as it goes, so their time is its last progress).
fn remove_abandoned_tags(dir: &Path, now: std::time::SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir.join(PARTIAL_DIR)) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let abandoned = entry.metadata().and_then(|m| m.modified()).is_ok_and(|at| {
            now.duration_since(at)
                .is_ok_and(|age| age > PARTIAL_TAGS_KEEP)
        });
        if abandoned && path.extension().is_some_and(|ext| ext == "tags") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Remove what the client's retired iroh-blobs store left in `dir` (nothing reads it).
fn remove_retired_store(dir: &Path) {
    for name in RETIRED_STORE {
        let path = dir.join(name);
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn truncate(mut name: String, max: usize) -> String {
    if name.len() > max {
        let mut end = max;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// `dest.partial` beside `dest`.
fn partial_path(dest: &Path) -> PathBuf {
    dest.with_extension(match dest.extension() {
        Some(ext) => format!("{}.partial", ext.to_string_lossy()),
        None => "partial".into(),
    })
}

/// Fetch `file` from the group's relays into `dest`, opening chunks as they arrive.
/// Answers the sealed bytes fetched. `slot` is held until the opening thread ended (a
/// get abandoned mid-way still writes what it received before the next one starts).
#[allow(clippy::too_many_arguments)]
async fn get(
    endpoint: IrohNode,
    dir: PathBuf,
    slot: OwnedSemaphorePermit,
    access: ContentAccess,
    file: FileRef,
    dest: PathBuf,
    progress: Option<mpsc::Sender<Progress>>,
) -> Result<u64, ContentError> {
    let started = tokio::time::Instant::now();
    if sealed_len(file.size) != file.sealed_size {
        return Err(ContentError::Integrity(
            "the file's sizes do not agree".into(),
        ));
    }
    let partial = partial_path(&dest);
    let tags = dir
        .join(PARTIAL_DIR)
        .join(format!("{}.tags", file.hash.to_hex()));
    let key = FileKey::from_bytes(*file.key);
    let size = file.size;
    let checking = progress.clone();
    let resume_at = partial.clone();
    let download = tokio::task::spawn_blocking(move || {
        PartialDownload::resume(key, size, &resume_at, &tags, |done, total| {
            report(&checking, Progress::Checking { done, total })
        })
    })
    .await
    .map_err(|e| io_err(&partial, e))?
    .map_err(|e| chunk_error(e, &partial))?;
    let kept = download.kept();
    let (feed, fed) = mpsc::channel(FEED_QUEUE);
    let opening_dest = dest.clone();
    let opener = tokio::task::spawn_blocking(move || {
        let opened = open_as_fed(download, fed, &opening_dest);
        drop(slot);
        opened
    });
    let fetched = AtomicU64::new(0);
    let mut outcome = next_needed(&feed).await;
    if matches!(outcome, Ok(next) if next < file.sealed_size) {
        outcome = Err(ContentError::NotFound);
        for relay in &access.relays {
            // A lost connection: go on from what was verified.
            let result = with_retries(|| {
                fetch(
                    &endpoint, relay, &access, &file, &feed, kept, &fetched, &progress,
                )
            })
            .await;
            match result {
                Ok(()) => {
                    outcome = next_needed(&feed).await;
                    break;
                }
                Err(err) => {
                    debug!(relay = %relay.id.short(), error = %err, "content not fetched from a relay");
                    // An integrity failure says more than a later relay's "not found".
                    if !matches!(outcome, Err(ContentError::Integrity(_))) {
                        outcome = Err(err);
                    }
                }
            }
        }
    }
    drop(feed);
    let (download, opened) = opener.await.map_err(|e| io_err(&dest, e))?;
    let fetched = fetched.into_inner();
    debug!(
        ms = started.elapsed().as_millis() as u64,
        fetched, "content get: fetched and opened"
    );
    let finished = match opened.and(outcome) {
        Ok(_) => {
            let target = dest.clone();
            tokio::task::spawn_blocking(move || download.finish(&target))
                .await
                .map_err(|e| io_err(&dest, e))?
                .map_err(|e| chunk_error(e, &dest))
        }
        Err(err @ ContentError::Integrity(_)) => {
            download.discard();
            Err(err)
        }
        Err(err) => Err(err),
    };
    debug!(
        ms = started.elapsed().as_millis() as u64,
        "content get: done"
    );
    finished.map(|()| fetched)
}

/// Run `work` until it ends or its caller stopped waiting (the transfer is dropped then;
/// what was verified stays for a resumed one).
async fn unless_abandoned<T, R>(
    reply: &RpcReplyPort<R>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let abandoned = async {
        while !reply.is_closed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        done = work => Some(done),
        () = abandoned => None,
    }
}

impl Actor for ContentTransferActor {
    type Msg = TransferMsg;
    type State = ContentTransferState;
    type Arguments = ContentTransferArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ContentTransferArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // What a killed put left behind, gets long abandoned, and the store clients kept
        // before.
        SealedSource::remove_stale(&args.dir);
        let now = std::time::UNIX_EPOCH + Duration::from_millis(args.clock.now_unix_ms());
        remove_abandoned_tags(&args.dir, now);
        remove_retired_store(&args.dir);
        Ok(ContentTransferState {
            dir: args.dir,
            endpoint: args.endpoint,
            slots: Arc::new(Semaphore::new(TRANSFERS_MAX)),
            tasks: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        let slots = Arc::clone(&state.slots);
        let endpoint = state.endpoint.clone();
        match message {
            TransferMsg::Put {
                access,
                group,
                path,
                progress,
                reply,
            } => {
                let dir = state.dir.clone();
                state.tasks.spawn(async move {
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return;
                    };
                    let work = put(endpoint, dir, access, group, path, progress);
                    if let Some(put) = unless_abandoned(&reply, work).await {
                        let _ = reply.send(put);
                    }
                });
            }
            TransferMsg::Get {
                access,
                file,
                dest,
                progress,
                reply,
            } => {
                let dir = state.dir.clone();
                state.tasks.spawn(async move {
                    let Ok(slot) = slots.acquire_owned().await else {
                        return;
                    };
                    let work = get(endpoint, dir, slot, access, file, dest, progress);
                    if let Some(got) = unless_abandoned(&reply, work).await {
                        let _ = reply.send(got);
                    }
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        while state.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retired_client_store_goes_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blobs.db"), b"redb").unwrap();
        for sub in ["data", "temp", "partial"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join("x"), b"x").unwrap();
        }
        remove_retired_store(dir.path());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["partial"]);
        assert!(dir.path().join("partial").join("x").exists());
    }

    #[test]
    fn the_tags_of_a_get_go_only_once_it_was_abandoned_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join(PARTIAL_DIR);
        std::fs::create_dir_all(&partial).unwrap();
        for name in ["a.tags", "b.tags", "other"] {
            std::fs::write(partial.join(name), b"tags").unwrap();
        }
        let written = std::fs::metadata(partial.join("a.tags"))
            .unwrap()
            .modified()
            .unwrap();
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(&partial)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        remove_abandoned_tags(dir.path(), written + PARTIAL_TAGS_KEEP);
        assert_eq!(names(), ["a.tags", "b.tags", "other"]);
        // `b` made progress later: only `a` (and no other kind of file) is old enough.
        let later = written + Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(partial.join("b.tags"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        remove_abandoned_tags(dir.path(), later + PARTIAL_TAGS_KEEP);
        assert_eq!(names(), ["b.tags", "other"]);
    }
}
