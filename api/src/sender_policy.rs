//! Which senders each tenant may put in `from`, from `SENDER_POLICY_FILE`.
//!
//! ```toml
//! [tenants.billing]
//! addresses = ["invoices@company.example"]
//! domains = ["billing.company.example"]
//! default_from = "Billing <invoices@company.example>"
//!
//! [tenants.shop]
//! domains = ["shop.example"]
//! ```
//!
//! With a policy, a job's `from` must be one of its tenant's `addresses` or
//! at one of its `domains` (exactly; a subdomain is listed on its own), or
//! the answer is `422` naming `from`. A job without `from` gets its tenant's
//! `default_from`, or else the worker's `MAIL_FROM`. A tenant the file does
//! not list may not set `from` at all. Without a file, any `from` is
//! accepted, as before policies existed.
//!
//! The file is checked whole when read: unknown fields, addresses that do
//! not parse, and a `default_from` its own tenant may not use are errors.
//! At start-up an error stops the API; on SIGHUP it keeps the policy in
//! force and logs why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use sendonce_shared::domain::{Email, EmailAddress};
use serde::Deserialize;

use crate::problem::ApiError;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    tenants: BTreeMap<String, TenantFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    default_from: Option<String>,
}

/// One tenant's senders, normalised for lookups.
#[derive(Debug, Default)]
struct Senders {
    /// Lower-cased addresses (`local@domain`, domain as an A-label).
    addresses: HashSet<String>,
    /// Lower-cased domains, as A-labels.
    domains: HashSet<String>,
    default_from: Option<EmailAddress>,
}

impl Senders {
    fn allows(&self, from: &EmailAddress) -> bool {
        let Some((address, domain)) = normalise(from) else {
            return false;
        };
        self.domains.contains(&domain) || self.addresses.contains(&address)
    }
}

/// `local@domain` lower-cased with the domain as an A-label, and the
/// domain; `None` for a domain IDNA refuses.
fn normalise(address: &EmailAddress) -> Option<(String, String)> {
    let email = &address.mailbox().email;
    let domain = idna::domain_to_ascii(email.domain()).ok()?;
    Some((format!("{}@{domain}", email.user().to_lowercase()), domain))
}

/// A parsed policy: the senders of each tenant it lists.
#[derive(Debug, Default)]
pub struct Policy {
    tenants: HashMap<String, Senders>,
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut tenants = HashMap::with_capacity(file.tenants.len());
        for (tenant, entry) in file.tenants {
            let at = |what: String| format!("tenants.{tenant}: {what}");
            let mut senders = Senders::default();
            for address in &entry.addresses {
                let parsed = EmailAddress::parse(address)
                    .map_err(|e| at(format!("address {address:?}: {e}")))?;
                let (address, _) = normalise(&parsed)
                    .ok_or_else(|| at(format!("address {address:?}: not a valid domain")))?;
                senders.addresses.insert(address);
            }
            for domain in &entry.domains {
                let ascii = idna::domain_to_ascii(domain)
                    .ok()
                    .filter(|d| !d.is_empty() && !d.contains('@'))
                    .ok_or_else(|| at(format!("domain {domain:?} is not a domain name")))?;
                senders.domains.insert(ascii);
            }
            if let Some(default) = &entry.default_from {
                let parsed = EmailAddress::parse(default)
                    .map_err(|e| at(format!("default_from {default:?}: {e}")))?;
                if !senders.allows(&parsed) {
                    return Err(at(format!(
                        "default_from {default:?} is not one of the tenant's addresses or domains"
                    )));
                }
                senders.default_from = Some(parsed);
            }
            tenants.insert(tenant, senders);
        }
        Ok(Self { tenants })
    }

    /// How many tenants the policy lists.
    pub fn tenants(&self) -> usize {
        self.tenants.len()
    }

    /// Checks `email`'s `from` against `tenant`'s senders, and fills in the
    /// tenant's default when it has none.
    pub fn apply(&self, tenant: &str, email: &mut Email) -> Result<(), ApiError> {
        let senders = self.tenants.get(tenant);
        match (&email.from, senders) {
            (Some(from), Some(senders)) if senders.allows(from) => Ok(()),
            (Some(_), Some(_)) => Err(ApiError::InvalidField {
                field: "from",
                reason: "is not one of the senders this tenant may use (SENDER_POLICY_FILE)".into(),
            }),
            (Some(_), None) => Err(ApiError::InvalidField {
                field: "from",
                reason: "may not be set by this tenant (SENDER_POLICY_FILE lists no senders for \
                         it); leave it out to send as the default sender"
                    .into(),
            }),
            (None, senders) => {
                email.from = senders.and_then(|s| s.default_from.clone());
                Ok(())
            }
        }
    }
}

/// The policy in force, if any, shared by every handler and replaced whole
/// by a reload.
#[derive(Debug, Clone, Default)]
pub struct SenderPolicy {
    path: Option<PathBuf>,
    current: Arc<RwLock<Option<Arc<Policy>>>>,
}

