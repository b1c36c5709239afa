//! The console's routes: logins and sessions, the pages, the board's event stream,
//! playback, notes, handled marks, exports, account administration, and the
//! `/metrics` route of the metrics listener.
//!
//! Who may do what is decided here: every page needs a live session whose account
//! still exists with the password it logged in with; every state-changing request
//! needs the session's CSRF token; supervisor pages answer 403 to operators. Reads the
//! clock and the operating system's randomness (tokens, salts); the rules themselves
//! live in `sessions`, `lockout` and `csrf`, with time passed in.

// A refusal is a ready response (a page or a JSON error) that handlers return with
// `?`; boxing it would only add an allocation per refusal.
#![allow(clippy::result_large_err)]

use super::board::BoardFrame;
use super::csrf;
use super::dates::{parse_date, Calendar};
use super::db::{Db, DbError};
use super::export;
use super::http::Peer;
use super::i18n::{tr, trf, Lang};
use super::lockout::{Lockout, Verdict};
use super::pages::{self, HistoryForm, NewPassword, PageCtx, Search};
use super::sessions::Sessions;
use super::{LiveCommand, LiveRequest};
use crate::metrics::{FiguresRequest, Metrics};
use crate::store::console::{self as sc, AuditEntry, CallFilter, ChangeError, Outcome};
use crate::store::keyring::Keyring;
use crate::store::seal::Sealer;
use crate::store::sealed_view;
use crate::store::{OperatorError, Role};
use axum::body::Body;
use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Form, Json, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

const SESSION_COOKIE: &str = "hl_session";
const LOGIN_COOKIE: &str = "hl_login";
/// Largest request body (forms, JSON): a note is at most 4000 characters.
pub const MAX_BODY: usize = 64 * 1024;
/// Board streams open at once, in all and per session.
const MAX_STREAMS: usize = 512;
/// A board stream re-checks its session (account, password) this often.
const STREAM_RECHECK: Duration = Duration::from_secs(30);
/// Rows per page.
const PAGE_ROWS: usize = 100;
const HISTORY_ROWS: usize = 200;
/// Most rows an export writes.
const EXPORT_MAX_ROWS: usize = 200_000;
/// How long the serve loop may take to answer.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Sealed recordings decrypted for playback at once. Each is decrypted as it is
/// sent (age's 64 KiB chunks, seeking for Range requests), never whole: one holds
/// about 0.5 MiB, and costs CPU that the media clock shares.
pub const MAX_SEALED_STREAMS: usize = 8;
/// Longest a decrypted stream may stay open (a player that never finishes reading).
const SEALED_STREAM_MAX: Duration = Duration::from_secs(3600);
const SEALED_CHUNK: usize = 64 * 1024;

/// What the routes share.
pub struct Shared {
    pub default_lang: Lang,
    pub secure_cookies: bool,
    pub trusted_proxies: Vec<IpAddr>,
    pub data_dir: PathBuf,
    /// Canonical: every recording served must resolve inside it.
    pub recordings_dir: PathBuf,
    pub realm: String,
    pub db: Db,
    pub sessions: Mutex<Sessions>,
    pub lockout: Mutex<Lockout>,
    pub csrf_key: [u8; 32],
    /// One password check at a time: Argon2id is slow on purpose, and the CPU is the
    /// media clock's too.
    pub hashing: Semaphore,
    pub live: mpsc::Sender<LiveRequest>,
    pub board: watch::Receiver<Arc<BoardFrame>>,
    pub calendar: Calendar,
    pub metrics: Arc<Metrics>,
    pub streams: Arc<Semaphore>,
    /// The identities while the server is unsealed: sealed details and recordings
    /// open only then.
    pub keyring: Keyring,
    /// Seals notes when `storage.recipients` is set.
    pub note_sealer: Option<Arc<Sealer>>,
    pub sealed_streams: Arc<Semaphore>,
}

pub fn stream_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_STREAMS))
}

pub fn sealed_stream_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_SEALED_STREAMS))
}

type Sh = State<Arc<Shared>>;

pub fn console_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(board_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/language", post(language))
        .route("/events", get(events))
        .route("/api/operators/state", post(operator_state))
        .route("/inbox", get(inbox))
        .route("/calls/{id}", get(call_page))
        .route("/calls/{id}/notes", post(add_note))
        .route("/calls/{id}/handled", post(set_handled))
        .route("/recordings/{id}", get(recording))
        .route("/history", get(history))
        .route("/history/export", post(export_csv))
        .route(
            "/admin/operators",
            get(operators_page).post(operators_change),
        )
        .route("/admin/audit", get(audit_page))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(style))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            shared.secure_cookies,
            security_headers,
        ))
        .with_state(shared)
}

/// Headers every answer carries: nothing loaded from elsewhere, no inline script, no
/// framing, no referrer, nothing cached.
async fn security_headers(State(tls): State<bool>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
         object-src 'none'; frame-ancestors 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    if tls {
        set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    res
}

// ---- sessions ------------------------------------------------------------------------

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(
    sh: &Shared,
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<u64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(s) = max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    if sh.secure_cookies {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The client's address: the peer, or what a trusted reverse proxy says it is.
fn client_ip(sh: &Shared, peer: &Peer, headers: &HeaderMap) -> IpAddr {
    let ip = peer.0.ip();
    if !sh.trusted_proxies.contains(&ip) {
        return ip;
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(ip)
}

/// A logged-in user.
#[derive(Clone)]
struct Auth {
    token: String,
    account: String,
    user: String,
    role: Role,
    lang: Lang,
    csrf: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Page,
    Api,
}

fn api_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"ok": false, "error": message})),
    )
        .into_response()
}

fn page_error(lang: Lang, status: StatusCode, title_key: &str, message: &str) -> Response {
    (
        status,
        Html(pages::error(lang, tr(lang, title_key), message).into_string()),
    )
        .into_response()
}

fn refusal(kind: Kind, lang: Lang, status: StatusCode, key: &str) -> Response {
    match kind {
        Kind::Api => api_error(status, tr(Lang::En, key)),
        Kind::Page => {
            let title = match status {
                StatusCode::FORBIDDEN => "error.forbidden_title",
                StatusCode::NOT_FOUND => "error.not_found_title",
                _ => "error.bad_request_title",
            };
            page_error(lang, status, title, tr(lang, key))
        }
    }
}

