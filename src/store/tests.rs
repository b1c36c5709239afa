//! The store end to end: the writer's batches, sealing, queue events, reference codes
//! and the queries behind `hotline calls`.

use super::*;
use crate::call::Codec;
use crate::call::EndReason;
use crate::call::{CallEvent, CallId, Direction};
use std::sync::mpsc;

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
fn with_recipients_details_and_recordings_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hotline.db");
    let id = age::x25519::Identity::generate();
    let options = WriterOptions {
        sealer: seal::Sealer::new(vec![id.to_public()]),
        seal_caller: true,
        ..Default::default()
    };
    let (stored_tx, stored_rx) = mpsc::channel();
    let stored_tx = std::sync::Mutex::new(stored_tx);
    let tx = spawn_writer_with(
        path.clone(),
        Box::new(|a| Some(a.to_string())),
        options,
        Box::new(move |ev| {
            let _ = stored_tx.lock().unwrap().send(ev);
        }),
        SystemTime::now(),
    )
    .unwrap();
    let t = SystemTime::now();
    tx.send(StoreCommand::Event(CallEvent::Started {
        call: 1,
        sip_call_id: "abc@10.9.8.7".into(),
        from: Some("+79161234567".into()),
        to: "sip:hotline@127.0.0.1".into(),
        remote: "10.9.8.7:5070".parse().unwrap(),
        transport: "UDP",
        direction: Direction::Inbound,
        at: t,
    }))
    .unwrap();
    for (node, at) in [("greeting", t), ("unit", t)] {
        tx.send(StoreCommand::Node {
            call: 1,
            node: node.into(),
            at,
        })
        .unwrap();
    }
    flush(&tx);
    // Later batches replace the call's blob.
    for d in "12345#".chars() {
        tx.send(StoreCommand::Digit {
            call: 1,
            digit: d,
            source: "rfc4733".into(),
            media_ms: 1,
            at: t,
        })
        .unwrap();
    }
    tx.send(StoreCommand::Answer {
        call: 1,
        node: "unit".into(),
        key: "unit".into(),
        digits: "12345".into(),
        at: t,
    })
    .unwrap();
    let wav = dir.path().join("recordings/2024/01/02/x-voicemail.wav");
    let mut rec = crate::wav::WavRecorder::create(&wav, Default::default()).unwrap();
    rec.write_mono(&[7; 8000]).unwrap();
    let info = rec.finish().unwrap();
    tx.send(StoreCommand::Recording {
        call: 1,
        kind: "voicemail",
        info,
        partial: false,
        at: t,
    })
    .unwrap();
    tx.send(StoreCommand::Event(CallEvent::Ended {
        call: 1,
        reason: EndReason::CallerBye,
        at: t,
    }))
    .unwrap();
    // Checkpoint waits for the seal, then truncates the WAL.
    let (ftx, frx) = mpsc::channel();
    tx.send(StoreCommand::Checkpoint(ftx)).unwrap();
    frx.recv().unwrap();
    assert_eq!(
        stored_rx.try_recv().unwrap(),
        StoreEvent::RecordingStored { call: 1, ok: true },
        "row committed before the event"
    );
    assert!(!wav.exists(), "plaintext removed");
    let wal = std::fs::metadata(dir.path().join("hotline.db-wal")).map(|m| m.len());
    assert_eq!(wal.unwrap_or(0), 0, "WAL checkpointed and truncated");
    let conn = open_existing(&path).unwrap().unwrap();
    for table in ["answers", "digits", "ivr_path"] {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "nothing in clear in {table}");
    }
    let mut calls = list_calls(&conn, 10).unwrap();
    assert_eq!(calls[0].sip_call_id, "");
    assert_eq!(calls[0].from, None);
    assert_eq!(calls[0].remote_addr, None);
    assert_eq!(
        calls[0].end_reason.as_deref(),
        Some("caller-bye"),
        "times and outcomes stay clear"
    );
    let r = &calls[0].recordings[0];
    assert_eq!(r.path, "recordings/2024/01/02/x-voicemail.wav.age");
    assert_eq!(r.duration_ms, 1000);
    let sealed = std::fs::read(dir.path().join(&r.path)).unwrap();
    assert_eq!(r.sha256, hex::encode(sha2::Sha256::digest(&sealed)));
    use sha2::Digest;
    let n_blobs: i64 = conn
        .query_row("SELECT count(*) FROM call_sealed", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n_blobs, 1, "one blob per call, replaced as it grows");
    details::open_rows(&conn, std::slice::from_ref(&id), &mut calls).unwrap();
    let c = &calls[0];
    assert_eq!(c.sealed.as_deref(), Some("opened"));
    assert_eq!(c.answers["unit"], "12345");
    assert_eq!(c.digits, "12345#");
    assert_eq!(c.path, ["greeting", "unit"]);
    assert_eq!(c.from.as_deref(), Some("+79161234567"));
    assert_eq!(c.remote_addr.as_deref(), Some("10.9.8.7:5070"));
    assert_eq!(c.sip_call_id, "abc@10.9.8.7");
    let db = std::fs::read(&path).unwrap();
    for needle in [&b"12345"[..], b"+7916", b"10.9.8.7", b"greeting"] {
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "{} in the database file",
            String::from_utf8_lossy(needle)
        );
    }
}

#[test]
fn answers_stored_in_clear_are_sealed_when_sealing_is_turned_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hotline.db");
    let tx = spawn_writer(
        path.clone(),
        Box::new(|a| Some(a.to_string())),
        Box::new(|_| {}),
        SystemTime::now(),
    )
    .unwrap();
    start_call(&tx, 1);
    tx.send(StoreCommand::Answer {
        call: 1,
        node: "unit".into(),
        key: "unit".into(),
        digits: "54321".into(),
        at: SystemTime::now(),
    })
    .unwrap();
    flush(&tx);
    let id = age::x25519::Identity::generate();
    let sealer = seal::Sealer::new(vec![id.to_public()]).unwrap();
    let mut conn = open(&path).unwrap();
    assert_eq!(details::seal_clear_rows(&mut conn, &sealer).unwrap(), 1);
    let mut calls = list_calls(&conn, 10).unwrap();
    assert!(calls[0].answers.is_empty());
    details::open_rows(&conn, &[id], &mut calls).unwrap();
    assert_eq!(calls[0].answers["unit"], "54321");
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
