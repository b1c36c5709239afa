//! The tokio layer under the endpoint: UDP sockets and TCP connections.
//!
//! Owns sockets, connection limits (`stream_limits`: per-source and total counts, the
//! message deadline, idle time; message size) and the choice of local address on
//! wildcard binds. It frames TCP and TLS streams with `raw::StreamFramer` and hands
//! everything to the endpoint's task as `NetInput`; it must not interpret SIP. Sends never block the endpoint: a full connection queue or
//! an unreachable address loses the message like any datagram, and is counted.

use super::raw::{StreamFramer, StreamItem};
use super::stream_limits::{ConnectionGate, Refusal, StreamClock};
use crate::call::{Link, Peer};
use crate::config::{ListenAddr, Protocol};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

pub enum NetInput {
    Datagram {
        link: Link,
        local: SocketAddr,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Stream {
        peer: Peer,
        item: StreamItem,
    },
    ConnOpened {
        id: u64,
        sender: mpsc::Sender<Arc<[u8]>>,
    },
    ConnClosed {
        id: u64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Time without a complete message (or keep-alive) after which a connection closes.
    pub idle_timeout: Duration,
    pub max_per_source: usize,
    pub max_message: usize,
    /// Stream connections (TCP and TLS together) held at once.
    pub max_connections: usize,
    /// Time a message may take to arrive once its first byte has.
    pub message_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            idle_timeout: Duration::from_secs(120),
            max_per_source: 16,
            max_message: 16384,
            max_connections: 1000,
            message_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of what the transport dropped.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub send_errors: AtomicU64,
    pub queue_full: AtomicU64,
    pub tcp_refused: AtomicU64,
    /// Connections closed because a message did not complete in time.
    pub tcp_message_timeouts: AtomicU64,
    /// TLS connections whose handshake failed or took too long.
    pub tls_handshake_failures: AtomicU64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TransportCounts {
    pub send_errors: u64,
    pub queue_full: u64,
    pub tcp_refused: u64,
    pub tcp_message_timeouts: u64,
    pub tls_handshake_failures: u64,
}

impl TransportStats {
    pub fn snapshot(&self) -> TransportCounts {
        TransportCounts {
            send_errors: self.send_errors.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            tcp_refused: self.tcp_refused.load(Ordering::Relaxed),
            tcp_message_timeouts: self.tcp_message_timeouts.load(Ordering::Relaxed),
            tls_handshake_failures: self.tls_handshake_failures.load(Ordering::Relaxed),
        }
    }
}

pub struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    conns: HashMap<u64, mpsc::Sender<Arc<[u8]>>>,
    /// What each `sip.listen` entry is bound to (port 0 resolved).
    pub bound: Vec<ListenAddr>,
    pub stats: Arc<TransportStats>,
}

const INPUT_QUEUE: usize = 20_000;

pub fn input_channel() -> (mpsc::Sender<NetInput>, mpsc::Receiver<NetInput>) {
    mpsc::channel(INPUT_QUEUE)
}

/// The address the kernel would use to reach `remote` (no packet is sent).
fn route_local_ip(remote: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(remote).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Local address for a packet from `remote` on a socket bound to `bound`: the bound
/// address, or for a wildcard bind the address routing picks (cached).
struct LocalResolver {
    bound: SocketAddr,
    cache: HashMap<IpAddr, IpAddr>,
}

impl LocalResolver {
    fn local_for(&mut self, remote: SocketAddr) -> SocketAddr {
        if !self.bound.ip().is_unspecified() {
            return self.bound;
        }
        if self.cache.len() > 10_000 {
            self.cache.clear();
        }
        let ip = *self
            .cache
            .entry(remote.ip())
            .or_insert_with(|| route_local_ip(remote).unwrap_or(self.bound.ip()));
        SocketAddr::new(ip, self.bound.port())
    }
}

/// The TLS listener's settings (see `sip::tls`).
#[derive(Clone)]
pub struct TlsListener {
    pub config: Arc<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
}

pub async fn bind(
    listen: &[ListenAddr],
    limits: TcpLimits,
    input: mpsc::Sender<NetInput>,
) -> std::io::Result<Transports> {
    bind_with_tls(listen, limits, None, input).await
}

/// Binds every `sip.listen` entry; `tls:` entries need `tls`.
pub async fn bind_with_tls(
    listen: &[ListenAddr],
    limits: TcpLimits,
    tls: Option<TlsListener>,
    input: mpsc::Sender<NetInput>,
) -> std::io::Result<Transports> {
    let stats = Arc::new(TransportStats::default());
    let mut udp = Vec::new();
    let mut bound = Vec::new();
    let next_conn = Arc::new(AtomicU64::new(1));
    let gate = ConnectionGate::new(limits.max_per_source, limits.max_connections);
    for l in listen {
        match l.protocol {
            Protocol::Udp => {
                let sock = bind_udp(l.addr)?;
                let local = sock.local_addr()?;
                let sock = Arc::new(sock);
                let link = Link::Udp(udp.len());
                udp.push(sock.clone());
                bound.push(ListenAddr {
                    protocol: Protocol::Udp,
                    addr: local,
                });
                tokio::spawn(udp_loop(sock, link, local, input.clone()));
            }
            Protocol::Tcp | Protocol::Tls => {
                let tls = match (l.protocol, &tls) {
                    (Protocol::Tls, None) => {
                        return Err(std::io::Error::other(format!(
                            "{l}: no TLS certificate configured"
                        )))
                    }
                    (Protocol::Tls, Some(t)) => Some(t.clone()),
                    _ => None,
                };
                let listener = TcpListener::bind(l.addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}:{}: {e}", l.protocol, l.addr))
                })?;
                let local = listener.local_addr()?;
                bound.push(ListenAddr {
                    protocol: l.protocol,
                    addr: local,
                });
                tokio::spawn(accept_loop(
                    listener,
                    tls,
                    limits,
                    input.clone(),
                    next_conn.clone(),
                    gate.clone(),
                    stats.clone(),
                ));
            }
        }
    }
    Ok(Transports {
        udp,
        conns: HashMap::new(),
        bound,
        stats,
    })
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Large buffers absorb call-setup bursts without kernel drops.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("udp:{addr}: {e}")))?;
    UdpSocket::from_std(s.into())
}

