//! One call's media, sans-IO: what to send every 20 ms and what the received RTP
//! means (audio for a recording and the in-band detector, telephone-events, digits).
//!
//! Owns the per-call pipeline: prompt playback with barge-in, outgoing DTMF (RFC 4733
//! events or in-band tones), reorder buffer -> G.711 decode -> in-band detection ->
//! voice message audio with its stop rules, and the relay tap used while the call is
//! bridged to another leg (received audio and digits kept for the engine, the other
//! party's audio sent in this leg's codec). The caller of this type owns the socket
//! and the clock: `on_rtp` takes a received packet, `on_tick` fills the next packet
//! to send, events come out of `poll_event`, recorded audio out of
//! `take_recorded_audio`. Must not know about SIP or the IVR, and must not touch
//! files: a recording's audio goes to the engine's recording sink.

use super::g711::{self};
use super::inband::InbandDetector;
use super::prompt::{Prompt, PromptPlayer};
use super::reorder::{Frame, ReorderBuffer};
use super::rfc4733::{Rfc4733Receiver, Rfc4733Sender};
use super::rtp::{RtpSender, MAX_PACKET, SAMPLES_PER_FRAME};
use super::voicemail::{VoicemailStop, VoicemailStopConfig};
use crate::call::Codec;
use crate::call::StopReason;
use crate::call::{DigitEvent, DigitSource};
use std::collections::VecDeque;
use std::sync::Arc;

/// How digits we send leave the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfMode {
    Rfc4733,
    Inband,
}

#[derive(Debug)]
pub enum SessionEvent {
    Digit(DigitEvent),
    /// The prompts started with `play(token, ..)` have all been sent.
    PlayFinished(u64),
    /// The voice message ended: `audio` is what was received since the last
    /// `take_recorded_audio`, and the recording keeps its first `keep_samples` samples
    /// (trailing silence and overshoot are cut).
    RecordingStopped {
        reason: StopReason,
        keep_samples: u64,
        audio: Vec<i16>,
    },
}

/// What a recording should do with the caller's audio.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    pub stop: VoicemailStopConfig,
}

struct Recording {
    stop: VoicemailStop,
    /// Received audio not yet taken by the engine.
    audio: Vec<i16>,
}

/// Recorded audio held for the engine at most (60 s): it takes it every tick, so this
/// bounds memory only while the engine stalls; beyond it the oldest is dropped.
const RECORDING_BACKLOG: usize = 480_000;

/// Received audio kept for the bridge between two ticks: 200 ms (the engine takes it
/// every 20 ms; more only piles up while the engine stalls, and the oldest goes).
const RELAY_BACKLOG: usize = 1600;
/// Digits kept for the bridge between two ticks.
const RELAY_DIGITS: usize = 16;

/// The session's side of a bridge. Allocated when the bridge starts, never per packet.
struct Relay {
    /// Decoded audio received since the engine last took it.
    received: Vec<i16>,
    digits: VecDeque<DigitEvent>,
    /// The other party's audio for the next tick, in this leg's codec.
    next: Option<[u8; SAMPLES_PER_FRAME as usize]>,
}

impl Relay {
    fn push_audio(&mut self, pcm: &[i16]) {
        let pcm = &pcm[pcm.len().saturating_sub(RELAY_BACKLOG)..];
        let excess = (self.received.len() + pcm.len()).saturating_sub(RELAY_BACKLOG);
        if excess > 0 {
            self.received.drain(..excess);
        }
        self.received.extend_from_slice(pcm);
    }

    fn push_digit(&mut self, d: DigitEvent) {
        if self.digits.len() == RELAY_DIGITS {
            self.digits.pop_front();
        }
        self.digits.push_back(d);
    }
}

