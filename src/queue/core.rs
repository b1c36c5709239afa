//! Call queue and operator distribution: who waits in which order, which operator is offered
//! which caller, operator availability (ringing, on call, wrap-up, paused, offline) and the
//! caller-side timers (position announcements, maximum wait). Inputs and the passage of time
//! go in, [`Action`]s for the IO layer come out.
//!
//! Sans-IO: this module must not touch SIP, media, sockets, the database or the clock, and must
//! never sleep or block. Time only arrives as `Instant` arguments.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A caller's call, from joining the queue until its conversation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// An operator's pseudonym, the same string as their SIP user.
pub type OperatorId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Offer each caller to the available operator who has been idle longest.
    #[default]
    LongestIdle,
    /// Offer the caller to every available operator at once; the first answer takes it.
    RingAll,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub strategy: Strategy,
    /// Serve higher `priority` first, arrival order within a priority; off means arrival order.
    pub priority_first: bool,
    pub ring_timeout: Duration,
    /// Missed offers in a row (ring timeout, reject, failure) that auto-pause an operator;
    /// 0 never pauses.
    pub max_misses: u32,
    /// An operator who just missed an offer is skipped this long, so the caller moves on and a
    /// phone that just declined is not rung again at once.
    pub miss_cooldown: Duration,
    pub wrap_up: Duration,
    /// Periodic position announcements; `None` turns position announcements off entirely.
    pub announce_interval: Option<Duration>,
    /// No caller hears two announcements closer together than this, improvements included.
    pub announce_min_interval: Duration,
    pub max_wait: Option<Duration>,
    pub voicemail_when_nobody_logged_in: bool,
    pub voicemail_when_last_operator_leaves: bool,
    /// A new registration makes the operator Available (true) or Paused (false).
    pub available_on_register: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::LongestIdle,
            priority_first: false,
            ring_timeout: Duration::from_secs(20),
            max_misses: 3,
            miss_cooldown: Duration::from_secs(5),
            wrap_up: Duration::from_secs(30),
            announce_interval: Some(Duration::from_secs(60)),
            announce_min_interval: Duration::from_secs(20),
            max_wait: Some(Duration::from_secs(600)),
            voicemail_when_nobody_logged_in: true,
            voicemail_when_last_operator_leaves: true,
            available_on_register: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The operator now has at least one registration binding.
    OperatorRegistered(OperatorId),
    /// The operator's last registration binding is gone.
    OperatorUnregistered(OperatorId),
    /// Back from pause, or wrap-up ended early.
    OperatorSetAvailable(OperatorId),
    OperatorPaused(OperatorId),
    CallerJoined {
        call: CallId,
        priority: u8,
    },
    /// The caller hung up.
    CallerLeft {
        call: CallId,
    },
    CallerChoseVoicemail {
        call: CallId,
    },
    OfferAnswered {
        call: CallId,
        operator: OperatorId,
    },
    /// Busy or declined.
    OfferRejected {
        call: CallId,
        operator: OperatorId,
    },
    /// The operator leg could not be set up (unreachable, transport error, error response).
    OfferFailed {
        call: CallId,
        operator: OperatorId,
    },
    /// The bridged conversation is over.
    CallEnded {
        call: CallId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorState {
    /// No registration binding.
    Offline,
    Available,
    Ringing(CallId),
    OnCall(CallId),
    WrapUp(Instant),
    Paused,
}

/// See [`Queue::availability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Free,
    AllBusy,
    NobodyLoggedIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoicemailReason {
    CallerChoice,
    MaxWait,
    NoOperators,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissReason {
    Timeout,
    Rejected,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ring this operator for this caller.
    Offer {
        call: CallId,
        operator: OperatorId,
    },
    /// Tear down the operator leg of this offer: CANCEL while it rings, BYE if an answer raced
    /// the cancellation. Also sent for answers to offers that are no longer current.
    CancelOffer {
        call: CallId,
        operator: OperatorId,
    },
    /// Connect caller and operator; the call has left the queue.
    Bridge {
        call: CallId,
        operator: OperatorId,
    },
    AnnouncePosition {
        call: CallId,
        position: usize,
    },
    ToVoicemail {
        call: CallId,
        reason: VoicemailReason,
    },
    /// Confirms the caller's hang-up removed them from the queue.
    Abandoned {
        call: CallId,
        waited: Duration,
    },
    OperatorAutoPaused {
        operator: OperatorId,
    },
    Event(QueueEvent),
}

/// A record for the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEvent {
    pub at: Instant,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Joined {
        call: CallId,
        priority: u8,
        position: usize,
    },
    PositionAnnounced {
        call: CallId,
        position: usize,
    },
    Offered {
        call: CallId,
        operator: OperatorId,
    },
    OfferMissed {
        call: CallId,
        operator: OperatorId,
        reason: MissReason,
    },
    Answered {
        call: CallId,
        operator: OperatorId,
        waited: Duration,
    },
    Abandoned {
        call: CallId,
        waited: Duration,
    },
    Overflowed {
        call: CallId,
        reason: VoicemailReason,
        waited: Duration,
    },
    OperatorStateChanged {
        operator: OperatorId,
        state: OperatorState,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// In queue order; `position` starts at 1.
    pub callers: Vec<CallerView>,
    /// Sorted by id.
    pub operators: Vec<OperatorView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerView {
    pub call: CallId,
    pub position: usize,
    pub priority: u8,
    pub waited: Duration,
    pub offered_to: Vec<OperatorId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorView {
    pub id: OperatorId,
    pub state: OperatorState,
    /// Only while Available.
    pub idle_for: Option<Duration>,
    pub consecutive_misses: u32,
}

/// What the end of the current call leads to; pause and logout requests made during a call
/// wait here because the conversation itself must not be disturbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterCall {
    WrapUp,
    Pause,
    Offline,
}

#[derive(Debug)]
struct Operator {
    state: OperatorState,
    idle_since: Instant,
    misses: u32,
    cooldown_until: Option<Instant>,
    after_call: AfterCall,
}

impl Operator {
    fn logged_in(&self) -> bool {
        self.state != OperatorState::Offline && self.after_call != AfterCall::Offline
    }
}

#[derive(Debug)]
struct Offer {
    operators: Vec<OperatorId>,
    until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Announced {
    at: Instant,
    position: usize,
}

#[derive(Debug)]
struct Caller {
    call: CallId,
    priority: u8,
    joined_at: Instant,
    offer: Option<Offer>,
    announced: Option<Announced>,
}

#[derive(Debug)]
pub struct Queue {
    config: QueueConfig,
    /// Kept in service order, so a caller's index is their position minus one.
    callers: Vec<Caller>,
    operators: BTreeMap<OperatorId, Operator>,
    actions: VecDeque<Action>,
}

impl Queue {
    pub fn new(config: QueueConfig) -> Self {
        Self {
            config,
            callers: Vec::new(),
            operators: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        // Deadlines that passed before this input arrived take effect first.
        self.expire(now);
        match input {
            Input::OperatorRegistered(id) => self.operator_registered(id, now),
            Input::OperatorUnregistered(id) => self.operator_unregistered(&id, now),
            Input::OperatorSetAvailable(id) => self.operator_set_available(&id, now),
            Input::OperatorPaused(id) => self.operator_paused(&id, now),
            Input::CallerJoined { call, priority } => self.caller_joined(call, priority, now),
            Input::CallerLeft { call } => self.caller_left(call, now),
            Input::CallerChoseVoicemail { call } => {
                self.overflow(call, VoicemailReason::CallerChoice, now)
            }
            Input::OfferAnswered { call, operator } => self.offer_answered(call, operator, now),
            Input::OfferRejected { call, operator } => {
                self.offer_declined(call, &operator, MissReason::Rejected, now)
            }
            Input::OfferFailed { call, operator } => {
                self.offer_declined(call, &operator, MissReason::Failed, now)
            }
            Input::CallEnded { call } => self.call_ended(call, now),
        }
        self.settle(now);
    }

    /// Call when `poll_timeout` is due; calling early or late is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.settle(now);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for (i, caller) in self.callers.iter().enumerate() {
            if let Some(max) = self.config.max_wait {
                consider(caller.joined_at + max);
            }
            match (&caller.offer, self.config.announce_interval) {
                (Some(offer), _) => consider(offer.until),
                (None, Some(interval)) => consider(self.announce_due(caller, i + 1, interval)),
                (None, None) => {}
            }
        }
        for op in self.operators.values() {
            if let OperatorState::WrapUp(until) = op.state {
                consider(until);
            }
            if let Some(t) = op.cooldown_until {
                consider(t);
            }
        }
        next
    }

    /// For the live status page; `now` only measures waiting and idle times.
    pub fn snapshot(&self, now: Instant) -> QueueSnapshot {
        let callers = self
            .callers
            .iter()
            .enumerate()
            .map(|(i, c)| CallerView {
                call: c.call,
                position: i + 1,
                priority: c.priority,
                waited: now.saturating_duration_since(c.joined_at),
                offered_to: c
                    .offer
                    .as_ref()
                    .map(|o| o.operators.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let operators = self
            .operators
            .iter()
            .map(|(id, op)| OperatorView {
                id: id.clone(),
                state: op.state.clone(),
                idle_for: (op.state == OperatorState::Available)
                    .then(|| now.saturating_duration_since(op.idle_since)),
                consecutive_misses: op.misses,
            })
            .collect();
        QueueSnapshot { callers, operators }
    }

    /// What a caller joining now would meet: an operator offered at once, a wait, or
    /// (when the queue sends callers to voicemail with nobody logged in) no operator.
    pub fn availability(&self, now: Instant) -> Availability {
        if self.config.voicemail_when_nobody_logged_in && !self.anyone_logged_in() {
            return Availability::NobodyLoggedIn;
        }
        let free = self.operators.values().any(|op| {
            op.state == OperatorState::Available && op.cooldown_until.is_none_or(|t| t <= now)
        });
        // Callers already waiting are served first, and only the first of them can be
        // waiting for a free operator (a miss cooldown).
        if free && self.callers.iter().all(|c| c.offer.is_some()) {
            Availability::Free
        } else {
            Availability::AllBusy
        }
    }

    pub fn operator_state(&self, id: &str) -> Option<&OperatorState> {
        self.operators.get(id).map(|op| &op.state)
    }

    fn operator_registered(&mut self, id: OperatorId, now: Instant) {
        let op = self.operators.entry(id.clone()).or_insert(Operator {
            state: OperatorState::Offline,
            idle_since: now,
            misses: 0,
            cooldown_until: None,
            after_call: AfterCall::WrapUp,
        });
        match op.state {
            OperatorState::Offline => {
                op.misses = 0;
                op.cooldown_until = None;
                let state = if self.config.available_on_register {
                    OperatorState::Available
                } else {
                    OperatorState::Paused
                };
                self.set_state(&id, state, now);
            }
            OperatorState::OnCall(_) if op.after_call == AfterCall::Offline => {
                op.after_call = AfterCall::WrapUp;
            }
            _ => {}
        }
    }

    fn operator_unregistered(&mut self, id: &str, now: Instant) {
        let Some(op) = self.operators.get_mut(id) else {
            return;
        };
        match op.state {
            OperatorState::Offline => return,
            OperatorState::OnCall(_) => op.after_call = AfterCall::Offline,
            OperatorState::Ringing(call) => {
                self.withdraw(call, id);
                self.push_cancel(call, id);
                self.set_state(id, OperatorState::Offline, now);
            }
            _ => self.set_state(id, OperatorState::Offline, now),
        }
        self.check_anyone_left(now);
    }

    fn operator_set_available(&mut self, id: &str, now: Instant) {
        let Some(op) = self.operators.get_mut(id) else {
            return;
        };
        match op.state {
            OperatorState::Available | OperatorState::Paused | OperatorState::WrapUp(_) => {
                op.misses = 0;
                op.cooldown_until = None;
                self.set_state(id, OperatorState::Available, now);
            }
            OperatorState::OnCall(_) if op.after_call == AfterCall::Pause => {
                op.after_call = AfterCall::WrapUp;
            }
            _ => {}
        }
    }

    fn operator_paused(&mut self, id: &str, now: Instant) {
        let Some(op) = self.operators.get_mut(id) else {
            return;
        };
        match op.state {
            OperatorState::Available | OperatorState::WrapUp(_) => {
                self.set_state(id, OperatorState::Paused, now)
            }
            OperatorState::Ringing(call) => {
                self.withdraw(call, id);
                self.push_cancel(call, id);
                self.set_state(id, OperatorState::Paused, now);
            }
            OperatorState::OnCall(_) if op.after_call == AfterCall::WrapUp => {
                op.after_call = AfterCall::Pause;
            }
            _ => {}
        }
    }

    fn caller_joined(&mut self, call: CallId, priority: u8, now: Instant) {
        if self.caller_index(call).is_some() || self.operator_on_call(call).is_some() {
            return;
        }
        let index = if self.config.priority_first {
            self.callers
                .iter()
                .position(|c| c.priority < priority)
                .unwrap_or(self.callers.len())
        } else {
            self.callers.len()
        };
        self.callers.insert(
            index,
            Caller {
                call,
                priority,
                joined_at: now,
                offer: None,
                announced: None,
            },
        );
        self.event(
            now,
            EventKind::Joined {
                call,
                priority,
                position: index + 1,
            },
        );
        if self.config.voicemail_when_nobody_logged_in && !self.anyone_logged_in() {
            self.overflow(call, VoicemailReason::NoOperators, now);
        }
    }

    fn caller_left(&mut self, call: CallId, now: Instant) {
        if let Some(caller) = self.take_caller(call, now) {
            let waited = now.saturating_duration_since(caller.joined_at);
            self.event(now, EventKind::Abandoned { call, waited });
            self.actions.push_back(Action::Abandoned { call, waited });
        } else {
            // A hang-up during the conversation ends it.
            self.call_ended(call, now);
        }
    }

    fn offer_answered(&mut self, call: CallId, operator: OperatorId, now: Instant) {
        let ringing = self.operators.get(&operator).map(|op| &op.state)
            == Some(&OperatorState::Ringing(call));
        let offered = self
            .caller_index(call)
            .and_then(|i| self.callers[i].offer.as_mut());
        let Some(offer) = offered.filter(|o| ringing && o.operators.contains(&operator)) else {
            // Lost a race with a cancel, timeout or another operator's answer.
            if ringing {
                self.set_state(&operator, OperatorState::Available, now);
            }
            self.push_cancel(call, &operator);
            return;
        };
        // Leave only the other operators in the offer, so taking the caller cancels just them.
        offer.operators.retain(|o| o != &operator);
        let Some(caller) = self.take_caller(call, now) else {
            return;
        };
        if let Some(op) = self.operators.get_mut(&operator) {
            op.misses = 0;
            op.cooldown_until = None;
            op.after_call = AfterCall::WrapUp;
        }
        self.set_state(&operator, OperatorState::OnCall(call), now);
        let waited = now.saturating_duration_since(caller.joined_at);
        self.event(
            now,
            EventKind::Answered {
                call,
                operator: operator.clone(),
                waited,
            },
        );
        self.actions.push_back(Action::Bridge { call, operator });
    }

    fn offer_declined(&mut self, call: CallId, operator: &str, reason: MissReason, now: Instant) {
        if self.operators.get(operator).map(|op| &op.state) == Some(&OperatorState::Ringing(call)) {
            self.withdraw(call, operator);
            self.missed(call, operator, reason, now);
        }
    }

    fn call_ended(&mut self, call: CallId, now: Instant) {
        let Some(id) = self.operator_on_call(call) else {
            // Ended before it was ever bridged: the caller is gone.
            if self.caller_index(call).is_some() {
                self.caller_left(call, now);
            }
            return;
        };
        let Some(op) = self.operators.get_mut(&id) else {
            return;
        };
        let after = std::mem::replace(&mut op.after_call, AfterCall::WrapUp);
        let state = match after {
            AfterCall::WrapUp if self.config.wrap_up.is_zero() => OperatorState::Available,
            AfterCall::WrapUp => OperatorState::WrapUp(now + self.config.wrap_up),
            AfterCall::Pause => OperatorState::Paused,
            AfterCall::Offline => OperatorState::Offline,
        };
        self.set_state(&id, state, now);
    }

    /// Applies every deadline at or before `now`.
    fn expire(&mut self, now: Instant) {
        if let Some(max) = self.config.max_wait {
            let overdue: Vec<CallId> = self
                .callers
                .iter()
                .filter(|c| c.joined_at + max <= now)
                .map(|c| c.call)
                .collect();
            for call in overdue {
                self.overflow(call, VoicemailReason::MaxWait, now);
            }
        }
        let mut unanswered = Vec::new();
        for caller in &mut self.callers {
            if caller.offer.as_ref().is_some_and(|o| o.until <= now) {
                if let Some(offer) = caller.offer.take() {
                    unanswered.push((caller.call, offer.operators));
                }
            }
        }
        for (call, operators) in unanswered {
            for operator in operators {
                self.push_cancel(call, &operator);
                self.missed(call, &operator, MissReason::Timeout, now);
            }
        }
        let mut wrapped = Vec::new();
        for (id, op) in &mut self.operators {
            if op.cooldown_until.is_some_and(|t| t <= now) {
                op.cooldown_until = None;
            }
            if let OperatorState::WrapUp(until) = op.state {
                if until <= now {
                    wrapped.push((id.clone(), until));
                }
            }
        }
        for (id, until) in wrapped {
            self.set_state(&id, OperatorState::Available, until);
        }
    }

    /// Offers waiting callers to eligible operators, then makes due announcements.
    fn settle(&mut self, now: Instant) {
        self.dispatch(now);
        self.announce(now);
    }

    fn dispatch(&mut self, now: Instant) {
        while let Some(index) = self.callers.iter().position(|c| c.offer.is_none()) {
            let mut eligible: Vec<(&OperatorId, &Operator)> = self
                .operators
                .iter()
                .filter(|(_, op)| {
                    op.state == OperatorState::Available
                        && op.cooldown_until.is_none_or(|t| t <= now)
                })
                .collect();
            // Stable sort: equal idle times fall back to id order from the map.
            eligible.sort_by_key(|(_, op)| op.idle_since);
            let chosen: Vec<OperatorId> = match self.config.strategy {
                Strategy::LongestIdle => eligible
                    .first()
                    .map(|(id, _)| (*id).clone())
                    .into_iter()
                    .collect(),
                Strategy::RingAll => eligible.iter().map(|(id, _)| (*id).clone()).collect(),
            };
            if chosen.is_empty() {
                return;
            }
            let call = self.callers[index].call;
            self.callers[index].offer = Some(Offer {
                operators: chosen.clone(),
                until: now + self.config.ring_timeout,
            });
            for operator in chosen {
                self.set_state(&operator, OperatorState::Ringing(call), now);
                self.event(
                    now,
                    EventKind::Offered {
                        call,
                        operator: operator.clone(),
                    },
                );
                self.actions.push_back(Action::Offer { call, operator });
            }
        }
    }

    fn announce(&mut self, now: Instant) {
        let Some(interval) = self.config.announce_interval else {
            return;
        };
        for index in 0..self.callers.len() {
            let position = index + 1;
            let caller = &self.callers[index];
            // While an operator's phone rings the caller is about to be answered.
            if caller.offer.is_some() || self.announce_due(caller, position, interval) > now {
                continue;
            }
            let call = caller.call;
            self.callers[index].announced = Some(Announced { at: now, position });
            self.event(now, EventKind::PositionAnnounced { call, position });
            self.actions
                .push_back(Action::AnnouncePosition { call, position });
        }
    }

    fn announce_due(&self, caller: &Caller, position: usize, interval: Duration) -> Instant {
        let min = self.config.announce_min_interval;
        match caller.announced {
            None => caller.joined_at,
            Some(last) if position < last.position => last.at + min,
            Some(last) => last.at + interval.max(min),
        }
    }

    fn missed(&mut self, call: CallId, operator: &str, reason: MissReason, now: Instant) {
        let Some(op) = self.operators.get_mut(operator) else {
            return;
        };
        op.misses += 1;
        let pause = self.config.max_misses > 0 && op.misses >= self.config.max_misses;
        if !pause && !self.config.miss_cooldown.is_zero() {
            op.cooldown_until = Some(now + self.config.miss_cooldown);
        }
        self.event(
            now,
            EventKind::OfferMissed {
                call,
                operator: operator.to_owned(),
                reason,
            },
        );
        if pause {
            self.set_state(operator, OperatorState::Paused, now);
            self.actions.push_back(Action::OperatorAutoPaused {
                operator: operator.to_owned(),
            });
        } else {
            self.set_state(operator, OperatorState::Available, now);
        }
    }

    fn overflow(&mut self, call: CallId, reason: VoicemailReason, now: Instant) {
        let Some(caller) = self.take_caller(call, now) else {
            return;
        };
        let waited = now.saturating_duration_since(caller.joined_at);
        self.event(
            now,
            EventKind::Overflowed {
                call,
                reason,
                waited,
            },
        );
        self.actions.push_back(Action::ToVoicemail { call, reason });
    }

    fn check_anyone_left(&mut self, now: Instant) {
        if self.config.voicemail_when_last_operator_leaves && !self.anyone_logged_in() {
            let waiting: Vec<CallId> = self.callers.iter().map(|c| c.call).collect();
            for call in waiting {
                self.overflow(call, VoicemailReason::NoOperators, now);
            }
        }
    }

    /// Removes the caller from the queue, cancelling whatever offers are still ringing.
    fn take_caller(&mut self, call: CallId, now: Instant) -> Option<Caller> {
        let caller = self.callers.remove(self.caller_index(call)?);
        for operator in caller.offer.iter().flat_map(|o| &o.operators) {
            if self.operators.get(operator).map(|op| &op.state)
                == Some(&OperatorState::Ringing(call))
            {
                self.set_state(operator, OperatorState::Available, now);
            }
            self.push_cancel(call, operator);
        }
        Some(caller)
    }

    /// Drops one operator from a caller's offer; the caller waits again once nobody rings.
    fn withdraw(&mut self, call: CallId, operator: &str) {
        let Some(index) = self.caller_index(call) else {
            return;
        };
        let caller = &mut self.callers[index];
        let emptied = caller.offer.as_mut().is_some_and(|o| {
            o.operators.retain(|id| id != operator);
            o.operators.is_empty()
        });
        if emptied {
            caller.offer = None;
        }
    }

    fn set_state(&mut self, id: &str, state: OperatorState, now: Instant) {
        let Some(op) = self.operators.get_mut(id) else {
            return;
        };
        if op.state == state {
            return;
        }
        // An offer that came to nothing does not reset how long the operator has been idle.
        if state == OperatorState::Available && !matches!(op.state, OperatorState::Ringing(_)) {
            op.idle_since = now;
        }
        op.state = state.clone();
        self.event(
            now,
            EventKind::OperatorStateChanged {
                operator: id.to_owned(),
                state,
            },
        );
    }

    fn push_cancel(&mut self, call: CallId, operator: &str) {
        self.actions.push_back(Action::CancelOffer {
            call,
            operator: operator.to_owned(),
        });
    }

    fn event(&mut self, at: Instant, kind: EventKind) {
        self.actions
            .push_back(Action::Event(QueueEvent { at, kind }));
    }

    fn anyone_logged_in(&self) -> bool {
        self.operators.values().any(Operator::logged_in)
    }

    fn caller_index(&self, call: CallId) -> Option<usize> {
        self.callers.iter().position(|c| c.call == call)
    }

    fn operator_on_call(&self, call: CallId) -> Option<OperatorId> {
        self.operators
            .iter()
            .find(|(_, op)| op.state == OperatorState::OnCall(call))
            .map(|(id, _)| id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    const A: &str = "alice";
    const B: &str = "bob";
    const C: &str = "carol";

    fn quiet() -> QueueConfig {
        QueueConfig {
            announce_interval: None,
            max_wait: None,
            ..QueueConfig::default()
        }
    }

    struct Sim {
        q: Queue,
        base: Instant,
    }

    impl Sim {
        fn new(config: QueueConfig) -> Self {
            Self {
                q: Queue::new(config),
                base: Instant::now(),
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.base + Duration::from_secs(secs)
        }

        /// Everything emitted, events included.
        fn all(&mut self, secs: u64, input: Input) -> Vec<Action> {
            self.q.handle(input, self.at(secs));
            std::iter::from_fn(|| self.q.poll_action()).collect()
        }

        /// Only the commands for the IO layer.
        fn send(&mut self, secs: u64, input: Input) -> Vec<Action> {
            commands(self.all(secs, input))
        }

        fn tick(&mut self, secs: u64) -> Vec<Action> {
            self.q.handle_timeout(self.at(secs));
            commands(std::iter::from_fn(|| self.q.poll_action()).collect())
        }

        fn state(&self, id: &str) -> OperatorState {
            self.q.operator_state(id).cloned().unwrap()
        }

        fn waiting(&self, secs: u64) -> Vec<CallId> {
            let snap = self.q.snapshot(self.at(secs));
            snap.callers.iter().map(|c| c.call).collect()
        }

        fn misses(&self, id: &str) -> u32 {
            let snap = self.q.snapshot(self.base);
            snap.operators
                .iter()
                .find(|o| o.id == id)
                .unwrap()
                .consecutive_misses
        }

        /// Registers operators one second apart, starting at t=0.
        fn with_operators(config: QueueConfig, ids: &[&str]) -> Self {
            let mut sim = Self::new(config);
            for (i, id) in ids.iter().enumerate() {
                sim.send(i as u64, reg(id));
            }
            sim
        }
    }

    fn commands(actions: Vec<Action>) -> Vec<Action> {
        actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Event(_)))
            .collect()
    }

    fn events(actions: &[Action]) -> Vec<EventKind> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(e) => Some(e.kind.clone()),
                _ => None,
            })
            .collect()
    }

    fn reg(id: &str) -> Input {
        Input::OperatorRegistered(id.to_owned())
    }
    fn unreg(id: &str) -> Input {
        Input::OperatorUnregistered(id.to_owned())
    }
    fn join(n: u64) -> Input {
        Input::CallerJoined {
            call: CallId(n),
            priority: 0,
        }
    }
    fn join_prio(n: u64, priority: u8) -> Input {
        Input::CallerJoined {
            call: CallId(n),
            priority,
        }
    }
    fn left(n: u64) -> Input {
        Input::CallerLeft { call: CallId(n) }
    }
    fn answer(n: u64, id: &str) -> Input {
        Input::OfferAnswered {
            call: CallId(n),
            operator: id.to_owned(),
        }
    }
    fn reject(n: u64, id: &str) -> Input {
        Input::OfferRejected {
            call: CallId(n),
            operator: id.to_owned(),
        }
    }
    fn end(n: u64) -> Input {
        Input::CallEnded { call: CallId(n) }
    }
    fn offer(n: u64, id: &str) -> Action {
        Action::Offer {
            call: CallId(n),
            operator: id.to_owned(),
        }
    }
    fn cancel(n: u64, id: &str) -> Action {
        Action::CancelOffer {
            call: CallId(n),
            operator: id.to_owned(),
        }
    }
    fn bridge(n: u64, id: &str) -> Action {
        Action::Bridge {
            call: CallId(n),
            operator: id.to_owned(),
        }
    }
    fn voicemail(n: u64, reason: VoicemailReason) -> Action {
        Action::ToVoicemail {
            call: CallId(n),
            reason,
        }
    }
    fn announce(n: u64, position: usize) -> Action {
        Action::AnnouncePosition {
            call: CallId(n),
            position,
        }
    }

    #[test]
    fn longest_idle_picks_operator_idle_longest() {
        let mut sim = Sim::new(quiet());
        sim.send(0, reg(A));
        sim.send(10, reg(B));
        sim.send(5, reg(C));
        assert_eq!(sim.send(20, join(1)), [offer(1, A)]);
        assert_eq!(sim.send(21, join(2)), [offer(2, C)]);
        assert_eq!(sim.send(22, join(3)), [offer(3, B)]);
        assert_eq!(sim.send(23, answer(1, A)), [bridge(1, A)]);
        assert_eq!(sim.send(23, answer(2, C)), [bridge(2, C)]);
        assert_eq!(sim.send(23, answer(3, B)), [bridge(3, B)]);
        // Idle time restarts when wrap-up ends: A wraps up until 60, C until 70.
        sim.send(30, end(1));
        sim.send(40, end(2));
        sim.send(45, end(3));
        assert_eq!(sim.state(A), OperatorState::WrapUp(sim.at(60)));
        assert_eq!(sim.tick(75), []);
        assert_eq!(sim.send(80, join(4)), [offer(4, A)]);
        assert_eq!(sim.send(80, join(5)), [offer(5, C)]);
        assert_eq!(sim.send(80, join(6)), [offer(6, B)]);
    }

    #[test]
    fn ring_all_first_answer_wins() {
        let config = QueueConfig {
            strategy: Strategy::RingAll,
            ..quiet()
        };
        let mut sim = Sim::with_operators(config, &[A, B, C]);
        assert_eq!(
            sim.send(10, join(1)),
            [offer(1, A), offer(1, B), offer(1, C)]
        );
        assert_eq!(
            sim.send(12, answer(1, B)),
            [cancel(1, A), cancel(1, C), bridge(1, B)]
        );
        assert_eq!(sim.state(A), OperatorState::Available);
        assert_eq!(sim.state(B), OperatorState::OnCall(CallId(1)));
        // The late answer from A lost the race: its leg is torn down.
        assert_eq!(sim.send(12, answer(1, A)), [cancel(1, A)]);
        assert_eq!(sim.misses(A), 0);

        assert_eq!(sim.send(13, join(2)), [offer(2, A), offer(2, C)]);
        // One decline leaves the others ringing.
        assert_eq!(sim.send(14, reject(2, A)), []);
        assert_eq!(sim.state(C), OperatorState::Ringing(CallId(2)));
        assert_eq!(sim.tick(19), []);
        // C times out; A's cooldown is long over, so the caller rings A again.
        assert_eq!(sim.tick(33), [cancel(2, C), offer(2, A)]);
    }

    #[test]
    fn ring_all_rings_everyone_available_for_the_next_caller() {
        let config = QueueConfig {
            strategy: Strategy::RingAll,
            ..quiet()
        };
        let mut sim = Sim::with_operators(config, &[A, B]);
        sim.send(10, join(1));
        assert_eq!(sim.send(10, join(2)), []);
        assert_eq!(
            sim.send(11, answer(1, A)),
            [cancel(1, B), bridge(1, A), offer(2, B)]
        );
    }

    #[test]
    fn callers_are_served_in_arrival_order() {
        let config = QueueConfig {
            wrap_up: Duration::ZERO,
            ..quiet()
        };
        let mut sim = Sim::with_operators(config, &[A]);
        sim.send(1, join(1));
        sim.send(2, join(2));
        sim.send(3, join(3));
        assert_eq!(sim.waiting(3), [CallId(1), CallId(2), CallId(3)]);
        sim.send(4, answer(1, A));
        assert_eq!(sim.waiting(4), [CallId(2), CallId(3)]);
        assert_eq!(sim.send(5, end(1)), [offer(2, A)]);
        sim.send(6, answer(2, A));
        assert_eq!(sim.send(7, end(2)), [offer(3, A)]);
    }

    #[test]
    fn priority_first_when_configured() {
        for (priority_first, expected) in [(true, [3, 4, 5, 2]), (false, [2, 3, 4, 5])] {
            let config = QueueConfig {
                priority_first,
                wrap_up: Duration::ZERO,
                ..quiet()
            };
            let mut sim = Sim::with_operators(config, &[A]);
            sim.send(1, join_prio(1, 0));
            sim.send(1, answer(1, A));
            sim.send(2, join_prio(2, 0));
            sim.send(3, join_prio(3, 5));
            sim.send(4, join_prio(4, 5));
            sim.send(5, join_prio(5, 1));
            let expected: Vec<CallId> = expected.into_iter().map(CallId).collect();
            assert_eq!(sim.waiting(5), expected);
            assert_eq!(sim.send(6, end(1)), [offer(expected[0].0, A)]);
        }
    }

    #[test]
    fn ring_timeout_moves_to_next_operator() {
        let mut sim = Sim::with_operators(quiet(), &[A, B]);
        assert_eq!(sim.send(10, join(1)), [offer(1, A)]);
        assert_eq!(sim.q.poll_timeout(), Some(sim.at(30)));
        assert_eq!(sim.tick(29), []);
        let all = {
            sim.q.handle_timeout(sim.at(30));
            std::iter::from_fn(|| sim.q.poll_action()).collect::<Vec<_>>()
        };
        assert!(events(&all).contains(&EventKind::OfferMissed {
            call: CallId(1),
            operator: A.into(),
            reason: MissReason::Timeout,
        }));
        assert_eq!(commands(all), [cancel(1, A), offer(1, B)]);
        assert_eq!(sim.misses(A), 1);
        // A's cooldown (35) comes before B's ring timeout (50).
        assert_eq!(sim.q.poll_timeout(), Some(sim.at(35)));
        assert_eq!(sim.send(31, answer(1, B)), [bridge(1, B)]);
        assert_eq!(sim.misses(A), 1);
    }

    #[test]
    fn missed_offers_in_a_row_auto_pause() {
        let mut sim = Sim::with_operators(quiet(), &[A]);
        assert_eq!(sim.send(10, join(1)), [offer(1, A)]);
        assert_eq!(sim.send(11, reject(1, A)), []);
        // The only operator is retried once the miss cooldown is over.
        assert_eq!(sim.tick(15), []);
        assert_eq!(sim.tick(16), [offer(1, A)]);
        assert_eq!(sim.tick(36), [cancel(1, A)]);
        assert_eq!(sim.tick(41), [offer(1, A)]);
        assert_eq!(sim.misses(A), 2);
        let failed = Input::OfferFailed {
            call: CallId(1),
            operator: A.into(),
        };
        assert_eq!(
            sim.send(42, failed),
            [Action::OperatorAutoPaused { operator: A.into() }]
        );
        assert_eq!(sim.state(A), OperatorState::Paused);
        // Paused still counts as logged in: the caller keeps waiting.
        assert_eq!(sim.waiting(42), [CallId(1)]);
        assert_eq!(sim.tick(100), []);
        assert_eq!(
            sim.send(100, Input::OperatorSetAvailable(A.into())),
            [offer(1, A)]
        );
        assert_eq!(sim.misses(A), 0);
    }

    #[test]
    fn an_answer_resets_the_miss_count() {
        let mut sim = Sim::with_operators(quiet(), &[A]);
        sim.send(10, join(1));
        sim.send(11, reject(1, A));
        sim.tick(16);
        sim.send(17, reject(1, A));
        assert_eq!(sim.misses(A), 2);
        sim.tick(22);
        assert_eq!(sim.send(23, answer(1, A)), [bridge(1, A)]);
        assert_eq!(sim.misses(A), 0);
    }

    #[test]
    fn wrap_up_then_next_caller_is_offered() {
        let mut sim = Sim::with_operators(quiet(), &[A]);
        sim.send(10, join(1));
        sim.send(11, answer(1, A));
        assert_eq!(sim.send(12, join(2)), []);
        assert_eq!(sim.send(100, end(1)), []);
        assert_eq!(sim.state(A), OperatorState::WrapUp(sim.at(130)));
        assert_eq!(sim.q.poll_timeout(), Some(sim.at(130)));
        assert_eq!(sim.tick(129), []);
        assert_eq!(sim.tick(130), [offer(2, A)]);
    }

    #[test]
    fn set_available_ends_wrap_up_early() {
        let mut sim = Sim::with_operators(quiet(), &[A]);
        sim.send(10, join(1));
        sim.send(11, answer(1, A));
        sim.send(12, join(2));
        sim.send(100, end(1));
        assert_eq!(
            sim.send(105, Input::OperatorSetAvailable(A.into())),
            [offer(2, A)]
        );
    }

    #[test]
    fn abandonment_while_waiting_reports_wait_time() {
        let mut sim = Sim::with_operators(quiet(), &[A]);
        sim.send(1, join(1));
        sim.send(1, answer(1, A));
        sim.send(10, join(2));
        let all = sim.all(25, left(2));
        assert!(events(&all).contains(&EventKind::Abandoned {
            call: CallId(2),
            waited: Duration::from_secs(15),
        }));
        assert_eq!(
            commands(all),
            [Action::Abandoned {
                call: CallId(2),
                waited: Duration::from_secs(15)
            }]
        );
        assert!(sim.waiting(25).is_empty());
    }

    #[test]
    fn abandonment_while_ringing_cancels_offers() {
        for strategy in [Strategy::LongestIdle, Strategy::RingAll] {
            let config = QueueConfig {
                strategy,
                ..quiet()
            };
            let mut sim = Sim::with_operators(config, &[A, B]);
            sim.send(10, join(1));
            let mut expected = vec![cancel(1, A)];
            if strategy == Strategy::RingAll {
                expected.push(cancel(1, B));
            }
            expected.push(Action::Abandoned {
                call: CallId(1),
                waited: Duration::from_secs(5),
            });
            assert_eq!(sim.send(15, left(1)), expected);
            assert_eq!(sim.state(A), OperatorState::Available);
            assert_eq!(sim.misses(A), 0);
            // A keeps its place as longest idle.
            assert_eq!(sim.send(16, join(2))[0], offer(2, A));
        }
    }

    #[test]
    fn caller_can_choose_voicemail() {
        let mut sim = Sim::with_operators(quiet(), &[A]);
        sim.send(10, join(1));
        sim.send(10, join(2));
        let choice = |n| Input::CallerChoseVoicemail { call: CallId(n) };
        assert_eq!(
            sim.send(12, choice(2)),
            [voicemail(2, VoicemailReason::CallerChoice)]
        );
        assert_eq!(
            sim.send(13, choice(1)),
            [cancel(1, A), voicemail(1, VoicemailReason::CallerChoice)]
        );
        assert_eq!(sim.state(A), OperatorState::Available);
        // Nothing left to choose for.
        assert_eq!(sim.send(14, choice(1)), []);
    }

    /// One operator busy on call 1, so later callers wait.
    fn busy(config: QueueConfig) -> Sim {
        let mut sim = Sim::with_operators(config, &[A]);
        sim.send(0, join(1));
        sim.send(0, answer(1, A));
        sim
    }

    #[test]
    fn announcements_at_join_and_then_periodically() {
        let mut sim = busy(QueueConfig {
            announce_interval: Some(Duration::from_secs(60)),
            announce_min_interval: Duration::from_secs(20),
            ..quiet()
        });
        let all = sim.all(10, join(2));
        assert!(events(&all).contains(&EventKind::PositionAnnounced {
            call: CallId(2),
            position: 1
        }));
        assert_eq!(commands(all), [announce(2, 1)]);
        assert_eq!(sim.q.poll_timeout(), Some(sim.at(70)));
        assert_eq!(sim.tick(69), []);
        assert_eq!(sim.tick(70), [announce(2, 1)]);
        assert_eq!(sim.tick(129), []);
        assert_eq!(sim.tick(130), [announce(2, 1)]);
    }

    #[test]
    fn announcements_on_improvement_respect_min_interval() {
        let mut sim = busy(QueueConfig {
            announce_interval: Some(Duration::from_secs(60)),
            announce_min_interval: Duration::from_secs(20),
            ..quiet()
        });
        assert_eq!(sim.send(0, join(2)), [announce(2, 1)]);
        assert_eq!(sim.send(1, join(3)), [announce(3, 2)]);
        assert_eq!(sim.send(2, join(4)), [announce(4, 3)]);
        // Both move up, and their last announcements are more than 20 s old.
        assert_eq!(sim.send(30, left(2))[1..], [announce(3, 1), announce(4, 2)]);
        // 4 moves up again only 10 s later: held back until the minimum interval is over.
        assert_eq!(
            sim.send(40, left(3)),
            [Action::Abandoned {
                call: CallId(3),
                waited: Duration::from_secs(39)
            }]
        );
        assert_eq!(sim.q.poll_timeout(), Some(sim.at(50)));
        assert_eq!(sim.tick(49), []);
        assert_eq!(sim.tick(50), [announce(4, 1)]);
        // Back to the periodic rhythm from the last announcement.
        assert_eq!(sim.q.poll_timeout(), Some(sim.at(110)));
    }

    #[test]
    fn periodic_announcements_never_closer_than_min_interval() {
        let mut sim = busy(QueueConfig {
            announce_interval: Some(Duration::from_secs(10)),
            announce_min_interval: Duration::from_secs(25),
            ..quiet()
        });
        assert_eq!(sim.send(0, join(2)), [announce(2, 1)]);
        assert_eq!(sim.tick(10), []);
        assert_eq!(sim.tick(24), []);
        assert_eq!(sim.tick(25), [announce(2, 1)]);
    }

    #[test]
    fn no_announcement_while_ringing() {
        let mut sim = Sim::with_operators(
            QueueConfig {
                announce_interval: Some(Duration::from_secs(5)),
                announce_min_interval: Duration::ZERO,
                ..quiet()
            },
            &[A],
        );
        assert_eq!(sim.send(10, join(1)), [offer(1, A)]);
        assert_eq!(sim.tick(20), []);
        // Back in the queue after the ring timeout: first announcement now.
        assert_eq!(sim.tick(30), [cancel(1, A), announce(1, 1)]);
    }

    #[test]
    fn max_wait_overflows_to_voicemail() {
        let config = QueueConfig {
            max_wait: Some(Duration::from_secs(120)),
            ..quiet()
        };
        let mut sim = busy(config.clone());
        sim.send(10, join(2));
        assert_eq!(sim.q.poll_timeout(), Some(sim.at(130)));
        assert_eq!(sim.tick(129), []);
        assert_eq!(sim.tick(130), [voicemail(2, VoicemailReason::MaxWait)]);

        // While ringing: the offer is cancelled without counting a miss.
        let mut sim = Sim::with_operators(
            QueueConfig {
                ring_timeout: Duration::from_secs(300),
                ..config
            },
            &[A],
        );
        sim.send(10, join(1));
        assert_eq!(
            sim.tick(130),
            [cancel(1, A), voicemail(1, VoicemailReason::MaxWait)]
        );
        assert_eq!(sim.state(A), OperatorState::Available);
        assert_eq!(sim.misses(A), 0);
    }

    #[test]
    fn nobody_logged_in_sends_caller_to_voicemail() {
        let mut sim = Sim::new(quiet());
        let all = sim.all(0, join(1));
        assert_eq!(
            events(&all),
            [
                EventKind::Joined {
                    call: CallId(1),
                    priority: 0,
                    position: 1
                },
                EventKind::Overflowed {
                    call: CallId(1),
                    reason: VoicemailReason::NoOperators,
                    waited: Duration::ZERO
                }
            ]
        );
        assert_eq!(commands(all), [voicemail(1, VoicemailReason::NoOperators)]);
        // Known but offline operators do not count.
        sim.send(1, reg(A));
        sim.send(2, unreg(A));
        assert_eq!(
            sim.send(3, join(2)),
            [voicemail(2, VoicemailReason::NoOperators)]
        );
        // A paused operator is logged in: wait for them.
        sim.send(4, reg(A));
        sim.send(4, Input::OperatorPaused(A.into()));
        assert_eq!(sim.send(5, join(3)), []);
        assert_eq!(sim.waiting(5), [CallId(3)]);
    }

    /// What the IVR is told before it says "connecting": only a caller who would be
    /// offered at once hears it.
    #[test]
    fn availability_says_whether_a_caller_would_be_offered_at_once() {
        let mut sim = Sim::new(quiet());
        let at = |sim: &Sim, t: u64| sim.q.availability(sim.at(t));
        assert_eq!(at(&sim, 0), Availability::NobodyLoggedIn);
        sim.send(1, reg(A));
        assert_eq!(at(&sim, 1), Availability::Free);
        sim.send(2, join(1));
        assert_eq!(sim.state(A), OperatorState::Ringing(CallId(1)));
        assert_eq!(at(&sim, 2), Availability::AllBusy, "A rings for caller 1");
        sim.send(3, reg(B));
        // Caller 1 is being offered; a newcomer would be offered to B at once.
        assert_eq!(at(&sim, 3), Availability::Free);
        sim.send(4, Input::OperatorPaused(B.into()));
        assert_eq!(at(&sim, 4), Availability::AllBusy, "paused is logged in");
        sim.send(5, unreg(B));
        sim.send(5, left(1));
        assert_eq!(at(&sim, 5), Availability::Free, "A is free again");
        let mut waits = Sim::new(QueueConfig {
            voicemail_when_nobody_logged_in: false,
            ..quiet()
        });
        assert_eq!(at(&waits, 0), Availability::AllBusy);
        waits.send(1, join(1));
        assert_eq!(waits.waiting(1), [CallId(1)]);
    }

    #[test]
    fn nobody_logged_in_waits_when_configured_to() {
        let mut sim = Sim::new(QueueConfig {
            voicemail_when_nobody_logged_in: false,
            ..quiet()
        });
        assert_eq!(sim.send(0, join(1)), []);
        assert_eq!(sim.send(5, reg(A)), [offer(1, A)]);
    }

    #[test]
    fn last_operator_logging_out_overflows_waiting_callers() {
        let mut sim = Sim::with_operators(quiet(), &[A, B]);
        sim.send(5, Input::OperatorPaused(A.into()));
        sim.send(5, Input::OperatorPaused(B.into()));
        sim.send(6, join(1));
        sim.send(7, join(2));
        assert_eq!(sim.send(8, unreg(A)), []);
        assert_eq!(
            sim.send(9, unreg(B)),
            [
                voicemail(1, VoicemailReason::NoOperators),
                voicemail(2, VoicemailReason::NoOperators)
            ]
        );

        let mut sim = Sim::with_operators(
            QueueConfig {
                voicemail_when_last_operator_leaves: false,
                ..quiet()
            },
            &[A],
        );
        sim.send(5, Input::OperatorPaused(A.into()));
        sim.send(6, join(1));
        assert_eq!(sim.send(8, unreg(A)), []);
        assert_eq!(sim.waiting(8), [CallId(1)]);
    }

    #[test]
    fn logout_during_a_call_counts_as_gone_and_ends_offline() {
        let mut sim = busy(quiet());
        sim.send(5, join(2));
        assert_eq!(
            sim.send(6, unreg(A)),
            [voicemail(2, VoicemailReason::NoOperators)]
        );
        assert_eq!(sim.state(A), OperatorState::OnCall(CallId(1)));
        sim.send(7, end(1));
        assert_eq!(sim.state(A), OperatorState::Offline);
    }

    #[test]
    fn reregistering_during_a_call_keeps_the_operator() {
        let mut sim = busy(quiet());
        sim.send(6, unreg(A));
        sim.send(7, reg(A));
        sim.send(8, end(1));
        assert_eq!(sim.state(A), OperatorState::WrapUp(sim.at(38)));
    }

    #[test]
    fn pause_during_a_call_applies_when_it_ends() {
        let mut sim = busy(quiet());
        sim.send(5, join(2));
        sim.send(6, Input::OperatorPaused(A.into()));
        assert_eq!(sim.send(7, end(1)), []);
        assert_eq!(sim.state(A), OperatorState::Paused);
        assert_eq!(
            sim.send(8, Input::OperatorSetAvailable(A.into())),
            [offer(2, A)]
        );
    }

    #[test]
    fn operator_going_offline_while_ringing_moves_on() {
        let mut sim = Sim::with_operators(quiet(), &[A, B]);
        sim.send(10, join(1));
        assert_eq!(sim.send(11, unreg(A)), [cancel(1, A), offer(1, B)]);
        assert_eq!(sim.state(A), OperatorState::Offline);
        assert_eq!(sim.misses(A), 0);
        // Offline operators are never offered anything, whatever the time.
        assert_eq!(sim.tick(31), [cancel(1, B)]);
        assert_eq!(sim.send(35, Input::OperatorSetAvailable(A.into())), []);
        assert_eq!(sim.tick(36), [offer(1, B)]);
    }

    #[test]
    fn pausing_while_ringing_moves_on_without_a_miss() {
        let mut sim = Sim::with_operators(quiet(), &[A, B]);
        sim.send(10, join(1));
        assert_eq!(
            sim.send(11, Input::OperatorPaused(A.into())),
            [cancel(1, A), offer(1, B)]
        );
        assert_eq!(sim.state(A), OperatorState::Paused);
        assert_eq!(sim.misses(A), 0);
    }

    #[test]
    fn never_offers_busy_operators() {
        let mut sim = Sim::with_operators(quiet(), &[A, B, C]);
        sim.send(5, Input::OperatorPaused(C.into()));
        sim.send(10, join(1));
        sim.send(10, answer(1, A));
        sim.send(11, join(2));
        sim.send(12, end(1));
        // A on wrap-up, B ringing, C paused.
        assert_eq!(sim.send(13, join(3)), []);
        assert_eq!(sim.state(B), OperatorState::Ringing(CallId(2)));
    }

    #[test]
    fn hang_up_during_conversation_ends_the_call() {
        let mut sim = busy(quiet());
        assert_eq!(sim.send(10, left(1)), []);
        assert_eq!(sim.state(A), OperatorState::WrapUp(sim.at(40)));
    }

    #[test]
    fn stale_and_unknown_answers_tear_down_the_leg() {
        let mut sim = Sim::with_operators(quiet(), &[A]);
        assert_eq!(sim.send(1, answer(9, A)), [cancel(9, A)]);
        assert_eq!(sim.state(A), OperatorState::Available);
        sim.send(2, join(1));
        assert_eq!(sim.send(3, answer(1, "mallory")), [cancel(1, "mallory")]);
        assert_eq!(sim.state(A), OperatorState::Ringing(CallId(1)));
        assert_eq!(sim.send(4, reject(1, "mallory")), []);
    }

    #[test]
    fn duplicate_join_is_ignored() {
        let mut sim = busy(quiet());
        sim.send(2, join(2));
        assert!(sim.all(3, join(2)).is_empty());
        assert!(sim.all(3, join(1)).is_empty());
        assert_eq!(sim.waiting(3), [CallId(2)]);
    }

    #[test]
    fn snapshot_shows_callers_and_operators() {
        let mut sim = Sim::with_operators(quiet(), &[A, B]);
        sim.send(2, Input::OperatorPaused(B.into()));
        sim.send(10, join(1));
        sim.send(12, join(2));
        let snap = sim.q.snapshot(sim.at(20));
        assert_eq!(
            snap.callers,
            [
                CallerView {
                    call: CallId(1),
                    position: 1,
                    priority: 0,
                    waited: Duration::from_secs(10),
                    offered_to: vec![A.into()],
                },
                CallerView {
                    call: CallId(2),
                    position: 2,
                    priority: 0,
                    waited: Duration::from_secs(8),
                    offered_to: vec![],
                }
            ]
        );
        assert_eq!(
            snap.operators,
            [
                OperatorView {
                    id: A.into(),
                    state: OperatorState::Ringing(CallId(1)),
                    idle_for: None,
                    consecutive_misses: 0,
                },
                OperatorView {
                    id: B.into(),
                    state: OperatorState::Paused,
                    idle_for: None,
                    consecutive_misses: 0,
                }
            ]
        );
        sim.send(21, left(2));
        sim.send(21, Input::OperatorSetAvailable(B.into()));
        let snap = sim.q.snapshot(sim.at(30));
        assert_eq!(snap.operators[1].idle_for, Some(Duration::from_secs(9)));
    }

    #[test]
    fn operator_state_changes_are_recorded() {
        let mut sim = Sim::new(quiet());
        let all = sim.all(3, reg(A));
        assert_eq!(
            all,
            [Action::Event(QueueEvent {
                at: sim.at(3),
                kind: EventKind::OperatorStateChanged {
                    operator: A.into(),
                    state: OperatorState::Available
                }
            })]
        );
        let all = sim.all(4, join(1));
        assert!(events(&all).contains(&EventKind::Offered {
            call: CallId(1),
            operator: A.into()
        }));
        assert!(events(&all).contains(&EventKind::OperatorStateChanged {
            operator: A.into(),
            state: OperatorState::Ringing(CallId(1))
        }));
        let all = sim.all(6, answer(1, A));
        assert!(events(&all).contains(&EventKind::Answered {
            call: CallId(1),
            operator: A.into(),
            waited: Duration::from_secs(2)
        }));
    }

    #[test]
    fn registering_paused_when_configured() {
        let mut sim = Sim::new(QueueConfig {
            available_on_register: false,
            ..quiet()
        });
        sim.send(0, reg(A));
        assert_eq!(sim.state(A), OperatorState::Paused);
        assert_eq!(sim.send(1, join(1)), []);
        assert_eq!(
            sim.send(2, Input::OperatorSetAvailable(A.into())),
            [offer(1, A)]
        );
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
            (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
        }
    }

    /// What the IO layer would know, rebuilt from the actions alone.
    #[derive(Default)]
    struct Model {
        joined: Vec<CallId>,
        ended: HashSet<CallId>,
        bridged: HashSet<CallId>,
        ringing: HashMap<OperatorId, CallId>,
        talking: HashMap<OperatorId, CallId>,
        answered: Option<(CallId, OperatorId)>,
    }

    impl Model {
        fn apply(&mut self, action: Action) {
            match action {
                Action::Offer { call, operator } => {
                    assert!(
                        !self.ringing.contains_key(&operator),
                        "{operator} offered {call:?} while ringing"
                    );
                    assert!(
                        !self.talking.contains_key(&operator),
                        "{operator} on a call"
                    );
                    assert!(!self.ended.contains(&call), "offered a finished call");
                    self.ringing.insert(operator, call);
                }
                Action::CancelOffer { call, operator } => {
                    if self.ringing.get(&operator) == Some(&call) {
                        self.ringing.remove(&operator);
                    }
                }
                Action::Bridge { call, operator } => {
                    assert_eq!(self.answered.take(), Some((call, operator.clone())));
                    assert!(self.bridged.insert(call), "{call:?} bridged twice");
                    assert!(self.ended.insert(call), "{call:?} ended twice");
                    assert!(self.talking.insert(operator, call).is_none());
                }
                Action::ToVoicemail { call, .. } | Action::Abandoned { call, .. } => {
                    assert!(self.ended.insert(call), "{call:?} ended twice");
                }
                Action::AnnouncePosition { call, .. } => {
                    assert!(!self.ended.contains(&call), "announced to a finished call");
                }
                Action::OperatorAutoPaused { .. } | Action::Event(_) => {}
            }
        }
    }

    fn random_run(seed: u64, strategy: Strategy) {
        let operators = ["op0", "op1", "op2", "op3"];
        let config = QueueConfig {
            strategy,
            priority_first: seed & 1 == 0,
            ring_timeout: Duration::from_secs(15),
            max_misses: 2,
            miss_cooldown: Duration::from_secs(3),
            wrap_up: Duration::from_secs(seed % 3 * 5),
            announce_interval: Some(Duration::from_secs(30)),
            announce_min_interval: Duration::from_secs(10),
            max_wait: Some(Duration::from_secs(300)),
            ..QueueConfig::default()
        };
        let mut rng = XorShift(seed);
        let mut q = Queue::new(config);
        let mut model = Model::default();
        let base = Instant::now();
        let mut now = base;
        let mut next_call = 0;
        for _ in 0..5000 {
            now += Duration::from_millis(rng.below(4000));
            while let Some(t) = q.poll_timeout().filter(|t| *t <= now) {
                q.handle_timeout(t);
                std::iter::from_fn(|| q.poll_action()).for_each(|a| model.apply(a));
            }
            let operator = rng
                .pick(&operators)
                .map_or_else(String::new, |s| s.to_string());
            let known_call = rng.pick(&model.joined).copied().unwrap_or(CallId(0));
            let mut ringing: Vec<(OperatorId, CallId)> =
                model.ringing.iter().map(|(o, c)| (o.clone(), *c)).collect();
            ringing.sort();
            let offer = rng.pick(&ringing).cloned();
            let input = match rng.below(14) {
                0..=2 => {
                    next_call += 1;
                    model.joined.push(CallId(next_call));
                    Input::CallerJoined {
                        call: CallId(next_call),
                        priority: rng.below(3) as u8,
                    }
                }
                3 => Input::CallerLeft { call: known_call },
                4 => Input::CallerChoseVoicemail { call: known_call },
                5 | 6 => match offer {
                    Some((operator, call)) => {
                        model.ringing.remove(&operator);
                        model.answered = Some((call, operator.clone()));
                        Input::OfferAnswered { call, operator }
                    }
                    None => Input::OfferAnswered {
                        call: known_call,
                        operator,
                    },
                },
                7 => match offer {
                    Some((operator, call)) => {
                        model.ringing.remove(&operator);
                        if rng.below(2) == 0 {
                            Input::OfferRejected { call, operator }
                        } else {
                            Input::OfferFailed { call, operator }
                        }
                    }
                    None => Input::OfferRejected {
                        call: known_call,
                        operator,
                    },
                },
                8 | 9 => {
                    let mut talking: Vec<_> =
                        model.talking.iter().map(|(o, c)| (o.clone(), *c)).collect();
                    talking.sort();
                    match rng.pick(&talking).cloned() {
                        Some((operator, call)) => {
                            model.talking.remove(&operator);
                            Input::CallEnded { call }
                        }
                        None => Input::CallEnded { call: known_call },
                    }
                }
                10 => Input::OperatorRegistered(operator),
                11 => Input::OperatorUnregistered(operator),
                12 => Input::OperatorSetAvailable(operator),
                _ => Input::OperatorPaused(operator),
            };
            // A hang-up during a conversation ends it, as the queue treats it.
            if let Input::CallerLeft { call } = &input {
                model.talking.retain(|_, c| c != call);
            }
            q.handle(input, now);
            std::iter::from_fn(|| q.poll_action()).for_each(|a| model.apply(a));
            assert!(
                model.answered.is_none(),
                "a current offer was answered but not bridged"
            );

            let snap = q.snapshot(now);
            for view in &snap.operators {
                match view.state {
                    OperatorState::Ringing(call) => {
                        assert_eq!(model.ringing.get(&view.id), Some(&call));
                        let caller = snap.callers.iter().find(|c| c.call == call).unwrap();
                        assert!(caller.offered_to.contains(&view.id));
                    }
                    OperatorState::OnCall(call) => {
                        assert_eq!(model.talking.get(&view.id), Some(&call))
                    }
                    _ => {
                        assert!(!model.ringing.contains_key(&view.id));
                        assert!(!model.talking.contains_key(&view.id));
                    }
                }
            }
            for caller in &snap.callers {
                assert!(!model.ended.contains(&caller.call));
            }
        }
        // Everyone still waiting runs into the maximum wait.
        q.handle_timeout(now + Duration::from_secs(3600));
        std::iter::from_fn(|| q.poll_action()).for_each(|a| model.apply(a));
        for call in &model.joined {
            assert!(model.ended.contains(call), "{call:?} never ended");
        }
        assert!(
            !model.bridged.is_empty(),
            "the run should bridge some calls"
        );
    }

    #[test]
    fn randomized_invariants() {
        for seed in [0x9e37_79b9_7f4a_7c15, 0xdead_beef_cafe_f00d, 42] {
            random_run(seed, Strategy::LongestIdle);
            random_run(seed, Strategy::RingAll);
        }
    }
}
