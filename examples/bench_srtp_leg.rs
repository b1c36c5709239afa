//! CPU per leg through the media core (`media::core::MediaCore`, sans-IO, no sockets):
//! LEGS legs each receive one 20 ms G.711 packet and send one per tick, for TICKS
//! ticks, once with plain RTP and once with SRTP (AES_CM_128_HMAC_SHA1_80 both ways).
//! What is timed is everything the core does per packet (jitter buffer, G.711, DTMF
//! and level detection, building our packet) plus, on SRTP legs, authenticating and
//! decrypting what arrives and protecting what leaves. Prints microseconds of CPU per
//! leg per second of audio and the share of one core.
//!
//!     bench_srtp_leg [LEGS=200] [TICKS=500]

use hotline::call::{Codec, MediaCommand, SrtpKeys, SrtpMasterKey};
use hotline::config::PortRange;
use hotline::media::core::{EngineCommand, InbandPolicy, MediaConfig, MediaCore};
use hotline::media::rtp::{RtpSender, MAX_PACKET};
use hotline::media::srtp::Protector;
use rand::SeedableRng;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn keys(leg: u64) -> SrtpKeys {
    let b = leg as u8;
    SrtpKeys {
        send: SrtpMasterKey::new([b; 16], [b.wrapping_add(1); 14]),
        receive: SrtpMasterKey::new([b.wrapping_add(2); 16], [b.wrapping_add(3); 14]),
    }
}

/// Seconds of CPU the core spent for `legs` legs over `ticks` ticks.
fn run(legs: u64, ticks: u64, srtp: bool) -> (Duration, u64) {
    let mut core = MediaCore::new(
        MediaConfig {
            ports: PortRange {
                first: 20000,
                last: 29999,
            },
            rtp_timeout: Duration::ZERO,
            inband: InbandPolicy::Auto,
            latch: false,
        },
        &mut rand::rngs::StdRng::seed_from_u64(1),
    );
    let mut peers = Vec::new();
    for call in 1..=legs {
        let remote: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 40000 + call as u16));
        core.handle_command(
            EngineCommand::Sip(MediaCommand::Allocate {
                call,
                local_ip: [127, 0, 0, 1].into(),
            }),
            0,
        );
        let k = keys(call);
        core.handle_command(
            EngineCommand::Sip(MediaCommand::Start {
                call,
                remote: Some(remote),
                signal_ip: remote.ip(),
                codec: Codec::Pcmu,
                telephone_event_pt: Some(101),
                send: true,
                confirmed: true,
                srtp: srtp.then(|| k.clone()),
            }),
            0,
        );
        let protector = srtp.then(|| Protector::new(k.receive.key(), k.receive.salt()));
        peers.push((call, remote, RtpSender::new(call as u32, 1, 0), protector));
    }
    // The peers' packets are made before the clock starts: only the core is timed.
    let payload: Vec<u8> = (0..160u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut inbound = Vec::with_capacity((legs * ticks) as usize);
    let mut pkt = [0u8; MAX_PACKET];
    for _ in 0..ticks {
        for (call, remote, sender, protector) in peers.iter_mut() {
            let n = sender.build(0, &payload, &mut pkt);
            let mut p = pkt[..n].to_vec();
            if let Some(tx) = protector {
                tx.protect(&mut p).unwrap();
            }
            inbound.push((*call, *remote, p));
        }
    }
    let mut sent = 0u64;
    let mut packets = inbound.iter();
    let t = Instant::now();
    for tick in 0..ticks {
        let now_ms = tick * 20;
        for _ in 0..legs {
            let (call, from, p) = packets.next().unwrap();
            core.receive(*call, *from, p, now_ms);
        }
        core.tick(now_ms, &mut |_, _, bytes| {
            black_box(bytes);
            sent += usize::from(bytes.len() == if srtp { 182 } else { 172 }) as u64;
        });
    }
    let took = t.elapsed();
    assert_eq!(
        core.srtp_drops().counts(),
        Default::default(),
        "every packet authentic"
    );
    (took, sent)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let legs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let ticks: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let audio_s = ticks as f64 * 0.02;
    // Warm-up, then plain and SRTP alternately, best of three each.
    run(legs, ticks / 5 + 1, false);
    let mut best = [f64::MAX; 2];
    for _ in 0..3 {
        for (i, srtp) in [false, true].into_iter().enumerate() {
            let (took, sent) = run(legs, ticks, srtp);
            assert_eq!(
                sent,
                legs * ticks,
                "every leg sent every tick, SRTP-sized on SRTP legs"
            );
            let us_per_leg_s = took.as_secs_f64() * 1e6 / legs as f64 / audio_s;
            best[i] = best[i].min(us_per_leg_s);
        }
    }
    let [plain, srtp] = best;
    println!(
        "{legs} legs x {ticks} ticks ({audio_s:.0} s of audio, one packet in and one out per leg per tick)"
    );
    println!(
        "plain RTP: {plain:.1} us of CPU per leg per second = {:.4} % of a core per leg",
        plain / 1e4
    );
    println!(
        "SRTP:      {srtp:.1} us of CPU per leg per second = {:.4} % of a core per leg",
        srtp / 1e4
    );
    println!(
        "SRTP costs {:.1} us per leg per second more ({:.0} % over plain): {:.2} us per packet, received or sent",
        srtp - plain,
        (srtp / plain - 1.0) * 100.0,
        (srtp - plain) / 100.0
    );
}
