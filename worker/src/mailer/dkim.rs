//! DKIM signing (RFC 6376) with a key per sender domain, read once from
//! `DKIM_KEYS_DIR` at start-up.
//!
//! The directory holds one PEM private key per domain: `<domain>.pem`
//! signs with the selector `DKIM_SELECTOR`, and
//! `<selector>._domainkey.<domain>.pem` (the name of the DNS record its
//! public key is published at) with its own selector. RSA keys (PKCS#8 or
//! PKCS#1) sign `rsa-sha256`, Ed25519 keys (PKCS#8) `ed25519-sha256`
//! (RFC 8463). A message whose `From` domain has no key goes unsigned.
//!
//! lettre does the signing; this module reads the keys and hands lettre the
//! forms it takes (PKCS#1 PEM for RSA, the base64 seed for Ed25519).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use lettre::Message;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey, dkim_sign,
};
use lettre::message::header::HeaderName;
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;

/// The smallest RSA key that signs: RFC 8301 §3.2 forbids verifiers to
/// accept less.
const MIN_RSA_BITS: usize = 1024;

/// The headers signed, when present. Absent ones are signed as absent
/// (RFC 6376 §5.4), so none of them can be added on the way without
/// breaking the signature. `List-Unsubscribe` and `List-Unsubscribe-Post`
/// (a job's own headers) because RFC 8058 §4 has one-click unsubscription
/// honoured only when a valid signature covers them. Not `Content-Type`
/// nor `Content-Transfer-Encoding`: lettre keeps them with the MIME body
/// and writes them after the headers it signs, so it would sign them as
/// absent and every receiver would see a broken signature. The body hash
/// covers the body either way.
const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "Reply-To",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Why `DKIM_KEYS_DIR` could not be loaded. Each names the file or the
/// directory, never the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DkimKeyError {
    /// The directory could not be listed.
    #[error("cannot read the directory {}", dir.display())]
    ReadDir {
        /// `DKIM_KEYS_DIR`.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A key file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A `.pem` file whose name gives no domain, or a bad selector.
    #[error(
        "{}: expected a name `<domain>.pem` or `<selector>._domainkey.<domain>.pem` ({reason})",
        path.display()
    )]
    BadName {
        /// The file.
        path: PathBuf,
        /// What is wrong with the name.
        reason: String,
    },
    /// The file holds no RSA or Ed25519 private key in a form this reads.
    #[error(
        "{}: not an unencrypted RSA (PKCS#8 or PKCS#1) or Ed25519 (PKCS#8) private key in PEM{}",
        path.display(),
        label.as_ref().map(|l| format!(" (found `{l}`)")).unwrap_or_default()
    )]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The PEM label found, when there was one.
        label: Option<String>,
    },
    /// An RSA key too short to be accepted by verifiers.
    #[error("{}: an RSA key of {bits} bits; DKIM needs at least {MIN_RSA_BITS}", path.display())]
    WeakKey {
        /// The file.
        path: PathBuf,
        /// Its size.
        bits: usize,
    },
    /// Two files give a key for one domain.
    #[error("{} and {} are both keys for {domain}", first.display(), second.display())]
    TwoKeys {
        /// The domain, as A-labels.
        domain: String,
        /// The file read first.
        first: PathBuf,
        /// The other one.
        second: PathBuf,
    },
}

/// One domain's key.
struct DomainKey {
    config: DkimConfig,
    selector: String,
    algorithm: &'static str,
    path: PathBuf,
}

/// The signing keys, by sender domain (lowercase A-labels).
#[derive(Default)]
pub struct DkimKeys {
    by_domain: BTreeMap<String, DomainKey>,
}

impl fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.signers()).finish()
    }
}

impl DkimKeys {
    /// No keys: every message goes unsigned.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every `*.pem` file of `dir`, `selector` for those named
    /// `<domain>.pem`. Hidden entries (Kubernetes' `..data`) and other
    /// files are skipped; a `.pem` file that is not a usable key is an
    /// error, so a typo cannot silently leave a domain unsigned.
    pub fn load(dir: &Path, selector: &str) -> Result<Self, DkimKeyError> {
        let read_dir = |source| DkimKeyError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".pem") || path.is_dir() {
                continue;
            }
            paths.push(path);
        }
        paths.sort();
        let mut keys = Self::default();
        for path in paths {
            let (domain, key) = DomainKey::read(&path, selector)?;
            if let Some(first) = keys.by_domain.get(&domain) {
                return Err(DkimKeyError::TwoKeys {
                    domain,
                    first: first.path.clone(),
                    second: path,
                });
            }
            keys.by_domain.insert(domain, key);
        }
        Ok(keys)
    }

    /// Signs `message` with the key of `domain` (the `From` domain, in any
    /// case, as U-labels or A-labels); without one, leaves it unsigned.
    pub fn sign(&self, message: &mut Message, domain: &str) {
        if let Some(key) = normalise(domain).and_then(|d| self.by_domain.get(&d)) {
            dkim_sign(message, &key.config);
        }
    }

    /// Each signing domain with its selector and algorithm, e.g.
    /// `example.com (s=sendonce, rsa-sha256)`, sorted by domain.
    pub fn signers(&self) -> impl Iterator<Item = String> + '_ {
        self.by_domain
            .iter()
            .map(|(domain, key)| format!("{domain} (s={}, {})", key.selector, key.algorithm))
    }

    /// Whether no domain signs.
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

