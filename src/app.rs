//! The host of the IVR and the operators' queue: runs one `ivr::Engine` per answered
//! call and the one `queue::core::Queue`, and carries out their actions with the media
//! engine, the SIP endpoint and the store.
//!
//! Owns the glue between call events (answered, digit, prompt finished, recording
//! stopped, stored, hung up, operator legs answered or ended, registrations, feature
//! codes) and the engines' actions (play, record, store an answer, enqueue, offer to an
//! operator, bridge, hang up). Sans-IO like the engines: it returns `AppOutput`s for
//! the server loop to execute and takes time as an argument. Must not decide call flow
//! or distribution itself.

use crate::config::{Config, QueueConfig as QueueSettings, QueueStrategy};
use crate::ivr::{self, Action, Engine, Event, Flow, Operators, PlayId, QueueOutcome, RecordStop};
use crate::media::engine::{EngineCommand, MediaEvent};
use crate::media::prompt::{PromptLimits, PromptSet};
use crate::media::recorder::{StopReason, VoicemailStopConfig};
use crate::media::session::RecordSpec;
use crate::queue::core::{
    self as qcore, EventKind, Input as QueueInput, OperatorState, Queue, QueueSnapshot,
    VoicemailReason,
};
use crate::reference::ReferenceBook;
use crate::sip::{CallEvent, CallId, Direction};
use crate::store::StoreCommand;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

pub enum AppOutput {
    Media(EngineCommand),
    Store(StoreCommand),
    Hangup(CallId),
    /// Ring `operator`'s phone for `caller`; the server answers with `offer_placed`
    /// or `offer_failed`.
    Offer {
        caller: CallId,
        operator: String,
        display: String,
        answers: String,
    },
}

/// Operator SIP user name -> pseudonym, shared with the server's account lookups.
pub type OperatorNames = Arc<Mutex<HashMap<String, String>>>;

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

