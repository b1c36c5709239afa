//! The IVR host: one `ivr::Engine` per answered caller, and what its actions mean for
//! the media engine and the store (play, record, store an answer, hang up).
//!
//! Owns the per-call engines, their prompt tokens and timers, the reference code each
//! caller is given, the answers collected for the operator's display, and whether a
//! voice message is being recorded. Sans-IO: time, the wall clock and a seeded
//! generator are inputs. A caller who reaches the queue node is handed to the glue as
//! `IvrOutput::Enqueue`; the queue's verdict comes back through `queue_result`.

use super::{millis, recording_path, AppOutput, Tokens};
use crate::call::{CallId, DigitEvent, RecordingInfo, StopReason, WallClock};
use crate::capacity::release_spare;
use crate::ivr::{Action, Engine, Event, Flow, Operators, PlayId, QueueOutcome, RecordStop};
use crate::media::core::EngineCommand;
use crate::media::prompt::PromptSet;
use crate::media::session::RecordSpec;
use crate::media::voicemail::VoicemailStopConfig;
use crate::queue::core::Availability;
use crate::reference::ReferenceBook;
use crate::store::StoreCommand;
use rand::rngs::StdRng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What the IVR host asks of the rest.
pub enum IvrOutput {
    App(AppOutput),
    /// The flow asks whether an operator can be offered now (answer: `operators`).
    CheckOperators {
        call: CallId,
    },
    /// The caller reached the queue node: join the operators' queue.
    Enqueue {
        call: CallId,
        answers: Vec<(String, String)>,
        reference: Option<String>,
    },
}

struct IvrCall {
    engine: Engine,
    tokens: HashMap<u64, PlayId>,
    ended: bool,
    recording: bool,
    partial: bool,
    reference: Option<String>,
    /// What the caller answered, in order, for the operator's display.
    answers: Vec<(String, String)>,
}

pub struct IvrHost {
    flow: Arc<Flow>,
    prompts: Arc<PromptSet>,
    recordings_dir: PathBuf,
    calls: HashMap<CallId, IvrCall>,
    timers: BinaryHeap<Reverse<(Instant, CallId)>>,
    tokens: Tokens,
    rng: StdRng,
    wall: WallClock,
    /// Reference codes already given out (stored ones included).
    references: ReferenceBook,
    out: VecDeque<IvrOutput>,
}

fn record_stop(reason: StopReason) -> RecordStop {
    match reason {
        StopReason::FinishKey => RecordStop::FinishKey,
        StopReason::Silence => RecordStop::Silence,
        StopReason::MaxLength => RecordStop::MaxLength,
        StopReason::HangUp => RecordStop::HangUp,
        StopReason::NoSpeech => RecordStop::NoSpeech,
    }
}

impl IvrHost {
    pub fn new(
        flow: Arc<Flow>,
        prompts: Arc<PromptSet>,
        recordings_dir: PathBuf,
        tokens: Tokens,
        rng: StdRng,
        wall: WallClock,
    ) -> Self {
        IvrHost {
            flow,
            prompts,
            recordings_dir,
            calls: HashMap::new(),
            timers: BinaryHeap::new(),
            tokens,
            rng,
            wall,
            references: ReferenceBook::default(),
            out: VecDeque::new(),
        }
    }

    /// The codes already stored, so no caller is given one of them again.
    pub fn use_reference_book(&mut self, book: ReferenceBook) {
        if book.used() > crate::reference::CODE_SPACE / 10 * 8 {
            tracing::warn!(used = book.used(), "over 80 % of reference codes are taken");
        }
        self.references = book;
    }

