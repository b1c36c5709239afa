//! SQLite storage: schema and migrations, the writer thread, and the queries behind
//! `hotline calls`.
//!
//! Owns the database file (WAL mode) and every SQL statement. The server hands it
//! call events over a channel; a dedicated thread writes them in batches, one
//! transaction per batch, so a burst of call setups costs one fsync, not hundreds.
//! Must not know about SIP beyond the event types it stores.

pub mod console;
mod operators;

pub use operators::{
    all_operator_hashes, check_name, insert_operator, list_operators, operator_hashes,
    operator_username, remove_operator, set_language, set_role, update_operator_hashes,
    web_account, NewOperator, OperatorError, OperatorRow, PasswordHashes, Role, WebAccount,
    MAX_NAME_CHARS,
};

use crate::call::{CallEvent, CallId, Direction};
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
    // 6: the console: web logins (Argon2id hash, role, language), notes and handled
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

#[derive(Debug)]
pub enum StoreCommand {
    Event(CallEvent),
    Reference {
        call: CallId,
        code: String,
    },
    Answer {
        call: CallId,
        node: String,
        key: String,
        digits: String,
        at: SystemTime,
    },
    Node {
        call: CallId,
        node: String,
        at: SystemTime,
    },
    Digit {
        call: CallId,
        digit: char,
        source: String,
        media_ms: u64,
        at: SystemTime,
    },
    /// A finished recording. A voice message's commit (or failure) is reported as
    /// `StoreEvent::RecordingStored`.
    Recording {
        call: CallId,
        kind: &'static str,
        info: crate::call::RecordingInfo,
        partial: bool,
        at: SystemTime,
    },
    /// Something that happened to a call in the operator queue. Kinds: "joined",
    /// "position_announced", "offered", "offer_missed" (reason "timeout" | "rejected" |
    /// "failed"), "answered" (operator, waited_ms), "abandoned" (waited_ms),
    /// "overflowed" (reason "caller_choice" | "max_wait" | "no_operators" |
    /// "unavailable", waited_ms). The last three also set the call's queue outcome.
    Queue {
        call: CallId,
        kind: &'static str,
        operator: Option<String>,
        position: Option<u32>,
        reason: Option<&'static str>,
        waited_ms: Option<u64>,
        at: SystemTime,
    },
    /// How long the caller talked with an operator.
    Talk {
        call: CallId,
        talk_ms: u64,
    },
    /// An operator's state changed. States: offline, available, ringing, on_call,
    /// wrap_up, paused; sources: registrar, phone, cli, console, queue.
    OperatorState {
        operator: String,
        state: &'static str,
        source: &'static str,
        at: SystemTime,
    },
    /// Reply once everything sent before has been committed.
    Flush(mpsc::Sender<()>),
}

/// What the writer reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A voice message's row is committed (`ok`), or could not be.
    RecordingStored { call: CallId, ok: bool },
}

/// What the writer tells an observer about each batch; the observer (in the shell)
/// may time the stages, the store itself reads no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStage {
    /// A batch was taken from the queue; its transaction starts now.
    Begin,
    /// The batch's transaction committed (`ok`) or failed.
    Done { commands: usize, ok: bool },
}

pub type BatchObserver = Box<dyn FnMut(BatchStage) + Send>;

/// Starts the writer thread (after marking calls an earlier stop left open as
/// interrupted at `now`). Events are batched: one transaction per wake-up. `events`
/// is called on the writer's thread.
pub fn spawn_writer(
    path: PathBuf,
    addr_filter: AddrFilter,
    events: Box<dyn Fn(StoreEvent) + Send>,
    now: SystemTime,
) -> rusqlite::Result<mpsc::Sender<StoreCommand>> {
    spawn_writer_observed(path, addr_filter, events, Box::new(|_| {}), now)
}

