//! RFC 3263 §4 decisions, without I/O: which NAPTR records name a transport we speak
//! and in what order, the SRV name of each transport, and the RFC 2782 order of SRV
//! targets (priority, then a weighted random draw). `io` makes the look-ups.

use crate::config::SipTransport;
use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub service: String,
    /// The SRV name to look up next.
    pub replacement: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The transport a NAPTR service field names (RFC 3263 §4.1).
fn naptr_transport(service: &str) -> Option<SipTransport> {
    match service.to_ascii_uppercase().as_str() {
        "SIP+D2U" => Some(SipTransport::Udp),
        "SIP+D2T" => Some(SipTransport::Tcp),
        "SIPS+D2T" => Some(SipTransport::Tls),
        _ => None,
    }
}

/// The SRV names to try, in order, from a NAPTR answer: records with the "s" flag for
/// a transport we speak (and that `only`, when given, allows), by order then
/// preference.
pub fn from_naptr(
    mut records: Vec<Naptr>,
    only: Option<SipTransport>,
) -> Vec<(SipTransport, String)> {
    records.sort_by_key(|r| (r.order, r.preference));
    records
        .into_iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| {
            let t = naptr_transport(&r.service)?;
            (only.is_none_or(|o| o == t))
                .then(|| (t, r.replacement.trim_end_matches('.').to_string()))
        })
        .collect()
}

/// `_sip._udp.host`, `_sip._tcp.host` or `_sips._tcp.host`.
pub fn srv_name(transport: SipTransport, host: &str) -> String {
    match transport {
        SipTransport::Udp => format!("_sip._udp.{host}"),
        SipTransport::Tcp => format!("_sip._tcp.{host}"),
        SipTransport::Tls => format!("_sips._tcp.{host}"),
    }
}

/// RFC 2782 order: lowest priority first; within one priority, repeatedly draw a
/// record with probability proportional to its weight (weight-0 records first in the
/// running sum, so they keep the small chance RFC 2782 gives them). A target "."
/// means "no service here" and is dropped.
pub fn order_srv(mut records: Vec<Srv>, rng: &mut impl Rng) -> Vec<Srv> {
    records.retain(|r| !r.target.is_empty() && r.target != ".");
    records.sort_by_key(|r| (r.priority, r.weight));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let prio = records[0].priority;
        let mut group: Vec<Srv> = Vec::new();
        while records.first().is_some_and(|r| r.priority == prio) {
            group.push(records.remove(0));
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.gen_range(0..=total);
            let mut running = 0u32;
            let i = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn srv_priority_first_then_weight() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut first_b = 0;
        for _ in 0..1000 {
            let order = order_srv(
                vec![
                    srv(20, 0, "c"),
                    srv(10, 10, "a"),
                    srv(10, 90, "b"),
                    srv(30, 0, "."),
                ],
                &mut rng,
            );
            let names: Vec<&str> = order.iter().map(|s| s.target.as_str()).collect();
            assert_eq!(names.len(), 3);
            assert_eq!(names[2], "c");
            if names[0] == "b" {
                first_b += 1;
            }
        }
        // b has 90 % of the weight in its priority.
        assert!((850..=950).contains(&first_b), "{first_b}");
    }

    #[test]
    fn naptr_keeps_sip_services_in_order() {
        let r = |order, pref, flags: &str, service: &str, repl: &str| Naptr {
            order,
            preference: pref,
            flags: flags.into(),
            service: service.into(),
            replacement: repl.into(),
        };
        let records = vec![
            r(20, 10, "s", "SIP+D2U", "_sip._udp.example.net."),
            r(10, 10, "s", "SIPS+D2T", "_sips._tcp.example.net."),
            r(10, 20, "s", "SIP+D2T", "_sip._tcp.example.net."),
            r(5, 10, "u", "E2U+sip", "!^.*$!sip:x@y!"),
            r(5, 10, "s", "SIP+D2S", "_sip._sctp.example.net."),
        ];
        assert_eq!(
            from_naptr(records.clone(), None),
            vec![
                (SipTransport::Tls, "_sips._tcp.example.net".to_string()),
                (SipTransport::Tcp, "_sip._tcp.example.net".to_string()),
                (SipTransport::Udp, "_sip._udp.example.net".to_string()),
            ]
        );
        assert_eq!(
            from_naptr(records, Some(SipTransport::Udp)),
            vec![(SipTransport::Udp, "_sip._udp.example.net".to_string())]
        );
        assert_eq!(
            srv_name(SipTransport::Tls, "example.net"),
            "_sips._tcp.example.net"
        );
    }
}