fn server_error(kind: Kind, lang: Lang, e: impl std::fmt::Display) -> Response {
    tracing::error!("console: {e}");
    match kind {
        Kind::Api => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            tr(Lang::En, "error.server"),
        ),
        Kind::Page => page_error(
            lang,
            StatusCode::INTERNAL_SERVER_ERROR,
            "error.bad_request_title",
            tr(lang, "error.server"),
        ),
    }
}

impl From<DbError> for Response {
    fn from(e: DbError) -> Response {
        server_error(Kind::Page, Lang::En, e)
    }
}

/// The session of this request, checked against the account as stored now.
async fn auth(sh: &Arc<Shared>, headers: &HeaderMap, kind: Kind) -> Result<Auth, Response> {
    let login = |sh: &Shared| match kind {
        Kind::Page => Redirect::to("/login?expired=1").into_response(),
        Kind::Api => api_error(
            StatusCode::UNAUTHORIZED,
            tr(sh.default_lang, "login.expired"),
        ),
    };
    let Some(token) = cookie(headers, SESSION_COOKIE).map(str::to_string) else {
        return Err(login(sh));
    };
    let (account, generation, csrf) = {
        let mut sessions = sh.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.touch(&token, Instant::now()) {
            Some(s) => (
                s.account.clone(),
                s.password_generation.clone(),
                s.csrf.clone(),
            ),
            None => return Err(login(sh)),
        }
    };
    let name = account.clone();
    let stored = sh
        .db
        .run(move |c| crate::store::web_account(c, &name).map_err(DbError::from))
        .await
        .map_err(|e| server_error(kind, sh.default_lang, e))?;
    match stored {
        Some(a) if a.password_changed_at == generation => Ok(Auth {
            token,
            lang: a
                .language
                .as_deref()
                .and_then(Lang::parse)
                .unwrap_or(sh.default_lang),
            account,
            user: a.sip_username,
            role: a.role,
            csrf,
        }),
        _ => {
            // Removed, or a new password: every session of the account ends.
            sh.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove_account(&account);
            Err(login(sh))
        }
    }
}

fn check_csrf(auth: &Auth, presented: Option<&str>, kind: Kind) -> Result<(), Response> {
    if csrf::matches(&auth.csrf, presented) {
        Ok(())
    } else {
        Err(refusal(
            kind,
            auth.lang,
            StatusCode::FORBIDDEN,
            "error.csrf",
        ))
    }
}

fn supervisor(auth: &Auth, kind: Kind) -> Result<(), Response> {
    if auth.role == Role::Supervisor {
        Ok(())
    } else {
        Err(refusal(
            kind,
            auth.lang,
            StatusCode::FORBIDDEN,
            "error.forbidden",
        ))
    }
}

fn ctx<'a>(sh: &'a Shared, a: &'a Auth) -> PageCtx<'a> {
    PageCtx {
        lang: a.lang,
        account: &a.account,
        user: &a.user,
        role: a.role,
        csrf: &a.csrf,
        cal: &sh.calendar,
        unsealed: sh.keyring.is_unsealed(),
    }
}

fn html(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// A form or query that did not parse (too large, malformed).
fn rejected(kind: Kind, lang: Lang, status: StatusCode, detail: &str) -> Response {
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        tr(lang, "error.too_large").to_string()
    } else {
        detail.to_string()
    };
    match kind {
        Kind::Api => api_error(status, &message),
        Kind::Page => page_error(lang, status, "error.bad_request_title", &message),
    }
}

fn form<T>(r: Result<Form<T>, FormRejection>, lang: Lang) -> Result<T, Response> {
    r.map(|Form(t)| t)
        .map_err(|e| rejected(Kind::Page, lang, e.status(), &e.body_text()))
}

async fn audit(sh: &Arc<Shared>, entry: OwnedAudit) {
    let r = sh
        .db
        .run(move |c| {
            sc::audit(
                c,
                &AuditEntry {
                    actor: &entry.actor,
                    action: entry.action,
                    call_id: entry.call_id,
                    recording_id: entry.recording_id,
                    detail: &entry.detail,
                },
                SystemTime::now(),
            )
            .map_err(DbError::from)
        })
        .await;
    if let Err(e) = r {
        tracing::error!("console: audit entry not written: {e}");
    }
}

struct OwnedAudit {
    actor: String,
    action: &'static str,
    call_id: Option<i64>,
    recording_id: Option<i64>,
    detail: String,
}

async fn ask_live(sh: &Shared, command: LiveCommand) -> Result<String, String> {
    let (reply, answer) = oneshot::channel();
    sh.live
        .send(LiveRequest { command, reply })
        .await
        .map_err(|_| "hotline is shutting down".to_string())?;
    match tokio::time::timeout(LIVE_TIMEOUT, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("hotline dropped the request".into()),
        Err(_) => Err("hotline did not answer in time".into()),
    }
}

// ---- login ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct LoginQuery {
    lang: Option<String>,
    expired: Option<String>,
}

fn request_lang(sh: &Shared, asked: Option<&str>, headers: &HeaderMap) -> Lang {
    asked
        .and_then(Lang::parse)
        .or_else(|| {
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .and_then(Lang::from_accept_language)
        })
        .unwrap_or(sh.default_lang)
}

/// The login form, with a fresh pre-login cookie when the browser has none.
fn login_form(
    sh: &Shared,
    headers: &HeaderMap,
    lang: Lang,
    name: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let (pre, new) = match cookie(headers, LOGIN_COOKIE) {
        Some(p) if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (p.to_string(), false)
        }
        _ => {
            let mut b = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
            (hex::encode(b), true)
        }
    };
    let token = csrf::login_token(&sh.csrf_key, &pre);
    let mut res = (status, html(pages::login(lang, &token, name, error))).into_response();
    if new {
        res.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(sh, LOGIN_COOKIE, &pre, "/login", Some(3600)),
        );
    }
    res
}

