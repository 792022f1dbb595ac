//! The Redis side: the ready queue, per-worker processing lists, the delayed
//! set, worker leases, the L1 dedup keys and the epoch.
//!
//! Redis is the transport, not the record: every accepted job is a row in
//! Postgres first, and the reconciler pushes again whatever Redis loses.
//!
//! # Key layout
//!
//! Keys live under hash tags, so that every script or transaction touches
//! one Redis Cluster slot. A task's keys are in its shard's tag: `{p}` with
//! `QUEUE_SHARDS = 1` (the default, and the layout before sharding), else
//! `{p:i}` with `i` a CRC-32 of the idempotency key modulo the shard count
//! (see [`Keys`]). The fleet's keys are always under `{p}`.
//!
//! | key | type | what |
//! |---|---|---|
//! | `{shard}:queue` | list | ready tasks as pushed, of every priority; the API `LPUSH`es, pops sort them from the right into their priority's and tenant's lists |
//! | `{shard}:tenant:<tenant>` | list | a tenant's ready `normal` tasks, sorted out of the queue; workers take from the right |
//! | `{shard}:high:tenant:<tenant>`, `{shard}:low:tenant:<tenant>` | list | the same for `high` and `low` tasks |
//! | `{shard}:tenants` | list | the tenants whose `normal` lists hold tasks, in the order they are served (see [`Queue::pop`]) |
//! | `{shard}:high:tenants`, `{shard}:low:tenants` | list | the same for `high` and `low` |
//! | `{shard}:priority-turn` | string, no TTL | pops that took a sorted task; its remainder by [`PRIORITY_CYCLE`] says which priority the next pop tries first |
//! | `{shard}:processing:<worker>` | list | tasks a worker holds; removed on acknowledge |
//! | `{shard}:scheduled` | sorted set | tasks waiting for a retry, scored by due time (ms, Redis clock) |
//! | `{shard}:leases` | sorted set | worker ids that may hold tasks in this shard, scored by lease deadline (ms, that node's clock) |
//! | `{shard}:dedup:<key>` | string, EX ttl | L1 claim: the job id that holds the key |
//! | `{shard}:epoch` | string, no TTL | set by the worker that re-pushed the shard's waiting jobs after Redis was found without it (flushed, restarted empty, failed over) |
//! | `{shard}:poison` | list | tasks that do not parse; kept for an operator, never dropped |
//! | `{shard}:ready` | string, PX 10 s | written by every readiness probe, so a probe fails where writes would (a replica, the wrong Cluster node) |
//! | `{p}:shards` | string, no TTL | the shard count the queue was laid out with; a process configured otherwise refuses to start |
//! | `{p}:rate:<sub>` | string, PX until full | the API's rate limit: a token subject's GCRA "theoretical arrival time" (µs, Redis clock) |
//! | `{p}:housekeeper` | string, PX 2/3 lease | the worker elected to do the fleet's housekeeping (retry promotion, queue depths, the epoch check, the reconciler and the sweeper); taken and renewed with the heartbeat |
//! | `{p}:console:<sha256>` | string, PX session | an operator console session (JSON), by the SHA-256 of its cookie; deleted at sign-out |
//! | `{p}:depths` | string, PX 15 s | the queue depths the housekeeper last counted, `ready scheduled processing`, which every other worker exports as its gauges |
//!
//! # Cost per worker
//!
//! An idle worker's Redis commands do not grow with the fleet: a pop per
//! shard per second and one blocking wait, a heartbeat (a lease per shard
//! and the housekeeper contention) every third of a lease, a reap that
//! reads only lapsed leases (per shard) every half lease, and a read of the
//! published depths every 5 s. Only the housekeeper promotes, counts the
//! processing lists and checks the epochs.

use std::time::Duration;

use redis::Script;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{JobId, Priority, Task, Tenant};

/// `maxmemory-policy` values under which Redis never drops a key.
const NOEVICTION: &str = "noeviction";

