//! SRTP on the operator's leg, against the real binary and real peers on loopback: a
//! baresip operator registered over TLS with `mediaenc=srtp` (and `srtp-mand` against
//! `rtp.srtp = "require"`) takes a queued call from `hotline call` playing known
//! speech; tcpdump captures both legs. The caller's leg (plain UDP) carries the G.711
//! encoding of the speech, the operator's carries none of it, and both still hear each
//! other and the conversation recording holds both. A plain operator is the control:
//! its leg does carry the speech, so the capture check can fail. Bad input: SRTP
//! packets with wrong tags sprayed at the server's media ports (dropped, counted in
//! /metrics, the call goes on), and an SDES line with a bad key over TLS (488 and a log
//! line).

mod common;

use common::tls_phone::{caller, finish, TlsOperator, OPERATOR_TONE_HZ};

use common::{baresip_command, free_tcp_port, require_tool, rms, tone_seconds, Server};
use hotline::call::Codec;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SPEECH: &str = "tests/data/speech_ru_festival.wav";

/// A private CA and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hotline test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// The queue straight away.
fn queue_flow(dir: &Path) -> String {
    let flow = r##"
[flow]
start = "operator_queue"
first_digit_timeout = 5
inter_digit_timeout = 3
total_timeout = 20
retries = 1
invalid_prompt = "invalid_key"
timeout_prompt = "no_input"
fallback = "operator_queue"

[nodes.operator_queue]
type = "queue"
prompts = ["beep"]
fallback = "goodbye"

[nodes.goodbye]
type = "hangup"
prompts = ["goodbye"]
"##;
    let path = dir.join("ivr-queue.toml");
    std::fs::write(&path, flow).expect("write flow");
    format!("ivr.flow=\"{}\"", path.display())
}

/// A server on UDP, TCP and TLS with RTP on `ports` ("A-B").
fn start_server(pki: &Pki, ports: &str, extra: &[&str]) -> (Server, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_tcp_port();
    let flow = queue_flow(dir.path());
    let listen =
        format!(r#"sip.listen=["udp:127.0.0.1:0","tcp:127.0.0.1:0","tls:127.0.0.1:{port}"]"#);
    let cert = format!("tls.certificate=\"{}\"", pki.cert.display());
    let key = format!("tls.private_key=\"{}\"", pki.key.display());
    let rtp = format!("rtp.ports=\"{ports}\"");
    let mut args = vec![
        listen.as_str(),
        cert.as_str(),
        key.as_str(),
        flow.as_str(),
        rtp.as_str(),
        "limits.max_calls=50",
        "privacy.caller_id=keep",
    ];
    args.extend_from_slice(extra);
    let server = Server::start_in(dir, &args);
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// tcpdump on loopback, UDP to or from the server's RTP ports, written as it arrives.
struct Capture {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    fn start(first: u16, last: u16) -> Capture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rtp.pcap");
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "-s", "2048", "-w"])
            .arg(&file)
            .arg(format!("udp portrange {first}-{last}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // Ready once it says it listens.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ready = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        assert!(ready.contains("listening on"), "tcpdump: {ready}");
        std::thread::spawn(move || for _ in lines {});
        Capture {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops the capture; every UDP datagram as (source, destination, payload).
    fn finish(mut self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        read_pcap(&std::fs::read(&self.file).unwrap())
    }
}

/// UDP over IPv4 from a classic pcap file (Ethernet or Linux cooked link types);
/// a record cut short by the end of the capture is ignored.
fn read_pcap(data: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    assert!(data.len() >= 24, "pcap header");
    let le = data[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let link_header = match u32_at(&data[20..24]) {
        1 => 14,
        113 => 16,
        276 => 20,
        other => panic!("link type {other}"),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32_at(&data[at + 8..at + 12]) as usize;
        let Some(frame) = data.get(at + 16..at + 16 + caplen) else {
            break;
        };
        at += 16 + caplen;
        let Some(ip) = frame.get(link_header..) else {
            continue;
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let Some(udp) = ip.get(ihl..) else { continue };
        if udp.len() < 8 {
            continue;
        }
        let addr = |a: &[u8], p: &[u8]| {
            SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([p[0], p[1]])))
        };
        let src = addr(&ip[12..16], &udp[0..2]);
        let dst = addr(&ip[16..20], &udp[2..4]);
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]])).min(udp.len());
        out.push((src, dst, udp[8..len].to_vec()));
    }
    out
}

