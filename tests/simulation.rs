//! Whole calls in simulated time (see `tests/sim`): the real endpoint, hosts, IVR,
//! queue and media sessions on both sides of a virtual network, with loss and
//! reordering where a test asks for it. Each test covers minutes of calls and runs in
//! well under a second of wall time per virtual minute.

mod sim;

use hotline::call::{CallEvent, Channels};
use hotline::media::core::EngineCommand;
use hotline::store::StoreCommand;
use sim::{channels, rms, tone, NetConfig, Sim};
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The call the hotline numbered for the first INVITE it saw.
fn hotline_call(sim: &Sim) -> u64 {
    *sim.hotline
        .calls_started()
        .first()
        .expect("a call at the hotline")
}

#[test]
fn a_whole_call_answers_the_questions_leaves_a_message_and_hears_its_reference() {
    let mut sim = Sim::new(NetConfig::default());
    let phone = sim.add_phone();
    let call = sim.call(phone);
    assert!(sim.run_until(secs(5), |s| s.phones[phone].answered_at(call).is_some()));
    let at = hotline_call(&sim);
    // Mobilised, in the zone, no unit number: typed ahead during the greeting.
    sim.run_for(Duration::from_millis(800));
    sim.press(phone, call, "12#");
    // Nobody is logged in: straight to the voice message; wait for the recording.
    assert!(sim.run_until(secs(40), |s| s.hotline.media_log.iter().any(
        |(_, c)| matches!(c, EngineCommand::StartRecording { call: c, .. } if *c == at)
    )));
    sim.run_for(secs(1));
    sim.say(phone, call, tone(440.0, 4.0));
    sim.run_for(Duration::from_millis(4500));
    sim.press(phone, call, "#");
    // Saved, the reference code read out (twice), goodbye, and the hotline hangs up.
    let ended = sim.run_until(secs(90), |s| s.phones[phone].ended(call).is_some());
    if !ended {
        let nodes: Vec<String> = sim
            .hotline
            .store
            .iter()
            .filter_map(|c| match c {
                StoreCommand::Node { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect();
        panic!(
            "not ended; nodes {nodes:?}; played {:?}",
            sim.hotline.played(at)
        );
    }
    assert_eq!(sim.phones[phone].ended(call).as_deref(), Some("caller-bye"));
    sim.run_for(secs(1));
    assert_eq!(
        sim.hotline.end_reason(at).as_deref(),
        Some("our-bye"),
        "{:?}",
        sim.hotline.played(at)
    );

    let store = &sim.hotline.store;
    let answers: Vec<(String, String)> = store
        .iter()
        .filter_map(|c| match c {
            StoreCommand::Answer { key, digits, .. } => Some((key.clone(), digits.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("status".to_string(), "1".to_string()),
            ("zone".into(), "2".into()),
            ("unit".into(), "".into())
        ]
    );
    let code = store
        .iter()
        .find_map(|c| match c {
            StoreCommand::Reference { code, .. } => Some(code.clone()),
            _ => None,
        })
        .expect("a reference code");
    assert!(hotline::reference::is_valid(&code), "{code}");
    let (path, duration_ms) = store
        .iter()
        .find_map(|c| match c {
            StoreCommand::Recording {
                kind: "voicemail",
                info,
                ..
            } => Some((info.path.clone(), info.duration_ms)),
            _ => None,
        })
        .expect("a voice message");
    // About the 4 s spoken, plus the second before and the key press after.
    assert!((4000..7000).contains(&duration_ms), "{duration_ms} ms");
    let (channels, audio) = sim.hotline.recording(&path).expect("recorded");
    assert_eq!(*channels, Channels::Mono);
    assert!(rms(audio) > 1000.0, "the caller's voice is in the message");

    let played = sim.hotline.played(at);
    assert!(played.contains(&"message_saved".to_string()), "{played:?}");
    assert!(
        !played.contains(&"connecting".to_string()),
        "nobody was free"
    );
    // Each reading of the code is "reference_intro"/"reference_repeat" then its digits.
    let spoken: String = played
        .iter()
        .filter_map(|p| p.strip_prefix("digit_"))
        .collect();
    assert_eq!(spoken, code.repeat(2), "{played:?}");
}

/// A caller pressing 0 is offered to the registered operator, whose phone answers;
/// they hear each other, the conversation is recorded in stereo, and whoever hangs
/// up first ends both legs.
#[test]
fn a_queued_caller_is_bridged_to_an_operator_and_either_side_can_hang_up() {
    for caller_hangs_up in [true, false] {
        let mut sim = Sim::new(NetConfig::default());
        sim.hotline.add_operator("anna", "Anna");
        let op = sim.add_operator_phone("anna", Duration::from_millis(1500));
        assert!(sim.run_until(secs(2), |s| s.phones[op].is_registered()));
        let phone = sim.add_phone();
        let call = sim.call(phone);
        assert!(sim.run_until(secs(5), |s| s.phones[phone].answered_at(call).is_some()));
        let at = hotline_call(&sim);
        sim.run_for(Duration::from_millis(500));
        sim.press(phone, call, "0");
        // The operator's phone rings, shows the reference, answers.
        assert!(sim.run_until(secs(20), |s| !s.phones[op].incoming().is_empty()));
        let leg = sim.phones[op].incoming()[0];
        assert!(sim.run_until(secs(5), |s| s.phones[op].answered_at(leg).is_some()));
        let invite = sim
            .sip_sent("INVITE sip:anna@")
            .pop()
            .expect("offer")
            .text();
        assert!(invite.contains("X-Hotline-Answers:"), "{invite}");
        assert!(
            invite.contains("ref "),
            "the display shows the reference: {invite}"
        );
        sim.run_for(Duration::from_millis(500));
        // Both talk: the caller at 440 Hz, the operator at 1 kHz.
        sim.listen(op, leg, "/op/heard.wav");
        sim.listen(phone, call, "/caller/heard.wav");
        sim.say(phone, call, tone(440.0, 3.0));
        sim.say(op, leg, tone(1000.0, 3.0));
        sim.run_for(secs(3));
        sim.stop_listening(op, leg);
        sim.stop_listening(phone, call);
        sim.run_for(Duration::from_millis(100));
        let heard_by_op = &sim.phones[op]
            .recording(&"/op/heard.wav".into())
            .expect("op")
            .1;
        let heard_by_caller = &sim.phones[phone]
            .recording(&"/caller/heard.wav".into())
            .expect("caller")
            .1;
        assert!(rms(heard_by_op) > 1000.0, "the operator hears the caller");
        assert!(
            rms(heard_by_caller) > 1000.0,
            "the caller hears the operator"
        );

        if caller_hangs_up {
            sim.hang_up(phone, call);
        } else {
            let now = sim.now;
            sim.phones[op]
                .ep
                .hangup(now, leg, hotline::call::EndReason::OurBye);
        }
        assert!(
            sim.run_until(secs(10), |s| s.phones[phone].ended(call).is_some()
                && s.phones[op].ended(leg).is_some()
                && s.hotline.sb.ep.call_count() == 0)
        );
        let (caller_end, op_end) = if caller_hangs_up {
            ("our-bye", "caller-bye")
        } else {
            ("caller-bye", "our-bye")
        };
        assert_eq!(sim.phones[phone].ended(call).as_deref(), Some(caller_end));
        assert_eq!(sim.phones[op].ended(leg).as_deref(), Some(op_end));
        assert!(sim.hotline.queue_kinds(at).contains(&"answered"));
        let talk = sim.hotline.store.iter().find_map(|c| match c {
            StoreCommand::Talk { call, talk_ms } if *call == at => Some(*talk_ms),
            _ => None,
        });
        assert!(talk.is_some_and(|t| (3000..6000).contains(&t)), "{talk:?}");
        // The stereo recording: the caller left, the operator right.
        let path = sim
            .hotline
            .store
            .iter()
            .find_map(|c| match c {
                StoreCommand::Recording {
                    kind: "conversation",
                    info,
                    ..
                } => Some(info.path.clone()),
                _ => None,
            })
            .expect("a conversation recording");
        let (ch, audio) = sim.hotline.recording(&path).expect("recorded");
        assert_eq!(*ch, Channels::Stereo);
        let (left, right) = channels(audio);
        assert!(
            rms(&left) > 500.0 && rms(&right) > 500.0,
            "both sides are in it"
        );
    }
}

/// The caller hangs up just as the operator's phone answers: our CANCEL and its 200
/// cross on the wire. The answer is acknowledged and hung up at once, nobody is
/// bridged, and nothing is left behind.
#[test]
fn a_cancel_crossing_the_operators_200_ends_both_cleanly() {
    let net = NetConfig {
        latency: Duration::from_millis(100),
        ..NetConfig::default()
    };
    let mut sim = Sim::new(net);
    sim.hotline.add_operator("anna", "Anna");
    let op = sim.add_operator_phone("anna", Duration::from_secs(2));
    assert!(sim.run_until(secs(2), |s| s.phones[op].is_registered()));
    let phone = sim.add_phone();
    let call = sim.call(phone);
    assert!(sim.run_until(secs(5), |s| s.phones[phone].answered_at(call).is_some()));
    sim.run_for(Duration::from_millis(500));
    sim.press(phone, call, "0");
    assert!(sim.run_until(secs(20), |s| !s.sip_sent("INVITE sip:anna@").is_empty()));
    // The offer left now; it reaches the phone 100 ms later, which answers 2 s after
    // that. The caller's BYE leaves 2.05 s from now and reaches us at 2.15 s: our
    // CANCEL leaves while the 200 (sent at 2.1 s) is still on the wire.
    sim.run_for(Duration::from_millis(2050));
    sim.hang_up(phone, call);
    assert!(
        sim.run_until(secs(40), |s| s.hotline.sb.ep.call_count() == 0
            && s.phones[op].ended(s.phones[op].incoming()[0]).is_some())
    );
    let leg = sim.phones[op].incoming()[0];
    let cancel = sim.sip_sent("CANCEL sip:anna@");
    let ok = sim.sip_sent("SIP/2.0 200 OK");
    let cancel_at = sim
        .net
        .sip_log
        .iter()
        .find(|(_, p)| p.data.starts_with(b"CANCEL "))
        .map(|(t, _)| *t)
        .expect("a CANCEL");
    let answer_at = sim
        .net
        .sip_log
        .iter()
        .find(|(_, p)| {
            p.from.ip() == sim.phones[op].ip
                && p.text().contains("CSeq: 1 INVITE")
                && p.data.starts_with(b"SIP/2.0 200")
        })
        .map(|(t, _)| *t)
        .expect("the phone's 200");
    assert!(
        answer_at < cancel_at && cancel_at < answer_at + Duration::from_millis(100),
        "the 200 is in flight when the CANCEL leaves"
    );
    assert_eq!(cancel.len(), 1);
    assert!(!ok.is_empty());
    // The phone's answer was acknowledged, then the leg was hung up with BYE.
    let op_ip = sim.phones[op].ip;
    let to_phone = |start: &str| {
        sim.net
            .sip_log
            .iter()
            .filter(|(_, p)| p.to.ip() == op_ip && p.data.starts_with(start.as_bytes()))
            .count()
    };
    assert_eq!(to_phone("ACK "), 1);
    assert_eq!(to_phone("BYE "), 1);
    assert_eq!(sim.phones[op].ended(leg).as_deref(), Some("caller-bye"));
    assert!(!sim
        .hotline
        .media_log
        .iter()
        .any(|(_, c)| matches!(c, EngineCommand::Bridge { .. })));
    let at = hotline_call(&sim);
    assert!(sim.hotline.queue_kinds(at).contains(&"abandoned"));
    let snapshot = sim.hotline.sb.app.queue_snapshot(sim.now);
    assert!(snapshot.callers.is_empty());
}

/// With 30 % of SIP messages lost each way and packets reordered, INVITEs, 200s,
/// ACKs and BYEs are retransmitted until every call is set up and torn down on both
/// sides.
#[test]
fn invite_and_bye_survive_thirty_percent_loss() {
    let net = NetConfig {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(60),
        sip_loss: 0.3,
        rtp_loss: 0.05,
    };
    let mut sim = Sim::new(net);
    let phones: Vec<usize> = (0..20).map(|_| sim.add_phone()).collect();
    let calls: Vec<u64> = phones.iter().map(|&p| sim.call(p)).collect();
    assert!(sim.run_until(secs(60), |s| phones
        .iter()
        .zip(&calls)
        .all(|(&p, &c)| s.phones[p].answered_at(c).is_some())));
    sim.run_for(secs(3));
    for (&p, &c) in phones.iter().zip(&calls) {
        sim.hang_up(p, c);
    }
    assert!(sim.run_until(secs(120), |s| phones
        .iter()
        .zip(&calls)
        .all(|(&p, &c)| s.phones[p].ended(c).is_some())
        && s.hotline.sb.ep.call_count() == 0));
    for (&p, &c) in phones.iter().zip(&calls) {
        assert_eq!(sim.phones[p].ended(c).as_deref(), Some("our-bye"));
    }
    let ended = sim
        .hotline
        .store
        .iter()
        .filter(|c| matches!(c, StoreCommand::Event(CallEvent::Ended { reason, .. }) if reason.as_str() == "caller-bye"))
        .count();
    assert_eq!(
        ended, 20,
        "every call ended by the caller's BYE at the hotline"
    );
    assert!(sim.net.lost > 0);
    assert!(
        sim.sip_sent("INVITE ").len() > 20,
        "INVITEs were retransmitted"
    );
    assert!(sim.sip_sent("BYE ").len() > 20, "BYEs were retransmitted");
}

/// A thousand callers dial within one virtual second: every call is answered, and
/// torn down when the callers hang up two seconds later.
#[test]
fn a_thousand_calls_in_one_virtual_second() {
    let mut sim = Sim::new(NetConfig::default());
    let phones: Vec<usize> = (0..20).map(|_| sim.add_phone()).collect();
    let mut calls = Vec::new();
    for i in 0..1000 {
        let p = phones[i % phones.len()];
        calls.push((p, sim.call(p)));
        sim.run_for(Duration::from_millis(1));
    }
    let all = sim.run_until(secs(3), |s| {
        calls
            .iter()
            .all(|&(p, c)| s.phones[p].answered_at(c).is_some())
    });
    if !all {
        let answered = calls
            .iter()
            .filter(|&&(p, c)| sim.phones[p].answered_at(c).is_some())
            .count();
        let ended: Vec<String> = calls
            .iter()
            .filter_map(|&(p, c)| sim.phones[p].ended(c))
            .take(5)
            .collect();
        panic!(
            "answered {answered}; hotline calls {}; ended {ended:?}; lost {}",
            sim.hotline.calls_started().len(),
            sim.net.lost
        );
    }
    assert_eq!(sim.hotline.sb.ep.active_calls(), 1000);
    sim.run_for(secs(2));
    for &(p, c) in &calls {
        sim.hang_up(p, c);
    }
    assert!(
        sim.run_until(secs(10), |s| s.hotline.sb.ep.call_count() == 0
            && calls.iter().all(|&(p, c)| s.phones[p].ended(c).is_some()))
    );
    assert_eq!(sim.hotline.calls_started().len(), 1000);
    assert!(calls
        .iter()
        .all(|&(p, c)| sim.phones[p].ended(c).as_deref() == Some("our-bye")));
}

/// Finished calls leave no SIP transaction behind once late retransmissions are over:
/// the INVITE transaction of every answered call used to stay for good.
#[test]
fn finished_calls_leave_no_transactions() {
    let mut sim = Sim::new(NetConfig::default());
    let phones: Vec<usize> = (0..5).map(|_| sim.add_phone()).collect();
    let calls: Vec<_> = phones.iter().map(|&p| (p, sim.call(p))).collect();
    assert!(sim.run_until(secs(3), |s| calls
        .iter()
        .all(|&(p, c)| s.phones[p].answered_at(c).is_some())));
    sim.run_for(secs(1));
    for &(p, c) in &calls {
        sim.hang_up(p, c);
    }
    assert!(sim.run_until(secs(10), |s| s.hotline.sb.ep.call_count() == 0));
    // Timer L (64*T1) and the BYE transactions' timer J, then nothing is held.
    sim.run_for(secs(40));
    assert_eq!(sim.hotline.sb.ep.transaction_count(), 0);
}

/// A caller who presses nothing is led through every question to the voice message
/// (nobody is logged in), as `hotline check --paths` computes for the shipped flow.
#[test]
fn a_caller_who_presses_nothing_reaches_the_voice_message() {
    let mut sim = Sim::new(NetConfig::default());
    let phone = sim.add_phone();
    let call = sim.call(phone);
    assert!(sim.run_until(secs(5), |s| s.phones[phone].answered_at(call).is_some()));
    let at = hotline_call(&sim);
    let answered = sim.now;
    assert!(sim.run_until(secs(120), |s| s.hotline.media_log.iter().any(
        |(_, c)| matches!(c, EngineCommand::StartRecording { call: c, .. } if *c == at)
    )));
    let waited = sim.now - answered;
    // The shipped flow's limit for this caller (check --paths: about 68 s to the beep).
    assert!(waited < secs(75), "{waited:?}");
    let path: Vec<String> = sim
        .hotline
        .store
        .iter()
        .filter_map(|c| match c {
            StoreCommand::Node { call, node, .. } if *call == at => Some(node.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(path.first().map(String::as_str), Some("greeting"));
    assert!(path.contains(&"voicemail".to_string()), "{path:?}");
    sim.hang_up(phone, call);
    assert!(sim.run_until(secs(5), |s| s.hotline.sb.ep.call_count() == 0));
}

fn answers(sim: &Sim, call: u64) -> Vec<(String, String)> {
    sim.hotline
        .store
        .iter()
        .filter_map(|c| match c {
            StoreCommand::Answer {
                call: c,
                key,
                digits,
                ..
            } if *c == call => Some((key.clone(), digits.clone())),
            _ => None,
        })
        .collect()
}

fn path(sim: &Sim, call: u64) -> Vec<String> {
    sim.hotline
        .store
        .iter()
        .filter_map(|c| match c {
            StoreCommand::Node { call: c, node, .. } if *c == call => Some(node.clone()),
            _ => None,
        })
        .collect()
}

fn digits(sim: &Sim, call: u64) -> String {
    sim.hotline
        .store
        .iter()
        .filter_map(|c| match c {
            StoreCommand::Digit { call: c, digit, .. } if *c == call => Some(*digit),
            _ => None,
        })
        .collect()
}

/// A key the menu does not offer is answered with "no such option" and the question
/// again; the right keys then answer it and the next ones, and `#` skips the unit.
#[test]
fn a_wrong_key_then_the_right_ones() {
    let mut sim = Sim::new(NetConfig::default());
    let phone = sim.add_phone();
    let call = sim.call(phone);
    assert!(sim.run_until(secs(5), |s| s.phones[phone].answered_at(call).is_some()));
    let at = hotline_call(&sim);
    sim.run_for(secs(1));
    sim.press(phone, call, "9");
    assert!(sim.run_until(secs(30), |s| s
        .hotline
        .played(at)
        .contains(&"invalid_key".to_string())));
    sim.run_for(secs(1));
    sim.press(phone, call, "12#");
    assert!(sim.run_until(secs(30), |s| path(s, at)
        .contains(&"operator_queue".to_string())));
    assert_eq!(
        answers(&sim, at),
        [
            ("status".to_string(), "1".to_string()),
            ("zone".into(), "2".into()),
            ("unit".into(), "".into())
        ]
    );
    assert_eq!(digits(&sim, at), "912#");
    assert_eq!(
        &path(&sim, at)[..5],
        ["greeting", "situation", "zone", "unit", "operator_queue"]
    );
}

/// 0 reaches the operator queue from the middle of a menu, and is not taken as an
/// answer to that menu.
#[test]
fn zero_from_the_middle_of_a_menu_reaches_the_queue() {
    let mut sim = Sim::new(NetConfig::default());
    let phone = sim.add_phone();
    let call = sim.call(phone);
    assert!(sim.run_until(secs(5), |s| s.phones[phone].answered_at(call).is_some()));
    let at = hotline_call(&sim);
    sim.run_for(secs(1));
    sim.press(phone, call, "1");
    assert!(sim.run_until(secs(30), |s| path(s, at).contains(&"zone".to_string())));
    sim.run_for(secs(1));
    sim.press(phone, call, "0");
    assert!(sim.run_until(secs(30), |s| path(s, at)
        .contains(&"operator_queue".to_string())));
    assert_eq!(
        &path(&sim, at)[..4],
        ["greeting", "situation", "zone", "operator_queue"]
    );
    assert_eq!(answers(&sim, at), [("status".to_string(), "1".to_string())]);
}
