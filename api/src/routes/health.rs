//! Liveness, readiness and metrics; unauthenticated.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// How long a dependency may take to answer a readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process answers. Never touches a dependency.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process answers", body = Object)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: Redis and Postgres answer in time.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Redis and Postgres answer", body = Object),
    (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let redis = tokio::time::timeout(READY_TIMEOUT, state.queue.ping()).await;
    let postgres = tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await;
    let down: Vec<&str> = [
        ("redis", matches!(redis, Ok(Ok(())))),
        ("postgres", matches!(postgres, Ok(Ok(())))),
    ]
    .into_iter()
    .filter_map(|(name, up)| (!up).then_some(name))
    .collect();
    if down.is_empty() {
        Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
    } else {
        Err(ApiError::NotReady(down.join(" and ")))
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    (status = 404, description = "No metrics exporter in this process"),
))]
pub async fn metrics(handle: Option<web::Data<PrometheusHandle>>) -> HttpResponse {
    match handle {
        Some(h) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(h.render()),
        None => HttpResponse::NotFound().finish(),
    }
}