/// The known speech in G.711, both laws: every 16-byte window that is not near-silence
/// (so the same bytes in a packet are the speech and nothing else).
fn speech_windows() -> (HashSet<[u8; 16]>, Vec<u8>, Vec<u8>) {
    let pcm = common::read_wav(&root().join(SPEECH));
    let mut set = HashSet::new();
    let mut laws = Vec::new();
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let mut enc = Vec::new();
        hotline::media::g711::encode(codec, &pcm, &mut enc);
        for (i, w) in enc.windows(16).enumerate() {
            if rms(&pcm[i..i + 16]) > 300.0 {
                set.insert(<[u8; 16]>::try_from(w).unwrap());
            }
        }
        laws.push(enc);
    }
    let pcma = laws.pop().unwrap();
    let pcmu = laws.pop().unwrap();
    (set, pcmu, pcma)
}

/// Packets whose RTP payload holds some of the speech.
fn speech_packets(packets: &[&Vec<u8>], windows: &HashSet<[u8; 16]>) -> usize {
    packets
        .iter()
        .filter(|p| {
            p.len() > 12 + 16
                && p[12..]
                    .windows(16)
                    .any(|w| windows.contains(&<[u8; 16]>::try_from(w).unwrap()))
        })
        .count()
}

/// What the capture shows of one call: by the server's RTP port, packets in and out.
struct Legs {
    caller_in: Vec<Vec<u8>>,
    operator_in: Vec<Vec<u8>>,
    operator_out: Vec<Vec<u8>>,
}

/// Per server port: packets in, packets out.
type PortTraffic = (Vec<Vec<u8>>, Vec<Vec<u8>>);

fn split_legs(packets: Vec<(SocketAddr, SocketAddr, Vec<u8>)>, first: u16, last: u16) -> Legs {
    let ours = |a: &SocketAddr| (first..=last).contains(&a.port());
    // Server port -> (packets in, packets out).
    let mut by_port: HashMap<u16, PortTraffic> = HashMap::new();
    for (src, dst, payload) in packets {
        // Media only: 12-byte header, version 2.
        if payload.len() < 12 || payload[0] >> 6 != 2 {
            continue;
        }
        assert!(
            !(ours(&src) && ours(&dst)),
            "a peer's RTP port {src} -> {dst} is in the server's range: the capture cannot tell the legs apart"
        );
        if ours(&dst) {
            by_port.entry(dst.port()).or_default().0.push(payload);
        } else if ours(&src) {
            by_port.entry(src.port()).or_default().1.push(payload);
        }
    }
    let counts: Vec<(u16, usize, usize)> = by_port
        .iter()
        .filter(|(_, (i, o))| i.len() + o.len() > 20)
        .map(|(port, (i, o))| (*port, i.len(), o.len()))
        .collect();
    eprintln!("capture: (server port, packets in, out): {counts:?}");
    let mut legs: Vec<(u16, PortTraffic)> = by_port
        .into_iter()
        .filter(|(_, (i, o))| i.len() > 100 && o.len() > 100)
        .collect();
    assert_eq!(
        legs.len(),
        2,
        "two legs with media in the capture; (server port, packets in, out): {counts:?}"
    );
    let (windows, _, _) = speech_windows();
    // The caller's leg is the one on which the caller's speech arrives.
    legs.sort_by_key(|(_, (i, _))| {
        std::cmp::Reverse(speech_packets(&i.iter().collect::<Vec<_>>(), &windows))
    });
    let (_, (caller_in, _)) = legs.remove(0);
    let (_, (operator_in, operator_out)) = legs.remove(0);
    Legs {
        caller_in,
        operator_in,
        operator_out,
    }
}

fn metrics_text(server: &Server) -> String {
    let addr = server.metrics.expect("metrics on");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
}

