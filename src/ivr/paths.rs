//! Timed paths through a flow: how long a caller takes from the answer to the
//! operator queue, to the voice message's beep and to the hang-up.
//!
//! Four callers are modelled: one who presses 0 at once, one who answers every
//! question as soon as it has been asked (every option is followed), one who
//! presses nothing, and one who presses only keys that mean nothing where they are.
//! The queue exit assumes an operator is free, so "connecting" is played; the
//! voicemail and hang-up exits assume nobody is logged in. A caller who answers
//! leaves an instant message ended with the finish key; one who presses nothing is
//! silent until the recorder gives up. Waiting in the queue is not counted.
//!
//! Pure: it runs the real [`Engine`] on a simulated clock with the prompts'
//! played lengths, so the times follow whatever the engine does, retries, barge-in
//! and type-ahead included, without a second model of the flow to keep in step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::engine::{Action, Engine, Event, Operators, PlayId, RecordStop};
use super::error::{FlowError, Problem, SlowPath};
use super::flow::{Flow, Node};

/// Events one simulated call may take; a validated flow needs a few hundred.
const MAX_STEPS: usize = 20_000;
/// Simulated calls in all, across the answers followed.
const MAX_CALLS: usize = 512;
/// Questions one simulated call may answer before it is taken for a loop.
const MAX_ANSWERS: u32 = 32;
/// Simulated time after which a call is taken to be stuck.
const HORIZON: Duration = Duration::from_secs(4 * 3600);
/// Keys tried, in order, as a key that means nothing.
const WRONG_KEYS: &str = "9876543210#*";

/// The callers the check models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Caller {
    PressesZeroAtOnce,
    AnswersEveryQuestion,
    PressesNothing,
    PressesWrongKeys,
}

impl Caller {
    pub const ALL: [Caller; 4] = [
        Caller::PressesZeroAtOnce,
        Caller::AnswersEveryQuestion,
        Caller::PressesNothing,
        Caller::PressesWrongKeys,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Caller::PressesZeroAtOnce => "a caller who presses 0 at once",
            Caller::AnswersEveryQuestion => "a caller who answers every question",
            Caller::PressesNothing => "a caller who presses nothing",
            Caller::PressesWrongKeys => "a caller who presses only wrong keys",
        }
    }

    fn speaks(self) -> bool {
        matches!(
            self,
            Caller::PressesZeroAtOnce | Caller::AnswersEveryQuestion
        )
    }
}

/// Where a caller leaves the voice menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// Joins the operator queue (after "connecting").
    Queue,
    /// The beep before the voice message.
    Voicemail,
    /// The flow hangs up.
    Hangup,
}

impl Exit {
    pub const ALL: [Exit; 3] = [Exit::Queue, Exit::Voicemail, Exit::Hangup];

    pub fn describe(self) -> &'static str {
        match self {
            Exit::Queue => "operator queue",
            Exit::Voicemail => "voicemail beep",
            Exit::Hangup => "hang-up",
        }
    }
}

/// What the flow alone does not say.
#[derive(Debug, Clone)]
pub struct PathInputs {
    /// How long each prompt plays, by id (as the media engine plays it: whole
    /// 20 ms frames).
    pub prompt_lengths: BTreeMap<String, Duration>,
    /// How long the recorder waits for a silent caller to start speaking.
    pub no_speech: Duration,
    /// Digits of a reference code, as read out.
    pub reference_digits: usize,
}

/// The slowest way one caller reaches one exit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timing {
    pub caller: Caller,
    pub exit: Exit,
    /// From the answer.
    pub seconds: f64,
    /// Nodes entered, in order.
    pub path: Vec<String>,
    /// The node the caller spent most of that time in, and how long.
    pub costly_node: String,
    pub costly_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PathReport {
    /// One per caller and exit reached.
    pub timings: Vec<Timing>,
    /// The slowest caller per exit.
    pub worst: Vec<Timing>,
    /// Anything that made the figures incomplete, in words.
    pub notes: Vec<String>,
}

impl PathReport {
    pub fn get(&self, caller: Caller, exit: Exit) -> Option<&Timing> {
        self.timings
            .iter()
            .find(|t| t.caller == caller && t.exit == exit)
    }

