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

/// TLS handshakes run here, on a thread of their own, not on the relay workers: a handshake is
/// public-key work (about a millisecond of CPU), and a flood of them on a worker's thread would
/// delay every datagram that worker relays. The connection's socket is handed over for the
/// handshake and handed back (with the session rustls built) once it is done; from then on the
/// worker owns it, as a plain TCP connection.
///
/// Nor do they run on the control plane's runtime ([`crate::control`]), the one place for
/// everything else beside the workers: whoever reaches a TLS port can make handshakes, without
/// credentials, as fast as the connection caps let them, and each costs CPU on the thread it
/// runs on. On the control plane that flood (or many slow clients, each holding a handshake for
/// its timeout) would compete with `/metrics`, the admin API, signaling and the fleet's
/// heartbeat, which a node must renew within its 5 s TTL or drop out of the fleet. On its own
/// thread a flood slows only other TLS handshakes.
pub(crate) struct Handshaker {
    handle: tokio::runtime::Handle,
    /// Dropped to end the thread (its runtime then ends with it).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Handshaker {
    pub(crate) fn start() -> std::io::Result<Handshaker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("vigi-tls-handshake".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Handshaker {
            handle,
            _stop: stop,
        })
    }

    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

/// Accept a TLS connection on the handshake thread (`hs`), within `timeout`: the session, whose
/// socket is registered with the calling thread's runtime again.
pub(crate) async fn handshake_elsewhere(
    hs: &tokio::runtime::Handle,
    config: Arc<ServerConfig>,
    stream: tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> std::io::Result<tokio_rustls::server::TlsStream<MovableTcp>> {
    use std::io::{Error, ErrorKind};
    let socket = stream.into_std()?;
    let done = hs
        .spawn(async move {
            let tcp = tokio::net::TcpStream::from_std(socket)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(timeout, acceptor.accept(MovableTcp(Some(tcp)))).await {
                Ok(r) => r,
                Err(_) => Err(Error::new(ErrorKind::TimedOut, "handshake timed out")),
            }
        })
        .await
        .map_err(|e| Error::other(format!("handshake task: {e}")))?;
    let mut tls = done?;
    tls.get_mut().0.rehome()?;
    Ok(tls)
}

/// A TCP connection that can move from one runtime's reactor to another's (see [`Handshaker`]).
pub(crate) struct MovableTcp(Option<tokio::net::TcpStream>);

impl MovableTcp {
    /// Register the socket with the calling thread's runtime instead of the one it was on.
    fn rehome(&mut self) -> std::io::Result<()> {
        let Some(s) = self.0.take() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        self.0 = Some(tokio::net::TcpStream::from_std(s.into_std()?)?);
        Ok(())
    }

    fn get(
        self: std::pin::Pin<&mut Self>,
    ) -> std::io::Result<std::pin::Pin<&mut tokio::net::TcpStream>> {
        match self.get_mut().0.as_mut() {
            Some(s) => Ok(std::pin::Pin::new(s)),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl tokio::io::AsyncRead for MovableTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for MovableTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}
