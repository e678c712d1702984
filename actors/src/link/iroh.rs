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
//! buffers the body. Bounds: [`HANDSHAKES_IN_FLIGHT_MAX`] concurrent incoming handshakes,
//! [`ACCEPT_BACKLOG`] established links waiting for the owner, `LINK_QUEUE_FRAMES` per
//! direction, [`WRITE_BATCH_BYTES_MAX`] per write.

use super::{
    BoxFuture, Dialer, Link, LinkError, LinkListener, LinkReceiver, LinkSender, Wire, channel,
};
use crate::rng::Rng;
use bytes::{BufMut, Bytes, BytesMut};
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt, presets};
use iroh::{Endpoint, EndpointAddr, RelayMode, SecretKey};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tracing::debug;
use zerok_messages::codec::{LENGTH_PREFIX_BYTES, body_len};
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

/// How an [`IrohNode`] is set up.
#[derive(Clone)]
pub struct IrohConfig {
    /// The node's identity key (a secret: never logged).
    pub secret_key: [u8; 32],
    /// UDP address to bind.
    pub bind_addr: SocketAddr,
    /// Bound on dialling a peer.
    pub dial_timeout: Duration,
    /// Bound on an incoming connection's first frame.
    pub first_frame_timeout: Duration,
}

impl std::fmt::Debug for IrohConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohConfig")
            .field("bind_addr", &self.bind_addr)
            .field("dial_timeout", &self.dial_timeout)
            .field("first_frame_timeout", &self.first_frame_timeout)
            .finish_non_exhaustive()
    }
}

impl IrohConfig {
    /// Defaults: dial within 10 s, first frame within 10 s.
    pub fn new(secret_key: [u8; 32], bind_addr: SocketAddr) -> Self {
        Self {
            secret_key,
            bind_addr,
            dial_timeout: Duration::from_secs(10),
            first_frame_timeout: Duration::from_secs(10),
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
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(&config.secret_key))
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
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
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let links = links.clone();
        let first_frame_timeout = config.first_frame_timeout;
        let remote_addr = match incoming.remote_addr() {
            iroh::endpoint::IncomingAddr::Ip(addr) => Some(addr),
            _ => None,
        };
        tokio::spawn(async move {
            let _permit = permit;
            let accepted = tokio::time::timeout(first_frame_timeout, async {
                let connection = incoming.await.map_err(|err| err.to_string())?;
                let (send, recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((connection, send, recv))
            })
            .await;
            match accepted {
                Ok(Ok((connection, send, recv))) => {
                    let link = start_link(connection.clone(), send, recv, remote_addr);
                    if links.try_send(link).is_err() {
                        connection.close(VarInt::from_u32(CLOSE_ABORT), b"busy");
                    }
                }
                Ok(Err(err)) => debug!(error = %err, "incoming connection failed"),
                Err(_) => debug!("incoming connection sent no frame in time"),
            }
        });
    }
}

/// Dials peers from an [`IrohNode`].
#[derive(Clone, Debug)]
pub struct IrohDialer {
    node: IrohNode,
}

impl IrohDialer {
    async fn connect(&self, addr: &RelayAddr) -> Result<Link, LinkError> {
        let unreachable = |detail: String| LinkError::Unreachable {
            addr: addr.to_string(),
            detail,
        };
        let key = iroh::PublicKey::from_bytes(addr.id.as_bytes())
            .map_err(|err| unreachable(format!("invalid endpoint id: {err}")))?;
        let mut target = EndpointAddr::new(key);
        for socket in &addr.addrs {
            target = target.with_ip_addr(*socket);
        }
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
        Ok(start_link(connection, send, recv, None))
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
) -> Link {
    let peer = DeviceId(*connection.remote_id().as_bytes());
    let (out_tx, out_rx) = channel();
    let (in_tx, in_rx) = channel();
    tokio::spawn(write_pump(connection.clone(), send, out_rx));
    tokio::spawn(read_pump(connection, recv, in_tx));
    Link {
        peer,
        remote_addr,
        sender: LinkSender::new(out_tx),
        receiver: LinkReceiver::new(in_rx),
    }
}

fn put_frame(buffer: &mut BytesMut, body: &Bytes) {
    buffer.put_u32(u32::try_from(body.len()).expect("frames are checked against the limit"));
    buffer.put_slice(body);
}

async fn write_pump(
    connection: Connection,
    mut send: SendStream,
    mut frames: mpsc::Receiver<Wire>,
) {
    let mut buffer = BytesMut::new();
    while let Some(item) = frames.recv().await {
        let body = match item {
            Ok(body) => body,
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
                Ok(Ok(body)) => put_frame(&mut buffer, &body),
                Ok(Err(reason)) => {
                    abort = Some(reason);
                    break;
                }
                Err(_) => break,
            }
        }
        if send.write_all(&buffer).await.is_err() {
            return;
        }
        if let Some(reason) = abort {
            connection.close(VarInt::from_u32(CLOSE_ABORT), reason.to_string().as_bytes());
            return;
        }
    }
    // Every sender is gone: half-close, and keep the connection open until the peer is done.
    let _ = send.finish();
    let _ = send.stopped().await;
}

async fn read_pump(connection: Connection, mut recv: RecvStream, frames: mpsc::Sender<Wire>) {
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
                let _ = frames
                    .send(Err(Box::new(LinkError::Reset(err.to_string()))))
                    .await;
                return;
            }
        }
        let len = match body_len(prefix) {
            Ok(len) => len,
            Err(err) => {
                let _ = frames
                    .send(Err(Box::new(LinkError::Protocol(err.to_string()))))
                    .await;
                connection.close(VarInt::from_u32(CLOSE_ABORT), b"frame too large");
                return;
            }
        };
        let mut body = vec![0u8; len];
        if let Err(err) = recv.read_exact(&mut body).await {
            let _ = frames
                .send(Err(Box::new(LinkError::Reset(err.to_string()))))
                .await;
            return;
        }
        if frames.send(Ok(Bytes::from(body))).await.is_err() {
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
    let temp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        file.write_all(&key)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        Ok(())
    };
    write().map_err(|err| LinkError::Setup(format!("writing {}: {err}", path.display())))?;
    Ok(key)
}
