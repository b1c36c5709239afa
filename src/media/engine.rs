//! The I/O side of media: one socket pair per leg, the one shared 20 ms clock that
//! paces every call's packets (on a thread of its own, optionally at real-time
//! priority: `realtime`), and the recording sink; every leg's packets are read by the
//! one receive thread (`receiver`).
//!
//! Owns sockets, tasks and time only; what each command, packet and tick means is the
//! sans-IO `core::MediaCore`. One clock for all calls instead of a timer per call
//! keeps wake-ups constant as calls grow, and the schedule is derived from the start
//! instant so pacing never drifts; `pacing` decides how a late clock catches up, and
//! `overload` whether it is too late to take new calls. Recordings are written by the sink's own thread:
//! nothing here waits for a disk.

pub use super::core::{EngineCommand, InbandPolicy, MediaConfig, FRAME_MS};
use super::core::{MediaCore, SinkResult, SEND_SLOTS};
use super::overload::{OverloadConfig, OverloadDetector, Transition};
use super::pacing::FramePacer;
use super::receiver::{Receiver, Registration};
use super::recording_sink::RecordingSink;
use crate::call::{CallId, MediaCommand, MediaEvent};
use crate::capacity::release_spare;
use rand::SeedableRng;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const FRAME: Duration = Duration::from_millis(FRAME_MS);

/// A leg's RTP socket and its place (and its RTCP socket's) in the receive thread;
/// dropping it stops the reading and closes both.
struct LegIo {
    socket: Arc<UdpSocket>,
    _reads: Vec<Registration>,
}

pub struct MediaHandle {
    inbox: Arc<Inbox>,
    /// How late the clock woke for each tick, for the metrics endpoint.
    pub lateness: Arc<ClockLateness>,
    /// SRTP packets every leg dropped, for the metrics endpoint.
    pub srtp_drops: Arc<super::srtp_leg::SrtpDrops>,
}

/// Upper bounds of the lateness buckets in microseconds; one more bucket holds the rest.
pub const LATENESS_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 500_000,
];

/// How far behind its schedule the shared clock was at each 20 ms frame it sent
/// (after a long stall, the stall: see `media::pacing`). Counters only, so that the
/// clock task pays a few atomic adds per frame.
#[derive(Debug, Default)]
pub struct ClockLateness {
    buckets: [std::sync::atomic::AtomicU64; LATENESS_BOUNDS_US.len() + 1],
    sum_us: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
    /// Set by the clock's overload detector; read by the SIP side before it takes a
    /// new call, and by the metrics.
    overloaded: std::sync::atomic::AtomicBool,
}

