//! The TCP stream framer fed a message in one piece and one byte at a time (a peer
//! that sends tiny segments, or a slowloris): prints the CPU time per message for
//! header sections and bodies of growing size, so cost that grows with the square of
//! the message shows.
//!
//!     cargo run --release --example bench_stream_framer
//!
//! On the 2-core test machine (best of 20 whole, of 3 bytewise), before the framer
//! resumed its search and kept the parsed head, then after:
//!
//!     header B  body B   whole (ms)   1 byte at a time (ms)
//!                        before after  before     after
//!         1000       0    0.002 0.003     0.188     0.014
//!         8000       0    0.014 0.016    18.061     0.088
//!        32000       0    0.052 0.059   241.002     0.346
//!        60000       0    0.143 0.158   833.886     0.692
//!         1000   30000    0.004 0.004    86.992     0.242
//!        30000   30000    0.073 0.078  2055.812     0.566

use hotline::sip::raw::{StreamFramer, StreamItem};
use std::time::Instant;

fn message(header_bytes: usize, body_bytes: usize) -> Vec<u8> {
    let mut m = b"INVITE sip:hotline@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKb1\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:hotline@127.0.0.1>\r\nCall-ID: bench\r\nCSeq: 1 INVITE\r\n".to_vec();
    while m.len() < header_bytes {
        m.extend_from_slice(
            b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    m.extend_from_slice(format!("Content-Length: {body_bytes}\r\n\r\n").as_bytes());
    m.extend(std::iter::repeat_n(b'v', body_bytes));
    m
}

/// Seconds to frame `m` pushed in pieces of `piece` bytes.
fn frame(m: &[u8], piece: usize) -> f64 {
    let mut framer = StreamFramer::new(65535);
    let started = Instant::now();
    let mut got = 0;
    for p in m.chunks(piece) {
        framer.push(p);
        while let Some(item) = framer.next_item() {
            match item {
                StreamItem::Message(_) => got += 1,
                StreamItem::Fatal(e, _) => panic!("{e}"),
            }
        }
    }
    assert_eq!(got, 1);
    started.elapsed().as_secs_f64()
}

fn main() {
    println!("header B  body B   whole (ms)   1 byte at a time (ms)");
    for (header, body) in [
        (1_000, 0),
        (8_000, 0),
        (32_000, 0),
        (60_000, 0),
        (1_000, 30_000),
        (30_000, 30_000),
    ] {
        let m = message(header, body);
        let whole = (0..20).map(|_| frame(&m, m.len())).fold(f64::MAX, f64::min);
        let bytewise = (0..3).map(|_| frame(&m, 1)).fold(f64::MAX, f64::min);
        println!(
            "{header:>8}  {body:>6}   {:>10.3}   {:>21.3}",
            whole * 1e3,
            bytewise * 1e3
        );
    }
}
