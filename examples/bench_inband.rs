//! Measures the in-band detector's cost per 20 ms frame (160 samples), the unit in
//! which the media path feeds it. Run with `cargo run --release --example bench_inband`.

use hotline::media::inband::InbandDetector;
use hotline::media::tone::{dtmf_tone, SAMPLE_RATE};
use std::hint::black_box;
use std::time::Instant;

const FRAME: usize = 160;

fn speech() -> Vec<i16> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech_en.wav");
    match hound::WavReader::open(path) {
        Ok(mut r) => r.samples::<i16>().map_while(Result::ok).collect(),
        Err(e) => {
            eprintln!("{path}: {e}");
            Vec::new()
        }
    }
}

fn noise(n: usize) -> Vec<i16> {
    let mut seed = 0x1234_5678_9ABC_DEF0u64;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 52) as i16 - 2048
        })
        .collect()
}

fn digits() -> Vec<i16> {
    let mut out = Vec::new();
    for d in "1234567890*#ABCD".chars() {
        out.extend(dtmf_tone(d, 100, -15.0, SAMPLE_RATE).unwrap_or_default());
        out.extend(vec![0; 800]);
    }
    out
}

/// Mean ns per frame of one detector fed `audio` repeatedly for about 1.5 M frames'
/// worth of samples.
fn single(audio: &[i16]) -> f64 {
    let frames: Vec<&[i16]> = audio.chunks_exact(FRAME).collect();
    if frames.is_empty() {
        return f64::NAN;
    }
    let rounds = 100_000 / frames.len() + 1;
    let mut det = InbandDetector::default();
    let start = Instant::now();
    let mut t = 0;
    for _ in 0..rounds {
        for f in &frames {
            black_box(det.push(black_box(f), t));
            t += 20;
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * frames.len()) as f64
}

/// Mean ns per frame with `calls` detectors fed in turn, as the media loop would.
fn many(audio: &[i16], calls: usize) -> f64 {
    let frames: Vec<&[i16]> = audio.chunks_exact(FRAME).collect();
    let mut dets: Vec<InbandDetector> = (0..calls).map(|_| InbandDetector::default()).collect();
    let per_call = 100;
    let start = Instant::now();
    for (t, f) in frames.iter().cycle().take(per_call).enumerate() {
        for d in &mut dets {
            black_box(d.push(black_box(f), t as u64 * 20));
        }
    }
    start.elapsed().as_nanos() as f64 / (calls * per_call) as f64
}

fn main() {
    let speech = speech();
    let cases = [
        ("silence", vec![0; 8000]),
        ("white noise", noise(8000 * 5)),
        ("speech", speech.clone()),
        ("DTMF digits", digits()),
    ];
    for (name, audio) in &cases {
        println!("{name:12} {:6.0} ns per 20 ms frame", single(audio));
    }
    let calls = 2000;
    let ns = many(&speech, calls);
    println!("speech, {calls} detectors round-robin: {ns:.0} ns per frame");
    // Each call delivers 50 frames per second.
    println!(
        "=> {:.1} % of one core for {calls} calls",
        ns * (calls * 50) as f64 / 1e9 * 100.0
    );
}
