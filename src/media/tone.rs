//! Tone synthesis into 16-bit linear PCM: DTMF digits (the test caller's in-band mode,
//! detector tests) and plain or dual sine tones such as the beep before a recording.
//! It only produces samples; it must not pace, send or play them.

use super::dtmf::{dbm0_to_peak, digit_frequencies};
use std::f64::consts::TAU;

/// Telephone-band sample rate used throughout the media layer.
pub const SAMPLE_RATE: u32 = 8000;

/// Longest tone produced; longer requests are clamped so that a bad argument cannot
/// turn into a multi-gigabyte allocation.
pub const MAX_TONE_MS: u32 = 60_000;

/// Ramp applied to each end of a beep so that it starts and stops without a click.
const BEEP_RAMP_MS: u32 = 5;

/// Number of samples covering `duration_ms` (clamped to [`MAX_TONE_MS`]).
pub fn samples_for_ms(duration_ms: u32, sample_rate: u32) -> usize {
    let ms = u64::from(duration_ms.min(MAX_TONE_MS));
    (ms * u64::from(sample_rate) / 1000) as usize
}

/// Sum of sines, each given as `(frequency Hz, level dBm0)`, with no ramps: the
/// abrupt edges match what a keypad produces. Samples saturate at full scale.
pub fn tones(components: &[(f32, f32)], duration_ms: u32, sample_rate: u32) -> Vec<i16> {
    let n = samples_for_ms(duration_ms, sample_rate);
    let parts: Vec<(f64, f64)> = components
        .iter()
        .map(|&(f, level)| {
            let step = TAU * f64::from(f) / f64::from(sample_rate);
            (step, f64::from(dbm0_to_peak(level)))
        })
        .collect();
    (0..n)
        .map(|i| {
            let t = i as f64;
            // Phase from the sample index rather than an accumulator keeps long tones
            // free of drift.
            let v: f64 = parts
                .iter()
                .map(|&(step, amp)| amp * (step * t).sin())
                .sum();
            v.round() as i16 // `as` saturates, and maps NaN to 0.
        })
        .collect()
}

/// A DTMF digit with both tones at `level_dbm0` (no twist). `None` for a character
/// that is not a DTMF digit.
pub fn dtmf_tone(
    digit: char,
    duration_ms: u32,
    level_dbm0: f32,
    sample_rate: u32,
) -> Option<Vec<i16>> {
    let (low, high) = digit_frequencies(digit)?;
    Some(tones(
        &[(low, level_dbm0), (high, level_dbm0)],
        duration_ms,
        sample_rate,
    ))
}

/// An 8 kHz sine beep with short raised-cosine ramps at both ends.
pub fn beep(freq_hz: f32, duration_ms: u32, level_dbm0: f32) -> Vec<i16> {
    let mut out = tones(&[(freq_hz, level_dbm0)], duration_ms, SAMPLE_RATE);
    let ramp = samples_for_ms(BEEP_RAMP_MS, SAMPLE_RATE).min(out.len() / 2);
    for i in 0..ramp {
        let gain = 0.5 - 0.5 * (std::f64::consts::PI * i as f64 / ramp as f64).cos();
        let last = out.len() - 1 - i;
        out[i] = (f64::from(out[i]) * gain).round() as i16;
        out[last] = (f64::from(out[last]) * gain).round() as i16;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::dtmf::DBM0_PEAK;
    use super::*;

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn dtmf_tone_has_expected_length_and_level() {
        let t = dtmf_tone('5', 100, -10.0, SAMPLE_RATE).expect("valid digit");
        assert_eq!(t.len(), 800);
        // Two equal, uncorrelated sines: RMS = peak of one.
        let expected = f64::from(DBM0_PEAK) * 10f64.powf(-0.5);
        assert!((rms(&t) / expected - 1.0).abs() < 0.02, "{}", rms(&t));
        assert!(dtmf_tone('x', 100, -10.0, SAMPLE_RATE).is_none());
    }

    #[test]
    fn beep_is_ramped() {
        let b = beep(1000.0, 200, -10.0);
        assert_eq!(b.len(), 1600);
        assert_eq!(b[0], 0);
        assert!(b[1].abs() < 100 && b[1598].abs() < 100);
        let mid_rms = rms(&b[400..1200]);
        let expected = f64::from(DBM0_PEAK) * 10f64.powf(-0.5) / 2f64.sqrt();
        assert!((mid_rms / expected - 1.0).abs() < 0.02);
    }

    #[test]
    fn hostile_arguments_do_not_panic() {
        assert!(tones(&[(f32::NAN, f32::INFINITY)], 10, SAMPLE_RATE)
            .iter()
            .all(|&s| s == 0 || s == i16::MAX || s == i16::MIN));
        assert_eq!(tones(&[(1000.0, 0.0)], 10, 0).len(), 0);
        assert_eq!(beep(1000.0, 0, 0.0).len(), 0);
        assert_eq!(beep(1000.0, 1, 0.0).len(), 8);
        assert_eq!(samples_for_ms(u32::MAX, SAMPLE_RATE), 480_000);
        // +20 dBm0 clips instead of wrapping.
        assert!(tones(&[(1000.0, 20.0)], 5, SAMPLE_RATE).contains(&i16::MAX));
    }
}
