//! What inbound calls and outbound offers share once a dialog exists (RFC 3261 §12):
//! the identifiers and headers requests inside it carry, the route to the peer, the
//! CSeq numbers, the call's SDP side, and the answers to requests the peer sends
//! inside it (BYE, re-INVITE, INFO, OPTIONS and the ACK of a re-INVITE).
//!
//! Owns building in-dialog requests and deciding where they go. Sans-IO: acts through
//! `Transactions`. Must not decide how a call is set up or torn down (that is
//! `inbound` / `outbound`).

use super::endpoint::{EndpointConfig, Output};
use super::headers;
use super::message::{self, finish_message, Method, Request};
use super::transactions::{TimerRef, Transactions};
use crate::call::{CallId, Codec, MediaCommand, Peer, SrtpKeys, SrtpMasterKey};
use crate::sdp::sdes::{self, LocalCrypto, OfferPlan};
use crate::sdp::{self, RemoteMedia, SdpOrigin};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

pub(super) fn dialog_key(call_id: &str, local_tag: &str) -> String {
    format!("{call_id}\u{0}{local_tag}")
}

/// The call's side of offer/answer.
pub(super) struct MediaState {
    /// The peer's latest SDP.
    pub remote: Option<RemoteMedia>,
    pub codec: Option<Codec>,
    /// Our RTP port.
    pub port: u16,
    pub origin: SdpOrigin,
    /// Where the call's signalling comes from: media from this address is the peer's too.
    pub signal_ip: IpAddr,
    /// The signalling source is trusted (a provider): its SDP address is believed.
    pub trusted_source: bool,
    pub srtp: LegSrtp,
}

/// SDES on one leg (see `sdp::sdes`).
#[derive(Debug, Clone, Default)]
pub(super) struct LegSrtp {
    /// What our offers on this leg carry (inbound legs: best effort at most).
    pub plan: OfferPlan,
    /// Our crypto line, once offered or answered.
    pub local: Option<LocalCrypto>,
    /// The peer's key, once agreed: with `local`, the leg is SRTP.
    pub remote: Option<SrtpMasterKey>,
}

impl LegSrtp {
    pub fn keys(&self) -> Option<SrtpKeys> {
        match (&self.local, &self.remote) {
            (Some(l), Some(r)) => Some(SrtpKeys {
                send: l.key.clone(),
                receive: r.clone(),
            }),
            _ => None,
        }
    }

    /// Our crypto line for an offer by `plan` (a new key unless one is in use).
    pub fn offer_line(&mut self, cfg: &EndpointConfig) -> Option<&LocalCrypto> {
        let savp = match self.plan {
            OfferPlan::BestEffort => false,
            OfferPlan::Required => true,
            OfferPlan::Plain | OfferPlan::Impossible => return None,
        };
        if self.local.is_none() {
            let key = cfg.new_srtp_key()?;
            self.local = Some(LocalCrypto {
                tag: sdes::OUR_TAG,
                key,
                savp,
            });
        }
        self.local.as_ref()
    }

    /// A new offer inside the dialog: the same rules as a first offer, our key kept
    /// (so the media layer keeps its SRTP state when the peer's key stays too), and a
    /// leg that requires SRTP stays encrypted.
    pub fn take_reoffer(
        &mut self,
        offer: &RemoteMedia,
        secure_link: bool,
        cfg: &EndpointConfig,
    ) -> Result<(), String> {
        match sdes::plan_answer(offer.savp, &offer.crypto, secure_link, cfg.srtp_mode()) {
            sdes::AnswerPlan::Refuse(why) => Err(why),
            sdes::AnswerPlan::Plain if self.plan == OfferPlan::Required => {
                Err("a plain re-offer on a leg that requires SRTP".into())
            }
            sdes::AnswerPlan::Plain => {
                self.local = None;
                self.remote = None;
                Ok(())
            }
            sdes::AnswerPlan::Srtp { tag, remote } => {
                let key = match self.local.take() {
                    Some(l) => l.key,
                    None => cfg.new_srtp_key().ok_or("no SRTP key source")?,
                };
                self.local = Some(LocalCrypto {
                    tag,
                    key,
                    savp: offer.savp,
                });
                self.remote = Some(remote);
                Ok(())
            }
        }
    }

