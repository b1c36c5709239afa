//! Types every layer shares: call identities, transport paths, codecs, digits,
//! recordings, call events, and the commands and events that pass between the SIP
//! endpoint, the media layer, the hosts and the store.
//!
//! Owns data only. Must not import any other module of the crate: everything above
//! imports this, so that `sip`, `media`, `store`, `ivr` and `queue` never need each
//! other for a type.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// A call leg, numbered by the endpoint (inbound callers and outbound offers alike).
pub type CallId = u64;

/// How a message reached us, and so how to answer: a UDP socket (by index) or a
/// stream connection (by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    Udp(usize),
    Tcp(u64),
    /// A TLS connection (ids are shared with TCP: one numbering for all streams).
    Tls(u64),
}

impl Link {
    pub fn reliable(self) -> bool {
        self.connection().is_some()
    }

    /// The stream connection's id (TCP or TLS).
    pub fn connection(self) -> Option<u64> {
        match self {
            Link::Udp(_) => None,
            Link::Tcp(id) | Link::Tls(id) => Some(id),
        }
    }

    /// Whether signalling on this link is encrypted (SDES keys may cross it).
    pub fn secure(self) -> bool {
        matches!(self, Link::Tls(_))
    }

    /// The transport token of a Via header.
    pub fn via_transport(self) -> &'static str {
        match self {
            Link::Udp(_) => "UDP",
            Link::Tcp(_) => "TCP",
            Link::Tls(_) => "TLS",
        }
    }

    /// The `transport` URI parameter for a Contact on this link ("" for UDP).
    pub fn uri_transport(self) -> &'static str {
        match self {
            Link::Udp(_) => "",
            Link::Tcp(_) => ";transport=tcp",
            Link::Tls(_) => ";transport=tls",
        }
    }
}

/// A destination: which socket or connection, the remote address, and our local
/// address on it (for Via and Contact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub link: Link,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    CallerBye,
    OurBye,
    Cancel,
    NoAck,
    MaxDuration,
    RtpTimeout,
    RejectedBusy,
    /// Refused while the media clock was overloaded.
    RejectedOverload,
    RejectedCodec,
    Rejected(u16),
    Timeout,
    Shutdown,
    Error,
}

impl EndReason {
    pub fn as_str(&self) -> String {
        match self {
            EndReason::CallerBye => "caller-bye".into(),
            EndReason::OurBye => "our-bye".into(),
            EndReason::Cancel => "cancel".into(),
            EndReason::NoAck => "timeout-no-ack".into(),
            EndReason::MaxDuration => "max-duration".into(),
            EndReason::RtpTimeout => "rtp-timeout".into(),
            EndReason::RejectedBusy => "rejected-busy".into(),
            EndReason::RejectedOverload => "rejected-overload".into(),
            EndReason::RejectedCodec => "rejected-codec".into(),
            EndReason::Rejected(code) => format!("rejected-{code}"),
            EndReason::Timeout => "timeout".into(),
            EndReason::Shutdown => "shutdown".into(),
            EndReason::Error => "error".into(),
        }
    }
}

/// Facts about calls, for the hosts, storage and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    Started {
        call: CallId,
        sip_call_id: String,
        /// The caller's identity after the caller-ID policy was applied.
        from: Option<String>,
        to: String,
        remote: SocketAddr,
        transport: &'static str,
        direction: Direction,
        at: SystemTime,
    },
    Answered {
        call: CallId,
        codec: Codec,
        at: SystemTime,
    },
    Ended {
        call: CallId,
        reason: EndReason,
        at: SystemTime,
    },
}

impl CallEvent {
    pub fn call(&self) -> CallId {
        match self {
            CallEvent::Started { call, .. }
            | CallEvent::Answered { call, .. }
            | CallEvent::Ended { call, .. } => *call,
        }
    }
}

/// What the SIP endpoint asks of a call's media.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaCommand {
    /// Reserve an RTP port for the call; answered with `MediaEvent::Allocated` /
    /// `MediaEvent::Failed`.
    Allocate {
        call: CallId,
        local_ip: IpAddr,
    },
    /// Start or update the stream (also on re-INVITE).
    Start {
        call: CallId,
        remote: Option<SocketAddr>,
        /// Where the call's SIP came from: media from this address is the caller's
        /// too (a NATed phone signals a private address but sends from its public one).
        signal_ip: IpAddr,
        codec: Codec,
        telephone_event_pt: Option<u8>,
        send: bool,
        /// Audio may go to `remote` at once: it is the address the call's SIP came
        /// from, or that source is trusted. Otherwise nothing is sent until RTP has
        /// arrived from the peer (no RTP to an address that never asked for it).
        confirmed: bool,
        /// SRTP keys negotiated by SDES; None for plain RTP.
        srtp: Option<SrtpKeys>,
    },
    Stop {
        call: CallId,
    },
}

/// The SDES master key and salt of one direction of an SRTP stream
/// (`AES_CM_128_HMAC_SHA1_80`: 16 + 14 bytes). Wiped when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpMasterKey {
    key: [u8; 16],
    salt: [u8; 14],
}

impl SrtpMasterKey {
    pub fn new(key: [u8; 16], salt: [u8; 14]) -> Self {
        SrtpMasterKey { key, salt }
    }

