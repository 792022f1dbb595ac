//! A tenant's suppression list as the API reads and changes it: list, add
//! by hand, lift. The worker adds the addresses a server refused for good
//! (`bounce`), and checks the list before it sends.
//!
//! Addresses are suppression keys (`EmailAddress::suppression_key`: the
//! addr-spec lower-cased, its domain in A-labels); this module takes them
//! as they come.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::sql::Sql;
use super::{Store, StoreError};
use crate::domain::{Note, Tenant};

/// The columns of a [`Suppression`], in the order [`suppression_at`]
/// reads them.
macro_rules! columns {
    () => {
        "tenant, address, reason, smtp_reply, job_id, note, created_at"
    };
}

/// Ordered by tenant and address, after the entry ($2, $3).
const PAGE: Sql = Sql::new(
    concat!(
        "SELECT ",
        columns!(),
        " FROM suppressions
         WHERE ($1::text IS NULL OR tenant = $1)
           AND ($2::text IS NULL OR (tenant, address) > ($2::text, $3::text))
         ORDER BY tenant, address
         LIMIT $4"
    ),
    &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8],
);

/// Adds a `manual` entry unless the address is listed already, and answers
/// the entry either way, with whether this statement added it. (Both arms
/// read the statement's snapshot: the second sees the entry only when it
/// was there before.)
const ADD: Sql = Sql::new(
    concat!(
        "WITH added AS (
             INSERT INTO suppressions (tenant, address, reason, note)
             VALUES ($1, $2, 'manual', $3)
             ON CONFLICT (tenant, address) DO NOTHING
             RETURNING ",
        columns!(),
        ")
         SELECT *, true FROM added
         UNION ALL
         SELECT ",
        columns!(),
        ", false FROM suppressions
         WHERE tenant = $1 AND address = $2 AND NOT EXISTS (SELECT 1 FROM added)"
    ),
    &[Type::TEXT, Type::TEXT, Type::TEXT],
);

const GET: Sql = Sql::new(
    concat!(
        "SELECT ",
        columns!(),
        " FROM suppressions WHERE tenant = $1 AND address = $2"
    ),
    &[Type::TEXT, Type::TEXT],
);

const LIFT: Sql = Sql::new(
    "DELETE FROM suppressions WHERE tenant = $1 AND address = $2",
    &[Type::TEXT, Type::TEXT],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&PAGE, &ADD, &GET, &LIFT];

/// One entry of a suppression list: jobs to this address end `suppressed`
/// without an SMTP conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Suppression {
    /// Whose list it is on.
    pub tenant: String,
    /// The address: its addr-spec, lower-cased, the domain in A-labels.
    pub address: String,
    /// `bounce` (a server refused it for good) or `manual` (`POST
    /// /suppressions`).
    pub reason: String,
    /// For a bounce, the server's reply.
    pub smtp_reply: Option<String>,
    /// For a bounce, the job that was refused.
    pub job_id: Option<Uuid>,
    /// For a manual entry, the tenant's note.
    pub note: Option<String>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
}

/// What adding an address by hand did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// A new entry.
    New(Suppression),
    /// The address was listed already: its entry, unchanged (a bounce keeps
    /// its reply, an earlier note stays).
    Existing(Suppression),
}

fn suppression_at(r: &Row) -> Suppression {
    Suppression {
        tenant: r.get(0),
        address: r.get(1),
        reason: r.get(2),
        smtp_reply: r.get(3),
        job_id: r.get(4),
        note: r.get(5),
        created_at: r.get(6),
    }
}

impl Store {
    /// A page of suppression lists, by tenant and address, after the entry
    /// `after` (tenant, address); `tenant`'s, or every tenant's for `None`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn suppressions_page(
        &self,
        tenant: Option<&Tenant>,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<Suppression>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = self
            .rows(
                &conn,
                &PAGE,
                &[
                    &tenant.map(Tenant::as_str),
                    &after.map(|a| a.0),
                    &after.map(|a| a.1),
                    &limit,
                ],
            )
            .await?;
        Ok(rows.iter().map(suppression_at).collect())
    }

    /// Puts `address` on `tenant`'s list by hand. Idempotent: an address
    /// listed already keeps its entry as it is.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn add_suppression(
        &self,
        tenant: &Tenant,
        address: &str,
        note: Option<&Note>,
    ) -> Result<Added, StoreError> {
        let conn = self.pool.get().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&tenant.as_str(), &address, &note.map(Note::as_str)];
        // No row: another request added it after this statement's snapshot
        // was taken; the second try reads it.
        for _ in 0..2 {
            if let Some(row) = self.opt(&conn, &ADD, &params).await? {
                let entry = suppression_at(&row);
                return Ok(if row.get(7) {
                    Added::New(entry)
                } else {
                    Added::Existing(entry)
                });
            }
        }
        Err(StoreError::Corrupt(format!(
            "the suppression of {address} was neither added nor found"
        )))
    }

    /// `address`'s entry on `tenant`'s list, if it is listed.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn suppression(
        &self,
        tenant: &Tenant,
        address: &str,
    ) -> Result<Option<Suppression>, StoreError> {
        let conn = self.pool.get().await?;
        let row = self.opt(&conn, &GET, &[&tenant.as_str(), &address]).await?;
        Ok(row.as_ref().map(suppression_at))
    }

    /// Lifts `address`'s entry from `tenant`'s list: later jobs to it are
    /// sent. `false` when it was not listed.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn lift_suppression(
        &self,
        tenant: &Tenant,
        address: &str,
    ) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        let n = self
            .exec(&conn, &LIFT, &[&tenant.as_str(), &address])
            .await?;
        Ok(n == 1)
    }
}
