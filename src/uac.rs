//! `hotline call`: a small test softphone on the same endpoint, transactions and
//! media engine as the server, for smoke-testing a deployment and for the tests.
//!
//! Owns only the command's flow: dial, play a WAV as its voice, send digits at given
//! times (RFC 4733, in-band or SIP INFO), record what it hears, hang up, and print one
//! JSON object saying what happened.

use crate::call::{CallEvent, EndReason, MediaEvent, Peer, WallClock};
use crate::config::{ListenAddr, PortRange, Protocol};
use crate::driver::{media_to_endpoint, Driver, Wake};
use crate::media::engine::{self, EngineCommand, InbandPolicy, MediaConfig};
use crate::media::prompt::{load_prompt, Prompt};
use crate::media::session::{DtmfMode, RecordSpec};
use crate::media::voicemail::VoicemailStopConfig;
use crate::sip::transport::{self, TcpLimits};
use crate::sip::{Endpoint, EndpointConfig, Output};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigitMode {
    Rfc4733,
    Inband,
    Info,
}

impl std::str::FromStr for DigitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rfc4733" => Ok(DigitMode::Rfc4733),
            "inband" => Ok(DigitMode::Inband),
            "info" => Ok(DigitMode::Info),
            other => Err(format!(
                "unknown DTMF mode \"{other}\" (rfc4733, inband or info)"
            )),
        }
    }
}

/// `"1@3.0,2@5.5"`: digit and seconds after the answer.
pub fn parse_dtmf_schedule(s: &str) -> Result<Vec<(char, Duration)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (d, t) = item
            .split_once('@')
            .ok_or_else(|| format!("\"{item}\" is not DIGIT@SECONDS"))?;
        let mut chars = d.chars();
        let digit = match (chars.next(), chars.next()) {
            (Some(c), None) if crate::media::dtmf::digit_to_event(c).is_some() => {
                c.to_ascii_uppercase()
            }
            _ => return Err(format!("\"{d}\" is not a DTMF digit")),
        };
        let secs: f64 = t
            .parse()
            .map_err(|_| format!("\"{t}\" is not a number of seconds"))?;
        if !(0.0..=86_400.0).contains(&secs) {
            return Err(format!("\"{t}\" is out of range"));
        }
        out.push((digit, Duration::from_secs_f64(secs)));
    }
    out.sort_by_key(|(_, t)| *t);
    Ok(out)
}

pub struct CallOptions {
    pub target: String,
    pub hangup_after: Duration,
    pub bind: Option<SocketAddr>,
    pub rtp_ports: PortRange,
    pub dtmf: Vec<(char, Duration)>,
    pub dtmf_mode: DigitMode,
    pub play: Option<PathBuf>,
    pub record: Option<PathBuf>,
    /// The user part of From (the caller's "number").
    pub from: String,
}

