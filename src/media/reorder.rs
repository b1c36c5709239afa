//! Reordering of received RTP audio payloads by 16-bit sequence number.
//!
//! Owns: putting packets back in order, dropping duplicates and packets that arrive after
//! their slot was played, declaring a packet lost once a gap has lasted `depth` packets, and
//! restarting on a sequence jump (stream restart, SSRC change) instead of reporting thousands
//! of losses. Every decision depends only on sequence numbers.
//!
//! Must not: read sockets, parse RTP headers, decode audio, keep time, or allocate after
//! construction. Payloads are copied into fixed slots that are reused for the whole call.
//!
//! Usage: after every [`ReorderBuffer::push`], drain with `while let Some(f) = buf.pop()`;
//! at the end of the call, [`ReorderBuffer::flush`] and drain again.

/// Largest accepted payload: 40 ms of G.711.
pub const MAX_PAYLOAD: usize = 320;

/// Length reported for a lost packet until a payload has been seen: 20 ms of G.711.
pub const DEFAULT_FRAME_LEN: usize = 160;

/// How far back already-played sequence numbers are remembered, to tell duplicates from
/// late packets.
const HISTORY: i32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReorderConfig {
    /// Packets to wait for a missing one: a gap is declared lost once a packet `depth`
    /// sequence numbers past it has arrived. Clamped to `1..=64`.
    pub depth: u16,
    /// A jump larger than this (either way) restarts the sequence instead of producing
    /// `Missing` frames or being dropped as late. Clamped to `depth..=16384`.
    pub max_jump: u16,
}

impl Default for ReorderConfig {
    fn default() -> Self {
        ReorderConfig {
            depth: 3,
            max_jump: 100,
        }
    }
}

/// One 20 ms (or whatever the sender's packetisation is) step of the in-order stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Audio {
        seq: u16,
        payload: &'a [u8],
    },
    /// The packet never arrived in time. `len` is the length of the most recent payload
    /// ([`DEFAULT_FRAME_LEN`] before any), i.e. how many G.711 samples of silence to insert.
    Missing {
        seq: u16,
        len: usize,
    },
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted,
    /// Accepted as the first packet of a new sequence; frames still buffered from the old
    /// sequence are drained first.
    Restarted,
    /// Already buffered or already played.
    Duplicate,
    /// Its slot was already played as `Missing` (or it is older than the history kept).
    Late,
    /// Payload longer than [`MAX_PAYLOAD`].
    Oversized,
    /// No free slot: the buffer was not drained after earlier pushes.
    Overflow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReorderStats {
    pub accepted: u64,
    pub audio_frames: u64,
    pub missing_frames: u64,
    pub duplicates: u64,
    pub late: u64,
    pub oversized: u64,
    pub overflow: u64,
    pub restarts: u64,
    /// Buffered packets discarded because a second restart came before the first drained.
    pub discarded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Free,
    Current,
    /// Left over from before a restart; drained ahead of the current sequence.
    Previous,
}

struct Slot {
    owner: Owner,
    seq: u16,
    len: u16,
    buf: [u8; MAX_PAYLOAD],
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Sequence number of the next frame to hand out.
    next: u16,
    /// Highest sequence number received (wrapping order).
    newest: u16,
}

pub struct ReorderBuffer {
    depth: i32,
    max_jump: i32,
    slots: Box<[Slot]>,
    current: Option<Cursor>,
    previous: Option<Cursor>,
    flushing: bool,
    /// Bit k set: `next - 1 - k` was played as audio (current sequence only).
    played: u64,
    last_len: usize,
    stats: ReorderStats,
}

impl std::fmt::Debug for ReorderBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReorderBuffer")
            .field("depth", &self.depth)
            .field("current", &self.current)
            .field("previous", &self.previous)
            .field("buffered", &self.buffered())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Signed distance from `from` to `to` in sequence space: `to - from` as i16.
fn ahead(to: u16, from: u16) -> i32 {
    i32::from(to.wrapping_sub(from) as i16)
}

impl Default for ReorderBuffer {
    fn default() -> Self {
        ReorderBuffer::new(ReorderConfig::default())
    }
}

