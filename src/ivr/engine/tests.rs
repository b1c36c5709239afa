//! Engine tests: whole calls against the default flow and small flows, on a
//! simulated clock. They must not sleep or touch the network.

use std::collections::BTreeSet;

use super::*;
use crate::ivr::{validate, Problem, PromptCatalog};

const DEFAULT_FLOW: &str = include_str!("test_flow.toml");
const SHIPPED_FLOW: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ivr.toml"));
const RU_PROMPTS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/prompts/ru/prompts.toml"
));

struct Call {
    engine: Engine,
    now: Instant,
    last_play: Option<PlayId>,
    /// What the host says when the queue node asks about operators; `None`
    /// leaves the question to the test.
    operators: Option<Operators>,
}

impl Call {
    fn default_flow() -> Self {
        let flow = Flow::from_toml_str(DEFAULT_FLOW, "ivr.toml").unwrap();
        let ids = PromptCatalog::from_toml_str(RU_PROMPTS, "prompts.toml")
            .unwrap()
            .ids();
        validate(&flow, &ids).unwrap();
        Self::start(Engine::new(Arc::new(flow)).with_reference_code("4821"))
    }

    /// The flow shipped in config/ivr.toml.
    fn shipped_flow() -> Self {
        let flow = Flow::from_toml_str(SHIPPED_FLOW, "ivr.toml").unwrap();
        let ids = PromptCatalog::from_toml_str(RU_PROMPTS, "prompts.toml")
            .unwrap()
            .ids();
        validate(&flow, &ids).unwrap();
        Self::start(Engine::new(Arc::new(flow)).with_reference_code("4821356"))
    }

    /// A test flow, validated except for prompt ids, which are made up.
    fn flow(toml: &str) -> Self {
        let flow = Flow::from_toml_str(toml, "test.toml").unwrap();
        let errors: Vec<String> = validate(&flow, &BTreeSet::new())
            .err()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !matches!(e.problem, Problem::MissingPrompt { .. }))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        Self::start(Engine::new(Arc::new(flow)))
    }

    fn unvalidated(toml: &str) -> Self {
        Self::start(Engine::new(Arc::new(
            Flow::from_toml_str(toml, "test.toml").unwrap(),
        )))
    }

    fn start(engine: Engine) -> Self {
        Self {
            engine,
            now: Instant::now(),
            last_play: None,
            operators: Some(Operators::Free),
        }
    }

    fn send(&mut self, event: Event) -> Vec<Action> {
        self.engine.handle(event, self.now);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let mut asked = false;
        while let Some(action) = self.engine.poll_action() {
            if let Action::Play { id, .. } = &action {
                self.last_play = Some(*id);
            }
            asked |= matches!(action, Action::CheckOperators { .. });
            out.push(action);
        }
        if let Some(operators) = self.operators.filter(|_| asked) {
            out.extend(self.send(Event::Operators(operators)));
        }
        out
    }

    fn answer(&mut self) -> Vec<Action> {
        self.send(Event::Answered)
    }

    fn finish_prompt(&mut self) -> Vec<Action> {
        let id = self.last_play.expect("something was played");
        self.send(Event::PromptFinished { id })
    }

    fn press(&mut self, keys: &str) -> Vec<Action> {
        let mut out = Vec::new();
        for key in keys.chars() {
            out.extend(self.send(Event::Digit(key)));
        }
        out
    }

    /// Lets `secs` pass, firing every timer that falls due on the way.
    fn wait(&mut self, secs: f64) -> Vec<Action> {
        let until = self.now + Duration::from_secs_f64(secs);
        let mut out = Vec::new();
        for _ in 0..100 {
            match self.engine.poll_timeout() {
                Some(t) if t <= until => {
                    self.now = t;
                    self.engine.handle_timeout(t);
                    out.extend(self.drain());
                }
                _ => {
                    self.now = until;
                    return out;
                }
            }
        }
        panic!("timer keeps firing");
    }

    fn timer_in(&self) -> Option<Duration> {
        self.engine.poll_timeout().map(|t| t - self.now)
    }

    /// Default flow: answer and listen at the situation menu.
    fn at_situation(&mut self) {
        self.answer();
        self.finish_prompt();
        self.finish_prompt();
    }

    /// Default flow: listening for the unit number.
    fn at_unit(&mut self) {
        self.at_situation();
        self.press("1");
        self.finish_prompt();
        self.press("1");
        self.finish_prompt();
    }

    /// Default flow: recording a message.
    fn recording(&mut self) {
        self.at_situation();
        self.press("0");
        self.finish_prompt();
        self.send(Event::QueueResult(QueueOutcome::Unavailable));
        self.finish_prompt();
    }
}

trait Actions {
    fn plays(&self) -> Vec<Vec<&str>>;
    fn entered(&self) -> Vec<&str>;
    fn answers(&self) -> Vec<(&str, &str)>;
    fn contains_action(&self, action: &Action) -> bool;
    fn media(&self) -> Vec<&Action>;
}

