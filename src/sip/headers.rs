//! Strict readers for the few header shapes the hotline acts on: Via, name-addr
//! (From, To, Contact, Route, Record-Route) and SIP URIs.
//!
//! Owns the RFC 3261 §25 grammar checks that the typed parser lets through (empty
//! parameters, unbalanced quotes, LWS inside `<>`, unbracketed IPv6, headers in an
//! addr-spec) and the values routing needs (sent-by, rport, tags). Works on the raw
//! unfolded values from `raw`; must not build messages.

use super::raw::is_token_char;
use super::scan::{closing_quote, find_unquoted, split_unquoted};
use std::net::{IpAddr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

pub fn find_param<'a>(params: &'a [Param], name: &str) -> Option<&'a Param> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Parses `;name[=value]` sequences (after the part they belong to). Whitespace around
/// `;` and `=` is allowed (RFC 3261 SEMI and EQUAL include SWS); an empty name is not.
pub fn parse_params(s: &str) -> Result<Vec<Param>, &'static str> {
    parse_params_with(s, true)
}

/// URI parameters allow more characters in values (RFC 3261 `paramchar`) than header
/// parameters (`gen-value`), so only the header form checks values.
fn parse_params_with(s: &str, check_values: bool) -> Result<Vec<Param>, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let s = s
        .strip_prefix(';')
        .ok_or("parameters must start with ';'")?;
    let mut out = Vec::new();
    for part in split_unquoted(s, ';', false) {
        let part = part.trim();
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (part, None),
        };
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err("empty or malformed parameter");
        }
        if let Some(v) = value.as_ref().filter(|_| check_values) {
            let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
            let ipv6 = v.starts_with('[') && v.ends_with(']');
            if v.is_empty()
                || !(quoted
                    || ipv6
                    || v.bytes()
                        .all(|c| is_token_char(c) || c == b':' || c == b'[' || c == b']'))
            {
                return Err("malformed parameter value");
            }
        }
        out.push(Param {
            name: name.to_string(),
            value,
        });
    }
    Ok(out)
}

/// Host as written in a URI or Via: a name, IPv4, or bracketed IPv6.
pub fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
}

/// Splits `host[:port]`, honouring IPv6 brackets. `None` if malformed.
pub fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let rest = &s[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&s[..=end], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if !valid_host(host) {
        return None;
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

pub fn host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
    pub has_headers: bool,
}

impl SipUri {
    pub fn transport(&self) -> Option<&str> {
        find_param(&self.params, "transport").and_then(|p| p.value.as_deref())
    }
}

/// Parses a `sip:`/`sips:` URI strictly. Other schemes return `Ok(None)`: they are
/// well-formed as far as the hotline cares, and only the Request-URI check refuses them.
pub fn parse_sip_uri(s: &str) -> Result<Option<SipUri>, &'static str> {
    let (scheme, rest) = s.split_once(':').ok_or("URI has no scheme")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
    {
        return Err("malformed URI scheme");
    }
    let scheme_l = scheme.to_ascii_lowercase();
    if scheme_l != "sip" && scheme_l != "sips" {
        return Ok(None);
    }
    if rest
        .bytes()
        .any(|c| c.is_ascii_whitespace() || c == b'<' || c == b'>' || c == b'"')
    {
        return Err("URI contains whitespace, brackets or quotes");
    }
    // The user part may itself hold ';', '?' and ',' (RFC 3261 user-unreserved), and
    // '@' cannot appear unescaped after it, so split at the last '@' first.
    let (user, hostpart) = match rest.rfind('@') {
        Some(i) => (Some(rest[..i].to_string()), &rest[i + 1..]),
        None => (None, rest),
    };
    let (hostpart, has_headers) = match hostpart.split_once('?') {
        Some((r, _)) => (r, true),
        None => (hostpart, false),
    };
    let (hostport, params) = match hostpart.find(';') {
        Some(i) => (&hostpart[..i], &hostpart[i..]),
        None => (hostpart, ""),
    };
    let (host, port) = split_host_port(hostport).ok_or("malformed host or port in URI")?;
    Ok(Some(SipUri {
        scheme: scheme_l,
        user,
        host: host.to_string(),
        port,
        params: parse_params_with(params, false)?,
        has_headers,
    }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    pub params: Vec<Param>,
}

impl NameAddr {
    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").and_then(|p| p.value.as_deref())
    }
}

/// Parses `[display] <uri> *(;param)` or `addr-spec *(;param)` (From, To, Contact,
/// Route, Record-Route), refusing what RFC 3261 §20.10 and §25.1 forbid.
pub fn parse_name_addr(value: &str) -> Result<NameAddr, &'static str> {
    let v = value.trim();
    let (display, uri, after) = if let Some(lt) = find_unquoted(v, '<')? {
        let display = v[..lt].trim();
        let display = if display.is_empty() {
            None
        } else if display.starts_with('"') {
            let end = closing_quote(display).ok_or("unterminated quoted display name")?;
            if end != display.len() - 1 {
                return Err("text after quoted display name");
            }
            Some(display.to_string())
        } else {
            if !display
                .split([' ', '\t'])
                .filter(|t| !t.is_empty())
                .all(|t| t.bytes().all(is_token_char))
            {
                return Err("display name with non-token characters must be quoted");
            }
            Some(display.to_string())
        };
        let gt = v[lt..].find('>').ok_or("missing '>'")? + lt;
        let uri = &v[lt + 1..gt];
        if uri.is_empty() || uri.trim() != uri {
            return Err("whitespace inside <>");
        }
        (display, uri, &v[gt + 1..])
    } else {
        if v.contains('"') {
            return Err("unterminated or misplaced quote");
        }
        let end = v.find(';').unwrap_or(v.len());
        let uri = v[..end].trim();
        if uri.contains(['?', ',', ' ', '\t']) {
            return Err("addr-spec with '?', ',' or spaces must be enclosed in <>");
        }
        (None, uri, &v[end..])
    };
    parse_sip_uri(uri)?;
    Ok(NameAddr {
        display,
        uri: uri.to_string(),
        params: parse_params(after)?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
}

impl Via {
    pub fn branch(&self) -> Option<&str> {
        find_param(&self.params, "branch").and_then(|p| p.value.as_deref())
    }

    pub fn has_rport(&self) -> bool {
        find_param(&self.params, "rport").is_some()
    }

    /// `host[:port]` as it identifies the sender in transaction matching.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host.to_ascii_lowercase()),
            None => self.host.to_ascii_lowercase(),
        }
    }
}

