//! iroh QUIC transport of the `Link` seam (ALPN `zerok/1`).
//!
//! An [`IrohNode`] wraps one iroh `Endpoint` bound to a configured UDP address, with no n0
//! relay servers and no discovery: peers are dialled by the direct socket addresses in a
//! [`RelayAddr`], so LANs and offline setups work. The endpoint's secret key is the node's
//! identity ([`load_or_create_secret_key`] persists it).
//!
//! Each link is one bi-directional QUIC stream (the dialer opens it and speaks first) pumped
//! by two tasks: a writer that length-prefixes queued frames (coalescing what is queued into
//! one write) and a reader that checks each length prefix against the frame limit before it
//! buffers the body.
//!
//! Bounds, because anyone on the internet can dial a relay:
//! - QUIC itself ([`transport_config`]): a peer may open exactly the one bidi stream the
//!   protocol uses and no uni stream (opening more is a protocol violation that closes the
//!   connection), datagrams are off, and receive buffering per stream and per connection is
//!   [`RECEIVE_WINDOW_BYTES`], send buffering [`SEND_WINDOW_BYTES`].
//! - Handshakes: at most [`HANDSHAKES_IN_FLIGHT_MAX`] at once; past half of that, a peer must
//!   first prove its address with a QUIC retry (so spoofed sources cost one stateless
//!   packet); per source, the [`ConnectionSlots`] of the config (checked before the handshake
//!   starts, so one host cannot hold the handshake slots); a handshake must have its stream
//!   within `first_frame_timeout`.
//! - Links: [`ACCEPT_BACKLOG`] established links waiting for the owner; each direction's queue
//!   by bytes (`LINK_QUEUE_BYTES`, or the config's budget and pool for accepted links);
//!   [`WRITE_BATCH_BYTES_MAX`] per write.

use super::slots::{ConnectionSlots, SlotGuard};
use super::{BoxFuture, Dialer, Link, LinkError, LinkListener, LinkReceiver, LinkSender, channel};
use crate::rng::Rng;
use bytes::{BufMut, Bytes, BytesMut};
use iroh::endpoint::{Connection, QuicTransportConfig, RecvStream, SendStream, VarInt, presets};
use iroh::{Endpoint, EndpointAddr, RelayMode, SecretKey};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tracing::debug;
use zerok_messages::codec::{LENGTH_PREFIX_BYTES, body_len};
use zerok_messages::link::{LINK_QUEUE_BYTES, QueuePool, channel_with};
use zerok_messages::wire::ALPN;
use zerok_messages::{DeviceId, RelayAddr};

/// Incoming handshakes processed at once: enough for a burst of reconnecting clients, few
/// enough that half-open dials cannot eat the relay's CPU and memory.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Established links waiting for the owner to accept them; beyond this new ones are closed.
pub const ACCEPT_BACKLOG: usize = 256;
/// Largest coalesced write: batching small frames saves syscalls, the cap keeps one link
/// from monopolising the writer's buffer.
pub const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;
/// QUIC application close code of a local abort.
const CLOSE_ABORT: u32 = 1;
/// QUIC flow-control window per stream and per connection: what a peer may send that we have
/// not read yet. 1 MiB moves 10 GB/s on loopback and ~20 MB/s per connection at 50 ms RTT; a
/// larger window only lets a peer park more bytes in our memory (QUIC's default is 1.25 MB
/// per stream times 100 streams per connection). Frames larger than the window still pass:
/// the reader consumes as it goes.
///
/// It is also a correctness bound. noq (1.4, as quinn 0.11 before its PR #2814) keeps what a
/// stream received and the application has not read as one span per STREAM frame, and closes
/// the whole connection ("too many gaps in stream buffer") once it holds more than
/// [`NOQ_STREAM_SPANS_MAX`] spans it cannot merge, gaps or not. A reader that lags behind a
/// full window (the relay's content store writing a push) then loses its connection: with 4
/// and 8 MiB windows on the relay, every 256 MiB push failed that way here (session 19). A
/// window of full-size frames stays below the limit.
pub const RECEIVE_WINDOW_BYTES: u32 = 1024 * 1024;
/// noq's bound on a stream's unmerged received spans (`MAX_CHUNKS` of its assembler).
const NOQ_STREAM_SPANS_MAX: u32 = 1024;
/// Stream data in a full-size packet at QUIC's minimum datagram size (1,200 bytes, less the
/// short header, the AEAD tag and the STREAM frame's header).
const MIN_FULL_FRAME_BYTES: u32 = 1200 - 60;
const _: () = assert!(
    RECEIVE_WINDOW_BYTES / MIN_FULL_FRAME_BYTES < NOQ_STREAM_SPANS_MAX,
    "a lagging reader of a full window would hit noq's span limit and lose its connection"
);
/// What QUIC keeps of our sent, not yet acknowledged data per connection: a pull page in
/// flight. (QUIC's default is eight times the receive window.)
pub const SEND_WINDOW_BYTES: u64 = 1024 * 1024;
/// Streams a peer may open: the protocol uses one bidi stream per connection, opened by the
/// dialer; a second one is refused by flow control and opening it anyway closes the
/// connection.
const BIDI_STREAMS_MAX: u32 = 1;
/// How long a half-closed link waits for its peer to take the last frames (a `Bye`) before
/// the connection is dropped.
const LINGER: Duration = Duration::from_secs(10);

