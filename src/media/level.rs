//! Signal level of 16-bit PCM: RMS and dBov of a frame, the energy-based silence detector
//! shared by the stop logic of recordings, and a lag-searching correlation for checking that
//! recorded audio matches what was sent.
//!
//! Everything here is a pure computation over decoded samples: no I/O, no clock (time is
//! counted in samples), no codec knowledge, and no allocation.

/// Level reported for an empty or all-zero frame: the floor of the RFC 6464 audio-level range,
/// so that the value stays finite and comparable.
pub const MIN_DBOV: f64 = -127.0;

/// 0 dBov is the RMS of a full-scale square wave, so a full-scale sine reads -3.01 dBov.
const FULL_SCALE: f64 = 32768.0;

/// Mean of the squared samples (0 for an empty frame).
pub fn mean_square(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return 0.0;
    }
    // Exact in integers: 2^30 per sample leaves room for 2^33 samples before overflow.
    let sum: u64 = frame
        .iter()
        .map(|&s| (i64::from(s) * i64::from(s)) as u64)
        .sum();
    sum as f64 / frame.len() as f64
}

/// Root mean square, in sample units (0..=32768).
pub fn rms(frame: &[i16]) -> f64 {
    mean_square(frame).sqrt()
}

/// Level of the frame in dBov, floored at [`MIN_DBOV`].
pub fn dbov(frame: &[i16]) -> f64 {
    mean_square_to_dbov(mean_square(frame))
}

/// RMS in sample units of a signal at `level` dBov.
pub fn dbov_to_rms(level: f64) -> f64 {
    FULL_SCALE * 10f64.powf(level / 20.0)
}

fn mean_square_to_dbov(ms: f64) -> f64 {
    if ms > 0.0 {
        (10.0 * (ms / (FULL_SCALE * FULL_SCALE)).log10()).max(MIN_DBOV)
    } else {
        MIN_DBOV
    }
}

/// Energy-based speech/silence classifier with a minimum speech duration.
///
/// A frame is silent when its RMS is below the threshold. Speech is only *confirmed* once
/// loud frames have lasted `min_speech_samples` in a row, so that a click or a short burst of
/// line noise neither counts as the caller starting to talk nor resets the silence timer.
/// [`quiet_run`](Self::quiet_run) is therefore the time since confirmed speech last ended.
#[derive(Debug, Clone)]
pub struct SilenceDetector {
    threshold_dbov: f64,
    // Compared against the mean square so that no log or sqrt is needed per frame.
    threshold_ms: f64,
    min_speech_samples: u64,
    voiced_run: u64,
    quiet_run: u64,
    heard_speech: bool,
}

impl SilenceDetector {
    /// `threshold_dbov` is clamped to `MIN_DBOV..=0`; NaN means "nothing is silent".
    pub fn new(threshold_dbov: f64, min_speech_samples: u64) -> Self {
        let threshold_dbov = if threshold_dbov.is_nan() {
            MIN_DBOV
        } else {
            threshold_dbov.clamp(MIN_DBOV, 0.0)
        };
        let rms = dbov_to_rms(threshold_dbov);
        SilenceDetector {
            threshold_dbov,
            threshold_ms: rms * rms,
            min_speech_samples: min_speech_samples.max(1),
            voiced_run: 0,
            quiet_run: 0,
            heard_speech: false,
        }
    }

    pub fn threshold_dbov(&self) -> f64 {
        self.threshold_dbov
    }

    /// Classifies one frame and updates the runs. Returns `true` when the frame is silent.
    pub fn push(&mut self, frame: &[i16]) -> bool {
        let n = frame.len() as u64;
        let silent = mean_square(frame) < self.threshold_ms;
        if silent {
            self.voiced_run = 0;
            self.quiet_run += n;
        } else {
            self.voiced_run += n;
            if self.voiced_run >= self.min_speech_samples {
                self.heard_speech = true;
                self.quiet_run = 0;
            } else {
                // Provisionally quiet: cleared retroactively if the burst turns into speech.
                self.quiet_run += n;
            }
        }
        silent
    }

    /// Samples since confirmed speech last ended (since the start if there was none).
    pub fn quiet_run(&self) -> u64 {
        self.quiet_run
    }

    /// Whether confirmed speech has been heard since creation or the last reset.
    pub fn heard_speech(&self) -> bool {
        self.heard_speech
    }

    pub fn reset(&mut self) {
        self.voiced_run = 0;
        self.quiet_run = 0;
        self.heard_speech = false;
    }
}

