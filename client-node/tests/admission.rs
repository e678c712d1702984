//! A group on a relay that admits by token, end to end with the real binaries: the operator
//! mints a token (`zerok-relay admit`), `zerok init --relay ADDR --admission TOKEN` keeps it
//! with the group, the first push creates the mailbox, and a device that joins by invite (no
//! token) receives. Without a token the relay refuses to create the mailbox.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;
use zerok_client::{ClientError, InvalidInput, NewSecret};
use zerok_harness::process::RelayProcess;

/// `zerok-relay admit` on the relay's data dir: the token (last line).
fn admit(relay: &RelayProcess, mailboxes: u32) -> String {
    let output = Command::new(relay_binary())
        .args(["admit", "--mailboxes", &mailboxes.to_string(), "--data-dir"])
        .arg(relay.data_dir())
        .env_remove("ZEROK_RELAY_CONFIG")
        .output()
        .unwrap();
    ok(&output).lines().last().unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_an_admission_token_creates_the_group_on_a_token_relay() {
    let dir = tempfile::tempdir().unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    let relay = RelayProcess::start(
        &relay_binary(),
        &dir.path().join("relay"),
        &["--bind", &bind, "--admission", "token"],
    )
    .await
    .unwrap();
    let addr_text = std::fs::read_to_string(relay.data_dir().join("relay.addr")).unwrap();
    let addr = addr_text.trim();
    let (a, b, x) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("x"),
    );

    // Without a token the relay does not create the group's mailbox: the push stays queued.
    ok(&zerok(&x, &["init", "--relay", addr]));
    let out = ok(&zerok(&x, &["push", "not admitted", "--timeout", "3"]));
    assert!(out.contains("queued"), "{out}");

    // A token that is not one is refused at init, with one line.
    let bad = zerok(&a, &["init", "--relay", addr, "--admission", "ZKA1NOPE"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("admission token"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // Two mailboxes: the group's, and one invite's (an invite creates a short-lived mailbox
    // where the joiner and a member meet; it counts against the member's token).
    let token = admit(&relay, 2);
    ok(&zerok(
        &a,
        &["init", "--relay", addr, "--admission", &token],
    ));
    let out = ok(&zerok(&a, &["push", "hello from a"]));
    assert!(out.contains("durable on 1 relay"), "{out}");

    let invite = ok(&zerok(&a, &["invite"]));
    let invite = invite.lines().last().unwrap().trim();
    assert!(
        !invite.contains(&token[4..]),
        "the invite must not carry the token"
    );
    ok(&join_while_watching(&a, &b, &["join", invite]));
    let out = ok(&zerok(&b, &["pull"]));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["hello from a"]);
    // B pushes too (its Join needs no token: the mailbox exists), and A receives.
    let out = ok(&zerok(&b, &["push", "hello from b"]));
    assert!(out.contains("durable"), "{out}");
    assert_eq!(
        ok(&zerok(&a, &["pull"])).lines().collect::<Vec<_>>(),
        ["hello from b"]
    );
    // The unadmitted group is still refused (the token's budget of two is spent anyway).
    let out = ok(&zerok(&x, &["push", "still not", "--timeout", "2"]));
    assert!(out.contains("queued"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_that_a_token_is_for_one_of_the_groups_relays() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let token = admit(&relay, 2);
    let relay_ref = &relay;
    let client = client(dir.path(), "c").await;
    // A token of this relay on a group of another relay is refused before anything is kept.
    let elsewhere: zerok_messages::RelayAddr =
        "1111111111111111111111111111111111111111111111111111111111111111@127.0.0.1:9"
            .parse()
            .unwrap();
    let refused = client
        .create_group_admitted(
            "g",
            NewSecret::Random,
            vec![elsewhere],
            std::slice::from_ref(&token),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Invalid(InvalidInput::AdmissionNotForGroup(relay)) if *relay == relay_ref.addr.id)
            && refused
                .to_string()
                .contains("not one of the group's relays"),
        "{refused:?}"
    );
    assert!(client.groups().await.unwrap().is_empty());
    // On its relay it is kept, and can be replaced later by `set_admission`.
    let group = client
        .create_group_admitted(
            "g",
            NewSecret::Random,
            vec![relay.addr.clone()],
            std::slice::from_ref(&token),
        )
        .await
        .unwrap();
    let other = admit(&relay, 1);
    assert_eq!(
        client.set_admission(group, &other).await.unwrap(),
        relay.addr.id
    );
    client.shutdown().await;
}
