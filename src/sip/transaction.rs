//! RFC 3261 §17 transactions (with the RFC 6026 Accepted state) as sans-IO state
//! machines: bytes and time go in, bytes to send and events come out.
//!
//! Owns retransmission and timeout timers A, B, D, E, F, G, H, I, J, K (and the 2xx
//! retransmission of §13.3.1.4, which RFC 6026 gives the same schedule). It must not
//! parse messages, open sockets or read the clock: the endpoint matches messages to
//! transactions and passes `now` in. Tests drive every timer with simulated time.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    fn t64(&self) -> Duration {
        self.t1 * 64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Trying,
    Proceeding,
    Completed,
    /// RFC 6026: a 2xx was sent; it is retransmitted until the ACK arrives.
    Accepted,
    Confirmed,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEvent {
    /// Server INVITE: no ACK for our final response within 64·T1 (timer H / L).
    AckTimeout { was_2xx: bool },
    /// Client: no final response within 64·T1 (timer B / F).
    Timeout,
}

/// What a timer or a received message asks the owner to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxOutput {
    /// Send these bytes again to the transaction's peer.
    pub retransmit: Option<std::sync::Arc<[u8]>>,
    pub event: Option<TxEvent>,
}

#[derive(Debug)]
pub struct ServerTransaction {
    invite: bool,
    reliable: bool,
    timers: TimerConfig,
    state: ServerState,
    last_response: Option<std::sync::Arc<[u8]>>,
    last_code: u16,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
    end_at: Option<Instant>,
}

