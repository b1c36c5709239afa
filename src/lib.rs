//! hotline: a SIP voice hotline. See docs/architecture.md for the map.

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod ivr;
pub mod keys;
pub mod maintenance;
pub mod media;
pub mod privacy;
pub mod queue;
pub mod sdp;
pub mod server;
pub mod sip;
pub mod store;
pub mod uac;
pub mod vault;
