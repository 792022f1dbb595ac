//! SSRF: the resolver that lets a webhook connect only to public
//! addresses outside development.
//!
//! The stored URL is checked again before each request
//! ([`WebhookUrl::parse`](sendonce_shared::domain::webhooks::WebhookUrl::parse):
//! `https`, and an IP-literal host or `localhost` must be public), but the
//! check that matters is on the address the connection is made to:
//! [`GuardedResolver`] is reqwest's resolver, resolves the name and passes
//! on only public addresses
//! ([`is_public_ip`](sendonce_shared::domain::webhooks::is_public_ip)), so
//! a name that resolves (or is re-pointed, DNS rebinding) to an internal
//! address is never connected to. Proxies are off (a proxy would resolve
//! the name itself).

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sendonce_shared::domain::webhooks::is_public_ip;

/// Every address a name resolved to was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` resolves only to addresses that are not public ({addresses})")]
pub struct NotPublic {
    /// The host name.
    pub name: String,
    /// What it resolved to.
    pub addresses: String,
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
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| is_public_ip(a.ip()))
                .collect();
            if public.is_empty() {
                let addresses = all
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(NotPublic {
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
