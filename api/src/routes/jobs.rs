//! `GET /jobs/{job_id}`: a job's current state; `POST /jobs/{job_id}/cancel`
//! withdraws one whose message has not started.

use actix_web::{HttpResponse, web};
use sendonce_shared::domain::JobId;
use sendonce_shared::store::{Cancel, JobRecord};

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
    let job = parse_job_id(&path)?;
    // Another tenant's job answers as an unknown one does.
    match state
        .job(job, caller.claims.tenant_scope(None).as_ref())
        .await?
    {
        Some(record) => Ok(HttpResponse::Ok().json(record)),
        None => Err(ApiError::NotFound(format!("no job {job}"))),
    }
}

fn parse_job_id(path: &str) -> Result<JobId, ApiError> {
    path.parse().map_err(|e| ApiError::InvalidField {
        field: "job_id",
        reason: format!("{e}"),
    })
}

/// `POST /jobs/{job_id}/cancel`.
#[utoipa::path(
    post,
    path = "/jobs/{job_id}/cancel",
    tag = "jobs",
    params(("job_id" = uuid::Uuid, Path, description = "The `job_id` `POST /addJob` answered")),
    responses(
        (status = 200, description = "The job is `canceled` (now or before): nothing will be sent for it, and its key stays taken", body = JobRecord),
        (status = 409, description = "Too late: its message is being sent, an earlier attempt may have delivered it, or it is finished; `state` names its state", body = crate::problem::Problem<'static>, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["jobs:write"])),
)]
#[tracing::instrument(name = "cancel_job", skip_all, fields(job_id = %path))]
pub async fn cancel(
    caller: Authorized<scope::JobsWrite>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = parse_job_id(&path)?;
    let tenant = caller.claims.tenant_scope(None);
    match state.cancel(job, tenant.as_ref()).await? {
        Cancel::Canceled => {}
        Cancel::TooLate { status, reason } => {
            return Err(ApiError::Conflict {
                state: status,
                reason,
            });
        }
        Cancel::Unknown => return Err(ApiError::NotFound(format!("no job {job}"))),
    }
    tracing::info!("canceled");
    match state.job(job, tenant.as_ref()).await? {
        Some(record) => Ok(HttpResponse::Ok().json(record)),
        None => Err(ApiError::NotFound(format!("no job {job}"))),
    }
}
