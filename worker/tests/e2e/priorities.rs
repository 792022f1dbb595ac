//! Priorities end to end: a `high` job posted behind 20,000 `low` ones is
//! popped by the real worker within [`priority_bound`] pops.

use sendonce_shared::queue::priority_bound;
use serde_json::json;

use crate::helpers::{Options, email, spawn_system};

#[tokio::test]
async fn a_high_job_posted_behind_20_000_low_ones_is_sent_within_the_priority_bound() {
    const BACKLOG: usize = 20_000;
    const CONCURRENCY: usize = 4;
    let system = spawn_system(Options::default()).await;
    for batch in 0..BACKLOG / 1000 {
        let jobs: Vec<_> = (0..1000)
            .map(|i| {
                let mut job = email(&format!("low-{batch}-{i}@example.com"), None);
                job["priority"] = json!("low");
                job
            })
            .collect();
        let answer = system
            .post_path_as_tenant("/addJobs", "shop", &json!({ "jobs": jobs }))
            .await;
        assert_eq!(
            answer["items"].as_array().map(Vec::len),
            Some(1000),
            "{answer}"
        );
    }
    let mut urgent = email("urgent@example.com", Some("urgent:1"));
    urgent["priority"] = json!("high");
    let urgent = system.post_as_tenant("shop", &urgent).await;

    let _worker = system
        .spawn_worker_with(&["--worker-concurrency", &CONCURRENCY.to_string()])
        .await;
    system
        .wait_for_status(urgent["job_id"].as_str().expect("a job id"), "sent")
        .await;

    // Popped within the bound; sent, at worst, after every task popped
    // before it and the ones popped after it that finished first.
    let pops = usize::try_from(priority_bound(BACKLOG as u64, 1)).expect("small");
    let messages = system.smtp.messages();
    let position = messages
        .iter()
        .position(|m| m.rcpt_to.iter().any(|r| r == "urgent@example.com"))
        .expect("the urgent email was received");
    eprintln!(
        "the high job's email was message {position} of {}",
        messages.len()
    );
    assert!(
        position < pops + CONCURRENCY,
        "the high job's email came after {position} low ones (bound: {pops} pops, {CONCURRENCY} in flight)"
    );
}
