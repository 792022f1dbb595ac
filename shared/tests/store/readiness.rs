//! The readiness check both binaries serve on `/readyz`, against a real
//! Redis and Postgres, a closed port and a server that never answers.

use std::time::Duration;

use secrecy::SecretString;
use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_shared::readiness::{self, NotReady};
use sendonce_shared::store::{self, Store};
use sendonce_testkit::{TestDatabase, unique_prefix};
use tokio::net::TcpListener;

/// Longer than any answer may take: a check that hangs fails the test
/// instead of stalling the suite.
const DEADLINE: Duration = Duration::from_secs(30);

fn queue_at(url: &str) -> Queue {
    let pool = queue::connect(&SecretString::from(url.to_owned()), &RedisTls::default())
        .expect("Redis pool");
    Queue::new(pool, &unique_prefix())
}

fn store_at(url: &str) -> Store {
    Store::new(store::connect(&SecretString::from(url.to_owned()), 2).expect("Postgres pool"))
}

fn shared_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn check(queue: &Queue, store: &Store) -> Result<(), NotReady> {
    tokio::time::timeout(DEADLINE, readiness::check(queue, store))
        .await
        .expect("the readiness check answers")
}

#[tokio::test]
async fn ready_when_redis_and_postgres_answer() {
    let db = TestDatabase::create().await;

    let result = check(&queue_at(&shared_redis_url()), &store_at(db.url())).await;

    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn each_dependency_that_refuses_connections_is_named() {
    let db = TestDatabase::create().await;
    let port = closed_port().await;
    let (redis_down, postgres_down) = (
        queue_at(&format!("redis://127.0.0.1:{port}")),
        store_at(&format!("postgres://postgres@127.0.0.1:{port}/sendonce")),
    );

    let only_postgres = check(&queue_at(&shared_redis_url()), &postgres_down).await;
    let both = check(&redis_down, &postgres_down).await;
    let only_redis = check(&redis_down, &store_at(db.url())).await;

    assert_eq!(only_postgres.expect_err("not ready").down, ["postgres"]);
    assert_eq!(only_redis.expect_err("not ready").down, ["redis"]);
    let both = both.expect_err("not ready");
    assert_eq!(both.down, ["redis", "postgres"]);
    assert_eq!(
        both.to_string(),
        format!(
            "redis and postgres did not answer within {:?}",
            readiness::TIMEOUT
        )
    );
}

#[tokio::test]
async fn a_redis_that_accepts_but_never_answers_is_down_after_the_timeout() {
    let db = TestDatabase::create().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("redis://{}", listener.local_addr().expect("addr"));
    let _hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });

    let result = check(&queue_at(&url), &store_at(db.url())).await;

    assert_eq!(result.expect_err("not ready").down, ["redis"]);
}
