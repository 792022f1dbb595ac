//! The audit trail: every requeue and discard leaves one row per entry with
//! the token's `sub` and the operator's note, read back at `GET /audit`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApi, assert_problem, spawn_api, valid_body};

/// Accepts a job through the API and dead-letters it as a worker gives it up
/// (`failed` or `uncertain`); answers its entry id.
async fn dead_letter(api: &TestApi, reason: &str) -> i64 {
    let accepted: Value = api
        .post_job(Some(&api.token("jobs:write")), &valid_body())
        .await
        .json()
        .await
        .expect("a JSON answer");
    let job_id: uuid::Uuid = accepted["job_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a job id");
    api.db()
        .connect()
        .await
        .query_one(
            "WITH given_up AS (
                 UPDATE deliveries SET state = $2 WHERE job_id = $1
                 RETURNING job_id, idempotency_key, task)
             INSERT INTO failed_jobs (job_id, idempotency_key, task, reason, error, attempts)
             SELECT job_id, idempotency_key, task, $2, 'boom', 1 FROM given_up
             RETURNING id",
            &[&job_id, &reason],
        )
        .await
        .expect("a dead letter")
        .get(0)
}

/// A token for `sub` holding `scope`.
fn token_of(api: &TestApi, sub: &str, scope: &str) -> String {
    api.keys
        .mint(sub, scope, Duration::from_secs(600))
        .expect("mint a token")
}

/// `method` `path` as `token`, with a query string and an optional body.
async fn send(
    api: &TestApi,
    token: &str,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, &str)],
    body: Option<Value>,
) -> reqwest::Response {
    let url =
        reqwest::Url::parse_with_params(&format!("{}{path}", api.address), query).expect("a URL");
    let mut request = api.client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

/// `GET /audit` with `query`, answered 200.
async fn audit(api: &TestApi, query: &[(&str, &str)]) -> Value {
    let token = api.token("audit:read");
    let response = send(api, &token, reqwest::Method::GET, "/audit", query, None).await;
    assert_eq!(response.status(), 200, "GET /audit {query:?}");
    response.json().await.expect("a JSON page")
}

#[tokio::test]
async fn every_requeue_and_discard_is_in_the_audit_trail_with_the_tokens_sub_and_note() {
    let api = spawn_api().await;
    let (a, b, c) = (
        dead_letter(&api, "failed").await,
        dead_letter(&api, "failed").await,
        dead_letter(&api, "failed").await,
    );
    let d = dead_letter(&api, "uncertain").await;
    let ops = token_of(&api, "ops-alice", "failed:write");
    let post = reqwest::Method::POST;

    let one = api
        .client
        .post(format!(
            "{}/failedJobs/{a}/retry?note=the%20relay%20is%20fixed%20(INC-42)",
            api.address
        ))
        .bearer_auth(&ops)
        .header("X-Request-Id", "audit-test-1")
        .send()
        .await
        .expect("request");
    let by_ids = json!({"ids": [b], "note": "same incident"});
    let by_ids = send(
        &api,
        &ops,
        post.clone(),
        "/failedJobs/retry",
        &[],
        Some(by_ids),
    )
    .await;
    let all = json!({"all": true, "reason": "uncertain", "note": "relay log: never delivered"});
    let all = send(&api, &ops, post, "/failedJobs/retry", &[], Some(all)).await;
    let discard = send(
        &api,
        &ops,
        reqwest::Method::DELETE,
        &format!("/failedJobs/{c}"),
        &[("note", "sent by hand")],
        None,
    )
    .await;

    assert_eq!(one.status(), 200);
    assert_eq!(by_ids.status(), 200);
    assert_eq!(all.status(), 200);
    assert_eq!(discard.status(), 204);
    let page = audit(&api, &[]).await;
    let items = page["items"].as_array().expect("items");
    let seen: Vec<(&str, i64, &str, &str)> = items
        .iter()
        .map(|row| {
            assert_eq!(row["actor"], "ops-alice", "{row}");
            (
                row["action"].as_str().unwrap_or_default(),
                row["failed_job_id"].as_i64().unwrap_or_default(),
                row["dead_reason"].as_str().unwrap_or_default(),
                row["note"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("discard", c, "failed", "sent by hand"),
            ("requeue", d, "uncertain", "relay log: never delivered"),
            ("requeue", b, "failed", "same incident"),
            ("requeue", a, "failed", "the relay is fixed (INC-42)"),
        ]
    );
    assert_eq!(items[3]["request_id"], "audit-test-1");
    assert!(items[3]["job_id"].is_string() && items[3]["idempotency_key"].is_string());
    assert!(items[3]["at"].is_string());
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn the_audit_trail_pages_newest_first_with_cursors_and_filters_by_action_and_actor() {
    let api = spawn_api().await;
    let mut entries = Vec::new();
    for _ in 0..5 {
        entries.push(dead_letter(&api, "failed").await);
    }
    let alice = token_of(&api, "alice", "failed:write");
    let bob = token_of(&api, "bob", "failed:write");
    for id in &entries[..2] {
        let path = format!("/failedJobs/{id}");
        let response = send(&api, &alice, reqwest::Method::DELETE, &path, &[], None).await;
        assert_eq!(response.status(), 204);
    }
    let requeue = json!({"ids": &entries[2..]});
    let response = send(
        &api,
        &bob,
        reqwest::Method::POST,
        "/failedJobs/retry",
        &[],
        Some(requeue),
    )
    .await;
    assert_eq!(response.status(), 200);

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "2")];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor));
        }
        let page = audit(&api, &query).await;
        pages.push(page["items"].as_array().expect("items").clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let discards = audit(&api, &[("action", "discard")]).await;
    let bobs = audit(&api, &[("actor", "bob")]).await;
    let none = audit(&api, &[("action", "discard"), ("actor", "bob")]).await;

    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let rows: Vec<&Value> = pages.iter().flatten().collect();
    let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let mut audited: Vec<i64> = rows
        .iter()
        .filter_map(|r| r["failed_job_id"].as_i64())
        .collect();
    audited.sort_unstable();
    assert_eq!(audited, entries, "each entry once");
    assert!(rows.iter().all(|r| r["note"].is_null()), "no note given");
    let of = |page: &Value, field: &str| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|r| r[field].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(of(&discards, "actor"), ["alice", "alice"]);
    assert_eq!(of(&bobs, "action"), ["requeue", "requeue", "requeue"]);
    assert_eq!(none["items"], json!([]));
}