impl Actions for Vec<Action> {
    fn plays(&self) -> Vec<Vec<&str>> {
        self.iter()
            .filter_map(|a| match a {
                Action::Play { prompts, .. } => Some(prompts.iter().map(String::as_str).collect()),
                _ => None,
            })
            .collect()
    }

    fn entered(&self) -> Vec<&str> {
        self.iter()
            .filter_map(|a| match a {
                Action::NodeEntered { node } => Some(node.as_str()),
                _ => None,
            })
            .collect()
    }

    fn answers(&self) -> Vec<(&str, &str)> {
        self.iter()
            .filter_map(|a| match a {
                Action::StoreAnswer { key, digits, .. } => Some((key.as_str(), digits.as_str())),
                _ => None,
            })
            .collect()
    }

    fn contains_action(&self, action: &Action) -> bool {
        self.iter().any(|a| a == action)
    }

    /// Everything but record keeping.
    fn media(&self) -> Vec<&Action> {
        self.iter().filter(|a| !a.is_bookkeeping()).collect()
    }
}

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

#[test]
fn default_flow_from_greeting_to_goodbye() {
    let mut call = Call::default_flow();
    let a = call.answer();
    assert_eq!(a.entered(), ["greeting"]);
    assert_eq!(a.plays(), [["greeting", "language_note", "keys_hint"]]);
    assert_eq!(call.timer_in(), None, "no timer while a prompt plays");

    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["situation"]);
    assert_eq!(a.plays(), [["situation_menu"]]);
    assert_eq!(call.timer_in(), None, "timeouts start when the prompt ends");
    call.finish_prompt();
    assert_eq!(call.timer_in(), secs(8));

    let a = call.press("2");
    assert_eq!(a.answers(), [("status", "2")]);
    assert_eq!(a.entered(), ["zone"]);
    assert_eq!(a.plays(), [["zone_menu"]]);
    call.finish_prompt();
    let a = call.press("1");
    assert_eq!(a.answers(), [("zone", "1")]);
    assert_eq!(a.plays(), [["unit_prompt"]]);
    call.finish_prompt();
    assert_eq!(call.timer_in(), secs(10));

    let a = call.press("12345");
    assert_eq!(
        a.answers(),
        [("unit", "12345")],
        "five digits end the entry without #"
    );
    assert_eq!(a.entered(), ["operator_queue"]);
    assert_eq!(a.plays(), [["connecting"]]);
    let a = call.finish_prompt();
    assert!(a.contains_action(&Action::Enqueue {
        node: "operator_queue".into()
    }));

    let a = call.send(Event::QueueResult(QueueOutcome::Unavailable));
    assert_eq!(a.entered(), ["voicemail"]);
    assert_eq!(a.plays(), [["voicemail_intro"]]);
    let a = call.finish_prompt();
    assert!(a.contains_action(&Action::StartRecording {
        node: "voicemail".into(),
        max: Duration::from_secs(180),
        silence: Duration::from_secs(10),
        finish_keys: "#".into(),
        beep: true,
    }));

    let a = call.send(Event::RecordingFinished {
        reason: RecordStop::FinishKey,
        duration_ms: 42_000,
    });
    assert!(
        a.plays().is_empty(),
        "no confirmation before the store answers"
    );
    assert!(call.wait(1.0).plays().is_empty());
    let a = call.send(Event::RecordingStored { ok: true });
    assert_eq!(a.plays(), [["message_saved"]]);

    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["reference"]);
    let code = ["digit_4", "digit_8", "digit_2", "digit_1"];
    let mut expected = vec!["reference_intro"];
    expected.extend(code);
    expected.push("reference_repeat");
    expected.extend(code);
    expected.push("reference_outro");
    assert_eq!(a.plays(), [expected]);

    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["goodbye"]);
    assert_eq!(a.plays(), [["goodbye"]]);
    let a = call.finish_prompt();
    assert_eq!(
        a,
        [Action::Hangup {
            reason: HangupReason::Goodbye
        }]
    );
    assert!(call.engine.is_ended());
    assert!(call.send(Event::HangUp).is_empty());
}

#[test]
fn every_situation_and_zone_answer_is_stored() {
    for status in ["1", "2", "3"] {
        for zone in ["1", "2"] {
            let mut call = Call::default_flow();
            call.at_situation();
            let a = call.press(status);
            assert_eq!(a.answers(), [("status", status)]);
            assert_eq!(a.entered(), ["zone"]);
            call.finish_prompt();
            let a = call.press(zone);
            assert_eq!(a.answers(), [("zone", zone)]);
            assert_eq!(a.entered(), ["unit"]);
        }
    }
}

#[test]
fn invalid_keys_replay_the_menu_then_fall_back_to_the_queue() {
    let mut call = Call::default_flow();
    call.at_situation();
    let a = call.press("7");
    assert_eq!(a.plays(), [["invalid_key", "situation_menu"]]);
    assert!(a.answers().is_empty());
    call.finish_prompt();
    let a = call.press("9");
    assert_eq!(a.plays(), [["invalid_key", "situation_menu"]]);
    call.finish_prompt();
    let a = call.press("#");
    assert_eq!(a.entered(), ["operator_queue"]);
    assert_eq!(a.plays(), [["connecting"]]);
}