/// The QUIC settings of every zerok endpoint (see the module doc for why each bound).
pub fn transport_config() -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(VarInt::from_u32(BIDI_STREAMS_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW_BYTES))
        .send_window(SEND_WINDOW_BYTES)
        .datagram_receive_buffer_size(None)
        .build()
}

/// How an [`IrohNode`] is set up.
#[derive(Clone)]
pub struct IrohConfig {
    /// The node's identity key (a secret: never logged).
    pub secret_key: [u8; 32],
    /// UDP address to bind.
    pub bind_addr: SocketAddr,
    /// Bound on dialling a peer.
    pub dial_timeout: Duration,
    /// Bound on an incoming connection's handshake and stream (a peer that has not opened
    /// its stream by then is dropped, so half-open dials cannot hold handshake slots).
    pub first_frame_timeout: Duration,
    /// Per-source and per-device slots of incoming connections (`None`: unlimited).
    pub slots: Option<Arc<ConnectionSlots>>,
    /// Queue budget of each accepted link towards its peer: what a peer may leave unread
    /// before the owner is told the queue is full.
    pub accepted_queue_bytes: usize,
    /// Budget shared by the queues of every accepted link (`None`: no shared bound).
    pub accepted_queue_pool: Option<Arc<QueuePool>>,
    /// Bind `bind_addr` only (a relay listens where its operator said, and per-source limits
    /// see one address family per client); otherwise iroh also binds its default sockets of
    /// the other address family (a client reaching relays over IPv4 and IPv6).
    pub is_bind_exact: bool,
    /// Where connections of iroh-blobs' ALPN go (a relay's content service); `None`: the
    /// endpoint speaks only `zerok/1`.
    pub blobs: Option<mpsc::Sender<BlobsConnection>>,
}

/// An accepted iroh-blobs connection (ALPN [`iroh_blobs::ALPN`]), with the per-source
/// slots it holds until it ends.
pub struct BlobsConnection {
    /// The connection.
    pub connection: Connection,
    /// Its slots.
    pub guards: Vec<SlotGuard>,
}

impl BlobsConnection {
    /// Close it with `reason`.
    pub fn refuse(self, reason: &[u8]) {
        self.connection.close(VarInt::from_u32(CLOSE_ABORT), reason);
    }
}

impl std::fmt::Debug for IrohConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohConfig")
            .field("bind_addr", &self.bind_addr)
            .field("dial_timeout", &self.dial_timeout)
            .field("first_frame_timeout", &self.first_frame_timeout)
            .field("slots", &self.slots.as_ref().map(|slots| slots.limits()))
            .field("accepted_queue_bytes", &self.accepted_queue_bytes)
            .field("blobs", &self.blobs.is_some())
            .finish_non_exhaustive()
    }
}

impl IrohConfig {
    /// Defaults: dial within 10 s, stream within 10 s, no slot limits, default queues.
    pub fn new(secret_key: [u8; 32], bind_addr: SocketAddr) -> Self {
        Self {
            secret_key,
            bind_addr,
            dial_timeout: Duration::from_secs(10),
            first_frame_timeout: Duration::from_secs(10),
            slots: None,
            accepted_queue_bytes: LINK_QUEUE_BYTES,
            accepted_queue_pool: None,
            is_bind_exact: false,
            blobs: None,
        }
    }
}

/// One iroh endpoint that can listen and dial. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IrohNode {
    endpoint: Endpoint,
    config: Arc<IrohConfig>,
}

fn setup(err: impl std::fmt::Display) -> LinkError {
    LinkError::Setup(err.to_string())
}