/// Counts per bucket (not cumulative), the sum and the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatenessCounts {
    pub buckets: [u64; LATENESS_BOUNDS_US.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl ClockLateness {
    pub fn observe(&self, late: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let us = late.as_micros().min(u64::MAX as u128) as u64;
        let i = LATENESS_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENESS_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Whether the clock is too late to take new calls (see `media::overload`).
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_overloaded(&self, overloaded: bool) {
        self.overloaded
            .store(overloaded, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn counts(&self) -> LatenessCounts {
        use std::sync::atomic::Ordering::Relaxed;
        LatenessCounts {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_us: self.sum_us.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

impl MediaHandle {
    pub fn send(&self, cmd: EngineCommand) {
        self.inbox.push(ClockInput::Command(cmd));
    }
}

pub fn spawn(
    cfg: MediaConfig,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> std::io::Result<MediaHandle> {
    spawn_watched(cfg, None, 0, events)
}

/// [`spawn`] with the clock watched for overload (`ClockLateness::overloaded` says
/// when new calls should be refused) and the media threads at real-time
/// `priority` (`media::realtime`; 0: normal scheduling). Fails when a media thread
/// cannot be started: a server without media must not take calls.
pub fn spawn_watched(
    cfg: MediaConfig,
    overload: Option<OverloadConfig>,
    priority: u8,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> std::io::Result<MediaHandle> {
    let inbox = Arc::new(Inbox::default());
    let lateness = Arc::new(ClockLateness::default());
    let detector = overload.map(OverloadDetector::new);
    let core = MediaCore::new(cfg, &mut rand::rngs::StdRng::from_entropy());
    let srtp_drops = core.srtp_drops();
    let results = inbox.clone();
    let sink = RecordingSink::spawn(move |r| results.push(ClockInput::Sink(r)))?;
    let epoch = Instant::now();
    let receiver = Receiver::start(epoch, priority)?;
    let clock = Clock {
        core,
        inbox: inbox.clone(),
        sink,
        receiver,
        events,
        lateness: lateness.clone(),
        detector,
        epoch,
    };
    // The clock has a thread of its own, so that it can be scheduled ahead of the
    // signalling and never waits behind a SIP burst on the runtime's workers.
    std::thread::Builder::new()
        .name("hotline-clock".into())
        .spawn(move || {
            raise_media_thread(priority);
            clock.run();
        })?;
    Ok(MediaHandle {
        inbox,
        lateness,
        srtp_drops,
    })
}

/// [`crate::capacity::collect_freed_memory`] at most once a second per thread:
/// called as a runtime thread parks (the clock's at every tick, the runtime's
/// workers as they go idle). Here because it reads the clock.
pub fn collect_freed_memory_each_second() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(t) if now.duration_since(t) < Duration::from_secs(1) => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        crate::capacity::collect_freed_memory();
    }
}

/// One line says whether the media threads got their real-time priority.
fn raise_media_thread(priority: u8) {
    if priority == 0 {
        return;
    }
    match super::realtime::raise_current_thread(priority) {
        Ok(()) => tracing::info!(
            "media clock and RTP receive threads at real-time priority {priority} (SCHED_RR)"
        ),
        Err(e) => tracing::warn!(
            "media threads at normal priority: real-time priority {priority} refused ({e}); \
             grant CAP_SYS_NICE or LimitRTPRIO={priority}, or set rtp.realtime_priority = 0"
        ),
    }
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let rtp = UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, rtcp))
}

fn millis(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Time between two send slots of a frame.
const SLOT_SPACING: Duration = Duration::from_micros(FRAME_MS * 1000 / SEND_SLOTS as u64);

/// What the clock thread is told: the call logic's commands and the sink's answers.
enum ClockInput {
    Command(EngineCommand),
    Sink(SinkResult),
}

/// The clock's inbox: a mutex and a condition variable, not `std::sync::mpsc`. That
/// channel's receiver spins, yielding, while a sender is half-way through a write;
/// at real-time priority the spin keeps a preempted normal-priority sender off its
/// core, and a 10-minute soak showed the clock stalled 90-114 ms twice. A waiter
/// here sleeps on the lock instead, and the sender runs.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    ready: Condvar,
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<ClockInput>,
    /// The media handle is gone: the clock stops once the rest is taken.
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, input: ClockInput) {
        self.lock().items.push_back(input);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Moves up to `max` queued inputs to `into`, without waiting; false once closed
    /// and nothing is left.
    fn take(&self, max: usize, into: &mut VecDeque<ClockInput>) -> bool {
        let mut state = self.lock();
        let n = state.items.len().min(max);
        into.extend(state.items.drain(..n));
        !(state.closed && state.items.is_empty())
    }

    /// Waits until something is queued, the inbox is closed, or `timeout` passed.
    fn wait(&self, timeout: Duration) {
        let state = self.lock();
        if state.items.is_empty() && !state.closed {
            let _ = self.ready.wait_timeout(state, timeout);
        }
    }
}

impl Drop for MediaHandle {
    fn drop(&mut self) {
        self.inbox.close();
    }
}

/// The clock thread: commands from the call logic, the sink's answers, and the
/// frames with their send slots, each at its time.
///
/// A plain thread waiting on its inbox with a deadline rather than a tokio
/// runtime: tokio's timer has millisecond granularity, which would move each slot
/// by up to a millisecond; this wakes within microseconds of the slot (the
/// thread's timer slack is zero at real-time priority).
struct Clock {
    core: MediaCore,
    inbox: Arc<Inbox>,
    sink: RecordingSink,
    receiver: Receiver,
    events: mpsc::UnboundedSender<MediaEvent>,
    lateness: Arc<ClockLateness>,
    detector: Option<OverloadDetector>,
    epoch: Instant,
}

/// The frame whose slots are being sent.
#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    /// When the frame was due, from the epoch.
    due: Duration,
    /// The next slot to send.
    slot: usize,
}

impl Clock {
    fn run(mut self) {
        let mut io: HashMap<CallId, LegIo> = HashMap::new();
        // Frames are due at fixed offsets from `epoch` (no drift); after a late wake the
        // pacer spreads or skips what is owed instead of bursting it.
        let mut pacer = FramePacer::new();
        let mut next_frame = Duration::ZERO;
        let mut frame: Option<FrameInProgress> = None;
        let mut taken = VecDeque::new();
        loop {
            // Commands first: a stopped leg must not send again, and a burst of
            // set-ups or hang-ups is taken at once.
            let open = self.inbox.take(COMMAND_BATCH, &mut taken);
            for input in taken.drain(..) {
                match input {
                    ClockInput::Command(cmd) => self.command(&mut io, cmd),
                    ClockInput::Sink(result) => self.core.on_sink_result(result),
                }
            }
            if !open {
                return;
            }
            self.hand_over();
            let next = match frame {
                Some(f) => f.due + SLOT_SPACING * f.slot as u32,
                None => next_frame,
            };
            let now = self.epoch.elapsed();
            if now < next {
                collect_freed_memory_each_second();
                self.inbox.wait(next - now);
                continue;
            }
            match frame {
                Some(f) => {
                    self.core
                        .tick_slot(f.slot, millis(self.epoch), &mut |call, remote, packet| {
                            if let Some(leg) = io.get(&call) {
                                // Unreachable or full: the packet is lost like any UDP packet.
                                let _ = leg.socket.send_to(packet, remote);
                            }
                        });
                    // Empty slots are not waited for.
                    frame = (f.slot + 1..SEND_SLOTS)
                        .find(|&s| self.core.slot_is_busy(s))
                        .map(|slot| FrameInProgress { slot, ..f });
                }
                None => {
                    let plan = pacer.poll(self.epoch.elapsed());
                    next_frame = plan.wake_at;
                    if plan.send {
                        self.lateness.observe(plan.late);
                        if let Some(d) = self.detector.as_mut() {
                            if let Some(change) = d.observe(millis(self.epoch), plan.late) {
                                overload_changed(&self.lateness, change, d.threshold());
                            }
                        }
                        if plan.skip > 0 {
                            self.core.skip_frames(plan.skip);
                        }
                        frame = Some(FrameInProgress {
                            due: plan.due,
                            slot: 0,
                        });
                    }
                }
            }
        }
    }

    /// What the core has for the sink and for the call logic.
    fn hand_over(&mut self) {
        while let Some(cmd) = self.core.poll_sink() {
            self.sink.send(cmd);
        }
        while let Some(ev) = self.core.poll_event() {
            let _ = self.events.send(ev);
        }
    }

    fn command(&mut self, io: &mut HashMap<CallId, LegIo>, cmd: EngineCommand) {
        let now_ms = millis(self.epoch);
        match cmd {
            EngineCommand::Sip(MediaCommand::Allocate { call, local_ip }) => {
                allocate(
                    &mut self.core,
                    io,
                    &self.receiver,
                    call,
                    local_ip,
                    self.epoch,
                );
            }
            EngineCommand::Sip(MediaCommand::Stop { call }) => {
                io.remove(&call);
                release_spare(io);
                self.core
                    .handle_command(EngineCommand::Sip(MediaCommand::Stop { call }), now_ms);
            }
            other => self.core.handle_command(other, now_ms),
        }
    }
}

/// One line on entering and one on leaving overload, never per call.
fn overload_changed(lateness: &ClockLateness, change: Transition, threshold: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match change {
        Transition::Entered { mean } => {
            lateness.set_overloaded(true);
            tracing::warn!(
                "media clock overloaded: ticks {:.1} ms late on average over the last second \
                 (limit {:.1} ms); new calls get 503 until it recovers",
                ms(mean),
                ms(threshold)
            );
        }
        Transition::Left { mean, worst } => {
            lateness.set_overloaded(false);
            tracing::warn!(
                "media clock recovered: ticks {:.1} ms late on average (worst {:.1} ms); \
                 new calls are taken again",
                ms(mean),
                ms(worst)
            );
        }
    }
}

/// Commands handled per wake before the clock gets its turn.
const COMMAND_BATCH: usize = 4096;

fn allocate(
    core: &mut MediaCore,
    io: &mut HashMap<CallId, LegIo>,
    receiver: &Receiver,
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
    let socket = Arc::new(rtp);
    let leg = core.leg_bound(call, port, millis(epoch));
    // RTCP is read and dropped: peers expect the port to be open.
    let mut reads = Vec::with_capacity(2);
    let watched = receiver
        .add_rtp(socket.clone(), leg)
        .map(|r| reads.push(r))
        .and_then(|()| receiver.add_discard(Arc::new(rtcp)))
        .map(|r| reads.push(r));
    if let Err(e) = watched {
        // Only when the kernel refuses another epoll watch; the leg can still send,
        // and without RTP from its caller it ends by the RTP timeout.
        tracing::warn!(call, "cannot watch the RTP ports: {e}");
    }
    io.insert(
        call,
        LegIo {
            socket,
            _reads: reads,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(call: CallId) -> ClockInput {
        ClockInput::Command(EngineCommand::Sip(MediaCommand::Stop { call }))
    }

    #[test]
    fn the_inbox_wakes_its_waiter_and_ends_once_closed_and_empty() {
        let inbox = Arc::new(Inbox::default());
        let pusher = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                inbox.push(stop(1));
            })
        };
        let t = Instant::now();
        inbox.wait(Duration::from_secs(30));
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "a push ends the wait"
        );
        pusher.join().unwrap();
        for call in 2..=4 {
            inbox.push(stop(call));
        }
        inbox.close();
        let mut taken = VecDeque::new();
        assert!(inbox.take(2, &mut taken), "closed, but not empty yet");
        assert_eq!(taken.len(), 2);
        assert!(!inbox.take(10, &mut taken), "closed and now empty");
        assert_eq!(taken.len(), 4);
        let t = Instant::now();
        inbox.wait(Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(15), "closed: no wait");
    }

    #[test]
    fn lateness_buckets() {
        let l = ClockLateness::default();
        for us in [0, 50, 51, 999, 1_000, 1_001, 600_000] {
            l.observe(Duration::from_micros(us));
        }
        let c = l.counts();
        assert_eq!(c.count, 7);
        assert_eq!(c.sum_us, 50 + 51 + 999 + 1_000 + 1_001 + 600_000);
        assert_eq!(c.buckets[0], 2, "0 and 50 us");
        assert_eq!(c.buckets[1], 1, "51 us");
        assert_eq!(c.buckets[4], 2, "999 and 1000 us");
        assert_eq!(c.buckets[5], 1, "1001 us");
        assert_eq!(
            c.buckets[LATENESS_BOUNDS_US.len()],
            1,
            "above the last bound"
        );
        assert_eq!(c.buckets.iter().sum::<u64>(), 7);
    }
}
