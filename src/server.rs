//! `hotline serve`: wires configuration, transports, the endpoint, media and storage
//! together and runs the endpoint's event loop.
//!
//! Owns start-up order (nothing listens before the database and key are ready),
//! dispatch of the endpoint's outputs, and orderly shutdown (every call hung up, every
//! row committed). Must not hold call logic: that is in `sip::endpoint`.

use crate::app::{App, AppOutput, OperatorNames};
use crate::config::{CallerIdPolicy, Config};
use crate::control::ControlCommand;
use crate::media::engine::{self, EngineCommand, InbandPolicy, MediaConfig, MediaEvent};
use crate::privacy::CallerIdFilter;
use crate::sip::digest::DigestConfig;
use crate::sip::endpoint::{CredentialLookup, RegistrarSetup};
use crate::sip::registrar::{RegistrarConfig, RegistrarEvent};
use crate::sip::transport::{self, NetInput, TcpLimits, Transports};
use crate::sip::{Endpoint, EndpointConfig, Output, TimerConfig};
use crate::store::{self, StoreCommand};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The operators' registrar, looking accounts up in the database through `conn`.
pub fn registrar_setup(
    cfg: &Config,
    conn: Arc<std::sync::Mutex<rusqlite::Connection>>,
    names: OperatorNames,
) -> RegistrarSetup {
    let op = &cfg.operators;
    let realm = op.realm.clone();
    let credentials: CredentialLookup = Arc::new(move |user: &str| {
        let conn = conn.lock().ok()?;
        match store::operator_credentials(&conn, user, &realm) {
            Ok(Some((name, ha1s))) => {
                if let Ok(mut m) = names.lock() {
                    m.insert(user.to_string(), name);
                }
                Some(ha1s)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!("operator lookup failed: {e}");
                None
            }
        }
    });
    let mut digest = DigestConfig::new(op.realm.clone());
    digest.nonce_lifetime = Duration::from_secs(op.nonce_lifetime_s);
    digest.algorithms = op
        .digest_algorithms
        .iter()
        .filter_map(|a| crate::sip::digest::Algorithm::from_token(a))
        .collect();
    RegistrarSetup {
        credentials,
        registrar: RegistrarConfig {
            min_expires: op.min_expires_s,
            max_expires: op.max_expires_s,
            default_expires: op.max_expires_s,
            max_failures: op.max_auth_failures,
            failure_window: Duration::from_secs(op.auth_failure_window_s),
            lockout: Duration::from_secs(op.lockout_s),
            ..RegistrarConfig::default()
        },
        digest,
        feature_codes: vec![
            (op.feature_available.clone(), "Available".to_string()),
            (op.feature_paused.clone(), "Paused".to_string()),
        ],
    }
}

pub fn endpoint_config(cfg: &Config, filter: &CallerIdFilter) -> EndpointConfig {
    let f = filter.clone();
    EndpointConfig {
        timers: TimerConfig {
            t1: Duration::from_millis(cfg.sip.t1_ms),
            t2: Duration::from_millis(cfg.sip.t2_ms),
            t4: Duration::from_millis(cfg.sip.t4_ms),
        },
        max_calls: cfg.limits.max_calls,
        max_call_duration: Duration::from_secs(cfg.limits.max_call_duration_s),
        answer_delay: Duration::from_millis(cfg.sip.answer_delay_ms),
        public_ip: cfg.sip.public_address.parse::<IpAddr>().ok(),
        source_rate: cfg.limits.source_rate,
        source_burst: cfg.limits.source_burst,
        trusted_sources: cfg.limits.trusted_sources.clone(),
        max_message_bytes: cfg.sip.max_message_bytes,
        caller_id: Arc::new(move |s: &str| f.apply(s)),
        log_messages: filter.policy() == CallerIdPolicy::Keep,
        ..EndpointConfig::default()
    }
}

/// Start-up failures: configuration problems (exit 2, nothing started) or others.
#[derive(Debug)]
pub enum StartError {
    Config(Vec<String>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Other(e.into())
    }
}

