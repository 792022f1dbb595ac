//! A job's attachments: files sent with its message, each with a filename
//! and a content type that end up in MIME headers (so neither may break out
//! of them), its content as the base64 text the client sent, and, for a
//! part the HTML shows inline (`<img src="cid:logo">`), a `Content-ID`.
//!
//! The content stays base64 in the task, so the JSON that travels through
//! Redis and Postgres is as compact as the request; the worker decodes it
//! when it builds the message. Parsing decodes it once to check it and to
//! learn its size, which the API holds against `MAX_MESSAGE_BYTES`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::InvalidValue;

/// Why a job's attachments were refused. As with [`InvalidValue`], the
/// caller names the field; this names the entry and its member at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAttachment {
    /// More attachments than allowed.
    #[error("must hold at most {max} attachments, not {given}")]
    TooMany {
        /// The limit.
        max: usize,
        /// How many there were.
        given: usize,
    },
    /// One member of one attachment was refused.
    #[error("entry {index}: `{member}` {problem}")]
    Member {
        /// The attachment's position in the array.
        index: usize,
        /// `filename`, `content_type`, `content` or `content_id`.
        member: &'static str,
        /// What is wrong with it.
        problem: InvalidValue,
    },
    /// A `content_id` an earlier attachment has (in any case): a `cid:`
    /// reference could not tell them apart.
    #[error("entry {index}: `content_id` {content_id:?} is given to an earlier attachment too")]
    DuplicateContentId {
        /// The attachment's position in the array.
        index: usize,
        /// The id.
        content_id: String,
    },
}

/// An attachment as the client sends it, before it is checked: the wire
/// form of [`Attachment`].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Attachment)]
pub struct RawAttachment {
    /// The file's name as recipients see it: 1 to 255 characters, no
    /// control or bidirectional formatting characters, no `"`, `\` or `/`.
    /// Non-ASCII is sent RFC 2231-encoded.
    #[schema(min_length = 1, max_length = 255, example = "invoice-42.pdf")]
    pub filename: String,
    /// Its media type, `type/subtype` with optional `; name=value`
    /// parameters, printable ASCII; not `multipart/*` or `message/*`.
    #[schema(max_length = 255, example = "application/pdf")]
    pub content_type: String,
    /// The file's bytes, standard base64 (RFC 4648 §4, padded, one line).
    #[schema(content_encoding = "base64")]
    pub content: String,
    /// Makes it an inline part of the message, which the HTML refers to as
    /// `cid:<content_id>`: 1 to 100 characters of `A-Z a-z 0-9 . _ @ -`,
    /// unique (in any case) among the job's attachments.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._@-]{1,100}$")]
    pub content_id: Option<String>,
}

/// One checked attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    filename: String,
    content_type: String,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_id: Option<String>,
    /// The decoded content's length, learnt when it was checked.
    #[serde(skip)]
    size: usize,
}

impl Attachment {
    /// Longest filename, in characters.
    pub const MAX_FILENAME_CHARS: usize = 255;
    /// Longest content type, in bytes.
    pub const MAX_CONTENT_TYPE_LEN: usize = 255;
    /// Longest content id, in bytes.
    pub const MAX_CONTENT_ID_LEN: usize = 100;

    /// Checks each member of `raw`, naming the one at fault.
    fn parse(raw: RawAttachment) -> Result<Self, (&'static str, InvalidValue)> {
        check_filename(&raw.filename).map_err(|e| ("filename", e))?;
        check_content_type(&raw.content_type).map_err(|e| ("content_type", e))?;
        let size = STANDARD
            .decode(&raw.content)
            .map_err(|_| ("content", InvalidValue::NotBase64))?
            .len();
        if let Some(id) = &raw.content_id {
            check_content_id(id).map_err(|e| ("content_id", e))?;
        }
        Ok(Self {
            filename: raw.filename,
            content_type: raw.content_type,
            content: raw.content,
            content_id: raw.content_id,
            size,
        })
    }

    /// The file's name.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Its media type, as given.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Its `Content-ID`, when it is an inline part.
    pub fn content_id(&self) -> Option<&str> {
        self.content_id.as_deref()
    }

    /// Its bytes, decoded.
    pub fn bytes(&self) -> Vec<u8> {
        // Checked when parsed, so it decodes.
        STANDARD.decode(&self.content).unwrap_or_default()
    }

    /// How many bytes it holds, decoded.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// A job's attachments, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<RawAttachment>")]
pub struct Attachments(Vec<Attachment>);

impl Attachments {
    /// Most attachments one job may have.
    pub const MAX_COUNT: usize = 20;

