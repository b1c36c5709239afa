//! The sealed part of a call: its answers, digits, IVR path and, when they are kept in
//! clear form by the caller-ID policy, the caller's number and address.
//!
//! With `storage.recipients` set, the store writer keeps these in memory for calls in
//! progress and, after each batch that changed them, replaces the call's sealed blob
//! (one row of `call_sealed`). A crash loses at most the batch in flight, as for any
//! row. Times, durations, outcomes and queue figures stay in clear columns.

use super::seal::{open_bytes, Sealer};
use super::{CallRow, RecordingRow};
use age::x25519;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use zeroize::Zeroize;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    #[serde(default)]
    pub answers: Vec<Answer>,
    #[serde(default)]
    pub digits: Vec<Digit>,
    #[serde(default)]
    pub path: Vec<Node>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub node: String,
    pub key: String,
    pub digits: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Digit {
    pub digit: String,
    pub source: String,
    pub media_ms: u64,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub node: String,
    pub at: String,
}

impl CallDetails {
    /// Appends a later part of the same call (a second blob).
    pub fn merge(&mut self, mut later: CallDetails) {
        use std::mem::take;
        self.sip_call_id = self.sip_call_id.take().or(take(&mut later.sip_call_id));
        self.from = self.from.take().or(take(&mut later.from));
        self.remote_addr = self.remote_addr.take().or(take(&mut later.remote_addr));
        self.answers.append(&mut later.answers);
        self.digits.append(&mut later.digits);
        self.path.append(&mut later.path);
    }

    /// Fills what `hotline calls` shows from these details.
    pub fn apply_to(&self, row: &mut CallRow) {
        if let Some(id) = &self.sip_call_id {
            row.sip_call_id = id.clone();
        }
        if self.from.is_some() {
            row.from = self.from.clone();
        }
        if self.remote_addr.is_some() {
            row.remote_addr = self.remote_addr.clone();
        }
        for a in &self.answers {
            row.answers
                .insert(a.key.clone(), serde_json::Value::String(a.digits.clone()));
        }
        for d in &self.digits {
            row.digits.push_str(&d.digit);
            row.digit_sources.push(d.source.clone());
        }
        row.path.extend(self.path.iter().map(|n| n.node.clone()));
        row.sealed = Some("opened".into());
    }
}

impl Drop for CallDetails {
    fn drop(&mut self) {
        for s in [&mut self.sip_call_id, &mut self.from, &mut self.remote_addr]
            .into_iter()
            .flatten()
        {
            s.zeroize();
        }
        for a in &mut self.answers {
            a.node.zeroize();
            a.key.zeroize();
            a.digits.zeroize();
        }
        for d in &mut self.digits {
            d.digit.zeroize();
        }
        for n in &mut self.path {
            n.node.zeroize();
        }
    }
}

/// Details of calls in progress, as the writer accumulates them.
#[derive(Default)]
pub struct Pending {
    calls: HashMap<i64, (i64, CallDetails)>,
    dirty: Vec<i64>,
}

impl Pending {
    /// The details of the call with row `id`, marked for sealing at the end of the batch.
    pub fn get(&mut self, id: i64) -> &mut CallDetails {
        if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
        // seq 0 means "not yet written": the next free one is chosen when sealing.
        &mut self
            .calls
            .entry(id)
            .or_insert((0, CallDetails::default()))
            .1
    }