    pub fn worst(&self, exit: Exit) -> Option<&Timing> {
        self.worst.iter().find(|t| t.exit == exit)
    }
}

/// Times every modelled caller through `flow`, which should be validated. Any
/// `origin` will do as the moment of the answer: only differences are reported.
pub fn timed_paths(flow: &Arc<Flow>, inputs: &PathInputs, origin: Instant) -> PathReport {
    let mut report = PathReport::default();
    let mut budget = MAX_CALLS;
    for caller in Caller::ALL {
        for operators in [Operators::Free, Operators::NobodyLoggedIn] {
            let sim = Sim::new(flow, inputs, caller, operators, origin);
            for timing in run(sim, &mut budget, &mut report.notes) {
                let (caller, exit) = (timing.caller, timing.exit);
                keep_slowest(&mut report.timings, timing, |t| {
                    t.caller == caller && t.exit == exit
                });
            }
        }
    }
    report.timings.sort_by_key(|t| (t.exit, t.caller));
    for timing in &report.timings {
        let exit = timing.exit;
        keep_slowest(&mut report.worst, timing.clone(), |t| t.exit == exit);
    }
    report.notes.sort();
    report.notes.dedup();
    report
}

/// `[flow] max_seconds_to_queue` and `max_seconds_to_voicemail`, each against the
/// slowest caller; the error names the node that costs that caller most.
pub fn check_limits(flow: &Flow, report: &PathReport) -> Vec<FlowError> {
    let s = &flow.settings;
    [
        (Exit::Queue, "max_seconds_to_queue", s.max_seconds_to_queue),
        (
            Exit::Voicemail,
            "max_seconds_to_voicemail",
            s.max_seconds_to_voicemail,
        ),
    ]
    .into_iter()
    .filter_map(|(exit, field, limit)| {
        let worst = report.worst(exit)?;
        (worst.seconds > limit.0).then(|| {
            FlowError::new(
                &flow.file,
                Some(&worst.costly_node),
                Problem::TooSlow(Box::new(SlowPath {
                    field,
                    limit_ms: (limit.0 * 1000.0).round() as u64,
                    caller: worst.caller.describe(),
                    exit: exit.describe(),
                    ms: (worst.seconds * 1000.0).round() as u64,
                    node_ms: (worst.costly_seconds * 1000.0).round() as u64,
                })),
            )
        })
    })
    .collect()
}

/// Keeps in `list` the slowest timing among those `same` says are alike.
fn keep_slowest(list: &mut Vec<Timing>, timing: Timing, same: impl Fn(&Timing) -> bool) {
    match list.iter_mut().find(|t| same(t)) {
        Some(t) if t.seconds >= timing.seconds => {}
        Some(t) => *t = timing,
        None => list.push(timing),
    }
}

/// Runs `sim`, following each answer of each question, and returns every exit
/// each simulated call reached.
fn run(sim: Sim, budget: &mut usize, notes: &mut Vec<String>) -> Vec<Timing> {
    let mut reached = Vec::new();
    let mut stack = vec![sim];
    while let Some(mut sim) = stack.pop() {
        if *budget == 0 {
            notes.push("too many ways through the flow: some answers were not followed".into());
            break;
        }
        *budget -= 1;
        loop {
            match sim.step() {
                Step::Continue => {}
                Step::Answers(mut answers) => {
                    let first = answers.remove(0);
                    for other in answers {
                        let mut branch = sim.clone();
                        branch.press(&other);
                        stack.push(branch);
                    }
                    sim.press(&first);
                }
                Step::Done(note) => {
                    notes.extend(note);
                    reached.append(&mut sim.reached);
                    break;
                }
            }
        }
    }
    reached
}

enum Step {
    Continue,
    /// The caller answers the listening question: one key sequence per option.
    Answers(Vec<String>),
    Done(Option<String>),
}

