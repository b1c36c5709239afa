//! Checks that a parsed flow can be run safely: every target exists, every
//! prompt has audio, every node is reachable, keys do not clash, timeouts are
//! sane, and no caller can be stuck in a menu or a loop.
//!
//! It owns the rules and collects every problem at once so an admin can fix a
//! file in one pass. It must not change the flow or run it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::error::{FlowError, Problem};
use super::flow::{is_keypad_key, CollectNode, Flow, MenuNode, Node, RecordNode, Seconds};

const FIRST_DIGIT: (f64, f64) = (1.0, 60.0);
const INTER_DIGIT: (f64, f64) = (1.0, 30.0);
const TOTAL: (f64, f64) = (2.0, 600.0);
const RECORD_MAX: (f64, f64) = (5.0, 600.0);
const RECORD_SILENCE: (f64, f64) = (1.0, 60.0);
const STORE_TIMEOUT: (f64, f64) = (1.0, 30.0);
const PATH_LIMIT: (f64, f64) = (1.0, 3600.0);
const MAX_RETRIES: u32 = 9;
const MAX_DIGITS: u32 = 32;

/// Checks `flow` against the prompt ids that have audio. Returns every
/// problem found, in file order of nodes.
pub fn validate(
    flow: &Flow,
    available_prompt_ids: &BTreeSet<String>,
) -> Result<(), Vec<FlowError>> {
    let mut v = Validator {
        flow,
        prompts: available_prompt_ids,
        errors: Vec::new(),
    };
    v.settings();
    for (name, node) in &flow.nodes {
        v.node(name, node);
    }
    if flow.nodes.contains_key(&flow.settings.start) {
        v.reachability();
    }
    v.loops();
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

struct Validator<'a> {
    flow: &'a Flow,
    prompts: &'a BTreeSet<String>,
    errors: Vec<FlowError>,
}

