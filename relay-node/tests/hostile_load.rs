//! Hostile load against the real `zerok-relay` binary over iroh on loopback: each attack of
//! issue 10 is run, and each test asserts the bound that stops it: the relay's resident
//! memory stays under a stated budget, a legitimate client (from another source address:
//! 127.0.0.x are all loopback) still connects and pushes, and nothing acked is lost.
//!
//! Sources are told apart by binding client endpoints to different loopback addresses
//! (127.0.0.2, 127.0.0.3, ...); the relay listens on 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{group, relay};
use std::net::SocketAddr;
use std::time::Duration;
use zerok_actors::crypto::join::sign_join;
use zerok_actors::link::hello::{Welcomed, hello};
use zerok_actors::link::iroh::{IrohConfig, IrohNode};
use zerok_actors::rng::Rng;
use zerok_harness::process::RelayProcess;
use zerok_harness::proto::ProtoClient;
use zerok_messages::{Cursor, Frame, ReqId, codec};

/// Relay RSS budget under attack with the default limits (issue 10: "< 256 MiB with
/// defaults").
const RSS_BUDGET_KIB: u64 = 256 * 1024;

/// A client endpoint with a key from `seed`, bound to `ip` (a loopback address: a source).
async fn endpoint_at(seed: u64, ip: [u8; 4]) -> IrohNode {
    let mut rng = Rng::seeded(seed);
    let bind = SocketAddr::from((ip, 0));
    IrohNode::bind(IrohConfig::new(rng.bytes(), bind))
        .await
        .unwrap()
}

/// A protocol client from source `ip`.
async fn client_at(seed: u64, ip: [u8; 4], relay: &RelayProcess) -> ProtoClient {
    let node = endpoint_at(seed, ip).await;
    ProtoClient::connect(&node.dialer(), &relay.addr)
        .await
        .unwrap()
        .owning(node)
}

/// A legitimate device from its own source connects, joins, pushes and reads its push back.
async fn legitimate_client_works(relay: &RelayProcess, seed: u64) {
    let (_, keys) = group(200);
    let client = client_at(seed, [127, 0, 0, 200], relay).await;
    client.join(&keys).await.unwrap();
    let data = Bytes::from(format!("legit-{seed}").into_bytes());
    let (cursor, _) = client.push(keys.mailbox_id(), data.clone()).await.unwrap();
    let items = client
        .pull_all(keys.mailbox_id(), Cursor(cursor.0 - 1))
        .await
        .unwrap();
    assert_eq!(items[0].ciphertext, data);
}

/// The relay's address for a raw iroh endpoint.
fn iroh_target(relay: &RelayProcess) -> iroh::EndpointAddr {
    let relay_key = iroh::PublicKey::from_bytes(relay.addr.id.as_bytes()).unwrap();
    relay
        .addr
        .addrs
        .iter()
        .fold(iroh::EndpointAddr::new(relay_key), |addr, socket| {
            addr.with_ip_addr(*socket)
        })
}

fn rss_kib(relay: &RelayProcess) -> u64 {
    relay.rss_kib().expect("relay running")
}

fn encode(frame: &Frame) -> Bytes {
    Bytes::from(codec::encode(frame).unwrap())
}

async fn metric(relay: &RelayProcess, name: &str) -> f64 {
    let (_, text) = zerok_relay::http::client::http_get(relay.http.unwrap(), "/metrics")
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// QUIC allows a peer 100 bidi and 100 uni streams of ~1.25 MB receive window each unless
/// told otherwise: a client that opens them all and writes fills ~230 MiB per connection.
/// The relay allows exactly the one stream the protocol uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_quic_streams_are_refused_and_buffer_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let rss_before = rss_kib(&relay);
    let target = iroh_target(&relay);
    let mut opened_extra = 0;
    let mut endpoints = Vec::new();
    for n in 0..4u8 {
        let endpoint = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
            .secret_key(iroh::SecretKey::from_bytes(&[n + 1; 32]))
            .relay_mode(iroh::RelayMode::Disabled)
            .clear_address_lookup()
            .bind_addr(SocketAddr::from(([127, 0, 0, 10 + n], 0)))
            .unwrap()
            .bind()
            .await
            .unwrap();
        let connection = endpoint
            .connect(target.clone(), zerok_messages::wire::ALPN)
            .await
            .unwrap();
        // The protocol's stream, then as many more as the relay lets us open, each written
        // with 1 MiB it never reads.
        let junk = vec![0x5a_u8; 1024 * 1024];
        let (mut first, _recv) = connection.open_bi().await.unwrap();
        let hello = codec::encode_prefixed(&Frame::Hello {
            versions: vec![1],
            client_agent: "attacker".into(),
        })
        .unwrap();
        first.write_all(&hello).await.unwrap();
        for _ in 0..3 {
            let extra =
                tokio::time::timeout(Duration::from_millis(300), connection.open_bi()).await;
            if let Ok(Ok((mut send, _))) = extra {
                opened_extra += 1;
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), send.write_all(&junk)).await;
            }
            let uni = tokio::time::timeout(Duration::from_millis(300), connection.open_uni()).await;
            if let Ok(Ok(mut send)) = uni {
                opened_extra += 1;
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), send.write_all(&junk)).await;
            }
        }
        endpoints.push((endpoint, connection));
    }
    assert_eq!(
        opened_extra, 0,
        "the relay let a peer open streams beyond the protocol's one"
    );
    let rss_after = rss_kib(&relay);
    assert!(
        rss_after < RSS_BUDGET_KIB,
        "relay RSS {rss_after} KiB over the budget"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "4 connections cost {} KiB",
        rss_after - rss_before
    );
    legitimate_client_works(&relay, 1).await;
}

