//! The SIP endpoint: every message and timer of the hotline's SIP side enters here, as a
//! sans-IO state machine (quinn-proto's `Endpoint` and `Connection` split).
//!
//! Owns admission (per-source limits, the call limit), framing and validation errors,
//! matching messages to transactions and to calls, and the timers; each call is its own
//! state machine (`inbound::InboundCall`, `outbound::OutboundCall`, sharing `Dialog`),
//! and operators' REGISTERs and feature codes go to `operators` and the registrar.
//! Input comes in through `handle_*` with `now`; output leaves through `poll_output`
//! and `poll_timeout`. Time and randomness are inputs: `now`, the wall clock anchor and
//! a seeded generator. It must not touch sockets, files or the clock.

use super::admission::{Admission, AdmissionConfig, CallVerdict, Verdict};
use super::client::ClientResult;
use super::dialog::{dialog_key, Dialog, LegSrtp, MediaState};
use super::digest::{DigestAuth, Ha1Set};
use super::headers::{self, NameAddr};
use super::inbound::{InboundCall, Outcome};
use super::message::{
    self, validate_request, validate_response, Method, Reject, Request, Response,
};
use super::operators::{self, RegistrarSetup};
use super::outbound::OutboundCall;
use super::raw::{self, RawMessage, StartLine};
use super::registrar::{Registrar, RegistrarEvent};
use super::transaction::{ClientVerdict, TimerConfig, TxEvent};
use super::transactions::{ClientPurpose, TimerRef, Transactions};
use crate::call::{
    CallEvent, CallId, Codec, Direction, EndReason, Link, MediaCommand, Peer, WallClock,
};
use crate::capacity::release_spare;
use crate::sdp::{self, SdpOrigin};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// The end of a request sent with `send_client_request`.
    Client(super::client::ClientResult),
}

/// What may be stored about the caller's number; applied before anything leaves the
/// endpoint (events and logs).
pub type CallerIdFilter = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
/// What may be stored or logged of a Call-ID (phones put their address in it).
pub type CallIdLabel = Arc<dyn Fn(&str) -> String + Send + Sync>;
/// What may be logged of a source address (a caller's, under the caller-ID policy).
pub type AddressLabel = Arc<dyn Fn(IpAddr) -> String + Send + Sync>;
/// A fresh SRTP master key and salt for each leg that gets SRTP (OS randomness in the
/// server; the endpoint itself reads none).
pub type SrtpKeySource = Arc<dyn Fn() -> crate::call::SrtpMasterKey + Send + Sync>;

#[derive(Clone)]
pub struct EndpointConfig {
    pub timers: TimerConfig,
    pub max_calls: usize,
    pub max_call_duration: Duration,
    pub answer_delay: Duration,
    pub public_ip: Option<IpAddr>,
    pub codecs: Vec<Codec>,
    pub admission: AdmissionConfig,
    pub max_message_bytes: usize,
    pub caller_id: CallerIdFilter,
    pub call_id_label: CallIdLabel,
    pub address_label: AddressLabel,
    /// Whether offers we make include telephone-event (RFC 4733).
    pub offer_telephone_event: bool,
    /// Whether SIP messages may be logged in full at debug level (only when the
    /// caller-ID policy keeps numbers anyway).
    pub log_messages: bool,
    /// Without it REGISTER is refused.
    pub registrar: Option<RegistrarSetup>,
    /// `rtp.srtp`; SDES only ever on TLS legs, and only with a key source.
    pub srtp: crate::config::SrtpMode,
    pub srtp_keys: Option<SrtpKeySource>,
}

impl EndpointConfig {
    /// `srtp`, or off when there is no key source.
    pub(super) fn srtp_mode(&self) -> crate::config::SrtpMode {
        match self.srtp_keys {
            Some(_) => self.srtp,
            None => crate::config::SrtpMode::Off,
        }
    }

    pub(super) fn new_srtp_key(&self) -> Option<crate::call::SrtpMasterKey> {
        self.srtp_keys.as_ref().map(|k| k())
    }
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
            admission: AdmissionConfig::default(),
            max_message_bytes: 65535,
            caller_id: Arc::new(|s: &str| Some(s.to_string())),
            call_id_label: Arc::new(|s: &str| s.to_string()),
            address_label: Arc::new(|ip: IpAddr| ip.to_string()),
            offer_telephone_event: true,
            log_messages: false,
            registrar: None,
            srtp: crate::config::SrtpMode::Offer,
            srtp_keys: None,
        }
    }
}

/// Counters of what the endpoint refused, dropped or absorbed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub rate_limited: u64,
    /// Messages dropped from banned sources, and bans started.
    pub banned_dropped: u64,
    pub bans: u64,
    /// INVITEs refused (503 or silence) for the per-source call limit.
    pub source_busy: u64,
    pub malformed: u64,
    pub refused: u64,
    pub busy: u64,
    /// INVITEs refused with 503 because the media clock is overloaded.
    pub overload: u64,
    pub retransmissions_absorbed: u64,
    pub stray_responses: u64,
}

