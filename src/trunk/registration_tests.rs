//! The registration state machine against a scripted registrar, in simulated time.

use super::*;
use crate::call::Link;
use crate::sip::digest::{self, Algorithm};
use crate::sip::message::{validate_request, Request};
use rand::SeedableRng;

fn setup(registrar: &str) -> RegistrationSetup {
    RegistrationSetup {
        name: "p".into(),
        registrar: registrar.parse().unwrap(),
        outbound_proxy: None,
        username: "hotline".into(),
        password: "s3cret".into(),
        expires_s: 600,
        public_ip: None,
    }
}

fn udp_peer(remote: SocketAddr) -> Peer {
    Peer {
        link: Link::Udp(0),
        remote,
        local: "192.0.2.5:5060".parse().unwrap(),
    }
}

struct Harness {
    reg: Registration,
    now: Instant,
    /// Every request sent, with its tag.
    sent: Vec<(Instant, Request, u64, Peer)>,
    actions: Vec<Action>,
    answer_options: bool,
}

impl Harness {
    fn new(setup: RegistrationSetup) -> Self {
        let now = Instant::now();
        let mut reg = Registration::new(7, setup, Timing::default(), StdRng::seed_from_u64(1));
        reg.start();
        let mut h = Harness {
            reg,
            now,
            sent: Vec::new(),
            actions: Vec::new(),
            answer_options: true,
        };
        h.drain();
        h
    }

    fn drain(&mut self) {
        while let Some(a) = self.reg.poll_action() {
            if let Action::Send {
                bytes, tag, peer, ..
            } = &a
            {
                let raw = crate::sip::raw::frame_datagram(bytes).expect("frames");
                let req = validate_request(raw)
                    .map_err(|e| e.0)
                    .expect("valid request");
                self.sent.push((self.now, req, *tag, *peer));
            }
            self.actions.push(a);
        }
    }

    /// Connects whatever the machine asked to connect to, over UDP.
    fn connect_udp(&mut self) {
        let target = self
            .actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Connect { target } => Some(*target),
                _ => None,
            })
            .expect("a connect");
        self.reg.on_connected(target, udp_peer(target.addr));
        self.drain();
    }

    fn last(&self) -> &(Instant, Request, u64, Peer) {
        self.sent.last().expect("a request")
    }

    fn reply(&mut self, code: u16, reason: &str, extra: &[(&str, String)]) {
        let (_, req, tag, _) = self.last().clone();
        let mut headers = vec![RawHeader {
            name: "via".into(),
            value: req.raw.header("via").unwrap().to_string(),
        }];
        for (n, v) in extra {
            headers.push(RawHeader {
                name: n.to_string(),
                value: v.clone(),
            });
        }
        self.reg.on_result(
            self.now,
            ClientResult::Response {
                tag,
                code,
                reason: reason.into(),
                headers,
            },
        );
        self.drain();
    }

    fn challenge(&mut self, code: u16, nonce: &str, algorithm: &str) {
        let name = if code == 407 {
            "proxy-authenticate"
        } else {
            "www-authenticate"
        };
        let value = format!(
            "Digest realm=\"sip.example.net\", nonce=\"{nonce}\", algorithm={algorithm}, qop=\"auth\""
        );
        let reason = if code == 407 {
            "Proxy Authentication Required"
        } else {
            "Unauthorized"
        };
        self.reply(code, reason, &[(name, value)]);
    }

    fn ok(&mut self, expires: u32) {
        let contact = self.last().1.raw.header("contact").unwrap().to_string();
        self.reply(
            200,
            "OK",
            &[("contact", format!("{contact};expires={expires}"))],
        );
    }

    /// Moves time to `t`; keep-alive OPTIONS are answered at once.
    fn advance_to(&mut self, t: Instant) {
        self.now = t;
        self.reg.handle_timeout(t);
        let before = self.sent.len();
        self.drain();
        if self.answer_options
            && self.sent.len() > before
            && self.last().1.method.as_str() == "OPTIONS"
        {
            self.reply(200, "OK", &[]);
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.reg.poll_timeout().filter(|t| *t <= end) {
            self.advance_to(t.max(self.now));
        }
        self.now = end;
    }

    fn state(&self) -> String {
        self.reg.status(self.now).state
    }
}