impl Validator<'_> {
    fn error(&mut self, node: Option<&str>, problem: Problem) {
        self.errors
            .push(FlowError::new(&self.flow.file, node, problem));
    }

    fn target(&mut self, node: Option<&str>, field: &str, target: &str) {
        if !self.flow.nodes.contains_key(target) {
            self.error(
                node,
                Problem::UnknownTarget {
                    field: field.to_owned(),
                    target: target.to_owned(),
                },
            );
        }
    }

    fn prompt(&mut self, node: Option<&str>, field: &str, prompt: &str) {
        if !self.prompts.contains(prompt) {
            self.error(
                node,
                Problem::MissingPrompt {
                    field: field.to_owned(),
                    prompt: prompt.to_owned(),
                },
            );
        }
    }

    fn prompt_list(&mut self, node: Option<&str>, field: &str, prompts: &[String], required: bool) {
        if required && prompts.is_empty() {
            self.error(node, Problem::NoPrompts);
        }
        for p in prompts {
            self.prompt(node, field, p);
        }
    }

    fn optional_prompt(&mut self, node: Option<&str>, field: &str, prompt: Option<&String>) {
        if let Some(p) = prompt {
            self.prompt(node, field, p);
        }
    }

    fn seconds(&mut self, node: Option<&str>, field: &str, value: Seconds, (min, max): (f64, f64)) {
        // Written so that NaN fails too.
        if !(value.0 >= min && value.0 <= max) {
            self.error(
                node,
                Problem::OutOfRange {
                    field: field.to_owned(),
                    value: value.0.to_string(),
                    range: format!("{min}-{max} seconds"),
                },
            );
        }
    }

    fn count(&mut self, node: Option<&str>, field: &str, value: u32, min: u32, max: u32) {
        if !(min..=max).contains(&value) {
            self.error(
                node,
                Problem::OutOfRange {
                    field: field.to_owned(),
                    value: value.to_string(),
                    range: format!("{min}-{max}"),
                },
            );
        }
    }

    fn key(&mut self, node: Option<&str>, field: &str, key: &str) -> Option<char> {
        let mut chars = key.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if is_keypad_key(c) => Some(c),
            _ => {
                self.error(
                    node,
                    Problem::BadKey {
                        field: field.to_owned(),
                    },
                );
                None
            }
        }
    }

    fn settings(&mut self) {
        let s = &self.flow.settings;
        if !self.flow.nodes.contains_key(&s.start) {
            self.error(None, Problem::MissingStart(s.start.clone()));
        }
        for (key, target) in &s.global_keys {
            let field = format!("global key \"{key}\"");
            self.key(None, &field, key);
            self.target(None, &field, target);
        }
        if let Some(repeat) = s.repeat_key {
            if !is_keypad_key(repeat) {
                self.error(
                    None,
                    Problem::BadKey {
                        field: "repeat_key".into(),
                    },
                );
            }
            if let Some(target) = self.flow.global_target(repeat) {
                self.error(
                    None,
                    Problem::KeyClash {
                        key: repeat,
                        first: "the repeat key".into(),
                        second: format!("the global key to node \"{target}\""),
                    },
                );
            }
        }
        self.seconds(
            None,
            "first_digit_timeout",
            s.first_digit_timeout,
            FIRST_DIGIT,
        );
        self.seconds(
            None,
            "inter_digit_timeout",
            s.inter_digit_timeout,
            INTER_DIGIT,
        );
        self.seconds(None, "total_timeout", s.total_timeout, TOTAL);
        for (field, value) in [
            ("max_seconds_to_queue", s.max_seconds_to_queue),
            ("max_seconds_to_voicemail", s.max_seconds_to_voicemail),
        ] {
            self.seconds(None, field, value, PATH_LIMIT);
        }
        self.count(None, "retries", s.retries, 0, MAX_RETRIES);
        self.optional_prompt(None, "invalid_prompt", s.invalid_prompt.as_ref());
        self.optional_prompt(None, "timeout_prompt", s.timeout_prompt.as_ref());
        if let Some(fallback) = &s.fallback {
            self.target(None, "fallback", fallback);
        }
    }

    fn node(&mut self, name: &str, node: &Node) {
        let at = Some(name);
        match node {
            Node::Play(p) => {
                self.prompt_list(at, "prompts", &p.prompts, true);
                self.target(at, "next", &p.next);
            }
            Node::Menu(m) => self.menu(name, node, m),
            Node::Collect(c) => self.collect(name, node, c),
            Node::Record(r) => self.record(name, r),
            Node::Queue(q) => {
                self.prompt_list(at, "prompts", &q.prompts, false);
                self.prompt_list(at, "busy_prompts", &q.busy_prompts, false);
                match &q.fallback {
                    Some(f) => self.target(at, "fallback", f),
                    None => self.error(at, Problem::QueueWithoutFallback),
                }
            }
            Node::SayReference(s) => {
                self.prompt_list(at, "prompts", &s.prompts, false);
                self.optional_prompt(at, "repeat_prompt", s.repeat_prompt.as_ref());
                self.prompt_list(at, "after_prompts", &s.after_prompts, false);
                for d in 0..=9 {
                    self.prompt(
                        at,
                        "digit_prompt_prefix",
                        &format!("{}{d}", s.digit_prompt_prefix),
                    );
                }
                self.count(at, "repeat", s.repeat, 1, 3);
                self.target(at, "next", &s.next);
            }
            Node::Goto(g) => self.target(at, "next", &g.next),
            Node::Hangup(h) => self.prompt_list(at, "prompts", &h.prompts, false),
        }
    }

    /// Prompts, retries and fallback shared by menus and collects.
    fn question(
        &mut self,
        name: &str,
        node: &Node,
        prompts: &[String],
        own_fallback: Option<&String>,
    ) {
        let at = Some(name);
        self.prompt_list(at, "prompts", prompts, true);
        let (retries, invalid, timeout) = match node {
            Node::Menu(m) => (
                m.retries,
                m.invalid_prompt.as_ref(),
                m.timeout_prompt.as_ref(),
            ),
            Node::Collect(c) => (
                c.retries,
                c.invalid_prompt.as_ref(),
                c.timeout_prompt.as_ref(),
            ),
            _ => return,
        };
        if let Some(r) = retries {
            self.count(at, "retries", r, 0, MAX_RETRIES);
        }
        self.optional_prompt(at, "invalid_prompt", invalid);
        self.optional_prompt(at, "timeout_prompt", timeout);
        if let Some(f) = own_fallback {
            self.target(at, "fallback", f);
        }
        if let Some(t) = own_first_digit_timeout(node) {
            self.seconds(at, "first_digit_timeout", t, FIRST_DIGIT);
        }
    }

    fn menu(&mut self, name: &str, node: &Node, m: &MenuNode) {
        let at = Some(name);
        self.question(name, node, &m.prompts, m.fallback.as_ref());
        for (key, target) in &m.options {
            let field = format!("option \"{key}\"");
            if let Some(k) = self.key(at, &field, key) {
                if m.global_keys {
                    self.global_clash(name, k, &field);
                }
            }
            self.target(at, &field, target);
        }
        if self.flow.fallback_of(node).is_none() {
            let problem = if m.options.is_empty() {
                Problem::NoWayOut
            } else {
                Problem::NoFallback
            };
            self.error(at, problem);
        }
        if let Some(key) = &m.store_as {
            self.answer_key(name, key);
        }
    }

    fn collect(&mut self, name: &str, node: &Node, c: &CollectNode) {
        let at = Some(name);
        self.question(name, node, &c.prompts, c.fallback.as_ref());
        self.target(at, "next", &c.next);
        if self.flow.fallback_of(node).is_none() {
            self.error(at, Problem::NoFallback);
        }
        self.count(at, "max_digits", c.max_digits, 1, MAX_DIGITS);
        if c.min_digits > c.max_digits {
            self.error(
                at,
                Problem::Invalid(format!(
                    "min_digits ({}) is more than max_digits ({})",
                    c.min_digits, c.max_digits
                )),
            );
        }
        if let Some(t) = c.inter_digit_timeout {
            self.seconds(at, "inter_digit_timeout", t, INTER_DIGIT);
        }
        if let Some(t) = c.total_timeout {
            self.seconds(at, "total_timeout", t, TOTAL);
        }
        let (first, total) = (
            self.flow.first_digit_timeout_of(node),
            self.flow.total_timeout_of(c),
        );
        if total < first {
            self.error(
                at,
                Problem::Invalid(format!(
                    "total_timeout ({}) is shorter than first_digit_timeout ({})",
                    total.0, first.0
                )),
            );
        }

        let mut roles: Vec<(char, &str)> = Vec::new();
        for (field, key) in [("terminator", c.terminator), ("skip_key", c.skip_key)] {
            let Some(k) = key else { continue };
            if !is_keypad_key(k) {
                self.error(
                    at,
                    Problem::BadKey {
                        field: field.into(),
                    },
                );
            } else if c.pattern.accepts(k) {
                self.clash(name, k, &format!("the {field}"), "a key of the answer");
            }
            if let Some((_, other)) = roles.iter().find(|(r, _)| *r == k) {
                let other = format!("the {other}");
                self.clash(name, k, &other, &format!("the {field}"));
            }
            roles.push((k, field));
        }
        if c.global_keys {
            let keys: Vec<char> = self
                .flow
                .settings
                .global_keys
                .keys()
                .filter_map(|k| k.chars().next())
                .chain(self.flow.settings.repeat_key)
                .collect();
            for k in keys {
                if c.pattern.accepts(k) {
                    self.global_clash(name, k, "a key of the answer");
                } else if let Some((_, role)) = roles.iter().find(|(r, _)| *r == k) {
                    let role = format!("the {role}");
                    self.global_clash(name, k, &role);
                }
            }
        }
        if let Some(key) = &c.store_as {
            self.answer_key(name, key);
        }
    }

    fn clash(&mut self, name: &str, key: char, first: &str, second: &str) {
        self.error(
            Some(name),
            Problem::KeyClash {
                key,
                first: first.to_owned(),
                second: second.to_owned(),
            },
        );
    }

    /// `key` is used by the node as `role`; complain if it is also global.
    fn global_clash(&mut self, name: &str, key: char, role: &str) {
        let global = if self.flow.settings.repeat_key == Some(key) {
            Some("the repeat key".to_owned())
        } else {
            self.flow
                .global_target(key)
                .map(|t| format!("the global key to node \"{t}\""))
        };
        if let Some(global) = global {
            let second = format!("{global} (use another key or set `global_keys = false` here)");
            self.clash(name, key, role, &second);
        }
    }

    fn answer_key(&mut self, name: &str, key: &str) {
        if key.trim().is_empty() {
            self.error(Some(name), Problem::Invalid("store_as is empty".into()));
        }
    }

    fn record(&mut self, name: &str, r: &RecordNode) {
        let at = Some(name);
        self.prompt_list(at, "prompts", &r.prompts, true);
        if r.beep {
            self.prompt(at, "beep", "beep");
        }
        self.optional_prompt(at, "confirm_prompt", r.confirm_prompt.as_ref());
        self.optional_prompt(at, "failure_prompt", r.failure_prompt.as_ref());
        self.optional_prompt(at, "no_speech_prompt", r.no_speech_prompt.as_ref());
        self.seconds(at, "max_seconds", r.max_seconds, RECORD_MAX);
        self.seconds(at, "silence_seconds", r.silence_seconds, RECORD_SILENCE);
        if r.silence_seconds >= r.max_seconds {
            self.error(
                at,
                Problem::Invalid("silence_seconds must be shorter than max_seconds".into()),
            );
        }
        self.seconds(at, "store_timeout", r.store_timeout, STORE_TIMEOUT);
        self.count(at, "retries", r.retries, 0, 3);
        for k in r.finish_keys.chars() {
            if !is_keypad_key(k) {
                self.error(
                    at,
                    Problem::BadKey {
                        field: format!("finish_keys \"{k}\""),
                    },
                );
            }
        }
        self.target(at, "next", &r.next);
        if let Some(f) = &r.fallback {
            self.target(at, "fallback", f);
        }
    }

    fn reachability(&mut self) {
        let flow = self.flow;
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue: VecDeque<&str> = std::iter::once(flow.settings.start.as_str())
            .chain(flow.settings.global_keys.values().map(String::as_str))
            .collect();
        while let Some(name) = queue.pop_front() {
            let Some(node) = flow.node(name) else {
                continue;
            };
            if seen.insert(name) {
                queue.extend(targets(flow, node));
            }
        }
        for name in flow.nodes.keys() {
            if !seen.contains(name.as_str()) {
                self.error(Some(name), Problem::Unreachable);
            }
        }
    }

    /// Two walks over graphs where each node has at most one successor:
    /// `next` among nodes that never wait (a true endless loop), and the path
    /// of a caller who never presses a key.
    fn loops(&mut self) {
        let flow = self.flow;
        for path in cycles(flow, automatic_next) {
            self.error(Some(&path[0].clone()), Problem::EndlessLoop { path });
        }
        for path in cycles(flow, silent_next) {
            let endless = path
                .iter()
                .all(|n| flow.node(n).is_some_and(|n| !n.waits_for_caller()));
            if !endless {
                self.error(Some(&path[0].clone()), Problem::NoInputLoop { path });
            }
        }
    }
}

