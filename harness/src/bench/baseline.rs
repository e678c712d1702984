//! The machine's own limits, measured in the same run as the benchmarks they are compared
//! with: raw iroh QUIC on loopback (round trip, one-stream throughput), the disk under test
//! (4 KiB write + fdatasync, batches of 64 × 1 KiB appended with one fdatasync each), and the
//! cipher
//! (XChaCha20-Poly1305 seal of 1 KiB).
//!
//! Each figure is an upper bound the relay or client cannot beat on this machine, so the
//! ratio of a benchmark to its baseline is robust to a noisy, shared machine.

use super::stats::{Samples, us};
use super::{BenchResult, Better};
use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::{Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use zerok_actors::Rng;
use zerok_actors::link::iroh::{IrohConfig, IrohNode};
use zerok_actors::link::{Dialer, Link, LinkListener, LinkReceiver};

/// The bench name of every baseline figure.
const BENCH: &str = "baseline";
/// Round-trip frame size.
const RTT_FRAME_BYTES: usize = 1024;
/// Round trips before sampling starts.
const RTT_WARMUP: usize = 50;
/// Throughput frame size (well under the 1 MiB frame limit).
const THROUGHPUT_FRAME_BYTES: usize = 64 * 1024;
/// Bytes written per fsync sample.
const FSYNC_WRITE_BYTES: usize = 4096;
/// fsyncs before sampling starts (the first writes allocate the file's blocks).
const FSYNC_WARMUP: usize = 5;
/// Records per appended batch.
const APPEND_BATCH_ITEMS: usize = 64;
/// Size of each appended record.
const APPEND_RECORD_BYTES: usize = 1024;
/// Sealed plaintext size.
const SEAL_BYTES: usize = 1024;
/// Time between two pushes of the `fanout` bench, and so between two samples of the paced
/// baselines: a lone push on an otherwise idle machine pays wake-ups (threads, vCPUs, the
/// disk) that back-to-back samples do not, so it is compared with limits measured at its pace.
pub const PACE: Duration = Duration::from_millis(2);
/// Paced samples (round trips, fdatasyncs) in a full run; a quarter of it in a quick one.
const PACED_SAMPLES: usize = 400;
/// Bound on every iroh step (dial, accept, a whole phase), so a broken link fails the run
/// instead of hanging it.
const IROH_BOUND: Duration = Duration::from_secs(120);

/// The machine's limits, measured in this run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    /// Raw iroh round trip of a 1 KiB frame on one stream, median.
    pub rtt_p50: Duration,
    /// Raw iroh round trip of a 1 KiB frame on one stream, 99th percentile.
    pub rtt_p99: Duration,
    /// The same round trip, one every [`PACE`], median.
    pub rtt_paced_p50: Duration,
    /// Raw iroh one-stream throughput, one direction: the median of the plan's runs.
    pub throughput_mib_s: f64,
    /// Those runs, in MiB/s (a bench that measures raw again later takes the median of
    /// both sets).
    pub throughput_runs_mib_s: Vec<f64>,
    /// CPU seconds (user + system, sender and receiver together) per GiB of those runs, where
    /// `/proc` tells: on a machine whose cores are all busy, what bounds the throughput.
    pub throughput_cpu_s_per_gib: Option<f64>,
    /// 4 KiB write + fdatasync in the data dir, median.
    pub fsync_p50: Duration,
    /// 4 KiB write + fdatasync in the data dir, 99th percentile.
    pub fsync_p99: Duration,
    /// A 1 KiB append to a presized file + fdatasync, one every [`PACE`], median: what the
    /// store's commit of a lone push costs at best.
    pub fsync_paced_p50: Duration,
    /// Batches of 64 × 1 KiB records appended to a file with one `write` and one
    /// `fdatasync` each: the disk's limit for the store's group commit.
    pub append_items_per_s: f64,
    /// XChaCha20-Poly1305 seals of 1 KiB per second.
    pub seal_per_s: f64,
}

/// How much work each measurement does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rtt_samples: usize,
    paced_samples: usize,
    throughput_bytes: usize,
    /// One-stream throughput runs; the median counts (one run swings by a third here).
    throughput_runs: usize,
    fsync_samples: usize,
    append_batches: usize,
    seal_for: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rtt_samples: 300,
                paced_samples: PACED_SAMPLES / 4,
                throughput_bytes: 16 << 20,
                throughput_runs: 1,
                fsync_samples: 50,
                append_batches: 30,
                seal_for: Duration::from_millis(200),
            }
        } else {
            Self {
                rtt_samples: 2000,
                paced_samples: PACED_SAMPLES,
                throughput_bytes: 256 << 20,
                throughput_runs: 5,
                fsync_samples: 200,
                append_batches: 200,
                seal_for: Duration::from_secs(1),
            }
        }
    }
}

