//! An outbound call (UAC): an offer to an operator's phone, or the test softphone's
//! call. The RTP port is reserved first, then the INVITE goes out; provisional
//! responses allow a CANCEL (RFC 3261 §9.1: never before one), a 2xx is acknowledged
//! (and its retransmissions again), a final error ends the attempt, and an answer that
//! crosses our CANCEL is acknowledged and hung up at once.
//!
//! Owns the attempt's states; inside the established dialog it defers to `Dialog`.
//! Sans-IO: acts through `Transactions`, time passed in.

use super::dialog::{contact_header, local_ip, Dialog, InDialog};
use super::endpoint::EndpointConfig;
use super::inbound::Outcome;
use super::message::{self, Request, Response};
use super::transactions::{ClientPurpose, Transactions};
use crate::call::{CallEvent, EndReason, MediaCommand};
use crate::sdp;
use crate::sdp::sdes::OfferPlan;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OutboundState {
    /// Waiting for the RTP port.
    Allocating,
    /// INVITE sent.
    Calling {
        branch: String,
        /// A provisional response arrived, so a CANCEL may be sent.
        provisional: bool,
        /// We gave up: CANCEL sent or waiting for a provisional response to send it.
        cancelling: bool,
    },
    /// 2xx acknowledged; the ACK is sent again if the 2xx is retransmitted.
    Confirmed { ack: Arc<[u8]> },
    /// BYE sent, waiting for its response.
    Terminating,
}

pub(super) struct OutboundCall {
    pub dialog: Dialog,
    pub state: OutboundState,
    /// Extra headers of the INVITE (the caller's answers for an operator's phone).
    invite_headers: Vec<(String, String)>,
    pub end_reason: Option<EndReason>,
}

impl OutboundCall {
    pub fn new(dialog: Dialog, invite_headers: Vec<(String, String)>) -> Self {
        OutboundCall {
            dialog,
            state: OutboundState::Allocating,
            invite_headers,
            end_reason: None,
        }
    }

    pub fn is_terminating(&self) -> bool {
        self.state == OutboundState::Terminating
    }

    pub fn is_confirmed(&self) -> bool {
        matches!(self.state, OutboundState::Confirmed { .. })
    }

