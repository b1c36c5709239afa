//! Outbound registration with one provider, as a sans-IO client state machine (RFC
//! 3261 §10.2, RFC 5626 §4.4-4.5 keep-alives and back-off): resolve the registrar,
//! open a flow to it, REGISTER, answer 401/407 with digest credentials, refresh before
//! expiry, learn our public contact from `received`/`rport`, keep the flow alive
//! (OPTIONS on UDP, CRLF on TCP), fail over to the next DNS target when one stops
//! answering, back off with jitter after failures, and unregister on shutdown.
//!
//! Inputs are the shell's answers (`on_resolved`, `on_connected`, `on_link_lost`) and
//! the endpoint's (`on_result`), each with `now`; outputs are `Action`s. Time and
//! randomness come in from outside: the generator is seeded by the owner.

use super::auth::{self, Challenge};
use crate::call::Peer;
use crate::config::{SipTarget, SipTransport};
use crate::sip::client::ClientResult;
use crate::sip::headers;
use crate::sip::raw::{self, RawHeader};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// One address to try, as RFC 3263 resolution yields them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: SipTransport,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport.as_str(), self.addr)
    }
}

/// What the owner must carry out for the registration.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// RFC 3263 look-up of `host`; answer with `on_resolved`.
    Resolve {
        host: String,
        port: Option<u16>,
        transport: Option<SipTransport>,
    },
    /// Open a flow (a UDP socket's path, or a connection); answer with `on_connected`
    /// or `on_connect_failed`.
    Connect { target: Target },
    /// A request through the endpoint's client transactions (`send_client_request`).
    Send {
        peer: Peer,
        branch: String,
        bytes: Vec<u8>,
        tag: u64,
    },
    /// Bytes outside any transaction (the CRLF keep-alive).
    Transmit { peer: Peer, data: Vec<u8> },
    /// Close a connection we opened.
    Close { conn: u64 },
}

#[derive(Debug, Clone)]
pub struct RegistrationSetup {
    pub name: String,
    pub registrar: SipTarget,
    pub outbound_proxy: Option<SipTarget>,
    pub username: String,
    pub password: String,
    pub expires_s: u32,
    /// `sip.public_address`, used in Contact until the registrar tells us better.
    pub public_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// No retry after a failure comes sooner than this (a wrong password must not
    /// hammer the provider).
    pub min_retry: Duration,
    pub max_retry: Duration,
    /// OPTIONS on UDP flows (NAT bindings), CRLF on connections (RFC 5626 §4.4.1);
    /// each sent at 80-100 % of the interval.
    pub udp_keepalive: Duration,
    pub stream_keepalive: Duration,
    /// A connection lost while registered is re-opened after this (plus up to as much
    /// again of jitter), before the back-off applies.
    pub relink_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            min_retry: Duration::from_secs(30),
            max_retry: Duration::from_secs(1800),
            udp_keepalive: Duration::from_secs(30),
            stream_keepalive: Duration::from_secs(120),
            relink_delay: Duration::from_secs(1),
        }
    }
}

/// The wait before attempt `failures + 1`: doubling from `min_retry` up to
/// `max_retry`, drawn from the upper half (RFC 5626 §4.5), never below `min_retry`.
pub fn backoff(timing: &Timing, failures: u32, rng: &mut impl Rng) -> Duration {
    let doubling = 1u32 << failures.saturating_sub(1).min(16);
    let upper = timing
        .min_retry
        .saturating_mul(doubling)
        .min(timing.max_retry);
    let lower = (upper / 2).max(timing.min_retry);
    if upper <= lower {
        return lower;
    }
    let span = (upper - lower).as_millis() as u64;
    lower + Duration::from_millis(rng.gen_range(0..=span))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register,
    Unregister,
    Keepalive,
}

#[derive(Debug, Clone)]
struct Inflight {
    tag: u64,
    kind: Kind,
    /// The challenge this request answered, if any.
    answered: Option<Challenge>,
    /// Whether that challenge came in the answer to the request before (not cached
    /// from an earlier exchange, whose nonce the registrar may have forgotten).
    fresh: bool,
    /// Challenges answered in this attempt (a registrar that challenges forever is a
    /// failure).
    rounds: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Resolving,
    Connecting,
    Registering,
    Registered,
    /// Waiting to start again: after a failure (`refused`: the registrar said no), or
    /// to re-open a lost connection.
    Waiting {
        until: Instant,
        refused: bool,
    },
    Unregistering,
    Stopped,
}

