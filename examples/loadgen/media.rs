//! What a caller's phone sends: 20 ms G.711 frames of recorded speech, keys as
//! RFC 4733 events or as in-band tones in place of the voice. Frames are encoded once
//! at start-up; a packet is a 12-byte header and a copy.

use std::collections::VecDeque;
use std::f64::consts::TAU;
use std::path::Path;

pub const FRAME_SAMPLES: usize = 160;
pub const RTP_HEADER: usize = 12;
pub const MAX_RTP: usize = RTP_HEADER + FRAME_SAMPLES;

/// How a call presses its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    Rfc4733,
    Inband,
}

/// Pre-encoded audio shared by every call.
pub struct Audio {
    /// Speech frames, µ-law and A-law.
    pcmu: Vec<[u8; FRAME_SAMPLES]>,
    pcma: Vec<[u8; FRAME_SAMPLES]>,
    /// Per key (index in `KEYS`): tone frames in µ-law and A-law.
    tones_u: Vec<Vec<[u8; FRAME_SAMPLES]>>,
    tones_a: Vec<Vec<[u8; FRAME_SAMPLES]>>,
}

const KEYS: &str = "0123456789*#ABCD";
/// Key press length (RFC 4733 event duration, in-band tone length).
pub const KEY_FRAMES: usize = 5;
/// In-band: silence after the tone, so two equal keys in a row stay two keys.
const INBAND_PAUSE_FRAMES: usize = 3;
/// RFC 4733: the end packet is sent three times (§2.5.1.4).
const END_REPEATS: usize = 3;
/// Keypad level per tone, as phones send (Q.23 nominal −6..−8 dBm0).
const TONE_DBM0: f64 = -7.0;
/// µ-law overload point +3.17 dBm0 at full scale.
const DBM0_PEAK: f64 = 22_748.0;

fn key_index(key: char) -> Option<usize> {
    KEYS.find(key.to_ascii_uppercase())
}

fn key_frequencies(key: char) -> Option<(f64, f64)> {
    let i = key_index(key)?;
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    // Keypad position of "0123456789*#ABCD".
    const POS: [(usize, usize); 16] = [
        (3, 1),
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
        (2, 1),
        (2, 2),
        (3, 0),
        (3, 2),
        (0, 3),
        (1, 3),
        (2, 3),
        (3, 3),
    ];
    let (r, c) = POS[i];
    Some((ROWS[r], COLS[c]))
}

pub fn is_key(c: char) -> bool {
    key_index(c).is_some()
}

fn encode(samples: &[i16], law: fn(i16) -> u8) -> Vec<[u8; FRAME_SAMPLES]> {
    samples
        .chunks_exact(FRAME_SAMPLES)
        .map(|c| {
            let mut f = [0u8; FRAME_SAMPLES];
            for (o, s) in f.iter_mut().zip(c) {
                *o = law(*s);
            }
            f
        })
        .collect()
}

fn ulaw(s: i16) -> u8 {
    audio_codec_algorithms::encode_ulaw(s)
}

fn alaw(s: i16) -> u8 {
    audio_codec_algorithms::encode_alaw(s)
}

fn tone_samples(key: char) -> Vec<i16> {
    let (low, high) = key_frequencies(key).unwrap_or((0.0, 0.0));
    let amp = DBM0_PEAK * 10f64.powf(TONE_DBM0 / 20.0);
    let tone = (0..KEY_FRAMES * FRAME_SAMPLES).map(|i| {
        let t = i as f64 / 8000.0;
        (amp * ((TAU * low * t).sin() + (TAU * high * t).sin())).round() as i16
    });
    tone.chain(std::iter::repeat_n(0, INBAND_PAUSE_FRAMES * FRAME_SAMPLES))
        .collect()
}

