//! Validated SIP requests and responses, and the builders for what we send.
//!
//! Owns the decision whether a framed message is acceptable (RFC 3261 §8.2 order:
//! syntax 400 / 505, then method 405 / 501, then URI scheme 416, Require 420, body type
//! 415, Accept 406) and the exact bytes of every message the hotline sends. The typed
//! parser from rsipstack is run as a second gate on everything we accept; our own
//! checks cover what it lets through (see docs/sip.md). Must not keep state.

use super::headers::{self, NameAddr, Via};
use super::raw::{split_comma_values, RawMessage, StartLine};
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Register,
    /// Known to SIP but not served here: answered 405 with Allow.
    Unsupported(String),
    /// Not a method we know: answered 501.
    Extension(String),
}

pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REGISTER";

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "REGISTER" => Method::Register,
            "SUBSCRIBE" | "NOTIFY" | "PUBLISH" | "MESSAGE" | "REFER" | "PRACK" | "UPDATE" => {
                Method::Unsupported(s.to_string())
            }
            other => Method::Extension(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Register => "REGISTER",
            Method::Unsupported(s) | Method::Extension(s) => s,
        }
    }
}

/// A refusal: the status to answer with (None = drop silently) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: Option<u16>,
    pub reason: String,
    pub extra_headers: Vec<(String, String)>,
}

impl Reject {
    pub fn bad(reason: impl Into<String>) -> Reject {
        Reject {
            status: Some(400),
            reason: reason.into(),
            extra_headers: Vec::new(),
        }
    }

    fn with(status: u16, reason: &str, extra: &[(&str, &str)]) -> Reject {
        Reject {
            status: Some(status),
            reason: reason.to_string(),
            extra_headers: extra
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }
}

/// What both requests and responses must carry, checked once.
#[derive(Debug, Clone)]
pub struct Common {
    pub vias: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: String,
    pub contact: Option<NameAddr>,
    /// Record-Route entries, one per hop, as written.
    pub record_route: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub common: Common,
    pub raw: RawMessage,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub code: u16,
    pub common: Common,
    pub raw: RawMessage,
}

impl Request {
    pub fn top_via(&self) -> &Via {
        &self.common.vias[0]
    }
    pub fn body(&self) -> &[u8] {
        &self.raw.body
    }
    pub fn content_type(&self) -> Option<&str> {
        self.raw.header("content-type")
    }
}

fn single<'a>(raw: &'a RawMessage, name: &str) -> Result<&'a str, Reject> {
    match raw.count(name) {
        0 => Err(Reject::bad(format!("Missing {name}"))),
        1 => Ok(raw.header(name).unwrap_or_default()),
        _ => Err(Reject::bad(format!("Duplicate {name}"))),
    }
}

