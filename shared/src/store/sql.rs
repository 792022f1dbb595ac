//! Running the store's statements, the same way behind a transaction pooler
//! as on a direct connection, each within a deadline.
//!
//! Every statement is a [`Sql`]: its text and the types of its parameters.
//! On a direct connection ([`Pooler::None`]) it is prepared once per
//! connection and cached, as before (the claim and acceptance hot path
//! stays as fast as it was). Behind a transaction pooler
//! ([`Pooler::Transaction`]) a named statement may be run, or collide, on
//! another client's server connection, so each statement goes out unnamed
//! with its types (`Parse`, `Bind`, `Execute` and `Sync` in one round trip)
//! and leaves nothing on the server. Statements inside a transaction always
//! go unnamed: they are off the hot path.
//!
//! Each call is bounded on the client too: a server that stopped answering
//! altogether (a stopped process, a host gone) never triggers its own
//! `statement_timeout`, and TCP keeps acknowledging for a stopped process.

use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use futures::{TryStreamExt, pin_mut};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Transaction};

use super::connection::Pooler;
use super::{Store, StoreError};

/// Parameters as tokio-postgres takes them.
pub(crate) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A statement and the types of its parameters, `$1` first.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) text: &'static str,
    pub(crate) types: &'static [Type],
}

impl Sql {
    pub(crate) const fn new(text: &'static str, types: &'static [Type]) -> Self {
        Self { text, types }
    }

    fn typed<'a>(&self, params: &'a Params<'a>) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
        debug_assert_eq!(params.len(), self.types.len(), "{}", self.text);
        params
            .iter()
            .copied()
            .zip(self.types.iter().cloned())
            .collect()
    }
}

impl Store {
    /// Runs `work` within the client-side deadline.
    pub(crate) async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match self.deadline {
            None => Ok(work.await?),
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(done) => Ok(done?),
                Err(_) => Err(StoreError::Timeout(limit)),
            },
        }
    }

    /// The rows of `sql`.
    pub(crate) async fn rows(
        &self,
        conn: &ClientWrapper,
        sql: &Sql,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        self.bounded(async {
            match self.pooler {
                Pooler::None => {
                    let statement = conn.prepare_cached(sql.text).await?;
                    conn.query(&statement, params).await
                }
                Pooler::Transaction => conn.query_typed(sql.text, &sql.typed(params)).await,
            }
        })
        .await
    }

    /// The row of `sql`, if any (more than one is an error).
    pub(crate) async fn opt(
        &self,
        conn: &ClientWrapper,
        sql: &Sql,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        self.bounded(async {
            match self.pooler {
                Pooler::None => {
                    let statement = conn.prepare_cached(sql.text).await?;
                    conn.query_opt(&statement, params).await
                }
                Pooler::Transaction => conn.query_typed_opt(sql.text, &sql.typed(params)).await,
            }
        })
        .await
    }

    /// The one row of `sql`.
    pub(crate) async fn one(
        &self,
        conn: &ClientWrapper,
        sql: &Sql,
        params: &Params<'_>,
    ) -> Result<Row, StoreError> {
        self.bounded(async {
            match self.pooler {
                Pooler::None => {
                    let statement = conn.prepare_cached(sql.text).await?;
                    conn.query_one(&statement, params).await
                }
                Pooler::Transaction => conn.query_typed_one(sql.text, &sql.typed(params)).await,
            }
        })
        .await
    }

    /// The number of rows `sql` changed.
    pub(crate) async fn exec(
        &self,
        conn: &ClientWrapper,
        sql: &Sql,
        params: &Params<'_>,
    ) -> Result<u64, StoreError> {
        self.bounded(async {
            match self.pooler {
                Pooler::None => {
                    let statement = conn.prepare_cached(sql.text).await?;
                    conn.execute(&statement, params).await
                }
                Pooler::Transaction => {
                    let stream = conn.query_typed_raw(sql.text, sql.typed(params)).await?;
                    affected(stream).await
                }
            }
        })
        .await
    }

    /// The rows of `sql` inside `tx` (unnamed, whatever the pooler).
    pub(crate) async fn tx_rows(
        &self,
        tx: &Transaction<'_>,
        sql: &Sql,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        self.bounded(tx.query_typed(sql.text, &sql.typed(params)))
            .await
    }

    /// The row of `sql` inside `tx`, if any.
    pub(crate) async fn tx_opt(
        &self,
        tx: &Transaction<'_>,
        sql: &Sql,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        self.bounded(tx.query_typed_opt(sql.text, &sql.typed(params)))
            .await
    }

    /// Opens a transaction on `conn`, within the deadline.
    pub(crate) async fn begin<'c>(
        &self,
        conn: &'c mut ClientWrapper,
    ) -> Result<Transaction<'c>, StoreError> {
        let client: &'c mut tokio_postgres::Client = conn;
        self.bounded(client.transaction()).await
    }

    /// Commits `tx`, within the deadline.
    pub(crate) async fn commit(&self, tx: Transaction<'_>) -> Result<(), StoreError> {
        self.bounded(tx.commit()).await
    }
}

/// Drains `stream` and answers how many rows its statement changed.
async fn affected(stream: tokio_postgres::RowStream) -> Result<u64, tokio_postgres::Error> {
    pin_mut!(stream);
    while stream.try_next().await?.is_some() {}
    Ok(stream.rows_affected().unwrap_or(0))
}

/// The deadline of a statement on the client: the server's own timeout
/// plus a grace, or none when the statement timeout is off.
pub(crate) fn client_deadline(statement_timeout: Duration) -> Option<Duration> {
    (!statement_timeout.is_zero()).then(|| statement_timeout + super::connection::CLIENT_GRACE)
}