async fn login_page(
    State(sh): Sh,
    headers: HeaderMap,
    q: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let lang = request_lang(&sh, q.lang.as_deref(), &headers);
    let error = q.expired.is_some().then(|| tr(lang, "login.expired"));
    login_form(&sh, &headers, lang, "", error, StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    name: Option<String>,
    password: Option<String>,
    lang: Option<String>,
}

async fn login(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    f: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let f = match form(f, sh.default_lang) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let lang = request_lang(&sh, f.lang.as_deref(), &headers);
    let name = f.name.unwrap_or_default();
    let name: String = name
        .chars()
        .take(crate::store::MAX_NAME_CHARS + 1)
        .collect();
    if !csrf::login_token_ok(
        &sh.csrf_key,
        cookie(&headers, LOGIN_COOKIE),
        f.csrf.as_deref(),
    ) {
        return login_form(
            &sh,
            &headers,
            lang,
            &name,
            Some(tr(lang, "login.form_expired")),
            StatusCode::FORBIDDEN,
        );
    }
    let ip = client_ip(&sh, &peer, &headers);
    let now = Instant::now();
    let locked = |until: Instant| {
        let minutes = until
            .saturating_duration_since(now)
            .as_secs()
            .div_ceil(60)
            .max(1);
        trf(lang, "login.locked", &[("minutes", &minutes.to_string())])
    };
    if let Verdict::Locked(until) = sh
        .lockout
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(ip, &name, now)
    {
        sh.metrics.login("locked_out");
        return login_form(
            &sh,
            &headers,
            lang,
            &name,
            Some(&locked(until)),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    // One check at a time; a queue of them would only delay everyone.
    let permit = match tokio::time::timeout(Duration::from_secs(2), sh.hashing.acquire()).await {
        Ok(Ok(p)) => p,
        _ => {
            sh.metrics.login("busy");
            return login_form(
                &sh,
                &headers,
                lang,
                &name,
                Some(tr(lang, "login.busy")),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    };
    // Checks waiting for the permit may have been overtaken by failures that lock.
    if let Verdict::Locked(until) =
        sh.lockout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(ip, &name, Instant::now())
    {
        sh.metrics.login("locked_out");
        return login_form(
            &sh,
            &headers,
            lang,
            &name,
            Some(&locked(until)),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let password = f.password.unwrap_or_default();
    let lookup = name.clone();
    let checked = sh
        .db
        .run(move |c| {
            let account = crate::store::web_account(c, &lookup).map_err(DbError::from)?;
            let hash = account.as_ref().map(|a| a.web_hash.as_str()).unwrap_or("");
            let ok = crate::accounts::verify_web_password(hash, &password);
            Ok::<_, DbError>((account, ok))
        })
        .await;
    let (account, ok) = match checked {
        Ok(r) => r,
        Err(e) => return server_error(Kind::Page, lang, e),
    };
    let known = account.is_some();
    let Some(account) = account.filter(|_| ok) else {
        sh.metrics.login("wrong_password");
        // Counted before the next check may start.
        let verdict = sh
            .lockout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failure(ip, known.then_some(name.as_str()), Instant::now());
        drop(permit);
        tracing::info!("console: failed login");
        let message = match verdict {
            Verdict::Locked(until) => locked(until),
            Verdict::Allowed => tr(lang, "login.wrong").to_string(),
        };
        return login_form(
            &sh,
            &headers,
            lang,
            &name,
            Some(&message),
            StatusCode::UNAUTHORIZED,
        );
    };
    drop(permit);
    sh.metrics.login("ok");
    sh.lockout
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .success(&account.name);
    if account.language.is_none() {
        // The first login keeps the language the login page was shown in.
        let name = account.name.clone();
        let stored = sh
            .db
            .run(move |c| {
                crate::store::set_language(c, &name, lang.code()).map_err(|e| match e {
                    OperatorError::Database(e) => DbError::Sql(e),
                    _ => DbError::Task,
                })
            })
            .await;
        if let Err(e) = stored {
            tracing::warn!("console: language not stored: {e}");
        }
    }
    let token = sh
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .create(
            &account.name,
            &account.password_changed_at,
            Instant::now(),
            &mut rand::rngs::OsRng,
        );
    audit(
        &sh,
        OwnedAudit {
            actor: account.name.clone(),
            action: "login",
            call_id: None,
            recording_id: None,
            detail: String::new(),
        },
    )
    .await;
    let mut res = Redirect::to("/").into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(&sh, SESSION_COOKIE, &token, "/", None),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(&sh, LOGIN_COOKIE, "", "/login", Some(0)),
    );
    res
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    State(sh): Sh,
    headers: HeaderMap,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let f = form(f, a.lang)?;
    check_csrf(&a, f.csrf.as_deref(), Kind::Page)?;
    sh.sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&a.token);
    audit(
        &sh,
        OwnedAudit {
            actor: a.account.clone(),
            action: "logout",
            call_id: None,
            recording_id: None,
            detail: String::new(),
        },
    )
    .await;
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&sh, SESSION_COOKIE, "", "/", Some(0)),
    );
    Ok(res)
}

#[derive(Deserialize)]
struct LanguageForm {
    csrf: Option<String>,
    lang: Option<String>,
}

async fn language(
    State(sh): Sh,
    headers: HeaderMap,
    f: Result<Form<LanguageForm>, FormRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let f = form(f, a.lang)?;
    check_csrf(&a, f.csrf.as_deref(), Kind::Page)?;
    let Some(lang) = f.lang.as_deref().and_then(Lang::parse) else {
        return Err(refusal(
            Kind::Page,
            a.lang,
            StatusCode::BAD_REQUEST,
            "error.not_found",
        ));
    };
    let name = a.account.clone();
    sh.db
        .run(move |c| {
            crate::store::set_language(c, &name, lang.code()).map_err(|e| match e {
                OperatorError::Database(e) => DbError::Sql(e),
                _ => DbError::Task,
            })
        })
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    Ok(Redirect::to("/").into_response())
}

// ---- the live board -----------------------------------------------------------------

async fn board_page(State(sh): Sh, headers: HeaderMap) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    Ok(html(pages::board(&ctx(&sh, &a))))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn events(State(sh): Sh, headers: HeaderMap) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Api).await?;
    let Ok(permit) = sh.streams.clone().try_acquire_owned() else {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many board streams",
        ));
    };
    let rx = sh.board.clone();
    struct St {
        rx: watch::Receiver<Arc<BoardFrame>>,
        first: bool,
        sh: Arc<Shared>,
        token: String,
        headers: HeaderMap,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let st = St {
        rx,
        first: true,
        sh: sh.clone(),
        token: a.token,
        headers,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.first {
                st.first = false;
            } else {
                tokio::select! {
                    changed = st.rx.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        let alive = st
                            .sh
                            .sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .touch(&st.token, Instant::now())
                            .is_some();
                        if !alive {
                            return None;
                        }
                    }
                    _ = tokio::time::sleep(STREAM_RECHECK) => {
                        // Also ends the stream after a password change or removal.
                        if auth(&st.sh, &st.headers, Kind::Api).await.is_err() {
                            return None;
                        }
                        continue;
                    }
                }
            }
            let frame = st.rx.borrow_and_update().clone();
            let event = Event::default()
                .event("board")
                .data(frame.event_data(now_ms()));
            return Some((Ok::<_, std::convert::Infallible>(event), st));
        }
    });
    let mut res = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // No proxy may buffer the stream.
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

