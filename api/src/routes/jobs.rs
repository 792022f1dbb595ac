//! `GET /jobs/{job_id}`: a job's current state.

use actix_web::{HttpResponse, web};
use sendonce_shared::domain::JobId;
use sendonce_shared::store::JobRecord;

use crate::auth::{Authorized, scope};
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /jobs/{job_id}`.
#[utoipa::path(
    get,
    path = "/jobs/{job_id}",
    tag = "jobs",
    params(("job_id" = uuid::Uuid, Path, description = "The `job_id` `POST /addJob` answered")),
    responses((status = 200, description = "The job's state", body = JobRecord)),
    security(("bearer" = ["jobs:read"])),
)]
#[tracing::instrument(name = "get_job", skip_all, fields(job_id = %path))]
pub async fn get_job(
    caller: Authorized<scope::JobsRead>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job: JobId = path.parse().map_err(|e| ApiError::InvalidField {
        field: "job_id",
        reason: format!("{e}"),
    })?;
    // Another tenant's job answers as an unknown one does.
    match state
        .job(job, caller.claims.tenant_scope(None).as_ref())
        .await?
    {
        Some(record) => Ok(HttpResponse::Ok().json(record)),
        None => Err(ApiError::NotFound(format!("no job {job}"))),
    }
}
