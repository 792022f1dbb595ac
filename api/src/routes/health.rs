//! Liveness, readiness and metrics; unauthenticated. `/metrics` is served
//! on `METRICS_ADDR` only, with the other two; those are on `API_ADDR` too.

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::readiness;

use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// `GET /healthz`: the process answers. Never touches a dependency.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process answers", body = Object)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: Redis and Postgres answer in time, and the API is not
/// shutting down (`SHUTDOWN_DELAY_MS` after SIGTERM). `warnings` lists what
/// is wrong without making the API unready (a Redis that evicts keys).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Redis and Postgres answer", body = Object),
    (status = 503, description = "A dependency is down, or the API is shutting down", body = Problem, content_type = "application/problem+json"),
))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::ShuttingDown);
    }
    readiness::check(&state.queue, &state.store)
        .await
        .map_err(|not_ready| ApiError::NotReady(not_ready.down.join(" and ")))?;
    let warnings = readiness::warnings(&state.queue).await;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready", "warnings": warnings})))
}

/// `GET /metrics` on `METRICS_ADDR`: Prometheus text format; 404 without
/// an exporter in this process.
pub async fn metrics(handle: Option<web::Data<PrometheusHandle>>) -> HttpResponse {
    match handle {
        Some(h) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(h.render()),
        None => HttpResponse::NotFound().finish(),
    }
}