mod connect;
mod keys;
mod shared;
pub use connect::{Connection, Connector, RedisTls, validate_url};
pub use keys::{Keys, MAX_SHARDS, ShardKeys};
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
    /// Redis holds a queue laid out in another number of shards.
    #[error(
        "QUEUE_SHARDS is {configured}, but this Redis holds a queue laid out in {found} shard(s) \
         ({key}); every process must use the same count, and changing it needs a drain \
         (README: \"Changing the shard count\")"
    )]
    Layout {
        /// This process's `QUEUE_SHARDS`.
        configured: usize,
        /// The count recorded in Redis.
        found: String,
        /// The key that records it.
        key: String,
    },
}

/// Every due time and lease deadline is computed and compared inside a
/// script from Redis's own `TIME`, so workers' clocks never meet.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

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

/// Most ready tasks a pop sorts into their tenants' lists before it takes
/// one (see [`Queue::pop`]).
pub const SORT_BATCH: u64 = 1000;

/// The most pops of its shard a task waits for, from when it is pushed
/// behind `ahead` other ready tasks of that shard while `tenants` tenants
/// (its own included) have ready work there: the pops that sort the tasks
/// ahead of it and it, and then a turn for each tenant ahead of it.
pub fn fair_bound(ahead: u64, tenants: u64) -> u64 {
    (ahead + 1).div_ceil(SORT_BATCH) + tenants.saturating_sub(1)
}

/// The lower priorities' share: of every this many pops of a shard that
/// take a task, one tries `low` first and one `normal` first (then the
/// other lower one, then `high`); the others try `high`, `normal`, `low`
/// in that order. However many `high` tasks keep coming, `normal` and
/// `low` each get at least one pop in this many while they have ready
/// tasks, and `high` at least eight.
pub const PRIORITY_CYCLE: u64 = 10;

/// The most pops of its shard a `high` task waits for, from when it is
/// pushed behind `ahead` other ready tasks of that shard (of any priority)
/// while `tenants` tenants (its own included) have ready `high` work
/// there: [`fair_bound`]'s sorting and tenants' turns, plus the pops of
/// the lower priorities' share among them (two in every
/// [`PRIORITY_CYCLE`], so at most two per eight `high` turns).
pub fn priority_bound(ahead: u64, tenants: u64) -> u64 {
    fair_bound(ahead, tenants) + 2 * tenants.max(1).div_ceil(PRIORITY_CYCLE - 2)
}

/// The most pops of its shard a `normal` or `low` task at the head of its
/// tenant's list waits for while `tenants` tenants of its priority have
/// ready work there, however many `high` tasks are ready: one turn of its
/// priority in every [`PRIORITY_CYCLE`] pops, and a turn for each tenant
/// ahead of it.
pub fn share_bound(tenants: u64) -> u64 {
    PRIORITY_CYCLE * tenants.max(1)
}

/// While idle, a worker runs the pop script (which costs Redis three
/// commands even when there is nothing to sort or take) only once in this
/// many pops, and otherwise waits on the ready queues as before tenants
/// took turns (one command per shard). Tasks already sorted into tenants'
/// lists always have a busy worker taking them (the one that sorted them
/// keeps popping with the script until it finds nothing); if that worker
/// dies, an idle one finds them within this many pops.
pub const IDLE_SWEEP_EVERY: u32 = 5;

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

/// Places tasks by when they are due: one due now is pushed onto the
/// queue with `ARGV[1]` (`LPUSH`, behind the others: the API's hand-off of
/// new jobs; `RPUSH`, next to be popped: tasks a shard lost, which already
/// waited), a later one goes to the delayed set, due by this Redis's clock.
const PLACE: &str = r"
-- KEYS: queue, scheduled. ARGV: the push command, then pairs of task and delay ms.
local now = now_ms()
for i = 2, #ARGV, 2 do
  local delay = tonumber(ARGV[i + 1])
  if delay <= 0 then redis.call(ARGV[1], KEYS[1], ARGV[i])
  else redis.call('ZADD', KEYS[2], now + delay, ARGV[i]) end
