//! Large content (issue 15) end to end against the real `zerok-relay` binary over iroh on
//! 127.0.0.1: files sealed in chunks, uploaded and fetched over iroh-blobs, resumed after
//! an interruption, verified, deduplicated inside a group only, fetched only by members.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use zerok_client::{Client, ClientError, ContentError, Event, FileRef, NewSecret, Progress};

const MIB: u64 = 1024 * 1024;

/// A file of `size` pseudo-random bytes (a different stream per `seed`).
fn random_file(dir: &Path, name: &str, size: u64, seed: u8) -> PathBuf {
    let path = dir.join(name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut block = [0u8; 64 * 1024];
    let mut counter = 0u64;
    let mut written = 0u64;
    while written < size {
        for (i, chunk) in block.chunks_mut(32).enumerate() {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&[seed]);
            hasher.update(&(counter + i as u64).to_le_bytes());
            chunk.copy_from_slice(&hasher.finalize().as_bytes()[..chunk.len()]);
        }
        counter += 2048;
        let n = (size - written).min(block.len() as u64) as usize;
        std::io::Write::write_all(&mut out, &block[..n]).unwrap();
        written += n as u64;
    }
    path
}

fn file_hash(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    hasher.finalize()
}

/// The next file announcement among `client`'s events.
async fn next_file(events: &mut mpsc::Receiver<Event>, within: Duration) -> FileRef {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::File { file, .. })) => return file,
            Ok(Some(_)) => {}
            other => panic!("no file announced: {other:?}"),
        }
    }
}

/// Sealed files the relay's content store keeps as files.
fn stored_files(relay_dir: &Path) -> Vec<PathBuf> {
    let dir = relay_dir.join("content").join("data");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .collect()
}