    /// Checks `raw`, entry by entry.
    pub fn parse(raw: Vec<RawAttachment>) -> Result<Self, InvalidAttachment> {
        if raw.len() > Self::MAX_COUNT {
            return Err(InvalidAttachment::TooMany {
                max: Self::MAX_COUNT,
                given: raw.len(),
            });
        }
        let mut all: Vec<Attachment> = Vec::with_capacity(raw.len());
        for (index, raw) in raw.into_iter().enumerate() {
            let attachment =
                Attachment::parse(raw).map_err(|(member, problem)| InvalidAttachment::Member {
                    index,
                    member,
                    problem,
                })?;
            if let Some(id) = attachment.content_id()
                && all
                    .iter()
                    .filter_map(Attachment::content_id)
                    .any(|earlier| earlier.eq_ignore_ascii_case(id))
            {
                return Err(InvalidAttachment::DuplicateContentId {
                    index,
                    content_id: id.to_owned(),
                });
            }
            all.push(attachment);
        }
        Ok(Self(all))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each attachment, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Attachment> {
        self.0.iter()
    }

    /// Their decoded bytes together.
    pub fn size(&self) -> usize {
        self.0.iter().map(Attachment::size).sum()
    }
}

impl TryFrom<Vec<RawAttachment>> for Attachments {
    type Error = InvalidAttachment;

