use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use sendonce_api::auth::JwtKeys;
use sendonce_api::config::ApiConfig;
use sendonce_shared::domain::{Body, Email, EmailAddress, IdempotencyKey, Subject, Task};
use sendonce_shared::queue::{self, Queue};
use sendonce_testkit::pgbouncer::through_pgbouncer;
use sendonce_testkit::process::{CapturedChild, eventually};
use sendonce_testkit::{PgBouncer, SmtpServer, TestDatabase, unique_prefix};
use sendonce_worker::config::WorkerConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long a test waits for the system to reach a state.
pub const DEADLINE: Duration = Duration::from_secs(30);
pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// The Redis every test shares (keys isolated by prefix).
pub fn shared_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Extra worker flags, e.g. `["--max-attempts", "3"]`.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub redis_url: Option<String>,
    pub worker_args: Vec<String>,
    /// Flags for both the API and the workers (`--redis-ca-file ...`).
    pub redis_args: Vec<String>,
    /// `QUEUE_SHARDS` of the API and the workers (default 1).
    pub queue_shards: Option<u16>,
    /// Extra API flags, e.g. `["--app-env", "development"]`.
    pub api_args: Vec<String>,
}

/// An API, an SMTP server and a database, with workers started on demand.
pub struct TestSystem {
    pub api: String,
    pub client: reqwest::Client,
    pub smtp: SmtpServer,
    pub db: TestDatabase,
    /// With `TEST_THROUGH_PGBOUNCER=1`: the PgBouncer (transaction mode)
    /// the API and the workers reach the database through.
    pub bouncer: Option<PgBouncer>,
    pub prefix: String,
    pub redis_url: String,
    pub token: String,
    options: Options,
    api_stop: Option<oneshot::Sender<()>>,
    api_task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A worker running in this process.
pub struct TestWorker {
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestWorker {
    /// Asks the worker to shut down and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn spawn_system(options: Options) -> TestSystem {
    let smtp = SmtpServer::start().await;
    let db = TestDatabase::create().await;
    let bouncer = if through_pgbouncer() {
        Some(PgBouncer::start().await)
    } else {
        None
    };
    let db_url = process_db_url(&db, bouncer.as_ref());
    let prefix = unique_prefix();
    let redis_url = options.redis_url.clone().unwrap_or_else(shared_redis_url);
    let shards = options.queue_shards.unwrap_or(1).to_string();
    let config = ApiConfig::parse_from(
        [
            "sendonce-api",
            "--database-pooler",
            pooler(bouncer.as_ref()),
            "--api-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--database-url",
            &db_url,
            "--redis-url",
            &redis_url,
            "--redis-key-prefix",
            &prefix,
            "--queue-shards",
            &shards,
            "--jwt-secret",
            SECRET,
        ]
        .into_iter()
        .chain(options.redis_args.iter().map(String::as_str))
        .chain(options.api_args.iter().map(String::as_str)),
    );
    let token = JwtKeys::from_config(&config)
        .expect("JWT settings")
        .mint(
            "tests",
            // `tenants:all`: the tests read every tenant's jobs.
            "jobs:write jobs:read failed:read failed:write suppressions:read \
             suppressions:write tenants:all",
            Duration::from_secs(3600),
        )
        .expect("mint a token");
    let app = sendonce_api::Application::build(config, None)
        .await
        .expect("build the API");
    let api = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = oneshot::channel::<()>();
    let api_task = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestSystem {
        api,
        client: reqwest::Client::new(),
        smtp,
        db,
        bouncer,
        prefix,
        redis_url,
        token,
        options,
        api_stop: Some(tx),
        api_task: Some(api_task),
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.api_task.take() {
            task.abort();
        }
    }
}

/// The URL the API and workers use: the database's own, or the same
/// database through `bouncer`.
fn process_db_url(db: &TestDatabase, bouncer: Option<&PgBouncer>) -> String {
    match bouncer {
        Some(bouncer) => bouncer.url(db.url()),
        None => db.url().to_owned(),
    }
}

fn pooler(bouncer: Option<&PgBouncer>) -> &'static str {
    if bouncer.is_some() {
        "transaction"
    } else {
        "none"
    }
}

impl TestSystem {
    /// The worker's command line for this system.
    pub fn worker_args(&self) -> Vec<String> {
        let db_url = process_db_url(&self.db, self.bouncer.as_ref());
        let mut args: Vec<String> = [
            "sendonce-worker",
            "--database-pooler",
            pooler(self.bouncer.as_ref()),
            "--metrics-addr",
            "127.0.0.1:0",
            "--database-url",
            &db_url,
            "--redis-url",
            &self.redis_url,
            "--redis-key-prefix",
            &self.prefix,
            "--queue-shards",
            &self.options.queue_shards.unwrap_or(1).to_string(),
            "--smtp-url",
            &self.smtp.url(),
            "--mail-from",
            "Sendonce Tests <noreply@sendonce.test>",
            "--retry-base-ms",
            "50",
            "--retry-max-ms",
            "200",
            "--worker-lease-ms",
            "2000",
            "--smtp-timeout-ms",
            "5000",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend(self.options.redis_args.iter().cloned());
        args.extend(self.options.worker_args.iter().cloned());
        args
    }

    /// Starts a worker in this process.
    pub async fn spawn_worker(&self) -> TestWorker {
        self.spawn_worker_with(&[]).await
    }

    /// Posts `body` to `/addJob` as a token of `tenant`; the answer's JSON.
    pub async fn post_as_tenant(&self, tenant: &str, body: &Value) -> Value {
        self.post_path_as_tenant("/addJob", tenant, body).await
    }

    /// Posts `body` to `path` as a token of `tenant`; the 2xx answer's JSON.
    pub async fn post_path_as_tenant(&self, path: &str, tenant: &str, body: &Value) -> Value {
        let config = ApiConfig::parse_from(["sendonce-api", "--jwt-secret", SECRET]);
        let token = JwtKeys::from_config(&config)
            .expect("JWT settings")
            .mint_with(
                "tests",
                "jobs:write",
                Duration::from_secs(3600),
                serde_json::Map::from_iter([("tenant".to_owned(), json!(tenant))]),
            )
            .expect("mint a token");
        let response = self
            .client
            .post(format!("{}{path}", self.api))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("JSON")
    }

    /// A queue handle on this system's keys.
    pub fn queue(&self) -> Queue {
        let url = secrecy::SecretString::from(self.redis_url.clone());
        Queue::sharded(
            queue::connect(&url, &sendonce_shared::queue::RedisTls::default()).expect("redis pool"),
            &self.prefix,
            self.options.queue_shards.unwrap_or(1),
        )
    }

    /// Pushes a task straight onto the queue, bypassing the API.
    pub async fn push_task(&self, task: &Task) {
        self.queue()
            .push(&[task.to_json()])
            .await
            .expect("push a task");
    }

    pub async fn post_job(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/addJob", self.api))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("POST /addJob")
    }

    /// Posts `body` and returns the 2xx answer's JSON.
    pub async fn post_ok(&self, body: &Value) -> Value {
        let response = self.post_job(body).await;
        let status = response.status();
        let answer: Value = response.json().await.expect("a JSON answer");
        assert!(
            status.is_success(),
            "POST /addJob answered {status}: {answer}"
        );
        answer
    }

    pub async fn get_job(&self, job_id: &str) -> (reqwest::StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}/jobs/{job_id}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET /jobs");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `GET /jobs/{id}` until the job reaches a terminal status.
    pub async fn wait_for_terminal(&self, job_id: &str) -> Value {
        self.wait_until(job_id, |s| {
            matches!(
                s,
                "sent" | "duplicate" | "failed" | "uncertain" | "canceled" | "suppressed"
            )
        })
        .await
    }

    /// Polls `GET /jobs/{id}` until its status is `want`.
    pub async fn wait_for_status(&self, job_id: &str, want: &str) -> Value {
        self.wait_until(job_id, |s| s == want).await
    }

    async fn wait_until(&self, job_id: &str, done: impl Fn(&str) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (_, job) = self.get_job(job_id).await;
            if done(job["status"].as_str().unwrap_or_default()) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job_id} did not reach the expected state in {DEADLINE:?}; last seen: {job}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl TestSystem {
    /// Starts the worker binary as a child process, so a test can SIGKILL
    /// or SIGTERM it. `smtp_url` overrides this system's SMTP server.
    pub fn spawn_worker_process(&self, smtp_url: Option<&str>) -> std::process::Child {
        let mut args = self.worker_args();
        if let Some(url) = smtp_url {
            args.extend(["--smtp-url".to_owned(), url.to_owned()]);
        }
        std::process::Command::new(env!("CARGO_BIN_EXE_sendonce-worker"))
            .args(&args[1..])
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the worker binary")
    }

    /// `GET /failedJobs` with a query string.
    pub async fn failed_jobs(&self, query: &str) -> Value {
        let response = self
            .client
            .get(format!("{}/failedJobs?{query}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET /failedJobs");
        assert_eq!(response.status(), 200, "GET /failedJobs?{query}");
        response.json().await.expect("a JSON page")
    }

    /// Polls until the dead-letter table holds `n` entries; returns them.
    pub async fn wait_for_failed(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let page = self.failed_jobs("limit=500").await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.len() >= n {
                return items;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the DLQ holds {} entries, not {n}, after {DEADLINE:?}",
                items.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn post_api(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Runs the worker binary with `args` (a command line, its name first),
/// expects it to fail at start, and returns the one line it printed.
pub async fn worker_exit_reason(args: &[String]) -> String {
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sendonce-worker"))
            .args(&args[1..])
            .env("RUST_LOG", "off")
            .output(),
    )
    .await
    .expect("the worker exits")
    .expect("run the worker");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    stderr
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

/// A valid job body.
/// A task for `to` under `key`, with `subject`, for pushing straight onto
/// the queue.
pub fn keyed_task(to: &str, key: &str, subject: &str) -> Task {
    Task::new(
        Email::new(
            EmailAddress::parse(to).expect("valid"),
            Subject::parse(subject).expect("valid"),
            Body::new(Some("a test body".into()), None).expect("valid"),
        ),
        Some(IdempotencyKey::parse(key).expect("valid")),
    )
}

/// A header value with RFC 2047 `B` words decoded (the whitespace between
/// two adjacent encoded words is dropped, as RFC 2047 §6.2 says).
pub fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut gap = String::new();
    let mut after_word = false;
    for (i, piece) in value.split(' ').enumerate() {
        if i > 0 {
            gap.push(' ');
        }
        if piece.is_empty() {
            continue;
        }
        let word = piece
            .strip_prefix("=?utf-8?b?")
            .and_then(|p| p.strip_suffix("?="));
        match word {
            Some(b64) => {
                if !after_word {
                    out.push_str(&gap);
                }
                let bytes = STANDARD.decode(b64).expect("base64 in an encoded word");
                out.push_str(&String::from_utf8(bytes).expect("UTF-8 in an encoded word"));
                after_word = true;
            }
            None => {
                out.push_str(&gap);
                out.push_str(piece);
                after_word = false;
            }
        }
        gap.clear();
    }
    out
}

pub fn email(to: &str, key: Option<&str>) -> Value {
    let mut body = json!({
        "to": to,
        "subject": "Welcome aboard",
        "text": "Hello from sendonce.",
    });
    if let Some(key) = key {
        body["idempotency_key"] = json!(key);
    }
    body
}

impl TestSystem {
    /// Starts a worker in this process with extra flags (later flags win).
    pub async fn spawn_worker_with(&self, extra: &[&str]) -> TestWorker {
        let mut args = self.worker_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = WorkerConfig::parse_from(args);
        let app = sendonce_worker::Application::build(config, None)
            .await
            .expect("build the worker");
        let id = app.worker_id().to_owned();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        TestWorker {
            id,
            stop: Some(tx),
            task,
        }
    }

    /// Starts the worker binary with extra flags and its output captured,
    /// so a test can pause it (SIGSTOP), read its log, or kill it.
    pub fn spawn_captured_worker(&self, extra: &[&str]) -> CapturedChild {
        let mut args = self.worker_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sendonce-worker"));
        command
            .args(&args[1..])
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn");
        CapturedChild::spawn(command)
    }

    /// The state and attempts of `key`'s row, if a worker claimed it.
    pub async fn delivery(&self, key: &str) -> Option<(String, i32)> {
        let db = self.db.connect().await;
        db.query_opt(
            "SELECT state, attempts FROM deliveries WHERE idempotency_key = $1",
            &[&key],
        )
        .await
        .expect("read the delivery row")
        .map(|r| (r.get(0), r.get(1)))
    }

    /// Polls until `key`'s row satisfies `want`.
    pub async fn wait_for_delivery(&self, key: &str, want: impl Fn(&str, i32) -> bool) {
        eventually(&format!("the row of {key}"), DEADLINE, || async {
            self.delivery(key)
                .await
                .filter(|(state, attempts)| want(state, *attempts))
        })
        .await;
    }

    /// Polls until workers hold `n` tasks (in their processing lists) and
    /// none is left ready: the tasks were popped. A popped task's row stays
    /// `queued` until the SMTP server answers its envelope (the claim is
    /// made with the write that starts the data), so this, not the row,
    /// says that a worker has it.
    pub async fn wait_for_held(&self, n: usize) {
        let queue = self.queue();
        eventually(&format!("{n} tasks held by workers"), DEADLINE, || async {
            let depths = queue.depths().await.ok()?;
            (depths.ready == 0 && depths.processing == n as u64).then_some(())
        })
        .await;
    }

    /// Polls until nothing is queued, scheduled or held by a worker.
    pub async fn wait_for_drained_queue(&self) {
        let queue = self.queue();
        eventually("an empty queue", DEADLINE, || async {
            let depths = queue.depths().await.ok()?;
            (depths.ready + depths.scheduled + depths.processing == 0).then_some(())
        })
        .await;
    }
}

/// A worker binary with JSON logs, and the address of its `/metrics`.
pub struct WorkerProcess {
    pub child: CapturedChild,
    address: String,
    client: reqwest::Client,
}

/// Starts the worker binary with extra flags (later flags win), JSON logs
/// at debug and its output captured.
pub async fn start_worker_process(system: &TestSystem, extra: &[&str]) -> WorkerProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sendonce-worker"));
    command
        .args(&system.worker_args()[1..])
        .args(extra)
        .env("LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            "info,sendonce_worker=debug,sendonce_shared=debug",
        );
    let child = CapturedChild::spawn(command);
    let addr = child.wait_for_json_field("metrics_addr", DEADLINE).await;
    let addr = addr.as_str().expect("METRICS_ADDR as text");
    WorkerProcess {
        child,
        address: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

impl WorkerProcess {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("GET the worker's health server")
    }

    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.expect("the metrics text")
    }

    /// SIGTERMs the worker, checks it exits cleanly, and returns every line
    /// it wrote to stdout.
    pub async fn stop(self) -> Vec<String> {
        let (status, stdout) = self.child.stop().await;
        assert!(status.success(), "the worker exited with {status}");
        stdout
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// An "SMTP server" that accepts connections and never answers, so a
/// worker pointed at it holds its claimed tasks without sending.
pub async fn black_hole() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (url, task)
}

/// A TCP proxy that holds every connection it accepts until [`Gate::open`],
/// then relays it to `target`: a server that is slow to greet.
pub struct Gate {
    pub url: String,
    open: watch::Sender<bool>,
    _task: JoinHandle<()>,
}

impl Gate {
    pub async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("smtp://{}", listener.local_addr().expect("addr"));
        let (open, opened) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut opened = opened.clone();
                tokio::spawn(async move {
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            url,
            open,
            _task: task,
        }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// A TCP proxy in front of Postgres that, the first time the server's
/// replies contain `marker` (a `RAISE NOTICE` from a test trigger), closes
/// the client's side at once and drains the server's: the statement
/// commits, but its reply is lost on the way back.
pub async fn postgres_cutting_reply_on(target: SocketAddr, marker: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let armed = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let armed = Arc::clone(&armed);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    server_write
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    if chunk.windows(marker.len()).any(|w| w == marker)
                        && armed.swap(false, Ordering::SeqCst)
                    {
                        drop(client_write);
                        upstream.abort();
                        // Keep the server's side open long enough for the
                        // commit, reading and dropping what it says.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Ok(n) = server_read.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        })
                        .await;
                        return;
                    }
                    if client_write.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}
