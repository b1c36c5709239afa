//! The trunks' I/O, in the shell's style: DNS look-ups (RFC 3263 with hickory-resolver,
//! on `sip.dns_servers` or the system's resolver) and flows to a registrar (a UDP
//! socket's path, or a TCP connection framed like the listener's). Answers come back
//! as `IoEvent`s; a connection's traffic enters the SIP input like any other.
//!
//! Must not decide anything: which target to try and when is the registration's.

use super::rfc3263::{self, Naptr, Srv};
use super::{IoEvent, IoRequest, Target};
use crate::call::{Link, Peer};
use crate::config::{ListenAddr, Protocol, SipTransport};
use crate::sip::raw::{StreamFramer, StreamItem};
use crate::sip::transport::{self, NetInput};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use rand::rngs::StdRng;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Connection ids for trunk flows start here, far from the listener's.
const FIRST_CONN_ID: u64 = 1 << 48;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// A registrar flow with no traffic (not even a keep-alive answer) for this long is
/// dead.
const FLOW_IDLE: Duration = Duration::from_secs(300);
/// Most addresses kept from one resolution.
const MAX_TARGETS: usize = 16;

#[derive(Clone)]
pub struct TrunkIo {
    net: mpsc::Sender<NetInput>,
    events: mpsc::UnboundedSender<IoEvent>,
    /// The listener's UDP sockets: index (for `Link::Udp`) and bound address.
    udp: Vec<(usize, SocketAddr)>,
    resolver: Option<Arc<TokioResolver>>,
    resolver_error: String,
    rng: Arc<Mutex<StdRng>>,
    next_conn: Arc<AtomicU64>,
    max_message: usize,
    tls: Option<TrunkTls>,
}

/// How trunks verify a provider over TLS: the client configuration (its roots) and,
/// per trunk, the name its certificate must carry (the outbound proxy's host when set,
/// else the registrar's).
#[derive(Clone)]
pub struct TrunkTls {
    pub config: Result<Arc<rustls::ClientConfig>, String>,
    pub names: Vec<String>,
}

impl TrunkTls {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        TrunkTls {
            // The system's authorities are read only when a trunk may need them.
            config: if cfg.trunks.is_empty() {
                Err("no trunk".into())
            } else {
                crate::sip::tls::client_config(&cfg.tls)
            },
            names: cfg
                .trunks
                .iter()
                .map(|t| {
                    t.outbound_proxy
                        .as_ref()
                        .unwrap_or(&t.registrar)
                        .host
                        .clone()
                })
                .collect(),
        }
    }
}

impl TrunkIo {
    /// `bound` is what the SIP listener bound (UDP flows leave from its sockets);
    /// `dns_servers` overrides the system resolver. `rng` orders SRV targets.
    pub fn new(
        bound: &[ListenAddr],
        dns_servers: &[SocketAddr],
        max_message: usize,
        rng: StdRng,
        net: mpsc::Sender<NetInput>,
        events: mpsc::UnboundedSender<IoEvent>,
    ) -> Self {
        let udp = bound
            .iter()
            .filter(|b| b.protocol == Protocol::Udp)
            .enumerate()
            .map(|(i, b)| (i, b.addr))
            .collect();
        let (resolver, resolver_error) = match build_resolver(dns_servers) {
            Ok(r) => (Some(Arc::new(r)), String::new()),
            Err(e) => {
                tracing::warn!("DNS resolver unavailable: {e}");
                (None, e)
            }
        };
        TrunkIo {
            net,
            events,
            udp,
            resolver,
            resolver_error,
            rng: Arc::new(Mutex::new(rng)),
            next_conn: Arc::new(AtomicU64::new(FIRST_CONN_ID)),
            max_message,
            tls: None,
        }
    }

    pub fn with_tls(mut self, tls: TrunkTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn perform(&self, req: IoRequest) {
        let io = self.clone();
        match req {
            IoRequest::Resolve {
                trunk,
                host,
                port,
                transport,
            } => {
                tokio::spawn(async move {
                    let result = match &io.resolver {
                        Some(r) => tokio::time::timeout(
                            DNS_TIMEOUT,
                            resolve(r, &io.rng, &host, port, transport),
                        )
                        .await
                        .unwrap_or_else(|_| Err("timed out".into())),
                        None => Err(io.resolver_error.clone()),
                    };
                    let _ = io.events.send(IoEvent::Resolved { trunk, result });
                });
            }
            IoRequest::Connect { trunk, target } => match target.transport {
                SipTransport::Udp => {
                    let ev = match io.udp_peer(target.addr) {
                        Some(peer) => IoEvent::Connected {
                            trunk,
                            target,
                            peer,
                        },
                        None => IoEvent::ConnectFailed {
                            trunk,
                            target,
                            why: "no UDP listen address of that address family".into(),
                        },
                    };
                    let _ = io.events.send(ev);
                }
                SipTransport::Tcp | SipTransport::Tls => {
                    tokio::spawn(async move { io.connect_tcp(trunk, target).await });
                }
            },
        }
    }

    fn udp_peer(&self, remote: SocketAddr) -> Option<Peer> {
        let (i, bound) = self
            .udp
            .iter()
            .find(|(_, a)| a.is_ipv4() == remote.is_ipv4())?;
        Some(Peer {
            link: Link::Udp(*i),
            remote,
            local: transport::resolve_local_for(*bound, remote),
        })
    }

    async fn connect_tcp(self, trunk: usize, target: Target) {
        let stream = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(target.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.failed(trunk, target, e.to_string()),
            Err(_) => return self.failed(trunk, target, "connect timed out".into()),
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            return self.failed(trunk, target, "no local address".into());
        };
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let opened = |peer: Peer| {
            let _ = self.events.send(IoEvent::Connected {
                trunk,
                target,
                peer,
            });
        };
        if target.transport == SipTransport::Tls {
            let stream = match self.tls_handshake(trunk, stream).await {
                Ok(s) => s,
                Err(why) => return self.failed(trunk, target, why),
            };
            let peer = Peer {
                link: Link::Tls(id),
                remote: target.addr,
                local,
            };
            serve_flow(stream, peer, self.max_message, &self.net, || opened(peer)).await;
        } else {
            let peer = Peer {
                link: Link::Tcp(id),
                remote: target.addr,
                local,
            };
            serve_flow(stream, peer, self.max_message, &self.net, || opened(peer)).await;
        }
        let _ = self.events.send(IoEvent::LinkLost { conn: id });
    }

    /// TLS over a connected stream, verifying the provider's certificate against the
    /// trunk's name.
    async fn tls_handshake(
        &self,
        trunk: usize,
        stream: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| "TLS is not configured".to_string())?;
        let config = tls.config.clone()?;
        let name = tls
            .names
            .get(trunk)
            .ok_or_else(|| "no name to verify the certificate against".to_string())?;
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| format!("\"{name}\" cannot be verified: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("TLS: {e}")),
            Err(_) => Err("TLS handshake timed out".into()),
        }
    }

