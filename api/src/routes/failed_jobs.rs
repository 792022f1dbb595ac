//! The dead-letter table: list, requeue, discard.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use sendonce_shared::domain::{Metadata, Note};
use sendonce_shared::store::{Actor, FailedFilter, FailedJob, RequeueError, RequeueSelection};
use serde::{Deserialize, Serialize};

use crate::auth::{Authorized, scope};
use crate::paging::Keyset;
use crate::problem::{ApiError, parse_field};
use crate::state::AppState;
use crate::telemetry;

/// Most ids one bulk requeue may name.
const MAX_IDS: usize = 1000;

/// `GET /failedJobs` query string.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `failed` or `uncertain`.
    #[param(pattern = "^(failed|uncertain)$")]
    pub reason: Option<String>,
    /// Only entries dead-lettered at or after this RFC 3339 instant.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// With the scope `tenants:all`: only this tenant's entries (every
    /// tenant's when absent). Without it, ignored: a caller sees its own.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub tenant: Option<String>,
    /// Only entries whose job's metadata has this key with this value:
    /// `key:value`, split at the first colon (keys hold none), the value
    /// matched exactly.
    #[param(max_length = 541, pattern = "^[A-Za-z0-9_.-]{1,40}:")]
    pub metadata: Option<String>,
}

/// `?metadata=key:value` as the one-entry metadata it must contain.
fn metadata_filter(raw: &str) -> Result<Metadata, ApiError> {
    let invalid = |reason: String| ApiError::InvalidField {
        field: "metadata",
        reason,
    };
    let (key, value) = raw
        .split_once(':')
        .ok_or_else(|| invalid("must be `key:value`".into()))?;
    Metadata::parse([(key.to_owned(), value.to_owned())]).map_err(|e| invalid(e.to_string()))
}

/// One page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// Entries, newest first.
    pub items: Vec<FailedJob>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// How many entries were requeued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Requeued {
    /// Entries put back on the queue.
    pub requeued: u64,
}

/// `GET /failedJobs`.
#[utoipa::path(
    get,
    path = "/failedJobs",
    tag = "dead letters",
    params(ListQuery),
    responses((status = 200, description = "One page, newest first", body = Page)),
    security(("bearer" = ["failed:read"])),
)]
#[tracing::instrument(name = "list_failed_jobs", skip_all)]
pub async fn list(
    caller: Authorized<scope::FailedRead>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let keyset = Keyset::parse(query.limit, query.cursor.as_deref())?;
    let since = query
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::InvalidField {
                    field: "since",
                    reason: format!("is not an RFC 3339 timestamp: {e}"),
                })
        })
        .transpose()?;
    let filter = FailedFilter {
        tenant: caller
            .claims
            .tenant_scope(parse_field("tenant", query.tenant.as_deref())?),
        reason: parse_field("reason", query.reason.as_deref())?,
        since,
        metadata: query.metadata.as_deref().map(metadata_filter).transpose()?,
    };
    let rows = state
        .store
        .failed_page(&filter, keyset.before, keyset.fetch())
        .await
        .map_err(ApiError::unavailable)?;
    let (items, next_cursor) = keyset.page(rows, |entry| entry.id);
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::InvalidField {
            field: "id",
            reason: "must be a positive integer".into(),
        })
}

/// `?note=` of the routes that act on one entry.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NoteQuery {
    /// Why, for the audit trail (`GET /audit`): 1 to 500 characters, no
    /// control characters.
    #[param(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub note: Option<String>,
}

/// Who acts, for the audit trail: the token's `sub`, the operator's `note`
/// and the request's id.
fn actor(
    caller: &Authorized<scope::FailedWrite>,
    req: &HttpRequest,
    note: Option<String>,
) -> Result<Actor, ApiError> {
    let note = note
        .map(Note::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidField {
            field: "note",
            reason: e.to_string(),
        })?;
    Ok(Actor {
        sub: caller.subject().to_owned(),
        tenant: caller.claims.tenant.clone(),
        // Another tenant's entry is acted on as an unknown one: not at all.
        scope: caller.claims.tenant_scope(None),
        note,
        request_id: telemetry::request_id_in(req.headers()).map(str::to_owned),
    })
}

