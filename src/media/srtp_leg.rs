//! The SRTP step of one media leg: what `media::core::MediaLeg` does to a packet
//! before it leaves (protect) and after it arrives (authenticate, refuse replays,
//! decrypt), with the keys SDES negotiated (`MediaCommand::Start`). Everything above
//! it (jitter buffer, G.711, DTMF, recordings, the bridge) sees plain RTP.
//!
//! Sans-IO: time is the engine's millisecond count, passed in. Packets that fail are
//! dropped and counted in `SrtpDrops` (shared by every leg and read by `/metrics`),
//! with at most one log line per `LOG_INTERVAL_MS` for the whole server, naming the
//! call's number and never an address.

use super::srtp::{Protector, SrtpError, Unprotector, TAG_LEN};
use crate::call::{CallId, SrtpKeys};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Largest SRTP packet taken (the engine reads at most this much per datagram).
pub const MAX_SRTP_PACKET: usize = 1500;
const LOG_INTERVAL_MS: u64 = 10_000;

/// SRTP packets dropped since start, by reason.
#[derive(Debug, Default)]
pub struct SrtpDrops {
    auth_failed: AtomicU64,
    replayed: AtomicU64,
    malformed: AtomicU64,
    /// When the last log line went out (engine milliseconds + 1; 0 = never).
    logged_at: AtomicU64,
}

/// A snapshot of `SrtpDrops`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SrtpDropCounts {
    pub auth_failed: u64,
    pub replayed: u64,
    pub malformed: u64,
}

impl SrtpDrops {
    pub fn counts(&self) -> SrtpDropCounts {
        SrtpDropCounts {
            auth_failed: self.auth_failed.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
        }
    }

    fn count(&self, call: CallId, error: SrtpError, now_ms: u64) {
        match error {
            SrtpError::AuthFailed => &self.auth_failed,
            SrtpError::Replayed => &self.replayed,
            SrtpError::Malformed => &self.malformed,
        }
        .fetch_add(1, Relaxed);
        let last = self.logged_at.load(Relaxed);
        let due = last == 0 || now_ms + 1 >= last + LOG_INTERVAL_MS;
        // One thread wins the slot; the others stay quiet.
        if due
            && self
                .logged_at
                .compare_exchange(last, now_ms + 1, Relaxed, Relaxed)
                .is_ok()
        {
            let c = self.counts();
            tracing::warn!(
                call,
                auth_failed = c.auth_failed,
                replayed = c.replayed,
                malformed = c.malformed,
                "SRTP packet dropped ({error}); totals since start"
            );
        }
    }
}

/// One leg's SRTP contexts, both directions.
pub struct LegCrypto {
    keys: SrtpKeys,
    protector: Protector,
    unprotector: Unprotector,
    drops: Arc<SrtpDrops>,
}

impl LegCrypto {
    pub fn new(keys: &SrtpKeys, drops: Arc<SrtpDrops>) -> Self {
        LegCrypto {
            protector: Protector::new(keys.send.key(), keys.send.salt()),
            unprotector: Unprotector::new(keys.receive.key(), keys.receive.salt()),
            keys: keys.clone(),
            drops,
        }
    }

    /// The leg already runs on these keys (a re-INVITE that kept them must not reset
    /// the rollover counters and replay window).
    pub fn uses(&self, keys: &SrtpKeys) -> bool {
        self.keys == *keys
    }

    /// The RTP packet inside a received SRTP packet, decrypted into `out`; None when it
    /// is dropped (counted).
    pub fn open<'a>(
        &mut self,
        call: CallId,
        packet: &[u8],
        out: &'a mut [u8; MAX_SRTP_PACKET],
        now_ms: u64,
    ) -> Option<&'a [u8]> {
        let Some(buf) = out.get_mut(..packet.len()) else {
            self.drops.count(call, SrtpError::Malformed, now_ms);
            return None;
        };
        buf.copy_from_slice(packet);
        match self.unprotector.unprotect_in_place(buf) {
            Ok(n) => Some(&out[..n]),
            Err(e) => {
                self.drops.count(call, e, now_ms);
                None
            }
        }
    }

    /// Protects the RTP packet in `buf[..len]` in place (`buf` has room for the tag);
    /// returns the SRTP packet's length, or None if it is not an RTP packet.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Option<usize> {
        debug_assert!(buf.len() >= len + TAG_LEN);
        self.protector.protect_in_place(buf, len).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::SrtpMasterKey;

    fn keys(a: u8, b: u8) -> SrtpKeys {
        SrtpKeys {
            send: SrtpMasterKey::new([a; 16], [a; 14]),
            receive: SrtpMasterKey::new([b; 16], [b; 14]),
        }
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 1, 2, 3, 4];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0x55; 160]);
        p
    }

    #[test]
    fn two_legs_with_mirrored_keys_talk_and_bad_packets_are_counted() {
        let drops = Arc::new(SrtpDrops::default());
        let mut ours = LegCrypto::new(&keys(1, 2), drops.clone());
        let mut theirs = LegCrypto::new(&keys(2, 1), drops.clone());
        let mut buf = [0u8; 200];
        let plain = rtp(7);
        buf[..plain.len()].copy_from_slice(&plain);
        let n = ours.seal(&mut buf, plain.len()).unwrap();
        assert_eq!(n, plain.len() + TAG_LEN);
        assert_ne!(&buf[12..172], &plain[12..], "payload encrypted");
        let mut out = [0u8; MAX_SRTP_PACKET];
        assert_eq!(theirs.open(9, &buf[..n], &mut out, 0), Some(&plain[..]));
        // The same packet again, a forged tag, garbage and an oversized datagram.
        assert_eq!(theirs.open(9, &buf[..n], &mut out, 1), None);
        let mut forged = buf[..n].to_vec();
        forged[n - 1] ^= 1;
        forged[3] ^= 0x40; // another sequence number, so it is not a replay
        assert_eq!(theirs.open(9, &forged, &mut out, 2), None);
        assert_eq!(theirs.open(9, &[0x80; 5], &mut out, 3), None);
        assert_eq!(theirs.open(9, &[0x80; 3000], &mut out, 4), None);
        assert_eq!(
            drops.counts(),
            SrtpDropCounts {
                auth_failed: 1,
                replayed: 1,
                malformed: 2
            }
        );
        // A later good packet still goes through: the call goes on.
        let plain = rtp(8);
        buf[..plain.len()].copy_from_slice(&plain);
        let n = ours.seal(&mut buf, plain.len()).unwrap();
        assert_eq!(theirs.open(9, &buf[..n], &mut out, 5), Some(&plain[..]));
        assert!(ours.uses(&keys(1, 2)) && !ours.uses(&keys(1, 3)));
    }
}
