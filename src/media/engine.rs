//! The tokio side of media: RTP port pool, one socket pair per call, and one shared
//! 20 ms clock that paces the packets of every call.
//!
//! Owns sockets and timing; what each packet carries and what received packets mean
//! is decided by the sans-IO `session::MediaSession` of the call. One clock for all
//! calls instead of a timer per call keeps wake-ups constant as calls grow, and the
//! schedule is derived from the start instant so pacing never drifts. Received packets
//! are accepted only from the address the peer signalled (no RTP bleed: another
//! host's packets never reach a call, and our audio never goes anywhere but the
//! signalled address).
//!
//! Bridges (a caller and an operator talking) run on the same clock: every tick moves
//! each leg's decoded audio and digits into the sans-IO `bridge::Bridge`, gives each
//! leg the other party's frame to send, and writes the pair to the stereo recording.

use super::bridge::{Bridge, JitterConfig, Side};
use super::prompt::Prompt;
use super::recorder::{RecorderConfig, WavRecorder};
use super::rtp::MAX_PACKET;
use super::session::{DtmfMode, MediaSession, RecordSpec, SessionEvent};
use crate::call::Codec;
use crate::call::{CallId, MediaCommand, MediaEvent};
use crate::call::{Channels, StopReason};
use crate::config::PortRange;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

pub const FRAME: Duration = Duration::from_millis(20);

/// What the call logic asks of a call's media.
#[derive(Debug)]
pub enum EngineCommand {
    Sip(MediaCommand),
    Play {
        call: CallId,
        token: u64,
        prompts: Vec<Arc<Prompt>>,
        looping: bool,
    },
    StopPlayback {
        call: CallId,
    },
    StartRecording {
        call: CallId,
        path: PathBuf,
        spec: RecordSpec,
    },
    StopRecording {
        call: CallId,
    },
    SendDigit {
        call: CallId,
        digit: char,
        duration_ms: u32,
        mode: DtmfMode,
    },
    InfoDigit {
        call: CallId,
        digit: char,
        duration_ms: u32,
    },
    /// Connect two existing legs: prompts stop on both, each hears the other (in its
    /// own codec), digits are regenerated across, and with `record` the conversation
    /// is written to one stereo WAV (caller left, operator right).
    Bridge {
        caller: CallId,
        operator: CallId,
        record: Option<PathBuf>,
    },
    /// Ends the bridge `call` (either leg) is in.
    Unbridge {
        call: CallId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InbandPolicy {
    /// Listen for tones only when the peer did not negotiate telephone-event.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub ports: PortRange,
    /// No RTP from the peer for this long ends the call; zero disables.
    pub rtp_timeout: Duration,
    pub inband: InbandPolicy,
    /// Send to where the caller's RTP comes from (see `Latch`) instead of only to the
    /// signalled address.
    pub latch: bool,
}

/// Even ports of the range, handed out in shuffled order and returned to the back of
/// the queue, so a port freed by one call is not reused at once (late packets of the
/// old call must not reach the next caller).
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        use rand::seq::SliceRandom;
        let first = range.first + (range.first % 2);
        let mut ports: Vec<u16> = (first..range.last).step_by(2).collect();
        ports.shuffle(&mut rand::thread_rng());
        PortPool { free: ports.into() }
    }

    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    pub fn give_back(&mut self, port: u16) {
        self.free.push_back(port);
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }
}

/// State shared by a call's receive task and the clock.
struct Shared {
    session: MediaSession,
    /// Where we send: the signalled address, or the latched source.
    remote: Option<SocketAddr>,
    /// The call's SIP source: media from this IP is the caller's too.
    signal_ip: Option<IpAddr>,
    latch: Latch,
}

/// Symmetric RTP for callers behind NAT, done safely: only a source with the IP of
/// the signalled address or of the call's SIP messages is accepted, the first such
/// source is latched once, within the first seconds of media, and never changed by
/// later packets. A stranger's packets are dropped, and nobody can redirect a
/// caller's audio to themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Latch {
    Open { until_ms: u64 },
    Done,
}

const LATCH_WINDOW_MS: u64 = 10_000;

struct Leg {
    port: u16,
    socket: Arc<UdpSocket>,
    tasks: [JoinHandle<()>; 2],
    shared: Arc<Mutex<Shared>>,
    send: bool,
    started: bool,
    last_rx_ms: Arc<AtomicU64>,
    timed_out: bool,
}

