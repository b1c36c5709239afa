//! An inbound call (UAS), from the INVITE to its end: the RTP port is reserved, the
//! call rings for the configured answer delay, is answered with our SDP, waits for its
//! ACK (timer H ends it without one), and ends by BYE either way, CANCEL, or a refusal.
//! Media starts and the call counts as answered only once the ACK arrives: an INVITE
//! from a forged source, never acknowledged, buys no RTP at all.
//!
//! Owns the call's set-up states; inside the established dialog it defers to
//! `Dialog`. Sans-IO: acts through `Transactions`, time passed in. Must not pick
//! which call a message belongs to (the endpoint does).

use super::dialog::{contact_header, local_ip, Dialog, InDialog};
use super::endpoint::EndpointConfig;
use super::message::{self, Request};
use super::raw::RawMessage;
use super::transactions::{ClientPurpose, TimerRef, Transactions};
use crate::call::{CallEvent, EndReason, MediaCommand};
use crate::sdp;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InboundState {
    /// Waiting for the RTP port.
    Allocating,
    /// Port ready; ringing until the answer delay passes.
    Ringing,
    /// 200 sent, waiting for the ACK.
    AwaitingAck,
    Confirmed,
    /// BYE sent, waiting for its response.
    Terminating,
}

/// What the endpoint must do after a call acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Continues,
    /// The call is over now: stop its media and forget it.
    Ended(EndReason),
    /// We sent BYE: the call no longer counts as active; it is forgotten when the
    /// BYE completes.
    ByeSent,
}

pub(super) struct InboundCall {
    pub dialog: Dialog,
    pub state: InboundState,
    /// The INVITE's server transaction and the INVITE as received (for its final
    /// response).
    invite_key: String,
    invite: RawMessage,
    answer_at: Instant,
    pub end_reason: Option<EndReason>,
}

impl InboundCall {
    pub fn new(dialog: Dialog, invite_key: &str, invite: RawMessage, answer_at: Instant) -> Self {
        InboundCall {
            dialog,
            state: InboundState::Allocating,
            invite_key: invite_key.to_string(),
            invite,
            answer_at,
            end_reason: None,
        }
    }

    pub fn is_terminating(&self) -> bool {
        self.state == InboundState::Terminating
    }

    fn respond_to_invite(
        &self,
        t: &mut Transactions,
        now: Instant,
        code: u16,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) {
        let tag = self.dialog.local_tag.clone();
        t.respond(
            now,
            &self.invite_key,
            &self.invite,
            code,
            None,
            Some(&tag),
            extra,
            body,
        );
    }

    /// The media layer reserved `port`.
    pub fn media_allocated(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        port: u16,
    ) -> Outcome {
        self.dialog.media.port = port;
        if self.state != InboundState::Allocating {
            return Outcome::Continues;
        }
        self.state = InboundState::Ringing;
        if self.answer_at <= now {
            self.answer(t, cfg, now);
        } else {
            t.schedule(self.answer_at, TimerRef::CallAnswer(self.dialog.call));
        }
        Outcome::Continues
    }

    /// No RTP port could be had: the call is refused.
    pub fn media_failed(&mut self, t: &mut Transactions, now: Instant) -> Outcome {
        if self.state != InboundState::Allocating {
            return Outcome::Continues;
        }
        self.respond_to_invite(t, now, 503, &[("Retry-After".into(), "5".into())], None);
        Outcome::Ended(EndReason::Error)
    }

    /// The answer delay passed (or there is none).
    pub fn answer(&mut self, t: &mut Transactions, cfg: &EndpointConfig, now: Instant) {
        if self.state != InboundState::Ringing {
            return;
        }
        let media = &mut self.dialog.media;
        let ip = local_ip(cfg, self.dialog.peer);
        let body = match (&media.remote, media.codec) {
            (Some(offer), Some(codec)) => {
                let srtp = media.srtp.local.as_ref();
                sdp::answer(offer, codec, media.origin, ip, media.port, srtp)
            }
            // No offer: ours goes in the 200, the answer comes in the ACK.
            _ => {
                let srtp = media.srtp.offer_line(cfg).cloned();
                sdp::offer(
                    &cfg.codecs,
                    cfg.offer_telephone_event,
                    media.origin,
                    ip,
                    media.port,
                    srtp.as_ref(),
                )
            }
        };
        self.state = InboundState::AwaitingAck;
        let extra = [
            ("Contact".to_string(), contact_header(cfg, self.dialog.peer)),
            ("Allow".to_string(), message::ALLOW.to_string()),
            ("Supported".to_string(), String::new()),
        ];
        self.respond_to_invite(
            t,
            now,
            200,
            &extra,
            Some(("application/sdp", body.as_bytes())),
        );
    }

