//! The headers a client adds to its message (`List-Unsubscribe`,
//! `In-Reply-To`, `X-*`, ...): an allow-list, so that a job can never
//! change who its message is from or to, its `Message-ID` (the
//! idempotency key's), its MIME structure or its trace.
//!
//! Values are one line of text. Non-ASCII is accepted only where RFC 2047
//! encoded words may stand, in the unstructured `X-*` and `Comments`
//! (lettre writes them as encoded words); the structured headers (URIs,
//! message ids, keywords, tokens) must be printable ASCII, since an encoded
//! word there would change what they say.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{InvalidEntry, InvalidValue};

/// Headers whose values are structured: printable ASCII only.
const STRUCTURED: [&str; 14] = [
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "List-Help",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "Precedence",
    "Keywords",
    "Feedback-ID",
];

/// The allow-list, in words, for the error that refuses another header.
const ALLOWED: &str = "List-Unsubscribe, List-Unsubscribe-Post, List-Id, List-Help, \
    List-Subscribe, List-Post, List-Owner, List-Archive, In-Reply-To, References, \
    Auto-Submitted, Precedence, Keywords, Feedback-ID, Comments and X-*";

/// Headers sendonce writes itself, or that would change the sender, the
/// recipients, the message's identity or its trace. Refused by name even
/// if a later allow-list would admit them.
const RESERVED: [&str; 12] = [
    "Message-ID",
    "From",
    "To",
    "Cc",
    "Bcc",
    "Date",
    "Subject",
    "Sender",
    "Reply-To",
    "Return-Path",
    "DKIM-Signature",
    "Received",
];

/// Prefixes of reserved headers: the MIME structure is lettre's.
const RESERVED_PREFIXES: [&str; 2] = ["MIME-", "Content-"];

/// Whether `name` is reserved, in any case.
fn reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
        || RESERVED_PREFIXES
            .iter()
            .any(|p| starts_with_ignore_case(name, p))
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Whether `name`'s value is unstructured text, which may be non-ASCII.
fn unstructured(name: &str) -> bool {
    starts_with_ignore_case(name, "X-") || name.eq_ignore_ascii_case("Comments")
}

/// Headers added to a message, by name as the client spelled it; unique
/// without regard to case. Ordered by name, so a message built from them
/// is the same bytes on every attempt and the request's fingerprint does
/// not depend on the order the client gave them in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct CustomHeaders(BTreeMap<String, String>);

impl CustomHeaders {
    /// Most headers one job may add.
    pub const MAX_COUNT: usize = 50;
    /// Longest name: lettre's limit, well within a line.
    pub const MAX_NAME_LEN: usize = 76;
    /// RFC 5322 §2.1.1: `Name: value` must fit one line of this many
    /// octets (lettre folds at spaces, but a long word would stay whole).
    pub const MAX_LINE: usize = 998;

    /// Parses `(name, value)` pairs, as given (a duplicate name is
    /// refused, not overwritten).
    pub fn parse(
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, InvalidEntry> {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.len() > Self::MAX_COUNT {
            return Err(InvalidEntry::TooMany {
                max: Self::MAX_COUNT,
                given: entries.len(),
            });
        }
        let mut headers = BTreeMap::new();
        for (name, value) in entries {
            check_name(&name)?;
            if headers
                .keys()
                .any(|n: &String| n.eq_ignore_ascii_case(&name))
            {
                return Err(InvalidEntry::Duplicate(name));
            }
            check_value(&name, &value).map_err(|problem| InvalidEntry::Value {
                name: name.clone(),
                problem,
            })?;
            headers.insert(name, value);
        }
        Ok(Self(headers))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each `(name, value)`, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// An RFC 5322 field name (printable ASCII but `:`), allowed, not reserved.
fn check_name(name: &str) -> Result<(), InvalidEntry> {
    let ftext = |b: u8| b.is_ascii_graphic() && b != b':';
    if name.is_empty() || name.len() > CustomHeaders::MAX_NAME_LEN || !name.bytes().all(ftext) {
        return Err(InvalidEntry::bad_name(
            name,
            "a header field name (1 to 76 printable ASCII characters, no colon or space)",
        ));
    }
    if reserved(name) {
        return Err(InvalidEntry::Reserved(name.to_owned()));
    }
    if !unstructured(name) && !STRUCTURED.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        return Err(InvalidEntry::NotAllowed {
            name: name.to_owned(),
            allowed: ALLOWED,
        });
    }
    Ok(())
}

/// One line, without control characters (no header injection), within
/// the line limit; printable ASCII unless the header is unstructured.
fn check_value(name: &str, value: &str) -> Result<(), InvalidValue> {
    if value.trim().is_empty() {
        return Err(InvalidValue::Empty);
    }
    let max = CustomHeaders::MAX_LINE - name.len() - ": ".len();
    if value.len() > max {
        return Err(InvalidValue::TooLong { max });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidValue::ControlCharacter);
    }
    if !unstructured(name) && !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(InvalidValue::NotPrintableAscii);
    }
    Ok(())
}

