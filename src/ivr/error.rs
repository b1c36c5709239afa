//! Errors about a flow file, worded for the administrator who edits it.
//!
//! Every error names the file and, where there is one, the node; the text must
//! say what is wrong in the admin's terms (keys, nodes, prompts), never in
//! terms of Rust types. This module must not decide what is an error.

use std::fmt;

/// One problem in a flow file, e.g.
/// `ivr.toml: node "situation": option "4" goes to unknown node "nowhere"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    pub file: String,
    pub node: Option<String>,
    pub problem: Problem,
}

impl FlowError {
    pub(super) fn new(file: &str, node: Option<&str>, problem: Problem) -> Self {
        Self {
            file: file.to_owned(),
            node: node.map(str::to_owned),
            problem,
        }
    }
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(node) = &self.node {
            write!(f, "node \"{node}\": ")?;
        }
        write!(f, "{}", self.problem)
    }
}

impl std::error::Error for FlowError {}

/// What is wrong. `field` strings name the TOML key, e.g. `option "4"`,
/// `fallback`, `global key "0"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("{0}")]
    TooSlow(Box<SlowPath>),
    #[error("start node \"{0}\" does not exist")]
    MissingStart(String),
    #[error("{field} goes to unknown node \"{target}\"")]
    UnknownTarget { field: String, target: String },
    #[error("cannot be reached from the start node or a global key")]
    Unreachable,
    #[error("{field} uses prompt \"{prompt}\", which has no audio file")]
    MissingPrompt { field: String, prompt: String },
    #[error("has no prompts: the caller would hear silence")]
    NoPrompts,
    #[error("menu has no options and no fallback: the caller could never leave it")]
    NoWayOut,
    #[error("has no fallback (set `fallback` here or in [flow]): a caller who presses nothing would be stuck")]
    NoFallback,
    #[error("queue has no fallback: callers would be left waiting when no operator is free")]
    QueueWithoutFallback,
    #[error("{} loops forever without waiting for the caller", path.join(" -> "))]
    EndlessLoop { path: Vec<String> },
    #[error("a caller who presses nothing goes round {} forever; let one of them fall back to voicemail or a goodbye", path.join(" -> "))]
    NoInputLoop { path: Vec<String> },
    #[error("{field} is not a single keypad key (0-9, * or #)")]
    BadKey { field: String },
    #[error("key \"{key}\" is both {first} and {second}")]
    KeyClash {
        key: char,
        first: String,
        second: String,
    },
    #[error("{field} = {value} is out of range ({range})")]
    OutOfRange {
        field: String,
        value: String,
        range: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A caller who takes longer than a `[flow]` limit to reach an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowPath {
    /// The `[flow]` key, e.g. `max_seconds_to_queue`.
    pub field: &'static str,
    pub limit_ms: u64,
    pub caller: &'static str,
    pub exit: &'static str,
    pub ms: u64,
    /// Time spent in the node the error names.
    pub node_ms: u64,
}

impl fmt::Display for SlowPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |ms: u64| ms as f64 / 1000.0;
        write!(
            f,
            "{} reaches the {} after {:.1} s, over [flow] {} = {}; this node takes {:.1} s of it",
            self.caller,
            self.exit,
            s(self.ms),
            self.field,
            s(self.limit_ms),
            s(self.node_ms)
        )
    }
}
