//! The SIP endpoint: every message and timer of the hotline's SIP side goes through
//! here, as a sans-IO state machine (str0m / quinn-proto style).
//!
//! Owns transaction matching, dialogs, the UAS call life cycle (answer, re-INVITE,
//! CANCEL, BYE either way, timer H, maximum duration), the small UAC used by
//! `hotline call`, refusals (400 … 503) and per-source rate limits. Input comes in
//! through `handle_*` with `now`; output leaves through `poll_output` and
//! `poll_timeout`. It must not touch sockets, files or the clock: the tokio layer in
//! `transport` does that, and the media layer does RTP.

use super::digest::{DigestAuth, DigestConfig, Ha1Set};
use super::headers::{self, NameAddr};
use super::message::{
    self, build_response, finish_message, reason_phrase, validate_request, validate_response,
    Method, Reject, Request, Response, Source,
};
use super::raw::{self, RawMessage, StartLine};
use super::registrar::{
    self as reg, Decision, RegisterRequest, Registrar, RegistrarConfig, RegistrarEvent,
};
use super::transaction::{
    ClientTransaction, ClientVerdict, ServerTransaction, TimerConfig, TxEvent,
};
use crate::call::{CallEvent, CallId, Codec, Direction, EndReason, Link, MediaCommand, Peer};
use crate::sdp::{self, RemoteMedia, SdpOrigin};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Transmit {
        peer: Peer,
        data: Arc<[u8]>,
    },
    Media(MediaCommand),
    Call(CallEvent),
    /// A DTMF digit that arrived by SIP INFO (the body is left to the media layer).
    Info {
        call: CallId,
        content_type: String,
        body: Vec<u8>,
    },
    CloseConnection(u64),
    /// An operator's registration changed.
    Registrar(RegistrarEvent),
    /// A registered operator dialled a feature code from the phone that registered.
    FeatureCode {
        user: String,
        code: String,
    },
}

/// Looks up an operator's stored digest hashes by SIP user name.
pub type CredentialLookup = Arc<dyn Fn(&str) -> Option<Ha1Set> + Send + Sync>;

/// The operators' registrar: present only when operator accounts can be looked up.
#[derive(Clone)]
pub struct RegistrarSetup {
    pub credentials: CredentialLookup,
    pub registrar: RegistrarConfig,
    pub digest: DigestConfig,
    /// Dial strings and the reason phrase that acknowledges each.
    pub feature_codes: Vec<(String, String)>,
}

/// What may be stored about the caller's number; applied before anything leaves the
/// endpoint (events and logs).
pub type CallerIdFilter = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct EndpointConfig {
    pub timers: TimerConfig,
    pub max_calls: usize,
    pub max_call_duration: Duration,
    pub answer_delay: Duration,
    pub public_ip: Option<IpAddr>,
    pub codecs: Vec<Codec>,
    pub source_rate: f64,
    pub source_burst: u32,
    pub trusted_sources: Vec<IpAddr>,
    pub max_message_bytes: usize,
    pub caller_id: CallerIdFilter,
    /// Whether offers we make include telephone-event (RFC 4733).
    pub offer_telephone_event: bool,
    /// Whether SIP messages may be logged in full at debug level (only when the
    /// caller-ID policy keeps numbers anyway).
    pub log_messages: bool,
    /// Without it REGISTER is challenged and then refused.
    pub registrar: Option<RegistrarSetup>,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("max_calls", &self.max_calls)
            .finish()
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            timers: TimerConfig::default(),
            max_calls: 100,
            max_call_duration: Duration::from_secs(3600),
            answer_delay: Duration::ZERO,
            public_ip: None,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            source_rate: 1e9,
            source_burst: u32::MAX,
            trusted_sources: Vec::new(),
            max_message_bytes: 65535,
            caller_id: Arc::new(|s: &str| Some(s.to_string())),
            offer_telephone_event: true,
            log_messages: false,
            registrar: None,
        }
    }
}

/// Counters for refusals and drops, exported as metrics and logged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub rate_limited: u64,
    pub malformed: u64,
    pub refused: u64,
    pub busy: u64,
    pub retransmissions_absorbed: u64,
    pub stray_responses: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// Inbound: waiting for the RTP port.
    Allocating,
    /// Inbound: port ready; ringing until the answer delay passes.
    Ringing,
    /// Inbound: 200 sent, waiting for ACK. Outbound: INVITE sent.
    Answered,
    Calling,
    Confirmed,
    /// BYE sent, waiting for its response.
    Terminating,
}

struct Call {
    direction: Direction,
    state: CallState,
    sip_call_id: String,
    local_tag: String,
    remote_tag: String,
    /// Our identity header value (with tag), used as From in our requests.
    local_header: String,
    /// The peer's identity header value (with tag), used as To in our requests.
    remote_header: String,
    remote_target: String,
    route_set: Vec<String>,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    peer: Peer,
    invite_key: Option<String>,
    /// The INVITE as received, to build its final responses.
    invite: Option<RawMessage>,
    invite_source: SocketAddr,
    offer: Option<RemoteMedia>,
    codec: Option<Codec>,
    media_port: u16,
    origin: SdpOrigin,
    answer_at: Option<Instant>,
    end_reason: Option<EndReason>,
    /// UAC: branch of the INVITE, and the last ACK (re-sent on 2xx retransmission).
    invite_branch: Option<String>,
    ack: Option<Arc<[u8]>>,
    /// UAC: extra headers of the INVITE.
    invite_headers: Vec<(String, String)>,
    /// In-dialog requests go to `peer` whatever the remote target says (a phone behind
    /// NAT is reached where its registration came from).
    pin_peer: bool,
    /// UAC: the call is being cancelled; a late 2xx is acknowledged and hung up at once.
    cancelled: bool,
    /// UAC: a provisional response arrived, so a CANCEL may be sent.
    provisional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerRef {
    Server(String),
    Client(String),
    CallAnswer(CallId),
    CallMax(CallId),
}

struct ServerEntry {
    tx: ServerTransaction,
    peer: Peer,
    call: Option<CallId>,
    invite: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPurpose {
    Bye(CallId),
    Invite(CallId),
    Info,
    Cancel,
}

struct ClientEntry {
    tx: ClientTransaction,
    peer: Peer,
    purpose: ClientPurpose,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Endpoint {
    cfg: EndpointConfig,
    server: HashMap<String, ServerEntry>,
    client: HashMap<String, ClientEntry>,
    calls: HashMap<CallId, Call>,
    dialogs: HashMap<String, CallId>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_refs: HashMap<u64, TimerRef>,
    next_timer: u64,
    next_call: CallId,
    out: VecDeque<Output>,
    buckets: HashMap<IpAddr, Bucket>,
    pub stats: Stats,
    /// Calls still active (not Terminating), for the max_calls limit.
    active: usize,
    registrar: Option<Registrar>,
    /// Where each (user, contact) binding registered from, to reach that phone.
    binding_peers: HashMap<(String, String), Peer>,
}

fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn server_key(req: &Request) -> String {
    let via = req.top_via();
    let method = match req.method {
        Method::Ack => "INVITE",
        ref m => m.as_str(),
    };
    match via.branch() {
        // Call-ID and CSeq number are added to RFC 3261 §17.2.3's branch + sent-by so
        // that a peer reusing a branch across requests cannot collide with (or hijack)
        // another transaction; retransmissions, ACK and CANCEL carry the same values.
        Some(b) if b.len() > 7 && b.starts_with("z9hG4bK") => format!(
            "{b}|{}|{}|{}|{method}",
            via.sent_by(),
            req.common.call_id,
            req.common.cseq
        ),
        // RFC 2543 peers: match on the request's identity instead (§17.2.3).
        _ => format!(
            "2543|{}|{}|{}|{}|{method}",
            req.common.call_id,
            req.common.cseq,
            req.common.from.tag().unwrap_or_default(),
            via.sent_by()
        ),
    }
}

fn dialog_key(call_id: &str, local_tag: &str) -> String {
    format!("{call_id}\u{0}{local_tag}")
}

impl Endpoint {
    pub fn new(cfg: EndpointConfig) -> Self {
        let registrar = cfg.registrar.as_ref().map(|setup| {
            use rand::SeedableRng;
            let rng = Box::new(rand::rngs::StdRng::from_entropy());
            let auth = DigestAuth::with_random_secret(setup.digest.clone(), Instant::now(), rng);
            Registrar::new(setup.registrar.clone(), auth)
        });
        Endpoint {
            registrar,
            binding_peers: HashMap::new(),
            cfg,
            server: HashMap::new(),
            client: HashMap::new(),
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_refs: HashMap::new(),
            next_timer: 0,
            next_call: 1,
            out: VecDeque::new(),
            buckets: HashMap::new(),
            stats: Stats::default(),
            active: 0,
        }
    }

