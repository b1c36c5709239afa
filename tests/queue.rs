//! Operators and the queue end to end against the real binary: independent phones
//! (baresip, SIPp) register as operators with digest authentication and take queued
//! callers placed with `hotline call`; announcements, ring timeouts, misses, wrap-up,
//! bridging, conversation recordings and every way to voicemail are checked in the
//! database and in what each side heard.

mod common;

use common::{
    baresip_command, free_udp_port, read_wav, require_tool, rms, sipp_register, spawn_baresip,
    tone_seconds, write_tone, Server, SippPhone,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One question (zone, answered with 1 or 2), then the queue; voicemail when the
/// queue gives up. Short prompts so the tests spend their time in the queue.
fn queue_flow(dir: &Path) -> String {
    let flow = r##"
[flow]
start = "zone"
first_digit_timeout = 5
inter_digit_timeout = 3
total_timeout = 20
retries = 1
invalid_prompt = "invalid_key"
timeout_prompt = "no_input"
fallback = "operator_queue"

[nodes.zone]
type = "menu"
prompts = ["language_note"]
options = { "1" = "operator_queue", "2" = "operator_queue" }
store_as = "zone"

[nodes.operator_queue]
type = "queue"
prompts = ["beep"]
fallback = "voicemail"

[nodes.voicemail]
type = "record"
prompts = ["language_note"]
beep = true
max_seconds = 5
silence_seconds = 3
finish_keys = "#"
confirm_prompt = "message_saved"
failure_prompt = "message_not_saved"
next = "goodbye"
fallback = "goodbye"

[nodes.goodbye]
type = "hangup"
prompts = ["goodbye"]
"##;
    let path = dir.join("ivr-queue.toml");
    std::fs::write(&path, flow).expect("write flow");
    format!("ivr.flow=\"{}\"", path.display())
}

fn start_server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = queue_flow(dir.path());
    let mut args = vec![
        flow.as_str(),
        "privacy.caller_id=keep",
        "rtp.ports=\"30000-30999\"",
        "limits.max_calls=100",
    ];
    args.extend_from_slice(extra);
    Server::start_in(dir, &args)
}

fn operator_state(server: &Server, name: &str) -> Option<String> {
    server
        .operator_entry(name)
        .and_then(|o| o["state"].as_str().map(str::to_string))
}

