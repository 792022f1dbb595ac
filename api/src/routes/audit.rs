//! `GET /audit`: the audit trail of requeues and discards.

use actix_web::{HttpResponse, web};
use sendonce_shared::store::{AuditEntry, AuditFilter};
use serde::{Deserialize, Serialize};

use crate::auth::{Authorized, scope};
use crate::paging::Keyset;
use crate::problem::{ApiError, parse_field};
use crate::state::AppState;

/// `GET /audit` query string.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `requeue` or `discard`.
    #[param(pattern = "^(requeue|discard)$")]
    pub action: Option<String>,
    /// Only the actions of this token `sub`.
    pub actor: Option<String>,
    /// With the scope `tenants:all`: only actions on this tenant's entries.
    /// Without it, ignored: a caller sees the actions on its own.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub tenant: Option<String>,
}

/// One page of the audit trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// One row per entry requeued or discarded, newest first.
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// `GET /audit`.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "dead letters",
    params(AuditQuery),
    responses((status = 200, description = "One page, newest first", body = AuditPage)),
    security(("bearer" = ["audit:read"])),
)]
#[tracing::instrument(name = "list_audit", skip_all)]
pub async fn list(
    caller: Authorized<scope::AuditRead>,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let keyset = Keyset::parse(query.limit, query.cursor.as_deref())?;
    let filter = AuditFilter {
        action: parse_field("action", query.action.as_deref())?,
        actor: query.actor,
        tenant: caller
            .claims
            .tenant_scope(parse_field("tenant", query.tenant.as_deref())?),
    };
    let rows = state
        .store
        .audit_page(&filter, keyset.before, keyset.fetch())
        .await
        .map_err(ApiError::unavailable)?;
    let (items, next_cursor) = keyset.page(rows, |row| row.id);
    Ok(HttpResponse::Ok().json(AuditPage { items, next_cursor }))
}
