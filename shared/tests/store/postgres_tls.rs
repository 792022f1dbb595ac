//! TLS to Postgres as `sslmode` asks, against a private cluster started
//! with `ssl = on` and a certificate from a CA the test made.

use std::path::PathBuf;

use secrecy::SecretString;
use sendonce_shared::store::{PgOptions, Store};
use sendonce_testkit::PostgresServer;
use sendonce_testkit::ca::TestCa;

/// The server's certificate names this host only.
const HOST: &str = "db.sendonce.test";

struct Tls {
    server: PostgresServer,
    ca_file: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn tls_server() -> Tls {
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&[HOST]);
    let server = PostgresServer::start_with(Some((&cert, &key))).await;
    let dir = std::env::temp_dir().join(format!("sendonce-ca-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    Tls {
        server,
        ca_file,
        _dir: TempDir(dir),
    }
}

impl Tls {
    /// A URL naming `host`, connecting to 127.0.0.1 whatever the name.
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?hostaddr=127.0.0.1{query}",
            self.server.port()
        )
    }

    /// Whether a session made with `url` and `ca_file` is encrypted, or
    /// why none could be made.
    async fn encrypted(&self, url: &str, ca_file: Option<&PathBuf>) -> Result<bool, String> {
        let options = PgOptions {
            ca_file: ca_file.cloned(),
            ..PgOptions::default()
        };
        let store = Store::connect(&SecretString::from(url.to_owned()), &options, 1)
            .map_err(|e| chain(&e))?;
        let conn = store.pool().get().await.map_err(|e| chain(&e))?;
        let row = conn
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| chain(&e))?;
        Ok(row.get(0))
    }
}

/// An error and its causes, as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn each_sslmode_connects_as_libpq_would() {
    let tls = tls_server().await;
    let ca = Some(&tls.ca_file);

    // Encrypted, nothing verified.
    assert_eq!(
        tls.encrypted(&tls.url("127.0.0.1", "&sslmode=require"), None)
            .await,
        Ok(true)
    );
    // The default, `prefer`, takes TLS when the server offers it.
    assert_eq!(
        tls.encrypted(&tls.url("127.0.0.1", ""), None).await,
        Ok(true)
    );
    // Plaintext.
    assert_eq!(
        tls.encrypted(&tls.url("127.0.0.1", "&sslmode=disable"), None)
            .await,
        Ok(false)
    );
    // The chain and the name, with the private CA.
    assert_eq!(
        tls.encrypted(&tls.url(HOST, "&sslmode=verify-full"), ca)
            .await,
        Ok(true)
    );
    // The CA may also come from the URL, as libpq's `sslrootcert`.
    let in_url = format!("&sslmode=verify-full&sslrootcert={}", tls.ca_file.display());
    assert_eq!(tls.encrypted(&tls.url(HOST, &in_url), None).await, Ok(true));
    // `verify-ca` checks the chain, not the name.
    assert_eq!(
        tls.encrypted(&tls.url("other.example", "&sslmode=verify-ca"), ca)
            .await,
        Ok(true)
    );
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_name_or_from_an_unknown_ca() {
    let tls = tls_server().await;

    let wrong_name = tls
        .encrypted(
            &tls.url("other.example", "&sslmode=verify-full"),
            Some(&tls.ca_file),
        )
        .await
        .expect_err("the name does not match");
    assert!(
        wrong_name.contains("not valid for name") && wrong_name.contains("other.example"),
        "{wrong_name}"
    );

    // The system's roots do not know the test's CA.
    let unknown_ca = tls
        .encrypted(&tls.url(HOST, "&sslmode=verify-full"), None)
        .await
        .expect_err("the CA is unknown");
    assert!(
        unknown_ca.contains("UnknownIssuer")
            || unknown_ca.contains("unknown issuer")
            || unknown_ca.contains("no system CA"),
        "{unknown_ca}"
    );
    let unknown_ca = tls
        .encrypted(&tls.url("other.example", "&sslmode=verify-ca"), None)
        .await
        .expect_err("verify-ca checks the chain");
    assert!(!unknown_ca.is_empty());
}