/// The password check a registrar makes.
fn credentials_valid(req: &Request, header: &str, password: &str) -> bool {
    let Some(value) = req.raw.header(header) else {
        return false;
    };
    let creds = digest::parse_authorization(value).unwrap();
    let ha1 = digest::ha1(creds.algorithm, &creds.username, &creds.realm, password);
    let expected = digest::expected_response(
        creds.algorithm,
        &ha1,
        "REGISTER",
        &creds.uri,
        &creds.nonce,
        creds.qop.as_ref(),
    );
    creds.response == expected && creds.uri == req.uri
}

#[test]
fn registers_with_digest_after_a_401_and_refreshes_before_expiry() {
    let mut h = Harness::new(setup("sip:198.51.100.10:5070"));
    h.connect_udp();
    let (_, first, _, peer) = h.last().clone();
    assert_eq!(peer.remote, "198.51.100.10:5070".parse().unwrap());
    assert_eq!(first.uri, "sip:198.51.100.10:5070");
    assert_eq!(first.raw.header("expires"), Some("600"));
    assert!(first.raw.header("authorization").is_none());
    assert_eq!(
        first.raw.header("contact"),
        Some("<sip:hotline@192.0.2.5:5060>")
    );
    assert!(first.raw.header("via").unwrap().contains(";rport"));
    assert_eq!(h.state(), "registering");

    h.challenge(401, "n1", "MD5");
    let (_, second, _, _) = h.last().clone();
    assert_eq!(h.sent.len(), 2);
    assert!(credentials_valid(&second, "authorization", "s3cret"));
    assert_eq!(second.common.call_id, first.common.call_id);
    assert_eq!(second.common.cseq, first.common.cseq + 1);

    h.ok(120);
    let st = h.reg.status(h.now);
    assert_eq!(st.state, "registered");
    assert_eq!(st.expires_in_s, Some(120));
    assert_eq!(st.registrar.as_deref(), Some("udp:198.51.100.10:5070"));

    // The refresh leaves before the 120 s are up, with the cached challenge (no 401
    // round trip), nc counting up.
    let before = h.sent.len();
    let keepalives_then = |h: &Harness| {
        h.sent[before..]
            .iter()
            .filter(|s| s.1.method.as_str() == "OPTIONS")
            .count()
    };
    h.advance(Duration::from_secs(100));
    let refresh: Vec<_> = h.sent[before..]
        .iter()
        .filter(|s| s.1.method.as_str() == "REGISTER")
        .cloned()
        .collect();
    assert_eq!(refresh.len(), 1, "one refresh");
    let (at, req, _, _) = &refresh[0];
    assert!(*at - h.sent[1].0 < Duration::from_secs(120 - 30));
    assert!(credentials_valid(req, "authorization", "s3cret"));
    assert!(req
        .raw
        .header("authorization")
        .unwrap()
        .contains("nc=00000002"));
    // OPTIONS keep the UDP flow alive meanwhile, at most every 30 s.
    assert!(keepalives_then(&h) >= 2, "{}", keepalives_then(&h));
}

#[test]
fn sha256_and_proxy_challenges_are_answered() {
    let mut h = Harness::new(setup("sip:198.51.100.10"));
    h.connect_udp();
    h.challenge(407, "n1", "SHA-256");
    let (_, req, _, _) = h.last().clone();
    assert!(credentials_valid(&req, "proxy-authorization", "s3cret"));
    assert!(req
        .raw
        .header("proxy-authorization")
        .unwrap()
        .contains("algorithm=SHA-256"));
    h.ok(600);
    assert_eq!(h.state(), "registered");
}

