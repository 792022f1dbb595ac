//! The Redis side: the ready queue, per-worker processing lists, the delayed
//! set, worker leases, the L1 dedup keys and the epoch.
//!
//! Redis is the transport, not the record: every accepted job is a row in
//! Postgres first, and the reconciler pushes again whatever Redis loses.
//!
//! # Key layout
//!
//! Every key carries the same hash tag, `{prefix}`, so any script or
//! transaction touching several of them runs on Redis Cluster unchanged:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}:queue` | list | ready tasks; the API `LPUSH`es, workers take from the right |
//! | `{p}:processing:<worker>` | list | tasks a worker holds; removed on acknowledge |
//! | `{p}:scheduled` | sorted set | tasks waiting for a retry, scored by due time (ms, Redis clock) |
//! | `{p}:leases` | sorted set | worker ids that may hold tasks, scored by lease deadline (ms, Redis clock) |
//! | `{p}:dedup:<key>` | string, EX ttl | L1 claim: the job id that holds the key |
//! | `{p}:epoch` | string, no TTL | set by the worker that re-pushed every waiting job after Redis was found without it (flushed, restarted empty, failed over) |
//! | `{p}:poison` | list | tasks that do not parse; kept for an operator, never dropped |
//! | `{p}:rate:<sub>` | string, PX until full | the API's rate limit: a token subject's GCRA "theoretical arrival time" (µs, Redis clock) |
//! | `{p}:ready` | string, PX 10 s | written by every readiness probe, so a probe fails where writes would (a replica, the wrong Cluster node) |
//! | `{p}:housekeeper` | string, PX 2/3 lease | the worker elected to do the fleet's housekeeping (retry promotion, queue depths, the epoch check, the reconciler and the sweeper); taken and renewed with the heartbeat |
//! | `{p}:depths` | string, PX 15 s | the queue depths the housekeeper last counted, `ready scheduled processing`, which every other worker exports as its gauges |
//!
//! # Cost per worker
//!
//! An idle worker's Redis commands do not grow with the fleet: a blocking
//! pop per second, a heartbeat (which also contends for the housekeeper)
//! every third of a lease, a reap that reads only lapsed leases every half
//! lease, and a read of the published depths every 5 s. Only the
//! housekeeper promotes, counts the processing lists and checks the epoch.

use std::time::Duration;

use redis::Script;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{IdempotencyKey, JobId, Task};

/// `maxmemory-policy` values under which Redis never drops a key.
const NOEVICTION: &str = "noeviction";

mod connect;
mod shared;
pub use connect::{Connection, Connector, RedisTls, validate_url};
use shared::SharedConnection;

/// A Redis operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A command failed.
    #[error("a Redis command failed")]
    Redis(#[from] redis::RedisError),
    /// The connection settings were unusable.
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    /// Redis answered in a shape the caller did not expect.
    #[error("unexpected answer from Redis: {0}")]
    Unexpected(String),
}

/// Every due time and lease deadline is computed and compared inside a
/// script from Redis's own `TIME`, so workers' clocks never meet.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Names of the Redis keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    tag: String,
}

impl Keys {
    /// Keys under `{prefix}`.
    pub fn new(prefix: &str) -> Self {
        Self {
            tag: format!("{{{prefix}}}"),
        }
    }

    /// The ready queue.
    pub fn queue(&self) -> String {
        format!("{}:queue", self.tag)
    }
    /// The delayed-retry sorted set.
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.tag)
    }
    /// Worker leases: each registered worker, scored by its deadline.
    pub fn leases(&self) -> String {
        format!("{}:leases", self.tag)
    }
    /// A worker's processing list.
    pub fn processing(&self, worker: &str) -> String {
        format!("{}:processing:{worker}", self.tag)
    }
    /// The L1 dedup key of an idempotency key.
    pub fn dedup(&self, key: &IdempotencyKey) -> String {
        format!("{}:dedup:{key}", self.tag)
    }
    /// The epoch: missing means this Redis lost (or never had) the tasks
    /// of the waiting jobs.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.tag)
    }
    /// Where unparseable tasks are kept.
    pub fn poison(&self) -> String {
        format!("{}:poison", self.tag)
    }
    /// The rate-limit state of a token subject.
    pub fn rate(&self, subject: &str) -> String {
        format!("{}:rate:{subject}", self.tag)
    }
    /// Written by readiness probes.
    pub fn ready(&self) -> String {
        format!("{}:ready", self.tag)
    }
    /// The id of the worker doing the fleet's housekeeping.
    pub fn housekeeper(&self) -> String {
        format!("{}:housekeeper", self.tag)
    }
    /// The queue depths the housekeeper last counted.
    pub fn depths(&self) -> String {
        format!("{}:depths", self.tag)
    }
}

