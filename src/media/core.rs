//! Every call's media together, sans-IO: the RTP port pool, one `MediaSession` per
//! leg with its send address and latching, the bridges between legs, the RTP timeout,
//! and the recordings' audio on its way to the recording sink.
//!
//! Owns what the engine's commands mean and what happens on each 20 ms tick. Time is
//! the engine's millisecond count, passed in; randomness (the port order) is a seeded
//! generator passed in. It never opens a socket or a file: the engine binds ports and
//! sends the packets `tick` hands it, and the recording sink (a thread of its own)
//! writes, flushes, fsyncs and hashes recordings from the `SinkCommand`s this emits,
//! answering with `on_sink_result`. Received packets reach a leg through its
//! `LegHandle` (the receive thread locks one leg at a time).

use super::bridge::{Bridge, JitterConfig, Side};
use super::prompt::Prompt;
use super::rtp::{RtpSender, MAX_PACKET};
use super::session::{DtmfMode, MediaSession, RecordSpec, SessionEvent};
use super::srtp::TAG_LEN;
use super::srtp_leg::{LegCrypto, SrtpDrops, MAX_SRTP_PACKET};
use crate::call::{
    CallId, Channels, Codec, MediaCommand, MediaEvent, RecordingInfo, SrtpKeys, StopReason,
};
use crate::capacity::{release_spare, release_spare_queue};
use crate::config::PortRange;
use rand::RngCore;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// One media clock tick.
pub const FRAME_MS: u64 = 20;

/// A frame's packets do not leave in one burst: each leg sends in one of these
/// slots, `FRAME_MS / SEND_SLOTS` ms apart, always the same one. With thousands of
/// legs a burst takes most of the frame, and a packet late in it waits behind all
/// the sends before it and inherits every variation in their cost; spread, each
/// waits behind a slot's share only. It also spares the uplink a burst of a whole
/// frame's packets every 20 ms.
pub const SEND_SLOTS: usize = 20;

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
    pub rtp_timeout: std::time::Duration,
    pub inband: InbandPolicy,
    /// Send to where the caller's RTP comes from (see `Latch`) instead of only to the
    /// signalled address.
    pub latch: bool,
}

/// A recording in the sink, numbered by the core.
pub type RecordingId = u64;

/// Work for the recording sink, in order per recording.
#[derive(Debug, PartialEq)]
pub enum SinkCommand {
    /// Create the file (never replacing one); answered with `OpenFailed` if it cannot.
    Open {
        id: RecordingId,
        path: PathBuf,
        channels: Channels,
    },
    /// Mono samples, or interleaved stereo (left, right, left, ...).
    Write { id: RecordingId, samples: Vec<i16> },
    /// Finish (truncated to `keep_samples` per channel when given): fsync, hash,
    /// answered with `Finished`.
    Finish {
        id: RecordingId,
        keep_samples: Option<u64>,
    },
}

#[derive(Debug)]
pub enum SinkResult {
    OpenFailed {
        id: RecordingId,
        error: String,
    },
    Finished {
        id: RecordingId,
        result: Result<RecordingInfo, String>,
    },
}

/// Recorded audio goes to the sink in batches of at least this many samples (200 ms):
/// few channel messages, and a crash loses at most the batch plus the sink's flush
/// interval.
const SINK_BATCH_SAMPLES: usize = 1600;

