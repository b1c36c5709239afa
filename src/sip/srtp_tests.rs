//! SDES through the endpoint (sans-IO): which legs get a crypto line, what reaches
//! `MediaCommand::Start`, and what is refused, on TLS and plain links.

use super::*;
use crate::call::SrtpMasterKey;
use crate::config::SrtpMode;
use crate::sdp::sdes::RemoteCrypto;

const LOCAL: &str = "127.0.0.1:5061";
const PHONE: &str = "127.0.0.1:5062";
/// 30 bytes 01..1e.
const PHONE_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e";

fn phone_key() -> SrtpMasterKey {
    let all: Vec<u8> = (1..=30).collect();
    SrtpMasterKey::from_concatenated(&all.try_into().unwrap())
}

/// An endpoint whose keys count up: 0x10.., 0x11.., ...
fn endpoint(mode: SrtpMode, now: Instant) -> Endpoint {
    let next = Arc::new(std::sync::atomic::AtomicU8::new(0x10));
    Endpoint::new(
        EndpointConfig {
            srtp: mode,
            srtp_keys: Some(Arc::new(move || {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                SrtpMasterKey::new([b; 16], [b; 14])
            })),
            ..EndpointConfig::default()
        },
        StdRng::seed_from_u64(5),
        now,
        WallClock::anchor(now, std::time::SystemTime::UNIX_EPOCH),
    )
}

fn drain(ep: &mut Endpoint) -> Vec<Output> {
    std::iter::from_fn(|| ep.poll_output()).collect()
}

fn sent(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transmit { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect()
}

fn starts(out: &[Output]) -> Vec<Option<crate::call::SrtpKeys>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(MediaCommand::Start { srtp, .. }) => Some(srtp.clone()),
            _ => None,
        })
        .collect()
}

fn sdp(profile: &str, crypto: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 {profile} 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n{crypto}"
    )
}

