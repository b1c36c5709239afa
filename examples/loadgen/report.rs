//! The run's results: one structure, printed for people or as JSON.

use super::media::KeyMode;
use super::stats::{Dist, PerStream};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub calls: Calls,
    pub window: WindowInfo,
    /// |interval − 20 ms| between consecutive packets of the server's streams, over
    /// all streams in the window.
    pub deviation: Dist,
    pub deviation_per_stream: PerStream,
    /// The second from the burst instant (middle of the window), for the calls that
    /// do not leave a message. Reported in every run, so a run without finishes
    /// gives the comparison figures.
    pub burst: Burst,
    pub received: Received,
    pub sent: Sent,
    /// Timer probe lateness in the window.
    pub probe: Dist,
    pub generator: Generator,
    pub server: Option<Server>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_call: Option<Vec<CallLine>>,
}

#[derive(Debug, Default, Serialize)]
pub struct Calls {
    pub planned: usize,
    pub dialed: usize,
    pub answered: usize,
    /// Failed set-ups by reason ("503", "timeout", "bad-answer").
    pub failed: BTreeMap<String, usize>,
    pub voicemail_callers: usize,
    /// Voice-message callers that pressed the finishing key.
    pub messages_finished: usize,
    /// Calls the server hung up.
    pub ended_by_server: usize,
    /// Calls we hung up, by the status the server answered the BYE with.
    pub ended_by_us: BTreeMap<String, usize>,
    pub bye_timeouts: usize,
    /// Still up when the run gave up waiting.
    pub unfinished: usize,
    pub keys_rfc4733: u64,
    pub keys_inband: u64,
    pub setup_ms: Dist,
}