    fn failed(&self, trunk: usize, target: Target, why: String) {
        let _ = self
            .events
            .send(IoEvent::ConnectFailed { trunk, target, why });
    }
}

/// Runs a connection we opened: announces its sender to the transport (before
/// `opened` tells the registration, so the first REGISTER finds it), frames what
/// arrives into the SIP input, and ends when either side closes.
async fn serve_flow<S>(
    stream: S,
    peer: Peer,
    max_message: usize,
    net: &mpsc::Sender<NetInput>,
    opened: impl FnOnce(),
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Some(id) = peer.link.connection() else {
        return;
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(256);
    if net
        .send(NetInput::ConnOpened { id, sender: tx })
        .await
        .is_err()
    {
        return;
    }
    opened();
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut framer = StreamFramer::new(max_message);
    let mut buf = vec![0u8; 16384];
    'read: loop {
        let n = match tokio::time::timeout(FLOW_IDLE, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        framer.push(&buf[..n]);
        while let Some(item) = framer.next_item() {
            let fatal = matches!(item, StreamItem::Fatal(..));
            if net.send(NetInput::Stream { peer, item }).await.is_err() || fatal {
                break 'read;
            }
        }
    }
    let _ = net.send(NetInput::ConnClosed { id }).await;
    writer.abort();
}

fn build_resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder.build().map_err(|e| e.to_string())
}

/// RFC 3263 §4: the ordered targets for `host`. A port given skips NAPTR and SRV; a
/// transport given skips NAPTR.
async fn resolve(
    r: &TokioResolver,
    rng: &Mutex<StdRng>,
    host: &str,
    port: Option<u16>,
    transport: Option<SipTransport>,
) -> Result<Vec<Target>, String> {
    if let Some(port) = port {
        let t = transport.unwrap_or(SipTransport::Udp);
        return addresses(r, host, port, t).await;
    }
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    let mut srv_names: Vec<(SipTransport, String)> = Vec::new();
    if transport.is_none() {
        if let Ok(answer) = r.lookup(fqdn.as_str(), RecordType::NAPTR).await {
            let records = answer
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::NAPTR(n) => Some(Naptr {
                        order: n.order,
                        preference: n.preference,
                        flags: String::from_utf8_lossy(&n.flags).into_owned(),
                        service: String::from_utf8_lossy(&n.services).into_owned(),
                        replacement: n.replacement.to_ascii(),
                    }),
                    _ => None,
                })
                .collect();
            srv_names = rfc3263::from_naptr(records, None);
        }
    }
    if srv_names.is_empty() {
        let wanted = match transport {
            Some(t) => vec![t],
            // RFC 3263 §4.1: without NAPTR, SRV for each transport we support.
            None => vec![SipTransport::Udp, SipTransport::Tcp, SipTransport::Tls],
        };
        srv_names = wanted
            .into_iter()
            .map(|t| (t, rfc3263::srv_name(t, host)))
            .collect();
    }
    let mut out = Vec::new();
    for (t, name) in srv_names {
        let Ok(answer) = r
            .lookup(
                format!("{}.", name.trim_end_matches('.')).as_str(),
                RecordType::SRV,
            )
            .await
        else {
            continue;
        };
        let records: Vec<Srv> = answer
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::SRV(s) => Some(Srv {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_ascii().trim_end_matches('.').to_string(),
                }),
                _ => None,
            })
            .collect();
        let ordered = {
            let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
            rfc3263::order_srv(records, &mut *rng)
        };
        for s in ordered {
            if let Ok(found) = addresses(r, &s.target, s.port, t).await {
                out.extend(found);
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    if out.is_empty() {
        // No SRV: the host's own addresses on the transport's default port.
        let t = transport.unwrap_or(SipTransport::Udp);
        return addresses(r, host, t.default_port(), t).await;
    }
    out.truncate(MAX_TARGETS);
    Ok(out)
}

async fn addresses(
    r: &TokioResolver,
    host: &str,
    port: u16,
    transport: SipTransport,
) -> Result<Vec<Target>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![Target {
            addr: SocketAddr::new(ip, port),
            transport,
        }]);
    }
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    let ips = r
        .lookup_ip(fqdn.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let out: Vec<Target> = ips
        .iter()
        .take(MAX_TARGETS)
        .map(|ip| Target {
            addr: SocketAddr::new(ip, port),
            transport,
        })
        .collect();
    if out.is_empty() {
        return Err(format!("no address for {host}"));
    }
    Ok(out)
}
