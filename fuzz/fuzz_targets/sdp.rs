//! SDP offers: parse, choose a codec, and the answer we would send must parse again
//! and name the codec we chose; an offer with a usable SDES line is answered with our
//! key under its tag, and that must read back.
#![no_main]

use hotline::call::{Codec, SrtpMasterKey};
use hotline::sdp::{self, sdes, SdpOrigin};
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
    let ours = match &offer.crypto {
        sdes::RemoteCrypto::Usable { tag, .. } => Some(sdes::LocalCrypto {
            tag: *tag,
            key: SrtpMasterKey::new([7; 16], [9; 14]),
            savp: offer.savp,
        }),
        _ => None,
    };
    let text = sdp::answer(
        &offer,
        codec,
        origin,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        20000,
        ours.as_ref(),
    );
    let again = sdp::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("our answer does not parse: {e}\n{text}"));
    assert!(again.codecs.contains(&codec), "{text}");
    if let Some(ours) = ours {
        assert_eq!(
            again.crypto,
            sdes::RemoteCrypto::Usable {
                tag: ours.tag,
                key: ours.key.clone()
            },
            "{text}"
        );
    }
});
