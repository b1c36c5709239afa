//! Bridging two call legs, sans-IO: a queued caller and the operator who answered.
//!
//! Owns the per-direction jitter queues (decoded 8 kHz PCM, counted in samples so any
//! packetisation works), the pairing of the caller's and the operator's frame on every
//! 20 ms tick (what each party hears, and the left and right channels of the stereo
//! recording, always time-aligned), and the decision how a digit pressed on one leg is
//! regenerated on the other.
//!
//! Must not: touch sockets, clocks or files, decode or encode G.711 (each leg's
//! `MediaSession` does that in its own codec), or know about SIP. The engine feeds
//! decoded audio with [`Bridge::push_audio`], calls [`Bridge::tick`] once per clock
//! tick and hands the frames out; tests drive it with simulated ticks.

use super::rtp::SAMPLES_PER_FRAME;
use super::session::DtmfMode;
use crate::call::{DigitEvent, DigitSource};
use std::collections::VecDeque;

/// One 20 ms frame at 8 kHz.
pub const FRAME: usize = SAMPLES_PER_FRAME as usize;

/// Digits are regenerated at least this long (a digit is reported as soon as it is
/// recognised, so its duration is only a lower bound) and at most [`DIGIT_MAX_MS`].
pub const DIGIT_MIN_MS: u32 = 100;
pub const DIGIT_MAX_MS: u32 = 500;

/// The same key reported by another source of the same leg within this many ticks is
/// the same key press (a phone that sends RFC 4733 and SIP INFO, or RFC 4733 with the
/// tone still in the audio while in-band detection is on): regenerated once.
const SAME_PRESS_TICKS: u64 = 25;

/// One direction of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Caller,
    Operator,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Operator,
            Side::Operator => Side::Caller,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Operator => 1,
        }
    }
}

/// How much audio a direction may hold. Frames are 20 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Frames queued before playout starts, and starts again after an underrun: the
    /// jitter the direction absorbs without a gap.
    pub prefill_frames: u16,
    /// More than this many frames still queued after a tick, for `trim_after_ticks`
    /// ticks in a row, is latency nobody needs (a burst after a network stall, or a
    /// sender whose clock runs fast): the oldest audio is dropped down to
    /// `prefill_frames`.
    pub max_hold_frames: u16,
    pub trim_after_ticks: u16,
    /// Hard limit: pushing beyond it drops the oldest audio at once, so latency never
    /// grows past it (e.g. while the engine stalls).
    pub capacity_frames: u16,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            prefill_frames: 2,
            max_hold_frames: 3,
            trim_after_ticks: 10,
            capacity_frames: 10,
        }
    }
}

