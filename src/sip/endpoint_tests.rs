//! The endpoint driven with scripted messages: the registrar and feature-code path
//! under mutated input, and an offer's CANCEL rules.

use super::*;
use crate::sip::digest::{expected_response, ha1, Algorithm};

fn operator_endpoint(now: Instant) -> Endpoint {
    let mut ep = Endpoint::new(
        EndpointConfig {
            registrar: Some(RegistrarSetup {
                registrar: crate::sip::registrar::RegistrarConfig::default(),
                digest: crate::sip::digest::DigestConfig::new("hotline"),
                feature_codes: vec![("*1".into(), "Available".into())],
            }),
            ..EndpointConfig::default()
        },
        StdRng::seed_from_u64(11),
        now,
        WallClock::anchor(now, std::time::SystemTime::UNIX_EPOCH),
    );
    ep.set_operator_credentials(
        [(
            "anna".to_string(),
            Ha1Set::from_password("anna", "hotline", "secret-pass"),
        )]
        .into(),
    );
    ep
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
    use rand::Rng;
    let now = Instant::now();
    let mut ep = operator_endpoint(now);
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
        out.iter().any(
            |o| matches!(o, Output::FeatureCode { user, code } if user == "anna" && code == "*1")
        ),
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
    let now = Instant::now();
    let mut ep = operator_endpoint(now);
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let phone: SocketAddr = "127.0.0.1:5062".parse().unwrap();
    let peer = Peer {
        link: Link::Udp(0),
        remote: phone,
        local,
    };
    let leg = ep.offer_call(
        now,
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

/// While the media clock is overloaded a new INVITE gets 503 with Retry-After and no
/// media is asked for; a call already in progress is untouched, and once the clock
/// has recovered the next INVITE is taken.
#[test]
fn overload_refuses_new_invites_before_media_and_spares_calls_in_progress() {
    let now = Instant::now();
    let mut ep = Endpoint::new(
        EndpointConfig::default(),
        StdRng::seed_from_u64(3),
        now,
        WallClock::anchor(now, std::time::SystemTime::UNIX_EPOCH),
    );
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let caller: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let invite = |n: u32| {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        format!(
            "INVITE sip:hotline@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKov{n}\r\nMax-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{n}\r\nTo: <sip:hotline@127.0.0.1>\r\nCall-ID: ov-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    let allocates = |out: &[Output]| {
        out.iter()
            .filter(|o| matches!(o, Output::Media(MediaCommand::Allocate { .. })))
            .count()
    };
    ep.handle_datagram(now, Link::Udp(0), local, caller, invite(1).as_bytes());
    let out = drain(&mut ep);
    assert_eq!(allocates(&out), 1, "{out:?}");
    assert_eq!(ep.active_calls(), 1);

    ep.set_overloaded(true);
    for n in 2..5 {
        ep.handle_datagram(now, Link::Udp(0), local, caller, invite(n).as_bytes());
        let out = drain(&mut ep);
        assert_eq!(allocates(&out), 0, "no media for a refused call: {out:?}");
        let responses = sent(&out);
        let refusal = responses.last().expect("a response");
        assert!(refusal.starts_with("SIP/2.0 503"), "{refusal}");
        assert!(refusal.contains("\r\nRetry-After: 10\r\n"), "{refusal}");
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Call(CallEvent::Ended {
                    reason: EndReason::RejectedOverload,
                    ..
                })
            )),
            "{out:?}"
        );
    }
    assert_eq!(ep.stats().overload, 3);
    assert_eq!(ep.active_calls(), 1, "the call in progress goes on");
    assert!(ep.calls.contains_key(&1));

    ep.set_overloaded(false);
    ep.handle_datagram(now, Link::Udp(0), local, caller, invite(5).as_bytes());
    assert_eq!(allocates(&drain(&mut ep)), 1);
    assert_eq!(ep.active_calls(), 2);
    assert_eq!(ep.stats().overload, 3);
}
