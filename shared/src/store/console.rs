//! The operator console's reads: the overview's numbers, the workers, job
//! search, a job's page and the scheduled jobs.
//!
//! Every read but the workers' is scoped to a tenant (`None`: every tenant,
//! for an operator with `tenants:all`). None of them has an index of its
//! own on `deliveries` or `events`, whose every index each email pays for:
//! they use the indexes the hot path already keeps, and where none serves
//! (a recipient's jobs, a job's events) they scan a bounded range. Each runs
//! in a read-only transaction under a statement timeout of its own
//! ([`STATEMENT_TIMEOUT`]), so a huge table cannot hold a connection; a
//! transaction-level setting, so it works behind a transaction pooler too.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Transaction};
use uuid::Uuid;

use super::sql::Sql;
use super::{FailedJob, Store, StoreError, metadata_at};
use crate::domain::{EmailAddress, IdempotencyKey, JobId, Tenant};

/// The statement timeout of every console read, as Postgres spells it.
const STATEMENT_TIMEOUT: &str = "5s";
/// Rows of the ready queue, longest waiting first, among which the
/// overview looks for the oldest job: a deep backlog costs no more.
const READY_SCAN: i64 = 10_000;
/// The newest jobs in scope a recipient search looks through.
const RECIPIENT_SCAN: i64 = 50_000;
/// Workers listed at most.
const WORKERS: i64 = 200;
/// Duplicates shown on a job's page at most.
const DUPLICATES: i64 = 100;

/// One statement: each count over the index that serves it. Sent and
/// suppressed rows are found through `deliveries_prunable` (finished rows
/// still holding a task or a reply, by `updated_at`): a row changes no more
/// once it is `sent` or `suppressed`, so its `updated_at` is its outcome's
/// time. Only retention takes such a row out of that index, days later.
const OVERVIEW: Sql = Sql::new(
    "WITH finished AS (
         SELECT count(*) FILTER (WHERE state = 'sent'
                                   AND sent_at > now() - interval '1 hour') AS sent,
                count(*) FILTER (WHERE state = 'suppressed') AS suppressed
         FROM deliveries
         WHERE state IN ('sent', 'suppressed')
           AND (task IS NOT NULL OR smtp_reply IS NOT NULL)
           AND updated_at > now() - interval '1 hour'
           AND ($1::text IS NULL OR tenant = $1)),
     dead AS (
         SELECT count(*) FILTER (WHERE reason = 'failed') AS failed,
                count(*) FILTER (WHERE reason = 'uncertain') AS uncertain
         FROM failed_jobs
         WHERE failed_at > now() - interval '1 hour'
           AND ($1::text IS NULL OR tenant = $1)),
     ready AS (
         SELECT created_at FROM deliveries
         WHERE state IN ('queued', 'retrying')
           AND GREATEST(updated_at, next_attempt_at) <= now()
           AND ($1::text IS NULL OR tenant = $1)
         ORDER BY GREATEST(updated_at, next_attempt_at)
         LIMIT $2)
     SELECT finished.sent, dead.failed, dead.uncertain, finished.suppressed,
            (SELECT min(created_at) FROM ready),
            (SELECT count(*) FROM deliveries
             WHERE state IN ('queued', 'retrying')
               AND GREATEST(updated_at, next_attempt_at) > now()
               AND ($1::text IS NULL OR tenant = $1)),
            (SELECT count(*) FROM deliveries
             WHERE state IN ('processing', 'sending')
               AND ($1::text IS NULL OR tenant = $1))
     FROM finished, dead",
    &[Type::TEXT, Type::INT8],
);

/// Every lease, with the rows its worker holds in flight (through
/// `deliveries_in_flight`).
const WORKERS_PAGE: Sql = Sql::new(
    "SELECT l.worker_id, COALESCE(f.n, 0), l.renewed_at, l.expires_at, l.expires_at > now()
     FROM worker_leases l
     LEFT JOIN (SELECT holder, count(*) AS n FROM deliveries
                WHERE state IN ('processing', 'sending') GROUP BY holder) f
       ON f.holder = l.worker_id
     ORDER BY l.renewed_at DESC NULLS LAST, l.worker_id
     LIMIT $1",
    &[Type::INT8],
);

/// The columns of a [`JobSummary`] from `deliveries`.
macro_rules! summary {
    () => {
        "job_id, tenant, idempotency_key, state, attempts, task->'to', task->>'subject',
         created_at, updated_at"
    };
}

