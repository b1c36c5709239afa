//! Loudness of prompts: the one target every spoken prompt is brought to, how a
//! recording is measured against it, trimmed and normalised.
//!
//! Target, by measurement: the professionally recorded prompts of Asterisk's core
//! sound set (Debian `asterisk-core-sounds-en-wav`, 447 files, 8 kHz) measure a
//! median of -19.0 LUFS (p10 -20.9, p90 -17.2) with sample peaks around -3.5 dBFS
//! (p90 -1.7). Spoken prompts are brought to -19 LUFS (ITU-R BS.1770 integrated
//! loudness, measured on the 8 kHz telephone signal) with sample peaks at most
//! -1 dBFS. Tones (the beep) sit 3 LU below speech, so a caller who may be
//! hiding is not startled by them; music under which callers wait sits 6 LU below.
//!
//! Pure computation over samples; ebur128 does the BS.1770 measurement.

use std::time::Duration;

use ebur128::{EbuR128, Mode};

/// Integrated loudness of spoken prompts.
pub const SPEECH_LUFS: f64 = -19.0;
/// How far a prompt may be from its target before `check` reports it.
pub const TOLERANCE_LU: f64 = 2.0;
/// Highest sample peak after normalisation.
pub const PEAK_CEILING_DBFS: f64 = -1.0;
/// Tones below speech: never louder than the voice around them.
pub const TONE_BELOW_SPEECH_LU: f64 = 3.0;
/// Music under which callers wait, below speech.
pub const MUSIC_BELOW_SPEECH_LU: f64 = 6.0;
/// Silence allowed at either end of a prompt: more is dead air on the line.
pub const MAX_EDGE_SILENCE: Duration = Duration::from_millis(500);
/// 20 ms frames quieter than this (RMS) count as silence at the ends.
pub const SILENCE_DBFS: f64 = -45.0;
/// Silence kept when trimming, so joined prompts do not run together.
pub const TRIM_KEEP_LEAD: Duration = Duration::from_millis(100);
pub const TRIM_KEEP_TAIL: Duration = Duration::from_millis(150);
/// Below this a recording holds no speech at all.
const SILENT_LUFS: f64 = -60.0;
/// This many samples in a row at full scale are clipping, not a loud peak.
const CLIP_RUN: usize = 3;
const CLIP_LEVEL: f32 = 0.999;
/// BS.1770's gating block: shorter clips are measured repeated to this length.
const BLOCK: Duration = Duration::from_millis(400);

/// What a prompt is, for its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Speech,
    Tone,
    Music,
}

impl Kind {
    pub fn target_lufs(self) -> f64 {
        match self {
            Kind::Speech => SPEECH_LUFS,
            Kind::Tone => SPEECH_LUFS - TONE_BELOW_SPEECH_LU,
            Kind::Music => SPEECH_LUFS - MUSIC_BELOW_SPEECH_LU,
        }
    }
}

/// Measurements of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Levels {
    pub seconds: f64,
    /// Integrated loudness; `None` for silence.
    pub lufs: Option<f64>,
    pub peak_dbfs: f64,
    /// Places where the waveform sits at full scale (clipped).
    pub clipped: usize,
    pub leading_silence: f64,
    pub trailing_silence: f64,
}

/// Something wrong with a prompt's level, in the words `check` prints.
#[derive(Debug, Clone, PartialEq)]
pub enum LevelProblem {
    Silent,
    Clipped(usize),
    TooQuiet { lufs: f64, target: f64 },
    TooLoud { lufs: f64, target: f64 },
    LouderThanSpeech { lufs: f64 },
    PeakAboveCeiling(f64),
    LeadingSilence(f64),
    TrailingSilence(f64),
}