/// Even ports of the range, handed out in shuffled order and returned to the back of
/// the queue, so a port freed by one call is not reused at once (late packets of the
/// old call must not reach the next caller).
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    pub fn new(range: PortRange, rng: &mut dyn RngCore) -> Self {
        use rand::seq::SliceRandom;
        let first = range.first + (range.first % 2);
        let mut ports: Vec<u16> = (first..range.last).step_by(2).collect();
        ports.shuffle(rng);
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

/// One leg's media: its session and where its packets may come from and go to.
pub struct MediaLeg {
    session: MediaSession,
    /// Where we send: the signalled address, or the latched source.
    remote: Option<SocketAddr>,
    /// The call's SIP source: media from this IP is the caller's too.
    signal_ip: Option<IpAddr>,
    latch: Latch,
    last_rx_ms: u64,
    /// The send address is known to want our audio (see `MediaCommand::Start`).
    confirmed: bool,
    /// Packets not sent because the address was not confirmed yet.
    pub withheld: u64,
    /// SRTP keys in use; None is plain RTP.
    crypto: Option<LegCrypto>,
    /// The leg's call, for SRTP log lines.
    call: CallId,
}

impl MediaLeg {
    /// Switches the leg to `keys` (None: plain RTP). The same keys again keep the
    /// SRTP state (rollover counters, replay window).
    fn use_srtp(&mut self, keys: Option<&SrtpKeys>, drops: &Arc<SrtpDrops>) {
        match (keys, &self.crypto) {
            (Some(k), Some(c)) if c.uses(k) => {}
            (Some(k), _) => {
                tracing::info!(call = self.call, "media encrypted (SRTP)");
                self.crypto = Some(LegCrypto::new(k, drops.clone()));
            }
            (None, Some(_)) => {
                tracing::info!(call = self.call, "media no longer encrypted");
                self.crypto = None;
            }
            (None, None) => {}
        }
    }

    /// The packet of `len` bytes in `buf` as it leaves: protected on an SRTP leg.
    fn seal(&mut self, buf: &mut [u8], len: usize) -> Option<usize> {
        match &mut self.crypto {
            Some(c) => c.seal(buf, len),
            None => Some(len),
        }
    }

    /// A packet arrived on the leg's port from `from`. Returns whether it was the
    /// caller's RTP (and so was used).
    pub fn receive(&mut self, from: SocketAddr, packet: &[u8], now_ms: u64) -> bool {
        // Only RTP version 2 counts; RTCP multiplexed on this port (packet types
        // 200-204) is not media and must not keep a silent call alive.
        if packet.len() < 12 || packet[0] >> 6 != 2 || (200..=204).contains(&packet[1]) {
            return false;
        }
        let from_caller =
            self.remote.map(|r| r.ip()) == Some(from.ip()) || self.signal_ip == Some(from.ip());
        if !from_caller {
            return false;
        }
        // Authenticated before it may latch, confirm or keep the call alive.
        // The buffer is only made (and zeroed) for SRTP legs.
        let mut plain: [u8; MAX_SRTP_PACKET];
        let packet = match &mut self.crypto {
            Some(c) => {
                plain = [0u8; MAX_SRTP_PACKET];
                match c.open(self.call, packet, &mut plain, now_ms) {
                    Some(p) => p,
                    None => return false,
                }
            }
            None => packet,
        };
        if let Latch::Open { until_ms } = self.latch {
            if now_ms <= until_ms && self.remote != Some(from) {
                tracing::debug!("RTP latched to its source");
                self.remote = Some(from);
            }
            self.latch = Latch::Done;
        } else if self.remote != Some(from) {
            return false;
        }
        self.last_rx_ms = now_ms;
        // The peer sends from where we send to: it asked for our audio.
        self.confirmed |= self.remote == Some(from);
        self.session.on_rtp(packet, now_ms);
        true
    }
}

/// A leg as the receive thread holds it.
pub type LegHandle = Arc<Mutex<MediaLeg>>;

fn lock(leg: &Mutex<MediaLeg>) -> MutexGuard<'_, MediaLeg> {
    leg.lock().unwrap_or_else(|p| p.into_inner())
}

struct Leg {
    port: u16,
    /// Where in the frame this leg sends (see `SEND_SLOTS`).
    slot: usize,
    shared: LegHandle,
    send: bool,
    started: bool,
    timed_out: bool,
    /// The voice message being recorded, if any.
    recording: Option<RecordingId>,
}

/// Two legs talking to each other.
struct ActiveBridge {
    caller: CallId,
    operator: CallId,
    core: Bridge,
    recording: Option<RecordingId>,
    /// Interleaved stereo frames not yet handed to the sink.
    pending: Vec<i16>,
}

impl ActiveBridge {
    fn has(&self, call: CallId) -> bool {
        self.caller == call || self.operator == call
    }
}

/// Whom a recording's result is for.
#[derive(Debug, Clone, Copy)]
enum RecordingOwner {
    /// A voice message; the stop reason is known once it stopped.
    Voicemail {
        call: CallId,
        reason: Option<StopReason>,
    },
    /// A conversation; `BridgeEnded` follows its result.
    Conversation { caller: CallId, operator: CallId },
}

pub struct MediaCore {
    cfg: MediaConfig,
    /// RTP stream starts (SSRC, sequence, timestamp) of new legs.
    rng: rand::rngs::StdRng,
    pool: PortPool,
    legs: HashMap<CallId, Leg>,
    bridges: Vec<ActiveBridge>,
    recordings: HashMap<RecordingId, RecordingOwner>,
    next_recording: RecordingId,
    events: VecDeque<MediaEvent>,
    sink: VecDeque<SinkCommand>,
    ticks: u64,
    /// The legs that send in each slot of a frame.
    slots: [Vec<CallId>; SEND_SLOTS],
    /// The legs of the current slot (kept to avoid an allocation per slot).
    tick_order: Vec<CallId>,
    srtp_drops: Arc<SrtpDrops>,
}

impl MediaCore {
    pub fn new(cfg: MediaConfig, rng: &mut dyn RngCore) -> Self {
        use rand::SeedableRng;
        MediaCore {
            pool: PortPool::new(cfg.ports, rng),
            rng: rand::rngs::StdRng::from_rng(rng).expect("a generator seeds another"),
            cfg,
            legs: HashMap::new(),
            bridges: Vec::new(),
            recordings: HashMap::new(),
            next_recording: 1,
            events: VecDeque::new(),
            sink: VecDeque::new(),
            ticks: 0,
            slots: std::array::from_fn(|_| Vec::new()),
            tick_order: Vec::new(),
            srtp_drops: Arc::new(SrtpDrops::default()),
        }
    }

