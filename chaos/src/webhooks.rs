//! Webhooks under chaos: every tenant has an endpoint on one receiver (in
//! this process) that fails a fraction of requests, while workers, which
//! dispatch, are killed and paused. At the end every job that reached a
//! terminal state must have exactly one event of that outcome, delivered
//! (answered 2xx) at least once, correctly signed, and every `webhook-id`
//! received must always carry the same body.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sendonce_testkit::webhooks::WebhookReceiver;
use standardwebhooks::Webhook;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::DRAIN_POLL;

/// The share of webhook requests the receiver answers `503`.
pub const FAIL_FRACTION: f64 = 0.2;
/// Short retries (the default waits hours): with a fifth of requests
/// failing, running out of 16 attempts has odds of 0.2^16.
pub const RETRY_SCHEDULE: &str = "100ms,200ms,400ms,800ms,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s";
/// A request's timeout; a killed worker's claim comes due after it plus
/// the dispatcher's 10 s margin.
pub const TIMEOUT: &str = "2s";

/// The receiver and what it takes to check what it got.
#[derive(Debug)]
pub struct Hooks {
    /// The receiver every endpoint points at.
    pub receiver: WebhookReceiver,
    /// Each tenant's signing secret.
    secrets: HashMap<String, String>,
}

/// What the webhook check counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Terminal jobs whose outcome event was checked.
    pub events: usize,
    /// Requests the receiver got.
    pub requests: usize,
    /// Of them, answered with a failure on purpose.
    pub failed_requests: usize,
}

/// Starts the receiver and makes one endpoint per tenant on it, through
/// `POST /webhooks` with each tenant's `webhooks:write` token.
pub async fn setup(base: &str, tokens: &[(String, String)], seed: u64) -> anyhow::Result<Hooks> {
    let receiver = WebhookReceiver::start().await;
    receiver.fail_fraction(FAIL_FRACTION, 503, seed);
    let client = reqwest::Client::new();
    let mut secrets = HashMap::new();
    for (tenant, token) in tokens {
        let response = client
            .post(format!("{base}/webhooks"))
            .bearer_auth(token)
            .json(&serde_json::json!({"url": receiver.url(), "description": "chaos"}))
            .send()
            .await
            .context("POST /webhooks")?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("its answer")?;
        anyhow::ensure!(
            status.as_u16() == 201,
            "POST /webhooks answered {status}: {body}"
        );
        let secret = body["secret"]
            .as_str()
            .context("the endpoint's secret")?
            .to_owned();
        secrets.insert(tenant.clone(), secret);
    }
    Ok(Hooks { receiver, secrets })
}

/// Polls until every webhook delivery is delivered, or `timeout` passes
/// (what is left is then reported by [`check`]).
pub async fn drain(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'",
                &[],
            )
            .await?
            .get(0);
        if waiting == 0 || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Holds the receiver's record against the database: see the module.
/// Findings go to `findings`.
pub async fn check(
    client: &Client,
    hooks: &Hooks,
    findings: &mut Vec<String>,
) -> anyhow::Result<Counts> {
    let requests = hooks.receiver.requests();
    let mut counts = Counts {
        requests: requests.len(),
        ..Counts::default()
    };
    let mut delivered: HashSet<String> = HashSet::new();
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    let (mut unsigned, mut changed_body) = (Vec::new(), Vec::new());
    for request in &requests {
        let Some(id) = request.header("webhook-id").map(str::to_owned) else {
            unsigned.push("a request without webhook-id".to_owned());
            continue;
        };
        match request.answered {
            Some(status) if (200..300).contains(&status) => {
                delivered.insert(id.clone());
            }
            Some(_) => counts.failed_requests += 1,
            None => {}
        }
        if !verifies(&hooks.secrets, request) {
            unsigned.push(id.clone());
        }
        match bodies.get(&id) {
            Some(body) if *body != request.body => changed_body.push(id.clone()),
            Some(_) => {}
            None => {
                bodies.insert(id, request.body.clone());
            }
        }
    }
    if !unsigned.is_empty() {
        findings.push(format!(
            "webhook requests whose signature does not verify with their tenant's secret: {} (e.g. {})",
            unsigned.len(),
            unsigned.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    if !changed_body.is_empty() {
        findings.push(format!(
            "webhook-ids received with different bodies: {} (e.g. {})",
            changed_body.len(),
            changed_body
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    // Per terminal job, the events of its outcome.
    let rows = client
        .query(
            "SELECT j.job_id::text, j.type,
                    COALESCE(array_agg(e.id::text) FILTER (WHERE e.id IS NOT NULL), '{}')
             FROM (SELECT job_id, 'job.' || state AS type FROM deliveries
                   WHERE state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed')
                   UNION ALL
                   SELECT job_id, 'job.duplicate' FROM duplicate_jobs) j
             LEFT JOIN events e ON e.job_id = j.job_id AND e.type = j.type
             GROUP BY j.job_id, j.type",
            &[],
        )
        .await?;
    let (mut not_one, mut undelivered) = (Vec::new(), Vec::new());
    for row in &rows {
        let (job, kind, ids): (String, String, Vec<String>) = (row.get(0), row.get(1), row.get(2));
        counts.events += 1;
        match ids.as_slice() {
            [id] if delivered.contains(id) => {}
            [id] => undelivered.push(format!("{job} {kind} {id}")),
            _ => not_one.push(format!("{job} {kind}: {} events", ids.len())),
        }
    }
    if !not_one.is_empty() {
        findings.push(format!(
            "terminal jobs without exactly one event of their outcome: {} (e.g. {})",
            not_one.len(),
            not_one
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !undelivered.is_empty() {
        findings.push(format!(
            "terminal jobs whose outcome event was never delivered: {} (e.g. {})",
            undelivered.len(),
            undelivered
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(counts)
}

/// Whether `request` verifies with the secret of the tenant its body
/// names, as a receiver checks it.
fn verifies(
    secrets: &HashMap<String, String>,
    request: &sendonce_testkit::webhooks::ReceivedRequest,
) -> bool {
    let body: serde_json::Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(_) => return false,
    };
    let Some(secret) = body["data"]["tenant"]
        .as_str()
        .and_then(|tenant| secrets.get(tenant))
    else {
        return false;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    Webhook::new(secret)
        .and_then(|hook| hook.verify(&request.body, &headers))
        .is_ok()
}
