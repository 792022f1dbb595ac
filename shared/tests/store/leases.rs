//! Leases: the Redis reaper after a restart, and the durable fence.

use std::time::Duration;

use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_testkit::{RedisOptions, RedisServer, TestDatabase, eventually, unique_prefix};

use crate::store_for;

/// A restarted Redis holds every lease as it was at the crash, by then
/// possibly lapsed although the worker is alive and about to renew: no
/// reaper moves anything until Redis has been up for a whole lease.
#[tokio::test]
async fn a_freshly_restarted_redis_is_not_reaped_before_a_lease_has_passed() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let url = secrecy::SecretString::from(redis.url());
    let queue = Queue::new(
        queue::connect(&url, &RedisTls::default()).expect("pool"),
        &unique_prefix(),
    );
    queue
        .heartbeat("w", Duration::from_millis(1))
        .await
        .expect("lease");
    queue.push(&["task".to_owned()]).await.expect("push");
    let mut popper = queue.popper(Duration::from_secs(1)).await.expect("popper");
    queue
        .pop(&mut popper, "w", Duration::from_secs(1))
        .await
        .expect("pop");
    let lease = Duration::from_millis(1500);

    let early = queue.reap_dead("me", lease).await.expect("reap");

    assert_eq!(early, 0, "reaped with Redis up for less than a lease");
    let held = queue.held_by("w").await.expect("list");
    assert_eq!(
        held.iter().map(|h| h.raw.as_str()).collect::<Vec<_>>(),
        ["task"]
    );
    let later = eventually(
        "a reap once Redis is up a lease",
        Duration::from_secs(10),
        || {
            let queue = queue.clone();
            async move { queue.reap_dead("me", lease).await.ok().filter(|n| *n > 0) }
        },
    )
    .await;
    assert_eq!(later, 1);
}

/// The fence is only as durable as its commit: sendonce's sessions commit
/// synchronously whatever the server's or database's default says.
#[tokio::test]
async fn store_sessions_commit_synchronously_whatever_the_default() {
    let db = TestDatabase::create().await;
    db.connect()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET synchronous_commit = off",
            db.name()
        ))
        .await
        .expect("set the default");
    let store = store_for(&db);

    let setting: String = store
        .pool()
        .get()
        .await
        .expect("connection")
        .query_one("SHOW synchronous_commit", &[])
        .await
        .expect("show")
        .get(0);

    assert_eq!(setting, "on");
}

/// One housekeeper at a time, elected by the heartbeat: the first worker to
/// beat takes it, others do not while it renews, a housekeeper that stops
/// beating is replaced within one lease, and one that shuts down hands it
/// over at once.
#[tokio::test]
async fn the_housekeeper_is_one_worker_replaced_within_a_lease_when_it_stops() {
    let url = secrecy::SecretString::from(
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    );
    let queue = Queue::new(
        queue::connect(&url, &RedisTls::default()).expect("client"),
        &unique_prefix(),
    );
    let lease = Duration::from_millis(900);

    assert!(
        queue.heartbeat("a", lease).await.expect("beat"),
        "the first beat takes it"
    );
    assert!(!queue.heartbeat("b", lease).await.expect("beat"), "taken");
    assert!(
        queue.heartbeat("a", lease).await.expect("beat"),
        "renewed by its holder"
    );
    assert!(
        !queue.heartbeat("b", lease).await.expect("beat"),
        "still taken"
    );

    // "a" stops beating; "b" beats every third of a lease, as workers do.
    let stopped = tokio::time::Instant::now();
    let took_over = eventually("b takes over", lease * 2, || {
        let queue = queue.clone();
        async move {
            let leads = queue.heartbeat("b", lease).await.expect("beat");
            if !leads {
                tokio::time::sleep(lease / 3).await;
            }
            leads.then(|| stopped.elapsed())
        }
    })
    .await;
    assert!(
        took_over <= lease + lease / 3,
        "replaced only after {took_over:?} (lease {lease:?})"
    );
    assert!(
        !queue.heartbeat("a", lease).await.expect("beat"),
        "a came back second"
    );

    // A housekeeper's hand-back at shutdown frees it for the next beat.
    queue.hand_back("b").await.expect("hand back");
    assert!(
        queue.heartbeat("a", lease).await.expect("beat"),
        "free after b left"
    );
}
