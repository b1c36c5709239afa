//! SDP offer/answer (RFC 3264 / RFC 4566) for one audio stream.
//!
//! Owns reading a peer's offer or answer (with ezk-sdp-types) into the few facts the
//! media layer needs, choosing the codec, and writing our own offers and answers. It
//! must not open sockets; the addresses it writes are given to it.

pub mod sdes;

use crate::call::Codec;
use ezk_sdp_types::{Direction, SessionDescription, TaggedAddress, TransportProtocol};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Payload type we offer for telephone-event (RFC 4733) when we make the offer.
pub const OUR_TELEPHONE_EVENT_PT: u8 = 101;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaDirection {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl MediaDirection {
    fn reversed(self) -> MediaDirection {
        match self {
            MediaDirection::SendOnly => MediaDirection::RecvOnly,
            MediaDirection::RecvOnly => MediaDirection::SendOnly,
            d => d,
        }
    }

    fn attr(self) -> &'static str {
        match self {
            MediaDirection::SendRecv => "sendrecv",
            MediaDirection::SendOnly => "sendonly",
            MediaDirection::RecvOnly => "recvonly",
            MediaDirection::Inactive => "inactive",
        }
    }

    /// True when the peer does not want to receive our audio (hold).
    pub fn peer_holds(self) -> bool {
        matches!(self, MediaDirection::SendOnly | MediaDirection::Inactive)
    }
}

/// What we take from a peer's SDP.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteMedia {
    /// Where to send RTP; None when the peer gave address 0.0.0.0 (old-style hold).
    pub rtp_addr: Option<SocketAddr>,
    /// G.711 codecs offered, in the peer's order.
    pub codecs: Vec<Codec>,
    pub telephone_event_pt: Option<u8>,
    pub ptime_ms: Option<u32>,
    pub direction: MediaDirection,
    /// Index of the audio m-line we use, and how many m-lines there were in total.
    pub audio_index: usize,
    pub media_count: usize,
    /// Media type and protocol of each m-line, for rejecting the others in an answer.
    pub lines: Vec<(String, String, Vec<u8>)>,
    /// The audio m-line is RTP/SAVP (SRTP only), not RTP/AVP.
    pub savp: bool,
    /// SDES crypto lines of the audio m-line.
    pub crypto: sdes::RemoteCrypto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdpError {
    Unparsable(String),
    NoAudio,
    NoCommonCodec,
}

impl std::fmt::Display for SdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SdpError::Unparsable(e) => write!(f, "unparsable SDP: {e}"),
            SdpError::NoAudio => f.write_str("no usable RTP/AVP or RTP/SAVP audio stream"),
            SdpError::NoCommonCodec => f.write_str("no common codec"),
        }
    }
}

