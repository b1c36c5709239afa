//! Path timings on small flows whose every time can be worked out by hand.

use super::*;
use crate::ivr::validate;
use std::collections::BTreeSet;

const FLOW: &str = r#"
[flow]
start = "hello"
global_keys = { "0" = "queue" }
first_digit_timeout = 5
retries = 1
timeout_prompt = "again"
invalid_prompt = "bad"
fallback = "queue"

[nodes.hello]
type = "play"
prompts = ["hello"]
barge_in = true
next = "ask"

[nodes.ask]
type = "menu"
prompts = ["menu"]
options = { "1" = "queue", "2" = "deep" }

[nodes.deep]
type = "menu"
prompts = ["menu2"]
options = { "1" = "queue" }

[nodes.queue]
type = "queue"
prompts = ["connecting"]
busy_prompts = ["busy"]
fallback = "vm"

[nodes.vm]
type = "record"
prompts = ["vm_intro"]
max_seconds = 60
silence_seconds = 5
no_speech_prompt = "nospeech"
retries = 1
next = "bye"

[nodes.bye]
type = "hangup"
prompts = ["bye"]
"#;

fn lengths() -> BTreeMap<String, Duration> {
    [
        ("hello", 10.0),
        ("menu", 4.0),
        ("menu2", 3.0),
        ("again", 1.0),
        ("bad", 1.0),
        ("connecting", 2.0),
        ("busy", 3.0),
        ("vm_intro", 6.0),
        ("nospeech", 2.0),
        ("bye", 3.0),
        ("beep", 0.4),
    ]
    .into_iter()
    .map(|(id, s)| (id.to_owned(), Duration::from_secs_f64(s)))
    .collect()
}

fn flow(text: &str) -> Arc<Flow> {
    let flow = Flow::from_toml_str(text, "test.toml").unwrap();
    let ids: BTreeSet<String> = lengths().into_keys().collect();
    validate(&flow, &ids).unwrap();
    Arc::new(flow)
}

fn report(text: &str) -> PathReport {
    timed_paths(
        &flow(text),
        &PathInputs {
            prompt_lengths: lengths(),
            no_speech: Duration::from_secs(15),
            reference_digits: 7,
        },
        Instant::now(),
    )
}

fn seconds(r: &PathReport, caller: Caller, exit: Exit) -> f64 {
    let t = r
        .get(caller, exit)
        .unwrap_or_else(|| panic!("{caller:?} reaches {exit:?}: {r:#?}"));
    (t.seconds * 1000.0).round() / 1000.0
}

#[test]
fn every_caller_and_exit_worked_out_by_hand() {
    let r = report(FLOW);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    use Caller::*;
    use Exit::*;
    // 0 cuts the greeting short; "connecting"; or, with nobody logged in, the
    // voicemail introduction, an instant message and the goodbye.
    assert_eq!(seconds(&r, PressesZeroAtOnce, Queue), 2.0);
    assert_eq!(seconds(&r, PressesZeroAtOnce, Voicemail), 6.0);
    assert_eq!(seconds(&r, PressesZeroAtOnce, Hangup), 9.0);
    // The slowest answers: 2 in "ask", then 1 in "deep".
    assert_eq!(
        seconds(&r, AnswersEveryQuestion, Queue),
        10.0 + 4.0 + 3.0 + 2.0
    );
    assert_eq!(
        r.get(AnswersEveryQuestion, Queue).unwrap().path,
        ["hello", "ask", "deep", "queue"]
    );
    assert_eq!(seconds(&r, AnswersEveryQuestion, Voicemail), 17.0 + 6.0);
    assert_eq!(seconds(&r, AnswersEveryQuestion, Hangup), 23.0 + 3.0);
    // Greeting, question, wait, "again" + question, wait, then the fallback.
    let to_fallback = 10.0 + 4.0 + 5.0 + 1.0 + 4.0 + 5.0;
    assert_eq!(seconds(&r, PressesNothing, Queue), to_fallback + 2.0);
    assert_eq!(seconds(&r, PressesNothing, Voicemail), to_fallback + 6.0);
    // Silent twice (15 s each, the second after "nospeech" and the introduction).
    assert_eq!(
        seconds(&r, PressesNothing, Hangup),
        to_fallback + 6.0 + 15.0 + 2.0 + 6.0 + 15.0 + 3.0
    );
    // A wrong key as soon as the question has been asked, twice.
    assert_eq!(
        seconds(&r, PressesWrongKeys, Queue),
        10.0 + 4.0 + 1.0 + 4.0 + 2.0
    );
    assert_eq!(seconds(&r, PressesWrongKeys, Voicemail), 19.0 + 6.0);

    let worst = r.worst(Queue).unwrap();
    assert_eq!(worst.caller, PressesNothing);
    assert_eq!(worst.costly_node, "ask");
    assert_eq!(worst.costly_seconds, 4.0 + 5.0 + 1.0 + 4.0 + 5.0);
    assert_eq!(r.worst(Hangup).unwrap().caller, PressesNothing);
}

