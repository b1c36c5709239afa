//! The queue host: the one `queue::core::Queue` of waiting callers and operators, and
//! what its actions mean: comfort music and position announcements for waiting
//! callers, offers rung on operators' phones, the whisper and the bridge with its
//! stereo recording, and the queue's history in the store.
//!
//! Owns the waiting callers' playback state, the legs to operators' phones and which
//! offer each is, the conversations in progress, and the operators' pseudonyms.
//! Sans-IO: time, the wall clock and a seeded generator are inputs. A caller arrives
//! from the IVR host through `join`; its verdict leaves as `QueueOutput::Result`.

use super::{millis, recording_path, AppOutput, Tokens};
use crate::call::{CallId, EndReason, RecordingInfo, WallClock};
use crate::capacity::release_spare;
use crate::config::{QueueConfig as QueueSettings, QueueStrategy};
use crate::ivr::QueueOutcome;
use crate::media::core::EngineCommand;
use crate::media::prompt::PromptSet;
use crate::queue::core::{
    self as qcore, EventKind, Input as QueueInput, OperatorState, Queue, QueueSnapshot,
    VoicemailReason,
};
use crate::store::StoreCommand;
use rand::rngs::StdRng;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the queue host asks of the rest.
pub enum QueueOutput {
    App(AppOutput),
    /// The queue is done with a caller: back to the IVR with this outcome.
    Result {
        call: CallId,
        outcome: QueueOutcome,
    },
}

/// The queue's settings from the configuration.
pub fn queue_core_config(q: &QueueSettings, available_on_register: bool) -> qcore::QueueConfig {
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    qcore::QueueConfig {
        strategy: match q.strategy {
            QueueStrategy::LongestIdle => qcore::Strategy::LongestIdle,
            QueueStrategy::RingAll => qcore::Strategy::RingAll,
        },
        priority_first: !q.priority_answers.is_empty(),
        ring_timeout: Duration::from_secs(q.ring_timeout_s),
        max_misses: q.max_misses,
        miss_cooldown: Duration::from_secs(q.ring_timeout_s.min(5)),
        wrap_up: Duration::from_secs(q.wrap_up_s),
        announce_interval: secs(q.announce_interval_s),
        announce_min_interval: Duration::from_secs(q.announce_min_interval_s),
        max_wait: secs(q.max_wait_s),
        voicemail_when_nobody_logged_in: q.voicemail_when_nobody_logged_in,
        voicemail_when_last_operator_leaves: q.voicemail_when_nobody_logged_in,
        available_on_register,
    }
}

pub fn state_name(state: &OperatorState) -> &'static str {
    match state {
        OperatorState::Offline => "offline",
        OperatorState::Available => "available",
        OperatorState::Ringing(_) => "ringing",
        OperatorState::OnCall(_) => "on_call",
        OperatorState::WrapUp(_) => "wrap_up",
        OperatorState::Paused => "paused",
    }
}

/// Keys and digits as a header value: `status=1;zone=2;unit=12345`.
fn answers_header(answers: &[(String, String)]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*' | '#'))
            .collect()
    };
    answers
        .iter()
        .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
        .collect::<Vec<_>>()
        .join(";")
}

/// A caller waiting in the queue.
struct Waiting {
    /// The announcement being played, after which comfort audio resumes.
    announcement: Option<u64>,
    answers: Vec<(String, String)>,
    reference: Option<String>,
}

/// A call leg to an operator's phone.
struct Leg {
    caller: CallId,
    operator: String,
}

struct Conversation {
    leg: CallId,
    since: Option<Instant>,
}

pub struct QueueHost {
    queue: Queue,
    settings: QueueSettings,
    prompts: Arc<PromptSet>,
    recordings_dir: PathBuf,
    waiting: HashMap<CallId, Waiting>,
    legs: HashMap<CallId, Leg>,
    offers: HashMap<(CallId, String), CallId>,
    /// Operator legs playing the whisper prompt, waiting to be bridged.
    whispering: HashMap<CallId, u64>,
    conversations: HashMap<CallId, Conversation>,
    /// SIP username -> pseudonym.
    operator_names: HashMap<String, String>,
    /// Who caused the operator state changes being stored now.
    state_source: &'static str,
    tokens: Tokens,
    rng: StdRng,
    wall: WallClock,
    out: VecDeque<QueueOutput>,
}

