//! The `Link` conformance suite (`zerok_actors::link::conformance`) over the
//! in-memory network and over iroh QUIC on 127.0.0.1 (the chaos crate runs it over turmoil).

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use zerok_actors::Rng;
use zerok_actors::link::conformance::{
    abort, connected, half_close, large_frames, ordered_both_ways,
};
use zerok_actors::link::iroh::{IrohConfig, IrohNode, load_or_create_secret_key};
use zerok_actors::link::{Dialer, Link, LinkError, MemoryNetwork};
use zerok_messages::{DeviceId, RelayAddr};

async fn memory_pair() -> (Link, Link) {
    let network = MemoryNetwork::new();
    let mut listener = network.listen(DeviceId([1; 32]));
    let addr = RelayAddr {
        id: DeviceId([1; 32]),
        addrs: vec!["127.0.0.1:1".parse().unwrap()],
    };
    connected(&network.dialer(DeviceId([2; 32])), &mut listener, &addr).await
}

async fn iroh_node(seed: u64) -> IrohNode {
    let mut rng = Rng::seeded(seed);
    IrohNode::bind(IrohConfig::new(rng.bytes(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
}

async fn iroh_pair() -> (Link, Link, IrohNode, IrohNode) {
    let server = iroh_node(1).await;
    let client = iroh_node(2).await;
    let mut listener = server.listen();
    let (a, b) = connected(&client.dialer(), &mut listener, &server.local_addr()).await;
    // The accepting side knows the dialer's IP (per-IP connection limits need it).
    let remote = b.remote_addr.expect("iroh reports the peer's address");
    assert!(remote.ip().is_loopback(), "{remote}");
    (a, b, server, client)
}

#[tokio::test]
async fn memory_ordered_both_ways() {
    let (a, b) = memory_pair().await;
    ordered_both_ways(a, b).await;
}

#[tokio::test]
async fn memory_large_frames() {
    let (a, b) = memory_pair().await;
    large_frames(a, b).await;
}

#[tokio::test]
async fn memory_half_close() {
    let (a, b) = memory_pair().await;
    half_close(a, b).await;
}

#[tokio::test]
async fn memory_abort() {
    let (a, b) = memory_pair().await;
    abort(a, b).await;
}

#[tokio::test]
async fn memory_dead_address_fails_fast() {
    let network = MemoryNetwork::new();
    let addr = RelayAddr {
        id: DeviceId([9; 32]),
        addrs: vec!["127.0.0.1:1".parse().unwrap()],
    };
    let err = network
        .dialer(DeviceId([2; 32]))
        .dial(&addr)
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Unreachable { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_ordered_both_ways() {
    let (a, b, _s, _c) = iroh_pair().await;
    ordered_both_ways(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_large_frames() {
    let (a, b, _s, _c) = iroh_pair().await;
    large_frames(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_half_close() {
    let (a, b, _s, _c) = iroh_pair().await;
    half_close(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_abort() {
    let (a, b, _s, _c) = iroh_pair().await;
    abort(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_dead_address_fails_within_the_dial_timeout() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut rng = Rng::seeded(5);
    let mut config = IrohConfig::new(rng.bytes(), "127.0.0.1:0".parse().unwrap());
    config.dial_timeout = Duration::from_secs(2);
    let client = IrohNode::bind(config).await.unwrap();
    let nobody = iroh_node(6).await.local_id();
    let addr = RelayAddr {
        id: nobody,
        addrs: vec![port],
    };
    let started = tokio::time::Instant::now();
    let err = client.dialer().dial(&addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::Timeout { .. } | LinkError::Unreachable { .. }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_wrong_peer_is_refused() {
    let server = iroh_node(7).await;
    let _listener = server.listen();
    let client = iroh_node(8).await;
    let mut addr = server.local_addr();
    addr.id = iroh_node(9).await.local_id();
    assert!(client.dialer().dial(&addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_key_persists_and_gives_a_stable_id() {
    let dir = std::env::temp_dir().join(format!("zerok-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.key");
    let _ = std::fs::remove_file(&path);
    let mut rng = Rng::system();
    let first = load_or_create_secret_key(&path, &mut rng).unwrap();
    assert_eq!(load_or_create_secret_key(&path, &mut rng).unwrap(), first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let a = IrohNode::bind(IrohConfig::new(first, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let id = a.local_id();
    a.close().await;
    let b = IrohNode::bind(IrohConfig::new(first, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(b.local_id(), id);
    std::fs::write(&path, b"short").unwrap();
    assert!(load_or_create_secret_key(&path, &mut rng).is_err());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"short",
        "a bad key file is never replaced"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
