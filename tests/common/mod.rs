//! Shared helpers for tests that run the real `hotline` binary on loopback ports.
#![allow(dead_code)]

pub mod tls_phone;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hotline")
}

/// A running server with its own data directory; killed on drop. Fails the test if
/// its log shows a panic.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub log: PathBuf,
    pub overrides: Vec<String>,
    /// The web console and `/metrics`, when the test turned them on (off by default,
    /// so that parallel servers do not fight over their default ports).
    pub console: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        Self::start_in_with(dir, &[], extra)
    }

    /// [`Server::start_in`] with options of `hotline serve` itself (e.g. `--drain`).
    pub fn start_in_with(dir: tempfile::TempDir, serve_args: &[&str], extra: &[&str]) -> Server {
        let log = dir.path().join("server.log");
        let mut overrides = vec![
            r#"sip.listen=["udp:127.0.0.1:0","tcp:127.0.0.1:0"]"#.to_string(),
            format!("storage.data_dir=\"{}\"", dir.path().join("data").display()),
            "console.listen=\"\"".to_string(),
            "metrics.listen=\"\"".to_string(),
        ];
        overrides.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(bin());
        cmd.arg("serve").args(serve_args);
        for o in &overrides {
            cmd.arg("--set").arg(o);
        }
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = cmd
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "hotline=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start hotline");
        // The bound addresses are in the server's start-up log lines.
        let until = Instant::now() + Duration::from_secs(60);
        let (udp, tcp, console, metrics) = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let addr = |what: &str| {
                listening_on(&text, what).map(|a| a.parse::<SocketAddr>().expect(what))
            };
            if let (Some(udp), Some(tcp)) =
                (addr("SIP listening on udp:"), addr("SIP listening on tcp:"))
            {
                let console = listening_on(&text, "console listening on ")
                    .map(|url| url.split("://").nth(1).expect("console url"))
                    .map(|a| a.parse().expect("console addr"));
                let metrics = listening_on(&text, "metrics listening on http://").map(|a| {
                    a.trim_end_matches("/metrics")
                        .parse()
                        .expect("metrics addr")
                });
                break (udp, tcp, console, metrics);
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > until {
                let _ = child.kill();
                panic!("server did not start; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Server {
            child: Some(child),
            dir,
            udp,
            tcp,
            log,
            overrides,
            console,
            metrics,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a hotline subcommand against this server's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        for o in &self.overrides {
            cmd.arg("--set").arg(o);
        }
        cmd.output().expect("run hotline")
    }

    pub fn calls_json(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["calls", "--json", "--limit", "100000"]);
        assert!(
            out.status.success(),
            "hotline calls failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("calls json")
    }

    /// Waits until `pred` holds for the call list (the store writes asynchronously).
    pub fn wait_calls(
        &self,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let until = Instant::now() + timeout;
        loop {
            let calls = self.calls_json();
            if pred(&calls) || Instant::now() > until {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `hotline operator add NAME --password P --json`; returns the SIP username.
    pub fn add_operator(&self, name: &str, password: &str) -> String {
        let out = self.cli(&["operator", "add", name, "--password", password, "--json"]);
        assert!(
            out.status.success(),
            "operator add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("operator json");
        v["sip_username"]
            .as_str()
            .expect("sip_username")
            .to_string()
    }

    /// `hotline queue --json` from the running server.
    pub fn queue_view(&self) -> serde_json::Value {
        let out = self.cli(&["queue", "--json"]);
        assert!(
            out.status.success(),
            "hotline queue: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let queue: serde_json::Value = serde_json::from_slice(&out.stdout).expect("queue json");
        assert_eq!(queue["ok"], true, "{queue}");
        queue
    }

    /// The queue's entry for an operator, by pseudonym or SIP username.
    pub fn operator_entry(&self, who: &str) -> Option<serde_json::Value> {
        self.queue_view()["operators"]
            .as_array()?
            .iter()
            .find(|o| o["name"] == who || o["sip_username"] == who)
            .cloned()
    }

    /// Polls the queue until the operator is in `state`; returns its entry.
    pub fn wait_operator_state(
        &self,
        who: &str,
        state: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let until = Instant::now() + timeout;
        loop {
            let op = self.operator_entry(who);
            match op {
                Some(op) if op["state"] == state => return op,
                _ => assert!(
                    Instant::now() < until,
                    "{who} is {op:?}, expected {state}; queue: {}\nlog:\n{}\n",
                    self.queue_view(),
                    self.log_text()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn assert_no_panic(&self) {
        let log = self.log_text();
        assert!(!log.contains("panicked"), "server panicked:\n{log}");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: orderly shutdown.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether an independent SIP tool is installed. Under CI its absence fails the test.
pub fn require_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found && std::env::var_os("CI").is_some() {
        panic!("{name} is required in CI (install it: see .ci/run)");
    }
    if !found {
        eprintln!("skipping: {name} not installed (set CI=1 to make this a failure)");
    }
    found
}

/// A SIP response as the tests look at it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub code: u16,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.text.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

pub fn parse_status(data: &[u8]) -> Option<Resp> {
    let text = String::from_utf8_lossy(data).to_string();
    let first = text.lines().next()?;
    let code = first.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
    Some(Resp { code, text })
}

/// Receives until a response for `call_id` (or any response when None) arrives.
pub fn recv_response(sock: &UdpSocket, call_id: Option<&str>, timeout: Duration) -> Option<Resp> {
    let until = Instant::now() + timeout;
    let mut buf = [0u8; 65536];
    while Instant::now() < until {
        sock.set_read_timeout(Some(
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return None;
        };
        let Some(r) = parse_status(&buf[..n]) else {
            continue;
        };
        match call_id {
            Some(id) if r.header("call-id").or_else(|| r.header("i")).as_deref() != Some(id) => {
                continue
            }
            _ => return Some(r),
        }
    }
    None
}

/// A plain UDP SIP client for scripted message exchanges.
pub struct RawClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl RawClient {
    pub fn new(server: SocketAddr) -> RawClient {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        RawClient { sock, server }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    pub fn send(&self, msg: &str) {
        self.sock
            .send_to(msg.as_bytes(), self.server)
            .expect("send");
    }

    pub fn invite(&self, call_id: &str, branch: &str, rtp_port: u16) -> String {
        let local = self.local();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        );
        format!(
            "INVITE sip:hotline@{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:tester@{local}>;tag=t{branch}\r\nTo: <sip:hotline@{srv}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:tester@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            srv = self.server,
            len = sdp.len()
        )
    }

    /// ACK or BYE inside the dialog the 200 `resp` established.
    pub fn in_dialog(&self, method: &str, resp: &Resp, cseq: u32, branch: &str) -> String {
        let local = self.local();
        let to = resp.header("to").unwrap_or_default();
        let from = resp.header("from").unwrap_or_default();
        let call_id = resp.header("call-id").unwrap_or_default();
        format!(
            "{method} sip:hotline@{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            srv = self.server
        )
    }
}

/// A UDP port free at the time of the call, for tools that need a port number.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The RFC 4475 / RFC 5118 torture messages and their expected verdicts.
pub fn torture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sip-torture")
}

/// baresip ignores an interface whose only address is 127.0.0.1. Inside the test
/// network namespace `scripts/test-isolated.sh` adds 127.0.0.2 to lo; point baresip
/// at lo then, and let it choose elsewhere.
pub fn baresip_interface_args() -> Vec<&'static str> {
    let out = Command::new("ip")
        .args(["-4", "addr", "show", "lo"])
        .output();
    let has_second = out
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("127.0.0.2"))
        .unwrap_or(false);
    if has_second {
        vec!["-n", "lo"]
    } else {
        vec![]
    }
}

/// First channel of a WAV file (8 kHz expected).
pub fn read_wav(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(spec.sample_rate, 8000, "{}", path.display());
    let ch = spec.channels as usize;
    let all: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    all.chunks(ch).map(|c| c[0]).collect()
}

/// Every `.wav` under `dir`, recursively.
pub fn wav_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(wav_files(&p));
        } else if p.extension().is_some_and(|x| x == "wav") {
            out.push(p);
        }
    }
    out
}

/// Pearson correlation of `needle` against `hay[lag..]`, best over `lags`: how the
/// tests decide that one recording is another after G.711. Returns (corr, lag).
pub fn best_match(needle: &[i16], hay: &[i16], lags: std::ops::Range<usize>) -> (f64, usize) {
    let n = needle.len();
    let mean_a = needle.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let var_a: f64 = needle.iter().map(|&x| (x as f64 - mean_a).powi(2)).sum();
    let mut best = (f64::MIN, 0);
    for lag in lags {
        let Some(seg) = hay.get(lag..lag + n) else {
            break;
        };
        let mean_b = seg.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let (mut cov, mut var_b) = (0.0, 0.0);
        for (a, b) in needle.iter().zip(seg) {
            let (da, db) = (*a as f64 - mean_a, *b as f64 - mean_b);
            cov += da * db;
            var_b += db * db;
        }
        let c = cov / (var_a * var_b).sqrt().max(1e-9);
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}

/// `best_match` over every lag of `hay`: a search in 10 ms steps, then one refined
/// around the best, so the test need not know when in the call the audio was taken.
pub fn best_match_anywhere(needle: &[i16], hay: &[i16]) -> (f64, usize) {
    let last = hay.len().saturating_sub(needle.len());
    let mut coarse = (f64::MIN, 0);
    for lag in (0..=last).step_by(80) {
        let (c, l) = best_match(needle, hay, lag..lag + 1);
        if c > coarse.0 {
            coarse = (c, l);
        }
    }
    let lo = coarse.1.saturating_sub(80);
    best_match(needle, hay, lo..(coarse.1 + 81).min(last + 1))
}

/// A headless baresip configuration in `dir`: audio from `dir/src.wav`, control over
/// TCP (ctrl_tcp) on `ctrl_port`, and, with `dump`, what it hears written to
/// `dir/snd/*-dec.wav` by the sndfile module.
pub fn baresip_config(dir: &Path, ctrl_port: u16, dump: bool) {
    let p = dir.display();
    let mut config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:0\naudio_player aufile,{p}/play.wav\naudio_source aufile,{p}/src.wav\naudio_alert aufile,{p}/alert.wav\nmodule_path /usr/lib/baresip/modules\nmodule stdio.so\nmodule g711.so\nmodule aufile.so\nmodule_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl_port}\n"
    );
    if dump {
        std::fs::create_dir_all(dir.join("snd")).expect("snd dir");
        config.push_str(&format!("module sndfile.so\nsnd_path {p}/snd\n"));
    }
    std::fs::write(dir.join("config"), config).expect("baresip config");
    std::fs::write(dir.join("accounts"), "<sip:tester@127.0.0.1>;regint=0\n").expect("accounts");
}

/// Sends a command to baresip's ctrl_tcp (JSON in a netstring), waiting for it to listen.
pub fn baresip_command(ctrl_port: u16, cmd: &str, params: &str) {
    use std::io::{Read, Write};
    let until = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", ctrl_port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("baresip control port: {e}"),
        }
    };
    let json = format!(r#"{{"command":"{cmd}","params":"{params}","token":"t"}}"#);
    s.write_all(format!("{}:{json},", json.len()).as_bytes())
        .expect("send command");
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let _ = s.read(&mut [0u8; 512]);
}

/// Registers `user` for an operator account with SIPp; offers go to `uas_port`.
pub fn sipp_register(server: &Server, user: &str, password: &str, uas_port: u16) {
    let port = free_udp_port();
    let out = Command::new("sipp")
        .arg(server.udp.to_string())
        .args([
            "-sf",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/sipp/register.xml")
                .to_str()
                .unwrap(),
        ])
        .args(["-m", "1", "-s", user, "-au", user, "-ap", password])
        .args([
            "-key",
            "uas_port",
            &uas_port.to_string(),
            "-key",
            "expires",
            "300",
        ])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-timeout", "10s", "-timeout_error", "-nostdin"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("sipp");
    assert!(
        out.status.success(),
        "registration of {user} failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A SIPp phone listening for offers on `port`.
pub struct SippPhone(Child);

impl SippPhone {
    pub fn start(scenario: &str, port: u16, extra: &[&str]) -> SippPhone {
        let media = free_udp_port();
        let child = Command::new("sipp")
            .args([
                "-sf",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/sipp")
                    .join(scenario)
                    .to_str()
                    .unwrap(),
            ])
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-mp", &media.to_string(), "-nostdin"])
            .args(extra)
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp");
        SippPhone(child)
    }
}

impl Drop for SippPhone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped flow with short prompts and timeouts: the same nodes and logic, so a
/// test walks it in seconds. Panics when the shipped flow no longer has what is
/// replaced (a silent miss would make tests slow and their timings wrong).
pub fn quick_flow(dir: &Path) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut flow = std::fs::read_to_string(root.join("config/ivr.toml")).expect("ivr.toml");
    for (from, to) in [
        (
            r#"prompts = ["greeting", "keys_hint"]"#,
            r#"prompts = ["language_note"]"#,
        ),
        (
            r#"prompts = ["situation_menu"]"#,
            r#"prompts = ["zone_menu"]"#,
        ),
        ("first_digit_timeout = 6", "first_digit_timeout = 2"),
        ("first_digit_timeout = 10", "first_digit_timeout = 2"),
    ] {
        assert!(flow.contains(from), "config/ivr.toml no longer has {from}");
        flow = flow.replace(from, to);
    }
    let path = dir.join("ivr-quick.toml");
    std::fs::write(&path, flow).expect("write flow");
    format!("ivr.flow=\"{}\"", path.display())
}

/// What follows `marker` in the first log line holding it, up to a blank or a quote
/// (so it reads both the text and the JSON log format).
pub fn listening_on<'a>(log: &'a str, marker: &str) -> Option<&'a str> {
    let rest = log.lines().find_map(|l| l.split_once(marker))?.1;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// A free TCP port on loopback (for listeners the test must name in advance).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A mono 8 kHz WAV of a sine at `hz`, `seconds` long (a phone's steady "voice").
pub fn write_tone(path: &Path, hz: f64, seconds: f64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    for i in 0..(seconds * 8000.0) as usize {
        let t = i as f64 / 8000.0;
        w.write_sample((8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16)
            .expect("sample");
    }
    w.finalize().expect("finalize");
}

/// Whether a 20 ms frame is dominated by a `hz` tone (Goertzel) and louder than an
/// RMS of `floor`.
pub fn tone_frame(frame: &[i16], hz: f64, floor: f64) -> bool {
    let n = frame.len() as f64;
    let k = 2.0 * (2.0 * std::f64::consts::PI * hz / 8000.0).cos();
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 0.0f64);
    for &x in frame {
        let x = x as f64;
        energy += x * x;
        let s0 = x + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - k * s1 * s2;
    // A pure tone's Goertzel power is energy * n / 2.
    energy / n > floor * floor && power > 0.6 * energy * n / 2.0
}

/// Seconds of 20 ms frames in which `hz` carries most of the energy (Goertzel).
pub fn tone_seconds(samples: &[i16], hz: f64) -> f64 {
    let frames = samples
        .chunks_exact(160)
        .filter(|frame| tone_frame(frame, hz, 100.0))
        .count();
    frames as f64 * 0.02
}

/// baresip on the configuration in `dir` (its log to `dir/baresip.log`), with `extra`
/// arguments.
pub fn spawn_baresip(dir: &Path, extra: &[&str]) -> Child {
    Command::new("baresip")
        .args(baresip_interface_args())
        .arg("-f")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("baresip.log")).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip")
}

pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}
