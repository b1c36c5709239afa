//! The caller's address and number nowhere under `privacy.caller_id = "hash"` and
//! `"drop"`, and no RTP to an address that never asked for it.
//!
//! The caller here sends from a distinctive loopback address that also appears in its
//! Call-ID, Via, Contact and SDP; after the call and a clean stop, no file under the
//! data directory and no log line may hold that address or the caller's number.

mod common;

use common::{recv_response, Resp, Server};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

const NUMBER: &str = "79161234567";

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn invite(local: SocketAddr, server: SocketAddr, call_id: &str, media: SocketAddr) -> String {
    let ip = local.ip();
    let sdp = format!(
        "v=0\r\no=+{NUMBER} 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {mip}\r\nt=0 0\r\nm=audio {mport} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        mip = media.ip(),
        mport = media.port()
    );
    format!(
        "INVITE sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id};rport\r\nMax-Forwards: 70\r\nFrom: \"+{NUMBER}\" <sip:+{NUMBER}@{ip}>;tag=f{call_id}\r\nTo: <sip:hotline@{server}>\r\nCall-ID: {call_id}@{ip}\r\nCSeq: 1 INVITE\r\nContact: <sip:+{NUMBER}@{local}>\r\nP-Asserted-Identity: <sip:+{NUMBER}@{ip}>\r\nUser-Agent: phone-{ip}\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
        len = sdp.len()
    )
}

fn in_dialog(method: &str, local: SocketAddr, server: SocketAddr, ok: &Resp, cseq: u32) -> String {
    let h = |n: &str| ok.header(n).unwrap_or_default();
    format!(
        "{method} sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{method}{cseq};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        h("from"),
        h("to"),
        h("call-id")
    )
}

fn caller_leaves_no_trace(policy: &str) {
    let caller_ip = "127.0.0.77";
    let mut server = Server::start(&[&format!("privacy.caller_id=\"{policy}\"")]);
    let sip = UdpSocket::bind(format!("{caller_ip}:0")).expect("bind the caller's address");
    let rtp = UdpSocket::bind(format!("{caller_ip}:0")).unwrap();
    let local = sip.local_addr().unwrap();
    let media = rtp.local_addr().unwrap();
    let call_id = "a84b4c76e66710";
    sip.send_to(
        invite(local, server.udp, call_id, media).as_bytes(),
        server.udp,
    )
    .unwrap();
    let ok = recv_response(&sip, None, Duration::from_secs(3)).expect("200");
    assert_eq!(ok.code, 200, "{}", ok.text);
    sip.send_to(
        in_dialog("ACK", local, server.udp, &ok, 1).as_bytes(),
        server.udp,
    )
    .unwrap();
    // The caller talks (latching confirms the address) and presses a key.
    let server_media: SocketAddr = format!(
        "127.0.0.1:{}",
        ok.text
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
    )
    .parse()
    .unwrap();
    for seq in 0..50u16 {
        let mut pkt = vec![0x80, 0x00];
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        pkt.extend(std::iter::repeat_n(0xffu8, 160));
        rtp.send_to(&pkt, server_media).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    sip.send_to(
        in_dialog("BYE", local, server.udp, &ok, 2).as_bytes(),
        server.udp,
    )
    .unwrap();
    let _ = recv_response(&sip, None, Duration::from_secs(3));
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    assert_eq!(calls[0]["end_reason"], "caller-bye", "{}", calls[0]);
    server.stop();

    let mut all = Vec::new();
    files(&server.data_dir(), &mut all);
    all.push(server.log.clone());
    assert!(all.len() >= 2, "{all:?}");
    for file in &all {
        let bytes = std::fs::read(file).unwrap_or_default();
        for needle in [caller_ip, NUMBER, call_id] {
            assert!(
                !contains(&bytes, needle),
                "{policy}: \"{needle}\" found in {}",
                file.display()
            );
        }
    }
    server.assert_no_panic();
}

#[test]
fn under_hash_the_callers_address_and_number_are_nowhere() {
    caller_leaves_no_trace("hash");
}

#[test]
fn under_drop_the_callers_address_and_number_are_nowhere() {
    caller_leaves_no_trace("drop");
}

/// RTP packets that reach `sock` within `window`.
fn count_rtp(sock: &UdpSocket, window: Duration) -> usize {
    let until = Instant::now() + window;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while Instant::now() < until {
        sock.set_read_timeout(Some(
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        if sock.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

#[test]
fn a_spoofed_invite_buys_no_rtp_for_the_address_in_its_sdp() {
    let server = Server::start(&[]);
    let victim = UdpSocket::bind("127.0.0.99:0").unwrap();
    let victim_addr = victim.local_addr().unwrap();

    // Never ACKed: the 200 is retransmitted to the SIP source, nothing goes to the SDP's.
    let spoofer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = spoofer.local_addr().unwrap();
    spoofer
        .send_to(
            invite(local, server.udp, "spoofed1", victim_addr).as_bytes(),
            server.udp,
        )
        .unwrap();
    let ok = recv_response(&spoofer, None, Duration::from_secs(3)).expect("200");
    assert_eq!(ok.code, 200);
    assert_eq!(
        count_rtp(&victim, Duration::from_secs(4)),
        0,
        "RTP before any ACK"
    );

    // ACKed, but the SDP names another address that never sent RTP: still nothing.
    let spoofer2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local2 = spoofer2.local_addr().unwrap();
    spoofer2
        .send_to(
            invite(local2, server.udp, "spoofed2", victim_addr).as_bytes(),
            server.udp,
        )
        .unwrap();
    let ok2 = recv_response(&spoofer2, None, Duration::from_secs(3)).expect("200");
    spoofer2
        .send_to(
            in_dialog("ACK", local2, server.udp, &ok2, 1).as_bytes(),
            server.udp,
        )
        .unwrap();

    // A caller whose SDP names its own address does get audio: the test can see RTP.
    let honest = UdpSocket::bind("127.0.0.1:0").unwrap();
    let honest_media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local3 = honest.local_addr().unwrap();
    honest
        .send_to(
            invite(
                local3,
                server.udp,
                "honest1",
                honest_media.local_addr().unwrap(),
            )
            .as_bytes(),
            server.udp,
        )
        .unwrap();
    let ok3 = recv_response(&honest, None, Duration::from_secs(3)).expect("200");
    honest
        .send_to(
            in_dialog("ACK", local3, server.udp, &ok3, 1).as_bytes(),
            server.udp,
        )
        .unwrap();

    let to_victim = count_rtp(&victim, Duration::from_secs(4));
    let to_honest = count_rtp(&honest_media, Duration::from_millis(500));
    assert!(
        to_honest > 5,
        "the honest caller hears the greeting: {to_honest}"
    );
    assert_eq!(to_victim, 0, "RTP sent to an address that never asked");
    // The unACKed 200 goes to the SIP source only, as RFC 3261 retransmits it.
    let mut retransmits = 0;
    let mut buf = [0u8; 4096];
    spoofer
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok((n, _)) = spoofer.recv_from(&mut buf) {
        if buf[..n].starts_with(b"SIP/2.0 200") {
            retransmits += 1;
        }
    }
    assert!(
        retransmits <= 11,
        "{retransmits} retransmissions of the 200"
    );
    server.assert_no_panic();
}
