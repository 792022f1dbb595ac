//! Certificates for TLS tests: a CA of the test's own, a server certificate
//! for `127.0.0.1` and `localhost` and a client certificate it signed, and
//! an unrelated CA (for "wrong CA" tests), written as PEM files.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files in a directory of their own, removed (directory and all) when
/// dropped.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// The server's certificate (for `127.0.0.1`, `localhost`).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate signed by [`TestCerts::ca`].
    pub client_cert: PathBuf,
    /// The client certificate's private key.
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Generates everything into `dir` (created if missing; removed when
    /// this is dropped).
    ///
    /// # Panics
    ///
    /// If generating or writing fails.
    pub fn generate(dir: &Path) -> Self {
        fs::create_dir_all(dir).expect("create the certificate directory");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };
        let (ca_pem, ca_key, ca_params) = ca("sendonce test CA");
        let (other_pem, _, _) = ca("unrelated CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .expect("leaf parameters");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("sign the leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) = leaf("redis", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_pem, client_key) = leaf("sendonce", ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            dir: dir.to_owned(),
            ca: write("ca.pem", ca_pem),
            other_ca: write("other-ca.pem", other_pem),
            server_cert: write("server.pem", server_pem),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_pem),
            client_key: write("client-key.pem", client_key),
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir is harmless.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> (String, KeyPair, CertificateParams) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert.pem(), key, params)
}