#[test]
fn a_silent_caller_is_offered_voicemail() {
    let mut call = Call::default_flow();
    call.at_situation();
    let a = call.wait(8.0);
    assert_eq!(a.plays(), [["no_input", "situation_menu"]]);
    assert_eq!(call.timer_in(), None);
    call.finish_prompt();
    assert_eq!(call.wait(8.0).plays(), [["no_input", "situation_menu"]]);
    call.finish_prompt();
    let a = call.wait(8.0);
    assert_eq!(a.entered(), ["operator_queue"]);
    call.finish_prompt();
    let a = call.send(Event::QueueResult(QueueOutcome::Unavailable));
    assert_eq!(a.entered(), ["voicemail"]);
}

#[test]
fn invalid_keys_and_timeouts_share_one_retry_budget() {
    let mut call = Call::default_flow();
    call.at_situation();
    call.press("5");
    call.finish_prompt();
    assert_eq!(call.wait(8.0).plays(), [["no_input", "situation_menu"]]);
    call.finish_prompt();
    assert_eq!(call.press("5").entered(), ["operator_queue"]);
}

#[test]
fn a_valid_answer_after_a_retry_is_accepted() {
    let mut call = Call::default_flow();
    call.at_situation();
    call.press("8");
    call.finish_prompt();
    let a = call.press("3");
    assert_eq!(a.answers(), [("status", "3")]);
    assert_eq!(a.entered(), ["zone"]);
}

#[test]
fn barge_in_stops_the_menu_prompt_and_takes_the_key() {
    let mut call = Call::default_flow();
    call.answer();
    call.finish_prompt();
    let stale = call.last_play.unwrap();
    let a = call.press("1");
    assert_eq!(a.first(), Some(&Action::StopPlayback));
    assert_eq!(a.answers(), [("status", "1")]);
    assert_eq!(a.plays(), [["zone_menu"]]);

    assert!(
        call.send(Event::PromptFinished { id: stale }).is_empty(),
        "late report of the stopped prompt"
    );
    assert_eq!(call.timer_in(), None, "zone prompt still playing");
}

#[test]
fn barge_in_during_a_retry_prompt() {
    let mut call = Call::default_flow();
    call.at_situation();
    call.press("4");
    let a = call.press("2");
    assert_eq!(a.first(), Some(&Action::StopPlayback));
    assert_eq!(a.answers(), [("status", "2")]);
}

#[test]
fn a_key_during_the_greeting_answers_the_first_menu() {
    let mut call = Call::default_flow();
    call.answer();
    let a = call.press("2");
    assert_eq!(a.first(), Some(&Action::StopPlayback));
    assert_eq!(a.entered(), ["situation", "zone"]);
    assert_eq!(a.answers(), [("status", "2")]);
    assert_eq!(
        a.plays(),
        [["zone_menu"]],
        "the answered menu is not played"
    );
}

#[test]
fn type_ahead_answers_several_questions() {
    let mut call = Call::default_flow();
    call.answer();
    let a = call.press("31");
    assert_eq!(a.answers(), [("status", "3"), ("zone", "1")]);
    assert_eq!(a.entered(), ["situation", "zone", "unit"]);
    assert_eq!(a.plays(), [["zone_menu"], ["unit_prompt"]]);
}

#[test]
fn an_invalid_type_ahead_key_drops_the_rest() {
    let mut call = Call::default_flow();
    call.answer();
    call.press("7");
    let a = call.press("1");
    // 7 was invalid: the situation menu is asking again, and the 1 pressed
    // during its prompt answers it.
    assert_eq!(a.answers(), [("status", "1")]);
}

const TYPE_AHEAD_FLOW: &str = r#"
[flow]
start = "intro"
fallback = "bye"

[nodes.intro]
type = "play"
prompts = ["intro"]
next = "first"

[nodes.first]
type = "menu"
prompts = ["first"]
options = { "1" = "note" }
store_as = "first"

[nodes.note]
type = "play"
prompts = ["note"]
next = "second"

[nodes.second]
type = "menu"
prompts = ["second"]
options = { "1" = "bye", "2" = "bye" }
barge_in = false
store_as = "second"

[nodes.bye]
type = "hangup"
"#;

#[test]
fn keys_during_a_plain_prompt_wait_for_the_next_menu() {
    let mut call = Call::flow(TYPE_AHEAD_FLOW);
    call.answer();
    let a = call.press("1");
    assert!(a.is_empty(), "intro does not barge in: {a:?}");
    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["first", "note"]);
    assert_eq!(a.answers(), [("first", "1")]);
    assert_eq!(a.plays(), [["note"]]);
}

#[test]
fn flush_type_ahead_discards_early_keys() {
    let toml = TYPE_AHEAD_FLOW.replace(
        "barge_in = false",
        "barge_in = false\nflush_type_ahead = true",
    );
    let mut call = Call::flow(&toml);
    call.answer();
    call.finish_prompt();
    call.finish_prompt();
    call.press("1");
    call.press("2");
    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["second"]);
    assert!(a.answers().is_empty());
    assert_eq!(a.plays(), [["second"]]);
}

