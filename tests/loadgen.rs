//! The caller-side load generator (examples/loadgen) checked against the real
//! binary before any figure of it is believed: a few callers walk the shipped flow
//! (short prompts), half keying in-band, half RFC 4733, half leaving a voice message
//! that they all end in the same instant. What the generator says it did must be
//! what the server stored (`hotline calls --json`): every call, every key, each
//! message. The generator's own modules are compiled in here, so their unit tests
//! run with this file.

mod common;

#[allow(dead_code)]
#[path = "../examples/loadgen"]
mod loadgen {
    pub mod cpu;
    pub mod dialog;
    pub mod media;
    pub mod net;
    pub mod options;
    pub mod probe;
    pub mod report;
    pub mod run;
    pub mod rx;
    pub mod sip;
    pub mod stats;
}

use common::Server;
use loadgen::options::{parse_schedule, Finish, Keying, Options};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped flow with the long greeting and voice-message introduction replaced
/// by a 2.9 s prompt and the reference read once: same nodes, same logic.
fn quick_flow(dir: &Path) -> String {
    let flow = std::fs::read_to_string(root().join("config/ivr.toml")).expect("ivr.toml");
    let quick = flow
        .replace(
            r#"prompts = ["greeting", "language_note", "keys_hint"]"#,
            r#"prompts = ["language_note"]"#,
        )
        .replace(
            r#"prompts = ["voicemail_intro"]"#,
            r#"prompts = ["language_note"]"#,
        )
        .replace("repeat = 2", "repeat = 1");
    assert_ne!(quick, flow);
    let path = dir.join("ivr-quick.toml");
    std::fs::write(&path, quick).expect("write flow");
    format!("ivr.flow=\"{}\"", path.display())
}

#[test]
fn generator_calls_press_keys_leave_messages_and_its_summary_matches_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = quick_flow(dir.path());
    let server = Server::start_in(
        dir,
        &[
            &flow,
            // Callers wait in the queue; the message callers leave it with key 1.
            "queue.voicemail_when_nobody_logged_in=false",
            // Every caller is the generator's one address; its Call-IDs are matched
            // against the store, so they are kept as received.
            "limits.max_calls_per_source=0",
            "privacy.caller_id=keep",
        ],
    );
    let SocketAddr::V4(addr) = server.udp else {
        panic!("IPv4 server address expected")
    };
    let mut opts = Options::new(addr);
    opts.calls = 6;
    opts.rate = 20.0;
    opts.voicemail_share = 0.5;
    opts.keying = Keying::Mixed;
    // During the 2.9 s greeting (type-ahead); "connecting" ends about 8 s in; the
    // 2.9 s introduction and the beep: recording from about 12.5 s.
    opts.keys = parse_schedule("1@1,2@1.8,#@2.6").unwrap();
    opts.voicemail_keys = parse_schedule("1@9").unwrap();
    opts.finish = Finish::Burst;
    opts.settle = Duration::from_secs(14);
    opts.duration = Duration::from_secs(4);
    opts.drain = Duration::from_secs(40);
    opts.rtp_sockets = 2;
    opts.server_pid = server.child.as_ref().map(|c| c.id());
    opts.per_call = true;

    let report = loadgen::run::run(&opts, &mut |l| eprintln!("loadgen: {l}")).expect("run");
    println!("{}", report.human());
    let c = &report.calls;
    assert_eq!((c.planned, c.dialed, c.answered), (6, 6, 6), "{c:?}");
    assert!(c.failed.is_empty(), "{c:?}");
    assert_eq!(c.voicemail_callers, 3);
    assert_eq!(c.messages_finished, 3);
    assert_eq!(report.burst.finishers, 3, "all three in the burst");
    assert_eq!(
        c.ended_by_server, 3,
        "the server says goodbye after a message"
    );
    assert_eq!(c.ended_by_us.get("200"), Some(&3), "{c:?}");
    assert_eq!((c.bye_timeouts, c.unfinished), (0, 0));
    assert!(c.keys_rfc4733 > 0 && c.keys_inband > 0, "{c:?}");
    assert_eq!(report.window.calls_up_at_start, 6);
    assert_eq!(report.window.recording_callers_at_start, 3);

    let r = &report.received;
    assert!(r.packets > 6 * 50 * 15, "{r:?}");
    assert_eq!(
        (r.missing, r.ts_jumps, r.ssrc_changes, r.dropped_by_us),
        (0, 0, 0, 0),
        "{r:?}"
    );
    assert!(report.deviation.n >= 6 * 150, "{:?}", report.deviation);
    assert_eq!(report.deviation_per_stream.streams, 6);
    assert!(report.burst.others.n >= 3 * 40, "{:?}", report.burst);
    assert!(report.probe.n >= 150, "{:?}", report.probe);
    assert!(report.generator.cpu_s > 0.0);
    assert!(report.sent.rtp_packets > 6 * 50 * 15);
    let srv = report.server.as_ref().expect("server figures");
    assert!(srv.rss_kb > 0 && srv.cpu_s >= 0.0, "{srv:?}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["calls"]["answered"], 6);

    // What the server stored, call by call.
    let lines = report.per_call.as_ref().expect("per-call lines");
    let rows = server.wait_calls(Duration::from_secs(20), |rows| {
        rows.len() == 6 && rows.iter().all(|r| r["end_reason"].is_string())
    });
    assert_eq!(rows.len(), 6);
    for line in lines {
        let row = rows
            .iter()
            .find(|r| r["sip_call_id"] == line.call_id.as_str())
            .unwrap_or_else(|| panic!("{} stored", line.call_id));
        let expected_keys = if line.voicemail { "12#1#" } else { "12#" };
        assert_eq!(line.keys, expected_keys);
        assert_eq!(row["digits"], expected_keys, "{row}");
        let source = match line.keying {
            Some(loadgen::media::KeyMode::Rfc4733) => "rfc4733",
            Some(loadgen::media::KeyMode::Inband) => "inband",
            None => panic!("keying of {}", line.call_id),
        };
        let sources = row["digit_sources"].as_array().expect("sources");
        assert!(sources.iter().all(|s| s == source), "{row}");
        assert_eq!(row["answers"]["status"], "1", "{row}");
        assert_eq!(row["answers"]["zone"], "2", "{row}");
        assert_eq!(row["answers"]["unit"], "", "{row}");
        assert_eq!(line.missing, 0);
        let recordings = row["recordings"].as_array().expect("recordings");
        if line.voicemail {
            assert_eq!(line.outcome, "server-bye");
            assert_eq!(row["end_reason"], "our-bye", "{row}");
            assert_eq!(recordings.len(), 1, "{row}");
            let rec = &recordings[0];
            assert_eq!(rec["kind"], "voicemail");
            assert_eq!(rec["partial"], false, "ended with the key: {rec}");
            let ms = rec["duration_ms"].as_i64().unwrap();
            assert!((1500..=8000).contains(&ms), "{rec}");
            assert!(Path::new(rec["path"].as_str().unwrap()).exists());
            let path = row["path"].to_string();
            assert!(
                path.contains("reference") && path.contains("goodbye"),
                "{row}"
            );
        } else {
            assert_eq!(line.outcome, "our-bye-200");
            assert_eq!(row["end_reason"], "caller-bye", "{row}");
            assert!(recordings.is_empty(), "{row}");
        }
    }
    server.assert_no_panic();
}