impl ReorderBuffer {
    pub fn new(config: ReorderConfig) -> Self {
        let depth = config.depth.clamp(1, 64);
        let max_jump = config.max_jump.clamp(depth, 16384);
        // After a full drain at most depth-1 packets are held, so depth+1 slots leave room
        // for the next push plus one packet of slack.
        let slots = (0..=depth)
            .map(|_| Slot {
                owner: Owner::Free,
                seq: 0,
                len: 0,
                buf: [0; MAX_PAYLOAD],
            })
            .collect();
        ReorderBuffer {
            depth: i32::from(depth),
            max_jump: i32::from(max_jump),
            slots,
            current: None,
            previous: None,
            flushing: false,
            played: 0,
            last_len: DEFAULT_FRAME_LEN,
            stats: ReorderStats::default(),
        }
    }

    pub fn stats(&self) -> &ReorderStats {
        &self.stats
    }

    /// Packets currently held.
    pub fn buffered(&self) -> usize {
        self.slots.iter().filter(|s| s.owner != Owner::Free).count()
    }

    pub fn push(&mut self, seq: u16, payload: &[u8]) -> PushOutcome {
        if payload.len() > MAX_PAYLOAD {
            self.stats.oversized += 1;
            return PushOutcome::Oversized;
        }
        let Some(cur) = self.current else {
            self.current = Some(Cursor {
                next: seq,
                newest: seq,
            });
            self.played = 0;
            return self.store(seq, payload, PushOutcome::Accepted);
        };
        let d = ahead(seq, cur.next);
        if d.abs() > self.max_jump {
            self.restart_at(seq);
            return self.store(seq, payload, PushOutcome::Restarted);
        }
        if d < 0 {
            let seen = -d <= HISTORY && self.played & (1 << (-d - 1)) != 0;
            if seen {
                self.stats.duplicates += 1;
                return PushOutcome::Duplicate;
            }
            self.stats.late += 1;
            return PushOutcome::Late;
        }
        if self.find(Owner::Current, seq).is_some() {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        let outcome = self.store(seq, payload, PushOutcome::Accepted);
        if outcome == PushOutcome::Accepted && ahead(seq, cur.newest) > 0 {
            if let Some(c) = self.current.as_mut() {
                c.newest = seq;
            }
        }
        outcome
    }

    /// Next in-order frame, or `None` when the buffer is waiting for a missing packet (or
    /// empty). Call repeatedly until `None` after each push.
    pub fn pop(&mut self) -> Option<Frame<'_>> {
        if let Some(prev) = self.previous {
            if self.slots.iter().any(|s| s.owner == Owner::Previous) {
                // The old sequence has ended: hand out all of it, filling its holes.
                self.previous = Some(Cursor {
                    next: prev.next.wrapping_add(1),
                    ..prev
                });
                return Some(self.take(Owner::Previous, prev.next));
            }
            self.previous = None;
        }
        let Some(cur) = self.current else {
            self.flushing = false;
            return None;
        };
        let present = self.find(Owner::Current, cur.next).is_some();
        let held = self.slots.iter().any(|s| s.owner == Owner::Current);
        let gap_expired = held && (self.flushing || ahead(cur.newest, cur.next) >= self.depth);
        if !present && !gap_expired {
            if self.flushing && !held {
                // Fully drained: the next push starts a fresh sequence.
                self.current = None;
                self.flushing = false;
            }
            return None;
        }
        self.current = Some(Cursor {
            next: cur.next.wrapping_add(1),
            ..cur
        });
        self.played <<= 1;
        if present {
            self.played |= 1;
        }
        Some(self.take(Owner::Current, cur.next))
    }

    /// The sender switched streams (new SSRC): frames still held drain first, and the next
    /// push starts a new sequence whatever its number. Jumps beyond `max_jump` do this
    /// by themselves.
    pub fn restart(&mut self) {
        if self.current.is_some() {
            self.retire_current();
        }
    }

    /// Ends the call: after this, `pop` hands out everything still held, with `Missing`
    /// frames for holes between held packets, then returns `None`. Packets pushed after
    /// the drain completes start a new sequence.
    pub fn flush(&mut self) {
        self.flushing = true;
    }

