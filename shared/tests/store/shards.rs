//! The queue spread over shards, against the shared Redis: pops take the
//! shards in turn, so a full shard never starves another; every operation
//! on a copy stays in its shard; a shard that lost its data is restored
//! alone; processes with another shard count are refused.

use std::time::Duration;

use sendonce_shared::queue::{self, Held, Queue, QueueError, RedisTls};
use sendonce_testkit::unique_prefix;

const SHARDS: u16 = 4;

fn queue(prefix: &str, shards: u16) -> Queue {
    let url = secrecy::SecretString::from(redis_url());
    Queue::sharded(
        queue::connect(&url, &RedisTls::default()).expect("client"),
        prefix,
        shards,
    )
}

/// `n` stored tasks (as much JSON as the shard needs) whose keys fall in
/// `shard`.
fn tasks_in(queue: &Queue, shard: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!(r#"{{"idempotency_key":"shards:{i}"}}"#))
        .filter(|raw| queue.keys().shard_of_raw(raw) == shard)
        .take(n)
        .collect()
}

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn admin() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn llen(key: &str) -> usize {
    let mut conn = admin().await;
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("LLEN")
}

#[tokio::test]
async fn pops_take_the_shards_in_turn_so_a_full_shard_never_starves_another() {
    let queue = queue(&unique_prefix(), SHARDS);
    let busy = tasks_in(&queue, 1, 40);
    let quiet = tasks_in(&queue, 3, 5);
    queue.push(&busy).await.expect("push");
    queue.push(&quiet).await.expect("push");
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");

    let mut shards = Vec::new();
    for _ in 0..10 {
        let held = queue
            .pop(&mut popper, "w", Duration::from_secs(1))
            .await
            .expect("pop")
            .expect("a task is there, in some shard, for every pop");
        shards.push(held.shard);
    }

    // Wherever the popper started, the two non-empty shards alternate
    // until the quiet one is empty.
    assert_eq!(shards.iter().filter(|&&s| s == 3).count(), 5, "{shards:?}");
    assert!(
        shards.windows(2).take(9).all(|w| w[0] != w[1]),
        "alternating: {shards:?}"
    );
}

#[tokio::test]
async fn a_copy_is_acknowledged_retried_and_handed_back_in_its_own_shard() {
    let queue = queue(&unique_prefix(), SHARDS);
    let lease = Duration::from_secs(60);
    queue.heartbeat("w", lease).await.expect("beat");
    let raw = tasks_in(&queue, 2, 3);
    queue.push(&raw).await.expect("push");
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    let mut held = Vec::new();
    for _ in 0..3 {
        let h = queue
            .pop(&mut popper, "w", Duration::from_secs(1))
            .await
            .expect("pop")
            .expect("a task");
        assert_eq!(h.shard, 2);
        held.push(h);
    }
    let shard = queue.keys().shard(2);
    assert_eq!(llen(&shard.processing("w")).await, 3);

    queue.ack("w", &held[0]).await.expect("ack");
    assert!(
        queue
            .retry_later("w", &held[1], Duration::from_secs(60))
            .await
            .expect("retry")
    );
    let depths = queue.depths().await.expect("depths");
    assert_eq!(
        (depths.ready, depths.scheduled, depths.processing),
        (0, 1, 1)
    );
    assert_eq!(
        queue.held_by("w").await.expect("held"),
        [Held {
            shard: 2,
            raw: held[2].raw.clone()
        }]
    );

    assert_eq!(queue.hand_back("w").await.expect("hand back"), 1);
    assert_eq!(llen(&shard.queue()).await, 1);
    assert_eq!(llen(&shard.processing("w")).await, 0);
}

#[tokio::test]
async fn only_a_shard_that_lost_its_epoch_is_restored() {
    let queue = queue(&unique_prefix(), SHARDS);
    for shard in 0..usize::from(SHARDS) {
        assert!(
            queue
                .claim_epoch(shard, "pass", Duration::from_secs(60))
                .await
                .expect("epoch")
        );
    }
    assert_eq!(
        queue.epoch_missing().await.expect("epochs"),
        Vec::<usize>::new()
    );
    let mut conn = admin().await;
    redis::cmd("DEL")
        .arg(queue.keys().shard(1).epoch())
        .query_async::<()>(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(queue.epoch_missing().await.expect("epochs"), [1]);

    let waiting: Vec<(String, Duration)> = (0..usize::from(SHARDS))
        .flat_map(|shard| tasks_in(&queue, shard, 2))
        .map(|raw| (raw, Duration::ZERO))
        .collect();
    let restored = queue.restore(&waiting, &[1]).await.expect("restore");

    assert_eq!(restored, 2);
    assert_eq!(llen(&queue.keys().shard(1).queue()).await, 2);
    assert_eq!(
        queue.depths().await.expect("depths").ready,
        2,
        "no other shard got a copy"
    );
}

#[tokio::test]
async fn a_process_with_another_shard_count_is_refused_naming_both() {
    let prefix = unique_prefix();
    queue(&prefix, SHARDS)
        .check_layout()
        .await
        .expect("first to record");
    queue(&prefix, SHARDS)
        .check_layout()
        .await
        .expect("same count");

    let refused = queue(&prefix, 1).check_layout().await;

    match refused {
        Err(e @ QueueError::Layout { .. }) => {
            let text = e.to_string();
            assert!(text.contains("QUEUE_SHARDS is 1"), "{text}");
            assert!(text.contains("in 4 shard(s)"), "{text}");
        }
        other => panic!("expected a layout error, got {other:?}"),
    }
}
