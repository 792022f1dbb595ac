//! Code shared by the sendonce API and worker.
//!
//! # Layout
//!
//! - [`domain`]: the parsed types (email address, idempotency key, subject,
//!   body, the headers a job adds, its metadata, its attachments, task).
//!   Invalid values cannot be constructed.
//! - [`config`]: settings common to both binaries (`DATABASE_URL`,
//!   `REDIS_URL`, ...), read once through clap.
//! - [`queue`]: the Redis queue, processing lists, delayed set, worker leases,
//!   L1 dedup keys and the epoch. Its module docs list every key.
//! - [`store`]: the Postgres store: migrations, accepted jobs (recorded before
//!   the API answers), the L2 claim (the authority on "at most one effect
//!   per key"), job states, the dead-letter table and the reconciler's scans.
//! - [`readiness`]: the `/readyz` check both binaries serve.
//! - [`telemetry`]: log and metrics set-up, the shutdown signal.

pub mod config;
pub mod domain;
pub mod queue;
pub mod readiness;
pub mod store;
pub mod telemetry;