/// Churn: every call hangs up a random 3-6 s after its answer and a new one takes its
/// place, so 4 are up at once through a 14 s window and each caller hears what its
/// length allows. Every call the generator placed is stored, hung up by the caller.
#[test]
fn churn_replaces_each_call_that_ends_and_keeps_the_number_up() {
    let server = Server::start(&["queue.voicemail_when_nobody_logged_in=false"]);
    let SocketAddr::V4(addr) = server.udp else {
        panic!("IPv4 server address expected")
    };
    let mut opts = Options::new(addr);
    opts.calls = 4;
    opts.rate = 20.0;
    opts.voicemail_share = 0.0;
    opts.churn = Some((Duration::from_secs(3), Duration::from_secs(6)));
    opts.duration = Duration::from_secs(14);
    opts.rtp_sockets = 1;
    opts.per_call = true;

    let report = loadgen::run::run(&opts, &mut |l| eprintln!("loadgen: {l}")).expect("run");
    println!("{}", report.human());
    let c = &report.calls;
    // 14 s of 4 lines at 3-6 s a call: at least 4 × 14 / 6 calls, at most 4 × 16 / 3.
    assert!((10..=22).contains(&c.answered), "{c:?}");
    assert_eq!(c.dialed, c.answered, "{c:?}");
    assert!(c.failed.is_empty(), "{c:?}");
    assert_eq!((c.bye_timeouts, c.unfinished, c.ended_by_server), (0, 0, 0));
    assert_eq!(c.ended_by_us.get("200"), Some(&c.answered), "{c:?}");
    assert_eq!(report.window.calls_up_at_start, 4);
    let lines = report.per_call.as_ref().expect("per-call lines");
    for line in lines {
        // 50 packets a second of the server's audio for as long as the call lasted
        // (shorter only for the calls cut at the end of the window).
        assert!(line.packets <= 6 * 50 + 25, "{line:?}");
        assert_eq!(line.missing, 0, "{line:?}");
    }
    let full = lines.iter().filter(|l| l.packets >= 3 * 50 - 25).count();
    assert!(
        full + 4 >= lines.len(),
        "only the last calls are cut short: {lines:?}"
    );

    let rows = server.wait_calls(Duration::from_secs(20), |rows| {
        rows.len() == lines.len() && rows.iter().all(|r| r["end_reason"].is_string())
    });
    assert_eq!(rows.len(), lines.len());
    for row in &rows {
        assert_eq!(row["end_reason"], "caller-bye", "{row}");
    }
    server.assert_no_panic();
}