#[test]
fn without_barge_in_a_key_waits_for_the_prompt_to_end() {
    let mut call = Call::flow(TYPE_AHEAD_FLOW);
    call.answer();
    call.finish_prompt();
    call.finish_prompt();
    call.press("1");
    call.finish_prompt();
    let a = call.press("2");
    assert!(a.is_empty(), "second menu does not barge in: {a:?}");
    let a = call.finish_prompt();
    assert_eq!(a.answers(), [("second", "2")]);
    assert_eq!(a.entered(), ["bye"]);
    assert_eq!(
        a.last(),
        Some(&Action::Hangup {
            reason: HangupReason::Goodbye
        })
    );
}

#[test]
fn key_0_reaches_the_queue_from_a_middle_menu() {
    let mut call = Call::default_flow();
    call.at_situation();
    call.press("1");
    call.finish_prompt();
    let a = call.press("0");
    assert!(a.answers().is_empty());
    assert_eq!(a.entered(), ["operator_queue"]);
    assert_eq!(a.plays(), [["connecting"]]);
}

#[test]
fn key_0_during_the_greeting_reaches_the_queue() {
    let mut call = Call::default_flow();
    call.answer();
    let a = call.press("0");
    assert_eq!(a.entered(), ["situation", "operator_queue"]);
}

#[test]
fn star_repeats_the_question_without_using_a_retry() {
    let mut call = Call::default_flow();
    call.at_situation();
    for _ in 0..4 {
        let a = call.press("*");
        assert_eq!(a.plays(), [["situation_menu"]]);
        call.finish_prompt();
    }
    call.press("6");
    call.finish_prompt();
    let a = call.press("6");
    assert_eq!(
        a.plays(),
        [["invalid_key", "situation_menu"]],
        "still within retries"
    );
}

#[test]
fn star_during_the_prompt_restarts_it() {
    let mut call = Call::default_flow();
    call.answer();
    call.finish_prompt();
    let a = call.press("*");
    assert_eq!(a.first(), Some(&Action::StopPlayback));
    assert_eq!(a.plays(), [["situation_menu"]]);
}

#[test]
fn a_node_can_opt_out_of_global_keys() {
    let toml = r#"
[flow]
start = "ask"
global_keys = { "0" = "bye" }
repeat_key = "*"
fallback = "bye"

[nodes.ask]
type = "menu"
prompts = ["ask"]
options = { "0" = "zero", "*" = "star" }
global_keys = false
store_as = "pick"

[nodes.zero]
type = "hangup"
[nodes.star]
type = "hangup"
[nodes.bye]
type = "hangup"
"#;
    let mut call = Call::flow(toml);
    call.answer();
    call.finish_prompt();
    let a = call.press("0");
    assert_eq!(a.entered(), ["zero"]);
    assert_eq!(a.answers(), [("pick", "0")]);
    let mut call = Call::flow(toml);
    call.answer();
    assert_eq!(call.press("*").entered(), ["star"]);
}

#[test]
fn unit_number_ended_with_hash() {
    let mut call = Call::default_flow();
    call.at_unit();
    let a = call.press("123");
    assert!(a.answers().is_empty());
    assert_eq!(call.timer_in(), secs(5), "inter-digit timer");
    let a = call.press("#");
    assert_eq!(a.answers(), [("unit", "123")]);
    assert_eq!(a.entered(), ["operator_queue"]);
}

#[test]
fn zero_is_a_digit_of_the_unit_number() {
    let mut call = Call::default_flow();
    call.at_unit();
    let a = call.press("0104#");
    assert_eq!(a.answers(), [("unit", "0104")]);
}

#[test]
fn unit_number_can_be_skipped_with_star_or_hash_alone() {
    for key in ["*", "#", "12*"] {
        let mut call = Call::default_flow();
        call.at_unit();
        let a = call.press(key);
        assert_eq!(a.answers(), [("unit", "")], "{key}");
        assert_eq!(a.entered(), ["operator_queue"]);
    }
}

#[test]
fn unit_number_without_hash_is_taken_after_the_inter_digit_timeout() {
    let mut call = Call::default_flow();
    call.at_unit();
    call.press("12");
    assert!(call.wait(4.9).is_empty());
    let a = call.wait(0.2);
    assert_eq!(a.answers(), [("unit", "12")]);
}

#[test]
fn unit_question_times_out_then_goes_to_the_queue_without_an_answer() {
    let mut call = Call::default_flow();
    call.at_unit();
    let a = call.wait(10.0);
    assert_eq!(a.plays(), [["no_input", "unit_prompt"]]);
    call.finish_prompt();
    let a = call.wait(10.0);
    assert!(a.answers().is_empty());
    assert_eq!(a.entered(), ["operator_queue"]);
}

const COLLECT_FLOW: &str = r##"
[flow]
start = "pin"
repeat_key = "*"
invalid_prompt = "invalid"
timeout_prompt = "timeout"

