//! Tenants end to end: one key in two tenants is two jobs and two emails,
//! each claimed under its own tenant (L1 and L2), over a sharded queue.

use std::collections::HashSet;

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
