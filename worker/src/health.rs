//! The worker's small HTTP server on `METRICS_ADDR`: liveness, readiness
//! and Prometheus metrics.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::queue::Queue;
use sendonce_shared::store::Store;

/// How long a dependency may take to answer a readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

struct State {
    queue: Queue,
    store: Store,
    metrics: Option<PrometheusHandle>,
}

/// Starts serving on `listener`; the returned server runs when awaited.
pub fn serve(
    listener: TcpListener,
    queue: Queue,
    store: Store,
    metrics: Option<PrometheusHandle>,
) -> std::io::Result<Server> {
    let state = web::Data::new(State {
        queue,
        store,
        metrics,
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(render_metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    let redis = tokio::time::timeout(READY_TIMEOUT, state.queue.ping()).await;
    let postgres = tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await;
    let mut down = Vec::new();
    if !matches!(redis, Ok(Ok(()))) {
        down.push("redis");
    }
    if !matches!(postgres, Ok(Ok(()))) {
        down.push("postgres");
    }
    if down.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("application/problem+json")
            .json(serde_json::json!({
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": format!("not ready: {} did not answer within {READY_TIMEOUT:?}", down.join(" and ")),
                "down": down,
            }))
    }
}

async fn render_metrics(state: web::Data<State>) -> HttpResponse {
    match &state.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::NotFound().finish(),
    }
}
