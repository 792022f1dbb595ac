//! One module per resource.

pub mod add_job;
pub mod add_jobs;
pub mod audit;
pub mod failed_jobs;
pub mod health;
pub mod jobs;
pub mod stats;
pub mod suppressions;
pub mod webhooks;
