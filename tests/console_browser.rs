//! The console as operators use it: Debian's chromium, headless, driven through
//! chromedriver (WebDriver) against the real binary, with a SIPp phone registered for
//! the operator and callers placed with `hotline call`.
//!
//! The walk: an operator logs in; pauses and resumes from the board (and `hotline
//! queue --json` agrees); a caller presses 0 and is on the board within 2 s without a
//! reload, with its answers; the operator's phone rings and the page shows that
//! caller's answers and reference code; a voice message appears in the inbox and plays
//! in the page's audio element with its stored duration; handled and a note survive a
//! reload and a restart; the reference search finds the call (also from a mistyped
//! code); the CSV export matches `hotline calls --json`; supervisor pages are 403 to
//! an operator; a request without the CSRF token is refused; the audit log shows the
//! listen and the export; five wrong passwords lock the login out. Screenshots of the
//! board, the inbox and the call's page go to docs/console/.

mod common;
mod webclient;

use common::{free_tcp_port, free_udp_port, require_tool, sipp_register, Server, SippPhone};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Two questions (status, zone), 0 for an operator from both, the queue, and a voice
/// message when the caller presses 9 in the queue. Short prompts.
const FLOW: &str = r##"
[flow]
start = "situation"
global_keys = { "0" = "operator_queue" }
first_digit_timeout = 8
inter_digit_timeout = 3
total_timeout = 30
retries = 1
invalid_prompt = "invalid_key"
timeout_prompt = "no_input"
fallback = "operator_queue"

[nodes.situation]
type = "menu"
prompts = ["language_note"]
options = { "1" = "zone", "2" = "zone" }
store_as = "status"

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
prompts = ["beep"]
beep = true
max_seconds = 15
silence_seconds = 5
finish_keys = "#"
confirm_prompt = "message_saved"
failure_prompt = "message_not_saved"
next = "goodbye"
fallback = "goodbye"

[nodes.goodbye]
type = "hangup"
prompts = ["goodbye"]
"##;