fn with_body(head: &str, body: &str) -> String {
    format!(
        "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn invite(transport: &str, body: &str) -> String {
    with_body(
        &format!("INVITE sip:hotline@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {PHONE};branch=z9hG4bKi1\r\nMax-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:hotline@127.0.0.1>\r\nCall-ID: srtp-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{PHONE}>\r\n"),
        body,
    )
}

fn ack(to_tag: &str) -> String {
    format!("ACK sip:hotline@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {PHONE};branch=z9hG4bKa1\r\nMax-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:hotline@127.0.0.1>;tag={to_tag}\r\nCall-ID: srtp-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
}

fn to_tag(response: &str) -> String {
    response
        .split("To: ")
        .nth(1)
        .and_then(|t| t.split("tag=").nth(1))
        .and_then(|t| t.split(['\r', ';']).next())
        .unwrap()
        .to_string()
}

fn body_of(message: &str) -> &str {
    message.split("\r\n\r\n").nth(1).unwrap_or_default()
}

/// A caller's INVITE on `link`: the final response and what media was started.
fn call_in(mode: SrtpMode, link: Link, body: &str) -> (String, Vec<Option<crate::call::SrtpKeys>>) {
    let now = Instant::now();
    let mut ep = endpoint(mode, now);
    let (local, phone) = (LOCAL.parse().unwrap(), PHONE.parse().unwrap());
    let via = link.via_transport();
    ep.handle_datagram(now, link, local, phone, invite(via, body).as_bytes());
    let mut out = drain(&mut ep);
    if let Some(Output::Media(MediaCommand::Allocate { call, .. })) = out
        .iter()
        .find(|o| matches!(o, Output::Media(MediaCommand::Allocate { .. })))
    {
        let call = *call;
        ep.media_allocated(now, call, 30000);
        out = drain(&mut ep);
    }
    let response = sent(&out).pop().expect("a final response");
    if response.starts_with("SIP/2.0 200") {
        ep.handle_datagram(now, link, local, phone, ack(&to_tag(&response)).as_bytes());
        out.extend(drain(&mut ep));
    }
    (response, starts(&out))
}

#[test]
fn a_tls_caller_offering_sdes_gets_our_own_key_and_media_both_keys() {
    let offer = sdp(
        "RTP/SAVP",
        &format!(
            "a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:{PHONE_KEY}{PHONE_KEY}\r\na=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_KEY}\r\n"
        ),
    );
    let (response, starts) = call_in(SrtpMode::Offer, Link::Tls(1), &offer);
    assert!(response.starts_with("SIP/2.0 200"), "{response}");
    let answer = sdp::parse(body_of(&response).as_bytes()).unwrap();
    assert!(answer.savp, "the offer's profile: {response}");
    let ours = SrtpMasterKey::new([0x10; 16], [0x10; 14]);
    assert_eq!(
        answer.crypto,
        RemoteCrypto::Usable {
            tag: 4,
            key: ours.clone()
        }
    );
    assert_eq!(
        starts,
        vec![Some(crate::call::SrtpKeys {
            send: ours,
            receive: phone_key()
        })]
    );
}

#[test]
fn no_crypto_line_ever_leaves_on_a_plain_link_or_with_srtp_off() {
    let avp = sdp(
        "RTP/AVP",
        &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_KEY}\r\n"),
    );
    for (mode, link) in [
        (SrtpMode::Offer, Link::Udp(0)),
        (SrtpMode::Offer, Link::Tcp(1)),
        (SrtpMode::Off, Link::Tls(1)),
    ] {
        let (response, starts) = call_in(mode, link, &avp);
        assert!(response.starts_with("SIP/2.0 200"), "{response}");
        assert!(!response.contains("a=crypto"), "{link:?}: {response}");
        assert!(response.contains("RTP/AVP"), "{response}");
        assert_eq!(starts, vec![None]);
        // RTP/SAVP cannot be answered there.
        let savp = avp.replace("RTP/AVP", "RTP/SAVP");
        let (response, starts) = call_in(mode, link, &savp);
        assert!(response.starts_with("SIP/2.0 488"), "{response}");
        assert!(response.contains("Warning: 399 hotline"), "{response}");
        assert!(starts.is_empty());
    }
}

#[test]
fn bad_sdes_offers_get_488_with_the_reason() {
    for (crypto, why) in [
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQID\r\n", "not 40"),
        (
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e|1:4\r\n",
            "MKI",
        ),
        (
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e UNENCRYPTED_SRTP\r\n",
            "UNENCRYPTED_SRTP",
        ),
    ] {
        let (response, starts) = call_in(SrtpMode::Offer, Link::Tls(1), &sdp("RTP/AVP", crypto));
        assert!(response.starts_with("SIP/2.0 488"), "{response}");
        assert!(response.contains(why), "{why}: {response}");
        assert!(starts.is_empty());
    }
    // Only suites we do not have: best effort falls back to plain, SAVP is refused.
    let foreign = format!("a=crypto:1 AEAD_AES_128_GCM inline:{PHONE_KEY}\r\n");
    let (response, starts) = call_in(SrtpMode::Offer, Link::Tls(1), &sdp("RTP/AVP", &foreign));
    assert!(response.starts_with("SIP/2.0 200") && !response.contains("a=crypto"));
    assert_eq!(starts, vec![None]);
    let (response, _) = call_in(SrtpMode::Offer, Link::Tls(1), &sdp("RTP/SAVP", &foreign));
    assert!(response.starts_with("SIP/2.0 488"), "{response}");
}

/// An operator's phone: the INVITE we send, and what follows the phone's 200.
fn offer_to_operator(mode: SrtpMode, link: Link, answer_body: &str) -> (String, Vec<Output>) {
    let now = Instant::now();
    let mut ep = endpoint(mode, now);
    let (local, phone) = (LOCAL.parse().unwrap(), PHONE.parse().unwrap());
    let peer = Peer {
        link,
        remote: phone,
        local,
    };
    let leg = ep.offer_call(
        now,
        "anna",
        peer,
        "sip:anna@127.0.0.1:5062",
        "",
        "hotline",
        vec![],
    );
    drain(&mut ep);
    ep.media_allocated(now, leg, 30000);
    let out = drain(&mut ep);
    let Some(invite) = sent(&out).pop() else {
        return (String::new(), out);
    };
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for line in invite.lines() {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
            ok.push_str(line);
            ok.push_str("\r\n");
        } else if name == "to" {
            ok.push_str(line);
            ok.push_str(";tag=phone\r\n");
        }
    }
    ok.push_str(&format!("Contact: <sip:anna@{PHONE}>\r\n"));
    let ok = with_body(&ok, answer_body);
    ep.handle_datagram(now, link, local, phone, ok.as_bytes());
    (invite, drain(&mut ep))
}

#[test]
fn operators_over_tls_are_offered_sdes_and_their_answer_keys_the_leg() {
    let crypto = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_KEY}\r\n");
    let (invite, out) = offer_to_operator(SrtpMode::Offer, Link::Tls(1), &sdp("RTP/AVP", &crypto));
    let offer = sdp::parse(body_of(&invite).as_bytes()).unwrap();
    assert!(!offer.savp, "best effort is RTP/AVP: {invite}");
    let ours = SrtpMasterKey::new([0x10; 16], [0x10; 14]);
    assert_eq!(
        offer.crypto,
        RemoteCrypto::Usable {
            tag: 1,
            key: ours.clone()
        }
    );
    assert_eq!(
        starts(&out),
        vec![Some(crate::call::SrtpKeys {
            send: ours,
            receive: phone_key()
        })]
    );
    // "offer": a plain answer is taken as plain RTP.
    let (_, out) = offer_to_operator(SrtpMode::Offer, Link::Tls(1), &sdp("RTP/AVP", ""));
    assert_eq!(starts(&out), vec![None]);
    assert!(!sent(&out).iter().any(|m| m.starts_with("BYE")));
    // Plain links are offered plain RTP.
    let (invite, _) = offer_to_operator(SrtpMode::Offer, Link::Udp(0), &sdp("RTP/AVP", ""));
    assert!(
        invite.starts_with("INVITE") && !invite.contains("a=crypto"),
        "{invite}"
    );
}

