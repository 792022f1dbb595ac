//! The chaos test: the real API and several real workers, as processes,
//! against a private Redis with AOF on, a private Postgres cluster and the
//! fault-injecting SMTP server (as a process too), while jobs are posted,
//! workers are SIGKILLed and paused, the SMTP server and Postgres are
//! paused, and Redis is killed and restarted. Afterwards the SMTP server's
//! own record, the database and the workers' logs say whether any key took
//! effect twice, any accepted job was stranded, or any `250` a worker read
//! ended other than `sent`.
//!
//! # Layout
//!
//! - [`Scenario`] (with its [`Pauses`]): the knobs of one run; [`run`]
//!   carries it out.
//! - [`Summary`]: what happened, as one line ([`Display`](std::fmt::Display))
//!   and as the list of violated properties ([`Summary::check`]).
//! - [`plan`]: the keys, their SMTP faults and which posts reuse a key.
//! - [`faults`]: the kills, pauses and the Redis restart, drawn up as a
//!   schedule, then injected.
//! - [`cluster`]: the API, worker and SMTP server processes.
//! - `logs` (private): the sends the workers logged as recorded.
//! - `verdict` (private): reads back the database, the SMTP record and the
//!   logs.

pub mod cluster;
pub mod faults;
mod logs;
pub mod plan;
mod verdict;
mod webhooks;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sendonce_testkit::pgbouncer::through_pgbouncer;
use sendonce_testkit::{PgBouncer, PostgresServer, RedisOptions, RedisServer, TestDatabase};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cluster::{Environment, SmtpSink};
use crate::faults::{Injected, Schedule, Targets};
use crate::plan::Plan;

/// The Redis key prefix of a run (its Redis is private).
const PREFIX: &str = "chaos";
/// `WORKER_LEASE_MS` of the workers: how long a stopped worker keeps its
/// tasks; worker pauses are measured in it.
pub const WORKER_LEASE: Duration = Duration::from_millis(1500);
/// Posts in flight at once.
const POST_CONCURRENCY: usize = 16;
/// How long one post keeps being retried (it is retried through the Redis
/// restart) before it counts as refused.
const POST_DEADLINE: Duration = Duration::from_secs(60);
/// How often the database is polled while the queue drains.
const DRAIN_POLL: Duration = Duration::from_millis(250);
/// How long the webhook deliveries get to finish once every job is
/// terminal.
const WEBHOOK_DRAIN: Duration = Duration::from_secs(90);

/// The knobs of one run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Requests to `POST /addJob`.
    pub posts: usize,
    /// Share of the posts, in percent, that reuse a key posted before.
    pub reuse_percent: usize,
    /// Worker processes running at once.
    pub workers: usize,
    /// How long faults are injected; posts are spread over the first three
    /// quarters of it, and Redis is killed and restarted at its middle.
    pub chaos: Duration,
    /// Mean time between two worker kills (each is 0.5 to 1.5 times it).
    pub kill_every: Duration,
    /// The stalls: workers, the SMTP server and Postgres stopped for a
    /// while, then resumed.
    pub pauses: Pauses,
    /// How long the queue may take to drain after the chaos.
    pub drain_timeout: Duration,
    /// `QUEUE_SHARDS` of every process.
    pub queue_shards: u16,
    /// Holds `sendonce-api`, `sendonce-worker` and `sendonce-smtp-sink`.
    pub bin_dir: PathBuf,
}

/// Processes stopped with SIGSTOP and resumed with SIGCONT: a pause is not
/// a crash. A worker stopped past its lease comes back to find its task
/// recovered by another; it must neither send it again, nor overwrite the
/// other's outcome, nor strand it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pauses {
    /// Mean time between two worker pauses (each 0.5 to 1.5 times it);
    /// zero: no worker pauses.
    pub worker_every: Duration,
    /// How long a worker pause lasts, in leases ([`WORKER_LEASE`]), drawn
    /// from this range; empty: no worker pauses.
    pub worker_leases: Range<f64>,
    /// How long the SMTP server is stopped, once per run; zero: never.
    /// Under the workers' `SMTP_TIMEOUT_MS` (5 s) it is a stall they wait
    /// out; over it, a timeout (and, after the data, an `uncertain` key).
    pub smtp: Duration,
    /// How long every process of the run's Postgres cluster is stopped,
    /// once per run; zero: never.
    pub postgres: Duration,
}

