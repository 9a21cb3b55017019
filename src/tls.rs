//! TLS pieces shared by the adapters and the PostgreSQL store: the crypto provider and loading
//! certificates.

use std::path::Path;
use std::sync::Arc;

/// Installs rustls' `ring` crypto provider once per process (reqwest, lettre and the HTTP
/// listener all use rustls).
pub fn install_crypto() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// A server TLS configuration from PEM certificate chain and key files.
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    install_crypto();
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .map_err(|e| anyhow::anyhow!("cannot read tls.cert {}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| anyhow::anyhow!("tls.cert {} is not PEM: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert {} holds no certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key)
            .map_err(|e| anyhow::anyhow!("cannot read tls.key {}: {e}", key.display()))?,
    ))
    .map_err(|e| anyhow::anyhow!("tls.key {} is not PEM: {e}", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("tls.key {} holds no private key", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("tls.cert and tls.key do not make a usable pair: {e}"))?;
    Ok(Arc::new(config))
}

/// A client TLS configuration that trusts the public web roots and, with `ca`, the
/// certificates in that PEM file (a private CA, or a server's self-signed certificate).
pub fn client_config(ca: Option<&Path>) -> anyhow::Result<tokio_rustls::rustls::ClientConfig> {
    install_crypto();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
            std::fs::File::open(ca)
                .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", ca.display()))?,
        ))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the CA file {} is not PEM: {e}", ca.display()))?;
        if certs.is_empty() {
            anyhow::bail!("the CA file {} holds no certificate", ca.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("the CA file {}: {e}", ca.display()))?;
        }
    }
    Ok(tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A TLS acceptor for a listener configured with `tls: { cert, key }`, or none without it.
pub fn acceptor(
    files: Option<(&Path, &Path)>,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    files
        .map(|(cert, key)| server_config(cert, key).map(tokio_rustls::TlsAcceptor::from))
        .transpose()
}
