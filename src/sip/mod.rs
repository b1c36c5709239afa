//! SIP: framing, validation, transactions, dialogs and the call endpoint.
//!
//! The only module that names rsipstack (in `message`, as the parser gate), so that a
//! switch of SIP library stays local. `transport` is the thin tokio layer; everything
//! else here is sans-IO.

pub mod admission;
pub mod client;
mod dialog;
pub mod digest;
pub mod endpoint;
pub mod headers;
mod inbound;
pub mod message;
pub mod operators;
mod outbound;
pub mod raw;
pub mod registrar;
pub mod scan;
pub mod stream_limits;
pub mod tls;
pub mod transaction;
mod transactions;
pub mod transport;

pub use endpoint::{Endpoint, EndpointConfig, Output};
pub use transaction::TimerConfig;