enum Call {
    In(InboundCall),
    Out(OutboundCall),
}

impl Call {
    fn dialog(&self) -> &Dialog {
        match self {
            Call::In(c) => &c.dialog,
            Call::Out(c) => &c.dialog,
        }
    }

    fn is_terminating(&self) -> bool {
        match self {
            Call::In(c) => c.is_terminating(),
            Call::Out(c) => c.is_terminating(),
        }
    }

    fn end_reason(&self) -> Option<EndReason> {
        match self {
            Call::In(c) => c.end_reason,
            Call::Out(c) => c.end_reason,
        }
    }

    fn set_end_reason(&mut self, reason: EndReason) {
        let r = match self {
            Call::In(c) => &mut c.end_reason,
            Call::Out(c) => &mut c.end_reason,
        };
        r.get_or_insert(reason);
    }
}

pub struct Endpoint {
    cfg: EndpointConfig,
    t: Transactions,
    calls: HashMap<CallId, Call>,
    /// Dialog key (Call-ID and our tag) -> call.
    dialogs: HashMap<String, CallId>,
    /// Each call's maximum-duration timer, cancelled when the call ends.
    max_duration_timers: HashMap<CallId, u64>,
    admission: Admission,
    registrar: Option<Registrar>,
    next_call: CallId,
    /// Calls not yet terminating, for the `max_calls` limit.
    active: usize,
    /// Shutting down: new calls get 503, calls in progress go on.
    refusing_new_calls: bool,
    /// The media clock is behind (`set_overloaded`): new calls get 503.
    overloaded: bool,
    stats: Stats,
}

/// Retry-After of a 503 for overload: the clock needs a few calm seconds to count as
/// recovered, and callers retrying at once would keep it loaded.
const OVERLOAD_RETRY_AFTER_S: u32 = 10;

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

impl Endpoint {
    /// `rng` makes tags, branches, nonce secrets; `wall` anchors event times.
    pub fn new(cfg: EndpointConfig, mut rng: StdRng, now: Instant, wall: WallClock) -> Self {
        let registrar = cfg.registrar.as_ref().map(|setup| {
            let digest_rng =
                Box::new(StdRng::from_rng(&mut rng).expect("StdRng seeds from StdRng"));
            let auth = DigestAuth::with_random_secret(setup.digest.clone(), now, digest_rng);
            Registrar::new(setup.registrar.clone(), auth)
        });
        Endpoint {
            t: Transactions::new(cfg.timers, rng, wall, cfg.log_messages),
            admission: Admission::new(cfg.admission.clone()),
            registrar,
            cfg,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            max_duration_timers: HashMap::new(),
            next_call: 1,
            active: 0,
            refusing_new_calls: false,
            overloaded: false,
            stats: Stats::default(),
        }
    }

    /// Re-anchors the wall clock (the shell does this now and then).
    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.t.set_wall_clock(wall);
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn active_calls(&self) -> usize {
        self.active
    }

