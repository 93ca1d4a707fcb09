//! Certificates made at test time (rcgen): a certificate authority, and server certificates it
//! signs.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use trebuchet::{TlsClientConfig, TlsServerConfig};

/// The names the test servers' certificates are for: the host names the tests connect to.
pub const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// A certificate authority of its own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// The CA's certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self) -> TlsClientConfig {
        TlsClientConfig::with_root_pem(self.pem().as_bytes()).unwrap()
    }

    /// A server certificate for `names` signed by this CA, with its key, in PEM.
    pub fn server_pem(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let certificate = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    /// A server configuration with a certificate for `names` signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> TlsServerConfig {
        let (chain, key) = self.server_pem(names);
        TlsServerConfig::from_pem(chain.as_bytes(), key.as_bytes()).unwrap()
    }
}
