//! `zerok`: sync your devices through 0k-sync relays from the command line.
//!
//! Every command works on a home dir (`--home DIR`, `ZEROK_HOME`, or the platform data dir):
//! the device key, the groups and the local store. Errors are one line on stderr with a
//! non-zero exit (2 for bad usage); a failed command loses nothing (pushes are queued durably
//! before anything is sent).

use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use zerok_client::{
    Client, ClientConfig, ClientError, DeviceInfo, Event, GroupId, NewSecret, Progress,
};
use zerok_messages::RelayAddr;

#[derive(Parser)]
#[command(
    name = "zerok",
    version,
    about = "End-to-end-encrypted sync through 0k-sync relays"
)]
struct Cli {
    /// Home dir (device key, groups, local store).
    #[arg(long, global = true, env = "ZEROK_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// The group to act on (hex id; needed only when this device has several).
    #[arg(long, global = true, value_name = "ID")]
    group: Option<GroupId>,
    /// This device's name on the rosters of groups it creates or joins (default: "device"
    /// and its short id).
    #[arg(long, global = true, env = "ZEROK_DEVICE_NAME", value_name = "NAME")]
    device_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum DevicesAction {
    /// Remove a device (a lost or stolen one): the group is re-keyed without it, and it can
    /// read nothing written after and write nothing the others accept.
    Remove {
        /// The device: its id, or a unique start of it (as `zerok devices` shows).
        id: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Create this device's first group on the given relays.
    Init {
        /// A relay address: exactly the text of the relay's `relay.addr` (repeatable).
        #[arg(long = "relay", value_name = "ADDR", required = true)]
        relays: Vec<RelayAddr>,
        /// Derive the group secret from a passphrase (read from ZEROK_PASSPHRASE or the
        /// first line of stdin) instead of a random one.
        #[arg(long)]
        passphrase: bool,
        /// A label for the group.
        #[arg(long, default_value = "default")]
        name: String,
        /// An admission token from `zerok-relay admit`, for a relay that admits by token (it
        /// names its relay, which must be one of --relay; repeatable). It is a secret.
        #[arg(long = "admission", value_name = "TOKEN")]
        admissions: Vec<String>,
        /// Join the group of a recovery phrase (from `zerok export-recovery`; read from
        /// ZEROK_RECOVERY_PHRASE or the first line of stdin) as a new device, instead of
        /// creating a group. --relay is the relay the export printed.
        #[arg(long, conflicts_with_all = ["passphrase", "admissions"])]
        recover: bool,
        /// With --recover: seconds to look for the group on the relays.
        #[arg(long, default_value_t = 60, value_name = "SECS", requires = "recover")]
        wait: u64,
    },
    /// Make a recovery phrase for the group and print it: 24 words that let a new device
    /// join on its own (`zerok init --recover`) if every device is lost. It is a secret;
    /// `zerok devices remove` of its entry revokes it.
    ExportRecovery {
        /// Seconds to wait for a relay to take the phrase's entry and snapshot.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        wait: u64,
    },
    /// Print an invite token for the group (it is a secret).
    Invite {
        /// Hours the token stays valid.
        #[arg(long, default_value_t = 168)]
        valid_hours: u64,
        /// Also draw the token as a QR code (for a dark terminal background), above it.
        #[arg(long)]
        qr: bool,
    },
    /// Join a group with an invite token: a member device that is online (running `zerok
    /// watch`, or an app) admits this one.
    Join {
        /// The token from `zerok invite`.
        token: String,
        /// Accepted and ignored: members admit devices, no passphrase is typed any more.
        #[arg(long, hide = true)]
        passphrase: bool,
        /// Seconds to wait for a member device to admit this one.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        wait: u64,
    },
    /// Pair a device side by side by a short code: `zerok pair` on the device in the group
    /// shows a code; `zerok pair CODE --relay ADDR` on the new device joins with it.
    Pair {
        /// The code the device in the group shows (on the new device).
        code: Option<String>,
        /// On the new device: a relay of the group, where the two devices meet (the device
        /// in the group prints the command with it).
        #[arg(long = "relay", value_name = "ADDR")]
        relays: Vec<RelayAddr>,
        /// Seconds to wait for the other device.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        wait: u64,
    },
    /// List the devices of the group: name, id, who added each, when it was last seen.
    Devices {
        /// One JSON object per device.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// Push a record (text, or a file's bytes).
    Push {
        /// The text to push.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Push the bytes of this file instead.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Wait until a relay acked, however long it takes.
        #[arg(long)]
        wait: bool,
        /// Without --wait: how long to try before leaving the push queued.
        #[arg(long, default_value_t = 15, value_name = "SECS")]
        timeout: u64,
    },
    /// Put a large file into the group: sealed in chunks, uploaded to the group's relays
    /// (an interrupted upload resumes), announced to every member. Prints its id.
    Put {
        /// The file.
        path: PathBuf,
    },
    /// Fetch a file a member put (its id, or a unique prefix, as `zerok pull` printed it)
    /// into PATH (default: the file's name, in the current directory).
    Get {
        /// The file's id.
        id: String,
        /// Where it goes.
        path: Option<PathBuf>,
    },
    /// List the files this device put or was told of (by `zerok pull` or `zerok watch`):
    /// id, size in bytes and name, one per line. Reaches no relay.
    Files {
        /// One JSON object per file (group, id, size, name).
        #[arg(long)]
        json: bool,
    },
    /// Fetch new records and print each payload as a line.
    Pull {
        /// One JSON object per record (sender, seq, blob id, payload).
        #[arg(long)]
        json: bool,
    },
    /// Stay connected and print records as they arrive (Ctrl-C to stop).
    Watch {
        /// One JSON object per record.
        #[arg(long)]
        json: bool,
    },
    /// Show this device, its groups, relays and queued pushes.
    Status,
    /// Manage the group's relays.
    Relays {
        #[command(subcommand)]
        action: RelaysAction,
    },
}

#[derive(Subcommand)]
enum RelaysAction {
    /// Add a relay (the text of its `relay.addr`).
    Add {
        /// The address.
        addr: RelayAddr,
    },
    /// Remove a relay by its id (or a unique prefix of it).
    Remove {
        /// The relay id.
        id: String,
    },
    /// List the group's relays.
    List,
}

/// A one-line error and its exit code.
struct Failure(String, u8);

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Failure(err.to_string(), 1)
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure(message.into(), 1)
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("zerok: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("zerok: {message}");
            ExitCode::from(code)
        }
    }
}

fn default_home() -> Result<PathBuf, Failure> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(data) = env("XDG_DATA_HOME") {
        return Ok(data.join("zerok"));
    }
    if cfg!(target_os = "macos")
        && let Some(home) = env("HOME")
    {
        return Ok(home.join("Library/Application Support/zerok"));
    }
    if cfg!(windows)
        && let Some(appdata) = env("APPDATA")
    {
        return Ok(appdata.join("zerok"));
    }
    env("HOME")
        .map(|home| home.join(".local/share/zerok"))
        .ok_or_else(|| fail("no home dir: pass --home DIR or set ZEROK_HOME"))
}

