//! One multiplexed Redis connection shared by every caller in the process.
//!
//! A pooled connection is held by one caller at a time, and deadpool-redis
//! checked each one out with an `UNWATCH`+`PING` round trip. At saturation
//! that doubled the round trips of `POST /addJob` and gave every request its
//! own `write`. A multiplexed connection is built to be shared: clones feed
//! one pipeline, and commands from concurrent callers leave in one `write`.
//! So callers clone the one connection, and a replacement is opened (one
//! caller opens it, the others wait for it) only when that connection is
//! found broken.
//!
//! Broken means: a command failed on I/O, timed out, Redis asked for a
//! reconnect, or the server is no longer the one to write to: `READONLY`
//! (it was demoted to a replica, e.g. by a Sentinel failover), `MOVED` (on
//! a plain connection to a Cluster node that lost the slot) or
//! `MASTERDOWN`. The failing command's error still reaches its caller
//! (nothing is retried here: a script whose reply was lost may have run),
//! and the next command gets a new connection, which through Sentinel asks
//! the sentinels again for the primary.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use tokio::time::Instant;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use super::connect::{Connection, Connector};

/// Bound on every command of the shared connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The process's shared connection, opened through `connector` when needed.
#[derive(Clone)]
pub(crate) struct SharedConnection {
    connector: Connector,
    current: Arc<Mutex<Current>>,
    /// Held while a connection is being opened, so that callers arriving
    /// meanwhile wait for it instead of each opening their own. Holds when
    /// and why the last attempt failed: callers that waited for that
    /// attempt share its failure instead of each trying again in turn (a
    /// Redis that does not answer would otherwise cost the last of N
    /// waiters N connect timeouts).
    opening: Arc<tokio::sync::Mutex<Option<(Instant, RedisError)>>>,
}

/// The connection callers get now, if one is open, and its generation:
/// bumped when it is discarded, so a handle on an older connection can never
/// discard a newer one.
#[derive(Default)]
struct Current {
    generation: u64,
    conn: Option<Connection>,
}

impl SharedConnection {
    pub(crate) fn new(connector: Connector) -> Self {
        Self {
            connector,
            current: Arc::default(),
            opening: Arc::default(),
        }
    }

    /// The connector, for connections of their own (blocking pops).
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// A handle on the shared connection, opening one if there is none.
    pub(crate) async fn get(&self) -> Result<Conn, RedisError> {
        if let Some(conn) = self.existing() {
            return Ok(conn);
        }
        let asked = Instant::now();
        let mut last_failure = self.opening.lock().await;
        // Whoever held the lock before may have opened one, or failed to
        // while this caller waited.
        if let Some(conn) = self.existing() {
            return Ok(conn);
        }
        if let Some((at, e)) = &*last_failure
            && *at >= asked
        {
            return Err(e.clone());
        }
        let opened = match self.connector.open(RESPONSE_TIMEOUT).await {
            Ok(opened) => opened,
            Err(e) => {
                *last_failure = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        let mut current = self.lock();
        let inner = current.conn.get_or_insert(opened).clone();
        Ok(self.handle(current.generation, inner))
    }

    fn existing(&self) -> Option<Conn> {
        let current = self.lock();
        current
            .conn
            .as_ref()
            .map(|inner| self.handle(current.generation, inner.clone()))
    }

    fn handle(&self, generation: u64, inner: Connection) -> Conn {
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
    fn discard(&self, generation: u64, cause: &RedisError) {
        let mut current = self.lock();
        if current.generation == generation && current.conn.take().is_some() {
            current.generation += 1;
            tracing::warn!(
                error = %cause,
                "Redis connection broken or no longer writable; the next command opens a new one"
            );
        }
    }
}

/// A clone of the shared connection that reports a broken connection back.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Connection,
    generation: u64,
    owner: SharedConnection,
}

impl Conn {
    fn observe(&self, result: &Result<Value, RedisError>) {
        match result {
            Err(e) if breaks_connection(e) => self.owner.discard(self.generation, e),
            // Server errors arrive as values; the caller's `query_async`
            // turns them into errors after this.
            Ok(value) => self.observe_value(value),
            Err(_) => {}
        }
    }

    fn observe_values(&self, result: &Result<Vec<Value>, RedisError>) {
        match result {
            Err(e) if breaks_connection(e) => self.owner.discard(self.generation, e),
            Ok(values) => values.iter().for_each(|v| self.observe_value(v)),
            Err(_) => {}
        }
    }

    fn observe_value(&self, value: &Value) {
        if let Value::ServerError(e) = value
            && e.kind().is_some_and(refuses_writes)
        {
            self.owner
                .discard(self.generation, &RedisError::from(e.clone()));
        }
    }
}

/// Whether `e` means the connection it came from should not be used again:
/// it is broken, or its server no longer takes our writes (a demoted
/// primary answers `READONLY`, a Cluster node that lost the slot `MOVED`).
pub(crate) fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), ErrorKind::Server(kind) if refuses_writes(kind))
}

/// Server errors that mean this server is not the one to write to.
fn refuses_writes(kind: ServerErrorKind) -> bool {
    matches!(
        kind,
        ServerErrorKind::ReadOnly | ServerErrorKind::Moved | ServerErrorKind::MasterDown
    )
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
            self.observe_values(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