#[derive(Deserialize)]
struct StateRequest {
    user: String,
    state: String,
}

async fn operator_state(
    State(sh): Sh,
    headers: HeaderMap,
    body: Result<Json<StateRequest>, JsonRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Api).await?;
    let presented = headers.get(csrf::HEADER).and_then(|v| v.to_str().ok());
    check_csrf(&a, presented, Kind::Api)?;
    let Json(req) = body.map_err(|e| api_error(e.status(), &e.body_text()))?;
    let available = match req.state.as_str() {
        "available" => true,
        "paused" => false,
        _ => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "state must be \"available\" or \"paused\"",
            ))
        }
    };
    if req.user != a.user && a.role != Role::Supervisor {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "operators set only their own state",
        ));
    }
    let user: String = req.user.chars().take(64).collect();
    match ask_live(
        &sh,
        LiveCommand::SetOperatorState {
            user: user.clone(),
            available,
        },
    )
    .await
    {
        Ok(state) => {
            if user != a.user {
                audit(
                    &sh,
                    OwnedAudit {
                        actor: a.account.clone(),
                        action: "operator_state",
                        call_id: None,
                        recording_id: None,
                        detail: format!("{user}: {state}"),
                    },
                )
                .await;
            }
            Ok(Json(serde_json::json!({"ok": true, "state": state})).into_response())
        }
        Err(e) => Err(api_error(StatusCode::CONFLICT, &e)),
    }
}

// ---- voicemail inbox and calls -------------------------------------------------------

#[derive(Deserialize, Default)]
struct InboxQuery {
    #[serde(rename = "ref")]
    reference: Option<String>,
    page: Option<usize>,
}

async fn inbox(
    State(sh): Sh,
    headers: HeaderMap,
    q: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| rejected(Kind::Page, a.lang, e.status(), &e.body_text()))?;
    let page = q.page.unwrap_or(0).min(100_000);
    let typed: Option<String> = q
        .reference
        .map(|r| r.chars().take(20).collect::<String>())
        .filter(|r| !r.trim().is_empty());
    let lang = a.lang;
    let keyring = sh.keyring.clone();
    let (rows, search) = sh
        .db
        .run(move |c| {
            let mut rows = sc::inbox(c, PAGE_ROWS + 1, page * PAGE_ROWS)?;
            sealed_view::open_inbox(c, &keyring, &mut rows)?;
            let search = match typed {
                None => Search::None,
                Some(t) => {
                    let cleaned: String = t.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
                    match crate::reference::parse(&t) {
                        Ok(
                            crate::reference::Reference::Valid(code)
                            | crate::reference::Reference::Legacy(code),
                        ) => {
                            let mut found =
                                sc::calls_with_references(c, std::slice::from_ref(&code))?;
                            sealed_view::open_calls(c, &keyring, &mut found)?;
                            if found.is_empty() {
                                Search::NotFound(code)
                            } else {
                                Search::Found(code, found)
                            }
                        }
                        Err(crate::reference::ReferenceError::CheckDigit) => {
                            let near = crate::reference::corrections(&cleaned);
                            let mut found = sc::calls_with_references(c, &near)?;
                            sealed_view::open_calls(c, &keyring, &mut found)?;
                            Search::Corrected(cleaned, found)
                        }
                        Err(crate::reference::ReferenceError::NotDigits) => {
                            Search::Invalid(t, tr(lang, "ref.not_digits").to_string())
                        }
                        Err(crate::reference::ReferenceError::WrongLength(n)) => Search::Invalid(
                            t,
                            trf(lang, "ref.wrong_length", &[("n", &n.to_string())]),
                        ),
                    }
                }
            };
            Ok::<_, DbError>((rows, search))
        })
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    let more = rows.len() > PAGE_ROWS;
    let rows = &rows[..rows.len().min(PAGE_ROWS)];
    Ok(html(pages::inbox(&ctx(&sh, &a), rows, &search, page, more)))
}

/// A call id from a URL: digits only, else "not found".
fn call_id(raw: &str, lang: Lang) -> Result<i64, Response> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| refusal(Kind::Page, lang, StatusCode::NOT_FOUND, "error.not_found"))
}

async fn call_page(
    State(sh): Sh,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let id = call_id(&raw, a.lang)?;
    let keyring = sh.keyring.clone();
    let found = sh
        .db
        .run(move |c| {
            let Some(mut call) = sc::call(c, id)? else {
                return Ok(None);
            };
            sealed_view::open_calls(c, &keyring, std::slice::from_mut(&mut call))?;
            let ids = sc::recording_ids(c, id)?;
            let mut notes = sc::notes(c, id)?;
            sealed_view::open_notes(&keyring, &mut notes);
            let handled = sc::handled(c, id)?;
            Ok::<_, DbError>(Some((call, ids, notes, handled)))
        })
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    let Some((call, ids, notes, handled)) = found else {
        return Err(refusal(
            Kind::Page,
            a.lang,
            StatusCode::NOT_FOUND,
            "error.not_found",
        ));
    };
    Ok(html(pages::call(
        &ctx(&sh, &a),
        &call,
        &ids,
        &notes,
        handled.as_ref(),
    )))
}

