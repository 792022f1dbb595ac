//! Webhook dispatch: POSTs each outcome event to the endpoints subscribed
//! to it, signed, at least once.
//!
//! # Layout
//!
//! - this module: the [`Dispatcher`], a task beside the run loop that
//!   claims due deliveries from Postgres, sends them, and records each
//!   attempt;
//! - [`config`]: its settings (`WEBHOOK_*`, `APP_ENV`) and the retry
//!   schedule;
//! - [`signing`]: Standard Webhooks signatures, and the verifier receivers
//!   (and the tests) use;
//! - [`guard`]: SSRF: the resolver that connects only to public addresses
//!   outside development (the URL itself is re-checked as the API checks
//!   it, by `WebhookUrl`);
//! - [`telemetry`]: its metrics.
//!
//! The dispatcher shares nothing with email sending but the Postgres pool,
//! from which it takes a connection only for the length of a statement: a
//! slow or dead endpoint holds a request slot of its own, never a
//! connection, a worker slot or another endpoint's slot (a claim gives an
//! endpoint no more than `WEBHOOK_PER_ENDPOINT` requests open in this
//! process).

pub mod config;
pub mod guard;
pub mod signing;
pub mod telemetry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sendonce_shared::domain::webhooks::WebhookUrl;
use sendonce_shared::store::{AttemptOutcome, DueDelivery, Store};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::config::{AppEnv, WebhookConfig};
use self::telemetry::Outcome;

/// How much longer than `WEBHOOK_TIMEOUT` a claim's lease lasts: time to
/// record the attempt once the request is over. A dispatcher killed
/// mid-request leaves its claims due again this long after the request's
/// deadline.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// How often the oldest-undelivered gauge is refreshed.
const AGES_EVERY: Duration = Duration::from_secs(15);

/// The most of a failure's text kept in the delivery log.
const MAX_ERROR_CHARS: usize = 500;

/// Delivers due webhooks until stopped.
#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    client: reqwest::Client,
    config: WebhookConfig,
    /// Requests open per endpoint in this process.
    open: Mutex<HashMap<Uuid, usize>>,
}

impl Dispatcher {
    /// A dispatcher on `store`, or `None` when `WEBHOOK_DISPATCH` is off.
    pub fn from_config(config: &WebhookConfig, store: Store) -> anyhow::Result<Option<Self>> {
        config.validate()?;
        if !config.dispatch {
            return Ok(None);
        }
        Ok(Some(Self {
            store,
            client: http_client(config)?,
            config: config.clone(),
            open: Mutex::default(),
        }))
    }

    /// How long a claim holds its deliveries.
    pub fn lease(&self) -> Duration {
        self.config.timeout + LEASE_MARGIN
    }