/// 400 pulls of a 1 MiB item whose answers are never read pinned ~580 MiB per connection,
/// and the session, blocked on its full queue, never even closed on idle. Now pages are
/// read a few at a time, replies are bounded by bytes, and a peer that does not read is
/// disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_never_read_pin_a_bounded_amount_and_the_reader_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let (_, keys) = group(31);
    let mailbox = keys.mailbox_id();
    let owner = client_at(1, [127, 0, 0, 2], &relay).await;
    owner.join(&keys).await.unwrap();
    let big = Bytes::from(vec![0x42_u8; 1000 * 1024]);
    let (big_cursor, _) = owner.push(mailbox, big).await.unwrap();

    // Eight connections from eight sources each ask for that item 400 times and never read.
    let mut attackers = Vec::new();
    for n in 0..8u8 {
        let node = endpoint_at(100 + u64::from(n), [127, 0, 0, 20 + n]).await;
        let link = zerok_actors::link::Dialer::dial(&node.dialer(), &relay.addr)
            .await
            .unwrap();
        let Welcomed {
            sender,
            receiver,
            relay_id,
            nonce,
            ..
        } = hello(link, "attacker", Duration::from_secs(10))
            .await
            .unwrap();
        let proof = sign_join(&keys, &relay_id, &node.local_id(), &nonce);
        sender
            .send(encode(&Frame::Join {
                req: ReqId(1),
                mailbox_key: keys.mailbox_key(),
                proof,
                admission: None,
            }))
            .await
            .unwrap();
        for req in 2..402 {
            let pull = encode(&Frame::Pull {
                req: ReqId(req),
                mailbox,
                after: Cursor(big_cursor.0 - 1),
                max_items: 1,
                max_bytes: 1024 * 1024,
            });
            if tokio::time::timeout(Duration::from_secs(2), sender.send(pull))
                .await
                .is_err()
            {
                break;
            }
        }
        attackers.push((node, sender, receiver));
    }
    let peak = rss_kib(&relay);
    assert!(
        peak < RSS_BUDGET_KIB,
        "relay RSS {peak} KiB during the attack"
    );
    legitimate_client_works(&relay, 2).await;

    // Not reading is noticed: every attacker is disconnected (within the slow-reader
    // timeout), and the relay gives its memory back.
    let mut disconnected = 0.0;
    for _ in 0..60 {
        disconnected = metric(&relay, "zerok_relay_slow_peers_disconnected_total").await;
        if disconnected >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        disconnected >= 8.0,
        "only {disconnected} non-reading peers disconnected"
    );
    let sessions = metric(&relay, "zerok_relay_sessions ").await;
    assert!(sessions <= 2.0, "{sessions} sessions left");
    let after = rss_kib(&relay);
    assert!(
        after < RSS_BUDGET_KIB,
        "relay RSS {after} KiB after the attack"
    );
    legitimate_client_works(&relay, 3).await;
    drop(attackers);
}

