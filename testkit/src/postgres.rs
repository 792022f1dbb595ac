//! Throwaway Postgres databases, one per test, and private Postgres
//! clusters for tests that stall Postgres itself.
//!
//! # Layout
//!
//! - [`TestDatabase`] creates `sendonce_test_<uuid>` through an admin
//!   connection and drops it again when the value is dropped.
//! - [`ADMIN_URL_ENV`] and [`DEFAULT_ADMIN_URL`] say which server is used.
//! - [`PostgresServer`] runs a cluster of its own (`initdb`, `pg_ctl`) on a
//!   free loopback port, which a test may pause with SIGSTOP.
//!
//! A database of its own per test lets tests run in parallel, and run twice
//! in a row, without seeing each other's rows or migrations.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::{fs, mem};

use tokio::process::Command;
use tokio_postgres::{Client, NoTls};
use url::Url;
use uuid::Uuid;

use crate::process::signal;
use crate::redis::free_port;

/// Environment variable holding the URL of a database on the server the test
/// databases are created on, as a role allowed to create databases.
pub const ADMIN_URL_ENV: &str = "TEST_DATABASE_ADMIN_URL";

/// The admin URL used when [`ADMIN_URL_ENV`] is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh, empty database that is dropped with this value.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a database with a unique name on the server named by
    /// [`ADMIN_URL_ENV`] (default [`DEFAULT_ADMIN_URL`]).
    ///
    /// # Panics
    ///
    /// If the admin URL is not a URL, or the server refuses the connection or
    /// the `CREATE DATABASE`.
    pub async fn create() -> Self {
        let admin_url =
            std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        Self::create_on(&admin_url).await
    }

    /// Creates a database with a unique name on the server of `admin_url`,
    /// such as a [`PostgresServer`]'s.
    ///
    /// # Panics
    ///
    /// As [`TestDatabase::create`].
    pub async fn create_on(admin_url: &str) -> Self {
        let admin_url = admin_url.to_owned();
        let name = format!("sendonce_test_{}", Uuid::now_v7().simple());
        let url = database_url(&admin_url, &name);
        let admin = connect(&admin_url).await.unwrap_or_else(|err| {
            panic!("connect to the Postgres admin URL {admin_url} (set {ADMIN_URL_ENV}): {err}")
        });
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|err| panic!("create test database {name}: {err}"));
        Self {
            name,
            url,
            admin_url,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `postgres://` URL of the database: the admin URL with its database
    /// replaced.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a client on the database; its connection runs on a spawned task.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn connect(&self) -> Client {
        connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("connect to test database {}: {err}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Blocking on the test's own runtime from inside it would panic, and
        // it may already be gone; a thread with a runtime of its own works in
        // every case.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = connect(&admin_url).await?;
                // FORCE ends the sessions of pools the test leaked.
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
            })?;
            Ok(())
        })
        .join();
        // Panicking in Drop during an unwinding test would abort the process
        // and hide the test's own failure; a leftover database is harmless.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!(
                "warning: could not drop test database {}: {err:#}",
                self.name
            ),
            Err(_) => eprintln!(
                "warning: the thread dropping test database {} panicked",
                self.name
            ),
        }
    }
}

/// Environment variable naming the directory that holds `initdb` and
/// `pg_ctl`; by default the newest `/usr/lib/postgresql/*/bin` (Debian's
/// layout), else `PATH`.
pub const PG_BIN_ENV: &str = "PG_BIN";

/// Fresh ports tried when the one picked is taken before Postgres binds it.
const PORT_ATTEMPTS: usize = 5;

/// A Postgres cluster of the test's own, initialised in a fresh directory
/// and listening on a free port of 127.0.0.1; stopped and removed when
/// dropped.
///
/// It exists for tests that stall Postgres: a SIGSTOP of the shared
/// server's postmaster would stall everyone else's tests, and so can one of
/// its backends stopped while it holds a lock shared by the whole server.
#[derive(Debug)]
pub struct PostgresServer {
    /// Holds `initdb` and `pg_ctl` (empty: found on `PATH`).
    bin: PathBuf,
    /// Holds the data directory, the socket and the server log.
    dir: PathBuf,
    port: u16,
    /// The processes [`PostgresServer::pause`] stopped.
    paused: Vec<u32>,
}