#[test]
fn a_wrong_password_is_tried_at_most_once_per_30_s() {
    let mut s = setup("sip:198.51.100.10");
    s.password = "wrong".into();
    let mut h = Harness::new(s);
    let start = h.now;
    let mut nonce = 0;
    // Three simulated minutes of a registrar that refuses every attempt.
    while h.now < start + Duration::from_secs(180) {
        if matches!(h.actions.last(), Some(Action::Connect { .. })) {
            h.connect_udp();
        }
        let (_, req, _, _) = h.last().clone();
        nonce += 1;
        if req.raw.header("authorization").is_some() {
            assert!(!credentials_valid(&req, "authorization", "s3cret"));
        }
        h.challenge(401, &format!("n{nonce}"), "MD5");
        if h.reg.phase == Phase::Registering {
            // Answered the first challenge of an attempt: refuse the answer too.
            nonce += 1;
            h.challenge(401, &format!("n{nonce}"), "MD5");
        }
        let st = h.reg.status(h.now);
        assert_eq!(st.state, "failed: 401 Unauthorized (credentials refused)");
        assert!(st.retry_in_s.unwrap() >= 30, "{st:?}");
        let Some(next) = h.reg.poll_timeout() else {
            panic!("no retry scheduled")
        };
        h.actions.clear();
        h.advance_to(next);
    }
    let with_credentials: Vec<Instant> = h
        .sent
        .iter()
        .filter(|s| s.1.raw.header("authorization").is_some())
        .map(|s| s.0)
        .collect();
    for pair in with_credentials.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(30),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    // Doubling: 30, 30-60, 60-120 s: at most 4 attempts in 3 minutes, each one
    // REGISTER without credentials and one password guess.
    let offsets: Vec<u64> = with_credentials
        .iter()
        .map(|t| (*t - start).as_secs())
        .collect();
    let in_window = offsets.iter().filter(|s| **s <= 180).count();
    assert!(in_window <= 4, "{offsets:?}");
    assert_eq!(h.sent.len(), 2 * with_credentials.len());
}

#[test]
fn backoff_doubles_with_jitter_and_never_goes_below_30_s() {
    let timing = Timing::default();
    let mut rng = StdRng::seed_from_u64(3);
    assert_eq!(backoff(&timing, 1, &mut rng), Duration::from_secs(30));
    for failures in 1..40 {
        for _ in 0..50 {
            let d = backoff(&timing, failures, &mut rng);
            assert!(
                d >= Duration::from_secs(30) && d <= timing.max_retry,
                "{failures}: {d:?}"
            );
        }
    }
    let fifth: Vec<_> = (0..50).map(|_| backoff(&timing, 5, &mut rng)).collect();
    assert!(fifth
        .iter()
        .all(|d| *d >= Duration::from_secs(240) && *d <= Duration::from_secs(480)));
    assert!(fifth.iter().any(|d| *d != fifth[0]), "jitter");
}

#[test]
fn a_refusal_says_so_and_waits() {
    let mut h = Harness::new(setup("sip:198.51.100.10"));
    h.connect_udp();
    h.reply(403, "Forbidden", &[]);
    let st = h.reg.status(h.now);
    assert_eq!(st.state, "failed: 403 Forbidden");
    assert_eq!(st.retry_in_s, Some(30));
    assert_eq!(st.failures, 1);
    h.advance(Duration::from_secs(29));
    assert_eq!(h.sent.len(), 1);
    h.advance(Duration::from_secs(1));
    h.connect_udp();
    assert_eq!(h.sent.len(), 2);
    h.ok(600);
    let st = h.reg.status(h.now);
    assert_eq!(
        (st.state.as_str(), st.failures, st.last_error),
        ("registered", 0, None)
    );
}

#[test]
fn interval_too_brief_takes_min_expires() {
    let mut h = Harness::new(setup("sip:198.51.100.10"));
    h.connect_udp();
    h.reply(423, "Interval Too Brief", &[("min-expires", "1200".into())]);
    assert_eq!(h.last().1.raw.header("expires"), Some("1200"));
    h.ok(1200);
    assert_eq!(h.state(), "registered");
}

#[test]
fn the_contact_follows_received_and_rport() {
    let mut h = Harness::new(setup("sip:198.51.100.10"));
    h.connect_udp();
    let (_, req, _, _) = h.last().clone();
    let via = req
        .raw
        .header("via")
        .unwrap()
        .replace(";rport", ";received=203.0.113.9;rport=40123");
    let tag = h.last().2;
    h.reg.on_result(
        h.now,
        ClientResult::Response {
            tag,
            code: 200,
            reason: "OK".into(),
            headers: vec![RawHeader {
                name: "via".into(),
                value: via,
            }],
        },
    );
    h.drain();
    let (_, again, _, _) = h.last().clone();
    assert_eq!(h.sent.len(), 2);
    assert_eq!(
        again.raw.header("contact"),
        Some("<sip:hotline@203.0.113.9:40123>")
    );
    h.ok(600);
    assert_eq!(h.state(), "registered");
    assert_eq!(h.sent.len(), 2, "registered once the contact is right");
}