    /// The peer's answer to our offer: SRTP, plain, or why the call cannot go on.
    pub fn take_answer(&mut self, answer: &RemoteMedia) -> Result<(), String> {
        let required = self.plan == OfferPlan::Required;
        let remote =
            sdes::check_answer(answer.savp, &answer.crypto, self.local.as_ref(), required)?;
        if remote.is_none() {
            self.local = None;
        }
        self.remote = remote;
        Ok(())
    }
}
impl MediaState {
    pub fn start_command(
        &self,
        call: CallId,
        remote: &RemoteMedia,
        codec: Codec,
        send: bool,
    ) -> MediaCommand {
        let confirmed =
            self.trusted_source || remote.rtp_addr.is_some_and(|a| a.ip() == self.signal_ip);
        MediaCommand::Start {
            call,
            remote: remote.rtp_addr,
            signal_ip: self.signal_ip,
            codec,
            telephone_event_pt: remote.telephone_event_pt,
            send,
            confirmed,
            srtp: self.srtp.keys(),
        }
    }
}

/// What became of a request inside the dialog.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum InDialog {
    Handled,
    /// The peer sent BYE (answered): the call is over.
    PeerHungUp,
}

pub(super) struct Dialog {
    pub call: CallId,
    pub sip_call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our identity header value (with tag), used as From in our requests.
    pub local_header: String,
    /// The peer's identity header value (with tag), used as To in our requests.
    pub remote_header: String,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: Option<u32>,
    /// The socket or connection and address the dialog came from (or went to).
    pub peer: Peer,
    /// In-dialog requests go to `peer` whatever the remote target says (a phone behind
    /// NAT is reached where its registration came from).
    pub pin_peer: bool,
    pub media: MediaState,
    /// A re-INVITE's 2xx was sent; its ACK is awaited on this transaction.
    pub reinvite: Option<String>,
}

impl Dialog {
    pub fn key(&self) -> String {
        dialog_key(&self.sip_call_id, &self.local_tag)
    }

    pub fn next_cseq(&mut self) -> u32 {
        self.local_cseq += 1;
        self.local_cseq
    }

