//! An attempt's life on its key's row, every write fenced by its token.
//!
//! A claim (first or re-claim, by any worker) sets `fence = fence + 1` and
//! names the claiming worker `holder`; the new value is the attempt's
//! [`Fence`]. On the common path the claim and the `sending` step are one
//! write ([`Store::claim_sending`]), made once the SMTP server has answered
//! the envelope: the worker reads the row first ([`Store::look`]), and the
//! write takes it only if nobody moved it since (`fence` still the one
//! read). The two-step claim ([`Store::claim`], then
//! [`Store::mark_sending`]) remains for an attempt that fails before its
//! data, for rows no `202` wrote, and for a row taken from a lapsed holder. Every later write for that attempt carries the token in its
//! `WHERE`, so a holder that was presumed dead and resumed (a paused process,
//! a VM migration) finds zero rows and stops. The one write that is not
//! fenced is [`Store::mark_sent`]: a `250` that a worker read is a fact,
//! whoever holds the row by then.

use std::time::Duration;

use uuid::Uuid;

use tokio_postgres::types::Type;

use super::outbox::{event_data, outbox};
use super::sql::Sql;
use super::{DedupLayer, Failure, RefusedRecipient, Store, StoreError};
use crate::domain::{IdempotencyKey, JobId, Task, Tenant};

/// An attempt's fencing token: strictly greater than the token of every
/// earlier claim on the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence(pub(super) i64);

impl Fence {
    /// The stored number.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// A transient failure of an attempt, as [`Store::mark_retrying`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Retrying<'a> {
    /// What went wrong.
    pub error: &'a str,
    /// The server's reply, if any.
    pub smtp_reply: Option<&'a str>,
    /// How long until the next attempt.
    pub delay: Duration,
    /// Whether the attempt counts towards `MAX_ATTEMPTS`.
    pub counted: bool,
}

/// Where an idempotency key stands for the job trying to claim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This job owns the key and this worker holds the attempt `attempt`
    /// (1-based) under token `fence`.
    Proceed {
        /// The attempt about to be made.
        attempt: i32,
        /// Its token.
        fence: Fence,
        /// The job's recipients on its tenant's suppression list
        /// ([`crate::domain::suppression_key`] forms), looked up by the
        /// claim: the attempt leaves them out, or when that is all of them,
        /// ends the job `suppressed` ([`Store::suppress_job`]).
        suppressed: Vec<String>,
    },
    /// Another job owns the key.
    Duplicate {
        /// The owner.
        owner: JobId,
    },
    /// This job already reached a terminal state: a redelivery after a
    /// crash between recording and acknowledging, or a canceled job.
    AlreadyDone,
    /// Another copy of this job holds the attempt, and its holder's lease is
    /// live: this copy must wait (it is a spare one, made by a reaper that
    /// judged a paused or cut-off worker dead).
    Held,
    /// An attempt of this job was cut while its data was going out and its
    /// holder's lease has lapsed: nobody knows whether the server accepted
    /// it.
    Ambiguous {
        /// Attempts made so far.
        attempts: i32,
        /// The cut attempt's token.
        fence: Fence,
    },
}

/// What the `sending` write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// The row says `sending`: the data may go out.
    Go,
    /// The attempt lost its token, or its worker's lease lapsed.
    Lost,
    /// A recipient of the envelope was suppressed after the claim looked:
    /// nothing is sent; the next attempt leaves it out.
    Suppressed,
}

