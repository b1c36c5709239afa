//! `hotline serve`: start-up in order (nothing listens before the database, the key,
//! the flow and the prompts are ready), then the loop that joins the driver (SIP and
//! media), the hosts (IVR and queue), the store and the control socket, and an orderly
//! stop (every call hung up, every row committed).
//!
//! Owns wiring and the clock; reads the wall clock and seeds the generators the
//! sans-IO parts are given. Must not hold call logic.

pub mod answers;
pub mod lifecycle;
pub mod live;
pub mod load;
pub mod trunks;

use crate::app::{App, AppSetup, Switchboard};
use crate::call::WallClock;
use crate::config::{CallerIdPolicy, Config};
use crate::control::{ControlCommand, ControlRequest};
use crate::driver::{Driver, Wake};
use crate::media::engine::{self, InbandPolicy, MediaConfig};
use crate::privacy::CallerIdFilter;
use crate::sip::admission::AdmissionConfig;
use crate::sip::digest::DigestConfig;
use crate::sip::operators::RegistrarSetup;
use crate::sip::registrar::RegistrarConfig;
use crate::sip::transport::{self, TcpLimits};
use crate::sip::{Endpoint, EndpointConfig, TimerConfig};
use crate::store::{self, StoreCommand, StoreEvent};
use lifecycle::Phase;
pub use lifecycle::ServeOptions;
use rand::SeedableRng;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// The operators' registrar settings.
pub fn registrar_setup(cfg: &Config) -> RegistrarSetup {
    let op = &cfg.operators;
    let mut digest = DigestConfig::new(op.realm.clone());
    digest.nonce_lifetime = Duration::from_secs(op.nonce_lifetime_s);
    digest.algorithms = op
        .digest_algorithms
        .iter()
        .filter_map(|a| crate::sip::digest::Algorithm::from_token(a))
        .collect();
    RegistrarSetup {
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

pub fn admission_config(cfg: &Config) -> AdmissionConfig {
    let l = &cfg.limits;
    AdmissionConfig {
        rate: l.source_rate,
        burst: l.source_burst,
        // A provider's signalling addresses are trusted like the listed sources.
        trusted: l
            .trusted_sources
            .iter()
            .chain(cfg.trunks.iter().flat_map(|t| &t.accept_from))
            .copied()
            .collect(),
        max_calls_per_source: l.max_calls_per_source,
        ban: Duration::from_secs(l.ban_s),
        ban_after: l.source_burst,
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
        admission: admission_config(cfg),
        max_message_bytes: cfg.sip.max_message_bytes,
        caller_id: Arc::new(move |s: &str| f.apply(s)),
        call_id_label: {
            let f = filter.clone();
            Arc::new(move |s: &str| f.call_id_label(s))
        },
        address_label: {
            let f = filter.clone();
            Arc::new(move |ip: IpAddr| f.apply(&ip.to_string()).unwrap_or_else(|| "-".into()))
        },
        log_messages: filter.policy() == CallerIdPolicy::Keep,
        registrar: Some(registrar_setup(cfg)),
        srtp: cfg.rtp.srtp,
        srtp_keys: Some(srtp_key_source()),
        ..EndpointConfig::default()
    }
}

/// Fresh SRTP master keys from the operating system's randomness, one per leg.
fn srtp_key_source() -> crate::sip::endpoint::SrtpKeySource {
    Arc::new(|| {
        use rand::RngCore;
        let mut raw = [0u8; 30];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let key = crate::call::SrtpMasterKey::from_concatenated(&raw);
        zeroize::Zeroize::zeroize(&mut raw);
        key
    })
}

pub fn media_config(cfg: &Config) -> MediaConfig {
    MediaConfig {
        ports: cfg.rtp.ports,
        rtp_timeout: Duration::from_secs(cfg.rtp.timeout_s),
        inband: match cfg.rtp.inband_dtmf {
            crate::config::InbandDtmf::Auto => InbandPolicy::Auto,
            crate::config::InbandDtmf::Always => InbandPolicy::Always,
            crate::config::InbandDtmf::Never => InbandPolicy::Never,
        },
        latch: cfg.rtp.latch,
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

/// Everything besides SIP and media the loop listens to.
enum Extra {
    Control(ControlRequest),
    Store(StoreEvent),
    Trunk(crate::trunk::IoEvent),
    Console(crate::console::LiveRequest),
    Figures(crate::metrics::FiguresRequest),
    Stop,
    Reload,
}

pub async fn run(mut cfg: Config, options: ServeOptions) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Before anything else: from here on SIGHUP reloads and SIGTERM stops in order,
    // instead of killing the process.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let (flow, prompts) = load::call_flow(&cfg).map_err(StartError::Config)?;
    let mut trunk_seed = rand::rngs::StdRng::from_entropy();
    let provider_trunks = trunks::from_config(&cfg, &mut trunk_seed).map_err(StartError::Config)?;
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
    let filter = CallerIdFilter::load(
        cfg.privacy.caller_id,
        &cfg.hash_key_path(),
        &mut rand::rngs::OsRng,
    )
    .map_err(anyhow::Error::msg)?;
    let addr_filter = {
        let f = filter.clone();
        Box::new(move |a: &str| f.apply(a)) as store::AddrFilter
    };
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (store_events_tx, mut store_events) = mpsc::unbounded_channel();
    let store_tx = store::startup::start(
        &cfg,
        addr_filter,
        Box::new(move |ev| {
            let _ = store_events_tx.send(ev);
        }),
        live::store_observer(metrics.clone()),
        SystemTime::now(),
    )?;
    crate::maintenance::spawn(&cfg, filter.clone());
    let vault = crate::vault::Vault::new(&cfg);
    let accounts = store::open(&cfg.database_path())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.database_path().display()))?;
    let references = store::stored_references(&accounts)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.database_path().display()))?;
    let reference_book =
        crate::reference::ReferenceBook::from_stored(references.iter().map(String::as_str));
    let started = Instant::now();
    let wall = WallClock::anchor(started, SystemTime::now());
    let mut seed = rand::rngs::StdRng::from_entropy();
    let app = App::new(
        AppSetup {
            flow,
            prompts: prompts.clone(),
            recordings_dir: cfg.recordings_dir(),
            queue: cfg.queue.clone(),
            available_on_register: cfg.operators.available_on_register,
        },
        rand::rngs::StdRng::from_rng(&mut seed).map_err(anyhow::Error::from)?,
        wall,
    );
    let mut control_rx = crate::control::spawn_listener(&crate::control::socket_path(&cfg))
        .map_err(|e| anyhow::anyhow!("control socket: {e}"))?;
    let (mut live, board) = live::Live::new(&cfg, &accounts, wall, metrics.clone())
        .map_err(|e| StartError::Config(vec![e]))?;
    let (live_tx, mut console_rx) = crate::console::live_channel();
    let (figures_tx, mut figures_rx) = crate::metrics::figures_channel();
    let wiring = crate::console::Wiring {
        live: live_tx,
        board,
        metrics: metrics.clone(),
        figures: figures_tx,
        keyring: vault.keyring(),
    };
    let listening = crate::console::start(&cfg, wiring)
        .await
        .map_err(|e| match e {
            crate::console::StartError::Config(e) => StartError::Config(vec![e]),
            crate::console::StartError::Other(e) => StartError::Other(anyhow::anyhow!(e)),
        })?;

    let (net_tx, net_rx) = transport::input_channel();
    let limits = TcpLimits {
        idle_timeout: Duration::from_secs(cfg.sip.tcp_idle_timeout_s),
        max_per_source: cfg.sip.tcp_max_connections_per_source,
        max_message: cfg.sip.max_message_bytes,
        max_connections: cfg.limits.max_tcp_connections,
        message_timeout: Duration::from_secs(cfg.limits.tcp_message_timeout_s),
    };
    let tls = crate::sip::tls::listener(&cfg, std::time::SystemTime::now())
        .map_err(|e| StartError::Config(vec![format!("tls: {e}")]))?;
    let transports = transport::bind_with_tls(&cfg.sip.listen, limits, tls, net_tx.clone()).await?;
    let (trunk_ev_tx, mut trunk_events) = mpsc::unbounded_channel();
    let trunk_io = crate::trunk::io::TrunkIo::new(
        &transports.bound,
        &cfg.sip.dns_servers,
        cfg.sip.max_message_bytes,
        trunk_seed,
        net_tx,
        trunk_ev_tx,
    )
    .with_tls(crate::trunk::io::TrunkTls::from_config(&cfg));
    let (media_ev_tx, media_rx) = mpsc::unbounded_channel();
    let overload = cfg
        .limits
        .overload_threshold()
        .map(crate::media::overload::OverloadConfig::with_threshold);
    let media = engine::spawn_watched(
        media_config(&cfg),
        overload,
        cfg.rtp.realtime_priority,
        media_ev_tx,
    )
    .map_err(|e| anyhow::anyhow!("cannot start the media threads: {e}"))?;
    metrics.attach_clock(media.lateness.clone());
    metrics.attach_srtp_drops(media.srtp_drops.clone());
    let ep = Endpoint::new(
        endpoint_config(&cfg, &filter),
        rand::rngs::StdRng::from_rng(&mut seed).map_err(anyhow::Error::from)?,
        started,
        wall,
    );
    let mut driver = Driver::new(transports, media, net_rx, media_rx);
    driver.trunk_io = Some(trunk_io);
    let scheme = if cfg.console.tls { "https" } else { "http" };
    if let Some(a) = listening.console {
        tracing::info!("console listening on {scheme}://{a}");
    }
    if let Some(a) = listening.metrics {
        tracing::info!("metrics listening on http://{a}/metrics");
    }
    for b in &driver.transports.bound {
        tracing::info!("SIP listening on {b}");
    }
    tracing::info!(
        "RTP ports {}-{}, database {}, {} prompts, caller-id {:?}",
        cfg.rtp.ports.first,
        cfg.rtp.ports.last,
        cfg.database_path().display(),
        prompts.len(),
        cfg.privacy.caller_id
    );
    let mut app = app;
    app.use_reference_book(reference_book);
    let mut sb = Switchboard::new(ep, app, cfg.operators.feature_available.clone());
    answers::load_operators(&accounts, &cfg, &mut sb);
    sb.start_trunks(provider_trunks, Instant::now());
    while let Some(effect) = sb.poll_effect() {
        driver.apply(effect, &mut |cmd| {
            let _ = store_tx.send(cmd);
        });
    }
    tracing::info!("hotline started");

    live.after_wake(&sb, Instant::now());
    lifecycle::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = lifecycle::watchdog_interval();
    let mut watchdog_due = watchdog.map(|i| Instant::now() + i);
    let mut phase = Phase::Running;
    loop {
        let deadline = sb
            .poll_timeout()
            .into_iter()
            .chain(phase.deadline())
            .chain(live.deadline())
            .chain(watchdog_due)
            .min();
        let hanging_up = phase.hanging_up();
        let extra = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c(), if !hanging_up => Extra::Stop,
                _ = sigterm.recv(), if !hanging_up => Extra::Stop,
                _ = sighup.recv() => Extra::Reload,
                Some(req) = control_rx.recv() => Extra::Control(req),
                Some(ev) = store_events.recv() => Extra::Store(ev),
                Some(ev) = trunk_events.recv() => Extra::Trunk(ev),
                Some(req) = console_rx.recv() => Extra::Console(req),
                Some(req) = figures_rx.recv() => Extra::Figures(req),
            }
        };
        let wake = driver.wait(&mut sb.ep, deadline, extra).await;
        let now = Instant::now();
        match wake {
            Wake::Net => sb.after_input(now),
            Wake::Media(ev) => sb.on_media_event(ev, now),
            Wake::Timer => {
                sb.handle_timeout(now);
                if let (Some(interval), Some(due)) = (watchdog, watchdog_due) {
                    if due <= now {
                        lifecycle::notify(&[sd_notify::NotifyState::Watchdog]);
                        watchdog_due = Some(now + interval);
                    }
                }
                match phase {
                    Phase::Draining { until } if until <= now => {
                        phase = lifecycle::hang_up(&mut sb, now)
                    }
                    Phase::HangingUp { until } if until <= now => break,
                    _ => {}
                }
            }
            Wake::Other(Extra::Stop) => {
                phase = lifecycle::stop(&mut sb, phase, options.drain, now);
            }
            Wake::Other(Extra::Reload) => {
                lifecycle::reload(&mut sb, &mut cfg, &options);
            }
            Wake::Other(Extra::Control(req)) => {
                // The sealing commands are answered by the vault.
                if let Some(req) = vault.handle(req) {
                    let accounts_changed = req.command == ControlCommand::OperatorsChanged;
                    let reply = answers::control(&mut sb, &driver, &accounts, &cfg, req.command);
                    sb.after_input(now);
                    let _ = req.reply.send(reply);
                    if accounts_changed {
                        live.reload_accounts(&accounts);
                    }
                }
            }
            Wake::Other(Extra::Store(ev)) => sb.on_store_event(ev, now),
            Wake::Other(Extra::Trunk(ev)) => sb.on_trunk_event(ev, now),
            Wake::Other(Extra::Console(req)) => {
                live.console(&mut sb, &accounts, &cfg, req, now);
                sb.after_input(now);
            }
            Wake::Other(Extra::Figures(req)) => live.figures(&sb, &driver, req, now),
        }
        if matches!(phase, Phase::Draining { .. }) && sb.ep.call_count() == 0 {
            tracing::info!("drained: no call left");
            phase = lifecycle::hang_up(&mut sb, now);
        }
        while let Some(effect) = sb.poll_effect() {
            live.effect(&effect);
            driver.apply(effect, &mut |cmd| {
                let _ = store_tx.send(cmd);
            });
        }
        live.after_wake(&sb, now);
        if phase.hanging_up() && sb.ep.call_count() == 0 && sb.trunks.all_stopped() {
            break;
        }
    }
    let _ = std::fs::remove_file(crate::control::socket_path(&cfg));
    let (ftx, frx) = std::sync::mpsc::channel();
    // Every row committed, pending seals done, the WAL folded into hotline.db.
    let _ = store_tx.send(StoreCommand::Checkpoint(ftx));
    let _ = frx.recv_timeout(Duration::from_secs(10));
    tracing::info!("stopped");
    Ok(())
}
