//! Outcome webhooks: the event types an endpoint subscribes to, its signing
//! secret, and the URL it may have.
//!
//! The URL check here is the API's, at create and patch time: it sees only
//! the text, so it refuses IP literals in non-public ranges and `localhost`.
//! A host name is resolved by the dispatcher, which refuses the same ranges
//! with [`is_public_ip`] on the address it then connects to.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use url::{Host, Url};

/// What an event reports: the job state change it was written with.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum EventType {
    /// The server accepted the message.
    #[serde(rename = "job.sent")]
    Sent,
    /// Refused for good, or out of attempts.
    #[serde(rename = "job.failed")]
    Failed,
    /// The outcome of a send is unknown (the ambiguous window).
    #[serde(rename = "job.uncertain")]
    Uncertain,
    /// Skipped: its key was taken by an earlier job.
    #[serde(rename = "job.duplicate")]
    Duplicate,
    /// Withdrawn with `POST /jobs/{id}/cancel`.
    #[serde(rename = "job.canceled")]
    Canceled,
    /// Every recipient is on the tenant's suppression list: nothing was sent.
    #[serde(rename = "job.suppressed")]
    Suppressed,
    /// An attempt failed and another is scheduled (not subscribed by
    /// default: one per failed attempt is noisy).
    #[serde(rename = "job.retrying")]
    Retrying,
}

impl EventType {
    /// Every event type.
    pub const ALL: [Self; 7] = [
        Self::Sent,
        Self::Failed,
        Self::Uncertain,
        Self::Duplicate,
        Self::Canceled,
        Self::Suppressed,
        Self::Retrying,
    ];

    /// The type as stored in `events.type` and sent in the body's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "job.sent",
            Self::Failed => "job.failed",
            Self::Uncertain => "job.uncertain",
            Self::Duplicate => "job.duplicate",
            Self::Canceled => "job.canceled",
            Self::Suppressed => "job.suppressed",
            Self::Retrying => "job.retrying",
        }
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("`{s}` is not an event type ({})", known.join(", "))
            })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event types an endpoint receives: at least one, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(BTreeSet<EventType>);

impl EventTypes {
    /// The subscription of an endpoint created without `event_types`:
    /// every outcome, not `job.retrying`.
    pub fn default_subscription() -> Self {
        Self(
            EventType::ALL
                .into_iter()
                .filter(|t| *t != EventType::Retrying)
                .collect(),
        )
    }

    /// The given types; a type named twice counts once. Refused when empty.
    pub fn new(types: impl IntoIterator<Item = EventType>) -> Result<Self, String> {
        let set: BTreeSet<EventType> = types.into_iter().collect();
        if set.is_empty() {
            return Err("must name at least one event type".into());
        }
        Ok(Self(set))
    }

    /// Parses stored or requested type names.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let types = names
            .iter()
            .map(|n| n.as_ref().parse())
            .collect::<Result<Vec<EventType>, String>>()?;
        Self::new(types)
    }

    /// Whether `t` is subscribed.
    pub fn contains(&self, t: EventType) -> bool {
        self.0.contains(&t)
    }

    /// The types as stored (`webhooks.event_types`), in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|t| t.as_str()).collect()
    }
}

