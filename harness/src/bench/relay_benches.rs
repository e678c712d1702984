//! Benchmarks through a real `zerok-relay` process over iroh on loopback: push, fanout,
//! catchup, connections, failover.

use super::baseline::{Baseline, PACE};
use super::stats::{Samples, ms};
use super::{BenchResult, Better};
use crate::process::RelayProcess;
use crate::proto::ProtoClient;
use anyhow::{Context, anyhow};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use zerok_actors::crypto::keys::{EpochKeys, GroupSecret};
use zerok_actors::link::iroh::{IrohConfig, IrohNode};
use zerok_actors::rng::Rng;
use zerok_messages::{BlobId, Cursor, Epoch, Frame, MailboxId};

/// Relay settings for benchmarks: limits raised so the machine, not a rate limit, is measured
/// (every client of a benchmark is one source, 127.0.0.1, and 16 endpoints hold up to
/// 10,000 connections).
pub const BENCH_CONFIG: &str = "\
[connections]
max = 20000
idle_timeout_secs = 3600
per_ip_per_sec = 1000000
per_ip_burst = 1000000
per_source_max = 1000000
handshakes_per_source_max = 1000000
per_device_max = 1000000
[rate_limits]
frames_per_device_per_sec = 100000000
frames_per_device_burst = 100000000
frames_per_source_per_sec = 100000000
frames_per_source_burst = 100000000
frames_global_per_sec = 100000000
frames_global_burst = 100000000
[limits]
mailbox_quota_bytes = 4294967296
mailbox_items_max = 100000000
[store]
max_bytes = 1099511627776
max_items = 100000000
";

/// Where benchmarks run: the relay binary and a scratch dir.
pub struct Bench {
    /// The relay binary.
    pub relay_bin: PathBuf,
    /// Scratch space (data dirs, config).
    pub dir: PathBuf,
    /// Small sizes.
    pub quick: bool,
    seed: AtomicU64,
    relays: AtomicU64,
}

impl Bench {
    /// A bench on `dir`.
    pub fn new(relay_bin: PathBuf, dir: PathBuf, quick: bool) -> Self {
        Self {
            relay_bin,
            dir,
            quick,
            seed: AtomicU64::new(1),
            relays: AtomicU64::new(0),
        }
    }

    /// Start a relay with the bench config on a fresh data dir.
    pub async fn relay(&self, bind_port: Option<u16>) -> anyhow::Result<RelayProcess> {
        let n = self.relays.fetch_add(1, Ordering::Relaxed);
        self.relay_on(&self.dir.join(format!("relay-{n}")), bind_port)
            .await
    }

    /// Start a relay with the bench config on `data_dir`.
    pub async fn relay_on(
        &self,
        data_dir: &std::path::Path,
        bind_port: Option<u16>,
    ) -> anyhow::Result<RelayProcess> {
        let config = self.dir.join("bench-relay.toml");
        std::fs::write(&config, BENCH_CONFIG)?;
        let bind = format!("127.0.0.1:{}", bind_port.unwrap_or(0));
        let config = config.display().to_string();
        RelayProcess::start_logging(
            &self.relay_bin,
            data_dir,
            &[
                "--config",
                &config,
                "--bind",
                &bind,
                "--http",
                "127.0.0.1:0",
            ],
            "warn",
        )
        .await
        .with_context(|| format!("starting {}", self.relay_bin.display()))
    }

    /// A fresh client endpoint on loopback.
    pub async fn endpoint(&self) -> anyhow::Result<IrohNode> {
        let seed = self.seed.fetch_add(1, Ordering::Relaxed);
        let key = Rng::seeded(0xbe9c_0000 + seed).bytes();
        Ok(IrohNode::bind(IrohConfig::new(key, "127.0.0.1:0".parse()?)).await?)
    }

    /// A client of `relay` on its own endpoint.
    pub async fn client(&self, relay: &RelayProcess) -> anyhow::Result<ProtoClient> {
        let node = self.endpoint().await?;
        let client = ProtoClient::connect(&node.dialer(), &relay.addr).await?;
        Ok(client.owning(node))
    }
}

/// The keys of benchmark group `n`.
pub fn group(n: u64) -> EpochKeys {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&n.to_be_bytes());
    secret[8] = 0xb5;
    GroupSecret::from_bytes(secret).epoch_keys(Epoch(0))
}

