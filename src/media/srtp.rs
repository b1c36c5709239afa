//! SRTP (RFC 3711) for one direction of one RTP stream: AES_CM_128_HMAC_SHA1_80, the
//! suite every SDES phone offers. Sans-IO: keys come from SDES (RFC 4568) lines, packets
//! in, packets out.
//!
//! Written by hand on the RustCrypto primitives (`aes` with AES-NI, `ctr`, `hmac`,
//! `sha1`): the protocol around them is key derivation, the rollover counter and a
//! replay window, about two hundred lines; the crates that offer all of it bring their
//! own packet and session types (webrtc-srtp) or C code (libsrtp2 bindings). Checked
//! against the key-derivation vectors of RFC 3711 appendix B.3 and against packets
//! protected by libsrtp 2. Cost per packet: `examples/bench_srtp.rs`.
//!
//! Used per leg by `media::srtp_leg` (the media core's protect-on-send and
//! unprotect-on-receive step); the SDES negotiation that yields the keys is
//! `sdp::sdes`, and `rtp.srtp` says when (docs/trunks.md).

use aes::cipher::{InnerIvInit, KeyInit, KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;
type HmacSha1 = Hmac<sha1::Sha1>;

pub const MASTER_KEY_LEN: usize = 16;
pub const MASTER_SALT_LEN: usize = 14;
/// Length of the authentication tag of `AES_CM_128_HMAC_SHA1_80`.
pub const TAG_LEN: usize = 10;
const REPLAY_WINDOW: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// Shorter than an RTP header plus the tag, or not RTP version 2.
    Malformed,
    /// The authentication tag does not match: forged, corrupt, or the wrong key.
    AuthFailed,
    /// Seen before, or older than the replay window.
    Replayed,
}

impl std::fmt::Display for SrtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SrtpError::Malformed => "not an SRTP packet",
            SrtpError::AuthFailed => "authentication tag does not match",
            SrtpError::Replayed => "replayed or too old",
        })
    }
}

/// Session keys derived from a master key and salt (key derivation rate 0), with the
/// AES key schedule and the keyed HMAC state computed once.
#[derive(Clone)]
struct SessionKeys {
    cipher_key: [u8; 16],
    salt: [u8; 14],
    auth_key: [u8; 20],
    cipher: aes::Aes128,
    mac: HmacSha1,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.cipher_key.zeroize();
        self.salt.zeroize();
        self.auth_key.zeroize();
    }
}

/// RFC 3711 §4.3.1 with kdr = 0: AES-CM keystream under the master key, at an IV of
/// the master salt XOR the label in byte 7.
fn derive(master_key: &[u8; 16], master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    Aes128Ctr::new(master_key.into(), &iv.into()).apply_keystream(out);
}

impl SessionKeys {
    fn rtp(master_key: &[u8; 16], master_salt: &[u8; 14]) -> Self {
        let mut cipher_key = [0u8; 16];
        let mut salt = [0u8; 14];
        let mut auth_key = [0u8; 20];
        derive(master_key, master_salt, 0, &mut cipher_key);
        derive(master_key, master_salt, 1, &mut auth_key);
        derive(master_key, master_salt, 2, &mut salt);
        SessionKeys {
            cipher: aes::Aes128::new(&cipher_key.into()),
            mac: <HmacSha1 as Mac>::new_from_slice(&auth_key).expect("any key length"),
            cipher_key,
            salt,
            auth_key,
        }
    }

    /// Encrypts or decrypts `payload` of packet index `index` (AES-CM, §4.1.1).
    fn crypt(&self, ssrc: u32, index: u64, payload: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        let core = ctr::CtrCore::<aes::Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
            self.cipher.clone(),
            &iv.into(),
        );
        Aes128Ctr::from_core(core).apply_keystream(payload);
    }

    fn tag(&self, authenticated: &[u8], roc: u32) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        mac.update(&roc.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

/// Where the RTP payload starts (after CSRCs and a header extension), if the packet is
/// long enough to hold it.
fn payload_offset(packet: &[u8]) -> Option<usize> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let mut off = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let words = u16::from_be_bytes([*packet.get(off + 2)?, *packet.get(off + 3)?]);
        off += 4 + 4 * usize::from(words);
    }
    (off <= packet.len()).then_some(off)
}

fn seq_ssrc(packet: &[u8]) -> (u16, u32) {
    (
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    )
}

/// The sending side of one stream.
pub struct Protector {
    keys: SessionKeys,
    roc: u32,
    last_seq: Option<u16>,
}

impl Protector {
    pub fn new(master_key: &[u8; 16], master_salt: &[u8; 14]) -> Self {
        Protector {
            keys: SessionKeys::rtp(master_key, master_salt),
            roc: 0,
            last_seq: None,
        }
    }

