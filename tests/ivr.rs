//! The default call flow end to end against the real binary: an independent
//! softphone (baresip) walks it and leaves a message; `hotline call` takes the wrong
//! key, no key, key 0 mid-menu and hangs up at every stage; `hotline check` refuses
//! broken flows and prompts.

mod common;

use common::{best_match, read_wav, require_tool, wav_files, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

use common::quick_flow;

fn server_with_quick_flow(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = quick_flow(dir.path());
    let mut args = vec![flow.as_str()];
    args.extend_from_slice(extra);
    Server::start_in(dir, &args)
}

fn call(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(args)
        .output()
        .expect("hotline call");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("summary: {}", String::from_utf8_lossy(&out.stdout)))
}

fn last_call(server: &Server, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let calls = server.wait_calls(Duration::from_secs(10), |c| c.first().is_some_and(&until));
    calls.into_iter().next().expect("a call row")
}

fn path_of(call: &serde_json::Value) -> Vec<String> {
    call["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn hang_up_during_a_prompt_and_during_a_menu() {
    let server = server_with_quick_flow(&[]);
    call(&server, &["--hangup-after", "1"]);
    let c = last_call(&server, |c| c["end_reason"].is_string());
    assert_eq!(path_of(&c), ["greeting"]);
    assert_eq!(c["end_reason"], "caller-bye");

    call(&server, &["--hangup-after", "4", "--dtmf", "1@1.0"]);
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.len() == 2 && c[0]["end_reason"].is_string()
    });
    let c = &calls[0];
    assert_eq!(path_of(c), ["greeting", "situation", "zone"]);
    assert_eq!(c["answers"]["status"], "1");
    assert_eq!(c["end_reason"], "caller-bye");
    server.assert_no_panic();
}

fn speech() -> PathBuf {
    root().join("tests/data/speech_ru_festival.wav")
}

#[test]
fn hang_up_during_recording_keeps_a_partial_message() {
    let server = server_with_quick_flow(&[]);
    // 0 -> queue (nobody logged in: no "connecting") -> voicemail intro (15 s) -> beep -> record.
    call(
        &server,
        &[
            "--hangup-after",
            "26",
            "--dtmf",
            "0@0.5",
            "--play",
            &speech().display().to_string(),
        ],
    );
    let c = last_call(&server, |c| {
        c["end_reason"].is_string() && !c["recordings"].as_array().unwrap().is_empty()
    });
    let rec = &c["recordings"][0];
    assert_eq!(rec["kind"], "voicemail");
    assert_eq!(rec["partial"], true, "{rec}");
    assert!(rec["duration_ms"].as_i64().unwrap() > 1000, "{rec}");
    assert!(Path::new(rec["path"].as_str().unwrap()).exists());
    server.assert_no_panic();
}

