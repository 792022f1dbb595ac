//! The queue over TLS (`rediss://`), against a `redis-server` of the test's
//! own that speaks TLS with certificates the test generates.

use std::path::Path;

use secrecy::SecretString;
use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_testkit::tls::TestCerts;
use sendonce_testkit::{RedisOptions, RedisServer, unique_prefix};

/// A TLS server asking for client certificates, and its `rediss://` URL.
async fn tls_server(certs: &TestCerts) -> (RedisServer, String) {
    let tls_port = sendonce_testkit::redis::free_port();
    let server = RedisServer::start_with(RedisOptions::default(), |_| {
        sendonce_testkit::redis::tls_args(certs, tls_port)
    })
    .await;
    (server, format!("rediss://127.0.0.1:{tls_port}"))
}

fn queue_at(url: &str, tls: &RedisTls) -> Queue {
    let connector = queue::connect(&SecretString::from(url.to_owned()), tls).expect("a TLS client");
    Queue::new(connector, &unique_prefix())
}

fn files(ca: &Path, certs: &TestCerts) -> RedisTls {
    RedisTls {
        ca_file: Some(ca.to_owned()),
        client_cert_file: Some(certs.client_cert.clone()),
        client_key_file: Some(certs.client_key.clone()),
    }
}

/// The error and its causes on one line, as the binaries print them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[tokio::test]
async fn the_queue_works_over_tls_with_the_private_ca_and_a_client_certificate() {
    let dir = tempdir();
    let certs = TestCerts::generate(&dir);
    let (_server, url) = tls_server(&certs).await;
    let queue = queue_at(&url, &files(&certs.ca, &certs));

    queue.probe_write().await.expect("a keyed write over TLS");
    queue.push(&["task".to_owned()]).await.expect("push");
    assert_eq!(queue.depths().await.expect("depths").ready, 1);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_with_a_one_line_reason() {
    let dir = tempdir();
    let certs = TestCerts::generate(&dir);
    let (_server, url) = tls_server(&certs).await;
    let queue = queue_at(&url, &files(&certs.other_ca, &certs));

    let refused = queue.probe_write().await.expect_err("an unknown issuer");
    let reason = chain(&refused);

    assert!(
        reason.contains("certificate") || reason.contains("UnknownIssuer"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "{reason}");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sendonce-tls-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
