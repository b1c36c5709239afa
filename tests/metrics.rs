//! `/metrics` scraped by a real Prometheus (Debian's package): the server's active
//! calls read 1 during a test call and 0 after it, the text parses (the target is
//! up), and no label carries anything about a caller.

mod common;
mod webclient;

use common::{free_tcp_port, require_tool, Server};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn scraping(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: hotline\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query with one result, if any.
    fn query(&self, q: &str) -> Option<f64> {
        let out = webclient::raw(
            self.addr,
            format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(5),
        )
        .ok()?;
        let r = webclient::parse(&out)?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    fn wait_for(&self, q: &str, want: f64, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.query(q);
            if got == Some(want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{q} is {got:?}, not {want}, after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Label keys and the values each may take: fixed vocabularies only.
fn check_labels(text: &str) {
    let end_reasons = [
        "caller-bye",
        "our-bye",
        "cancel",
        "timeout-no-ack",
        "max-duration",
        "rtp-timeout",
        "rejected-busy",
        "rejected-overload",
        "rejected-codec",
        "timeout",
        "shutdown",
        "error",
    ];
    let mut seen = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(open) = line.find('{') else { continue };
        let close = line.find('}').expect("closing brace");
        for pair in line[open + 1..close].split(',') {
            let (k, v) = pair.split_once('=').expect("key=value");
            let v = v.trim_matches('"');
            let ok = match k {
                "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                "outcome" => ["operator", "voicemail", "abandoned", "ivr", "answered"].contains(&v),
                "reason" => {
                    end_reasons.contains(&v)
                        || (v.starts_with("rejected-") && v[9..].parse::<u16>().is_ok())
                        || [
                            "rate_limited",
                            "malformed",
                            "refused",
                            "busy",
                            "overload",
                            "stray_response",
                            "auth_failed",
                            "replayed",
                        ]
                        .contains(&v)
                }
                "kind" => [
                    "voicemail",
                    "conversation",
                    "request",
                    "send_error",
                    "queue_full",
                    "tcp_refused",
                    "tcp_message_timeout",
                    "tls_handshake_failure",
                ]
                .contains(&v),
                "state" => [
                    "offline",
                    "available",
                    "ringing",
                    "on_call",
                    "wrap_up",
                    "paused",
                ]
                .contains(&v),
                "result" => ["ok", "wrong_password", "locked_out", "busy"].contains(&v),
                _ => false,
            };
            assert!(ok, "label {k}={v} in: {line}");
            seen += 1;
        }
    }
    assert!(seen > 20, "labels were checked ({seen})");
}

#[test]
fn prometheus_sees_a_call_come_and_go() {
    if !require_tool("prometheus") {
        return;
    }
    let server = Server::start(&[
        "metrics.listen=\"127.0.0.1:0\"",
        "privacy.caller_id=keep",
        "rtp.ports=\"34000-34999\"",
        "limits.max_calls=100",
    ]);
    let target = server.metrics.expect("metrics address printed");
    let prom = Prometheus::scraping(target);
    prom.wait_for("up", 1.0, Duration::from_secs(30));
    prom.wait_for("hotline_active_calls", 0.0, Duration::from_secs(10));

    let call = Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(["--dtmf", "1@1.0", "--hangup-after", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hotline call");
    let seen = prom.wait_for("hotline_active_calls", 1.0, Duration::from_secs(9));
    println!("Prometheus saw the call after {seen:?}");
    // The text as scraped during the call: caller data nowhere in a label.
    let text = webclient::get(target, "/metrics", None);
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        text.header("content-type")
    );
    let body = text.text();
    assert!(body.trim_end().ends_with("# EOF"));
    check_labels(&body);
    let out = call.wait_with_output().expect("call output");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["answered"], true, "{summary}");
    let gone = prom.wait_for("hotline_active_calls", 0.0, Duration::from_secs(10));
    println!("and its end after {gone:?}");
    prom.wait_for("sum(hotline_calls_total)", 1.0, Duration::from_secs(10));
    let ended = prom.query("sum(hotline_calls_ended_total)").unwrap_or(0.0);
    assert!(ended >= 1.0, "{ended}");
    let ticks = prom
        .query("hotline_rtp_send_lateness_seconds_count")
        .unwrap_or(0.0);
    assert!(
        ticks > 100.0,
        "the media clock's lateness is measured: {ticks}"
    );

    // What the server stored of the caller is not in the scraped text.
    let calls = server.calls_json();
    let stored = &calls[0];
    let text = webclient::get(target, "/metrics", None).text();
    for v in [
        &stored["from"],
        &stored["remote_addr"],
        &stored["sip_call_id"],
    ] {
        if let Some(s) = v.as_str() {
            assert!(!text.contains(s), "{s} appears in /metrics");
        }
    }
    check_labels(&text);
    server.assert_no_panic();
}
