//! The whole hotline without its I/O: the SIP endpoint and the hosts, joined. Call
//! events go from the endpoint to the hosts and to the store, the hosts' hang-ups and
//! offers go back to the endpoint, and whatever needs a socket, the media engine or the
//! database leaves as an `Effect` for the shell to carry out.
//!
//! The one place this routing lives: `serve` runs it on real sockets, the
//! simulated-time tests on a virtual network. Sans-IO: time is an argument.

use super::{App, AppOutput};
use crate::call::{CallId, EndReason, MediaEvent, Peer};
use crate::media::core::EngineCommand;
use crate::sip::registrar::RegistrarEvent;
use crate::sip::{Endpoint, Output};
use crate::store::{StoreCommand, StoreEvent};
use crate::trunk::{IoEvent, IoRequest, TrunkEffect, Trunks};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// What the shell must do.
#[derive(Debug)]
pub enum Effect {
    Transmit {
        peer: Peer,
        data: Arc<[u8]>,
    },
    CloseConnection(u64),
    Media(EngineCommand),
    Store(StoreCommand),
    /// A DNS look-up or a connection for a trunk.
    Trunk(IoRequest),
}

pub struct Switchboard {
    pub ep: Endpoint,
    pub app: App,
    /// Provider registrations; their requests share the endpoint's transactions.
    pub trunks: Trunks,
    /// The feature code that makes an operator available (any other pauses).
    feature_available: String,
    effects: VecDeque<Effect>,
}

impl Switchboard {
    pub fn new(ep: Endpoint, app: App, feature_available: String) -> Self {
        Switchboard {
            ep,
            app,
            trunks: Trunks::default(),
            feature_available,
            effects: VecDeque::new(),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ep.poll_timeout(),
            self.app.poll_timeout(),
            self.trunks.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.trunks.handle_timeout(now, &mut self.ep);
        self.app.handle_timeout(now);
        self.pump(now);
    }

    pub fn on_media_event(&mut self, ev: MediaEvent, now: Instant) {
        match ev {
            MediaEvent::Allocated { call, port } => self.ep.media_allocated(now, call, port),
            MediaEvent::Failed { call } => self.ep.media_failed(now, call),
            MediaEvent::RtpTimeout { call } => self.ep.hangup(now, call, EndReason::RtpTimeout),
            other => self.app.on_media_event(other, now),
        }
        self.pump(now);
    }

    pub fn on_store_event(&mut self, ev: StoreEvent, now: Instant) {
        match ev {
            StoreEvent::RecordingStored { call, ok } => self.app.on_stored(call, ok, now),
        }
        self.pump(now);
    }

    /// After feeding the endpoint directly (datagrams, stream messages): route what it
    /// produced.
    pub fn after_input(&mut self, now: Instant) {
        self.pump(now);
    }

    /// Starts registering with the configured providers.
    pub fn start_trunks(&mut self, trunks: Trunks, now: Instant) {
        self.trunks = trunks;
        self.trunks.start(now, &mut self.ep);
        self.pump(now);
    }

    /// The shell's answer to a trunk's look-up or connection.
    pub fn on_trunk_event(&mut self, ev: IoEvent, now: Instant) {
        self.trunks.on_io(now, ev, &mut self.ep);
        self.pump(now);
    }

    /// Clean shutdown of the trunks: registered ones unregister.
    pub fn shutdown_trunks(&mut self, now: Instant) {
        self.trunks.shutdown(now, &mut self.ep);
        self.pump(now);
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Moves outputs between the endpoint and the hosts until both are quiet.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(out) = self.ep.poll_output() {
                moved = true;
                self.route_endpoint_output(out, now);
            }
            while let Some(out) = self.app.poll_output() {
                moved = true;
                self.route_host_output(out, now);
            }
            while let Some(effect) = self.trunks.poll_effect() {
                self.effects.push_back(match effect {
                    TrunkEffect::Transmit { peer, data } => Effect::Transmit { peer, data },
                    TrunkEffect::Close(id) => Effect::CloseConnection(id),
                    TrunkEffect::Io(req) => Effect::Trunk(req),
                });
            }
            if !moved {
                return;
            }
        }
    }

    fn route_endpoint_output(&mut self, out: Output, now: Instant) {
        match out {
            Output::Transmit { peer, data } => {
                self.effects.push_back(Effect::Transmit { peer, data })
            }
            Output::CloseConnection(id) => self.effects.push_back(Effect::CloseConnection(id)),
            Output::Media(cmd) => self
                .effects
                .push_back(Effect::Media(EngineCommand::Sip(cmd))),
            Output::Call(ev) => {
                self.app.on_call_event(&ev, now);
                self.effects
                    .push_back(Effect::Store(StoreCommand::Event(ev)));
            }
            Output::Info {
                call,
                content_type,
                body,
            } => match crate::media::sip_info::parse_dtmf_info(&content_type, &body) {
                Ok((digit, duration)) => {
                    self.effects
                        .push_back(Effect::Media(EngineCommand::InfoDigit {
                            call,
                            digit,
                            duration_ms: duration.unwrap_or(100),
                        }))
                }
                Err(e) => tracing::debug!(call, "INFO without a digit: {e}"),
            },
            Output::Registrar(RegistrarEvent::OperatorOnline { user }) => {
                self.app.operator_registered(&user, true, now)
            }
            Output::Registrar(RegistrarEvent::OperatorOffline { user }) => {
                self.app.operator_registered(&user, false, now)
            }
            Output::Registrar(other) => tracing::debug!(?other, "registration"),
            Output::Client(result) => {
                if !self.trunks.on_client_result(now, result, &mut self.ep) {
                    tracing::debug!("answer to a request nobody waits for");
                }
            }
            Output::FeatureCode { user, code } => {
                let available = code == self.feature_available;
                match self.app.set_operator_state(&user, available, "phone", now) {
                    Ok(state) => tracing::info!(operator = %user, state, "set from the phone"),
                    Err(e) => tracing::info!(operator = %user, "feature code ignored: {e}"),
                }
            }
        }
    }

    fn route_host_output(&mut self, out: AppOutput, now: Instant) {
        match out {
            AppOutput::Media(cmd) => self.effects.push_back(Effect::Media(cmd)),
            AppOutput::Store(cmd) => self.effects.push_back(Effect::Store(cmd)),
            AppOutput::Hangup(call) => self.ep.hangup(now, call, EndReason::OurBye),
            AppOutput::Offer {
                caller,
                operator,
                display,
                answers,
            } => self.offer(now, caller, &operator, &display, answers),
        }
    }

    /// Rings the phone the operator registered last.
    fn offer(
        &mut self,
        now: Instant,
        caller: CallId,
        operator: &str,
        display: &str,
        answers: String,
    ) {
        match self.ep.operator_contacts(operator, now).pop() {
            Some((contact, peer)) => {
                let extra = vec![("X-Hotline-Answers".to_string(), answers)];
                let leg = self
                    .ep
                    .offer_call(now, operator, peer, &contact, display, "hotline", extra);
                self.app.offer_placed(caller, operator, leg);
            }
            None => self.app.offer_failed(caller, operator, now),
        }
    }
}