/// The client for `url` (any of the URL kinds in [`connect`]'s module:
/// one server, Sentinel, Cluster; TLS with `tls`'s certificates). Nothing
/// connects yet: [`Queue`] opens its one shared multiplexed connection on
/// first use, and a replacement when that one breaks; blocking pops use
/// their own (see [`Queue::popper`]).
pub fn connect(url: &SecretString, tls: &RedisTls) -> Result<Connector, QueueError> {
    Connector::new(url.expose_secret(), tls).map_err(QueueError::Config)
}

/// Outcome of the L1 claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L1Claim {
    /// This job holds the key (freshly, or from an earlier attempt).
    Held,
    /// Another job holds the key.
    Duplicate {
        /// The holder, if its id parses.
        holder: Option<JobId>,
    },
}

/// Most lapsed workers reaped per round.
const REAP_BATCH: usize = 100;

/// Extends or ends the TTL of the epoch key only while it still holds this
/// pass's value (a flush meanwhile starts another pass elsewhere).
const KEEP_EPOCH: &str = r"
-- KEYS: epoch. ARGV: value, ttl ms (0: persist).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('PERSIST', KEYS[1])
else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
";

const RESTORE: &str = r"
-- KEYS: queue, scheduled. ARGV: pairs of task and delay ms.
-- A task due now goes where the next pop takes it; a later one back to the
-- delayed set, due by this Redis's clock.
local now = now_ms()
for i = 1, #ARGV, 2 do
  local delay = tonumber(ARGV[i + 1])
  if delay <= 0 then redis.call('RPUSH', KEYS[1], ARGV[i])
  else redis.call('ZADD', KEYS[2], now + delay, ARGV[i]) end
end
return #ARGV / 2
";

const PROMOTE: &str = r"
-- KEYS: scheduled, queue. ARGV: batch size.
local due = redis.call('ZRANGE', KEYS[1], '-inf', now_ms(), 'BYSCORE', 'LIMIT', 0, ARGV[1])
for _, task in ipairs(due) do
  redis.call('ZREM', KEYS[1], task)
  redis.call('RPUSH', KEYS[2], task)
end
return #due
";

/// Renews a worker's lease and contends for the housekeeper: taken when
/// free, renewed when held. Returns 1 when this worker is the housekeeper.
const HEARTBEAT: &str = r"
-- KEYS: leases, housekeeper. ARGV: worker id, lease ms, housekeeper ms.
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
if not holder then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Lapsed leases, unless this Redis has been up for less than a lease: then
/// it restarted (or failed over) recently, and a live worker may not yet
/// have had a full lease to renew; its deadline, kept in the AOF as an
/// absolute time, would make it look dead.
const LAPSED: &str = r"
-- KEYS: leases. ARGV: lease ms, batch size.
local info = redis.call('INFO', 'server')
local up = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
if up and up * 1000 < tonumber(ARGV[1]) then return {} end
return redis.call('ZRANGE', KEYS[1], '-inf', now_ms(), 'BYSCORE', 'LIMIT', 0, ARGV[2])
";

const REAP: &str = r"
-- KEYS: leases, processing, queue, housekeeper. ARGV: worker id, force.
-- Forced (the worker's own hand-back at shutdown), it also gives up the
-- housekeeper, so the next heartbeat elsewhere takes it at once.
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] ~= '1' and deadline and tonumber(deadline) > now_ms() then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') do n = n + 1 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '1' and redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return n
";

