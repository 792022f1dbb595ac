//! Private `redis-server` processes and per-test key prefixes.
//!
//! # Layout
//!
//! - [`unique_prefix`] names a test's keys on a shared Redis.
//! - [`RedisServer`] runs a `redis-server` of its own on a free loopback
//!   port, for tests that stop, restart or flush Redis and so must not touch
//!   the shared one.
//! - A few private helpers speak just enough RESP to tell when the process is
//!   ready and to flush it, so this module needs no Redis client crate.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use std::{env, io};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use uuid::Uuid;

/// Environment variable that overrides the `redis-server` binary (by default
/// `redis-server` found on `PATH`).
pub const REDIS_SERVER_ENV: &str = "REDIS_SERVER";

/// How long a started or restarted server may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often readiness is probed while starting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on one RESP round trip, so a stuck probe cannot outlive the deadline.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Fresh ports tried when the one picked is taken before Redis binds it.
const PORT_ATTEMPTS: usize = 5;
/// The server's stdout and stderr, kept in its directory for failure reports.
const LOG_FILE: &str = "redis.log";

/// A key prefix unique to one test, such as `t-0190c3…`; the application
/// wraps it in a hash tag (`{prefix}`), so one test's keys share a slot.
pub fn unique_prefix() -> String {
    format!("t-{}", Uuid::now_v7().simple())
}

/// How a [`RedisServer`] persists data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisOptions {
    /// Log every write to an append-only file fsynced before the reply
    /// (`appendfsync always`), so acknowledged writes survive
    /// [`RedisServer::stop`]; without it a restart starts empty.
    pub appendonly: bool,
}

