//! A `zerok-relay` child process for end-to-end tests and benchmarks: started on loopback
//! with its own data dir and ephemeral ports, its logs captured to a file, stopped with
//! SIGTERM or killed with SIGKILL, restarted on the same data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use zerok_messages::RelayAddr;

/// How long a start may take before it counts as failed.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running relay process.
pub struct RelayProcess {
    binary: PathBuf,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    log: String,
    child: Option<Child>,
    /// The relay's address, read from `relay.addr`.
    pub addr: RelayAddr,
    /// The HTTP address, read from the relay's stdout.
    pub http: Option<std::net::SocketAddr>,
    starts: u32,
}

impl RelayProcess {
    /// Start `binary` on `data_dir` with QUIC and HTTP on ephemeral loopback ports, plus
    /// `extra_args`. Waits until `relay.addr` is written.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> std::io::Result<RelayProcess> {
        let log = std::env::var("ZEROK_TEST_RELAY_LOG").unwrap_or_else(|_| "debug".into());
        Self::start_logging(binary, data_dir, extra_args, &log).await
    }

    /// [`RelayProcess::start`] with `RUST_LOG` set to `log` (benchmarks run at `warn`).
    pub async fn start_logging(
        binary: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        log: &str,
    ) -> std::io::Result<RelayProcess> {
        let mut process = RelayProcess {
            log: log.to_owned(),
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            addr: RelayAddr {
                id: zerok_messages::DeviceId([0; 32]),
                addrs: Vec::new(),
            },
            http: None,
            starts: 0,
        };
        process.restart().await?;
        Ok(process)
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Files the relay's stderr logs were written to, one per start.
    pub fn log_files(&self) -> Vec<PathBuf> {
        (1..=self.starts)
            .map(|n| self.data_dir.with_extension(format!("log.{n}")))
            .collect()
    }

    /// Everything the relay logged, over all starts.
    pub fn logs(&self) -> String {
        self.log_files()
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Start (again) on the same data dir; the QUIC port is fresh unless `extra_args` fixed it.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Err(std::io::Error::other("relay is still running"));
        }
        std::fs::create_dir_all(&self.data_dir)?;
        let addr_file = self.data_dir.join("relay.addr");
        let _ = std::fs::remove_file(&addr_file);
        self.starts += 1;
        let log =
            std::fs::File::create(self.data_dir.with_extension(format!("log.{}", self.starts)))?;
        let stdout_path = self.data_dir.with_extension(format!("out.{}", self.starts));
        let stdout = std::fs::File::create(&stdout_path)?;
        let mut command = Command::new(&self.binary);
        for (flag, default) in [("--bind", "127.0.0.1:0"), ("--http", "127.0.0.1:0")] {
            if !self.extra_args.iter().any(|arg| arg == flag) {
                command.args([flag, default]);
            }
        }
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", &self.log)
            .env_remove("ZEROK_RELAY_CONFIG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        self.child = Some(command.spawn()?);
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(25);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(addr) = text.trim().parse::<RelayAddr>()
            {
                self.addr = addr;
                break;
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(std::io::Error::other(format!(
                    "relay exited during start ({status}): {}",
                    self.logs()
                )));
            }
            if waited >= START_TIMEOUT {
                self.kill();
                return Err(std::io::Error::other("relay did not start in time"));
            }
            tokio::time::sleep(step).await;
            waited += step;
        }
        // The banner (with the HTTP address) is printed in one write after relay.addr.
        self.http = None;
        for _ in 0..500 {
            let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            if out.lines().any(|l| l.starts_with("address file:")) {
                self.http = out
                    .lines()
                    .find(|l| l.starts_with("http:"))
                    .and_then(|line| line.split("http://").nth(1))
                    .and_then(|rest| rest.trim().trim_end_matches("/health").parse().ok());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Resident memory of the relay process in KiB (Linux `/proc`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the relay and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the relay and wait up to `within` for it to exit; kills it after that.
    /// Returns its exit status and how long it took.
    pub async fn terminate(&mut self, within: Duration) -> std::io::Result<(ExitStatus, Duration)> {
        let Some(mut child) = self.child.take() else {
            return Err(std::io::Error::other("relay is not running"));
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other("kill -TERM failed"));
        }
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let status = child.wait()?;
                return Err(std::io::Error::other(format!(
                    "relay did not exit within {within:?} of SIGTERM ({status})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
