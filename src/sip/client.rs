//! Requests the hotline sends outside any dialog on behalf of another state machine (a
//! trunk's REGISTER and OPTIONS): the endpoint runs their client transactions in its
//! shared tables and hands back the final response, or the timeout, under the tag the
//! sender chose.

use super::raw::RawHeader;

/// The end of a request sent with `Endpoint::send_client_request`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientResult {
    /// A final response (provisional ones are absorbed).
    Response {
        tag: u64,
        code: u16,
        reason: String,
        /// As received, names in lower-case long form.
        headers: Vec<RawHeader>,
    },
    /// No final response within 64*T1 (RFC 3261 timer F).
    Timeout { tag: u64 },
}

impl ClientResult {
    pub fn tag(&self) -> u64 {
        match self {
            ClientResult::Response { tag, .. } | ClientResult::Timeout { tag } => *tag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{Link, Peer, WallClock};
    use crate::sip::{Endpoint, EndpointConfig, Output};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::{Duration, Instant};

    fn endpoint(now: Instant) -> Endpoint {
        Endpoint::new(
            EndpointConfig::default(),
            StdRng::seed_from_u64(5),
            now,
            WallClock::anchor(now, std::time::SystemTime::UNIX_EPOCH),
        )
    }

    fn request(branch: &str) -> Vec<u8> {
        format!(
            "OPTIONS sip:198.51.100.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:hotline@198.51.100.10>;tag=t1\r\nTo: <sip:198.51.100.10>\r\nCall-ID: c1@hotline\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn peer() -> Peer {
        Peer {
            link: Link::Udp(0),
            remote: "198.51.100.10:5060".parse().unwrap(),
            local: "192.0.2.5:5060".parse().unwrap(),
        }
    }

    fn results(ep: &mut Endpoint) -> Vec<ClientResult> {
        std::iter::from_fn(|| ep.poll_output())
            .filter_map(|o| match o {
                Output::Client(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The final response comes back under the sender's tag, once; provisional and
    /// retransmitted finals do not.
    #[test]
    fn a_final_response_comes_back_once_under_its_tag() {
        let now = Instant::now();
        let mut ep = endpoint(now);
        let branch = "z9hG4bKclient1";
        ep.send_client_request(now, peer(), branch.into(), request(branch), 77);
        let sent: Vec<Output> = std::iter::from_fn(|| ep.poll_output()).collect();
        assert!(matches!(&sent[..], [Output::Transmit { peer: p, .. }] if *p == peer()));
        let answer = |code: &str| {
            format!("SIP/2.0 {code}\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch={branch};rport=5060;received=203.0.113.9\r\nFrom: <sip:hotline@198.51.100.10>;tag=t1\r\nTo: <sip:198.51.100.10>;tag=x\r\nCall-ID: c1@hotline\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        };
        let p = peer();
        ep.handle_datagram(
            now,
            p.link,
            p.local,
            p.remote,
            answer("100 Trying").as_bytes(),
        );
        assert!(results(&mut ep).is_empty());
        ep.handle_datagram(now, p.link, p.local, p.remote, answer("200 OK").as_bytes());
        let got = results(&mut ep);
        assert_eq!(got.len(), 1);
        let ClientResult::Response {
            tag,
            code,
            reason,
            headers,
        } = &got[0]
        else {
            panic!("{got:?}")
        };
        assert_eq!((*tag, *code, reason.as_str()), (77, 200, "OK"));
        assert!(headers
            .iter()
            .any(|h| h.name == "via" && h.value.contains("received=203.0.113.9")));
        ep.handle_datagram(now, p.link, p.local, p.remote, answer("200 OK").as_bytes());
        assert!(results(&mut ep).is_empty(), "retransmission absorbed");
    }

    /// Without an answer the request is retransmitted, then timer F reports it.
    #[test]
    fn no_answer_is_a_timeout_after_64_t1() {
        let start = Instant::now();
        let mut ep = endpoint(start);
        ep.send_client_request(
            start,
            peer(),
            "z9hG4bKclient2".into(),
            request("z9hG4bKclient2"),
            9,
        );
        let mut transmits = 0;
        let mut now = start;
        let mut got = Vec::new();
        while got.is_empty() && now < start + Duration::from_secs(60) {
            for o in std::iter::from_fn(|| ep.poll_output()) {
                match o {
                    Output::Transmit { .. } => transmits += 1,
                    Output::Client(r) => got.push((now, r)),
                    _ => {}
                }
            }
            let Some(next) = ep.poll_timeout() else { break };
            now = next;
            ep.handle_timeout(now);
            for o in std::iter::from_fn(|| ep.poll_output()) {
                match o {
                    Output::Transmit { .. } => transmits += 1,
                    Output::Client(r) => got.push((now, r)),
                    _ => {}
                }
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, ClientResult::Timeout { tag: 9 });
        assert_eq!(got[0].0 - start, Duration::from_secs(32));
        assert!(transmits >= 8, "{transmits}");
    }
}
