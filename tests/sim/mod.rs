//! A simulated-time harness for whole calls, in the manner of quinn-proto's in-memory
//! pair: the hotline (switchboard = SIP endpoint + IVR and queue hosts, and the media
//! core with its sessions and bridges) and the phones that call it (the project's own
//! endpoint as a UAC and a media core each) exchange datagrams over a virtual network
//! with latency, loss and reordering on demand, on a virtual clock. No sockets, no
//! threads, no sleeping: a minute of calls runs in a fraction of a second.
//!
//! The store is a list of the commands the hotline wrote (a voice message is
//! acknowledged as committed at once), and recordings are kept in memory.
#![allow(dead_code)]

use hotline::app::{App, AppSetup, Effect, Switchboard};
use hotline::call::{
    CallEvent, CallId, Channels, Link, MediaCommand, MediaEvent, Peer, RecordingInfo, WallClock,
};
use hotline::config::{Config, PortRange};
use hotline::media::core::{
    EngineCommand, InbandPolicy, MediaConfig, MediaCore, SinkCommand, SinkResult, FRAME_MS,
};
use hotline::media::prompt::{Prompt, PromptAudio};
use hotline::media::session::DtmfMode;
use hotline::sip::digest::{expected_response, ha1, Algorithm, Ha1Set, QopAuth};
use hotline::sip::{Endpoint, EndpointConfig, Output};
use hotline::store::{StoreCommand, StoreEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub const SIP_PORT: u16 = 5060;
/// Where an operator's phone sends its REGISTERs from (the harness answers the
/// challenge; the phone's endpoint takes the calls on `SIP_PORT`).
pub const REGISTER_PORT: u16 = 5070;
pub const OPERATOR_PASSWORD: &str = "operator-secret-1";

pub fn hotline_ip() -> IpAddr {
    "10.0.0.1".parse().unwrap()
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

impl Packet {
    pub fn is_sip(&self) -> bool {
        self.to.port() == SIP_PORT
            || self.from.port() == SIP_PORT
            || self.to.port() == REGISTER_PORT
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// What the virtual network does to packets.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub latency: Duration,
    /// Extra random delay (0..jitter) per packet: reorders when larger than the gap
    /// between packets.
    pub jitter: Duration,
    pub sip_loss: f64,
    pub rtp_loss: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            sip_loss: 0.0,
            rtp_loss: 0.0,
        }
    }
}

struct InFlight {
    at: Instant,
    seq: u64,
    packet: Packet,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

pub struct Net {
    pub cfg: NetConfig,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    rng: StdRng,
    /// Every SIP message put on the wire (before loss), in order.
    pub sip_log: Vec<(Instant, Packet)>,
    pub lost: u64,
}

impl Net {
    fn send(&mut self, now: Instant, packet: Packet) {
        let sip = packet.is_sip();
        if sip {
            self.sip_log.push((now, packet.clone()));
        }
        let loss = if sip {
            self.cfg.sip_loss
        } else {
            self.cfg.rtp_loss
        };
        if loss > 0.0 && self.rng.gen_bool(loss) {
            self.lost += 1;
            return;
        }
        let jitter = if self.cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.cfg.jitter.mul_f64(self.rng.gen::<f64>())
        };
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at: now + self.cfg.latency + jitter,
            seq: self.seq,
            packet,
        }));
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(p)| p.at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        if self.next_at()? <= now {
            self.queue.pop().map(|Reverse(p)| p.packet)
        } else {
            None
        }
    }
}

/// Recordings kept in memory: what the sink would have written.
#[derive(Default)]
pub struct MemorySink {
    open: HashMap<u64, (PathBuf, Channels, Vec<i16>)>,
    /// Finished recordings by path: channels and samples (interleaved when stereo).
    pub files: HashMap<PathBuf, (Channels, Vec<i16>)>,
}

