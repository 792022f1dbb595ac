//! Readiness: whether Redis and Postgres answer in time. The API's and the
//! worker's `/readyz` both ask [`check`], so they agree on what "ready"
//! means.

use std::time::Duration;

use crate::queue::Queue;
use crate::store::Store;

/// How long a dependency may take to answer a readiness probe: short, so a
/// probe answers before the orchestrator's own probe timeout.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The dependencies that did not answer within [`TIMEOUT`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} did not answer within {TIMEOUT:?}", .down.join(" and "))]
pub struct NotReady {
    /// `"redis"` and/or `"postgres"`.
    pub down: Vec<&'static str>,
}

/// Pings Redis and Postgres concurrently, each bounded by [`TIMEOUT`]. A
/// broken connection is replaced on the next use (a probe is a use), so
/// readiness recovers by itself once a dependency is back.
pub async fn check(queue: &Queue, store: &Store) -> Result<(), NotReady> {
    let (redis, postgres) = tokio::join!(
        tokio::time::timeout(TIMEOUT, queue.ping()),
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
