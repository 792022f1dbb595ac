//! API tests against real Redis and Postgres: authentication, validation and
//! enqueueing. Delivery end to end is tested in the worker crate.

mod add_job;
mod add_jobs;
mod attachments;
mod audit;
mod auth;
mod cancel;
mod console;
mod durable;
mod helpers;
mod hostile_input;
mod logs;
mod message_fields;
mod operations;
mod recipients;
mod scheduled;
mod sender_policy;
mod shutdown;
mod slow_clients;
mod startup;
mod stats;
mod suppressions;
mod tenants;
mod webhooks;
