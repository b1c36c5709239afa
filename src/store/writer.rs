//! The store's writer thread: call events and call details arrive over a channel and
//! are written in batches, one transaction per batch, so a burst of call set-ups costs
//! one fsync, not hundreds. With sealing on, finished recordings go through the
//! sealing worker before their row is written, and answers, digits and IVR path are
//! kept per call and stored as one sealed blob. A voice message's commit is reported
//! back as `StoreEvent::RecordingStored`.

use super::{close_interrupted, details, open, rfc3339, seal, AddrFilter};
use crate::call::{CallEvent, CallId, Direction};
use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::SystemTime;

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
    /// Reply once everything sent before has been committed (recordings being sealed
    /// included).
    Flush(mpsc::Sender<()>),
    /// A recording the sealing worker finished with (sent by the worker itself).
    Sealed(Box<SealDone>),
    /// Like `Flush`, then checkpoint the WAL into the database file and truncate it,
    /// so that `hotline.db` alone is complete (clean shutdown).
    Checkpoint(mpsc::Sender<()>),
}

/// A recording handed to the sealing worker, and what became of it.
#[derive(Debug)]
pub struct SealDone {
    call: CallId,
    kind: &'static str,
    info: crate::call::RecordingInfo,
    partial: bool,
    at: SystemTime,
    result: Result<seal::SealedFile, seal::SealError>,
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

/// How the writer stores what concerns the caller, and who watches its batches.
#[derive(Default)]
pub struct WriterOptions {
    /// Called on the writer's thread around each batch (metrics).
    pub observer: Option<BatchObserver>,
    /// Seal recordings and call details to these recipients (None: store in clear).
    pub sealer: Option<std::sync::Arc<seal::Sealer>>,
    /// Also seal the caller's number and address (the caller-ID policy keeps them in
    /// clear form; a keyed hash stays in the clear column so repeat callers match).
    pub seal_caller: bool,
}

/// What the writer reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A voice message's row is committed (`ok`), or could not be.
    RecordingStored { call: CallId, ok: bool },
}

/// Starts the writer thread (after marking calls an earlier stop left open as
/// interrupted at `now`). Events are batched: one transaction per wake-up. `events`
/// is called on the writer's thread.
pub fn spawn_writer(
    path: PathBuf,
    addr_filter: AddrFilter,
    events: Box<dyn Fn(StoreEvent) + Send>,
    now: SystemTime,
) -> rusqlite::Result<mpsc::Sender<StoreCommand>> {
    spawn_writer_with(path, addr_filter, WriterOptions::default(), events, now)
}

/// [`spawn_writer`] with sealing: recordings go through the sealing worker before their
/// row is written, and answers, digits and IVR path are stored sealed.
pub fn spawn_writer_with(
    path: PathBuf,
    addr_filter: AddrFilter,
    options: WriterOptions,
    events: Box<dyn Fn(StoreEvent) + Send>,
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
    let observer = options.observer.unwrap_or_else(|| Box::new(|_| {}));
    let thread_err = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    let sealing = match &options.sealer {
        Some(sealer) => {
            let back = std::sync::Mutex::new(tx.clone());
            let jobs = seal::spawn_worker(
                sealer.clone(),
                move |done: SealDone, result: Result<seal::SealedFile, seal::SealError>| {
                    if let Ok(back) = back.lock() {
                        let _ =
                            back.send(StoreCommand::Sealed(Box::new(SealDone { result, ..done })));
                    }
                },
            )
            .map_err(thread_err)?;
            Some(Sealing {
                sealer: sealer.clone(),
                jobs,
                seal_caller: options.seal_caller,
                pending: details::Pending::default(),
            })
        }
        None => None,
    };
    let data_dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."));
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || writer(conn, rx, addr_filter, events, sealing, data_dir, observer))
        .map_err(thread_err)?;
    Ok(tx)
}

