//! `MAX_QUEUED_PER_TENANT`: a cap on each tenant's unfinished jobs, so that
//! one application's backlog cannot fill the queue the others share.
//!
//! The count comes from Postgres, where every accepted job is, and is kept
//! per tenant for [`FRESH`]; jobs this process admits meanwhile are added
//! to it. So a tenant can pass the cap by what the other API replicas admit
//! within one [`FRESH`], and no more.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sendonce_shared::domain::Tenant;
use sendonce_shared::store::Store;
use tokio::time::Instant;

use crate::problem::ApiError;

/// How long a tenant's count is used before it is counted again.
pub const FRESH: Duration = Duration::from_secs(1);

/// The cap, and the counts last read.
#[derive(Debug)]
pub struct Backlog {
    store: Store,
    max: u64,
    counts: Mutex<HashMap<Tenant, (Instant, u64)>>,
}

impl Backlog {
    /// At most `max` unfinished jobs per tenant.
    pub fn new(store: Store, max: u64) -> Self {
        Self {
            store,
            max,
            counts: Mutex::default(),
        }
    }

    /// Admits `n` more jobs of `tenant`, or answers 429 (`Retry-After: 1`)
    /// when they would take it past the cap.
    pub async fn admit(&self, tenant: &Tenant, n: usize) -> Result<(), ApiError> {
        let cached = self
            .lock()
            .get(tenant)
            .filter(|(counted, _)| counted.elapsed() < FRESH)
            .map(|&(_, count)| count);
        let unfinished = match cached {
            Some(count) => count,
            None => self
                .store
                .unfinished(tenant)
                .await
                .map_err(ApiError::unavailable)?,
        };
        let admitted = unfinished.saturating_add(n as u64);
        if admitted > self.max {
            return Err(ApiError::BacklogFull {
                unfinished,
                max: self.max,
            });
        }
        let mut counts = self.lock();
        match (cached, counts.get_mut(tenant)) {
            // Still fresh: count these in (another request may have too).
            (Some(_), Some(entry)) => entry.1 = entry.1.saturating_add(n as u64),
            _ => {
                counts.insert(tenant.clone(), (Instant::now(), admitted));
            }
        }
        // Tenants that stopped posting are forgotten.
        if counts.len() > 10_000 {
            counts.retain(|_, (counted, _)| counted.elapsed() < FRESH);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tenant, (Instant, u64)>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
