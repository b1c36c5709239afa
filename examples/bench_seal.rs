//! Sealing cost: CPU time and wall time to seal recordings (`X.wav` to `X.wav.age`:
//! encrypt, fsync, rename, read back and decrypt to verify, overwrite and remove the
//! plaintext), per minute of audio, for mono voice messages and stereo conversations,
//! with one and with three recipients; and the cost of sealing one call's details.
//! Run through `bench/seal.sh` (a release build).
//!
//!     bench_seal [FILES] [MINUTES]

use hotline::store::seal::Sealer;
use std::time::{Duration, Instant};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer for the calling thread's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A WAV of `minutes` of noise-like audio (content does not change the cost).
fn write_wav(path: &std::path::Path, minutes: f64, channels: u16, seed: u32) {
    let mut w = hound::WavWriter::create(
        path,
        hound::WavSpec {
            channels,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .expect("wav");
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let n = (minutes * 60.0 * 8000.0) as usize * channels as usize;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        w.write_sample((x >> 20) as i16 - 2048).expect("sample");
    }
    w.finalize().expect("finalize");
}

fn run(label: &str, sealer: &Sealer, files: usize, minutes: f64, channels: u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<_> = (0..files)
        .map(|i| {
            let p = dir.path().join(format!("{i}.wav"));
            write_wav(&p, minutes, channels, i as u32 + 1);
            p
        })
        .collect();
    let bytes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let cpu0 = thread_cpu();
    let wall0 = Instant::now();
    let mut per_file = Vec::new();
    for p in &paths {
        let t = Instant::now();
        sealer.seal_file(p).expect("seal");
        per_file.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = (thread_cpu() - cpu0).as_secs_f64();
    let audio_min = files as f64 * minutes;
    per_file.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label}: {files} files of {minutes} min ({:.1} MB): CPU {:.1} ms per minute of audio, \
         wall {:.1} ms per minute (fsyncs included), {:.0} MB/s; per file p50 {:.1} ms, max {:.1} ms",
        bytes as f64 / 1e6,
        cpu * 1000.0 / audio_min,
        wall * 1000.0 / audio_min,
        bytes as f64 / 1e6 / wall,
        per_file[per_file.len() / 2],
        per_file[per_file.len() - 1],
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let files: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let minutes: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let ids: Vec<_> = (0..3).map(|_| age::x25519::Identity::generate()).collect();
    let one = Sealer::new(vec![ids[0].to_public()]).unwrap();
    let three = Sealer::new(ids.iter().map(|i| i.to_public()).collect()).unwrap();
    run("voicemail (mono), 1 recipient", &one, files, minutes, 1);
    run("voicemail (mono), 3 recipients", &three, files, minutes, 1);
    run(
        "conversation (stereo), 1 recipient",
        &one,
        files,
        minutes,
        2,
    );
    // One call's details: a few answers, a dozen digits, the path.
    let details = br#"{"sip_call_id":"a84b4c76e66710@pc33.example.com","answers":[{"node":"situation","key":"status","digits":"1","at":"2024-01-02T03:04:05.123456789Z"},{"node":"zone","key":"zone","digits":"2","at":"2024-01-02T03:04:07.123456789Z"},{"node":"unit","key":"unit","digits":"12345","at":"2024-01-02T03:04:12.123456789Z"}],"digits":[],"path":[{"node":"greeting","at":"2024-01-02T03:04:01.123456789Z"},{"node":"situation","at":"2024-01-02T03:04:04.123456789Z"},{"node":"zone","at":"2024-01-02T03:04:06.123456789Z"},{"node":"unit","at":"2024-01-02T03:04:08.123456789Z"}]}"#;
    for (label, sealer) in [("1 recipient", &one), ("3 recipients", &three)] {
        let n = 2000;
        let cpu0 = thread_cpu();
        for _ in 0..n {
            std::hint::black_box(sealer.seal_bytes(details).expect("seal"));
        }
        let cpu = (thread_cpu() - cpu0).as_secs_f64();
        println!(
            "call details blob ({} bytes), {label}: {:.0} µs CPU per seal",
            details.len(),
            cpu * 1e6 / n as f64
        );
    }
}
