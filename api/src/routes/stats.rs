//! `GET /stats`: how many jobs are in each state, in all and by priority.

use actix_web::{HttpResponse, web};
use sendonce_shared::store::Stats;
use serde::Deserialize;

use crate::auth::{Authorized, scope};
use crate::problem::{ApiError, parse_field};
use crate::state::AppState;

/// `?tenant=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// With the scope `tenants:all`: only this tenant's jobs (every
    /// tenant's when absent). Without it, ignored: a caller sees its own.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub tenant: Option<String>,
}

/// `GET /stats`. Finished jobs, duplicates and dead letters come from
/// counters kept as each job ends, the others from an index of the
/// unfinished jobs only, so the answer costs the same at any history.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "jobs",
    params(StatsQuery),
    responses((status = 200, description = "The caller's tenant's jobs in each state (every tenant's with `tenants:all`), in all and by priority", body = Stats)),
    security(("bearer" = ["jobs:read"])),
)]
#[tracing::instrument(name = "stats", skip_all)]
pub async fn stats(
    caller: Authorized<scope::JobsRead>,
    state: web::Data<AppState>,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = caller
        .claims
        .tenant_scope(parse_field("tenant", query.tenant.as_deref())?);
    let stats = state
        .store
        .stats(tenant.as_ref())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(stats))
}
