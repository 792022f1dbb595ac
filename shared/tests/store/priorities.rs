//! Priorities against the shared Redis: `high` first, behind a backlog of
//! any size within [`queue::priority_bound`] pops; `normal` and `low`
//! still get their share ([`queue::PRIORITY_CYCLE`]) while `high` never
//! empties; tasks from before priorities are `normal`.

use std::time::Duration;

use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_testkit::unique_prefix;

fn queue(prefix: &str) -> Queue {
    let url = secrecy::SecretString::from(
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    );
    Queue::new(
        queue::connect(&url, &RedisTls::default()).expect("client"),
        prefix,
    )
}

/// A stored task at `priority` (`None`: a task from before priorities).
fn task(priority: Option<&str>, key: &str) -> String {
    match priority {
        Some(p) => format!(r#"{{"idempotency_key":"{key}","priority":"{p}"}}"#),
        None => format!(r#"{{"idempotency_key":"{key}"}}"#),
    }
}

/// The priority a popped task names.
fn priority_of(raw: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(raw).expect("a task");
    v["priority"].as_str().unwrap_or("normal").to_owned()
}

async fn pop(queue: &Queue, popper: &mut queue::Popper) -> String {
    queue
        .pop(popper, "w", Duration::from_secs(1))
        .await
        .expect("pop")
        .expect("a task")
        .raw
}

#[tokio::test]
async fn a_high_task_behind_20_000_low_ones_is_popped_within_the_priority_bound() {
    const BACKLOG: usize = 20_000;
    let queue = queue(&unique_prefix());
    for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(5_000) {
        let tasks: Vec<String> = chunk
            .iter()
            .map(|i| task(Some("low"), &format!("low:{i}")))
            .collect();
        queue.push(&tasks).await.expect("push");
    }
    let urgent = task(Some("high"), "urgent");
    queue
        .push(std::slice::from_ref(&urgent))
        .await
        .expect("push");

    let bound = queue::priority_bound(BACKLOG as u64, 1);
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    let mut pops = 0;
    loop {
        pops += 1;
        if pop(&queue, &mut popper).await == urgent {
            break;
        }
        assert!(
            pops < bound,
            "the high task was not popped within {bound} pops of {BACKLOG} low ones"
        );
    }
    eprintln!("the high task came out at pop {pops} (bound {bound})");
    let depths = queue.depths().await.expect("depths");
    assert_eq!(depths.ready, BACKLOG as u64 + 1 - pops, "nothing lost");
}

#[tokio::test]
async fn normal_and_low_get_their_share_of_every_cycle_while_high_never_empties() {
    let queue = queue(&unique_prefix());
    let cycle = usize::try_from(queue::PRIORITY_CYCLE).expect("small");
    let low: Vec<String> = (0..50)
        .map(|i| task(Some("low"), &format!("low:{i}")))
        .collect();
    let normal: Vec<String> = (0..50)
        .map(|i| task(None, &format!("normal:{i}")))
        .collect();
    queue.push(&low).await.expect("push");
    queue.push(&normal).await.expect("push");
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    let mut seen = Vec::new();
    for round in 0..20 {
        // High keeps coming: more is ready than a cycle takes.
        let high: Vec<String> = (0..cycle)
            .map(|i| task(Some("high"), &format!("high:{round}:{i}")))
            .collect();
        queue.push(&high).await.expect("push");
        for _ in 0..cycle {
            seen.push(priority_of(&pop(&queue, &mut popper).await));
        }
    }
    for (i, window) in seen.windows(cycle).enumerate() {
        for lower in ["normal", "low"] {
            assert!(
                window.iter().any(|p| p == lower),
                "no {lower} task in pops {i}..{}: {window:?}",
                i + cycle
            );
        }
    }
    let high = seen.iter().filter(|p| *p == "high").count();
    assert_eq!(
        high,
        seen.len() / cycle * (cycle - 2),
        "high takes the rest"
    );
    let popped_low: Vec<&String> = seen.iter().filter(|p| *p == "low").collect();
    assert_eq!(popped_low.len(), seen.len() / cycle, "one low per cycle");
}

#[tokio::test]
async fn without_high_work_normal_goes_first_and_low_keeps_its_share() {
    let queue = queue(&unique_prefix());
    let cycle = usize::try_from(queue::PRIORITY_CYCLE).expect("small");
    let low: Vec<String> = (0..40)
        .map(|i| task(Some("low"), &format!("low:{i}")))
        .collect();
    let normal: Vec<String> = (0..40).map(|i| task(None, &format!("n:{i}"))).collect();
    queue.push(&low).await.expect("push");
    queue.push(&normal).await.expect("push");
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    let mut popped = Vec::new();
    for _ in 0..cycle * 3 {
        popped.push(pop(&queue, &mut popper).await);
    }
    let lows: Vec<&String> = popped.iter().filter(|t| priority_of(t) == "low").collect();
    assert_eq!(lows.len(), 3, "one in each cycle: {popped:?}");
    assert_eq!(
        lows,
        low.iter().take(3).collect::<Vec<_>>(),
        "FIFO within low"
    );
    let normals: Vec<&String> = popped
        .iter()
        .filter(|t| priority_of(t) == "normal")
        .collect();
    assert_eq!(
        normals,
        normal.iter().take(cycle * 3 - 3).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn every_way_back_to_the_queue_sorts_a_task_into_its_own_priority() {
    let queue = queue(&unique_prefix());
    let block = Duration::from_millis(50);
    let high = task(Some("high"), "h");
    let low = task(Some("low"), "l");
    queue
        .push(&[high.clone(), low.clone()])
        .await
        .expect("push");
    // A worker takes both and dies; a reaper hands them back (RPUSH, next
    // to be popped, in the order they were held).
    let mut doomed = queue.popper(block).await.expect("popper");
    for _ in 0..2 {
        queue
            .pop(&mut doomed, "doomed", block)
            .await
            .expect("pop")
            .expect("a task");
    }
    queue
        .heartbeat("doomed", Duration::from_millis(1))
        .await
        .expect("beat");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Behind them, a backlog of normal tasks.
    let backlog: Vec<String> = (0..30).map(|i| task(None, &format!("n:{i}"))).collect();
    queue.push(&backlog).await.expect("push");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queue
        .reap_dead("me", Duration::from_millis(1))
        .await
        .expect("reap")
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "never reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut popper = queue.popper(block).await.expect("popper");
    let first = pop(&queue, &mut popper).await;
    assert_eq!(first, high, "the reaped high task goes first");
    let mut rest = Vec::new();
    for _ in 0..31 {
        rest.push(pop(&queue, &mut popper).await);
    }
    let at = rest.iter().position(|t| *t == low).expect("the low task");
    assert!(
        at < usize::try_from(queue::PRIORITY_CYCLE).expect("small"),
        "the reaped low task keeps its share: popped at {at}"
    );
}
