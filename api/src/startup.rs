//! Building and running the HTTP server.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::error::JsonPayloadError;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::queue::{self, Queue};
use sendonce_shared::store::{self, Acceptor, Store};
use tracing_actix_web::TracingLogger;

use crate::auth::JwtKeys;
use crate::config::ApiConfig;
use crate::handoff::Handoff;
use crate::openapi;
use crate::problem::ApiError;
use crate::rate_limit::RateLimit;
use crate::routes;
use crate::state::AppState;
use crate::telemetry;

/// A bound, not yet running API server.
pub struct Application {
    port: u16,
    server: Server,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects, applies migrations and binds `API_ADDR` (port 0 picks a
    /// free one, for tests).
    pub async fn build(
        config: ApiConfig,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        let keys = JwtKeys::from_config(&config)?;
        let store = Store::new(store::connect(&config.common.database_url, 16)?);
        store
            .migrate()
            .await
            .context("failed to apply migrations to DATABASE_URL")?;
        let queue = Queue::new(
            queue::connect(&config.common.redis_url, 32)?,
            &config.common.redis_key_prefix,
        );
        sendonce_shared::readiness::warn_at_start(&queue).await;
        let handoff = Handoff::new(queue.clone());
        let pusher = handoff.clone();
        let acceptor = Acceptor::spawn(store.clone(), move |tasks: Vec<String>| {
            let handoff = pusher.clone();
            async move { handoff.push(tasks).await }
        });
        let state = AppState {
            queue,
            store,
            acceptor,
            handoff,
        };
        let listener = TcpListener::bind(config.api_addr)
            .with_context(|| format!("failed to bind API_ADDR {}", config.api_addr))?;
        let port = listener.local_addr()?.port();
        let limits = Limits {
            max_body_bytes: usize::try_from(config.max_body_bytes)
                .context("MAX_BODY_BYTES does not fit in memory")?,
            rate: config.rate_limit_per_sec.map(RateLimit::per_second),
        };
        let server = serve(listener, state, keys, limits, metrics)?;
        Ok(Self { port, server })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains
    /// in-flight requests and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        handle.stop(true).await;
        server.await??;
        Ok(())
    }
}

pub(crate) fn json_error(err: JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge(limit).into()
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType.into(),
        JsonPayloadError::Deserialize(e) => {
            ApiError::BadRequest(format!("the JSON body is invalid: {e}")).into()
        }
        other => ApiError::BadRequest(format!("the body could not be read: {other}")).into(),
    }
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// Request limits from the configuration.
struct Limits {
    max_body_bytes: usize,
    rate: Option<RateLimit>,
}

fn serve(
    listener: TcpListener,
    state: AppState,
    keys: JwtKeys,
    limits: Limits,
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<Server> {
    let state = web::Data::new(state);
    let keys = web::Data::new(keys);
    let metrics = metrics.map(web::Data::new);
    let rate = limits.rate.map(web::Data::new);
    let max_body_bytes = limits.max_body_bytes;
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .wrap(from_fn(telemetry::record_request))
            .wrap(TracingLogger::<telemetry::RequestSpan>::new())
            .wrap(from_fn(telemetry::request_id))
            .app_data(state.clone())
            .app_data(keys.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body_bytes)
                    .error_handler(json_error),
            )
            .route("/addJob", web::post().to(routes::add_job::add_job))
            .service(routes::add_jobs::resource("/addJobs"))
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("the query string is invalid: {err}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("the path is invalid: {err}")).into()
            }))
            .route("/jobs/{job_id}", web::get().to(routes::jobs::get_job))
            .route("/failedJobs", web::get().to(routes::failed_jobs::list))
            .route(
                "/failedJobs/retry",
                web::post().to(routes::failed_jobs::retry_bulk),
            )
            .route(
                "/failedJobs/{id}/retry",
                web::post().to(routes::failed_jobs::retry_one),
            )
            .route(
                "/failedJobs/{id}",
                web::delete().to(routes::failed_jobs::discard),
            )
            .route("/healthz", web::get().to(routes::health::healthz))
            .default_service(web::to(not_found))
            .route("/readyz", web::get().to(routes::health::readyz))
            .route("/metrics", web::get().to(routes::health::metrics))
            .route("/openapi.json", web::get().to(openapi::openapi_json));
        if let Some(m) = &metrics {
            app = app.app_data(m.clone());
        }
        if let Some(r) = &rate {
            app = app.app_data(r.clone());
        }
        app
    })
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
