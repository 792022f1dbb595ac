//! The API, worker and SMTP server processes of a run, started from the
//! workspace's built binaries, each logging to a file of its own.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The binaries a run starts.
const API_BIN: &str = "sendonce-api";
const WORKER_BIN: &str = "sendonce-worker";
const SMTP_BIN: &str = "sendonce-smtp-sink";
const BINS: [&str; 3] = [API_BIN, WORKER_BIN, SMTP_BIN];

/// How long the API may take to answer `/readyz`, and a worker to exit on
/// SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The directory holding `sendonce-api`, `sendonce-worker` and
/// `sendonce-smtp-sink`: the first directory up from this executable that
/// has all three (`target/<profile>` for the `sendonce-chaos` binary and for
/// the tests in `target/<profile>/deps`).
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to locate the running executable")?;
    exe.ancestors()
        .skip(1)
        .find(|dir| BINS.iter().all(|bin| dir.join(bin).is_file()))
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "{} are not next to {} or above it; \
                 build them first: cargo build --workspace --bins",
                BINS.join(", "),
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
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log_path = env.log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path)
            .with_context(|| format!("failed to create {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .context("failed to duplicate a log handle")?;
        let child = Command::new(env.bin_dir.join(bin))
            .args(args)
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

    /// Stops the process with SIGSTOP, as a stall would (a long GC pause,
    /// a VM migration, `docker pause`): it keeps its sockets and its state,
    /// and does nothing until [`Process::resume`].
    pub fn pause(&self) {
        // False only when the process already exited, which a kill then
        // reaps.
        sendonce_testkit::process::signal("STOP", &[self.child.id()]);
    }

    /// Resumes a process stopped by [`Process::pause`] with SIGCONT.
    pub fn resume(&self) {
        sendonce_testkit::process::signal("CONT", &[self.child.id()]);
    }

    /// Sends SIGTERM (after SIGCONT, in case it is paused) and waits for the
    /// exit.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            anyhow::bail!(
                "{} had exited on its own with {status} before SIGTERM; see its log",
                self.name
            );
        }
        self.resume();
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

    /// The exit status, if the process exited (and was reaped).
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("failed to check on {}", self.name))
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

/// A loopback port that was free a moment ago.
fn free_port(what: &str) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .with_context(|| format!("failed to find a free port for {what}"))?
        .port())
}

/// Starts the API on a free loopback port and waits until `/readyz`
/// answers; returns the process and its base URL.
pub async fn start_api(env: &Environment) -> anyhow::Result<(Process, String)> {
    let addr = format!("127.0.0.1:{}", free_port("the API")?);
    let mut api = Process::spawn(env, API_BIN, "api".into(), &[], &[("API_ADDR", &addr)])?;
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

/// A bearer token of `tenant` for posting jobs, minted by `sendonce-api
/// token` with the run's `JWT_SECRET`.
pub fn mint_token(env: &Environment, tenant: &str, scope: &str) -> anyhow::Result<String> {
    let output = Command::new(env.bin_dir.join(API_BIN))
        .args(["token", "--sub", "chaos", "--scope", scope])
        .args(["--tenant", tenant])
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
    Process::spawn(env, WORKER_BIN, name, &[], &[])
}

/// The SMTP server of a run: the testkit's server as a process of its own
/// (`sendonce-smtp-sink`), so that a pause is a real SIGSTOP, as for every
/// other process: the kernel still completes TCP handshakes and buffers
/// what clients write, and nothing answers until SIGCONT.
#[derive(Debug)]
pub struct SmtpSink {
    process: Process,
    port: u16,
    /// The sink's own record: one JSON line per message whose data arrived,
    /// written before the client hears the reply.
    record: PathBuf,
}

/// One message whose data reached the SMTP server, from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The first recipient.
    pub rcpt: String,
    /// Every recipient the server accepted, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// Replied `250`; otherwise cut on purpose, without a reply.
    pub accepted: bool,
}

impl SmtpSink {
    /// Starts the sink on a free loopback port, recording into the log
    /// directory, and waits until it accepts connections.
    pub async fn start(env: &Environment) -> anyhow::Result<Self> {
        let port = free_port("the SMTP server")?;
        let record = env.log_dir.join("smtp-record.jsonl");
        let listen = format!("127.0.0.1:{port}");
        let record_arg = record.to_str().context("the log directory is not UTF-8")?;
        let mut process = Process::spawn(
            env,
            SMTP_BIN,
            "smtp".into(),
            &["--listen", &listen, "--record", record_arg],
            &[],
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_err()
        {
            if let Some(status) = process.child.try_wait()? {
                anyhow::bail!(
                    "{SMTP_BIN} exited with {status} before listening; see {}",
                    env.log_dir.join("smtp.log").display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{SMTP_BIN} did not listen within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(Self {
            process,
            port,
            record,
        })
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops the server with SIGSTOP: every session stops answering.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Resumes the server with SIGCONT.
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Stops the server with SIGTERM and waits for the exit.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        self.process.terminate().await
    }

    /// Every message whose data reached the server, oldest first.
    pub fn transfers(&self) -> anyhow::Result<Vec<Transfer>> {
        let text = std::fs::read_to_string(&self.record)
            .or_else(|e| match e.kind() {
                // No message at all leaves no file.
                std::io::ErrorKind::NotFound => Ok(String::new()),
                _ => Err(e),
            })
            .with_context(|| format!("failed to read {}", self.record.display()))?;
        text.lines().map(transfer).collect()
    }
}

/// One line of the sink's record.
fn transfer(line: &str) -> anyhow::Result<Transfer> {
    let entry: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("a line of the SMTP record is not JSON: {line}"))?;
    let accepted = match entry["event"].as_str() {
        Some("accepted") => true,
        Some("cut") => false,
        _ => anyhow::bail!("a line of the SMTP record has no known event: {line}"),
    };
    let rcpt_to: Vec<String> = entry["rcpt_to"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let rcpt = rcpt_to.first().cloned().unwrap_or_default();
    Ok(Transfer {
        rcpt,
        rcpt_to,
        accepted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smtp_record_says_who_got_what() {
        let accepted = r#"{"event":"accepted","mail_from":"a@x","rcpt_to":["user1@chaos.test"],"message_id":"<m@x>","subject":"s"}"#;
        let cut = r#"{"event":"cut","mail_from":"a@x","rcpt_to":["user2+drop-after-data@chaos.test"],"message_id":null,"subject":null}"#;

        assert_eq!(
            transfer(accepted).expect("an accepted line"),
            Transfer {
                rcpt: "user1@chaos.test".into(),
                rcpt_to: vec!["user1@chaos.test".into()],
                accepted: true
            }
        );
        assert!(!transfer(cut).expect("a cut line").accepted);
        assert!(transfer(r#"{"event":"bounced"}"#).is_err());
        assert!(transfer("not json").is_err());
    }
}
