//! Requests the hotline sends outside any dialog on behalf of another state machine (a
//! trunk's REGISTER and OPTIONS): the endpoint runs their client transactions in its
//! shared tables and hands back the final response, or the timeout, under the tag the
//! sender chose.

use super::raw::RawHeader;

/// The end of a request sent with `Endpoint::send_client_request`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientResult {
    /// A final response (provisional ones are absorbed).
    Response {
        tag: u64,
        code: u16,
        reason: String,
        /// As received, names in lower-case long form.
        headers: Vec<RawHeader>,
    },
    /// No final response within 64*T1 (RFC 3261 timer F).
    Timeout { tag: u64 },
}

impl ClientResult {
    pub fn tag(&self) -> u64 {
        match self {
            ClientResult::Response { tag, .. } | ClientResult::Timeout { tag } => *tag,
        }
    }
}
