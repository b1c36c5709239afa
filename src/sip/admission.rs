//! Admission: whether a message from a source address is looked at at all. A token
//! bucket per source IP (sustained rate and burst); sources listed as trusted (a
//! provider's or a proxy's addresses) are exempt.
//!
//! Sans-IO: time passed in. Memory stays bounded under a flood of spoofed sources.

use crate::config::Cidr;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Sustained messages per second per source.
    pub rate: f64,
    pub burst: u32,
    pub trusted: Vec<Cidr>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            rate: 1e9,
            burst: u32::MAX,
            trusted: Vec::new(),
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Sources tracked before full buckets are forgotten.
const MAX_SOURCES: usize = 100_000;

pub struct Admission {
    cfg: AdmissionConfig,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission {
            cfg,
            buckets: HashMap::new(),
        }
    }

    /// Whether a message from `ip` at `now` is admitted (and counted).
    pub fn admit(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.cfg.trusted.iter().any(|net| net.contains(ip)) {
            return true;
        }
        let (rate, burst) = (self.cfg.rate, self.cfg.burst as f64);
        if self.buckets.len() > MAX_SOURCES {
            // Under a spoofed-source flood keep memory bounded: forget full buckets.
            self.buckets
                .retain(|_, b| b.tokens + (now - b.last).as_secs_f64() * rate < burst);
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + (now - b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_trusted_sources_are_exempt() {
        let mut a = Admission::new(AdmissionConfig {
            rate: 10.0,
            burst: 5,
            trusted: vec![
                "10.0.0.1".parse().unwrap(),
                "198.51.100.0/24".parse().unwrap(),
            ],
        });
        let t0 = Instant::now();
        let flooder: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..100).filter(|_| a.admit(t0, flooder)).count();
        assert_eq!(admitted, 5);
        // 10 per second: one more every 100 ms.
        assert!(!a.admit(t0 + Duration::from_millis(50), flooder));
        assert!(a.admit(t0 + Duration::from_millis(150), flooder));
        assert!((0..1000).all(|_| a.admit(t0, "10.0.0.1".parse().unwrap())));
        assert!((0..1000).all(|_| a.admit(t0, "198.51.100.77".parse().unwrap())));
        // Another source has its own bucket.
        assert!(a.admit(t0, "192.0.2.2".parse().unwrap()));
    }
}
