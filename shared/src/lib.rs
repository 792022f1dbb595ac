//! Code shared by the sendonce API and worker.
//!
//! # Layout
//!
//! - [`domain`]: the parsed types (email address, idempotency key, subject,
//!   body, task). Invalid values cannot be constructed.
//! - [`config`]: settings common to both binaries (`DATABASE_URL`,
//!   `REDIS_URL`, ...), read once through clap.
//! - [`queue`]: the Redis queue, processing lists, delayed set, worker leases,
//!   L1 dedup keys and the API's replay records. Its module docs list every
//!   key.
//! - [`store`]: the Postgres store: migrations, the L2 claim (the authority
//!   on "at most one effect per key"), job states and the dead-letter table.
//! - [`readiness`]: the `/readyz` check both binaries serve.
//! - [`telemetry`]: log and metrics set-up, the shutdown signal.

pub mod config;
pub mod domain;
pub mod queue;
pub mod readiness;
pub mod store;
pub mod telemetry;
