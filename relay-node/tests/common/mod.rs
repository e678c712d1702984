//! Fixtures of the relay's end-to-end tests: the real `zerok-relay` binary as a child
//! process, protocol clients over real iroh on 127.0.0.1, group keys.

#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zerok_actors::crypto::keys::{EpochKeys, GroupSecret};
use zerok_actors::link::iroh::{IrohConfig, IrohNode};
use zerok_actors::rng::Rng;
use zerok_harness::process::RelayProcess;
use zerok_harness::proto::ProtoClient;
use zerok_messages::{Cursor, Epoch, Frame, Item, MailboxId};

/// The binary under test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_zerok-relay"))
}

/// A relay on a fresh data dir (kept in `dir`).
pub async fn relay(dir: &tempfile::TempDir, extra_args: &[&str]) -> RelayProcess {
    RelayProcess::start(binary(), &dir.path().join("relay"), extra_args)
        .await
        .unwrap()
}

/// A client endpoint on loopback with a key from `seed`.
pub async fn endpoint(seed: u64) -> IrohNode {
    let mut rng = Rng::seeded(seed);
    IrohNode::bind(IrohConfig::new(rng.bytes(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
}

/// A client of `relay` on its own endpoint (key from `seed`), which it keeps alive.
pub async fn client(seed: u64, relay: &RelayProcess) -> ProtoClient {
    let node = endpoint(seed).await;
    ProtoClient::connect(&node.dialer(), &relay.addr)
        .await
        .unwrap()
        .owning(node)
}

/// Group secret bytes and the epoch-0 keys of a group made from `seed`.
pub fn group(seed: u8) -> ([u8; 32], EpochKeys) {
    let secret = [seed; 32];
    (secret, GroupSecret::from_bytes(secret).epoch_keys(Epoch(0)))
}

/// An opaque test ciphertext.
pub fn blob(n: u64) -> Bytes {
    Bytes::from(format!("opaque-ciphertext-{n:06}").into_bytes())
}

/// Collect `Deliver`ed items until `n` arrived (pulling after a `Notify`), or panic.
pub async fn receive(
    client: &mut ProtoClient,
    mailbox: zerok_messages::MailboxId,
    n: usize,
) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    while items.len() < n {
        match client.next_event(Duration::from_secs(20)).await {
            Some(Frame::Deliver { item, .. }) => {
                if items.last().is_none_or(|last| item.cursor > last.cursor) {
                    items.push(item);
                }
            }
            Some(Frame::Notify { .. }) => {
                let after = items.last().map_or(zerok_messages::Cursor(0), |i| i.cursor);
                items.extend(client.pull_all(mailbox, after).await.unwrap());
            }
            Some(other) => panic!("unexpected event {other:?}"),
            None => panic!("only {} of {n} items arrived", items.len()),
        }
    }
    items
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Acked pushes by cursor.
pub type Acked = Arc<Mutex<BTreeMap<u64, Bytes>>>;

/// Push `body(n)` for n = 0, 1, … until the relay stops answering, recording every acked
/// push in `acked` (a cursor acked twice or a fresh blob called a duplicate fails the test).
pub fn push_until_refused(
    client: ProtoClient,
    mailbox: MailboxId,
    acked: Acked,
    body: impl Fn(u64) -> Bytes + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in 0.. {
            let data = body(n);
            match client.push(mailbox, data.clone()).await {
                Ok((cursor, false)) => {
                    let previous = acked.lock().unwrap().insert(cursor.0, data);
                    assert!(previous.is_none(), "cursor {cursor:?} acked twice");
                }
                Ok((_, true)) => panic!("fresh blob reported duplicate"),
                Err(_) => return,
            }
        }
    })
}

/// Start a killed `relay` again and check as a fresh device (`seed`) that every `acked` push
/// is stored at its cursor and that the next push gets a cursor past all of them. Answers
/// everything stored.
pub async fn restart_and_check_acked(
    relay: &mut RelayProcess,
    seed: u64,
    keys: &EpochKeys,
    acked: &BTreeMap<u64, Bytes>,
) -> BTreeMap<u64, Bytes> {
    relay.restart().await.unwrap();
    let reader = client(seed, relay).await;
    let mailbox = keys.mailbox_id();
    let latest = reader.join(keys).await.unwrap();
    let stored = stored_by_cursor(&reader, mailbox).await;
    for (cursor, data) in acked {
        assert_eq!(
            stored.get(cursor),
            Some(data),
            "acked push at cursor {cursor} lost"
        );
    }
    let max_acked = *acked.keys().last().unwrap();
    assert!(latest.0 >= max_acked);
    let (next, _) = reader.push(mailbox, blob(u64::MAX)).await.unwrap();
    assert!(
        next.0 > latest.0,
        "cursor {next:?} reused (latest {latest:?})"
    );
    stored
}

/// The value of the unlabelled metric `name` in a Prometheus text page.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}

/// The `storage` field of the relay's `/health` (`"ok"` or `"full"`).
pub async fn health_storage(http: std::net::SocketAddr) -> String {
    let (status, body) = zerok_relay::http::client::http_get(http, "/health")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["storage"].as_str().unwrap_or("missing").to_owned()
}

/// A relay on a fresh data dir (kept in `dir`) with the config file text `toml`.
pub async fn relay_with_config(dir: &tempfile::TempDir, toml: &str) -> RelayProcess {
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, toml).unwrap();
    relay(dir, &["--config", config.to_str().unwrap()]).await
}

/// Everything `client` can pull from `mailbox`, by cursor.
pub async fn stored_by_cursor(client: &ProtoClient, mailbox: MailboxId) -> BTreeMap<u64, Bytes> {
    client
        .pull_all(mailbox, Cursor(0))
        .await
        .unwrap()
        .into_iter()
        .map(|item| (item.cursor.0, item.ciphertext))
        .collect()
}
