//! End-to-end tests of the real `zerok-relay` binary, started as a child process on
//! 127.0.0.1 and spoken to over iroh QUIC: push/subscribe/pull between two devices, a
//! restart keeping the relay id and the data, SIGKILL while pushing losing no acked push,
//! zero knowledge of the data dir and logs, authorization, hostile frames, rate and
//! connection limits, the HTTP endpoints, graceful SIGTERM, bad configurations, and a store
//! with small segments rolling, releasing and compacting under load and then SIGKILLed.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use zerok_actors::crypto::envelope::{self, DeviceKey, RecordKind};
use zerok_actors::crypto::join::sign_join;
use zerok_harness::proto::ProtoError;
use zerok_messages::wire::ByeReason;
use zerok_messages::{BlobId, Cursor, ErrorCode, Frame};
use zerok_relay::http::client::http_get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_push_subscribe_pull_and_a_restart_keeps_id_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(&dir, &[]).await;
    let (_, keys) = group(1);
    let mailbox = keys.mailbox_id();
    let alice = client(1, &relay).await;
    let mut bob = client(2, &relay).await;
    assert_eq!(alice.relay_id, relay.addr.id);
    assert_eq!(alice.join(&keys).await.unwrap(), Cursor(0));
    assert_eq!(bob.join(&keys).await.unwrap(), Cursor(0));
    assert_eq!(bob.subscribe(mailbox, Cursor(0)).await.unwrap(), Cursor(0));

    for n in 0..50 {
        let (cursor, duplicate) = alice.push(mailbox, blob(n)).await.unwrap();
        assert_eq!((cursor, duplicate), (Cursor(n + 1), false));
    }
    // Idempotent on blob id.
    assert_eq!(
        alice.push(mailbox, blob(7)).await.unwrap(),
        (Cursor(8), true)
    );

    let live = receive(&mut bob, mailbox, 50).await;
    let got: Vec<Bytes> = live.iter().map(|i| i.ciphertext.clone()).collect();
    assert_eq!(got, (0..50).map(blob).collect::<Vec<_>>());

    let pulled = bob.pull_all(mailbox, Cursor(0)).await.unwrap();
    assert_eq!(pulled.len(), 50);
    assert!(pulled.windows(2).all(|w| w[0].cursor < w[1].cursor));
    let page = bob.pull(mailbox, Cursor(10), 5, u32::MAX).await.unwrap();
    assert_eq!(page.0.len(), 5);
    assert_eq!((page.1, page.2), (Cursor(15), true));

    let id = relay.addr.id;
    let (status, _) = relay.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
    relay.restart().await.unwrap();
    assert_eq!(relay.addr.id, id, "the node key persists");

    let carol = client(3, &relay).await;
    assert_eq!(carol.join(&keys).await.unwrap(), Cursor(50));
    let after_restart = carol.pull_all(mailbox, Cursor(0)).await.unwrap();
    assert_eq!(after_restart, pulled);
    assert_eq!(
        carol.push(mailbox, blob(99)).await.unwrap(),
        (Cursor(51), false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_pushing_loses_no_acked_push_and_reuses_no_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(&dir, &[]).await;
    let (_, keys) = group(2);
    let keys = Arc::new(keys);
    let mailbox = keys.mailbox_id();
    let acked: Acked = Arc::default();
    let mut pushers = Vec::new();
    for p in 0..4u64 {
        let client = client(10 + p, &relay).await;
        client.join(&keys).await.unwrap();
        let body = move |n| blob(p * 1_000_000 + n);
        pushers.push(push_until_refused(
            client,
            mailbox,
            Arc::clone(&acked),
            body,
        ));
    }
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.kill();
    for pusher in pushers {
        pusher.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);
    restart_and_check_acked(&mut relay, 20, &keys, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_stores_or_logs_plaintext_or_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(&dir, &[]).await;
    let (secret, keys) = group(3);
    let mailbox = keys.mailbox_id();
    let device = DeviceKey::from_secret_bytes(&[42; 32]);
    let marker = b"PLAINTEXT-MARKER-7f3a9c-do-not-leak";
    let alice = client(30, &relay).await;
    alice.join(&keys).await.unwrap();
    let mut sealed = Vec::new();
    for seq in 1..=20u64 {
        let mut payload = marker.to_vec();
        payload.extend_from_slice(format!("-{seq}").as_bytes());
        let nonce = [seq as u8; 24];
        let record =
            envelope::seal(&keys, &device, seq, seq, RecordKind(1), &payload, nonce).unwrap();
        alice
            .push(mailbox, Bytes::from(record.envelope.clone()))
            .await
            .unwrap();
        sealed.push(record);
    }
    // What the relay stored opens to the plaintext for a member.
    let bob = client(31, &relay).await;
    bob.join(&keys).await.unwrap();
    let items = bob.pull_all(mailbox, Cursor(0)).await.unwrap();
    assert_eq!(items.len(), 20);
    let opened = envelope::open(&keys, &items[0].blob_id, &items[0].ciphertext).unwrap();
    assert!(opened.payload.starts_with(marker));
    let (status, _) = relay.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success());

    let mut material = [0u8; 36];
    material[..32].copy_from_slice(&secret);
    let content_key = blake3::derive_key("zerok 2026-11 v1 content key", &material);
    let hex = |bytes: &[u8]| data_encoding::HEXLOWER.encode(bytes).into_bytes();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("marker", marker.to_vec()),
        ("group secret", secret.to_vec()),
        ("group secret hex", hex(&secret)),
        ("content key", content_key.to_vec()),
        ("content key hex", hex(&content_key)),
        ("device key", [42u8; 32].to_vec()),
    ];
    let mut scanned = 0;
    let mut paths = files_under(relay.data_dir());
    paths.extend(relay.log_files());
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for (what, needle) in &secrets {
            assert!(
                !contains(&bytes, needle),
                "{what} found in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 20 * marker.len(), "the scan saw the stored data");
    assert!(relay.logs().contains("relay started"), "logs were captured");
}

fn code<T: std::fmt::Debug>(result: Result<T, ProtoError>) -> Option<ErrorCode> {
    result.unwrap_err().code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_join_are_unauthorized_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let (_, keys) = group(4);
    let (_, other_keys) = group(5);
    let mailbox = keys.mailbox_id();
    let member = client(40, &relay).await;
    member.join(&keys).await.unwrap();
    member.push(mailbox, blob(1)).await.unwrap();

    // No join at all.
    let stranger = client(41, &relay).await;
    assert_eq!(
        code(stranger.push(mailbox, blob(2)).await),
        Some(ErrorCode::Unauthorized)
    );
    assert_eq!(
        code(stranger.pull(mailbox, Cursor(0), 10, 1 << 20).await),
        Some(ErrorCode::Unauthorized)
    );
    assert_eq!(
        code(stranger.subscribe(mailbox, Cursor(0)).await),
        Some(ErrorCode::Unauthorized)
    );

    // A proof by another group's key for this mailbox key, and a proof over a wrong nonce.
    let forged = sign_join(
        &other_keys,
        &stranger.relay_id,
        &stranger.device_id,
        &stranger.nonce,
    );
    assert_eq!(
        code(stranger.join_with(&keys, forged).await),
        Some(ErrorCode::Unauthorized)
    );
    let wrong_nonce = sign_join(&keys, &stranger.relay_id, &stranger.device_id, &[0; 32]);
    assert_eq!(
        code(stranger.join_with(&keys, wrong_nonce).await),
        Some(ErrorCode::Unauthorized)
    );

    // A valid proof replayed from another connection (another nonce, another device).
    let replayed = sign_join(&keys, &member.relay_id, &member.device_id, &member.nonce);
    assert_eq!(
        code(stranger.join_with(&keys, replayed).await),
        Some(ErrorCode::Unauthorized)
    );
    assert_eq!(
        code(stranger.push(mailbox, blob(3)).await),
        Some(ErrorCode::Unauthorized)
    );

    // Joining another mailbox does not open this one.
    stranger.join(&other_keys).await.unwrap();
    assert_eq!(
        code(stranger.push(mailbox, blob(4)).await),
        Some(ErrorCode::Unauthorized)
    );

    let items = member.pull_all(mailbox, Cursor(0)).await.unwrap();
    assert_eq!(items.len(), 1, "the mailbox is unchanged");
    assert_eq!(items[0].ciphertext, blob(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_wrong_version_bad_ids_and_oversize_frames_hurt_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let (_, keys) = group(6);
    let mailbox = keys.mailbox_id();
    let bystander = client(50, &relay).await;
    bystander.join(&keys).await.unwrap();

    // A push whose blob id is not the ciphertext's hash.
    let liar = client(51, &relay).await;
    liar.join(&keys).await.unwrap();
    let wrong_id = liar.push_as(mailbox, BlobId([9; 32]), blob(1), None).await;
    assert_eq!(wrong_id.unwrap_err().code(), Some(ErrorCode::BadRequest));
    // An item over the blob limit (the frame itself fits).
    let big = Bytes::from(vec![7u8; liar.limits.blob_bytes_max as usize + 1]);
    assert_eq!(
        liar.push(mailbox, big).await.unwrap_err().code(),
        Some(ErrorCode::TooLarge)
    );

    // Garbage bodies: answered with errors, then the connection is closed.
    let mut vandal = client(52, &relay).await;
    for n in 0..40u8 {
        if vandal
            .send_raw(Bytes::from(vec![0xff, n, 0x00, 0x13]))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut saw_error = false;
    while let Some(frame) = vandal.next_event(Duration::from_secs(10)).await {
        match frame {
            Frame::Error { .. } => saw_error = true,
            Frame::Bye { reason } => assert_eq!(reason, ByeReason::ProtocolViolation),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_error);

    // A client that speaks only version 99.
    let node = endpoint(53).await;
    let link = zerok_actors::link::Dialer::dial(&node.dialer(), &relay.addr)
        .await
        .unwrap();
    let (_, sender, mut receiver) = link.into_parts();
    let hello = Frame::Hello {
        versions: vec![99],
        client_agent: "future".into(),
    };
    sender
        .send(Bytes::from(zerok_messages::codec::encode(&hello).unwrap()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
        .await
        .unwrap();
    let answer = zerok_messages::codec::decode(&answer.unwrap().unwrap()).unwrap();
    assert!(
        matches!(
            answer,
            Frame::Error {
                code: ErrorCode::Unsupported,
                ..
            }
        ),
        "{answer:?}"
    );

    // A raw QUIC peer announcing a frame far over the limit: the relay closes it without
    // reading (or allocating) the body.
    let raw = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .bind_addr("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .unwrap()
        .bind()
        .await
        .unwrap();
    let mut target =
        iroh::EndpointAddr::new(iroh::PublicKey::from_bytes(relay.addr.id.as_bytes()).unwrap());
    for socket in &relay.addr.addrs {
        target = target.with_ip_addr(*socket);
    }
    let connection = raw
        .connect(target, zerok_messages::wire::ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    // The relay may already have closed the connection on the prefix alone: then this
    // write fails, which is what is tested below.
    let _ = send.write_all(&[0u8; 1024]).await;
    let closed = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20)).await;
    assert!(
        matches!(closed, Ok(Err(_)) | Ok(Ok(_))),
        "the relay ended the stream"
    );
    raw.close().await;

    // Everyone else is unaffected.
    assert_eq!(
        bystander.push(mailbox, blob(2)).await.unwrap(),
        (Cursor(1), false)
    );
    bystander.ping().await.unwrap();
    assert_eq!(
        bystander.pull_all(mailbox, Cursor(0)).await.unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_rate_and_connection_limits_answer_with_retry_hints() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[connections]\nmax = 3\nper_ip_per_sec = 1\nper_ip_burst = 4\n\
         [rate_limits]\nframes_per_device_per_sec = 1\nframes_per_device_burst = 10\n",
    )
    .unwrap();
    let relay = relay(&dir, &["--config", config.to_str().unwrap()]).await;
    let (_, keys) = group(7);
    let chatty = client(60, &relay).await;
    chatty.join(&keys).await.unwrap();
    let mut limited = None;
    for _ in 0..30 {
        if let Err(err) = chatty.ping().await {
            limited = Some(err);
            break;
        }
    }
    match limited {
        Some(ProtoError::Refused {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            ..
        }) => assert!((1..=1000).contains(&ms), "{ms}"),
        other => panic!("expected rate_limited with a hint, got {other:?}"),
    }
    // Another device is not limited by the chatty one.
    let calm = client(61, &relay).await;
    calm.ping().await.unwrap();
    let third = client(62, &relay).await;
    third.ping().await.unwrap();

    // Connection limit (3 open) and per-IP connection rate (burst 4, then 1/s): the next
    // connections are refused with an error carrying a retry hint.
    let mut refused = Vec::new();
    let mut keep = Vec::new();
    for seed in 63..66 {
        let node = endpoint(seed).await;
        match zerok_harness::proto::ProtoClient::connect(&node.dialer(), &relay.addr).await {
            Ok(_) => panic!("connection beyond the limits admitted"),
            Err(err) => refused.push(err),
        }
        keep.push(node);
    }
    for err in &refused {
        match err {
            ProtoError::Refused {
                code: ErrorCode::Unavailable | ErrorCode::RateLimited,
                retry_after_ms: Some(_),
                ..
            } => {}
            other => panic!("expected a refusal with a retry hint, got {other:?}"),
        }
    }
    let (status, metrics) = http_get(relay.http.unwrap(), "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("zerok_relay_rate_limited_total{scope=\"device\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zerok_relay_connections_refused_total 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_over_real_http() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let http = relay.http.expect("http address printed");
    let (status, body) = http_get(http, "/health").await.unwrap();
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["relay_id"], relay.addr.id.to_hex());
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_secs"].is_u64());
    assert_eq!(http_get(http, "/ready").await.unwrap().0, 200);
    assert_eq!(http_get(http, "/nope").await.unwrap().0, 404);

    let (_, keys) = group(8);
    let alice = client(70, &relay).await;
    alice.join(&keys).await.unwrap();
    for n in 0..3 {
        alice.push(keys.mailbox_id(), blob(n)).await.unwrap();
    }
    alice.push(keys.mailbox_id(), blob(0)).await.unwrap();
    alice.pull_all(keys.mailbox_id(), Cursor(0)).await.unwrap();
    let (status, metrics) = http_get(http, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for expected in [
        "zerok_relay_sessions 1",
        "zerok_relay_connections_total 1",
        "zerok_relay_pushes_total{result=\"stored\"} 3",
        "zerok_relay_pushes_total{result=\"duplicate\"} 1",
        "zerok_relay_pulls_total 1",
        "zerok_relay_items_stored 3",
        "zerok_relay_mailboxes 1",
        "zerok_relay_push_latency_seconds_count 4",
        "zerok_relay_flush_latency_seconds_count",
        "zerok_relay_batch_size_count",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
    assert!(
        !metrics.contains(&keys.mailbox_id().to_hex()),
        "no ids in metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_bye_finishes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(&dir, &[]).await;
    let (_, keys) = group(9);
    let mut alice = client(80, &relay).await;
    alice.join(&keys).await.unwrap();
    alice.push(keys.mailbox_id(), blob(1)).await.unwrap();
    let (status, took) = relay.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10));
    match alice.next_event(Duration::from_secs(5)).await {
        Some(Frame::Bye { reason }) => assert_eq!(reason, ByeReason::Shutdown),
        other => panic!("expected bye, got {other:?}"),
    }
    assert!(relay.logs().contains("relay stopped"));
}

#[test]
fn bad_configs_and_usage_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = {
        let bad_key = dir.path().join("bad_key.toml");
        std::fs::write(&bad_key, "colour = \"blue\"\n").unwrap();
        let bad_value = dir.path().join("bad_value.toml");
        std::fs::write(
            &bad_value,
            "[limits]\nttl_default_secs = 10\nttl_max_secs = 5\n",
        )
        .unwrap();
        vec![
            (
                vec!["--config".into(), bad_key.display().to_string()],
                "colour",
            ),
            (
                vec!["--config".into(), bad_value.display().to_string()],
                "ttl_max_secs",
            ),
            (
                vec![
                    "--config".into(),
                    dir.path().join("missing.toml").display().to_string(),
                ],
                "missing.toml",
            ),
            (vec!["--bind".into(), "not-an-address".into()], "--bind"),
            (vec!["--frobnicate".into()], "--frobnicate"),
        ]
    };
    for (args, mention) in cases {
        let output = std::process::Command::new(binary())
            .args(&args)
            .env_remove("ZEROK_RELAY_CONFIG")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(mention), "{args:?}: {stderr}");
        if args[0] == "--config" {
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_same_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(&dir, &[]).await;
    let output = std::process::Command::new(binary())
        .arg("--data-dir")
        .arg(relay.data_dir())
        .args(["--bind", "127.0.0.1:0", "--http", "off"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("zerok-relay: "), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_rust_log_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(&dir, &["--log-format", "json"]).await;
    let alice = client(90, &relay).await;
    alice.join(&group(10).1).await.unwrap();
    relay.terminate(Duration::from_secs(10)).await.unwrap();
    let logs = relay.logs();
    let mut lines = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "{logs}");
    assert!(
        logs.contains("\"DEBUG\""),
        "RUST_LOG=debug reaches the relay: {logs}"
    );
    // One device's story can be followed: its session's lines carry the session span with
    // the peer, and a mailbox's router's lines the mailbox.
    let peer = alice.device_id.short();
    assert!(
        logs.contains("\"name\":\"session\"") && logs.contains(&format!("\"peer\":\"{peer}\"")),
        "a line in the session{{peer}} span: {logs}"
    );
}

/// A gauge's value in a `/metrics` text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_segments_roll_release_compact_and_survive_sigkill() {
    // 1 MiB segments, a sweep every second: with 8 KiB items the log rolls every ~128 items,
    // and when the short-lived seven eighths expire every closed segment is mostly dead, so
    // the real binary releases and compacts while clients keep pushing and then dies by SIGKILL.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[store]\nsegment_bytes = 1048576\nsweep_interval_secs = 1\n\
         [rate_limits]\nframes_per_device_per_sec = 100000\nframes_per_device_burst = 100000\n",
    )
    .unwrap();
    let mut relay = relay(&dir, &["--config", config.to_str().unwrap()]).await;
    let (_, keys) = group(4);
    let keys = Arc::new(keys);
    let mailbox = keys.mailbox_id();
    let body = |n: u64| {
        let mut data = blob(n).to_vec();
        data.resize(8 * 1024, b'.');
        Bytes::from(data)
    };
    // Phase 1: 4 pushers × 200 items, every eighth kept for a week, the rest for 2 s.
    let long_lived: Arc<std::sync::Mutex<BTreeMap<u64, Bytes>>> = Arc::default();
    let mut pushers = Vec::new();
    for p in 0..4u64 {
        let client = client(30 + p, &relay).await;
        client.join(&keys).await.unwrap();
        let long_lived = Arc::clone(&long_lived);
        pushers.push(tokio::spawn(async move {
            for n in 0..200u64 {
                let data = body(p * 1_000_000 + n);
                let keep = n % 8 == 0;
                let ttl = if keep { None } else { Some(2) };
                let blob_id = BlobId::of_ciphertext(&data);
                let (cursor, duplicate) = client
                    .push_as(mailbox, blob_id, data.clone(), ttl)
                    .await
                    .unwrap();
                assert!(!duplicate);
                if keep {
                    long_lived.lock().unwrap().insert(cursor.0, data);
                }
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for pusher in pushers {
        clients.push(pusher.await.unwrap());
    }
    let store_dir = relay.data_dir().join("store");
    let segments = || {
        files_under(&store_dir)
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".seg"))
            .count()
    };
    assert!(segments() >= 6, "{} segments after 6.4 MiB", segments());
    let http = relay.http.unwrap();
    let kept = long_lived.lock().unwrap().len() as f64;
    let mut settled = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, metrics) = http_get(http, "/metrics").await.unwrap();
        let items = gauge(&metrics, "zerok_relay_items_stored");
        let disk = gauge(&metrics, "zerok_relay_store_disk_bytes").unwrap_or(f64::MAX);
        // 100 live items of 8 KiB are 0.8 MiB: expired items evicted, dead segments released
        // and mostly-dead ones compacted leave about that on disk.
        if items == Some(kept) && disk < 2.5 * 1024.0 * 1024.0 {
            settled = Some(disk);
            break;
        }
    }
    assert!(settled.is_some(), "store did not shrink to its live items");
    assert!(segments() <= 4, "{} segments left", segments());

    // Phase 2: keep pushing week-long items and SIGKILL the relay in the middle.
    let acked: Acked = Arc::new(std::sync::Mutex::new(long_lived.lock().unwrap().clone()));
    let mut pushers = Vec::new();
    for (p, client) in clients.into_iter().enumerate() {
        let body = move |n| body(9_000_000 + p as u64 * 100_000 + n);
        pushers.push(push_until_refused(
            client,
            mailbox,
            Arc::clone(&acked),
            body,
        ));
    }
    while acked.lock().unwrap().len() < kept as usize + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.kill();
    for pusher in pushers {
        pusher.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let stored = restart_and_check_acked(&mut relay, 40, &keys, &acked).await;
    // At most one unacked push per pusher may have been stored; no expired item comes back.
    assert!(
        stored.len() <= acked.len() + 4,
        "expired items came back: {} stored, {} acked",
        stored.len(),
        acked.len()
    );
}