end
return (#ARGV - 1) / 2
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

/// One fair pop of a shard: sorts up to a batch of the oldest ready tasks
/// into their priorities' and tenants' lists, then takes the oldest task
/// of the tenant whose turn it is, at the first priority of this pop's
/// order that has one, into the worker's processing list. A tenant is in
/// a priority's turn list exactly while its list at that priority holds
/// tasks. The tenant and the priority are read from the task's JSON
/// (absent: the default tenant, `normal`; a task that does not parse goes
/// with the default tenant's normal ones, and the worker poisons it). The
/// order comes from the shard's turn counter (see [`PRIORITY_CYCLE`]),
/// which counts the pops that took a task.
const FAIR_POP: &str = r"
-- KEYS: queue, processing, turn counter, then the turn lists of high,
-- normal and low. ARGV: the tenant list prefixes of high, normal and low,
-- default tenant, batch, cycle.
local index = {high = 1, low = 3}
for _ = 1, tonumber(ARGV[5]) do
  local task = redis.call('RPOP', KEYS[1])
  if not task then break end
  local ok, decoded = pcall(cjson.decode, task)
  local tenant = ARGV[4]
  local p = 2
  if ok and type(decoded) == 'table' then
    if type(decoded.tenant) == 'string' then tenant = decoded.tenant end
    if type(decoded.priority) == 'string' then p = index[decoded.priority] or 2 end
  end
  if redis.call('LPUSH', ARGV[p] .. tenant, task) == 1 then
    redis.call('RPUSH', KEYS[3 + p], tenant)
  end
end
local cycle = tonumber(ARGV[6])
local turn = tonumber(redis.call('GET', KEYS[3]) or '0') % cycle
local order = {1, 2, 3}
if turn == 0 then order = {3, 2, 1}
elseif turn == math.floor(cycle / 2) then order = {2, 3, 1} end
for _, p in ipairs(order) do
  while true do
    local tenant = redis.call('LPOP', KEYS[3 + p])
    if not tenant then break end
    local list = ARGV[p] .. tenant
    local task = redis.call('RPOP', list)
    if task then
      redis.call('LPUSH', KEYS[2], task)
      if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[3 + p], tenant) end
      redis.call('INCR', KEYS[3])
      return task
    end
  end
end
return false
";

/// Renews a worker's lease in one shard (every shard has its own leases,
/// so that a reap re-checks the lease in the same script as the move).
const LEASE: &str = r"
-- KEYS: leases. ARGV: worker id, lease ms.
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
";

/// Contends for the housekeeper: taken when free, renewed when held.
/// Returns 1 when this worker is the housekeeper.
const HOUSEKEEP: &str = r"
-- KEYS: housekeeper. ARGV: worker id, housekeeper ms.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Gives up the housekeeper if this worker holds it, so the next heartbeat
/// elsewhere takes it at once.
const RESIGN: &str = r"
-- KEYS: housekeeper. ARGV: worker id.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
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
-- KEYS: leases, processing, queue (one shard's). ARGV: worker id, force.
-- Forced: the worker's own hand-back at shutdown.
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] ~= '1' and deadline and tonumber(deadline) > now_ms() then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') do n = n + 1 end
redis.call('ZREM', KEYS[1], ARGV[1])
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

/// A copy of a task in one shard's keys: what a pop hands a worker, and
/// what acknowledging, retrying or poisoning it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Held {
    /// The shard whose lists hold it.
    pub shard: usize,
    /// The task as stored.
    pub raw: String,
}

/// A worker's blocking-pop connection, and the shard its next pop starts at.
pub struct Popper {
    conn: Connection,
    next: usize,
    /// Pops in a row that found nothing (0: the last one found a task).
    idle: u32,
}

impl std::fmt::Debug for Popper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Popper").field("next", &self.next).finish()
    }
}

/// The queue operations both binaries use.
#[derive(Clone)]
pub struct Queue {
    conn: SharedConnection,
    keys: Keys,
    keep_epoch: Script,
    fair_pop: Script,
    place: Script,
    promote: Script,
    lease: Script,
    housekeep: Script,
    resign: Script,
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

/// Milliseconds, saturating, for script arguments.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Queue {
    /// Operations on the keys under `prefix`, in one shard.
    pub fn new(connector: Connector, prefix: &str) -> Self {
        Self::sharded(connector, prefix, 1)
    }