#[test]
fn require_refuses_plain_answers_and_plain_links() {
    let (invite, out) = offer_to_operator(SrtpMode::Require, Link::Tls(1), &sdp("RTP/AVP", ""));
    assert!(invite.contains("m=audio 30000 RTP/SAVP"), "{invite}");
    assert!(invite.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    assert!(starts(&out).is_empty(), "no media for a plain answer");
    assert!(
        sent(&out).iter().any(|m| m.starts_with("BYE")),
        "the answered leg is hung up"
    );
    // An answer with a broken key is no better.
    let bad = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQID\r\n";
    let (_, out) = offer_to_operator(SrtpMode::Require, Link::Tls(1), &sdp("RTP/SAVP", bad));
    assert!(sent(&out).iter().any(|m| m.starts_with("BYE")));
    // A phone registered over UDP is not offered the call at all.
    let (invite, out) = offer_to_operator(SrtpMode::Require, Link::Udp(0), "");
    assert!(invite.is_empty());
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Call(CallEvent::Ended { .. }))));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaCommand::Stop { .. }))));
}

#[test]
fn a_reinvite_keeps_our_key_and_may_drop_srtp_on_a_caller_leg() {
    let now = Instant::now();
    let mut ep = endpoint(SrtpMode::Offer, now);
    let (local, phone) = (LOCAL.parse().unwrap(), PHONE.parse().unwrap());
    let link = Link::Tls(1);
    let crypto = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_KEY}\r\n");
    let offer = sdp("RTP/AVP", &crypto);
    ep.handle_datagram(now, link, local, phone, invite("TLS", &offer).as_bytes());
    let call = drain(&mut ep)
        .iter()
        .find_map(|o| match o {
            Output::Media(MediaCommand::Allocate { call, .. }) => Some(*call),
            _ => None,
        })
        .unwrap();
    ep.media_allocated(now, call, 30000);
    let ok = sent(&drain(&mut ep)).pop().unwrap();
    let tag = to_tag(&ok);
    ep.handle_datagram(now, link, local, phone, ack(&tag).as_bytes());
    let first = starts(&drain(&mut ep));
    assert!(first[0].is_some());
    let reinvite = |cseq: u32, body: &str| {
        with_body(
            &format!("INVITE sip:hotline@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {PHONE};branch=z9hG4bKre{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:hotline@127.0.0.1>;tag={tag}\r\nCall-ID: srtp-1\r\nCSeq: {cseq} INVITE\r\nContact: <sip:caller@{PHONE}>\r\n"),
            body,
        )
    };
    // The same offer again (a hold or a refresh): the same keys reach the media layer,
    // which then keeps its SRTP state.
    ep.handle_datagram(now, link, local, phone, reinvite(2, &offer).as_bytes());
    let out = drain(&mut ep);
    let answer = sent(&out).pop().unwrap();
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    assert_eq!(starts(&out), first);
    let ours = SrtpMasterKey::new([0x10; 16], [0x10; 14]);
    assert_eq!(
        sdp::parse(body_of(&answer).as_bytes()).unwrap().crypto,
        RemoteCrypto::Usable { tag: 1, key: ours }
    );
    ep.handle_datagram(now, link, local, phone, ack(&tag).as_bytes());
    drain(&mut ep);
    // A plain re-offer over TLS on a caller's leg: plain from now on.
    ep.handle_datagram(
        now,
        link,
        local,
        phone,
        reinvite(3, &sdp("RTP/AVP", "")).as_bytes(),
    );
    let out = drain(&mut ep);
    let answer = sent(&out).pop().unwrap();
    assert!(
        answer.starts_with("SIP/2.0 200") && !answer.contains("a=crypto"),
        "{answer}"
    );
    assert_eq!(starts(&out), vec![None]);
    ep.handle_datagram(now, link, local, phone, ack(&tag).as_bytes());
    drain(&mut ep);
    // A broken key in a re-offer is refused; the call stays as it was.
    let bad = sdp(
        "RTP/AVP",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQID\r\n",
    );
    ep.handle_datagram(now, link, local, phone, reinvite(4, &bad).as_bytes());
    let out = drain(&mut ep);
    assert!(sent(&out).pop().unwrap().starts_with("SIP/2.0 488"));
    assert!(starts(&out).is_empty());
}
