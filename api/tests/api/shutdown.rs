use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sendonce_testkit::{TestDatabase, eventually, unique_prefix};

use crate::helpers::SECRET;

/// Starts the API binary with `extra` environment, and returns it with the
/// port it logged.
pub async fn spawn_api(db: &TestDatabase, extra: &[(&str, &str)]) -> (std::process::Child, u64) {
    let (api, port, _) = spawn_api_logged(db, extra).await;
    (api, port)
}

/// Like [`spawn_api`], also returning every line the API logs, as it logs
/// them.
pub async fn spawn_api_logged(
    db: &TestDatabase,
    extra: &[(&str, &str)],
) -> (std::process::Child, u64, Arc<Mutex<Vec<String>>>) {
    let redis_url =
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut command = Command::new(env!("CARGO_BIN_EXE_sendonce-api"));
    command
        .env("API_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", &redis_url)
        .env("REDIS_KEY_PREFIX", unique_prefix())
        .env("JWT_SECRET", SECRET)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped());
    for (name, value) in extra {
        command.env(name, value);
    }
    let mut api = command.spawn().expect("start the API binary");
    let stdout = api.stdout.take().expect("stdout");
    // Read every line to the end (the shutdown logs too, which would fail
    // on a closed pipe), handing over the first port logged.
    let (found, port) = std::sync::mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let logged_lines = Arc::clone(&lines);
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let logged = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|l| l["port"].as_u64());
            if let Some(port) = logged
                && let Some(found) = found.take()
            {
                let _ = found.send(port);
            }
            logged_lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line);
        }
    });
    let port = tokio::task::spawn_blocking(move || port.recv())
        .await
        .expect("join")
        .expect("the API logs its port");
    (api, port, lines)
}

fn sigterm(api: &std::process::Child) {
    signal(api, "TERM");
}

/// Sends `api` the signal `name` (`TERM`, `HUP`).
pub fn signal(api: &std::process::Child, name: &str) {
    let kill = Command::new("kill")
        .args([&format!("-{name}"), &api.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
}

async fn exit_status(api: std::process::Child) -> std::process::ExitStatus {
    let mut api = api;
    tokio::task::spawn_blocking(move || api.wait())
        .await
        .expect("join")
        .expect("wait")
}

#[tokio::test]
async fn sigterm_stops_the_api_cleanly_with_exit_zero() {
    let db = TestDatabase::create().await;
    let (api, port) = spawn_api(&db, &[]).await;

    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);

    sigterm(&api);
    let status = exit_status(api).await;
    assert!(status.success(), "the API exited with {status}");
}

/// With `SHUTDOWN_DELAY_MS`, SIGTERM first turns `/readyz` to 503 while
/// the API still answers, so a load balancer stops sending before the
/// listener closes; then it exits 0.
#[tokio::test]
async fn with_a_shutdown_delay_readiness_turns_before_the_listener_closes() {
    let db = TestDatabase::create().await;
    let (api, port) = spawn_api(&db, &[("SHUTDOWN_DELAY_MS", "5000")]).await;
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let ready = reqwest::get(&readyz).await.expect("GET /readyz");
    assert_eq!(ready.status(), 200, "ready before SIGTERM");

    sigterm(&api);
    let turned = eventually("/readyz turns 503", Duration::from_secs(4), || {
        let readyz = readyz.clone();
        async move {
            let answer = reqwest::get(&readyz).await.ok()?;
            (answer.status() == 503).then_some(answer)
        }
    })
    .await;
    let problem: serde_json::Value = turned.json().await.expect("a problem document");
    assert_eq!(problem["detail"], "not ready: shutting down", "{problem}");
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .expect("still served while draining");
    assert_eq!(health.status(), 200);

    let status = exit_status(api).await;
    assert!(status.success(), "the API exited with {status}");
}
