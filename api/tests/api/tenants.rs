//! Tenants: keys are unique per tenant, and every read and action is
//! confined to the caller's tenant, where another tenant's job or entry is
//! answered exactly as an unknown one; `tenants:all` spans them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApi, dead_letter, spawn_api};

/// A token of `tenant` (`None`: a token without the claim) with `scope`.
fn token(api: &TestApi, tenant: Option<&str>, scope: &str) -> String {
    let extra = tenant
        .map(|t| serde_json::Map::from_iter([("tenant".to_owned(), json!(t))]))
        .unwrap_or_default();
    api.keys
        .mint_with("app", scope, Duration::from_secs(600), extra)
        .expect("mint")
}

fn keyed(key: &str, text: &str) -> Value {
    json!({"to": "ada@example.com", "subject": "Hi", "text": text, "idempotency_key": key})
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(api: &TestApi, token: &str, path: &str) -> (u16, Value) {
    answer(api.call("GET", path, Some(token)).await).await
}

#[tokio::test]
async fn one_key_in_two_tenants_is_two_jobs_and_replays_stay_inside_a_tenant() {
    let api = spawn_api().await;
    let billing = token(&api, Some("billing"), "jobs:write");
    let shop = token(&api, Some("shop"), "jobs:write");

    let (a, first) = answer(
        api.post_job(Some(&billing), &keyed("welcome:42", "one"))
            .await,
    )
    .await;
    let (b, other) = answer(api.post_job(Some(&shop), &keyed("welcome:42", "two")).await).await;
    let (replay, again) = answer(
        api.post_job(Some(&billing), &keyed("welcome:42", "one"))
            .await,
    )
    .await;
    let (reused, _) = answer(
        api.post_job(Some(&shop), &keyed("welcome:42", "three"))
            .await,
    )
    .await;

    assert_eq!((a, b), (202, 202), "a key another tenant used is new here");
    assert_ne!(first["job_id"], other["job_id"]);
    assert_eq!((replay, &again["job_id"]), (200, &first["job_id"]));
    assert_eq!(reused, 422, "the shop's own key, another body");
    assert_eq!(api.queue_len().await, 2);
}

#[tokio::test]
async fn another_tenants_job_and_entries_answer_as_unknown_ones_and_change_nothing() {
    let api = spawn_api().await;
    let writer = |t| token(&api, Some(t), "jobs:write");
    let reader = |t| {
        token(
            &api,
            Some(t),
            "jobs:read failed:read failed:write audit:read",
        )
    };
    let (_, billing_job) = answer(
        api.post_job(Some(&writer("billing")), &keyed("k:1", "b"))
            .await,
    )
    .await;
    let (_, shop_job) = answer(
        api.post_job(Some(&writer("shop")), &keyed("k:1", "s"))
            .await,
    )
    .await;
    let billing_id = billing_job["job_id"].as_str().expect("id").to_owned();
    let shop_id = shop_job["job_id"].as_str().expect("id").to_owned();
    let billing_entry = dead_letter(&api, &billing_id).await;
    let shop_entry = dead_letter(&api, &shop_id).await;
    let shop = reader("shop");
    let unknown = uuid::Uuid::now_v7();

    let (own, own_job) = get(&api, &shop, &format!("/jobs/{shop_id}")).await;
    let (theirs, theirs_body) = get(&api, &shop, &format!("/jobs/{billing_id}")).await;
    let (missing, missing_body) = get(&api, &shop, &format!("/jobs/{unknown}")).await;
    let (_, page) = get(&api, &shop, "/failedJobs?tenant=billing").await;
    let retry = api
        .call(
            "POST",
            &format!("/failedJobs/{billing_entry}/retry"),
            Some(&shop),
        )
        .await
        .status();
    let discard = api
        .call(
            "DELETE",
            &format!("/failedJobs/{billing_entry}"),
            Some(&shop),
        )
        .await
        .status();
    let bulk = api
        .client
        .post(format!("{}/failedJobs/retry", api.address))
        .bearer_auth(&shop)
        .json(&json!({"ids": [billing_entry]}))
        .send()
        .await
        .expect("POST")
        .json::<Value>()
        .await
        .expect("JSON");

    assert_eq!((own, own_job["tenant"].as_str()), (200, Some("shop")));
    assert_eq!((theirs, missing), (404, 404));
    assert_eq!(
        theirs_body["detail"]
            .as_str()
            .map(|d| d.replace(&billing_id, "")),
        missing_body["detail"]
            .as_str()
            .map(|d| d.replace(&unknown.to_string(), "")),
        "the same answer as an unknown id"
    );
    let ids: Vec<i64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    assert_eq!(ids, [shop_entry], "?tenant= is ignored without tenants:all");
    assert_eq!((retry.as_u16(), discard.as_u16()), (404, 404));
    assert_eq!(bulk["requeued"], 0);
    let (_, still) = get(&api, &reader("billing"), "/failedJobs").await;
    assert_eq!(still["items"][0]["id"], billing_entry, "left as it was");
    let (_, trail) = get(&api, &reader("billing"), "/audit").await;
    assert_eq!(trail["items"], json!([]), "nothing was done to it");
}

#[tokio::test]
async fn tenants_all_sees_and_acts_across_tenants_and_narrows_by_tenant() {
    let api = spawn_api().await;
    let writer = |t| token(&api, Some(t), "jobs:write");
    let operator = token(
        &api,
        Some("ops"),
        "jobs:read failed:read failed:write audit:read tenants:all",
    );
    let mut entries = Vec::new();
    for tenant in ["billing", "shop"] {
        let (_, job) = answer(
            api.post_job(Some(&writer(tenant)), &keyed("k:1", tenant))
                .await,
        )
        .await;
        let id = job["job_id"].as_str().expect("id").to_owned();
        let (status, seen) = get(&api, &operator, &format!("/jobs/{id}")).await;
        assert_eq!((status, seen["tenant"].as_str()), (200, Some(tenant)));
        entries.push(dead_letter(&api, &id).await);
    }

    let (_, all) = get(&api, &operator, "/failedJobs").await;
    let (_, shop_only) = get(&api, &operator, "/failedJobs?tenant=shop").await;
    let retry = api
        .call(
            "POST",
            &format!("/failedJobs/{}/retry?note=fixed", entries[0]),
            Some(&operator),
        )
        .await
        .status();
    let (_, trail) = get(&api, &operator, "/audit?tenant=billing").await;
    let (_, billing_trail) = get(&api, &token(&api, Some("billing"), "audit:read"), "/audit").await;

    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(shop_only["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(shop_only["items"][0]["tenant"], "shop");
    assert_eq!(retry.as_u16(), 200);
    assert_eq!(trail["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(trail["items"][0]["tenant"], "billing");
    assert_eq!(trail["items"][0]["actor_tenant"], "ops");
    assert_eq!(trail["items"][0]["note"], "fixed");
    assert_eq!(
        billing_trail["items"], trail["items"],
        "billing reads what was done to its entry"
    );
}

#[tokio::test]
async fn tokens_without_the_claim_are_the_default_tenant_of_the_jobs_from_before() {
    let api = spawn_api().await;
    let plain = token(&api, None, "jobs:write jobs:read");
    let (status, job) = answer(api.post_job(Some(&plain), &keyed("old:1", "x")).await).await;
    assert_eq!(status, 202);
    let id = job["job_id"].as_str().expect("id");

    let stored: String = api
        .db()
        .connect()
        .await
        .query_one(
            "SELECT tenant FROM deliveries WHERE job_id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("the row")
        .get(0);
    let (_, read) = get(&api, &plain, &format!("/jobs/{id}")).await;

    assert_eq!(stored, "default");
    assert_eq!(read["tenant"], "default");
}

#[test]
fn the_token_command_puts_the_tenant_in_the_tenant_claim() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sendonce-api"))
        .args(["token", "--sub", "billing-app", "--tenant", "billing"])
        .env("JWT_SECRET", crate::helpers::SECRET)
        .env("JWT_TENANT_CLAIM", "app")
        .output()
        .expect("run the API binary");
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).expect("UTF-8");

    let config = <sendonce_api::config::ApiConfig as clap::Parser>::parse_from([
        "sendonce-api",
        "--jwt-secret",
        crate::helpers::SECRET,
        "--jwt-tenant-claim",
        "app",
    ]);
    let keys = sendonce_api::auth::JwtKeys::from_config(&config).expect("keys");
    let claims = keys.verify(token.trim()).expect("a valid token");
    assert_eq!(claims.tenant.as_str(), "billing");
    assert_eq!(claims.sub.as_deref(), Some("billing-app"));
}

/// Posts with `token` until the answer is 429; how many were accepted.
async fn post_until_limited(api: &TestApi, token: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut accepted = 0;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never limited");
        let status = api
            .post_job(Some(token), &crate::helpers::valid_body())
            .await
            .status();
        if status == 429 {
            return accepted;
        }
        assert_eq!(status, 202);
        accepted += 1;
    }
}

#[tokio::test]
async fn a_tenants_tokens_share_one_rate_budget_and_other_tenants_keep_theirs() {
    let api = crate::helpers::spawn_api_with(&[
        "--jwt-secret",
        crate::helpers::SECRET,
        "--rate-limit-per-sec",
        "1",
    ])
    .await;
    let mint = |sub: &str, tenant: &str| {
        api.keys
            .mint_with(
                sub,
                "jobs:write",
                Duration::from_secs(600),
                serde_json::Map::from_iter([("tenant".to_owned(), json!(tenant))]),
            )
            .expect("mint")
    };

    post_until_limited(&api, &mint("app-a", "billing")).await;
    let same_tenant = api
        .post_job(
            Some(&mint("app-b", "billing")),
            &crate::helpers::valid_body(),
        )
        .await
        .status();
    let other_tenant = api
        .post_job(Some(&mint("app-a", "shop")), &crate::helpers::valid_body())
        .await
        .status();

    assert_eq!(same_tenant, 429, "another token of the same tenant");
    assert_eq!(other_tenant, 202, "another tenant's budget is its own");
}

#[tokio::test]
async fn a_tenant_at_max_queued_is_refused_429_and_the_others_are_not() {
    let api = crate::helpers::spawn_api_with(&[
        "--jwt-secret",
        crate::helpers::SECRET,
        "--max-queued-per-tenant",
        "3",
    ])
    .await;
    let billing = token(&api, Some("billing"), "jobs:write");
    let shop = token(&api, Some("shop"), "jobs:write");

    let accepted = post_until_limited(&api, &billing).await;
    let refused = api
        .post_job(Some(&billing), &crate::helpers::valid_body())
        .await;
    let batch = api
        .post_jobs(&billing, &[crate::helpers::valid_body()])
        .await
        .status();
    let other = api
        .post_job(Some(&shop), &crate::helpers::valid_body())
        .await
        .status();

    assert_eq!(accepted, 3);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    crate::helpers::assert_problem(refused, 429, "MAX_QUEUED_PER_TENANT is 3").await;
    assert_eq!(batch, 429);
    assert_eq!(other, 202);
    assert_eq!(api.queue_len().await, 4, "nothing refused was queued");
}
