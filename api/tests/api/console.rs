//! The operator console over HTTP (issue 20), as a browser would meet it,
//! with redirects not followed and cookies kept by hand so that every
//! status, `Location` and cookie attribute is seen:
//! - with `--console-enabled true`, every console route (each page and each
//!   form action, GET and POST) sends a request without a valid session to
//!   `/console/sign-in` with a 303; without it every `/console` path is 404;
//! - every console response (pages, redirects, errors, the stylesheet)
//!   carries the security headers, and no page carries a script;
//! - sign-in refuses a bad token (401) and one without a read scope (403),
//!   and a form that lacks its pre-session CSRF pair;
//! - the session cookie is `HttpOnly; SameSite=Strict; Path=/`, named
//!   `__Host-sendonce_console` and `Secure` outside development, and
//!   `sendonce_console` without `Secure` in development;
//! - a POST without the session's CSRF token, with a wrong one, or from a
//!   foreign `Origin` is refused (403) and changes nothing, and so is a
//!   read-only session's requeue or discard;
//! - sign-out ends the session on the server: the old cookie is useless;
//! - a tenant's session does not see another tenant's job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::helpers::{SECRET, TestApi, dead_letter, hs256_keys, spawn_api_with, valid_body};

const SIGN_IN: &str = "/console/sign-in";
const ASSET: &str = "/console/assets/console.css";
/// A job id no job has.
const UNKNOWN: &str = "0190f0f0-0000-7000-8000-000000000000";
/// Every read scope and every write scope, across tenants.
const ALL_SCOPES: &str = "jobs:read jobs:write failed:read failed:write suppressions:read \
                          suppressions:write webhooks:read webhooks:write tenants:all";

/// The headers every console response carries, with their exact values.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Every console page, with ids no job or endpoint has.
fn pages() -> Vec<String> {
    vec![
        "/console/".into(),
        "/console/jobs".into(),
        "/console/jobs?q=ada%40example.com".into(),
        format!("/console/jobs/{UNKNOWN}"),
        "/console/dead-letters".into(),
        "/console/dead-letters?reason=uncertain".into(),
        "/console/scheduled".into(),
        "/console/suppressions".into(),
        "/console/webhooks".into(),
        format!("/console/webhooks/{UNKNOWN}"),
    ]
}

/// Every console action (all POST): those the contract names, and the
/// suppression and webhook forms' (which it leaves to the pages).
fn actions() -> Vec<String> {
    vec![
        "/console/sign-out".into(),
        "/console/dead-letters/requeue".into(),
        "/console/dead-letters/discard".into(),
        format!("/console/jobs/{UNKNOWN}/cancel"),
        "/console/suppressions".into(),
        "/console/suppressions/lift".into(),
        format!("/console/webhooks/{UNKNOWN}/resume"),
    ]
}

/// An API with the console, and a client that follows no redirect.
struct Console {
    api: TestApi,
    http: reqwest::Client,
    /// The session cookie's name in this API's environment.
    cookie: &'static str,
}

/// An API with the console enabled, in production (`__Host-` cookie).
async fn console() -> Console {
    console_with(&[]).await
}

/// An API with the console enabled, in development (plain http cookie).
async fn dev_console() -> Console {
    console_with(&["--app-env", "development"]).await
}

async fn console_with(extra: &[&str]) -> Console {
    let mut settings = vec!["--jwt-secret", SECRET, "--console-enabled", "true"];
    settings.extend_from_slice(extra);
    let development = extra.contains(&"development");
    Console {
        api: spawn_api_with(&settings).await,
        http: no_redirects(),
        cookie: if development {
            "sendonce_console"
        } else {
            "__Host-sendonce_console"
        },
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// One `Set-Cookie` header: the cookie, and its attributes (names lower
/// cased).
#[derive(Debug, Clone)]
struct SetCookie {
    name: String,
    value: String,
    attributes: Vec<(String, String)>,
}

impl SetCookie {
    fn parse(header: &str) -> Self {
        let mut parts = header.split(';').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let (name, value) = first.split_once('=').unwrap_or((first, ""));
        let attributes = parts
            .filter(|part| !part.is_empty())
            .map(|part| match part.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_owned()),
                None => (part.to_ascii_lowercase(), String::new()),
            })
            .collect();
        Self {
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            attributes,
        }
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.attribute(name).is_some()
    }

    /// Whether this header deletes the cookie rather than setting it.
    fn clears(&self) -> bool {
        let max_age_gone = self
            .attribute("max-age")
            .is_some_and(|age| age.parse::<i64>().is_ok_and(|age| age <= 0));
        let expired = self.attribute("expires").is_some_and(|at| {
            chrono::DateTime::parse_from_rfc2822(&at.replace("GMT", "+0000"))
                .is_ok_and(|at| at < chrono::Utc::now())
        });
        self.value.is_empty() || max_age_gone || expired
    }
}

