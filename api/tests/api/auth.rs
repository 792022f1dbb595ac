use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{
    SECRET, assert_problem, challenge, fixture, spawn_api, spawn_api_with, valid_body,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(claims: &Value, secret: &str) -> String {
    sign_with(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

fn sign_with(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("sign")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("read a key fixture")
}

fn writer_claims() -> Value {
    json!({"sub": "tests", "exp": now() + 600, "scope": "jobs:write"})
}

async fn assert_unauthorized(response: reqwest::Response) {
    let challenge = challenge(&response);
    assert_eq!(challenge, "Bearer error=\"invalid_token\"");
    assert_problem(response, 401, "token").await;
}

/// RFC 6750 §3.1: a request without credentials gets a bare challenge, no
/// error code.
async fn assert_no_credentials(response: reqwest::Response) {
    assert_eq!(challenge(&response), "Bearer");
    assert_problem(response, 401, "token").await;
}

#[tokio::test]
async fn a_missing_token_is_refused_with_401_and_a_bare_bearer_challenge() {
    let api = spawn_api().await;
    assert_no_credentials(api.post_job(None, &valid_body()).await).await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused_with_401() {
    let api = spawn_api().await;
    let forged = sign(
        &writer_claims(),
        "not-the-secret-not-the-secret-not-the-secret",
    );
    assert_unauthorized(api.post_job(Some(&forged), &valid_body()).await).await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_401() {
    let api = spawn_api().await;
    let expired = sign(
        &json!({"sub": "old", "exp": now() - 3600, "scope": "jobs:write"}),
        SECRET,
    );
    assert_unauthorized(api.post_job(Some(&expired), &valid_body()).await).await;
}

#[tokio::test]
async fn a_token_without_an_expiry_is_refused_with_401() {
    let api = spawn_api().await;
    let forever = sign(&json!({"sub": "x", "scope": "jobs:write"}), SECRET);
    assert_unauthorized(api.post_job(Some(&forever), &valid_body()).await).await;
}

#[tokio::test]
async fn credentials_of_another_scheme_are_refused_with_401_and_a_bare_bearer_challenge() {
    let api = spawn_api().await;
    let response = api
        .client
        .post(format!("{}/addJob", api.address))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .json(&valid_body())
        .send()
        .await
        .expect("request");
    assert_no_credentials(response).await;
}

#[tokio::test]
async fn a_bearer_header_without_a_token_is_refused_with_401_invalid_token() {
    let api = spawn_api().await;
    for value in ["Bearer", "Bearer ", "bearer   "] {
        let response = api
            .client
            .post(format!("{}/addJob", api.address))
            .header("Authorization", value)
            .json(&valid_body())
            .send()
            .await
            .expect("request");
        assert_unauthorized(response).await;
    }
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused_with_401() {
    let api = spawn_api().await;
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        part(json!({"alg": "none", "typ": "JWT"})),
        part(writer_claims())
    );
    assert_unauthorized(api.post_job(Some(&unsigned), &valid_body()).await).await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn a_token_is_accepted_with_clock_skew_inside_the_leeway_and_refused_outside_it() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--jwt-leeway-secs", "30"]).await;
    let claims =
        |exp: u64, nbf: u64| json!({"sub": "skew", "exp": exp, "nbf": nbf, "scope": "jobs:write"});
    let t = now();
    let just_expired = sign(&claims(t - 10, t - 600), SECRET);
    let not_quite_valid_yet = sign(&claims(t + 600, t + 10), SECRET);
    assert_eq!(
        api.post_job(Some(&just_expired), &valid_body())
            .await
            .status(),
        202
    );
    assert_eq!(
        api.post_job(Some(&not_quite_valid_yet), &valid_body())
            .await
            .status(),
        202
    );

    let long_expired = sign(&claims(t - 120, t - 600), SECRET);
    let not_valid_yet = sign(&claims(t + 600, t + 120), SECRET);
    assert_unauthorized(api.post_job(Some(&long_expired), &valid_body()).await).await;
    assert_unauthorized(api.post_job(Some(&not_valid_yet), &valid_body()).await).await;
    assert_eq!(api.queue_len().await, 2);
}

#[tokio::test]
async fn issuer_and_audience_are_required_and_checked_when_configured() {
    let api = spawn_api_with(&[
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "https://issuer.test",
        "--jwt-audience",
        "sendonce",
    ])
    .await;
    let with = |extra: Value| {
        let mut claims = writer_claims();
        claims
            .as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        sign(&claims, SECRET)
    };
    let good = with(json!({"iss": "https://issuer.test", "aud": "sendonce"}));
    assert_eq!(api.post_job(Some(&good), &valid_body()).await.status(), 202);
    for bad in [
        json!({}),
        json!({"iss": "https://issuer.test"}),
        json!({"aud": "sendonce"}),
        json!({"iss": "https://evil.test", "aud": "sendonce"}),
        json!({"iss": "https://issuer.test", "aud": "other"}),
    ] {
        assert_unauthorized(api.post_job(Some(&with(bad)), &valid_body()).await).await;
    }
    assert_eq!(api.queue_len().await, 1);
}

#[tokio::test]
async fn tokens_signed_with_the_configured_asymmetric_key_are_accepted() {
    for (algorithm, flag, public, private) in [
        (
            Algorithm::RS256,
            "RS256",
            "rsa-public.pem",
            "rsa-private.pem",
        ),
        (Algorithm::ES256, "ES256", "ec-public.pem", "ec-private.pem"),
        (
            Algorithm::EdDSA,
            "EdDSA",
            "ed25519-public.pem",
            "ed25519-private.pem",
        ),
    ] {
        let public = fixture(public);
        let api =
            spawn_api_with(&["--jwt-algorithm", flag, "--jwt-public-key-file", &public]).await;
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem(private)),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem(private)),
            _ => EncodingKey::from_ed_pem(&pem(private)),
        }
        .expect("a private key fixture");
        let token = sign_with(algorithm, &writer_claims(), &key);
        let response = api.post_job(Some(&token), &valid_body()).await;
        assert_eq!(response.status(), 202, "{flag}");
    }
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let public = fixture("rsa-public.pem");
    let api = spawn_api_with(&["--jwt-algorithm", "RS256", "--jwt-public-key-file", &public]).await;
    let confused = sign_with(
        Algorithm::HS256,
        &writer_claims(),
        &EncodingKey::from_secret(&pem("rsa-public.pem")),
    );
    assert_unauthorized(api.post_job(Some(&confused), &valid_body()).await).await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn hs256_tokens_signed_with_an_ec_or_ed25519_public_key_are_refused() {
    for (flag, public) in [("ES256", "ec-public.pem"), ("EdDSA", "ed25519-public.pem")] {
        let path = fixture(public);
        let api = spawn_api_with(&["--jwt-algorithm", flag, "--jwt-public-key-file", &path]).await;
        let confused = sign_with(
            Algorithm::HS256,
            &writer_claims(),
            &EncodingKey::from_secret(&pem(public)),
        );
        assert_unauthorized(api.post_job(Some(&confused), &valid_body()).await).await;
        assert_eq!(api.queue_len().await, 0, "{flag}");
    }
}

#[tokio::test]
async fn an_rs256_token_is_refused_when_the_api_is_configured_for_hs256() {
    let api = spawn_api().await;
    let key = EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).expect("a private key fixture");
    let token = sign_with(Algorithm::RS256, &writer_claims(), &key);
    assert_unauthorized(api.post_job(Some(&token), &valid_body()).await).await;
}

/// Every authenticated route, with the scope it needs.
const ROUTES: [(&str, &str, &str); 7] = [
    ("POST", "/addJob", "jobs:write"),
    (
        "GET",
        "/jobs/0197a000-0000-7000-8000-000000000000",
        "jobs:read",
    ),
    ("GET", "/failedJobs", "failed:read"),
    ("POST", "/failedJobs/retry", "failed:write"),
    ("POST", "/failedJobs/1/retry", "failed:write"),
    ("DELETE", "/failedJobs/1", "failed:write"),
    ("GET", "/audit", "audit:read"),
];

#[tokio::test]
async fn every_route_refuses_a_missing_token_with_401() {
    let api = spawn_api().await;
    for (method, path, _) in ROUTES {
        assert_no_credentials(api.call(method, path, None).await).await;
    }
}

#[tokio::test]
async fn every_route_refuses_a_token_without_its_scope_with_403() {
    let api = spawn_api().await;
    for (method, path, scope) in ROUTES {
        let others: Vec<&str> = ROUTES
            .iter()
            .map(|(_, _, s)| *s)
            .filter(|s| *s != scope)
            .collect();
        let response = api
            .call(method, path, Some(&api.token(&others.join(" "))))
            .await;
        let challenge = challenge(&response);
        assert_eq!(
            challenge,
            format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
            "{method} {path}"
        );
        assert_problem(response, 403, scope).await;
    }
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn health_readiness_metrics_and_the_openapi_document_need_no_token() {
    let api = spawn_api().await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(api.call("GET", path, None).await.status(), 200, "{path}");
    }
    let document: Value = api
        .call("GET", "/openapi.json", None)
        .await
        .json()
        .await
        .expect("a JSON document");
    assert_eq!(document["openapi"], "3.1.0");
    let metrics = api.call("GET", "/metrics", None).await.status();
    assert_eq!(metrics, 404, "/metrics is served on METRICS_ADDR only");
}

fn sign_with_header(header: &Header) -> String {
    jsonwebtoken::encode(
        header,
        &writer_claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test]
async fn a_token_with_critical_header_parameters_or_an_unencoded_payload_is_refused() {
    let api = spawn_api().await;
    let mut crit = Header::new(Algorithm::HS256);
    crit.crit = Some(vec!["exp-ext".into()]);
    crit.extras.insert("exp-ext", 1);
    let mut unencoded = Header::new(Algorithm::HS256);
    unencoded.crit = Some(vec!["b64".into()]);
    unencoded.extras.insert("b64", false);
    let mut b64_alone = Header::new(Algorithm::HS256);
    b64_alone.extras.insert("b64", false);

    for header in [crit, unencoded, b64_alone] {
        let token = sign_with_header(&header);
        assert_unauthorized(api.post_job(Some(&token), &valid_body()).await).await;
    }
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn two_authorization_headers_are_refused_with_400_invalid_request() {
    let api = spawn_api().await;
    let good = api.token("jobs:write");
    for second in [good.clone(), "garbage".to_owned()] {
        let response = api
            .client
            .post(format!("{}/addJob", api.address))
            .header("Authorization", format!("Bearer {good}"))
            .header("Authorization", format!("Bearer {second}"))
            .json(&valid_body())
            .send()
            .await
            .expect("request");
        assert_eq!(challenge(&response), "Bearer error=\"invalid_request\"");
        assert_problem(response, 400, "Authorization").await;
    }
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn a_refused_token_gets_the_same_opaque_detail_whatever_was_wrong() {
    let api = spawn_api().await;
    let forged = sign(
        &writer_claims(),
        "not-the-secret-not-the-secret-not-the-secret",
    );
    let expired = sign(
        &json!({"sub": "old", "exp": now() - 3600, "scope": "jobs:write"}),
        SECRET,
    );
    let mut details = std::collections::BTreeSet::new();
    for token in [forged.as_str(), expired.as_str(), "not.a.jwt", "x"] {
        let response = api.post_job(Some(token), &valid_body()).await;
        assert_eq!(challenge(&response), "Bearer error=\"invalid_token\"");
        let problem = assert_problem(response, 401, "token").await;
        details.insert(problem["detail"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        details.len(),
        1,
        "details told the causes apart: {details:?}"
    );
}