impl Default for Pauses {
    /// A worker pause every 1.5 s or so, of 0.5 to 3 leases (so four in
    /// five outlast the lease, and a few end just short of it); the SMTP
    /// server stopped for 2.5 s (under the run's 5 s `SMTP_TIMEOUT_MS`)
    /// and Postgres for 3 s. Pauses every 3 s caught a paused worker in a
    /// send's window in about one small run in three; every 1.5 s, more.
    fn default() -> Self {
        Self {
            worker_every: Duration::from_millis(1500),
            worker_leases: 0.5..3.0,
            smtp: Duration::from_millis(2500),
            postgres: Duration::from_secs(3),
        }
    }
}

/// What a run did and what the SMTP server, the database and the workers'
/// logs say about it.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Requests to `POST /addJob`.
    pub posts: usize,
    /// Posts that reused a key posted before.
    pub reused_posts: usize,
    /// Distinct idempotency keys posted.
    pub keys: usize,
    /// Posts answered `202` (a new job).
    pub new_jobs: usize,
    /// Posts answered `200` (a replay of an accepted key).
    pub replays: usize,
    /// Posts that never got a 2xx answer.
    pub refused: usize,
    /// The kills, pauses and restarts injected.
    pub faults: Injected,
    /// Accepted jobs per terminal status.
    pub sent: usize,
    /// See [`Summary::sent`].
    pub duplicate: usize,
    /// See [`Summary::sent`].
    pub failed: usize,
    /// See [`Summary::sent`].
    pub uncertain: usize,
    /// Keys whose data transfer the SMTP server cut on purpose.
    pub cut_keys: usize,
    /// Keys whose message data reached the SMTP server more than once
    /// (accepted or cut).
    pub duplicate_effects: usize,
    /// Accepted jobs that never reached a terminal status (none may be
    /// lost, nor left waiting forever).
    pub stranded: usize,
    /// Keys whose `250` a worker read and recorded, by its log.
    pub logged_sent: usize,
    /// Keys whose `250` a worker read and recorded (its log says `sent`)
    /// but whose row ended other than `sent`: typically `uncertain`, after
    /// a paused worker's outcome lost to the one that recovered its task.
    pub false_uncertain: usize,
    /// Accepted jobs that ended `canceled`.
    pub canceled: usize,
    /// Cancels answered `200`.
    pub cancels_taken: usize,
    /// Cancels answered `409` (the job had gone too far).
    pub cancels_late: usize,
    /// Keys posted with a `send_at` a few seconds ahead.
    pub scheduled: usize,
    /// Keys posted with an attachment.
    pub with_attachment: usize,
    /// Terminal jobs whose outcome event was checked: one each, delivered.
    pub webhook_events: usize,
    /// Webhook requests the receiver got.
    pub webhook_requests: usize,
    /// Of them, answered `503` on purpose.
    pub webhook_failed_requests: usize,
    /// From the first post to the end of the drain.
    pub duration: Duration,
    /// Each violated property, with the keys or jobs concerned.
    pub findings: Vec<String>,
    /// The processes' logs, kept when something was found.
    pub log_dir: Option<PathBuf>,
}

