//! Provider trunks (`[[trunks]]`), address ranges (`Cidr`) and the registrar URIs they
//! name: the shape and the checks, no I/O (a `password_file` is read by whoever
//! starts the trunks).

use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// An address range written `10.0.0.0/8`, `2001:db8::/32` or as one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains('/') {
            let net: ipnet::IpNet = s
                .parse()
                .map_err(|_| format!("\"{s}\" is not an address range like 10.0.0.0/8"))?;
            // Host bits set ("10.1.2.3/8") usually mean a typo: say so.
            if net.trunc() != net {
                return Err(format!(
                    "\"{s}\" has bits set past the prefix (did you mean {}?)",
                    net.trunc()
                ));
            }
            Ok(Cidr(net))
        } else {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| format!("\"{s}\" is not an IP address or a range like 10.0.0.0/8"))?;
            Ok(Cidr(ipnet::IpNet::from(ip)))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A SIP transport as a URI's `transport` parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    Udp,
    Tcp,
    Tls,
}

impl SipTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        }
    }

    pub fn reliable(self) -> bool {
        !matches!(self, SipTransport::Udp)
    }

    /// The port a target without an explicit port or SRV record uses (RFC 3263 §4.2).
    pub fn default_port(self) -> u16 {
        match self {
            SipTransport::Tls => 5061,
            _ => 5060,
        }
    }
}

/// Where a trunk sends its REGISTERs: `sip:host[:port][;transport=udp|tcp|tls]`, or
/// the same without the scheme. `sips:` means TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    /// A host name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<SipTransport>,
}

impl SipTarget {
    /// Whether `host` is an IP address (no DNS needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The host as it goes into a URI (IPv6 in brackets).
    pub fn uri_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for SipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sip:{}", self.uri_host())?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(t) = self.transport {
            write!(f, ";transport={}", t.as_str())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for SipTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("\"{s}\" {why}");
        let text = s.trim();
        let (secure, rest) = if let Some(r) = strip_prefix_ci(text, "sips:") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(text, "sip:") {
            (false, r)
        } else {
            (false, text)
        };
        if rest.contains('@') {
            return Err(bad(
                "names a user: give only the registrar's host (sip:host[:port])",
            ));
        }
        let mut parts = rest.split(';');
        let hostport = parts.next().unwrap_or_default();
        let mut transport = secure.then_some(SipTransport::Tls);
        for p in parts {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            if name.eq_ignore_ascii_case("transport") {
                let t = match value.to_ascii_lowercase().as_str() {
                    "udp" => SipTransport::Udp,
                    "tcp" => SipTransport::Tcp,
                    "tls" => SipTransport::Tls,
                    _ => return Err(bad("has a transport other than udp, tcp or tls")),
                };
                if secure && t != SipTransport::Tls {
                    return Err(bad("is a sips: URI with a transport other than tls"));
                }
                transport = Some(t);
            } else if name.eq_ignore_ascii_case("lr") {
                // A loose-routing mark on an outbound proxy: nothing to do.
            } else {
                return Err(bad(&format!("has an unknown parameter \"{name}\"")));
            }
        }
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed IPv6 bracket"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("has a bracketed host that is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("is malformed after ']'"))?,
                ),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(bad("has a port that is not 1-65535")),
            },
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<IpAddr>().is_ok()
                || host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !host_ok {
            return Err(bad("does not name a host (a DNS name or an IP address)"));
        }
        Ok(SipTarget {
            host: host.to_ascii_lowercase(),
            port,
            transport,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

impl<'de> Deserialize<'de> for SipTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One `[[trunks]]` table: a SIP provider the hotline registers with (or, without a
/// username, only accepts calls from).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    pub registrar: SipTarget,
    /// Empty: no registration (a provider that delivers to fixed addresses).
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_expires")]
    pub expires_s: u32,
    #[serde(default)]
    pub outbound_proxy: Option<SipTarget>,
    /// The provider's signalling addresses: exempt from the per-source rate limit.
    #[serde(default)]
    pub accept_from: Vec<Cidr>,
}

fn default_expires() -> u32 {
    600
}

/// Shortest and longest registration lifetime a trunk may ask for.
pub const MIN_EXPIRES_S: u32 = 60;
pub const MAX_EXPIRES_S: u32 = 86_400;

impl TrunkConfig {
    pub fn registers(&self) -> bool {
        !self.username.is_empty()
    }
}

/// Checks what serde cannot: unique names, one source of password, sane lifetimes.
pub fn validate(trunks: &[TrunkConfig]) -> Result<(), (String, String)> {
    for (i, t) in trunks.iter().enumerate() {
        let key = |k: &str| format!("trunks[{i}].{k}");
        if t.name.is_empty()
            || t.name.len() > 32
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err((
                key("name"),
                format!("\"{}\" is not 1-32 letters, digits, '-' or '_'", t.name),
            ));
        }
        if trunks[..i].iter().any(|o| o.name == t.name) {
            return Err((key("name"), format!("\"{}\" is used twice", t.name)));
        }
        if !t.username.is_empty()
            && !t
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b))
        {
            return Err((
                key("username"),
                "must be a SIP user part (letters, digits and -_.!~*'()&=+$,;?/)".into(),
            ));
        }
        match (&t.password, &t.password_file) {
            (Some(_), Some(_)) => {
                return Err((
                    key("password_file"),
                    "give password or password_file, not both".into(),
                ))
            }
            (None, None) if t.registers() => {
                return Err((
                    key("password"),
                    "a trunk with a username needs password or password_file".into(),
                ))
            }
            (Some(p), None) if p.contains(['\r', '\n']) => {
                return Err((key("password"), "must not contain line breaks".into()))
            }
            _ => {}
        }
        if !(MIN_EXPIRES_S..=MAX_EXPIRES_S).contains(&t.expires_s) {
            return Err((
                key("expires_s"),
                format!("must be between {MIN_EXPIRES_S} and {MAX_EXPIRES_S}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_takes_ranges_and_single_addresses() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.1.1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!("10.1.2.3/8"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.net".parse::<Cidr>().is_err());
    }

    #[test]
    fn registrar_uris() {
        let t: SipTarget = "sip:127.0.0.1:5070;transport=tcp".parse().unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, Some(5070));
        assert_eq!(t.transport, Some(SipTransport::Tcp));
        let t: SipTarget = "sip:SIP.Example.net".parse().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("sip.example.net", None, None)
        );
        let t: SipTarget = "sips:[2001:db8::1]:5061".parse().unwrap();
        assert_eq!(t.host, "2001:db8::1");
        assert_eq!(t.transport, Some(SipTransport::Tls));
        assert_eq!(t.to_string(), "sip:[2001:db8::1]:5061;transport=tls");
        let t: SipTarget = "provider.example".parse().unwrap();
        assert_eq!(t.host, "provider.example");
        for bad in [
            "sip:user@host",
            "sip:host:0",
            "sip:host:99999",
            "sip:host;transport=sctp",
            "sip:",
            "sip:ho st",
            "sips:host;transport=udp",
            "sip:[::1",
            "sip:host;maddr=1.2.3.4",
        ] {
            assert!(bad.parse::<SipTarget>().is_err(), "{bad}");
        }
    }
}
