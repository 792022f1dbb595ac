//! The suppression list over HTTP: addresses are keyed lower-cased, adding
//! one twice keeps its entry, lifting takes a URL-encoded address, each
//! route needs its scope, and a tenant sees and lifts only its own list.

use serde_json::{Value, json};

use crate::helpers::{TestApi, assert_problem, spawn_api};

const READ: &str = "suppressions:read";
const WRITE: &str = "suppressions:write";
const BOTH: &str = "suppressions:read suppressions:write";

async fn add(api: &TestApi, tenant: &str, address: &str) -> (u16, Value) {
    api.send(
        "POST",
        "/suppressions",
        &api.tenant_token(tenant, WRITE),
        Some(&json!({ "address": address })),
    )
    .await
}

fn addresses(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|entry| entry["address"].as_str())
        .collect()
}

#[tokio::test]
async fn an_address_added_twice_is_listed_once_lower_cased_with_its_first_note() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", BOTH);

    let (first, entry) = api
        .send(
            "POST",
            "/suppressions",
            &token,
            Some(&json!({"address": "Ada Lovelace <Ada@Example.COM>", "note": "asked us to stop"})),
        )
        .await;
    let (second, again) = api
        .send(
            "POST",
            "/suppressions",
            &token,
            Some(&json!({"address": "ada@example.com", "note": "again"})),
        )
        .await;
    let (_, page) = api.send("GET", "/suppressions", &token, None).await;

    assert_eq!((first, second), (201, 200));
    assert_eq!(entry["address"], "ada@example.com");
    assert_eq!(
        (&entry["reason"], &entry["note"], &entry["tenant"]),
        (&json!("manual"), &json!("asked us to stop"), &json!("shop"))
    );
    assert_eq!(again, entry, "the entry is kept as it was");
    assert_eq!(addresses(&page), ["ada@example.com"]);
}

#[tokio::test]
async fn lifting_takes_a_url_encoded_address_in_any_case() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", BOTH);
    add(&api, "shop", "ada+news@example.com").await;
    add(&api, "shop", "bob@example.com").await;

    let (lifted, _) = api
        .send(
            "DELETE",
            "/suppressions/Ada%2Bnews%40Example.com",
            &token,
            None,
        )
        .await;
    let (again, problem) = api
        .send(
            "DELETE",
            "/suppressions/ada%2Bnews%40example.com",
            &token,
            None,
        )
        .await;
    let (_, page) = api.send("GET", "/suppressions", &token, None).await;

    assert_eq!((lifted, again), (204, 404));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not suppressed")
    );
    assert_eq!(addresses(&page), ["bob@example.com"]);
}

#[tokio::test]
async fn every_suppression_route_needs_its_scope() {
    let api = spawn_api().await;
    add(&api, "shop", "ada@example.com").await;
    let body = json!({"address": "bob@example.com"});
    for (method, path, scope, body) in [
        ("GET", "/suppressions", READ, None),
        ("POST", "/suppressions", WRITE, Some(&body)),
        ("DELETE", "/suppressions/ada%40example.com", WRITE, None),
    ] {
        let other = if scope == READ { WRITE } else { READ };
        let (status, problem) = api
            .send(method, path, &api.tenant_token("shop", other), body)
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
    let (_, page) = api
        .send(
            "GET",
            "/suppressions",
            &api.tenant_token("shop", READ),
            None,
        )
        .await;
    assert_eq!(addresses(&page), ["ada@example.com"]);
}

#[tokio::test]
async fn a_tenant_sees_and_lifts_only_its_own_list() {
    let api = spawn_api().await;
    add(&api, "shop", "ada@example.com").await;
    let billing = api.tenant_token("billing", BOTH);

    let (_, seen) = api.send("GET", "/suppressions", &billing, None).await;
    let (lifted, _) = api
        .send("DELETE", "/suppressions/ada%40example.com", &billing, None)
        .await;
    let (added, own) = add(&api, "billing", "ada@example.com").await;
    let operator = api.tenant_token("ops", "suppressions:read tenants:all");
    let (_, everyone) = api.send("GET", "/suppressions", &operator, None).await;

    assert_eq!(seen["items"], json!([]));
    assert_eq!(lifted, 404);
    assert_eq!((added, &own["tenant"]), (201, &json!("billing")));
    let tenants: Vec<&Value> = everyone["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|entry| &entry["tenant"])
        .collect();
    assert_eq!(tenants, [&json!("billing"), &json!("shop")]);
}

#[tokio::test]
async fn the_list_pages_by_address_with_a_cursor() {
    let api = spawn_api().await;
    for address in ["carol@example.com", "ada@example.com", "bob@example.com"] {
        add(&api, "shop", address).await;
    }
    let token = api.tenant_token("shop", READ);

    let (_, first) = api.send("GET", "/suppressions?limit=2", &token, None).await;
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = api
        .send(
            "GET",
            &format!("/suppressions?limit=2&cursor={cursor}"),
            &token,
            None,
        )
        .await;

    assert_eq!(addresses(&first), ["ada@example.com", "bob@example.com"]);
    assert_eq!(addresses(&second), ["carol@example.com"]);
    assert_eq!(second["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_addresses_notes_and_cursors_are_refused() {
    let api = spawn_api().await;
    let token = api.tenant_token("shop", BOTH);
    for (body, status, needle) in [
        (json!({"address": "not an address"}), 422, "`address`"),
        (
            json!({"address": "a@example.com, b@example.com"}),
            422,
            "`address`",
        ),
        (json!({"address": ""}), 422, "`address`"),
        (
            json!({"address": "a@example.com", "note": ""}),
            422,
            "`note`",
        ),
        (
            json!({"address": "a@example.com", "reason": "bounce"}),
            400,
            "reason",
        ),
    ] {
        let response = api
            .client
            .post(format!("{}/suppressions", api.address))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("POST /suppressions");
        assert_problem(response, status, needle).await;
    }
    for (method, path, status, needle) in [
        ("DELETE", "/suppressions/nobody", 422, "`address`"),
        ("GET", "/suppressions?cursor=garbage!", 422, "`cursor`"),
        ("GET", "/suppressions?limit=0", 422, "`limit`"),
    ] {
        let response = api.call(method, path, Some(&token)).await;
        assert_problem(response, status, needle).await;
    }
    let (_, page) = api.send("GET", "/suppressions", &token, None).await;
    assert_eq!(page["items"], json!([]));
}
