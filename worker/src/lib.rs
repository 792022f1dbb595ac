//! The sendonce worker: pops email tasks from Redis and sends each
//! idempotency key at most once.
//!
//! # Layout
//!
//! - [`config`]: `WorkerConfig`, every setting with its environment variable.
//! - [`runner`]: the run loop: reliable pop, L1 and L2 claims, send, record,
//!   acknowledge; leases, retry promotion, crash recovery and the sweeper.
//! - [`mailer`]: pooled SMTP connections driven command by command, so a
//!   failure is known to be before or after the data went out; its
//!   `message` module builds a task's message (attachments and inline
//!   parts included), the same bytes on every attempt, its `connection`
//!   module opens and checks one relay's connections, its `relays` module
//!   chooses among several relays and skips unavailable ones for a while,
//!   its `wire` module keeps bodies, headers and addresses within what
//!   strict servers accept, and addresses out of stored replies, and its
//!   `dkim` module signs with the key of the sender's domain.
//! - [`retry`]: exponential backoff with full jitter.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on `METRICS_ADDR`.
//! - [`telemetry`]: every metric's name and help, registered at start-up,
//!   and the one-line recorders the run loop calls.
//! - [`webhooks`]: the webhook dispatcher, a task beside the run loop that
//!   delivers outcome events to endpoints, signed, at least once.
//!
//! The protocol and its proofs are in `docs/exactly-once.md`.

pub mod config;
pub mod health;
pub mod mailer;
pub mod retry;
pub mod runner;
pub mod telemetry;
pub mod webhooks;

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::queue::{self, Queue};
use sendonce_shared::store::Store;

use crate::config::WorkerConfig;
use crate::mailer::Mailer;
use crate::runner::Worker;
use crate::webhooks::Dispatcher;

/// A worker ready to run, with its health server bound.
pub struct Application {
    worker: Worker,
    /// `None` with `WEBHOOK_DISPATCH=false`.
    dispatcher: Option<Dispatcher>,
    health: actix_web::dev::Server,
    metrics_port: u16,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("worker", &self.worker)
            .field("dispatcher", &self.dispatcher.is_some())
            .field("metrics_port", &self.metrics_port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects, applies migrations, binds `METRICS_ADDR` (port 0 picks a
    /// free one) and assembles the worker. Nothing is popped until
    /// [`Application::run_until_stopped`].
    pub async fn build(
        config: WorkerConfig,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        // Before any connection: a bad DKIM key stops the worker at once.
        let mailer = Mailer::from_config(&config)?;
        let store = Store::connect(
            &config.common.database_url,
            &config.common.postgres.options(),
            config.database_pool_size(),
        )?;
        store
            .migrate()
            .await
            .context("failed to apply migrations to DATABASE_URL")?;
        let queue = Queue::sharded(
            queue::connect(&config.common.redis_url, &config.common.redis_tls())?,
            &config.common.redis_key_prefix,
            config.common.queue_shards,
        );
        queue.ping().await.context("failed to reach REDIS_URL")?;
        sendonce_shared::readiness::check_layout_at_start(&queue).await?;
        sendonce_shared::readiness::warn_at_start(&queue).await;
        let listener = TcpListener::bind(config.metrics_addr)
            .with_context(|| format!("failed to bind METRICS_ADDR {}", config.metrics_addr))?;
        let metrics_port = listener.local_addr()?.port();
        let health = health::serve(listener, queue.clone(), store.clone(), metrics)?;
        let dispatcher = Dispatcher::from_config(&config.webhooks, store.clone())?;
        Ok(Self {
            worker: Worker::new(config, queue, store, mailer),
            dispatcher,
            health,
            metrics_port,
        })
    }

    /// The port `/healthz` and `/metrics` are served on.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// This worker's id (names its processing list and leases).
    pub fn worker_id(&self) -> &str {
        self.worker.id()
    }

    /// Runs until `shutdown` resolves, then drains and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.health.handle();
        let health = tokio::spawn(self.health);
        // The dispatcher drains beside the worker, and stops with this
        // future even when it is dropped unfinished.
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop_dispatch = stop.clone().drop_guard();
        let dispatch = self
            .dispatcher
            .map(|d| tokio::spawn(Arc::new(d).run(stop.clone())));
        let shutdown = {
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        };
        let result = self.worker.run(shutdown).await;
        stop.cancel();
        if let Some(dispatch) = dispatch {
            let _ = dispatch.await;
        }
        handle.stop(true).await;
        let _ = health.await;
        result
    }
}