    /// Seals every call changed in this batch into its row of `call_sealed`.
    pub fn seal_dirty(
        &mut self,
        tx: &rusqlite::Transaction,
        sealer: &Sealer,
    ) -> rusqlite::Result<()> {
        for id in std::mem::take(&mut self.dirty) {
            let Some((seq, details)) = self.calls.get_mut(&id) else {
                continue;
            };
            if *seq == 0 {
                *seq = tx.query_row(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM call_sealed WHERE call_id = ?1",
                    params![id],
                    |r| r.get(0),
                )?;
            }
            let mut json =
                zeroize::Zeroizing::new(serde_json::to_vec(&*details).unwrap_or_default());
            let blob = sealer
                .seal_bytes(&json)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            json.zeroize();
            tx.prepare_cached(
                "INSERT OR REPLACE INTO call_sealed (call_id, seq, blob) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, *seq, blob])?;
        }
        Ok(())
    }

    /// Forgets (and wipes) the details of an ended call.
    pub fn forget(&mut self, id: i64) {
        self.calls.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// The sealed blobs of each of `ids` that has any, in order.
pub fn load_blobs(conn: &Connection, ids: &[i64]) -> rusqlite::Result<HashMap<i64, Vec<Vec<u8>>>> {
    let mut stmt =
        conn.prepare_cached("SELECT blob FROM call_sealed WHERE call_id = ?1 ORDER BY seq")?;
    let mut out = HashMap::new();
    for &id in ids {
        let blobs: Vec<Vec<u8>> = stmt
            .query_map(params![id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !blobs.is_empty() {
            out.insert(id, blobs);
        }
    }
    Ok(out)
}

/// Decrypts and merges the blobs of one call.
pub fn open_details(
    identities: &[x25519::Identity],
    blobs: &[Vec<u8>],
) -> Result<CallDetails, String> {
    let mut all = CallDetails::default();
    for b in blobs {
        let plain = open_bytes(identities, b)?;
        let d: CallDetails = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
        all.merge(d);
    }
    Ok(all)
}

/// Marks the rows that have sealed details, so that `hotline calls` says so instead
/// of showing a call without answers.
pub fn mark_sealed(conn: &Connection, rows: &mut [CallRow]) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM call_sealed WHERE call_id = ?1 LIMIT 1")?;
    let mut sealed = Vec::new();
    for r in rows.iter_mut() {
        if stmt.exists(params![r.id])? {
            r.sealed = Some("locked".into());
            sealed.push(r.id);
        }
    }
    Ok(sealed)
}

/// Opens the sealed details of `rows` with local identities (`--identity FILE`).
pub fn open_rows(
    conn: &Connection,
    identities: &[x25519::Identity],
    rows: &mut [CallRow],
) -> Result<(), String> {
    let ids = mark_sealed(conn, rows).map_err(|e| e.to_string())?;
    let blobs = load_blobs(conn, &ids).map_err(|e| e.to_string())?;
    for r in rows.iter_mut() {
        if let Some(b) = blobs.get(&r.id) {
            let d = open_details(identities, b).map_err(|e| format!("call {}: {e}", r.id))?;
            d.apply_to(r);
        }
    }
    Ok(())
}

/// Recording paths are stored relative to the data directory (so that a restored
/// copy works wherever it is put); the CLI shows them resolved.
pub fn resolve_paths(rows: &mut [RecordingRow], data_dir: &std::path::Path) {
    let base = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    for r in rows {
        let p = std::path::Path::new(&r.path);
        if p.is_relative() {
            r.path = base.join(p).to_string_lossy().into_owned();
        }
    }
}

/// Seals the clear answers, digits and IVR path of calls stored before sealing was
/// turned on, and deletes the clear rows (`secure_delete` zeroes them in the file).
/// Returns the number of calls sealed.
pub fn seal_clear_rows(conn: &mut Connection, sealer: &Sealer) -> rusqlite::Result<usize> {
    let ids: Vec<i64> = {
        let mut stmt = conn.prepare(
            "SELECT call_id FROM answers UNION SELECT call_id FROM digits
             UNION SELECT call_id FROM ivr_path",
        )?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids
    };
    if ids.is_empty() {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    let mut pending = Pending::default();
    for &id in &ids {
        let d = pending.get(id);
        let mut s = tx.prepare_cached(
            "SELECT node, key, digits, answered_at FROM answers WHERE call_id = ?1 ORDER BY id",
        )?;
        for a in s.query_map(params![id], |r| {
            Ok(Answer {
                node: r.get(0)?,
                key: r.get(1)?,
                digits: r.get(2)?,
                at: r.get(3)?,
            })
        })? {
            d.answers.push(a?);
        }
        let mut s = tx.prepare_cached(
            "SELECT digit, source, media_ms, received_at FROM digits WHERE call_id = ?1 ORDER BY id",
        )?;
        for x in s.query_map(params![id], |r| {
            Ok(Digit {
                digit: r.get(0)?,
                source: r.get(1)?,
                media_ms: r.get::<_, i64>(2)?.max(0) as u64,
                at: r.get(3)?,
            })
        })? {
            d.digits.push(x?);
        }
        let mut s = tx.prepare_cached(
            "SELECT node, entered_at FROM ivr_path WHERE call_id = ?1 ORDER BY id",
        )?;
        for n in s.query_map(params![id], |r| {
            Ok(Node {
                node: r.get(0)?,
                at: r.get(1)?,
            })
        })? {
            d.path.push(n?);
        }
    }
    pending.seal_dirty(&tx, sealer)?;
    tx.execute_batch("DELETE FROM answers; DELETE FROM digits; DELETE FROM ivr_path;")?;
    tx.commit()?;
    Ok(ids.len())
}
