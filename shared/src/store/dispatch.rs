//! Webhook delivery: claiming due deliveries, recording each attempt, and
//! the age of the oldest undelivered event per endpoint.
//!
//! A claim takes due `pending` rows with `FOR UPDATE SKIP LOCKED` and moves
//! their `next_attempt_at` past the dispatcher's request (the lease): two
//! dispatchers never take the same row at once, and a dispatcher killed
//! mid-request leaves rows that come due again when the lease runs out.
//! The `next_attempt_at` a claim wrote is its token: a failure is recorded
//! only while the row still carries it (a claim that outlived its lease
//! records nothing), while a success is always recorded, as a fact.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::sql::Sql;
use super::{Store, StoreError};

/// Due deliveries, oldest first, `$1` at most, each leased for `$3` ms.
/// An endpoint gets at most `$2` less the requests the dispatcher already
/// has open to it (`$4`, `$5`: endpoint ids and their open requests), so a
/// slow endpoint cannot take every slot. Candidates are the oldest
/// `4 × $1` due rows of the endpoints not at their cap, so one endpoint's
/// backlog leaves room for others in the same claim.
const CLAIM: Sql = Sql::new(
    "WITH open AS (
         SELECT * FROM unnest($4::uuid[], $5::int8[]) AS o (endpoint_id, requests)
     ), candidates AS (
         SELECT id, endpoint_id, next_attempt_at
         FROM webhook_deliveries
         WHERE state = 'pending' AND next_attempt_at <= now()
           AND endpoint_id NOT IN (SELECT endpoint_id FROM open WHERE requests >= $2::int8)
         ORDER BY next_attempt_at, id
         LIMIT $1::int8 * 4
         FOR UPDATE SKIP LOCKED
     ), ranked AS (
         SELECT id, endpoint_id, next_attempt_at,
                row_number() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at, id) AS rank
         FROM candidates
     ), chosen AS (
         SELECT r.id FROM ranked r LEFT JOIN open o ON o.endpoint_id = r.endpoint_id
         WHERE r.rank <= $2 - COALESCE(o.requests, 0)
         ORDER BY r.next_attempt_at, r.id LIMIT $1
     ), claimed AS (
         UPDATE webhook_deliveries d
         SET next_attempt_at = now() + $3::int8 * interval '1 millisecond'
         FROM chosen WHERE d.id = chosen.id
         RETURNING d.id, d.endpoint_id, d.event_id, d.attempts, d.next_attempt_at
     )
     SELECT c.id, c.endpoint_id, w.url, w.secret,
            CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END,
            e.id, e.type, e.created_at, e.data::text, c.attempts, c.next_attempt_at
     FROM claimed c
     JOIN webhooks w ON w.id = c.endpoint_id
     JOIN events e ON e.id = c.event_id
     ORDER BY e.created_at, c.id",
    &[
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::UUID_ARRAY,
        Type::INT8_ARRAY,
    ],
);

/// A 2xx was read: `delivered`, whatever the row's state or token (a
/// receiver that answered has the event). A success on a failing endpoint
/// clears `failing_since` and makes its `held` deliveries due now.
const DELIVERED: Sql = Sql::new(
    "WITH done AS (
         UPDATE webhook_deliveries
         SET state = 'delivered', delivered_at = now(), next_attempt_at = NULL,
             attempts = attempts + 1, last_attempt_at = now(),
             last_status = $2::int4, last_error = NULL,
             log = log || jsonb_build_array(jsonb_build_object(
                 'at', now(), 'status', $2::int4, 'error', NULL, 'duration_ms', $3::int8))
         WHERE id = $1 AND state <> 'delivered'
         RETURNING endpoint_id
     ), resumed AS (
         UPDATE webhooks w SET failing_since = NULL, updated_at = now()
         FROM done WHERE w.id = done.endpoint_id AND w.failing_since IS NOT NULL
         RETURNING w.id
     ), released AS (
         UPDATE webhook_deliveries h SET state = 'pending', next_attempt_at = now()
         FROM resumed WHERE h.endpoint_id = resumed.id AND h.state = 'held'
         RETURNING h.id
     )
     SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM resumed),
            (SELECT count(*) FROM released)",
    &[Type::INT8, Type::INT4, Type::INT8],
);