    /// Server and client transactions held (each call's end should bring it to zero).
    pub fn transaction_count(&self) -> usize {
        self.t.server.len() + self.t.client.len()
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.t.poll_output()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let reg = self.registrar.as_ref().and_then(|r| r.poll_timeout());
        match (self.t.poll_timeout(), reg) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- operators ------------------------------------------------------------------

    /// The operator accounts that may register (SIP username -> HA1s). Registrations of
    /// accounts no longer in the set end at once.
    pub fn set_operator_credentials(&mut self, credentials: HashMap<String, Ha1Set>) {
        let Some(registrar) = self.registrar.as_mut() else {
            return;
        };
        for user in registrar.users() {
            if !credentials.contains_key(&user) {
                tracing::info!(operator = %user, "account removed: registration dropped");
                registrar.forget(&user);
            }
        }
        registrar.set_credentials(credentials);
        operators::drain_events(registrar, &mut self.t);
    }

    /// Every live binding of an operator with the transport path that reaches it,
    /// oldest first.
    pub fn operator_contacts(&self, user: &str, now: Instant) -> Vec<(String, Peer)> {
        match self.registrar.as_ref() {
            Some(r) => operators::contacts(r, user, now),
            None => Vec::new(),
        }
    }

    // ---- input ----------------------------------------------------------------------

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
                tracing::debug!(error = %e, "unframable datagram");
                if let Some(p) = partial.filter(|p| p.method().is_some_and(is_answerable)) {
                    self.refuse(&p, peer, &Reject::bad(e.to_string()));
                }
            }
        }
    }

    /// A message framed from a stream connection.
    pub fn handle_stream_message(&mut self, now: Instant, peer: Peer, raw: RawMessage) {
        if !self.admit(now, peer.remote.ip()) {
            return;
        }
        self.handle_raw(now, peer, raw);
    }

    /// A stream framing error: answer if possible, then the connection is closed.
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
            let reject = Reject {
                status: Some(status),
                reason: err.to_string(),
                extra_headers: vec![],
            };
            self.refuse(&p, peer, &reject);
        }
        if let Some(id) = peer.link.connection() {
            self.t.output(Output::CloseConnection(id));
        }
    }

    fn admit(&mut self, now: Instant, ip: IpAddr) -> bool {
        let verdict = self.admission.admit(now, ip);
        match verdict {
            Verdict::Admit => {}
            Verdict::Limited => self.stats.rate_limited += 1,
            Verdict::Banned => self.stats.banned_dropped += 1,
        }
        self.log_new_bans(now);
        verdict == Verdict::Admit
    }

    fn log_new_bans(&mut self, now: Instant) {
        for ban in self.admission.take_new_bans() {
            self.stats.bans += 1;
            tracing::warn!(
                source = %(self.cfg.address_label)(ban.ip),
                refused = ban.refusals,
                ban_s = ban.until.saturating_duration_since(now).as_secs(),
                "source banned: it kept exceeding its limits"
            );
        }
    }

    /// New admission limits (a reload); calls in progress keep their places.
    pub fn set_admission(&mut self, cfg: AdmissionConfig) {
        self.admission.set_config(cfg.clone());
        self.cfg.admission = cfg;
    }

    /// Sources banned now.
    pub fn banned_sources(&self, now: Instant) -> usize {
        self.admission.banned(now)
    }

    fn handle_raw(&mut self, now: Instant, peer: Peer, raw: RawMessage) {
        if self.cfg.log_messages {
            tracing::debug!(from = %peer.remote, "received:\n{}{}", String::from_utf8_lossy(&raw.head), String::from_utf8_lossy(&raw.body));
        }
        match raw.start {
            StartLine::Response { .. } => match validate_response(raw) {
                Some(resp) => self.handle_response(now, resp),
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
                    tracing::debug!(status = ?reject.status, reason = %reject.reason, "request refused");
                    if raw.method() != Some("ACK") {
                        self.refuse(&raw, peer, &reject);
                    }
                }
            },
        }
    }

    /// Stateless answer to a request we refuse.
    fn refuse(&mut self, raw: &RawMessage, peer: Peer, reject: &Reject) {
        let Some(status) = reject.status else { return };
        if raw.header("via").is_none() {
            return; // Nowhere to send it.
        }
        let via = raw.header("via").and_then(|v| {
            raw::split_comma_values(v)
                .first()
                .and_then(|h| headers::parse_via(h).ok())
        });
        let target = response_peer(peer, via.as_ref());
        let reason = if status == 400 {
            reject.reason.as_str()
        } else {
            message::reason_phrase(status)
        };
        let tag = self.t.token(10);
        let bytes = message::build_response(
            raw,
            message::Source { addr: peer.remote },
            status,
            reason,
            Some(&tag),
            &reject.extra_headers,
            None,
        );
        self.t.transmit(target, bytes.into());
    }

    fn handle_request(&mut self, now: Instant, peer: Peer, req: Request) {
        let key = server_key(&req);
        if req.method == Method::Ack {
            return self.handle_ack(now, &key, req);
        }
        if req.method == Method::Cancel {
            return self.handle_cancel(now, peer, req);
        }
        if let Some(entry) = self.t.server.get(&key) {
            self.stats.retransmissions_absorbed += 1;
            if let Some(resp) = entry.tx.on_request_retransmission() {
                let p = entry.peer;
                self.t.transmit(p, resp);
            }
            return;
        }
        let resp_peer = response_peer(peer, Some(req.top_via()));
        self.t
            .open_server(&key, resp_peer, peer.remote, req.method == Method::Invite);

        if let Some(local_tag) = req.common.to.tag() {
            let call = self
                .dialogs
                .get(&dialog_key(&req.common.call_id, local_tag))
                .copied();
            match call {
                Some(call) => self.handle_in_dialog(now, &key, call, req),
                None => self
                    .t
                    .respond(now, &key, &req.raw, 481, None, None, &[], None),
            }
            return;
        }
        let feature_code = self
            .cfg
            .registrar
            .as_ref()
            .and_then(|s| operators::feature_code_of(s, &req));
        match req.method {
            Method::Invite if feature_code.is_some() => {
                let (Some(registrar), Some(setup)) =
                    (self.registrar.as_mut(), self.cfg.registrar.as_ref())
                else {
                    return;
                };
                operators::handle_feature_code(
                    registrar,
                    setup,
                    &mut self.t,
                    now,
                    &key,
                    peer.remote,
                    &req,
                );
            }
            Method::Invite => self.handle_new_invite(now, &key, peer, req),
            Method::Options => {
                let extra = [
                    ("Allow".to_string(), message::ALLOW.to_string()),
                    ("Accept".to_string(), "application/sdp".to_string()),
                    ("Supported".to_string(), String::new()),
                ];
                self.t
                    .respond(now, &key, &req.raw, 200, None, None, &extra, None);
            }
            Method::Register => operators::handle_register(
                self.registrar.as_mut(),
                &mut self.t,
                now,
                &key,
                peer,
                &req,
            ),
            _ => self
                .t
                .respond(now, &key, &req.raw, 481, None, None, &[], None),
        }
    }

    /// Refuses a new INVITE before any call state exists: a `Started` and an `Ended`
    /// event record the attempt.
    #[allow(clippy::too_many_arguments)]
    fn refuse_invite(
        &mut self,
        now: Instant,
        key: &str,
        req: &Request,
        started: CallEvent,
        code: u16,
        extra: &[(String, String)],
        reason: EndReason,
        why: &str,
    ) {
        let call = started.call();
        self.next_call += 1;
        self.t.emit(started);
        self.t
            .respond(now, key, &req.raw, code, None, None, extra, None);
        let at = self.t.wall(now);
        self.t.emit(CallEvent::Ended { call, reason, at });
        // Overload is logged when it starts and ends, not per INVITE (a flood of them
        // is what it may be).
        if reason != EndReason::RejectedOverload {
            tracing::info!(call, reason = %reason.as_str(), "call refused: {why}");
        }
    }

    fn handle_new_invite(&mut self, now: Instant, key: &str, peer: Peer, req: Request) {
        let call = self.next_call;
        match self.admission.admit_call(now, peer.remote.ip()) {
            CallVerdict::Admit => {}
            verdict => {
                self.stats.source_busy += 1;
                self.log_new_bans(now);
                if verdict == CallVerdict::Busy {
                    let retry = [("Retry-After".to_string(), "30".to_string())];
                    self.t
                        .respond(now, key, &req.raw, 503, None, None, &retry, None);
                } else {
                    self.t.server.remove(key);
                }
                return;
            }
        }
        let started = CallEvent::Started {
            call,
            sip_call_id: (self.cfg.call_id_label)(&req.common.call_id),
            from: (self.cfg.caller_id)(&caller_identity(&req.common.from)),
            to: req.common.to.uri.clone(),
            remote: peer.remote,
            transport: peer.link.via_transport(),
            direction: Direction::Inbound,
            at: self.t.wall(now),
        };
        if self.refusing_new_calls {
            self.admission.call_ended(peer.remote.ip());
            let retry = [("Retry-After".into(), "60".into())];
            let reason = EndReason::Shutdown;
            return self.refuse_invite(now, key, &req, started, 503, &retry, reason, "stopping");
        }
        if self.overloaded {
            self.admission.call_ended(peer.remote.ip());
            self.stats.overload += 1;
            let retry = [("Retry-After".into(), OVERLOAD_RETRY_AFTER_S.to_string())];
            let reason = EndReason::RejectedOverload;
            return self.refuse_invite(now, key, &req, started, 503, &retry, reason, "overload");
        }
        if self.active >= self.cfg.max_calls {
            self.admission.call_ended(peer.remote.ip());
            self.stats.busy += 1;
            let retry = [("Retry-After".into(), "5".into())];
            let busy = EndReason::RejectedBusy;
            return self.refuse_invite(now, key, &req, started, 503, &retry, busy, "busy");
        }
        let offer = if req.body().is_empty() {
            None
        } else {
            match sdp::parse(req.body()) {
                Ok(o) => Some(o),
                Err(e) => {
                    self.admission.call_ended(peer.remote.ip());
                    let warn = [("Warning".to_string(), format!("399 hotline \"{e}\""))];
                    let why = e.to_string();
                    let codec = EndReason::RejectedCodec;
                    return self.refuse_invite(now, key, &req, started, 488, &warn, codec, &why);
                }
            }
        };
        let codec = match &offer {
            Some(o) => match sdp::choose_codec(o, &self.cfg.codecs) {
                Ok(c) => Some(c),
                Err(_) => {
                    self.admission.call_ended(peer.remote.ip());
                    let warn = [(
                        "Warning".to_string(),
                        "305 hotline \"Incompatible media format\"".to_string(),
                    )];
                    let codec = EndReason::RejectedCodec;
                    let why = "no common codec";
                    return self.refuse_invite(now, key, &req, started, 488, &warn, codec, why);
                }
            },
            None => None,
        };
        let srtp = match &offer {
            Some(o) => {
                match sdp::sdes::plan_answer(
                    o.savp,
                    &o.crypto,
                    peer.link.secure(),
                    self.cfg.srtp_mode(),
                ) {
                    sdp::sdes::AnswerPlan::Plain => LegSrtp::default(),
                    sdp::sdes::AnswerPlan::Srtp { tag, remote } => match self.cfg.new_srtp_key() {
                        Some(key) => LegSrtp {
                            plan: sdp::sdes::OfferPlan::BestEffort,
                            local: Some(sdp::sdes::LocalCrypto {
                                tag,
                                key,
                                savp: o.savp,
                            }),
                            remote: Some(remote),
                        },
                        None => LegSrtp::default(),
                    },
                    sdp::sdes::AnswerPlan::Refuse(why) => {
                        self.admission.call_ended(peer.remote.ip());
                        let warn = [("Warning".to_string(), format!("399 hotline \"{why}\""))];
                        let codec = EndReason::RejectedCodec;
                        return self
                            .refuse_invite(now, key, &req, started, 488, &warn, codec, &why);
                    }
                }
            }
            None => LegSrtp {
                plan: sdp::sdes::plan_caller_offer(peer.link.secure(), self.cfg.srtp_mode()),
                ..LegSrtp::default()
            },
        };
        self.next_call += 1;
        self.active += 1;
        self.t.emit(started);
        tracing::info!(call, "call started");
        let local_tag = self.t.token(12);
        let dialog = Dialog {
            call,
            sip_call_id: req.common.call_id.clone(),
            local_header: format!(
                "{};tag={local_tag}",
                req.raw.header("to").unwrap_or_default()
            ),
            local_tag: local_tag.clone(),
            remote_tag: req.common.from.tag().unwrap_or_default().to_string(),
            remote_header: req.raw.header("from").unwrap_or_default().to_string(),
            remote_target: req
                .common
                .contact
                .as_ref()
                .map(|c| c.uri.clone())
                .unwrap_or_else(|| req.common.from.uri.clone()),
            route_set: req.common.record_route.clone(),
            local_cseq: u32::from(self.t.random_u32() as u16),
            remote_cseq: Some(req.common.cseq),
            peer,
            pin_peer: false,
            media: MediaState {
                remote: offer,
                codec,
                port: 0,
                origin: SdpOrigin {
                    session_id: u64::from(self.t.random_u32()),
                    version: 1,
                },
                signal_ip: peer.remote.ip(),
                trusted_source: self.cfg.admission.is_trusted(peer.remote.ip()),
                srtp,
            },
            reinvite: None,
        };
        self.dialogs.insert(dialog.key(), call);
        let answer_at = now + self.cfg.answer_delay;
        let c = InboundCall::new(dialog, key, req.raw.clone(), answer_at);
        self.calls.insert(call, Call::In(c));
        self.t.attach_call(key, call);
        if !self.cfg.answer_delay.is_zero() {
            self.t
                .respond(now, key, &req.raw, 180, None, Some(&local_tag), &[], None);
        }
        let timer = self
            .t
            .schedule(now + self.cfg.max_call_duration, TimerRef::CallMax(call));
        self.max_duration_timers.insert(call, timer);
        self.t.media(MediaCommand::Allocate {
            call,
            local_ip: peer.local.ip(),
        });
    }

    fn handle_ack(&mut self, now: Instant, key: &str, req: Request) {
        // ACK for a non-2xx final response: same transaction as the INVITE.
        if let Some(entry) = self.t.server.get_mut(key) {
            if entry.tx.last_code() >= 300 {
                entry.tx.on_ack(now);
                if let Some(at) = entry.tx.poll_timeout() {
                    self.t.schedule(at, TimerRef::Server(key.to_string()));
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
        let outcome = match self.calls.get_mut(&call) {
            Some(Call::In(c)) => c.on_ack(&mut self.t, &self.cfg, now, &req),
            Some(Call::Out(c)) => {
                c.on_ack(&mut self.t, now);
                Outcome::Continues
            }
            None => return,
        };
        self.settle(now, call, outcome);
    }

    fn handle_cancel(&mut self, now: Instant, peer: Peer, req: Request) {
        let cancel_key = server_key(&req);
        // The INVITE being cancelled has the same key but for the method.
        let invite_key = match cancel_key.strip_suffix("|CANCEL") {
            Some(base) => format!("{base}|INVITE"),
            None => cancel_key.clone(),
        };
        if let Some(e) = self.t.server.get(&cancel_key) {
            if let Some(resp) = e.tx.on_request_retransmission() {
                let p = e.peer;
                self.t.transmit(p, resp);
            }
            return;
        }
        let resp_peer = response_peer(peer, Some(req.top_via()));
        self.t
            .open_server(&cancel_key, resp_peer, peer.remote, false);
        let target = self
            .t
            .server
            .get(&invite_key)
            .map(|e| (e.call, e.tx.last_code()));
        match target {
            Some((call, last)) if last < 200 => {
                self.t
                    .respond(now, &cancel_key, &req.raw, 200, None, None, &[], None);
                if let Some(call) = call {
                    if let Some(Call::In(c)) = self.calls.get_mut(&call) {
                        let outcome = c.cancelled(&mut self.t, now);
                        self.settle(now, call, outcome);
                    }
                }
            }
            Some(_) => self
                .t
                .respond(now, &cancel_key, &req.raw, 200, None, None, &[], None),
            None => self
                .t
                .respond(now, &cancel_key, &req.raw, 481, None, None, &[], None),
        }
    }

    fn handle_in_dialog(&mut self, now: Instant, key: &str, call: CallId, req: Request) {
        let outcome = match self.calls.get_mut(&call) {
            Some(Call::In(c)) => c.handle_request(&mut self.t, &self.cfg, now, key, &req),
            Some(Call::Out(c)) => c.handle_request(&mut self.t, &self.cfg, now, key, &req),
            None => {
                return self
                    .t
                    .respond(now, key, &req.raw, 481, None, None, &[], None);
            }
        };
        self.settle(now, call, outcome);
    }

    // ---- responses (client side) ------------------------------------------------------

    fn handle_response(&mut self, now: Instant, resp: Response) {
        let Some(mut branch) = resp.common.vias[0].branch().map(str::to_string) else {
            self.stats.stray_responses += 1;
            return;
        };
        // A CANCEL shares its INVITE's branch; its transaction is keyed apart.
        if resp.common.cseq_method.eq_ignore_ascii_case("CANCEL") {
            branch.push_str(":cancel");
        }
        let Some(entry) = self.t.client.get(&branch) else {
            self.stats.stray_responses += 1;
            return;
        };
        let (purpose, peer) = (entry.purpose, entry.peer);
        let ack_uri = match purpose {
            ClientPurpose::Invite(call) => self
                .calls
                .get(&call)
                .map(|c| c.dialog().remote_target.clone()),
            _ => None,
        }
        .unwrap_or_else(|| format!("sip:{}", peer.remote));
        let Some(entry) = self.t.client.get_mut(&branch) else {
            return;
        };
        let make_ack = || build_non2xx_ack(&resp, &ack_uri);
        let (verdict, ack) = entry.tx.on_response(now, resp.code, make_ack);
        let at = entry.tx.poll_timeout();
        if let Some(ack) = ack {
            self.t.transmit(peer, ack);
        }
        if let Some(at) = at {
            self.t.schedule(at, TimerRef::Client(branch.clone()));
        }
        if verdict == ClientVerdict::Absorb {
            return;
        }
        match purpose {
            ClientPurpose::Bye(call) => {
                if resp.code >= 200 {
                    self.finish_call(now, call);
                }
            }
            ClientPurpose::Invite(call) => {
                let outcome = match self.calls.get_mut(&call) {
                    Some(Call::Out(c)) => c.on_invite_response(&mut self.t, &self.cfg, now, &resp),
                    _ => return,
                };
                self.settle(now, call, outcome);
            }
            ClientPurpose::External(_) if resp.code < 200 => {}
            ClientPurpose::Info | ClientPurpose::Cancel => {}
            ClientPurpose::External(tag) => {
                let reason = match &resp.raw.start {
                    StartLine::Response { reason, .. } => reason.clone(),
                    StartLine::Request { .. } => String::new(),
                };
                self.t.output(Output::Client(ClientResult::Response {
                    tag,
                    code: resp.code,
                    reason,
                    headers: resp.raw.headers,
                }));
            }
        }
    }

    /// Sends a request outside any dialog (a trunk's REGISTER or OPTIONS) through a
    /// client transaction of its own; its final response or its timeout comes back as
    /// `Output::Client` with `tag`. `bytes` is the whole request, whose top Via carries
    /// `branch`.
    pub fn send_client_request(
        &mut self,
        now: Instant,
        peer: Peer,
        branch: String,
        bytes: Vec<u8>,
        tag: u64,
    ) {
        self.t.send_request(
            now,
            peer,
            false,
            bytes,
            branch,
            ClientPurpose::External(tag),
        );
    }

    // ---- call life cycle ----------------------------------------------------------------

    /// Carries out what a call's state machine decided.
    fn settle(&mut self, now: Instant, call: CallId, outcome: Outcome) {
        match outcome {
            Outcome::Continues => {}
            Outcome::Ended(reason) => self.end_call(now, call, reason),
            Outcome::ByeSent => self.active = self.active.saturating_sub(1),
        }
    }

    /// Ends a call whose dialog is over from the peer's side or never got set up.
    fn end_call(&mut self, now: Instant, call: CallId, reason: EndReason) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if !c.is_terminating() {
            self.active = self.active.saturating_sub(1);
        }
        c.set_end_reason(reason);
        self.t.media(MediaCommand::Stop { call });
        self.finish_call(now, call);
    }

    fn finish_call(&mut self, now: Instant, call: CallId) {
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        let dialog = c.dialog();
        self.dialogs.remove(&dialog.key());
        if let Some(timer) = self.max_duration_timers.remove(&call) {
            self.t.cancel(timer);
        }
        release_spare(&mut self.calls);
        release_spare(&mut self.dialogs);
        release_spare(&mut self.max_duration_timers);
        let reason = c.end_reason().unwrap_or(EndReason::Error);
        tracing::info!(call, reason = %reason.as_str(), "call ended");
        if matches!(c, Call::In(_)) {
            self.admission.call_ended(dialog.peer.remote.ip());
        }
        let at = self.t.wall(now);
        self.t.emit(CallEvent::Ended { call, reason, at });
    }

    /// The media layer reserved `port` for `call`.
    pub fn media_allocated(&mut self, now: Instant, call: CallId, port: u16) {
        let outcome = match self.calls.get_mut(&call) {
            Some(Call::In(c)) => c.media_allocated(&mut self.t, &self.cfg, now, port),
            Some(Call::Out(c)) => c.media_allocated(&mut self.t, &self.cfg, now, port),
            None => {
                // The call ended meanwhile; the media layer frees the port on Stop.
                return self.t.media(MediaCommand::Stop { call });
            }
        };
        self.settle(now, call, outcome);
    }

    /// No RTP port could be had: the call is refused or abandoned.
    pub fn media_failed(&mut self, now: Instant, call: CallId) {
        let outcome = match self.calls.get_mut(&call) {
            Some(Call::In(c)) => c.media_failed(&mut self.t, now),
            Some(Call::Out(c)) => c.media_failed(),
            None => return,
        };
        let outcome = match outcome {
            Outcome::Ended(_) => Outcome::Ended(EndReason::Error),
            other => other,
        };
        self.settle(now, call, outcome);
    }

    /// Ends a call from our side: BYE if established, CANCEL or a final error response
    /// if not.
    pub fn hangup(&mut self, now: Instant, call: CallId, reason: EndReason) {
        let outcome = match self.calls.get_mut(&call) {
            Some(Call::In(c)) => c.hangup(&mut self.t, now, reason),
            Some(Call::Out(c)) => c.hangup(&mut self.t, now, reason),
            None => return,
        };
        self.settle(now, call, outcome);
    }

    /// New calls are refused with 503 from now on (a drain before shutdown); calls in
    /// progress and operators' registrations go on.
    pub fn stop_admitting(&mut self) {
        self.refusing_new_calls = true;
    }

    /// While `overloaded`, new calls get 503 with Retry-After before any media is
    /// allocated; calls in progress go on. The shell passes the media clock's verdict.
    pub fn set_overloaded(&mut self, overloaded: bool) {
        self.overloaded = overloaded;
    }

    /// Ends every call (server shutdown).
    pub fn hangup_all(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            self.hangup(now, id, EndReason::Shutdown);
        }
    }

    /// Timers due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = self.registrar.as_mut() {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
            operators::drain_events(r, &mut self.t);
        }
        while let Some(what) = self.t.next_due(now) {
            match what {
                TimerRef::Server(key) => self.server_timer(now, key),
                TimerRef::Client(branch) => self.client_timer(now, branch),
                TimerRef::CallAnswer(call) => {
                    if let Some(Call::In(c)) = self.calls.get_mut(&call) {
                        c.answer(&mut self.t, &self.cfg, now);
                    }
                }
                TimerRef::CallMax(call) => self.hangup(now, call, EndReason::MaxDuration),
            }
        }
    }

    fn server_timer(&mut self, now: Instant, key: String) {
        let Some(entry) = self.t.server.get_mut(&key) else {
            return;
        };
        match entry.tx.poll_timeout() {
            Some(at) if at <= now => {}
            _ => return, // Stale heap entry: the transaction rescheduled.
        }
        let out = entry.tx.handle_timeout(now);
        let (peer, call, invite) = (entry.peer, entry.call, entry.invite);
        let next = entry.tx.poll_timeout();
        let done = entry.tx.is_terminated();
        if let Some(data) = out.retransmit {
            self.t.transmit(peer, data);
        }
        if let Some(at) = next {
            self.t.schedule(at, TimerRef::Server(key.clone()));
        }
        if let (Some(TxEvent::AckTimeout { was_2xx: true }), Some(call), true) =
            (out.event, call, invite)
        {
            tracing::info!(call, "no ACK for our 200 OK within 64*T1");
            self.hangup(now, call, EndReason::NoAck);
        }
        if done {
            self.t.server.remove(&key);
        }
    }

    fn client_timer(&mut self, now: Instant, branch: String) {
        let Some(entry) = self.t.client.get_mut(&branch) else {
            return;
        };
        match entry.tx.poll_timeout() {
            Some(at) if at <= now => {}
            _ => return,
        }
        let out = entry.tx.handle_timeout(now);
        let (peer, purpose) = (entry.peer, entry.purpose);
        let next = entry.tx.poll_timeout();
        let done = entry.tx.is_terminated();
        if let Some(data) = out.retransmit {
            self.t.transmit(peer, data);
        }
        if let Some(at) = next {
            self.t.schedule(at, TimerRef::Client(branch.clone()));
        }
        if out.event == Some(TxEvent::Timeout) {
            match purpose {
                ClientPurpose::Bye(call) => self.finish_call(now, call),
                ClientPurpose::Info | ClientPurpose::Cancel => {}
                ClientPurpose::Invite(call) => self.end_call(now, call, EndReason::Timeout),
                ClientPurpose::External(tag) => {
                    self.t.output(Output::Client(ClientResult::Timeout { tag }))
                }
            }
        }
        if done {
            self.t.client.remove(&branch);
        }
    }

    /// Sends a DTMF digit as SIP INFO (application/dtmf-relay) inside the call's dialog.
    pub fn send_info_digit(&mut self, now: Instant, call: CallId, digit: char, duration_ms: u32) {
        let dialog = match self.calls.get_mut(&call) {
            Some(Call::In(c)) if c.state == super::inbound::InboundState::Confirmed => {
                &mut c.dialog
            }
            Some(Call::Out(c)) if c.is_confirmed() => &mut c.dialog,
            _ => return,
        };
        let cseq = dialog.next_cseq();
        let branch = self.t.branch();
        let body = format!("Signal={digit}\r\nDuration={duration_ms}\r\n");
        let info = dialog.request(
            "INFO",
            cseq,
            &branch,
            &[],
            Some(("application/dtmf-relay", body.as_bytes())),
        );
        let peer = dialog.target_peer();
        self.t
            .send_request(now, peer, false, info, branch, ClientPurpose::Info);
    }

    // ---- outbound calls ---------------------------------------------------------------

    /// Places a call to `target` (a SIP URI naming an IP address) from `peer.local`.
    /// The RTP port is allocated first (`MediaCommand::Allocate`); the INVITE leaves
    /// once `media_allocated` reports it. Progress arrives as events.
    pub fn place_call(
        &mut self,
        now: Instant,
        peer: Peer,
        target: &str,
        from_user: &str,
    ) -> CallId {
        let plain = sdp::sdes::OfferPlan::Plain;
        self.place_call_to(now, peer, target, None, from_user, Vec::new(), None, plain)
    }

    /// Rings an operator's phone: `peer` is where its registration came from, which is
    /// where the INVITE and every later request of the dialog go. `display` is shown
    /// by the phone; `extra` headers ride on the INVITE.
    #[allow(clippy::too_many_arguments)]
    pub fn offer_call(
        &mut self,
        now: Instant,
        operator: &str,
        peer: Peer,
        contact: &str,
        display: &str,
        from_user: &str,
        extra: Vec<(String, String)>,
    ) -> CallId {
        // Stored as `operator:<user>`: the phone's address says where an operator is.
        let label = format!("operator:{operator}");
        let srtp = sdp::sdes::plan_operator_offer(peer.link.secure(), self.cfg.srtp_mode());
        let call = self.place_call_to(
            now,
            peer,
            contact,
            Some(display),
            from_user,
            extra,
            Some(&label),
            srtp,
        );
        if let Some(Call::Out(c)) = self.calls.get_mut(&call) {
            c.dialog.pin_peer = true;
        }
        call
    }

    #[allow(clippy::too_many_arguments)]
    fn place_call_to(
        &mut self,
        now: Instant,
        peer: Peer,
        target: &str,
        display: Option<&str>,
        from_user: &str,
        extra: Vec<(String, String)>,
        shown_to: Option<&str>,
        srtp: sdp::sdes::OfferPlan,
    ) -> CallId {
        let call = self.next_call;
        self.next_call += 1;
        self.active += 1;
        let ip = super::dialog::local_ip(&self.cfg, peer);
        let host = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let local_tag = self.t.token(12);
        let sip_call_id = format!("{}@{host}", self.t.token(20));
        let display = display
            .map(|d| format!("\"{}\" ", operators::quote_display(d)))
            .unwrap_or_default();
        let dialog = Dialog {
            call,
            sip_call_id: sip_call_id.clone(),
            local_header: format!("{display}<sip:{from_user}@{host}>;tag={local_tag}"),
            local_tag,
            remote_tag: String::new(),
            remote_header: format!("<{target}>"),
            remote_target: target.to_string(),
            route_set: Vec::new(),
            local_cseq: 1,
            remote_cseq: None,
            peer,
            pin_peer: false,
            media: MediaState {
                remote: None,
                codec: None,
                port: 0,
                origin: SdpOrigin {
                    session_id: u64::from(self.t.random_u32()),
                    version: 1,
                },
                signal_ip: peer.remote.ip(),
                trusted_source: self.cfg.admission.is_trusted(peer.remote.ip()),
                srtp: LegSrtp {
                    plan: srtp,
                    ..LegSrtp::default()
                },
            },
            reinvite: None,
        };
        let at = self.t.wall(now);
        self.t.emit(CallEvent::Started {
            call,
            sip_call_id,
            from: Some(from_user.to_string()),
            to: shown_to.unwrap_or(target).to_string(),
            remote: peer.remote,
            transport: peer.link.via_transport(),
            direction: Direction::Outbound,
            at,
        });
        // The dialog is known by our tag from the start: the peer's requests inside
        // it (BYE after answering) carry it.
        self.dialogs.insert(dialog.key(), call);
        self.calls
            .insert(call, Call::Out(OutboundCall::new(dialog, extra)));
        self.t.media(MediaCommand::Allocate {
            call,
            local_ip: peer.local.ip(),
        });
        call
    }
}

/// ACK for a non-2xx final response (RFC 3261 §17.1.1.3): same branch and Request-URI
/// as the INVITE, To from the response.
fn build_non2xx_ack(resp: &Response, request_uri: &str) -> Vec<u8> {
    use std::fmt::Write as _;
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
    message::finish_message(&mut bytes, None);
    bytes
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "srtp_tests.rs"]
mod srtp_tests;
