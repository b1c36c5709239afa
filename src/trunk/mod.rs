//! Provider trunks: outbound registration (`registration`, a sans-IO client state
//! machine), its digest answers (`auth`), and `Trunks`, which runs one registration
//! per configured trunk for the switchboard: requests go through the endpoint's client
//! transactions, everything else leaves as a `TrunkEffect`. The I/O a registration
//! asks for (DNS look-ups, opening connections) is `io`, a thin tokio side that
//! reports back as `IoEvent`s.

pub mod auth;
pub mod io;
pub mod registration;
pub mod rfc3263;

pub use registration::{
    Action, Registration, RegistrationSetup, RegistrationStatus, Target, Timing,
};

use crate::call::Peer;
use crate::config::SipTransport;
use crate::sip::client::ClientResult;
use crate::sip::Endpoint;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// I/O a registration needs from the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum IoRequest {
    Resolve {
        trunk: usize,
        host: String,
        port: Option<u16>,
        transport: Option<SipTransport>,
    },
    Connect {
        trunk: usize,
        target: Target,
    },
}

/// The shell's answers.
#[derive(Debug, Clone)]
pub enum IoEvent {
    Resolved {
        trunk: usize,
        result: Result<Vec<Target>, String>,
    },
    Connected {
        trunk: usize,
        target: Target,
        peer: Peer,
    },
    ConnectFailed {
        trunk: usize,
        target: Target,
        why: String,
    },
    /// A connection opened for a trunk closed.
    LinkLost { conn: u64 },
}

/// What the switchboard passes on to the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum TrunkEffect {
    Transmit { peer: Peer, data: Arc<[u8]> },
    Close(u64),
    Io(IoRequest),
}

/// One line of `hotline trunks`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrunkStatus {
    #[serde(flatten)]
    pub registration: RegistrationStatus,
    /// Whether the trunk registers (false: the provider sends calls to our address).
    pub registers: bool,
}

#[derive(Default)]
pub struct Trunks {
    regs: Vec<Registration>,
    /// Trunks that do not register (the provider delivers to fixed addresses).
    unregistered: Vec<String>,
    effects: VecDeque<TrunkEffect>,
}

impl Trunks {
    /// One registration per setup; `seed` makes each one's tags and jitter.
    pub fn new(
        setups: Vec<RegistrationSetup>,
        unregistered: Vec<String>,
        timing: Timing,
        seed: &mut StdRng,
    ) -> Self {
        let regs = setups
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let rng = StdRng::from_rng(&mut *seed).expect("StdRng seeds from StdRng");
                Registration::new(i as u32 + 1, s, timing, rng)
            })
            .collect();
        Trunks {
            regs,
            unregistered,
            effects: VecDeque::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.regs.is_empty() && self.unregistered.is_empty()
    }

    pub fn start(&mut self, now: Instant, ep: &mut Endpoint) {
        for r in &mut self.regs {
            r.start();
        }
        self.flush(now, ep);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.regs
            .iter()
            .filter_map(Registration::poll_timeout)
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
        for r in &mut self.regs {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
        self.flush(now, ep);
    }

    /// A response or timeout from the endpoint; false when no trunk sent the request.
    pub fn on_client_result(
        &mut self,
        now: Instant,
        result: ClientResult,
        ep: &mut Endpoint,
    ) -> bool {
        let Some(r) = self.regs.iter_mut().find(|r| r.owns_tag(result.tag())) else {
            return false;
        };
        r.on_result(now, result);
        self.flush(now, ep);
        true
    }

    pub fn on_io(&mut self, now: Instant, ev: IoEvent, ep: &mut Endpoint) {
        match ev {
            IoEvent::Resolved { trunk, result } => {
                if let Some(r) = self.regs.get_mut(trunk) {
                    r.on_resolved(now, result);
                }
            }
            IoEvent::Connected {
                trunk,
                target,
                peer,
            } => match self.regs.get_mut(trunk) {
                Some(r) => r.on_connected(target, peer),
                None => {
                    if let Some(id) = peer.link.connection() {
                        self.effects.push_back(TrunkEffect::Close(id));
                    }
                }
            },
            IoEvent::ConnectFailed { trunk, target, why } => {
                if let Some(r) = self.regs.get_mut(trunk) {
                    r.on_connect_failed(now, target, why);
                }
            }
            IoEvent::LinkLost { conn } => {
                for r in &mut self.regs {
                    r.on_link_lost(now, conn);
                }
            }
        }
        self.flush(now, ep);
    }

    /// Clean shutdown: every registered trunk unregisters.
    pub fn shutdown(&mut self, now: Instant, ep: &mut Endpoint) {
        for r in &mut self.regs {
            r.shutdown();
        }
        self.flush(now, ep);
    }

    /// Whether every registration has finished unregistering.
    pub fn all_stopped(&self) -> bool {
        self.regs.iter().all(Registration::is_stopped)
    }

    pub fn poll_effect(&mut self) -> Option<TrunkEffect> {
        self.effects.pop_front()
    }

    pub fn status(&self, now: Instant) -> Vec<TrunkStatus> {
        let registering = self.regs.iter().map(|r| TrunkStatus {
            registration: r.status(now),
            registers: true,
        });
        let fixed = self.unregistered.iter().map(|name| TrunkStatus {
            registration: RegistrationStatus {
                name: name.clone(),
                state: "accepting calls (no registration)".into(),
                registrar: None,
                expires_in_s: None,
                retry_in_s: None,
                last_error: None,
                failures: 0,
            },
            registers: false,
        });
        registering.chain(fixed).collect()
    }

    fn flush(&mut self, now: Instant, ep: &mut Endpoint) {
        for (i, r) in self.regs.iter_mut().enumerate() {
            while let Some(action) = r.poll_action() {
                match action {
                    Action::Send {
                        peer,
                        branch,
                        bytes,
                        tag,
                    } => ep.send_client_request(now, peer, branch, bytes, tag),
                    Action::Transmit { peer, data } => {
                        self.effects.push_back(TrunkEffect::Transmit {
                            peer,
                            data: data.into(),
                        })
                    }
                    Action::Close { conn } => self.effects.push_back(TrunkEffect::Close(conn)),
                    Action::Resolve {
                        host,
                        port,
                        transport,
                    } => self.effects.push_back(TrunkEffect::Io(IoRequest::Resolve {
                        trunk: i,
                        host,
                        port,
                        transport,
                    })),
                    Action::Connect { target } => self
                        .effects
                        .push_back(TrunkEffect::Io(IoRequest::Connect { trunk: i, target })),
                }
            }
        }
    }
}
