//! Just enough SIP for a caller over UDP: a lenient reader of the server's messages
//! and the few requests and responses a UAC sends. Hand-written on purpose: the
//! generator must stay independent of the server's own SIP stack, and it only ever
//! reads what one server says to it. Nothing here panics on any input.

use std::fmt::Write as _;
use std::net::SocketAddrV4;

/// One SIP message, borrowed from the datagram it arrived in.
#[derive(Debug)]
pub struct Msg<'a> {
    pub start: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

/// Long names of the compact header forms (RFC 3261 §7.3.3) this reader meets.
fn long_name(name: &str) -> &str {
    match name {
        "i" | "I" => "call-id",
        "f" | "F" => "from",
        "t" | "T" => "to",
        "v" | "V" => "via",
        "m" | "M" => "contact",
        "l" | "L" => "content-length",
        "c" | "C" => "content-type",
        other => other,
    }
}

impl<'a> Msg<'a> {
    /// `None` for anything that is not a plausible SIP message.
    pub fn parse(data: &'a [u8]) -> Option<Msg<'a>> {
        let (head_len, sep_len) = find_head_end(data)?;
        let head = std::str::from_utf8(&data[..head_len]).ok()?;
        let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
        let start = lines.next()?.trim();
        if start.is_empty() {
            return None;
        }
        let mut headers: Vec<(&str, &str)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // Folded continuation: rare, and nothing the caller needs spans lines.
                continue;
            }
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim(), value.trim()));
            if headers.len() > 100 {
                return None;
            }
        }
        let mut body = &data[head_len + sep_len..];
        let msg = Msg {
            start,
            headers,
            body,
        };
        if let Some(len) = msg
            .header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
        {
            body = body.get(..len)?;
        }
        Some(Msg { body, ..msg })
    }

    /// First value of a header, long or compact name, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers(name).next()
    }

    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| long_name(n).eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// Method of a request.
    pub fn method(&self) -> Option<&'a str> {
        let (method, rest) = self.start.split_once(' ')?;
        rest.ends_with("SIP/2.0").then_some(method)
    }

    pub fn call_id(&self) -> Option<&'a str> {
        self.header("call-id")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &'a str)> {
        let (n, m) = self.header("cseq")?.split_once(' ')?;
        Some((n.trim().parse().ok()?, m.trim()))
    }

    /// The branch of the topmost Via.
    pub fn branch(&self) -> Option<&'a str> {
        param(self.header("via")?, "branch")
    }
}

fn find_head_end(data: &[u8]) -> Option<(usize, usize)> {
    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((i, 4));
    }
    data.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2))
}

/// A `;name=value` parameter of a header value (outside the `<...>` of a URI).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let after_uri = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    after_uri.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then_some(v.trim().trim_end_matches(',').trim())
    })
}

/// The URI inside a Contact (or any name-addr) header value.
pub fn uri_of(value: &str) -> Option<&str> {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => Some(&value[a + 1..b]),
        _ => value
            .split(';')
            .next()
            .map(str::trim)
            .filter(|u| !u.is_empty()),
    }
}

/// What the server's SDP answer says about its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredMedia {
    pub addr: SocketAddrV4,
    /// Payload type of the voice codec (0 PCMU or 8 PCMA).
    pub voice_pt: u8,
    pub event_pt: Option<u8>,
}

/// Reads the first audio stream of an SDP answer. Only what this caller offered is
/// accepted: PCMU or PCMA, IPv4, telephone-event at 8 kHz.
pub fn parse_answer(body: &[u8]) -> Result<AnsweredMedia, String> {
    let text = std::str::from_utf8(body).map_err(|_| "SDP is not UTF-8".to_string())?;
    let mut session_ip = None;
    let mut media_ip = None;
    let mut port = None;
    let mut pts: Vec<u8> = Vec::new();
    let mut event_pt = None;
    let mut in_audio = false;
    for line in text.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if port.is_some() {
                break; // only the first audio stream
            }
            let mut f = m.split_whitespace();
            in_audio = f.next() == Some("audio");
            if in_audio {
                port = f.next().and_then(|p| p.parse::<u16>().ok());
                f.next(); // proto
                pts = f.filter_map(|p| p.parse().ok()).collect();
            }
        } else if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            let ip = c.split('/').next().and_then(|a| a.trim().parse().ok());
            if in_audio {
                media_ip = ip;
            } else {
                session_ip = ip;
            }
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            if in_audio {
                let (pt, enc) = map.split_once(' ').unwrap_or((map, ""));
                if enc.eq_ignore_ascii_case("telephone-event/8000") {
                    event_pt = pt.parse().ok();
                }
            }
        }
    }
    let port = port.filter(|p| *p != 0).ok_or("no audio stream")?;
    let ip = media_ip.or(session_ip).ok_or("no IPv4 c= line")?;
    let voice_pt = pts
        .iter()
        .copied()
        .find(|p| *p == 0 || *p == 8)
        .ok_or("neither PCMU nor PCMA answered")?;
    Ok(AnsweredMedia {
        addr: SocketAddrV4::new(ip, port),
        voice_pt,
        event_pt: event_pt.filter(|pt| pts.contains(pt)),
    })
}

