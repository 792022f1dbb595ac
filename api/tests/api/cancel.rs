//! `POST /jobs/{id}/cancel`: a job whose message has not started is
//! `canceled` for good; one being sent, perhaps delivered or finished
//! answers `409` with its state; another tenant's job answers `404`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApi, assert_problem, spawn_api};

fn token(api: &TestApi, tenant: &str, scope: &str) -> String {
    api.keys
        .mint_with(
            "app",
            scope,
            Duration::from_secs(600),
            serde_json::Map::from_iter([("tenant".to_owned(), json!(tenant))]),
        )
        .expect("mint")
}

fn keyed(key: &str) -> Value {
    json!({"to": "ada@example.com", "subject": "Hi", "text": "hello", "idempotency_key": key})
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(api: &TestApi, token: &str, key: &str) -> String {
    let (status, body) = answer(api.post_job(Some(token), &keyed(key)).await).await;
    assert_eq!(status, 202, "{body}");
    body["job_id"].as_str().expect("a job id").to_owned()
}

async fn cancel(api: &TestApi, token: &str, job: &str) -> reqwest::Response {
    api.call("POST", &format!("/jobs/{job}/cancel"), Some(token))
        .await
}

/// Puts job `id`'s row in `state` as a worker would have.
async fn set_state(api: &TestApi, id: &str, state: &str, maybe_sent: bool) {
    let job: uuid::Uuid = id.parse().expect("a job id");
    api.db()
        .connect()
        .await
        .execute(
            "UPDATE deliveries SET state = $2, maybe_sent = $3 WHERE job_id = $1",
            &[&job, &state, &maybe_sent],
        )
        .await
        .expect("a state");
}

async fn stored_state(api: &TestApi, id: &str) -> String {
    let job: uuid::Uuid = id.parse().expect("a job id");
    api.db()
        .connect()
        .await
        .query_one("SELECT state FROM deliveries WHERE job_id = $1", &[&job])
        .await
        .expect("a row")
        .get(0)
}

#[tokio::test]
async fn a_waiting_job_is_canceled_for_good_and_its_key_stays_taken() {
    let api = spawn_api().await;
    let writer = token(&api, "billing", "jobs:write jobs:read");
    let job = post(&api, &writer, "cancel:waiting").await;

    let (status, body) = answer(cancel(&api, &writer, &job).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "canceled");
    assert_eq!(body["job_id"], job.as_str());
    let (status, read) = answer(
        api.call("GET", &format!("/jobs/{job}"), Some(&writer))
            .await,
    )
    .await;
    assert_eq!((status, read["status"].as_str()), (200, Some("canceled")));

    // Again: still canceled, nothing else changes.
    let (status, again) = answer(cancel(&api, &writer, &job).await).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("canceled")));
    assert_eq!(
        again["updated_at"], body["updated_at"],
        "a second cancel writes nothing"
    );

    // The key is the canceled job's: a replay answers it, no new job.
    let (status, replay) =
        answer(api.post_job(Some(&writer), &keyed("cancel:waiting")).await).await;
    assert_eq!(
        (status, replay["job_id"].as_str()),
        (200, Some(job.as_str()))
    );
}

#[tokio::test]
async fn every_state_a_cancel_may_take_is_taken() {
    let api = spawn_api().await;
    let writer = token(&api, "billing", "jobs:write");
    for state in ["queued", "retrying", "processing"] {
        let job = post(&api, &writer, &format!("cancel:from-{state}")).await;
        set_state(&api, &job, state, false).await;
        let (status, body) = answer(cancel(&api, &writer, &job).await).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("canceled")),
            "from {state}: {body}"
        );
        assert_eq!(stored_state(&api, &job).await, "canceled");
    }
}

#[tokio::test]
async fn too_late_answers_409_with_the_state_and_changes_nothing() {
    let api = spawn_api().await;
    let writer = token(&api, "billing", "jobs:write");
    let cases = [
        ("sending", false, "processing", "being sent"),
        ("sent", false, "sent", "finished"),
        ("failed", false, "failed", "finished"),
        ("uncertain", false, "uncertain", "finished"),
        // Requeued after an attempt that may have delivered.
        ("queued", true, "queued", "may have delivered"),
        ("processing", true, "processing", "may have delivered"),
    ];
    for (stored, maybe_sent, shown, why) in cases {
        let job = post(&api, &writer, &format!("cancel:late-{stored}-{maybe_sent}")).await;
        set_state(&api, &job, stored, maybe_sent).await;
        let problem = assert_problem(cancel(&api, &writer, &job).await, 409, why).await;
        assert_eq!(problem["state"], shown, "{problem}");
        assert_eq!(stored_state(&api, &job).await, stored, "unchanged");
    }
}

#[tokio::test]
async fn another_tenants_job_answers_as_an_unknown_one_and_stays_as_it_was() {
    let api = spawn_api().await;
    let billing = token(&api, "billing", "jobs:write");
    let shop = token(&api, "shop", "jobs:write");
    let job = post(&api, &billing, "cancel:theirs").await;

    let theirs = assert_problem(cancel(&api, &shop, &job).await, 404, "no job").await;
    let unknown = assert_problem(
        cancel(&api, &shop, &uuid::Uuid::now_v7().to_string()).await,
        404,
        "no job",
    )
    .await;
    assert_eq!(
        theirs["detail"].as_str().map(|d| d.replace(&job, "ID")),
        unknown["detail"].as_str().map(|d| d
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
            + " ID"),
        "the same answer as for an unknown id"
    );
    assert_eq!(stored_state(&api, &job).await, "queued");

    let operator = token(&api, "ops", "jobs:write tenants:all");
    let (status, body) = answer(cancel(&api, &operator, &job).await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("canceled")));
}

#[tokio::test]
async fn cancel_needs_jobs_write_and_a_job_id() {
    let api = spawn_api().await;
    let writer = token(&api, "billing", "jobs:write");
    let reader = token(&api, "billing", "jobs:read");
    let job = post(&api, &writer, "cancel:scope").await;
    assert_problem(cancel(&api, &reader, &job).await, 403, "jobs:write").await;
    assert_problem(cancel(&api, &writer, "not-a-uuid").await, 422, "job_id").await;
    let response = api.call("POST", &format!("/jobs/{job}/cancel"), None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(stored_state(&api, &job).await, "queued");
}
