//! Tenants are served in turn, against the shared Redis: one tenant's
//! backlog delays another tenant's job by a bounded number of pops
//! ([`queue::FAIR_BOUND`]), whatever the backlog's size.

use std::time::Duration;

use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_testkit::unique_prefix;

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn queue(prefix: &str, shards: u16) -> Queue {
    let url = secrecy::SecretString::from(redis_url());
    Queue::sharded(
        queue::connect(&url, &RedisTls::default()).expect("client"),
        prefix,
        shards,
    )
}

/// A stored task of `tenant` (`None`: the tenant `default`, which the
/// stored JSON leaves out).
fn task(tenant: Option<&str>, key: &str) -> String {
    match tenant {
        Some(t) => format!(r#"{{"idempotency_key":"{key}","tenant":"{t}"}}"#),
        None => format!(r#"{{"idempotency_key":"{key}"}}"#),
    }
}

/// The next `n` tasks popped by worker `w`, each there to be popped.
async fn pop_n(queue: &Queue, popper: &mut queue::Popper, n: usize) -> Vec<String> {
    let mut popped = Vec::with_capacity(n);
    for _ in 0..n {
        let held = queue
            .pop(popper, "w", Duration::from_secs(1))
            .await
            .expect("pop")
            .expect("a task");
        popped.push(held.raw);
    }
    popped
}

/// The tenant a popped task names.
fn tenant_of(raw: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(raw).expect("a task");
    v["tenant"].as_str().unwrap_or("default").to_owned()
}

#[tokio::test]
async fn a_single_job_waits_a_bounded_number_of_pops_behind_another_tenants_100_000() {
    let queue = queue(&unique_prefix(), 1);
    const BACKLOG: usize = 100_000;
    for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(10_000) {
        let tasks: Vec<String> = chunk
            .iter()
            .map(|i| task(Some("bulk"), &format!("bulk:{i}")))
            .collect();
        queue.push(&tasks).await.expect("push");
    }
    let single = task(Some("other"), "single");
    queue
        .push(std::slice::from_ref(&single))
        .await
        .expect("push");

    // Ahead of the single job: the whole backlog, one other tenant.
    let bound = queue::fair_bound(BACKLOG as u64, 2) as usize;
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    let mut pops = 0;
    loop {
        let held = queue
            .pop(&mut popper, "w", Duration::from_secs(1))
            .await
            .expect("pop")
            .expect("the backlog is there");
        pops += 1;
        if held.raw == single {
            break;
        }
        assert!(
            pops < bound,
            "the single job was not popped within {bound} pops of a {BACKLOG}-job backlog"
        );
    }
    eprintln!("the single job came out at pop {pops} (bound {bound})");
    let depths = queue.depths().await.expect("depths");
    assert_eq!(
        depths.ready,
        (BACKLOG + 1 - pops) as u64,
        "nothing lost or copied"
    );
    let mut conn = redis::Client::open(redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let held: usize = redis::cmd("LLEN")
        .arg(queue.keys().shard(0).processing("w"))
        .query_async(&mut conn)
        .await
        .expect("LLEN");
    assert_eq!(held, pops, "every popped task held");
}

#[tokio::test]
async fn tenants_with_ready_work_take_turns_and_each_keeps_its_order() {
    let queue = queue(&unique_prefix(), 1);
    // Posted in blocks: all of a's, then b's, then the default tenant's.
    let a: Vec<String> = (0..6).map(|i| task(Some("a"), &format!("a:{i}"))).collect();
    let b: Vec<String> = (0..3).map(|i| task(Some("b"), &format!("b:{i}"))).collect();
    let d: Vec<String> = (0..3).map(|i| task(None, &format!("d:{i}"))).collect();
    for block in [&a, &b, &d] {
        for t in block.iter() {
            queue.push(std::slice::from_ref(t)).await.expect("push");
        }
    }
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    let popped = pop_n(&queue, &mut popper, 12).await;
    let tenants: Vec<String> = popped.iter().map(|raw| tenant_of(raw)).collect();
    assert_eq!(
        tenants,
        [
            "a", "b", "default", "a", "b", "default", "a", "b", "default", "a", "a", "a"
        ],
        "in turn while each has work"
    );
    for block in [&a, &b, &d] {
        let order: Vec<&String> = popped.iter().filter(|raw| block.contains(raw)).collect();
        assert_eq!(
            order,
            block.iter().collect::<Vec<_>>(),
            "FIFO within a tenant"
        );
    }
    assert!(
        queue
            .pop(&mut popper, "w", Duration::from_millis(100))
            .await
            .expect("pop")
            .is_none(),
        "all taken"
    );
}

#[tokio::test]
async fn a_task_that_does_not_parse_is_still_popped_for_the_poison_list() {
    let queue = queue(&unique_prefix(), 1);
    queue.push(&["not json".to_owned()]).await.expect("push");
    queue.push(&[task(Some("a"), "a:0")]).await.expect("push");
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    let popped = pop_n(&queue, &mut popper, 2).await;
    assert!(popped.contains(&"not json".to_owned()), "{popped:?}");
}

#[tokio::test]
async fn tasks_sorted_by_a_worker_that_died_are_found_by_an_idle_one_within_its_sweep() {
    let queue = queue(&unique_prefix(), 1);
    let block = Duration::from_millis(20);
    // An idle worker: its pops have found nothing.
    let mut idle = queue.popper(block).await.expect("popper");
    assert!(
        queue
            .pop(&mut idle, "idle", block)
            .await
            .expect("pop")
            .is_none()
    );

    // Another worker sorts three tasks into their tenant's list, takes
    // one, and dies.
    let tasks: Vec<String> = (0..3).map(|i| task(Some("a"), &format!("a:{i}"))).collect();
    queue.push(&tasks).await.expect("push");
    let mut doomed = queue.popper(block).await.expect("popper");
    assert!(
        queue
            .pop(&mut doomed, "doomed", block)
            .await
            .expect("pop")
            .is_some()
    );
    drop(doomed);

    let mut pops = 0;
    let found = loop {
        pops += 1;
        if let Some(held) = queue.pop(&mut idle, "idle", block).await.expect("pop") {
            break held;
        }
        assert!(
            pops < queue::IDLE_SWEEP_EVERY,
            "the sorted tasks were not found within {} idle pops",
            queue::IDLE_SWEEP_EVERY
        );
    };
    assert_eq!(found.raw, tasks[1], "the tenant's next task");
}