#[test]
fn a_timeout_fails_over_to_the_next_target_then_backs_off() {
    let mut h = Harness::new(setup("sip:sip.example.net"));
    assert_eq!(
        h.actions[0],
        Action::Resolve {
            host: "sip.example.net".into(),
            port: None,
            transport: None
        }
    );
    assert_eq!(h.state(), "resolving");
    let first = Target {
        addr: "198.51.100.10:5060".parse().unwrap(),
        transport: SipTransport::Udp,
    };
    let second = Target {
        addr: "198.51.100.11:5080".parse().unwrap(),
        transport: SipTransport::Udp,
    };
    h.reg.on_resolved(h.now, Ok(vec![first, second]));
    h.drain();
    h.connect_udp();
    assert_eq!(h.last().3.remote, first.addr);
    let tag = h.last().2;
    h.reg.on_result(h.now, ClientResult::Timeout { tag });
    h.drain();
    h.connect_udp();
    assert_eq!(h.last().3.remote, second.addr);
    assert_eq!(h.state(), "registering");
    let tag = h.last().2;
    h.reg.on_result(h.now, ClientResult::Timeout { tag });
    h.drain();
    let st = h.reg.status(h.now);
    assert_eq!(st.state, "retrying in 30 s");
    assert_eq!(
        st.last_error.as_deref(),
        Some("udp:198.51.100.11:5080: no answer")
    );
    // After the wait it resolves again (the records may have changed).
    h.actions.clear();
    h.advance(Duration::from_secs(30));
    assert!(matches!(h.actions[0], Action::Resolve { .. }));
    h.reg.on_resolved(h.now, Err("SERVFAIL".into()));
    h.drain();
    assert_eq!(
        h.reg.status(h.now).last_error.as_deref(),
        Some("DNS: SERVFAIL")
    );
}

#[test]
fn a_keepalive_without_answer_moves_to_the_next_target() {
    let mut h = Harness::new(setup("sip:sip.example.net"));
    let targets = vec![
        Target {
            addr: "198.51.100.10:5060".parse().unwrap(),
            transport: SipTransport::Udp,
        },
        Target {
            addr: "198.51.100.11:5060".parse().unwrap(),
            transport: SipTransport::Udp,
        },
    ];
    h.reg.on_resolved(h.now, Ok(targets.clone()));
    h.drain();
    h.connect_udp();
    h.ok(600);
    h.answer_options = false;
    h.advance(Duration::from_secs(30));
    let (_, options, tag, _) = h.last().clone();
    assert_eq!(options.method.as_str(), "OPTIONS");
    h.reg.on_result(h.now, ClientResult::Timeout { tag });
    h.drain();
    h.connect_udp();
    let (_, req, _, peer) = h.last().clone();
    assert_eq!(req.method.as_str(), "REGISTER");
    assert_eq!(peer.remote, targets[1].addr);
}

#[test]
fn a_lost_connection_is_reopened_at_once_and_registered_again() {
    let mut h = Harness::new(setup("sip:198.51.100.10:5070;transport=tcp"));
    let Some(Action::Connect { target }) = h.actions.last().cloned() else {
        panic!("connect first")
    };
    assert_eq!(target.transport, SipTransport::Tcp);
    let peer = Peer {
        link: Link::Tcp(42),
        remote: target.addr,
        local: "192.0.2.5:40000".parse().unwrap(),
    };
    h.reg.on_connected(target, peer);
    h.drain();
    let (_, req, _, _) = h.last().clone();
    assert_eq!(
        req.raw.header("contact"),
        Some("<sip:hotline@192.0.2.5:40000;transport=tcp>")
    );
    assert!(req
        .raw
        .header("via")
        .unwrap()
        .starts_with("SIP/2.0/TCP 192.0.2.5:40000;"));
    h.ok(600);
    // CRLF keep-alives on the connection, no OPTIONS.
    h.actions.clear();
    h.advance(Duration::from_secs(121));
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::Transmit { data, .. } if data == b"\r\n\r\n")));
    assert!(h.sent.iter().all(|s| s.1.method.as_str() == "REGISTER"));

    h.actions.clear();
    h.reg.on_link_lost(h.now, 41); // someone else's
    assert_eq!(h.state(), "registered");
    h.reg.on_link_lost(h.now, 42);
    assert!(h.state().starts_with("retrying in"), "{}", h.state());
    let lost_at = h.now;
    h.advance(Duration::from_secs(3));
    let Some(Action::Connect { target: again }) = h.actions.last().cloned() else {
        panic!("reconnect within 3 s: {:?}", h.actions)
    };
    assert_eq!(again, target);
    let peer = Peer {
        link: Link::Tcp(43),
        ..peer
    };
    h.reg.on_connected(target, peer);
    h.drain();
    h.ok(600);
    assert_eq!(h.state(), "registered");
    assert!(h.now - lost_at <= Duration::from_secs(3));
}

