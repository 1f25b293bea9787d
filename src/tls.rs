//! The trust every outgoing TLS connection starts from (upstreams, and authgate's own calls to
//! IdPs and the control plane): the web PKI roots plus optional PEM CAs, with the crypto
//! provider chosen explicitly.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A client configuration trusting the web PKI roots plus the PEM CAs in `extra_ca`, with
/// no ALPN protocol set (each client sets its own).
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("CA file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "CA file {}: no certificate in the file",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
    }
    // The provider is chosen explicitly so a second crypto backend pulled in elsewhere can
    // never make rustls panic at start-up.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