pub fn parse(body: &[u8]) -> Result<RemoteMedia, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::Unparsable("not UTF-8".into()))?;
    // ezk wants CRLF-terminated lines and a final line end. Crypto lines are read by
    // `sdes` instead (by m-line: 0 is the session level).
    let mut normalized = String::with_capacity(text.len() + 4);
    let mut crypto_lines: Vec<(usize, String)> = Vec::new();
    let mut section = 0;
    // A bare CR ends a line too, as it does for ezk: split otherwise, a crypto line
    // after one would reach ezk's crypto parser, which overflows on key lifetimes.
    for line in text.split(['\r', '\n']) {
        if line.starts_with("m=") {
            section += 1;
        }
        if let Some(value) = line.strip_prefix("a=crypto:") {
            // One more than the cap is enough to refuse an offer with too many.
            let in_section = crypto_lines.iter().filter(|(s, _)| *s == section).count();
            if in_section <= sdes::MAX_CRYPTO_LINES {
                let value: String = value.chars().take(sdes::MAX_CRYPTO_LINE + 1).collect();
                crypto_lines.push((section, value));
            }
            continue;
        }
        if !line.is_empty() {
            normalized.push_str(line);
            normalized.push_str("\r\n");
        }
    }
    let sdp = SessionDescription::parse(&bytesstr::BytesStr::from(normalized))
        .map_err(|e| SdpError::Unparsable(e.to_string()))?;
    let media_count = sdp.media_descriptions.len();
    let lines = sdp
        .media_descriptions
        .iter()
        .map(|m| {
            (
                format!("{:?}", m.media.media_type).to_ascii_lowercase(),
                proto_name(&m.media.proto).to_string(),
                m.media.fmts.clone(),
            )
        })
        .collect();
    let (audio_index, m) = sdp
        .media_descriptions
        .iter()
        .enumerate()
        .find(|(_, m)| {
            m.media.media_type == ezk_sdp_types::MediaType::Audio
                && m.media.port != 0
                && matches!(
                    m.media.proto,
                    TransportProtocol::RtpAvp | TransportProtocol::RtpSavp
                )
        })
        .ok_or(SdpError::NoAudio)?;
    let savp = matches!(m.media.proto, TransportProtocol::RtpSavp);
    let audio_crypto: Vec<String> = crypto_lines
        .into_iter()
        .filter(|(s, _)| *s == audio_index + 1)
        .map(|(_, v)| v)
        .collect();
    let crypto = sdes::read_lines(&audio_crypto);
    let mut codecs = Vec::new();
    let mut telephone_event_pt = None;
    for &pt in &m.media.fmts {
        let map = m.rtpmap.iter().find(|r| r.payload == pt);
        match map {
            Some(r)
                if r.encoding.eq_ignore_ascii_case("telephone-event") && r.clock_rate == 8000 =>
            {
                telephone_event_pt.get_or_insert(pt);
            }
            Some(r) if r.clock_rate == 8000 => {
                if let Some(c) = Codec::from_sdp_name(&r.encoding) {
                    codecs.push(c);
                }
            }
            Some(_) => {}
            None => {
                if let Some(c) = Codec::from_payload_type(pt) {
                    codecs.push(c);
                }
            }
        }
    }
    let conn = m.connection.as_ref().or(sdp.connection.as_ref());
    let ip = conn.and_then(|c| match &c.address {
        TaggedAddress::IP4(a) => Some(IpAddr::V4(*a)),
        TaggedAddress::IP6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let rtp_addr = ip
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, m.media.port));
    let ptime_ms = m
        .attributes
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case("ptime"))
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.trim().parse().ok());
    let dir = if m.direction != Direction::SendRecv {
        m.direction
    } else {
        sdp.direction
    };
    let direction = match dir {
        Direction::SendRecv => MediaDirection::SendRecv,
        Direction::SendOnly => MediaDirection::SendOnly,
        Direction::RecvOnly => MediaDirection::RecvOnly,
        Direction::Inactive => MediaDirection::Inactive,
    };
    let direction = if ip.is_some_and(|i| i.is_unspecified()) {
        MediaDirection::SendOnly // RFC 2543 hold: c=0.0.0.0
    } else {
        direction
    };
    Ok(RemoteMedia {
        rtp_addr,
        codecs,
        telephone_event_pt,
        ptime_ms,
        direction,
        audio_index,
        media_count,
        lines,
        savp,
        crypto,
    })
}

fn proto_name(p: &TransportProtocol) -> &'static str {
    match p {
        TransportProtocol::RtpAvp => "RTP/AVP",
        TransportProtocol::RtpAvpf => "RTP/AVPF",
        TransportProtocol::RtpSavp => "RTP/SAVP",
        TransportProtocol::RtpSavpf => "RTP/SAVPF",
        TransportProtocol::UdpTlsRtpSavp => "UDP/TLS/RTP/SAVP",
        TransportProtocol::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
        _ => "RTP/AVP",
    }
}

/// Our preferred codec among those offered.
pub fn choose_codec(offer: &RemoteMedia, preference: &[Codec]) -> Result<Codec, SdpError> {
    preference
        .iter()
        .copied()
        .find(|c| offer.codecs.contains(c))
        .ok_or(SdpError::NoCommonCodec)
}

/// Identity of our SDP across offers/answers of one dialog (RFC 4566 o= line).
#[derive(Debug, Clone, Copy)]
pub struct SdpOrigin {
    pub session_id: u64,
    pub version: u64,
}

fn header(out: &mut String, origin: SdpOrigin, ip: IpAddr) {
    let fam = if ip.is_ipv6() { "IP6" } else { "IP4" };
    let _ = write!(
        out,
        "v=0\r\no=- {} {} IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\n",
        origin.session_id, origin.version
    );
}