/// The writer's sealing state: the worker's queue and the details of calls in progress.
struct Sealing {
    sealer: std::sync::Arc<seal::Sealer>,
    jobs: mpsc::Sender<seal::SealJob<SealDone>>,
    seal_caller: bool,
    pending: details::Pending,
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<StoreCommand>,
    addr_filter: AddrFilter,
    events: Box<dyn Fn(StoreEvent) + Send>,
    mut sealing: Option<Sealing>,
    data_dir: PathBuf,
    mut observer: BatchObserver,
) {
    let mut rows: HashMap<CallId, i64> = HashMap::new();
    let mut ended: std::collections::VecDeque<CallId> = std::collections::VecDeque::new();
    // Recordings at the sealing worker, and the flushes waiting for them.
    let mut sealing_now = 0usize;
    let mut waiting: Vec<(mpsc::Sender<()>, bool)> = Vec::new();
    // Whether SQLite's caches hold memory from writes since the last release.
    let mut holding = false;
    loop {
        let first = if holding {
            match rx.recv_timeout(RELEASE_AFTER_IDLE) {
                Ok(c) => c,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    release_idle_memory(&conn);
                    holding = false;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(c) => c,
                Err(_) => break,
            }
        };
        holding = true;
        let mut batch = vec![first];
        while batch.len() < 2000 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let mut replies = Vec::new();
        let mut ended_now = Vec::new();
        let commands = batch.len();
        observer(BatchStage::Begin);
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for cmd in batch {
                match cmd {
                    StoreCommand::Flush(reply) => flushes.push((reply, false)),
                    StoreCommand::Checkpoint(reply) => flushes.push((reply, true)),
                    StoreCommand::Event(ev) => {
                        if let CallEvent::Ended { call, .. } = &ev {
                            ended.push_back(*call);
                            ended_now.push(*call);
                        }
                        apply_event(&tx, &mut rows, &addr_filter, sealing.as_mut(), ev)?
                    }
                    StoreCommand::Recording {
                        call,
                        kind,
                        info,
                        partial,
                        at,
                    } => {
                        let context = SealDone {
                            call,
                            kind,
                            info,
                            partial,
                            at,
                            result: Err(seal::SealError::Encrypt("not sealed".into())),
                        };
                        match &sealing {
                            Some(s) => {
                                let plain = context.info.path.clone();
                                match s.jobs.send(seal::SealJob { plain, context }) {
                                    Ok(()) => sealing_now += 1,
                                    Err(mpsc::SendError(job)) => {
                                        tracing::error!(
                                            call,
                                            "sealing worker is gone: recording kept in clear"
                                        );
                                        let c = job.context;
                                        let ok = insert_recording(
                                            &tx, &rows, &data_dir, c.call, c.kind, &c.info,
                                            c.partial, c.at,
                                        )?;
                                        if c.kind == "voicemail" {
                                            replies.push((c.call, ok));
                                        }
                                    }
                                }
                            }
                            None => {
                                let c = context;
                                let ok = insert_recording(
                                    &tx, &rows, &data_dir, c.call, c.kind, &c.info, c.partial, c.at,
                                )?;
                                if c.kind == "voicemail" {
                                    replies.push((c.call, ok));
                                }
                            }
                        }
                    }
                    StoreCommand::Sealed(done) => {
                        sealing_now = sealing_now.saturating_sub(1);
                        let SealDone {
                            call,
                            kind,
                            mut info,
                            partial,
                            at,
                            result,
                        } = *done;
                        match result {
                            Ok(sealed) => {
                                info.path = sealed.path;
                                info.size_bytes = sealed.size_bytes;
                                info.sha256_hex = sealed.sha256_hex;
                            }
                            // The plaintext is durable and named by the row; the
                            // next start-up seals it and updates the row.
                            Err(e) => tracing::error!(
                                call,
                                "recording not sealed, kept in clear until the next start: {e}"
                            ),
                        }
                        let ok = insert_recording(
                            &tx, &rows, &data_dir, call, kind, &info, partial, at,
                        )?;
                        if kind == "voicemail" {
                            replies.push((call, ok));
                        }
                    }
                    other => apply_detail(&tx, &rows, sealing.as_mut(), other)?,
                }
            }
            if let Some(s) = sealing.as_mut() {
                s.pending.seal_dirty(&tx, &s.sealer)?;
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
        if let Some(s) = sealing.as_mut() {
            for call in ended_now {
                if let Some(id) = rows.get(&call) {
                    s.pending.forget(*id);
                }
            }
        }
        for (call, ok) in replies {
            events(StoreEvent::RecordingStored {
                call,
                ok: ok && committed,
            });
        }
        waiting.extend(flushes);
        if sealing_now == 0 {
            for (f, checkpoint) in waiting.drain(..) {
                if checkpoint {
                    if let Err(e) =
                        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    {
                        tracing::error!("WAL checkpoint failed: {e}");
                    }
                }
                let _ = f.send(());
            }
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

/// Quiet time after which the writer gives back what a burst of writes left in
/// SQLite's page cache: each connection keeps up to 2 MB, which stayed after every
/// burst of calls (`docs/soak-and-memory.md`).
const RELEASE_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// SQLite allocates through the C library's malloc, not the Rust allocator, so the
/// pages it frees go back to the system only once that heap is trimmed too.
fn release_idle_memory(conn: &Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
        tracing::warn!("could not release the database cache: {e}");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn apply_event(
    tx: &rusqlite::Transaction,
    rows: &mut HashMap<CallId, i64>,
    addr_filter: &AddrFilter,
    sealing: Option<&mut Sealing>,
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
            let mut sip_call_id = sip_call_id;
            let mut from = from;
            let mut remote = addr_filter(&remote.to_string());
            // With sealing on, the Call-ID (phones often put their address in it) and
            // a number or address kept in clear form go into the sealed details.
            let mut sealed_part = None;
            if let Some(s) = &sealing {
                let caller = s.seal_caller;
                let mut part = details::CallDetails::default();
                part.sip_call_id = Some(std::mem::take(&mut sip_call_id));
                if caller {
                    part.from = from.take();
                    part.remote_addr = remote.take();
                }
                sealed_part = Some(part);
            }
            tx.prepare_cached(
                "INSERT INTO calls (sip_call_id, direction, from_id, to_uri, remote_addr, transport, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                sip_call_id,
                dir,
                from,
                to,
                remote,
                transport,
                rfc3339(at)
            ])?;
            let id = tx.last_insert_rowid();
            rows.insert(call, id);
            if let (Some(s), Some(part)) = (sealing, sealed_part) {
                s.pending.get(id).merge(part);
            }
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

#[allow(clippy::too_many_arguments)]
fn insert_recording(
    tx: &rusqlite::Transaction,
    rows: &HashMap<CallId, i64>,
    data_dir: &Path,
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
    // Relative to the data directory, so a restored copy works wherever it is put.
    let path = path
        .strip_prefix(data_dir)
        .map(Path::to_path_buf)
        .unwrap_or(path);
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
    sealing: Option<&mut Sealing>,
    cmd: StoreCommand,
) -> rusqlite::Result<()> {
    let cmd = match sealing {
        Some(s) => match seal_detail(rows, s, cmd) {
            Some(cmd) => cmd,
            None => return Ok(()),
        },
        None => cmd,
    };
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
        StoreCommand::Event(_)
        | StoreCommand::Recording { .. }
        | StoreCommand::Flush(_)
        | StoreCommand::Sealed(_)
        | StoreCommand::Checkpoint(_) => {}
    }
    Ok(())
}

/// Takes the answers, digits and IVR nodes into the sealed details of their call;
/// gives back every other command.
fn seal_detail(
    rows: &HashMap<CallId, i64>,
    s: &mut Sealing,
    cmd: StoreCommand,
) -> Option<StoreCommand> {
    match cmd {
        StoreCommand::Answer {
            call,
            node,
            key,
            digits,
            at,
        } => {
            if let Some(id) = rows.get(&call) {
                s.pending.get(*id).answers.push(details::Answer {
                    node,
                    key,
                    digits,
                    at: rfc3339(at),
                });
            }
            None
        }
        StoreCommand::Node { call, node, at } => {
            if let Some(id) = rows.get(&call) {
                s.pending.get(*id).path.push(details::Node {
                    node,
                    at: rfc3339(at),
                });
            }
            None
        }
        StoreCommand::Digit {
            call,
            digit,
            source,
            media_ms,
            at,
        } => {
            if let Some(id) = rows.get(&call) {
                s.pending.get(*id).digits.push(details::Digit {
                    digit: digit.to_string(),
                    source,
                    media_ms,
                    at: rfc3339(at),
                });
            }
            None
        }
        other => Some(other),
    }
}
