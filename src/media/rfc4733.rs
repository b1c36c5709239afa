//! RFC 4733 telephone-events: the 4-byte payload format, a receiver that turns the
//! packet stream of one RTP session into one [`DigitEvent`] per key press, and a sender
//! that lays out the packets for a digit. It sees payloads, marker bits and RTP
//! timestamps only, and must not parse RTP headers, negotiate payload types, pace
//! packets or touch sockets: those belong to the caller.

use super::dtmf::{digit_to_event, event_to_digit};
use crate::call::{DigitEvent, DigitSource};

/// Largest value of the 16-bit duration field; an event lasting longer is split
/// into segments (RFC 4733 §2.5.1.3).
const MAX_SEGMENT: u32 = 0xFFFF;

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    /// Power level of the tone in −dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far in RTP timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first event block of a payload. Anything beyond 4 bytes (further
    /// blocks of a multi-event payload) is ignored.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let &[event, flags, d0, d1, ..] = payload else {
            return None;
        };
        Some(Self {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    pub fn write(&self, out: &mut [u8; 4]) {
        let [d0, d1] = self.duration.to_be_bytes();
        *out = [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3F),
            d0,
            d1,
        ];
    }

    pub fn to_bytes(&self) -> [u8; 4] {
        let mut out = [0; 4];
        self.write(&mut out);
        out
    }
}

/// Timestamps of this many recent events are remembered to suppress late duplicates.
const RECENT_EVENTS: usize = 8;

/// Packets of an event older than the current one by less than this are stale
/// (reordered or duplicated by the network); further back, the timestamp more
/// likely jumped because the sender restarted its stream.
const STALE_WINDOW_S: u32 = 4;

/// Tolerance on where a new segment of a long event may start relative to
/// `0xFFFF` after the previous one, for senders that count slightly differently.
const SEGMENT_SLACK_MS: u32 = 40;

#[derive(Debug, Clone, Copy)]
struct Current {
    /// RTP timestamp of the current segment.
    ts: u32,
    event: u8,
    /// Largest duration seen in the current segment.
    duration: u16,
    ended: bool,
}

/// Turns the telephone-event packets of one RTP stream into key presses.
///
/// An event is identified by its RTP timestamp. The digit is reported on the first
/// packet seen for a new timestamp (so barge-in does not wait for the key release)
/// and never again for that event: continuation packets, the repeated end packets,
/// later segments of a held key and late duplicates are all absorbed.
#[derive(Debug, Clone)]
pub struct Rfc4733Receiver {
    clock_rate: u32,
    current: Option<Current>,
    recent: [Option<u32>; RECENT_EVENTS],
    next_slot: usize,
}

impl Default for Rfc4733Receiver {
    fn default() -> Self {
        Self::new(8000)
    }
}