/// A 1 KiB record body, unique for (`n`, `tag`).
pub fn record(n: u64, tag: u64) -> Bytes {
    let mut body = vec![0u8; 1024];
    body[..8].copy_from_slice(&n.to_be_bytes());
    body[8..16].copy_from_slice(&tag.to_be_bytes());
    Rng::seeded(n ^ (tag << 32)).fill(&mut body[16..64]);
    Bytes::from(body)
}

/// Pull every item of `mailbox` page by page with the relay's page limits, as a fresh device
/// catching up; answers (items, ciphertext bytes).
pub async fn pull_all(reader: &ProtoClient, mailbox: MailboxId) -> anyhow::Result<(u64, u64)> {
    let mut after = Cursor(0);
    let (mut count, mut bytes) = (0u64, 0u64);
    loop {
        let (items, next, has_more) = reader
            .pull(
                mailbox,
                after,
                reader.limits.pull_items_max,
                reader.limits.pull_bytes_max,
            )
            .await?;
        count += items.len() as u64;
        bytes += items.iter().map(|i| i.ciphertext.len() as u64).sum::<u64>();
        after = next;
        if !has_more {
            return Ok((count, bytes));
        }
    }
}

/// Pushes in flight per client in `push` and `stored_push`.
pub const PUSH_WINDOW: usize = 16;

/// `push`: C clients pushing 1 KiB records, `window` in flight each (1: each push awaited
/// before the next, the relay's part of a client's one-task push).
pub async fn push(
    bench: &Bench,
    base: &Baseline,
    clients: usize,
    window: usize,
) -> anyhow::Result<Vec<BenchResult>> {
    let relay = bench.relay(None).await?;
    push_on(bench, base, clients, window, &relay, "push").await
}