fn set_cookies(response: &reqwest::Response) -> Vec<SetCookie> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(SetCookie::parse)
        .collect()
}

/// A browser's cookies for the API's origin, kept by hand.
#[derive(Debug, Clone, Default)]
struct Browser {
    cookies: BTreeMap<String, String>,
}

impl Browser {
    /// Keeps what `response` sets and drops what it deletes.
    fn take(&mut self, response: &reqwest::Response) {
        for cookie in set_cookies(response) {
            if cookie.clears() {
                self.cookies.remove(&cookie.name);
            } else {
                self.cookies.insert(cookie.name, cookie.value);
            }
        }
    }

    fn with(name: &str, value: &str) -> Self {
        Self {
            cookies: BTreeMap::from([(name.to_owned(), value.to_owned())]),
        }
    }

    fn header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// A signed-in browser: its cookies and its session's CSRF token.
#[derive(Debug, Clone)]
struct Session {
    browser: Browser,
    csrf: String,
}

/// `fields` as `application/x-www-form-urlencoded`.
fn form_body(fields: &[(&str, &str)]) -> String {
    fn encode(text: &str) -> String {
        let mut out = String::new();
        for b in text.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(char::from(b));
                }
                b' ' => out.push('+'),
                _ => {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
        out
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the first hidden `csrf` input in `html`, which the server
/// renders as `<input type="hidden" name="csrf" value="TOKEN">`.
fn csrf_of(html: &str) -> String {
    const FIELD: &str = r#"name="csrf" value=""#;
    let start = html
        .find(FIELD)
        .map(|at| at + FIELD.len())
        .unwrap_or_else(|| panic!("no csrf input in the page:\n{html}"));
    let len = html[start..]
        .find('"')
        .expect("the csrf value's closing quote");
    let token = &html[start..start + len];
    assert!(!token.is_empty(), "an empty csrf token");
    token.to_owned()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts the security headers on `response` (`what` names it), with
/// `Cache-Control: no-store` unless it is the stylesheet.
fn assert_security_headers(response: &reqwest::Response, what: &str) {
    for (name, want) in SECURITY_HEADERS {
        let values: Vec<&str> = response
            .headers()
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(
            values,
            [*want],
            "{what} ({}): header {name}",
            response.status()
        );
    }
    if !what.contains(ASSET) {
        assert_eq!(
            header(response, "cache-control"),
            "no-store",
            "{what} ({}): Cache-Control",
            response.status()
        );
    }
}

/// Asserts a 303 to the sign-in page, with the security headers.
fn assert_to_sign_in(response: &reqwest::Response, what: &str) {
    assert_eq!(response.status(), 303, "{what}");
    assert_eq!(location(response), SIGN_IN, "{what}: Location");
    assert_security_headers(response, what);
}

impl Console {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.address)
    }

    async fn get(&self, path: &str, browser: &Browser) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(cookies) = browser.header() {
            request = request.header("cookie", cookies);
        }
        request.send().await.expect("GET")
    }

    async fn post(
        &self,
        path: &str,
        browser: &Browser,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        self.post_from(path, browser, fields, &[]).await
    }

    /// A form POST with extra `headers` (`Origin`, `Sec-Fetch-Site`).
    async fn post_from(
        &self,
        path: &str,
        browser: &Browser,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields));
        if let Some(cookies) = browser.header() {
            request = request.header("cookie", cookies);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("POST")
    }