impl Rfc4733Receiver {
    /// `clock_rate` is the telephone-event clock from the SDP rtpmap (8000 almost
    /// everywhere); it converts durations to milliseconds.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            current: None,
            recent: [None; RECENT_EVENTS],
            next_slot: 0,
        }
    }

    /// Forgets all events, e.g. when the remote SSRC changes.
    pub fn reset(&mut self) {
        *self = Self::new(self.clock_rate);
    }

    /// Feeds one received telephone-event packet. Returns the digit when this
    /// packet starts a new key press.
    pub fn on_packet(
        &mut self,
        rtp_timestamp: u32,
        marker: bool,
        payload: &[u8],
        now_ms: u64,
    ) -> Option<DigitEvent> {
        let ev = TelephoneEvent::parse(payload)?;
        // Events 16 and up (flash, line tones) are not key presses.
        let digit = event_to_digit(ev.event)?;

        if let Some(cur) = self.current.as_mut() {
            if cur.ts == rtp_timestamp {
                cur.duration = cur.duration.max(ev.duration);
                cur.ended |= ev.end;
                return None;
            }
        }
        if self.recent.contains(&Some(rtp_timestamp)) {
            return None;
        }
        if let Some(cur) = self.current {
            let behind = cur.ts.wrapping_sub(rtp_timestamp);
            if behind < STALE_WINDOW_S.saturating_mul(self.clock_rate) {
                return None;
            }
            if self.is_next_segment(&cur, rtp_timestamp, marker, &ev) {
                self.remember(rtp_timestamp);
                self.current = Some(Current {
                    ts: rtp_timestamp,
                    duration: ev.duration,
                    ended: ev.end,
                    ..cur
                });
                return None;
            }
        }

        self.remember(rtp_timestamp);
        self.current = Some(Current {
            ts: rtp_timestamp,
            event: ev.event,
            duration: ev.duration,
            ended: ev.end,
        });
        // When the start packets were lost, the duration tells when the key went down.
        let duration_ms = self.ticks_to_ms(u32::from(ev.duration));
        Some(DigitEvent {
            digit,
            source: DigitSource::Rfc4733,
            at_ms: now_ms.saturating_sub(u64::from(duration_ms)),
            duration_ms,
        })
    }

    /// A held key continues in a new segment whose timestamp is where the previous
    /// segment's 0xFFFF-long duration ended; its marker bit is clear (§2.5.1.3).
    fn is_next_segment(&self, cur: &Current, ts: u32, marker: bool, ev: &TelephoneEvent) -> bool {
        if marker || cur.ended || cur.event != ev.event {
            return false;
        }
        let ahead = ts.wrapping_sub(cur.ts);
        let slack = SEGMENT_SLACK_MS.saturating_mul(self.clock_rate) / 1000;
        // Some senders start the next segment where the last reported duration
        // ended instead of at exactly 0xFFFF.
        ahead.abs_diff(MAX_SEGMENT) <= slack
            || (cur.duration > 0 && ahead == u32::from(cur.duration))
    }

    fn remember(&mut self, ts: u32) {
        self.recent[self.next_slot] = Some(ts);
        self.next_slot = (self.next_slot + 1) % RECENT_EVENTS;
    }

    fn ticks_to_ms(&self, ticks: u32) -> u32 {
        (u64::from(ticks) * 1000 / u64::from(self.clock_rate)) as u32
    }
}

/// One packet of an outgoing event, in sending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub payload: [u8; 4],
    /// RTP marker bit: set only on the first packet of the event.
    pub marker: bool,
    /// Added to the event's RTP timestamp. Zero except for the later segments of an
    /// event longer than 0xFFFF timestamp units.
    pub timestamp_offset: u32,
    /// When to send the packet, relative to the start of the key press.
    pub send_at_ms: u32,
    /// True for the second and third copies of the end packet.
    pub end_repeat: bool,
}

/// Lays out telephone-event packets for outgoing digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc4733Sender {
    pub clock_rate: u32,
    pub packet_interval_ms: u32,
}

impl Default for Rfc4733Sender {
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            packet_interval_ms: 20,
        }
    }
}

/// Longest key press the sender lays out; bounds the packet list.
pub const MAX_SEND_DURATION_MS: u32 = 60_000;

/// Highest telephone-event clock accepted by the sender.
const MAX_CLOCK_RATE: u32 = 192_000;

/// The end packet is sent this many times in total (RFC 4733 §2.5.1.4).
const END_COPIES: u32 = 3;

