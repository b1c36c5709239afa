//! Sealed storage against the real binary: calls from `hotline call`, decryption by
//! the standard `age` command (Debian's, an independent implementation), keys made by
//! `hotline keys generate` and by `age-keygen`.
//!
//! What is checked is what a seized disk gives away: no file under the data
//! directory holds the caller's answer, number or a WAV header, while the holder of
//! the offline identity gets everything back.

mod common;
mod webclient;

use common::{best_match_anywhere, quick_flow, require_tool, Server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSPHRASE: &str = "a long passphrase only the lead knows";
const CALLER: &str = "+380671112233";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `hotline ARGS` with the server's configuration, `input` on stdin.
fn cli_input(server: &Server, args: &[&str], input: &str) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.args(args);
    for o in &server.overrides {
        cmd.arg("--set").arg(o);
    }
    run_with_input(cmd, input)
}

fn run_with_input(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hotline");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A passphrase-protected identity from `hotline keys generate`; returns its recipient.
fn hotline_key(path: &Path) -> String {
    let mut cmd = Command::new(common::bin());
    cmd.args(["keys", "generate", "--out"]).arg(path);
    let out = run_with_input(cmd, &format!("{PASSPHRASE}\n"));
    assert!(out.status.success(), "keys generate: {}", text(&out));
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(recipient.starts_with("age1"), "{}", text(&out));
    recipient
}

/// A plain identity from `age-keygen`; returns its recipient.
fn age_keygen(path: &Path) -> String {
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .expect("age-keygen");
    assert!(out.status.success(), "age-keygen: {}", text(&out));
    let key = std::fs::read_to_string(path).unwrap();
    key.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string()
}

/// `age -d -i IDENTITY FILE` with the Debian `age` command.
fn age_decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
        .expect("age");
    assert!(out.status.success(), "age -d: {}", text(&out));
    out.stdout
}

