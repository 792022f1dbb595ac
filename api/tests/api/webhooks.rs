//! Webhook endpoints over HTTP: the secret is shown at creation and at a
//! rotation only, each route needs its scope, another tenant's endpoint
//! answers as an unknown one, URLs outside the public `https` ranges are
//! refused outside development, listings page, and a resume or a replay
//! puts deliveries back to `pending`, due now.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{SECRET, TestApi, assert_problem, spawn_api, spawn_api_with};

const READ: &str = "webhooks:read";
const WRITE: &str = "webhooks:write";
const BOTH: &str = "webhooks:read webhooks:write";

/// Creates an endpoint of `tenant` at `url`; answers the `201` body.
async fn create(api: &TestApi, tenant: &str, url: &str) -> Value {
    let (status, body) = api
        .send(
            "POST",
            "/webhooks",
            &api.tenant_token(tenant, WRITE),
            Some(&json!({ "url": url })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn id_of(endpoint: &Value) -> Uuid {
    endpoint["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an endpoint id")
}

/// Writes an event of `endpoint`'s tenant and its delivery in `state`, as
/// the outbox and the dispatcher would; answers the delivery's id.
async fn insert_delivery(api: &TestApi, endpoint: Uuid, state: &str) -> i64 {
    api.db()
        .connect()
        .await
        .query_one(
            "WITH e AS (
                 INSERT INTO events (tenant, type, job_id, data)
                 SELECT tenant, 'job.failed', gen_random_uuid(), '{}' FROM webhooks WHERE id = $1
                 RETURNING id)
             INSERT INTO webhook_deliveries
                 (endpoint_id, event_id, state, attempts, next_attempt_at, last_attempt_at,
                  last_status, last_error, log)
             SELECT $1, e.id, $2::text, 8, NULL, now(), 503, 'HTTP 503',
                    '[{\"at\": \"2026-12-01T10:00:00Z\", \"status\": 503, \"error\": \"HTTP 503\", \"duration_ms\": 40}]'
             FROM e
             RETURNING id",
            &[&endpoint, &state],
        )
        .await
        .expect("a delivery")
        .get(0)
}

/// `(state, due now or earlier)` of delivery `id`.
async fn delivery_row(api: &TestApi, id: i64) -> (String, bool) {
    let row = api
        .db()
        .connect()
        .await
        .query_one(
            "SELECT state, next_attempt_at <= now() FROM webhook_deliveries WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the delivery");
    (row.get(0), row.get::<_, Option<bool>>(1) == Some(true))
}

#[tokio::test]
async fn the_secret_is_in_the_creation_answer_and_never_read_back() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", BOTH);

    let (status, created) = api
        .send(
            "POST",
            "/webhooks",
            &token,
            Some(&json!({"url": "https://hooks.example.com/sendonce", "description": "orders"})),
        )
        .await;

    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("a secret");
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["tenant"], "shop");
    assert_eq!(created["description"], "orders");
    assert_eq!(
        created["event_types"],
        json!([
            "job.sent",
            "job.failed",
            "job.uncertain",
            "job.duplicate",
            "job.canceled",
            "job.suppressed"
        ]),
        "every type but job.retrying"
    );
    let id = id_of(&created);
    let (_, one) = api
        .send("GET", &format!("/webhooks/{id}"), &token, None)
        .await;
    let (_, page) = api.send("GET", "/webhooks", &token, None).await;
    for read in [&one, &page["items"][0]] {
        assert_eq!(read["id"], created["id"]);
        assert!(read.get("secret").is_none(), "{read}");
        assert!(!read.to_string().contains(secret));
    }
}