#[derive(Clone)]
struct Sim {
    engine: Engine,
    flow: Arc<Flow>,
    lengths: Arc<BTreeMap<String, Duration>>,
    no_speech: Duration,
    caller: Caller,
    operators: Operators,
    origin: Instant,
    now: Instant,
    playing: Option<(PlayId, Instant)>,
    /// Host reports due, in time order.
    pending: Vec<(Instant, Event)>,
    node: Option<(String, Instant)>,
    path: Vec<String>,
    spent: BTreeMap<String, Duration>,
    /// The question instance the caller last acted on.
    acted: Option<(u64, u32)>,
    answers: u32,
    steps: usize,
    reached: Vec<Timing>,
    done: bool,
}

impl Sim {
    fn new(
        flow: &Arc<Flow>,
        inputs: &PathInputs,
        caller: Caller,
        operators: Operators,
        origin: Instant,
    ) -> Sim {
        let code = "0".repeat(inputs.reference_digits.max(1));
        let mut sim = Sim {
            engine: Engine::new(Arc::clone(flow)).with_reference_code(code),
            flow: Arc::clone(flow),
            lengths: Arc::new(inputs.prompt_lengths.clone()),
            no_speech: inputs.no_speech,
            caller,
            operators,
            origin,
            now: origin,
            playing: None,
            pending: Vec::new(),
            node: None,
            path: Vec::new(),
            spent: BTreeMap::new(),
            acted: None,
            answers: 0,
            steps: 0,
            reached: Vec::new(),
            done: false,
        };
        sim.engine.handle(Event::Answered, origin);
        if caller == Caller::PressesZeroAtOnce {
            sim.engine.handle(Event::Digit('0'), origin);
        }
        sim
    }

    fn press(&mut self, keys: &str) {
        for key in keys.chars() {
            self.engine.handle(Event::Digit(key), self.now);
            self.take_actions();
        }
    }

    fn step(&mut self) -> Step {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Step::Done(Some(format!(
                "{} goes round the flow without end",
                self.caller.describe()
            )));
        }
        self.take_actions();
        if self.done || self.engine.is_ended() {
            return Step::Done(None);
        }
        if let Some(step) = self.act() {
            return step;
        }
        let next = [
            self.pending.first().map(|(t, _)| *t),
            self.playing.map(|(_, t)| t),
            self.engine.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(at) = next else {
            return Step::Done(Some(format!(
                "{} is left waiting for nothing in node \"{}\"",
                self.caller.describe(),
                self.node.as_ref().map_or("", |(n, _)| n.as_str())
            )));
        };
        if at.saturating_duration_since(self.origin) > HORIZON {
            return Step::Done(Some(format!(
                "{} is still in the flow after {} hours",
                self.caller.describe(),
                HORIZON.as_secs() / 3600
            )));
        }
        self.now = self.now.max(at);
        if self.pending.first().is_some_and(|(t, _)| *t <= self.now) {
            let (_, event) = self.pending.remove(0);
            self.engine.handle(event, self.now);
        } else if let Some((id, _)) = self.playing.filter(|(_, t)| *t <= self.now) {
            self.playing = None;
            self.engine.handle(Event::PromptFinished { id }, self.now);
        } else {
            self.engine.handle_timeout(self.now);
        }
        Step::Continue
    }

    /// The caller's move when a question has just started listening.
    fn act(&mut self) -> Option<Step> {
        let (node, instance) = self.engine.listening()?;
        if self.acted == Some(instance) {
            return None;
        }
        self.acted = Some(instance);
        let node = node.to_owned();
        let flow = Arc::clone(&self.flow);
        let question = flow.node(&node)?;
        match self.caller {
            Caller::PressesNothing => None,
            Caller::PressesWrongKeys => {
                let key = WRONG_KEYS
                    .chars()
                    .find(|&k| !means_something(&flow, question, k))?;
                self.press(&key.to_string());
                Some(Step::Continue)
            }
            Caller::PressesZeroAtOnce | Caller::AnswersEveryQuestion => {
                self.answers += 1;
                if self.answers > MAX_ANSWERS {
                    return Some(Step::Done(Some(format!(
                        "{} is asked more than {MAX_ANSWERS} questions: answers lead round in a loop",
                        self.caller.describe()
                    ))));
                }
                let answers = answers(question);
                (!answers.is_empty()).then_some(Step::Answers(answers))
            }
        }
    }