/// A `redis-server` process of the test's own, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    options: RedisOptions,
    port: u16,
    /// More `redis-server` arguments (TLS, cluster mode), kept for restarts.
    extra: Vec<String>,
    /// Holds the append-only files and the log; removed when dropped.
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1, with a fresh
    /// directory and no RDB snapshots, and waits until it answers.
    ///
    /// # Panics
    ///
    /// If the server cannot be started or does not answer in time.
    pub async fn start(options: RedisOptions) -> Self {
        Self::start_with(options, |_| Vec::new()).await
    }

    /// Like [`RedisServer::start`], with more `redis-server` arguments,
    /// computed from the (plain TCP) port picked for it, such as
    /// `--tls-port` or `--cluster-enabled yes`.
    ///
    /// # Panics
    ///
    /// If the server cannot be started or does not answer in time.
    pub async fn start_with(options: RedisOptions, extra: impl Fn(u16) -> Vec<String>) -> Self {
        let dir = env::temp_dir().join(format!("sendonce-redis-{}", Uuid::now_v7().simple()));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("create Redis directory {}: {err}", dir.display()));
        let mut last_error = String::new();
        // A port found free can be taken by someone else before Redis binds
        // it; another port then does.
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let extra = extra(port);
            match launch(options, port, &dir, &extra).await {
                Ok(child) => {
                    return Self {
                        options,
                        port,
                        extra,
                        dir,
                        child: Some(child),
                    };
                }
                Err(err) => last_error = err,
            }
        }
        // Best effort: the panic below is what matters.
        let _ = fs::remove_dir_all(&dir);
        panic!("start redis-server ({PORT_ATTEMPTS} attempts): {last_error}");
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends one command over plain TCP and returns a simple, integer or
    /// bulk reply as text; an error reply is an `Err`.
    pub async fn command(&self, args: &[&str]) -> io::Result<String> {
        command(self.port, args).await
    }

    /// Makes this server a replica of `primary` (`REPLICAOF`), or, with
    /// `None`, a primary again (`REPLICAOF NO ONE`).
    ///
    /// # Panics
    ///
    /// If the server does not reply `OK`.
    pub async fn replicaof(&self, primary: Option<u16>) {
        let port = primary.map(|p| p.to_string());
        let args = match &port {
            Some(p) => vec!["REPLICAOF", "127.0.0.1", p.as_str()],
            None => vec!["REPLICAOF", "NO", "ONE"],
        };
        match self.command(&args).await {
            Ok(reply) if reply.starts_with("OK") => {}
            other => panic!("{args:?} on port {}: {other:?}", self.port),
        }
    }

    /// Whether the process runs (it does, unless stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process with SIGKILL and waits for it to exit, as a crash
    /// would; clients then see "connection refused".
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it already exited, which is what was wanted.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port
    /// and directory, so with `appendonly` the data comes back.
    ///
    /// # Panics
    ///
    /// If the server does not come back in time.
    pub async fn restart(&mut self) {
        self.stop();
        let child = launch(self.options, self.port, &self.dir, &self.extra)
            .await
            .unwrap_or_else(|err| panic!("restart redis-server: {err}"));
        self.child = Some(child);
    }

    /// SIGKILLs the server, deletes its append-only files, and starts it
    /// again on the same port: a restart that lost everything (no
    /// persistence, or a failover to an empty replica).
    ///
    /// # Panics
    ///
    /// If the directory cannot be emptied or the server does not come back.
    pub async fn restart_empty(&mut self) {
        self.stop();
        fs::remove_dir_all(&self.dir)
            .and_then(|()| fs::create_dir_all(&self.dir))
            .unwrap_or_else(|err| panic!("empty Redis directory {}: {err}", self.dir.display()));
        let child = launch(self.options, self.port, &self.dir, &self.extra)
            .await
            .unwrap_or_else(|err| panic!("restart redis-server empty: {err}"));
        self.child = Some(child);
    }

    /// Deletes every key.
    ///
    /// # Panics
    ///
    /// If the server does not reply `OK`.
    pub async fn flushall(&self) {
        match command(self.port, &["FLUSHALL"]).await {
            Ok(reply) if reply == "OK" => {}
            Ok(reply) => panic!("FLUSHALL on port {} replied {reply:?}", self.port),
            Err(err) => panic!("FLUSHALL on port {}: {err}", self.port),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        // Best effort: a leftover directory in the temp dir is harmless.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Environment variable that overrides the `redis-sentinel` binary (by
/// default `redis-sentinel` found on `PATH`).
pub const REDIS_SENTINEL_ENV: &str = "REDIS_SENTINEL";

/// A `redis-sentinel` process of the test's own, monitoring one primary as
/// `master_name` with a quorum of 2 and a 1 s down-after; killed when
/// dropped.
#[derive(Debug)]
pub struct RedisSentinel {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisSentinel {
    /// Starts a sentinel on a free port of 127.0.0.1 watching the primary on
    /// `primary_port`, and waits until it answers.
    ///
    /// # Panics
    ///
    /// If it cannot be started or does not answer in time.
    pub async fn start(master_name: &str, primary_port: u16) -> Self {
        let dir = env::temp_dir().join(format!("sendonce-sentinel-{}", Uuid::now_v7().simple()));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("create sentinel directory {}: {err}", dir.display()));
        let binary = env::var_os(REDIS_SENTINEL_ENV).unwrap_or_else(|| "redis-sentinel".into());
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            // Sentinel rewrites its configuration file, so each gets its own.
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 10000\n\
                 sentinel parallel-syncs {master_name} 1\n",
                dir = dir.display()
            );
            fs::write(&conf, text).unwrap_or_else(|err| panic!("write {}: {err}", conf.display()));
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(LOG_FILE))
                .expect("open the sentinel log");
            let log_err = log.try_clone().expect("duplicate log handle");
            let mut child = Command::new(&binary)
                .arg(&conf)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|err| {
                    panic!(
                        "spawn {} (install redis-sentinel or set {REDIS_SENTINEL_ENV}): {err}",
                        Path::new(&binary).display()
                    )
                });
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("redis-sentinel exited with {status}: {}", read_log(&dir));
                    break;
                }
                if let Ok(info) = command(port, &["INFO", "server"]).await
                    && info
                        .lines()
                        .any(|line| line.trim() == format!("process_id:{}", child.id()))
                {
                    return Self {
                        port,
                        dir,
                        child: Some(child),
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("redis-sentinel did not answer: {}", read_log(&dir));
                    break;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("start redis-sentinel ({PORT_ATTEMPTS} attempts): {last_error}");
    }

    /// The port the sentinel listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `redis-server` processes of the test's own, one
/// master per node and no replicas, created with `redis-cli --cluster
/// create`; killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, in creation order.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3), joins them into a cluster that
    /// spreads the slots over all of them, and waits until every node says
    /// `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// If a node does not start or the cluster does not form in time.
    pub async fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0).await
    }

    /// Like [`RedisCluster::start`], with `replicas` replicas per master
    /// (`--cluster-replicas`), and waits until every replica is in sync.
    ///
    /// # Panics
    ///
    /// If a node does not start or the cluster does not form in time.
    pub async fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            nodes.push(
                // The bus port would be the port + 10000, past 65535 for
                // a high free port; it gets a free port of its own.
                RedisServer::start_with(RedisOptions::default(), |_| {
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--cluster-port",
                        &free_port().to_string(),
                    ]
                    .map(String::from)
                    .to_vec()
                })
                .await,
            );
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        // `--cluster create` waits for the nodes to meet with no limit of
        // its own; `timeout` bounds it, so a cluster that cannot form fails
        // the test instead of hanging the suite.
        let output = Command::new("timeout")
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        let deadline = Instant::now() + START_TIMEOUT;
        for node in &cluster.nodes {
            loop {
                let ok = node
                    .command(&["CLUSTER", "INFO"])
                    .await
                    .is_ok_and(|info| info.contains("cluster_state:ok"));
                let synced = node
                    .command(&["INFO", "replication"])
                    .await
                    .is_ok_and(|info| {
                        info.contains("role:master") || info.contains("master_link_status:up")
                    });
                if ok && synced {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok within {START_TIMEOUT:?}"
                );
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

/// `redis-server` arguments for TLS on `tls_port` with `certs`'s server
/// certificate, asking clients for a certificate signed by its CA. The
/// plain port stays open (the harness checks readiness on it).
pub fn tls_args(certs: &crate::tls::TestCerts, tls_port: u16) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path(&certs.server_cert),
        "--tls-key-file".into(),
        path(&certs.server_key),
        "--tls-ca-cert-file".into(),
        path(&certs.ca),
        "--tls-auth-clients".into(),
        "yes".into(),
    ]
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("find a free loopback port")
        .port()
}