pub async fn run(cfg: Config) -> Result<(), StartError> {
    let (flow, prompts) = crate::app::load_call_flow(&cfg).map_err(StartError::Config)?;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.storage.data_dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot create data directory: {e}",
                cfg.storage.data_dir.display()
            )
        })?;
    let filter = CallerIdFilter::load(cfg.privacy.caller_id, &cfg.hash_key_path())
        .map_err(anyhow::Error::msg)?;
    let addr_filter = {
        let f = filter.clone();
        Box::new(move |a: &str| f.apply(a)) as store::AddrFilter
    };
    let store_tx = store::startup::start(&cfg, addr_filter)?;
    crate::maintenance::spawn(&cfg, filter.clone());
    let vault = crate::vault::Vault::new(&cfg);
    let (stored_tx, mut stored_rx) = mpsc::unbounded_channel();
    let names = OperatorNames::default();
    let accounts = store::open(&cfg.database_path())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.database_path().display()))?;
    refresh_operator_names(&accounts, &names);
    let accounts = Arc::new(std::sync::Mutex::new(accounts));
    let mut app = App::with_queue(
        flow,
        prompts.clone(),
        cfg.recordings_dir(),
        stored_tx,
        cfg.queue.clone(),
        cfg.operators.available_on_register,
        names.clone(),
    );
    let mut control_rx = crate::control::spawn_listener(&crate::control::socket_path(&cfg))
        .map_err(|e| anyhow::anyhow!("control socket: {e}"))?;

    let (net_tx, mut net_rx) = transport::input_channel();
    let limits = TcpLimits {
        idle_timeout: Duration::from_secs(cfg.sip.tcp_idle_timeout_s),
        max_per_source: cfg.sip.tcp_max_connections_per_source,
        max_message: cfg.sip.max_message_bytes,
    };
    let mut transports = transport::bind(&cfg.sip.listen, limits, net_tx).await?;
    let (media_ev_tx, mut media_rx) = mpsc::unbounded_channel();
    let media = engine::spawn(
        MediaConfig {
            ports: cfg.rtp.ports,
            rtp_timeout: Duration::from_secs(cfg.rtp.timeout_s),
            inband: match cfg.rtp.inband_dtmf {
                crate::config::InbandDtmf::Auto => InbandPolicy::Auto,
                crate::config::InbandDtmf::Always => InbandPolicy::Always,
                crate::config::InbandDtmf::Never => InbandPolicy::Never,
            },
            latch: cfg.rtp.latch,
        },
        media_ev_tx,
    );
    let mut ep_cfg = endpoint_config(&cfg, &filter);
    ep_cfg.registrar = Some(registrar_setup(&cfg, accounts.clone(), names.clone()));
    let mut ep = Endpoint::new(ep_cfg);
    for b in &transports.bound {
        println!("hotline: SIP listening on {b}");
    }
    println!(
        "hotline: RTP ports {}-{}, database {}, {} prompts, caller-id {:?}",
        cfg.rtp.ports.first,
        cfg.rtp.ports.last,
        cfg.database_path().display(),
        prompts.len(),
        cfg.privacy.caller_id
    );
    tracing::info!("hotline started");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut shutting_down: Option<Instant> = None;
    loop {
        let deadline = ep
            .poll_timeout()
            .into_iter()
            .chain(app.poll_timeout())
            .min()
            .map(Instant::from_std)
            .unwrap_or(far)
            .min(shutting_down.unwrap_or(far));
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c(), if shutting_down.is_none() => {
                shutting_down = Some(begin_shutdown(&mut ep));
            }
            _ = sigterm.recv(), if shutting_down.is_none() => {
                shutting_down = Some(begin_shutdown(&mut ep));
            }
            Some(ev) = media_rx.recv() => {
                let now = std::time::Instant::now();
                match ev {
                    MediaEvent::Allocated { call, port } => ep.media_allocated(now, call, port),
                    MediaEvent::Failed { call } => ep.media_failed(now, call),
                    MediaEvent::RtpTimeout { call } => ep.hangup(now, call, crate::sip::EndReason::RtpTimeout),
                    other => app.on_media_event(other, now),
                }
            }
            Some((call, ok)) = stored_rx.recv() => {
                app.on_stored(call, ok, std::time::Instant::now());
            }
            Some(req) = control_rx.recv() => {
                if let Some(req) = vault.handle(req) {
                    let reply = control(&mut app, &mut ep, &accounts, &names, req.command);
                    let _ = req.reply.send(reply);
                }
            }
            Some(input) = net_rx.recv() => {
                let now = std::time::Instant::now();
                handle_net(&mut ep, &mut transports, now, input);
                // Drain what is already queued before touching timers: cheaper per message.
                for _ in 0..256 {
                    match net_rx.try_recv() {
                        Ok(input) => handle_net(&mut ep, &mut transports, now, input),
                        Err(_) => break,
                    }
                    dispatch(&mut ep, &mut app, &mut transports, &media, &store_tx, &cfg.operators.feature_available);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                ep.handle_timeout(std::time::Instant::now());
                app.handle_timeout(std::time::Instant::now());
                if shutting_down.is_some_and(|t| t <= Instant::now()) {
                    break;
                }
            }
        }
        dispatch(
            &mut ep,
            &mut app,
            &mut transports,
            &media,
            &store_tx,
            &cfg.operators.feature_available,
        );
        if shutting_down.is_some() && ep.call_count() == 0 {
            break;
        }
    }
    let (ftx, frx) = std::sync::mpsc::channel();
    let _ = store_tx.send(StoreCommand::Checkpoint(ftx));
    let _ = frx.recv_timeout(Duration::from_secs(10));
    println!("hotline: stopped");
    Ok(())
}

