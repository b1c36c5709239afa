//! The per-call IVR engine: walks a validated flow for one caller.
//!
//! Sans-IO: the host feeds it events and the current time, carries out the
//! actions it emits, and arms a timer from `poll_timeout`. It owns the
//! caller's place in the flow, retries, digit timers, barge-in and
//! type-ahead. It must not read the clock, sleep, do I/O, or assume an action
//! took effect before the host reports it (audio finished, message stored).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flow::{is_keypad_key, CollectNode, Flow, Node};

/// Keys kept for later menus; more than this is a stuck key or noise.
const MAX_TYPE_AHEAD: usize = 16;
/// Node entries allowed within one event; a validated flow needs a handful.
const MAX_HOPS: u32 = 64;
/// Longest reference code read out, in digits.
const MAX_REFERENCE_DIGITS: usize = 32;
/// Extra time the host's recorder gets beyond `max_seconds` before the
/// engine stops it itself, so a lost `RecordingFinished` cannot strand a caller.
const RECORDER_GRACE: Duration = Duration::from_secs(5);
/// How long the host has to say whether an operator is free before the caller
/// joins the queue without being told anything.
pub const OPERATOR_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Identifies one `Play` action so a late `PromptFinished` for audio that
/// was already stopped or replaced is not mistaken for the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlayId(u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The call is up: the flow starts.
    Answered,
    /// Every prompt of the `Play` with this id has been played.
    PromptFinished {
        id: PlayId,
    },
    /// A keypad key, from RFC 4733, SIP INFO or in-band detection alike.
    Digit(char),
    RecordingFinished {
        reason: RecordStop,
        duration_ms: u64,
    },
    /// The host's verdict on whether the message (audio and its record) is
    /// durably stored.
    RecordingStored {
        ok: bool,
    },
    /// The host's answer to `CheckOperators`.
    Operators(Operators),
    QueueResult(QueueOutcome),
    /// The code the caller can quote later; only digits are read out.
    ReferenceCode(String),
    /// The caller hung up.
    HangUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStop {
    FinishKey,
    Silence,
    MaxLength,
    HangUp,
    NoSpeech,
}

/// Whether an operator could take a caller who joined the queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operators {
    /// One is free: the caller hears the queue node's `prompts` ("connecting").
    Free,
    /// Logged in but busy: the caller hears `busy_prompts` and waits.
    AllBusy,
    /// Nobody is logged in: straight to the queue node's fallback.
    NobodyLoggedIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOutcome {
    /// An operator took the call; the engine stays quiet until hang-up.
    Answered,
    /// The queue service is not running.
    Unavailable,
    /// Nobody is logged in.
    NoOperators,
    CallerChoseVoicemail,
    MaxWait,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// For the call's path log.
    NodeEntered {
        node: String,
    },
    /// Play prompts in order, replacing whatever is playing. `barge_in` tells
    /// the host a key will interrupt them (the engine still sends
    /// `StopPlayback` itself).
    Play {
        id: PlayId,
        prompts: Vec<String>,
        barge_in: bool,
    },
    StopPlayback,
    /// Play the beep if asked, then record. The recorder owns `finish_keys`,
    /// `max` and `silence` and reports with `RecordingFinished`.
    StartRecording {
        node: String,
        max: Duration,
        silence: Duration,
        finish_keys: String,
        beep: bool,
    },
    /// `partial` is set when the caller hung up mid-message: keep what was
    /// recorded and mark it so.
    StopRecording {
        partial: bool,
    },
    /// An answer to keep with the call; empty `digits` means skipped.
    StoreAnswer {
        node: String,
        key: String,
        digits: String,
    },
    /// Ask whether an operator could take the caller now; answer with
    /// `Event::Operators` (within `OPERATOR_CHECK_TIMEOUT`).
    CheckOperators {
        node: String,
    },
    Enqueue {
        node: String,
    },
    Hangup {
        reason: HangupReason,
    },
    /// Something worth keeping in the call's log.
    Log {
        node: String,
        message: String,
    },
}

