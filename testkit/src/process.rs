//! Child processes with captured output, and a poller for tests that wait
//! on a state.
//!
//! # Layout
//!
//! - [`CapturedChild`] runs a binary with its stdout and stderr read line by
//!   line into memory by two threads, so a test can wait for a log line
//!   while the process runs and read every line after it exits. The process
//!   is killed when the value is dropped.
//! - [`terminate`] sends SIGTERM, as an orchestrator stopping a container
//!   would; [`signal`] sends any signal, such as SIGSTOP and SIGCONT for a
//!   process that stalls and comes back.
//! - [`eventually`] polls a probe until it yields a value or a deadline
//!   passes: tests wait on states, never on sleeps.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// How often [`eventually`] probes.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A running child process whose output is kept, line by line.
#[derive(Debug)]
pub struct CapturedChild {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The reader threads; joined once the process exited, so no line is
    /// missed by a test that reads the output after [`CapturedChild::wait`].
    readers: Vec<JoinHandle<()>>,
}

impl CapturedChild {
    /// Spawns `command` with stdin closed and stdout and stderr captured.
    ///
    /// # Panics
    ///
    /// If the process cannot be started.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {:?}: {err}", command.get_program()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), &stdout),
            collect(child.stderr.take().expect("piped stderr"), &stderr),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The lines written to stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        snapshot(&self.stdout)
    }

    /// The lines written to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        snapshot(&self.stderr)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        terminate(self.id());
    }

    /// Waits until a stdout line is a JSON object with `field`, and returns
    /// that field's value: how a test learns, say, the port a process bound.
    ///
    /// # Panics
    ///
    /// If no such line appears within `deadline`.
    pub async fn wait_for_json_field(&self, field: &str, deadline: Duration) -> Value {
        eventually(&format!("a log line with `{field}`"), deadline, || async {
            self.stdout()
                .iter()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find_map(|line| line.get(field).cloned())
        })
        .await
    }

    /// Sends SIGTERM, waits for the exit and returns the exit status with
    /// everything written to stdout.
    pub async fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.terminate();
        tokio::task::spawn_blocking(move || {
            let status = self.wait();
            (status, self.stdout())
        })
        .await
        .expect("join the waiting thread")
    }

    /// Waits for the process to exit and for its output to be read to the
    /// end. Blocks: call it from `spawn_blocking` or after the process was
    /// told to stop.
    ///
    /// # Panics
    ///
    /// If waiting fails.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().expect("wait for the child process");
        for reader in self.readers.drain(..) {
            // A reader that panicked lost nothing that a test could use.
            let _ = reader.join();
        }
        status
    }
}

impl Drop for CapturedChild {
    fn drop(&mut self) {
        // Errors mean it already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static, into: &Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    let into = Arc::clone(into);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    })
}

fn snapshot(lines: &Mutex<Vec<String>>) -> Vec<String> {
    lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Sends SIGTERM to process `pid`.
///
/// # Panics
///
/// If `kill` cannot be run or fails.
pub fn terminate(pid: u32) {
    assert!(signal("TERM", &[pid]), "kill -TERM {pid} failed");
}

/// Sends `name` (a signal name `kill` knows: `STOP`, `CONT`, ...) to every
/// process in `pids`; returns whether each of them got it (one that already
/// exited did not).
///
/// # Panics
///
/// If `kill` cannot be run.
pub fn signal(name: &str, pids: &[u32]) -> bool {
    if pids.is_empty() {
        return true;
    }
    Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .expect("run kill")
        .success()
}

/// Calls `probe` until it returns `Some`, and returns that value.
///
/// # Panics
///
/// If `deadline` passes first; the message says `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "{what}: not reached within {deadline:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
