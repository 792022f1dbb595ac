//! The system on the kinds of Redis teams run: TLS with a private CA and a
//! client certificate. Each test starts its own servers.

use sendonce_testkit::tls::TestCerts;
use sendonce_testkit::{RedisOptions, RedisServer, unique_prefix};

use crate::helpers::{DEADLINE, Options, email, spawn_system};

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sendonce-{what}-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn jobs_are_posted_and_delivered_once_over_tls() {
    let certs = TestCerts::generate(&tempdir("tls"));
    let tls_port = sendonce_testkit::redis::free_port();
    let _redis = RedisServer::start_with(RedisOptions::default(), |_| {
        sendonce_testkit::redis::tls_args(&certs, tls_port)
    })
    .await;
    let path = |p: &std::path::Path| p.display().to_string();
    let system = spawn_system(Options {
        redis_url: Some(format!("rediss://127.0.0.1:{tls_port}")),
        redis_args: vec![
            "--redis-ca-file".into(),
            path(&certs.ca),
            "--redis-client-cert-file".into(),
            path(&certs.client_cert),
            "--redis-client-key-file".into(),
            path(&certs.client_key),
        ],
        ..Options::default()
    })
    .await;
    let before = system
        .post_ok(&email("tls-a@example.com", Some("tls:before")))
        .await;
    let _worker = system.spawn_worker().await;
    let after = system
        .post_ok(&email("tls-b@example.com", Some("tls:after")))
        .await;

    for job in [&before, &after] {
        system
            .wait_for_status(job["job_id"].as_str().expect("job id"), "sent")
            .await;
    }
    system.smtp.wait_for_messages(2, DEADLINE).await;
    assert_eq!(system.smtp.messages().len(), 2);
}
