//! `zerok-bench`: relay and client figures next to the machine's own limits, measured in the
//! same run. See docs/BENCHMARKS.md.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use zerok_harness::bench::BenchResult;
use zerok_harness::bench::baseline::Baseline;
use zerok_harness::bench::client_bench::{self, ClientSizes};
use zerok_harness::bench::engines::bench::{self as store_bench, Engine, Phase, Sizes};
use zerok_harness::bench::relay_benches::{self, Bench, PUSH_WINDOW};

#[derive(Parser)]
#[command(
    name = "zerok-bench",
    version,
    about = "0k-sync benchmarks with same-run baselines"
)]
struct Cli {
    /// One JSON object per result line instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Small sizes (all of `all` in about a minute).
    #[arg(long, global = true)]
    quick: bool,
    /// The relay binary (default: `zerok-relay` next to this one).
    #[arg(long, global = true, value_name = "PATH")]
    relay_bin: Option<PathBuf>,
    /// Compare ratios with a saved run (JSON lines); exit 1 when one is >10% worse.
    #[arg(long, global = true, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Largest connection count tried by `connections`.
    #[arg(long, global = true, default_value_t = 10_000)]
    max_connections: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Clone, PartialEq)]
enum Command {
    /// The machine's limits: raw iroh RTT and throughput, fsync, batched appends, AEAD.
    Baseline,
    /// Durable pushes/s and ack latency with 1, 8, 64 clients.
    Push,
    /// Push → received latency with 1, 10, 100 subscribers.
    Fanout,
    /// A fresh device pulling 100,000 stored records.
    Catchup,
    /// Relay memory with 1,000 and 10,000 idle connections.
    Connections,
    /// Three relays, one killed during a push stream.
    Failover,
    /// The client through its public API: two devices, 100,000 records pushed by 64 app
    /// tasks and received verified, pushes one by one, a late joiner's catch-up, against the
    /// same-run crypto floor (sign + verify + seal + open per record).
    Client {
        /// Records of the concurrent and batched pushes (default 100,000; 5,000 with
        /// `--quick`).
        #[arg(long, value_name = "N")]
        records: Option<u64>,
    },
    /// A large file put and got through the `zerok` CLI (issue 15): throughput against raw
    /// iroh, peak memory of both CLI processes and the relay.
    Content {
        /// File size in MiB (default 1024; 64 with `--quick`).
        #[arg(long, value_name = "MIB")]
        mib: Option<u64>,
    },
    /// A relay with N items stored: start → ready, memory, pushes, catch-up, restart.
    Stored {
        /// Items stored before the relay starts (default 1,000,000; 20,000 with `--quick`).
        #[arg(long, value_name = "N")]
        items: Option<u64>,
    },
    /// Store engines (segment log, fjall, redb): pushes/s, catch-up, RSS and disk per item,
    /// open time; each in fresh child processes.
    Store {
        /// Items stored for the RSS, disk and open figures (default 1,000,000; 20,000 with
        /// `--quick`).
        #[arg(long, value_name = "N")]
        items: Option<u64>,
        /// Candidates to measure, comma-separated (ratios need `log` among them).
        #[arg(long, value_delimiter = ',', default_values = ["log", "fjall", "redb"])]
        engines: Vec<Engine>,
    },
    /// One engine's phase of `store`, run by `store` itself in a child process.
    #[command(hide = true)]
    StoreChild {
        #[arg(long)]
        engine: Engine,
        #[arg(long)]
        phase: Phase,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        items: u64,
        #[arg(long)]
        catchup_items: u64,
        #[arg(long)]
        push_seconds: f64,
    },
    /// The receiving process of `content`'s two-process raw iroh throughput.
    #[command(hide = true)]
    RawSink,
    /// Everything (`store` at its `--quick` sizes).
    All,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("zerok-bench: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("zerok-bench: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn print(result: &BenchResult, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(result) {
            println!("{line}");
        }
        return;
    }
    let params = result
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let baseline = match (&result.baseline_metric, result.baseline_value, result.ratio) {
        (Some(metric), Some(value), Some(ratio)) => {
            format!("{metric}={value:.3}  ratio={ratio:.3}")
        }
        _ => String::new(),
    };
    println!(
        "{:<12} {:<28} {:>14.3} {:<12} {:<44} {}",
        result.bench, result.metric, result.value, result.unit, params, baseline
    );
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if cli.command == Command::RawSink {
        zerok_harness::bench::baseline::raw_sink().await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::StoreChild {
        engine,
        phase,
        dir,
        items,
        catchup_items,
        push_seconds,
    } = &cli.command
    {
        let sizes = Sizes {
            items: *items,
            catchup_items: *catchup_items,
            push_seconds: *push_seconds,
        };
        store_bench::child(*engine, *phase, dir, sizes).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let scratch = tempfile::tempdir()?;
    let quick = cli.quick;
    let mut results: Vec<BenchResult> = Vec::new();
    let emit = |batch: Vec<BenchResult>, results: &mut Vec<BenchResult>| {
        for result in &batch {
            print(result, cli.json);
        }
        results.extend(batch);
    };
    if let Command::Store { items, engines } = &cli.command {
        let mut sizes = if quick { Sizes::quick() } else { Sizes::full() };
        if let Some(items) = items {
            sizes.items = *items;
        }
        emit(
            store_bench::run(&std::env::current_exe()?, sizes, engines).await?,
            &mut results,
        );
        if let Some(path) = &cli.compare {
            return compare(path, &results);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let base = Baseline::measure(scratch.path(), quick).await?;
    emit(base.results(), &mut results);
    let wants = |c: Command| cli.command == c || cli.command == Command::All;
    if cli.command != Command::Baseline {
        let relay_bin = match &cli.relay_bin {
            Some(path) => path.clone(),
            None => relay_benches::default_relay_bin()?,
        };
        let bench = Bench::new(relay_bin, scratch.path().to_path_buf(), quick);
        if wants(Command::Push) {
            // One client with one push in flight: the relay's share of a one-task push.
            let sizes: &[(usize, usize)] = if quick {
                &[(1, 1), (1, PUSH_WINDOW), (8, PUSH_WINDOW)]
            } else {
                &[
                    (1, 1),
                    (1, PUSH_WINDOW),
                    (8, PUSH_WINDOW),
                    (64, PUSH_WINDOW),
                ]
            };
            for &(clients, window) in sizes {
                emit(
                    relay_benches::push(&bench, &base, clients, window).await?,
                    &mut results,
                );
            }
        }
        if wants(Command::Fanout) {
            let sizes: &[usize] = if quick { &[1, 10] } else { &[1, 10, 100] };
            for &subscribers in sizes {
                emit(
                    relay_benches::fanout(&bench, &base, subscribers).await?,
                    &mut results,
                );
            }
        }
        if wants(Command::Catchup) {
            emit(relay_benches::catchup(&bench, &base).await?, &mut results);
        }
        if wants(Command::Connections) {
            let sizes: Vec<usize> = if quick {
                vec![200]
            } else {
                [1_000, 10_000]
                    .into_iter()
                    .filter(|k| *k <= cli.max_connections)
                    .collect()
            };
            for k in sizes {
                emit(relay_benches::connections(&bench, k).await?, &mut results);
            }
        }
        if wants(Command::Failover) {
            emit(relay_benches::failover(&bench).await?, &mut results);
        }
        let client_records = match &cli.command {
            Command::Client { records } => Some(*records),
            Command::All => Some(None),
            _ => None,
        };
        if let Some(records) = client_records {
            let mut sizes = if quick {
                ClientSizes::quick()
            } else {
                ClientSizes::full()
            };
            if let Some(records) = records {
                sizes.records = records;
            }
            emit(client_bench::client(&bench, sizes).await?, &mut results);
        }
        let content_mib = match &cli.command {
            Command::Content { mib } => Some(*mib),
            Command::All => Some(None),
            _ => None,
        };
        if let Some(mib) = content_mib {
            let bytes = match mib {
                Some(mib) => mib << 20,
                None if quick => zerok_harness::bench::content_bench::QUICK_BYTES,
                None => zerok_harness::bench::content_bench::FULL_BYTES,
            };
            emit(
                zerok_harness::bench::content_bench::content(&bench, &base, bytes, quick).await?,
                &mut results,
            );
        }
        let stored_items = match &cli.command {
            Command::Stored { items } => Some(*items),
            Command::All => Some(None),
            _ => None,
        };
        if let Some(items) = stored_items {
            let items = items.unwrap_or(if quick { 20_000 } else { 1_000_000 });
            emit(
                zerok_harness::bench::stored::stored(&bench, &base, items).await?,
                &mut results,
            );
        }
    }
    if cli.command == Command::All {
        emit(
            store_bench::run(&std::env::current_exe()?, Sizes::quick(), &Engine::ALL).await?,
            &mut results,
        );
    }
    if let Some(path) = &cli.compare {
        return compare(path, &results);
    }
    Ok(ExitCode::SUCCESS)
}

/// Ratios more than 10% worse than the saved run's fail the comparison.
fn compare(path: &std::path::Path, results: &[BenchResult]) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let saved = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str::<BenchResult>)
        .collect::<Result<Vec<_>, _>>()?;
    let (worse, compared) = zerok_harness::bench::regressions(&saved, results);
    for line in &worse {
        eprintln!("zerok-bench: regression: {line}");
    }
    eprintln!(
        "zerok-bench: compared {compared} ratios with {}, {} worse by more than 10%",
        path.display(),
        worse.len()
    );
    Ok(if worse.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