impl Action {
    /// Record keeping that still matters once the caller is gone.
    fn is_bookkeeping(&self) -> bool {
        matches!(
            self,
            Action::NodeEntered { .. }
                | Action::StoreAnswer { .. }
                | Action::Log { .. }
                | Action::StopRecording { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupReason {
    /// The flow reached a `hangup` node.
    Goodbye,
    /// The flow points at something that does not exist; it was not validated.
    BrokenFlow,
}

/// Cloneable so the path check can follow every answer from one point of a call.
#[derive(Clone)]
pub struct Engine {
    flow: Arc<Flow>,
    state: State,
    actions: VecDeque<Action>,
    /// Keys pressed while no question was listening, oldest first.
    type_ahead: VecDeque<char>,
    reference: Option<String>,
    last_play: u32,
    /// Counts node entries so a question can tell whether it is still the
    /// one that started draining type-ahead.
    entries: u64,
    hops: u32,
}

#[derive(Clone)]
enum State {
    NotAnswered,
    /// Prompts of a node that asks nothing; keys go to type-ahead.
    Playing {
        node: String,
        play: PlayId,
        barge_in: bool,
        then: Then,
    },
    Question(Question),
    Recording {
        node: String,
        attempt: u32,
        deadline: Instant,
    },
    Storing {
        node: String,
        deadline: Instant,
    },
    /// Waiting for the host to say whether an operator is free.
    CheckingOperators {
        node: String,
        deadline: Instant,
    },
    Queued {
        node: String,
    },
    WithOperator,
    Ended,
}

/// What a `Playing` state does once its prompts end.
#[derive(Clone)]
enum Then {
    Goto(String),
    Record { attempt: u32 },
    Enqueue,
    Hangup,
}

/// A menu or collect in progress.
#[derive(Clone)]
struct Question {
    node: String,
    entry: u64,
    /// Failed attempts so far (invalid key or no input).
    attempt: u32,
    digits: String,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prompting(PlayId),
    /// `next` is the first-digit or inter-digit deadline; `total` bounds a
    /// whole collect.
    Listening {
        next: Instant,
        total: Option<Instant>,
    },
}

#[derive(Clone, Copy)]
enum Retry {
    NoInput,
    Invalid(char),
    TooShort,
}

impl Engine {
    pub fn new(flow: Arc<Flow>) -> Self {
        Self {
            flow,
            state: State::NotAnswered,
            actions: VecDeque::new(),
            type_ahead: VecDeque::new(),
            reference: None,
            last_play: 0,
            entries: 0,
            hops: 0,
        }
    }

    /// Sets the reference code up front instead of by `Event::ReferenceCode`.
    pub fn with_reference_code(mut self, code: impl Into<String>) -> Self {
        self.reference = Some(code.into());
        self
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Question(Question {
                phase: Phase::Listening { next, total },
                ..
            }) => Some(total.map_or(*next, |t| t.min(*next))),
            State::Recording { deadline, .. }
            | State::Storing { deadline, .. }
            | State::CheckingOperators { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The question listening for keys now: its node, and a number that changes
    /// each time it is asked again. For the path check.
    pub(super) fn listening(&self) -> Option<(&str, (u64, u32))> {
        match &self.state {
            State::Question(q) if matches!(q.phase, Phase::Listening { .. }) => {
                Some((q.node.as_str(), (q.entry, q.attempt)))
            }
            _ => None,
        }
    }

    /// True once the call is over for the engine (hung up either way).
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        self.hops = 0;
        match event {
            Event::Answered => {
                if matches!(self.state, State::NotAnswered) {
                    let start = self.flow.settings.start.clone();
                    self.enter(&start, now);
                }
            }
            Event::PromptFinished { id } => self.prompt_finished(id, now),
            Event::Digit(key) => self.digit(key, now),
            Event::RecordingFinished {
                reason,
                duration_ms,
            } => self.recording_finished(reason, duration_ms, now),
            Event::RecordingStored { ok } => {
                if let State::Storing { node, .. } = &self.state {
                    let node = node.clone();
                    self.stored(&node, ok, now);
                }
            }
            Event::Operators(operators) => self.operators(operators, now),
            Event::QueueResult(outcome) => self.queue_result(outcome, now),
            Event::ReferenceCode(code) => self.reference = Some(code),
            Event::HangUp => self.caller_hung_up(),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.hops = 0;
        if self.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        match std::mem::replace(&mut self.state, State::Ended) {
            question @ State::Question(_) => {
                self.state = question;
                self.question_timeout(now);
            }
            State::Recording { node, .. } => {
                self.log(&node, "recorder did not report in time; stopping it");
                self.push(Action::StopRecording { partial: false });
                self.await_store(&node, now);
            }
            State::Storing { node, .. } => {
                self.log(&node, "storage did not confirm the message in time");
                self.stored(&node, false, now);
            }
            State::CheckingOperators { node, .. } => {
                self.log(&node, "no word on free operators; joining the queue");
                self.then(&node, Then::Enqueue, now);
            }
            other => self.state = other,
        }
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn log(&mut self, node: &str, message: impl Into<String>) {
        self.push(Action::Log {
            node: node.to_owned(),
            message: message.into(),
        });
    }

    fn next_play_id(&mut self) -> PlayId {
        self.last_play = self.last_play.wrapping_add(1);
        PlayId(self.last_play)
    }

    fn enter(&mut self, name: &str, now: Instant) {
        self.hops += 1;
        if self.hops > MAX_HOPS {
            return self.broken(name, "the flow keeps moving without waiting for the caller");
        }
        let flow = Arc::clone(&self.flow);
        let Some(node) = flow.node(name) else {
            return self.broken(name, "no such node");
        };
        self.entries += 1;
        self.push(Action::NodeEntered {
            node: name.to_owned(),
        });
        match node {
            Node::Play(p) => self.play(
                name,
                p.prompts.clone(),
                p.barge_in,
                Then::Goto(p.next.clone()),
                now,
            ),
            Node::Goto(g) => self.enter(&g.next, now),
            Node::Hangup(h) => self.play(name, h.prompts.clone(), false, Then::Hangup, now),
            Node::Queue(_) => {
                self.push(Action::CheckOperators {
                    node: name.to_owned(),
                });
                self.state = State::CheckingOperators {
                    node: name.to_owned(),
                    deadline: later(now, OPERATOR_CHECK_TIMEOUT),
                };
            }
            Node::Record(r) => self.play(
                name,
                r.prompts.clone(),
                false,
                Then::Record { attempt: 0 },
                now,
            ),
            Node::SayReference(s) => {
                let digits: Vec<char> = self
                    .reference
                    .as_deref()
                    .unwrap_or_default()
                    .chars()
                    .filter(char::is_ascii_digit)
                    .take(MAX_REFERENCE_DIGITS)
                    .collect();
                if digits.is_empty() {
                    self.log(name, "no reference code to read");
                    return self.enter(&s.next, now);
                }
                let mut prompts = s.prompts.clone();
                for round in 0..s.repeat.clamp(1, 3) {
                    if round > 0 {
                        prompts.extend(s.repeat_prompt.iter().cloned());
                    }
                    prompts.extend(
                        digits
                            .iter()
                            .map(|d| format!("{}{d}", s.digit_prompt_prefix)),
                    );
                }
                prompts.extend(s.after_prompts.iter().cloned());
                self.play(name, prompts, false, Then::Goto(s.next.clone()), now);
            }
            Node::Menu(_) | Node::Collect(_) => self.ask(name, node, now),
        }
    }

    fn play(&mut self, node: &str, prompts: Vec<String>, barge_in: bool, then: Then, now: Instant) {
        if prompts.is_empty() {
            return self.then(node, then, now);
        }
        let id = self.next_play_id();
        self.push(Action::Play {
            id,
            prompts,
            barge_in,
        });
        self.state = State::Playing {
            node: node.to_owned(),
            play: id,
            barge_in,
            then,
        };
    }

    fn then(&mut self, node: &str, then: Then, now: Instant) {
        match then {
            Then::Goto(next) => self.enter(&next, now),
            Then::Hangup => self.hang_up(HangupReason::Goodbye),
            Then::Enqueue => {
                self.push(Action::Enqueue {
                    node: node.to_owned(),
                });
                self.state = State::Queued {
                    node: node.to_owned(),
                };
            }
            Then::Record { attempt } => {
                let flow = Arc::clone(&self.flow);
                let Some(Node::Record(r)) = flow.node(node) else {
                    return self.broken(node, "not a record node");
                };
                let max = r.max_seconds.duration();
                self.push(Action::StartRecording {
                    node: node.to_owned(),
                    max,
                    silence: r.silence_seconds.duration(),
                    finish_keys: r.finish_keys.clone(),
                    beep: r.beep,
                });
                self.state = State::Recording {
                    node: node.to_owned(),
                    attempt,
                    deadline: later(now, max + RECORDER_GRACE),
                };
            }
        }
    }

    /// Starts a menu or collect. Keys already typed answer it straight away,
    /// without its prompt; otherwise the prompt plays.
    fn ask(&mut self, name: &str, node: &Node, now: Instant) {
        let flush = match node {
            Node::Menu(m) => m.flush_type_ahead,
            Node::Collect(c) => c.flush_type_ahead,
            _ => false,
        };
        if flush && !self.type_ahead.is_empty() {
            self.type_ahead.clear();
            self.log(name, "discarded keys pressed before this question");
        }
        let entry = self.entries;
        self.state = State::Question(Question {
            node: name.to_owned(),
            entry,
            attempt: 0,
            digits: String::new(),
            phase: Phase::Listening {
                next: now,
                total: None,
            },
        });
        if self.type_ahead.is_empty() {
            self.prompt_question(node, None, now);
        } else {
            self.listen(node, now);
            self.drain_type_ahead(entry, now);
        }
    }

    /// (Re)plays the question's prompts, led by an invalid/timeout prompt.
    fn prompt_question(&mut self, node: &Node, lead: Option<&str>, now: Instant) {
        let (own, barge_in) = match node {
            Node::Menu(m) => (&m.prompts, m.barge_in),
            Node::Collect(c) => (&c.prompts, c.barge_in),
            _ => return,
        };
        let prompts: Vec<String> = lead
            .map(str::to_owned)
            .into_iter()
            .chain(own.iter().cloned())
            .collect();
        if let State::Question(q) = &mut self.state {
            q.digits.clear();
        }
        if prompts.is_empty() {
            return self.listen(node, now);
        }
        let id = self.next_play_id();
        self.push(Action::Play {
            id,
            prompts,
            barge_in,
        });
        if let State::Question(q) = &mut self.state {
            q.phase = Phase::Prompting(id);
        }
    }

    /// Opens the answer window: timers start now.
    fn listen(&mut self, node: &Node, now: Instant) {
        let first = later(now, self.flow.first_digit_timeout_of(node).duration());
        let total = match node {
            Node::Collect(c) => Some(later(now, self.flow.total_timeout_of(c).duration())),
            _ => None,
        };
        if let State::Question(q) = &mut self.state {
            q.phase = Phase::Listening { next: first, total };
        }
    }

    /// Feeds buffered keys to the question that `entry` started, for as long
    /// as it is still listening; later keys stay for whatever comes next.
    fn drain_type_ahead(&mut self, entry: u64, now: Instant) {
        loop {
            let listening = matches!(
                &self.state,
                State::Question(q) if q.entry == entry && matches!(q.phase, Phase::Listening { .. })
            );
            if !listening {
                return;
            }
            let Some(key) = self.type_ahead.pop_front() else {
                return;
            };
            self.answer_key(key, now);
        }
    }

    fn buffer(&mut self, key: char) {
        if self.type_ahead.len() < MAX_TYPE_AHEAD {
            self.type_ahead.push_back(key);
        }
    }

    fn prompt_finished(&mut self, id: PlayId, now: Instant) {
        match std::mem::replace(&mut self.state, State::Ended) {
            State::Playing {
                node, play, then, ..
            } if play == id => self.then(&node, then, now),
            State::Question(q) if q.phase == Phase::Prompting(id) => {
                let (name, entry) = (q.node.clone(), q.entry);
                self.state = State::Question(q);
                let flow = Arc::clone(&self.flow);
                let Some(node) = flow.node(&name) else {
                    return self.broken(&name, "no such node");
                };
                self.listen(node, now);
                self.drain_type_ahead(entry, now);
            }
            // A stale report for audio already stopped or replaced.
            other => self.state = other,
        }
    }

    fn digit(&mut self, key: char, now: Instant) {
        if !is_keypad_key(key) {
            return;
        }
        match std::mem::replace(&mut self.state, State::Ended) {
            State::Playing {
                node,
                play,
                barge_in,
                then,
            } => {
                self.buffer(key);
                if barge_in {
                    self.push(Action::StopPlayback);
                    self.then(&node, then, now);
                } else {
                    self.state = State::Playing {
                        node,
                        play,
                        barge_in,
                        then,
                    };
                }
            }
            State::Question(q) => {
                let prompting = matches!(q.phase, Phase::Prompting(_));
                let name = q.node.clone();
                self.state = State::Question(q);
                if !prompting {
                    return self.answer_key(key, now);
                }
                let flow = Arc::clone(&self.flow);
                let Some(node) = flow.node(&name) else {
                    return self.broken(&name, "no such node");
                };
                if barges_in(node) {
                    self.push(Action::StopPlayback);
                    self.listen(node, now);
                    self.answer_key(key, now);
                } else {
                    self.buffer(key);
                }
            }
            // The recorder and the queue own the keypad; before the answer,
            // while storing and after the end keys mean nothing.
            other => self.state = other,
        }
    }

    /// A key for the listening question.
    fn answer_key(&mut self, key: char, now: Instant) {
        let State::Question(q) = &self.state else {
            return;
        };
        let name = q.node.clone();
        let flow = Arc::clone(&self.flow);
        let Some(node) = flow.node(&name) else {
            return self.broken(&name, "no such node");
        };
        if flow.keeps_global_keys(node) {
            if flow.settings.repeat_key == Some(key) {
                self.log(&name, "caller asked to hear the question again");
                return self.prompt_question(node, None, now);
            }
            if let Some(target) = flow.global_target(key) {
                self.log(&name, format!("global key {key}"));
                return self.enter(target, now);
            }
        }
        match node {
            Node::Menu(m) => {
                let mut buf = [0u8; 4];
                match m.options.get(&*key.encode_utf8(&mut buf)) {
                    Some(target) => {
                        if let Some(answer) = &m.store_as {
                            self.push(Action::StoreAnswer {
                                node: name.clone(),
                                key: answer.clone(),
                                digits: key.to_string(),
                            });
                        }
                        self.enter(target, now);
                    }
                    None => self.retry(&name, Retry::Invalid(key), now),
                }
            }
            Node::Collect(c) => self.collect_key(&name, c, key, now),
            _ => self.broken(&name, "not a question"),
        }
    }

    fn collect_key(&mut self, name: &str, c: &CollectNode, key: char, now: Instant) {
        if c.skip_key == Some(key) {
            self.log(name, "caller skipped the question");
            return self.accept(name, c, String::new(), now);
        }
        let State::Question(q) = &mut self.state else {
            return;
        };
        if c.terminator == Some(key) {
            let digits = std::mem::take(&mut q.digits);
            return if digits.len() >= c.min_digits as usize {
                self.accept(name, c, digits, now)
            } else {
                self.retry(name, Retry::TooShort, now)
            };
        }
        if !c.pattern.accepts(key) {
            return self.retry(name, Retry::Invalid(key), now);
        }
        q.digits.push(key);
        if q.digits.len() >= c.max_digits as usize {
            let digits = std::mem::take(&mut q.digits);
            return self.accept(name, c, digits, now);
        }
        let inter = later(now, self.flow.inter_digit_timeout_of(c).duration());
        if let Phase::Listening { next, .. } = &mut q.phase {
            *next = inter;
        }
    }

    fn accept(&mut self, name: &str, c: &CollectNode, digits: String, now: Instant) {
        if let Some(answer) = &c.store_as {
            self.push(Action::StoreAnswer {
                node: name.to_owned(),
                key: answer.clone(),
                digits,
            });
        }
        self.enter(&c.next, now);
    }

    fn question_timeout(&mut self, now: Instant) {
        let State::Question(q) = &mut self.state else {
            return;
        };
        let name = q.node.clone();
        let flow = Arc::clone(&self.flow);
        match flow.node(&name) {
            // A number typed without the terminator still counts.
            Some(Node::Collect(c)) if !q.digits.is_empty() => {
                if q.digits.len() >= c.min_digits as usize {
                    let digits = std::mem::take(&mut q.digits);
                    self.accept(&name, c, digits, now);
                } else {
                    self.retry(&name, Retry::TooShort, now);
                }
            }
            Some(_) => self.retry(&name, Retry::NoInput, now),
            None => self.broken(&name, "no such node"),
        }
    }

    /// Asks again after a bad or missing answer, or gives up to the fallback.
    fn retry(&mut self, name: &str, why: Retry, now: Instant) {
        let flow = Arc::clone(&self.flow);
        let Some(node) = flow.node(name) else {
            return self.broken(name, "no such node");
        };
        let State::Question(q) = &mut self.state else {
            return;
        };
        q.attempt += 1;
        let attempt = q.attempt;
        // Keys typed after a mistake are most likely part of it.
        self.type_ahead.clear();
        let what = match why {
            Retry::NoInput => "no answer".to_owned(),
            Retry::Invalid(key) => format!("invalid key {key}"),
            Retry::TooShort => "answer too short".to_owned(),
        };
        if attempt > flow.retries_of(node) {
            self.log(name, format!("{what}; giving up after {attempt} attempts"));
            return match flow.fallback_of(node) {
                Some(fallback) => self.enter(fallback, now),
                None => self.broken(name, "no fallback"),
            };
        }
        self.log(name, format!("{what}; asking again"));
        let lead = match why {
            Retry::NoInput => flow.timeout_prompt_of(node),
            Retry::Invalid(_) | Retry::TooShort => flow.invalid_prompt_of(node),
        };
        self.prompt_question(node, lead, now);
    }

    fn recording_finished(&mut self, reason: RecordStop, duration_ms: u64, now: Instant) {
        let State::Recording { node, attempt, .. } = &self.state else {
            return;
        };
        let (node, attempt) = (node.clone(), *attempt);
        match reason {
            // The host keeps what was recorded; the caller is gone.
            RecordStop::HangUp => {
                self.log(
                    &node,
                    format!("caller hung up while recording ({duration_ms} ms)"),
                );
                self.end();
            }
            RecordStop::NoSpeech => {
                let flow = Arc::clone(&self.flow);
                let Some(Node::Record(r)) = flow.node(&node) else {
                    return self.broken(&node, "not a record node");
                };
                if attempt < r.retries {
                    self.log(&node, "no speech; asking again");
                    let prompts = r
                        .no_speech_prompt
                        .iter()
                        .chain(&r.prompts)
                        .cloned()
                        .collect();
                    self.play(
                        &node,
                        prompts,
                        false,
                        Then::Record {
                            attempt: attempt + 1,
                        },
                        now,
                    );
                } else {
                    self.log(&node, "no speech; no message left");
                    self.enter(&r.next, now);
                }
            }
            RecordStop::FinishKey | RecordStop::Silence | RecordStop::MaxLength => {
                self.log(
                    &node,
                    format!("message recorded ({reason:?}, {duration_ms} ms)"),
                );
                self.await_store(&node, now);
            }
        }
    }

    fn await_store(&mut self, node: &str, now: Instant) {
        let timeout = match self.flow.node(node) {
            Some(Node::Record(r)) => r.store_timeout.duration(),
            _ => Duration::ZERO,
        };
        self.state = State::Storing {
            node: node.to_owned(),
            deadline: later(now, timeout),
        };
    }

    /// Confirms only a durable message; otherwise apologises and moves on.
    fn stored(&mut self, node: &str, ok: bool, now: Instant) {
        let flow = Arc::clone(&self.flow);
        let Some(Node::Record(r)) = flow.node(node) else {
            return self.broken(node, "not a record node");
        };
        if ok {
            self.log(node, "message stored");
            self.play(
                node,
                r.confirm_prompt.iter().cloned().collect(),
                false,
                Then::Goto(r.next.clone()),
                now,
            );
        } else {
            self.log(node, "message could not be stored");
            let fallback = r.fallback.as_ref().unwrap_or(&r.next).clone();
            self.play(
                node,
                r.failure_prompt.iter().cloned().collect(),
                false,
                Then::Goto(fallback),
                now,
            );
        }
    }

    /// "Connecting" is said only when an operator is free; with nobody logged in
    /// the caller goes straight to the fallback instead of waiting for the queue
    /// to give up.
    fn operators(&mut self, operators: Operators, now: Instant) {
        let State::CheckingOperators { node, .. } = &self.state else {
            return;
        };
        let node = node.clone();
        let flow = Arc::clone(&self.flow);
        let Some(queue_node @ Node::Queue(q)) = flow.node(&node) else {
            return self.broken(&node, "not a queue node");
        };
        match operators {
            Operators::Free => self.play(&node, q.prompts.clone(), false, Then::Enqueue, now),
            Operators::AllBusy => {
                self.log(&node, "every operator is busy");
                self.play(&node, q.busy_prompts.clone(), false, Then::Enqueue, now)
            }
            Operators::NobodyLoggedIn => {
                self.log(&node, "no operator is logged in");
                match flow.fallback_of(queue_node) {
                    Some(fallback) => self.enter(fallback, now),
                    None => self.broken(&node, "queue has no fallback"),
                }
            }
        }
    }

    fn queue_result(&mut self, outcome: QueueOutcome, now: Instant) {
        let State::Queued { node } = &self.state else {
            return;
        };
        let node = node.clone();
        self.log(&node, format!("queue: {outcome:?}"));
        if outcome == QueueOutcome::Answered {
            self.state = State::WithOperator;
            return;
        }
        let flow = Arc::clone(&self.flow);
        match flow.node(&node).and_then(|n| flow.fallback_of(n)) {
            Some(fallback) => self.enter(fallback, now),
            None => self.broken(&node, "queue has no fallback"),
        }
    }

    fn caller_hung_up(&mut self) {
        match self.state {
            State::Ended => {}
            State::Recording { .. } => {
                self.end();
                self.push(Action::StopRecording { partial: true });
            }
            _ => self.end(),
        }
    }

    /// The caller is gone: drop media actions not yet taken, keep records.
    fn end(&mut self) {
        self.actions.retain(Action::is_bookkeeping);
        self.type_ahead.clear();
        self.state = State::Ended;
    }

    fn hang_up(&mut self, reason: HangupReason) {
        self.push(Action::Hangup { reason });
        self.state = State::Ended;
    }

    /// Only reachable with a flow that skipped validation: hanging up beats
    /// leaving the caller in silence.
    fn broken(&mut self, node: &str, why: &str) {
        self.log(node, format!("flow error: {why}; hanging up"));
        self.hang_up(HangupReason::BrokenFlow);
    }
}

fn barges_in(node: &Node) -> bool {
    match node {
        Node::Menu(m) => m.barge_in,
        Node::Collect(c) => c.barge_in,
        _ => false,
    }
}

/// `now + d` without the overflow panic.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

#[cfg(test)]
mod tests;