impl Audio {
    /// Speech from a mono 16-bit 8 kHz WAV.
    pub fn load(path: &Path) -> Result<Audio, String> {
        let mut r = hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec = r.spec();
        if spec.sample_rate != 8000
            || spec.channels != 1
            || spec.bits_per_sample != 16
            || spec.sample_format != hound::SampleFormat::Int
        {
            return Err(format!(
                "{}: speech must be mono 16-bit PCM at 8000 Hz (is {} ch, {} bit, {} Hz)",
                path.display(),
                spec.channels,
                spec.bits_per_sample,
                spec.sample_rate
            ));
        }
        let samples: Vec<i16> = r
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if samples.len() < FRAME_SAMPLES * 50 {
            return Err(format!("{}: less than a second of speech", path.display()));
        }
        let tones: Vec<Vec<i16>> = KEYS.chars().map(tone_samples).collect();
        Ok(Audio {
            pcmu: encode(&samples, ulaw),
            pcma: encode(&samples, alaw),
            tones_u: tones.iter().map(|t| encode(t, ulaw)).collect(),
            tones_a: tones.iter().map(|t| encode(t, alaw)).collect(),
        })
    }

    pub fn speech_frames(&self) -> usize {
        self.pcmu.len()
    }
}

/// A key being sent.
#[derive(Debug, Clone, Copy)]
struct Pressing {
    key: usize,
    frame: usize,
    /// RFC 4733: timestamp of the event's first packet.
    event_ts: u32,
}

/// One call's outgoing RTP stream.
pub struct Sender {
    ssrc: u32,
    seq: u16,
    ts: u32,
    voice_pt: u8,
    event_pt: Option<u8>,
    mode: KeyMode,
    speech_at: usize,
    marker: bool,
    pressing: Option<Pressing>,
    queued: VecDeque<char>,
    pub packets: u64,
    pub keys_sent: u32,
}

impl Sender {
    /// `seed` picks SSRC, initial sequence and timestamp and where in the speech the
    /// caller starts talking. Keys are sent in-band when the server did not accept
    /// telephone-event, whatever `mode` asked.
    pub fn new(
        seed: u64,
        voice_pt: u8,
        event_pt: Option<u8>,
        mode: KeyMode,
        speech_frames: usize,
    ) -> Sender {
        let r = splitmix(seed);
        let mode = if event_pt.is_none() {
            KeyMode::Inband
        } else {
            mode
        };
        Sender {
            ssrc: r as u32,
            seq: (r >> 32) as u16,
            ts: (r >> 16) as u32 & 0x00ff_ffff,
            voice_pt,
            event_pt,
            mode,
            speech_at: (r >> 48) as usize % speech_frames.max(1),
            marker: true,
            pressing: None,
            queued: VecDeque::new(),
            packets: 0,
            keys_sent: 0,
        }
    }

    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    pub fn press(&mut self, key: char) {
        self.queued.push_back(key);
    }

    /// Whether keys are still waiting or being sent.
    pub fn keys_pending(&self) -> bool {
        self.pressing.is_some() || !self.queued.is_empty()
    }

    /// The next 20 ms packet into `buf` (at least `MAX_RTP` bytes); returns its length.
    pub fn next_packet(&mut self, audio: &Audio, buf: &mut [u8]) -> usize {
        if self.pressing.is_none() {
            if let Some(key) = self.queued.pop_front().and_then(key_index) {
                self.pressing = Some(Pressing {
                    key,
                    frame: 0,
                    event_ts: self.ts,
                });
                self.keys_sent += 1;
            }
        }
        let n = match (self.pressing, self.mode, self.event_pt) {
            (Some(p), KeyMode::Rfc4733, Some(pt)) => {
                let last = p.frame + 1 >= KEY_FRAMES;
                let duration = (p.frame.min(KEY_FRAMES - 1) + 1) * FRAME_SAMPLES;
                self.header(buf, pt, p.frame == 0, p.event_ts);
                buf[12] = p.key as u8;
                // E bit on the last packet and its repeats; volume 10 (−10 dBm0).
                buf[13] = if last { 0x80 | 10 } else { 10 };
                buf[14..16].copy_from_slice(&(duration as u16).to_be_bytes());
                self.advance_key(KEY_FRAMES - 1 + END_REPEATS);
                16
            }
            (Some(p), _, _) => {
                let frames = if self.voice_pt == 8 {
                    &audio.tones_a[p.key]
                } else {
                    &audio.tones_u[p.key]
                };
                let total = frames.len();
                self.header(buf, self.voice_pt, false, self.ts);
                buf[RTP_HEADER..MAX_RTP].copy_from_slice(&frames[p.frame.min(total - 1)]);
                self.advance_key(total);
                MAX_RTP
            }
            (None, _, _) => {
                let marker = std::mem::take(&mut self.marker);
                self.header(buf, self.voice_pt, marker, self.ts);
                let speech = if self.voice_pt == 8 {
                    &audio.pcma
                } else {
                    &audio.pcmu
                };
                buf[RTP_HEADER..MAX_RTP].copy_from_slice(&speech[self.speech_at]);
                self.speech_at = (self.speech_at + 1) % speech.len();
                MAX_RTP
            }
        };
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        self.packets += 1;
        n
    }