/// Where a node that never waits goes by itself.
fn automatic_next<'a>(_: &'a Flow, node: &'a Node) -> Option<&'a str> {
    match node {
        Node::Play(p) => Some(&p.next),
        Node::Goto(g) => Some(&g.next),
        Node::SayReference(s) => Some(&s.next),
        _ => None,
    }
}

/// Where a caller who never presses a key (nor speaks) goes next.
fn silent_next<'a>(flow: &'a Flow, node: &'a Node) -> Option<&'a str> {
    match node {
        Node::Menu(_) | Node::Collect(_) | Node::Queue(_) => flow.fallback_of(node),
        Node::Record(r) => Some(&r.next),
        Node::Hangup(_) => None,
        other => automatic_next(flow, other),
    }
}

/// The node's own first-digit timeout, if it sets one.
fn own_first_digit_timeout(node: &Node) -> Option<Seconds> {
    match node {
        Node::Menu(m) => m.first_digit_timeout,
        Node::Collect(c) => c.first_digit_timeout,
        _ => None,
    }
}

/// Every node a node can lead to, including the `[flow]` fallback it inherits.
fn targets<'a>(flow: &'a Flow, node: &'a Node) -> Vec<&'a str> {
    let mut out: Vec<&str> = match node {
        Node::Play(p) => vec![&p.next],
        Node::Menu(m) => m.options.values().map(String::as_str).collect(),
        Node::Collect(c) => vec![&c.next],
        Node::Record(r) => vec![&r.next],
        Node::SayReference(s) => vec![&s.next],
        Node::Goto(g) => vec![&g.next],
        Node::Queue(_) | Node::Hangup(_) => vec![],
    };
    out.extend(flow.fallback_of(node));
    out
}