impl MemorySink {
    fn apply(&mut self, cmd: SinkCommand) -> Option<SinkResult> {
        match cmd {
            SinkCommand::Open { id, path, channels } => {
                self.open.insert(id, (path, channels, Vec::new()));
                None
            }
            SinkCommand::Write { id, samples } => {
                if let Some((_, _, buf)) = self.open.get_mut(&id) {
                    buf.extend_from_slice(&samples);
                }
                None
            }
            SinkCommand::Finish { id, keep_samples } => {
                let (path, channels, mut buf) = self.open.remove(&id)?;
                let ch = channels.count() as usize;
                if let Some(k) = keep_samples {
                    buf.truncate((k as usize) * ch);
                }
                let samples = (buf.len() / ch) as u64;
                let info = RecordingInfo {
                    path: path.clone(),
                    channels,
                    samples,
                    duration_ms: samples / 8,
                    size_bytes: 44 + 2 * buf.len() as u64,
                    sha256_hex: String::new(),
                };
                self.files.insert(path, (channels, buf));
                Some(SinkResult::Finished {
                    id,
                    result: Ok(info),
                })
            }
        }
    }
}

fn media_core(seed: u64) -> MediaCore {
    MediaCore::new(
        MediaConfig {
            ports: PortRange {
                first: 20000,
                last: 60000,
            },
            rtp_timeout: Duration::from_secs(30),
            inband: InbandPolicy::Auto,
            latch: true,
        },
        &mut StdRng::seed_from_u64(seed),
    )
}

/// The media of one node: its core, which call owns which port, the recordings.
struct NodeMedia {
    core: MediaCore,
    ip: IpAddr,
    port_of: HashMap<CallId, u16>,
    call_of: HashMap<u16, CallId>,
    sink: MemorySink,
}

impl NodeMedia {
    fn new(ip: IpAddr, seed: u64) -> Self {
        NodeMedia {
            core: media_core(seed),
            ip,
            port_of: HashMap::new(),
            call_of: HashMap::new(),
            sink: MemorySink::default(),
        }
    }

    /// Runs the sink and returns the media events for the SIP side.
    fn events(&mut self) -> Vec<MediaEvent> {
        loop {
            let mut moved = false;
            while let Some(cmd) = self.core.poll_sink() {
                moved = true;
                if let Some(r) = self.sink.apply(cmd) {
                    self.core.on_sink_result(r);
                }
            }
            if !moved {
                break;
            }
        }
        let mut out = Vec::new();
        while let Some(ev) = self.core.poll_event() {
            if let MediaEvent::Allocated { call, port } = ev {
                self.port_of.insert(call, port);
                self.call_of.insert(port, call);
            }
            out.push(ev);
        }
        out
    }

    fn tick(&mut self, now_ms: u64, net: &mut Net, now: Instant) {
        let (ip, port_of) = (self.ip, &self.port_of);
        self.core.tick(now_ms, &mut |call, to, bytes| {
            if let Some(port) = port_of.get(&call) {
                net.send(
                    now,
                    Packet {
                        from: SocketAddr::new(ip, *port),
                        to,
                        data: bytes.to_vec(),
                    },
                );
            }
        });
    }

    fn receive(&mut self, p: &Packet, now_ms: u64) {
        if let Some(call) = self.call_of.get(&p.to.port()) {
            self.core.receive(*call, p.from, &p.data, now_ms);
        }
    }
}

fn wall(base: Instant) -> WallClock {
    WallClock::anchor(
        base,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    )
}

/// The hotline under test.
pub struct Hotline {
    pub sb: Switchboard,
    media: NodeMedia,
    /// Every store command, in order.
    pub store: Vec<StoreCommand>,
    /// Every media command the hotline gave, in order, with its time.
    pub media_log: Vec<(Instant, EngineCommand)>,
}