#[tokio::test]
async fn every_webhook_route_needs_its_scope() {
    let api = spawn_api().await;
    let endpoint = id_of(&create(&api, "shop", "https://hooks.example.com/a").await);
    let body = json!({"url": "https://hooks.example.com/b"});
    for (method, path, scope, body) in [
        ("GET", "/webhooks".to_owned(), READ, None),
        ("POST", "/webhooks".to_owned(), WRITE, Some(&body)),
        ("GET", format!("/webhooks/{endpoint}"), READ, None),
        ("PATCH", format!("/webhooks/{endpoint}"), WRITE, Some(&body)),
        ("DELETE", format!("/webhooks/{endpoint}"), WRITE, None),
        (
            "GET",
            format!("/webhooks/{endpoint}/deliveries"),
            READ,
            None,
        ),
        (
            "POST",
            format!("/webhooks/{endpoint}/deliveries/1/replay"),
            WRITE,
            None,
        ),
    ] {
        let other = if scope == READ { WRITE } else { READ };
        let (status, problem) = api
            .send(method, &path, &api.tenant_token("shop", other), body)
            .await;
        assert_eq!(status, 403, "{method} {path}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(scope),
            "{problem}"
        );
    }
    let (_, still) = api
        .send(
            "GET",
            &format!("/webhooks/{endpoint}"),
            &api.tenant_token("shop", READ),
            None,
        )
        .await;
    assert_eq!(still["url"], "https://hooks.example.com/a");
}

#[tokio::test]
async fn another_tenants_endpoint_answers_as_an_unknown_one_and_is_left_as_it_was() {
    let api = spawn_api().await;
    let created = create(&api, "shop", "https://hooks.example.com/a").await;
    let endpoint = id_of(&created);
    let delivery = insert_delivery(&api, endpoint, "delivered").await;
    let billing = api.tenant_token("billing", BOTH);

    let (listed_status, listed) = api.send("GET", "/webhooks", &billing, None).await;
    let mut answers = Vec::new();
    for (method, path, body) in [
        ("GET", format!("/webhooks/{endpoint}"), None),
        (
            "PATCH",
            format!("/webhooks/{endpoint}"),
            Some(json!({"url": "https://evil.example.net/", "rotate_secret": true})),
        ),
        ("GET", format!("/webhooks/{endpoint}/deliveries"), None),
        (
            "POST",
            format!("/webhooks/{endpoint}/deliveries/{delivery}/replay"),
            None,
        ),
        ("DELETE", format!("/webhooks/{endpoint}"), None),
    ] {
        let (status, _) = api.send(method, &path, &billing, body.as_ref()).await;
        answers.push((method, status));
    }

    assert_eq!((listed_status, &listed["items"]), (200, &json!([])));
    assert!(
        answers.iter().all(|(_, status)| *status == 404),
        "{answers:?}"
    );
    let (_, mine) = api
        .send(
            "GET",
            &format!("/webhooks/{endpoint}"),
            &api.tenant_token("shop", READ),
            None,
        )
        .await;
    let mut expected = created.clone();
    expected
        .as_object_mut()
        .expect("an object")
        .remove("secret");
    assert_eq!(mine, expected, "unchanged");
    assert_eq!(delivery_row(&api, delivery).await.0, "delivered");
}

