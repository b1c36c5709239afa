//! The flow file (`config/ivr.toml`): its data model and TOML parsing.
//!
//! This module owns the schema, the defaults and the effective value of each
//! setting (node value, else `[flow]` value). It must not judge whether a flow
//! makes sense (that is `super::validate`) nor run one (`super::engine`).
//!
//! Durations are written in seconds, integer or fractional (`7`, `2.5`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::error::{FlowError, Problem};

/// A parsed flow. Parsing checks types and field names only: run
/// [`super::validate`] before handing a flow to an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// File name used in error messages.
    pub file: String,
    pub settings: Settings,
    pub nodes: BTreeMap<String, Node>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFile {
    flow: Settings,
    #[serde(default)]
    nodes: BTreeMap<String, Node>,
}

/// The `[flow]` table: start node, global keys and defaults for nodes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub start: String,
    /// Key -> node, honoured in every menu and collect that keeps global keys.
    #[serde(default)]
    pub global_keys: BTreeMap<String, String>,
    /// Replays the current question; absent means no repeat key.
    #[serde(default)]
    pub repeat_key: Option<char>,
    #[serde(default = "default_first_digit")]
    pub first_digit_timeout: Seconds,
    #[serde(default = "default_inter_digit")]
    pub inter_digit_timeout: Seconds,
    #[serde(default = "default_total")]
    pub total_timeout: Seconds,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub invalid_prompt: Option<String>,
    #[serde(default)]
    pub timeout_prompt: Option<String>,
    /// Where menus and collects go when retries run out, unless they say.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Longest time from the answer to joining the operator queue, for the slowest
    /// caller `hotline check --paths` models (usually one who presses nothing).
    #[serde(default = "default_max_to_queue")]
    pub max_seconds_to_queue: Seconds,
    /// Longest time from the answer to the voice message's beep, when no operator
    /// is logged in.
    #[serde(default = "default_max_to_voicemail")]
    pub max_seconds_to_voicemail: Seconds,
}

fn default_first_digit() -> Seconds {
    Seconds(8.0)
}
fn default_inter_digit() -> Seconds {
    Seconds(5.0)
}
fn default_total() -> Seconds {
    Seconds(45.0)
}
fn default_max_to_queue() -> Seconds {
    Seconds(60.0)
}
fn default_max_to_voicemail() -> Seconds {
    Seconds(90.0)
}
fn default_retries() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_reference_repeat() -> u32 {
    2
}
fn default_digit_prefix() -> String {
    "digit_".to_owned()
}
fn default_finish_keys() -> String {
    "#".to_owned()
}
fn default_store_timeout() -> Seconds {
    Seconds(5.0)
}
fn default_record_retries() -> u32 {
    1
}
fn default_min_digits() -> u32 {
    1
}

/// A duration in seconds as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Deserialize)]
#[serde(transparent)]
pub struct Seconds(pub f64);

impl Seconds {
    /// Longest duration the engine will arm; keeps `Instant` arithmetic sane
    /// even for a flow that skipped validation.
    const CEILING: Duration = Duration::from_secs(24 * 3600);

    /// Negative, NaN or absurd values become zero or one day instead of
    /// panicking; the validator reports them.
    pub fn duration(self) -> Duration {
        if self.0.is_nan() || self.0 <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(self.0).map_or(Self::CEILING, |d| d.min(Self::CEILING))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Node {
    Play(PlayNode),
    Menu(MenuNode),
    Collect(CollectNode),
    Record(RecordNode),
    Queue(QueueNode),
    SayReference(SayReferenceNode),
    Goto(GotoNode),
    Hangup(HangupNode),
}

/// Plays prompts, then goes on. Keys pressed meanwhile are kept for the next
/// menu or collect.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayNode {
    pub prompts: Vec<String>,
    pub next: String,
    /// A key cuts the prompts short (the key is still kept for the next menu).
    #[serde(default)]
    pub barge_in: bool,
}

/// A single-key question.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MenuNode {
    pub prompts: Vec<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub first_digit_timeout: Option<Seconds>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub invalid_prompt: Option<String>,
    #[serde(default)]
    pub timeout_prompt: Option<String>,
    #[serde(default)]
    pub fallback: Option<String>,
    #[serde(default = "default_true")]
    pub barge_in: bool,
    #[serde(default)]
    pub flush_type_ahead: bool,
    #[serde(default)]
    pub store_as: Option<String>,
    #[serde(default = "default_true")]
    pub global_keys: bool,
}

/// What counts as an entered character in a collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// 0-9 only.
    #[default]
    Digits,
    /// Any keypad key that is not the terminator or skip key.
    Keypad,
}

impl Pattern {
    pub fn accepts(self, key: char) -> bool {
        match self {
            Pattern::Digits => key.is_ascii_digit(),
            Pattern::Keypad => is_keypad_key(key),
        }
    }
}