async fn udp_loop(
    sock: Arc<UdpSocket>,
    link: Link,
    bound: SocketAddr,
    input: mpsc::Sender<NetInput>,
) {
    let mut buf = vec![0u8; 65536];
    let mut resolver = LocalResolver {
        bound,
        cache: HashMap::new(),
    };
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let local = resolver.local_for(from);
                let msg = NetInput::Datagram {
                    link,
                    local,
                    from,
                    data: buf[..n].to_vec(),
                };
                // A full queue means overload: shed datagrams instead of buffering
                // without bound (the peer retransmits).
                if input.try_send(msg).is_err() && input.is_closed() {
                    return;
                }
            }
            // ICMP errors (port unreachable) surface here on some systems; ignore them.
            Err(e) => tracing::trace!("udp receive: {e}"),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsListener>,
    limits: TcpLimits,
    input: mpsc::Sender<NetInput>,
    next_conn: Arc<AtomicU64>,
    gate: ConnectionGate,
    stats: Arc<TransportStats>,
) {
    let mut at_cap = false;
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(permit) = admit_stream(&gate, remote, &stats, &mut at_cap) else {
            continue; // Dropping the stream closes it.
        };
        let id = next_conn.fetch_add(1, Ordering::Relaxed);
        let input = input.clone();
        let stats = stats.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let Some(tls) = tls else {
                let peer = Peer {
                    link: Link::Tcp(id),
                    remote,
                    local,
                };
                return connection(stream, id, peer, limits, input, &stats).await;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
            let stream =
                match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("TLS connection {id}: handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("TLS connection {id}: handshake timed out");
                        return;
                    }
                };
            let peer = Peer {
                link: Link::Tls(id),
                remote,
                local,
            };
            connection(stream, id, peer, limits, input, &stats).await;
        });
    }
}