impl ServerTransaction {
    pub fn new(invite: bool, reliable: bool, timers: TimerConfig) -> Self {
        ServerTransaction {
            invite,
            reliable,
            timers,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            last_code: 0,
            retransmit_at: None,
            interval: timers.t1,
            timeout_at: None,
            end_at: None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn last_code(&self) -> u16 {
        self.last_code
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// The TU sends a response. Returns false if the state no longer allows it (a
    /// final response was already sent), in which case nothing must be transmitted.
    pub fn send_response(&mut self, now: Instant, code: u16, bytes: std::sync::Arc<[u8]>) -> bool {
        match self.state {
            ServerState::Trying | ServerState::Proceeding => {}
            _ => return false,
        }
        self.last_response = Some(bytes);
        self.last_code = code;
        if code < 200 {
            self.state = ServerState::Proceeding;
            return true;
        }
        let t = self.timers;
        if self.invite && code < 300 {
            self.state = ServerState::Accepted;
            self.interval = t.t1;
            self.retransmit_at = Some(now + t.t1);
            self.timeout_at = Some(now + t.t64());
        } else if self.invite {
            self.state = ServerState::Completed;
            self.interval = t.t1;
            self.retransmit_at = (!self.reliable).then(|| now + t.t1); // G
            self.timeout_at = Some(now + t.t64()); // H
        } else {
            self.state = ServerState::Completed;
            // J: absorbs request retransmissions on unreliable transports.
            self.end_at = Some(if self.reliable { now } else { now + t.t64() });
        }
        true
    }

    /// A retransmission of the request arrived: answer it with the last response.
    pub fn on_request_retransmission(&self) -> Option<std::sync::Arc<[u8]>> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed | ServerState::Accepted => {
                self.last_response.clone()
            }
            _ => None,
        }
    }

    /// An ACK matched this transaction (non-2xx) or its dialog (2xx).
    pub fn on_ack(&mut self, now: Instant) {
        match self.state {
            ServerState::Completed if self.invite => {
                self.state = ServerState::Confirmed;
                self.retransmit_at = None;
                self.timeout_at = None;
                // I: absorbs ACK retransmissions.
                self.end_at = Some(if self.reliable {
                    now
                } else {
                    now + self.timers.t4
                });
            }
            ServerState::Accepted => {
                self.state = ServerState::Terminated;
                self.retransmit_at = None;
                self.timeout_at = None;
                // Its holder drops a transaction when a timer finds it terminated. Kept
                // for timer L (RFC 6026) so that late copies of the INVITE are still
                // absorbed, then dropped: without this timer every answered call's
                // transaction and 200 OK stayed in the endpoint's table for good.
                self.end_at = Some(if self.reliable {
                    now
                } else {
                    now + self.timers.t64()
                });
            }
            _ => {}
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.end_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> TxOutput {
        let mut out = TxOutput::default();
        if self.timeout_at.is_some_and(|t| t <= now) {
            let was_2xx = self.state == ServerState::Accepted;
            self.state = ServerState::Terminated;
            self.retransmit_at = None;
            self.timeout_at = None;
            self.end_at = None;
            out.event = Some(TxEvent::AckTimeout { was_2xx });
            return out;
        }
        if self.end_at.is_some_and(|t| t <= now) {
            self.state = ServerState::Terminated;
            self.end_at = None;
            return out;
        }
        if let Some(at) = self.retransmit_at.filter(|t| *t <= now) {
            out.retransmit = self.last_response.clone();
            self.interval = (self.interval * 2).min(self.timers.t2);
            self.retransmit_at = Some(at + self.interval);
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Calling,
    Proceeding,
    Completed,
    Accepted,
    Terminated,
}

/// What the TU should do with a response that reached a client transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientVerdict {
    /// Pass to the TU.
    Deliver,
    /// A retransmission the transaction absorbed (it may have re-sent its ACK).
    Absorb,
}

#[derive(Debug)]
pub struct ClientTransaction {
    invite: bool,
    reliable: bool,
    timers: TimerConfig,
    state: ClientState,
    request: std::sync::Arc<[u8]>,
    ack: Option<std::sync::Arc<[u8]>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
    end_at: Option<Instant>,
}

impl ClientTransaction {
    /// Created when the request is first sent at `now`.
    pub fn new(
        invite: bool,
        reliable: bool,
        timers: TimerConfig,
        request: std::sync::Arc<[u8]>,
        now: Instant,
    ) -> Self {
        ClientTransaction {
            invite,
            reliable,
            timers,
            state: ClientState::Calling,
            request,
            ack: None,
            retransmit_at: (!reliable).then(|| now + timers.t1), // A / E
            interval: timers.t1,
            timeout_at: Some(now + timers.t64()), // B / F
            end_at: None,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// A response matched this transaction. For a non-2xx final response to an
    /// INVITE, `make_ack` builds the ACK the transaction sends (RFC 3261 §17.1.1.3);
    /// the returned bytes must then be transmitted by the owner.
    pub fn on_response(
        &mut self,
        now: Instant,
        code: u16,
        make_ack: impl FnOnce() -> Vec<u8>,
    ) -> (ClientVerdict, Option<std::sync::Arc<[u8]>>) {
        let t = self.timers;
        match (self.state, code) {
            (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                if self.invite {
                    self.retransmit_at = None;
                } else if !self.reliable {
                    // E continues at T2 in Proceeding.
                    self.interval = t.t2;
                    self.retransmit_at = Some(now + t.t2);
                }
                (ClientVerdict::Deliver, None)
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) if self.invite => {
                self.state = ClientState::Accepted;
                self.retransmit_at = None;
                self.timeout_at = None;
                self.end_at = Some(now + t.t64()); // M
                (ClientVerdict::Deliver, None)
            }
            (ClientState::Calling | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.retransmit_at = None;
                self.timeout_at = None;
                let linger = if self.reliable {
                    Duration::ZERO
                } else if self.invite {
                    Duration::from_secs(32).max(t.t64()) // D
                } else {
                    t.t4 // K
                };
                self.end_at = Some(now + linger);
                let ack = self
                    .invite
                    .then(|| std::sync::Arc::<[u8]>::from(make_ack()));
                self.ack = ack.clone();
                (ClientVerdict::Deliver, ack)
            }
            (ClientState::Accepted, 200..=299) => (ClientVerdict::Deliver, None),
            (ClientState::Completed, 300..) => (ClientVerdict::Absorb, self.ack.clone()),
            _ => (ClientVerdict::Absorb, None),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.end_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> TxOutput {
        let mut out = TxOutput::default();
        if self.timeout_at.is_some_and(|t| t <= now) {
            self.state = ClientState::Terminated;
            self.retransmit_at = None;
            self.timeout_at = None;
            self.end_at = None;
            out.event = Some(TxEvent::Timeout);
            return out;
        }
        if self.end_at.is_some_and(|t| t <= now) {
            self.state = ClientState::Terminated;
            self.end_at = None;
            self.retransmit_at = None;
            return out;
        }
        if let Some(at) = self.retransmit_at.filter(|t| *t <= now) {
            out.retransmit = Some(self.request.clone());
            self.interval = if self.invite {
                self.interval * 2 // A doubles without a cap
            } else if self.state == ClientState::Proceeding {
                self.timers.t2
            } else {
                (self.interval * 2).min(self.timers.t2)
            };
            self.retransmit_at = Some(at + self.interval);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> std::sync::Arc<[u8]> {
        std::sync::Arc::from(s.as_bytes())
    }

    /// Runs timers until `until`, returning (time offset in ms, output) of each firing.
    fn run_server(
        tx: &mut ServerTransaction,
        t0: Instant,
        until: Duration,
    ) -> Vec<(u128, TxOutput)> {
        let mut fired = Vec::new();
        while let Some(at) = tx.poll_timeout() {
            if at > t0 + until {
                break;
            }
            let out = tx.handle_timeout(at);
            fired.push(((at - t0).as_millis(), out));
            if tx.is_terminated() {
                break;
            }
        }
        fired
    }

    /// The ACK of a 2xx ends the INVITE transaction, and it still asks to be woken, at
    /// once: the endpoint drops a server transaction only when one of its timers finds
    /// it terminated, so without this every answered call's transaction and 200 OK
    /// stayed in the endpoint's table for good (about 1 kB per call).
    fn run_client(
        tx: &mut ClientTransaction,
        t0: Instant,
        until: Duration,
    ) -> Vec<(u128, TxOutput)> {
        let mut fired = Vec::new();
        while let Some(at) = tx.poll_timeout() {
            if at > t0 + until {
                break;
            }
            let out = tx.handle_timeout(at);
            fired.push(((at - t0).as_millis(), out));
            if tx.is_terminated() {
                break;
            }
        }
        fired
    }

    #[test]
    fn invite_2xx_retransmitted_until_timer_h() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(true, false, TimerConfig::default());
        assert!(tx.send_response(t0, 200, bytes("200")));
        let fired = run_server(&mut tx, t0, Duration::from_secs(40));
        let times: Vec<u128> = fired
            .iter()
            .filter(|(_, o)| o.retransmit.is_some())
            .map(|(t, _)| *t)
            .collect();
        // Intervals 0.5, 1, 2, 4, 4, ... (T1 doubling, capped at T2).
        assert_eq!(&times[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        let last = fired.last().unwrap();
        assert_eq!(last.0, 32_000);
        assert_eq!(last.1.event, Some(TxEvent::AckTimeout { was_2xx: true }));
        assert!(tx.is_terminated());
    }

    #[test]
    fn ack_stops_2xx_retransmission() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(true, false, TimerConfig::default());
        tx.send_response(t0, 200, bytes("200"));
        let fired = run_server(&mut tx, t0, Duration::from_millis(1600));
        assert_eq!(fired.len(), 2);
        let ack_at = t0 + Duration::from_millis(1600);
        tx.on_ack(ack_at);
        assert!(tx.is_terminated());
        // One last wake-up, after timer L, for the holder to drop it; nothing is sent.
        let l = ack_at + TimerConfig::default().t64();
        assert_eq!(tx.poll_timeout(), Some(l));
        assert!(tx.handle_timeout(l).retransmit.is_none());
        assert_eq!(tx.poll_timeout(), None);
    }

    /// Without the last timer the endpoint never dropped an answered call's INVITE
    /// transaction (about 1 kB per call, for good).
    #[test]
    fn ack_of_a_2xx_leaves_one_timer_to_drop_the_transaction() {
        let t0 = Instant::now();
        for (reliable, keep) in [
            (false, TimerConfig::default().t64()),
            (true, Duration::ZERO),
        ] {
            let mut tx = ServerTransaction::new(true, reliable, TimerConfig::default());
            assert!(tx.send_response(t0, 200, bytes("SIP/2.0 200 OK")));
            let ack_at = t0 + Duration::from_millis(30);
            tx.on_ack(ack_at);
            assert!(tx.is_terminated());
            assert_eq!(
                tx.poll_timeout(),
                Some(ack_at + keep),
                "reliable {reliable}"
            );
            let out = tx.handle_timeout(ack_at + keep);
            assert!(out.retransmit.is_none() && out.event.is_none());
            assert_eq!(tx.poll_timeout(), None);
        }
    }

    #[test]
    fn retransmitted_invite_gets_last_response() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(true, false, TimerConfig::default());
        tx.send_response(t0, 100, bytes("100"));
        assert_eq!(tx.on_request_retransmission().as_deref(), Some(&b"100"[..]));
        tx.send_response(t0, 200, bytes("200"));
        assert_eq!(tx.on_request_retransmission().as_deref(), Some(&b"200"[..]));
        assert!(
            !tx.send_response(t0, 486, bytes("486")),
            "no second final response"
        );
    }

    #[test]
    fn timer_g_h_for_error_response_over_udp() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(true, false, TimerConfig::default());
        tx.send_response(t0, 487, bytes("487"));
        let fired = run_server(&mut tx, t0, Duration::from_secs(40));
        let times: Vec<u128> = fired
            .iter()
            .filter(|(_, o)| o.retransmit.is_some())
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(&times[..5], &[500, 1500, 3500, 7500, 11500]);
        assert_eq!(
            fired.last().unwrap().1.event,
            Some(TxEvent::AckTimeout { was_2xx: false })
        );
        assert_eq!(fired.last().unwrap().0, 32_000);
    }

    #[test]
    fn timer_g_not_used_over_tcp() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(true, true, TimerConfig::default());
        tx.send_response(t0, 487, bytes("487"));
        let fired = run_server(&mut tx, t0, Duration::from_secs(40));
        assert_eq!(fired.len(), 1, "only timer H");
        assert_eq!(fired[0].0, 32_000);
    }

    #[test]
    fn timer_i_after_ack_of_error() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(true, false, TimerConfig::default());
        tx.send_response(t0, 486, bytes("486"));
        tx.on_ack(t0 + Duration::from_millis(100));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.on_request_retransmission(), None);
        let fired = run_server(&mut tx, t0, Duration::from_secs(10));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0, 5_100, "T4 after the ACK");
        assert!(tx.is_terminated());
    }

    #[test]
    fn timer_j_non_invite() {
        let t0 = Instant::now();
        let mut udp = ServerTransaction::new(false, false, TimerConfig::default());
        udp.send_response(t0, 200, bytes("200"));
        assert_eq!(udp.state(), ServerState::Completed);
        assert!(udp.on_request_retransmission().is_some());
        let fired = run_server(&mut udp, t0, Duration::from_secs(40));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0, 32_000);
        let mut tcp = ServerTransaction::new(false, true, TimerConfig::default());
        tcp.send_response(t0, 200, bytes("200"));
        assert_eq!(tcp.poll_timeout(), Some(t0));
    }

    #[test]
    fn timers_a_b_client_invite() {
        let t0 = Instant::now();
        let mut tx =
            ClientTransaction::new(true, false, TimerConfig::default(), bytes("INVITE"), t0);
        let fired = run_client(&mut tx, t0, Duration::from_secs(40));
        let times: Vec<u128> = fired
            .iter()
            .filter(|(_, o)| o.retransmit.is_some())
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(times, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(fired.last().unwrap().0, 32_000);
        assert_eq!(fired.last().unwrap().1.event, Some(TxEvent::Timeout));
    }

    #[test]
    fn client_invite_provisional_stops_a_and_error_gets_ack_then_timer_d() {
        let t0 = Instant::now();
        let mut tx =
            ClientTransaction::new(true, false, TimerConfig::default(), bytes("INVITE"), t0);
        let (v, _) = tx.on_response(t0 + Duration::from_millis(100), 180, Vec::new);
        assert_eq!(v, ClientVerdict::Deliver);
        let t1 = t0 + Duration::from_secs(1);
        let (v, ack) = tx.on_response(t1, 486, || b"ACK".to_vec());
        assert_eq!(v, ClientVerdict::Deliver);
        assert_eq!(ack.as_deref(), Some(&b"ACK"[..]));
        let (v, ack) = tx.on_response(t1, 486, Vec::new);
        assert_eq!(v, ClientVerdict::Absorb);
        assert_eq!(
            ack.as_deref(),
            Some(&b"ACK"[..]),
            "ACK re-sent for a retransmitted final"
        );
        let fired = run_client(&mut tx, t0, Duration::from_secs(60));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0, 33_000, "timer D: 32 s after the final response");
    }

    #[test]
    fn client_invite_2xx_accepted_then_timer_m() {
        let t0 = Instant::now();
        let mut tx =
            ClientTransaction::new(true, false, TimerConfig::default(), bytes("INVITE"), t0);
        assert_eq!(tx.on_response(t0, 200, Vec::new).0, ClientVerdict::Deliver);
        assert_eq!(
            tx.on_response(t0, 200, Vec::new).0,
            ClientVerdict::Deliver,
            "2xx retransmissions reach the TU"
        );
        let fired = run_client(&mut tx, t0, Duration::from_secs(60));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0, 32_000);
    }

    #[test]
    fn timers_e_f_client_non_invite() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(false, false, TimerConfig::default(), bytes("BYE"), t0);
        let fired = run_client(&mut tx, t0, Duration::from_secs(40));
        let times: Vec<u128> = fired
            .iter()
            .filter(|(_, o)| o.retransmit.is_some())
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(&times[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(fired.last().unwrap().0, 32_000);
        assert_eq!(fired.last().unwrap().1.event, Some(TxEvent::Timeout));
    }

    #[test]
    fn timer_e_at_t2_in_proceeding_then_k() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(false, false, TimerConfig::default(), bytes("BYE"), t0);
        tx.on_response(t0 + Duration::from_millis(100), 100, Vec::new);
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_millis(4100)));
        let t1 = t0 + Duration::from_secs(5);
        tx.handle_timeout(t0 + Duration::from_millis(4100));
        let (v, ack) = tx.on_response(t1, 200, Vec::new);
        assert_eq!(v, ClientVerdict::Deliver);
        assert!(ack.is_none());
        let fired = run_client(&mut tx, t0, Duration::from_secs(60));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0, 10_000, "timer K = T4");
    }

    #[test]
    fn reliable_client_does_not_retransmit() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(false, true, TimerConfig::default(), bytes("BYE"), t0);
        let fired = run_client(&mut tx, t0, Duration::from_secs(40));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].1.event, Some(TxEvent::Timeout));
    }

    #[test]
    fn configurable_t1_scales_timers() {
        let t0 = Instant::now();
        let timers = TimerConfig {
            t1: Duration::from_millis(100),
            t2: Duration::from_millis(400),
            t4: Duration::from_millis(500),
        };
        let mut tx = ServerTransaction::new(true, false, timers);
        tx.send_response(t0, 200, bytes("200"));
        let fired = run_server(&mut tx, t0, Duration::from_secs(10));
        assert_eq!(fired.last().unwrap().0, 6_400);
    }
}