impl Rfc4733Sender {
    /// Packets for `digit` held for `duration_ms` at `volume` (−dBm0, clamped to 63).
    /// All packets of a segment share the RTP timestamp the caller picks for the
    /// event, i.e. the time the key went down (plus `timestamp_offset`); the caller
    /// also sets the payload type and SSRC.
    ///
    /// One packet goes out per interval, starting one interval after the key went
    /// down, reporting the duration so far; the first carries the marker. Then the
    /// end packet is sent three times, one interval apart so that a burst loss does
    /// not take all copies. No packet reports a zero duration, which some receivers
    /// reject; a press shorter than one interval is lengthened to one.
    /// `None` if `digit` is not a DTMF digit.
    pub fn packets(&self, digit: char, duration_ms: u32, volume: u8) -> Option<Vec<EventPacket>> {
        let event = digit_to_event(digit)?;
        let volume = volume.min(63);
        let rate = u64::from(self.clock_rate.clamp(1, MAX_CLOCK_RATE));
        let interval_ms = self.packet_interval_ms.clamp(1, MAX_SEND_DURATION_MS);
        let duration_ms = duration_ms.clamp(interval_ms, MAX_SEND_DURATION_MS);
        let to_ticks = |ms: u32| u64::from(ms) * rate / 1000;
        let total = to_ticks(duration_ms);
        let segment = u64::from(MAX_SEGMENT);

        // The clamps above bound `ticks` to 60 s at 192 kHz, so every segment offset
        // fits in a u32 and every in-segment duration in a u16.
        let packet = |seg: u64, ticks: u64, end: bool, send_at_ms: u32, end_repeat: bool| {
            let tev = TelephoneEvent {
                event,
                end,
                volume,
                duration: (ticks - seg * segment) as u16,
            };
            EventPacket {
                payload: tev.to_bytes(),
                marker: false,
                timestamp_offset: (seg * segment) as u32,
                send_at_ms,
                end_repeat,
            }
        };

        let mut out = Vec::with_capacity((duration_ms / interval_ms) as usize + 4);
        let mut seg = 0;
        // Closes full segments until `ticks` falls into the current one. A duration
        // ending exactly on a boundary stays 0xFFFF in its segment rather than
        // becoming 0 in a new one, hence the strict comparison.
        let close_segments = |out: &mut Vec<EventPacket>, seg: &mut u64, ticks: u64, at: u32| {
            while ticks > (*seg + 1) * segment {
                out.push(packet(*seg, (*seg + 1) * segment, false, at, false));
                *seg += 1;
            }
        };
        let mut send_at = interval_ms;
        while send_at < duration_ms {
            let ticks = to_ticks(send_at);
            close_segments(&mut out, &mut seg, ticks, send_at);
            out.push(packet(seg, ticks, false, send_at, false));
            send_at += interval_ms;
        }
        close_segments(&mut out, &mut seg, total, duration_ms);
        for copy in 0..END_COPIES {
            out.push(packet(
                seg,
                total,
                true,
                duration_ms + copy * interval_ms,
                copy > 0,
            ));
        }
        if let Some(first) = out.first_mut() {
            first.marker = true;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    /// Feeds a sender's packets for one digit into `rx`, returning the digits seen.
    fn feed(rx: &mut Rfc4733Receiver, ts: u32, packets: &[EventPacket]) -> Vec<char> {
        packets
            .iter()
            .filter_map(|p| {
                rx.on_packet(
                    ts.wrapping_add(p.timestamp_offset),
                    p.marker,
                    &p.payload,
                    u64::from(p.send_at_ms),
                )
            })
            .map(|e| e.digit)
            .collect()
    }

    #[test]
    fn payload_round_trip() {
        let ev = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 1280,
        };
        let bytes = ev.to_bytes();
        assert_eq!(bytes, [11, 0x8A, 0x05, 0x00]);
        assert_eq!(TelephoneEvent::parse(&bytes), Some(ev));
        // The reserved bit is ignored, trailing bytes too.
        assert_eq!(
            TelephoneEvent::parse(&[11, 0xCA, 0x05, 0x00, 0xFF]),
            Some(ev)
        );
        assert_eq!(TelephoneEvent::parse(&[11, 0x8A, 0x05]), None);
        assert_eq!(TelephoneEvent::parse(&[]), None);
    }

    #[test]
    fn sender_layout() {
        let p = Rfc4733Sender::default()
            .packets('5', 100, 10)
            .expect("digit");
        // 20, 40, 60, 80 ms, then three end packets.
        assert_eq!(p.len(), 7);
        assert!(p[0].marker && p.iter().skip(1).all(|p| !p.marker));
        let evs: Vec<_> = p
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).expect("4 bytes"))
            .collect();
        let durations: Vec<u16> = evs.iter().map(|e| e.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        assert!(evs.iter().all(|e| e.event == 5 && e.volume == 10));
        assert_eq!(evs.iter().filter(|e| e.end).count(), 3);
        assert_eq!(p.iter().filter(|p| p.end_repeat).count(), 2);
        assert!(!p[4].end_repeat && p[5].end_repeat && p[6].end_repeat);
        let sends: Vec<u32> = p.iter().map(|p| p.send_at_ms).collect();
        assert_eq!(sends, [20, 40, 60, 80, 100, 120, 140]);
        assert!(p.iter().all(|p| p.timestamp_offset == 0));

        assert!(Rfc4733Sender::default().packets('x', 100, 10).is_none());
        // Too short: lengthened to one interval, all three packets being end packets.
        let p = Rfc4733Sender::default()
            .packets('#', 0, 200)
            .expect("digit");
        assert_eq!(p.len(), 3);
        assert!(p[0].marker && !p[0].end_repeat);
        let first = TelephoneEvent::parse(&p[0].payload).expect("4 bytes");
        assert_eq!((first.volume, first.duration, first.end), (63, 160, true));
    }

