//! How the store connects: TLS as the URL's `sslmode` asks (with rustls),
//! the timeouts every connection gets, and whether a transaction pooler
//! sits between the processes and Postgres.
//!
//! `sslmode` follows libpq: `disable` is plaintext; `prefer` (the default)
//! uses TLS whenever the server offers it, unverified; `require` insists on
//! TLS, unverified; `verify-ca` checks the chain against the CA file (or
//! the system's roots) but not the host name; `verify-full` checks both.
//! tokio-postgres itself knows only the first three and verifies nothing,
//! so the two `verify-*` modes are taken out of the URL here and become a
//! rustls verifier.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// Whether a connection pooler in transaction mode (PgBouncer
/// `pool_mode = transaction`, and the like) stands between the processes
/// and Postgres.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooler {
    /// Direct connections, or a pooler in session mode: statements are
    /// prepared once per connection and cached (the fastest path).
    #[default]
    None,
    /// A pooler in transaction mode: a connection's statements may run on
    /// any server connection, so every statement is sent unnamed with its
    /// parameter types (one round trip, nothing left behind on the server),
    /// and no startup options are sent (PgBouncer refuses them: set
    /// `synchronous_commit` and `statement_timeout` on the role instead).
    Transaction,
}

/// The connection settings besides the URL.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// See [`Pooler`].
    pub pooler: Pooler,
    /// PEM file of the CAs trusted by `verify-ca` and `verify-full`
    /// (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// The server-side `statement_timeout` of every session; the client
    /// also gives up on a statement this long plus [`CLIENT_GRACE`] after
    /// sending it (a server that stopped answering altogether). Zero: no
    /// limit.
    pub statement_timeout: Duration,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// `TCP_USER_TIMEOUT`: how long data sent may stay unacknowledged by
    /// the server's host before the connection is dropped. Zero: the
    /// kernel's default.
    pub tcp_user_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pooler: Pooler::None,
            ca_file: None,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            tcp_user_timeout: Duration::from_secs(10),
        }
    }
}

/// How much longer than the server's `statement_timeout` the client waits
/// for an answer before it treats the server as silent.
pub const CLIENT_GRACE: Duration = Duration::from_secs(1);

/// `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext.
    Disable,
    /// TLS when the server offers it, not verified.
    Prefer,
    /// TLS, not verified.
    Require,
    /// TLS, the chain verified, not the host name.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode `allow` is not supported; use `disable`, `prefer` or `require`".into(),
                );
            }
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// A connection string with its TLS settings taken out.
#[derive(Debug)]
pub struct Target {
    /// What tokio-postgres is given.
    pub config: tokio_postgres::Config,
    /// The URL's `sslmode` (default `prefer`).
    pub ssl_mode: SslMode,
    /// The URL's `sslrootcert`, if any.
    pub root_cert: Option<PathBuf>,
}

/// Parses a URL (`postgres://...?sslmode=verify-full`) or a key=value
/// connection string, taking `sslmode` and `sslrootcert` out.
pub fn parse(conn_str: &str) -> Result<Target, String> {
    let mut ssl_mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => ssl_mode = Some(value.parse::<SslMode>()?),
            "sslrootcert" => root_cert = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if conn_str.starts_with("postgres://") || conn_str.starts_with("postgresql://") {
        match conn_str.split_once('?') {
            None => conn_str.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(key, value)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for word in conn_str.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            if !take(key.trim(), value.trim().trim_matches('\''))? {
                kept.push(word);
            }
        }
        kept.join(" ")
    };
    let config = rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| format!("not a Postgres connection string: {e}"))?;
    Ok(Target {
        config,
        ssl_mode: ssl_mode.unwrap_or(SslMode::Prefer),
        root_cert,
    })
}

/// The tokio-postgres configuration and TLS connector for `conn_str`.
pub fn configure(
    conn_str: &str,
    options: &PgOptions,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let Target {
        mut config,
        ssl_mode,
        root_cert,
    } = parse(conn_str).map_err(StoreError::Config)?;
    config.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    if !options.connect_timeout.is_zero() {
        config.connect_timeout(options.connect_timeout);
    }
    if !options.tcp_user_timeout.is_zero() {
        config.tcp_user_timeout(options.tcp_user_timeout);
    }
    if options.pooler == Pooler::None {
        // The fence must survive a server crash whatever the server's
        // default: a `sending` lost to `synchronous_commit = off` would let
        // a redelivered task send again without anyone knowing.
        let mut settings = format!(
            "-c synchronous_commit=on -c statement_timeout={}",
            options.statement_timeout.as_millis()
        );
        if let Some(given) = config.get_options() {
            settings = format!("{given} {settings}");
        }
        config.options(&settings);
    }
    let ca_file = options.ca_file.as_deref().or(root_cert.as_deref());
    let tls = tls_config(ssl_mode, ca_file)?;
    Ok((config, MakeRustlsConnect::new(tls)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration of `mode`.
pub fn tls_config(
    mode: SslMode,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, StoreError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("TLS: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unverified {
            algorithms: provider.signature_verification_algorithms,
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(ca_file)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| StoreError::Config(format!("TLS verifier: {e}")))?;
            if mode == SslMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CAs in `ca_file`, else the system's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let shown = file.display();
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| StoreError::Config(format!("DATABASE_CA_FILE {shown}: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Config(format!("DATABASE_CA_FILE {shown}: {e}")))?;
            if certs.is_empty() {
                return Err(StoreError::Config(format!(
                    "DATABASE_CA_FILE {shown} holds no PEM certificate"
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Config(format!("DATABASE_CA_FILE {shown}: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(StoreError::Config(
                    "sslmode verify-ca/verify-full: no system CA certificates found; set DATABASE_CA_FILE"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// `prefer` and `require`: encrypted, the server's certificate taken as
/// it is (libpq's semantics). The handshake's signatures are still checked,
/// so the session is with the holder of the certificate's key.
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the
/// certificate is not compared with the host connected to.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The chain was verified before the name was compared.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_a_url() {
        let target = parse(
            "postgres://u:p@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=/ca.pem",
        )
        .expect("parses");
        assert_eq!(target.ssl_mode, SslMode::VerifyFull);
        assert_eq!(target.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(target.config.get_dbname(), Some("app"));
    }

    #[test]
    fn sslmode_is_taken_out_of_a_key_value_string_and_defaults_to_prefer() {
        let target = parse("host=db user=u sslmode=verify-ca dbname=app").expect("parses");
        assert_eq!(target.ssl_mode, SslMode::VerifyCa);
        assert_eq!(target.config.get_dbname(), Some("app"));
        assert_eq!(
            parse("postgres://db/app").expect("parses").ssl_mode,
            SslMode::Prefer
        );
    }

    #[test]
    fn an_unknown_sslmode_is_refused() {
        let err = parse("postgres://db/app?sslmode=sometimes").expect_err("refused");
        assert!(err.contains("sometimes"), "{err}");
    }

    #[test]
    fn the_session_settings_are_not_sent_through_a_transaction_pooler() {
        let direct = PgOptions::default();
        let (config, _) = configure("postgres://db/app?options=-c%20a%3Db", &direct).expect("ok");
        let options = config.get_options().expect("options");
        assert!(options.contains("synchronous_commit=on"), "{options}");
        assert!(options.contains("statement_timeout=5000"), "{options}");
        let pooled = PgOptions {
            pooler: Pooler::Transaction,
            ..PgOptions::default()
        };
        let (config, _) = configure("postgres://db/app", &pooled).expect("ok");
        assert_eq!(config.get_options(), None);
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(10))
        );
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(5)));
    }
}