    pub fn active_calls(&self) -> usize {
        self.active
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let reg = self.registrar.as_ref().and_then(|r| r.poll_timeout());
        let own = self.timers.peek().map(|Reverse((t, _))| *t);
        match (own, reg) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn schedule(&mut self, at: Instant, what: TimerRef) {
        let id = self.next_timer;
        self.next_timer += 1;
        self.timer_refs.insert(id, what);
        self.timers.push(Reverse((at, id)));
    }

    fn transmit(&mut self, peer: Peer, data: Arc<[u8]>) {
        if self.cfg.log_messages {
            tracing::debug!(to = %peer.remote, "sent:\n{}", String::from_utf8_lossy(&data));
        }
        self.out.push_back(Output::Transmit { peer, data });
    }

    fn emit(&mut self, ev: CallEvent) {
        self.out.push_back(Output::Call(ev));
    }

    // ---- input ------------------------------------------------------------------

    /// A UDP datagram arrived.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        link: Link,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        if !self.admit(now, from.ip()) {
            return;
        }
        let peer = Peer {
            link,
            remote: from,
            local,
        };
        if data.len() > self.cfg.max_message_bytes {
            self.stats.malformed += 1;
            if let Ok(raw) = raw::frame_datagram(data) {
                self.refuse(
                    &raw,
                    peer,
                    &Reject {
                        status: Some(413),
                        reason: "Request Entity Too Large".into(),
                        extra_headers: vec![],
                    },
                );
            }
            return;
        }
        match raw::frame_datagram_lenient(data) {
            Ok(raw) => self.handle_raw(now, peer, raw),
            Err((e, partial)) => {
                self.stats.malformed += 1;
                tracing::debug!(from = %from, error = %e, "unframable datagram");
                if let Some(p) = partial.filter(|p| p.method().is_some_and(is_answerable)) {
                    self.refuse(&p, peer, &Reject::bad(e.to_string()));
                }
            }
        }
    }

    /// A message framed from a TCP connection.
    pub fn handle_stream_message(&mut self, now: Instant, peer: Peer, raw: RawMessage) {
        if !self.admit(now, peer.remote.ip()) {
            return;
        }
        self.handle_raw(now, peer, raw);
    }

    /// A TCP framing error: answer if possible, then the connection is closed.
    pub fn handle_stream_error(
        &mut self,
        peer: Peer,
        err: raw::FrameError,
        partial: Option<RawMessage>,
    ) {
        self.stats.malformed += 1;
        if let Some(p) = partial.filter(|p| p.method().is_some_and(is_answerable)) {
            let status = if err == raw::FrameError::TooLarge {
                413
            } else {
                400
            };
            self.refuse(
                &p,
                peer,
                &Reject {
                    status: Some(status),
                    reason: err.to_string(),
                    extra_headers: vec![],
                },
            );
        }
        if let Link::Tcp(id) = peer.link {
            self.out.push_back(Output::CloseConnection(id));
        }
    }

