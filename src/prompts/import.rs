//! `hotline prompts import DIR`: studio recordings named by prompt id, in WAV,
//! FLAC, MP3 or Ogg Vorbis, become the canonical telephone prompts.
//!
//! Each recording is decoded (symphonia, pure Rust), mixed to mono, resampled to
//! 8 kHz (rubato, as the prompt loader does), trimmed to a short pad of silence at
//! both ends, brought to its loudness target and written as
//! `<prompts dir>/<id>.wav` (8 kHz mono 16-bit). A recording that is clipped,
//! silent, undecodable or still off target after normalisation is reported and
//! written nowhere. Nothing but the canonical WAVs of the ids imported is ever
//! written; each is replaced in one rename, so a failure leaves the old file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as DecodeError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::kind_of;
use super::level::{self, Kind, Levels};
use crate::ivr::PromptCatalog;
use crate::media::prompt::{resample_to_telephone, MAX_INPUT_RATE, MIN_INPUT_RATE, SAMPLE_RATE};

/// File name extensions taken as recordings.
pub const EXTENSIONS: [&str; 5] = ["wav", "flac", "mp3", "ogg", "oga"];
/// Larger files are refused before decoding: a prompt is seconds of audio.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Longest recording accepted, as for prompts at start-up.
pub const MAX_SECONDS: f64 = 300.0;
/// Packets in a row that fail to decode before the file is given up.
const MAX_BAD_PACKETS: u32 = 32;

/// One recording found in the directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportRow {
    pub id: String,
    pub file: String,
    /// Measurements of what was (or would have been) written.
    pub levels: Option<Levels>,
    pub problems: Vec<String>,
    pub written: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub rows: Vec<ImportRow>,
    /// Files in the directory that are not recordings of a known prompt.
    pub ignored: Vec<(String, String)>,
    /// Spoken prompts that still have no studio recording.
    pub missing: Vec<String>,
}

impl ImportReport {
    pub fn failed(&self) -> bool {
        self.rows.iter().any(|r| !r.written)
    }
}

/// Imports every recording in `source` into `prompts_dir`. `placeholders` are the
/// ids whose current WAV is still a generated placeholder.
pub fn import_dir(
    source: &Path,
    prompts_dir: &Path,
    catalog: &PromptCatalog,
    placeholders: &[String],
) -> Result<ImportReport, String> {
    let entries =
        std::fs::read_dir(source).map_err(|e| format!("{}: cannot read: {e}", source.display()))?;
    let mut report = ImportReport::default();
    let mut by_id: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !path.is_file() || name.starts_with('.') {
            continue;
        }
        if !EXTENSIONS.contains(&ext.as_str()) {
            report
                .ignored
                .push((name, "not a WAV, FLAC, MP3 or Ogg file".into()));
            continue;
        }
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if kind_of(catalog, &id).is_none() {
            report
                .ignored
                .push((name, format!("\"{id}\" is not a prompt id in prompts.toml")));
            continue;
        }
        by_id.entry(id).or_default().push(path);
    }
    for (id, mut files) in by_id {
        files.sort();
        let names: Vec<String> = files.iter().map(|f| file_name(f)).collect();
        if files.len() > 1 {
            report.rows.push(ImportRow {
                id,
                file: names.join(", "),
                levels: None,
                problems: vec!["more than one recording of this prompt".into()],
                written: false,
            });
            continue;
        }
        let kind = kind_of(catalog, &id).unwrap_or(Kind::Speech);
        report
            .rows
            .push(import_one(&id, &files[0], kind, prompts_dir));
    }
    report.ignored.sort();
    let imported: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.written)
        .map(|r| r.id.as_str())
        .collect();
    report.missing = catalog
        .prompts
        .keys()
        .filter(|id| {
            !imported.contains(&id.as_str())
                && (placeholders.contains(id) || !prompts_dir.join(format!("{id}.wav")).exists())
        })
        .cloned()
        .collect();
    Ok(report)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn import_one(id: &str, file: &Path, kind: Kind, prompts_dir: &Path) -> ImportRow {
    let mut row = ImportRow {
        id: id.to_owned(),
        file: file_name(file),
        levels: None,
        problems: Vec::new(),
        written: false,
    };
    let pcm = match convert(file, kind) {
        Ok(pcm) => pcm,
        Err(problems) => {
            row.problems = problems;
            return row;
        }
    };
    let levels = level::measure(&level::to_unit(&pcm), SAMPLE_RATE);
    row.levels = Some(levels);
    row.problems = level::problems(&levels, kind)
        .iter()
        .map(ToString::to_string)
        .collect();
    if !row.problems.is_empty() {
        return row;
    }
    match write_wav(&prompts_dir.join(format!("{id}.wav")), &pcm) {
        Ok(()) => row.written = true,
        Err(e) => row.problems.push(e),
    }
    row
}

