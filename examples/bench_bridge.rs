//! Bridge benchmark: N operator conversations (2N legs; the caller's phone speaks PCMU,
//! the operator's PCMA, so every relayed packet is transcoded) bridged by the media
//! engine, each with its stereo recording, fed from loopback for S seconds. Prints the
//! server's CPU and memory, relayed packets against those sent, the relay latency of
//! every packet (sent into leg A until its audio leaves leg B, found by a sequence
//! marker carried in the audio itself), the intervals between packets leaving each
//! leg, the generator's own lateness and the recordings' size; then one JSON line.
//! Run through `bench/bridge.sh`.
//!
//!     bench_bridge BRIDGES SECONDS [RECORDING_DIR]
//!
//! The server side runs in a child process (this program again, with `--serve`) so
//! that /proc shows its CPU and memory alone: the media engine with its legs, bridges
//! and recordings, configured like `hotline serve`'s defaults. The parent plays the
//! phones: one thread sends all 2N streams on one shared 20 ms schedule (ten slots
//! 2 ms apart, a tenth of the streams each, so the phones are not in step with each
//! other or with the engine's clock), one thread receives them all (tokio, one task
//! per socket).
//!
//! Marker: the first 48 samples of every frame sent are ±8000, one bit each: the
//! 16-bit tick number, the 16-bit stream number and a check word. G.711 keeps the sign
//! through any transcoding, so the frame that leaves the other leg names its packet.

use hotline::call::{Codec, MediaCommand, MediaEvent};
use hotline::config::PortRange;
use hotline::media::engine::{self, EngineCommand, InbandPolicy, MediaConfig};
use hotline::media::g711;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const FRAME_MS: u64 = 20;
const SAMPLES: usize = 160;
/// Ticks sent before the measured window: jitter queues fill, recordings open.
const WARMUP_TICKS: u64 = 100;
/// Ticks sent after it, so the window's last packets are relayed too.
const TAIL_TICKS: u64 = 10;
const MARK_BITS: usize = 48;
const MARK_LEVEL: i16 = 8000;
const CHECK: u16 = 0xA5A5;
const TELEPHONE_EVENT: u8 = 101;
/// Phones are not in step: stream `j` sends in slot `j % SLOTS` of each 20 ms, slots
/// `SLOT` apart, so packets reach the engine at every phase of its clock.
const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_millis(2);

/// Leg `j`: even legs are callers (PCMU), odd legs operators (PCMA); `j ^ 1` is the
/// other party.
fn codec_of(leg: usize) -> Codec {
    if leg.is_multiple_of(2) {
        Codec::Pcmu
    } else {
        Codec::Pcma
    }
}

fn read_mark(codec: Codec, payload: &[u8]) -> Option<(u16, u16)> {
    if payload.len() < MARK_BITS {
        return None;
    }
    let mut w = [0u16; 3];
    for (i, &b) in payload[..MARK_BITS].iter().enumerate() {
        let s = g711::decode_sample(codec, b);
        if s.unsigned_abs() < 2000 {
            return None;
        }
        if s > 0 {
            w[i / 16] |= 1 << (i % 16);
        }
    }
    (w[2] == w[0] ^ w[1] ^ CHECK).then_some((w[0], w[1]))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Summary {
    n: usize,
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Summary {
    fn of(mut v: Vec<f64>) -> Summary {
        v.sort_by(|a, b| a.total_cmp(b));
        Summary {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
            p50: percentile(&v, 0.5),
            p99: percentile(&v, 0.99),
            p999: percentile(&v, 0.999),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn print(&self, name: &str) {
        println!(
            "{name}: n={} mean={:.3} p50={:.3} p99={:.3} p99.9={:.3} max={:.3} (ms)",
            self.n, self.mean, self.p50, self.p99, self.p999, self.max
        );
    }

    fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "n": self.n, "mean": r(self.mean), "p50": r(self.p50), "p99": r(self.p99),
            "p99_9": r(self.p999), "max": r(self.max)
        })
    }
}

// ---- /proc ----------------------------------------------------------------------

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rfind(')').map(|i| &s[i + 1..]).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn status_kb(pid: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Seconds all CPUs have been idle (`/proc/uptime`). Precise on a tickless kernel,
/// unlike the busy ticks of `/proc/stat`, which are sampled at the timer tick and
/// miss most of a load that wakes every 20 ms in step with it.
fn machine_idle_s() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0)
}

