//! Service configuration: reading `hotline.toml`, applying `--set` overrides, and
//! checking every value before anything starts.
//!
//! Owns the shape and the validation of the configuration. It must not open sockets,
//! files other than the config file, or the database: callers decide what to start.
//! Every error names the file, the key and the problem, so an administrator can fix it
//! from the one line printed.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub mod tls;
pub mod trunks;
pub use trunks::{Cidr, SipTarget, SipTransport, TrunkConfig};

/// The defaults shipped in `config/hotline.toml`, used when no config file exists.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../config/hotline.toml");
pub const DEFAULT_PATH: &str = "config/hotline.toml";
/// Digest algorithms an operator challenge may offer (RFC 8760 names; the registrar
/// implements exactly these, which a test of `sip::digest` checks).
pub const DIGEST_ALGORITHMS: &[&str] = &["MD5", "SHA-256"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub storage: StorageConfig,
    pub ivr: IvrConfig,
    pub prompts: PromptsConfig,
    pub limits: LimitsConfig,
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub operators: OperatorsConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// SIP providers (`[[trunks]]`), see `trunks`.
    #[serde(default)]
    pub trunks: Vec<TrunkConfig>,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The TLS certificate of the SIP listener and the console, and the authorities
    /// for trunks (`[tls]`).
    #[serde(default)]
    pub tls: tls::TlsConfig,
    /// Where the configuration came from, for error messages.
    #[serde(skip)]
    pub source: String,
}

/// Operator accounts, their registrations and their phones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorsConfig {
    /// Digest realm; stored HA1s depend on it, so changing it needs `operator passwd`.
    pub realm: String,
    /// Feature codes an operator dials from their phone.
    pub feature_available: String,
    pub feature_paused: String,
    /// A phone that registers makes its operator available (else paused until `*1`).
    pub available_on_register: bool,
    pub min_expires_s: u32,
    pub max_expires_s: u32,
    /// Wrong passwords from one source within the window that lock the source out.
    pub max_auth_failures: u32,
    pub auth_failure_window_s: u64,
    pub lockout_s: u64,
    pub nonce_lifetime_s: u64,
    /// Digest algorithms challenged with, in this order ("MD5", "SHA-256").
    pub digest_algorithms: Vec<String>,
}

impl Default for OperatorsConfig {
    fn default() -> Self {
        OperatorsConfig {
            realm: "hotline".into(),
            feature_available: "*1".into(),
            feature_paused: "*2".into(),
            available_on_register: true,
            min_expires_s: 60,
            max_expires_s: 300,
            max_auth_failures: 5,
            auth_failure_window_s: 600,
            lockout_s: 900,
            nonce_lifetime_s: 300,
            digest_algorithms: vec!["MD5".into()],
        }
    }
}

/// The operators' web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// "ADDR:PORT" the console listens on; "" disables it.
    pub listen: String,
    /// Serve HTTPS with the certificate and key of `[tls]`.
    pub tls: bool,
    /// A session unused this long ends; none lives longer than `session_max_s`.
    pub session_idle_s: u64,
    pub session_max_s: u64,
    /// Sessions one account may hold at once (the oldest ends first).
    pub max_sessions_per_account: usize,
    /// Wrong passwords from one address, and for one account, within the window
    /// that lock web logins out for `lockout_s`.
    pub max_login_failures_per_address: u32,
    pub max_login_failures_per_account: u32,
    pub login_failure_window_s: u64,
    pub lockout_s: u64,
    /// Language of new accounts and of the login page: "uk" or "en".
    pub default_language: String,
    /// IANA time zone for dates on the pages, day counters and date filters
    /// ("" = the system's).
    pub time_zone: String,
    /// Reverse proxies whose X-Forwarded-For names the client (for lockout by address).
    pub trusted_proxies: Vec<IpAddr>,
    /// Shortest interval between two live board updates sent to browsers.
    pub board_interval_ms: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: "127.0.0.1:8080".into(),
            tls: false,
            session_idle_s: 1800,
            session_max_s: 43_200,
            max_sessions_per_account: 10,
            max_login_failures_per_address: 5,
            max_login_failures_per_account: 20,
            login_failure_window_s: 600,
            lockout_s: 900,
            default_language: "uk".into(),
            time_zone: String::new(),
            trusted_proxies: Vec::new(),
            board_interval_ms: 250,
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// "ADDR:PORT" of `/metrics`; "" disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

