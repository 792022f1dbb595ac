//! The sendonce HTTP API.
//!
//! # Layout
//!
//! - [`config`]: `ApiConfig`, every setting with its environment variable.
//! - [`handoff`]: pushing accepted jobs to Redis, retried in the
//!   background when Redis refuses.
//! - [`startup`]: `Application::build` binds the listener (port 0 in tests)
//!   and wires the routes; `run_until_stopped` drains on shutdown.
//! - [`auth`]: bearer-JWT verification, the `Authorized<scope>` extractor
//!   and scopes.
//! - [`rate_limit`]: per-subject limits on the write endpoints.
//! - [`limits`]: the request-body deadline and the connection cap.
//! - [`routes`]: one module per resource.
//! - [`paging`]: keyset pagination (limit and opaque cursor) for the
//!   listings.
//! - [`openapi`]: the OpenAPI 3.1 document served at `/openapi.json`.
//! - [`problem`]: `ApiError` and its RFC 9457 problem+json form.
//! - [`state`]: what handlers share.
//! - [`telemetry`]: metric names, the request-id and request-metrics
//!   middlewares, and each request's root span.

pub mod auth;
pub mod backlog;
pub mod config;
pub mod console;
pub mod handoff;
pub mod limits;
pub mod openapi;
pub mod paging;
pub mod problem;
pub mod rate_limit;
pub mod routes;
pub mod sender_policy;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use startup::Application;
