//! `[tls]`, `[admin.tls]` and a backend's `tls`: certificates and keys in PEM files, read
//! here so that a missing or bad file is a config error that names its field and its path
//! (at start, in `weir check`, and on SIGHUP, where it refuses the reload). What is read is
//! never put into an error: a key file's contents stay out of logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;

use super::error::{ConfigError, quoted};

/// A listener's certificate chain and private key (`[tls]`, `[admin.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM: the server's certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A backend's `tls = { ... }`, for an `https://` URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendTls {
    /// PEM: the certificates trusted to sign the backend's (None: the system's roots).
    pub ca: Option<PathBuf>,
    /// PEM: a client certificate chain, for a backend that asks for one (mTLS).
    pub cert: Option<PathBuf>,
    /// PEM: the client certificate's private key.
    pub key: Option<PathBuf>,
    /// The name sent as SNI and checked in the backend's certificate (None: the URL's host).
    pub server_name: Option<String>,
}

/// The crypto of every TLS connection weir makes or takes: ring (see Cargo.toml).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        ConfigError::invalid(field, format!("cannot read the file: {e}"))
            .value(quoted(&path.display().to_string()))
    })
}

/// Every certificate in a PEM file; none at all is an error.
pub fn load_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(field, path)?;
    let bad = |reason: String| {
        ConfigError::invalid(field, reason)
            .value(quoted(&path.display().to_string()))
            .example(format!("{} = \"/etc/weir/tls/chain.pem\"", leaf(field)))
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM file of certificates ({e})")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file. The error never quotes the file.
pub fn load_key(field: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        ConfigError::invalid(
            field,
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)",
        )
        .value(quoted(&path.display().to_string()))
        .example(format!("{} = \"/etc/weir/tls/key.pem\"", leaf(field)))
    })
}

/// `tls.cert` → `cert`.
fn leaf(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

/// A chain and its key, checked to belong together. `at` is the table (`tls`, `admin.tls`,
/// `backends[0].tls`).
fn certified(
    at: &str,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ConfigError> {
    let chain = load_certs(&format!("{at}.cert"), cert)?;
    let der = load_key(&format!("{at}.key"), key)?;
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        ConfigError::invalid(
            format!("{at}.key"),
            format!("not a usable private key: {e}"),
        )
        .value(quoted(&key.display().to_string()))
    })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        // Unknown: the key's kind cannot tell its public half; the handshake will.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(_) => Err(ConfigError::invalid(
            format!("{at}.key"),
            format!(
                "is not the private key of the first certificate in {}",
                cert.display()
            ),
        )
        .value(quoted(&key.display().to_string()))),
    }
}

impl ListenerTls {
    /// Reads and checks the chain and key; `at` is the table's name.
    pub fn load(&self, at: &str) -> Result<Arc<CertifiedKey>, ConfigError> {
        certified(at, &self.cert, &self.key, &provider()).map(Arc::new)
    }
}

impl BackendTls {
    /// The client config for a backend at `host` (`at`: `backends[0].tls`): its roots, its
    /// client certificate, HTTP/1.1 by ALPN.
    pub fn client_config(&self, at: &str) -> Result<Arc<ClientConfig>, ConfigError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                let field = format!("{at}.ca");
                for c in load_certs(&field, ca)? {
                    roots.add(c).map_err(|e| {
                        ConfigError::invalid(&field, format!("not a CA certificate: {e}"))
                            .value(quoted(&ca.display().to_string()))
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{at}.ca"),
                        "the system has no trusted root certificates (install ca-certificates), and no CA file is given",
                    )
                    .example("tls = { ca = \"/etc/weir/tls/backend-ca.pem\" }"));
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid(at, e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let ck = certified(at, cert, key, &provider)?;
                builder
                    .with_client_auth_cert(ck.cert, load_key(&format!("{at}.key"), key)?)
                    .map_err(|e| {
                        ConfigError::invalid(format!("{at}.cert"), e.to_string())
                            .value(quoted(&cert.display().to_string()))
                    })?
            }
            (Some(_), None) | (None, Some(_)) => {
                let missing = if self.cert.is_none() { "cert" } else { "key" };
                return Err(ConfigError::invalid(
                    format!("{at}.{missing}"),
                    "a client certificate needs both `cert` and `key`",
                )
                .example(
                    "tls = { cert = \"/etc/weir/tls/client.pem\", key = \"/etc/weir/tls/client-key.pem\" }",
                ));
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A digest of the files' contents and the name: what a reload compares to keep a
    /// backend's connections, or to open new ones with the new certificates.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for path in [&self.ca, &self.cert, &self.key] {
            let bytes = path.as_ref().and_then(|p| std::fs::read(p).ok());
            h.update(
                bytes
                    .as_deref()
                    .map_or(0, |b| b.len() as u64 + 1)
                    .to_le_bytes(),
            );
            h.update(bytes.unwrap_or_default());
        }
        h.update(self.server_name.as_deref().unwrap_or_default());
        h.finalize().into()
    }

    /// The name to send and verify: `server_name`, else the URL's host.
    pub fn server_name(&self, at: &str, host: &str) -> Result<ServerName<'static>, ConfigError> {
        let (field, name) = match &self.server_name {
            Some(n) => (format!("{at}.server_name"), n.as_str()),
            None => (at.replace(".tls", ".url"), host),
        };
        let name = name
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(name);
        ServerName::try_from(name.to_owned()).map_err(|_| {
            ConfigError::invalid(field, "not a DNS name or IP address for TLS")
                .value(quoted(name))
                .example("server_name = \"vllm.internal\"")
        })
    }
}
