//! One module per resource.

pub mod add_job;
pub mod health;
pub mod jobs;
