//! Several recipients: `to` (one or more), `cc` and `bcc` go out in one
//! SMTP transaction and one DATA, `bcc` in the envelope only; recipients
//! refused for good are left out and recorded on the job while the others
//! get the message; with every recipient refused, the job fails as before.
//! Received messages are read with a MIME parser (mail-parser).

use mail_parser::{Address, MessageParser};
use serde_json::{Value, json};

use crate::helpers::{DEADLINE, Options, spawn_system};

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| addr.address().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn job(to: Value, cc: &[&str], bcc: &[&str], key: &str) -> Value {
    json!({"to": to, "cc": cc, "bcc": bcc, "subject": "Invoice", "text": "attached",
           "idempotency_key": key})
}

#[tokio::test]
async fn to_cc_and_bcc_go_in_one_data_and_bcc_stays_out_of_the_headers() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let body = job(
        json!(["Ada <ada@example.com>", "grace@example.com"]),
        &["accounting@example.com"],
        &["archive@example.com"],
        "recipients:all",
    );
    let answer = system.post_ok(&body).await;
    system
        .wait_for_status(answer["job_id"].as_str().expect("a job id"), "sent")
        .await;

    let messages = system.smtp.wait_for_messages(1, DEADLINE).await;
    assert_eq!(messages.len(), 1, "one DATA for every recipient");
    let mut envelope = messages[0].rcpt_to.clone();
    envelope.sort();
    assert_eq!(
        envelope,
        [
            "accounting@example.com",
            "ada@example.com",
            "archive@example.com",
            "grace@example.com"
        ]
    );
    let parsed = MessageParser::default()
        .parse(&messages[0].data)
        .expect("a MIME message");
    assert_eq!(
        addresses(parsed.to()),
        ["ada@example.com", "grace@example.com"]
    );
    assert_eq!(addresses(parsed.cc()), ["accounting@example.com"]);
    assert!(parsed.bcc().is_none(), "no Bcc header");
    let raw = String::from_utf8_lossy(&messages[0].data);
    assert!(
        !raw.contains("archive@"),
        "the bcc address appears nowhere in the message"
    );
}

#[tokio::test]
async fn recipients_refused_for_good_are_recorded_while_the_others_get_the_message() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let body = job(
        json!("ok@example.com"),
        &["gone+reject-rcpt@example.com"],
        &["also-gone+reject-rcpt@example.com"],
        "recipients:partial",
    );
    let answer = system.post_ok(&body).await;
    let done = system
        .wait_for_status(answer["job_id"].as_str().expect("a job id"), "sent")
        .await;

    let refused: Vec<(&str, &str)> = done["refused_recipients"]
        .as_array()
        .expect("refused_recipients")
        .iter()
        .map(|r| {
            (
                r["recipient"].as_str().unwrap_or_default(),
                r["reply"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 2, "{done}");
    assert!(
        refused.iter().all(|(_, reply)| reply.contains("550")),
        "{refused:?}"
    );
    assert_eq!(refused[0].0, "gone+reject-rcpt@example.com");
    let messages = system.smtp.wait_for_messages(1, DEADLINE).await;
    assert_eq!(messages[0].rcpt_to, ["ok@example.com"]);
}

#[tokio::test]
async fn a_job_whose_every_recipient_is_refused_fails_as_before() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let body = job(
        json!(["a+reject-rcpt@example.com", "b+reject-rcpt@example.com"]),
        &[],
        &[],
        "recipients:none",
    );
    let answer = system.post_ok(&body).await;
    let done = system
        .wait_for_status(answer["job_id"].as_str().expect("a job id"), "failed")
        .await;
    assert!(
        done["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("550"),
        "{done}"
    );
    assert!(system.smtp.messages().is_empty());
}
