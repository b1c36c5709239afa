//! Graceful overload against the real binary on loopback: while the media clock is
//! late (here the server process is stalled in a duty cycle with SIGSTOP/SIGCONT,
//! which the server cannot tell from a starved CPU, and nothing in the binary is
//! switched for it), new INVITEs get 503 with Retry-After, the calls already up go
//! on to their own end with their voice messages stored, `hotline_overloaded` reads
//! 1; once the stalls stop it reads 0 again and a new call is answered.
//!
//! Asserts on behaviour (503s appear while stalled, stop after; calls complete), not
//! on timings, so that a busy machine only makes it slower. Also here: the media
//! threads' real-time scheduling (`rtp.realtime_priority`), read from /proc.

mod common;
mod webclient;

use common::{quick_flow, recv_response, RawClient, Resp, Server};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = webclient::get(addr, "/metrics", None).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn wait_metric(addr: std::net::SocketAddr, name: &str, want: f64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let got = metric(addr, name);
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{name} is {got:?}, not {want}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with our own child's pid; no memory is shared.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Stops and continues `pid` (150 ms stopped, 100 ms running) until dropped; always
/// leaves it running.
struct Staller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Staller {
    fn start(pid: u32) -> Staller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                signal(pid, libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(150));
                signal(pid, libc::SIGCONT);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Staller {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Staller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a new INVITE and returns its final response (the server's provisional ones
/// are skipped); a refusal is acknowledged.
fn invite(client: &RawClient, n: u32) -> Option<Resp> {
    let call_id = format!("overload-{n}");
    let branch = format!("z9hG4bKov{n}");
    client.send(&client.invite(&call_id, &branch, 40_000));
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let r = recv_response(&client.sock, Some(&call_id), Duration::from_secs(2))?;
        if r.code >= 200 {
            if r.code >= 300 {
                client.send(&client.in_dialog("ACK", &r, 1, &branch));
            }
            return Some(r);
        }
    }
    None
}

/// A caller who goes to the voicemail at once (0), speaks and hangs up after
/// `seconds`; what it hears is recorded to `heard`.
fn voicemail_caller(server: &Server, seconds: u32, heard: &std::path::Path) -> Child {
    common::tls_phone::caller_with(server, heard, seconds, &["--dtmf", "0@0.5"])
}

#[test]
fn a_late_media_clock_refuses_new_calls_and_spares_calls_in_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = quick_flow(dir.path());
    let heard_dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_in(
        dir,
        &[
            &flow,
            "metrics.listen=\"127.0.0.1:0\"",
            // Under the stalls below the mean is about 24 ms; recovery (under 4 ms)
            // stays well above an idle clock's 1-1.5 ms on a busy machine.
            "limits.overload_lateness_ms=8",
            "limits.max_calls_per_source=0",
            "limits.source_rate=1000.0",
            "limits.source_burst=1000",
            "rtp.ports=\"33000-33999\"",
            "limits.max_calls=100",
        ],
    );
    let metrics = server.metrics.expect("metrics address printed");
    let pid = server.child.as_ref().expect("server").id();
    // The detector judges only full one-second windows; let it settle.
    std::thread::sleep(Duration::from_millis(1500));
    wait_metric(metrics, "hotline_overloaded", 0.0, Duration::from_secs(10));

    // Calls in progress: three callers leaving a message, 25 s each.
    let callers: Vec<(Child, PathBuf)> = (0..3)
        .map(|i| {
            let heard = heard_dir.path().join(format!("heard-{i}.wav"));
            (voicemail_caller(&server, 25, &heard), heard)
        })
        .collect();
    wait_metric(
        metrics,
        "hotline_active_calls",
        3.0,
        Duration::from_secs(15),
    );

    let client = RawClient::new(server.udp);
    let refused;
    {
        let _stalls = Staller::start(pid);
        wait_metric(metrics, "hotline_overloaded", 1.0, Duration::from_secs(20));
        // While it stays overloaded, every new INVITE is refused before any media.
        let mut codes = Vec::new();
        for n in 0..3 {
            let r = invite(&client, n).expect("a final response while overloaded");
            if r.code == 503 {
                let retry = r.header("retry-after").expect("Retry-After on the 503");
                assert!(retry.parse::<u32>().is_ok_and(|s| s > 0), "{retry}");
            }
            codes.push(r.code);
        }
        assert_eq!(codes, [503, 503, 503]);
        refused = metric(metrics, "hotline_sip_dropped_total{reason=\"overload\"}");
        assert_eq!(metric(metrics, "hotline_overloaded"), Some(1.0));
    }
    assert!(refused.is_some_and(|n| n >= 3.0), "{refused:?}");
    // Stalls over: it recovers after a calm stretch, and new calls are taken again.
    wait_metric(metrics, "hotline_overloaded", 0.0, Duration::from_secs(30));
    let after = Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(["--hangup-after", "1"])
        .output()
        .expect("hotline call");
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).expect("summary");
    assert_eq!(after["answered"], true, "{after}");

    // The calls that were up went on to their own end, hearing the flow and leaving
    // their messages.
    for (child, heard) in callers {
        let out = child.wait_with_output().expect("caller");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
        assert_eq!(summary["answered"], true, "{summary}");
        // The caller's own BYE at the end of its time ("our" from its side).
        assert_eq!(summary["end_reason"], "our-bye", "{summary}");
        let samples = common::read_wav(&heard);
        let loud = samples.iter().filter(|s| s.unsigned_abs() > 1000).count();
        assert!(
            loud > 8000,
            "the caller heard prompts: {loud} loud samples in {}",
            samples.len()
        );
    }
    let calls = server.wait_calls(Duration::from_secs(20), |c| {
        c.iter()
            .filter(|c| !c["recordings"].as_array().is_none_or(|r| r.is_empty()))
            .count()
            == 3
    });
    let with_messages: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| !c["recordings"].as_array().is_none_or(|r| r.is_empty()))
        .collect();
    for c in with_messages {
        assert_eq!(c["end_reason"], "caller-bye", "{c}");
        let rec = &c["recordings"][0];
        assert_eq!(rec["kind"], "voicemail", "{rec}");
        assert!(rec["duration_ms"].as_i64().unwrap_or(0) > 1000, "{rec}");
        assert!(std::path::Path::new(rec["path"].as_str().unwrap()).exists());
    }
    let overload_rows = calls
        .iter()
        .filter(|c| c["end_reason"] == "rejected-overload")
        .count();
    assert_eq!(overload_rows, 3, "each refused INVITE is recorded as such");

    // One line on entering and one on leaving overload per episode, never per INVITE.
    let log = server.log_text();
    for line in log.lines().filter(|l| l.contains("media clock")) {
        println!("{line}");
    }
    let entered = log.matches("media clock overloaded").count();
    let left = log.matches("media clock recovered").count();
    assert!(entered >= 1 && entered == left, "{entered} / {left}");
    assert!(entered <= 2, "no flapping: {entered} episodes");
    server.assert_no_panic();
}

