//! SQLite storage: the database file (WAL mode), its schema and migrations. The writer
//! thread (`writer`), the read side (`queries`), operator accounts, sealing, backup,
//! retention and start-up live in the submodules; every SQL statement is in this
//! module tree. Must not know about SIP beyond the event types it stores.

pub mod backup;
pub mod console;
pub mod details;
pub mod keyring;
mod operators;
mod queries;
pub mod retention;
pub mod seal;
pub mod sealed_view;
pub mod startup;
mod writer;

pub use queries::*;
pub use writer::*;

pub use operators::{
    all_operator_hashes, check_name, insert_operator, list_operators, operator_hashes,
    operator_username, remove_operator, set_language, set_role, update_operator_hashes,
    web_account, NewOperator, OperatorError, OperatorRow, PasswordHashes, Role, WebAccount,
    MAX_NAME_CHARS,
};

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
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
    // 2: what the caller pressed and answered, and what was recorded
    "ALTER TABLE calls ADD COLUMN reference TEXT;
    CREATE INDEX calls_reference ON calls(reference);
    CREATE TABLE answers (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        node TEXT NOT NULL,
        key TEXT NOT NULL,
        digits TEXT NOT NULL,
        answered_at TEXT NOT NULL
    );
    CREATE INDEX answers_call ON answers(call_id);
    CREATE TABLE digits (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        digit TEXT NOT NULL,
        source TEXT NOT NULL,
        media_ms INTEGER NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE INDEX digits_call ON digits(call_id);
    CREATE TABLE recordings (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        kind TEXT NOT NULL CHECK (kind IN ('voicemail', 'conversation')),
        path TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        partial INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        heard_at TEXT
    );
    CREATE INDEX recordings_call ON recordings(call_id);",
    // 3: the IVR nodes a call went through
    "CREATE TABLE ivr_path (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        node TEXT NOT NULL,
        entered_at TEXT NOT NULL
    );
    CREATE INDEX ivr_path_call ON ivr_path(call_id);",
    // 4: operator accounts, their states, and the queue
    "CREATE TABLE operators (
        id INTEGER PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        sip_username TEXT UNIQUE NOT NULL,
        realm TEXT NOT NULL,
        ha1_md5 TEXT NOT NULL,
        ha1_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        password_changed_at TEXT NOT NULL
    );
    CREATE TABLE operator_events (
        id INTEGER PRIMARY KEY,
        operator TEXT NOT NULL,
        state TEXT NOT NULL,
        source TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX operator_events_operator ON operator_events(operator, id);
    CREATE TABLE queue_events (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        kind TEXT NOT NULL,
        operator TEXT,
        position INTEGER,
        reason TEXT,
        waited_ms INTEGER,
        at TEXT NOT NULL
    );
    CREATE INDEX queue_events_call ON queue_events(call_id);
    ALTER TABLE calls ADD COLUMN queue_waited_ms INTEGER;
    ALTER TABLE calls ADD COLUMN queue_outcome TEXT;
    ALTER TABLE calls ADD COLUMN operator TEXT;
    ALTER TABLE calls ADD COLUMN talk_ms INTEGER;",
    // 5: reference codes are unique. Older 6-digit codes may repeat and keep the plain
    // index for look-up; the 7-digit self-checking codes may not.
    "CREATE UNIQUE INDEX calls_reference_unique ON calls(reference) WHERE length(reference) = 7;",
    // 6: sealed call details (storage.recipients), and per-day counts that outlive
    // purged calls (retention)
    "CREATE TABLE call_sealed (
        call_id INTEGER NOT NULL REFERENCES calls(id),
        seq INTEGER NOT NULL,
        blob BLOB NOT NULL,
        PRIMARY KEY (call_id, seq)
    );
    CREATE TABLE daily_counts (
        day TEXT PRIMARY KEY,
        calls INTEGER NOT NULL DEFAULT 0,
        answered INTEGER NOT NULL DEFAULT 0,
        queued INTEGER NOT NULL DEFAULT 0,
        queue_answered INTEGER NOT NULL DEFAULT 0,
        abandoned INTEGER NOT NULL DEFAULT 0,
        to_voicemail INTEGER NOT NULL DEFAULT 0,
        talk_ms INTEGER NOT NULL DEFAULT 0,
        waited_ms INTEGER NOT NULL DEFAULT 0,
        recordings INTEGER NOT NULL DEFAULT 0
    );",
    // 7: the console: web logins (Argon2id hash, role, language), notes and handled
    // marks on calls, and an append-only audit log of who listened to, exported or
    // annotated what
    "ALTER TABLE operators ADD COLUMN role TEXT NOT NULL DEFAULT 'operator'
        CHECK (role IN ('operator', 'supervisor'));
    ALTER TABLE operators ADD COLUMN web_hash TEXT;
    ALTER TABLE operators ADD COLUMN language TEXT;
    CREATE TABLE call_notes (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        author TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX call_notes_call ON call_notes(call_id);
    CREATE TABLE call_handled (
        call_id INTEGER PRIMARY KEY REFERENCES calls(id),
        handled_by TEXT NOT NULL,
        handled_at TEXT NOT NULL
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        call_id INTEGER,
        recording_id INTEGER,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_log_call ON audit_log(call_id);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE INDEX recordings_kind ON recordings(kind, id);
    CREATE INDEX queue_events_at ON queue_events(at);",
    // 8: with storage.recipients set, a note's body is stored sealed (age) and its
    // clear column left empty
    "ALTER TABLE call_notes ADD COLUMN body_sealed BLOB;",
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
    // Only a new file: closing any descriptor of an open database drops every POSIX
    // lock this process holds on it, and another process would then take the WAL
    // for abandoned and delete it under a running server.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk when it returns, so "your message is saved" is true
    // even across a power cut. Writes are batched, so this costs one fsync per batch.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Deleted rows (purged calls, answers sealed after the fact) are overwritten with
    // zeros, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
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
pub fn close_interrupted(conn: &Connection, now: SystemTime) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE calls SET ended_at = ?1, end_reason = 'interrupted' WHERE ended_at IS NULL",
        params![rfc3339(now)],
    )
}

/// Opens an existing database read-only for the CLI (no migration, no creation).
pub fn open_existing(path: &Path) -> rusqlite::Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "secure_delete", "ON")?;
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
mod tests;