    #[test]
    fn sender_segments_long_events() {
        // 10 s = 80000 ticks: one full segment of 0xFFFF, then 14465 more.
        let p = Rfc4733Sender::default()
            .packets('1', 10_000, 10)
            .expect("digit");
        let evs: Vec<_> = p
            .iter()
            .map(|p| {
                (
                    p.timestamp_offset,
                    TelephoneEvent::parse(&p.payload).expect("4 bytes"),
                )
            })
            .collect();
        let closing = evs
            .iter()
            .position(|(_, e)| e.duration == 0xFFFF)
            .expect("first segment reaches 0xFFFF");
        assert!(!evs[closing].1.end && evs[closing].0 == 0);
        assert_eq!(evs[closing + 1].0, 0xFFFF);
        assert!(evs[closing + 1].1.duration < 160);
        let (off, last) = evs[evs.len() - 1];
        assert_eq!(
            (off, u32::from(last.duration), last.end),
            (0xFFFF, 80_000 - 0xFFFF, true)
        );
        assert_eq!(p.iter().filter(|p| p.marker).count(), 1);

        // Exactly on the boundary: 0xFFFF ticks is not a multiple of 8 per ms, so use
        // a clock where it is.
        let sender = Rfc4733Sender {
            clock_rate: 65535,
            packet_interval_ms: 20,
        };
        let p = sender.packets('1', 1000, 10).expect("digit");
        let last = TelephoneEvent::parse(&p[p.len() - 1].payload).expect("4 bytes");
        assert_eq!(
            (p[p.len() - 1].timestamp_offset, last.duration),
            (0, 0xFFFF)
        );
    }

    #[test]
    fn receiver_reports_each_press_once() {
        let tx = Rfc4733Sender::default();
        let mut rx = Rfc4733Receiver::default();
        let one = tx.packets('1', 120, 10).expect("digit");
        let ts = 1_000_000;
        assert_eq!(feed(&mut rx, ts, &one), ['1']);
        // The same key again: a new timestamp.
        assert_eq!(feed(&mut rx, ts + 1600, &one), ['1']);
        assert_eq!(
            feed(&mut rx, ts + 3200, &tx.packets('#', 80, 10).expect("digit")),
            ['#']
        );
    }

    #[test]
    fn receiver_reports_on_first_packet_with_its_time() {
        let mut rx = Rfc4733Receiver::default();
        let ev = rx
            .on_packet(5000, true, &payload(7, false, 0), 123_456)
            .expect("new event");
        assert_eq!(
            ev,
            DigitEvent {
                digit: '7',
                source: DigitSource::Rfc4733,
                at_ms: 123_456,
                duration_ms: 0
            }
        );
        assert_eq!(
            rx.on_packet(5000, false, &payload(7, false, 160), 123_476),
            None
        );
    }

    #[test]
    fn lost_start_packets_still_report_once() {
        let mut rx = Rfc4733Receiver::default();
        let end = payload(3, true, 800);
        let ev = rx.on_packet(42, false, &end, 1000).expect("new event");
        assert_eq!((ev.digit, ev.duration_ms, ev.at_ms), ('3', 100, 900));
        assert_eq!(rx.on_packet(42, false, &end, 20), None);
        assert_eq!(rx.on_packet(42, false, &end, 40), None);
    }

    #[test]
    fn late_duplicates_of_reported_events_are_ignored() {
        let mut rx = Rfc4733Receiver::default();
        let digits = ['1', '2', '3', '4'];
        for (i, d) in digits.iter().enumerate() {
            let code = digit_to_event(*d).expect("digit");
            let ts = 10_000 + i as u32 * 2000;
            assert!(rx
                .on_packet(ts, true, &payload(code, false, 0), 0)
                .is_some());
            assert!(rx
                .on_packet(ts, false, &payload(code, true, 400), 0)
                .is_none());
        }
        // Old packets of events 1 and 2 turn up after event 4.
        assert_eq!(rx.on_packet(10_000, false, &payload(1, true, 400), 0), None);
        assert_eq!(rx.on_packet(12_000, true, &payload(2, false, 0), 0), None);
        // A never-seen event from before the current one is stale too: reporting it
        // now would reorder the digits.
        assert_eq!(rx.on_packet(15_000, true, &payload(9, false, 0), 0), None);
    }

