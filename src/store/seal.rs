//! Sealing: what the hotline keeps about a caller is encrypted to keys that are not on
//! the server, in the age format (X25519 recipients), so every sealed file opens with
//! the standard `age -d -i IDENTITY`.
//!
//! Owns the encryption of finished recordings (`X.wav` becomes `X.wav.age`), of the
//! per-call blobs of answers, digits and IVR path, the sealing worker thread, and the
//! start-up sweep that seals what a crash left in clear. Must not hold an identity:
//! decryption happens in the CLI (`--identity`) or in the server's memory while it is
//! unsealed (`crate::vault`).

use age::x25519;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use zeroize::Zeroizing;

/// Suffix of a sealed recording (`X.wav.age`).
pub const SEALED_SUFFIX: &str = ".age";
/// Suffix of a sealed recording being written; renamed when complete.
const PART_SUFFIX: &str = ".age.part";
/// Sealed blobs are padded to a multiple of this, so their size does not tell how many
/// digits a caller pressed.
const BLOB_PADDING: usize = 256;
/// Largest blob opened (a call's details are a few KiB).
pub const MAX_BLOB_BYTES: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{path}: sealed copy does not match the original ({why})")]
    Verify { path: PathBuf, why: String },
    #[error("encryption: {0}")]
    Encrypt(String),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> SealError + 'a {
    move |source| SealError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// The public keys everything is sealed to (`storage.recipients`).
pub struct Sealer {
    recipients: Vec<x25519::Recipient>,
}

/// A recording sealed on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFile {
    pub path: PathBuf,
    pub size_bytes: u64,
    /// SHA-256 of the sealed file as it is on disk.
    pub sha256_hex: String,
}

/// Parses `age1…` recipients; the error names the index of the bad one.
pub use crate::config::parse_recipients;

impl Sealer {
    /// None when there is nobody to seal to (plaintext storage).
    pub fn new(recipients: Vec<x25519::Recipient>) -> Option<Arc<Sealer>> {
        (!recipients.is_empty()).then(|| Arc::new(Sealer { recipients }))
    }

    pub fn from_config(list: &[String]) -> Result<Option<Arc<Sealer>>, String> {
        let r = parse_recipients(list).map_err(|(i, e)| format!("storage.recipients[{i}]: {e}"))?;
        Ok(Sealer::new(r))
    }

    pub fn recipients(&self) -> &[x25519::Recipient] {
        &self.recipients
    }

    fn encryptor(&self, extra: Option<&x25519::Recipient>) -> Result<age::Encryptor, SealError> {
        let all = self
            .recipients
            .iter()
            .chain(extra)
            .map(|r| r as &dyn age::Recipient);
        age::Encryptor::with_recipients(all).map_err(|e| SealError::Encrypt(e.to_string()))
    }

    /// Seals a small value (a call's details). The plaintext is padded with spaces,
    /// which JSON ignores, to a multiple of 256 bytes.
    pub fn seal_bytes(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let padded_len = plain.len().div_ceil(BLOB_PADDING).max(1) * BLOB_PADDING;
        let mut padded = Zeroizing::new(Vec::with_capacity(padded_len));
        padded.extend_from_slice(plain);
        padded.resize(padded_len, b' ');
        let mut out = Vec::with_capacity(padded_len + 300);
        let mut w = self
            .encryptor(None)?
            .wrap_output(&mut out)
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
        w.write_all(&padded)
            .and_then(|_| w.finish().map(|_| ()))
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
        Ok(out)
    }

    /// Seals a finished recording: writes `X.wav.age` (through `X.wav.age.part`, fsynced
    /// and renamed, directory fsynced), reads it back and decrypts it to check that it
    /// holds exactly the original, then overwrites and removes the plaintext.
    ///
    /// The check needs a key: each file is also sealed to a one-off X25519 key that
    /// exists in memory only while this function runs, and is dropped (zeroized) before
    /// it returns. Whoever catches that key reads this one file, whose plaintext was on
    /// disk at that moment anyway.
    pub fn seal_file(&self, plain_path: &Path) -> Result<SealedFile, SealError> {
        let sealed_path = sealed_path_of(plain_path);
        let part = part_path_of(plain_path);
        let check_key = x25519::Identity::generate();
        let plain_sha = {
            let mut src = File::open(plain_path).map_err(io_err(plain_path, "open"))?;
            // A `.part` is only ever ours, left by an interrupted seal.
            let _ = fs::remove_file(&part);
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&part)
                .map_err(io_err(&part, "create"))?;
            let mut w = self
                .encryptor(Some(&check_key.to_public()))?
                .wrap_output(BufWriter::with_capacity(CHUNK, out))
                .map_err(io_err(&part, "write"))?;
            let mut hasher = Sha256::new();
            let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(plain_path, "read")(e)),
                };
                hasher.update(&buf[..n]);
                w.write_all(&buf[..n]).map_err(io_err(&part, "write"))?;
            }
            let file = w
                .finish()
                .and_then(|b| b.into_inner().map_err(|e| e.into_error()))
                .map_err(io_err(&part, "write"))?;
            file.sync_all().map_err(io_err(&part, "fsync"))?;
            hasher.finalize()
        };
        fs::rename(&part, &sealed_path).map_err(io_err(&sealed_path, "rename"))?;
        sync_parent(&sealed_path)?;
        let (size_bytes, sealed_sha, opened_sha) = read_back(&sealed_path, &check_key)?;
        drop(check_key);
        if opened_sha != plain_sha[..] {
            let _ = fs::remove_file(&sealed_path);
            return Err(SealError::Verify {
                path: sealed_path,
                why: "decrypts to different bytes".into(),
            });
        }
        destroy_plaintext(plain_path)?;
        Ok(SealedFile {
            path: sealed_path,
            size_bytes,
            sha256_hex: hex::encode(sealed_sha),
        })
    }
}