/// `age -d` with a passphrase-protected identity: age asks for the passphrase on its
/// terminal only, so it gets one (`script` runs it on a pseudo-terminal and types).
fn age_decrypt_with_passphrase(identity: Option<&Path>, file: &Path, out: &Path) {
    let identity = identity
        .map(|i| format!("-i '{}'", i.display()))
        .unwrap_or_default();
    let command = format!(
        "age -d {identity} -o '{}' '{}'",
        out.display(),
        file.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"]);
    let o = run_with_input(cmd, &format!("{PASSPHRASE}\n"));
    assert!(o.status.success(), "age -d via a terminal: {}", text(&o));
}

fn need_age() -> bool {
    require_tool("age") && require_tool("age-keygen") && require_tool("script")
}

fn wav_samples(bytes: &[u8]) -> Vec<i16> {
    let r = hound::WavReader::new(bytes).expect("a WAV");
    assert_eq!(r.spec().sample_rate, 8000);
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// The caller's voice: the speech sample twice (60 s), in `dir`.
fn long_speech(dir: &Path) -> (PathBuf, Vec<i16>) {
    let one = common::read_wav(&root().join("tests/data/speech_ru_festival.wav"));
    let all: Vec<i16> = one.iter().chain(one.iter()).copied().collect();
    let path = dir.join("caller.wav");
    let mut w = hound::WavWriter::create(
        &path,
        hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .unwrap();
    for s in &all {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
    (path, all)
}

/// Every regular file below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                pending.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn positions(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Occurrences of the digits `12345` that are not parts of values that are clear by
/// design and happen to contain them: a long hex token (SHA-256, keyed hash, random
/// file name), the fraction of a timestamp, or the call's 6-digit reference code.
/// An answer stored in clear sits next to other columns ("unit12345" + a date) and
/// matches none of these.
fn unexplained_12345(bytes: &[u8], reference: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in positions(bytes, b"12345") {
        let hex = |b: &u8| b.is_ascii_hexdigit();
        let mut s = i;
        while s > 0 && hex(&bytes[s - 1]) {
            s -= 1;
        }
        let mut e = i + 5;
        while e < bytes.len() && hex(&bytes[e]) {
            e += 1;
        }
        if e - s >= 20 {
            continue;
        }
        let mut ds = i;
        while ds > 0 && bytes[ds - 1].is_ascii_digit() {
            ds -= 1;
        }
        let mut de = i + 5;
        while de < bytes.len() && bytes[de].is_ascii_digit() {
            de += 1;
        }
        let run = &bytes[ds..de];
        let timestamp_fraction = ds >= 9
            && bytes[ds - 1] == b'.'
            && bytes[ds - 9..ds - 1].iter().enumerate().all(|(k, b)| {
                if k % 3 == 2 {
                    *b == b':'
                } else {
                    b.is_ascii_digit()
                }
            });
        if timestamp_fraction || run == reference.as_bytes() {
            continue;
        }
        let from = i.saturating_sub(24);
        let to = (i + 29).min(bytes.len());
        out.push(String::from_utf8_lossy(&bytes[from..to]).into_owned());
    }
    out
}

fn has_wav_header(bytes: &[u8]) -> bool {
    positions(bytes, b"RIFF")
        .into_iter()
        .any(|i| bytes.get(i + 8..i + 12) == Some(b"WAVE"))
        || !positions(bytes, b"WAVEfmt ").is_empty()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_call(server: &Server, args: &[&str]) -> std::process::Child {
    Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hotline call")
}

/// Acceptance: with recipients set, a caller answers the unit question with 12345
/// and leaves a message. Nothing under the data directory (database, WAL,
/// recordings, key) nor the server's log holds 12345, the caller's number or a WAV
/// header; `age -d` gives back the caller's audio; `calls --identity` the answers.
#[test]
fn a_sealed_call_leaves_nothing_readable_and_opens_with_the_offline_key() {
    if !need_age() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let offline = keys.path().join("offline.key");
    let plain = keys.path().join("age-keygen.key");
    let r1 = hotline_key(&offline);
    let r2 = age_keygen(&plain);
    let (voice, sent) = long_speech(keys.path());
    let dir = tempfile::tempdir().unwrap();
    let flow = quick_flow(dir.path());
    let recipients = format!("storage.recipients=[\"{r1}\", \"{r2}\"]");
    let server = Server::start_in(dir, &[&flow, &recipients]);
    // Status 1 (during the greeting), zone 2, unit 12345 (five digits end it), then
    // the queue (nobody logged in: voice message) and the recording from about 27 s.
    let mut caller = spawn_call(
        &server,
        &[
            "--from",
            CALLER,
            "--hangup-after",
            "40",
            "--dtmf",
            "1@1.0,2@3.0,1@4.0,2@4.5,3@5.0,4@5.5,5@6.0",
            "--play",
            &voice.display().to_string(),
        ],
    );
    let calls = server.wait_calls(Duration::from_secs(70), |c| {
        c.first().is_some_and(|c| {
            c["end_reason"].is_string() && !c["recordings"].as_array().unwrap().is_empty()
        })
    });
    let _ = caller.wait();
    let c = &calls[0];
    assert_eq!(c["sealed"], "locked", "{c}");
    assert!(c["answers"].as_object().unwrap().is_empty(), "{c}");
    assert_eq!(c["digits"], "");
    assert!(c["path"].as_array().unwrap().is_empty());
    assert!(
        c["end_reason"].is_string() && c["started_at"].is_string(),
        "times stay clear"
    );
    let rec = &c["recordings"][0];
    let rec_path = PathBuf::from(rec["path"].as_str().unwrap());
    assert!(rec_path.to_string_lossy().ends_with(".wav.age"), "{rec}");
    assert!(rec["duration_ms"].as_i64().unwrap() > 5000, "{rec}");
    let reference = c["reference"].as_str().unwrap_or("").to_string();

    // What a seized disk gives away.
    let mut scanned = Vec::new();
    for f in files_under(&server.data_dir()) {
        let bytes = std::fs::read(&f).unwrap();
        let hits = unexplained_12345(&bytes, &reference);
        assert!(hits.is_empty(), "{} holds 12345: {hits:?}", f.display());
        for number in [CALLER, &CALLER[1..], &CALLER[4..]] {
            assert!(
                positions(&bytes, number.as_bytes()).is_empty(),
                "{} holds the caller's number",
                f.display()
            );
        }
        assert!(
            !has_wav_header(&bytes),
            "{} holds a WAV header",
            f.display()
        );
        scanned.push(f.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert!(scanned.iter().any(|n| n == "hotline.db"), "{scanned:?}");
    assert!(
        scanned.iter().any(|n| n.ends_with(".wav.age")),
        "{scanned:?}"
    );
    let log = server.log_text();
    assert!(
        !log.contains(CALLER) && !log.contains(&CALLER[4..]),
        "the log holds the caller's number"
    );
    assert!(
        unexplained_12345(log.as_bytes(), &reference).is_empty(),
        "the log holds 12345"
    );

    // The Debian age command opens the recording with either identity.
    let wav = age_decrypt(&plain, &rec_path);
    let out = keys.path().join("message.wav");
    age_decrypt_with_passphrase(Some(&offline), &rec_path, &out);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        wav,
        "both identities give the same WAV"
    );
    let recorded = wav_samples(&wav);
    assert_eq!(
        recorded.len() as i64 / 8,
        rec["duration_ms"].as_i64().unwrap()
    );
    // 2 s from the middle of the message, found in what the caller sent.
    let mid = recorded.len() / 2;
    let piece = &recorded[mid - 8000..mid + 8000];
    let (corr, lag) = best_match_anywhere(piece, &sent);
    println!(
        "decrypted message: {:.1} s, correlation {corr:.3} with the caller's audio at {:.2} s",
        recorded.len() as f64 / 8000.0,
        lag as f64 / 8000.0
    );
    assert!(
        corr >= 0.9,
        "the message is the caller's audio (corr {corr:.3})"
    );

    // The answers, with the passphrase-protected identity and its passphrase on stdin.
    let o = cli_input(
        &server,
        &[
            "calls",
            "--json",
            "--identity",
            &offline.display().to_string(),
        ],
        &format!("{PASSPHRASE}\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let opened: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let c = &opened[0];
    assert_eq!(c["sealed"], "opened");
    assert_eq!(c["answers"]["unit"], "12345", "{c}");
    assert_eq!(c["answers"]["status"], "1");
    assert_eq!(c["answers"]["zone"], "2");
    assert_eq!(c["digits"], "1212345");
    let path: Vec<&str> = c["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        &path[..5],
        ["greeting", "situation", "zone", "unit", "operator_queue"]
    );
    assert!(path.contains(&"voicemail"));
    // Voice messages list their call's answers the same way.
    let o = server.cli(&["voicemails", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let vms: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        vms[0]["answers"].as_object().unwrap().is_empty(),
        "{}",
        vms[0]
    );
    let o = cli_input(
        &server,
        &[
            "voicemails",
            "--json",
            "--identity",
            &plain.display().to_string(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    let vms: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vms[0]["answers"]["unit"], "12345", "{}", vms[0]);
    assert!(vms[0]["path"].as_str().unwrap().ends_with(".wav.age"));
    // A wrong passphrase is a clear error.
    let o = cli_input(
        &server,
        &[
            "calls",
            "--json",
            "--identity",
            &offline.display().to_string(),
        ],
        "not it\n",
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{}",
        text(&o)
    );
    server.assert_no_panic();
}

/// The scan above finds answers stored in clear: without recipients the same answer
/// is in the database files (so its absence with recipients means something).
#[test]
fn the_scan_finds_an_answer_stored_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let flow = quick_flow(dir.path());
    let server = Server::start_in(dir, &[&flow]);
    let o = Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(["--from", CALLER, "--hangup-after", "8"])
        .args(["--dtmf", "1@1.0,2@3.0,1@4.0,2@4.5,3@5.0,4@5.5,5@6.0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["answers"]["unit"] == "12345")
    });
    assert_eq!(calls[0]["sealed"], serde_json::Value::Null);
    let mut found = Vec::new();
    for f in files_under(&server.data_dir()) {
        let bytes = std::fs::read(&f).unwrap();
        if !unexplained_12345(&bytes, "").is_empty() {
            found.push(f.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(
        found.iter().any(|n| n.starts_with("hotline.db")),
        "a clear answer is found: {found:?}"
    );
}

/// Acceptance: `kill -9` while recording. After the restart the recording is sealed
/// and decrypts to the audio up to at most 1 s before the kill; no plaintext is left.
#[test]
fn kill_9_while_recording_leaves_a_sealed_recording_after_restart() {
    if !need_age() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let plain = keys.path().join("age-keygen.key");
    let r = age_keygen(&plain);
    let recipients = format!("storage.recipients=[\"{r}\"]");
    let mut server = Server::start(&[&recipients]);
    let rec_dir = server.data_dir().join("recordings");
    let speech = root().join("tests/data/speech_ru_festival.wav");
    let sent = common::read_wav(&speech);
    // Key 0: the queue, nobody logged in, straight to voicemail.
    let mut caller = spawn_call(
        &server,
        &[
            "--hangup-after",
            "60",
            "--dtmf",
            "0@0.5",
            "--play",
            &speech.display().to_string(),
        ],
    );
    let mut seen = None;
    wait_for("the recording to start", Duration::from_secs(40), || {
        seen = common::wav_files(&rec_dir)
            .into_iter()
            .next()
            .map(|p| (p, Instant::now()));
        seen.is_some()
    });
    let (wav, recording_since) = seen.unwrap();
    std::thread::sleep(Duration::from_millis(3300));
    let child = server.child.as_mut().expect("server running");
    child.kill().expect("kill -9");
    let killed_at = Instant::now();
    let _ = child.wait();
    server.child = None;
    let _ = caller.kill();
    let _ = caller.wait();
    assert!(
        wav.exists(),
        "plaintext while recording, before the restart"
    );
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let restarted = Server::start_in(dir, &[&recipients]);
    let files = files_under(&restarted.data_dir().join("recordings"));
    assert_eq!(files.len(), 1, "{files:?}");
    let sealed = &files[0];
    assert_eq!(sealed, &PathBuf::from(format!("{}.age", wav.display())));
    for f in files_under(&restarted.data_dir()) {
        assert!(
            !has_wav_header(&std::fs::read(&f).unwrap()),
            "{} is plaintext",
            f.display()
        );
    }
    let audio = wav_samples(&age_decrypt(&plain, sealed));
    let kept = audio.len() as f64 / 8000.0;
    let up_to_kill = (killed_at - recording_since).as_secs_f64();
    println!("killed {up_to_kill:.2} s into the recording; {kept:.2} s sealed and readable");
    assert!(
        kept >= up_to_kill - 1.0,
        "at most 1 s lost: {kept:.2} s of {up_to_kill:.2} s"
    );
    // Its last second is the caller's audio.
    let last = &audio[audio.len() - 8000..];
    let (corr, _) = best_match_anywhere(last, &sent);
    assert!(
        corr > 0.9,
        "the sealed audio is the caller's up to its end (corr {corr:.3})"
    );
    let calls = restarted.calls_json();
    assert_eq!(calls[0]["end_reason"], "interrupted");
    assert!(restarted
        .log_text()
        .contains("plaintext recordings left from before were sealed"));
    restarted.assert_no_panic();
}

/// Acceptance: unseal over the control socket, seal again; a wrong passphrase is a
/// clear error; the identity never touches the disk; a restart forgets it.
#[test]
fn unseal_and_seal_over_the_control_socket() {
    if !need_age() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let offline = keys.path().join("offline.key");
    let r = hotline_key(&offline);
    let dir = tempfile::tempdir().unwrap();
    let flow = quick_flow(dir.path());
    let recipients = format!("storage.recipients=[\"{r}\"]");
    let mut server = Server::start_in(dir, &[&flow, &recipients]);
    let summary = Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(["--hangup-after", "6", "--dtmf", "1@1.0,2@3.0,#@4.5"])
        .output()
        .unwrap();
    assert!(summary.status.success());
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["end_reason"].is_string())
    });
    assert_eq!(calls[0]["sealed"], "locked");
    let status = |s: &Server| {
        String::from_utf8_lossy(&s.cli(&["keys", "status"]).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(status(&server), "sealed");
    let key = offline.display().to_string();

    let o = cli_input(
        &server,
        &["unseal", "--identity", &key],
        "wrong passphrase\n",
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{}",
        text(&o)
    );
    assert_eq!(status(&server), "sealed");

    // An identity that is not one of the recipients is refused by the server.
    let stranger = keys.path().join("stranger.key");
    age_keygen(&stranger);
    let o = cli_input(
        &server,
        &["unseal", "--identity", &stranger.display().to_string()],
        "",
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("matches none of storage.recipients"),
        "{}",
        text(&o)
    );

    let o = cli_input(
        &server,
        &["unseal", "--identity", &key],
        &format!("{PASSPHRASE}\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(status(&server).starts_with("unsealed"));
    let pid = server.child.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().nth(4),
        Some("0"),
        "no core dumps while unsealed: {core}"
    );
    let c = &server.calls_json()[0];
    assert_eq!(c["sealed"], "opened", "the running server opens them");
    assert_eq!(c["answers"]["status"], "1");
    assert_eq!(c["answers"]["zone"], "2");
    assert_eq!(c["answers"]["unit"], "");

    // The secret key, as the Debian age command decrypts the key file (a
    // passphrase-encrypted age file).
    let secret_file = keys.path().join("secret.txt");
    age_decrypt_with_passphrase(None, &offline, &secret_file);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let secret = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("secret key line")
        .to_string();
    let check_disk = |s: &Server| {
        for f in files_under(&s.data_dir()) {
            let bytes = std::fs::read(&f).unwrap();
            for form in [secret.clone(), secret.to_lowercase()] {
                assert!(
                    positions(&bytes, form.as_bytes()).is_empty(),
                    "{} holds the identity",
                    f.display()
                );
            }
        }
        assert!(
            !s.log_text().contains(&secret[..30]),
            "the log holds the identity"
        );
    };
    check_disk(&server);

    let o = server.cli(&["seal"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(status(&server), "sealed");
    assert_eq!(server.calls_json()[0]["sealed"], "locked");

    // A restart forgets it.
    let o = cli_input(
        &server,
        &["unseal", "--identity", &key],
        &format!("{PASSPHRASE}\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    server.stop();
    check_disk(&server);
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let restarted = Server::start_in(dir, &[&flow, &recipients]);
    assert_eq!(status(&restarted), "sealed");
    assert_eq!(restarted.calls_json()[0]["sealed"], "locked");
    check_disk(&restarted);
    restarted.assert_no_panic();
}

/// `hotline check` warns (exit 0) without recipients and refuses a bad one (exit 2).
#[test]
fn check_warns_without_recipients_and_refuses_bad_ones() {
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(common::bin());
        cmd.arg("check").current_dir(root());
        for e in extra {
            cmd.arg("--set").arg(e);
        }
        cmd.output().unwrap()
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("warning: config/hotline.toml: storage.recipients is empty"),
        "{}",
        text(&o)
    );
    let o = run(&["storage.recipients=[\"age1qqqq\"]"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config/hotline.toml: storage.recipients[0]: \"age1qqqq\" is not an age X25519 recipient"), "{err}");
    let good = "age1w037g0zykcfk53umvz99ueqr4dphd3xghvx6g6akkjz6t08c6usqcr7pch";
    let o = run(&[&format!("storage.recipients=[\"{good}\"]")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("warning"),
        "{}",
        text(&o)
    );
}

/// The board's first event (the whole board), read from `/events`.
fn board_event(session: &webclient::Session) -> serde_json::Value {
    let req = format!(
        "GET /events HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n",
        session.cookie
    );
    let raw = webclient::raw(session.addr, req.as_bytes(), Duration::from_secs(2)).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap_or_else(|| panic!("no board event in {text}"));
    serde_json::from_str(data.trim()).unwrap()
}

/// Every occurrence of `needle` in the database and its WAL.
fn in_database(server: &Server, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for name in ["hotline.db", "hotline.db-wal"] {
        let path = server.data_dir().join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            if !positions(&bytes, needle.as_bytes()).is_empty() {
                found.push(name.to_string());
            }
        }
    }
    found
}

/// The console on a sealing server. While sealed, pages show a call's metadata and
/// say "sealed" where answers, notes and players would be (in both languages), and
/// the recording URL refuses with 423, never sending ciphertext as audio; the board
/// still shows a waiting caller's answers (they come from memory). A note's text is
/// nowhere in the database or its WAL. After `hotline unseal` the same pages show
/// the answers and the note, the recording plays as exactly the WAV `age -d` gives,
/// Range requests work, and the listen is audited; `hotline seal` locks it again;
/// `hotline export` writes the note decrypted.
#[test]
fn the_console_shows_sealed_calls_as_sealed_and_opens_them_while_unsealed() {
    if !need_age() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("identity.key");
    let recipient = age_keygen(&identity);
    let (voice, _) = long_speech(keys.path());
    let dir = tempfile::tempdir().unwrap();
    let flow = quick_flow(dir.path());
    let recipients = format!("storage.recipients=[\"{recipient}\"]");
    let mut server = Server::start_in(
        dir,
        &[
            &flow,
            &recipients,
            "console.listen=\"127.0.0.1:0\"",
            "console.time_zone=\"UTC\"",
            "console.board_interval_ms=100",
            // The caller waits in the queue (nobody answers) and is then sent to
            // voicemail, so the board shows it waiting first.
            "queue.voicemail_when_nobody_logged_in=false",
            "queue.max_wait_s=8",
        ],
    );
    let addr = server.console.expect("console");
    let o = server.cli(&[
        "operator",
        "add",
        "olena",
        "--password",
        "olena-secret-1",
        "--role",
        "supervisor",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let olena = webclient::Session::login(addr, "olena", "olena-secret-1");

    let mut caller = spawn_call(
        &server,
        &[
            "--from",
            CALLER,
            "--hangup-after",
            "55",
            "--dtmf",
            "1@1.0,2@3.0,1@4.0,2@4.5,3@5.0,4@5.5,5@6.0",
            "--play",
            &voice.display().to_string(),
        ],
    );
    // Live data comes from memory: the waiting caller's answers are on the board.
    let mut waiting = serde_json::Value::Null;
    wait_for("the caller on the board", Duration::from_secs(45), || {
        waiting = board_event(&olena)["board"]["callers"][0].clone();
        !waiting.is_null()
    });
    let answers = waiting["answers"].to_string();
    assert!(answers.contains("12345"), "board: {waiting}");
    let calls = server.wait_calls(Duration::from_secs(70), |c| {
        c.first().is_some_and(|c| {
            c["end_reason"].is_string() && !c["recordings"].as_array().unwrap().is_empty()
        })
    });
    let _ = caller.wait();
    let call = &calls[0];
    assert_eq!(call["sealed"], "locked", "{call}");
    let id = call["id"].as_i64().unwrap();
    let reference = call["reference"].as_str().unwrap_or("").to_string();
    let rec_path = PathBuf::from(call["recordings"][0]["path"].as_str().unwrap());
    assert!(rec_path.to_string_lossy().ends_with(".wav.age"));
    let no_answer = |html: &str, page: &str| {
        let html = html.replace(&reference, "");
        assert!(
            !html.contains("12345"),
            "{page} shows the answer while sealed"
        );
    };

    // Sealed: metadata and "sealed", in English and in Ukrainian.
    let inbox = olena.get("/inbox");
    assert_eq!(inbox.status, 200);
    let html = inbox.text();
    assert!(
        html.contains("<span class=\"sealed\">sealed</span>"),
        "{html}"
    );
    assert!(html.contains("Recording sealed") && !html.contains("<audio"));
    assert!(html.contains(&reference), "metadata stays visible");
    no_answer(&html, "the inbox");
    let recording_id = {
        let marker = "data-recording-id=\"";
        let i = html.find(marker).unwrap() + marker.len();
        html[i..i + html[i..].find('"').unwrap()]
            .parse::<i64>()
            .unwrap()
    };
    let page = olena.get(&format!("/calls/{id}")).text();
    assert!(page.contains("id=\"sealed-notice\""), "{page}");
    assert!(page.contains("Recording sealed"));
    no_answer(&page, "the call page");
    let history = olena.get("/history").text();
    assert!(history.contains(">sealed<"), "{history}");
    no_answer(&history, "the history");
    let found = olena.get(&format!("/inbox?ref={reference}")).text();
    assert!(found.contains("id=\"search-results\""), "{found}");
    no_answer(&found, "the reference search");
    let csv = olena.post("/history/export", &[("outcome", "")]);
    assert_eq!(csv.status, 200);
    let mut reader = csv::Reader::from_reader(csv.body.as_slice());
    let head: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let row = reader.records().next().unwrap().unwrap();
    let cell = |name: &str| row[head.iter().position(|h| h == name).unwrap()].to_string();
    assert_eq!(cell("sealed"), "locked");
    assert_eq!(cell("answers"), "{}");
    let r = olena.post("/language", &[("lang", "uk")]);
    assert_eq!(r.status, 303);
    let uk = olena.get("/inbox").text();
    assert!(
        uk.contains(">запечатано<") && uk.contains("Запис запечатано"),
        "{uk}"
    );
    olena.post("/language", &[("lang", "en")]);

    // The recording URL refuses clearly, and nothing is audited as a listen.
    let r = olena.get(&format!("/recordings/{recording_id}"));
    assert_eq!(r.status, 423, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("unseal"), "{}", r.text());
    assert!(!r.body.starts_with(b"age-encryption") && !r.body.starts_with(b"RIFF"));

    // A note is sealed too: its text is nowhere on disk, and the page says sealed.
    let note = "called back at 18:00, Kharkiv, knows the unit 4242";
    let r = olena.post(&format!("/calls/{id}/notes"), &[("body", note)]);
    assert_eq!(r.status, 303, "{}", r.text());
    let page = olena.get(&format!("/calls/{id}")).text();
    assert!(
        page.contains("Note sealed") && !page.contains("Kharkiv"),
        "{page}"
    );
    assert!(
        in_database(&server, "Kharkiv").is_empty(),
        "the note in clear"
    );
    assert!(
        in_database(&server, "knows the unit").is_empty(),
        "the note in clear"
    );

    // Unsealed: the answers, the note and the recording.
    let o = cli_input(
        &server,
        &["unseal", "--identity", &identity.display().to_string()],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    let page = olena.get(&format!("/calls/{id}")).text();
    assert!(page.contains("unit=12345"), "{page}");
    assert!(page.contains(note));
    assert!(page.contains("<audio") && !page.contains("id=\"sealed-notice\""));
    let inbox = olena.get("/inbox").text();
    assert!(inbox.contains("unit=12345") && inbox.contains("<audio"));
    assert!(olena.get("/history").text().contains("unit=12345"));
    let wav = age_decrypt(&identity, &rec_path);
    let r = olena.get(&format!("/recordings/{recording_id}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("audio/wav"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(
        r.body == wav,
        "the decrypted WAV, byte for byte ({} bytes against {})",
        r.body.len(),
        wav.len()
    );
    let ranged = |range: &str| {
        webclient::request(
            addr,
            "GET",
            &format!("/recordings/{recording_id}"),
            &[("Cookie", &olena.cookie), ("Range", range)],
            b"",
        )
    };
    // Across age's 64 KiB chunks, and from the end.
    let r = ranged("bytes=65000-70999");
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 65000-70999/{}", wav.len()).as_str())
    );
    assert!(r.body == wav[65000..71000]);
    let r = ranged("bytes=-100");
    assert_eq!(r.status, 206);
    assert!(r.body == wav[wav.len() - 100..]);
    let r = ranged(&format!("bytes={}-", wav.len()));
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", wav.len()).as_str())
    );
    let conn = rusqlite::Connection::open(server.data_dir().join("hotline.db")).unwrap();
    let listens: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = 'listen' AND recording_id = ?1",
            [recording_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(listens, 1, "one listen audited, none for the refusal");
    let details: String = conn
        .query_row("SELECT group_concat(detail, '|') FROM audit_log", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        !details.contains("Kharkiv"),
        "the audit log keeps no note text"
    );

    // Sealed again: locked again.
    let o = server.cli(&["seal"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        olena.get(&format!("/recordings/{recording_id}")).status,
        423
    );
    assert!(!olena.get(&format!("/calls/{id}")).text().contains(note));

    // The case file has the note, decrypted.
    let out = keys.path().join("case");
    let o = cli_input(
        &server,
        &[
            "export",
            "--identity",
            &identity.display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    let exported: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("calls.json")).unwrap()).unwrap();
    let c = exported.iter().find(|c| c["id"] == id).unwrap();
    assert_eq!(c["notes"][0]["body"], note, "{c}");
    assert_eq!(c["notes"][0]["author"], "olena");
    assert_eq!(c["answers"]["unit"], "12345");
    server.assert_no_panic();
    server.stop();
}
