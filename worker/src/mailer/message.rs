//! The RFC 5322 message of a task, the same bytes on every attempt: its
//! `Message-ID` comes from the idempotency key, its `Date` from when the
//! job was accepted (or scheduled for), its MIME boundaries from the key;
//! only a DKIM signature's `t=` and `b=` are the attempt's.
//!
//! The body is the text, the HTML, or both as `multipart/alternative`;
//! with inline attachments (those with a `Content-ID`) it goes first in a
//! `multipart/related` that holds them after it, and with other
//! attachments that goes first in a `multipart/mixed` that holds them.

use std::time::SystemTime;

use email_encoding::headers::rfc2047;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::{
    self, ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue,
};
use lettre::message::{Body, Mailbox, MultiPart, MultiPartBuilder, SinglePart};
use sendonce_shared::domain::{Attachment, EmailAddress, Task};

use super::dkim::DkimKeys;
use super::wire::{a_labels, crlf, fit, fit_mailboxes};

/// Builds the message for `task`, from `default_from` when it names no
/// sender, DKIM-signed if its `From` domain has a key in `dkim`. The
/// client's headers follow the ones sendonce writes; the API let through
/// none that could replace them. The recipients whose suppression keys are
/// in `leave_out` stay in the headers but not in the envelope: they are
/// not sent to.
pub(super) fn build(
    task: &Task,
    default_from: &EmailAddress,
    dkim: &DkimKeys,
    leave_out: &[String],
) -> Result<Message, lettre::error::Error> {
    let email = &task.email;
    let from = a_labels(email.from.as_ref().unwrap_or(default_from).mailbox());
    let to: Vec<Mailbox> = email.to.iter().map(|a| a_labels(a.mailbox())).collect();
    let cc: Vec<Mailbox> = email.cc.iter().map(|a| a_labels(a.mailbox())).collect();
    let reply_to = email.reply_to.as_ref().map(|r| a_labels(r.mailbox()));
    let default_domain = a_labels(default_from.mailbox());
    let mut builder = Message::builder().from(from.clone());
    for mailbox in &to {
        builder = builder.to(mailbox.clone());
    }
    for mailbox in &cc {
        builder = builder.cc(mailbox.clone());
    }
    // In the envelope only: lettre drops the `Bcc` header it builds.
    for bcc in &email.bcc {
        builder = builder.bcc(a_labels(bcc.mailbox()));
    }
    if !leave_out.is_empty() {
        let envelope = email
            .recipients()
            .filter(|a| !leave_out.contains(&a.suppression_key()))
            .map(|a| a_labels(a.mailbox()).email)
            .collect();
        builder = builder.envelope(Envelope::new(Some(from.email.clone()), envelope)?);
    }
    let mut builder = builder
        .subject(email.subject.as_str())
        .date(date(task))
        .message_id(Some(
            task.idempotency_key
                .message_id(default_domain.email.domain()),
        ));
    if let Some(reply_to) = &reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    for (name, value) in email.headers.iter() {
        // The API checked the name; one that lettre still refused is left
        // out rather than failing a job it accepted.
        if let Ok(name) = HeaderName::new_from_ascii(name.to_owned()) {
            // Encoded words only where a value is not ASCII, which only
            // the unstructured `X-*` and `Comments` may be.
            builder = builder.raw_header(HeaderValue::new(name, value.to_owned()));
        }
    }
    // lettre picks 7bit only for ASCII lines under 76 octets, else
    // quoted-printable or base64, so no body line on the wire is longer
    // than 998 octets once every line break is a CRLF.
    let (text, html) = (email.body.text().map(crlf), email.body.html().map(crlf));
    // Every text that goes into a part, which no boundary may appear in;
    // attachments' contents go out as base64, which has no `-` and so
    // cannot hold one.
    let texts: Vec<&str> = [text.as_deref(), html.as_deref()]
        .into_iter()
        .flatten()
        .chain(email.attachments.iter().flat_map(|a| {
            [Some(a.filename()), Some(a.content_type()), a.content_id()]
                .into_iter()
                .flatten()
        }))
        .collect();
    // Innermost first, so a message without attachments keeps the one
    // boundary it always had; at most three: alternative, related, mixed.
    let mut boundaries = boundaries(task, &texts)
        .take(3)
        .collect::<Vec<_>>()
        .into_iter();
    let mut next_boundary = || boundaries.next().unwrap_or_default();
    let mut content = match (text, html) {
        (Some(text), Some(html)) => Content::Multi(
            MultiPart::alternative()
                .boundary(next_boundary())
                .singlepart(SinglePart::plain(text))
                .singlepart(SinglePart::html(html)),
        ),
        (Some(text), None) => Content::Single(SinglePart::plain(text)),
        (None, Some(html)) => Content::Single(SinglePart::html(html)),
        (None, None) => unreachable!("Body guarantees at least one part"),
    };
    let (inline, attached): (Vec<&Attachment>, Vec<&Attachment>) = email
        .attachments
        .iter()
        .partition(|a| a.content_id().is_some());
    for (parts, kind) in [
        (inline, MultiPart::related()),
        (attached, MultiPart::mixed()),
    ] {
        if parts.is_empty() {
            continue;
        }
        let mut multi = content.within(kind.boundary(next_boundary()));
        for attachment in parts {
            multi = multi.singlepart(part(attachment)?);
        }
        content = Content::Multi(multi);
    }
    let mut message = match content {
        Content::Single(part) => builder.singlepart(part),
        Content::Multi(multi) => builder.multipart(multi),
    }?;
    let headers = message.headers_mut();
    let subject = email.subject.as_str();
    fit(
        headers,
        header::Subject::from(subject.to_owned()).display(),
        (header::Subject::name(), subject.to_owned()),
        |w| rfc2047::encode(subject, w),
    );
    fit_mailboxes::<header::From>(headers, std::slice::from_ref(&from));
    fit_mailboxes::<header::To>(headers, &to);
    if !cc.is_empty() {
        fit_mailboxes::<header::Cc>(headers, &cc);
    }
    if let Some(reply_to) = &reply_to {
        fit_mailboxes::<header::ReplyTo>(headers, std::slice::from_ref(reply_to));
    }
    // Last: the signature covers the headers as they go out.
    dkim.sign(&mut message, from.email.domain());
    Ok(message)
}

