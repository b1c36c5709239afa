//! SIP over TLS costs, against a running `hotline serve` started here: full TLS
//! handshakes per second (and the server's CPU per handshake), and the server's
//! memory per held TLS connection (each has done a handshake and had one OPTIONS
//! answered, as a registered operator's phone would). Certificates are made here.
//! Prints numbers; `bench/tls.sh` builds and runs it.
//!
//!     bench_tls HOTLINE_BINARY [CONNECTIONS=500] [HANDSHAKES=1000] [PARALLEL=4]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("CA")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    // No session resumption: every handshake is a full one.
    let mut config = config;
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn open(c: &tokio_rustls::TlsConnector, source: IpAddr, server: SocketAddr) -> Tls {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(source, 0)).expect("bind");
    let tcp = sock.connect(server).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    c.connect(name, tcp).await.expect("handshake")
}

async fn options(s: &mut Tls, server: SocketAddr, n: usize) {
    let local = s.get_ref().0.local_addr().expect("local");
    let msg = format!(
        "OPTIONS sip:{server};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKb{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:b@{local}>;tag=b{n}\r\nTo: <sip:{server}>\r\n\
         Call-ID: bench-tls-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(msg.as_bytes()).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let k = s.read(&mut buf).await.expect("answer");
    assert!(buf[..k].starts_with(b"SIP/2.0 200"), "no 200 to OPTIONS");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .expect("usage: bench_tls HOTLINE [CONNECTIONS] [HANDSHAKES] [PARALLEL]");
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    let handshakes: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let parallel: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(4);

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("cert");
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("write");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let sets = [
        format!(r#"sip.listen=["udp:127.0.0.1:0","tls:127.0.0.1:{port}"]"#),
        format!(
            "tls.certificate=\"{}\"",
            dir.path().join("cert.pem").display()
        ),
        format!(
            "tls.private_key=\"{}\"",
            dir.path().join("key.pem").display()
        ),
        format!("storage.data_dir=\"{}\"", dir.path().join("data").display()),
        format!("limits.max_tcp_connections={}", conns + 100),
        "limits.source_rate=100000.0".to_string(),
        "limits.source_burst=100000".to_string(),
        // The start-up lines (the bound ports) are logged at info.
        "log.level=\"warn,hotline::serve=info\"".to_string(),
    ];
    let mut cmd = Command::new(bin);
    cmd.arg("serve");
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hotline");
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    for line in lines.by_ref() {
        if line.expect("stderr").contains("SIP listening on tls:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = connector(&ca.pem().into_bytes());

    rt.block_on(async {
        // Warm up (first allocations, page faults of the TLS code).
        for i in 0..20 {
            let mut s = open(&c, Ipv4Addr::LOCALHOST.into(), server).await;
            options(&mut s, server, i).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Handshakes per second: PARALLEL clients, each connecting, completing a full
        // handshake and closing, from 20 source addresses (per-source cap).
        let cpu0 = cpu_ticks(pid);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..parallel {
            let c = c.clone();
            let share = handshakes / parallel;
            tasks.push(tokio::spawn(async move {
                for i in 0..share {
                    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (1 + (p * 7 + i) % 20) as u8));
                    let s = open(&c, source, server).await;
                    drop(s);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0;
        let done = (handshakes / parallel) * parallel;
        println!(
            "TLS handshakes: {done} full handshakes ({parallel} in parallel) in {wall:.2} s = {:.0}/s; server CPU {:.2} ms per handshake",
            done as f64 / wall,
            cpu * 1000.0 / done as f64
        );
        tokio::time::sleep(Duration::from_secs(3)).await;

        // Memory per held connection.
        let rss0 = proc_field(pid, "status", "VmRSS:");
        let mut held = Vec::with_capacity(conns);
        for i in 0..conns {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 2, (1 + i / 10) as u8));
            let mut s = open(&c, source, server).await;
            options(&mut s, server, 1000 + i).await;
            held.push(s);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss1 = proc_field(pid, "status", "VmRSS:");
        println!(
            "held TLS connections: {conns}; server RSS {rss0} kB -> {rss1} kB: {:.1} kB per connection",
            (rss1 as f64 - rss0 as f64) / conns as f64
        );
        drop(held);
    });
    let _ = child.kill();
    let _ = child.wait();
}