impl Baseline {
    /// Measure everything; `quick` = small sample counts (all of it well under 10 s in a
    /// debug build), otherwise larger (well under 60 s in release). `dir` is a scratch dir on
    /// the disk under test.
    pub async fn measure(dir: &Path, quick: bool) -> anyhow::Result<Baseline> {
        let plan = Plan::new(quick);
        let (rtt_p50, rtt_p99, rtt_paced_p50, raw) =
            measure_iroh(&plan).await.context("measuring raw iroh")?;
        let (fsync_p50, fsync_p99) = measure_fsync(dir, &plan).await.context("measuring fsync")?;
        let fsync_paced_p50 = measure_fsync_paced(dir, &plan)
            .await
            .context("measuring paced fsync")?;
        let append_items_per_s = measure_append(dir, &plan)
            .await
            .context("measuring appends")?;
        let seal_per_s = measure_seal(&plan).await.context("measuring seal")?;
        Ok(Baseline {
            rtt_p50,
            rtt_p99,
            rtt_paced_p50,
            throughput_mib_s: raw.median_mib_s(),
            throughput_cpu_s_per_gib: raw.cpu_s_per_gib,
            throughput_runs_mib_s: raw.runs_mib_s,
            fsync_p50,
            fsync_p99,
            fsync_paced_p50,
            append_items_per_s,
            seal_per_s,
        })
    }

    /// The figures as results of bench "baseline".
    pub fn results(&self) -> Vec<BenchResult> {
        let mut results = vec![
            BenchResult::new(BENCH, "rtt_p50_us", us(self.rtt_p50), "us", Better::Lower),
            BenchResult::new(BENCH, "rtt_p99_us", us(self.rtt_p99), "us", Better::Lower),
            BenchResult::new(
                BENCH,
                "rtt_paced_p50_us",
                us(self.rtt_paced_p50),
                "us",
                Better::Lower,
            ),
            BenchResult::new(
                BENCH,
                "throughput_mib_s",
                self.throughput_mib_s,
                "MiB/s",
                Better::Higher,
            ),
            BenchResult::new(
                BENCH,
                "fsync_p50_us",
                us(self.fsync_p50),
                "us",
                Better::Lower,
            ),
            BenchResult::new(
                BENCH,
                "fsync_p99_us",
                us(self.fsync_p99),
                "us",
                Better::Lower,
            ),
            BenchResult::new(
                BENCH,
                "fsync_paced_p50_us",
                us(self.fsync_paced_p50),
                "us",
                Better::Lower,
            ),
            BenchResult::new(
                BENCH,
                "append_fdatasync_items_per_s",
                self.append_items_per_s,
                "1/s",
                Better::Higher,
            ),
            BenchResult::new(
                BENCH,
                "seal_1k_per_s",
                self.seal_per_s,
                "1/s",
                Better::Higher,
            ),
        ];
        if let Some(cpu) = self.throughput_cpu_s_per_gib {
            results.push(BenchResult::new(
                BENCH,
                "throughput_cpu_s_per_gib",
                cpu,
                "s",
                Better::Lower,
            ));
        }
        results
    }
}

/// Bound a future by [`IROH_BOUND`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(IROH_BOUND, future)
        .await
        .map_err(|_| anyhow!("{what} took longer than {IROH_BOUND:?}"))
}

async fn iroh_node(seed: u64) -> anyhow::Result<IrohNode> {
    let key = Rng::seeded(seed).bytes();
    let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    Ok(IrohNode::bind(IrohConfig::new(key, bind)).await?)
}

/// Dial the server and accept on its side; the dialer's first frame is `hello`, which the
/// accepted side has consumed. Returns (client side, server side).
async fn connect(
    client: &IrohNode,
    server: &IrohNode,
    listener: &mut LinkListener,
    hello: &'static [u8],
) -> anyhow::Result<(Link, Link)> {
    let dialer = client.dialer();
    let addr = server.local_addr();
    let near = bounded("dial", dialer.dial(&addr)).await??;
    near.sender.send(Bytes::from_static(hello)).await?;
    let mut far = bounded("accept", listener.accept())
        .await?
        .ok_or_else(|| anyhow!("listener stopped accepting"))?;
    let first = bounded("first frame", far.receiver.recv()).await??;
    ensure!(
        first.as_deref() == Some(hello),
        "unexpected first frame: {first:?}"
    );
    Ok((near, far))
}

