//! Facts for the counters, read off the switchboard's effects as the shell carries
//! them out: a caller's call ended with an outcome, a wait in the queue ended, a
//! recording was stored. Sans-IO: effects in, facts out.
//!
//! A caller's outcome follows the store's rule (`store::console::Outcome`): answered
//! by an operator, else a voice message was recorded, else abandoned in the queue,
//! else the voice menu only. The message's row may be written after the hang-up, so
//! its start (the IVR's `StartRecording`) is what marks a call as a voice message.

use crate::app::Effect;
use crate::call::{CallEvent, CallId, Direction};
use crate::media::core::EngineCommand;
use crate::store::console::Outcome;
use crate::store::StoreCommand;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// A caller's call ended.
    CallOutcome(Outcome),
    /// Any call ended, with the stored end reason.
    CallEnded(String),
    /// A wait in the queue ended: "answered", "abandoned" or "voicemail" (None:
    /// straight to voicemail with nobody logged in, no wait).
    QueueResult {
        outcome: &'static str,
        waited: Option<Duration>,
    },
    Recording {
        kind: &'static str,
        bytes: u64,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct Caller {
    answered: bool,
    voicemail: bool,
    abandoned: bool,
}

/// Callers whose outcome is not known yet. At most one entry per call in progress.
#[derive(Debug, Default)]
pub struct Tally {
    callers: HashMap<CallId, Caller>,
}

impl Tally {
    pub fn callers_tracked(&self) -> usize {
        self.callers.len()
    }

    /// The facts `effect` carries.
    pub fn effect(&mut self, effect: &Effect, out: &mut Vec<Fact>) {
        match effect {
            Effect::Media(EngineCommand::StartRecording { call, .. }) => {
                if let Some(c) = self.callers.get_mut(call) {
                    c.voicemail = true;
                }
            }
            Effect::Store(cmd) => self.store(cmd, out),
            _ => {}
        }
    }

    fn store(&mut self, cmd: &StoreCommand, out: &mut Vec<Fact>) {
        match cmd {
            StoreCommand::Event(CallEvent::Started {
                call,
                direction: Direction::Inbound,
                ..
            }) => {
                self.callers.insert(*call, Caller::default());
            }
            StoreCommand::Event(CallEvent::Ended { call, reason, .. }) => {
                out.push(Fact::CallEnded(reason.as_str()));
                if let Some(c) = self.callers.remove(call) {
                    out.push(Fact::CallOutcome(if c.answered {
                        Outcome::Operator
                    } else if c.voicemail {
                        Outcome::Voicemail
                    } else if c.abandoned {
                        Outcome::Abandoned
                    } else {
                        Outcome::Ivr
                    }));
                }
            }
            StoreCommand::Queue {
                call,
                kind,
                waited_ms,
                ..
            } => {
                let outcome = match *kind {
                    "answered" => "answered",
                    "abandoned" => "abandoned",
                    "overflowed" => "voicemail",
                    _ => return,
                };
                if let Some(c) = self.callers.get_mut(call) {
                    match outcome {
                        "answered" => c.answered = true,
                        "abandoned" => c.abandoned = true,
                        _ => {}
                    }
                }
                out.push(Fact::QueueResult {
                    outcome,
                    waited: waited_ms.map(Duration::from_millis),
                });
            }
            StoreCommand::Recording { kind, info, .. } => out.push(Fact::Recording {
                kind,
                bytes: info.size_bytes,
            }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{EndReason, RecordingInfo};
    use std::time::SystemTime;

    fn started(call: CallId, direction: Direction) -> Effect {
        Effect::Store(StoreCommand::Event(CallEvent::Started {
            call,
            sip_call_id: format!("c{call}"),
            from: None,
            to: "sip:hotline@x".into(),
            remote: "127.0.0.1:5070".parse().unwrap(),
            transport: "UDP",
            direction,
            at: SystemTime::UNIX_EPOCH,
        }))
    }

    fn ended(call: CallId) -> Effect {
        Effect::Store(StoreCommand::Event(CallEvent::Ended {
            call,
            reason: EndReason::CallerBye,
            at: SystemTime::UNIX_EPOCH,
        }))
    }

    fn queue(call: CallId, kind: &'static str, waited_ms: Option<u64>) -> Effect {
        Effect::Store(StoreCommand::Queue {
            call,
            kind,
            operator: None,
            position: None,
            reason: None,
            waited_ms,
            at: SystemTime::UNIX_EPOCH,
        })
    }

    fn recording_started(call: CallId) -> Effect {
        Effect::Media(EngineCommand::StartRecording {
            call,
            path: "x.wav".into(),
            spec: crate::media::session::RecordSpec {
                stop: Default::default(),
            },
        })
    }

    #[test]
    fn outcomes_of_callers() {
        let mut t = Tally::default();
        let mut facts = Vec::new();
        for call in 1..=6 {
            t.effect(&started(call, Direction::Inbound), &mut facts);
        }
        t.effect(&started(9, Direction::Outbound), &mut facts);
        // 1 answered after waiting; 2 left a message from the queue; 3 abandoned;
        // 4 stayed in the menu; 5 left a message, then was answered? no: answered
        // wins; 6 a message with nobody logged in (no wait).
        t.effect(&queue(1, "joined", None), &mut facts);
        t.effect(&queue(1, "answered", Some(4000)), &mut facts);
        t.effect(&queue(2, "overflowed", Some(600_000)), &mut facts);
        t.effect(&recording_started(2), &mut facts);
        t.effect(&queue(3, "abandoned", Some(7000)), &mut facts);
        t.effect(&recording_started(5), &mut facts);
        t.effect(&queue(5, "answered", Some(1000)), &mut facts);
        t.effect(&queue(6, "overflowed", None), &mut facts);
        t.effect(&recording_started(6), &mut facts);
        assert_eq!(
            facts,
            [
                Fact::QueueResult {
                    outcome: "answered",
                    waited: Some(Duration::from_secs(4))
                },
                Fact::QueueResult {
                    outcome: "voicemail",
                    waited: Some(Duration::from_secs(600))
                },
                Fact::QueueResult {
                    outcome: "abandoned",
                    waited: Some(Duration::from_secs(7))
                },
                Fact::QueueResult {
                    outcome: "answered",
                    waited: Some(Duration::from_secs(1))
                },
                Fact::QueueResult {
                    outcome: "voicemail",
                    waited: None
                },
            ]
        );
        facts.clear();
        for call in [1, 2, 3, 4, 5, 6, 9] {
            t.effect(&ended(call), &mut facts);
        }
        let outcomes: Vec<Outcome> = facts
            .iter()
            .filter_map(|f| match f {
                Fact::CallOutcome(o) => Some(*o),
                _ => None,
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Operator,
                Outcome::Voicemail,
                Outcome::Abandoned,
                Outcome::Ivr,
                Outcome::Operator,
                Outcome::Voicemail
            ]
        );
        let ends = facts
            .iter()
            .filter(|f| matches!(f, Fact::CallEnded(r) if r == "caller-bye"))
            .count();
        assert_eq!(ends, 7, "operator legs end too");
        assert_eq!(t.callers_tracked(), 0);
        // A recording row after the hang-up is still counted.
        facts.clear();
        t.effect(
            &Effect::Store(StoreCommand::Recording {
                call: 2,
                kind: "voicemail",
                info: RecordingInfo {
                    path: "x.wav".into(),
                    channels: crate::call::Channels::Mono,
                    samples: 8000,
                    duration_ms: 1000,
                    size_bytes: 16_044,
                    sha256_hex: String::new(),
                },
                partial: false,
                at: SystemTime::UNIX_EPOCH,
            }),
            &mut facts,
        );
        assert_eq!(
            facts,
            [Fact::Recording {
                kind: "voicemail",
                bytes: 16_044
            }]
        );
    }
}