/// Similarity of two signals: the Pearson correlation coefficient, maximised over lag.
///
/// For each lag `l` in `-max_lag..=max_lag`, `a[i]` is paired with `b[i + l]` wherever both
/// exist, and the Pearson coefficient of those pairs is computed with means taken over the
/// overlap: `r = Σ(a−ā)(b−b̄) / √(Σ(a−ā)² · Σ(b−b̄)²)`. The result is the largest `r` and its
/// lag; a positive lag means `b` lags behind `a` (e.g. `a` is what was sent and `b` the
/// recording, which starts later). `r` is insensitive to gain and DC offset, so a recording
/// that went through G.711 and a level change still scores close to 1.
///
/// Lags whose overlap is shorter than half the shorter signal (or 2 samples) are skipped, so a
/// few coincidentally matching samples at the edges cannot win, and so are overlaps where
/// either side is constant, since `r` is undefined there. Returns `(0.0, 0)` when no lag
/// qualifies. Cost is O(max_lag × n): meant for tests and offline checks.
pub fn correlation(a: &[i16], b: &[i16], max_lag: usize) -> (f64, isize) {
    let min_overlap = (a.len().min(b.len()) / 2).max(2);
    let max_lag = max_lag.min(a.len().max(b.len())) as isize;
    let mut best = (0.0, 0);
    let mut found = false;
    // Smallest shifts first, so that a tie goes to the lag with the largest overlap.
    let lags = (0..=max_lag).flat_map(|l| [l, -l].into_iter().take(if l == 0 { 1 } else { 2 }));
    for lag in lags {
        let start = (-lag).max(0) as usize;
        let end = (a.len() as isize).min(b.len() as isize - lag);
        if end <= start as isize || ((end as usize) - start) < min_overlap {
            continue;
        }
        let end = end as usize;
        let pairs = a[start..end]
            .iter()
            .zip(&b[(start as isize + lag) as usize..]);
        if let Some(r) = pearson(pairs) {
            if !found || r > best.0 {
                best = (r, lag);
                found = true;
            }
        }
    }
    best
}

fn pearson<'a>(pairs: impl Iterator<Item = (&'a i16, &'a i16)>) -> Option<f64> {
    // Integer sums keep the covariance exact; i128 because n·Σab can exceed i64.
    let (mut n, mut sa, mut sb, mut saa, mut sbb, mut sab) =
        (0i128, 0i128, 0i128, 0i128, 0i128, 0i128);
    for (&x, &y) in pairs {
        let (x, y) = (i128::from(x), i128::from(y));
        n += 1;
        sa += x;
        sb += y;
        saa += x * x;
        sbb += y * y;
        sab += x * y;
    }
    let cov = n * sab - sa * sb;
    let va = n * saa - sa * sa;
    let vb = n * sbb - sb * sb;
    if va <= 0 || vb <= 0 {
        return None;
    }
    Some(cov as f64 / ((va as f64).sqrt() * (vb as f64).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()) as i16)
            .collect()
    }

    #[test]
    fn levels_of_reference_signals() {
        assert_eq!(dbov(&[]), MIN_DBOV);
        assert_eq!(dbov(&[0; 160]), MIN_DBOV);
        let square = [i16::MIN; 160];
        assert!(dbov(&square).abs() < 1e-9);
        let full_sine = sine(1000.0, 32767.0, 8000);
        assert!(
            (dbov(&full_sine) + 3.01).abs() < 0.02,
            "{}",
            dbov(&full_sine)
        );
        let quiet = sine(1000.0, 32767.0 / 100.0, 8000);
        assert!((dbov(&quiet) + 43.01).abs() < 0.05);
        assert!((rms(&[3, -3, 3, -3]) - 3.0).abs() < 1e-12);
        assert!((dbov_to_rms(-6.0206) - 16384.0).abs() < 1.0);
    }

    #[test]
    fn detector_ignores_clicks_and_confirms_speech() {
        let mut d = SilenceDetector::new(-40.0, 60);
        let silence = [0i16; 20];
        let loud = [8000i16; 20];
        assert!(d.push(&silence));
        assert!(!d.push(&loud));
        assert!(d.push(&silence));
        assert!(!d.heard_speech());
        assert_eq!(d.quiet_run(), 60);
        for _ in 0..3 {
            d.push(&loud);
        }
        assert!(d.heard_speech());
        assert_eq!(d.quiet_run(), 0);
        d.push(&silence);
        d.push(&loud);
        d.push(&silence);
        assert_eq!(d.quiet_run(), 60);
        d.reset();
        assert!(!d.heard_speech());
        assert_eq!(SilenceDetector::new(f64::NAN, 0).threshold_dbov(), MIN_DBOV);
        assert_eq!(SilenceDetector::new(12.0, 0).threshold_dbov(), 0.0);
    }

    #[test]
    fn correlation_finds_delay_and_ignores_gain() {
        let mut x = 1u32;
        let noise: Vec<i16> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 20) as i16 - 2048
            })
            .collect();
        let mut delayed = vec![0i16; 37];
        delayed.extend(noise.iter().map(|&s| s / 2 + 100));
        let (r, lag) = correlation(&noise, &delayed, 100);
        assert_eq!(lag, 37);
        assert!(r > 0.999, "{r}");
        let (r, lag) = correlation(&delayed, &noise, 100);
        assert_eq!(lag, -37);
        assert!(r > 0.999);
        let inverted: Vec<i16> = noise.iter().map(|&s| -s).collect();
        assert!(correlation(&noise, &inverted, 0).0 < -0.999);
        let other = sine(440.0, 1000.0, 4000);
        assert!(correlation(&noise, &other, 50).0 < 0.2);
    }

    #[test]
    fn correlation_degenerate_inputs() {
        assert_eq!(correlation(&[], &[], 10), (0.0, 0));
        assert_eq!(correlation(&[5; 100], &[5; 100], 10), (0.0, 0));
        assert_eq!(correlation(&[1], &[1, 2, 3], 10), (0.0, 0));
        let (r, lag) = correlation(&[1, 5, 2, 8, 3], &[1, 5, 2, 8, 3], usize::MAX);
        assert!((r - 1.0).abs() < 1e-12 && lag == 0);
    }
}
