//! Every RFC 4475 / RFC 5118 torture message, sent over real UDP to the running server,
//! gets the verdict `tests/data/sip-torture/expectations.tsv` gives it; afterwards the
//! server still answers OPTIONS and a normal call, and never panicked.
//!
//! The messages name foreign hosts: run this inside a private network namespace
//! (`.ci/run` does), so that nothing the server sends can leave the machine.

mod common;

use common::{parse_status, recv_response, RawClient, Server};
use std::net::UdpSocket;
use std::time::Duration;

struct Case {
    file: String,
    valid: bool,
    note: String,
}

fn cases() -> Vec<Case> {
    let dir = common::torture_dir();
    let tsv = std::fs::read_to_string(dir.join("expectations.tsv")).expect("expectations.tsv");
    tsv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            Case {
                file: cols[0].to_string(),
                valid: cols[1] == "valid",
                note: cols.get(4).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

/// The response code a note names ("respond 400", "answers 416", …), if any.
fn named_code(note: &str) -> Option<u16> {
    note.split(|c: char| !c.is_ascii_digit())
        .filter(|w| w.len() == 3)
        .filter_map(|w| w.parse::<u16>().ok())
        .find(|c| (400..700).contains(c))
}

fn header_value(msg: &[u8], names: &[&str]) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if names.iter().any(|x| n.trim().eq_ignore_ascii_case(x)) {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

/// Responses go to the sent-by port of the top Via (RFC 3261 §18.2.2) unless rport
/// asks for the source port: sending from that port receives both.
fn sent_by_port(msg: &[u8]) -> u16 {
    let via = header_value(msg, &["via", "v"]).unwrap_or_default();
    let via = via.split(',').next().unwrap_or_default();
    let sent_by = via
        .split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    let port = if let Some(end) = sent_by.find(']') {
        sent_by[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
    } else {
        sent_by.split(':').nth(1).and_then(|p| p.parse().ok())
    };
    port.unwrap_or(5060)
}

/// The sent-by port may be briefly taken by another test's client; wait for it.
fn bind_retrying(port: u16, file: &str) -> UdpSocket {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match UdpSocket::bind(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() > until => {
                panic!("bind 127.0.0.1:{port} for {file}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn torture_corpus_over_udp() {
    let server = Server::start(&["limits.source_rate=10000.0", "limits.source_burst=100000"]);
    let dir = common::torture_dir();
    let mut failures = Vec::new();
    let all = cases();
    assert_eq!(all.len(), 61, "corpus has 61 messages");
    for case in &all {
        let msg = std::fs::read(dir.join(&case.file)).expect("read corpus file");
        let is_response = msg.starts_with(b"SIP/");
        let port = sent_by_port(&msg);
        let sock = bind_retrying(port, &case.file);
        sock.send_to(&msg, server.udp).expect("send");
        let call_id = header_value(&msg, &["call-id", "i"]);
        let wait = if is_response {
            Duration::from_millis(400)
        } else {
            Duration::from_secs(3)
        };
        // Skip provisional responses: the verdict is the final one.
        let mut got = None;
        let deadline = std::time::Instant::now() + wait;
        while let Some(r) = recv_response(
            &sock,
            call_id.as_deref(),
            deadline.saturating_duration_since(std::time::Instant::now()),
        ) {
            if r.code >= 200 {
                got = Some(r);
                break;
            }
        }
        let code = got.as_ref().map(|r| r.code);
        let verdict_ok = match (case.valid, is_response) {
            // A response no transaction waits for is dropped, valid or not.
            (_, true) => code.is_none(),
            (true, false) => match named_code(&case.note) {
                Some(expected) => code == Some(expected),
                None => code.is_some_and(|c| c != 400 && c != 505),
            },
            (false, false) => code == Some(named_code(&case.note).unwrap_or(400)),
        };
        println!(
            "{:<45} {:<8} got {:?}",
            case.file,
            if case.valid { "valid" } else { "invalid" },
            code
        );
        if !verdict_ok {
            failures.push(format!(
                "{}: expected {} (note: {}), got {:?}",
                case.file,
                if case.valid { "handling" } else { "refusal" },
                case.note,
                got.map(|r| r.text.lines().next().unwrap_or_default().to_string())
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "torture verdicts wrong:\n{}",
        failures.join("\n")
    );

    // Still alive: OPTIONS and a normal call.
    let client = RawClient::new(server.udp);
    let local = client.local();
    client.send(&format!(
        "OPTIONS sip:hotline@{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKalive1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{local}>;tag=a1\r\nTo: <sip:hotline@{srv}>\r\nCall-ID: alive-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        srv = server.udp
    ));
    let r = recv_response(&client.sock, Some("alive-1"), Duration::from_secs(3))
        .expect("OPTIONS answered after the corpus");
    assert_eq!(r.code, 200);
    assert!(r.header("allow").is_some_and(|a| a.contains("INVITE")));
    let out = std::process::Command::new(common::bin())
        .args([
            "call",
            &format!("sip:hotline@{}", server.udp),
            "--hangup-after",
            "1",
        ])
        .output()
        .expect("hotline call");
    assert!(
        out.status.success(),
        "normal call after the corpus failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    mutated_corpus_never_crashes_the_server(&server);
    server.assert_no_panic();
    let _ = parse_status(b"");
}

/// Mutated corpus files (truncated, bytes flipped, inserted, swapped). Part of the
/// main test so that answers to port 5060 cannot cross into another test's socket.
fn mutated_corpus_never_crashes_the_server(server: &Server) {
    let dir = common::torture_dir();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for case in cases() {
        let msg = std::fs::read(dir.join(&case.file)).expect("read");
        for _ in 0..40 {
            let mut m = msg.clone();
            match next() % 4 {
                0 => {
                    let cut = (next() as usize) % m.len().max(1);
                    m.truncate(cut);
                }
                1 => {
                    for _ in 0..8 {
                        let i = (next() as usize) % m.len().max(1);
                        if let Some(b) = m.get_mut(i) {
                            *b = next() as u8;
                        }
                    }
                }
                2 => {
                    let i = (next() as usize) % m.len().max(1);
                    m.insert(i, b"\r\n:;,<>\"\0\xff"[(next() % 10) as usize]);
                }
                _ => {
                    let i = (next() as usize) % m.len().max(1);
                    let j = (next() as usize) % m.len().max(1);
                    m.swap(i, j);
                }
            }
            let _ = sock.send_to(&m, server.udp);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let client = RawClient::new(server.udp);
    let local = client.local();
    client.send(&format!(
        "OPTIONS sip:hotline@{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKalive2;rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{local}>;tag=a1\r\nTo: <sip:hotline@{srv}>\r\nCall-ID: alive-2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        srv = server.udp
    ));
    let r = recv_response(&client.sock, Some("alive-2"), Duration::from_secs(5))
        .expect("alive after fuzzing");
    assert_eq!(r.code, 200);
    server.assert_no_panic();
}
