//! SIP framing and validation: one input as a UDP datagram (strict and lenient
//! framing), then the same bytes through the stream framer in pieces whose sizes the
//! input chooses, every framed message through request or response validation.
#![no_main]

use hotline::sip::message::{validate_request, validate_response};
use hotline::sip::raw::{self, RawMessage, StartLine, StreamFramer, StreamItem};
use libfuzzer_sys::fuzz_target;

fn validate(raw: RawMessage) {
    // What the endpoint reads of a message it keeps: exercised for its own panics.
    let _ = raw.method();
    let _ = raw.normalized_bytes();
    match raw.start {
        StartLine::Request { .. } => {
            if let Ok(req) = validate_request(raw) {
                let _ = req.top_via();
                let _ = req.content_type();
            }
        }
        StartLine::Response { .. } => {
            let _ = validate_response(raw);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = raw::frame_datagram(data) {
        validate(raw);
    }
    match raw::frame_datagram_lenient(data) {
        Ok(raw) => validate(raw),
        Err((_, Some(partial))) => {
            let _ = partial.method();
        }
        Err(_) => {}
    }

    // The first byte picks the piece size, so messages split at every offset are met.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut framer = StreamFramer::new(4096);
    for piece in rest.chunks(chunk) {
        framer.push(piece);
        while let Some(item) = framer.next_item() {
            match item {
                StreamItem::Message(raw) => validate(raw),
                StreamItem::Fatal(..) => return,
            }
        }
    }
});