impl Summary {
    /// Every property the run violated; empty when all held.
    pub fn check(&self) -> Vec<String> {
        let mut violations = self.findings.clone();
        if self.duplicate_effects > 0 {
            violations.push(format!(
                "{} key(s) took effect more than once",
                self.duplicate_effects
            ));
        }
        if self.stranded > 0 {
            violations.push(format!(
                "{} accepted job(s) stranded: never reached a terminal status",
                self.stranded
            ));
        }
        if self.false_uncertain > 0 {
            violations.push(format!(
                "{} key(s) whose 250 a worker read and recorded ended other than sent",
                self.false_uncertain
            ));
        }
        // Without a single "sent" line the false-uncertain check saw
        // nothing: the log format or filter changed, not the worker.
        if self.sent > 0 && self.logged_sent == 0 {
            violations.push(format!(
                "{} key(s) sent but no worker logged a send: the false-uncertain check \
                 cannot see (RUST_LOG, LOG_FORMAT or the \"sent\" line changed?)",
                self.sent
            ));
        }
        if self.refused > 0 {
            violations.push(format!("{} post(s) never got a 2xx answer", self.refused));
        }
        let jobs = self.sent
            + self.duplicate
            + self.failed
            + self.uncertain
            + self.canceled
            + self.stranded;
        if self.new_jobs > jobs || self.new_jobs + self.replays + self.refused != self.posts {
            violations.push(format!(
                "counts do not add up: {} posts = {} new + {} replays + {} refused; \
                 {jobs} jobs seen",
                self.posts, self.new_jobs, self.replays, self.refused
            ));
        }
        if self.sent + self.failed + self.uncertain + self.canceled != self.keys {
            violations.push(format!(
                "counts do not add up: {} keys but {} sent + {} failed + {} uncertain + {} canceled",
                self.keys, self.sent, self.failed, self.uncertain, self.canceled
            ));
        }
        if let Some(dir) = &self.log_dir
            && !violations.is_empty()
        {
            violations.push(format!("process logs: {}", dir.display()));
        }
        violations
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults = &self.faults;
        write!(
            f,
            "chaos: posts={} (reused keys {}) keys={} kills={} worker_exits={} worker_pauses={} \
             smtp_pauses={} postgres_pauses={} redis_restarts={} redis_losses={} \
             sent={} duplicate={} failed={} uncertain={} (cut {}) canceled={} \
             (cancels {} taken, {} late) scheduled={} attachments={} \
             webhook_events={} (requests {}, failed {}) \
             duplicate_effects={} stranded={} false_uncertain={} (logged sent {}) \
             duration={:.1}s",
            self.posts,
            self.reused_posts,
            self.keys,
            faults.kills,
            faults.worker_exits,
            faults.worker_pauses,
            faults.smtp_pauses,
            faults.postgres_pauses,
            faults.redis_restarts,
            faults.redis_losses,
            self.sent,
            self.duplicate,
            self.failed,
            self.uncertain,
            self.cut_keys,
            self.canceled,
            self.cancels_taken,
            self.cancels_late,
            self.scheduled,
            self.with_attachment,
            self.webhook_events,
            self.webhook_requests,
            self.webhook_failed_requests,
            self.duplicate_effects,
            self.stranded,
            self.false_uncertain,
            self.logged_sent,
            self.duration.as_secs_f64()
        )
    }
}

/// A cancel the run asked for: the key, the job, and the answer's status
/// (`0`: no answer before the deadline).
#[derive(Debug, Clone)]
pub struct CancelOutcome {
    /// The key, as an index into the plan.
    pub key: usize,
    /// The job canceled.
    pub job_id: String,
    /// `200` canceled, `409` too late.
    pub status: u16,
}

/// How one post ended.
#[derive(Debug, Clone)]
enum PostOutcome {
    /// `202` or `200`, with the job that stands for the key.
    Accepted { status: u16, job_id: String },
    /// No 2xx answer before [`POST_DEADLINE`].
    Refused(String),
}