/// The push benchmark against `relay`, its figures named `name`.
pub async fn push_on(
    bench: &Bench,
    base: &Baseline,
    clients: usize,
    window: usize,
    relay: &RelayProcess,
    name: &str,
) -> anyhow::Result<Vec<BenchResult>> {
    let duration = if bench.quick {
        Duration::from_millis(1500)
    } else {
        Duration::from_secs(6)
    };
    let warmup = Duration::from_millis(500);
    let mut connected = Vec::new();
    for c in 0..clients {
        let client = Arc::new(bench.client(relay).await?);
        let keys = group(1000 + c as u64);
        client.join(&keys).await?;
        connected.push((client, keys.mailbox_id()));
    }
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, (client, mailbox)) in connected.iter().enumerate() {
        for w in 0..window {
            let (client, mailbox) = (Arc::clone(client), *mailbox);
            let (acked, failed) = (Arc::clone(&acked), Arc::clone(&failed));
            tasks.push(tokio::spawn(async move {
                let mut samples = Samples::new();
                let mut n = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= stop_at {
                        return samples;
                    }
                    let body = record(n, (c * 1000 + w) as u64);
                    n += 1;
                    let result = client.push(mailbox, body).await;
                    let done = Instant::now();
                    if now >= measure_from && done <= stop_at {
                        match result {
                            Ok(_) => {
                                acked.fetch_add(1, Ordering::Relaxed);
                                samples.push(done - now);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
    }
    let mut samples = Samples::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    let acked = acked.load(Ordering::Relaxed) as f64;
    let per_s = acked / duration.as_secs_f64();
    let base_latency = base.rtt_p50 + base.fsync_p50;
    let mut results = vec![
        BenchResult::new(name, "acked_per_s", per_s, "1/s", Better::Higher)
            .against("append_fdatasync_items_per_s", base.append_items_per_s),
        BenchResult::new(
            name,
            "ack_latency_p50_ms",
            ms(samples.percentile(50.0)),
            "ms",
            Better::Lower,
        )
        .against("rtt_p50+fsync_p50_ms", ms(base_latency)),
        BenchResult::new(
            name,
            "ack_latency_p99_ms",
            ms(samples.percentile(99.0)),
            "ms",
            Better::Lower,
        )
        .against("rtt_p50+fsync_p50_ms", ms(base_latency)),
        BenchResult::new(
            name,
            "failed",
            failed.load(Ordering::Relaxed) as f64,
            "pushes",
            Better::Lower,
        ),
    ];
    results.extend(commit_figures(relay, name).await);
    Ok(results
        .into_iter()
        .map(|r| {
            r.param("clients", clients)
                .param("in_flight_per_client", window)
                .param("record_bytes", 1024)
        })
        .collect())
}

/// Sum and count of a Prometheus histogram of the relay's `/metrics`.
async fn histogram(relay: &RelayProcess, name: &str) -> Option<(f64, f64)> {
    let (status, text) = zerok_relay::http::client::http_get(relay.http?, "/metrics")
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let value = |suffix: &str| {
        let prefix = format!("{name}_{suffix} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((value("sum")?, value("count")?))
}

/// The relay's average group-commit size and flush time, as informational results.
async fn commit_figures(relay: &RelayProcess, bench: &str) -> Vec<BenchResult> {
    let mut out = Vec::new();
    if let Some((sum, count)) = histogram(relay, "zerok_relay_batch_size").await
        && count > 0.0
    {
        out.push(BenchResult::new(
            bench,
            "relay_avg_commit_items",
            sum / count,
            "items",
            Better::Higher,
        ));
    }
    if let Some((sum, count)) = histogram(relay, "zerok_relay_flush_latency_seconds").await
        && count > 0.0
    {
        out.push(BenchResult::new(
            bench,
            "relay_avg_commit_ms",
            sum / count * 1000.0,
            "ms",
            Better::Lower,
        ));
    }
    if let Some((sum, count)) = histogram(relay, "zerok_relay_push_latency_seconds").await
        && count > 0.0
    {
        out.push(BenchResult::new(
            bench,
            "relay_avg_push_to_ack_ms",
            sum / count * 1000.0,
            "ms",
            Better::Lower,
        ));
    }
    out
}

/// `fanout`: one pusher, N subscribers; push → delivered latency.
pub async fn fanout(
    bench: &Bench,
    base: &Baseline,
    subscribers: usize,
) -> anyhow::Result<Vec<BenchResult>> {
    let relay = bench.relay(None).await?;
    let keys = group(7);
    let mailbox = keys.mailbox_id();
    let records = if bench.quick { 40 } else { 300 };
    let pusher = bench.client(&relay).await?;
    pusher.join(&keys).await?;
    let sent: Arc<std::sync::Mutex<HashMap<BlobId, Instant>>> = Arc::default();
    let mut receivers = Vec::new();
    for _ in 0..subscribers {
        let mut client = bench.client(&relay).await?;
        client.join(&keys).await?;
        client.subscribe(mailbox, Cursor(0)).await?;
        receivers.push(tokio::spawn(async move {
            let mut got: Vec<(BlobId, Instant)> = Vec::with_capacity(records);
            while got.len() < records {
                match client.next_event(Duration::from_secs(30)).await {
                    Some(Frame::Deliver { item, .. }) => got.push((item.blob_id, Instant::now())),
                    Some(Frame::Notify { .. }) => {}
                    Some(_) => {}
                    None => break,
                }
            }
            got
        }));
    }
    let mut acks = Samples::new();
    for n in 0..records as u64 {
        let body = record(n, 77);
        let blob_id = BlobId::of_ciphertext(&body);
        let sent_at = Instant::now();
        sent.lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(blob_id, sent_at);
        pusher.push(mailbox, body).await?;
        acks.push(sent_at.elapsed());
        tokio::time::sleep(PACE).await;
    }
    let mut samples = Samples::new();
    let mut missing = 0usize;
    let sent = sent.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    for receiver in receivers {
        let got = receiver.await?;
        missing += records - got.len();
        for (blob_id, at) in got {
            if let Some(sent_at) = sent.get(&blob_id) {
                samples.push(at.saturating_duration_since(*sent_at));
            }
        }
    }
    let results = vec![
        BenchResult::new(
            "fanout",
            "push_to_received_p50_ms",
            ms(samples.percentile(50.0)),
            "ms",
            Better::Lower,
        )
        .against(
            "3rtt_paced_p50+fsync_paced_p50_ms",
            3.0 * ms(base.rtt_paced_p50) + ms(base.fsync_paced_p50),
        ),
        BenchResult::new(
            "fanout",
            "push_to_received_p99_ms",
            ms(samples.percentile(99.0)),
            "ms",
            Better::Lower,
        )
        .against("rtt_p50_ms", ms(base.rtt_p50)),
        BenchResult::new(
            "fanout",
            "missed_live",
            missing as f64,
            "deliveries",
            Better::Lower,
        ),
        // Where the time goes: the pusher's own round trip to its ack, and (means, from the
        // relay's /metrics) push frame → ack inside the relay and the group commit in it.
        BenchResult::new(
            "fanout",
            "push_to_ack_p50_ms",
            ms(acks.percentile(50.0)),
            "ms",
            Better::Lower,
        )
        .against(
            "rtt_paced_p50+fsync_paced_p50_ms",
            ms(base.rtt_paced_p50) + ms(base.fsync_paced_p50),
        ),
    ];
    let relay_figures = commit_figures(&relay, "fanout").await;
    Ok(results
        .into_iter()
        .chain(relay_figures)
        .map(|r| {
            r.param("subscribers", subscribers)
                .param("records", records)
        })
        .collect())
}

/// `catchup`: a fresh device pulls every stored record.
pub async fn catchup(bench: &Bench, base: &Baseline) -> anyhow::Result<Vec<BenchResult>> {
    let mut relay = bench.relay(None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = relay
        .rss_kib()
        .ok_or_else(|| anyhow!("no /proc RSS for the relay"))?;
    let keys = group(9);
    let mailbox = keys.mailbox_id();
    let records: u64 = if bench.quick { 5_000 } else { 100_000 };
    let writers = 8u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = Arc::new(bench.client(&relay).await?);
        client.join(&keys).await?;
        for lane in 0..8u64 {
            let client = Arc::clone(&client);
            tasks.push(tokio::spawn(async move {
                let mut n = w * 8 + lane;
                while n < records {
                    client.push(mailbox, record(n, 9)).await?;
                    n += writers * 8;
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    let reader = bench.client(&relay).await?;
    reader.join(&keys).await?;
    let started = Instant::now();
    let (count, bytes) = pull_all(&reader, mailbox).await?;
    let seconds = started.elapsed().as_secs_f64();
    if count != records {
        return Err(anyhow!("pulled {count} of {records} records"));
    }
    let mib_s = bytes as f64 / (1024.0 * 1024.0) / seconds;
    // The store's index is rebuilt from the log at start: time a restart with every record
    // stored, and weigh the index by the relay's memory after it (nothing else is loaded).
    drop(reader);
    relay.terminate(Duration::from_secs(15)).await?;
    let reopen_started = Instant::now();
    relay.restart().await?;
    let reopen_seconds = reopen_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored_kib = relay
        .rss_kib()
        .ok_or_else(|| anyhow!("no /proc RSS for the relay"))?;
    let index_bytes = stored_kib.saturating_sub(idle_kib) as f64 * 1024.0 / records as f64;
    let results = vec![
        BenchResult::new("catchup", "seconds", seconds, "s", Better::Lower),
        BenchResult::new(
            "catchup",
            "records_per_s",
            count as f64 / seconds,
            "1/s",
            Better::Higher,
        ),
        BenchResult::new("catchup", "mib_per_s", mib_s, "MiB/s", Better::Higher)
            .against("throughput_mib_s", base.throughput_mib_s),
        BenchResult::new(
            "catchup",
            "restart_seconds",
            reopen_seconds,
            "s",
            Better::Lower,
        ),
        BenchResult::new(
            "catchup",
            "relay_rss_stored_mib",
            stored_kib as f64 / 1024.0,
            "MiB",
            Better::Lower,
        ),
        BenchResult::new(
            "catchup",
            "index_bytes_per_item",
            index_bytes,
            "B",
            Better::Lower,
        ),
    ];
    Ok(results
        .into_iter()
        .map(|r| r.param("records", records).param("record_bytes", 1024))
        .collect())
}

/// `connections`: K idle, authenticated (joined) connections; relay memory.
pub async fn connections(bench: &Bench, k: usize) -> anyhow::Result<Vec<BenchResult>> {
    let relay = bench.relay(None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = relay
        .rss_kib()
        .ok_or_else(|| anyhow!("no /proc RSS for the relay"))?;
    let endpoints = 16.min(k.max(1));
    let mut nodes = Vec::new();
    for _ in 0..endpoints {
        nodes.push(bench.endpoint().await?);
    }
    let keys = Arc::new(group(11));
    let mut clients = Vec::with_capacity(k);
    let mut opened = 0usize;
    let mut failed = 0usize;
    for chunk in (0..k).collect::<Vec<_>>().chunks(64) {
        let mut joins = Vec::new();
        for i in chunk {
            let dialer = nodes[i % endpoints].dialer();
            let addr = relay.addr.clone();
            let keys = Arc::clone(&keys);
            joins.push(tokio::spawn(async move {
                let client = ProtoClient::connect(&dialer, &addr).await?;
                client.join(&keys).await?;
                Ok::<_, anyhow::Error>(client)
            }));
        }
        for join in joins {
            match join.await? {
                Ok(client) => {
                    clients.push(client);
                    opened += 1;
                }
                Err(_) => failed += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded_kib = relay
        .rss_kib()
        .ok_or_else(|| anyhow!("no /proc RSS for the relay"))?;
    // Still alive and answering?
    for client in clients.iter().take(10) {
        client.ping().await?;
    }
    let per_conn = loaded_kib.saturating_sub(idle_kib) as f64 / opened.max(1) as f64;
    let results = vec![
        BenchResult::new(
            "connections",
            "relay_rss_idle_mib",
            idle_kib as f64 / 1024.0,
            "MiB",
            Better::Lower,
        ),
        BenchResult::new(
            "connections",
            "relay_rss_loaded_mib",
            loaded_kib as f64 / 1024.0,
            "MiB",
            Better::Lower,
        ),
        BenchResult::new(
            "connections",
            "kib_per_connection",
            per_conn,
            "KiB",
            Better::Lower,
        ),
        BenchResult::new(
            "connections",
            "held",
            opened as f64,
            "connections",
            Better::Higher,
        ),
        BenchResult::new(
            "connections",
            "failed",
            failed as f64,
            "connections",
            Better::Lower,
        ),
    ];
    drop(clients);
    Ok(results
        .into_iter()
        .map(|r| r.param("connections", k))
        .collect())
}

/// `failover`: three relays, a steady push stream from a real client, one relay killed.
pub async fn failover(bench: &Bench) -> anyhow::Result<Vec<BenchResult>> {
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(bench.relay(None).await?);
    }
    let home = bench.dir.join("failover-client");
    let mut config = zerok_client::ClientConfig::new(&home);
    config.bind = "127.0.0.1:0".parse()?;
    config.receive = false;
    let client = zerok_client::Client::start(config).await?;
    let group = client
        .create_group(
            "failover",
            zerok_client::NewSecret::Random,
            relays.iter().map(|r| r.addr.clone()).collect(),
        )
        .await?;
    // Let the connections come up.
    let warm = client.push(group, b"warm-up".to_vec()).await?;
    drop(warm);
    let duration = if bench.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(12)
    };
    let started = Instant::now();
    let mut samples = Samples::new();
    let mut failed = 0u64;
    let mut pushed = 0u64;
    let mut n = 0u64;
    let mut victim = Some(relays.remove(0));
    while started.elapsed() < duration {
        if started.elapsed() >= duration / 3
            && let Some(mut relay) = victim.take()
        {
            relay.kill();
        }
        let t = Instant::now();
        match tokio::time::timeout(
            Duration::from_secs(10),
            client.push(group, format!("failover {n}").into_bytes()),
        )
        .await
        {
            Ok(Ok(_)) => {
                samples.push(t.elapsed());
                pushed += 1;
            }
            _ => failed += 1,
        }
        n += 1;
    }
    client.shutdown().await;
    let results = vec![
        BenchResult::new(
            "failover",
            "longest_push_wait_ms",
            ms(samples.max()),
            "ms",
            Better::Lower,
        ),
        BenchResult::new(
            "failover",
            "push_p50_ms",
            ms(samples.percentile(50.0)),
            "ms",
            Better::Lower,
        ),
        BenchResult::new(
            "failover",
            "failed_pushes",
            failed as f64,
            "pushes",
            Better::Lower,
        ),
        BenchResult::new(
            "failover",
            "pushes",
            pushed as f64,
            "pushes",
            Better::Higher,
        ),
    ];
    Ok(results
        .into_iter()
        .map(|r| {
            r.param("relays", 3)
                .param("killed", 1)
                .param("seconds", duration.as_secs())
        })
        .collect())
}

/// The relay binary next to the running executable.
pub fn default_relay_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name(format!("zerok-relay{}", std::env::consts::EXE_SUFFIX));
    if bin.exists() {
        Ok(bin)
    } else {
        Err(anyhow!(
            "{} not found: build it first (cargo build --release -p zerok-relay) or pass --relay-bin",
            bin.display()
        ))
    }
}
