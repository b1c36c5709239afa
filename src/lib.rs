//! hotline: a SIP voice hotline. See docs/architecture.md for the map.

pub mod accounts;
pub mod admin;
pub mod app;
pub mod call;
pub mod capacity;
pub mod config;
pub mod console;
pub mod control;
pub mod driver;
pub mod ivr;
pub mod keys;
pub mod maintenance;
pub mod media;
pub mod metrics;
pub mod privacy;
pub mod prompts;
pub mod queue;
pub mod reference;
pub mod sdp;
pub mod serve;
pub mod sip;
pub mod store;
pub mod trunk;
pub mod uac;
pub mod vault;
pub mod wav;
