//! Server-side console sessions: a random token in an HttpOnly cookie names a session
//! held here; the session knows its account, its CSRF token and the account's
//! password generation, and ends after idle time, at its maximum age, at logout, or
//! when the account's password changes. Sans-IO: time and randomness are arguments.
//!
//! Only a SHA-256 of each token is kept, so the table itself holds nothing a cookie
//! could be rebuilt from.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A listen counted again in the audit log only after this long.
const LISTEN_AUDIT_INTERVAL: Duration = Duration::from_secs(600);
/// Recordings remembered per session for that purpose.
const LISTENS_REMEMBERED: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub idle: Duration,
    pub max_age: Duration,
    pub per_account: usize,
    pub total: usize,
}

#[derive(Debug, Clone)]
pub struct Session {
    /// The account's name (pseudonym).
    pub account: String,
    /// The account's `password_changed_at` at login: a newer one voids the session.
    pub password_generation: String,
    /// Sent with every state-changing request.
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
    listened: HashMap<i64, Instant>,
}

impl Session {
    /// Whether a playback of `recording` is a new listen for the audit log: the first
    /// one in this session, or the first for a while (a player's range requests and
    /// replays do not each count).
    pub fn new_listen(&mut self, recording: i64, now: Instant) -> bool {
        match self.listened.get(&recording) {
            Some(at) if now.saturating_duration_since(*at) < LISTEN_AUDIT_INTERVAL => false,
            _ => {
                if self.listened.len() >= LISTENS_REMEMBERED {
                    if let Some(oldest) = self
                        .listened
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(id, _)| *id)
                    {
                        self.listened.remove(&oldest);
                    }
                }
                self.listened.insert(recording, now);
                true
            }
        }
    }
}

type Key = [u8; 32];

fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

fn random_hex(rng: &mut dyn RngCore) -> String {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

#[derive(Debug)]
pub struct Sessions {
    limits: SessionLimits,
    by_key: HashMap<Key, Session>,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            by_key: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_seen) >= self.limits.idle
            || now.saturating_duration_since(s.created) >= self.limits.max_age
    }

    /// Opens a session; returns its token (for the cookie). The account's oldest
    /// sessions beyond its limit end, and the oldest of all beyond the total.
    pub fn create(
        &mut self,
        account: &str,
        password_generation: &str,
        now: Instant,
        rng: &mut dyn RngCore,
    ) -> String {
        self.sweep(now);
        let mine: Vec<(Key, Instant)> = self
            .by_key
            .iter()
            .filter(|(_, s)| s.account == account)
            .map(|(k, s)| (*k, s.created))
            .collect();
        if mine.len() >= self.limits.per_account {
            let mut mine = mine;
            mine.sort_by_key(|(_, created)| *created);
            for (k, _) in &mine[..=mine.len() - self.limits.per_account] {
                self.by_key.remove(k);
            }
        }
        while self.by_key.len() >= self.limits.total {
            let Some(oldest) = self
                .by_key
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.by_key.remove(&oldest);
        }
        let token = random_hex(rng);
        self.by_key.insert(
            key(&token),
            Session {
                account: account.to_string(),
                password_generation: password_generation.to_string(),
                csrf: random_hex(rng),
                created: now,
                last_seen: now,
                listened: HashMap::new(),
            },
        );
        token
    }

    /// The live session of `token`, marked as used now; an expired one is removed.
    pub fn touch(&mut self, token: &str, now: Instant) -> Option<&mut Session> {
        let k = key(token);
        let expired = self.expired(self.by_key.get(&k)?, now);
        if expired {
            self.by_key.remove(&k);
            return None;
        }
        let s = self.by_key.get_mut(&k)?;
        s.last_seen = now;
        Some(s)
    }

    pub fn remove(&mut self, token: &str) {
        self.by_key.remove(&key(token));
    }

    /// Ends every session of an account (password changed, account removed).
    pub fn remove_account(&mut self, account: &str) {
        self.by_key.retain(|_, s| s.account != account);
    }

    pub fn sweep(&mut self, now: Instant) {
        let limits = self.limits;
        self.by_key.retain(|_, s| {
            now.saturating_duration_since(s.last_seen) < limits.idle
                && now.saturating_duration_since(s.created) < limits.max_age
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn limits() -> SessionLimits {
        SessionLimits {
            idle: Duration::from_secs(1800),
            max_age: Duration::from_secs(43_200),
            per_account: 3,
            total: 5,
        }
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_maximum_age() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = Sessions::new(limits());
        let token = s.create("anna", "gen1", t0, &mut rng);
        assert_eq!(token.len(), 64);
        let csrf = s.touch(&token, t0).unwrap().csrf.clone();
        assert_eq!(csrf.len(), 64);
        assert_ne!(csrf, token);
        assert!(s.touch("0".repeat(64).as_str(), t0).is_none());
        // Used every 29 minutes: alive for 12 hours, then gone.
        let mut t = t0;
        while t + Duration::from_secs(29 * 60) < t0 + Duration::from_secs(43_200) {
            t += Duration::from_secs(29 * 60);
            assert!(s.touch(&token, t).is_some(), "at {:?}", t - t0);
        }
        assert!(s.touch(&token, t0 + Duration::from_secs(43_200)).is_none());
        assert!(s.is_empty(), "the expired session is removed");
        // Idle for 30 minutes: gone.
        let token = s.create("anna", "gen1", t0, &mut rng);
        assert!(s.touch(&token, t0 + Duration::from_secs(1799)).is_some());
        assert!(s
            .touch(&token, t0 + Duration::from_secs(1799 + 1800))
            .is_none());
    }

    #[test]
    fn limits_per_account_and_in_total() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let t0 = Instant::now();
        let at = |n: u64| t0 + Duration::from_secs(n);
        let mut s = Sessions::new(limits());
        let anna: Vec<String> = (0..4)
            .map(|i| s.create("anna", "g", at(i), &mut rng))
            .collect();
        assert!(s.touch(&anna[0], at(10)).is_none(), "the oldest ended");
        for t in &anna[1..] {
            assert!(s.touch(t, at(10)).is_some());
        }
        let boris: Vec<String> = (0..3)
            .map(|i| s.create("boris", "g", at(20 + i), &mut rng))
            .collect();
        assert_eq!(s.len(), 5);
        // The least recently used session (one of Anna's) made room for Boris's third.
        let anna_alive = anna[1..]
            .iter()
            .filter(|t| s.touch(t, at(30)).is_some())
            .count();
        assert_eq!(anna_alive, 2);
        assert!(boris.iter().all(|b| s.touch(b, at(30)).is_some()));
        s.remove_account("boris");
        assert!(boris.iter().all(|b| s.touch(b, at(31)).is_none()));
        let t = s.create("carl", "g", at(40), &mut rng);
        s.remove(&t);
        assert!(s.touch(&t, at(41)).is_none());
    }

    #[test]
    fn listens_are_audited_once_per_interval() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut s = Sessions::new(limits());
        let token = s.create("anna", "g", t0, &mut rng);
        let session = s.touch(&token, t0).unwrap();
        assert!(session.new_listen(7, t0));
        assert!(!session.new_listen(7, t0 + Duration::from_secs(5)));
        assert!(session.new_listen(8, t0 + Duration::from_secs(5)));
        assert!(session.new_listen(7, t0 + Duration::from_secs(601)));
        for id in 100..1000 {
            session.new_listen(id, t0 + Duration::from_secs(700));
        }
        assert!(session.listened.len() <= LISTENS_REMEMBERED);
    }
}