    fn admit(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.cfg.trusted_sources.contains(&ip) {
            return true;
        }
        let (rate, burst) = (self.cfg.source_rate, self.cfg.source_burst as f64);
        if self.buckets.len() > 100_000 {
            // Under a spoofed-source flood keep memory bounded: forget full buckets.
            self.buckets
                .retain(|_, b| b.tokens + (now - b.last).as_secs_f64() * rate < burst);
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + (now - b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            self.stats.rate_limited += 1;
            false
        }
    }

    fn handle_raw(&mut self, now: Instant, peer: Peer, raw: RawMessage) {
        if self.cfg.log_messages {
            tracing::debug!(from = %peer.remote, "received:\n{}{}", String::from_utf8_lossy(&raw.head), String::from_utf8_lossy(&raw.body));
        }
        match raw.start {
            StartLine::Response { .. } => match validate_response(raw) {
                Some(resp) => self.handle_response(now, peer, resp),
                None => self.stats.malformed += 1,
            },
            StartLine::Request { .. } => match validate_request(raw) {
                Ok(req) => self.handle_request(now, peer, req),
                Err(refused) => {
                    let (reject, raw) = *refused;
                    if reject.status == Some(400) {
                        self.stats.malformed += 1;
                    } else {
                        self.stats.refused += 1;
                    }
                    tracing::debug!(from = %peer.remote, status = ?reject.status, reason = %reject.reason, "request refused");
                    if raw.method() != Some("ACK") {
                        self.refuse(&raw, peer, &reject);
                    }
                }
            },
        }
    }

    /// Where a response to a request from `peer` with top Via `via` goes.
    fn response_peer(peer: Peer, via: Option<&headers::Via>) -> Peer {
        match (peer.link, via) {
            (Link::Udp(_), Some(v)) => Peer {
                remote: message::udp_response_target(v, peer.remote),
                ..peer
            },
            _ => peer,
        }
    }

    /// Stateless answer to a request we refuse.
    fn refuse(&mut self, raw: &RawMessage, peer: Peer, reject: &Reject) {
        let Some(status) = reject.status else { return };
        let via = raw.header("via").and_then(|v| {
            raw::split_comma_values(v)
                .first()
                .and_then(|h| headers::parse_via(h).ok())
        });
        if raw.header("via").is_none() {
            return; // Nowhere to send it.
        }
        let target = Self::response_peer(peer, via.as_ref());
        let reason = if status == 400 {
            reject.reason.as_str()
        } else {
            reason_phrase(status)
        };
        let bytes = build_response(
            raw,
            Source { addr: peer.remote },
            status,
            reason,
            Some(&random_token(10)),
            &reject.extra_headers,
            None,
        );
        self.transmit(target, bytes.into());
    }

    fn handle_request(&mut self, now: Instant, peer: Peer, req: Request) {
        let key = server_key(&req);
        if req.method == Method::Ack {
            return self.handle_ack(now, &key, req);
        }
        if req.method == Method::Cancel {
            return self.handle_cancel(now, peer, req);
        }
        if let Some(entry) = self.server.get(&key) {
            self.stats.retransmissions_absorbed += 1;
            if let Some(resp) = entry.tx.on_request_retransmission() {
                let p = entry.peer;
                self.transmit(p, resp);
            }
            return;
        }
        let invite = req.method == Method::Invite;
        let resp_peer = Self::response_peer(peer, Some(req.top_via()));
        let tx = ServerTransaction::new(invite, peer.link.reliable(), self.cfg.timers);
        self.server.insert(
            key.clone(),
            ServerEntry {
                tx,
                peer: resp_peer,
                call: None,
                invite,
            },
        );

        let in_dialog = req.common.to.tag().map(|t| t.to_string());
        if let Some(local_tag) = in_dialog {
            let call = self
                .dialogs
                .get(&dialog_key(&req.common.call_id, &local_tag))
                .copied();
            match call {
                Some(call) => self.handle_in_dialog(now, &key, call, peer, req),
                None => self.respond(now, &key, &req, 481, None, &[], None),
            }
            return;
        }
        match req.method {
            Method::Invite if self.feature_code_of(&req).is_some() => {
                self.handle_feature_code(now, &key, peer, &req)
            }
            Method::Invite => self.handle_new_invite(now, &key, peer, req),
            Method::Options => {
                let extra = [
                    ("Allow".to_string(), message::ALLOW.to_string()),
                    ("Accept".to_string(), "application/sdp".to_string()),
                    ("Supported".to_string(), String::new()),
                ];
                self.respond(now, &key, &req, 200, None, &extra, None);
            }
            Method::Register => self.handle_register(now, &key, peer, &req),
            _ => self.respond(now, &key, &req, 481, None, &[], None),
        }
    }

    // ---- operators: registrar and feature codes -------------------------------------

    fn handle_register(&mut self, now: Instant, key: &str, peer: Peer, req: &Request) {
        let Some(registrar) = self.registrar.as_mut() else {
            // No operator accounts: nobody can register.
            return self.respond(now, key, req, 403, None, &[], None);
        };
        let request = match register_request(peer.remote, req) {
            Ok(r) => r,
            Err(reason) => {
                let warn = [("Warning".to_string(), format!("399 hotline \"{reason}\""))];
                return self.respond(now, key, req, 400, None, &warn, None);
            }
        };
        let lookup = self
            .cfg
            .registrar
            .as_ref()
            .map(|s| s.credentials.clone())
            .expect("registrar exists only with a setup");
        let decision = registrar.handle_register(&request, &|user: &str| lookup(user), now);
        match decision {
            Decision::Challenge { www_authenticate } => {
                let extra: Vec<(String, String)> = www_authenticate
                    .into_iter()
                    .map(|v| ("WWW-Authenticate".to_string(), v))
                    .collect();
                self.respond(now, key, req, 401, None, &extra, None);
            }
            Decision::Ok { bindings } => {
                for b in &bindings {
                    let named = request
                        .contacts
                        .iter()
                        .any(|c| matches!(c, reg::Contact::Uri { uri, .. } if *uri == b.contact));
                    if named {
                        self.binding_peers
                            .insert((request.aor_user.clone(), b.contact.clone()), peer);
                    }
                }
                let extra: Vec<(String, String)> = bindings
                    .iter()
                    .map(|b| {
                        (
                            "Contact".to_string(),
                            format!("<{}>;expires={}", b.contact, b.expires),
                        )
                    })
                    .collect();
                self.respond(now, key, req, 200, None, &extra, None);
            }
            Decision::IntervalTooBrief { min_expires } => {
                let extra = [("Min-Expires".to_string(), min_expires.to_string())];
                self.respond(now, key, req, 423, None, &extra, None);
            }
            Decision::Forbidden => self.respond(now, key, req, 403, None, &[], None),
            Decision::BadRequest { reason } => {
                let warn = [("Warning".to_string(), format!("399 hotline \"{reason}\""))];
                self.respond(now, key, req, 400, None, &warn, None);
            }
            Decision::Ignore => {
                self.server.remove(key);
            }
        }
        self.drain_registrar();
    }

    fn drain_registrar(&mut self) {
        let Some(registrar) = self.registrar.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        while let Some(ev) = registrar.poll_event() {
            events.push(ev);
        }
        for ev in events {
            match &ev {
                RegistrarEvent::BindingRemoved { user, contact }
                | RegistrarEvent::BindingExpired { user, contact } => {
                    self.binding_peers.remove(&(user.clone(), contact.clone()));
                }
                _ => {}
            }
            self.out.push_back(Output::Registrar(ev));
        }
    }

    /// Every live binding of an operator with the transport path that reaches it,
    /// oldest first.
    pub fn operator_contacts(&self, user: &str, now: Instant) -> Vec<(String, Peer)> {
        let Some(registrar) = self.registrar.as_ref() else {
            return Vec::new();
        };
        registrar
            .bindings(user, now)
            .into_iter()
            .filter_map(|b| {
                let mut peer = *self
                    .binding_peers
                    .get(&(user.to_string(), b.contact.clone()))?;
                // A contact with the IP the REGISTER came from is reachable as written;
                // any other (a private address behind NAT) is reached at the source.
                if !peer.link.reliable() {
                    let direct = headers::parse_sip_uri(&b.contact)
                        .ok()
                        .flatten()
                        .and_then(|u| Some((headers::host_ip(&u.host)?, u.port.unwrap_or(5060))));
                    if let Some((ip, port)) = direct.filter(|(ip, _)| *ip == peer.remote.ip()) {
                        peer.remote = SocketAddr::new(ip, port);
                    }
                }
                Some((b.contact, peer))
            })
            .collect()
    }

    /// Ends the registrations of operators whose accounts no longer exist.
    pub fn forget_operators_except(&mut self, known: &dyn Fn(&str) -> bool) {
        let Some(registrar) = self.registrar.as_mut() else {
            return;
        };
        for user in registrar.users() {
            if !known(&user) {
                tracing::info!(operator = %user, "account removed: registration dropped");
                registrar.forget(&user);
            }
        }
        self.drain_registrar();
    }

    /// The feature code an INVITE dials, if it dials one.
    fn feature_code_of(&self, req: &Request) -> Option<String> {
        let setup = self.cfg.registrar.as_ref()?;
        let user = headers::parse_sip_uri(&req.uri).ok()??.user?;
        let user = percent_decode(&user);
        setup
            .feature_codes
            .iter()
            .find(|(code, _)| *code == user)
            .map(|(code, _)| code.clone())
    }

    /// A feature code is honoured only with the operator's own digest credentials
    /// (407 challenge, `Proxy-Authorization`, RFC 3261 §22.3), the From user being the
    /// authenticated one; wrong passwords count towards the same lockout as REGISTER.
    /// The answer is a final response whose reason phrase tells the operator what
    /// happened; no call is set up.
    fn handle_feature_code(&mut self, now: Instant, key: &str, peer: Peer, req: &Request) {
        let code = self.feature_code_of(req).unwrap_or_default();
        let user = headers::parse_sip_uri(&req.common.from.uri)
            .ok()
            .flatten()
            .and_then(|u| u.user)
            .map(|u| percent_decode(&u))
            .unwrap_or_default();
        let (Some(registrar), Some(setup)) = (self.registrar.as_mut(), self.cfg.registrar.as_ref())
        else {
            return self.respond(now, key, req, 403, None, &[], None);
        };
        let lookup = setup.credentials.clone();
        let authorization = req.raw.header("proxy-authorization");
        let verdict = registrar.authorize(
            peer.remote,
            authorization,
            "INVITE",
            &user,
            &|u: &str| lookup(u),
            now,
        );
        match verdict {
            Ok(()) => {}
            Err(Decision::Challenge { www_authenticate }) => {
                let extra: Vec<(String, String)> = www_authenticate
                    .into_iter()
                    .map(|v| ("Proxy-Authenticate".to_string(), v))
                    .collect();
                return self.respond(now, key, req, 407, None, &extra, None);
            }
            Err(Decision::BadRequest { reason }) => {
                let warn = [("Warning".to_string(), format!("399 hotline \"{reason}\""))];
                return self.respond(now, key, req, 400, None, &warn, None);
            }
            Err(Decision::Ignore) => {
                self.server.remove(key);
                return;
            }
            Err(_) => {
                tracing::info!(remote = %peer.remote, "feature code refused");
                return self.respond(now, key, req, 403, None, &[], None);
            }
        }
        let phrase = setup
            .feature_codes
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        tracing::info!(operator = %user, %code, "feature code");
        self.out.push_back(Output::FeatureCode { user, code });
        self.respond_with(now, key, req, 480, &phrase, None, &[], None);
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now: Instant,
        key: &str,
        req: &Request,
        code: u16,
        to_tag: Option<&str>,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) {
        self.respond_with(
            now,
            key,
            req,
            code,
            reason_phrase(code),
            to_tag,
            extra,
            body,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_with(
        &mut self,
        now: Instant,
        key: &str,
        req: &Request,
        code: u16,
        phrase: &str,
        to_tag: Option<&str>,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let tag;
        let to_tag = match to_tag {
            Some(t) => Some(t),
            None => {
                tag = random_token(10);
                Some(tag.as_str())
            }
        };
        let bytes: Arc<[u8]> = build_response(
            &req.raw,
            Source {
                addr: req_source(entry.peer, req),
            },
            code,
            phrase,
            to_tag,
            extra,
            body,
        )
        .into();
        if entry.tx.send_response(now, code, bytes.clone()) {
            let peer = entry.peer;
            let at = entry.tx.poll_timeout();
            self.transmit(peer, bytes);
            if let Some(at) = at {
                self.schedule(at, TimerRef::Server(key.to_string()));
            }
        }
    }

    fn handle_new_invite(&mut self, now: Instant, key: &str, peer: Peer, req: Request) {
        let from_uri = req.common.from.uri.clone();
        let caller = (self.cfg.caller_id)(&caller_identity(&req.common.from));
        let started = CallEvent::Started {
            call: self.next_call,
            sip_call_id: req.common.call_id.clone(),
            from: caller,
            to: req.common.to.uri.clone(),
            remote: peer.remote,
            transport: peer.link.via_transport(),
            direction: Direction::Inbound,
            at: SystemTime::now(),
        };
        let _ = from_uri;
        if self.active >= self.cfg.max_calls {
            self.stats.busy += 1;
            let call = self.next_call;
            self.next_call += 1;
            self.emit(started);
            self.respond(
                now,
                key,
                &req,
                503,
                None,
                &[("Retry-After".into(), "5".into())],
                None,
            );
            self.emit(CallEvent::Ended {
                call,
                reason: EndReason::RejectedBusy,
                at: SystemTime::now(),
            });
            tracing::info!(call, sip_call_id = %req.common.call_id, reason = "rejected-busy", "call refused");
            return;
        }
        let offer = if req.body().is_empty() {
            None
        } else {
            match sdp::parse(req.body()) {
                Ok(o) => Some(o),
                Err(e) => {
                    let call = self.next_call;
                    self.next_call += 1;
                    self.emit(started);
                    let warn = [("Warning".to_string(), format!("399 hotline \"{e}\""))];
                    self.respond(now, key, &req, 488, None, &warn, None);
                    self.emit(CallEvent::Ended {
                        call,
                        reason: EndReason::RejectedCodec,
                        at: SystemTime::now(),
                    });
                    tracing::info!(call, sip_call_id = %req.common.call_id, reason = "rejected-codec", "call refused: {e}");
                    return;
                }
            }
        };
        let codec = match &offer {
            Some(o) => match sdp::choose_codec(o, &self.cfg.codecs) {
                Ok(c) => Some(c),
                Err(_) => {
                    let call = self.next_call;
                    self.next_call += 1;
                    self.emit(started);
                    let warn = [(
                        "Warning".to_string(),
                        "305 hotline \"Incompatible media format\"".to_string(),
                    )];
                    self.respond(now, key, &req, 488, None, &warn, None);
                    self.emit(CallEvent::Ended {
                        call,
                        reason: EndReason::RejectedCodec,
                        at: SystemTime::now(),
                    });
                    tracing::info!(call, sip_call_id = %req.common.call_id, reason = "rejected-codec", "call refused: no common codec");
                    return;
                }
            },
            None => None,
        };
        let call = self.next_call;
        self.next_call += 1;
        self.active += 1;
        self.emit(started);
        tracing::info!(call, sip_call_id = %req.common.call_id, remote = %peer.remote, "call started");
        let local_tag = random_token(12);
        let local_header = format!(
            "{};tag={local_tag}",
            req.raw.header("to").unwrap_or_default()
        );
        let remote_target = req
            .common
            .contact
            .as_ref()
            .map(|c| c.uri.clone())
            .unwrap_or_else(|| req.common.from.uri.clone());
        let c = Call {
            direction: Direction::Inbound,
            state: CallState::Allocating,
            sip_call_id: req.common.call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: req.common.from.tag().unwrap_or_default().to_string(),
            local_header,
            remote_header: req.raw.header("from").unwrap_or_default().to_string(),
            remote_target,
            route_set: req.common.record_route.clone(),
            local_cseq: rand::random::<u16>() as u32,
            remote_cseq: Some(req.common.cseq),
            peer,
            invite_key: Some(key.to_string()),
            invite: Some(req.raw.clone()),
            invite_source: peer.remote,
            offer,
            codec,
            media_port: 0,
            origin: SdpOrigin {
                session_id: rand::random::<u32>() as u64,
                version: 1,
            },
            answer_at: Some(now + self.cfg.answer_delay),
            end_reason: None,
            invite_branch: None,
            ack: None,
            invite_headers: Vec::new(),
            pin_peer: false,
            cancelled: false,
            provisional: false,
        };
        self.dialogs
            .insert(dialog_key(&c.sip_call_id, &local_tag), call);
        self.calls.insert(call, c);
        if let Some(e) = self.server.get_mut(key) {
            e.call = Some(call);
        }
        if !self.cfg.answer_delay.is_zero() {
            self.respond(now, key, &req, 180, Some(&local_tag), &[], None);
        }
        self.schedule(now + self.cfg.max_call_duration, TimerRef::CallMax(call));
        self.out.push_back(Output::Media(MediaCommand::Allocate {
            call,
            local_ip: peer.local.ip(),
        }));
    }

    /// The RTP layer reserved `port` for `call`.
    pub fn media_allocated(&mut self, now: Instant, call: CallId, port: u16) {
        let Some(c) = self.calls.get_mut(&call) else {
            // The call ended meanwhile; the media layer frees the port on Stop.
            self.out
                .push_back(Output::Media(MediaCommand::Stop { call }));
            return;
        };
        c.media_port = port;
        match (c.direction, c.state) {
            (Direction::Inbound, CallState::Allocating) => {
                c.state = CallState::Ringing;
                let at = c.answer_at.unwrap_or(now);
                if at <= now {
                    self.answer(now, call);
                } else {
                    self.schedule(at, TimerRef::CallAnswer(call));
                }
            }
            (Direction::Outbound, CallState::Allocating) => self.send_invite(now, call),
            _ => {}
        }
    }

    /// No RTP port could be had: refuse the call.
    pub fn media_failed(&mut self, now: Instant, call: CallId) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        if c.state != CallState::Allocating {
            return;
        }
        let key = c.invite_key.clone().unwrap_or_default();
        let tag = c.local_tag.clone();
        if let Some(raw) = c.invite.clone() {
            self.respond_raw(
                now,
                &key,
                &raw,
                503,
                &tag,
                &[("Retry-After".into(), "5".into())],
                None,
            );
        }
        self.end_call(call, EndReason::Error);
    }

    fn local_ip(&self, peer: Peer) -> IpAddr {
        match self.cfg.public_ip {
            Some(ip) => ip,
            None => peer.local.ip(),
        }
    }

    fn contact_header(&self, peer: Peer) -> String {
        let ip = self.local_ip(peer);
        let host = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let transport = if peer.link.reliable() {
            ";transport=tcp"
        } else {
            ""
        };
        format!("<sip:hotline@{host}:{}{transport}>", peer.local.port())
    }

    fn answer(&mut self, now: Instant, call: CallId) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        if c.state != CallState::Ringing {
            return;
        }
        let ip = self.local_ip(c.peer);
        let body = match (&c.offer, c.codec) {
            (Some(offer), Some(codec)) => sdp::answer(offer, codec, c.origin, ip, c.media_port),
            _ => sdp::offer(
                &self.cfg.codecs,
                self.cfg.offer_telephone_event,
                c.origin,
                ip,
                c.media_port,
            ),
        };
        let contact = self.contact_header(c.peer);
        let key = c.invite_key.clone().unwrap_or_default();
        let tag = c.local_tag.clone();
        let raw = c.invite.clone();
        let start = match (&c.offer, c.codec) {
            (Some(offer), Some(codec)) => Some(MediaCommand::Start {
                call,
                remote: offer.rtp_addr,
                signal_ip: c.invite_source.ip(),
                codec,
                telephone_event_pt: offer.telephone_event_pt,
                send: !offer.direction.peer_holds(),
            }),
            _ => None,
        };
        let codec = c.codec;
        if let Some(c) = self.calls.get_mut(&call) {
            c.state = CallState::Answered;
        }
        let extra = [
            ("Contact".to_string(), contact),
            ("Allow".to_string(), message::ALLOW.to_string()),
            ("Supported".to_string(), String::new()),
        ];
        if let Some(raw) = raw {
            self.respond_raw(
                now,
                &key,
                &raw,
                200,
                &tag,
                &extra,
                Some(("application/sdp", body.as_bytes())),
            );
        }
        if let Some(cmd) = start {
            self.out.push_back(Output::Media(cmd));
        }
        if let Some(codec) = codec {
            self.emit(CallEvent::Answered {
                call,
                codec,
                at: SystemTime::now(),
            });
        }
    }

    /// Like `respond` but from a stored raw INVITE.
    #[allow(clippy::too_many_arguments)]
    fn respond_raw(
        &mut self,
        now: Instant,
        key: &str,
        raw: &RawMessage,
        code: u16,
        to_tag: &str,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let source = entry
            .call
            .and_then(|c| self.calls.get(&c))
            .map(|c| c.invite_source)
            .unwrap_or(entry.peer.remote);
        let bytes: Arc<[u8]> = build_response(
            raw,
            Source { addr: source },
            code,
            reason_phrase(code),
            Some(to_tag),
            extra,
            body,
        )
        .into();
        if entry.tx.send_response(now, code, bytes.clone()) {
            let peer = entry.peer;
            let at = entry.tx.poll_timeout();
            self.transmit(peer, bytes);
            if let Some(at) = at {
                self.schedule(at, TimerRef::Server(key.to_string()));
            }
        }
    }

    fn handle_ack(&mut self, now: Instant, key: &str, req: Request) {
        // ACK for a non-2xx final response: same transaction as the INVITE.
        if let Some(entry) = self.server.get_mut(key) {
            if entry.tx.last_code() >= 300 {
                entry.tx.on_ack(now);
                if let Some(at) = entry.tx.poll_timeout() {
                    self.schedule(at, TimerRef::Server(key.to_string()));
                }
                return;
            }
        }
        // ACK for a 2xx: its own transaction, matched to the dialog.
        let Some(tag) = req.common.to.tag() else {
            return;
        };
        let Some(&call) = self.dialogs.get(&dialog_key(&req.common.call_id, tag)) else {
            return;
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.state != CallState::Answered || c.direction != Direction::Inbound {
            return;
        }
        c.state = CallState::Confirmed;
        if let Some(k) = c.invite_key.clone() {
            if let Some(e) = self.server.get_mut(&k) {
                e.tx.on_ack(now);
            }
        }
        // Offer was in our 200: the answer is in the ACK.
        if c.offer.is_none() {
            match sdp::parse(req.body())
                .and_then(|a| sdp::choose_codec(&a, &self.cfg.codecs).map(|codec| (a, codec)))
            {
                Ok((a, codec)) => {
                    c.codec = Some(codec);
                    let cmd = MediaCommand::Start {
                        call,
                        remote: a.rtp_addr,
                        signal_ip: c.invite_source.ip(),
                        codec,
                        telephone_event_pt: a.telephone_event_pt,
                        send: !a.direction.peer_holds(),
                    };
                    c.offer = Some(a);
                    self.out.push_back(Output::Media(cmd));
                    self.emit(CallEvent::Answered {
                        call,
                        codec,
                        at: SystemTime::now(),
                    });
                }
                Err(e) => {
                    tracing::info!(call, "ACK without a usable SDP answer ({e}); hanging up");
                    self.hangup(now, call, EndReason::Error);
                }
            }
        }
    }

    fn handle_cancel(&mut self, now: Instant, peer: Peer, req: Request) {
        let resp_peer = Self::response_peer(peer, Some(req.top_via()));
        // The INVITE being cancelled has the same key but for the method.
        let invite_key = {
            let k = server_key(&req);
            match k.strip_suffix("|CANCEL") {
                Some(base) => format!("{base}|INVITE"),
                None => k,
            }
        };
        let cancel_key = server_key(&req);
        if let Some(e) = self.server.get(&cancel_key) {
            if let Some(resp) = e.tx.on_request_retransmission() {
                let p = e.peer;
                self.transmit(p, resp);
            }
            return;
        }
        let tx = ServerTransaction::new(false, peer.link.reliable(), self.cfg.timers);
        self.server.insert(
            cancel_key.clone(),
            ServerEntry {
                tx,
                peer: resp_peer,
                call: None,
                invite: false,
            },
        );
        let target = self
            .server
            .get(&invite_key)
            .map(|e| (e.call, e.tx.last_code()));
        match target {
            Some((call, last)) if last < 200 => {
                self.respond(now, &cancel_key, &req, 200, None, &[], None);
                if let Some(call) = call {
                    let info = self
                        .calls
                        .get(&call)
                        .map(|c| (c.local_tag.clone(), c.invite.clone()));
                    if let Some((tag, Some(raw))) = info {
                        self.respond_raw(now, &invite_key, &raw, 487, &tag, &[], None);
                    }
                    self.end_call(call, EndReason::Cancel);
                }
            }
            Some(_) => self.respond(now, &cancel_key, &req, 200, None, &[], None),
            None => self.respond(now, &cancel_key, &req, 481, None, &[], None),
        }
    }

    fn handle_in_dialog(
        &mut self,
        now: Instant,
        key: &str,
        call: CallId,
        peer: Peer,
        req: Request,
    ) {
        let Some(c) = self.calls.get_mut(&call) else {
            return self.respond(now, key, &req, 481, None, &[], None);
        };
        if let Some(e) = self.server.get_mut(key) {
            e.call = Some(call);
        }
        // RFC 3261 §12.2.2: lower CSeq than the last one is out of order.
        if let Some(last) = c.remote_cseq {
            if req.common.cseq <= last && req.method != Method::Ack {
                return self.respond(
                    now,
                    key,
                    &req,
                    500,
                    None,
                    &[("Retry-After".into(), "1".into())],
                    None,
                );
            }
        }
        c.remote_cseq = Some(req.common.cseq);
        let tag = c.local_tag.clone();
        match req.method {
            Method::Bye => {
                self.respond(now, key, &req, 200, Some(&tag), &[], None);
                self.end_call(call, EndReason::CallerBye);
            }
            Method::Invite => self.handle_reinvite(now, key, call, peer, req),
            Method::Info => {
                self.respond(now, key, &req, 200, Some(&tag), &[], None);
                let content_type = req.content_type().unwrap_or_default().to_string();
                self.out.push_back(Output::Info {
                    call,
                    content_type,
                    body: req.raw.body.clone(),
                });
            }
            Method::Options => {
                let extra = [
                    ("Allow".to_string(), message::ALLOW.to_string()),
                    ("Accept".to_string(), "application/sdp".to_string()),
                ];
                self.respond(now, key, &req, 200, Some(&tag), &extra, None);
            }
            _ => self.respond(
                now,
                key,
                &req,
                405,
                Some(&tag),
                &[("Allow".into(), message::ALLOW.into())],
                None,
            ),
        }
    }

    fn handle_reinvite(&mut self, now: Instant, key: &str, call: CallId, peer: Peer, req: Request) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let tag = c.local_tag.clone();
        if !matches!(c.state, CallState::Confirmed) {
            // RFC 3261 §14.2: an INVITE while ours is pending.
            return self.respond(now, key, &req, 491, Some(&tag), &[], None);
        }
        if let Some(contact) = &req.common.contact {
            c.remote_target = contact.uri.clone();
        }
        let ip = match self.cfg.public_ip {
            Some(ip) => ip,
            None => c.peer.local.ip(),
        };
        let _ = peer;
        c.origin.version += 1;
        let (body, cmd) = if req.body().is_empty() {
            // Offer-less re-INVITE: offer again what we use; the ACK may change it.
            let codec = c.codec.unwrap_or(Codec::Pcmu);
            (
                sdp::offer(
                    &[codec],
                    self.cfg.offer_telephone_event,
                    c.origin,
                    ip,
                    c.media_port,
                ),
                None,
            )
        } else {
            match sdp::parse(req.body()) {
                Ok(offer) => {
                    let codec = c
                        .codec
                        .filter(|k| offer.codecs.contains(k))
                        .or_else(|| sdp::choose_codec(&offer, &self.cfg.codecs).ok());
                    let Some(codec) = codec else {
                        return self.respond(now, key, &req, 488, Some(&tag), &[], None);
                    };
                    c.codec = Some(codec);
                    let body = sdp::answer(&offer, codec, c.origin, ip, c.media_port);
                    let cmd = MediaCommand::Start {
                        call,
                        remote: offer.rtp_addr,
                        signal_ip: c.invite_source.ip(),
                        codec,
                        telephone_event_pt: offer.telephone_event_pt,
                        send: !offer.direction.peer_holds(),
                    };
                    c.offer = Some(offer);
                    (body, Some(cmd))
                }
                Err(_) => return self.respond(now, key, &req, 488, Some(&tag), &[], None),
            }
        };
        let contact = self.contact_header(self.calls[&call].peer);
        let extra = [("Contact".to_string(), contact)];
        self.respond(
            now,
            key,
            &req,
            200,
            Some(&tag),
            &extra,
            Some(("application/sdp", body.as_bytes())),
        );
        if let Some(cmd) = cmd {
            self.out.push_back(Output::Media(cmd));
        }
        // The re-INVITE's 2xx is retransmitted until its ACK like any INVITE 2xx; the
        // ACK arrives in the dialog and is matched there.
        if let Some(c) = self.calls.get_mut(&call) {
            c.invite_key = Some(key.to_string());
            c.state = CallState::Answered;
        }
    }

    // ---- responses (client side) --------------------------------------------------

    fn handle_response(&mut self, now: Instant, _peer: Peer, resp: Response) {
        let Some(mut branch) = resp.common.vias[0].branch().map(str::to_string) else {
            self.stats.stray_responses += 1;
            return;
        };
        // A CANCEL shares its INVITE's branch; its transaction is keyed apart.
        if resp.common.cseq_method.eq_ignore_ascii_case("CANCEL") {
            branch.push_str(":cancel");
        }
        let Some(entry) = self.client.get_mut(&branch) else {
            self.stats.stray_responses += 1;
            return;
        };
        let purpose = entry.purpose;
        let peer = entry.peer;
        let code = resp.code;
        let ack_uri = match purpose {
            ClientPurpose::Invite(call) => self.calls.get(&call).map(|c| c.remote_target.clone()),
            ClientPurpose::Bye(_) | ClientPurpose::Info | ClientPurpose::Cancel => None,
        }
        .unwrap_or_else(|| format!("sip:{}", peer.remote));
        let Some(entry) = self.client.get_mut(&branch) else {
            return;
        };
        let make_ack = || build_non2xx_ack(&resp, &ack_uri);
        let (verdict, ack) = entry.tx.on_response(now, code, make_ack);
        let at = entry.tx.poll_timeout();
        if let Some(ack) = ack {
            self.transmit(peer, ack);
        }
        if let Some(at) = at {
            self.schedule(at, TimerRef::Client(branch.clone()));
        }
        if verdict == ClientVerdict::Absorb {
            return;
        }
        match purpose {
            ClientPurpose::Bye(call) => {
                if code >= 200 {
                    self.finish_call(call);
                }
            }
            ClientPurpose::Invite(call) => self.handle_invite_response(now, call, resp),
            ClientPurpose::Info | ClientPurpose::Cancel => {}
        }
    }

    fn handle_invite_response(&mut self, now: Instant, call: CallId, resp: Response) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        match resp.code {
            100..=199 => {
                if !c.provisional {
                    c.provisional = true;
                    if c.cancelled {
                        let reason = c.end_reason.unwrap_or(EndReason::Cancel);
                        self.send_cancel(now, call, reason);
                    }
                }
            }
            200..=299 => {
                if let Some(ack) = c.ack.clone() {
                    // Retransmitted 2xx: our ACK was lost.
                    let peer = c.peer;
                    self.transmit(peer, ack);
                    return;
                }
                let signal_ip = c.invite_source.ip();
                let remote_tag = resp.common.to.tag().unwrap_or_default().to_string();
                c.remote_tag = remote_tag.clone();
                c.remote_header = resp.raw.header("to").unwrap_or_default().to_string();
                if let Some(contact) = &resp.common.contact {
                    c.remote_target = contact.uri.clone();
                }
                c.route_set = resp.common.record_route.iter().rev().cloned().collect();
                c.state = CallState::Confirmed;
                self.dialogs
                    .insert(dialog_key(&c.sip_call_id, &c.local_tag), call);
                let ack = build_request(c, "ACK", c.local_cseq, &random_branch(), &[], None);
                let ack: Arc<[u8]> = ack.into();
                c.ack = Some(ack.clone());
                let peer = self.in_dialog_peer(call);
                self.transmit(peer, ack);
                if self.calls.get(&call).is_some_and(|c| c.cancelled) {
                    // The answer crossed our CANCEL: the dialog exists, so end it.
                    let reason = self.calls[&call].end_reason.unwrap_or(EndReason::Cancel);
                    return self.hangup(now, call, reason);
                }
                let media = sdp::parse(&resp.raw.body).ok();
                let codec = media
                    .as_ref()
                    .and_then(|m| sdp::choose_codec(m, &self.cfg.codecs).ok());
                match (media, codec) {
                    (Some(m), Some(codec)) => {
                        self.out.push_back(Output::Media(MediaCommand::Start {
                            call,
                            remote: m.rtp_addr,
                            signal_ip,
                            codec,
                            telephone_event_pt: m.telephone_event_pt,
                            send: true,
                        }));
                        self.emit(CallEvent::Answered {
                            call,
                            codec,
                            at: SystemTime::now(),
                        });
                    }
                    _ => {
                        tracing::warn!(call, "answer without usable SDP; hanging up");
                        self.hangup(now, call, EndReason::Error);
                    }
                }
            }
            code => {
                self.end_call(call, EndReason::Rejected(code));
            }
        }
    }

