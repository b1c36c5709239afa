//! `hotline serve`: wires configuration, transports, the endpoint, media and storage
//! together and runs the endpoint's event loop.
//!
//! Owns start-up order (nothing listens before the database and key are ready),
//! dispatch of the endpoint's outputs, and orderly shutdown (every call hung up, every
//! row committed). Must not hold call logic: that is in `sip::endpoint`.

use crate::app::{App, AppOutput};
use crate::config::{CallerIdPolicy, Config};
use crate::media::engine::{self, EngineCommand, InbandPolicy, MediaConfig, MediaEvent};
use crate::privacy::CallerIdFilter;
use crate::sip::transport::{self, NetInput, TcpLimits, Transports};
use crate::sip::{Endpoint, EndpointConfig, Output, TimerConfig};
use crate::store::{self, StoreCommand};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

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
    let filter = CallerIdFilter::load(cfg.privacy.caller_id, &cfg.privacy.hash_key_file)
        .map_err(anyhow::Error::msg)?;
    let addr_filter = {
        let f = filter.clone();
        Box::new(move |a: &str| f.apply(a)) as store::AddrFilter
    };
    let store_tx = store::spawn_writer(cfg.database_path(), addr_filter)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.database_path().display()))?;
    // Recordings cut short by a crash or power loss get their WAV header repaired.
    if let Ok(reports) = crate::media::recorder::repair_dir_recursive(cfg.recordings_dir()) {
        for r in reports {
            match &r.result {
                Ok(crate::media::recorder::RepairOutcome::AlreadyValid) => {}
                Ok(outcome) => {
                    tracing::warn!(path = %r.path.display(), ?outcome, "recording repaired")
                }
                Err(e) => {
                    tracing::error!(path = %r.path.display(), "recording cannot be repaired: {e}")
                }
            }
        }
    }
    let (stored_tx, mut stored_rx) = mpsc::unbounded_channel();
    let mut app = App::new(flow, prompts.clone(), cfg.recordings_dir(), stored_tx);

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
    let mut ep = Endpoint::new(endpoint_config(&cfg, &filter));
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
            Some(input) = net_rx.recv() => {
                let now = std::time::Instant::now();
                handle_net(&mut ep, &mut transports, now, input);
                // Drain what is already queued before touching timers: cheaper per message.
                for _ in 0..256 {
                    match net_rx.try_recv() {
                        Ok(input) => handle_net(&mut ep, &mut transports, now, input),
                        Err(_) => break,
                    }
                    dispatch(&mut ep, &mut app, &mut transports, &media, &store_tx);
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
        dispatch(&mut ep, &mut app, &mut transports, &media, &store_tx);
        if shutting_down.is_some() && ep.call_count() == 0 {
            break;
        }
    }
    let (ftx, frx) = std::sync::mpsc::channel();
    let _ = store_tx.send(StoreCommand::Flush(ftx));
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

fn dispatch(
    ep: &mut Endpoint,
    app: &mut App,
    transports: &mut Transports,
    media: &engine::MediaHandle,
    store_tx: &std::sync::mpsc::Sender<StoreCommand>,
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
                Output::Registrar(_) | Output::FeatureCode { .. } => {}
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
            }
        }
        if !progressed {
            break;
        }
    }
}
