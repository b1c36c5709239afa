//! The generator's one loop: every millisecond it reads what arrived (SIP and RTP,
//! batched), runs the calls' timers and scripts, sends the RTP frames that are due
//! (batched, calls spread over a 20-slot wheel by the millisecond they were
//! answered), and sleeps until the next millisecond. Sockets are only read on these
//! ticks: the kernel's receive stamps make the reading time irrelevant to what is
//! measured, and a tick reads whole batches instead of waking per packet.

use super::cpu::{self, CpuTime};
use super::dialog::{Dialog, Event, Outcome};
use super::media::{self, Audio, KeyMode, MAX_RTP};
use super::net::{self, BATCH};
use super::options::{Finish, Options};
use super::probe::Probe;
use super::report::{Burst, CallLine, Generator, Report, Sent, Server, WindowInfo};
use super::rx::{Stream, Window};
use super::sip::{self, AnsweredMedia, Msg, Party};
use super::stats::{Dist, PerStream};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const FRAME: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_millis(1);
const HOUSEKEEPING: Duration = Duration::from_millis(5);
/// Finishing keys and hang-ups after the window are spread over this long.
const SPREAD: Duration = Duration::from_secs(2);
/// After the last hang-up: how long BYE transactions may take.
const BYE_GRACE: Duration = Duration::from_secs(35);
/// After the last call ended: still answer retransmitted BYEs (our 200 may have
/// been lost) for a while. Shorter than the 64·T1 of RFC 3261 to keep runs short.
const LINGER: Duration = Duration::from_secs(2);
/// Frames a late call may send at once to catch up; beyond that it skips.
const MAX_CATCH_UP: u32 = 5;
/// Marks a server port whose call has ended (its late packets are counted apart).
const ENDED: u32 = 1 << 31;
/// With churn, a message caller presses the finishing key no earlier than this after
/// the answer: the shipped flow starts recording at about 30 s.
const CHURN_MESSAGE_MIN: Duration = Duration::from_secs(35);
/// With churn, a progress line this often.
const CHURN_PROGRESS: Duration = Duration::from_secs(60);

struct Call {
    voicemail: bool,
    mode: KeyMode,
    sock: usize,
    dialog: Option<Dialog>,
    dialed_at: Option<Instant>,
    setup: Option<Duration>,
    answered_at: Option<Instant>,
    media: Option<AnsweredMedia>,
    tx: Option<media::Sender>,
    next_send: Instant,
    rx: Stream,
    next_key: usize,
    pressed: String,
    finish_at: Option<Instant>,
    finished: bool,
    hangup_at: Option<Instant>,
    outcome: Option<Outcome>,
    ended_at: Option<Instant>,
}

impl Call {
    fn is_up(&self) -> bool {
        self.dialog.as_ref().is_some_and(Dialog::is_up)
    }

    fn is_done(&self) -> bool {
        self.dialog.as_ref().is_some_and(Dialog::is_ended)
    }
}

/// The measurement plan once every call is set up.
#[derive(Clone, Copy)]
struct Phases {
    start: Instant,
    end: Instant,
    burst_at: Instant,
    last_hangup: Instant,
}

struct Io {
    sip: UdpSocket,
    rtp: Vec<UdpSocket>,
    sip_tx: net::Sender,
    rtp_tx: Vec<net::Sender>,
    rx: net::Receiver,
    server: SocketAddrV4,
}

impl Io {
    fn send_sip(&mut self, out: &mut Vec<Vec<u8>>) {
        let fd = self.sip.as_raw_fd();
        for m in out.drain(..) {
            self.sip_tx.push_bytes(fd, self.server, &m);
        }
    }
}

/// Sample points taken at the window's edges.
#[derive(Default, Clone, Copy)]
struct Edge {
    own_cpu: CpuTime,
    server_cpu: Option<CpuTime>,
    calls_up: usize,
    voicemail_up: usize,
    rss_kb: Option<u64>,
}

