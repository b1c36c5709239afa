//! Calls against the real binary on loopback: SIPp (an independent SIP client from
//! Debian's sip-tester) over UDP and TCP, CANCEL, timer H, the maximum call duration,
//! the concurrent-call limit, retransmissions, re-INVITE and REGISTER refusals.

mod common;

use common::{recv_response, require_tool, RawClient, Server};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs SIPp on free local SIP and media ports (its defaults, 5060 and 6000, would
/// collide with other tests).
fn sipp(args: &[&str]) -> std::process::Output {
    let port = common::free_udp_port().to_string();
    let media = common::free_udp_port().to_string();
    Command::new("sipp")
        .args(args)
        .args(["-p", &port, "-mp", &media])
        .args(["-nostdin", "-timeout", "120s", "-timeout_error"])
        .output()
        .expect("run sipp")
}

fn completed(calls: &[serde_json::Value]) -> usize {
    calls
        .iter()
        .filter(|c| c["end_reason"] == "caller-bye" && c["answered_at"].is_string())
        .count()
}

fn run_sipp_uac(transport: &str) {
    if !require_tool("sipp") {
        return;
    }
    let server = Server::start(&["limits.max_calls_per_source=0"]);
    let target = match transport {
        "t1" => server.tcp,
        _ => server.udp,
    };
    let out = sipp(&[
        "-sn",
        "uac",
        &target.to_string(),
        "-i",
        "127.0.0.1",
        "-t",
        transport,
        "-r",
        "20",
        "-m",
        "200",
        "-l",
        "100",
        "-d",
        "1000",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sipp uac ({transport}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = server.wait_calls(Duration::from_secs(10), |c| completed(c) >= 200);
    assert_eq!(calls.len(), 200, "one row per call");
    assert_eq!(
        completed(&calls),
        200,
        "all 200 calls completed: {:?}",
        calls.first()
    );
    let tr = if transport == "t1" { "TCP" } else { "UDP" };
    assert!(calls
        .iter()
        .all(|c| c["transport"] == tr && c["codec"] == "PCMU"));
    server.assert_no_panic();
}

#[test]
fn sipp_uac_200_calls_over_udp() {
    run_sipp_uac("u1");
}

#[test]
fn sipp_uac_200_calls_over_tcp() {
    run_sipp_uac("t1");
}

#[test]
fn cancel_before_answer_gets_487_and_a_cancel_row() {
    if !require_tool("sipp") {
        return;
    }
    let server = Server::start(&["sip.answer_delay_ms=5000"]);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/cancel.xml");
    let out = sipp(&[
        "-sf",
        scenario,
        &server.udp.to_string(),
        "-i",
        "127.0.0.1",
        "-m",
        "3",
        "-r",
        "10",
    ]);
    assert!(
        out.status.success(),
        "sipp cancel scenario failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.len() == 3 && c.iter().all(|c| c["end_reason"].is_string())
    });
    assert_eq!(calls.len(), 3);
    for c in &calls {
        assert_eq!(c["end_reason"], "cancel", "{c}");
        assert!(c["answered_at"].is_null());
    }
    server.assert_no_panic();
}

#[test]
fn caller_that_never_acks_is_torn_down_by_timer_h_with_bye() {
    // T1 = 100 ms makes timer H (64*T1) fire after 6.4 s instead of 32 s.
    let server = Server::start(&["sip.t1_ms=100", "sip.t2_ms=400"]);
    let client = RawClient::new(server.udp);
    client.send(&client.invite("noack-1", "z9hG4bKnoack1", 40000));
    let start = Instant::now();
    let first =
        recv_response(&client.sock, Some("noack-1"), Duration::from_secs(3)).expect("200 OK");
    assert_eq!(first.code, 200);
    let mut oks = 1;
    let mut buf = [0u8; 65536];
    let bye = loop {
        client
            .sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (n, _) = client.sock.recv_from(&mut buf).expect("BYE after timer H");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("SIP/2.0 200") {
            oks += 1;
        } else if text.starts_with("BYE ") {
            break text;
        }
    };
    let waited = start.elapsed();
    assert!(
        oks >= 6,
        "200 OK retransmitted while no ACK came ({oks} seen)"
    );
    assert!(
        waited >= Duration::from_millis(6000) && waited < Duration::from_millis(9000),
        "BYE after 64*T1, got {waited:?}"
    );
    // Answer the BYE so the server's transaction completes.
    let resp = bye_response(&bye);
    client.send(&resp);
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    assert_eq!(calls[0]["end_reason"], "timeout-no-ack");
    server.assert_no_panic();
}

/// A 200 OK for a request received by a test client (copies the dialog headers).
fn bye_response(request: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in request.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[test]
fn vanished_caller_is_ended_by_maximum_call_duration() {
    let server = Server::start(&["limits.max_call_duration_s=2"]);
    let out = Command::new(common::bin())
        .args([
            "call",
            &format!("sip:hotline@{}", server.udp),
            "--hangup-after",
            "30",
        ])
        .output()
        .expect("hotline call");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary json");
    assert_eq!(summary["answered"], true);
    assert_eq!(
        summary["end_reason"], "caller-bye",
        "the server hung up on the caller: {summary}"
    );
    let dur = summary["duration_ms"].as_u64().unwrap();
    assert!(
        (1800..4000).contains(&dur),
        "ended after ~2 s, got {dur} ms"
    );
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    assert_eq!(calls[0]["end_reason"], "max-duration");
    server.assert_no_panic();
}

#[test]
fn sixth_concurrent_call_gets_503_with_retry_after() {
    let server = Server::start(&["limits.max_calls=5"]);
    let client = RawClient::new(server.udp);
    let mut oks = Vec::new();
    for i in 0..5 {
        let id = format!("limit-{i}");
        client.send(&client.invite(&id, &format!("z9hG4bKlimit{i}"), 40000 + 2 * i as u16));
        let r = recv_response(&client.sock, Some(&id), Duration::from_secs(3)).expect("answer");
        assert_eq!(r.code, 200, "call {i} within the limit");
        client.send(&client.in_dialog("ACK", &r, 1, &format!("z9hG4bKlimitack{i}")));
        oks.push(r);
    }
    client.send(&client.invite("limit-5", "z9hG4bKlimit5", 40010));
    let r = recv_response(&client.sock, Some("limit-5"), Duration::from_secs(3))
        .expect("answer to 6th");
    assert_eq!(r.code, 503);
    assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
    // Hanging one up frees a place.
    client.send(&client.in_dialog("BYE", &oks[0], 2, "z9hG4bKlimitbye0"));
    let bye_ok =
        recv_response(&client.sock, Some("limit-0"), Duration::from_secs(3)).expect("BYE answered");
    assert_eq!(bye_ok.code, 200);
    client.send(&client.invite("limit-6", "z9hG4bKlimit6", 40012));
    let r = recv_response(&client.sock, Some("limit-6"), Duration::from_secs(3)).expect("answer");
    assert_eq!(r.code, 200);
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.iter().any(|c| c["end_reason"] == "rejected-busy")
    });
    assert_eq!(
        calls
            .iter()
            .filter(|c| c["end_reason"] == "rejected-busy")
            .count(),
        1
    );
    // The refusal and a retransmission are counted where `hotline status` shows them.
    client.send(&client.invite("limit-6", "z9hG4bKlimit6", 40012));
    recv_response(&client.sock, Some("limit-6"), Duration::from_secs(3)).expect("200 again");
    let out = server.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["sip"]["busy"], 1, "{status}");
    assert!(
        status["sip"]["retransmissions_absorbed"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(status["active_calls"], 5, "{status}");
    server.assert_no_panic();
}

#[test]
fn retransmitted_invite_gets_the_same_answer_and_makes_one_call() {
    let server = Server::start(&[]);
    let client = RawClient::new(server.udp);
    let invite = client.invite("retrans-1", "z9hG4bKretrans1", 40020);
    client.send(&invite);
    let a = recv_response(&client.sock, Some("retrans-1"), Duration::from_secs(3)).expect("200");
    client.send(&invite);
    let b =
        recv_response(&client.sock, Some("retrans-1"), Duration::from_secs(3)).expect("200 again");
    assert_eq!(a.code, 200);
    assert_eq!(b.code, 200);
    assert_eq!(a.header("to"), b.header("to"), "same dialog (same To tag)");
    client.send(&client.in_dialog("ACK", &a, 1, "z9hG4bKretransack"));
    client.send(&client.in_dialog("BYE", &a, 2, "z9hG4bKretransbye"));
    assert_eq!(
        recv_response(&client.sock, Some("retrans-1"), Duration::from_secs(3)).map(|r| r.code),
        Some(200)
    );
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    assert_eq!(calls.len(), 1, "one call for the retransmitted INVITE");
    assert_eq!(calls[0]["end_reason"], "caller-bye");
}

#[test]
fn reinvite_to_hold_is_answered_and_requests_outside_dialogs_get_481() {
    let server = Server::start(&[]);
    let client = RawClient::new(server.udp);
    client.send(&client.invite("hold-1", "z9hG4bKhold1", 40030));
    let ok = recv_response(&client.sock, Some("hold-1"), Duration::from_secs(3)).expect("200");
    client.send(&client.in_dialog("ACK", &ok, 1, "z9hG4bKholdack"));
    let local = client.local();
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40030 RTP/AVP 0\r\na=sendonly\r\n";
    let reinvite = format!(
        "INVITE sip:hotline@{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKhold2;rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: hold-1\r\nCSeq: 2 INVITE\r\nContact: <sip:tester@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
        srv = server.udp,
        from = ok.header("from").unwrap(),
        to = ok.header("to").unwrap(),
        len = sdp.len()
    );
    client.send(&reinvite);
    let r = recv_response(&client.sock, Some("hold-1"), Duration::from_secs(3))
        .expect("re-INVITE answered");
    assert_eq!(r.code, 200);
    assert!(
        r.text.contains("a=recvonly"),
        "hold answered with recvonly:\n{}",
        r.text
    );
    client.send(&client.in_dialog("ACK", &r, 2, "z9hG4bKholdack2"));
    // A BYE for a dialog that does not exist.
    let bogus = client
        .in_dialog("BYE", &ok, 3, "z9hG4bKbogus")
        .replace("Call-ID: hold-1", "Call-ID: nosuch-1");
    client.send(&bogus);
    assert_eq!(
        recv_response(&client.sock, Some("nosuch-1"), Duration::from_secs(3)).map(|r| r.code),
        Some(481)
    );
    client.send(&client.in_dialog("BYE", &ok, 3, "z9hG4bKholdbye"));
    assert_eq!(
        recv_response(&client.sock, Some("hold-1"), Duration::from_secs(3)).map(|r| r.code),
        Some(200)
    );
}

#[test]
fn register_is_challenged_then_refused_and_options_lists_methods() {
    let server = Server::start(&[]);
    let client = RawClient::new(server.udp);
    let local = client.local();
    let reg = |auth: &str, n: u32| {
        format!(
            "REGISTER sip:{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKreg{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:op@{srv}>;tag=r1\r\nTo: <sip:op@{srv}>\r\nCall-ID: reg-1\r\nCSeq: {n} REGISTER\r\nContact: <sip:op@{local}>\r\n{auth}Content-Length: 0\r\n\r\n",
            srv = server.udp
        )
    };
    client.send(&reg("", 1));
    let r = recv_response(&client.sock, Some("reg-1"), Duration::from_secs(3)).expect("401");
    assert_eq!(r.code, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Digest")));
    client.send(&reg("Authorization: Digest username=\"op\", realm=\"hotline\", nonce=\"x\", uri=\"sip:x\", response=\"00\"\r\n", 2));
    assert_eq!(
        recv_response(&client.sock, Some("reg-1"), Duration::from_secs(3)).map(|r| r.code),
        Some(403)
    );
}

#[test]
fn bad_configuration_exits_2_naming_file_key_and_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "rtp.ports=\"3000-2000\""], "rtp.ports"),
        (
            &["--set", "sip.listen=[\"udp:999.1.1.1:5060\"]"],
            "sip.listen[0]",
        ),
        (&["--set", "sip.lisen=[]"], "sip.lisen"),
        (&["--set", "limits.max_calls=\"lots\""], "limits.max_calls"),
        (
            &["--config", "/nonexistent/hotline.toml"],
            "/nonexistent/hotline.toml",
        ),
    ];
    for (args, key) in cases {
        for sub in ["check", "serve"] {
            let out = Command::new(common::bin())
                .arg(sub)
                .args(*args)
                .output()
                .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.contains(key), "{sub} {args:?} should name {key}: {err}");
        }
    }
    let out = Command::new(common::bin())
        .arg("check")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn caller_number_is_not_stored_when_policy_is_drop() {
    let server = Server::start(&["privacy.caller_id=drop"]);
    let client = RawClient::new(server.udp);
    let invite = client
        .invite("privacy-1", "z9hG4bKpriv1", 40040)
        .replace("sip:tester@", "sip:+79161234567@");
    client.send(&invite);
    let ok = recv_response(&client.sock, Some("privacy-1"), Duration::from_secs(3)).expect("200");
    client.send(&client.in_dialog("ACK", &ok, 1, "z9hG4bKprivack"));
    client.send(&client.in_dialog("BYE", &ok, 2, "z9hG4bKprivbye"));
    let _ = recv_response(&client.sock, Some("privacy-1"), Duration::from_secs(3));
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    assert!(calls[0]["from"].is_null());
    let db = std::fs::read(server.data_dir().join("hotline.db")).unwrap_or_default();
    let wal = std::fs::read(server.data_dir().join("hotline.db-wal")).unwrap_or_default();
    let needle = b"9161234567";
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "number in the database"
    );
    assert!(
        !wal.windows(needle.len()).any(|w| w == needle),
        "number in the WAL"
    );
    assert!(
        !server.log_text().contains("9161234567"),
        "number in the log"
    );
}