    /// Key then salt, as an SDES `inline:` parameter carries them.
    pub fn from_concatenated(bytes: &[u8; 30]) -> Self {
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.copy_from_slice(&bytes[..16]);
        salt.copy_from_slice(&bytes[16..]);
        SrtpMasterKey { key, salt }
    }

    pub fn key(&self) -> &[u8; 16] {
        &self.key
    }

    pub fn salt(&self) -> &[u8; 14] {
        &self.salt
    }
}

impl std::fmt::Debug for SrtpMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpMasterKey(..)")
    }
}

impl Drop for SrtpMasterKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key.zeroize();
        self.salt.zeroize();
    }
}

/// The SRTP keys of one leg: ours protects what we send, the peer's checks and
/// decrypts what we receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub send: SrtpMasterKey,
    pub receive: SrtpMasterKey,
}

/// A G.711 variant negotiated for a call leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    /// Static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// Encoding name as it appears in an SDP `a=rtpmap` line.
    pub fn sdp_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn from_sdp_name(name: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }

    /// The encoded byte for digital silence (the encoding of sample 0; G.711 tables).
    pub fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcmu => 0xFF,
            Codec::Pcma => 0xD5,
        }
    }
}

/// How a digit reached us; the call logic may prefer one source when a peer sends
/// the same key press through several paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigitSource {
    Rfc4733,
    Inband,
    SipInfo,
}

impl DigitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DigitSource::Rfc4733 => "rfc4733",
            DigitSource::Inband => "inband",
            DigitSource::SipInfo => "sipinfo",
        }
    }
}

/// One key press, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigitEvent {
    /// One of `0-9`, `*`, `#`, `A-D`.
    pub digit: char,
    pub source: DigitSource,
    /// When the key press began, on the caller's millisecond timeline.
    pub at_ms: u64,
    /// Duration known when the event was reported. Digits are reported as soon as
    /// they are recognised (so a caller can barge in), so this is a lower bound
    /// for in-band and RFC 4733 digits.
    pub duration_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// Voicemail: the caller only.
    Mono,
    /// Conversation: caller on the left, operator on the right.
    Stereo,
}

impl Channels {
    pub fn count(self) -> u16 {
        match self {
            Channels::Mono => 1,
            Channels::Stereo => 2,
        }
    }
}

/// A completed recording, durable on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingInfo {
    pub path: PathBuf,
    pub channels: Channels,
    /// Samples per channel.
    pub samples: u64,
    pub duration_ms: u64,
    pub size_bytes: u64,
    /// SHA-256 of the whole file as it is on disk.
    pub sha256_hex: String,
}

/// Why a voice message stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    FinishKey,
    Silence,
    MaxLength,
    HangUp,
    NoSpeech,
}

/// What the media layer reports to the hosts.
#[derive(Debug)]
pub enum MediaEvent {
    Allocated {
        call: CallId,
        port: u16,
    },
    Failed {
        call: CallId,
    },
    RtpTimeout {
        call: CallId,
    },
    Digit {
        call: CallId,
        digit: DigitEvent,
    },
    PlayFinished {
        call: CallId,
        token: u64,
    },
    /// A voice message ended; `result` arrives once the file is durable (or failed).
    RecordingStopped {
        call: CallId,
        reason: StopReason,
        result: Result<RecordingInfo, String>,
    },
    /// The stereo recording of a bridge (caller left, operator right) is finished and
    /// durable, or failed. Exactly once per bridge that asked for a recording, before
    /// its `BridgeEnded`.
    ConversationRecorded {
        caller: CallId,
        operator: CallId,
        result: Result<RecordingInfo, String>,
    },
    /// A bridge ended (`Unbridge`, a leg stopped or timed out) or could not start.
    /// Exactly once per `Bridge` command.
    BridgeEnded {
        caller: CallId,
        operator: CallId,
    },
}

/// Wall-clock time derived from the monotonic `now` every sans-IO core is given: the
/// shell anchors it (`anchor(now, SystemTime::now())`) and re-anchors it as often as
/// it likes; simulated time anchors it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    mono: Instant,
    wall: SystemTime,
}

impl WallClock {
    pub fn anchor(mono: Instant, wall: SystemTime) -> Self {
        WallClock { mono, wall }
    }

    /// The wall-clock time at `now`.
    pub fn at(&self, now: Instant) -> SystemTime {
        match now.checked_duration_since(self.mono) {
            Some(ahead) => self.wall + ahead,
            None => self
                .wall
                .checked_sub(self.mono.duration_since(now))
                .unwrap_or(self.wall),
        }
    }

    /// Seconds since the Unix epoch at `now` (for day boundaries in file names).
    pub fn unix_at(&self, now: Instant) -> Duration {
        self.at(now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_follows_the_monotonic_clock_both_ways() {
        let mono = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = WallClock::anchor(mono + Duration::from_secs(10), wall);
        assert_eq!(
            c.at(mono + Duration::from_secs(15)),
            wall + Duration::from_secs(5)
        );
        assert_eq!(c.at(mono), wall - Duration::from_secs(10));
        assert_eq!(
            c.unix_at(mono + Duration::from_secs(10)).as_secs(),
            1_000_000
        );
    }
}
