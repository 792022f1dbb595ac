//! End-to-end tests: the real API and worker against real Redis, Postgres
//! and an SMTP server over TCP. Each test has its own database, Redis key
//! prefix and SMTP server, so tests run in parallel and repeatedly.

mod attachments;
mod cancel;
mod console;
mod crash;
mod delivery;
mod dkim;
mod durable;
mod failures;
mod fencing;
mod helpers;
mod message_fields;
mod monitoring;
mod operations;
mod priorities;
mod recipients;
mod relays;
mod retention;
mod scheduled;
mod silent_postgres;
mod suppression;
mod tenants;
mod topologies;
mod webhooks;
mod window;
mod wire;
mod writes;
