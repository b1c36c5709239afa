//! What the operators' console reads and writes: the voicemail inbox, call history
//! with filters, look-up by reference code, notes and handled marks, the audit log,
//! the day's counters and the recording behind a playback id.
//!
//! Owns these SQL statements; the console owns sessions, pages and who may do what.
//! Every change a person makes here is written together with its audit entry, in one
//! transaction, so neither exists without the other. Times are arguments.

use super::{queries::calls_where, rfc3339, CallRow};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::time::SystemTime;

/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 4000;

/// How a caller's call ended up, for filters and columns. Checked in this order: a
/// call answered by an operator is `Operator` even if it also left a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An operator answered it.
    Operator,
    /// It left a voice message (complete or not).
    Voicemail,
    /// The caller hung up while waiting in the queue.
    Abandoned,
    /// None of these: the caller stayed in the voice menu.
    Ivr,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Operator,
        Outcome::Voicemail,
        Outcome::Abandoned,
        Outcome::Ivr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Operator => "operator",
            Outcome::Voicemail => "voicemail",
            Outcome::Abandoned => "abandoned",
            Outcome::Ivr => "ivr",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The outcome of a listed call; the same rule as [`OUTCOME_SQL`].
    pub fn of(call: &CallRow) -> Outcome {
        let queue = call.queue.as_ref().and_then(|q| q.outcome.as_deref());
        if queue == Some("answered") {
            Outcome::Operator
        } else if call.recordings.iter().any(|r| r.kind == "voicemail") {
            Outcome::Voicemail
        } else if queue == Some("abandoned") {
            Outcome::Abandoned
        } else {
            Outcome::Ivr
        }
    }
}

/// The outcome of `calls AS c` in SQL; the same rule as [`Outcome::of`].
const OUTCOME_SQL: &str = "CASE
    WHEN c.queue_outcome = 'answered' THEN 'operator'
    WHEN EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = c.id AND r.kind = 'voicemail')
        THEN 'voicemail'
    WHEN c.queue_outcome = 'abandoned' THEN 'abandoned'
    ELSE 'ivr' END";

/// Which calls a history page or an export shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFilter {
    /// Calls started at or after this UTC time, `YYYY-MM-DDTHH:MM:SS` without a zone
    /// (stored times are RFC 3339 in UTC, so text order is time order).
    pub since: Option<String>,
    /// Calls started before this UTC time (same form).
    pub until: Option<String>,
    pub outcome: Option<Outcome>,
    /// "inbound" or "outbound" (operator legs).
    pub direction: Option<&'static str>,
}

impl CallFilter {
    /// The WHERE clause and its arguments; `before_id` pages backwards.
    fn sql(&self, before_id: Option<i64>) -> (String, Vec<rusqlite::types::Value>) {
        let mut clauses = Vec::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |v: rusqlite::types::Value, clauses: &mut Vec<String>, sql: &str| {
            args.push(v);
            clauses.push(sql.replace('?', &format!("?{}", args.len())));
        };
        if let Some(s) = &self.since {
            arg(s.clone().into(), &mut clauses, "c.started_at >= ?");
        }
        if let Some(u) = &self.until {
            arg(u.clone().into(), &mut clauses, "c.started_at < ?");
        }
        if let Some(d) = self.direction {
            arg(d.to_string().into(), &mut clauses, "c.direction = ?");
        }
        if let Some(o) = self.outcome {
            arg(
                o.as_str().to_string().into(),
                &mut clauses,
                &format!("({OUTCOME_SQL}) = ?"),
            );
        }
        if let Some(b) = before_id {
            arg(b.into(), &mut clauses, "c.id < ?");
        }
        let sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        (sql, args)
    }
}

