//! The one driver loop around the SIP endpoint and the media engine, for `serve` and
//! for `hotline call`: it waits for a datagram, a framed stream message, a media event,
//! the next timer or whatever else its user waits for, feeds the endpoint, and carries
//! out the endpoint's outputs that need no host (sending, media commands, closing
//! connections, SIP INFO digits). Everything else comes back to the caller.
//!
//! Owns the I/O of SIP and the wiring of media; reads the clock. Must not hold call
//! logic.

use crate::call::{EndReason, MediaEvent};
use crate::media::engine::{EngineCommand, MediaHandle};
use crate::sip::raw::StreamItem;
use crate::sip::transport::{NetInput, Transports};
use crate::sip::{Endpoint, Output};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What woke the loop.
pub enum Wake<T> {
    /// Some SIP input was handled.
    Net,
    /// A media event for the host (allocation and RTP timeouts are handled here).
    Media(MediaEvent),
    /// The deadline passed.
    Timer,
    /// The caller's own source.
    Other(T),
}

pub struct Driver {
    pub ep: Endpoint,
    pub transports: Transports,
    pub media: MediaHandle,
    net_rx: mpsc::Receiver<NetInput>,
    media_rx: mpsc::UnboundedReceiver<MediaEvent>,
}

/// Messages handled per wake before timers and hosts get their turn.
const NET_BATCH: usize = 256;

impl Driver {
    pub fn new(
        ep: Endpoint,
        transports: Transports,
        media: MediaHandle,
        net_rx: mpsc::Receiver<NetInput>,
        media_rx: mpsc::UnboundedReceiver<MediaEvent>,
    ) -> Self {
        Driver {
            ep,
            transports,
            media,
            net_rx,
            media_rx,
        }
    }

    /// Waits until SIP input, a media event, `deadline` (or the endpoint's own next
    /// timer) or `other`. SIP input is handled before returning; so are endpoint
    /// timers when they are due.
    pub async fn wait<T>(
        &mut self,
        deadline: Option<Instant>,
        other: impl Future<Output = T>,
    ) -> Wake<T> {
        let far = Instant::now() + Duration::from_secs(86_400);
        let at = self
            .ep
            .poll_timeout()
            .into_iter()
            .chain(deadline)
            .min()
            .unwrap_or(far);
        let at = tokio::time::Instant::from_std(at);
        tokio::select! {
            biased;
            Some(input) = self.net_rx.recv() => {
                let now = Instant::now();
                self.handle_net(now, input);
                // Drain what is already queued: cheaper per message than a wake each.
                for _ in 1..NET_BATCH {
                    match self.net_rx.try_recv() {
                        Ok(input) => self.handle_net(now, input),
                        Err(_) => break,
                    }
                }
                Wake::Net
            }
            Some(ev) = self.media_rx.recv() => {
                let now = Instant::now();
                match ev {
                    MediaEvent::Allocated { call, port } => {
                        self.ep.media_allocated(now, call, port);
                        Wake::Net
                    }
                    MediaEvent::Failed { call } => {
                        self.ep.media_failed(now, call);
                        Wake::Net
                    }
                    MediaEvent::RtpTimeout { call } => {
                        self.ep.hangup(now, call, EndReason::RtpTimeout);
                        Wake::Net
                    }
                    other => Wake::Media(other),
                }
            }
            t = other => Wake::Other(t),
            _ = tokio::time::sleep_until(at) => {
                self.ep.handle_timeout(Instant::now());
                Wake::Timer
            }
        }
    }

    fn handle_net(&mut self, now: Instant, input: NetInput) {
        match input {
            NetInput::Datagram {
                link,
                local,
                from,
                data,
            } => self.ep.handle_datagram(now, link, local, from, &data),
            NetInput::Stream { peer, item } => match item {
                StreamItem::Message(m) => self.ep.handle_stream_message(now, peer, m),
                StreamItem::Fatal(e, partial) => self.ep.handle_stream_error(peer, e, partial),
            },
            NetInput::ConnOpened { id, sender } => self.transports.conn_opened(id, sender),
            NetInput::ConnClosed { id } => self.transports.conn_closed(id),
        }
    }

    /// Carries out the endpoint's outputs; what concerns calls is handed to `host`.
    /// Returns whether there were any.
    pub fn drain(&mut self, host: &mut dyn FnMut(&mut Driver, Output)) -> bool {
        let mut any = false;
        while let Some(out) = self.ep.poll_output() {
            any = true;
            match out {
                Output::Transmit { peer, data } => self.transports.send(peer, data),
                Output::Media(cmd) => self.media.send(EngineCommand::Sip(cmd)),
                Output::CloseConnection(id) => self.transports.close(id),
                Output::Info {
                    call,
                    content_type,
                    body,
                } => match crate::media::sip_info::parse_dtmf_info(&content_type, &body) {
                    Ok((digit, duration)) => self.media.send(EngineCommand::InfoDigit {
                        call,
                        digit,
                        duration_ms: duration.unwrap_or(100),
                    }),
                    Err(e) => tracing::debug!(call, "INFO without a digit: {e}"),
                },
                other => host(self, other),
            }
        }
        any
    }
}