    /// New calls get this flow and these prompts; calls in progress keep theirs.
    pub fn replace_flow(&mut self, flow: Arc<Flow>, prompts: Arc<PromptSet>) {
        self.flow = flow;
        self.prompts = prompts;
    }

    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.wall = wall;
    }

    pub fn poll_output(&mut self) -> Option<IvrOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    pub fn has_call(&self, call: CallId) -> bool {
        self.calls.contains_key(&call)
    }

    fn emit(&mut self, o: AppOutput) {
        self.out.push_back(IvrOutput::App(o));
    }

    /// An inbound call was answered: its flow starts.
    pub fn answered(&mut self, call: CallId, now: Instant) {
        if self.calls.contains_key(&call) {
            return;
        }
        let mut engine = Engine::new(self.flow.clone());
        let code = self.references.allocate(&mut self.rng);
        match &code {
            Some(code) => {
                self.emit(AppOutput::Store(StoreCommand::Reference {
                    call,
                    code: code.clone(),
                }));
                engine = engine.with_reference_code(code.clone());
            }
            None => tracing::error!(call, "every reference code is taken; call has none"),
        }
        self.calls.insert(
            call,
            IvrCall {
                engine,
                tokens: HashMap::new(),
                ended: false,
                recording: false,
                partial: false,
                reference: code,
                answers: Vec::new(),
            },
        );
        self.feed(call, Event::Answered, now);
    }

    /// The caller hung up.
    pub fn ended(&mut self, call: CallId, now: Instant) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.ended = true;
        if c.recording {
            c.partial = true;
        }
        self.feed(call, Event::HangUp, now);
        // A recording in progress keeps the call until its result is in.
        if self.calls.get(&call).is_some_and(|c| !c.recording) {
            self.calls.remove(&call);
            release_spare(&mut self.calls);
        }
    }

    pub fn digit(&mut self, call: CallId, digit: DigitEvent, now: Instant) {
        if !self.calls.contains_key(&call) {
            return;
        }
        let at = self.wall.at(now);
        self.emit(AppOutput::Store(StoreCommand::Digit {
            call,
            digit: digit.digit,
            source: digit.source.as_str().to_string(),
            media_ms: digit.at_ms,
            at,
        }));
        self.feed(call, Event::Digit(digit.digit), now);
    }

    /// A prompt of this host finished; false when `token` is not one of its.
    pub fn play_finished(&mut self, call: CallId, token: u64, now: Instant) -> bool {
        let id = self
            .calls
            .get_mut(&call)
            .and_then(|c| c.tokens.remove(&token));
        match id {
            Some(id) => {
                self.feed(call, Event::PromptFinished { id }, now);
                true
            }
            None => false,
        }
    }

    pub fn recording_stopped(
        &mut self,
        call: CallId,
        reason: StopReason,
        result: Result<RecordingInfo, String>,
        now: Instant,
    ) {
        let (ended, partial) = match self.calls.get_mut(&call) {
            Some(c) => {
                c.recording = false;
                (c.ended, c.partial || reason == StopReason::HangUp)
            }
            None => (true, true),
        };
        match result {
            Ok(info) => {
                if !ended {
                    let duration_ms = info.duration_ms;
                    let reason = record_stop(reason);
                    self.feed(
                        call,
                        Event::RecordingFinished {
                            reason,
                            duration_ms,
                        },
                        now,
                    );
                }
                let at = self.wall.at(now);
                self.emit(AppOutput::Store(StoreCommand::Recording {
                    call,
                    kind: "voicemail",
                    info,
                    partial,
                    at,
                }));
            }
            Err(e) => {
                tracing::error!(call, "recording failed: {e}");
                if !ended {
                    let reason = record_stop(reason);
                    self.feed(
                        call,
                        Event::RecordingFinished {
                            reason,
                            duration_ms: 0,
                        },
                        now,
                    );
                    self.feed(call, Event::RecordingStored { ok: false }, now);
                }
            }
        }
        if ended {
            self.calls.remove(&call);
            release_spare(&mut self.calls);
        }
    }

    /// The store committed (or failed to commit) the call's voice message.
    pub fn stored(&mut self, call: CallId, ok: bool, now: Instant) {
        if self.calls.get(&call).is_some_and(|c| !c.ended) {
            self.feed(call, Event::RecordingStored { ok }, now);
        }
    }

    /// Whether an operator can be offered now, as the queue sees it.
    pub fn operators(&mut self, call: CallId, availability: Availability, now: Instant) {
        let operators = match availability {
            Availability::Free => Operators::Free,
            Availability::AllBusy => Operators::AllBusy,
            Availability::NobodyLoggedIn => {
                // Counted as sent to voicemail for want of operators, without a wait.
                let at = self.wall.at(now);
                self.emit(AppOutput::Store(StoreCommand::Queue {
                    call,
                    kind: "overflowed",
                    operator: None,
                    position: None,
                    reason: Some("no_operators"),
                    waited_ms: Some(0),
                    at,
                }));
                Operators::NobodyLoggedIn
            }
        };
        self.feed(call, Event::Operators(operators), now);
    }

    /// The queue's verdict on a caller this host enqueued.
    pub fn queue_result(&mut self, call: CallId, outcome: QueueOutcome, now: Instant) {
        self.feed(call, Event::QueueResult(outcome), now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, call))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            if c.engine.poll_timeout().is_some_and(|t| t <= now) {
                c.engine.handle_timeout(now);
                self.drain(call, now);
            }
        }
    }

    fn feed(&mut self, call: CallId, event: Event, now: Instant) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.engine.handle(event, now);
        self.drain(call, now);
    }

    fn drain(&mut self, call: CallId, now: Instant) {
        loop {
            let Some(c) = self.calls.get_mut(&call) else {
                return;
            };
            let Some(action) = c.engine.poll_action() else {
                break;
            };
            match action {
                Action::NodeEntered { node } => {
                    tracing::debug!(call, %node, "ivr node");
                    let at = self.wall.at(now);
                    self.emit(AppOutput::Store(StoreCommand::Node { call, node, at }));
                }
                Action::Log { node, message } => tracing::info!(call, %node, "{message}"),
                Action::Play { id, prompts, .. } => {
                    let token = self.tokens.next();
                    c.tokens.clear();
                    c.tokens.insert(token, id);
                    let prompts = prompts
                        .iter()
                        .filter_map(|p| self.prompts.get(p).cloned())
                        .collect();
                    self.emit(AppOutput::Media(EngineCommand::Play {
                        call,
                        token,
                        prompts,
                        looping: false,
                    }));
                }
                Action::StopPlayback => {
                    c.tokens.clear();
                    self.emit(AppOutput::Media(EngineCommand::StopPlayback { call }));
                }
                Action::StartRecording {
                    max,
                    silence,
                    finish_keys,
                    beep,
                    ..
                } => {
                    c.recording = true;
                    if beep {
                        if let Some(b) = self.prompts.get("beep").cloned() {
                            let token = self.tokens.next();
                            self.emit(AppOutput::Media(EngineCommand::Play {
                                call,
                                token,
                                prompts: vec![b],
                                looping: false,
                            }));
                        }
                    }
                    let spec = RecordSpec {
                        stop: VoicemailStopConfig {
                            finish_keys,
                            silence_timeout_ms: millis(silence).min(u32::MAX as u64) as u32,
                            max_length_ms: millis(max).min(u32::MAX as u64) as u32,
                            ..VoicemailStopConfig::default()
                        },
                    };
                    let path = recording_path(
                        &self.recordings_dir,
                        self.wall.at(now),
                        "voicemail",
                        &mut self.rng,
                    );
                    self.emit(AppOutput::Media(EngineCommand::StartRecording {
                        call,
                        path,
                        spec,
                    }));
                }
                Action::StopRecording { partial } => {
                    c.partial |= partial;
                    self.emit(AppOutput::Media(EngineCommand::StopRecording { call }));
                }
                Action::StoreAnswer { node, key, digits } => {
                    c.answers.push((key.clone(), digits.clone()));
                    let at = self.wall.at(now);
                    self.emit(AppOutput::Store(StoreCommand::Answer {
                        call,
                        node,
                        key,
                        digits,
                        at,
                    }));
                }
                Action::CheckOperators { .. } => {
                    self.out.push_back(IvrOutput::CheckOperators { call });
                }
                Action::Enqueue { node } => {
                    tracing::info!(call, %node, "caller joins the operators' queue");
                    if !c.ended {
                        let answers = c.answers.clone();
                        let reference = c.reference.clone();
                        self.out.push_back(IvrOutput::Enqueue {
                            call,
                            answers,
                            reference,
                        });
                    }
                }
                Action::Hangup { reason } => {
                    tracing::info!(call, ?reason, "flow hangs up");
                    self.emit(AppOutput::Hangup(call));
                }
            }
        }
        if let Some(at) = self.calls.get(&call).and_then(|c| c.engine.poll_timeout()) {
            self.timers.push(Reverse((at, call)));
        }
    }
}