const RETRY_LATER: &str = r"
-- KEYS: processing, scheduled. ARGV: task, delay ms.
-- A copy this worker no longer holds (a reaper handed it on) is not
-- scheduled: that would make a second copy.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
";

const RETURN_HELD: &str = r"
-- KEYS: processing, queue. ARGV: tasks.
local n = 0
for _, task in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, task) == 1 then
    redis.call('RPUSH', KEYS[2], task)
    n = n + 1
  end
end
return n
";

/// GCRA (the token bucket's equivalent in one number), by Redis's clock,
/// so every API replica shares a subject's budget. The key holds the
/// "theoretical arrival time" `tat`: when the bucket would be full again.
/// Taking `n` moves it `n` intervals later; allowed while that stays within
/// `burst` intervals of now. Integers in µs: doubles hold them exactly
/// (below 2^53), and `%d` writes them without an exponent.
const RATE: &str = r"
-- KEYS: the subject's key. ARGV: interval µs, burst, n.
-- Returns 0 when taken, else the µs to wait until it would be.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[3]) * interval
local allowed_at = new_tat - tonumber(ARGV[2]) * interval
if allowed_at > now then return allowed_at - now end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return 0
";

/// The queue operations both binaries use.
#[derive(Clone)]
pub struct Queue {
    conn: SharedConnection,
    keys: Keys,
    keep_epoch: Script,
    restore: Script,
    promote: Script,
    heartbeat: Script,
    lapsed: Script,
    reap: Script,
    retry_later: Script,
    return_held: Script,
    rate: Script,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("keys", &self.keys).finish()
    }
}

impl Queue {
    /// Operations on the keys under `prefix`.
    pub fn new(connector: Connector, prefix: &str) -> Self {
        Self {
            conn: SharedConnection::new(connector),
            keys: Keys::new(prefix),
            keep_epoch: Script::new(KEEP_EPOCH),
            restore: Script::new(&format!("{NOW_MS}{RESTORE}")),
            promote: Script::new(&format!("{NOW_MS}{PROMOTE}")),
            heartbeat: Script::new(&format!("{NOW_MS}{HEARTBEAT}")),
            lapsed: Script::new(&format!("{NOW_MS}{LAPSED}")),
            reap: Script::new(&format!("{NOW_MS}{REAP}")),
            retry_later: Script::new(&format!("{NOW_MS}{RETRY_LATER}")),
            return_held: Script::new(RETURN_HELD),
            rate: Script::new(RATE),
        }
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn conn(&self) -> Result<shared::Conn, QueueError> {
        Ok(self.conn.get().await?)
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Checks that Redis takes a write of a key under the prefix's hash
    /// tag: `SET {p}:ready <now> PX 10000`. Fails where the queue's writes
    /// would: on a replica (`READONLY`), on a Cluster node that does not
    /// own the slot (`MOVED`), on a Redis out of memory. Such an answer
    /// also replaces the shared connection, so the next command goes to
    /// the current primary.
    pub async fn probe_write(&self) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.keys.ready())
            .arg(std::process::id())
            .arg("PX")
            .arg(10_000)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes `n` from `subject`'s rate-limit budget: a bucket of `burst`
    /// refilled one every `interval`, shared by every process using this
    /// Redis. `None` when taken; else how long until it could be (nothing
    /// taken). One script, one round trip.
    pub async fn take_rate(
        &self,
        subject: &str,
        interval: Duration,
        burst: u32,
        n: u32,
    ) -> Result<Option<Duration>, QueueError> {
        let mut conn = self.conn().await?;
        let wait_us: u64 = self
            .rate
            .key(self.keys.rate(subject))
            .arg(
                u64::try_from(interval.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg(burst)
            .arg(n)
            .invoke_async(&mut conn)
            .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us)))
    }