impl DomainKey {
    /// The domain `path` names and its key.
    fn read(path: &Path, default_selector: &str) -> Result<(String, Self), DkimKeyError> {
        let bad_name = |reason: &str| DkimKeyError::BadName {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
            .ok_or_else(|| bad_name("not a UTF-8 name"))?;
        let (selector, domain) = match stem.split_once("._domainkey.") {
            Some((selector, domain)) => {
                parse_selector(selector).map_err(|reason| bad_name(&reason))?;
                (selector, domain)
            }
            None => (default_selector, stem),
        };
        let domain = normalise(domain).ok_or_else(|| bad_name("not a domain name"))?;
        let pem = std::fs::read_to_string(path).map_err(|source| DkimKeyError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let (key, algorithm) = signing_key(path, &pem)?;
        let config = DkimConfig::new(
            selector.to_owned(),
            domain.clone(),
            key,
            SIGNED_HEADERS
                .iter()
                .map(|name| HeaderName::new_from_ascii_str(name))
                .collect(),
            // Relaxed both ways: relays that refold headers or trim
            // trailing spaces leave the signature valid.
            DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            },
        );
        Ok((
            domain,
            Self {
                config,
                selector: selector.to_owned(),
                algorithm,
                path: path.to_owned(),
            },
        ))
    }
}

/// The key in `pem` in the form lettre takes, and the algorithm's name as
/// `a=` spells it.
fn signing_key(path: &Path, pem: &str) -> Result<(DkimSigningKey, &'static str), DkimKeyError> {
    let bad_key = || DkimKeyError::BadKey {
        path: path.to_owned(),
        label: pem_label(pem),
    };
    let rsa = RsaPrivateKey::from_pkcs1_pem(pem)
        .ok()
        .or_else(|| rsa::pkcs8::DecodePrivateKey::from_pkcs8_pem(pem).ok());
    let (key, algorithm) = if let Some(rsa) = rsa {
        let bits = rsa.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(DkimKeyError::WeakKey {
                path: path.to_owned(),
                bits,
            });
        }
        let pkcs1 = rsa.to_pkcs1_pem(LineEnding::LF).map_err(|_| bad_key())?;
        (
            DkimSigningKey::new(&pkcs1, DkimSigningAlgorithm::Rsa),
            "rsa-sha256",
        )
    } else if let Ok(ed25519) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
        let seed = STANDARD.encode(ed25519.to_bytes());
        (
            DkimSigningKey::new(&seed, DkimSigningAlgorithm::Ed25519),
            "ed25519-sha256",
        )
    } else {
        return Err(bad_key());
    };
    Ok((key.map_err(|_| bad_key())?, algorithm))
}