    #[test]
    fn wraparound_timestamps() {
        let tx = Rfc4733Sender::default();
        let mut rx = Rfc4733Receiver::default();
        let p = tx.packets('9', 100, 10).expect("digit");
        assert_eq!(feed(&mut rx, u32::MAX - 100, &p), ['9']);
        assert_eq!(feed(&mut rx, 1500, &p), ['9']);
        // The pre-wrap event is still recognised as old.
        assert_eq!(
            rx.on_packet(u32::MAX - 100, false, &payload(9, true, 800), 0),
            None
        );
        assert_eq!(
            rx.on_packet(u32::MAX - 900, true, &payload(4, false, 0), 0),
            None
        );
    }

    #[test]
    fn long_held_key_counts_once() {
        let tx = Rfc4733Sender::default();
        let mut rx = Rfc4733Receiver::default();
        let p = tx.packets('0', 20_000, 10).expect("digit");
        assert!(p.iter().any(|p| p.timestamp_offset > 0));
        assert_eq!(feed(&mut rx, u32::MAX - 70_000, &p), ['0']);
        // Next press right after.
        assert_eq!(
            feed(&mut rx, (u32::MAX - 70_000).wrapping_add(170_000), &p),
            ['0']
        );
    }

    #[test]
    fn held_key_segments_survive_loss_of_the_boundary_packets() {
        let mut rx = Rfc4733Receiver::default();
        let ts = 7u32;
        assert!(rx.on_packet(ts, true, &payload(6, false, 0), 0).is_some());
        assert!(rx
            .on_packet(ts, false, &payload(6, false, 60_000), 0)
            .is_none());
        // The 0xFFFF packet is lost; the next segment starts at ts + 0xFFFF.
        assert!(rx
            .on_packet(ts + 0xFFFF, false, &payload(6, false, 160), 0)
            .is_none());
        assert!(rx
            .on_packet(ts + 0xFFFF, false, &payload(6, true, 800), 0)
            .is_none());
        // A different key that follows is reported.
        assert!(rx
            .on_packet(ts + 0xFFFF + 2400, true, &payload(6, false, 0), 0)
            .is_some());
    }

    #[test]
    fn new_press_without_marker_or_end_is_still_new() {
        let mut rx = Rfc4733Receiver::default();
        // First press: only continuation packets (start and end lost).
        assert!(rx
            .on_packet(100, false, &payload(5, false, 480), 0)
            .is_some());
        // Second press of the same key, its start lost as well.
        assert!(rx
            .on_packet(100 + 1600, false, &payload(5, false, 320), 0)
            .is_some());
        // A different key without any end of the previous one.
        assert!(rx
            .on_packet(100 + 3200, false, &payload(8, false, 320), 0)
            .is_some());
    }

    #[test]
    fn non_dtmf_events_and_garbage_are_ignored() {
        let mut rx = Rfc4733Receiver::default();
        assert_eq!(rx.on_packet(1, true, &payload(16, false, 0), 0), None);
        assert_eq!(rx.on_packet(2, true, &[1, 2], 0), None);
        assert!(rx.on_packet(3, true, &payload(1, false, 0), 0).is_some());
        rx.reset();
        assert!(rx.on_packet(3, true, &payload(1, false, 0), 0).is_some());
    }

    #[test]
    fn random_packets_do_not_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut rx = Rfc4733Receiver::new(0);
        let mut reported = 0;
        for _ in 0..200_000 {
            let r = next();
            let len = (r % 7) as usize;
            let bytes = next().to_le_bytes();
            // Keep event codes mostly in the DTMF range so the state machine is exercised.
            let mut payload = bytes[..len].to_vec();
            if let Some(b) = payload.first_mut() {
                *b %= 20;
            }
            let ts = if r & 0x100 != 0 {
                (r >> 32) as u32
            } else {
                (r >> 32) as u32 & 0x3FFF
            };
            reported += usize::from(rx.on_packet(ts, r & 1 != 0, &payload, r).is_some());
        }
        assert!(reported > 0);
        for (clock_rate, packet_interval_ms) in [(0, 0), (u32::MAX, u32::MAX), (u32::MAX, 1)] {
            let sender = Rfc4733Sender {
                clock_rate,
                packet_interval_ms,
            };
            for ms in [0, 1, 20, 65_535, u32::MAX] {
                let p = sender.packets('1', ms, u8::MAX).expect("digit");
                assert_eq!(p.iter().filter(|p| p.marker).count(), 1);
                assert_eq!(p.iter().filter(|p| p.end_repeat).count(), 2);
            }
        }
    }
}