#[test]
fn shutdown_unregisters() {
    let mut h = Harness::new(setup("sip:198.51.100.10"));
    h.connect_udp();
    h.challenge(401, "n1", "MD5");
    h.ok(600);
    assert!(h.reg.shutdown());
    h.drain();
    let (_, req, _, _) = h.last().clone();
    assert_eq!(req.raw.header("expires"), Some("0"));
    assert!(credentials_valid(&req, "authorization", "s3cret"));
    assert_eq!(h.state(), "unregistering");
    // A registrar that wants a fresh nonce is answered once more.
    h.challenge(401, "n2", "MD5");
    assert_eq!(h.last().1.raw.header("expires"), Some("0"));
    h.ok(0);
    assert!(h.reg.is_stopped());
    // Not registered: nothing to undo.
    let mut idle = Harness::new(setup("sip:198.51.100.10"));
    assert!(!idle.reg.shutdown());
    assert!(idle.reg.is_stopped());
}

#[test]
fn outbound_proxy_gets_the_request_and_a_route() {
    let mut s = setup("sip:sip.example.net");
    s.outbound_proxy = Some("sip:198.51.100.20:5080".parse().unwrap());
    let mut h = Harness::new(s);
    h.connect_udp();
    let (_, req, _, peer) = h.last().clone();
    assert_eq!(peer.remote, "198.51.100.20:5080".parse().unwrap());
    assert_eq!(req.uri, "sip:sip.example.net");
    assert_eq!(req.raw.header("route"), Some("<sip:198.51.100.20:5080;lr>"));
    assert_eq!(req.common.to.uri, "sip:hotline@sip.example.net");
}

#[test]
fn hostile_answers_do_not_confuse_it() {
    let mut h = Harness::new(setup("sip:198.51.100.10"));
    h.connect_udp();
    // A stray result for a tag not in flight.
    h.reg.on_result(h.now, ClientResult::Timeout { tag: 999 });
    assert_eq!(h.state(), "registering");
    // A challenge nobody can answer, and a 200 with garbage headers.
    h.reply(
        401,
        "Unauthorized",
        &[("www-authenticate", "Digest realm=\"x".into())],
    );
    assert!(h.state().starts_with("failed: 401"), "{}", h.state());
    h.advance(Duration::from_secs(30));
    h.connect_udp();
    h.reply(
        200,
        "OK",
        &[
            ("contact", "<<<>>>;expires=abc".into()),
            ("expires", "not a number".into()),
        ],
    );
    let st = h.reg.status(h.now);
    assert_eq!(st.state, "registered");
    assert_eq!(st.expires_in_s, Some(600));
    let _ = Algorithm::Md5;
}

#[test]
fn a_registrar_that_forgot_our_nonce_gets_one_fresh_answer() {
    let mut h = Harness::new(setup("sip:198.51.100.10"));
    h.connect_udp();
    h.challenge(401, "n1", "MD5");
    h.ok(120);
    // The refresh uses the cached nonce; the registrar restarted and knows it not.
    h.advance(Duration::from_secs(90));
    let refresh = h.last().1.clone();
    assert!(refresh
        .raw
        .header("authorization")
        .unwrap()
        .contains("\"n1\""));
    h.challenge(401, "n2", "MD5");
    let (_, again, _, _) = h.last().clone();
    assert!(again
        .raw
        .header("authorization")
        .unwrap()
        .contains("\"n2\""));
    assert!(credentials_valid(&again, "authorization", "s3cret"));
    h.ok(120);
    assert_eq!(h.state(), "registered");
}
