//! The host of the IVR: runs one `ivr::Engine` per answered call and carries out its
//! actions with the media engine and the store.
//!
//! Owns the glue between call events (answered, digit, prompt finished, recording
//! stopped, stored, hung up) and the engine's actions (play, record, store an answer,
//! enqueue, hang up). Sans-IO like the engine: it returns `AppOutput`s for the server
//! loop to execute and takes time as an argument. Must not decide call flow itself.

use crate::config::Config;
use crate::ivr::{self, Action, Engine, Event, Flow, PlayId, QueueOutcome, RecordStop};
use crate::media::engine::{EngineCommand, MediaEvent};
use crate::media::prompt::{PromptLimits, PromptSet};
use crate::media::recorder::{StopReason, VoicemailStopConfig};
use crate::media::session::RecordSpec;
use crate::sip::{CallEvent, CallId, Direction};
use crate::store::StoreCommand;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;

pub enum AppOutput {
    Media(EngineCommand),
    Store(StoreCommand),
    Hangup(CallId),
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
}

fn reference_code() -> String {
    use rand::Rng;
    let n: u32 = rand::thread_rng().gen_range(100_000..1_000_000);
    n.to_string()
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
    pub fn new(
        flow: Arc<Flow>,
        prompts: Arc<PromptSet>,
        recordings_dir: PathBuf,
        stored_tx: mpsc::UnboundedSender<(CallId, bool)>,
    ) -> App {
        App {
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

    pub fn poll_output(&mut self) -> Option<AppOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    pub fn on_call_event(&mut self, ev: &CallEvent, now: Instant) {
        match ev {
            CallEvent::Answered { call, .. } => {
                if self.calls.contains_key(call) {
                    return;
                }
                let code = reference_code();
                self.out
                    .push_back(AppOutput::Store(StoreCommand::Reference {
                        call: *call,
                        code: code.clone(),
                    }));
                let engine = Engine::new(self.flow.clone()).with_reference_code(code);
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
        let mut follow_up = Vec::new();
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
                    self.out.push_back(AppOutput::Store(StoreCommand::Answer {
                        call,
                        node,
                        key,
                        digits,
                        at: SystemTime::now(),
                    }));
                }
                Action::Enqueue { node } => {
                    // The operator queue is not in service yet: the flow takes its fallback.
                    tracing::info!(call, %node, "queue unavailable, taking the fallback");
                    follow_up.push(Event::QueueResult(QueueOutcome::Unavailable));
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
    }
}