/// A caller waiting in the queue.
struct Waiting {
    /// The announcement being played, after which comfort audio resumes.
    announcement: Option<u64>,
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

/// Loads and checks the call flow and every prompt it can play. Each error is one
/// line naming the file (and node or prompt).
pub fn load_call_flow(cfg: &Config) -> Result<(Arc<Flow>, Arc<PromptSet>), Vec<String>> {
    let flow_file = cfg.ivr.flow.display().to_string();
    let text = std::fs::read_to_string(&cfg.ivr.flow)
        .map_err(|e| vec![format!("{flow_file}: cannot read: {e}")])?;
    let flow = Flow::from_toml_str(&text, &flow_file).map_err(|e| vec![e.to_string()])?;
    let catalog_path = cfg.prompts.dir.join("prompts.toml");
    let catalog_file = catalog_path.display().to_string();
    let catalog_text = std::fs::read_to_string(&catalog_path)
        .map_err(|e| vec![format!("{catalog_file}: cannot read: {e}")])?;
    let catalog = ivr::PromptCatalog::from_toml_str(&catalog_text, &catalog_file)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let ids = catalog.ids();
    ivr::validate(&flow, &ids)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    // The queue plays these by id; a typo would leave callers or operators in silence.
    let config_file = if cfg.source.is_empty() {
        "configuration"
    } else {
        cfg.source.as_str()
    };
    let mut missing = Vec::new();
    for (key, id) in [
        ("queue.comfort_prompt", &cfg.queue.comfort_prompt),
        ("queue.whisper_prompt", &cfg.queue.whisper_prompt),
    ] {
        if !id.is_empty() && !ids.contains(id.as_str()) {
            missing.push(format!(
                "{config_file}: {key}: prompt \"{id}\" is not in {catalog_file}"
            ));
        }
    }
    let mut queue_prompts: Vec<String> = (1..=10).map(|n| format!("queue_position_{n}")).collect();
    queue_prompts.push("queue_position_more".into());
    if !cfg.queue.voicemail_key.is_empty() {
        queue_prompts.push("queue_leave_message".into());
    }
    for id in queue_prompts {
        if !ids.contains(id.as_str()) {
            missing.push(format!(
                "{catalog_file}: prompt \"{id}\" is missing (the queue announces positions with it)"
            ));
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let prompts = PromptSet::load_dir_with(&cfg.prompts.dir, &id_refs, &PromptLimits::default())
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok((Arc::new(flow), Arc::new(prompts)))
}

struct AppCall {
    engine: Engine,
    tokens: HashMap<u64, PlayId>,
    ended: bool,
    recording: bool,
    partial: bool,
}

pub struct App {
    flow: Arc<Flow>,
    prompts: Arc<PromptSet>,
    recordings_dir: PathBuf,
    calls: HashMap<CallId, AppCall>,
    timers: BinaryHeap<Reverse<(Instant, CallId)>>,
    next_token: u64,
    stored_tx: mpsc::UnboundedSender<(CallId, bool)>,
    out: VecDeque<AppOutput>,
    queue: Queue,
    queue_settings: QueueSettings,
    waiting: HashMap<CallId, Waiting>,
    /// What each caller answered, in order, for the operator's display.
    answers: HashMap<CallId, Vec<(String, String)>>,
    references: HashMap<CallId, String>,
    legs: HashMap<CallId, Leg>,
    offers: HashMap<(CallId, String), CallId>,
    /// Operator legs playing the whisper prompt, waiting to be bridged.
    whispering: HashMap<CallId, u64>,
    conversations: HashMap<CallId, Conversation>,
    operator_names: OperatorNames,
    /// Who caused the operator state changes being stored now.
    state_source: &'static str,
    /// Reference codes already given out (stored ones included).
    reference_book: ReferenceBook,
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

/// `<recordings>/YYYY/MM/DD/<random>.wav`: the name says nothing about the caller.
pub fn recording_path(dir: &Path, at: SystemTime, kind: &str) -> PathBuf {
    let dt = time::OffsetDateTime::from(at);
    let name: [u8; 12] = rand::random();
    dir.join(format!("{:04}", dt.year()))
        .join(format!("{:02}", u8::from(dt.month())))
        .join(format!("{:02}", dt.day()))
        .join(format!("{}-{kind}.wav", hex::encode(name)))
}

impl App {
    pub fn with_queue(
        flow: Arc<Flow>,
        prompts: Arc<PromptSet>,
        recordings_dir: PathBuf,
        stored_tx: mpsc::UnboundedSender<(CallId, bool)>,
        queue_settings: QueueSettings,
        available_on_register: bool,
        operator_names: OperatorNames,
    ) -> App {
        App {
            queue: Queue::new(queue_core_config(&queue_settings, available_on_register)),
            queue_settings,
            waiting: HashMap::new(),
            answers: HashMap::new(),
            references: HashMap::new(),
            legs: HashMap::new(),
            offers: HashMap::new(),
            whispering: HashMap::new(),
            conversations: HashMap::new(),
            operator_names,
            state_source: "queue",
            reference_book: ReferenceBook::default(),
            flow,
            prompts,
            recordings_dir,
            calls: HashMap::new(),
            timers: BinaryHeap::new(),
            next_token: 1,
            stored_tx,
            out: VecDeque::new(),
        }
    }

    /// The codes already stored, so no caller is given one of them again.
    pub fn use_reference_book(&mut self, book: ReferenceBook) {
        if book.used() > crate::reference::CODE_SPACE / 10 * 8 {
            tracing::warn!(used = book.used(), "over 80 % of reference codes are taken");
        }
        self.reference_book = book;
    }

    pub fn poll_output(&mut self) -> Option<AppOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let ivr = self.timers.peek().map(|Reverse((t, _))| *t);
        match (ivr, self.queue.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn on_call_event(&mut self, ev: &CallEvent, now: Instant) {
        if self.on_leg_event(ev, now) {
            return;
        }
        if let CallEvent::Ended { call, .. } = ev {
            self.caller_gone(*call, now);
        }
        match ev {
            CallEvent::Answered { call, .. } => {
                if self.calls.contains_key(call) {
                    return;
                }
                let mut engine = Engine::new(self.flow.clone());
                match self.reference_book.allocate(&mut rand::thread_rng()) {
                    Some(code) => {
                        self.out
                            .push_back(AppOutput::Store(StoreCommand::Reference {
                                call: *call,
                                code: code.clone(),
                            }));
                        self.references.insert(*call, code.clone());
                        engine = engine.with_reference_code(code);
                    }
                    None => tracing::error!(call, "every reference code is taken; call has none"),
                }
                self.calls.insert(
                    *call,
                    AppCall {
                        engine,
                        tokens: HashMap::new(),
                        ended: false,
                        recording: false,
                        partial: false,
                    },
                );
                self.feed(*call, Event::Answered, now);
            }
            CallEvent::Ended { call, .. } => {
                let Some(c) = self.calls.get_mut(call) else {
                    return;
                };
                c.ended = true;
                if c.recording {
                    c.partial = true;
                }
                self.feed(*call, Event::HangUp, now);
                if self.calls.get(call).is_some_and(|c| !c.recording) {
                    self.calls.remove(call);
                }
            }
            CallEvent::Started { .. } => {}
        }
    }

    /// Whether calls in this direction get the IVR (our own outgoing calls do not).
    pub fn wants(direction: Direction) -> bool {
        direction == Direction::Inbound
    }

    pub fn on_media_event(&mut self, ev: MediaEvent, now: Instant) {
        match ev {
            MediaEvent::Digit { call, digit } => {
                if self.legs.contains_key(&call) {
                    // The operator's keys are passed to the caller, not stored.
                    return;
                }
                if self.waiting.contains_key(&call)
                    && self.queue_settings.voicemail_key.starts_with(digit.digit)
                {
                    self.queue_input(
                        QueueInput::CallerChoseVoicemail {
                            call: qcore::CallId(call),
                        },
                        now,
                    );
                }
                self.out.push_back(AppOutput::Store(StoreCommand::Digit {
                    call,
                    digit: digit.digit,
                    source: format!("{:?}", digit.source).to_ascii_lowercase(),
                    media_ms: digit.at_ms,
                    at: SystemTime::now(),
                }));
                self.feed(call, Event::Digit(digit.digit), now);
            }
            MediaEvent::PlayFinished { call, token } => {
                if self.whispering.get(&call) == Some(&token) {
                    self.whispering.remove(&call);
                    if let Some(caller) = self.legs.get(&call).map(|l| l.caller) {
                        self.start_bridge(caller, call, now);
                    }
                    return;
                }
                if let Some(w) = self.waiting.get_mut(&call) {
                    if w.announcement == Some(token) {
                        w.announcement = None;
                        self.play_comfort(call);
                        return;
                    }
                }
                let id = self
                    .calls
                    .get_mut(&call)
                    .and_then(|c| c.tokens.remove(&token));
                if let Some(id) = id {
                    self.feed(call, Event::PromptFinished { id }, now);
                }
            }
            MediaEvent::RecordingStopped {
                call,
                reason,
                result,
            } => {
                let (ended, partial) = match self.calls.get_mut(&call) {
                    Some(c) => {
                        c.recording = false;
                        (c.ended, c.partial || reason == StopReason::HangUp)
                    }
                    None => (true, true),
                };
                match result {
                    Ok(info) => {
                        let duration_ms = info.duration_ms;
                        if !ended {
                            self.feed(
                                call,
                                Event::RecordingFinished {
                                    reason: record_stop(reason),
                                    duration_ms,
                                },
                                now,
                            );
                        }
                        self.out
                            .push_back(AppOutput::Store(StoreCommand::Recording {
                                call,
                                kind: "voicemail",
                                info,
                                partial,
                                reply: Some(self.stored_tx.clone()),
                            }));
                    }
                    Err(e) => {
                        tracing::error!(call, "recording failed: {e}");
                        if !ended {
                            self.feed(
                                call,
                                Event::RecordingFinished {
                                    reason: record_stop(reason),
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
                }
            }
            MediaEvent::ConversationRecorded { caller, result, .. } => match result {
                Ok(info) => self
                    .out
                    .push_back(AppOutput::Store(StoreCommand::Recording {
                        call: caller,
                        kind: "conversation",
                        info,
                        partial: false,
                        reply: None,
                    })),
                Err(e) => tracing::error!(call = caller, "conversation recording failed: {e}"),
            },
            MediaEvent::BridgeEnded { caller, operator } => {
                // A bridge that ends while both legs are up (it could not start) must
                // not leave two people in silence.
                if self
                    .conversations
                    .get(&caller)
                    .is_some_and(|c| c.leg == operator)
                {
                    self.out.push_back(AppOutput::Hangup(operator));
                    self.out.push_back(AppOutput::Hangup(caller));
                }
            }
            MediaEvent::Allocated { .. }
            | MediaEvent::Failed { .. }
            | MediaEvent::RtpTimeout { .. } => {}
        }
    }

    /// The store committed (or failed to commit) a recording.
    pub fn on_stored(&mut self, call: CallId, ok: bool, now: Instant) {
        if self.calls.get(&call).is_some_and(|c| !c.ended) {
            self.feed(call, Event::RecordingStored { ok }, now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.queue.poll_timeout().is_some_and(|t| t <= now) {
            self.queue.handle_timeout(now);
            self.drain_queue(now);
        }
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
        let mut follow_up: Vec<Event> = Vec::new();
        let mut joins = Vec::new();
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
                    self.out.push_back(AppOutput::Store(StoreCommand::Node {
                        call,
                        node,
                        at: SystemTime::now(),
                    }));
                }
                Action::Log { node, message } => tracing::info!(call, %node, "{message}"),
                Action::Play { id, prompts, .. } => {
                    let token = self.next_token;
                    self.next_token += 1;
                    c.tokens.clear();
                    c.tokens.insert(token, id);
                    let list = prompts
                        .iter()
                        .filter_map(|p| self.prompts.get(p).cloned())
                        .collect();
                    self.out.push_back(AppOutput::Media(EngineCommand::Play {
                        call,
                        token,
                        prompts: list,
                        looping: false,
                    }));
                }
                Action::StopPlayback => {
                    c.tokens.clear();
                    self.out
                        .push_back(AppOutput::Media(EngineCommand::StopPlayback { call }));
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
                            let token = self.next_token;
                            self.next_token += 1;
                            self.out.push_back(AppOutput::Media(EngineCommand::Play {
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
                            silence_timeout_ms: silence.as_millis().min(u32::MAX as u128) as u32,
                            max_length_ms: max.as_millis().min(u32::MAX as u128) as u32,
                            ..VoicemailStopConfig::default()
                        },
                    };
                    let path = recording_path(&self.recordings_dir, SystemTime::now(), "voicemail");
                    self.out
                        .push_back(AppOutput::Media(EngineCommand::StartRecording {
                            call,
                            path,
                            spec,
                        }));
                }
                Action::StopRecording { partial } => {
                    c.partial |= partial;
                    self.out
                        .push_back(AppOutput::Media(EngineCommand::StopRecording { call }));
                }
                Action::StoreAnswer { node, key, digits } => {
                    self.answers
                        .entry(call)
                        .or_default()
                        .push((key.clone(), digits.clone()));
                    self.out.push_back(AppOutput::Store(StoreCommand::Answer {
                        call,
                        node,
                        key,
                        digits,
                        at: SystemTime::now(),
                    }));
                }
                Action::CheckOperators { .. } => {
                    let operators = match self.queue.availability(now) {
                        qcore::Availability::Free => Operators::Free,
                        qcore::Availability::AllBusy => Operators::AllBusy,
                        qcore::Availability::NobodyLoggedIn => {
                            self.out.push_back(no_operators_event(call));
                            Operators::NobodyLoggedIn
                        }
                    };
                    follow_up.push(Event::Operators(operators));
                }
                Action::Enqueue { node } => {
                    tracing::info!(call, %node, "caller joins the operators' queue");
                    joins.push(call);
                }
                Action::Hangup { reason } => {
                    tracing::info!(call, ?reason, "flow hangs up");
                    self.out.push_back(AppOutput::Hangup(call));
                }
            }
        }
        if let Some(at) = self.calls.get(&call).and_then(|c| c.engine.poll_timeout()) {
            self.timers.push(Reverse((at, call)));
        }
        for ev in follow_up {
            self.feed(call, ev, now);
        }
        for call in joins {
            self.join_queue(call, now);
        }
    }
}

/// A caller sent to voicemail before joining the queue, because nobody was logged in.
fn no_operators_event(call: CallId) -> AppOutput {
    AppOutput::Store(StoreCommand::Queue {
        call,
        kind: "overflowed",
        operator: None,
        position: None,
        reason: Some("no_operators"),
        waited_ms: Some(0),
        at: SystemTime::now(),
    })
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

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
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

/// The operator queue side of the host.
impl App {
    /// The live queue for `hotline queue`.
    pub fn queue_snapshot(&self, now: Instant) -> QueueSnapshot {
        self.queue.snapshot(now)
    }

    pub fn operator_name(&self, user: &str) -> String {
        self.operator_names
            .lock()
            .ok()
            .and_then(|m| m.get(user).cloned())
            .unwrap_or_else(|| user.to_string())
    }

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

    /// The server rang the operator: `leg` is the new outgoing call.
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

    fn join_queue(&mut self, call: CallId, now: Instant) {
        if self.calls.get(&call).is_none_or(|c| c.ended) {
            return;
        }
        let answers = self.answers.get(&call).cloned().unwrap_or_default();
        let priority = self.queue_settings.priority_answers.iter().any(|p| {
            p.split_once('=')
                .is_some_and(|(k, v)| answers.iter().any(|(ak, av)| ak == k && av == v))
        }) as u8;
        self.waiting.insert(call, Waiting { announcement: None });
        self.play_comfort(call);
        let input = QueueInput::CallerJoined {
            call: qcore::CallId(call),
            priority,
        };
        self.queue_input(input, now);
    }

    fn queue_input(&mut self, input: QueueInput, now: Instant) {
        self.queue.handle(input, now);
        self.drain_queue(now);
    }

    fn next_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn play_comfort(&mut self, call: CallId) {
        let id = self.queue_settings.comfort_prompt.clone();
        match self.prompts.get(&id).cloned() {
            Some(p) => {
                let token = self.next_token();
                self.out.push_back(AppOutput::Media(EngineCommand::Play {
                    call,
                    token,
                    prompts: vec![p],
                    looping: true,
                }));
            }
            None => self
                .out
                .push_back(AppOutput::Media(EngineCommand::StopPlayback { call })),
        }
    }

    fn announce(&mut self, call: CallId, position: usize) {
        let id = if position <= 10 {
            format!("queue_position_{position}")
        } else {
            "queue_position_more".to_string()
        };
        let mut list: Vec<_> = self.prompts.get(&id).cloned().into_iter().collect();
        if !self.queue_settings.voicemail_key.is_empty() {
            list.extend(self.prompts.get("queue_leave_message").cloned());
        }
        if list.is_empty() {
            return;
        }
        let token = self.next_token();
        if let Some(w) = self.waiting.get_mut(&call) {
            w.announcement = Some(token);
        }
        self.out.push_back(AppOutput::Media(EngineCommand::Play {
            call,
            token,
            prompts: list,
            looping: false,
        }));
    }

    fn drain_queue(&mut self, now: Instant) {
        while let Some(action) = self.queue.poll_action() {
            match action {
                qcore::Action::Offer { call, operator } => {
                    let caller = call.0;
                    let answers = self.answers.get(&caller).cloned().unwrap_or_default();
                    let mut display: Vec<String> =
                        answers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    if let Some(r) = self.references.get(&caller) {
                        display.push(format!("ref {r}"));
                    }
                    tracing::info!(call = caller, operator = %operator, "offering caller");
                    self.out.push_back(AppOutput::Offer {
                        caller,
                        operator,
                        display: display.join(" "),
                        answers: answers_header(&answers),
                    });
                }
                qcore::Action::CancelOffer { call, operator } => {
                    if let Some(leg) = self.offers.remove(&(call.0, operator)) {
                        self.out.push_back(AppOutput::Hangup(leg));
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
                    let whisper = self.queue_settings.whisper_prompt.clone();
                    match self.prompts.get(&whisper).cloned() {
                        Some(p) if !whisper.is_empty() => {
                            let token = self.next_token();
                            self.whispering.insert(leg, token);
                            self.out.push_back(AppOutput::Media(EngineCommand::Play {
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
                    self.out
                        .push_back(AppOutput::Media(EngineCommand::StopPlayback {
                            call: caller,
                        }));
                    let outcome = match reason {
                        VoicemailReason::CallerChoice => QueueOutcome::CallerChoseVoicemail,
                        VoicemailReason::MaxWait => QueueOutcome::MaxWait,
                        VoicemailReason::NoOperators => QueueOutcome::NoOperators,
                    };
                    self.feed(caller, Event::QueueResult(outcome), now);
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
                qcore::Action::Event(ev) => self.store_queue_event(ev.kind),
            }
        }
    }

    fn start_bridge(&mut self, caller: CallId, leg: CallId, now: Instant) {
        let Some(conv) = self.conversations.get_mut(&caller) else {
            return;
        };
        conv.since = Some(now);
        self.out
            .push_back(AppOutput::Media(EngineCommand::StopPlayback {
                call: caller,
            }));
        let path = recording_path(&self.recordings_dir, SystemTime::now(), "conversation");
        self.out.push_back(AppOutput::Media(EngineCommand::Bridge {
            caller,
            operator: leg,
            record: Some(path),
        }));
        self.feed(caller, Event::QueueResult(QueueOutcome::Answered), now);
    }

    /// Events of calls to operators' phones; false when `ev` is not about one.
    fn on_leg_event(&mut self, ev: &CallEvent, now: Instant) -> bool {
        let (leg, ended) = match ev {
            CallEvent::Answered { call, .. } => (*call, None),
            CallEvent::Ended { call, reason, .. } => (*call, Some(*reason)),
            CallEvent::Started { .. } => return false,
        };
        let Some(l) = self.legs.get(&leg) else {
            return false;
        };
        let caller = l.caller;
        let operator = l.operator.clone();
        let Some(reason) = ended else {
            let input = QueueInput::OfferAnswered {
                call: qcore::CallId(caller),
                operator,
            };
            self.queue_input(input, now);
            return true;
        };
        self.legs.remove(&leg);
        self.whispering.remove(&leg);
        if self
            .conversations
            .get(&caller)
            .is_some_and(|c| c.leg == leg)
        {
            // The operator hung up: the conversation is over for the caller too.
            self.end_conversation(caller, now);
            self.out.push_back(AppOutput::Hangup(caller));
            return true;
        }
        if self.offers.get(&(caller, operator.clone())) == Some(&leg) {
            self.offers.remove(&(caller, operator.clone()));
            let call = qcore::CallId(caller);
            let input = match reason {
                crate::sip::EndReason::Rejected(480 | 486 | 600 | 603) => {
                    QueueInput::OfferRejected { call, operator }
                }
                _ => QueueInput::OfferFailed { call, operator },
            };
            self.queue_input(input, now);
        }
        true
    }

    /// The caller's call ended: leave the queue or end the conversation.
    fn caller_gone(&mut self, call: CallId, now: Instant) {
        if self.waiting.remove(&call).is_some() {
            self.queue_input(
                QueueInput::CallerLeft {
                    call: qcore::CallId(call),
                },
                now,
            );
        }
        if let Some(leg) = self.conversations.get(&call).map(|c| c.leg) {
            self.end_conversation(call, now);
            self.out.push_back(AppOutput::Hangup(leg));
        }
        self.answers.remove(&call);
        self.references.remove(&call);
    }

    fn end_conversation(&mut self, caller: CallId, now: Instant) {
        let Some(conv) = self.conversations.remove(&caller) else {
            return;
        };
        if let Some(since) = conv.since {
            self.out.push_back(AppOutput::Store(StoreCommand::Talk {
                call: caller,
                talk_ms: millis(now.saturating_duration_since(since)),
            }));
        }
        self.queue_input(
            QueueInput::CallEnded {
                call: qcore::CallId(caller),
            },
            now,
        );
    }

    fn store_queue_event(&mut self, kind: EventKind) {
        let at = SystemTime::now();
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
                self.out
                    .push_back(AppOutput::Store(StoreCommand::OperatorState {
                        operator: name,
                        state: state_name(&state),
                        source: self.state_source,
                        at,
                    }));
                return;
            }
        };
        let (call, kind, operator, position, reason, waited) = row;
        let operator = operator.map(|o| self.operator_name(&o));
        self.out.push_back(AppOutput::Store(StoreCommand::Queue {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::{DigitEvent, DigitSource};
    use crate::media::g711::Codec;

    /// The shipped flow and prompts, a queue with a whisper prompt, and the outputs
    /// collected so far.
    struct Host {
        app: App,
        now: Instant,
        seen: Vec<AppOutput>,
    }

    impl Host {
        fn new(settings: QueueSettings) -> Host {
            let (cfg, _) = Config::load(None, &[]).expect("embedded config");
            let (flow, prompts) = load_call_flow(&cfg).expect("shipped flow");
            let (tx, _rx) = mpsc::unbounded_channel();
            let dir = std::env::temp_dir().join("hotline-app-tests");
            let app = App::with_queue(
                flow,
                prompts,
                dir,
                tx,
                settings,
                true,
                OperatorNames::default(),
            );
            Host {
                app,
                now: Instant::now(),
                seen: Vec::new(),
            }
        }

        fn pump(&mut self) -> Vec<AppOutput> {
            let out: Vec<AppOutput> = std::iter::from_fn(|| self.app.poll_output()).collect();
            out
        }

        fn answered(&mut self, call: CallId) {
            let ev = CallEvent::Answered {
                call,
                codec: Codec::Pcmu,
                at: SystemTime::now(),
            };
            self.app.on_call_event(&ev, self.now);
        }

        fn ended(&mut self, call: CallId, reason: crate::sip::EndReason) {
            let ev = CallEvent::Ended {
                call,
                reason,
                at: SystemTime::now(),
            };
            self.app.on_call_event(&ev, self.now);
        }

        fn digit(&mut self, call: CallId, digit: char) {
            let digit = DigitEvent {
                digit,
                source: DigitSource::Rfc4733,
                at_ms: 0,
                duration_ms: 100,
            };
            self.app
                .on_media_event(MediaEvent::Digit { call, digit }, self.now);
        }

        /// Finishes whatever the call is playing, as the media engine would.
        fn finish_playing(&mut self, call: CallId) {
            let out = self.pump();
            let token = out.iter().rev().find_map(|o| match o {
                AppOutput::Media(EngineCommand::Play { call: c, token, .. }) if *c == call => {
                    Some(*token)
                }
                _ => None,
            });
            self.seen.extend(out);
            if let Some(token) = token {
                self.app
                    .on_media_event(MediaEvent::PlayFinished { call, token }, self.now);
            }
        }

        /// A caller who presses 0 in the greeting and hears "connecting".
        fn caller_queues(&mut self, call: CallId) {
            self.answered(call);
            self.digit(call, '0');
            self.finish_playing(call);
        }

        fn take(&mut self) -> Vec<AppOutput> {
            let mut all = std::mem::take(&mut self.seen);
            all.extend(self.pump());
            all
        }
    }

    fn offers(out: &[AppOutput]) -> Vec<(CallId, String, String, String)> {
        out.iter()
            .filter_map(|o| match o {
                AppOutput::Offer {
                    caller,
                    operator,
                    display,
                    answers,
                } => Some((*caller, operator.clone(), display.clone(), answers.clone())),
                _ => None,
            })
            .collect()
    }

    fn queue_kinds(out: &[AppOutput]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|o| match o {
                AppOutput::Store(StoreCommand::Queue { kind, .. }) => Some(*kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn whisper_then_bridge_then_either_hang_up_ends_both() {
        let mut h = Host::new(QueueSettings {
            whisper_prompt: "beep".into(),
            ..QueueSettings::default()
        });
        h.app.operator_registered("anna", true, h.now);
        h.caller_queues(1);
        let out = h.take();
        let offered = offers(&out);
        assert_eq!(offered.len(), 1, "one offer");
        assert_eq!(offered[0].1, "anna");
        assert!(
            offered[0].2.starts_with("ref "),
            "display: {}",
            offered[0].2
        );
        assert_eq!(queue_kinds(&out), vec!["joined", "offered"]);

        h.app.offer_placed(1, "anna", 100);
        h.answered(100);
        let out = h.take();
        // The operator hears the whisper first; nothing is bridged yet.
        let whisper = out.iter().find_map(|o| match o {
            AppOutput::Media(EngineCommand::Play {
                call: 100, token, ..
            }) => Some(*token),
            _ => None,
        });
        let token = whisper.expect("whisper played to the operator");
        assert!(!out
            .iter()
            .any(|o| matches!(o, AppOutput::Media(EngineCommand::Bridge { .. }))));
        h.app
            .on_media_event(MediaEvent::PlayFinished { call: 100, token }, h.now);
        let out = h.take();
        assert!(out.iter().any(|o| matches!(
            o,
            AppOutput::Media(EngineCommand::Bridge {
                caller: 1,
                operator: 100,
                record: Some(_)
            })
        )));

        // The operator hangs up: the caller is hung up and the talk time stored.
        h.now += Duration::from_secs(30);
        h.ended(100, crate::sip::EndReason::CallerBye);
        let out = h.take();
        assert!(out.iter().any(|o| matches!(o, AppOutput::Hangup(1))));
        assert!(out.iter().any(|o| matches!(
            o,
            AppOutput::Store(StoreCommand::Talk {
                call: 1,
                talk_ms: 30_000
            })
        )));
        assert_eq!(
            h.app.queue_snapshot(h.now).operators[0].state,
            OperatorState::WrapUp(h.now + Duration::from_secs(15))
        );
    }

    /// Nobody logged in: no "connecting", straight to the voicemail introduction,
    /// and the call is counted as sent to voicemail for want of operators.
    #[test]
    fn with_nobody_logged_in_zero_leads_straight_to_the_voice_message() {
        let mut h = Host::new(QueueSettings::default());
        h.answered(1);
        h.digit(1, '0');
        let out = h.take();
        let played: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                AppOutput::Media(EngineCommand::Play { prompts, .. }) => Some(prompts),
                _ => None,
            })
            .flatten()
            .map(|p| p.id())
            .collect();
        assert_eq!(played, ["greeting", "keys_hint", "voicemail_intro"]);
        assert_eq!(queue_kinds(&out), ["overflowed"]);
        assert!(out.iter().any(|o| matches!(
            o,
            AppOutput::Store(StoreCommand::Queue {
                reason: Some("no_operators"),
                waited_ms: Some(0),
                ..
            })
        )));
        assert!(h.app.queue_snapshot(h.now).callers.is_empty());
    }

    #[test]
    fn caller_hanging_up_while_the_operator_rings_cancels_the_offer() {
        let mut h = Host::new(QueueSettings::default());
        h.app.operator_registered("anna", true, h.now);
        h.caller_queues(1);
        h.take();
        h.app.offer_placed(1, "anna", 100);
        h.now += Duration::from_secs(3);
        h.ended(1, crate::sip::EndReason::CallerBye);
        let out = h.take();
        assert!(out.iter().any(|o| matches!(o, AppOutput::Hangup(100))));
        assert!(queue_kinds(&out).contains(&"abandoned"));
        // The cancelled leg ending later does not count as the operator's miss.
        h.ended(100, crate::sip::EndReason::Rejected(487));
        assert_eq!(
            h.app.queue_snapshot(h.now).operators[0].consecutive_misses,
            0
        );
    }

    #[test]
    fn voicemail_key_and_a_declining_operator() {
        let mut h = Host::new(QueueSettings::default());
        h.app.operator_registered("anna", true, h.now);
        h.caller_queues(1);
        h.take();
        h.app.offer_placed(1, "anna", 100);
        // The phone declines: a miss, and the caller keeps waiting.
        h.ended(100, crate::sip::EndReason::Rejected(486));
        let out = h.take();
        assert!(queue_kinds(&out).contains(&"offer_missed"));
        // The voicemail key leaves the queue for the recording.
        h.digit(1, '1');
        let out = h.take();
        let stored: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                AppOutput::Store(StoreCommand::Queue { kind, reason, .. }) => {
                    Some((*kind, *reason))
                }
                _ => None,
            })
            .collect();
        assert!(
            stored.contains(&("overflowed", Some("caller_choice"))),
            "{stored:?}"
        );
        assert!(h.app.queue_snapshot(h.now).callers.is_empty());
    }
}