/// 40 handshakes a second from one address that never open a stream held all 256
/// pre-stream slots (10 s each) and legitimate clients timed out. Now one source may hold
/// only a few handshakes, checked before the handshake starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_a_stream_cannot_lock_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let target = iroh_target(&relay);
    // 300 half-open dials from one source, as fast as they go, none ever opening a stream.
    let attacker = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .secret_key(iroh::SecretKey::from_bytes(&[9; 32]))
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .bind_addr(SocketAddr::from(([127, 0, 0, 3], 0)))
        .unwrap()
        .bind()
        .await
        .unwrap();
    let mut dials = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let attacker = attacker.clone();
        let target = target.clone();
        dials.spawn(async move {
            let connection = tokio::time::timeout(
                Duration::from_secs(3),
                attacker.connect(target, zerok_messages::wire::ALPN),
            )
            .await;
            if let Ok(Ok(connection)) = connection {
                tokio::time::sleep(Duration::from_secs(8)).await;
                drop(connection);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile, clients from other sources connect and push.
    for seed in 0..5u64 {
        legitimate_client_works(&relay, 10 + seed).await;
    }
    let refused = metric(&relay, "zerok_relay_connection_slots_refused_total").await;
    assert!(refused > 0.0, "the half-open flood was never refused");
    dials.abort_all();
    assert!(rss_kib(&relay) < RSS_BUDGET_KIB);
}

/// The per-IP limit was a rate: one host held all 300 of 300 session slots within 5 s. Now
/// one source holds at most `per_source_max` connections and one device `per_device_max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_every_session_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[connections]\nmax = 30\nper_ip_per_sec = 1000\nper_ip_burst = 1000\n\
         per_source_max = 10\nper_device_max = 2\n",
    )
    .unwrap();
    let relay = relay(&dir, &["--config", config.to_str().unwrap()]).await;
    // One host with many device keys: only per_source_max get in.
    let mut held = Vec::new();
    let mut refused = 0;
    for seed in 0..30u64 {
        let node = endpoint_at(500 + seed, [127, 0, 0, 4]).await;
        match tokio::time::timeout(
            Duration::from_secs(5),
            ProtoClient::connect(&node.dialer(), &relay.addr),
        )
        .await
        {
            Ok(Ok(client)) => held.push((client, node)),
            _ => refused += 1,
        }
    }
    assert_eq!(held.len(), 10, "one source held {} connections", held.len());
    assert_eq!(refused, 20);
    // One device key: only per_device_max connections, whatever the source.
    let mut same_device = Vec::new();
    for n in 0..4u8 {
        let node = endpoint_at(777, [127, 0, 0, 30 + n]).await;
        if let Ok(Ok(client)) = tokio::time::timeout(
            Duration::from_secs(5),
            ProtoClient::connect(&node.dialer(), &relay.addr),
        )
        .await
        {
            same_device.push(client.owning(node));
        }
    }
    assert_eq!(same_device.len(), 2);
    // Everyone else still gets in.
    legitimate_client_works(&relay, 20).await;
    // Slots come back when connections end.
    for (client, node) in held {
        drop(client);
        node.close().await;
    }
    let mut back = false;
    for _ in 0..50 {
        let node = endpoint_at(900, [127, 0, 0, 4]).await;
        if let Ok(Ok(client)) = tokio::time::timeout(
            Duration::from_secs(2),
            ProtoClient::connect(&node.dialer(), &relay.addr),
        )
        .await
        {
            client.ping().await.unwrap();
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "the source's slots never came back");
}

/// The data dir holds the node's secret key and other people's ciphertext: it is the relay
/// user's alone, and the key and address files are written private and durably.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_its_files_are_not_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let data_dir = relay.data_dir().to_path_buf();
    assert_eq!(mode(&data_dir), 0o700, "data dir");
    for file in ["node.key", "relay.addr"] {
        assert_eq!(mode(&data_dir.join(file)), 0o600, "{file}");
    }
    // The store's directory and files (ciphertext, who pushed where and when) likewise.
    let store_dir = data_dir.join("store");
    assert_eq!(mode(&store_dir), 0o700, "store dir");
    let mut store_files = 0;
    for entry in std::fs::read_dir(&store_dir).unwrap() {
        let path = entry.unwrap().path();
        // The index is a directory (a fjall database, whose files follow the umask): the
        // directory is private, which keeps everything in it from other users.
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), expected, "{}", path.display());
        store_files += 1;
    }
    assert!(store_files >= 3, "format, lock and a segment");
    // A data dir that existed with loose permissions is tightened at start.
    let loose = dir.path().join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _second = RelayProcess::start(common::binary(), &loose, &[])
        .await
        .unwrap();
    assert_eq!(mode(&loose), 0o700, "pre-existing data dir");
}