/// What `hotline trunks` shows of one registration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegistrationStatus {
    pub name: String,
    /// `registered`, `registering`, `resolving`, `connecting`, `failed: 403 Forbidden`,
    /// `retrying in 47 s`, `unregistering`, `stopped`.
    pub state: String,
    /// The registrar address in use (or last tried), as `transport:addr:port`.
    pub registrar: Option<String>,
    pub expires_in_s: Option<u64>,
    pub retry_in_s: Option<u64>,
    pub last_error: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
}

pub struct Registration {
    setup: RegistrationSetup,
    timing: Timing,
    rng: StdRng,
    /// High half of every tag this registration uses.
    id: u32,
    next_tag: u32,
    phase: Phase,
    targets: Vec<Target>,
    current: usize,
    peer: Option<Peer>,
    call_id: String,
    from_tag: String,
    cseq: u32,
    challenge: Option<Challenge>,
    /// `challenge` arrived in the last answer and has not been used yet.
    challenge_fresh: bool,
    nc: u32,
    inflight: Option<Inflight>,
    /// Our address as the registrar sees it (`received`/`rport`).
    learned: Option<SocketAddr>,
    expires: u32,
    registered_until: Option<Instant>,
    refresh_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
    actions: VecDeque<Action>,
}

/// Most challenges answered within one attempt.
const MAX_AUTH_ROUNDS: u8 = 2;
/// Longest lifetime accepted from a 423's Min-Expires.
const MAX_MIN_EXPIRES: u32 = 3600;