impl Drop for Leg {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Two legs talking to each other.
struct ActiveBridge {
    caller: CallId,
    operator: CallId,
    core: Bridge,
    recording: BridgeRecording,
}

enum BridgeRecording {
    /// Not asked for, or already reported (it could not be created).
    None,
    Writing(WavRecorder),
    /// A write failed: nothing more is written; reported when the bridge ends.
    Failed(WavRecorder, String),
}

impl ActiveBridge {
    fn has(&self, call: CallId) -> bool {
        self.caller == call || self.operator == call
    }
}

pub struct MediaHandle {
    pub commands: mpsc::UnboundedSender<EngineCommand>,
}

impl MediaHandle {
    pub fn send(&self, cmd: EngineCommand) {
        let _ = self.commands.send(cmd);
    }
}

pub fn spawn(cfg: MediaConfig, events: mpsc::UnboundedSender<MediaEvent>) -> MediaHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(cfg, rx, events));
    MediaHandle { commands: tx }
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let rtp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, rtcp))
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn forward(call: CallId, session: &mut MediaSession, events: &mpsc::UnboundedSender<MediaEvent>) {
    while let Some(ev) = session.poll_event() {
        let ev = match ev {
            SessionEvent::Digit(digit) => MediaEvent::Digit { call, digit },
            SessionEvent::PlayFinished(token) => MediaEvent::PlayFinished { call, token },
            SessionEvent::RecordingStopped { reason, result } => MediaEvent::RecordingStopped {
                call,
                reason,
                result,
            },
        };
        let _ = events.send(ev);
    }
}

async fn run(
    cfg: MediaConfig,
    mut commands: mpsc::UnboundedReceiver<EngineCommand>,
    events: mpsc::UnboundedSender<MediaEvent>,
) {
    let mut pool = PortPool::new(cfg.ports);
    let mut legs: HashMap<CallId, Leg> = HashMap::new();
    let mut bridges: Vec<ActiveBridge> = Vec::new();
    let epoch = Instant::now();
    let mut clock = tokio::time::interval(FRAME);
    // Burst catches up after a stall so the packet count matches elapsed time (no
    // drift, timestamps stay right).
    clock.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut ticks: u64 = 0;
    let mut buf = [0u8; MAX_PACKET];
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                handle_command(cmd, &cfg, &mut pool, &mut legs, &mut bridges, &events, epoch);
            }
            _ = clock.tick() => {
                ticks += 1;
                for b in bridges.iter_mut() {
                    tick_bridge(b, &legs);
                }
                for (call, leg) in legs.iter_mut() {
                    if !leg.started {
                        continue;
                    }
                    let mut sh = lock(&leg.shared);
                    let n = sh.session.on_tick(&mut buf);
                    if let (true, Some(remote)) = (leg.send, sh.remote) {
                        // Unreachable or full: the packet is lost like any UDP packet.
                        let _ = leg.socket.try_send_to(&buf[..n], remote);
                    }
                    forward(*call, &mut sh.session, &events);
                }
                // After this tick's packets are out: file writes do not delay them.
                for b in bridges.iter_mut() {
                    record_bridge(b);
                }
                if ticks.is_multiple_of(50) && !cfg.rtp_timeout.is_zero() {
                    let now_ms = epoch.elapsed().as_millis() as u64;
                    let limit = cfg.rtp_timeout.as_millis() as u64;
                    let mut ended = Vec::new();
                    for (call, leg) in legs.iter_mut() {
                        let idle = now_ms.saturating_sub(leg.last_rx_ms.load(Ordering::Relaxed));
                        if leg.started && !leg.timed_out && idle > limit {
                            leg.timed_out = true;
                            let _ = events.send(MediaEvent::RtpTimeout { call: *call });
                            if let Some(i) = bridges.iter().position(|b| b.has(*call)) {
                                ended.push(bridges.swap_remove(i));
                            }
                        }
                    }
                    for b in ended {
                        end_bridge(b, &legs, &events);
                    }
                }
            }
        }
    }
}

