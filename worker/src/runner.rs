//! The run loop: pop, claim (L1 then L2), send, record, acknowledge.
//!
//! A task moves through the worker in two phases. [`Worker::decide`] does
//! everything up to and including the SMTP conversation and returns a
//! [`Verdict`]; it writes nothing that a rerun would contradict, so an
//! infrastructure error there simply reruns it. [`Worker::record`] then
//! persists the verdict and acknowledges the task; each of its steps is
//! idempotent, so it is retried until it succeeds. A verdict reached after
//! the data went out is never recomputed: recomputing it would see the
//! `sending` state and wrongly call a known outcome uncertain.
//!
//! Every write for an attempt carries the attempt's fencing token. A copy
//! whose write finds the token gone (another holder claimed since) is
//! acknowledged only once the key is terminal; until then it waits a lease
//! in the delayed set, so the job always has a copy that will come back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use sendonce_shared::domain::webhooks::EventType;
use sendonce_shared::domain::{JobId, Task};
use sendonce_shared::queue::{Held, L1Claim, Queue, QueueError};
use sendonce_shared::store::{
    Claim, DeadReason, DedupLayer, Failure, Fence, Look, RefusedRecipient, Retrying, Sending,
    Start, Store, Swept,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{OnUncertain, WorkerConfig};
use crate::mailer::{Delivered, Mailer, SendError};
use crate::retry::RetryPolicy;
use crate::telemetry;

/// How early a scheduled job may be popped and still be sent: the API's,
/// Redis's and this worker's clocks differ by that much at most, we trust.
const EARLY_TOLERANCE: Duration = Duration::from_secs(1);
/// How long one blocking pop waits before checking for shutdown.
const POP_BLOCK: Duration = Duration::from_secs(1);
/// How often due retries are moved back to the queue.
const PROMOTE_EVERY: Duration = Duration::from_millis(200);
/// How often rows abandoned by dead holders are looked for.
const SWEEP_EVERY_LEASES: u32 = 2;
/// How often the queue-depth gauges are refreshed (counted by the
/// housekeeper, read by everyone else).
const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// How long published depths live: a few refreshes, so a housekeeper
/// gone quiet does not leave the fleet exporting stale ones for long.
const DEPTH_TTL: Duration = Duration::from_secs(15);
/// Most retries promoted per round.
const PROMOTE_BATCH: usize = 500;
/// How often each worker checks that Redis still has its epoch (a Redis
/// that lost everything has none, and its waiting jobs are pushed again).
const EPOCH_EVERY: Duration = Duration::from_secs(2);
/// How long a re-push pass waits after taking the epoch: jobs accepted
/// just before are usually claimed by then (they were in Redis after all,
/// as on a first start), so only jobs still waiting are pushed again.
const EPOCH_GRACE: Duration = Duration::from_secs(5);
/// How long an epoch taken for a re-push pass lives without renewal: if
/// the worker running the pass dies, another one starts over after this.
const EPOCH_CLAIM_TTL: Duration = Duration::from_secs(30);
/// Waiting jobs pushed per page of a re-push pass, and per round of the
/// periodic reconciler.
const RECONCILE_BATCH: i64 = 500;
/// Backoff bounds when Redis or Postgres fail under a task.
const INFRA_BACKOFF_MIN: Duration = Duration::from_millis(100);
const INFRA_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whose attempt a send is, up to the write that starts its data.
#[derive(Debug, Clone, Copy)]
enum Attempt {
    /// The key is claimed: attempt `attempt` under token `fence`.
    Claimed { attempt: i32, fence: Fence },
    /// The key waits under token `looked`: the write that starts the data
    /// claims it ([`Store::claim_sending`]), saving the claim's own write.
    Pending { looked: Fence },
}

/// What became of a task, decided before anything is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The server accepted it.
    Sent {
        /// The server's reply.
        reply: String,
        /// Recipients it refused for good (the others got the message).
        refused: Vec<RefusedRecipient>,
    },
    /// Another job holds the key.
    Duplicate {
        /// The holder, when known.
        holder: Option<JobId>,
        /// Which layer caught it.
        layer: DedupLayer,
    },
    /// A task whose job already ended (a redelivery, or a canceled job).
    AlreadyDone,
    /// Every recipient is on the tenant's suppression list: the job ends
    /// `suppressed`, with no SMTP conversation.
    Suppressed {
        /// The attempt's token.
        fence: Fence,
        /// Every recipient, with the reason.
        refused: Vec<RefusedRecipient>,
    },
    /// Another holder of this same task owns the attempt (this worker was
    /// presumed dead and its task handed on, or its lease lapsed); this copy
    /// sent nothing and steps aside. `held` is the token this copy claimed,
    /// when it had one: its row is released so that another copy, or the
    /// sweeper, can take it at once (a lease that lapsed under a live worker
    /// would otherwise leave the row held by a worker no longer on it).
    Fenced {
        /// The token this copy held, if it claimed.
        held: Option<Fence>,
    },
    /// A transient failure; try again after the delay.
    Retry {
        /// The attempt's token.
        fence: Fence,
        /// What went wrong.
        error: String,
        /// The server's reply, if any.
        reply: Option<String>,
        /// How long until the next attempt.
        delay: Duration,
        /// Whether this attempt counts towards `MAX_ATTEMPTS`: not when
        /// every relay said it was over its limit before the data.
        counted: bool,
    },
    /// To the dead-letter table.
    Dead {
        /// The token of the attempt this verdict ends.
        fence: Fence,
        /// `failed` or `uncertain`.
        reason: DeadReason,
        /// What went wrong.
        error: String,
        /// The server's reply, if any.
        reply: Option<String>,
    },
}

