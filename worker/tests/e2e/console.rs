//! The operator console (issue 20) in a real headless Chromium, driven
//! through chromedriver (WebDriver) against the real API, workers, Redis,
//! Postgres and SMTP sink. Each scenario has its own system and browser:
//! - an operator signs in with a token and sees the overview;
//! - finds a job by its key and opens its page, which shows its state;
//! - opens the dead letters, `uncertain` entries first;
//! - requeues an `uncertain` entry through the confirmation (a wrong phrase
//!   is refused; the right phrase and a reason requeue it) and the job is
//!   then `sent`, once, to the SMTP sink;
//! - a read-only token sees no action, and a POST forged with its session's
//!   cookie and CSRF token is refused (403) and changes nothing;
//! - a form whose CSRF field was removed in the page is refused;
//! - sign-out ends the session, even for a cookie put back in the browser.
//!
//! The tests save screenshots of the overview (desktop and phone widths),
//! a job and the dead letters under `target/console-screenshots/`, and also
//! under `docs/console/` with `UPDATE_CONSOLE_SCREENSHOTS=1`.
//!
//! They need Debian's `chromium` and `chromium-driver` (scripts/test.sh
//! installs them) and fail, not skip, without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use sendonce_api::auth::JwtKeys;
use sendonce_api::config::ApiConfig;
use sendonce_testkit::{Fault, eventually};
use serde_json::{Value, json};

use crate::helpers::{DEADLINE, Options, SECRET, TestSystem, email, spawn_system};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The session cookie's name in development (plain http).
const SESSION_COOKIE: &str = "sendonce_console";

/// A system whose API serves the console over plain http.
async fn console_system() -> TestSystem {
    spawn_system(Options {
        api_args: ["--console-enabled", "true", "--app-env", "development"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await
}

/// A token of the tenant `default` with `scope`, signed as the system's.
fn token(scope: &str) -> String {
    let config = ApiConfig::parse_from(["sendonce-api", "--jwt-secret", SECRET]);
    JwtKeys::from_config(&config)
        .expect("JWT settings")
        .mint("console-tests", scope, Duration::from_secs(3600))
        .expect("mint a token")
}

/// An operator's token: every read and write scope, every tenant (the
/// header shows a section's link only to a token that may read it).
fn operator() -> String {
    token(
        "jobs:read jobs:write failed:read failed:write suppressions:read suppressions:write \
         webhooks:read webhooks:write tenants:all",
    )
}

/// A chromedriver process of this test, in a process group of its own so
/// that the browsers it starts go with it.
struct Chromedriver {
    child: Child,
    url: String,
    /// The folder of the browser's profile and temporary files, removed
    /// with the process group.
    root: PathBuf,
}

impl Chromedriver {
    async fn start() -> Self {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the console's browser tests need Debian's `chromium` and \
                 `chromium-driver` (apt-get install {package}; scripts/test.sh installs them)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        // Chromium's profile and every temporary file of chromedriver and
        // Chromium go in one folder, removed on drop even after a panic.
        let root = std::env::temp_dir().join(format!(
            "sendonce-console-chromium-{}-{port}",
            std::process::id()
        ));
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).expect("a folder for the browser");
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start chromedriver");
        let mut driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            root,
        };
        let status = format!("{}/status", driver.url);
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(exit)) = driver.child.try_wait() {
                panic!("chromedriver exited at start: {exit}");
            }
            let ready = match http.get(&status).send().await {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|s| s["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return driver;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver on port {port} not ready after {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A headless Chromium session on the console of `api`.
struct Browser {
    client: Client,
    api: String,
    _driver: Chromedriver,
}

impl Browser {
    async fn open(system: &TestSystem) -> Self {
        let driver = Chromedriver::start().await;
        // rustls has two providers compiled in; pick one as the API does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    format!("--user-data-dir={}", driver.root.join("profile").display()),
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                ],
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("a WebDriver client")
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .expect("a Chromium session through chromedriver");
        Self {
            client,
            api: system.api.clone(),
            _driver: driver,
        }
    }

    /// Ends the browser session; chromedriver goes when this is dropped.
    async fn close(self) {
        self.client
            .clone()
            .close()
            .await
            .expect("close the session");
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.api))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path the browser shows.
    async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the current URL")
            .path()
            .to_owned()
    }

    /// Waits for an element matching `css` (a page change is done when
    /// an element only the new page has is there).
    async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let url = self.client.current_url().await.map(|u| u.to_string());
                let source = self.client.source().await.unwrap_or_default();
                panic!("no {css} after {DEADLINE:?} ({e}) at {url:?}:\n{source}");
            }
        }
    }

    async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => {
                let source = self.client.source().await.unwrap_or_default();
                panic!("no {css} ({e}):\n{source}");
            }
        }
    }

    async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
    }

    async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .expect("an element's text")
            .trim()
            .to_owned()
    }

    async fn source(&self) -> String {
        self.client.source().await.expect("the page source")
    }

    /// Signs in on the sign-in page with `token`; waits for the overview.
    async fn sign_in(&self, token: &str) {
        self.goto("/console/").await;
        self.wait_for("form#sign-in").await;
        assert_eq!(self.path().await, "/console/sign-in");
        self.find("textarea#token")
            .await
            .send_keys(token)
            .await
            .expect("type the token");
        self.find("button#sign-in-submit")
            .await
            .click()
            .await
            .expect("submit");
        // The overview, or a page saying why not (the sign-in page itself
        // has no error until a refusal).
        self.wait_for("section#overview, p.error").await;
        let refused = self.find_all("p.error").await;
        if let Some(error) = refused.first() {
            let title = self.client.title().await.unwrap_or_default();
            let why = error.text().await.unwrap_or_default();
            panic!("signing in was refused: {title}: {why}");
        }
        assert_eq!(self.path().await, "/console/");
    }

    /// The session cookie and the page's CSRF token, as a script in the
    /// page cannot read them (the cookie is HttpOnly) but WebDriver can.
    async fn credentials(&self) -> (String, String) {
        let cookie = self
            .client
            .get_named_cookie(SESSION_COOKIE)
            .await
            .expect("the session cookie");
        assert_eq!(cookie.http_only(), Some(true), "{cookie:?}");
        let csrf = self
            .find(r#"form#sign-out input[name="csrf"]"#)
            .await
            .attr("value")
            .await
            .expect("the csrf input")
            .expect("a csrf value");
        (cookie.value().to_owned(), csrf)
    }

    /// Reloads job page `job_id` until its state is `want`.
    async fn wait_for_job_state(&self, job_id: &str, want: &str) {
        let path = format!("/console/jobs/{job_id}");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            self.goto(&path).await;
            let state = self.wait_for("#job-state").await.text().await;
            let state = state.expect("the state").trim().to_owned();
            if state == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} shows {state:?}, not {want:?}, after {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot of the window as `name`.png.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        save_screenshot(name, &png);
    }
}