/// Where a key stands, read without writing ([`Store::look`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// The row waits for an attempt (`queued` or `retrying`) under token
    /// `fence`: the write that starts the data claims it
    /// ([`Store::claim_sending`]).
    Ready {
        /// Attempts made so far.
        attempts: i32,
        /// The token read: the claim applies only if it is still current.
        fence: Fence,
        /// The job's recipients on its tenant's suppression list, as in
        /// [`Claim::Proceed`].
        suppressed: Vec<String>,
    },
    /// This worker's attempt `fence` says `sending`, though this worker is
    /// not working on the job: the write that started it reported an error
    /// and committed after all, and the data never went out (the worker
    /// sends only after that write answered).
    Mine {
        /// Attempts made so far, the cut one included.
        attempts: i32,
        /// The cut attempt's token.
        fence: Fence,
    },
    /// Claim the key now with [`Store::claim`]: it has no row yet, a
    /// `processing` row that this worker holds or whose holder is gone, or
    /// a terminal one (which the claim confirms, waiting for a requeue that
    /// holds the row's lock).
    ClaimNow,
    /// No attempt is possible now: what [`Store::claim`] would answer
    /// (never [`Claim::Proceed`]).
    Settled(Claim),
}

/// What the write that claims the key and starts the data found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The row says `sending` under this worker and a new token: the data
    /// may go out.
    Go {
        /// The attempt being made (1-based).
        attempt: i32,
        /// Its token.
        fence: Fence,
    },
    /// The row moved since it was read (another holder, a cancel), or this
    /// worker's lease lapsed: nothing may be sent.
    Lost,
    /// A recipient of the envelope is suppressed: nothing is sent.
    Suppressed,
}

/// Whether a worker holds a live lease, judged in SQL by the database
/// clock. `$holder` is the column or parameter naming the worker.
macro_rules! live {
    ($holder:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM worker_leases l WHERE l.worker_id = ",
            $holder,
            " AND l.expires_at > now())"
        )
    };
}
pub(crate) use live;

/// The subquery listing which of the addresses in `$addresses` (a text
/// array of suppression keys) are on tenant `$tenant`'s suppression list.
macro_rules! suppressed {
    ($tenant:literal, $addresses:literal) => {
        concat!(
            "ARRAY(SELECT address FROM suppressions WHERE tenant = ",
            $tenant,
            " AND address = ANY (",
            $addresses,
            "))"
        )
    };
}

/// The columns the outbox reads from a changed `deliveries` row.
macro_rules! changed {
    () => {
        "job_id, tenant, idempotency_key, state, task, attempts, smtp_reply, last_error, \
         refused_recipients"
    };
}

/// For a task that has no row yet (pushed by hand, or by an API older than
/// durable acceptance): the row is made at the first claim.
const CLAIM_NEW: Sql = Sql::new(
    concat!(
        "INSERT INTO deliveries
        (idempotency_key, job_id, state, attempts, fence, holder, task, fingerprint, tenant,
         priority)
    VALUES ($1, $2, 'processing', 1, 1, $3, $4::text::jsonb, $5, $6, $8)
    ON CONFLICT (tenant, idempotency_key) DO NOTHING
    RETURNING attempts, fence, ",
        suppressed!("$6", "$7")
    ),
    &[
        Type::TEXT,
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::TEXT,
    ],
);