    /// SRTP packets dropped by every leg (for the metrics).
    pub fn srtp_drops(&self) -> Arc<SrtpDrops> {
        self.srtp_drops.clone()
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    pub fn poll_sink(&mut self) -> Option<SinkCommand> {
        self.sink.pop_front()
    }

    pub fn leg_count(&self) -> usize {
        self.legs.len()
    }

    /// A port for a new leg (`leg_bound` or `port_unusable` tell what became of it).
    pub fn take_port(&mut self) -> Option<u16> {
        self.pool.take()
    }

    /// The engine could not bind `port`: back to the pool.
    pub fn port_unusable(&mut self, port: u16) {
        self.pool.give_back(port);
    }

    /// No port could be had for `call`.
    pub fn allocation_failed(&mut self, call: CallId) {
        tracing::warn!(call, "no free RTP port");
        self.events.push_back(MediaEvent::Failed { call });
    }

    /// The engine bound `port` for `call`: the leg exists from now on.
    pub fn leg_bound(&mut self, call: CallId, port: u16, now_ms: u64) -> LegHandle {
        let shared = Arc::new(Mutex::new(MediaLeg {
            session: MediaSession::new(Codec::Pcmu, None, false, RtpSender::random(&mut self.rng)),
            remote: None,
            signal_ip: None,
            latch: Latch::Done,
            last_rx_ms: now_ms,
            confirmed: false,
            withheld: 0,
            crypto: None,
            call,
        }));
        // The emptiest slot, so that each slot's share of the sending stays even.
        let slot = (0..SEND_SLOTS)
            .min_by_key(|&s| self.slots[s].len())
            .unwrap_or(0);
        self.slots[slot].push(call);
        let replaced = self.legs.insert(
            call,
            Leg {
                port,
                slot,
                shared: shared.clone(),
                send: false,
                started: false,
                timed_out: false,
                recording: None,
            },
        );
        if let Some(old) = replaced {
            self.leave_slot(call, old.slot);
            self.pool.give_back(old.port);
        }
        self.events.push_back(MediaEvent::Allocated { call, port });
        shared
    }

    /// A packet for `call` (what the receive thread does through the handle).
    pub fn receive(&mut self, call: CallId, from: SocketAddr, packet: &[u8], now_ms: u64) {
        if let Some(leg) = self.legs.get(&call) {
            lock(&leg.shared).receive(from, packet, now_ms);
        }
    }

    pub fn handle_command(&mut self, cmd: EngineCommand, now_ms: u64) {
        match cmd {
            EngineCommand::Sip(MediaCommand::Allocate { call, .. }) => {
                // The engine binds; a core without one (tests) takes the next port.
                match self.take_port() {
                    Some(port) => {
                        self.leg_bound(call, port, now_ms);
                    }
                    None => self.allocation_failed(call),
                }
            }
            EngineCommand::Sip(MediaCommand::Start {
                call,
                remote,
                signal_ip,
                codec,
                telephone_event_pt,
                send,
                confirmed,
                srtp,
            }) => {
                let (latch_on, inband) = (self.cfg.latch, self.cfg.inband);
                if let Some(leg) = self.legs.get_mut(&call) {
                    let mut sh = lock(&leg.shared);
                    sh.use_srtp(srtp.as_ref(), &self.srtp_drops);
                    if sh.remote != remote {
                        // New signalled address (first answer or re-INVITE): may latch again.
                        sh.latch = if latch_on {
                            Latch::Open {
                                until_ms: now_ms + LATCH_WINDOW_MS,
                            }
                        } else {
                            Latch::Done
                        };
                    }
                    if sh.remote != remote {
                        sh.confirmed = confirmed;
                    }
                    sh.confirmed |= confirmed;
                    sh.remote = remote;
                    sh.signal_ip = Some(signal_ip);
                    sh.session.update(codec, telephone_event_pt);
                    sh.session.set_inband(match inband {
                        InbandPolicy::Always => true,
                        InbandPolicy::Never => false,
                        InbandPolicy::Auto => telephone_event_pt.is_none(),
                    });
                    leg.send = send;
                    if !leg.started {
                        leg.started = true;
                        sh.last_rx_ms = now_ms;
                    }
                }
            }
            EngineCommand::Sip(MediaCommand::Stop { call }) => {
                if let Some(i) = self.bridges.iter().position(|b| b.has(call)) {
                    let b = self.bridges.swap_remove(i);
                    self.end_bridge(b);
                }
                if let Some(leg) = self.legs.get(&call) {
                    // A recording in progress is kept: finish it before the leg goes.
                    lock(&leg.shared).session.stop_recording();
                }
                self.collect_leg(call);
                if let Some(leg) = self.legs.remove(&call) {
                    self.pool.give_back(leg.port);
                    self.leave_slot(call, leg.slot);
                }
                release_spare(&mut self.legs);
                release_spare(&mut self.recordings);
                release_spare_queue(&mut self.events);
                release_spare_queue(&mut self.sink);
            }
            EngineCommand::Play {
                call,
                token,
                prompts,
                looping,
            } => self.with_session(call, |s| s.play(token, prompts, looping)),
            EngineCommand::StopPlayback { call } => self.with_session(call, |s| s.stop_playback()),
            EngineCommand::StartRecording { call, path, spec } => {
                self.start_recording(call, path, &spec)
            }
            EngineCommand::StopRecording { call } => {
                self.with_session(call, |s| s.stop_recording())
            }
            EngineCommand::SendDigit {
                call,
                digit,
                duration_ms,
                mode,
            } => self.with_session(call, |s| s.send_digit(digit, duration_ms, mode)),
            EngineCommand::InfoDigit {
                call,
                digit,
                duration_ms,
            } => self.with_session(call, |s| s.on_info_digit(digit, duration_ms)),
            EngineCommand::Bridge {
                caller,
                operator,
                record,
            } => self.start_bridge(caller, operator, record),
            EngineCommand::Unbridge { call } => {
                match self.bridges.iter().position(|b| b.has(call)) {
                    Some(i) => {
                        let b = self.bridges.swap_remove(i);
                        self.end_bridge(b);
                    }
                    None => tracing::debug!(call, "unbridge: not bridged"),
                }
            }
        }
    }

    fn with_session(&mut self, call: CallId, f: impl FnOnce(&mut MediaSession)) {
        if let Some(leg) = self.legs.get(&call) {
            f(&mut lock(&leg.shared).session);
        }
        self.collect_leg(call);
    }

    fn new_recording(&mut self, owner: RecordingOwner, path: PathBuf, channels: Channels) -> u64 {
        let id = self.next_recording;
        self.next_recording += 1;
        self.recordings.insert(id, owner);
        self.sink
            .push_back(SinkCommand::Open { id, path, channels });
        id
    }

    fn start_recording(&mut self, call: CallId, path: PathBuf, spec: &RecordSpec) {
        let started = match self.legs.get(&call) {
            Some(leg) => lock(&leg.shared).session.start_recording(spec),
            None => Err("no such call".into()),
        };
        match started {
            Ok(()) => {
                let owner = RecordingOwner::Voicemail { call, reason: None };
                let id = self.new_recording(owner, path, Channels::Mono);
                if let Some(leg) = self.legs.get_mut(&call) {
                    leg.recording = Some(id);
                }
            }
            Err(e) => {
                tracing::error!(call, "cannot start recording: {e}");
                self.events.push_back(MediaEvent::RecordingStopped {
                    call,
                    reason: StopReason::HangUp,
                    result: Err(e),
                });
            }
        }
    }

    /// Takes a leg's events and recorded audio (after commands, received packets and
    /// ticks): events go to the hosts, audio to the sink.
    fn collect_leg(&mut self, call: CallId) {
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        let mut sh = lock(&leg.shared);
        if let (Some(id), Some(audio)) = (
            leg.recording,
            sh.session.take_recorded_audio(SINK_BATCH_SAMPLES),
        ) {
            self.sink
                .push_back(SinkCommand::Write { id, samples: audio });
        }
        while let Some(ev) = sh.session.poll_event() {
            match ev {
                SessionEvent::Digit(digit) => {
                    self.events.push_back(MediaEvent::Digit { call, digit })
                }
                SessionEvent::PlayFinished(token) => self
                    .events
                    .push_back(MediaEvent::PlayFinished { call, token }),
                SessionEvent::RecordingStopped {
                    reason,
                    keep_samples,
                    audio,
                } => {
                    let Some(id) = leg.recording.take() else {
                        continue;
                    };
                    if !audio.is_empty() {
                        self.sink
                            .push_back(SinkCommand::Write { id, samples: audio });
                    }
                    self.sink.push_back(SinkCommand::Finish {
                        id,
                        keep_samples: Some(keep_samples),
                    });
                    if let Some(RecordingOwner::Voicemail { reason: r, .. }) =
                        self.recordings.get_mut(&id)
                    {
                        *r = Some(reason);
                    }
                }
            }
        }
    }

    /// What the sink made of a recording.
    pub fn on_sink_result(&mut self, result: SinkResult) {
        match result {
            SinkResult::OpenFailed { id, error } => {
                let Some(owner) = self.recordings.remove(&id) else {
                    return;
                };
                match owner {
                    RecordingOwner::Voicemail { call, .. } => {
                        tracing::error!(call, "cannot create the recording: {error}");
                        if let Some(leg) = self.legs.get_mut(&call) {
                            if leg.recording == Some(id) {
                                leg.recording = None;
                                lock(&leg.shared).session.drop_recording();
                            }
                        }
                        self.events.push_back(MediaEvent::RecordingStopped {
                            call,
                            reason: StopReason::HangUp,
                            result: Err(error),
                        });
                    }
                    RecordingOwner::Conversation { caller, operator } => {
                        // The conversation matters more than its recording: it goes on.
                        tracing::error!(caller, operator, "cannot record conversation: {error}");
                        let mut bridged = false;
                        for b in self.bridges.iter_mut().filter(|b| b.recording == Some(id)) {
                            b.recording = None;
                            b.pending = Vec::new();
                            bridged = true;
                        }
                        self.events.push_back(MediaEvent::ConversationRecorded {
                            caller,
                            operator,
                            result: Err(error),
                        });
                        if !bridged {
                            // The bridge ended before the sink answered.
                            self.events
                                .push_back(MediaEvent::BridgeEnded { caller, operator });
                        }
                    }
                }
            }
            SinkResult::Finished { id, result } => {
                let Some(owner) = self.recordings.remove(&id) else {
                    return;
                };
                match owner {
                    RecordingOwner::Voicemail { call, reason } => {
                        self.events.push_back(MediaEvent::RecordingStopped {
                            call,
                            reason: reason.unwrap_or(StopReason::HangUp),
                            result,
                        })
                    }
                    RecordingOwner::Conversation { caller, operator } => {
                        self.events.push_back(MediaEvent::ConversationRecorded {
                            caller,
                            operator,
                            result,
                        });
                        self.events
                            .push_back(MediaEvent::BridgeEnded { caller, operator });
                    }
                }
            }
        }
    }

    fn start_bridge(&mut self, caller: CallId, operator: CallId, record: Option<PathBuf>) {
        let refuse = |core: &mut MediaCore, why: &str| {
            tracing::warn!(caller, operator, "cannot bridge: {why}");
            if record.is_some() {
                core.events.push_back(MediaEvent::ConversationRecorded {
                    caller,
                    operator,
                    result: Err(format!("not bridged: {why}")),
                });
            }
            core.events
                .push_back(MediaEvent::BridgeEnded { caller, operator });
        };
        if caller == operator {
            return refuse(self, "a leg cannot be bridged to itself");
        }
        if !self.legs.contains_key(&caller) || !self.legs.contains_key(&operator) {
            return refuse(self, "no such leg");
        }
        if self
            .bridges
            .iter()
            .any(|b| b.has(caller) || b.has(operator))
        {
            return refuse(self, "a leg is already bridged");
        }
        let recording = record.map(|path| {
            self.new_recording(
                RecordingOwner::Conversation { caller, operator },
                path,
                Channels::Stereo,
            )
        });
        for call in [caller, operator] {
            if let Some(leg) = self.legs.get(&call) {
                let mut sh = lock(&leg.shared);
                sh.session.stop_playback();
                sh.session.start_relay();
            }
        }
        tracing::info!(caller, operator, "bridged");
        self.bridges.push(ActiveBridge {
            caller,
            operator,
            core: Bridge::new(JitterConfig::default()),
            recording,
            pending: Vec::new(),
        });
    }

    fn end_bridge(&mut self, b: ActiveBridge) {
        let ActiveBridge {
            caller,
            operator,
            core,
            recording,
            pending,
        } = b;
        for call in [caller, operator] {
            if let Some(leg) = self.legs.get(&call) {
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
        match recording {
            Some(id) => {
                if !pending.is_empty() {
                    self.sink.push_back(SinkCommand::Write {
                        id,
                        samples: pending,
                    });
                }
                // ConversationRecorded and BridgeEnded follow the sink's answer.
                self.sink.push_back(SinkCommand::Finish {
                    id,
                    keep_samples: None,
                });
            }
            None => self
                .events
                .push_back(MediaEvent::BridgeEnded { caller, operator }),
        }
    }

    /// One whole 20 ms frame at `now_ms`, every slot at once: every started leg's
    /// next packet goes to `send` (leg, destination, bytes), bridges move audio
    /// between their legs, recordings' audio goes to the sink, and silent legs time
    /// out. The engine runs the slots of a frame spread over it (`tick_slot`).
    pub fn tick(&mut self, now_ms: u64, send: &mut dyn FnMut(CallId, SocketAddr, &[u8])) {
        for slot in 0..SEND_SLOTS {
            self.tick_slot(slot, now_ms, send);
        }
    }

    /// Slot `slot` (0..`SEND_SLOTS`) of a frame at `now_ms`: the next packet of each
    /// started leg in the slot goes to `send`. Slot 0 also does the frame's own work
    /// (bridges, their recordings, silence timeouts) before its legs, so every leg
    /// of a bridge sends what the bridge made of the frame.
    pub fn tick_slot(
        &mut self,
        slot: usize,
        now_ms: u64,
        send: &mut dyn FnMut(CallId, SocketAddr, &[u8]),
    ) {
        if slot == 0 {
            self.begin_frame(now_ms);
        }
        // Room for the SRTP tag behind the longest RTP packet.
        let mut buf = [0u8; MAX_PACKET + TAG_LEN];
        let mut order = std::mem::take(&mut self.tick_order);
        order.clear();
        if let Some(members) = self.slots.get(slot) {
            order.extend_from_slice(members);
        }
        for &call in &order {
            let Some(leg) = self.legs.get(&call) else {
                continue;
            };
            if leg.started {
                let mut sh = lock(&leg.shared);
                match (leg.send, sh.remote) {
                    (true, Some(remote)) if sh.confirmed => {
                        let rtp = buf.first_chunk_mut().expect("the buffer holds a packet");
                        let n = sh.session.on_tick(rtp);
                        if let Some(n) = sh.seal(&mut buf, n) {
                            send(call, remote, &buf[..n]);
                        }
                    }
                    // Not sure the address wants our audio: nothing goes out, and
                    // nothing is used up, so the caller hears prompts from their start
                    // once their first packet confirms it.
                    (true, Some(_)) => sh.withheld += 1,
                    _ => {
                        sh.session
                            .on_tick(buf.first_chunk_mut().expect("the buffer holds a packet"));
                    }
                }
            }
            self.collect_leg(call);
        }
        self.tick_order = order;
    }

    /// Whether `slot` has legs to tick (slot 0 always has the frame's own work).
    pub fn slot_is_busy(&self, slot: usize) -> bool {
        slot == 0 || self.slots.get(slot).is_some_and(|m| !m.is_empty())
    }

    fn begin_frame(&mut self, now_ms: u64) {
        self.ticks += 1;
        for b in self.bridges.iter_mut() {
            tick_bridge(b, &self.legs);
        }
        for b in self.bridges.iter_mut() {
            let Some(id) = b.recording else { continue };
            let tick = b.core.last_tick();
            for (l, r) in tick.caller.iter().zip(tick.operator.iter()) {
                b.pending.push(*l);
                b.pending.push(*r);
            }
            if b.pending.len() >= 2 * SINK_BATCH_SAMPLES {
                let samples = std::mem::replace(
                    &mut b.pending,
                    Vec::with_capacity(2 * SINK_BATCH_SAMPLES + 320),
                );
                self.sink.push_back(SinkCommand::Write { id, samples });
            }
        }
        if self.ticks.is_multiple_of(50) && !self.cfg.rtp_timeout.is_zero() {
            self.check_rtp_timeouts(now_ms);
        }
    }

    fn leave_slot(&mut self, call: CallId, slot: usize) {
        if let Some(members) = self.slots.get_mut(slot) {
            if let Some(i) = members.iter().position(|&c| c == call) {
                members.swap_remove(i);
            }
        }
    }

    /// The clock skipped `frames` ticks (see `media::pacing`): every leg's stream
    /// jumps over them, with nothing of its audio lost.
    pub fn skip_frames(&mut self, frames: u32) {
        for leg in self.legs.values().filter(|l| l.started) {
            lock(&leg.shared).session.skip_frames(frames);
        }
    }

    fn check_rtp_timeouts(&mut self, now_ms: u64) {
        let limit = self.cfg.rtp_timeout.as_millis() as u64;
        let mut ended = Vec::new();
        for (call, leg) in self.legs.iter_mut() {
            let idle = now_ms.saturating_sub(lock(&leg.shared).last_rx_ms);
            if leg.started && !leg.timed_out && idle > limit {
                leg.timed_out = true;
                self.events
                    .push_back(MediaEvent::RtpTimeout { call: *call });
                if let Some(i) = self.bridges.iter().position(|b| b.has(*call)) {
                    ended.push(self.bridges.swap_remove(i));
                }
            }
        }
        for b in ended {
            self.end_bridge(b);
        }
    }
}

/// One clock tick of a bridge: received audio and digits in, each leg's frame out.
fn tick_bridge(b: &mut ActiveBridge, legs: &HashMap<CallId, Leg>) {
    let (Some(c), Some(o)) = (legs.get(&b.caller), legs.get(&b.operator)) else {
        return;
    };
    // The only place two legs are locked at once (the receive thread locks one), always
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::voicemail::VoicemailStopConfig;
    use rand::SeedableRng;

    fn core() -> MediaCore {
        MediaCore::new(
            MediaConfig {
                ports: PortRange {
                    first: 20000,
                    last: 20100,
                },
                rtp_timeout: std::time::Duration::from_secs(2),
                inband: InbandPolicy::Auto,
                latch: true,
            },
            &mut rand::rngs::StdRng::seed_from_u64(7),
        )
    }

    fn start(core: &mut MediaCore, call: CallId, remote: SocketAddr) {
        core.handle_command(
            EngineCommand::Sip(MediaCommand::Allocate {
                call,
                local_ip: [127, 0, 0, 1].into(),
            }),
            0,
        );
        core.handle_command(
            EngineCommand::Sip(MediaCommand::Start {
                call,
                remote: Some(remote),
                signal_ip: remote.ip(),
                codec: Codec::Pcmu,
                telephone_event_pt: Some(101),
                send: true,
                confirmed: true,
                srtp: None,
            }),
            0,
        );
    }

    #[test]
    fn legs_send_once_a_frame_in_their_own_slot_and_new_legs_fill_the_emptiest() {
        let mut c = core();
        let remote = |call: CallId| SocketAddr::from(([127, 0, 0, 1], 40000 + 2 * call as u16));
        for call in 1..=41 {
            start(&mut c, call, remote(call));
        }
        let frame = |c: &mut MediaCore| -> Vec<Vec<CallId>> {
            (0..SEND_SLOTS)
                .map(|slot| {
                    let mut sent = Vec::new();
                    c.tick_slot(slot, 0, &mut |call, to, _| {
                        assert_eq!(to, remote(call));
                        sent.push(call);
                    });
                    sent
                })
                .collect()
        };
        let first = frame(&mut c);
        let mut sizes: Vec<usize> = first.iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes[..SEND_SLOTS - 1], [2; SEND_SLOTS - 1], "{first:?}");
        assert_eq!(sizes[SEND_SLOTS - 1], 3, "41 legs over 20 slots: {first:?}");
        let mut every = first.concat();
        every.sort_unstable();
        assert_eq!(every, (1..=41).collect::<Vec<_>>(), "each leg once a frame");
        for _ in 0..3 {
            assert_eq!(frame(&mut c), first, "a leg keeps its slot");
        }
        let emptied = 7;
        for &call in &first[emptied] {
            c.handle_command(EngineCommand::Sip(MediaCommand::Stop { call }), 0);
        }
        start(&mut c, 100, remote(100));
        start(&mut c, 101, remote(101));
        let after = frame(&mut c);
        let mut refilled = after[emptied].clone();
        refilled.sort_unstable();
        assert_eq!(refilled, [100, 101]);
        assert_eq!(after.concat().len(), 41);
        // The whole frame at once is the same sends.
        let mut whole = Vec::new();
        c.tick(0, &mut |call, _, _| whole.push(call));
        assert_eq!(whole, after.concat());
    }

    #[test]
    fn pool_hands_out_even_ports_and_reuses_last() {
        let mut p = PortPool::new(
            PortRange {
                first: 20001,
                last: 20011,
            },
            &mut rand::rngs::StdRng::seed_from_u64(1),
        );
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

    #[test]
    fn a_voice_message_reaches_the_sink_in_batches_and_is_reported_once_finished() {
        let mut c = core();
        let caller: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        start(&mut c, 1, caller);
        c.handle_command(
            EngineCommand::StartRecording {
                call: 1,
                path: "/r/vm.wav".into(),
                spec: RecordSpec {
                    stop: VoicemailStopConfig::default(),
                },
            },
            0,
        );
        let mut peer = crate::media::rtp::RtpSender::new(9, 1, 0);
        let mut pkt = [0u8; MAX_PACKET];
        let mut sent = 0;
        for t in 0..100u64 {
            let n = peer.build(0, &[0x55; 160], &mut pkt);
            c.receive(1, caller, &pkt[..n], t * 20);
            c.tick(t * 20, &mut |_, to, _| {
                assert_eq!(to, caller);
                sent += 1;
            });
        }
        assert_eq!(sent, 100);
        c.handle_command(EngineCommand::StopRecording { call: 1 }, 2000);
        let sink: Vec<SinkCommand> = std::iter::from_fn(|| c.poll_sink()).collect();
        assert!(matches!(
            sink[0],
            SinkCommand::Open {
                id: 1,
                channels: Channels::Mono,
                ..
            }
        ));
        let written: usize = sink
            .iter()
            .map(|s| match s {
                SinkCommand::Write { samples, .. } => samples.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(written, 16_000);
        assert!(sink.len() <= 2 + 10 + 1, "batched: {} commands", sink.len());
        assert_eq!(
            sink.last(),
            Some(&SinkCommand::Finish {
                id: 1,
                keep_samples: Some(16_000)
            })
        );
        // Nothing is reported until the sink says the file is durable.
        assert!(!std::iter::from_fn(|| c.poll_event())
            .any(|e| matches!(e, MediaEvent::RecordingStopped { .. })));
        c.on_sink_result(SinkResult::Finished {
            id: 1,
            result: Err("disk full".into()),
        });
        let ev: Vec<MediaEvent> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(matches!(
            ev.as_slice(),
            [MediaEvent::RecordingStopped {
                call: 1,
                reason: StopReason::HangUp,
                result: Err(_)
            }]
        ));
    }

    #[test]
    fn a_recording_that_cannot_be_created_is_reported_and_forgotten() {
        let mut c = core();
        start(&mut c, 1, "127.0.0.1:40000".parse().unwrap());
        let spec = RecordSpec {
            stop: VoicemailStopConfig::default(),
        };
        c.handle_command(
            EngineCommand::StartRecording {
                call: 1,
                path: "/nope/vm.wav".into(),
                spec: spec.clone(),
            },
            0,
        );
        while c.poll_sink().is_some() {}
        while c.poll_event().is_some() {}
        c.on_sink_result(SinkResult::OpenFailed {
            id: 1,
            error: "permission denied".into(),
        });
        assert!(matches!(
            c.poll_event(),
            Some(MediaEvent::RecordingStopped {
                call: 1,
                result: Err(_),
                ..
            })
        ));
        // The leg can record again at once.
        c.handle_command(
            EngineCommand::StartRecording {
                call: 1,
                path: "/r/vm2.wav".into(),
                spec,
            },
            0,
        );
        assert!(matches!(
            c.poll_sink(),
            Some(SinkCommand::Open { id: 2, .. })
        ));
        assert!(c.poll_event().is_none());
    }

    /// An SRTP leg: the peer's packets are decrypted before the session sees them,
    /// ours leave encrypted, forged ones are dropped and counted without keeping the
    /// call alive, and the same keys again (a re-INVITE) keep the stream's state.
    #[test]
    fn an_srtp_leg_protects_what_it_sends_and_checks_what_it_receives() {
        use crate::call::{SrtpKeys, SrtpMasterKey};
        use crate::media::srtp::{Protector, Unprotector};
        let ours = SrtpMasterKey::new([1; 16], [2; 14]);
        let theirs = SrtpMasterKey::new([3; 16], [4; 14]);
        let keys = SrtpKeys {
            send: ours.clone(),
            receive: theirs.clone(),
        };
        let mut c = core();
        let caller: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        start(&mut c, 1, caller);
        let start_srtp = |c: &mut MediaCore, at: u64| {
            c.handle_command(
                EngineCommand::Sip(MediaCommand::Start {
                    call: 1,
                    remote: Some(caller),
                    signal_ip: caller.ip(),
                    codec: Codec::Pcmu,
                    telephone_event_pt: Some(101),
                    send: true,
                    confirmed: true,
                    srtp: Some(keys.clone()),
                }),
                at,
            )
        };
        start_srtp(&mut c, 0);
        c.handle_command(
            EngineCommand::StartRecording {
                call: 1,
                path: "/r/vm.wav".into(),
                spec: RecordSpec {
                    stop: VoicemailStopConfig::default(),
                },
            },
            0,
        );
        let mut peer_tx = Protector::new(theirs.key(), theirs.salt());
        let mut peer_rx = Unprotector::new(ours.key(), ours.salt());
        let mut peer = crate::media::rtp::RtpSender::new(9, 1, 0);
        let mut pkt = [0u8; MAX_PACKET];
        let (mut heard, mut forged_sent) = (0, 0);
        let mut last = Vec::new();
        for t in 0..100u64 {
            // A loud square wave, so the recording shows whether it was decrypted.
            let n = peer.build(0, &[0x80; 160], &mut pkt);
            let mut p = pkt[..n].to_vec();
            peer_tx.protect(&mut p).unwrap();
            if t == 50 {
                start_srtp(&mut c, t * 20);
                // Still the same stream: the last packet again is a replay.
                c.receive(1, caller, &last, t * 20);
            }
            c.receive(1, caller, &p, t * 20);
            last = p.clone();
            // A forged copy with a later sequence number.
            let mut forged = p.clone();
            forged[3] = forged[3].wrapping_add(1);
            c.receive(1, caller, &forged, t * 20);
            forged_sent += 1;
            c.tick(t * 20, &mut |_, to, bytes| {
                assert_eq!(to, caller);
                let plain = peer_rx.unprotect(bytes).expect("our packets are SRTP");
                assert_eq!(plain.len() + 10, bytes.len());
                heard += 1;
            });
        }
        assert_eq!(heard, 100);
        let drops = c.srtp_drops().counts();
        assert_eq!(drops.auth_failed, forged_sent, "{drops:?}");
        assert_eq!(drops.replayed, 1, "{drops:?}");
        c.handle_command(EngineCommand::StopRecording { call: 1 }, 2000);
        let samples: Vec<i16> = std::iter::from_fn(|| c.poll_sink())
            .flat_map(|s| match s {
                SinkCommand::Write { samples, .. } => samples,
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(samples.len(), 16_000, "every genuine packet was heard");
        let loud = samples.iter().filter(|s| s.abs() > 8000).count();
        assert!(
            loud > 15_000,
            "decrypted audio is recorded ({loud} loud samples)"
        );
        // Plain RTP on an SRTP leg is not audio: dropped and counted.
        let n = peer.build(0, &[0x80; 160], &mut pkt);
        c.receive(1, caller, &pkt[..n], 2100);
        assert_eq!(c.srtp_drops().counts().auth_failed, forged_sent + 1);
    }

    #[test]
    fn strangers_packets_are_dropped_and_silence_times_out() {
        let mut c = core();
        let caller: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        start(&mut c, 1, caller);
        let mut peer = crate::media::rtp::RtpSender::new(9, 1, 0);
        let mut pkt = [0u8; MAX_PACKET];
        let n = peer.build(0, &[0x55; 160], &mut pkt);
        let stranger: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        let mut timed_out_at = None;
        for t in 1..=200u64 {
            c.receive(1, stranger, &pkt[..n], t * 20);
            c.tick(t * 20, &mut |_, _, _| {});
            if std::iter::from_fn(|| c.poll_event())
                .any(|e| matches!(e, MediaEvent::RtpTimeout { call: 1 }))
            {
                timed_out_at = Some(t * 20);
                break;
            }
        }
        // Checked once a second: after 2 s of nothing from the caller, at 3 s.
        assert_eq!(timed_out_at, Some(3000));
    }
}
