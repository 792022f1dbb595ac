//! A job's priority: which of its shard's ready lists a pop serves first.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How soon a job is taken relative to the others ready in its shard
/// (the queue's pops, [`crate::queue::Queue::pop`], say by how much).
/// `normal` is every job's from before priorities, and is left out of the
/// stored task so that such tasks and new normal ones read the same.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Taken first, but for the lower priorities' share.
    High,
    /// The default.
    #[default]
    Normal,
    /// Taken when nothing higher is ready, and in its share of pops.
    Low,
}

impl Priority {
    /// Every priority, highest first.
    pub const ALL: [Self; 3] = [Self::High, Self::Normal, Self::Low];

    /// Parses `high`, `normal` or `low`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Self::High),
            "normal" => Ok(Self::Normal),
            "low" => Ok(Self::Low),
            other => Err(format!(
                "must be `high`, `normal` or `low`, not {:?}",
                other.chars().take(32).collect::<String>()
            )),
        }
    }

    /// The name, as the API, the task and the `priority` column spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// Whether this is `normal` (left out of the stored task).
    pub fn is_normal(&self) -> bool {
        *self == Self::Normal
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_parses_to_the_priority_it_spells_and_nothing_else_does() {
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Ok(p));
        }
        for bad in ["", "HIGH", "urgent", " low"] {
            assert!(Priority::parse(bad).is_err(), "{bad:?}");
        }
    }
}
