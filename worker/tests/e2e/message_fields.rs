//! A job's own headers arrive in its message, its metadata does not, and
//! every attempt at a job sends the same bytes.

use serde_json::json;

use crate::helpers::{DEADLINE, Options, decode_words, spawn_system};

#[tokio::test]
async fn custom_headers_arrive_in_the_message_and_metadata_does_not() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let unsubscribe = "<https://shop.example.com/unsubscribe/4242>, <mailto:unsubscribe@shop.example.com?subject=4242>";
    let body = json!({
        "to": "ada@example.com",
        "subject": "Your receipt",
        "text": "Thanks for your order.",
        "html": "<p>Thanks for your order.</p>",
        "idempotency_key": "receipt:4242",
        "headers": {
            "List-Unsubscribe": unsubscribe,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "In-Reply-To": "<order-4242@shop.example.com>",
            "References": "<cart-17@shop.example.com> <order-4242@shop.example.com>",
            "X-Campaign": "Frühlingsangebot ✿",
        },
        "metadata": {"customer_ref": "metadata-marker-7f3a", "tier": "gold-tier-marker"},
    });

    let answer = system.post_ok(&body).await;
    let job = system
        .wait_for_status(answer["job_id"].as_str().expect("a job id"), "sent")
        .await;

    let mails = system.smtp.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(
        mail.header("List-Unsubscribe").as_deref(),
        Some(unsubscribe)
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(
        mail.header("In-Reply-To").as_deref(),
        Some("<order-4242@shop.example.com>")
    );
    assert_eq!(
        mail.header("References").as_deref(),
        Some("<cart-17@shop.example.com> <order-4242@shop.example.com>")
    );
    assert_eq!(
        decode_words(&mail.header("X-Campaign").expect("X-Campaign")),
        "Frühlingsangebot ✿"
    );
    // And as a MIME parser reads them.
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail.data)
        .expect("a MIME message");
    for (name, value) in [
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("In-Reply-To", "<order-4242@shop.example.com>"),
    ] {
        assert_eq!(
            parsed.header_raw(name).map(str::trim),
            Some(value),
            "{name}"
        );
    }
    let data = String::from_utf8_lossy(&mail.data);
    for secret in ["metadata-marker-7f3a", "gold-tier-marker", "customer_ref"] {
        assert!(!data.contains(secret), "{secret} was sent: {data}");
    }
    assert_eq!(job["metadata"], body["metadata"], "kept with the job");
}

#[tokio::test]
async fn every_attempt_at_a_job_sends_the_same_bytes() {
    let system = spawn_system(Options {
        worker_args: ["--on-uncertain", "resend", "--max-attempts", "2"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;
    let answer = system
        .post_ok(&json!({
            "to": "ada+drop-after-data@example.com",
            "subject": "Your receipt",
            "text": "Thanks for your order.",
            "html": "<p>Thanks for your order.</p>",
            "idempotency_key": "receipt:same-bytes",
            "headers": {"X-Campaign": "spring"},
        }))
        .await;

    system
        .wait_for_status(answer["job_id"].as_str().expect("a job id"), "uncertain")
        .await;
    let cut = system.smtp.wait_for_cut_messages(2, DEADLINE).await;

    assert_eq!(cut.len(), 2, "resent once, then given up");
    assert!(
        String::from_utf8_lossy(&cut[0].data).contains("multipart/alternative"),
        "a boundary to compare"
    );
    assert_eq!(
        String::from_utf8_lossy(&cut[0].data),
        String::from_utf8_lossy(&cut[1].data),
        "the resend is the same message, byte for byte"
    );
}