impl Hotline {
    fn new(base: Instant, tweak: impl FnOnce(&mut EndpointConfig)) -> Self {
        let (cfg, _) = Config::load(None, &[]).expect("embedded config");
        let (flow, prompts) = hotline::serve::load::call_flow(&cfg).expect("shipped flow");
        let app = App::new(
            AppSetup {
                flow,
                prompts,
                recordings_dir: PathBuf::from("/recordings"),
                queue: cfg.queue.clone(),
                available_on_register: true,
            },
            StdRng::seed_from_u64(1),
            wall(base),
        );
        let mut ep_cfg = EndpointConfig {
            max_calls: 5000,
            registrar: Some(hotline::serve::registrar_setup(&cfg)),
            ..EndpointConfig::default()
        };
        tweak(&mut ep_cfg);
        let ep = Endpoint::new(ep_cfg, StdRng::seed_from_u64(2), base, wall(base));
        Hotline {
            sb: Switchboard::new(ep, app, cfg.operators.feature_available.clone()),
            media: NodeMedia::new(hotline_ip(), 3),
            store: Vec::new(),
            media_log: Vec::new(),
        }
    }

    pub fn add_operator(&mut self, user: &str, name: &str) {
        let realm = Config::load(None, &[]).unwrap().0.operators.realm;
        self.sb.ep.set_operator_credentials(
            [(
                user.to_string(),
                Ha1Set::from_password(user, &realm, OPERATOR_PASSWORD),
            )]
            .into(),
        );
        self.sb
            .app
            .set_operator_names([(user.to_string(), name.to_string())].into());
    }

    fn flush(&mut self, now: Instant, now_ms: u64, net: &mut Net) {
        loop {
            let mut moved = false;
            while let Some(effect) = self.sb.poll_effect() {
                moved = true;
                match effect {
                    Effect::Transmit { peer, data } => net.send(
                        now,
                        Packet {
                            from: SocketAddr::new(hotline_ip(), SIP_PORT),
                            to: peer.remote,
                            data: data.to_vec(),
                        },
                    ),
                    // No trunks in the simulated world.
                    Effect::CloseConnection(_) | Effect::Trunk(_) => {}
                    Effect::Media(cmd) => {
                        self.media_log.push((now, clone_command(&cmd)));
                        self.media.core.handle_command(cmd, now_ms);
                    }
                    Effect::Store(cmd) => {
                        let ack = match &cmd {
                            StoreCommand::Recording {
                                call,
                                kind: "voicemail",
                                ..
                            } => Some(*call),
                            _ => None,
                        };
                        self.store.push(cmd);
                        if let Some(call) = ack {
                            self.sb.on_store_event(
                                StoreEvent::RecordingStored { call, ok: true },
                                now,
                            );
                        }
                    }
                }
            }
            for ev in self.media.events() {
                moved = true;
                self.sb.on_media_event(ev, now);
            }
            if !moved {
                return;
            }
        }
    }

    pub fn recording(&self, path: &PathBuf) -> Option<&(Channels, Vec<i16>)> {
        self.media.sink.files.get(path)
    }

    /// Prompt ids played to `call`, in order.
    pub fn played(&self, call: CallId) -> Vec<String> {
        self.media_log
            .iter()
            .filter_map(|(_, c)| match c {
                EngineCommand::Play {
                    call: c, prompts, ..
                } if *c == call => Some(prompts),
                _ => None,
            })
            .flatten()
            .map(|p| p.id().to_string())
            .collect()
    }

    pub fn calls_started(&self) -> Vec<CallId> {
        self.store
            .iter()
            .filter_map(|c| match c {
                StoreCommand::Event(CallEvent::Started { call, .. }) => Some(*call),
                _ => None,
            })
            .collect()
    }

    pub fn end_reason(&self, call: CallId) -> Option<String> {
        self.store.iter().find_map(|c| match c {
            StoreCommand::Event(CallEvent::Ended {
                call: c, reason, ..
            }) if *c == call => Some(reason.as_str()),
            _ => None,
        })
    }

    pub fn queue_kinds(&self, call: CallId) -> Vec<&'static str> {
        self.store
            .iter()
            .filter_map(|c| match c {
                StoreCommand::Queue { call: c, kind, .. } if *c == call => Some(*kind),
                _ => None,
            })
            .collect()
    }
}

