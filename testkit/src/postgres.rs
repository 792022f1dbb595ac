//! Throwaway Postgres databases, one per test.
//!
//! # Layout
//!
//! - [`TestDatabase`] creates `sendonce_test_<uuid>` through an admin
//!   connection and drops it again when the value is dropped.
//! - [`ADMIN_URL_ENV`] and [`DEFAULT_ADMIN_URL`] say which server is used.
//!
//! A database of its own per test lets tests run in parallel, and run twice
//! in a row, without seeing each other's rows or migrations.

use tokio_postgres::{Client, NoTls};
use url::Url;
use uuid::Uuid;

/// Environment variable holding the URL of a database on the server the test
/// databases are created on, as a role allowed to create databases.
pub const ADMIN_URL_ENV: &str = "TEST_DATABASE_ADMIN_URL";

/// The admin URL used when [`ADMIN_URL_ENV`] is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh, empty database that is dropped with this value.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a database with a unique name on the server named by
    /// [`ADMIN_URL_ENV`] (default [`DEFAULT_ADMIN_URL`]).
    ///
    /// # Panics
    ///
    /// If the admin URL is not a URL, or the server refuses the connection or
    /// the `CREATE DATABASE`.
    pub async fn create() -> Self {
        let admin_url =
            std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("sendonce_test_{}", Uuid::now_v7().simple());
        let url = database_url(&admin_url, &name);
        let admin = connect(&admin_url).await.unwrap_or_else(|err| {
            panic!("connect to the Postgres admin URL {admin_url} (set {ADMIN_URL_ENV}): {err}")
        });
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|err| panic!("create test database {name}: {err}"));
        Self {
            name,
            url,
            admin_url,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `postgres://` URL of the database: the admin URL with its database
    /// replaced.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a client on the database; its connection runs on a spawned task.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn connect(&self) -> Client {
        connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("connect to test database {}: {err}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Blocking on the test's own runtime from inside it would panic, and
        // it may already be gone; a thread with a runtime of its own works in
        // every case.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = connect(&admin_url).await?;
                // FORCE ends the sessions of pools the test leaked.
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
            })?;
            Ok(())
        })
        .join();
        // Panicking in Drop during an unwinding test would abort the process
        // and hide the test's own failure; a leftover database is harmless.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!(
                "warning: could not drop test database {}: {err:#}",
                self.name
            ),
            Err(_) => eprintln!(
                "warning: the thread dropping test database {} panicked",
                self.name
            ),
        }
    }
}

/// Connects and drives the connection on a spawned task, which ends when the
/// client is dropped.
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "test database connection ended with an error");
        }
    });
    Ok(client)
}

fn database_url(admin_url: &str, name: &str) -> String {
    let mut url = Url::parse(admin_url).unwrap_or_else(|err| {
        panic!("{ADMIN_URL_ENV} must be a postgres:// URL, got {admin_url:?}: {err}")
    });
    url.set_path(&format!("/{name}"));
    url.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url("postgres://u:p@db:5433/postgres?sslmode=disable", "t1"),
            "postgres://u:p@db:5433/t1?sslmode=disable"
        );
    }
}
