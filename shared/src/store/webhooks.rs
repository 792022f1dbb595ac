//! A tenant's webhook endpoints and their delivery logs, as the API reads
//! and changes them: create, list, read, patch (URL, event types,
//! description, secret rotation, resume), delete, and replay one delivery.
//!
//! Every statement is confined to a tenant (`None`: an operator's, any
//! tenant's): another tenant's endpoint answers as an unknown one. Events
//! and their deliveries are written by the job state changes (the outbox)
//! and sent by the dispatcher; this module only reads them, and puts
//! deliveries back to `pending` on a resume or a replay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::sql::Sql;
use super::{Store, StoreError};
use crate::domain::webhooks::{EventType, EventTypes, WebhookSecret, WebhookUrl};
use crate::domain::{Note, Tenant};

/// The columns of a [`Webhook`], in the order [`webhook_at`] reads them.
macro_rules! endpoint_columns {
    () => {
        "id, tenant, url, event_types, description, failing_since,
         previous_secret_expires_at, created_at, updated_at"
    };
}

/// The columns of a [`WebhookDelivery`] (`d`: the delivery, `e`: its
/// event), in the order [`delivery_at`] reads them.
macro_rules! delivery_columns {
    () => {
        "d.id, d.event_id, e.type, d.state, d.attempts, d.next_attempt_at,
         d.last_attempt_at, d.last_status, d.last_error, d.delivered_at,
         d.created_at, d.log::text"
    };
}

const CREATE: Sql = Sql::new(
    concat!(
        "INSERT INTO webhooks (id, tenant, url, event_types, description, secret)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING ",
        endpoint_columns!()
    ),
    &[
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::TEXT,
        Type::TEXT,
    ],
);

const PAGE: Sql = Sql::new(
    concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhooks
         WHERE ($1::text IS NULL OR tenant = $1) AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC
         LIMIT $3"
    ),
    &[Type::TEXT, Type::UUID, Type::INT8],
);

const GET: Sql = Sql::new(
    concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhooks WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
    ),
    &[Type::UUID, Type::TEXT],
);

/// A patch: each of `url` ($3), `event_types` ($4) and `secret` ($7) is
/// kept when NULL; the description is set to $6 when $5. A new secret
/// moves the current one to `previous_secret`, which goes on signing for
/// $8 seconds. $9 clears `failing_since` (resume).
const PATCH: Sql = Sql::new(
    concat!(
        "UPDATE webhooks SET
             url = COALESCE($3::text, url),
             event_types = COALESCE($4::text[], event_types),
             description = CASE WHEN $5::boolean THEN $6::text ELSE description END,
             previous_secret = CASE WHEN $7::text IS NULL THEN previous_secret ELSE secret END,
             previous_secret_expires_at = CASE WHEN $7::text IS NULL
                 THEN previous_secret_expires_at
                 ELSE now() + $8::bigint * interval '1 second' END,
             secret = COALESCE($7::text, secret),
             failing_since = CASE WHEN $9::boolean THEN NULL ELSE failing_since END,
             updated_at = now()
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)
         RETURNING ",
        endpoint_columns!()
    ),
    &[
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::BOOL,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::BOOL,
    ],
);

/// A resumed endpoint's waiting deliveries come due now. Run after
/// [`PATCH`] in its transaction: that statement's row lock orders it after
/// a dispatcher's marking of the endpoint failing, and this one's fresh
/// snapshot then sees every delivery that marking held.
const RESUME: Sql = Sql::new(
    "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now()
     WHERE endpoint_id = $1 AND state = 'held'",
    &[Type::UUID],
);

const DELETE: Sql = Sql::new(
    "DELETE FROM webhooks WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
    &[Type::UUID, Type::TEXT],
);

const DELIVERIES: Sql = Sql::new(
    concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.endpoint_id = $1 AND ($2::bigint IS NULL OR d.id < $2)
           AND EXISTS (SELECT 1 FROM webhooks w
                       WHERE w.id = $1 AND ($4::text IS NULL OR w.tenant = $4))
         ORDER BY d.id DESC
         LIMIT $3"
    ),
    &[Type::UUID, Type::INT8, Type::INT8, Type::TEXT],
);

