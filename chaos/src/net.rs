//! The `Link` seam over turmoil's simulated TCP: relays and clients of a simulation talk
//! through it exactly as they do through iroh QUIC, and turmoil's network faults (partition,
//! hold, latency, loss of a host) apply to them.
//!
//! A connection starts with both sides' 32-byte ids (dialer first; the simulation is not a
//! security boundary, the dialer checks the id it expected). Frames are length-prefixed as on
//! iroh's stream; a prefix of [`ABORT_MARKER`] followed by a length-prefixed reason carries
//! an abort, so the peer sees a reset and not a clean end. Dropping the sender half-closes:
//! an [`END_MARKER`], then FIN; the peer reads what was sent, then the end. A stream that
//! ends without the marker (its host crashed) is a reset, as a QUIC connection whose peer
//! died is.

use bytes::{BufMut, Bytes, BytesMut};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use turmoil::net::{TcpListener, TcpStream};
use zerok_actors::link::{
    BoxFuture, Dialer, Link, LinkError, LinkListener, LinkReceiver, LinkSender, channel,
};
use zerok_messages::codec::{LENGTH_PREFIX_BYTES, body_len};
use zerok_messages::{DeviceId, RelayAddr};

/// The port relays of a simulation listen on.
pub const RELAY_PORT: u16 = 4433;

/// A length prefix no frame has (frames are at most `FRAME_BYTES_MAX`): an abort follows.
pub const ABORT_MARKER: u32 = u32::MAX;

/// A length prefix no frame has: the sender finished cleanly.
pub const END_MARKER: u32 = u32::MAX - 1;

/// Longest abort reason sent.
const ABORT_REASON_BYTES_MAX: usize = 256;

/// Accepted connections queued before new ones are refused.
const ACCEPT_BACKLOG: usize = 128;

/// A dial or an accepted connection's id exchange that takes longer fails.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Listen as `id` on [`RELAY_PORT`] of the current simulated host.
pub async fn listen(id: DeviceId) -> std::io::Result<LinkListener> {
    let tcp = TcpListener::bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        RELAY_PORT,
    ))
    .await?;
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(accept_loop(tcp, id, tx));
    Ok(LinkListener::new(id, rx))
}

/// The address of the relay `id` listening on simulated host `host`.
pub fn relay_addr(host: &str, id: DeviceId) -> RelayAddr {
    RelayAddr {
        id,
        addrs: vec![SocketAddr::new(turmoil::lookup(host), RELAY_PORT)],
    }
}

async fn accept_loop(tcp: TcpListener, id: DeviceId, links: mpsc::Sender<Link>) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = links.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let Ok((mut stream, remote)) = accepted else {
            continue;
        };
        let links = links.clone();
        tokio::spawn(async move {
            let exchanged = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut peer = [0u8; 32];
                stream.read_exact(&mut peer).await?;
                stream.write_all(&id.0).await?;
                Ok::<_, std::io::Error>(DeviceId(peer))
            })
            .await;
            if let Ok(Ok(peer)) = exchanged {
                let _ = links.try_send(start_link(stream, peer, Some(remote)));
            }
        });
    }
}

/// Dials relays of the simulation as `local_id`.
#[derive(Debug, Clone)]
pub struct SimDialer {
    local_id: DeviceId,
}

impl SimDialer {
    /// A dialer presenting `local_id`.
    pub fn new(local_id: DeviceId) -> Self {
        Self { local_id }
    }

    async fn connect(&self, addr: &RelayAddr) -> Result<Link, LinkError> {
        let unreachable = |detail: String| LinkError::Unreachable {
            addr: addr.to_string(),
            detail,
        };
        let target = *addr
            .addrs
            .first()
            .ok_or_else(|| unreachable("no address".into()))?;
        let handshake = async {
            let mut stream = TcpStream::connect(target)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            stream
                .write_all(&self.local_id.0)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut peer = [0u8; 32];
            stream
                .read_exact(&mut peer)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let peer = DeviceId(peer);
            if peer != addr.id {
                return Err(LinkError::WrongPeer {
                    expected: addr.id,
                    actual: peer,
                });
            }
            Ok(start_link(stream, peer, Some(target)))
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| LinkError::Timeout {
                what: "dial",
                after_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
            })?
    }
}