/// Writes `png` to `target/console-screenshots/`, and to `docs/console/`
/// when `UPDATE_CONSOLE_SCREENSHOTS=1`.
fn save_screenshot(name: &str, png: &[u8]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = vec![root.join("target").join("console-screenshots")];
    if std::env::var("UPDATE_CONSOLE_SCREENSHOTS").as_deref() == Ok("1") {
        dirs.push(root.join("docs").join("console"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).expect("a screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Posts `body`; answers the job's id.
async fn job_id(system: &TestSystem, body: &Value) -> String {
    system.post_ok(body).await["job_id"]
        .as_str()
        .expect("a job id")
        .to_owned()
}

/// A job whose connection is cut after its data went out: `uncertain`,
/// dead-lettered. Answers its job id and its entry's id; the SMTP sink is
/// healthy again afterwards.
async fn uncertain_job(system: &TestSystem, key: &str) -> (String, i64) {
    system.smtp.set_default_fault(Some(Fault::DropAfterData));
    let job = job_id(system, &email("grace@example.com", Some(key))).await;
    system.wait_for_status(&job, "uncertain").await;
    system.smtp.set_default_fault(None);
    let entry = entry_of(system, &job).await;
    (job, entry)
}

/// A job the server rejects: `failed`, dead-lettered. Answers its job id
/// and its entry's id.
async fn failed_job(system: &TestSystem, key: &str) -> (String, i64) {
    let rcpt = format!("nobody+{}@example.com", Fault::RejectRcpt);
    let job = job_id(system, &email(&rcpt, Some(key))).await;
    system.wait_for_status(&job, "failed").await;
    let entry = entry_of(system, &job).await;
    (job, entry)
}

/// The id of `job`'s dead-letter entry, once the API lists it.
async fn entry_of(system: &TestSystem, job: &str) -> i64 {
    eventually(&format!("a dead letter of {job}"), DEADLINE, || async {
        system.failed_jobs("limit=500").await["items"]
            .as_array()?
            .iter()
            .find(|item| item["job_id"] == job)
            .and_then(|item| item["id"].as_i64())
    })
    .await
}

/// The ids of the dead-letter entries the API lists.
async fn entries(system: &TestSystem) -> Vec<i64> {
    system.failed_jobs("limit=500").await["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["id"].as_i64())
        .collect()
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

#[tokio::test]
async fn an_operator_signs_in_with_a_token_and_sees_the_overview() {
    let system = console_system().await;
    let _worker = system.spawn_worker().await;
    for n in 0..3 {
        let key = format!("news:{n}");
        let job = job_id(
            &system,
            &email(&format!("reader{n}@example.com"), Some(key.as_str())),
        )
        .await;
        system.wait_for_status(&job, "sent").await;
    }
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut scheduled = email("later@example.com", Some("reminder:1"));
    scheduled["send_at"] = json!(later);
    system.post_ok(&scheduled).await;
    let browser = Browser::open(&system).await;

    browser.sign_in(&operator()).await;

    for id in [
        "#depth-ready",
        "#depth-scheduled",
        "#depth-processing",
        "#sent-last-hour",
        "#failed-last-hour",
        "#uncertain-last-hour",
    ] {
        let text = browser.text(id).await;
        assert!(text.parse::<u64>().is_ok(), "{id} shows {text:?}");
    }
    assert_eq!(browser.text("#sent-last-hour").await, "3");
    assert!(!browser.text("#oldest-ready").await.is_empty());
    for nav in [
        "a#nav-overview",
        "a#nav-jobs",
        "a#nav-dead-letters",
        "a#nav-scheduled",
        "a#nav-suppressions",
        "a#nav-webhooks",
    ] {
        browser.find(nav).await;
    }
    // The worker shows once it has beaten its heart, and the depths are
    // those the housekeeping worker last published (every few seconds).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while browser.find_all("table#workers tr.worker").await.is_empty()
        || browser.text("#depth-scheduled").await != "1"
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live worker or no scheduled job on the overview after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.goto("/console/").await;
        browser.wait_for("section#overview").await;
    }
    browser.screenshot("overview").await;

    browser
        .client
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    browser.goto("/console/").await;
    browser.wait_for("section#overview").await;
    browser.screenshot("overview-phone").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_finds_a_job_by_its_key_and_opens_its_page() {
    let system = console_system().await;
    let _worker = system.spawn_worker().await;
    let job = job_id(&system, &email("ada@example.com", Some("order:1042"))).await;
    job_id(&system, &email("bob@example.com", Some("order:1043"))).await;
    system.wait_for_status(&job, "sent").await;
    let browser = Browser::open(&system).await;
    browser.sign_in(&operator()).await;

    browser
        .find("a#nav-jobs")
        .await
        .click()
        .await
        .expect("Jobs");
    let q = browser.wait_for("form#job-search input#q").await;
    q.send_keys("order:1042\u{E007}")
        .await
        .expect("type the key and Enter");
    eventually("the search's answer", DEADLINE, || async {
        let url = browser.client.current_url().await.ok()?;
        url.query()?.contains("q=").then_some(())
    })
    .await;
    browser.wait_for("table#job-results").await;
    let rows = browser.find_all("table#job-results tr.job").await;
    assert_eq!(rows.len(), 1, "one job has the key");
    browser
        .find("table#job-results tr.job a.job-link")
        .await
        .click()
        .await
        .expect("open the job");

    browser.wait_for("#job-state").await;
    assert_eq!(browser.path().await, format!("/console/jobs/{job}"));
    assert!(
        browser.text("h1").await.contains("order:1042"),
        "the heading holds the key"
    );
    assert_eq!(browser.text("#job-state").await, "sent");
    assert!(!browser.text("#message-id").await.is_empty());
    assert!(
        !browser.find_all("table#history tr").await.is_empty(),
        "the history lists the job's state changes"
    );
    browser.find("section#duplicates").await;
    browser.screenshot("job").await;

    // An unknown key finds nothing.
    browser.goto("/console/jobs?q=order%3A9999").await;
    browser.wait_for("p#no-jobs").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_opens_the_dead_letters_with_uncertain_entries_first() {
    let system = console_system().await;
    let _worker = system.spawn_worker().await;
    let (failed, failed_entry) = failed_job(&system, "invoice:7").await;
    let (uncertain, uncertain_entry) = uncertain_job(&system, "receipt:8").await;
    let browser = Browser::open(&system).await;
    browser.sign_in(&operator()).await;

    browser
        .find("a#nav-dead-letters")
        .await
        .click()
        .await
        .expect("Dead letters");
    browser.wait_for("table#uncertain").await;
    assert_eq!(browser.path().await, "/console/dead-letters");

    let row = browser
        .find(&format!(
            r#"table#uncertain tr.dead-letter[data-id="{uncertain_entry}"]"#
        ))
        .await;
    assert_eq!(
        row.attr("data-job-id").await.ok().flatten(),
        Some(uncertain)
    );
    let row = browser
        .find(&format!(
            r#"table#failed tr.dead-letter[data-id="{failed_entry}"]"#
        ))
        .await;
    assert_eq!(row.attr("data-job-id").await.ok().flatten(), Some(failed));
    let order = browser
        .client
        .execute(
            "const u = document.querySelector('table#uncertain'); \
             const f = document.querySelector('table#failed'); \
             return !!(u.compareDocumentPosition(f) & Node.DOCUMENT_POSITION_FOLLOWING);",
            vec![],
        )
        .await
        .expect("compare the tables' order");
    assert_eq!(order, json!(true), "the uncertain table comes first");
    browser.screenshot("dead-letters").await;
    browser.close().await;
}

#[tokio::test]
async fn an_uncertain_entry_requeued_through_the_confirmation_is_sent() {
    let system = console_system().await;
    let _worker = system.spawn_worker().await;
    let (job, entry) = uncertain_job(&system, "password-reset:31").await;
    let browser = Browser::open(&system).await;
    browser.sign_in(&operator()).await;
    browser.goto("/console/dead-letters").await;
    browser.wait_for("form#dead-letter-actions").await;

    browser
        .find(&format!(
            r#"button.requeue-one[name="one"][value="{entry}"]"#
        ))
        .await
        .click()
        .await
        .expect("Requeue");
    browser.wait_for("form#confirm-requeue").await;
    assert!(
        !browser.text("p#risk").await.is_empty(),
        "the risk is stated"
    );
    let phrase = browser.text("code#confirm-phrase").await;
    assert!(!phrase.is_empty());

    // A wrong phrase: the confirmation again, with an error, and nothing
    // requeued.
    browser
        .find("input#confirm")
        .await
        .send_keys("not the phrase")
        .await
        .expect("type");
    browser
        .find("textarea#reason")
        .await
        .send_keys("the relay confirmed it never delivered")
        .await
        .expect("type");
    browser
        .find("button#confirm-submit")
        .await
        .click()
        .await
        .expect("confirm");
    browser.wait_for("p.error").await;
    browser.find("form#confirm-requeue").await;
    assert_eq!(system.get_job(&job).await.1["status"], "uncertain");

    let confirm = browser.find("input#confirm").await;
    confirm.clear().await.expect("clear");
    confirm.send_keys(&phrase).await.expect("type the phrase");
    let reason = browser.find("textarea#reason").await;
    reason.clear().await.expect("clear");
    reason
        .send_keys("INC-31: the relay confirmed it never delivered")
        .await
        .expect("type the reason");
    browser
        .find("button#confirm-submit")
        .await
        .click()
        .await
        .expect("confirm");
    browser.wait_for("p#flash").await;
    assert_eq!(browser.path().await, "/console/dead-letters");

    browser.wait_for_job_state(&job, "sent").await;
    let messages = system.smtp.wait_for_messages(1, DEADLINE).await;
    assert_eq!(messages.len(), 1, "sent once");
    assert_eq!(system.smtp.cut_messages().len(), 1, "the cut attempt");
    assert_eq!(
        messages[0].header("Message-ID"),
        system.smtp.cut_messages()[0].header("Message-ID"),
        "the resend carries the cut attempt's Message-ID"
    );
    assert!(
        !entries(&system).await.contains(&entry),
        "the entry left the dead letters"
    );
    browser.close().await;
}

#[tokio::test]
async fn a_read_only_token_sees_no_action_and_its_forged_post_is_refused() {
    let system = console_system().await;
    let _worker = system.spawn_worker().await;
    let (job, entry) = uncertain_job(&system, "statement:5").await;
    let (_, failed_entry) = failed_job(&system, "statement:6").await;
    let browser = Browser::open(&system).await;
    browser.sign_in(&token("failed:read jobs:read")).await;

    for path in [
        "/console/".to_owned(),
        "/console/dead-letters".to_owned(),
        format!("/console/jobs/{job}"),
    ] {
        browser.goto(&path).await;
        browser.wait_for("a#nav-overview").await;
        assert!(
            browser.find_all(".action").await.is_empty(),
            "{path} shows an action to a read-only session"
        );
    }
    browser.goto("/console/dead-letters").await;
    browser
        .wait_for(&format!(r#"tr.dead-letter[data-id="{entry}"]"#))
        .await;
    for absent in [
        "form#dead-letter-actions",
        "input[name=ids]",
        "button.requeue-one",
        "button.discard-one",
        "button#requeue-selected",
        "button#discard-selected",
    ] {
        assert!(
            browser.find_all(absent).await.is_empty(),
            "a read-only session sees {absent}"
        );
    }

    // What a forged form would send: this session's cookie and CSRF token.
    let (cookie, csrf) = browser.credentials().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let (uncertain_id, failed_id) = (entry.to_string(), failed_entry.to_string());
    for (path, fields) in [
        (
            "/console/dead-letters/requeue",
            vec![("csrf", csrf.as_str()), ("one", uncertain_id.as_str())],
        ),
        (
            "/console/dead-letters/requeue",
            vec![("csrf", csrf.as_str()), ("ids", failed_id.as_str())],
        ),
        (
            "/console/dead-letters/discard",
            vec![
                ("csrf", csrf.as_str()),
                ("ids", uncertain_id.as_str()),
                ("ids", failed_id.as_str()),
            ],
        ),
    ] {
        let response = http
            .post(format!("{}{path}", system.api))
            .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&fields))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 403, "POST {path} {fields:?}");
    }
    let mut left = entries(&system).await;
    left.sort_unstable();
    let mut want = vec![entry, failed_entry];
    want.sort_unstable();
    assert_eq!(left, want, "both entries are still there");
    assert_eq!(system.get_job(&job).await.1["status"], "uncertain");
    assert!(system.smtp.messages().is_empty(), "nothing was sent");
    browser.close().await;
}

#[tokio::test]
async fn a_form_submitted_without_its_csrf_field_is_refused() {
    let system = console_system().await;
    let _worker = system.spawn_worker().await;
    let (_, entry) = failed_job(&system, "digest:2").await;
    let browser = Browser::open(&system).await;
    browser.sign_in(&operator()).await;
    browser.goto("/console/dead-letters").await;
    browser.wait_for("form#dead-letter-actions").await;

    let removed = browser
        .client
        .execute(
            "const inputs = document.querySelectorAll('input[name=\"csrf\"]'); \
             inputs.forEach(input => input.remove()); \
             return inputs.length;",
            vec![],
        )
        .await
        .expect("remove the csrf inputs");
    assert!(removed.as_u64() >= Some(1), "removed {removed}");
    browser
        .find(&format!(r#"button.discard-one[value="{entry}"]"#))
        .await
        .click()
        .await
        .expect("Discard");

    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !browser.source().await.contains("CSRF") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CSRF refusal after {DEADLINE:?}:\n{}",
            browser.source().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        browser.find_all("p#flash").await.is_empty(),
        "no success flash"
    );
    assert_eq!(entries(&system).await, [entry], "nothing was discarded");
    browser.close().await;
}

#[tokio::test]
async fn sign_out_ends_the_session() {
    let system = console_system().await;
    let browser = Browser::open(&system).await;
    browser.sign_in(&operator()).await;
    let kept = browser
        .client
        .get_named_cookie(SESSION_COOKIE)
        .await
        .expect("the session cookie");

    browser
        .find("form#sign-out button#sign-out-submit")
        .await
        .click()
        .await
        .expect("Sign out");
    browser.wait_for("form#sign-in").await;
    assert_eq!(browser.path().await, "/console/sign-in");

    browser.goto("/console/").await;
    browser.wait_for("form#sign-in").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    assert!(browser.find_all("section#overview").await.is_empty());

    // The old cookie put back: the server deleted the session.
    browser
        .client
        .add_cookie(kept)
        .await
        .expect("put the old cookie back");
    browser.goto("/console/dead-letters").await;
    browser.wait_for("form#sign-in").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    browser.close().await;
}