impl JitterConfig {
    /// Clamped so that the rules make sense together: at least one frame of prefill,
    /// hold >= prefill, capacity > hold.
    fn sane(self) -> Self {
        let prefill = self.prefill_frames.clamp(1, 50);
        let hold = self.max_hold_frames.clamp(prefill, 50);
        JitterConfig {
            prefill_frames: prefill,
            max_hold_frames: hold,
            trim_after_ticks: self.trim_after_ticks.max(1),
            capacity_frames: self.capacity_frames.clamp(hold + 1, 100),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Ticks that carried received audio.
    pub frames_played: u64,
    /// Ticks filled with silence (before the first audio, during prefill, underruns).
    pub silent_ticks: u64,
    /// Times playout ran dry and had to prefill again.
    pub underruns: u64,
    /// Samples dropped to keep latency bounded.
    pub dropped_samples: u64,
    /// Most samples queued at a tick (before its frame was taken).
    pub max_queued: usize,
}

/// A FIFO of decoded samples with prefill, underrun and latency rules. Allocates once.
#[derive(Debug)]
pub struct JitterQueue {
    prefill: usize,
    hold: usize,
    trim_after: u16,
    capacity: usize,
    q: VecDeque<i16>,
    playing: bool,
    over_for: u16,
    stats: JitterStats,
}

impl JitterQueue {
    pub fn new(config: JitterConfig) -> Self {
        let c = config.sane();
        let capacity = usize::from(c.capacity_frames) * FRAME;
        JitterQueue {
            prefill: usize::from(c.prefill_frames) * FRAME,
            hold: usize::from(c.max_hold_frames) * FRAME,
            trim_after: c.trim_after_ticks,
            capacity,
            q: VecDeque::with_capacity(capacity),
            playing: false,
            over_for: 0,
            stats: JitterStats::default(),
        }
    }

    /// Appends received audio, dropping the oldest beyond the capacity.
    pub fn push(&mut self, pcm: &[i16]) {
        let pcm = if pcm.len() > self.capacity {
            self.stats.dropped_samples += (pcm.len() - self.capacity) as u64;
            &pcm[pcm.len() - self.capacity..]
        } else {
            pcm
        };
        let excess = (self.q.len() + pcm.len()).saturating_sub(self.capacity);
        if excess > 0 {
            self.q.drain(..excess);
            self.stats.dropped_samples += excess as u64;
        }
        self.q.extend(pcm.iter().copied());
    }

    /// Fills `out` with the next frame and returns true, or with silence and returns
    /// false when there is nothing to play (yet).
    pub fn pop(&mut self, out: &mut [i16; FRAME]) -> bool {
        self.stats.max_queued = self.stats.max_queued.max(self.q.len());
        if !self.playing && self.q.len() >= self.prefill {
            self.playing = true;
        }
        if self.playing && self.q.len() < FRAME {
            self.playing = false;
            self.stats.underruns += 1;
        }
        if !self.playing {
            out.fill(0);
            self.stats.silent_ticks += 1;
            return false;
        }
        for (o, s) in out.iter_mut().zip(self.q.drain(..FRAME)) {
            *o = s;
        }
        self.stats.frames_played += 1;
        if self.q.len() > self.hold {
            self.over_for += 1;
            if self.over_for >= self.trim_after {
                let drop = self.q.len() - self.prefill;
                self.q.drain(..drop);
                self.stats.dropped_samples += drop as u64;
                self.over_for = 0;
            }
        } else {
            self.over_for = 0;
        }
        true
    }

    pub fn queued_samples(&self) -> usize {
        self.q.len()
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }
}

/// The frames of one tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    /// The caller's audio: what the operator hears, the recording's left channel.
    pub caller: &'a [i16; FRAME],
    /// The operator's audio: what the caller hears, the recording's right channel.
    pub operator: &'a [i16; FRAME],
    /// Whether each frame is received audio rather than filler silence.
    pub caller_live: bool,
    pub operator_live: bool,
}

/// A digit to send on the other leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regenerate {
    pub digit: char,
    pub duration_ms: u32,
    pub mode: DtmfMode,
}

#[derive(Debug, Clone, Copy)]
struct Forwarded {
    digit: char,
    source: DigitSource,
    tick: u64,
}

/// The sans-IO core of one bridge.
#[derive(Debug)]
pub struct Bridge {
    queues: [JitterQueue; 2],
    frames: [[i16; FRAME]; 2],
    live: [bool; 2],
    ticks: u64,
    last_digit: [Option<Forwarded>; 2],
}

impl Default for Bridge {
    fn default() -> Self {
        Self::new(JitterConfig::default())
    }
}

impl Bridge {
    pub fn new(config: JitterConfig) -> Self {
        Bridge {
            queues: [JitterQueue::new(config), JitterQueue::new(config)],
            frames: [[0; FRAME]; 2],
            live: [false; 2],
            ticks: 0,
            last_digit: [None; 2],
        }
    }

    /// Audio received on `from`'s leg, decoded, in order.
    pub fn push_audio(&mut self, from: Side, pcm: &[i16]) {
        self.queues[from.index()].push(pcm);
    }