/// The columns of a [`JobSummary`] from `duplicate_jobs` (which keeps no
/// task).
macro_rules! duplicate_summary {
    () => {
        "job_id, tenant, idempotency_key, 'duplicate', 0, NULL::jsonb, NULL::text,
         created_at, created_at"
    };
}

const FIND_BY_ID: Sql = Sql::new(
    concat!(
        "SELECT ",
        summary!(),
        " FROM deliveries WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
     UNION ALL
     SELECT ",
        duplicate_summary!(),
        " FROM duplicate_jobs WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
     LIMIT $3"
    ),
    &[Type::UUID, Type::TEXT, Type::INT8],
);

/// Keys are unique per tenant, and both tables are indexed by (tenant,
/// key): the tenants in scope are listed first, one index probe each (a
/// loose index scan of the primary key), and the key looked up in each. A
/// duplicate's tenant always has a `deliveries` row: the owner of the key.
const FIND_BY_KEY: Sql = Sql::new(
    concat!(
        "WITH RECURSIVE seen(tenant) AS (
         SELECT min(tenant) FROM deliveries WHERE $2::text IS NULL
         UNION ALL
         SELECT (SELECT min(d.tenant) FROM deliveries d WHERE d.tenant > s.tenant)
         FROM seen s WHERE s.tenant IS NOT NULL),
     scope AS (
         SELECT tenant FROM seen WHERE tenant IS NOT NULL
         UNION ALL
         SELECT $2::text WHERE $2::text IS NOT NULL)
     SELECT jobs.* FROM scope, LATERAL (
         SELECT ",
        summary!(),
        " FROM deliveries WHERE tenant = scope.tenant AND idempotency_key = $1
         UNION ALL
         SELECT ",
        duplicate_summary!(),
        " FROM duplicate_jobs WHERE tenant = scope.tenant AND idempotency_key = $1) jobs
     ORDER BY created_at DESC, job_id DESC
     LIMIT $3"
    ),
    &[Type::TEXT, Type::TEXT, Type::INT8],
);

/// No index finds a recipient: the newest jobs in scope are read backwards
/// along the job id (time-ordered, UUIDv7), up to [`RECIPIENT_SCAN`] of
/// them, and each address of `to`, `cc` and `bcc` (a mailbox, perhaps with
/// a display name) is compared by its addr-spec.
const FIND_BY_RECIPIENT: Sql = Sql::new(
    concat!(
        "SELECT ",
        summary!(),
        " FROM (SELECT * FROM deliveries
           WHERE ($2::text IS NULL OR tenant = $2)
           ORDER BY job_id DESC
           LIMIT $4) newest
     WHERE task IS NOT NULL
       AND EXISTS (
           SELECT 1
           FROM jsonb_array_elements_text(
                    CASE jsonb_typeof(task->'to') WHEN 'array' THEN task->'to'
                         ELSE jsonb_build_array(task->'to') END
                    || COALESCE(task->'cc', '[]'::jsonb)
                    || COALESCE(task->'bcc', '[]'::jsonb)) AS a(mailbox)
           WHERE lower(COALESCE(substring(mailbox FROM '<([^<>]*)>\\s*$'), mailbox))
                 = lower($1))
     ORDER BY created_at DESC, job_id DESC
     LIMIT $3"
    ),
    &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8],
);

const DETAIL: Sql = Sql::new(
    concat!(
        "SELECT ",
        summary!(),
        ", task->>'from', task->'cc', task->'bcc', last_error, smtp_reply, next_attempt_at,
         sent_at, canceled_at, maybe_sent, holder, refused_recipients, task->'metadata'
     FROM deliveries WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)"
    ),
    &[Type::UUID, Type::TEXT],
);

const DUPLICATE_DETAIL: Sql = Sql::new(
    concat!(
        "SELECT ",
        duplicate_summary!(),
        ", duplicate_of, layer
     FROM duplicate_jobs WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)"
    ),
    &[Type::UUID, Type::TEXT],
);

