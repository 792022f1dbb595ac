//! The sender policy: each tenant sends only from its own senders, gets its
//! default `from`, and a SIGHUP puts an edited policy in force.

use std::time::Duration;

use sendonce_testkit::{TestDatabase, eventually, unique_prefix};
use serde_json::{Value, json};

use crate::helpers::{SECRET, TestApi, assert_problem, spawn_api_with};
use crate::shutdown::{signal, spawn_api_logged};

const POLICY: &str = r#"
[tenants.billing]
addresses = ["invoices@company.example"]
default_from = "Billing <invoices@company.example>"

[tenants.shop]
domains = ["shop.example"]
"#;

/// Writes `text` to a new policy file and returns its path.
fn policy_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("sendonce-policy-{}.toml", unique_prefix()));
    std::fs::write(&path, text).expect("write the policy");
    path
}

fn job(from: Option<&str>) -> Value {
    let mut body = json!({"to": "ada@example.com", "subject": "Hi", "text": "Hello"});
    if let Some(from) = from {
        body["from"] = json!(from);
    }
    body
}

/// A `jobs:write` token of `sub`, with `extra` claims (`tenant` names the
/// tenant).
fn token(api: &TestApi, sub: &str, extra: Value) -> String {
    let Value::Object(extra) = extra else {
        panic!("claims are an object")
    };
    api.keys
        .mint_with(sub, "jobs:write", Duration::from_secs(600), extra)
        .expect("mint")
}

/// The `from` stored with job `id`'s task.
async fn stored_from(api: &TestApi, id: &str) -> Option<String> {
    let client = api.db().connect().await;
    let row = client
        .query_one(
            "SELECT task->>'from' FROM deliveries WHERE job_id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("the job's row");
    row.get(0)
}

async fn accepted_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("JSON");
    body["job_id"].as_str().expect("a job id").to_owned()
}

#[tokio::test]
async fn each_tenant_sends_only_from_its_own_senders_and_gets_its_default_from() {
    let path = policy_file(POLICY);
    let api = spawn_api_with(&[
        "--jwt-secret",
        SECRET,
        "--sender-policy-file",
        path.to_str().expect("a UTF-8 path"),
    ])
    .await;
    let billing = token(&api, "app-1", json!({"tenant": "billing"}));
    let shop = token(&api, "app-2", json!({"tenant": "shop"}));
    let other = token(&api, "app-3", json!({"tenant": "newsletter"}));

    let own = api
        .post_job(
            Some(&billing),
            &job(Some("Invoices <invoices@company.example>")),
        )
        .await;
    let by_domain = api
        .post_job(Some(&shop), &job(Some("orders@shop.example")))
        .await;
    let defaulted = api.post_job(Some(&billing), &job(None)).await;
    let as_mail_from = api.post_job(Some(&other), &job(None)).await;

    accepted_id(own).await;
    accepted_id(by_domain).await;
    let defaulted = accepted_id(defaulted).await;
    let as_mail_from = accepted_id(as_mail_from).await;
    assert_eq!(
        stored_from(&api, &defaulted).await.as_deref(),
        Some("Billing <invoices@company.example>")
    );
    assert_eq!(stored_from(&api, &as_mail_from).await, None, "MAIL_FROM");
    for (token, from) in [
        (&shop, "invoices@company.example"),
        (&billing, "ceo@company.example"),
        (&billing, "someone@shop.example"),
        (&other, "news@shop.example"),
    ] {
        let refused = api.post_job(Some(token), &job(Some(from))).await;
        assert_problem(refused, 422, "`from`").await;
    }
    let batch = api
        .post_jobs(
            &shop,
            &[
                job(Some("orders@shop.example")),
                job(Some("ceo@company.example")),
            ],
        )
        .await;
    let items: Value = batch.json().await.expect("JSON");
    assert_eq!(items["items"][0]["status"], "queued");
    assert_eq!(items["items"][1]["error"]["status"], 422);
    assert_eq!(api.queue_len().await, 5, "nothing refused was queued");
}