impl Registration {
    pub fn new(id: u32, setup: RegistrationSetup, timing: Timing, mut rng: StdRng) -> Self {
        let call_id = format!("{}@hotline", token(&mut rng, 24));
        let from_tag = token(&mut rng, 12);
        let expires = setup.expires_s;
        Registration {
            setup,
            timing,
            rng,
            id,
            next_tag: 0,
            phase: Phase::Idle,
            targets: Vec::new(),
            current: 0,
            peer: None,
            call_id,
            from_tag,
            cseq: 0,
            challenge: None,
            challenge_fresh: false,
            nc: 0,
            inflight: None,
            learned: None,
            expires,
            registered_until: None,
            refresh_at: None,
            keepalive_at: None,
            failures: 0,
            last_error: None,
            actions: VecDeque::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.setup.name
    }

    /// Whether `tag` belongs to this registration.
    pub fn owns_tag(&self, tag: u64) -> bool {
        (tag >> 32) as u32 == self.id
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn is_registered(&self) -> bool {
        self.phase == Phase::Registered
    }

    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    pub fn start(&mut self) {
        if self.phase == Phase::Idle {
            self.begin();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { until, .. } => Some(until),
            Phase::Registered => [self.refresh_at, self.keepalive_at]
                .into_iter()
                .flatten()
                .min(),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting { until, .. } if until <= now => self.begin(),
            Phase::Registered => {
                if self.refresh_at.is_some_and(|t| t <= now) {
                    self.refresh_at = None;
                    self.register(self.expires, 0);
                } else if self.keepalive_at.is_some_and(|t| t <= now) {
                    self.keepalive(now);
                }
            }
            _ => {}
        }
    }

    /// Starts over: resolve (unless the host is an address), then connect and register.
    fn begin(&mut self) {
        self.inflight = None;
        let host = self
            .setup
            .outbound_proxy
            .clone()
            .unwrap_or_else(|| self.setup.registrar.clone());
        match host.ip() {
            Some(ip) => {
                let transport = host.transport.unwrap_or(SipTransport::Udp);
                let port = host.port.unwrap_or(transport.default_port());
                self.targets = vec![Target {
                    addr: SocketAddr::new(ip, port),
                    transport,
                }];
                self.current = 0;
                self.connect_current();
            }
            None => {
                self.phase = Phase::Resolving;
                self.actions.push_back(Action::Resolve {
                    host: host.host,
                    port: host.port,
                    transport: host.transport,
                });
            }
        }
    }

    pub fn on_resolved(&mut self, now: Instant, result: Result<Vec<Target>, String>) {
        if self.phase != Phase::Resolving {
            return;
        }
        match result {
            Ok(targets) if !targets.is_empty() => {
                self.targets = targets;
                self.current = 0;
                self.connect_current();
            }
            Ok(_) => self.fail(now, false, "DNS: no address for the registrar".into()),
            Err(e) => self.fail(now, false, format!("DNS: {e}")),
        }
    }

    fn connect_current(&mut self) {
        self.phase = Phase::Connecting;
        let target = self.targets[self.current];
        self.actions.push_back(Action::Connect { target });
    }

    pub fn on_connected(&mut self, target: Target, peer: Peer) {
        if self.phase != Phase::Connecting || self.targets.get(self.current) != Some(&target) {
            // A connection nobody waits for any more.
            if let Some(conn) = peer.link.connection() {
                self.actions.push_back(Action::Close { conn });
            }
            return;
        }
        self.peer = Some(peer);
        self.register(self.expires, 0);
    }

    pub fn on_connect_failed(&mut self, now: Instant, target: Target, why: String) {
        if self.phase != Phase::Connecting || self.targets.get(self.current) != Some(&target) {
            return;
        }
        tracing::info!(trunk = %self.setup.name, %target, "cannot reach the registrar: {why}");
        self.next_target_or_fail(now, format!("{target}: {why}"));
    }

    /// A connection closed. Ours: when registered, re-open it soon (the registration
    /// was bound to it); during an attempt it is that attempt's failure.
    pub fn on_link_lost(&mut self, now: Instant, conn: u64) {
        let ours = self.peer.is_some_and(|p| p.link.connection() == Some(conn));
        if !ours {
            return;
        }
        self.peer = None;
        self.inflight = None;
        match self.phase {
            Phase::Registered => {
                tracing::info!(trunk = %self.setup.name, "connection to the registrar lost: registering again");
                self.registered_until = None;
                let jitter = self
                    .rng
                    .gen_range(0..=self.timing.relink_delay.as_millis() as u64);
                self.phase = Phase::Waiting {
                    until: now + self.timing.relink_delay + Duration::from_millis(jitter),
                    refused: false,
                };
            }
            Phase::Registering | Phase::Connecting => {
                self.fail(now, false, "connection to the registrar lost".into())
            }
            Phase::Unregistering => self.phase = Phase::Stopped,
            _ => {}
        }
    }

    /// Clean shutdown: unregister if registered. Returns whether a request is in flight
    /// (the owner waits for `is_stopped` a little while).
    pub fn shutdown(&mut self) -> bool {
        match (self.phase, self.peer) {
            (Phase::Registered, Some(_)) => {
                self.register(0, 0);
                true
            }
            _ => {
                self.close_link();
                self.phase = Phase::Stopped;
                false
            }
        }
    }

    fn next_target_or_fail(&mut self, now: Instant, why: String) {
        self.close_link();
        self.registered_until = None;
        if self.current + 1 < self.targets.len() {
            self.current += 1;
            tracing::info!(trunk = %self.setup.name, target = %self.targets[self.current], "trying the next registrar address");
            self.connect_current();
        } else {
            self.fail(now, false, why);
        }
    }

    fn fail(&mut self, now: Instant, refused: bool, why: String) {
        self.close_link();
        self.inflight = None;
        self.registered_until = None;
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(&self.timing, self.failures, &mut self.rng);
        tracing::warn!(
            trunk = %self.setup.name,
            failures = self.failures,
            retry_in_s = wait.as_secs(),
            "registration failed: {why}"
        );
        self.last_error = Some(why);
        self.phase = Phase::Waiting {
            until: now + wait,
            refused,
        };
    }

    fn close_link(&mut self) {
        if let Some(conn) = self.peer.take().and_then(|p| p.link.connection()) {
            self.actions.push_back(Action::Close { conn });
        }
    }

    fn new_tag(&mut self) -> u64 {
        self.next_tag = self.next_tag.wrapping_add(1);
        (u64::from(self.id) << 32) | u64::from(self.next_tag)
    }

    fn transport(&self) -> SipTransport {
        self.targets
            .get(self.current)
            .map_or(SipTransport::Udp, |t| t.transport)
    }

    /// Our contact address: learned from the registrar, else the public address, else
    /// the flow's local address.
    fn contact_addr(&self, peer: Peer) -> SocketAddr {
        self.learned.unwrap_or_else(|| match self.setup.public_ip {
            Some(ip) => SocketAddr::new(ip, peer.local.port()),
            None => peer.local,
        })
    }

    fn contact_uri(&self, peer: Peer) -> String {
        let addr = self.contact_addr(peer);
        let transport = match self.transport() {
            SipTransport::Udp => "",
            SipTransport::Tcp => ";transport=tcp",
            SipTransport::Tls => ";transport=tls",
        };
        format!("sip:{}@{}{transport}", self.setup.username, host_port(addr))
    }

    fn aor(&self) -> String {
        format!(
            "sip:{}@{}",
            self.setup.username,
            self.setup.registrar.uri_host()
        )
    }

    fn request_uri(&self) -> String {
        let r = &self.setup.registrar;
        match r.port {
            Some(p) => format!("sip:{}:{p}", r.uri_host()),
            None => format!("sip:{}", r.uri_host()),
        }
    }

    /// Head of a request: request line, Via, Route, Max-Forwards, From, Call-ID.
    fn head(&mut self, method: &str, uri: &str, peer: Peer, branch: &str) -> String {
        let mut out = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\n",
            self.transport().as_str().to_ascii_uppercase(),
            host_port(peer.local),
        );
        if let Some(proxy) = &self.setup.outbound_proxy {
            let port = proxy.port.map(|p| format!(":{p}")).unwrap_or_default();
            out.push_str(&format!("Route: <sip:{}{port};lr>\r\n", proxy.uri_host()));
        }
        out.push_str("Max-Forwards: 70\r\nUser-Agent: hotline\r\n");
        out
    }

    fn register(&mut self, expires: u32, rounds: u8) {
        let Some(peer) = self.peer else {
            return self.begin();
        };
        let branch = format!("z9hG4bK{}", token(&mut self.rng, 16));
        let uri = self.request_uri();
        self.cseq += 1;
        let mut msg = self.head("REGISTER", &uri, peer, &branch);
        let aor = self.aor();
        msg.push_str(&format!(
            "From: <{aor}>;tag={}\r\nTo: <{aor}>\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\n",
            self.from_tag, self.call_id, self.cseq
        ));
        msg.push_str(&format!(
            "Contact: <{}>\r\nExpires: {expires}\r\nAllow: {}\r\n",
            self.contact_uri(peer),
            crate::sip::message::ALLOW
        ));
        let answered = self.challenge.clone();
        let fresh = std::mem::take(&mut self.challenge_fresh);
        if let Some(ch) = &answered {
            self.nc += 1;
            let cnonce = token(&mut self.rng, 16);
            let (name, value) = auth::authorization(
                ch,
                &self.setup.username,
                &self.setup.password,
                "REGISTER",
                &uri,
                self.nc,
                &cnonce,
            );
            msg.push_str(&format!("{name}: {value}\r\n"));
        }
        msg.push_str("Content-Length: 0\r\n\r\n");
        let tag = self.new_tag();
        let kind = if expires == 0 {
            Kind::Unregister
        } else {
            Kind::Register
        };
        self.inflight = Some(Inflight {
            tag,
            kind,
            answered,
            fresh,
            rounds,
        });
        self.phase = if kind == Kind::Unregister {
            Phase::Unregistering
        } else if self.phase == Phase::Registered {
            // A refresh: still registered until the answer or the expiry.
            Phase::Registered
        } else {
            Phase::Registering
        };
        self.actions.push_back(Action::Send {
            peer,
            branch,
            bytes: msg.into_bytes(),
            tag,
        });
    }

    fn keepalive(&mut self, now: Instant) {
        let Some(peer) = self.peer else { return };
        self.keepalive_at = Some(now + self.keepalive_interval());
        if self.transport().reliable() {
            self.actions.push_back(Action::Transmit {
                peer,
                data: b"\r\n\r\n".to_vec(),
            });
            return;
        }
        if self.inflight.is_some() {
            return; // A REGISTER in flight keeps the binding alive too.
        }
        let branch = format!("z9hG4bK{}", token(&mut self.rng, 16));
        let uri = self.request_uri();
        let mut msg = self.head("OPTIONS", &uri, peer, &branch);
        let call_id = format!("{}@hotline", token(&mut self.rng, 24));
        msg.push_str(&format!(
            "From: <{}>;tag={}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            self.aor(),
            token(&mut self.rng, 12),
        ));
        let tag = self.new_tag();
        self.inflight = Some(Inflight {
            tag,
            kind: Kind::Keepalive,
            answered: None,
            fresh: false,
            rounds: 0,
        });
        self.actions.push_back(Action::Send {
            peer,
            branch,
            bytes: msg.into_bytes(),
            tag,
        });
    }

    fn keepalive_interval(&mut self) -> Duration {
        let full = if self.transport().reliable() {
            self.timing.stream_keepalive
        } else {
            self.timing.udp_keepalive
        };
        let ms = full.as_millis() as u64;
        Duration::from_millis(self.rng.gen_range(ms * 4 / 5..=ms.max(1)))
    }

    /// The endpoint's answer to one of our requests.
    pub fn on_result(&mut self, now: Instant, result: ClientResult) {
        let Some(inflight) = self.inflight.take_if(|i| i.tag == result.tag()) else {
            return;
        };
        let (code, reason, headers) = match result {
            ClientResult::Timeout { .. } => {
                return match inflight.kind {
                    Kind::Unregister => self.phase = Phase::Stopped,
                    _ => {
                        let target = self.targets.get(self.current).copied();
                        let why = match target {
                            Some(t) => format!("{t}: no answer"),
                            None => "no answer".into(),
                        };
                        tracing::info!(trunk = %self.setup.name, "registrar does not answer");
                        self.next_target_or_fail(now, why)
                    }
                };
            }
            ClientResult::Response {
                code,
                reason,
                headers,
                ..
            } => (code, reason, headers),
        };
        if inflight.kind == Kind::Keepalive {
            // Any answer shows the flow works.
            return;
        }
        let learned = via_received(&headers);
        match code {
            200..=299 => self.on_success(now, inflight, &headers, learned),
            401 | 407 => self.on_challenge(now, inflight, code, &reason, &headers),
            423 if inflight.kind == Kind::Register && inflight.rounds < MAX_AUTH_ROUNDS => {
                let min =
                    header(&headers, "min-expires").and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(m) if m > self.expires && m <= MAX_MIN_EXPIRES => {
                        self.expires = m;
                        self.register(m, inflight.rounds + 1);
                    }
                    _ => self.fail(now, true, format!("{code} {reason}")),
                }
            }
            _ if inflight.kind == Kind::Unregister => self.phase = Phase::Stopped,
            // The registrar's side is broken or overloaded: another may not be.
            500..=599 => self.next_target_or_fail(now, format!("{code} {reason}")),
            _ => self.fail(now, true, format!("{code} {reason}")),
        }
    }