/// The `Date`: when the job was accepted, or the later time it was
/// scheduled for, so that a scheduled message is not dated days before it
/// arrives. A retry hours later keeps it: the message is the one the
/// client asked for then, and the same bytes as the first attempt.
fn date(task: &Task) -> SystemTime {
    let at = task
        .email
        .send_at
        .map_or(task.enqueued_at, |at| at.max(task.enqueued_at));
    SystemTime::from(at)
}

/// A message's content: one part, or several.
enum Content {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Content {
    /// A multipart of `kind` that holds this content first.
    fn within(self, kind: MultiPartBuilder) -> MultiPart {
        match self {
            Self::Single(part) => kind.singlepart(part),
            Self::Multi(multi) => kind.multipart(multi),
        }
    }
}

/// The part of one attachment: inline, with its `Content-ID`, when it has
/// one. Always base64, so its bytes arrive as they were sent whatever they
/// hold (a text file's bare LFs included), and the part is the same bytes
/// on every attempt.
fn part(attachment: &Attachment) -> Result<SinglePart, lettre::error::Error> {
    // The API checked that lettre parses it.
    let content_type = ContentType::parse(attachment.content_type()).map_err(|e| {
        lettre::error::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the content type {:?} of attachment {:?} does not parse: {e}",
                attachment.content_type(),
                attachment.filename()
            ),
        ))
    })?;
    let body = Body::new_with_encoding(attachment.bytes(), ContentTransferEncoding::Base64)
        .unwrap_or_else(Body::new);
    let filename = attachment.filename().to_owned();
    let disposition = match attachment.content_id() {
        Some(id) => lettre::message::Attachment::new_inline_with_name(id.to_owned(), filename),
        None => lettre::message::Attachment::new(filename),
    };
    Ok(disposition.body(body, content_type))
}