    /// Opens the sign-in page and submits its form with `token`: the
    /// browser afterwards, the answer, and the cookies it set.
    async fn submit_sign_in(&self, token: &str) -> (Browser, reqwest::Response, Vec<SetCookie>) {
        let mut browser = Browser::default();
        let page = self.get(SIGN_IN, &browser).await;
        assert_eq!(page.status(), 200, "GET {SIGN_IN}");
        browser.take(&page);
        let csrf = csrf_of(&page.text().await.expect("the sign-in page"));
        let answer = self
            .post(SIGN_IN, &browser, &[("token", token), ("csrf", &csrf)])
            .await;
        let cookies = set_cookies(&answer);
        browser.take(&answer);
        (browser, answer, cookies)
    }

    /// Signs in with `token` as a browser would; answers the session.
    async fn sign_in(&self, token: &str) -> Session {
        let (browser, answer, _) = self.submit_sign_in(token).await;
        assert_eq!(answer.status(), 303, "signing in");
        assert_eq!(location(&answer), "/console/", "signing in");
        assert!(
            browser.cookies.contains_key(self.cookie),
            "no {} cookie after signing in: {browser:?}",
            self.cookie
        );
        let overview = self.get("/console/", &browser).await;
        assert_eq!(overview.status(), 200, "the overview once signed in");
        let csrf = csrf_of(&overview.text().await.expect("the overview"));
        Session { browser, csrf }
    }

    /// A session of a token with `scope` (the tenant `default`).
    async fn session(&self, scope: &str) -> Session {
        self.sign_in(&self.api.token(scope)).await
    }

    /// Posts a job with `jobs:write`; answers its id.
    async fn job(&self, token: &str, body: &Value) -> String {
        let response = self.api.post_job(Some(token), body).await;
        assert!(response.status().is_success(), "{}", response.status());
        let answer: Value = response.json().await.expect("JSON");
        answer["job_id"].as_str().expect("a job id").to_owned()
    }

    /// A job dead-lettered as `failed`; answers its entry's id.
    async fn failed_entry(&self) -> i64 {
        let job = self.job(&self.api.token("jobs:write"), &valid_body()).await;
        dead_letter(&self.api, &job).await
    }

    /// The ids of the dead-letter entries the API lists.
    async fn entries(&self) -> Vec<i64> {
        let (status, page) = self
            .api
            .send(
                "GET",
                "/failedJobs?limit=500",
                &self.api.token("failed:read tenants:all"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|item| item["id"].as_i64())
            .collect()
    }
}

/// The value of attribute `name` in the tag text `tag`.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// The opening tags `<name ...>` in `html`.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}");
    html.match_indices(&open)
        .filter_map(|(at, _)| {
            let rest = &html[at..];
            let end = rest.find('>')?;
            let tag = &rest[..end];
            tag[open.len()..]
                .starts_with(char::is_whitespace)
                .then_some(tag)
        })
        .collect()
}

/// The console paths `html` links to (GET) and posts to (forms with
/// `method="post"`, and every `formaction`), as written (`&amp;` undone).
fn routes_in(html: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let console = |path: &str| {
        path.starts_with("/console")
            .then(|| path.replace("&amp;", "&"))
    };
    let links = tags(html, "a")
        .into_iter()
        .filter_map(|tag| attribute(tag, "href"))
        .filter_map(console)
        .collect();
    let forms = tags(html, "form").into_iter().filter(|tag| {
        attribute(tag, "method").is_some_and(|method| method.eq_ignore_ascii_case("post"))
    });
    let posts = forms
        .filter_map(|tag| attribute(tag, "action"))
        .chain(
            tags(html, "button")
                .into_iter()
                .chain(tags(html, "input"))
                .filter_map(|tag| attribute(tag, "formaction")),
        )
        .filter_map(console)
        .collect();
    (links, posts)
}

#[tokio::test]
async fn every_console_route_sends_a_request_without_a_session_to_sign_in() {
    let console = console().await;
    let forged = [
        Browser::default(),
        Browser::with("__Host-sendonce_console", "not-a-session"),
        Browser::with("sendonce_console", "not-a-session"),
    ];
    for browser in &forged {
        for path in pages() {
            let what = format!("GET {path} with {browser:?}");
            assert_to_sign_in(&console.get(&path, browser).await, &what);
        }
        for path in actions() {
            let what = format!("POST {path} with {browser:?}");
            assert_to_sign_in(
                &console
                    .post(&path, browser, &[("csrf", "x"), ("ids", "1")])
                    .await,
                &what,
            );
        }
    }
    // The sign-in page and the stylesheet are public.
    let none = Browser::default();
    assert_eq!(console.get(SIGN_IN, &none).await.status(), 200);
    assert_eq!(console.get(ASSET, &none).await.status(), 200);
}

