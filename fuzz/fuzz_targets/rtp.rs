//! Received RTP: the media session (reorder buffer, G.711, RFC 4733 events, in-band
//! detection, voice-message stop rules, the bridge tap) and the RFC 4733 receiver on
//! its own.
//!
//! Input: one byte of session set-up, then records of
//! `[length: u16 LE][time step: u8, in ms][packet]`; a tick runs every 20 ms of
//! simulated time, as the media clock would.
#![no_main]

use hotline::call::Codec;
use hotline::media::rfc4733::Rfc4733Receiver;
use hotline::media::rtp::{RtpSender, MAX_PACKET};
use hotline::media::session::{MediaSession, RecordSpec};
use hotline::media::voicemail::VoicemailStopConfig;
use libfuzzer_sys::fuzz_target;

const TELEPHONE_EVENT_PT: u8 = 101;

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let codec = if setup & 1 == 0 {
        Codec::Pcmu
    } else {
        Codec::Pcma
    };
    let te = (setup & 2 != 0).then_some(TELEPHONE_EVENT_PT);
    let mut session = MediaSession::new(codec, te, setup & 4 != 0, RtpSender::new(1, 2, 3));
    if setup & 8 != 0 {
        let spec = RecordSpec {
            stop: VoicemailStopConfig {
                max_length_ms: 2000,
                ..VoicemailStopConfig::default()
            },
        };
        session.start_recording(&spec).expect("first recording");
    }
    if setup & 16 != 0 {
        session.start_relay();
    }
    let mut receiver = Rfc4733Receiver::new(8000);
    let mut out = [0u8; MAX_PACKET];
    let mut now_ms = 0u64;
    let mut next_tick = 0u64;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        now_ms += u64::from(rest[2]);
        rest = &rest[3..];
        let packet = &rest[..len.min(rest.len())];
        rest = &rest[packet.len()..];

        while next_tick <= now_ms {
            let n = session.on_tick(&mut out);
            assert!(n <= MAX_PACKET);
            next_tick += 20;
            let _ = session.take_recorded_audio(160);
            session.drain_relay_audio(|pcm| assert!(pcm.len() <= 1600));
            while session.poll_relay_digit().is_some() {}
            while session.poll_event().is_some() {}
        }
        session.on_rtp(packet, now_ms);
        if let Ok(rtp) = rtp_rs::RtpReader::new(packet) {
            let _ = receiver.on_packet(rtp.timestamp(), rtp.mark(), rtp.payload(), now_ms);
        }
    }
    session.stop_recording();
    while session.poll_event().is_some() {}
});