/// The answer to `offer`: the chosen codec, telephone-event if offered, ptime mirrored,
/// direction reversed, other m-lines refused with port 0 (RFC 3264 §6); with `srtp`,
/// our crypto line in the offer's profile.
pub fn answer(
    offer: &RemoteMedia,
    codec: Codec,
    origin: SdpOrigin,
    ip: IpAddr,
    port: u16,
    srtp: Option<&sdes::LocalCrypto>,
) -> String {
    let profile = srtp.map_or("RTP/AVP", |c| c.profile());
    let mut out = String::with_capacity(300);
    header(&mut out, origin, ip);
    for (i, (kind, proto, fmts)) in offer.lines.iter().enumerate() {
        if i != offer.audio_index {
            let fmt = fmts.first().copied().unwrap_or(0);
            let _ = write!(out, "m={kind} 0 {proto} {fmt}\r\n");
            continue;
        }
        let pt = codec.payload_type();
        match offer.telephone_event_pt {
            Some(te) => {
                let _ = write!(out, "m=audio {port} {profile} {pt} {te}\r\n");
                let _ = write!(out, "a=rtpmap:{pt} {}/8000\r\n", codec.sdp_name());
                let _ = write!(
                    out,
                    "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
                );
            }
            None => {
                let _ = write!(out, "m=audio {port} {profile} {pt}\r\n");
                let _ = write!(out, "a=rtpmap:{pt} {}/8000\r\n", codec.sdp_name());
            }
        }
        let _ = write!(out, "a=ptime:{}\r\n", offer.ptime_ms.unwrap_or(20));
        let _ = write!(out, "a={}\r\n", offer.direction.reversed().attr());
        if let Some(c) = srtp {
            out.push_str(&c.attribute());
        }
    }
    out
}