fn set_state(server: &Server, name: &str, state: &str) {
    let out = server.cli(&["operator", "state", name, state]);
    assert!(
        out.status.success(),
        "operator state: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A caller: `hotline call` playing speech, recording what it hears.
struct Caller {
    child: Child,
}

impl Caller {
    fn dial(server: &Server, dir: &Path, tag: &str, dtmf: &str, hangup_after: u32) -> Caller {
        let heard = dir.join(format!("{tag}-heard.wav"));
        let child = Command::new(common::bin())
            .arg("call")
            .arg(format!("sip:hotline@{}", server.udp))
            .args(["--dtmf", dtmf])
            .args(["--hangup-after", &hangup_after.to_string()])
            .arg("--play")
            .arg(root().join("tests/data/speech_ru_festival.wav"))
            .arg("--record")
            .arg(&heard)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("hotline call");
        Caller { child }
    }

    fn finish(self, timeout: Duration) -> Value {
        let mut child = self.child;
        let until = Instant::now() + timeout;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                panic!("caller did not finish");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().expect("caller output");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("summary: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// An operator's softphone: baresip registering with digest auth, answering at once,
/// sending a steady tone as its voice and recording what it hears.
struct Operator {
    child: Child,
    dir: tempfile::TempDir,
    ctrl: u16,
}

const OPERATOR_TONE_HZ: f64 = 1777.0;

impl Operator {
    fn start(server: &Server, user: &str, password: &str) -> Operator {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        let tone = p.join("src.wav");
        write_tone(&tone, OPERATOR_TONE_HZ, 90.0);
        for f in ["play.wav", "alert.wav"] {
            write_tone(&p.join(f), 440.0, 0.1);
        }
        std::fs::create_dir_all(p.join("snd")).expect("snd");
        let ctrl = free_udp_port();
        let sip = free_udp_port();
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip}\naudio_player aufile,{d}/play.wav\naudio_source aufile,{d}/src.wav\naudio_alert aufile,{d}/alert.wav\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule sndfile.so\nsnd_path {d}/snd\nmodule_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl}\n",
            d = p.display()
        );
        std::fs::write(p.join("config"), config).expect("config");
        std::fs::write(
            p.join("accounts"),
            format!(
                "<sip:{user}@{}>;auth_pass={password};regint=600;answermode=auto\n",
                server.udp
            ),
        )
        .expect("accounts");
        let child = spawn_baresip(p, &[]);
        Operator { child, dir, ctrl }
    }

    fn hang_up(&self) {
        baresip_command(self.ctrl, "hangup", "");
    }

    /// Every WAV baresip wrote of what it heard (one per call).
    fn heard(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("snd"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|f| f.to_string_lossy().ends_with("-dec.wav"));
        files.sort();
        files
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both channels of a stereo WAV.
fn read_stereo(path: &Path) -> (Vec<i16>, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(r.spec().channels, 2, "{} is not stereo", path.display());
    let all: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    let left = all.iter().step_by(2).copied().collect();
    let right = all.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

fn inbound(calls: &[Value]) -> Vec<Value> {
    let mut v: Vec<Value> = calls
        .iter()
        .filter(|c| c["direction"] == "inbound")
        .cloned()
        .collect();
    v.sort_by_key(|c| c["id"].as_i64());
    v
}

fn events<'a>(call: &'a Value, kind: &str) -> Vec<&'a Value> {
    call["queue"]["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["kind"] == kind).collect())
        .unwrap_or_default()
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (the tests run within
/// minutes; differences across midnight are not expected).
fn at(v: &Value) -> f64 {
    let s = v.as_str().expect("timestamp");
    let clock = s
        .split('T')
        .nth(1)
        .expect("time part")
        .trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let sec: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + sec
}

/// The acceptance walk: two operators, three callers.
#[test]
fn operators_take_queued_callers_in_turn() {
    if !require_tool("baresip") {
        return;
    }
    let server = start_server(&[
        "queue.ring_timeout_s=10",
        "queue.wrap_up_s=2",
        "queue.announce_interval_s=30",
        "queue.announce_min_interval_s=1",
    ]);
    let anna = server.add_operator("Anna", "anna-secret-1");
    let boris = server.add_operator("Boris", "boris-secret-2");
    let op_a = Operator::start(&server, &anna, "anna-secret-1");
    server.wait_operator_state("Anna", "available", Duration::from_secs(10));
    // Boris registers later, so Anna has been idle longest.
    std::thread::sleep(Duration::from_millis(300));
    let op_b = Operator::start(&server, &boris, "boris-secret-2");
    server.wait_operator_state("Boris", "available", Duration::from_secs(10));
    let view = server.queue_view();
    assert!(
        view["operators"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["contacts"] == 1),
        "{view}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let c1 = Caller::dial(&server, dir.path(), "c1", "1@0.5", 60);
    server.wait_operator_state("Anna", "on_call", Duration::from_secs(15));
    assert_eq!(
        operator_state(&server, "Boris").as_deref(),
        Some("available")
    );

    // Boris pauses: the next two callers wait and hear where they stand.
    set_state(&server, "Boris", "paused");
    server.wait_operator_state("Boris", "paused", Duration::from_secs(2));
    let c2 = Caller::dial(&server, dir.path(), "c2", "2@0.5", 60);
    std::thread::sleep(Duration::from_millis(700));
    let c3 = Caller::dial(&server, dir.path(), "c3", "1@0.5", 60);
    let until = Instant::now() + Duration::from_secs(15);
    while server.queue_view()["callers"]
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        assert!(Instant::now() < until, "callers 2 and 3 never queued");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Long enough for both announcements to be heard.
    std::thread::sleep(Duration::from_secs(4));

    set_state(&server, "Boris", "available");
    server.wait_operator_state("Boris", "on_call", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));

    // Anna ends her conversation; after wrap-up she gets caller 3.
    op_a.hang_up();
    server.wait_operator_state("Anna", "wrap_up", Duration::from_secs(5));
    server.wait_operator_state("Anna", "on_call", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    op_a.hang_up();
    op_b.hang_up();

    let s1 = c1.finish(Duration::from_secs(15));
    let s2 = c2.finish(Duration::from_secs(15));
    let s3 = c3.finish(Duration::from_secs(15));
    for s in [&s1, &s2, &s3] {
        assert_eq!(s["answered"], true, "{s}");
        assert_eq!(
            s["end_reason"], "caller-bye",
            "the hotline (the peer) hung up after the operator: {s}"
        );
    }

    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        let ins = inbound(c);
        ins.len() == 3
            && ins.iter().all(|c| {
                c["queue"]["talk_ms"].is_i64()
                    && c["recordings"].as_array().is_some_and(|r| !r.is_empty())
            })
    });
    let ins = inbound(&calls);
    assert_eq!(ins.len(), 3, "{calls:#?}");
    let (q1, q2, q3) = (&ins[0], &ins[1], &ins[2]);

    // Caller 1 went to the longest-idle operator, Anna, first.
    let offered = events(q1, "offered");
    assert_eq!(offered[0]["operator"], "Anna", "{q1:#}");
    assert_eq!(q1["queue"]["operator"], "Anna", "{q1:#}");
    assert_eq!(q1["queue"]["outcome"], "answered");
    assert_eq!(q1["answers"]["zone"], "1");

    // Callers 2 and 3 heard their positions.
    let pos2: Vec<i64> = events(q2, "position_announced")
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    let pos3: Vec<i64> = events(q3, "position_announced")
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(pos2.first(), Some(&1), "{q2:#}");
    assert_eq!(pos3.first(), Some(&2), "{q3:#}");
    assert!(pos3.contains(&1), "caller 3 hears the improvement: {q3:#}");
    assert_eq!(q2["queue"]["operator"], "Boris", "{q2:#}");
    assert_eq!(q3["queue"]["operator"], "Anna", "{q3:#}");

    // Caller 3 was offered only after caller 1's conversation and Anna's wrap-up.
    let c1_end = at(&q1["ended_at"]);
    let c3_offer = at(&events(q3, "offered")[0]["at"]);
    let gap = c3_offer - c1_end;
    assert!(
        (1.8..5.0).contains(&gap),
        "offer {gap:.2} s after the hang-up"
    );

    // Audio went both ways: each caller heard its operator's tone; each operator
    // heard speech; the stereo recording holds both voices.
    for (tag, c) in [("c1", &q1), ("c2", &q2), ("c3", &q3)] {
        let heard = read_wav(&dir.path().join(format!("{tag}-heard.wav")));
        let secs = tone_seconds(&heard, OPERATOR_TONE_HZ);
        assert!(secs > 2.0, "{tag} heard the operator for {secs:.2} s");
        let rec = c["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "conversation")
            .unwrap_or_else(|| panic!("{tag}: no conversation recording: {c:#}"));
        let (left, right) = read_stereo(Path::new(rec["path"].as_str().unwrap()));
        assert!(
            rms(&left) > 300.0,
            "{tag}: caller channel silent ({:.0})",
            rms(&left)
        );
        let tone = tone_seconds(&right, OPERATOR_TONE_HZ);
        assert!(
            tone > 2.0,
            "{tag}: operator channel holds {tone:.2} s of the operator"
        );
        assert!(
            tone_seconds(&left, OPERATOR_TONE_HZ) < 0.2,
            "{tag}: the operator leaks into the caller channel"
        );
    }
    let heard_a = op_a.heard();
    let heard_b = op_b.heard();
    assert_eq!(heard_a.len(), 2, "Anna took two calls: {heard_a:?}");
    assert_eq!(heard_b.len(), 1, "Boris took one call: {heard_b:?}");
    for f in heard_a.iter().chain(&heard_b) {
        let s = read_wav(f);
        assert!(
            rms(&s) > 300.0,
            "{} is silent ({:.0})",
            f.display(),
            rms(&s)
        );
    }
    server.assert_no_panic();
}

/// An operator who lets the phone ring: the caller moves on to the next operator,
/// and after `max_misses` unanswered offers the operator is paused.
#[test]
fn unanswered_offers_move_on_and_pause_the_operator() {
    if !require_tool("sipp") {
        return;
    }
    let server = start_server(&[
        "queue.ring_timeout_s=2",
        "queue.max_misses=2",
        "queue.wrap_up_s=1",
        "queue.announce_interval_s=0",
    ]);
    let nora = server.add_operator("Nora", "nora-secret-1");
    let anna = server.add_operator("Anna", "anna-secret-1");
    let nora_port = free_udp_port();
    let anna_port = free_udp_port();
    let _nora_phone = SippPhone::start("operator-noanswer.xml", nora_port, &[]);
    let _anna_phone = SippPhone::start(
        "operator-answer.xml",
        anna_port,
        &["-d", "300", "-rtp_echo"],
    );
    sipp_register(&server, &nora, "nora-secret-1", nora_port);
    std::thread::sleep(Duration::from_millis(300));
    sipp_register(&server, &anna, "anna-secret-1", anna_port);
    server.wait_operator_state("Anna", "available", Duration::from_secs(5));

    let dir = tempfile::tempdir().expect("tempdir");
    // Caller 1: Nora (idle longest) does not answer; Anna does.
    let c1 = Caller::dial(&server, dir.path(), "c1", "1@0.5", 12);
    server.wait_operator_state("Anna", "on_call", Duration::from_secs(15));
    // Caller 2 arrives while Anna talks: Nora misses again and is paused.
    let c2 = Caller::dial(&server, dir.path(), "c2", "1@0.5", 14);
    server.wait_operator_state("Nora", "paused", Duration::from_secs(15));
    let s1 = c1.finish(Duration::from_secs(20));
    let s2 = c2.finish(Duration::from_secs(20));
    assert_eq!(s1["answered"], true);
    assert_eq!(s2["answered"], true);

    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        let ins = inbound(c);
        ins.len() == 2 && ins.iter().all(|c| c["ended_at"].is_string())
    });
    let ins = inbound(&calls);
    let (q1, q2) = (&ins[0], &ins[1]);
    let offered1: Vec<&Value> = events(q1, "offered")
        .iter()
        .map(|e| &e["operator"])
        .collect();
    assert_eq!(offered1, vec!["Nora", "Anna"], "{q1:#}");
    let missed1 = events(q1, "offer_missed");
    assert_eq!(missed1.len(), 1, "{q1:#}");
    assert_eq!(missed1[0]["reason"], "timeout");
    assert_eq!(q1["queue"]["operator"], "Anna");
    let missed2 = events(q2, "offer_missed");
    assert_eq!(missed2[0]["operator"], "Nora", "{q2:#}");
    // The ring timeout is honoured: the miss comes 2 s after the offer.
    let ring = at(&missed2[0]["at"]) - at(&events(q2, "offered")[0]["at"]);
    assert!((1.9..3.0).contains(&ring), "rang {ring:.2} s");
    // Caller 2 is served by Anna after her wrap-up, never by the paused Nora again.
    assert_eq!(q2["queue"]["operator"], "Anna", "{q2:#}");
    assert!(
        events(q2, "offered")
            .iter()
            .filter(|e| e["operator"] == "Nora")
            .count()
            == 1
    );
    // The CANCELs reached the phone and the calls to it ended as cancelled.
    let nora_legs: Vec<&Value> = calls
        .iter()
        .filter(|c| c["direction"] == "outbound" && c["to"] == format!("operator:{nora}"))
        .collect();
    assert_eq!(nora_legs.len(), 2, "{calls:#?}");
    let log = server.log_text();
    assert!(log.contains("operator paused after missed calls"), "{log}");
    server.assert_no_panic();
}

/// Nobody logged in, maximum wait, and the voicemail key all lead to a message.
#[test]
fn queue_overflows_to_voicemail() {
    if !require_tool("sipp") {
        return;
    }
    let server = start_server(&[
        "queue.max_wait_s=3",
        "queue.announce_interval_s=0",
        "queue.voicemail_key=\"1\"",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");

    // Nobody registered yet.
    let c = Caller::dial(&server, dir.path(), "nobody", "1@0.5", 9);
    c.finish(Duration::from_secs(20));

    // One operator registered but paused: the caller waits, then gives up waiting.
    let anna = server.add_operator("Anna", "anna-secret-1");
    sipp_register(&server, &anna, "anna-secret-1", free_udp_port());
    server.wait_operator_state("Anna", "available", Duration::from_secs(5));
    set_state(&server, "Anna", "paused");
    let c = Caller::dial(&server, dir.path(), "maxwait", "1@0.5", 11);
    c.finish(Duration::from_secs(20));

    // The caller presses the voicemail key while waiting.
    let c = Caller::dial(&server, dir.path(), "key", "1@0.5,1@2.5", 9);
    c.finish(Duration::from_secs(20));

    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        let ins = inbound(c);
        ins.len() == 3
            && ins
                .iter()
                .all(|c| !c["recordings"].as_array().unwrap().is_empty())
    });
    let ins = inbound(&calls);
    assert_eq!(ins.len(), 3, "{calls:#?}");
    let expect = [
        ("voicemail:no_operators", 0.0, 1.0),
        ("voicemail:max_wait", 2.9, 3.6),
        ("voicemail:caller_choice", 0.5, 2.9),
    ];
    for (call, (outcome, min_wait, max_wait)) in ins.iter().zip(expect) {
        assert_eq!(call["queue"]["outcome"], outcome, "{call:#}");
        let kinds: Vec<&str> = call["queue"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        // With nobody logged in the caller never joins: straight to voicemail.
        let expected = if outcome == "voicemail:no_operators" {
            vec!["overflowed"]
        } else {
            vec!["joined", "overflowed"]
        };
        assert_eq!(kinds, expected, "{call:#}");
        let waited = call["queue"]["waited_ms"].as_f64().unwrap() / 1000.0;
        assert!(
            (min_wait..max_wait).contains(&waited),
            "{outcome}: waited {waited:.2} s"
        );
        assert!(call["queue"]["operator"].is_null());
        let rec = &call["recordings"][0];
        assert_eq!(rec["kind"], "voicemail", "{call:#}");
        assert!(rec["duration_ms"].as_i64().unwrap() > 1000, "{call:#}");
        assert!(call["path"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "voicemail"));
    }
    server.assert_no_panic();
}

/// A caller who hangs up while waiting is recorded as abandoned with the wait time;
/// the operator's phone shows the caller's answers.
#[test]
fn abandoned_caller_and_offer_headers() {
    if !require_tool("sipp") {
        return;
    }
    let server = start_server(&["queue.ring_timeout_s=30", "queue.announce_interval_s=0"]);
    let anna = server.add_operator("Anna", "anna-secret-1");
    let port = free_udp_port();
    let trace_dir = tempfile::tempdir().expect("tempdir");
    let mut phone = Command::new("sipp")
        .args([
            "-sf",
            root()
                .join("tests/sipp/operator-noanswer.xml")
                .to_str()
                .unwrap(),
        ])
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-nostdin",
            "-trace_msg",
        ])
        .current_dir(trace_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp");
    sipp_register(&server, &anna, "anna-secret-1", port);
    server.wait_operator_state("Anna", "available", Duration::from_secs(5));

    let dir = tempfile::tempdir().expect("tempdir");
    let c = Caller::dial(&server, dir.path(), "gone", "2@0.5", 5);
    server.wait_operator_state("Anna", "ringing", Duration::from_secs(10));
    c.finish(Duration::from_secs(15));
    // The caller left: the ringing phone is cancelled and Anna is free again.
    server.wait_operator_state("Anna", "available", Duration::from_secs(5));
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        inbound(c)
            .first()
            .is_some_and(|c| c["queue"]["outcome"] == "abandoned")
    });
    let q = &inbound(&calls)[0];
    assert_eq!(q["queue"]["outcome"], "abandoned", "{q:#}");
    let waited = q["queue"]["waited_ms"].as_i64().unwrap();
    assert!((1000..5000).contains(&waited), "waited {waited} ms");
    assert_eq!(events(q, "abandoned").len(), 1);

    let _ = phone.kill();
    let _ = phone.wait();
    let trace = std::fs::read_dir(trace_dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with("_messages.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("sipp message trace");
    assert!(trace.contains("X-Hotline-Answers: zone=2"), "{trace}");
    let reference = q["reference"].as_str().expect("reference code");
    assert!(
        trace.contains(&format!("From: \"zone=2 ref {reference}\" <sip:hotline@")),
        "{trace}"
    );
    assert!(trace.contains("CANCEL sip:"), "{trace}");

    // Removing the account ends its registration at once.
    let out = server.cli(&["operator", "remove", "Anna"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The name is gone with the account; the SIP user shows offline.
    server.wait_operator_state(&anna, "offline", Duration::from_secs(3));
    server.assert_no_panic();
}
