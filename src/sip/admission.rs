//! Admission: whether a message from a source address is looked at at all, and whether
//! a new call from it may start.
//!
//! - A token bucket per source IP (sustained rate and burst). A source that keeps
//!   running its bucket dry (`ban_after` refusals within `BAN_WINDOW`) is banned for
//!   `ban`, like Kamailio's pike: everything from it is dropped in silence until the
//!   ban expires.
//! - At most `max_calls_per_source` calls in progress per source IP. Past it a new
//!   INVITE gets 503 a few times, then silence; each refused INVITE counts towards a
//!   ban too.
//! - Sources listed as trusted (a provider's or a proxy's addresses) are exempt from all
//!   of it.
//!
//! Sans-IO: time passed in. Memory stays bounded under a flood of spoofed sources.

use crate::config::Cidr;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Sustained messages per second per source.
    pub rate: f64,
    pub burst: u32,
    pub trusted: Vec<Cidr>,
    /// Calls in progress one source may have (0: no limit).
    pub max_calls_per_source: u32,
    /// How long a source that keeps exceeding its limits is ignored (zero: never banned).
    pub ban: Duration,
    /// Refusals within `BAN_WINDOW` that get a source banned.
    pub ban_after: u32,
}

impl AdmissionConfig {
    /// In one of the trusted ranges (a provider's or a proxy's addresses).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            rate: 1e9,
            burst: u32::MAX,
            trusted: Vec::new(),
            max_calls_per_source: 0,
            ban: Duration::ZERO,
            ban_after: u32::MAX,
        }
    }
}

/// Refusals are counted over this window for a ban.
pub const BAN_WINDOW: Duration = Duration::from_secs(10);
/// 503s a source over its call limit gets per `BAN_WINDOW` before silence.
const BUSY_ANSWERS: u32 = 3;

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Over the rate: dropped.
    Limited,
    /// Banned: dropped.
    Banned,
}

/// What to do with a new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    Admit,
    /// Over the source's call limit: answer 503.
    Busy,
    /// Over the limit and told so already: drop.
    Silent,
}

/// A ban that just started, for the one log line it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewBan {
    pub ip: IpAddr,
    /// Refusals in the window that led to it.
    pub refusals: u32,
    pub until: Instant,
}

struct Source {
    tokens: f64,
    last: Instant,
    calls: u32,
    /// Refusals since `window_start`.
    refusals: u32,
    busy_answers: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    /// Messages dropped during the current ban.
    dropped: u64,
}

/// Sources tracked before idle ones are forgotten.
const MAX_SOURCES: usize = 100_000;

