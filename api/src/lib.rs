//! The sendonce HTTP API.
//!
//! # Layout
//!
//! - [`config`]: `ApiConfig`, every setting with its environment variable.
//! - [`startup`]: `Application::build` binds the listener (port 0 in tests)
//!   and wires the routes; `run_until_stopped` drains on shutdown.
//! - [`auth`]: bearer-JWT verification, the `Caller` extractor and scopes.
//! - [`routes`]: one module per resource.
//! - [`problem`]: `ApiError` and its RFC 9457 problem+json form.
//! - [`state`]: what handlers share.
//! - [`telemetry`]: metric names, the request-id and request-metrics
//!   middlewares, and each request's root span.

pub mod auth;
pub mod config;
pub mod problem;
pub mod routes;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use startup::Application;
