//! Keyset pagination, as every listing pages: `?limit=` 1 to 500 (default
//! 50), and an opaque `?cursor=` naming the key of the last row of the page
//! before, so rows that arrive while a client pages never shift or repeat a
//! page. Most listings are newest first on an id that only grows; the key
//! is any value that reads back from its text (an id, a UUID, a name).

use std::fmt::Display;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::problem::ApiError;

/// Page size bounds.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// Where a page starts and how many rows it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyset<K = i64> {
    /// The key of the previous page's last row: this page holds the rows
    /// after it in the listing's order (`None`: from the first).
    pub before: Option<K>,
    /// Rows a page holds.
    pub limit: i64,
}

impl<K: FromStr + Display> Keyset<K> {
    /// Reads `?limit=` and `?cursor=`; an invalid one is refused naming it.
    pub fn parse(limit: Option<i64>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::InvalidField {
                field: "limit",
                reason: format!("must be between 1 and {MAX_LIMIT}"),
            });
        }
        let before = cursor.map(decode_cursor).transpose()?;
        Ok(Self { before, limit })
    }

    /// How many rows to fetch: one more than a page, which tells whether
    /// another page exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page in `rows` (fetched in the listing's order, [`Keyset::fetch`]
    /// of them at most) and the cursor of the next page, `None` on the last.
    pub fn page<T>(self, mut rows: Vec<T>, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
        if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            let next = rows.last().map(|last| encode_cursor(&key(last)));
            (rows, next)
        } else {
            (rows, None)
        }
    }
}

fn encode_cursor(key: &impl Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{key}"))
}

fn decode_cursor<K: FromStr + Display>(cursor: &str) -> Result<K, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| s.strip_prefix("v1:")?.parse::<K>().ok())
        .filter(|key| encode_cursor(key) == cursor)
        .ok_or_else(|| ApiError::InvalidField {
            field: "cursor",
            reason: "is not a cursor this API issued".into(),
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_page_cut_from_one_row_too_many_names_its_last_row_as_the_next_cursor() {
        let keyset = Keyset::<i64>::parse(Some(2), None).expect("a keyset");

        let (full, next) = keyset.page(vec![9, 7, 4], |id| *id);
        let (last, none) = keyset.page(vec![3, 1], |id| *id);

        assert_eq!(full, [9, 7]);
        assert_eq!(
            next.map(|cursor| decode_cursor::<i64>(&cursor).ok()),
            Some(Some(7))
        );
        assert_eq!((last, none), (vec![3, 1], None));
    }

    proptest! {
        #[test]
        fn issued_cursors_decode_to_their_id(id in any::<i64>()) {
            prop_assert_eq!(decode_cursor::<i64>(&encode_cursor(&id)).ok(), Some(id));
        }

        #[test]
        fn a_cursor_is_accepted_only_in_the_form_this_api_issues(padding in "[+]|0{1,3}", id in 0..i64::MAX) {
            let forged = URL_SAFE_NO_PAD.encode(format!("v1:{padding}{id}"));
            prop_assert!(decode_cursor::<i64>(&forged).is_err());
        }

        #[test]
        fn any_text_is_refused_as_a_cursor_or_is_one_this_api_issues(s in "\\PC{0,40}|[A-Za-z0-9_-]{0,40}") {
            if let Ok(id) = decode_cursor::<i64>(&s) {
                prop_assert_eq!(encode_cursor(&id), s);
            }
        }
    }
}