fn handle_command(
    cmd: EngineCommand,
    cfg: &MediaConfig,
    pool: &mut PortPool,
    legs: &mut HashMap<CallId, Leg>,
    bridges: &mut Vec<ActiveBridge>,
    events: &mpsc::UnboundedSender<MediaEvent>,
    epoch: Instant,
) {
    let with =
        |legs: &mut HashMap<CallId, Leg>, call: CallId, f: &mut dyn FnMut(&mut MediaSession)| {
            if let Some(leg) = legs.get(&call) {
                let mut sh = lock(&leg.shared);
                f(&mut sh.session);
                forward(call, &mut sh.session, events);
            }
        };
    match cmd {
        EngineCommand::Sip(MediaCommand::Allocate { call, local_ip }) => {
            let mut bound = None;
            for _ in 0..16 {
                let Some(port) = pool.take() else { break };
                match bind_pair(local_ip, port) {
                    Ok(pair) => {
                        bound = Some((port, pair));
                        break;
                    }
                    Err(_) => pool.give_back(port),
                }
            }
            let Some((port, (rtp, rtcp))) = bound else {
                tracing::warn!(call, "no free RTP port");
                let _ = events.send(MediaEvent::Failed { call });
                return;
            };
            let (Ok(rtp), Ok(rtcp)) = (UdpSocket::from_std(rtp), UdpSocket::from_std(rtcp)) else {
                pool.give_back(port);
                let _ = events.send(MediaEvent::Failed { call });
                return;
            };
            let socket = Arc::new(rtp);
            let last_rx_ms = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
            let shared = Arc::new(Mutex::new(Shared {
                session: MediaSession::new(Codec::Pcmu, None, false),
                remote: None,
                signal_ip: None,
                latch: Latch::Done,
            }));
            let recv = tokio::spawn(receive(
                call,
                socket.clone(),
                shared.clone(),
                last_rx_ms.clone(),
                epoch,
                events.clone(),
            ));
            // RTCP is received and ignored: peers expect the port to be open.
            let rtcp_task = tokio::spawn(async move {
                let mut b = [0u8; 1500];
                while rtcp.recv_from(&mut b).await.is_ok() {}
            });
            legs.insert(
                call,
                Leg {
                    port,
                    socket,
                    tasks: [recv, rtcp_task],
                    shared,
                    send: false,
                    started: false,
                    last_rx_ms,
                    timed_out: false,
                },
            );
            let _ = events.send(MediaEvent::Allocated { call, port });
        }
        EngineCommand::Sip(MediaCommand::Start {
            call,
            remote,
            signal_ip,
            codec,
            telephone_event_pt,
            send,
        }) => {
            if let Some(leg) = legs.get_mut(&call) {
                let mut sh = lock(&leg.shared);
                if sh.remote != remote {
                    // New signalled address (first answer or re-INVITE): may latch again.
                    sh.latch = if cfg.latch {
                        Latch::Open {
                            until_ms: epoch.elapsed().as_millis() as u64 + LATCH_WINDOW_MS,
                        }
                    } else {
                        Latch::Done
                    };
                }
                sh.remote = remote;
                sh.signal_ip = Some(signal_ip);
                sh.session.update(codec, telephone_event_pt);
                sh.session.set_inband(match cfg.inband {
                    InbandPolicy::Always => true,
                    InbandPolicy::Never => false,
                    InbandPolicy::Auto => telephone_event_pt.is_none(),
                });
                leg.send = send;
                if !leg.started {
                    leg.started = true;
                    leg.last_rx_ms
                        .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            }
        }
        EngineCommand::Sip(MediaCommand::Stop { call }) => {
            if let Some(i) = bridges.iter().position(|b| b.has(call)) {
                end_bridge(bridges.swap_remove(i), legs, events);
            }
            if let Some(leg) = legs.remove(&call) {
                {
                    let mut sh = lock(&leg.shared);
                    // A recording in progress is kept: finish it before the leg goes.
                    sh.session.stop_recording();
                    forward(call, &mut sh.session, events);
                }
                pool.give_back(leg.port);
            }
        }
        EngineCommand::Play {
            call,
            token,
            prompts,
            looping,
        } => {
            with(legs, call, &mut |s| s.play(token, prompts.clone(), looping));
        }
        EngineCommand::StopPlayback { call } => with(legs, call, &mut |s| s.stop_playback()),
        EngineCommand::StartRecording { call, path, spec } => {
            let mut failed = None;
            with(legs, call, &mut |s| {
                if let Err(e) = s.start_recording(&path, &spec) {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                tracing::error!(call, "cannot start recording {}: {e}", path.display());
                let _ = events.send(MediaEvent::RecordingStopped {
                    call,
                    reason: StopReason::HangUp,
                    result: Err(e),
                });
            }
        }
        EngineCommand::StopRecording { call } => with(legs, call, &mut |s| s.stop_recording()),
        EngineCommand::SendDigit {
            call,
            digit,
            duration_ms,
            mode,
        } => {
            with(legs, call, &mut |s| s.send_digit(digit, duration_ms, mode));
        }
        EngineCommand::InfoDigit {
            call,
            digit,
            duration_ms,
        } => {
            with(legs, call, &mut |s| s.on_info_digit(digit, duration_ms));
        }
        EngineCommand::Bridge {
            caller,
            operator,
            record,
        } => start_bridge(caller, operator, record, legs, bridges, events),
        EngineCommand::Unbridge { call } => match bridges.iter().position(|b| b.has(call)) {
            Some(i) => end_bridge(bridges.swap_remove(i), legs, events),
            None => tracing::debug!(call, "unbridge: not bridged"),
        },
    }
}

fn start_bridge(
    caller: CallId,
    operator: CallId,
    record: Option<PathBuf>,
    legs: &HashMap<CallId, Leg>,
    bridges: &mut Vec<ActiveBridge>,
    events: &mpsc::UnboundedSender<MediaEvent>,
) {
    let refuse = |why: &str| {
        tracing::warn!(caller, operator, "cannot bridge: {why}");
        if record.is_some() {
            let _ = events.send(MediaEvent::ConversationRecorded {
                caller,
                operator,
                result: Err(format!("not bridged: {why}")),
            });
        }
        let _ = events.send(MediaEvent::BridgeEnded { caller, operator });
    };
    if caller == operator {
        return refuse("a leg cannot be bridged to itself");
    }
    let (Some(c), Some(o)) = (legs.get(&caller), legs.get(&operator)) else {
        return refuse("no such leg");
    };
    if bridges.iter().any(|b| b.has(caller) || b.has(operator)) {
        return refuse("a leg is already bridged");
    }
    let recording = match record {
        None => BridgeRecording::None,
        Some(path) => {
            let config = RecorderConfig {
                channels: Channels::Stereo,
                ..RecorderConfig::default()
            };
            match WavRecorder::create(&path, config) {
                Ok(w) => BridgeRecording::Writing(w),
                Err(e) => {
                    // The conversation matters more than its recording: bridge anyway.
                    tracing::error!(caller, operator, "cannot record conversation: {e}");
                    let _ = events.send(MediaEvent::ConversationRecorded {
                        caller,
                        operator,
                        result: Err(e.to_string()),
                    });
                    BridgeRecording::None
                }
            }
        }
    };
    for leg in [c, o] {
        let mut sh = lock(&leg.shared);
        sh.session.stop_playback();
        sh.session.start_relay();
    }
    tracing::info!(caller, operator, "bridged");
    bridges.push(ActiveBridge {
        caller,
        operator,
        core: Bridge::new(JitterConfig::default()),
        recording,
    });
}

/// One clock tick of a bridge: received audio and digits in, each leg's frame out.
fn tick_bridge(b: &mut ActiveBridge, legs: &HashMap<CallId, Leg>) {
    let (Some(c), Some(o)) = (legs.get(&b.caller), legs.get(&b.operator)) else {
        return;
    };
    // The only place two legs are locked at once (receive tasks lock one), always
    // caller first: no deadlock.
    let mut c = lock(&c.shared);
    let mut o = lock(&o.shared);
    let core = &mut b.core;
    c.session
        .drain_relay_audio(|pcm| core.push_audio(Side::Caller, pcm));
    o.session
        .drain_relay_audio(|pcm| core.push_audio(Side::Operator, pcm));
    relay_digits(core, Side::Caller, &mut c.session, &mut o.session);
    relay_digits(core, Side::Operator, &mut o.session, &mut c.session);
    let tick = core.tick();
    o.session.set_relay_frame(tick.caller);
    c.session.set_relay_frame(tick.operator);
}

fn relay_digits(core: &mut Bridge, from: Side, src: &mut MediaSession, dst: &mut MediaSession) {
    while let Some(d) = src.poll_relay_digit() {
        if let Some(r) = core.forward_digit(from, &d, dst.has_telephone_event()) {
            dst.send_digit(r.digit, r.duration_ms, r.mode);
        }
    }
}

/// Writes the latest tick's pair of frames: both channels advance together.
fn record_bridge(b: &mut ActiveBridge) {
    let BridgeRecording::Writing(w) = &mut b.recording else {
        return;
    };
    let tick = b.core.last_tick();
    if let Err(e) = w.write_stereo(tick.caller, tick.operator) {
        tracing::error!(b.caller, b.operator, "conversation recording failed: {e}");
        let old = std::mem::replace(&mut b.recording, BridgeRecording::None);
        if let BridgeRecording::Writing(w) = old {
            b.recording = BridgeRecording::Failed(w, e.to_string());
        }
    }
}

fn end_bridge(
    b: ActiveBridge,
    legs: &HashMap<CallId, Leg>,
    events: &mpsc::UnboundedSender<MediaEvent>,
) {
    let ActiveBridge {
        caller,
        operator,
        core,
        recording,
    } = b;
    for call in [caller, operator] {
        if let Some(leg) = legs.get(&call) {
            lock(&leg.shared).session.stop_relay();
        }
    }
    let (c, o) = (core.stats(Side::Caller), core.stats(Side::Operator));
    tracing::info!(
        caller,
        operator,
        ticks = core.ticks(),
        caller_silent_ticks = c.silent_ticks,
        caller_underruns = c.underruns,
        caller_dropped_ms = c.dropped_samples / 8,
        operator_silent_ticks = o.silent_ticks,
        operator_underruns = o.underruns,
        operator_dropped_ms = o.dropped_samples / 8,
        "bridge ended"
    );
    let writer = match recording {
        BridgeRecording::None => None,
        BridgeRecording::Writing(w) => Some((w, None)),
        BridgeRecording::Failed(w, e) => Some((w, Some(e))),
    };
    let Some((writer, failed)) = writer else {
        let _ = events.send(MediaEvent::BridgeEnded { caller, operator });
        return;
    };
    // fsync and hashing take long for an hour of stereo: not on the clock's task.
    let events = events.clone();
    tokio::task::spawn_blocking(move || {
        let finished = writer.finish().map_err(|e| e.to_string());
        let result = match (failed, finished) {
            (None, r) => r,
            (Some(e), Ok(info)) => Err(format!(
                "{e} (audio up to the failure kept in {})",
                info.path.display()
            )),
            (Some(e), Err(f)) => Err(format!("{e}; then {f}")),
        };
        let _ = events.send(MediaEvent::ConversationRecorded {
            caller,
            operator,
            result,
        });
        let _ = events.send(MediaEvent::BridgeEnded { caller, operator });
    });
}

async fn receive(
    call: CallId,
    socket: Arc<UdpSocket>,
    shared: Arc<Mutex<Shared>>,
    last_rx_ms: Arc<AtomicU64>,
    epoch: Instant,
    events: mpsc::UnboundedSender<MediaEvent>,
) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        // Only RTP version 2 counts; RTCP multiplexed on this port (packet types
        // 200-204) is not media and must not keep a silent call alive.
        if n < 12 || buf[0] >> 6 != 2 || (200..=204).contains(&buf[1]) {
            continue;
        }
        let now_ms = epoch.elapsed().as_millis() as u64;
        let mut sh = lock(&shared);
        let from_caller =
            sh.remote.map(|r| r.ip()) == Some(from.ip()) || sh.signal_ip == Some(from.ip());
        if !from_caller {
            continue;
        }
        if let Latch::Open { until_ms } = sh.latch {
            if now_ms <= until_ms && sh.remote != Some(from) {
                tracing::debug!(call, %from, signalled = ?sh.remote, "RTP latched to its source");
                sh.remote = Some(from);
            }
            sh.latch = Latch::Done;
        } else if sh.remote != Some(from) {
            continue;
        }
        last_rx_ms.store(now_ms, Ordering::Relaxed);
        sh.session.on_rtp(&buf[..n], now_ms);
        forward(call, &mut sh.session, &events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_even_ports_and_reuses_last() {
        let mut p = PortPool::new(PortRange {
            first: 20001,
            last: 20011,
        });
        let mut got = Vec::new();
        while let Some(port) = p.take() {
            assert_eq!(port % 2, 0);
            assert!((20002..20011).contains(&port));
            got.push(port);
        }
        assert_eq!(got.len(), 5);
        p.give_back(got[0]);
        p.give_back(got[1]);
        assert_eq!(p.take(), Some(got[0]));
    }
}
