//! The sending side of one RTP stream (RFC 3550): sequence numbers, timestamps, SSRC
//! and the marker bit, and packet building with rtp-rs.
//!
//! Owns the per-stream counters; sans-IO (the caller sends the bytes and owns the
//! clock). Must not allocate per packet: packets are built into a caller's buffer.

use rtp_rs::{RtpPacketBuilder, Seq};

/// One 20 ms G.711 frame at 8 kHz.
pub const SAMPLES_PER_FRAME: u32 = 160;
/// Room for a 12-byte header and a 160-byte payload, with headroom.
pub const MAX_PACKET: usize = 12 + 320;

#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    /// Set at the start of a talkspurt: the next packet carries the marker bit.
    talkspurt: bool,
}

impl RtpSender {
    /// Random SSRC, sequence and timestamp starts (RFC 3550 §5.1), so streams cannot be
    /// guessed or confused across calls.
    pub fn random(rng: &mut dyn rand::RngCore) -> Self {
        use rand::Rng;
        Self::new(rng.gen(), rng.gen(), rng.gen())
    }

    pub fn new(ssrc: u32, seq: u16, timestamp: u32) -> Self {
        RtpSender {
            ssrc,
            seq,
            timestamp,
            talkspurt: true,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn sequence(&self) -> u16 {
        self.seq
    }

    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// The next packet starts a talkspurt (marker bit set).
    pub fn mark_talkspurt(&mut self) {
        self.talkspurt = true;
    }

    /// Advances the timestamp over `frames` frames not sent (silence suppression or a
    /// stall), keeping the media clock right.
    pub fn skip_frames(&mut self, frames: u32) {
        self.timestamp = self.timestamp.wrapping_add(frames * SAMPLES_PER_FRAME);
        self.talkspurt = true;
    }

    /// Moves the media clock on without sending (a frame's worth of time that went to a
    /// telephone-event packet, which keeps its own timestamp).
    pub fn advance(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
    }

    /// Builds a telephone-event packet (RFC 4733): its own timestamp (the event's start)
    /// and marker, the stream's next sequence number.
    pub fn build_event(
        &mut self,
        payload_type: u8,
        payload: &[u8; 4],
        timestamp: u32,
        marker: bool,
        out: &mut [u8; MAX_PACKET],
    ) -> usize {
        let len = RtpPacketBuilder::new()
            .payload_type(payload_type)
            .ssrc(self.ssrc)
            .sequence(Seq::from(self.seq))
            .timestamp(timestamp)
            .marked(marker)
            .payload(payload)
            .build_into(out)
            .unwrap_or(0);
        self.seq = self.seq.wrapping_add(1);
        self.talkspurt = true;
        len
    }

    /// Builds the next packet into `out`, returning its length.
    pub fn build(&mut self, payload_type: u8, payload: &[u8], out: &mut [u8; MAX_PACKET]) -> usize {
        let len = RtpPacketBuilder::new()
            .payload_type(payload_type)
            .ssrc(self.ssrc)
            .sequence(Seq::from(self.seq))
            .timestamp(self.timestamp)
            .marked(self.talkspurt)
            .payload(&payload[..payload.len().min(MAX_PACKET - 12)])
            .build_into(out)
            .unwrap_or(0);
        self.talkspurt = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(payload.len() as u32);
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtp_rs::RtpReader;

    #[test]
    fn packets_count_up_and_wrap() {
        let mut s = RtpSender::new(0x1234_5678, 65535, u32::MAX - 100);
        let mut buf = [0u8; MAX_PACKET];
        let payload = [0xFFu8; 160];
        let n = s.build(0, &payload, &mut buf);
        let p = RtpReader::new(&buf[..n]).unwrap();
        assert_eq!(p.sequence_number(), Seq::from(65535));
        assert!(p.mark());
        assert_eq!(p.ssrc(), 0x1234_5678);
        assert_eq!(p.payload().len(), 160);
        let n = s.build(0, &payload, &mut buf);
        let p = RtpReader::new(&buf[..n]).unwrap();
        assert_eq!(p.sequence_number(), Seq::from(0));
        assert!(!p.mark());
        assert_eq!(p.timestamp(), (u32::MAX - 100).wrapping_add(160));
    }

    #[test]
    fn skipping_keeps_clock_and_marks_next() {
        let mut s = RtpSender::new(1, 10, 1000);
        let mut buf = [0u8; MAX_PACKET];
        s.build(8, &[0xD5; 160], &mut buf);
        s.skip_frames(5);
        let n = s.build(8, &[0xD5; 160], &mut buf);
        let p = RtpReader::new(&buf[..n]).unwrap();
        assert_eq!(p.timestamp(), 1000 + 160 * 6);
        assert_eq!(p.sequence_number(), Seq::from(11));
        assert!(p.mark());
    }
}
