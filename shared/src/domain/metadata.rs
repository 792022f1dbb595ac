//! A job's metadata: the client's own labels (`{"user_id": "42"}`), kept
//! with the task, returned by `GET /jobs/{id}` and the dead-letter listing
//! (which filters on it), and never put in the message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{InvalidEntry, InvalidValue};

/// Labels by key; keys are case-sensitive, as the filter that matches them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Most keys.
    pub const MAX_KEYS: usize = 20;
    /// Longest key, in characters of `[A-Za-z0-9_.-]`.
    pub const MAX_KEY_LEN: usize = 40;
    /// Longest value, in bytes.
    pub const MAX_VALUE_LEN: usize = 500;
    /// Most bytes of keys and values together.
    pub const MAX_TOTAL: usize = 4096;

    /// Parses `(key, value)` pairs, as given (a duplicate key is refused,
    /// not overwritten).
    pub fn parse(
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, InvalidEntry> {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.len() > Self::MAX_KEYS {
            return Err(InvalidEntry::TooMany {
                max: Self::MAX_KEYS,
                given: entries.len(),
            });
        }
        let mut map = BTreeMap::new();
        let mut total = 0;
        for (key, value) in entries {
            Self::check_key(&key)?;
            if map.contains_key(&key) {
                return Err(InvalidEntry::Duplicate(key));
            }
            check_value(&value).map_err(|problem| InvalidEntry::Value {
                name: key.clone(),
                problem,
            })?;
            total += key.len() + value.len();
            map.insert(key, value);
        }
        if total > Self::MAX_TOTAL {
            return Err(InvalidEntry::TooLarge {
                max: Self::MAX_TOTAL,
                given: total,
            });
        }
        Ok(Self(map))
    }

    /// Whether a key is 1 to [`Self::MAX_KEY_LEN`] characters of
    /// `[A-Za-z0-9_.-]`.
    pub fn check_key(key: &str) -> Result<(), InvalidEntry> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
        if key.is_empty() || key.len() > Self::MAX_KEY_LEN || !key.bytes().all(allowed) {
            return Err(InvalidEntry::bad_name(
                key,
                "a metadata key (1 to 40 characters of A-Z, a-z, 0-9, `_`, `.`, `-`)",
            ));
        }
        Ok(())
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels, by key.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// At most [`Metadata::MAX_VALUE_LEN`] bytes without control characters
/// (NUL cannot be stored in Postgres' `jsonb`; the rest would make the
/// value print differently in a log or a terminal).
fn check_value(value: &str) -> Result<(), InvalidValue> {
    if value.len() > Metadata::MAX_VALUE_LEN {
        return Err(InvalidValue::TooLong {
            max: Metadata::MAX_VALUE_LEN,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidValue::ControlCharacter);
    }
    Ok(())
}

impl TryFrom<BTreeMap<String, String>> for Metadata {
    type Error = InvalidEntry;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        Self::parse(map)
    }
}

impl From<Metadata> for BTreeMap<String, String> {
    fn from(metadata: Metadata) -> Self {
        metadata.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keys_are_short_and_plain() {
        assert!(Metadata::parse(pairs(&[("user_id", "42"), ("plan.tier-2", "")])).is_ok());
        for bad in ["", "user id", "user:id", "ключ", &"k".repeat(41)] {
            assert!(
                matches!(
                    Metadata::parse(pairs(&[(bad, "v")])),
                    Err(InvalidEntry::BadName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn values_and_the_whole_are_bounded() {
        assert!(Metadata::parse(pairs(&[("k", &"é".repeat(250))])).is_ok());
        assert_eq!(
            Metadata::parse(pairs(&[("k", &"v".repeat(501))])),
            Err(InvalidEntry::Value {
                name: "k".into(),
                problem: InvalidValue::TooLong { max: 500 }
            })
        );
        assert!(matches!(
            Metadata::parse(pairs(&[("k", "a\0b")])),
            Err(InvalidEntry::Value {
                problem: InvalidValue::ControlCharacter,
                ..
            })
        ));
        let big: Vec<_> = (0..9).map(|i| (format!("k{i}"), "v".repeat(500))).collect();
        assert!(matches!(
            Metadata::parse(big),
            Err(InvalidEntry::TooLarge { max: 4096, .. })
        ));
        let many: Vec<_> = (0..21).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(
            Metadata::parse(many),
            Err(InvalidEntry::TooMany { max: 20, given: 21 })
        );
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        assert_eq!(
            Metadata::parse(pairs(&[("k", "1"), ("k", "2")])),
            Err(InvalidEntry::Duplicate("k".into()))
        );
    }
}
