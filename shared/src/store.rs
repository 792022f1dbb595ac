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
//! - [`audit`]: the audit trail of those discards and requeues, written in
//!   the transaction of each;
//! - `jobs`: a job's state as clients read it;
//! - [`leases`]: worker leases on the database clock, and the sweeper that
//!   resolves rows whose holder lost its lease;
//! - [`retention`]: pruning finished jobs' personal data (`RETENTION_DAYS`);
//! - [`reconcile`]: the accepted jobs still waiting for an attempt, for the
//!   reconciler that puts back on the queue whatever Redis lost;
//! - [`webhooks`]: a tenant's webhook endpoints and their delivery logs;
//! - [`suppressions`]: a tenant's suppression list;
//! - [`dispatch`]: webhook deliveries: claiming due ones, recording each
//!   attempt (retry, failing endpoint, resume), the oldest undelivered age;
//! - [`console`]: the operator console's reads (overview, workers, job
//!   search, a job's page, scheduled jobs), each bounded in time;
//! - [`stats`]: `GET /stats`, the jobs in each state by priority, from the
//!   live rows' index and the counters migration 13 keeps.
//!
//! Every write for an attempt is conditional on the attempt's fencing
//! token (`deliveries.fence`); `docs/exactly-once.md` says why each
//! transition is safe.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool::managed::Manager as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{JobId, Metadata};

pub mod acceptance;
pub mod audit;
pub mod claims;
pub mod connection;
pub mod console;
mod dead_letters;
pub mod dispatch;
mod jobs;
pub mod leases;
pub mod outbox;
pub mod reconcile;
pub mod retention;
mod sql;
pub mod stats;
pub mod suppressions;
pub mod webhooks;

pub use acceptance::{AcceptError, Accepted, Acceptor, Submission};
pub use audit::{Actor, AuditAction, AuditEntry, AuditFilter};
pub use claims::{Claim, Fence, Look, Retrying, Sending, Start};
pub use connection::{PgOptions, Pooler};
pub use console::{
    DuplicateEntry, HistoryEntry, JobDetail, JobLookup, JobSummary, Overview, ScheduledJob,
    WorkerStatus,
};
pub use dispatch::{AttemptOutcome, DueDelivery, Recorded};
pub use jobs::Cancel;
pub use leases::Swept;
pub use reconcile::{WaitingCursor, WaitingPage};
pub use stats::{ByPriority, Counts, Stats};
pub use suppressions::{Added, Suppression};
pub use webhooks::{DeliveryAttempt, NewWebhook, Webhook, WebhookDelivery, WebhookPatch};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory lock id held while migrating, so an API and five workers starting
/// together apply migrations once, one after another. ("sendonce" in ASCII.)
const MIGRATION_LOCK_ID: i64 = 0x73656e646f6e6365;

/// Appends " (migration)" to the session's `application_name` (the URL's,
/// if it names one), for the migration's two connections.
const NAME_MIGRATION_SESSION: &str = "SELECT set_config('application_name', \
     left(current_setting('application_name') || ' (migration)', 63), false)";

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
    /// Postgres did not answer within the client-side deadline (its
    /// `statement_timeout` plus a grace): a silent server. Whether the
    /// statement took effect is unknown.
    #[error("Postgres did not answer within {0:?}")]
    Timeout(Duration),
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

/// Opens a pool on a direct connection with the default [`PgOptions`].
/// Connections are made lazily; call [`Store::ping`] to check. Every
/// session runs with `synchronous_commit = on`.
pub fn connect(url: &SecretString, max_size: usize) -> Result<Pool, StoreError> {
    pool(url, &PgOptions::default(), max_size)
}

/// Opens a pool with `options`: TLS as the URL's `sslmode` says, the
/// timeouts, and (with no pooler in between) `synchronous_commit = on` and
/// the `statement_timeout` as session settings.
pub fn pool(url: &SecretString, options: &PgOptions, max_size: usize) -> Result<Pool, StoreError> {
    let (pg, tls) = connection::configure(url.expose_secret(), options)?;
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let create = if options.connect_timeout.is_zero() {
        Duration::from_secs(5)
    } else {
        options.connect_timeout
    };
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(create))
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

/// A recipient the SMTP server refused for good while it accepted others
/// (the message went to those).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RefusedRecipient {
    /// The address, as sent in `RCPT TO`.
    pub recipient: String,
    /// The server's reply, e.g. `550 5.1.1 no such user`.
    pub reply: String,
}

/// A job's state as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    /// The job.
    pub job_id: JobId,
    /// Whose job it is.
    pub tenant: String,
    /// Its key (unique within the tenant).
    pub idempotency_key: String,
    /// `scheduled` (queued, with `send_at` ahead), `queued`, `processing`,
    /// `retrying`, `sent`, `duplicate`, `failed`, `uncertain`, `canceled`
    /// or `suppressed` (every recipient on the suppression list: nothing
    /// was sent).
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
    /// Recipients the server refused for good while it took the message
    /// for the others; absent when none was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_recipients: Vec<RefusedRecipient>,
    /// The job's metadata, as given; empty for a job skipped as a
    /// duplicate, and once retention has removed the task.
    pub metadata: BTreeMap<String, String>,
}