impl QueueHost {
    pub fn new(
        settings: QueueSettings,
        available_on_register: bool,
        prompts: Arc<PromptSet>,
        recordings_dir: PathBuf,
        tokens: Tokens,
        rng: StdRng,
        wall: WallClock,
    ) -> Self {
        QueueHost {
            queue: Queue::new(queue_core_config(&settings, available_on_register)),
            settings,
            prompts,
            recordings_dir,
            waiting: HashMap::new(),
            legs: HashMap::new(),
            offers: HashMap::new(),
            whispering: HashMap::new(),
            conversations: HashMap::new(),
            operator_names: HashMap::new(),
            state_source: "queue",
            tokens,
            rng,
            wall,
            out: VecDeque::new(),
        }
    }

    pub fn replace_prompts(&mut self, prompts: Arc<PromptSet>) {
        self.prompts = prompts;
    }

    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.wall = wall;
    }

    pub fn set_operator_names(&mut self, names: HashMap<String, String>) {
        self.operator_names = names;
    }

    pub fn poll_output(&mut self) -> Option<QueueOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.poll_timeout()
    }

    fn emit(&mut self, o: AppOutput) {
        self.out.push_back(QueueOutput::App(o));
    }

    /// The live queue for `hotline queue`.
    pub fn snapshot(&self, now: Instant) -> QueueSnapshot {
        self.queue.snapshot(now)
    }

    pub fn operator_name(&self, user: &str) -> String {
        self.operator_names
            .get(user)
            .cloned()
            .unwrap_or_else(|| user.to_string())
    }

    /// The SIP username of the operator called `name` (pseudonym or username).
    pub fn operator_user(&self, name: &str) -> Option<String> {
        self.operator_names
            .iter()
            .find(|(u, n)| *n == name || *u == name)
            .map(|(u, _)| u.clone())
    }

    /// What a caller joining now would meet.
    pub fn availability(&self, now: Instant) -> qcore::Availability {
        self.queue.availability(now)
    }

    pub fn is_leg(&self, call: CallId) -> bool {
        self.legs.contains_key(&call)
    }

    pub fn is_waiting(&self, call: CallId) -> bool {
        self.waiting.contains_key(&call)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.queue.poll_timeout().is_some_and(|t| t <= now) {
            self.queue.handle_timeout(now);
            self.drain_queue(now);
        }
    }

    // ---- callers ------------------------------------------------------------------

    /// A caller from the IVR joins the queue.
    pub fn join(
        &mut self,
        call: CallId,
        answers: Vec<(String, String)>,
        reference: Option<String>,
        now: Instant,
    ) {
        let priority = self.settings.priority_answers.iter().any(|p| {
            p.split_once('=')
                .is_some_and(|(k, v)| answers.iter().any(|(ak, av)| ak == k && av == v))
        }) as u8;
        self.waiting.insert(
            call,
            Waiting {
                announcement: None,
                answers,
                reference,
            },
        );
        self.play_comfort(call);
        let input = QueueInput::CallerJoined {
            call: qcore::CallId(call),
            priority,
        };
        self.queue_input(input, now);
    }

    /// A key pressed by a waiting caller.
    pub fn caller_digit(&mut self, call: CallId, digit: char, now: Instant) {
        if self.waiting.contains_key(&call) && self.settings.voicemail_key.starts_with(digit) {
            let input = QueueInput::CallerChoseVoicemail {
                call: qcore::CallId(call),
            };
            self.queue_input(input, now);
        }
    }

    /// The caller's call ended: leave the queue or end the conversation.
    pub fn caller_gone(&mut self, call: CallId, now: Instant) {
        if self.waiting.remove(&call).is_some() {
            release_spare(&mut self.waiting);
            let input = QueueInput::CallerLeft {
                call: qcore::CallId(call),
            };
            self.queue_input(input, now);
        }
        if let Some(leg) = self.conversations.get(&call).map(|c| c.leg) {
            self.end_conversation(call, now);
            self.emit(AppOutput::Hangup(leg));
        }
    }

    /// A prompt of this host finished; false when `token` is not one of its.
    pub fn play_finished(&mut self, call: CallId, token: u64, now: Instant) -> bool {
        if self.whispering.get(&call) == Some(&token) {
            self.whispering.remove(&call);
            if let Some(caller) = self.legs.get(&call).map(|l| l.caller) {
                self.start_bridge(caller, call, now);
            }
            return true;
        }
        if let Some(w) = self.waiting.get_mut(&call) {
            if w.announcement == Some(token) {
                w.announcement = None;
                self.play_comfort(call);
                return true;
            }
        }
        false
    }

    pub fn conversation_recorded(
        &mut self,
        caller: CallId,
        result: Result<RecordingInfo, String>,
        now: Instant,
    ) {
        match result {
            Ok(info) => {
                let at = self.wall.at(now);
                self.emit(AppOutput::Store(StoreCommand::Recording {
                    call: caller,
                    kind: "conversation",
                    info,
                    partial: false,
                    at,
                }))
            }
            Err(e) => tracing::error!(call = caller, "conversation recording failed: {e}"),
        }
    }

    pub fn bridge_ended(&mut self, caller: CallId, operator: CallId) {
        // A bridge that ends while both legs are up (it could not start) must not
        // leave two people in silence.
        if self
            .conversations
            .get(&caller)
            .is_some_and(|c| c.leg == operator)
        {
            self.emit(AppOutput::Hangup(operator));
            self.emit(AppOutput::Hangup(caller));
        }
    }

    // ---- operators ----------------------------------------------------------------

    /// A phone of `user` registered (first binding) or its last binding went away.
    pub fn operator_registered(&mut self, user: &str, online: bool, now: Instant) {
        self.state_source = "registrar";
        let input = if online {
            QueueInput::OperatorRegistered(user.to_string())
        } else {
            QueueInput::OperatorUnregistered(user.to_string())
        };
        self.queue_input(input, now);
        self.state_source = "queue";
    }

    /// `available` or `paused`, from a feature code (`source` "phone") or the CLI.
    /// Returns the operator's state afterwards, or why nothing changed.
    pub fn set_operator_state(
        &mut self,
        user: &str,
        available: bool,
        source: &'static str,
        now: Instant,
    ) -> Result<&'static str, String> {
        match self.queue.operator_state(user) {
            None | Some(OperatorState::Offline) => {
                return Err(format!(
                    "{} has no registered phone",
                    self.operator_name(user)
                ))
            }
            Some(_) => {}
        }
        self.state_source = source;
        let input = if available {
            QueueInput::OperatorSetAvailable(user.to_string())
        } else {
            QueueInput::OperatorPaused(user.to_string())
        };
        self.queue_input(input, now);
        self.state_source = "queue";
        Ok(self
            .queue
            .operator_state(user)
            .map(state_name)
            .unwrap_or("offline"))
    }

    /// The operator's phone was rung: `leg` is the new outgoing call.
    pub fn offer_placed(&mut self, caller: CallId, operator: &str, leg: CallId) {
        self.legs.insert(
            leg,
            Leg {
                caller,
                operator: operator.to_string(),
            },
        );
        self.offers.insert((caller, operator.to_string()), leg);
    }

    /// The operator could not be rung at all (no usable binding).
    pub fn offer_failed(&mut self, caller: CallId, operator: &str, now: Instant) {
        let input = QueueInput::OfferFailed {
            call: qcore::CallId(caller),
            operator: operator.to_string(),
        };
        self.queue_input(input, now);
    }

    /// The operator's phone answered.
    pub fn leg_answered(&mut self, leg: CallId, now: Instant) {
        let Some(l) = self.legs.get(&leg) else {
            return;
        };
        let input = QueueInput::OfferAnswered {
            call: qcore::CallId(l.caller),
            operator: l.operator.clone(),
        };
        self.queue_input(input, now);
    }

    /// The call to an operator's phone ended, answered or not.
    pub fn leg_ended(&mut self, leg: CallId, reason: EndReason, now: Instant) {
        let Some(l) = self.legs.remove(&leg) else {
            return;
        };
        release_spare(&mut self.legs);
        let (caller, operator) = (l.caller, l.operator);
        self.whispering.remove(&leg);
        if self
            .conversations
            .get(&caller)
            .is_some_and(|c| c.leg == leg)
        {
            // The operator hung up: the conversation is over for the caller too.
            self.end_conversation(caller, now);
            self.emit(AppOutput::Hangup(caller));
            return;
        }
        if self.offers.get(&(caller, operator.clone())) == Some(&leg) {
            self.offers.remove(&(caller, operator.clone()));
            let call = qcore::CallId(caller);
            let input = match reason {
                EndReason::Rejected(480 | 486 | 600 | 603) => {
                    QueueInput::OfferRejected { call, operator }
                }
                _ => QueueInput::OfferFailed { call, operator },
            };
            self.queue_input(input, now);
        }
    }

    // ---- the queue's actions --------------------------------------------------------

    fn queue_input(&mut self, input: QueueInput, now: Instant) {
        self.queue.handle(input, now);
        self.drain_queue(now);
    }

    fn play_comfort(&mut self, call: CallId) {
        let id = self.settings.comfort_prompt.clone();
        match self.prompts.get(&id).cloned() {
            Some(p) => {
                let token = self.tokens.next();
                self.emit(AppOutput::Media(EngineCommand::Play {
                    call,
                    token,
                    prompts: vec![p],
                    looping: true,
                }));
            }
            None => self.emit(AppOutput::Media(EngineCommand::StopPlayback { call })),
        }
    }

    fn announce(&mut self, call: CallId, position: usize) {
        let id = if position <= 10 {
            format!("queue_position_{position}")
        } else {
            "queue_position_more".to_string()
        };
        let mut list: Vec<_> = self.prompts.get(&id).cloned().into_iter().collect();
        if !self.settings.voicemail_key.is_empty() {
            list.extend(self.prompts.get("queue_leave_message").cloned());
        }
        if list.is_empty() {
            return;
        }
        let token = self.tokens.next();
        if let Some(w) = self.waiting.get_mut(&call) {
            w.announcement = Some(token);
        }
        self.emit(AppOutput::Media(EngineCommand::Play {
            call,
            token,
            prompts: list,
            looping: false,
        }));
    }

    fn start_bridge(&mut self, caller: CallId, leg: CallId, now: Instant) {
        let Some(conv) = self.conversations.get_mut(&caller) else {
            return;
        };
        conv.since = Some(now);
        self.emit(AppOutput::Media(EngineCommand::StopPlayback {
            call: caller,
        }));
        let path = recording_path(
            &self.recordings_dir,
            self.wall.at(now),
            "conversation",
            &mut self.rng,
        );
        self.emit(AppOutput::Media(EngineCommand::Bridge {
            caller,
            operator: leg,
            record: Some(path),
        }));
        self.out.push_back(QueueOutput::Result {
            call: caller,
            outcome: QueueOutcome::Answered,
        });
    }

    fn end_conversation(&mut self, caller: CallId, now: Instant) {
        let Some(conv) = self.conversations.remove(&caller) else {
            return;
        };
        if let Some(since) = conv.since {
            self.emit(AppOutput::Store(StoreCommand::Talk {
                call: caller,
                talk_ms: millis(now.saturating_duration_since(since)),
            }));
        }
        let input = QueueInput::CallEnded {
            call: qcore::CallId(caller),
        };
        self.queue_input(input, now);
    }

    fn drain_queue(&mut self, now: Instant) {
        while let Some(action) = self.queue.poll_action() {
            match action {
                qcore::Action::Offer { call, operator } => {
                    let caller = call.0;
                    let (answers, reference) = self
                        .waiting
                        .get(&caller)
                        .map(|w| (w.answers.clone(), w.reference.clone()))
                        .unwrap_or_default();
                    let mut display: Vec<String> =
                        answers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    if let Some(r) = reference {
                        display.push(format!("ref {r}"));
                    }
                    tracing::info!(call = caller, operator = %operator, "offering caller");
                    self.emit(AppOutput::Offer {
                        caller,
                        operator,
                        display: display.join(" "),
                        answers: answers_header(&answers),
                    });
                }
                qcore::Action::CancelOffer { call, operator } => {
                    if let Some(leg) = self.offers.remove(&(call.0, operator)) {
                        self.emit(AppOutput::Hangup(leg));
                    }
                }
                qcore::Action::Bridge { call, operator } => {
                    let caller = call.0;
                    let Some(leg) = self.offers.remove(&(caller, operator.clone())) else {
                        continue;
                    };
                    self.waiting.remove(&caller);
                    self.conversations
                        .insert(caller, Conversation { leg, since: None });
                    let whisper = self.settings.whisper_prompt.clone();
                    match self.prompts.get(&whisper).cloned() {
                        Some(p) if !whisper.is_empty() => {
                            let token = self.tokens.next();
                            self.whispering.insert(leg, token);
                            self.emit(AppOutput::Media(EngineCommand::Play {
                                call: leg,
                                token,
                                prompts: vec![p],
                                looping: false,
                            }));
                        }
                        _ => self.start_bridge(caller, leg, now),
                    }
                }
                qcore::Action::AnnouncePosition { call, position } => {
                    self.announce(call.0, position)
                }
                qcore::Action::ToVoicemail { call, reason } => {
                    let caller = call.0;
                    self.waiting.remove(&caller);
                    self.emit(AppOutput::Media(EngineCommand::StopPlayback {
                        call: caller,
                    }));
                    let outcome = match reason {
                        VoicemailReason::CallerChoice => QueueOutcome::CallerChoseVoicemail,
                        VoicemailReason::MaxWait => QueueOutcome::MaxWait,
                        VoicemailReason::NoOperators => QueueOutcome::NoOperators,
                    };
                    self.out.push_back(QueueOutput::Result {
                        call: caller,
                        outcome,
                    });
                }
                qcore::Action::Abandoned { call, waited } => {
                    tracing::info!(
                        call = call.0,
                        waited_ms = millis(waited),
                        "caller left the queue"
                    );
                }
                qcore::Action::OperatorAutoPaused { operator } => {
                    tracing::warn!(operator = %self.operator_name(&operator), "operator paused after missed calls");
                }
                qcore::Action::Event(ev) => self.store_queue_event(ev.kind, now),
            }
        }
    }

    fn store_queue_event(&mut self, kind: EventKind, now: Instant) {
        let at = self.wall.at(now);
        type Row = (
            qcore::CallId,
            &'static str,
            Option<String>,
            Option<usize>,
            Option<&'static str>,
            Option<Duration>,
        );
        let row: Row = match kind {
            EventKind::Joined { call, position, .. } => {
                (call, "joined", None, Some(position), None, None)
            }
            EventKind::PositionAnnounced { call, position } => {
                (call, "position_announced", None, Some(position), None, None)
            }
            EventKind::Offered { call, operator } => {
                (call, "offered", Some(operator), None, None, None)
            }
            EventKind::OfferMissed {
                call,
                operator,
                reason,
            } => {
                let reason = match reason {
                    qcore::MissReason::Timeout => "timeout",
                    qcore::MissReason::Rejected => "rejected",
                    qcore::MissReason::Failed => "failed",
                };
                (
                    call,
                    "offer_missed",
                    Some(operator),
                    None,
                    Some(reason),
                    None,
                )
            }
            EventKind::Answered {
                call,
                operator,
                waited,
            } => (call, "answered", Some(operator), None, None, Some(waited)),
            EventKind::Abandoned { call, waited } => {
                (call, "abandoned", None, None, None, Some(waited))
            }
            EventKind::Overflowed {
                call,
                reason,
                waited,
            } => {
                let reason = match reason {
                    VoicemailReason::CallerChoice => "caller_choice",
                    VoicemailReason::MaxWait => "max_wait",
                    VoicemailReason::NoOperators => "no_operators",
                };
                (call, "overflowed", None, None, Some(reason), Some(waited))
            }
            EventKind::OperatorStateChanged { operator, state } => {
                let name = self.operator_name(&operator);
                tracing::info!(operator = %name, state = state_name(&state), "operator state");
                let source = self.state_source;
                self.emit(AppOutput::Store(StoreCommand::OperatorState {
                    operator: name,
                    state: state_name(&state),
                    source,
                    at,
                }));
                return;
            }
        };
        let (call, kind, operator, position, reason, waited) = row;
        let operator = operator.map(|o| self.operator_name(&o));
        self.emit(AppOutput::Store(StoreCommand::Queue {
            call: call.0,
            kind,
            operator,
            position: position.map(|p| p as u32),
            reason,
            waited_ms: waited.map(millis),
            at,
        }));
    }
}