/// Parses one via-parm (a single hop). Comma-separated hops must be split first.
pub fn parse_via(value: &str) -> Result<Via, &'static str> {
    let mut rest = value.trim();
    let mut proto = Vec::with_capacity(3);
    for i in 0..3 {
        let end = if i < 2 {
            rest.find('/').ok_or("malformed sent-protocol")?
        } else {
            rest.find([' ', '\t']).ok_or("no sent-by")?
        };
        let tok = rest[..end].trim();
        if tok.is_empty() || !tok.bytes().all(is_token_char) {
            return Err("malformed sent-protocol");
        }
        proto.push(tok);
        rest = rest[end + 1..].trim_start();
    }
    if !proto[0].eq_ignore_ascii_case("SIP") {
        return Err("Via protocol is not SIP");
    }
    if proto[1] != "2.0" {
        return Err("Via version is not 2.0");
    }
    let end = rest.find(';').unwrap_or(rest.len());
    let sent_by = rest[..end].trim();
    let (host, port) = split_host_port(sent_by).ok_or("malformed sent-by")?;
    let params = parse_params(&rest[end..])?;
    Ok(Via {
        transport: proto[2].to_ascii_uppercase(),
        host: host.to_string(),
        port,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_and_params() {
        let v = parse_via("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let v = parse_via("SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3;rport").unwrap();
        assert_eq!(v.port, Some(6050));
        assert!(v.has_rport());
        assert_eq!(v.sent_by(), "[2001:db8::9:1]:6050");
        let v = parse_via("SIP / 2.0 / TCP spindle.example.com ; branch = z9hG4bK9ikj8").unwrap();
        assert_eq!(v.branch(), Some("z9hG4bK9ikj8"));
    }

    #[test]
    fn via_refuses_empty_params() {
        assert!(parse_via("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(parse_via("SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n =
            parse_name_addr("\"J Rosenberg \\\\\\\"\" <sip:jdrosen@example.com> ; tag = 98asjd8")
                .unwrap();
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = parse_name_addr("sip:caller@example.net;tag=2234923").unwrap();
        assert_eq!(n.uri, "sip:caller@example.net");
        assert_eq!(n.tag(), Some("2234923"));
        assert!(parse_name_addr("<http://example.com>").is_ok());
        assert!(parse_name_addr("Anonymous <sip:a@b>").is_ok());
    }

    #[test]
    fn name_addr_refusals() {
        assert!(parse_name_addr("\"Mr. J. User <sip:j.user@example.com>").is_err());
        assert!(parse_name_addr("\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(parse_name_addr("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(parse_name_addr("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(parse_name_addr("\"Joe\" <sip:joe@example.org>;;;;").is_err());
    }

    #[test]
    fn uris_and_ipv6() {
        assert!(parse_sip_uri("sip:2001:db8::10").is_err());
        assert!(parse_sip_uri("sip:user@[2001:db8:::192.0.2.1]").is_err());
        let u = parse_sip_uri("sip:user@[2001:db8::192.0.2.1]")
            .unwrap()
            .unwrap();
        assert_eq!(u.host, "[2001:db8::192.0.2.1]");
        let u = parse_sip_uri("sip:[2001:db8::10]:5070").unwrap().unwrap();
        assert_eq!(u.port, Some(5070));
        let u = parse_sip_uri("sip:[2001:db8::10:5070]").unwrap().unwrap();
        assert_eq!(u.port, None);
        let u = parse_sip_uri("sip:user;par=u%40example.net@example.com")
            .unwrap()
            .unwrap();
        assert_eq!(u.host, "example.com");
        assert!(parse_sip_uri("nobodyKnowsThisScheme:totallyopaquecontent")
            .unwrap()
            .is_none());
        assert!(
            parse_sip_uri("sip:user@example.com?Route=x")
                .unwrap()
                .unwrap()
                .has_headers
        );
    }
}