/// Run `transfer` until `progress` reports at least `fraction` of the bytes moved, then
/// drop it (the transfer is abandoned half way). Answers the bytes moved by then.
async fn interrupted<T>(
    transfer: impl std::future::Future<Output = T>,
    mut progress: mpsc::Receiver<Progress>,
    fraction: f64,
) -> u64 {
    let watch = async {
        let mut moved = 0;
        while let Some(event) = progress.recv().await {
            let (done, total) = match event {
                Progress::Uploading {
                    done,
                    total,
                    resumed_from,
                } => (resumed_from + done, resumed_from + total),
                Progress::Downloading {
                    done,
                    total,
                    resumed_from,
                } => (resumed_from + done, resumed_from + total),
                _ => continue,
            };
            moved = done;
            if done as f64 >= total as f64 * fraction {
                return moved;
            }
        }
        moved
    };
    tokio::select! {
        _ = transfer => panic!("the transfer finished before it could be interrupted"),
        moved = watch => moved,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_is_fetched_byte_identical_and_both_directions_resume_after_an_interruption()
{
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let mut bob_events = bob.events().unwrap();
    let source = random_file(dir.path(), "video.bin", 200 * MIB, 1);

    // Alice's upload is cut at half way; the next put sends only what the relay lacks.
    let (tx, rx) = mpsc::channel(1024);
    let sent_before = interrupted(alice.put_file_with(group, &source, Some(tx)), rx, 0.5).await;
    let (tx, mut rx) = mpsc::channel(4096);
    let file = alice.put_file_with(group, &source, Some(tx)).await.unwrap();
    let mut resumed_from = None;
    let mut sent_after = 0;
    while let Ok(event) = rx.try_recv() {
        if let Progress::Uploading {
            done,
            resumed_from: from,
            ..
        } = event
        {
            resumed_from = Some(from);
            sent_after = sent_after.max(done);
        }
    }
    let resumed_from = resumed_from.expect("the second put uploaded the rest");
    assert!(
        resumed_from + file.sealed_size / 10 >= sent_before,
        "resumed from {resumed_from} after {sent_before} were sent"
    );
    assert!(
        sent_after + sent_before <= file.sealed_size + file.sealed_size / 10,
        "re-sent too much: {sent_after} after {sent_before} of {}",
        file.sealed_size
    );
    assert_eq!(file.size, 200 * MIB);
    let leftovers = std::fs::read_dir(dir.path().join("alice").join("content"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("put-"))
        .count();
    assert_eq!(leftovers, 0, "a put's tree and tags go when the put ends");

    // Bob learns of the file through normal sync, and his download is cut at half way.
    let announced = next_file(&mut bob_events, Duration::from_secs(30)).await;
    assert_eq!((announced.hash, announced.size), (file.hash, file.size));
    assert_eq!(announced.name, "video.bin");
    let dest = dir.path().join("fetched.bin");
    let (tx, rx) = mpsc::channel(1024);
    let got_before = interrupted(bob.get_file_with(&announced, &dest, Some(tx)), rx, 0.5).await;
    assert!(
        !dest.exists(),
        "nothing is handed over before it all verified"
    );
    let partial = dir.path().join("fetched.bin.partial");
    assert!(
        partial.exists(),
        "the opened prefix is kept for a resumed get"
    );
    let got_after = bob.get_file(&announced, &dest).await.unwrap();
    assert!(!partial.exists(), "the partial file became the destination");
    assert!(
        got_after + got_before <= file.sealed_size + file.sealed_size / 10,
        "re-downloaded too much: {got_after} after {got_before} of {}",
        file.sealed_size
    );
    assert!(got_after > 0 && got_after < file.sealed_size, "{got_after}");
    assert_eq!(file_hash(&dest), file_hash(&source), "byte-identical");

    // The relay never saw the plaintext: its copy is the sealed bytes.
    let stored = stored_files(relay.data_dir());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        std::fs::metadata(&stored[0]).unwrap().len(),
        file.sealed_size
    );
    assert_ne!(file_hash(&stored[0]), file_hash(&source));
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_in_the_middle_of_a_push_takes_the_rest_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let source = random_file(dir.path(), "movie.bin", 256 * MIB, 31);

    // The relay is SIGKILLed while the push runs, once it committed the push's partial
    // entry (within 100 ms of the first bytes; it says so in its log).
    let (tx, _progress) = mpsc::channel(4096);
    let put = alice.put_file_with(group, &source, Some(tx));
    let committed = wait_until(
        "the relay to commit the push's partial entry",
        Duration::from_secs(60),
        async || {
            relay
                .logs()
                .contains("content push: partial entry committed")
        },
    );
    tokio::select! {
        _ = put => panic!("the put ended before the relay committed its partial entry"),
        () = committed => {}
    }
    relay.kill();
    relay.restart().await.unwrap();

    // The put again: the relay found what it had verified, takes the rest, acks the file.
    let (tx, mut rx) = mpsc::channel(4096);
    let file = alice.put_file_with(group, &source, Some(tx)).await.unwrap();
    let mut resumed_from = None;
    while let Ok(event) = rx.try_recv() {
        if let Progress::Uploading {
            resumed_from: from, ..
        } = event
        {
            resumed_from = Some(from);
        }
    }
    let resumed_from = resumed_from.expect("the second put uploaded the rest");
    assert!(
        resumed_from > 0 && resumed_from < file.sealed_size,
        "resumed from {resumed_from} of {}",
        file.sealed_size
    );

    // What the relay acked survives another SIGKILL, and Bob gets it byte for byte.
    relay.kill();
    relay.restart().await.unwrap();
    let dest = dir.path().join("movie-copy.bin");
    bob.get_file(&file, &dest).await.unwrap();
    assert_eq!(file_hash(&dest), file_hash(&source));
    assert_eq!(stored_files(relay.data_dir()).len(), 1);
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_on_the_relay_fails_the_fetch_with_an_integrity_error() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let source = random_file(dir.path(), "doc.pdf", 3 * MIB, 2);
    let file = alice.put_file(group, &source).await.unwrap();
    let stored = stored_files(relay.data_dir());
    assert_eq!(stored.len(), 1);
    let mut bytes = std::fs::read(&stored[0]).unwrap();
    bytes[(file.sealed_size / 2) as usize] ^= 0x01;
    std::fs::write(&stored[0], &bytes).unwrap();

    let dest = dir.path().join("doc-copy.pdf");
    let got = bob.get_file(&file, &dest).await;
    assert!(
        matches!(got, Err(ClientError::Content(ContentError::Integrity(_)))),
        "{got:?}"
    );
    assert!(!dest.exists(), "nothing partial handed over as complete");
    assert!(
        !dir.path().join("doc-copy.pdf.partial").exists(),
        "what does not verify is not kept"
    );
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_stored_once_per_group_and_unrelated_across_groups_and_members_only_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let source = random_file(dir.path(), "photo.jpg", 2 * MIB, 3);

    let first = alice.put_file(group, &source).await.unwrap();
    let (tx, mut rx) = mpsc::channel(4096);
    let second = alice.put_file_with(group, &source, Some(tx)).await.unwrap();
    assert_eq!(first.hash, second.hash, "convergent inside the group");
    while let Ok(event) = rx.try_recv() {
        assert!(
            !matches!(event, Progress::Uploading { .. }),
            "the relay had it: nothing uploaded again ({event:?})"
        );
    }
    assert_eq!(stored_files(relay.data_dir()).len(), 1, "stored once");
    assert_eq!(relay_metric(&relay, "zerok_relay_content_files").await, 1.0);
    assert_eq!(
        relay_metric(&relay, "zerok_relay_content_bytes").await,
        first.sealed_size as f64
    );
    // What moved: the file's sealed bytes up, once.
    let pushed = "zerok_relay_content_transfer_bytes_total{direction=\"push\"}";
    assert_eq!(relay_metric(&relay, pushed).await, first.sealed_size as f64);

    // The same file in another group seals to unrelated bytes.
    let other = alice
        .create_group("other", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let elsewhere = alice.put_file(other, &source).await.unwrap();
    assert_ne!(elsewhere.hash, first.hash);
    assert_ne!(*elsewhere.key, *first.key);
    assert_eq!(stored_files(relay.data_dir()).len(), 2);

    // Mallory, in her own group on the same relay, knows the file's hash and key but has
    // no Join proof of its mailbox: the relay does not hold it for her mailbox.
    let mallory = client(dir.path(), "mallory").await;
    let hers = mallory
        .create_group("mallory", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    mallory.put_file(hers, &source).await.unwrap();
    let hers_mailbox = mallory_mailbox(&mallory, hers, &source).await;
    let mut stolen = first.clone();
    stolen.group = hers;
    stolen.mailbox = hers_mailbox;
    let got = mallory.get_file(&stolen, dir.path().join("stolen")).await;
    assert!(
        matches!(got, Err(ClientError::Content(ContentError::NotFound))),
        "{got:?}"
    );
    assert!(
        relay_metric(
            &relay,
            "zerok_relay_content_refused_total{reason=\"not_found\"}"
        )
        .await
            >= 1.0
    );
    // Asking for the group's own mailbox needs its keys, which she does not have.
    let got = mallory.get_file(&first, dir.path().join("stolen2")).await;
    assert!(matches!(got, Err(ClientError::UnknownGroup(_))), "{got:?}");
    assert!(!dir.path().join("stolen").exists() && !dir.path().join("stolen2").exists());

    // A member fetches it (the relay counts what it sent as its send ends).
    let dest = dir.path().join("photo-copy.jpg");
    bob.get_file(&first, &dest).await.unwrap();
    assert_eq!(file_hash(&dest), file_hash(&source));
    let sent = "zerok_relay_content_transfer_bytes_total{direction=\"get\"}";
    wait_until(
        "the relay to count the get",
        Duration::from_secs(5),
        async || relay_metric_if_any(&relay, sent).await.is_some(),
    )
    .await;
    let counted = relay_metric_if_any(&relay, sent).await;
    assert_eq!(counted, Some(first.sealed_size as f64));
    for client in [alice, bob, mallory] {
        client.shutdown().await;
    }
}

/// The mailbox Mallory's own file went to (her current epoch's).
async fn mallory_mailbox(
    mallory: &Client,
    group: zerok_client::GroupId,
    source: &Path,
) -> zerok_messages::MailboxId {
    mallory.put_file(group, source).await.unwrap().mailbox
}

/// A relay on `dir/name` run with `config` (TOML) besides a fixed loopback port.
async fn relay_with(dir: &Path, name: &str, config: &str) -> zerok_harness::process::RelayProcess {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    zerok_harness::process::RelayProcess::start(
        &relay_binary(),
        &dir.join(name),
        &["--bind", &bind, "--config", path.to_str().unwrap()],
    )
    .await
    .unwrap()
}

fn refused_for_quota(result: &Result<FileRef, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Content(ContentError::Refused {
            code: zerok_messages::ErrorCode::QuotaExceeded,
            ..
        }))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_count_against_the_mailbox_quota_and_the_relay_budget_and_expire_with_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with(
        dir.path(),
        "relay",
        "[content]\nmailbox_quota_bytes = 3145728\nmax_bytes = 5242880\nttl_default_secs = 4\nttl_max_secs = 4\n",
    )
    .await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let one = random_file(dir.path(), "one", 2 * MIB, 11);
    let two = random_file(dir.path(), "two", 2 * MIB, 12);
    let three = random_file(dir.path(), "three", 2 * MIB, 13);
    let first = alice.put_file(group, &one).await.unwrap();
    // 2 + 2 MiB > the mailbox's 3 MiB.
    let over = alice.put_file(group, &two).await;
    assert!(refused_for_quota(&over), "{over:?}");
    // Another group's mailbox has its own quota, within the relay's 5 MiB budget...
    let second_group = alice
        .create_group("second", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    alice.put_file(second_group, &two).await.unwrap();
    // ...which a third file would exceed, whichever mailbox it is for.
    let third_group = alice
        .create_group("third", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let over_budget = alice.put_file(third_group, &three).await;
    assert!(refused_for_quota(&over_budget), "{over_budget:?}");
    // Past its TTL the relay no longer serves it (Bob never fetched it: nothing local), and
    // the mailbox's quota is free again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let expired = bob.get_file(&first, dir.path().join("one-late")).await;
    assert!(
        matches!(expired, Err(ClientError::Content(ContentError::NotFound))),
        "{expired:?}"
    );
    alice.put_file(group, &two).await.unwrap();
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_nothing_and_any_relay_serves_a_get_even_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut first_relay = relay(dir.path(), "relay-1").await;
    let mut second_relay = relay(dir.path(), "relay-2").await;
    let relays = vec![second_relay.addr.clone(), first_relay.addr.clone()];
    let (alice, bob, group) = pair(dir.path(), relays).await;
    let source = random_file(dir.path(), "notes.bin", 3 * MIB, 21);
    let file = alice.put_file(group, &source).await.unwrap();
    assert_eq!(stored_files(first_relay.data_dir()).len(), 1);
    assert_eq!(stored_files(second_relay.data_dir()).len(), 1);

    // A stranger's endpoint that knows the hash: the relay refuses its iroh-blobs
    // connection (it holds no grant), and nothing arrives.
    let mut rng = zerok_actors::rng::Rng::system();
    let stranger = zerok_actors::link::iroh::IrohNode::bind(
        zerok_actors::link::iroh::IrohConfig::new(rng.bytes(), "127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let store = iroh_blobs::store::mem::MemStore::new();
    let hash = iroh_blobs::Hash::from_bytes(file.hash.0);
    let fetched = match stranger.connect_blobs(&first_relay.addr).await {
        Ok(connection) => store
            .remote()
            .fetch(connection, iroh_blobs::HashAndFormat::raw(hash))
            .complete()
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!fetched, "a stranger fetched the file");
    assert!(!store.blobs().has(hash).await.unwrap());
    stranger.close().await;

    // The group's first relay is gone: Bob's get is served by the other one.
    second_relay.kill();
    let dest = dir.path().join("notes-copy.bin");
    bob.get_file(&file, &dest).await.unwrap();
    assert_eq!(file_hash(&dest), file_hash(&source));

    // The killed relay restarts on its data dir with the file it acked: with the other
    // one gone, it serves the get alone.
    second_relay.restart().await.unwrap();
    first_relay.kill();
    let again = dir.path().join("notes-again.bin");
    bob.get_file(&file, &again).await.unwrap();
    assert_eq!(file_hash(&again), file_hash(&source));

    // Neither relay's disk nor log holds the file's key or its plaintext.
    let needle_key: &[u8] = &file.key[..];
    let plain = std::fs::read(&source).unwrap();
    let needle_plain = &plain[1000..1032];
    for relay in [&first_relay, &second_relay] {
        for path in files_under(relay.data_dir()) {
            let bytes = std::fs::read(&path).unwrap();
            for needle in [needle_key, needle_plain] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds a secret",
                    path.display()
                );
            }
        }
        let logs = relay.logs();
        assert!(!logs.contains(&data_encoding::HEXLOWER.encode(needle_key)));
    }
    alice.shutdown().await;
    bob.shutdown().await;
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_refused_when_it_would_take_the_relays_disk_below_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    // A floor no disk here has: every new file would go below it.
    let relay = relay_with(
        dir.path(),
        "relay",
        "[store]\nmin_free_disk_bytes = 1125899906842624\n",
    )
    .await;
    let alice = client(dir.path(), "alice").await;
    let group = alice
        .create_group("full", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let source = random_file(dir.path(), "big.bin", MIB, 31);
    let refused = alice.put_file(group, &source).await;
    match &refused {
        Err(ClientError::Content(ContentError::Refused { message, .. })) => {
            assert!(message.contains("disk"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(refused_for_quota(&refused));
    assert!(stored_files(relay.data_dir()).is_empty());
    alice.shutdown().await;
}