/// `events` has no index by job: the range of the job's life (every event
/// is written by the statement that changes its row, which sets
/// `updated_at`) is what the BRIN index on `created_at` serves.
const EVENTS: Sql = Sql::new(
    "SELECT created_at, type, (data->>'attempts')::bigint, data->>'smtp_reply',
            data->>'error'
     FROM events
     WHERE job_id = $1
       AND created_at BETWEEN $2 AND $3::timestamptz + interval '1 second'
     ORDER BY created_at, id",
    &[Type::UUID, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
);

const AUDIT: Sql = Sql::new(
    "SELECT at, action, actor, note FROM audit_log WHERE job_id = $1 ORDER BY id",
    &[Type::UUID],
);

const DUPLICATES_OF: Sql = Sql::new(
    "SELECT job_id, layer, created_at FROM duplicate_jobs
     WHERE tenant = $1 AND idempotency_key = $2
     ORDER BY created_at DESC, job_id DESC
     LIMIT $3",
    &[Type::TEXT, Type::TEXT, Type::INT8],
);

const DEAD_LETTER: Sql = Sql::new(
    "SELECT id, tenant, job_id, idempotency_key, task->>'to', task->>'subject', reason,
            error, smtp_reply, attempts, failed_at, task->'metadata'
     FROM failed_jobs WHERE job_id = $1",
    &[Type::UUID],
);

/// Through `deliveries_waiting`: a job waiting for its `send_at` is
/// `queued` and due later than its last change, so its place in that
/// index is its `send_at`.
const SCHEDULED: Sql = Sql::new(
    "SELECT job_id, tenant, idempotency_key, task->'to', task->>'subject',
            GREATEST(updated_at, next_attempt_at)
     FROM deliveries
     WHERE state = 'queued' AND attempts = 0
       AND GREATEST(updated_at, next_attempt_at) > now()
       AND ($1::text IS NULL OR tenant = $1)
       AND GREATEST(updated_at, next_attempt_at) >= COALESCE($2::timestamptz, '-infinity')
       AND ($2::timestamptz IS NULL
            OR GREATEST(updated_at, next_attempt_at) > $2
            OR (GREATEST(updated_at, next_attempt_at) = $2 AND job_id > $3))
     ORDER BY GREATEST(updated_at, next_attempt_at), job_id
     LIMIT $4",
    &[Type::TEXT, Type::TIMESTAMPTZ, Type::UUID, Type::INT8],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[
    &OVERVIEW,
    &WORKERS_PAGE,
    &FIND_BY_ID,
    &FIND_BY_KEY,
    &FIND_BY_RECIPIENT,
    &DETAIL,
    &DUPLICATE_DETAIL,
    &EVENTS,
    &AUDIT,
    &DUPLICATES_OF,
    &DEAD_LETTER,
    &SCHEDULED,
];

/// The numbers on the console's overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Jobs the server accepted in the last hour.
    pub sent_last_hour: i64,
    /// Dead-letter entries `failed` in the last hour (still in the table).
    pub failed_last_hour: i64,
    /// Dead-letter entries `uncertain` in the last hour (still in the
    /// table).
    pub uncertain_last_hour: i64,
    /// Jobs ended `suppressed` in the last hour.
    pub suppressed_last_hour: i64,
    /// When the oldest job that is due and waiting for a worker was
    /// accepted, among the [`READY_SCAN`] that have waited longest; `None`
    /// when none waits.
    pub oldest_ready: Option<DateTime<Utc>>,
    /// Jobs waiting (`queued` or `retrying`) for a due time still ahead.
    pub scheduled: i64,
    /// Jobs a worker holds (`processing` or `sending`).
    pub in_flight: i64,
}

/// A worker with a lease in Postgres.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// The worker's id.
    pub worker_id: String,
    /// The rows it holds in `processing` or `sending`.
    pub in_flight: i64,
    /// When it last renewed its lease; `None` when that was before
    /// migration 12.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// When its lease lapses.
    pub lease_expires_at: DateTime<Utc>,
    /// Whether its lease is live, by the database clock.
    pub alive: bool,
}

/// What the console's job search looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobLookup {
    /// A job id (also finds a job skipped as a duplicate).
    Id(JobId),
    /// An idempotency key, exactly, in every tenant in scope.
    Key(String),
    /// A recipient's addr-spec (`user@domain`), in `to`, `cc` or `bcc`,
    /// compared case-insensitively.
    Recipient(String),
}