/// Ids of the calls `filter` selects, newest first, below `before_id`.
pub fn filtered_call_ids(
    conn: &Connection,
    filter: &CallFilter,
    before_id: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<i64>> {
    let (clause, mut args) = filter.sql(before_id);
    args.push((limit.min(i64::MAX as usize) as i64).into());
    let sql = format!(
        "SELECT c.id FROM calls c {clause} ORDER BY c.id DESC LIMIT ?{}",
        args.len()
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
    rows.collect()
}

/// The calls with these ids, as `hotline calls --json` lists them, newest first.
pub fn calls_by_ids(conn: &Connection, ids: &[i64]) -> rusqlite::Result<Vec<CallRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    calls_where(
        conn,
        "WHERE id IN (SELECT value FROM json_each(?2))",
        Some(&json),
        ids.len(),
    )
}

/// Calls `filter` selects, newest first, as `hotline calls --json` lists them.
pub fn filtered_calls(
    conn: &Connection,
    filter: &CallFilter,
    before_id: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<CallRow>> {
    let ids = filtered_call_ids(conn, filter, before_id, limit)?;
    calls_by_ids(conn, &ids)
}

/// One call, by database id.
pub fn call(conn: &Connection, id: i64) -> rusqlite::Result<Option<CallRow>> {
    Ok(calls_by_ids(conn, &[id])?.into_iter().next())
}

/// Calls given any of `codes`, newest first.
pub fn calls_with_references(
    conn: &Connection,
    codes: &[String],
) -> rusqlite::Result<Vec<CallRow>> {
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_string(codes).unwrap_or_else(|_| "[]".into());
    calls_where(
        conn,
        "WHERE reference IN (SELECT value FROM json_each(?2))",
        Some(&json),
        1000,
    )
}

/// Who marked a call handled, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handled {
    pub by: String,
    pub at: String,
}

/// A voice message in the inbox.
#[derive(Debug, Clone, Serialize)]
pub struct InboxRow {
    pub recording_id: i64,
    pub call_id: i64,
    pub reference: Option<String>,
    pub created_at: String,
    pub duration_ms: i64,
    pub partial: bool,
    pub answers: Vec<(String, String)>,
    pub handled: Option<Handled>,
    pub notes: i64,
    /// Null when the call's details are stored in clear; "locked" or "opened" when
    /// they are sealed (filled by `sealed_view::open_inbox`).
    pub sealed: Option<String>,
    /// The recording is a sealed file (`.age`).
    pub recording_sealed: bool,
}

/// Voice messages, unhandled before handled, newest first within each; `offset`
/// pages on.
pub fn inbox(conn: &Connection, limit: usize, offset: usize) -> rusqlite::Result<Vec<InboxRow>> {
    let mut stmt = conn.prepare(
        "SELECT r.id, r.call_id, c.reference, r.created_at, r.duration_ms, r.partial,
                h.handled_by, h.handled_at,
                (SELECT count(*) FROM call_notes n WHERE n.call_id = r.call_id),
                substr(r.path, -4) = '.age'
         FROM recordings r JOIN calls c ON c.id = r.call_id
         LEFT JOIN call_handled h ON h.call_id = r.call_id
         WHERE r.kind = 'voicemail'
         ORDER BY (h.call_id IS NOT NULL), r.id DESC
         LIMIT ?1 OFFSET ?2",
    )?;
    let rows = stmt.query_map(
        params![limit.min(10_000) as i64, offset.min(1 << 40) as i64],
        |r| {
            let by: Option<String> = r.get(6)?;
            let at: Option<String> = r.get(7)?;
            Ok(InboxRow {
                recording_id: r.get(0)?,
                call_id: r.get(1)?,
                reference: r.get(2)?,
                created_at: r.get(3)?,
                duration_ms: r.get(4)?,
                partial: r.get(5)?,
                answers: Vec::new(),
                handled: by.zip(at).map(|(by, at)| Handled { by, at }),
                notes: r.get(8)?,
                sealed: None,
                recording_sealed: r.get(9)?,
            })
        },
    )?;
    let mut out: Vec<InboxRow> = rows.collect::<rusqlite::Result<_>>()?;
    for row in &mut out {
        row.answers = answers(conn, row.call_id)?;
    }
    Ok(out)
}

/// Keys and digits the caller answered, in order.
pub fn answers(conn: &Connection, call_id: i64) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT key, digits FROM answers WHERE call_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map(params![call_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

pub fn handled(conn: &Connection, call_id: i64) -> rusqlite::Result<Option<Handled>> {
    conn.query_row(
        "SELECT handled_by, handled_at FROM call_handled WHERE call_id = ?1",
        params![call_id],
        |r| {
            Ok(Handled {
                by: r.get(0)?,
                at: r.get(1)?,
            })
        },
    )
    .optional()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub id: i64,
    pub author: String,
    /// Empty while the note is sealed and not opened.
    pub body: String,
    pub created_at: String,
    /// Null for a note stored in clear; "locked" or "opened" for a sealed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// The sealed body while it is not opened (`sealed_view::open_notes`).
    #[serde(skip)]
    pub sealed_body: Option<Vec<u8>>,
}

/// A call's notes, oldest first; sealed ones come locked, with their sealed body.
pub fn notes(conn: &Connection, call_id: i64) -> rusqlite::Result<Vec<Note>> {
    let mut stmt = conn.prepare(
        "SELECT id, author, body, created_at, body_sealed FROM call_notes
         WHERE call_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![call_id], |r| {
        let sealed_body: Option<Vec<u8>> = r.get(4)?;
        Ok(Note {
            id: r.get(0)?,
            author: r.get(1)?,
            body: r.get(2)?,
            created_at: r.get(3)?,
            sealed: sealed_body
                .is_some()
                .then(|| super::sealed_view::LOCKED.to_string()),
            sealed_body,
        })
    })?;
    rows.collect()
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no call with id {0}")]
    NoSuchCall(i64),
    #[error("a note must not be empty")]
    EmptyNote,
    #[error("a note has at most {MAX_NOTE_CHARS} characters (this one has {0})")]
    NoteTooLong(usize),
    #[error("the note could not be sealed: {0}")]
    Seal(String),
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
}

fn call_exists(conn: &Connection, call_id: i64) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM calls WHERE id = ?1",
        params![call_id],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// Adds a note by `author` to a call, with its audit entry.
pub fn add_note(
    conn: &mut Connection,
    call_id: i64,
    author: &str,
    body: &str,
    now: SystemTime,
) -> Result<i64, ChangeError> {
    add_note_sealed(conn, call_id, author, body, None, now)
}

/// Adds a note; with a sealer (`storage.recipients` set) its body is stored only
/// sealed, like the call's other details. The audit entry names the note, never its
/// text.
pub fn add_note_sealed(
    conn: &mut Connection,
    call_id: i64,
    author: &str,
    body: &str,
    sealer: Option<&super::seal::Sealer>,
    now: SystemTime,
) -> Result<i64, ChangeError> {
    let body = body.trim();
    if body.is_empty() {
        return Err(ChangeError::EmptyNote);
    }
    let chars = body.chars().count();
    if chars > MAX_NOTE_CHARS {
        return Err(ChangeError::NoteTooLong(chars));
    }
    let tx = conn.transaction()?;
    if !call_exists(&tx, call_id)? {
        return Err(ChangeError::NoSuchCall(call_id));
    }
    let sealed = sealer
        .map(|s| super::sealed_view::seal_note(s, body))
        .transpose()
        .map_err(|e| ChangeError::Seal(e.to_string()))?;
    let clear = if sealed.is_some() { "" } else { body };
    tx.execute(
        "INSERT INTO call_notes (call_id, author, body, created_at, body_sealed)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![call_id, author, clear, rfc3339(now), sealed],
    )?;
    let id = tx.last_insert_rowid();
    insert_audit(
        &tx,
        &AuditEntry {
            actor: author,
            action: "note",
            call_id: Some(call_id),
            recording_id: None,
            detail: &format!("note {id}"),
        },
        now,
    )?;
    tx.commit()?;
    Ok(id)
}

/// Marks a call handled (or not), with its audit entry. Returns whether anything
/// changed.
pub fn set_handled(
    conn: &mut Connection,
    call_id: i64,
    by: &str,
    handled: bool,
    now: SystemTime,
) -> Result<bool, ChangeError> {
    let tx = conn.transaction()?;
    if !call_exists(&tx, call_id)? {
        return Err(ChangeError::NoSuchCall(call_id));
    }
    let changed = if handled {
        tx.execute(
            "INSERT OR IGNORE INTO call_handled (call_id, handled_by, handled_at) VALUES (?1, ?2, ?3)",
            params![call_id, by, rfc3339(now)],
        )?
    } else {
        tx.execute(
            "DELETE FROM call_handled WHERE call_id = ?1",
            params![call_id],
        )?
    };
    if changed > 0 {
        insert_audit(
            &tx,
            &AuditEntry {
                actor: by,
                action: if handled { "handled" } else { "unhandled" },
                call_id: Some(call_id),
                recording_id: None,
                detail: "",
            },
            now,
        )?;
    }
    tx.commit()?;
    Ok(changed > 0)
}

/// A recording as the playback handler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackRecording {
    pub call_id: i64,
    pub kind: String,
    /// As stored: absolute, or relative to the data directory.
    pub path: String,
    pub duration_ms: i64,
}

pub fn recording(conn: &Connection, id: i64) -> rusqlite::Result<Option<PlaybackRecording>> {
    conn.query_row(
        "SELECT call_id, kind, path, duration_ms FROM recordings WHERE id = ?1",
        params![id],
        |r| {
            Ok(PlaybackRecording {
                call_id: r.get(0)?,
                kind: r.get(1)?,
                path: r.get(2)?,
                duration_ms: r.get(3)?,
            })
        },
    )
    .optional()
}

/// Database ids of a call's recordings, in the order `CallRow::recordings` lists them.
pub fn recording_ids(conn: &Connection, call_id: i64) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare("SELECT id FROM recordings WHERE call_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map(params![call_id], |r| r.get(0))?;
    rows.collect()
}

/// One line of the audit log to write.
#[derive(Debug, Clone, Copy)]
pub struct AuditEntry<'a> {
    /// The account that acted.
    pub actor: &'a str,
    /// "login", "logout", "listen", "export", "note", "handled", "unhandled",
    /// "operator_state", "operator_add", "operator_passwd", "operator_role",
    /// "operator_remove", "language".
    pub action: &'a str,
    pub call_id: Option<i64>,
    pub recording_id: Option<i64>,
    /// What else identifies the act (an export's filter, the account acted on);
    /// never caller data.
    pub detail: &'a str,
}

fn insert_audit(conn: &Connection, e: &AuditEntry, now: SystemTime) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, call_id, recording_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        rfc3339(now),
        e.actor,
        e.action,
        e.call_id,
        e.recording_id,
        e.detail
    ])?;
    Ok(conn.last_insert_rowid())
}

