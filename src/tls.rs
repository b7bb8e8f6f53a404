//! HTTPS for the client-facing listener: certificate loading and ALPN, so
//! browsers and gateways negotiate HTTP/2 without prior knowledge.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use serde::{Deserialize, Serialize};

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Why `[server.tls]` cannot be used; each message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error("server.tls.cert_file: {0}")]
    Cert(String),
    /// The key file is missing, unreadable or holds no private key.
    #[error("server.tls.key_file: {0}")]
    Key(String),
    /// `upstream.ca_file` is missing, unreadable or holds no certificate.
    #[error("ca_file: {0}")]
    Ca(String),
    /// rustls refused the pair (for example a key that does not match).
    #[error("server.tls: {0}")]
    Pair(String),
}

/// TLS to the upstream: the bundled Mozilla roots, plus the certificates in
/// `upstream.ca_file` for an upstream behind a private CA (or a test one).
pub fn upstream_client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        let problem = |e: String| TlsError::Ca(format!("{}: {e}", file.display()));
        let certs = CertificateDer::pem_file_iter(file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| problem(e.to_string()))?;
        if certs.is_empty() {
            return Err(problem("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| problem(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Loads the certificate chain and key and offers h2 then http/1.1 by ALPN.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_file = &settings.cert_file;
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert(format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(format!(
            "{}: no PEM certificate found",
            cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| TlsError::Key(format!("{}: {e}", settings.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path) -> TlsSettings {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let settings = TlsSettings {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        std::fs::write(&settings.cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&settings.key_file, cert.signing_key.serialize_pem()).unwrap();
        settings
    }

    #[test]
    fn loads_a_pair_and_offers_h2() {
        let dir = std::env::temp_dir().join(format!("guestgate-tls-{}", std::process::id()));
        let config = server_config(&write_pair(&dir)).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
    }

    #[test]
    fn problems_name_the_setting() {
        let dir = std::env::temp_dir().join(format!("guestgate-tls-bad-{}", std::process::id()));
        let mut settings = write_pair(&dir);
        settings.key_file = dir.join("missing.pem");
        let err = server_config(&settings).unwrap_err().to_string();
        assert!(err.starts_with("server.tls.key_file: "), "{err}");
        settings.cert_file = settings.key_file.clone();
        let err = server_config(&settings).unwrap_err().to_string();
        assert!(err.starts_with("server.tls.cert_file: "), "{err}");
    }
}