impl JobLookup {
    /// What the search text `q` asks for, leading and trailing white space
    /// left out (pasted text often has some; a key seldom does): a UUID is
    /// a job id; text with `@` a recipient (a mailbox with a display name
    /// is reduced to its addr-spec); anything else an idempotency key.
    /// `None` for blank text.
    pub fn parse(q: &str) -> Option<JobLookup> {
        let trimmed = q.trim();
        if trimmed.is_empty() {
            return None;
        }
        if let Ok(id) = JobId::from_str(trimmed) {
            return Some(Self::Id(id));
        }
        if trimmed.contains('@') {
            let addr = EmailAddress::parse(trimmed)
                .map(|a| a.mailbox().email.to_string())
                .unwrap_or_else(|_| trimmed.to_owned());
            return Some(Self::Recipient(addr));
        }
        Some(Self::Key(trimmed.to_owned()))
    }
}

/// A job as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// The job.
    pub job_id: JobId,
    /// Whose job it is.
    pub tenant: String,
    /// Its key.
    pub idempotency_key: String,
    /// Its stored state (`queued`, `processing`, `sending`, `retrying`,
    /// `sent`, `failed`, `uncertain`, `canceled`, `suppressed`), or
    /// `duplicate` for a job skipped because another owns its key.
    pub state: String,
    /// SMTP attempts made.
    pub attempts: i32,
    /// The `to` mailboxes, as given; empty once retention removed the task,
    /// and for a duplicate.
    pub to: Vec<String>,
    /// The subject line, while the task is kept.
    pub subject: Option<String>,
    /// When it was accepted (for a duplicate: skipped).
    pub created_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
}

/// One step of a job's history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// `accepted`; an event's type (`job.retrying`, `job.sent`,
    /// `job.failed`, `job.uncertain`, `job.canceled`, `job.suppressed`,
    /// `job.duplicate`); `requeued` or `discarded` (an operator's action on
    /// its dead-letter entry); `canceled` for a cancel from before the
    /// outbox (migration 9), which wrote no event.
    pub what: String,
    /// Attempts made by then, as the event recorded them.
    pub attempts: Option<i64>,
    /// The server's reply, as the event recorded it.
    pub smtp_reply: Option<String>,
    /// The error, as the event recorded it.
    pub error: Option<String>,
    /// Who acted, for an operator's action.
    pub actor: Option<String>,
    /// The operator's note, or what a duplicate was a duplicate of.
    pub note: Option<String>,
}

impl HistoryEntry {
    fn at(at: DateTime<Utc>, what: &str) -> Self {
        Self {
            at,
            what: what.to_owned(),
            attempts: None,
            smtp_reply: None,
            error: None,
            actor: None,
            note: None,
        }
    }
}

/// A job skipped because the job on the page owns its key.
#[derive(Debug, Clone, Serialize)]
pub struct DuplicateEntry {
    /// The skipped job.
    pub job_id: JobId,
    /// The layer that caught it: `l1` (Redis) or `l2` (Postgres).
    pub layer: String,
    /// When it was skipped.
    pub created_at: DateTime<Utc>,
}

/// Everything the console's job page shows.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    /// What the search lists.
    pub summary: JobSummary,
    /// The sender the task names (`None`: the worker's `MAIL_FROM`).
    pub from: Option<String>,
    /// The `cc` mailboxes.
    pub cc: Vec<String>,
    /// The `bcc` mailboxes.
    pub bcc: Vec<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The server's last reply.
    pub smtp_reply: Option<String>,
    /// When the next attempt is due (or the `send_at` of a scheduled job).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the server accepted the message.
    pub sent_at: Option<DateTime<Utc>>,
    /// When it was canceled.
    pub canceled_at: Option<DateTime<Utc>>,
    /// Whether an earlier attempt may have delivered it (see migration 7).
    pub maybe_sent: bool,
    /// The worker holding (or that last held) its attempt.
    pub holder: Option<String>,
    /// `[{"recipient", "reply"}]` as stored, or `null`.
    pub refused_recipients: Value,
    /// The `Message-ID` every attempt writes; `None` for a duplicate, which
    /// sends nothing.
    pub message_id: Option<String>,
    /// The task's metadata, or `null` once retention removed the task.
    pub metadata: Value,
    /// What happened to it, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Jobs skipped because this one owns their key, newest first (at most
    /// [`DUPLICATES`]).
    pub duplicates: Vec<DuplicateEntry>,
    /// Its dead-letter entry, if it has one.
    pub dead_letter: Option<FailedJob>,
}

/// A job waiting for its `send_at`.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledJob {
    /// The job.
    pub job_id: JobId,
    /// Whose job it is.
    pub tenant: String,
    /// Its key.
    pub idempotency_key: String,
    /// The `to` mailboxes, as given.
    pub to: Vec<String>,
    /// The subject line.
    pub subject: Option<String>,
    /// When it is to be sent.
    pub send_at: DateTime<Utc>,
}