#[tokio::test]
async fn jwt_tenant_claim_names_the_claim_and_tokens_without_it_are_the_default_tenant() {
    let path = policy_file(&format!(
        "{POLICY}\n[tenants.default]\ndomains = [\"company.example\"]\n"
    ));
    let api = spawn_api_with(&[
        "--jwt-secret",
        SECRET,
        "--sender-policy-file",
        path.to_str().expect("a UTF-8 path"),
        "--jwt-tenant-claim",
        "app",
    ])
    .await;
    let shop = token(&api, "alice", json!({"app": "shop"}));
    let unclaimed = token(&api, "shop", json!({}));

    let as_shop = api
        .post_job(Some(&shop), &job(Some("orders@shop.example")))
        .await;
    let as_default = api
        .post_job(Some(&unclaimed), &job(Some("orders@shop.example")))
        .await;
    let default_sender = api
        .post_job(Some(&unclaimed), &job(Some("hello@company.example")))
        .await;

    accepted_id(as_shop).await;
    assert_problem(as_default, 422, "`from`").await;
    accepted_id(default_sender).await;
    let bad_claim = token(&api, "alice", json!({"app": {"nested": true}}));
    let refused = api.post_job(Some(&bad_claim), &job(None)).await;
    assert_eq!(refused.status(), 401, "a tenant claim that is not a name");
}

/// Posts a job from `from` to the API binary on `port`; the status.
async fn post_from(port: u64, token: &str, from: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/addJob"))
        .bearer_auth(token)
        .json(&job(Some(from)))
        .send()
        .await
        .expect("POST /addJob")
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_puts_an_edited_policy_in_force_and_keeps_the_old_one_when_the_new_is_broken() {
    let db = TestDatabase::create().await;
    let path = policy_file(POLICY);
    let (api, port, logs) = spawn_api_logged(
        &db,
        &[("SENDER_POLICY_FILE", path.to_str().expect("a UTF-8 path"))],
    )
    .await;
    let keys = crate::helpers::hs256_keys(SECRET);
    let shop = keys
        .mint_with(
            "app",
            "jobs:write",
            Duration::from_secs(600),
            serde_json::Map::from_iter([("tenant".to_owned(), json!("shop"))]),
        )
        .expect("mint");
    assert_eq!(post_from(port, &shop, "orders@store.example").await, 422);

    std::fs::write(&path, POLICY.replace("shop.example", "store.example")).expect("edit");
    signal(&api, "HUP");
    eventually(
        "the edited policy in force",
        Duration::from_secs(10),
        || async { (post_from(port, &shop, "orders@store.example").await == 202).then_some(()) },
    )
    .await;
    std::fs::write(&path, "[tenants.shop]\nnot_a_field = 1\n").expect("break");
    signal(&api, "HUP");
    eventually(
        "the broken policy refused",
        Duration::from_secs(10),
        || async {
            let lines = logs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            lines
                .iter()
                .any(|l| l.contains("sender policy not reloaded") && l.contains("not_a_field"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        post_from(port, &shop, "orders@store.example").await,
        202,
        "the previous policy stays in force"
    );

    let mut api = api;
    api.kill().expect("kill the API");
    let _ = api.wait();
}

#[tokio::test]
async fn a_broken_policy_file_stops_start_up_with_a_one_line_reason() {
    let db = TestDatabase::create().await;
    let path = policy_file("[tenants.shop]\ndomains = [\"not a domain@\"]\n");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sendonce-api"))
        .env("API_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", db.url())
        .env("JWT_SECRET", SECRET)
        .env("SENDER_POLICY_FILE", &path)
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("run the API");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("SENDER_POLICY_FILE") && stderr.contains("tenants.shop: domain"),
        "{stderr}"
    );
}

#[tokio::test]
async fn without_a_policy_file_the_start_up_log_says_any_from_is_accepted() {
    let db = TestDatabase::create().await;
    let (mut api, port, logs) = spawn_api_logged(&db, &[]).await;
    let keys = crate::helpers::hs256_keys(SECRET);
    let token = keys
        .mint("shop", "jobs:write", Duration::from_secs(600))
        .expect("mint");

    let status = post_from(port, &token, "anyone@anywhere.example").await;

    assert_eq!(status, 202);
    let lines = logs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(
        lines.iter().any(|l| l.contains("no SENDER_POLICY_FILE")),
        "{lines:#?}"
    );
    api.kill().expect("kill the API");
    let _ = api.wait();
}