#[tokio::test]
async fn an_operator_sees_every_tenants_endpoints() {
    let api = spawn_api().await;
    create(&api, "shop", "https://hooks.example.com/a").await;
    create(&api, "billing", "https://hooks.example.com/b").await;
    let operator = api.tenant_token("ops", "webhooks:read tenants:all");

    let (_, all) = api.send("GET", "/webhooks", &operator, None).await;
    let (_, billing) = api
        .send("GET", "/webhooks?tenant=billing", &operator, None)
        .await;

    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(billing["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(billing["items"][0]["tenant"], "billing");
}

#[tokio::test]
async fn a_rotation_answers_the_new_secret_once_and_the_old_one_signs_for_the_overlap() {
    let api = spawn_api().await;
    let created = create(&api, "shop", "https://hooks.example.com/a").await;
    let endpoint = id_of(&created);
    let token = api.tenant_token("shop", BOTH);

    let (status, rotated) = api
        .send(
            "PATCH",
            &format!("/webhooks/{endpoint}"),
            &token,
            Some(&json!({"rotate_secret": true, "overlap_seconds": 600})),
        )
        .await;

    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("the new secret");
    assert!(new.starts_with("whsec_"));
    assert_ne!(rotated["secret"], created["secret"]);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let row = api
        .db()
        .connect()
        .await
        .query_one(
            "SELECT secret, previous_secret,
                    previous_secret_expires_at BETWEEN now() + interval '590 s' AND now() + interval '600 s'
             FROM webhooks WHERE id = $1",
            &[&endpoint],
        )
        .await
        .expect("the row");
    assert_eq!(row.get::<_, String>(0), new);
    assert_eq!(
        Some(row.get::<_, String>(1)),
        created["secret"].as_str().map(str::to_owned)
    );
    assert!(row.get::<_, bool>(2), "the old secret signs for 600 s");
    let (_, read) = api
        .send("GET", &format!("/webhooks/{endpoint}"), &token, None)
        .await;
    assert!(read.get("secret").is_none());
    let (_, patched) = api
        .send(
            "PATCH",
            &format!("/webhooks/{endpoint}"),
            &token,
            Some(&json!({"description": "no rotation"})),
        )
        .await;
    assert!(patched.get("secret").is_none(), "{patched}");
}

#[tokio::test]
async fn a_patch_changes_what_it_names_and_null_removes_the_description() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", BOTH);
    let (_, created) = api
        .send(
            "POST",
            "/webhooks",
            &token,
            Some(&json!({
                "url": "https://hooks.example.com/a",
                "event_types": ["job.failed"],
                "description": "first"
            })),
        )
        .await;
    let path = format!("/webhooks/{}", id_of(&created));

    let (_, moved) = api
        .send(
            "PATCH",
            &path,
            &token,
            Some(&json!({"url": "https://hooks.example.com/b", "event_types": ["job.retrying", "job.sent"]})),
        )
        .await;
    let (_, cleared) = api
        .send("PATCH", &path, &token, Some(&json!({"description": null})))
        .await;

    assert_eq!(moved["url"], "https://hooks.example.com/b");
    assert_eq!(moved["event_types"], json!(["job.sent", "job.retrying"]));
    assert_eq!(moved["description"], "first");
    assert_eq!(cleared["description"], Value::Null);
    assert_eq!(cleared["url"], "https://hooks.example.com/b");
}

#[tokio::test]
async fn urls_outside_the_public_https_ranges_are_refused_outside_development() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", BOTH);
    let endpoint = id_of(&create(&api, "shop", "https://hooks.example.com/a").await);
    for url in [
        "http://hooks.example.com/",
        "https://127.0.0.1/",
        "https://10.0.0.7:8443/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/",
        "https://[fd12::1]/",
        "https://100.100.1.1/",
        "https://localhost:9000/",
        "https://user:password@hooks.example.com/",
        "ftp://hooks.example.com/",
        "hooks.example.com",
    ] {
        let create = api
            .client
            .post(format!("{}/webhooks", api.address))
            .bearer_auth(&token)
            .json(&json!({ "url": url }))
            .send()
            .await
            .expect("POST /webhooks");
        assert_problem(create, 422, "`url`").await;
        let (patched, _) = api
            .send(
                "PATCH",
                &format!("/webhooks/{endpoint}"),
                &token,
                Some(&json!({ "url": url })),
            )
            .await;
        assert_eq!(patched, 422, "{url}");
    }
    let (_, page) = api.send("GET", "/webhooks", &token, None).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["items"][0]["url"], "https://hooks.example.com/a");
}

