//! Whether the media clock has fallen behind, sans-IO: fed how late each 20 ms tick
//! was, it says when the hotline is overloaded (new calls should be refused) and when
//! it has recovered.
//!
//! The measure is the mean lateness over a sliding window (1 s, about 50 ticks), not a
//! high percentile: over 50 samples a p99 is the maximum, and one scheduler hiccup or
//! disk flush would shut admission. A mean over a second only crosses a threshold of
//! several milliseconds when most ticks are late, which is what a saturated CPU looks
//! like, and a long stall (the clock's catch-up ticks are each late by what is still
//! owed) crosses it too. Leaving needs the mean under half the threshold for a few
//! seconds without a break, so that admission does not flap at the edge.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Mean lateness over `window` above which the clock counts as overloaded.
    pub threshold: Duration,
    pub window: Duration,
    /// How long the mean must stay under half the threshold to count as recovered.
    pub recover_after: Duration,
}

impl OverloadConfig {
    /// `threshold` with the default window (1 s) and recovery time (3 s).
    pub fn with_threshold(threshold: Duration) -> OverloadConfig {
        OverloadConfig {
            threshold,
            window: Duration::from_secs(1),
            recover_after: Duration::from_secs(3),
        }
    }
}

/// A change of state, with the window's mean lateness when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Entered {
        mean: Duration,
    },
    /// `worst` is the highest mean seen while overloaded.
    Left {
        mean: Duration,
        worst: Duration,
    },
}

/// Samples kept at most: the window holds about 50 ticks, a catch-up after a stall a
/// few more; past this the oldest go (the mean is then over a shorter span).
const MAX_SAMPLES: usize = 1024;
/// Lateness is counted up to an hour per tick, so that the sum cannot overflow.
const MAX_LATE_US: u64 = 3_600_000_000;

#[derive(Debug)]
pub struct OverloadDetector {
    cfg: OverloadConfig,
    /// (millisecond of the tick, lateness in microseconds), oldest first.
    samples: VecDeque<(u64, u64)>,
    sum_us: u64,
    first_ms: Option<u64>,
    overloaded: bool,
    /// Since when the mean has been under half the threshold, while overloaded.
    calm_since_ms: Option<u64>,
    worst_us: u64,
}

impl OverloadDetector {
    pub fn new(cfg: OverloadConfig) -> OverloadDetector {
        OverloadDetector {
            cfg,
            samples: VecDeque::with_capacity(64),
            sum_us: 0,
            first_ms: None,
            overloaded: false,
            calm_since_ms: None,
            worst_us: 0,
        }
    }

    pub fn threshold(&self) -> Duration {
        self.cfg.threshold
    }

    pub fn is_overloaded(&self) -> bool {
        self.overloaded
    }

    /// The mean lateness over the window (zero before the first tick).
    pub fn mean(&self) -> Duration {
        match self.samples.len() as u64 {
            0 => Duration::ZERO,
            n => Duration::from_micros(self.sum_us / n),
        }
    }