/// [`spawn_writer`], with `observer` called on the writer's thread around each batch.
pub fn spawn_writer_observed(
    path: PathBuf,
    addr_filter: AddrFilter,
    events: Box<dyn Fn(StoreEvent) + Send>,
    observer: BatchObserver,
    now: SystemTime,
) -> rusqlite::Result<mpsc::Sender<StoreCommand>> {
    let conn = open(&path)?;
    let closed = close_interrupted(&conn, now)?;
    if closed > 0 {
        tracing::warn!(
            closed,
            "calls left open by an earlier stop were marked interrupted"
        );
    }
    let (tx, rx) = mpsc::channel::<StoreCommand>();
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || writer(conn, rx, addr_filter, events, observer))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    Ok(tx)
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<StoreCommand>,
    addr_filter: AddrFilter,
    events: Box<dyn Fn(StoreEvent) + Send>,
    mut observer: BatchObserver,
) {
    let mut rows: HashMap<CallId, i64> = HashMap::new();
    let mut ended: std::collections::VecDeque<CallId> = std::collections::VecDeque::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 2000 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let mut replies = Vec::new();
        let commands = batch.len();
        observer(BatchStage::Begin);
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for cmd in batch {
                match cmd {
                    StoreCommand::Flush(reply) => flushes.push(reply),
                    StoreCommand::Event(ev) => {
                        if let CallEvent::Ended { call, .. } = &ev {
                            ended.push_back(*call);
                        }
                        apply_event(&tx, &mut rows, &addr_filter, ev)?
                    }
                    StoreCommand::Recording {
                        call,
                        kind,
                        info,
                        partial,
                        at,
                    } => {
                        let ok = insert_recording(&tx, &rows, call, kind, &info, partial, at)?;
                        if kind == "voicemail" {
                            replies.push((call, ok));
                        }
                    }
                    other => apply_detail(&tx, &rows, other)?,
                }
            }
            tx.commit()
        })();
        let committed = result.is_ok();
        observer(BatchStage::Done {
            commands,
            ok: committed,
        });
        if let Err(e) = result {
            tracing::error!("database write failed: {e}");
        }
        for (call, ok) in replies {
            events(StoreEvent::RecordingStored {
                call,
                ok: ok && committed,
            });
        }
        for f in flushes {
            let _ = f.send(());
        }
        // Rows of ended calls are remembered a while: a recording may finish after
        // the hang-up.
        if ended.len() > 20_000 {
            for call in ended.drain(..10_000) {
                rows.remove(&call);
            }
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
            if let Some(id) = rows.get(&call) {
                tx.prepare_cached("UPDATE calls SET ended_at = ?1, end_reason = ?2 WHERE id = ?3")?
                    .execute(params![rfc3339(at), reason.as_str(), id])?;
            }
        }
    }
    Ok(())
}

fn insert_recording(
    tx: &rusqlite::Transaction,
    rows: &HashMap<CallId, i64>,
    call: CallId,
    kind: &str,
    info: &crate::call::RecordingInfo,
    partial: bool,
    at: SystemTime,
) -> rusqlite::Result<bool> {
    let Some(id) = rows.get(&call) else {
        tracing::error!(
            call,
            "recording for an unknown call: {}",
            info.path.display()
        );
        return Ok(false);
    };
    let path = std::fs::canonicalize(&info.path).unwrap_or_else(|_| info.path.clone());
    tx.prepare_cached(
        "INSERT INTO recordings (call_id, kind, path, duration_ms, size_bytes, sha256, partial, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        kind,
        path.to_string_lossy(),
        info.duration_ms as i64,
        info.size_bytes as i64,
        info.sha256_hex,
        partial,
        rfc3339(at)
    ])?;
    Ok(true)
}

