//! What a run does: how many callers, how fast they arrive, which keys they press
//! when, who leaves a voice message, and when the measurement window is.

use super::dialog::Timers;
use super::media::{is_key, KeyMode};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// Which keying the calls use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    Rfc4733,
    Inband,
    /// Alternate: every other caller of each kind keys in-band.
    Mixed,
}

impl std::str::FromStr for Keying {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rfc4733" => Ok(Keying::Rfc4733),
            "inband" => Ok(Keying::Inband),
            "mixed" => Ok(Keying::Mixed),
            other => Err(format!(
                "unknown keying \"{other}\" (rfc4733, inband or mixed)"
            )),
        }
    }
}

/// When the voice-message callers press the key that ends their message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// After the measurement window, spread over two seconds.
    AfterWindow,
    /// All at the same instant, the middle of the window.
    Burst,
}

impl std::str::FromStr for Finish {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "after" => Ok(Finish::AfterWindow),
            "burst" => Ok(Finish::Burst),
            other => Err(format!("unknown finish mode \"{other}\" (after or burst)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub server: SocketAddrV4,
    /// User part of the Request-URI.
    pub user: String,
    pub calls: usize,
    /// New calls per second while ramping up.
    pub rate: f64,
    /// Share of callers who leave a voice message.
    pub voicemail_share: f64,
    pub keying: Keying,
    /// Keys every caller presses, seconds after the answer.
    pub keys: Vec<(char, Duration)>,
    /// Keys only voice-message callers press on top (e.g. leaving the queue).
    pub voicemail_keys: Vec<(char, Duration)>,
    /// The key that ends a voice message.
    pub finish_key: char,
    pub finish: Finish,
    /// From the last call set up to the start of the measurement window.
    pub settle: Duration,
    pub duration: Duration,
    /// Length of the window that starts at the burst instant.
    pub burst_window: Duration,
    /// After the window: how long voice-message callers may listen to the end of
    /// the flow before everyone still up hangs up.
    pub drain: Duration,
    pub speech: PathBuf,
    /// Calls share this many RTP sockets (demultiplexed by the server's port).
    pub rtp_sockets: usize,
    pub local_ip: Ipv4Addr,
    pub timers: Timers,
    /// The server process, for its CPU time and memory.
    pub server_pid: Option<u32>,
    pub seed: u64,
    /// Keep a line per call in the report.
    pub per_call: bool,
    /// Churn: each call lasts a random time in this range after its answer and is
    /// replaced by a new one, `calls` at once, until the window ends.
    pub churn: Option<(Duration, Duration)>,
}

impl Options {
    /// Defaults for the shipped flow (config/ivr.toml) with callers waiting in the
    /// queue (`queue.voicemail_when_nobody_logged_in=false`): 1, 2 and # answer the
    /// three questions during the greeting; voice-message callers press the queue's
    /// voicemail key 1 once "connecting" has played.
    pub fn new(server: SocketAddrV4) -> Options {
        let s = Duration::from_secs;
        Options {
            server,
            user: "hotline".into(),
            calls: 10,
            rate: 100.0,
            voicemail_share: 0.25,
            keying: Keying::Mixed,
            keys: vec![('1', s(3)), ('2', s(4)), ('#', s(5))],
            voicemail_keys: vec![('1', s(14))],
            finish_key: '#',
            finish: Finish::AfterWindow,
            settle: s(35),
            duration: s(30),
            burst_window: s(1),
            drain: s(40),
            speech: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/speech_ru_festival.wav"
            )),
            rtp_sockets: 8,
            local_ip: Ipv4Addr::LOCALHOST,
            timers: Timers {
                t1: Duration::from_millis(500),
                t2: Duration::from_secs(4),
            },
            server_pid: None,
            seed: 1,
            per_call: false,
            churn: None,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.calls == 0 {
            return Err("--calls must be at least 1".into());
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err("--rate must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&self.voicemail_share) {
            return Err("--voicemail-share must be between 0 and 1".into());
        }
        if self.rtp_sockets == 0 || self.rtp_sockets > 1024 {
            return Err("--rtp-sockets must be between 1 and 1024".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if let Some((min, max)) = self.churn {
            if min.is_zero() || min > max {
                return Err("--churn must be MIN-MAX seconds with 0 < MIN <= MAX".into());
            }
        }
        if !is_key(self.finish_key) {
            return Err(format!("--finish-key {:?} is not a key", self.finish_key));
        }
        Ok(())
    }

    /// Whether call `i` leaves a voice message: spread evenly over the calls.
    pub fn leaves_message(&self, i: usize) -> bool {
        let share = |n: usize| (n as f64 * self.voicemail_share).floor() as usize;
        share(i + 1) > share(i)
    }

    /// Keying of the `nth` call of its kind (message or not).
    pub fn key_mode(&self, nth: usize) -> KeyMode {
        match self.keying {
            Keying::Rfc4733 => KeyMode::Rfc4733,
            Keying::Inband => KeyMode::Inband,
            Keying::Mixed if nth.is_multiple_of(2) => KeyMode::Rfc4733,
            Keying::Mixed => KeyMode::Inband,
        }
    }
}

/// `"5-120"`: the shortest and longest call of `--churn`, in seconds.
pub fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let secs = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .and_then(|f| Duration::try_from_secs_f64(f).ok())
            .ok_or_else(|| format!("{v:?} is not a number of seconds"))
    };
    Ok((secs(a)?, secs(b)?))
}

/// `"1@3,2@4.5,#@5"`: key and seconds after the answer, sorted by time.
pub fn parse_schedule(s: &str) -> Result<Vec<(char, Duration)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, t) = item
            .split_once('@')
            .ok_or_else(|| format!("\"{item}\" is not KEY@SECONDS"))?;
        let mut chars = k.trim().chars();
        let key = match (chars.next(), chars.next()) {
            (Some(c), None) if is_key(c) => c.to_ascii_uppercase(),
            _ => return Err(format!("\"{k}\" is not a key (0-9 * # A-D)")),
        };
        let secs: f64 = t
            .trim()
            .parse()
            .map_err(|_| format!("\"{t}\" is not a number of seconds"))?;
        if !(0.0..=86_400.0).contains(&secs) {
            return Err(format!("\"{t}\" is out of range"));
        }
        out.push((key, Duration::from_secs_f64(secs)));
    }
    out.sort_by_key(|(_, t)| *t);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_ranges_parse_and_refuse_nonsense() {
        let s = Duration::from_secs;
        assert_eq!(parse_range("5-120"), Ok((s(5), s(120))));
        assert!(parse_range("5").is_err());
        assert!(parse_range("a-3").is_err());
        let mut o = Options::new("127.0.0.1:5060".parse().unwrap());
        o.churn = Some((s(10), s(5)));
        assert!(o.check().is_err());
        o.churn = Some((s(5), s(5)));
        assert!(o.check().is_ok());
    }

    #[test]
    fn schedules_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_schedule(" #@5, 1@3.5 ").unwrap(),
            [
                ('1', Duration::from_millis(3500)),
                ('#', Duration::from_secs(5))
            ]
        );
        assert!(parse_schedule("").unwrap().is_empty());
        for bad in ["1", "x@1", "12@1", "1@-1", "1@soon", "1@1e9"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_quarter_leaves_messages_evenly_and_mixed_keying_alternates() {
        let o = Options::new("127.0.0.1:5060".parse().unwrap());
        let vm: Vec<usize> = (0..12).filter(|i| o.leaves_message(*i)).collect();
        assert_eq!(vm, [3, 7, 11]);
        assert_eq!(o.key_mode(0), KeyMode::Rfc4733);
        assert_eq!(o.key_mode(1), KeyMode::Inband);
        let all = Options {
            voicemail_share: 1.0,
            ..o.clone()
        };
        assert!((0..5).all(|i| all.leaves_message(i)));
        let none = Options {
            voicemail_share: 0.0,
            ..o
        };
        assert!((0..5).all(|i| !none.leaves_message(i)));
    }
}