    /// Encrypts an RTP packet in place and appends the tag.
    pub fn protect(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let len = packet.len();
        packet.resize(len + TAG_LEN, 0);
        match self.protect_in_place(packet, len) {
            Ok(_) => Ok(()),
            Err(e) => {
                packet.truncate(len);
                Err(e)
            }
        }
    }

    /// Encrypts the RTP packet in `buf[..len]` and writes the tag after it; returns the
    /// SRTP packet's length. `buf` must have room for the tag.
    pub fn protect_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if buf.len() < len + TAG_LEN {
            return Err(SrtpError::Malformed);
        }
        let packet = &mut buf[..len];
        let off = payload_offset(packet).ok_or(SrtpError::Malformed)?;
        let (seq, ssrc) = seq_ssrc(packet);
        if let Some(last) = self.last_seq {
            if seq < last && last - seq > 0x8000 {
                self.roc = self.roc.wrapping_add(1);
            }
        }
        self.last_seq = Some(seq);
        let index = (u64::from(self.roc) << 16) | u64::from(seq);
        self.keys.crypt(ssrc, index, &mut packet[off..]);
        let tag = self.keys.tag(packet, self.roc);
        buf[len..len + TAG_LEN].copy_from_slice(&tag);
        Ok(len + TAG_LEN)
    }
}

/// The receiving side of one stream: authenticates, refuses replays, decrypts.
pub struct Unprotector {
    keys: SessionKeys,
    /// Highest index accepted so far, and which of the 64 before it were seen.
    highest: Option<u64>,
    window: u64,
}

impl Unprotector {
    pub fn new(master_key: &[u8; 16], master_salt: &[u8; 14]) -> Self {
        Unprotector {
            keys: SessionKeys::rtp(master_key, master_salt),
            highest: None,
            window: 0,
        }
    }

