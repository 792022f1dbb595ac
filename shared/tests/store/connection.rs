//! The queue's one shared Redis connection, against a `redis-server` of the
//! test's own, so that counting its clients counts only ours.

use std::time::Duration;

use futures::future::join_all;
use secrecy::SecretString;
use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_testkit::{RedisOptions, RedisServer, unique_prefix};

const DEADLINE: Duration = Duration::from_secs(20);

fn queue_at(url: &str) -> Queue {
    // A pool of 8: before the shared connection, 200 callers opened all 8.
    let pool = queue::connect(&SecretString::from(url.to_owned()), &RedisTls::default())
        .expect("Redis pool");
    Queue::new(pool, &unique_prefix())
}

async fn observer(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("observer connection")
}

/// A server of the test's own, a connection to watch it with, and a queue
/// whose shared connection is open.
async fn connected() -> (RedisServer, redis::aio::MultiplexedConnection, Queue) {
    let server = RedisServer::start(RedisOptions::default()).await;
    let observer = observer(&server).await;
    let queue = queue_at(&server.url());
    queue
        .ping()
        .await
        .expect("the first command opens the connection");
    (server, observer, queue)
}

/// Clients connected besides the observer itself.
async fn other_clients(observer: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(observer)
        .await
        .expect("CLIENT LIST");
    list.lines().count() - 1
}

#[tokio::test]
async fn concurrent_callers_share_one_connection() {
    let (_server, mut observer, queue) = connected().await;

    let results = tokio::time::timeout(DEADLINE, join_all((0..200).map(|_| queue.ping())))
        .await
        .expect("200 pings answer");

    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(other_clients(&mut observer).await, 1);
}

#[tokio::test]
async fn a_connection_killed_under_the_queue_is_replaced_on_the_next_command() {
    let (_server, mut observer, queue) = connected().await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut observer)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "the queue's one connection");

    // The command that meets the dead connection fails (its caller must
    // know: nothing is retried behind its back); the next one reconnects.
    let mut failures = Vec::new();
    let answered = tokio::time::timeout(DEADLINE, async {
        loop {
            match queue.ping().await {
                Ok(()) => break,
                Err(e) => failures.push(e.to_string()),
            }
        }
    })
    .await;

    assert!(answered.is_ok(), "never reconnected: {failures:?}");
    assert!(failures.len() <= 1, "{failures:?}");
    assert_eq!(other_clients(&mut observer).await, 1);
}

/// The id of the queue's connection, the one client besides the observer.
async fn queue_client_id(observer: &mut redis::aio::MultiplexedConnection) -> String {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(observer)
        .await
        .expect("CLIENT LIST");
    let me: String = redis::cmd("CLIENT")
        .arg("ID")
        .query_async::<i64>(observer)
        .await
        .expect("CLIENT ID")
        .to_string();
    let ids: Vec<String> = list
        .lines()
        // Not the link to a primary, while the server is a replica.
        .filter(|line| !line.contains(" flags=M "))
        .filter_map(|line| {
            line.split(' ')
                .next()?
                .strip_prefix("id=")
                .map(str::to_owned)
        })
        .filter(|id| *id != me)
        .collect();
    assert_eq!(ids.len(), 1, "one queue connection: {list}");
    ids.into_iter().next().expect("one id")
}

#[tokio::test]
async fn a_readonly_answer_replaces_the_connection_so_a_promoted_server_is_written_again() {
    let (server, mut observer, queue) = connected().await;
    let primary = RedisServer::start(RedisOptions::default()).await;
    let before = queue_client_id(&mut observer).await;

    server.replicaof(Some(primary.port())).await;
    let refused = queue
        .push(&["task".to_owned()])
        .await
        .expect_err("a replica");
    assert!(format!("{refused:?}").contains("read only"), "{refused:?}");
    server.replicaof(None).await;
    queue
        .push(&["task".to_owned()])
        .await
        .expect("a primary again");

    let after = queue_client_id(&mut observer).await;
    assert_ne!(
        before, after,
        "READONLY made the queue open a new connection"
    );
}

#[tokio::test]
async fn callers_waiting_for_a_connection_that_cannot_be_opened_share_one_attempts_failure() {
    // Accepts connections and never answers: each attempt to open one
    // lasts until its timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("redis://{}", listener.local_addr().expect("addr"));
    let _hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let queue = queue_at(&url);

    let started = tokio::time::Instant::now();
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        join_all((0..20).map(|_| queue.ping())),
    )
    .await
    .expect("every caller answers");

    assert!(results.iter().all(Result::is_err));
    // One attempt for all 20 (taking turns, the last would wait 20 of them).
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
}