/// Receive the next frame; the end of the stream is an error here.
async fn next(receiver: &mut LinkReceiver) -> anyhow::Result<Bytes> {
    receiver
        .recv()
        .await?
        .ok_or_else(|| anyhow!("link closed early"))
}

/// Runs of raw iroh one-stream throughput, one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawThroughput {
    /// Each run, in MiB/s.
    pub runs_mib_s: Vec<f64>,
    /// CPU seconds (both ends, this process) per GiB moved, if `/proc` tells.
    pub cpu_s_per_gib: Option<f64>,
}

impl RawThroughput {
    /// The median run.
    pub fn median_mib_s(&self) -> f64 {
        median(&self.runs_mib_s)
    }
}

/// The median of `values` (0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Raw iroh one-stream throughput, measured now as the baseline does (`quick`: one short
/// run, otherwise five of 256 MiB): for a bench that also measures it after its own work.
pub async fn raw_one_stream(quick: bool) -> anyhow::Result<RawThroughput> {
    let plan = Plan::new(quick);
    with_iroh_pair(move |client, server, listener| {
        Box::pin(async move { measure_throughput_runs(client, server, listener, &plan).await })
    })
    .await
}

/// The frame every one-stream throughput run sends (seeded random bytes).
fn throughput_frame() -> Bytes {
    let mut payload = vec![0u8; THROUGHPUT_FRAME_BYTES];
    Rng::seeded(0xba5e_0004).fill(&mut payload);
    Bytes::from(payload)
}

/// What a raw sink process answers once it counted a run's bytes.
const SINK_DONE: &[u8] = b"done";

/// `zerok-bench raw-sink`, the receiving process of [`raw_two_processes`]: prints its
/// node's address, then for every link: the first frame is the run's byte count (u64 LE);
/// it counts frames until that many arrived and answers [`SINK_DONE`]. Runs until its
/// stdin closes (the bench ended, however it ended).
pub async fn raw_sink() -> anyhow::Result<()> {
    use std::io::Write as _;
    let node = iroh_node(0xba5e_0005).await?;
    let mut listener = node.listen();
    let mut out = std::io::stdout();
    writeln!(out, "{}", node.local_addr())?;
    out.flush()?;
    let serve = async {
        while let Some(link) = listener.accept().await {
            count_run(link).await?;
        }
        Ok(())
    };
    let bench_gone = async {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut Vec::new()).await;
    };
    tokio::select! {
        served = serve => served,
        () = bench_gone => Ok(()),
    }
}

/// One run of [`raw_sink`].
async fn count_run(link: Link) -> anyhow::Result<()> {
    let (_, sender, mut receiver) = link.into_parts();
    let count = next(&mut receiver).await?;
    let total = u64::from_le_bytes(
        count
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("a run starts with its byte count"))?,
    );
    let mut received = 0u64;
    while received < total {
        received += next(&mut receiver).await?.len() as u64;
    }
    sender.send(Bytes::from_static(SINK_DONE)).await?;
    Ok(())
}

