//! SSRF: which targets a webhook may reach.
//!
//! Outside development a webhook goes only to `https://` URLs on public
//! addresses. The check is on the address the connection is made to, not
//! on the URL's text: [`GuardedResolver`] is reqwest's resolver, resolves
//! the name and passes on only public addresses, so a name that resolves
//! (or is re-pointed, DNS rebinding) to an internal address is never
//! connected to. URLs whose host is an IP literal never reach a resolver
//! and are checked by [`check_url`]. Proxies are off (a proxy would
//! resolve the name itself).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The URL does not parse, or has no host.
    #[error("not a usable URL: {0}")]
    Url(String),
    /// Not `https` (outside development), or not HTTP at all.
    #[error("the scheme `{0}` is not allowed (https only outside development)")]
    Scheme(String),
    /// The address is private, loopback, link-local, or otherwise not a
    /// public unicast one.
    #[error("the address {0} is not public")]
    Address(IpAddr),
    /// Every address the name resolved to was refused.
    #[error("`{name}` resolves only to addresses that are not public ({addresses})")]
    Name {
        /// The host name.
        name: String,
        /// What it resolved to.
        addresses: String,
    },
}

/// Checks `url` before a request: its scheme, and its host when it is an
/// IP literal. With `allow_private` (development) only the scheme must be
/// `http` or `https`.
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, Refused> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Refused::Url(e.to_string()))?;
    match (parsed.scheme(), allow_private) {
        ("https", _) | ("http", true) => {}
        (other, _) => return Err(Refused::Scheme(other.to_owned())),
    }
    let ip = match parsed.host() {
        None => return Err(Refused::Url("no host".to_owned())),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(_)) => return Ok(parsed),
    };
    if allow_private || is_public(ip) {
        Ok(parsed)
    } else {
        Err(Refused::Address(ip))
    }
}

/// Whether `ip` is a public unicast address: not unspecified, loopback,
/// private (RFC 1918), CGNAT (RFC 6598), link-local, unique-local,
/// site-local, multicast, broadcast, reserved, benchmarking or
/// documentation. IPv6 forms that carry an IPv4 address (mapped,
/// compatible, NAT64, 6to4) are judged by that address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", unspecified
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0; 6] {
        // `::`, `::1`, and the deprecated IPv4-compatible `::a.b.c.d`.
        return false;
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    let refused = (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation (RFC 9637)
        || s[..4] == [0x100, 0, 0, 0]; // discard
    !refused
}

/// reqwest's resolver outside development: the system's answer, less
/// every address that is not public; an error when none is left.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let addresses = all
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(Refused::Name {
                    name: host,
                    addresses,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn public(ip: &str) -> bool {
        is_public(IpAddr::from_str(ip).expect("an address"))
    }

    #[test]
    fn internal_and_special_addresses_are_refused() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.8.8",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
        ] {
            assert!(!public(ip), "{ip} is refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81c::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(public(ip), "{ip} is allowed");
        }
    }

    #[test]
    fn urls_need_https_and_a_public_literal_outside_development() {
        assert!(check_url("https://hooks.example.com/in", false).is_ok());
        assert!(check_url("https://93.184.215.14/in", false).is_ok());
        assert_eq!(
            check_url("http://hooks.example.com/in", false).err(),
            Some(Refused::Scheme("http".into()))
        );
        assert!(matches!(
            check_url("https://127.0.0.1:8443/in", false),
            Err(Refused::Address(_))
        ));
        assert!(matches!(
            check_url("https://[::ffff:7f00:1]/in", false),
            Err(Refused::Address(_))
        ));
        assert!(matches!(
            check_url("https://[fe80::1]/in", false),
            Err(Refused::Address(_))
        ));
        assert!(matches!(
            check_url("ftp://example.com/", true),
            Err(Refused::Scheme(_))
        ));
        assert!(check_url("http://127.0.0.1:8080/in", true).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_only_to_loopback() {
        let refused = GuardedResolver
            .resolve(Name::from_str("localhost").expect("a name"))
            .await
            .err()
            .expect("localhost is refused");

        assert!(refused.to_string().contains("not public"), "{refused}");
    }
}
