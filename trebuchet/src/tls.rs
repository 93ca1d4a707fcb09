//! TLS settings of clients and servers (rustls): how a client verifies the servers it reaches over
//! `wss://` and `tls://`, and the certificate a server presents.
//!
//! * [`TlsClientConfig`] ([`ClientConfig::tls`](crate::ClientConfig::tls)): the web PKI roots by
//!   default (what public endpoints such as API Gateway use), or roots of your own. The name
//!   checked (and sent as SNI) is the host of the URL or address.
//! * [`TlsServerConfig`] ([`ServerConfig::tls`](crate::ServerConfig::tls)): a certificate chain
//!   and its key, from PEM files, PEM or DER in memory, or a rustls `ServerConfig` of your own.
//!
//! Every configuration made here uses rustls' `ring` crypto provider explicitly, so nothing
//! depends on a process-wide default provider being installed. [`rustls`] is re-exported for
//! configurations of your own (client certificates, ALPN, other verifiers…).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use rustls;

/// The crypto provider of every configuration this module builds.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A TLS configuration could not be built: unreadable files, bad PEM, or a certificate or key
/// that rustls refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// PEM data could not be parsed, or lacks what was asked for.
    #[error("invalid PEM ({what}): {reason}")]
    Pem {
        /// What was being read, e.g. "certificate chain".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificates or the key (e.g. a key that does not match).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in `pem`; at least one.
fn certificates_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            what,
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no CERTIFICATE section".into(),
        });
    }
    Ok(certificates)
}

/// How a client verifies the servers it connects to over `wss://` and `tls://`.
///
/// The default trusts the web PKI roots (Mozilla's list, built in): what public endpoints use.
/// [`with_root_pem`](Self::with_root_pem) trusts your own CA instead (a private network, a
/// test); [`from_rustls`](Self::from_rustls) takes any rustls client configuration.
#[derive(Clone)]
pub struct TlsClientConfig {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClientConfig {
    /// Trusts the web PKI roots (from the `webpki-roots` crate).
    pub fn web_pki() -> Self {
        static WEB_PKI: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
        let config = WEB_PKI.get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            Arc::new(
                Self::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        });
        TlsClientConfig {
            config: config.clone(),
        }
    }

    /// Trusts only the CA certificates in `pem` (one or more `CERTIFICATE` sections).
    pub fn with_root_pem(pem: &[u8]) -> Result<Self, TlsError> {
        Self::with_roots(certificates_from_pem(pem, "root certificates")?)
    }

    /// Trusts only the CA certificates in the PEM file at `path`.
    pub fn with_root_pem_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        Self::with_root_pem(&read_file(path.as_ref())?)
    }

    /// Trusts only the CA certificates `roots` (DER).
    pub fn with_roots(
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root)?;
        }
        Ok(Self::from_rustls(Arc::new(
            Self::builder()
                .with_root_certificates(store)
                .with_no_client_auth(),
        )))
    }

    /// A rustls client configuration of your own, used as it is.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        TlsClientConfig { config }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    fn builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
    }
}

impl Default for TlsClientConfig {
    /// [`web_pki`](Self::web_pki).
    fn default() -> Self {
        Self::web_pki()
    }
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig").finish_non_exhaustive()
    }
}

/// The certificate a server presents over `wss://` and `tls://`, and its key.
#[derive(Clone)]
pub struct TlsServerConfig {
    config: Arc<rustls::ServerConfig>,
}

impl TlsServerConfig {
    /// The certificate chain in the PEM file `cert_chain` (the server's certificate first, then
    /// any intermediates) and the private key in the PEM file `key` (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Self::from_pem(&read_file(cert_chain.as_ref())?, &read_file(key.as_ref())?)
    }

    /// A certificate chain and a private key in PEM, in memory.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = certificates_from_pem(cert_chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| TlsError::Pem {
            what: "private key",
            reason: error.to_string(),
        })?;
        Self::from_der(chain, key)
    }

    /// A certificate chain and a private key in DER.
    pub fn from_der(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(cert_chain, key)?;
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// A rustls server configuration of your own, used as it is.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        TlsServerConfig { config }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_pki_configuration_is_built_once_with_its_roots() {
        let first = TlsClientConfig::web_pki();
        let second = TlsClientConfig::default();
        assert!(Arc::ptr_eq(first.rustls(), second.rustls()));
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        let error = TlsClientConfig::with_root_pem(b"not PEM at all").unwrap_err();
        assert!(
            matches!(
                error,
                TlsError::Pem {
                    what: "root certificates",
                    ..
                }
            ),
            "{error:?}"
        );
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let error = TlsServerConfig::from_pem(key_only, key_only).unwrap_err();
        assert!(error.to_string().contains("certificate chain"), "{error}");
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        let error = TlsClientConfig::with_root_pem(broken).unwrap_err();
        assert!(matches!(error, TlsError::Pem { .. }), "{error:?}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let error =
            TlsServerConfig::from_pem_files("/nonexistent/chain.pem", "/nonexistent/key.pem")
                .unwrap_err();
        assert!(matches!(error, TlsError::Read { .. }), "{error:?}");
        assert!(
            error.to_string().contains("/nonexistent/chain.pem"),
            "{error}"
        );
    }
}