    fn in_dialog_peer(&self, call: CallId) -> Peer {
        let c = &self.calls[&call];
        if c.pin_peer || c.peer.link.reliable() || !c.route_set.is_empty() {
            return c.peer;
        }
        // The remote target is used when it names an IP address; a host name is not
        // resolved here (no DNS at run time), so the request goes back where the
        // dialog came from.
        match headers::parse_sip_uri(&c.remote_target) {
            Ok(Some(u)) => match headers::host_ip(&u.host) {
                Some(ip) => Peer {
                    remote: SocketAddr::new(ip, u.port.unwrap_or(5060)),
                    ..c.peer
                },
                None => c.peer,
            },
            _ => c.peer,
        }
    }

    // ---- call control -------------------------------------------------------------

    /// Ends a call from our side: BYE if established, final error response if not.
    pub fn hangup(&mut self, now: Instant, call: CallId, reason: EndReason) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        match c.state {
            CallState::Terminating => {}
            CallState::Allocating | CallState::Ringing => {
                let key = c.invite_key.clone().unwrap_or_default();
                let tag = c.local_tag.clone();
                if let Some(raw) = c.invite.clone() {
                    let code = if reason == EndReason::Shutdown {
                        503
                    } else {
                        480
                    };
                    self.respond_raw(now, &key, &raw, code, &tag, &[], None);
                }
                self.end_call(call, reason);
            }
            CallState::Calling => {
                c.end_reason.get_or_insert(reason);
                if c.cancelled {
                    return;
                }
                c.cancelled = true;
                // RFC 3261 §9.1: no CANCEL before a provisional response (it could
                // overtake the INVITE); one arrives, or timer B ends the attempt.
                if c.provisional {
                    self.send_cancel(now, call, reason);
                }
            }
            CallState::Answered | CallState::Confirmed => {
                c.end_reason.get_or_insert(reason);
                c.state = CallState::Terminating;
                c.local_cseq += 1;
                let branch = random_branch();
                let bye = build_request(c, "BYE", c.local_cseq, &branch, &[], None);
                let peer = self.in_dialog_peer(call);
                self.active = self.active.saturating_sub(1);
                self.out
                    .push_back(Output::Media(MediaCommand::Stop { call }));
                self.send_client(now, peer, false, bye, branch, ClientPurpose::Bye(call));
                tracing::info!(call, reason = %reason.as_str(), "hanging up");
            }
        }
    }