pub struct MediaSession {
    codec: Codec,
    telephone_event_pt: Option<u8>,
    rtp: RtpSender,
    player: PromptPlayer,
    play_token: Option<u64>,
    /// Audio that goes before prompts (in-band digits we send).
    injected: VecDeque<u8>,
    /// Telephone-event packets still to send: (payload, marker).
    events_out: VecDeque<([u8; 4], bool)>,
    event_timestamp: u32,
    reorder: ReorderBuffer,
    pcm: Vec<i16>,
    inband: Option<InbandDetector>,
    rfc4733: Rfc4733Receiver,
    recording: Option<Recording>,
    relay: Option<Box<Relay>>,
    /// Media time of received audio in ms (frames decoded × 20 ms).
    rx_ms: u64,
    events: VecDeque<SessionEvent>,
    pub packets_received: u64,
}

impl MediaSession {
    /// `inband` turns the Goertzel detector on (when the peer did not negotiate
    /// telephone-event, or when configured to listen anyway).
    /// `rtp` carries the stream's (random) SSRC, sequence and timestamp starts.
    pub fn new(codec: Codec, telephone_event_pt: Option<u8>, inband: bool, rtp: RtpSender) -> Self {
        MediaSession {
            codec,
            telephone_event_pt,
            rtp,
            player: PromptPlayer::new(),
            play_token: None,
            injected: VecDeque::new(),
            events_out: VecDeque::new(),
            event_timestamp: 0,
            reorder: ReorderBuffer::default(),
            pcm: Vec::with_capacity(320),
            inband: inband.then(InbandDetector::default),
            rfc4733: Rfc4733Receiver::default(),
            recording: None,
            relay: None,
            rx_ms: 0,
            events: VecDeque::new(),
            packets_received: 0,
        }
    }

    /// Re-negotiation (re-INVITE) may change codec or event payload type.
    pub fn update(&mut self, codec: Codec, telephone_event_pt: Option<u8>) {
        self.codec = codec;
        self.telephone_event_pt = telephone_event_pt;
    }