impl TryFrom<BTreeMap<String, String>> for CustomHeaders {
    type Error = InvalidEntry;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        Self::parse(map)
    }
}

impl From<CustomHeaders> for BTreeMap<String, String> {
    fn from(headers: CustomHeaders) -> Self {
        headers.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> Result<CustomHeaders, InvalidEntry> {
        CustomHeaders::parse([(name.to_owned(), value.to_owned())])
    }

    #[test]
    fn allowed_headers_parse_in_any_case() {
        for (name, value) in [
            (
                "List-Unsubscribe",
                "<https://example.com/u/42>, <mailto:u@example.com>",
            ),
            ("list-unsubscribe-post", "List-Unsubscribe=One-Click"),
            ("In-Reply-To", "<a@example.com>"),
            ("References", "<a@example.com> <b@example.com>"),
            ("X-Campaign", "spring"),
            ("x-note", "Grüße"),
            ("Comments", "über"),
            ("Auto-Submitted", "auto-generated"),
        ] {
            assert!(one(name, value).is_ok(), "{name}: {value}");
        }
    }

    #[test]
    fn reserved_headers_are_refused_by_name_in_any_case() {
        for name in [
            "Message-ID",
            "from",
            "TO",
            "Cc",
            "Bcc",
            "Date",
            "Subject",
            "Sender",
            "Reply-To",
            "Return-Path",
            "MIME-Version",
            "content-type",
            "Content-Transfer-Encoding",
            "DKIM-Signature",
            "Received",
        ] {
            assert_eq!(
                one(name, "x"),
                Err(InvalidEntry::Reserved(name.to_owned())),
                "{name}"
            );
        }
        assert!(matches!(
            one("Resent-From", "x"),
            Err(InvalidEntry::NotAllowed { .. })
        ));
    }

    #[test]
    fn names_are_field_names_and_unique_without_regard_to_case() {
        for bad in ["", "X-A B", "X-A:", "X-A\r\nBcc", "X-É", &"X".repeat(77)] {
            assert!(
                matches!(one(bad, "x"), Err(InvalidEntry::BadName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            CustomHeaders::parse([("X-A".into(), "1".into()), ("x-a".into(), "2".into())]),
            Err(InvalidEntry::Duplicate("x-a".into()))
        );
    }

    #[test]
    fn values_are_one_line_within_the_limit() {
        let problem = |name: &str, value: &str| match one(name, value) {
            Err(InvalidEntry::Value { problem, .. }) => Some(problem),
            _ => None,
        };
        for bad in [
            "a\r\nBcc: eve@example.com",
            "a\nb",
            "a\0b",
            "a\tb",
            "a\u{85}b",
        ] {
            assert_eq!(
                problem("X-A", bad),
                Some(InvalidValue::ControlCharacter),
                "{bad:?}"
            );
        }
        assert_eq!(problem("X-A", " "), Some(InvalidValue::Empty));
        assert!(one("X-A", &"a".repeat(998 - 5)).is_ok());
        assert_eq!(
            problem("X-A", &"a".repeat(998 - 4)),
            Some(InvalidValue::TooLong { max: 993 })
        );
        assert_eq!(
            problem("List-Id", "Liste für alle <l.example.com>"),
            Some(InvalidValue::NotPrintableAscii)
        );
    }

    #[test]
    fn at_most_fifty() {
        let many = |n: usize| (0..n).map(|i| (format!("X-H{i}"), "v".to_owned()));
        assert!(CustomHeaders::parse(many(50)).is_ok());
        assert_eq!(
            CustomHeaders::parse(many(51)),
            Err(InvalidEntry::TooMany { max: 50, given: 51 })
        );
    }

    #[test]
    fn the_order_given_does_not_matter() {
        let a = CustomHeaders::parse([("X-B".into(), "2".into()), ("X-A".into(), "1".into())]);
        let b = CustomHeaders::parse([("X-A".into(), "1".into()), ("X-B".into(), "2".into())]);
        assert_eq!(a, b);
    }
}