/// baresip, an independent SIP phone, walks the default flow: answers the questions
/// with its keypad, leaves a 5 s message ended with #, hears it confirmed, and the
/// hotline hangs up after the goodbye.
#[test]
fn baresip_walks_the_default_flow_and_leaves_a_5_second_message() {
    if !require_tool("baresip") {
        return;
    }
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The phone's voice: the speech sample twice over (baresip stops sending audio,
    // and with it DTMF, at the end of its source file).
    let speech_samples = read_wav(&speech());
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
    for s in speech_samples.iter().chain(speech_samples.iter()) {
        w.write_sample(*s).expect("write");
    }
    w.finalize().expect("finalize");
    let ctrl = common::free_udp_port();
    common::baresip_config(d, ctrl, false);
    let mut phone = Command::new("baresip")
        .args(["-f", &d.display().to_string()])
        .args(common::baresip_interface_args())
        .args([
            "-e",
            &format!("/dial sip:hotline@{}", server.udp),
            "-t",
            "120",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(d.join("baresip.log")).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip");
    let key = |k: &str| common::baresip_command(ctrl, "sndcode", k);
    // Keys typed during the greeting answer the questions in turn (type-ahead).
    std::thread::sleep(Duration::from_secs(4));
    for k in ["1", "2", "#"] {
        key(k);
        std::thread::sleep(Duration::from_millis(600));
    }
    let rec_dir = server.data_dir().join("recordings");
    let until = Instant::now() + Duration::from_secs(60);
    while wav_files(&rec_dir).is_empty() {
        assert!(Instant::now() < until, "recording started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(5000));
    key("#");
    // "Saved", the reference code twice, goodbye: then the hotline hangs up.
    let calls = server.wait_calls(Duration::from_secs(90), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    let _ = phone.kill();
    let _ = phone.wait();
    let c = calls.into_iter().next().expect("call row");
    assert_eq!(c["answers"]["status"], "1", "{c}");
    assert_eq!(c["answers"]["zone"], "2");
    assert_eq!(c["answers"]["unit"], "");
    let path = path_of(&c);
    for node in [
        "greeting",
        "situation",
        "zone",
        "unit",
        "operator_queue",
        "voicemail",
        "reference",
        "goodbye",
    ] {
        assert!(path.contains(&node.to_string()), "{node} in {path:?}");
    }
    assert_eq!(
        c["end_reason"], "our-bye",
        "the hotline said goodbye and hung up"
    );
    assert!(c["reference"]
        .as_str()
        .is_some_and(hotline::reference::is_valid));
    let rec = &c["recordings"][0];
    let ms = rec["duration_ms"].as_i64().unwrap();
    assert!(
        (4500..=5500).contains(&ms),
        "5 s ± 0.5 s message, got {ms} ms"
    );
    assert_eq!(rec["partial"], false);
    let recorded = read_wav(Path::new(rec["path"].as_str().unwrap()));
    let sent: Vec<i16> = speech_samples
        .iter()
        .chain(speech_samples.iter())
        .copied()
        .collect();
    let piece = &recorded[8000..24_000];
    let (corr, lag) = best_match(piece, &sent, 8000 * 15..8000 * 45);
    println!(
        "message {ms} ms; matches the phone's audio with correlation {corr:.3} at {:.2} s",
        lag as f64 / 8000.0
    );
    assert!(
        corr > 0.9,
        "the message is the phone's audio (corr {corr:.3})"
    );
    server.assert_no_panic();
}

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(common::bin())
        .arg("check")
        .args(args)
        .output()
        .expect("hotline check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_accepts_the_shipped_flow_and_refuses_broken_ones() {
    let (code, err) = check(&[]);
    assert_eq!(code, 0, "{err}");
    let flow = std::fs::read_to_string(root().join("config/ivr.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken: &[(&str, String, &str)] = &[
        ("unknown target", flow.replace(r#""1" = "zone", "2" = "zone""#, r#""1" = "nowhere", "2" = "zone""#), "situation"),
        ("unreachable node", format!("{flow}\n[nodes.orphan]\ntype = \"hangup\"\nprompts = [\"goodbye\"]\n"), "orphan"),
        ("missing prompt", flow.replace(r#"prompts = ["zone_menu"]"#, r#"prompts = ["no_such_prompt"]"#), "zone"),
        (
            "menu without a way out",
            flow.replace("fallback = \"operator_queue\"\n", "").replace(r#"options = { "1" = "unit", "2" = "unit" }"#, "options = {}"),
            "zone",
        ),
        (
            "loop with no input",
            format!("{flow}\n[nodes.spin]\ntype = \"play\"\nprompts = [\"goodbye\"]\nnext = \"spin2\"\n[nodes.spin2]\ntype = \"goto\"\nnext = \"spin\"\n")
                .replace(r#"options = { "1" = "unit", "2" = "unit" }"#, r#"options = { "1" = "unit", "2" = "unit", "3" = "spin" }"#),
            "spin",
        ),
        ("duplicate digit", flow.replace(r#"options = { "1" = "unit", "2" = "unit" }"#, r#"options = { "1" = "unit", "0" = "unit" }"#), "zone"),
        ("bad option key", flow.replace(r#"options = { "1" = "unit", "2" = "unit" }"#, r#"options = { "12" = "unit", "2" = "unit" }"#), "zone"),
    ];
    for (what, text, node) in broken {
        let path = dir.path().join("flow.toml");
        std::fs::write(&path, text).unwrap();
        let (code, err) = check(&["--set", &format!("ivr.flow=\"{}\"", path.display())]);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(
            err.contains(&format!("node \"{node}\"")),
            "{what}: should name node {node}: {err}"
        );
        assert!(err.contains("flow.toml"), "{what}: names the file: {err}");
    }
    // A broken prompt recording: empty file.
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    for e in std::fs::read_dir(root().join("prompts/ru"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), prompts.join(e.file_name())).unwrap();
    }
    std::fs::write(prompts.join("zone_menu.wav"), b"").unwrap();
    let (code, err) = check(&["--set", &format!("prompts.dir=\"{}\"", prompts.display())]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("zone_menu.wav"),
        "names the broken prompt: {err}"
    );
    // And serve refuses to start on it.
    let out = Command::new(common::bin())
        .args([
            "serve",
            "--set",
            &format!("prompts.dir=\"{}\"", prompts.display()),
            "--set",
            r#"sip.listen=["udp:127.0.0.1:0"]"#,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