pub struct Admission {
    cfg: AdmissionConfig,
    sources: HashMap<IpAddr, Source>,
    new_bans: Vec<NewBan>,
    /// Bans since start, for the counters.
    pub bans: u64,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission {
            cfg,
            sources: HashMap::new(),
            new_bans: Vec::new(),
            bans: 0,
        }
    }

    /// New limits (a reload); counts and bans in progress stay.
    pub fn set_config(&mut self, cfg: AdmissionConfig) {
        self.cfg = cfg;
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.cfg.is_trusted(ip)
    }

    fn source(&mut self, now: Instant, ip: IpAddr) -> &mut Source {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            // Under a spoofed-source flood keep memory bounded: forget sources with
            // nothing in progress and nothing against them.
            let (rate, burst) = (self.cfg.rate, self.cfg.burst as f64);
            self.sources.retain(|_, s| {
                s.calls > 0
                    || s.banned_until.is_some_and(|t| t > now)
                    || s.tokens + (now - s.last).as_secs_f64() * rate < burst
            });
            // Still full (a flood faster than buckets refill): forget rate state of
            // sources with no call and no ban, whatever it is.
            if self.sources.len() >= MAX_SOURCES {
                let mut excess = self.sources.len() - MAX_SOURCES * 9 / 10;
                self.sources.retain(|_, s| {
                    let keep =
                        excess == 0 || s.calls > 0 || s.banned_until.is_some_and(|t| t > now);
                    if !keep {
                        excess -= 1;
                    }
                    keep
                });
            }
        }
        let burst = self.cfg.burst as f64;
        self.sources.entry(ip).or_insert(Source {
            tokens: burst,
            last: now,
            calls: 0,
            refusals: 0,
            busy_answers: 0,
            window_start: now,
            banned_until: None,
            dropped: 0,
        })
    }

    /// Whether a message from `ip` at `now` is admitted (and counted).
    pub fn admit(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        if self.trusted(ip) {
            return Verdict::Admit;
        }
        let (rate, burst) = (self.cfg.rate, self.cfg.burst as f64);
        let s = self.source(now, ip);
        if let Some(until) = s.banned_until {
            if now < until {
                s.dropped += 1;
                return Verdict::Banned;
            }
            s.banned_until = None;
            s.refusals = 0;
            s.window_start = now;
        }
        s.tokens = (s.tokens + (now - s.last).as_secs_f64() * rate).min(burst);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Verdict::Admit
        } else {
            self.refused(now, ip);
            Verdict::Limited
        }
    }

    /// Counts a refusal of `ip`; enough of them within the window start a ban.
    fn refused(&mut self, now: Instant, ip: IpAddr) {
        let (ban, ban_after) = (self.cfg.ban, self.cfg.ban_after);
        let s = self.source(now, ip);
        if now.duration_since(s.window_start) > BAN_WINDOW {
            s.window_start = now;
            s.refusals = 0;
            s.busy_answers = 0;
        }
        s.refusals = s.refusals.saturating_add(1);
        if !ban.is_zero() && s.refusals >= ban_after && s.banned_until.is_none() {
            let until = now + ban;
            s.banned_until = Some(until);
            s.dropped = 0;
            let refusals = s.refusals;
            self.bans += 1;
            self.new_bans.push(NewBan {
                ip,
                refusals,
                until,
            });
        }
    }

    /// Whether a new call from `ip` may start; `Admit` counts it until `call_ended`.
    pub fn admit_call(&mut self, now: Instant, ip: IpAddr) -> CallVerdict {
        if self.trusted(ip) {
            return CallVerdict::Admit;
        }
        let max = self.cfg.max_calls_per_source;
        let s = self.source(now, ip);
        if max == 0 || s.calls < max {
            s.calls += 1;
            return CallVerdict::Admit;
        }
        self.refused(now, ip);
        let s = self.source(now, ip);
        if s.busy_answers < BUSY_ANSWERS {
            s.busy_answers += 1;
            CallVerdict::Busy
        } else {
            CallVerdict::Silent
        }
    }

    /// A call admitted by `admit_call` ended.
    pub fn call_ended(&mut self, ip: IpAddr) {
        if self.trusted(ip) {
            return;
        }
        if let Some(s) = self.sources.get_mut(&ip) {
            s.calls = s.calls.saturating_sub(1);
        }
    }

    /// Bans that started since the last call.
    pub fn take_new_bans(&mut self) -> Vec<NewBan> {
        std::mem::take(&mut self.new_bans)
    }

    /// Sources banned at `now`.
    pub fn banned(&self, now: Instant) -> usize {
        self.sources
            .values()
            .filter(|s| s.banned_until.is_some_and(|t| t > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            rate: 10.0,
            burst: 5,
            trusted: vec![
                "10.0.0.1".parse().unwrap(),
                "198.51.100.0/24".parse().unwrap(),
            ],
            max_calls_per_source: 2,
            ban: Duration::from_secs(60),
            ban_after: 20,
        }
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_trusted_sources_are_exempt() {
        let mut a = Admission::new(AdmissionConfig {
            ban: Duration::ZERO,
            ..config()
        });
        let t0 = Instant::now();
        let flooder: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..100)
            .filter(|_| a.admit(t0, flooder) == Verdict::Admit)
            .count();
        assert_eq!(admitted, 5);
        // 10 per second: one more every 100 ms.
        assert_eq!(
            a.admit(t0 + Duration::from_millis(50), flooder),
            Verdict::Limited
        );
        assert_eq!(
            a.admit(t0 + Duration::from_millis(150), flooder),
            Verdict::Admit
        );
        let trunk: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..1000).all(|_| a.admit(t0, trunk) == Verdict::Admit));
        let in_range: IpAddr = "198.51.100.77".parse().unwrap();
        assert!((0..1000).all(|_| a.admit(t0, in_range) == Verdict::Admit));
        // Another source has its own bucket.
        assert_eq!(a.admit(t0, "192.0.2.2".parse().unwrap()), Verdict::Admit);
    }

    #[test]
    fn a_flooder_is_banned_once_and_the_ban_expires() {
        let mut a = Admission::new(config());
        let t0 = Instant::now();
        let flooder: IpAddr = "192.0.2.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..100).map(|_| a.admit(t0, flooder)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Admit).count(), 5);
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Limited).count(),
            20
        );
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Banned).count(),
            75
        );
        let bans = a.take_new_bans();
        assert_eq!(bans.len(), 1, "one ban, one log line");
        assert_eq!(bans[0].refusals, 20);
        assert!(a.take_new_bans().is_empty());
        assert_eq!(a.banned(t0), 1);
        // Banned even once the bucket would have refilled.
        assert_eq!(
            a.admit(t0 + Duration::from_secs(30), flooder),
            Verdict::Banned
        );
        // Free again after the ban.
        assert_eq!(
            a.admit(t0 + Duration::from_secs(61), flooder),
            Verdict::Admit
        );
        assert_eq!(a.banned(t0 + Duration::from_secs(61)), 0);
        // A well-behaved source is never banned.
        let caller: IpAddr = "192.0.2.9".parse().unwrap();
        for i in 0..1000 {
            assert_eq!(
                a.admit(t0 + Duration::from_millis(200 * i), caller),
                Verdict::Admit
            );
        }
    }

    #[test]
    fn calls_per_source_are_limited_then_busy_then_silent() {
        let mut a = Admission::new(config());
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(a.admit_call(t0, ip), CallVerdict::Admit);
        assert_eq!(a.admit_call(t0, ip), CallVerdict::Admit);
        let over: Vec<CallVerdict> = (0..5).map(|_| a.admit_call(t0, ip)).collect();
        assert_eq!(
            over,
            [
                CallVerdict::Busy,
                CallVerdict::Busy,
                CallVerdict::Busy,
                CallVerdict::Silent,
                CallVerdict::Silent
            ]
        );
        a.call_ended(ip);
        assert_eq!(a.admit_call(t0, ip), CallVerdict::Admit, "a place freed");
        // Another source is not affected; a trusted one has no limit.
        assert_eq!(
            a.admit_call(t0, "192.0.2.2".parse().unwrap()),
            CallVerdict::Admit
        );
        let trunk: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..100).all(|_| a.admit_call(t0, trunk) == CallVerdict::Admit));
    }

    #[test]
    fn a_spoofed_source_flood_keeps_the_table_bounded() {
        let mut a = Admission::new(config());
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 5000) {
            let ip = IpAddr::from(i.to_be_bytes());
            a.admit(t0 + Duration::from_secs(1), ip);
        }
        assert!(a.sources.len() <= MAX_SOURCES + 1);
    }
}
