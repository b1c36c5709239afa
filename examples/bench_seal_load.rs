//! Load for `bench/seal-pacing.sh`: N callers that leave voice messages and hang up
//! at the same moment, so that the hotline has N recordings to seal at once. Each
//! caller sends PCMU audio every 20 ms, presses 0 by RFC 4733 at 0.5 s (the queue has
//! no operator: straight to voicemail) and sends BYE at HANGUP seconds. Prints when
//! the BYEs went and how many were answered.
//!
//!     bench_seal_load SERVER_ADDR CALLS HANGUP_SECONDS

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

struct Caller {
    sip: UdpSocket,
    rtp: UdpSocket,
    media: SocketAddr,
    call_id: String,
    from: String,
    to: String,
}

fn header(resp: &str, name: &str) -> String {
    resp.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Where the answer's SDP wants our audio.
fn media_addr(sdp: &str, server: SocketAddr) -> SocketAddr {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(server.ip());
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .expect("m=audio in the answer");
    SocketAddr::new(ip, port)
}

fn dial(server: SocketAddr, i: usize) -> Caller {
    let sip = UdpSocket::bind("127.0.0.1:0").expect("bind sip");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind rtp");
    let local = sip.local_addr().expect("addr");
    let rtp_port = rtp.local_addr().expect("addr").port();
    let call_id = format!("sealload-{i}-{}", std::process::id());
    let sdp = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n");
    let from = format!("<sip:load{i}@{local}>;tag=l{i}");
    let invite = format!(
        "INVITE sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKload{i};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:hotline@{server}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:load@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sip.send_to(invite.as_bytes(), server).expect("send invite");
    sip.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sip.recv_from(&mut buf).expect("answer");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("SIP/2.0 200") {
            let to = header(&text, "to");
            let ack = format!(
                "ACK sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKloadack{i};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            );
            sip.send_to(ack.as_bytes(), server).expect("ack");
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            return Caller {
                media: media_addr(body, server),
                sip,
                rtp,
                call_id,
                from,
                to,
            };
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: bench_seal_load SERVER_ADDR CALLS HANGUP_SECONDS");
    let calls: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let hangup: f64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(52.0);
    let callers: Vec<Caller> = (0..calls).map(|i| dial(server, i)).collect();
    let start = Instant::now();
    let mut seq: u16 = 0;
    let mut ts: u32 = 0;
    let mut tick: u64 = 0;
    // Voice-like bytes: PCMU of a slow sine, so the recordings are not silence.
    let voice: Vec<u8> = (0..8000)
        .map(|n| {
            let s = (n as f64 * 2.0 * std::f64::consts::PI * 220.0 / 8000.0).sin() * 8000.0;
            audio_codec_algorithms::encode_ulaw(s as i16)
        })
        .collect();
    let digit_at = 25u64; // 0.5 s
    while start.elapsed().as_secs_f64() < hangup {
        let deadline = start + Duration::from_millis(20 * tick);
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let off = (tick as usize * 160) % (voice.len() - 160);
        for (i, c) in callers.iter().enumerate() {
            let ssrc = 0x5ea1_0000u32 + i as u32;
            let mut pkt = Vec::with_capacity(172);
            if (digit_at..digit_at + 8).contains(&tick) {
                // Key 0 by RFC 4733: 5 updates, then the end packet three times.
                let k = tick - digit_at;
                let end = k >= 5;
                let duration = (160 * (k.min(5) + 1)) as u16;
                pkt.extend_from_slice(&[0x80, if k == 0 { 0x80 | 101 } else { 101 }]);
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(&(digit_at as u32 * 160).to_be_bytes());
                pkt.extend_from_slice(&ssrc.to_be_bytes());
                pkt.extend_from_slice(&[0, if end { 0x80 | 10 } else { 10 }]);
                pkt.extend_from_slice(&duration.to_be_bytes());
            } else {
                pkt.extend_from_slice(&[0x80, 0]);
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(&ts.to_be_bytes());
                pkt.extend_from_slice(&ssrc.to_be_bytes());
                pkt.extend_from_slice(&voice[off..off + 160]);
            }
            let _ = c.rtp.send_to(&pkt, c.media);
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
        tick += 1;
    }
    for (i, c) in callers.iter().enumerate() {
        let local = c.sip.local_addr().expect("addr");
        let bye = format!(
            "BYE sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKloadbye{i};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            c.from, c.to, c.call_id
        );
        let _ = c.sip.send_to(bye.as_bytes(), server);
    }
    println!(
        "{calls} callers hung up {:.1} s after the answer",
        start.elapsed().as_secs_f64()
    );
    let mut ok = 0;
    let mut buf = [0u8; 4096];
    for c in &callers {
        c.sip.set_read_timeout(Some(Duration::from_secs(2))).ok();
        while let Ok((n, _)) = c.sip.recv_from(&mut buf) {
            let t = String::from_utf8_lossy(&buf[..n]);
            if t.starts_with("SIP/2.0 200") && t.contains("BYE") {
                ok += 1;
                break;
            }
        }
    }
    println!("BYE answered: {ok} of {calls}");
}