/// A re-claim takes a row waiting for an attempt, or one in `processing`
/// whose holder is this worker or has lost its lease: never one a live
/// worker is working on.
const CLAIM_AGAIN: Sql = Sql::new(
    concat!(
        "UPDATE deliveries d
    SET state = 'processing', attempts = attempts + 1, fence = fence + 1,
        holder = $3, next_attempt_at = NULL, updated_at = now()
    WHERE idempotency_key = $1 AND tenant = $4 AND job_id = $2
      AND (state IN ('queued', 'retrying')
           OR (state = 'processing'
               AND (holder IS NOT DISTINCT FROM $3 OR NOT ",
        live!("d.holder"),
        ")))
    RETURNING attempts, fence, ",
        suppressed!("$4", "$5")
    ),
    &[
        Type::TEXT,
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
    ],
);

const CLAIM_LOOK: Sql = Sql::new(
    concat!(
        "SELECT job_id, state, attempts, fence, ",
        live!("d.holder"),
        " FROM deliveries d WHERE idempotency_key = $1 AND tenant = $2"
    ),
    &[Type::TEXT, Type::TEXT],
);

/// The key's row as [`Store::look`] reads it: `$3` is the reading worker,
/// `$4` the job's recipients (suppression keys).
const LOOK: Sql = Sql::new(
    concat!(
        "SELECT job_id, state, attempts, fence, ",
        live!("d.holder"),
        ", holder IS NOT DISTINCT FROM $3, ",
        suppressed!("$2", "$4"),
        " FROM deliveries d WHERE idempotency_key = $1 AND tenant = $2"
    ),
    &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT_ARRAY],
);

/// The claim and the `sending` step in one write: takes a row still waiting
/// under the token read (`$2`) for a live worker, unless a recipient of the
/// envelope (`$5`) is suppressed. Answers the new attempt and token (null
/// when nothing changed) and whether a recipient is suppressed.
const CLAIM_SENDING: Sql = Sql::new(
    concat!(
        "WITH hit AS (
        SELECT EXISTS (SELECT 1 FROM suppressions
                       WHERE tenant = $4 AND address = ANY ($5)) AS suppressed),
    started AS (
        UPDATE deliveries
        SET state = 'sending', attempts = attempts + 1, fence = fence + 1, holder = $3,
            next_attempt_at = NULL, updated_at = now()
        WHERE idempotency_key = $1 AND tenant = $4 AND job_id = $6 AND fence = $2
          AND state IN ('queued', 'retrying')
          AND NOT (SELECT suppressed FROM hit) AND ",
        live!("$3"),
        "
        RETURNING attempts, fence)
    SELECT (SELECT attempts FROM started), (SELECT fence FROM started),
           (SELECT suppressed FROM hit)"
    ),
    &[
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::UUID,
    ],
);

/// Only a live holder with the newest token starts the data, and only when
/// none of the envelope's recipients (`$5`) was suppressed since the claim
/// looked: the suppression check and the `sending` write are one
/// statement. Answers whether the row moved to `sending`, and whether a
/// recipient is suppressed.
const MARK_SENDING: Sql = Sql::new(
    concat!(
        "WITH hit AS (
        SELECT EXISTS (SELECT 1 FROM suppressions
                       WHERE tenant = $4 AND address = ANY ($5)) AS suppressed),
    sending AS (
        UPDATE deliveries SET state = 'sending', updated_at = now()
        WHERE idempotency_key = $1 AND tenant = $4 AND fence = $2 AND state = 'processing'
          AND NOT (SELECT suppressed FROM hit) AND ",
        live!("$3"),
        "
        RETURNING 1)
    SELECT (SELECT count(*) FROM sending) = 1, (SELECT suppressed FROM hit)"
    ),
    &[
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
    ],
);

/// Unfenced: a `250` read is the truth. Withdraws any DLQ entry another
/// holder filed meanwhile (so it cannot be requeued and sent again).
const MARK_SENT: Sql = Sql::new(
    concat!(
        "WITH sent AS (
        UPDATE deliveries
        SET state = 'sent', smtp_reply = $3, last_error = NULL,
            next_attempt_at = NULL, sent_at = now(), updated_at = now(),
            refused_recipients = $5::text::jsonb
        WHERE idempotency_key = $1 AND tenant = $4 AND job_id = $2 AND state <> 'sent'
        RETURNING ",
        changed!(),
        "),
    withdrawn AS (
        DELETE FROM failed_jobs f USING sent WHERE f.job_id = sent.job_id)",
        outbox!("sent", "'job.sent'"),
        "
    SELECT count(*) FROM sent"
    ),
    &[Type::TEXT, Type::UUID, Type::TEXT, Type::TEXT, Type::TEXT],
);

