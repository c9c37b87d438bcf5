//! TLS for the stream listeners (RFC 8656 §3.1, `turns:`): rustls with the ring provider, TLS 1.2
//! and 1.3, ALPN `stun.turn` (RFC 7443). The certificate in force lives in a [`TlsSource`] that
//! every worker reads at each handshake, so SIGUSR2 swaps it without touching live connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// ALPN protocol id of STUN/TURN over (D)TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// Where the certificate and key come from and which protocol versions are on.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// `--cert`: PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// `--pkey`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub pkey: PathBuf,
    /// `--no-tlsv1_2`: serve TLS 1.3 only.
    pub no_tls12: bool,
}

/// Why a certificate or key could not be loaded; the message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--cert {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("--pkey {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("--cert/--pkey: {0}")]
    Mismatch(String),
}

fn cert_err(p: &Path, reason: impl ToString) -> TlsError {
    TlsError::Cert {
        path: p.display().to_string(),
        reason: reason.to_string(),
    }
}

fn key_err(p: &Path, reason: impl ToString) -> TlsError {
    TlsError::Key {
        path: p.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Read the certificate chain and key from disk and build a rustls server configuration.
pub fn load(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let cert_pem = std::fs::read(&settings.cert).map_err(|e| cert_err(&settings.cert, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(&settings.cert, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(cert_err(&settings.cert, "no CERTIFICATE in the PEM file"));
    }
    let key_pem = std::fs::read(&settings.pkey).map_err(|e| key_err(&settings.pkey, e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_err(&settings.pkey, format!("no usable private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.no_tls12 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(config)
}

/// The TLS configuration in force, shared by every worker and swapped whole on SIGUSR2.
#[derive(Debug)]
pub struct TlsSource {
    pub settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
}

impl TlsSource {
    /// Load the certificate and key once (a start-up error when they are unusable).
    pub fn new(settings: TlsSettings) -> Result<TlsSource, TlsError> {
        let config = load(&settings)?;
        Ok(TlsSource {
            settings,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Read the certificate and key again; on error the old ones stay in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.settings)?;
        self.current.store(Arc::new(config));
        Ok(())
    }
}