/// The routes the contract does not name (the suppression forms, say) are
/// found in the pages themselves: every link and every form action a
/// signed-in operator sees refuses a request without a session.
#[tokio::test]
async fn every_link_and_form_action_in_the_pages_refuses_a_request_without_a_session() {
    let console = dev_console().await;
    let api = &console.api;
    let operator = api.token(ALL_SCOPES);
    // Something on every page: an entry, a scheduled job, a suppression,
    // a webhook endpoint.
    console.failed_entry().await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let scheduled = console
        .job(
            &operator,
            &json!({"to": "later@example.com", "subject": "Hi", "text": "later",
                    "idempotency_key": "console:later", "send_at": later}),
        )
        .await;
    let (status, _) = api
        .send(
            "POST",
            "/suppressions",
            &operator,
            Some(&json!({"address": "gone@example.com"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, endpoint) = api
        .send(
            "POST",
            "/webhooks",
            &operator,
            Some(&json!({"url": "https://hooks.example.com/console"})),
        )
        .await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint = endpoint["id"].as_str().expect("an endpoint id");
    let session = console.sign_in(&operator).await;

    let mut links = BTreeSet::new();
    let mut posts = BTreeSet::new();
    for path in pages().into_iter().chain([
        format!("/console/jobs/{scheduled}"),
        format!("/console/webhooks/{endpoint}"),
    ]) {
        let response = console.get(&path, &session.browser).await;
        let status = response.status();
        let html = response.text().await.expect("a page");
        assert!(
            status == 200 || path.contains(UNKNOWN),
            "GET {path}: {status}"
        );
        let (found_links, found_posts) = routes_in(&html);
        links.extend(found_links);
        posts.extend(found_posts);
    }
    for named in actions().into_iter().filter(|a| !a.contains(UNKNOWN)) {
        assert!(
            posts.contains(&named),
            "no form posts to {named}: {posts:?}"
        );
    }
    assert!(
        posts.contains(&format!("/console/jobs/{scheduled}/cancel")),
        "the scheduled job's cancel button: {posts:?}"
    );

    let none = Browser::default();
    for path in links.iter().filter(|p| *p != SIGN_IN && *p != ASSET) {
        assert_to_sign_in(&console.get(path, &none).await, &format!("GET {path}"));
    }
    for path in posts.iter().filter(|p| *p != SIGN_IN) {
        let response = console.post(path, &none, &[("csrf", &session.csrf)]).await;
        assert_to_sign_in(&response, &format!("POST {path}"));
    }
}

#[tokio::test]
async fn without_console_enabled_every_console_path_answers_404() {
    for settings in [
        vec!["--jwt-secret", SECRET],
        vec!["--jwt-secret", SECRET, "--console-enabled", "false"],
    ] {
        let api = spawn_api_with(&settings).await;
        let http = no_redirects();
        let paths = ["/console", "/console/", SIGN_IN, ASSET]
            .map(String::from)
            .into_iter()
            .chain(pages())
            .chain(actions());
        for path in paths {
            for method in [reqwest::Method::GET, reqwest::Method::POST] {
                let what = format!("{method} {path} with {settings:?}");
                let response = http
                    .request(method, format!("{}{path}", api.address))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("csrf=x")
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 404, "{what}");
                assert_eq!(
                    header(&response, "content-type"),
                    "application/problem+json",
                    "{what}"
                );
                assert!(set_cookies(&response).is_empty(), "{what} set a cookie");
            }
        }
    }
}

#[tokio::test]
async fn pages_redirects_errors_and_the_stylesheet_carry_the_security_headers() {
    let console = dev_console().await;
    let none = Browser::default();
    let mut seen: Vec<(String, reqwest::Response)> = Vec::new();

    seen.push((format!("GET {SIGN_IN}"), console.get(SIGN_IN, &none).await));
    seen.push((format!("GET {ASSET}"), console.get(ASSET, &none).await));
    seen.push((
        "GET /console/ without a session".into(),
        console.get("/console/", &none).await,
    ));
    let (_, bad, _) = console.submit_sign_in("not-a-token").await;
    assert_eq!(bad.status(), 401);
    seen.push(("sign-in with a bad token".into(), bad));
    let (_, weak, _) = console
        .submit_sign_in(&console.api.token("jobs:write"))
        .await;
    assert_eq!(weak.status(), 403);
    seen.push(("sign-in without a read scope".into(), weak));
    let (_, good, _) = console.submit_sign_in(&console.api.token(ALL_SCOPES)).await;
    assert_eq!(good.status(), 303);
    seen.push(("sign-in".into(), good));

    let session = console.session(ALL_SCOPES).await;
    for path in pages() {
        let response = console.get(&path, &session.browser).await;
        let want = if path.contains(UNKNOWN) { 404 } else { 200 };
        assert_eq!(response.status(), want, "GET {path}");
        seen.push((format!("GET {path}"), response));
    }
    let missing = console
        .post("/console/dead-letters/discard", &session.browser, &[])
        .await;
    assert_eq!(missing.status(), 403, "a POST without csrf");
    seen.push(("a POST without csrf".into(), missing));
    let out = console
        .post(
            "/console/sign-out",
            &session.browser,
            &[("csrf", &session.csrf)],
        )
        .await;
    assert_eq!(out.status(), 303, "sign-out");
    seen.push(("sign-out".into(), out));

    for (what, response) in seen {
        let what = if what.contains(ASSET) {
            what
        } else {
            format!("{what} [{}]", response.url().path())
        };
        assert_security_headers(&response, &what);
        let status = response.status();
        let content_type = header(&response, "content-type");
        let body = response.text().await.expect("a body");
        if status != 303 && !what.contains(ASSET) {
            assert!(
                content_type.starts_with("text/html"),
                "{what} ({status}): {content_type}"
            );
            assert!(
                !body.to_ascii_lowercase().contains("<script"),
                "{what}: a script in a console page"
            );
        }
        if status.is_client_error() {
            assert!(
                !body.contains("panicked") && !body.contains("src/"),
                "{what}: an error page shows internals:\n{body}"
            );
        }
    }
}

#[tokio::test]
async fn sign_in_refuses_a_bad_token_with_401_and_one_without_a_read_scope_with_403() {
    let console = dev_console().await;
    let other = hs256_keys("another-secret-that-is-long-enough-for-hs256")
        .mint("tests", "jobs:read", std::time::Duration::from_secs(600))
        .expect("mint");
    for bad in ["not-a-token", "", other.as_str()] {
        let (browser, answer, _) = console.submit_sign_in(bad).await;
        assert_eq!(answer.status(), 401, "sign-in with {bad:?}");
        assert!(!browser.cookies.contains_key(console.cookie), "{bad:?}");
        let page = answer.text().await.expect("a page");
        assert!(page.contains(r#"class="error""#), "no p.error:\n{page}");
    }
    for weak in [
        "jobs:write",
        "failed:write suppressions:write",
        "audit:read",
    ] {
        let (browser, answer, _) = console.submit_sign_in(&console.api.token(weak)).await;
        assert_eq!(answer.status(), 403, "sign-in with {weak:?}");
        assert!(!browser.cookies.contains_key(console.cookie), "{weak:?}");
    }
    for read in [
        "jobs:read",
        "failed:read",
        "suppressions:read",
        "webhooks:read",
    ] {
        let (_, answer, _) = console.submit_sign_in(&console.api.token(read)).await;
        assert_eq!(answer.status(), 303, "sign-in with {read:?}");
    }
}

#[tokio::test]
async fn sign_in_without_its_csrf_pair_sets_no_session() {
    let console = dev_console().await;
    let token = console.api.token("jobs:read");
    let mut browser = Browser::default();
    let page = console.get(SIGN_IN, &browser).await;
    browser.take(&page);
    assert!(
        browser.cookies.contains_key("sendonce_console_signin"),
        "the pre-session cookie: {browser:?}"
    );
    let csrf = csrf_of(&page.text().await.expect("the page"));

    // The form's token without its cookie, the cookie without the token,
    // and the cookie with another token: a login CSRF.
    let attempts = [
        (Browser::default(), Some(csrf.as_str())),
        (browser.clone(), None),
        (browser.clone(), Some("not-the-token")),
    ];
    for (jar, field) in attempts {
        let mut fields = vec![("token", token.as_str())];
        fields.extend(field.map(|f| ("csrf", f)));
        let answer = console.post(SIGN_IN, &jar, &fields).await;
        let what = format!("sign-in with {jar:?} and csrf {field:?}");
        assert!(
            answer.status().is_client_error(),
            "{what}: {}",
            answer.status()
        );
        assert!(
            !set_cookies(&answer)
                .iter()
                .any(|c| c.name == console.cookie && !c.clears()),
            "{what} set a session"
        );
    }
}

#[tokio::test]
async fn outside_development_the_session_cookie_is_host_prefixed_secure_http_only_and_strict() {
    let console = console().await;
    let (_, answer, cookies) = console.submit_sign_in(&console.api.token(ALL_SCOPES)).await;
    assert_eq!(answer.status(), 303);
    let session = cookies
        .iter()
        .find(|c| c.name == "__Host-sendonce_console")
        .unwrap_or_else(|| panic!("no __Host-sendonce_console cookie: {cookies:?}"));
    assert!(!session.value.is_empty());
    assert!(session.has("httponly"), "{session:?}");
    assert!(session.has("secure"), "{session:?}");
    assert_eq!(
        session.attribute("samesite").map(str::to_ascii_lowercase),
        Some("strict".into()),
        "{session:?}"
    );
    assert_eq!(session.attribute("path"), Some("/"), "{session:?}");
    assert!(!session.has("domain"), "a __Host- cookie has no Domain");
    assert!(
        !cookies.iter().any(|c| c.name == "sendonce_console"),
        "no unprefixed session cookie outside development: {cookies:?}"
    );
}

#[tokio::test]
async fn in_development_the_session_cookie_is_sendonce_console_without_secure() {
    let console = dev_console().await;
    let (_, answer, cookies) = console.submit_sign_in(&console.api.token(ALL_SCOPES)).await;
    assert_eq!(answer.status(), 303);
    let session = cookies
        .iter()
        .find(|c| c.name == "sendonce_console")
        .unwrap_or_else(|| panic!("no sendonce_console cookie: {cookies:?}"));
    assert!(!session.value.is_empty());
    assert!(session.has("httponly"), "{session:?}");
    assert!(!session.has("secure"), "{session:?}");
    assert_eq!(
        session.attribute("samesite").map(str::to_ascii_lowercase),
        Some("strict".into()),
        "{session:?}"
    );
    assert_eq!(session.attribute("path"), Some("/"), "{session:?}");
}

#[tokio::test]
async fn a_post_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing() {
    let console = dev_console().await;
    let entry = console.failed_entry().await.to_string();
    let session = console.session(ALL_SCOPES).await;
    let another = console.session(ALL_SCOPES).await;
    assert_ne!(session.csrf, another.csrf, "one CSRF token per session");

    for path in [
        "/console/dead-letters/discard",
        "/console/dead-letters/requeue",
    ] {
        let forms: [(&str, Vec<(&str, &str)>); 4] = [
            ("no csrf", vec![("ids", entry.as_str())]),
            ("an empty csrf", vec![("csrf", ""), ("ids", entry.as_str())]),
            (
                "a wrong csrf",
                vec![("csrf", "not-the-token"), ("ids", entry.as_str())],
            ),
            (
                "another session's csrf",
                vec![("csrf", another.csrf.as_str()), ("ids", entry.as_str())],
            ),
        ];
        for (what, fields) in forms {
            let response = console.post(path, &session.browser, &fields).await;
            let what = format!("POST {path} with {what}");
            assert_eq!(response.status(), 403, "{what}");
            assert_security_headers(&response, &what);
            let body = response.text().await.expect("a page");
            assert!(body.contains("CSRF"), "{what}: {body}");
        }
    }
    let no_csrf = console
        .post("/console/sign-out", &session.browser, &[])
        .await;
    assert_eq!(no_csrf.status(), 403, "sign-out without csrf");

    assert_eq!(
        console.entries().await,
        [entry.parse::<i64>().expect("an id")]
    );
    assert_eq!(console.api.queue_len().await, 1, "only the job's own task");
    let still = console.get("/console/", &session.browser).await;
    assert_eq!(still.status(), 200, "the session still works");
}

#[tokio::test]
async fn a_post_from_a_foreign_origin_is_refused_and_one_from_this_origin_is_not() {
    let console = dev_console().await;
    let entry = console.failed_entry().await.to_string();
    let session = console.session(ALL_SCOPES).await;
    let fields = [("csrf", session.csrf.as_str()), ("ids", entry.as_str())];
    let path = "/console/dead-letters/discard";

    for origin in [
        "https://evil.example",
        "http://127.0.0.1",
        "http://localhost:1",
        "null",
    ] {
        let response = console
            .post_from(path, &session.browser, &fields, &[("origin", origin)])
            .await;
        assert_eq!(response.status(), 403, "Origin: {origin}");
        assert_security_headers(&response, &format!("Origin: {origin}"));
    }
    assert_eq!(console.entries().await.len(), 1, "nothing was discarded");

    let same = console
        .post_from(
            path,
            &session.browser,
            &fields,
            &[("origin", &console.api.address)],
        )
        .await;
    assert_eq!(same.status(), 303, "Origin: {}", console.api.address);
    assert!(
        location(&same).starts_with("/console/dead-letters"),
        "{}",
        location(&same)
    );
    assert!(console.entries().await.is_empty(), "discarded");
}

/// Under the console's `Referrer-Policy: no-referrer` a browser's own
/// form POST carries `Origin: null` with `Sec-Fetch-Site: same-origin`
/// (Chromium sends exactly that; see worker/tests/e2e/console.rs): it must
/// pass, sign-in and actions alike, while `Sec-Fetch-Site: cross-site` or
/// `same-site` is refused.
#[tokio::test]
async fn a_browsers_same_origin_post_under_no_referrer_is_accepted() {
    let console = dev_console().await;
    let entry = console.failed_entry().await.to_string();
    let browser_headers = [("origin", "null"), ("sec-fetch-site", "same-origin")];

    let mut browser = Browser::default();
    let page = console.get(SIGN_IN, &browser).await;
    browser.take(&page);
    let csrf = csrf_of(&page.text().await.expect("the sign-in page"));
    let token = console.api.token(ALL_SCOPES);
    let fields = [("token", token.as_str()), ("csrf", csrf.as_str())];
    let signed_in = console
        .post_from(SIGN_IN, &browser, &fields, &browser_headers)
        .await;
    assert_eq!(
        signed_in.status(),
        303,
        "POST {SIGN_IN} with Origin: null and Sec-Fetch-Site: same-origin"
    );
    browser.take(&signed_in);
    let overview = console.get("/console/", &browser).await;
    assert_eq!(overview.status(), 200);
    let csrf = csrf_of(&overview.text().await.expect("the overview"));
    let fields = [("csrf", csrf.as_str()), ("ids", entry.as_str())];
    let path = "/console/dead-letters/discard";

    for site in ["cross-site", "same-site"] {
        let response = console
            .post_from(path, &browser, &fields, &[("sec-fetch-site", site)])
            .await;
        assert_eq!(response.status(), 403, "Sec-Fetch-Site: {site}");
    }
    assert_eq!(console.entries().await.len(), 1, "nothing was discarded");
    let discarded = console
        .post_from(path, &browser, &fields, &browser_headers)
        .await;
    assert_eq!(
        discarded.status(),
        303,
        "POST {path} with Origin: null and Sec-Fetch-Site: same-origin"
    );
    assert!(console.entries().await.is_empty(), "discarded");
}

#[tokio::test]
async fn a_read_only_sessions_forged_requeue_or_discard_is_refused_and_changes_nothing() {
    let console = dev_console().await;
    let entry = console.failed_entry().await.to_string();
    let reader = console.session("failed:read jobs:read").await;

    let page = console.get("/console/dead-letters", &reader.browser).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("the dead letters");
    assert!(
        html.contains(&format!(r#"data-id="{entry}""#)),
        "the entry is listed:\n{html}"
    );
    for absent in [
        "dead-letter-actions",
        r#"name="ids""#,
        "requeue-one",
        "discard-one",
        "requeue-selected",
        "discard-selected",
    ] {
        assert!(
            !html.contains(absent),
            "a read-only page shows {absent}:\n{html}"
        );
    }
    // `class="action"` or `class="... action ..."`.
    assert!(
        tags(&html, "button")
            .iter()
            .chain(tags(&html, "input").iter())
            .chain(tags(&html, "a").iter())
            .chain(tags(&html, "form").iter())
            .filter_map(|tag| attribute(tag, "class"))
            .all(|class| !class.split_whitespace().any(|c| c == "action")),
        "an element with class action on a read-only page"
    );

    for path in [
        "/console/dead-letters/requeue",
        "/console/dead-letters/discard",
    ] {
        for fields in [
            vec![("csrf", reader.csrf.as_str()), ("ids", entry.as_str())],
            vec![("csrf", reader.csrf.as_str()), ("one", entry.as_str())],
        ] {
            let response = console.post(path, &reader.browser, &fields).await;
            assert_eq!(response.status(), 403, "POST {path} {fields:?}");
        }
    }
    assert_eq!(
        console.entries().await,
        [entry.parse::<i64>().expect("an id")]
    );
    assert_eq!(console.api.queue_len().await, 1, "only the job's own task");
}

#[tokio::test]
async fn after_sign_out_the_old_cookie_is_useless() {
    let console = dev_console().await;
    let session = console.session(ALL_SCOPES).await;
    let copied = session.browser.clone();

    let out = console
        .post(
            "/console/sign-out",
            &session.browser,
            &[("csrf", &session.csrf)],
        )
        .await;
    assert_eq!(out.status(), 303);
    assert_eq!(location(&out), SIGN_IN);
    let cleared = set_cookies(&out);
    assert!(
        cleared
            .iter()
            .any(|c| c.name == console.cookie && c.clears()),
        "sign-out clears the cookie: {cleared:?}"
    );

    assert_to_sign_in(
        &console.get("/console/", &copied).await,
        "GET /console/ with the copied cookie",
    );
    assert_to_sign_in(
        &console.get("/console/dead-letters", &copied).await,
        "GET /console/dead-letters with the copied cookie",
    );
    let replayed = console
        .post(
            "/console/dead-letters/discard",
            &copied,
            &[("csrf", &session.csrf), ("ids", "1")],
        )
        .await;
    assert_to_sign_in(&replayed, "POST with the copied cookie and its csrf");
}

#[tokio::test]
async fn a_tenant_session_does_not_see_another_tenants_job() {
    let console = dev_console().await;
    let api = &console.api;
    let body = json!({"to": "ada@example.com", "subject": "Hi", "text": "hello",
                      "idempotency_key": "console:acme"});
    let job = console
        .job(&api.tenant_token("acme", "jobs:write"), &body)
        .await;
    let acme = console
        .sign_in(&api.tenant_token("acme", "jobs:read"))
        .await;
    let globex = console
        .sign_in(&api.tenant_token("globex", "jobs:read"))
        .await;
    let page = format!("/console/jobs/{job}");

    let own = console.get(&page, &acme.browser).await;
    assert_eq!(own.status(), 200, "its own tenant's job");
    assert!(own.text().await.expect("a page").contains("console:acme"));

    let foreign = console.get(&page, &globex.browser).await;
    assert_eq!(foreign.status(), 404, "another tenant's job");
    assert_security_headers(&foreign, "another tenant's job");
    let html = foreign.text().await.expect("a page");
    assert!(!html.contains("console:acme"), "{html}");
    assert!(!html.contains("ada@example.com"), "{html}");

    for q in ["console%3Aacme", job.as_str(), "ada%40example.com"] {
        let own = console
            .get(&format!("/console/jobs?q={q}"), &acme.browser)
            .await;
        let html = own.text().await.expect("a page");
        assert!(
            html.contains(&format!(r#"href="/console/jobs/{job}""#)),
            "q={q} finds the tenant's own job:\n{html}"
        );
        let search = console
            .get(&format!("/console/jobs?q={q}"), &globex.browser)
            .await;
        assert_eq!(search.status(), 200);
        let html = search.text().await.expect("a page");
        // The search box keeps `q`, so look for the job's link.
        assert!(
            !html.contains(&format!("/console/jobs/{job}")),
            "q={q} finds another tenant's job:\n{html}"
        );
        assert!(html.contains(r#"id="no-jobs""#), "q={q}:\n{html}");
    }
}