impl Store {
    /// The overview's numbers, for `tenant`'s jobs or (`None`) everyone's.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn console_overview(&self, tenant: Option<&Tenant>) -> Result<Overview, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = self.console_tx(&mut conn).await?;
        let tenant = tenant.map(Tenant::as_str);
        let row = one(self, &tx, &OVERVIEW, &[&tenant, &READY_SCAN]).await?;
        self.commit(tx).await?;
        Ok(Overview {
            sent_last_hour: row.get(0),
            failed_last_hour: row.get(1),
            uncertain_last_hour: row.get(2),
            suppressed_last_hour: row.get(3),
            oldest_ready: row.get(4),
            scheduled: row.get(5),
            in_flight: row.get(6),
        })
    }

    /// Every worker with a lease (fleet-wide: workers serve every tenant),
    /// newest heartbeat first, at most 200. Lapsed leases stay listed,
    /// not `alive`, until the sweeper forgets them a day later.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn console_workers(&self) -> Result<Vec<WorkerStatus>, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = self.console_tx(&mut conn).await?;
        let rows = self.tx_rows(&tx, &WORKERS_PAGE, &[&WORKERS]).await?;
        self.commit(tx).await?;
        Ok(rows
            .iter()
            .map(|r| WorkerStatus {
                worker_id: r.get(0),
                in_flight: r.get(1),
                last_heartbeat: r.get(2),
                lease_expires_at: r.get(3),
                alive: r.get(4),
            })
            .collect())
    }

    /// The jobs `lookup` finds in scope, newest first, at most `limit`. A
    /// key matches in every tenant in scope. An id or a key also finds jobs
    /// skipped as duplicates (state `duplicate`). A recipient is looked for
    /// in the newest 50,000 jobs in scope (no index serves it), under the
    /// statement timeout.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn find_jobs(
        &self,
        lookup: &JobLookup,
        tenant: Option<&Tenant>,
        limit: i64,
    ) -> Result<Vec<JobSummary>, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = self.console_tx(&mut conn).await?;
        let tenant = tenant.map(Tenant::as_str);
        let rows = match lookup {
            JobLookup::Id(id) => {
                self.tx_rows(&tx, &FIND_BY_ID, &[&id.as_uuid(), &tenant, &limit])
                    .await?
            }
            JobLookup::Key(key) => {
                self.tx_rows(&tx, &FIND_BY_KEY, &[key, &tenant, &limit])
                    .await?
            }
            JobLookup::Recipient(addr) => {
                self.tx_rows(
                    &tx,
                    &FIND_BY_RECIPIENT,
                    &[addr, &tenant, &limit, &RECIPIENT_SCAN],
                )
                .await?
            }
        };
        self.commit(tx).await?;
        Ok(rows.iter().map(summary_of).collect())
    }

    /// The job's page, or `None` when there is no such job in scope. A job
    /// skipped as a duplicate is found too: state `duplicate`, one history
    /// entry, no duplicates of its own.
    ///
    /// `mail_from` is the worker's `MAIL_FROM`: every attempt's
    /// `Message-ID` is made from the key and its domain (in A-labels),
    /// whatever sender the task names.
    ///
    /// The history is `accepted` at the job's creation, its events (read
    /// within the job's life, from its creation to its last change and a
    /// second more, the range the BRIN index on `events.created_at`
    /// serves), and the operators' actions on its dead-letter entry, in
    /// time order. Events go with retention: an old job's history may hold
    /// only its acceptance and those actions.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn job_detail(
        &self,
        job: JobId,
        tenant: Option<&Tenant>,
        mail_from: &EmailAddress,
    ) -> Result<Option<JobDetail>, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = self.console_tx(&mut conn).await?;
        let scope = tenant.map(Tenant::as_str);
        let id = job.as_uuid();
        let Some(row) = self.tx_opt(&tx, &DETAIL, &[&id, &scope]).await? else {
            let duplicate = self.tx_opt(&tx, &DUPLICATE_DETAIL, &[&id, &scope]).await?;
            self.commit(tx).await?;
            return Ok(duplicate.map(|r| duplicate_detail(&r)));
        };
        let summary = summary_of(&row);
        let events = self
            .tx_rows(
                &tx,
                &EVENTS,
                &[&id, &summary.created_at, &summary.updated_at],
            )
            .await?;
        let actions = self.tx_rows(&tx, &AUDIT, &[&id]).await?;
        let duplicates = self
            .tx_rows(
                &tx,
                &DUPLICATES_OF,
                &[&summary.tenant, &summary.idempotency_key, &DUPLICATES],
            )
            .await?;
        let dead_letter = self.tx_opt(&tx, &DEAD_LETTER, &[&id]).await?;
        self.commit(tx).await?;

        let canceled_at: Option<DateTime<Utc>> = row.get(16);
        let mut history = vec![HistoryEntry::at(summary.created_at, "accepted")];
        history.extend(events.iter().map(|r| HistoryEntry {
            attempts: r.get(2),
            smtp_reply: r.get(3),
            error: r.get(4),
            ..HistoryEntry::at(r.get(0), r.get(1))
        }));
        if let Some(at) = canceled_at
            && !history.iter().any(|h| h.what == "job.canceled")
        {
            history.push(HistoryEntry::at(at, "canceled"));
        }
        history.extend(actions.iter().map(|r| {
            let what = match r.get::<_, &str>(1) {
                "requeue" => "requeued",
                _ => "discarded",
            };
            HistoryEntry {
                actor: r.get(2),
                note: r.get(3),
                ..HistoryEntry::at(r.get(0), what)
            }
        }));
        // Stable: at one instant, acceptance before events before actions.
        history.sort_by_key(|h| h.at);

        Ok(Some(JobDetail {
            from: row.get(9),
            cc: mailboxes(row.get(10)),
            bcc: mailboxes(row.get(11)),
            last_error: row.get(12),
            smtp_reply: row.get(13),
            next_attempt_at: row.get(14),
            sent_at: row.get(15),
            canceled_at,
            maybe_sent: row.get(17),
            holder: row.get(18),
            refused_recipients: row.get::<_, Option<Value>>(19).unwrap_or(Value::Null),
            message_id: IdempotencyKey::parse(summary.idempotency_key.as_str())
                .ok()
                .map(|key| key.message_id(&message_domain(mail_from))),
            metadata: row.get::<_, Option<Value>>(20).unwrap_or(Value::Null),
            history,
            duplicates: duplicates
                .iter()
                .map(|r| DuplicateEntry {
                    job_id: JobId::from(r.get::<_, Uuid>(0)),
                    layer: r.get(1),
                    created_at: r.get(2),
                })
                .collect(),
            dead_letter: dead_letter.map(|r| FailedJob {
                id: r.get(0),
                tenant: r.get(1),
                job_id: JobId::from(r.get::<_, Uuid>(2)),
                idempotency_key: r.get(3),
                to: r.get(4),
                subject: r.get(5),
                reason: r.get(6),
                error: r.get(7),
                smtp_reply: r.get(8),
                attempts: r.get(9),
                failed_at: r.get(10),
                metadata: metadata_at(&r, 11),
            }),
            summary,
        }))
    }

    /// Jobs waiting for their `send_at` (`queued`, never attempted, due
    /// later), soonest first, at most `limit`, after `after`: the
    /// (`send_at`, `job_id`) of the previous page's last row (keyset
    /// pagination, so jobs that come due meanwhile never shift a page).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn scheduled_page(
        &self,
        tenant: Option<&Tenant>,
        after: Option<(DateTime<Utc>, JobId)>,
        limit: i64,
    ) -> Result<Vec<ScheduledJob>, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = self.console_tx(&mut conn).await?;
        let tenant = tenant.map(Tenant::as_str);
        let (since, last) = match after {
            Some((at, job)) => (Some(at), job.as_uuid()),
            None => (None, Uuid::nil()),
        };
        let rows = self
            .tx_rows(&tx, &SCHEDULED, &[&tenant, &since, &last, &limit])
            .await?;
        self.commit(tx).await?;
        Ok(rows
            .iter()
            .map(|r| ScheduledJob {
                job_id: JobId::from(r.get::<_, Uuid>(0)),
                tenant: r.get(1),
                idempotency_key: r.get(2),
                to: mailboxes(r.get(3)),
                subject: r.get(4),
                send_at: r.get(5),
            })
            .collect())
    }

    /// A read-only transaction under the console's statement timeout.
    pub(super) async fn console_tx<'c>(
        &self,
        conn: &'c mut ClientWrapper,
    ) -> Result<Transaction<'c>, StoreError> {
        let tx = self.begin(conn).await?;
        self.bounded(tx.batch_execute(&format!(
            "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"
        )))
        .await?;
        Ok(tx)
    }
}