/// Media commands hold prompts by `Arc`; a log keeps what matters for assertions.
fn clone_command(cmd: &EngineCommand) -> EngineCommand {
    match cmd {
        EngineCommand::Play {
            call,
            token,
            prompts,
            looping,
        } => EngineCommand::Play {
            call: *call,
            token: *token,
            prompts: prompts.clone(),
            looping: *looping,
        },
        EngineCommand::StartRecording { call, path, spec } => EngineCommand::StartRecording {
            call: *call,
            path: path.clone(),
            spec: spec.clone(),
        },
        EngineCommand::Bridge {
            caller,
            operator,
            record,
        } => EngineCommand::Bridge {
            caller: *caller,
            operator: *operator,
            record: record.clone(),
        },
        EngineCommand::StopPlayback { call } => EngineCommand::StopPlayback { call: *call },
        EngineCommand::StopRecording { call } => EngineCommand::StopRecording { call: *call },
        EngineCommand::Unbridge { call } => EngineCommand::Unbridge { call: *call },
        EngineCommand::SendDigit {
            call,
            digit,
            duration_ms,
            mode,
        } => EngineCommand::SendDigit {
            call: *call,
            digit: *digit,
            duration_ms: *duration_ms,
            mode: *mode,
        },
        EngineCommand::InfoDigit {
            call,
            digit,
            duration_ms,
        } => EngineCommand::InfoDigit {
            call: *call,
            digit: *digit,
            duration_ms: *duration_ms,
        },
        EngineCommand::Sip(m) => EngineCommand::Sip(m.clone()),
    }
}

/// A phone: the project's endpoint (a UAC for callers, an answering UAS for an
/// operator) and a media core.
pub struct Phone {
    pub ip: IpAddr,
    pub ep: Endpoint,
    media: NodeMedia,
    /// Call events seen by the phone, with their time.
    pub events: Vec<(Instant, CallEvent)>,
    /// Digits the phone heard.
    pub digits: Vec<(CallId, char)>,
    /// Operator phones: the registration the harness runs for it.
    registration: Option<Registration>,
}

struct Registration {
    user: String,
    cseq: u32,
    registered: bool,
}

impl Phone {
    fn new(ip: IpAddr, base: Instant, seed: u64, answer_delay: Duration) -> Self {
        let ep = Endpoint::new(
            EndpointConfig {
                max_calls: 5000,
                answer_delay,
                ..EndpointConfig::default()
            },
            StdRng::seed_from_u64(seed),
            base,
            wall(base),
        );
        Phone {
            ip,
            ep,
            media: NodeMedia::new(ip, seed + 1),
            events: Vec::new(),
            digits: Vec::new(),
            registration: None,
        }
    }