/// Decoded, checked for clipping, converted and normalised 8 kHz samples, or the
/// problems that stop the import.
pub fn convert(file: &Path, kind: Kind) -> Result<Vec<i16>, Vec<String>> {
    let (mono, rate) = decode(file).map_err(|e| vec![e])?;
    // Clipping cannot be undone: judge it on the recording as delivered.
    let clipped = level::clipped_places(&mono);
    if clipped > 0 {
        return Err(vec![format!(
            "clipped in {clipped} places in the recording: record it again with more headroom"
        )]);
    }
    let mono = if rate == SAMPLE_RATE {
        mono
    } else {
        resample_to_telephone(&mono, rate).map_err(|e| vec![format!("resampling failed: {e}")])?
    };
    // Silence is judged at the target level, so a quiet recording is not cut into;
    // the trimmed clip is then brought to the target exactly.
    let mut mono = mono;
    let silent = || vec![level::LevelProblem::Silent.to_string()];
    level::normalize(&mut mono, SAMPLE_RATE, kind).ok_or_else(silent)?;
    // Music fades in and out on purpose and loops: left whole.
    let mut trimmed = if kind == Kind::Music {
        mono
    } else {
        level::trim(&mono, SAMPLE_RATE).to_vec()
    };
    level::normalize(&mut trimmed, SAMPLE_RATE, kind).ok_or_else(silent)?;
    Ok(level::to_pcm16(&trimmed))
}

/// Mono samples in -1.0..=1.0 and their rate. Decoder panics on hostile files are
/// caught and reported like any other decoding error.
pub fn decode(file: &Path) -> Result<(Vec<f32>, u32), String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} MB: larger than the {} MB a prompt may be",
            meta.len() / 1_000_000,
            MAX_FILE_BYTES / 1_000_000
        ));
    }
    let path = file.to_path_buf();
    std::panic::catch_unwind(move || decode_inner(&path))
        .unwrap_or_else(|_| Err("cannot be decoded (the decoder gave up on it)".into()))
}

fn decode_inner(file: &Path) -> Result<(Vec<f32>, u32), String> {
    let f = File::open(file).map_err(|e| format!("cannot read: {e}"))?;
    let stream = MediaSourceStream::new(Box::new(f), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = file.extension() {
        hint.with_extension(&ext.to_string_lossy());
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| format!("not a recording this tool can read ({e})"))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or("no audio track")?;
    let track_id = track.id;
    let rate = track.codec_params.sample_rate.ok_or("no sample rate")?;
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&rate) {
        return Err(format!(
            "sample rate {rate} Hz (accepted: {MIN_INPUT_RATE}-{MAX_INPUT_RATE})"
        ));
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| format!("unsupported encoding ({e})"))?;
    let max_samples = (MAX_SECONDS * f64::from(rate)) as usize;
    let mut mono: Vec<f32> = Vec::new();
    let mut bad = 0;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(DecodeError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(DecodeError::ResetRequired) => break,
            Err(e) => return Err(format!("unreadable after {:.1} s ({e})", secs(&mono, rate))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(DecodeError::DecodeError(_)) if bad < MAX_BAD_PACKETS => {
                bad += 1;
                continue;
            }
            Err(e) => {
                return Err(format!(
                    "cannot be decoded after {:.1} s ({e})",
                    secs(&mono, rate)
                ))
            }
        };
        bad = 0;
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let mut buffer = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buffer.copy_interleaved_ref(decoded);
        mono.extend(buffer.samples().chunks(channels).map(|frame| {
            let sum: f32 = frame
                .iter()
                .map(|s| if s.is_finite() { *s } else { 0.0 })
                .sum();
            sum / channels as f32
        }));
        if mono.len() > max_samples {
            return Err(format!("longer than {MAX_SECONDS:.0} s"));
        }
    }
    if mono.is_empty() {
        return Err("contains no audio".into());
    }
    Ok((mono, rate))
}

fn secs(samples: &[f32], rate: u32) -> f64 {
    samples.len() as f64 / f64::from(rate.max(1))
}

/// Writes 8 kHz mono 16-bit PCM to `path` through a temporary file in the same
/// directory and one rename.
pub fn write_wav(path: &Path, pcm: &[i16]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.import-{}",
        file_name(path),
        std::process::id()
    ));
    let result = (|| -> Result<(), String> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let file = File::create(&tmp).map_err(|e| e.to_string())?;
        let mut writer = hound::WavWriter::new(std::io::BufWriter::new(file), spec)
            .map_err(|e| e.to_string())?;
        for s in pcm {
            writer.write_sample(*s).map_err(|e| e.to_string())?;
        }
        writer.finalize().map_err(|e| e.to_string())?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        // The rename is durable once the directory is.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The table `hotline prompts import` prints.
pub fn report_text(report: &ImportReport) -> String {
    let mut out = String::new();
    let mut rows = vec![["id", "file", "seconds", "LUFS", "peak dBFS", "result"].map(String::from)];
    for r in &report.rows {
        let (seconds, lufs, peak) = match &r.levels {
            Some(l) => (
                format!("{:.2}", l.seconds),
                l.lufs.map_or("-".into(), |v| format!("{v:.1}")),
                format!("{:.1}", l.peak_dbfs),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let result = if r.written {
            "written".to_string()
        } else {
            format!("NOT IMPORTED: {}", r.problems.join("; "))
        };
        rows.push([r.id.clone(), r.file.clone(), seconds, lufs, peak, result]);
    }
    out.push_str(&super::format_table(&rows));
    for (name, why) in &report.ignored {
        out.push_str(&format!("ignored {name}: {why}\n"));
    }
    if report.missing.is_empty() {
        out.push_str("every spoken prompt has a recording\n");
    } else {
        out.push_str(&format!(
            "still missing ({}): {}\n",
            report.missing.len(),
            report.missing.join(", ")
        ));
    }
    out
}
