//! The operators' web console and the metrics listener: HTTP servers inside the
//! hotline, beside the control socket.
//!
//! Like the control socket, the console holds no live state: it asks the serve loop
//! through a channel ([`LiveRequest`]: set an operator's state, reload accounts), and
//! watches the boards the serve loop publishes ([`board::BoardFrame`] on a `watch`
//! channel, at most a few per second and only on change). Everything stored (voice
//! messages, calls, notes, the audit log) it reads and writes through the store, on
//! its own connections. `/metrics` asks the serve loop for its figures the same way.
//!
//! Shell: `web`, `http`, `db` and this file do I/O and read clocks; `sessions`,
//! `lockout`, `csrf`, `board`, `dates`, `export`, `pages` and `i18n` are pure, with
//! time passed in. See docs/console.md.

pub mod board;
pub mod csrf;
pub mod dates;
mod db;
pub mod export;
mod http;
pub mod i18n;
pub mod lockout;
pub mod pages;
pub mod sessions;
mod web;

use crate::config::Config;
use crate::metrics::{FiguresRequest, Metrics};
use board::BoardFrame;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// What the console asks of the running hotline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveCommand {
    /// Make an operator (by SIP username) available or paused.
    SetOperatorState { user: String, available: bool },
    /// Accounts were added, removed or given new passwords: reload them.
    OperatorsChanged,
}

/// A question to the serve loop; the answer is the new state or an error message.
#[derive(Debug)]
pub struct LiveRequest {
    pub command: LiveCommand,
    pub reply: oneshot::Sender<Result<String, String>>,
}

pub fn live_channel() -> (mpsc::Sender<LiveRequest>, mpsc::Receiver<LiveRequest>) {
    mpsc::channel(64)
}

/// How the console reaches the rest of the hotline.
pub struct Wiring {
    pub live: mpsc::Sender<LiveRequest>,
    pub board: watch::Receiver<Arc<BoardFrame>>,
    pub metrics: Arc<Metrics>,
    pub figures: mpsc::Sender<FiguresRequest>,
    /// The identities `hotline unseal` handed over, shared with the vault.
    pub keyring: crate::store::keyring::Keyring,
}

/// Where the listeners ended up (port 0 resolved).
#[derive(Debug, Default)]
pub struct Listening {
    pub console: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug)]
pub enum StartError {
    /// A configuration problem: `FILE: KEY: PROBLEM`.
    Config(String),
    Other(String),
}

const CONSOLE_LIMITS: http::Limits = http::Limits {
    connections: 1024,
    per_address: 64,
    header_timeout: Duration::from_secs(10),
    handshake_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_header_bytes: 16 * 1024,
};

const METRICS_LIMITS: http::Limits = http::Limits {
    connections: 32,
    per_address: 8,
    header_timeout: Duration::from_secs(10),
    handshake_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_header_bytes: 16 * 1024,
};

async fn bind(key: &str, addr: &str, cfg: &Config) -> Result<tokio::net::TcpListener, StartError> {
    let addr: SocketAddr = addr.parse().map_err(|_| {
        StartError::Config(format!(
            "{}: {key}: \"{addr}\" is not ADDR:PORT",
            cfg.source
        ))
    })?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Other(format!("{key} {addr}: {e}")))
}

/// Starts the listeners the configuration asks for. Must run inside the runtime.
pub async fn start(cfg: &Config, wiring: Wiring) -> Result<Listening, StartError> {
    let mut listening = Listening::default();
    if !cfg.console.listen.is_empty() {
        let c = &cfg.console;
        let calendar = dates::Calendar::load(&c.time_zone)
            .map_err(|e| StartError::Config(format!("{}: console.time_zone: {e}", cfg.source)))?;
        let tls = if c.tls {
            Some(
                http::tls_acceptor(&cfg.tls.certificate, &cfg.tls.private_key).map_err(
                    |(key, e)| StartError::Config(format!("{}: {key}: {e}", cfg.source)),
                )?,
            )
        } else {
            None
        };
        let recordings = cfg.recordings_dir();
        std::fs::create_dir_all(&recordings)
            .map_err(|e| StartError::Other(format!("{}: {e}", recordings.display())))?;
        let recordings_dir = std::fs::canonicalize(&recordings)
            .map_err(|e| StartError::Other(format!("{}: {e}", recordings.display())))?;
        let db = db::Db::open(&cfg.database_path(), 3)
            .map_err(|e| StartError::Other(format!("{}: {e}", cfg.database_path().display())))?;
        // Notes are the caller's details too: sealed to the same recipients.
        let note_sealer = crate::store::seal::Sealer::from_config(&cfg.storage.recipients)
            .map_err(|e| StartError::Config(format!("{}: storage.recipients: {e}", cfg.source)))?;
        let mut csrf_key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut csrf_key);
        let shared = Arc::new(web::Shared {
            default_lang: i18n::Lang::parse(&c.default_language).unwrap_or(i18n::Lang::Uk),
            secure_cookies: c.tls,
            trusted_proxies: c.trusted_proxies.clone(),
            data_dir: cfg.storage.data_dir.clone(),
            recordings_dir,
            realm: cfg.operators.realm.clone(),
            db,
            sessions: Mutex::new(sessions::Sessions::new(sessions::SessionLimits {
                idle: Duration::from_secs(c.session_idle_s),
                max_age: Duration::from_secs(c.session_max_s),
                per_account: c.max_sessions_per_account,
                total: 10_000,
            })),
            lockout: Mutex::new(lockout::Lockout::new(lockout::LockoutConfig {
                max_per_address: c.max_login_failures_per_address,
                max_per_account: c.max_login_failures_per_account,
                window: Duration::from_secs(c.login_failure_window_s),
                lockout: Duration::from_secs(c.lockout_s),
                max_addresses: 100_000,
            })),
            csrf_key,
            hashing: Semaphore::new(1),
            live: wiring.live.clone(),
            board: wiring.board.clone(),
            calendar,
            metrics: wiring.metrics.clone(),
            streams: web::stream_slots(),
            keyring: wiring.keyring.clone(),
            note_sealer,
            sealed_streams: web::sealed_stream_slots(),
        });
        let listener = bind("console.listen", &c.listen, cfg).await?;
        listening.console = listener.local_addr().ok();
        http::spawn(
            listener,
            web::console_router(shared),
            tls,
            CONSOLE_LIMITS,
            "console",
        );
    }
    if !cfg.metrics.listen.is_empty() {
        let listener = bind("metrics.listen", &cfg.metrics.listen, cfg).await?;
        listening.metrics = listener.local_addr().ok();
        http::spawn(
            listener,
            web::metrics_router(wiring.metrics, wiring.figures),
            None,
            METRICS_LIMITS,
            "metrics",
        );
    }
    Ok(listening)
}