[nodes.pin]
type = "collect"
prompts = ["pin"]
min_digits = 3
max_digits = 6
terminator = "#"
first_digit_timeout = 5
inter_digit_timeout = 3
total_timeout = 10
retries = 1
store_as = "pin"
next = "ok"
fallback = "failed"

[nodes.ok]
type = "hangup"
[nodes.failed]
type = "hangup"
"##;

fn collect_call() -> Call {
    let mut call = Call::flow(COLLECT_FLOW);
    call.answer();
    call.finish_prompt();
    call
}

#[test]
fn collect_too_short_with_terminator_is_invalid() {
    let mut call = collect_call();
    let a = call.press("12#");
    assert_eq!(a.plays(), [["invalid", "pin"]]);
    assert!(a.answers().is_empty());
}

#[test]
fn collect_first_digit_timeout() {
    let mut call = collect_call();
    assert_eq!(call.timer_in(), secs(5));
    assert_eq!(call.wait(5.0).plays(), [["timeout", "pin"]]);
}

#[test]
fn collect_inter_digit_timeout_below_minimum_is_invalid() {
    let mut call = collect_call();
    call.press("12");
    assert_eq!(call.timer_in(), secs(3));
    assert_eq!(call.wait(3.0).plays(), [["invalid", "pin"]]);
}

#[test]
fn collect_total_timeout_ends_a_slow_entry() {
    let mut call = collect_call();
    for _ in 0..3 {
        call.wait(2.5);
        call.press("1");
    }
    // 7.5 s in, three digits: the total timeout (10 s) comes before the
    // inter-digit one (10.5 s).
    assert_eq!(call.timer_in(), Some(Duration::from_secs_f64(2.5)));
    let a = call.wait(2.5);
    assert_eq!(a.answers(), [("pin", "111")]);

    let mut call = collect_call();
    call.wait(4.9);
    call.press("1");
    call.wait(2.9);
    call.press("1");
    let a = call.wait(2.2);
    assert_eq!(
        a.plays(),
        [["invalid", "pin"]],
        "two digits at the total timeout are too few"
    );
}

#[test]
fn collect_rejects_keys_outside_its_pattern() {
    let toml = COLLECT_FLOW.replace("repeat_key = \"*\"\n", "");
    let mut call = Call::flow(&toml);
    call.answer();
    call.finish_prompt();
    assert_eq!(call.press("1*").plays(), [["invalid", "pin"]]);
}

#[test]
fn collect_retries_run_out_to_the_fallback() {
    let mut call = collect_call();
    call.press("1#");
    call.finish_prompt();
    let a = call.press("2#");
    assert_eq!(a.entered(), ["failed"]);
    assert!(a.answers().is_empty());
}

#[test]
fn collect_repeat_key_clears_the_digits() {
    let mut call = collect_call();
    call.press("12");
    assert_eq!(call.press("*").plays(), [["pin"]]);
    call.finish_prompt();
    let a = call.press("345#");
    assert_eq!(a.answers(), [("pin", "345")]);
}

#[test]
fn collect_max_digits_end_the_entry() {
    let mut call = collect_call();
    let a = call.press("123456");
    assert_eq!(a.answers(), [("pin", "123456")]);
    assert_eq!(a.entered(), ["ok"]);
}

#[test]
fn confirmation_waits_for_the_store() {
    let mut call = Call::default_flow();
    call.recording();
    assert_eq!(
        call.timer_in(),
        secs(185),
        "engine backstop behind the recorder"
    );
    call.send(Event::RecordingFinished {
        reason: RecordStop::Silence,
        duration_ms: 30_000,
    });
    assert_eq!(call.timer_in(), secs(5));
    assert!(call.press("#").is_empty());
    assert_eq!(
        call.send(Event::RecordingStored { ok: true }).plays(),
        [["message_saved"]]
    );
}

#[test]
fn a_failed_store_apologises_and_asks_to_call_again() {
    let mut call = Call::default_flow();
    call.recording();
    call.send(Event::RecordingFinished {
        reason: RecordStop::MaxLength,
        duration_ms: 180_000,
    });
    let a = call.send(Event::RecordingStored { ok: false });
    assert_eq!(a.plays(), [["message_not_saved"]]);
    assert!(!a.plays().concat().contains(&"message_saved"));
    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["goodbye_call_later"]);
    assert_eq!(a.plays(), [["call_back_later"]]);
    assert_eq!(
        call.finish_prompt(),
        [Action::Hangup {
            reason: HangupReason::Goodbye
        }]
    );
}

#[test]
fn an_unconfirmed_store_counts_as_failed() {
    let mut call = Call::default_flow();
    call.recording();
    call.send(Event::RecordingFinished {
        reason: RecordStop::FinishKey,
        duration_ms: 9_000,
    });
    let a = call.wait(5.0);
    assert_eq!(a.plays(), [["message_not_saved"]]);
    assert!(
        call.send(Event::RecordingStored { ok: true }).is_empty(),
        "too late to confirm"
    );
}

