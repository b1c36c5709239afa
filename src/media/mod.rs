//! Media: RTP streams, codecs and the shared media clock.
//!
//! `g711` and `rtp` are sans-IO building blocks; `engine` is the tokio layer that owns
//! RTP sockets and paces every call's packets from one clock.

pub mod bridge;
pub mod core;
pub mod dtmf;
pub mod engine;
pub mod g711;
pub mod inband;
pub mod level;
pub mod overload;
pub mod pacing;
pub mod prompt;
pub mod realtime;
pub mod receiver;
pub mod recording_sink;
pub mod reorder;
pub mod rfc4733;
pub mod rtp;
pub mod session;
pub mod sip_info;
pub mod srtp;
pub mod srtp_leg;
pub mod tone;
pub mod voicemail;