/// A running worker's parts.
#[derive(Debug)]
pub struct Worker {
    id: String,
    queue: Queue,
    store: Store,
    mailer: Mailer,
    policy: RetryPolicy,
    config: WorkerConfig,
    /// The popped tasks being handled, with multiplicity; anything else in
    /// this worker's processing list is stranded (see `return_stranded`).
    handling: Mutex<HashMap<Held, usize>>,
    /// The jobs this worker is handling a copy of. A second copy of one of
    /// them (the reconciler pushed a job Redis still had) steps aside
    /// without claiming: a claim by the same worker would take the attempt
    /// from its own first copy.
    jobs: Mutex<HashSet<uuid::Uuid>>,
    /// Whether this process is running a re-push pass (at most one).
    restoring: AtomicBool,
    /// Whether this worker's last heartbeat made it the housekeeper: the
    /// one worker that promotes retries, counts the queue, checks the
    /// epoch, reconciles and sweeps for the whole fleet.
    housekeeper: AtomicBool,
}

impl Worker {
    /// Assembles a worker; `id` names its processing list and leases.
    pub fn new(config: WorkerConfig, queue: Queue, store: Store, mailer: Mailer) -> Self {
        let id = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
        let policy = RetryPolicy {
            base: config.retry_base,
            max: config.retry_max,
            max_attempts: config.max_attempts,
        };
        Self {
            id,
            queue,
            store,
            mailer,
            policy,
            config,
            handling: Mutex::default(),
            jobs: Mutex::default(),
            restoring: AtomicBool::new(false),
            housekeeper: AtomicBool::new(false),
        }
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `shutdown` resolves, then stops popping, lets in-flight
    /// tasks finish within `SHUTDOWN_GRACE_MS`, hands back what is left and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let worker = Arc::new(self);
        worker.renew_leases().await?;
        tracing::info!(worker_id = %worker.id, concurrency = worker.config.worker_concurrency, "worker started");

        let stop = CancellationToken::new();
        // Upkeep stops with this future even when it is dropped unfinished
        // (a worker embedded in another program, aborted).
        let _stop_upkeep = stop.clone().drop_guard();
        let upkeep = tokio::spawn(Arc::clone(&worker).upkeep(stop.clone()));

        let mut inflight = JoinSet::new();
        tokio::select! {
            () = shutdown => tracing::info!("shutdown requested: no more pops"),
            result = Arc::clone(&worker).pop_loop(&mut inflight) => result?,
        }

        let grace = worker.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = inflight.len(),
                ?grace,
                "grace period over: handing back unfinished tasks"
            );
            inflight.shutdown().await;
        }
        stop.cancel();
        if let Err(e) = worker.store.release_lease(&worker.id).await {
            tracing::warn!(error = %error_chain(&e), "could not release the lease; it lapses by itself");
        }
        let handed_back = worker.queue.hand_back(&worker.id).await?;
        let _ = upkeep.await;
        tracing::info!(handed_back, "worker stopped");
        Ok(())
    }

    async fn pop_loop(self: Arc<Self>, inflight: &mut JoinSet<()>) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(usize::from(self.config.worker_concurrency)));
        let mut conn = None;
        let mut backoff = INFRA_BACKOFF_MIN;
        loop {
            let permit = Arc::clone(&slots).acquire_owned().await?;
            // Reap finished tasks so the set does not grow without bound.
            while inflight.try_join_next().is_some() {}
            let popper = match &mut conn {
                Some(c) => c,
                None => match self.queue.popper(POP_BLOCK).await {
                    Ok(c) => {
                        if let Err(e) = self.return_stranded().await {
                            tracing::warn!(error = %error_chain(&e), "cannot check this worker's processing list");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(INFRA_BACKOFF_MAX);
                            continue;
                        }
                        conn.insert(c)
                    }
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "cannot connect to Redis to pop");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(INFRA_BACKOFF_MAX);
                        continue;
                    }
                },
            };
            match self.queue.pop(popper, &self.id, POP_BLOCK).await {
                Ok(Some(held)) => {
                    backoff = INFRA_BACKOFF_MIN;
                    self.count_handling(&held, true);
                    let worker = Arc::clone(&self);
                    inflight.spawn(async move {
                        worker.handle(&held).await;
                        worker.count_handling(&held, false);
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "pop failed");
                    conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(INFRA_BACKOFF_MAX);
                }
            }
        }
    }

    /// Counts a popped task into `handling` when its handling starts, and
    /// out again once it is recorded and acknowledged.
    fn count_handling(&self, held: &Held, start: bool) {
        let mut handling = self.handling.lock().unwrap_or_else(PoisonError::into_inner);
        if start {
            *handling.entry(held.clone()).or_default() += 1;
        } else if let Some(n) = handling.get_mut(held) {
            *n -= 1;
            if *n == 0 {
                handling.remove(held);
            }
        }
    }

    /// Hands back to the queue what this worker's processing list holds
    /// beyond the tasks it is handling. A pop whose reply was lost (Redis
    /// died after the move) leaves such a task there, and no reaper takes it
    /// while this worker's heartbeat lives. Runs between pops only, so no
    /// move is under way; the tasks being handled are read before the list,
    /// so one finishing meanwhile is never taken for stranded.
    async fn return_stranded(&self) -> Result<usize, QueueError> {
        let mut handling = self
            .handling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut stranded = Vec::new();
        for held in self.queue.held_by(&self.id).await? {
            match handling.get_mut(&held) {
                Some(n) if *n > 0 => *n -= 1,
                _ => stranded.push(held),
            }
        }
        let returned = self.queue.return_held(&self.id, &stranded).await?;
        if returned > 0 {
            tracing::warn!(
                returned,
                "handed back tasks stranded in this worker's processing list by a lost pop reply"
            );
        }
        Ok(returned)
    }

    /// Renews this worker's lease in Redis (which guards its processing
    /// list against reapers, and holds or contends for the housekeeper) and
    /// in Postgres (which guards its rows, and without which it starts no
    /// data).
    async fn renew_leases(&self) -> anyhow::Result<()> {
        let lease = self.config.worker_lease;
        let (redis, postgres) = tokio::join!(
            self.queue.heartbeat(&self.id, lease),
            self.store.renew_lease(&self.id, lease)
        );
        let leads = match redis {
            Ok(leads) => leads,
            Err(e) => {
                self.set_housekeeper(false);
                return Err(e).context("failed to renew the lease in Redis");
            }
        };
        self.set_housekeeper(leads);
        postgres.context("failed to renew the lease in Postgres")?;
        Ok(())
    }

    /// Records whether this worker is the housekeeper, saying so when that
    /// changes.
    fn set_housekeeper(&self, leads: bool) {
        if self.housekeeper.swap(leads, Ordering::AcqRel) != leads {
            telemetry::housekeeper(leads);
            if leads {
                tracing::info!(
                    "this worker is now the housekeeper (retry promotion, queue depths, epoch, reconciler, sweeper)"
                );
            } else {
                tracing::info!("this worker is no longer the housekeeper");
            }
        }
    }

    fn is_housekeeper(&self) -> bool {
        self.housekeeper.load(Ordering::Acquire)
    }

    /// Heartbeat and reaping in every worker; retry promotion, queue
    /// depths, the epoch check, the reconciler and the sweeper only in the
    /// housekeeper (elected by the heartbeat), so an idle fleet's Redis
    /// commands grow with its size, not with its square. Each of those is
    /// safe to run in several workers at once (a housekeeper that lost the
    /// role without knowing it yet), and the reaper, which crash recovery
    /// waits on, needs no election. Until `stop`.
    async fn upkeep(self: Arc<Self>, stop: CancellationToken) {
        let lease = self.config.worker_lease;
        let mut beat = tokio::time::interval(lease / 3);
        let mut promote = tokio::time::interval(PROMOTE_EVERY);
        let mut reap = tokio::time::interval(lease / 2);
        let mut sweep = tokio::time::interval(lease * SWEEP_EVERY_LEASES);
        let mut depth = tokio::time::interval(DEPTH_EVERY);
        let mut epoch = tokio::time::interval(EPOCH_EVERY);
        let mut reconcile = tokio::time::interval(self.config.reconcile_after / 4);
        for timer in [
            &mut beat,
            &mut promote,
            &mut reap,
            &mut sweep,
            &mut depth,
            &mut epoch,
            &mut reconcile,
        ] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut pass: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    if let Some(pass) = pass {
                        pass.abort();
                    }
                    return;
                }
                _ = epoch.tick(), if self.is_housekeeper() => {
                    if !self.restoring.load(Ordering::Acquire) {
                        match self.queue.epoch_missing().await {
                            Ok(missing) if missing.is_empty() => {}
                            Ok(missing) => {
                                pass = Some(tokio::spawn(Arc::clone(&self).restore_waiting(missing)));
                            }
                            Err(e) => tracing::debug!(error = %error_chain(&e), "reading the epoch failed"),
                        }
                    }
                }
                _ = reconcile.tick(), if self.is_housekeeper() => {
                    let queue = &self.queue;
                    let pushed = self
                        .store
                        .reconcile_stale(
                            self.config.reconcile_after,
                            RECONCILE_BATCH,
                            async |tasks: Vec<String>| queue.push_next(&tasks).await,
                        )
                        .await;
                    match pushed {
                        Ok(0) => {}
                        Ok(n) => {
                            telemetry::tasks_reconciled(n);
                            tracing::warn!(pushed = n, "reconciler: pushed accepted jobs that waited too long (Redis may have lost them)");
                        }
                        Err(e) => tracing::warn!(error = %error_chain(&e), "reconciling waiting jobs failed"),
                    }
                }
                _ = beat.tick() => {
                    if let Err(e) = self.renew_leases().await {
                        tracing::warn!(error = format!("{e:#}"), "renewing the lease failed");
                    }
                }
                _ = promote.tick(), if self.is_housekeeper() => {
                    match self.queue.promote_due(PROMOTE_BATCH).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(promoted = n, "due retries back on the queue"),
                        Err(e) => tracing::warn!(error = %error_chain(&e), "promoting due retries failed"),
                    }
                }
                _ = reap.tick() => {
                    match self.queue.reap_dead(&self.id, lease).await {
                        Ok(0) => {}
                        Ok(n) => {
                            telemetry::tasks_recovered(n);
                            tracing::warn!(recovered = n, "handed back the tasks of dead workers");
                        }
                        Err(e) => tracing::warn!(error = %error_chain(&e), "reaping dead workers failed"),
                    }
                }
                _ = sweep.tick(), if self.is_housekeeper() => {
                    let push = |raw: String| {
                        let queue = self.queue.clone();
                        async move { queue.push(&[raw]).await }
                    };
                    match self.store.sweep_abandoned(lease, push).await {
                        Ok(swept) if swept == Swept::default() => {}
                        Ok(swept) => tracing::warn!(?swept, "resolved rows abandoned by dead holders"),
                        Err(e) => tracing::warn!(error = %error_chain(&e), "sweeping abandoned rows failed"),
                    }
                }
                _ = depth.tick() => self.refresh_depths().await,
            }
        }
    }

    /// The housekeeper counts the queue and publishes the counts; every
    /// other worker reads them. Either way the gauges show the whole queue.
    async fn refresh_depths(&self) {
        if self.is_housekeeper() {
            match self.store.stats(None).await {
                Ok(stats) => telemetry::jobs_unfinished(&stats.priorities),
                Err(e) => {
                    tracing::debug!(error = %error_chain(&e), "counting jobs by priority failed");
                }
            }
        }
        let depths = if self.is_housekeeper() {
            let counted = self.queue.depths().await;
            if let Ok(depths) = &counted
                && let Err(e) = self.queue.publish_depths(depths, DEPTH_TTL).await
            {
                tracing::debug!(error = %error_chain(&e), "publishing queue depths failed");
            }
            counted.map(Some)
        } else {
            self.queue.published_depths().await
        };
        match depths {
            Ok(Some(depths)) => telemetry::queue_depth(&depths),
            Ok(None) => tracing::debug!("no queue depths published yet"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "reading queue depths failed"),
        }
    }

    /// Shards `missing` have no epoch: they lost everything (flushed,
    /// restarted without persistence, failed over to an empty replica) or
    /// are new. For the epochs this worker wins, it waits [`EPOCH_GRACE`],
    /// then puts back the task of every job of those shards that was
    /// waiting for an attempt (`queued`, `retrying`) when it took the epochs
    /// and still is: due ones on the queue, later retries in the delayed
    /// set. Page by page, renewing the epochs as it goes and keeping them
    /// for good at the end. A job that is in Redis after all gets a second
    /// copy, which the claims absorb.
    async fn restore_waiting(self: Arc<Self>, missing: Vec<usize>) {
        if self.restoring.swap(true, Ordering::AcqRel) {
            return;
        }
        let epoch = format!("{} {}", self.id, uuid::Uuid::now_v7());
        match self.restore_pass(&epoch, &missing).await {
            Ok(None) => {}
            Ok(Some(pushed)) => {
                telemetry::tasks_reconciled(pushed);
                tracing::warn!(
                    pushed,
                    "Redis had no epoch (it lost its data, or is new): pushed every waiting job again"
                );
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "re-pushing the waiting jobs failed; another pass follows"
            ),
        }
        self.restoring.store(false, Ordering::Release);
    }

    /// One pass; `None` when other workers took every epoch first.
    async fn restore_pass(&self, epoch: &str, missing: &[usize]) -> anyhow::Result<Option<usize>> {
        let mut shards = Vec::new();
        for &shard in missing {
            if self
                .queue
                .claim_epoch(shard, epoch, EPOCH_CLAIM_TTL)
                .await?
            {
                shards.push(shard);
            }
        }
        if shards.is_empty() {
            return Ok(None);
        }
        let until = self.store.now().await?;
        tokio::time::sleep(EPOCH_GRACE).await;
        let mut cursor = None;
        let mut pushed = 0;
        loop {
            let page = self
                .store
                .waiting_page(until, cursor.as_ref(), RECONCILE_BATCH)
                .await?;
            pushed += self.queue.restore(&page.tasks, &shards).await?;
            for &shard in &shards {
                if !self
                    .queue
                    .keep_epoch(shard, epoch, Some(EPOCH_CLAIM_TTL))
                    .await?
                {
                    anyhow::bail!(
                        "the epoch of shard {shard} was lost during the pass (Redis lost its data again)"
                    );
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        for &shard in &shards {
            self.queue.keep_epoch(shard, epoch, None).await?;
        }
        Ok(Some(pushed))
    }

    /// Processes one popped task to the end, whatever fails underneath.
    async fn handle(&self, held: &Held) {
        let _inflight = telemetry::inflight();
        let task = match Task::from_json(&held.raw) {
            Ok(task) => task,
            Err(e) => {
                tracing::error!(error = %e, "task does not parse: moved to the poison list");
                telemetry::poison_task();
                self.until_ok("poison", || self.queue.poison(&self.id, held))
                    .await;
                return;
            }
        };
        let span = tracing::info_span!(
            "job",
            job_id = %task.job_id,
            tenant = %task.tenant,
            idempotency_key = %sendonce_shared::telemetry::key(&task.idempotency_key),
        );
        // A scheduled job is promoted when due, by Redis's clock; a copy
        // that arrives well before (pushed by hand, or a clock far off)
        // goes back to wait, unclaimed.
        let due_in = task.email.due_in(chrono::Utc::now());
        if due_in > EARLY_TOLERANCE {
            let _entered = span.enter();
            tracing::info!(?due_in, "scheduled for later; back to the delayed set");
            drop(_entered);
            self.until_ok("reschedule", || {
                self.queue.retry_later(&self.id, held, due_in)
            })
            .await;
            return;
        }
        let job = task.job_id.as_uuid();
        let first_copy = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job);
        async {
            let verdict = if first_copy {
                self.until_ok("decide", || self.decide(&task)).await
            } else {
                Verdict::Fenced { held: None }
            };
            self.until_ok("record", || self.record(&task, held, &verdict))
                .await;
        }
        .instrument(span)
        .await;
        if first_copy {
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&job);
        }
    }

    /// Claims the key and, when this job owns it, sends.
    pub async fn decide(&self, task: &Task) -> anyhow::Result<Verdict> {
        if let L1Claim::Duplicate { holder } = self
            .queue
            .claim_l1(task, self.config.common.dedup_ttl())
            .await?
        {
            // L1 is a hint: if its key was evicted or expired and then taken
            // by another job, the L2 owner (this job, say, requeued from the
            // DLQ or recovered after a crash) must still reach its end.
            match self
                .store
                .owner(&task.tenant, &task.idempotency_key)
                .await?
            {
                Some(owner) if owner == task.job_id => {}
                owner => {
                    return Ok(Verdict::Duplicate {
                        holder: owner.or(holder),
                        layer: DedupLayer::L1,
                    });
                }
            }
        }
        let (mut attempt, suppressed) = match self.store.look(task, &self.id).await? {
            Look::Ready {
                fence, suppressed, ..
            } => (Attempt::Pending { looked: fence }, suppressed),
            // Its start wrote `sending` and answered an error: the data
            // never went out, so it is an ordinary transient failure.
            Look::Mine { attempts, fence } => {
                return Ok(Verdict::Retry {
                    fence,
                    error: "the write that starts the data failed; nothing was sent".to_owned(),
                    reply: None,
                    delay: self.policy.delay(attempts),
                    counted: true,
                });
            }
            Look::ClaimNow => match self.claim_now(task).await? {
                Ok((attempt, fence, suppressed)) => {
                    (Attempt::Claimed { attempt, fence }, suppressed)
                }
                Err(verdict) => return Ok(verdict),
            },
            Look::Settled(claim) => match self.settle(task, claim).await? {
                Ok((attempt, fence, suppressed)) => {
                    (Attempt::Claimed { attempt, fence }, suppressed)
                }
                Err(verdict) => return Ok(verdict),
            },
        };
        tracing::debug!(?attempt, "sending");
        let envelope: Vec<String> = task
            .email
            .suppression_keys()
            .into_iter()
            .filter(|k| !suppressed.contains(k))
            .collect();
        let mut left_out: Vec<RefusedRecipient> = suppressed
            .into_iter()
            .map(|recipient| RefusedRecipient {
                recipient,
                reply: SUPPRESSED_REPLY.to_owned(),
            })
            .collect();
        if envelope.is_empty() {
            return Ok(match self.claimed(task, &mut attempt).await? {
                Ok((_, fence)) => Verdict::Suppressed {
                    fence,
                    refused: left_out,
                },
                Err(verdict) => verdict,
            });
        }
        let leave_out: Vec<String> = left_out.iter().map(|r| r.recipient.clone()).collect();
        let message = match self.mailer.build_message(task, &leave_out) {
            Ok(m) => m,
            Err(e) => {
                return Ok(match self.claimed(task, &mut attempt).await? {
                    Ok((_, fence)) => Verdict::Dead {
                        fence,
                        reason: DeadReason::Failed,
                        error: format!("the message could not be built: {e}"),
                        reply: None,
                    },
                    Err(verdict) => verdict,
                });
            }
        };
        let started = std::time::Instant::now();
        let newly_suppressed = AtomicBool::new(false);
        let claimed_at_start = std::sync::OnceLock::new();
        let sent = self
            .mailer
            .send(&message, async || {
                let (go, suppressed) = match attempt {
                    Attempt::Claimed { fence, .. } => {
                        let sending = self
                            .store
                            .mark_sending(task, fence, &self.id, &envelope)
                            .await?;
                        (sending == Sending::Go, sending == Sending::Suppressed)
                    }
                    Attempt::Pending { looked } => {
                        match self
                            .store
                            .claim_sending(task, looked, &self.id, &envelope)
                            .await?
                        {
                            Start::Go { attempt, fence } => {
                                let _ = claimed_at_start.set((attempt, fence));
                                (true, false)
                            }
                            Start::Suppressed => (false, true),
                            Start::Lost => (false, false),
                        }
                    }
                };
                newly_suppressed.store(suppressed, Ordering::Relaxed);
                Ok::<_, sendonce_shared::store::StoreError>(go)
            })
            .await;
        telemetry::smtp_send(started.elapsed());
        if let Some(&(attempt_no, fence)) = claimed_at_start.get() {
            attempt = Attempt::Claimed {
                attempt: attempt_no,
                fence,
            };
        }
        let failure = match sent {
            Ok(Delivered::Accepted { reply, mut refused }) => {
                refused.append(&mut left_out);
                return Ok(Verdict::Sent { reply, refused });
            }
            Ok(Delivered::Fenced) if !newly_suppressed.load(Ordering::Relaxed) => {
                return Ok(Verdict::Fenced {
                    held: match attempt {
                        Attempt::Claimed { fence, .. } => Some(fence),
                        Attempt::Pending { .. } => None,
                    },
                });
            }
            Ok(Delivered::Fenced) => None,
            Err(e) => Some(e),
        };
        // Nothing went out before the start write answered; an attempt that
        // failed before it is claimed now, to record the failure under a
        // token of its own.
        let (attempt, fence) = match self.claimed(task, &mut attempt).await? {
            Ok(claimed) => claimed,
            Err(verdict) => return Ok(verdict),
        };
        Ok(match failure {
            // A recipient was suppressed between the claim and the data:
            // nothing went out; the next attempt's claim leaves it out.
            None => Verdict::Retry {
                fence,
                error: "a recipient was added to the suppression list during the attempt; \
                        nothing was sent"
                    .to_owned(),
                reply: None,
                delay: Duration::ZERO,
                counted: false,
            },
            // The start write may or may not have committed, but the data
            // certainly did not go out: a plain retry, by this attempt's
            // token, not a rerun that would find `sending` and call it
            // uncertain.
            Some(SendError::Hook(e)) => Verdict::Retry {
                fence,
                error: format!(
                    "could not record that the data is going out ({}); nothing was sent",
                    error_chain(&e)
                ),
                reply: None,
                delay: self.policy.delay(attempt),
                counted: true,
            },
            Some(SendError::Permanent { error, reply }) => Verdict::Dead {
                fence,
                reason: DeadReason::Failed,
                error,
                reply,
            },
            Some(SendError::Transient { error, reply }) if self.policy.exhausted(attempt) => {
                Verdict::Dead {
                    fence,
                    reason: DeadReason::Failed,
                    error: format!("gave up after {attempt} attempts: {error}"),
                    reply,
                }
            }
            Some(SendError::Transient { error, reply }) => Verdict::Retry {
                fence,
                error,
                reply,
                delay: self.policy.delay(attempt),
                counted: true,
            },
            // The relays' fault, not the job's: it waits for a relay's
            // cooldown to end (plus the first retry's jitter, so that the
            // jobs turned away together do not come back together), and
            // however often that happens, never runs out of attempts.
            Some(SendError::RelayBusy {
                error,
                reply,
                retry_after,
            }) => Verdict::Retry {
                fence,
                error: format!("{error} (not counted as an attempt)"),
                reply,
                delay: retry_after + self.policy.delay(1),
                counted: false,
            },
            Some(SendError::Uncertain { error })
                if self.config.on_uncertain == OnUncertain::Resend
                    && !self.policy.exhausted(attempt) =>
            {
                Verdict::Retry {
                    fence,
                    error: format!("outcome unknown, resending (ON_UNCERTAIN=resend): {error}"),
                    reply: None,
                    delay: self.policy.delay(attempt),
                    counted: true,
                }
            }
            Some(SendError::Uncertain { error }) => Verdict::Dead {
                fence,
                reason: DeadReason::Uncertain,
                error: format!(
                    "attempt {attempt}: the data went out but no reply was read ({error}); \
                     the server may or may not have accepted it"
                ),
                reply: None,
            },
        })
    }

    /// The two-step claim ([`Store::claim`]): the attempt, its token and the
    /// suppressed recipients, or the verdict when no attempt is possible.
    async fn claim_now(
        &self,
        task: &Task,
    ) -> anyhow::Result<Result<(i32, Fence, Vec<String>), Verdict>> {
        let claim = self.store.claim(task, &self.id).await?;
        self.settle(task, claim).await
    }

    /// What a claim's answer means for this attempt.
    async fn settle(
        &self,
        task: &Task,
        claim: Claim,
    ) -> anyhow::Result<Result<(i32, Fence, Vec<String>), Verdict>> {
        Ok(match claim {
            Claim::Proceed {
                attempt,
                fence,
                suppressed,
            } => Ok((attempt, fence, suppressed)),
            Claim::Duplicate { owner } => Err(Verdict::Duplicate {
                holder: Some(owner),
                layer: DedupLayer::L2,
            }),
            Claim::AlreadyDone => Err(Verdict::AlreadyDone),
            Claim::Held => Err(Verdict::Fenced { held: None }),
            Claim::Ambiguous { attempts, fence }
                if self.config.on_uncertain == OnUncertain::Resend
                    && !self.policy.exhausted(attempts) =>
            {
                match self.store.reopen_ambiguous(task, fence, &self.id).await? {
                    // The `sending` write still checks the suppression list.
                    Some((attempt, fence)) => Ok((attempt, fence, Vec::new())),
                    None => Err(Verdict::Fenced { held: None }),
                }
            }
            Claim::Ambiguous { attempts, fence } => Err(Verdict::Dead {
                fence,
                reason: DeadReason::Uncertain,
                error: format!(
                    "attempt {attempts} was cut after its data went out (worker crash, \
                     shutdown or lost lease); the server may or may not have accepted it"
                ),
                reply: None,
            }),
        })
    }

    /// The attempt's number and token, claiming the key now when the write
    /// that starts the data has not (an attempt that ends before it). When
    /// that write answered an error but committed, the row is this
    /// worker's, in `sending`, with nothing sent: its token is taken over.
    async fn claimed(
        &self,
        task: &Task,
        attempt: &mut Attempt,
    ) -> anyhow::Result<Result<(i32, Fence), Verdict>> {
        if let Attempt::Claimed { attempt, fence } = *attempt {
            return Ok(Ok((attempt, fence)));
        }
        let claimed = match self.store.look(task, &self.id).await? {
            Look::Mine { attempts, fence } => Ok((attempts, fence, Vec::new())),
            Look::Settled(claim) => self.settle(task, claim).await?,
            Look::Ready { .. } | Look::ClaimNow => self.claim_now(task).await?,
        };
        Ok(claimed.map(|(attempt_no, fence, _)| {
            *attempt = Attempt::Claimed {
                attempt: attempt_no,
                fence,
            };
            (attempt_no, fence)
        }))
    }

    /// Persists a verdict and acknowledges the task. Safe to repeat.
    async fn record(&self, task: &Task, held: &Held, verdict: &Verdict) -> anyhow::Result<()> {
        match verdict {
            Verdict::Sent { reply, refused } => {
                self.store.mark_sent(task, reply, refused).await?;
                let bounced: Vec<RefusedRecipient> = refused
                    .iter()
                    .filter(|r| says_no_such_mailbox(&r.reply))
                    .cloned()
                    .collect();
                self.store.suppress_bounced(task, &bounced).await?;
                self.queue.ack(&self.id, held).await?;
                telemetry::email_sent();
                telemetry::event_written(EventType::Sent);
                if refused.is_empty() {
                    tracing::info!(smtp_reply = %reply, "sent");
                } else {
                    tracing::warn!(smtp_reply = %reply, refused = refused.len(), "sent; some recipients refused for good");
                }
            }
            Verdict::Duplicate { holder, layer } => {
                self.store.record_duplicate(task, *holder, *layer).await?;
                self.queue.ack(&self.id, held).await?;
                telemetry::duplicate_skipped(*layer);
                telemetry::event_written(EventType::Duplicate);
                tracing::info!(
                    duplicate_of = holder.map(|h| h.to_string()),
                    layer = layer.as_str(),
                    "duplicate: key already held by another job; skipped"
                );
            }
            Verdict::Suppressed { fence, refused } => {
                if !self.store.suppress_job(task, *fence, refused).await? {
                    return self.step_aside(task, held).await;
                }
                self.queue.ack(&self.id, held).await?;
                telemetry::suppressed();
                telemetry::event_written(EventType::Suppressed);
                tracing::warn!("every recipient is on the suppression list: not sent");
            }
            Verdict::AlreadyDone => {
                self.queue.ack(&self.id, held).await?;
                tracing::info!("the job is already finished or canceled; acknowledged");
            }
            Verdict::Fenced { held: claimed } => {
                if let Some(fence) = claimed {
                    self.store.release_claim(task, *fence).await?;
                }
                self.step_aside(task, held).await?;
            }
            Verdict::Retry {
                fence,
                error,
                reply,
                delay,
                counted,
            } => {
                let retrying = Retrying {
                    error,
                    smtp_reply: reply.as_deref(),
                    delay: *delay,
                    counted: *counted,
                };
                if !self.store.mark_retrying(task, *fence, retrying).await? {
                    return self.step_aside(task, held).await;
                }
                self.queue.retry_later(&self.id, held, *delay).await?;
                telemetry::retry_scheduled();
                telemetry::event_written(EventType::Retrying);
                tracing::warn!(%error, ?delay, counted, "transient failure; retry scheduled");
            }
            Verdict::Dead {
                fence,
                reason,
                error,
                reply,
            } => {
                let failure = Failure {
                    reason: *reason,
                    error,
                    smtp_reply: reply.as_deref(),
                };
                if !self.store.dead_letter(task, *fence, failure).await? {
                    return self.step_aside(task, held).await;
                }
                // A one-recipient job refused for good as no such mailbox
                // (at RCPT or after the data): later jobs to it are not
                // tried. With several recipients, only `Sent`'s per-RCPT
                // refusals say which address was refused.
                if let (DeadReason::Failed, Some(reply)) = (reason, reply)
                    && says_no_such_mailbox(reply)
                    && let [only] = task.email.suppression_keys().as_slice()
                {
                    let bounced = [RefusedRecipient {
                        recipient: only.clone(),
                        reply: reply.clone(),
                    }];
                    self.store.suppress_bounced(task, &bounced).await?;
                }
                self.queue.ack(&self.id, held).await?;
                telemetry::dead_lettered(*reason);
                telemetry::event_written(match reason {
                    DeadReason::Failed => EventType::Failed,
                    DeadReason::Uncertain => EventType::Uncertain,
                });
                tracing::error!(reason = reason.as_str(), %error, "dead-lettered");
            }
        }
        Ok(())
    }

    /// This copy lost its attempt to another holder (or its write found the
    /// key already finished). It is acknowledged only when the key is
    /// terminal; otherwise it waits a lease in the delayed set, so that if
    /// the other holder dies too, a copy still comes back for the job.
    async fn step_aside(&self, task: &Task, held: &Held) -> anyhow::Result<()> {
        if self.store.is_terminal(task).await? {
            self.queue.ack(&self.id, held).await?;
            tracing::info!("another holder finished this job; copy acknowledged");
        } else {
            self.queue
                .retry_later(&self.id, held, self.config.worker_lease)
                .await?;
            telemetry::copy_fenced();
            tracing::warn!(
                "another holder owns this attempt; this copy sent nothing and waits a lease"
            );
        }
        Ok(())
    }

    /// Retries `op` with capped exponential backoff until it succeeds. Used
    /// where giving up would lose or misreport the task; if the process
    /// dies meanwhile, the task is still in its processing list.
    async fn until_ok<T, E, F>(&self, what: &str, mut op: impl FnMut() -> F) -> T
    where
        F: Future<Output = Result<T, E>>,
        E: Into<anyhow::Error>,
    {
        let mut backoff = INFRA_BACKOFF_MIN;
        loop {
            match op().await {
                Ok(v) => return v,
                Err(e) => {
                    let e: anyhow::Error = e.into();
                    tracing::warn!(step = what, error = %format!("{e:#}"), ?backoff, "infrastructure error; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(INFRA_BACKOFF_MAX);
                }
            }
        }
    }
}

/// The reply recorded for a recipient left out because it is suppressed.
const SUPPRESSED_REPLY: &str = "not sent: on the suppression list";

/// Whether an SMTP reply refuses a mailbox for good as not existing or not
/// deliverable: a `5xx` with an enhanced status code of class `5.1.x`
/// (RFC 3463: addressing status), e.g. `550 5.1.1 no such user`.
fn says_no_such_mailbox(reply: &str) -> bool {
    let code = |t: &str| {
        t.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '.')
            .to_owned()
    };
    let mut tokens = reply.split_whitespace().map(code);
    tokens.any(|t| {
        let mut parts = t.split('.');
        parts.next() == Some("5")
            && parts.next() == Some("1")
            && parts.next().is_some_and(|d| {
                !d.is_empty() && d.len() <= 3 && d.bytes().all(|b| b.is_ascii_digit())
            })
            && parts.next().is_none()
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::says_no_such_mailbox;

    #[test]
    fn only_a_permanent_addressing_status_says_no_such_mailbox() {
        for reply in [
            "550 5.1.1 no such user",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
            "permanent error (550): 5.1.1 <ada@example.com>: Recipient address rejected",
            "553 5.1.3 bad destination mailbox address syntax",
        ] {
            assert!(says_no_such_mailbox(reply), "{reply}");
        }
        for reply in [
            "550 5.7.1 relaying denied",
            "452 4.1.1 mailbox busy, try later",
            "554 5.1 odd",
            "550 no such user",
            "552 5.2.2 mailbox full",
            "550 5.1.1.1 not a code",
        ] {
            assert!(!says_no_such_mailbox(reply), "{reply}");
        }
    }
}
