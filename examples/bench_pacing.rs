//! RTP pacing benchmark: places N concurrent calls to a running hotline over
//! loopback, receives every call's RTP for S seconds and prints the statistics of the
//! intervals between consecutive packets of each call (ideal: 20 ms). A timer probe
//! thread measures how late the machine itself wakes a sleeping thread, to tell
//! machine stalls from the server's own pacing. Run through `bench/pacing.sh`.
//!
//!     bench_pacing SERVER_ADDR CALLS SECONDS

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "{name}: n={} mean={mean:.3} p50={:.3} p99={:.3} p99.9={:.3} max={:.3} (ms)",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 0.999),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

struct Leg {
    sip: UdpSocket,
    rtp: UdpSocket,
    call_id: String,
    to: String,
    from: String,
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

fn dial(server: SocketAddr, i: usize) -> Leg {
    let sip = UdpSocket::bind("127.0.0.1:0").expect("bind sip");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind rtp");
    let local = sip.local_addr().expect("addr");
    let rtp_port = rtp.local_addr().expect("addr").port();
    let call_id = format!("pacing-{i}-{}", std::process::id());
    let sdp = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n");
    let from = format!("<sip:bench{i}@{local}>;tag=b{i}");
    let invite = format!(
        "INVITE sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKpace{i};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:hotline@{server}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:bench@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
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
                "ACK sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKpaceack{i};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            );
            sip.send_to(ack.as_bytes(), server).expect("ack");
            return Leg {
                sip,
                rtp,
                call_id,
                to,
                from,
            };
        }
        assert!(
            text.starts_with("SIP/2.0 1"),
            "call {i} refused: {}",
            text.lines().next().unwrap_or_default()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: bench_pacing SERVER_ADDR CALLS SECONDS");
    let calls: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(60);
    let legs: Vec<Leg> = (0..calls).map(|i| dial(server, i)).collect();
    println!("{calls} calls up; measuring {seconds} s of RTP");
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut late = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(Duration::from_millis(20));
                late.push((t.elapsed().as_secs_f64() * 1000.0 - 20.0).max(0.0));
            }
            late
        })
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut receivers = Vec::new();
    for leg in &legs {
        let rtp = leg.rtp.try_clone().expect("clone");
        receivers.push(std::thread::spawn(move || {
            rtp.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let mut buf = [0u8; 1500];
            let mut last: Option<(Instant, u16, u32)> = None;
            let mut intervals = Vec::with_capacity((seconds * 50) as usize);
            let mut ts_errors = 0u64;
            let mut packets = 0u64;
            while Instant::now() < until {
                let Ok(n) = rtp.recv(&mut buf) else { continue };
                let now = Instant::now();
                if n < 12 {
                    continue;
                }
                packets += 1;
                let seq = u16::from_be_bytes([buf[2], buf[3]]);
                let ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if let Some((t, s, prev_ts)) = last {
                    if seq == s.wrapping_add(1) {
                        intervals.push((now - t).as_secs_f64() * 1000.0);
                        if ts.wrapping_sub(prev_ts) != 160 {
                            ts_errors += 1;
                        }
                    }
                }
                last = Some((now, seq, ts));
            }
            (intervals, ts_errors, packets)
        }));
    }
    let mut all = Vec::new();
    let (mut ts_errors, mut packets) = (0, 0);
    for r in receivers {
        let (iv, te, p) = r.join().expect("receiver");
        all.extend(iv);
        ts_errors += te;
        packets += p;
    }
    stop.store(true, Ordering::Relaxed);
    let late = probe.join().expect("probe");
    for (i, leg) in legs.iter().enumerate() {
        let local = leg.sip.local_addr().expect("addr");
        let bye = format!(
            "BYE sip:hotline@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKpacebye{i};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            leg.from, leg.to, leg.call_id
        );
        let _ = leg.sip.send_to(bye.as_bytes(), server);
    }
    let expected = calls as f64 * seconds as f64 * 50.0;
    println!("packets received: {packets} ({:.2} % of {expected:.0} expected); timestamp steps other than 160: {ts_errors}", packets as f64 / expected * 100.0);
    let deviation: Vec<f64> = all.iter().map(|x| (x - 20.0).abs()).collect();
    let over10 = deviation.iter().filter(|d| **d > 10.0).count();
    summary("inter-packet interval", all);
    summary("deviation from 20 ms", deviation);
    println!("intervals deviating more than 10 ms: {over10}");
    summary("timer probe lateness (machine)", late);
}