fn read_passphrase() -> Result<String, Failure> {
    read_secret_line("ZEROK_PASSPHRASE", "passphrase")
}

/// A secret from the environment variable `var`, or the first line of stdin.
fn read_secret_line(var: &str, what: &str) -> Result<String, Failure> {
    if let Ok(value) = std::env::var(var) {
        return Ok(value);
    }
    eprintln!("{what} (one line on stdin):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| fail(format!("cannot read the {what}: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn start(
    home: &std::path::Path,
    receive: bool,
    device_name: Option<&String>,
) -> Result<Client, Failure> {
    let mut config = ClientConfig::new(home);
    config.receive = receive;
    config.device_name = device_name.cloned();
    Ok(Client::start(config).await?)
}

/// A client on `home` that reaches no relay, for commands that only read or edit the home:
/// they answer at once, and never wait for a relay's handshake to end as they stop.
async fn start_offline(home: &std::path::Path) -> Result<Client, Failure> {
    let mut config = ClientConfig::new(home);
    config.receive = false;
    config.transport = zerok_client::Transport::Offline;
    Ok(Client::start(config).await?)
}

/// The device in the group's side of `zerok pair`: show a code, run the exchange, then stay
/// online until the new device's admission is on a relay.
async fn pair_offer(
    client: &Client,
    wanted: Option<GroupId>,
    wait: Duration,
) -> Result<zerok_client::DeviceInfo, Failure> {
    let group = pick_group(client, wanted).await?;
    let code = zerok_client::PairCode::random(&mut zerok_actors::rng::Rng::system());
    let relay = client
        .relays(group)
        .await?
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    println!("{}", code.reveal());
    eprintln!(
        "zerok: on the new device, run: zerok pair {} --relay {relay}\nzerok: waiting up to {} s",
        code.reveal(),
        wait.as_secs()
    );
    Ok(client.pair_offer(group, &code, wait).await?)
}

/// The device of the roster whose hex id starts with `id` (exactly one).
fn pick_device<'a>(devices: &'a [DeviceInfo], id: &str) -> Result<&'a DeviceInfo, Failure> {
    let wanted = id.trim().to_ascii_lowercase();
    if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(format!(
            "{id:?} is not a device id (hex, as `zerok devices` shows)"
        )));
    }
    let found: Vec<&DeviceInfo> = devices
        .iter()
        .filter(|d| d.device.to_hex().starts_with(&wanted))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(fail(format!(
            "no device of the group has an id starting with {wanted}"
        ))),
        several => Err(fail(format!(
            "{} devices have an id starting with {wanted}; give more of it",
            several.len()
        ))),
    }
}

