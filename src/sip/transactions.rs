//! The transaction user's tables: every open server and client transaction by key,
//! the timer heap they and the calls share, and the endpoint's output queue, with the
//! seeded randomness (tags, branches) and the wall clock every message and event needs.
//!
//! Owns sending: a response through its server transaction (retransmitted by it), a
//! request through a new client transaction, a stateless refusal, and the events and
//! media commands that leave the endpoint. Calls borrow it to act; the endpoint decides
//! which call a message belongs to. Must not hold call state.

use super::endpoint::Output;
use super::message::{build_response, reason_phrase, Source};
use super::raw::RawMessage;
use super::transaction::{ClientTransaction, ServerTransaction, TimerConfig};
use crate::call::{CallEvent, CallId, MediaCommand, Peer, WallClock};
use crate::capacity::{release_spare, KEPT};
use rand::rngs::StdRng;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What a timer in the shared heap is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TimerRef {
    Server(String),
    Client(String),
    CallAnswer(CallId),
    CallMax(CallId),
}

pub(super) struct ServerEntry {
    pub tx: ServerTransaction,
    /// Where responses go (the top Via's sent-by or rport).
    pub peer: Peer,
    /// Where the request came from (for `received` / `rport`).
    pub source: SocketAddr,
    pub call: Option<CallId>,
    pub invite: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientPurpose {
    Bye(CallId),
    Invite(CallId),
    Info,
    Cancel,
    /// Sent for another state machine (`Endpoint::send_client_request`).
    External(u64),
}

pub(super) struct ClientEntry {
    pub tx: ClientTransaction,
    pub peer: Peer,
    pub purpose: ClientPurpose,
}

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

pub(super) struct Transactions {
    pub server: HashMap<String, ServerEntry>,
    pub client: HashMap<String, ClientEntry>,
    pub timer_config: TimerConfig,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_refs: HashMap<u64, TimerRef>,
    next_timer: u64,
    out: VecDeque<Output>,
    rng: StdRng,
    wall: WallClock,
    log_messages: bool,
}

impl Transactions {
    pub fn new(
        timer_config: TimerConfig,
        rng: StdRng,
        wall: WallClock,
        log_messages: bool,
    ) -> Self {
        Transactions {
            server: HashMap::new(),
            client: HashMap::new(),
            timer_config,
            timers: BinaryHeap::new(),
            timer_refs: HashMap::new(),
            next_timer: 0,
            out: VecDeque::new(),
            rng,
            wall,
            log_messages,
        }
    }

    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.wall = wall;
    }

    /// Wall-clock time at `now`, for events.
    pub fn wall(&self, now: Instant) -> std::time::SystemTime {
        self.wall.at(now)
    }