    /// CANCEL with the INVITE's Request-URI, Call-ID, From, To, CSeq number and branch
    /// (RFC 3261 §9.1); the INVITE then ends with 487.
    fn send_cancel(&mut self, now: Instant, call: CallId, reason: EndReason) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let Some(branch) = c.invite_branch.clone() else {
            return;
        };
        let cancel = build_request(c, "CANCEL", 1, &branch, &[], None);
        let peer = c.peer;
        self.send_client(
            now,
            peer,
            false,
            cancel,
            format!("{branch}:cancel"),
            ClientPurpose::Cancel,
        );
        tracing::info!(call, reason = %reason.as_str(), "cancelling");
    }

    fn send_client(
        &mut self,
        now: Instant,
        peer: Peer,
        invite: bool,
        bytes: Vec<u8>,
        branch: String,
        purpose: ClientPurpose,
    ) {
        let bytes: Arc<[u8]> = bytes.into();
        let tx = ClientTransaction::new(
            invite,
            peer.link.reliable(),
            self.cfg.timers,
            bytes.clone(),
            now,
        );
        if let Some(at) = tx.poll_timeout() {
            self.schedule(at, TimerRef::Client(branch.clone()));
        }
        self.client
            .insert(branch, ClientEntry { tx, peer, purpose });
        self.transmit(peer, bytes);
    }

