//! The hosts of call logic: the IVR host (one `ivr::Engine` per caller) and the queue
//! host (the one operators' queue), and the small glue between them: a caller who
//! reaches the queue node joins the queue, and the queue's verdict (answered, or off
//! to voicemail) goes back to the caller's flow.
//!
//! Owns the routing of call events, media events, registrations and feature codes to
//! the host each concerns, and `AppOutput`, what the server loop carries out (media
//! commands, store writes, hang-ups, offers to operators). Sans-IO: time, the wall
//! clock and a seeded generator are inputs; loading the flow and prompts from disk is
//! start-up's business. Must not decide call flow or distribution itself.

mod ivr_host;
mod queue_host;
mod switchboard;

pub use ivr_host::{IvrHost, IvrOutput};
pub use queue_host::{queue_core_config, state_name, QueueHost, QueueOutput};
pub use switchboard::{Effect, Switchboard};

use crate::call::{CallEvent, CallId, Direction, MediaEvent, WallClock};
use crate::config::QueueConfig as QueueSettings;
use crate::ivr::Flow;
use crate::media::core::EngineCommand;
use crate::media::prompt::PromptSet;
use crate::queue::core::QueueSnapshot;
use crate::store::StoreCommand;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

/// Prompt tokens of one host: the two hosts count in disjoint steps, so a finished
/// prompt is recognised by the host that started it.
pub struct Tokens {
    next: u64,
}

impl Tokens {
    fn starting_at(first: u64) -> Self {
        Tokens { next: first }
    }

