//! `send_at`: validated (RFC 3339, at most `MAX_SCHEDULE_DAYS` ahead,
//! naming the field), recorded as the row's due time, and handed to the
//! delayed set instead of the queue; a time already past is sent at once.

use chrono::Utc;
use serde_json::{Value, json};

use crate::helpers::{TestApi, assert_problem, spawn_api};

fn at(send_at: &str, key: &str) -> Value {
    json!({"to": "ada@example.com", "subject": "Hi", "text": "hello",
           "idempotency_key": key, "send_at": send_at})
}

async fn scheduled_len(api: &TestApi) -> usize {
    let mut conn = api.redis().await;
    redis::cmd("ZCARD")
        .arg(format!("{{{}}}:scheduled", api.prefix))
        .query_async(&mut conn)
        .await
        .expect("ZCARD")
}

#[tokio::test]
async fn a_bad_or_too_distant_send_at_is_refused_naming_it_and_nothing_is_stored() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    for bad in ["tomorrow", "2026-13-01T00:00:00Z", "2026-12-03 10:00"] {
        assert_problem(
            api.post_job(Some(&token), &at(bad, "s:bad")).await,
            422,
            "send_at",
        )
        .await;
    }
    let far = (Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    assert_problem(
        api.post_job(Some(&token), &at(&far, "s:far")).await,
        422,
        "MAX_SCHEDULE_DAYS",
    )
    .await;
    assert_eq!(api.recorded().await, 0);
    assert_eq!((api.queue_len().await, scheduled_len(&api).await), (0, 0));
}

#[tokio::test]
async fn a_job_for_later_waits_in_the_delayed_set_and_one_for_the_past_goes_at_once() {
    let api = spawn_api().await;
    let token = api.token("jobs:write jobs:read");
    let later = Utc::now() + chrono::Duration::hours(2);
    let response = api
        .post_job(Some(&token), &at(&later.to_rfc3339(), "s:later"))
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["status"], "scheduled");
    let job: Value = api
        .call(
            "GET",
            &format!("/jobs/{}", answer["job_id"].as_str().expect("id")),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(job["status"], "scheduled");
    let due: chrono::DateTime<Utc> = job["next_attempt_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("next_attempt_at");
    assert!(
        (due - later).num_milliseconds().abs() < 1,
        "{due} vs {later}"
    );
    assert_eq!((api.queue_len().await, scheduled_len(&api).await), (0, 1));

    let past = (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let response = api.post_job(Some(&token), &at(&past, "s:past")).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["status"], "queued");
    assert_eq!((api.queue_len().await, scheduled_len(&api).await), (1, 1));
}

#[tokio::test]
async fn a_batch_schedules_each_job_on_its_own() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let later = (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let now = json!({"to": "ada@example.com", "subject": "Hi", "text": "hello", "idempotency_key": "b:now"});
    let response = api.post_jobs(&token, &[at(&later, "b:later"), now]).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    let statuses: Vec<&str> = answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["scheduled", "queued"]);
    assert_eq!((api.queue_len().await, scheduled_len(&api).await), (1, 1));
}
