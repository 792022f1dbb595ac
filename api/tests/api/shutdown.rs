use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use sendonce_testkit::{TestDatabase, unique_prefix};

use crate::helpers::SECRET;

#[tokio::test]
async fn sigterm_stops_the_api_cleanly_with_exit_zero() {
    let db = TestDatabase::create().await;
    let redis_url =
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut api = Command::new(env!("CARGO_BIN_EXE_sendonce-api"))
        .env("API_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", &redis_url)
        .env("REDIS_KEY_PREFIX", unique_prefix())
        .env("JWT_SECRET", SECRET)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the API binary");
    let stdout = api.stdout.take().expect("stdout");
    let port = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
            .find_map(|line| line["port"].as_u64())
    })
    .await
    .expect("join")
    .expect("the API logs its port");

    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);

    let kill = Command::new("kill")
        .args(["-TERM", &api.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || api.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "the API exited with {status}");
}