/// A signing secret as the Standard Webhooks specification writes it:
/// `whsec_` and the standard base64 of the key bytes. Never printed by
/// `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// The prefix of the written form.
    pub const PREFIX: &str = "whsec_";
    /// Bytes of a generated key.
    pub const KEY_BYTES: usize = 32;
    /// Fewest key bytes of a secret read back (the specification allows
    /// 24 to 64).
    const MIN_KEY_BYTES: usize = 24;
    /// Most key bytes of a secret read back.
    const MAX_KEY_BYTES: usize = 64;

    /// A new secret of [`Self::KEY_BYTES`] random bytes, from the
    /// operating system's CSPRNG (through rand's thread RNG, which it seeds).
    pub fn generate() -> Self {
        let key: [u8; Self::KEY_BYTES] = rand::random();
        Self(format!("{}{}", Self::PREFIX, STANDARD.encode(key)))
    }

    /// Reads a stored secret back.
    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let key = Self::decode(&s)?;
        if !(Self::MIN_KEY_BYTES..=Self::MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "a webhook secret's key must be {} to {} bytes, not {}",
                Self::MIN_KEY_BYTES,
                Self::MAX_KEY_BYTES,
                key.len()
            ));
        }
        Ok(Self(s))
    }

    fn decode(s: &str) -> Result<Vec<u8>, String> {
        let encoded = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| format!("a webhook secret starts with `{}`", Self::PREFIX))?;
        STANDARD
            .decode(encoded)
            .map_err(|e| format!("a webhook secret is `whsec_` and base64: {e}"))
    }

    /// The written form, `whsec_...`: stored, and shown once to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The HMAC key: the base64-decoded part.
    pub fn key(&self) -> Vec<u8> {
        Self::decode(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Which targets an endpoint URL may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPolicy {
    /// Outside development: `https` only, and no IP literal outside the
    /// public ranges, no `localhost`.
    Public,
    /// `APP_ENV=development`: `http` too, and any host (a receiver on the
    /// developer's machine).
    Development,
}

/// Why an endpoint URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidWebhookUrl {
    /// Longer than [`WebhookUrl::MAX_LEN`].
    #[error("must be at most {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Not an absolute URL.
    #[error("is not an absolute URL: {0}")]
    Malformed(String),
    /// Not `https` (or, in development, `http`).
    #[error("must be an https URL{0}")]
    Scheme(&'static str),
    /// A user name or password in the URL: it would be shown to every
    /// reader of the endpoint; receivers check the signature instead.
    #[error("must not hold a user name or password (receivers verify the signature instead)")]
    Userinfo,
    /// A host in a private, loopback, link-local, unique-local, CGNAT,
    /// multicast, unspecified or documentation range, or `localhost`.
    #[error("must name a public host, not {0} (allowed only with APP_ENV=development)")]
    NotPublic(String),
}

/// An endpoint's URL, checked against a [`UrlPolicy`]; kept in the `url`
/// crate's normal form (lower-case host, `/` path when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    /// Longest URL accepted, in bytes.
    pub const MAX_LEN: usize = 2048;

    /// Parses and checks `s`.
    pub fn parse(s: &str, policy: UrlPolicy) -> Result<Self, InvalidWebhookUrl> {
        if s.len() > Self::MAX_LEN {
            return Err(InvalidWebhookUrl::TooLong { max: Self::MAX_LEN });
        }
        let url = Url::parse(s).map_err(|e| InvalidWebhookUrl::Malformed(e.to_string()))?;
        match (url.scheme(), policy) {
            ("https", _) | ("http", UrlPolicy::Development) => {}
            (_, UrlPolicy::Development) => return Err(InvalidWebhookUrl::Scheme(" or http")),
            (_, UrlPolicy::Public) => {
                return Err(InvalidWebhookUrl::Scheme(
                    " (http only with APP_ENV=development)",
                ));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidWebhookUrl::Userinfo);
        }
        let host = url
            .host()
            .ok_or_else(|| InvalidWebhookUrl::Malformed("no host".into()))?;
        if policy == UrlPolicy::Public {
            let refused = match host {
                Host::Ipv4(ip) => !is_public_ip(IpAddr::V4(ip)),
                Host::Ipv6(ip) => !is_public_ip(IpAddr::V6(ip)),
                Host::Domain(name) => is_localhost(name),
            };
            if refused {
                return Err(InvalidWebhookUrl::NotPublic(host.to_string()));
            }
        }
        let url_len = url.as_str().len();
        if url_len > Self::MAX_LEN {
            return Err(InvalidWebhookUrl::TooLong { max: Self::MAX_LEN });
        }
        Ok(Self(url))
    }

    /// The URL as stored and shown.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `localhost`, a name under it (RFC 6761 §6.3), with or without the
/// final dot.
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether a webhook may be sent to `ip` outside development: not
/// unspecified, loopback, private (RFC 1918), CGNAT (RFC 6598),
/// link-local, unique-local (fc00::/7), multicast, broadcast, reserved,
/// benchmarking or documentation. An IPv6 address that carries an IPv4 one
/// (mapped, compatible, NAT64, 6to4) is judged by the IPv4 address.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", 0.0.0.0 unspecified
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || s[0] & 0xfe00 == 0xfc00 // unique local
        || s[0] & 0xffc0 == 0xfe80 // link-local
        || s[0] & 0xffc0 == 0xfec0 // site-local (deprecated)
        || s[0] & 0xff00 == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0] & 0xfff0 == 0x3ff0 // documentation (RFC 9637)
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments, Teredo
        || s[0] == 0; // the rest of ::/16: IPv4-compatible and reserved
    !refused
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4
/// (`2002:aabb:ccdd::`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) > (0, 1) => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_event_type_reads_back_from_its_text_and_the_default_leaves_out_retrying() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(
                serde_json::to_value(t).expect("JSON"),
                serde_json::json!(t.as_str())
            );
        }
        let default = EventTypes::default_subscription();
        assert!(!default.contains(EventType::Retrying));
        assert_eq!(default.names().len(), 6);
        assert!("job.bounced".parse::<EventType>().is_err());
        assert!(EventTypes::parse::<&str>(&[]).is_err());
        assert_eq!(
            EventTypes::parse(&["job.sent", "job.sent"]).map(|t| t.names()),
            Ok(vec!["job.sent"])
        );
    }

    #[test]
    fn a_generated_secret_is_whsec_and_32_bytes_of_base64_and_never_debug_printed() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();

        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.key().len(), 32);
        assert_ne!(a, b);
        assert_eq!(WebhookSecret::parse(a.expose()).as_ref(), Ok(&a));
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    }

    #[test]
    fn public_urls_pass_and_private_targets_pass_only_in_development() {
        for ok in [
            "https://hooks.example.com/sendonce",
            "https://93.184.216.34:8443/x",
            "https://[2606:4700::1111]/x",
        ] {
            assert!(WebhookUrl::parse(ok, UrlPolicy::Public).is_ok(), "{ok}");
        }
        for private in [
            "https://127.0.0.1/",
            "https://10.1.2.3/",
            "https://172.31.0.1/",
            "https://192.168.1.1/",
            "https://100.64.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://192.0.2.10/",
            "https://0x7f000001/",
            "https://[::1]/",
            "https://[::]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[ff02::1]/",
            "https://[2001:db8::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://api.localhost/",
        ] {
            assert!(
                matches!(
                    WebhookUrl::parse(private, UrlPolicy::Public),
                    Err(InvalidWebhookUrl::NotPublic(_))
                ),
                "{private}"
            );
            assert!(
                WebhookUrl::parse(private, UrlPolicy::Development).is_ok(),
                "{private} in development"
            );
        }
        assert!(WebhookUrl::parse("http://localhost:9000/", UrlPolicy::Development).is_ok());
    }

    #[test]
    fn other_schemes_userinfo_relative_and_long_urls_are_refused() {
        let refused = |s: &str, policy| WebhookUrl::parse(s, policy).err();
        assert!(matches!(
            refused("http://hooks.example.com/", UrlPolicy::Public),
            Some(InvalidWebhookUrl::Scheme(_))
        ));
        assert!(matches!(
            refused("ftp://hooks.example.com/", UrlPolicy::Development),
            Some(InvalidWebhookUrl::Scheme(_))
        ));
        assert!(matches!(
            refused("https://user:pw@hooks.example.com/", UrlPolicy::Development),
            Some(InvalidWebhookUrl::Userinfo)
        ));
        assert!(matches!(
            refused("/relative", UrlPolicy::Public),
            Some(InvalidWebhookUrl::Malformed(_))
        ));
        let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
        assert!(matches!(
            refused(&long, UrlPolicy::Public),
            Some(InvalidWebhookUrl::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn an_ipv4_address_is_judged_the_same_inside_an_ipv6_mapped_one(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(is_public_ip(IpAddr::V6(v4.to_ipv6_mapped())), is_public_ip(IpAddr::V4(v4)));
        }

        #[test]
        fn the_standard_librarys_non_global_v4_ranges_are_refused(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            if v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_multicast()
                || v4.is_unspecified() || v4.is_documentation() || v4.is_broadcast()
            {
                prop_assert!(!is_public_ip(IpAddr::V4(v4)));
            }
        }
    }
}