impl std::fmt::Display for LevelProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LevelProblem::Silent => write!(f, "silent: no speech in it"),
            LevelProblem::Clipped(n) => write!(f, "clipped in {n} places"),
            LevelProblem::TooQuiet { lufs, target } => {
                write!(f, "too quiet: {lufs:.1} LUFS, target {target:.0} LUFS")
            }
            LevelProblem::TooLoud { lufs, target } => {
                write!(f, "too loud: {lufs:.1} LUFS, target {target:.0} LUFS")
            }
            LevelProblem::LouderThanSpeech { lufs } => write!(
                f,
                "louder than speech: {lufs:.1} LUFS, speech is {SPEECH_LUFS:.0} LUFS"
            ),
            LevelProblem::PeakAboveCeiling(p) => {
                write!(f, "peaks at {p:.1} dBFS, above {PEAK_CEILING_DBFS:.0} dBFS")
            }
            LevelProblem::LeadingSilence(s) => write!(f, "starts with {s:.1} s of silence"),
            LevelProblem::TrailingSilence(s) => write!(f, "ends with {s:.1} s of silence"),
        }
    }
}

/// Measures mono samples in -1.0..=1.0 at `rate` Hz.
pub fn measure(samples: &[f32], rate: u32) -> Levels {
    let (lead, tail) = edge_silence(samples, rate);
    let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    Levels {
        seconds: samples.len() as f64 / f64::from(rate.max(1)),
        lufs: loudness(samples, rate),
        peak_dbfs: amplitude_db(f64::from(peak)),
        clipped: clipped_places(samples),
        leading_silence: lead.as_secs_f64(),
        trailing_silence: tail.as_secs_f64(),
    }
}