#[tokio::test]
async fn development_accepts_http_and_private_targets_but_never_userinfo() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--app-env", "development"]).await;
    let token = api.tenant_token("shop", WRITE);

    let mut answers = Vec::new();
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/",
        "https://user:pw@hooks.example.com/",
    ] {
        let (status, _) = api
            .send("POST", "/webhooks", &token, Some(&json!({ "url": url })))
            .await;
        answers.push(status);
    }

    assert_eq!(answers, [201, 201, 422]);
}

#[tokio::test]
async fn unknown_event_types_and_malformed_bodies_are_refused() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", BOTH);
    let endpoint = id_of(&create(&api, "shop", "https://hooks.example.com/a").await);
    let path = format!("/webhooks/{endpoint}");
    for (method, path, body, status, needle) in [
        (
            "POST",
            "/webhooks",
            json!({"url": "https://a.example.com/", "event_types": ["job.bounced"]}),
            422,
            "`event_types`",
        ),
        (
            "POST",
            "/webhooks",
            json!({"url": "https://a.example.com/", "event_types": []}),
            422,
            "`event_types`",
        ),
        (
            "POST",
            "/webhooks",
            json!({"url": "https://a.example.com/", "description": ""}),
            422,
            "`description`",
        ),
        (
            "POST",
            "/webhooks",
            json!({"url": "https://a.example.com/", "secret": "whsec_mine"}),
            400,
            "secret",
        ),
        ("POST", "/webhooks", json!({}), 400, "url"),
        (
            "PATCH",
            path.as_str(),
            json!({"overlap_seconds": 60}),
            422,
            "`overlap_seconds`",
        ),
        (
            "PATCH",
            path.as_str(),
            json!({"rotate_secret": true, "overlap_seconds": 99999999}),
            422,
            "`overlap_seconds`",
        ),
        (
            "PATCH",
            path.as_str(),
            json!({"event_types": ["job.sent", "job.later"]}),
            422,
            "job.later",
        ),
    ] {
        let response = api
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("a method"),
                format!("{}{path}", api.address),
            )
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_problem(response, status, needle).await;
    }
    for (method, path, status, needle) in [
        ("GET", "/webhooks/not-a-uuid".to_owned(), 422, "`id`"),
        (
            "POST",
            format!("/webhooks/{endpoint}/deliveries/0/replay"),
            422,
            "`delivery_id`",
        ),
        (
            "GET",
            "/webhooks?cursor=garbage!".to_owned(),
            422,
            "`cursor`",
        ),
        (
            "GET",
            format!("/webhooks/{}", Uuid::now_v7()),
            404,
            "no webhook endpoint",
        ),
    ] {
        let response = api.call(method, &path, Some(&token)).await;
        assert_problem(response, status, needle).await;
    }
}

#[tokio::test]
async fn endpoints_and_a_delivery_log_page_newest_first_with_a_cursor() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", READ);
    let mut endpoints = Vec::new();
    for i in 0..3 {
        endpoints.push(id_of(
            &create(&api, "shop", &format!("https://hooks.example.com/{i}")).await,
        ));
    }
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        deliveries.push(insert_delivery(&api, endpoints[0], "held").await);
    }

    let (_, first) = api.send("GET", "/webhooks?limit=2", &token, None).await;
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = api
        .send(
            "GET",
            &format!("/webhooks?limit=2&cursor={cursor}"),
            &token,
            None,
        )
        .await;
    let log = format!("/webhooks/{}/deliveries", endpoints[0]);
    let (_, newest) = api
        .send("GET", &format!("{log}?limit=2"), &token, None)
        .await;
    let cursor = newest["next_cursor"].as_str().expect("a next page");
    let (_, oldest) = api
        .send(
            "GET",
            &format!("{log}?limit=2&cursor={cursor}"),
            &token,
            None,
        )
        .await;

    let ids = |page: &Value, key: &str| -> Vec<Value> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| item[key].clone())
            .collect()
    };
    let listed: Vec<Value> = [ids(&first, "id"), ids(&second, "id")].concat();
    let expected: Vec<Value> = endpoints.iter().rev().map(|id| json!(id)).collect();
    assert_eq!(listed, expected);
    assert_eq!(second["next_cursor"], Value::Null);
    let logged: Vec<Value> = [ids(&newest, "id"), ids(&oldest, "id")].concat();
    let expected: Vec<Value> = deliveries.iter().rev().map(|id| json!(id)).collect();
    assert_eq!(logged, expected);
    let entry = &newest["items"][0];
    assert_eq!(entry["event_type"], "job.failed");
    assert_eq!(entry["state"], "held");
    assert_eq!(
        (&entry["attempts"], &entry["last_status"]),
        (&json!(8), &json!(503))
    );
    assert_eq!(entry["log"][0]["status"], 503);
    assert_eq!(entry["log"][0]["duration_ms"], 40);
    assert!(entry["event_id"].is_string());
}

