//! SIP over TLS against the real binary, with certificates made by the test (rcgen):
//! a baresip operator registers over TLS and takes a queued call (its offer goes back
//! over the same connection); a TLS client sees the server's certificate verified;
//! plain TCP bytes, a garbage ClientHello and a silent client on the TLS port are
//! refused with a log line while other traffic goes on; `hotline check` refuses a
//! mismatched or expired pair and warns before expiry.

mod common;

use common::tls_phone::{caller, finish, TlsOperator, OPERATOR_TONE_HZ};

use common::{baresip_command, free_tcp_port, require_tool, rms, tone_seconds, Server};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A private CA and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, not_after: time::OffsetDateTime) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hotline test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params.not_after = not_after;
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

fn in_days(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// A server listening on UDP, TCP and TLS (on the returned port).
fn start_tls_server(pki: &Pki, extra: &[&str]) -> (Server, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_tcp_port();
    let flow = queue_flow(dir.path());
    let listen =
        format!(r#"sip.listen=["udp:127.0.0.1:0","tcp:127.0.0.1:0","tls:127.0.0.1:{port}"]"#);
    let cert = format!("tls.certificate=\"{}\"", pki.cert.display());
    let key = format!("tls.private_key=\"{}\"", pki.key.display());
    let mut args = vec![
        listen.as_str(),
        cert.as_str(),
        key.as_str(),
        flow.as_str(),
        "rtp.ports=\"31000-31999\"",
        "limits.max_calls=100",
    ];
    args.extend_from_slice(extra);
    let server = Server::start_in(dir, &args);
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The queue straight away; voicemail when it gives up.
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

#[test]
fn baresip_operator_registered_over_tls_takes_a_queued_call() {
    if !require_tool("baresip") {
        return;
    }
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), in_days(365));
    let (server, tls) = start_tls_server(&pki, &["privacy.caller_id=keep"]);
    let user = server.add_operator("Tanya", "tanya-secret-1");
    let op = TlsOperator::start(tls, &pki.ca, &user, "tanya-secret-1", None);
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
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard.wav");
    let call = caller(&server, &heard, 14);
    server.wait_operator_state("Tanya", "on_call", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(5));
    baresip_command(op.ctrl, "hangup", "");
    let summary = finish(call, Duration::from_secs(20));
    assert_eq!(summary["answered"], true, "{summary}");

    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.iter().any(|c| {
            c["direction"] == "inbound"
                && c["queue"]["talk_ms"].is_i64()
                && c["recordings"].as_array().is_some_and(|r| !r.is_empty())
        })
    });
    let offer = calls
        .iter()
        .find(|c| c["direction"] == "outbound")
        .unwrap_or_else(|| panic!("no operator leg: {calls:#?}"));
    assert_eq!(offer["transport"], "TLS", "{offer:#}");
    let inbound = calls.iter().find(|c| c["direction"] == "inbound").unwrap();
    assert_eq!(inbound["queue"]["operator"], "Tanya", "{inbound:#}");
    // Both ways: the caller heard the operator's tone; the recording holds both.
    let caller_heard = common::read_wav(&heard);
    let secs = tone_seconds(&caller_heard, OPERATOR_TONE_HZ);
    assert!(secs > 2.0, "the caller heard the operator for {secs:.2} s");
    let rec = inbound["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "conversation")
        .unwrap_or_else(|| panic!("no conversation recording: {inbound:#}"));
    let mut r = hound::WavReader::open(rec["path"].as_str().unwrap()).unwrap();
    assert_eq!(r.spec().channels, 2);
    let all: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: Vec<i16> = all.iter().step_by(2).copied().collect();
    let right: Vec<i16> = all.iter().skip(1).step_by(2).copied().collect();
    assert!(rms(&left) > 300.0, "caller channel silent");
    assert!(
        tone_seconds(&right, OPERATOR_TONE_HZ) > 2.0,
        "operator channel"
    );
    let op_heard: Vec<PathBuf> = std::fs::read_dir(op.dir.path().join("snd"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .collect();
    assert_eq!(op_heard.len(), 1, "{op_heard:?}");
    let s = common::read_wav(&op_heard[0]);
    assert!(rms(&s) > 300.0, "the operator heard silence");
    server.assert_no_panic();
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

fn options(target: SocketAddr, local: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:{target};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@{local}>;tag=t{n}\r\nTo: <sip:{target}>\r\n\
         Call-ID: tls-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A verified TLS connection to the server gets its OPTIONS answered; `n` tags it.
async fn options_over_tls(tls: SocketAddr, ca: &Path, n: u32) -> String {
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tls_client(ca).connect(name, tcp).await.expect("handshake");
    s.write_all(options(tls, local, n).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let k = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..k]).to_string()
}

/// Sends `bytes` on a raw TCP connection to the TLS port; returns how long until the
/// server closed it, and the client's address.
async fn raw_bytes(tls: SocketAddr, bytes: &[u8]) -> (Duration, SocketAddr) {
    let mut s = tokio::net::TcpStream::connect(tls).await.unwrap();
    let local = s.local_addr().unwrap();
    let t0 = Instant::now();
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), local),
            Ok(Ok(_)) => {} // a TLS alert, then the close
            Err(_) => panic!("the TLS port kept a bad connection open"),
        }
    }
}