impl IrohNode {
    /// Bind the endpoint.
    pub async fn bind(config: IrohConfig) -> Result<IrohNode, LinkError> {
        let mut alpns = vec![ALPN.to_vec()];
        if config.blobs.is_some() {
            alpns.push(iroh_blobs::ALPN.to_vec());
        }
        let mut builder = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(&config.secret_key))
            .alpns(alpns)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .transport_config(transport_config());
        if config.is_bind_exact {
            builder = builder.clear_ip_transports();
        }
        let endpoint = builder
            .bind_addr(config.bind_addr)
            .map_err(setup)?
            .bind()
            .await
            .map_err(setup)?;
        Ok(IrohNode {
            endpoint,
            config: Arc::new(config),
        })
    }

    /// This node's identity.
    pub fn local_id(&self) -> DeviceId {
        DeviceId(*self.endpoint.id().as_bytes())
    }

    /// A dialable address of this node: unspecified bind IPs become loopback.
    pub fn local_addr(&self) -> RelayAddr {
        let addrs = self
            .endpoint
            .bound_sockets()
            .into_iter()
            .map(|mut addr| {
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                addr
            })
            .take(zerok_messages::addr::RELAY_ADDR_SOCKETS_MAX)
            .collect();
        RelayAddr {
            id: self.local_id(),
            addrs,
        }
    }

    /// Start accepting links.
    pub fn listen(&self) -> LinkListener {
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        tokio::spawn(accept_loop(self.endpoint.clone(), self.config.clone(), tx));
        LinkListener::new(self.local_id(), rx)
    }

    /// An iroh-blobs connection to a relay's content service, from this endpoint (so the
    /// relay knows it as this device, which its grants name).
    pub async fn connect_blobs(&self, addr: &RelayAddr) -> Result<Connection, LinkError> {
        let unreachable = |detail: String| unreachable(addr, detail);
        let target = endpoint_addr(addr)?;
        tokio::time::timeout(
            self.config.dial_timeout,
            self.endpoint.connect(target, iroh_blobs::ALPN),
        )
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|err| unreachable(err.to_string()))
    }

    /// A dialer using this endpoint.
    pub fn dialer(&self) -> IrohDialer {
        IrohDialer { node: self.clone() }
    }

    /// Close the endpoint and every connection on it.
    pub async fn close(&self) {
        self.endpoint.close().await;
    }
}

async fn accept_loop(endpoint: Endpoint, config: Arc<IrohConfig>, links: mpsc::Sender<Link>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let incoming = tokio::select! {
            biased;
            () = links.closed() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let remote_addr = match incoming.remote_addr() {
            iroh::endpoint::IncomingAddr::Ip(addr) => Some(addr),
            _ => None,
        };
        // Under load, a peer proves it can receive at its address before it costs a
        // handshake: a spoofed flood then costs one stateless retry packet each.
        if handshakes.available_permits() < HANDSHAKES_IN_FLIGHT_MAX / 2
            && !incoming.remote_addr_validated()
        {
            if let Err(err) = incoming.retry() {
                err.into_incoming().refuse();
            }
            continue;
        }
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            debug!("handshake slots full, connection refused");
            incoming.refuse();
            continue;
        };
        let slot = match (&config.slots, remote_addr) {
            (Some(slots), Some(addr)) => match slots.enter_handshake(addr.ip()) {
                Ok(slot) => Some(slot),
                Err(why) => {
                    debug!(
                        reason = why.as_str(),
                        "connection refused before its handshake"
                    );
                    incoming.refuse();
                    continue;
                }
            },
            _ => None,
        };
        let links = links.clone();
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let _permit = permit;
            let accepted = tokio::time::timeout(config.first_frame_timeout, async {
                let connection = incoming.await.map_err(|err| err.to_string())?;
                if connection.alpn() == iroh_blobs::ALPN {
                    return Ok(Err(connection));
                }
                let (send, recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(Ok((connection, send, recv)))
            })
            .await;
            let (connection, send, recv) = match accepted {
                Ok(Ok(Ok(accepted))) => accepted,
                Ok(Ok(Err(blobs))) => {
                    accept_blobs(&config, slot, blobs);
                    return;
                }
                Ok(Err(err)) => {
                    debug!(error = %err, "incoming connection failed");
                    return;
                }
                Err(_) => {
                    debug!("incoming connection opened no stream in time");
                    return;
                }
            };
            let Some(guards) = establish(&config, slot, &connection) else {
                return;
            };
            let (out_tx, out_rx) = channel_with(
                config.accepted_queue_bytes,
                config.accepted_queue_pool.clone(),
            );
            let link = start_link(
                connection.clone(),
                send,
                recv,
                remote_addr,
                (out_tx, out_rx),
                guards,
            );
            if links.try_send(link).is_err() {
                connection.close(VarInt::from_u32(CLOSE_ABORT), b"busy");
            }
        });
    }
}

