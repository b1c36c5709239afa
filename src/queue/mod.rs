//! Operators and waiting callers. `core` is the sans-IO queue; the I/O around it
//! (offering calls over SIP, bridging) lives with the server.

pub mod core;
