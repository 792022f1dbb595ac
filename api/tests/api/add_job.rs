use serde_json::json;

use crate::helpers::{assert_problem, spawn_api, valid_body};

#[tokio::test]
async fn a_valid_job_is_queued_with_a_v7_job_id() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let response = api.post_job(Some(&token), &valid_body()).await;
    assert_eq!(response.status().as_u16(), 202);
    let answer: serde_json::Value = response.json().await.expect("json");
    let job_id: uuid::Uuid = answer["job_id"]
        .as_str()
        .expect("job id")
        .parse()
        .expect("uuid");
    assert_eq!(job_id.get_version_num(), 7);
    assert_eq!(answer["status"], "queued");
    assert_eq!(
        answer["idempotency_key"],
        job_id.to_string(),
        "no key given: the job id is the key"
    );
    assert_eq!(api.queue_len().await, 1);
}

#[tokio::test]
async fn the_idempotency_key_header_is_accepted_and_must_match_the_body() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let header_only = api
        .client
        .post(format!("{}/addJob", api.address))
        .bearer_auth(&token)
        .header("Idempotency-Key", "welcome:header")
        .json(&valid_body())
        .send()
        .await
        .expect("request");
    assert_eq!(header_only.status().as_u16(), 202);
    let answer: serde_json::Value = header_only.json().await.expect("json");
    assert_eq!(answer["idempotency_key"], "welcome:header");

    let mut body = valid_body();
    body["idempotency_key"] = json!("welcome:body");
    let mismatch = api
        .client
        .post(format!("{}/addJob", api.address))
        .bearer_auth(&token)
        .header("Idempotency-Key", "welcome:other")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_problem(mismatch, 422, "idempotency_key").await;
}

#[tokio::test]
async fn invalid_input_is_refused_with_a_problem_naming_the_field() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let cases = [
        (
            json!({"to": "not an address", "subject": "s", "text": "t"}),
            "`to`",
        ),
        (
            json!({"to": "a@example.com, b@example.com", "subject": "s", "text": "t"}),
            "`to`",
        ),
        (
            json!({"to": "friends: a@example.com, b@example.com;", "subject": "s", "text": "t"}),
            "`to`",
        ),
        (
            json!({"to": "a@example.com", "subject": "hi\r\nBcc: eve@example.com", "text": "t"}),
            "`subject`",
        ),
        (
            json!({"to": "a@example.com", "subject": "x".repeat(999), "text": "t"}),
            "`subject`",
        ),
        (json!({"to": "a@example.com", "subject": "s"}), "`text`"),
        (
            json!({"to": "a@example.com", "subject": "s", "text": "t", "from": "bad"}),
            "`from`",
        ),
        (
            json!({"to": "a@example.com", "subject": "s", "text": "t", "reply_to": "x@y.z\nBcc: e@f.g"}),
            "`reply_to`",
        ),
        (
            json!({"to": "a@example.com", "subject": "s", "text": "t", "idempotency_key": ""}),
            "`idempotency_key`",
        ),
        (
            json!({"to": "a@example.com", "subject": "s", "text": "t", "idempotency_key": "k".repeat(256)}),
            "`idempotency_key`",
        ),
        (
            json!({"to": "a@example.com", "subject": "s", "text": "t", "idempotency_key": "a\u{7}b"}),
            "`idempotency_key`",
        ),
    ];
    for (body, field) in cases {
        let response = api.post_job(Some(&token), &body).await;
        assert_problem(response, 422, field).await;
    }
    assert_eq!(api.queue_len().await, 0, "nothing invalid was enqueued");
}

#[tokio::test]
async fn unreadable_bodies_are_refused_with_400() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let missing_to = api
        .post_job(Some(&token), &json!({"subject": "s", "text": "t"}))
        .await;
    assert_problem(missing_to, 400, "`to`").await;
    let unknown = api
        .post_job(
            Some(&token),
            &json!({"to": "a@example.com", "subject": "s", "text": "t", "htm": "x"}),
        )
        .await;
    assert_problem(unknown, 400, "htm").await;
    let malformed = api
        .client
        .post(format!("{}/addJob", api.address))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"to\": ")
        .send()
        .await
        .expect("request");
    assert_problem(malformed, 400, "JSON").await;
    assert_eq!(api.queue_len().await, 0);
}
