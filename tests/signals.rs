//! Signals on the real binary: SIGHUP reloads the flow and prompts for new calls while
//! calls in progress go on; a broken reload is refused; SIGTERM with `--drain` refuses
//! new calls with 503 and lets calls in progress end; after SIGTERM the database file
//! alone holds every call; the control socket is gone after a clean stop.

mod common;

use common::{RawClient, Server};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn signal(server: &Server, sig: i32) {
    let pid = server.child.as_ref().expect("running").id() as i32;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

fn wait_log(server: &Server, needle: &str, timeout: Duration) {
    let until = Instant::now() + timeout;
    while !server.log_text().contains(needle) {
        assert!(
            Instant::now() < until,
            "no \"{needle}\" in the log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn place_call(server: &Server, hangup_after: f64, record: Option<&Path>) -> Child {
    let mut cmd = Command::new(common::bin());
    cmd.args([
        "call",
        &format!("sip:hotline@{}", server.udp),
        "--hangup-after",
        &hangup_after.to_string(),
    ]);
    if let Some(r) = record {
        cmd.arg("--record").arg(r);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hotline call")
}

fn summary(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("hotline call");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn answered_count(server: &Server) -> usize {
    server
        .calls_json()
        .iter()
        .filter(|c| c["answered_at"].is_string())
        .count()
}

fn wait_answered(server: &Server, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while answered_count(server) < n {
        assert!(Instant::now() < until, "{n} calls not answered in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A copy of the shipped prompts and the quick flow in `dir`, so a test may change them.
fn own_flow_and_prompts(dir: &Path) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prompts = dir.join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    for entry in std::fs::read_dir(root.join("prompts/ru")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, prompts.join(path.file_name().unwrap())).unwrap();
    }
    vec![
        common::quick_flow(dir),
        format!("prompts.dir=\"{}\"", prompts.display()),
        "limits.max_calls_per_source=0".to_string(),
    ]
}

#[test]
fn sighup_swaps_the_flow_for_new_calls_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let own = tempfile::tempdir().unwrap();
    let sets = own_flow_and_prompts(own.path());
    let set_refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let server = Server::start_in(dir, &set_refs);
    let prompts = own.path().join("prompts");

    let before: Vec<Child> = (0..5).map(|_| place_call(&server, 9.0, None)).collect();
    wait_answered(&server, 5);

    // The quick flow opens with language_note; the new one sounds like goodbye.
    std::fs::copy(
        prompts.join("goodbye.wav"),
        prompts.join("language_note.wav"),
    )
    .unwrap();
    signal(&server, libc::SIGHUP);
    wait_log(&server, "reloaded", Duration::from_secs(10));

    let heard = own.path().join("heard.wav");
    let after = summary(place_call(&server, 3.0, Some(&heard)));
    assert_eq!(after["answered"], true, "{after}");
    let new_prompt = common::read_wav(&prompts.join("goodbye.wav"));
    let samples = common::read_wav(&heard);
    let (score, _) = common::best_match_anywhere(&new_prompt[..4000], &samples);
    assert!(
        score > 0.8,
        "the next caller heard the new prompt: {score:.2}"
    );

    // A broken flow is refused; the server keeps the one it has and answers.
    let flow = sets[0]
        .split_once('=')
        .map(|(_, v)| v.trim_matches('"').to_string())
        .unwrap();
    std::fs::write(&flow, "this is = not [a flow").unwrap();
    signal(&server, libc::SIGHUP);
    wait_log(&server, "reload refused", Duration::from_secs(10));
    let heard2 = own.path().join("heard2.wav");
    let again = summary(place_call(&server, 3.0, Some(&heard2)));
    assert_eq!(again["answered"], true, "{again}");
    let (score, _) = common::best_match_anywhere(&new_prompt[..4000], &common::read_wav(&heard2));
    assert!(score > 0.8, "the flow in use stayed: {score:.2}");

    // The five calls that were up during both reloads ran to their own hang-up.
    for child in before {
        let s = summary(child);
        assert_eq!(s["answered"], true, "{s}");
        assert_eq!(s["end_reason"], "our-bye", "{s}");
        let ms = s["duration_ms"].as_u64().unwrap();
        assert!(ms >= 8500, "call cut short after {ms} ms: {s}");
    }
    server.assert_no_panic();
}

#[test]
fn sigterm_with_drain_refuses_new_calls_lets_calls_end_and_leaves_a_whole_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        Server::start_in_with(dir, &["--drain", "30"], &["limits.max_calls_per_source=0"]);
    let socket = server.data_dir().join("control.sock");
    assert!(socket.exists());
    let calls: Vec<Child> = (0..3).map(|_| place_call(&server, 5.0, None)).collect();
    wait_answered(&server, 3);
    signal(&server, libc::SIGTERM);
    wait_log(&server, "draining", Duration::from_secs(5));

    // New calls are refused while the three go on.
    let raw = RawClient::new(server.udp);
    raw.send(&raw.invite("drain-test-1", "z9hG4bKdrain1", 40000));
    let resp = common::recv_response(&raw.sock, Some("drain-test-1"), Duration::from_secs(3))
        .expect("a response during the drain");
    assert_eq!(resp.code, 503, "{resp:?}");

    for child in calls {
        let s = summary(child);
        assert_eq!(
            s["end_reason"], "our-bye",
            "the caller hung up himself: {s}"
        );
    }
    let child = server.child.as_mut().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "still running after the drain");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    server.child = None;
    assert!(!socket.exists(), "control.sock left behind");
    server.assert_no_panic();

    // hotline.db copied alone (no -wal, no -shm) holds every call, ended.
    let alone = tempfile::tempdir().unwrap();
    std::fs::copy(
        server.data_dir().join("hotline.db"),
        alone.path().join("hotline.db"),
    )
    .unwrap();
    let conn = rusqlite::Connection::open(alone.path().join("hotline.db")).unwrap();
    let (total, open, drained): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(ended_at IS NULL), sum(end_reason = 'shutdown')
             FROM calls",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(total, 4, "three answered calls and the refused one");
    assert_eq!(open, 0, "every call has its end");
    assert_eq!(drained, 1, "only the refused call ended by the shutdown");
}

#[test]
fn sigterm_without_drain_hangs_up_calls_in_progress() {
    let mut server = Server::start(&["limits.max_calls_per_source=0"]);
    let calls: Vec<Child> = (0..2).map(|_| place_call(&server, 30.0, None)).collect();
    wait_answered(&server, 2);
    let started = Instant::now();
    server.stop();
    for child in calls {
        let s = summary(child);
        assert_eq!(s["end_reason"], "caller-bye", "the server hung up: {s}");
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(!server.data_dir().join("control.sock").exists());
}
