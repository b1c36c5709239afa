//! The caller's path through the shipped flow, timed: `hotline check --paths`
//! against the flow as shipped, a slow flow refused by name, and an independent
//! phone (baresip) whose real timings must agree with what `--paths` computed.

mod common;

use common::{
    baresip_command, free_udp_port, read_wav, require_tool, sipp_register, Server, SippPhone,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `hotline check --paths --json` with extra options: (exit code, JSON, stderr).
fn paths(extra: &[&str]) -> (i32, Value, String) {
    let out = Command::new(common::bin())
        .args(["check", "--paths", "--json"])
        .args(extra)
        .output()
        .expect("hotline check");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn seconds(report: &Value, caller: &str, exit: &str) -> f64 {
    report["timings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["caller"] == caller && t["exit"] == exit)
        .unwrap_or_else(|| panic!("{caller} -> {exit} in {report:#}"))["seconds"]
        .as_f64()
        .unwrap()
}

#[test]
fn the_shipped_flow_meets_its_limits() {
    let (code, report, err) = paths(&[]);
    assert_eq!(code, 0, "{err}");
    let limit = report["limits"]["max_seconds_to_queue"].as_f64().unwrap();
    assert!(limit <= 60.0, "the limit itself stays at a minute or less");
    let nothing = seconds(&report, "presses_nothing", "queue");
    assert!(
        nothing <= limit,
        "press-nothing reaches the queue in {nothing} s"
    );
    let zero = seconds(&report, "presses_zero_at_once", "queue");
    assert!(zero <= 3.0, "0 at once reaches the queue in {zero} s");
    for caller in ["answers_every_question", "presses_wrong_keys"] {
        assert!(seconds(&report, caller, "queue") <= limit, "{caller}");
    }
    let vm_limit = report["limits"]["max_seconds_to_voicemail"]
        .as_f64()
        .unwrap();
    let worst_vm = report["worst"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["exit"] == "voicemail")
        .unwrap();
    assert!(
        worst_vm["seconds"].as_f64().unwrap() <= vm_limit,
        "{worst_vm}"
    );
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["notes"], serde_json::json!([]));
    // The text form names the same figures.
    let out = Command::new(common::bin())
        .args(["check", "--paths"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("presses nothing          {nothing:.1}")),
        "{text}"
    );
}

/// A flow whose first question waits 20 s for a key: `check` exits 2 and names
/// that question as the node that costs most.
#[test]
fn a_slow_flow_is_refused_naming_the_costly_node() {
    let dir = tempfile::tempdir().unwrap();
    let flow = std::fs::read_to_string(root().join("config/ivr.toml"))
        .unwrap()
        .replace(
            "store_as = \"status\"",
            "store_as = \"status\"\nfirst_digit_timeout = 20",
        );
    let path = dir.path().join("slow.toml");
    std::fs::write(&path, flow).unwrap();
    let set = format!("ivr.flow=\"{}\"", path.display());
    let (code, report, err) = paths(&["--set", &set]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("slow.toml: node \"situation\": a caller who presses nothing reaches the operator queue after")
            && err.contains("over [flow] max_seconds_to_queue = 60"),
        "{err}"
    );
    assert_eq!(
        report["problems"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );
    // Plain `check` refuses it too.
    let out = Command::new(common::bin())
        .args(["check", "--set", &set])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A baresip caller that dials the hotline and plays `seconds` of near-silence as
/// its voice (baresip stops sending RTP, and keys, when its source ends).
struct Phone {
    child: Child,
    dir: tempfile::TempDir,
    ctrl: u16,
}

impl Phone {
    fn dial(server: &Server, seconds: f64, dump: bool) -> Phone {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_wav(&d.join("src.wav"), seconds, |i| ((i * 7919) % 5) as i16 - 2);
        for f in ["play.wav", "alert.wav"] {
            write_wav(&d.join(f), 0.1, |_| 0);
        }
        let ctrl = free_udp_port();
        common::baresip_config(d, ctrl, dump);
        let child = Command::new("baresip")
            .args(["-f", &d.display().to_string()])
            .args(common::baresip_interface_args())
            .args([
                "-e",
                &format!("/dial sip:hotline@{}", server.udp),
                "-t",
                &format!("{}", seconds as u64 + 30),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("baresip.log")).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip");
        Phone { child, dir, ctrl }
    }

    /// What the phone heard (baresip's sndfile dump of the call).
    fn heard(&self) -> Vec<i16> {
        let snd = self.dir.path().join("snd");
        let file = std::fs::read_dir(&snd)
            .expect("snd dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .expect("baresip recorded what it heard");
        read_wav(&file)
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_wav(path: &Path, seconds: f64, sample: impl Fn(usize) -> i16) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    for i in 0..(seconds * 8000.0) as usize {
        w.write_sample(sample(i)).expect("sample");
    }
    w.finalize().expect("finalize");
}

/// Seconds since the Unix epoch of an RFC 3339 time stored by the hotline.
fn epoch(v: &Value) -> f64 {
    let text = v.as_str().unwrap_or_else(|| panic!("a time: {v}"));
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// A caller who presses nothing, with an operator logged in and free, joins the
/// queue when `--paths` says (within 2 s), measured from the stored answer time
/// to the stored "joined" queue event.
#[test]
fn a_caller_who_presses_nothing_joins_the_queue_when_paths_says() {
    if !require_tool("baresip") || !require_tool("sipp") {
        return;
    }
    let (_, report, _) = paths(&[]);
    let computed = seconds(&report, "presses_nothing", "queue");
    let server = Server::start(&[]);
    let anna = server.add_operator("Anna", "anna-secret-1");
    let phone_port = free_udp_port();
    // The operator's phone rings and is not answered: the caller stays queued.
    let _anna_phone = SippPhone::start("operator-noanswer.xml", phone_port, &[]);
    sipp_register(&server, &anna, "anna-secret-1", phone_port);
    server.wait_operator_state("Anna", "available", Duration::from_secs(10));

    let _phone = Phone::dial(&server, computed + 40.0, false);
    let calls = server.wait_calls(Duration::from_secs(computed as u64 + 30), |calls| {
        calls.iter().any(|c| {
            c["direction"] == "inbound"
                && c["queue"]["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["kind"] == "joined"))
        })
    });
    let call = calls
        .iter()
        .find(|c| c["direction"] == "inbound")
        .unwrap_or_else(|| panic!("no inbound call: {calls:#?}"));
    let joined = call["queue"]["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "joined"))
        .unwrap_or_else(|| {
            panic!(
                "the caller never joined the queue: {call:#}\n{}",
                server.log_text()
            )
        });
    let measured = epoch(&joined["at"]) - epoch(&call["answered_at"]);
    println!("press-nothing caller: joined the queue {measured:.2} s after the answer; --paths says {computed:.2} s");
    assert!(
        (measured - computed).abs() <= 2.0,
        "measured {measured:.2} s, computed {computed:.2} s"
    );
    assert_eq!(call["digits"], "", "the phone pressed nothing");
    let path: Vec<&str> = call["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(path, ["greeting", "situation", "operator_queue"]);
    server.assert_no_panic();
}

/// Seconds into `samples` where a `hz` tone starts (five 20 ms frames in a row
/// dominated by it).
fn tone_onset(samples: &[i16], hz: f64) -> Option<f64> {
    let tonal: Vec<bool> = samples
        .chunks_exact(160)
        .map(|frame| common::tone_frame(frame, hz, 300.0))
        .collect();
    tonal
        .windows(5)
        .position(|w| w.iter().all(|&t| t))
        .map(|i| i as f64 * 0.02)
}

/// A caller who presses 0 at once while nobody is logged in hears the voice
/// message's introduction, never "connecting", and the beep when `--paths` says.
#[test]
fn zero_with_nobody_logged_in_hears_the_beep_in_time_and_no_connecting() {
    if !require_tool("baresip") {
        return;
    }
    let (_, report, _) = paths(&[]);
    let computed = seconds(&report, "presses_zero_at_once", "voicemail");
    let server = Server::start(&[]);
    let phone = Phone::dial(&server, 45.0, true);
    server.wait_calls(Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["answered_at"].is_string())
    });
    baresip_command(phone.ctrl, "sndcode", "0");
    let rec_dir = server.data_dir().join("recordings");
    let until = Instant::now() + Duration::from_secs(40);
    while common::wav_files(&rec_dir).is_empty() {
        assert!(
            Instant::now() < until,
            "recording started:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    baresip_command(phone.ctrl, "hangup", "");
    std::thread::sleep(Duration::from_millis(500));
    let heard = phone.heard();

    let prompt = |id: &str| read_wav(&root().join(format!("prompts/ru/{id}.wav")));
    let intro = prompt("voicemail_intro");
    let piece = &intro[8000..8000 * 3];
    let (corr, lag) = common::best_match(piece, &heard, 0..heard.len().saturating_sub(piece.len()));
    assert!(corr > 0.9, "the introduction was heard (corr {corr:.3})");
    let intro_start = lag as f64 / 8000.0 - 1.0;
    let connecting = prompt("connecting");
    let (corr_connecting, _) = common::best_match(
        &connecting[..8000],
        &heard,
        0..heard.len().saturating_sub(8000),
    );
    assert!(
        corr_connecting < 0.5,
        "\"connecting\" must not be played (corr {corr_connecting:.3})"
    );
    let beep = tone_onset(&heard, 1000.0).expect("the beep was heard");
    // 0 takes effect when the introduction starts (nobody logged in: nothing
    // comes between); --paths counts from a 0 pressed at the answer.
    let measured = beep - intro_start;
    println!(
        "0 with nobody logged in: introduction at {intro_start:.2} s (corr {corr:.3}), beep at {beep:.2} s of the call: {measured:.2} s after the key; --paths says {computed:.2} s; \"connecting\" corr {corr_connecting:.3}"
    );
    assert!(
        measured <= computed + 0.5 && measured >= computed - 2.0,
        "beep {measured:.2} s after the key, computed {computed:.2} s"
    );
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    let call = &calls[0];
    assert_eq!(
        call["queue"]["outcome"], "voicemail:no_operators",
        "{call:#}"
    );
    let path: Vec<&str> = call["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        path[..4],
        ["greeting", "situation", "operator_queue", "voicemail"]
    );
    server.assert_no_panic();
}

/// The reference code a caller hears finds their call; a code with one wrong
/// digit, or two neighbours swapped, is refused as invalid instead of finding
/// nothing or another call.
#[test]
fn a_reference_code_finds_its_call_and_a_slip_is_refused() {
    let server = Server::start(&[]);
    let out = Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(["--hangup-after", "2"])
        .output()
        .expect("hotline call");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["reference"].is_string())
    });
    let code = calls[0]["reference"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 7);
    assert!(hotline::reference::is_valid(&code));
    let lookup = |code: &str| server.cli(&["calls", "--reference", code, "--json"]);
    let found = lookup(&code);
    assert!(found.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], calls[0]["id"]);
    let spaced = format!("{} {}", &code[..3], &code[3..]);
    assert!(lookup(&spaced).status.success(), "grouped digits are fine");

    let mut typo = code.clone().into_bytes();
    typo[2] = if typo[2] == b'9' { b'0' } else { typo[2] + 1 };
    let typo = String::from_utf8(typo).unwrap();
    let out = lookup(&typo);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a valid reference code: the check digit does not match"),
        "{err}"
    );
    let b = code.as_bytes();
    if let Some(i) = (0..6).find(|&i| b[i] != b[i + 1]) {
        let mut swapped = b.to_vec();
        swapped.swap(i, i + 1);
        let out = lookup(std::str::from_utf8(&swapped).unwrap());
        assert_eq!(out.status.code(), Some(2), "a swap is caught");
    }
    // A valid code no call has: found nothing, said so.
    let other = (0..1_000_000)
        .map(hotline::reference::code_for)
        .find(|c| *c != code)
        .unwrap();
    let out = lookup(&other);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no call has reference"));
    assert_eq!(lookup("12ab").status.code(), Some(2));
    server.assert_no_panic();
}
