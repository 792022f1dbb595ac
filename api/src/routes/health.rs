//! Liveness, readiness and metrics; unauthenticated.

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::readiness;

use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process answers. Never touches a dependency.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: Redis and Postgres answer in time.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    readiness::check(&state.queue, &state.store)
        .await
        .map_err(|not_ready| ApiError::NotReady(not_ready.down.join(" and ")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(handle: Option<web::Data<PrometheusHandle>>) -> HttpResponse {
    match handle {
        Some(h) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(h.render()),
        None => HttpResponse::NotFound().finish(),
    }
}
