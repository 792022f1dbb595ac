//! Outcome webhooks end to end: jobs end in every state, the outbox writes
//! their events, and the worker's dispatcher POSTs them to a real HTTP
//! receiver, signed so that the Python `standardwebhooks` package (an
//! independent implementation) verifies them as well as the project's own
//! verifier; through a receiver that is down for a while, a dispatcher
//! killed mid-request, a stalled endpoint, and targets refused as SSRF.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sendonce_api::auth::JwtKeys;
use sendonce_api::config::ApiConfig;
use sendonce_shared::domain::webhooks::is_public_ip;
use sendonce_testkit::process::eventually;
use sendonce_testkit::{ReceivedRequest, WebhookReceiver, sample};
use sendonce_worker::webhooks::signing;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::helpers::{
    DEADLINE, Options, SECRET, TestSystem, email, keyed_task, signal, spawn_system,
    start_worker_process,
};

/// Worker flags: a receiver on 127.0.0.1 is allowed (development), and an
/// idle dispatcher looks often, so tests wait for deliveries, not polls.
fn dispatch_args(extra: &[&str]) -> Vec<String> {
    [
        "--app-env",
        "development",
        "--webhook-poll-min",
        "20ms",
        "--webhook-poll-max",
        "100ms",
    ]
    .iter()
    .chain(extra)
    .map(|s| (*s).to_owned())
    .collect()
}

/// An API that takes endpoints on 127.0.0.1 (development), and workers
/// started with [`dispatch_args`] and `extra`.
pub(crate) async fn system_with(extra: &[&str]) -> TestSystem {
    spawn_system(Options {
        api_args: vec!["--app-env".into(), "development".into()],
        worker_args: dispatch_args(extra),
        ..Options::default()
    })
    .await
}

/// A token of tenant `default` (the tests' jobs are its) for `/webhooks`.
fn webhooks_token() -> String {
    let config = ApiConfig::parse_from(["sendonce-api", "--jwt-secret", SECRET]);
    JwtKeys::from_config(&config)
        .expect("JWT settings")
        .mint(
            "tests",
            "webhooks:read webhooks:write",
            Duration::from_secs(3600),
        )
        .expect("mint a token")
}

/// An endpoint made through the API.
pub(crate) struct Endpoint {
    id: Uuid,
    secret: String,
    /// The secret before a rotation, while it signs too.
    previous: Option<String>,
}

/// Sends `body` to `path` with a webhooks token; the 2xx answer's JSON.
async fn webhooks_api(
    system: &TestSystem,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> Value {
    let response = system
        .client
        .request(method, format!("{}{path}", system.api))
        .bearer_auth(webhooks_token())
        .json(body)
        .send()
        .await
        .expect("a /webhooks request");
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path} answered {status}: {answer}");
    answer
}

/// `POST /webhooks` for `url` (`types` absent: the default subscription);
/// with `rotate`, then a rotation whose overlap lasts a day.
pub(crate) async fn create_endpoint(
    system: &TestSystem,
    url: &str,
    types: Option<&[&str]>,
    rotate: bool,
) -> Endpoint {
    let mut body = json!({"url": url});
    if let Some(types) = types {
        body["event_types"] = json!(types);
    }
    let created = webhooks_api(system, reqwest::Method::POST, "/webhooks", &body).await;
    let id = created["id"].as_str().expect("an id");
    let secret = created["secret"].as_str().expect("the secret").to_owned();
    let mut endpoint = Endpoint {
        id: id.parse().expect("a UUID"),
        secret,
        previous: None,
    };
    if rotate {
        let rotated = webhooks_api(
            system,
            reqwest::Method::PATCH,
            &format!("/webhooks/{id}"),
            &json!({"rotate_secret": true}),
        )
        .await;
        let new = rotated["secret"]
            .as_str()
            .expect("the new secret")
            .to_owned();
        endpoint.previous = Some(std::mem::replace(&mut endpoint.secret, new));
    }
    endpoint
}

