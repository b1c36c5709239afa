//! Console login lockout, per client address and per account, like the SIP
//! registrar's: too many wrong passwords within a window lock logins out for a while,
//! and a locked-out attempt is refused before any password is hashed. Sans-IO: time
//! is an argument.
//!
//! IPv6 clients are counted per /64 (one host owns a whole /64). Memory is bounded:
//! the address table holds at most `max_addresses` entries (stale ones go first,
//! locked ones last), and accounts are counted only when they exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct LockoutConfig {
    pub max_per_address: u32,
    pub max_per_account: u32,
    pub window: Duration,
    pub lockout: Duration,
    pub max_addresses: usize,
}

/// What a login attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused without checking the password, until then.
    Locked(Instant),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
        }
    }

    fn locked(&self, now: Instant) -> Option<Instant> {
        self.locked_until.filter(|t| *t > now)
    }

    fn fail(&mut self, now: Instant, cfg: &LockoutConfig, max: u32) {
        if now.saturating_duration_since(self.window_start) >= cfg.window {
            self.window_start = now;
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures >= max {
            self.locked_until = Some(now + cfg.lockout);
            self.failures = 0;
            self.window_start = now;
        }
    }

    fn stale(&self, now: Instant, cfg: &LockoutConfig) -> bool {
        self.locked(now).is_none() && now.saturating_duration_since(self.window_start) >= cfg.window
    }
}

/// The key an address is counted under.
pub fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug)]
pub struct Lockout {
    cfg: LockoutConfig,
    addresses: HashMap<IpAddr, Entry>,
    accounts: HashMap<String, Entry>,
}

impl Lockout {
    pub fn new(cfg: LockoutConfig) -> Lockout {
        Lockout {
            cfg,
            addresses: HashMap::new(),
            accounts: HashMap::new(),
        }
    }

    /// Whether an attempt from `addr` for `account` may check its password.
    pub fn check(&self, addr: IpAddr, account: &str, now: Instant) -> Verdict {
        let by_addr = self
            .addresses
            .get(&address_key(addr))
            .and_then(|e| e.locked(now));
        let by_account = self.accounts.get(account).and_then(|e| e.locked(now));
        match by_addr.into_iter().chain(by_account).max() {
            Some(t) => Verdict::Locked(t),
            None => Verdict::Allowed,
        }
    }

    /// A wrong password from `addr`; `account` when it names an existing account.
    /// Returns the verdict for the next attempt.
    pub fn failure(&mut self, addr: IpAddr, account: Option<&str>, now: Instant) -> Verdict {
        let k = address_key(addr);
        if !self.addresses.contains_key(&k) && self.addresses.len() >= self.cfg.max_addresses {
            self.make_room(now);
        }
        if self.addresses.contains_key(&k) || self.addresses.len() < self.cfg.max_addresses {
            let cfg = self.cfg;
            self.addresses
                .entry(k)
                .or_insert_with(|| Entry::new(now))
                .fail(now, &cfg, cfg.max_per_address);
        }
        if let Some(a) = account {
            let cfg = self.cfg;
            self.accounts
                .entry(a.to_string())
                .or_insert_with(|| Entry::new(now))
                .fail(now, &cfg, cfg.max_per_account);
        }
        self.check(addr, account.unwrap_or(""), now)
    }

    /// A correct password: the account's count starts over. The address's does not,
    /// so one known password does not buy guesses at other accounts.
    pub fn success(&mut self, account: &str) {
        if let Some(e) = self.accounts.get_mut(account) {
            e.failures = 0;
        }
    }

    pub fn addresses_tracked(&self) -> usize {
        self.addresses.len()
    }

    fn make_room(&mut self, now: Instant) {
        let cfg = self.cfg;
        self.addresses.retain(|_, e| !e.stale(now, &cfg));
        self.accounts.retain(|_, e| !e.stale(now, &cfg));
        if self.addresses.len() >= cfg.max_addresses {
            // Forget the oldest unlocked entry; locked ones stay locked.
            if let Some(k) = self
                .addresses
                .iter()
                .filter(|(_, e)| e.locked(now).is_none())
                .min_by_key(|(_, e)| e.window_start)
                .map(|(k, _)| *k)
            {
                self.addresses.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LockoutConfig {
        LockoutConfig {
            max_per_address: 5,
            max_per_account: 20,
            window: Duration::from_secs(600),
            lockout: Duration::from_secs(900),
            max_addresses: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_wrong_passwords_lock_an_address_out_for_the_lockout_time() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut l = Lockout::new(cfg());
        let a = ip("192.0.2.7");
        for i in 0..4 {
            assert_eq!(l.failure(a, Some("anna"), s(i)), Verdict::Allowed);
        }
        assert_eq!(
            l.failure(a, Some("anna"), s(4)),
            Verdict::Locked(s(4 + 900))
        );
        assert_eq!(l.check(a, "anna", s(5)), Verdict::Locked(s(904)));
        // Any account from that address, the right password included, is refused.
        assert_eq!(l.check(a, "boris", s(5)), Verdict::Locked(s(904)));
        // Another address may still log in to the account.
        assert_eq!(l.check(ip("192.0.2.8"), "anna", s(5)), Verdict::Allowed);
        assert_eq!(l.check(a, "anna", s(904)), Verdict::Allowed);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut l = Lockout::new(cfg());
        let a = ip("192.0.2.7");
        for i in 0..4 {
            l.failure(a, None, s(i * 200));
        }
        // 4 failures over 600 s, never 5 within a window.
        assert_eq!(l.failure(a, None, s(800)), Verdict::Allowed);
    }

    #[test]
    fn an_account_guessed_from_many_addresses_is_locked() {
        let t0 = Instant::now();
        let mut l = Lockout::new(cfg());
        for i in 0..19 {
            let a = ip(&format!("198.51.100.{i}"));
            assert_eq!(l.failure(a, Some("anna"), t0), Verdict::Allowed);
        }
        let v = l.failure(ip("198.51.100.99"), Some("anna"), t0);
        assert!(matches!(v, Verdict::Locked(_)));
        assert!(matches!(
            l.check(ip("203.0.113.1"), "anna", t0),
            Verdict::Locked(_)
        ));
        assert_eq!(l.check(ip("203.0.113.1"), "boris", t0), Verdict::Allowed);
        // Success resets only the account's count, after the lockout.
        let later = t0 + Duration::from_secs(901);
        l.success("anna");
        assert_eq!(l.check(ip("203.0.113.1"), "anna", later), Verdict::Allowed);
    }

    #[test]
    fn ipv6_counts_per_64_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = Lockout::new(cfg());
        for i in 0..5 {
            l.failure(ip(&format!("2001:db8:1:2::{i:x}")), None, t0);
        }
        assert!(matches!(
            l.check(ip("2001:db8:1:2:ffff::1"), "x", t0),
            Verdict::Locked(_)
        ));
        assert_eq!(l.check(ip("2001:db8:1:3::1"), "x", t0), Verdict::Allowed);
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        // A flood of addresses: the table stays bounded and the locked one stays locked.
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.failure(a, None, t0 + Duration::from_millis(i as u64));
        }
        assert!(l.addresses_tracked() <= 100);
        assert!(matches!(
            l.check(ip("2001:db8:1:2::1"), "x", t0 + Duration::from_secs(20)),
            Verdict::Locked(_)
        ));
    }
}
