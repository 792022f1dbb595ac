//! Tenants end to end: one key in two tenants is two jobs and two emails,
//! each claimed under its own tenant (L1 and L2), over a sharded queue; a
//! tenant's backlog delays another's job by a bounded number of pops.

use std::collections::HashSet;

use sendonce_shared::queue::fair_bound;
use serde_json::json;

use crate::helpers::{DEADLINE, Options, email, spawn_system};

#[tokio::test]
async fn one_key_in_three_tenants_sends_three_emails_and_a_replay_none() {
    let system = spawn_system(Options {
        queue_shards: Some(4),
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;

    let mut jobs = Vec::new();
    for tenant in ["billing", "shop", "accounts"] {
        let body = email(&format!("{tenant}@example.com"), Some("welcome:user-42"));
        let first = system.post_as_tenant(tenant, &body).await;
        let replay = system.post_as_tenant(tenant, &body).await;
        assert_eq!(replay["job_id"], first["job_id"]);
        jobs.push(first["job_id"].as_str().expect("a job id").to_owned());
    }
    for job in &jobs {
        let seen = system.wait_for_status(job, "sent").await;
        assert_eq!(seen["idempotency_key"], "welcome:user-42");
    }

    let messages = system.smtp.wait_for_messages(3, DEADLINE).await;
    let recipients: HashSet<_> = messages.iter().map(|m| m.rcpt_to.clone()).collect();
    assert_eq!(messages.len(), 3, "one email per tenant");
    assert_eq!(recipients.len(), 3);
}

#[tokio::test]
async fn another_tenants_single_job_is_sent_within_the_fair_bound_of_a_3000_job_backlog() {
    const BACKLOG: usize = 3000;
    const CONCURRENCY: usize = 4;
    let system = spawn_system(Options::default()).await;
    // The whole backlog is queued before any worker runs.
    for batch in 0..BACKLOG / 1000 {
        let jobs: Vec<_> = (0..1000)
            .map(|i| email(&format!("bulk-{batch}-{i}@example.com"), None))
            .collect();
        let answer = system
            .post_path_as_tenant("/addJobs", "bulk", &json!({ "jobs": jobs }))
            .await;
        assert_eq!(
            answer["items"].as_array().map(Vec::len),
            Some(1000),
            "{answer}"
        );
    }
    let urgent = system
        .post_as_tenant("urgent", &email("urgent@example.com", Some("urgent:1")))
        .await;

    let _worker = system
        .spawn_worker_with(&["--worker-concurrency", &CONCURRENCY.to_string()])
        .await;
    system
        .wait_for_status(urgent["job_id"].as_str().expect("a job id"), "sent")
        .await;

    // Popped within the bound; sent, at worst, after every task popped
    // before it and the ones popped after it that finished first.
    let pops = usize::try_from(fair_bound(BACKLOG as u64, 2)).expect("small");
    let messages = system.smtp.messages();
    let position = messages
        .iter()
        .position(|m| m.rcpt_to.iter().any(|r| r == "urgent@example.com"))
        .expect("the urgent email was received");
    eprintln!(
        "the urgent email was message {position} of {}",
        messages.len()
    );
    assert!(
        position < pops + CONCURRENCY,
        "the urgent email came after {position} of the backlog's (bound: {pops} pops, {CONCURRENCY} in flight)"
    );
}