/// A replay: due now, whatever its state, with a fresh retry schedule
/// (`attempts` from 0; the log keeps every attempt made).
const REPLAY: Sql = Sql::new(
    concat!(
        "UPDATE webhook_deliveries d
         SET state = 'pending', next_attempt_at = now(), attempts = 0
         FROM webhooks w, events e
         WHERE d.id = $1 AND d.endpoint_id = $2 AND w.id = d.endpoint_id
           AND ($3::text IS NULL OR w.tenant = $3) AND e.id = d.event_id
         RETURNING ",
        delivery_columns!()
    ),
    &[Type::INT8, Type::UUID, Type::TEXT],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[
    &CREATE,
    &PAGE,
    &GET,
    &PATCH,
    &RESUME,
    &DELETE,
    &DELIVERIES,
    &REPLAY,
];

/// An endpoint as the API shows it: never its secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Webhook {
    /// The endpoint's id.
    pub id: Uuid,
    /// Whose endpoint it is.
    pub tenant: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it receives.
    pub event_types: Vec<EventType>,
    /// The tenant's own words about it.
    pub description: Option<String>,
    /// Set when a delivery's retry schedule ran out: its deliveries wait
    /// (`held`) until `PATCH` with `resume: true`, or until a replayed
    /// delivery succeeds.
    pub failing_since: Option<DateTime<Utc>>,
    /// After a rotation, until when the previous secret signs too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Where events go.
    pub url: WebhookUrl,
    /// What it receives.
    pub event_types: EventTypes,
    /// The tenant's own words about it.
    pub description: Option<Note>,
}

/// What a `PATCH` changes; `None` keeps.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    /// A new URL.
    pub url: Option<WebhookUrl>,
    /// New event types.
    pub event_types: Option<EventTypes>,
    /// A new description (`Some(None)` removes it).
    pub description: Option<Option<Note>>,
    /// A new secret, and how long the current one goes on signing.
    pub rotate: Option<(WebhookSecret, Duration)>,
    /// Clear `failing_since` and make the held deliveries due now.
    pub resume: bool,
}

/// One attempt of a delivery, as the dispatcher logged it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    /// When the request was made.
    pub at: Option<DateTime<Utc>>,
    /// The HTTP status the endpoint answered, if it answered.
    pub status: Option<i32>,
    /// What went wrong (a non-2xx answer, a timeout, a refused address).
    pub error: Option<String>,
    /// How long the request took.
    pub duration_ms: Option<i64>,
}

/// One event for one endpoint, and how sending it went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WebhookDelivery {
    /// The delivery's id (newest is highest).
    pub id: i64,
    /// The event: the `webhook-id` header of every attempt.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: EventType,
    /// `pending` (due at `next_attempt_at`), `held` (the endpoint is
    /// failing) or `delivered`.
    pub state: String,
    /// Attempts since it was made or last replayed.
    pub attempts: i32,
    /// When it is due, while `pending`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last attempt, if the endpoint answered.
    pub last_status: Option<i32>,
    /// What went wrong in the last attempt.
    pub last_error: Option<String>,
    /// When a 2xx was read.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the event was written.
    pub created_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub log: Vec<DeliveryAttempt>,
}

fn webhook_at(r: &Row) -> Result<Webhook, StoreError> {
    let names: Vec<String> = r.get(3);
    let event_types = names
        .iter()
        .map(|n| n.parse())
        .collect::<Result<Vec<EventType>, String>>()
        .map_err(StoreError::Corrupt)?;
    Ok(Webhook {
        id: r.get(0),
        tenant: r.get(1),
        url: r.get(2),
        event_types,
        description: r.get(4),
        failing_since: r.get(5),
        previous_secret_expires_at: r.get(6),
        created_at: r.get(7),
        updated_at: r.get(8),
    })
}

fn delivery_at(r: &Row) -> Result<WebhookDelivery, StoreError> {
    let event_type = r.get::<_, String>(2).parse().map_err(StoreError::Corrupt)?;
    let log = serde_json::from_str(r.get(11))
        .map_err(|e| StoreError::Corrupt(format!("a webhook delivery's log: {e}")))?;
    Ok(WebhookDelivery {
        id: r.get(0),
        event_id: r.get(1),
        event_type,
        state: r.get(3),
        attempts: r.get(4),
        next_attempt_at: r.get(5),
        last_attempt_at: r.get(6),
        last_status: r.get(7),
        last_error: r.get(8),
        delivered_at: r.get(9),
        created_at: r.get(10),
        log,
    })
}