fn change_error(e: ChangeError, lang: Lang) -> Response {
    match e {
        ChangeError::NoSuchCall(_) => {
            refusal(Kind::Page, lang, StatusCode::NOT_FOUND, "error.not_found")
        }
        ChangeError::EmptyNote => refusal(Kind::Page, lang, StatusCode::BAD_REQUEST, "note.empty"),
        ChangeError::NoteTooLong(_) => {
            refusal(Kind::Page, lang, StatusCode::BAD_REQUEST, "note.too_long")
        }
        ChangeError::Database(e) => server_error(Kind::Page, lang, e),
        ChangeError::Seal(e) => server_error(Kind::Page, lang, e),
    }
}

impl From<DbError> for ChangeError {
    fn from(e: DbError) -> ChangeError {
        match e {
            DbError::Sql(e) => ChangeError::Database(e),
            DbError::Task => ChangeError::Database(rusqlite::Error::InvalidQuery),
        }
    }
}

#[derive(Deserialize)]
struct NoteForm {
    csrf: Option<String>,
    body: Option<String>,
}

async fn add_note(
    State(sh): Sh,
    headers: HeaderMap,
    Path(raw): Path<String>,
    f: Result<Form<NoteForm>, FormRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let f = form(f, a.lang)?;
    check_csrf(&a, f.csrf.as_deref(), Kind::Page)?;
    let id = call_id(&raw, a.lang)?;
    let author = a.account.clone();
    let body = f.body.unwrap_or_default();
    let sealer = sh.note_sealer.clone();
    sh.db
        .run(move |c| {
            sc::add_note_sealed(c, id, &author, &body, sealer.as_deref(), SystemTime::now())
        })
        .await
        .map_err(|e| change_error(e, a.lang))?;
    Ok(Redirect::to(&format!("/calls/{id}#notes")).into_response())
}

#[derive(Deserialize)]
struct HandledForm {
    csrf: Option<String>,
    handled: Option<String>,
}

async fn set_handled(
    State(sh): Sh,
    headers: HeaderMap,
    Path(raw): Path<String>,
    f: Result<Form<HandledForm>, FormRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let f = form(f, a.lang)?;
    check_csrf(&a, f.csrf.as_deref(), Kind::Page)?;
    let id = call_id(&raw, a.lang)?;
    let handled = f.handled.as_deref() != Some("0");
    let by = a.account.clone();
    sh.db
        .run(move |c| sc::set_handled(c, id, &by, handled, SystemTime::now()))
        .await
        .map_err(|e| change_error(e, a.lang))?;
    Ok(Redirect::to(&format!("/calls/{id}#handling")).into_response())
}

/// A recording by database id, streamed with Range support. The stored path must
/// resolve (symlinks followed) inside the recordings directory.
async fn recording(
    State(sh): Sh,
    headers: HeaderMap,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let id = call_id(&raw, a.lang)?;
    let data_dir = sh.data_dir.clone();
    let root = sh.recordings_dir.clone();
    let found = sh
        .db
        .run(move |c| {
            let Some(r) = sc::recording(c, id)? else {
                return Ok(None);
            };
            let p = PathBuf::from(&r.path);
            let p = if p.is_absolute() { p } else { data_dir.join(p) };
            let inside = std::fs::canonicalize(&p)
                .ok()
                .filter(|canon| canon.starts_with(&root));
            Ok::<_, DbError>(Some((r, inside)))
        })
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    let Some((rec, path)) = found else {
        return Err(refusal(
            Kind::Page,
            a.lang,
            StatusCode::NOT_FOUND,
            "error.not_found",
        ));
    };
    let Some(path) = path else {
        tracing::warn!(
            recording = id,
            "console: recording missing or outside the recordings directory"
        );
        return Err(refusal(
            Kind::Page,
            a.lang,
            StatusCode::NOT_FOUND,
            "error.no_recording",
        ));
    };
    let sealed_file = path
        .to_string_lossy()
        .ends_with(crate::store::seal::SEALED_SUFFIX);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Opened before the listen is audited: a refusal is not a listen.
    let sealed = if sealed_file {
        Some(open_for_playback(&sh, id, path.clone(), a.lang).await?)
    } else {
        None
    };
    // A player fetches in ranges; a listen is the fetch of the start, once a while.
    let from_start = match range.as_deref() {
        None => true,
        Some(r) => r.trim().starts_with("bytes=0-"),
    };
    if from_start {
        let new = sh
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .touch(&a.token, Instant::now())
            .map(|s| s.new_listen(id, Instant::now()))
            .unwrap_or(false);
        if new {
            audit(
                &sh,
                OwnedAudit {
                    actor: a.account.clone(),
                    action: "listen",
                    call_id: Some(rec.call_id),
                    recording_id: Some(id),
                    detail: rec.kind.clone(),
                },
            )
            .await;
        }
    }
    if let Some(opened) = sealed {
        return Ok(sealed_response(opened, range.as_deref()));
    }
    let served = tower::ServiceExt::oneshot(tower_http::services::ServeFile::new(path), req)
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    let mut res = served.map(Body::new);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    res.headers_mut().remove(header::LAST_MODIFIED);
    Ok(res)
}

type SealedReader = age::stream::StreamReader<std::io::BufReader<std::fs::File>>;