#[tokio::test]
async fn a_note_too_long_or_with_control_characters_is_refused_naming_it_and_changes_nothing() {
    let api = spawn_api().await;
    let entry = dead_letter(&api, "failed").await;
    let ops = api.token("failed:write");
    let long = "x".repeat(501);

    for note in [long.as_str(), "line\nbreak", "nul\0", ""] {
        for (method, path, body) in [
            (
                reqwest::Method::POST,
                format!("/failedJobs/{entry}/retry"),
                None,
            ),
            (
                reqwest::Method::DELETE,
                format!("/failedJobs/{entry}"),
                None,
            ),
            (
                reqwest::Method::POST,
                "/failedJobs/retry".to_owned(),
                Some(json!({"ids": [entry], "note": note})),
            ),
        ] {
            let query: &[(&str, &str)] = if body.is_none() {
                &[("note", note)]
            } else {
                &[]
            };
            let response = send(&api, &ops, method.clone(), &path, query, body).await;
            assert_eq!(response.status(), 422, "{method} {path} {note:?}");
            assert_problem(response, 422, "`note`").await;
        }
    }

    assert_eq!(audit(&api, &[]).await["items"], json!([]));
    let left = api
        .db()
        .connect()
        .await
        .query_one("SELECT count(*) FROM failed_jobs", &[])
        .await
        .expect("count");
    assert_eq!(left.get::<_, i64>(0), 1, "nothing requeued or discarded");
}
