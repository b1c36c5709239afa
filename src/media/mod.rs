//! Media: RTP streams, codecs and the shared media clock.
//!
//! `g711` and `rtp` are sans-IO building blocks; `engine` is the tokio layer that owns
//! RTP sockets and paces every call's packets from one clock.

pub mod engine;
pub mod g711;
pub mod level;
pub mod prompt;
pub mod recorder;
pub mod reorder;
pub mod rtp;