/// One dead-letter entry as the API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FailedJob {
    /// The entry's id (used to retry or discard it).
    pub id: i64,
    /// Whose job it is.
    pub tenant: String,
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
    /// The job's metadata, as given.
    pub metadata: BTreeMap<String, String>,
}

/// Which dead-letter entries a listing wants.
#[derive(Debug, Clone, Default)]
pub struct FailedFilter {
    /// Only entries of this tenant (`None`: every tenant's, for operators).
    pub tenant: Option<crate::domain::Tenant>,
    /// Only entries with this reason.
    pub reason: Option<DeadReason>,
    /// Only entries dead-lettered at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only entries whose metadata holds all of these keys with these
    /// values.
    pub metadata: Option<Metadata>,
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
    pooler: Pooler,
    /// How long the client waits for any one statement's answer.
    deadline: Option<Duration>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .field("pooler", &self.pooler)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Store {
    /// Wraps a pool made by [`connect`]: a direct connection, with the
    /// default timeouts.
    pub fn new(pool: Pool) -> Self {
        Self::with_options(pool, &PgOptions::default())
    }

    /// Wraps a pool made by [`pool`] with the same `options`.
    pub fn with_options(pool: Pool, options: &PgOptions) -> Self {
        Self {
            pool,
            pooler: options.pooler,
            deadline: sql::client_deadline(options.statement_timeout),
        }
    }

    /// Opens a pool of up to `max_size` connections with `options`.
    pub fn connect(
        url: &SecretString,
        options: &PgOptions,
        max_size: usize,
    ) -> Result<Self, StoreError> {
        Ok(Self::with_options(pool(url, options, max_size)?, options))
    }

    /// The pool, for code that needs its own queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checks that Postgres answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        self.bounded(conn.simple_query("SELECT 1")).await?;
        Ok(())
    }

    /// Applies pending migrations under an advisory lock, so concurrent
    /// start-ups serialise instead of racing on the schema history table.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        self.migrate_to(refinery::Target::Latest).await
    }

    /// Applies migrations up to `target` (upgrade tests start from an older
    /// schema this way), under the same lock as [`Store::migrate`].
    ///
    /// The lock is a transaction-level advisory lock, taken in a transaction
    /// kept open on a connection of its own while refinery works on a
    /// second one, and released by that transaction's end: lock and unlock
    /// can never land on different server connections, which a pooler in
    /// transaction mode could otherwise do. Neither connection comes from
    /// the pool (a pool of one would deadlock), and neither has a
    /// statement timeout (a long migration, a long wait for the lock).
    pub async fn migrate_to(&self, target: refinery::Target) -> Result<usize, StoreError> {
        let manager = self.pool.manager();
        let mut lock = manager.create().await?;
        if self.pooler == Pooler::None {
            // Both sessions are named for what they do, so an operator can
            // tell them from the pool's (and a test can count the pool's).
            lock.batch_execute(NAME_MIGRATION_SESSION).await?;
        }
        let held = lock.transaction().await?;
        held.batch_execute(&format!(
            "SET LOCAL statement_timeout = 0; SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})"
        ))
        .await?;
        let mut conn = manager.create().await?;
        if self.pooler == Pooler::None {
            // Its own session, dropped afterwards: nothing leaks to others.
            conn.batch_execute("SET statement_timeout = 0").await?;
            conn.batch_execute(NAME_MIGRATION_SESSION).await?;
        }
        let client: &mut tokio_postgres::Client = &mut conn;
        let result = embedded::migrations::runner()
            .set_target(target)
            .run_async(client)
            .await;
        // Committed (or, on failure, rolled back) only now: the lock is
        // held until the migrations are.
        held.commit().await?;
        Ok(result?.applied_migrations().len())
    }
}

/// The metadata in column `i` (`task->'metadata'`): empty when the task
/// has none, or is gone.
fn metadata_at(row: &tokio_postgres::Row, i: usize) -> BTreeMap<String, String> {
    row.try_get::<_, Option<tokio_postgres::types::Json<BTreeMap<String, String>>>>(i)
        .ok()
        .flatten()
        .map(|m| m.0)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use sendonce_testkit::postgres::TestDatabase;

    use super::*;

    /// Behind a transaction pooler each statement goes out with the types
    /// it declares; they must be the ones the server infers on its own.
    #[tokio::test]
    async fn every_statement_declares_the_parameter_types_the_server_infers() {
        let db = TestDatabase::create().await;
        let store = Store::new(connect(&SecretString::from(db.url().to_owned()), 1).expect("pool"));
        store.migrate().await.expect("migrate");
        let client = db.connect().await;
        let all = [
            acceptance::ALL,
            audit::ALL,
            claims::ALL,
            console::ALL,
            dead_letters::ALL,
            dispatch::ALL,
            jobs::ALL,
            leases::ALL,
            reconcile::ALL,
            retention::ALL,
            stats::ALL,
            suppressions::ALL,
            webhooks::ALL,
        ];
        let mut checked = 0;
        for sql in all.into_iter().flatten() {
            let statement = client
                .prepare(sql.text)
                .await
                .unwrap_or_else(|e| panic!("prepare {}: {e}", sql.text));
            assert_eq!(statement.params(), sql.types, "{}", sql.text);
            checked += 1;
        }
        assert!(checked >= 30, "{checked}");
    }
}