    /// Ends a call whose dialog is over from the peer's side or never got set up.
    fn end_call(&mut self, call: CallId, reason: EndReason) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.state != CallState::Terminating {
            self.active = self.active.saturating_sub(1);
        }
        c.end_reason.get_or_insert(reason);
        self.out
            .push_back(Output::Media(MediaCommand::Stop { call }));
        self.finish_call(call);
    }

    fn finish_call(&mut self, call: CallId) {
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        self.dialogs
            .remove(&dialog_key(&c.sip_call_id, &c.local_tag));
        let reason = c.end_reason.unwrap_or(EndReason::Error);
        tracing::info!(call, sip_call_id = %c.sip_call_id, reason = %reason.as_str(), "call ended");
        self.emit(CallEvent::Ended {
            call,
            reason,
            at: SystemTime::now(),
        });
    }

    /// Timers due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = self.registrar.as_mut() {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
        self.drain_registrar();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(what) = self.timer_refs.remove(&id) else {
                continue;
            };
            match what {
                TimerRef::Server(key) => self.server_timer(now, key),
                TimerRef::Client(branch) => self.client_timer(now, branch),
                TimerRef::CallAnswer(call) => self.answer(now, call),
                TimerRef::CallMax(call) => {
                    if self.calls.contains_key(&call) {
                        self.hangup(now, call, EndReason::MaxDuration);
                    }
                }
            }
        }
    }

    fn server_timer(&mut self, now: Instant, key: String) {
        let Some(entry) = self.server.get_mut(&key) else {
            return;
        };
        match entry.tx.poll_timeout() {
            Some(at) if at <= now => {}
            _ => return, // Stale heap entry: the transaction rescheduled.
        }
        let out = entry.tx.handle_timeout(now);
        let peer = entry.peer;
        let call = entry.call;
        let invite = entry.invite;
        let next = entry.tx.poll_timeout();
        let done = entry.tx.is_terminated();
        if let Some(data) = out.retransmit {
            self.transmit(peer, data);
        }
        if let Some(at) = next {
            self.schedule(at, TimerRef::Server(key.clone()));
        }
        if let (Some(TxEvent::AckTimeout { was_2xx: true }), Some(call), true) =
            (out.event, call, invite)
        {
            tracing::info!(call, "no ACK for our 200 OK within 64*T1");
            self.hangup(now, call, EndReason::NoAck);
        }
        if done {
            self.server.remove(&key);
        }
    }

    fn client_timer(&mut self, now: Instant, branch: String) {
        let Some(entry) = self.client.get_mut(&branch) else {
            return;
        };
        match entry.tx.poll_timeout() {
            Some(at) if at <= now => {}
            _ => return,
        }
        let out = entry.tx.handle_timeout(now);
        let peer = entry.peer;
        let purpose = entry.purpose;
        let next = entry.tx.poll_timeout();
        let done = entry.tx.is_terminated();
        if let Some(data) = out.retransmit {
            self.transmit(peer, data);
        }
        if let Some(at) = next {
            self.schedule(at, TimerRef::Client(branch.clone()));
        }
        if out.event == Some(TxEvent::Timeout) {
            match purpose {
                ClientPurpose::Bye(call) => self.finish_call(call),
                ClientPurpose::Info | ClientPurpose::Cancel => {}
                ClientPurpose::Invite(call) => self.end_call(call, EndReason::Timeout),
            }
        }
        if done {
            self.client.remove(&branch);
        }
    }

    /// Sends a DTMF digit as SIP INFO (application/dtmf-relay) inside the call's dialog.
    pub fn send_info_digit(&mut self, now: Instant, call: CallId, digit: char, duration_ms: u32) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.state != CallState::Confirmed {
            return;
        }
        c.local_cseq += 1;
        let branch = random_branch();
        let body = format!("Signal={digit}\r\nDuration={duration_ms}\r\n");
        let info = build_request(
            c,
            "INFO",
            c.local_cseq,
            &branch,
            &[],
            Some(("application/dtmf-relay", body.as_bytes())),
        );
        let peer = self.in_dialog_peer(call);
        self.send_client(now, peer, false, info, branch, ClientPurpose::Info);
    }

    /// Ends every call (server shutdown).
    pub fn hangup_all(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            self.hangup(now, id, EndReason::Shutdown);
        }
    }

    // ---- UAC ----------------------------------------------------------------------

    /// Places a call to `target` (a SIP URI naming an IP address) from `peer.local`.
    /// The RTP port is allocated first (`MediaCommand::Allocate`); the INVITE leaves
    /// once `media_allocated` reports it. Progress arrives as events.
    pub fn place_call(&mut self, peer: Peer, target: &str, from_user: &str) -> CallId {
        self.place_call_to(peer, target, None, from_user, Vec::new(), None)
    }

    /// Rings an operator's phone: `peer` is where its registration came from, which is
    /// where the INVITE and every later request of the dialog go. `display` is shown
    /// by the phone; `extra` headers ride on the INVITE.
    pub fn offer_call(
        &mut self,
        operator: &str,
        peer: Peer,
        contact: &str,
        display: &str,
        from_user: &str,
        extra: Vec<(String, String)>,
    ) -> CallId {
        // Stored as `operator:<user>`: the phone's address says where an operator is.
        let label = format!("operator:{operator}");
        let call = self.place_call_to(peer, contact, Some(display), from_user, extra, Some(&label));
        if let Some(c) = self.calls.get_mut(&call) {
            c.pin_peer = true;
        }
        call
    }

    fn place_call_to(
        &mut self,
        peer: Peer,
        target: &str,
        display: Option<&str>,
        from_user: &str,
        extra: Vec<(String, String)>,
        shown_to: Option<&str>,
    ) -> CallId {
        let call = self.next_call;
        self.next_call += 1;
        self.active += 1;
        let ip = self.local_ip(peer);
        let host = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let local_tag = random_token(12);
        let origin = SdpOrigin {
            session_id: rand::random::<u32>() as u64,
            version: 1,
        };
        let sip_call_id = format!("{}@{host}", random_token(20));
        let c = Call {
            direction: Direction::Outbound,
            state: CallState::Allocating,
            sip_call_id: sip_call_id.clone(),
            local_tag,
            remote_tag: String::new(),
            local_header: String::new(),
            remote_header: format!("<{target}>"),
            remote_target: target.to_string(),
            route_set: Vec::new(),
            local_cseq: 1,
            remote_cseq: None,
            peer,
            invite_key: None,
            invite: None,
            invite_source: peer.remote,
            offer: None,
            codec: None,
            media_port: 0,
            origin,
            answer_at: None,
            end_reason: None,
            invite_branch: None,
            ack: None,
            invite_headers: Vec::new(),
            pin_peer: false,
            cancelled: false,
            provisional: false,
        };
        let mut c = c;
        let display = display
            .map(|d| format!("\"{}\" ", quote_display(d)))
            .unwrap_or_default();
        c.local_header = format!("{display}<sip:{from_user}@{host}>;tag={}", c.local_tag);
        c.invite_headers = extra;
        self.emit(CallEvent::Started {
            call,
            sip_call_id,
            from: Some(from_user.to_string()),
            to: shown_to.unwrap_or(target).to_string(),
            remote: peer.remote,
            transport: peer.link.via_transport(),
            direction: Direction::Outbound,
            at: SystemTime::now(),
        });
        self.calls.insert(call, c);
        self.out.push_back(Output::Media(MediaCommand::Allocate {
            call,
            local_ip: peer.local.ip(),
        }));
        call
    }

    fn send_invite(&mut self, now: Instant, call: CallId) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let ip = match self.cfg.public_ip {
            Some(ip) => ip,
            None => c.peer.local.ip(),
        };
        c.state = CallState::Calling;
        let branch = random_branch();
        let body = sdp::offer(
            &self.cfg.codecs,
            self.cfg.offer_telephone_event,
            c.origin,
            ip,
            c.media_port,
        );
        c.invite_branch = Some(branch.clone());
        let peer = c.peer;
        let contact = self.contact_header(peer);
        let c = &self.calls[&call];
        let mut headers: Vec<(&str, &str)> = vec![("Contact", &contact), ("Allow", message::ALLOW)];
        headers.extend(
            c.invite_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        let invite = build_request(
            c,
            "INVITE",
            1,
            &branch,
            &headers,
            Some(("application/sdp", body.as_bytes())),
        );
        self.send_client(now, peer, true, invite, branch, ClientPurpose::Invite(call));
    }
}

