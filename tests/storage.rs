//! Backups, restore, retention, export and the caller-ID key's rotation, against the
//! real binary with real calls (`hotline call`) and Debian's `age` for decryption.

mod common;

use common::{require_tool, Server};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn speech() -> String {
    root()
        .join("tests/data/speech_ru_festival.wav")
        .display()
        .to_string()
}

use common::quick_flow;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn age_keygen(path: &Path) -> String {
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .expect("age-keygen");
    assert!(out.status.success(), "age-keygen: {}", text(&out));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .expect("public key line")
}

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

fn spawn_call(server: &Server, args: &[&str]) -> Child {
    Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hotline call")
}

/// A voice message: key 0 (nobody in the queue), the introduction, about 8 s of
/// speech, # ("saved", the reference code, goodbye, and the hotline hangs up).
const VOICEMAIL: &[&str] = &["--hangup-after", "70", "--dtmf", "0@0.5,#@30"];

/// A caller who hangs up 4 s into the recording (a partial message, stored too).
const SHORT_MESSAGE: &[&str] = &["--hangup-after", "26", "--dtmf", "0@0.5"];

/// `hotline ARGS` on another data directory (and nothing else of the server's
/// configuration: listing needs only the database).
fn cli_on(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .arg("--set")
        .arg(format!("storage.data_dir=\"{}\"", data_dir.display()))
        .output()
        .expect("hotline")
}