/// Packets that look like SRTP from 127.0.0.1 but carry a wrong tag, to every even
/// port of the range (a stranger does not know which leg is whose).
fn spray_forged_srtp(first: u16, last: u16, rounds: u16) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for round in 0..rounds {
        for port in (first..=last).filter(|p| p % 2 == 0) {
            let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
            p[2..4].copy_from_slice(&(40_000 + round).to_be_bytes());
            p.extend_from_slice(&[0x5a; 170]);
            let _ = sock.send_to(&p, ("127.0.0.1", port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct CallResult {
    server: Server,
    op: TlsOperator,
    legs: Legs,
    inbound: Value,
    caller_heard: Vec<i16>,
}

/// A queued call taken by a baresip operator with `mediaenc`, captured.
fn captured_call(
    first: u16,
    last: u16,
    extra: &[&str],
    mediaenc: Option<&str>,
    spray: bool,
) -> CallResult {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let (server, tls) = start_server(&pki, &format!("{first}-{last}"), extra);
    let user = server.add_operator("Tanya", "tanya-secret-1");
    let op = TlsOperator::start(tls, &pki.ca, &user, "tanya-secret-1", mediaenc);
    let until = Instant::now() + Duration::from_secs(15);
    while server
        .operator_entry("Tanya")
        .is_none_or(|o| o["state"] != "available")
    {
        assert!(
            Instant::now() < until,
            "Tanya never registered over TLS; baresip:\n{}\nserver:\n{}",
            op.log(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let capture = Capture::start(first, last);
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard.wav");
    let call = caller(&server, &heard, 16);
    server.wait_operator_state("Tanya", "on_call", Duration::from_secs(15));
    if spray {
        std::thread::sleep(Duration::from_secs(2));
        spray_forged_srtp(first, last, 10);
        std::thread::sleep(Duration::from_secs(4));
    } else {
        std::thread::sleep(Duration::from_secs(6));
    }
    baresip_command(op.ctrl, "hangup", "");
    let summary = finish(call, Duration::from_secs(20));
    assert_eq!(summary["answered"], true, "{summary}");
    let legs = split_legs(capture.finish(), first, last);
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.iter().any(|c| {
            c["direction"] == "inbound"
                && c["queue"]["talk_ms"].is_i64()
                && c["recordings"].as_array().is_some_and(|r| !r.is_empty())
        })
    });
    let inbound = calls
        .iter()
        .find(|c| c["direction"] == "inbound")
        .unwrap()
        .clone();
    assert_eq!(inbound["queue"]["operator"], "Tanya", "{inbound:#}");
    CallResult {
        server,
        op,
        legs,
        inbound,
        caller_heard: common::read_wav(&heard),
    }
}

/// Both ways heard, and the stereo recording holds both, as for a plain call.
fn assert_conversation(r: &CallResult) {
    let secs = tone_seconds(&r.caller_heard, OPERATOR_TONE_HZ);
    assert!(secs > 2.0, "the caller heard the operator for {secs:.2} s");
    let rec = r.inbound["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "conversation")
        .unwrap_or_else(|| panic!("no conversation recording: {:#}", r.inbound));
    let mut w = hound::WavReader::open(rec["path"].as_str().unwrap()).unwrap();
    assert_eq!(w.spec().channels, 2);
    let all: Vec<i16> = w.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: Vec<i16> = all.iter().step_by(2).copied().collect();
    let right: Vec<i16> = all.iter().skip(1).step_by(2).copied().collect();
    assert!(rms(&left) > 300.0, "caller channel silent");
    assert!(
        tone_seconds(&right, OPERATOR_TONE_HZ) > 2.0,
        "operator channel"
    );
    let op_heard: Vec<PathBuf> = std::fs::read_dir(r.op.dir.path().join("snd"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .collect();
    assert_eq!(op_heard.len(), 1, "{op_heard:?}");
    let s = common::read_wav(&op_heard[0]);
    assert!(rms(&s) > 300.0, "the operator heard silence");
    r.server.assert_no_panic();
}

/// The caller's leg carries the speech in clear; the operator's none of it, and every
/// packet on it carries an SRTP tag (12 + 160 + 10 bytes).
fn assert_operator_leg_encrypted(legs: &Legs) {
    let (windows, _, _) = speech_windows();
    let caller: Vec<&Vec<u8>> = legs.caller_in.iter().collect();
    let clear = speech_packets(&caller, &windows);
    assert!(
        clear > 100,
        "the caller's leg holds the speech in clear: {clear} of {} packets",
        caller.len()
    );
    for (name, packets) in [("to", &legs.operator_out), ("from", &legs.operator_in)] {
        let packets: Vec<&Vec<u8>> = packets.iter().collect();
        let leaked = speech_packets(&packets, &windows);
        assert_eq!(leaked, 0, "packets {name} the operator holding speech");
        let srtp = packets.iter().filter(|p| p.len() == 12 + 160 + 10).count();
        eprintln!(
            "capture: caller leg {clear} of {} packets hold the speech; {} packets {name} the operator, {leaked} hold it, {srtp} SRTP-sized",
            caller.len(),
            packets.len()
        );
        assert!(
            srtp * 10 >= packets.len() * 9,
            "{srtp} of {} packets {name} the operator are SRTP-sized",
            packets.len()
        );
    }
}

#[test]
fn an_srtp_operator_over_tls_hears_and_is_heard_and_its_leg_holds_no_speech() {
    if !require_tool("baresip") || !require_tool("tcpdump") {
        return;
    }
    let (first, last) = (32000, 32199);
    let metrics = format!("metrics.listen=\"127.0.0.1:{}\"", free_tcp_port());
    let r = captured_call(first, last, &[&metrics], Some("srtp"), true);
    assert_operator_leg_encrypted(&r.legs);
    assert_conversation(&r);
    let log = r.server.log_text();
    assert!(log.contains("media encrypted (SRTP)"), "{log}");
    // The forged packets were dropped and counted, with a log line, and the call went
    // on (checked above).
    let m = metrics_text(&r.server);
    let forged = metric(&m, "hotline_srtp_dropped_total{reason=\"auth_failed\"}");
    eprintln!("forged SRTP packets dropped and counted: {forged}");
    assert!(forged >= 5, "forged packets counted: {forged}\n{m}");
    assert!(log.contains("SRTP packet dropped"), "{log}");
    for line in log.lines().filter(|l| l.contains("SRTP packet dropped")) {
        assert!(!line.contains("127.0.0.1"), "no address in: {line}");
    }
}

#[test]
fn srtp_mand_against_require_is_encrypted_too() {
    if !require_tool("baresip") || !require_tool("tcpdump") {
        return;
    }
    let (first, last) = (32200, 32399);
    let r = captured_call(first, last, &["rtp.srtp=require"], Some("srtp-mand"), false);
    assert_operator_leg_encrypted(&r.legs);
    assert_conversation(&r);
}

/// "require": an operator whose phone does not do SRTP is not given the call (its
/// offer fails and is logged); the next operator, with SRTP, takes it.
#[test]
fn require_passes_over_a_phone_without_srtp() {
    if !require_tool("baresip") || !require_tool("tcpdump") {
        return;
    }
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let (server, tls) = start_server(
        &pki,
        "32700-32899",
        &["rtp.srtp=require", "queue.max_misses=0"],
    );
    let plain_user = server.add_operator("Tanya", "tanya-secret-1");
    let _plain = TlsOperator::start(tls, &pki.ca, &plain_user, "tanya-secret-1", None);
    server.wait_operator_state("Tanya", "available", Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard.wav");
    let call = caller(&server, &heard, 25);
    // Tanya's phone is offered the call (RTP/SAVP) and the offer fails.
    let calls = server.wait_calls(Duration::from_secs(15), |c| {
        c.iter()
            .any(|c| c["direction"] == "outbound" && c["end_reason"].is_string())
    });
    let refused = calls.iter().find(|c| c["direction"] == "outbound").unwrap();
    // baresip refuses RTP/SAVP (488); a phone that answered plain would be hung up
    // ("error", see sip::endpoint::srtp_tests).
    assert!(
        ["rejected-488", "error"].contains(&refused["end_reason"].as_str().unwrap()),
        "{refused:#}"
    );
    assert_eq!(
        refused["to"],
        format!("operator:{plain_user}"),
        "{refused:#}"
    );
    eprintln!("the plain phone's offer ended: {}", refused["end_reason"]);
    let srtp_user = server.add_operator("Olga", "olga-secret-22");
    let srtp = TlsOperator::start(
        tls,
        &pki.ca,
        &srtp_user,
        "olga-secret-22",
        Some("srtp-mand"),
    );
    server.wait_operator_state("Olga", "on_call", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    baresip_command(srtp.ctrl, "hangup", "");
    let summary = finish(call, Duration::from_secs(30));
    assert_eq!(summary["answered"], true, "{summary}");
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.iter()
            .any(|c| c["direction"] == "inbound" && c["queue"]["talk_ms"].is_i64())
    });
    let inbound = calls.iter().find(|c| c["direction"] == "inbound").unwrap();
    assert_eq!(inbound["queue"]["operator"], "Olga", "{inbound:#}");
    let log = server.log_text();
    assert!(log.contains("media encrypted (SRTP)"), "{log}");
    server.assert_no_panic();
}

/// The control: with SRTP off the operator's leg does carry the caller's speech, so
/// the capture check above is able to fail.
#[test]
fn a_plain_operator_leg_carries_the_speech_the_capture_looks_for() {
    if !require_tool("baresip") || !require_tool("tcpdump") {
        return;
    }
    let (first, last) = (32400, 32599);
    let r = captured_call(first, last, &["rtp.srtp=off"], None, false);
    let (windows, _, _) = speech_windows();
    let to_operator: Vec<&Vec<u8>> = r.legs.operator_out.iter().collect();
    let clear = speech_packets(&to_operator, &windows);
    eprintln!(
        "capture: plain operator leg, {clear} of {} packets to the operator hold the speech",
        to_operator.len()
    );
    assert!(clear > 100, "plain operator leg: {clear} packets of speech");
    assert_conversation(&r);
}

fn tls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// An INVITE over TLS with `crypto` lines; the final response.
async fn invite_over_tls(
    tls: SocketAddr,
    ca: &Path,
    n: u32,
    profile: &str,
    crypto: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tls_client(ca).connect(name, tcp).await.expect("handshake");
    let body = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 {profile} 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto}"
    );
    let invite = format!(
        "INVITE sip:hotline@{tls};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKsdes{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=s{n}\r\nTo: <sip:hotline@{tls}>\r\n\
         Call-ID: sdes-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{local};transport=tls>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(invite.as_bytes()).await.unwrap();
    let mut got = String::new();
    let mut buf = vec![0u8; 8192];
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let k = tokio::time::timeout_at(until, s.read(&mut buf))
            .await
            .expect("a final response in time")
            .unwrap();
        assert!(k > 0, "closed; got {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..k]));
        if let Some(final_at) = got
            .match_indices("SIP/2.0 ")
            .map(|(i, _)| i)
            .find(|&i| !got[i + 8..].starts_with('1'))
        {
            return got[final_at..].to_string();
        }
    }
}

#[test]
fn a_bad_sdes_key_over_tls_gets_488_and_a_log_line() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let (server, tls) = start_server(&pki, "32600-32699", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (n, (profile, crypto, why)) in [
        (
            "RTP/AVP",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJ\r\n",
            "not 40",
        ),
        (
            "RTP/SAVP",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e|2^8\r\n",
            "below 2^31",
        ),
        ("RTP/SAVP", "", "without a crypto line"),
    ]
    .into_iter()
    .enumerate()
    {
        let response = rt.block_on(invite_over_tls(tls, &pki.ca, n as u32, profile, crypto));
        assert!(response.starts_with("SIP/2.0 488"), "{response}");
        assert!(response.contains(why), "{why}: {response}");
    }
    // A good line still gets a call.
    let good =
        "a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e\r\n";
    let response = rt.block_on(invite_over_tls(tls, &pki.ca, 9, "RTP/SAVP", good));
    assert!(response.starts_with("SIP/2.0 200"), "{response}");
    assert!(
        response.contains("RTP/SAVP")
            && response.contains("a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{response}"
    );
    assert!(
        !response.contains("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e"),
        "our own key"
    );
    let log = server.log_text();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("call refused")).collect();
    assert_eq!(refused.len(), 3, "{log}");
    assert!(refused.iter().any(|l| l.contains("not 40")), "{refused:?}");
    server.assert_no_panic();
}
