//! The chaos test: the real API and several real workers, as processes,
//! against a private Redis with AOF on, real Postgres and a fault-injecting
//! SMTP server, while jobs are posted, workers are SIGKILLed and Redis is
//! restarted. Afterwards the SMTP server's own record and the database say
//! whether any key took effect twice or any accepted job was lost.
//!
//! # Layout
//!
//! - [`Scenario`]: the knobs of one run; [`run`] carries it out.
//! - [`Summary`]: what happened, as one line ([`Display`](std::fmt::Display))
//!   and as the list of violated properties ([`Summary::check`]).
//! - [`plan`]: the keys, their SMTP faults and which posts reuse a key.
//! - [`cluster`]: the API and worker processes.
//! - `verdict` (private): reads back the database and the SMTP record.

pub mod cluster;
pub mod plan;
mod verdict;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sendonce_testkit::{RedisOptions, RedisServer, SmtpServer, TestDatabase};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cluster::{Environment, Process};
use crate::plan::Plan;

/// The Redis key prefix of a run (its Redis is private).
const PREFIX: &str = "chaos";
/// Posts in flight at once.
const POST_CONCURRENCY: usize = 16;
/// How long one post keeps being retried (it is retried through the Redis
/// restart) before it counts as refused.
const POST_DEADLINE: Duration = Duration::from_secs(60);
/// How often the database is polled while the queue drains.
const DRAIN_POLL: Duration = Duration::from_millis(250);

/// The knobs of one run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Requests to `POST /addJob`.
    pub posts: usize,
    /// Share of the posts, in percent, that reuse a key posted before.
    pub reuse_percent: usize,
    /// Worker processes running at once.
    pub workers: usize,
    /// How long workers are killed; posts are spread over the first three
    /// quarters of it, and Redis restarts at its middle.
    pub chaos: Duration,
    /// Mean time between two worker kills (each is 0.5 to 1.5 times it).
    pub kill_every: Duration,
    /// How long the queue may take to drain after the chaos.
    pub drain_timeout: Duration,
    /// Holds `sendonce-api` and `sendonce-worker`.
    pub bin_dir: PathBuf,
}

