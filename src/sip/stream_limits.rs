//! Limits of stream connections (TCP and TLS), kept apart from the socket code so that
//! they are tested with simulated time.
//!
//! - `ConnectionGate`: how many connections one source, and all sources together, may
//!   hold. A permit is released when the connection task drops it.
//! - `StreamClock`: when a connection must be closed. A message must complete within
//!   `message_timeout` of its first byte (a slowloris sending one header byte every few
//!   seconds is closed), and a connection is idle from its last complete message (or
//!   RFC 5626 keep-alive), not from its last byte.
//!
//! The clock only sees bytes and "a message completed" events: framing stays in
//! `raw::StreamFramer`. A partial message that arrives in the same read as a complete
//! one starts its clock at the next read; if no further byte comes, the idle timeout
//! closes the connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a connection must close now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A message started and did not complete in time.
    MessageTimeout,
    /// No complete message for the idle time.
    Idle,
}

impl Expiry {
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::MessageTimeout => "message not completed in time",
            Expiry::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StreamClock {
    idle_timeout: Duration,
    message_timeout: Duration,
    last_complete: Instant,
    partial_since: Option<Instant>,
}

impl StreamClock {
    /// A connection opened (or its TLS handshake finished) at `now`.
    pub fn new(now: Instant, idle_timeout: Duration, message_timeout: Duration) -> Self {
        StreamClock {
            idle_timeout,
            message_timeout,
            last_complete: now,
            partial_since: None,
        }
    }

    /// Bytes arrived at `now`. Line ends alone start no message: they are RFC 5626
    /// keep-alives (a double CRLF counts as activity) or padding between messages.
    pub fn bytes_arrived(&mut self, now: Instant, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let only_line_ends = data.iter().all(|&b| b == b'\r' || b == b'\n');
        if only_line_ends {
            if self.partial_since.is_none() && data.windows(4).any(|w| w == b"\r\n\r\n") {
                self.last_complete = now;
            }
            return;
        }
        if self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
    }

    /// The framer produced a complete message (or a framing error that ends the
    /// connection anyway).
    pub fn message_complete(&mut self, now: Instant) {
        self.partial_since = None;
        self.last_complete = now;
    }

    /// The earliest time the connection must be closed, and why.
    pub fn deadline(&self) -> (Instant, Expiry) {
        let idle = self.last_complete + self.idle_timeout;
        match self.partial_since {
            Some(t) if t + self.message_timeout < idle => {
                (t + self.message_timeout, Expiry::MessageTimeout)
            }
            _ => (idle, Expiry::Idle),
        }
    }

    /// Whether the connection must be closed at `now`.
    pub fn expired(&self, now: Instant) -> Option<Expiry> {
        let (at, why) = self.deadline();
        (now >= at).then_some(why)
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerSource,
    Total,
}

#[derive(Debug, Default)]
struct GateState {
    per_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// Counts stream connections per source and in total, for every TCP and TLS listener.
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    state: Arc<Mutex<GateState>>,
    max_per_source: usize,
    max_total: usize,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnectionPermit {
    state: Arc<Mutex<GateState>>,
    ip: IpAddr,
}

impl ConnectionGate {
    pub fn new(max_per_source: usize, max_total: usize) -> Self {
        ConnectionGate {
            state: Arc::default(),
            max_per_source,
            max_total,
        }
    }

    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let n = s.per_source.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        *n += 1;
        s.total += 1;
        Ok(ConnectionPermit {
            state: self.state.clone(),
            ip,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(120);
    const MSG: Duration = Duration::from_secs(10);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn slowloris_is_closed_ten_seconds_after_its_first_byte() {
        let t0 = Instant::now();
        let mut c = StreamClock::new(t0, IDLE, MSG);
        // One header byte every 4 s: never completes.
        for i in 0..3 {
            let now = t0 + s(1 + 4 * i);
            assert_eq!(c.expired(now), None, "at {i}");
            c.bytes_arrived(now, b"X");
        }
        assert_eq!(c.deadline(), (t0 + s(11), Expiry::MessageTimeout));
        assert_eq!(c.expired(t0 + s(11)), Some(Expiry::MessageTimeout));
    }

    #[test]
    fn a_completed_message_resets_both_clocks() {
        let t0 = Instant::now();
        let mut c = StreamClock::new(t0, IDLE, MSG);
        c.bytes_arrived(t0 + s(1), b"REGISTER sip:x SIP/2.0\r\n");
        c.bytes_arrived(t0 + s(9), b"Via: ...\r\n\r\n");
        c.message_complete(t0 + s(9));
        assert_eq!(c.deadline(), (t0 + s(129), Expiry::Idle));
        // The next message has its own ten seconds.
        c.bytes_arrived(t0 + s(50), b"O");
        assert_eq!(c.deadline(), (t0 + s(60), Expiry::MessageTimeout));
    }

    #[test]
    fn idle_counts_from_the_last_complete_message_not_the_last_byte() {
        let t0 = Instant::now();
        let mut c = StreamClock::new(t0, s(30), s(60));
        // The message timeout is longer than the idle time here: idle wins.
        c.bytes_arrived(t0 + s(20), b"OPT");
        assert_eq!(c.deadline(), (t0 + s(30), Expiry::Idle));
    }

    #[test]
    fn keepalives_count_as_activity_and_lone_line_ends_do_not() {
        let t0 = Instant::now();
        let mut c = StreamClock::new(t0, IDLE, MSG);
        c.bytes_arrived(t0 + s(100), b"\r\n\r\n");
        assert_eq!(c.deadline(), (t0 + s(220), Expiry::Idle));
        c.bytes_arrived(t0 + s(200), b"\r\n");
        assert_eq!(c.deadline(), (t0 + s(220), Expiry::Idle));
        // A double CRLF inside a partial message is not a keep-alive.
        c.bytes_arrived(t0 + s(201), b"INVITE");
        c.bytes_arrived(t0 + s(205), b"\r\n\r\n");
        assert_eq!(c.deadline(), (t0 + s(211), Expiry::MessageTimeout));
    }

    #[test]
    fn gate_counts_per_source_and_in_total_and_releases_on_drop() {
        let gate = ConnectionGate::new(2, 3);
        let a: IpAddr = "127.0.0.5".parse().unwrap();
        let b: IpAddr = "127.0.0.6".parse().unwrap();
        let p1 = gate.admit(a).unwrap();
        let _p2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refusal::PerSource);
        let _p3 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).unwrap_err(), Refusal::Total);
        assert_eq!(gate.open(), 3);
        drop(p1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(a).is_ok());
    }
}