    /// An ACK matched to the dialog.
    pub fn on_ack(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        req: &Request,
    ) -> Outcome {
        if self.state != InboundState::AwaitingAck {
            if self.state == InboundState::Confirmed {
                self.dialog.reinvite_acked(t, now);
            }
            return Outcome::Continues;
        }
        self.state = InboundState::Confirmed;
        if let Some(e) = t.server.get_mut(&self.invite_key) {
            e.tx.on_ack(now);
            // Its last timer lets the endpoint drop it once late INVITE copies are over.
            if let Some(at) = e.tx.poll_timeout() {
                t.schedule(at, TimerRef::Server(self.invite_key.clone()));
            }
        }
        let call = self.dialog.call;
        if let (Some(offer), Some(codec)) = (&self.dialog.media.remote, self.dialog.media.codec) {
            // The caller is really there: media starts, the call counts as answered.
            let send = !offer.direction.peer_holds();
            t.media(self.dialog.media.start_command(call, offer, codec, send));
            let at = t.wall(now);
            t.emit(CallEvent::Answered { call, codec, at });
            return Outcome::Continues;
        }
        // Our offer was in the 200: the answer is in the ACK.
        let answer = sdp::parse(req.body())
            .map_err(|e| e.to_string())
            .and_then(|a| {
                sdp::choose_codec(&a, &cfg.codecs)
                    .map(|codec| (a, codec))
                    .map_err(|e| e.to_string())
            })
            .and_then(|(a, codec)| {
                self.dialog.media.srtp.take_answer(&a)?;
                Ok((a, codec))
            });
        match answer {
            Ok((a, codec)) => {
                self.dialog.media.codec = Some(codec);
                let cmd =
                    self.dialog
                        .media
                        .start_command(call, &a, codec, !a.direction.peer_holds());
                self.dialog.media.remote = Some(a);
                t.media(cmd);
                let at = t.wall(now);
                t.emit(CallEvent::Answered { call, codec, at });
                Outcome::Continues
            }
            Err(e) => {
                tracing::info!(
                    call = self.dialog.call,
                    "ACK without a usable SDP answer ({e}); hanging up"
                );
                self.hangup(t, now, EndReason::Error)
            }
        }
    }

    /// A CANCEL for the INVITE before its final response.
    pub fn cancelled(&mut self, t: &mut Transactions, now: Instant) -> Outcome {
        self.respond_to_invite(t, now, 487, &[], None);
        Outcome::Ended(EndReason::Cancel)
    }

    pub fn handle_request(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        key: &str,
        req: &Request,
    ) -> Outcome {
        let confirmed = self.state == InboundState::Confirmed;
        match self.dialog.handle_request(t, cfg, now, key, req, confirmed) {
            InDialog::Handled => Outcome::Continues,
            InDialog::PeerHungUp => Outcome::Ended(EndReason::CallerBye),
        }
    }

    /// Ends the call from our side: BYE once established, a final error response
    /// before.
    pub fn hangup(&mut self, t: &mut Transactions, now: Instant, reason: EndReason) -> Outcome {
        match self.state {
            InboundState::Terminating => Outcome::Continues,
            InboundState::Allocating | InboundState::Ringing => {
                let code = if reason == EndReason::Shutdown {
                    503
                } else {
                    480
                };
                self.respond_to_invite(t, now, code, &[], None);
                Outcome::Ended(reason)
            }
            InboundState::AwaitingAck | InboundState::Confirmed => {
                self.end_reason.get_or_insert(reason);
                self.state = InboundState::Terminating;
                let call = self.dialog.call;
                let cseq = self.dialog.next_cseq();
                let branch = t.branch();
                let bye = self.dialog.request("BYE", cseq, &branch, &[], None);
                let peer = self.dialog.target_peer();
                t.media(MediaCommand::Stop { call });
                t.send_request(now, peer, false, bye, branch, ClientPurpose::Bye(call));
                tracing::info!(call, reason = %reason.as_str(), "hanging up");
                Outcome::ByeSent
            }
        }
    }
}