/// The multipart boundaries, in the order they are taken: digests of the
/// idempotency key, so every attempt at the key writes the same ones. The
/// client knows the key, so it could put a boundary in a part and break
/// its own message's structure: a boundary one of `texts` holds is passed
/// over for the key's next candidate. They all have the same length, so
/// none is the start of another.
fn boundaries<'a>(task: &'a Task, texts: &'a [&'a str]) -> impl Iterator<Item = String> + 'a {
    (0u32..)
        .map(|n| task.idempotency_key.boundary(n))
        .filter(|b| !texts.iter().any(|t| t.contains(b.as_str())))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use sendonce_shared::domain::{
        Attachments, Body, CustomHeaders, Email, IdempotencyKey, Metadata, RawAttachment, Subject,
    };

    use super::*;

    fn task(text: Option<&str>, html: Option<&str>) -> Task {
        let email = Email {
            from: None,
            to: EmailAddress::parse("Ada <ada@example.net>")
                .expect("valid")
                .into(),
            cc: Vec::new(),
            bcc: Vec::new(),
            reply_to: None,
            subject: Subject::parse("Your receipt").expect("valid"),
            body: Body::new(text.map(str::to_owned), html.map(str::to_owned)).expect("valid"),
            send_at: None,
            headers: CustomHeaders::parse([
                (
                    "List-Unsubscribe".to_owned(),
                    "<https://example.com/u/42>".to_owned(),
                ),
                ("X-Campaign".to_owned(), "Frühling".to_owned()),
            ])
            .expect("valid"),
            metadata: Metadata::parse([("user_id".to_owned(), "secret-42".to_owned())])
                .expect("valid"),
            attachments: Attachments::default(),
        };
        Task::new(
            email,
            Some(IdempotencyKey::parse("receipt:42").expect("valid")),
        )
    }

    /// `task` with an inline logo and an attached file of binary bytes.
    fn with_attachments(mut task: Task, filename: &str) -> Task {
        let raw =
            |filename: &str, content_type: &str, bytes: &[u8], id: Option<&str>| RawAttachment {
                filename: filename.to_owned(),
                content_type: content_type.to_owned(),
                content: STANDARD.encode(bytes),
                content_id: id.map(str::to_owned),
            };
        task.email.attachments = Attachments::parse(vec![
            raw(
                filename,
                "application/octet-stream",
                &[0, 0xff, b'\n', 0x80],
                None,
            ),
            raw("logo.png", "image/png", b"\x89PNG", Some("logo@shop")),
        ])
        .expect("valid");
        task
    }

    /// The `boundary="..."` parameters of `message`, in order.
    fn boundaries_in(message: &str) -> Vec<&str> {
        message
            .split("boundary=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect()
    }

    fn sender() -> EmailAddress {
        EmailAddress::parse("Shop <shop@example.com>").expect("valid")
    }

    fn bytes(task: &Task) -> String {
        let message = build(task, &sender(), &DkimKeys::none(), &[]).expect("a message");
        String::from_utf8(message.formatted()).expect("ASCII")
    }

    #[test]
    fn a_task_builds_the_same_bytes_every_time() {
        for task in [
            task(Some("Thanks, Ada."), Some("<p>Thanks, Ada.</p>")),
            task(Some("Thanks, Ada."), None),
            task(None, Some("<p>Thanks, Ada.</p>")),
            with_attachments(
                task(Some("a"), Some("<img src=\"cid:logo@shop\">")),
                "f.bin",
            ),
            with_attachments(task(Some("a"), None), "f.bin"),
        ] {
            let first = bytes(&task);
            let again = bytes(&Task::from_json(&task.to_json()).expect("a task"));
            assert_eq!(first, again);
        }
    }

    /// What the builder wrote before attachments, byte for byte: a job
    /// without attachments is the message it was, so a retry across the
    /// upgrade sends the same bytes.
    #[test]
    fn a_task_without_attachments_builds_the_bytes_it_built_before_them() {
        let cases = [
            (Some("Thanks, Ada.\nSee you."), Some("<p>Thanks, Ada.</p>")),
            (Some("Thanks, Ada."), None),
            (None, Some("<p>Thanks, Ada.</p>")),
        ];
        let before = [
            concat!(
                "From: Shop <shop@example.com>\r\n",
                "To: Ada <ada@example.net>\r\n",
                "Subject: Your receipt\r\n",
                "Date: Sun, 01 Mar 2026 08:00:00 +0000\r\n",
                "Message-ID: <dc73f01cd861a60f6fbd91ae0307f072@example.com>\r\n",
                "List-Unsubscribe: <https://example.com/u/42>\r\n",
                "X-Campaign: =?utf-8?b?RnLDvGhsaW5n?=\r\n",
                "MIME-Version: 1.0\r\n",
                "Content-Type: multipart/alternative;\r\n",
                " boundary=\"sendonce-110a179c5f57b223c5dacb52ce4e9a5e\"\r\n",
                "\r\n",
                "--sendonce-110a179c5f57b223c5dacb52ce4e9a5e\r\n",
                "Content-Type: text/plain; charset=utf-8\r\n",
                "Content-Transfer-Encoding: 7bit\r\n",
                "\r\n",
                "Thanks, Ada.\r\n",
                "See you.\r\n",
                "--sendonce-110a179c5f57b223c5dacb52ce4e9a5e\r\n",
                "Content-Type: text/html; charset=utf-8\r\n",
                "Content-Transfer-Encoding: 7bit\r\n",
                "\r\n",
                "<p>Thanks, Ada.</p>\r\n",
                "--sendonce-110a179c5f57b223c5dacb52ce4e9a5e--\r\n",
            ),
            concat!(
                "From: Shop <shop@example.com>\r\n",
                "To: Ada <ada@example.net>\r\n",
                "Subject: Your receipt\r\n",
                "Date: Sun, 01 Mar 2026 08:00:00 +0000\r\n",
                "Message-ID: <dc73f01cd861a60f6fbd91ae0307f072@example.com>\r\n",
                "List-Unsubscribe: <https://example.com/u/42>\r\n",
                "X-Campaign: =?utf-8?b?RnLDvGhsaW5n?=\r\n",
                "MIME-Version: 1.0\r\n",
                "Content-Type: text/plain; charset=utf-8\r\n",
                "Content-Transfer-Encoding: 7bit\r\n",
                "\r\n",
                "Thanks, Ada.\r\n",
            ),
            concat!(
                "From: Shop <shop@example.com>\r\n",
                "To: Ada <ada@example.net>\r\n",
                "Subject: Your receipt\r\n",
                "Date: Sun, 01 Mar 2026 08:00:00 +0000\r\n",
                "Message-ID: <dc73f01cd861a60f6fbd91ae0307f072@example.com>\r\n",
                "List-Unsubscribe: <https://example.com/u/42>\r\n",
                "X-Campaign: =?utf-8?b?RnLDvGhsaW5n?=\r\n",
                "MIME-Version: 1.0\r\n",
                "Content-Type: text/html; charset=utf-8\r\n",
                "Content-Transfer-Encoding: 7bit\r\n",
                "\r\n",
                "<p>Thanks, Ada.</p>\r\n",
            ),
        ];
        for ((text, html), before) in cases.into_iter().zip(before) {
            let mut task = task(text, html);
            task.enqueued_at = "2026-03-01T08:00:00Z".parse().expect("a time");
            assert_eq!(bytes(&task), before);
        }
    }

    #[test]
    fn a_signed_message_differs_from_the_unsigned_one_only_by_its_signature() {
        let dir = std::env::temp_dir().join(format!("sendonce-message-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/ed25519.pem");
        std::fs::copy(key, dir.join("example.com.pem")).expect("a key");
        let keys = DkimKeys::load(&dir, "s1").expect("the key");
        let task = task(Some("Thanks, Ada."), Some("<p>Thanks, Ada.</p>"));

        let signed = build(&task, &sender(), &keys, &[]).expect("a message");
        let signed = String::from_utf8(signed.formatted()).expect("ASCII");

        let mut lines = signed.split("\r\n").peekable();
        let mut unsigned = Vec::new();
        while let Some(line) = lines.next() {
            if line.starts_with("DKIM-Signature:") {
                while lines.next_if(|l| l.starts_with([' ', '\t'])).is_some() {}
            } else {
                unsigned.push(line);
            }
        }
        assert!(
            signed.contains(":list-unsubscribe:list-unsubscribe-post;"),
            "RFC 8058 §4: one-click unsubscription needs them signed: {signed}"
        );
        assert_eq!(unsigned.join("\r\n"), bytes(&task));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_date_is_when_the_job_was_accepted_or_scheduled_for() {
        let mut task = task(Some("Thanks, Ada."), None);
        task.enqueued_at = "2026-03-01T08:00:00Z".parse().expect("a time");
        assert!(bytes(&task).contains("\r\nDate: Sun, 01 Mar 2026 08:00:00 +0000\r\n"));
        task.email.send_at = Some("2026-03-05T09:30:00Z".parse().expect("a time"));
        assert!(bytes(&task).contains("\r\nDate: Thu, 05 Mar 2026 09:30:00 +0000\r\n"));
    }

    #[test]
    fn the_boundary_comes_from_the_key_and_is_never_in_a_part() {
        let first = |task: &Task, texts: &[&str]| boundaries(task, texts).next();
        let plain = task(Some("a"), Some("<p>a</p>"));
        let usual = first(&plain, &[]).expect("a boundary");
        assert_eq!(boundaries_in(&bytes(&plain)), [usual.as_str()]);
        let mut other = plain.clone();
        other.idempotency_key = IdempotencyKey::parse("receipt:43").expect("valid");
        assert_ne!(first(&other, &[]), Some(usual.clone()));

        let hostile = task(Some(&format!("--{usual}\r\n")), Some("<p>a</p>"));
        let chosen = first(&hostile, &[&format!("--{usual}\r\n")]).expect("a boundary");
        assert_ne!(chosen, usual);
        assert_eq!(boundaries_in(&bytes(&hostile)), [chosen.as_str()]);
    }

    #[test]
    fn attachments_go_in_mixed_and_inline_parts_in_related_each_with_its_own_boundary() {
        let plain = task(Some("a"), Some("<img src=\"cid:logo@shop\">"));
        let candidates: Vec<String> = boundaries(&plain, &[]).take(3).collect();
        let message = bytes(&with_attachments(plain, "f.bin"));

        let [mixed, related, alternative] = boundaries_in(&message)[..] else {
            panic!("three multiparts: {message}");
        };
        assert_eq!(
            [alternative, related, mixed],
            [&candidates[0], &candidates[1], &candidates[2]].map(String::as_str),
            "innermost first, so the alternative keeps the boundary it had without attachments"
        );
        let at = |needle: &str| {
            message
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} in {message}"))
        };
        assert!(at("multipart/mixed") < at("multipart/related"));
        assert!(at("multipart/related") < at("multipart/alternative"));
        assert!(at("Content-ID: <logo@shop>") > at(&format!("--{alternative}--")));
        assert!(at("Content-ID: <logo@shop>") < at(&format!("--{related}--")));
        assert!(at("attachment; filename=\"f.bin\"") > at(&format!("--{related}--")));
        assert!(at(&STANDARD.encode([0, 0xff, b'\n', 0x80])) > at("filename=\"f.bin\""));

        let text_only = bytes(&with_attachments(task(Some("a"), None), "f.bin"));
        assert!(text_only.contains("multipart/mixed") && text_only.contains("multipart/related"));
        assert!(!text_only.contains("multipart/alternative"));
    }

    #[test]
    fn a_filename_that_holds_a_boundary_moves_it_on() {
        let plain = task(Some("a"), Some("<p>a</p>"));
        let usual = boundaries(&plain, &[]).next().expect("a boundary");
        let message = bytes(&with_attachments(plain, &format!("--{usual}")));
        assert!(
            !boundaries_in(&message).contains(&usual.as_str()),
            "{message}"
        );
    }

    #[test]
    fn custom_headers_are_written_and_metadata_is_not() {
        let message = bytes(&task(Some("Thanks, Ada."), None));
        assert!(message.contains("\r\nList-Unsubscribe: <https://example.com/u/42>\r\n"));
        assert!(message.contains("\r\nX-Campaign: =?utf-8?"), "{message}");
        assert!(!message.contains("secret-42") && !message.contains("user_id"));
    }
}