    /// Operations on the keys under `prefix`, spread over `shards` shards
    /// (see [`Keys::sharded`]).
    pub fn sharded(connector: Connector, prefix: &str, shards: u16) -> Self {
        Self {
            conn: SharedConnection::new(connector),
            keys: Keys::sharded(prefix, shards),
            keep_epoch: Script::new(KEEP_EPOCH),
            fair_pop: Script::new(FAIR_POP),
            place: Script::new(&format!("{NOW_MS}{PLACE}")),
            promote: Script::new(&format!("{NOW_MS}{PROMOTE}")),
            lease: Script::new(&format!("{NOW_MS}{LEASE}")),
            housekeep: Script::new(HOUSEKEEP),
            resign: Script::new(RESIGN),
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

    fn shards(&self) -> impl Iterator<Item = (usize, &ShardKeys)> {
        self.keys.shards().iter().enumerate()
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

    /// Records the shard count in Redis (`{p}:shards`) if none is, and
    /// fails if a different one is: processes with different counts would
    /// push and pop under different keys (see README, "Changing the shard
    /// count").
    pub async fn check_layout(&self) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let mine = self.keys.shard_count().to_string();
        let found: Option<String> = redis::cmd("SET")
            .arg(self.keys.layout())
            .arg(&mine)
            .arg("NX")
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        match found {
            Some(found) if found != mine => Err(QueueError::Layout {
                configured: self.keys.shard_count(),
                found,
                key: self.keys.layout(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks that Redis takes a write in every slot the queue uses:
    /// `SET <tag>:ready <pid> PX 10000` for each hash tag. Fails where the
    /// queue's writes would: on a replica (`READONLY`), on a Cluster node
    /// that does not own the slot (`MOVED`), on a Redis out of memory. Such
    /// an answer also replaces the shared connection, so the next command
    /// goes to the current primary.
    pub async fn probe_write(&self) -> Result<(), QueueError> {
        let conn = self.conn().await?;
        let pid = std::process::id();
        let writes = self.keys.ready_keys().map(|key| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(pid)
                    .arg("PX")
                    .arg(10_000)
                    .query_async::<()>(&mut conn)
                    .await
            }
        });
        futures::future::try_join_all(writes).await?;
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

    /// `tasks` grouped by shard, in order within each.
    fn by_shard<'t, T>(
        &self,
        tasks: &'t [T],
        raw: impl Fn(&T) -> &str,
    ) -> Vec<(usize, Vec<&'t T>)> {
        let mut groups: Vec<Vec<&T>> = vec![Vec::new(); self.keys.shard_count()];
        for task in tasks {
            groups[self.keys.shard_of_raw(raw(task))].push(task);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect()
    }

    /// One list command per shard that has tasks, concurrently.
    async fn push_with(&self, command: &str, raw: &[String]) -> Result<(), QueueError> {
        if raw.is_empty() {
            return Ok(());
        }
        let conn = self.conn().await?;
        let pushes = self
            .by_shard(raw, String::as_str)
            .into_iter()
            .map(|(shard, tasks)| {
                let mut conn = conn.clone();
                let mut cmd = redis::cmd(command);
                cmd.arg(self.keys.shard(shard).queue()).arg(tasks);
                async move { cmd.query_async::<()>(&mut conn).await }
            });
        futures::future::try_join_all(pushes).await?;
        Ok(())
    }

    /// Pushes tasks onto their shards' queues, one round trip per shard,
    /// concurrently (the API's hand-off, requeue from the DLQ, tests).
    pub async fn push(&self, raw: &[String]) -> Result<(), QueueError> {
        self.push_with("LPUSH", raw).await
    }

    /// Pushes tasks that are due now onto their shards' queues (`LPUSH`, as
    /// [`Queue::push`]) and scheduled ones into their shards' delayed sets,
    /// due in the time given by this Redis's clock: one round trip per
    /// shard, concurrently (the API's hand-off).
    pub async fn push_due(&self, tasks: &[(String, Duration)]) -> Result<(), QueueError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let conn = self.conn().await?;
        let pushes = self
            .by_shard(tasks, |(raw, _)| raw)
            .into_iter()
            .map(|(shard, tasks)| {
                let mut conn = conn.clone();
                let keys = self.keys.shard(shard);
                let mut invocation = self.place.prepare_invoke();
                let mut cmd = redis::cmd("LPUSH");
                let now = tasks.iter().all(|(_, due_in)| due_in.is_zero());
                if now {
                    cmd.arg(keys.queue());
                    cmd.arg(tasks.iter().map(|(raw, _)| raw).collect::<Vec<_>>());
                } else {
                    invocation
                        .key(keys.queue())
                        .key(keys.scheduled())
                        .arg("LPUSH");
                    for (raw, due_in) in tasks {
                        invocation.arg(raw).arg(millis(*due_in));
                    }
                }
                async move {
                    if now {
                        cmd.query_async::<()>(&mut conn).await
                    } else {
                        invocation.invoke_async::<()>(&mut conn).await
                    }
                }
            });
        futures::future::try_join_all(pushes).await?;
        Ok(())
    }

    /// Puts tasks at the far end of their shards' queues, next to be
    /// popped: the reconciler's pushes, for jobs that already waited.
    pub async fn push_next(&self, raw: &[String]) -> Result<(), QueueError> {
        self.push_with("RPUSH", raw).await
    }

    /// Puts back tasks a shard lost, each with how long until it is due:
    /// due ones next to be popped, later ones in the delayed set. Only the
    /// tasks of `shards` (the ones found without their epoch); one script
    /// per shard. Returns how many it put back.
    pub async fn restore(
        &self,
        tasks: &[(String, Duration)],
        shards: &[usize],
    ) -> Result<usize, QueueError> {
        let mut conn = self.conn().await?;
        let mut restored = 0;
        for (shard, tasks) in self.by_shard(tasks, |(raw, _)| raw) {
            if !shards.contains(&shard) {
                continue;
            }
            restored += tasks.len();
            let keys = self.keys.shard(shard);
            let mut invocation = self.place.prepare_invoke();
            invocation
                .key(keys.queue())
                .key(keys.scheduled())
                .arg("RPUSH");
            for (task, due_in) in tasks {
                invocation.arg(task).arg(millis(*due_in));
            }
            invocation.invoke_async::<()>(&mut conn).await?;
        }
        Ok(restored)
    }

    /// The shards without their epoch key: they lost everything since a
    /// worker last re-pushed their waiting jobs (or never had them).
    pub async fn epoch_missing(&self) -> Result<Vec<usize>, QueueError> {
        let mut conn = self.conn().await?;
        let mut missing = Vec::new();
        for (i, keys) in self.shards() {
            let exists: bool = redis::cmd("EXISTS")
                .arg(keys.epoch())
                .query_async(&mut conn)
                .await?;
            if !exists {
                missing.push(i);
            }
        }
        Ok(missing)
    }

    /// Takes `shard`'s epoch for a re-push pass, as `value`, for `ttl`
    /// (renewed with [`Queue::keep_epoch`] while the pass runs, so that if
    /// its worker dies another one takes over). `false` when another worker
    /// has it.
    pub async fn claim_epoch(
        &self,
        shard: usize,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.shard(shard).epoch())
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl).max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Renews `shard`'s epoch taken as `value` for `ttl`, or, with `None`,
    /// keeps it for good (the pass is done). `false` when the key no longer
    /// holds `value` (the shard lost it again; another pass is under way).
    pub async fn keep_epoch(
        &self,
        shard: usize,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let ms = ttl.map_or(0, |t| millis(t).max(1));
        let kept: i64 = self
            .keep_epoch
            .key(self.keys.shard(shard).epoch())
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
    /// to the same node.) Its first pop starts at a shard chosen at random,
    /// so that a fleet's idle workers wait on every shard.
    pub async fn popper(&self, block: Duration) -> Result<Popper, QueueError> {
        use std::hash::BuildHasher;
        let conn = self
            .conn
            .connector()
            .open(block + Duration::from_secs(5))
            .await?;
        let random = std::collections::hash_map::RandomState::new().hash_one(());
        let next = usize::try_from(random % self.keys.shard_count() as u64).unwrap_or(0);
        Ok(Popper {
            conn,
            next,
            idle: 0,
        })
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

    /// Moves a ready task of a shard into `worker`'s processing list of
    /// that shard and returns it, waiting up to `block`. The task stays in
    /// Redis until acknowledged, so a crash after this call loses nothing.
    ///
    /// Within a shard, priorities come first and tenants take turns within
    /// a priority: a pop first sorts up to [`SORT_BATCH`] of the oldest
    /// tasks of the shard's ready queue into their priorities' and
    /// tenants' lists, then, at the first priority of its turn's order
    /// (`high` first but for the lower ones' share, [`PRIORITY_CYCLE`])
    /// with sorted tasks, takes the oldest task of the tenant at the head
    /// of that priority's turn list and moves that tenant to the end (one
    /// script, [`FAIR_POP`]). A `high` job therefore waits at most
    /// [`priority_bound`] pops of its shard behind any backlog, a lower
    /// one at the head of its list at most [`share_bound`] pops however
    /// many `high` ones keep coming; one tenant's backlog delays another's
    /// job of the same priority by at most [`fair_bound`] pops plus that
    /// share, and each tenant's tasks of one priority keep their order.
    /// Every way back to the queue (a retry promoted, a reaped or handed
    /// back task, a restore or a requeue) goes through the ready queue, so
    /// each task is sorted into its own priority's list by what it says.
    ///
    /// Shards are taken in turn too: each pop starts at the shard after
    /// the last one that gave a task and tries each shard without waiting;
    /// only when none has a task does it wait (`BLMOVE`) on the ready queue
    /// of the last one tried. A busy shard therefore never starves another.
    ///
    /// An idle worker (its last pop found nothing) runs the script only
    /// once in [`IDLE_SWEEP_EVERY`] pops; in the others it takes the oldest
    /// ready task of a shard directly (`LMOVE`, and `BLMOVE` on the last),
    /// so it costs Redis one command per shard per `block`, as before. The
    /// task that wakes it is the oldest of a shard where nothing waited;
    /// from its next pop on it sorts and takes turns again.
    pub async fn pop(
        &self,
        popper: &mut Popper,
        worker: &str,
        block: Duration,
    ) -> Result<Option<Held>, QueueError> {
        let k = self.keys.shard_count();
        let sweep = popper.idle.is_multiple_of(IDLE_SWEEP_EVERY);
        // A failure ends the pop at once, even with other shards left: a
        // move whose reply was lost may have happened, and the caller must
        // then look for it (see the runner's `return_stranded`) before it
        // pops again.
        for i in 0..k {
            let shard = (popper.next + i) % k;
            let keys = self.keys.shard(shard);
            let popped: Option<String> = if sweep {
                let mut invocation = self.fair_pop.key(keys.queue());
                invocation
                    .key(keys.processing(worker))
                    .key(keys.priority_turn());
                for p in Priority::ALL {
                    invocation.key(keys.tenants(p));
                }
                for p in Priority::ALL {
                    invocation.arg(keys.tenant_queue_prefix(p));
                }
                invocation
                    .arg(Tenant::DEFAULT)
                    .arg(SORT_BATCH)
                    .arg(PRIORITY_CYCLE)
                    .invoke_async(&mut popper.conn)
                    .await?
            } else if i + 1 < k {
                redis::cmd("LMOVE")
                    .arg(keys.queue())
                    .arg(keys.processing(worker))
                    .arg("RIGHT")
                    .arg("LEFT")
                    .query_async(&mut popper.conn)
                    .await?
            } else {
                None
            };
            if let Some(raw) = popped {
                popper.next = (shard + 1) % k;
                popper.idle = 0;
                return Ok(Some(Held { shard, raw }));
            }
        }
        let shard = (popper.next + k - 1) % k;
        let keys = self.keys.shard(shard);
        let popped: Option<String> = redis::cmd("BLMOVE")
            .arg(keys.queue())
            .arg(keys.processing(worker))
            .arg("RIGHT")
            .arg("LEFT")
            .arg(block.as_secs_f64())
            .query_async(&mut popper.conn)
            .await?;
        if let Some(raw) = popped {
            popper.next = (shard + 1) % k;
            popper.idle = 0;
            return Ok(Some(Held { shard, raw }));
        }
        popper.next = (popper.next + 1) % k;
        popper.idle = popper.idle.wrapping_add(1);
        Ok(None)
    }

    /// Everything in `worker`'s processing lists.
    pub async fn held_by(&self, worker: &str) -> Result<Vec<Held>, QueueError> {
        let mut conn = self.conn().await?;
        let mut held = Vec::new();
        for (shard, keys) in self.shards() {
            let list: Vec<String> = redis::cmd("LRANGE")
                .arg(keys.processing(worker))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            held.extend(list.into_iter().map(|raw| Held { shard, raw }));
        }
        Ok(held)
    }

    /// Moves one copy of each of `tasks` from `worker`'s processing list to
    /// the head of its shard's queue, each move atomic; a task no longer in
    /// the list is skipped. Returns how many moved.
    pub async fn return_held(&self, worker: &str, tasks: &[Held]) -> Result<usize, QueueError> {
        let mut conn = self.conn().await?;
        let mut moved = 0;
        for (shard, keys) in self.shards() {
            let raw: Vec<&str> = tasks
                .iter()
                .filter(|t| t.shard == shard)
                .map(|t| t.raw.as_str())
                .collect();
            if raw.is_empty() {
                continue;
            }
            let n: i64 = self
                .return_held
                .key(keys.processing(worker))
                .key(keys.queue())
                .arg(raw)
                .invoke_async(&mut conn)
                .await?;
            moved += usize::try_from(n).unwrap_or(0);
        }
        Ok(moved)
    }

    /// Removes a finished task from `worker`'s processing list.
    pub async fn ack(&self, worker: &str, held: &Held) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::cmd("LREM")
            .arg(self.keys.shard(held.shard).processing(worker))
            .arg(1)
            .arg(&held.raw)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Moves a held task to its shard's delayed set, due `delay` from now
    /// by Redis's clock, in one script: it is never in neither place.
    /// `false` when this worker's list no longer held it (a reaper handed
    /// it on), and nothing was scheduled.
    pub async fn retry_later(
        &self,
        worker: &str,
        held: &Held,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let keys = self.keys.shard(held.shard);
        let moved: i64 = self
            .retry_later
            .key(keys.processing(worker))
            .key(keys.scheduled())
            .arg(&held.raw)
            .arg(millis(delay))
            .invoke_async(&mut conn)
            .await?;
        Ok(moved == 1)
    }

    /// Moves a held task that cannot be parsed to its shard's poison list.
    pub async fn poison(&self, worker: &str, held: &Held) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let keys = self.keys.shard(held.shard);
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(keys.poison())
            .arg(&held.raw)
            .ignore()
            .cmd("LREM")
            .arg(keys.processing(worker))
            .arg(1)
            .arg(&held.raw)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Moves up to `batch` tasks per shard due by Redis's clock from the
    /// delayed sets to the queues. Atomic per shard, so any number of
    /// workers may run it at once (the housekeeper, and one that lost the
    /// role without knowing it yet). A shard that fails does not hold up
    /// the others; the first failure is returned after all were tried.
    pub async fn promote_due(&self, batch: usize) -> Result<usize, QueueError> {
        let mut conn = self.conn().await?;
        let mut promoted = 0;
        let mut failed = None;
        for (_, keys) in self.shards() {
            let n: Result<usize, _> = self
                .promote
                .key(keys.scheduled())
                .key(keys.queue())
                .arg(batch)
                .invoke_async(&mut conn)
                .await;
            match n {
                Ok(n) => promoted += n,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(promoted),
        }
    }

    /// The L1 claim: `SET dedup NX GET EX ttl`. Passes when the key is free
    /// or already held by this same job (a retry or a redelivery).
    pub async fn claim_l1(&self, task: &Task, ttl: Duration) -> Result<L1Claim, QueueError> {
        let mut conn = self.conn().await?;
        let job = task.job_id.to_string();
        let prev: Option<String> = redis::cmd("SET")
            .arg(self.keys.dedup(&task.tenant, &task.idempotency_key))
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

    /// Registers `worker` and renews its lease in every shard for `lease`
    /// from now, by each shard's Redis clock, and contends for the
    /// housekeeper: `true` when `worker` is it (took it, or renewed it),
    /// for two thirds of `lease`. Beating every third of a lease, a
    /// housekeeper keeps the role through one missed beat, and a lost one
    /// is replaced within one lease. One script per shard and one for the
    /// housekeeper, concurrently.
    pub async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<bool, QueueError> {
        let conn = self.conn().await?;
        let lease_ms = millis(lease);
        let renewals = self.shards().map(|(_, keys)| {
            let mut conn = conn.clone();
            let mut invocation = self.lease.key(keys.leases());
            invocation.arg(worker).arg(lease_ms);
            async move { invocation.invoke_async::<()>(&mut conn).await }
        });
        let mut contend = self.housekeep.key(self.keys.housekeeper());
        contend.arg(worker).arg((lease_ms / 3 * 2).max(1));
        let mut conn = conn.clone();
        let contend = async move { contend.invoke_async::<i64>(&mut conn).await };
        let (renewed, leads) = tokio::join!(futures::future::try_join_all(renewals), contend);
        renewed?;
        Ok(leads? == 1)
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

    /// Stores an operator console session: `value` under `digest` (the
    /// SHA-256 of its cookie) until `ttl` has passed.
    pub async fn put_console_session(
        &self,
        digest: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.keys.console_session(digest))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl).max(1))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The console session stored under `digest`, if it has not expired or
    /// been ended.
    pub async fn console_session(&self, digest: &str) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("GET")
            .arg(self.keys.console_session(digest))
            .query_async(&mut conn)
            .await?)
    }

    /// Ends the console session stored under `digest` (sign-out).
    pub async fn end_console_session(&self, digest: &str) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        redis::cmd("DEL")
            .arg(self.keys.console_session(digest))
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
        let mut moved = 0;
        for (_, keys) in self.shards() {
            let lapsed: Vec<String> = self
                .lapsed
                .key(keys.leases())
                .arg(millis(lease))
                .arg(REAP_BATCH)
                .invoke_async(&mut conn)
                .await?;
            for worker in lapsed.iter().filter(|w| w.as_str() != me) {
                let n = self.invoke_reap(&mut conn, keys, worker, false).await?;
                moved += usize::try_from(n).unwrap_or(0);
            }
        }
        Ok(moved)
    }

    /// On shutdown: hands back everything `worker` still holds, deregisters
    /// it and, if it is the housekeeper, gives that up.
    pub async fn hand_back(&self, worker: &str) -> Result<usize, QueueError> {
        let mut conn = self.conn().await?;
        let mut moved = 0;
        for (_, keys) in self.shards() {
            let n = self.invoke_reap(&mut conn, keys, worker, true).await?;
            moved += usize::try_from(n).unwrap_or(0);
        }
        self.resign
            .key(self.keys.housekeeper())
            .arg(worker)
            .invoke_async::<()>(&mut conn)
            .await?;
        Ok(moved)
    }

    async fn invoke_reap(
        &self,
        conn: &mut shared::Conn,
        keys: &ShardKeys,
        worker: &str,
        force: bool,
    ) -> Result<i64, QueueError> {
        Ok(self
            .reap
            .key(keys.leases())
            .key(keys.processing(worker))
            .key(keys.queue())
            .arg(worker)
            .arg(if force { "1" } else { "0" })
            .invoke_async(conn)
            .await?)
    }

    /// Lengths of the ready queues, the delayed sets and all processing
    /// lists: per shard, one command per registered worker, so only the
    /// housekeeper counts (see [`Queue::publish_depths`]).
    pub async fn depths(&self) -> Result<Depths, QueueError> {
        let mut conn = self.conn().await?;
        let mut depths = Depths::default();
        for (_, keys) in self.shards() {
            let workers: Vec<String> = redis::cmd("ZRANGE")
                .arg(keys.leases())
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            let mut lists = Vec::new();
            for p in Priority::ALL {
                let tenants: Vec<String> = redis::cmd("LRANGE")
                    .arg(keys.tenants(p))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await?;
                lists.extend(tenants.iter().map(|t| keys.tenant_queue(p, t)));
            }
            let mut pipe = redis::pipe();
            pipe.cmd("ZCARD").arg(keys.scheduled());
            pipe.cmd("LLEN").arg(keys.queue());
            for list in &lists {
                pipe.cmd("LLEN").arg(list);
            }
            for w in &workers {
                pipe.cmd("LLEN").arg(keys.processing(w));
            }
            let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
            let (ready, processing) = lens.split_at(lens.len().min(2 + lists.len()));
            depths.scheduled += ready.first().copied().unwrap_or(0);
            depths.ready += ready.iter().skip(1).sum::<u64>();
            depths.processing += processing.iter().sum::<u64>();
        }
        Ok(depths)
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
