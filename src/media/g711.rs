//! G.711 µ-law / A-law, the two codecs every SIP phone and trunk speaks.
//!
//! The sample conversion comes from `audio-codec-algorithms` (bit-exact with ITU G.191);
//! this module only adds the codec identity (payload type, SDP name) and slice helpers.
//! Decoding goes through 256-entry tables built once, since it runs for every received
//! packet of every call.

use std::sync::OnceLock;

use crate::call::Codec;

pub fn encode_sample(codec: Codec, sample: i16) -> u8 {
    match codec {
        Codec::Pcmu => audio_codec_algorithms::encode_ulaw(sample),
        Codec::Pcma => audio_codec_algorithms::encode_alaw(sample),
    }
}

pub fn decode_sample(codec: Codec, byte: u8) -> i16 {
    decode_table(codec)[byte as usize]
}

/// Encodes `pcm` into `out` (cleared first).
pub fn encode(codec: Codec, pcm: &[i16], out: &mut Vec<u8>) {
    out.clear();
    out.extend(pcm.iter().map(|&s| encode_sample(codec, s)));
}

/// Decodes `payload` and appends the samples to `out`.
pub fn decode_into(codec: Codec, payload: &[u8], out: &mut Vec<i16>) {
    let table = decode_table(codec);
    out.extend(payload.iter().map(|&b| table[b as usize]));
}

fn decode_table(codec: Codec) -> &'static [i16; 256] {
    static ULAW: OnceLock<[i16; 256]> = OnceLock::new();
    static ALAW: OnceLock<[i16; 256]> = OnceLock::new();
    match codec {
        Codec::Pcmu => ULAW
            .get_or_init(|| std::array::from_fn(|b| audio_codec_algorithms::decode_ulaw(b as u8))),
        Codec::Pcma => ALAW
            .get_or_init(|| std::array::from_fn(|b| audio_codec_algorithms::decode_alaw(b as u8))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_library_for_every_byte() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for b in 0..=255u8 {
                let expected = match codec {
                    Codec::Pcmu => audio_codec_algorithms::decode_ulaw(b),
                    Codec::Pcma => audio_codec_algorithms::decode_alaw(b),
                };
                assert_eq!(decode_sample(codec, b), expected);
            }
        }
    }

    #[test]
    fn every_code_round_trips_through_its_decoded_value() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for b in 0..=255u8 {
                let s = decode_sample(codec, b);
                let back = encode_sample(codec, s);
                // µ-law has two codes for zero (0x7F and 0xFF); both decode to 0.
                assert_eq!(decode_sample(codec, back), s, "{codec:?} byte {b:#x}");
            }
        }
    }

    #[test]
    fn quantisation_error_is_bounded_over_all_samples() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for s in i16::MIN..=i16::MAX {
                let d = decode_sample(codec, encode_sample(codec, s)) as i32;
                let err = (d - s as i32).abs();
                // Largest G.711 step is 1024 (µ-law) at full scale; error is at most half
                // a step plus the clipping at the extremes.
                assert!(err <= 1100, "{codec:?} {s} -> {d}");
            }
        }
    }

    #[test]
    fn payload_types_and_names() {
        assert_eq!(Codec::from_payload_type(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(18), None);
        assert_eq!(Codec::from_sdp_name("pcma"), Some(Codec::Pcma));
        assert_eq!(Codec::Pcmu.silence_byte(), 0xFF);
    }
}