/// `GET /webhooks/{id}`.
async fn endpoint_state(system: &TestSystem, endpoint: &Endpoint) -> Value {
    let response = system
        .client
        .get(format!("{}/webhooks/{}", system.api, endpoint.id))
        .bearer_auth(webhooks_token())
        .send()
        .await
        .expect("GET /webhooks/{id}");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// The events written, by id: (type, job id).
async fn events(system: &TestSystem) -> HashMap<String, (String, String)> {
    system
        .db
        .connect()
        .await
        .query("SELECT id, type, job_id FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| {
            (
                r.get::<_, Uuid>(0).to_string(),
                (r.get(1), r.get::<_, Uuid>(2).to_string()),
            )
        })
        .collect()
}

/// Each delivery's (state, attempts, last_error) for `endpoint`.
async fn deliveries(system: &TestSystem, endpoint: Uuid) -> Vec<(String, i32, Option<String>)> {
    system
        .db
        .connect()
        .await
        .query(
            "SELECT state, attempts, last_error FROM webhook_deliveries
             WHERE endpoint_id = $1 ORDER BY id",
            &[&endpoint],
        )
        .await
        .expect("deliveries")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The webhook ids answered with a 2xx.
fn delivered_ids(requests: &[ReceivedRequest]) -> HashSet<String> {
    requests
        .iter()
        .filter(|r| r.delivered())
        .filter_map(|r| r.header(signing::ID).map(str::to_owned))
        .collect()
}

fn header_map(request: &ReceivedRequest) -> HeaderMap {
    request
        .headers
        .iter()
        .map(|(n, v)| {
            (
                HeaderName::from_bytes(n.as_bytes()).expect("a header name"),
                HeaderValue::from_str(v).expect("a header value"),
            )
        })
        .collect()
}

/// The interpreter of the venv `scripts/webhooks-verifier.sh` makes, or
/// `STANDARDWEBHOOKS_PYTHON`.
fn python() -> PathBuf {
    let path = std::env::var_os("STANDARDWEBHOOKS_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/standardwebhooks-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no Python with the standardwebhooks package at {}: run scripts/webhooks-verifier.sh \
         (or set STANDARDWEBHOOKS_PYTHON to an interpreter that has it)",
        path.display()
    );
    path
}

const PYTHON_VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
results = []
for case in json.load(sys.stdin):
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        results.append(True)
    except Exception:
        results.append(False)
print(json.dumps(results))
"#;

/// Whether Python's `standardwebhooks` verifies each request with
/// `secret`.
async fn python_verifies(secret: &str, requests: &[ReceivedRequest]) -> Vec<bool> {
    let cases: Vec<Value> = requests
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), json!(v)))
                .collect();
            json!({
                "secret": secret,
                "headers": headers,
                "body": String::from_utf8(r.body.clone()).expect("a UTF-8 body"),
            })
        })
        .collect();
    let mut child = tokio::process::Command::new(python())
        .args(["-c", PYTHON_VERIFY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run Python");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&serde_json::to_vec(&cases).expect("JSON"))
        .await
        .expect("write the cases");
    drop(stdin);
    let output = child.wait_with_output().await.expect("Python's answer");
    assert!(
        output.status.success(),
        "Python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON list")
}

async fn job_id_of(system: &TestSystem, body: &Value) -> String {
    let answer = system.post_ok(body).await;
    answer["job_id"].as_str().expect("a job id").to_owned()
}

#[tokio::test]
async fn every_outcome_arrives_as_one_signed_event_that_standardwebhooks_verifies() {
    let system = system_with(&[]).await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = create_endpoint(&system, &receiver.url(), None, true).await;
    let previous = endpoint.previous.clone().expect("rotated");
    let _worker = system.spawn_worker().await;

    let mut jobs = BTreeMap::new();
    let sent = job_id_of(&system, &email("ada@example.com", Some("hook:sent"))).await;
    system.wait_for_status(&sent, "sent").await;
    jobs.insert("job.sent", sent);
    let copy = keyed_task("ada@example.com", "hook:sent", "Welcome aboard");
    system.push_task(&copy).await;
    let duplicate = copy.job_id.to_string();
    system.wait_for_status(&duplicate, "duplicate").await;
    jobs.insert("job.duplicate", duplicate);
    let gone = "gone+reject-rcpt@example.com";
    let failed = job_id_of(&system, &email(gone, Some("hook:failed"))).await;
    system.wait_for_status(&failed, "failed").await;
    jobs.insert("job.failed", failed);
    let suppressed = job_id_of(&system, &email(gone, Some("hook:suppressed"))).await;
    system.wait_for_status(&suppressed, "suppressed").await;
    jobs.insert("job.suppressed", suppressed);
    let cut = "cut+drop-after-data@example.com";
    let uncertain = job_id_of(&system, &email(cut, Some("hook:uncertain"))).await;
    system.wait_for_status(&uncertain, "uncertain").await;
    jobs.insert("job.uncertain", uncertain);
    let mut later = email("later@example.com", Some("hook:canceled"));
    later["send_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let canceled = job_id_of(&system, &later).await;
    let (status, _) = system
        .post_api(&format!("/jobs/{canceled}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    jobs.insert("job.canceled", canceled);

    let requests = receiver
        .wait_until("an event per outcome", DEADLINE, |r| {
            delivered_ids(r).len() >= jobs.len()
        })
        .await;

    let written = events(&system).await;
    assert_eq!(
        written.len(),
        jobs.len(),
        "one event per outcome: {written:?}"
    );
    let mut received = BTreeMap::new();
    for request in &requests {
        let id = request.header(signing::ID).expect("a webhook-id");
        let body = request.json();
        let (kind, job) = &written[id];
        assert_eq!(body["type"], json!(kind), "{body}");
        assert_eq!(body["data"]["job_id"], json!(job), "{body}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap_or_default())
                .is_ok(),
            "{body}"
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        received.insert(kind.clone(), job.clone());
    }
    let expected: BTreeMap<String, String> = jobs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    assert_eq!(received, expected);
    let data = |kind: &str| {
        requests
            .iter()
            .map(ReceivedRequest::json)
            .find(|b| b["type"] == kind)
            .expect("the event")["data"]
            .clone()
    };
    assert_eq!(data("job.sent")["to"], "ada@example.com");
    assert_eq!(data("job.sent")["idempotency_key"], "hook:sent");
    assert_eq!(
        data("job.duplicate")["duplicate_of"],
        json!(jobs["job.sent"])
    );
    assert!(
        data("job.failed")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("5.1.1"),
        "{}",
        data("job.failed")
    );

    let wrong = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    for request in &requests {
        let headers = header_map(request);
        let signatures = request.header(signing::SIGNATURE).expect("a signature");
        assert_eq!(
            signatures.split(' ').count(),
            2,
            "both secrets sign: {signatures}"
        );
        signing::verify(&endpoint.secret, &headers, &request.body).expect("the current secret");
        signing::verify(&previous, &headers, &request.body).expect("the previous secret");
        assert!(signing::verify(&wrong, &headers, &request.body).is_err());
    }
    let all = vec![true; requests.len()];
    assert_eq!(python_verifies(&endpoint.secret, &requests).await, all);
    assert_eq!(python_verifies(&previous, &requests).await, all);
    assert_eq!(
        python_verifies(&wrong, &requests).await,
        vec![false; requests.len()],
        "a wrong secret fails"
    );
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_every_event_once_back_duplicates_only_by_webhook_id() {
    let schedule = ["100ms"; 40].join(",");
    let system = system_with(&["--webhook-retry-schedule", &schedule]).await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = create_endpoint(&system, &receiver.url(), Some(&["job.sent"]), false).await;
    receiver.down().await;
    let _worker = system.spawn_worker().await;
    let mut jobs = Vec::new();
    for i in 0..8 {
        let job = job_id_of(&system, &email(&format!("r{i}@example.com"), None)).await;
        jobs.push(job);
    }
    for job in &jobs {
        system.wait_for_status(job, "sent").await;
    }
    eventually("every delivery to fail twice", DEADLINE, || async {
        let all = deliveries(&system, endpoint.id).await;
        (all.len() == jobs.len() && all.iter().all(|(_, attempts, _)| *attempts >= 2)).then_some(())
    })
    .await;

    receiver.up().await;
    receiver.fail_fraction(0.3, 503, 19);
    let requests = receiver
        .wait_until("every event delivered", DEADLINE, |r| {
            delivered_ids(r).len() == jobs.len()
        })
        .await;

    let written = events(&system).await;
    let ids: HashSet<String> = written.keys().cloned().collect();
    assert_eq!(delivered_ids(&requests), ids, "every event arrived");
    let mut bodies: HashMap<&str, &[u8]> = HashMap::new();
    for request in &requests {
        let id = request.header(signing::ID).expect("a webhook-id");
        let body = bodies.entry(id).or_insert(&request.body);
        assert_eq!(*body, &request.body[..], "one body per webhook-id");
        assert_eq!(request.json()["data"]["job_id"], json!(written[id].1));
    }
    let received_jobs: HashSet<String> = written.values().map(|(_, job)| job.clone()).collect();
    assert_eq!(received_jobs, jobs.into_iter().collect());
    eventually("every delivery recorded", DEADLINE, || async {
        let all = deliveries(&system, endpoint.id).await;
        all.iter()
            .all(|(state, _, _)| state == "delivered")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_event_in_flight_when_its_dispatcher_is_sigkilled_is_delivered_after_restart() {
    let system = system_with(&["--webhook-timeout", "2s"]).await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = create_endpoint(&system, &receiver.url(), Some(&["job.sent"]), false).await;
    receiver.stall_next(1);
    let doomed = system.spawn_captured_worker(&[]);
    let job = job_id_of(&system, &email("ada@example.com", Some("hook:crash"))).await;
    system.wait_for_status(&job, "sent").await;
    let stalled = receiver
        .wait_until("the request in flight", DEADLINE, |r| r.len() == 1)
        .await;
    assert_eq!(stalled[0].answered, None);

    signal(doomed.id(), "KILL");
    let killed_at = tokio::time::Instant::now();
    let _restarted = system.spawn_worker().await;
    let requests = receiver
        .wait_until("the event delivered after the restart", DEADLINE, |r| {
            r.iter().any(ReceivedRequest::delivered)
        })
        .await;

    eprintln!(
        "delivered {:?} after the kill (lease: timeout 2 s + margin)",
        killed_at.elapsed()
    );
    let delivered = requests.iter().find(|r| r.delivered()).expect("delivered");
    assert_eq!(
        delivered.header(signing::ID),
        stalled[0].header(signing::ID)
    );
    assert_eq!(delivered.body, stalled[0].body);
    assert_eq!(delivered.json()["data"]["job_id"], json!(job));
    eventually("the delivery recorded", DEADLINE, || async {
        let all = deliveries(&system, endpoint.id).await;
        // The killed attempt recorded nothing: one attempt, the delivery.
        (all == [("delivered".to_owned(), 1, None)]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stalled_endpoint_delays_neither_email_nor_another_endpoint() {
    let system = system_with(&[
        "--webhook-timeout",
        "60s",
        "--webhook-concurrency",
        "4",
        "--webhook-per-endpoint",
        "2",
    ])
    .await;
    let stalled = WebhookReceiver::start().await;
    let healthy = WebhookReceiver::start().await;
    stalled.stall_next(usize::MAX);
    create_endpoint(&system, &stalled.url(), Some(&["job.sent"]), false).await;
    create_endpoint(&system, &healthy.url(), Some(&["job.sent"]), false).await;
    let _worker = system.spawn_worker().await;

    let mut jobs = Vec::new();
    for i in 0..6 {
        let job = job_id_of(&system, &email(&format!("s{i}@example.com"), None)).await;
        jobs.push(job);
    }
    for job in &jobs {
        system.wait_for_status(job, "sent").await;
    }
    let requests = healthy
        .wait_until("every event at the healthy endpoint", DEADLINE, |r| {
            delivered_ids(r).len() == jobs.len()
        })
        .await;

    assert_eq!(delivered_ids(&requests).len(), 6);
    let open = stalled.requests();
    assert!(
        !open.is_empty() && open.len() <= 2 && open.iter().all(|r| r.answered.is_none()),
        "the stalled endpoint holds at most its share: {} requests",
        open.len()
    );
}

/// This machine's name, when it resolves only to addresses that are not
/// public (as in a container, or `127.0.1.1` from `/etc/hosts`): a name the
/// URL check lets through and only the resolver refuses.
async fn private_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_owned();
    let addresses: Vec<_> = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .ok()?
        .collect();
    (!addresses.is_empty() && addresses.iter().all(|a| !is_public_ip(a.ip()))).then_some(name)
}

#[tokio::test]
async fn outside_development_private_targets_and_plain_http_are_refused_without_a_request() {
    let system = spawn_system(Options {
        // The API takes them (development); the worker does not.
        api_args: vec!["--app-env".into(), "development".into()],
        worker_args: vec![
            "--webhook-poll-min".into(),
            "20ms".into(),
            "--webhook-poll-max".into(),
            "100ms".into(),
            // No retries: the first refusal exhausts the schedule.
            "--webhook-retry-schedule".into(),
            String::new(),
        ],
        ..Options::default()
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let port = receiver.addr().port();
    let mut targets = vec![
        (receiver.url(), "must be an https URL".to_owned()),
        (
            format!("https://127.0.0.1:{port}/hook"),
            "not 127.0.0.1".to_owned(),
        ),
        (format!("https://[::1]:{port}/hook"), "not [::1]".to_owned()),
        (
            format!("https://localhost:{port}/hook"),
            "not localhost".to_owned(),
        ),
    ];
    match private_hostname().await {
        Some(name) => targets.push((
            format!("https://{name}:{port}/hook"),
            format!("`{name}` resolves only to addresses that are not public"),
        )),
        None => eprintln!("this machine's name resolves to a public address: not tried"),
    }
    let mut endpoints = Vec::new();
    for (url, _) in &targets {
        endpoints.push(create_endpoint(&system, url, Some(&["job.sent"]), false).await);
    }
    let _worker = system.spawn_worker().await;

    let job = job_id_of(&system, &email("ada@example.com", None)).await;
    system.wait_for_status(&job, "sent").await;

    for ((url, refusal), endpoint) in targets.iter().zip(&endpoints) {
        let recorded = eventually(&format!("the attempt at {url}"), DEADLINE, || async {
            let all = deliveries(&system, endpoint.id).await;
            all.first()
                .filter(|(_, attempts, _)| *attempts == 1)
                .cloned()
        })
        .await;
        let (state, _, error) = recorded;
        assert_eq!(state, "held", "{url}: held, its endpoint failing");
        let error = error.unwrap_or_default();
        assert!(error.contains(refusal.as_str()), "{url}: {error}");
        let shown = endpoint_state(&system, endpoint).await;
        assert!(shown["failing_since"].is_string(), "{url}: {shown}");
    }
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
}

#[tokio::test]
async fn a_worker_shows_attempts_by_outcome_and_the_oldest_undelivered_age_on_its_metrics() {
    let system = system_with(&["--webhook-retry-schedule", "50ms,50ms,50ms"]).await;
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(503);
    let endpoint = create_endpoint(&system, &receiver.url(), Some(&["job.sent"]), false).await;
    // The event waits for a dispatcher: the worker that sends has none.
    let sender = system
        .spawn_worker_with(&["--webhook-dispatch", "false"])
        .await;
    let job = job_id_of(&system, &email("ada@example.com", None)).await;
    system.wait_for_status(&job, "sent").await;
    sender.stop().await.expect("the sender stops");

    let worker = start_worker_process(&system, &[]).await;
    receiver
        .wait_until("a failed attempt", DEADLINE, |r| {
            r.iter().any(|r| r.answered == Some(503))
        })
        .await;
    receiver.respond_with(204);
    receiver
        .wait_until("the delivery", DEADLINE, |r| {
            r.iter().any(ReceivedRequest::delivered)
        })
        .await;

    let delivered = r#"sendonce_webhook_deliveries_total{outcome="delivered"}"#;
    let text = eventually("the delivery on /metrics", DEADLINE, || async {
        let text = worker.metrics().await;
        (sample(&text, delivered) == Some(1.0)).then_some(text)
    })
    .await;
    let retrying = r#"sendonce_webhook_deliveries_total{outcome="retrying"}"#;
    assert!(sample(&text, retrying).is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"sendonce_webhook_deliveries_total{outcome="held"}"#
        ),
        Some(0.0)
    );
    let attempts = sample(&text, "sendonce_webhook_attempt_duration_seconds_count");
    assert!(attempts.is_some_and(|n| n >= 2.0), "{text}");
    // Read when the worker started, while the event waited.
    let age = format!(
        "sendonce_webhook_oldest_undelivered_seconds{{endpoint=\"{}\"}}",
        endpoint.id
    );
    assert!(sample(&text, &age).is_some_and(|s| s > 0.0), "{text}");
    worker.stop().await;
}

/// `GET /webhooks/{id}/deliveries`: the items, newest first.
async fn delivery_log(system: &TestSystem, endpoint: &Endpoint) -> Vec<Value> {
    let response = system
        .client
        .get(format!(
            "{}/webhooks/{}/deliveries",
            system.api, endpoint.id
        ))
        .bearer_auth(webhooks_token())
        .send()
        .await
        .expect("GET /webhooks/{id}/deliveries");
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.expect("JSON");
    page["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_endpoint_out_of_retries_holds_its_events_until_resumed_and_a_replay_sends_again() {
    let system = system_with(&["--webhook-retry-schedule", "50ms"]).await;
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(503);
    let endpoint = create_endpoint(&system, &receiver.url(), Some(&["job.sent"]), false).await;
    let _worker = system.spawn_worker().await;

    let first = job_id_of(&system, &email("first@example.com", None)).await;
    system.wait_for_status(&first, "sent").await;
    eventually("the endpoint failing", DEADLINE, || async {
        let shown = endpoint_state(&system, &endpoint).await;
        shown["failing_since"].is_string().then_some(())
    })
    .await;
    let second = job_id_of(&system, &email("second@example.com", None)).await;
    system.wait_for_status(&second, "sent").await;
    let log = eventually("both deliveries held", DEADLINE, || async {
        let log = delivery_log(&system, &endpoint).await;
        (log.len() == 2 && log.iter().all(|d| d["state"] == "held")).then_some(log)
    })
    .await;
    let attempted = receiver.requests().len();
    assert_eq!(
        attempted, 2,
        "two attempts at the first event, none at the second"
    );
    assert_eq!(log[1]["attempts"], 2);
    assert_eq!(log[1]["log"].as_array().map(Vec::len), Some(2));
    assert_eq!(log[1]["last_status"], 503);
    assert_eq!(log[0]["attempts"], 0);

    receiver.respond_with(204);
    webhooks_api(
        &system,
        reqwest::Method::PATCH,
        &format!("/webhooks/{}", endpoint.id),
        &json!({"resume": true}),
    )
    .await;
    let requests = receiver
        .wait_until("both events after the resume", DEADLINE, |r| {
            delivered_ids(r).len() == 2
        })
        .await;
    let jobs: HashSet<Value> = requests
        .iter()
        .filter(|r| r.delivered())
        .map(|r| r.json()["data"]["job_id"].clone())
        .collect();
    assert_eq!(jobs, HashSet::from([json!(first), json!(second)]));

    let delivered = eventually("both delivered in the log", DEADLINE, || async {
        let log = delivery_log(&system, &endpoint).await;
        log.iter().all(|d| d["state"] == "delivered").then_some(log)
    })
    .await;
    let replayed = &delivered[1];
    webhooks_api(
        &system,
        reqwest::Method::POST,
        &format!(
            "/webhooks/{}/deliveries/{}/replay",
            endpoint.id, replayed["id"]
        ),
        &json!({}),
    )
    .await;
    let requests = receiver
        .wait_until("the replay", DEADLINE, |r| {
            r.iter().filter(|r| r.delivered()).count() == 3
        })
        .await;
    let again = requests.last().expect("the replay");
    assert_eq!(
        again.header(signing::ID),
        replayed["event_id"].as_str(),
        "a replay is the same event"
    );
    assert!(endpoint_state(&system, &endpoint).await["failing_since"].is_null());
}
