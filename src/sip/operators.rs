//! The SIP side of operators' phones: a REGISTER turned into what the registrar decides
//! on and its decision into the answer, feature codes (`*1`, `*2`) dialled from a phone
//! and authorized with the operator's own digest credentials, and the contacts an
//! operator is reached at.
//!
//! Owns the glue between messages and `Registrar`; the policy is the registrar's.
//! Sans-IO: answers through `Transactions`.

use super::digest::DigestConfig;
use super::endpoint::Output;
use super::headers;
use super::message::Request;
use super::raw;
use super::registrar::{self as reg, Decision, RegisterRequest, Registrar, RegistrarConfig};
use super::transactions::Transactions;
use crate::call::Peer;
use std::net::SocketAddr;
use std::time::Instant;

/// The operators' registrar settings: present only when operator accounts exist.
#[derive(Clone, Debug)]
pub struct RegistrarSetup {
    pub registrar: RegistrarConfig,
    pub digest: DigestConfig,
    /// Dial strings and the reason phrase that acknowledges each.
    pub feature_codes: Vec<(String, String)>,
}

/// The parts of a REGISTER the registrar decides on.
pub(super) fn register_request(peer: Peer, req: &Request) -> Result<RegisterRequest, &'static str> {
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
        peer,
        aor_user: percent_decode(&aor_user),
        contacts,
        expires,
        call_id: req.common.call_id.clone(),
        cseq: req.common.cseq,
        authorization: req.raw.header("authorization").map(str::to_string),
    })
}

fn warning(reason: &str) -> [(String, String); 1] {
    [("Warning".to_string(), format!("399 hotline \"{reason}\""))]
}

/// Answers a REGISTER from an operator's phone.
pub(super) fn handle_register(
    registrar: Option<&mut Registrar>,
    t: &mut Transactions,
    now: Instant,
    key: &str,
    peer: Peer,
    req: &Request,
) {
    let Some(registrar) = registrar else {
        // No operator accounts: nobody can register.
        return t.respond(now, key, &req.raw, 403, None, None, &[], None);
    };
    let request = match register_request(peer, req) {
        Ok(r) => r,
        Err(reason) => {
            return t.respond(now, key, &req.raw, 400, None, None, &warning(reason), None);
        }
    };
    match registrar.handle_register(&request, now) {
        Decision::Challenge { www_authenticate } => {
            let extra: Vec<(String, String)> = www_authenticate
                .into_iter()
                .map(|v| ("WWW-Authenticate".to_string(), v))
                .collect();
            t.respond(now, key, &req.raw, 401, None, None, &extra, None);
        }
        Decision::Ok { bindings } => {
            let extra: Vec<(String, String)> = bindings
                .iter()
                .map(|b| {
                    (
                        "Contact".to_string(),
                        format!("<{}>;expires={}", b.contact, b.expires),
                    )
                })
                .collect();
            t.respond(now, key, &req.raw, 200, None, None, &extra, None);
        }
        Decision::IntervalTooBrief { min_expires } => {
            let extra = [("Min-Expires".to_string(), min_expires.to_string())];
            t.respond(now, key, &req.raw, 423, None, None, &extra, None);
        }
        Decision::Forbidden => t.respond(now, key, &req.raw, 403, None, None, &[], None),
        Decision::BadRequest { reason } => {
            t.respond(now, key, &req.raw, 400, None, None, &warning(reason), None);
        }
        Decision::Ignore => {
            t.server.remove(key);
        }
    }
    drain_events(registrar, t);
}

/// Binding changes leave the endpoint as outputs.
pub(super) fn drain_events(registrar: &mut Registrar, t: &mut Transactions) {
    while let Some(ev) = registrar.poll_event() {
        t.output(Output::Registrar(ev));
    }
}

/// The feature code an INVITE dials, if it dials one.
pub(super) fn feature_code_of(setup: &RegistrarSetup, req: &Request) -> Option<String> {
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
pub(super) fn handle_feature_code(
    registrar: &mut Registrar,
    setup: &RegistrarSetup,
    t: &mut Transactions,
    now: Instant,
    key: &str,
    source: SocketAddr,
    req: &Request,
) {
    let code = feature_code_of(setup, req).unwrap_or_default();
    let user = headers::parse_sip_uri(&req.common.from.uri)
        .ok()
        .flatten()
        .and_then(|u| u.user)
        .map(|u| percent_decode(&u))
        .unwrap_or_default();
    let authorization = req.raw.header("proxy-authorization");
    match registrar.authorize(source, authorization, "INVITE", &user, now) {
        Ok(()) => {}
        Err(Decision::Challenge { www_authenticate }) => {
            let extra: Vec<(String, String)> = www_authenticate
                .into_iter()
                .map(|v| ("Proxy-Authenticate".to_string(), v))
                .collect();
            return t.respond(now, key, &req.raw, 407, None, None, &extra, None);
        }
        Err(Decision::BadRequest { reason }) => {
            return t.respond(now, key, &req.raw, 400, None, None, &warning(reason), None);
        }
        Err(Decision::Ignore) => {
            t.server.remove(key);
            return;
        }
        Err(_) => {
            tracing::info!(remote = %source, "feature code refused");
            return t.respond(now, key, &req.raw, 403, None, None, &[], None);
        }
    }
    let phrase = setup
        .feature_codes
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    tracing::info!(operator = %user, %code, "feature code");
    t.output(Output::FeatureCode { user, code });
    t.respond(now, key, &req.raw, 480, Some(&phrase), None, &[], None);
}

/// Every live binding of an operator with the transport path that reaches it, oldest
/// first.
pub(super) fn contacts(registrar: &Registrar, user: &str, now: Instant) -> Vec<(String, Peer)> {
    registrar
        .bindings(user, now)
        .into_iter()
        .map(|b| {
            let mut peer = b.peer;
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
            (b.contact, peer)
        })
        .collect()
}

/// A display name as a quoted-string body: no quotes, backslashes or control
/// characters, at most 64 characters.
pub(super) fn quote_display(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .take(64)
        .collect()
}

/// `%2A1` -> `*1` (phones escape `*` and `#` in user parts). Works on bytes: the
/// input is peer-controlled and may put anything after a `%`.
pub(super) fn percent_decode(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