    fn find(&self, owner: Owner, seq: u16) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.owner == owner && s.seq == seq)
    }

    fn store(&mut self, seq: u16, payload: &[u8], outcome: PushOutcome) -> PushOutcome {
        let Some(slot) = self.slots.iter_mut().find(|s| s.owner == Owner::Free) else {
            self.stats.overflow += 1;
            return PushOutcome::Overflow;
        };
        slot.owner = Owner::Current;
        slot.seq = seq;
        slot.len = payload.len() as u16;
        slot.buf[..payload.len()].copy_from_slice(payload);
        self.stats.accepted += 1;
        outcome
    }

    /// Frees the slot holding `seq` for `owner` and returns its frame, or `Missing`.
    fn take(&mut self, owner: Owner, seq: u16) -> Frame<'_> {
        match self.find(owner, seq) {
            Some(i) => {
                self.stats.audio_frames += 1;
                let slot = &mut self.slots[i];
                slot.owner = Owner::Free;
                if slot.len > 0 {
                    self.last_len = usize::from(slot.len);
                }
                Frame::Audio {
                    seq,
                    payload: &slot.buf[..usize::from(slot.len)],
                }
            }
            None => {
                self.stats.missing_frames += 1;
                Frame::Missing {
                    seq,
                    len: self.last_len,
                }
            }
        }
    }

    fn restart_at(&mut self, seq: u16) {
        self.retire_current();
        self.current = Some(Cursor {
            next: seq,
            newest: seq,
        });
    }

    /// Moves what the current sequence holds behind it, to be drained ahead of whatever
    /// is pushed next.
    fn retire_current(&mut self) {
        self.stats.restarts += 1;
        for slot in self.slots.iter_mut() {
            match slot.owner {
                Owner::Previous => {
                    // A second restart before the first drained: the consumer is not
                    // draining, so keep only the most recent old sequence.
                    self.stats.discarded += 1;
                    slot.owner = Owner::Free;
                }
                Owner::Current => slot.owner = Owner::Previous,
                Owner::Free => {}
            }
        }
        let held = self.slots.iter().any(|s| s.owner == Owner::Previous);
        self.previous = if held { self.current } else { None };
        self.current = None;
        self.played = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains the buffer into (seq, Some(first byte)) / (seq, None) pairs.
    fn drain(b: &mut ReorderBuffer) -> Vec<(u16, Option<u8>)> {
        let mut out = Vec::new();
        while let Some(f) = b.pop() {
            out.push(match f {
                Frame::Audio { seq, payload } => (seq, payload.first().copied()),
                Frame::Missing { seq, .. } => (seq, None),
            });
        }
        out
    }

    fn push_drain(b: &mut ReorderBuffer, seq: u16) -> Vec<(u16, Option<u8>)> {
        b.push(seq, &[seq as u8; 160]);
        drain(b)
    }

    fn audio(seqs: impl IntoIterator<Item = u16>) -> Vec<(u16, Option<u8>)> {
        seqs.into_iter().map(|s| (s, Some(s as u8))).collect()
    }

    #[test]
    fn in_order_passes_straight_through() {
        let mut b = ReorderBuffer::default();
        for s in 10..20 {
            assert_eq!(push_drain(&mut b, s), audio([s]));
        }
        assert_eq!(b.stats().audio_frames, 10);
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn reordered_within_depth_is_restored() {
        let mut b = ReorderBuffer::default();
        assert_eq!(push_drain(&mut b, 1), audio([1]));
        assert_eq!(push_drain(&mut b, 3), vec![]);
        assert_eq!(push_drain(&mut b, 4), vec![]);
        assert_eq!(push_drain(&mut b, 2), audio([2, 3, 4]));
        assert_eq!(b.stats().missing_frames, 0);
    }

    #[test]
    fn gap_becomes_missing_after_depth_packets() {
        let mut b = ReorderBuffer::default();
        push_drain(&mut b, 1);
        assert_eq!(push_drain(&mut b, 3), vec![]);
        assert_eq!(push_drain(&mut b, 4), vec![]);
        let mut expected = vec![(2, None)];
        expected.extend(audio([3, 4, 5]));
        assert_eq!(push_drain(&mut b, 5), expected);
        assert_eq!(b.push(2, &[2; 160]), PushOutcome::Late);
        assert_eq!(b.stats().late, 1);
        b.push(7, &[0; 240]);
        b.push(9, &[0; 10]);
        // 6 is given up once 9 (depth 3 past it) arrives; its length is the last one played.
        assert_eq!(b.pop(), Some(Frame::Missing { seq: 6, len: 160 }));
    }

    #[test]
    fn missing_len_follows_packetisation() {
        let mut b = ReorderBuffer::default();
        b.push(1, &[1; 240]);
        drain(&mut b);
        b.push(5, &[5; 240]);
        assert_eq!(b.pop(), Some(Frame::Missing { seq: 2, len: 240 }));
    }

    #[test]
    fn burst_loss_waits_for_the_last_depth_packets() {
        let mut b = ReorderBuffer::default();
        push_drain(&mut b, 100);
        let out = push_drain(&mut b, 150);
        // 101..=147 are given up; 148 and 149 may still arrive.
        assert_eq!(out.len(), 47);
        assert!(out.iter().all(|f| f.1.is_none()));
        assert_eq!(push_drain(&mut b, 149), vec![]);
        assert_eq!(push_drain(&mut b, 148), audio([148, 149, 150]));
    }

    #[test]
    fn duplicates_buffered_and_played_are_dropped() {
        let mut b = ReorderBuffer::default();
        push_drain(&mut b, 1);
        assert_eq!(b.push(1, &[1; 160]), PushOutcome::Duplicate);
        b.push(3, &[3; 160]);
        assert_eq!(b.push(3, &[3; 160]), PushOutcome::Duplicate);
        assert_eq!(b.stats().duplicates, 2);
        assert_eq!(push_drain(&mut b, 2), audio([2, 3]));
        assert_eq!(b.push(2, &[0; 160]), PushOutcome::Duplicate);
        assert_eq!(b.stats().duplicates, 3);
    }

    #[test]
    fn sequence_wraps_around() {
        let mut b = ReorderBuffer::default();
        let mut out = Vec::new();
        for s in [65533u16, 65535, 65534, 1, 0, 2] {
            out.extend(push_drain(&mut b, s));
        }
        assert_eq!(out, audio([65533, 65534, 65535, 0, 1, 2]));
        out.clear();
        for s in [4u16, 5, 6] {
            out.extend(push_drain(&mut b, s));
        }
        assert_eq!(out[0], (3, None));
    }

    #[test]
    fn huge_jump_restarts_without_mass_missing() {
        let mut b = ReorderBuffer::default();
        push_drain(&mut b, 10);
        b.push(12, &[12; 160]);
        assert_eq!(b.push(40_000, &[7; 160]), PushOutcome::Restarted);
        // The old stream is drained (with its hole) before the new one starts.
        assert_eq!(
            drain(&mut b),
            vec![(11, None), (12, Some(12)), (40_000, Some(7))]
        );
        assert_eq!(push_drain(&mut b, 40_001), audio([40_001]));
        assert_eq!(b.stats().restarts, 1);
        assert_eq!(b.stats().missing_frames, 1);
        // A big jump backwards (new SSRC with a lower random start) restarts too.
        assert_eq!(b.push(5, &[5; 160]), PushOutcome::Restarted);
        assert_eq!(drain(&mut b), audio([5]));
    }

    #[test]
    fn explicit_restart_accepts_a_nearby_sequence() {
        let mut b = ReorderBuffer::default();
        push_drain(&mut b, 10);
        b.push(12, &[12; 160]);
        b.restart();
        // Without the restart, 11 would fill the hole of the old stream.
        assert_eq!(b.push(11, &[11; 160]), PushOutcome::Accepted);
        assert_eq!(
            drain(&mut b),
            vec![(11, None), (12, Some(12)), (11, Some(11))]
        );
        assert_eq!(b.stats().restarts, 1);
        let mut fresh = ReorderBuffer::default();
        fresh.restart();
        fresh.flush();
        assert_eq!(fresh.pop(), None);
        assert_eq!(push_drain(&mut fresh, 7), audio([7]));
        assert_eq!(push_drain(&mut fresh, 9), vec![]);
    }

    #[test]
    fn flush_drains_everything_and_resets() {
        let mut b = ReorderBuffer::new(ReorderConfig {
            depth: 5,
            ..ReorderConfig::default()
        });
        push_drain(&mut b, 1);
        b.push(3, &[3; 160]);
        b.push(5, &[5; 160]);
        assert_eq!(drain(&mut b), vec![]);
        b.flush();
        assert_eq!(
            drain(&mut b),
            vec![(2, None), (3, Some(3)), (4, None), (5, Some(5))]
        );
        assert_eq!(b.buffered(), 0);
        // A new call can reuse the buffer from any sequence number.
        assert_eq!(push_drain(&mut b, 30_000), audio([30_000]));
        b.flush();
        assert_eq!(drain(&mut b), vec![]);
    }

    #[test]
    fn oversized_and_overflow_are_rejected() {
        let mut b = ReorderBuffer::default();
        assert_eq!(b.push(1, &[0; MAX_PAYLOAD + 1]), PushOutcome::Oversized);
        assert_eq!(b.push(1, &[0; MAX_PAYLOAD]), PushOutcome::Accepted);
        assert_eq!(b.push(1, &[]), PushOutcome::Duplicate);
        // Not draining: the slots fill up.
        for s in 3..6 {
            b.push(s, &[0; 160]);
        }
        assert_eq!(b.push(7, &[0; 160]), PushOutcome::Overflow);
        assert_eq!(b.stats().oversized, 1);
        assert_eq!(b.stats().overflow, 1);
    }

    #[test]
    fn config_is_clamped() {
        let mut b = ReorderBuffer::new(ReorderConfig {
            depth: 0,
            max_jump: 0,
        });
        push_drain(&mut b, 1);
        let out = push_drain(&mut b, 3);
        assert_eq!(out, vec![(2, None), (3, Some(3))]);
    }

    #[test]
    fn random_sequences_never_panic_and_stay_ordered() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let payload = [0u8; MAX_PAYLOAD + 8];
        for round in 0..50 {
            let mut b = ReorderBuffer::new(ReorderConfig {
                depth: (round % 6) as u16,
                max_jump: (rnd() % 300) as u16,
            });
            let mut base = rnd() as u16;
            let mut last: Option<u16> = None;
            let mut jumps_allowed = 0;
            for _ in 0..2000 {
                let r = rnd();
                let seq = match r % 10 {
                    0 => rnd() as u16,
                    1..=3 => base.wrapping_add((r >> 8) as u16 % 8).wrapping_sub(4),
                    _ => {
                        base = base.wrapping_add(1);
                        base
                    }
                };
                let len = (r >> 20) as usize % (MAX_PAYLOAD + 8);
                match b.push(seq, &payload[..len]) {
                    PushOutcome::Overflow => panic!("overflow while draining after every push"),
                    PushOutcome::Restarted => jumps_allowed += 1,
                    _ => {}
                }
                let mut n = 0;
                while let Some(f) = b.pop() {
                    let seq = match f {
                        Frame::Audio { seq, payload } => {
                            assert!(payload.len() <= MAX_PAYLOAD);
                            seq
                        }
                        Frame::Missing { seq, len } => {
                            assert!(len <= MAX_PAYLOAD);
                            seq
                        }
                    };
                    if let Some(l) = last {
                        if ahead(seq, l) != 1 {
                            assert!(jumps_allowed > 0, "{l} -> {seq} without a restart");
                            jumps_allowed -= 1;
                        }
                    }
                    last = Some(seq);
                    n += 1;
                    assert!(n <= 16_384, "runaway drain");
                }
                assert!(b.buffered() < b.depth as usize);
            }
            b.flush();
            while b.pop().is_some() {}
            assert_eq!(b.buffered(), 0);
        }
    }
}
