//! Retention: deleting recordings and calls older than `retention.recordings_days` and
//! `retention.calls_days`, keeping per-day counts of the calls deleted.
//!
//! Owns the purge plan (what would go, `hotline purge --dry-run`) and its execution.
//! Time is an argument, so tests run it with simulated time. Rows go first, in one
//! transaction, then files: a crash in between leaves only files that no row names,
//! which the next purge removes. Must not log anything about a call but counts.

use super::rfc3339;
use rusqlite::{params, Connection};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What is kept, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// None: keep forever.
    pub recordings: Option<Duration>,
    pub calls: Option<Duration>,
    /// No recording is in progress for longer than this: files younger than it may be
    /// recordings being written and are never taken for orphans.
    pub max_call: Duration,
}

pub fn days(d: f64) -> Option<Duration> {
    (d > 0.0).then(|| Duration::from_secs_f64(d * 86_400.0))
}

impl Policy {
    pub fn from_config(cfg: &crate::config::Config) -> Policy {
        Policy {
            recordings: days(cfg.retention.recordings_days),
            calls: days(cfg.retention.calls_days),
            max_call: Duration::from_secs(cfg.limits.max_call_duration_s),
        }
    }

    pub fn is_active(&self) -> bool {
        self.recordings.is_some() || self.calls.is_some()
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PlannedRecording {
    pub id: i64,
    pub call_id: i64,
    pub path: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PlannedCall {
    pub id: i64,
    pub started_at: String,
}

/// What a purge at `now` deletes.
#[derive(Debug, Serialize, Default, PartialEq)]
pub struct Plan {
    pub recordings: Vec<PlannedRecording>,
    pub calls: Vec<PlannedCall>,
    /// Files under `recordings/` that no row names (left by a crash).
    pub orphan_files: Vec<String>,
}

/// What a purge did: counts only.
#[derive(Debug, Serialize, Default, PartialEq, Eq)]
pub struct Purged {
    pub recordings: usize,
    pub calls: usize,
    pub files: usize,
    pub orphan_files: usize,
    pub failed_files: usize,
}

fn cutoff(now: SystemTime, keep: Duration) -> String {
    rfc3339(now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// Lists what a purge at `now` would delete.
pub fn plan(
    conn: &Connection,
    data_dir: &Path,
    policy: &Policy,
    now: SystemTime,
) -> rusqlite::Result<Plan> {
    let mut plan = Plan::default();
    if !policy.is_active() {
        return Ok(plan);
    }
    if let Some(keep) = policy.calls {
        let mut stmt = conn.prepare(
            "SELECT id, started_at FROM calls
             WHERE ended_at IS NOT NULL AND julianday(started_at) < julianday(?1) ORDER BY id",
        )?;
        plan.calls = stmt
            .query_map(params![cutoff(now, keep)], |r| {
                Ok(PlannedCall {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    // A recording goes when it is old, or when its call goes.
    let rec_cutoff = policy.recordings.map(|k| cutoff(now, k));
    let call_cutoff = policy.calls.map(|k| cutoff(now, k));
    let mut stmt = conn.prepare(
        "SELECT r.id, r.call_id, r.path, r.created_at FROM recordings r JOIN calls c ON c.id = r.call_id
         WHERE (?1 IS NOT NULL AND julianday(r.created_at) < julianday(?1))
            OR (?2 IS NOT NULL AND c.ended_at IS NOT NULL AND julianday(c.started_at) < julianday(?2))
         ORDER BY r.id",
    )?;
    plan.recordings = stmt
        .query_map(params![rec_cutoff, call_cutoff], |r| {
            Ok(PlannedRecording {
                id: r.get(0)?,
                call_id: r.get(1)?,
                path: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    plan.orphan_files = orphans(conn, data_dir, policy, now)?
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    Ok(plan)
}

/// Files under `recordings/` that no row names, old enough to go: older than the
/// retention of recordings (or of calls) and than the longest call.
fn orphans(
    conn: &Connection,
    data_dir: &Path,
    policy: &Policy,
    now: SystemTime,
) -> rusqlite::Result<Vec<PathBuf>> {
    let Some(keep) = policy.recordings.or(policy.calls) else {
        return Ok(Vec::new());
    };
    let keep = keep.max(policy.max_call + Duration::from_secs(60));
    let named: HashSet<PathBuf> = {
        let mut stmt = conn.prepare("SELECT path FROM recordings")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(|p| resolve(data_dir, &p)).collect()
    };
    let mut out = Vec::new();
    for file in files_below(&data_dir.join("recordings")) {
        if named.contains(&file) {
            continue;
        }
        let old = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .map(|m| now.duration_since(m).unwrap_or_default() >= keep)
            .unwrap_or(false);
        if old {
            out.push(file);
        }
    }
    out.sort();
    Ok(out)
}

fn resolve(data_dir: &Path, stored: &str) -> PathBuf {
    let p = Path::new(stored);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        data_dir.join(p)
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => pending.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Deletes what `plan` lists: rows first (one transaction, per-day counts of the
/// calls updated), then files, then day directories left empty.
pub fn execute(conn: &mut Connection, data_dir: &Path, plan: &Plan) -> rusqlite::Result<Purged> {
    let mut purged = Purged::default();
    if plan.recordings.is_empty() && plan.calls.is_empty() && plan.orphan_files.is_empty() {
        return Ok(purged);
    }
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS purge_ids (id INTEGER PRIMARY KEY); DELETE FROM purge_ids;")?;
    {
        let mut ins = tx.prepare("INSERT OR IGNORE INTO purge_ids (id) VALUES (?1)")?;
        for r in &plan.recordings {
            ins.execute(params![r.id])?;
        }
    }
    tx.execute(
        "INSERT INTO daily_counts (day, recordings)
         SELECT substr(created_at, 1, 10), count(*) FROM recordings
         WHERE id IN (SELECT id FROM purge_ids) GROUP BY 1
         ON CONFLICT(day) DO UPDATE SET recordings = recordings + excluded.recordings",
        [],
    )?;
    purged.recordings = tx.execute(
        "DELETE FROM recordings WHERE id IN (SELECT id FROM purge_ids)",
        [],
    )?;
    tx.execute("DELETE FROM purge_ids", [])?;
    {
        let mut ins = tx.prepare("INSERT OR IGNORE INTO purge_ids (id) VALUES (?1)")?;
        for c in &plan.calls {
            ins.execute(params![c.id])?;
        }
    }
    tx.execute(
        "INSERT INTO daily_counts (day, calls, answered, queued, queue_answered, abandoned,
                                   to_voicemail, talk_ms, waited_ms)
         SELECT substr(started_at, 1, 10), count(*), count(answered_at), count(queue_outcome),
                coalesce(sum(queue_outcome = 'answered'), 0),
                coalesce(sum(queue_outcome = 'abandoned'), 0),
                coalesce(sum(queue_outcome LIKE 'voicemail:%'), 0),
                coalesce(sum(talk_ms), 0), coalesce(sum(queue_waited_ms), 0)
         FROM calls WHERE id IN (SELECT id FROM purge_ids) GROUP BY 1
         ON CONFLICT(day) DO UPDATE SET
            calls = calls + excluded.calls, answered = answered + excluded.answered,
            queued = queued + excluded.queued,
            queue_answered = queue_answered + excluded.queue_answered,
            abandoned = abandoned + excluded.abandoned,
            to_voicemail = to_voicemail + excluded.to_voicemail,
            talk_ms = talk_ms + excluded.talk_ms, waited_ms = waited_ms + excluded.waited_ms",
        [],
    )?;
    for table in [
        "answers",
        "digits",
        "ivr_path",
        "call_sealed",
        "call_notes",
        "call_handled",
        "queue_events",
        "recordings",
    ] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE call_id IN (SELECT id FROM purge_ids)"),
            [],
        )?;
    }
    purged.calls = tx.execute(
        "DELETE FROM calls WHERE id IN (SELECT id FROM purge_ids)",
        [],
    )?;
    tx.execute("DELETE FROM purge_ids", [])?;
    tx.commit()?;
    let mut dirs = HashSet::new();
    let files = plan
        .recordings
        .iter()
        .map(|r| (resolve(data_dir, &r.path), false))
        .chain(plan.orphan_files.iter().map(|p| (PathBuf::from(p), true)));
    for (path, orphan) in files {
        match remove_recording_file(&path) {
            Ok(true) => {
                if orphan {
                    purged.orphan_files += 1;
                } else {
                    purged.files += 1;
                }
            }
            Ok(false) => {}
            Err(_) => purged.failed_files += 1,
        }
        if let Some(d) = path.parent() {
            dirs.insert(d.to_path_buf());
        }
    }
    remove_empty_dirs(&data_dir.join("recordings"), dirs);
    // Best effort: while the server writes, the WAL cannot always be truncated; its
    // frames are overwritten as it is reused.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(purged)
}

/// Removes a recording. A plaintext WAV is overwritten with zeros first, as when it
/// is sealed; a sealed file is just unlinked. A file already gone is not an error.
fn remove_recording_file(path: &Path) -> std::io::Result<bool> {
    use std::io::Write;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let is_plain = !path.to_string_lossy().ends_with(super::seal::SEALED_SUFFIX);
    if is_plain && meta.is_file() {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = meta.len();
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_data()?;
    }
    std::fs::remove_file(path)?;
    Ok(true)
}

/// Day directories (`recordings/YYYY/MM/DD`) left empty go too: their names are dates
/// of calls.
fn remove_empty_dirs(root: &Path, dirs: HashSet<PathBuf>) {
    for d in dirs {
        let mut cur = Some(d.as_path());
        while let Some(dir) = cur {
            if dir == root || !dir.starts_with(root) || std::fs::remove_dir(dir).is_err() {
                break;
            }
            cur = dir.parent();
        }
    }
}

/// Plans and, unless `dry_run`, executes a purge at `now`.
pub fn purge(
    conn: &mut Connection,
    data_dir: &Path,
    policy: &Policy,
    now: SystemTime,
    dry_run: bool,
) -> rusqlite::Result<(Plan, Purged)> {
    let p = plan(conn, data_dir, policy, now)?;
    let done = if dry_run {
        Purged::default()
    } else {
        execute(conn, data_dir, &p)?
    };
    Ok((p, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days_after: f64) -> SystemTime {
        // 2023-11-15T01:00:00Z: the first three calls fall on one UTC day.
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_700_010_000)
            + Duration::from_secs_f64(days_after * 86_400.0)
    }

    /// A call that started at `day`, with a sealed blob, an answer, a queue event and a
    /// recording whose file exists.
    fn call(conn: &Connection, dir: &Path, day: f64, ended: bool, outcome: Option<&str>) -> i64 {
        let t = rfc3339(at(day));
        conn.execute(
            "INSERT INTO calls (sip_call_id, direction, to_uri, transport, started_at, answered_at, ended_at, queue_outcome, talk_ms, queue_waited_ms)
             VALUES ('', 'inbound', 't', 'UDP', ?1, ?1, ?2, ?3, 1000, 500)",
            params![t, ended.then(|| t.clone()), outcome],
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO call_sealed (call_id, seq, blob) VALUES (?1, 1, x'00')",
            params![id],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO answers (call_id, node, key, digits, answered_at) VALUES (?1, 'unit', 'unit', '1', ?2)",
            params![id, t],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO queue_events (call_id, kind, at) VALUES (?1, 'joined', ?2)",
            params![id, t],
        )
        .unwrap();
        // What the console adds: a note, a handled mark and the audit entry of both.
        conn.execute(
            "INSERT INTO call_notes (call_id, author, body, created_at, body_sealed)
             VALUES (?1, 'anna', '', ?2, x'00')",
            params![id, t],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO call_handled (call_id, handled_by, handled_at) VALUES (?1, 'anna', ?2)",
            params![id, t],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO audit_log (at, actor, action, call_id, detail) VALUES (?1, 'anna', 'note', ?2, 'note 1')",
            params![t, id],
        )
        .unwrap();
        let rel = format!("recordings/day{id}/{id}-voicemail.wav.age");
        std::fs::create_dir_all(dir.join(format!("recordings/day{id}"))).unwrap();
        std::fs::write(dir.join(&rel), b"sealed").unwrap();
        conn.execute(
            "INSERT INTO recordings (call_id, kind, path, duration_ms, size_bytes, sha256, created_at)
             VALUES (?1, 'voicemail', ?2, 1, 6, 'x', ?3)",
            params![id, rel, t],
        )
        .unwrap();
        id
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn recordings_and_calls_go_on_schedule_and_counts_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::open(&dir.path().join("hotline.db")).unwrap();
        let old = call(&conn, dir.path(), 0.0, true, Some("answered"));
        let old2 = call(&conn, dir.path(), 0.1, true, Some("voicemail:max_wait"));
        let middle = call(&conn, dir.path(), 20.0, true, Some("abandoned"));
        let recent = call(&conn, dir.path(), 29.5, true, None);
        let live = call(&conn, dir.path(), 0.2, false, None);
        let policy = Policy {
            recordings: Some(7 * DAY),
            calls: Some(30 * DAY),
            max_call: Duration::from_secs(3600),
        };
        // Day 31: the calls of days 0 and 0.1 go with their recordings; the recording
        // of day 20 goes, its call stays; the call still in progress stays whole.
        let now = at(31.0);
        let (p, done) = purge(&mut conn, dir.path(), &policy, now, true).unwrap();
        assert_eq!(done, Purged::default(), "dry run deletes nothing");
        let ids: Vec<i64> = p.calls.iter().map(|c| c.id).collect();
        assert_eq!(ids, [old, old2]);
        let recs: Vec<i64> = p.recordings.iter().map(|r| r.call_id).collect();
        assert_eq!(recs, [old, old2, middle, live]);
        assert_eq!(count(&conn, "SELECT count(*) FROM calls"), 5);
        let (_, done) = purge(&mut conn, dir.path(), &policy, now, false).unwrap();
        assert_eq!(done.calls, 2);
        assert_eq!(done.recordings, 4);
        assert_eq!(done.files, 4);
        let left: Vec<i64> = conn
            .prepare("SELECT id FROM calls ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, [middle, recent, live]);
        for table in [
            "answers",
            "call_sealed",
            "queue_events",
            "call_notes",
            "call_handled",
        ] {
            let n = count(
                &conn,
                &format!("SELECT count(*) FROM {table} WHERE call_id IN ({old}, {old2})"),
            );
            assert_eq!(n, 0, "{table}");
        }
        assert_eq!(count(&conn, "SELECT count(*) FROM call_notes"), 3);
        // The audit log is append-only: its entries stay, naming a purged call by its
        // database id only.
        assert_eq!(count(&conn, "SELECT count(*) FROM audit_log"), 5);
        assert_eq!(count(&conn, "SELECT count(*) FROM recordings"), 1);
        assert!(dir
            .path()
            .join(format!("recordings/day{recent}/{recent}-voicemail.wav.age"))
            .exists());
        assert!(
            !dir.path().join(format!("recordings/day{old}")).exists(),
            "empty day directory removed"
        );
        // One day, two calls: the counts outlive the rows.
        let day = rfc3339(at(0.0))[..10].to_string();
        let counts: (i64, i64, i64, i64, i64, i64) = conn
            .query_row(
                "SELECT calls, answered, queue_answered, to_voicemail, talk_ms, recordings FROM daily_counts WHERE day = ?1",
                params![day],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .unwrap();
        assert_eq!(counts, (2, 2, 1, 1, 2000, 3));
        // Nothing more is due the same day.
        let (p, _) = purge(&mut conn, dir.path(), &policy, now, false).unwrap();
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn orphans_go_only_when_older_than_a_call_can_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::open(&dir.path().join("hotline.db")).unwrap();
        let rec = dir.path().join("recordings/2024/01/02");
        std::fs::create_dir_all(&rec).unwrap();
        let orphan = rec.join("a-voicemail.wav.age");
        let in_progress = rec.join("b-voicemail.wav");
        std::fs::write(&orphan, b"x").unwrap();
        std::fs::write(&in_progress, b"RIFF").unwrap();
        let now = SystemTime::now();
        std::fs::File::options()
            .write(true)
            .open(&orphan)
            .unwrap()
            .set_modified(now - 2 * DAY)
            .unwrap();
        let policy = Policy {
            recordings: Some(Duration::from_secs(8)),
            calls: None,
            max_call: Duration::from_secs(3600),
        };
        let (p, done) = purge(&mut conn, dir.path(), &policy, now, false).unwrap();
        assert_eq!(p.orphan_files, [orphan.to_string_lossy().into_owned()]);
        assert_eq!(done.orphan_files, 1);
        assert!(!orphan.exists());
        assert!(
            in_progress.exists(),
            "a file written within the longest call stays"
        );
        // Retention off: nothing is planned at all.
        let off = Policy {
            recordings: None,
            calls: None,
            max_call: Duration::from_secs(3600),
        };
        assert_eq!(
            plan(&conn, dir.path(), &off, now + 400 * DAY).unwrap(),
            Plan::default()
        );
    }
}