    fn on_success(
        &mut self,
        now: Instant,
        inflight: Inflight,
        headers: &[RawHeader],
        learned: Option<SocketAddr>,
    ) {
        if inflight.kind == Kind::Unregister {
            tracing::info!(trunk = %self.setup.name, "unregistered");
            self.close_link();
            self.phase = Phase::Stopped;
            return;
        }
        let Some(peer) = self.peer else { return };
        let ours = self.contact_uri(peer);
        if let Some(addr) =
            learned.filter(|a| Some(*a) != self.learned && *a != self.contact_addr(peer))
        {
            // Behind NAT: register the address the registrar sees (once per change).
            tracing::info!(trunk = %self.setup.name, "registrar sees another address: registering it as the contact");
            self.learned = Some(addr);
            return self.register(self.expires, inflight.rounds);
        }
        let granted = granted_expires(headers, &ours).unwrap_or(self.expires);
        if granted == 0 {
            return self.fail(now, true, "registrar granted no lifetime".into());
        }
        let lifetime = Duration::from_secs(u64::from(granted));
        let was = self.phase;
        self.phase = Phase::Registered;
        self.failures = 0;
        self.last_error = None;
        self.registered_until = Some(now + lifetime);
        // Refresh with a margin that covers a retransmitting transaction (32 s) on
        // long lifetimes and a quarter of short ones.
        let margin = (lifetime / 4)
            .max(Duration::from_secs(32))
            .min(lifetime / 2);
        self.refresh_at = Some(now + lifetime - margin);
        if self.keepalive_at.is_none() || was != Phase::Registered {
            let k = self.keepalive_interval();
            self.keepalive_at = Some(now + k);
        }
        if was != Phase::Registered {
            let target = self.targets.get(self.current).map(|t| t.to_string());
            tracing::info!(trunk = %self.setup.name, registrar = ?target, expires_s = granted, "registered");
        }
    }

