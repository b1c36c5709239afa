//! Online backups: a consistent copy of the database and of every recording it names,
//! taken while the server runs, with a manifest to check it by.
//!
//! The database is copied with SQLite's backup API in one step, which reads one
//! snapshot (WAL readers never block the writer); the recordings are then the files
//! that snapshot names, checked against the SHA-256 each row recorded. The manifest
//! (`MANIFEST.sha256`, the format `sha256sum -c` reads) is written last, so a backup
//! without one is incomplete. Restoring is copying the directory back (see
//! docs/privacy.md). The caller-ID hash key is deliberately not copied.
//!
//! Recordings in progress are not in the snapshot and not copied: their rows do not
//! exist yet.

use rusqlite::{params, Connection, OpenFlags};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

pub const MANIFEST: &str = "MANIFEST.sha256";
pub const INFO: &str = "backup.json";
const DB_NAME: &str = "hotline.db";
/// A manifest line is under 300 bytes; a million recordings fit.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

#[derive(Debug, serde::Serialize)]
pub struct BackupReport {
    pub calls: i64,
    pub recordings: usize,
    pub files: usize,
    pub bytes: u64,
}

fn private_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: fsync: {e}", dir.display()))
}

/// Copies `src` to `dst` (new file, mode 0600, fsynced); returns (size, SHA-256 hex).
fn copy_hashed(src: &Path, dst: &Path) -> Result<(u64, String), String> {
    let mut input = File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| format!("{}: {e}", dst.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{}: {e}", src.display())),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", dst.display()))?;
        size += n as u64;
    }
    out.sync_all()
        .map_err(|e| format!("{}: fsync: {e}", dst.display()))?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn hash_file(path: &Path) -> Result<(u64, String), String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// A relative path with no `..`, no root: safe to join under a directory.
fn safe_relative(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| path.to_path_buf())
        .filter(|p| !p.as_os_str().is_empty())
}