#[tokio::test]
async fn a_replay_makes_a_delivery_pending_and_due_now_whatever_its_state() {
    let api = spawn_api().await;
    let endpoint = id_of(&create(&api, "shop", "https://hooks.example.com/a").await);
    let delivered = insert_delivery(&api, endpoint, "delivered").await;
    let token = api.tenant_token("shop", WRITE);

    let (status, replayed) = api
        .send(
            "POST",
            &format!("/webhooks/{endpoint}/deliveries/{delivered}/replay"),
            &token,
            None,
        )
        .await;
    let (unknown, _) = api
        .send(
            "POST",
            &format!(
                "/webhooks/{endpoint}/deliveries/{}/replay",
                delivered + 1000
            ),
            &token,
            None,
        )
        .await;

    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["state"], "pending");
    assert_eq!(replayed["attempts"], 0, "a fresh retry schedule");
    assert_eq!(
        replayed["log"].as_array().map(Vec::len),
        Some(1),
        "the log keeps every attempt"
    );
    assert_eq!(
        delivery_row(&api, delivered).await,
        ("pending".to_owned(), true)
    );
    assert_eq!(unknown, 404);
}

#[tokio::test]
async fn a_resume_clears_failing_and_makes_the_held_deliveries_due_now() {
    let api = spawn_api().await;
    let endpoint = id_of(&create(&api, "shop", "https://hooks.example.com/a").await);
    api.db()
        .connect()
        .await
        .execute(
            "UPDATE webhooks SET failing_since = now() WHERE id = $1",
            &[&endpoint],
        )
        .await
        .expect("failing");
    let held = insert_delivery(&api, endpoint, "held").await;
    let delivered = insert_delivery(&api, endpoint, "delivered").await;
    let token = api.tenant_token("shop", BOTH);
    let (_, failing) = api
        .send("GET", &format!("/webhooks/{endpoint}"), &token, None)
        .await;

    let (status, resumed) = api
        .send(
            "PATCH",
            &format!("/webhooks/{endpoint}"),
            &token,
            Some(&json!({"resume": true})),
        )
        .await;

    assert!(failing["failing_since"].is_string());
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["failing_since"], Value::Null);
    assert_eq!(delivery_row(&api, held).await, ("pending".to_owned(), true));
    assert_eq!(delivery_row(&api, delivered).await.0, "delivered");
}

#[tokio::test]
async fn a_deleted_endpoint_is_gone_with_its_deliveries() {
    let api = spawn_api().await;
    let endpoint = id_of(&create(&api, "shop", "https://hooks.example.com/a").await);
    insert_delivery(&api, endpoint, "held").await;
    let token = api.tenant_token("shop", BOTH);
    let path = format!("/webhooks/{endpoint}");

    let (deleted, _) = api.send("DELETE", &path, &token, None).await;
    let (again, _) = api.send("DELETE", &path, &token, None).await;
    let (read, _) = api.send("GET", &path, &token, None).await;

    assert_eq!((deleted, again, read), (204, 404, 404));
    let left: i64 = api
        .db()
        .connect()
        .await
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
}