    /// In-band detection is for peers that did not negotiate telephone-event.
    pub fn set_inband(&mut self, on: bool) {
        match (on, self.inband.is_some()) {
            (true, false) => self.inband = Some(InbandDetector::default()),
            (false, true) => self.inband = None,
            _ => {}
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Whether the peer negotiated telephone-event (RFC 4733).
    pub fn has_telephone_event(&self) -> bool {
        self.telephone_event_pt.is_some()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    // ---- sending --------------------------------------------------------------

    /// Plays `prompts` in order, replacing whatever played before.
    pub fn play(&mut self, token: u64, prompts: Vec<Arc<Prompt>>, looping: bool) {
        self.player.stop();
        self.player = PromptPlayer::new();
        for p in prompts {
            self.player.enqueue(p);
        }
        self.player.set_looping(looping);
        self.play_token = Some(token);
        self.rtp.mark_talkspurt();
    }

    pub fn stop_playback(&mut self) {
        self.player.stop();
        self.play_token = None;
    }

    /// Queues a digit to send (the test caller's side).
    pub fn send_digit(&mut self, digit: char, duration_ms: u32, mode: DtmfMode) {
        match (mode, self.telephone_event_pt) {
            (DtmfMode::Rfc4733, Some(_)) => {
                if let Some(packets) = Rfc4733Sender::default().packets(digit, duration_ms, 10) {
                    self.events_out
                        .extend(packets.iter().map(|p| (p.payload, p.marker)));
                }
            }
            _ => {
                // Q.24-compliant level and timing: -8 dBm0 per tone, then a pause.
                let tone =
                    super::tone::dtmf_tone(digit, duration_ms, -8.0, 8000).unwrap_or_default();
                let mut encoded = Vec::with_capacity(tone.len());
                g711::encode(self.codec, &tone, &mut encoded);
                self.injected.extend(encoded);
                let pause = (duration_ms.max(60) * 8) as usize;
                self.injected
                    .extend(std::iter::repeat_n(self.codec.silence_byte(), pause));
            }
        }
    }

    /// Whether anything but silence is queued to send.
    pub fn is_sending_audio(&self) -> bool {
        !self.injected.is_empty() || !self.events_out.is_empty() || self.play_token.is_some()
    }

    /// Builds the packet for this 20 ms tick into `out` and returns its length. Always
    /// returns a packet: silence when nothing plays, so NAT bindings stay open and the
    /// caller never hears dead air as a dropped line.
    /// `frames` of time passed without a packet (the clock stalled): the timestamp
    /// jumps over them and the next packet is marked, so the peer plays a pause
    /// instead of discarding late audio; what was to be played is not consumed.
    pub fn skip_frames(&mut self, frames: u32) {
        self.rtp.skip_frames(frames);
    }

    pub fn on_tick(&mut self, out: &mut [u8; MAX_PACKET]) -> usize {
        // Taken every tick, so a relayed frame is never sent late.
        let relayed = self.relay.as_mut().and_then(|r| r.next.take());
        if let (Some((payload, marker)), Some(pt)) =
            (self.events_out.front().copied(), self.telephone_event_pt)
        {
            self.events_out.pop_front();
            if marker {
                self.event_timestamp = self.rtp.timestamp();
            }
            let n = self
                .rtp
                .build_event(pt, &payload, self.event_timestamp, marker, out);
            self.rtp.advance(SAMPLES_PER_FRAME);
            return n;
        }
        let pt = self.codec.payload_type();
        if !self.injected.is_empty() {
            let mut frame = [self.codec.silence_byte(); SAMPLES_PER_FRAME as usize];
            for b in frame.iter_mut() {
                match self.injected.pop_front() {
                    Some(x) => *b = x,
                    None => break,
                }
            }
            return self.rtp.build(pt, &frame, out);
        }
        if self.play_token.is_some() {
            if let Some(frame) = self.player.next_frame(self.codec) {
                let mut buf = [0u8; SAMPLES_PER_FRAME as usize];
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                return self.rtp.build(pt, &buf[..n], out);
            }
            if let Some(token) = self.play_token.take() {
                self.events.push_back(SessionEvent::PlayFinished(token));
            }
        }
        if let Some(frame) = relayed {
            return self.rtp.build(pt, &frame, out);
        }
        let silence = [self.codec.silence_byte(); SAMPLES_PER_FRAME as usize];
        self.rtp.build(pt, &silence, out)
    }

    // ---- receiving ------------------------------------------------------------

    /// A packet arrived from the peer's media address.
    pub fn on_rtp(&mut self, packet: &[u8], now_ms: u64) {
        let Ok(rtp) = rtp_rs::RtpReader::new(packet) else {
            return;
        };
        self.packets_received += 1;
        let pt = rtp.payload_type();
        if Some(pt) == self.telephone_event_pt {
            if let Some(d) =
                self.rfc4733
                    .on_packet(rtp.timestamp(), rtp.mark(), rtp.payload(), now_ms)
            {
                self.digit(d);
            }
            return;
        }
        let Some(codec) = Codec::from_payload_type(pt) else {
            return; // Comfort noise (13) and anything unnegotiated carry no speech we keep.
        };
        let seq: u16 = rtp.sequence_number().into();
        self.reorder.push(seq, rtp.payload());
        while let Some(frame) = self.reorder.pop() {
            self.pcm.clear();
            match frame {
                Frame::Audio { payload, .. } => g711::decode_into(codec, payload, &mut self.pcm),
                Frame::Missing { len, .. } => self.pcm.resize(len, 0),
            }
            Self::process_audio(
                &self.pcm,
                self.rx_ms,
                &mut self.inband,
                &mut self.recording,
                &mut self.relay,
                &mut self.events,
            );
            self.rx_ms += (self.pcm.len() as u64) / 8;
        }
    }

    fn process_audio(
        pcm: &[i16],
        at_ms: u64,
        inband: &mut Option<InbandDetector>,
        recording: &mut Option<Recording>,
        relay: &mut Option<Box<Relay>>,
        events: &mut VecDeque<SessionEvent>,
    ) {
        if let Some(r) = relay.as_mut() {
            r.push_audio(pcm);
        }
        let mut stop_for_digit = None;
        if let Some(det) = inband.as_mut() {
            for d in det.push(pcm, at_ms) {
                events.push_back(SessionEvent::Digit(*d));
                if let Some(r) = relay.as_mut() {
                    r.push_digit(*d);
                }
                if let Some(r) = recording.as_mut() {
                    stop_for_digit = stop_for_digit.or(r.stop.push_digit(d.digit));
                }
            }
        }
        if let Some(r) = recording.as_mut() {
            if r.audio.len() + pcm.len() > RECORDING_BACKLOG {
                let excess = (r.audio.len() + pcm.len() - RECORDING_BACKLOG).min(r.audio.len());
                r.audio.drain(..excess);
            }
            r.audio.extend_from_slice(pcm);
            if let Some(stop) = stop_for_digit.or_else(|| r.stop.push_frame(pcm)) {
                Self::finish(recording, stop.reason, Some(stop.keep_samples), events);
            }
        }
    }

    fn digit(&mut self, d: DigitEvent) {
        let stop = self
            .recording
            .as_mut()
            .and_then(|r| r.stop.push_digit(d.digit));
        self.events.push_back(SessionEvent::Digit(d));
        if let Some(r) = self.relay.as_mut() {
            r.push_digit(d);
        }
        if let Some(stop) = stop {
            Self::finish(
                &mut self.recording,
                stop.reason,
                Some(stop.keep_samples),
                &mut self.events,
            );
        }
    }

    /// A digit that arrived by SIP INFO: same path as one from RTP.
    pub fn on_info_digit(&mut self, digit: char, duration_ms: u32) {
        let d = DigitEvent {
            digit,
            source: DigitSource::SipInfo,
            at_ms: self.rx_ms,
            duration_ms,
        };
        self.digit(d);
    }

    // ---- bridging -------------------------------------------------------------

    /// The call is bridged to another leg: from now on received audio and digits are
    /// kept for [`drain_relay_audio`](Self::drain_relay_audio) and
    /// [`poll_relay_digit`](Self::poll_relay_digit), and frames given to
    /// [`set_relay_frame`](Self::set_relay_frame) are sent, starting a new talkspurt.
    /// Prompts, queued digits and events still go first while they last.
    pub fn start_relay(&mut self) {
        if self.relay.is_none() {
            self.relay = Some(Box::new(Relay {
                received: Vec::with_capacity(RELAY_BACKLOG),
                digits: VecDeque::with_capacity(RELAY_DIGITS),
                next: None,
            }));
            self.rtp.mark_talkspurt();
        }
    }

    /// The bridge ended: back to silence when nothing plays.
    pub fn stop_relay(&mut self) {
        self.relay = None;
    }

    pub fn is_relaying(&self) -> bool {
        self.relay.is_some()
    }

    /// Hands the audio received (decoded, in order, lost packets as silence) since the
    /// last call to `sink`, then forgets it. Nothing when not relaying.
    pub fn drain_relay_audio(&mut self, sink: impl FnOnce(&[i16])) {
        if let Some(r) = self.relay.as_mut() {
            sink(&r.received);
            r.received.clear();
        }
    }

    /// A digit received since the last call (also reported as `SessionEvent::Digit`).
    pub fn poll_relay_digit(&mut self) -> Option<DigitEvent> {
        self.relay.as_mut().and_then(|r| r.digits.pop_front())
    }

    /// The other party's audio for the next tick, encoded here in this leg's codec.
    /// Ignored when not relaying.
    pub fn set_relay_frame(&mut self, pcm: &[i16; SAMPLES_PER_FRAME as usize]) {
        let codec = self.codec;
        if let Some(r) = self.relay.as_mut() {
            let mut frame = [0u8; SAMPLES_PER_FRAME as usize];
            for (b, &s) in frame.iter_mut().zip(pcm) {
                *b = g711::encode_sample(codec, s);
            }
            r.next = Some(frame);
        }
    }

    // ---- recording ------------------------------------------------------------

    /// Starts keeping the caller's audio for a voice message (mono, 8 kHz, 16-bit),
    /// to be taken with [`take_recorded_audio`](Self::take_recorded_audio).
    pub fn start_recording(&mut self, spec: &RecordSpec) -> Result<(), String> {
        if self.recording.is_some() {
            return Err("already recording".into());
        }
        self.recording = Some(Recording {
            stop: VoicemailStop::new(&spec.stop),
            audio: Vec::with_capacity(1600),
        });
        Ok(())
    }

    /// The recording's audio received so far, when at least `min_samples` are held.
    pub fn take_recorded_audio(&mut self, min_samples: usize) -> Option<Vec<i16>> {
        let r = self.recording.as_mut()?;
        if r.audio.is_empty() || r.audio.len() < min_samples {
            return None;
        }
        Some(std::mem::replace(
            &mut r.audio,
            Vec::with_capacity(min_samples.max(160)),
        ))
    }

    /// Abandons the recording without a stop event (its file could not be created).
    pub fn drop_recording(&mut self) {
        self.recording = None;
    }

    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Ends a recording from outside (hang-up, or the flow moved on).
    pub fn stop_recording(&mut self) {
        if let Some(r) = self.recording.as_mut() {
            let stop = r.stop.hang_up();
            Self::finish(
                &mut self.recording,
                stop.reason,
                Some(stop.keep_samples),
                &mut self.events,
            );
        }
    }

    fn finish(
        recording: &mut Option<Recording>,
        reason: StopReason,
        keep: Option<u64>,
        events: &mut VecDeque<SessionEvent>,
    ) {
        let Some(r) = recording.take() else { return };
        let keep_samples = keep.unwrap_or(u64::MAX).min(r.stop.samples());
        events.push_back(SessionEvent::RecordingStopped {
            reason,
            keep_samples,
            audio: r.audio,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::prompt::PromptAudio;

    fn packet(sender: &mut RtpSender, pt: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; MAX_PACKET];
        let n = sender.build(pt, payload, &mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn playback_then_silence_and_finished_event() {
        let mut s = MediaSession::new(Codec::Pcmu, Some(101), false, RtpSender::new(7, 100, 1000));
        let prompt = Arc::new(Prompt::new(PromptAudio::new("p", vec![1000; 800])));
        s.play(7, vec![prompt], false);
        let mut out = [0u8; MAX_PACKET];
        let mut sent = 0;
        for _ in 0..10 {
            let n = s.on_tick(&mut out);
            assert_eq!(n, 12 + 160);
            sent += 1;
        }
        assert_eq!(sent, 10);
        let finished: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            matches!(finished.as_slice(), [SessionEvent::PlayFinished(7)]),
            "{finished:?}"
        );
    }

    #[test]
    fn rfc4733_digits_from_a_sending_session_arrive_once() {
        let mut caller =
            MediaSession::new(Codec::Pcmu, Some(101), false, RtpSender::new(7, 100, 1000));
        let mut hotline =
            MediaSession::new(Codec::Pcmu, Some(101), false, RtpSender::new(7, 100, 1000));
        for d in "1234567890*#".chars() {
            caller.send_digit(d, 100, DtmfMode::Rfc4733);
        }
        caller.send_digit('1', 100, DtmfMode::Rfc4733);
        caller.send_digit('1', 100, DtmfMode::Rfc4733);
        let mut out = [0u8; MAX_PACKET];
        for t in 0..200 {
            let n = caller.on_tick(&mut out);
            hotline.on_rtp(&out[..n], t * 20);
        }
        let digits: String = std::iter::from_fn(|| hotline.poll_event())
            .filter_map(|e| match e {
                SessionEvent::Digit(d) => Some(d.digit),
                _ => None,
            })
            .collect();
        assert_eq!(digits, "1234567890*#11");
    }

    #[test]
    fn inband_digits_through_g711_arrive_once() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut caller = MediaSession::new(codec, None, false, RtpSender::new(7, 100, 1000));
            let mut hotline = MediaSession::new(codec, None, true, RtpSender::new(7, 100, 1000));
            for d in "1234567890*#11".chars() {
                caller.send_digit(d, 80, DtmfMode::Inband);
            }
            let mut out = [0u8; MAX_PACKET];
            for t in 0..200 {
                let n = caller.on_tick(&mut out);
                hotline.on_rtp(&out[..n], t * 20);
            }
            let digits: String = std::iter::from_fn(|| hotline.poll_event())
                .filter_map(|e| match e {
                    SessionEvent::Digit(d) => Some(d.digit),
                    _ => None,
                })
                .collect();
            assert_eq!(digits, "1234567890*#11", "{codec:?}");
        }
    }

    #[test]
    fn recording_stops_on_finish_key_and_hands_out_its_audio() {
        let mut s = MediaSession::new(Codec::Pcma, Some(101), false, RtpSender::new(7, 100, 1000));
        s.start_recording(&RecordSpec {
            stop: VoicemailStopConfig::default(),
        })
        .unwrap();
        assert!(s
            .start_recording(&RecordSpec {
                stop: VoicemailStopConfig::default(),
            })
            .is_err());
        let mut peer = RtpSender::new(1, 65500, 0);
        let tone: Vec<i16> = (0..160)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect();
        let mut enc = Vec::new();
        g711::encode(Codec::Pcma, &tone, &mut enc);
        let mut taken = 0;
        for t in 0..100 {
            let p = packet(&mut peer, 8, &enc);
            s.on_rtp(&p, t * 20);
            if t % 10 == 9 {
                taken += s.take_recorded_audio(1600).map_or(0, |a| a.len());
            }
        }
        assert_eq!(taken, 16000, "taken in batches");
        assert!(s.take_recorded_audio(1).is_none());
        s.on_info_digit('#', 100);
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        let stopped = events.iter().find_map(|e| match e {
            SessionEvent::RecordingStopped {
                reason,
                keep_samples,
                audio,
            } => Some((*reason, *keep_samples, audio.len())),
            _ => None,
        });
        assert_eq!(stopped, Some((StopReason::FinishKey, 16000, 0)));
        assert!(!s.is_recording());
    }

    #[test]
    fn relay_sends_the_other_partys_audio_in_this_legs_codec() {
        let mut s = MediaSession::new(Codec::Pcma, None, false, RtpSender::new(7, 100, 1000));
        let mut out = [0u8; MAX_PACKET];
        s.on_tick(&mut out);
        // Not relaying: a frame given is ignored, silence goes out.
        s.set_relay_frame(&[1000; 160]);
        let n = s.on_tick(&mut out);
        assert!(out[12..n].iter().all(|&b| b == Codec::Pcma.silence_byte()));
        s.start_relay();
        assert!(s.is_relaying());
        let pcm: [i16; 160] = std::array::from_fn(|i| (i as i16 - 80) * 100);
        s.set_relay_frame(&pcm);
        let n = s.on_tick(&mut out);
        let p = rtp_rs::RtpReader::new(&out[..n]).unwrap();
        assert!(p.mark(), "a new talkspurt starts with the bridge");
        assert_eq!(p.payload_type(), 8);
        let mut back = Vec::new();
        g711::decode_into(Codec::Pcma, p.payload(), &mut back);
        for (a, b) in pcm.iter().zip(&back) {
            assert!((a - b).abs() <= 300, "{a} {b}");
        }
        let (seq, ts) = (u16::from(p.sequence_number()), p.timestamp());
        // No frame for a tick: silence, same stream, no marker.
        let n = s.on_tick(&mut out);
        let q = rtp_rs::RtpReader::new(&out[..n]).unwrap();
        assert!(!q.mark());
        assert_eq!(u16::from(q.sequence_number()), seq.wrapping_add(1));
        assert_eq!(q.timestamp(), ts.wrapping_add(160));
        assert!(q.payload().iter().all(|&b| b == Codec::Pcma.silence_byte()));
        s.stop_relay();
        s.set_relay_frame(&pcm);
        let n = s.on_tick(&mut out);
        assert!(out[12..n].iter().all(|&b| b == Codec::Pcma.silence_byte()));
    }

    #[test]
    fn relay_keeps_received_audio_and_digits_until_taken() {
        let mut s = MediaSession::new(Codec::Pcmu, Some(101), false, RtpSender::new(7, 100, 1000));
        let mut peer = RtpSender::new(5, 100, 0);
        let mut taken = Vec::new();
        // Before the bridge nothing is kept.
        s.on_rtp(&packet(&mut peer, 0, &[0x80; 160]), 0);
        s.start_relay();
        s.drain_relay_audio(|pcm| taken.extend_from_slice(pcm));
        assert!(taken.is_empty());
        for t in 1..=3 {
            s.on_rtp(&packet(&mut peer, 0, &[0x80; 160]), t * 20);
        }
        s.drain_relay_audio(|pcm| taken.extend_from_slice(pcm));
        assert_eq!(taken.len(), 480);
        assert!(taken
            .iter()
            .all(|&x| x == g711::decode_sample(Codec::Pcmu, 0x80)));
        taken.clear();
        s.drain_relay_audio(|pcm| taken.extend_from_slice(pcm));
        assert!(taken.is_empty(), "taken once");
        // A stalled engine: only the newest 200 ms are kept.
        for t in 4..30 {
            s.on_rtp(&packet(&mut peer, 0, &[0x80; 160]), t * 20);
        }
        s.drain_relay_audio(|pcm| taken.extend_from_slice(pcm));
        assert_eq!(taken.len(), RELAY_BACKLOG);
        s.on_info_digit('7', 100);
        assert_eq!(s.poll_relay_digit().map(|d| d.digit), Some('7'));
        assert!(s.poll_relay_digit().is_none());
        let reported = std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, SessionEvent::Digit(d) if d.digit == '7'))
            .count();
        assert_eq!(reported, 1, "still reported for this leg");
    }

    #[test]
    fn prompts_and_digits_go_before_relayed_audio() {
        let mut s = MediaSession::new(Codec::Pcmu, None, false, RtpSender::new(7, 100, 1000));
        let mut out = [0u8; MAX_PACKET];
        s.start_relay();
        let loud = [8000i16; 160];
        let relayed_byte = g711::encode_sample(Codec::Pcmu, 8000);
        let prompt = Arc::new(Prompt::new(PromptAudio::new("p", vec![-3000; 320])));
        s.play(1, vec![prompt], false);
        let mut got = Vec::new();
        for _ in 0..4 {
            s.set_relay_frame(&loud);
            let n = s.on_tick(&mut out);
            got.push(out[12..n].iter().all(|&b| b == relayed_byte));
        }
        assert_eq!(
            got,
            [false, false, true, true],
            "prompt first, then the other party"
        );
        // An in-band digit replaces the relayed audio while its tone and pause last.
        s.send_digit('5', 100, DtmfMode::Inband);
        let mut relayed = 0;
        for _ in 0..10 {
            s.set_relay_frame(&loud);
            let n = s.on_tick(&mut out);
            if out[12..n].iter().all(|&b| b == relayed_byte) {
                relayed += 1;
            }
        }
        assert_eq!(relayed, 0);
        s.set_relay_frame(&loud);
        let n = s.on_tick(&mut out);
        assert!(out[12..n].iter().all(|&b| b == relayed_byte));
    }

    #[test]
    fn garbage_packets_are_ignored() {
        let mut s = MediaSession::new(Codec::Pcmu, Some(101), true, RtpSender::new(7, 100, 1000));
        let mut x: u32 = 12345;
        for t in 0..5000 {
            let len = (x % 200) as usize;
            let mut p = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                p.push(x as u8);
            }
            s.on_rtp(&p, t);
        }
        while s.poll_event().is_some() {}
    }
}