    /// Claims and delivers until `stop`; then lets open requests finish
    /// (each within `WEBHOOK_TIMEOUT`) and records them. A request still
    /// open after that is dropped, and its delivery comes due again when
    /// its lease runs out.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tracing::info!(
            concurrency = self.config.concurrency,
            per_endpoint = self.config.per_endpoint,
            timeout = ?self.config.timeout,
            "webhook dispatcher started"
        );
        let ages = tokio::spawn(Arc::clone(&self).report_ages(stop.clone()));
        let slots = Arc::new(Semaphore::new(usize::from(self.config.concurrency)));
        let mut requests = JoinSet::new();
        let mut idle = self.config.poll_min;
        loop {
            while requests.try_join_next().is_some() {}
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = requests.join_next() => continue,
                }
            }
            let open = self.open_requests();
            let claimed = self
                .store
                .claim_webhook_deliveries(
                    free,
                    usize::from(self.config.per_endpoint),
                    self.lease(),
                    &open,
                )
                .await;
            let wait = match claimed {
                Ok(batch) if !batch.is_empty() => {
                    idle = self.config.poll_min;
                    for delivery in batch {
                        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                            break;
                        };
                        self.opened(delivery.endpoint_id);
                        let this = Arc::clone(&self);
                        requests.spawn(async move {
                            let endpoint = delivery.endpoint_id;
                            this.deliver(delivery).await;
                            this.closed(endpoint);
                            drop(permit);
                        });
                    }
                    continue;
                }
                Ok(_) => {
                    let wait = idle;
                    idle = (idle * 2).min(self.config.poll_max);
                    wait
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "claiming webhook deliveries failed");
                    self.config.poll_max
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                // A request over: its endpoint may be claimable again.
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
            }
        }
        let drain = self.config.timeout + LEASE_MARGIN;
        if tokio::time::timeout(drain, async {
            while requests.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                abandoned = requests.len(),
                "webhook requests still open at shutdown; they are due again when their lease runs out"
            );
            requests.shutdown().await;
        }
        let _ = ages.await;
        tracing::info!("webhook dispatcher stopped");
    }

    /// Sends one delivery and records the attempt.
    #[tracing::instrument(skip_all, fields(delivery = delivery.id, endpoint = %delivery.endpoint_id, event = %delivery.event_id))]
    async fn deliver(&self, delivery: DueDelivery) {
        let _open = telemetry::inflight();
        let started = Instant::now();
        let result = self.attempt(&delivery).await;
        let took = started.elapsed();
        let attempt = delivery.attempts.saturating_add(1);
        let error;
        let outcome = match result {
            Ok(status) if (200..300).contains(&status) => AttemptOutcome::Delivered { status },
            Ok(status) => AttemptOutcome::Failed {
                status: Some(status),
                error: None,
                retry_in: self.config.retry_schedule.after(attempt),
            },
            Err(e) => {
                error = e;
                AttemptOutcome::Failed {
                    status: None,
                    error: Some(&error),
                    retry_in: self.config.retry_schedule.after(attempt),
                }
            }
        };
        let recorded = match self
            .store
            .record_webhook_attempt(&delivery, &outcome, took)
            .await
        {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(error = %chain(&e), ?outcome, "recording a webhook attempt failed; it is due again when its lease runs out");
                return;
            }
        };
        let label = match &outcome {
            _ if !recorded.written => Outcome::Superseded,
            AttemptOutcome::Delivered { .. } => Outcome::Delivered,
            AttemptOutcome::Failed { .. } if recorded.held => Outcome::Held,
            AttemptOutcome::Failed { .. } => Outcome::Retrying,
        };
        telemetry::attempt(label, took);
        if recorded.endpoint_failing {
            tracing::warn!(
                attempts = attempt,
                ?outcome,
                held = recorded.others_moved,
                "webhook endpoint failing: its retry schedule ran out; its deliveries are held until it is resumed"
            );
        } else if recorded.endpoint_resumed {
            tracing::info!(
                released = recorded.others_moved,
                "webhook endpoint delivered again: no longer failing"
            );
        } else {
            tracing::debug!(?outcome, "webhook attempt");
        }
    }

    /// The request: check the URL, sign, POST; the status read, or why
    /// there is none.
    async fn attempt(&self, delivery: &DueDelivery) -> Result<u16, String> {
        let url = WebhookUrl::parse(&delivery.url, self.config.app_env.url_policy())
            .map_err(|e| format!("refused: the URL {e}"))?;
        let body = body(delivery);
        let id = delivery.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signing::sign(
            &id,
            timestamp,
            &body,
            &delivery.secret,
            delivery.previous_secret.as_ref(),
        )
        .map_err(|e| e.to_string())?;
        let response = self
            .client
            .post(url.url().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signing::ID, id)
            .header(signing::TIMESTAMP, timestamp.to_string())
            .header(signing::SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| chain(&e))?;
        Ok(response.status().as_u16())
    }

    /// The endpoints with requests open here, and how many.
    fn open_requests(&self) -> Vec<(Uuid, usize)> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, open)| (*id, *open))
            .collect()
    }

    fn opened(&self, endpoint: Uuid) {
        *self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint)
            .or_default() += 1;
    }

    fn closed(&self, endpoint: Uuid) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&endpoint) {
            *n -= 1;
            if *n == 0 {
                open.remove(&endpoint);
            }
        }
    }

    /// Refreshes the oldest-undelivered gauge until `stop`, and releases
    /// deliveries left held on an endpoint that is no longer failing.
    async fn report_ages(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(AGES_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shown = HashSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {
                    match self.store.oldest_undelivered_webhooks().await {
                        Ok(ages) => shown = telemetry::oldest_undelivered(&ages, &shown),
                        Err(e) => tracing::debug!(error = %chain(&e), "reading the oldest undelivered webhooks failed"),
                    }
                    match self.store.release_stray_held_webhooks().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(released = n, "webhook deliveries held on an endpoint no longer failing made due"),
                        Err(e) => tracing::debug!(error = %chain(&e), "releasing stray held webhook deliveries failed"),
                    }
                }
            }
        }
    }
}