pub fn audit(conn: &Connection, entry: &AuditEntry, now: SystemTime) -> rusqlite::Result<i64> {
    insert_audit(conn, entry, now)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub call_id: Option<i64>,
    pub recording_id: Option<i64>,
    pub detail: String,
}

/// The audit log, newest first, below `before_id`.
pub fn audit_log(
    conn: &Connection,
    before_id: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<AuditRow>> {
    let mut stmt = conn.prepare(
        "SELECT id, at, actor, action, call_id, recording_id, detail FROM audit_log
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![before_id.unwrap_or(i64::MAX), limit.min(10_000) as i64],
        |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                call_id: r.get(4)?,
                recording_id: r.get(5)?,
                detail: r.get(6)?,
            })
        },
    )?;
    rows.collect()
}

/// Counters of one day (or any span) for the live board.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DayCounts {
    /// Callers an operator answered.
    pub answered: u64,
    /// Callers who hung up while waiting.
    pub abandoned: u64,
    /// Voice messages stored.
    pub voicemails: u64,
}

/// What happened between `since` and `until` (UTC, `YYYY-MM-DDTHH:MM:SS`).
pub fn day_counts(conn: &Connection, since: &str, until: &str) -> rusqlite::Result<DayCounts> {
    let (answered, abandoned): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(kind = 'answered'), 0), coalesce(sum(kind = 'abandoned'), 0)
         FROM queue_events WHERE at >= ?1 AND at < ?2 AND kind IN ('answered', 'abandoned')",
        params![since, until],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let voicemails: i64 = conn.query_row(
        "SELECT count(*) FROM recordings WHERE kind = 'voicemail' AND created_at >= ?1 AND created_at < ?2",
        params![since, until],
        |r| r.get(0),
    )?;
    Ok(DayCounts {
        answered: answered.max(0) as u64,
        abandoned: abandoned.max(0) as u64,
        voicemails: voicemails.max(0) as u64,
    })
}