    fn flush(&mut self, now: Instant, now_ms: u64, net: &mut Net) {
        loop {
            let mut moved = false;
            while let Some(out) = self.ep.poll_output() {
                moved = true;
                match out {
                    Output::Transmit { peer, data } => net.send(
                        now,
                        Packet {
                            from: SocketAddr::new(self.ip, SIP_PORT),
                            to: peer.remote,
                            data: data.to_vec(),
                        },
                    ),
                    Output::Media(cmd) => self
                        .media
                        .core
                        .handle_command(EngineCommand::Sip(cmd), now_ms),
                    Output::Call(ev) => self.events.push((now, ev)),
                    _ => {}
                }
            }
            for ev in self.media.events() {
                moved = true;
                match ev {
                    MediaEvent::Allocated { call, port } => {
                        self.ep.media_allocated(now, call, port)
                    }
                    MediaEvent::Failed { call } => self.ep.media_failed(now, call),
                    MediaEvent::Digit { call, digit } => self.digits.push((call, digit.digit)),
                    _ => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn peer_to_hotline(&self) -> Peer {
        Peer {
            link: Link::Udp(0),
            remote: SocketAddr::new(hotline_ip(), SIP_PORT),
            local: SocketAddr::new(self.ip, SIP_PORT),
        }
    }

    pub fn answered_at(&self, call: CallId) -> Option<Instant> {
        self.events.iter().find_map(|(t, e)| match e {
            CallEvent::Answered { call: c, .. } if *c == call => Some(*t),
            _ => None,
        })
    }

    pub fn ended(&self, call: CallId) -> Option<String> {
        self.events.iter().find_map(|(_, e)| match e {
            CallEvent::Ended {
                call: c, reason, ..
            } if *c == call => Some(reason.as_str()),
            _ => None,
        })
    }

    /// Calls this phone received (operator phones).
    pub fn incoming(&self) -> Vec<CallId> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                CallEvent::Started {
                    call,
                    direction: hotline::call::Direction::Inbound,
                    ..
                } => Some(*call),
                _ => None,
            })
            .collect()
    }

    pub fn is_registered(&self) -> bool {
        self.registration.as_ref().is_some_and(|r| r.registered)
    }

    pub fn recording(&self, path: &PathBuf) -> Option<&(Channels, Vec<i16>)> {
        self.media.sink.files.get(path)
    }

    fn register_request(&self, cseq: u32, authorization: Option<String>) -> Vec<u8> {
        let r = self.registration.as_ref().expect("an operator phone");
        let (ip, user) = (self.ip, &r.user);
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{hotline} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:{REGISTER_PORT};branch=z9hG4bKreg{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{hotline}>;tag=r1\r\nTo: <sip:{user}@{hotline}>\r\nCall-ID: reg-{user}@{ip}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{ip}:{SIP_PORT}>\r\nExpires: 300\r\n{auth}Content-Length: 0\r\n\r\n",
            hotline = hotline_ip()
        )
        .into_bytes()
    }

    /// A response to the phone's REGISTER: answer a challenge, note success.
    fn on_register_response(&mut self, now: Instant, net: &mut Net, text: &str) {
        let realm = Config::load(None, &[]).unwrap().0.operators.realm;
        let Some(r) = self.registration.as_mut() else {
            return;
        };
        if text.starts_with("SIP/2.0 200") {
            r.registered = true;
            return;
        }
        if !text.starts_with("SIP/2.0 401") {
            return;
        }
        let nonce = text
            .split("nonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a nonce")
            .to_string();
        r.cseq += 1;
        let user = r.user.clone();
        let cseq = r.cseq;
        let uri = format!("sip:{}", hotline_ip());
        let qop = QopAuth {
            nc: "00000001".into(),
            count: 1,
            cnonce: "c0ffee".into(),
        };
        let key = ha1(Algorithm::Md5, &user, &realm, OPERATOR_PASSWORD);
        let response =
            expected_response(Algorithm::Md5, &key, "REGISTER", &uri, &nonce, Some(&qop));
        let auth = format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
        );
        let data = self.register_request(cseq, Some(auth));
        net.send(
            now,
            Packet {
                from: SocketAddr::new(self.ip, REGISTER_PORT),
                to: SocketAddr::new(hotline_ip(), SIP_PORT),
                data,
            },
        );
    }
}

/// The whole simulated world.
pub struct Sim {
    pub base: Instant,
    pub now: Instant,
    next_tick: Instant,
    pub net: Net,
    pub hotline: Hotline,
    pub phones: Vec<Phone>,
}

impl Sim {
    pub fn new(net: NetConfig) -> Self {
        Self::with_endpoint(net, |_| {})
    }

    pub fn with_endpoint(net: NetConfig, tweak: impl FnOnce(&mut EndpointConfig)) -> Self {
        let base = Instant::now();
        Sim {
            base,
            now: base,
            next_tick: base,
            net: Net {
                cfg: net,
                queue: BinaryHeap::new(),
                seq: 0,
                rng: StdRng::seed_from_u64(99),
                sip_log: Vec::new(),
                lost: 0,
            },
            hotline: Hotline::new(base, tweak),
            phones: Vec::new(),
        }
    }

