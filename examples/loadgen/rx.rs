//! What a caller hears, measured per stream: how far each packet's spacing is from
//! 20 ms (kernel receive stamps), lost packets (sequence gaps), timestamp jumps,
//! silences in the stream (no packet for more than three frames), SSRC changes.
//! Deviations are kept only inside the measurement windows, as microseconds.

/// Nominal packet spacing.
const FRAME_NS: i64 = 20_000_000;
/// A pause in arrivals this long counts as a hole in what the caller hears.
const STALL_NS: i64 = 3 * FRAME_NS;

/// A time range on the monotonic line, nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

impl Window {
    pub fn contains(&self, t: i64) -> bool {
        (self.from..self.to).contains(&t)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stream {
    last: Option<Last>,
    pub packets: u64,
    /// Packets never received (sum of sequence gaps).
    pub missing: u64,
    /// Places where one or more packets were missing.
    pub gap_events: u64,
    /// Packets that came late (behind one already received) or twice.
    pub late_or_duplicate: u64,
    /// Timestamp steps that do not match the sequence step (160 per packet).
    pub ts_jumps: u64,
    /// Pauses in arrivals longer than three frames.
    pub stalls: u64,
    pub longest_pause_ns: i64,
    /// Of those, ending inside the measurement window.
    pub stalls_in_window: u64,
    /// When the first few pauses ended (monotonic ns).
    pub pauses_at_ns: Vec<i64>,
    pub ssrc_changes: u64,
    /// |interval − 20 ms| in µs, inside the measurement window.
    pub deviations: Vec<u32>,
    /// The same inside the burst window.
    pub burst_deviations: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u16,
    ts: u32,
    ssrc: u32,
    at_ns: i64,
}

impl Stream {
    /// One RTP packet received at `at_ns` (monotonic).
    pub fn on_packet(&mut self, p: &[u8], at_ns: i64, window: Window, burst: Option<Window>) {
        if p.len() < 12 || p[0] >> 6 != 2 {
            return;
        }
        let seq = u16::from_be_bytes([p[2], p[3]]);
        let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        self.packets += 1;
        let Some(last) = self.last else {
            self.last = Some(Last {
                seq,
                ts,
                ssrc,
                at_ns,
            });
            return;
        };
        if ssrc != last.ssrc {
            self.ssrc_changes += 1;
            self.last = Some(Last {
                seq,
                ts,
                ssrc,
                at_ns,
            });
            return;
        }
        let step = seq.wrapping_sub(last.seq) as i16;
        if step <= 0 {
            self.late_or_duplicate += 1;
            return;
        }
        let pause = at_ns - last.at_ns;
        if pause > STALL_NS {
            self.stalls += 1;
            if window.contains(at_ns) {
                self.stalls_in_window += 1;
            }
            if self.pauses_at_ns.len() < 4 {
                self.pauses_at_ns.push(at_ns);
            }
        }
        self.longest_pause_ns = self.longest_pause_ns.max(pause);
        if step > 1 {
            self.missing += (step - 1) as u64;
            self.gap_events += 1;
        }
        if ts.wrapping_sub(last.ts) != 160 * step as u32 {
            self.ts_jumps += 1;
        }
        if step == 1 {
            let dev_us = ((pause - FRAME_NS).unsigned_abs() / 1000).min(u32::MAX as u64) as u32;
            if window.contains(at_ns) {
                self.deviations.push(dev_us);
            }
            if burst.is_some_and(|b| b.contains(at_ns)) {
                self.burst_deviations.push(dev_us);
            }
        }
        self.last = Some(Last {
            seq,
            ts,
            ssrc,
            at_ns,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, ts: u32) -> [u8; 172] {
        let mut p = [0u8; 172];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&7u32.to_be_bytes());
        p
    }

    const ALL: Window = Window {
        from: i64::MIN,
        to: i64::MAX,
    };

    #[test]
    fn counts_loss_reordering_jumps_and_deviation() {
        let mut s = Stream::default();
        let ms = 1_000_000i64;
        // A wrap to 0 1 ms late, 1 lost, 1 arriving late, a timestamp jump, a stall.
        s.on_packet(&pkt(65535, 1000), 0, ALL, None);
        s.on_packet(&pkt(0, 1160), 21 * ms, ALL, None);
        s.on_packet(&pkt(2, 1480), 60 * ms, ALL, None);
        s.on_packet(&pkt(1, 1320), 61 * ms, ALL, None);
        s.on_packet(&pkt(3, 9999), 80 * ms, ALL, None);
        s.on_packet(&pkt(4, 10159), 200 * ms, ALL, None);
        assert_eq!(s.packets, 6);
        assert_eq!((s.missing, s.gap_events), (1, 1));
        assert_eq!(s.late_or_duplicate, 1);
        assert_eq!(s.ts_jumps, 1);
        assert_eq!(s.stalls, 1);
        assert_eq!(s.longest_pause_ns, 120 * ms);
        assert_eq!(s.pauses_at_ns, [200 * ms]);
        assert_eq!(s.stalls_in_window, 1);
        // Intervals only between consecutive numbers: 21, 20, 120 ms.
        assert_eq!(s.deviations, [1000, 0, 100_000]);
    }

    #[test]
    fn only_the_window_is_kept() {
        let mut s = Stream::default();
        let w = Window {
            from: 30_000_000,
            to: 50_000_000,
        };
        for i in 0..5u16 {
            s.on_packet(&pkt(i, 160 * i as u32), i as i64 * 20_000_000, w, Some(w));
        }
        assert_eq!(s.deviations.len(), 1);
        assert_eq!(s.burst_deviations.len(), 1);
    }
}