    /// A request inside the dialog (RFC 3261 §12.2.1.1).
    pub fn request(
        &self,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let local = self.peer.local;
        let host = match local.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let mut out = String::with_capacity(400);
        let _ = write!(out, "{method} {} SIP/2.0\r\n", self.remote_target);
        let _ = write!(
            out,
            "Via: SIP/2.0/{} {host}:{};branch={branch};rport\r\n",
            self.peer.link.via_transport(),
            local.port()
        );
        out.push_str("Max-Forwards: 70\r\n");
        for r in &self.route_set {
            let _ = write!(out, "Route: {r}\r\n");
        }
        let _ = write!(
            out,
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n",
            self.local_header, self.remote_header, self.sip_call_id
        );
        for (n, v) in extra {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        let mut bytes = out.into_bytes();
        finish_message(&mut bytes, body);
        bytes
    }

    /// Where requests inside the dialog go.
    pub fn target_peer(&self) -> Peer {
        if self.pin_peer || self.peer.link.reliable() || !self.route_set.is_empty() {
            return self.peer;
        }
        // The remote target is used when it names an IP address; a host name is not
        // resolved here, so the request goes back where the dialog came from.
        match headers::parse_sip_uri(&self.remote_target) {
            Ok(Some(u)) => match headers::host_ip(&u.host) {
                Some(ip) => Peer {
                    remote: SocketAddr::new(ip, u.port.unwrap_or(5060)),
                    ..self.peer
                },
                None => self.peer,
            },
            _ => self.peer,
        }
    }

    /// A request the peer sent inside the dialog (not ACK or CANCEL). `confirmed`:
    /// the call is established, so a re-INVITE may change its media.
    pub fn handle_request(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        key: &str,
        req: &Request,
        confirmed: bool,
    ) -> InDialog {
        t.attach_call(key, self.call);
        let tag = self.local_tag.clone();
        // RFC 3261 §12.2.2: lower CSeq than the last one is out of order.
        if self.remote_cseq.is_some_and(|last| req.common.cseq <= last) {
            let retry = [("Retry-After".into(), "1".into())];
            t.respond(now, key, &req.raw, 500, None, None, &retry, None);
            return InDialog::Handled;
        }
        self.remote_cseq = Some(req.common.cseq);
        match req.method {
            Method::Bye => {
                t.respond(now, key, &req.raw, 200, None, Some(&tag), &[], None);
                return InDialog::PeerHungUp;
            }
            Method::Invite => self.reinvite(t, cfg, now, key, req, confirmed),
            Method::Info => {
                t.respond(now, key, &req.raw, 200, None, Some(&tag), &[], None);
                t.output(Output::Info {
                    call: self.call,
                    content_type: req.content_type().unwrap_or_default().to_string(),
                    body: req.raw.body.clone(),
                });
            }
            Method::Options => {
                let extra = [
                    ("Allow".to_string(), message::ALLOW.to_string()),
                    ("Accept".to_string(), "application/sdp".to_string()),
                ];
                t.respond(now, key, &req.raw, 200, None, Some(&tag), &extra, None);
            }
            _ => {
                let allow = [("Allow".into(), message::ALLOW.into())];
                t.respond(now, key, &req.raw, 405, None, Some(&tag), &allow, None);
            }
        }
        InDialog::Handled
    }

    fn reinvite(
        &mut self,
        t: &mut Transactions,
        cfg: &EndpointConfig,
        now: Instant,
        key: &str,
        req: &Request,
        confirmed: bool,
    ) {
        let tag = self.local_tag.clone();
        if !confirmed || self.reinvite.is_some() {
            // RFC 3261 §14.2: an INVITE while one is pending.
            t.respond(now, key, &req.raw, 491, None, Some(&tag), &[], None);
            return;
        }
        if let Some(contact) = &req.common.contact {
            self.remote_target = contact.uri.clone();
        }
        let ip = local_ip(cfg, self.peer);
        self.media.origin.version += 1;
        let (body, cmd) = if req.body().is_empty() {
            // Offer-less re-INVITE: offer again what we use; the ACK may change it.
            let codec = self.media.codec.unwrap_or(Codec::Pcmu);
            let offer = sdp::offer(
                &[codec],
                cfg.offer_telephone_event,
                self.media.origin,
                ip,
                self.media.port,
                self.media.srtp.local.as_ref(),
            );
            (offer, None)
        } else {
            let Ok(offer) = sdp::parse(req.body()) else {
                t.respond(now, key, &req.raw, 488, None, Some(&tag), &[], None);
                return;
            };
            let codec = self
                .media
                .codec
                .filter(|k| offer.codecs.contains(k))
                .or_else(|| sdp::choose_codec(&offer, &cfg.codecs).ok());
            let Some(codec) = codec else {
                t.respond(now, key, &req.raw, 488, None, Some(&tag), &[], None);
                return;
            };
            if let Err(why) = self
                .media
                .srtp
                .take_reoffer(&offer, self.peer.link.secure(), cfg)
            {
                tracing::info!(call = self.call, "re-INVITE refused: {why}");
                let warn = [("Warning".to_string(), format!("399 hotline \"{why}\""))];
                t.respond(now, key, &req.raw, 488, None, Some(&tag), &warn, None);
                return;
            }
            self.media.codec = Some(codec);
            let body = sdp::answer(
                &offer,
                codec,
                self.media.origin,
                ip,
                self.media.port,
                self.media
                    .srtp
                    .local
                    .as_ref()
                    .filter(|_| self.media.srtp.remote.is_some()),
            );
            let cmd =
                self.media
                    .start_command(self.call, &offer, codec, !offer.direction.peer_holds());
            self.media.remote = Some(offer);
            (body, Some(cmd))
        };
        let extra = [("Contact".to_string(), contact_header(cfg, self.peer))];
        t.respond(
            now,
            key,
            &req.raw,
            200,
            None,
            Some(&tag),
            &extra,
            Some(("application/sdp", body.as_bytes())),
        );
        if let Some(cmd) = cmd {
            t.media(cmd);
        }
        // The 2xx is retransmitted until its ACK like any INVITE 2xx.
        self.reinvite = Some(key.to_string());
    }

    /// An ACK inside the dialog for our 2xx to a re-INVITE.
    pub fn reinvite_acked(&mut self, t: &mut Transactions, now: Instant) {
        if let Some(key) = self.reinvite.take() {
            if let Some(e) = t.server.get_mut(&key) {
                e.tx.on_ack(now);
                if let Some(at) = e.tx.poll_timeout() {
                    t.schedule(at, TimerRef::Server(key.clone()));
                }
            }
        }
    }
}

/// The address we put in Contact and SDP for a message on `peer`.
pub(super) fn local_ip(cfg: &EndpointConfig, peer: Peer) -> IpAddr {
    cfg.public_ip.unwrap_or(peer.local.ip())
}

pub(super) fn contact_header(cfg: &EndpointConfig, peer: Peer) -> String {
    let ip = local_ip(cfg, peer);
    let host = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let transport = peer.link.uri_transport();
    format!("<sip:hotline@{host}:{}{transport}>", peer.local.port())
}