/// Datagrams the kernel dropped on the loopback UDP sockets bound to `ports`.
fn udp_drops(ports: &HashSet<u16>) -> u64 {
    let s = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            ports
                .contains(&port)
                .then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

#[derive(Clone, Copy)]
struct Snapshot {
    server_cpu: u64,
    server_rss_kb: u64,
    own_cpu: u64,
    machine_idle_s: f64,
    server_drops: u64,
    generator_drops: u64,
}

fn snapshot(child: &str, server_ports: &HashSet<u16>, gen_ports: &HashSet<u16>) -> Snapshot {
    Snapshot {
        server_cpu: cpu_ticks(child),
        server_rss_kb: status_kb(child, "VmRSS"),
        own_cpu: cpu_ticks("self"),
        machine_idle_s: machine_idle_s(),
        server_drops: udp_drops(server_ports),
        generator_drops: udp_drops(gen_ports),
    }
}

// ---- the server: --serve BRIDGES FIRST_PORT DIR -----------------------------------

fn line(input: &mut impl BufRead) -> String {
    let mut l = String::new();
    let _ = input.read_line(&mut l);
    l
}

fn serve(bridges: usize, first_port: u16, dir: PathBuf) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let legs = 2 * bridges;
    // `hotline serve`'s defaults: 30 s RTP timeout, latching, in-band DTMF only
    // without telephone-event.
    let cfg = MediaConfig {
        ports: PortRange {
            first: first_port,
            last: first_port.saturating_add((4 * legs + 400) as u16),
        },
        rtp_timeout: Duration::from_secs(30),
        inband: InbandPolicy::Auto,
        latch: true,
    };
    let media = rt
        .block_on(async { engine::spawn(cfg, tx) })
        .expect("media threads start");
    let mut stdout = std::io::stdout();
    let mut stdin = std::io::stdin().lock();
    let _ = writeln!(stdout, "idle");
    let _ = stdout.flush();
    let phones: Vec<u16> = line(&mut stdin)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(phones.len(), legs, "serve: expected {legs} phone ports");
    let ports = rt.block_on(async {
        for j in 0..legs {
            media.send(EngineCommand::Sip(MediaCommand::Allocate {
                call: j as u64 + 1,
                local_ip: LOCALHOST,
            }));
        }
        let mut ports = vec![0u16; legs];
        let mut got = 0;
        while got < legs {
            match events.recv().await {
                Some(MediaEvent::Allocated { call, port }) => {
                    ports[call as usize - 1] = port;
                    got += 1;
                }
                Some(MediaEvent::Failed { call }) => panic!("serve: leg {call}: no RTP port"),
                Some(_) => {}
                None => panic!("serve: engine gone"),
            }
        }
        for (j, &phone) in phones.iter().enumerate() {
            media.send(EngineCommand::Sip(MediaCommand::Start {
                call: j as u64 + 1,
                remote: Some(SocketAddr::new(LOCALHOST, phone)),
                signal_ip: LOCALHOST,
                codec: codec_of(j),
                telephone_event_pt: Some(TELEPHONE_EVENT),
                send: true,
                confirmed: true,
                srtp: None,
            }));
        }
        for i in 0..bridges {
            media.send(EngineCommand::Bridge {
                caller: 2 * i as u64 + 1,
                operator: 2 * i as u64 + 2,
                record: Some(dir.join(format!("bridge-{i}.wav"))),
            });
        }
        ports
    });
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let _ = writeln!(stdout, "ports {}", list.join(" "));
    let _ = stdout.flush();
    // Runs until the parent says stop (or goes away).
    line(&mut stdin);
    let t = Instant::now();
    let (mut early, mut ended, mut ok, mut failed, mut bytes, mut ms) = (0, 0, 0, 0, 0u64, 0u64);
    while let Ok(ev) = events.try_recv() {
        if let MediaEvent::BridgeEnded { .. } = ev {
            early += 1;
        }
    }
    rt.block_on(async {
        for i in 0..bridges {
            media.send(EngineCommand::Unbridge {
                call: 2 * i as u64 + 1,
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while ended + early < bridges {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(MediaEvent::BridgeEnded { .. })) => ended += 1,
                Ok(Some(MediaEvent::ConversationRecorded { result, .. })) => match result {
                    Ok(info) => {
                        ok += 1;
                        bytes += info.size_bytes;
                        ms += info.duration_ms;
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("serve: recording failed: {e}");
                    }
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    });
    let _ = writeln!(
        stdout,
        "done {early} {ok} {failed} {bytes} {ms} {}",
        t.elapsed().as_millis()
    );
    let _ = stdout.flush();
}

// ---- the phones -------------------------------------------------------------------

/// One packet received by a phone.
struct Rx {
    at_us: u64,
    seq: u16,
    ts: u32,
    /// (tick, stream) of a marked frame.
    mark: Option<(u16, u16)>,
    /// Audio without a valid marker that is not silence.
    corrupt: bool,
}

fn receive(
    sockets: Vec<UdpSocket>,
    epoch: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Vec<Rx>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tasks: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(j, s)| {
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let s = tokio::net::UdpSocket::from_std(s).expect("socket");
                    let codec = codec_of(j);
                    let mut got = Vec::with_capacity(4096);
                    let mut buf = [0u8; 1500];
                    loop {
                        tokio::select! {
                            r = s.recv_from(&mut buf) => {
                                let Ok((n, _)) = r else { break };
                                let at_us = epoch.elapsed().as_micros() as u64;
                                if n < 12 || buf[0] >> 6 != 2 {
                                    continue;
                                }
                                let header = 12 + 4 * usize::from(buf[0] & 0x0F);
                                let payload = &buf[header.min(n)..n];
                                let audio = buf[1] & 0x7F == codec.payload_type();
                                let mark = if audio { read_mark(codec, payload) } else { None };
                                let corrupt = audio
                                    && mark.is_none()
                                    && payload
                                        .iter()
                                        .any(|&b| g711::decode_sample(codec, b).unsigned_abs() > 64);
                                got.push(Rx {
                                    at_us,
                                    seq: u16::from_be_bytes([buf[2], buf[3]]),
                                    ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                                    mark,
                                    corrupt,
                                });
                            }
                            _ = stop.changed() => break,
                        }
                    }
                    got
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.expect("receiver"));
        }
        out
    })
}

struct Sent {
    /// Per stream, per tick: µs since the epoch, or `u32::MAX` when the send failed.
    at_us: Vec<Vec<u32>>,
    /// Per slot: how late its sends started, and how long they took (ms).
    late_ms: Vec<f64>,
    burst_ms: Vec<f64>,
    errors: u64,
}

fn send(sockets: Vec<(UdpSocket, SocketAddr)>, epoch: Instant, start: Instant, ticks: u64) -> Sent {
    let streams = sockets.len();
    // The frame each codec sends: a quiet tone after the marker (400 Hz for callers,
    // 1000 Hz for operators; whole periods in 160 samples, so every frame is the same).
    let frame = |codec: Codec, freq: f64| -> Vec<u8> {
        (0..SAMPLES)
            .map(|i| {
                let s = 3000.0 * (std::f64::consts::TAU * freq * i as f64 / 8000.0).sin();
                g711::encode_sample(codec, s as i16)
            })
            .collect()
    };
    let bit = |codec: Codec, one: bool| {
        g711::encode_sample(codec, if one { MARK_LEVEL } else { -MARK_LEVEL })
    };
    let mut packets: Vec<[u8; 12 + SAMPLES]> = (0..streams)
        .map(|j| {
            let codec = codec_of(j);
            let mut p = [0u8; 12 + SAMPLES];
            p[0] = 0x80;
            p[1] = codec.payload_type();
            p[8..12].copy_from_slice(&(0x5EED_0000 + j as u32).to_be_bytes());
            let f = frame(codec, if j.is_multiple_of(2) { 400.0 } else { 1000.0 });
            p[12..].copy_from_slice(&f);
            p
        })
        .collect();
    let bits: Vec<[u8; 2]> = (0..streams)
        .map(|j| [bit(codec_of(j), false), bit(codec_of(j), true)])
        .collect();
    let mut sent = Sent {
        at_us: vec![vec![u32::MAX; ticks as usize]; streams],
        late_ms: Vec::with_capacity(ticks as usize),
        burst_ms: Vec::with_capacity(ticks as usize),
        errors: 0,
    };
    for k in 0..ticks {
        for slot in 0..SLOTS {
            let due = start + Duration::from_millis(k * FRAME_MS) + SLOT * slot as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let began = Instant::now();
            sent.late_ms
                .push(began.saturating_duration_since(due).as_secs_f64() * 1000.0);
            for j in (slot..streams).step_by(SLOTS) {
                let (socket, to) = &sockets[j];
                let p = &mut packets[j];
                p[1] = codec_of(j).payload_type() | if k == 0 { 0x80 } else { 0 };
                let seq = (j as u16).wrapping_mul(1000).wrapping_add(k as u16);
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                p[4..8].copy_from_slice(&((k as u32).wrapping_mul(SAMPLES as u32)).to_be_bytes());
                let words = [k as u16, j as u16, k as u16 ^ j as u16 ^ CHECK];
                for (i, b) in p[12..12 + MARK_BITS].iter_mut().enumerate() {
                    *b = bits[j][usize::from((words[i / 16] >> (i % 16)) & 1 == 1)];
                }
                match socket.send_to(&p[..], to) {
                    Ok(_) => sent.at_us[j][k as usize] = epoch.elapsed().as_micros() as u32,
                    Err(_) => sent.errors += 1,
                }
            }
            sent.burst_ms.push(began.elapsed().as_secs_f64() * 1000.0);
        }
    }
    sent
}

fn dir_size(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        let bridges = args.get(2).and_then(|a| a.parse().ok()).expect("bridges");
        let first = args
            .get(3)
            .and_then(|a| a.parse().ok())
            .expect("first port");
        let dir = PathBuf::from(args.get(4).expect("dir"));
        serve(bridges, first, dir);
        return;
    }
    let usage = "usage: bench_bridge BRIDGES SECONDS [RECORDING_DIR]";
    let bridges: usize = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    assert!(
        (1..=2000).contains(&bridges) && (1..=3600).contains(&seconds),
        "{usage} (1-2000 bridges, 1-3600 s)"
    );
    let tmp;
    let dir = match args.get(3) {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().expect("temp dir");
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).expect("recording dir");
    let legs = 2 * bridges;

    let phones: Vec<UdpSocket> = (0..legs)
        .map(|_| UdpSocket::bind((LOCALHOST, 0)).expect("bind"))
        .collect();
    let phone_ports: Vec<u16> = phones
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect();
    // Below the ephemeral range the phones' sockets come from.
    let first_port = 10_000 + 2 * (rand::random::<u16>() % 5_000);
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--serve", &bridges.to_string(), &first_port.to_string()])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process");
    let pid = child.id().to_string();
    let mut to_child = child.stdin.take().expect("stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("stdout"));
    assert_eq!(line(&mut from_child).trim(), "idle", "server did not start");
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = status_kb(&pid, "VmRSS");

    let epoch = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let senders: Vec<UdpSocket> = phones
        .iter()
        .map(|s| s.try_clone().expect("clone"))
        .collect();
    // For tokio; the clones share the flag, so a send that would block fails and is
    // counted instead of stalling the schedule.
    for s in &phones {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let receiver = std::thread::spawn(move || receive(phones, epoch, stop_rx));
    let list: Vec<String> = phone_ports.iter().map(|p| p.to_string()).collect();
    writeln!(to_child, "{}", list.join(" ")).expect("to server");
    let reply = line(&mut from_child);
    let leg_ports: Vec<u16> = reply
        .strip_prefix("ports ")
        .unwrap_or_else(|| panic!("server: {reply:?}"))
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(leg_ports.len(), legs);
    println!(
        "{bridges} bridges up ({legs} legs, PCMU <-> PCMA, stereo recording each); \
         measuring {seconds} s after {} s of warm-up",
        WARMUP_TICKS * FRAME_MS / 1000
    );

    let window = seconds * 1000 / FRAME_MS;
    let ticks = WARMUP_TICKS + window + TAIL_TICKS;
    let start = Instant::now() + Duration::from_millis(100);
    let to: Vec<(UdpSocket, SocketAddr)> = senders
        .into_iter()
        .zip(&leg_ports)
        .map(|(s, &p)| (s, SocketAddr::new(LOCALHOST, p)))
        .collect();
    let sender = std::thread::spawn(move || send(to, epoch, start, ticks));

    let server_ports: HashSet<u16> = leg_ports.iter().copied().collect();
    let gen_ports: HashSet<u16> = phone_ports.iter().copied().collect();
    let t0 = start + Duration::from_millis(WARMUP_TICKS * FRAME_MS);
    let t1 = t0 + Duration::from_millis(window * FRAME_MS);
    std::thread::sleep(t0.saturating_duration_since(Instant::now()));
    let s0 = snapshot(&pid, &server_ports, &gen_ports);
    std::thread::sleep(t1.saturating_duration_since(Instant::now()));
    let s1 = snapshot(&pid, &server_ports, &gen_ports);
    let rss_peak = status_kb(&pid, "VmHWM");
    let sent = sender.join().expect("sender");
    std::thread::sleep(Duration::from_millis(300));
    let _ = stop_tx.send(true);
    let received = receiver.join().expect("receiver");

    let _ = writeln!(to_child, "stop");
    let done = line(&mut from_child);
    let d: Vec<u64> = done
        .strip_prefix("done ")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let _ = child.wait();
    let (rec_early, rec_ok, rec_failed, rec_bytes, rec_ms, finish_ms) = match d[..] {
        [a, b, c, e, f, g] => (a, b, c, e, f, g),
        _ => {
            eprintln!("server did not finish the recordings: {done:?}");
            (0, 0, 0, 0, 0, 0)
        }
    };
    let (files, file_bytes) = dir_size(&dir);

    // ---- analysis ----------------------------------------------------------------
    let us = |t: Instant| t.duration_since(epoch).as_micros() as u64;
    let (w0, w1) = (us(t0), us(t1));
    let start_us = us(start);
    let in_window = |k: u64| (WARMUP_TICKS..WARMUP_TICKS + window).contains(&k);
    let mut expected = 0u64;
    for at in &sent.at_us {
        for (k, &t) in at.iter().enumerate() {
            if in_window(k as u64) && t != u32::MAX {
                expected += 1;
            }
        }
    }
    let mut seen = vec![vec![false; ticks as usize]; legs];
    let (mut relayed, mut duplicates, mut misrouted, mut corrupt) = (0u64, 0u64, 0u64, 0u64);
    let (mut leaving, mut ts_errors) = (0u64, 0u64);
    let mut latency = Vec::new();
    let mut intervals = Vec::new();
    for (j, rx) in received.iter().enumerate() {
        let from = j ^ 1;
        let mut last: Option<(u64, u16, u32)> = None;
        for p in rx {
            let windowed = (w0..w1).contains(&p.at_us);
            if windowed {
                leaving += 1;
                corrupt += u64::from(p.corrupt);
                if let Some((t, s, ts)) = last {
                    if p.seq == s.wrapping_add(1) {
                        intervals.push((p.at_us - t) as f64 / 1000.0);
                        if p.ts.wrapping_sub(ts) != SAMPLES as u32 {
                            ts_errors += 1;
                        }
                    }
                }
            }
            last = Some((p.at_us, p.seq, p.ts));
            let Some((k16, stream)) = p.mark else {
                continue;
            };
            if usize::from(stream) != from {
                misrouted += 1;
                continue;
            }
            // The tick nearest the arrival with these low 16 bits.
            let est = p.at_us.saturating_sub(start_us) / (FRAME_MS * 1000);
            let k = (est & !0xFFFF) | u64::from(k16);
            let k = [k.wrapping_sub(0x10000), k, k + 0x10000]
                .into_iter()
                .min_by_key(|c| c.abs_diff(est))
                .unwrap_or(k);
            if k >= ticks {
                continue;
            }
            let at = sent.at_us[from][k as usize];
            if !in_window(k) || at == u32::MAX {
                continue;
            }
            if std::mem::replace(&mut seen[from][k as usize], true) {
                duplicates += 1;
                continue;
            }
            relayed += 1;
            latency.push(p.at_us.saturating_sub(u64::from(at)) as f64 / 1000.0);
        }
    }

    // ---- report ------------------------------------------------------------------
    let tck = clock_ticks_per_s();
    let secs = (t1 - t0).as_secs_f64();
    let n = bridges as f64;
    let server_cpu = (s1.server_cpu - s0.server_cpu) as f64 / tck;
    let cpu_pct = server_cpu / secs * 100.0;
    let rss_per_bridge = (s1.server_rss_kb as f64 - rss_idle as f64) / n;
    let gen_cpu_pct = (s1.own_cpu - s0.own_cpu) as f64 / tck / secs * 100.0;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let idle = (s1.machine_idle_s - s0.machine_idle_s) / (secs * cores as f64);
    let machine_pct = ((1.0 - idle) * 100.0).clamp(0.0, 100.0);
    let loss_pct = (expected as f64 - relayed as f64) / expected.max(1) as f64 * 100.0;
    let leaving_expected = legs as u64 * window;
    let server_drops = s1.server_drops - s0.server_drops;
    let generator_drops = s1.generator_drops - s0.generator_drops;
    println!(
        "server cpu: {server_cpu:.2} s over {secs:.1} s = {cpu_pct:.1} % of a core, {:.3} % per bridge",
        cpu_pct / n
    );
    println!(
        "server rss: {rss_idle} kB idle, {} kB with {bridges} bridges = {rss_per_bridge:.1} kB per bridge (peak {rss_peak} kB)",
        s1.server_rss_kb
    );
    println!(
        "relayed packets: {relayed} of {expected} sent in the window (loss {loss_pct:.3} %); \
         duplicates {duplicates}, from the wrong leg {misrouted}, unmarked non-silent frames {corrupt}; \
         send errors {}",
        sent.errors
    );
    let latency = Summary::of(latency);
    latency.print("relay latency (sent into leg A -> left leg B)");
    println!(
        "packets leaving the legs: {leaving} ({:.2} % of {leaving_expected} expected); timestamp steps other than 160: {ts_errors}",
        leaving as f64 / leaving_expected.max(1) as f64 * 100.0
    );
    let deviation = Summary::of(intervals.iter().map(|x| (x - 20.0).abs()).collect());
    let over10 = intervals
        .iter()
        .filter(|x| (**x - 20.0).abs() > 10.0)
        .count();
    let intervals = Summary::of(intervals);
    intervals.print("interval between packets leaving a leg");
    deviation.print("deviation from 20 ms");
    println!("intervals deviating more than 10 ms: {over10}");
    let rate = if rec_ms > 0 {
        rec_bytes as f64 / (rec_ms as f64 / 1000.0) / 1000.0
    } else {
        0.0
    };
    println!(
        "recordings: {files} files, {:.1} MB on disk ({rec_ok} finished, {rec_failed} failed, {rec_early} bridges ended early); \
         {:.1} s recorded per bridge, {rate:.1} kB/s; finished (fsync + SHA-256) {:.2} s after the unbridge",
        file_bytes as f64 / 1e6,
        rec_ms as f64 / 1000.0 / n,
        finish_ms as f64 / 1000.0
    );
    let late = Summary::of(sent.late_ms);
    let burst = Summary::of(sent.burst_ms);
    late.print("generator slot lateness");
    burst.print(&format!(
        "generator slot ({} sends each)",
        legs.div_ceil(SLOTS)
    ));
    println!(
        "generator cpu: {gen_cpu_pct:.1} % of a core; machine busy: {machine_pct:.1} % of {cores} cores; \
         kernel drops on server sockets {server_drops}, on generator sockets {generator_drops}"
    );
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let json = serde_json::json!({
        "bench": "bridge",
        "bridges": bridges,
        "seconds": seconds,
        "server_cpu_pct": r2(cpu_pct),
        "server_cpu_pct_per_bridge": (cpu_pct / n * 1000.0).round() / 1000.0,
        "server_rss_idle_kb": rss_idle,
        "server_rss_kb": s1.server_rss_kb,
        "server_rss_peak_kb": rss_peak,
        "rss_kb_per_bridge": r2(rss_per_bridge),
        "packets_sent": expected,
        "packets_relayed": relayed,
        "loss_pct": (loss_pct * 1000.0).round() / 1000.0,
        "duplicates": duplicates,
        "misrouted": misrouted,
        "corrupt_frames": corrupt,
        "send_errors": sent.errors,
        "latency_ms": latency.json(),
        "packets_leaving": leaving,
        "packets_leaving_expected": leaving_expected,
        "timestamp_errors": ts_errors,
        "interval_ms": intervals.json(),
        "deviation_ms": deviation.json(),
        "intervals_over_10ms": over10,
        "recording_files": files,
        "recording_bytes": file_bytes,
        "recordings_ok": rec_ok,
        "recordings_failed": rec_failed,
        "bridges_ended_early": rec_early,
        "recording_finish_s": finish_ms as f64 / 1000.0,
        "generator_late_ms": late.json(),
        "generator_slot_ms": burst.json(),
        "generator_cpu_pct": r2(gen_cpu_pct),
        "machine_busy_pct": r2(machine_pct),
        "cores": cores,
        "server_socket_drops": server_drops,
        "generator_socket_drops": generator_drops,
    });
    println!("{json}");
}
