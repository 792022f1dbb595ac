//! Cancels racing real workers: whoever commits first in Postgres wins, so
//! a job ends `canceled` with nothing received, or `sent` and received
//! once, never both; a cancel after the message went out answers `409`.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{DEADLINE, Options, email, spawn_system};

#[tokio::test]
async fn cancels_racing_two_workers_never_leave_a_job_both_canceled_and_delivered() {
    const ROUNDS: usize = 5;
    const JOBS: usize = 40;
    let system = spawn_system(Options::default()).await;
    let _one = system.spawn_worker().await;
    let _two = system.spawn_worker().await;

    let (mut canceled, mut sent) = (0, 0);
    for round in 0..ROUNDS {
        // Each job is posted and canceled after 0 to 400 ms, spread over
        // the jobs (not a wait for anything): the workers race the cancel.
        let results = join_all((0..JOBS).map(|i| {
            let system = &system;
            async move {
                let to = format!("race-{round}-{i}@example.com");
                let job = system.post_ok(&email(&to, None)).await;
                let id = job["job_id"].as_str().expect("a job id").to_owned();
                let spread = u64::try_from(i).expect("small") * 10;
                tokio::time::sleep(Duration::from_millis(spread)).await;
                let (status, body) = system
                    .post_api(&format!("/jobs/{id}/cancel"), &json!({}))
                    .await;
                (to, id, status, body)
            }
        }))
        .await;

        let mut outcome = HashMap::new();
        for (to, id, status, body) in results {
            let end = system.wait_for_terminal(&id).await;
            let end = end["status"].as_str().unwrap_or_default().to_owned();
            match status {
                StatusCode::OK => assert_eq!(end, "canceled", "{to}: answered 200, ended {end}"),
                StatusCode::CONFLICT => assert_ne!(end, "canceled", "{to}: answered 409 {body}"),
                other => panic!("{to}: cancel answered {other}: {body}"),
            }
            outcome.insert(to, end);
        }
        let delivered = outcome.values().filter(|s| *s == "sent").count();
        let messages = system
            .smtp
            .wait_for_messages(sent + delivered, DEADLINE)
            .await;
        for (to, end) in &outcome {
            let received = messages
                .iter()
                .filter(|m| m.rcpt_to.iter().any(|r| r == to))
                .count();
            match end.as_str() {
                "canceled" => assert_eq!(received, 0, "{to} was canceled and delivered"),
                "sent" => assert_eq!(received, 1, "{to} sent {received} times"),
                other => panic!("{to} ended {other}"),
            }
        }
        canceled += outcome.values().filter(|s| *s == "canceled").count();
        sent += delivered;
    }
    eprintln!("{canceled} canceled, {sent} sent of {}", ROUNDS * JOBS);
    assert_eq!(canceled + sent, ROUNDS * JOBS);
    assert!(canceled > 0 && sent > 0, "both sides won some races");

    // Once delivered, a cancel is too late.
    let job = system
        .post_ok(&email("late@example.com", Some("cancel:late")))
        .await;
    let id = job["job_id"].as_str().expect("a job id");
    system.wait_for_status(id, "sent").await;
    let (status, problem) = system
        .post_api(&format!("/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["state"], "sent");
}