fn begin_shutdown(ep: &mut Endpoint) -> Instant {
    tracing::info!(
        calls = ep.call_count(),
        "shutting down: hanging up every call"
    );
    ep.hangup_all(std::time::Instant::now());
    // BYE transactions get a few seconds to complete.
    Instant::now() + Duration::from_secs(3)
}

fn handle_net(
    ep: &mut Endpoint,
    transports: &mut Transports,
    now: std::time::Instant,
    input: NetInput,
) {
    match input {
        NetInput::Datagram {
            link,
            local,
            from,
            data,
        } => ep.handle_datagram(now, link, local, from, &data),
        NetInput::Stream { peer, item } => match item {
            crate::sip::raw::StreamItem::Message(m) => ep.handle_stream_message(now, peer, m),
            crate::sip::raw::StreamItem::Fatal(e, partial) => {
                ep.handle_stream_error(peer, e, partial)
            }
        },
        NetInput::ConnOpened { id, sender } => transports.conn_opened(id, sender),
        NetInput::ConnClosed { id } => transports.conn_closed(id),
    }
}

fn refresh_operator_names(conn: &rusqlite::Connection, names: &OperatorNames) {
    match store::list_operators(conn) {
        Ok(rows) => {
            if let Ok(mut m) = names.lock() {
                m.clear();
                m.extend(rows.into_iter().map(|r| (r.sip_username, r.name)));
            }
        }
        Err(e) => tracing::error!("cannot list operators: {e}"),
    }
}

