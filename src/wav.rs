//! Call recordings on disk: crash-tolerant WAV writing, durable completion, and repair of
//! files a crash left behind. The rules that end a voice message are in `voicemail`.
//!
//! Owns: the recording format (8 kHz 16-bit PCM WAV, mono for voicemail, stereo with the
//! caller left and the operator right for conversations), file and directory permissions
//! (0600 / 0700), the flush cadence that bounds what a crash can lose (counted in samples,
//! not wall time), fsync + SHA-256 on completion, and header repair.
//!
//! Must not: decode RTP or pick codecs (it takes decoded PCM), read clocks, or destroy audio:
//! an existing file is never overwritten, and repair never deletes a file — it only rewrites
//! header sizes and cuts a trailing partial sample frame.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::call::{Channels, RecordingInfo};

pub const SAMPLE_RATE: u32 = 8000;
const SAMPLES_PER_MS: u64 = SAMPLE_RATE as u64 / 1000;
const BYTES_PER_SAMPLE: u64 = 2;
/// hound counts data bytes in a `u32`; refuse to write past it rather than wrap the header.
const MAX_DATA_BYTES: u64 = u32::MAX as u64 - 4096;

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing WAV {}: {source}", path.display())]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("{}: a {actual:?} recording cannot take {requested:?} audio", path.display())]
    WrongChannels {
        path: PathBuf,
        actual: Channels,
        requested: Channels,
    },
    #[error("{}: recording reached the WAV size limit", path.display())]
    TooLong { path: PathBuf },
    /// The file was left exactly as it was.
    #[error("{}: cannot repair: {reason}", path.display())]
    Unrecoverable { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, RecorderError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RecorderError + 'a {
    move |source| RecorderError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn wav_err(path: &Path) -> impl FnOnce(hound::Error) -> RecorderError + '_ {
    move |source| match source {
        hound::Error::IoError(source) => RecorderError::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        },
        source => RecorderError::Wav {
            path: path.to_path_buf(),
            source,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderConfig {
    pub channels: Channels,
    /// The header is rewritten and buffers handed to the OS after this many samples per
    /// channel, which is the most a process crash can lose. Default: one second.
    pub flush_every_samples: u32,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            channels: Channels::Mono,
            flush_every_samples: SAMPLE_RATE,
        }
    }
}

/// Incremental 8 kHz 16-bit WAV writer for one call.
///
/// Dropping it without [`finish`](Self::finish) still finalizes the header (best effort);
/// a crash leaves a file that [`repair_wav`] makes whole up to the last flush or later.
pub struct WavRecorder {
    path: PathBuf,
    writer: hound::WavWriter<BufWriter<File>>,
    channels: Channels,
    flush_every: u64,
    samples: u64,
    since_flush: u64,
}

impl std::fmt::Debug for WavRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavRecorder")
            .field("path", &self.path)
            .field("channels", &self.channels)
            .field("samples", &self.samples)
            .finish_non_exhaustive()
    }
}

