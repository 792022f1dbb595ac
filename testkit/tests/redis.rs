//! `RedisServer` starts, persists across restarts with `appendonly`, and
//! flushes.
//!
//! # Layout
//!
//! Helpers read and write one key with the `redis` crate, as the application
//! does; each test starts a server of its own.

use redis::AsyncCommands;
use sendonce_testkit::{RedisOptions, RedisServer};

async fn connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}

async fn get(server: &RedisServer, key: &str) -> Option<String> {
    connection(server).await.get(key).await.expect("GET")
}

async fn set(server: &RedisServer, key: &str, value: &str) {
    connection(server)
        .await
        .set::<_, _, ()>(key, value)
        .await
        .expect("SET");
}

#[tokio::test]
async fn appendonly_data_survives_a_restart() {
    let mut server = RedisServer::start(RedisOptions { appendonly: true }).await;
    let port = server.port();
    set(&server, "key", "value").await;

    server.stop();
    assert!(!server.is_running());
    assert!(
        redis::Client::open(server.url())
            .expect("valid Redis URL")
            .get_multiplexed_async_connection()
            .await
            .is_err()
    );

    server.restart().await;
    assert_eq!(server.port(), port);
    assert_eq!(get(&server, "key").await.as_deref(), Some("value"));

    server.flushall().await;
    assert_eq!(get(&server, "key").await, None);
}

#[tokio::test]
async fn without_appendonly_a_restart_starts_empty() {
    let mut server = RedisServer::start(RedisOptions::default()).await;
    set(&server, "key", "value").await;
    server.restart().await;
    assert_eq!(get(&server, "key").await, None);
}