fn req_source(peer: Peer, _req: &Request) -> SocketAddr {
    peer.remote
}

/// The caller's user part or whole URI, as the caller-ID policy sees it.
fn caller_identity(from: &NameAddr) -> String {
    match headers::parse_sip_uri(&from.uri) {
        Ok(Some(u)) => u.user.unwrap_or(u.host),
        _ => from.uri.clone(),
    }
}

/// Whether a broken message's first word allows an error response: not for ACK
/// (never answered) nor for responses.
fn is_answerable(method: &str) -> bool {
    !method.is_empty() && method != "ACK" && !method.starts_with("SIP/")
}

/// The parts of a REGISTER the registrar decides on.
fn register_request(source: SocketAddr, req: &Request) -> Result<RegisterRequest, &'static str> {
    // Another URI scheme or no user part names no operator: such a REGISTER is
    // challenged like any other and can never authenticate.
    let aor_user = headers::parse_sip_uri(&req.common.to.uri)
        .ok()
        .flatten()
        .and_then(|u| u.user)
        .unwrap_or_default();
    let mut contacts = Vec::new();
    for line in req.raw.headers_named("contact") {
        for value in raw::split_comma_values(line) {
            if value.trim() == "*" {
                contacts.push(reg::Contact::Star);
                continue;
            }
            let na = headers::parse_name_addr(value)?;
            let expires = match headers::find_param(&na.params, "expires") {
                Some(p) => Some(
                    p.value
                        .as_deref()
                        .and_then(|v| v.trim().parse::<u32>().ok())
                        .ok_or("bad expires parameter")?,
                ),
                None => None,
            };
            contacts.push(reg::Contact::Uri {
                uri: na.uri,
                expires,
            });
        }
    }
    let expires = match req.raw.header("expires") {
        Some(v) => Some(v.trim().parse::<u32>().map_err(|_| "bad Expires")?),
        None => None,
    };
    Ok(RegisterRequest {
        source,
        aor_user: percent_decode(&aor_user),
        contacts,
        expires,
        call_id: req.common.call_id.clone(),
        cseq: req.common.cseq,
        authorization: req.raw.header("authorization").map(str::to_string),
    })
}

/// A display name as a quoted-string body: no quotes, backslashes or control
/// characters, at most 64 characters.
fn quote_display(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .take(64)
        .collect()
}

/// `%2A1` -> `*1` (phones escape `*` and `#` in user parts). Works on bytes: the
/// input is peer-controlled and may put anything after a `%`.
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_branch() -> String {
    format!("z9hG4bK{}", random_token(16))
}