impl WavRecorder {
    /// Creates the file (never replacing an existing one) with mode 0600, and any missing
    /// parent directories with mode 0700 (existing ones are left as they are). The header is
    /// on disk before this returns, so even a crash before the first second leaves a file
    /// that can be repaired.
    pub fn create(path: impl AsRef<Path>, config: RecorderConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent() {
            create_private_dirs(parent)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        let spec = hound::WavSpec {
            channels: config.channels.count(),
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer =
            hound::WavWriter::new(BufWriter::new(file), spec).map_err(wav_err(&path))?;
        writer.flush().map_err(wav_err(&path))?;
        Ok(WavRecorder {
            path,
            writer,
            channels: config.channels,
            flush_every: u64::from(config.flush_every_samples.max(1)),
            samples: 0,
            since_flush: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn channels(&self) -> Channels {
        self.channels
    }

    /// Samples per channel written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn duration_ms(&self) -> u64 {
        self.samples / SAMPLES_PER_MS
    }

    pub fn write_mono(&mut self, pcm: &[i16]) -> Result<()> {
        self.expect(Channels::Mono)?;
        self.reserve(pcm.len())?;
        let mut w = self.writer.get_i16_writer(pcm.len() as u32);
        for &s in pcm {
            w.write_sample(s);
        }
        w.flush().map_err(wav_err(&self.path))?;
        self.advance(pcm.len())
    }

    /// Writes `max(caller.len(), operator.len())` stereo frames; the shorter side (possibly
    /// empty, when that party sent nothing for this tick) is padded with silence so the two
    /// channels stay aligned in time.
    pub fn write_stereo(&mut self, caller: &[i16], operator: &[i16]) -> Result<()> {
        self.expect(Channels::Stereo)?;
        let n = caller.len().max(operator.len());
        self.reserve(n)?;
        let mut w = self.writer.get_i16_writer(2 * n as u32);
        for i in 0..n {
            w.write_sample(caller.get(i).copied().unwrap_or(0));
            w.write_sample(operator.get(i).copied().unwrap_or(0));
        }
        w.flush().map_err(wav_err(&self.path))?;
        self.advance(n)
    }

    /// Writes `samples` of silence on every channel (e.g. for a lost packet).
    pub fn write_silence(&mut self, samples: usize) -> Result<()> {
        self.reserve(samples)?;
        let values = samples * usize::from(self.channels.count());
        let mut w = self.writer.get_i16_writer(values as u32);
        for _ in 0..values {
            w.write_sample(0i16);
        }
        w.flush().map_err(wav_err(&self.path))?;
        self.advance(samples)
    }

    /// Finalizes the header, fsyncs the file and its directory, then hashes the file.
    pub fn finish(self) -> Result<RecordingInfo> {
        self.complete(None)
    }

    /// Like [`finish`](Self::finish), but keeps only the first `samples_to_keep` samples per
    /// channel (e.g. [`Stop::keep_samples`] to drop trailing silence).
    pub fn finish_truncated(self, samples_to_keep: u64) -> Result<RecordingInfo> {
        self.complete(Some(samples_to_keep))
    }

    fn expect(&self, requested: Channels) -> Result<()> {
        if self.channels == requested {
            Ok(())
        } else {
            Err(RecorderError::WrongChannels {
                path: self.path.clone(),
                actual: self.channels,
                requested,
            })
        }
    }

    fn reserve(&self, samples: usize) -> Result<()> {
        let bytes_per_frame = BYTES_PER_SAMPLE * u64::from(self.channels.count());
        let total = (self.samples + samples as u64).saturating_mul(bytes_per_frame);
        if total > MAX_DATA_BYTES {
            return Err(RecorderError::TooLong {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn advance(&mut self, samples: usize) -> Result<()> {
        self.samples += samples as u64;
        self.since_flush += samples as u64;
        if self.since_flush >= self.flush_every {
            self.since_flush = 0;
            self.writer.flush().map_err(wav_err(&self.path))?;
        }
        Ok(())
    }

    fn complete(self, keep: Option<u64>) -> Result<RecordingInfo> {
        let WavRecorder {
            path,
            writer,
            channels,
            mut samples,
            ..
        } = self;
        writer.finalize().map_err(wav_err(&path))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(keep.is_some())
            .open(&path)
            .map_err(io_err("reopen", &path))?;
        if let Some(keep) = keep.filter(|&k| k < samples) {
            let layout = WavLayout::read(&file, &path)?;
            let frame = BYTES_PER_SAMPLE * u64::from(channels.count());
            layout.rewrite(&file, &path, Some(keep * frame))?;
            samples = keep;
        }
        file.sync_all().map_err(io_err("fsync", &path))?;
        sync_parent_dir(&path)?;
        let (size_bytes, sha256_hex) = hash_file(&mut file, &path)?;
        Ok(RecordingInfo {
            path,
            channels,
            samples,
            duration_ms: samples / SAMPLES_PER_MS,
            size_bytes,
            sha256_hex,
        })
    }
}

fn create_private_dirs(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    // A new directory's entry lives in its parent: without this, the recording could be
    // durable but unreachable after a power loss.
    missing.into_iter().try_for_each(sync_parent_dir)
}

fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn hash_file(file: &mut File, path: &Path) -> Result<(u64, String)> {
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read back", path))?;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 16 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read back", path)(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Where the size fields of a RIFF/WAVE file are, found by walking its chunks (so files
/// with `LIST`/`fact` chunks or a WAVEFORMATEXTENSIBLE header work too).
#[derive(Debug, Clone, Copy)]
struct WavLayout {
    file_len: u64,
    riff_size: u32,
    data_size_offset: u64,
    data_start: u64,
    data_size: u32,
    block_align: u16,
}

impl WavLayout {
    fn read(file: &File, path: &Path) -> Result<Self> {
        let bad = |reason: String| RecorderError::Unrecoverable {
            path: path.to_path_buf(),
            reason,
        };
        let file_len = file.metadata().map_err(io_err("stat", path))?.len();
        let read_at = |buf: &mut [u8], pos: u64| {
            file.read_exact_at(buf, pos)
                .map_err(io_err("read header of", path))
        };
        if file_len < 12 {
            return Err(bad(format!(
                "{file_len} bytes is too short to hold a WAV header"
            )));
        }
        let mut riff = [0u8; 12];
        read_at(&mut riff, 0)?;
        if &riff[0..4] != b"RIFF" || &riff[8..12] != b"WAVE" {
            return Err(bad("not a RIFF/WAVE file".into()));
        }
        let riff_size = u32::from_le_bytes([riff[4], riff[5], riff[6], riff[7]]);
        let mut block_align = None;
        let mut pos = 12u64;
        loop {
            if pos + 8 > file_len {
                return Err(bad(format!(
                    "no data chunk header within its {file_len} bytes"
                )));
            }
            let mut hdr = [0u8; 8];
            read_at(&mut hdr, pos)?;
            let size = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            match &hdr[0..4] {
                b"fmt " => {
                    if size < 16 || pos + 8 + 16 > file_len {
                        return Err(bad("fmt chunk is truncated".into()));
                    }
                    let mut fmt = [0u8; 16];
                    read_at(&mut fmt, pos + 8)?;
                    let align = u16::from_le_bytes([fmt[12], fmt[13]]);
                    if align == 0 {
                        return Err(bad("fmt chunk has a zero block size".into()));
                    }
                    block_align = Some(align);
                }
                b"data" => {
                    let Some(block_align) = block_align else {
                        return Err(bad("data chunk comes before the fmt chunk".into()));
                    };
                    return Ok(WavLayout {
                        file_len,
                        riff_size,
                        data_size_offset: pos + 4,
                        data_start: pos + 8,
                        data_size: size,
                        block_align,
                    });
                }
                _ => {}
            }
            // RIFF chunks are padded to an even length.
            pos += 8 + u64::from(size) + u64::from(size & 1);
        }
    }

    fn is_consistent(&self) -> bool {
        u64::from(self.riff_size) + 8 == self.file_len
            && self.data_start + u64::from(self.data_size) <= self.file_len
            && self.data_size.is_multiple_of(u32::from(self.block_align))
    }

    /// Sets the data size to what the file holds (at most `max_data` bytes), cut down to
    /// whole sample frames, truncates the file to match and rewrites both size fields.
    fn rewrite(&self, file: &File, path: &Path, max_data: Option<u64>) -> Result<RepairOutcome> {
        let available = self.file_len.saturating_sub(self.data_start);
        let mut data = available.min(max_data.unwrap_or(u64::MAX));
        data -= data % u64::from(self.block_align);
        let new_len = self.data_start + data;
        let (Ok(riff_size), Ok(data_size)) = (u32::try_from(new_len - 8), u32::try_from(data))
        else {
            return Err(RecorderError::Unrecoverable {
                path: path.to_path_buf(),
                reason: format!("{new_len} bytes is beyond the 4 GiB WAV limit"),
            });
        };
        if new_len < self.file_len {
            file.set_len(new_len).map_err(io_err("truncate", path))?;
        }
        file.write_all_at(&riff_size.to_le_bytes(), 4)
            .and_then(|()| file.write_all_at(&data_size.to_le_bytes(), self.data_size_offset))
            .map_err(io_err("rewrite header of", path))?;
        Ok(RepairOutcome::Repaired {
            samples: data / u64::from(self.block_align),
            removed_bytes: self.file_len - new_len,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Header sizes already matched the file; nothing was written.
    AlreadyValid,
    Repaired {
        /// Samples per channel now in the file.
        samples: u64,
        /// Trailing bytes of an incomplete sample frame that were cut off.
        removed_bytes: u64,
    },
}

/// Makes a WAV file left by a crash readable: rewrites the RIFF and data chunk sizes from
/// the actual file length, dropping a trailing partial sample frame. A consistent file is
/// not written to. A file that is too short or not a WAV is reported as
/// [`RecorderError::Unrecoverable`] and left in place untouched.
///
/// Must not run on a file that a live [`WavRecorder`] is still writing (run it at startup).
pub fn repair_wav(path: impl AsRef<Path>) -> Result<RepairOutcome> {
    let path = path.as_ref();
    let layout = {
        let file = File::open(path).map_err(io_err("open", path))?;
        WavLayout::read(&file, path)?
    };
    if layout.is_consistent() {
        return Ok(RepairOutcome::AlreadyValid);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open for repair", path))?;
    // Read again through the writable handle so the sizes match the file being changed.
    let outcome = WavLayout::read(&file, path)?.rewrite(&file, path, None)?;
    file.sync_all().map_err(io_err("fsync", path))?;
    Ok(outcome)
}

#[derive(Debug)]
pub struct RepairReport {
    pub path: PathBuf,
    pub result: Result<RepairOutcome>,
}

/// Runs [`repair_wav`] on every `*.wav` (any case) below `dir`, without following symbolic
/// links. Problems with individual files or subdirectories are reported in the list, sorted
/// by path; only an unreadable `dir` itself is an error.
pub fn repair_dir_recursive(dir: impl AsRef<Path>) -> Result<Vec<RepairReport>> {
    let root = dir.as_ref();
    let mut reports = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if dir == root => return Err(io_err("read directory", root)(e)),
            Err(e) => {
                let result = Err(io_err("read directory", &dir)(e));
                reports.push(RepairReport { path: dir, result });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let result = Err(io_err("read directory", &dir)(e));
                    reports.push(RepairReport {
                        path: dir.clone(),
                        result,
                    });
                    continue;
                }
            };
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() && is_wav(&path) => {
                    let result = repair_wav(&path);
                    reports.push(RepairReport { path, result });
                }
                Ok(_) => {}
                Err(e) => {
                    let result = Err(io_err("stat", &path)(e));
                    reports.push(RepairReport { path, result });
                }
            }
        }
    }
    reports.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(reports)
}

fn is_wav(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Deterministic, non-repeating test audio so that any misplaced sample shows.
    fn signal(n: usize, seed: u32) -> Vec<i16> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 16) as i16
            })
            .collect()
    }

    fn read_all(path: &Path) -> (hound::WavSpec, Vec<i16>) {
        let mut r = hound::WavReader::open(path).unwrap();
        let spec = r.spec();
        (spec, r.samples::<i16>().map(|s| s.unwrap()).collect())
    }

    fn mono() -> RecorderConfig {
        RecorderConfig::default()
    }

    fn stereo() -> RecorderConfig {
        RecorderConfig {
            channels: Channels::Stereo,
            ..RecorderConfig::default()
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn mono_recording_is_private_durable_and_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/call.wav");
        let pcm = signal(8000, 1);
        let mut rec = WavRecorder::create(&path, mono()).unwrap();
        for frame in pcm.chunks(160) {
            rec.write_mono(frame).unwrap();
        }
        assert_eq!(rec.duration_ms(), 1000);
        let info = rec.finish().unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        let (spec, samples) = read_all(&path);
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (1, 8000, 16)
        );
        assert_eq!(samples, pcm);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(info.size_bytes, bytes.len() as u64);
        assert_eq!(info.sha256_hex, hex::encode(Sha256::digest(&bytes)));
        assert_eq!((info.samples, info.duration_ms), (8000, 1000));
        assert_eq!(info.path, path);
    }

    #[test]
    fn never_overwrites_an_existing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.wav");
        fs::write(&path, b"precious").unwrap();
        let err = WavRecorder::create(&path, mono()).err().unwrap();
        assert!(matches!(&err, RecorderError::Io { source, .. }
            if source.kind() == io::ErrorKind::AlreadyExists));
        assert!(err.to_string().contains("x.wav"));
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn stereo_keeps_sides_aligned_when_one_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("conv.wav");
        let mut rec = WavRecorder::create(&path, stereo()).unwrap();
        let caller = signal(160, 2);
        let operator = signal(160, 3);
        rec.write_stereo(&caller, &operator).unwrap();
        rec.write_stereo(&caller, &[]).unwrap();
        rec.write_stereo(&[], &operator[..80]).unwrap();
        rec.write_silence(10).unwrap();
        assert!(matches!(
            rec.write_mono(&caller),
            Err(RecorderError::WrongChannels { .. })
        ));
        let info = rec.finish().unwrap();
        assert_eq!(info.samples, 160 + 160 + 80 + 10);
        let (spec, s) = read_all(&path);
        assert_eq!(spec.channels, 2);
        let left: Vec<i16> = s.iter().step_by(2).copied().collect();
        let right: Vec<i16> = s.iter().skip(1).step_by(2).copied().collect();
        assert_eq!(&left[..160], &caller[..]);
        assert_eq!(&right[..160], &operator[..]);
        assert_eq!(&left[160..320], &caller[..]);
        assert!(right[160..320].iter().all(|&x| x == 0));
        assert!(left[320..].iter().all(|&x| x == 0));
        assert_eq!(&right[320..400], &operator[..80]);
        assert!(right[400..].iter().all(|&x| x == 0));
    }

    fn header_data_size(path: &Path) -> u32 {
        let b = fs::read(path).unwrap();
        u32::from_le_bytes([b[40], b[41], b[42], b[43]])
    }

    #[test]
    fn header_is_flushed_every_second_of_audio() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.wav");
        let mut rec = WavRecorder::create(&path, mono()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 44);
        let frame = signal(160, 4);
        for _ in 0..49 {
            rec.write_mono(&frame).unwrap();
        }
        assert_eq!(header_data_size(&path), 0);
        rec.write_mono(&frame).unwrap();
        assert_eq!(header_data_size(&path), 16_000);
        for _ in 0..50 {
            rec.write_mono(&frame).unwrap();
        }
        assert_eq!(header_data_size(&path), 32_000);
        assert_eq!(fs::metadata(&path).unwrap().len(), 44 + 32_000);
        rec.finish().unwrap();
    }

    /// Writes `frames` 20 ms frames and abandons the recorder as a crash would: no header
    /// update, no flush of buffered bytes.
    fn crash_after(path: &Path, frames: usize, channels: Channels) -> Vec<i16> {
        let config = RecorderConfig {
            channels,
            ..RecorderConfig::default()
        };
        let mut rec = WavRecorder::create(path, config).unwrap();
        let pcm = signal(frames * 160 * usize::from(channels.count()), 5);
        for f in pcm.chunks(160 * usize::from(channels.count())) {
            match channels {
                Channels::Mono => rec.write_mono(f).unwrap(),
                Channels::Stereo => {
                    let l: Vec<i16> = f.iter().step_by(2).copied().collect();
                    let r: Vec<i16> = f.iter().skip(1).step_by(2).copied().collect();
                    rec.write_stereo(&l, &r).unwrap();
                }
            }
        }
        std::mem::forget(rec);
        pcm
    }

    #[test]
    fn crash_leaves_at_most_the_last_second_and_repairs_at_odd_sizes() {
        for channels in [Channels::Mono, Channels::Stereo] {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("crash.wav");
            // 2.9 s: the header was last updated at 2 s.
            let written = crash_after(&path, 145, channels);
            let crashed = fs::read(&path).unwrap();
            let ch = usize::from(channels.count());
            assert!(crashed.len() >= 44 + 16_000 * 2 * ch);
            for cut in [0, 1, 3, 7, 1001, 4095] {
                let copy = tmp.path().join(format!("cut{cut}.wav"));
                let len = crashed.len() - cut;
                fs::write(&copy, &crashed[..len]).unwrap();
                let outcome = repair_wav(&copy).unwrap();
                let frame_bytes = 2 * ch;
                let whole = (len - 44) / frame_bytes;
                let expected_removed = ((len - 44) % frame_bytes) as u64;
                assert_eq!(
                    outcome,
                    RepairOutcome::Repaired {
                        samples: whole as u64,
                        removed_bytes: expected_removed
                    },
                    "cut {cut}"
                );
                let (_, samples) = read_all(&copy);
                assert!(samples.len() >= 16_000 * ch, "cut {cut}: {}", samples.len());
                assert_eq!(samples[..], written[..samples.len()], "cut {cut}");
                assert_eq!(repair_wav(&copy).unwrap(), RepairOutcome::AlreadyValid);
            }
        }
    }

    #[test]
    fn snapshot_taken_mid_write_is_repairable() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("live.wav");
        let mut rec = WavRecorder::create(&path, mono()).unwrap();
        let pcm = signal(8000 * 3, 6);
        let snapshot = tmp.path().join("snapshot.wav");
        for (i, f) in pcm.chunks(160).enumerate() {
            rec.write_mono(f).unwrap();
            if i == 127 {
                fs::copy(&path, &snapshot).unwrap();
            }
        }
        rec.finish().unwrap();
        assert!(matches!(
            repair_wav(&snapshot).unwrap(),
            RepairOutcome::Repaired { .. }
        ));
        let (_, samples) = read_all(&snapshot);
        assert!(samples.len() >= 16_000);
        assert_eq!(samples[..], pcm[..samples.len()]);
    }

    #[test]
    fn zeroed_sizes_are_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("z.wav");
        let pcm = signal(1234, 7);
        let mut rec = WavRecorder::create(&path, mono()).unwrap();
        rec.write_mono(&pcm).unwrap();
        rec.finish().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[4..8].fill(0);
        bytes[40..44].fill(0);
        fs::write(&path, &bytes).unwrap();
        repair_wav(&path).unwrap();
        assert_eq!(read_all(&path).1, pcm);
    }

    #[test]
    fn valid_and_hopeless_files_are_left_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good.wav");
        let mut rec = WavRecorder::create(&good, mono()).unwrap();
        rec.write_mono(&signal(500, 8)).unwrap();
        rec.finish().unwrap();
        let before = fs::read(&good).unwrap();
        let mtime = fs::metadata(&good).unwrap().modified().unwrap();
        assert_eq!(repair_wav(&good).unwrap(), RepairOutcome::AlreadyValid);
        assert_eq!(fs::read(&good).unwrap(), before);
        assert_eq!(fs::metadata(&good).unwrap().modified().unwrap(), mtime);

        for (name, content) in [
            ("short.wav", &before[..10]),
            ("header-only.wav", &before[..30]),
            ("text.wav", &b"this is not audio at all, not even close"[..]),
            ("empty.wav", &b""[..]),
        ] {
            let p = tmp.path().join(name);
            fs::write(&p, content).unwrap();
            let err = repair_wav(&p).unwrap_err();
            assert!(
                matches!(err, RecorderError::Unrecoverable { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name));
            assert_eq!(fs::read(&p).unwrap(), content, "{name}");
        }
    }

    #[test]
    fn repairs_a_whole_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        crash_after(&root.join("2024/01/a.wav"), 90, Channels::Mono);
        crash_after(&root.join("2024/02/B.WAV"), 30, Channels::Stereo);
        let mut rec = WavRecorder::create(root.join("ok.wav"), mono()).unwrap();
        rec.write_mono(&[1, 2, 3]).unwrap();
        rec.finish().unwrap();
        fs::write(root.join("2024/stub.wav"), b"RIFF").unwrap();
        fs::write(root.join("2024/notes.txt"), b"ignored").unwrap();
        let reports = repair_dir_recursive(root).unwrap();
        let summary: Vec<(String, bool, bool)> = reports
            .iter()
            .map(|r| {
                let name = r.path.strip_prefix(root).unwrap().display().to_string();
                let repaired = matches!(r.result, Ok(RepairOutcome::Repaired { .. }));
                (name, r.result.is_ok(), repaired)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("2024/01/a.wav".to_string(), true, true),
                ("2024/02/B.WAV".to_string(), true, true),
                ("2024/stub.wav".to_string(), false, false),
                ("ok.wav".to_string(), true, false),
            ]
        );
        assert!(read_all(&root.join("2024/01/a.wav")).1.len() >= 8000);
        assert!(root.join("2024/stub.wav").exists());
        assert!(repair_dir_recursive(root.join("missing")).is_err());
    }

    #[test]
    fn finish_truncated_keeps_the_requested_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        for (channels, keep, expect) in [
            (Channels::Mono, 8000, 8000),
            (Channels::Stereo, 4321, 4321),
            (Channels::Mono, 1_000_000, 16_000),
            (Channels::Mono, 0, 0),
        ] {
            let path = tmp.path().join(format!("t{channels:?}{keep}.wav"));
            let config = RecorderConfig {
                channels,
                ..RecorderConfig::default()
            };
            let mut rec = WavRecorder::create(&path, config).unwrap();
            let ch = usize::from(channels.count());
            let pcm = signal(16_000 * ch, 9);
            for f in pcm.chunks(160 * ch) {
                match channels {
                    Channels::Mono => rec.write_mono(f).unwrap(),
                    Channels::Stereo => {
                        let l: Vec<i16> = f.iter().step_by(2).copied().collect();
                        let r: Vec<i16> = f.iter().skip(1).step_by(2).copied().collect();
                        rec.write_stereo(&l, &r).unwrap();
                    }
                }
            }
            let info = rec.finish_truncated(keep).unwrap();
            assert_eq!(info.samples, expect);
            assert_eq!(info.duration_ms, expect / 8);
            let (_, samples) = read_all(&path);
            assert_eq!(samples[..], pcm[..expect as usize * ch]);
            let bytes = fs::read(&path).unwrap();
            assert_eq!(info.size_bytes, bytes.len() as u64);
            assert_eq!(info.sha256_hex, hex::encode(Sha256::digest(&bytes)));
            assert_eq!(repair_wav(&path).unwrap(), RepairOutcome::AlreadyValid);
        }
    }

    #[test]
    fn stop_drives_a_truncated_recording() {
        use crate::media::voicemail::tests::SPEECH;
        use crate::media::voicemail::{VoicemailStop, VoicemailStopConfig};
        const QUIET: [i16; 160] = [3; 160];
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vm/msg.wav");
        let mut rec = WavRecorder::create(&path, mono()).unwrap();
        let mut s = VoicemailStop::new(&VoicemailStopConfig::default());
        let mut fed = 0;
        let stop = loop {
            let frame: &[i16] = if fed < 100 { &SPEECH } else { &QUIET };
            fed += 1;
            rec.write_mono(frame).unwrap();
            if let Some(stop) = s.push_frame(frame) {
                break stop;
            }
        };
        let info = rec.finish_truncated(stop.keep_samples).unwrap();
        assert_eq!(info.duration_ms, 2500);
        let (_, samples) = read_all(&path);
        assert_eq!(samples.len(), 20_000);
        assert_eq!(samples[..160], SPEECH[..]);
    }
}