/// Spawns `redis-server` and waits until it answers as itself.
async fn launch(
    options: RedisOptions,
    port: u16,
    dir: &Path,
    extra: &[String],
) -> Result<Child, String> {
    let binary = env::var_os(REDIS_SERVER_ENV).unwrap_or_else(|| "redis-server".into());
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
        .map_err(|err| format!("open {}: {err}", dir.join(LOG_FILE).display()))?;
    let log_err = log
        .try_clone()
        .map_err(|err| format!("duplicate log handle: {err}"))?;
    let mut cmd = Command::new(&binary);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--daemonize", "no"])
        .args([
            "--appendonly",
            if options.appendonly { "yes" } else { "no" },
        ])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if options.appendonly {
        cmd.args(["--appendfsync", "always"]);
    }
    cmd.args(extra);
    let mut child = cmd.spawn().map_err(|err| {
        format!(
            "spawn {} (set {REDIS_SERVER_ENV}): {err}",
            Path::new(&binary).display()
        )
    })?;

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited with {status}; log:\n{}",
                read_log(dir)
            ));
        }
        // Checking the pid makes sure the answer comes from our process and
        // not from whoever else may have grabbed the port. INFO answers while
        // the append-only file is still being loaded; PING answers `-LOADING`
        // until the data is back, so it says when clients can be served.
        if let Ok(info) = command(port, &["INFO", "server"]).await
            && info
                .lines()
                .any(|line| line.trim() == format!("process_id:{}", child.id()))
            && command(port, &["PING"])
                .await
                .is_ok_and(|reply| reply == "PONG")
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {port} did not answer within {START_TIMEOUT:?}; log:\n{}",
                read_log(dir)
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub(crate) fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_else(|err| format!("(no log: {err})"))
}

/// Sends one command and returns a simple, integer or bulk reply as text; an
/// error reply (such as `-LOADING` while the AOF is replayed) is an `Err`.
pub(crate) async fn command(port: u16, args: &[&str]) -> io::Result<String> {
    tokio::time::timeout(COMMAND_TIMEOUT, async {
        let mut conn = BufReader::new(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?);
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        conn.get_mut().write_all(request.as_bytes()).await?;
        read_reply(&mut conn).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "Redis did not reply in time"))?
}

async fn read_reply(conn: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let line = line.trim_end_matches(['\r', '\n']);
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"));
    match line.split_at_checked(1) {
        Some(("+" | ":", value)) => Ok(value.to_owned()),
        Some(("-", error)) => Err(io::Error::other(format!("Redis error: {error}"))),
        Some(("$", len)) => {
            let len: usize = len.parse().map_err(|_| invalid())?;
            let mut bulk = vec![0; len + 2];
            conn.read_exact(&mut bulk).await?;
            bulk.truncate(len);
            String::from_utf8(bulk).map_err(|_| invalid())
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique() {
        let (a, b) = (unique_prefix(), unique_prefix());
        assert!(a.starts_with("t-"));
        assert_ne!(a, b);
    }
}
