//! The tokio side of media: one socket pair per leg, a receive task per leg, the one
//! shared 20 ms clock that paces every call's packets, and the recording sink.
//!
//! Owns sockets, tasks and time only; what each command, packet and tick means is the
//! sans-IO `core::MediaCore`. One clock for all calls instead of a timer per call
//! keeps wake-ups constant as calls grow, and the schedule is derived from the start
//! instant so pacing never drifts. Recordings are written by the sink's own thread:
//! nothing here waits for a disk.

pub use super::core::{EngineCommand, InbandPolicy, MediaConfig, FRAME_MS};
use super::core::{LegHandle, MediaCore, SinkResult};
use super::recording_sink::RecordingSink;
use crate::call::{CallId, MediaCommand, MediaEvent};
use rand::SeedableRng;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

pub const FRAME: Duration = Duration::from_millis(FRAME_MS);

/// A leg's sockets and the tasks that read them.
struct LegIo {
    socket: Arc<UdpSocket>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for LegIo {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct MediaHandle {
    pub commands: mpsc::UnboundedSender<EngineCommand>,
}

impl MediaHandle {
    pub fn send(&self, cmd: EngineCommand) {
        let _ = self.commands.send(cmd);
    }
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

fn millis(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

async fn run(
    cfg: MediaConfig,
    mut commands: mpsc::UnboundedReceiver<EngineCommand>,
    events: mpsc::UnboundedSender<MediaEvent>,
) {
    let mut core = MediaCore::new(cfg, &mut rand::rngs::StdRng::from_entropy());
    let mut io: HashMap<CallId, LegIo> = HashMap::new();
    let (results_tx, mut results) = mpsc::unbounded_channel::<SinkResult>();
    let sink = match RecordingSink::spawn(move |r| {
        let _ = results_tx.send(r);
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start the recording sink: {e}");
            return;
        }
    };
    let epoch = Instant::now();
    let mut clock = tokio::time::interval(FRAME);
    // Burst catches up after a stall so the packet count matches elapsed time (no
    // drift, timestamps stay right).
    clock.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                let now_ms = millis(epoch);
                command(&mut core, &mut io, cmd, now_ms, epoch);
                // A burst of hang-ups or call set-ups is taken at once, not one per
                // wake between ticks: a stopped leg must not keep sending.
                for _ in 0..COMMAND_BATCH {
                    match commands.try_recv() {
                        Ok(cmd) => command(&mut core, &mut io, cmd, now_ms, epoch),
                        Err(_) => break,
                    }
                }
            }
            Some(result) = results.recv() => core.on_sink_result(result),
            _ = clock.tick() => {
                core.tick(millis(epoch), &mut |call, remote, packet| {
                    if let Some(leg) = io.get(&call) {
                        // Unreachable or full: the packet is lost like any UDP packet.
                        let _ = leg.socket.try_send_to(packet, remote);
                    }
                });
            }
        }
        while let Some(cmd) = core.poll_sink() {
            sink.send(cmd);
        }
        while let Some(ev) = core.poll_event() {
            let _ = events.send(ev);
        }
    }
}

/// Commands handled per wake before the clock gets its turn.
const COMMAND_BATCH: usize = 4096;

fn command(
    core: &mut MediaCore,
    io: &mut HashMap<CallId, LegIo>,
    cmd: EngineCommand,
    now_ms: u64,
    epoch: Instant,
) {
    match cmd {
        EngineCommand::Sip(MediaCommand::Allocate { call, local_ip }) => {
            allocate(core, io, call, local_ip, epoch);
        }
        EngineCommand::Sip(MediaCommand::Stop { call }) => {
            io.remove(&call);
            core.handle_command(EngineCommand::Sip(MediaCommand::Stop { call }), now_ms);
        }
        other => core.handle_command(other, now_ms),
    }
}

fn allocate(
    core: &mut MediaCore,
    io: &mut HashMap<CallId, LegIo>,
    call: CallId,
    local_ip: IpAddr,
    epoch: Instant,
) {
    let mut bound = None;
    for _ in 0..16 {
        let Some(port) = core.take_port() else { break };
        match bind_pair(local_ip, port) {
            Ok(pair) => {
                bound = Some((port, pair));
                break;
            }
            Err(_) => core.port_unusable(port),
        }
    }
    let Some((port, (rtp, rtcp))) = bound else {
        return core.allocation_failed(call);
    };
    let (Ok(rtp), Ok(rtcp)) = (UdpSocket::from_std(rtp), UdpSocket::from_std(rtcp)) else {
        core.port_unusable(port);
        return core.allocation_failed(call);
    };
    let socket = Arc::new(rtp);
    let leg = core.leg_bound(call, port, millis(epoch));
    let recv = tokio::spawn(receive(socket.clone(), leg, epoch));
    // RTCP is received and ignored: peers expect the port to be open.
    let rtcp_task = tokio::spawn(async move {
        let mut b = [0u8; 1500];
        while rtcp.recv_from(&mut b).await.is_ok() {}
    });
    io.insert(
        call,
        LegIo {
            socket,
            tasks: [recv, rtcp_task],
        },
    );
}

async fn receive(socket: Arc<UdpSocket>, leg: LegHandle, epoch: Instant) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        let now_ms = millis(epoch);
        leg.lock()
            .unwrap_or_else(|p| p.into_inner())
            .receive(from, &buf[..n], now_ms);
    }
}
