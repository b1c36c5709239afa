//! Announcement prompts: loading WAV files of any common format into 8 kHz mono PCM,
//! encoding them once per G.711 codec, and a per-call cursor that plays them out frame by
//! frame.
//!
//! Owns: decoding (8/16/24/32-bit integer and 32-bit float WAV, any channel count and sample
//! rate), downmixing, band-limited resampling to 8 kHz, conversion to i16 with clipping, the
//! limits a prompt file must meet, 20 ms framing, and the playout order (queue, barge-in stop,
//! looping).
//!
//! Must not: touch the file system during calls (everything is loaded and encoded once, then
//! shared read-only through `Arc`), keep time, or send packets — the caller asks for one
//! frame per 20 ms tick. Playing a frame neither allocates nor copies.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use super::g711::{self};
use crate::call::Codec;

/// Output sample rate of every prompt.
pub const SAMPLE_RATE: u32 = 8000;
/// Samples (and G.711 bytes) in one 20 ms frame.
pub const FRAME_SAMPLES: usize = 160;
/// Sample rates outside this range are rejected rather than resampled.
pub const MIN_INPUT_RATE: u32 = 4_000;
pub const MAX_INPUT_RATE: u32 = 192_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLimits {
    /// Longest accepted prompt. Default: 300 s.
    pub max_duration_ms: u64,
}

impl Default for PromptLimits {
    fn default() -> Self {
        PromptLimits {
            max_duration_ms: 300_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("prompt {}: file not found", path.display())]
    NotFound { path: PathBuf },
    #[error("prompt {}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("prompt {}: not a WAV file ({reason})", path.display())]
    NotWav { path: PathBuf, reason: String },
    #[error("prompt {}: corrupt WAV file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("prompt {}: unsupported WAV format: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error("prompt {}: contains no audio samples", path.display())]
    Empty { path: PathBuf },
    #[error("prompt {}: {duration_ms} ms long, the limit is {max_ms} ms", path.display())]
    TooLong {
        path: PathBuf,
        duration_ms: u64,
        max_ms: u64,
    },
    #[error("prompt {}: resampling from {rate} Hz failed: {reason}", path.display())]
    Resample {
        path: PathBuf,
        rate: u32,
        reason: String,
    },
    #[error("prompt id {id:?} is not a plain file name")]
    InvalidId { id: String },
    #[error("prompt {id:?} is not loaded")]
    UnknownId { id: String },
}

/// A prompt decoded to 8 kHz mono.
#[derive(Clone, PartialEq, Eq)]
pub struct PromptAudio {
    pub id: String,
    pub pcm: Vec<i16>,
    pub duration_ms: u64,
}

// Summaries only: a derived Debug would print every sample.
impl std::fmt::Debug for PromptAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptAudio")
            .field("id", &self.id)
            .field("samples", &self.pcm.len())
            .field("duration_ms", &self.duration_ms)
            .finish()
    }
}

impl std::fmt::Debug for EncodedPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedPrompt")
            .field("codec", &self.codec)
            .field("frames", &self.frame_count())
            .finish()
    }
}

impl PromptAudio {
    pub fn new(id: impl Into<String>, pcm: Vec<i16>) -> Self {
        let duration_ms = pcm.len() as u64 * 1000 / u64::from(SAMPLE_RATE);
        PromptAudio {
            id: id.into(),
            pcm,
            duration_ms,
        }
    }
}

/// Loads a prompt with the default limits; its id is the file stem.
pub fn load_prompt(path: impl AsRef<Path>) -> Result<PromptAudio, PromptError> {
    load_prompt_with(path, &PromptLimits::default())
}

pub fn load_prompt_with(
    path: impl AsRef<Path>,
    limits: &PromptLimits,
) -> Result<PromptAudio, PromptError> {
    let path = path.as_ref();
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    load_as(id, path, limits)
}

