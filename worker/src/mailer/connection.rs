//! One relay's connections: its settings, parsed from one lettre URL, and
//! the deadpool manager that opens (greeting, EHLO, STARTTLS, AUTH) and
//! checks them.

use std::fmt;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

/// A pooled connection unused for longer than this is checked with `NOOP`
/// before reuse, since servers close idle connections.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(10);

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text.
    None,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS, or fail.
    Required,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// Where and how to connect to one relay, parsed from an entry of `SMTP_URL`.
#[derive(Clone)]
pub struct SmtpSettings {
    host: String,
    port: u16,
    tls: TlsMode,
    credentials: Option<Credentials>,
    hello: ClientId,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

impl SmtpSettings {
    /// Parses lettre's URL syntax: `smtp[s]://[user:pass@]host[:port][/ehlo-name][?tls=required|opportunistic]`.
    pub fn from_url(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("has no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let tls_param = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (tls, default_port) = match (url.scheme(), tls_param.as_deref()) {
            ("smtps", None) => (TlsMode::Implicit, 465),
            ("smtp", None) => (TlsMode::None, 25),
            ("smtp", Some("required")) => (TlsMode::Required, 587),
            ("smtp", Some("opportunistic")) => (TlsMode::Opportunistic, 587),
            ("smtp", Some(other)) => {
                return Err(format!("tls={other} is not one of required, opportunistic"));
            }
            (scheme, _) => return Err(format!("scheme {scheme} is not smtp or smtps")),
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, pass) => {
                let decode = |v: &str| {
                    url::form_urlencoded::parse(v.as_bytes())
                        .map(|(k, _)| k.into_owned())
                        .next()
                        .unwrap_or_default()
                };
                Some(Credentials::new(decode(user), decode(pass.unwrap_or(""))))
            }
        };
        let hello = match url.path().trim_start_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(default_port),
            tls,
            credentials,
            hello,
        })
    }

    /// `host:port`, for logs and metric labels: never the credentials.
    pub fn name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether credentials could cross the network unencrypted: a user in
    /// the URL with no TLS, or with STARTTLS only if offered (a server, or
    /// anyone in the path, can leave it out).
    pub fn may_authenticate_in_plaintext(&self) -> bool {
        self.credentials.is_some() && matches!(self.tls, TlsMode::None | TlsMode::Opportunistic)
    }

    fn tls_parameters(&self) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        TlsParameters::new(self.host.clone())
    }
}

/// Makes and checks pooled SMTP connections.
#[derive(Debug)]
pub struct SmtpManager {
    pub(super) settings: SmtpSettings,
    pub(super) timeout: Duration,
}

/// Opening a pooled SMTP connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection could not be made.
    #[error("could not connect: {0}")]
    Tcp(#[source] std::io::Error),
    /// No TCP connection within `SMTP_TIMEOUT_MS`.
    #[error("no TCP connection within {0:?}")]
    Timeout(Duration),
    /// The SMTP greeting, EHLO, STARTTLS or AUTH failed.
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
}

impl managed::Manager for SmtpManager {
    type Type = AsyncSmtpConnection;
    type Error = ConnectError;

    async fn create(&self) -> Result<AsyncSmtpConnection, Self::Error> {
        let s = &self.settings;
        let mut conn = if s.tls == TlsMode::Implicit {
            AsyncSmtpConnection::connect_tokio1(
                (s.host.as_str(), s.port),
                Some(self.timeout),
                &s.hello,
                Some(s.tls_parameters()?),
                None,
            )
            .await?
        } else {
            let tcp = tokio::time::timeout(
                self.timeout,
                tokio::net::TcpStream::connect((s.host.as_str(), s.port)),
            )
            .await
            .map_err(|_| ConnectError::Timeout(self.timeout))?
            .map_err(ConnectError::Tcp)?;
            // lettre writes the message and its closing dot in two writes;
            // with Nagle's algorithm the dot waits for the server's delayed
            // ACK (40 ms on Linux), on every message.
            tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &s.hello).await?
        };
        let starttls = match s.tls {
            TlsMode::Required => true,
            TlsMode::Opportunistic => conn.can_starttls(),
            TlsMode::None | TlsMode::Implicit => false,
        };
        if starttls {
            conn.starttls(s.tls_parameters()?, &s.hello).await?;
        }
        if let Some(credentials) = &s.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut AsyncSmtpConnection,
        metrics: &Metrics,
    ) -> RecycleResult<Self::Error> {
        if conn.has_broken() {
            return Err(RecycleError::message("connection broken"));
        }
        // Bounded: a peer that vanished without a FIN or RST would
        // otherwise hold this task, and its slot, forever.
        if metrics.last_used() > IDLE_CHECK_AFTER
            && !tokio::time::timeout(self.timeout, conn.test_connected())
                .await
                .unwrap_or(false)
        {
            return Err(RecycleError::message(
                "idle connection closed or silent on NOOP",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use deadpool::managed::Manager;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that greets and answers EHLO, then reads but never answers
    /// again, like a peer gone without closing the connection.
    async fn silent_after_ehlo() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"220 silent ESMTP\r\n")
                .await
                .expect("greet");
            let _ehlo = lines.next_line().await;
            write.write_all(b"250 silent\r\n").await.expect("ehlo");
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        port
    }

    #[tokio::test]
    async fn an_idle_connection_whose_server_went_silent_is_discarded_not_waited_on() {
        let port = silent_after_ehlo().await;
        let settings = SmtpSettings::from_url(&format!("smtp://127.0.0.1:{port}")).expect("url");
        let manager = SmtpManager {
            settings,
            timeout: Duration::from_millis(300),
        };
        let mut conn = manager.create().await.expect("connect");
        let idle = Metrics {
            created: Instant::now() - IDLE_CHECK_AFTER * 2,
            ..Metrics::default()
        };

        let recycled =
            tokio::time::timeout(Duration::from_secs(10), manager.recycle(&mut conn, &idle))
                .await
                .expect("recycling must not wait on a silent server");

        assert!(recycled.is_err(), "a silent connection must not be reused");
    }

    #[test]
    fn smtp_urls_parse_like_lettre() {
        let s = SmtpSettings::from_url("smtp://127.0.0.1:1025").expect("plain");
        assert_eq!((s.port, s.tls), (1025, TlsMode::None));
        let s = SmtpSettings::from_url("smtps://user:p%40ss@mail.example.com").expect("smtps");
        assert_eq!((s.port, s.tls), (465, TlsMode::Implicit));
        assert!(s.credentials.is_some());
        assert!(!format!("{s:?}").contains("p@ss"));
        let s = SmtpSettings::from_url("smtp://mx.example.com?tls=required").expect("starttls");
        assert_eq!((s.port, s.tls), (587, TlsMode::Required));
        assert!(SmtpSettings::from_url("http://x").is_err());
        let plain = |url| {
            SmtpSettings::from_url(url)
                .expect("parses")
                .may_authenticate_in_plaintext()
        };
        assert!(plain("smtp://user:pass@mx.example.com"));
        assert!(plain("smtp://user:pass@mx.example.com?tls=opportunistic"));
        assert!(!plain("smtp://user:pass@mx.example.com?tls=required"));
        assert!(!plain("smtps://user:pass@mx.example.com"));
        assert!(!plain("smtp://mx.example.com"));
        assert!(SmtpSettings::from_url("smtp://x?tls=maybe").is_err());
    }
}