    /// The RTP port is reserved: the INVITE leaves.
    pub fn media_allocated(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        port: u16,
    ) -> Outcome {
        self.dialog.media.port = port;
        if self.state != OutboundState::Allocating {
            return Outcome::Continues;
        }
        if self.dialog.media.srtp.plan == OfferPlan::Impossible {
            tracing::warn!(
                call = self.dialog.call,
                "not offered: the phone is registered without TLS and rtp.srtp = \"require\""
            );
            return Outcome::Ended(EndReason::Error);
        }
        let ip = local_ip(cfg, self.dialog.peer);
        let branch = t.branch();
        let srtp = self.dialog.media.srtp.offer_line(cfg).cloned();
        let body = sdp::offer(
            &cfg.codecs,
            cfg.offer_telephone_event,
            self.dialog.media.origin,
            ip,
            port,
            srtp.as_ref(),
        );
        let contact = contact_header(cfg, self.dialog.peer);
        let mut headers: Vec<(&str, &str)> = vec![("Contact", &contact), ("Allow", message::ALLOW)];
        headers.extend(
            self.invite_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        let invite = self.dialog.request(
            "INVITE",
            self.dialog.local_cseq,
            &branch,
            &headers,
            Some(("application/sdp", body.as_bytes())),
        );
        let peer = self.dialog.peer;
        let call = self.dialog.call;
        self.state = OutboundState::Calling {
            branch: branch.clone(),
            provisional: false,
            cancelling: false,
        };
        t.send_request(now, peer, true, invite, branch, ClientPurpose::Invite(call));
        Outcome::Continues
    }

    /// No RTP port: the attempt ends before anything was sent.
    pub fn media_failed(&mut self) -> Outcome {
        if self.state != OutboundState::Allocating {
            return Outcome::Continues;
        }
        Outcome::Ended(EndReason::Error)
    }

    /// CANCEL with the INVITE's Request-URI, Call-ID, From, To, CSeq number and branch
    /// (RFC 3261 §9.1); the INVITE then ends with 487.
    fn send_cancel(&self, t: &mut Transactions, now: Instant, branch: &str, reason: EndReason) {
        let cancel = self
            .dialog
            .request("CANCEL", self.dialog.local_cseq, branch, &[], None);
        t.send_request(
            now,
            self.dialog.peer,
            false,
            cancel,
            format!("{branch}:cancel"),
            ClientPurpose::Cancel,
        );
        tracing::info!(call = self.dialog.call, reason = %reason.as_str(), "cancelling");
    }

    /// A response to our INVITE (after its transaction absorbed retransmissions).
    pub fn on_invite_response(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        resp: &Response,
    ) -> Outcome {
        match resp.code {
            100..=199 => {
                if let OutboundState::Calling {
                    branch,
                    provisional,
                    cancelling,
                } = &mut self.state
                {
                    if !*provisional {
                        *provisional = true;
                        if *cancelling {
                            let branch = branch.clone();
                            let reason = self.end_reason.unwrap_or(EndReason::Cancel);
                            self.send_cancel(t, now, &branch, reason);
                        }
                    }
                }
                Outcome::Continues
            }
            200..=299 => self.answered(t, cfg, now, resp),
            code => match self.state {
                OutboundState::Calling { .. } | OutboundState::Allocating => {
                    Outcome::Ended(EndReason::Rejected(code))
                }
                _ => Outcome::Continues,
            },
        }
    }

    fn answered(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        resp: &Response,
    ) -> Outcome {
        let cancelling = match &self.state {
            OutboundState::Confirmed { ack } => {
                // Retransmitted 2xx: our ACK was lost.
                let ack = ack.clone();
                t.transmit(self.dialog.target_peer(), ack);
                return Outcome::Continues;
            }
            OutboundState::Calling { cancelling, .. } => *cancelling,
            _ => return Outcome::Continues,
        };
        let d = &mut self.dialog;
        d.remote_tag = resp.common.to.tag().unwrap_or_default().to_string();
        d.remote_header = resp.raw.header("to").unwrap_or_default().to_string();
        if let Some(contact) = &resp.common.contact {
            d.remote_target = contact.uri.clone();
        }
        d.route_set = resp.common.record_route.iter().rev().cloned().collect();
        let branch = t.branch();
        let ack: Arc<[u8]> = d.request("ACK", d.local_cseq, &branch, &[], None).into();
        self.state = OutboundState::Confirmed { ack: ack.clone() };
        t.transmit(self.dialog.target_peer(), ack);
        if cancelling {
            // The answer crossed our CANCEL: the dialog exists, so end it.
            let reason = self.end_reason.unwrap_or(EndReason::Cancel);
            return self.hangup(t, now, reason);
        }
        let call = self.dialog.call;
        let remote = sdp::parse(&resp.raw.body).ok();
        let codec = remote
            .as_ref()
            .and_then(|m| sdp::choose_codec(m, &cfg.codecs).ok());
        let srtp = match &remote {
            Some(m) => self.dialog.media.srtp.take_answer(m),
            None => Ok(()),
        };
        if let Err(why) = srtp {
            tracing::warn!(call, "answer refused: {why}; hanging up");
            return self.hangup(t, now, EndReason::Error);
        }
        match (remote, codec) {
            (Some(m), Some(codec)) => {
                self.dialog.media.codec = Some(codec);
                t.media(self.dialog.media.start_command(call, &m, codec, true));
                self.dialog.media.remote = Some(m);
                let at = t.wall(now);
                t.emit(CallEvent::Answered { call, codec, at });
                Outcome::Continues
            }
            _ => {
                tracing::warn!(call, "answer without usable SDP; hanging up");
                self.hangup(t, now, EndReason::Error)
            }
        }
    }

    pub fn on_ack(&mut self, t: &mut Transactions, now: Instant) {
        self.dialog.reinvite_acked(t, now);
    }

    pub fn handle_request(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        key: &str,
        req: &Request,
    ) -> Outcome {
        let confirmed = self.is_confirmed();
        match self.dialog.handle_request(t, cfg, now, key, req, confirmed) {
            InDialog::Handled => Outcome::Continues,
            InDialog::PeerHungUp => Outcome::Ended(EndReason::CallerBye),
        }
    }

    /// Ends the call from our side: CANCEL while ringing (once a provisional response
    /// allows it), BYE once answered.
    pub fn hangup(&mut self, t: &mut Transactions, now: Instant, reason: EndReason) -> Outcome {
        match &mut self.state {
            OutboundState::Terminating => Outcome::Continues,
            OutboundState::Allocating => Outcome::Ended(reason),
            OutboundState::Calling {
                branch,
                provisional,
                cancelling,
            } => {
                self.end_reason.get_or_insert(reason);
                if *cancelling {
                    return Outcome::Continues;
                }
                *cancelling = true;
                // No CANCEL before a provisional response (it could overtake the
                // INVITE); one arrives, or timer B ends the attempt.
                if *provisional {
                    let branch = branch.clone();
                    self.send_cancel(t, now, &branch, reason);
                }
                Outcome::Continues
            }
            OutboundState::Confirmed { .. } => {
                self.end_reason.get_or_insert(reason);
                self.state = OutboundState::Terminating;
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