    /// A tick at `now_ms` (milliseconds of the caller's monotonic clock) that was
    /// `late` against its schedule.
    pub fn observe(&mut self, now_ms: u64, late: Duration) -> Option<Transition> {
        let late_us = late.as_micros().min(MAX_LATE_US as u128) as u64;
        let window_ms = self.cfg.window.as_millis() as u64;
        let first = *self.first_ms.get_or_insert(now_ms);
        if self.samples.len() == MAX_SAMPLES {
            self.pop_oldest();
        }
        self.samples.push_back((now_ms, late_us));
        self.sum_us += late_us;
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| at + window_ms <= now_ms)
        {
            self.pop_oldest();
        }
        // Not judged on less than a full window: the first ticks after start-up.
        if now_ms < first + window_ms {
            return None;
        }
        let mean = self.mean();
        let mean_us = mean.as_micros() as u64;
        let threshold_us = self.cfg.threshold.as_micros() as u64;
        if !self.overloaded {
            if mean_us > threshold_us {
                self.overloaded = true;
                self.calm_since_ms = None;
                self.worst_us = mean_us;
                return Some(Transition::Entered { mean });
            }
            return None;
        }
        self.worst_us = self.worst_us.max(mean_us);
        if mean_us * 2 >= threshold_us {
            self.calm_since_ms = None;
            return None;
        }
        let calm_since = *self.calm_since_ms.get_or_insert(now_ms);
        if now_ms - calm_since >= self.cfg.recover_after.as_millis() as u64 {
            self.overloaded = false;
            self.calm_since_ms = None;
            return Some(Transition::Left {
                mean,
                worst: Duration::from_micros(self.worst_us),
            });
        }
        None
    }

    fn pop_oldest(&mut self) {
        if let Some((_, us)) = self.samples.pop_front() {
            self.sum_us -= us;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn detector(threshold_ms: u32) -> OverloadDetector {
        OverloadDetector::new(OverloadConfig::with_threshold(threshold_ms * MS))
    }

    /// Feeds ticks every 20 ms from `from_ms` for `for_ms`, each `late` late; returns
    /// the transitions with their times.
    fn run(
        d: &mut OverloadDetector,
        from_ms: u64,
        for_ms: u64,
        late: Duration,
    ) -> Vec<(u64, Transition)> {
        (from_ms..from_ms + for_ms)
            .step_by(20)
            .filter_map(|t| d.observe(t, late).map(|x| (t, x)))
            .collect()
    }

    #[test]
    fn a_punctual_clock_is_never_overloaded() {
        let mut d = detector(5);
        assert!(run(&mut d, 0, 60_000, 900 * Duration::from_micros(1)).is_empty());
        assert!(!d.is_overloaded());
    }

    #[test]
    fn sustained_lateness_enters_within_a_window_and_stays() {
        let mut d = detector(5);
        assert!(run(&mut d, 0, 2_000, MS).is_empty());
        let t = run(&mut d, 2_000, 5_000, 12 * MS);
        // The mean passes 5 ms once a little under half the window is 12 ms late.
        assert_eq!(t.len(), 1, "{t:?}");
        let (at, Transition::Entered { mean }) = t[0] else {
            panic!("{t:?}")
        };
        assert!((2_300..2_700).contains(&at), "entered at {at}");
        assert!(mean > 5 * MS && mean < 12 * MS, "{mean:?}");
        assert!(d.is_overloaded());
    }

    #[test]
    fn one_stall_does_not_shut_admission_but_a_long_one_does() {
        let mut d = detector(10);
        run(&mut d, 0, 2_000, MS);
        // A 60 ms hiccup: the three catch-up ticks are 60, 40 and 20 ms late.
        for (t, late) in [(2_000, 60), (2_001, 40), (2_002, 20)] {
            assert_eq!(d.observe(t, late * MS), None);
        }
        assert!(run(&mut d, 2_020, 3_000, MS).is_empty());
        // A 1 s stall: each catch-up tick is late by what is still owed.
        let mut entered = None;
        for i in 0..50u64 {
            if let Some(x) = d.observe(6_000 + i, Duration::from_millis(1_000 - 20 * i)) {
                entered = Some(x);
            }
        }
        assert!(
            matches!(entered, Some(Transition::Entered { .. })),
            "{entered:?}"
        );
    }

    #[test]
    fn recovery_needs_a_calm_stretch_under_half_the_threshold() {
        let mut d = detector(10);
        run(&mut d, 0, 1_000, MS);
        assert_eq!(run(&mut d, 1_000, 3_000, 30 * MS).len(), 1);
        // Under the threshold but above half of it: still overloaded.
        assert!(run(&mut d, 4_000, 10_000, 7 * MS).is_empty());
        assert!(d.is_overloaded());
        // Under half: the window empties of 7 ms ticks within about 0.6 s, then 3 s.
        let t = run(&mut d, 14_000, 10_000, MS);
        assert_eq!(t.len(), 1, "{t:?}");
        let (at, Transition::Left { mean, worst }) = t[0] else {
            panic!("{t:?}")
        };
        assert!((17_000..18_000).contains(&at), "left at {at}");
        assert!(mean < 5 * MS, "{mean:?}");
        assert!(worst >= 29 * MS, "{worst:?}");
        assert!(!d.is_overloaded());
    }

    #[test]
    fn flapping_lateness_keeps_admission_shut_instead_of_flapping() {
        let mut d = detector(10);
        run(&mut d, 0, 1_000, MS);
        let mut transitions = Vec::new();
        // Two seconds bad, two seconds good, for a minute.
        for cycle in 0..15u64 {
            let start = 1_000 + cycle * 4_000;
            transitions.extend(run(&mut d, start, 2_000, 40 * MS));
            transitions.extend(run(&mut d, start + 2_000, 2_000, MS / 2));
        }
        assert_eq!(transitions.len(), 1, "{transitions:?}");
        assert!(d.is_overloaded());
        // Once it stays good, it recovers, once.
        let t = run(&mut d, 61_000, 10_000, MS / 2);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(matches!(t[0].1, Transition::Left { .. }));
    }

    #[test]
    fn nothing_is_judged_before_a_full_window_and_samples_are_bounded() {
        let mut d = detector(5);
        // Start-up: the first ticks are late (the runtime was busy starting).
        assert!(run(&mut d, 0, 900, 50 * MS).is_empty());
        // Thousands of ticks in one millisecond (a hostile or broken clock): bounded.
        for _ in 0..10_000 {
            d.observe(5_000, Duration::ZERO);
        }
        assert!(d.samples.len() <= MAX_SAMPLES);
        assert_eq!(d.mean(), Duration::ZERO);
        // Absurd lateness does not overflow.
        d.observe(5_001, Duration::MAX);
        assert!(d.is_overloaded());
    }
}