/// Raw iroh one-stream throughput between two processes, the shape of a content transfer
/// (a `zerok` process and the relay): this process sends, a `raw-sink` child of this binary
/// receives. CPU per GiB counts both processes.
pub async fn raw_two_processes(quick: bool) -> anyhow::Result<RawThroughput> {
    use tokio::io::AsyncBufReadExt;
    let plan = Plan::new(quick);
    let mut sink = tokio::process::Command::new(std::env::current_exe()?)
        .arg("raw-sink")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the raw sink")?;
    let pid = sink
        .id()
        .ok_or_else(|| anyhow!("the raw sink exited at once"))?
        .to_string();
    let stdout = sink
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout of the raw sink"))?;
    let line = bounded(
        "the raw sink's address",
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await??
    .ok_or_else(|| anyhow!("the raw sink printed no address"))?;
    let addr: zerok_messages::RelayAddr = line
        .parse()
        .map_err(|e| anyhow!("raw sink address {line:?}: {e}"))?;
    let client = iroh_node(0xba5e_0006).await?;
    let dialer = client.dialer();
    let frame = throughput_frame();
    let frames = plan.throughput_bytes.div_ceil(THROUGHPUT_FRAME_BYTES);
    let bytes = frames * THROUGHPUT_FRAME_BYTES;
    let cpu = || proc_cpu_s("self").zip(proc_cpu_s(&pid)).map(|(a, b)| a + b);
    let cpu_before = cpu();
    let mut runs = Vec::with_capacity(plan.throughput_runs);
    for _ in 0..plan.throughput_runs {
        let (_, sender, mut receiver) = bounded("dial", dialer.dial(&addr)).await??.into_parts();
        sender
            .send(Bytes::copy_from_slice(&(bytes as u64).to_le_bytes()))
            .await?;
        let start = Instant::now();
        for _ in 0..frames {
            sender.send(frame.clone()).await?;
        }
        let done = bounded("the raw sink's answer", next(&mut receiver)).await??;
        ensure!(done == SINK_DONE, "unexpected answer of the raw sink");
        let secs = start.elapsed().as_secs_f64();
        sender.finish();
        runs.push(bytes as f64 / f64::from(1u32 << 20) / secs);
    }
    let gib = (plan.throughput_runs * bytes) as f64 / f64::from(1u32 << 30);
    let cpu_s_per_gib = cpu_before
        .zip(cpu())
        .map(|(before, after)| (after - before) / gib);
    client.close().await;
    drop(sink);
    Ok(RawThroughput {
        runs_mib_s: runs,
        cpu_s_per_gib,
    })
}

/// Raw iroh round trip (p50, p99, paced p50) and one-stream throughput.
async fn measure_iroh(
    plan: &Plan,
) -> anyhow::Result<(Duration, Duration, Duration, RawThroughput)> {
    let plan = *plan;
    with_iroh_pair(move |client, server, listener| {
        Box::pin(async move {
            let rtt =
                bounded("round trips", measure_rtt(client, server, listener, &plan)).await??;
            let raw = measure_throughput_runs(client, server, listener, &plan).await?;
            Ok((rtt.0, rtt.1, rtt.2, raw))
        })
    })
    .await
}

/// Run `measure` on two fresh loopback nodes (client, server, the server's listener), and
/// close both after it.
async fn with_iroh_pair<T>(
    measure: impl for<'a> FnOnce(
        &'a IrohNode,
        &'a IrohNode,
        &'a mut LinkListener,
    ) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<T>> + 'a>>,
) -> anyhow::Result<T> {
    let server = iroh_node(0xba5e_0001).await?;
    let client = iroh_node(0xba5e_0002).await?;
    let mut listener = server.listen();
    let measured = measure(&client, &server, &mut listener).await;
    drop(listener);
    client.close().await;
    server.close().await;
    measured
}

/// The plan's one-stream throughput runs.
async fn measure_throughput_runs(
    client: &IrohNode,
    server: &IrohNode,
    listener: &mut LinkListener,
    plan: &Plan,
) -> anyhow::Result<RawThroughput> {
    let mut runs = Vec::with_capacity(plan.throughput_runs);
    let cpu_before = proc_cpu_s("self");
    for _ in 0..plan.throughput_runs {
        let run = bounded(
            "throughput",
            measure_throughput(client, server, listener, plan),
        )
        .await??;
        runs.push(run);
    }
    let gib = (plan.throughput_runs * plan.throughput_bytes) as f64 / f64::from(1u32 << 30);
    let cpu_s_per_gib = cpu_before
        .zip(proc_cpu_s("self"))
        .map(|(before, after)| (after - before) / gib);
    Ok(RawThroughput {
        runs_mib_s: runs,
        cpu_s_per_gib,
    })
}

