//! `TestDatabase` creates a private database and drops it again, inside or
//! outside a runtime.
//!
//! # Layout
//!
//! A helper asks the admin database whether a database exists; two tests
//! drop a `TestDatabase` inside and outside a tokio runtime.

use sendonce_testkit::TestDatabase;
use sendonce_testkit::postgres::{ADMIN_URL_ENV, DEFAULT_ADMIN_URL};

async fn database_exists(name: &str) -> bool {
    let admin_url = std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect as admin");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("query pg_database");
    row.get::<_, i64>(0) == 1
}

#[tokio::test]
async fn databases_are_private_and_dropped() {
    let first = TestDatabase::create().await;
    let second = TestDatabase::create().await;
    assert_ne!(first.name(), second.name());
    assert!(first.url().ends_with(first.name()), "{}", first.url());

    let client = first.connect().await;
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .expect("write to the first database");
    let other = second.connect().await;
    assert!(
        other.query("SELECT * FROM t", &[]).await.is_err(),
        "the second database must not see the first one's table"
    );

    // An open connection must not keep the database alive.
    let name = first.name().to_owned();
    drop(first);
    assert!(!database_exists(&name).await);
    drop(client);
}

#[test]
fn drop_works_outside_a_runtime() {
    let runtime = tokio::runtime::Runtime::new().expect("build runtime");
    let database = runtime.block_on(TestDatabase::create());
    let name = database.name().to_owned();
    drop(runtime);

    drop(database);

    let runtime = tokio::runtime::Runtime::new().expect("build runtime");
    assert!(!runtime.block_on(database_exists(&name)));
}