/// Runs the scenario and reads back what happened.
///
/// Postgres is a private cluster started for the run rather than a
/// database on the shared server, because the run stops every Postgres
/// process for a while: stopping the shared postmaster would stall
/// everyone else's tests, and stopping only the backends of the run's
/// database could stall them too, through a lock a stopped backend holds
/// for the whole server. A cluster of its own costs about two seconds.
///
/// Errors are failures of the harness itself (a binary missing, a service
/// down); properties the system violated are in [`Summary::check`].
pub async fn run(scenario: &Scenario) -> anyhow::Result<Summary> {
    let log_dir = std::env::temp_dir().join(format!("sendonce-chaos-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("failed to create {}", log_dir.display()))?;
    let mut redis = RedisServer::start(RedisOptions { appendonly: true }).await;
    let mut postgres = PostgresServer::start().await;
    // Declared after the cluster, so dropped before it.
    let db = TestDatabase::create_on(&postgres.admin_url()).await;
    // With TEST_THROUGH_PGBOUNCER=1 the processes reach it through a
    // PgBouncer in transaction mode, as a fleet behind a pooler would.
    let bouncer = if through_pgbouncer() {
        let bouncer = PgBouncer::start_for(&postgres.admin_url(), 20).await;
        println!(
            "chaos: every process reaches Postgres through PgBouncer (transaction mode) on port {}",
            bouncer.port()
        );
        Some(bouncer)
    } else {
        None
    };
    let (database_url, pooler) = match &bouncer {
        Some(bouncer) => (bouncer.url(db.url()), "transaction"),
        None => (db.url().to_owned(), "none"),
    };
    let secret = format!("chaos-{}", uuid::Uuid::now_v7().simple());
    let mut env = Environment {
        bin_dir: scenario.bin_dir.clone(),
        log_dir: log_dir.clone(),
        vars: Vec::new(),
    };
    let mut smtp = SmtpSink::start(&env).await?;
    env.vars = [
        ("DATABASE_URL", database_url),
        ("DATABASE_POOLER", pooler.to_owned()),
        ("REDIS_URL", redis.url()),
        ("REDIS_KEY_PREFIX", PREFIX.to_owned()),
        ("QUEUE_SHARDS", scenario.queue_shards.to_string()),
        ("JWT_SECRET", secret),
        ("SMTP_URL", smtp.url()),
        (
            "MAIL_FROM",
            "sendonce chaos <noreply@chaos.test>".to_owned(),
        ),
        // Short enough that reposts after it are new jobs the workers
        // must catch as duplicates (L1 gone, L2 alone).
        ("DEDUP_TTL_SECS", "2".to_owned()),
        ("WORKER_CONCURRENCY", "8".to_owned()),
        ("WORKER_LEASE_MS", WORKER_LEASE.as_millis().to_string()),
        ("RETRY_BASE_MS", "50".to_owned()),
        ("RETRY_MAX_MS", "500".to_owned()),
        ("MAX_ATTEMPTS", "5".to_owned()),
        // Within the drain: a retry scheduled on a Redis that had just lost
        // everything (its copy gone with the processing list) waits for the
        // periodic reconciler, by design; so do copies lost otherwise.
        ("RECONCILE_AFTER_MS", "3000".to_owned()),
        ("SMTP_TIMEOUT_MS", "5000".to_owned()),
        ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        // The runner's INFO lines include "sent", the worker's own word
        // that it read a 250 and recorded it (see `logs`).
        ("RUST_LOG", "warn,sendonce_worker::runner=info".to_owned()),
        // The false-uncertain verdict reads keys from the "sent" lines.
        ("LOG_PLAIN_KEYS", "true".to_owned()),
        // Webhooks to the receiver on 127.0.0.1 (http, a loopback address),
        // retried within the drain.
        ("APP_ENV", "development".to_owned()),
        (
            "WEBHOOK_RETRY_SCHEDULE",
            webhooks::RETRY_SCHEDULE.to_owned(),
        ),
        ("WEBHOOK_TIMEOUT", webhooks::TIMEOUT.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    // One token per tenant; the plan's keys are spread over them.
    let tokens = (0..plan::TENANTS)
        .map(|t| cluster::mint_token(&env, &format!("chaos{t}"), "jobs:write jobs:read"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hook_tokens = (0..plan::TENANTS)
        .map(|t| {
            let tenant = format!("chaos{t}");
            cluster::mint_token(&env, &tenant, "webhooks:write").map(|token| (tenant, token))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut api, base) = cluster::start_api(&env).await?;
    // Every tenant's outcomes go to one receiver that fails a fifth of
    // the requests; the workers dispatch them under the same faults.
    let hooks = webhooks::setup(&base, &hook_tokens, 19).await?;
    let mut workers = Vec::with_capacity(scenario.workers);
    for slot in 0..scenario.workers {
        workers.push(cluster::start_worker(&env, format!("worker{slot}-0"))?);
    }

    let plan = Arc::new(Plan::new(scenario.posts, scenario.reuse_percent));
    let schedule = Schedule::new(scenario);
    let started = Instant::now();
    let posting = tokio::spawn(post_all(
        Arc::clone(&plan),
        base,
        tokens,
        scenario.chaos * 3 / 4,
    ));
    let targets = Targets {
        env: &env,
        workers: &mut workers,
        redis: &mut redis,
        postgres: &mut postgres,
        smtp: &smtp,
    };
    let faults = faults::inject(&schedule, started, scenario.chaos, targets).await?;
    let (outcomes, cancels) = posting.await.context("the posting task panicked")?;

    let mut findings = Vec::new();
    let accepted: HashMap<String, usize> = outcomes
        .iter()
        .zip(plan.posts.iter())
        .filter_map(|(outcome, &key)| match outcome {
            PostOutcome::Accepted { job_id, .. } => Some((job_id.clone(), key)),
            PostOutcome::Refused(_) => None,
        })
        .collect();
    let client = db.connect().await;
    verdict::drain(&client, &accepted, scenario.drain_timeout).await?;
    // A worker killed mid-request leaves its claim due after its lease
    // (WEBHOOK_TIMEOUT + 10 s).
    webhooks::drain(&client, WEBHOOK_DRAIN).await?;
    let duration = started.elapsed();

    // Stopping every process before reading the SMTP record and the logs
    // makes sure no late send can slip past the check.
    for worker in &mut workers {
        match worker.terminate().await {
            Ok(status) if status.success() => {}
            Ok(status) => {
                findings.push(format!("{} exited with {status} on SIGTERM", worker.name()))
            }
            Err(e) => findings.push(format!("{e:#}")),
        }
    }
    if let Err(e) = api.terminate().await {
        findings.push(format!("{e:#}"));
    }
    if let Err(e) = smtp.terminate().await {
        findings.push(format!("{e:#}"));
    }

    let evidence = verdict::Evidence {
        transfers: smtp.transfers()?,
        sent_jobs: logs::sent_jobs(&log_dir)?,
        states: verdict::read_states(&client).await?,
        sent_early: verdict::sent_early(&client).await?,
    };
    findings.extend(
        faults
            .crashed
            .iter()
            .map(|name| format!("{name} exited on its own after it was up; see its log")),
    );
    let hook_counts = webhooks::check(&client, &hooks, &mut findings).await?;
    let mut summary = verdict::summarise(&plan, &outcomes, &cancels, &evidence, &mut findings);
    summary.webhook_events = hook_counts.events;
    summary.webhook_requests = hook_counts.requests;
    summary.webhook_failed_requests = hook_counts.failed_requests;
    summary.faults = faults;
    summary.duration = duration;
    summary.findings = findings;
    if summary.check().is_empty() {
        // Best effort: a leftover log directory is harmless.
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        summary.log_dir = Some(log_dir);
    }
    Ok(summary)
}

/// Posts the plan, spread evenly over `window`, each post retried (same
/// body, same key) until it gets a 2xx answer, as a careful client does.
async fn post_all(
    plan: Arc<Plan>,
    base: String,
    tokens: Vec<String>,
    window: Duration,
) -> (Vec<PostOutcome>, Vec<CancelOutcome>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let slots = Arc::new(Semaphore::new(POST_CONCURRENCY));
    let started = Instant::now();
    let total = plan.posts.len().max(1);
    let mut posts = tokio::task::JoinSet::new();
    let first_posts = plan.first_posts();
    // A scheduled key's send_at is fixed at its first post, so that its
    // reposts are replays.
    let mut send_at: HashMap<usize, String> = HashMap::new();
    for (index, &key) in plan.posts.iter().enumerate() {
        // Pacing, not synchronisation: posts arrive while workers die.
        let offset = window.mul_f64(index as f64 / total as f64);
        tokio::time::sleep_until(started + offset).await;
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let token = tokens[plan.keys[key].tenant_index() % tokens.len()].clone();
        let (client, base) = (client.clone(), base.clone());
        let at = plan.keys[key].send_in.map(|delay| {
            send_at
                .entry(key)
                .or_insert_with(|| {
                    (chrono::Utc::now() + delay)
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                })
                .clone()
        });
        let body = plan.keys[key].body(at.as_deref());
        // The client cancels some jobs once their first post is answered,
        // racing the workers.
        let cancel = (plan.keys[key].cancel && first_posts[key] == index)
            .then(|| Duration::from_millis(rand::random_range(0..800)));
        posts.spawn(async move {
            let outcome = post_one(&client, &format!("{base}/addJob"), &token, &body).await;
            let canceled = match (&outcome, cancel) {
                (PostOutcome::Accepted { job_id, .. }, Some(after)) => {
                    tokio::time::sleep(after).await;
                    let status = cancel_one(&client, &base, &token, job_id).await;
                    Some(CancelOutcome {
                        key,
                        job_id: job_id.clone(),
                        status,
                    })
                }
                _ => None,
            };
            drop(permit);
            (index, outcome, canceled)
        });
    }
    let mut outcomes = vec![PostOutcome::Refused("never posted".into()); plan.posts.len()];
    let mut cancels = Vec::new();
    // A post task that panicked leaves its post "never posted", which the
    // check reports as refused.
    while let Some(joined) = posts.join_next().await {
        if let Ok((index, outcome, canceled)) = joined {
            outcomes[index] = outcome;
            cancels.extend(canceled);
        }
    }
    (outcomes, cancels)
}

/// `POST /jobs/{id}/cancel`, retried through 5xx answers and transport
/// errors until it gets another answer; its status, `0` for none.
async fn cancel_one(client: &reqwest::Client, base: &str, token: &str, job_id: &str) -> u16 {
    let deadline = Instant::now() + POST_DEADLINE;
    let mut backoff = Duration::from_millis(50);
    while Instant::now() < deadline {
        if let Ok(response) = client
            .post(format!("{base}/jobs/{job_id}/cancel"))
            .bearer_auth(token)
            .send()
            .await
            && !response.status().is_server_error()
        {
            return response.status().as_u16();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    0
}

async fn post_one(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> PostOutcome {
    let deadline = Instant::now() + POST_DEADLINE;
    let mut last = String::new();
    let mut backoff = Duration::from_millis(50);
    while Instant::now() < deadline {
        match client.post(url).bearer_auth(token).json(body).send().await {
            Ok(response) if response.status().is_success() => {
                let status = response.status().as_u16();
                match response.json::<serde_json::Value>().await {
                    Ok(answer) => match answer["job_id"].as_str() {
                        Some(job_id) => {
                            return PostOutcome::Accepted {
                                status,
                                job_id: job_id.to_owned(),
                            };
                        }
                        None => last = format!("{status} without a job id: {answer}"),
                    },
                    Err(e) => last = format!("{status} with an unreadable body: {e}"),
                }
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                let detail = response.text().await.unwrap_or_default();
                return PostOutcome::Refused(format!("{status}: {detail}"));
            }
            Ok(response) => last = format!("{}", response.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    PostOutcome::Refused(format!("no 2xx within {POST_DEADLINE:?}; last: {last}"))
}