fn parse_common(raw: &RawMessage) -> Result<Common, Reject> {
    let mut vias = Vec::new();
    for line in raw.headers_named("via") {
        for hop in split_comma_values(line) {
            vias.push(headers::parse_via(hop).map_err(|e| Reject::bad(format!("Bad Via: {e}")))?);
        }
    }
    if vias.is_empty() {
        return Err(Reject::bad("Missing Via"));
    }
    let from = headers::parse_name_addr(single(raw, "from")?)
        .map_err(|e| Reject::bad(format!("Bad From: {e}")))?;
    let to = headers::parse_name_addr(single(raw, "to")?)
        .map_err(|e| Reject::bad(format!("Bad To: {e}")))?;
    let call_id = single(raw, "call-id")?.to_string();
    if call_id.is_empty() || call_id.contains([' ', '\t']) {
        return Err(Reject::bad("Bad Call-ID"));
    }
    let cseq_value = single(raw, "cseq")?;
    let (num, method) = cseq_value
        .split_once([' ', '\t'])
        .ok_or_else(|| Reject::bad("Bad CSeq"))?;
    let num = num.trim();
    // RFC 3261 §8.1.1.5: the sequence number must be below 2^31.
    let cseq: u32 = num
        .parse()
        .ok()
        .filter(|n| *n < 1 << 31 && num.len() <= 10)
        .ok_or_else(|| Reject::bad("CSeq Number Out Of Range"))?;
    let cseq_method = method.trim().to_string();
    if cseq_method.is_empty() || !cseq_method.bytes().all(super::raw::is_token_char) {
        return Err(Reject::bad("Bad CSeq Method"));
    }
    let mut contact = None;
    for line in raw.headers_named("contact") {
        for v in split_comma_values(line) {
            if v == "*" {
                continue;
            }
            let na = headers::parse_name_addr(v)
                .map_err(|e| Reject::bad(format!("Bad Contact: {e}")))?;
            contact.get_or_insert(na);
        }
    }
    let mut record_route = Vec::new();
    for name in ["record-route", "route"] {
        for line in raw.headers_named(name) {
            for v in split_comma_values(line) {
                headers::parse_name_addr(v).map_err(|e| Reject::bad(format!("Bad {name}: {e}")))?;
                if name == "record-route" {
                    record_route.push(v.to_string());
                }
            }
        }
    }
    if raw.count("max-forwards") > 1 {
        return Err(Reject::bad("Duplicate Max-Forwards"));
    }
    if let Some(mf) = raw.header("max-forwards") {
        let ok = !mf.is_empty()
            && mf.len() <= 5
            && mf.bytes().all(|b| b.is_ascii_digit())
            && mf.parse::<u32>().is_ok_and(|n| n <= 255);
        if !ok {
            return Err(Reject::bad("Bad Max-Forwards"));
        }
    }
    for e in raw.headers_named("expires") {
        let ok = !e.is_empty()
            && e.len() <= 10
            && e.bytes().all(|b| b.is_ascii_digit())
            && e.parse::<u64>().is_ok_and(|n| n <= u32::MAX as u64);
        if !ok {
            return Err(Reject::bad("Bad Expires"));
        }
    }
    if let Some(date) = raw.header("date") {
        // RFC 3261 §20.17: SIP-date is always in GMT.
        if !date.trim_end().ends_with(" GMT") {
            return Err(Reject::bad("Bad Date"));
        }
    }
    Ok(Common {
        vias,
        from,
        to,
        call_id,
        cseq,
        cseq_method,
        contact,
        record_route,
    })
}

/// Validates a framed request. `Err` carries the response to send (or None to drop).
pub fn validate_request(raw: RawMessage) -> Result<Request, Box<(Reject, RawMessage)>> {
    match validate_request_inner(&raw) {
        Ok((method, uri, common)) => Ok(Request {
            method,
            uri,
            common,
            raw,
        }),
        Err(r) => Err(Box::new((r, raw))),
    }
}

fn validate_request_inner(raw: &RawMessage) -> Result<(Method, String, Common), Reject> {
    let StartLine::Request {
        method,
        uri,
        version,
    } = &raw.start
    else {
        return Err(Reject::bad("Not A Request"));
    };
    if version != "SIP/2.0" {
        return Err(Reject::with(505, "Version Not Supported", &[]));
    }
    let common = parse_common(raw)?;
    if &common.cseq_method != method {
        return Err(Reject::bad("CSeq Method Does Not Match"));
    }
    if uri.starts_with('<') || uri.contains(['<', '>']) {
        return Err(Reject::bad("Bad Request-URI"));
    }
    let sip_uri =
        headers::parse_sip_uri(uri).map_err(|e| Reject::bad(format!("Bad Request-URI: {e}")))?;
    if sip_uri.as_ref().is_some_and(|u| u.has_headers) {
        return Err(Reject::bad("Headers Not Allowed In Request-URI"));
    }
    let m = Method::parse(method);
    match &m {
        Method::Extension(_) => {
            return Err(Reject::with(501, "Not Implemented", &[("Allow", ALLOW)]))
        }
        Method::Unsupported(_) => {
            return Err(Reject::with(405, "Method Not Allowed", &[("Allow", ALLOW)]))
        }
        _ => {}
    }
    // Only the typed parser's verdict is used here; its values are not trusted further.
    if rsipstack::sip::SipMessage::try_from(raw.normalized_bytes().as_slice()).is_err() {
        return Err(Reject::bad("Malformed Message"));
    }
    if sip_uri.is_none() {
        return Err(Reject::with(416, "Unsupported URI Scheme", &[]));
    }
    if !matches!(m, Method::Ack | Method::Cancel) {
        let unsupported: Vec<&str> = raw
            .headers_named("require")
            .flat_map(split_comma_values)
            .filter(|t| !t.is_empty())
            .collect();
        if !unsupported.is_empty() {
            let list = unsupported.join(", ");
            return Err(Reject {
                status: Some(420),
                reason: "Bad Extension".into(),
                extra_headers: vec![("Unsupported".into(), list)],
            });
        }
    }
    if !raw.body.is_empty() {
        let ctype = raw.header("content-type").map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        let acceptable: &[&str] = match m {
            Method::Invite | Method::Ack => &["application/sdp"],
            Method::Info => &["application/dtmf-relay", "application/dtmf"],
            _ => &[],
        };
        match ctype {
            Some(ct) if acceptable.contains(&ct.as_str()) => {}
            _ if acceptable.is_empty() => {}
            _ => {
                return Err(Reject::with(
                    415,
                    "Unsupported Media Type",
                    &[("Accept", &acceptable.join(", "))],
                ))
            }
        }
    }
    if m == Method::Invite {
        let accepts: Vec<String> = raw
            .headers_named("accept")
            .flat_map(split_comma_values)
            .map(|a| {
                a.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|a| !a.is_empty())
            .collect();
        if !accepts.is_empty()
            && !accepts
                .iter()
                .any(|a| a == "application/sdp" || a == "application/*" || a == "*/*")
        {
            return Err(Reject::with(
                406,
                "Not Acceptable",
                &[("Accept", "application/sdp")],
            ));
        }
    }
    Ok((m, uri.clone(), common))
}

/// Validates a framed response; invalid responses are dropped (RFC 4475 §3.1.2.5).
pub fn validate_response(raw: RawMessage) -> Option<Response> {
    let StartLine::Response { version, code, .. } = &raw.start else {
        return None;
    };
    if version != "SIP/2.0" {
        return None;
    }
    let code = u16::try_from(*code).ok()?;
    let common = parse_common(&raw).ok()?;
    Some(Response { code, common, raw })
}

pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        _ => "Unknown",
    }
}

