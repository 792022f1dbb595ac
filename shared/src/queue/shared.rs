//! One multiplexed Redis connection shared by every caller in the process.
//!
//! A deadpool object is held by one caller at a time, and deadpool-redis
//! checks each object out with an `UNWATCH`+`PING` round trip. At
//! saturation that doubled the round trips of `POST /addJob` and gave every
//! request its own `write`. A [`MultiplexedConnection`] is built to be
//! shared: clones feed one pipeline, and commands from concurrent callers
//! leave in one `write`. So callers clone the one connection, and the pool
//! only opens (with its timeouts) a replacement when that connection is
//! found broken.
//!
//! Broken means: a command failed on I/O, timed out, or Redis asked for a
//! reconnect. The failing command's error still reaches its caller (nothing
//! is retried here: a script whose reply was lost may have run), and the
//! next command gets a new connection.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use deadpool_redis::Pool;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// The process's shared connection, opened through `pool` when needed.
#[derive(Clone)]
pub(crate) struct SharedConnection {
    pool: Pool,
    current: Arc<Mutex<Current>>,
}

/// The connection callers get now, if one is open, and its generation:
/// bumped when it is discarded, so a handle on an older connection can never
/// discard a newer one.
#[derive(Default)]
struct Current {
    generation: u64,
    conn: Option<MultiplexedConnection>,
}

impl SharedConnection {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: Arc::default(),
        }
    }

    /// A handle on the shared connection, opening one if there is none.
    pub(crate) async fn get(&self) -> Result<Conn, deadpool_redis::PoolError> {
        {
            let current = self.lock();
            if let Some(inner) = &current.conn {
                return Ok(self.handle(current.generation, inner.clone()));
            }
        }
        // Detached from the pool: it is ours for as long as it works.
        let opened = deadpool_redis::Connection::take(self.pool.get().await?);
        let mut current = self.lock();
        // Another caller may have opened one meanwhile; keep the first, so
        // every caller converges on one connection.
        let inner = current.conn.get_or_insert(opened).clone();
        Ok(self.handle(current.generation, inner))
    }

    fn handle(&self, generation: u64, inner: MultiplexedConnection) -> Conn {
        Conn {
            inner,
            generation,
            owner: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        // The guarded value is plain handles; a panic elsewhere cannot leave
        // it half-written.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets connection `generation` if it is still the current one.
    fn discard(&self, generation: u64) {
        let mut current = self.lock();
        if current.generation == generation && current.conn.take().is_some() {
            current.generation += 1;
            tracing::warn!("Redis connection broken; the next command opens a new one");
        }
    }
}

/// A clone of the shared connection that reports a broken connection back.
pub(crate) struct Conn {
    inner: MultiplexedConnection,
    generation: u64,
    owner: SharedConnection,
}

impl Conn {
    fn observe<T>(&self, result: &Result<T, RedisError>) {
        if let Err(e) = result
            && breaks_connection(e)
        {
            self.owner.discard(self.generation);
        }
    }
}

/// Whether `e` means the connection it came from should not be used again.
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