/// Repeatable by the same holder (its record step is retried until it
/// succeeds), refused to anyone else. An attempt that does not count (`$6`
/// false) gives back the one its claim took, only on the way out of
/// `processing`, so a repeat does not give it back twice, nor write a
/// second `job.retrying` event (`was`: the state before, read under the
/// row's lock).
const MARK_RETRYING: Sql = Sql::new(
    concat!(
        "WITH before AS (
        SELECT state AS was FROM deliveries
        WHERE idempotency_key = $1 AND tenant = $7 FOR UPDATE),
    retrying AS (
        UPDATE deliveries
        SET state = 'retrying', last_error = $3, smtp_reply = $4,
            attempts = attempts - CASE WHEN NOT $6 AND state = 'processing' THEN 1 ELSE 0 END,
            next_attempt_at = now() + $5::bigint * interval '1 millisecond',
            updated_at = now()
        FROM before
        WHERE idempotency_key = $1 AND tenant = $7 AND fence = $2
          AND state IN ('processing', 'sending', 'retrying')
        RETURNING ",
        changed!(),
        ", before.was)",
        outbox!(
            "retrying",
            "'job.retrying'",
            event_data!(),
            "was <> 'retrying'"
        ),
        "
    SELECT count(*) FROM retrying"
    ),
    &[
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::BOOL,
        Type::TEXT,
    ],
);

/// One statement: the fenced state change, its event and, when it applied,
/// the DLQ entry. The task comes from the caller or, for a row the sweeper
/// found, from the row.
const DEAD_LETTER: Sql = Sql::new(
    concat!(
        "WITH dead AS (
        UPDATE deliveries
        SET state = $3, last_error = $4, smtp_reply = $5,
            next_attempt_at = NULL, updated_at = now()
        WHERE idempotency_key = $1 AND tenant = $7 AND fence = $2
          AND state IN ('processing', 'sending')
        RETURNING ",
        changed!(),
        "),
    entry AS (
        INSERT INTO failed_jobs
            (job_id, tenant, idempotency_key, task, reason, error, smtp_reply, attempts)
        SELECT job_id, tenant, idempotency_key,
               COALESCE($6::text::jsonb, task,
                        jsonb_build_object('job_id', job_id,
                                           'idempotency_key', idempotency_key)),
               $3, $4, $5, attempts
        FROM dead
        ON CONFLICT (job_id) DO NOTHING)",
        outbox!("dead", "'job.' || state"),
        "
    SELECT count(*) FROM dead"
    ),
    &[
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ],
);

/// Ends attempt `$2` `suppressed`: every recipient is on the tenant's
/// suppression list, and nothing was sent.
const SUPPRESS_JOB: Sql = Sql::new(
    concat!(
        "WITH suppressed AS (
        UPDATE deliveries
        SET state = 'suppressed', last_error = $4, refused_recipients = $5::text::jsonb,
            holder = NULL, next_attempt_at = NULL, updated_at = now()
        WHERE idempotency_key = $1 AND tenant = $3 AND fence = $2 AND state = 'processing'
        RETURNING ",
        changed!(),
        ")",
        outbox!("suppressed", "'job.suppressed'"),
        "
    SELECT count(*) FROM suppressed"
    ),
    &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT],
);

/// Adds addresses the server refused for good to the tenant's list; an
/// address already there keeps its first entry.
const SUPPRESS_ADDRESSES: Sql = Sql::new(
    "INSERT INTO suppressions (tenant, address, reason, smtp_reply, job_id)
     SELECT $1, address, 'bounce', reply, $4
     FROM unnest($2::text[], $3::text[]) AS r(address, reply)
     ON CONFLICT (tenant, address) DO NOTHING",
    &[Type::TEXT, Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::UUID],
);

const REOPEN: Sql = Sql::new(
    concat!(
        "UPDATE deliveries d
    SET state = 'processing', attempts = attempts + 1, fence = fence + 1,
        holder = $3, maybe_sent = true, updated_at = now()
    WHERE idempotency_key = $1 AND tenant = $4 AND fence = $2 AND state = 'sending' AND NOT ",
        live!("d.holder"),
        " RETURNING attempts, fence"
    ),
    &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT],
);