#[test]
fn limits_name_the_node_that_costs_most() {
    let ok = FLOW.replace(
        "fallback = \"queue\"\n\n",
        "fallback = \"queue\"\nmax_seconds_to_queue = 31\nmax_seconds_to_voicemail = 35\n\n",
    );
    let f = flow(&ok);
    assert!(check_limits(&f, &report(&ok)).is_empty());

    let tight = ok
        .replace("max_seconds_to_queue = 31", "max_seconds_to_queue = 30")
        .replace(
            "max_seconds_to_voicemail = 35",
            "max_seconds_to_voicemail = 34.5",
        );
    let errors: Vec<String> = check_limits(&flow(&tight), &report(&tight))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "test.toml: node \"ask\": a caller who presses nothing reaches the operator queue after 31.0 s, over [flow] max_seconds_to_queue = 30; this node takes 19.0 s of it",
            "test.toml: node \"ask\": a caller who presses nothing reaches the voicemail beep after 35.0 s, over [flow] max_seconds_to_voicemail = 34.5; this node takes 19.0 s of it",
        ]
    );
}

/// A long prompt in one node makes that node the costly one.
#[test]
fn a_slow_node_is_named() {
    let slow = FLOW.replace(
        "prompts = [\"menu2\"]",
        "prompts = [\"menu2\", \"hello\", \"hello\"]",
    );
    let r = report(&slow);
    let worst = r.get(Caller::AnswersEveryQuestion, Exit::Queue).unwrap();
    assert_eq!(worst.costly_node, "deep");
    assert_eq!(worst.seconds, 10.0 + 4.0 + 23.0 + 2.0);
}

/// The unit number takes every key, so the wrong-key caller can only stay silent
/// there until it times out.
#[test]
fn a_question_without_a_wrong_key_is_waited_out() {
    let text = FLOW.replace("start = \"hello\"", "start = \"unit\"")
        + r##"
[nodes.unit]
type = "collect"
prompts = ["menu2"]
min_digits = 0
max_digits = 5
terminator = "#"
skip_key = "*"
global_keys = false
first_digit_timeout = 7
retries = 0
next = "hello"
"##;
    let r = report(&text);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(
        seconds(&r, Caller::PressesWrongKeys, Exit::Queue),
        3.0 + 7.0 + 2.0
    );
    assert_eq!(
        seconds(&r, Caller::PressesNothing, Exit::Queue),
        3.0 + 7.0 + 2.0
    );
    // Answering skips it with "*" at once, then the greeting and the slowest answers.
    assert_eq!(
        seconds(&r, Caller::AnswersEveryQuestion, Exit::Queue),
        3.0 + 19.0
    );
    // 0 is a digit of the unit number here, not the way to an operator.
    let zero = r.get(Caller::PressesZeroAtOnce, Exit::Queue).unwrap();
    assert_eq!(zero.path[..2], ["unit", "hello"]);
}

#[test]
fn busy_operators_and_a_host_that_never_answers() {
    // Only free/nobody are modelled; the engine still bounds a silent host.
    let f = flow(FLOW);
    let mut engine = Engine::new(Arc::clone(&f));
    let t0 = Instant::now();
    engine.handle(Event::Answered, t0);
    engine.handle(Event::Digit('0'), t0);
    let actions: Vec<Action> = std::iter::from_fn(|| engine.poll_action()).collect();
    assert!(actions.contains(&Action::CheckOperators {
        node: "queue".into()
    }));
    let deadline = engine
        .poll_timeout()
        .expect("a deadline for the host's answer");
    assert_eq!(deadline - t0, crate::ivr::OPERATOR_CHECK_TIMEOUT);
    engine.handle_timeout(deadline);
    let actions: Vec<Action> = std::iter::from_fn(|| engine.poll_action()).collect();
    assert!(
        actions.contains(&Action::Enqueue {
            node: "queue".into()
        }),
        "joins without a word: {actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Play { .. })));
}

/// A flow whose answers lead round in a loop is reported, not run for ever.
#[test]
fn answers_that_loop_are_cut_off() {
    let looping = FLOW.replace(
        "options = { \"1\" = \"queue\" }",
        "options = { \"1\" = \"ask\" }",
    );
    let r = report(&looping);
    assert!(r.notes.iter().any(|n| n.contains("loop")), "{:?}", r.notes);
    // The other callers are still timed.
    assert_eq!(seconds(&r, Caller::PressesNothing, Exit::Queue), 31.0);
}