/// A sealed recording opened for playback, holding one of the stream slots.
struct SealedPlayback {
    reader: SealedReader,
    /// Length of the plaintext (the WAV).
    len: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Opens a sealed recording with the server's identities: refused (423) while
/// sealed, 503 when every stream slot is taken.
async fn open_for_playback(
    sh: &Arc<Shared>,
    id: i64,
    path: PathBuf,
    lang: Lang,
) -> Result<SealedPlayback, Response> {
    let locked = || {
        page_error(
            lang,
            StatusCode::LOCKED,
            "sealed.recording",
            tr(lang, "sealed.refused"),
        )
    };
    if !sh.keyring.is_unsealed() {
        return Err(locked());
    }
    let Ok(permit) = sh.sealed_streams.clone().try_acquire_owned() else {
        return Err(page_error(
            lang,
            StatusCode::SERVICE_UNAVAILABLE,
            "sealed.recording",
            tr(lang, "sealed.busy"),
        ));
    };
    let keyring = sh.keyring.clone();
    let opened = tokio::task::spawn_blocking(move || open_sealed(&keyring, &path))
        .await
        .map_err(|e| server_error(Kind::Page, lang, e))?;
    match opened {
        Ok(Some((reader, len))) => Ok(SealedPlayback {
            reader,
            len,
            permit,
        }),
        // Sealed again while it was being opened.
        Ok(None) => Err(locked()),
        Err(e) => {
            tracing::error!(
                recording = id,
                "console: sealed recording does not open: {e}"
            );
            Err(refusal(
                Kind::Page,
                lang,
                StatusCode::NOT_FOUND,
                "error.no_recording",
            ))
        }
    }
}

/// Decrypts the header of a sealed file; `None` while sealed. The identities are
/// needed only for this: the reader keeps the file's own key.
fn open_sealed(
    keyring: &Keyring,
    path: &std::path::Path,
) -> Result<Option<(SealedReader, u64)>, String> {
    use std::io::{Seek, SeekFrom};
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let decryptor =
        age::Decryptor::new_buffered(std::io::BufReader::with_capacity(SEALED_CHUNK, file))
            .map_err(|e| e.to_string())?;
    let Some(reader) = keyring
        .with(|identities| decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)))
    else {
        return Ok(None);
    };
    let mut reader = reader.map_err(|e| e.to_string())?;
    // Authenticates the last chunk: a truncated file is refused here.
    let len = reader.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    Ok(Some((reader, len)))
}

/// Which bytes of a `len`-byte body a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Span {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

fn byte_span(range: Option<&str>, len: u64) -> Span {
    let Some(value) = range else {
        return Span::Whole;
    };
    // A suffix longer than the body asks for all of it (RFC 9110, 14.1.3); the range
    // crate refuses it.
    if let Some(suffix) = value.trim().strip_prefix("bytes=-") {
        if suffix
            .parse::<u64>()
            .is_ok_and(|n| n >= len && n > 0 && len > 0)
        {
            return Span::Part(0, len - 1);
        }
    }
    let Ok(parsed) = http_range_header::parse_range_header(value) else {
        return Span::Unsatisfiable;
    };
    match parsed.validate(len) {
        Ok(ranges) if ranges.len() == 1 => {
            let (first, last) = (*ranges[0].start(), *ranges[0].end());
            if first >= len || first > last {
                Span::Unsatisfiable
            } else {
                Span::Part(first, last)
            }
        }
        // Several ranges: answered whole, as RFC 9110 allows (players ask for one).
        Ok(_) => Span::Whole,
        Err(_) => Span::Unsatisfiable,
    }
}

/// The decrypted WAV, or the part of it asked for, decrypted as it is sent.
fn sealed_response(opened: SealedPlayback, range: Option<&str>) -> Response {
    let len = opened.len;
    let (status, first, count) = match byte_span(range, len) {
        Span::Whole => (StatusCode::OK, 0, len),
        Span::Part(first, last) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Span::Unsatisfiable => {
            let mut res = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return res;
        }
    };
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    let SealedPlayback {
        mut reader, permit, ..
    } = opened;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let _permit = permit;
        let until = Instant::now() + SEALED_STREAM_MAX;
        if let Err(e) = reader.seek(SeekFrom::Start(first)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = count;
        while left > 0 {
            if Instant::now() > until {
                let _ = tx.blocking_send(Err(std::io::Error::other("playback took too long")));
                return;
            }
            let mut buf =
                zeroize::Zeroizing::new(vec![0u8; left.min(SEALED_CHUNK as u64) as usize]);
            let chunk = match reader.read(&mut buf) {
                Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    // Cleared when the HTTP layer has sent and dropped it.
                    Ok(bytes::Bytes::from_owner(buf))
                }
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // The client has gone when the channel is closed.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut res = Body::from_stream(stream).into_response();
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{}/{len}", first + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    res
}

// ---- history and export --------------------------------------------------------------

#[derive(Deserialize, Default)]
struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    outcome: Option<String>,
    before: Option<i64>,
    csrf: Option<String>,
}

/// The filter of a history form: dates in the console's time zone (default the last
/// seven days), inbound calls only.
fn history_filter(
    sh: &Shared,
    q: &HistoryQuery,
    lang: Lang,
) -> (String, String, String, Result<CallFilter, String>) {
    let today = sh.calendar.today(SystemTime::now());
    let week_ago = today
        .checked_sub(jiff::Span::new().days(6))
        .unwrap_or(today);
    let from_s = q
        .from
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| week_ago.to_string());
    let to_s =
        q.to.clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| today.to_string());
    let from_s: String = from_s.chars().take(20).collect();
    let to_s: String = to_s.chars().take(20).collect();
    let outcome_s = q
        .outcome
        .clone()
        .unwrap_or_default()
        .chars()
        .take(20)
        .collect::<String>();
    let filter = (|| {
        let from = parse_date(&from_s)
            .map_err(|_| trf(lang, "history.bad_date", &[("value", &from_s)]))?;
        let to =
            parse_date(&to_s).map_err(|_| trf(lang, "history.bad_date", &[("value", &to_s)]))?;
        if from > to {
            return Err(tr(lang, "history.bad_range").to_string());
        }
        let outcome = match outcome_s.as_str() {
            "" => None,
            o => {
                Some(Outcome::parse(o).ok_or_else(|| tr(lang, "history.bad_outcome").to_string())?)
            }
        };
        let (since, until) = sh.calendar.days(from, to)?;
        Ok(CallFilter {
            since: Some(since),
            until: Some(until),
            outcome,
            direction: Some("inbound"),
        })
    })();
    (from_s, to_s, outcome_s, filter)
}