impl SenderPolicy {
    /// Reads `path` (`SENDER_POLICY_FILE`); no path, no policy. Says at
    /// start-up which it is.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let policy = Self {
            path: path.map(Path::to_path_buf),
            current: Arc::default(),
        };
        match path {
            None => tracing::info!("no SENDER_POLICY_FILE: every tenant may send from any address"),
            Some(path) => {
                let tenants = policy
                    .reload()
                    .with_context(|| format!("SENDER_POLICY_FILE {}", path.display()))?;
                tracing::info!(path = %path.display(), tenants, "sender policy loaded");
            }
        }
        Ok(policy)
    }

    /// Reads the file again and puts it in force; on error the policy in
    /// force stays. Returns how many tenants it lists.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let text = std::fs::read_to_string(path).context("cannot be read")?;
        let policy = Policy::parse(&text).map_err(anyhow::Error::msg)?;
        let tenants = policy.tenants();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(policy));
        Ok(tenants)
    }

    /// Applies the policy in force to a job of `tenant` (see
    /// [`Policy::apply`]); without one, changes nothing.
    pub fn apply(&self, tenant: &str, email: &mut Email) -> Result<(), ApiError> {
        let current = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match current {
            Some(policy) => policy.apply(tenant, email),
            None => Ok(()),
        }
    }

    /// With a policy file, re-reads it on every SIGHUP, logging what
    /// happened, for as long as the runtime runs.
    pub fn reload_on_sighup(&self) -> std::io::Result<()> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let policy = self.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match policy.reload() {
                    Ok(tenants) => {
                        tracing::info!(path = %path.display(), tenants, "sender policy reloaded");
                    }
                    Err(e) => tracing::error!(
                        path = %path.display(),
                        error = format!("{e:#}"),
                        "sender policy not reloaded; the previous one stays in force"
                    ),
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sendonce_shared::domain::{Body, Subject};

    use super::*;

    const POLICY: &str = r#"
        [tenants.billing]
        addresses = ["Invoices@Company.example"]
        domains = ["billing.company.example", "bücher.example"]
        default_from = "Billing <invoices@company.example>"

        [tenants.shop]
        domains = ["shop.example"]
    "#;

    fn email(from: Option<&str>) -> Email {
        Email {
            from: from.map(|f| EmailAddress::parse(f).expect("valid")),
            ..Email::new(
                EmailAddress::parse("ada@example.com").expect("valid"),
                Subject::parse("Hi").expect("valid"),
                Body::new(Some("Hello".into()), None).expect("valid"),
            )
        }
    }

    fn check(tenant: &str, from: Option<&str>) -> Result<Option<String>, String> {
        let policy = Policy::parse(POLICY).expect("a valid policy");
        let mut email = email(from);
        match policy.apply(tenant, &mut email) {
            Ok(()) => Ok(email.from.map(|f| f.to_string())),
            Err(ApiError::InvalidField { field, .. }) => Err(field.to_owned()),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_listed_address_or_domain_passes_case_and_idn_aside() {
        assert!(check("billing", Some("invoices@company.example")).is_ok());
        assert!(check("billing", Some("Billing <INVOICES@company.EXAMPLE>")).is_ok());
        assert!(check("billing", Some("anyone@billing.company.example")).is_ok());
        assert!(check("billing", Some("anyone@xn--bcher-kva.example")).is_ok());
        assert!(check("shop", Some("orders@shop.example")).is_ok());
    }

    #[test]
    fn anything_else_is_refused_naming_from() {
        for (tenant, from) in [
            ("billing", "ceo@company.example"),
            ("billing", "x@sub.billing.company.example"),
            ("shop", "invoices@company.example"),
            ("unlisted", "orders@shop.example"),
        ] {
            assert_eq!(
                check(tenant, Some(from)),
                Err("from".into()),
                "{tenant} {from}"
            );
        }
    }

    #[test]
    fn without_from_the_tenant_default_or_else_none_is_used() {
        assert_eq!(
            check("billing", None),
            Ok(Some("Billing <invoices@company.example>".into()))
        );
        assert_eq!(check("shop", None), Ok(None));
        assert_eq!(check("unlisted", None), Ok(None));
    }

    #[test]
    fn a_bad_file_is_refused_saying_where() {
        for (text, expected) in [
            ("[tenants.a]\nadresses = []", "unknown field"),
            (
                "[tenants.a]\naddresses = [\"not an address\"]",
                "tenants.a: address",
            ),
            ("[tenants.a]\ndomains = [\"a@b\"]", "tenants.a: domain"),
            (
                "[tenants.a]\ndomains = [\"a.example\"]\ndefault_from = \"x@b.example\"",
                "tenants.a: default_from",
            ),
        ] {
            let error = Policy::parse(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
