//! Several SMTP relays in `SMTP_URL`: failover past a relay that refuses
//! connections, spreading over live relays, and relays over their limits
//! (`421`, `451 4.7.x`, `454`), whose refusals cost a job no attempt.

use std::collections::BTreeSet;

use sendonce_testkit::{Fault, SmtpServer, eventually, sample};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::helpers::{DEADLINE, Options, TestSystem, email, spawn_system, start_worker_process};

/// `smtp://` on a loopback port nothing listens on: connecting to it is
/// refused.
async fn refusing_relay() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("smtp://{addr}")
}

/// `host:port` of an `smtp://` URL, as the relay metrics label it.
fn relay_label(url: &str) -> &str {
    url.strip_prefix("smtp://").expect("an smtp:// URL")
}

/// Posts `n` jobs to `to`-derived recipients and waits until each is
/// `sent`; returns the jobs as `GET /jobs` last showed them.
async fn post_and_wait_sent(system: &TestSystem, n: usize, key: &str) -> Vec<Value> {
    let mut ids = Vec::new();
    for i in 0..n {
        let answer = system
            .post_ok(&email(
                &format!("user{i}@example.com"),
                Some(&format!("{key}:{i}")),
            ))
            .await;
        ids.push(answer["job_id"].as_str().expect("job id").to_owned());
    }
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(system.wait_for_status(id, "sent").await);
    }
    jobs
}

fn message_ids(servers: &[&SmtpServer]) -> Vec<String> {
    servers
        .iter()
        .flat_map(|s| s.messages())
        .map(|m| m.header("Message-ID").expect("a Message-ID"))
        .collect()
}

#[tokio::test]
async fn jobs_fail_over_within_their_attempt_past_a_relay_that_refuses_connections() {
    let system = spawn_system(Options::default()).await;
    let refusing = refusing_relay().await;
    let relays = format!("{refusing},{}", system.smtp.url());
    let worker =
        start_worker_process(&system, &["--smtp-url", &relays, "--max-attempts", "1"]).await;

    let jobs = post_and_wait_sent(&system, 10, "failover").await;

    for job in &jobs {
        assert_eq!(job["attempts"], 1, "sent at its first attempt: {job}");
    }
    let sent = message_ids(&[&system.smtp]);
    assert_eq!(sent.len(), 10);
    assert_eq!(
        sent.iter().collect::<BTreeSet<_>>().len(),
        10,
        "each key once"
    );
    let skipped = format!(
        r#"sendonce_smtp_relay_unavailable_total{{relay="{}",cause="unreachable"}}"#,
        relay_label(&refusing)
    );
    let took = format!(
        r#"sendonce_smtp_relay_sent_total{{relay="{}"}}"#,
        relay_label(&system.smtp.url())
    );
    let text = eventually("the relay counters", DEADLINE, || async {
        let text = worker.metrics().await;
        (sample(&text, &took) == Some(10.0)).then_some(text)
    })
    .await;
    assert!(
        sample(&text, &skipped).is_some_and(|n| n >= 1.0),
        "the refusing relay was counted unavailable:\n{text}"
    );
    let log = worker.stop().await;
    assert!(
        log.iter()
            .any(|line| line.contains("SMTP relay unavailable")
                && line.contains(relay_label(&refusing))),
        "the skip is logged with the relay's address"
    );
}

#[tokio::test]
async fn by_default_every_send_goes_to_the_first_relay_while_it_is_available() {
    let system = spawn_system(Options::default()).await;
    let spare = SmtpServer::start().await;
    let relays = format!("{},{}", system.smtp.url(), spare.url());
    let _worker = system.spawn_worker_with(&["--smtp-url", &relays]).await;

    post_and_wait_sent(&system, 6, "first").await;

    assert_eq!(system.smtp.messages().len(), 6);
    assert!(spare.messages().is_empty(), "the spare stays idle");
}

#[tokio::test]
async fn the_spread_policy_shares_the_sends_between_live_relays() {
    let system = spawn_system(Options::default()).await;
    let other = SmtpServer::start().await;
    let relays = format!("{},{}", system.smtp.url(), other.url());
    let _worker = system
        .spawn_worker_with(&["--smtp-url", &relays, "--smtp-relay-policy", "spread"])
        .await;

    post_and_wait_sent(&system, 10, "spread").await;

    let (first, second) = (system.smtp.messages().len(), other.messages().len());
    assert_eq!(first + second, 10);
    assert!(
        first >= 3 && second >= 3,
        "round-robin: {first} and {second}"
    );
    let sent = message_ids(&[&system.smtp, &other]);
    assert_eq!(
        sent.iter().collect::<BTreeSet<_>>().len(),
        10,
        "each key once"
    );
}

#[tokio::test]
async fn a_relay_over_its_limit_delays_a_job_without_using_its_attempts() {
    let system = spawn_system(Options::default()).await;
    let _worker = system
        .spawn_worker_with(&["--max-attempts", "1", "--smtp-relay-cooldown-ms", "200"])
        .await;
    let busy: Vec<String> = [421, 451, 454]
        .map(|code| format!("busy+{}@example.com", Fault::Busy(code, 2)))
        .into();
    // An ordinary 4xx (451 4.3.0) still counts: with one attempt allowed,
    // it is dead-lettered.
    let tempfail = format!("tempfail+{}@example.com", Fault::Flaky(1));

    let mut ids = Vec::new();
    for (i, rcpt) in busy.iter().enumerate() {
        let answer = system
            .post_ok(&email(rcpt, Some(&format!("busy:{i}"))))
            .await;
        ids.push(answer["job_id"].as_str().expect("job id").to_owned());
    }
    let counted = system.post_ok(&email(&tempfail, Some("tempfail"))).await;

    for (id, rcpt) in ids.iter().zip(&busy) {
        let job = system.wait_for_status(id, "sent").await;
        assert_eq!(
            job["attempts"], 1,
            "{rcpt}: two busy refusals not counted: {job}"
        );
        assert_eq!(system.smtp.attempts_for(rcpt), 3, "{rcpt}");
    }
    system
        .wait_for_status(counted["job_id"].as_str().expect("job id"), "failed")
        .await;
    assert_eq!(system.smtp.attempts_for(&tempfail), 1);
    assert_eq!(system.smtp.messages().len(), 3, "each busy job sent once");
}

#[tokio::test]
async fn a_relay_over_its_limit_hands_the_send_to_the_next_relay_in_the_same_attempt() {
    let system = spawn_system(Options::default()).await;
    let busy = SmtpServer::start().await;
    busy.set_default_fault(Some(Fault::Busy(421, usize::MAX)));
    let relays = format!("{},{}", busy.url(), system.smtp.url());
    let _worker = system
        .spawn_worker_with(&["--smtp-url", &relays, "--max-attempts", "1"])
        .await;

    let jobs = post_and_wait_sent(&system, 5, "handed").await;

    for job in &jobs {
        assert_eq!(job["attempts"], 1, "{job}");
    }
    assert!(busy.messages().is_empty());
    let tried: usize = (0..5)
        .map(|i| busy.attempts_for(&format!("user{i}@example.com")))
        .sum();
    assert!(tried >= 1, "the busy relay was tried first");
    assert_eq!(system.smtp.messages().len(), 5);
}