fn load_as(id: String, path: &Path, limits: &PromptLimits) -> Result<PromptAudio, PromptError> {
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => PromptError::NotFound {
            path: path.to_path_buf(),
        },
        _ => PromptError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let file = File::open(path).map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let len = meta.len();
    let pcm = decode_wav(BufReader::new(file), len, path, limits)?;
    Ok(PromptAudio::new(id, pcm))
}

/// Decodes a whole WAV stream of `byte_len` bytes to 8 kHz mono i16.
fn decode_wav<R: Read>(
    reader: R,
    byte_len: u64,
    path: &Path,
    limits: &PromptLimits,
) -> Result<Vec<i16>, PromptError> {
    let corrupt = |reason: String| PromptError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let unsupported = |reason: String| PromptError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let mut wav = hound::WavReader::new(reader).map_err(|e| match e {
        hound::Error::FormatError(msg @ ("no RIFF tag found" | "no WAVE tag found")) => {
            PromptError::NotWav {
                path: path.to_path_buf(),
                reason: msg.into(),
            }
        }
        // hound reports 64-bit float as a header error; it is a valid file we cannot play.
        hound::Error::FormatError("bits per sample is not 32") => {
            unsupported("float samples must be 32-bit".into())
        }
        hound::Error::FormatError(msg) => corrupt(msg.into()),
        hound::Error::IoError(_) if byte_len < 12 => PromptError::NotWav {
            path: path.to_path_buf(),
            reason: format!("only {byte_len} bytes"),
        },
        hound::Error::IoError(e) => corrupt(format!("header is truncated or unreadable: {e}")),
        hound::Error::Unsupported => {
            unsupported("only integer PCM and 32-bit float WAV can be played".into())
        }
        e => unsupported(e.to_string()),
    })?;
    let spec = wav.spec();
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&spec.sample_rate) {
        return Err(unsupported(format!(
            "sample rate {} Hz (accepted: {MIN_INPUT_RATE}..={MAX_INPUT_RATE})",
            spec.sample_rate
        )));
    }
    let supported = match spec.sample_format {
        hound::SampleFormat::Int => matches!(spec.bits_per_sample, 8 | 16 | 24 | 32),
        hound::SampleFormat::Float => spec.bits_per_sample == 32,
    };
    if !supported {
        return Err(unsupported(format!(
            "{}-bit {:?} samples",
            spec.bits_per_sample, spec.sample_format
        )));
    }
    let frames = u64::from(wav.duration());
    if frames == 0 {
        return Err(PromptError::Empty {
            path: path.to_path_buf(),
        });
    }
    // Checked against the header before reading, so a bogus length cannot make us read or
    // allocate gigabytes.
    let declared_bytes = u64::from(wav.len()) * u64::from(spec.bits_per_sample / 8);
    if declared_bytes > byte_len {
        return Err(corrupt(format!(
            "truncated: header declares {declared_bytes} bytes of audio, file has {byte_len}"
        )));
    }
    let duration_ms = frames * 1000 / u64::from(spec.sample_rate);
    if duration_ms > limits.max_duration_ms {
        return Err(PromptError::TooLong {
            path: path.to_path_buf(),
            duration_ms,
            max_ms: limits.max_duration_ms,
        });
    }

    let channels = usize::from(spec.channels);
    let mut mono = Vec::with_capacity(frames as usize);
    let read_error = |frames_read: usize, e: hound::Error| {
        corrupt(format!(
            "sample data unreadable after {frames_read} of {frames} frames: {e}"
        ))
    };
    match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / f64::from(1u32 << (spec.bits_per_sample - 1));
            downmix(wav.samples::<i32>(), channels, &mut mono, |s| {
                f64::from(s) * scale
            })
            .map_err(|(n, e)| read_error(n, e))?;
        }
        hound::SampleFormat::Float => {
            downmix(wav.samples::<f32>(), channels, &mut mono, |s| {
                // NaN or infinity would poison a whole FFT block of the resampler.
                if s.is_finite() {
                    f64::from(s)
                } else {
                    0.0
                }
            })
            .map_err(|(n, e)| read_error(n, e))?;
        }
    }

    let mono = if spec.sample_rate == SAMPLE_RATE {
        mono
    } else {
        resample_to_telephone(&mono, spec.sample_rate).map_err(|reason| PromptError::Resample {
            path: path.to_path_buf(),
            rate: spec.sample_rate,
            reason,
        })?
    };
    Ok(mono
        .iter()
        .map(|&x| (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// Averages each interleaved frame into one f32 sample in -1.0..=1.0. On a read error,
/// returns how many frames were read before it.
fn downmix<S>(
    samples: impl Iterator<Item = hound::Result<S>>,
    channels: usize,
    out: &mut Vec<f32>,
    to_unit: impl Fn(S) -> f64,
) -> Result<(), (usize, hound::Error)> {
    let mut acc = 0.0;
    let mut n = 0;
    for s in samples {
        acc += to_unit(s.map_err(|e| (out.len(), e))?);
        n += 1;
        if n == channels {
            out.push((acc / channels as f64) as f32);
            acc = 0.0;
            n = 0;
        }
    }
    Ok(())
}

/// Band-limited conversion to 8 kHz (FFT-based, with an anti-aliasing filter), with the
/// resampler's delay removed so the output lines up with the input.
pub fn resample_to_telephone(input: &[f32], rate: u32) -> Result<Vec<f32>, String> {
    // One large FFT block per chunk: startup cost is irrelevant here, and a longer block
    // puts the anti-aliasing cutoff closer to 4 kHz (about 3.9 kHz from 48 kHz input).
    let mut resampler = Fft::<f32>::new_custom(
        rate as usize,
        SAMPLE_RATE as usize,
        4096,
        1,
        1,
        WindowFunction::BlackmanHarris2,
        FixedSync::Both,
    )
    .map_err(|e| e.to_string())?;
    let adapter = InterleavedSlice::new(input, 1, input.len()).map_err(|e| e.to_string())?;
    let out = resampler
        .process_all(&adapter, input.len(), None)
        .map_err(|e| e.to_string())?;
    Ok(out.take_data())
}

/// A prompt encoded with one codec: whole 160-byte frames, the last one padded with the
/// codec's silence.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    codec: Codec,
    data: Vec<u8>,
}

impl EncodedPrompt {
    pub fn encode(codec: Codec, pcm: &[i16]) -> Self {
        let mut data = Vec::with_capacity(pcm.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES);
        g711::encode(codec, pcm, &mut data);
        data.resize(
            data.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES,
            codec.silence_byte(),
        );
        EncodedPrompt { codec, data }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// All frames back to back (a multiple of [`FRAME_SAMPLES`] bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn frame_count(&self) -> usize {
        self.data.len() / FRAME_SAMPLES
    }

    pub fn frame(&self, index: usize) -> Option<&[u8]> {
        self.data
            .get(index * FRAME_SAMPLES..(index + 1) * FRAME_SAMPLES)
    }

    pub fn frames(&self) -> std::slice::ChunksExact<'_, u8> {
        self.data.chunks_exact(FRAME_SAMPLES)
    }
}

/// A loaded prompt with its PCM and both G.711 encodings, shared read-only by every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    audio: PromptAudio,
    pcmu: EncodedPrompt,
    pcma: EncodedPrompt,
}