/// The port the server's SDP answer names for RTP.
fn answer_media_port(resp: &common::Resp) -> u16 {
    resp.text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio in the answer")
}

#[test]
fn caller_that_sends_no_rtp_is_ended_by_rtp_timeout() {
    let server = Server::start(&["rtp.timeout_s=2"]);
    let client = RawClient::new(server.udp);
    client.send(&client.invite("rtpto-1", "z9hG4bKrtpto1", 40050));
    let ok = recv_response(&client.sock, Some("rtpto-1"), Duration::from_secs(3)).expect("200");
    client.send(&client.in_dialog("ACK", &ok, 1, "z9hG4bKrtptoack"));
    let started = Instant::now();
    let mut buf = [0u8; 65536];
    client
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let bye = loop {
        let (n, _) = client
            .sock
            .recv_from(&mut buf)
            .expect("BYE after the RTP timeout");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("BYE ") {
            break text;
        }
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "after ~2 s: {waited:?}"
    );
    client.send(&bye_response(&bye));
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    assert_eq!(calls[0]["end_reason"], "rtp-timeout");
    server.assert_no_panic();
}

#[test]
fn rtp_from_a_stranger_is_ignored_and_gets_no_audio() {
    let server = Server::start(&[]);
    let client = RawClient::new(server.udp);
    let media = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let media_port = media.local_addr().unwrap().port();
    client.send(&client.invite("bleed-1", "z9hG4bKbleed1", media_port));
    let ok = recv_response(&client.sock, Some("bleed-1"), Duration::from_secs(3)).expect("200");
    client.send(&client.in_dialog("ACK", &ok, 1, "z9hG4bKbleedack"));
    let server_media = std::net::SocketAddr::new(server.udp.ip(), answer_media_port(&ok));
    // Another host (127.0.0.2) sprays RTP at the call's port before the caller does.
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let mut pkt = vec![0x80u8, 0, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    pkt.extend_from_slice(&[0xffu8; 160]);
    for _ in 0..50 {
        stranger.send_to(&pkt, server_media).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    stranger
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1500];
    assert!(
        stranger.recv_from(&mut buf).is_err(),
        "no audio goes to the stranger"
    );
    // The caller still gets its audio at the signalled address.
    media
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (n, from) = media.recv_from(&mut buf).expect("caller gets RTP");
    assert!(n >= 172 && from == server_media);
    client.send(&client.in_dialog("BYE", &ok, 2, "z9hG4bKbleedbye"));
    server.assert_no_panic();
}
