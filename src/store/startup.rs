//! Start-up of the storage: repair what a crash left, seal what is still in clear,
//! then start the writer.
//!
//! Runs before anything listens, so no call is in progress: every plaintext WAV under
//! `recordings/` is a leftover (a recording cut by a crash, one whose seal did not
//! finish, or one from before `storage.recipients` was set) and is repaired, sealed
//! and removed. Rows naming it are pointed at the sealed file.

use super::{details, seal, AddrFilter, StoreCommand, WriterOptions};
use crate::config::{CallerIdPolicy, Config};
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::mpsc;

/// Prepares the data directory and starts the store writer (sealing when
/// `storage.recipients` is set).
pub fn start(
    cfg: &Config,
    addr_filter: AddrFilter,
    events: Box<dyn Fn(super::StoreEvent) + Send>,
    observer: super::BatchObserver,
    now: std::time::SystemTime,
) -> anyhow::Result<mpsc::Sender<StoreCommand>> {
    let db = cfg.database_path();
    let sealer = seal::Sealer::from_config(&cfg.storage.recipients).map_err(anyhow::Error::msg)?;
    {
        let mut conn = super::open(&db).map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?;
        let moved = relativize_paths(&conn, &cfg.storage.data_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?;
        if moved > 0 {
            tracing::info!(
                rows = moved,
                "recording paths made relative to the data directory"
            );
        }
        match &sealer {
            Some(sealer) => seal_leftovers(&mut conn, sealer, cfg)
                .map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?,
            None => repair_leftovers(cfg),
        }
    }
    let options = WriterOptions {
        observer: Some(observer),
        sealer,
        seal_caller: cfg.privacy.caller_id == CallerIdPolicy::Keep,
    };
    super::spawn_writer_with(db.clone(), addr_filter, options, events, now)
        .map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))
}

/// Storage in clear: recordings cut short by a crash or power loss get their WAV
/// header repaired.
fn repair_leftovers(cfg: &Config) {
    use crate::wav::{repair_dir_recursive, RepairOutcome};
    let Ok(reports) = repair_dir_recursive(cfg.recordings_dir()) else {
        return;
    };
    for r in reports {
        match &r.result {
            Ok(RepairOutcome::AlreadyValid) => {}
            Ok(outcome) => {
                tracing::warn!(path = %r.path.display(), ?outcome, "recording repaired")
            }
            Err(e) => {
                tracing::error!(path = %r.path.display(), "recording cannot be repaired: {e}")
            }
        }
    }
}

/// Sealed storage: seals every plaintext recording and every clear answer left in the
/// database, then truncates the WAL so that no earlier clear page survives in it.
fn seal_leftovers(
    conn: &mut Connection,
    sealer: &seal::Sealer,
    cfg: &Config,
) -> rusqlite::Result<()> {
    let report = seal::sweep_dir(sealer, &cfg.recordings_dir());
    let data_dir = std::fs::canonicalize(&cfg.storage.data_dir)
        .unwrap_or_else(|_| cfg.storage.data_dir.clone());
    let mut rows = 0;
    for (plain, sealed) in &report.sealed {
        rows += point_rows_at(conn, &data_dir, plain, sealed)?;
    }
    if !report.sealed.is_empty() || report.removed_parts > 0 || !report.failed.is_empty() {
        tracing::warn!(
            sealed = report.sealed.len(),
            rows_updated = rows,
            resealed = report.resealed,
            half_written_removed = report.removed_parts,
            failed = report.failed.len(),
            "plaintext recordings left from before were sealed"
        );
    }
    for (path, e) in &report.failed {
        tracing::error!(path = %path.display(), "recording left in clear: {e}");
    }
    let calls = details::seal_clear_rows(conn, sealer)?;
    if calls > 0 {
        tracing::warn!(
            calls,
            "answers stored in clear before sealing was on were sealed"
        );
    }
    let notes = super::sealed_view::seal_clear_notes(conn, sealer)?;
    if notes > 0 {
        tracing::warn!(
            notes,
            "notes stored in clear before sealing was on were sealed"
        );
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Points the rows that name `plain` (relative or absolute) at its sealed file.
fn point_rows_at(
    conn: &Connection,
    data_dir: &Path,
    plain: &Path,
    sealed: &seal::SealedFile,
) -> rusqlite::Result<usize> {
    let abs_plain = std::fs::canonicalize(plain.parent().unwrap_or(Path::new(".")))
        .map(|d| d.join(plain.file_name().unwrap_or_default()))
        .unwrap_or_else(|_| plain.to_path_buf());
    let rel = |p: &Path| {
        p.strip_prefix(data_dir)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|_| p.to_string_lossy().into_owned())
    };
    let abs_sealed = abs_plain.with_file_name(sealed.path.file_name().unwrap_or_default());
    conn.execute(
        "UPDATE recordings SET path = ?1, size_bytes = ?2, sha256 = ?3 WHERE path = ?4 OR path = ?5",
        params![
            rel(&abs_sealed),
            sealed.size_bytes as i64,
            sealed.sha256_hex,
            rel(&abs_plain),
            abs_plain.to_string_lossy()
        ],
    )
}

/// Rows written before paths were stored relative name files under the data
/// directory by absolute path; make them relative.
pub(crate) fn relativize_paths(conn: &Connection, data_dir: &Path) -> rusqlite::Result<usize> {
    let Ok(base) = std::fs::canonicalize(data_dir) else {
        return Ok(0);
    };
    let prefix = format!("{}/", base.to_string_lossy().trim_end_matches('/'));
    // SQLite's substr counts characters, not bytes (a Cyrillic directory name).
    let chars = prefix.chars().count() as i64;
    conn.execute(
        "UPDATE recordings SET path = substr(path, ?2) WHERE substr(path, 1, ?3) = ?1",
        params![prefix, chars + 1, chars],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_under_the_data_directory_become_relative() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("горячая линия");
        std::fs::create_dir(&dir).unwrap();
        let dir = &tempfile::TempDir::new_in(&dir).unwrap();
        let conn = super::super::open(&dir.path().join("hotline.db")).unwrap();
        conn.execute(
            "INSERT INTO calls (sip_call_id, direction, to_uri, transport, started_at) VALUES ('x', 'inbound', 't', 'UDP', 'now')",
            [],
        )
        .unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        for p in [
            base.join("recordings/2024/01/02/a-voicemail.wav")
                .to_string_lossy()
                .into_owned(),
            "/elsewhere/b.wav".to_string(),
            "recordings/c.wav".to_string(),
        ] {
            conn.execute(
                "INSERT INTO recordings (call_id, kind, path, duration_ms, size_bytes, sha256, created_at) VALUES (1, 'voicemail', ?1, 1, 1, 'x', 'now')",
                params![p],
            )
            .unwrap();
        }
        assert_eq!(relativize_paths(&conn, dir.path()).unwrap(), 1);
        let paths: Vec<String> = conn
            .prepare("SELECT path FROM recordings ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            paths,
            [
                "recordings/2024/01/02/a-voicemail.wav",
                "/elsewhere/b.wav",
                "recordings/c.wav"
            ]
        );
    }
}
