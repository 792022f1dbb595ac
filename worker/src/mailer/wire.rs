//! What goes on the wire and what comes back from it: every body line
//! break a CRLF, header lines within RFC 5322's limit, IDN domains as
//! A-labels, and addresses taken out of server replies before they are
//! logged or stored.

use std::fmt::{self, Write as _};

use email_encoding::headers::rfc2047;
use email_encoding::headers::writer::EmailWriter;
use lettre::Address;
use lettre::message::header::{Header, HeaderName, HeaderValue, Headers};
use lettre::message::{Mailbox, Mailboxes};

/// RFC 5322 §2.1.1: no line of a message longer than this, CRLF excluded.
const MAX_LINE_OCTETS: usize = 998;

/// Sets `plain` (a header as lettre writes it) when each of its lines fits
/// in [`MAX_LINE_OCTETS`]; otherwise the same header, `name: raw`, written
/// by `encode` with RFC 2047 encoded words, which fold anywhere. lettre
/// folds only at spaces, so a long word (a 998-character subject, a long
/// quoted display name) would otherwise make a line strict servers refuse.
pub(super) fn fit(
    headers: &mut Headers,
    plain: HeaderValue,
    (name, raw): (HeaderName, String),
    encode: impl FnOnce(&mut EmailWriter<'_>) -> fmt::Result,
) {
    let mut alone = Headers::new();
    alone.insert_raw(plain.clone());
    if alone
        .to_string()
        .split("\r\n")
        .all(|line| line.len() <= MAX_LINE_OCTETS)
    {
        headers.insert_raw(plain);
        return;
    }
    let mut encoded = String::new();
    {
        let mut w = EmailWriter::new(&mut encoded, name.len() + ": ".len(), 0, false);
        // Writing to a String cannot fail.
        let _ = encode(&mut w);
    }
    headers.insert_raw(HeaderValue::dangerous_new_pre_encoded(name, raw, encoded));
}

/// [`fit`] for an address header: each display name becomes encoded words
/// when the header would not fit in a line otherwise.
pub(super) fn fit_mailboxes<H: Header + From<Mailboxes>>(
    headers: &mut Headers,
    mailboxes: &[Mailbox],
) {
    let all: Mailboxes = mailboxes.iter().cloned().collect();
    let raw = all.to_string();
    fit(headers, H::from(all).display(), (H::name(), raw), |w| {
        for (i, mailbox) in mailboxes.iter().enumerate() {
            if i > 0 {
                w.write_char(',')?;
                w.space();
            }
            match &mailbox.name {
                Some(name) => {
                    rfc2047::encode(name, w)?;
                    w.space();
                    write!(w.folding(), "<{}>", mailbox.email)?;
                }
                None => w.write_str(mailbox.email.as_ref())?,
            }
        }
        Ok(())
    });
}

/// `mailbox` with its domain as A-labels (`bücher.de` becomes
/// `xn--bcher-kva.de`) when its local part is ASCII, so that it needs no
/// SMTPUTF8. A non-ASCII local part has no ASCII form (RFC 6530): such a
/// mailbox is left as it is and needs a server that offers SMTPUTF8.
pub(super) fn a_labels(mailbox: &Mailbox) -> Mailbox {
    let (user, domain) = (mailbox.email.user(), mailbox.email.domain());
    if domain.is_ascii() || !user.is_ascii() {
        return mailbox.clone();
    }
    idna::domain_to_ascii(domain)
        .ok()
        .and_then(|ascii| Address::new(user, ascii).ok())
        .map_or_else(
            || mailbox.clone(),
            |email| Mailbox::new(mailbox.name.clone(), email),
        )
}

/// `text` with every line break a CRLF: a bare CR or a bare LF becomes
/// CRLF, an existing CRLF stays one.
///
/// lettre turns bare LFs into CRLFs but passes bare CRs through, and its
/// dot-stuffing looks only after CRLF. A relay that ends the data at
/// `<CR>.<CR>` would then read the rest of a body as new SMTP commands
/// (SMTP smuggling; RFC 5321 §2.3.8 forbids bare CR and LF). Normalising,
/// rather than refusing such bodies at the API, keeps every accepted job
/// sendable, including those already queued.
pub(super) fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// `text` (a server's reply, or an error quoting one) with every address
/// in it replaced by `[address]`. Servers quote the recipient in replies
/// (`550 5.1.1 <ada@example.com>: Recipient address rejected`); these go to
/// logs and to the job and dead-letter records, which name the recipient
/// where it is needed anyway.
pub(super) fn redact(text: &str) -> String {
    let boundary = |c: char| c.is_whitespace() || "<>()[],;:\"'".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if boundary(c) {
            out.push_str(redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(redact_word(&word));
    out
}

fn redact_word(word: &str) -> &str {
    match word.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => "[address]",
        _ => word,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idn_domains_become_a_labels_unless_the_local_part_needs_smtputf8() {
        let mailbox = |s: &str| s.parse::<Mailbox>().expect("a mailbox");
        for (given, sent) in [
            ("Jürgen <user@bücher.de>", "Jürgen <user@xn--bcher-kva.de>"),
            ("user@example.com", "user@example.com"),
            ("josé@bücher.de", "josé@bücher.de"),
        ] {
            assert_eq!(a_labels(&mailbox(given)), mailbox(sent), "{given}");
        }
    }

    #[test]
    fn addresses_in_server_replies_are_redacted() {
        for (reply, redacted) in [
            (
                "550 5.1.1 <ada@example.com>: Recipient address rejected",
                "550 5.1.1 <[address]>: Recipient address rejected",
            ),
            (
                "553 sender josé@bücher.de refused",
                "553 sender [address] refused",
            ),
            (
                "250 2.0.0 Ok: queued as 4ZX@",
                "250 2.0.0 Ok: queued as 4ZX@",
            ),
            ("451 4.3.0 try again later", "451 4.3.0 try again later"),
        ] {
            assert_eq!(redact(reply), redacted);
        }
    }

    #[test]
    fn every_bare_cr_and_lf_becomes_crlf_and_crlf_stays_one() {
        for (given, sent) in [
            ("a\r.\rb", "a\r\n.\r\nb"),
            ("a\n.\nb", "a\r\n.\r\nb"),
            ("a\r\n.\r\nb", "a\r\n.\r\nb"),
            ("x\r\r\ny", "x\r\n\r\ny"),
            ("\n\r", "\r\n\r\n"),
            ("\r", "\r\n"),
            ("é\rü", "é\r\nü"),
            ("", ""),
        ] {
            assert_eq!(crlf(given), sent, "{given:?}");
        }
    }
}