/// Reads a sealed file back: its size, the SHA-256 of its bytes, and the SHA-256 of
/// what it decrypts to with `key`.
fn read_back(path: &Path, key: &x25519::Identity) -> Result<(u64, [u8; 32], [u8; 32]), SealError> {
    let file = File::open(path).map_err(io_err(path, "reopen"))?;
    let mut tee = HashingReader {
        inner: io::BufReader::with_capacity(CHUNK, file),
        hasher: Sha256::new(),
        len: 0,
    };
    let opened = {
        let decryptor = age::Decryptor::new(&mut tee).map_err(|e| SealError::Verify {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let mut reader = decryptor
            .decrypt(std::iter::once(key as &dyn age::Identity))
            .map_err(|e| SealError::Verify {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
        let mut hasher = Sha256::new();
        let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(SealError::Verify {
                        path: path.to_path_buf(),
                        why: e.to_string(),
                    })
                }
            }
        }
        hasher.finalize()
    };
    // The decryptor stops at the last chunk; anything after it would be garbage.
    let mut rest = Vec::new();
    tee.read_to_end(&mut rest).map_err(io_err(path, "read"))?;
    if !rest.is_empty() {
        return Err(SealError::Verify {
            path: path.to_path_buf(),
            why: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok((tee.len, tee.hasher.finalize().into(), opened.into()))
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Overwrites a plaintext file with zeros before unlinking it, so that on a file
/// system that writes in place its blocks do not keep the audio. On SSDs and
/// copy-on-write file systems the old blocks may survive: see docs/privacy.md.
fn destroy_plaintext(path: &Path) -> Result<(), SealError> {
    let len = fs::metadata(path).map_err(io_err(path, "stat"))?.len();
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "open for erasing"))?;
    let zeros = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io_err(path, "erase"))?;
        left -= n as u64;
    }
    f.sync_data().map_err(io_err(path, "fsync"))?;
    drop(f);
    fs::remove_file(path).map_err(io_err(path, "remove"))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<(), SealError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

pub fn sealed_path_of(plain: &Path) -> PathBuf {
    let mut s = plain.as_os_str().to_owned();
    s.push(SEALED_SUFFIX);
    PathBuf::from(s)
}

fn part_path_of(plain: &Path) -> PathBuf {
    let mut s = plain.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

/// Reads identities from the text of an (unencrypted) age identity file: one
/// `AGE-SECRET-KEY-1…` per line, `#` comments and blank lines ignored.
pub fn parse_identities(text: &str) -> Result<Vec<x25519::Identity>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with("AGE-SECRET-KEY-1") {
            return Err(format!(
                "line {}: not an age X25519 identity (AGE-SECRET-KEY-1…); plugin and SSH identities are not supported",
                i + 1
            ));
        }
        out.push(
            line.parse::<x25519::Identity>()
                .map_err(|e| format!("line {}: {e}", i + 1))?,
        );
    }
    if out.is_empty() {
        return Err("no identity in the file".into());
    }
    Ok(out)
}

/// Decrypts a sealed blob with any of `identities`.
pub fn open_bytes(
    identities: &[x25519::Identity],
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    if blob.len() > MAX_BLOB_BYTES {
        return Err(format!("sealed value of {} bytes is too large", blob.len()));
    }
    let d = age::Decryptor::new_buffered(blob).map_err(|e| e.to_string())?;
    let r = d
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| e.to_string())?;
    let mut out = Zeroizing::new(Vec::new());
    r.take(MAX_BLOB_BYTES as u64)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decrypts a sealed file into `out`; returns the plaintext length.
pub fn open_file(
    identities: &[x25519::Identity],
    path: &Path,
    out: &mut impl Write,
) -> Result<u64, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let d = age::Decryptor::new_buffered(io::BufReader::with_capacity(CHUNK, f))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = d
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    io::copy(&mut r, out).map_err(|e| format!("{}: {e}", path.display()))
}