#[derive(Debug, Default, Serialize)]
pub struct WindowInfo {
    /// Seconds from the first INVITE.
    pub start_s: f64,
    pub seconds: f64,
    pub calls_up_at_start: usize,
    pub calls_up_at_end: usize,
    pub recording_callers_at_start: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Burst {
    pub at_s: f64,
    pub seconds: f64,
    /// Voice-message callers that pressed the finishing key at that instant.
    pub finishers: usize,
    pub others: Dist,
}

#[derive(Debug, Default, Serialize)]
pub struct Received {
    pub packets: u64,
    /// Packets never received (sequence gaps), and their share.
    pub missing: u64,
    pub loss_percent: f64,
    pub gap_events: u64,
    pub late_or_duplicate: u64,
    /// Timestamp steps that did not match the sequence step.
    pub ts_jumps: u64,
    /// Pauses of more than 60 ms between packets of a stream, and how many of them
    /// ended inside the window.
    pub stalls: u64,
    pub stalls_in_window: u64,
    /// When pauses ended, seconds from the run's start, with how many streams
    /// paused then (rounded to 0.1 s; the ten commonest).
    pub pause_times: Vec<(f64, u64)>,
    pub longest_pause_ms: f64,
    pub ssrc_changes: u64,
    /// Packets from an address no call knows.
    pub foreign: u64,
    /// Packets of a call after it ended (its BYE answered), and the latest of them.
    pub after_end: u64,
    pub longest_after_end_ms: f64,
    /// Dropped by our own sockets for a full buffer (the generator's fault, not the
    /// server's).
    pub dropped_by_us: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Sent {
    pub rtp_packets: u64,
    pub rtp_syscalls: u64,
    pub sip_datagrams: u64,
    pub sip_retransmissions: u64,
    /// Datagrams the kernel refused.
    pub refused: u64,
    /// How late our packets left against their 20 ms schedule, in the window.
    pub lateness: Dist,
    pub unexpected_sip: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Generator {
    /// CPU (user + system, all threads) in the window. The system part includes
    /// the kernel's loopback delivery of our packets into the server's sockets.
    pub cpu_s: f64,
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    pub cpu_percent_of_core: f64,
    pub cpu_percent_per_call: f64,
    pub cpu_whole_run_s: f64,
    pub max_rss_kb: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Server {
    pub pid: u32,
    pub cpu_s: f64,
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    pub cpu_percent_of_core: f64,
    pub cpu_percent_per_call: f64,
    pub rss_idle_kb: u64,
    pub rss_kb: u64,
    pub rss_per_call_kb: f64,
}

#[derive(Debug, Serialize)]
pub struct CallLine {
    pub call_id: String,
    pub voicemail: bool,
    pub keying: Option<KeyMode>,
    pub keys: String,
    pub outcome: String,
    pub setup_ms: Option<f64>,
    pub packets: u64,
    pub missing: u64,
    pub ts_jumps: u64,
    pub stalls: u64,
    /// When the first pauses ended, seconds from the run's start.
    pub pauses_at_s: Vec<f64>,
    pub deviation: Dist,
}

impl Report {
    pub fn human(&self) -> String {
        let mut s = String::new();
        let c = &self.calls;
        let _ = writeln!(
            s,
            "calls: {} planned, {} dialed, {} answered, failed {:?}; set-up {}",
            c.planned,
            c.dialed,
            c.answered,
            c.failed,
            c.setup_ms.line()
        );
        let _ = writeln!(
            s,
            "       {} voice-message callers, {} finished their message; ended by the server {}, by us {:?}, BYE timeouts {}, unfinished {}",
            c.voicemail_callers,
            c.messages_finished,
            c.ended_by_server,
            c.ended_by_us,
            c.bye_timeouts,
            c.unfinished
        );
        let _ = writeln!(
            s,
            "       keys sent: {} RFC 4733, {} in-band",
            c.keys_rfc4733, c.keys_inband
        );
        let w = &self.window;
        let _ = writeln!(
            s,
            "window: {:.1} s from {:.1} s; {} calls up at its start ({} recording a message), {} at its end",
            w.seconds, w.start_s, w.calls_up_at_start, w.recording_callers_at_start, w.calls_up_at_end
        );
        let _ = writeln!(s, "send deviation, all streams: {}", self.deviation.line());
        let p = &self.deviation_per_stream;
        let _ = writeln!(
            s,
            "send deviation per stream ({} streams), median/worst stream: p50 {:.3}/{:.3}  p99 {:.3}/{:.3}  p99.9 {:.3}/{:.3}  max {:.3}/{:.3} ms",
            p.streams,
            p.p50.median,
            p.p50.worst,
            p.p99.median,
            p.p99.worst,
            p.p99_9.median,
            p.p99_9.worst,
            p.max.median,
            p.max.worst
        );
        let b = &self.burst;
        let _ = writeln!(
            s,
            "burst second at {:.1} s ({} messages finished then), other calls: {}",
            b.at_s,
            b.finishers,
            b.others.line()
        );
        let r = &self.received;
        let _ = writeln!(
            s,
            "received: {} packets, {} missing ({:.4} %) in {} gaps, {} late/duplicate, {} timestamp jumps, {} pauses > 60 ms ({} in the window, longest {:.1} ms), {} SSRC changes, {} foreign, {} after the call ended (up to {:.0} ms after), {} dropped by our sockets",
            r.packets,
            r.missing,
            r.loss_percent,
            r.gap_events,
            r.late_or_duplicate,
            r.ts_jumps,
            r.stalls,
            r.stalls_in_window,
            r.longest_pause_ms,
            r.ssrc_changes,
            r.foreign,
            r.after_end,
            r.longest_after_end_ms,
            r.dropped_by_us
        );
        if !r.pause_times.is_empty() {
            let when: Vec<String> = r
                .pause_times
                .iter()
                .map(|(at, n)| format!("{at:.1} s ({n})"))
                .collect();
            let _ = writeln!(s, "pauses ended at (streams): {}", when.join(", "));
        }
        let t = &self.sent;
        let _ = writeln!(
            s,
            "sent: {} RTP packets in {} sendmmsg calls, {} SIP datagrams ({} retransmissions), {} refused, {} unexpected SIP messages",
            t.rtp_packets, t.rtp_syscalls, t.sip_datagrams, t.sip_retransmissions, t.refused, t.unexpected_sip
        );
        let _ = writeln!(s, "our send lateness: {}", t.lateness.line());
        let _ = writeln!(s, "timer probe lateness: {}", self.probe.line());
        let g = &self.generator;
        let _ = writeln!(
            s,
            "generator: {:.2} s CPU in the window ({:.2} user, {:.2} system) = {:.1} % of a core, {:.4} % per call; {:.1} s over the run; max RSS {} kB",
            g.cpu_s, g.cpu_user_s, g.cpu_system_s, g.cpu_percent_of_core, g.cpu_percent_per_call, g.cpu_whole_run_s, g.max_rss_kb
        );
        if let Some(v) = &self.server {
            let _ = writeln!(
                s,
                "server (pid {}): {:.2} s CPU in the window ({:.2} user, {:.2} system) = {:.1} % of a core, {:.4} % per call; RSS {} kB idle, {} kB at the window's end = {:.1} kB per call",
                v.pid, v.cpu_s, v.cpu_user_s, v.cpu_system_s, v.cpu_percent_of_core, v.cpu_percent_per_call, v.rss_idle_kb, v.rss_kb, v.rss_per_call_kb
            );
        }
        s
    }
}
