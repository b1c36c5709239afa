//! The voice menu (IVR): the flow file format, its validator, the prompt
//! catalogue and the per-call engine that walks a flow.
//!
//! Nothing here does I/O on its own: the host reads files, plays audio, records
//! and talks SIP, feeding the engine events and carrying out its actions. This
//! module must not reach into SIP, RTP or storage.

mod engine;
mod error;
mod flow;
pub mod paths;
mod prompts;
mod validate;

pub use engine::{
    Action, Engine, Event, HangupReason, Operators, PlayId, QueueOutcome, RecordStop,
    OPERATOR_CHECK_TIMEOUT,
};
pub use error::{FlowError, Problem, SlowPath};
pub use flow::{
    CollectNode, Flow, GotoNode, HangupNode, MenuNode, Node, Pattern, PlayNode, QueueNode,
    RecordNode, SayReferenceNode, Seconds, Settings,
};
pub use prompts::{PromptCatalog, Tone};
pub use validate::validate;