/// What a run did and what the SMTP server and the database say about it.
#[derive(Debug, Clone)]
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
    /// Workers SIGKILLed.
    pub kills: usize,
    /// Redis restarts.
    pub redis_restarts: usize,
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
    /// Accepted jobs that never reached a terminal status.
    pub lost: usize,
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
        if self.lost > 0 {
            violations.push(format!(
                "{} accepted job(s) never reached a terminal status",
                self.lost
            ));
        }
        if self.refused > 0 {
            violations.push(format!("{} post(s) never got a 2xx answer", self.refused));
        }
        let jobs = self.sent + self.duplicate + self.failed + self.uncertain + self.lost;
        if self.new_jobs > jobs || self.new_jobs + self.replays + self.refused != self.posts {
            violations.push(format!(
                "counts do not add up: {} posts = {} new + {} replays + {} refused; \
                 {jobs} jobs seen",
                self.posts, self.new_jobs, self.replays, self.refused
            ));
        }
        if self.sent + self.failed + self.uncertain != self.keys {
            violations.push(format!(
                "counts do not add up: {} keys but {} sent + {} failed + {} uncertain",
                self.keys, self.sent, self.failed, self.uncertain
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
        write!(
            f,
            "chaos: posts={} (reused keys {}) keys={} kills={} redis_restarts={} \
             sent={} duplicate={} failed={} uncertain={} (cut {}) \
             duplicate_effects={} lost={} duration={:.1}s",
            self.posts,
            self.reused_posts,
            self.keys,
            self.kills,
            self.redis_restarts,
            self.sent,
            self.duplicate,
            self.failed,
            self.uncertain,
            self.cut_keys,
            self.duplicate_effects,
            self.lost,
            self.duration.as_secs_f64()
        )
    }
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
/// Errors are failures of the harness itself (a binary missing, a service
/// down); properties the system violated are in [`Summary::check`].
pub async fn run(scenario: &Scenario) -> anyhow::Result<Summary> {
    let log_dir = std::env::temp_dir().join(format!("sendonce-chaos-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("failed to create {}", log_dir.display()))?;
    let mut redis = RedisServer::start(RedisOptions { appendonly: true }).await;
    let db = TestDatabase::create().await;
    let smtp = SmtpServer::start().await;
    let secret = format!("chaos-{}", uuid::Uuid::now_v7().simple());
    let env = Environment {
        bin_dir: scenario.bin_dir.clone(),
        log_dir: log_dir.clone(),
        vars: [
            ("DATABASE_URL", db.url().to_owned()),
            ("REDIS_URL", redis.url()),
            ("REDIS_KEY_PREFIX", PREFIX.to_owned()),
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
            ("WORKER_LEASE_MS", "1500".to_owned()),
            ("RETRY_BASE_MS", "50".to_owned()),
            ("RETRY_MAX_MS", "500".to_owned()),
            ("MAX_ATTEMPTS", "5".to_owned()),
            ("SMTP_TIMEOUT_MS", "5000".to_owned()),
            ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };

    let token = cluster::mint_token(&env)?;
    let (mut api, base) = cluster::start_api(&env).await?;
    let mut workers = Vec::with_capacity(scenario.workers);
    for slot in 0..scenario.workers {
        workers.push(cluster::start_worker(&env, format!("worker{slot}-0"))?);
    }

    let plan = Arc::new(Plan::new(scenario.posts, scenario.reuse_percent));
    let started = Instant::now();
    let posting = tokio::spawn(post_all(
        Arc::clone(&plan),
        base,
        token,
        scenario.chaos * 3 / 4,
    ));
    let kills = chaos(scenario, &env, &mut workers, &mut redis).await?;
    let outcomes = posting.await.context("the posting task panicked")?;

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
    let duration = started.elapsed();

    // Stopping every process before reading the SMTP record makes sure no
    // late send can slip past the check.
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

    let mut summary = verdict::summarise(&plan, &outcomes, &smtp, &client, &mut findings).await?;
    summary.kills = kills;
    summary.redis_restarts = 1;
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

/// SIGKILLs a random worker every `kill_every` or so and starts a new one
/// in its place, and restarts Redis at the middle; returns how many workers
/// were killed.
async fn chaos(
    scenario: &Scenario,
    env: &Environment,
    workers: &mut [Process],
    redis: &mut RedisServer,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let (end, restart_at) = (started + scenario.chaos, started + scenario.chaos / 2);
    let mut redis_restarted = false;
    let mut kills = 0;
    let mut next_kill = started + scenario.kill_every.mul_f64(rand::random_range(0.5..1.5));
    loop {
        if !redis_restarted && restart_at <= next_kill.min(end) {
            tokio::time::sleep_until(restart_at).await;
            redis.restart().await;
            redis_restarted = true;
            continue;
        }
        if next_kill >= end || workers.is_empty() {
            tokio::time::sleep_until(end).await;
            return Ok(kills);
        }
        tokio::time::sleep_until(next_kill).await;
        let slot = rand::random_range(0..workers.len());
        workers[slot].kill();
        kills += 1;
        workers[slot] = cluster::start_worker(env, format!("worker{slot}-{kills}"))?;
        next_kill += scenario.kill_every.mul_f64(rand::random_range(0.5..1.5));
    }
}

/// Posts the plan, spread evenly over `window`, each post retried (same
/// body, same key) until it gets a 2xx answer, as a careful client does.
async fn post_all(
    plan: Arc<Plan>,
    base: String,
    token: String,
    window: Duration,
) -> Vec<PostOutcome> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let slots = Arc::new(Semaphore::new(POST_CONCURRENCY));
    let started = Instant::now();
    let total = plan.posts.len().max(1);
    let mut posts = tokio::task::JoinSet::new();
    for (index, &key) in plan.posts.iter().enumerate() {
        // Pacing, not synchronisation: posts arrive while workers die.
        let offset = window.mul_f64(index as f64 / total as f64);
        tokio::time::sleep_until(started + offset).await;
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (client, url, token) = (client.clone(), format!("{base}/addJob"), token.clone());
        let body = plan.keys[key].body();
        posts.spawn(async move {
            let outcome = post_one(&client, &url, &token, &body).await;
            drop(permit);
            (index, outcome)
        });
    }
    let mut outcomes = vec![PostOutcome::Refused("never posted".into()); plan.posts.len()];
    // A post task that panicked leaves its post "never posted", which the
    // check reports as refused.
    while let Some(joined) = posts.join_next().await {
        if let Ok((index, outcome)) = joined {
            outcomes[index] = outcome;
        }
    }
    outcomes
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