#[derive(Debug, Serialize, Default)]
pub struct RecordedAudio {
    pub path: String,
    pub duration_ms: u64,
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
    pub digits_sent: String,
    pub dtmf_mode: String,
    pub recorded: Option<RecordedAudio>,
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
    let voice: Option<Arc<Prompt>> = match &opts.play {
        Some(p) => Some(Arc::new(Prompt::new(
            load_prompt(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        ))),
        None => None,
    };
    let remote = SocketAddr::new(ip, uri.port.unwrap_or(5060));
    let bind = opts.bind.unwrap_or_else(|| {
        let any = SocketAddr::new(
            if ip.is_ipv4() {
                [0u8; 4].into()
            } else {
                [0u16; 8].into()
            },
            0,
        );
        let local = transport::resolve_local_for(any, remote);
        SocketAddr::new(local.ip(), 0)
    });
    let (net_tx, net_rx) = transport::input_channel();
    let limits = TcpLimits {
        idle_timeout: Duration::from_secs(60),
        max_per_source: 4,
        max_message: 65535,
        ..TcpLimits::default()
    };
    let transports = transport::bind(
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
    let (media_tx, media_rx) = mpsc::unbounded_channel();
    let media = engine::spawn(
        MediaConfig {
            ports: opts.rtp_ports,
            rtp_timeout: Duration::ZERO,
            inband: InbandPolicy::Never,
            latch: true,
        },
        media_tx,
    )
    .map_err(|e| anyhow::anyhow!("cannot start the media threads: {e}"))?;
    let started = Instant::now();
    let mut ep = Endpoint::new(
        EndpointConfig {
            max_calls: 1,
            // A caller sending in-band tones must not offer telephone-event, or the far
            // end would rightly listen for events instead.
            offer_telephone_event: opts.dtmf_mode != DigitMode::Inband,
            ..EndpointConfig::default()
        },
        rand::SeedableRng::from_entropy(),
        started,
        WallClock::anchor(started, std::time::SystemTime::now()),
    );
    let mut driver = Driver::new(transports, media, net_rx, media_rx);
    let call = ep.place_call(
        started,
        Peer {
            link,
            remote,
            local,
        },
        &opts.target,
        &opts.from,
    );
    let mut summary = CallSummary {
        target: opts.target.clone(),
        dtmf_mode: format!("{:?}", opts.dtmf_mode).to_ascii_lowercase(),
        ..Default::default()
    };
    let mut answered_at: Option<Instant> = None;
    let mut give_up = started + opts.hangup_after + Duration::from_secs(70);
    let mut hung_up = false;
    let mut ended = false;
    let mut pending_digits = opts.dtmf.clone();
    pending_digits.reverse();
    let mut awaiting_recording = false;
    loop {
        driver.drain(&mut ep, &mut |d, out| match out {
            Output::Call(CallEvent::Started { sip_call_id, .. }) => {
                summary.sip_call_id = Some(sip_call_id)
            }
            Output::Call(CallEvent::Answered { codec, .. }) => {
                summary.answered = true;
                summary.codec = Some(codec.sdp_name().to_string());
                summary.setup_ms = Some(started.elapsed().as_millis());
                answered_at = Some(Instant::now());
                if let Some(v) = &voice {
                    d.media.send(EngineCommand::Play {
                        call,
                        token: 1,
                        prompts: vec![v.clone()],
                        looping: false,
                    });
                }
                if let Some(path) = &opts.record {
                    let forever = u32::MAX / 16;
                    let stop = VoicemailStopConfig {
                        finish_keys: String::new(),
                        silence_timeout_ms: forever,
                        no_speech_timeout_ms: forever,
                        max_length_ms: forever,
                        keep_silence_ms: forever,
                        ..VoicemailStopConfig::default()
                    };
                    let _ = std::fs::remove_file(path);
                    d.media.send(EngineCommand::StartRecording {
                        call,
                        path: path.clone(),
                        spec: RecordSpec { stop },
                    });
                    awaiting_recording = true;
                }
            }
            Output::Call(CallEvent::Ended { reason, .. }) => {
                summary.end_reason = Some(reason.as_str());
                summary.duration_ms = answered_at.map(|a| a.elapsed().as_millis());
                ended = true;
                give_up = give_up.min(Instant::now() + Duration::from_secs(3));
            }
            _ => {}
        });
        if ended && !awaiting_recording {
            break;
        }
        let mut deadline = give_up.min(ep.poll_timeout().unwrap_or(give_up));
        if let (Some(a), false) = (answered_at, hung_up) {
            deadline = deadline.min(a + opts.hangup_after);
            if let Some((_, at)) = pending_digits.last() {
                deadline = deadline.min(a + *at);
            }
        }
        let wake = driver
            .wait(&mut ep, Some(deadline), std::future::pending::<()>())
            .await;
        let wake = match wake {
            Wake::Media(ev) => match media_to_endpoint(&mut ep, ev, Instant::now()) {
                Some(ev) => Wake::Media(ev),
                None => Wake::Net,
            },
            other => other,
        };
        match wake {
            Wake::Net | Wake::Other(()) => {}
            Wake::Media(MediaEvent::RecordingStopped { result, .. }) => {
                awaiting_recording = false;
                match result {
                    Ok(info) => {
                        summary.recorded = Some(RecordedAudio {
                            path: info.path.display().to_string(),
                            duration_ms: info.duration_ms,
                        })
                    }
                    Err(e) => tracing::error!("recording failed: {e}"),
                }
            }
            Wake::Media(_) => {}
            Wake::Timer => {
                let now = Instant::now();
                ep.handle_timeout(now);
                if now >= give_up {
                    break;
                }
                if let (Some(a), false) = (answered_at, hung_up) {
                    while let Some((digit, at)) = pending_digits.last().copied() {
                        if now < a + at {
                            break;
                        }
                        pending_digits.pop();
                        summary.digits_sent.push(digit);
                        let mode = match opts.dtmf_mode {
                            DigitMode::Info => {
                                ep.send_info_digit(now, call, digit, 100);
                                continue;
                            }
                            DigitMode::Rfc4733 => DtmfMode::Rfc4733,
                            DigitMode::Inband => DtmfMode::Inband,
                        };
                        driver.media.send(EngineCommand::SendDigit {
                            call,
                            digit,
                            duration_ms: 100,
                            mode,
                        });
                    }
                    if now >= a + opts.hangup_after {
                        hung_up = true;
                        ep.hangup(now, call, EndReason::OurBye);
                    }
                }
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_schedule_parses_and_sorts() {
        let s = parse_dtmf_schedule("2@5.5, 1@3.0,#@6").unwrap();
        assert_eq!(
            s,
            vec![
                ('1', Duration::from_secs(3)),
                ('2', Duration::from_millis(5500)),
                ('#', Duration::from_secs(6))
            ]
        );
        assert!(parse_dtmf_schedule("x@1").is_err());
        assert!(parse_dtmf_schedule("1@-2").is_err());
        assert!(parse_dtmf_schedule("12@1").is_err());
    }
}
