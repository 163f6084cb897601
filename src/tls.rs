//! TLS on a listener: the server config (ALPN h2 and http/1.1), a certificate that a reload
//! swaps for new handshakes while open connections go on, and the handshake failures counted
//! by reason in `weir_tls_handshake_errors_total{listener, reason}`.

use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, ListenerTls};
use crate::metrics::Metrics;

/// Why a handshake failed: the `reason` label's closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// The client's first bytes were not a TLS record: plaintext HTTP to the TLS port.
    NotTls,
    /// No complete handshake within `limits.header_read_timeout`.
    Timeout,
    /// The client closed or reset the connection during the handshake.
    Eof,
    /// No protocol version, cipher suite or ALPN protocol in common, or a malformed handshake.
    Protocol,
    /// The client rejected the server's certificate (an alert: unknown CA, bad certificate).
    Certificate,
    Other,
}

/// Every reason, in the order they are exported.
pub const REASONS: &[HandshakeError] = &[
    HandshakeError::NotTls,
    HandshakeError::Timeout,
    HandshakeError::Eof,
    HandshakeError::Protocol,
    HandshakeError::Certificate,
    HandshakeError::Other,
];

impl HandshakeError {
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeError::NotTls => "not_tls",
            HandshakeError::Timeout => "timeout",
            HandshakeError::Eof => "eof",
            HandshakeError::Protocol => "protocol",
            HandshakeError::Certificate => "certificate",
            HandshakeError::Other => "other",
        }
    }

    /// The reason of a failed `accept`.
    pub fn of(e: &io::Error) -> HandshakeError {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match tls {
                rustls::Error::AlertReceived(a) => match a {
                    AlertDescription::BadCertificate
                    | AlertDescription::UnsupportedCertificate
                    | AlertDescription::CertificateRevoked
                    | AlertDescription::CertificateExpired
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::UnknownCA
                    | AlertDescription::AccessDenied
                    | AlertDescription::UnrecognisedName => HandshakeError::Certificate,
                    _ => HandshakeError::Protocol,
                },
                rustls::Error::InvalidMessage(_)
                | rustls::Error::PeerIncompatible(_)
                | rustls::Error::PeerMisbehaved(_)
                | rustls::Error::InappropriateMessage { .. }
                | rustls::Error::InappropriateHandshakeMessage { .. }
                | rustls::Error::NoApplicationProtocol
                | rustls::Error::DecryptError => HandshakeError::Protocol,
                _ => HandshakeError::Other,
            };
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeError::Eof,
            io::ErrorKind::InvalidData => HandshakeError::Protocol,
            _ => HandshakeError::Other,
        }
    }
}

/// Hands every handshake the certificate in force now.
#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A listener's TLS: its acceptor, its certificate, its handshake-failure counters.
pub struct ServerTls {
    /// `proxy` or `admin`.
    pub listener: &'static str,
    /// The config table (`tls`, `admin.tls`), for errors.
    at: &'static str,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    /// By [`REASONS`]' order.
    errors: Vec<IntCounter>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .finish()
    }
}

impl ServerTls {
    /// Reads the certificate and key of `cfg` (`at`: the table) and registers the listener's
    /// counters at 0.
    pub fn new(
        listener: &'static str,
        at: &'static str,
        cfg: &ListenerTls,
        metrics: &Metrics,
    ) -> Result<ServerTls, ConfigError> {
        let resolver = Arc::new(Resolver(ArcSwap::new(cfg.load(at)?)));
        let mut config = ServerConfig::builder_with_provider(crate::config::tls_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid(at, e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let errors = REASONS
            .iter()
            .map(|r| metrics.tls_handshake_errors(listener, r.as_str()))
            .collect();
        Ok(ServerTls {
            listener,
            at,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            errors,
        })
    }

    /// Reads `cfg`'s certificate and key: the new handshakes get them once [`install`]ed.
    /// A file that cannot be used is an error that names it, and nothing changes.
    ///
    /// [`install`]: ServerTls::install
    pub fn read(&self, cfg: &ListenerTls) -> Result<Arc<CertifiedKey>, ConfigError> {
        cfg.load(self.at)
    }

    /// New handshakes get `key`; connections already open keep theirs.
    pub fn install(&self, key: Arc<CertifiedKey>) {
        self.resolver.0.store(key);
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Counts a failed handshake and says so at debug level (the peer and the reason only).
    pub fn failed(
        &self,
        reason: HandshakeError,
        peer: std::net::SocketAddr,
        error: &dyn std::fmt::Display,
    ) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.errors[i].inc();
        }
        tracing::debug!(
            listener = self.listener,
            reason = reason.as_str(),
            %peer,
            error = %error,
            "TLS handshake failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_error(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn a_failed_handshake_gets_its_reason() {
        let alert = |a| tls_error(rustls::Error::AlertReceived(a));
        assert_eq!(
            HandshakeError::of(&alert(AlertDescription::UnknownCA)),
            HandshakeError::Certificate
        );
        assert_eq!(
            HandshakeError::of(&alert(AlertDescription::BadCertificate)),
            HandshakeError::Certificate
        );
        assert_eq!(
            HandshakeError::of(&alert(AlertDescription::ProtocolVersion)),
            HandshakeError::Protocol
        );
        assert_eq!(
            HandshakeError::of(&tls_error(rustls::Error::NoApplicationProtocol)),
            HandshakeError::Protocol
        );
        assert_eq!(
            HandshakeError::of(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            HandshakeError::Eof
        );
        assert_eq!(
            HandshakeError::of(&io::Error::from(io::ErrorKind::ConnectionReset)),
            HandshakeError::Eof
        );
        assert_eq!(
            HandshakeError::of(&io::Error::from(io::ErrorKind::PermissionDenied)),
            HandshakeError::Other
        );
        let names: Vec<_> = REASONS.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "not_tls",
                "timeout",
                "eof",
                "protocol",
                "certificate",
                "other"
            ]
        );
    }
}
