//! Cost per packet of SRTP (AES_CM_128_HMAC_SHA1_80, `media::srtp`) against plain RTP
//! handling: protect (send) and unprotect (receive) of 20 ms G.711 packets (12-byte
//! header + 160 bytes), one stream at a time. Prints ns per packet and the CPU share
//! of one core for one leg (50 packets/s each way).
//!
//!     bench_srtp [PACKETS=1000000]

use hotline::media::srtp::{Protector, Unprotector};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let key = [7u8; 16];
    let salt = [9u8; 14];
    let mut header = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    header.extend_from_slice(&[0x55; 160]);
    let template = header;

    // Plain RTP: what the media path does per packet anyway (copy into a buffer).
    let t = Instant::now();
    for seq in 0..n {
        let mut p = template.clone();
        p[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
        black_box(&p);
    }
    let plain = t.elapsed().as_nanos() as f64 / n as f64;

    let mut tx = Protector::new(&key, &salt);
    let mut protected = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for seq in 0..n {
        let mut p = template.clone();
        p[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
        tx.protect(&mut p).unwrap();
        if protected.len() < 65536 {
            protected.push(p);
        } else {
            black_box(&p);
        }
    }
    let protect = t.elapsed().as_nanos() as f64 / n as f64;

    let m = protected.len() as u32;
    let mut rx = Unprotector::new(&key, &salt);
    let t = Instant::now();
    for p in &protected {
        black_box(rx.unprotect(p).unwrap());
    }
    let unprotect = t.elapsed().as_nanos() as f64 / m as f64;

    println!("per 172-byte RTP packet: plain copy {plain:.0} ns, protect {protect:.0} ns, unprotect {unprotect:.0} ns");
    let per_leg = (protect + unprotect - 2.0 * plain) * 50.0 / 1e9 * 100.0;
    println!(
        "one SRTP leg (50 packets/s each way) costs {per_leg:.4} % of one core more than plain RTP"
    );
}