/// A finished recording to seal, and what to tell when done.
pub struct SealJob<T> {
    pub plain: PathBuf,
    pub context: T,
}

/// Starts the sealing worker: one thread, below the media clock's priority, that seals
/// finished recordings in order and hands each result to `done`.
pub fn spawn_worker<T: Send + 'static>(
    sealer: Arc<Sealer>,
    done: impl Fn(T, Result<SealedFile, SealError>) + Send + 'static,
) -> io::Result<mpsc::Sender<SealJob<T>>> {
    let (tx, rx) = mpsc::channel::<SealJob<T>>();
    std::thread::Builder::new()
        .name("seal".into())
        .spawn(move || {
            lower_thread_priority();
            while let Ok(job) = rx.recv() {
                let result = sealer.seal_file(&job.plain);
                done(job.context, result);
            }
        })?;
    Ok(tx)
}

/// Nice 10 and the idle I/O class for the calling thread only (Linux threads have
/// their own): sealing is bulk work and must not delay the 20 ms media clock or the
/// store writer's commits.
fn lower_thread_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: gettid has no preconditions; setpriority and ioprio_set act on our own
    // thread id and take plain integers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        );
    }
}

/// What the start-up sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Plaintext recordings sealed (crash leftovers or from before sealing was on).
    pub sealed: Vec<(PathBuf, SealedFile)>,
    /// Half-written sealed files removed.
    pub removed_parts: usize,
    /// Sealed files removed because their plaintext was still there (the seal was
    /// not known to be complete) and was sealed again.
    pub resealed: usize,
    pub failed: Vec<(PathBuf, String)>,
}

