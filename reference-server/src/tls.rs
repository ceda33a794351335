//! TLS 1.3 configuration for the server and for clients, and the
//! self-signed development certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{0}: no usable PEM certificate or key")]
    Pem(String),
    /// rustls refused the configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The development certificate could not be made.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A name is not a valid TLS server name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

#[allow(
    deprecated,
    reason = "ring keeps the build free of aws-lc's toolchain; TLS carries only \
              end-to-end encrypted envelopes, so a post-quantum TLS key exchange is not needed"
)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// [`TlsError::Io`] or [`TlsError::Pem`].
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem(path.display().to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(path.display().to_string()));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A server configuration that speaks TLS 1.3 only.
///
/// # Errors
/// [`TlsError`] for unreadable files or a key that does not match.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_bytes = read(key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|_| TlsError::Pem(key.display().to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A client configuration that speaks TLS 1.3 only and trusts exactly the
/// certificates in `ca` (a pinned self-hosted or development certificate).
///
/// # Errors
/// [`TlsError`] for an unreadable file.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS name for a host the client dials.
///
/// # Errors
/// [`TlsError::ServerName`].
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}

/// Writes a self-signed certificate for `names` and its key as PEM files
/// (the key readable by the owner only). Clients pin the certificate file.
///
/// # Errors
/// [`TlsError`].
pub fn generate_dev_cert(names: &[String], cert: &Path, key: &Path) -> Result<(), TlsError> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    write_private(key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, made.cert.pem()).map_err(|source| TlsError::Io {
        path: cert.display().to_string(),
        source,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn a_dev_certificate_makes_matching_server_and_client_configs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        generate_dev_cert(&["localhost".into(), "127.0.0.1".into()], &cert, &key).unwrap();
        server_config(&cert, &key).unwrap();
        client_config(&cert).unwrap();
        assert!(matches!(client_config(&key), Err(TlsError::Pem(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