/// Cycles in the graph where `step` gives each node's single successor, each
/// reported once, starting from its alphabetically first node and closed
/// (`a -> b -> a`).
fn cycles(
    flow: &Flow,
    step: for<'a> fn(&'a Flow, &'a Node) -> Option<&'a str>,
) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut found = Vec::new();
    for start in flow.nodes.keys() {
        let mut path: Vec<&str> = Vec::new();
        let mut current = Some(start.as_str());
        while let Some(name) = current {
            match marks.get(name) {
                Some(Mark::Done) => break,
                Some(Mark::OnPath) => {
                    let from = path.iter().position(|n| *n == name).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[from..].iter().map(|s| s.to_string()).collect();
                    let first = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                    cycle.rotate_left(first);
                    cycle.push(cycle[0].clone());
                    found.push(cycle);
                    break;
                }
                None => {}
            }
            let Some(node) = flow.node(name) else { break };
            marks.insert(name, Mark::OnPath);
            path.push(name);
            current = step(flow, node);
        }
        for name in path {
            marks.insert(name, Mark::Done);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivr::PromptCatalog;

    const DEFAULT_FLOW: &str =
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ivr.toml"));
    const RU_PROMPTS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts/ru/prompts.toml"
    ));

    fn prompts() -> BTreeSet<String> {
        ["hello", "menu", "bye", "beep", "oops", "wait"]
            .into_iter()
            .map(String::from)
            .chain((0..=9).map(|d| format!("digit_{d}")))
            .collect()
    }

    /// A small valid flow; tests append or replace nodes to break it.
    const BASE: &str = r#"
