//! The `zerok` CLI end to end: real binaries (`zerok`, `zerok-relay`) as child processes, two
//! home dirs, iroh over 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn failed(output: &Output, code: i32) -> String {
    assert_eq!(output.status.code(), Some(code), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.starts_with("zerok: ") || stderr.starts_with("error:"),
        "{stderr}"
    );
    stderr
}

/// Home `a` inits a group on `relay`, home `b` joins it, both with the CLI.
fn cli_pair(
    dir: &Path,
    relay: &zerok_harness::process::RelayProcess,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let addr_text = std::fs::read_to_string(relay.data_dir().join("relay.addr")).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&zerok(&a, &["init", "--relay", addr_text.trim()]));
    let token = ok(&zerok(&a, &["invite"]))
        .lines()
        .last()
        .unwrap()
        .to_owned();
    ok(&join_while_watching(&a, &b, &["join", &token]));
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_only_read_the_home_send_nothing_to_a_relay() {
    use std::net::UdpSocket;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(dir.path(), "relay").await;
    let addr_text = std::fs::read_to_string(relay.data_dir().join("relay.addr")).unwrap();
    let addr: zerok_messages::RelayAddr = addr_text.parse().unwrap();
    let a = dir.path().join("a");
    ok(&zerok(&a, &["init", "--relay", addr_text.trim()]));
    relay.kill();
    // The relay's ports now belong to sockets that hear whatever a client sends there.
    // A command that dialled the relay and stopped in the middle of the handshake waited
    // 3 s for that connection to drain (QUIC's 3 × PTO with no RTT sample).
    let ears: Vec<UdpSocket> = addr
        .addrs
        .iter()
        .filter_map(|socket| UdpSocket::bind(socket).ok())
        .collect();
    assert!(!ears.is_empty(), "none of {addr_text} could be bound again");
    let heard = || {
        ears.iter().any(|ear| {
            ear.set_nonblocking(true).unwrap();
            ear.recv(&mut [0; 2048]).is_ok()
        })
    };
    let status = ok(&zerok(&a, &["status"]));
    assert!(status.contains("queued pushes: 0"), "{status}");
    assert_eq!(ok(&zerok(&a, &["devices"])).lines().count(), 1);
    assert_eq!(ok(&zerok(&a, &["relays", "list"])).trim(), addr_text.trim());
    assert_eq!(ok(&zerok(&a, &["files"])), "");
    assert!(
        !heard(),
        "a command that only reads the home dialled its relay"
    );
    // A command that needs the relay does dial it (so the ears do hear a dial), and what
    // it could not send stays queued for the next one.
    let pushed = ok(&zerok(&a, &["push", "for later", "--timeout", "1"]));
    assert!(pushed.starts_with("queued "), "{pushed}");
    assert!(heard(), "the push did not dial its relay");
    let status = ok(&zerok(&a, &["status"]));
    assert!(
        status.contains("queued pushes: 1 (1 not yet acked"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_qr_draws_the_printed_token_and_the_warning_is_true() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let addr_text = std::fs::read_to_string(relay.data_dir().join("relay.addr")).unwrap();
    let a = dir.path().join("a");
    ok(&zerok(&a, &["init", "--relay", addr_text.trim()]));
    let out = zerok(&a, &["invite", "--qr"]);
    let stdout = ok(&out);
    let token = stdout.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("ZK1"), "{stdout}");
    // The drawing above the token is the QR code of that token.
    let drawn: String = stdout
        .lines()
        .take_while(|l| !l.starts_with("ZK1"))
        .collect::<Vec<_>>()
        .join("\n");
    let (want, width) = zerok_client::qr::modules(&token).unwrap();
    assert_eq!(zerok_client::qr::read_back(&drawn, width), want);
    // The warning says what the token is: single use, no key, a member must be online.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds no key of the group") && stderr.contains("must be online"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_invite_join_push_pull_on_two_home_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(dir.path(), "relay").await;
    let addr_text = std::fs::read_to_string(relay.data_dir().join("relay.addr")).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    // Before init, commands fail with one clear line.
    let stderr = failed(&zerok(&a, &["push", "too early"]), 1);
    assert!(stderr.contains("zerok init"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1);
    failed(&zerok(&a, &["init", "--relay", "not-a-relay"]), 2);

    let out = ok(&zerok(&a, &["init", "--relay", addr_text.trim()]));
    assert!(out.contains("group "), "{out}");
    failed(&zerok(&a, &["init", "--relay", addr_text.trim()]), 1);

    let invite = zerok(&a, &["invite"]);
    let token = ok(&invite).lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("ZK1"), "{token}");
    assert!(String::from_utf8_lossy(&invite.stderr).contains("secret"));

    let stderr = failed(&zerok(&b, &["join", "ZK1NOTATOKEN"]), 1);
    assert!(stderr.contains("invite"), "{stderr}");
    // No member online: the joiner waits, then says why in one line.
    let stderr = failed(&zerok(&b, &["join", &token, "--wait", "2"]), 1);
    assert!(stderr.contains("member device must be online"), "{stderr}");
    ok(&join_while_watching(&a, &b, &["join", &token]));
    // Both devices are listed, by name, on both.
    for home in [&a, &b] {
        let listed = ok(&zerok(home, &["devices"]));
        assert_eq!(listed.lines().count(), 2, "{listed}");
        assert_eq!(listed.matches("(this device)").count(), 1, "{listed}");
    }

    for n in 1..=5 {
        let out = ok(&zerok(&a, &["push", &format!("hello {n}")]));
        assert!(out.contains("durable on 1 relay"), "{out}");
    }
    let file = dir.path().join("note.txt");
    std::fs::write(&file, "from a file").unwrap();
    ok(&zerok(&a, &["push", "--file", file.to_str().unwrap()]));

    let out = ok(&zerok(&b, &["pull"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "hello 1",
            "hello 2",
            "hello 3",
            "hello 4",
            "hello 5",
            "from a file"
        ]
    );
    // Nothing is printed twice.
    assert_eq!(ok(&zerok(&b, &["pull"])), "");
    // B saw A's records (in an earlier command: when is kept with what B received); it has
    // seen no record of its own.
    let devices: Vec<serde_json::Value> = ok(&zerok(&b, &["devices", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let a_entry = devices.iter().find(|d| d["this_device"] == false).unwrap();
    let b_entry = devices.iter().find(|d| d["this_device"] == true).unwrap();
    let seen = a_entry["last_seen_unix"].as_u64();
    assert!(
        seen.is_some_and(|s| s >= a_entry["added_at_unix"].as_u64().unwrap()),
        "{a_entry}"
    );
    assert!(b_entry["last_seen_unix"].is_null(), "{b_entry}");

    ok(&zerok(&a, &["push", "json please"]));
    let out = ok(&zerok(&b, &["pull", "--json"]));
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(record["payload"], "json please");
    // A's seventh record; its first two were roster records (the invite, B's `Add`).
    assert_eq!(record["seq"], 9);
    assert_eq!(record["blob_id"].as_str().unwrap().len(), 64);

    // Offline: the push is queued, says so, exits 0; it goes out with the next command.
    relay.kill();
    let out = ok(&zerok(&a, &["push", "while offline", "--timeout", "2"]));
    assert!(out.contains("queued"), "{out}");
    let status = ok(&zerok(&a, &["status"]));
    assert!(status.contains("queued pushes: 1"), "{status}");
    relay.restart().await.unwrap();
    let out = ok(&zerok(&a, &["push", "back online"]));
    assert!(out.contains("durable"), "{out}");
    let out = ok(&zerok(&b, &["pull"]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["while offline", "back online"]
    );

    // Relays: list, add, remove.
    let listed = ok(&zerok(&b, &["relays", "list"]));
    assert_eq!(listed.trim(), addr_text.trim());
    failed(
        &zerok(&b, &["relays", "remove", &relay.addr.id.to_hex()[..8]]),
        1,
    );
    let other = "1111111111111111111111111111111111111111111111111111111111111111@127.0.0.1:9";
    ok(&zerok(&b, &["relays", "add", other]));
    assert_eq!(ok(&zerok(&b, &["relays", "list"])).lines().count(), 2);
    ok(&zerok(&b, &["relays", "remove", "1111"]));
    assert_eq!(ok(&zerok(&b, &["relays", "list"])).trim(), addr_text.trim());
    let status = ok(&zerok(&b, &["status"]));
    assert!(status.contains(addr_text.trim()), "{status}");
    // A's nine records and her two roster records (the invite, B's `Add`).
    assert!(status.contains("received up to 11"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_push_loses_nothing_acked_and_delivers_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (a, b) = cli_pair(dir.path(), &relay);

    let mut acked = Vec::new();
    let mut killed = Vec::new();
    for n in 0..16u64 {
        let text = format!("record {n}");
        if n % 2 == 1 {
            // SIGKILL at a different point of the push each time. The sleep is not waiting
            // for anything: it spreads the kill over the push's life (start, connect, send,
            // ack), and the test holds for every outcome (`killed` or `acked`).
            let mut child = Command::new(env!("CARGO_BIN_EXE_zerok"))
                .arg("--home")
                .arg(&a)
                .args(["push", "--wait", &text])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(3 * n)).await;
            child.kill().unwrap();
            let status = child.wait().unwrap();
            if status.success() {
                acked.push(text);
            } else {
                killed.push(text);
            }
        } else {
            ok(&zerok(&a, &["push", &text]));
            acked.push(text);
        }
    }
    assert!(!killed.is_empty(), "no push was actually interrupted");
    // One more push from the same home resends whatever the killed ones had queued.
    ok(&zerok(&a, &["push", "after the kills"]));
    acked.push("after the kills".into());

    let out = ok(&zerok(&b, &["pull"]));
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), lines.len(), "delivered twice: {lines:?}");
    for text in &acked {
        assert!(lines.contains(text), "acked {text:?} lost: {lines:?}");
    }
    for line in &lines {
        assert!(acked.contains(line) || killed.contains(line), "{line:?}");
    }
    assert_eq!(
        ok(&zerok(&b, &["pull"])),
        "",
        "a second pull prints nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_records_as_they_arrive() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (a, b) = cli_pair(dir.path(), &relay);
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_zerok"))
        .arg("--home")
        .arg(&b)
        .args(["watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| {
        lines_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("watch printed no {what}: {err}"))
    };
    // The first record reaches the watcher once it is subscribed (live, or by the pull the
    // relay's `Notify` after `Subscribed` asks for when it was stored before that).
    ok(&zerok(&a, &["push", "first"]));
    let mut lines = vec![next_line("first record")];
    // The watcher is live now: the next record arrives as a `Deliver`, not by a pull.
    let pulls = relay_metric(&relay, "zerok_relay_pulls_total").await;
    ok(&zerok(&a, &["push", "second"]));
    lines.push(next_line("second record"));
    assert_eq!(
        relay_metric(&relay, "zerok_relay_pulls_total").await,
        pulls,
        "the second record was pulled, not delivered live"
    );
    watcher.kill().unwrap();
    let _ = watcher.wait();
    let payloads: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(payloads, ["first", "second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_shows_a_code_and_the_new_device_joins_with_it() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let addr_text = std::fs::read_to_string(relay.data_dir().join("relay.addr")).unwrap();
    let addr = addr_text.trim();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&zerok(&a, &["init", "--relay", addr]));
    // The new device needs a relay to meet on: one clear line, usage exit.
    failed(&zerok(&b, &["pair", "12-345678"]), 2);

    let mut offer = Command::new(env!("CARGO_BIN_EXE_zerok"))
        .arg("--home")
        .arg(&a)
        .args(["pair", "--wait", "60"])
        .env_remove("ZEROK_HOME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(offer.stdout.take().unwrap());
    let mut code = String::new();
    stdout.read_line(&mut code).unwrap();
    let code = code.trim().to_owned();
    assert_eq!(code.len(), 9, "{code}");
    let joined = tokio::task::spawn_blocking({
        let (b, code, addr) = (b.clone(), code.clone(), addr.to_owned());
        move || zerok(&b, &["pair", &code, "--relay", &addr, "--wait", "60"])
    })
    .await
    .unwrap();
    assert!(ok(&joined).starts_with("joined group "), "{joined:?}");
    assert!(offer.wait().unwrap().success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("paired: device"), "{rest}");
    // The stderr told the user what to run on the new device.
    let mut told = String::new();
    offer
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut told)
        .unwrap();
    assert!(
        told.contains(&format!("zerok pair {code} --relay")),
        "{told}"
    );
    // Both list both devices.
    for home in [&a, &b] {
        assert_eq!(ok(&zerok(home, &["devices"])).lines().count(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_remove_rekeys_the_group_and_the_removed_home_can_push_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (a, b) = cli_pair(dir.path(), &relay);
    let b_id = ok(&zerok(&b, &["devices", "--json"]))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|d| d["this_device"] == true)
        .unwrap()["device"]
        .as_str()
        .unwrap()
        .to_owned();
    // Not an id, or no such device: one clear line, exit 1, nothing changed.
    let stderr = failed(&zerok(&a, &["devices", "remove", "zz"]), 1);
    assert!(stderr.contains("not a device id"), "{stderr}");
    let stderr = failed(&zerok(&a, &["devices", "remove", "0000000000000000"]), 1);
    assert!(stderr.contains("no device"), "{stderr}");
    assert_eq!(ok(&zerok(&a, &["devices"])).lines().count(), 2);

    let out = ok(&zerok(&a, &["devices", "remove", &b_id[..12]]));
    assert!(out.contains("re-keyed"), "{out}");
    assert_eq!(ok(&zerok(&a, &["devices"])).lines().count(), 1);
    ok(&zerok(&a, &["push", "after the removal"]));
    // B takes the rekey on its next pull (it reads nothing written after), which says it
    // was removed, and can push no more.
    let pulled = zerok(&b, &["pull"]);
    let stderr = failed(&pulled, 1);
    assert!(stderr.contains("removed"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&pulled.stdout).contains("after the removal"),
        "{pulled:?}"
    );
    let stderr = failed(&zerok(&b, &["push", "still here"]), 1);
    assert!(stderr.contains("removed"), "{stderr}");
}

/// `zerok init --recover` on `home` with `phrase` in the environment.
fn recover(home: &Path, addr: &str, phrase: &str, wait: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zerok"))
        .arg("--home")
        .arg(home)
        .args(["init", "--recover", "--relay", addr, "--wait", wait])
        .env_remove("ZEROK_HOME")
        .env("ZEROK_RECOVERY_PHRASE", phrase)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_recovery_prints_a_phrase_that_init_recover_joins_the_group_with() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let addr_text = std::fs::read_to_string(relay.data_dir().join("relay.addr")).unwrap();
    let addr = addr_text.trim();
    let a = dir.path().join("a");
    ok(&zerok(&a, &["init", "--relay", addr]));
    ok(&zerok(&a, &["push", "kept on the relay"]));
    let exported = zerok(&a, &["export-recovery"]);
    let phrase = ok(&exported).trim().to_owned();
    assert_eq!(phrase.split(' ').count(), 24, "{phrase}");
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert!(
        stderr.contains(&format!("zerok init --recover --relay {addr}")),
        "{stderr}"
    );
    let listed = ok(&zerok(&a, &["devices"]));
    assert!(listed.contains("recovery phrase"), "{listed}");
    std::fs::remove_dir_all(&a).unwrap();

    // A mistyped phrase: one clear line, exit 1, no group made.
    let b = dir.path().join("b");
    let words: Vec<&str> = phrase.split(' ').collect();
    let stderr = failed(&recover(&b, addr, &words[..23].join(" "), "5"), 1);
    assert!(stderr.contains("24 words"), "{stderr}");
    assert!(ok(&zerok(&b, &["status"])).contains("no groups"));

    let out = ok(&recover(&b, addr, &phrase, "30"));
    assert!(out.contains("recovered group"), "{out}");
    let pulled = ok(&zerok(&b, &["pull"]));
    assert!(pulled.contains("kept on the relay"), "{pulled}");
    ok(&zerok(&b, &["push", "from the new device"]));
    // Recovering again into a home that is set up: refused.
    let stderr = failed(&recover(&b, addr, &phrase, "5"), 1);
    assert!(stderr.contains("already set up"), "{stderr}");

    // The relay holds the phrase's snapshot as ciphertext only: neither the words nor the
    // secret of its mailbox are on its disk or in its logs.
    let mut relay = relay;
    let (status, _) = relay
        .terminate(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert!(status.success());
    let keys = zerok_actors::crypto::recovery::RecoverySecret::parse(&phrase)
        .unwrap()
        .keys();
    let secret = keys.mailbox_secret().to_vec();
    let needles = [
        ("phrase", phrase.as_bytes().to_vec()),
        ("first words", words[..3].join(" ").into_bytes()),
        ("mailbox secret", secret.clone()),
        (
            "mailbox secret hex",
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    let mut paths = vec![relay.data_dir().to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = paths.pop() {
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for (what, needle) in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{what} found in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 0);
    let logs = relay.logs();
    for (what, needle) in &needles {
        assert!(
            !logs
                .as_bytes()
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "{what} in the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_announces_a_file_that_pull_lists_and_get_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (a, b) = cli_pair(dir.path(), &relay);
    let source = dir.path().join("report.pdf");
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&source, &bytes).unwrap();

    let out = ok(&zerok(&a, &["put", source.to_str().unwrap()]));
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{out}");
    let id = words[0].to_owned();
    assert_eq!(&words[1..], ["3000000", "report.pdf"]);

    // `zerok files` lists what a device put or was told of.
    assert_eq!(
        ok(&zerok(&a, &["files"])),
        format!("{id} 3000000 report.pdf\n")
    );
    // B has not heard of it yet: one clear line.
    assert_eq!(ok(&zerok(&b, &["files"])), "");
    let stderr = failed(&zerok(&b, &["get", &id]), 1);
    assert!(stderr.contains("zerok pull"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1);
    let pulled = ok(&zerok(&b, &["pull"]));
    assert!(
        pulled.contains(&format!("file {id} 3000000 report.pdf")),
        "{pulled}"
    );
    let listed = ok(&zerok(&b, &["files", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(listed["file"], id.as_str());
    assert_eq!(listed["size"], 3_000_000);
    assert_eq!(listed["name"], "report.pdf");
    // A unique prefix of the id is enough.
    let dest = dir.path().join("copy.pdf");
    let printed = ok(&zerok(&b, &["get", &id[..12], dest.to_str().unwrap()]));
    assert_eq!(printed.trim(), dest.display().to_string());
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    // A missing file: one line, non-zero, nothing announced.
    let missing = dir.path().join("missing.bin");
    let stderr = failed(&zerok(&a, &["put", missing.to_str().unwrap()]), 1);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(ok(&zerok(&a, &["files"])).lines().count(), 1);

    // With two files known, a prefix of both names them instead of fetching either.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"two files now").unwrap();
    let second = ok(&zerok(&a, &["put", notes.to_str().unwrap()]));
    let second = second.split_whitespace().next().unwrap().to_owned();
    let files = ok(&zerok(&a, &["files"]));
    let names: Vec<&str> = files.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    assert_eq!(names, ["notes.txt", "report.pdf"], "{files}");
    let stderr = failed(&zerok(&a, &["get", ""]), 1);
    assert!(
        stderr.contains("2 files") && stderr.contains(&id) && stderr.contains(&second),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
