//! When a voice message ends: the caller's finish key, silence after speech (trimmed
//! to a short tail), no speech at all, the maximum length, or a hang-up.
//!
//! Owns the stop rules only, sans-IO: it is fed the decoded frames and digits the
//! recording receives and counts time in samples. Writing the audio is the recording
//! sink's business (`recorder`, off the media clock).

use super::level::SilenceDetector;
use crate::call::StopReason;

const SAMPLES_PER_MS: u64 = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct VoicemailStopConfig {
    /// DTMF keys that end the message (`0-9`, `*`, `#`, `A-D`); others are ignored.
    pub finish_keys: String,
    /// Continuous silence after the caller has spoken that ends the message.
    pub silence_timeout_ms: u32,
    /// Ends a message in which the caller never started speaking. Leading silence only
    /// counts against this, never against `silence_timeout_ms`.
    pub no_speech_timeout_ms: u32,
    pub max_length_ms: u32,
    /// Frames whose RMS is below this level are silence.
    pub silence_threshold_dbov: f64,
    /// Loud audio must last this long to count as speech, so clicks do not.
    pub min_speech_ms: u32,
    /// Silence kept at the end when trimming, so the message does not end abruptly.
    pub keep_silence_ms: u32,
}

impl Default for VoicemailStopConfig {
    fn default() -> Self {
        VoicemailStopConfig {
            finish_keys: "#".into(),
            // Generous: callers to a crisis line pause, and cutting them off is worse than
            // a few seconds of extra silence.
            silence_timeout_ms: 8_000,
            no_speech_timeout_ms: 15_000,
            max_length_ms: 300_000,
            // Phone line noise sits around -60..-50 dBov, quiet speech around -35.
            silence_threshold_dbov: -45.0,
            min_speech_ms: 60,
            keep_silence_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub reason: StopReason,
    /// Samples of the recording to keep (pass to [`WavRecorder::finish_truncated`]).
    pub keep_samples: u64,
    /// Samples fed so far beyond `keep_samples`: trailing silence, or overshoot past the
    /// maximum length.
    pub trim_samples: u64,
}

/// Decides when a voicemail recording ends. Feed it the same decoded frames as the
/// recorder, plus received digits; time is the number of samples fed.
#[derive(Debug, Clone)]
pub struct VoicemailStop {
    finish_keys: u16,
    detector: SilenceDetector,
    silence_timeout: u64,
    no_speech_timeout: u64,
    max_length: u64,
    keep_silence: u64,
    samples: u64,
    stop: Option<Stop>,
}

fn key_bit(key: char) -> Option<u16> {
    let index = match key.to_ascii_uppercase() {
        c @ '0'..='9' => c as u16 - '0' as u16,
        '*' => 10,
        '#' => 11,
        c @ 'A'..='D' => 12 + (c as u16 - 'A' as u16),
        _ => return None,
    };
    Some(1 << index)
}

impl VoicemailStop {
    pub fn new(config: &VoicemailStopConfig) -> Self {
        let ms = |v: u32| u64::from(v) * SAMPLES_PER_MS;
        VoicemailStop {
            finish_keys: config
                .finish_keys
                .chars()
                .filter_map(key_bit)
                .fold(0, |a, b| a | b),
            detector: SilenceDetector::new(config.silence_threshold_dbov, ms(config.min_speech_ms)),
            silence_timeout: ms(config.silence_timeout_ms).max(1),
            no_speech_timeout: ms(config.no_speech_timeout_ms).max(1),
            max_length: ms(config.max_length_ms).max(1),
            keep_silence: ms(config.keep_silence_ms),
            samples: 0,
            stop: None,
        }
    }

    /// Feeds one frame of decoded audio; returns the stop decision once there is one
    /// (and the same decision on every later call).
    pub fn push_frame(&mut self, pcm: &[i16]) -> Option<Stop> {
        if self.stop.is_some() {
            return self.stop;
        }
        self.samples += pcm.len() as u64;
        self.detector.push(pcm);
        let quiet = self.detector.quiet_run();
        if self.detector.heard_speech() && quiet >= self.silence_timeout {
            let trim = quiet.saturating_sub(self.keep_silence);
            self.end(StopReason::Silence, trim);
        } else if self.samples >= self.max_length {
            self.end(StopReason::MaxLength, self.samples - self.max_length);
        } else if !self.detector.heard_speech() && self.samples >= self.no_speech_timeout {
            self.end(StopReason::NoSpeech, 0);
        }
        self.stop
    }

    /// Feeds a received DTMF digit.
    pub fn push_digit(&mut self, digit: char) -> Option<Stop> {
        if self.stop.is_none() && key_bit(digit).is_some_and(|b| self.finish_keys & b != 0) {
            self.end(StopReason::FinishKey, 0);
        }
        self.stop
    }

    /// The caller hung up; returns the earlier decision if there already was one.
    pub fn hang_up(&mut self) -> Stop {
        if self.stop.is_none() {
            self.end(StopReason::HangUp, 0);
        }
        self.stop.unwrap_or(Stop {
            reason: StopReason::HangUp,
            keep_samples: self.samples,
            trim_samples: 0,
        })
    }

    pub fn stopped(&self) -> Option<Stop> {
        self.stop
    }

    /// Samples fed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn heard_speech(&self) -> bool {
        self.detector.heard_speech()
    }

    fn end(&mut self, reason: StopReason, trim: u64) {
        let trim = trim.min(self.samples);
        self.stop = Some(Stop {
            reason,
            keep_samples: self.samples - trim,
            trim_samples: trim,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SPEECH: [i16; 160] = {
        // A square wave at about -20 dBov.
        let mut f = [0i16; 160];
        let mut i = 0;
        while i < 160 {
            f[i] = if (i / 10) % 2 == 0 { 3300 } else { -3300 };
            i += 1;
        }
        f
    };
    const QUIET: [i16; 160] = [3; 160];

    fn feed(stop: &mut VoicemailStop, frame: &[i16], seconds: f64) -> Option<Stop> {
        let frames = (seconds * 50.0).round() as usize;
        let mut result = None;
        for _ in 0..frames {
            result = stop.push_frame(frame);
            if result.is_some() {
                break;
            }
        }
        result
    }

    #[test]
    fn silence_after_speech_stops_and_trims() {
        let mut s = VoicemailStop::new(&VoicemailStopConfig::default());
        assert_eq!(feed(&mut s, &SPEECH, 2.0), None);
        assert_eq!(feed(&mut s, &QUIET, 7.98), None);
        let stop = s.push_frame(&QUIET).unwrap();
        assert_eq!(stop.reason, StopReason::Silence);
        assert_eq!(stop.trim_samples, 8 * 8000 - 4000);
        assert_eq!(stop.keep_samples, 2 * 8000 + 4000);
        assert_eq!(s.push_frame(&SPEECH), Some(stop));
        assert_eq!(s.hang_up(), stop);
    }

    #[test]
    fn leading_silence_only_counts_against_no_speech_timeout() {
        let mut s = VoicemailStop::new(&VoicemailStopConfig::default());
        assert_eq!(feed(&mut s, &QUIET, 12.0), None);
        assert_eq!(feed(&mut s, &SPEECH, 1.0), None);
        assert!(s.heard_speech());
        let stop = feed(&mut s, &QUIET, 10.0).unwrap();
        assert_eq!(stop.reason, StopReason::Silence);
        assert_eq!(stop.keep_samples, 13 * 8000 + 4000);
    }

    #[test]
    fn clicks_are_not_speech() {
        let mut s = VoicemailStop::new(&VoicemailStopConfig::default());
        let mut stop = None;
        for i in 0..1000 {
            let frame: &[i16] = if i % 25 == 0 { &SPEECH } else { &QUIET };
            stop = s.push_frame(frame);
            if stop.is_some() {
                break;
            }
        }
        let stop = stop.unwrap();
        assert_eq!(stop.reason, StopReason::NoSpeech);
        assert_eq!((stop.keep_samples, stop.trim_samples), (15 * 8000, 0));
    }

    #[test]
    fn clicks_do_not_reset_the_silence_timer() {
        let mut s = VoicemailStop::new(&VoicemailStopConfig::default());
        feed(&mut s, &SPEECH, 1.0);
        let mut frames = 0;
        let stop = loop {
            frames += 1;
            let frame: &[i16] = if frames % 50 == 0 { &SPEECH } else { &QUIET };
            if let Some(stop) = s.push_frame(frame) {
                break stop;
            }
        };
        assert_eq!(stop.reason, StopReason::Silence);
        assert_eq!(frames, 400);
    }

    #[test]
    fn max_length_finish_key_and_hang_up() {
        let config = VoicemailStopConfig {
            max_length_ms: 3000,
            finish_keys: "*#".into(),
            ..VoicemailStopConfig::default()
        };
        let mut s = VoicemailStop::new(&config);
        let stop = feed(&mut s, &SPEECH, 10.0).unwrap();
        assert_eq!(stop.reason, StopReason::MaxLength);
        assert_eq!((stop.keep_samples, stop.trim_samples), (24_000, 0));
        // An odd frame size overshoots; the overshoot is trimmed.
        let mut s = VoicemailStop::new(&config);
        let stop = feed(&mut s, &[9000; 170], 10.0).unwrap();
        assert_eq!(stop.keep_samples, 24_000);
        assert_eq!(stop.trim_samples, s.samples() - 24_000);

        let mut s = VoicemailStop::new(&config);
        feed(&mut s, &SPEECH, 1.0);
        assert_eq!(s.push_digit('1'), None);
        assert_eq!(s.push_digit('x'), None);
        let stop = s.push_digit('*').unwrap();
        assert_eq!(stop.reason, StopReason::FinishKey);
        assert_eq!(stop.keep_samples, 8000);

        let mut s = VoicemailStop::new(&VoicemailStopConfig::default());
        assert_eq!(s.push_digit('*'), None);
        feed(&mut s, &SPEECH, 0.5);
        let stop = s.hang_up();
        assert_eq!(stop.reason, StopReason::HangUp);
        assert_eq!(stop.keep_samples, 4000);
        assert_eq!(s.push_digit('#'), Some(stop));
        assert_eq!(s.stopped(), Some(stop));
    }
}
