//! `GET /jobs/{job_id}`: a job's current state.

use actix_web::{HttpResponse, web};
use sendonce_shared::domain::JobId;

use crate::auth::{Authorized, scope};
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /jobs/{job_id}`.
#[tracing::instrument(name = "get_job", skip_all, fields(job_id = %path))]
pub async fn get_job(
    _: Authorized<scope::JobsRead>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job: JobId = path.parse().map_err(|e| ApiError::InvalidField {
        field: "job_id",
        reason: format!("{e}"),
    })?;
    match state.job(job).await? {
        Some(record) => Ok(HttpResponse::Ok().json(record)),
        None => Err(ApiError::NotFound(format!("no job {job}"))),
    }
}