    /// Pushes tasks straight onto the queue in one round trip (requeue
    /// from the DLQ, tests).
    pub async fn push(&self, raw: &[String]) -> Result<(), QueueError> {
        if raw.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        redis::cmd("LPUSH")
            .arg(self.keys.queue())
            .arg(raw)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Puts tasks at the far end of the queue, next to be popped, in one
    /// round trip: the reconciler's pushes, for jobs that already waited.
    pub async fn push_next(&self, raw: &[String]) -> Result<(), QueueError> {
        if raw.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        redis::cmd("RPUSH")
            .arg(self.keys.queue())
            .arg(raw)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Puts back tasks Redis lost, each with how long until it is due: due
    /// ones next to be popped, later ones in the delayed set. One script.
    pub async fn restore(&self, tasks: &[(String, Duration)]) -> Result<(), QueueError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut invocation = self.restore.prepare_invoke();
        invocation.key(self.keys.queue()).key(self.keys.scheduled());
        for (task, due_in) in tasks {
            invocation
                .arg(task)
                .arg(u64::try_from(due_in.as_millis()).unwrap_or(u64::MAX));
        }
        let mut conn = self.conn().await?;
        invocation.invoke_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Whether the epoch key is missing: this Redis lost everything since a
    /// worker last re-pushed the waiting jobs (or never had them).
    pub async fn epoch_missing(&self) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let exists: bool = redis::cmd("EXISTS")
            .arg(self.keys.epoch())
            .query_async(&mut conn)
            .await?;
        Ok(!exists)
    }

    /// Takes the epoch for a re-push pass, as `value`, for `ttl` (renewed
    /// with [`Queue::keep_epoch`] while the pass runs, so that if its worker
    /// dies another one takes over). `false` when another worker has it.
    pub async fn claim_epoch(&self, value: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.epoch())
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Renews the epoch taken as `value` for `ttl`, or, with `None`, keeps
    /// it for good (the pass is done). `false` when the key no longer holds
    /// `value` (Redis lost it again; another pass is under way).
    pub async fn keep_epoch(&self, value: &str, ttl: Option<Duration>) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let ms = ttl.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let kept: i64 = self
            .keep_epoch
            .key(self.keys.epoch())
            .arg(value)
            .arg(ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(kept == 1)
    }

    /// Redis's `maxmemory-policy` when it may evict keys (anything but
    /// `noeviction`), read from `INFO memory` (which managed services
    /// allow where `CONFIG GET` is disabled).
    pub async fn eviction_policy(&self) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn().await?;
        // One text from a server; on a Cluster, one per node.
        let info: redis::Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let mut texts = Vec::new();
        collect_texts(&info, &mut texts);
        Ok(texts
            .iter()
            .flat_map(|text| text.lines())
            .filter_map(|l| l.trim().strip_prefix("maxmemory_policy:"))
            .find(|policy| *policy != NOEVICTION)
            .map(str::to_owned))
    }

    /// A dedicated connection for blocking pops, whose response timeout
    /// outlasts the pop's own timeout. (On a Cluster, a connection of its
    /// own too: a blocked `BLMOVE` holds up the commands queued behind it
    /// to the same node.)
    pub async fn popper(&self, block: Duration) -> Result<Connection, QueueError> {
        Ok(self
            .conn
            .connector()
            .open(block + Duration::from_secs(5))
            .await?)
    }

    /// Whether `e` means the connection that answered it should be
    /// replaced (broken, or its server no longer takes writes: `READONLY`,
    /// `MOVED`), for callers holding a connection of their own (the
    /// popper).
    pub fn breaks_connection(e: &QueueError) -> bool {
        match e {
            QueueError::Redis(e) => shared::breaks_connection(e),
            _ => false,
        }
    }

    /// Moves the oldest ready task into `worker`'s processing list and returns
    /// it, waiting up to `block`. The task stays in Redis until acknowledged,
    /// so a crash after this call loses nothing.
    pub async fn pop(
        &self,
        conn: &mut Connection,
        worker: &str,
        block: Duration,
    ) -> Result<Option<String>, QueueError> {
        Ok(redis::cmd("BLMOVE")
            .arg(self.keys.queue())
            .arg(self.keys.processing(worker))
            .arg("RIGHT")
            .arg("LEFT")
            .arg(block.as_secs_f64())
            .query_async(conn)
            .await?)
    }