/// Languages the console's catalogues exist in.
pub const CONSOLE_LANGUAGES: &[&str] = &["uk", "en"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QueueStrategy {
    #[default]
    LongestIdle,
    RingAll,
}

/// How waiting callers are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub strategy: QueueStrategy,
    pub ring_timeout_s: u64,
    /// Missed offers in a row that pause an operator (0 = never).
    pub max_misses: u32,
    pub wrap_up_s: u64,
    /// Position announcements every this many seconds (0 = never) and never closer
    /// together than the minimum, improvements included.
    pub announce_interval_s: u64,
    pub announce_min_interval_s: u64,
    /// Longest wait before the caller is offered voicemail (0 = no limit).
    pub max_wait_s: u64,
    /// The key that leaves the queue for voicemail ("" = none).
    pub voicemail_key: String,
    /// Prompt looped while waiting ("" = silence between announcements).
    pub comfort_prompt: String,
    /// Prompt played to the operator before the bridge ("" = none).
    pub whisper_prompt: String,
    pub voicemail_when_nobody_logged_in: bool,
    /// Answers that move a caller ahead: "KEY=DIGITS" (e.g. "status=1"); first match wins.
    pub priority_answers: Vec<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            strategy: QueueStrategy::LongestIdle,
            ring_timeout_s: 20,
            max_misses: 2,
            wrap_up_s: 15,
            announce_interval_s: 45,
            announce_min_interval_s: 15,
            max_wait_s: 600,
            voicemail_key: "1".into(),
            comfort_prompt: "queue_comfort".into(),
            whisper_prompt: String::new(),
            voicemail_when_nobody_logged_in: true,
            priority_answers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    pub listen: Vec<ListenAddr>,
    #[serde(default)]
    pub public_address: String,
    #[serde(default = "default_t1")]
    pub t1_ms: u64,
    #[serde(default = "default_t2")]
    pub t2_ms: u64,
    #[serde(default = "default_t4")]
    pub t4_ms: u64,
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_s: u64,
    #[serde(default = "default_tcp_per_source")]
    pub tcp_max_connections_per_source: usize,
    #[serde(default)]
    pub answer_delay_ms: u64,
    /// DNS servers (`ADDR:PORT`) for trunk host names; empty = the system's resolver.
    #[serde(default)]
    pub dns_servers: Vec<SocketAddr>,
}

fn default_t1() -> u64 {
    500
}
fn default_t2() -> u64 {
    4000
}
fn default_t4() -> u64 {
    5000
}
fn default_max_message() -> usize {
    16384
}
fn default_tcp_idle() -> u64 {
    120
}
fn default_tcp_per_source() -> usize {
    16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
    Tls,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
        })
    }
}

/// One `sip.listen` entry such as `udp:0.0.0.0:5060` or `tcp:[::1]:5060`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("\"{s}\" is not of the form udp|tcp|tls:ADDR:PORT"))?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "udp" => Protocol::Udp,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            other => {
                return Err(format!(
                    "\"{s}\": unknown transport \"{other}\" (udp, tcp or tls)"
                ))
            }
        };
        let addr: SocketAddr = rest
            .parse()
            .map_err(|_| format!("\"{s}\": \"{rest}\" is not an IP address with a port"))?;
        Ok(ListenAddr { protocol, addr })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol, self.addr)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtpConfig {
    pub ports: PortRange,
    #[serde(default = "default_rtp_timeout")]
    pub timeout_s: u64,
    #[serde(default = "default_true")]
    pub latch: bool,
    #[serde(default)]
    pub inband_dtmf: InbandDtmf,
    /// SRTP with SDES keys on TLS legs (`media::srtp`, `sdp::sdes`).
    #[serde(default)]
    pub srtp: SrtpMode,
    /// `SCHED_RR` priority of the media clock and RTP receive threads; 0: normal
    /// scheduling (`media::realtime`).
    #[serde(default = "default_realtime_priority")]
    pub realtime_priority: u8,
}

fn default_realtime_priority() -> u8 {
    10
}

/// Highest `rtp.realtime_priority` (Linux real-time priorities are 1-99).
pub const MAX_REALTIME_PRIORITY: u8 = 99;

