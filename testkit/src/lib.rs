//! Test support for sendonce's integration and chaos tests.
//!
//! # Layout
//!
//! - [`smtp`]: an SMTP server that records what it receives and injects
//!   faults chosen by the recipient address; the `sendonce-smtp-sink` binary
//!   runs it as a separate process.
//! - [`postgres`]: a throwaway database per test, and private Postgres
//!   clusters for tests that stall Postgres itself.
//! - [`redis`]: key prefixes for the shared Redis, and private
//!   `redis-server` processes for tests that stop or flush Redis; private
//!   sentinels and clusters.
//! - [`ca`]: a throwaway CA issuing server certificates (Postgres TLS tests).
//! - [`tls`]: a CA, server and client certificates for TLS tests.
//! - [`metrics`]: reading one series from a Prometheus text exposition.
//! - [`monitoring`]: the metric names the Grafana dashboard and the alert
//!   rules use, and the names an exposition holds.
//! - [`webhooks`]: a webhook receiver that records every request and
//!   answers as told (a status, a seeded fraction of failures, a stall, or
//!   down and back on the same port).
//! - [`process`]: child processes with captured output (for log tests), and
//!   [`eventually`], the poller tests wait with.
//!
//! Helpers panic with a message instead of returning errors where a test
//! could do nothing but fail, so tests stay short.

pub mod ca;
pub mod metrics;
pub mod monitoring;
pub mod pgbouncer;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod smtp;
pub mod tls;
pub mod webhooks;

pub use metrics::sample;
pub use pgbouncer::PgBouncer;
pub use postgres::{PostgresServer, TestDatabase};
pub use process::{CapturedChild, eventually};
pub use redis::{RedisCluster, RedisOptions, RedisSentinel, RedisServer, unique_prefix};
pub use smtp::{Fault, MailEvent, ReceivedMail, SmtpServer};
pub use webhooks::{ReceivedRequest, WebhookReceiver};