    pub fn token(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| TOKEN_ALPHABET[self.rng.gen_range(0..TOKEN_ALPHABET.len())] as char)
            .collect()
    }

    pub fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.token(16))
    }

    pub fn random_u32(&mut self) -> u32 {
        self.rng.gen()
    }

    // ---- outputs ------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn output(&mut self, o: Output) {
        self.out.push_back(o);
    }

    pub fn transmit(&mut self, peer: Peer, data: Arc<[u8]>) {
        if self.log_messages {
            tracing::debug!(to = %peer.remote, "sent:\n{}", String::from_utf8_lossy(&data));
        }
        self.out.push_back(Output::Transmit { peer, data });
    }

    pub fn emit(&mut self, ev: CallEvent) {
        self.out.push_back(Output::Call(ev));
    }

    pub fn media(&mut self, cmd: MediaCommand) {
        self.out.push_back(Output::Media(cmd));
    }

    // ---- timers -------------------------------------------------------------------

    /// Returns the timer's id, for [`Transactions::cancel`].
    pub fn schedule(&mut self, at: Instant, what: TimerRef) -> u64 {
        let id = self.next_timer;
        self.next_timer += 1;
        self.timer_refs.insert(id, what);
        self.timers.push(Reverse((at, id)));
        id
    }

    /// The timer will not fire. Its place in the heap goes when the heap is compacted.
    pub fn cancel(&mut self, id: u64) {
        self.timer_refs.remove(&id);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// The next timer due at or before `now`.
    pub fn next_due(&mut self, now: Instant) -> Option<TimerRef> {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(what) = self.timer_refs.remove(&id) {
                return Some(what);
            }
        }
        self.release_spare_capacity();
        None
    }

    /// A burst's capacity is given back (see `capacity`), and the heap loses the
    /// entries of cancelled timers once they are most of it: a call's maximum-duration
    /// timer would otherwise stay for hours after the call.
    fn release_spare_capacity(&mut self) {
        release_spare(&mut self.server);
        release_spare(&mut self.client);
        release_spare(&mut self.timer_refs);
        if self.timers.len() > KEPT && self.timers.len() > 2 * self.timer_refs.len() {
            let live = &self.timer_refs;
            self.timers.retain(|Reverse((_, id))| live.contains_key(id));
        }
        if self.timers.capacity() > KEPT && self.timers.len() * 4 < self.timers.capacity() {
            self.timers.shrink_to(self.timers.len() * 2);
        }
    }

    // ---- server side --------------------------------------------------------------

    pub fn open_server(&mut self, key: &str, peer: Peer, source: SocketAddr, invite: bool) {
        let tx = ServerTransaction::new(invite, peer.link.reliable(), self.timer_config);
        self.server.insert(
            key.to_string(),
            ServerEntry {
                tx,
                peer,
                source,
                call: None,
                invite,
            },
        );
    }

    pub fn attach_call(&mut self, key: &str, call: CallId) {
        if let Some(e) = self.server.get_mut(key) {
            e.call = Some(call);
        }
    }

    /// Answers the request `raw` of transaction `key`; with no `to_tag` a fresh one is
    /// added (a final response outside a dialog still needs one).
    #[allow(clippy::too_many_arguments)]
    pub fn respond(
        &mut self,
        now: Instant,
        key: &str,
        raw: &RawMessage,
        code: u16,
        phrase: Option<&str>,
        to_tag: Option<&str>,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) {
        let fresh;
        let to_tag = match to_tag {
            Some(t) => t,
            None => {
                fresh = self.token(10);
                fresh.as_str()
            }
        };
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let bytes: Arc<[u8]> = build_response(
            raw,
            Source { addr: entry.source },
            code,
            phrase.unwrap_or_else(|| reason_phrase(code)),
            Some(to_tag),
            extra,
            body,
        )
        .into();
        if entry.tx.send_response(now, code, bytes.clone()) {
            let peer = entry.peer;
            let at = entry.tx.poll_timeout();
            self.transmit(peer, bytes);
            if let Some(at) = at {
                self.schedule(at, TimerRef::Server(key.to_string()));
            }
        }
    }

    // ---- client side --------------------------------------------------------------

    pub fn send_request(
        &mut self,
        now: Instant,
        peer: Peer,
        invite: bool,
        bytes: Vec<u8>,
        branch: String,
        purpose: ClientPurpose,
    ) {
        let bytes: Arc<[u8]> = bytes.into();
        let tx = ClientTransaction::new(
            invite,
            peer.link.reliable(),
            self.timer_config,
            bytes.clone(),
            now,
        );
        if let Some(at) = tx.poll_timeout() {
            self.schedule(at, TimerRef::Client(branch.clone()));
        }
        self.client
            .insert(branch, ClientEntry { tx, peer, purpose });
        self.transmit(peer, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Link;
    use rand::SeedableRng;
    use std::time::{Duration, SystemTime};

    fn tables(t0: Instant) -> Transactions {
        Transactions::new(
            TimerConfig::default(),
            StdRng::seed_from_u64(1),
            WallClock::anchor(t0, SystemTime::UNIX_EPOCH),
            false,
        )
    }

    /// A burst of 20,000 transactions and their timers, all ended: once the timers
    /// have run, the tables are cut back instead of keeping their peak capacity; a
    /// table still in use keeps room for twice its entries.
    #[test]
    fn tables_give_back_the_capacity_of_a_burst() {
        let t0 = Instant::now();
        let mut t = tables(t0);
        let peer = Peer {
            link: Link::Udp(0),
            remote: "127.0.0.1:5062".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
        };
        let open = |t: &mut Transactions, i: usize| {
            let key = format!("k{i}");
            t.open_server(&key, peer, peer.remote, false);
            t.schedule(t0 + Duration::from_millis(i as u64), TimerRef::Server(key));
        };
        for i in 0..20_000 {
            open(&mut t, i);
        }
        let peak = t.server.capacity();
        assert!(peak >= 20_000);
        // Everything ends but the last 100.
        let end = t0 + Duration::from_millis(19_899);
        while let Some(TimerRef::Server(key)) = t.next_due(end) {
            t.server.remove(&key);
        }
        assert_eq!(t.server.len(), 100);
        assert!(t.server.capacity() <= KEPT, "{}", t.server.capacity());
        assert!(t.timer_refs.capacity() <= KEPT);
        assert!(t.timers.capacity() <= KEPT);
        // A table busy again grows as before, and is not cut while it is used.
        for i in 20_000..22_000 {
            open(&mut t, i);
        }
        let busy = t.server.capacity();
        assert!(t.next_due(end).is_none());
        assert_eq!(t.server.capacity(), busy);
    }

    #[test]
    fn cancelled_timers_leave_the_tables() {
        let t0 = Instant::now();
        let mut t = tables(t0);
        let far = t0 + Duration::from_secs(4 * 3600);
        let ids: Vec<u64> = (0..20_000)
            .map(|i| t.schedule(far, TimerRef::CallMax(i)))
            .collect();
        t.schedule(t0, TimerRef::CallAnswer(1));
        for id in ids {
            t.cancel(id);
        }
        assert!(matches!(t.next_due(t0), Some(TimerRef::CallAnswer(1))));
        assert!(t.next_due(t0).is_none());
        assert_eq!(t.timer_refs.len(), 0);
        assert!(
            t.timers.len() <= KEPT,
            "{} heap entries left",
            t.timers.len()
        );
        assert!(t.timers.capacity() <= KEPT, "{}", t.timers.capacity());
        assert!(t.next_due(far).is_none(), "a cancelled timer fired");
    }
}
