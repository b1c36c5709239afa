//! Registrar policy for operators (RFC 3261 §10.3), sans-IO: decides how to answer a REGISTER
//! from its parsed essentials, keeps each operator's contact bindings with the transport
//! path each came on and their expiry, rate limits 403 answers per source and locks out
//! sources that keep guessing passwords.
//!
//! Holds the operators' HA1s in memory (the host hands them over at start and whenever
//! accounts change), so no lookup ever runs on the SIP path. Must not: parse or build SIP
//! messages, do IO, read the clock, or accept anyone who is not a known operator. Digest
//! mechanics live in `super::digest`; this module only applies them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::digest::{parse_authorization, DigestAuth, DigestError, Ha1Set, NonceState, Verdict};
use crate::call::Peer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    /// `Contact: *`
    Star,
    /// A contact URI (compared as given) with its `expires` parameter, if any.
    Uri { uri: String, expires: Option<u32> },
}

/// The parts of a REGISTER the policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The socket or connection it came on, and its source address.
    pub peer: Peer,
    /// User part of the To URI.
    pub aor_user: String,
    /// Empty for a query of the current bindings.
    pub contacts: Vec<Contact>,
    pub expires: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub authorization: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingView {
    pub contact: String,
    /// Seconds left, rounded up.
    pub expires: u32,
    /// Where the REGISTER came from and on which socket or connection: how the phone
    /// is reached, also behind NAT.
    pub peer: Peer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 401, one `WWW-Authenticate` header per value, in order.
    Challenge { www_authenticate: Vec<String> },
    /// 200 listing every current binding of the address of record.
    Ok { bindings: Vec<BindingView> },
    /// 423 with `Min-Expires`.
    IntervalTooBrief { min_expires: u32 },
    /// 403
    Forbidden,
    /// 400
    BadRequest { reason: &'static str },
    /// Send nothing: rate limited, or an out-of-order request (§10.3 step 7).
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// The operator's first binding appeared.
    OperatorOnline {
        user: String,
    },
    /// The operator's last binding is gone, by expiry or removal.
    OperatorOffline {
        user: String,
    },
    BindingAdded {
        user: String,
        contact: String,
    },
    BindingRemoved {
        user: String,
        contact: String,
    },
    BindingExpired {
        user: String,
        contact: String,
    },
}

#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Shorter nonzero expiries are answered with 423.
    pub min_expires: u32,
    /// Longer expiries are shortened to this.
    pub max_expires: u32,
    /// Used when neither the contact nor the request says.
    pub default_expires: u32,
    /// Wrong passwords from one source IP within `failure_window` that lock it out; 0 never does.
    pub max_failures: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
    /// Token bucket for 403s to unknown users and locked-out sources, per source IP.
    pub forbidden_burst: u32,
    /// Time to earn back one token.
    pub forbidden_refill: Duration,
    /// Per-source records kept before idle ones are dropped.
    pub max_sources: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_failures: 5,
            failure_window: Duration::from_secs(600),
            lockout: Duration::from_secs(900),
            forbidden_burst: 5,
            forbidden_refill: Duration::from_secs(10),
            max_sources: 10_000,
        }
    }
}

#[derive(Debug)]
struct Binding {
    contact: String,
    expires_at: Instant,
    call_id: String,
    cseq: u32,
    peer: Peer,
}

#[derive(Debug)]
struct SourceState {
    tokens: u32,
    refilled_at: Instant,
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

impl SourceState {
    fn refill(&mut self, now: Instant, config: &RegistrarConfig) {
        let burst = config.forbidden_burst;
        let period = config.forbidden_refill;
        if period.is_zero() {
            self.tokens = burst;
            self.refilled_at = now;
            return;
        }
        let earned = now.saturating_duration_since(self.refilled_at).as_nanos() / period.as_nanos();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(burst);
        // Partial progress towards the next token is kept unless the bucket is full.
        self.refilled_at = if self.tokens == burst {
            now
        } else {
            self.refilled_at + period * earned
        };
    }

    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }

    /// Nothing here that forgetting would change.
    fn idle(&mut self, now: Instant, config: &RegistrarConfig) -> bool {
        self.refill(now, config);
        !self.locked(now)
            && self.tokens >= config.forbidden_burst
            && self
                .failures
                .back()
                .is_none_or(|&t| now.saturating_duration_since(t) >= config.failure_window)
    }
}

#[derive(Debug)]
pub struct Registrar {
    config: RegistrarConfig,
    auth: DigestAuth,
    /// SIP username -> stored HA1s.
    credentials: HashMap<String, Ha1Set>,
    bindings: BTreeMap<String, Vec<Binding>>,
    sources: HashMap<IpAddr, SourceState>,
    events: VecDeque<RegistrarEvent>,
}

