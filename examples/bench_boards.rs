//! Live boards under load, for `bench/console-load.sh`: N browsers' worth of board
//! streams (one console login and one `/events` stream each), counted over a window;
//! optionally an operator toggled between available and paused through the console's
//! API so the board changes at its highest rate; and the server's media clock
//! lateness read from `/metrics` at the window's edges.
//!
//!     bench_boards CONSOLE_ADDR --boards 50 --prefix board --password P \
//!         [--toggle USER --toggle-password P --toggle-ms 125] \
//!         [--start-file PROGRESS --start-marker "window open"] --duration 30 \
//!         [--metrics ADDR]
//!
//! Plain sockets and a small HTTP/1.1 reader: the figures must not depend on a
//! client library's buffering.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

struct Args {
    console: SocketAddr,
    boards: usize,
    prefix: String,
    password: String,
    toggle: Option<(String, String)>,
    toggle_ms: u64,
    start_file: Option<String>,
    start_marker: String,
    duration: f64,
    metrics: Option<SocketAddr>,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let console = it
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: bench_boards CONSOLE_ADDR [options]");
    let mut a = Args {
        console,
        boards: 50,
        prefix: "board".into(),
        password: String::new(),
        toggle: None,
        toggle_ms: 125,
        start_file: None,
        start_marker: "window open".into(),
        duration: 30.0,
        metrics: None,
    };
    let mut toggle_user = None;
    let mut toggle_password = String::new();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--boards" => a.boards = value().parse().expect("--boards"),
            "--prefix" => a.prefix = value(),
            "--password" => a.password = value(),
            "--toggle" => toggle_user = Some(value()),
            "--toggle-password" => toggle_password = value(),
            "--toggle-ms" => a.toggle_ms = value().parse().expect("--toggle-ms"),
            "--start-file" => a.start_file = Some(value()),
            "--start-marker" => a.start_marker = value(),
            "--duration" => a.duration = value().parse().expect("--duration"),
            "--metrics" => a.metrics = Some(value().parse().expect("--metrics")),
            other => panic!("unknown option {other}"),
        }
    }
    a.toggle = toggle_user.map(|u| (u, toggle_password));
    a
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| {
                let (k, rest) = v.split_once('=')?;
                (k == name).then(|| rest.split(';').next().unwrap_or("").to_string())
            })
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    s.write_all(body).expect("send body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn token_in(page: &str, marker: &str) -> Option<String> {
    let i = page.find(marker)?;
    let rest = &page[i + marker.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Logs in; returns the session cookie and the page's CSRF token.
fn login(addr: SocketAddr, name: &str, password: &str) -> (String, String) {
    let page = http(addr, "GET", "/login?lang=en", &[], b"");
    let pre = page.cookie("hl_login").expect("pre-login cookie");
    let token = token_in(
        &String::from_utf8_lossy(&page.body),
        "name=\"csrf\" value=\"",
    )
    .expect("token");
    let body = format!(
        "csrf={}&name={}&password={}",
        enc(&token),
        enc(name),
        enc(password)
    );
    let r = http(
        addr,
        "POST",
        "/login",
        &[
            ("Cookie", &format!("hl_login={pre}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        r.status,
        303,
        "login of {name}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let cookie = format!("hl_session={}", r.cookie("hl_session").expect("session"));
    let board = http(addr, "GET", "/", &[("Cookie", &cookie)], b"");
    let csrf = token_in(
        &String::from_utf8_lossy(&board.body),
        "name=\"csrf\" content=\"",
    )
    .expect("csrf");
    (cookie, csrf)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Counts {
    events: AtomicU64,
    bytes: AtomicU64,
    lags_ms: Mutex<Vec<i64>>,
}

/// Reads one board stream (chunked SSE) until `stop`, counting inside the window.
fn stream(
    addr: SocketAddr,
    cookie: String,
    counting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n").expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Response head.
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
    }
    // Chunks: size line, payload, CRLF. Payload lines are SSE fields.
    let mut pending = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
            continue;
        };
        let mut chunk = vec![0u8; size + 2];
        let mut got = 0;
        while got < chunk.len() {
            match r.read(&mut chunk[got..]) {
                Ok(0) => return,
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        pending.push_str(&String::from_utf8_lossy(&chunk[..size]));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if !event.starts_with("event: board") || !counting.load(Ordering::Relaxed) {
                continue;
            }
            counts.events.fetch_add(1, Ordering::Relaxed);
            counts
                .bytes
                .fetch_add(event.len() as u64, Ordering::Relaxed);
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                    if let Some(sent) = v["now_ms"].as_i64() {
                        counts.lags_ms.lock().unwrap().push(now_ms() - sent);
                    }
                }
            }
        }
    }
}

/// The media clock's lateness histogram from `/metrics`: (upper bound s, cumulative).
fn lateness(metrics: SocketAddr) -> Vec<(f64, u64)> {
    let r = http(metrics, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let mut text = text.as_str();
    let mut out = Vec::new();
    const MARKER: &str = "hotline_rtp_send_lateness_seconds_bucket{le=\"";
    while let Some(i) = text.find(MARKER) {
        text = &text[i + MARKER.len()..];
        let q = text.find('"').unwrap_or(0);
        let le = &text[..q];
        let rest = &text[q + 2..];
        let n: u64 = rest
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(0.0)
        };
        out.push((bound, n));
    }
    out
}

fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    buckets.iter().find(|(_, n)| *n >= want).map(|(b, _)| *b)
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let a = args();
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();
    for i in 1..=a.boards {
        let (cookie, _) = login(a.console, &format!("{}{i:02}", a.prefix), &a.password);
        let (counting, stop, counts) = (counting.clone(), stop.clone(), counts.clone());
        let addr = a.console;
        threads.push(std::thread::spawn(move || {
            stream(addr, cookie, counting, stop, counts)
        }));
    }
    eprintln!("bench_boards: {} boards connected", a.boards);
    let toggles = Arc::new(AtomicU64::new(0));
    if let Some((user, password)) = a.toggle.clone() {
        let (cookie, csrf) = login(a.console, &user, &password);
        let (stop, toggles, addr, every) = (stop.clone(), toggles.clone(), a.console, a.toggle_ms);
        threads.push(std::thread::spawn(move || {
            let mut available = false;
            while !stop.load(Ordering::Relaxed) {
                available = !available;
                let body = format!(
                    "{{\"user\":\"{user}\",\"state\":\"{}\"}}",
                    if available { "available" } else { "paused" }
                );
                let r = http(
                    addr,
                    "POST",
                    "/api/operators/state",
                    &[
                        ("Cookie", &cookie),
                        ("X-CSRF-Token", &csrf),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                );
                if r.status == 200 {
                    toggles.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(every));
            }
        }));
    }
    if let Some(file) = &a.start_file {
        loop {
            if std::fs::read_to_string(file).is_ok_and(|t| t.contains(&a.start_marker)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let before = a.metrics.map(lateness).unwrap_or_default();
    let toggles_before = toggles.load(Ordering::Relaxed);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.duration));
    counting.store(false, Ordering::Relaxed);
    let took = started.elapsed().as_secs_f64();
    let after = a.metrics.map(lateness).unwrap_or_default();
    let toggled = toggles.load(Ordering::Relaxed) - toggles_before;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let events = counts.events.load(Ordering::Relaxed);
    let bytes = counts.bytes.load(Ordering::Relaxed);
    let mut lags = counts.lags_ms.lock().unwrap().clone();
    lags.sort_unstable();
    let delta: Vec<(f64, u64)> = after
        .iter()
        .zip(before.iter().map(|(_, n)| *n).chain(std::iter::repeat(0)))
        .map(|((b, n), m)| (*b, n.saturating_sub(m)))
        .collect();
    let report = serde_json::json!({
        "boards": a.boards,
        "window_s": took,
        "events": events,
        "events_per_s": events as f64 / took,
        "events_per_board_per_s": if a.boards > 0 { events as f64 / took / a.boards as f64 } else { 0.0 },
        "bytes_per_s": bytes as f64 / took,
        "delivery_lag_ms": {"p50": percentile(&lags, 0.5), "p99": percentile(&lags, 0.99), "max": lags.last().copied().unwrap_or(0)},
        "state_changes": toggled,
        "clock_ticks": delta.last().map(|(_, n)| *n).unwrap_or(0),
        "clock_lateness_ms": {
            "p50": quantile(&delta, 0.5).map(|s| s * 1000.0),
            "p99": quantile(&delta, 0.99).map(|s| s * 1000.0),
            "p99_9": quantile(&delta, 0.999).map(|s| s * 1000.0),
        },
    });
    println!("{report}");
}