/// The handshake of `connection` is done: turn its handshake slot into its source's and its
/// device's connection slots, or close it (`None`) when either is full.
fn establish(
    config: &IrohConfig,
    slot: Option<SlotGuard>,
    connection: &Connection,
) -> Option<Vec<SlotGuard>> {
    let (Some(slots), Some(slot)) = (&config.slots, slot) else {
        return Some(Vec::new());
    };
    let device = DeviceId(*connection.remote_id().as_bytes());
    match slots.established(slot, device) {
        Ok(guards) => Some(guards.into_iter().collect()),
        Err(why) => {
            debug!(
                reason = why.as_str(),
                "connection refused after its handshake"
            );
            connection.close(VarInt::from_u32(CLOSE_ABORT), why.to_string().as_bytes());
            None
        }
    }
}

/// Hand an iroh-blobs connection to the content service, holding its slots; refused when
/// the endpoint has no content service or it is busy.
fn accept_blobs(config: &IrohConfig, slot: Option<SlotGuard>, connection: Connection) {
    let Some(sink) = &config.blobs else {
        connection.close(VarInt::from_u32(CLOSE_ABORT), b"no content service");
        return;
    };
    let Some(guards) = establish(config, slot, &connection) else {
        return;
    };
    if let Err(err) = sink.try_send(BlobsConnection { connection, guards }) {
        let blobs = match err {
            mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
        };
        blobs.refuse(b"busy");
    }
}

fn unreachable(addr: &RelayAddr, detail: String) -> LinkError {
    LinkError::Unreachable {
        addr: addr.to_string(),
        detail,
    }
}

/// Where iroh dials `addr`: its endpoint id at its direct socket addresses.
fn endpoint_addr(addr: &RelayAddr) -> Result<EndpointAddr, LinkError> {
    let key = iroh::PublicKey::from_bytes(addr.id.as_bytes())
        .map_err(|err| unreachable(addr, format!("invalid endpoint id: {err}")))?;
    let mut target = EndpointAddr::new(key);
    for socket in &addr.addrs {
        target = target.with_ip_addr(*socket);
    }
    Ok(target)
}

/// Dials peers from an [`IrohNode`].
#[derive(Clone, Debug)]
pub struct IrohDialer {
    node: IrohNode,
}

impl IrohDialer {
    async fn connect(&self, addr: &RelayAddr) -> Result<Link, LinkError> {
        let unreachable = |detail: String| unreachable(addr, detail);
        let target = endpoint_addr(addr)?;
        let timeout = self.node.config.dial_timeout;
        let dialled = tokio::time::timeout(timeout, async {
            let connection = self
                .node
                .endpoint
                .connect(target, ALPN)
                .await
                .map_err(|err| unreachable(err.to_string()))?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|err| unreachable(err.to_string()))?;
            Ok::<_, LinkError>((connection, send, recv))
        })
        .await
        .map_err(|_| LinkError::Timeout {
            what: "dial",
            after_ms: timeout.as_millis() as u64,
        })??;
        let (connection, send, recv) = dialled;
        let actual = DeviceId(*connection.remote_id().as_bytes());
        if actual != addr.id {
            connection.close(VarInt::from_u32(CLOSE_ABORT), b"wrong peer");
            return Err(LinkError::WrongPeer {
                expected: addr.id,
                actual,
            });
        }
        Ok(start_link(
            connection,
            send,
            recv,
            None,
            channel(),
            Vec::new(),
        ))
    }
}

impl Dialer for IrohDialer {
    fn dial<'a>(&'a self, addr: &'a RelayAddr) -> BoxFuture<'a, Result<Link, LinkError>> {
        Box::pin(self.connect(addr))
    }

    fn local_id(&self) -> DeviceId {
        self.node.local_id()
    }
}

fn start_link(
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    remote_addr: Option<SocketAddr>,
    (out_tx, out_rx): (LinkSender, LinkReceiver),
    slots: Vec<SlotGuard>,
) -> Link {
    let peer = DeviceId(*connection.remote_id().as_bytes());
    let (in_tx, in_rx) = channel();
    // The slots are the connection's until both pumps ended: then no handle of the
    // connection is left and it is closed.
    let slots = Arc::new(slots);
    tokio::spawn(write_pump(
        connection.clone(),
        send,
        out_rx,
        Arc::clone(&slots),
    ));
    tokio::spawn(read_pump(connection, recv, in_tx, slots));
    Link {
        peer,
        remote_addr,
        sender: out_tx,
        receiver: in_rx,
    }
}