#[test]
fn no_speech_records_again_then_moves_on_without_confirming() {
    let mut call = Call::default_flow();
    call.recording();
    let a = call.send(Event::RecordingFinished {
        reason: RecordStop::NoSpeech,
        duration_ms: 10_000,
    });
    assert_eq!(a.plays(), [["no_speech", "voicemail_intro"]]);
    let a = call.finish_prompt();
    assert!(a.iter().any(|a| matches!(a, Action::StartRecording { .. })));
    let a = call.send(Event::RecordingFinished {
        reason: RecordStop::NoSpeech,
        duration_ms: 10_000,
    });
    assert_eq!(a.entered(), ["reference"]);
    assert!(!a.plays().concat().contains(&"message_saved"));
}

#[test]
fn the_engine_stops_a_recorder_that_never_reports() {
    let mut call = Call::default_flow();
    call.recording();
    let a = call.wait(185.0);
    assert!(a.contains_action(&Action::StopRecording { partial: false }));
    assert_eq!(call.timer_in(), secs(5), "now waiting for the store");
    assert!(call
        .send(Event::RecordingFinished {
            reason: RecordStop::MaxLength,
            duration_ms: 1
        })
        .is_empty());
}

#[test]
fn keys_during_recording_belong_to_the_recorder() {
    let mut call = Call::default_flow();
    call.recording();
    assert!(call.press("0#").is_empty());
}

#[test]
fn hanging_up_mid_message_keeps_a_partial_recording() {
    let mut call = Call::default_flow();
    call.recording();
    let a = call.send(Event::HangUp);
    assert_eq!(a, [Action::StopRecording { partial: true }]);
    assert!(call.send(Event::RecordingStored { ok: true }).is_empty());
    assert_eq!(call.timer_in(), None);
}

#[test]
fn the_recorder_reporting_a_hang_up_ends_quietly() {
    let mut call = Call::default_flow();
    call.recording();
    let a = call.send(Event::RecordingFinished {
        reason: RecordStop::HangUp,
        duration_ms: 3_000,
    });
    assert!(a.media().is_empty(), "{a:?}");
    assert!(call.send(Event::HangUp).is_empty());
}

/// Brings a default-flow call to some point.
type Drive = fn(&mut Call);

/// One point per node kind and phase.
fn places() -> Vec<(&'static str, Drive)> {
    vec![
        ("before answer", |_| {}),
        ("play", |c| {
            c.answer();
        }),
        ("menu prompt", |c| {
            c.answer();
            c.finish_prompt();
        }),
        ("menu listening", Call::at_situation),
        ("collect", |c| {
            c.at_unit();
            c.press("12");
        }),
        ("queue prompt", |c| {
            c.at_situation();
            c.press("0");
        }),
        ("queued", |c| {
            c.at_situation();
            c.press("0");
            c.finish_prompt();
        }),
        ("record prompt", |c| {
            c.recording();
            c.send(Event::RecordingFinished {
                reason: RecordStop::NoSpeech,
                duration_ms: 0,
            });
        }),
        ("recording", Call::recording),
        ("storing", |c| {
            c.recording();
            c.send(Event::RecordingFinished {
                reason: RecordStop::FinishKey,
                duration_ms: 5_000,
            });
        }),
        ("say_reference", |c| {
            c.recording();
            c.send(Event::RecordingFinished {
                reason: RecordStop::FinishKey,
                duration_ms: 5_000,
            });
            c.send(Event::RecordingStored { ok: true });
            c.finish_prompt();
        }),
        ("hangup", |c| {
            c.recording();
            c.send(Event::RecordingFinished {
                reason: RecordStop::FinishKey,
                duration_ms: 5_000,
            });
            c.send(Event::RecordingStored { ok: true });
            c.finish_prompt();
            c.finish_prompt();
        }),
        ("with operator", |c| {
            c.at_situation();
            c.press("0");
            c.finish_prompt();
            c.send(Event::QueueResult(QueueOutcome::Answered));
        }),
    ]
}

#[test]
fn hang_up_anywhere_ends_the_call_quietly() {
    for (place, drive) in places() {
        let mut call = Call::default_flow();
        drive(&mut call);
        let a = call.send(Event::HangUp);
        let expected: &[Action] = if place == "recording" {
            &[Action::StopRecording { partial: true }]
        } else {
            &[]
        };
        assert_eq!(a, expected, "{place}");
        assert!(call.engine.is_ended(), "{place}");
        assert_eq!(call.timer_in(), None, "{place}");
        let mut after = call.wait(600.0);
        after.extend(call.press("1"));
        if let Some(id) = call.last_play {
            after.extend(call.send(Event::PromptFinished { id }));
        }
        after.extend(call.send(Event::QueueResult(QueueOutcome::Unavailable)));
        after.extend(call.send(Event::RecordingFinished {
            reason: RecordStop::FinishKey,
            duration_ms: 1,
        }));
        after.extend(call.send(Event::RecordingStored { ok: true }));
        after.extend(call.send(Event::Answered));
        assert!(after.is_empty(), "{place}: {after:?}");
    }
}

