//! A throwaway certificate authority, for tests of TLS connections.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA made for one test, able to issue server certificates.
#[derive(Debug)]
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl TestCa {
    /// A new self-signed CA.
    ///
    /// # Panics
    ///
    /// If rcgen fails (it does not, for these parameters).
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sendonce test CA");
        let key = KeyPair::generate().expect("CA key");
        let pem = params
            .clone()
            .self_signed(&key)
            .expect("CA certificate")
            .pem();
        Self { params, key, pem }
    }

    /// The CA's certificate, in PEM (what `DATABASE_CA_FILE` holds).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its
    /// key, both in PEM.
    ///
    /// # Panics
    ///
    /// If a name is not valid in a certificate.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("server certificate parameters");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