pub fn run(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Report, String> {
    opts.check()?;
    let audio = Audio::load(&opts.speech)?;
    let io_err = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let sip_sock = net::bind(opts.local_ip, 0, 4 << 20).map_err(|e| io_err("SIP socket", e))?;
    let sip_local = net::local_v4(&sip_sock).map_err(|e| io_err("SIP socket", e))?;
    let mut rtp = Vec::new();
    let mut rtp_addrs = Vec::new();
    for _ in 0..opts.rtp_sockets {
        let s = net::bind(opts.local_ip, 0, 16 << 20).map_err(|e| io_err("RTP socket", e))?;
        rtp_addrs.push(net::local_v4(&s).map_err(|e| io_err("RTP socket", e))?);
        rtp.push(s);
    }
    let mut io = Io {
        sip: sip_sock,
        rtp_tx: (0..rtp.len()).map(|_| net::Sender::new(MAX_RTP)).collect(),
        rtp,
        sip_tx: net::Sender::new(4096),
        rx: net::Receiver::new(4096),
        server: opts.server,
    };
    let run_id = format!(
        "{:08x}",
        media::splitmix(opts.seed ^ u64::from(std::process::id()) ^ net::monotonic_ns() as u64)
            as u32
    );
    let call_prefix = format!("lg-{run_id}-");
    let target = format!("sip:{}@{}", opts.user, opts.server);
    let mut vm_schedule = opts.keys.clone();
    vm_schedule.extend(opts.voicemail_keys.iter().copied());
    vm_schedule.sort_by_key(|(_, t)| *t);

    let (mut vm_n, mut other_n) = (0, 0);
    let mut new_call = |i: usize| {
        let voicemail = opts.leaves_message(i);
        let nth = if voicemail { &mut vm_n } else { &mut other_n };
        let mode = opts.key_mode(*nth);
        *nth += 1;
        Call {
            voicemail,
            mode,
            sock: i % opts.rtp_sockets,
            dialog: None,
            dialed_at: None,
            setup: None,
            answered_at: None,
            media: None,
            tx: None,
            next_send: Instant::now(),
            rx: Stream::default(),
            next_key: 0,
            pressed: String::new(),
            finish_at: None,
            finished: false,
            hangup_at: None,
            outcome: None,
            ended_at: None,
        }
    };
    let mut calls: Vec<Call> = (0..opts.calls).map(&mut new_call).collect();

    let server_rss_idle = opts.server_pid.and_then(cpu::process_rss_kb);
    let probe = Probe::start().map_err(|e| io_err("timer probe", e))?;
    let rt_offset = net::realtime_offset_ns();
    let t0 = Instant::now();
    let t0_ns = net::monotonic_ns();
    let mono = |t: Instant| t0_ns + t.saturating_duration_since(t0).as_nanos() as i64;
    let cpu_at_start = cpu::own_cpu();

    // Server RTP source port -> call index + 1, with ENDED set once the call ended.
    let mut by_port: Vec<u32> = vec![0; 65536];
    let mut wheel: Vec<Vec<u32>> = vec![Vec::new(); 20];
    let mut processed_ms: u64 = 0;
    let mut next_dial = 0usize;
    let mut resolved = 0usize;
    let mut phases: Option<Phases> = None;
    let mut window = Window {
        from: i64::MAX,
        to: i64::MAX,
    };
    let mut burst = Window {
        from: i64::MAX,
        to: i64::MAX,
    };
    let (mut at_start, mut at_end): (Option<Edge>, Option<Edge>) = (None, None);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut lateness: Vec<u32> = Vec::new();
    let mut foreign = 0u64;
    let mut after_end = 0u64;
    let mut longest_after_end_ns = 0i64;
    let mut unexpected_sip = 0u64;
    let mut drops: Vec<u32> = vec![0; io.rtp.len()];
    let mut next_housekeeping = t0;
    let mut give_up: Option<Instant> = None;
    let mut burst_finishers = 0usize;
    let mut finished_at: Option<Instant> = None;
    let mut next_churn_progress = t0 + CHURN_PROGRESS;

    progress(&format!(
        "dialing {} calls at {}/s to {} ({} leave a message)",
        opts.calls,
        opts.rate,
        target,
        calls.iter().filter(|c| c.voicemail).count()
    ));

    let edge = |calls: &[Call]| Edge {
        own_cpu: cpu::own_cpu(),
        server_cpu: opts.server_pid.and_then(cpu::process_cpu),
        calls_up: calls.iter().filter(|c| c.is_up()).count(),
        voicemail_up: calls.iter().filter(|c| c.voicemail && c.is_up()).count(),
        rss_kb: opts.server_pid.and_then(cpu::process_rss_kb),
    };

    loop {
        let now = Instant::now();
        let now_ns = mono(now);

        // SIP in.
        loop {
            let n = io
                .rx
                .recv(io.sip.as_raw_fd())
                .map_err(|e| io_err("SIP receive", e))?;
            for i in 0..n {
                let d = io.rx.get(i);
                let Some(msg) = Msg::parse(d.data) else {
                    unexpected_sip += 1;
                    continue;
                };
                let idx = msg
                    .call_id()
                    .and_then(|c| c.strip_prefix(call_prefix.as_str()))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|i| *i < calls.len());
                let Some(idx) = idx else {
                    unexpected_sip += 1;
                    if msg.method().is_some_and(|m| m != "ACK") {
                        out.push(sip::response(&msg, 481, "Call/Transaction Does Not Exist"));
                    }
                    continue;
                };
                let ev = match calls[idx].dialog.as_mut() {
                    Some(d) => d.on_message(&msg, now, &mut out),
                    None => None,
                };
                if let Some(ev) = ev {
                    on_event(
                        idx,
                        ev,
                        now,
                        t0,
                        &mut calls,
                        &audio,
                        opts.seed,
                        &mut by_port,
                        &mut wheel,
                        &mut resolved,
                    );
                }
            }
            io.send_sip(&mut out);
            if n < BATCH {
                break;
            }
        }

        // RTP in.
        for (k, sock) in io.rtp.iter().enumerate() {
            loop {
                let n = io
                    .rx
                    .recv(sock.as_raw_fd())
                    .map_err(|e| io_err("RTP receive", e))?;
                for i in 0..n {
                    let d = io.rx.get(i);
                    if let Some(dr) = d.drops {
                        drops[k] = drops[k].max(dr);
                    }
                    let entry = by_port[usize::from(d.from.port())];
                    let at = d.stamp_ns.map(|s| s - rt_offset).unwrap_or(now_ns);
                    let idx = (entry & !ENDED) as usize;
                    let call = match idx.checked_sub(1).map(|i| &mut calls[i]) {
                        Some(c)
                            if c.sock == k
                                && c.media.is_some_and(|m| m.addr.ip() == d.from.ip()) =>
                        {
                            c
                        }
                        _ => {
                            foreign += 1;
                            continue;
                        }
                    };
                    if entry & ENDED != 0 {
                        after_end += 1;
                        if let Some(end) = call.ended_at {
                            longest_after_end_ns = longest_after_end_ns.max(at - mono(end));
                        }
                        continue;
                    }
                    let b = (!call.voicemail).then_some(burst);
                    call.rx.on_packet(d.data, at, window, b);
                }
                if n < BATCH {
                    break;
                }
            }
        }

        if now >= next_housekeeping {
            next_housekeeping = now + HOUSEKEEPING;
            if opts.churn.is_some() && phases.is_none() {
                // The window opens once the first calls are dialled and lasts the run.
                let start = t0 + Duration::from_secs_f64(opts.calls as f64 / opts.rate);
                let end = start + opts.duration;
                let p = Phases {
                    start,
                    end,
                    burst_at: start + opts.duration / 2,
                    last_hangup: end + SPREAD + opts.drain,
                };
                window = Window {
                    from: mono(start),
                    to: mono(end),
                };
                burst = Window {
                    from: mono(p.burst_at),
                    to: mono(p.burst_at + opts.burst_window),
                };
                give_up = Some(p.last_hangup + BYE_GRACE);
                phases = Some(p);
            }
            if let (Some(_), Some(p)) = (opts.churn, phases) {
                if now < p.end {
                    // A new call for every one that ended.
                    let live = calls
                        .iter()
                        .filter(|c| c.dialog.is_none() || !c.is_done())
                        .count();
                    for _ in live..opts.calls {
                        let i = calls.len();
                        calls.push(new_call(i));
                    }
                }
                if now >= next_churn_progress {
                    next_churn_progress += CHURN_PROGRESS;
                    let failed = calls
                        .iter()
                        .filter(|c| {
                            matches!(
                                c.outcome,
                                Some(
                                    Outcome::Refused(_)
                                        | Outcome::SetupTimeout
                                        | Outcome::BadAnswer(_)
                                        | Outcome::ByeTimeout
                                )
                            )
                        })
                        .count();
                    progress(&format!(
                        "{:.0} s: {} calls placed, {} up, {} failed",
                        (now - t0).as_secs_f64(),
                        calls.len(),
                        calls.iter().filter(|c| c.is_up()).count(),
                        failed
                    ));
                }
            }
            // New calls.
            while next_dial < calls.len()
                && t0 + Duration::from_secs_f64(next_dial as f64 / opts.rate) <= now
            {
                let i = next_dial;
                next_dial += 1;
                let c = &mut calls[i];
                let party = Party {
                    call_id: format!("{call_prefix}{i}"),
                    from: format!("<sip:caller{i}@{}>;tag=lg{i}", opts.local_ip),
                    local: sip_local,
                    target: target.clone(),
                };
                let sdp = sip::offer_sdp(rtp_addrs[c.sock], c.mode == KeyMode::Rfc4733, i as u64);
                c.dialog = Some(Dialog::start(party, &sdp, opts.timers, now, &mut out));
                c.dialed_at = Some(now);
            }
            // The window's edges, sampled before this tick's hang-ups.
            if let Some(p) = phases {
                if at_start.is_none() && now >= p.start {
                    at_start = Some(edge(&calls));
                    progress("window open");
                }
                if at_end.is_none() && now >= p.end {
                    at_end = Some(edge(&calls));
                    progress("window closed; finishing messages and hanging up");
                }
            }
            // Timers, keys, hang-ups.
            for i in 0..calls.len() {
                let c = &mut calls[i];
                let mut ev = None;
                if let Some(d) = c.dialog.as_mut() {
                    if d.next_timer().is_some_and(|t| t <= now) {
                        ev = d.on_timer(now, &mut out);
                    }
                }
                if let Some(ev) = ev {
                    on_event(
                        i,
                        ev,
                        now,
                        t0,
                        &mut calls,
                        &audio,
                        opts.seed,
                        &mut by_port,
                        &mut wheel,
                        &mut resolved,
                    );
                }
                let c = &mut calls[i];
                if !c.is_up() {
                    continue;
                }
                if let (Some((min, max)), Some(answered), None) =
                    (opts.churn, c.answered_at, c.hangup_at)
                {
                    let u = media::splitmix(opts.seed ^ (i as u64).wrapping_mul(0x2545_F491))
                        as f64
                        / u64::MAX as f64;
                    let length = min + (max - min).mul_f64(u);
                    if c.voicemail {
                        let finish = answered + length.max(CHURN_MESSAGE_MIN);
                        c.finish_at = Some(finish);
                        c.hangup_at = Some(finish + opts.drain);
                    } else {
                        c.hangup_at = Some(answered + length);
                    }
                }
                if let Some(p) = phases.filter(|_| opts.churn.is_some()) {
                    if now >= p.end {
                        // The end of the run: everyone still up finishes and hangs up.
                        let spread = SPREAD * (i % 100) as u32 / 100;
                        if c.voicemail {
                            c.finish_at = c.finish_at.map(|f| f.min(p.end + spread));
                            c.hangup_at = Some(p.last_hangup);
                        } else {
                            c.hangup_at = c.hangup_at.map(|h| h.min(p.end + spread));
                        }
                    }
                }
                let (Some(answered), Some(tx)) = (c.answered_at, c.tx.as_mut()) else {
                    continue;
                };
                let schedule = if c.voicemail {
                    &vm_schedule
                } else {
                    &opts.keys
                };
                while let Some((key, after)) = schedule.get(c.next_key) {
                    if answered + *after > now {
                        break;
                    }
                    tx.press(*key);
                    c.pressed.push(*key);
                    c.next_key += 1;
                }
                if !c.finished && c.finish_at.is_some_and(|t| t <= now) {
                    tx.press(opts.finish_key);
                    c.pressed.push(opts.finish_key);
                    c.finished = true;
                    if phases.is_some_and(|p| opts.finish == Finish::Burst && now < p.end) {
                        burst_finishers += 1;
                    }
                }
                if c.hangup_at.is_some_and(|t| t <= now) && !tx.keys_pending() {
                    if let Some(d) = c.dialog.as_mut() {
                        d.hang_up(now, &mut out);
                    }
                }
            }
            io.send_sip(&mut out);

            // Every call set up (or refused): the measurement plan.
            if phases.is_none() && next_dial == calls.len() && resolved == calls.len() {
                let start = now + opts.settle;
                let end = start + opts.duration;
                let p = Phases {
                    start,
                    end,
                    burst_at: start + opts.duration / 2,
                    last_hangup: end + SPREAD + opts.drain,
                };
                window = Window {
                    from: mono(start),
                    to: mono(end),
                };
                burst = Window {
                    from: mono(p.burst_at),
                    to: mono(p.burst_at + opts.burst_window),
                };
                let n = calls.len().max(1) as u32;
                for (i, c) in calls.iter_mut().enumerate() {
                    let spread = SPREAD * i as u32 / n;
                    if c.voicemail {
                        c.finish_at = Some(match opts.finish {
                            Finish::Burst => p.burst_at,
                            Finish::AfterWindow => end + spread,
                        });
                        c.hangup_at = Some(p.last_hangup);
                    } else {
                        c.hangup_at = Some(end + spread);
                    }
                }
                give_up = Some(p.last_hangup + BYE_GRACE);
                phases = Some(p);
                progress(&format!(
                    "{} of {} calls answered after {:.1} s; measuring from {:.1} s for {:.1} s",
                    calls.iter().filter(|c| c.answered_at.is_some()).count(),
                    calls.len(),
                    (now - t0).as_secs_f64(),
                    (start - t0).as_secs_f64(),
                    opts.duration.as_secs_f64()
                ));
            }
            let all_done =
                next_dial == calls.len() && calls.iter().all(|c| c.dialog.is_none() || c.is_done());
            // Done once every call ended after the window (or none was answered: no
            // window to measure), or when waiting longer is pointless.
            if finished_at.is_none()
                && ((all_done && (at_end.is_some() || phases.is_none()))
                    || give_up.is_some_and(|g| now >= g))
            {
                finished_at = Some(now);
            }
            if finished_at.is_some_and(|f| now >= f + LINGER) {
                io.sip_tx.flush(io.sip.as_raw_fd());
                break;
            }
        }

        // RTP out: the wheel slots of the milliseconds since the last tick.
        let cur_ms = now.saturating_duration_since(t0).as_millis() as u64;
        if cur_ms > processed_ms {
            let first = (processed_ms + 1).max(cur_ms.saturating_sub(19));
            for m in first..=cur_ms {
                let slot = &mut wheel[(m % 20) as usize];
                slot.retain(|&i| calls[i as usize].tx.is_some());
                for &i in slot.iter() {
                    let c = &mut calls[i as usize];
                    let (Some(tx), Some(media)) = (c.tx.as_mut(), c.media) else {
                        continue;
                    };
                    let mut sent = 0;
                    while c.next_send <= now {
                        if sent == MAX_CATCH_UP {
                            // Too far behind: skip rather than burst.
                            while c.next_send <= now {
                                c.next_send += FRAME;
                            }
                            break;
                        }
                        if window.contains(now_ns) {
                            let late = now.saturating_duration_since(c.next_send);
                            lateness.push(late.as_micros().min(u32::MAX as u128) as u32);
                        }
                        let fd = io.rtp[c.sock].as_raw_fd();
                        io.rtp_tx[c.sock].push(fd, media.addr, |buf| tx.next_packet(&audio, buf));
                        c.next_send += FRAME;
                        sent += 1;
                    }
                }
            }
            processed_ms = cur_ms;
        }
        for k in 0..io.rtp.len() {
            io.rtp_tx[k].flush(io.rtp[k].as_raw_fd());
        }
        io.sip_tx.flush(io.sip.as_raw_fd());

        let next_tick = t0 + TICK * (cur_ms as u32 + 1);
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        }
    }

    let probe_samples = probe.finish();
    let cpu_whole = cpu::own_cpu().since(&cpu_at_start).total();
    let at_start = at_start.unwrap_or_default();
    let at_end = at_end.unwrap_or_else(|| edge(&calls));
    Ok(build_report(
        opts,
        &mut calls,
        phases.map(|p| {
            (
                (p.start - t0).as_secs_f64(),
                (p.burst_at - t0).as_secs_f64(),
            )
        }),
        &at_start,
        &at_end,
        server_rss_idle,
        probe_samples,
        window,
        t0_ns,
        Tallies {
            lateness,
            foreign,
            after_end,
            longest_after_end_ns,
            unexpected_sip,
            drops: drops.iter().map(|d| u64::from(*d)).sum(),
            burst_finishers,
            cpu_whole,
            rtp_sent: io.rtp_tx.iter().map(|t| t.sent).sum(),
            rtp_syscalls: io.rtp_tx.iter().map(|t| t.syscalls).sum(),
            sip_sent: io.sip_tx.sent,
            refused: io.sip_tx.refused + io.rtp_tx.iter().map(|t| t.refused).sum::<u64>(),
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn on_event(
    i: usize,
    ev: Event,
    now: Instant,
    t0: Instant,
    calls: &mut [Call],
    audio: &Audio,
    seed: u64,
    by_port: &mut [u32],
    wheel: &mut [Vec<u32>],
    resolved: &mut usize,
) {
    let c = &mut calls[i];
    match ev {
        Event::Answered(m) => {
            *resolved += 1;
            c.answered_at = Some(now);
            c.setup = c.dialed_at.map(|d| now - d);
            c.media = Some(m);
            c.tx = Some(media::Sender::new(
                seed ^ (i as u64).wrapping_mul(0x9E37_79B9),
                m.voice_pt,
                m.event_pt,
                c.mode,
                audio.speech_frames(),
            ));
            by_port[usize::from(m.addr.port())] = i as u32 + 1;
            let ms = now.saturating_duration_since(t0).as_millis() as u64 + 1;
            c.next_send = t0 + Duration::from_millis(ms);
            wheel[(ms % 20) as usize].push(i as u32);
        }
        Event::Ended(o) => {
            if c.answered_at.is_none() {
                *resolved += 1;
            }
            c.ended_at = Some(now);
            if let Some(m) = c.media {
                let entry = &mut by_port[usize::from(m.addr.port())];
                if *entry == i as u32 + 1 {
                    *entry |= ENDED;
                }
            }
            c.tx = None;
            c.outcome = Some(o);
        }
    }
}

struct Tallies {
    lateness: Vec<u32>,
    foreign: u64,
    after_end: u64,
    longest_after_end_ns: i64,
    unexpected_sip: u64,
    drops: u64,
    burst_finishers: usize,
    cpu_whole: Duration,
    rtp_sent: u64,
    rtp_syscalls: u64,
    sip_sent: u64,
    refused: u64,
}

fn outcome_name(o: Option<&Outcome>) -> String {
    match o {
        None => "unfinished".into(),
        Some(Outcome::Refused(code)) => format!("refused-{code}"),
        Some(Outcome::SetupTimeout) => "setup-timeout".into(),
        Some(Outcome::BadAnswer(_)) => "bad-answer".into(),
        Some(Outcome::ServerBye) => "server-bye".into(),
        Some(Outcome::OurBye(code)) => format!("our-bye-{code}"),
        Some(Outcome::ByeTimeout) => "bye-timeout".into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    opts: &Options,
    calls: &mut [Call],
    times: Option<(f64, f64)>,
    at_start: &Edge,
    at_end: &Edge,
    server_rss_idle: Option<u64>,
    probe: Vec<(i64, u32)>,
    window: Window,
    t0_ns: i64,
    t: Tallies,
) -> Report {
    let secs = opts.duration.as_secs_f64();
    let mut r = Report::default();
    let mut setups: Vec<u32> = Vec::new();
    let mut all: Vec<u32> = Vec::new();
    let mut burst_all: Vec<u32> = Vec::new();
    let mut per_stream = Vec::new();
    let mut lines = Vec::new();
    let mut pause_times: std::collections::BTreeMap<i64, u64> = Default::default();
    r.calls.planned = calls.len();
    for c in calls.iter_mut() {
        let cc = &mut r.calls;
        if c.dialog.is_some() {
            cc.dialed += 1;
        }
        if c.answered_at.is_some() {
            cc.answered += 1;
        }
        if let Some(s) = c.setup {
            setups.push(s.as_micros() as u32);
        }
        if c.voicemail {
            cc.voicemail_callers += 1;
        }
        if c.finished {
            cc.messages_finished += 1;
        }
        match &c.outcome {
            Some(Outcome::Refused(code)) => *cc.failed.entry(code.to_string()).or_default() += 1,
            Some(Outcome::SetupTimeout) => *cc.failed.entry("timeout".into()).or_default() += 1,
            Some(Outcome::BadAnswer(_)) => *cc.failed.entry("bad-answer".into()).or_default() += 1,
            Some(Outcome::ServerBye) => cc.ended_by_server += 1,
            Some(Outcome::OurBye(code)) => {
                *cc.ended_by_us.entry(code.to_string()).or_default() += 1
            }
            Some(Outcome::ByeTimeout) => cc.bye_timeouts += 1,
            None if c.dialog.is_some() => cc.unfinished += 1,
            None => {}
        }
        let keys = c.pressed.chars().count() as u64;
        let mode = c.tx.as_ref().map(|t| t.mode()).or(c.media.map(|m| {
            if m.event_pt.is_some() {
                c.mode
            } else {
                KeyMode::Inband
            }
        }));
        match mode {
            Some(KeyMode::Rfc4733) => cc.keys_rfc4733 += keys,
            Some(KeyMode::Inband) => cc.keys_inband += keys,
            None => {}
        }
        let rx = &mut c.rx;
        let rv = &mut r.received;
        rv.packets += rx.packets;
        rv.missing += rx.missing;
        rv.gap_events += rx.gap_events;
        rv.late_or_duplicate += rx.late_or_duplicate;
        rv.ts_jumps += rx.ts_jumps;
        rv.stalls += rx.stalls;
        rv.stalls_in_window += rx.stalls_in_window;
        for at in &rx.pauses_at_ns {
            *pause_times.entry((at - t0_ns) / 100_000_000).or_default() += 1;
        }
        rv.longest_pause_ms = rv.longest_pause_ms.max(rx.longest_pause_ns as f64 / 1e6);
        rv.ssrc_changes += rx.ssrc_changes;
        all.extend_from_slice(&rx.deviations);
        burst_all.extend_from_slice(&rx.burst_deviations);
        let d = Dist::of_us(&mut rx.deviations);
        per_stream.push(d);
        if opts.per_call {
            lines.push(CallLine {
                call_id: c
                    .dialog
                    .as_ref()
                    .map(|d| d.call_id().to_string())
                    .unwrap_or_default(),
                voicemail: c.voicemail,
                keying: mode,
                keys: c.pressed.clone(),
                outcome: outcome_name(c.outcome.as_ref()),
                setup_ms: c.setup.map(|s| s.as_secs_f64() * 1000.0),
                packets: rx.packets,
                missing: rx.missing,
                ts_jumps: rx.ts_jumps,
                stalls: rx.stalls,
                pauses_at_s: rx
                    .pauses_at_ns
                    .iter()
                    .map(|ns| (ns - t0_ns) as f64 / 1e9)
                    .collect(),
                deviation: d,
            });
        }
    }
    r.calls.setup_ms = Dist::of_us(&mut setups);
    let mut commonest: Vec<(i64, u64)> = pause_times.into_iter().collect();
    commonest.sort_by_key(|(at, n)| (std::cmp::Reverse(*n), *at));
    commonest.truncate(10);
    commonest.sort();
    r.received.pause_times = commonest
        .into_iter()
        .map(|(tenth, n)| (tenth as f64 / 10.0, n))
        .collect();
    r.received.foreign = t.foreign;
    r.received.after_end = t.after_end;
    r.received.longest_after_end_ms = t.longest_after_end_ns as f64 / 1e6;
    r.received.dropped_by_us = t.drops;
    let total = r.received.packets + r.received.missing;
    r.received.loss_percent = if total > 0 {
        r.received.missing as f64 * 100.0 / total as f64
    } else {
        0.0
    };
    r.deviation = Dist::of_us(&mut all);
    r.deviation_per_stream = PerStream::of(&per_stream);
    let (start_s, burst_s) = times.unwrap_or((f64::NAN, f64::NAN));
    r.window = WindowInfo {
        start_s,
        seconds: secs,
        calls_up_at_start: at_start.calls_up,
        calls_up_at_end: at_end.calls_up,
        recording_callers_at_start: at_start.voicemail_up,
    };
    r.burst = Burst {
        at_s: burst_s,
        seconds: opts.burst_window.as_secs_f64(),
        finishers: t.burst_finishers,
        others: Dist::of_us(&mut burst_all),
    };
    r.sent = Sent {
        rtp_packets: t.rtp_sent,
        rtp_syscalls: t.rtp_syscalls,
        sip_datagrams: t.sip_sent,
        sip_retransmissions: calls
            .iter()
            .filter_map(|c| c.dialog.as_ref())
            .map(|d| u64::from(d.retransmissions))
            .sum(),
        refused: t.refused,
        lateness: Dist::of_us(&mut t.lateness.clone()),
        unexpected_sip: t.unexpected_sip
            + calls
                .iter()
                .filter_map(|c| c.dialog.as_ref())
                .map(|d| u64::from(d.unexpected))
                .sum::<u64>(),
    };
    let mut probe_in: Vec<u32> = probe
        .iter()
        .filter(|(at, _)| window.contains(*at))
        .map(|(_, late)| *late)
        .collect();
    r.probe = Dist::of_us(&mut probe_in);
    let calls_up = at_start.calls_up.max(1) as f64;
    let own_split = at_end.own_cpu.since(&at_start.own_cpu);
    let own = own_split.total().as_secs_f64();
    r.generator = Generator {
        cpu_s: own,
        cpu_user_s: own_split.user.as_secs_f64(),
        cpu_system_s: own_split.system.as_secs_f64(),
        cpu_percent_of_core: own / secs * 100.0,
        cpu_percent_per_call: own / secs * 100.0 / calls_up,
        cpu_whole_run_s: t.cpu_whole.as_secs_f64(),
        max_rss_kb: cpu::own_max_rss_kb(),
    };
    if let (Some(pid), Some(a), Some(b)) = (opts.server_pid, at_start.server_cpu, at_end.server_cpu)
    {
        let split = b.since(&a);
        let cpu_s = split.total().as_secs_f64();
        let rss = at_end.rss_kb.unwrap_or(0);
        let idle = server_rss_idle.unwrap_or(0);
        r.server = Some(Server {
            pid,
            cpu_s,
            cpu_user_s: split.user.as_secs_f64(),
            cpu_system_s: split.system.as_secs_f64(),
            cpu_percent_of_core: cpu_s / secs * 100.0,
            cpu_percent_per_call: cpu_s / secs * 100.0 / calls_up,
            rss_idle_kb: idle,
            rss_kb: rss,
            rss_per_call_kb: rss.saturating_sub(idle) as f64 / calls_up,
        });
    }
    if opts.per_call {
        r.per_call = Some(lines);
    }
    r
}
