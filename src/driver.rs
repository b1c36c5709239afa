//! The one driver loop around the SIP endpoint and the media engine, for `serve` and
//! for `hotline call`: it waits for a datagram, a framed stream message, a media event,
//! the next timer or whatever else its user waits for, feeds SIP input to the endpoint,
//! and carries out what needs a socket or the media engine (sending, media commands,
//! closing connections, SIP INFO digits). Everything else comes back to the caller.
//!
//! Owns the I/O of SIP and the wiring of media; reads the clock. Must not hold call
//! logic.

use crate::app::Effect;
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
    /// Some SIP input was given to the endpoint.
    Net,
    Media(MediaEvent),
    /// The deadline passed.
    Timer,
    /// The caller's own source.
    Other(T),
}

pub struct Driver {
    pub transports: Transports,
    pub media: MediaHandle,
    /// Look-ups and connections for provider trunks (serve only).
    pub trunk_io: Option<crate::trunk::io::TrunkIo>,
    net_rx: mpsc::Receiver<NetInput>,
    media_rx: mpsc::UnboundedReceiver<MediaEvent>,
}

/// Messages handled per wake before timers and hosts get their turn.
const NET_BATCH: usize = 256;

impl Driver {
    pub fn new(
        transports: Transports,
        media: MediaHandle,
        net_rx: mpsc::Receiver<NetInput>,
        media_rx: mpsc::UnboundedReceiver<MediaEvent>,
    ) -> Self {
        Driver {
            transports,
            media,
            trunk_io: None,
            net_rx,
            media_rx,
        }
    }

    /// Waits until SIP input (handed to `ep` before returning), a media event,
    /// `deadline` or `other`.
    pub async fn wait<T>(
        &mut self,
        ep: &mut Endpoint,
        deadline: Option<Instant>,
        other: impl Future<Output = T>,
    ) -> Wake<T> {
        let at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        let at = tokio::time::Instant::from_std(at);
        tokio::select! {
            biased;
            Some(input) = self.net_rx.recv() => {
                let now = Instant::now();
                // One atomic load per batch: the clock's verdict for new INVITEs.
                ep.set_overloaded(self.media.lateness.overloaded());
                self.handle_net(ep, now, input);
                // Drain what is already queued: cheaper per message than a wake each.
                for _ in 1..NET_BATCH {
                    match self.net_rx.try_recv() {
                        Ok(input) => self.handle_net(ep, now, input),
                        Err(_) => break,
                    }
                }
                Wake::Net
            }
            Some(ev) = self.media_rx.recv() => Wake::Media(ev),
            t = other => Wake::Other(t),
            _ = tokio::time::sleep_until(at) => Wake::Timer,
        }
    }

    fn handle_net(&mut self, ep: &mut Endpoint, now: Instant, input: NetInput) {
        match input {
            NetInput::Datagram {
                link,
                local,
                from,
                data,
            } => ep.handle_datagram(now, link, local, from, &data),
            NetInput::Stream { peer, item } => match item {
                StreamItem::Message(m) => ep.handle_stream_message(now, peer, m),
                StreamItem::Fatal(e, partial) => ep.handle_stream_error(peer, e, partial),
            },
            NetInput::ConnOpened { id, sender } => self.transports.conn_opened(id, sender),
            NetInput::ConnClosed { id } => self.transports.conn_closed(id),
        }
    }

    /// Carries out what the switchboard asks; store writes go to `store`.
    pub fn apply(&mut self, effect: Effect, store: &mut dyn FnMut(crate::store::StoreCommand)) {
        match effect {
            Effect::Transmit { peer, data } => self.transports.send(peer, data),
            Effect::CloseConnection(id) => self.transports.close(id),
            Effect::Media(cmd) => self.media.send(cmd),
            Effect::Store(cmd) => store(cmd),
            Effect::Trunk(req) => match &self.trunk_io {
                Some(io) => io.perform(req),
                None => tracing::warn!(?req, "trunk I/O asked of a driver without trunks"),
            },
        }
    }

    /// For a driver without hosts (`hotline call`): carries out the endpoint's outputs;
    /// call events, registrations and feature codes go to `host`.
    pub fn drain(&mut self, ep: &mut Endpoint, host: &mut dyn FnMut(&mut Driver, Output)) {
        while let Some(out) = ep.poll_output() {
            match out {
                Output::Transmit { peer, data } => self.transports.send(peer, data),
                Output::Media(cmd) => self.media.send(EngineCommand::Sip(cmd)),
                Output::CloseConnection(id) => self.transports.close(id),
                Output::Info { .. } => {}
                other => host(self, other),
            }
        }
    }
}

/// Media events the endpoint itself answers (ports, RTP timeouts); the rest is returned.
pub fn media_to_endpoint(ep: &mut Endpoint, ev: MediaEvent, now: Instant) -> Option<MediaEvent> {
    match ev {
        MediaEvent::Allocated { call, port } => ep.media_allocated(now, call, port),
        MediaEvent::Failed { call } => ep.media_failed(now, call),
        MediaEvent::RtpTimeout { call } => ep.hangup(now, call, EndReason::RtpTimeout),
        other => return Some(other),
    }
    None
}
