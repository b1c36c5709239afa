//! `hotline call`: a small test softphone on the same endpoint, transactions and
//! media engine as the server, for smoke-testing a deployment and for the tests.
//!
//! Owns only the command's flow (dial, wait, hang up, report). Prints one JSON object
//! on stdout: what happened to the call.

use crate::config::{ListenAddr, PortRange, Protocol};
use crate::media::engine::{self, MediaConfig, MediaEvent};
use crate::sip::transport::{self, NetInput, TcpLimits};
use crate::sip::{CallEvent, Endpoint, EndpointConfig, Output, Peer};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub struct CallOptions {
    pub target: String,
    pub hangup_after: Duration,
    pub bind: Option<SocketAddr>,
    pub rtp_ports: PortRange,
}

#[derive(Debug, Serialize, Default)]
pub struct CallSummary {
    pub target: String,
    pub sip_call_id: Option<String>,
    pub answered: bool,
    pub codec: Option<String>,
    pub end_reason: Option<String>,
    pub setup_ms: Option<u128>,
    pub duration_ms: Option<u128>,
}

pub async fn run(opts: CallOptions) -> anyhow::Result<CallSummary> {
    let uri = crate::sip::headers::parse_sip_uri(&opts.target)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.target))?
        .ok_or_else(|| {
            anyhow::anyhow!("{}: only sip: and sips: URIs can be called", opts.target)
        })?;
    let ip = crate::sip::headers::host_ip(&uri.host).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the host must be an IP address (no DNS here)",
            opts.target
        )
    })?;
    let remote = SocketAddr::new(ip, uri.port.unwrap_or(5060));
    let bind = opts.bind.unwrap_or_else(|| {
        let any: SocketAddr = if ip.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(remote)
        } else {
            "[::]:0".parse().unwrap_or(remote)
        };
        let local = transport::resolve_local_for(any, remote);
        SocketAddr::new(local.ip(), 0)
    });
    let (net_tx, mut net_rx) = transport::input_channel();
    let limits = TcpLimits {
        idle_timeout: Duration::from_secs(60),
        max_per_source: 4,
        max_message: 65535,
    };
    let mut transports = transport::bind(
        &[ListenAddr {
            protocol: Protocol::Udp,
            addr: bind,
        }],
        limits,
        net_tx,
    )
    .await?;
    let (link, local) = transports
        .first_udp()
        .ok_or_else(|| anyhow::anyhow!("no UDP socket"))?;
    let (media_tx, mut media_rx) = mpsc::unbounded_channel();
    let media = engine::spawn(
        MediaConfig {
            ports: opts.rtp_ports,
            rtp_timeout: Duration::ZERO,
        },
        media_tx,
    );
    let mut ep = Endpoint::new(EndpointConfig {
        max_calls: 1,
        ..EndpointConfig::default()
    });
    let started = Instant::now();
    let call = ep.place_call(
        Peer {
            link,
            remote,
            local,
        },
        &opts.target,
        "hotline-test",
    );
    let mut summary = CallSummary {
        target: opts.target.clone(),
        ..Default::default()
    };
    let mut answered_at: Option<Instant> = None;
    let give_up = started + opts.hangup_after + Duration::from_secs(70);
    let mut hung_up = false;
    loop {
        let mut ended = false;
        while let Some(out) = ep.poll_output() {
            match out {
                Output::Transmit { peer, data } => transports.send(peer, data),
                Output::Media(cmd) => {
                    let _ = media.commands.send(cmd);
                }
                Output::Call(CallEvent::Started { sip_call_id, .. }) => {
                    summary.sip_call_id = Some(sip_call_id)
                }
                Output::Call(CallEvent::Answered { codec, .. }) => {
                    summary.answered = true;
                    summary.codec = Some(codec.sdp_name().to_string());
                    summary.setup_ms = Some(started.elapsed().as_millis());
                    answered_at = Some(Instant::now());
                }
                Output::Call(CallEvent::Ended { reason, .. }) => {
                    summary.end_reason = Some(reason.as_str());
                    summary.duration_ms = answered_at.map(|a| a.elapsed().as_millis());
                    ended = true;
                }
                Output::Info { .. } | Output::CloseConnection(_) => {}
            }
        }
        if ended {
            break;
        }
        let mut deadline = ep
            .poll_timeout()
            .map(Instant::from_std)
            .unwrap_or(give_up)
            .min(give_up);
        if let (Some(a), false) = (answered_at, hung_up) {
            deadline = deadline.min(a + opts.hangup_after);
        }
        tokio::select! {
            Some(input) = net_rx.recv() => {
                let now = std::time::Instant::now();
                match input {
                    NetInput::Datagram { link, local, from, data } => ep.handle_datagram(now, link, local, from, &data),
                    NetInput::ConnOpened { id, sender } => transports.conn_opened(id, sender),
                    NetInput::ConnClosed { id } => transports.conn_closed(id),
                    NetInput::Stream { .. } => {}
                }
            }
            Some(ev) = media_rx.recv() => {
                if let MediaEvent::Allocated { call, port } = ev {
                    ep.media_allocated(std::time::Instant::now(), call, port);
                } else if let MediaEvent::Failed { call } = ev {
                    ep.media_failed(std::time::Instant::now(), call);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if now >= give_up {
                    break;
                }
                if let (Some(a), false) = (answered_at, hung_up) {
                    if now >= a + opts.hangup_after {
                        hung_up = true;
                        ep.hangup(now.into_std(), call, crate::sip::EndReason::OurBye);
                    }
                }
                ep.handle_timeout(now.into_std());
            }
        }
    }
    Ok(summary)
}
