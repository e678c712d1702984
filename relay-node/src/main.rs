//! `zerok-relay`: run a relay. With no arguments it uses the embedded defaults (data dir
//! `./zerok-relay-data`, QUIC on UDP `0.0.0.0:7340`, HTTP on `127.0.0.1:7341`).
//!
//! Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 when the relay cannot start or a
//! top-level actor died, 2 for bad usage or a bad configuration (one line on stderr).

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tracing::{error, info, warn};
use zerok_relay::config::{Cli, LogFormat, RelayConfig};
use zerok_relay::tree::{RelayNode, Seams};

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
    let config = match cli.resolve() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("zerok-relay: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("zerok-relay: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(config))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn run(config: RelayConfig) -> ExitCode {
    let mut node = match RelayNode::start(&config, Seams::default()).await {
        Ok(node) => node,
        Err(err) => {
            error!(error = %err, "relay failed to start");
            eprintln!("zerok-relay: {err}");
            return ExitCode::from(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "zerok-relay {}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out, "relay id:      {}", node.relay_id);
        let _ = writeln!(out, "relay address: {}", node.addr);
        let _ = writeln!(
            out,
            "address file:  {}",
            config.data_dir.join(zerok_relay::tree::ADDR_FILE).display()
        );
        if let Some(http) = node.http_addr {
            let _ = writeln!(out, "http:          http://{http}/health");
        }
        let _ = out.flush();
    }
    tokio::select! {
        signal = stop_signal() => info!(signal, "stopping"),
        () = node.stopped() => {
            error!("the relay's actor tree stopped unexpectedly");
            return ExitCode::from(1);
        }
    }
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    // Sessions get `grace`; the drain and final flush must fit in the rest of the budget.
    let budget = grace + Duration::from_millis(1500);
    match tokio::time::timeout(budget, node.shutdown(grace)).await {
        Ok(report) => {
            info!(
                sessions_left = report.sessions_left,
                store_drained = report.store_drained,
                "relay stopped"
            );
            ExitCode::SUCCESS
        }
        Err(_) => {
            warn!(
                "shutdown did not finish in time; exiting (every acked push was already durable)"
            );
            ExitCode::from(1)
        }
    }
}

/// The first of SIGINT and SIGTERM.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