/// Seals every plaintext WAV below `dir` (no call is in progress at start-up):
/// half-written `.age.part` files are removed, headers of WAVs cut short by a crash
/// are repaired first, and a WAV whose `.wav.age` also exists is sealed again (the
/// earlier seal had not been verified and the plaintext removed).
pub fn sweep_dir(sealer: &Sealer, dir: &Path) -> SweepReport {
    let mut report = SweepReport::default();
    let mut wavs = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                pending.push(p);
            } else if t.is_file() {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(PART_SUFFIX) {
                    match fs::remove_file(&p) {
                        Ok(()) => report.removed_parts += 1,
                        Err(e) => report.failed.push((p, e.to_string())),
                    }
                } else if name.to_ascii_lowercase().ends_with(".wav") {
                    wavs.push(p);
                }
            }
        }
    }
    wavs.sort();
    for wav in wavs {
        // A file repair cannot read (too short, not a WAV) is sealed as it is: it is
        // still what the caller left.
        let _ = crate::wav::repair_wav(&wav);
        let sealed = sealed_path_of(&wav);
        if sealed.exists() {
            if let Err(e) = fs::remove_file(&sealed) {
                report.failed.push((wav, e.to_string()));
                continue;
            }
            report.resealed += 1;
        }
        match sealer.seal_file(&wav) {
            Ok(s) => report.sealed.push((wav, s)),
            Err(e) => report.failed.push((wav, e.to_string())),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (x25519::Identity, Arc<Sealer>) {
        let id = x25519::Identity::generate();
        let sealer = Sealer::new(vec![id.to_public()]).unwrap();
        (id, sealer)
    }

    #[test]
    fn blobs_round_trip_and_hide_their_length() {
        let (id, sealer) = keypair();
        let a = sealer.seal_bytes(br#"{"unit":"1"}"#).unwrap();
        let b = sealer.seal_bytes(br#"{"unit":"12345"}"#).unwrap();
        // The age header varies by a few random bytes (grease); the payload does not.
        let opened_a = open_bytes(std::slice::from_ref(&id), &a).unwrap();
        let opened = open_bytes(std::slice::from_ref(&id), &b).unwrap();
        assert_eq!(opened_a.len(), 256, "padding hides the answer's length");
        assert_eq!(opened.len(), 256);
        let v: serde_json::Value = serde_json::from_slice(&opened).unwrap();
        assert_eq!(v["unit"], "12345");
        assert!(!b.windows(5).any(|w| w == b"12345"));
        let other = x25519::Identity::generate();
        assert!(open_bytes(&[other], &b).is_err());
        assert!(open_bytes(&[id], b"not age at all").is_err());
    }

    #[test]
    fn a_file_is_sealed_verified_and_its_plaintext_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (id, sealer) = keypair();
        let wav = dir.path().join("a-voicemail.wav");
        let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&wav, &content).unwrap();
        let s = sealer.seal_file(&wav).unwrap();
        assert!(!wav.exists());
        assert_eq!(s.path, dir.path().join("a-voicemail.wav.age"));
        let on_disk = fs::read(&s.path).unwrap();
        assert_eq!(s.size_bytes, on_disk.len() as u64);
        assert_eq!(s.sha256_hex, hex::encode(Sha256::digest(&on_disk)));
        let mut out = Vec::new();
        open_file(&[id], &s.path, &mut out).unwrap();
        assert_eq!(out, content);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&s.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            fs::read_dir(dir.path()).unwrap().count() == 1,
            "no .part left"
        );
    }

    #[test]
    fn the_sweep_removes_parts_and_reseals_unverified_files() {
        let dir = tempfile::tempdir().unwrap();
        let (id, sealer) = keypair();
        let day = dir.path().join("2024/01/02");
        fs::create_dir_all(&day).unwrap();
        // A WAV cut by a crash: header sizes still zero, 3 samples and half a sample.
        let mut cut = Vec::new();
        cut.extend_from_slice(b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0");
        cut.extend_from_slice(&8000u32.to_le_bytes());
        cut.extend_from_slice(&16000u32.to_le_bytes());
        cut.extend_from_slice(b"\x02\0\x10\0data\0\0\0\0");
        cut.extend_from_slice(&[1, 0, 2, 0, 3, 0, 9]);
        fs::write(day.join("x-voicemail.wav"), &cut).unwrap();
        // A seal interrupted before its rename, and one interrupted before the
        // plaintext was removed.
        fs::write(day.join("y-voicemail.wav"), b"RIFF-y").unwrap();
        fs::write(day.join("y-voicemail.wav.age.part"), b"half").unwrap();
        fs::write(day.join("z-conversation.wav"), b"RIFF-z").unwrap();
        fs::write(day.join("z-conversation.wav.age"), b"unverified").unwrap();
        fs::write(day.join("orphan.wav.age.part"), b"half").unwrap();
        let report = sweep_dir(&sealer, dir.path());
        assert_eq!(report.removed_parts, 2);
        assert_eq!(report.resealed, 1);
        assert_eq!(report.sealed.len(), 3, "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        let mut names: Vec<String> = fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "x-voicemail.wav.age",
                "y-voicemail.wav.age",
                "z-conversation.wav.age"
            ]
        );
        let mut z = Vec::new();
        open_file(
            std::slice::from_ref(&id),
            &day.join("z-conversation.wav.age"),
            &mut z,
        )
        .unwrap();
        assert_eq!(z, b"RIFF-z");
        let mut x = Vec::new();
        open_file(&[id], &day.join("x-voicemail.wav.age"), &mut x).unwrap();
        let wav = hound::WavReader::new(&x[..]).unwrap();
        assert_eq!(wav.len(), 3, "the header was repaired before sealing");
    }

    #[test]
    fn the_worker_seals_at_low_cpu_and_io_priority() {
        let dir = tempfile::tempdir().unwrap();
        let (_id, sealer) = keypair();
        let wav = dir.path().join("w.wav");
        fs::write(&wav, b"RIFF....WAVE").unwrap();
        let (tx, rx) = mpsc::channel();
        let jobs = spawn_worker(sealer, move |tag: u32, result| {
            // Runs on the worker thread.
            // SAFETY: plain queries about the calling thread.
            let (nice, ioprio) = unsafe {
                let tid = libc::syscall(libc::SYS_gettid);
                (
                    libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
                    libc::syscall(libc::SYS_ioprio_get, 1 as libc::c_long, tid),
                )
            };
            tx.send((tag, result.map(|s| s.path), nice, ioprio >> 13))
                .unwrap();
        })
        .unwrap();
        jobs.send(SealJob {
            plain: wav.clone(),
            context: 7,
        })
        .unwrap();
        let (tag, path, nice, class) = rx.recv().unwrap();
        assert_eq!(tag, 7);
        assert_eq!(path.unwrap(), sealed_path_of(&wav));
        assert_eq!(nice, 10);
        assert_eq!(class, 3, "idle I/O class");
    }

    #[test]
    fn identity_files_and_recipients_parse() {
        let id = x25519::Identity::generate();
        let text = format!(
            "# created: now\n# public key: {}\n{}\n",
            id.to_public(),
            age::secrecy::ExposeSecret::expose_secret(&id.to_string())
        );
        let ids = parse_identities(&text).unwrap();
        assert_eq!(ids[0].to_public().to_string(), id.to_public().to_string());
        assert!(parse_identities("# nothing\n").is_err());
        assert!(parse_identities("AGE-PLUGIN-YUBIKEY-1XYZ\n").is_err());
        let good = id.to_public().to_string();
        assert_eq!(
            parse_recipients(std::slice::from_ref(&good)).unwrap().len(),
            1
        );
        let err = parse_recipients(&[good, "age1nope".into()]).unwrap_err();
        assert_eq!(err.0, 1);
    }
}