    fn on_challenge(
        &mut self,
        now: Instant,
        inflight: Inflight,
        code: u16,
        reason: &str,
        headers: &[RawHeader],
    ) {
        let (name, proxy) = if code == 407 {
            ("proxy-authenticate", true)
        } else {
            ("www-authenticate", false)
        };
        let offered = headers
            .iter()
            .filter(|h| h.name == name)
            .filter_map(|h| auth::parse_challenge(&h.value, proxy));
        let Some(ch) = auth::preferred(offered) else {
            return self.fail(
                now,
                true,
                format!("{code} {reason} (no digest challenge we can answer)"),
            );
        };
        // Credentials computed on the nonce the registrar had just sent, answered with
        // a new challenge that is not "stale": the password (or user) is wrong, and
        // trying again at once would only hammer. (A cached nonce may simply be
        // unknown to a registrar that restarted: that gets one fresh answer.)
        let refused = inflight.fresh
            && inflight
                .answered
                .as_ref()
                .is_some_and(|prev| prev.realm == ch.realm && prev.proxy == ch.proxy && !ch.stale);
        if refused || inflight.rounds >= MAX_AUTH_ROUNDS {
            // The next attempt starts without credentials: one password guess each.
            self.challenge = None;
            self.nc = 0;
            let why = format!("{code} {reason} (credentials refused)");
            return match inflight.kind {
                Kind::Unregister => self.phase = Phase::Stopped,
                _ => self.fail(now, true, why),
            };
        }
        self.challenge = Some(ch);
        self.challenge_fresh = true;
        self.nc = 0;
        let expires = if inflight.kind == Kind::Unregister {
            0
        } else {
            self.expires
        };
        self.register(expires, inflight.rounds + 1);
    }

