//! The API and worker processes of a run, started from the workspace's
//! built binaries, each logging to a file of its own.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

/// The binaries a run starts.
const API_BIN: &str = "sendonce-api";
const WORKER_BIN: &str = "sendonce-worker";

/// How long the API may take to answer `/readyz`, and a worker to exit on
/// SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The directory holding `sendonce-api` and `sendonce-worker`: the first
/// directory up from this executable that has both (`target/<profile>` for
/// the `sendonce-chaos` binary and for the tests in `target/<profile>/deps`).
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to locate the running executable")?;
    exe.ancestors()
        .skip(1)
        .find(|dir| dir.join(API_BIN).is_file() && dir.join(WORKER_BIN).is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "{API_BIN} and {WORKER_BIN} are not next to {} or above it; \
                 build them first: cargo build --workspace --bins",
                exe.display()
            )
        })
}

/// Where the processes of a run connect and log.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Holds the binaries.
    pub bin_dir: PathBuf,
    /// Receives one log file per process.
    pub log_dir: PathBuf,
    /// Settings given to every process as environment variables.
    pub vars: Vec<(String, String)>,
}

/// A child process, SIGKILLed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn spawn(
        env: &Environment,
        bin: &str,
        name: String,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log_path = env.log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path)
            .with_context(|| format!("failed to create {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .context("failed to duplicate a log handle")?;
        let child = Command::new(env.bin_dir.join(bin))
            .env_clear()
            .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("failed to start {}", env.bin_dir.join(bin).display()))?;
        Ok(Self { name, child })
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        // An error means it already exited, which is what was wanted.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        sendonce_testkit::process::terminate(self.child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                self.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The process's name, which also names its log file.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the API on a free loopback port and waits until `/readyz`
/// answers; returns the process and its base URL.
pub async fn start_api(env: &Environment) -> anyhow::Result<(Process, String)> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .context("failed to find a free port for the API")?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut api = Process::spawn(env, API_BIN, "api".into(), &[("API_ADDR", &addr)])?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = api.child.try_wait()? {
            anyhow::bail!(
                "the API exited with {status} before answering; see {}",
                env.log_dir.join("api.log").display()
            );
        }
        let ready = client
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok((api, base));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the API did not answer /readyz within {START_TIMEOUT:?}; see {}",
            env.log_dir.join("api.log").display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A bearer token for posting jobs, minted by `sendonce-api token` with the
/// run's `JWT_SECRET`.
pub fn mint_token(env: &Environment) -> anyhow::Result<String> {
    let output = Command::new(env.bin_dir.join(API_BIN))
        .args(["token", "--sub", "chaos", "--scope", "jobs:write jobs:read"])
        .args(["--ttl", "2h"])
        .env_clear()
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {API_BIN} token"))?;
    anyhow::ensure!(
        output.status.success(),
        "{API_BIN} token exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let token = String::from_utf8(output.stdout)
        .context("the token is not UTF-8")?
        .trim()
        .to_owned();
    anyhow::ensure!(!token.is_empty(), "{API_BIN} token printed nothing");
    Ok(token)
}

/// Starts a worker; `name` names its log file.
pub fn start_worker(env: &Environment, name: String) -> anyhow::Result<Process> {
    Process::spawn(env, WORKER_BIN, name, &[])
}