    fn try_from(raw: Vec<RawAttachment>) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

// By hand rather than through a `Vec` copy: the content may be megabytes,
// and a task is serialised for every push and every fingerprint.
impl Serialize for Attachments {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Characters that reorder the text around them: `invoice`, U+202E,
/// `fdp.exe` shows as `invoiceexe.pdf`.
fn bidi_formatting(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// 1 to 255 characters; nothing that ends a header line, a quoted string
/// or a path segment, nor that disguises the name's extension.
fn check_filename(name: &str) -> Result<(), InvalidValue> {
    if name.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if name.chars().count() > Attachment::MAX_FILENAME_CHARS {
        return Err(InvalidValue::TooManyChars {
            max: Attachment::MAX_FILENAME_CHARS,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidValue::ControlCharacter);
    }
    if name.chars().any(bidi_formatting) {
        return Err(InvalidValue::BidiFormatting);
    }
    if name.contains(['"', '\\', '/']) {
        return Err(InvalidValue::FilenameSpecial);
    }
    Ok(())
}

/// RFC 2045 §5.1 `token`: printable ASCII but space and the tspecials.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// A parameter value: a token, or a quoted string of printable ASCII and
/// spaces without `"` or `\` (no escapes: nothing needs them).
fn parameter_value(v: &str) -> bool {
    token(v)
        || v.strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .is_some_and(|inner| {
                inner
                    .bytes()
                    .all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'"' && b != b'\\')
            })
}

/// RFC 2045 §5.1 `type "/" subtype *(";" parameter)`, printable ASCII,
/// of a discrete type: a composite one (`multipart/*`, `message/*`) would
/// claim a structure the part does not have, and RFC 2046 forbids the
/// base64 its content is sent in.
fn check_content_type(s: &str) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if s.len() > Attachment::MAX_CONTENT_TYPE_LEN {
        return Err(InvalidValue::TooLong {
            max: Attachment::MAX_CONTENT_TYPE_LEN,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidValue::ControlCharacter);
    }
    let mut pieces = s.split(';');
    let essence = pieces.next().unwrap_or_default().trim();
    let well_formed = essence
        .split_once('/')
        .is_some_and(|(kind, subtype)| token(kind) && token(subtype))
        && pieces.all(|p| {
            p.trim()
                .split_once('=')
                .is_some_and(|(name, value)| token(name) && parameter_value(value))
        })
        // What the worker hands lettre must parse there too.
        && lettre::message::header::ContentType::parse(s).is_ok();
    if !well_formed {
        return Err(InvalidValue::NotMediaType);
    }
    let kind = essence.split('/').next().unwrap_or_default();
    if kind.eq_ignore_ascii_case("multipart") || kind.eq_ignore_ascii_case("message") {
        return Err(InvalidValue::CompositeMediaType);
    }
    Ok(())
}

/// 1 to 100 characters of `[A-Za-z0-9._@-]`: a `Content-ID` and a `cid:`
/// URL without escaping.
fn check_content_id(id: &str) -> Result<(), InvalidValue> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._@-".contains(&b);
    if id.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if id.len() > Attachment::MAX_CONTENT_ID_LEN || !id.bytes().all(allowed) {
        return Err(InvalidValue::NotContentId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(filename: &str, content_type: &str, content: &str, id: Option<&str>) -> RawAttachment {
        RawAttachment {
            filename: filename.to_owned(),
            content_type: content_type.to_owned(),
            content: content.to_owned(),
            content_id: id.map(str::to_owned),
        }
    }

    fn problem(attachment: RawAttachment) -> Option<(&'static str, InvalidValue)> {
        match Attachments::parse(vec![attachment]) {
            Err(InvalidAttachment::Member {
                member, problem, ..
            }) => Some((member, problem)),
            _ => None,
        }
    }

    #[test]
    fn an_attachment_keeps_its_base64_and_knows_its_size() {
        let all = Attachments::parse(vec![raw(
            "Rechnung März.pdf",
            "application/pdf",
            "AP8Q",
            None,
        )])
        .expect("valid");
        let one = all.iter().next().expect("one");
        assert_eq!(one.bytes(), [0x00, 0xff, 0x10]);
        assert_eq!((one.size(), all.size()), (3, 3));
        assert_eq!(
            serde_json::to_string(&all).expect("serialise"),
            r#"[{"filename":"Rechnung März.pdf","content_type":"application/pdf","content":"AP8Q"}]"#
        );
    }

    #[test]
    fn filenames_cannot_break_out_of_their_header_or_disguise_their_extension() {
        for (bad, expected) in [
            ("", InvalidValue::Empty),
            ("a\r\nBcc: eve@example.com", InvalidValue::ControlCharacter),
            ("a\nb", InvalidValue::ControlCharacter),
            ("a\0b", InvalidValue::ControlCharacter),
            ("invoice\u{202E}fdp.exe", InvalidValue::BidiFormatting),
            ("a\".pdf", InvalidValue::FilenameSpecial),
            ("a\\b.pdf", InvalidValue::FilenameSpecial),
            ("../etc/passwd", InvalidValue::FilenameSpecial),
        ] {
            assert_eq!(
                problem(raw(bad, "text/plain", "", None)),
                Some(("filename", expected)),
                "{bad:?}"
            );
        }
        assert!(problem(raw(&"é".repeat(255), "text/plain", "", None)).is_none());
        assert_eq!(
            problem(raw(&"é".repeat(256), "text/plain", "", None)),
            Some(("filename", InvalidValue::TooManyChars { max: 255 }))
        );
    }

    #[test]
    fn content_types_are_discrete_media_types_of_printable_ascii() {
        for good in [
            "application/pdf",
            "text/plain; charset=utf-8",
            "text/csv;charset=\"utf-8\"; header=present",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ] {
            assert!(problem(raw("f", good, "", None)).is_none(), "{good:?}");
        }
        for (bad, expected) in [
            ("", InvalidValue::Empty),
            (
                "text/plain\r\nBcc: eve@example.com",
                InvalidValue::ControlCharacter,
            ),
            ("text/plain;\n x=y", InvalidValue::ControlCharacter),
            ("text", InvalidValue::NotMediaType),
            ("text/", InvalidValue::NotMediaType),
            ("text/plain; charset", InvalidValue::NotMediaType),
            ("text/plain; name=\"a\"b\"", InvalidValue::NotMediaType),
            ("text/plain; name=\"a\\\"\"", InvalidValue::NotMediaType),
            ("tëxt/plain", InvalidValue::NotMediaType),
            ("text/pla in", InvalidValue::NotMediaType),
            (
                "multipart/mixed; boundary=x",
                InvalidValue::CompositeMediaType,
            ),
            ("Message/rfc822", InvalidValue::CompositeMediaType),
        ] {
            assert_eq!(
                problem(raw("f", bad, "", None)),
                Some(("content_type", expected)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn content_is_standard_padded_base64_on_one_line() {
        for bad in ["AP8", "AP8Q\n", "AP8Q AP8Q", "AP-_", "é"] {
            assert_eq!(
                problem(raw("f", "text/plain", bad, None)),
                Some(("content", InvalidValue::NotBase64)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn content_ids_are_plain_and_unique_in_any_case() {
        for bad in ["", "a b", "<logo>", "logo\r\nX: y", &"a".repeat(101)] {
            assert!(
                matches!(
                    problem(raw("f", "image/png", "", Some(bad))),
                    Some(("content_id", _))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            Attachments::parse(vec![
                raw("a.png", "image/png", "", Some("logo@example.com")),
                raw("b.png", "image/png", "", Some("LOGO@example.com")),
            ]),
            Err(InvalidAttachment::DuplicateContentId {
                index: 1,
                content_id: "LOGO@example.com".into()
            })
        );
    }

    #[test]
    fn at_most_twenty() {
        let many = |n| vec![raw("f", "text/plain", "", None); n];
        assert!(Attachments::parse(many(20)).is_ok());
        assert_eq!(
            Attachments::parse(many(21)),
            Err(InvalidAttachment::TooMany { max: 20, given: 21 })
        );
    }

    #[test]
    fn the_index_names_the_entry_at_fault() {
        let error = Attachments::parse(vec![
            raw("ok.txt", "text/plain", "", None),
            raw("bad\n.txt", "text/plain", "", None),
        ])
        .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "entry 1: `filename` must not contain control characters (CR, LF, NUL, ...)"
        );
    }
}