    pub fn status(&self, now: Instant) -> RegistrationStatus {
        let secs_until = |t: Instant| t.saturating_duration_since(now).as_secs();
        let (state, retry_in_s) = match self.phase {
            Phase::Idle => ("starting".to_string(), None),
            Phase::Resolving => ("resolving".into(), None),
            Phase::Connecting => ("connecting".into(), None),
            Phase::Registering => ("registering".into(), None),
            Phase::Registered => ("registered".into(), None),
            Phase::Waiting { until, refused } => {
                let s = secs_until(until);
                match (&self.last_error, refused) {
                    (Some(e), true) => (format!("failed: {e}"), Some(s)),
                    _ => (format!("retrying in {s} s"), Some(s)),
                }
            }
            Phase::Unregistering => ("unregistering".into(), None),
            Phase::Stopped => ("stopped".into(), None),
        };
        RegistrationStatus {
            name: self.setup.name.clone(),
            state,
            registrar: self.targets.get(self.current).map(|t| t.to_string()),
            expires_in_s: self.registered_until.map(secs_until),
            retry_in_s,
            last_error: self.last_error.clone(),
            failures: self.failures,
        }
    }
}

fn host_port(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V6(ip) => format!("[{ip}]:{}", a.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", a.port()),
    }
}

fn token(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn header<'a>(headers: &'a [RawHeader], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}

/// `received` and `rport` of the top Via of a response: our address as the registrar
/// saw it.
fn via_received(headers: &[RawHeader]) -> Option<SocketAddr> {
    let top = raw::split_comma_values(header(headers, "via")?)
        .first()
        .and_then(|v| headers::parse_via(v).ok())?;
    let value = |name: &str| headers::find_param(&top.params, name).and_then(|p| p.value.clone());
    let (received, rport) = (value("received"), value("rport"));
    if received.is_none() && rport.is_none() {
        return None; // The registrar said nothing about how it sees us.
    }
    let ip: IpAddr = received
        .and_then(|r| r.trim_matches(['[', ']']).parse().ok())
        .or_else(|| top.host.trim_matches(['[', ']']).parse().ok())?;
    let port = rport.and_then(|p| p.parse::<u16>().ok()).or(top.port)?;
    Some(SocketAddr::new(ip, port))
}

/// The lifetime the registrar gave our contact: its `expires` parameter in the 200's
/// Contact list, else the Expires header.
fn granted_expires(headers: &[RawHeader], ours: &str) -> Option<u32> {
    let ours = ours.to_ascii_lowercase();
    let ours = ours.split(';').next().unwrap_or_default();
    for line in headers.iter().filter(|h| h.name == "contact") {
        for value in raw::split_comma_values(&line.value) {
            let Ok(na) = headers::parse_name_addr(value) else {
                continue;
            };
            let uri = na.uri.to_ascii_lowercase();
            if uri.split(';').next() == Some(ours) {
                if let Some(e) = headers::find_param(&na.params, "expires")
                    .and_then(|p| p.value.as_deref())
                    .and_then(|v| v.trim().parse().ok())
                {
                    return Some(e);
                }
            }
        }
    }
    header(headers, "expires").and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
#[path = "registration_tests.rs"]
mod tests;