/// (policy, real-time priority) of the server's thread named `name`, from
/// /proc/PID/task/TID/stat (fields 41 and 40).
fn thread_scheduling(pid: u32, name: &str) -> Option<(i32, i32)> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised command name, which may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // `rest` starts at field 3.
        let priority = fields.get(40 - 3)?.parse().ok()?;
        let policy = fields.get(41 - 3)?.parse().ok()?;
        return Some((policy, priority));
    }
    None
}

/// [`thread_scheduling`] once the thread exists (up to 10 s after start).
fn wait_thread_scheduling(pid: u32, name: &str) -> (i32, i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = thread_scheduling(pid, name) {
            return found;
        }
        assert!(Instant::now() < deadline, "no thread named {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_media_threads_run_at_the_configured_realtime_priority() {
    // Whether this machine lets us have the priority (root in a container may lack
    // CAP_SYS_NICE), asked the same way the server asks.
    let permitted = std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 7 };
        // SAFETY: changes the scheduling of this short-lived thread only.
        unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_RR, &param) == 0 }
    })
    .join()
    .unwrap();
    let server = Server::start(&["rtp.realtime_priority=7"]);
    let pid = server.child.as_ref().unwrap().id();
    let clock = wait_thread_scheduling(pid, "hotline-clock");
    let receive = wait_thread_scheduling(pid, "hotline-rtp-rx");
    let workers = thread_scheduling(pid, "tokio-rt-worker").expect("a runtime worker");
    assert_eq!(
        workers.0,
        libc::SCHED_OTHER,
        "signalling stays at normal priority"
    );
    if permitted {
        assert_eq!(clock, (libc::SCHED_RR, 7), "clock");
        assert_eq!(receive, (libc::SCHED_RR, 7), "receive thread");
        wait_log(&server, "at real-time priority 7 (SCHED_RR)");
    } else {
        // Without the privilege the server says so and runs at normal priority.
        assert_eq!(clock.0, libc::SCHED_OTHER);
        wait_log(&server, "media threads at normal priority");
    }

    let other = Server::start(&["rtp.realtime_priority=0"]);
    let pid = other.child.as_ref().unwrap().id();
    let clock = wait_thread_scheduling(pid, "hotline-clock");
    assert_eq!(clock, (libc::SCHED_OTHER, 0), "0 means normal scheduling");
}

fn wait_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains(needle) {
        assert!(Instant::now() < deadline, "no log line with {needle:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
