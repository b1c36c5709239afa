//! What the console shows of sealed calls. A call's answers, digits and IVR path are
//! sealed per call (`details`), a note's body per note (sealed to the same recipients
//! when it is written), recordings per file. While the server is sealed the console
//! gets each row marked `"locked"` and nothing more; while unsealed the details are
//! opened here, in memory, with the identities `hotline unseal` handed over, and
//! marked `"opened"` (as `hotline calls --json` does).
//!
//! A value that does not open (sealed to a key the server was not given) stays
//! locked; the log names the call by database id only.

use super::console::{InboxRow, Note};
use super::details::{self, CallDetails};
use super::keyring::Keyring;
use super::seal::{open_bytes, SealError, Sealer};
use super::CallRow;
use age::x25519;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// The details are sealed and were not opened.
pub const LOCKED: &str = "locked";
/// The details are sealed and were opened for this view.
pub const OPENED: &str = "opened";

/// Marks the rows whose details are sealed, and opens them while unsealed.
pub fn open_calls(
    conn: &Connection,
    keyring: &Keyring,
    rows: &mut [CallRow],
) -> rusqlite::Result<()> {
    let sealed = details::mark_sealed(conn, rows)?;
    if sealed.is_empty() || !keyring.is_unsealed() {
        return Ok(());
    }
    let opened = open_ids(conn, keyring, &sealed)?;
    for r in rows.iter_mut() {
        if let Some(d) = opened.get(&r.id) {
            d.apply_to(r);
        }
    }
    Ok(())
}

/// The same for the inbox's rows: their answers, and whether they are sealed.
pub fn open_inbox(
    conn: &Connection,
    keyring: &Keyring,
    rows: &mut [InboxRow],
) -> rusqlite::Result<()> {
    let ids: Vec<i64> = rows.iter().map(|r| r.call_id).collect();
    let sealed: Vec<i64> = {
        let mut stmt =
            conn.prepare_cached("SELECT 1 FROM call_sealed WHERE call_id = ?1 LIMIT 1")?;
        let mut out = Vec::new();
        for id in ids {
            if !out.contains(&id) && stmt.exists([id])? {
                out.push(id);
            }
        }
        out
    };
    if sealed.is_empty() {
        return Ok(());
    }
    let opened = if keyring.is_unsealed() {
        open_ids(conn, keyring, &sealed)?
    } else {
        HashMap::new()
    };
    for r in rows.iter_mut().filter(|r| sealed.contains(&r.call_id)) {
        match opened.get(&r.call_id) {
            Some(d) => {
                r.answers = answer_pairs(d);
                r.sealed = Some(OPENED.into());
            }
            None => r.sealed = Some(LOCKED.into()),
        }
    }
    Ok(())
}