    /// A caller's phone at 10.1.x.y; returns its index.
    pub fn add_phone(&mut self) -> usize {
        let n = self.phones.len();
        let ip: IpAddr = format!("10.1.{}.{}", n / 250, n % 250 + 1).parse().unwrap();
        self.phones.push(Phone::new(
            ip,
            self.base,
            1000 + n as u64 * 10,
            Duration::ZERO,
        ));
        n
    }

    /// An operator's phone at 10.2.0.x that answers after `answer_delay`; it
    /// registers as `user` at once (the account must exist at the hotline).
    pub fn add_operator_phone(&mut self, user: &str, answer_delay: Duration) -> usize {
        let n = self.phones.len();
        let ip: IpAddr = format!("10.2.0.{}", n + 1).parse().unwrap();
        let mut phone = Phone::new(ip, self.base, 5000 + n as u64 * 10, answer_delay);
        phone.registration = Some(Registration {
            user: user.to_string(),
            cseq: 1,
            registered: false,
        });
        let data = phone.register_request(1, None);
        self.net.send(
            self.now,
            Packet {
                from: SocketAddr::new(ip, REGISTER_PORT),
                to: SocketAddr::new(hotline_ip(), SIP_PORT),
                data,
            },
        );
        self.phones.push(phone);
        n
    }

    pub fn now_ms(&self) -> u64 {
        (self.now - self.base).as_millis() as u64
    }

    /// Phone `p` calls the hotline.
    pub fn call(&mut self, p: usize) -> CallId {
        let now = self.now;
        let phone = &mut self.phones[p];
        let peer = phone.peer_to_hotline();
        let call = phone.ep.place_call(
            now,
            peer,
            &format!("sip:hotline@{}", hotline_ip()),
            "caller",
        );
        self.flush();
        call
    }

    pub fn hang_up(&mut self, p: usize, call: CallId) {
        let now = self.now;
        self.phones[p]
            .ep
            .hangup(now, call, hotline::call::EndReason::OurBye);
        self.flush();
    }

    /// Phone `p` presses `digits` (RFC 4733, queued one after the other).
    pub fn press(&mut self, p: usize, call: CallId, digits: &str) {
        let ms = self.now_ms();
        for digit in digits.chars() {
            self.phones[p].media.core.handle_command(
                EngineCommand::SendDigit {
                    call,
                    digit,
                    duration_ms: 100,
                    mode: DtmfMode::Rfc4733,
                },
                ms,
            );
        }
        self.flush();
    }

    /// Phone `p` says `pcm` (8 kHz) into the call.
    pub fn say(&mut self, p: usize, call: CallId, pcm: Vec<i16>) {
        let ms = self.now_ms();
        let prompt = Arc::new(Prompt::new(PromptAudio::new("voice", pcm)));
        self.phones[p].media.core.handle_command(
            EngineCommand::Play {
                call,
                token: 1,
                prompts: vec![prompt],
                looping: false,
            },
            ms,
        );
        self.flush();
    }

    /// Phone `p` records what it hears on `call` into `path` (in memory).
    pub fn listen(&mut self, p: usize, call: CallId, path: &str) {
        let ms = self.now_ms();
        let forever = u32::MAX / 16;
        let spec = hotline::media::session::RecordSpec {
            stop: hotline::media::voicemail::VoicemailStopConfig {
                finish_keys: String::new(),
                silence_timeout_ms: forever,
                no_speech_timeout_ms: forever,
                max_length_ms: forever,
                keep_silence_ms: forever,
                ..Default::default()
            },
        };
        self.phones[p].media.core.handle_command(
            EngineCommand::StartRecording {
                call,
                path: path.into(),
                spec,
            },
            ms,
        );
        self.flush();
    }

