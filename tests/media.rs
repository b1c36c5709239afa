//! Media against the real binary: an independent softphone (baresip) hears the
//! greeting with the right timing and its keys arrive once; `hotline call` sends
//! digits by RFC 4733, in-band tones and SIP INFO; a recording survives `kill -9`;
//! recorded audio is the audio the caller sent.

mod common;

use common::{best_match, read_wav, require_tool, wav_files, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn prompt(id: &str) -> Vec<i16> {
    read_wav(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("prompts/ru")
            .join(format!("{id}.wav")),
    )
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

struct Baresip {
    child: std::process::Child,
    dir: tempfile::TempDir,
    ctrl_port: u16,
}

impl Baresip {
    fn start(call: &str, seconds: u32) -> Baresip {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctrl_port = common::free_udp_port();
        let d = dir.path();
        // One minute of quiet noise as the caller's voice.
        let mut w = hound::WavWriter::create(
            d.join("src.wav"),
            hound::WavSpec {
                channels: 1,
                sample_rate: 8000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            },
        )
        .expect("src.wav");
        let mut x: u32 = 1;
        for _ in 0..8000 * 60 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            w.write_sample(((x % 200) as i16) - 100).expect("write");
        }
        w.finalize().expect("finalize");
        common::baresip_config(d, ctrl_port, true);
        let child = Command::new("baresip")
            .args([
                "-f",
                &d.display().to_string(),
                "-e",
                &format!("/dial {call}"),
                "-t",
                &seconds.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("baresip.log")).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start baresip");
        Baresip {
            child,
            dir,
            ctrl_port,
        }
    }

    fn command(&self, cmd: &str, params: &str) {
        common::baresip_command(self.ctrl_port, cmd, params);
    }

    fn wait(mut self) -> (tempfile::TempDir, String) {
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default();
        (self.dir, log)
    }
}

fn decoded_dump(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("snd"))
        .expect("snd dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip wrote what it heard")
}

#[test]
fn baresip_hears_the_greeting_on_time_and_its_keys_arrive_once() {
    if !require_tool("baresip") {
        return;
    }
    let server = Server::start(&[]);
    let phone = Baresip::start(&format!("sip:hotline@{}", server.udp), 19);
    // The greeting and the keys hint play back to back (~14.3 s); the keys then
    // answer the first two questions.
    std::thread::sleep(Duration::from_secs(16));
    phone.command("sndcode", "1");
    std::thread::sleep(Duration::from_millis(700));
    phone.command("sndcode", "2");
    let (dir, log) = phone.wait();
    assert!(log.contains("Call established"), "baresip log:\n{log}");
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    let call = &calls[0];
    assert_eq!(call["digits"], "12", "each key exactly once: {call}");
    assert_eq!(
        call["digit_sources"],
        serde_json::json!(["rfc4733", "rfc4733"])
    );
    assert_eq!(call["answers"]["status"], "1");
    assert_eq!(call["answers"]["zone"], "2");

    let heard = read_wav(&decoded_dump(dir.path()));
    assert!(rms(&heard) > 500.0, "received audio is not silent");
    let greeting = prompt("greeting");
    let note = prompt("keys_hint");
    // Where the greeting starts in what baresip heard, then where the next prompt
    // starts: the gap is the greeting's length when nothing is lost or stretched.
    let (c1, start) = best_match(&greeting[..8000], &heard, 0..16_000);
    assert!(
        c1 > 0.9,
        "greeting recognised in the received audio (corr {c1:.3})"
    );
    let expected = start + greeting.len();
    let (c2, next) = best_match(
        &note[..8000],
        &heard,
        expected.saturating_sub(1600)..expected + 1600,
    );
    assert!(c2 > 0.9, "keys hint recognised (corr {c2:.3})");
    let drift_ms = (next as i64 - expected as i64).abs() / 8;
    assert!(
        drift_ms <= 100,
        "greeting played for its length ±100 ms (off by {drift_ms} ms)"
    );
    let (c3, _) = best_match(
        &greeting[greeting.len() - 8000..],
        &heard,
        start + greeting.len() - 8000 - 80..start + greeting.len() - 8000 + 80,
    );
    assert!(c3 > 0.9, "greeting intact to its end (corr {c3:.3})");
    println!("greeting: start corr {c1:.3}, end corr {c3:.3}, next prompt corr {c2:.3}, timing off by {drift_ms} ms");
    server.assert_no_panic();
}

fn hotline_call(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(args)
        .output()
        .expect("hotline call");
    assert!(
        out.status.success(),
        "hotline call failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary")
}

fn digits_arrive_once(mode: &str) {
    let server = Server::start(&[]);
    let keys = "1234567890*#11";
    let schedule: Vec<String> = keys
        .chars()
        .enumerate()
        .map(|(i, d)| format!("{d}@{:.1}", 1.0 + i as f64 * 0.4))
        .collect();
    let summary = hotline_call(
        &server,
        &[
            "--hangup-after",
            "8",
            "--dtmf-mode",
            mode,
            "--dtmf",
            &schedule.join(","),
        ],
    );
    assert_eq!(summary["digits_sent"], keys);
    let calls = server.wait_calls(Duration::from_secs(5), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    let call = &calls[0];
    assert_eq!(
        call["digits"], keys,
        "{mode}: every digit once, in order: {call}"
    );
    let source = if mode == "info" { "sipinfo" } else { mode };
    assert!(
        call["digit_sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == source),
        "{call}"
    );
    server.assert_no_panic();
}

#[test]
fn digits_by_rfc4733_arrive_once_in_order() {
    digits_arrive_once("rfc4733");
}

#[test]
fn digits_in_band_arrive_once_in_order() {
    digits_arrive_once("inband");
}

#[test]
fn digits_by_sip_info_arrive_once_in_order() {
    digits_arrive_once("info");
}

fn speech() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech_ru_festival.wav")
}

#[test]
fn recording_survives_kill_9_and_is_repaired_on_restart() {
    let mut server = Server::start(&[]);
    let rec_dir = server.data_dir().join("recordings");
    // Key 0 goes to the operator queue, which is not in service: straight to voicemail.
    let mut caller = Command::new(common::bin())
        .args([
            "call",
            &format!("sip:hotline@{}", server.udp),
            "--hangup-after",
            "60",
            "--dtmf",
            "0@0.5",
        ])
        .arg("--play")
        .arg(speech())
        .stdout(Stdio::null())
        .spawn()
        .expect("hotline call");
    let until = Instant::now() + Duration::from_secs(40);
    let wav = loop {
        if let Some(p) = wav_files(&rec_dir).into_iter().next() {
            break p;
        }
        assert!(Instant::now() < until, "a recording started");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(3300));
    let child = server.child.as_mut().expect("server running");
    child.kill().expect("kill -9");
    let _ = child.wait();
    server.child = None;
    let _ = caller.kill();
    let _ = caller.wait();
    // Restart on the same data: the header is repaired at start.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let restarted = Server::start_in(dir, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let reader = hound::WavReader::open(&wav).expect("hound opens the recording after the crash");
    let secs = reader.duration() as f64 / 8000.0;
    assert!(secs >= 2.0, "at least 2 s kept, got {secs:.2} s");
    println!("after kill -9 at ~3.3 s of recording: {secs:.2} s readable");
    let samples: Vec<i16> = reader.into_samples::<i16>().map(|s| s.unwrap()).collect();
    assert!(rms(&samples) > 300.0, "the caller's speech is in it");
    let calls = restarted.calls_json();
    assert_eq!(
        calls[0]["end_reason"], "interrupted",
        "the killed call is marked"
    );
    restarted.assert_no_panic();
}

#[test]
fn recorded_voicemail_is_the_audio_the_caller_sent() {
    let server = Server::start(&[]);
    let summary = hotline_call(
        &server,
        &[
            "--hangup-after",
            "30",
            "--dtmf",
            "0@0.5",
            "--play",
            &speech().display().to_string(),
        ],
    );
    assert_eq!(summary["answered"], true);
    let calls = server.wait_calls(Duration::from_secs(8), |c| {
        c.first()
            .is_some_and(|c| !c["recordings"].as_array().unwrap().is_empty())
    });
    let rec = &calls[0]["recordings"][0];
    assert_eq!(rec["kind"], "voicemail");
    let recorded = read_wav(Path::new(rec["path"].as_str().unwrap()));
    let sent = read_wav(&speech());
    assert!(recorded.len() > 8000 * 3, "several seconds recorded");
    // The caller's speech started at the answer; the recording after key 0 (0.5 s)
    // and the voicemail introduction (nobody is logged in, so no "connecting").
    // Take 2 s from the middle of the recording and find it in what was sent, near
    // where that timing puts it.
    let recording_starts = 4000 + prompt("voicemail_intro").len();
    let mid = (recorded.len() / 2).min(sent.len().saturating_sub(recording_starts + 16_000));
    let piece = &recorded[mid - 8000..mid + 8000];
    let expected = recording_starts + mid - 8000;
    let (corr, lag) = best_match(
        piece,
        &sent,
        expected.saturating_sub(12_000)..expected + 12_000,
    );
    assert!(
        corr > 0.9,
        "recording matches the sent audio after G.711 (corr {corr:.3} at {lag})"
    );
    println!("voicemail vs sent audio: correlation {corr:.3} at lag {lag} samples");
    let meta = std::fs::metadata(rec["path"].as_str().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "recordings are private"
    );
    server.assert_no_panic();
}
