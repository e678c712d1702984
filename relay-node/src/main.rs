//! `zerok-relay`: run a relay. With no arguments it uses the embedded defaults (data dir
//! `./zerok-relay-data`, QUIC on UDP `0.0.0.0:7340`, HTTP on `127.0.0.1:7341`).
//!
//! `zerok-relay admit [--data-dir DIR] [--mailboxes N] [--valid-days D]` prints an admission
//! token for `token` mode instead, signed with the node key of the data dir (created if the
//! relay never ran there). The token is the last line of its output and is a secret.
//!
//! `zerok-relay check [--data-dir DIR]` verifies the store of a stopped relay offline and
//! prints what it found: segments, records, every damaged range (file and byte offset), a
//! torn tail. Exit 0 when clean, 1 on damage, 2 when the store is in use or unreadable.
//!
//! Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 when the relay cannot start or a
//! top-level actor died, 2 for bad usage or a bad configuration (one line on stderr).

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tracing::{error, info, warn};
use zerok_relay::config::{Cli, Command, LogFormat, RelayConfig};
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
    if let Some(Command::Admit {
        mailboxes,
        valid_days,
    }) = &cli.command
    {
        return admit(&config, *mailboxes, *valid_days);
    }
    if let Some(Command::Check) = &cli.command {
        return check(&config);
    }
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

/// `zerok-relay admit`: mint and print one admission token.
fn admit(config: &RelayConfig, mailboxes: u32, valid_days: u64) -> ExitCode {
    use zerok_actors::relay::admission::{AdmissionToken, token_id_hex};
    let mut rng = zerok_actors::rng::Rng::system();
    let data_dir = &config.data_dir;
    if let Err(err) = std::fs::create_dir_all(data_dir) {
        eprintln!("zerok-relay: data dir {}: {err}", data_dir.display());
        return ExitCode::from(1);
    }
    let key_path = data_dir.join(zerok_relay::tree::NODE_KEY_FILE);
    let secret = match zerok_actors::link::iroh::load_or_create_secret_key(&key_path, &mut rng) {
        Ok(secret) => secret,
        Err(err) => {
            eprintln!("zerok-relay: {err}");
            return ExitCode::from(1);
        }
    };
    let now = zerok_actors::clock::Clock::system().now_unix_secs();
    let token =
        match AdmissionToken::mint_for_days(&secret, rng.bytes(), mailboxes, now, valid_days) {
            Ok(token) => token,
            Err(err) => {
                eprintln!("zerok-relay: admit: {err}");
                return ExitCode::from(2);
            }
        };
    let mut out = std::io::stdout().lock();
    let lines = [
        format!("admission token for relay {}", token.relay_id),
        format!("token id:  {}", token_id_hex(&token.token_id)),
        format!("mailboxes: {}", token.mailboxes),
        format!(
            "expires:   unix {} (in {valid_days} days)",
            token.expires_at_unix_secs
        ),
        "it is a secret: whoever holds it may create mailboxes on this relay".to_owned(),
        token.encode(),
    ];
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return ExitCode::from(1);
        }
    }
    let _ = out.flush();
    if config.admission.mode != zerok_relay::config::AdmissionModeArg::Token {
        eprintln!(
            "zerok-relay: note: admission.mode is \"open\" in this configuration; tokens are \
             only needed in \"token\" mode"
        );
    }
    ExitCode::SUCCESS
}

/// `zerok-relay check`: verify the store offline and print the findings.
fn check(config: &RelayConfig) -> ExitCode {
    use zerok_actors::relay::blob_store::segments::check_store;
    let dir = config.data_dir.join(zerok_relay::tree::STORE_DIR);
    let report = match check_store(&dir) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("zerok-relay: check: {err}");
            return ExitCode::from(2);
        }
    };
    let mut lines = vec![
        format!("store:    {} ({})", dir.display(), report.format),
        format!("segments: {}", report.segments),
        format!(
            "records:  {} items, {} marks, {} batches; {} items indexed",
            report.items, report.marks, report.batches, report.indexed_items
        ),
    ];
    for (file, damage) in &report.damage {
        lines.push(format!(
            "damaged:  {} at byte {} ({} bytes, {})",
            file.display(),
            damage.offset,
            damage.bytes,
            damage.what
        ));
    }
    if let Some((file, offset)) = &report.torn_tail {
        lines.push(format!(
            "torn:     {} at byte {} (a write that was never acknowledged; the next start cuts it)",
            file.display(),
            offset
        ));
    }
    lines.push(format!(
        "closed:   {}",
        if report.is_closed_cleanly {
            "cleanly"
        } else {
            "not cleanly (the last stop was a crash or a kill)"
        }
    ));
    lines.push(if report.is_damaged() {
        format!(
            "result:   DAMAGED ({} damaged ranges; the relay serves everything else)",
            report.damage.len()
        )
    } else {
        "result:   ok".to_owned()
    });
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return ExitCode::from(2);
        }
    }
    let _ = out.flush();
    if report.is_damaged() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
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