impl Registrar {
    pub fn new(config: RegistrarConfig, auth: DigestAuth) -> Self {
        Self {
            config,
            auth,
            credentials: HashMap::new(),
            bindings: BTreeMap::new(),
            sources: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// The accounts that may register, by SIP username (replacing the previous set).
    pub fn set_credentials(&mut self, credentials: HashMap<String, Ha1Set>) {
        self.credentials = credentials;
    }

    pub fn has_account(&self, user: &str) -> bool {
        self.credentials.contains_key(user)
    }

    /// Decides the answer to one REGISTER; binding changes show up as events.
    pub fn handle_register(&mut self, request: &RegisterRequest, now: Instant) -> Decision {
        self.expire_bindings(now);
        // Operators register their own address of record only.
        let authorization = request.authorization.as_deref();
        if let Err(decision) = self.authorize(
            request.peer.remote,
            authorization,
            "REGISTER",
            &request.aor_user,
            now,
        ) {
            return decision;
        }
        self.update_bindings(request, now)
    }

    /// Checks an operator's digest credentials for `method` (REGISTER, or a feature
    /// code INVITE), with one set of nonces, lockouts and rate limits for both.
    /// `Err` carries the answer: a challenge (`WWW-` or `Proxy-Authenticate`), 403,
    /// 400, or nothing.
    pub fn authorize(
        &mut self,
        source: SocketAddr,
        authorization: Option<&str>,
        method: &str,
        user: &str,
        now: Instant,
    ) -> Result<(), Decision> {
        let ip = source.ip().to_canonical();
        if self.sources.get(&ip).is_some_and(|s| s.locked(now)) {
            return Err(self.limited_forbidden(ip, now));
        }
        // Nonces are bound to the source address, so only a sender that actually received our
        // challenge can have its guesses counted: spoofed packets cannot lock anyone out.
        let context = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let Some(value) = authorization else {
            return Err(self.challenge(now, false, &context));
        };
        let credentials = match parse_authorization(value) {
            Ok(credentials) => credentials,
            Err(DigestError::NotDigest) => return Err(self.challenge(now, false, &context)),
            Err(_) => {
                return Err(Decision::BadRequest {
                    reason: "malformed Authorization",
                })
            }
        };
        if credentials.username != user {
            return Err(self.limited_forbidden(ip, now));
        }
        let Some(ha1s) = self.credentials.get(&credentials.username).cloned() else {
            // Guessing user names is guessing credentials.
            if self.auth.nonce_state(&credentials.nonce, &context, now) != NonceState::Invalid {
                self.record_failure(ip, now);
            }
            return Err(self.limited_forbidden(ip, now));
        };
        match self.auth.verify(&credentials, &ha1s, method, &context, now) {
            Verdict::Authenticated => {
                if let Some(source) = self.sources.get_mut(&ip) {
                    source.failures.clear();
                }
                Ok(())
            }
            Verdict::Stale => Err(self.challenge(now, true, &context)),
            Verdict::Unusable => Err(self.challenge(now, false, &context)),
            Verdict::WrongResponse => {
                self.record_failure(ip, now);
                Err(Decision::Forbidden)
            }
        }
    }

    pub fn bindings(&self, user: &str, now: Instant) -> Vec<BindingView> {
        self.bindings
            .get(user)
            .map(|list| {
                list.iter()
                    .filter(|b| b.expires_at > now)
                    .map(|b| BindingView {
                        contact: b.contact.clone(),
                        expires: seconds_left(b.expires_at, now),
                        peer: b.peer,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops every binding of a user whose account is gone.
    pub fn forget(&mut self, user: &str) {
        let Some(list) = self.bindings.remove(user) else {
            return;
        };
        for b in list {
            self.events.push_back(RegistrarEvent::BindingRemoved {
                user: user.to_string(),
                contact: b.contact,
            });
        }
        self.events.push_back(RegistrarEvent::OperatorOffline {
            user: user.to_string(),
        });
    }

    /// Users with at least one binding.
    pub fn users(&self) -> Vec<String> {
        self.bindings.keys().cloned().collect()
    }

    pub fn is_registered(&self, user: &str) -> bool {
        self.bindings.contains_key(user)
    }

    pub fn poll_event(&mut self) -> Option<RegistrarEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.bindings.values().flatten().map(|b| b.expires_at).min()
    }

    /// Expires due bindings and forgets per-source records that no longer matter.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_bindings(now);
        self.prune_sources(now);
    }

    fn expire_bindings(&mut self, now: Instant) {
        let mut gone = Vec::new();
        for (user, list) in &mut self.bindings {
            list.retain(|b| {
                let live = b.expires_at > now;
                if !live {
                    self.events.push_back(RegistrarEvent::BindingExpired {
                        user: user.clone(),
                        contact: b.contact.clone(),
                    });
                }
                live
            });
            if list.is_empty() {
                gone.push(user.clone());
            }
        }
        for user in gone {
            self.bindings.remove(&user);
            self.events
                .push_back(RegistrarEvent::OperatorOffline { user });
        }
    }

    fn update_bindings(&mut self, request: &RegisterRequest, now: Instant) -> Decision {
        let star = request.contacts.contains(&Contact::Star);
        if star && (request.contacts.len() != 1 || request.expires != Some(0)) {
            return Decision::BadRequest {
                reason: "Contact: * needs Expires: 0 and no other contact",
            };
        }
        let mut changes = Vec::new();
        for contact in &request.contacts {
            if let Contact::Uri { uri, expires } = contact {
                let requested = expires
                    .or(request.expires)
                    .unwrap_or(self.config.default_expires);
                if requested != 0 && requested < self.config.min_expires {
                    return Decision::IntervalTooBrief {
                        min_expires: self.config.min_expires,
                    };
                }
                changes.push((uri.as_str(), requested.min(self.config.max_expires)));
            }
        }
        let user = &request.aor_user;
        let current = self.bindings.get(user).map(Vec::as_slice).unwrap_or(&[]);
        // §10.3 step 7: a request that is not newer than what made a binding must not undo it.
        let out_of_order = current.iter().any(|b| {
            b.call_id == request.call_id
                && request.cseq <= b.cseq
                && (star || changes.iter().any(|(uri, _)| *uri == b.contact))
        });
        if out_of_order {
            return Decision::Ignore;
        }
        let was_online = !current.is_empty();
        let list = self.bindings.entry(user.clone()).or_default();
        if star {
            for binding in list.drain(..) {
                self.events.push_back(RegistrarEvent::BindingRemoved {
                    user: user.clone(),
                    contact: binding.contact,
                });
            }
        }
        for (uri, expires) in changes {
            let index = list.iter().position(|b| b.contact == uri);
            match (index, expires) {
                (Some(i), 0) => {
                    let binding = list.remove(i);
                    self.events.push_back(RegistrarEvent::BindingRemoved {
                        user: user.clone(),
                        contact: binding.contact,
                    });
                }
                (None, 0) => {}
                (Some(i), _) => {
                    let binding = &mut list[i];
                    binding.expires_at = now + Duration::from_secs(expires.into());
                    binding.call_id.clone_from(&request.call_id);
                    binding.cseq = request.cseq;
                    binding.peer = request.peer;
                }
                (None, _) => {
                    list.push(Binding {
                        contact: uri.to_owned(),
                        expires_at: now + Duration::from_secs(expires.into()),
                        call_id: request.call_id.clone(),
                        cseq: request.cseq,
                        peer: request.peer,
                    });
                    self.events.push_back(RegistrarEvent::BindingAdded {
                        user: user.clone(),
                        contact: uri.to_owned(),
                    });
                }
            }
        }
        let online = !list.is_empty();
        if !online {
            self.bindings.remove(user);
        }
        match (was_online, online) {
            (false, true) => self
                .events
                .push_back(RegistrarEvent::OperatorOnline { user: user.clone() }),
            (true, false) => self
                .events
                .push_back(RegistrarEvent::OperatorOffline { user: user.clone() }),
            _ => {}
        }
        Decision::Ok {
            bindings: self.bindings(user, now),
        }
    }

    fn challenge(&mut self, now: Instant, stale: bool, context: &[u8]) -> Decision {
        Decision::Challenge {
            www_authenticate: self.auth.challenges(now, stale, context),
        }
    }

    /// A 403 that costs a token from the source's bucket; without one, silence.
    fn limited_forbidden(&mut self, ip: IpAddr, now: Instant) -> Decision {
        let config = &self.config;
        let source = source_entry(&mut self.sources, ip, now, config);
        source.refill(now, config);
        if source.tokens == 0 {
            return Decision::Ignore;
        }
        source.tokens -= 1;
        Decision::Forbidden
    }

    fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        let config = &self.config;
        let source = source_entry(&mut self.sources, ip, now, config);
        while source
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= config.failure_window)
        {
            source.failures.pop_front();
        }
        source.failures.push_back(now);
        if config.max_failures > 0 && source.failures.len() >= config.max_failures as usize {
            source.locked_until = Some(now + config.lockout);
            source.failures.clear();
        }
    }

    fn prune_sources(&mut self, now: Instant) {
        let config = &self.config;
        self.sources.retain(|_, source| !source.idle(now, config));
    }
}

/// The source's record, making room first if the table is full: idle records go first, then
/// any that is not a running lockout, and as a last resort the lockouts closest to ending.
fn source_entry<'a>(
    sources: &'a mut HashMap<IpAddr, SourceState>,
    ip: IpAddr,
    now: Instant,
    config: &RegistrarConfig,
) -> &'a mut SourceState {
    if !sources.contains_key(&ip) && sources.len() >= config.max_sources {
        sources.retain(|_, source| !source.idle(now, config));
        let mut excess = (sources.len() + 1).saturating_sub(config.max_sources);
        sources.retain(|_, source| {
            let evict = excess > 0 && !source.locked(now);
            excess -= usize::from(evict);
            !evict
        });
        while sources.len() >= config.max_sources.max(1) {
            let soonest = sources
                .iter()
                .min_by_key(|(_, source)| source.locked_until)
                .map(|(ip, _)| *ip);
            match soonest {
                Some(ip) => sources.remove(&ip),
                None => break,
            };
        }
    }
    sources.entry(ip).or_insert_with(|| SourceState {
        tokens: config.forbidden_burst,
        refilled_at: now,
        failures: VecDeque::new(),
        locked_until: None,
    })
}

fn seconds_left(expires_at: Instant, now: Instant) -> u32 {
    let left = expires_at.saturating_duration_since(now);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::super::digest::{expected_response, ha1, Algorithm, DigestConfig, QopAuth};
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const REALM: &str = "hotline";
    const URI: &str = "sip:hotline.example";

    fn store(user: &str) -> Option<Ha1Set> {
        match user {
            "alice" => Some(Ha1Set::from_password("alice", REALM, "wonderland")),
            "bob" => Some(Ha1Set::from_password("bob", REALM, "builder")),
            _ => None,
        }
    }

    fn ip(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n], 5060))
    }

    fn uri(uri: &str) -> Contact {
        Contact::Uri {
            uri: uri.to_owned(),
            expires: None,
        }
    }

    fn uri_for(uri: &str, expires: u32) -> Contact {
        Contact::Uri {
            uri: uri.to_owned(),
            expires: Some(expires),
        }
    }

    fn peer(source: SocketAddr) -> Peer {
        Peer {
            link: crate::call::Link::Udp(0),
            remote: source,
            local: SocketAddr::from(([192, 0, 2, 200], 5060)),
        }
    }

    fn request(source: SocketAddr, user: &str, contacts: Vec<Contact>) -> RegisterRequest {
        RegisterRequest {
            peer: peer(source),
            aor_user: user.to_owned(),
            contacts,
            expires: None,
            call_id: "call-1".into(),
            cseq: 1,
            authorization: None,
        }
    }

    fn authorization(user: &str, password: &str, nonce: &str, count: u32) -> String {
        let alg = Algorithm::Sha256;
        let qop = QopAuth {
            nc: format!("{count:08x}"),
            count,
            cnonce: "c0ffee".into(),
        };
        let ha1 = ha1(alg, user, REALM, password);
        let response = expected_response(alg, &ha1, "REGISTER", URI, nonce, Some(&qop));
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", \
             response=\"{response}\", algorithm=SHA-256, qop=auth, nc={}, cnonce=\"c0ffee\"",
            qop.nc
        )
    }

    fn nonce_of(challenge: &str) -> String {
        let start = challenge.find("nonce=\"").unwrap() + 7;
        let len = challenge[start..].find('"').unwrap();
        challenge[start..start + len].to_owned()
    }

    struct Sim {
        registrar: Registrar,
        base: Instant,
    }

    impl Sim {
        fn new(config: RegistrarConfig) -> Self {
            let base = Instant::now();
            let auth = DigestAuth::new(
                DigestConfig::new(REALM),
                [9; 32],
                base,
                Box::new(StdRng::seed_from_u64(5)),
            );
            let mut registrar = Registrar::new(config, auth);
            registrar.set_credentials(
                ["alice", "bob"]
                    .into_iter()
                    .filter_map(|u| Some((u.to_string(), store(u)?)))
                    .collect(),
            );
            Self { registrar, base }
        }

        fn at(&self, secs: u64) -> Instant {
            self.base + Duration::from_secs(secs)
        }

        fn send(&mut self, secs: u64, request: &RegisterRequest) -> Decision {
            self.registrar.handle_register(request, self.at(secs))
        }

        fn nonce(&mut self, secs: u64, request: &RegisterRequest) -> String {
            let bare = RegisterRequest {
                authorization: None,
                ..request.clone()
            };
            match self.send(secs, &bare) {
                Decision::Challenge { www_authenticate } => nonce_of(&www_authenticate[0]),
                other => panic!("expected a challenge, got {other:?}"),
            }
        }

        /// Challenge, then answer it with `password`, as a phone does.
        fn register(&mut self, secs: u64, request: &RegisterRequest, password: &str) -> Decision {
            let nonce = self.nonce(secs, request);
            let request = RegisterRequest {
                authorization: Some(authorization(&request.aor_user, password, &nonce, 1)),
                ..request.clone()
            };
            self.send(secs, &request)
        }

        fn events(&mut self) -> Vec<RegistrarEvent> {
            std::iter::from_fn(|| self.registrar.poll_event()).collect()
        }
    }

    fn view(contact: &str, expires: u32, source: SocketAddr) -> BindingView {
        BindingView {
            contact: contact.to_owned(),
            expires,
            peer: peer(source),
        }
    }

    fn ok(bindings: Vec<BindingView>) -> Decision {
        Decision::Ok { bindings }
    }

    fn added(contact: &str) -> RegistrarEvent {
        RegistrarEvent::BindingAdded {
            user: "alice".into(),
            contact: contact.into(),
        }
    }

    fn online() -> RegistrarEvent {
        RegistrarEvent::OperatorOnline {
            user: "alice".into(),
        }
    }

    fn offline() -> RegistrarEvent {
        RegistrarEvent::OperatorOffline {
            user: "alice".into(),
        }
    }

    #[test]
    fn challenges_anyone_without_credentials() {
        let mut sim = Sim::new(RegistrarConfig::default());
        for user in ["alice", "nobody"] {
            let Decision::Challenge { www_authenticate } =
                sim.send(0, &request(ip(1), user, vec![uri("sip:a@10.0.0.1")]))
            else {
                panic!("expected a challenge");
            };
            assert_eq!(www_authenticate.len(), 2);
            assert!(www_authenticate[0].contains("algorithm=SHA-256"));
            assert!(www_authenticate[1].contains("algorithm=MD5"));
            assert!(!www_authenticate[0].contains("stale"));
        }
        assert!(sim.events().is_empty());
    }

    #[test]
    fn registers_with_the_right_password() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let req = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        assert_eq!(
            sim.register(5, &req, "wonderland"),
            ok(vec![view("sip:alice@10.0.0.1", 3600, ip(1))])
        );
        assert_eq!(sim.events(), [added("sip:alice@10.0.0.1"), online()]);
        assert!(sim.registrar.is_registered("alice"));
        assert_eq!(sim.registrar.poll_timeout(), Some(sim.at(3605)));
    }

    #[test]
    fn md5_credentials_work_too() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let mut req = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        let nonce = sim.nonce(0, &req);
        let ha1 = ha1(Algorithm::Md5, "alice", REALM, "wonderland");
        let response = expected_response(Algorithm::Md5, &ha1, "REGISTER", URI, &nonce, None);
        req.authorization = Some(format!(
            "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", \
             response=\"{response}\""
        ));
        assert!(matches!(sim.send(0, &req), Decision::Ok { .. }));
    }

    #[test]
    fn several_contacts_refresh_and_query() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let desk = "sip:alice@10.0.0.1";
        let mobile = "sip:alice@10.0.0.2";
        sim.register(0, &request(ip(1), "alice", vec![uri(desk)]), "wonderland");
        let second = RegisterRequest {
            call_id: "call-2".into(),
            ..request(ip(2), "alice", vec![uri_for(mobile, 600)])
        };
        assert_eq!(
            sim.register(100, &second, "wonderland"),
            ok(vec![view(desk, 3500, ip(1)), view(mobile, 600, ip(2))])
        );
        assert_eq!(sim.events(), [added(desk), online(), added(mobile)]);
        // A query changes nothing and lists what is there.
        assert_eq!(
            sim.register(200, &request(ip(3), "alice", vec![]), "wonderland"),
            ok(vec![view(desk, 3400, ip(1)), view(mobile, 500, ip(2))])
        );
        // A refresh extends the binding without announcing it again; the mobile binding ran
        // out at 700 and is reaped before the request is handled.
        let refresh = RegisterRequest {
            cseq: 2,
            ..request(ip(1), "alice", vec![uri(desk)])
        };
        assert_eq!(
            sim.register(1000, &refresh, "wonderland"),
            ok(vec![view(desk, 3600, ip(1))])
        );
        assert_eq!(
            sim.events(),
            [RegistrarEvent::BindingExpired {
                user: "alice".into(),
                contact: mobile.into()
            }]
        );
        assert_eq!(sim.registrar.poll_timeout(), Some(sim.at(4600)));
    }

    #[test]
    fn expired_bindings_are_not_listed_before_they_are_reaped() {
        let mut sim = Sim::new(RegistrarConfig::default());
        sim.register(
            0,
            &request(ip(1), "alice", vec![uri_for("sip:a@x", 60)]),
            "wonderland",
        );
        assert_eq!(sim.registrar.bindings("alice", sim.at(59)).len(), 1);
        assert!(sim.registrar.bindings("alice", sim.at(60)).is_empty());
    }

    #[test]
    fn expiry_below_minimum_is_too_brief() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let contact = "sip:alice@10.0.0.1";
        let header = |expires| RegisterRequest {
            expires: Some(expires),
            ..request(ip(1), "alice", vec![uri(contact)])
        };
        assert_eq!(
            sim.register(0, &header(30), "wonderland"),
            Decision::IntervalTooBrief { min_expires: 60 }
        );
        let param_wins = RegisterRequest {
            expires: Some(3600),
            ..request(ip(1), "alice", vec![uri_for(contact, 59)])
        };
        assert_eq!(
            sim.register(0, &param_wins, "wonderland"),
            Decision::IntervalTooBrief { min_expires: 60 }
        );
        assert!(!sim.registrar.is_registered("alice"));
        assert_eq!(
            sim.register(0, &header(60), "wonderland"),
            ok(vec![view(contact, 60, ip(1))])
        );
        // Longer than allowed is shortened rather than refused.
        let long = RegisterRequest {
            cseq: 2,
            expires: Some(30),
            ..request(ip(1), "alice", vec![uri_for(contact, 1_000_000)])
        };
        assert_eq!(
            sim.register(1, &long, "wonderland"),
            ok(vec![view(contact, 3600, ip(1))])
        );
    }

    #[test]
    fn removing_one_contact_or_all() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let (a, b, c) = ("sip:a@x", "sip:b@x", "sip:c@x");
        sim.register(
            0,
            &request(ip(1), "alice", vec![uri(a), uri(b), uri(c)]),
            "wonderland",
        );
        sim.events();
        let remove_a = RegisterRequest {
            cseq: 2,
            ..request(ip(1), "alice", vec![uri_for(a, 0)])
        };
        assert_eq!(
            sim.register(1, &remove_a, "wonderland"),
            ok(vec![view(b, 3599, ip(1)), view(c, 3599, ip(1))])
        );
        let removed = |contact: &str| RegistrarEvent::BindingRemoved {
            user: "alice".into(),
            contact: contact.into(),
        };
        assert_eq!(sim.events(), [removed(a)]);

        let star = |expires, contacts| RegisterRequest {
            cseq: 3,
            expires,
            ..request(ip(1), "alice", contacts)
        };
        for bad in [
            star(Some(60), vec![Contact::Star]),
            star(None, vec![Contact::Star]),
            star(Some(0), vec![Contact::Star, uri(a)]),
        ] {
            assert!(matches!(
                sim.register(2, &bad, "wonderland"),
                Decision::BadRequest { .. }
            ));
        }
        assert_eq!(
            sim.register(2, &star(Some(0), vec![Contact::Star]), "wonderland"),
            ok(vec![])
        );
        assert_eq!(sim.events(), [removed(b), removed(c), offline()]);
        assert!(!sim.registrar.is_registered("alice"));
        assert_eq!(sim.registrar.poll_timeout(), None);
    }

    #[test]
    fn bindings_expire_on_timeout() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let req = request(
            ip(1),
            "alice",
            vec![uri_for("sip:a@x", 60), uri_for("sip:b@x", 120)],
        );
        sim.register(0, &req, "wonderland");
        sim.events();
        assert_eq!(sim.registrar.poll_timeout(), Some(sim.at(60)));
        sim.registrar.handle_timeout(sim.at(59));
        assert!(sim.events().is_empty());
        sim.registrar.handle_timeout(sim.at(60));
        let expired = |contact: &str| RegistrarEvent::BindingExpired {
            user: "alice".into(),
            contact: contact.into(),
        };
        assert_eq!(sim.events(), [expired("sip:a@x")]);
        assert!(sim.registrar.is_registered("alice"));
        assert_eq!(sim.registrar.poll_timeout(), Some(sim.at(120)));
        sim.registrar.handle_timeout(sim.at(120));
        assert_eq!(sim.events(), [expired("sip:b@x"), offline()]);
        assert!(sim.registrar.bindings("alice", sim.at(120)).is_empty());
        assert_eq!(sim.registrar.poll_timeout(), None);
    }

    #[test]
    fn older_cseq_for_the_same_call_id_is_ignored() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let contact = "sip:alice@10.0.0.1";
        let at = |call_id: &str, cseq, expires| RegisterRequest {
            call_id: call_id.into(),
            cseq,
            ..request(ip(1), "alice", vec![uri_for(contact, expires)])
        };
        sim.register(0, &at("cid", 10, 600), "wonderland");
        assert_eq!(
            sim.register(1, &at("cid", 9, 0), "wonderland"),
            Decision::Ignore
        );
        assert_eq!(
            sim.register(1, &at("cid", 10, 0), "wonderland"),
            Decision::Ignore
        );
        assert!(sim.registrar.is_registered("alice"));
        assert_eq!(
            sim.register(2, &at("cid", 11, 900), "wonderland"),
            ok(vec![view(contact, 900, ip(1))])
        );
        // A new Call-ID (the phone restarted) starts its own sequence.
        assert_eq!(
            sim.register(3, &at("fresh", 1, 300), "wonderland"),
            ok(vec![view(contact, 300, ip(1))])
        );
        // An old CSeq on that Call-ID may still touch contacts it never bound.
        let other = RegisterRequest {
            call_id: "fresh".into(),
            cseq: 1,
            ..request(ip(1), "alice", vec![uri_for("sip:alice@10.0.0.9", 300)])
        };
        assert!(matches!(
            sim.register(4, &other, "wonderland"),
            Decision::Ok { .. }
        ));
    }

    #[test]
    fn repeated_wrong_passwords_lock_the_source_out() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let req = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        for t in 0..5 {
            assert_eq!(sim.register(t, &req, "guess"), Decision::Forbidden);
        }
        // Locked: refused without looking, even with the right password and no credentials.
        assert_eq!(
            sim.send(
                10,
                &RegisterRequest {
                    authorization: Some(authorization("alice", "wonderland", "x", 1)),
                    ..req.clone()
                }
            ),
            Decision::Forbidden
        );
        assert_eq!(sim.send(10, &req), Decision::Forbidden);
        // The right password from elsewhere still works.
        let elsewhere = request(ip(2), "alice", vec![uri("sip:alice@10.0.0.1")]);
        assert!(matches!(
            sim.register(11, &elsewhere, "wonderland"),
            Decision::Ok { .. }
        ));
        // Lockout ends 900 s after the fifth failure.
        let nonce_request = RegisterRequest {
            cseq: 2,
            ..req.clone()
        };
        assert_eq!(sim.send(903, &nonce_request), Decision::Forbidden);
        assert!(matches!(
            sim.register(904, &nonce_request, "wonderland"),
            Decision::Ok { .. }
        ));
    }

    #[test]
    fn locked_out_source_is_answered_at_a_limited_rate() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let req = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        for t in 0..5 {
            sim.register(t, &req, "guess");
        }
        for _ in 0..5 {
            assert_eq!(sim.send(5, &req), Decision::Forbidden);
        }
        assert_eq!(sim.send(5, &req), Decision::Ignore);
        assert_eq!(sim.send(15, &req), Decision::Forbidden);
        assert_eq!(sim.send(15, &req), Decision::Ignore);
    }

    #[test]
    fn failures_count_only_within_the_window_and_success_resets() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let req = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        for t in 0..4 {
            sim.register(t, &req, "guess");
        }
        for t in 700..704 {
            assert_eq!(sim.register(t, &req, "guess"), Decision::Forbidden);
        }
        let next = |cseq| RegisterRequest {
            cseq,
            ..req.clone()
        };
        assert!(matches!(
            sim.register(705, &next(2), "wonderland"),
            Decision::Ok { .. }
        ));
        for t in 706..710 {
            sim.register(t, &req, "guess");
        }
        assert!(matches!(
            sim.register(711, &next(3), "wonderland"),
            Decision::Ok { .. }
        ));
    }

    #[test]
    fn unknown_users_get_rate_limited_403s() {
        let mut sim = Sim::new(RegistrarConfig {
            max_failures: 0,
            ..RegistrarConfig::default()
        });
        let req = request(ip(1), "mallory", vec![uri("sip:m@x")]);
        for _ in 0..5 {
            assert_eq!(sim.register(0, &req, "x"), Decision::Forbidden);
        }
        assert_eq!(sim.register(0, &req, "x"), Decision::Ignore);
        assert_eq!(sim.register(9, &req, "x"), Decision::Ignore);
        assert_eq!(sim.register(10, &req, "x"), Decision::Forbidden);
        assert_eq!(sim.register(10, &req, "x"), Decision::Ignore);
        // Another source has its own bucket.
        let other = request(ip(2), "mallory", vec![uri("sip:m@x")]);
        assert_eq!(sim.register(10, &other, "x"), Decision::Forbidden);
    }

    #[test]
    fn guessing_user_names_counts_towards_lockout() {
        let mut sim = Sim::new(RegistrarConfig::default());
        for (t, user) in ["ann", "ben", "cat", "dan", "eve"].iter().enumerate() {
            let req = request(ip(1), user, vec![uri("sip:x@x")]);
            assert_eq!(sim.register(t as u64, &req, "x"), Decision::Forbidden);
        }
        let alice = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        assert_eq!(sim.send(6, &alice), Decision::Ignore);
    }

    #[test]
    fn stale_and_replayed_credentials_are_challenged_again() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let mut req = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        let nonce = sim.nonce(0, &req);
        req.authorization = Some(authorization("alice", "wonderland", &nonce, 1));
        let Decision::Challenge { www_authenticate } = sim.send(400, &req) else {
            panic!("expected a stale challenge");
        };
        assert!(www_authenticate.iter().all(|h| h.ends_with("stale=TRUE")));

        let nonce = sim.nonce(500, &req);
        req.authorization = Some(authorization("alice", "wonderland", &nonce, 1));
        assert!(matches!(sim.send(500, &req), Decision::Ok { .. }));
        let replay = RegisterRequest {
            cseq: 2,
            ..req.clone()
        };
        let Decision::Challenge { www_authenticate } = sim.send(501, &replay) else {
            panic!("a replay must not register");
        };
        assert!(www_authenticate[0].contains("stale=TRUE"));
        // The next nonce count on the same nonce is fine.
        let next = RegisterRequest {
            cseq: 3,
            authorization: Some(authorization("alice", "wonderland", &nonce, 2)),
            ..req
        };
        assert!(matches!(sim.send(502, &next), Decision::Ok { .. }));
    }

    #[test]
    fn operators_register_only_themselves() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let mut req = request(ip(1), "alice", vec![uri("sip:bob@10.0.0.1")]);
        let nonce = sim.nonce(0, &req);
        req.authorization = Some(authorization("bob", "builder", &nonce, 1));
        assert_eq!(sim.send(0, &req), Decision::Forbidden);
        assert!(!sim.registrar.is_registered("alice"));
    }

    #[test]
    fn odd_credentials() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let with = |value: &str| RegisterRequest {
            authorization: Some(value.to_owned()),
            ..request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")])
        };
        assert!(matches!(
            sim.send(0, &with("Digest username=\"alice")),
            Decision::BadRequest { .. }
        ));
        assert!(matches!(
            sim.send(0, &with("Basic YWxpY2U6d29uZGVybGFuZA==")),
            Decision::Challenge { .. }
        ));
        // A realm we never offered is a misconfigured phone, not a guess.
        for _ in 0..10 {
            let nonce = sim.nonce(0, &with(""));
            let value = authorization("alice", "wonderland", &nonce, 1)
                .replace("realm=\"hotline\"", "realm=\"elsewhere\"");
            assert!(matches!(
                sim.send(0, &with(&value)),
                Decision::Challenge { .. }
            ));
        }
        assert!(matches!(
            sim.register(1, &with(""), "wonderland"),
            Decision::Ok { .. }
        ));
    }

    #[test]
    fn source_table_stays_bounded() {
        let mut sim = Sim::new(RegistrarConfig {
            max_sources: 3,
            max_failures: 1,
            ..RegistrarConfig::default()
        });
        sim.register(0, &request(ip(1), "alice", vec![]), "guess");
        // A flood of sources with made-up nonces (what spoofed packets carry) locks nobody
        // and cannot push the running lockout out of the table.
        for n in 2..20 {
            let spoofed = RegisterRequest {
                authorization: Some(authorization("nobody", "x", "made-up", 1)),
                ..request(ip(n), "nobody", vec![])
            };
            assert_eq!(sim.send(1, &spoofed), Decision::Forbidden);
            assert!(sim.registrar.sources.len() <= 3);
        }
        let alice = request(ip(1), "alice", vec![]);
        assert_eq!(sim.send(2, &alice), Decision::Forbidden, "lockout survives");
        // Real lockouts beyond the limit still keep the table bounded.
        for n in 20..30 {
            sim.register(3, &request(ip(n), "nobody", vec![]), "x");
            assert!(sim.registrar.sources.len() <= 3);
        }
        // Once lockouts end and buckets refill, nothing is left to remember.
        sim.registrar.handle_timeout(sim.at(1000));
        assert!(sim.registrar.sources.is_empty());
    }

    #[test]
    fn spoofed_guesses_do_not_lock_out_an_operator() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let office = request(ip(1), "alice", vec![uri("sip:alice@10.0.0.1")]);
        let spoofed = RegisterRequest {
            authorization: Some(authorization("alice", "guess", "made-up", 1)),
            ..office.clone()
        };
        for _ in 0..20 {
            assert!(matches!(sim.send(0, &spoofed), Decision::Challenge { .. }));
        }
        // A nonce fetched from another address does not count here either.
        let nonce = sim.nonce(0, &request(ip(2), "alice", vec![]));
        let borrowed = RegisterRequest {
            authorization: Some(authorization("alice", "guess", &nonce, 1)),
            ..office.clone()
        };
        for _ in 0..20 {
            assert!(matches!(sim.send(0, &borrowed), Decision::Challenge { .. }));
        }
        assert!(matches!(
            sim.register(1, &office, "wonderland"),
            Decision::Ok { .. }
        ));
    }

    #[test]
    fn no_panic_on_extreme_values() {
        let mut sim = Sim::new(RegistrarConfig::default());
        let req = RegisterRequest {
            expires: Some(u32::MAX),
            cseq: u32::MAX,
            ..request(ip(1), "alice", vec![uri_for("sip:a@x", u32::MAX), uri("")])
        };
        assert!(matches!(
            sim.register(0, &req, "wonderland"),
            Decision::Ok { .. }
        ));
        assert_eq!(sim.register(0, &req, "wonderland"), Decision::Ignore);
    }
}
