//! One module per resource.

pub mod add_job;
pub mod failed_jobs;
pub mod health;
pub mod jobs;