async fn measure_rtt(
    client: &IrohNode,
    server: &IrohNode,
    listener: &mut LinkListener,
    plan: &Plan,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let (mut near, far) = connect(client, server, listener, b"echo").await?;
    let (_, echo_sender, mut echo_receiver) = far.into_parts();
    let echo = tokio::spawn(async move {
        while let Ok(Some(frame)) = echo_receiver.recv().await {
            if echo_sender.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut payload = vec![0u8; RTT_FRAME_BYTES];
    Rng::seeded(0xba5e_0003).fill(&mut payload);
    let frame = Bytes::from(payload);
    let mut round_trip = async || -> anyhow::Result<Duration> {
        let start = Instant::now();
        near.sender.send(frame.clone()).await?;
        let back = next(&mut near.receiver).await?;
        let elapsed = start.elapsed();
        ensure!(
            back.len() == RTT_FRAME_BYTES,
            "echo of {} bytes",
            back.len()
        );
        Ok(elapsed)
    };
    let mut samples = Samples::new();
    for i in 0..RTT_WARMUP + plan.rtt_samples {
        let elapsed = round_trip().await?;
        if i >= RTT_WARMUP {
            samples.push(elapsed);
        }
    }
    let mut paced = Samples::new();
    for _ in 0..plan.paced_samples {
        tokio::time::sleep(PACE).await;
        paced.push(round_trip().await?);
    }
    near.sender.finish();
    let _ = echo.await;
    Ok((
        samples.percentile(50.0),
        samples.percentile(99.0),
        paced.percentile(50.0),
    ))
}

async fn measure_throughput(
    client: &IrohNode,
    server: &IrohNode,
    listener: &mut LinkListener,
    plan: &Plan,
) -> anyhow::Result<f64> {
    let (near, far) = connect(client, server, listener, b"count").await?;
    let total = plan.throughput_bytes;
    let (done_tx, done_rx) = oneshot::channel();
    let (_, _far_sender, mut far_receiver) = far.into_parts();
    tokio::spawn(async move {
        let mut received = 0usize;
        let outcome = loop {
            match far_receiver.recv().await {
                Ok(Some(frame)) => {
                    received += frame.len();
                    if received >= total {
                        break Ok(Instant::now());
                    }
                }
                Ok(None) => break Err(anyhow!("link closed after {received} of {total} bytes")),
                Err(err) => break Err(anyhow!("after {received} of {total} bytes: {err}")),
            }
        };
        let _ = done_tx.send(outcome);
    });
    let frame = throughput_frame();
    let frames = total.div_ceil(THROUGHPUT_FRAME_BYTES);
    let start = Instant::now();
    for _ in 0..frames {
        near.sender.send(frame.clone()).await?;
    }
    let Ok(outcome) = done_rx.await else {
        bail!("the counting task ended without an answer");
    };
    let end = outcome?;
    near.sender.finish();
    let secs = end.duration_since(start).as_secs_f64();
    ensure!(secs > 0.0, "no time elapsed");
    let bytes = (frames * THROUGHPUT_FRAME_BYTES) as f64;
    Ok(bytes / f64::from(1u32 << 20) / secs)
}

/// CPU seconds (user + system, all threads) process `pid` (or `"self"`) has used so far,
/// from `/proc/PID/stat` (Linux counts them in USER_HZ = 100 ticks a second).
pub fn proc_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields go on after its closing parenthesis,
    // from the state (field 3) on; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime = fields.next()?.parse::<u64>().ok()?;
    let stime = fields.next()?.parse::<u64>().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// 4 KiB write at offset 0 + fdatasync: (p50, p99).
async fn measure_fsync(dir: &Path, plan: &Plan) -> anyhow::Result<(Duration, Duration)> {
    let path = dir.join("fsync-baseline");
    let samples_wanted = plan.fsync_samples;
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut rng = Rng::seeded(0xba5e_0005);
        let mut block = [0u8; FSYNC_WRITE_BYTES];
        let mut samples = Samples::new();
        for i in 0..FSYNC_WARMUP + samples_wanted {
            rng.fill(&mut block[..16]);
            let start = Instant::now();
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&block)?;
            file.sync_data()?;
            let elapsed = start.elapsed();
            if i >= FSYNC_WARMUP {
                samples.push(elapsed);
            }
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        Ok((samples.percentile(50.0), samples.percentile(99.0)))
    })
    .await?
}

/// 1 KiB appends to a presized file, each followed by `fdatasync`, one every [`PACE`]: p50.
async fn measure_fsync_paced(dir: &Path, plan: &Plan) -> anyhow::Result<Duration> {
    let path = dir.join("fsync-paced-baseline");
    let _ = std::fs::remove_file(&path);
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.set_len(64 << 20)?;
    file.sync_all()?;
    let file = std::sync::Arc::new(file);
    let mut samples = Samples::new();
    for i in 0..plan.paced_samples {
        tokio::time::sleep(PACE).await;
        let file = file.clone();
        let elapsed = tokio::task::spawn_blocking(move || -> std::io::Result<Duration> {
            use std::os::unix::fs::FileExt;
            let mut record = [0u8; RTT_FRAME_BYTES];
            Rng::seeded(i as u64).fill(&mut record[..16]);
            let start = Instant::now();
            file.write_all_at(&record, (i * RTT_FRAME_BYTES) as u64)?;
            file.sync_data()?;
            Ok(start.elapsed())
        })
        .await??;
        samples.push(elapsed);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(samples.percentile(50.0))
}

/// Records per second appended in batches of 64 × 1 KiB, one `write` + `fdatasync` each.
async fn measure_append(dir: &Path, plan: &Plan) -> anyhow::Result<f64> {
    let path = dir.join("append-baseline");
    let batches = plan.append_batches;
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut rng = Rng::seeded(0xba5e_0006);
        let mut batch = vec![0u8; APPEND_BATCH_ITEMS * APPEND_RECORD_BYTES];
        rng.fill(&mut batch);
        let mut append = |rng: &mut Rng| -> anyhow::Result<()> {
            rng.fill(&mut batch[..16]);
            file.write_all(&batch)?;
            file.sync_data()?;
            Ok(())
        };
        // One untimed batch: the first write allocates the file.
        append(&mut rng)?;
        let start = Instant::now();
        for _ in 0..batches {
            append(&mut rng)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&path);
        ensure!(secs > 0.0, "no time elapsed");
        Ok((batches * APPEND_BATCH_ITEMS) as f64 / secs)
    })
    .await?
}

