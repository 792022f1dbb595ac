//! The audit trail of operator actions on the dead-letter table: who
//! requeued or discarded which entry, when, and why.
//!
//! The rows are written by the actions themselves (`dead_letters`), in the
//! transaction that makes each change; this module reads them.

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::sql::Sql;
use super::{Store, StoreError};
use crate::domain::{JobId, Note, Tenant};

/// Who acts on the dead-letter table, and why: what the audit rows of the
/// action record besides the entries it changed.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The bearer token's `sub` (empty for a token without one).
    pub sub: String,
    /// The token's tenant.
    pub tenant: Tenant,
    /// The tenant whose entries the action may touch: the actor's own, or
    /// `None` for an operator (scope `tenants:all`).
    pub scope: Option<Tenant>,
    /// The reason the operator gave, if any.
    pub note: Option<Note>,
    /// The request's `X-Request-Id`, to find its log lines.
    pub request_id: Option<String>,
}

impl Actor {
    /// The note as stored.
    pub(super) fn note(&self) -> Option<&str> {
        self.note.as_ref().map(Note::as_str)
    }

    /// The tenant the action is confined to, as a statement parameter.
    pub(super) fn scope(&self) -> Option<&str> {
        self.scope.as_ref().map(Tenant::as_str)
    }
}

/// What an operator did to a dead-letter entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// Put back on the queue with a fresh attempt budget.
    Requeue,
    /// Deleted; its key stays terminal.
    Discard,
}

impl std::str::FromStr for AuditAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "requeue" => Ok(Self::Requeue),
            "discard" => Ok(Self::Discard),
            other => Err(format!("`{other}` is not `requeue` or `discard`")),
        }
    }
}

impl AuditAction {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requeue => "requeue",
            Self::Discard => "discard",
        }
    }
}

/// One row of the audit trail as the API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The row's id (newest is highest).
    pub id: i64,
    /// When the action was made (its transaction's start).
    pub at: DateTime<Utc>,
    /// The token's `sub` (empty for a token without one).
    pub actor: String,
    /// The token's tenant.
    pub actor_tenant: String,
    /// The tenant of the entry acted on.
    pub tenant: String,
    /// `requeue` or `discard`.
    pub action: String,
    /// The dead-letter entry's `id`, as `GET /failedJobs` showed it.
    pub failed_job_id: i64,
    /// The entry's job.
    pub job_id: JobId,
    /// Its key.
    pub idempotency_key: String,
    /// Why the entry was dead: `failed` or `uncertain`.
    pub dead_reason: String,
    /// The reason the operator gave, if any.
    pub note: Option<String>,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
}

/// Which audit rows a listing wants.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only actions on entries of this tenant.
    pub tenant: Option<Tenant>,
}

const PAGE: Sql = Sql::new(
    "SELECT id, at, actor, action, failed_job_id, job_id, idempotency_key,
            dead_reason, note, request_id, actor_tenant, tenant
     FROM audit_log
     WHERE ($1::bigint IS NULL OR id < $1)
       AND ($2::text IS NULL OR action = $2)
       AND ($3::text IS NULL OR actor = $3)
       AND ($5::text IS NULL OR tenant = $5)
     ORDER BY id DESC
     LIMIT $4",
    &[Type::INT8, Type::TEXT, Type::TEXT, Type::INT8, Type::TEXT],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&PAGE];

impl Store {
    /// A page of the audit trail, newest first, after the row `before`
    /// (keyset pagination on the id, as [`Store::failed_page`]).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = self
            .rows(
                &conn,
                &PAGE,
                &[
                    &before,
                    &filter.action.map(AuditAction::as_str),
                    &filter.actor,
                    &limit,
                    &filter.tenant.as_ref().map(Tenant::as_str),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                actor_tenant: r.get(10),
                tenant: r.get(11),
                action: r.get(3),
                failed_job_id: r.get(4),
                job_id: JobId::from(r.get::<_, Uuid>(5)),
                idempotency_key: r.get(6),
                dead_reason: r.get(7),
                note: r.get(8),
                request_id: r.get(9),
            })
            .collect())
    }
}
