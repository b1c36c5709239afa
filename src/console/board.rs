//! The live board: a typed snapshot of the queue and the operators that the serve
//! loop builds and publishes, and the rules of when it does so (at most once per
//! interval, and only when something changed). Sans-IO: time is an argument.
//!
//! Times on the board are absolute (milliseconds since the Unix epoch: when a caller
//! joined, when an operator entered its state), so a board does not change while
//! nothing happens; browsers count the seconds themselves.

use crate::store::console::DayCounts;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Board {
    /// In queue order.
    pub callers: Vec<BoardCaller>,
    /// By name.
    pub operators: Vec<BoardOperator>,
    /// Since midnight (the console's time zone).
    pub today: DayCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoardCaller {
    /// The call's id in the running server (not a database id).
    pub call: u64,
    pub position: usize,
    pub priority: u8,
    pub waiting_since_ms: i64,
    /// Keys and digits the caller answered in the voice menu.
    pub answers: Vec<(String, String)>,
    pub reference: Option<String>,
    /// Names of the operators whose phones ring for this caller.
    pub offered_to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoardOperator {
    /// SIP username: what state changes name.
    pub user: String,
    pub name: String,
    /// offline, available, ringing, on_call, wrap_up, paused.
    pub state: &'static str,
    /// When the operator entered `state`; None if not since this server started.
    pub since_ms: Option<i64>,
    pub misses: u32,
    /// Registered phones.
    pub phones: usize,
    /// The caller (`BoardCaller::call`) whose offer rings this operator now.
    pub offer: Option<u64>,
}

/// A published board and its JSON, serialized once for every browser.
#[derive(Debug, Clone)]
pub struct BoardFrame {
    /// Counts publications; 0 is the empty board before the first.
    pub seq: u64,
    pub board: Board,
    pub json: Arc<str>,
}

impl BoardFrame {
    pub fn new(seq: u64, board: Board) -> BoardFrame {
        let json = serde_json::to_string(&board).unwrap_or_else(|_| "{}".into());
        BoardFrame {
            seq,
            board,
            json: json.into(),
        }
    }

    /// What one browser receives: the board and the server's clock at sending, from
    /// which the page derives waited times.
    pub fn event_data(&self, now_ms: i64) -> String {
        format!(
            "{{\"seq\":{},\"now_ms\":{now_ms},\"board\":{}}}",
            self.seq, self.json
        )
    }
}

/// When to build a board: at most once per `interval`. A wake that comes too early
/// leaves a deadline, so a change right after a build is published one interval
/// later even if nothing else wakes the loop.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    next_build: Option<Instant>,
    pending: bool,
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            next_build: None,
            pending: false,
        }
    }

    /// Something may have changed at `now`: true when the board should be built now.
    pub fn wake(&mut self, now: Instant) -> bool {
        match self.next_build {
            Some(t) if now < t => {
                self.pending = true;
                false
            }
            _ => {
                self.next_build = Some(now + self.interval);
                self.pending = false;
                true
            }
        }
    }

    /// When the loop must wake to build a board it held back.
    pub fn deadline(&self) -> Option<Instant> {
        if self.pending {
            self.next_build
        } else {
            None
        }
    }
}

/// Publishes only boards that differ from the last one.
#[derive(Debug, Default)]
pub struct Changes {
    last: Option<Board>,
    seq: u64,
}

impl Changes {
    /// The frame to publish, if `board` is new.
    pub fn offer(&mut self, board: Board) -> Option<BoardFrame> {
        if self.last.as_ref() == Some(&board) {
            return None;
        }
        self.seq += 1;
        self.last = Some(board.clone());
        Some(BoardFrame::new(self.seq, board))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn throttle_builds_at_most_once_per_interval_and_never_forgets() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ms(250));
        assert_eq!(t.deadline(), None);
        assert!(t.wake(t0));
        assert_eq!(t.deadline(), None, "nothing held back");
        // A burst of wakes right after: held back, one deadline.
        for i in 1..100 {
            assert!(!t.wake(t0 + ms(i)));
        }
        assert_eq!(t.deadline(), Some(t0 + ms(250)));
        // The deadline wake builds.
        assert!(t.wake(t0 + ms(250)));
        assert_eq!(t.deadline(), None);
        // Long quiet: the next wake builds at once.
        assert!(t.wake(t0 + ms(5000)));
        // Over 10 s of constant wakes every 1 ms: 40 builds, not 10,000.
        let start = t0 + ms(10_000);
        let builds = (0..10_000).filter(|i| t.wake(start + ms(*i))).count();
        assert_eq!(builds, 40);
    }

    #[test]
    fn only_changes_are_published() {
        let mut c = Changes::default();
        let mut b = Board::default();
        let f = c.offer(b.clone()).unwrap();
        assert_eq!(f.seq, 1);
        assert!(c.offer(b.clone()).is_none());
        b.today.voicemails = 1;
        assert_eq!(c.offer(b.clone()).unwrap().seq, 2);
        assert!(c.offer(b).is_none());
    }

    #[test]
    fn event_data_is_json() {
        let f = BoardFrame::new(
            3,
            Board {
                callers: vec![BoardCaller {
                    call: 7,
                    position: 1,
                    priority: 0,
                    waiting_since_ms: 1_700_000_000_000,
                    answers: vec![("zone".into(), "2".into())],
                    reference: Some("4821135".into()),
                    offered_to: vec![],
                }],
                ..Default::default()
            },
        );
        let v: serde_json::Value = serde_json::from_str(&f.event_data(42)).unwrap();
        assert_eq!(v["seq"], 3);
        assert_eq!(v["now_ms"], 42);
        assert_eq!(v["board"]["callers"][0]["answers"][0][1], "2");
        assert_eq!(v["board"]["callers"][0]["reference"], "4821135");
    }
}