/// When media is encrypted (SRTP, SDES keys in the SDP). Keys only ever cross TLS
/// signalling: on a UDP or TCP leg every mode means plain RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SrtpMode {
    /// Plain RTP everywhere; RTP/SAVP offers are refused with 488.
    Off,
    /// Offers to TLS operators carry a key (RTP/AVP, a plain answer is accepted);
    /// TLS offers with a key are answered with ours.
    #[default]
    Offer,
    /// As `Offer`, but offers to operators are RTP/SAVP and a plain answer (or an
    /// operator registered without TLS) is refused: the call goes to another operator.
    Require,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InbandDtmf {
    /// Listen for tones only when the caller did not negotiate telephone-event.
    #[default]
    Auto,
    Always,
    Never,
}

fn default_rtp_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let err = || {
            serde::de::Error::custom(format!("\"{s}\" is not a port range like \"20000-29999\""))
        };
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let first: u16 = a.trim().parse().map_err(|_| err())?;
        let last: u16 = b.trim().parse().map_err(|_| err())?;
        if first > last {
            return Err(serde::de::Error::custom(format!(
                "port range \"{s}\" is reversed (first port above last)"
            )));
        }
        if first < 1024 {
            return Err(serde::de::Error::custom(format!(
                "port range \"{s}\" starts below 1024"
            )));
        }
        if last - first < 3 {
            return Err(serde::de::Error::custom(format!(
                "port range \"{s}\" holds fewer than two RTP/RTCP pairs"
            )));
        }
        Ok(PortRange { first, last })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// age X25519 recipients (`age1…`) that recordings and call details are sealed to;
    /// empty = stored in clear.
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// How long recordings and calls are kept (days; fractions allowed; 0 = forever).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub recordings_days: f64,
    pub calls_days: f64,
    /// How often the running server purges (and checks the caller-ID key's age).
    pub purge_interval_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            recordings_days: 0.0,
            calls_days: 0.0,
            purge_interval_s: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrConfig {
    pub flow: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_calls: usize,
    #[serde(default = "default_max_duration")]
    pub max_call_duration_s: u64,
    #[serde(default = "default_source_rate")]
    pub source_rate: f64,
    #[serde(default = "default_source_burst")]
    pub source_burst: u32,
    #[serde(default)]
    pub trusted_sources: Vec<Cidr>,
    /// Calls in progress one source address may have (0: no limit).
    #[serde(default = "default_max_calls_per_source")]
    pub max_calls_per_source: u32,
    /// Seconds a source that keeps exceeding its limits is ignored (0: never).
    #[serde(default = "default_ban_s")]
    pub ban_s: u64,
    /// Stream connections (TCP and TLS together) held at once.
    #[serde(default = "default_max_tcp_connections")]
    pub max_tcp_connections: usize,
    /// Seconds a SIP message on a stream may take once its first byte arrived.
    #[serde(default = "default_tcp_message_timeout")]
    pub tcp_message_timeout_s: u64,
    /// Mean lateness of the media clock over a second (ms) above which new calls get
    /// 503 until it recovers (0: never).
    #[serde(default = "default_overload_lateness_ms")]
    pub overload_lateness_ms: f64,
}

fn default_overload_lateness_ms() -> f64 {
    10.0
}

/// Highest `limits.overload_lateness_ms`: a tick later than this on average is a
/// clock that has stopped, not one that is late.
pub const MAX_OVERLOAD_LATENESS_MS: f64 = 1000.0;

impl LimitsConfig {
    /// The lateness over which new calls are refused; None when switched off.
    pub fn overload_threshold(&self) -> Option<std::time::Duration> {
        (self.overload_lateness_ms > 0.0)
            .then(|| std::time::Duration::from_secs_f64(self.overload_lateness_ms / 1e3))
    }
}

fn default_max_tcp_connections() -> usize {
    1000
}
fn default_tcp_message_timeout() -> u64 {
    10
}

fn default_max_calls_per_source() -> u32 {
    8
}
fn default_ban_s() -> u64 {
    300
}