[flow]
start = "hello"
global_keys = { "0" = "queue" }
repeat_key = "*"
fallback = "queue"

[nodes.hello]
type = "play"
prompts = ["hello"]
next = "ask"

[nodes.ask]
type = "menu"
prompts = ["menu"]
options = { "1" = "bye", "2" = "queue" }

[nodes.queue]
type = "queue"
fallback = "message"

[nodes.message]
type = "record"
prompts = ["wait"]
max_seconds = 120
silence_seconds = 5
next = "bye"

[nodes.bye]
type = "hangup"
prompts = ["bye"]
"#;

    fn errors(toml: &str) -> Vec<String> {
        let flow = Flow::from_toml_str(toml, "ivr.toml").expect("parses");
        match validate(&flow, &prompts()) {
            Ok(()) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    fn with(extra: &str) -> String {
        format!("{BASE}\n{extra}")
    }

    #[track_caller]
    fn assert_has(errors: &[String], expected: &str) {
        assert!(
            errors.iter().any(|e| e == expected),
            "expected {expected:?} in {errors:#?}"
        );
    }

    #[test]
    fn base_flow_is_valid() {
        assert_eq!(errors(BASE), Vec::<String>::new());
    }

    #[test]
    fn default_flow_is_valid_with_the_russian_prompts() {
        let flow = Flow::from_toml_str(DEFAULT_FLOW, "ivr.toml").expect("default flow parses");
        let catalog =
            PromptCatalog::from_toml_str(RU_PROMPTS, "prompts.toml").expect("catalogue parses");
        assert_eq!(validate(&flow, &catalog.ids()), Ok(()));
    }

    #[test]
    fn unknown_option_target() {
        let toml = BASE.replace(r#""2" = "queue""#, r#""2" = "queue", "4" = "nowhere""#);
        assert_has(
            &errors(&toml),
            r#"ivr.toml: node "ask": option "4" goes to unknown node "nowhere""#,
        );
    }

    #[test]
    fn unknown_next_fallback_and_global_targets() {
        let toml = BASE
            .replace(r#"next = "ask""#, r#"next = "asq""#)
            .replace(r#"fallback = "message""#, r#"fallback = "mesage""#)
            .replace(r#"{ "0" = "queue" }"#, r#"{ "0" = "queue", "9" = "gone" }"#);
        let e = errors(&toml);
        assert_has(
            &e,
            r#"ivr.toml: node "hello": next goes to unknown node "asq""#,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "queue": fallback goes to unknown node "mesage""#,
        );
        assert_has(
            &e,
            r#"ivr.toml: global key "9" goes to unknown node "gone""#,
        );
    }

    #[test]
    fn missing_start() {
        let e = errors(&BASE.replace(r#"start = "hello""#, r#"start = "welcome""#));
        assert_has(&e, r#"ivr.toml: start node "welcome" does not exist"#);
        assert!(
            !e.iter().any(|e| e.contains("reached")),
            "no flood of unreachable: {e:#?}"
        );
    }

    #[test]
    fn unreachable_node() {
        let e = errors(&with("[nodes.orphan]\ntype = \"hangup\"\n"));
        assert_eq!(
            e,
            [r#"ivr.toml: node "orphan": cannot be reached from the start node or a global key"#]
        );
    }

    #[test]
    fn global_key_targets_count_as_reachable() {
        let toml = with("[nodes.help]\ntype = \"hangup\"\n").replace(
            r#"{ "0" = "queue" }"#,
            r##"{ "0" = "queue", "#" = "help" }"##,
        );
        assert_eq!(errors(&toml), Vec::<String>::new());
    }

    #[test]
    fn missing_prompts() {
        let toml = BASE
            .replace(r#"prompts = ["hello"]"#, r#"prompts = ["hello", "helo"]"#)
            .replace(
                "silence_seconds = 5",
                "silence_seconds = 5\nconfirm_prompt = \"saved\"",
            );
        let e = errors(&toml);
        assert_has(
            &e,
            r#"ivr.toml: node "hello": prompts uses prompt "helo", which has no audio file"#,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "message": confirm_prompt uses prompt "saved", which has no audio file"#,
        );
        let e = errors(&BASE.replace(
            r#"fallback = "queue""#,
            "fallback = \"queue\"\ninvalid_prompt = \"bad\"",
        ));
        assert_has(
            &e,
            r#"ivr.toml: invalid_prompt uses prompt "bad", which has no audio file"#,
        );
    }

    #[test]
    fn record_beep_needs_a_beep_prompt() {
        let flow = Flow::from_toml_str(BASE, "ivr.toml").unwrap();
        let mut ids = prompts();
        ids.remove("beep");
        let e: Vec<String> = validate(&flow, &ids)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            e,
            [r#"ivr.toml: node "message": beep uses prompt "beep", which has no audio file"#]
        );
    }

    #[test]
    fn menu_with_no_way_out() {
        let toml = BASE
            .replace("fallback = \"queue\"\n", "")
            .replace(r#"options = { "1" = "bye", "2" = "queue" }"#, "");
        let e = errors(&toml);
        assert_has(
            &e,
            r#"ivr.toml: node "ask": menu has no options and no fallback: the caller could never leave it"#,
        );
    }

    #[test]
    fn menu_without_fallback() {
        let e = errors(&BASE.replace("fallback = \"queue\"\n", ""));
        assert_has(
            &e,
            r#"ivr.toml: node "ask": has no fallback (set `fallback` here or in [flow]): a caller who presses nothing would be stuck"#,
        );
    }

    #[test]
    fn fallback_to_itself_is_a_no_input_loop() {
        let toml = BASE.replace(
            r#"options = { "1" = "bye", "2" = "queue" }"#,
            "options = { \"1\" = \"bye\", \"2\" = \"queue\" }\nfallback = \"ask\"",
        );
        assert_has(
            &errors(&toml),
            r#"ivr.toml: node "ask": a caller who presses nothing goes round ask -> ask forever; let one of them fall back to voicemail or a goodbye"#,
        );
    }

    #[test]
    fn loop_of_nodes_that_never_wait() {
        let toml = with(
            r#"
[nodes.again]
type = "goto"
next = "hello"
"#,
        )
        .replace(r#"next = "ask""#, r#"next = "again""#)
        .replace("[nodes.ask]", "[nodes.ask_unused]");
        let e = errors(&toml);
        assert_has(
            &e,
            r#"ivr.toml: node "again": again -> hello -> again loops forever without waiting for the caller"#,
        );
        assert!(!e.iter().any(|e| e.contains("presses nothing")), "{e:#?}");
    }

    #[test]
    fn queue_and_menu_falling_back_to_each_other() {
        let toml = BASE.replace(r#"fallback = "message""#, r#"fallback = "ask""#);
        assert_has(
            &errors(&toml),
            r#"ivr.toml: node "ask": a caller who presses nothing goes round ask -> queue -> ask forever; let one of them fall back to voicemail or a goodbye"#,
        );
    }

    #[test]
    fn option_keys() {
        let toml = BASE.replace(
            r#"options = { "1" = "bye", "2" = "queue" }"#,
            r#"options = { "1" = "bye", "12" = "bye", "a" = "bye", "0" = "bye", "*" = "bye" }"#,
        );
        let e = errors(&toml);
        assert_has(
            &e,
            r#"ivr.toml: node "ask": option "12" is not a single keypad key (0-9, * or #)"#,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "ask": option "a" is not a single keypad key (0-9, * or #)"#,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "ask": key "0" is both option "0" and the global key to node "queue" (use another key or set `global_keys = false` here)"#,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "ask": key "*" is both option "*" and the repeat key (use another key or set `global_keys = false` here)"#,
        );
    }

    #[test]
    fn opting_out_of_global_keys_frees_them() {
        let toml = BASE.replace(
            r#"options = { "1" = "bye", "2" = "queue" }"#,
            "options = { \"0\" = \"bye\", \"*\" = \"queue\" }\nglobal_keys = false",
        );
        assert_eq!(errors(&toml), Vec::<String>::new());
    }

    #[test]
    fn bad_global_and_repeat_keys() {
        let toml = BASE.replace(
            r#"{ "0" = "queue" }"#,
            r#"{ "0" = "queue", "*" = "bye", "00" = "bye" }"#,
        );
        let e = errors(&toml);
        assert_has(
            &e,
            r#"ivr.toml: global key "00" is not a single keypad key (0-9, * or #)"#,
        );
        assert_has(
            &e,
            r#"ivr.toml: key "*" is both the repeat key and the global key to node "bye""#,
        );
    }

    #[test]
    fn queue_without_fallback() {
        let e = errors(&BASE.replace("fallback = \"message\"\n", ""));
        assert_has(
            &e,
            r#"ivr.toml: node "queue": queue has no fallback: callers would be left waiting when no operator is free"#,
        );
    }

    #[test]
    fn timeouts_out_of_range() {
        let toml = BASE
            .replace(
                r#"fallback = "queue""#,
                "fallback = \"queue\"\ntotal_timeout = 1000\nretries = 20",
            )
            .replace(
                r#"prompts = ["menu"]"#,
                "prompts = [\"menu\"]\nfirst_digit_timeout = 0.5",
            )
            .replace("silence_seconds = 5", "silence_seconds = 200");
        let e = errors(&toml);
        assert_has(
            &e,
            "ivr.toml: total_timeout = 1000 is out of range (2-600 seconds)",
        );
        assert_has(&e, "ivr.toml: retries = 20 is out of range (0-9)");
        assert_has(
            &e,
            r#"ivr.toml: node "ask": first_digit_timeout = 0.5 is out of range (1-60 seconds)"#,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "message": silence_seconds = 200 is out of range (1-60 seconds)"#,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "message": silence_seconds must be shorter than max_seconds"#,
        );
    }

    #[test]
    fn collect_keys_and_lengths() {
        let toml = with(
            r##"
[nodes.number]
type = "collect"
prompts = ["menu"]
min_digits = 6
max_digits = 5
terminator = "#"
skip_key = "#"
next = "bye"
"##,
        )
        .replace(r#""2" = "queue""#, r#""2" = "number""#);
        let e = errors(&toml);
        assert_has(
            &e,
            r#"ivr.toml: node "number": min_digits (6) is more than max_digits (5)"#,
        );
        assert_has(
            &e,
            r##"ivr.toml: node "number": key "#" is both the terminator and the skip_key"##,
        );
        assert_has(
            &e,
            r#"ivr.toml: node "number": key "0" is both a key of the answer and the global key to node "queue" (use another key or set `global_keys = false` here)"#,
        );
        let e = errors(&toml.replace(r##"skip_key = "#""##, r#"skip_key = "*""#));
        assert_has(
            &e,
            r#"ivr.toml: node "number": key "*" is both the skip_key and the repeat key (use another key or set `global_keys = false` here)"#,
        );
    }

    #[test]
    fn empty_menu_prompts() {
        let e = errors(&BASE.replace(r#"prompts = ["menu"]"#, "prompts = []"));
        assert_has(
            &e,
            r#"ivr.toml: node "ask": has no prompts: the caller would hear silence"#,
        );
    }

    #[test]
    fn parse_errors_name_file_node_and_line() {
        let unknown = BASE.replace("prompts = [\"menu\"]", "prompts = [\"menu\"]\ntimeout = 5");
        let e = Flow::from_toml_str(&unknown, "ivr.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(r#"ivr.toml: node "ask": line "#), "{e}");
        assert!(e.contains("unknown field `timeout`"), "{e}");

        let missing = BASE.replace("next = \"bye\"\n", "");
        let e = Flow::from_toml_str(&missing, "ivr.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(r#"ivr.toml: node "message": "#), "{e}");
        assert!(e.contains("missing field `next`"), "{e}");

        let bad_type = BASE.replace("max_seconds = 120", "max_seconds = \"two minutes\"");
        let e = Flow::from_toml_str(&bad_type, "ivr.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(r#"ivr.toml: node "message": "#), "{e}");

        let bad_kind = BASE
            .replace("type = \"goto\"", "")
            .replace("type = \"play\"", "type = \"speak\"");
        let e = Flow::from_toml_str(&bad_kind, "ivr.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(r#"ivr.toml: node "hello": "#), "{e}");
        assert!(e.contains("speak"), "{e}");

        let e = Flow::from_toml_str("[flow]\nstart = \"a\"\nstrat = 1\n", "ivr.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ivr.toml: line "), "{e}");
        assert!(e.contains("unknown field `strat`"), "{e}");
    }

    #[test]
    fn path_limits_must_be_sane() {
        let e = errors(&BASE.replace(
            "[flow]\n",
            "[flow]\nmax_seconds_to_queue = 0\nmax_seconds_to_voicemail = 7200\n",
        ));
        assert_eq!(
            e,
            [
                "ivr.toml: max_seconds_to_queue = 0 is out of range (1-3600 seconds)",
                "ivr.toml: max_seconds_to_voicemail = 7200 is out of range (1-3600 seconds)",
            ]
        );
    }
}
