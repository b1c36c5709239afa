//! The hosts together, driven by hand: whisper and bridge, hang-ups on either side, a
//! declined offer and the voicemail key.

use super::*;
use crate::call::{Codec, DigitEvent, DigitSource, EndReason};
use crate::config::Config;
use crate::queue::core::OperatorState;

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
        let (flow, prompts) = crate::serve::load::call_flow(&cfg).expect("shipped flow");
        let now = Instant::now();
        let app = App::new(
            AppSetup {
                flow,
                prompts,
                recordings_dir: std::env::temp_dir().join("hotline-app-tests"),
                queue: settings,
                available_on_register: true,
            },
            StdRng::seed_from_u64(1),
            WallClock::anchor(now, SystemTime::UNIX_EPOCH),
        );
        Host {
            app,
            now,
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
            at: SystemTime::UNIX_EPOCH,
        };
        self.app.on_call_event(&ev, self.now);
    }

    fn ended(&mut self, call: CallId, reason: EndReason) {
        let ev = CallEvent::Ended {
            call,
            reason,
            at: SystemTime::UNIX_EPOCH,
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
    h.ended(100, EndReason::CallerBye);
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

#[test]
fn caller_hanging_up_while_the_operator_rings_cancels_the_offer() {
    let mut h = Host::new(QueueSettings::default());
    h.app.operator_registered("anna", true, h.now);
    h.caller_queues(1);
    h.take();
    h.app.offer_placed(1, "anna", 100);
    h.now += Duration::from_secs(3);
    h.ended(1, EndReason::CallerBye);
    let out = h.take();
    assert!(out.iter().any(|o| matches!(o, AppOutput::Hangup(100))));
    assert!(queue_kinds(&out).contains(&"abandoned"));
    // The cancelled leg ending later does not count as the operator's miss.
    h.ended(100, EndReason::Rejected(487));
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
    h.ended(100, EndReason::Rejected(486));
    let out = h.take();
    assert!(queue_kinds(&out).contains(&"offer_missed"));
    // The voicemail key leaves the queue for the recording.
    h.digit(1, '1');
    let out = h.take();
    let stored: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            AppOutput::Store(StoreCommand::Queue { kind, reason, .. }) => Some((*kind, *reason)),
            _ => None,
        })
        .collect();
    assert!(
        stored.contains(&("overflowed", Some("caller_choice"))),
        "{stored:?}"
    );
    assert!(h.app.queue_snapshot(h.now).callers.is_empty());
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