    /// Everything in `worker`'s processing list.
    pub async fn held_by(&self, worker: &str) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("LRANGE")
            .arg(self.keys.processing(worker))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?)
    }

    /// Moves one copy of each of `tasks` from `worker`'s processing list to
    /// the head of the queue, each move atomic; a task no longer in the list
    /// is skipped. Returns how many moved.
    pub async fn return_held(&self, worker: &str, tasks: &[String]) -> Result<usize, QueueError> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let n: i64 = self
            .return_held
            .key(self.keys.processing(worker))
            .key(self.keys.queue())
            .arg(tasks)
            .invoke_async(&mut conn)
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Removes a finished task from `worker`'s processing list.
    pub async fn ack(&self, worker: &str, raw: &str) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::cmd("LREM")
            .arg(self.keys.processing(worker))
            .arg(1)
            .arg(raw)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Moves a held task to the delayed set, due `delay` from now by
    /// Redis's clock, in one script: it is never in neither place. `false`
    /// when this worker's list no longer held it (a reaper handed it on), and
    /// nothing was scheduled.
    pub async fn retry_later(
        &self,
        worker: &str,
        raw: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let moved: i64 = self
            .retry_later
            .key(self.keys.processing(worker))
            .key(self.keys.scheduled())
            .arg(raw)
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await?;
        Ok(moved == 1)
    }

    /// Moves a held task that cannot be parsed to the poison list.
    pub async fn poison(&self, worker: &str, raw: &str) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(self.keys.poison())
            .arg(raw)
            .ignore()
            .cmd("LREM")
            .arg(self.keys.processing(worker))
            .arg(1)
            .arg(raw)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Moves up to `batch` tasks due by Redis's clock from the delayed set to
    /// the queue. Atomic, so any number of workers may run it at once (the
    /// housekeeper, and one that lost the role without knowing it yet).
    pub async fn promote_due(&self, batch: usize) -> Result<usize, QueueError> {
        let mut conn = self.conn().await?;
        Ok(self
            .promote
            .key(self.keys.scheduled())
            .key(self.keys.queue())
            .arg(batch)
            .invoke_async(&mut conn)
            .await?)
    }

    /// The L1 claim: `SET dedup NX GET EX ttl`. Passes when the key is free
    /// or already held by this same job (a retry or a redelivery).
    pub async fn claim_l1(&self, task: &Task, ttl: Duration) -> Result<L1Claim, QueueError> {
        let mut conn = self.conn().await?;
        let job = task.job_id.to_string();
        let prev: Option<String> = redis::cmd("SET")
            .arg(self.keys.dedup(&task.idempotency_key))
            .arg(&job)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await?;
        Ok(match prev {
            None => L1Claim::Held,
            Some(holder) if holder == job => L1Claim::Held,
            Some(holder) => L1Claim::Duplicate {
                holder: holder.parse().ok(),
            },
        })
    }

    /// Registers `worker` and renews its lease for `lease` from now, by
    /// Redis's clock, and contends for the housekeeper: `true` when
    /// `worker` is it (took it, or renewed it), for two thirds of `lease`.
    /// Beating every third of a lease, a housekeeper keeps the role through
    /// one missed beat, and a lost one is replaced within one lease.
    pub async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let leads: i64 = self
            .heartbeat
            .key(self.keys.leases())
            .key(self.keys.housekeeper())
            .arg(worker)
            .arg(lease_ms)
            .arg((lease_ms / 3 * 2).max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(leads == 1)
    }

    /// The id of the worker that is the housekeeper, if any is.
    pub async fn housekeeper(&self) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("GET")
            .arg(self.keys.housekeeper())
            .query_async(&mut conn)
            .await?)
    }

    /// Publishes the depths the housekeeper counted, for `ttl`.
    pub async fn publish_depths(&self, depths: &Depths, ttl: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.keys.depths())
            .arg(format!(
                "{} {} {}",
                depths.ready, depths.scheduled, depths.processing
            ))
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The depths the housekeeper last published; `None` when there are
    /// none (no housekeeper for a while, or Redis lost them).
    pub async fn published_depths(&self) -> Result<Option<Depths>, QueueError> {
        let mut conn = self.conn().await?;
        let text: Option<String> = redis::cmd("GET")
            .arg(self.keys.depths())
            .query_async(&mut conn)
            .await?;
        let Some(text) = text else { return Ok(None) };
        let mut numbers = text.split(' ').map(str::parse::<u64>);
        match (
            numbers.next(),
            numbers.next(),
            numbers.next(),
            numbers.next(),
        ) {
            (Some(Ok(ready)), Some(Ok(scheduled)), Some(Ok(processing)), None) => {
                Ok(Some(Depths {
                    ready,
                    scheduled,
                    processing,
                }))
            }
            _ => Err(QueueError::Unexpected(format!(
                "{} holds {text:?}, not three counts",
                self.keys.depths()
            ))),
        }
    }

    /// Hands the tasks of workers whose lease has lapsed back to the queue,
    /// reading only lapsed leases (so its cost does not grow with the number
    /// of live workers). Each move re-checks the lease in the same script as
    /// the move, so any number of reapers may run at once and a worker that
    /// renewed meanwhile is never robbed. Reaps nothing while Redis has been
    /// up for less than `lease` (see [`LAPSED`]). Returns how many tasks
    /// were handed back.
    pub async fn reap_dead(&self, me: &str, lease: Duration) -> Result<usize, QueueError> {
        let mut conn = self.conn().await?;
        let lapsed: Vec<String> = self
            .lapsed
            .key(self.keys.leases())
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .arg(REAP_BATCH)
            .invoke_async(&mut conn)
            .await?;
        let mut moved = 0;
        for worker in lapsed.iter().filter(|w| w.as_str() != me) {
            let n: i64 = self.invoke_reap(&mut conn, worker, false).await?;
            moved += usize::try_from(n).unwrap_or(0);
        }
        Ok(moved)
    }

    /// On shutdown: hands back everything `worker` still holds, deregisters
    /// it and, if it is the housekeeper, gives that up.
    pub async fn hand_back(&self, worker: &str) -> Result<usize, QueueError> {
        let mut conn = self.conn().await?;
        let n = self.invoke_reap(&mut conn, worker, true).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn invoke_reap(
        &self,
        conn: &mut shared::Conn,
        worker: &str,
        force: bool,
    ) -> Result<i64, QueueError> {
        Ok(self
            .reap
            .key(self.keys.leases())
            .key(self.keys.processing(worker))
            .key(self.keys.queue())
            .key(self.keys.housekeeper())
            .arg(worker)
            .arg(if force { "1" } else { "0" })
            .invoke_async(conn)
            .await?)
    }

    /// Lengths of the ready queue, the delayed set and all processing lists:
    /// one command per registered worker, so only the housekeeper counts
    /// (see [`Queue::publish_depths`]).
    pub async fn depths(&self) -> Result<Depths, QueueError> {
        let mut conn = self.conn().await?;
        let workers: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.leases())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(self.keys.queue());
        pipe.cmd("ZCARD").arg(self.keys.scheduled());
        for w in &workers {
            pipe.cmd("LLEN").arg(self.keys.processing(w));
        }
        let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(Depths {
            ready: lens.first().copied().unwrap_or(0),
            scheduled: lens.get(1).copied().unwrap_or(0),
            processing: lens.iter().skip(2).sum(),
        })
    }
}

/// The text replies in `value` (a Cluster answers `INFO` with one per
/// node, keyed by node).
fn collect_texts(value: &redis::Value, out: &mut Vec<String>) {
    use redis::Value;
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|v| collect_texts(v, out));
        }
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, out)),
        _ => {}
    }
}

/// Queue lengths, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depths {
    /// Tasks waiting in the ready queue.
    pub ready: u64,
    /// Tasks waiting for a retry.
    pub scheduled: u64,
    /// Tasks held by workers.
    pub processing: u64,
}