impl Dialer for SimDialer {
    fn dial<'a>(&'a self, addr: &'a RelayAddr) -> BoxFuture<'a, Result<Link, LinkError>> {
        Box::pin(self.connect(addr))
    }

    fn local_id(&self) -> DeviceId {
        self.local_id
    }
}

fn start_link(stream: TcpStream, peer: DeviceId, remote_addr: Option<SocketAddr>) -> Link {
    let (read, write) = stream.into_split();
    let (out_tx, out_rx) = channel();
    let (in_tx, in_rx) = channel();
    tokio::spawn(write_pump(write, out_rx));
    tokio::spawn(read_pump(read, in_tx));
    Link {
        peer,
        remote_addr,
        sender: out_tx,
        receiver: in_rx,
    }
}

fn put_abort(buffer: &mut BytesMut, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(ABORT_REASON_BYTES_MAX)];
    buffer.put_u32(ABORT_MARKER);
    buffer.put_u32(reason.len() as u32);
    buffer.put_slice(reason);
}

thread_local! {
    /// Hosts (by address) whose outgoing links are limited, in bytes per second. Every host
    /// of a simulation runs on its thread, so this is the simulation's.
    static BANDWIDTH: RefCell<BTreeMap<IpAddr, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Limit what host `ip` sends on each of its links to `bytes_per_sec` (`None`: unlimited).
/// Applies to frames written from now on, on links old and new.
pub fn set_bandwidth(ip: IpAddr, bytes_per_sec: Option<u64>) {
    BANDWIDTH.with(|b| match bytes_per_sec {
        Some(rate) => {
            b.borrow_mut().insert(ip, rate.max(1));
        }
        None => {
            b.borrow_mut().remove(&ip);
        }
    });
}

/// Lift every bandwidth limit, forget every link end waiting (a simulation ended).
pub fn clear_bandwidth() {
    BANDWIDTH.with(|b| b.borrow_mut().clear());
    ENDING.with(|e| e.borrow_mut().clear());
}

/// A link end waits this long before it ends (sends its end or reset), with every other
/// end of its host that waits then, in address order.
const ENDING_TICK: Duration = Duration::from_millis(1);

/// A host's link ends waiting for their turn.
#[derive(Default)]
struct Ending {
    /// `(local, peer, half)` (0: read, 1: write) → its turn.
    turns: BTreeMap<(SocketAddr, SocketAddr, u8), oneshot::Sender<()>>,
    /// The task that gives the turns (gone with its host when it crashes).
    giver: Weak<()>,
}

thread_local! {
    /// Link ends waiting, per host (by address).
    static ENDING: RefCell<BTreeMap<IpAddr, Ending>> = const { RefCell::new(BTreeMap::new()) };
}

/// Wait for this link end's turn to end. Links end when their owners drop them: when a
/// supervisor dies, its children (each holding links) die in an order that changes from one
/// process to the next (ractor keeps them in a `HashMap`). Turmoil draws every message's
/// latency from one generator as it is sent, so that order would change every later draw;
/// the ends of one host that fall in the same tick go out in address order instead, and a
/// seed replays the same run.
async fn turn_to_end(local: Option<SocketAddr>, peer: Option<SocketAddr>, half: u8) {
    let (Some(local), Some(peer)) = (local, peer) else {
        return;
    };
    let (tx, rx) = oneshot::channel();
    let giver = ENDING.with(|e| {
        let mut e = e.borrow_mut();
        let ending = e.entry(local.ip()).or_default();
        ending.turns.insert((local, peer, half), tx);
        if ending.giver.upgrade().is_some() {
            return None;
        }
        let alive = Arc::new(());
        ending.giver = Arc::downgrade(&alive);
        Some(alive)
    });
    if let Some(alive) = giver {
        tokio::spawn(give_turns(local.ip(), alive));
    }
    let _ = rx.await;
}

/// After a tick, wake every end of host `ip` waiting, in address order (a host's tasks run
/// in the order they were woken).
async fn give_turns(ip: IpAddr, alive: Arc<()>) {
    tokio::time::sleep(ENDING_TICK).await;
    let turns = ENDING.with(|e| {
        let mut e = e.borrow_mut();
        let ending = e.entry(ip).or_default();
        ending.giver = Weak::new();
        std::mem::take(&mut ending.turns)
    });
    drop(alive);
    for (_, turn) in turns {
        let _ = turn.send(());
    }
}

/// How long `bytes` take to leave host `ip` at its bandwidth (none when unlimited).
fn transmit_time(ip: Option<IpAddr>, bytes: usize) -> Option<Duration> {
    let rate = BANDWIDTH.with(|b| ip.and_then(|ip| b.borrow().get(&ip).copied()))?;
    Some(Duration::from_micros(
        (bytes as u64).saturating_mul(1_000_000) / rate,
    ))
}

async fn write_pump(mut write: OwnedWriteHalf, mut frames: LinkReceiver) {
    let mut buffer = BytesMut::new();
    let (local, peer) = (write.local_addr().ok(), write.peer_addr().ok());
    loop {
        buffer.clear();
        match frames.recv().await {
            Ok(Some(body)) => {
                buffer.put_u32(body.len() as u32);
                buffer.put_slice(&body);
            }
            Ok(None) => {
                // Every sender is gone: half-close.
                turn_to_end(local, peer, 1).await;
                let _ = write.write_all(&END_MARKER.to_be_bytes()).await;
                let _ = write.shutdown().await;
                return;
            }
            Err(reason) => {
                put_abort(&mut buffer, &reason.to_string());
                turn_to_end(local, peer, 1).await;
                let _ = write.write_all(&buffer).await;
                let _ = write.shutdown().await;
                return;
            }
        }
        let written = tokio::select! {
            biased;
            () = frames.aborted() => None,
            written = write.write_all(&buffer) => Some(written),
        };
        match written {
            Some(Ok(())) => {
                if let Some(pace) = transmit_time(local.map(|a| a.ip()), buffer.len()) {
                    tokio::time::sleep(pace).await;
                }
            }
            // The connection broke; the read side reports it.
            Some(Err(_)) => return,
            None => {
                buffer.clear();
                put_abort(&mut buffer, "aborted");
                turn_to_end(local, peer, 1).await;
                let _ = write.write_all(&buffer).await;
                let _ = write.shutdown().await;
                return;
            }
        }
    }
}

/// Read exactly `buf.len()` bytes; `Ok(false)` on a clean end before the first byte.
async fn read_or_end(read: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = read.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

async fn read_pump(mut read: OwnedReadHalf, frames: LinkSender) {
    let (local, peer) = (read.local_addr().ok(), read.peer_addr().ok());
    loop {
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        let read_prefix = tokio::select! {
            biased;
            () = frames.closed() => {
                // Dropping the read half with data unread resets the stream.
                turn_to_end(local, peer, 0).await;
                return;
            }
            read_prefix = read_or_end(&mut read, &mut prefix) => read_prefix,
        };
        match read_prefix {
            Ok(true) => {}
            Ok(false) => {
                frames.abort("connection lost");
                return;
            }
            Err(err) => {
                frames.abort(&err.to_string());
                return;
            }
        }
        if u32::from_be_bytes(prefix) == END_MARKER {
            // A clean end: dropping `frames` ends the link after what was queued.
            return;
        }
        if u32::from_be_bytes(prefix) == ABORT_MARKER {
            let mut reason = String::from("aborted by the peer");
            let mut len = [0u8; 4];
            if read.read_exact(&mut len).await.is_ok() {
                let len = (u32::from_be_bytes(len) as usize).min(ABORT_REASON_BYTES_MAX);
                let mut bytes = vec![0u8; len];
                if read.read_exact(&mut bytes).await.is_ok() {
                    reason = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            frames.abort(&reason);
            return;
        }
        let len = match body_len(prefix) {
            Ok(len) => len,
            Err(err) => {
                frames.fail(LinkError::Protocol(err.to_string()));
                return;
            }
        };
        let mut body = vec![0u8; len];
        if let Err(err) = read.read_exact(&mut body).await {
            frames.abort(&err.to_string());
            return;
        }
        if frames.send(Bytes::from(body)).await.is_err() {
            return;
        }
    }
}