/// The one row of `sql` inside `tx`.
async fn one(
    store: &Store,
    tx: &Transaction<'_>,
    sql: &Sql,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, StoreError> {
    store
        .tx_opt(tx, sql, params)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("no row from {}", sql.text)))
}

/// A [`JobSummary`] from the columns of `summary!()` or
/// `duplicate_summary!()`, first in `row`.
fn summary_of(row: &Row) -> JobSummary {
    JobSummary {
        job_id: JobId::from(row.get::<_, Uuid>(0)),
        tenant: row.get(1),
        idempotency_key: row.get(2),
        state: row.get(3),
        attempts: row.get(4),
        to: mailboxes(row.get(5)),
        subject: row.get(6),
        created_at: row.get(7),
        updated_at: row.get(8),
    }
}

/// The page of a job skipped as a duplicate: a row of `DUPLICATE_DETAIL`.
fn duplicate_detail(row: &Row) -> JobDetail {
    let summary = summary_of(row);
    let owner: Option<Uuid> = row.get(9);
    let layer: String = row.get(10);
    let note = match owner {
        Some(owner) => format!("a duplicate of job {owner}, caught by {layer}"),
        None => format!("a duplicate, caught by {layer}"),
    };
    let history = vec![HistoryEntry {
        note: Some(note),
        ..HistoryEntry::at(summary.created_at, "job.duplicate")
    }];
    JobDetail {
        summary,
        from: None,
        cc: Vec::new(),
        bcc: Vec::new(),
        last_error: None,
        smtp_reply: None,
        next_attempt_at: None,
        sent_at: None,
        canceled_at: None,
        maybe_sent: false,
        holder: None,
        refused_recipients: Value::Null,
        message_id: None,
        metadata: Value::Null,
        history,
        duplicates: Vec::new(),
        dead_letter: None,
    }
}

