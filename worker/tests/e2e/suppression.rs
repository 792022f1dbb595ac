//! The suppression list: a recipient refused for good as no such mailbox
//! (`550 5.1.1` at RCPT) is suppressed for its tenant; a later job to it
//! ends `suppressed` without any SMTP conversation; a job to it and to
//! others goes to the others; lifting the entry lets the next job send.

use sendonce_testkit::smtp::Fault;
use serde_json::json;

use crate::helpers::{DEADLINE, Options, TestSystem, spawn_system};

const GONE: &str = "gone@example.com";

async fn post(system: &TestSystem, to: serde_json::Value, key: &str) -> String {
    let answer = system
        .post_ok(&json!({"to": to, "subject": "Hi", "text": "hello", "idempotency_key": key}))
        .await;
    answer["job_id"].as_str().expect("a job id").to_owned()
}

async fn suppressed_addresses(system: &TestSystem) -> Vec<(String, String)> {
    system
        .db
        .connect()
        .await
        .query(
            "SELECT address, reason FROM suppressions ORDER BY address",
            &[],
        )
        .await
        .expect("suppressions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_550_at_rcpt_suppresses_and_the_next_job_to_it_ends_suppressed_without_smtp() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;

    // The server knows no such mailbox.
    system.smtp.set_default_fault(Some(Fault::RejectRcpt));
    let first = post(&system, json!(GONE), "suppress:first").await;
    let failed = system.wait_for_status(&first, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("5.1.1"),
        "{failed}"
    );
    assert_eq!(system.smtp.attempts_for(GONE), 1);
    assert_eq!(
        suppressed_addresses(&system).await,
        [(GONE.to_owned(), "bounce".to_owned())]
    );

    // Even once the server would take it, the list keeps it from being tried.
    system.smtp.set_default_fault(None);
    let second = post(&system, json!("Gone <GONE@example.com>"), "suppress:second").await;
    let done = system.wait_for_status(&second, "suppressed").await;
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(done["refused_recipients"][0]["recipient"], GONE, "{done}");
    assert_eq!(system.smtp.attempts_for(GONE), 1, "no RCPT for it");
    assert!(system.smtp.messages().is_empty(), "no message at all");

    // With another recipient, the message goes to that one only.
    let mixed = post(&system, json!([GONE, "ok@example.com"]), "suppress:mixed").await;
    let done = system.wait_for_status(&mixed, "sent").await;
    assert_eq!(done["refused_recipients"][0]["recipient"], GONE, "{done}");
    let messages = system.smtp.wait_for_messages(1, DEADLINE).await;
    assert_eq!(messages[0].rcpt_to, ["ok@example.com"]);
    assert_eq!(system.smtp.attempts_for(GONE), 1);

    // The tenant sees the entry, and lifts it: the address is tried again.
    let listed: serde_json::Value = system
        .client
        .get(format!("{}/suppressions", system.api))
        .bearer_auth(&system.token)
        .send()
        .await
        .expect("GET /suppressions")
        .json()
        .await
        .expect("a page");
    assert_eq!(listed["items"][0]["address"], GONE, "{listed}");
    assert_eq!(listed["items"][0]["reason"], "bounce", "{listed}");
    let lifted = system
        .client
        .delete(format!("{}/suppressions/Gone%40Example.com", system.api))
        .bearer_auth(&system.token)
        .send()
        .await
        .expect("DELETE /suppressions/{address}");
    assert_eq!(lifted.status(), 204);
    let third = post(&system, json!(GONE), "suppress:third").await;
    system.wait_for_status(&third, "sent").await;
    assert_eq!(system.smtp.attempts_for(GONE), 2);
}

#[tokio::test]
async fn another_tenants_bounce_does_not_suppress_an_address_for_this_one() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    system.smtp.set_default_fault(Some(Fault::RejectRcpt));
    let body = json!({"to": GONE, "subject": "Hi", "text": "x", "idempotency_key": "t:1"});
    let answer = system.post_as_tenant("acme", &body).await;
    system
        .wait_for_status(answer["job_id"].as_str().expect("id"), "failed")
        .await;
    system.smtp.set_default_fault(None);

    let mine = post(&system, json!(GONE), "t:2").await;
    system.wait_for_status(&mine, "sent").await;
}