struct ChromeDriver(Child);

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless chromium session, driven synchronously.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Client,
    base: String,
    _driver: ChromeDriver,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(console: SocketAddr) -> Browser {
        let port = free_tcp_port();
        let driver = ChromeDriver(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver"),
        );
        let until = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1200,820",
                    "--autoplay-policy=no-user-gesture-required",
                    "--mute-audio",
                    "--lang=en-US",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = rt
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("WebDriver session with chromium");
        Browser {
            rt,
            client,
            base: format!("http://{console}"),
            _driver: driver,
            _profile: profile,
        }
    }

    fn set_base(&mut self, console: SocketAddr) {
        self.base = format!("http://{console}");
    }

    fn goto(&self, path: &str) {
        self.rt
            .block_on(self.client.goto(&format!("{}{path}", self.base)))
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    fn click(&self, css: &str) {
        self.rt
            .block_on(async {
                let e = self.client.find(Locator::Css(css)).await?;
                e.click().await
            })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.rt
            .block_on(async {
                let e = self.client.find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    fn js(&self, script: &str) -> Value {
        self.rt
            .block_on(self.client.execute(script, vec![]))
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Polls `script` until it returns something other than null/false.
    fn wait_js(&self, script: &str, timeout: Duration, what: &str) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "{what}: not within {timeout:?}; page: {}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&self, css: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? e.innerText : null",
            json!(css)
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn refresh(&self) {
        self.rt.block_on(self.client.refresh()).expect("refresh");
    }

    fn cookie(&self, name: &str) -> String {
        let c = self
            .rt
            .block_on(self.client.get_named_cookie(name))
            .expect("cookie");
        format!("{name}={}", c.value())
    }

    fn screenshot(&self, name: &str) {
        let png = self
            .rt
            .block_on(self.client.screenshot())
            .expect("screenshot");
        let dir = root().join("docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        std::fs::write(dir.join(name), png).expect("write screenshot");
    }

    /// Clicks a button that submits a form and waits for the next page.
    fn submit(&self, css: &str) {
        self.js("window.__before_submit = true; return true;");
        self.click(css);
        self.wait_js(
            "return window.__before_submit === undefined && document.readyState === 'complete'",
            Duration::from_secs(10),
            &format!("the page after {css}"),
        );
    }

    fn login(&self, name: &str, password: &str) {
        self.goto("/login?lang=en");
        self.type_into("#name", name);
        self.type_into("#password", password);
        self.submit("main.login button[type=submit]");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.rt.block_on(client.close());
    }
}

fn start_server(data: &Path) -> Server {
    std::fs::write(data.join("flow.toml"), FLOW).expect("flow");
    Server::start(&[
        &format!("ivr.flow=\"{}\"", data.join("flow.toml").display()),
        &format!("storage.data_dir=\"{}\"", data.join("data").display()),
        &format!("privacy.hash_key_file=\"{}\"", data.join("key").display()),
        "console.listen=\"127.0.0.1:0\"",
        "console.time_zone=\"UTC\"",
        "privacy.caller_id=keep",
        "rtp.ports=\"33000-33999\"",
        "limits.max_calls=100",
        "queue.ring_timeout_s=60",
        "queue.max_misses=0",
        "queue.announce_interval_s=0",
        "queue.voicemail_key=\"9\"",
        "queue.wrap_up_s=0",
    ])
}

fn add(server: &Server, name: &str, password: &str, role: &str) {
    let out = server.cli(&[
        "operator",
        "add",
        name,
        "--password",
        password,
        "--role",
        role,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn caller(server: &Server, dtmf: &str, hangup_after: u32) -> Child {
    Command::new(common::bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(["--dtmf", dtmf, "--hangup-after", &hangup_after.to_string()])
        .arg("--play")
        .arg(root().join("tests/data/speech_ru_festival.wav"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hotline call")
}

/// Clicks the board's state button for `user` and waits until the queue and the
/// page both say `state`.
fn set_state_from_board(b: &Browser, server: &Server, user: &str, state: &str) {
    b.click(&format!(
        "#operators tr[data-user=\"{user}\"] button[data-set-state=\"{state}\"]"
    ));
    server.wait_operator_state(user, state, Duration::from_secs(5));
    b.wait_js(
        &format!(
            "return document.querySelector('#operators tr[data-user=\"{user}\"]').dataset.state === '{state}'"
        ),
        Duration::from_secs(3),
        &format!("the board shows {user} {state}"),
    );
}

/// The value a CSV cell holds for a JSON value (the export's rule).
fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    }
}

/// The export of a filter equals `hotline calls --json` for the same filter.
fn export_matches_cli(
    server: &Server,
    session: &webclient::Session,
    day: &str,
    outcome: &str,
) -> usize {
    let r = session.post(
        "/history/export",
        &[("from", day), ("to", day), ("outcome", outcome)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    let mut reader = csv::Reader::from_reader(r.body.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let mut args = vec![
        "calls",
        "--json",
        "--limit",
        "100000",
        "--since",
        day,
        "--until",
        day,
        "--direction",
        "inbound",
    ];
    if !outcome.is_empty() {
        args.extend(["--outcome", outcome]);
    }
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), json.len(), "{outcome}: rows");
    for (row, call) in rows.iter().zip(&json) {
        let fields = call.as_object().unwrap();
        assert_eq!(header.len(), fields.len(), "same fields");
        for (i, name) in header.iter().enumerate() {
            assert_eq!(
                row[i],
                cell(&call[name]),
                "{outcome}: call {} field {name}",
                call["id"]
            );
        }
    }
    rows.len()
}

#[test]
fn operators_work_the_console_in_a_browser() {
    for tool in ["chromium", "chromedriver", "sipp"] {
        if !require_tool(tool) {
            return;
        }
    }
    let data = tempfile::tempdir().expect("data dir");
    let mut server = start_server(data.path());
    let console = server.console.expect("console address");
    add(&server, "anna", "anna-pass-1", "operator");
    add(&server, "olena", "olena-pass-1", "supervisor");

    // Anna's phone: rings when offered a caller, never picks up.
    let phone_port = free_udp_port();
    let _phone = SippPhone::start("operator-noanswer.xml", phone_port, &[]);
    sipp_register(&server, "anna", "anna-pass-1", phone_port);
    server.wait_operator_state("anna", "available", Duration::from_secs(5));

    let mut b = Browser::start(console);
    b.login("anna", "anna-pass-1");
    b.wait_js(
        "return document.querySelector('#board-status.live') !== null",
        Duration::from_secs(10),
        "the board is live",
    );
    b.wait_js(
        "return document.querySelector('#operators tr[data-user=\"anna\"][data-state=\"available\"]') !== null",
        Duration::from_secs(5),
        "Anna available on the board",
    );

    // Pause and resume from the page; the running server agrees.
    set_state_from_board(&b, &server, "anna", "paused");
    set_state_from_board(&b, &server, "anna", "available");
    set_state_from_board(&b, &server, "anna", "paused");

    // A caller answers one question and presses 0: on the board within 2 s, no reload.
    b.js(
        "window.__noReload = true; window.__appeared = {};
         new MutationObserver(() => {
           document.querySelectorAll('#callers tr[data-call]').forEach(tr => {
             if (!(tr.dataset.call in window.__appeared)) window.__appeared[tr.dataset.call] = Date.now();
           });
         }).observe(document.getElementById('callers'), {childList: true, subtree: true});
         return true;",
    );
    let mut first = caller(&server, "1@1.0,0@2.0", 60);
    let row = b.wait_js(
        "const tr = document.querySelector('#callers tr[data-call]');
         return tr ? {call: tr.dataset.call, since: Number(tr.dataset.since),
                      answers: tr.querySelector('.answers').innerText,
                      reference: tr.querySelector('.reference').innerText,
                      appeared: window.__appeared[tr.dataset.call]} : null",
        Duration::from_secs(20),
        "the caller on the board",
    );
    let lag = row["appeared"].as_f64().unwrap() - row["since"].as_f64().unwrap();
    println!("caller on the board {lag:.0} ms after joining the queue");
    assert!(lag < 2000.0, "on the board {lag} ms after joining");
    assert_eq!(row["answers"], "status=1", "{row}");
    assert_eq!(
        b.js("return window.__noReload === true"),
        json!(true),
        "no reload"
    );
    let queue = server.queue_view();
    assert_eq!(queue["callers"].as_array().unwrap().len(), 1, "{queue}");
    let board_reference = row["reference"].as_str().unwrap().to_string();
    assert_eq!(board_reference.len(), 7, "{row}");

    // A second caller, who will leave a voice message from the queue.
    let mut second = caller(&server, "2@1.0,0@2.0,9@4.0,#@12.0", 40);

    // Anna resumes: her phone rings for the first caller, and her page shows who it is.
    b.click("#operators tr[data-user=\"anna\"] button[data-set-state=\"available\"]");
    server.wait_operator_state("anna", "ringing", Duration::from_secs(5));
    let offer = b.wait_js(
        "const s = document.getElementById('my-offer');
         return s.hidden ? null : {answers: document.getElementById('offer-answers').innerText,
                                   reference: document.getElementById('offer-reference').innerText}",
        Duration::from_secs(5),
        "the offer panel",
    );
    assert_eq!(offer["answers"], "status=1", "{offer}");
    assert_eq!(offer["reference"], board_reference.as_str(), "{offer}");
    std::thread::sleep(Duration::from_millis(600));
    b.screenshot("board.png");
    set_state_from_board(&b, &server, "anna", "paused");

    // The message arrives; the first caller gives up.
    let out = second.wait().expect("second caller");
    assert!(out.success());
    let _ = first.kill();
    let _ = first.wait();
    let calls = server.wait_calls(Duration::from_secs(15), |c| {
        c.iter().any(|c| {
            c["recordings"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["kind"] == "voicemail"))
        })
    });
    let message = calls
        .iter()
        .find(|c| {
            c["recordings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["kind"] == "voicemail")
        })
        .expect("a voice message was stored")
        .clone();
    let call_id = message["id"].as_i64().unwrap();
    let reference = message["reference"]
        .as_str()
        .expect("reference")
        .to_string();
    let duration_ms = message["recordings"][0]["duration_ms"].as_f64().unwrap();
    assert!(duration_ms > 3000.0, "{message:#}");
    assert_eq!(message["answers"]["status"], "2");

    // The inbox lists it; its page plays it with the stored duration.
    b.goto("/inbox");
    let row = format!("#inbox tr[data-call-id=\"{call_id}\"]");
    b.wait_js(
        &format!("return document.querySelector('{row}') !== null"),
        Duration::from_secs(5),
        "the message in the inbox",
    );
    assert!(b.text(&row).contains(&reference), "{}", b.text(&row));
    assert!(b.text(&row).contains("status=2"), "{}", b.text(&row));
    b.screenshot("inbox.png");
    b.click(&format!("{row} a[href=\"/calls/{call_id}\"]"));
    b.wait_js(
        "return document.querySelector('#recordings audio') !== null",
        Duration::from_secs(5),
        "the call page",
    );
    let started = b.js("const a = document.querySelector('#recordings audio');
         return a.play().then(() => 'playing', e => 'error: ' + e);");
    assert_eq!(started, json!("playing"), "the audio element plays");
    let played = b.wait_js(
        "const a = document.querySelector('#recordings audio');
         return (isFinite(a.duration) && a.currentTime > 1.0 && !a.error)
           ? {duration: a.duration, position: a.currentTime} : null",
        Duration::from_secs(10),
        "playback advancing",
    );
    let shown = played["duration"].as_f64().unwrap();
    println!(
        "audio element: duration {shown:.3} s, stored {:.3} s, played to {:.2} s",
        duration_ms / 1000.0,
        played["position"].as_f64().unwrap()
    );
    assert!(
        (shown - duration_ms / 1000.0).abs() <= 0.2,
        "element {shown} s vs stored {} s",
        duration_ms / 1000.0
    );
    b.js("document.querySelector('#recordings audio').pause(); return true;");

    // Handled, and a note; both survive a reload.
    b.submit("#mark-handled");
    b.wait_js(
        "return document.querySelector('#handled-state[data-handled=\"1\"]') !== null",
        Duration::from_secs(5),
        "marked handled",
    );
    let note = "Called back on the number given; safe. Дзвінок повторно о 18:00.";
    b.type_into("#note", note);
    b.submit("#save-note");
    b.wait_js(
        "return document.querySelectorAll('ol.notes li').length === 1",
        Duration::from_secs(5),
        "the note",
    );
    b.refresh();
    assert!(
        b.text("#handled-state").contains("anna"),
        "{}",
        b.text("#handled-state")
    );
    assert!(b.text("ol.notes").contains(note), "{}", b.text("ol.notes"));
    b.js("window.scrollTo(0, 0); return true;");
    b.screenshot("call.png");

    // The reference search finds the call, also from a code with one digit wrong.
    b.goto(&format!("/inbox?ref={reference}"));
    assert!(
        b.js(&format!(
            "return document.querySelector('#search-results tr[data-call-id=\"{call_id}\"]') !== null"
        )) == json!(true),
        "{}",
        b.text("#search-results")
    );
    let mut typo: Vec<u8> = reference.clone().into_bytes();
    typo[3] = if typo[3] == b'9' { b'0' } else { typo[3] + 1 };
    let typo = String::from_utf8(typo).unwrap();
    b.goto(&format!("/inbox?ref={typo}"));
    let results = b.text("#search-results");
    assert!(results.contains("not a valid code"), "{results}");
    assert!(
        b.js(&format!(
            "return document.querySelector('#search-results tr[data-call-id=\"{call_id}\"]') !== null"
        )) == json!(true),
        "a one-digit slip finds the call: {results}"
    );

    // The export matches `hotline calls --json` for the same filter (and is audited).
    let session = webclient::Session {
        addr: console,
        cookie: b.cookie("hl_session"),
        csrf: b
            .js("return document.getElementById('csrf').content")
            .as_str()
            .unwrap()
            .to_string(),
    };
    let today = message["started_at"].as_str().unwrap()[..10].to_string();
    assert_eq!(
        export_matches_cli(&server, &session, &today, "voicemail"),
        1
    );
    let all = export_matches_cli(&server, &session, &today, "");
    assert_eq!(all, 2, "both callers, no operator legs");

    // Supervisor pages are not for operators; a change without the token is refused.
    b.goto("/admin/operators");
    assert!(b.text("h1").contains("Not allowed"), "{}", b.text("h1"));
    assert_eq!(session.get("/admin/audit").status, 403);
    let r = webclient::post_form(
        console,
        &format!("/calls/{call_id}/notes"),
        Some(&session.cookie),
        &[("body", "forged")],
    );
    assert_eq!(r.status, 403);
    let r = session.post_json(
        "/api/operators/state",
        None,
        r#"{"user":"anna","state":"available"}"#,
    );
    assert_eq!(r.status, 403);

    // A restart loses nothing that was marked or written.
    server.stop();
    let server = start_server(data.path());
    let console = server.console.expect("console address");
    b.set_base(console);
    b.login("anna", "anna-pass-1");
    b.goto(&format!("/calls/{call_id}"));
    assert!(
        b.text("#handled-state").contains("anna"),
        "after restart: {}",
        b.text("#handled-state")
    );
    assert!(
        b.text("ol.notes").contains(note),
        "after restart: {}",
        b.text("ol.notes")
    );
    b.submit("header form[action=\"/logout\"] button");

    // A supervisor sees who listened and who exported, and cannot edit the log.
    b.login("olena", "olena-pass-1");
    b.goto("/admin/audit");
    let audit = b.js(
        "return Array.from(document.querySelectorAll('#audit tbody tr')).map(tr =>
           [tr.dataset.action, tr.cells[1].innerText, tr.cells[3].innerText])",
    );
    let rows = audit.as_array().unwrap();
    let has = |action: &str| rows.iter().any(|r| r[0] == action && r[1] == "anna");
    assert!(has("listen"), "{audit}");
    assert!(has("export"), "{audit}");
    assert!(has("note") && has("handled"), "{audit}");
    assert!(
        rows.iter()
            .any(|r| r[0] == "listen" && r[2] == format!("#{call_id}")),
        "{audit}"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#audit form, #audit button').length"),
        json!(0)
    );
    b.submit("header form[action=\"/logout\"] button");

    // Five wrong passwords lock the login out, the right one included.
    for _ in 0..5 {
        b.login("anna", "not-the-password");
        assert!(
            b.text("p.error").contains("Wrong name or password")
                || b.text("p.error").contains("Too many")
        );
    }
    b.login("anna", "anna-pass-1");
    assert!(
        b.text("p.error").contains("Too many failed logins"),
        "{}",
        b.text("main")
    );
    server.assert_no_panic();
}