/// 16-bit samples as `measure` takes them.
pub fn to_unit(pcm: &[i16]) -> Vec<f32> {
    pcm.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// What `check` reports about a prompt of `kind` with these levels.
pub fn problems(levels: &Levels, kind: Kind) -> Vec<LevelProblem> {
    let mut out = Vec::new();
    let Some(lufs) = levels.lufs.filter(|l| *l > SILENT_LUFS) else {
        return vec![LevelProblem::Silent];
    };
    if levels.clipped > 0 {
        out.push(LevelProblem::Clipped(levels.clipped));
    }
    let target = kind.target_lufs();
    if kind == Kind::Tone && lufs > SPEECH_LUFS {
        out.push(LevelProblem::LouderThanSpeech { lufs });
    } else if lufs > target + TOLERANCE_LU {
        out.push(LevelProblem::TooLoud { lufs, target });
    } else if lufs < target - TOLERANCE_LU {
        out.push(LevelProblem::TooQuiet { lufs, target });
    }
    // Rounding to 16 bits may land a hair above the ceiling.
    if levels.peak_dbfs > PEAK_CEILING_DBFS + 0.1 && levels.clipped == 0 {
        out.push(LevelProblem::PeakAboveCeiling(levels.peak_dbfs));
    }
    // Music fades in and out on purpose.
    if kind != Kind::Music {
        let limit = MAX_EDGE_SILENCE.as_secs_f64();
        if levels.leading_silence > limit {
            out.push(LevelProblem::LeadingSilence(levels.leading_silence));
        }
        if levels.trailing_silence > limit {
            out.push(LevelProblem::TrailingSilence(levels.trailing_silence));
        }
    }
    out
}

/// Integrated loudness (BS.1770 with gating); `None` when nothing passes the gate.
pub fn loudness(samples: &[f32], rate: u32) -> Option<f64> {
    if samples.is_empty() || rate == 0 {
        return None;
    }
    let block = (BLOCK.as_secs_f64() * f64::from(rate)).ceil() as usize;
    let looped: Vec<f32>;
    let samples = if samples.len() < block {
        looped = samples.iter().copied().cycle().take(block).collect();
        &looped
    } else {
        samples
    };
    let mut meter = EbuR128::new(1, rate, Mode::I).ok()?;
    meter.add_frames_f32(samples).ok()?;
    meter
        .loudness_global()
        .ok()
        .filter(|l| l.is_finite() && *l > -70.0)
}

/// Runs of full-scale samples.
pub fn clipped_places(samples: &[f32]) -> usize {
    let mut places = 0;
    let mut run = 0;
    for s in samples {
        if s.abs() >= CLIP_LEVEL {
            run += 1;
            if run == CLIP_RUN {
                places += 1;
            }
        } else {
            run = 0;
        }
    }
    places
}

fn amplitude_db(a: f64) -> f64 {
    if a > 0.0 {
        20.0 * a.log10()
    } else {
        -120.0
    }
}

/// Frames of 20 ms that are silent at the start and at the end.
fn edge_silence(samples: &[f32], rate: u32) -> (Duration, Duration) {
    let frame = (rate as usize / 50).max(1);
    let threshold = 10f64.powf(SILENCE_DBFS / 20.0);
    let loud = |chunk: &[f32]| {
        let ms = chunk
            .iter()
            .map(|&s| f64::from(s) * f64::from(s))
            .sum::<f64>()
            / chunk.len() as f64;
        ms.sqrt() >= threshold
    };
    let frames: Vec<bool> = samples.chunks(frame).map(loud).collect();
    let to_time = |n: usize| {
        Duration::from_secs_f64((n * frame).min(samples.len()) as f64 / f64::from(rate.max(1)))
    };
    match frames.iter().position(|&l| l) {
        None => (to_time(frames.len()), to_time(frames.len())),
        Some(first) => {
            let last = frames.iter().rposition(|&l| l).unwrap_or(first);
            (to_time(first), to_time(frames.len() - 1 - last))
        }
    }
}

/// The samples with the silence at both ends cut down to a short pad.
pub fn trim(samples: &[f32], rate: u32) -> &[f32] {
    let (lead, tail) = edge_silence(samples, rate);
    if lead.as_secs_f64() * f64::from(rate) >= samples.len() as f64 {
        return &samples[..0];
    }
    let at = |d: Duration| (d.as_secs_f64() * f64::from(rate)).round() as usize;
    let start = at(lead.saturating_sub(TRIM_KEEP_LEAD)).min(samples.len());
    let end = samples
        .len()
        .saturating_sub(at(tail.saturating_sub(TRIM_KEEP_TAIL)))
        .max(start);
    &samples[start..end]
}

/// Brings `samples` to `kind`'s target, without letting peaks pass the ceiling.
/// Returns the gain applied, in dB; `None` for silence (left as it is).
pub fn normalize(samples: &mut [f32], rate: u32, kind: Kind) -> Option<f64> {
    let lufs = loudness(samples, rate).filter(|l| *l > SILENT_LUFS)?;
    let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    let mut gain_db = kind.target_lufs() - lufs;
    if peak > 0.0 {
        gain_db = gain_db.min(PEAK_CEILING_DBFS - amplitude_db(f64::from(peak)));
    }
    let gain = 10f64.powf(gain_db / 20.0) as f32;
    for s in samples.iter_mut() {
        *s *= gain;
    }
    Some(gain_db)
}

/// Rounds to 16-bit samples, clamping at full scale.
pub fn to_pcm16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&x| (f64::from(x) * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;

    fn sine(hz: f64, amplitude: f64, seconds: f64) -> Vec<f32> {
        (0..(seconds * f64::from(RATE)) as usize)
            .map(|i| {
                (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(RATE)).sin())
                    as f32
            })
            .collect()
    }

    fn silence(seconds: f64) -> Vec<f32> {
        vec![0.0; (seconds * f64::from(RATE)) as usize]
    }

    /// A 1 kHz sine at -20 dBFS RMS reads about -20 LUFS (K-weighting is close to
    /// flat at 1 kHz; BS.1770 puts a 0 dBFS-RMS 1 kHz sine near 0 LUFS).
    #[test]
    fn a_known_tone_measures_as_expected() {
        let rms = 10f64.powf(-20.0 / 20.0);
        let tone = sine(1000.0, rms * 2f64.sqrt(), 3.0);
        let l = measure(&tone, RATE);
        let lufs = l.lufs.unwrap();
        assert!((lufs + 20.0).abs() < 1.0, "{lufs}");
        assert!((l.peak_dbfs + 17.0).abs() < 0.1, "{}", l.peak_dbfs);
        assert_eq!(l.clipped, 0);
        assert!(l.leading_silence < 0.03 && l.trailing_silence < 0.03);
        assert_eq!(problems(&l, Kind::Speech), []);
        // 3 LU below speech is right for a beep; 10 dB louder is not.
        let beep = measure(&sine(1000.0, 0.112, 0.4), RATE);
        assert_eq!(problems(&beep, Kind::Tone), [], "{beep:?}");
        let loud = measure(&sine(1000.0, 0.45, 0.4), RATE);
        assert!(matches!(
            problems(&loud, Kind::Tone)[..],
            [LevelProblem::LouderThanSpeech { .. }]
        ));
    }

    #[test]
    fn silence_clipping_and_dead_air_are_reported() {
        assert_eq!(
            problems(&measure(&silence(2.0), RATE), Kind::Speech),
            [LevelProblem::Silent]
        );

        let clipped: Vec<f32> = sine(300.0, 2.0, 2.0)
            .iter()
            .map(|s| s.clamp(-1.0, 1.0))
            .collect();
        let p = problems(&measure(&clipped, RATE), Kind::Speech);
        assert!(matches!(p[0], LevelProblem::Clipped(n) if n > 100), "{p:?}");

        let mut padded = silence(0.8);
        padded.extend(sine(500.0, 0.2, 1.0));
        padded.extend(silence(0.7));
        let l = measure(&padded, RATE);
        assert!((l.leading_silence - 0.8).abs() < 0.03, "{l:?}");
        assert!((l.trailing_silence - 0.7).abs() < 0.03, "{l:?}");
        let text: Vec<String> = problems(&l, Kind::Speech)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            ["starts with 0.8 s of silence", "ends with 0.7 s of silence"]
        );
        // Music may fade in and out.
        assert!(problems(&l, Kind::Music)
            .iter()
            .all(|p| !matches!(p, LevelProblem::LeadingSilence(_))));

        let quiet = sine(500.0, 0.01, 1.0);
        assert!(matches!(
            problems(&measure(&quiet, RATE), Kind::Speech)[..],
            [LevelProblem::TooQuiet { .. }]
        ));
    }

    #[test]
    fn trimming_keeps_a_short_pad_and_normalising_meets_the_target() {
        let mut signal = silence(1.2);
        signal.extend(sine(700.0, 0.02, 1.5));
        signal.extend(silence(2.0));
        let trimmed = trim(&signal, RATE);
        let seconds = trimmed.len() as f64 / f64::from(RATE);
        assert!((seconds - 1.75).abs() < 0.03, "{seconds}");
        let mut out = trimmed.to_vec();
        let gain = normalize(&mut out, RATE, Kind::Speech).unwrap();
        assert!(gain > 10.0, "{gain}");
        let l = measure(&to_unit(&to_pcm16(&out)), RATE);
        assert!((l.lufs.unwrap() - SPEECH_LUFS).abs() < 0.2, "{l:?}");
        assert_eq!(problems(&l, Kind::Speech), []);

        // A tone is brought below speech.
        let mut beep = sine(1000.0, 0.7, 0.4);
        normalize(&mut beep, RATE, Kind::Tone).unwrap();
        let l = measure(&beep, RATE);
        assert!(
            (l.lufs.unwrap() - (SPEECH_LUFS - TONE_BELOW_SPEECH_LU)).abs() < 0.3,
            "{l:?}"
        );
        assert_eq!(problems(&l, Kind::Tone), []);
    }

    /// A signal whose peaks sit far above its loudness is stopped at the ceiling
    /// and then reported as too quiet rather than clipped.
    #[test]
    fn peaks_limit_the_gain() {
        let mut spiky = sine(500.0, 0.005, 2.0);
        for i in (0..spiky.len()).step_by(4000) {
            spiky[i] = 0.5;
        }
        normalize(&mut spiky, RATE, Kind::Speech).unwrap();
        let l = measure(&spiky, RATE);
        assert!((l.peak_dbfs - PEAK_CEILING_DBFS).abs() < 0.05, "{l:?}");
        assert!(matches!(
            problems(&l, Kind::Speech)[..],
            [LevelProblem::TooQuiet { .. }]
        ));
    }

    #[test]
    fn empty_and_tiny_inputs() {
        assert_eq!(loudness(&[], RATE), None);
        assert_eq!(trim(&[], RATE).len(), 0);
        assert_eq!(trim(&silence(1.0), RATE).len(), 0);
        let blip = sine(1000.0, 0.1, 0.05);
        assert!(
            loudness(&blip, RATE).is_some(),
            "short clips are measured repeated"
        );
        assert_eq!(normalize(&mut silence(1.0), RATE, Kind::Speech), None);
    }
}