async fn pick_group(client: &Client, wanted: Option<GroupId>) -> Result<GroupId, Failure> {
    let groups = client.groups().await?;
    if let Some(id) = wanted {
        return groups
            .iter()
            .find(|(g, _)| *g == id)
            .map(|(g, _)| *g)
            .ok_or_else(|| fail(format!("this device is not in group {id}")));
    }
    match groups.as_slice() {
        [] => Err(fail(
            "no group yet: run `zerok init --relay ADDR` or `zerok join TOKEN`",
        )),
        [(id, _)] => Ok(*id),
        several => Err(fail(format!(
            "this device is in {} groups; pick one with --group ({})",
            several.len(),
            several
                .iter()
                .map(|(id, name)| format!("{name}: {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Keep a file's reference so `zerok get ID` finds it.
fn remember(home: &std::path::Path, event: &Event) {
    if let Event::File { file, .. } = event
        && let Err(err) = zerok_client::remember_file_in(home, file)
    {
        eprintln!("zerok: warning: file {} not remembered: {err}", file.id());
    }
}

fn print_record(out: &mut impl Write, event: &Event, json: bool) -> std::io::Result<()> {
    match event {
        Event::File {
            group,
            sender,
            seq,
            file,
            ..
        } => {
            if json {
                let line = serde_json::json!({
                    "group": group.to_string(),
                    "sender": sender.to_hex(),
                    "seq": seq,
                    "file": file.id(),
                    "size": file.size,
                    "name": file.name,
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "file {} {} {}", file.id(), file.size, file.name)?;
            }
            out.flush()
        }
        Event::Received {
            group,
            sender,
            seq,
            hlc,
            blob_id,
            payload,
        } => {
            if json {
                let line = serde_json::json!({
                    "group": group.to_string(),
                    "sender": sender.to_hex(),
                    "seq": seq,
                    "hlc": hlc,
                    "blob_id": blob_id.to_hex(),
                    "payload": String::from_utf8_lossy(payload),
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}", String::from_utf8_lossy(payload))?;
            }
            out.flush()
        }
        Event::GapDetected {
            sender, from, to, ..
        } => {
            eprintln!(
                "zerok: warning: records {from}..{to} of device {} are missing (a relay withheld or lost them)",
                sender.short()
            );
            Ok(())
        }
        Event::Undecryptable { relay, reason, .. } => {
            eprintln!(
                "zerok: warning: relay {} served a record that does not open ({reason}); ignored",
                relay.short()
            );
            Ok(())
        }
        Event::UnknownSender { sender, .. } => {
            eprintln!(
                "zerok: warning: a record signed by device {}, which is not on the group's roster, was not delivered",
                sender.short()
            );
            Ok(())
        }
        // `pull` and `watch` end on it with its error.
        Event::Removed { .. } => Ok(()),
        Event::EpochChanged { epoch, .. } => {
            eprintln!(
                "zerok: the group was re-keyed (a device was removed); now in key epoch {epoch}"
            );
            Ok(())
        }
        Event::RelayUp { .. } | Event::RelayDown { .. } | Event::RosterChanged { .. } => Ok(()),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let home = match cli.home {
        Some(home) => home,
        None => default_home()?,
    };
    match cli.command {
        Command::Init {
            relays,
            recover: true,
            wait,
            ..
        } => {
            let phrase = read_secret_line("ZEROK_RECOVERY_PHRASE", "recovery phrase")?;
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                if let Some((id, _)) = client.groups().await?.first() {
                    return Err(fail(format!(
                        "{} is already set up (group {id}); recover into a new --home",
                        home.display()
                    )));
                }
                eprintln!("zerok: looking for the phrase's group for up to {wait} s");
                Ok(client
                    .recover(&phrase, relays, Duration::from_secs(wait))
                    .await?)
            }
            .await;
            let device = client.device_id();
            client.shutdown().await;
            let group = result?;
            println!("device {device}");
            println!("recovered group {group} (this device is new on its roster)");
            Ok(())
        }
        Command::ExportRecovery { wait } => {
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                let group = pick_group(&client, cli.group).await?;
                let relays = client.relays(group).await?;
                let phrase = client
                    .export_recovery(group, Duration::from_secs(wait))
                    .await?;
                Ok::<_, Failure>((phrase, relays))
            }
            .await;
            client.shutdown().await;
            let (phrase, relays) = result?;
            eprintln!(
                "zerok: this recovery phrase is a secret: with it anyone can join the group as a \
                 new device. Write it down and keep it offline. It is on the group's device list \
                 as \"recovery phrase\"; removing that entry revokes it. To recover on a new \
                 device: zerok init --recover{}",
                relays
                    .iter()
                    .map(|r| format!(" --relay {r}"))
                    .collect::<String>()
            );
            println!("{}", phrase.as_str());
            Ok(())
        }
        Command::Init {
            relays,
            passphrase,
            name,
            admissions,
            ..
        } => {
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let existing = client.groups().await?;
            if let Some((id, _)) = existing.first() {
                client.shutdown().await;
                return Err(fail(format!(
                    "{} is already set up (group {id}); use another --home, or `zerok join` to add a group",
                    home.display()
                )));
            }
            let secret = if passphrase {
                NewSecret::Passphrase(read_passphrase()?)
            } else {
                NewSecret::Random
            };
            let result = client
                .create_group_admitted(&name, secret, relays, &admissions)
                .await;
            let device = client.device_id();
            client.shutdown().await;
            let group = result?;
            println!("device {device}");
            println!("group {group} ({name})");
            Ok(())
        }
        Command::Invite { valid_hours, qr } => {
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                let group = pick_group(&client, cli.group).await?;
                Ok::<_, Failure>(
                    client
                        .invite(group, Duration::from_secs(valid_hours * 3600))
                        .await?,
                )
            }
            .await;
            client.shutdown().await;
            let token = result?;
            eprintln!(
                "zerok: this invite is a secret until it is used: whoever presents it first is \
                 admitted by a member device, within {valid_hours} h. It holds no key of the \
                 group. A member device must be online when they join (run `zerok watch` here, \
                 or keep an app of the group open). Share it only over a channel you trust."
            );
            if qr {
                println!(
                    "{}",
                    zerok_client::qr::render(&token).map_err(|e| fail(e.to_string()))?
                );
            }
            println!("{token}");
            Ok(())
        }
        Command::Join {
            token,
            passphrase: _,
            wait,
        } => {
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                client.invite_needs_passphrase(&token)?;
                eprintln!(
                    "zerok: waiting up to {wait} s for a member device to admit this one ({})",
                    client.device_id().short()
                );
                Ok::<_, Failure>(
                    client
                        .join_waiting(&token, Duration::from_secs(wait))
                        .await?,
                )
            }
            .await;
            client.shutdown().await;
            let group = result?;
            println!("joined group {group}");
            Ok(())
        }
        Command::Push {
            text,
            file,
            wait,
            timeout,
        } => {
            let payload = match (text, file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?,
                (None, None) => return Err(Failure("nothing to push".into(), 2)),
            };
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                let group = pick_group(&client, cli.group).await?;
                let blob_id = client.enqueue(group, payload).await?;
                let limit = (!wait).then(|| Duration::from_secs(timeout));
                Ok::<_, Failure>((blob_id, client.wait_acked(group, blob_id, limit).await))
            }
            .await;
            client.shutdown().await;
            match result? {
                (_, Ok(receipt)) => {
                    println!(
                        "pushed {} (durable on {} relay{})",
                        receipt.blob_id,
                        receipt.acked_by.len(),
                        if receipt.acked_by.len() == 1 { "" } else { "s" }
                    );
                    Ok(())
                }
                (blob_id, Err(ClientError::NotYetAcked { .. })) => {
                    println!(
                        "queued {blob_id}: no relay acknowledged it yet; it is sent by the next zerok command that reaches a relay"
                    );
                    Ok(())
                }
                (_, Err(err)) => Err(err.into()),
            }
        }
        Command::Pair {
            code: None,
            relays: _,
            wait,
        } => {
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = pair_offer(&client, cli.group, Duration::from_secs(wait)).await;
            client.shutdown().await;
            let added = result?;
            println!(
                "paired: device {} ({}) joined",
                added.device.short(),
                added.name
            );
            Ok(())
        }
        Command::Pair {
            code: Some(code),
            relays,
            wait,
        } => {
            if relays.is_empty() {
                return Err(Failure(
                    "the new device needs --relay ADDR (the device in the group prints the command)".into(),
                    2,
                ));
            }
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = client
                .pair_join(&code, relays, Duration::from_secs(wait))
                .await;
            client.shutdown().await;
            println!("joined group {}", result?);
            Ok(())
        }
        Command::Devices {
            action: Some(DevicesAction::Remove { id }),
            ..
        } => {
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                let group = pick_group(&client, cli.group).await?;
                let devices = client.devices(group).await?;
                let device = pick_device(&devices, &id)?;
                client.remove_device(group, device.device).await?;
                // The group moves to its new epoch; the rekey goes to the relays.
                client.sync_now(group).await?;
                Ok::<_, Failure>(device.clone())
            }
            .await;
            client.shutdown().await;
            let device = result?;
            println!(
                "removed {} ({}); the group was re-keyed without it",
                device.device.short(),
                device.name
            );
            Ok(())
        }
        Command::Devices { json, action: None } => {
            let client = start_offline(&home).await?;
            let result = async {
                let group = pick_group(&client, cli.group).await?;
                Ok::<_, Failure>(client.devices(group).await?)
            }
            .await;
            client.shutdown().await;
            let mut out = std::io::stdout();
            for device in result? {
                let last_seen = device.last_seen_ms.map(|ms| ms / 1000);
                let line = if json {
                    serde_json::json!({
                        "device": device.device.to_hex(),
                        "name": device.name,
                        "added_by": device.added_by.to_hex(),
                        "added_at_unix": device.added_at_ms / 1000,
                        "last_seen_unix": last_seen,
                        "this_device": device.is_self,
                    })
                    .to_string()
                } else {
                    format!(
                        "{}  {:<24}  added by {} at {}  last seen {}{}",
                        device.device.short(),
                        device.name,
                        device.added_by.short(),
                        device.added_at_ms / 1000,
                        last_seen.map_or("-".to_owned(), |s| s.to_string()),
                        if device.is_self {
                            "  (this device)"
                        } else {
                            ""
                        }
                    )
                };
                writeln!(out, "{line}").map_err(|e| fail(e.to_string()))?;
            }
            Ok(())
        }
        Command::Put { path } => {
            if !path.is_file() {
                return Err(fail(format!("{}: not a readable file", path.display())));
            }
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                let group = pick_group(&client, cli.group).await?;
                let (progress, bar) = progress_bar();
                let file = client.put_file_with(group, &path, Some(progress)).await;
                bar.await.ok();
                let file = file?;
                // The announcement is queued durably; give the relays a moment to take it
                // (it stays queued and goes out with the next command otherwise).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                while tokio::time::Instant::now() < deadline {
                    let status = client.status().await?;
                    let queued = status
                        .groups
                        .iter()
                        .find(|g| g.id == group)
                        .map(|g| g.outbox);
                    if queued.unwrap_or(0) == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok::<_, Failure>(file)
            }
            .await;
            client.shutdown().await;
            let file = result?;
            println!("{} {} {}", file.id(), file.size, file.name);
            Ok(())
        }
        Command::Get { id, path } => {
            let client = start(&home, false, cli.device_name.as_ref()).await?;
            let result = async {
                let mut matches = client.files_starting_with(&id)?;
                let file = match matches.len() {
                    0 => Err(fail(format!(
                        "no file {id} known here: run `zerok pull` to learn of new files"
                    ))),
                    1 => Ok(matches.remove(0)),
                    n => Err(fail(format!(
                        "{n} files have ids starting with '{id}' ({}): give more of the id",
                        matches
                            .iter()
                            .map(|f| format!("{} {}", f.id(), f.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }?;
                let dest = match path {
                    Some(path) if path.is_dir() => path.join(&file.name),
                    Some(path) => path,
                    None if file.name.is_empty() => PathBuf::from(file.id()),
                    None => PathBuf::from(&file.name),
                };
                let (progress, bar) = progress_bar();
                let got = client.get_file_with(&file, &dest, Some(progress)).await;
                bar.await.ok();
                got?;
                Ok::<_, Failure>(dest)
            }
            .await;
            client.shutdown().await;
            let dest = result?;
            println!("{}", dest.display());
            Ok(())
        }
        Command::Files { json } => {
            let client = start_offline(&home).await?;
            let result = async {
                let group = match cli.group {
                    Some(wanted) => Some(pick_group(&client, Some(wanted)).await?),
                    None => None,
                };
                let mut out = std::io::stdout();
                let printed = |e: std::io::Error| fail(format!("cannot print: {e}"));
                for file in client.known_files(group)? {
                    if json {
                        let line = serde_json::json!({
                            "group": file.group.to_string(),
                            "file": file.id(),
                            "size": file.size,
                            "name": file.name,
                        });
                        writeln!(out, "{line}").map_err(printed)?;
                    } else {
                        writeln!(out, "{} {} {}", file.id(), file.size, file.name)
                            .map_err(printed)?;
                    }
                }
                Ok::<_, Failure>(())
            }
            .await;
            client.shutdown().await;
            result
        }
        Command::Pull { json } => {
            let client = start(&home, true, cli.device_name.as_ref()).await?;
            let result = pull(&client, &home, cli.group, json).await;
            client.shutdown().await;
            result
        }
        Command::Watch { json } => {
            let client = start(&home, true, cli.device_name.as_ref()).await?;
            let result = async {
                pick_group(&client, cli.group).await?;
                let mut events = client
                    .events()
                    .ok_or_else(|| fail("events already taken"))?;
                let mut out = std::io::stdout();
                loop {
                    tokio::select! {
                        event = events.recv() => match event {
                            Some(Event::Removed { group }) => {
                                return Err(ClientError::Removed(group).into());
                            }
                            Some(event) => {
                                remember(&home, &event);
                                print_record(&mut out, &event, json)
                            }
                                .map_err(|e| fail(format!("stdout: {e}")))?,
                            None => return Ok(()),
                        },
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
            }
            .await;
            client.shutdown().await;
            result
        }
        Command::Status => {
            let client = start_offline(&home).await?;
            let status = client.status().await;
            client.shutdown().await;
            let status = status?;
            println!("device {}", status.device_id);
            if status.groups.is_empty() {
                println!("no groups");
            }
            for group in status.groups {
                println!("group {} ({})", group.id, group.name);
                println!(
                    "  queued pushes: {} ({} not yet acked by enough relays)",
                    group.outbox, group.unacked
                );
                for relay in group.relays {
                    println!("  relay {}  received up to {}", relay.addr, relay.cursor);
                }
            }
            Ok(())
        }
        Command::Relays { action } => {
            let client = start_offline(&home).await?;
            let result = relays(&client, cli.group, action).await;
            client.shutdown().await;
            result
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal), fed by the sender;
/// the task ends when the sender is dropped.
fn progress_bar() -> (
    tokio::sync::mpsc::Sender<Progress>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Progress>(64);
    let task = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        while let Some(event) = rx.recv().await {
            let (phase, done, total) = match event {
                Progress::Sealing { done, total } => ("sealing", done, total),
                Progress::Uploading {
                    done,
                    total,
                    resumed_from,
                } => ("uploading", resumed_from + done, resumed_from + total),
                Progress::Downloading {
                    done,
                    total,
                    resumed_from,
                } => ("downloading", resumed_from + done, resumed_from + total),
                Progress::Checking { done, total } => ("checking", done, total),
            };
            bar.set_message(phase);
            bar.set_length(total);
            bar.set_position(done);
        }
        bar.finish_and_clear();
    });
    (tx, task)
}

async fn pull(
    client: &Client,
    home: &std::path::Path,
    group: Option<GroupId>,
    json: bool,
) -> Result<(), Failure> {
    let group = pick_group(client, group).await?;
    let home = home.to_path_buf();
    let mut events = client
        .events()
        .ok_or_else(|| fail("events already taken"))?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let printer = tokio::spawn(async move {
        let mut out = std::io::stdout();
        let mut printed = 0usize;
        loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => {
                        printed += usize::from(matches!(event, Event::Received { .. } | Event::File { .. }));
                        remember(&home, &event);
                        print_record(&mut out, &event, json)?;
                    }
                    None => break,
                },
                _ = &mut stop_rx => {
                    while let Ok(event) = events.try_recv() {
                        printed += usize::from(matches!(event, Event::Received { .. } | Event::File { .. }));
                        remember(&home, &event);
                        print_record(&mut out, &event, json)?;
                    }
                    break;
                }
            }
        }
        Ok::<usize, std::io::Error>(printed)
    });
    let report = client.sync_now(group).await;
    let _ = stop_tx.send(());
    let printed = printer
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("stdout: {e}")))?;
    // A member removed this device: nothing of the group is synced any more.
    if client
        .status()
        .await?
        .groups
        .iter()
        .any(|g| g.id == group && g.removed)
    {
        return Err(ClientError::Removed(group).into());
    }
    let report = report?;
    for (relay, reason) in &report.failed {
        eprintln!(
            "zerok: warning: relay {} not synced: {reason}",
            relay.short()
        );
    }
    if report.synced.is_empty() {
        return Err(fail(format!(
            "no relay reachable ({} record{} printed from the others' answers)",
            printed,
            if printed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

async fn relays(
    client: &Client,
    group: Option<GroupId>,
    action: RelaysAction,
) -> Result<(), Failure> {
    let group = pick_group(client, group).await?;
    let mut current = client.relays(group).await?;
    match action {
        RelaysAction::List => {
            for relay in current {
                println!("{relay}");
            }
        }
        RelaysAction::Add { addr } => {
            if current.iter().any(|r| r.id == addr.id) {
                current.retain(|r| r.id != addr.id);
            }
            current.push(addr.clone());
            client.set_relays(group, current).await?;
            println!("added {addr}");
        }
        RelaysAction::Remove { id } => {
            let id = id.to_lowercase();
            let matching: Vec<_> = current
                .iter()
                .filter(|r| r.id.to_hex().starts_with(&id) && !id.is_empty())
                .cloned()
                .collect();
            let [relay] = matching.as_slice() else {
                return Err(fail(format!(
                    "{} relays match {id:?}; give more of the id",
                    matching.len()
                )));
            };
            if current.len() == 1 {
                return Err(fail("a group needs at least one relay; add another first"));
            }
            current.retain(|r| r.id != relay.id);
            client.set_relays(group, current).await?;
            println!("removed {relay}");
        }
    }
    Ok(())
}
