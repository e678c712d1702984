//! Fixtures of the client's end-to-end tests: the real `zerok-relay` binary on 127.0.0.1,
//! clients on their own home dirs.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;
use zerok_client::{Client, ClientConfig, Event, GroupId, NewSecret};
pub use zerok_harness::process::RelayProcess;
use zerok_messages::RelayAddr;

/// The relay binary, built next to `zerok` by `cargo test --workspace`.
pub fn relay_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_zerok")).with_file_name("zerok-relay");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds zerok-relay)",
        path.display()
    );
    path
}

/// A free UDP port on loopback (so a relay can be restarted on the same address).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay on `dir/name` with a fixed port.
pub async fn relay(dir: &Path, name: &str) -> RelayProcess {
    let bind = format!("127.0.0.1:{}", free_port());
    RelayProcess::start(&relay_binary(), &dir.join(name), &["--bind", &bind])
        .await
        .unwrap()
}

/// A client with its home in `dir/name`, bound to loopback.
pub async fn client(dir: &Path, name: &str) -> Client {
    let mut config = ClientConfig::new(dir.join(name));
    config.bind = "127.0.0.1:0".parse().unwrap();
    Client::start(config).await.unwrap()
}

/// Received payloads until `n` arrived (other events are collected separately).
pub async fn receive(
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    n: usize,
    within: Duration,
) -> (Vec<Event>, Vec<Event>) {
    let mut received = Vec::new();
    let mut other = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while received.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event @ Event::Received { .. })) => received.push(event),
            Ok(Some(event)) => other.push(event),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    (received, other)
}

/// Payloads of received events, as strings.
pub fn payloads(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Received { payload, .. } => Some(String::from_utf8_lossy(payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// Sequence numbers of received events.
/// `seqs` are `count` consecutive seqs, in order (a sender's roster records may take the
/// seqs before them).
pub fn consecutive(seqs: &[u64], count: usize) -> bool {
    seqs.len() == count && seqs.windows(2).all(|w| w[1] == w[0] + 1)
}

pub fn seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Received { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Wait until `client`'s group has nothing unacked.
pub async fn drained(client: &Client, group: GroupId, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let status = client.status().await.unwrap();
        if status
            .groups
            .iter()
            .find(|g| g.id == group)
            .is_some_and(|g| g.outbox == 0)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Poll `check` until it holds; fails the test naming `what` if it does not within `within`.
/// For states nothing announces (a relay's counter, a channel's fill); events are awaited.
pub async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the unlabelled metric `name` on the relay's `/metrics`.
pub async fn relay_metric(relay: &RelayProcess, name: &str) -> f64 {
    relay_metric_if_any(relay, name)
        .await
        .unwrap_or_else(|| panic!("no metric {name} on the relay"))
}

/// `name` (with its labels) from the relay's `/metrics`, if it is there yet (a labelled
/// counter shows once it counted something).
pub async fn relay_metric_if_any(relay: &RelayProcess, name: &str) -> Option<f64> {
    let http = relay.http.expect("the relay serves http");
    let (status, text) = zerok_relay::http::client::http_get(http, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}

/// Alice (home `dir/alice`) creates a group on `relays`; Bob (`dir/bob`) joins it by invite.
pub async fn pair(dir: &Path, relays: Vec<RelayAddr>) -> (Client, Client, GroupId) {
    let alice = client(dir, "alice").await;
    let bob = client(dir, "bob").await;
    let group = alice
        .create_group("pair", NewSecret::Random, relays)
        .await
        .unwrap();
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(bob.join(&token, None).await.unwrap(), group);
    (alice, bob, group)
}

/// Run the `zerok` CLI on `home` with `args` (no inherited home or passphrase).
pub fn zerok(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_zerok"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("ZEROK_HOME")
        .env_remove("ZEROK_PASSPHRASE")
        .output()
        .unwrap()
}

/// `joiner` runs `zerok join TOKEN` while `member` runs `zerok watch`: a member device must
/// be online to admit it. The watcher is stopped with Ctrl-C (SIGINT) afterwards.
pub fn join_while_watching(member: &Path, joiner: &Path, args: &[&str]) -> std::process::Output {
    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_zerok"))
        .arg("--home")
        .arg(member)
        .arg("watch")
        .env_remove("ZEROK_HOME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = zerok(joiner, args);
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &watcher.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    assert!(
        watcher.wait().unwrap().success(),
        "watch stops cleanly on Ctrl-C"
    );
    out
}

/// The stdout of a command that must have succeeded.
pub fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The device key and the current epoch's keys of the first group of the (stopped) client
/// in `dir/name`, read from its home: what a member's device holds, to write records the
/// client would not.
pub fn member_keys(
    dir: &std::path::Path,
    name: &str,
) -> (
    zerok_actors::crypto::envelope::DeviceKey,
    zerok_actors::crypto::keys::EpochKeys,
) {
    use zerok_actors::client::local_store::LocalStore;
    use zerok_actors::crypto::keys::GroupSecret;
    let home = dir.join(name);
    let secret = zerok_actors::link::iroh::load_or_create_secret_key(
        &home.join("device.key"),
        &mut zerok_actors::rng::Rng::system(),
    )
    .unwrap();
    let store = LocalStore::open(&home.join("store")).unwrap();
    let (_, record) = store.groups().unwrap().remove(0);
    (
        zerok_actors::crypto::envelope::DeviceKey::from_secret_bytes(&secret),
        GroupSecret::from_bytes(record.secret).epoch_keys(zerok_messages::Epoch(record.epoch)),
    )
}

/// Push `envelope` into the mailbox of `keys` (a group's, or any other) on `relay` as a
/// raw protocol client.
pub async fn push_raw(
    relay: &RelayProcess,
    keys: &impl AsRef<zerok_actors::crypto::keys::MailboxSigner>,
    envelope: Vec<u8>,
) {
    let keys = keys.as_ref();
    use zerok_actors::link::iroh::{IrohConfig, IrohNode};
    let node = IrohNode::bind(IrohConfig::new([43; 32], "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let raw = zerok_harness::proto::ProtoClient::connect(&node.dialer(), &relay.addr)
        .await
        .unwrap();
    raw.join_signer(keys).await.unwrap();
    raw.push(keys.mailbox_id(), bytes::Bytes::from(envelope))
        .await
        .unwrap();
    drop(raw);
    node.close().await;
}