impl Prompt {
    pub fn new(audio: PromptAudio) -> Self {
        Prompt {
            pcmu: EncodedPrompt::encode(Codec::Pcmu, &audio.pcm),
            pcma: EncodedPrompt::encode(Codec::Pcma, &audio.pcm),
            audio,
        }
    }

    pub fn id(&self) -> &str {
        &self.audio.id
    }

    pub fn audio(&self) -> &PromptAudio {
        &self.audio
    }

    pub fn encoded(&self, codec: Codec) -> &EncodedPrompt {
        match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
        }
    }

    /// Same for every codec.
    pub fn frame_count(&self) -> usize {
        self.pcmu.frame_count()
    }
}

/// The prompts of a deployment, loaded once at startup.
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    prompts: HashMap<String, Arc<Prompt>>,
}

impl PromptSet {
    /// Loads `<dir>/<id>.wav` for every id with the default limits.
    pub fn load_dir(dir: impl AsRef<Path>, ids: &[&str]) -> Result<PromptSet, Vec<PromptError>> {
        Self::load_dir_with(dir, ids, &PromptLimits::default())
    }

    /// Loads every id and reports every failure, not just the first, so one deployment
    /// check shows everything that is wrong with the prompt directory.
    pub fn load_dir_with(
        dir: impl AsRef<Path>,
        ids: &[&str],
        limits: &PromptLimits,
    ) -> Result<PromptSet, Vec<PromptError>> {
        let dir = dir.as_ref();
        let mut set = PromptSet::default();
        let mut errors = Vec::new();
        for &id in ids {
            if set.prompts.contains_key(id) {
                continue;
            }
            if !is_plain_id(id) {
                errors.push(PromptError::InvalidId { id: id.into() });
                continue;
            }
            match load_as(id.into(), &dir.join(format!("{id}.wav")), limits) {
                Ok(audio) => set.insert(Prompt::new(audio)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Adds (or replaces) a prompt, e.g. one generated rather than loaded.
    pub fn insert(&mut self, prompt: Prompt) {
        self.prompts
            .insert(prompt.id().to_owned(), Arc::new(prompt));
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Prompt>> {
        self.prompts.get(id)
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.prompts.keys().map(String::as_str)
    }
}

/// An id names a file inside the prompt directory, never a path out of it.
fn is_plain_id(id: &str) -> bool {
    !id.is_empty() && !id.starts_with('.') && !id.contains(['/', '\\', '\0'])
}

/// Per-call playout cursor over a queue of prompts: one frame per 20 ms tick.
///
/// The codec is chosen per frame, so a re-INVITE that changes codec mid-prompt continues
/// at the same position.
#[derive(Debug, Clone, Default)]
pub struct PromptPlayer {
    queue: Vec<Arc<Prompt>>,
    item: usize,
    frame: usize,
    looping: bool,
}

impl PromptPlayer {
    pub fn new() -> Self {
        PromptPlayer::default()
    }

    /// A player for `ids` in order; fails on the first id that is not in `set`.
    pub fn from_ids(set: &PromptSet, ids: &[&str]) -> Result<Self, PromptError> {
        let mut player = PromptPlayer::new();
        player.queue.reserve(ids.len());
        for &id in ids {
            let prompt = set
                .get(id)
                .ok_or_else(|| PromptError::UnknownId { id: id.into() })?;
            player.enqueue(Arc::clone(prompt));
        }
        Ok(player)
    }

    /// Appends a prompt; a finished (non-looping) player resumes with it.
    pub fn enqueue(&mut self, prompt: Arc<Prompt>) {
        self.queue.push(prompt);
    }

    /// When looping, the queue starts over after its last frame (comfort audio, hold music)
    /// until [`stop`](Self::stop).
    pub fn set_looping(&mut self, looping: bool) {
        self.looping = looping;
    }

    /// The next 160-byte frame, or `None` when there is nothing (more) to play.
    pub fn next_frame(&mut self, codec: Codec) -> Option<&[u8]> {
        // Enough steps to reach the end, wrap and find a frame; bounded so that a queue of
        // only empty prompts cannot spin while looping.
        for _ in 0..2 * self.queue.len() + 2 {
            let Some(prompt) = self.queue.get(self.item) else {
                if self.looping && !self.queue.is_empty() {
                    self.item = 0;
                    continue;
                }
                return None;
            };
            if self.frame < prompt.frame_count() {
                let (item, frame) = (self.item, self.frame);
                self.frame += 1;
                return self.queue[item].encoded(codec).frame(frame);
            }
            self.item += 1;
            self.frame = 0;
        }
        None
    }

    /// Whether every queued frame has been played (never, while looping a non-empty queue).
    pub fn is_finished(&self) -> bool {
        let has_frames = |p: &Arc<Prompt>| p.frame_count() > 0;
        if self.looping {
            return !self.queue.iter().any(has_frames);
        }
        match self.queue.get(self.item..).and_then(<[_]>::split_first) {
            Some((current, rest)) => {
                self.frame >= current.frame_count() && !rest.iter().any(has_frames)
            }
            None => true,
        }
    }

    /// Stops playback at once (barge-in) and empties the queue; capacity is kept.
    pub fn stop(&mut self) {
        self.queue.clear();
        self.item = 0;
        self.frame = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;
    use std::io::Cursor;

    fn write_wav(path: &Path, spec: hound::WavSpec, frames: usize, f: impl Fn(usize) -> f64) {
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        let full = f64::from(1u32 << (spec.bits_per_sample - 1)) - 1.0;
        for i in 0..frames {
            let v = f(i);
            for _ in 0..spec.channels {
                match spec.sample_format {
                    hound::SampleFormat::Float => w.write_sample(v as f32).unwrap(),
                    hound::SampleFormat::Int => {
                        let s = (v * full).round() as i32;
                        if spec.bits_per_sample == 8 {
                            w.write_sample(s as i8).unwrap()
                        } else {
                            w.write_sample(s).unwrap()
                        }
                    }
                }
            }
        }
        w.finalize().unwrap();
    }

    fn spec(rate: u32, channels: u16, bits: u16, float: bool) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        }
    }

    fn sine_file(
        dir: &Path,
        name: &str,
        spec: hound::WavSpec,
        freq: f64,
        amp: f64,
        secs: f64,
    ) -> PathBuf {
        let path = dir.join(name);
        let rate = f64::from(spec.sample_rate);
        write_wav(&path, spec, (secs * rate) as usize, |i| {
            amp * (2.0 * PI * freq * i as f64 / rate).sin()
        });
        path
    }

    /// Relative power at `freq` (Goertzel), normalised so a full-scale sine of that
    /// frequency gives about 1.
    fn goertzel(x: &[i16], freq: f64) -> f64 {
        let w = 2.0 * PI * freq / 8000.0;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s = f64::from(v) / 32768.0 + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - c * s1 * s2;
        power * 4.0 / (x.len() as f64 * x.len() as f64)
    }

    fn zero_crossings(x: &[i16]) -> usize {
        x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    fn rms_db(x: &[i16]) -> f64 {
        super::super::level::dbov(x)
    }

    #[test]
    fn resampled_sines_keep_frequency_and_level() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            ("a.wav", spec(44_100, 1, 16, false), 1000.0),
            ("b.wav", spec(48_000, 2, 24, false), 440.0),
            ("c.wav", spec(16_000, 1, 32, true), 1700.0),
            ("d.wav", spec(22_050, 3, 8, false), 1000.0),
            ("e.wav", spec(48_000, 1, 32, false), 3000.0),
            ("f.wav", spec(11_025, 2, 16, false), 600.0),
        ];
        for (name, spec, freq) in cases {
            let path = sine_file(tmp.path(), name, spec, freq, 0.5, 2.0);
            let audio = load_prompt(&path).unwrap();
            assert_eq!(audio.id, name.trim_end_matches(".wav"));
            assert!(
                (audio.pcm.len() as i64 - 16_000).abs() <= 1,
                "{name}: {}",
                audio.pcm.len()
            );
            assert_eq!(audio.duration_ms, audio.pcm.len() as u64 / 8);
            // Ignore the edges, where the filter rings.
            let mid = &audio.pcm[800..15_200];
            let crossings = zero_crossings(mid) as f64;
            let expected = 2.0 * freq * mid.len() as f64 / 8000.0;
            assert!(
                (crossings - expected).abs() <= 2.0,
                "{name}: {crossings} vs {expected}"
            );
            let on = goertzel(mid, freq);
            let off = goertzel(mid, freq * 1.3);
            assert!(on > 1000.0 * off, "{name}: {on} vs {off}");
            // A sine at half scale: -6.02 - 3.01 dBov.
            let level = rms_db(mid);
            assert!((level + 9.03).abs() < 1.0, "{name}: {level} dBov");
        }
    }

    #[test]
    fn out_of_band_content_is_filtered_not_aliased() {
        let tmp = tempfile::tempdir().unwrap();
        // Plain decimation by 6 would fold 6 kHz onto 2 kHz at full level.
        let path = sine_file(
            tmp.path(),
            "hf.wav",
            spec(48_000, 1, 16, false),
            6000.0,
            0.5,
            1.0,
        );
        let audio = load_prompt(&path).unwrap();
        let mid = &audio.pcm[800..7200];
        assert!(rms_db(mid) < -60.0, "{}", rms_db(mid));
        assert!(goertzel(mid, 2000.0) < 1e-6);
    }

    #[test]
    fn native_format_is_taken_verbatim_and_clipping_is_safe() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("native.wav");
        let pcm: Vec<i16> = (0..1000).map(|i| (i * 37 % 65536 - 32768) as i16).collect();
        let mut w = hound::WavWriter::create(&path, spec(8000, 1, 16, false)).unwrap();
        for &s in &pcm {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        assert_eq!(load_prompt(&path).unwrap().pcm, pcm);

        let loud = tmp.path().join("loud.wav");
        write_wav(&loud, spec(8000, 1, 32, true), 100, |i| {
            if i % 2 == 0 {
                4.0
            } else {
                -4.0
            }
        });
        let audio = load_prompt(&loud).unwrap();
        assert!(audio.pcm.iter().all(|&s| s == i16::MAX || s == i16::MIN));
    }

    #[test]
    fn stereo_is_averaged() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lr.wav");
        let mut w = hound::WavWriter::create(&path, spec(8000, 2, 16, false)).unwrap();
        for _ in 0..10 {
            w.write_sample(1000i16).unwrap();
            w.write_sample(-3000i16).unwrap();
        }
        w.finalize().unwrap();
        assert_eq!(load_prompt(&path).unwrap().pcm, vec![-1000; 10]);
    }

    fn valid_wav_bytes() -> Vec<u8> {
        let mut c = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut c, spec(8000, 1, 16, false)).unwrap();
        for i in 0..800 {
            w.write_sample((i * 40) as i16).unwrap();
        }
        w.finalize().unwrap();
        c.into_inner()
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let good = valid_wav_bytes();
        std::fs::write(dir.join("text.wav"), b"hello, this is not a wav file").unwrap();
        std::fs::write(dir.join("tiny.wav"), b"RI").unwrap();
        std::fs::write(dir.join("truncated.wav"), &good[..good.len() / 2]).unwrap();
        std::fs::write(dir.join("cut-header.wav"), &good[..30]).unwrap();
        let mut alaw = good.clone();
        alaw[20] = 6; // format tag: A-law
        std::fs::write(dir.join("alaw.wav"), &alaw).unwrap();
        let mut f64wav = good.clone();
        // 64-bit IEEE float: format tag 3, 8-byte blocks, 64 bits.
        f64wav[20] = 3;
        f64wav[28..32].copy_from_slice(&64_000u32.to_le_bytes());
        f64wav[32] = 8;
        f64wav[34] = 64;
        std::fs::write(dir.join("f64.wav"), &f64wav).unwrap();
        let mut slow = good.clone();
        slow[24..28].copy_from_slice(&1000u32.to_le_bytes());
        slow[28..32].copy_from_slice(&2000u32.to_le_bytes());
        std::fs::write(dir.join("slow.wav"), &slow).unwrap();
        let mut empty = Cursor::new(Vec::new());
        hound::WavWriter::new(&mut empty, spec(8000, 1, 16, false))
            .unwrap()
            .finalize()
            .unwrap();
        std::fs::write(dir.join("empty.wav"), empty.into_inner()).unwrap();
        sine_file(dir, "long.wav", spec(8000, 1, 16, false), 440.0, 0.5, 2.0);

        let limits = PromptLimits {
            max_duration_ms: 1500,
        };
        let load = |name: &str| load_prompt_with(dir.join(name), &limits).unwrap_err();
        for (name, is_expected) in [
            (
                "tiny.wav",
                (|e: &PromptError| matches!(e, PromptError::NotWav { .. }))
                    as fn(&PromptError) -> bool,
            ),
            ("truncated.wav", |e| {
                matches!(e, PromptError::Corrupt { .. })
            }),
            ("cut-header.wav", |e| {
                matches!(e, PromptError::Corrupt { .. })
            }),
            ("alaw.wav", |e| matches!(e, PromptError::Unsupported { .. })),
            ("f64.wav", |e| matches!(e, PromptError::Unsupported { .. })),
            ("slow.wav", |e| matches!(e, PromptError::Unsupported { .. })),
            ("empty.wav", |e| matches!(e, PromptError::Empty { .. })),
            ("long.wav", |e| {
                matches!(
                    e,
                    PromptError::TooLong {
                        duration_ms: 2000,
                        max_ms: 1500,
                        ..
                    }
                )
            }),
            ("missing.wav", |e| matches!(e, PromptError::NotFound { .. })),
            ("text.wav", |e| matches!(e, PromptError::NotWav { .. })),
        ] {
            let e = load(name);
            assert!(is_expected(&e), "{name}: {e:?}");
            assert!(e.to_string().contains(name), "{e}");
        }
        let e = load_prompt(dir).unwrap_err();
        assert!(
            matches!(e, PromptError::Io { .. } | PromptError::Corrupt { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let good = valid_wav_bytes();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let limits = PromptLimits::default();
        let path = Path::new("fuzz.wav");
        for round in 0..3000 {
            let mut bytes = if round % 3 == 0 {
                let len = (rnd() % 200) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                if round % 2 == 0 && b.len() >= 12 {
                    b[..4].copy_from_slice(b"RIFF");
                    b[8..12].copy_from_slice(b"WAVE");
                }
                b
            } else {
                good.clone()
            };
            if round % 3 != 0 {
                // Corrupt a few bytes, mostly in the header.
                for _ in 0..1 + rnd() % 4 {
                    let limit = if rnd() % 4 == 0 { bytes.len() } else { 48 };
                    let i = (rnd() as usize) % limit;
                    bytes[i] = rnd() as u8;
                }
                let cut = (rnd() as usize) % (bytes.len() + 1);
                if rnd() % 3 == 0 {
                    bytes.truncate(cut);
                }
            }
            let len = bytes.len() as u64;
            if let Ok(pcm) = decode_wav(Cursor::new(bytes), len, path, &limits) {
                assert!(!pcm.is_empty());
            }
        }
    }

    fn tone(id: &str, samples: usize) -> Prompt {
        let pcm = (0..samples).map(|i| (i % 100) as i16 * 50 - 2500).collect();
        Prompt::new(PromptAudio::new(id, pcm))
    }

    #[test]
    fn encoding_frames_and_pads_with_codec_silence() {
        let p = tone("t", 400);
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let e = p.encoded(codec);
            assert_eq!(e.codec(), codec);
            assert_eq!(e.frame_count(), 3);
            assert_eq!(e.as_bytes().len(), 480);
            assert_eq!(e.frames().count(), 3);
            let mut expected = Vec::new();
            g711::encode(codec, &p.audio().pcm, &mut expected);
            assert_eq!(&e.as_bytes()[..400], &expected[..]);
            assert!(e.as_bytes()[400..]
                .iter()
                .all(|&b| b == codec.silence_byte()));
            assert!(e.frame(3).is_none());
        }
        assert_eq!(tone("exact", 320).frame_count(), 2);
        assert_eq!(tone("none", 0).frame_count(), 0);
    }

    #[test]
    fn load_dir_collects_every_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        sine_file(
            dir,
            "welcome.wav",
            spec(44_100, 2, 16, false),
            500.0,
            0.3,
            0.5,
        );
        sine_file(
            dir,
            "goodbye.wav",
            spec(8000, 1, 16, false),
            500.0,
            0.3,
            0.2,
        );
        std::fs::write(dir.join("broken.wav"), b"RIFF....WAVEjunk").unwrap();
        let errors = PromptSet::load_dir(
            dir,
            &["welcome", "absent", "broken", "../etc/passwd", "goodbye"],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(matches!(errors[0], PromptError::NotFound { .. }));
        assert!(matches!(errors[1], PromptError::Corrupt { .. }));
        assert!(matches!(errors[2], PromptError::InvalidId { .. }));

        let set = PromptSet::load_dir(dir, &["welcome", "goodbye", "welcome"]).unwrap();
        assert_eq!(set.len(), 2);
        let welcome = set.get("welcome").unwrap();
        assert_eq!(welcome.id(), "welcome");
        assert_eq!(welcome.audio().duration_ms, 500);
        assert_eq!(welcome.frame_count(), 25);
        assert!(set.get("absent").is_none());
        let mut ids: Vec<&str> = set.ids().collect();
        ids.sort();
        assert_eq!(ids, ["goodbye", "welcome"]);
    }

    #[test]
    fn player_plays_queue_in_order_and_stops() {
        let mut set = PromptSet::default();
        set.insert(tone("a", 320));
        set.insert(tone("b", 100));
        assert!(matches!(
            PromptPlayer::from_ids(&set, &["a", "zzz"]),
            Err(PromptError::UnknownId { .. })
        ));
        let mut player = PromptPlayer::from_ids(&set, &["a", "b", "a"]).unwrap();
        let a = set.get("a").unwrap().encoded(Codec::Pcmu);
        let b = set.get("b").unwrap().encoded(Codec::Pcma);
        assert!(!player.is_finished());
        assert_eq!(player.next_frame(Codec::Pcmu), a.frame(0));
        assert_eq!(player.next_frame(Codec::Pcmu), a.frame(1));
        // Codec switch mid-queue.
        assert_eq!(player.next_frame(Codec::Pcma), b.frame(0));
        assert_eq!(player.next_frame(Codec::Pcmu), a.frame(0));
        assert!(!player.is_finished());
        assert_eq!(player.next_frame(Codec::Pcmu), a.frame(1));
        assert!(player.is_finished());
        assert_eq!(player.next_frame(Codec::Pcmu), None);
        player.enqueue(Arc::clone(set.get("b").unwrap()));
        assert!(!player.is_finished());
        assert_eq!(player.next_frame(Codec::Pcma), b.frame(0));
        assert_eq!(player.next_frame(Codec::Pcma), None);

        let mut player = PromptPlayer::from_ids(&set, &["a"]).unwrap();
        player.next_frame(Codec::Pcmu);
        player.stop();
        assert!(player.is_finished());
        assert_eq!(player.next_frame(Codec::Pcmu), None);
    }

    #[test]
    fn player_loops_until_stopped() {
        let mut set = PromptSet::default();
        set.insert(tone("music", 480));
        set.insert(tone("nothing", 0));
        let mut player = PromptPlayer::from_ids(&set, &["nothing", "music", "nothing"]).unwrap();
        player.set_looping(true);
        let music = set.get("music").unwrap().encoded(Codec::Pcma);
        for i in 0..30 {
            assert_eq!(player.next_frame(Codec::Pcma), music.frame(i % 3));
            assert!(!player.is_finished());
        }
        player.stop();
        assert!(player.is_finished());
        assert_eq!(player.next_frame(Codec::Pcma), None);

        let mut silent = PromptPlayer::from_ids(&set, &["nothing"]).unwrap();
        silent.set_looping(true);
        assert!(silent.is_finished());
        assert_eq!(silent.next_frame(Codec::Pcmu), None);
    }
}
