//! The Postgres store: the L2 claim (the authority on "at most one effect per
//! key"), job states, duplicates, the dead-letter table and worker leases.
//!
//! # Layout
//!
//! - this module: the pool, errors, migrations and the shared record types;
//! - [`acceptance`]: the API records each accepted job (its key's row,
//!   `queued`, with the task) before it answers, grouped into one statement
//!   per batch;
//! - [`claims`]: the attempt's life on its key's row: claim (which takes a
//!   fencing token), `sending`, `sent`, `retrying`, dead-letter, duplicate;
//! - `dead_letters`: listing, discarding and requeueing DLQ entries;
//! - `jobs`: a job's state as clients read it;
//! - [`leases`]: worker leases on the database clock, and the sweeper that
//!   resolves rows whose holder lost its lease;
//! - [`retention`]: pruning finished jobs' personal data (`RETENTION_DAYS`);
//! - [`reconcile`]: the accepted jobs still waiting for an attempt, for the
//!   reconciler that puts back on the queue whatever Redis lost.
//!
//! Every write for an attempt is conditional on the attempt's fencing
//! token (`deliveries.fence`); `docs/exactly-once.md` says why each
//! transition is safe.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::NoTls;

use crate::domain::JobId;

pub mod acceptance;
pub mod claims;
mod dead_letters;
mod jobs;
pub mod leases;
pub mod reconcile;
pub mod retention;

pub use acceptance::{AcceptError, Accepted, Acceptor, Submission};
pub use claims::{Claim, Fence};
pub use leases::Swept;
pub use reconcile::{WaitingCursor, WaitingPage};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory lock id held while migrating, so an API and five workers starting
/// together apply migrations once, one after another. ("sendonce" in ASCII.)
const MIGRATION_LOCK_ID: i64 = 0x73656e646f6e6365;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("could not get a Postgres connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("a Postgres statement failed")]
    Postgres(#[from] tokio_postgres::Error),
    /// Applying migrations failed.
    #[error("applying migrations failed")]
    Migration(#[from] refinery::Error),
    /// The connection settings were unusable.
    #[error("invalid Postgres configuration: {0}")]
    Config(String),
    /// A stored row did not parse back into a domain value.
    #[error("a stored row is corrupt: {0}")]
    Corrupt(String),
}

/// Requeueing dead-letter entries failed; nothing was requeued by the
/// failing batch.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError<E> {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Pushing the tasks onto the queue failed.
    #[error("could not push the requeued tasks")]
    Push(#[source] E),
}

/// Opens a pool. Connections are made lazily; call [`Store::ping`] to check.
/// Every session runs with `synchronous_commit = on`.
pub fn connect(url: &SecretString, max_size: usize) -> Result<Pool, StoreError> {
    let mut pg: tokio_postgres::Config = url
        .expose_secret()
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
    // The fence must survive a server crash whatever the server's default:
    // a `sending` lost to `synchronous_commit = off` would let a redelivered
    // task send again without anyone knowing.
    let options = match pg.get_options() {
        Some(given) => format!("{given} -c synchronous_commit=on"),
        None => "-c synchronous_commit=on".to_owned(),
    };
    pg.options(&options);
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

/// Why a task is in the dead-letter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Permanently refused, or out of attempts.
    Failed,
    /// The outcome of a send is unknown (the ambiguous window).
    Uncertain,
}

impl std::str::FromStr for DeadReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "failed" => Ok(Self::Failed),
            "uncertain" => Ok(Self::Uncertain),
            other => Err(format!("`{other}` is not `failed` or `uncertain`")),
        }
    }
}

impl DeadReason {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Uncertain => "uncertain",
        }
    }
}

/// Which dedup layer caught a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupLayer {
    /// The Redis `SET NX` fast path.
    L1,
    /// The Postgres unique claim.
    L2,
}

impl DedupLayer {
    /// The stored word and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L1 => "l1",
            Self::L2 => "l2",
        }
    }
}

/// Everything a DLQ entry records about the failure.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// Why it is dead.
    pub reason: DeadReason,
    /// What went wrong, for an operator.
    pub error: &'a str,
    /// The last SMTP reply, if the server gave one.
    pub smtp_reply: Option<&'a str>,
}

/// A job's state as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    /// The job.
    pub job_id: JobId,
    /// Its key.
    pub idempotency_key: String,
    /// `queued`, `processing`, `retrying`, `sent`, `duplicate`, `failed` or
    /// `uncertain`.
    pub status: String,
    /// SMTP attempts made.
    pub attempts: i32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the next attempt is due, while retrying.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the API accepted the job.
    pub created_at: Option<DateTime<Utc>>,
    /// When its state last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// When the server accepted the message.
    pub sent_at: Option<DateTime<Utc>>,
}

/// One dead-letter entry as the API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FailedJob {
    /// The entry's id (used to retry or discard it).
    pub id: i64,
    /// The job.
    pub job_id: JobId,
    /// Its key.
    pub idempotency_key: String,
    /// Recipient.
    pub to: Option<String>,
    /// Subject line.
    pub subject: Option<String>,
    /// `failed` or `uncertain`.
    pub reason: String,
    /// What went wrong.
    pub error: String,
    /// The last SMTP reply, if any.
    pub smtp_reply: Option<String>,
    /// SMTP attempts made.
    pub attempts: i32,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

/// Which dead-letter entries a listing wants.
#[derive(Debug, Clone, Default)]
pub struct FailedFilter {
    /// Only entries with this reason.
    pub reason: Option<DeadReason>,
    /// Only entries dead-lettered at or after this instant.
    pub since: Option<DateTime<Utc>>,
}

/// Which dead-letter entries to requeue.
#[derive(Debug, Clone)]
pub enum RequeueSelection {
    /// These entry ids.
    Ids(Vec<i64>),
    /// Every entry, or every entry with this reason.
    All(Option<DeadReason>),
}

/// Handle to the Postgres store.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool, for code that needs its own queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checks that Postgres answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Applies pending migrations under an advisory lock, so concurrent
    /// start-ups serialise instead of racing on the schema history table.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        self.migrate_to(refinery::Target::Latest).await
    }

    /// Applies migrations up to `target` (upgrade tests start from an older
    /// schema this way), under the same lock as [`Store::migrate`].
    pub async fn migrate_to(&self, target: refinery::Target) -> Result<usize, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_ID])
            .await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let result = embedded::migrations::runner()
            .set_target(target)
            .run_async(client)
            .await;
        // Unlock even on failure; the session may go back to the pool.
        conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_ID])
            .await?;
        Ok(result?.applied_migrations().len())
    }
}