/// Where the request came from, for RFC 3261 §18.2.1 `received` and RFC 3581 `rport`.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub addr: std::net::SocketAddr,
}

/// Builds a response to `raw` by copying Via, From, To, Call-ID and CSeq as they were
/// received (RFC 3261 §8.2.6.2). Works on messages the validator refused, so that a 400
/// can still reach the sender. `to_tag` is added when the To header has none.
pub fn build_response(
    raw: &RawMessage,
    source: Source,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra_headers: &[(String, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    let mut first_via = true;
    for h in raw.headers.iter().filter(|h| h.name == "via") {
        if first_via {
            first_via = false;
            out.push_str("Via: ");
            out.push_str(&stamp_top_via(&h.value, source));
            out.push_str("\r\n");
        } else {
            let _ = write!(out, "Via: {}\r\n", h.value);
        }
    }
    for (name, label) in [
        ("from", "From"),
        ("to", "To"),
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
    ] {
        if let Some(v) = raw.header(name) {
            out.push_str(label);
            out.push_str(": ");
            out.push_str(v);
            if name == "to" && code > 100 {
                if let Some(tag) = to_tag {
                    let has_tag = headers::parse_name_addr(v)
                        .ok()
                        .and_then(|n| n.tag().map(|_| ()))
                        .is_some();
                    if !has_tag {
                        let _ = write!(out, ";tag={tag}");
                    }
                }
            }
            out.push_str("\r\n");
        }
    }
    if (200..300).contains(&code) || code < 200 {
        for rr in raw.headers.iter().filter(|h| h.name == "record-route") {
            let _ = write!(out, "Record-Route: {}\r\n", rr.value);
        }
    }
    for (n, v) in extra_headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let mut bytes = out.into_bytes();
    finish_message(&mut bytes, body);
    bytes
}

/// Adds `received` (and fills `rport`) on the top Via, RFC 3261 §18.2.1 / RFC 3581.
fn stamp_top_via(value: &str, source: Source) -> String {
    let hops = split_comma_values(value);
    let top = hops.first().copied().unwrap_or(value);
    let rest: Vec<&str> = hops.iter().skip(1).copied().collect();
    let ip = source.addr.ip();
    let parsed = headers::parse_via(top).ok();
    let mut stamped = String::with_capacity(top.len() + 40);
    let wants_rport = parsed.as_ref().is_some_and(|v| v.has_rport());
    for (i, part) in super::raw::split_comma_values(top)[0]
        .split(';')
        .enumerate()
    {
        let name = part.split('=').next().unwrap_or_default().trim();
        if i > 0 && (name.eq_ignore_ascii_case("rport") || name.eq_ignore_ascii_case("received")) {
            continue;
        }
        if i > 0 {
            stamped.push(';');
        }
        stamped.push_str(part.trim());
    }
    let sent_by_is_source = parsed
        .as_ref()
        .and_then(|v| headers::host_ip(&v.host))
        .is_some_and(|h| h == ip);
    if !sent_by_is_source || wants_rport {
        let _ = write!(stamped, ";received={ip}");
    }
    if wants_rport {
        let _ = write!(stamped, ";rport={}", source.addr.port());
    }
    if rest.is_empty() {
        stamped
    } else {
        format!("{stamped}, {}", rest.join(", "))
    }
}

/// Appends Content-Type (if a body), Content-Length and the body.
pub fn finish_message(out: &mut Vec<u8>, body: Option<(&str, &[u8])>) {
    match body {
        Some((ctype, b)) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
}

/// Where a response to a request received over UDP goes: RFC 3261 §18.2.2 with RFC
/// 3581. Over a connection, the same connection is used instead.
pub fn udp_response_target(via: &Via, source: std::net::SocketAddr) -> std::net::SocketAddr {
    if via.has_rport() {
        return source;
    }
    let port = via.port.unwrap_or(5060);
    std::net::SocketAddr::new(source.ip(), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::raw::frame_datagram;

    fn req(text: &str) -> Result<Request, u16> {
        let text = if text.ends_with("\n\n") {
            text.to_string()
        } else {
            format!("{text}\n")
        };
        let raw = frame_datagram(text.replace('\n', "\r\n").as_bytes()).map_err(|_| 0u16)?;
        validate_request(raw).map_err(|e| e.0.status.unwrap_or(0))
    }

    const BASE: &str = "OPTIONS sip:hotline@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\nFrom: <sip:a@127.0.0.1>;tag=1\nTo: <sip:hotline@127.0.0.1>\nCall-ID: c1\nCSeq: 1 OPTIONS\nMax-Forwards: 70\n";

    #[test]
    fn accepts_plain_options() {
        let r = req(&format!("{BASE}Content-Length: 0\n\n")).unwrap();
        assert_eq!(r.method, Method::Options);
        assert_eq!(r.common.cseq, 1);
    }

    #[test]
    fn refusal_codes() {
        assert_eq!(req(&format!("{BASE}Require: foo\n\n")).unwrap_err(), 420);
        assert_eq!(
            req(&BASE
                .replace("OPTIONS sip", "FOO sip")
                .replace("1 OPTIONS", "1 FOO"))
            .unwrap_err(),
            501
        );
        assert_eq!(
            req(&BASE
                .replace("OPTIONS sip", "SUBSCRIBE sip")
                .replace("1 OPTIONS", "1 SUBSCRIBE"))
            .unwrap_err(),
            405
        );
        assert_eq!(
            req(&BASE.replace("1 OPTIONS", "1 INVITE")).unwrap_err(),
            400
        );
        assert_eq!(
            req(&BASE.replace("sip:hotline@127.0.0.1 SIP/2.0", "tel:+1 SIP/2.0")).unwrap_err(),
            416
        );
        assert_eq!(
            req(&BASE.replace(" SIP/2.0\n", " SIP/3.0\n")).unwrap_err(),
            505
        );
        assert_eq!(req(&format!("{BASE}CSeq: 2 OPTIONS\n\n")).unwrap_err(), 400);
        assert_eq!(
            req(&BASE.replace("Max-Forwards: 70", "Max-Forwards: 256")).unwrap_err(),
            400
        );
    }

    #[test]
    fn response_copies_vias_and_stamps_rport() {
        let raw = frame_datagram(
            format!("{BASE}Via: SIP/2.0/UDP 10.0.0.1, SIP/2.0/TCP 10.0.0.2\n\n")
                .replace('\n', "\r\n")
                .as_bytes(),
        )
        .unwrap();
        let src = Source {
            addr: "127.0.0.1:40000".parse().unwrap(),
        };
        let out = String::from_utf8(build_response(&raw, src, 200, "OK", Some("xyz"), &[], None))
            .unwrap();
        assert!(out.contains("Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;received=127.0.0.1;rport=40000\r\n"), "{out}");
        assert!(out.contains("Via: SIP/2.0/UDP 10.0.0.1, SIP/2.0/TCP 10.0.0.2\r\n"));
        assert!(out.contains("To: <sip:hotline@127.0.0.1>;tag=xyz\r\n"));
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn udp_response_targets() {
        let src: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let v = headers::parse_via("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1").unwrap();
        assert_eq!(udp_response_target(&v, src).to_string(), "127.0.0.1:5060");
        let v = headers::parse_via("SIP/2.0/UDP 192.0.2.1:5070;rport").unwrap();
        assert_eq!(udp_response_target(&v, src).to_string(), "127.0.0.1:40000");
    }
}