    pub fn stop_listening(&mut self, p: usize, call: CallId) {
        let ms = self.now_ms();
        self.phones[p]
            .media
            .core
            .handle_command(EngineCommand::StopRecording { call }, ms);
        self.flush();
    }

    fn flush(&mut self) {
        let (now, ms) = (self.now, self.now_ms());
        self.hotline.flush(now, ms, &mut self.net);
        for p in &mut self.phones {
            p.flush(now, ms, &mut self.net);
        }
    }

    fn next_event(&self) -> Instant {
        let mut next = self.next_tick;
        let candidates = self
            .net
            .next_at()
            .into_iter()
            .chain(self.hotline.sb.poll_timeout())
            .chain(self.phones.iter().filter_map(|p| p.ep.poll_timeout()));
        for t in candidates {
            next = next.min(t);
        }
        next.max(self.now)
    }

    /// Advances virtual time by one event (a delivery, a timer or a media tick).
    fn step(&mut self) {
        self.now = self.next_event();
        let (now, ms) = (self.now, self.now_ms());
        while let Some(p) = self.net.pop_due(now) {
            self.deliver(p, now, ms);
        }
        if self.hotline.sb.poll_timeout().is_some_and(|t| t <= now) {
            self.hotline.sb.handle_timeout(now);
        }
        for p in &mut self.phones {
            if p.ep.poll_timeout().is_some_and(|t| t <= now) {
                p.ep.handle_timeout(now);
            }
        }
        if now >= self.next_tick {
            self.hotline.media.tick(ms, &mut self.net, now);
            for p in &mut self.phones {
                p.media.tick(ms, &mut self.net, now);
            }
            self.next_tick += Duration::from_millis(FRAME_MS);
        }
        self.flush();
    }

    fn deliver(&mut self, p: Packet, now: Instant, ms: u64) {
        if p.to.ip() == hotline_ip() {
            if p.to.port() == SIP_PORT {
                let local = SocketAddr::new(hotline_ip(), SIP_PORT);
                self.hotline
                    .sb
                    .ep
                    .handle_datagram(now, Link::Udp(0), local, p.from, &p.data);
                self.hotline.sb.after_input(now);
            } else {
                self.hotline.media.receive(&p, ms);
            }
            return;
        }
        let Some(phone) = self.phones.iter_mut().find(|ph| ph.ip == p.to.ip()) else {
            return; // Nobody there: lost.
        };
        match p.to.port() {
            SIP_PORT => {
                let local = SocketAddr::new(phone.ip, SIP_PORT);
                phone
                    .ep
                    .handle_datagram(now, Link::Udp(0), local, p.from, &p.data);
            }
            REGISTER_PORT => phone.on_register_response(now, &mut self.net, &p.text()),
            _ => phone.media.receive(&p, ms),
        }
    }

    /// Runs until `done` holds (checked after every event) or `limit` of virtual time
    /// passed; returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d + Duration::from_millis(1), |s| s.now >= end);
    }

    /// SIP messages put on the wire whose first line starts with `start`.
    pub fn sip_sent(&self, start: &str) -> Vec<&Packet> {
        self.net
            .sip_log
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.data.starts_with(start.as_bytes()))
            .collect()
    }
}

/// A 1 kHz tone at a speech-like level (−20 dBFS), `secs` long.
pub fn tone(hz: f64, secs: f64) -> Vec<i16> {
    let n = (secs * 8000.0) as usize;
    (0..n)
        .map(|i| ((i as f64 * hz * 2.0 * std::f64::consts::PI / 8000.0).sin() * 3300.0) as i16)
        .collect()
}

/// RMS of a stretch of audio.
pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    (pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
}

/// Interleaved stereo split into (left, right).
pub fn channels(interleaved: &[i16]) -> (Vec<i16>, Vec<i16>) {
    let left = interleaved.iter().step_by(2).copied().collect();
    let right = interleaved.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

pub fn media_command_is_start(cmd: &MediaCommand) -> bool {
    matches!(cmd, MediaCommand::Start { .. })
}
