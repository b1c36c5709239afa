//! Caller-side load generator: many callers on one thread, each dialling the
//! hotline over SIP/UDP, talking (20 ms G.711 frames of recorded speech), pressing
//! keys on a schedule (RFC 4733 or in-band), some leaving a voice message, and
//! measuring what they hear: the spacing of the server's packets against 20 ms per
//! stream and over all streams, loss, timestamp jumps, pauses. A timer probe thread
//! runs beside it so a stalled machine is told apart from a late server, and the
//! generator states its own CPU time. Run through `bench/ivr-load.sh`.
//!
//!     loadgen 127.0.0.1:5060 --calls 1000 --duration 30 [--json] [--server-pid PID]
//!     loadgen 127.0.0.1:5060 --calls 200 --churn 5-120 --duration 1800   # soak

mod cpu;
mod dialog;
mod media;
mod net;
mod options;
mod probe;
mod report;
mod run;
mod rx;
mod sip;
mod stats;

use clap::Parser;
use options::{parse_range, parse_schedule, Finish, Keying, Options};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

/// Caller-side load generator for the hotline (SIP over UDP, IPv4).
#[derive(Parser)]
#[command(name = "loadgen")]
struct Args {
    /// The hotline's SIP address (UDP), e.g. 127.0.0.1:5060.
    server: SocketAddrV4,
    /// Concurrent calls.
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// New calls per second while ramping up.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Share of callers who leave a voice message.
    #[arg(long, default_value_t = 0.25)]
    voicemail_share: f64,
    /// Keying: rfc4733, inband or mixed (every other caller in-band).
    #[arg(long, default_value = "mixed")]
    keying: Keying,
    /// Keys every caller presses: KEY@SECONDS after the answer, comma-separated.
    #[arg(long, default_value = "1@3,2@4,#@5")]
    keys: String,
    /// Extra keys of voice-message callers (default: the queue's voicemail key).
    #[arg(long, default_value = "1@14")]
    voicemail_keys: String,
    /// The key that ends a voice message.
    #[arg(long, default_value_t = '#')]
    finish_key: char,
    /// When messages end: "after" the window (spread over 2 s) or all at once in the
    /// middle of the window ("burst").
    #[arg(long, default_value = "after")]
    finish: Finish,
    /// Seconds from the last call set up to the start of the measurement window.
    #[arg(long, default_value_t = 35.0)]
    settle: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds measured from the burst instant (middle of the window).
    #[arg(long, default_value_t = 1.0)]
    burst_window: f64,
    /// Seconds voice-message callers may listen after the window before hanging up.
    #[arg(long, default_value_t = 40.0)]
    drain: f64,
    /// What the callers say: mono 16-bit 8 kHz WAV.
    #[arg(long)]
    speech: Option<PathBuf>,
    /// RTP sockets shared by the calls.
    #[arg(long, default_value_t = 4)]
    rtp_sockets: usize,
    /// Address the calls come from (SIP and RTP), e.g. 127.0.0.4 beside other
    /// sources on loopback.
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: std::net::Ipv4Addr,
    /// The server's process id: its CPU time and RSS are sampled at the window's edges.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seed for per-call SSRCs, sequence numbers and speech offsets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Include one line per call in the JSON.
    #[arg(long)]
    per_call: bool,
    /// Churn: MIN-MAX seconds. Each call hangs up a random time in this range after
    /// its answer (a message caller presses the finishing key then, at 35 s at the
    /// earliest) and a new call takes its place, so that --calls are up at once for
    /// the whole window; the window opens when the first --calls are dialled.
    #[arg(long, value_name = "MIN-MAX")]
    churn: Option<String>,
}

fn secs(v: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name}: {v} is not a duration"))
}

fn options(a: Args) -> Result<(Options, bool), String> {
    let mut o = Options::new(a.server);
    o.calls = a.calls;
    o.rate = a.rate;
    o.voicemail_share = a.voicemail_share;
    o.keying = a.keying;
    o.keys = parse_schedule(&a.keys).map_err(|e| format!("--keys: {e}"))?;
    o.voicemail_keys =
        parse_schedule(&a.voicemail_keys).map_err(|e| format!("--voicemail-keys: {e}"))?;
    o.finish_key = a.finish_key.to_ascii_uppercase();
    o.finish = a.finish;
    o.settle = secs(a.settle, "settle")?;
    o.duration = secs(a.duration, "duration")?;
    o.burst_window = secs(a.burst_window, "burst-window")?;
    o.drain = secs(a.drain, "drain")?;
    if let Some(s) = a.speech {
        o.speech = s;
    }
    o.rtp_sockets = a.rtp_sockets;
    o.local_ip = a.local_ip;
    o.server_pid = a.server_pid;
    o.seed = a.seed;
    o.per_call = a.per_call;
    o.churn = a
        .churn
        .map(|c| parse_range(&c).map_err(|e| format!("--churn: {e}")))
        .transpose()?;
    o.check()?;
    Ok((o, a.json))
}

fn main() {
    let (opts, json) = match options(Args::parse()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let report = match run::run(&opts, &mut |line| eprintln!("loadgen: {line}")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(1);
            }
        }
    } else {
        print!("{}", report.human());
    }
}