    /// One 20 ms step: takes one frame (or silence) from each direction.
    pub fn tick(&mut self) -> Tick<'_> {
        self.ticks += 1;
        for i in 0..2 {
            self.live[i] = self.queues[i].pop(&mut self.frames[i]);
        }
        self.last_tick()
    }

    /// The frames of the latest tick (silence before the first).
    pub fn last_tick(&self) -> Tick<'_> {
        Tick {
            caller: &self.frames[0],
            operator: &self.frames[1],
            caller_live: self.live[0],
            operator_live: self.live[1],
        }
    }

    /// Ticks so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    pub fn stats(&self, from: Side) -> JitterStats {
        self.queues[from.index()].stats()
    }

    pub fn queued_samples(&self, from: Side) -> usize {
        self.queues[from.index()].queued_samples()
    }

    /// A digit detected on `from`'s leg (it is reported for that leg by the caller of
    /// this method). Returns how to regenerate it on the other leg, or `None`:
    ///
    /// - an in-band digit's tones are in the relayed audio already, so it is sent again
    ///   only as an RFC 4733 event, to a leg that negotiated telephone-event;
    /// - an RFC 4733 or SIP INFO digit carries no audio: it is sent as an event when
    ///   the other leg negotiated telephone-event, else as in-band tones;
    /// - the same key reported by a second source of the same leg moments later is the
    ///   same key press, sent once.
    pub fn forward_digit(
        &mut self,
        from: Side,
        digit: &DigitEvent,
        to_has_telephone_event: bool,
    ) -> Option<Regenerate> {
        let last = &mut self.last_digit[from.index()];
        let repeat = last.is_some_and(|l| {
            l.digit == digit.digit
                && l.source != digit.source
                && self.ticks.saturating_sub(l.tick) <= SAME_PRESS_TICKS
        });
        if repeat {
            return None;
        }
        *last = Some(Forwarded {
            digit: digit.digit,
            source: digit.source,
            tick: self.ticks,
        });
        let mode = match (digit.source, to_has_telephone_event) {
            (_, true) => DtmfMode::Rfc4733,
            (DigitSource::Inband, false) => return None,
            (DigitSource::Rfc4733 | DigitSource::SipInfo, false) => DtmfMode::Inband,
        };
        Some(Regenerate {
            digit: digit.digit,
            duration_ms: digit.duration_ms.clamp(DIGIT_MIN_MS, DIGIT_MAX_MS),
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame `n` of a test stream: every sample holds the frame number, so what comes
    /// out shows which frame it was.
    fn frame(n: i16) -> [i16; FRAME] {
        [n; FRAME]
    }

    fn digit(d: char, source: DigitSource) -> DigitEvent {
        DigitEvent {
            digit: d,
            source,
            at_ms: 0,
            duration_ms: 40,
        }
    }

    #[test]
    fn steady_stream_plays_in_order_with_one_frame_of_prefill_delay() {
        let mut q = JitterQueue::new(JitterConfig::default());
        let mut out = [0; FRAME];
        let mut played = Vec::new();
        for n in 1..=100 {
            // A packet arrives between two ticks.
            q.push(&frame(n));
            if q.pop(&mut out) {
                played.push(out[0]);
                assert!(out.iter().all(|&s| s == out[0]));
            }
        }
        // The first tick only prefills; from then on one frame per tick, in order.
        assert_eq!(played, (1..=99).collect::<Vec<i16>>());
        let s = q.stats();
        assert_eq!((s.silent_ticks, s.underruns, s.dropped_samples), (1, 0, 0));
        assert!(s.max_queued <= 2 * FRAME);
    }

    #[test]
    fn jitter_within_the_allowance_loses_nothing() {
        // Packets arrive 0, 1 or 2 ticks in a bunch, but on average one per tick.
        let arrivals = [1usize, 0, 2, 1, 1, 0, 2, 0, 1, 2];
        let mut q = JitterQueue::new(JitterConfig::default());
        let mut out = [0; FRAME];
        let mut next = 1i16;
        let mut played = Vec::new();
        for t in 0..200 {
            for _ in 0..arrivals[t % arrivals.len()] {
                q.push(&frame(next));
                next += 1;
            }
            if q.pop(&mut out) {
                played.push(out[0]);
            }
        }
        let expected: Vec<i16> = (1..=played.len() as i16).collect();
        assert_eq!(played, expected, "in order, none dropped");
        assert_eq!(q.stats().dropped_samples, 0);
        // Only the first prefill costs silence; no underrun once playing.
        assert_eq!(q.stats().underruns, 0, "{:?}", q.stats());
    }

    #[test]
    fn underrun_gives_silence_then_prefills_again() {
        let mut q = JitterQueue::new(JitterConfig::default());
        let mut out = [7; FRAME];
        q.push(&frame(1));
        q.push(&frame(2));
        assert!(q.pop(&mut out));
        assert!(q.pop(&mut out));
        assert_eq!(out[0], 2);
        // Nothing arrives: silence, consistently, every tick.
        for _ in 0..3 {
            assert!(!q.pop(&mut out));
            assert!(out.iter().all(|&s| s == 0));
        }
        assert_eq!(q.stats().underruns, 1);
        // One frame is not enough to resume: it waits for the prefill.
        q.push(&frame(3));
        assert!(!q.pop(&mut out));
        q.push(&frame(4));
        assert!(q.pop(&mut out));
        assert_eq!(out[0], 3);
    }

    #[test]
    fn partial_frames_of_other_packetisations_are_joined() {
        // 30 ms packets (240 samples) against 20 ms ticks.
        let mut q = JitterQueue::new(JitterConfig::default());
        let mut out = [0; FRAME];
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut v = 0i16;
        for t in 0..300 {
            // Two packets every three ticks.
            if t % 3 != 2 {
                let p: Vec<i16> = (0..240)
                    .map(|_| {
                        v = v.wrapping_add(1);
                        v
                    })
                    .collect();
                sent.extend_from_slice(&p);
                q.push(&p);
            }
            if q.pop(&mut out) {
                got.extend_from_slice(&out);
            }
        }
        assert_eq!(q.stats().underruns, 0, "{:?}", q.stats());
        assert_eq!(q.stats().dropped_samples, 0);
        assert_eq!(&sent[..got.len()], &got[..], "a continuous stream");
    }

    #[test]
    fn a_burst_is_trimmed_so_latency_does_not_stay_high() {
        let cfg = JitterConfig::default();
        let mut q = JitterQueue::new(cfg);
        let mut out = [0; FRAME];
        let mut n = 1i16;
        for _ in 0..20 {
            q.push(&frame(n));
            n += 1;
            q.pop(&mut out);
        }
        // A network stall: 6 frames arrive at once, then the steady stream resumes.
        for _ in 0..6 {
            q.push(&frame(n));
            n += 1;
        }
        let mut queued = Vec::new();
        for _ in 0..40 {
            q.push(&frame(n));
            n += 1;
            assert!(q.pop(&mut out), "no gap: {:?}", q.stats());
            queued.push(q.queued_samples());
        }
        let hold = usize::from(cfg.max_hold_frames) * FRAME;
        let after_trim = &queued[usize::from(cfg.trim_after_ticks)..];
        assert!(
            after_trim.iter().all(|&l| l <= hold),
            "trimmed back to the allowance: {queued:?}"
        );
        assert!(q.stats().dropped_samples > 0);
        // The newest audio is what is kept.
        assert_eq!(out[0], n - 1 - (q.queued_samples() / FRAME) as i16);
    }

    #[test]
    fn capacity_drops_the_oldest_at_once() {
        let cfg = JitterConfig::default();
        let mut q = JitterQueue::new(cfg);
        let mut out = [0; FRAME];
        for n in 1..=25 {
            q.push(&frame(n));
        }
        let cap = usize::from(cfg.capacity_frames);
        assert_eq!(q.queued_samples(), cap * FRAME);
        assert_eq!(q.stats().dropped_samples, ((25 - cap) * FRAME) as u64);
        assert!(q.pop(&mut out));
        assert_eq!(out[0], 25 - cap as i16 + 1, "oldest dropped, newest kept");
        // An oversized single push keeps its newest samples.
        let big: Vec<i16> = (0..(cap * FRAME + 500) as i16).collect();
        q.push(&big);
        assert_eq!(q.queued_samples(), cap * FRAME);
        assert!(q.pop(&mut out));
        assert_eq!(out[0], 500);
    }

    #[test]
    fn ticks_pair_both_directions_and_fill_a_missing_side_with_silence() {
        let mut b = Bridge::default();
        let mut pairs = Vec::new();
        for t in 0..50i16 {
            b.push_audio(Side::Caller, &frame(1000 + t));
            // The operator's phone sends nothing for ticks 20..30.
            if !(20..30).contains(&t) {
                b.push_audio(Side::Operator, &frame(2000 + t));
            }
            let tick = b.tick();
            assert_eq!(tick.caller.len(), FRAME);
            assert_eq!(tick.operator.len(), FRAME);
            assert_eq!(tick.caller_live, tick.caller[0] != 0);
            assert_eq!(tick.operator_live, tick.operator[0] != 0);
            pairs.push((tick.caller[0], tick.operator[0]));
        }
        assert_eq!(b.ticks(), 50);
        // Caller: one frame of prefill, then every frame in order.
        let left: Vec<i16> = pairs.iter().map(|p| p.0).collect();
        assert_eq!(left[0], 0);
        assert_eq!(&left[1..], &(1000..1049).collect::<Vec<i16>>()[..]);
        // Operator: the gap becomes silence on the same ticks (plus the prefill after
        // it), so the two channels stay aligned.
        let right: Vec<i16> = pairs.iter().map(|p| p.1).collect();
        assert_eq!(right[1], 2000);
        assert!(right[21..31].contains(&0));
        let gap = right.iter().skip(1).filter(|&&s| s == 0).count();
        assert!((10..=12).contains(&gap), "{right:?}");
        assert_eq!(b.stats(Side::Operator).underruns, 1);
        assert_eq!(b.stats(Side::Caller).underruns, 0);
        assert_eq!(b.last_tick().caller[0], 1048);
    }

    #[test]
    fn digits_are_regenerated_where_their_audio_did_not_go() {
        let mut b = Bridge::default();
        fn fwd(
            b: &mut Bridge,
            from: Side,
            d: char,
            source: DigitSource,
            te: bool,
        ) -> Option<DtmfMode> {
            // Far apart, so no two count as one key press.
            for _ in 0..=SAME_PRESS_TICKS {
                b.tick();
            }
            b.forward_digit(from, &digit(d, source), te).map(|r| r.mode)
        }
        use DigitSource::*;
        assert_eq!(
            fwd(&mut b, Side::Caller, '1', Rfc4733, true),
            Some(DtmfMode::Rfc4733)
        );
        assert_eq!(
            fwd(&mut b, Side::Caller, '2', Rfc4733, false),
            Some(DtmfMode::Inband)
        );
        assert_eq!(
            fwd(&mut b, Side::Operator, '3', SipInfo, false),
            Some(DtmfMode::Inband)
        );
        assert_eq!(
            fwd(&mut b, Side::Operator, '4', SipInfo, true),
            Some(DtmfMode::Rfc4733)
        );
        // In-band: its tones went through with the audio already.
        assert_eq!(fwd(&mut b, Side::Caller, '5', Inband, false), None);
        assert_eq!(
            fwd(&mut b, Side::Caller, '6', Inband, true),
            Some(DtmfMode::Rfc4733)
        );
        let r = b
            .forward_digit(Side::Caller, &digit('7', Rfc4733), true)
            .unwrap();
        assert_eq!((r.digit, r.duration_ms), ('7', DIGIT_MIN_MS));
    }

    #[test]
    fn one_key_press_seen_by_two_sources_is_regenerated_once() {
        let mut b = Bridge::default();
        b.tick();
        assert!(b
            .forward_digit(Side::Caller, &digit('5', DigitSource::Rfc4733), true)
            .is_some());
        b.tick();
        b.tick();
        // The same press detected in-band, and by INFO: once is enough.
        assert!(b
            .forward_digit(Side::Caller, &digit('5', DigitSource::Inband), true)
            .is_none());
        assert!(b
            .forward_digit(Side::Caller, &digit('5', DigitSource::SipInfo), true)
            .is_none());
        // The other leg's same key is its own press.
        assert!(b
            .forward_digit(Side::Operator, &digit('5', DigitSource::Inband), true)
            .is_some());
        // Repeated presses by one source are all sent.
        assert!(b
            .forward_digit(Side::Caller, &digit('5', DigitSource::Rfc4733), true)
            .is_some());
        assert!(b
            .forward_digit(Side::Caller, &digit('5', DigitSource::Rfc4733), true)
            .is_some());
        // Later, another source's press is a new press.
        for _ in 0..=SAME_PRESS_TICKS {
            b.tick();
        }
        assert!(b
            .forward_digit(Side::Caller, &digit('5', DigitSource::SipInfo), true)
            .is_some());
    }
}