/// XChaCha20-Poly1305 seals of 1 KiB per second, each with its own nonce.
async fn measure_seal(plan: &Plan) -> anyhow::Result<f64> {
    let run_for = plan.seal_for;
    tokio::task::spawn_blocking(move || {
        let mut rng = Rng::seeded(0xba5e_0007);
        let key: [u8; 32] = rng.bytes();
        let cipher = XChaCha20Poly1305::new(&key.into());
        let mut plaintext = vec![0u8; SEAL_BYTES];
        rng.fill(&mut plaintext);
        let mut nonce: [u8; 24] = rng.bytes();
        let mut seals = 0u64;
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                nonce[..8].copy_from_slice(&seals.to_le_bytes());
                let sealed = cipher
                    .encrypt(&XNonce::from(nonce), plaintext.as_slice())
                    .map_err(|_| anyhow!("XChaCha20-Poly1305 refused to seal 1 KiB"))?;
                std::hint::black_box(sealed);
                seals += 1;
            }
            let elapsed = start.elapsed();
            if elapsed >= run_for {
                return Ok(seals as f64 / elapsed.as_secs_f64());
            }
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_baseline_measures_something() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let baseline = Baseline::measure(dir.path(), true).await.unwrap();
        eprintln!("baseline (quick) in {:?}: {baseline:#?}", started.elapsed());
        for duration in [
            baseline.rtt_p50,
            baseline.rtt_p99,
            baseline.rtt_paced_p50,
            baseline.fsync_paced_p50,
            baseline.fsync_p50,
            baseline.fsync_p99,
        ] {
            assert!(duration > Duration::ZERO, "{baseline:?}");
        }
        assert!(baseline.rtt_p99 >= baseline.rtt_p50, "{baseline:?}");
        assert!(baseline.fsync_p99 >= baseline.fsync_p50, "{baseline:?}");
        for rate in [
            baseline.throughput_mib_s,
            baseline.append_items_per_s,
            baseline.seal_per_s,
        ] {
            assert!(rate.is_finite() && rate > 0.0, "{baseline:?}");
        }

        // Where `/proc` tells (Linux), the throughput runs' CPU is measured too; a quick
        // run may use less than one 10 ms tick of it.
        let cpu = baseline.throughput_cpu_s_per_gib;
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(
                cpu.is_some_and(|s| s.is_finite() && s >= 0.0),
                "{baseline:?}"
            );
        }
        let results = baseline.results();
        for result in &results {
            eprintln!("{} = {:.1} {}", result.metric, result.value, result.unit);
            assert_eq!(result.bench, "baseline");
            if result.metric == "throughput_cpu_s_per_gib" {
                assert!(
                    result.value.is_finite() && result.value >= 0.0,
                    "{result:?}"
                );
            } else {
                assert!(result.value.is_finite() && result.value > 0.0, "{result:?}");
            }
        }
        let metrics: BTreeSet<&str> = results.iter().map(|r| r.metric.as_str()).collect();
        let expected = 9 + usize::from(cpu.is_some());
        assert_eq!(results.len(), expected);
        assert_eq!(metrics.len(), expected, "{metrics:?}");
    }
}
