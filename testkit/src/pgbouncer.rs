//! A private PgBouncer in transaction mode in front of the test server, for
//! tests that run the system the way a fleet behind a pooler does.
//!
//! [`PgBouncer::start`] writes a configuration (`pool_mode = transaction`,
//! `auth_type = trust`, every database forwarded to the server of
//! [`ADMIN_URL_ENV`](crate::postgres::ADMIN_URL_ENV)) into a fresh
//! directory, starts `pgbouncer` on a free loopback port and waits until it
//! listens. [`PgBouncer::url`] turns a test database's URL into the same
//! database through the pooler. [`THROUGH_PGBOUNCER_ENV`] is the switch
//! with which the e2e and chaos tests run their processes through one.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use url::Url;
use uuid::Uuid;

use crate::postgres::{ADMIN_URL_ENV, DEFAULT_ADMIN_URL};
use crate::redis::free_port;

/// Environment variable overriding the `pgbouncer` binary (by default found
/// on `PATH`, else Debian's `/usr/sbin/pgbouncer`).
pub const PGBOUNCER_ENV: &str = "PGBOUNCER";

/// When set to `1`, the e2e helpers and the chaos test connect their
/// processes through a [`PgBouncer`] in transaction mode, with
/// `DATABASE_POOLER=transaction`.
pub const THROUGH_PGBOUNCER_ENV: &str = "TEST_THROUGH_PGBOUNCER";

/// Whether [`THROUGH_PGBOUNCER_ENV`] asks for a pooler.
pub fn through_pgbouncer() -> bool {
    std::env::var(THROUGH_PGBOUNCER_ENV).is_ok_and(|v| v == "1")
}

const START_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;

/// A `pgbouncer` process of the test's own, killed when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PgBouncer {
    /// Starts a pooler in transaction mode in front of the server of
    /// [`ADMIN_URL_ENV`] (default [`DEFAULT_ADMIN_URL`]).
    ///
    /// # Panics
    ///
    /// If `pgbouncer` is missing or does not start.
    pub async fn start() -> Self {
        let admin_url =
            std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        Self::start_for(&admin_url, 20).await
    }

    /// Starts a pooler in transaction mode in front of the server of
    /// `admin_url`, with `pool_size` server connections per database and
    /// user.
    ///
    /// # Panics
    ///
    /// As [`PgBouncer::start`].
    pub async fn start_for(admin_url: &str, pool_size: u32) -> Self {
        let server = Url::parse(admin_url)
            .unwrap_or_else(|err| panic!("{ADMIN_URL_ENV} is not a URL: {err}"));
        let host = server.host_str().unwrap_or("127.0.0.1").to_owned();
        let server_port = server.port().unwrap_or(5432);
        let user = match server.username() {
            "" => "postgres".to_owned(),
            user => user.to_owned(),
        };
        let password = server.password().unwrap_or("").to_owned();
        let dir = std::env::temp_dir().join(format!("sendonce-pgb-{}", Uuid::now_v7().simple()));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("create PgBouncer directory {}: {err}", dir.display()));
        fs::write(
            dir.join("users.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )
        .expect("write the PgBouncer auth file");
        let root = fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0);
        if root {
            // PgBouncer refuses to run as root; it drops to `postgres`,
            // which must be able to write its log here.
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
        }
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let config = format!(
                "[databases]\n\
                 * = host={host} port={server_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = 2000\n\
                 max_db_connections = 0\n\
                 logfile = {log}\n\
                 log_connections = 0\n\
                 log_disconnections = 0\n\
                 server_login_retry = 1\n",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            );
            let file = dir.join("pgbouncer.ini");
            fs::write(&file, config).expect("write the PgBouncer configuration");
            let mut command = Command::new(binary());
            if root {
                command.args(["-u", "postgres"]);
            }
            let child = command
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| {
                    panic!("start pgbouncer (install it, or set {PGBOUNCER_ENV}): {err}")
                });
            let mut child = child;
            if wait_listening(port, &mut child).await {
                return Self {
                    port,
                    dir,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_error = fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
        }
        panic!("start pgbouncer ({PORT_ATTEMPTS} attempts); log:\n{last_error}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `url` (a database on the pooled server) with its host and port
    /// replaced by the pooler's.
    ///
    /// # Panics
    ///
    /// If `url` is not a URL.
    pub fn url(&self, url: &str) -> String {
        let mut url = Url::parse(url).unwrap_or_else(|err| panic!("not a URL: {url}: {err}"));
        url.set_host(Some("127.0.0.1")).expect("a URL with a host");
        url.set_port(Some(self.port)).expect("a URL with a port");
        url.into()
    }

    /// The pooler's log so far, for failure reports.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `port` accepts connections; `false` when `child` exited or
/// the time is up.
async fn wait_listening(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os(PGBOUNCER_ENV) {
        return path.into();
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("pgbouncer")
    }
}