/// A multi-digit answer such as a unit number.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectNode {
    pub prompts: Vec<String>,
    /// 0 lets the terminator alone give an empty answer.
    #[serde(default = "default_min_digits")]
    pub min_digits: u32,
    pub max_digits: u32,
    #[serde(default)]
    pub terminator: Option<char>,
    /// Skips the question, storing an empty answer.
    #[serde(default)]
    pub skip_key: Option<char>,
    #[serde(default)]
    pub pattern: Pattern,
    #[serde(default)]
    pub first_digit_timeout: Option<Seconds>,
    #[serde(default)]
    pub inter_digit_timeout: Option<Seconds>,
    #[serde(default)]
    pub total_timeout: Option<Seconds>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub invalid_prompt: Option<String>,
    #[serde(default)]
    pub timeout_prompt: Option<String>,
    pub next: String,
    #[serde(default)]
    pub fallback: Option<String>,
    #[serde(default = "default_true")]
    pub barge_in: bool,
    #[serde(default)]
    pub flush_type_ahead: bool,
    #[serde(default)]
    pub store_as: Option<String>,
    #[serde(default = "default_true")]
    pub global_keys: bool,
}

/// A voice message. Keys during recording belong to the recorder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordNode {
    pub prompts: Vec<String>,
    #[serde(default = "default_true")]
    pub beep: bool,
    pub max_seconds: Seconds,
    pub silence_seconds: Seconds,
    #[serde(default = "default_finish_keys")]
    pub finish_keys: String,
    /// Played only once the host confirms the message is durable.
    #[serde(default)]
    pub confirm_prompt: Option<String>,
    /// Played when storing failed, before going to `fallback`.
    #[serde(default)]
    pub failure_prompt: Option<String>,
    /// Played before recording again when the caller said nothing.
    #[serde(default)]
    pub no_speech_prompt: Option<String>,
    /// Extra attempts when the caller said nothing.
    #[serde(default = "default_record_retries")]
    pub retries: u32,
    /// How long to wait for the host to confirm storage before apologising.
    #[serde(default = "default_store_timeout")]
    pub store_timeout: Seconds,
    pub next: String,
    /// Where to go when storing failed; `next` if absent.
    #[serde(default)]
    pub fallback: Option<String>,
}

/// Hands the caller to the operators' queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueNode {
    /// Played before joining the queue when an operator is free ("connecting").
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Played before joining the queue when every operator is busy.
    #[serde(default)]
    pub busy_prompts: Vec<String>,
    /// Used when the queue is unavailable, empty of operators, timed out or
    /// the caller chose to leave a message.
    #[serde(default)]
    pub fallback: Option<String>,
}

/// Reads the call's reference code digit by digit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SayReferenceNode {
    /// Played before the digits.
    pub prompts: Vec<String>,
    /// How many times the code is read; bad links lose digits.
    #[serde(default = "default_reference_repeat")]
    pub repeat: u32,
    /// Played between readings.
    #[serde(default)]
    pub repeat_prompt: Option<String>,
    /// Played after the last reading.
    #[serde(default)]
    pub after_prompts: Vec<String>,
    /// Digit `d` is read with prompt `<prefix>d`.
    #[serde(default = "default_digit_prefix")]
    pub digit_prompt_prefix: String,
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GotoNode {
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HangupNode {
    /// Goodbye, played before hanging up.
    #[serde(default)]
    pub prompts: Vec<String>,
}

pub(super) fn is_keypad_key(key: char) -> bool {
    matches!(key, '0'..='9' | '*' | '#')
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Play(_) => "play",
            Node::Menu(_) => "menu",
            Node::Collect(_) => "collect",
            Node::Record(_) => "record",
            Node::Queue(_) => "queue",
            Node::SayReference(_) => "say_reference",
            Node::Goto(_) => "goto",
            Node::Hangup(_) => "hangup",
        }
    }

    /// Nodes where the call can rest on the caller or the host: anything else
    /// moves on by itself.
    pub fn waits_for_caller(&self) -> bool {
        matches!(
            self,
            Node::Menu(_) | Node::Collect(_) | Node::Record(_) | Node::Queue(_) | Node::Hangup(_)
        )
    }
}

