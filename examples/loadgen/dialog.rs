//! One call's SIP life from the caller's side, sans-IO: time comes in as an
//! argument, datagrams to send go out through `out`. RFC 3261 over UDP: INVITE
//! retransmitted on Timer A until a provisional or final response, Timer B; ACK for
//! 2xx (again for each retransmitted 2xx) and for non-2xx; BYE retransmitted on
//! Timer E up to T2, Timer F; the server's BYE answered with 200, again for each
//! retransmission.

use super::sip::{self, AnsweredMedia, Msg, Party};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
}

impl Timers {
    fn b(&self) -> Duration {
        self.t1 * 64
    }
}

/// How a call ended, from the caller's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused with a final response (503 when the server is full).
    Refused(u16),
    /// No final response to the INVITE within Timer B (or 3 minutes after a 1xx).
    SetupTimeout,
    /// The answer's SDP was unusable (the call is hung up at once).
    BadAnswer(String),
    /// The server hung up.
    ServerBye,
    /// We hung up and the server confirmed (2xx), or answered 481 (already gone).
    OurBye(u16),
    /// We hung up and the server never answered the BYE.
    ByeTimeout,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Answered(AnsweredMedia),
    Ended(Outcome),
}

#[derive(Debug)]
enum State {
    Calling {
        next: Instant,
        interval: Duration,
        give_up: Instant,
    },
    Proceeding {
        give_up: Instant,
    },
    Up,
    Leaving {
        bye: Vec<u8>,
        next: Instant,
        interval: Duration,
        give_up: Instant,
    },
    Ended,
}

/// Longest wait for a final response once the server said it is working on it.
const PROCEEDING_LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug)]
pub struct Dialog {
    party: Party,
    timers: Timers,
    invite_branch: String,
    invite: Vec<u8>,
    /// ACK sent for the final response, resent when the response is retransmitted.
    ack: Option<Vec<u8>>,
    /// To header with the server's tag, and where in-dialog requests go.
    to: String,
    remote_target: String,
    /// The 200 to the server's BYE, resent for its retransmissions.
    bye_answer: Option<Vec<u8>>,
    state: State,
    branches: u32,
    pub retransmissions: u32,
    pub unexpected: u32,
}

