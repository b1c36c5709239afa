//! The read side: the calls, voice messages and reference codes behind `hotline calls`
//! and `hotline voicemails`.

use rusqlite::{params, Connection};
use serde::Serialize;

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

#[derive(Debug, Clone, Serialize)]
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
    /// Null for a call stored in clear; "locked" when its answers, digits and path are
    /// sealed and were not opened, "opened" when they were.
    pub sealed: Option<String>,
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
pub(super) fn calls_where(
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
            sealed: None,
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