/// An attempt failed (`$3` the status read, or `$4` what went wrong
/// instead): the next try in `$6` ms, or, with `$6` NULL (the schedule is
/// exhausted), the endpoint is failing and its `pending` deliveries are
/// `held`. A delivery failing while its endpoint already is (a replay) is
/// `held` again. Only while the row carries the claim's token `$2`.
const FAILED: Sql = Sql::new(
    "WITH attempt AS (
         UPDATE webhook_deliveries d
         SET attempts = d.attempts + 1, last_attempt_at = now(),
             last_status = $3::int4, last_error = $4::text,
             log = d.log || jsonb_build_array(jsonb_build_object(
                 'at', now(), 'status', $3::int4, 'error', $4::text, 'duration_ms', $5::int8)),
             state = CASE WHEN $6::int8 IS NULL OR w.failing_since IS NOT NULL
                          THEN 'held' ELSE 'pending' END,
             next_attempt_at = CASE WHEN $6::int8 IS NULL OR w.failing_since IS NOT NULL
                                    THEN NULL
                                    ELSE now() + $6 * interval '1 millisecond' END
         FROM webhooks w
         WHERE d.id = $1::int8 AND w.id = d.endpoint_id
           AND d.state = 'pending' AND d.next_attempt_at = $2::timestamptz
         RETURNING d.endpoint_id, $6::int8 IS NULL AND w.failing_since IS NULL AS exhausted,
                   $6::int8 IS NULL OR w.failing_since IS NOT NULL AS held
     ), failing AS (
         UPDATE webhooks w SET failing_since = now(), updated_at = now()
         FROM attempt
         WHERE w.id = attempt.endpoint_id AND attempt.exhausted AND w.failing_since IS NULL
         RETURNING w.id
     ), held AS (
         UPDATE webhook_deliveries h SET state = 'held', next_attempt_at = NULL
         FROM failing
         WHERE h.endpoint_id = failing.id AND h.state = 'pending' AND h.id <> $1::int8
         RETURNING h.id
     )
     SELECT attempt.held, (SELECT count(*) FROM failing), (SELECT count(*) FROM held)
     FROM attempt",
    &[
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
    ],
);

/// Per endpoint with an undelivered event, how long the oldest has waited:
/// a skip scan of `webhook_deliveries_undelivered`, one probe per endpoint
/// with something undelivered (one in all when everything is delivered),
/// however long a backlog is.
const OLDEST_UNDELIVERED: Sql = Sql::new(
    "WITH RECURSIVE oldest AS (
         (SELECT endpoint_id, created_at FROM webhook_deliveries
          WHERE state <> 'delivered'
          ORDER BY endpoint_id, created_at LIMIT 1)
         UNION ALL
         SELECT n.endpoint_id, n.created_at
         FROM oldest CROSS JOIN LATERAL (
             SELECT endpoint_id, created_at FROM webhook_deliveries
             WHERE state <> 'delivered' AND endpoint_id > oldest.endpoint_id
             ORDER BY endpoint_id, created_at LIMIT 1
         ) n
     )
     SELECT endpoint_id, extract(epoch FROM now() - created_at)::float8 FROM oldest",
    &[],
);

/// Held deliveries of endpoints that are not failing: fanned out `held`
/// by an event whose statement read `failing_since` just before a resume
/// committed (migration 10). Due now.
const RELEASE_STRAY_HELD: Sql = Sql::new(
    "UPDATE webhook_deliveries d SET state = 'pending', next_attempt_at = now()
     FROM webhooks w
     WHERE d.endpoint_id = w.id AND w.failing_since IS NULL AND d.state = 'held'",
    &[],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[
    &CLAIM,
    &DELIVERED,
    &FAILED,
    &OLDEST_UNDELIVERED,
    &RELEASE_STRAY_HELD,
];

/// A delivery a dispatcher claimed: everything its request needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The delivery's row.
    pub id: i64,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Where to POST.
    pub url: String,
    /// The endpoint's secret (`whsec_...`).
    pub secret: SecretString,
    /// The secret before the last rotation, while its overlap lasts: it
    /// signs too.
    pub previous_secret: Option<SecretString>,
    /// The event: the `webhook-id` of every attempt, to every endpoint.
    pub event_id: Uuid,
    /// `job.sent`, `job.failed`, ...
    pub event_type: String,
    /// When the event was written (the body's `timestamp`).
    pub event_created_at: DateTime<Utc>,
    /// The event's `data` object, as stored.
    pub data: serde_json::Value,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The `next_attempt_at` this claim wrote: its token.
    pub leased_until: DateTime<Utc>,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome<'a> {
    /// A 2xx status was read.
    Delivered {
        /// The status.
        status: u16,
    },
    /// Anything else: another status, or no answer.
    Failed {
        /// The status, if one was read.
        status: Option<u16>,
        /// What went wrong, when no status was read.
        error: Option<&'a str>,
        /// When to try again; `None` when the retry schedule is exhausted.
        retry_in: Option<Duration>,
    },
}