/// Identity of one call's dialog from our side.
#[derive(Debug, Clone)]
pub struct Party {
    pub call_id: String,
    pub from: String,
    pub local: SocketAddrV4,
    pub target: String,
}

/// Payload type we offer for telephone-event.
pub const OFFER_EVENT_PT: u8 = 101;

pub fn offer_sdp(rtp: SocketAddrV4, telephone_event: bool, session: u64) -> String {
    let ip = rtp.ip();
    let mut s = format!(
        "v=0\r\no=loadgen {session} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0 8",
        rtp.port()
    );
    if telephone_event {
        let _ = write!(s, " {OFFER_EVENT_PT}");
    }
    s.push_str("\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n");
    if telephone_event {
        let _ = write!(
            s,
            "a=rtpmap:{OFFER_EVENT_PT} telephone-event/8000\r\na=fmtp:{OFFER_EVENT_PT} 0-16\r\n"
        );
    }
    s.push_str("a=ptime:20\r\na=sendrecv\r\n");
    s
}

pub fn invite(p: &Party, branch: &str, sdp: &str) -> Vec<u8> {
    format!(
        "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <{target}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{local}>\r\nUser-Agent: hotline-loadgen\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
        target = p.target,
        local = p.local,
        from = p.from,
        cid = p.call_id,
        len = sdp.len(),
    )
    .into_bytes()
}

/// ACK of a non-2xx final response: same branch as the INVITE, To from the response.
pub fn ack_non_2xx(p: &Party, branch: &str, to: &str) -> Vec<u8> {
    format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        target = p.target,
        local = p.local,
        from = p.from,
        cid = p.call_id,
    )
    .into_bytes()
}

/// ACK or BYE inside the dialog: to the remote target, a new branch.
pub fn in_dialog(
    p: &Party,
    method: &str,
    cseq: u32,
    remote_target: &str,
    to: &str,
    branch: &str,
) -> Vec<u8> {
    format!(
        "{method} {remote_target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        local = p.local,
        from = p.from,
        cid = p.call_id,
    )
    .into_bytes()
}

/// A response to a request the server sent, echoing its Via, From, To, Call-ID, CSeq.
pub fn response(req: &Msg, code: u16, reason: &str) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for via in req.headers("via") {
        let _ = write!(s, "Via: {via}\r\n");
    }
    for name in ["from", "to", "call-id", "cseq"] {
        if let Some(v) = req.header(name) {
            let _ = write!(s, "{name}: {v}\r\n");
        }
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKa;rport=5000\r\nFrom: <sip:c@127.0.0.1>;tag=x\r\nTo: <sip:hotline@127.0.0.1>;tag=srv1\r\ni: abc\r\nCSeq: 1 INVITE\r\nContact: <sip:hotline@127.0.0.1:5060;transport=udp>\r\nContent-Type: application/sdp\r\nl: 129\r\n\r\nv=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 20002 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\nEXTRA";

    #[test]
    fn reads_a_200_with_compact_headers_and_its_answer() {
        let m = Msg::parse(OK.as_bytes()).unwrap();
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.call_id(), Some("abc"));
        assert_eq!(m.cseq(), Some((1, "INVITE")));
        assert_eq!(m.branch(), Some("z9hG4bKa"));
        assert_eq!(param(m.header("to").unwrap(), "tag"), Some("srv1"));
        assert_eq!(
            uri_of(m.header("contact").unwrap()),
            Some("sip:hotline@127.0.0.1:5060;transport=udp")
        );
        assert!(!m.body.ends_with(b"EXTRA"), "body cut at Content-Length");
        let a = parse_answer(m.body).unwrap();
        assert_eq!(a.addr, "127.0.0.1:20002".parse().unwrap());
        assert_eq!(a.voice_pt, 8);
        assert_eq!(a.event_pt, Some(101));
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
            b"SIP/2.0 200 OK\r\nl: 99\r\n\r\nshort",
            &[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n'],
        ] {
            assert!(Msg::parse(bad).is_none(), "{bad:?}");
        }
        assert!(parse_answer(b"v=0\r\nm=video 5 RTP/AVP 31\r\n").is_err());
        assert!(parse_answer(b"c=IN IP4 1.2.3.4\r\nm=audio 5 RTP/AVP 9\r\n").is_err());
        assert!(parse_answer(&[0xff; 10]).is_err());
    }

    #[test]
    fn a_response_echoes_every_via_in_order() {
        let bye = "BYE sip:caller@127.0.0.1:5000 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\nFrom: <sip:h@x>;tag=a\r\nTo: <sip:c@y>;tag=b\r\nCall-ID: q\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n";
        let m = Msg::parse(bye.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("BYE"));
        let r = String::from_utf8(response(&m, 200, "OK")).unwrap();
        let first = r.find("z9hG4bK1").unwrap();
        let second = r.find("z9hG4bK2").unwrap();
        assert!(first < second, "{r}");
        assert!(r.contains("cseq: 7 BYE\r\n"), "{r}");
    }
}
