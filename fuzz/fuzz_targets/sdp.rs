//! SDP offers: parse, choose a codec, and the answer we would send must parse again
//! and name the codec we chose.
#![no_main]

use hotline::call::Codec;
use hotline::sdp::{self, SdpOrigin};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = sdp::parse(data) else {
        return;
    };
    let _ = offer.direction.peer_holds();
    let Ok(codec) = sdp::choose_codec(&offer, &[Codec::Pcmu, Codec::Pcma]) else {
        return;
    };
    let origin = SdpOrigin {
        session_id: 1,
        version: 1,
    };
    let text = sdp::answer(
        &offer,
        codec,
        origin,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        20000,
    );
    let again = sdp::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("our answer does not parse: {e}\n{text}"));
    assert!(again.codecs.contains(&codec), "{text}");
});