/// What recording an attempt changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// The attempt was written (false: the row had moved on, e.g. its
    /// lease ran out and another dispatcher claimed it, or it was already
    /// delivered).
    pub written: bool,
    /// The delivery is `held` now: its schedule ran out, or its endpoint
    /// was failing already (a replay).
    pub held: bool,
    /// The endpoint is failing from now on (this attempt exhausted the
    /// schedule).
    pub endpoint_failing: bool,
    /// The endpoint was failing and is no longer (a success).
    pub endpoint_resumed: bool,
    /// Other deliveries of the endpoint held, or released, by this change.
    pub others_moved: u64,
}

impl Store {
    /// Claims up to `limit` due deliveries, leasing each for `lease`: no
    /// endpoint gets more than `per_endpoint` less the requests `open` says
    /// the caller has open to it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn claim_webhook_deliveries(
        &self,
        limit: usize,
        per_endpoint: usize,
        lease: Duration,
        open: &[(Uuid, usize)],
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let conn = self.pool.get().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX / 4);
        let per_endpoint = i64::try_from(per_endpoint).unwrap_or(i64::MAX);
        let endpoints: Vec<Uuid> = open.iter().map(|(id, _)| *id).collect();
        let requests: Vec<i64> = open
            .iter()
            .map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX))
            .collect();
        let rows = self
            .rows(
                &conn,
                &CLAIM,
                &[&limit, &per_endpoint, &millis(lease), &endpoints, &requests],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let data: String = r.get(8);
                Ok(DueDelivery {
                    id: r.get(0),
                    endpoint_id: r.get(1),
                    url: r.get(2),
                    secret: SecretString::from(r.get::<_, String>(3)),
                    previous_secret: r.get::<_, Option<String>>(4).map(SecretString::from),
                    event_id: r.get(5),
                    event_type: r.get(6),
                    event_created_at: r.get(7),
                    data: serde_json::from_str(&data)
                        .map_err(|e| StoreError::Corrupt(format!("event data: {e}")))?,
                    attempts: r.get(9),
                    leased_until: r.get(10),
                })
            })
            .collect()
    }

    /// Records an attempt at `delivery` and what follows from it.
    #[tracing::instrument(skip_all, fields(delivery = delivery.id))]
    pub async fn record_webhook_attempt(
        &self,
        delivery: &DueDelivery,
        outcome: &AttemptOutcome<'_>,
        took: Duration,
    ) -> Result<Recorded, StoreError> {
        let conn = self.pool.get().await?;
        let duration_ms = millis(took);
        match outcome {
            AttemptOutcome::Delivered { status } => {
                let row = self
                    .one(
                        &conn,
                        &DELIVERED,
                        &[&delivery.id, &i32::from(*status), &duration_ms],
                    )
                    .await?;
                Ok(Recorded {
                    written: row.get::<_, i64>(0) == 1,
                    held: false,
                    endpoint_failing: false,
                    endpoint_resumed: row.get::<_, i64>(1) == 1,
                    others_moved: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                })
            }
            AttemptOutcome::Failed {
                status,
                error,
                retry_in,
            } => {
                let status = status.map(i32::from);
                let retry_in = retry_in.map(millis);
                let row = self
                    .opt(
                        &conn,
                        &FAILED,
                        &[
                            &delivery.id,
                            &delivery.leased_until,
                            &status,
                            error,
                            &duration_ms,
                            &retry_in,
                        ],
                    )
                    .await?;
                Ok(row.map_or_else(Recorded::default, |r| Recorded {
                    written: true,
                    held: r.get(0),
                    endpoint_failing: r.get::<_, i64>(1) == 1,
                    endpoint_resumed: false,
                    others_moved: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                }))
            }
        }
    }

    /// Makes due the `held` deliveries of endpoints that are not failing
    /// (a resume raced with the event's fan-out); how many.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release_stray_held_webhooks(&self) -> Result<u64, StoreError> {
        let conn = self.pool.get().await?;
        self.exec(&conn, &RELEASE_STRAY_HELD, &[]).await
    }

    /// Per endpoint with an undelivered (`pending` or `held`) event, the
    /// age of the oldest one.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn oldest_undelivered_webhooks(&self) -> Result<Vec<(Uuid, Duration)>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = self.rows(&conn, &OLDEST_UNDELIVERED, &[]).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let age: f64 = r.get(1);
                (r.get(0), Duration::from_secs_f64(age.max(0.0)))
            })
            .collect())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
