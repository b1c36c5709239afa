//! In-band DTMF detection (ITU-T Q.23/Q.24) over 8 kHz 16-bit linear PCM, one
//! detector per call leg. It owns the detection state only and must not decode RTP,
//! resample or read clocks: the caller passes the time of each chunk's first sample.
//!
//! Method: Goertzel filters at the eight DTMF frequencies over 102-sample blocks
//! (12.75 ms) advancing by half a block. A block is a hit when one row and one column
//! tone stand out from their groups, carry most of the block's energy and keep the
//! phase advance of their nominal frequencies from the previous block. A digit is
//! reported when four consecutive blocks hit with the same digit and the run as a
//! whole has the right frequencies and twist; it is released after five blocks
//! without it, so the same key pressed again after a pause is a new digit.

use super::dtmf::{dbm0_to_peak, COL_FREQS, KEYPAD, ROW_FREQS};
use crate::call::{DigitEvent, DigitSource};
use std::f64::consts::TAU;

const SAMPLE_RATE: u32 = 8000;
/// Half a block; the block advances by this much. 51 samples = 6.375 ms.
const HALF: usize = 51;
/// 102 samples: long enough to separate the row tones (73 Hz apart), short enough
/// that a 40 ms tone covers five of them.
const BLOCK: usize = 2 * HALF;
const BLOCK_F: f32 = BLOCK as f32;

/// Consecutive hits that register a digit. A 40 ms tone yields at least five blocks
/// that are 70 % filled, a 20 ms one at most three.
const MIN_HITS: u32 = 4;
/// Consecutive blocks without the digit that release it. A pause of 30 ms spoils at
/// least five blocks, so `11` keyed with the usual 40 ms pause is two digits, while
/// a 15 ms interruption spoils at most four and a 20 ms one (a lost packet played as
/// silence) rarely five, so such dropouts do not split a held key.
const RELEASE_BLOCKS: u32 = 5;
/// Share of the block's energy that the two tones must carry. This is what rejects
/// speech and music, which spread energy over harmonics and formants, and blocks
/// only partly covered by a tone (the share equals the covered fraction).
const MIN_TONE_ENERGY_SHARE: f32 = 0.7;
/// The strongest tone of a group must exceed the others by this much (power ratio,
/// 6 dB). Needed on top of the energy share when both tones sit between bins.
const RELATIVE_PEAK: f32 = 3.98;
/// Per-block frequency error still accepted on top of the configured tolerance:
/// a single block's estimate is noisier than the run average that is checked
/// against the tolerance itself.
const STEP_MARGIN: f32 = 0.01;

/// Allowance on top of the configured twist limits for measurement error (leakage
/// residue, G.711 quantisation, noise), so a tone exactly at a limit is accepted.
const TWIST_ALLOWANCE_DB: f32 = 1.0;

/// Detection thresholds. The defaults follow Q.24's common values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InbandConfig {
    /// Weakest tone accepted, per tone (Q.24 requires −26 dBm0 to pass and most
    /// administrations −35 dBm0 to fail).
    pub min_level_dbm0: f32,
    /// How much stronger the low tone may be than the high one (accepted up to
    /// this; rejected from about a decibel above).
    pub max_normal_twist_db: f32,
    /// How much stronger the high tone may be than the low one.
    pub max_reverse_twist_db: f32,
    /// Accepted frequency deviation as a fraction (±1.5 % must pass, ±3.5 % fail).
    /// The default of 2 % rather than the midpoint leaves fewer chances to music
    /// that glides through two tones near a DTMF pair.
    pub freq_tolerance: f32,
}