/// Our offer (INVITE without SDP, or calls we place): every codec we support, in our
/// order of preference, plus telephone-event; with `srtp`, our crypto line.
pub fn offer(
    preference: &[Codec],
    telephone_event: bool,
    origin: SdpOrigin,
    ip: IpAddr,
    port: u16,
    srtp: Option<&sdes::LocalCrypto>,
) -> String {
    let mut out = String::with_capacity(300);
    header(&mut out, origin, ip);
    let te = OUR_TELEPHONE_EVENT_PT;
    let profile = srtp.map_or("RTP/AVP", |c| c.profile());
    let _ = write!(out, "m=audio {port} {profile}");
    for c in preference {
        let _ = write!(out, " {}", c.payload_type());
    }
    if telephone_event {
        let _ = write!(out, " {te}");
    }
    out.push_str("\r\n");
    for c in preference {
        let _ = write!(
            out,
            "a=rtpmap:{} {}/8000\r\n",
            c.payload_type(),
            c.sdp_name()
        );
    }
    if telephone_event {
        let _ = write!(
            out,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        );
    }
    out.push_str("a=ptime:20\r\na=sendrecv\r\n");
    if let Some(c) = srtp {
        out.push_str(&c.attribute());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOFTPHONE: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 9 8 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:30\r\nm=video 5000 RTP/AVP 31\r\n";

    #[test]
    fn reads_a_softphone_offer() {
        let o = parse(SOFTPHONE.as_bytes()).unwrap();
        assert_eq!(o.rtp_addr, Some("192.0.2.5:4000".parse().unwrap()));
        assert_eq!(o.codecs, vec![Codec::Pcma, Codec::Pcmu]);
        assert_eq!(o.telephone_event_pt, Some(101));
        assert_eq!(o.ptime_ms, Some(30));
        assert_eq!(o.media_count, 2);
    }

    #[test]
    fn answer_uses_our_preference_mirrors_ptime_and_refuses_video() {
        let o = parse(SOFTPHONE.as_bytes()).unwrap();
        let c = choose_codec(&o, &[Codec::Pcmu, Codec::Pcma]).unwrap();
        assert_eq!(c, Codec::Pcmu);
        let a = answer(
            &o,
            c,
            SdpOrigin {
                session_id: 7,
                version: 1,
            },
            "127.0.0.1".parse().unwrap(),
            20000,
            None,
        );
        assert!(a.contains("m=audio 20000 RTP/AVP 0 101\r\n"), "{a}");
        assert!(a.contains("a=ptime:30\r\n"));
        assert!(a.contains("m=video 0 RTP/AVP 31\r\n"));
        let back = parse(a.as_bytes()).unwrap();
        assert_eq!(back.codecs, vec![Codec::Pcmu]);
    }

    #[test]
    fn no_common_codec_and_static_payloads() {
        let g729 = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n";
        let o = parse(g729.as_bytes()).unwrap();
        assert_eq!(
            choose_codec(&o, &[Codec::Pcmu, Codec::Pcma]),
            Err(SdpError::NoCommonCodec)
        );
        let lf_only =
            "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\nm=audio 4000 RTP/AVP 0\n";
        assert_eq!(parse(lf_only.as_bytes()).unwrap().codecs, vec![Codec::Pcmu]);
    }

    #[test]
    fn hold_directions() {
        let hold = "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let o = parse(hold.as_bytes()).unwrap();
        assert!(o.direction.peer_holds());
        assert_eq!(o.rtp_addr, None);
        let sendonly = SOFTPHONE.replace("a=ptime:30\r\n", "a=ptime:30\r\na=sendonly\r\n");
        let o = parse(sendonly.as_bytes()).unwrap();
        assert_eq!(o.direction, MediaDirection::SendOnly);
        let a = answer(
            &o,
            Codec::Pcma,
            SdpOrigin {
                session_id: 1,
                version: 2,
            },
            "::1".parse().unwrap(),
            20002,
            None,
        );
        assert!(a.contains("a=recvonly") && a.contains("IN IP6 ::1"), "{a}");
    }

    const SRTP_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eAQIDBAUGBwgJCgsMDQ4PEBES\r\na=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e|2^31\r\n";

    #[test]
    fn reads_an_srtp_offer_and_answers_it_with_our_key() {
        let o = parse(SRTP_OFFER.as_bytes()).unwrap();
        assert!(o.savp);
        assert!(
            matches!(o.crypto, sdes::RemoteCrypto::Usable { tag: 2, .. }),
            "{:?}",
            o.crypto
        );
        let ours = sdes::LocalCrypto {
            tag: 2,
            key: crate::call::SrtpMasterKey::new([7; 16], [8; 14]),
            savp: o.savp,
        };
        let origin = SdpOrigin {
            session_id: 1,
            version: 1,
        };
        let a = answer(
            &o,
            Codec::Pcmu,
            origin,
            "127.0.0.1".parse().unwrap(),
            20000,
            Some(&ours),
        );
        assert!(a.contains("m=audio 20000 RTP/SAVP 0 101\r\n"), "{a}");
        assert!(
            a.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{a}"
        );
        let back = parse(a.as_bytes()).unwrap();
        assert_eq!(
            back.crypto,
            sdes::RemoteCrypto::Usable {
                tag: 2,
                key: ours.key.clone()
            }
        );
        // A best-effort offer: RTP/AVP with our line.
        let best = sdes::LocalCrypto {
            savp: false,
            ..ours
        };
        let off = offer(
            &[Codec::Pcmu],
            true,
            origin,
            "127.0.0.1".parse().unwrap(),
            20002,
            Some(&best),
        );
        assert!(off.contains("m=audio 20002 RTP/AVP 0 101\r\n"), "{off}");
        assert!(!parse(off.as_bytes()).unwrap().savp);
        // Crypto lines of another m-line or of the session are not the audio's.
        let video = SOFTPHONE.to_string()
            + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e\r\n";
        assert_eq!(
            parse(video.as_bytes()).unwrap().crypto,
            sdes::RemoteCrypto::None
        );
    }

    #[test]
    fn a_crypto_line_after_a_bare_cr_is_read_here_not_by_ezk() {
        // Found by the sdp fuzz target: ezk took the bare CR as a line end and parsed
        // the crypto line itself, overflowing on `|2^61`.
        let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/SAVP 0\r\na=recvonly\ra=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e|2^61\r\n";
        let o = parse(offer.as_bytes()).unwrap();
        assert!(
            !matches!(o.crypto, sdes::RemoteCrypto::None),
            "the crypto line is seen: {:?}",
            o.crypto
        );
    }

    #[test]
    fn hostile_crypto_lines_never_break_the_parse() {
        // ezk-sdp-types would overflow on 2^40 (a panic in a debug build).
        let lifetimes = SRTP_OFFER.replace("|2^31", "|2^40");
        let o = parse(lifetimes.as_bytes()).unwrap();
        assert!(
            matches!(o.crypto, sdes::RemoteCrypto::Usable { tag: 2, .. }),
            "{:?}",
            o.crypto
        );
        let garbage = SRTP_OFFER.replace("|2^31", "|2^99999999999999999999|x:y;;;");
        assert!(parse(garbage.as_bytes()).is_ok());
        let mut many = SOFTPHONE.replace("m=video 5000 RTP/AVP 31\r\n", "");
        for i in 0..10_000 {
            many.push_str(&format!(
                "a=crypto:{i} AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
                "A".repeat(300)
            ));
        }
        let o = parse(many.as_bytes()).unwrap();
        assert!(
            matches!(&o.crypto, sdes::RemoteCrypto::Unusable { why, .. } if why.contains("crypto lines")),
            "{:?}",
            o.crypto
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"hello").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
    }
}