const OWNER: Sql = Sql::new(
    "SELECT job_id FROM deliveries WHERE idempotency_key = $1 AND tenant = $2",
    &[Type::TEXT, Type::TEXT],
);

const IS_TERMINAL: Sql = Sql::new(
    "SELECT state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed')
     FROM deliveries WHERE idempotency_key = $1 AND tenant = $2",
    &[Type::TEXT, Type::TEXT],
);

const RELEASE: Sql = Sql::new(
    "UPDATE deliveries SET holder = NULL, updated_at = now()
     WHERE idempotency_key = $1 AND tenant = $3 AND fence = $2 AND state = 'processing'",
    &[Type::TEXT, Type::INT8, Type::TEXT],
);

/// Records the skipped copy and its `job.duplicate` event (once: a repeat
/// finds the row). `$6` is the task, for the event's recipients.
const DUPLICATE: Sql = Sql::new(
    concat!(
        "WITH dup AS (
        INSERT INTO duplicate_jobs (job_id, idempotency_key, duplicate_of, layer, tenant)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (job_id) DO NOTHING
        RETURNING job_id, idempotency_key, duplicate_of, layer, tenant)",
        outbox!(
            "dup",
            "'job.duplicate'",
            "jsonb_build_object(
            'job_id', job_id, 'idempotency_key', idempotency_key, 'tenant', tenant,
            'to', $6::text::jsonb->'to', 'cc', COALESCE($6::text::jsonb->'cc', '[]'::jsonb),
            'bcc', COALESCE($6::text::jsonb->'bcc', '[]'::jsonb),
            'metadata', COALESCE($6::text::jsonb->'metadata', '{}'::jsonb),
            'attempts', 0, 'smtp_reply', NULL, 'error', NULL,
            'refused_recipients', '[]'::jsonb,
            'duplicate_of', duplicate_of, 'layer', layer)",
            "true"
        ),
        "
    SELECT count(*) FROM dup"
    ),
    &[
        Type::UUID,
        Type::TEXT,
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[
    &CLAIM_NEW,
    &CLAIM_AGAIN,
    &CLAIM_LOOK,
    &LOOK,
    &CLAIM_SENDING,
    &MARK_SENDING,
    &MARK_SENT,
    &MARK_RETRYING,
    &DEAD_LETTER,
    &REOPEN,
    &OWNER,
    &IS_TERMINAL,
    &RELEASE,
    &DUPLICATE,
    &SUPPRESS_JOB,
    &SUPPRESS_ADDRESSES,
];

impl Store {
    /// The L2 claim, by `worker`. Takes the key's row for this job when it
    /// waits for an attempt (the common case: the API recorded it `queued`)
    /// or its holder is gone; otherwise, when the key has no row yet,
    /// inserts it. Either way the attempt gets a new token. The `UPDATE`
    /// waits on a concurrent requeue's row lock, so it sees the requeued
    /// state rather than the stale terminal one.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn claim(&self, task: &Task, worker: &str) -> Result<Claim, StoreError> {
        let conn = self.pool.get().await?;
        let key = task.idempotency_key.as_str();
        let tenant = task.tenant.as_str();
        let job = task.job_id.as_uuid();
        let recipients = task.email.suppression_keys();
        let proceed = |row: tokio_postgres::Row| Claim::Proceed {
            attempt: row.get(0),
            fence: Fence(row.get(1)),
            suppressed: row.get(2),
        };
        if let Some(row) = self
            .opt(
                &conn,
                &CLAIM_AGAIN,
                &[&key, &job, &worker, &tenant, &recipients],
            )
            .await?
        {
            return Ok(proceed(row));
        }
        let inserted = self
            .opt(
                &conn,
                &CLAIM_NEW,
                &[
                    &key,
                    &job,
                    &worker,
                    &task.to_json(),
                    &task.email.fingerprint(),
                    &tenant,
                    &recipients,
                    &task.priority.as_str(),
                ],
            )
            .await?;
        if let Some(row) = inserted {
            return Ok(proceed(row));
        }
        // Another copy inserted the row between the two statements.
        if let Some(row) = self
            .opt(
                &conn,
                &CLAIM_AGAIN,
                &[&key, &job, &worker, &tenant, &recipients],
            )
            .await?
        {
            return Ok(proceed(row));
        }
        let row = self.one(&conn, &CLAIM_LOOK, &[&key, &tenant]).await?;
        let owner: Uuid = row.get(0);
        let state: &str = row.get(1);
        let holder_live: bool = row.get(4);
        Ok(if owner != job {
            Claim::Duplicate {
                owner: owner.into(),
            }
        } else if matches!(
            state,
            "sent" | "failed" | "uncertain" | "canceled" | "suppressed"
        ) {
            Claim::AlreadyDone
        } else if state == "sending" && !holder_live {
            Claim::Ambiguous {
                attempts: row.get(2),
                fence: Fence(row.get(3)),
            }
        } else {
            // `processing` or `sending` under a live holder, or a state that
            // changed between the statements: look again later.
            Claim::Held
        })
    }

    /// Reads where `task`'s key stands for `worker`, writing nothing: the
    /// first step of an attempt whose claim is made by the write that
    /// starts its data ([`Store::claim_sending`]).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn look(&self, task: &Task, worker: &str) -> Result<Look, StoreError> {
        let conn = self.pool.get().await?;
        let tenant = task.tenant.as_str();
        let recipients = task.email.suppression_keys();
        let Some(row) = self
            .opt(
                &conn,
                &LOOK,
                &[
                    &task.idempotency_key.as_str(),
                    &tenant,
                    &worker,
                    &recipients,
                ],
            )
            .await?
        else {
            return Ok(Look::ClaimNow);
        };
        let owner: Uuid = row.get(0);
        let state: &str = row.get(1);
        let attempts: i32 = row.get(2);
        let fence = Fence(row.get(3));
        let live: bool = row.get(4);
        let mine: bool = row.get(5);
        Ok(if owner != task.job_id.as_uuid() {
            Look::Settled(Claim::Duplicate {
                owner: owner.into(),
            })
        } else {
            match state {
                "queued" | "retrying" => Look::Ready {
                    attempts,
                    fence,
                    suppressed: row.get(6),
                },
                "processing" if mine || !live => Look::ClaimNow,
                "sending" if mine && live => Look::Mine { attempts, fence },
                "sending" if !live => Look::Settled(Claim::Ambiguous { attempts, fence }),
                "processing" | "sending" => Look::Settled(Claim::Held),
                // Terminal, as far as this read saw; but a requeue may hold
                // the row locked, its task already pushed. The claim's
                // `UPDATE` waits for that lock and sees what it committed.
                _ => Look::ClaimNow,
            }
        })
    }

    /// Claims the key for `worker` and records that the data is about to go
    /// out to `envelope` (the recipients' suppression keys), in one write:
    /// only if the row still waits under `looked`, the token
    /// [`Store::look`] read, `worker`'s lease is live, and no recipient of
    /// the envelope is suppressed. Anything but [`Start::Go`] means the
    /// caller must not send.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn claim_sending(
        &self,
        task: &Task,
        looked: Fence,
        worker: &str,
        envelope: &[String],
    ) -> Result<Start, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .one(
                &conn,
                &CLAIM_SENDING,
                &[
                    &task.idempotency_key.as_str(),
                    &looked.0,
                    &worker,
                    &task.tenant.as_str(),
                    &envelope,
                    &task.job_id.as_uuid(),
                ],
            )
            .await?;
        let attempt: Option<i32> = row.get(0);
        let fence: Option<i64> = row.get(1);
        Ok(match (attempt, fence, row.get(2)) {
            (Some(attempt), Some(fence), _) => Start::Go {
                attempt,
                fence: Fence(fence),
            },
            (_, _, true) => Start::Suppressed,
            _ => Start::Lost,
        })
    }

    /// Under `ON_UNCERTAIN=resend`: takes a key left in `sending` by the cut
    /// attempt `cut` (whose holder lost its lease) for one more attempt by
    /// `worker`. `None` when the row moved on meanwhile.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn reopen_ambiguous(
        &self,
        task: &Task,
        cut: Fence,
        worker: &str,
    ) -> Result<Option<(i32, Fence)>, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .opt(
                &conn,
                &REOPEN,
                &[
                    &task.idempotency_key.as_str(),
                    &cut.0,
                    &worker,
                    &task.tenant.as_str(),
                ],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), Fence(r.get(1)))))
    }

    /// The job that owns `key` in `tenant` in L2, if any job claimed it yet.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn owner(
        &self,
        tenant: &Tenant,
        key: &IdempotencyKey,
    ) -> Result<Option<JobId>, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .opt(&conn, &OWNER, &[&key.as_str(), &tenant.as_str()])
            .await?;
        Ok(row.map(|r| JobId::from(r.get::<_, Uuid>(0))))
    }

    /// Whether `task`'s key has reached a terminal state.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn is_terminal(&self, task: &Task) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .opt(
                &conn,
                &IS_TERMINAL,
                &[&task.idempotency_key.as_str(), &task.tenant.as_str()],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get(0)))
    }

    /// Records that the data of attempt `fence` is about to go out to
    /// `envelope` (the recipients' suppression keys). Anything but
    /// [`Sending::Go`] means the caller must not send: the attempt lost its
    /// token to a newer claim, or `worker`'s lease has lapsed (others may
    /// already judge it dead), or a recipient was suppressed since the
    /// claim looked.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn mark_sending(
        &self,
        task: &Task,
        fence: Fence,
        worker: &str,
        envelope: &[String],
    ) -> Result<Sending, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .one(
                &conn,
                &MARK_SENDING,
                &[
                    &task.idempotency_key.as_str(),
                    &fence.0,
                    &worker,
                    &task.tenant.as_str(),
                    &envelope,
                ],
            )
            .await?;
        Ok(match (row.get(0), row.get(1)) {
            (true, _) => Sending::Go,
            (false, true) => Sending::Suppressed,
            (false, false) => Sending::Lost,
        })
    }

    /// Ends attempt `fence` `suppressed`, with its `job.suppressed` event:
    /// every recipient is on the suppression list, listed in `refused` with
    /// the reason. `false` when the attempt lost its token.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn suppress_job(
        &self,
        task: &Task,
        fence: Fence,
        refused: &[RefusedRecipient],
    ) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        // Strings only: serialising cannot fail.
        let refused = serde_json::to_string(refused).ok();
        let row = self
            .one(
                &conn,
                &SUPPRESS_JOB,
                &[
                    &task.idempotency_key.as_str(),
                    &fence.0,
                    &task.tenant.as_str(),
                    &"every recipient is on the suppression list",
                    &refused,
                ],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Adds the recipients of `task` that the server refused for good
    /// (`5.1.x`: no such mailbox) to its tenant's suppression list, so
    /// later jobs do not try them again.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn suppress_bounced(
        &self,
        task: &Task,
        bounced: &[RefusedRecipient],
    ) -> Result<(), StoreError> {
        if bounced.is_empty() {
            return Ok(());
        }
        let conn = self.pool.get().await?;
        let addresses: Vec<String> = bounced
            .iter()
            .map(|r| crate::domain::suppression_key(&r.recipient))
            .collect();
        let replies: Vec<&str> = bounced.iter().map(|r| r.reply.as_str()).collect();
        self.exec(
            &conn,
            &SUPPRESS_ADDRESSES,
            &[
                &task.tenant.as_str(),
                &addresses,
                &replies,
                &task.job_id.as_uuid(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Gives up attempt `fence` before its data (its holder's lease lapsed):
    /// the row stays `processing` with no holder, so the next copy's claim,
    /// or the sweeper, takes it without waiting for a lease that the live
    /// worker keeps renewing. Nothing when the token was lost already.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release_claim(&self, task: &Task, fence: Fence) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        self.exec(
            &conn,
            &RELEASE,
            &[
                &task.idempotency_key.as_str(),
                &fence.0,
                &task.tenant.as_str(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Records the server's acceptance, whoever holds the row now, unless it
    /// already says `sent`; withdraws any dead-letter entry of the job.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn mark_sent(
        &self,
        task: &Task,
        smtp_reply: &str,
        refused: &[RefusedRecipient],
    ) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        // Strings only: serialising cannot fail.
        let refused = (!refused.is_empty())
            .then(|| serde_json::to_string(refused).ok())
            .flatten();
        self.exec(
            &conn,
            &MARK_SENT,
            &[
                &task.idempotency_key.as_str(),
                &task.job_id.as_uuid(),
                &smtp_reply,
                &task.tenant.as_str(),
                &refused,
            ],
        )
        .await?;
        Ok(())
    }

    /// Records a transient failure of attempt `fence`, the next due in
    /// `delay` (for `GET /jobs`; the queue keeps its own due time). Unless
    /// `counted`, the attempt is given back (it never reached the message:
    /// every SMTP relay said it was over its limit). `false` when the
    /// attempt lost its token.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn mark_retrying(
        &self,
        task: &Task,
        fence: Fence,
        failure: Retrying<'_>,
    ) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        let delay_ms = i64::try_from(failure.delay.as_millis()).unwrap_or(i64::MAX);
        let row = self
            .one(
                &conn,
                &MARK_RETRYING,
                &[
                    &task.idempotency_key.as_str(),
                    &fence.0,
                    &failure.error,
                    &failure.smtp_reply,
                    &delay_ms,
                    &failure.counted,
                    &task.tenant.as_str(),
                ],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Moves attempt `fence` of `task` to a terminal failure and writes its
    /// DLQ entry, in one statement. `false` when the attempt lost its token
    /// or the key is already terminal (a redelivery), and nothing was
    /// written.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn dead_letter(
        &self,
        task: &Task,
        fence: Fence,
        failure: Failure<'_>,
    ) -> Result<bool, StoreError> {
        dead_letter(
            self,
            task.tenant.as_str(),
            task.idempotency_key.as_str(),
            fence,
            Some(&task.to_json()),
            failure,
        )
        .await
    }

    /// Records that `task` was skipped because `owner` holds its key.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn record_duplicate(
        &self,
        task: &Task,
        owner: Option<JobId>,
        layer: DedupLayer,
    ) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        self.exec(
            &conn,
            &DUPLICATE,
            &[
                &task.job_id.as_uuid(),
                &task.idempotency_key.as_str(),
                &owner.map(|o| o.as_uuid()),
                &layer.as_str(),
                &task.tenant.as_str(),
                &task.to_json(),
            ],
        )
        .await?;
        Ok(())
    }
}

/// [`Store::dead_letter`] by tenant and key, for callers that hold no
/// parsed task.
pub(super) async fn dead_letter(
    store: &Store,
    tenant: &str,
    key: &str,
    fence: Fence,
    task_json: Option<&str>,
    failure: Failure<'_>,
) -> Result<bool, StoreError> {
    let conn = store.pool.get().await?;
    let row = store
        .one(
            &conn,
            &DEAD_LETTER,
            &[
                &key,
                &fence.0,
                &failure.reason.as_str(),
                &failure.error,
                &failure.smtp_reply,
                &task_json,
                &tenant,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}