impl Flow {
    pub fn from_toml_str(text: &str, file_name: &str) -> Result<Flow, FlowError> {
        let parsed: FlowFile =
            toml::from_str(text).map_err(|e| syntax_error(text, file_name, &e))?;
        Ok(Flow {
            file: file_name.to_owned(),
            settings: parsed.flow,
            nodes: parsed.nodes,
        })
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Where a node sends a caller who never presses a valid key, or who is
    /// not served (queue), or whose message failed to store (record).
    pub fn fallback_of<'a>(&'a self, node: &'a Node) -> Option<&'a str> {
        match node {
            Node::Menu(m) => m.fallback.as_deref().or(self.settings.fallback.as_deref()),
            Node::Collect(c) => c.fallback.as_deref().or(self.settings.fallback.as_deref()),
            Node::Record(r) => Some(r.fallback.as_deref().unwrap_or(&r.next)),
            Node::Queue(q) => q.fallback.as_deref(),
            _ => None,
        }
    }

    pub fn retries_of(&self, node: &Node) -> u32 {
        match node {
            Node::Menu(m) => m.retries.unwrap_or(self.settings.retries),
            Node::Collect(c) => c.retries.unwrap_or(self.settings.retries),
            Node::Record(r) => r.retries,
            _ => 0,
        }
    }

    pub fn invalid_prompt_of<'a>(&'a self, node: &'a Node) -> Option<&'a str> {
        let own = match node {
            Node::Menu(m) => m.invalid_prompt.as_deref(),
            Node::Collect(c) => c.invalid_prompt.as_deref(),
            _ => return None,
        };
        own.or(self.settings.invalid_prompt.as_deref())
    }

    pub fn timeout_prompt_of<'a>(&'a self, node: &'a Node) -> Option<&'a str> {
        let own = match node {
            Node::Menu(m) => m.timeout_prompt.as_deref(),
            Node::Collect(c) => c.timeout_prompt.as_deref(),
            _ => return None,
        };
        own.or(self.settings.timeout_prompt.as_deref())
    }

    pub fn first_digit_timeout_of(&self, node: &Node) -> Seconds {
        let own = match node {
            Node::Menu(m) => m.first_digit_timeout,
            Node::Collect(c) => c.first_digit_timeout,
            _ => None,
        };
        own.unwrap_or(self.settings.first_digit_timeout)
    }

    pub fn inter_digit_timeout_of(&self, node: &CollectNode) -> Seconds {
        node.inter_digit_timeout
            .unwrap_or(self.settings.inter_digit_timeout)
    }

    pub fn total_timeout_of(&self, node: &CollectNode) -> Seconds {
        node.total_timeout.unwrap_or(self.settings.total_timeout)
    }

    /// Whether the flow's global keys and repeat key work in this node.
    pub fn keeps_global_keys(&self, node: &Node) -> bool {
        match node {
            Node::Menu(m) => m.global_keys,
            Node::Collect(c) => c.global_keys,
            _ => false,
        }
    }

    pub fn global_target(&self, key: char) -> Option<&str> {
        let mut buf = [0u8; 4];
        self.settings
            .global_keys
            .get(&*key.encode_utf8(&mut buf))
            .map(String::as_str)
    }
}

/// Turns a TOML/serde error into one line naming the file, the node (when the
/// error is inside `[nodes.X]`), the line and the key.
fn syntax_error(text: &str, file: &str, err: &toml::de::Error) -> FlowError {
    let lines: Vec<&str> = text.lines().collect();
    let line = line_of(text, err.span().map_or(0, |s| s.start));
    let header = lines
        .iter()
        .take(line)
        .rposition(|l| l.trim_start().starts_with('['));
    let node = header
        .and_then(|h| lines[h].trim().strip_prefix("[nodes."))
        .and_then(|rest| rest.strip_suffix(']'))
        .map(|name| name.trim().trim_matches('"').to_owned());
    // Node tables are buffered to read their `type`, which loses the
    // position of a bad value; parsing the section alone recovers it.
    let refined = header
        .filter(|_| node.is_some() && err.message().starts_with("invalid"))
        .and_then(|h| reparse_node(&lines, h).map(|(sub_line, m)| (h + 1 + sub_line, m)));
    let (line, message) = refined.unwrap_or((line, err.message().to_owned()));
    let key = lines
        .get(line.wrapping_sub(1))
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let message = message.trim().replace('\n', " ");
    let message = match key {
        Some(key) if !message.contains(&format!("`{key}`")) => format!("{key}: {message}"),
        _ => message,
    };
    FlowError::new(file, node.as_deref(), Problem::Syntax { line, message })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |head| head.matches('\n').count() + 1)
}

/// Parses the lines after header `h` up to the next table as the node type
/// named by its `type` line, giving the error's line within that section.
fn reparse_node(lines: &[&str], h: usize) -> Option<(usize, String)> {
    let body: Vec<&str> = lines[h + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['))
        .copied()
        .collect();
    let mut kind = None;
    let section: String = body
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if k.trim() == "type" => {
                kind = Some(v.trim().trim_matches('"').to_owned());
                ""
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Option<toml::de::Error> {
        toml::from_str::<T>(s).err()
    }
    let err = match kind?.as_str() {
        "play" => parse::<PlayNode>(&section),
        "menu" => parse::<MenuNode>(&section),
        "collect" => parse::<CollectNode>(&section),
        "record" => parse::<RecordNode>(&section),
        "queue" => parse::<QueueNode>(&section),
        "say_reference" => parse::<SayReferenceNode>(&section),
        "goto" => parse::<GotoNode>(&section),
        "hangup" => parse::<HangupNode>(&section),
        _ => None,
    }?;
    let span = err.span()?;
    Some((line_of(&section, span.start), err.message().to_owned()))
}