    fn take_actions(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::NodeEntered { node } => {
                    self.leave_node();
                    self.path.push(node.clone());
                    self.node = Some((node, self.now));
                }
                Action::Play { id, prompts, .. } => {
                    let length: Duration = prompts
                        .iter()
                        .map(|p| self.lengths.get(p).copied().unwrap_or_default())
                        .sum();
                    self.playing = Some((id, self.now + length));
                }
                Action::StopPlayback => self.playing = None,
                Action::StartRecording { .. } => {
                    self.reach(Exit::Voicemail);
                    if self.caller.speaks() {
                        self.report(
                            self.now,
                            Event::RecordingFinished {
                                reason: RecordStop::FinishKey,
                                duration_ms: 0,
                            },
                        );
                        self.report(self.now, Event::RecordingStored { ok: true });
                    } else {
                        self.report(
                            self.now + self.no_speech,
                            Event::RecordingFinished {
                                reason: RecordStop::NoSpeech,
                                duration_ms: 0,
                            },
                        );
                    }
                }
                Action::CheckOperators { .. } => {
                    self.report(self.now, Event::Operators(self.operators));
                }
                Action::Enqueue { .. } => {
                    self.reach(Exit::Queue);
                    // What follows is the queue's business, not the flow's.
                    self.done = true;
                }
                Action::Hangup { .. } => {
                    self.reach(Exit::Hangup);
                    self.done = true;
                }
                Action::StopRecording { .. } | Action::StoreAnswer { .. } | Action::Log { .. } => {}
            }
        }
    }

    fn report(&mut self, at: Instant, event: Event) {
        let index = self.pending.partition_point(|(t, _)| *t <= at);
        self.pending.insert(index, (at, event));
    }

    fn leave_node(&mut self) {
        if let Some((node, since)) = self.node.take() {
            *self.spent.entry(node).or_default() += self.now.saturating_duration_since(since);
        }
    }

    fn reach(&mut self, exit: Exit) {
        if self.reached.iter().any(|t| t.exit == exit) {
            return;
        }
        let mut spent = self.spent.clone();
        if let Some((node, since)) = &self.node {
            *spent.entry(node.clone()).or_default() += self.now.saturating_duration_since(*since);
        }
        let (costly_node, costly) = spent
            .into_iter()
            .max_by_key(|(_, d)| *d)
            .unwrap_or_default();
        self.reached.push(Timing {
            caller: self.caller,
            exit,
            seconds: self
                .now
                .saturating_duration_since(self.origin)
                .as_secs_f64(),
            path: self.path.clone(),
            costly_node,
            costly_seconds: costly.as_secs_f64(),
        });
    }
}

/// Whether `key` does anything in the question `node`.
fn means_something(flow: &Flow, node: &Node, key: char) -> bool {
    let global = flow.keeps_global_keys(node)
        && (flow.settings.repeat_key == Some(key) || flow.global_target(key).is_some());
    global
        || match node {
            Node::Menu(m) => m.options.contains_key(&key.to_string()),
            Node::Collect(c) => {
                c.pattern.accepts(key) || c.terminator == Some(key) || c.skip_key == Some(key)
            }
            _ => false,
        }
}

/// Each way to answer a question at once: every option of a menu; for a collect,
/// the quickest acceptable entry.
fn answers(node: &Node) -> Vec<String> {
    match node {
        Node::Menu(m) => m.options.keys().cloned().collect(),
        Node::Collect(c) => {
            if let Some(skip) = c.skip_key {
                return vec![skip.to_string()];
            }
            if let (Some(end), 0) = (c.terminator, c.min_digits) {
                return vec![end.to_string()];
            }
            let digit = ['1', '0', '*', '#']
                .into_iter()
                .find(|&k| c.pattern.accepts(k) && Some(k) != c.terminator)
                .unwrap_or('1');
            let count = c.min_digits.max(1).min(c.max_digits) as usize;
            let mut keys: String = std::iter::repeat_n(digit, count).collect();
            if let Some(end) = c.terminator.filter(|_| count < c.max_digits as usize) {
                keys.push(end);
            }
            vec![keys]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
