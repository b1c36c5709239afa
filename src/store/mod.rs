//! SQLite storage: schema and migrations, the writer thread, and the queries behind
//! `hotline calls`.
//!
//! Owns the database file (WAL mode) and every SQL statement. The server hands it
//! call events over a channel; a dedicated thread writes them in batches, one
//! transaction per batch, so a burst of call setups costs one fsync, not hundreds.
//! Must not know about SIP beyond the event types it stores.

use crate::sip::{CallEvent, CallId, Direction};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::SystemTime;

/// Schema versions, applied in order; `PRAGMA user_version` records the last applied.
const MIGRATIONS: &[&str] = &[
    // 1: calls
    "CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        sip_call_id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
        from_id TEXT,
        to_uri TEXT NOT NULL,
        remote_addr TEXT,
        transport TEXT NOT NULL,
        codec TEXT,
        started_at TEXT NOT NULL,
        answered_at TEXT,
        ended_at TEXT,
        end_reason TEXT
    );
    CREATE INDEX calls_started ON calls(started_at);
    CREATE INDEX calls_sip_call_id ON calls(sip_call_id);",
];

pub fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    // Created private before SQLite opens it; its -wal and -shm files copy the mode.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path);
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = version.max(0) as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Policy for what is stored about the remote address (it locates the caller as well
/// as a number does).
pub type AddrFilter = Box<dyn Fn(&str) -> Option<String> + Send>;

/// Marks calls left open by a crash or kill as ended, so no row claims to be live.
pub fn close_interrupted(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE calls SET ended_at = ?1, end_reason = 'interrupted' WHERE ended_at IS NULL",
        params![rfc3339(SystemTime::now())],
    )
}

pub enum StoreCommand {
    Event(CallEvent),
    /// Reply once everything sent before has been committed.
    Flush(mpsc::Sender<()>),
}