fn default_max_duration() -> u64 {
    3600
}
fn default_source_rate() -> f64 {
    50.0
}
fn default_source_burst() -> u32 {
    200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerIdPolicy {
    Keep,
    Hash,
    Drop,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    pub caller_id: CallerIdPolicy,
    /// Default: `caller-id.key` in `storage.data_dir`.
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
    /// Replace the caller-ID hash key after this many days (0 = never).
    #[serde(default)]
    pub hash_key_rotate_days: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// A configuration problem, printed as one line: `FILE: KEY: PROBLEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads `path` (or, when `path` is None, `config/hotline.toml` if it exists and
    /// the embedded defaults otherwise), then applies `--set` overrides.
    pub fn load(
        path: Option<&Path>,
        overrides: &[String],
    ) -> Result<(Config, String), ConfigError> {
        let (text, file) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: p.display().to_string(),
                    key: String::new(),
                    problem: format!("cannot read: {e}"),
                })?,
                p.display().to_string(),
            ),
            None if Path::new(DEFAULT_PATH).exists() => (
                std::fs::read_to_string(DEFAULT_PATH).map_err(|e| ConfigError {
                    file: DEFAULT_PATH.into(),
                    key: String::new(),
                    problem: format!("cannot read: {e}"),
                })?,
                DEFAULT_PATH.to_string(),
            ),
            None => (
                EMBEDDED_DEFAULTS.to_string(),
                "(embedded defaults)".to_string(),
            ),
        };
        let mut cfg = Self::from_str_with_overrides(&text, &file, overrides)?;
        cfg.source = file.clone();
        Ok((cfg, file))
    }

    pub fn from_str_with_overrides(
        text: &str,
        file: &str,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            file: file.into(),
            key: String::new(),
            problem: format!("not valid TOML: {}", e.message()),
        })?;
        for ov in overrides {
            apply_override(&mut table, ov).map_err(|problem| ConfigError {
                file: "--set".into(),
                key: ov.split('=').next().unwrap_or_default().to_string(),
                problem,
            })?;
        }
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| ConfigError {
                file: file.into(),
                key: e.path().to_string(),
                problem: e.inner().message().to_string(),
            },
        )?;
        cfg.validate().map_err(|(key, problem)| ConfigError {
            file: file.into(),
            key,
            problem,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if self.sip.listen.is_empty() {
            return Err(("sip.listen".into(), "needs at least one address".into()));
        }
        for (i, a) in self.sip.listen.iter().enumerate() {
            if self.sip.listen[..i].contains(a) {
                return Err((
                    format!("sip.listen[{i}]"),
                    format!("\"{a}\" is listed twice"),
                ));
            }
        }
        if !self.sip.public_address.is_empty() && self.sip.public_address.parse::<IpAddr>().is_err()
        {
            return Err((
                "sip.public_address".into(),
                format!("\"{}\" is not an IP address", self.sip.public_address),
            ));
        }
        if !(50..=10_000).contains(&self.sip.t1_ms) {
            return Err(("sip.t1_ms".into(), "must be between 50 and 10000".into()));
        }
        if self.sip.t2_ms < self.sip.t1_ms {
            return Err(("sip.t2_ms".into(), "must not be below sip.t1_ms".into()));
        }
        if !(1024..=65535).contains(&self.sip.max_message_bytes) {
            return Err((
                "sip.max_message_bytes".into(),
                "must be between 1024 and 65535".into(),
            ));
        }
        if self.sip.tcp_max_connections_per_source == 0 {
            return Err((
                "sip.tcp_max_connections_per_source".into(),
                "must be at least 1".into(),
            ));
        }
        if self.limits.max_tcp_connections == 0 {
            return Err((
                "limits.max_tcp_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if !(1..=300).contains(&self.limits.tcp_message_timeout_s) {
            return Err((
                "limits.tcp_message_timeout_s".into(),
                "must be between 1 and 300".into(),
            ));
        }
        let lateness = self.limits.overload_lateness_ms;
        if !(lateness.is_finite() && (0.0..=MAX_OVERLOAD_LATENESS_MS).contains(&lateness)) {
            return Err((
                "limits.overload_lateness_ms".into(),
                format!(
                    "must be between 0 (off) and {MAX_OVERLOAD_LATENESS_MS} milliseconds, not {lateness}"
                ),
            ));
        }
        if self.rtp.realtime_priority > MAX_REALTIME_PRIORITY {
            return Err((
                "rtp.realtime_priority".into(),
                format!(
                    "must be between 0 (normal scheduling) and {}, not {}",
                    MAX_REALTIME_PRIORITY, self.rtp.realtime_priority
                ),
            ));
        }
        if self.limits.max_calls == 0 {
            return Err(("limits.max_calls".into(), "must be at least 1".into()));
        }
        let pairs = (self.rtp.ports.last as usize - self.rtp.ports.first as usize).div_ceil(2);
        if self.limits.max_calls > pairs {
            return Err((
                "limits.max_calls".into(),
                format!(
                    "{} calls need more RTP ports than rtp.ports holds ({pairs} pairs)",
                    self.limits.max_calls
                ),
            ));
        }
        if self.limits.max_call_duration_s == 0 {
            return Err((
                "limits.max_call_duration_s".into(),
                "must be at least 1".into(),
            ));
        }
        if !(self.limits.source_rate.is_finite() && self.limits.source_rate > 0.0) {
            return Err((
                "limits.source_rate".into(),
                "must be a positive number".into(),
            ));
        }
        if self.limits.source_burst == 0 {
            return Err(("limits.source_burst".into(), "must be at least 1".into()));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(("storage.data_dir".into(), "must not be empty".into()));
        }
        if let Err((i, problem)) = parse_recipients(&self.storage.recipients) {
            return Err((format!("storage.recipients[{i}]"), problem));
        }
        for (key, days) in [
            ("retention.recordings_days", self.retention.recordings_days),
            ("retention.calls_days", self.retention.calls_days),
            (
                "privacy.hash_key_rotate_days",
                self.privacy.hash_key_rotate_days,
            ),
        ] {
            if !(days.is_finite() && (0.0..=36_500.0).contains(&days)) {
                return Err((
                    key.into(),
                    "must be a number of days from 0 (never) to 36500".into(),
                ));
            }
        }
        if !(1..=86_400).contains(&self.retention.purge_interval_s) {
            return Err((
                "retention.purge_interval_s".into(),
                "must be between 1 and 86400".into(),
            ));
        }
        if self.hash_key_path().as_os_str().is_empty() {
            return Err(("privacy.hash_key_file".into(), "must not be empty".into()));
        }
        let op = &self.operators;
        if op.realm.is_empty() || !op.realm.chars().all(|c| c.is_ascii_graphic() && c != '"') {
            return Err((
                "operators.realm".into(),
                "must be non-empty printable ASCII without quotes".into(),
            ));
        }
        for (key, code) in [
            ("operators.feature_available", &op.feature_available),
            ("operators.feature_paused", &op.feature_paused),
        ] {
            if code.is_empty()
                || !code
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
            {
                return Err((
                    key.into(),
                    format!("\"{code}\" is not a dial string of 0-9 * #"),
                ));
            }
        }
        if op.feature_available == op.feature_paused {
            return Err((
                "operators.feature_paused".into(),
                "must differ from operators.feature_available".into(),
            ));
        }
        if op.min_expires_s == 0 || op.min_expires_s > op.max_expires_s {
            return Err((
                "operators.min_expires_s".into(),
                "must be at least 1 and not above operators.max_expires_s".into(),
            ));
        }
        if op.digest_algorithms.is_empty() {
            return Err((
                "operators.digest_algorithms".into(),
                "must list at least one of \"SHA-256\", \"MD5\"".into(),
            ));
        }
        for (i, a) in op.digest_algorithms.iter().enumerate() {
            if !DIGEST_ALGORITHMS.iter().any(|k| k.eq_ignore_ascii_case(a)) {
                return Err((
                    format!("operators.digest_algorithms[{i}]"),
                    format!("\"{a}\" is not \"SHA-256\" or \"MD5\""),
                ));
            }
        }
        if op.nonce_lifetime_s == 0 {
            return Err((
                "operators.nonce_lifetime_s".into(),
                "must be at least 1".into(),
            ));
        }
        let q = &self.queue;
        if q.ring_timeout_s == 0 {
            return Err(("queue.ring_timeout_s".into(), "must be at least 1".into()));
        }
        if q.voicemail_key.chars().count() > 1
            || !q
                .voicemail_key
                .chars()
                .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
        {
            return Err((
                "queue.voicemail_key".into(),
                format!(
                    "\"{}\" is not one key of 0-9 * # (or empty)",
                    q.voicemail_key
                ),
            ));
        }
        for (i, p) in q.priority_answers.iter().enumerate() {
            if !p
                .split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
            {
                return Err((
                    format!("queue.priority_answers[{i}]"),
                    format!("\"{p}\" is not KEY=DIGITS"),
                ));
            }
        }
        trunks::validate(&self.trunks)?;
        self.validate_console()?;
        tls::validate(&self.tls, &self.sip.listen)?;
        if self.rtp.srtp == SrtpMode::Require
            && !self.sip.listen.iter().any(|l| l.protocol == Protocol::Tls)
        {
            return Err((
                "rtp.srtp".into(),
                "\"require\" needs a \"tls:\" entry in sip.listen: SDES keys cross TLS only, so no operator could take a call".into(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err((
                "log.level".into(),
                format!("\"{}\" is not a log filter", self.log.level),
            ));
        }
        Ok(())
    }

    fn validate_console(&self) -> Result<(), (String, String)> {
        let c = &self.console;
        for (key, listen) in [
            ("console.listen", &c.listen),
            ("metrics.listen", &self.metrics.listen),
        ] {
            if !listen.is_empty() && listen.parse::<SocketAddr>().is_err() {
                return Err((
                    key.into(),
                    format!("\"{listen}\" is not ADDR:PORT (or \"\" to disable)"),
                ));
            }
        }
        // Port 0 asks the system for a free port each: two of those cannot collide.
        let fixed_port = !c.listen.ends_with(":0");
        if !c.listen.is_empty() && fixed_port && c.listen == self.metrics.listen {
            return Err((
                "metrics.listen".into(),
                "must differ from console.listen".into(),
            ));
        }
        if c.tls {
            for (key, path) in [
                ("tls.certificate", &self.tls.certificate),
                ("tls.private_key", &self.tls.private_key),
            ] {
                if path.as_os_str().is_empty() {
                    return Err((key.into(), "must be set when console.tls = true".into()));
                }
            }
        }
        for (key, value) in [
            ("console.session_idle_s", c.session_idle_s),
            ("console.session_max_s", c.session_max_s),
            ("console.login_failure_window_s", c.login_failure_window_s),
            ("console.lockout_s", c.lockout_s),
            ("console.board_interval_ms", c.board_interval_ms),
        ] {
            if value == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
        }
        if c.session_idle_s > c.session_max_s {
            return Err((
                "console.session_idle_s".into(),
                "must not be above console.session_max_s".into(),
            ));
        }
        if c.max_sessions_per_account == 0 {
            return Err((
                "console.max_sessions_per_account".into(),
                "must be at least 1".into(),
            ));
        }
        for (key, value) in [
            (
                "console.max_login_failures_per_address",
                c.max_login_failures_per_address,
            ),
            (
                "console.max_login_failures_per_account",
                c.max_login_failures_per_account,
            ),
        ] {
            if value == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
        }
        if !CONSOLE_LANGUAGES.contains(&c.default_language.as_str()) {
            return Err((
                "console.default_language".into(),
                format!("\"{}\" is not \"uk\" or \"en\"", c.default_language),
            ));
        }
        Ok(())
    }

    pub fn database_path(&self) -> PathBuf {
        self.storage.data_dir.join("hotline.db")
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.storage.data_dir.join("recordings")
    }

    /// The caller-ID hash key: `privacy.hash_key_file`, else in the data directory.
    pub fn hash_key_path(&self) -> PathBuf {
        self.privacy
            .hash_key_file
            .clone()
            .unwrap_or_else(|| self.storage.data_dir.join("caller-id.key"))
    }

    /// Whether recordings and call details are sealed (`storage.recipients` set).
    pub fn sealing(&self) -> bool {
        !self.storage.recipients.is_empty()
    }
}

/// Applies one `KEY=VALUE` override. VALUE is read as a TOML value; a bare word that
/// is not valid TOML is taken as a string, so `--set privacy.caller_id=drop` works.
fn apply_override(table: &mut toml::Table, ov: &str) -> Result<(), String> {
    let (key, raw) = ov
        .split_once('=')
        .ok_or_else(|| format!("\"{ov}\" is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.is_empty()) {
        return Err(format!("\"{key}\" is not a dotted key like sip.listen"));
    }
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("\"{p}\" in \"{key}\" is not a table"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// `storage.recipients` as age X25519 recipients; Err names the entry and the problem.
pub fn parse_recipients(list: &[String]) -> Result<Vec<age::x25519::Recipient>, (usize, String)> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.trim().parse::<age::x25519::Recipient>().map_err(|e| {
                (
                    i,
                    format!("\"{s}\" is not an age X25519 recipient (age1…): {e}"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(overrides: &[&str]) -> Result<Config, ConfigError> {
        let ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::from_str_with_overrides(EMBEDDED_DEFAULTS, "hotline.toml", &ov)
    }

    #[test]
    fn embedded_defaults_load() {
        let c = load(&[]).unwrap();
        assert_eq!(c.sip.listen.len(), 2);
        assert_eq!(
            c.rtp.ports,
            PortRange {
                first: 20000,
                last: 29999
            }
        );
        assert_eq!(c.database_path(), PathBuf::from("data/hotline.db"));
    }

    #[test]
    fn srtp_mode_is_checked() {
        assert_eq!(load(&[]).unwrap().rtp.srtp, SrtpMode::Offer);
        assert_eq!(load(&["rtp.srtp=off"]).unwrap().rtp.srtp, SrtpMode::Off);
        let e = load(&["rtp.srtp=maybe"]).unwrap_err();
        assert_eq!(e.key, "rtp.srtp");
        assert!(e.problem.contains("unknown variant `maybe`"), "{e}");
        assert!(e.problem.contains("`off`, `offer`, `require`"), "{e}");
        let e = load(&["rtp.srtp=require"]).unwrap_err();
        assert_eq!(e.key, "rtp.srtp");
        assert!(e.problem.contains("needs a \"tls:\" entry"), "{e}");
    }

    #[test]
    fn overrides_take_toml_and_bare_words() {
        let c = load(&[
            "sip.listen=[\"udp:127.0.0.1:5080\"]",
            "privacy.caller_id=drop",
            "limits.max_calls=5",
        ])
        .unwrap();
        assert_eq!(c.sip.listen[0].to_string(), "udp:127.0.0.1:5080");
        assert_eq!(c.privacy.caller_id, CallerIdPolicy::Drop);
        assert_eq!(c.limits.max_calls, 5);
    }

    #[test]
    fn overload_lateness_defaults_can_be_fractional_or_off_and_is_bounded() {
        let c = load(&[]).unwrap();
        assert_eq!(
            c.limits.overload_threshold(),
            Some(std::time::Duration::from_millis(10))
        );
        let c = load(&["limits.overload_lateness_ms=2.5"]).unwrap();
        assert_eq!(
            c.limits.overload_threshold(),
            Some(std::time::Duration::from_micros(2500))
        );
        let c = load(&["limits.overload_lateness_ms=0"]).unwrap();
        assert_eq!(c.limits.overload_threshold(), None);
        for bad in ["-1", "1001", "nan", "inf", "\"fast\""] {
            let e = load(&[&format!("limits.overload_lateness_ms={bad}")]).unwrap_err();
            assert_eq!(e.key, "limits.overload_lateness_ms", "{bad}: {e}");
            assert!(
                e.to_string()
                    .starts_with("hotline.toml: limits.overload_lateness_ms: "),
                "{e}"
            );
        }
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = load(&["sip.lisen=[]"]).unwrap_err();
        assert_eq!(e.key, "sip.lisen");
        assert!(e.problem.contains("unknown field `lisen`"), "{e}");

        let e = load(&["sip.listen=[\"udp:127.0.0.1:5080\", \"sctp:1.2.3.4:5\"]"]).unwrap_err();
        assert_eq!(e.key, "sip.listen[1]");
        assert!(e.problem.contains("unknown transport"), "{e}");

        let e = load(&["rtp.realtime_priority=100"]).unwrap_err();
        assert_eq!(e.key, "rtp.realtime_priority");
        assert!(e.problem.contains("between 0"), "{}", e.problem);
        assert_eq!(load(&[]).unwrap().rtp.realtime_priority, 10);
        assert_eq!(
            load(&["rtp.realtime_priority=0"])
                .unwrap()
                .rtp
                .realtime_priority,
            0
        );
        let e = load(&["rtp.ports=\"3000-2000\""]).unwrap_err();
        assert_eq!(e.key, "rtp.ports");
        assert!(e.problem.contains("reversed"), "{e}");

        let e = load(&["limits.max_calls=\"many\""]).unwrap_err();
        assert_eq!(e.key, "limits.max_calls");

        let e = load(&["sip.listen=[\"udp:300.1.1.1:5060\"]"]).unwrap_err();
        assert!(
            e.to_string().starts_with("hotline.toml: sip.listen[0]: "),
            "{e}"
        );

        let e = load(&["limits.max_calls=100000"]).unwrap_err();
        assert_eq!(e.key, "limits.max_calls");
    }

    #[test]
    fn sealing_retention_and_key_settings() {
        let c = load(&[]).unwrap();
        assert!(!c.sealing());
        assert_eq!(c.hash_key_path(), PathBuf::from("data/caller-id.key"));
        let c = load(&["storage.data_dir=\"/srv/h\""]).unwrap();
        assert_eq!(
            c.hash_key_path(),
            PathBuf::from("/srv/h/caller-id.key"),
            "the key follows the data directory"
        );
        let id = age::x25519::Identity::generate().to_public().to_string();
        let c = load(&[
            &format!("storage.recipients=[\"{id}\"]"),
            "retention.recordings_days=0.0001",
            "retention.calls_days=30",
            "privacy.hash_key_rotate_days=7.5",
        ])
        .unwrap();
        assert!(c.sealing());
        assert_eq!(c.retention.recordings_days, 0.0001);
        let e = load(&[&format!("storage.recipients=[\"{id}\", \"age1bad\"]")]).unwrap_err();
        assert_eq!(e.key, "storage.recipients[1]");
        assert!(e.problem.contains("not an age X25519 recipient"), "{e}");
        let e = load(&["retention.calls_days=-1"]).unwrap_err();
        assert_eq!(e.key, "retention.calls_days");
        let e = load(&["privacy.hash_key_rotate_days=nan"]).unwrap_err();
        assert_eq!(e.key, "privacy.hash_key_rotate_days");
    }

    #[test]
    fn trunks_and_ranges_from_the_command_line() {
        let c = load(&[
            "trunks=[{name=\"p\",registrar=\"sip:127.0.0.1:5070\",username=\"hotline\",password=\"x\"}]",
            "limits.trusted_sources=[\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\"]",
            "sip.dns_servers=[\"127.0.0.1:5353\"]",
        ])
        .unwrap();
        assert_eq!(c.trunks.len(), 1);
        assert_eq!(c.trunks[0].name, "p");
        assert_eq!(c.trunks[0].registrar.port, Some(5070));
        assert_eq!(c.trunks[0].expires_s, 600);
        assert_eq!(c.limits.trusted_sources.len(), 3);
        assert_eq!(c.sip.dns_servers[0].port(), 5353);

        let e = load(&["trunks=[{name=\"p\",registrar=\"sip:h\",username=\"u\"}]"]).unwrap_err();
        assert_eq!(e.key, "trunks[0].password");
        let e = load(&["trunks=[{name=\"p\",registrar=\"sip:u@h\"}]"]).unwrap_err();
        assert_eq!(e.key, "trunks[0].registrar");
        let e = load(&["trunks=[{name=\"p\",registrar=\"sip:h\",accept_from=[\"10.0.0.1/8\"]}]"])
            .unwrap_err();
        assert_eq!(e.key, "trunks[0].accept_from[0]");
        let e =
            load(&["trunks=[{name=\"p\",registrar=\"sip:h\"},{name=\"p\",registrar=\"sip:g\"}]"])
                .unwrap_err();
        assert_eq!(e.key, "trunks[1].name");
        let e = load(&["trunks=[{name=\"p\",registrar=\"sip:h\",expires_s=5}]"]).unwrap_err();
        assert_eq!(e.key, "trunks[0].expires_s");
        let e = load(&["limits.trusted_sources=[\"not-an-address\"]"]).unwrap_err();
        assert_eq!(e.key, "limits.trusted_sources[0]");
    }

    #[test]
    fn console_settings_are_checked() {
        let c = load(&[]).unwrap();
        assert_eq!(c.console.listen, "127.0.0.1:8080");
        assert_eq!(c.metrics.listen, "127.0.0.1:9090");
        assert!(load(&["console.listen=\"\"", "metrics.listen=\"\""]).is_ok());
        let e = load(&["console.listen=\"localhost\""]).unwrap_err();
        assert_eq!(e.key, "console.listen");
        let e = load(&["metrics.listen=\"127.0.0.1:8080\""]).unwrap_err();
        assert_eq!(e.key, "metrics.listen");
        assert!(load(&[
            "console.listen=\"127.0.0.1:0\"",
            "metrics.listen=\"127.0.0.1:0\""
        ])
        .is_ok());
        let e = load(&["console.tls=true"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hotline.toml: tls.certificate: must be set when console.tls = true"
        );
        let e = load(&["console.default_language=\"de\""]).unwrap_err();
        assert_eq!(e.key, "console.default_language");
        let e = load(&["console.session_idle_s=100000"]).unwrap_err();
        assert_eq!(e.key, "console.session_idle_s");
        let e = load(&["console.lockout_s=0"]).unwrap_err();
        assert_eq!(e.key, "console.lockout_s");
        let e = load(&["console.trusted_proxies=[\"proxy\"]"]).unwrap_err();
        assert_eq!(e.key, "console.trusted_proxies[0]");
    }

    #[test]
    fn ipv6_listen_addresses_parse() {
        let a: ListenAddr = "tcp:[::1]:5070".parse().unwrap();
        assert_eq!(a.protocol, Protocol::Tcp);
        assert_eq!(a.addr.port(), 5070);
    }
}
