//! Two addresses flood the line with INVITEs they never ACK while a third places real
//! calls: the flooders get at most `limits.max_calls_per_source` calls each, both are
//! banned, and every real call is answered and runs to its own hang-up.
//!
//! Scaled to a test (1,000 INVITE/s from each flooder for 8 s, 12 real calls); the
//! figures at full scale come from `bench/flood.sh`.

mod common;

use common::Server;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Flooded {
    sent: usize,
    answered: usize,
}

/// Sends `rate` INVITEs per second from `ip` for `secs`, never ACKing; counts the 200s.
fn flood(ip: &'static str, server: std::net::SocketAddr, rate: u32, secs: u64) -> Flooded {
    let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
    sock.set_nonblocking(true).unwrap();
    let local = sock.local_addr().unwrap();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut answered = std::collections::HashSet::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(secs) {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as usize;
        while sent < due {
            let sdp = format!(
                "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
            );
            let msg = format!(
                "INVITE sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKf{sent}\r\nMax-Forwards: 70\r\nFrom: <sip:x@{ip}>;tag=f{sent}\r\nTo: <sip:hotline@{server}>\r\nCall-ID: flood{sent}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            );
            let _ = sock.send_to(msg.as_bytes(), server);
            sent += 1;
        }
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("SIP/2.0 200") {
                if let Some(id) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Call-ID: ").map(str::to_string))
                {
                    answered.insert(id);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Flooded {
        sent,
        answered: answered.len(),
    }
}

#[test]
fn two_flooders_cannot_take_the_call_slots_of_real_callers() {
    let per_source = 8;
    let server = Server::start(&[&format!("limits.max_calls_per_source={per_source}")]);
    let target = server.udp;
    let flooders: Vec<_> = ["127.0.0.2", "127.0.0.3"]
        .into_iter()
        .map(|ip| std::thread::spawn(move || flood(ip, target, 1000, 8)))
        .collect();

    // Real calls from a third address, one every half second, 2 s each: about four at
    // once, well under the per-source limit that address is also subject to even when
    // a busy machine slows their set-up.
    std::thread::sleep(Duration::from_millis(500));
    let mut callers = Vec::new();
    for _ in 0..12 {
        callers.push(
            Command::new(common::bin())
                .args([
                    "call",
                    &format!("sip:hotline@{target}"),
                    "--hangup-after",
                    "2",
                    "--bind",
                    "127.0.0.4:0",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut failed = Vec::new();
    for c in callers {
        let out = c.wait_with_output().unwrap();
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if s["answered"] != true || s["end_reason"] != "our-bye" {
            failed.push(format!("{s} {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let flooded: Vec<Flooded> = flooders.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(failed.is_empty(), "real calls failed: {failed:#?}");
    for f in &flooded {
        assert!(f.sent > 5000, "the flooder sent {}", f.sent);
        assert!(
            f.answered <= per_source,
            "a flooder got {} calls answered",
            f.answered
        );
    }
    let status = server.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        status["sip"]["bans"].as_u64().unwrap_or(0) >= 2,
        "both flooders banned: {status}"
    );
    assert!(status["sip"]["banned_dropped"].as_u64().unwrap_or(0) > 1000);
    server.assert_no_panic();
}