impl Store {
    /// Creates `tenant`'s endpoint signed with `secret`; its id is a UUIDv7,
    /// so listings page in creation order.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn create_webhook(
        &self,
        tenant: &Tenant,
        new: &NewWebhook,
        secret: &WebhookSecret,
    ) -> Result<Webhook, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .one(
                &conn,
                &CREATE,
                &[
                    &Uuid::now_v7(),
                    &tenant.as_str(),
                    &new.url.as_str(),
                    &new.event_types.names(),
                    &new.description.as_ref().map(Note::as_str),
                    &secret.expose(),
                ],
            )
            .await?;
        webhook_at(&row)
    }

    /// A page of endpoints, newest first, after the endpoint `before`;
    /// `tenant`'s, or every tenant's for `None`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn webhooks_page(
        &self,
        tenant: Option<&Tenant>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Webhook>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = self
            .rows(
                &conn,
                &PAGE,
                &[&tenant.map(Tenant::as_str), &before, &limit],
            )
            .await?;
        rows.iter().map(webhook_at).collect()
    }

    /// Endpoint `id`, if it is `tenant`'s (any tenant's for `None`).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn webhook(
        &self,
        id: Uuid,
        tenant: Option<&Tenant>,
    ) -> Result<Option<Webhook>, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .opt(&conn, &GET, &[&id, &tenant.map(Tenant::as_str)])
            .await?;
        row.as_ref().map(webhook_at).transpose()
    }

    /// Applies `patch` to endpoint `id` if it is `tenant`'s, in one
    /// transaction with the resume of its held deliveries; the endpoint as
    /// it now is, or `None` when there is no such endpoint.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn patch_webhook(
        &self,
        id: Uuid,
        tenant: Option<&Tenant>,
        patch: &WebhookPatch,
    ) -> Result<Option<Webhook>, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = self.begin(&mut conn).await?;
        let (secret, overlap) = match &patch.rotate {
            Some((secret, overlap)) => (
                Some(secret.expose()),
                i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX),
            ),
            None => (None, 0),
        };
        let Some(row) = self
            .tx_opt(
                &tx,
                &PATCH,
                &[
                    &id,
                    &tenant.map(Tenant::as_str),
                    &patch.url.as_ref().map(WebhookUrl::as_str),
                    &patch.event_types.as_ref().map(EventTypes::names),
                    &patch.description.is_some(),
                    &patch
                        .description
                        .as_ref()
                        .and_then(Option::as_ref)
                        .map(Note::as_str),
                    &secret,
                    &overlap,
                    &patch.resume,
                ],
            )
            .await?
        else {
            return Ok(None);
        };
        if patch.resume {
            self.tx_rows(&tx, &RESUME, &[&id]).await?;
        }
        let webhook = webhook_at(&row)?;
        self.commit(tx).await?;
        Ok(Some(webhook))
    }

    /// Deletes endpoint `id` and its deliveries, if it is `tenant`'s;
    /// `false` when there is no such endpoint.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn delete_webhook(
        &self,
        id: Uuid,
        tenant: Option<&Tenant>,
    ) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        let n = self
            .exec(&conn, &DELETE, &[&id, &tenant.map(Tenant::as_str)])
            .await?;
        Ok(n == 1)
    }

    /// A page of endpoint `id`'s deliveries, newest first, after the
    /// delivery `before`; empty when the endpoint is not `tenant`'s.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn webhook_deliveries_page(
        &self,
        id: Uuid,
        tenant: Option<&Tenant>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = self
            .rows(
                &conn,
                &DELIVERIES,
                &[&id, &before, &limit, &tenant.map(Tenant::as_str)],
            )
            .await?;
        rows.iter().map(delivery_at).collect()
    }

    /// Makes delivery `delivery` of endpoint `id` due now with a fresh retry
    /// schedule, whatever its state; the delivery as it now is, or `None`
    /// when the endpoint is not `tenant`'s or has no such delivery.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn replay_webhook_delivery(
        &self,
        id: Uuid,
        delivery: i64,
        tenant: Option<&Tenant>,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let conn = self.pool.get().await?;
        let row = self
            .opt(
                &conn,
                &REPLAY,
                &[&delivery, &id, &tenant.map(Tenant::as_str)],
            )
            .await?;
        row.as_ref().map(delivery_at).transpose()
    }
}