    fn next(&mut self) -> u64 {
        let t = self.next;
        self.next += 2;
        t
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// `<recordings>/YYYY/MM/DD/<random>-<kind>.wav`: the name says nothing about the caller.
pub fn recording_path(dir: &Path, at: SystemTime, kind: &str, rng: &mut dyn RngCore) -> PathBuf {
    let dt = time::OffsetDateTime::from(at);
    let mut name = [0u8; 12];
    rng.fill_bytes(&mut name);
    dir.join(format!("{:04}", dt.year()))
        .join(format!("{:02}", u8::from(dt.month())))
        .join(format!("{:02}", dt.day()))
        .join(format!("{}-{kind}.wav", hex::encode(name)))
}

/// What the hosts are built from.
pub struct AppSetup {
    pub flow: Arc<Flow>,
    pub prompts: Arc<PromptSet>,
    pub recordings_dir: PathBuf,
    pub queue: QueueSettings,
    pub available_on_register: bool,
}

pub struct App {
    ivr: IvrHost,
    queue: QueueHost,
    out: VecDeque<AppOutput>,
}

impl App {
    pub fn new(setup: AppSetup, mut rng: StdRng, wall: WallClock) -> App {
        let mut fork = || StdRng::from_rng(&mut rng).expect("StdRng seeds from StdRng");
        App {
            ivr: IvrHost::new(
                setup.flow,
                setup.prompts.clone(),
                setup.recordings_dir.clone(),
                Tokens::starting_at(1),
                fork(),
                wall,
            ),
            queue: QueueHost::new(
                setup.queue,
                setup.available_on_register,
                setup.prompts,
                setup.recordings_dir,
                Tokens::starting_at(2),
                fork(),
                wall,
            ),
            out: VecDeque::new(),
        }
    }

    /// New calls get this flow and these prompts; calls in progress keep theirs.
    pub fn replace_flow(&mut self, flow: Arc<Flow>, prompts: Arc<PromptSet>) {
        self.ivr.replace_flow(flow, prompts.clone());
        self.queue.replace_prompts(prompts);
    }

    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.ivr.set_wall_clock(wall);
        self.queue.set_wall_clock(wall);
    }

    /// The reference codes already stored, so none is given out twice.
    pub fn use_reference_book(&mut self, book: crate::reference::ReferenceBook) {
        self.ivr.use_reference_book(book);
    }

    /// Operators' pseudonyms by SIP username.
    pub fn set_operator_names(&mut self, names: HashMap<String, String>) {
        self.queue.set_operator_names(names);
    }

    pub fn poll_output(&mut self) -> Option<AppOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.ivr.poll_timeout(), self.queue.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether calls in this direction get the IVR (our own outgoing calls do not).
    pub fn wants(direction: Direction) -> bool {
        direction == Direction::Inbound
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.queue.handle_timeout(now);
        self.ivr.handle_timeout(now);
        self.glue(now);
    }

    pub fn on_call_event(&mut self, ev: &CallEvent, now: Instant) {
        match ev {
            CallEvent::Started { .. } => {}
            CallEvent::Answered { call, .. } => {
                if self.queue.is_leg(*call) {
                    self.queue.leg_answered(*call, now);
                } else {
                    self.ivr.answered(*call, now);
                }
            }
            CallEvent::Ended { call, reason, .. } => {
                if self.queue.is_leg(*call) {
                    self.queue.leg_ended(*call, *reason, now);
                } else {
                    self.queue.caller_gone(*call, now);
                    self.ivr.ended(*call, now);
                }
            }
        }
        self.glue(now);
    }

    pub fn on_media_event(&mut self, ev: MediaEvent, now: Instant) {
        match ev {
            MediaEvent::Digit { call, digit } => {
                // The operator's keys are passed to the caller, not stored.
                if !self.queue.is_leg(call) {
                    self.queue.caller_digit(call, digit.digit, now);
                    self.ivr.digit(call, digit, now);
                }
            }
            MediaEvent::PlayFinished { call, token } => {
                if !self.queue.play_finished(call, token, now) {
                    self.ivr.play_finished(call, token, now);
                }
            }
            MediaEvent::RecordingStopped {
                call,
                reason,
                result,
            } => self.ivr.recording_stopped(call, reason, result, now),
            MediaEvent::ConversationRecorded { caller, result, .. } => {
                self.queue.conversation_recorded(caller, result, now)
            }
            MediaEvent::BridgeEnded { caller, operator } => {
                self.queue.bridge_ended(caller, operator)
            }
            MediaEvent::Allocated { .. }
            | MediaEvent::Failed { .. }
            | MediaEvent::RtpTimeout { .. } => {}
        }
        self.glue(now);
    }

    /// The store committed (or failed to commit) a caller's voice message.
    pub fn on_stored(&mut self, call: CallId, ok: bool, now: Instant) {
        self.ivr.stored(call, ok, now);
        self.glue(now);
    }

    // ---- operators (queue host) ---------------------------------------------------

    pub fn queue_snapshot(&self, now: Instant) -> QueueSnapshot {
        self.queue.snapshot(now)
    }

    pub fn operator_name(&self, user: &str) -> String {
        self.queue.operator_name(user)
    }

    pub fn operator_user(&self, name: &str) -> Option<String> {
        self.queue.operator_user(name)
    }

    pub fn operator_registered(&mut self, user: &str, online: bool, now: Instant) {
        self.queue.operator_registered(user, online, now);
        self.glue(now);
    }

    pub fn set_operator_state(
        &mut self,
        user: &str,
        available: bool,
        source: &'static str,
        now: Instant,
    ) -> Result<&'static str, String> {
        let r = self.queue.set_operator_state(user, available, source, now);
        self.glue(now);
        r
    }

    pub fn offer_placed(&mut self, caller: CallId, operator: &str, leg: CallId) {
        self.queue.offer_placed(caller, operator, leg);
    }

    pub fn offer_failed(&mut self, caller: CallId, operator: &str, now: Instant) {
        self.queue.offer_failed(caller, operator, now);
        self.glue(now);
    }

    /// Moves outputs between the hosts until both are quiet: the only place they meet.
    fn glue(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(o) = self.ivr.poll_output() {
                moved = true;
                match o {
                    IvrOutput::App(a) => self.out.push_back(a),
                    IvrOutput::CheckOperators { call } => {
                        let availability = self.queue.availability(now);
                        self.ivr.operators(call, availability, now)
                    }
                    IvrOutput::Enqueue {
                        call,
                        answers,
                        reference,
                    } => self.queue.join(call, answers, reference, now),
                }
            }
            while let Some(o) = self.queue.poll_output() {
                moved = true;
                match o {
                    QueueOutput::App(a) => self.out.push_back(a),
                    QueueOutput::Result { call, outcome } => {
                        self.ivr.queue_result(call, outcome, now)
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