/// Bytes of recordings stored, by kind.
pub fn recording_bytes(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt =
        conn.prepare("SELECT kind, coalesce(sum(size_bytes), 0) FROM recordings GROUP BY kind")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("h.db")).unwrap();
        (dir, conn)
    }

    fn at(s: &str) -> SystemTime {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        SystemTime::from(t)
    }

    /// Calls: 1 answered by an operator (and left a message before), 2 voicemail,
    /// 3 abandoned, 4 IVR only, 5 an operator leg, 6 voicemail after a queue overflow.
    fn sample(conn: &Connection) {
        conn.execute_batch(
            "INSERT INTO calls (id, sip_call_id, direction, to_uri, transport, started_at, reference, queue_outcome)
             VALUES
              (1, 'a', 'inbound', 't', 'UDP', '2024-05-01T08:00:00.25Z', '1234566', 'answered'),
              (2, 'b', 'inbound', 't', 'UDP', '2024-05-01T23:59:59.999Z', NULL, NULL),
              (3, 'c', 'inbound', 't', 'UDP', '2024-05-02T00:00:00Z', NULL, 'abandoned'),
              (4, 'd', 'inbound', 't', 'UDP', '2024-05-02T12:00:00.5Z', NULL, NULL),
              (5, 'e', 'outbound', 't', 'UDP', '2024-05-02T12:00:01Z', NULL, NULL),
              (6, 'f', 'inbound', 't', 'UDP', '2024-05-03T00:00:00Z', NULL, 'voicemail:max_wait');
             INSERT INTO recordings (id, call_id, kind, path, duration_ms, size_bytes, sha256, created_at)
             VALUES
              (10, 1, 'voicemail', '/r/a.wav', 1000, 16044, 'x', '2024-05-01T08:01:00Z'),
              (11, 1, 'conversation', '/r/b.wav', 5000, 160044, 'x', '2024-05-01T08:05:00Z'),
              (12, 2, 'voicemail', '/r/c.wav', 2000, 32044, 'x', '2024-05-02T00:00:10Z'),
              (13, 6, 'voicemail', '/r/d.wav', 3000, 48044, 'x', '2024-05-03T00:01:00Z');
             INSERT INTO answers (call_id, node, key, digits, answered_at)
             VALUES (2, 'zone', 'zone', '2', 'x'), (2, 'unit', 'unit', '123', 'x');
             INSERT INTO queue_events (call_id, kind, at) VALUES
              (1, 'answered', '2024-05-01T08:00:30Z'), (3, 'abandoned', '2024-05-02T00:00:40Z');",
        )
        .unwrap();
    }

    #[test]
    fn outcomes_agree_between_sql_and_rows() {
        let (_d, conn) = db();
        sample(&conn);
        let all = filtered_calls(&conn, &CallFilter::default(), None, 100).unwrap();
        assert_eq!(all.len(), 6);
        let expect = [
            (1, Outcome::Operator),
            (2, Outcome::Voicemail),
            (3, Outcome::Abandoned),
            (4, Outcome::Ivr),
            (5, Outcome::Ivr),
            (6, Outcome::Voicemail),
        ];
        for (id, outcome) in expect {
            let row = all.iter().find(|c| c.id == id).unwrap();
            assert_eq!(Outcome::of(row), outcome, "call {id}");
        }
        for outcome in Outcome::ALL {
            let filter = CallFilter {
                outcome: Some(outcome),
                ..Default::default()
            };
            let ids: Vec<i64> = filtered_calls(&conn, &filter, None, 100)
                .unwrap()
                .iter()
                .map(|c| c.id)
                .collect();
            let want: Vec<i64> = all
                .iter()
                .filter(|c| Outcome::of(c) == outcome)
                .map(|c| c.id)
                .collect();
            assert_eq!(ids, want, "{outcome:?}");
        }
    }

    #[test]
    fn filters_by_time_direction_and_pages() {
        let (_d, conn) = db();
        sample(&conn);
        let ids = |f: CallFilter, before: Option<i64>, limit: usize| -> Vec<i64> {
            filtered_call_ids(&conn, &f, before, limit).unwrap()
        };
        // A day's bounds catch the last millisecond and not the next midnight.
        let day1 = CallFilter {
            since: Some("2024-05-01T00:00:00".into()),
            until: Some("2024-05-02T00:00:00".into()),
            ..Default::default()
        };
        assert_eq!(ids(day1, None, 100), [2, 1]);
        let day2_inbound = CallFilter {
            since: Some("2024-05-02T00:00:00".into()),
            until: Some("2024-05-03T00:00:00".into()),
            direction: Some("inbound"),
            ..Default::default()
        };
        assert_eq!(ids(day2_inbound.clone(), None, 100), [4, 3]);
        assert_eq!(ids(day2_inbound.clone(), None, 1), [4]);
        assert_eq!(ids(day2_inbound, Some(4), 1), [3]);
        let rows = calls_by_ids(&conn, &[3, 1]).unwrap();
        assert_eq!(rows.iter().map(|c| c.id).collect::<Vec<_>>(), [3, 1]);
        assert!(calls_by_ids(&conn, &[]).unwrap().is_empty());
        assert_eq!(call(&conn, 2).unwrap().unwrap().answers.len(), 2);
        assert!(call(&conn, 99).unwrap().is_none());
        let found = calls_with_references(&conn, &["1234566".into(), "7".into()]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, 1);
    }

    #[test]
    fn inbox_notes_handled_and_audit() {
        let (_d, mut conn) = db();
        sample(&conn);
        let inbox_ids = |conn: &Connection| -> Vec<i64> {
            inbox(conn, 100, 0)
                .unwrap()
                .iter()
                .map(|r| r.recording_id)
                .collect()
        };
        assert_eq!(inbox_ids(&conn), [13, 12, 10]);
        let row = &inbox(&conn, 100, 0).unwrap()[1];
        assert_eq!(row.call_id, 2);
        assert_eq!(
            row.answers,
            [("zone".into(), "2".into()), ("unit".into(), "123".into())]
        );
        let now = at("2024-05-04T10:00:00Z");
        assert!(set_handled(&mut conn, 6, "Anna", true, now).unwrap());
        assert!(!set_handled(&mut conn, 6, "Anna", true, now).unwrap());
        // Handled messages go below the unhandled ones.
        assert_eq!(inbox_ids(&conn), [12, 10, 13]);
        assert_eq!(inbox(&conn, 1, 2).unwrap()[0].recording_id, 13);
        assert_eq!(
            handled(&conn, 6).unwrap(),
            Some(Handled {
                by: "Anna".into(),
                at: rfc3339(now)
            })
        );
        assert!(set_handled(&mut conn, 6, "Boris", false, now).unwrap());
        assert_eq!(handled(&conn, 6).unwrap(), None);
        assert!(matches!(
            set_handled(&mut conn, 99, "Anna", true, now),
            Err(ChangeError::NoSuchCall(99))
        ));

        add_note(&mut conn, 2, "Anna", "  called back, all well  ", now).unwrap();
        add_note(&mut conn, 2, "Борис", "Дякую", now).unwrap();
        let n = notes(&conn, 2).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].body, "called back, all well");
        assert_eq!(n[1].author, "Борис");
        assert!(matches!(
            add_note(&mut conn, 2, "Anna", " \n ", now),
            Err(ChangeError::EmptyNote)
        ));
        assert!(matches!(
            add_note(&mut conn, 2, "Anna", &"я".repeat(MAX_NOTE_CHARS + 1), now),
            Err(ChangeError::NoteTooLong(4001))
        ));
        assert!(add_note(&mut conn, 2, "Anna", &"я".repeat(MAX_NOTE_CHARS), now).is_ok());
        assert!(matches!(
            add_note(&mut conn, 77, "Anna", "x", now),
            Err(ChangeError::NoSuchCall(77))
        ));
        let inbox_now = inbox(&conn, 100, 0).unwrap();
        assert_eq!(inbox_now.iter().find(|r| r.call_id == 2).unwrap().notes, 3);
        assert_eq!(inbox_now.iter().find(|r| r.call_id == 6).unwrap().notes, 0);

        audit(
            &conn,
            &AuditEntry {
                actor: "Anna",
                action: "listen",
                call_id: Some(2),
                recording_id: Some(12),
                detail: "",
            },
            now,
        )
        .unwrap();
        let log = audit_log(&conn, None, 100).unwrap();
        let actions: Vec<&str> = log.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            ["listen", "note", "note", "note", "unhandled", "handled"]
        );
        assert_eq!(log[0].recording_id, Some(12));
        assert_eq!(
            audit_log(&conn, Some(log[1].id), 1).unwrap()[0].id,
            log[2].id
        );
        // Nobody edits the log, not even with SQL.
        let err = conn
            .execute("UPDATE audit_log SET actor = 'x'", [])
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        let err = conn.execute("DELETE FROM audit_log", []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        assert_eq!(audit_log(&conn, None, 100).unwrap().len(), 6);
    }

    #[test]
    fn counts_recordings_and_playback() {
        let (_d, conn) = db();
        sample(&conn);
        let c = day_counts(&conn, "2024-05-01T00:00:00", "2024-05-02T00:00:00").unwrap();
        assert_eq!(
            c,
            DayCounts {
                answered: 1,
                abandoned: 0,
                voicemails: 1
            }
        );
        let c = day_counts(&conn, "2024-05-02T00:00:00", "2024-05-03T00:00:00").unwrap();
        assert_eq!(
            c,
            DayCounts {
                answered: 0,
                abandoned: 1,
                voicemails: 1
            }
        );
        let mut bytes = recording_bytes(&conn).unwrap();
        bytes.sort();
        assert_eq!(
            bytes,
            [
                ("conversation".to_string(), 160_044),
                ("voicemail".to_string(), 96_132)
            ]
        );
        let r = recording(&conn, 12).unwrap().unwrap();
        assert_eq!(
            (r.call_id, r.kind.as_str(), r.path.as_str()),
            (2, "voicemail", "/r/c.wav")
        );
        assert!(recording(&conn, 99).unwrap().is_none());
        assert_eq!(recording_ids(&conn, 1).unwrap(), [10, 11]);
    }
}