#[test]
fn hang_up_drops_unsent_media_but_keeps_answers() {
    let mut call = Call::default_flow();
    call.at_situation();
    call.engine.handle(Event::Digit('2'), call.now);
    call.engine.handle(Event::HangUp, call.now);
    let a = call.drain();
    assert_eq!(a.answers(), [("status", "2")]);
    assert_eq!(a.entered(), ["zone"]);
    assert!(a.media().is_empty(), "{a:?}");
}

#[test]
fn every_queue_outcome_but_answered_leads_to_voicemail() {
    for outcome in [
        QueueOutcome::Unavailable,
        QueueOutcome::NoOperators,
        QueueOutcome::CallerChoseVoicemail,
        QueueOutcome::MaxWait,
    ] {
        let mut call = Call::default_flow();
        call.at_situation();
        call.press("0");
        call.finish_prompt();
        assert!(call.press("5").is_empty(), "the queue owns the keypad");
        let a = call.send(Event::QueueResult(outcome));
        assert_eq!(a.entered(), ["voicemail"], "{outcome:?}");
    }
}

#[test]
fn an_answered_queue_leaves_the_call_to_the_operator() {
    let mut call = Call::default_flow();
    call.at_situation();
    call.press("0");
    call.finish_prompt();
    let a = call.send(Event::QueueResult(QueueOutcome::Answered));
    assert!(a.media().is_empty());
    assert_eq!(call.timer_in(), None);
    assert!(call.press("1").is_empty());
    assert!(call
        .send(Event::QueueResult(QueueOutcome::MaxWait))
        .is_empty());
}

#[test]
fn queue_result_outside_the_queue_is_ignored() {
    let mut call = Call::default_flow();
    call.at_situation();
    assert!(call
        .send(Event::QueueResult(QueueOutcome::Unavailable))
        .is_empty());
}

#[test]
fn reference_code_from_an_event_reads_only_digits() {
    let flow = Flow::from_toml_str(DEFAULT_FLOW, "ivr.toml").unwrap();
    let mut call = Call::start(Engine::new(Arc::new(flow)));
    call.send(Event::ReferenceCode("7-0 5".into()));
    call.recording();
    call.send(Event::RecordingFinished {
        reason: RecordStop::FinishKey,
        duration_ms: 5_000,
    });
    call.send(Event::RecordingStored { ok: true });
    let a = call.finish_prompt();
    let digits = ["digit_7", "digit_0", "digit_5"];
    let expected = [
        &["reference_intro"][..],
        &digits,
        &["reference_repeat"],
        &digits,
        &["reference_outro"],
    ]
    .concat();
    assert_eq!(a.plays(), [expected]);
}

#[test]
fn without_a_reference_code_the_caller_goes_straight_to_goodbye() {
    let flow = Flow::from_toml_str(DEFAULT_FLOW, "ivr.toml").unwrap();
    let mut call = Call::start(Engine::new(Arc::new(flow)));
    call.recording();
    call.send(Event::RecordingFinished {
        reason: RecordStop::FinishKey,
        duration_ms: 5_000,
    });
    call.send(Event::RecordingStored { ok: true });
    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["reference", "goodbye"]);
    assert_eq!(a.plays(), [["goodbye"]]);
}

#[test]
fn keys_that_are_not_on_a_phone_keypad_are_ignored() {
    let mut call = Call::default_flow();
    call.at_situation();
    assert!(call.press("Ax\u{0}").is_empty());
    assert_eq!(call.timer_in(), secs(8));
}

#[test]
fn events_before_the_answer_are_ignored() {
    let mut call = Call::default_flow();
    assert!(call.press("1").is_empty());
    assert!(call.send(Event::RecordingStored { ok: true }).is_empty());
    assert_eq!(call.timer_in(), None);
    assert_eq!(call.answer().entered(), ["greeting"]);
    assert!(call.answer().is_empty(), "a second answer changes nothing");
}

#[test]
fn a_broken_flow_hangs_up_instead_of_leaving_silence() {
    let mut call = Call::unvalidated("[flow]\nstart = \"nowhere\"\n");
    let a = call.answer();
    assert_eq!(
        a.last(),
        Some(&Action::Hangup {
            reason: HangupReason::BrokenFlow
        })
    );

    let looping = r#"
[flow]
start = "a"
[nodes.a]
type = "goto"
next = "b"
[nodes.b]
type = "goto"
next = "a"
"#;
    let mut call = Call::unvalidated(looping);
    let a = call.answer();
    assert_eq!(
        a.last(),
        Some(&Action::Hangup {
            reason: HangupReason::BrokenFlow
        })
    );

    let no_fallback = r#"
[flow]
start = "ask"
retries = 0
[nodes.ask]
type = "menu"
prompts = []
first_digit_timeout = -3
"#;
    let mut call = Call::unvalidated(no_fallback);
    call.answer();
    assert_eq!(call.timer_in(), secs(0), "an empty menu listens at once");
    let a = call.wait(0.0);
    assert_eq!(
        a.last(),
        Some(&Action::Hangup {
            reason: HangupReason::BrokenFlow
        })
    );
}