fn calls_on(data_dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["calls", "--json", "--limit", "1000"];
    args.extend_from_slice(extra);
    let o = cli_on(data_dir, &args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("calls json")
}

/// Recording paths are absolute under each data directory: compare the rest.
fn normalized(calls: &[serde_json::Value], data_dir: &Path) -> Vec<serde_json::Value> {
    let base = std::fs::canonicalize(data_dir).unwrap();
    let base = format!("{}/", base.display());
    calls
        .iter()
        .map(|c| {
            let mut c = c.clone();
            for r in c["recordings"].as_array_mut().unwrap() {
                let p = r["path"].as_str().unwrap().to_string();
                r["path"] = serde_json::Value::String(
                    p.strip_prefix(&base)
                        .expect("under the data directory")
                        .to_string(),
                );
            }
            c
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Acceptance: a backup taken while 20 calls are active, restored into an empty
/// directory, gives the same `hotline calls --json` for the calls finished before it;
/// `--verify` catches one flipped byte. Also: export for a case file, and a clean
/// shutdown that leaves `hotline.db` complete on its own.
#[test]
fn online_backup_with_20_active_calls_restores_and_verifies() {
    if !(require_tool("age") && require_tool("age-keygen")) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("age-keygen.key");
    let recipient = age_keygen(&key);
    let dir = tempfile::tempdir().unwrap();
    let flow = quick_flow(dir.path());
    let recipients = format!("storage.recipients=[\"{recipient}\"]");
    let mut server = Server::start_in(dir, &[&flow, &recipients, "limits.max_calls_per_source=0"]);
    // Finished before the backup: a voice message and two calls with answers.
    let mut before = vec![spawn_call(
        &server,
        &[VOICEMAIL, &["--play", &speech()]].concat(),
    )];
    for _ in 0..2 {
        before.push(spawn_call(
            &server,
            &["--hangup-after", "6", "--dtmf", "1@1.0,2@3.0,#@4.5"],
        ));
    }
    for mut c in before {
        let _ = c.wait();
    }
    let finished = server.wait_calls(Duration::from_secs(30), |c| {
        c.len() == 3 && c.iter().all(|c| c["end_reason"].is_string())
    });
    assert_eq!(finished.len(), 3);
    let voicemail = finished
        .iter()
        .find(|c| !c["recordings"].as_array().unwrap().is_empty())
        .expect("the voice message's call");
    assert!(
        voicemail["recordings"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with(".wav.age"),
        "{voicemail}"
    );
    let finished_ids: Vec<i64> = finished.iter().map(|c| c["id"].as_i64().unwrap()).collect();

    // Twenty callers in the menus while the backup runs.
    let active: Vec<Child> = (0..20)
        .map(|_| spawn_call(&server, &["--hangup-after", "20", "--dtmf", "1@1.0"]))
        .collect();
    server.wait_calls(Duration::from_secs(15), |c| {
        c.len() == 23 && c.iter().filter(|c| c["ended_at"].is_null()).count() == 20
    });
    let backups = tempfile::tempdir().unwrap();
    let dest = backups.path().join("b1");
    let o = server.cli(&["backup", &dest.display().to_string()]);
    assert!(o.status.success(), "backup: {}", text(&o));
    println!("{}", String::from_utf8_lossy(&o.stdout).trim());
    let during = server.calls_json();
    assert!(
        during.iter().filter(|c| c["ended_at"].is_null()).count() >= 15,
        "the backup ran while the calls were active"
    );
    for mut c in active {
        let _ = c.wait();
    }

    let o = server.cli(&["backup", "--verify", &dest.display().to_string()]);
    assert!(o.status.success(), "verify: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(": ok ("),
        "{}",
        text(&o)
    );

    // Restore: copy the backup into an empty directory.
    let restored = tempfile::tempdir().unwrap();
    let restored_data = restored.path().join("data");
    std::fs::create_dir(&restored_data).unwrap();
    copy_dir(&dest, &restored_data);
    let original = normalized(&server.calls_json(), &server.data_dir());
    let copy = normalized(&calls_on(&restored_data, &[]), &restored_data);
    for id in &finished_ids {
        let a = original.iter().find(|c| c["id"] == *id).unwrap();
        let b = copy
            .iter()
            .find(|c| c["id"] == *id)
            .expect("call in the copy");
        assert_eq!(a, b, "call {id} restored as it was");
    }
    assert_eq!(copy.len(), 23, "the active calls are in the snapshot too");
    // Opened with the key, the restored answers are there.
    let key_arg = key.display().to_string();
    let opened = calls_on(&restored_data, &["--identity", &key_arg]);
    let answered = opened
        .iter()
        .filter(|c| finished_ids.contains(&c["id"].as_i64().unwrap()))
        .filter(|c| c["answers"]["zone"] == "2")
        .count();
    assert_eq!(answered, 2);
    // The restored recording opens with age and is the same audio.
    let rel = copy.iter().find(|c| c["id"] == voicemail["id"]).unwrap()["recordings"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let wav = age_decrypt(&key, &restored_data.join(&rel));
    assert_eq!(wav, age_decrypt(&key, &server.data_dir().join(&rel)));
    assert_eq!(&wav[..4], b"RIFF");
    // A server starts on the restored copy: the calls active at backup time are
    // marked interrupted.
    let restarted = Server::start_in(
        restored,
        &[&flow, &recipients, "limits.max_calls_per_source=0"],
    );
    let after = restarted.calls_json();
    assert_eq!(
        after
            .iter()
            .filter(|c| c["end_reason"] == "interrupted")
            .count(),
        20
    );
    drop(restarted);

    // One flipped byte in the backup's recording.
    let in_backup = dest.join(&rel);
    let mut bytes = std::fs::read(&in_backup).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&in_backup, &bytes).unwrap();
    let o = server.cli(&["backup", "--verify", &dest.display().to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{rel}: SHA-256 does not match")),
        "{err}"
    );

    // Export for a case file: decrypted copies, outside the data directory only.
    let case = backups.path().join("case");
    let o = server.cli(&[
        "export",
        "--identity",
        &key_arg,
        "--out",
        &case.display().to_string(),
    ]);
    assert!(o.status.success(), "export: {}", text(&o));
    let exported: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(case.join("calls.json")).unwrap()).unwrap();
    let vm = exported
        .iter()
        .find(|c| c["id"] == voicemail["id"])
        .unwrap();
    let file = case.join(vm["recordings"][0]["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&file).unwrap(), wav, "the exported message");
    assert_eq!(
        exported
            .iter()
            .filter(|c| c["answers"]["zone"] == "2")
            .count(),
        2
    );
    let inside = server.data_dir().join("case");
    let o = server.cli(&[
        "export",
        "--identity",
        &key_arg,
        "--out",
        &inside.display().to_string(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("inside the data directory"),
        "{}",
        text(&o)
    );
    assert!(!inside.exists());
    // A relative directory, from inside the data directory, is refused too.
    let mut cmd = Command::new(common::bin());
    cmd.args(["export", "--identity", &key_arg, "--out", "case"])
        .current_dir(server.data_dir().join("recordings"));
    for o in &server.overrides {
        cmd.arg("--set").arg(o);
    }
    let o = cmd.output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!server.data_dir().join("recordings/case").exists());

    // Clean shutdown: the WAL is checkpointed, hotline.db alone holds everything.
    let all_before = server.calls_json();
    server.stop();
    let wal = server.data_dir().join("hotline.db-wal");
    assert_eq!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        0,
        "WAL empty after a clean shutdown"
    );
    let alone = tempfile::tempdir().unwrap();
    std::fs::copy(
        server.data_dir().join("hotline.db"),
        alone.path().join("hotline.db"),
    )
    .unwrap();
    let from_db_alone = calls_on(alone.path(), &[]);
    assert_eq!(from_db_alone.len(), all_before.len());
    for (a, b) in from_db_alone.iter().zip(&all_before) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["ended_at"], b["ended_at"]);
        assert_eq!(a["end_reason"], b["end_reason"]);
    }
    server.assert_no_panic();
}

/// Acceptance: retention with `recordings_days = 0.0001` (8.64 s) removes the old
/// recording and keeps the new one; `purge --dry-run` lists exactly what goes; the
/// server's own purge logs counts only.
#[test]
fn retention_removes_old_recordings_and_keeps_new_ones() {
    if !require_tool("age-keygen") {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let recipient = age_keygen(&keys.path().join("k"));
    let dir = tempfile::tempdir().unwrap();
    let flow = quick_flow(dir.path());
    let recipients = format!("storage.recipients=[\"{recipient}\"]");
    let args = [
        flow.as_str(),
        &recipients,
        "retention.recordings_days=0.0001",
        "retention.purge_interval_s=3600",
    ];
    let mut server = Server::start_in(dir, &args);
    let has_recording = |c: &serde_json::Value| !c["recordings"].as_array().unwrap().is_empty();
    let mut a = spawn_call(&server, &[SHORT_MESSAGE, &["--play", &speech()]].concat());
    let calls = server.wait_calls(Duration::from_secs(60), |c| {
        c.first().is_some_and(has_recording)
    });
    let old = calls[0]["recordings"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let old_id = calls[0]["id"].clone();
    let _ = a.wait();
    let mut b = spawn_call(&server, &[SHORT_MESSAGE, &["--play", &speech()]].concat());
    // At once when the second message is stored: it is younger than 8.64 s.
    let calls = server.wait_calls(Duration::from_secs(60), |c| {
        c.len() == 2 && has_recording(&c[0])
    });
    let new = calls[0]["recordings"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let o = server.cli(&["purge", "--dry-run", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let dry: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed: Vec<&str> = dry["plan"]["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{dry}");
    assert!(old.ends_with(listed[0]), "{old} vs {listed:?}");
    assert!(Path::new(&old).exists(), "a dry run deletes nothing");
    let o = server.cli(&["purge", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let done: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(done["purged"]["recordings"], 1, "{done}");
    assert!(!Path::new(&old).exists(), "the old recording is gone");
    assert!(Path::new(&new).exists(), "the new one stays");
    let calls = server.calls_json();
    let first = calls.iter().find(|c| c["id"] == old_id).unwrap();
    assert!(
        first["recordings"].as_array().unwrap().is_empty(),
        "its row went with it; the call stays (calls_days = 0)"
    );
    let _ = b.wait();

    // The server's own purge, once the second message is old too.
    server.stop();
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let args = [
        flow.as_str(),
        &recipients,
        "retention.recordings_days=0.0001",
        "retention.purge_interval_s=1",
    ];
    let restarted = Server::start_in(dir, &args);
    wait_for("the server's purge", Duration::from_secs(20), || {
        !Path::new(&new).exists()
    });
    wait_for("the purge's log line", Duration::from_secs(5), || {
        restarted.log_text().contains("retention purge")
    });
    let log = strip_ansi(&restarted.log_text());
    let line = log
        .lines()
        .find(|l| l.contains("retention purge"))
        .unwrap()
        .to_string();
    assert!(line.contains("recordings=1"), "{line}");
    let name = Path::new(&new).file_name().unwrap().to_string_lossy();
    assert!(!log.contains(&*name), "the log names no recording: {line}");
    let calls = restarted.calls_json();
    assert_eq!(calls.len(), 2, "calls are kept (calls_days = 0)");
    assert!(calls
        .iter()
        .all(|c| c["recordings"].as_array().unwrap().is_empty()));
    restarted.assert_no_panic();
}

/// The log as text (tracing colours its fields).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The caller-ID hash key lives in the data directory by default and is replaced on
/// schedule: the same caller hashes differently after a rotation.
#[test]
fn the_caller_id_key_rotates_on_schedule() {
    let server = Server::start(&[
        "privacy.caller_id=hash",
        "privacy.hash_key_rotate_days=0.0001",
        "retention.purge_interval_s=1",
    ]);
    let key = server.data_dir().join("caller-id.key");
    let first_key = std::fs::read(&key).expect("the key is in the data directory");
    let call = || {
        let o = Command::new(common::bin())
            .arg("call")
            .arg(format!("sip:hotline@{}", server.udp))
            .args(["--from", "+380671112233", "--hangup-after", "1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    };
    call();
    call();
    let calls = server.wait_calls(Duration::from_secs(10), |c| c.len() == 2);
    let h1 = calls[0]["from"].as_str().unwrap().to_string();
    assert!(h1.starts_with("hmac:"), "{h1}");
    assert_eq!(calls[1]["from"], h1, "repeat callers link within one key");
    wait_for("the key's rotation", Duration::from_secs(20), || {
        server.log_text().contains("caller-ID hash key replaced")
    });
    let second_key = std::fs::read(&key).unwrap();
    assert_ne!(second_key, first_key);
    assert_eq!(second_key.len(), 32);
    call();
    let calls = server.wait_calls(Duration::from_secs(10), |c| c.len() == 3);
    let h2 = calls[0]["from"].as_str().unwrap();
    assert_ne!(h2, h1, "not linkable across the rotation");
    server.assert_no_panic();
}