impl PostgresServer {
    /// Runs `initdb` and starts the cluster, waiting until it accepts
    /// connections. As root, the tools run as the `postgres` user (`initdb`
    /// refuses root). Durability is off (`fsync=off`): the cluster outlives
    /// no machine crash, and a killed server process loses nothing the page
    /// cache holds.
    ///
    /// # Panics
    ///
    /// If a tool is missing or fails, or no port can be bound.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// As [`PostgresServer::start`], with TLS on (`ssl = on`) when `tls`
    /// gives the server's certificate chain and key, in PEM.
    ///
    /// # Panics
    ///
    /// As [`PostgresServer::start`].
    pub async fn start_with(tls: Option<(&str, &str)>) -> Self {
        let dir = std::env::temp_dir().join(format!("sendonce-pg-{}", Uuid::now_v7().simple()));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("create Postgres directory {}: {err}", dir.display()));
        let mut server = Self {
            bin: pg_bin(),
            dir,
            port: 0,
            paused: Vec::new(),
        };
        if running_as_root() {
            let mut chown = std::process::Command::new("chown");
            chown.arg("postgres").arg(&server.dir);
            run(chown).await;
        }
        let data = server.data_dir();
        let mut initdb = server.tool("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        run(initdb).await;
        let mut ssl = String::new();
        if let Some((cert, key)) = tls {
            let cert_file = server.dir.join("server.crt");
            let key_file = server.dir.join("server.key");
            fs::write(&cert_file, cert).expect("write the server certificate");
            fs::write(&key_file, key).expect("write the server key");
            // Postgres refuses a key others can read.
            fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600))
                .expect("chmod the server key");
            if running_as_root() {
                let mut chown = std::process::Command::new("chown");
                chown.arg("postgres").arg(&cert_file).arg(&key_file);
                run(chown).await;
            }
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_file.display(),
                key_file.display()
            );
        }
        let mut last_error = String::new();
        // A port found free can be taken by someone else before Postgres
        // binds it; another port then does.
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200{ssl}",
                server.port,
                server.dir.display()
            );
            let started = Command::from(server.tool("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(server.dir.join("postgres.log"))
                .args(["-w", "-o", &options, "start"])
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap_or_else(|err| panic!("run pg_ctl: {err}"));
            if started.status.success() {
                return server;
            }
            last_error = format!(
                "{}{}",
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr)
            );
        }
        panic!(
            "start a private Postgres ({PORT_ATTEMPTS} attempts): {last_error}\nlog:\n{}",
            fs::read_to_string(server.dir.join("postgres.log")).unwrap_or_default()
        );
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL of the cluster's `postgres` database, as the superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops every process of the cluster with SIGSTOP, the postmaster
    /// first so that it forks no backend the stop would miss: queries in
    /// flight and new connections hang until [`PostgresServer::resume`].
    ///
    /// # Panics
    ///
    /// If the postmaster's pid cannot be read.
    pub fn pause(&mut self) {
        let postmaster = self.postmaster_pid();
        signal("STOP", &[postmaster]);
        let children = children_of(postmaster);
        // A backend that exited meanwhile needs no stopping.
        signal("STOP", &children);
        self.paused.push(postmaster);
        self.paused.extend(children);
    }

    /// Resumes the processes [`PostgresServer::pause`] stopped.
    pub fn resume(&mut self) {
        signal("CONT", &mem::take(&mut self.paused));
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn postmaster_pid(&self) -> u32 {
        let file = self.data_dir().join("postmaster.pid");
        fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no postmaster pid in {}", file.display()))
    }

    /// A command running `tool` from the Postgres binaries, as `postgres`
    /// when this process is root.
    fn tool(&self, tool: &str) -> std::process::Command {
        let path = self.bin.join(tool);
        if running_as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            std::process::Command::new(path)
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.resume();
        // Best effort, and blocking: Drop cannot await, and a leftover
        // server in the temp dir is harmless beyond its port.
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The directory of the Postgres tools: [`PG_BIN_ENV`], else the newest
/// `/usr/lib/postgresql/<major>/bin` with `initdb`, else none (`PATH`).
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return dir.into();
    }
    let versions = fs::read_dir("/usr/lib/postgresql").into_iter().flatten();
    versions
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .unwrap_or_default()
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Runs a set-up command to success.
///
/// # Panics
///
/// If it cannot be run or fails; the message has its output.
async fn run(command: std::process::Command) {
    let shown = format!("{command:?}");
    let output = Command::from(command)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|err| panic!("run {shown}: {err}"));
    assert!(
        output.status.success(),
        "{shown} exited with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            (parent_of(&entry.path()) == Some(parent)).then_some(pid)
        })
        .collect()
}

/// The parent pid in `<proc dir>/stat`. The command name before it may
/// hold spaces and parentheses, so the fields are counted from the last `)`.
fn parent_of(proc_dir: &Path) -> Option<u32> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Connects and drives the connection on a spawned task, which ends when the
/// client is dropped.
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "test database connection ended with an error");
        }
    });
    Ok(client)
}

fn database_url(admin_url: &str, name: &str) -> String {
    let mut url = Url::parse(admin_url).unwrap_or_else(|err| {
        panic!("{ADMIN_URL_ENV} must be a postgres:// URL, got {admin_url:?}: {err}")
    });
    url.set_path(&format!("/{name}"));
    url.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_of_this_process_is_read_from_proc() {
        let parent = parent_of(Path::new("/proc/self"));
        assert_eq!(parent, Some(std::os::unix::process::parent_id()));
        assert!(children_of(std::os::unix::process::parent_id()).contains(&std::process::id()));
    }

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url("postgres://u:p@db:5433/postgres?sslmode=disable", "t1"),
            "postgres://u:p@db:5433/t1?sslmode=disable"
        );
    }
}