/// Small deterministic generator so the storm test needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_event_storms_never_panic_or_speak_after_hang_up() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let reasons = [
        RecordStop::FinishKey,
        RecordStop::Silence,
        RecordStop::MaxLength,
        RecordStop::HangUp,
        RecordStop::NoSpeech,
    ];
    let outcomes = [
        QueueOutcome::Answered,
        QueueOutcome::Unavailable,
        QueueOutcome::NoOperators,
        QueueOutcome::CallerChoseVoicemail,
        QueueOutcome::MaxWait,
    ];
    let operators = [
        Operators::Free,
        Operators::AllBusy,
        Operators::NobodyLoggedIn,
    ];
    for round in 0..300 {
        let mut call = Call::default_flow();
        // Half the calls leave the operator question to the storm.
        if round % 2 == 0 {
            call.operators = None;
        }
        let mut hung_up = false;
        for _ in 0..120 {
            let event = match rng.below(13) {
                11 => Event::Operators(operators[rng.below(3) as usize]),
                0 => Event::Answered,
                1..=3 => match call.last_play {
                    Some(id) => Event::PromptFinished { id },
                    None => Event::Answered,
                },
                4..=6 => Event::Digit(b"0123456789*#A"[rng.below(13) as usize] as char),
                7 => Event::RecordingFinished {
                    reason: reasons[rng.below(5) as usize],
                    duration_ms: rng.below(200_000),
                },
                8 => Event::RecordingStored {
                    ok: rng.below(2) == 0,
                },
                9 => Event::QueueResult(outcomes[rng.below(5) as usize]),
                10 if rng.below(20) == 0 => Event::HangUp,
                _ => {
                    let a = call.wait(rng.below(20) as f64);
                    assert!(!hung_up || a.media().is_empty(), "{a:?}");
                    continue;
                }
            };
            hung_up |= event == Event::HangUp;
            let a = call.send(event);
            assert!(!hung_up || a.media().is_empty(), "{a:?}");
        }
    }
}

#[test]
fn truncated_flow_files_never_panic() {
    let ids = PromptCatalog::from_toml_str(RU_PROMPTS, "prompts.toml")
        .unwrap()
        .ids();
    for (end, _) in DEFAULT_FLOW.char_indices().step_by(3) {
        if let Ok(flow) = Flow::from_toml_str(&DEFAULT_FLOW[..end], "ivr.toml") {
            let _ = validate(&flow, &ids);
            let mut call = Call::start(Engine::new(Arc::new(flow)));
            call.answer();
            call.press("1");
            call.wait(60.0);
        }
    }
}

/// The shipped flow: the greeting says what the line is and that 0 reaches an
/// operator; a silent caller hears the first question twice, then the queue.
#[test]
fn shipped_flow_reaches_a_person_after_asking_twice() {
    let mut call = Call::shipped_flow();
    let a = call.answer();
    assert_eq!(a.plays(), [["greeting", "keys_hint"]]);
    let a = call.finish_prompt();
    assert_eq!(a.entered(), ["situation"]);
    call.finish_prompt();
    assert_eq!(call.timer_in(), secs(6));
    assert_eq!(call.wait(6.0).plays(), [["no_input", "situation_menu"]]);
    call.finish_prompt();
    let a = call.wait(6.0);
    assert_eq!(a.entered(), ["operator_queue"]);
    assert!(a.contains_action(&Action::CheckOperators {
        node: "operator_queue".into()
    }));
    assert_eq!(a.plays(), [["connecting"]]);
}

/// "Connecting" only when an operator is free; "all busy" when none is; with
/// nobody logged in, straight to the voice message.
#[test]
fn shipped_flow_says_connecting_only_when_an_operator_can_be_offered() {
    let ask = |operators: Option<Operators>| {
        let mut call = Call::shipped_flow();
        call.operators = operators;
        call.answer();
        call.press("0")
    };
    let a = ask(Some(Operators::Free));
    assert_eq!(a.entered(), ["situation", "operator_queue"]);
    assert_eq!(a.plays(), [["connecting"]]);

    let a = ask(Some(Operators::AllBusy));
    assert_eq!(a.plays(), [["all_operators_busy"]]);

    let a = ask(Some(Operators::NobodyLoggedIn));
    assert_eq!(a.entered(), ["situation", "operator_queue", "voicemail"]);
    assert_eq!(a.plays(), [["voicemail_intro"]], "no \"connecting\" first");
    assert!(!a.iter().any(|x| matches!(x, Action::Enqueue { .. })));

    // Until the host answers, nothing is played and keys change nothing.
    let mut call = Call::shipped_flow();
    call.operators = None;
    call.answer();
    let a = call.press("0");
    assert!(a.plays().is_empty());
    assert!(call.press("1").is_empty());
    let a = call.send(Event::Operators(Operators::Free));
    assert_eq!(a.plays(), [["connecting"]]);
    // A late or repeated answer is ignored.
    assert!(call
        .send(Event::Operators(Operators::NobodyLoggedIn))
        .is_empty());
    let a = call.finish_prompt();
    assert!(a.contains_action(&Action::Enqueue {
        node: "operator_queue".into()
    }));
}