pub(crate) async fn requeue(
    state: &AppState,
    selection: RequeueSelection,
    actor: &Actor,
) -> Result<u64, ApiError> {
    let queue = &state.queue;
    state
        .store
        .requeue_failed(&selection, actor, async |tasks: Vec<String>| {
            queue.push(&tasks).await
        })
        .await
        .map_err(|e| match e {
            RequeueError::Store(e) => ApiError::unavailable(e),
            RequeueError::Push(e) => ApiError::unavailable(e),
        })
}

/// `POST /failedJobs/{id}/retry`.
#[utoipa::path(
    post,
    path = "/failedJobs/{id}/retry",
    tag = "dead letters",
    params(("id" = i64, Path, minimum = 1, description = "The entry's `id`"), NoteQuery),
    responses((status = 200, description = "The entry was requeued", body = Requeued)),
    security(("bearer" = ["failed:write"])),
)]
#[tracing::instrument(name = "retry_failed_job", skip_all, fields(id = %path))]
pub async fn retry_one(
    caller: Authorized<scope::FailedWrite>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<NoteQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let actor = actor(&caller, &req, query.into_inner().note)?;
    match requeue(&state, RequeueSelection::Ids(vec![id]), &actor).await? {
        0 => Err(ApiError::NotFound(format!("no dead-letter entry {id}"))),
        _ => {
            tracing::info!(id, "dead-letter entry requeued");
            Ok(HttpResponse::Ok().json(Requeued { requeued: 1 }))
        }
    }
}

/// `POST /failedJobs/retry` body: ids, or all (optionally of one reason).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRetry {
    /// Entry ids, 1 to 1000 of them.
    #[serde(default)]
    pub ids: Option<Vec<i64>>,
    /// Every entry.
    #[serde(default)]
    pub all: Option<bool>,
    /// With `all`: only this reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Why, for the audit trail (`GET /audit`): 1 to 500 characters, no
    /// control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub note: Option<String>,
}

/// `POST /failedJobs/retry`.
#[utoipa::path(
    post,
    path = "/failedJobs/retry",
    tag = "dead letters",
    request_body = BulkRetry,
    responses((status = 200, description = "The selected entries were requeued", body = Requeued)),
    security(("bearer" = ["failed:write"])),
)]
#[tracing::instrument(name = "retry_failed_jobs", skip_all)]
pub async fn retry_bulk(
    caller: Authorized<scope::FailedWrite>,
    state: web::Data<AppState>,
    body: web::Json<BulkRetry>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let actor = actor(&caller, &req, body.note)?;
    let selection = match (body.ids, body.all) {
        (Some(ids), None | Some(false)) if body.reason.is_none() => {
            if ids.is_empty() || ids.len() > MAX_IDS {
                return Err(ApiError::InvalidField {
                    field: "ids",
                    reason: format!("must list 1 to {MAX_IDS} ids"),
                });
            }
            RequeueSelection::Ids(ids)
        }
        (None, Some(true)) => RequeueSelection::All(parse_field("reason", body.reason.as_deref())?),
        _ => {
            return Err(ApiError::BadRequest(
                "give either `ids`, or `all: true` with an optional `reason`".into(),
            ));
        }
    };
    let requeued = requeue(&state, selection, &actor).await?;
    tracing::info!(requeued, "dead-letter entries requeued");
    Ok(HttpResponse::Ok().json(Requeued { requeued }))
}

/// `DELETE /failedJobs/{id}`.
#[utoipa::path(
    delete,
    path = "/failedJobs/{id}",
    tag = "dead letters",
    params(("id" = i64, Path, minimum = 1, description = "The entry's `id`"), NoteQuery),
    responses((status = 204, description = "The entry was discarded")),
    security(("bearer" = ["failed:write"])),
)]
#[tracing::instrument(name = "discard_failed_job", skip_all, fields(id = %path))]
pub async fn discard(
    caller: Authorized<scope::FailedWrite>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<NoteQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let actor = actor(&caller, &req, query.into_inner().note)?;
    if state
        .store
        .discard_failed(id, &actor)
        .await
        .map_err(ApiError::unavailable)?
    {
        tracing::info!(id, "dead-letter entry discarded");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!("no dead-letter entry {id}")))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn only_positive_integers_are_ids(s in "[-+]?[0-9]{1,25}|\\PC{0,12}") {
            match parse_id(&s) {
                Ok(id) => prop_assert!(id > 0),
                Err(_) => prop_assert!(s.parse::<i64>().is_ok_and(|id| id <= 0) || s.parse::<i64>().is_err()),
            }
        }
    }
}
