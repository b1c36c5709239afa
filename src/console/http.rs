//! The HTTP listener under the console and `/metrics`: accepts TCP connections (TLS
//! when configured), serves HTTP/1.1 with hyper, and bounds what a client can hold:
//! connections in total and per address, the time to send headers and to finish a
//! TLS handshake, the header size, and any silence on a connection (a board's stream
//! sends a keep-alive comment well within it).

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub per_address: usize,
    pub header_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A connection that neither sends nor receives a byte for this long is closed.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

/// The client's socket address, put into every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A stream that notes when bytes last moved.
struct Watched<S> {
    inner: S,
    base: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Serves `app` on `listener` until the runtime stops.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    what: &'static str,
) {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.connections));
        let per_address = Arc::new(PerAddress::default());
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!("{what}: connection limit reached, closing a new connection");
                continue;
            };
            if !per_address.enter(peer.ip(), limits.per_address) {
                tracing::debug!("{what}: too many connections from one address");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let tls = tls.clone();
            let per_address = per_address.clone();
            tokio::spawn(async move {
                connection(stream, peer, app, tls, limits).await;
                per_address.leave(peer.ip());
                drop(permit);
            });
        }
    });
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
) {
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Watched {
        inner: stream,
        base,
        last: last.clone(),
    };
    let serve = async move {
        match tls {
            Some(acceptor) => {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)).await {
                    Ok(Ok(s)) => http(s, peer, app, limits).await,
                    Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
            None => http(io, peer, app, limits).await,
        }
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(limits.idle_timeout / 4).await;
            let idle = base.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if idle >= limits.idle_timeout.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = watchdog => tracing::debug!("closing an idle connection"),
    }
}

async fn http<S>(io: S, peer: SocketAddr, app: Router, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            req
        },
    );
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!("HTTP connection ended: {e}");
    }
}

/// Reads the certificate chain and key (PEM) for a TLS listener.
pub fn tls_acceptor(
    certificate: &std::path::Path,
    private_key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| ("tls.certificate", format!("{}: {e}", certificate.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ("tls.certificate", format!("{}: {e}", certificate.display())))?;
    if certs.is_empty() {
        return Err((
            "tls.certificate",
            format!("{}: no certificate in the file", certificate.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(private_key)
        .map_err(|e| ("tls.private_key", format!("{}: {e}", private_key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls.certificate", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            (
                "tls.private_key",
                format!(
                    "{} does not go with {}: {e}",
                    private_key.display(),
                    certificate.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
