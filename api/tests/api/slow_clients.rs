//! Clients that open connections and then send nothing, or a byte now and
//! then (slowloris), must not exhaust the API.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{SECRET, TestApi, spawn_api, spawn_api_with};

/// Longest any test here waits for the API.
const DEADLINE: Duration = Duration::from_secs(30);

/// A connection that sent the head of a `POST /addJob` announcing a body of
/// 4096 bytes, and one byte of it.
async fn stalled_post(api: &TestApi, token: &str) -> TcpStream {
    let addr = api.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /addJob HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    stream
}

/// The first line the API answers on `stream`, or "" if it closed without
/// one; panics after [`DEADLINE`].
async fn status_line(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the API neither answered nor closed a stalled request");
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_request_body_that_stalls_is_answered_408() {
    let api = spawn_api().await;
    let mut stream = stalled_post(&api, &api.token("jobs:write")).await;

    let status = status_line(&mut stream).await;

    assert!(status.starts_with("HTTP/1.1 408"), "answered {status:?}");
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn healthz_answers_while_more_connections_stall_than_the_api_accepts() {
    let api = spawn_api_with(&[
        "--jwt-secret",
        SECRET,
        "--max-connections",
        "16",
        "--body-timeout-ms",
        "500",
    ])
    .await;
    let token = api.token("jobs:write");
    let opened = tokio::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..48 {
        stalled.push(stalled_post(&api, &token).await);
    }

    let health = tokio::time::timeout(DEADLINE, api.call("GET", "/healthz", None))
        .await
        .expect("/healthz did not answer under the slowloris");

    assert_eq!(health.status(), 200);
    for stream in &mut stalled {
        let status = status_line(stream).await;
        assert!(
            status.is_empty() || status.starts_with("HTTP/1.1 408"),
            "a stalled request was answered {status:?}"
        );
    }
    // 16 at a time, each held for the body deadline: the last stall can
    // only have been read after two earlier rounds timed out.
    assert!(
        opened.elapsed() >= Duration::from_millis(2 * 500),
        "all 48 stalls were served at once: the cap did not hold"
    );
    let job = api
        .post_job(
            Some(&token),
            &json!({"to": "a@x.test", "subject": "s", "text": "t"}),
        )
        .await;
    assert_eq!(
        job.status(),
        202,
        "the API serves again once the stalls are gone"
    );
}
