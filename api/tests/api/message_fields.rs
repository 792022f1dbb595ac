//! What a request may carry besides the message itself: `headers` to add
//! (an allow-list, one line each, bounded) and `metadata` (the client's own
//! labels, returned by `GET /jobs/{id}` and the dead-letter listing, which
//! filters on them).

use serde_json::{Value, json};

use crate::helpers::{TestApi, assert_problem, dead_letter, spawn_api, valid_body};

/// The valid body with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut body = valid_body();
    body[field] = value;
    body
}

async fn get(api: &TestApi, scope: &str, path: &str) -> (u16, Value) {
    let response = api.call("GET", path, Some(&api.token(scope))).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn allowed_headers_are_accepted_and_kept_with_the_task() {
    let api = spawn_api().await;
    let headers = json!({
        "List-Unsubscribe": "<https://example.com/u/42>, <mailto:unsubscribe@example.com>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "In-Reply-To": "<order-42@shop.example.com>",
        "References": "<order-42@shop.example.com> <ticket-7@shop.example.com>",
        "x-campaign": "Frühling",
        "Comments": "a note",
        "Auto-Submitted": "auto-generated",
    });

    let response = api
        .post_job(
            Some(&api.token("jobs:write")),
            &with("headers", headers.clone()),
        )
        .await;

    assert_eq!(response.status().as_u16(), 202);
    let stored: Value = api
        .db()
        .connect()
        .await
        .query_one("SELECT task->'headers' FROM deliveries", &[])
        .await
        .expect("the job's row")
        .get(0);
    assert_eq!(stored, headers);
}

#[tokio::test]
async fn each_reserved_header_is_refused_naming_it_and_nothing_is_stored() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");

    for name in [
        "Message-ID",
        "From",
        "to",
        "Cc",
        "BCC",
        "Date",
        "Subject",
        "Sender",
        "Reply-To",
        "Return-Path",
        "MIME-Version",
        "Content-Type",
        "content-transfer-encoding",
        "DKIM-Signature",
        "Received",
    ] {
        let response = api
            .post_job(Some(&token), &with("headers", json!({ name: "x" })))
            .await;
        let problem = assert_problem(response, 422, &format!("`{name}`")).await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("`headers`")),
            "{problem}"
        );
    }
    let response = api
        .post_job(
            Some(&token),
            &with("headers", json!({"Resent-From": "eve@example.com"})),
        )
        .await;
    assert_problem(response, 422, "may not set `Resent-From`").await;

    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_line_break_in_a_header_name_or_value_is_refused() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");

    for headers in [
        json!({"X-A\r\nBcc": "eve@example.com"}),
        json!({"X-A\nBcc": "eve@example.com"}),
        json!({"X-A": "1\r\nBcc: eve@example.com"}),
        json!({"X-A": "1\nBcc: eve@example.com"}),
        json!({"X-A": "1\rBcc: eve@example.com"}),
        json!({"X-A": "1\u{0}"}),
        json!({"List-Unsubscribe": "<https://example.com/u>\r\n\r\nbody"}),
    ] {
        let response = api.post_job(Some(&token), &with("headers", headers)).await;
        assert_problem(response, 422, "`headers`").await;
    }

    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn too_many_too_long_twice_named_or_malformed_headers_are_refused() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("X-H{i}"), json!("v"))).collect();

    for (headers, needle) in [
        (Value::Object(many), "at most 50"),
        (
            json!({"X-Long": "a".repeat(999)}),
            "`X-Long` must be at most 990 bytes",
        ),
        (json!({"X-A": "1", "x-a": "2"}), "`x-a` more than once"),
        (json!({"X A": "1"}), "not a header field name"),
        (json!({"X-É": "1"}), "not a header field name"),
        (json!({"": "1"}), "not a header field name"),
        (json!({"X-Empty": ""}), "`X-Empty` must not be empty"),
        (
            json!({"List-Id": "Liste für alle <all.example.com>"}),
            "`List-Id` must be printable ASCII",
        ),
    ] {
        let response = api.post_job(Some(&token), &with("headers", headers)).await;
        assert_problem(response, 422, needle).await;
    }
    let response = api
        .post_job(Some(&token), &with("headers", json!(["X-A", "1"])))
        .await;
    assert_eq!(response.status().as_u16(), 400, "not an object");

    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_header_given_twice_in_the_json_is_refused() {
    let api = spawn_api().await;
    let body = r#"{"to": "ada@example.com", "subject": "Hi", "text": "Hello",
        "headers": {"X-A": "1", "X-A": "2"}, "metadata": {"k": "1"}}"#;

    let response = api
        .client
        .post(format!("{}/addJob", api.address))
        .bearer_auth(api.token("jobs:write"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /addJob");

    assert_problem(response, 422, "`X-A` more than once").await;
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_replay_may_give_headers_and_metadata_in_another_order_but_not_other_ones() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let body = |headers: &str| -> Value {
        serde_json::from_str(&format!(
            r#"{{"to": "ada@example.com", "subject": "Hi", "text": "Hello",
                "idempotency_key": "receipt:42", {headers}}}"#
        ))
        .expect("JSON")
    };

    let first = api
        .post_job(
            Some(&token),
            &body(r#""headers": {"X-A": "1", "X-B": "2"}, "metadata": {"a": "1", "b": "2"}"#),
        )
        .await;
    let replay = api
        .post_job(
            Some(&token),
            &body(r#""headers": {"X-B": "2", "X-A": "1"}, "metadata": {"b": "2", "a": "1"}"#),
        )
        .await;
    let other = api
        .post_job(
            Some(&token),
            &body(r#""headers": {"X-A": "1", "X-B": "2"}, "metadata": {"a": "1", "b": "3"}"#),
        )
        .await;

    assert_eq!(first.status().as_u16(), 202);
    assert_eq!(replay.status().as_u16(), 200);
    assert_problem(other, 422, "already used for a different request").await;
}

#[tokio::test]
async fn metadata_is_returned_by_get_jobs() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let metadata = json!({"user_id": "42", "plan.tier": "pro", "note": "für Ada"});

    let with_metadata: Value = api
        .post_job(Some(&token), &with("metadata", metadata.clone()))
        .await
        .json()
        .await
        .expect("JSON");
    let without: Value = api
        .post_job(Some(&token), &valid_body())
        .await
        .json()
        .await
        .expect("JSON");

    let (status, job) = get(
        &api,
        "jobs:read",
        &format!("/jobs/{}", with_metadata["job_id"].as_str().expect("id")),
    )
    .await;
    assert_eq!((status, &job["metadata"]), (200, &metadata));
    let (_, job) = get(
        &api,
        "jobs:read",
        &format!("/jobs/{}", without["job_id"].as_str().expect("id")),
    )
    .await;
    assert_eq!(job["metadata"], json!({}));
}

#[tokio::test]
async fn metadata_over_its_bounds_is_refused_naming_it() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let keys = |n: usize, value: &str| -> Value {
        (0..n)
            .map(|i| (format!("k{i}"), json!(value)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };

    for (metadata, needle) in [
        (keys(21, "v"), "at most 20"),
        (json!({"user id": "42"}), "not a metadata key"),
        (json!({"k".repeat(41): "42"}), "not a metadata key"),
        (
            json!({"k": "v".repeat(501)}),
            "`k` must be at most 500 bytes",
        ),
        (
            json!({"k": "a\nb"}),
            "`k` must not contain control characters",
        ),
        (keys(9, &"v".repeat(500)), "at most 4096 bytes in all"),
        (json!({"k": 42}), ""),
    ] {
        let response = api
            .post_job(Some(&token), &with("metadata", metadata))
            .await;
        if needle.is_empty() {
            assert_eq!(response.status().as_u16(), 400, "not a string");
        } else {
            let problem = assert_problem(response, 422, needle).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("`metadata`")),
                "{problem}"
            );
        }
    }

    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn the_dead_letter_listing_returns_metadata_and_filters_by_it() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let mut ids = Vec::new();
    for metadata in [
        json!({"user_id": "42", "kind": "receipt"}),
        json!({"user_id": "43", "kind": "receipt"}),
        json!({}),
    ] {
        let accepted: Value = api
            .post_job(Some(&token), &with("metadata", metadata))
            .await
            .json()
            .await
            .expect("JSON");
        ids.push(accepted["job_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        dead_letter(&api, id).await;
    }

    let (_, all) = get(&api, "failed:read", "/failedJobs").await;
    let (_, user_42) = get(&api, "failed:read", "/failedJobs?metadata=user_id:42").await;
    let (_, receipts) = get(&api, "failed:read", "/failedJobs?metadata=kind:receipt").await;
    let (_, nobody) = get(&api, "failed:read", "/failedJobs?metadata=user_id:4").await;
    let (_, with_colon) = get(&api, "failed:read", "/failedJobs?metadata=user_id:42:x").await;

    let job_ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| item["job_id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(job_ids(&all).len(), 3);
    assert_eq!(
        all["items"][2]["metadata"],
        json!({"user_id": "42", "kind": "receipt"}),
        "oldest last"
    );
    assert_eq!(all["items"][0]["metadata"], json!({}));
    assert_eq!(job_ids(&user_42), vec![ids[0].clone()]);
    assert_eq!(job_ids(&receipts), vec![ids[1].clone(), ids[0].clone()]);
    assert!(job_ids(&nobody).is_empty(), "values match exactly");
    assert!(job_ids(&with_colon).is_empty());

    for bad in ["user_id", "user%20id:42", &format!("k:{}", "v".repeat(501))] {
        let response = api
            .call(
                "GET",
                &format!("/failedJobs?metadata={bad}"),
                Some(&api.token("failed:read")),
            )
            .await;
        assert_problem(response, 422, "`metadata`").await;
    }
}

#[tokio::test]
async fn each_add_jobs_item_is_checked_alone() {
    let api = spawn_api().await;

    let response = api
        .post_jobs(
            &api.token("jobs:write"),
            &[
                with("headers", json!({"X-Campaign": "spring"})),
                with("headers", json!({"Bcc": "eve@example.com"})),
                with("metadata", json!({"bad key": "1"})),
            ],
        )
        .await;

    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["items"][0]["status"], "queued");
    let detail = |i: usize| {
        answer["items"][i]["error"]["detail"]
            .as_str()
            .map(str::to_owned)
    };
    assert!(detail(1).is_some_and(|d| d.contains("`headers` may not set `Bcc`")));
    assert!(detail(2).is_some_and(|d| d.starts_with("`metadata`")));
    assert_eq!(api.recorded().await, 1);
}
