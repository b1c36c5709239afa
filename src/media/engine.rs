//! The tokio side of media: RTP port pool, one socket pair per call, and one shared
//! 20 ms clock that paces the packets of every call.
//!
//! Owns sockets and timing; decisions about what to play or record belong to the
//! sans-IO parts (`rtp`, and the call logic above). One clock for all calls instead
//! of a timer per call keeps wake-ups constant as calls grow, and the schedule is
//! derived from the start instant so pacing never drifts.

use super::g711::Codec;
use super::rtp::{RtpSender, MAX_PACKET};
use crate::config::PortRange;
use crate::sip::{CallId, MediaCommand};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

pub const FRAME: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    Allocated { call: CallId, port: u16 },
    Failed { call: CallId },
    RtpTimeout { call: CallId },
}

#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub ports: PortRange,
    /// No RTP from the peer for this long ends the call; zero disables.
    pub rtp_timeout: Duration,
}

/// Even ports of the range, handed out in shuffled order and returned to the back of
/// the queue, so a port freed by one call is not reused at once (late packets of the
/// old call must not reach the next caller).
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        use rand::seq::SliceRandom;
        let first = range.first + (range.first % 2);
        let mut ports: Vec<u16> = (first..range.last).step_by(2).collect();
        ports.shuffle(&mut rand::thread_rng());
        PortPool { free: ports.into() }
    }

    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    pub fn give_back(&mut self, port: u16) {
        self.free.push_back(port);
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }
}

struct Leg {
    port: u16,
    socket: Arc<UdpSocket>,
    tasks: [JoinHandle<()>; 2],
    remote: Option<SocketAddr>,
    codec: Codec,
    send: bool,
    started: bool,
    rtp: RtpSender,
    last_rx_ms: Arc<AtomicU64>,
    timed_out: bool,
}

impl Drop for Leg {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct MediaHandle {
    pub commands: mpsc::UnboundedSender<MediaCommand>,
}

pub fn spawn(cfg: MediaConfig, events: mpsc::UnboundedSender<MediaEvent>) -> MediaHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(cfg, rx, events));
    MediaHandle { commands: tx }
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let rtp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, rtcp))
}

async fn run(
    cfg: MediaConfig,
    mut commands: mpsc::UnboundedReceiver<MediaCommand>,
    events: mpsc::UnboundedSender<MediaEvent>,
) {
    let mut pool = PortPool::new(cfg.ports);
    let mut legs: HashMap<CallId, Leg> = HashMap::new();
    let epoch = Instant::now();
    let mut clock = tokio::time::interval(FRAME);
    // Burst catches up after a stall so the packet count matches elapsed time (no
    // drift); the send loop below skips frames that are hopelessly late instead.
    clock.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut ticks: u64 = 0;
    let mut buf = [0u8; MAX_PACKET];
    let silence_u = [Codec::Pcmu.silence_byte(); 160];
    let silence_a = [Codec::Pcma.silence_byte(); 160];
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    MediaCommand::Allocate { call, local_ip } => {
                        let mut bound = None;
                        for _ in 0..16 {
                            let Some(port) = pool.take() else { break };
                            match bind_pair(local_ip, port) {
                                Ok(pair) => { bound = Some((port, pair)); break; }
                                Err(_) => pool.give_back(port),
                            }
                        }
                        let Some((port, (rtp, rtcp))) = bound else {
                            tracing::warn!(call, "no free RTP port");
                            let _ = events.send(MediaEvent::Failed { call });
                            continue;
                        };
                        let (Ok(rtp), Ok(rtcp)) = (UdpSocket::from_std(rtp), UdpSocket::from_std(rtcp)) else {
                            pool.give_back(port);
                            let _ = events.send(MediaEvent::Failed { call });
                            continue;
                        };
                        let socket = Arc::new(rtp);
                        let last_rx_ms = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
                        let recv = tokio::spawn(receive(socket.clone(), last_rx_ms.clone(), epoch));
                        // RTCP is received and ignored: peers expect the port to be open.
                        let rtcp_task = tokio::spawn(async move {
                            let mut b = [0u8; 1500];
                            while rtcp.recv_from(&mut b).await.is_ok() {}
                        });
                        legs.insert(call, Leg {
                            port,
                            socket,
                            tasks: [recv, rtcp_task],
                            remote: None,
                            codec: Codec::Pcmu,
                            send: false,
                            started: false,
                            rtp: RtpSender::new_random(),
                            last_rx_ms,
                            timed_out: false,
                        });
                        let _ = events.send(MediaEvent::Allocated { call, port });
                    }
                    MediaCommand::Start { call, remote, codec, send, .. } => {
                        if let Some(leg) = legs.get_mut(&call) {
                            if leg.remote != remote {
                                leg.rtp.mark_talkspurt();
                            }
                            leg.remote = remote;
                            leg.codec = codec;
                            leg.send = send;
                            if !leg.started {
                                leg.started = true;
                                leg.last_rx_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                            }
                        }
                    }
                    MediaCommand::Stop { call } => {
                        if let Some(leg) = legs.remove(&call) {
                            pool.give_back(leg.port);
                        }
                    }
                }
            }
            _ = clock.tick() => {
                ticks += 1;
                for leg in legs.values_mut() {
                    let (true, true, Some(remote)) = (leg.started, leg.send, leg.remote) else {
                        if leg.started {
                            leg.rtp.skip_frames(1);
                        }
                        continue;
                    };
                    let payload = match leg.codec { Codec::Pcmu => &silence_u, Codec::Pcma => &silence_a };
                    let n = leg.rtp.build(leg.codec.payload_type(), payload, &mut buf);
                    // Unreachable or full: the packet is lost like any UDP packet.
                    let _ = leg.socket.try_send_to(&buf[..n], remote);
                }
                if ticks.is_multiple_of(50) && !cfg.rtp_timeout.is_zero() {
                    let now_ms = epoch.elapsed().as_millis() as u64;
                    let limit = cfg.rtp_timeout.as_millis() as u64;
                    for (call, leg) in legs.iter_mut() {
                        let idle = now_ms.saturating_sub(leg.last_rx_ms.load(Ordering::Relaxed));
                        if leg.started && !leg.timed_out && idle > limit {
                            leg.timed_out = true;
                            let _ = events.send(MediaEvent::RtpTimeout { call: *call });
                        }
                    }
                }
            }
        }
    }
}

async fn receive(socket: Arc<UdpSocket>, last_rx_ms: Arc<AtomicU64>, epoch: Instant) {
    let mut buf = [0u8; 1500];
    while let Ok((n, _from)) = socket.recv_from(&mut buf).await {
        // Only well-formed RTP version 2 counts as the peer being alive.
        if n >= 12 && buf[0] >> 6 == 2 {
            last_rx_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_even_ports_and_reuses_last() {
        let mut p = PortPool::new(PortRange {
            first: 20001,
            last: 20011,
        });
        let mut got = Vec::new();
        while let Some(port) = p.take() {
            assert_eq!(port % 2, 0);
            assert!((20002..20011).contains(&port));
            got.push(port);
        }
        assert_eq!(got.len(), 5);
        p.give_back(got[0]);
        p.give_back(got[1]);
        assert_eq!(p.take(), Some(got[0]));
    }
}