fn open_ids(
    conn: &Connection,
    keyring: &Keyring,
    ids: &[i64],
) -> rusqlite::Result<HashMap<i64, CallDetails>> {
    let blobs = details::load_blobs(conn, ids)?;
    Ok(keyring
        .with(|identities| {
            blobs
                .iter()
                .filter_map(|(id, b)| match details::open_details(identities, b) {
                    Ok(d) => Some((*id, d)),
                    Err(e) => {
                        tracing::warn!(call = *id, "sealed details do not open: {e}");
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Answers in the order given, a later answer to the same question replacing the
/// earlier one (as the clear `answers` rows are shown).
fn answer_pairs(d: &CallDetails) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for a in &d.answers {
        match out.iter_mut().find(|(k, _)| *k == a.key) {
            Some(slot) => slot.1 = a.digits.clone(),
            None => out.push((a.key.clone(), a.digits.clone())),
        }
    }
    out
}

/// A note's sealed form: JSON, so the padding `seal_bytes` adds is whitespace that
/// the reader ignores.
#[derive(Serialize, Deserialize)]
struct SealedNote<'a> {
    body: std::borrow::Cow<'a, str>,
}

/// Seals a note's body to the recipients.
pub fn seal_note(sealer: &Sealer, body: &str) -> Result<Vec<u8>, SealError> {
    let json =
        Zeroizing::new(serde_json::to_vec(&SealedNote { body: body.into() }).unwrap_or_default());
    sealer.seal_bytes(&json)
}

/// Opens a sealed note's body.
pub fn open_note(identities: &[x25519::Identity], blob: &[u8]) -> Result<String, String> {
    let plain = open_bytes(identities, blob)?;
    let note: SealedNote = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
    Ok(note.body.into_owned())
}

/// Opens the sealed notes among `notes` with `identities`; Err names the first that
/// does not open.
pub fn open_notes_with(identities: &[x25519::Identity], notes: &mut [Note]) -> Result<(), String> {
    for n in notes.iter_mut() {
        if let Some(blob) = n.sealed_body.take() {
            n.body = open_note(identities, &blob).map_err(|e| format!("note {}: {e}", n.id))?;
            n.sealed = Some(OPENED.into());
        }
    }
    Ok(())
}

/// Opens the sealed notes while unsealed; those that stay sealed keep an empty body
/// and are marked locked.
pub fn open_notes(keyring: &Keyring, notes: &mut [Note]) {
    keyring.with(|identities| {
        for n in notes.iter_mut() {
            if let Some(blob) = &n.sealed_body {
                match open_note(identities, blob) {
                    Ok(body) => {
                        n.body = body;
                        n.sealed = Some(OPENED.into());
                        n.sealed_body = None;
                    }
                    Err(e) => tracing::warn!(note = n.id, "sealed note does not open: {e}"),
                }
            }
        }
    });
}

/// Seals the notes written in clear before recipients were set (start-up, with
/// sealing on) and empties their clear column (`secure_delete` zeroes the old text
/// in the file). Returns how many were sealed.
pub fn seal_clear_notes(conn: &mut Connection, sealer: &Sealer) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let clear: Vec<(i64, String)> = {
        let mut stmt =
            tx.prepare("SELECT id, body FROM call_notes WHERE body_sealed IS NULL AND body != ''")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, body) in &clear {
        let body = Zeroizing::new(body.clone());
        let blob = seal_note(sealer, &body)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.execute(
            "UPDATE call_notes SET body = '', body_sealed = ?1 WHERE id = ?2",
            rusqlite::params![blob, id],
        )?;
    }
    tx.commit()?;
    Ok(clear.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::console::{add_note_sealed, inbox, notes};
    use std::time::SystemTime;

    fn sample() -> (
        tempfile::TempDir,
        Connection,
        x25519::Identity,
        std::sync::Arc<Sealer>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("h.db")).unwrap();
        let id = x25519::Identity::generate();
        let sealer = Sealer::new(vec![id.to_public()]).unwrap();
        conn.execute_batch(
            "INSERT INTO calls (id, sip_call_id, direction, to_uri, transport, started_at)
             VALUES (1, '', 'inbound', 't', 'UDP', '2024-05-01T08:00:00Z'),
                    (2, '', 'inbound', 't', 'UDP', '2024-05-01T09:00:00Z');
             INSERT INTO recordings (id, call_id, kind, path, duration_ms, size_bytes, sha256, created_at)
             VALUES (10, 1, 'voicemail', 'recordings/a.wav.age', 1000, 1, 'x', '2024-05-01T08:01:00Z'),
                    (11, 2, 'voicemail', 'recordings/b.wav', 1000, 1, 'x', '2024-05-01T09:01:00Z');
             INSERT INTO answers (call_id, node, key, digits, answered_at)
             VALUES (2, 'zone', 'zone', '7', 'x');",
        )
        .unwrap();
        let blob = sealer
            .seal_bytes(br#"{"answers":[{"node":"unit","key":"unit","digits":"12345","at":"x"},{"node":"unit","key":"unit","digits":"54321","at":"y"}],"path":[{"node":"start","at":"x"}]}"#)
            .unwrap();
        conn.execute(
            "INSERT INTO call_sealed (call_id, seq, blob) VALUES (1, 1, ?1)",
            [blob],
        )
        .unwrap();
        (dir, conn, id, sealer)
    }

    #[test]
    fn sealed_rows_are_locked_until_unsealed() {
        let (_d, conn, id, _) = sample();
        let sealed = Keyring::default();
        let mut rows = crate::store::console::calls_by_ids(&conn, &[1, 2]).unwrap();
        open_calls(&conn, &sealed, &mut rows).unwrap();
        let (c2, c1) = (&rows[0], &rows[1]);
        assert_eq!(c1.sealed.as_deref(), Some(LOCKED));
        assert!(c1.answers.is_empty() && c1.path.is_empty());
        assert_eq!(c2.sealed, None, "a call stored in clear");
        assert_eq!(c2.answers["zone"], "7");
        let mut inbox_rows = inbox(&conn, 10, 0).unwrap();
        open_inbox(&conn, &sealed, &mut inbox_rows).unwrap();
        let sealed_row = inbox_rows.iter().find(|r| r.call_id == 1).unwrap();
        assert_eq!(sealed_row.sealed.as_deref(), Some(LOCKED));
        assert!(sealed_row.answers.is_empty());
        assert!(sealed_row.recording_sealed);
        let clear_row = inbox_rows.iter().find(|r| r.call_id == 2).unwrap();
        assert_eq!(clear_row.sealed, None);
        assert!(!clear_row.recording_sealed);

        let unsealed = Keyring::holding(vec![id]);
        let mut rows = crate::store::console::calls_by_ids(&conn, &[1]).unwrap();
        open_calls(&conn, &unsealed, &mut rows).unwrap();
        assert_eq!(rows[0].sealed.as_deref(), Some(OPENED));
        assert_eq!(rows[0].answers["unit"], "54321");
        assert_eq!(rows[0].path, ["start"]);
        let mut inbox_rows = inbox(&conn, 10, 0).unwrap();
        open_inbox(&conn, &unsealed, &mut inbox_rows).unwrap();
        let row = inbox_rows.iter().find(|r| r.call_id == 1).unwrap();
        assert_eq!(row.sealed.as_deref(), Some(OPENED));
        assert_eq!(row.answers, [("unit".to_string(), "54321".to_string())]);

        // A key the server was not given opens nothing: the row stays locked.
        let stranger = Keyring::holding(vec![x25519::Identity::generate()]);
        let mut rows = crate::store::console::calls_by_ids(&conn, &[1]).unwrap();
        open_calls(&conn, &stranger, &mut rows).unwrap();
        assert_eq!(rows[0].sealed.as_deref(), Some(LOCKED));
        assert!(rows[0].answers.is_empty());
    }

    #[test]
    fn sealed_notes_keep_no_text_and_open_with_the_key() {
        let (_d, mut conn, id, sealer) = sample();
        let now = SystemTime::UNIX_EPOCH;
        let text = "called back: Kharkiv, unit 4242";
        add_note_sealed(&mut conn, 1, "anna", text, Some(&sealer), now).unwrap();
        add_note_sealed(&mut conn, 1, "anna", "clear one", None, now).unwrap();
        let stored: Vec<(String, Option<Vec<u8>>)> = conn
            .prepare("SELECT body, body_sealed FROM call_notes ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored[0].0, "");
        let blob = stored[0].1.as_ref().unwrap();
        assert!(
            blob.len() > 256,
            "an age file around a body padded to 256 bytes"
        );
        assert!(!String::from_utf8_lossy(blob).contains("4242"));
        assert_eq!(stored[1], ("clear one".to_string(), None));
        let detail: String = conn
            .query_row("SELECT group_concat(detail, '|') FROM audit_log", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!detail.contains("4242") && !detail.contains("clear one"));

        let mut n = notes(&conn, 1).unwrap();
        open_notes(&Keyring::default(), &mut n);
        assert_eq!(n[0].sealed.as_deref(), Some(LOCKED));
        assert_eq!(n[0].body, "");
        assert_eq!(n[1].sealed, None);
        assert_eq!(n[1].body, "clear one");
        open_notes(&Keyring::holding(vec![id.clone()]), &mut n);
        assert_eq!(n[0].sealed.as_deref(), Some(OPENED));
        assert_eq!(n[0].body, text);
        let mut n = notes(&conn, 1).unwrap();
        assert!(open_notes_with(&[x25519::Identity::generate()], &mut n).is_err());

        // Sealing turned on later: the clear note is sealed at the next start.
        assert_eq!(seal_clear_notes(&mut conn, &sealer).unwrap(), 1);
        assert_eq!(seal_clear_notes(&mut conn, &sealer).unwrap(), 0);
        let mut n = notes(&conn, 1).unwrap();
        assert!(n.iter().all(|n| n.body.is_empty()));
        open_notes_with(&[id], &mut n).unwrap();
        assert_eq!(n[1].body, "clear one");
    }
}