    fn advance_key(&mut self, frames: usize) {
        if let Some(p) = &mut self.pressing {
            p.frame += 1;
            if p.frame >= frames {
                self.pressing = None;
            }
        }
    }

    fn header(&self, buf: &mut [u8], pt: u8, marker: bool, ts: u32) {
        buf[0] = 0x80;
        buf[1] = pt | if marker { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&ts.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }
}

/// SplitMix64: a seeded, reproducible spread of per-call values.
pub fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio() -> Audio {
        Audio::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech_ru_festival.wav"),
        )
        .unwrap()
    }

    fn fields(p: &[u8]) -> (bool, u8, u16, u32) {
        (
            p[1] & 0x80 != 0,
            p[1] & 0x7f,
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        )
    }

    #[test]
    fn rfc4733_key_replaces_voice_with_one_event_and_three_end_packets() {
        let a = audio();
        let mut s = Sender::new(7, 0, Some(101), KeyMode::Rfc4733, a.speech_frames());
        let mut buf = [0u8; MAX_RTP];
        assert_eq!(s.next_packet(&a, &mut buf), MAX_RTP);
        let (m0, pt0, seq0, ts0) = fields(&buf);
        assert!(m0 && pt0 == 0);
        s.press('#');
        let mut events = Vec::new();
        for i in 1..=8u16 {
            let n = s.next_packet(&a, &mut buf);
            let (m, pt, seq, ts) = fields(&buf);
            assert_eq!(seq, seq0.wrapping_add(i));
            if pt == 101 {
                assert_eq!(n, 16);
                assert_eq!(ts, ts0 + 160, "event timestamp is its start");
                let dur = u16::from_be_bytes([buf[14], buf[15]]);
                events.push((m, buf[12], buf[13] & 0x80 != 0, dur));
            } else {
                assert_eq!(ts, ts0 + 160 * u32::from(i), "voice resumes on time");
            }
        }
        assert_eq!(
            events,
            [
                (true, 11, false, 160),
                (false, 11, false, 320),
                (false, 11, false, 480),
                (false, 11, false, 640),
                (false, 11, true, 800),
                (false, 11, true, 800),
                (false, 11, true, 800),
            ]
        );
        assert!(!s.keys_pending());
    }

    #[test]
    fn inband_key_is_a_100_ms_tone_then_a_pause_and_falls_back_without_telephone_event() {
        let a = audio();
        let mut s = Sender::new(3, 0, None, KeyMode::Rfc4733, a.speech_frames());
        assert_eq!(s.mode(), KeyMode::Inband);
        s.press('5');
        let mut buf = [0u8; MAX_RTP];
        let mut decoded = Vec::new();
        for _ in 0..KEY_FRAMES + INBAND_PAUSE_FRAMES {
            assert_eq!(s.next_packet(&a, &mut buf), MAX_RTP);
            assert_eq!(buf[1] & 0x7f, 0);
            decoded.extend(
                buf[RTP_HEADER..]
                    .iter()
                    .map(|b| audio_codec_algorithms::decode_ulaw(*b)),
            );
        }
        assert!(!s.keys_pending());
        // 770 Hz + 1336 Hz: correlate with both, and with a wrong row.
        let power = |f: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, x) in decoded[..800].iter().enumerate() {
                let w = TAU * f * i as f64 / 8000.0;
                re += *x as f64 * w.cos();
                im += *x as f64 * w.sin();
            }
            re * re + im * im
        };
        assert!(power(770.0) > 100.0 * power(941.0));
        assert!(power(1336.0) > 100.0 * power(1633.0));
        assert!(
            decoded[800..].iter().all(|x| x.abs() < 16),
            "pause is silence"
        );
    }
}