/// Counts a connection in, or refuses it (counted; one log line each time the total
/// cap is reached, none per source: that would log a flood).
pub(super) fn admit_stream(
    gate: &ConnectionGate,
    remote: SocketAddr,
    stats: &TransportStats,
    at_cap: &mut bool,
) -> Option<super::stream_limits::ConnectionPermit> {
    match gate.admit(remote.ip()) {
        Ok(p) => {
            *at_cap = false;
            Some(p)
        }
        Err(why) => {
            stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            if why == Refusal::Total && !*at_cap {
                tracing::warn!(
                    "stream connections refused: limits.max_tcp_connections ({}) reached",
                    gate.open()
                );
            }
            *at_cap = why == Refusal::Total;
            None
        }
    }
}

/// Runs one accepted stream (TCP, or TLS after its handshake): announces its sender to
/// the endpoint, frames what arrives, and closes it when a message takes too long or
/// no complete message came for the idle time.
pub(super) async fn connection<S>(
    stream: S,
    id: u64,
    peer: Peer,
    limits: TcpLimits,
    input: mpsc::Sender<NetInput>,
    stats: &TransportStats,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(256);
    if input
        .send(NetInput::ConnOpened { id, sender: tx })
        .await
        .is_err()
    {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut framer = StreamFramer::new(limits.max_message);
    let mut clock = StreamClock::new(Instant::now(), limits.idle_timeout, limits.message_timeout);
    let mut buf = vec![0u8; 16384];
    'read: loop {
        let (deadline, why) = clock.deadline();
        let n = match tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                if why == super::stream_limits::Expiry::MessageTimeout {
                    stats.tcp_message_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!("stream connection {id} closed: {}", why.as_str());
                break;
            }
            Ok(Ok(n)) => n,
        };
        let now = Instant::now();
        clock.bytes_arrived(now, &buf[..n]);
        framer.push(&buf[..n]);
        while let Some(item) = framer.next_item() {
            clock.message_complete(now);
            let fatal = matches!(item, StreamItem::Fatal(..));
            if input.send(NetInput::Stream { peer, item }).await.is_err() || fatal {
                break 'read;
            }
        }
    }
    let _ = input.send(NetInput::ConnClosed { id }).await;
    // Let queued responses (e.g. a 400 before closing) reach the peer.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

impl Transports {
    pub fn conn_opened(&mut self, id: u64, sender: mpsc::Sender<Arc<[u8]>>) {
        self.conns.insert(id, sender);
    }

    pub fn conn_closed(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    pub fn send(&self, peer: Peer, data: Arc<[u8]>) {
        match peer.link {
            Link::Udp(i) => {
                let Some(sock) = self.udp.get(i) else { return };
                if let Err(e) = sock.try_send_to(&data, peer.remote) {
                    // In a network without routes (or to a dead host) this is expected.
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("udp send failed: {e}");
                }
            }
            Link::Tcp(id) | Link::Tls(id) => match self.conns.get(&id) {
                Some(tx) => {
                    if tx.try_send(data).is_err() {
                        self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            },
        }
    }

    /// Closes a connection: dropping its sender ends the writer, which shuts it down.
    pub fn close(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// Which UDP socket to place calls from (the first).
    pub fn first_udp(&self) -> Option<(Link, SocketAddr)> {
        self.bound
            .iter()
            .find(|b| b.protocol == Protocol::Udp)
            .map(|b| (Link::Udp(0), b.addr))
    }
}

pub fn resolve_local_for(bound: SocketAddr, remote: SocketAddr) -> SocketAddr {
    LocalResolver {
        bound,
        cache: HashMap::new(),
    }
    .local_for(remote)
}
