//! The ambiguous window: after the data went out and before the reply was
//! read, nobody knows whether the server accepted the message.

use std::time::Duration;

use sendonce_testkit::Fault;
use serde_json::json;

use crate::helpers::{DEADLINE, Options, email, spawn_system};

#[tokio::test]
async fn a_connection_cut_after_the_data_ends_uncertain_and_is_not_resent() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let rcpt = "cut+drop-after-data@example.com";

    let answer = system.post_ok(&email(rcpt, Some("window:cut"))).await;
    let job = system
        .wait_for_status(answer["job_id"].as_str().expect("job id"), "uncertain")
        .await;

    let dlq = system.wait_for_failed(1).await;
    assert_eq!(dlq[0]["reason"], "uncertain");
    let detail = dlq[0]["error"].as_str().unwrap_or_default();
    assert!(detail.contains("may or may not have accepted"), "{detail}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(system.smtp.cut_messages().len(), 1);
    assert_eq!(system.smtp.attempts_for(rcpt), 1, "never resent on its own");
}

#[tokio::test]
async fn a_worker_killed_while_its_data_is_out_leaves_the_key_uncertain() {
    let system = spawn_system(Options::default()).await;
    let mut doomed = system.spawn_worker_process(None);
    let rcpt = "slow+slow-data-3000@example.com";
    let answer = system.post_ok(&email(rcpt, Some("window:kill"))).await;
    let job_id = answer["job_id"].as_str().expect("job id").to_owned();

    let db = system.db.connect().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let row = db
            .query_opt(
                "SELECT state FROM deliveries WHERE idempotency_key = 'window:kill'",
                &[],
            )
            .await
            .expect("query");
        if row.is_some_and(|r| r.get::<_, String>(0) == "sending") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the data never went out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill().expect("SIGKILL");
    doomed.wait().expect("reap");
    let _rescuer = system.spawn_worker().await;

    let job = system.wait_for_status(&job_id, "uncertain").await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(
        system.smtp.attempts_for(rcpt),
        1,
        "the rescuer did not resend"
    );
    let dlq = system.wait_for_failed(1).await;
    assert!(
        dlq[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cut after its data went out")
    );
}

#[tokio::test]
async fn with_on_uncertain_resend_every_attempt_carries_the_same_message_id() {
    let system = spawn_system(Options {
        worker_args: ["--on-uncertain", "resend", "--max-attempts", "2"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;
    let answer = system
        .post_ok(&email(
            "again+drop-after-data@example.com",
            Some("window:resend"),
        ))
        .await;

    system
        .wait_for_status(answer["job_id"].as_str().expect("job id"), "uncertain")
        .await;
    let cut = system.smtp.wait_for_cut_messages(2, DEADLINE).await;
    assert_eq!(
        cut.len(),
        2,
        "resent once, then given up after MAX_ATTEMPTS"
    );
    assert!(cut[0].header("Message-ID").is_some());
    assert_eq!(cut[0].header("Message-ID"), cut[1].header("Message-ID"));
}

#[tokio::test]
async fn an_uncertain_entry_requeued_by_an_operator_is_sent_at_most_once_more() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    system.smtp.set_default_fault(Some(Fault::DropAfterData));
    let answer = system
        .post_ok(&email("op@example.com", Some("window:requeue")))
        .await;
    let job_id = answer["job_id"].as_str().expect("job id");
    system.wait_for_status(job_id, "uncertain").await;
    let entry = system.wait_for_failed(1).await.remove(0);

    system.smtp.set_default_fault(None);
    let (status, _) = system
        .post_api(&format!("/failedJobs/{}/retry", entry["id"]), &json!({}))
        .await;
    assert_eq!(status, 200);

    system.wait_for_status(job_id, "sent").await;
    assert_eq!(system.smtp.messages().len(), 1);
    assert_eq!(system.smtp.cut_messages().len(), 1);
    assert_eq!(
        system.smtp.messages()[0].header("Message-ID"),
        system.smtp.cut_messages()[0].header("Message-ID"),
        "the resend carries the Message-ID of the cut attempt"
    );
}
