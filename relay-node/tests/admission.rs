//! Admission end to end against the real `zerok-relay` binary over iroh on 127.0.0.1: token
//! mode refuses Joins that would create a mailbox without a valid token (missing, garbage,
//! expired, used up, another relay's) and admits with one; admissions and budgets survive a
//! restart; `zerok-relay admit` prints a token the relay accepts; in open mode mailbox
//! creation is rate limited per device and per source address.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use zerok_actors::clock::Clock;
use zerok_actors::relay::admission::{AdmissionToken, relay_id_of};
use zerok_harness::process::RelayProcess;
use zerok_harness::proto::ProtoError;
use zerok_messages::{Cursor, ErrorCode};

/// The node secret of a relay's data dir.
fn node_secret(data_dir: &Path) -> [u8; 32] {
    std::fs::read(data_dir.join("node.key"))
        .unwrap()
        .try_into()
        .unwrap()
}

fn now_secs() -> u64 {
    Clock::system().now_unix_secs()
}

/// A token signed with `secret`.
fn mint(secret: &[u8; 32], id: u8, mailboxes: u32, expires_at_unix_secs: u64) -> String {
    AdmissionToken::mint(secret, [id; 16], mailboxes, expires_at_unix_secs)
        .unwrap()
        .encode()
}

/// The refusal's code and message, or a panic naming what came instead.
fn refused<T: std::fmt::Debug>(result: Result<T, ProtoError>) -> (ErrorCode, String, Option<u64>) {
    match result {
        Err(ProtoError::Refused {
            code,
            message,
            retry_after_ms,
        }) => (code, message, retry_after_ms),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn assert_unauthorized<T: std::fmt::Debug>(result: Result<T, ProtoError>, says: &str) {
    let (code, message, _) = refused(result);
    assert_eq!(code, ErrorCode::Unauthorized, "{message}");
    assert!(message.contains(says), "{message:?} does not say {says:?}");
}

/// `zerok-relay admit` on `data_dir` with `args`.
fn admit(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("admit")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("ZEROK_RELAY_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_creates_mailboxes_only_with_a_valid_token_and_remembers_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(&dir, &["--admission", "token"]).await;
    let secret = node_secret(relay.data_dir());
    let (_, keys) = group(1);
    let mailbox = keys.mailbox_id();
    let alice = client(1, &relay).await;

    // No token: refused, and the connection is no member, so nothing can be pushed.
    assert_unauthorized(alice.join(&keys).await, "admission token required");
    assert_eq!(
        alice.push(mailbox, blob(1)).await.unwrap_err().code(),
        Some(ErrorCode::Unauthorized)
    );
    // Garbage, expired, another relay's, or forged for this relay by another key: refused.
    assert_unauthorized(alice.join_admitted(&keys, "ZKA1NOTATOKEN").await, "invalid");
    let expired = mint(&secret, 2, 5, now_secs() - 60);
    assert_unauthorized(alice.join_admitted(&keys, &expired).await, "expired");
    let foreign = mint(&[9; 32], 3, 5, now_secs() + 3600);
    assert_unauthorized(
        alice.join_admitted(&keys, &foreign).await,
        "for another relay",
    );
    let mut forged = AdmissionToken::decode(&foreign).unwrap();
    forged.relay_id = relay.addr.id;
    assert_unauthorized(
        alice.join_admitted(&keys, &forged.encode()).await,
        "invalid",
    );
    // Nothing was created by any of that: a token holder finds the mailbox empty.
    let budget_one = mint(&secret, 4, 1, now_secs() + 3600);
    assert_eq!(
        alice.join_admitted(&keys, &budget_one).await.unwrap(),
        Cursor(0)
    );

    // Admitted: push, pull, and another device joins without any token.
    let (cursor, _) = alice.push(mailbox, blob(1)).await.unwrap();
    assert_eq!(cursor, Cursor(1));
    let bob = client(2, &relay).await;
    assert_eq!(bob.join(&keys).await.unwrap(), Cursor(1));
    let items = bob.pull_all(mailbox, Cursor(0)).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].ciphertext, blob(1));

    // The budget of one is spent: a second new mailbox is refused.
    let (_, second) = group(2);
    assert_unauthorized(alice.join_admitted(&second, &budget_one).await, "used up");

    // A mailbox admitted but never pushed to is remembered too (the store knows nothing of
    // it): create one with a fresh token, then restart.
    let (_, empty) = group(3);
    let budget_two = mint(&secret, 5, 2, now_secs() + 3600);
    assert_eq!(
        alice.join_admitted(&empty, &budget_two).await.unwrap(),
        Cursor(0)
    );
    drop((alice, bob));
    relay.terminate(Duration::from_secs(15)).await.unwrap();
    relay.restart().await.unwrap();

    let carol = client(3, &relay).await;
    assert_eq!(carol.join(&keys).await.unwrap(), Cursor(1));
    assert_eq!(carol.join(&empty).await.unwrap(), Cursor(0));
    // Budgets were kept: the first token is still spent, the second has one left.
    assert_unauthorized(carol.join_admitted(&second, &budget_one).await, "used up");
    assert_eq!(
        carol.join_admitted(&second, &budget_two).await.unwrap(),
        Cursor(0)
    );
    let (_, third) = group(4);
    assert_unauthorized(carol.join_admitted(&third, &budget_two).await, "used up");
    // The token never reaches the logs.
    let logs = relay.logs();
    for token in [&budget_one, &budget_two, &expired, &foreign] {
        assert!(!logs.contains(&token[4..24]), "a token was logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admit_prints_a_token_the_relay_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("relay");
    // Before the relay ever ran: admit makes the node key the relay then uses.
    let output = admit(&data_dir, &["--mailboxes", "3", "--valid-days", "2"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let text = stdout.lines().last().unwrap().trim().to_owned();
    let token = AdmissionToken::decode(&text).unwrap();
    assert_eq!(token.relay_id, relay_id_of(&node_secret(&data_dir)));
    assert_eq!(token.mailboxes, 3);
    let two_days = 2 * 24 * 3600;
    let expires_in = token.expires_at_unix_secs.saturating_sub(now_secs());
    assert!(
        (two_days - 600..=two_days).contains(&expires_in),
        "expires in {expires_in} s"
    );
    assert!(
        stdout.contains(&format!("relay {}", token.relay_id)),
        "{stdout}"
    );
    // Two tokens are two budgets.
    let again = admit(&data_dir, &[]);
    let other = String::from_utf8(again.stdout).unwrap();
    let other = AdmissionToken::decode(other.lines().last().unwrap()).unwrap();
    assert_ne!(other.token_id, token.token_id);
    assert_eq!(other.mailboxes, 1);
    // Bad values: exit 2, one line.
    for args in [&["--mailboxes", "0"][..], &["--valid-days", "0"][..]] {
        let bad = admit(&data_dir, args);
        assert_eq!(bad.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8(bad.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(bad.stdout.is_empty());
    }

    let relay = RelayProcess::start(binary(), &data_dir, &["--admission", "token"])
        .await
        .unwrap();
    assert_eq!(relay.addr.id, token.relay_id);
    let client = client(7, &relay).await;
    let (_, keys) = group(7);
    assert_eq!(client.join_admitted(&keys, &text).await.unwrap(), Cursor(0));
    client.push(keys.mailbox_id(), blob(7)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_bounds_mailbox_creation_per_device_and_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[admission]\nmailboxes_per_device_per_hour = 2\nmailboxes_per_source_per_hour = 3\n",
    )
    .unwrap();
    let relay = relay(&dir, &["--config", config.to_str().unwrap()]).await;
    let alice = client(1, &relay).await;
    for n in 1..=2 {
        let (_, keys) = group(n);
        assert_eq!(alice.join(&keys).await.unwrap(), Cursor(0));
        alice.push(keys.mailbox_id(), blob(n.into())).await.unwrap();
    }
    // Re-joining what it created is free.
    let (_, first) = group(1);
    assert_eq!(alice.join(&first).await.unwrap(), Cursor(1));
    let (code, message, retry_after_ms) = refused(alice.join(&group(3).1).await);
    assert_eq!(code, ErrorCode::RateLimited, "{message}");
    assert!(message.contains("device"), "{message}");
    // 2 per hour: the next one is about half an hour away, and the hint says so.
    let retry_after_ms = retry_after_ms.unwrap();
    assert!(
        (60_000..=3_600_000).contains(&retry_after_ms),
        "{retry_after_ms}"
    );
    // The refused mailbox is not joined.
    assert_eq!(
        alice
            .push(group(3).1.mailbox_id(), blob(3))
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::Unauthorized)
    );

    // Another device from the same address: one more (3 per source), then the address limit.
    let bob = client(2, &relay).await;
    assert_eq!(bob.join(&group(4).1).await.unwrap(), Cursor(0));
    let (code, message, retry_after_ms) = refused(bob.join(&group(5).1).await);
    assert_eq!(code, ErrorCode::RateLimited, "{message}");
    assert!(message.contains("address"), "{message}");
    assert!(retry_after_ms.is_some());
    // Existing mailboxes stay open to members whatever the limits.
    assert_eq!(bob.join(&first).await.unwrap(), Cursor(1));
    let items = bob.pull_all(first.mailbox_id(), Cursor(0)).await.unwrap();
    assert_eq!(items.len(), 1);
}