fn apply_detail(
    tx: &rusqlite::Transaction,
    rows: &HashMap<CallId, i64>,
    cmd: StoreCommand,
) -> rusqlite::Result<()> {
    match cmd {
        StoreCommand::Reference { call, code } => {
            if let Some(id) = rows.get(&call) {
                // The unique index refuses a repeated code; IGNORE keeps that from
                // failing the whole batch. The server's book should make it impossible.
                let changed = tx
                    .prepare_cached("UPDATE OR IGNORE calls SET reference = ?1 WHERE id = ?2")?
                    .execute(params![code, id])?;
                if changed == 0 {
                    tracing::error!(
                        call,
                        "reference code already stored for another call; not kept"
                    );
                }
            }
        }
        StoreCommand::Node { call, node, at } => {
            if let Some(id) = rows.get(&call) {
                tx.prepare_cached(
                    "INSERT INTO ivr_path (call_id, node, entered_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, node, rfc3339(at)])?;
            }
        }
        StoreCommand::Answer {
            call,
            node,
            key,
            digits,
            at,
        } => {
            if let Some(id) = rows.get(&call) {
                tx.prepare_cached("INSERT INTO answers (call_id, node, key, digits, answered_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![id, node, key, digits, rfc3339(at)])?;
            }
        }
        StoreCommand::Digit {
            call,
            digit,
            source,
            media_ms,
            at,
        } => {
            if let Some(id) = rows.get(&call) {
                tx.prepare_cached(
                    "INSERT INTO digits (call_id, digit, source, media_ms, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![id, digit.to_string(), source, media_ms as i64, rfc3339(at)])?;
            }
        }
        StoreCommand::Queue {
            call,
            kind,
            operator,
            position,
            reason,
            waited_ms,
            at,
        } => {
            let Some(id) = rows.get(&call) else {
                tracing::debug!(call, kind, "queue event for an unknown call dropped");
                return Ok(());
            };
            let waited = waited_ms.map(|w| w.min(i64::MAX as u64) as i64);
            tx.prepare_cached(
                "INSERT INTO queue_events (call_id, kind, operator, position, reason, waited_ms, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![id, kind, operator, position, reason, waited, rfc3339(at)])?;
            let outcome = match kind {
                "answered" => Some("answered".to_string()),
                "abandoned" => Some("abandoned".to_string()),
                "overflowed" => Some(format!("voicemail:{}", reason.unwrap_or("unknown"))),
                _ => None,
            };
            if let Some(outcome) = outcome {
                tx.prepare_cached(
                    "UPDATE calls SET queue_waited_ms = COALESCE(?1, queue_waited_ms),
                         queue_outcome = ?2, operator = COALESCE(?3, operator)
                     WHERE id = ?4",
                )?
                .execute(params![
                    waited,
                    outcome,
                    if kind == "answered" { operator } else { None },
                    id
                ])?;
            }
        }
        StoreCommand::Talk { call, talk_ms } => {
            let Some(id) = rows.get(&call) else {
                tracing::debug!(call, "talk time for an unknown call dropped");
                return Ok(());
            };
            tx.prepare_cached("UPDATE calls SET talk_ms = ?1 WHERE id = ?2")?
                .execute(params![talk_ms.min(i64::MAX as u64) as i64, id])?;
        }
        StoreCommand::OperatorState {
            operator,
            state,
            source,
            at,
        } => {
            tx.prepare_cached(
                "INSERT INTO operator_events (operator, state, source, at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![operator, state, source, rfc3339(at)])?;
        }
        StoreCommand::Event(_) | StoreCommand::Recording { .. } | StoreCommand::Flush(_) => {}
    }
    Ok(())
}

/// What happened to a call in the operator queue.
#[derive(Debug, Serialize)]
pub struct QueueInfo {
    /// Time from joining the queue to its outcome.
    pub waited_ms: Option<i64>,
    /// The operator who answered.
    pub operator: Option<String>,
    /// "answered", "abandoned" or "voicemail:REASON"; null while still waiting.
    pub outcome: Option<String>,
    pub talk_ms: Option<i64>,
    pub events: Vec<QueueEventRow>,
}

#[derive(Debug, Serialize)]
pub struct QueueEventRow {
    pub kind: String,
    pub operator: Option<String>,
    pub position: Option<i64>,
    pub reason: Option<String>,
    pub waited_ms: Option<i64>,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct RecordingRow {
    pub kind: String,
    pub path: String,
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub sha256: String,
    pub partial: bool,
    pub created_at: String,
    pub heard_at: Option<String>,
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
    pub reference: Option<String>,
    pub answers: serde_json::Map<String, serde_json::Value>,
    /// Every key the caller pressed, in order, and how each arrived.
    pub digits: String,
    pub digit_sources: Vec<String>,
    /// IVR nodes in the order the call entered them.
    pub path: Vec<String>,
    pub recordings: Vec<RecordingRow>,
    pub queue: Option<QueueInfo>,
}

/// Newest calls first.
pub fn list_calls(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<CallRow>> {
    calls_where(conn, "", None, limit)
}

/// Calls whose reference code is `code`, newest first. A 7-digit code is unique; a
/// 6-digit code from an older version may have been given to several calls.
pub fn calls_by_reference(conn: &Connection, code: &str) -> rusqlite::Result<Vec<CallRow>> {
    calls_where(conn, "WHERE reference = ?2", Some(code), 100)
}

/// Every reference code stored, for the server's book of codes given out.
pub fn stored_references(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT reference FROM calls WHERE reference IS NOT NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// `filter` is a fixed SQL `WHERE` clause (or nothing) that may use `?2` for `arg`.
fn calls_where(
    conn: &Connection,
    filter: &str,
    arg: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<CallRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT id, sip_call_id, direction, from_id, to_uri, remote_addr, transport, codec,
                started_at, answered_at, ended_at, end_reason, reference,
                queue_waited_ms, operator, queue_outcome, talk_ms
         FROM calls {filter} ORDER BY id DESC LIMIT ?1"
    ))?;
    let mut args: Vec<rusqlite::types::Value> = vec![(limit.min(i64::MAX as usize) as i64).into()];
    args.extend(arg.map(|a| a.to_string().into()));
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        let queue = QueueInfo {
            waited_ms: r.get(13)?,
            operator: r.get(14)?,
            outcome: r.get(15)?,
            talk_ms: r.get(16)?,
            events: Vec::new(),
        };
        let row = CallRow {
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
            reference: r.get(12)?,
            answers: serde_json::Map::new(),
            digits: String::new(),
            digit_sources: Vec::new(),
            path: Vec::new(),
            recordings: Vec::new(),
            queue: None,
        };
        Ok((row, queue))
    })?;
    let mut calls = Vec::new();
    let mut queues = Vec::new();
    for r in rows {
        let (row, queue) = r?;
        calls.push(row);
        queues.push(queue);
    }
    let mut answers =
        conn.prepare("SELECT key, digits FROM answers WHERE call_id = ?1 ORDER BY id")?;
    let mut path_stmt = conn.prepare("SELECT node FROM ivr_path WHERE call_id = ?1 ORDER BY id")?;
    let mut digits =
        conn.prepare("SELECT digit, source FROM digits WHERE call_id = ?1 ORDER BY id")?;
    // Rows are inserted as things happen, so id order is time order.
    let mut queue_events = conn.prepare(
        "SELECT kind, operator, position, reason, waited_ms, at
         FROM queue_events WHERE call_id = ?1 ORDER BY id",
    )?;
    for (c, mut queue) in calls.iter_mut().zip(queues) {
        for a in answers.query_map(params![c.id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })? {
            let (k, v) = a?;
            c.answers.insert(k, serde_json::Value::String(v));
        }
        for d in digits.query_map(params![c.id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })? {
            let (digit, source) = d?;
            c.digits.push_str(&digit);
            c.digit_sources.push(source);
        }
        for n in path_stmt.query_map(params![c.id], |r| r.get::<_, String>(0))? {
            c.path.push(n?);
        }
        c.recordings = recordings_of(conn, c.id)?;
        for e in queue_events.query_map(params![c.id], |r| {
            Ok(QueueEventRow {
                kind: r.get(0)?,
                operator: r.get(1)?,
                position: r.get(2)?,
                reason: r.get(3)?,
                waited_ms: r.get(4)?,
                at: r.get(5)?,
            })
        })? {
            queue.events.push(e?);
        }
        // A call that never joined the queue has no queue object at all.
        if !queue.events.is_empty() || queue.outcome.is_some() {
            c.queue = Some(queue);
        }
    }
    Ok(calls)
}

fn recordings_of(conn: &Connection, call_id: i64) -> rusqlite::Result<Vec<RecordingRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, path, duration_ms, size_bytes, sha256, partial, created_at, heard_at
         FROM recordings WHERE call_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![call_id], |r| {
        Ok(RecordingRow {
            kind: r.get(0)?,
            path: r.get(1)?,
            duration_ms: r.get(2)?,
            size_bytes: r.get(3)?,
            sha256: r.get(4)?,
            partial: r.get(5)?,
            created_at: r.get(6)?,
            heard_at: r.get(7)?,
        })
    })?;
    rows.collect()
}

#[derive(Debug, Serialize)]
pub struct VoicemailRow {
    pub call_id: i64,
    pub reference: Option<String>,
    pub from: Option<String>,
    pub started_at: String,
    pub answers: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub recording: RecordingRow,
}

/// Voicemails, newest first, with the answers of their call.
pub fn list_voicemails(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<VoicemailRow>> {
    let mut stmt = conn.prepare(
        "SELECT r.call_id, c.reference, c.from_id, c.started_at, r.kind, r.path, r.duration_ms, r.size_bytes,
                r.sha256, r.partial, r.created_at, r.heard_at
         FROM recordings r JOIN calls c ON c.id = r.call_id
         WHERE r.kind = 'voicemail' ORDER BY r.id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(VoicemailRow {
            call_id: r.get(0)?,
            reference: r.get(1)?,
            from: r.get(2)?,
            started_at: r.get(3)?,
            answers: serde_json::Map::new(),
            recording: RecordingRow {
                kind: r.get(4)?,
                path: r.get(5)?,
                duration_ms: r.get(6)?,
                size_bytes: r.get(7)?,
                sha256: r.get(8)?,
                partial: r.get(9)?,
                created_at: r.get(10)?,
                heard_at: r.get(11)?,
            },
        })
    })?;
    let mut out: Vec<VoicemailRow> = rows.collect::<rusqlite::Result<_>>()?;
    let mut answers =
        conn.prepare("SELECT key, digits FROM answers WHERE call_id = ?1 ORDER BY id")?;
    for v in &mut out {
        for a in answers.query_map(params![v.call_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })? {
            let (k, d) = a?;
            v.answers.insert(k, serde_json::Value::String(d));
        }
    }
    Ok(out)
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
    use crate::call::Codec;
    use crate::call::EndReason;

    #[test]
    fn writer_batches_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hotline.db");
        let tx = spawn_writer(
            path.clone(),
            Box::new(|a| Some(a.to_string())),
            Box::new(|_| {}),
            SystemTime::now(),
        )
        .unwrap();
        for call in 1..=3u64 {
            start_call(&tx, call);
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

    fn start_call(tx: &mpsc::Sender<StoreCommand>, call: CallId) {
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
    }

    fn flush(tx: &mpsc::Sender<StoreCommand>) {
        let (ftx, frx) = mpsc::channel();
        tx.send(StoreCommand::Flush(ftx)).unwrap();
        frx.recv().unwrap();
    }

    #[allow(clippy::too_many_arguments)]
    fn queue(
        call: CallId,
        kind: &'static str,
        operator: Option<&str>,
        position: Option<u32>,
        reason: Option<&'static str>,
        waited_ms: Option<u64>,
        at: SystemTime,
    ) -> StoreCommand {
        StoreCommand::Queue {
            call,
            kind,
            operator: operator.map(str::to_string),
            position,
            reason,
            waited_ms,
            at,
        }
    }

    #[test]
    fn queue_events_show_in_list_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hotline.db");
        let tx = spawn_writer(
            path.clone(),
            Box::new(|a| Some(a.to_string())),
            Box::new(|_| {}),
            SystemTime::now(),
        )
        .unwrap();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        // 1: answered after a missed offer; 2: overflowed to voicemail; 3: abandoned;
        // 4: never queued; 5: still waiting.
        for call in 1..=5 {
            start_call(&tx, call);
        }
        for cmd in [
            queue(1, "joined", None, Some(1), None, None, ms(0)),
            queue(1, "offered", Some("anna"), None, None, None, ms(10)),
            queue(
                1,
                "offer_missed",
                Some("anna"),
                None,
                Some("timeout"),
                None,
                ms(20),
            ),
            queue(1, "position_announced", None, Some(1), None, None, ms(30)),
            queue(1, "offered", Some("boris"), None, None, None, ms(40)),
            queue(1, "answered", Some("boris"), None, None, Some(4500), ms(50)),
            StoreCommand::Talk {
                call: 1,
                talk_ms: 61_000,
            },
            queue(2, "joined", None, Some(2), None, None, ms(0)),
            queue(
                2,
                "overflowed",
                None,
                None,
                Some("max_wait"),
                Some(300_000),
                ms(5),
            ),
            queue(3, "joined", None, Some(1), None, None, ms(0)),
            queue(3, "abandoned", None, None, None, Some(7000), ms(5)),
            queue(5, "joined", None, Some(3), None, None, ms(0)),
            // Unknown call: dropped, and the batch still commits.
            queue(99, "joined", None, Some(1), None, None, ms(0)),
            StoreCommand::Talk {
                call: 99,
                talk_ms: 1,
            },
            StoreCommand::OperatorState {
                operator: "boris".into(),
                state: "on_call",
                source: "queue",
                at: ms(50),
            },
        ] {
            tx.send(cmd).unwrap();
        }
        flush(&tx);
        let conn = open_existing(&path).unwrap().unwrap();
        let calls = list_calls(&conn, 10).unwrap();
        let json = serde_json::to_value(&calls).unwrap();
        let by_id = |id: i64| {
            json.as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id)
                .unwrap()
                .clone()
        };
        let q1 = &by_id(1)["queue"];
        assert_eq!(q1["waited_ms"], 4500);
        assert_eq!(q1["operator"], "boris");
        assert_eq!(q1["outcome"], "answered");
        assert_eq!(q1["talk_ms"], 61_000);
        let kinds: Vec<&str> = q1["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "joined",
                "offered",
                "offer_missed",
                "position_announced",
                "offered",
                "answered"
            ]
        );
        assert_eq!(
            q1["events"][2],
            serde_json::json!({
                "kind": "offer_missed", "operator": "anna", "position": null,
                "reason": "timeout", "waited_ms": null, "at": rfc3339(ms(20)),
            })
        );
        assert_eq!(q1["events"][0]["position"], 1);
        let q2 = &by_id(2)["queue"];
        assert_eq!(q2["outcome"], "voicemail:max_wait");
        assert_eq!(q2["waited_ms"], 300_000);
        assert_eq!(q2["operator"], serde_json::Value::Null);
        assert_eq!(q2["talk_ms"], serde_json::Value::Null);
        let q3 = &by_id(3)["queue"];
        assert_eq!(q3["outcome"], "abandoned");
        assert_eq!(q3["waited_ms"], 7000);
        assert_eq!(by_id(4)["queue"], serde_json::Value::Null);
        let q5 = &by_id(5)["queue"];
        assert_eq!(q5["outcome"], serde_json::Value::Null);
        assert_eq!(q5["waited_ms"], serde_json::Value::Null);
        assert_eq!(q5["events"].as_array().unwrap().len(), 1);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM queue_events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 11, "the unknown call's event is dropped");
        let state: (String, String, String) = conn
            .query_row(
                "SELECT operator, state, source FROM operator_events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(state, ("boris".into(), "on_call".into(), "queue".into()));
    }

    #[test]
    fn migration_4_upgrades_a_version_3_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute(
                "INSERT INTO calls (sip_call_id, direction, to_uri, transport, started_at) VALUES ('old', 'inbound', 't', 'UDP', 'now')",
                [],
            )
            .unwrap();
        }
        let conn = open_existing(&path).unwrap().unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let calls = list_calls(&conn, 10).unwrap();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].queue.is_none());
        assert!(list_operators(&conn).unwrap().is_empty());
    }

    /// A version 4 database with repeated 6-digit codes upgrades; its codes are still
    /// found; a repeated 7-digit code is refused without losing the rest of the batch.
    #[test]
    fn reference_codes_are_unique_and_old_ones_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..4] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 4).unwrap();
            for (sip, code) in [("a", "482113"), ("b", "482113"), ("c", "100200")] {
                conn.execute(
                    "INSERT INTO calls (sip_call_id, direction, to_uri, transport, started_at, reference) VALUES (?1, 'inbound', 't', 'UDP', 'now', ?2)",
                    params![sip, code],
                )
                .unwrap();
            }
        }
        let conn = open_existing(&path).unwrap().unwrap();
        let found = calls_by_reference(&conn, "482113").unwrap();
        assert_eq!(found.len(), 2, "both calls with the old repeated code");
        assert_eq!(
            calls_by_reference(&conn, "100200").unwrap()[0].sip_call_id,
            "c"
        );
        drop(conn);

        let tx = spawn_writer(
            path.clone(),
            Box::new(|a| Some(a.to_string())),
            Box::new(|_| {}),
            SystemTime::now(),
        )
        .unwrap();
        let code = crate::reference::code_for(4821);
        start_call(&tx, 1);
        start_call(&tx, 2);
        tx.send(StoreCommand::Reference {
            call: 1,
            code: code.clone(),
        })
        .unwrap();
        flush(&tx);
        tx.send(StoreCommand::Reference {
            call: 2,
            code: code.clone(),
        })
        .unwrap();
        tx.send(StoreCommand::Node {
            call: 2,
            node: "greeting".into(),
            at: SystemTime::now(),
        })
        .unwrap();
        flush(&tx);
        let conn = open_existing(&path).unwrap().unwrap();
        let found = calls_by_reference(&conn, &code).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].sip_call_id, "c1");
        let second = list_calls(&conn, 10)
            .unwrap()
            .into_iter()
            .find(|c| c.sip_call_id == "c2")
            .unwrap();
        assert_eq!(second.reference, None, "the repeat is not stored");
        assert_eq!(second.path, ["greeting"], "the rest of the batch is");
        let err = conn
            .execute(
                "UPDATE calls SET reference = ?1 WHERE sip_call_id = 'c2'",
                params![code],
            )
            .unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        let mut stored = stored_references(&conn).unwrap();
        stored.sort();
        assert_eq!(stored, [code.as_str(), "100200", "482113", "482113"]);
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
        assert_eq!(close_interrupted(&conn, SystemTime::now()).unwrap(), 1);
        let reason: String = conn
            .query_row("SELECT end_reason FROM calls", [], |r| r.get(0))
            .unwrap();
        assert_eq!(reason, "interrupted");
    }
}