/// The label of the first PEM block in `pem` (`RSA PRIVATE KEY`), if any.
fn pem_label(pem: &str) -> Option<String> {
    let rest = &pem[pem.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    Some(rest[..rest.find("-----")?].to_owned())
}

/// `domain` as lowercase A-labels, the form keys are looked up by and `d=`
/// is written in; `None` if it is not a domain name.
fn normalise(domain: &str) -> Option<String> {
    let ascii = idna::domain_to_ascii(domain.trim_end_matches('.')).ok()?;
    (!ascii.is_empty()).then_some(ascii)
}

/// Checks a selector: dot-separated labels of letters, digits and inner
/// hyphens (RFC 6376 §3.1), so that `<selector>._domainkey.<domain>` is a
/// DNS name.
pub fn parse_selector(s: &str) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.split('.').all(label_ok) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a DKIM selector (dot-separated labels of letters, digits and hyphens)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use lettre::Message;
    use uuid::Uuid;

    use super::{DkimKeyError, DkimKeys, parse_selector};

    /// A key file of `worker/tests/data/dkim`.
    fn test_key(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/dkim")
            .join(name)
    }

    /// A new directory holding `files`: (name, key file of the test data,
    /// or the text itself when it is no such file).
    fn keys_dir(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sendonce-dkim-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        for (name, content) in files {
            let source = test_key(content);
            let content = std::fs::read_to_string(&source).unwrap_or_else(|_| (*content).into());
            std::fs::write(dir.join(name), content).expect("write a key");
        }
        dir
    }

    fn message(from: &str) -> Message {
        Message::builder()
            .from(from.parse().expect("a mailbox"))
            .to("ada@example.net".parse().expect("a mailbox"))
            .subject("Hello")
            .body(String::from("Hello, Ada.\r\n"))
            .expect("a message")
    }

    fn signature(keys: &DkimKeys, from: &str, domain: &str) -> Option<String> {
        let mut message = message(from);
        keys.sign(&mut message, domain);
        let formatted = String::from_utf8(message.formatted()).expect("ASCII");
        let at = formatted.find("DKIM-Signature: ")?;
        let end = formatted[at..]
            .find("\r\n\r\n")
            .map_or(formatted.len(), |e| at + e);
        Some(formatted[at..end].to_owned())
    }

    #[test]
    fn rsa_and_ed25519_keys_load_each_with_its_domain_selector_and_algorithm() {
        let dir = keys_dir(&[
            ("example.com.pem", "rsa.pem"),
            ("s2._domainkey.Example.ORG.pem", "ed25519.pem"),
            ("bücher.de.pem", "rsa-pkcs1.pem"),
            ("README", "not a key, skipped"),
            (".hidden.pem", "skipped"),
        ]);
        std::fs::create_dir(dir.join("..data")).expect("a hidden directory");

        let keys = DkimKeys::load(&dir, "sendonce").expect("the keys load");

        assert_eq!(
            keys.signers().collect::<Vec<_>>(),
            [
                "example.com (s=sendonce, rsa-sha256)",
                "example.org (s=s2, ed25519-sha256)",
                "xn--bcher-kva.de (s=sendonce, rsa-sha256)",
            ]
        );
    }

    #[test]
    fn the_from_domain_picks_the_key_in_any_case_and_as_u_labels_or_a_labels() {
        let dir = keys_dir(&[
            ("Example.COM.pem", "rsa.pem"),
            ("ed._domainkey.bücher.de.pem", "ed25519.pem"),
        ]);
        let keys = DkimKeys::load(&dir, "sel1").expect("the keys load");

        let rsa = signature(&keys, "a@EXAMPLE.com", "EXAMPLE.com").expect("signed");
        assert!(rsa.contains("a=rsa-sha256;"), "{rsa}");
        assert!(rsa.contains("d=example.com; s=sel1;"), "{rsa}");
        assert!(rsa.contains("c=relaxed/relaxed;"), "{rsa}");
        for domain in ["BÜCHER.de", "xn--bcher-kva.de"] {
            let ed = signature(&keys, "a@xn--bcher-kva.de", domain).expect("signed");
            assert!(ed.contains("a=ed25519-sha256;"), "{ed}");
            assert!(ed.contains("d=xn--bcher-kva.de; s=ed;"), "{ed}");
        }
    }

    #[test]
    fn a_domain_without_a_key_goes_unsigned() {
        let dir = keys_dir(&[("example.com.pem", "ed25519.pem")]);
        let keys = DkimKeys::load(&dir, "sendonce").expect("the keys load");

        assert_eq!(signature(&keys, "a@example.net", "example.net"), None);
        assert_eq!(
            signature(&keys, "a@mail.example.com", "mail.example.com"),
            None
        );
        assert_eq!(
            signature(&DkimKeys::none(), "a@example.com", "example.com"),
            None
        );
    }

    #[test]
    fn an_empty_directory_signs_nothing() {
        let keys = DkimKeys::load(&keys_dir(&[]), "sendonce").expect("no keys");
        assert!(keys.is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_usable_key_is_refused_naming_it() {
        for (content, says) in [
            ("garbage", "not an unencrypted RSA"),
            ("rsa.pub.pem", "(found `PUBLIC KEY`)"),
            ("rsa-512.pem", "an RSA key of 512 bits"),
        ] {
            let dir = keys_dir(&[
                ("example.com.pem", "ed25519.pem"),
                ("example.net.pem", content),
            ]);

            let refused = DkimKeys::load(&dir, "sendonce").expect_err("a bad key");

            let text = refused.to_string();
            assert!(text.contains("example.net.pem"), "{text}");
            assert!(text.contains(says), "{text}");
            assert!(!text.contains("MC4CAQAw"), "no key material: {text}");
        }
    }

    #[test]
    fn bad_names_two_keys_for_a_domain_and_an_unreadable_directory_are_refused() {
        let dir = keys_dir(&[("bad_selector!._domainkey.example.com.pem", "ed25519.pem")]);
        let refused = DkimKeys::load(&dir, "sendonce").expect_err("a bad selector");
        assert!(matches!(refused, DkimKeyError::BadName { .. }), "{refused}");

        let dir = keys_dir(&[
            ("example.com.pem", "ed25519.pem"),
            ("s2._domainkey.EXAMPLE.com.pem", "rsa.pem"),
        ]);
        let refused = DkimKeys::load(&dir, "sendonce").expect_err("two keys");
        assert!(
            matches!(&refused, DkimKeyError::TwoKeys { domain, .. } if domain == "example.com"),
            "{refused}"
        );

        let missing = dir.join("missing");
        let refused = DkimKeys::load(&missing, "sendonce").expect_err("no directory");
        assert!(
            refused.to_string().contains(&*missing.to_string_lossy()),
            "{refused}"
        );
    }

    #[test]
    fn selectors_are_dns_labels() {
        for good in ["sendonce", "s1", "2024-06.mail", "a-b"] {
            assert_eq!(parse_selector(good).as_deref(), Ok(good));
        }
        for bad in ["", "a..b", "-a", "a-", "a_b", "a b", "sél"] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
    }
}