/// The mailboxes of a task's `to` (one string, or an array), `cc` or
/// `bcc`; none for a missing field.
fn mailboxes(field: Option<Value>) -> Vec<String> {
    match field {
        Some(Value::String(one)) => vec![one],
        Some(Value::Array(many)) => many
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The domain of `mail_from` as the worker writes it in a `Message-ID`:
/// in A-labels (its mailer converts the sender so), unless the local part
/// is not ASCII either (SMTPUTF8 then carries the domain as it is).
fn message_domain(mail_from: &EmailAddress) -> String {
    let (user, domain) = (mail_from.mailbox().email.user(), mail_from.domain());
    if domain.is_ascii() || !user.is_ascii() {
        return domain.to_owned();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_text_is_an_id_a_recipient_or_a_key() {
        let id = JobId::new();

        assert_eq!(
            JobLookup::parse(&format!(" {id} ")),
            Some(JobLookup::Id(id))
        );
        assert_eq!(
            JobLookup::parse("Ada <Ada@Example.com>"),
            Some(JobLookup::Recipient("Ada@Example.com".into()))
        );
        assert_eq!(
            JobLookup::parse("ada@example.com"),
            Some(JobLookup::Recipient("ada@example.com".into()))
        );
        assert_eq!(
            JobLookup::parse("welcome:user-42"),
            Some(JobLookup::Key("welcome:user-42".into()))
        );
        assert_eq!(JobLookup::parse("  \t"), None);
        assert_eq!(JobLookup::parse(""), None);
    }

    #[test]
    fn a_task_names_one_mailbox_or_several() {
        assert_eq!(mailboxes(Some(Value::from("a@x.test"))), ["a@x.test"]);
        assert_eq!(
            mailboxes(Some(serde_json::json!(["a@x.test", "B <b@x.test>"]))),
            ["a@x.test", "B <b@x.test>"]
        );
        assert!(mailboxes(None).is_empty());
        assert!(mailboxes(Some(Value::Null)).is_empty());
    }

    #[test]
    fn the_message_id_domain_is_the_senders_in_a_labels() {
        let ascii = EmailAddress::parse("sendonce <noreply@mail.example>").expect("valid");
        let unicode = EmailAddress::parse("noreply@bücher.example").expect("valid");

        assert_eq!(message_domain(&ascii), "mail.example");
        assert_eq!(message_domain(&unicode), "xn--bcher-kva.example");
    }
}