/// Answers one request of the local control socket.
fn control(
    app: &mut App,
    ep: &mut Endpoint,
    accounts: &std::sync::Mutex<rusqlite::Connection>,
    names: &OperatorNames,
    command: ControlCommand,
) -> serde_json::Value {
    use serde_json::json;
    let now = std::time::Instant::now();
    match command {
        ControlCommand::Queue => {
            let snap = app.queue_snapshot(now);
            let callers: Vec<_> = snap
                .callers
                .iter()
                .map(|c| {
                    json!({
                        "call": c.call.0,
                        "position": c.position,
                        "priority": c.priority,
                        "waited_s": c.waited.as_secs_f64(),
                        "offered_to": c.offered_to.iter().map(|o| app.operator_name(o)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let operators: Vec<_> = snap
                .operators
                .iter()
                .map(|o| {
                    json!({
                        "name": app.operator_name(&o.id),
                        "sip_username": o.id,
                        "state": crate::app::state_name(&o.state),
                        "idle_s": o.idle_for.map(|d| d.as_secs_f64()),
                        "misses": o.consecutive_misses,
                        "contacts": ep.operator_contacts(&o.id, now).len(),
                    })
                })
                .collect();
            json!({"ok": true, "callers": callers, "operators": operators})
        }
        ControlCommand::OperatorState { name, state } => {
            let available = match state.as_str() {
                "available" => true,
                "paused" => false,
                other => {
                    return json!({"ok": false, "error": format!("unknown state \"{other}\" (available or paused)")})
                }
            };
            if let Ok(conn) = accounts.lock() {
                refresh_operator_names(&conn, names);
            }
            let user = names.lock().ok().and_then(|m| {
                m.iter()
                    .find(|(u, n)| **n == name || **u == name)
                    .map(|(u, _)| u.clone())
            });
            let Some(user) = user else {
                return json!({"ok": false, "error": format!("no operator named \"{name}\"")});
            };
            match app.set_operator_state(&user, available, "cli", now) {
                Ok(state) => json!({"ok": true, "state": state}),
                Err(e) => json!({"ok": false, "error": e}),
            }
        }
        ControlCommand::OperatorsChanged => {
            if let Ok(conn) = accounts.lock() {
                refresh_operator_names(&conn, names);
            }
            let known = names.lock().map(|m| m.clone()).unwrap_or_default();
            ep.forget_operators_except(&|user| known.contains_key(user));
            json!({"ok": true})
        }
        // The sealing commands are answered by the vault before this.
        _ => json!({"ok": false, "error": "not handled here"}),
    }
}

fn dispatch(
    ep: &mut Endpoint,
    app: &mut App,
    transports: &mut Transports,
    media: &engine::MediaHandle,
    store_tx: &std::sync::mpsc::Sender<StoreCommand>,
    feature_available: &str,
) {
    loop {
        let now = std::time::Instant::now();
        let mut progressed = false;
        while let Some(out) = ep.poll_output() {
            progressed = true;
            match out {
                Output::Transmit { peer, data } => transports.send(peer, data),
                Output::Media(cmd) => media.send(EngineCommand::Sip(cmd)),
                Output::Call(ev) => {
                    app.on_call_event(&ev, now);
                    let _ = store_tx.send(StoreCommand::Event(ev));
                }
                Output::Info {
                    call,
                    content_type,
                    body,
                } => match crate::media::sip_info::parse_dtmf_info(&content_type, &body) {
                    Ok((digit, duration)) => media.send(EngineCommand::InfoDigit {
                        call,
                        digit,
                        duration_ms: duration.unwrap_or(100),
                    }),
                    Err(e) => tracing::debug!(call, "INFO without a digit: {e}"),
                },
                Output::CloseConnection(id) => transports.close(id),
                Output::Registrar(ev) => match ev {
                    RegistrarEvent::OperatorOnline { user } => {
                        app.operator_registered(&user, true, now)
                    }
                    RegistrarEvent::OperatorOffline { user } => {
                        app.operator_registered(&user, false, now)
                    }
                    other => tracing::debug!(?other, "registration"),
                },
                Output::FeatureCode { user, code } => {
                    let available = code == feature_available;
                    match app.set_operator_state(&user, available, "phone", now) {
                        Ok(state) => tracing::info!(operator = %user, state, "set from the phone"),
                        Err(e) => tracing::info!(operator = %user, "feature code ignored: {e}"),
                    }
                }
            }
        }
        while let Some(out) = app.poll_output() {
            progressed = true;
            match out {
                AppOutput::Media(cmd) => media.send(cmd),
                AppOutput::Store(cmd) => {
                    let _ = store_tx.send(cmd);
                }
                AppOutput::Hangup(call) => ep.hangup(now, call, crate::sip::EndReason::OurBye),
                AppOutput::Offer {
                    caller,
                    operator,
                    display,
                    answers,
                } => {
                    // The most recent binding: the phone the operator registered last.
                    match ep.operator_contacts(&operator, now).pop() {
                        Some((contact, peer)) => {
                            let extra = vec![("X-Hotline-Answers".to_string(), answers)];
                            let leg = ep
                                .offer_call(&operator, peer, &contact, &display, "hotline", extra);
                            app.offer_placed(caller, &operator, leg);
                        }
                        None => app.offer_failed(caller, &operator, now),
                    }
                }
            }
        }
        if !progressed {
            break;
        }
    }
}