async fn history(
    State(sh): Sh,
    headers: HeaderMap,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| rejected(Kind::Page, a.lang, e.status(), &e.body_text()))?;
    let (from, to, outcome, filter) = history_filter(&sh, &q, a.lang);
    let form = HistoryForm {
        from: &from,
        to: &to,
        outcome: &outcome,
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            return Ok((
                StatusCode::BAD_REQUEST,
                html(pages::history(&ctx(&sh, &a), &form, Some(&e), &[], None)),
            )
                .into_response())
        }
    };
    let before = q.before;
    let keyring = sh.keyring.clone();
    let calls = sh
        .db
        .run(move |c| {
            let mut calls = sc::filtered_calls(c, &filter, before, HISTORY_ROWS + 1)?;
            sealed_view::open_calls(c, &keyring, &mut calls)?;
            Ok::<_, DbError>(calls)
        })
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    let older = (calls.len() > HISTORY_ROWS).then(|| calls[HISTORY_ROWS - 1].id);
    let calls = &calls[..calls.len().min(HISTORY_ROWS)];
    Ok(html(pages::history(
        &ctx(&sh, &a),
        &form,
        None,
        calls,
        older,
    )))
}

/// The history filter's calls as CSV, streamed page by page.
async fn export_csv(
    State(sh): Sh,
    headers: HeaderMap,
    f: Result<Form<HistoryQuery>, FormRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    let f = form(f, a.lang)?;
    check_csrf(&a, f.csrf.as_deref(), Kind::Page)?;
    let (from, to, outcome, filter) = history_filter(&sh, &f, a.lang);
    let filter = filter.map_err(|e| {
        page_error(
            a.lang,
            StatusCode::BAD_REQUEST,
            "error.bad_request_title",
            &e,
        )
    })?;
    audit(
        &sh,
        OwnedAudit {
            actor: a.account.clone(),
            action: "export",
            call_id: None,
            recording_id: None,
            detail: format!(
                "from={from} to={to} outcome={}",
                if outcome.is_empty() { "any" } else { &outcome }
            ),
        },
    )
    .await;
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let db = sh.db.clone();
    let keyring = sh.keyring.clone();
    let data_dir = sh.data_dir.clone();
    tokio::spawn(async move {
        let _ = tx.send(Ok(export::header().into())).await;
        let mut before = None;
        let mut written = 0;
        while written < EXPORT_MAX_ROWS {
            let f = filter.clone();
            let keyring = keyring.clone();
            let data_dir = data_dir.clone();
            let page = db
                .run(move |c| {
                    let ids = sc::filtered_call_ids(c, &f, before, 500)?;
                    let mut calls = sc::calls_by_ids(c, &ids)?;
                    sealed_view::open_calls(c, &keyring, &mut calls)?;
                    // The same absolute paths `hotline calls --json` prints.
                    for call in &mut calls {
                        crate::store::details::resolve_paths(&mut call.recordings, &data_dir);
                    }
                    Ok::<_, DbError>((calls, ids.last().copied()))
                })
                .await;
            match page {
                Ok((calls, last)) if !calls.is_empty() => {
                    written += calls.len();
                    before = last;
                    if tx.send(Ok(export::rows(&calls).into())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::error!("console: export failed: {e}");
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut res = Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"hotline-calls-{from}-{to}.csv\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

// ---- supervisors ---------------------------------------------------------------------

async fn operators_page(State(sh): Sh, headers: HeaderMap) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    supervisor(&a, Kind::Page)?;
    operators_view(&sh, &a, None, None, None, StatusCode::OK).await
}

async fn operators_view(
    sh: &Arc<Shared>,
    a: &Auth,
    shown: Option<&NewPassword<'_>>,
    message: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Result<Response, Response> {
    let rows = sh
        .db
        .run(|c| crate::store::list_operators(c).map_err(DbError::from))
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    Ok((
        status,
        html(pages::operators(&ctx(sh, a), &rows, shown, message, error)),
    )
        .into_response())
}

#[derive(Deserialize)]
struct AdminForm {
    csrf: Option<String>,
    action: Option<String>,
    name: Option<String>,
    role: Option<String>,
    password: Option<String>,
}

fn operator_error(lang: Lang, e: &OperatorError, name: &str) -> String {
    match e {
        OperatorError::Duplicate(_) => trf(lang, "admin.err_duplicate", &[("name", name)]),
        OperatorError::NotFound(_) => trf(lang, "admin.err_not_found", &[("name", name)]),
        OperatorError::EmptyName
        | OperatorError::NameTooLong(_)
        | OperatorError::ControlCharacters
        | OperatorError::SurroundingWhitespace => tr(lang, "admin.err_name").to_string(),
        OperatorError::PasswordTooShort => tr(lang, "admin.err_password_short").to_string(),
        OperatorError::PasswordControlCharacters => {
            tr(lang, "admin.err_password_control").to_string()
        }
        OperatorError::NoFreeUsername | OperatorError::Database(_) => {
            tr(lang, "error.server").to_string()
        }
    }
}

async fn operators_change(
    State(sh): Sh,
    headers: HeaderMap,
    f: Result<Form<AdminForm>, FormRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    supervisor(&a, Kind::Page)?;
    let f = form(f, a.lang)?;
    check_csrf(&a, f.csrf.as_deref(), Kind::Page)?;
    let l = a.lang;
    let name = f.name.clone().unwrap_or_default();
    let action = f.action.clone().unwrap_or_default();
    let role = f.role.as_deref().map(|r| Role::parse(r).ok_or(()));
    if matches!(action.as_str(), "role" | "remove") && name == a.account {
        return operators_view(
            &sh,
            &a,
            None,
            None,
            Some(tr(l, "admin.cannot_self")),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let realm = sh.realm.clone();
    let password = f.password.clone().filter(|p| !p.is_empty());
    let (audit_action, detail) = match action.as_str() {
        "add" => ("operator_add", name.clone()),
        "passwd" => ("operator_passwd", name.clone()),
        "remove" => ("operator_remove", name.clone()),
        "role" => ("operator_role", name.clone()),
        _ => {
            return operators_view(
                &sh,
                &a,
                None,
                None,
                Some(tr(l, "admin.err_action")),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    };
    let role = match (action.as_str(), role) {
        (_, Some(Err(()))) => {
            return operators_view(
                &sh,
                &a,
                None,
                None,
                Some(tr(l, "admin.err_role")),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        ("role", None) => {
            return operators_view(
                &sh,
                &a,
                None,
                None,
                Some(tr(l, "admin.err_role")),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        (_, Some(Ok(r))) => r,
        (_, None) => Role::Operator,
    };
    let n = name.clone();
    let act = action.clone();
    let result = sh
        .db
        .run(
            move |c| -> Result<Option<crate::store::NewOperator>, OperatorError> {
                let now = SystemTime::now();
                let mut rng = rand::rngs::OsRng;
                match act.as_str() {
                    "add" => crate::accounts::add_with_role(
                        c,
                        &n,
                        &realm,
                        role,
                        password.as_deref(),
                        &mut rng,
                        now,
                    )
                    .map(Some),
                    "passwd" => {
                        crate::accounts::passwd(c, &n, &realm, password.as_deref(), &mut rng, now)
                            .map(Some)
                    }
                    "remove" => crate::store::remove_operator(c, &n).map(|_| None),
                    _ => crate::store::set_role(c, &n, role).map(|_| None),
                }
            },
        )
        .await;
    match result {
        Err(e) => {
            let message = operator_error(l, &e, &name);
            if let OperatorError::Database(e) = &e {
                tracing::error!("console: account change failed: {e}");
            }
            operators_view(&sh, &a, None, None, Some(&message), StatusCode::BAD_REQUEST).await
        }
        Ok(created) => {
            audit(
                &sh,
                OwnedAudit {
                    actor: a.account.clone(),
                    action: audit_action,
                    call_id: None,
                    recording_id: None,
                    detail: if action == "role" {
                        format!("{detail}: {}", role.as_str())
                    } else {
                        detail
                    },
                },
            )
            .await;
            if matches!(action.as_str(), "passwd" | "remove") {
                sh.sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove_account(&name);
            }
            if action != "role" {
                if let Err(e) = ask_live(&sh, LiveCommand::OperatorsChanged).await {
                    tracing::warn!("console: the running hotline did not reload the accounts: {e}");
                }
            }
            let message = match action.as_str() {
                "add" => trf(l, "admin.added", &[("name", &name)]),
                "passwd" => trf(l, "admin.password_reset", &[("name", &name)]),
                "remove" => trf(l, "admin.removed", &[("name", &name)]),
                _ => trf(
                    l,
                    "admin.role_set",
                    &[("name", &name), ("role", pages::role_name(l, role))],
                ),
            };
            let shown = created.as_ref().map(|c| NewPassword {
                name: &c.name,
                sip_username: &c.sip_username,
                password: &c.password,
            });
            operators_view(
                &sh,
                &a,
                shown.as_ref(),
                Some(&message),
                None,
                StatusCode::OK,
            )
            .await
        }
    }
}

impl From<DbError> for OperatorError {
    fn from(e: DbError) -> OperatorError {
        match e {
            DbError::Sql(e) => OperatorError::Database(e),
            DbError::Task => OperatorError::Database(rusqlite::Error::InvalidQuery),
        }
    }
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    before: Option<i64>,
}

async fn audit_page(
    State(sh): Sh,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Response> {
    let a = auth(&sh, &headers, Kind::Page).await?;
    supervisor(&a, Kind::Page)?;
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let rows = sh
        .db
        .run(move |c| sc::audit_log(c, q.before, PAGE_ROWS + 1).map_err(DbError::from))
        .await
        .map_err(|e| server_error(Kind::Page, a.lang, e))?;
    let older = (rows.len() > PAGE_ROWS).then(|| rows[PAGE_ROWS - 1].id);
    Ok(html(pages::audit(
        &ctx(&sh, &a),
        &rows[..rows.len().min(PAGE_ROWS)],
        older,
    )))
}

// ---- assets and fallbacks ------------------------------------------------------------

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/app.css"),
    )
        .into_response()
}

async fn not_found(State(sh): Sh) -> Response {
    refusal(
        Kind::Page,
        sh.default_lang,
        StatusCode::NOT_FOUND,
        "error.not_found",
    )
}

// ---- metrics -------------------------------------------------------------------------

pub fn metrics_router(metrics: Arc<Metrics>, figures: mpsc::Sender<FiguresRequest>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state((metrics, figures))
}

async fn metrics_text(
    State((metrics, figures)): State<(Arc<Metrics>, mpsc::Sender<FiguresRequest>)>,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if figures.send(tx).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "hotline is shutting down\n",
        )
            .into_response();
    }
    match tokio::time::timeout(LIVE_TIMEOUT, rx).await {
        Ok(Ok(f)) => (
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            metrics.encode(f),
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "hotline did not answer in time\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{byte_span, Span};

    #[test]
    fn ranges_of_a_decrypted_recording() {
        assert_eq!(byte_span(None, 100), Span::Whole);
        assert_eq!(byte_span(Some("bytes=0-"), 100), Span::Part(0, 99));
        assert_eq!(byte_span(Some("bytes=10-19"), 100), Span::Part(10, 19));
        assert_eq!(byte_span(Some("bytes=90-500"), 100), Span::Part(90, 99));
        assert_eq!(byte_span(Some("bytes=-10"), 100), Span::Part(90, 99));
        assert_eq!(byte_span(Some("bytes=-100"), 100), Span::Part(0, 99));
        assert_eq!(byte_span(Some("bytes=-200"), 100), Span::Part(0, 99));
        assert_eq!(byte_span(Some("bytes=0-1,5-6"), 100), Span::Whole);
        for bad in [
            "bytes=100-",
            "bytes=200-300",
            "bytes=20-10",
            "bytes=-0",
            "bytes=x-y",
            "items=0-1",
            "bytes=0-1,0-1",
        ] {
            assert_eq!(byte_span(Some(bad), 100), Span::Unsatisfiable, "{bad}");
        }
        assert_eq!(byte_span(Some("bytes=0-"), 0), Span::Unsatisfiable);
    }
}