/// Takes a backup of the database at `db` and of the recordings it names (under
/// `data_dir`) into `dest`, which must not exist or be empty.
/// `now` is recorded in the manifest as the backup's time.
pub fn backup(
    db: &Path,
    data_dir: &Path,
    dest: &Path,
    now: std::time::SystemTime,
) -> Result<BackupReport, String> {
    if !db.exists() {
        return Err(format!("{}: no database to back up", db.display()));
    }
    if let Ok(mut entries) = fs::read_dir(dest) {
        if entries.next().is_some() {
            return Err(format!(
                "{}: not empty; a backup goes into a new directory",
                dest.display()
            ));
        }
    }
    let data_dir =
        fs::canonicalize(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    private_dir(dest)?;
    let dest_db = dest.join(DB_NAME);
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("{}: {e}", db.display()))?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&dest_db)
        .map_err(|e| format!("{}: {e}", dest_db.display()))?;
    let mut dst = Connection::open(&dest_db).map_err(|e| format!("{}: {e}", dest_db.display()))?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| e.to_string())?;
        // All pages in one step: one read transaction, so one consistent snapshot.
        // Busy or locked: try again every 50 ms, for about a minute.
        let mut attempts = 0;
        loop {
            match b.step(-1).map_err(|e| format!("backup: {e}"))? {
                rusqlite::backup::StepResult::Done => break,
                _ if attempts >= 1200 => {
                    return Err("backup: the database stayed locked for 60 s".into())
                }
                _ => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
    drop(src);
    // A self-contained file: no -wal to go with it.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| format!("{}: {e}", dest_db.display()))?;
    // Rows from before paths were relative would tie the copy to this directory.
    super::startup::relativize_paths(&dst, &data_dir).map_err(|e| e.to_string())?;
    let calls: i64 = dst
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let version: i64 = dst
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let rows: Vec<(String, String)> = {
        let mut stmt = dst
            .prepare("SELECT path, sha256 FROM recordings ORDER BY id")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| e.to_string())?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| e.to_string())?;
        rows
    };
    drop(dst);
    let mut manifest: BTreeMap<String, String> = BTreeMap::new();
    let (db_size, db_sha) = hash_file(&dest_db)?;
    manifest.insert(DB_NAME.into(), db_sha);
    let mut bytes = db_size;
    let mut problems = Vec::new();
    let mut dirs = HashSet::new();
    for (stored, sha) in &rows {
        let Some(rel) = safe_relative(stored) else {
            problems.push(format!(
                "{stored}: not under the data directory; not backed up"
            ));
            continue;
        };
        let from = data_dir.join(&rel);
        let to = dest.join(&rel);
        if let Some(parent) = to.parent() {
            private_dir(parent)?;
            dirs.insert(parent.to_path_buf());
        }
        match copy_hashed(&from, &to) {
            Ok((size, got)) if got == *sha => {
                bytes += size;
                manifest.insert(rel.to_string_lossy().into_owned(), got);
            }
            Ok(_) => problems.push(format!(
                "{}: differs from the SHA-256 its row recorded (damaged?)",
                from.display()
            )),
            Err(e) => problems.push(format!("{e} (purged while the backup ran? run it again)")),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    for d in dirs {
        sync_dir(&d)?;
    }
    let info = serde_json::json!({
        "format": 1,
        "created_at": super::rfc3339(now),
        "schema_version": version,
        "calls": calls,
        "recordings": rows.len(),
    });
    let info_path = dest.join(INFO);
    write_new(
        &info_path,
        serde_json::to_string_pretty(&info)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    manifest.insert(INFO.into(), hash_file(&info_path)?.1);
    let mut text = String::new();
    for (path, sha) in &manifest {
        text.push_str(&format!("{sha}  {path}\n"));
    }
    let tmp = dest.join(format!("{MANIFEST}.tmp"));
    write_new(&tmp, text.as_bytes())?;
    fs::rename(&tmp, dest.join(MANIFEST)).map_err(|e| format!("{}: {e}", dest.display()))?;
    sync_dir(dest)?;
    Ok(BackupReport {
        calls,
        recordings: rows.len(),
        files: manifest.len(),
        bytes,
    })
}

fn write_new(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[derive(Debug, serde::Serialize)]
pub struct VerifyReport {
    pub files: usize,
    pub recordings: usize,
    pub calls: i64,
}

/// Checks a backup: every file of the manifest is there with its SHA-256, nothing
/// else is, the database passes SQLite's integrity check, and every recording its
/// rows name is in the manifest with the hash the row recorded. Returns every
/// problem found.
pub fn verify(dest: &Path) -> Result<VerifyReport, Vec<String>> {
    let mut problems = Vec::new();
    let manifest_path = dest.join(MANIFEST);
    let too_big = fs::metadata(&manifest_path).is_ok_and(|m| m.len() > MAX_MANIFEST_BYTES);
    if too_big {
        return Err(vec![format!(
            "{}: too large for a manifest",
            manifest_path.display()
        )]);
    }
    let text = match fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![format!(
                "{}: {e} (an incomplete backup has no manifest)",
                manifest_path.display()
            )])
        }
    };
    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let parsed = line
            .split_once("  ")
            .filter(|(h, _)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|(h, p)| safe_relative(p).map(|_| (h, p)));
        match parsed {
            Some((h, p)) => {
                listed.insert(p.to_string(), h.to_ascii_lowercase());
            }
            None => problems.push(format!("{MANIFEST} line {}: not \"SHA256  PATH\"", i + 1)),
        }
    }
    for (path, want) in &listed {
        match hash_file(&dest.join(path)) {
            Ok((_, got)) if got == *want => {}
            Ok(_) => problems.push(format!("{path}: SHA-256 does not match the manifest")),
            Err(e) => problems.push(format!("{e} (listed in the manifest)")),
        }
    }
    let mut pending = vec![dest.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                pending.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(dest)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            if rel != MANIFEST && !listed.contains_key(&rel) {
                problems.push(format!("{rel}: not in the manifest"));
            }
        }
    }
    let mut report = VerifyReport {
        files: listed.len(),
        recordings: 0,
        calls: 0,
    };
    let db = dest.join(DB_NAME);
    if !listed.contains_key(DB_NAME) {
        problems.push(format!("{DB_NAME}: missing from the manifest"));
    } else {
        match check_db(&db, &listed) {
            Ok((calls, recordings, db_problems)) => {
                report.calls = calls;
                report.recordings = recordings;
                problems.extend(db_problems);
            }
            Err(e) => problems.push(format!("{DB_NAME}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems)
    }
}

/// Opens the backup's database without changing a byte of it (immutable, read-only).
fn check_db(
    db: &Path,
    listed: &BTreeMap<String, String>,
) -> rusqlite::Result<(i64, usize, Vec<String>)> {
    let uri = format!("file:{}?immutable=1", db.display());
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )?;
    let mut problems = Vec::new();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        problems.push(format!("{DB_NAME}: integrity check: {check}"));
    }
    let calls: i64 = conn.query_row("SELECT count(*) FROM calls", [], |r| r.get(0))?;
    let mut stmt = conn.prepare("SELECT path, sha256 FROM recordings ORDER BY id")?;
    let rows: Vec<(String, String)> = stmt
        .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (path, sha) in &rows {
        match listed.get(path) {
            Some(h) if h == sha => {}
            Some(_) => problems.push(format!(
                "{path}: the manifest and the database disagree on its SHA-256"
            )),
            None => problems.push(format!(
                "{path}: named by the database, missing from the backup"
            )),
        }
    }
    Ok((calls, rows.len(), problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir_with_a_recording() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&dir.path().join("hotline.db")).unwrap();
        conn.execute(
            "INSERT INTO calls (sip_call_id, direction, to_uri, transport, started_at) VALUES ('x', 'inbound', 't', 'UDP', 'now')",
            [],
        )
        .unwrap();
        let rel = "recordings/2024/01/02/a-voicemail.wav.age";
        fs::create_dir_all(dir.path().join("recordings/2024/01/02")).unwrap();
        fs::write(dir.path().join(rel), b"sealed audio").unwrap();
        let sha = hex::encode(Sha256::digest(b"sealed audio"));
        conn.execute(
            "INSERT INTO recordings (call_id, kind, path, duration_ms, size_bytes, sha256, created_at) VALUES (1, 'voicemail', ?1, 1, 12, ?2, 'now')",
            params![rel, sha],
        )
        .unwrap();
        let db = dir.path().join("hotline.db");
        (dir, db)
    }

    #[test]
    fn a_backup_verifies_and_catches_a_flipped_byte_and_strays() {
        let (dir, db) = data_dir_with_a_recording();
        // A recording in progress has no row: not part of the backup.
        fs::write(
            dir.path().join("recordings/2024/01/02/b-voicemail.wav"),
            b"RIFF",
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("b1");
        let r = backup(&db, dir.path(), &dest, std::time::SystemTime::now()).unwrap();
        assert_eq!((r.calls, r.recordings, r.files), (1, 1, 3));
        assert!(!dest.join("recordings/2024/01/02/b-voicemail.wav").exists());
        assert!(!dest.join("hotline.db-wal").exists());
        let ok = verify(&dest).unwrap();
        assert_eq!((ok.calls, ok.recordings, ok.files), (1, 1, 3));
        // sha256sum reads the manifest too.
        let status = std::process::Command::new("sha256sum")
            .args(["-c", "--quiet", MANIFEST])
            .current_dir(&dest)
            .status()
            .unwrap();
        assert!(status.success());
        // Never into a non-empty directory.
        assert!(backup(&db, dir.path(), &dest, std::time::SystemTime::now())
            .unwrap_err()
            .contains("not empty"));
        // One flipped byte in the recording.
        let rec = dest.join("recordings/2024/01/02/a-voicemail.wav.age");
        let mut bytes = fs::read(&rec).unwrap();
        bytes[3] ^= 0x01;
        fs::write(&rec, &bytes).unwrap();
        let problems = verify(&dest).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("a-voicemail.wav.age: SHA-256 does not match"),
            "{problems:?}"
        );
        bytes[3] ^= 0x01;
        fs::write(&rec, &bytes).unwrap();
        // A stray file and a missing one.
        fs::write(dest.join("stray"), b"x").unwrap();
        fs::remove_file(dest.join(INFO)).unwrap();
        let problems = verify(&dest).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("stray: not in the manifest")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("backup.json") && p.contains("listed in the manifest")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_recording_that_changed_on_disk_fails_the_backup() {
        let (dir, db) = data_dir_with_a_recording();
        fs::write(
            dir.path().join("recordings/2024/01/02/a-voicemail.wav.age"),
            b"tampered",
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = backup(
            &db,
            dir.path(),
            &out.path().join("b"),
            std::time::SystemTime::now(),
        )
        .unwrap_err();
        assert!(
            err.contains("differs from the SHA-256 its row recorded"),
            "{err}"
        );
        assert!(
            !out.path().join("b").join(MANIFEST).exists(),
            "no manifest: incomplete"
        );
        assert!(verify(&out.path().join("b")).is_err());
    }

    #[test]
    fn manifest_paths_cannot_escape_the_backup() {
        let out = tempfile::tempdir().unwrap();
        fs::write(
            out.path().join(MANIFEST),
            format!("{}  ../../etc/passwd\n", "0".repeat(64)),
        )
        .unwrap();
        let problems = verify(out.path()).unwrap_err();
        assert!(problems[0].contains("not \"SHA256  PATH\""), "{problems:?}");
    }
}