/// The dispatcher's HTTP client: no redirects, no proxy, every request
/// within `WEBHOOK_TIMEOUT`; outside development `https` only, through the
/// [`guard::GuardedResolver`].
fn http_client(config: &WebhookConfig) -> reqwest::Result<reqwest::Client> {
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve the name itself, past the guard.
        .no_proxy()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .pool_max_idle_per_host(usize::from(config.per_endpoint))
        .user_agent(concat!("sendonce-webhooks/", env!("CARGO_PKG_VERSION")));
    if config.app_env == AppEnv::Production {
        client = client
            .https_only(true)
            .dns_resolver(Arc::new(guard::GuardedResolver));
    }
    client.build()
}

/// The body every endpoint gets for an event, the same on every attempt:
/// `{"type", "timestamp", "data"}`.
pub fn body(delivery: &DueDelivery) -> String {
    serde_json::json!({
        "type": delivery.event_type,
        "timestamp": delivery
            .event_created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": delivery.data,
    })
    .to_string()
}

/// `e` and its causes, one line, cut to [`MAX_ERROR_CHARS`].
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::WorkerConfig;

    fn config(args: &[&str]) -> WebhookConfig {
        let args = std::iter::once("sendonce-worker").chain(args.iter().copied());
        WorkerConfig::try_parse_from(args)
            .expect("settings")
            .webhooks
    }

    /// The request itself, not only the URL check, goes through the
    /// guard: a name that resolves to loopback is never connected to.
    #[tokio::test]
    async fn outside_development_the_client_refuses_a_name_that_resolves_to_loopback() {
        let client = http_client(&config(&[])).expect("a client");

        let refused = client
            .post("https://localhost:9/hook")
            .send()
            .await
            .expect_err("refused");

        assert!(
            chain(&refused).contains("not public"),
            "{}",
            chain(&refused)
        );
        let plain = client.post("http://93.184.215.14/").send().await;
        assert!(plain.is_err(), "https only");
    }

    #[test]
    fn the_body_is_type_timestamp_and_data() {
        let delivery = DueDelivery {
            id: 1,
            endpoint_id: Uuid::nil(),
            url: "https://example.com/".into(),
            secret: "whsec_AAAA".into(),
            previous_secret: None,
            event_id: Uuid::nil(),
            event_type: "job.sent".into(),
            event_created_at: chrono::DateTime::from_timestamp(1_764_777_600, 123_456_000)
                .expect("a time"),
            data: serde_json::json!({"job_id": "j"}),
            attempts: 0,
            leased_until: chrono::Utc::now(),
        };

        let body: serde_json::Value = serde_json::from_str(&body(&delivery)).expect("JSON");

        assert_eq!(
            body,
            serde_json::json!({
                "type": "job.sent",
                "timestamp": "2025-12-03T16:00:00.123456Z",
                "data": {"job_id": "j"},
            })
        );
    }
}