#[test]
fn bad_input_on_the_tls_port_is_refused_and_other_traffic_goes_on() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), in_days(365));
    let (server, tls) = start_tls_server(&pki, &["tls.handshake_timeout_s=2"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clients = rt.block_on(async {
        let answer = options_over_tls(tls, &pki.ca, 1).await;
        assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
        assert!(answer.contains("SIP/2.0/TLS"), "Via kept: {answer}");
        // Plain SIP on the TLS port.
        let local: SocketAddr = "127.0.0.1:5999".parse().unwrap();
        let (_, plain) = raw_bytes(tls, options(tls, local, 2).as_bytes()).await;
        // A record that claims to be a handshake and is garbage.
        let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
        garbage.extend((0..60u8).map(|i| i.wrapping_mul(37)));
        let (_, garbled) = raw_bytes(tls, &garbage).await;
        // A client that says nothing is closed after the handshake timeout.
        let (silent, quiet) = raw_bytes(tls, b"").await;
        assert!(
            silent >= Duration::from_millis(1900) && silent < Duration::from_secs(5),
            "silent client closed after {silent:?}"
        );
        // Still serving over TLS and UDP.
        let answer = options_over_tls(tls, &pki.ca, 3).await;
        assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
        [plain, garbled, quiet]
    });
    let client = common::RawClient::new(server.udp);
    client.send(&client.invite("after-bad-tls", "z9hG4bKafterbad", 40100));
    let resp = common::recv_response(&client.sock, Some("after-bad-tls"), Duration::from_secs(3))
        .expect("a UDP call is answered");
    assert_eq!(resp.code, 200);
    let log = server.log_text();
    assert!(
        log.matches("handshake failed").count() >= 2,
        "each bad connection is logged:\n{log}"
    );
    assert!(log.contains("handshake timed out"), "{log}");
    for c in clients {
        assert!(
            !log.contains(&format!(":{}", c.port())),
            "no client address in the log: {c}\n{log}"
        );
    }
    server.assert_no_panic();
}

fn check(pki_cert: &Path, key: &Path) -> std::process::Output {
    Command::new(common::bin())
        .current_dir(root())
        .arg("check")
        .args([
            "--set",
            "sip.listen=[\"udp:127.0.0.1:0\",\"tls:127.0.0.1:0\"]",
        ])
        .arg("--set")
        .arg(format!("tls.certificate=\"{}\"", pki_cert.display()))
        .arg("--set")
        .arg(format!("tls.private_key=\"{}\"", key.display()))
        .output()
        .unwrap()
}

#[test]
fn check_refuses_a_mismatched_or_expired_pair_and_warns_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_pki(&dir.path().join("good").tap_mkdir(), in_days(365));
    let soon = make_pki(&dir.path().join("soon").tap_mkdir(), in_days(10));
    let expired = make_pki(&dir.path().join("old").tap_mkdir(), in_days(-1));

    let out = check(&good.cert, &good.key);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("tls.certificate"), "{err}");

    let out = check(&soon.cert, &soon.key);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("expires in"),
        "{err}"
    );

    let out = check(&expired.cert, &expired.key);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("expired"), "{err}");

    let out = check(&good.cert, &soon.key);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("server.pem") && err.contains("server.key"),
        "{err}"
    );

    // serve refuses a mismatched pair with the same message and exit 2.
    let out = Command::new(common::bin())
        .current_dir(root())
        .arg("serve")
        .args([
            "--set",
            "sip.listen=[\"udp:127.0.0.1:0\",\"tls:127.0.0.1:0\"]",
        ])
        .arg("--set")
        .arg(format!("tls.certificate=\"{}\"", good.cert.display()))
        .arg("--set")
        .arg(format!("tls.private_key=\"{}\"", soon.key.display()))
        .arg("--set")
        .arg(format!(
            "storage.data_dir=\"{}\"",
            dir.path().join("data").display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls:"));
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

fn trunk_state(server: &Server) -> Value {
    let out = server.cli(&["trunks", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("trunks json");
    list[0].clone()
}

/// A trunk with `transport=tls` registers with a provider whose certificate chains to
/// `tls.ca_file` (the provider here is a second hotline, whose registrar takes the
/// trunk's REGISTER like an operator's); with another CA it does not.
#[test]
fn a_trunk_registers_over_tls_only_with_a_verified_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), in_days(365));
    let other_dir = tempfile::tempdir().unwrap();
    let other = make_pki(other_dir.path(), in_days(365));
    let (provider, tls) = start_tls_server(&pki, &[]);
    let user = provider.add_operator("Trunk", "trunk-secret-1");
    let trunk = |ca: &Path| {
        vec![
            format!(
                "trunks=[{{name=\"p\",registrar=\"sip:127.0.0.1:{};transport=tls\",username=\"{user}\",password=\"trunk-secret-1\",expires_s=120}}]",
                tls.port()
            ),
            format!("tls.ca_file=\"{}\"", ca.display()),
        ]
    };
    let args = trunk(&pki.ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = Server::start(&args);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let t = trunk_state(&client);
        if t["state"] == "registered" {
            assert_eq!(t["registrar"], format!("tls:{tls}"), "{t}");
            break;
        }
        assert!(
            Instant::now() < until,
            "not registered over TLS: {t}\n{}",
            client.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    provider.wait_operator_state("Trunk", "available", Duration::from_secs(5));

    let args = trunk(&other.ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stranger = Server::start(&args);
    std::thread::sleep(Duration::from_secs(4));
    let t = trunk_state(&stranger);
    assert_ne!(t["state"], "registered", "{t}");
    let log = stranger.log_text();
    assert!(
        log.contains("cannot reach the registrar") && log.contains("certificate"),
        "the refusal names the certificate:\n{log}"
    );
    client.assert_no_panic();
    stranger.assert_no_panic();
    provider.assert_no_panic();
}
