//! Local control socket between `hotline serve` and the other subcommands.
//!
//! A Unix socket `control.sock` in the data directory, mode 0600. One request per
//! connection: the client writes one JSON line (a [`ControlCommand`]), the server writes
//! one JSON line back and closes. The listener here only frames, parses and limits; what
//! a command means is decided by whoever reads the [`ControlRequest`] channel (the
//! server loop). The client side is blocking, for the CLI.
//!
//! Must not: act on commands itself, or accept connections from other users (the
//! socket file is private and lives in the private data directory).

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Longest request line accepted, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest reply the client reads (a queue snapshot can be long).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Time a client has to send its request, and the CLI waits for a reply.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// Requests queued for the server loop.
const CHANNEL_CAPACITY: usize = 64;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Waiting callers and operators, as the queue sees them now.
    Queue,
    /// Set an operator available or paused.
    OperatorState { name: String, state: String },
    /// Operator accounts were added, removed or given a new password: reload them.
    OperatorsChanged,
    /// Calls in progress and the SIP side's counters.
    Status,
    /// Each provider trunk's registration.
    Trunks,
    /// Hold this age identity (`AGE-SECRET-KEY-1…` lines) in memory to open sealed
    /// call details (`hotline unseal`).
    Unseal { identity: SecretText },
    /// Forget the identity (`hotline seal`).
    Seal,
    /// Whether sealing is on and whether the server holds an identity.
    SealStatus,
    /// The sealed details of these calls (database ids), opened with the identity.
    OpenCalls { calls: Vec<i64> },
}

/// A secret carried in a request: never printed by `Debug`, wiped when dropped.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    pub fn new(s: String) -> Self {
        SecretText(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(..)")
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// One parsed request; the server answers through `reply` with a JSON object
/// (`{"ok":true,...}` or `{"ok":false,"error":"..."}`).
#[derive(Debug)]
pub struct ControlRequest {
    pub command: ControlCommand,
    pub reply: oneshot::Sender<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("hotline is not running")]
    NotRunning,
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hotline did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("hotline sent a reply that is not a JSON object: {0}")]
    BadReply(String),
}

pub fn socket_path(cfg: &Config) -> PathBuf {
    cfg.storage.data_dir.join("control.sock")
}

fn error_reply(message: impl std::fmt::Display) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": message.to_string() })
}