impl Dialog {
    /// Builds the INVITE and sends it.
    pub fn start(
        party: Party,
        sdp: &str,
        timers: Timers,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Dialog {
        let invite_branch = format!("z9hG4bK{}.0", party.call_id);
        let invite = sip::invite(&party, &invite_branch, sdp);
        out.push(invite.clone());
        Dialog {
            to: format!("<{}>", party.target),
            remote_target: party.target.clone(),
            party,
            timers,
            invite_branch,
            invite,
            ack: None,
            bye_answer: None,
            state: State::Calling {
                next: now + timers.t1,
                interval: timers.t1,
                give_up: now + timers.b(),
            },
            branches: 0,
            retransmissions: 0,
            unexpected: 0,
        }
    }

    pub fn call_id(&self) -> &str {
        &self.party.call_id
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up)
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    fn branch(&mut self) -> String {
        self.branches += 1;
        format!("z9hG4bK{}.{}", self.party.call_id, self.branches)
    }

    /// When `on_timer` next has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        match &self.state {
            State::Calling { next, give_up, .. } => Some((*next).min(*give_up)),
            State::Proceeding { give_up } => Some(*give_up),
            State::Leaving { next, give_up, .. } => Some((*next).min(*give_up)),
            State::Up | State::Ended => None,
        }
    }

    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) -> Option<Event> {
        match &mut self.state {
            State::Calling {
                next,
                interval,
                give_up,
            } => {
                if now >= *give_up {
                    self.state = State::Ended;
                    return Some(Event::Ended(Outcome::SetupTimeout));
                }
                if now >= *next {
                    out.push(self.invite.clone());
                    self.retransmissions += 1;
                    *interval *= 2;
                    *next = now + *interval;
                }
            }
            State::Proceeding { give_up } => {
                if now >= *give_up {
                    // Nothing more can be sent for an INVITE without a final response
                    // that is reliably cancellable here: give the call up.
                    self.state = State::Ended;
                    return Some(Event::Ended(Outcome::SetupTimeout));
                }
            }
            State::Leaving {
                bye,
                next,
                interval,
                give_up,
            } => {
                if now >= *give_up {
                    self.state = State::Ended;
                    return Some(Event::Ended(Outcome::ByeTimeout));
                }
                if now >= *next {
                    out.push(bye.clone());
                    self.retransmissions += 1;
                    *interval = (*interval * 2).min(self.timers.t2);
                    *next = now + *interval;
                }
            }
            State::Up | State::Ended => {}
        }
        None
    }

    /// Sends BYE (when the call is up); otherwise nothing to hang up.
    pub fn hang_up(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        if !self.is_up() {
            return;
        }
        let branch = self.branch();
        let bye = sip::in_dialog(
            &self.party,
            "BYE",
            2,
            &self.remote_target,
            &self.to,
            &branch,
        );
        out.push(bye.clone());
        self.state = State::Leaving {
            bye,
            next: now + self.timers.t1,
            interval: self.timers.t1,
            give_up: now + self.timers.b(),
        };
    }

    pub fn on_message(&mut self, msg: &Msg, now: Instant, out: &mut Vec<Vec<u8>>) -> Option<Event> {
        if let Some(code) = msg.status() {
            self.on_response(code, msg, now, out)
        } else {
            self.on_request(msg, out)
        }
    }

    fn on_response(
        &mut self,
        code: u16,
        msg: &Msg,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Option<Event> {
        let (_, method) = msg.cseq()?;
        match method {
            "INVITE" => self.on_invite_response(code, msg, now, out),
            "BYE" => match self.state {
                State::Leaving { .. } if code >= 200 => {
                    self.state = State::Ended;
                    Some(Event::Ended(Outcome::OurBye(code)))
                }
                _ => None,
            },
            _ => {
                self.unexpected += 1;
                None
            }
        }
    }

    fn on_invite_response(
        &mut self,
        code: u16,
        msg: &Msg,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Option<Event> {
        let calling = matches!(self.state, State::Calling { .. } | State::Proceeding { .. });
        if !calling {
            // A retransmitted final response: our ACK was lost.
            if code >= 200 {
                if let Some(ack) = &self.ack {
                    out.push(ack.clone());
                }
            }
            return None;
        }
        if msg.branch() != Some(self.invite_branch.as_str()) {
            self.unexpected += 1;
            return None;
        }
        match code {
            100..=199 => {
                if let State::Calling { .. } = self.state {
                    self.state = State::Proceeding {
                        give_up: now + PROCEEDING_LIMIT,
                    };
                }
                None
            }
            200..=299 => {
                self.to = msg.header("to").unwrap_or_default().to_string();
                if let Some(target) = msg.header("contact").and_then(sip::uri_of) {
                    self.remote_target = target.to_string();
                }
                let branch = self.branch();
                let ack = sip::in_dialog(
                    &self.party,
                    "ACK",
                    1,
                    &self.remote_target,
                    &self.to,
                    &branch,
                );
                out.push(ack.clone());
                self.ack = Some(ack);
                self.state = State::Up;
                match sip::parse_answer(msg.body) {
                    Ok(media) => Some(Event::Answered(media)),
                    Err(e) => {
                        self.hang_up(now, out);
                        self.state = State::Ended;
                        Some(Event::Ended(Outcome::BadAnswer(e)))
                    }
                }
            }
            _ => {
                let to = msg.header("to").unwrap_or_default();
                let ack = sip::ack_non_2xx(&self.party, &self.invite_branch, to);
                out.push(ack.clone());
                self.ack = Some(ack);
                self.state = State::Ended;
                Some(Event::Ended(Outcome::Refused(code)))
            }
        }
    }

    fn on_request(&mut self, msg: &Msg, out: &mut Vec<Vec<u8>>) -> Option<Event> {
        match msg.method()? {
            "BYE" => {
                if let Some(answer) = &self.bye_answer {
                    out.push(answer.clone());
                    return None;
                }
                let answer = sip::response(msg, 200, "OK");
                out.push(answer.clone());
                self.bye_answer = Some(answer);
                match self.state {
                    State::Up => {
                        self.state = State::Ended;
                        Some(Event::Ended(Outcome::ServerBye))
                    }
                    // Crossed with our BYE: ours still waits for its answer.
                    _ => None,
                }
            }
            "ACK" => None,
            "OPTIONS" | "INFO" => {
                out.push(sip::response(msg, 200, "OK"));
                None
            }
            _ => {
                self.unexpected += 1;
                out.push(sip::response(msg, 501, "Not Implemented"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party() -> Party {
        Party {
            call_id: "c1".into(),
            from: "<sip:caller1@127.0.0.1>;tag=f1".into(),
            local: "127.0.0.1:5000".parse().unwrap(),
            target: "sip:hotline@127.0.0.1:5060".into(),
        }
    }

    const T: Timers = Timers {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
    };

    fn resp(code: u16, method: &str, branch: &str, body: &str) -> String {
        format!(
            "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch={branch}\r\nFrom: <sip:caller1@127.0.0.1>;tag=f1\r\nTo: <sip:hotline@127.0.0.1:5060>;tag=s9\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\nContact: <sip:hotline@127.0.0.1:5062>\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    const SDP: &str = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\n";

    fn text(out: &[Vec<u8>]) -> Vec<String> {
        out.iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect()
    }

    #[test]
    fn invite_is_retransmitted_on_timer_a_until_a_provisional_then_b_is_not_needed() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut d = Dialog::start(party(), "", T, t0, &mut out);
        assert_eq!(out.len(), 1);
        let mut sent_at = Vec::new();
        for ms in (0..4000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            let before = out.len();
            d.on_timer(now, &mut out);
            if out.len() > before {
                sent_at.push(ms);
            }
        }
        assert_eq!(sent_at, [500, 1500, 3500], "Timer A doubles from T1");
        let trying = resp(100, "INVITE", "z9hG4bKc1.0", "");
        let now = t0 + Duration::from_secs(4);
        assert_eq!(
            d.on_message(&Msg::parse(trying.as_bytes()).unwrap(), now, &mut out),
            None
        );
        let before = out.len();
        for s in 4..60 {
            d.on_timer(t0 + Duration::from_secs(s), &mut out);
        }
        assert_eq!(out.len(), before, "no retransmission after a provisional");
        assert_eq!(d.retransmissions, 3);
    }

    #[test]
    fn no_answer_times_out_after_64_t1() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut d = Dialog::start(party(), "", T, t0, &mut out);
        assert_eq!(
            d.on_timer(t0 + Duration::from_millis(31_900), &mut out),
            None
        );
        assert_eq!(
            d.on_timer(t0 + Duration::from_secs(32), &mut out),
            Some(Event::Ended(Outcome::SetupTimeout))
        );
    }

    #[test]
    fn answered_call_acks_every_2xx_to_the_contact_and_hangs_up_with_retransmitted_bye() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut d = Dialog::start(party(), "", T, t0, &mut out);
        let ok = resp(200, "INVITE", "z9hG4bKc1.0", SDP);
        let ev = d.on_message(&Msg::parse(ok.as_bytes()).unwrap(), t0, &mut out);
        assert!(matches!(ev, Some(Event::Answered(m)) if m.addr.port() == 20000));
        let ack = text(&out).pop().unwrap();
        assert!(
            ack.starts_with("ACK sip:hotline@127.0.0.1:5062 SIP/2.0"),
            "{ack}"
        );
        assert!(ack.contains("To: <sip:hotline@127.0.0.1:5060>;tag=s9"));
        // Retransmitted 200: the same ACK again.
        d.on_message(&Msg::parse(ok.as_bytes()).unwrap(), t0, &mut out);
        assert_eq!(text(&out).pop().unwrap(), ack);

        out.clear();
        d.hang_up(t0, &mut out);
        let bye = text(&out).pop().unwrap();
        assert!(bye.starts_with("BYE sip:hotline@127.0.0.1:5062"), "{bye}");
        assert!(bye.contains("CSeq: 2 BYE"));
        let mut sent_at = Vec::new();
        for ms in (0..12_000).step_by(10) {
            let before = out.len();
            d.on_timer(t0 + Duration::from_millis(ms), &mut out);
            if out.len() > before {
                sent_at.push(ms);
            }
        }
        assert_eq!(
            sent_at,
            [500, 1500, 3500, 7500, 11500],
            "Timer E capped at T2"
        );
        let ok_bye = resp(200, "BYE", "whatever", "");
        assert_eq!(
            d.on_message(&Msg::parse(ok_bye.as_bytes()).unwrap(), t0, &mut out),
            Some(Event::Ended(Outcome::OurBye(200)))
        );
        assert!(d.is_ended());
    }

    #[test]
    fn the_servers_bye_is_answered_every_time_it_comes() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut d = Dialog::start(party(), "", T, t0, &mut out);
        let ok = resp(200, "INVITE", "z9hG4bKc1.0", SDP);
        d.on_message(&Msg::parse(ok.as_bytes()).unwrap(), t0, &mut out);
        let bye = "BYE sip:caller@127.0.0.1:5000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsrv\r\nFrom: <sip:hotline@127.0.0.1:5060>;tag=s9\r\nTo: <sip:caller1@127.0.0.1>;tag=f1\r\nCall-ID: c1\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n";
        out.clear();
        assert_eq!(
            d.on_message(&Msg::parse(bye.as_bytes()).unwrap(), t0, &mut out),
            Some(Event::Ended(Outcome::ServerBye))
        );
        assert_eq!(
            d.on_message(&Msg::parse(bye.as_bytes()).unwrap(), t0, &mut out),
            None
        );
        let t = text(&out);
        assert_eq!(t.len(), 2);
        assert!(
            t[0].starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsrv")
        );
        assert_eq!(t[0], t[1]);
    }

    #[test]
    fn a_refusal_is_acked_on_the_invite_branch() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut d = Dialog::start(party(), "", T, t0, &mut out);
        let busy = resp(503, "INVITE", "z9hG4bKc1.0", "");
        assert_eq!(
            d.on_message(&Msg::parse(busy.as_bytes()).unwrap(), t0, &mut out),
            Some(Event::Ended(Outcome::Refused(503)))
        );
        let ack = text(&out).pop().unwrap();
        assert!(ack.starts_with("ACK sip:hotline@127.0.0.1:5060 SIP/2.0"));
        assert!(ack.contains("branch=z9hG4bKc1.0;"));
        assert!(ack.contains("CSeq: 1 ACK"));
    }
}