    /// The packet's index guessed from its sequence number (RFC 3711 §3.3.1).
    fn estimate(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            return u64::from(seq);
        };
        let roc = highest >> 16;
        let s_l = (highest & 0xffff) as u16;
        let v = if s_l < 0x8000 {
            if seq > s_l && seq - s_l > 0x8000 {
                roc.wrapping_sub(1)
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq {
            roc + 1
        } else {
            roc
        };
        (v << 16) | u64::from(seq)
    }

    /// Checks and decrypts an SRTP packet; returns the RTP packet (tag removed).
    pub fn unprotect(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut out = packet.to_vec();
        let len = self.unprotect_in_place(&mut out)?;
        out.truncate(len);
        Ok(out)
    }

    /// Checks and decrypts the SRTP packet in `packet` in place; returns the length of
    /// the RTP packet at its start (the tag is left behind it). Nothing is changed,
    /// and the replay window stays as it was, when the packet is refused.
    pub fn unprotect_in_place(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        if packet.len() < 12 + TAG_LEN {
            return Err(SrtpError::Malformed);
        }
        let (body, tag) = packet.split_at_mut(packet.len() - TAG_LEN);
        let body_len = body.len();
        let off = payload_offset(body).ok_or(SrtpError::Malformed)?;
        let (seq, ssrc) = seq_ssrc(body);
        let index = self.estimate(seq);
        if let Some(highest) = self.highest {
            if index <= highest {
                let age = highest - index;
                if age >= REPLAY_WINDOW || self.window & (1 << age) != 0 {
                    return Err(SrtpError::Replayed);
                }
            }
        }
        let expected = self.keys.tag(body, (index >> 16) as u32);
        use subtle::ConstantTimeEq;
        if !bool::from(expected.ct_eq(&*tag)) {
            return Err(SrtpError::AuthFailed);
        }
        match self.highest {
            Some(highest) if index <= highest => self.window |= 1 << (highest - index),
            Some(highest) => {
                let shift = index - highest;
                self.window = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    self.window << shift
                };
                self.window |= 1;
                self.highest = Some(index);
            }
            None => {
                self.window = 1;
                self.highest = Some(index);
            }
        }
        self.keys.crypt(ssrc, index, &mut body[off..]);
        Ok(body_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_derivation_matches_rfc_3711_appendix_b3() {
        let key: [u8; 16] = hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap();
        let salt: [u8; 14] = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        let k = SessionKeys::rtp(&key, &salt);
        assert_eq!(
            k.cipher_key.to_vec(),
            hex("C61E7A93744F39EE10734AFE3FF7A087")
        );
        assert_eq!(k.salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        assert_eq!(
            k.auth_key.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    /// Packets protected by libsrtp 2 (through pylibsrtp) with master key and salt
    /// 01 02 … 1e: one with a 160-byte payload, then three across the rollover.
    const LIBSRTP_P1: &str = "80001234000000a0deadbeefe03550d184e2c0f6556704cf681491110b0c8bd6fd48b5db793e299e539f3927c7329e3127de80dc0d794cd2785c0d74895da21665d2abc9f7fc75ed2321c6045b03ad3cc03b26e4cbd6538096a3afbc2b60ef7c5f43df392e571ece23f597053086a7becaa65aa9797db670502be7615643436cc43a056ef568980999301e0ab66ddb02722f87ab6ce27832fda4b60d22e99bd891a8bb0a45699ac46ea39ff240c8916bea592d283058";
    const LIBSRTP_ROLLOVER: [(u16, &str); 3] = [
        (
            65534,
            "8000fffe009ffec0deadbeef6bececfa40abc8a6e3450f86eb1d295e5313e591e25eeee728844a66cf26",
        ),
        (
            65535,
            "8000ffff009fff60deadbeefe2736eb06c63f8798858454460a65da153d63e2bc43db901dea1245664c9",
        ),
        (
            0,
            "8000000000000000deadbeef0056e15cba08e636e88c50c826b32f1926624b4e9bf0a7c4b1dbbdd93e12",
        ),
    ];

    fn master() -> ([u8; 16], [u8; 14]) {
        let all: Vec<u8> = (1..=30).collect();
        (all[..16].try_into().unwrap(), all[16..].try_into().unwrap())
    }

    fn rtp(seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0xdeadbeefu32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn protect_and_unprotect_agree_with_libsrtp() {
        let (key, salt) = master();
        let payload: Vec<u8> = (0..160u32).map(|i| (i * 7) as u8).collect();
        let plain = rtp(0x1234, 160, &payload);
        let mut p = plain.clone();
        Protector::new(&key, &salt).protect(&mut p).unwrap();
        assert_eq!(p, hex(LIBSRTP_P1));
        assert_eq!(Unprotector::new(&key, &salt).unprotect(&p).unwrap(), plain);
    }

    #[test]
    fn the_rollover_counter_follows_libsrtp_across_the_wrap() {
        let (key, salt) = master();
        let mut tx = Protector::new(&key, &salt);
        let mut rx = Unprotector::new(&key, &salt);
        for (seq, expected) in LIBSRTP_ROLLOVER {
            let plain = rtp(seq, u32::from(seq).wrapping_mul(160), &[0; 20]);
            let mut p = plain.clone();
            tx.protect(&mut p).unwrap();
            assert_eq!(p, hex(expected), "seq {seq}");
            assert_eq!(rx.unprotect(&p).unwrap(), plain, "seq {seq}");
        }
    }

    #[test]
    fn wrong_tags_wrong_keys_replays_and_short_packets_are_refused() {
        let (key, salt) = master();
        let p = hex(LIBSRTP_P1);
        let mut rx = Unprotector::new(&key, &salt);
        let mut forged = p.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(rx.unprotect(&forged), Err(SrtpError::AuthFailed));
        let mut flipped = p.clone();
        flipped[20] ^= 0x80;
        assert_eq!(rx.unprotect(&flipped), Err(SrtpError::AuthFailed));
        let other_key = [9u8; 16];
        assert_eq!(
            Unprotector::new(&other_key, &salt).unprotect(&p),
            Err(SrtpError::AuthFailed)
        );
        assert!(rx.unprotect(&p).is_ok());
        assert_eq!(rx.unprotect(&p), Err(SrtpError::Replayed));
        assert_eq!(rx.unprotect(&p[..15]), Err(SrtpError::Malformed));
        assert_eq!(rx.unprotect(&[0u8; 40]), Err(SrtpError::Malformed));
    }

    #[test]
    fn packets_out_of_order_inside_the_window_are_accepted_once() {
        let (key, salt) = master();
        let mut tx = Protector::new(&key, &salt);
        let mut rx = Unprotector::new(&key, &salt);
        let sent: Vec<Vec<u8>> = (100..200u16)
            .map(|seq| {
                let mut p = rtp(seq, 0, &[1, 2, 3]);
                tx.protect(&mut p).unwrap();
                p
            })
            .collect();
        assert!(rx.unprotect(&sent[99]).is_ok());
        assert!(
            rx.unprotect(&sent[50]).is_ok(),
            "49 behind: inside the window"
        );
        assert_eq!(rx.unprotect(&sent[50]), Err(SrtpError::Replayed));
        assert_eq!(rx.unprotect(&sent[10]), Err(SrtpError::Replayed), "too old");
    }

    #[test]
    fn sdes_inline_keys_are_parsed_and_bad_ones_refused() {
        // 30 bytes 01..1e in base64.
        use crate::sdp::sdes::parse_inline;
        let k = parse_inline("inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e").unwrap();
        assert_eq!((*k.key(), *k.salt()), master());
        for bad in [
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e",
            "inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e|2^20|1:4",
            "inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e|1:4",
            "inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e|2^20",
            "inline:AQID",
            "inline:!!!!BAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e",
            "inline:",
        ] {
            assert!(parse_inline(bad).is_err(), "{bad}");
        }
    }
}