/// Binds the control socket and serves it until the returned receiver is dropped (the
/// socket file is then removed). Must be called inside a tokio runtime.
///
/// A socket file left by a hotline that died is removed; one that still answers means
/// another hotline uses this data directory, which is an error.
pub fn spawn_listener(path: &Path) -> std::io::Result<mpsc::Receiver<ControlRequest>> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AddrInUse,
                        format!(
                            "{}: another hotline serves this data directory",
                            path.display()
                        ),
                    ))
                }
                Err(_) => {
                    tracing::info!(path = %path.display(), "removing a stale control socket");
                    std::fs::remove_file(path)?;
                }
            }
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{}: exists and is not a socket; remove it to let hotline create its control socket",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                _ = tx.closed() => break,
                a = listener.accept() => match a {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, tx).await {
                    tracing::debug!("control connection: {e}");
                }
                drop(permit);
            });
        }
        drop(listener);
        let _ = std::fs::remove_file(&path);
    });
    Ok(rx)
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    tx: mpsc::Sender<ControlRequest>,
) -> std::io::Result<()> {
    let (mut read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new((&mut read).take(MAX_REQUEST_BYTES as u64 + 1));
    let reply = match tokio::time::timeout(TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => error_reply("no request within 5 s"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => error_reply("request longer than 64 KiB"),
        // A line ended by the newline or by the client closing its side.
        Ok(Ok(_)) => {
            let parsed = serde_json::from_slice::<ControlCommand>(&line);
            // The line may carry an identity (unseal): wipe it as soon as it is parsed.
            zeroize::Zeroize::zeroize(&mut line);
            match parsed {
                Err(e) => error_reply(format!("bad request: {e}")),
                Ok(command) => ask_server(command, &tx).await,
            }
        }
    };
    zeroize::Zeroize::zeroize(&mut line);
    drop(reader);
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    tokio::time::timeout(TIMEOUT, async {
        write.write_all(&out).await?;
        write.shutdown().await?;
        // Closing with unread input would reset the connection and the client could
        // lose the reply (an over-long request): read a little more first.
        let mut sink = [0u8; 8192];
        let mut left: usize = 1024 * 1024;
        while left > 0 {
            match tokio::time::timeout(Duration::from_millis(200), read.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
        Ok(())
    })
    .await
    .unwrap_or(Ok(()))
}

async fn ask_server(
    command: ControlCommand,
    tx: &mpsc::Sender<ControlRequest>,
) -> serde_json::Value {
    let (reply, answer) = oneshot::channel();
    if tx.send(ControlRequest { command, reply }).await.is_err() {
        return error_reply("hotline is shutting down");
    }
    match tokio::time::timeout(TIMEOUT, answer).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => error_reply("hotline dropped the request"),
        Err(_) => error_reply("hotline did not answer in time"),
    }
}

/// Sends one command to the running hotline and returns its reply (blocking; at most
/// [`TIMEOUT`] for the whole exchange).
pub fn request(path: &Path, command: &ControlCommand) -> Result<serde_json::Value, ControlError> {
    use std::io::ErrorKind;
    let io = |source: std::io::Error| {
        if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            ControlError::Timeout
        } else {
            ControlError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(ControlError::NotRunning)
        }
        Err(e) => return Err(io(e)),
    };
    let mut line = zeroize::Zeroizing::new(
        serde_json::to_vec(command).map_err(|e| ControlError::BadReply(e.to_string()))?,
    );
    line.push(b'\n');
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.write_all(&line).map_err(io)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ControlError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.contains(&b'\n') {
            break;
        }
        if reply.len() > MAX_REPLY_BYTES {
            return Err(ControlError::BadReply("reply too long".into()));
        }
    }
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    if end == 0 {
        return Err(ControlError::BadReply("empty reply".into()));
    }
    match serde_json::from_slice::<serde_json::Value>(&reply[..end]) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(v) => Err(ControlError::BadReply(v.to_string())),
        Err(e) => Err(ControlError::BadReply(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Stands in for the server loop: answers every request from the channel.
    fn fake_server(
        mut rx: mpsc::Receiver<ControlRequest>,
    ) -> tokio::task::JoinHandle<Vec<ControlCommand>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(req) = rx.recv().await {
                let reply = match &req.command {
                    ControlCommand::Queue => json!({"ok": true, "callers": [], "operators": []}),
                    ControlCommand::OperatorState { name, state } if name == "anna" => {
                        json!({"ok": true, "state": state})
                    }
                    ControlCommand::OperatorState { name, .. } => {
                        json!({"ok": false, "error": format!("no operator named {name}")})
                    }
                    ControlCommand::OperatorsChanged
                    | ControlCommand::Status
                    | ControlCommand::Trunks => {
                        json!({"ok": true})
                    }
                    _ => json!({"ok": false, "error": "not here"}),
                };
                seen.push(req.command);
                let _ = req.reply.send(reply);
            }
            seen
        })
    }

    async fn blocking_request(
        path: &Path,
        cmd: ControlCommand,
    ) -> Result<serde_json::Value, ControlError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || request(&path, &cmd))
            .await
            .unwrap()
    }

    async fn raw(path: &Path, bytes: &[u8]) -> serde_json::Value {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        s.write_all(bytes).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with('\n'), "one line: {out:?}");
        serde_json::from_str(out.trim_end()).unwrap()
    }

    #[test]
    fn wire_format() {
        let cmd = ControlCommand::OperatorState {
            name: "Анна".into(),
            state: "paused".into(),
        };
        let text = serde_json::to_string(&cmd).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"operator_state","name":"Анна","state":"paused"}"#
        );
        assert_eq!(serde_json::from_str::<ControlCommand>(&text).unwrap(), cmd);
        assert_eq!(
            serde_json::to_string(&ControlCommand::Queue).unwrap(),
            r#"{"cmd":"queue"}"#
        );
        assert_eq!(
            serde_json::to_string(&ControlCommand::OperatorsChanged).unwrap(),
            r#"{"cmd":"operators_changed"}"#
        );
        let unseal = ControlCommand::Unseal {
            identity: SecretText::new("AGE-SECRET-KEY-1XYZ".into()),
        };
        assert_eq!(
            serde_json::to_string(&unseal).unwrap(),
            r#"{"cmd":"unseal","identity":"AGE-SECRET-KEY-1XYZ"}"#
        );
        assert!(
            !format!("{unseal:?}").contains("AGE-SECRET"),
            "Debug never shows the identity"
        );
        assert_eq!(
            serde_json::from_str::<ControlCommand>(r#"{"cmd":"open_calls","calls":[1,2]}"#)
                .unwrap(),
            ControlCommand::OpenCalls { calls: vec![1, 2] }
        );
    }

    #[tokio::test]
    async fn round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("control.sock");
        let rx = spawn_listener(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = fake_server(rx);
        let reply = blocking_request(&path, ControlCommand::Queue)
            .await
            .unwrap();
        assert_eq!(reply, json!({"ok": true, "callers": [], "operators": []}));
        let reply = blocking_request(
            &path,
            ControlCommand::OperatorState {
                name: "anna".into(),
                state: "available".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(reply, json!({"ok": true, "state": "available"}));
        let reply = blocking_request(
            &path,
            ControlCommand::OperatorState {
                name: "zed".into(),
                state: "available".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(reply["ok"], false);
        // A request without its newline, the writer closing its side, still counts.
        let reply = raw(&path, br#"{"cmd":"operators_changed"}"#).await;
        assert_eq!(reply, json!({"ok": true}));
        let reply = raw(&path, b"{\"cmd\":\"operators_changed\"}\n").await;
        assert_eq!(reply, json!({"ok": true}));
        // Several clients at once.
        let mut many = Vec::new();
        for _ in 0..20 {
            many.push(blocking_request(&path, ControlCommand::OperatorsChanged));
        }
        for r in many {
            assert_eq!(r.await.unwrap(), json!({"ok": true}));
        }
        server.abort();
        // With the server loop gone (receiver dropped), the socket goes away.
        let _ = server.await;
        for _ in 0..100 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!path.exists());
        assert!(matches!(
            blocking_request(&path, ControlCommand::Queue).await,
            Err(ControlError::NotRunning)
        ));
    }

    #[tokio::test]
    async fn malformed_requests_do_not_reach_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let mut rx = spawn_listener(&path).unwrap();
        for bad in [
            &b"not json\n"[..],
            b"{\"cmd\":\"reboot\"}\n",
            b"{\"cmd\":\"operator_state\",\"name\":\"anna\"}\n",
            b"[1,2]\n",
            b"\n",
            b"\xff\xfe\n",
        ] {
            let reply = raw(&path, bad).await;
            assert_eq!(reply["ok"], false, "{bad:?}");
            assert!(
                reply["error"].as_str().unwrap().starts_with("bad request"),
                "{reply}"
            );
        }
        let long = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let reply = raw(&path, &long).await;
        assert_eq!(reply["error"], "request longer than 64 KiB");
        assert!(rx.try_recv().is_err(), "nothing reached the server");
    }

    #[tokio::test]
    async fn silent_client_is_dropped_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let _rx = spawn_listener(&path).unwrap();
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let started = Instant::now();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(4));
        assert!(out.contains("no request"), "{out}");
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // A hotline that died left its socket file behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(matches!(
            blocking_request(&path, ControlCommand::Queue).await,
            Err(ControlError::NotRunning)
        ));
        let rx = spawn_listener(&path).unwrap();
        let server = fake_server(rx);
        assert_eq!(
            blocking_request(&path, ControlCommand::OperatorsChanged)
                .await
                .unwrap(),
            json!({"ok": true})
        );
        // A second hotline on the same data directory is refused and the first keeps
        // its socket.
        let err = spawn_listener(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("another hotline serves this data directory"),
            "{err}"
        );
        assert_eq!(
            blocking_request(&path, ControlCommand::OperatorsChanged)
                .await
                .unwrap(),
            json!({"ok": true})
        );
        server.abort();
        // Something that is not a socket is left alone.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(spawn_listener(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn missing_socket_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(&dir.path().join("control.sock"), &ControlCommand::Queue).unwrap_err();
        assert!(matches!(err, ControlError::NotRunning));
    }

    #[test]
    fn bad_replies_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for reply in [&b"oops\n"[..], b"[1]\n", b""] {
                let (mut s, _) = listener.accept().unwrap();
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut line)
                    .unwrap();
                s.write_all(reply).unwrap();
            }
        });
        for _ in 0..3 {
            let err = request(&path, &ControlCommand::Queue).unwrap_err();
            assert!(matches!(err, ControlError::BadReply(_)), "{err}");
        }
        server.join().unwrap();
    }

    #[test]
    fn server_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let hold = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = wait.recv();
            drop(s);
        });
        let started = Instant::now();
        let err = request(&path, &ControlCommand::Queue).unwrap_err();
        assert!(matches!(err, ControlError::Timeout), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(4900));
        assert!(started.elapsed() < Duration::from_secs(7));
        done.send(()).unwrap();
        hold.join().unwrap();
    }
}