/// Starts the writer thread. Events are batched: one transaction per wake-up.
pub fn spawn_writer(
    path: PathBuf,
    addr_filter: AddrFilter,
) -> rusqlite::Result<mpsc::Sender<StoreCommand>> {
    let conn = open(&path)?;
    let closed = close_interrupted(&conn)?;
    if closed > 0 {
        tracing::warn!(
            closed,
            "calls left open by an earlier stop were marked interrupted"
        );
    }
    let (tx, rx) = mpsc::channel::<StoreCommand>();
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || writer(conn, rx, addr_filter))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    Ok(tx)
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<StoreCommand>, addr_filter: AddrFilter) {
    let mut rows: HashMap<CallId, i64> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 2000 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for cmd in batch {
                match cmd {
                    StoreCommand::Flush(reply) => flushes.push(reply),
                    StoreCommand::Event(ev) => apply_event(&tx, &mut rows, &addr_filter, ev)?,
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!("database write failed: {e}");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn apply_event(
    tx: &rusqlite::Transaction,
    rows: &mut HashMap<CallId, i64>,
    addr_filter: &AddrFilter,
    ev: CallEvent,
) -> rusqlite::Result<()> {
    match ev {
        CallEvent::Started {
            call,
            sip_call_id,
            from,
            to,
            remote,
            transport,
            direction,
            at,
        } => {
            let dir = match direction {
                Direction::Inbound => "inbound",
                Direction::Outbound => "outbound",
            };
            tx.prepare_cached(
                "INSERT INTO calls (sip_call_id, direction, from_id, to_uri, remote_addr, transport, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                sip_call_id,
                dir,
                from,
                to,
                addr_filter(&remote.to_string()),
                transport,
                rfc3339(at)
            ])?;
            rows.insert(call, tx.last_insert_rowid());
        }
        CallEvent::Answered { call, codec, at } => {
            if let Some(id) = rows.get(&call) {
                tx.prepare_cached("UPDATE calls SET answered_at = ?1, codec = ?2 WHERE id = ?3")?
                    .execute(params![rfc3339(at), codec.sdp_name(), id])?;
            }
        }
        CallEvent::Ended { call, reason, at } => {
            if let Some(id) = rows.remove(&call) {
                tx.prepare_cached("UPDATE calls SET ended_at = ?1, end_reason = ?2 WHERE id = ?3")?
                    .execute(params![rfc3339(at), reason.as_str(), id])?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct QueueInfo {
    pub waited_ms: i64,
    pub operator: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RecordingInfo {
    pub kind: String,
    pub path: String,
    pub duration_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct CallRow {
    pub id: i64,
    pub sip_call_id: String,
    pub direction: String,
    pub from: Option<String>,
    pub to: String,
    pub remote_addr: Option<String>,
    pub transport: String,
    pub codec: Option<String>,
    pub started_at: String,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub answers: serde_json::Map<String, serde_json::Value>,
    pub recordings: Vec<RecordingInfo>,
    pub queue: Option<QueueInfo>,
}

/// Newest calls first.
pub fn list_calls(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<CallRow>> {
    let mut stmt = conn.prepare(
        "SELECT id, sip_call_id, direction, from_id, to_uri, remote_addr, transport, codec,
                started_at, answered_at, ended_at, end_reason
         FROM calls ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(CallRow {
            id: r.get(0)?,
            sip_call_id: r.get(1)?,
            direction: r.get(2)?,
            from: r.get(3)?,
            to: r.get(4)?,
            remote_addr: r.get(5)?,
            transport: r.get(6)?,
            codec: r.get(7)?,
            started_at: r.get(8)?,
            answered_at: r.get(9)?,
            ended_at: r.get(10)?,
            end_reason: r.get(11)?,
            answers: serde_json::Map::new(),
            recordings: Vec::new(),
            queue: None,
        })
    })?;
    rows.collect()
}

/// Opens an existing database read-only for the CLI (no migration, no creation).
pub fn open_existing(path: &Path) -> rusqlite::Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = version.max(0) as usize;
    if version < MIGRATIONS.len() {
        migrate(&conn)?;
    }
    Ok(Some(conn))
}

pub fn count_calls(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .optional()
        .map(|v| v.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::Codec;
    use crate::sip::EndReason;

    #[test]
    fn writer_batches_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hotline.db");
        let tx = spawn_writer(path.clone(), Box::new(|a| Some(a.to_string()))).unwrap();
        for call in 1..=3u64 {
            tx.send(StoreCommand::Event(CallEvent::Started {
                call,
                sip_call_id: format!("c{call}"),
                from: None,
                to: "sip:hotline@127.0.0.1".into(),
                remote: "127.0.0.1:5070".parse().unwrap(),
                transport: "UDP",
                direction: Direction::Inbound,
                at: SystemTime::now(),
            }))
            .unwrap();
            tx.send(StoreCommand::Event(CallEvent::Answered {
                call,
                codec: Codec::Pcma,
                at: SystemTime::now(),
            }))
            .unwrap();
            tx.send(StoreCommand::Event(CallEvent::Ended {
                call,
                reason: EndReason::CallerBye,
                at: SystemTime::now(),
            }))
            .unwrap();
        }
        let (ftx, frx) = mpsc::channel();
        tx.send(StoreCommand::Flush(ftx)).unwrap();
        frx.recv().unwrap();
        let conn = open_existing(&path).unwrap().unwrap();
        let calls = list_calls(&conn, 10).unwrap();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].sip_call_id, "c3");
        assert_eq!(calls[0].end_reason.as_deref(), Some("caller-bye"));
        assert_eq!(calls[0].codec.as_deref(), Some("PCMA"));
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn interrupted_calls_are_closed_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("h.db")).unwrap();
        conn.execute(
            "INSERT INTO calls (sip_call_id, direction, to_uri, transport, started_at) VALUES ('x', 'inbound', 't', 'UDP', 'now')",
            [],
        )
        .unwrap();
        assert_eq!(close_interrupted(&conn).unwrap(), 1);
        let reason: String = conn
            .query_row("SELECT end_reason FROM calls", [], |r| r.get(0))
            .unwrap();
        assert_eq!(reason, "interrupted");
    }
}