fn put_frame(buffer: &mut BytesMut, body: &Bytes) {
    buffer.put_u32(u32::try_from(body.len()).expect("frames are checked against the limit"));
    buffer.put_slice(body);
}

async fn write_pump(
    connection: Connection,
    mut send: SendStream,
    mut frames: LinkReceiver,
    _slots: Arc<Vec<SlotGuard>>,
) {
    let mut buffer = BytesMut::new();
    loop {
        let body = match frames.recv().await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(reason) => {
                connection.close(VarInt::from_u32(CLOSE_ABORT), reason.to_string().as_bytes());
                return;
            }
        };
        buffer.clear();
        put_frame(&mut buffer, &body);
        let mut abort = None;
        while buffer.len() < WRITE_BATCH_BYTES_MAX {
            match frames.try_recv() {
                Some(Ok(body)) => put_frame(&mut buffer, &body),
                Some(Err(reason)) => {
                    abort = Some(reason);
                    break;
                }
                None => break,
            }
        }
        let written = tokio::select! {
            biased;
            () = frames.aborted() => Err(()),
            written = send.write_all(&buffer) => written.map_err(|_| ()),
        };
        if written.is_err() {
            // A peer that stopped reading is aborted without waiting for the write.
            connection.close(VarInt::from_u32(CLOSE_ABORT), b"aborted");
            return;
        }
        if let Some(reason) = abort {
            connection.close(VarInt::from_u32(CLOSE_ABORT), reason.to_string().as_bytes());
            return;
        }
    }
    // Every sender is gone: half-close, and keep the connection open until the peer is done,
    // or for LINGER at most (a peer that does not read must not keep it forever).
    let _ = send.finish();
    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
}

async fn read_pump(
    connection: Connection,
    mut recv: RecvStream,
    frames: LinkSender,
    _slots: Arc<Vec<SlotGuard>>,
) {
    loop {
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        let read = tokio::select! {
            biased;
            () = frames.closed() => {
                let _ = recv.stop(VarInt::from_u32(0));
                return;
            }
            read = recv.read_exact(&mut prefix) => read,
        };
        match read {
            Ok(()) => {}
            Err(iroh::endpoint::ReadExactError::FinishedEarly(0)) => return,
            Err(err) => {
                frames.abort(&err.to_string());
                return;
            }
        }
        let len = match body_len(prefix) {
            Ok(len) => len,
            Err(err) => {
                frames.fail(LinkError::Protocol(err.to_string()));
                connection.close(VarInt::from_u32(CLOSE_ABORT), b"frame too large");
                return;
            }
        };
        let mut body = vec![0u8; len];
        if let Err(err) = recv.read_exact(&mut body).await {
            frames.abort(&err.to_string());
            return;
        }
        if frames.send(Bytes::from(body)).await.is_err() {
            let _ = recv.stop(VarInt::from_u32(0));
            return;
        }
    }
}

/// Read the node's 32-byte secret key from `path`, or create it (mode 0600, written to a
/// temporary file, synced, renamed). A file of another length is an error, never replaced.
pub fn load_or_create_secret_key(path: &Path, rng: &mut Rng) -> Result<[u8; 32], LinkError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            return bytes.as_slice().try_into().map_err(|_| {
                LinkError::Setup(format!(
                    "key file {} has {} bytes, expected 32",
                    path.display(),
                    bytes.len()
                ))
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(LinkError::Setup(format!(
                "reading {}: {err}",
                path.display()
            )));
        }
    }
    let key: [u8; 32] = rng.bytes();
    write_file_durably(path, &key)
        .map_err(|err| LinkError::Setup(format!("writing {}: {err}", path.display())))?;
    Ok(key)
}

/// Write `bytes` to `path` with mode 0600: into a temporary file beside it (made anew, so a
/// stale, looser one does not lend it its mode), synced, renamed over `path`, and the
/// directory synced, so after a crash or power cut `path` holds either the old content or all
/// of the new, and the rename itself is durable (`blob_store::fs::write_file_durably`, whose
/// tests cut the power at each of its syncs).
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::relay::blob_store::fs::write_file_durably(
        &crate::relay::blob_store::fs::OsFs,
        path,
        bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_durably_written_file_is_private_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.addr");
        // A stale temp file of a crashed write, world-readable.
        let temp = dir.path().join("relay.tmp");
        std::fs::write(&temp, b"stale").unwrap();
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file_durably(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(mode(&path), 0o600);
        assert!(!temp.exists());
        write_file_durably(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the file itself"
        );
    }
}
