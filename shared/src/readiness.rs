//! Readiness: whether Redis and Postgres answer in time. The API's and the
//! worker's `/readyz` both ask [`check`], so they agree on what "ready"
//! means; both also report [`warnings`], which do not make them unready.

use std::time::Duration;

use crate::queue::Queue;
use crate::store::Store;

/// How long a dependency may take to answer a readiness probe: short, so a
/// probe answers before the orchestrator's own probe timeout.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The dependencies that did not answer within [`TIMEOUT`] (or, for Redis,
/// refused the probe's write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} did not answer within {TIMEOUT:?}", .down.join(" and "))]
pub struct NotReady {
    /// `"redis"` and/or `"postgres"`.
    pub down: Vec<&'static str>,
}

/// Asks Redis and Postgres concurrently, each bounded by [`TIMEOUT`]. Redis
/// must take a keyed write ([`Queue::probe_write`]), not just answer a
/// `PING`: a demoted primary or the wrong Cluster node answers `PING` but
/// refuses every job. A broken connection (or one to a server that refuses
/// writes) is replaced on the next use (a probe is a use), so readiness
/// recovers by itself once a dependency is back.
pub async fn check(queue: &Queue, store: &Store) -> Result<(), NotReady> {
    let (redis, postgres) = tokio::join!(
        tokio::time::timeout(TIMEOUT, queue.probe_write()),
        tokio::time::timeout(TIMEOUT, store.ping()),
    );
    let down: Vec<&'static str> = [
        ("redis", matches!(redis, Ok(Ok(())))),
        ("postgres", matches!(postgres, Ok(Ok(())))),
    ]
    .into_iter()
    .filter_map(|(name, up)| (!up).then_some(name))
    .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(NotReady { down })
    }
}

/// Gauge: 1 while Redis's `maxmemory-policy` lets it evict keys, else 0.
pub const REDIS_EVICTS_KEYS: &str = "sendonce_redis_evicts_keys";

/// What is wrong without making the process unready: a Redis whose
/// `maxmemory-policy` evicts keys. Evicted tasks are not lost (every
/// accepted job is in Postgres) but wait for the reconciler, up to
/// `RECONCILE_AFTER_MS`. Sets [`REDIS_EVICTS_KEYS`]; an unanswered
/// question is no warning (readiness reports a Redis that is down).
pub async fn warnings(queue: &Queue) -> Vec<String> {
    match tokio::time::timeout(TIMEOUT, queue.eviction_policy()).await {
        Ok(Ok(Some(policy))) => {
            metrics::gauge!(REDIS_EVICTS_KEYS).set(1.0);
            vec![format!(
                "Redis maxmemory-policy is `{policy}`: it may evict queued tasks, which then \
                 wait for the reconciler (RECONCILE_AFTER_MS); set it to `noeviction`"
            )]
        }
        Ok(Ok(None)) => {
            metrics::gauge!(REDIS_EVICTS_KEYS).set(0.0);
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// At start-up: logs each of [`warnings`].
pub async fn warn_at_start(queue: &Queue) {
    metrics::describe_gauge!(
        REDIS_EVICTS_KEYS,
        "1 while Redis's maxmemory-policy may evict keys (tasks then wait for the reconciler)."
    );
    for warning in warnings(queue).await {
        tracing::warn!(%warning, "Redis may lose tasks");
    }
}

/// At start-up: fails when Redis holds a queue laid out in another number
/// of shards than `QUEUE_SHARDS` (see [`Queue::check_layout`]). A Redis
/// that does not answer is only logged: readiness reports it, and the
/// check runs again at the next start.
pub async fn check_layout_at_start(queue: &Queue) -> Result<(), crate::queue::QueueError> {
    match tokio::time::timeout(TIMEOUT, queue.check_layout()).await {
        Ok(Err(e @ crate::queue::QueueError::Layout { .. })) => Err(e),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not check the queue's shard count in Redis");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("could not check the queue's shard count in Redis: no answer");
            Ok(())
        }
        Ok(Ok(())) => Ok(()),
    }
}