/// A request inside the dialog of `c` (RFC 3261 §12.2.1.1).
fn build_request(
    c: &Call,
    method: &str,
    cseq: u32,
    branch: &str,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let peer = c.peer;
    let local = peer.local;
    let host = match local.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let mut out = String::with_capacity(400);
    let _ = write!(out, "{method} {} SIP/2.0\r\n", c.remote_target);
    let _ = write!(
        out,
        "Via: SIP/2.0/{} {host}:{};branch={branch};rport\r\n",
        peer.link.via_transport(),
        local.port()
    );
    out.push_str("Max-Forwards: 70\r\n");
    for r in &c.route_set {
        let _ = write!(out, "Route: {r}\r\n");
    }
    let _ = write!(
        out,
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n",
        c.local_header, c.remote_header, c.sip_call_id
    );
    for (n, v) in extra {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let mut bytes = out.into_bytes();
    finish_message(&mut bytes, body);
    bytes
}

/// ACK for a non-2xx final response (RFC 3261 §17.1.1.3): same branch and Request-URI
/// as the INVITE, To from the response.
fn build_non2xx_ack(resp: &Response, request_uri: &str) -> Vec<u8> {
    let raw = &resp.raw;
    let mut out = String::with_capacity(300);
    let _ = write!(out, "ACK {request_uri} SIP/2.0\r\n");
    if let Some(v) = raw.header("via") {
        let top = raw::split_comma_values(v)[0];
        let _ = write!(out, "Via: {top}\r\n");
    }
    out.push_str("Max-Forwards: 70\r\n");
    for (name, label) in [("from", "From"), ("to", "To"), ("call-id", "Call-ID")] {
        if let Some(v) = raw.header(name) {
            let _ = write!(out, "{label}: {v}\r\n");
        }
    }
    let _ = write!(out, "CSeq: {} ACK\r\n", resp.common.cseq);
    let mut bytes = out.into_bytes();
    finish_message(&mut bytes, None);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{expected_response, ha1, Algorithm};

    #[test]
    fn percent_decoding_takes_any_bytes() {
        assert_eq!(percent_decode("%2A1"), "*1");
        assert_eq!(percent_decode("%23"), "#");
        assert_eq!(percent_decode("%\u{20ac}1"), "%\u{20ac}1");
        assert_eq!(percent_decode("%+1x"), "%+1x");
        assert_eq!(percent_decode("a%"), "a%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    fn operator_endpoint() -> Endpoint {
        let credentials: CredentialLookup = Arc::new(|user: &str| {
            (user == "anna").then(|| Ha1Set::from_password("anna", "hotline", "secret-pass"))
        });
        Endpoint::new(EndpointConfig {
            registrar: Some(RegistrarSetup {
                credentials,
                registrar: RegistrarConfig::default(),
                digest: DigestConfig::new("hotline"),
                feature_codes: vec![("*1".into(), "Available".into())],
            }),
            ..EndpointConfig::default()
        })
    }

    fn drain(ep: &mut Endpoint) -> Vec<Output> {
        std::iter::from_fn(|| ep.poll_output()).collect()
    }

    fn register(auth: &str, cseq: u32, contact: &str) -> String {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKr{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:anna@127.0.0.1>;tag=a1\r\nTo: <sip:anna@127.0.0.1>\r\nCall-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    }

    /// The registrar answers through the endpoint, and byte-level garbage in REGISTERs
    /// and feature-code INVITEs never panics (the user parts are percent-decoded and
    /// looked up on every such request).
    #[test]
    fn registrar_path_survives_mutated_requests() {
        use rand::{Rng, SeedableRng};
        let mut ep = operator_endpoint();
        let now = Instant::now();
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let phone: SocketAddr = "127.0.0.1:5062".parse().unwrap();
        ep.handle_datagram(
            now,
            Link::Udp(0),
            local,
            phone,
            register("", 1, "<sip:anna@127.0.0.1:5062>").as_bytes(),
        );
        let out = drain(&mut ep);
        let challenge = out
            .iter()
            .find_map(|o| match o {
                Output::Transmit { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
                _ => None,
            })
            .expect("a response");
        assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let qop = crate::sip::digest::QopAuth {
            nc: "00000001".into(),
            count: 1,
            cnonce: "c0ffee".into(),
        };
        let key = ha1(Algorithm::Md5, "anna", "hotline", "secret-pass");
        let response = expected_response(
            Algorithm::Md5,
            &key,
            "REGISTER",
            "sip:127.0.0.1",
            nonce,
            Some(&qop),
        );
        let auth = format!(
            "Authorization: Digest username=\"anna\", realm=\"hotline\", nonce=\"{nonce}\", uri=\"sip:127.0.0.1\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n"
        );
        ep.handle_datagram(
            now,
            Link::Udp(0),
            local,
            phone,
            register(&auth, 2, "<sip:anna@127.0.0.1:5062>").as_bytes(),
        );
        let out = drain(&mut ep);
        assert!(
            out.iter().any(|o| matches!(o, Output::Registrar(RegistrarEvent::OperatorOnline { user }) if user == "anna")),
            "{out:?}"
        );
        assert_eq!(ep.operator_contacts("anna", now).len(), 1);

        // A feature code is challenged, then honoured with the operator's credentials.
        let invite = |cseq: u32, auth: &str| {
            format!(
                "INVITE sip:*1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKf{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:anna@127.0.0.1>;tag=f1\r\nTo: <sip:*1@127.0.0.1>\r\nCall-ID: fc-1\r\nCSeq: {cseq} INVITE\r\nContact: <sip:anna@127.0.0.1:5062>\r\n{auth}Content-Length: 0\r\n\r\n"
            )
        };
        ep.handle_datagram(now, Link::Udp(0), local, phone, invite(1, "").as_bytes());
        let out = drain(&mut ep);
        let challenge = sent(&out).pop().expect("a response");
        assert!(challenge.starts_with("SIP/2.0 407"), "{challenge}");
        assert!(!out.iter().any(|o| matches!(o, Output::FeatureCode { .. })));
        let nonce = challenge
            .split("Proxy-Authenticate: Digest")
            .nth(1)
            .and_then(|c| c.split("nonce=\"").nth(1))
            .and_then(|c| c.split('"').next())
            .expect("a Proxy-Authenticate nonce");
        let qop = crate::sip::digest::QopAuth {
            nc: "00000001".into(),
            count: 1,
            cnonce: "feed".into(),
        };
        let response = expected_response(
            Algorithm::Md5,
            &key,
            "INVITE",
            "sip:*1@127.0.0.1",
            nonce,
            Some(&qop),
        );
        let proxy_auth = format!(
            "Proxy-Authorization: Digest username=\"anna\", realm=\"hotline\", nonce=\"{nonce}\", uri=\"sip:*1@127.0.0.1\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"feed\"\r\n"
        );
        ep.handle_datagram(
            now,
            Link::Udp(0),
            local,
            phone,
            invite(2, &proxy_auth).as_bytes(),
        );
        let out = drain(&mut ep);
        assert!(
            out.iter().any(|o| matches!(o, Output::FeatureCode { user, code } if user == "anna" && code == "*1")),
            "{out:?}"
        );
        assert!(sent(&out)
            .iter()
            .any(|m| m.starts_with("SIP/2.0 480 Available")));
        // Someone else's name in From with Anna's credentials is refused.
        let forged = invite(3, &proxy_auth).replace("From: <sip:anna@", "From: <sip:boris@");
        ep.handle_datagram(now, Link::Udp(0), local, phone, forged.as_bytes());
        let out = drain(&mut ep);
        assert!(
            sent(&out).iter().any(|m| m.starts_with("SIP/2.0 403")),
            "{out:?}"
        );
        let invite = invite(4, &proxy_auth);

        let templates = [
            register(&auth, 3, "<sip:anna@127.0.0.1:5062>;expires=60"),
            invite.to_string(),
        ];
        let spice: [&[u8]; 10] = [
            b"%",
            "\u{20ac}".as_bytes(),
            b"%E2%82",
            b"\"",
            b",",
            b";",
            b"*",
            b"\0",
            b"%2A",
            b"<",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..20_000u32 {
            let mut msg = templates[i as usize % 2].as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..msg.len());
                match rng.gen_range(0..3) {
                    0 => {
                        let s = spice[rng.gen_range(0..spice.len())];
                        msg.splice(at..at, s.iter().copied());
                    }
                    1 => msg[at] = rng.gen(),
                    _ => {
                        msg.remove(at);
                    }
                }
            }
            let from = SocketAddr::new(phone.ip(), 5062 + (i % 50) as u16);
            ep.handle_datagram(now, Link::Udp(0), local, from, &msg);
            drain(&mut ep);
        }
    }

    fn sent(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Transmit { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// A response to `request` copying its Via, From, To, Call-ID and CSeq.
    fn answer(request: &str, status: &str) -> String {
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in request.lines() {
            let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
            if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
                out.push_str(line);
                out.push_str("\r\n");
            } else if name == "to" {
                out.push_str(line);
                out.push_str(";tag=phone\r\n");
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }

    /// An offer abandoned before the phone said anything is cancelled only once a
    /// provisional response shows the INVITE arrived (RFC 3261 §9.1).
    #[test]
    fn cancel_waits_for_a_provisional_response() {
        let mut ep = operator_endpoint();
        let now = Instant::now();
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let phone: SocketAddr = "127.0.0.1:5062".parse().unwrap();
        let peer = Peer {
            link: Link::Udp(0),
            remote: phone,
            local,
        };
        let leg = ep.offer_call(
            "anna",
            peer,
            "sip:anna@127.0.0.1:5062",
            "zone=1",
            "hotline",
            vec![],
        );
        drain(&mut ep);
        ep.media_allocated(now, leg, 30000);
        let invite = sent(&drain(&mut ep)).pop().expect("INVITE");
        assert!(
            invite.starts_with("INVITE sip:anna@127.0.0.1:5062 SIP/2.0"),
            "{invite}"
        );
        assert!(
            invite.contains("From: \"zone=1\" <sip:hotline@"),
            "{invite}"
        );

        ep.hangup(now, leg, EndReason::Cancel);
        assert!(
            sent(&drain(&mut ep)).is_empty(),
            "no CANCEL before a provisional"
        );
        let ringing = answer(&invite, "180 Ringing");
        ep.handle_datagram(now, Link::Udp(0), local, phone, ringing.as_bytes());
        let out = sent(&drain(&mut ep));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("CANCEL sip:anna@127.0.0.1:5062 SIP/2.0"),
            "{}",
            out[0]
        );
        let branch = |m: &str| {
            m.split("branch=")
                .nth(1)
                .map(|b| b.split([';', '\r']).next().unwrap().to_string())
        };
        assert_eq!(branch(&out[0]), branch(&invite));
        assert!(out[0].contains("CSeq: 1 CANCEL"), "{}", out[0]);

        let terminated = answer(&invite, "487 Request Terminated");
        ep.handle_datagram(now, Link::Udp(0), local, phone, terminated.as_bytes());
        let out = drain(&mut ep);
        assert!(
            sent(&out).iter().any(|m| m.starts_with("ACK ")),
            "487 is acknowledged"
        );
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Call(CallEvent::Ended { call, reason: EndReason::Cancel, .. }) if *call == leg
        )));
    }
}