impl Default for InbandConfig {
    fn default() -> Self {
        Self {
            min_level_dbm0: -32.0,
            max_normal_twist_db: 8.0,
            max_reverse_twist_db: 4.0,
            freq_tolerance: 0.02,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Cx {
    re: f32,
    im: f32,
}

impl Cx {
    fn from_polar(angle: f64) -> Self {
        Self {
            re: angle.cos() as f32,
            im: angle.sin() as f32,
        }
    }
    fn mul(self, o: Self) -> Self {
        Self {
            re: self.re * o.re - self.im * o.im,
            im: self.re * o.im + self.im * o.re,
        }
    }
    fn conj(self) -> Self {
        Self {
            re: self.re,
            im: -self.im,
        }
    }
    fn add(self, o: Self) -> Self {
        Self {
            re: self.re + o.re,
            im: self.im + o.im,
        }
    }
    fn sub(self, o: Self) -> Self {
        Self {
            re: self.re - o.re,
            im: self.im - o.im,
        }
    }
    fn scale(self, k: f32) -> Self {
        Self {
            re: self.re * k,
            im: self.im * k,
        }
    }
    fn norm_sqr(self) -> f32 {
        self.re * self.re + self.im * self.im
    }
    fn arg(self) -> f32 {
        self.im.atan2(self.re)
    }
}

/// Everything derived from the configuration and the frequency grid, computed once.
#[derive(Debug, Clone)]
struct Tables {
    /// Goertzel feedback coefficients 2·cos(ω), rows then columns.
    coef: [f32; 8],
    /// e^{−jω(HALF−1)}: turns the two Goertzel states into the half-block's DFT term
    /// referenced to its first sample.
    head: [Cx; 8],
    /// e^{−jω·HALF}: the phase a tone at exactly ω advances over half a block.
    hop: [Cx; 8],
    /// ω in radians per sample.
    omega: [f32; 8],
    /// Leakage of row tone r into the bin of column c over one block, relative to
    /// the row tone's own bin. The rectangular window's sidelobes reach −21 dB
    /// (941 Hz into 1209 Hz), which with 8 dB of twist would bias both the level and
    /// the phase of the weaker tone, so the pair is solved jointly.
    leak: [[Cx; 4]; 4],
    /// Minimum |X|² of a tone at the configured level.
    min_tone_power: f32,
    max_normal_twist: f32,
    max_reverse_twist: f32,
    freq_tolerance: f32,
}

impl Tables {
    fn new(config: &InbandConfig) -> Self {
        let freqs: [f64; 8] = std::array::from_fn(|k| {
            f64::from(if k < 4 {
                ROW_FREQS[k]
            } else {
                COL_FREQS[k - 4]
            })
        });
        let omega_of = |k: usize| TAU * freqs[k] / f64::from(SAMPLE_RATE);
        let block_kernel = |d: f64| {
            // (1/N)·Σ_{n<N} e^{jdn}
            let (mut re, mut im) = (0.0, 0.0);
            for n in 0..BLOCK {
                re += (d * n as f64).cos();
                im += (d * n as f64).sin();
            }
            Cx {
                re: (re / BLOCK as f64) as f32,
                im: (im / BLOCK as f64) as f32,
            }
        };
        let amp = f64::from(dbm0_to_peak(config.min_level_dbm0));
        Self {
            coef: std::array::from_fn(|k| (2.0 * omega_of(k).cos()) as f32),
            head: std::array::from_fn(|k| Cx::from_polar(-omega_of(k) * (HALF - 1) as f64)),
            hop: std::array::from_fn(|k| Cx::from_polar(-omega_of(k) * HALF as f64)),
            omega: std::array::from_fn(|k| omega_of(k) as f32),
            leak: std::array::from_fn(|r| {
                std::array::from_fn(|c| block_kernel(omega_of(r) - omega_of(4 + c)))
            }),
            min_tone_power: (BLOCK as f64 * amp / 2.0).powi(2) as f32,
            max_normal_twist: 10f32.powf((config.max_normal_twist_db + TWIST_ALLOWANCE_DB) / 10.0),
            max_reverse_twist: 10f32
                .powf((config.max_reverse_twist_db + TWIST_ALLOWANCE_DB) / 10.0),
            freq_tolerance: config.freq_tolerance,
        }
    }

    /// Each tone's own DFT term with the other tone's leakage removed:
    /// X_row = b_row + conj(κ)·b_col and X_col = b_col + κ·b_row, with |κ|² < 0.01.
    fn separate(&self, x: &[Cx; 8], row: usize, col: usize) -> (Cx, Cx) {
        let k = self.leak[row][col];
        let inv_det = 1.0 / (1.0 - k.norm_sqr());
        let (xr, xc) = (x[row], x[4 + col]);
        (
            xr.sub(k.conj().mul(xc)).scale(inv_det),
            xc.sub(k.mul(xr)).scale(inv_det),
        )
    }
}

/// A block that passed every per-block test.
#[derive(Debug, Clone, Copy)]
struct Hit {
    key: usize,
    /// Frequency deviation since the previous block, as a fraction.
    row_dev: f32,
    col_dev: f32,
    row_power: f32,
    col_power: f32,
}

/// Consecutive hits of one key.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    key: usize,
    len: u32,
    start_ms: u64,
    /// Sums of the deviations of all hits but the first, whose phase reference is
    /// the block before the run: at a tone's onset that block is partly silent,
    /// which pulls the estimate towards zero deviation.
    row_dev: f32,
    col_dev: f32,
    row_power: f32,
    col_power: f32,
}

/// In-band DTMF detector for one audio stream.
#[derive(Debug, Clone)]
pub struct InbandDetector {
    t: Tables,
    // Goertzel state of the half-block being filled.
    s1: [f32; 8],
    s2: [f32; 8],
    energy: f32,
    sum: f32,
    fill: usize,
    half_start_ms: u64,
    // The previous half-block, finished.
    prev_half: Option<HalfBlock>,
    /// DFT terms of the previous block, the phase reference for the current one.
    prev_block: Option<[Cx; 8]>,
    run: Run,
    /// Key currently held, and how many blocks in a row have lacked it.
    active: Option<(usize, u32)>,
    events: Vec<DigitEvent>,
}

#[derive(Debug, Clone, Copy)]
struct HalfBlock {
    x: [Cx; 8],
    energy: f32,
    sum: f32,
    start_ms: u64,
}

impl Default for InbandDetector {
    fn default() -> Self {
        Self::new(InbandConfig::default())
    }
}

impl InbandDetector {
    pub fn new(config: InbandConfig) -> Self {
        Self::with_tables(Tables::new(&config), Vec::with_capacity(4))
    }

    fn with_tables(t: Tables, events: Vec<DigitEvent>) -> Self {
        Self {
            t,
            s1: [0.0; 8],
            s2: [0.0; 8],
            energy: 0.0,
            sum: 0.0,
            fill: 0,
            half_start_ms: 0,
            prev_half: None,
            prev_block: None,
            run: Run::default(),
            active: None,
            events,
        }
    }

    /// Drops all state but the configuration, e.g. after a gap in the audio.
    pub fn reset(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        *self = Self::with_tables(self.t.clone(), events);
    }

    /// Feeds consecutive samples; `now_ms` is the time of `samples[0]`. Returns the
    /// digits recognised during this chunk (valid until the next call). Chunks may
    /// have any length.
    pub fn push(&mut self, samples: &[i16], now_ms: u64) -> &[DigitEvent] {
        self.events.clear();
        let ms_at = |i: usize| now_ms.saturating_add(i as u64 * 1000 / u64::from(SAMPLE_RATE));
        let mut i = 0;
        while i < samples.len() {
            if self.fill == 0 {
                self.half_start_ms = ms_at(i);
            }
            let take = (HALF - self.fill).min(samples.len() - i);
            self.filter(&samples[i..i + take]);
            self.fill += take;
            i += take;
            if self.fill == HALF {
                self.end_half(ms_at(i));
            }
        }
        &self.events
    }

    /// The per-sample work: eight Goertzel recursions plus energy and DC sums,
    /// laid out so that the compiler vectorises across the filters.
    fn filter(&mut self, chunk: &[i16]) {
        let coef = self.t.coef;
        let (mut s1, mut s2) = (self.s1, self.s2);
        let (mut energy, mut sum) = (self.energy, self.sum);
        for &x in chunk {
            let x = f32::from(x);
            for k in 0..8 {
                // `x - s2` does not depend on the previous step, which keeps the
                // loop-carried chain to one multiply and one add.
                let s0 = (x - s2[k]) + coef[k] * s1[k];
                s2[k] = s1[k];
                s1[k] = s0;
            }
            energy += x * x;
            sum += x;
        }
        (self.s1, self.s2, self.energy, self.sum) = (s1, s2, energy, sum);
    }

    fn end_half(&mut self, end_ms: u64) {
        let t = &self.t;
        let half = HalfBlock {
            x: std::array::from_fn(|k| t.head[k].scale(self.s1[k]).sub(t.hop[k].scale(self.s2[k]))),
            energy: self.energy,
            sum: self.sum,
            start_ms: self.half_start_ms,
        };
        (self.s1, self.s2, self.energy, self.sum, self.fill) = ([0.0; 8], [0.0; 8], 0.0, 0.0, 0);
        if let Some(prev) = self.prev_half.replace(half) {
            let hit = self.analyse_block(&prev, &half);
            self.track(hit, prev.start_ms, end_ms);
        }
    }

    /// Per-block tests on the block made of halves `a` then `b`.
    fn analyse_block(&mut self, a: &HalfBlock, b: &HalfBlock) -> Option<Hit> {
        let t = &self.t;
        let x: [Cx; 8] = std::array::from_fn(|k| a.x[k].add(t.hop[k].mul(b.x[k])));
        let sum = a.sum + b.sum;
        // DC would otherwise count against the tones' energy share.
        let energy = a.energy + b.energy - sum * sum / BLOCK_F;
        // The previous block serves as phase reference whether or not it passed, so
        // that the first full block of a short tone can already count.
        let prev = self.prev_block.replace(x)?;
        let (row, col) = self.candidate(&x, energy)?;
        let (row_x, col_x) = t.separate(&x, row, col);
        let (prev_row_x, prev_col_x) = t.separate(&prev, row, col);
        // A tone at ω+δ advances by (ω+δ)·HALF between blocks; the hop factor removes ω.
        let dev = |now: Cx, before: Cx, k: usize| {
            now.mul(before.conj()).mul(t.hop[k]).arg() / (HALF as f32 * t.omega[k])
        };
        let row_dev = dev(row_x, prev_row_x, row);
        let col_dev = dev(col_x, prev_col_x, 4 + col);
        let step_limit = t.freq_tolerance + STEP_MARGIN;
        if row_dev.abs() > step_limit || col_dev.abs() > step_limit {
            return None;
        }
        // An off-centre tone loses power to the bin's roll-off; restore it, but no
        // further than the tolerance so that noise cannot be inflated.
        let restore = |x: Cx, dev: f32, k: usize| {
            let d = dev.abs().min(t.freq_tolerance) * t.omega[k];
            let gain = (d * BLOCK_F / 2.0).sin() / (BLOCK_F * (d / 2.0).sin());
            if gain.is_finite() && gain > 0.0 {
                x.norm_sqr() / (gain * gain)
            } else {
                x.norm_sqr()
            }
        };
        let row_power = restore(row_x, row_dev, row);
        let col_power = restore(col_x, col_dev, 4 + col);
        // |X|²·2/N is the energy of a sine over the block.
        if (row_power + col_power) * 2.0 / BLOCK_F < MIN_TONE_ENERGY_SHARE * energy {
            return None;
        }
        Some(Hit {
            key: row * 4 + col,
            row_dev,
            col_dev,
            row_power,
            col_power,
        })
    }

    /// Strongest row and column if both are loud enough and dominate their groups.
    fn candidate(&self, x: &[Cx; 8], energy: f32) -> Option<(usize, usize)> {
        let t = &self.t;
        // Two tones at the minimum level carry this much; skip quiet blocks early.
        if energy * (BLOCK_F / 2.0) < t.min_tone_power {
            return None;
        }
        let p: [f32; 8] = std::array::from_fn(|k| x[k].norm_sqr());
        let strongest = |group: &[f32]| -> Option<usize> {
            let (best, &peak) = group.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
            let dominant = group
                .iter()
                .enumerate()
                .all(|(i, &q)| i == best || q * RELATIVE_PEAK <= peak);
            (peak >= t.min_tone_power && dominant).then_some(best)
        };
        Some((strongest(&p[..4])?, strongest(&p[4..])?))
    }

    /// Debounces block hits into key presses.
    fn track(&mut self, hit: Option<Hit>, block_start_ms: u64, block_end_ms: u64) {
        match hit {
            Some(h) if self.run.len > 0 && self.run.key == h.key => {
                let r = &mut self.run;
                r.len = r.len.saturating_add(1);
                r.row_dev += h.row_dev;
                r.col_dev += h.col_dev;
                r.row_power += h.row_power;
                r.col_power += h.col_power;
            }
            Some(h) => {
                self.run = Run {
                    key: h.key,
                    len: 1,
                    start_ms: block_start_ms,
                    row_dev: 0.0,
                    col_dev: 0.0,
                    row_power: h.row_power,
                    col_power: h.col_power,
                }
            }
            None => self.run.len = 0,
        }
        if let Some((key, misses)) = self.active.as_mut() {
            if hit.is_some_and(|h| h.key == *key) {
                *misses = 0;
            } else {
                *misses += 1;
                if *misses >= RELEASE_BLOCKS {
                    self.active = None;
                }
            }
        }
        if self.active.is_none() && self.run.len >= MIN_HITS && self.run_is_dtmf() {
            let key = self.run.key;
            self.active = Some((key, 0));
            self.events.push(DigitEvent {
                digit: KEYPAD[key / 4][key % 4],
                source: DigitSource::Inband,
                at_ms: self.run.start_ms,
                duration_ms: block_end_ms.saturating_sub(self.run.start_ms) as u32,
            });
        }
    }

    /// Checks made on the run as a whole, where phase and leakage errors of single
    /// blocks average out: the phase differences telescope, so the mean deviation is
    /// the phase drift from the run's first block to its last.
    fn run_is_dtmf(&self) -> bool {
        let r = &self.run;
        let n = r.len.saturating_sub(1).max(1) as f32;
        let tol = self.t.freq_tolerance;
        (r.row_dev / n).abs() <= tol
            && (r.col_dev / n).abs() <= tol
            && r.row_power <= r.col_power * self.t.max_normal_twist
            && r.col_power <= r.row_power * self.t.max_reverse_twist
    }
}

#[cfg(test)]
mod tests {
    use super::super::dtmf::{digit_frequencies, DIGITS};
    use super::super::g711::{decode_into, encode};
    use super::super::tone::{dtmf_tone, samples_for_ms, tones};
    use super::*;
    use crate::call::Codec;

    const ALL: &str = "1234567890*#ABCD";

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Approximately standard normal (Irwin–Hall with 12 terms).
        fn gauss(&mut self) -> f64 {
            (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
        }
    }

    fn silence(ms: u32) -> Vec<i16> {
        vec![0; samples_for_ms(ms, SAMPLE_RATE)]
    }

    /// `digits` as tones of `on_ms` separated by `off_ms`, with `lead` samples of
    /// silence first and 100 ms after.
    fn sequence(digits: &str, on_ms: u32, off_ms: u32, level: f32, lead: usize) -> Vec<i16> {
        let mut out = vec![0; lead];
        for d in digits.chars() {
            out.extend(dtmf_tone(d, on_ms, level, SAMPLE_RATE).expect("valid digit"));
            out.extend(silence(off_ms));
        }
        out.extend(silence(100));
        out
    }

    /// Runs a fresh detector over `audio` in 20 ms frames.
    fn detect(audio: &[i16]) -> Vec<DigitEvent> {
        detect_in_chunks(audio, 160)
    }

    fn detect_in_chunks(audio: &[i16], chunk: usize) -> Vec<DigitEvent> {
        let mut det = InbandDetector::default();
        let mut out = Vec::new();
        for (i, frame) in audio.chunks(chunk).enumerate() {
            let now = (i * chunk) as u64 * 1000 / 8000;
            out.extend_from_slice(det.push(frame, now));
        }
        out
    }

    fn digits(events: &[DigitEvent]) -> String {
        events.iter().map(|e| e.digit).collect()
    }

    fn g711_round_trip(codec: Codec, audio: &[i16]) -> Vec<i16> {
        let mut bytes = Vec::new();
        encode(codec, audio, &mut bytes);
        let mut out = Vec::new();
        decode_into(codec, &bytes, &mut out);
        out
    }

    fn add_noise(audio: &mut [i16], level_dbm0: f32, seed: u64) {
        let mut rng = XorShift(seed);
        let rms = f64::from(dbm0_to_peak(level_dbm0)) / 2f64.sqrt();
        for s in audio {
            *s = (f64::from(*s) + rms * rng.gauss()).round() as i16;
        }
    }

    /// Two tones with given offsets (fractions) and levels.
    fn pair(digit: char, row: (f32, f32), col: (f32, f32), ms: u32) -> Vec<i16> {
        let (lo, hi) = digit_frequencies(digit).expect("valid digit");
        tones(
            &[(lo * (1.0 + row.0), row.1), (hi * (1.0 + col.0), col.1)],
            ms,
            SAMPLE_RATE,
        )
    }

    fn padded(mut tone: Vec<i16>, lead: usize) -> Vec<i16> {
        let mut out = vec![0; lead];
        out.append(&mut tone);
        out.extend(silence(100));
        out
    }

    #[test]
    fn all_digits_40ms_at_minus_20_dbm0_at_every_alignment() {
        for lead in (0..BLOCK).step_by(5) {
            let audio = sequence(ALL, 40, 40, -20.0, lead);
            assert_eq!(digits(&detect(&audio)), ALL, "lead {lead}");
        }
    }

    #[test]
    fn chunk_size_does_not_matter() {
        let audio = sequence(ALL, 50, 50, -20.0, 13);
        let reference = detect(&audio);
        assert_eq!(digits(&reference), ALL);
        for chunk in [1, 7, 51, 80, 333, audio.len()] {
            let events = detect_in_chunks(&audio, chunk);
            assert_eq!(digits(&events), ALL, "chunk {chunk}");
            // Chunk times are whole milliseconds, so event times may differ by one.
            for (a, b) in events.iter().zip(&reference) {
                assert!(a.at_ms.abs_diff(b.at_ms) <= 1, "chunk {chunk}: {a:?} {b:?}");
                assert!(
                    a.duration_ms.abs_diff(b.duration_ms) <= 2,
                    "chunk {chunk}: {a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn reports_start_time_and_duration() {
        let mut audio = silence(1000);
        audio.extend(dtmf_tone('7', 200, -15.0, SAMPLE_RATE).expect("valid digit"));
        audio.extend(silence(300));
        let ev = detect(&audio);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].source, DigitSource::Inband);
        assert!((995..=1015).contains(&ev[0].at_ms), "{:?}", ev[0]);
        assert!((30..=60).contains(&ev[0].duration_ms), "{:?}", ev[0]);
    }

    #[test]
    fn survives_g711_round_trip() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for lead in [0, 17, 40, 77] {
                for level in [-20.0, -26.0] {
                    let audio = g711_round_trip(codec, &sequence(ALL, 40, 40, level, lead));
                    assert_eq!(
                        digits(&detect(&audio)),
                        ALL,
                        "{codec:?} lead {lead} {level}"
                    );
                }
            }
        }
    }

    #[test]
    fn white_noise_at_20_db_snr() {
        // The pair at −20 dBm0 per tone is −17 dBm0 in total; noise 20 dB below that.
        for seed in 1..=5 {
            let mut audio = sequence(ALL, 40, 40, -20.0, seed as usize * 11);
            add_noise(&mut audio, -37.0, seed);
            assert_eq!(digits(&detect(&audio)), ALL, "seed {seed}");
        }
        // And at the weakest level Q.24 requires, with noise 20 dB below it.
        let mut audio = sequence(ALL, 40, 40, -26.0, 3);
        add_noise(&mut audio, -43.0, 9);
        assert_eq!(digits(&detect(&audio)), ALL);
    }

    #[test]
    fn level_range() {
        for level in [-26.0, -30.0, -3.0, 0.0] {
            let audio = sequence(ALL, 40, 40, level, 21);
            assert_eq!(digits(&detect(&audio)), ALL, "{level} dBm0");
        }
        for level in [-36.0, -45.0] {
            let audio = sequence(ALL, 100, 40, level, 21);
            assert_eq!(digits(&detect(&audio)), "", "{level} dBm0");
        }
    }

    #[test]
    fn twist_limits() {
        let accept = [(-16.0, -24.0), (-20.0, -16.0), (-18.0, -18.0)];
        let reject = [(-14.0, -25.0), (-21.0, -14.0)];
        for lead in [0, 25, 50] {
            for d in ALL.chars() {
                for (row, col) in accept {
                    let audio = padded(pair(d, (0.0, row), (0.0, col), 40), lead);
                    assert_eq!(digits(&detect(&audio)), d.to_string(), "{d} {row}/{col}");
                }
                for (row, col) in reject {
                    let audio = padded(pair(d, (0.0, row), (0.0, col), 100), lead);
                    assert_eq!(digits(&detect(&audio)), "", "{d} {row}/{col}");
                }
            }
        }
    }

    #[test]
    fn frequency_tolerance() {
        for lead in [0, 30] {
            for d in ALL.chars() {
                for dev in [-0.015, 0.015] {
                    for (r, c) in [(dev, dev), (dev, -dev)] {
                        let audio = padded(pair(d, (r, -20.0), (c, -20.0), 40), lead);
                        assert_eq!(digits(&detect(&audio)), d.to_string(), "{d} {r} {c}");
                    }
                }
                for dev in [-0.035, 0.035] {
                    for (r, c) in [(dev, dev), (dev, 0.0), (0.0, dev)] {
                        let audio = padded(pair(d, (r, -20.0), (c, -20.0), 200), lead);
                        assert_eq!(digits(&detect(&audio)), "", "{d} {r} {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn short_tones_are_ignored() {
        for lead in (0..BLOCK).step_by(3) {
            for ms in [10, 20] {
                let audio = sequence(ALL, ms, 60, -10.0, lead);
                assert_eq!(digits(&detect(&audio)), "", "{ms} ms lead {lead}");
            }
        }
    }

    #[test]
    fn repeated_key_needs_a_pause() {
        // The same key twice with a 30 ms pause is two presses.
        for lead in (0..BLOCK).step_by(7) {
            let audio = sequence("11", 40, 30, -20.0, lead);
            assert_eq!(digits(&detect(&audio)), "11", "lead {lead}");
        }
        let audio = sequence("5555", 40, 40, -20.0, 7);
        assert_eq!(digits(&detect(&audio)), "5555");
        // A long press is one, even with a 15 ms dropout in it.
        let audio = sequence("9", 3000, 0, -20.0, 0);
        assert_eq!(digits(&detect(&audio)), "9");
        for start in (800..900).step_by(10) {
            let mut audio = sequence("9", 200, 0, -20.0, 0);
            audio[start..start + 120].fill(0);
            assert_eq!(digits(&detect(&audio)), "9", "dropout at {start}");
        }
    }

    #[test]
    fn every_digit_is_recognised_with_its_own_key() {
        for d in DIGITS {
            let audio = sequence(&d.to_string(), 60, 0, -20.0, 0);
            assert_eq!(digits(&detect(&audio)), d.to_string());
        }
    }

    fn read_wav(name: &str) -> Vec<i16> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let spec = reader.spec();
        assert_eq!(
            (spec.sample_rate, spec.channels, spec.bits_per_sample),
            (8000, 1, 16)
        );
        reader
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn talk_off_speech() {
        let files = [
            "speech_en.wav",
            "speech_ru_espeak.wav",
            "speech_ru_festival.wav",
        ];
        let mut seconds = 0.0;
        for name in files {
            let speech = read_wav(name);
            seconds += speech.len() as f64 / 8000.0;
            for (label, audio) in [
                ("linear", speech.clone()),
                ("pcmu", g711_round_trip(Codec::Pcmu, &speech)),
                ("pcma", g711_round_trip(Codec::Pcma, &speech)),
            ] {
                let ev = detect(&audio);
                assert!(ev.is_empty(), "{name} {label}: {ev:?}");
                // 6 dB louder and 10 dB quieter too.
                for gain in [2.0, 0.316] {
                    let scaled: Vec<i16> = audio
                        .iter()
                        .map(|&s| (f32::from(s) * gain) as i16)
                        .collect();
                    let ev = detect(&scaled);
                    assert!(ev.is_empty(), "{name} {label} x{gain}: {ev:?}");
                }
            }
        }
        assert!(seconds >= 60.0, "only {seconds} s of speech");
    }

    /// Notes with a few harmonics, chords, glides and vibrato: the kind of music a
    /// caller might have in the background or as hold music.
    fn music() -> Vec<i16> {
        let note = |semitones: f64| 440.0 * 2f64.powf(semitones / 12.0);
        let mut out = Vec::new();
        let mut rng = XorShift(77);
        // Chords built from every note from A3 to A6, including notes that fall
        // within 2 % of DTMF frequencies (F5 ≈ 697 Hz, E6 ≈ 1319 Hz, F#6 ≈ 1480 Hz).
        for root in -12..24 {
            for chord in [
                [0.0, 4.0, 7.0],
                [0.0, 3.0, 7.0],
                [0.0, 5.0, 9.0],
                [0.0, 12.0, 19.0],
            ] {
                let len = 2000 + (rng.next() % 1200) as usize;
                let vibrato = 0.003 * rng.unit();
                for i in 0..len {
                    let t = i as f64 / 8000.0;
                    let env = (t * 40.0).min(1.0) * (-t * 2.0).exp();
                    let mut v = 0.0;
                    for (j, &st) in chord.iter().enumerate() {
                        let f = note(f64::from(root) + st)
                            * (1.0 + vibrato * (TAU * 5.5 * t + j as f64).sin());
                        // Harmonics falling off like a plucked or bowed string.
                        for h in 1..=5 {
                            v += (TAU * f * h as f64 * t).sin() / (h * h) as f64;
                        }
                    }
                    out.push((v * 4000.0 * env) as i16);
                }
            }
        }
        // Glides through the whole band, single and in parallel fifths.
        for (f0, f1, fifth) in [
            (300.0, 3400.0, false),
            (3400.0, 300.0, false),
            (500.0, 1800.0, true),
        ] {
            let len = 8000 * 5;
            let mut phase = [0.0f64; 2];
            for i in 0..len {
                let f = f0 + (f1 - f0) * i as f64 / len as f64;
                phase[0] += TAU * f / 8000.0;
                phase[1] += TAU * f * 1.5 / 8000.0;
                let v = phase[0].sin() + if fifth { phase[1].sin() } else { 0.0 };
                out.push((v * 8000.0) as i16);
            }
        }
        out
    }

    #[test]
    fn talk_off_music() {
        let audio = music();
        assert!(audio.len() > 8000 * 60, "{} samples", audio.len());
        let ev = detect(&audio);
        assert!(ev.is_empty(), "{ev:?}");
        let ev = detect(&g711_round_trip(Codec::Pcmu, &audio));
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn digits_over_speech_background_are_found() {
        // Speech 15 dB below the tones does not mask them.
        let speech = read_wav("speech_en.wav");
        let tones = sequence(ALL, 60, 60, -15.0, 0);
        let mix: Vec<i16> = tones
            .iter()
            .zip(speech.iter().skip(8000))
            .map(|(&t, &s)| t.saturating_add((f32::from(s) * 0.05) as i16))
            .collect();
        assert_eq!(digits(&detect(&mix)), ALL);
    }

    #[test]
    fn random_samples_do_not_panic() {
        let mut rng = XorShift(0xDEAD_BEEF);
        let mut det = InbandDetector::new(InbandConfig {
            min_level_dbm0: -60.0,
            ..InbandConfig::default()
        });
        let mut frame = [0i16; 160];
        let mut count = 0;
        for i in 0..500u64 {
            for s in &mut frame {
                let r = rng.next();
                *s = match r % 4 {
                    0 => i16::MAX,
                    1 => i16::MIN,
                    _ => (r >> 16) as i16,
                };
            }
            let len = (rng.next() % 161) as usize;
            count += det.push(&frame[..len], i * 20).len();
        }
        assert_eq!(count, 0);
        // Silence, DC and full-scale square waves.
        for audio in [vec![0i16; 16_000], vec![-20_000; 16_000], {
            (0..16_000)
                .map(|i| if i % 6 < 3 { i16::MAX } else { i16::MIN })
                .collect()
        }] {
            assert!(detect(&audio).is_empty());
        }
        // A config full of nonsense must not panic either.
        let mut det = InbandDetector::new(InbandConfig {
            min_level_dbm0: f32::NAN,
            max_normal_twist_db: f32::INFINITY,
            max_reverse_twist_db: -1e30,
            freq_tolerance: f32::NAN,
        });
        det.push(&sequence("1", 100, 0, 0.0, 0), u64::MAX - 10);
        det.reset();
    }
}
