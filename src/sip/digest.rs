//! SIP digest authentication, server side (RFC 3261 §22, RFC 2617 with qop=auth, RFC 8760
//! SHA-256): HA1 derivation, `WWW-Authenticate` challenges, `Authorization` parsing, response
//! verification, self-validating nonces with expiry, and nonce-count replay protection.
//!
//! Nonces can be bound to a caller-chosen context (the registrar uses the source IP), so a
//! nonce only validates for requests from where it was sent.
//!
//! Must not: keep plaintext passwords (only [`ha1`] sees one, to derive what gets stored), do
//! IO, read the clock, or decide registration policy (who may register, lockouts, responses):
//! that belongs to the registrar.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use md5::Md5;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Longer `Authorization` values are refused before parsing.
const MAX_CREDENTIALS_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    pub fn from_token(token: &str) -> Option<Self> {
        if token.eq_ignore_ascii_case("MD5") {
            Some(Self::Md5)
        } else if token.eq_ignore_ascii_case("SHA-256") {
            Some(Self::Sha256)
        } else {
            None
        }
    }

    /// Lowercase hex hash of the parts joined by `:`, without building the joined string.
    fn hash(self, parts: &[&str]) -> String {
        fn run<D: sha2::Digest>(parts: &[&str]) -> String {
            let mut hasher = D::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    hasher.update(b":");
                }
                hasher.update(part.as_bytes());
            }
            hex::encode(hasher.finalize())
        }
        match self {
            Self::Md5 => run::<Md5>(parts),
            Self::Sha256 => run::<Sha256>(parts),
        }
    }
}

/// HA1 = H(username:realm:password), the only form in which a password is stored.
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&[user, realm, password])
}

/// The stored HA1s of one user, one per algorithm; a missing one disables that algorithm for
/// the user.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Ha1Set {
    pub md5: Option<String>,
    pub sha256: Option<String>,
}

impl Ha1Set {
    pub fn from_password(user: &str, realm: &str, password: &str) -> Self {
        Self {
            md5: Some(ha1(Algorithm::Md5, user, realm, password)),
            sha256: Some(ha1(Algorithm::Sha256, user, realm, password)),
        }
    }

    pub fn get(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Md5 => self.md5.as_deref(),
            Algorithm::Sha256 => self.sha256.as_deref(),
        }
    }
}

// HA1s are password equivalents: keep them out of logs.
impl fmt::Debug for Ha1Set {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ha1Set")
            .field("md5", &self.md5.as_ref().map(|_| "<redacted>"))
            .field("sha256", &self.sha256.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigestError {
    #[error("credentials are not for the Digest scheme")]
    NotDigest,
    #[error("malformed digest parameters")]
    Malformed,
    #[error("digest parameter `{0}` given twice")]
    Duplicate(String),
    #[error("digest parameter `{0}` missing")]
    Missing(&'static str),
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    #[error("unsupported qop")]
    UnsupportedQop,
    #[error("malformed nonce count")]
    BadNonceCount,
}

/// The qop=auth part of a response: present together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QopAuth {
    /// As sent (8 hex digits): the response hashes this exact text.
    pub nc: String,
    pub count: u32,
    pub cnonce: String,
}

/// A parsed `Authorization` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// MD5 when the client names none, as RFC 2617 prescribes.
    pub algorithm: Algorithm,
    pub opaque: Option<String>,
    pub qop: Option<QopAuth>,
}

pub fn parse_authorization(value: &str) -> Result<Credentials, DigestError> {
    if value.len() > MAX_CREDENTIALS_LEN {
        return Err(DigestError::Malformed);
    }
    let value = value.trim_start_matches(is_lws);
    let (scheme, rest) = value.split_once(is_lws).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(DigestError::NotDigest);
    }
    let [mut username, mut realm, mut nonce, mut uri, mut response] = Default::default();
    let [mut algorithm, mut opaque, mut qop, mut nc, mut cnonce] = Default::default();
    for (name, value) in parse_params(rest)? {
        let slot: &mut Option<String> = match name.as_str() {
            "username" => &mut username,
            "realm" => &mut realm,
            "nonce" => &mut nonce,
            "uri" => &mut uri,
            "response" => &mut response,
            "algorithm" => &mut algorithm,
            "opaque" => &mut opaque,
            "qop" => &mut qop,
            "nc" => &mut nc,
            "cnonce" => &mut cnonce,
            _ => continue,
        };
        // Two different values for one parameter leave the meaning ambiguous.
        if slot.replace(value).is_some() {
            return Err(DigestError::Duplicate(name));
        }
    }
    let algorithm = match algorithm {
        None => Algorithm::Md5,
        Some(token) => Algorithm::from_token(&token).ok_or(DigestError::UnsupportedAlgorithm)?,
    };
    let qop = match qop {
        None => None,
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let nc = nc.ok_or(DigestError::Missing("nc"))?;
            let cnonce = cnonce.ok_or(DigestError::Missing("cnonce"))?;
            let count = parse_nonce_count(&nc)?;
            Some(QopAuth { nc, count, cnonce })
        }
        Some(_) => return Err(DigestError::UnsupportedQop),
    };
    Ok(Credentials {
        username: username.ok_or(DigestError::Missing("username"))?,
        realm: realm.ok_or(DigestError::Missing("realm"))?,
        nonce: nonce.ok_or(DigestError::Missing("nonce"))?,
        uri: uri.ok_or(DigestError::Missing("uri"))?,
        response: response.ok_or(DigestError::Missing("response"))?,
        algorithm,
        opaque,
        qop,
    })
}

fn parse_nonce_count(nc: &str) -> Result<u32, DigestError> {
    if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DigestError::BadNonceCount);
    }
    u32::from_str_radix(nc, 16).map_err(|_| DigestError::BadNonceCount)
}

fn is_lws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// `name=value` pairs separated by commas; names are lowercased, quoted values unescaped.
fn parse_params(input: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut params = Vec::new();
    for element in super::scan::split_unquoted(input, ',', false) {
        let element = element.trim_matches(is_lws);
        // Empty list elements (",,") are allowed by the list syntax.
        if element.is_empty() {
            continue;
        }
        let (name, value) = element.split_once('=').ok_or(DigestError::Malformed)?;
        let name = name.trim_matches(is_lws);
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(DigestError::Malformed);
        }
        let value = value.trim_matches(is_lws);
        let value = if value.starts_with('"') {
            super::scan::unquote(value).ok_or(DigestError::Malformed)?
        } else {
            // Lenient: some clients send unquoted values that are not strict tokens
            // (a bare URI); they still end at whitespace.
            if value.is_empty() || value.contains(is_lws) {
                return Err(DigestError::Malformed);
            }
            value.to_string()
        };
        params.push((name.to_ascii_lowercase(), value));
    }
    Ok(params)
}

/// The `response` a client computes (RFC 2617 §3.2.2.1, qop=auth or the RFC 2069 form).
pub fn expected_response(
    algorithm: Algorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<&QopAuth>,
) -> String {
    let ha1 = ha1.to_ascii_lowercase();
    let ha2 = algorithm.hash(&[method, uri]);
    match qop {
        Some(q) => algorithm.hash(&[&ha1, nonce, &q.nc, &q.cnonce, "auth", &ha2]),
        None => algorithm.hash(&[&ha1, nonce, &ha2]),
    }
}

/// One `WWW-Authenticate` header value.
pub fn challenge(
    realm: &str,
    nonce: &str,
    opaque: Option<&str>,
    algorithm: Algorithm,
    stale: bool,
) -> String {
    let mut value = format!("Digest realm={}, nonce={}", quote(realm), quote(nonce));
    if let Some(opaque) = opaque {
        value.push_str(", opaque=");
        value.push_str(&quote(opaque));
    }
    value.push_str(", algorithm=");
    value.push_str(algorithm.as_str());
    value.push_str(", qop=\"auth\"");
    if stale {
        value.push_str(", stale=TRUE");
    }
    value
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    // CR and LF cannot appear in a quoted-string and would split the header.
    for c in s.chars().filter(|c| !matches!(c, '\r' | '\n')) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[derive(Debug, Clone)]
pub struct DigestConfig {
    pub realm: String,
    /// Challenged in this order, one header each; clients pick the first they support.
    pub algorithms: Vec<Algorithm>,
    pub nonce_lifetime: Duration,
    pub opaque: Option<String>,
    /// How many nonces have their nonce count tracked at once.
    pub replay_capacity: usize,
}

impl DigestConfig {
    pub fn new(realm: impl Into<String>) -> Self {
        Self {
            realm: realm.into(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            nonce_lifetime: Duration::from_secs(300),
            opaque: None,
            replay_capacity: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    Fresh,
    /// Ours, but too old.
    Stale,
    /// Not issued with our secret, or malformed.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Authenticated,
    /// The response was right but the nonce is expired, not ours, or already used with this
    /// nonce count: challenge again with `stale=TRUE` so the client retries without asking
    /// the user.
    Stale,
    /// A wrong response on a nonce we issued for this context: a wrong password. Only this
    /// proves the sender received our challenge, so only this should count as a guess.
    WrongResponse,
    /// Realm, opaque or algorithm do not fit what we offered, or a wrong response on a nonce
    /// that is not ours: challenge again.
    Unusable,
}

/// Nonce layout: issue time in ms since `epoch` (8 bytes BE) ‖ salt (8) ‖ HMAC-SHA-256 over
/// the first 16 bytes and the context, truncated to 16; hex encoded. Validity needs only the
/// secret and the context.
const NONCE_BYTES: usize = 32;

#[derive(Debug, Clone, Copy)]
struct NonceUse {
    issued_ms: u64,
    last_count: u32,
}

pub struct DigestAuth {
    config: DigestConfig,
    secret: [u8; 32],
    epoch: Instant,
    rng: Box<dyn RngCore + Send>,
    counts: HashMap<[u8; 16], NonceUse>,
    /// Nonces issued at or before this were dropped from `counts` while still fresh; their
    /// history is unknown, so they are refused as stale rather than risk a replay.
    forgotten_up_to: Option<u64>,
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuth")
            .field("config", &self.config)
            .field("tracked_nonces", &self.counts.len())
            .finish_non_exhaustive()
    }
}

impl DigestAuth {
    /// `epoch` anchors nonce timestamps; nonces from another process (another secret or
    /// epoch) are answered as stale.
    pub fn new(
        config: DigestConfig,
        secret: [u8; 32],
        epoch: Instant,
        rng: Box<dyn RngCore + Send>,
    ) -> Self {
        Self {
            config,
            secret,
            epoch,
            rng,
            counts: HashMap::new(),
            forgotten_up_to: None,
        }
    }

    /// Draws the secret from `rng` too.
    pub fn with_random_secret(
        config: DigestConfig,
        epoch: Instant,
        mut rng: Box<dyn RngCore + Send>,
    ) -> Self {
        let mut secret = [0; 32];
        rng.fill_bytes(&mut secret);
        Self::new(config, secret, epoch, rng)
    }

    pub fn config(&self) -> &DigestConfig {
        &self.config
    }

    pub fn issue_nonce(&mut self, now: Instant, context: &[u8]) -> String {
        let mut bytes = [0u8; NONCE_BYTES];
        bytes[..8].copy_from_slice(&self.millis(now).to_be_bytes());
        self.rng.fill_bytes(&mut bytes[8..16]);
        let mac = hmac_sha256(&self.secret, &[&bytes[..16], context]);
        bytes[16..].copy_from_slice(&mac[..16]);
        hex::encode(bytes)
    }

    /// One `WWW-Authenticate` value per configured algorithm, all sharing one fresh nonce.
    pub fn challenges(&mut self, now: Instant, stale: bool, context: &[u8]) -> Vec<String> {
        let nonce = self.issue_nonce(now, context);
        self.config
            .algorithms
            .iter()
            .map(|&alg| {
                let opaque = self.config.opaque.as_deref();
                challenge(&self.config.realm, &nonce, opaque, alg, stale)
            })
            .collect()
    }

    pub fn nonce_state(&self, nonce: &str, context: &[u8], now: Instant) -> NonceState {
        match self.decode(nonce, context) {
            None => NonceState::Invalid,
            Some((issued_ms, _)) => self.age_state(issued_ms, self.millis(now)),
        }
    }

    /// Checks a response for `method` against the user's stored HA1s, with the nonce expected
    /// to belong to `context`. Success consumes the nonce count, so the same (nonce, nc) never
    /// authenticates twice.
    pub fn verify(
        &mut self,
        creds: &Credentials,
        ha1s: &Ha1Set,
        method: &str,
        context: &[u8],
        now: Instant,
    ) -> Verdict {
        let offered = self.config.algorithms.contains(&creds.algorithm);
        let opaque_ok = self.config.opaque.is_none() || creds.opaque == self.config.opaque;
        if creds.realm != self.config.realm || !offered || !opaque_ok {
            return Verdict::Unusable;
        }
        let Some(ha1) = ha1s.get(creds.algorithm) else {
            return Verdict::Unusable;
        };
        let expected = expected_response(
            creds.algorithm,
            ha1,
            method,
            &creds.uri,
            &creds.nonce,
            creds.qop.as_ref(),
        );
        let given = creds.response.to_ascii_lowercase();
        let nonce = self.decode(&creds.nonce, context);
        if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return match nonce {
                Some(_) => Verdict::WrongResponse,
                None => Verdict::Unusable,
            };
        }
        let now_ms = self.millis(now);
        let Some((issued_ms, key)) = nonce else {
            return Verdict::Stale;
        };
        if self.age_state(issued_ms, now_ms) != NonceState::Fresh {
            return Verdict::Stale;
        }
        let count = creds.qop.as_ref().map(|q| q.count);
        if !self.record_use(key, issued_ms, count, now_ms) {
            return Verdict::Stale;
        }
        Verdict::Authenticated
    }

    fn millis(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }

    fn lifetime_ms(&self) -> u64 {
        u64::try_from(self.config.nonce_lifetime.as_millis()).unwrap_or(u64::MAX)
    }

    fn age_state(&self, issued_ms: u64, now_ms: u64) -> NonceState {
        if issued_ms > now_ms {
            NonceState::Invalid
        } else if now_ms - issued_ms > self.lifetime_ms() {
            NonceState::Stale
        } else {
            NonceState::Fresh
        }
    }

    /// Issue time and replay key of a nonce we issued for `context`, or `None`.
    fn decode(&self, nonce: &str, context: &[u8]) -> Option<(u64, [u8; 16])> {
        if nonce.len() != NONCE_BYTES * 2 {
            return None;
        }
        let bytes: [u8; NONCE_BYTES] = hex::decode(nonce).ok()?.try_into().ok()?;
        let mac = hmac_sha256(&self.secret, &[&bytes[..16], context]);
        if !constant_time_eq(&mac[..16], &bytes[16..]) {
            return None;
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&bytes[..8]);
        let mut key = [0u8; 16];
        key.copy_from_slice(&bytes[..16]);
        Some((u64::from_be_bytes(issued), key))
    }

    /// Without qop a nonce is good for one use only, since nothing else tells uses apart.
    fn record_use(
        &mut self,
        key: [u8; 16],
        issued_ms: u64,
        count: Option<u32>,
        now_ms: u64,
    ) -> bool {
        if let Some(used) = self.counts.get_mut(&key) {
            return match count {
                Some(n) if n > used.last_count => {
                    used.last_count = n;
                    true
                }
                _ => false,
            };
        }
        if self.forgotten_up_to.is_some_and(|t| issued_ms <= t) {
            return false;
        }
        if self.counts.len() >= self.config.replay_capacity {
            self.make_room(now_ms);
        }
        let last_count = count.unwrap_or(u32::MAX);
        self.counts.insert(
            key,
            NonceUse {
                issued_ms,
                last_count,
            },
        );
        true
    }

    fn make_room(&mut self, now_ms: u64) {
        let lifetime = self.lifetime_ms();
        // Expired nonces are refused as stale anyway; their counts no longer matter.
        self.counts
            .retain(|_, used| now_ms.saturating_sub(used.issued_ms) <= lifetime);
        while self.counts.len() >= self.config.replay_capacity.max(1) {
            let Some((&key, used)) = self.counts.iter().min_by_key(|(_, u)| u.issued_ms) else {
                break;
            };
            let issued = used.issued_ms;
            self.counts.remove(&key);
            self.forgotten_up_to = Some(self.forgotten_up_to.map_or(issued, |t| t.max(issued)));
        }
    }
}

/// HMAC (RFC 2104) with SHA-256; the key is shorter than the block, so it is used as is.
fn hmac_sha256(key: &[u8; 32], message: &[&[u8]]) -> [u8; 32] {
    let mut inner_pad = [0x36u8; 64];
    let mut outer_pad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        inner_pad[i] ^= k;
        outer_pad[i] ^= k;
    }
    let mut inner = Sha256::new().chain_update(inner_pad);
    for part in message {
        inner.update(part);
    }
    let inner = inner.finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurable_algorithms_are_the_implemented_ones() {
        for name in crate::config::DIGEST_ALGORITHMS {
            let a = Algorithm::from_token(name).expect("implemented");
            assert_eq!(a.as_str(), *name);
        }
        assert_eq!(crate::config::DIGEST_ALGORITHMS.len(), 2);
        assert!(Algorithm::from_token("SHA-512-256").is_none());
    }
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const REALM: &str = "hotline";
    const CTX: &[u8] = &[192, 0, 2, 1];

    fn auth(base: Instant) -> DigestAuth {
        let config = DigestConfig::new(REALM);
        DigestAuth::new(config, [7; 32], base, Box::new(StdRng::seed_from_u64(1)))
    }

    fn secs(base: Instant, s: u64) -> Instant {
        base + Duration::from_secs(s)
    }

    /// What a client would send, for `password` and the given nonce.
    fn client(
        algorithm: Algorithm,
        user: &str,
        password: &str,
        nonce: &str,
        qop: Option<(u32, &str)>,
    ) -> Credentials {
        let uri = "sip:hotline.example";
        let qop = qop.map(|(count, cnonce)| QopAuth {
            nc: format!("{count:08x}"),
            count,
            cnonce: cnonce.to_owned(),
        });
        let ha1 = ha1(algorithm, user, REALM, password);
        Credentials {
            username: user.to_owned(),
            realm: REALM.to_owned(),
            nonce: nonce.to_owned(),
            uri: uri.to_owned(),
            response: expected_response(algorithm, &ha1, "REGISTER", uri, nonce, qop.as_ref()),
            algorithm,
            opaque: None,
            qop,
        }
    }

    fn stored() -> Ha1Set {
        Ha1Set::from_password("alice", REALM, "wonderland")
    }

    #[test]
    fn rfc_2617_md5_vector() {
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(ha1, "939e7578ed9e3c518a452acee763bce9");
        let qop = QopAuth {
            nc: "00000001".into(),
            count: 1,
            cnonce: "0a4f113b".into(),
        };
        let response = expected_response(
            Algorithm::Md5,
            &ha1,
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(&qop),
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc_7616_sha256_and_md5_vectors() {
        let qop = QopAuth {
            nc: "00000001".into(),
            count: 1,
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into(),
        };
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let run = |alg| {
            let ha1 = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life");
            expected_response(alg, &ha1, "GET", "/dir/index.html", nonce, Some(&qop))
        };
        assert_eq!(
            run(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(run(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn response_without_qop_uses_the_rfc_2069_form() {
        let ha1 = ha1(Algorithm::Md5, "u", "r", "p");
        let ha2 = Algorithm::Md5.hash(&["REGISTER", "sip:x"]);
        assert_eq!(
            expected_response(Algorithm::Md5, &ha1, "REGISTER", "sip:x", "n", None),
            Algorithm::Md5.hash(&[&ha1, "n", &ha2])
        );
    }

    #[test]
    fn challenge_headers_offer_sha256_first() {
        let base = Instant::now();
        let mut auth = auth(base);
        let headers = auth.challenges(base, false, CTX);
        assert_eq!(headers.len(), 2);
        let nonce = parse_params(headers[0].strip_prefix("Digest ").unwrap())
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "nonce")
            .unwrap()
            .1;
        assert_eq!(
            headers[0],
            format!("Digest realm=\"hotline\", nonce=\"{nonce}\", algorithm=SHA-256, qop=\"auth\"")
        );
        assert_eq!(
            headers[1],
            format!("Digest realm=\"hotline\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"")
        );
        assert_eq!(
            challenge("a\"b\\c\r\n", "n", Some("op"), Algorithm::Md5, true),
            "Digest realm=\"a\\\"b\\\\c\", nonce=\"n\", opaque=\"op\", algorithm=MD5, \
             qop=\"auth\", stale=TRUE"
        );
    }

    #[test]
    fn parses_a_typical_header() {
        let value = "Digest username=\"alice\",realm=\"hotline\",nonce=\"abc\",\
                     uri=\"sip:hotline.example\",response=\"0123\",algorithm=SHA-256,\
                     cnonce=\"xyz\",qop=auth,nc=0000000a";
        let creds = parse_authorization(value).unwrap();
        assert_eq!(
            creds,
            Credentials {
                username: "alice".into(),
                realm: "hotline".into(),
                nonce: "abc".into(),
                uri: "sip:hotline.example".into(),
                response: "0123".into(),
                algorithm: Algorithm::Sha256,
                opaque: None,
                qop: Some(QopAuth {
                    nc: "0000000a".into(),
                    count: 10,
                    cnonce: "xyz".into()
                }),
            }
        );
    }

    #[test]
    fn parsing_is_lenient_where_clients_differ() {
        let value = "  dIgEsT   UserName = \"al\\\"ice\" ,, REALM=hotline ,\tNonce=\"n\"\r\n \
                     , uri=sip:x@y;transport=udp, response=\"R\", opaque=\"o\" , \
                     qop=\"AUTH\", nc=00000001, cnonce=\"c\", extra=\"ignored\",";
        let creds = parse_authorization(value).unwrap();
        assert_eq!(creds.username, "al\"ice");
        assert_eq!(creds.realm, "hotline");
        assert_eq!(creds.uri, "sip:x@y;transport=udp");
        assert_eq!(creds.algorithm, Algorithm::Md5);
        assert_eq!(creds.opaque.as_deref(), Some("o"));
        assert_eq!(creds.qop.unwrap().count, 1);
        // Without qop, stray nc and cnonce are ignored.
        let creds = parse_authorization(
            "Digest username=u, realm=r, nonce=n, uri=u, response=x, nc=zz, algorithm=md5",
        )
        .unwrap();
        assert_eq!(creds.qop, None);
    }

    #[test]
    fn parsing_rejects_what_it_cannot_trust() {
        let base = "username=u, realm=r, nonce=n, uri=u, response=x";
        let cases: [(&str, DigestError); 9] = [
            ("Basic dXNlcjpwYXNz", DigestError::NotDigest),
            ("", DigestError::NotDigest),
            ("Digest username=\"u", DigestError::Malformed),
            ("Digest username", DigestError::Malformed),
            ("Digest =x", DigestError::Malformed),
            ("Digest username=a b", DigestError::Malformed),
            (
                "Digest username=u, realm=r, nonce=n, uri=u",
                DigestError::Missing("response"),
            ),
            (
                "Digest username=u, username=v, realm=r, nonce=n, uri=u, response=x",
                DigestError::Duplicate("username".into()),
            ),
            (
                "Digest username=u, realm=r, nonce=n, uri=u, response=x, algorithm=MD5-sess",
                DigestError::UnsupportedAlgorithm,
            ),
        ];
        for (value, error) in cases {
            assert_eq!(parse_authorization(value), Err(error), "{value}");
        }
        let with = |extra: &str| parse_authorization(&format!("Digest {base}, {extra}"));
        assert_eq!(with("qop=auth-int"), Err(DigestError::UnsupportedQop));
        assert_eq!(with("qop=auth, cnonce=c"), Err(DigestError::Missing("nc")));
        assert_eq!(
            with("qop=auth, nc=1, cnonce=c"),
            Err(DigestError::BadNonceCount)
        );
        assert_eq!(
            with("qop=auth, nc=0000000g, cnonce=c"),
            Err(DigestError::BadNonceCount)
        );
        assert_eq!(
            with("qop=auth, nc=+0000001, cnonce=c"),
            Err(DigestError::BadNonceCount)
        );
        let huge = format!("Digest {base}, opaque=\"{}\"", "x".repeat(5000));
        assert_eq!(parse_authorization(&huge), Err(DigestError::Malformed));
    }

    #[test]
    fn parsing_garbage_never_panics() {
        let valid = "Digest username=\"alice\", realm=\"hotline\", nonce=\"abc\", \
                     uri=\"sip:h\", response=\"0123\", qop=auth, nc=00000001, cnonce=\"é\\\\\"";
        let alphabet: Vec<char> = "Digest=\",\\ \t\r\naé€\u{0}xyz-".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for cut in 0..=valid.len() {
            if valid.is_char_boundary(cut) {
                let _ = parse_authorization(&valid[..cut]);
            }
        }
        for _ in 0..20_000 {
            let len = (next() % 60) as usize;
            let mut s = String::from(if next() % 2 == 0 { "Digest " } else { "" });
            for _ in 0..len {
                s.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let _ = parse_authorization(&s);
        }
    }

    #[test]
    fn nonces_validate_themselves_and_expire() {
        let base = Instant::now();
        let mut auth = auth(base);
        let nonce = auth.issue_nonce(secs(base, 10), CTX);
        assert_eq!(
            auth.nonce_state(&nonce, CTX, secs(base, 10)),
            NonceState::Fresh
        );
        assert_eq!(
            auth.nonce_state(&nonce, CTX, secs(base, 310)),
            NonceState::Fresh
        );
        assert_eq!(
            auth.nonce_state(&nonce, CTX, secs(base, 311)),
            NonceState::Stale
        );
        // Uppercase hex decodes to the same bytes.
        assert_eq!(
            auth.nonce_state(&nonce.to_uppercase(), CTX, secs(base, 10)),
            NonceState::Fresh
        );
        let mut tampered = nonce.clone().into_bytes();
        tampered[3] = if tampered[3] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            auth.nonce_state(&tampered, CTX, secs(base, 10)),
            NonceState::Invalid
        );
        assert_eq!(
            auth.nonce_state("zz", CTX, secs(base, 10)),
            NonceState::Invalid
        );
        assert_eq!(
            auth.nonce_state(&"g".repeat(64), CTX, secs(base, 10)),
            NonceState::Invalid
        );
        // Another server secret: not ours.
        let other = DigestAuth::new(
            DigestConfig::new(REALM),
            [8; 32],
            base,
            Box::new(StdRng::seed_from_u64(1)),
        );
        assert_eq!(
            other.nonce_state(&nonce, CTX, secs(base, 10)),
            NonceState::Invalid
        );
        // Nonces differ even when issued at the same instant.
        assert_ne!(auth.issue_nonce(base, CTX), auth.issue_nonce(base, CTX));
    }

    #[test]
    fn verifies_both_algorithms_with_and_without_qop() {
        let base = Instant::now();
        let mut auth = auth(base);
        for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
            for qop in [Some((1, "c1")), None] {
                let nonce = auth.issue_nonce(base, CTX);
                let creds = client(algorithm, "alice", "wonderland", &nonce, qop);
                assert_eq!(
                    auth.verify(&creds, &stored(), "REGISTER", CTX, secs(base, 1)),
                    Verdict::Authenticated
                );
            }
        }
    }

    #[test]
    fn wrong_password_and_wrong_method_fail() {
        let base = Instant::now();
        let mut auth = auth(base);
        let nonce = auth.issue_nonce(base, CTX);
        let creds = client(Algorithm::Sha256, "alice", "guess", &nonce, Some((1, "c")));
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, base),
            Verdict::WrongResponse
        );
        let creds = client(
            Algorithm::Sha256,
            "alice",
            "wonderland",
            &nonce,
            Some((1, "c")),
        );
        assert_eq!(
            auth.verify(&creds, &stored(), "INVITE", CTX, base),
            Verdict::WrongResponse
        );
        // A failed attempt does not use up the nonce count.
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, base),
            Verdict::Authenticated
        );
    }

    #[test]
    fn uppercase_response_and_stored_ha1_are_accepted() {
        let base = Instant::now();
        let mut auth = auth(base);
        let nonce = auth.issue_nonce(base, CTX);
        let mut creds = client(
            Algorithm::Md5,
            "alice",
            "wonderland",
            &nonce,
            Some((1, "c")),
        );
        creds.response = creds.response.to_uppercase();
        let upper = Ha1Set {
            md5: stored().md5.map(|h| h.to_uppercase()),
            sha256: None,
        };
        assert_eq!(
            auth.verify(&creds, &upper, "REGISTER", CTX, base),
            Verdict::Authenticated
        );
    }

    #[test]
    fn replayed_nonce_counts_are_refused() {
        let base = Instant::now();
        let mut auth = auth(base);
        let nonce = auth.issue_nonce(base, CTX);
        let verify = |auth: &mut DigestAuth, qop| {
            let creds = client(Algorithm::Sha256, "alice", "wonderland", &nonce, qop);
            auth.verify(&creds, &stored(), "REGISTER", CTX, secs(base, 5))
        };
        assert_eq!(verify(&mut auth, Some((1, "a"))), Verdict::Authenticated);
        assert_eq!(verify(&mut auth, Some((1, "a"))), Verdict::Stale);
        assert_eq!(verify(&mut auth, Some((1, "b"))), Verdict::Stale);
        assert_eq!(verify(&mut auth, Some((3, "a"))), Verdict::Authenticated);
        assert_eq!(verify(&mut auth, Some((2, "a"))), Verdict::Stale);
        // Once used with qop, the RFC 2069 form cannot reuse it either.
        assert_eq!(verify(&mut auth, None), Verdict::Stale);

        // Without qop a nonce is single use.
        let nonce = auth.issue_nonce(base, CTX);
        let creds = client(Algorithm::Md5, "alice", "wonderland", &nonce, None);
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, base),
            Verdict::Authenticated
        );
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, base),
            Verdict::Stale
        );
    }

    #[test]
    fn right_password_on_a_bad_nonce_is_stale() {
        let base = Instant::now();
        let mut auth = auth(base);
        let nonce = auth.issue_nonce(base, CTX);
        let creds = client(
            Algorithm::Sha256,
            "alice",
            "wonderland",
            &nonce,
            Some((1, "c")),
        );
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, secs(base, 301)),
            Verdict::Stale
        );
        let creds = client(
            Algorithm::Sha256,
            "alice",
            "wonderland",
            "forged",
            Some((1, "c")),
        );
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, base),
            Verdict::Stale
        );
        // A wrong response is only a wrong password if we sent that nonce to this context.
        let creds = client(
            Algorithm::Sha256,
            "alice",
            "guess",
            "forged",
            Some((1, "c")),
        );
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, base),
            Verdict::Unusable
        );
    }

    #[test]
    fn nonces_are_bound_to_their_context() {
        let base = Instant::now();
        let mut auth = auth(base);
        let elsewhere: &[u8] = &[198, 51, 100, 7];
        let nonce = auth.issue_nonce(base, CTX);
        assert_eq!(
            auth.nonce_state(&nonce, elsewhere, base),
            NonceState::Invalid
        );
        let right = client(
            Algorithm::Sha256,
            "alice",
            "wonderland",
            &nonce,
            Some((1, "c")),
        );
        let wrong = client(Algorithm::Sha256, "alice", "guess", &nonce, Some((1, "c")));
        assert_eq!(
            auth.verify(&wrong, &stored(), "REGISTER", elsewhere, base),
            Verdict::Unusable
        );
        assert_eq!(
            auth.verify(&right, &stored(), "REGISTER", elsewhere, base),
            Verdict::Stale
        );
        assert_eq!(
            auth.verify(&right, &stored(), "REGISTER", CTX, base),
            Verdict::Authenticated
        );
    }

    #[test]
    fn credentials_we_did_not_ask_for_are_unusable() {
        let base = Instant::now();
        let config = DigestConfig {
            algorithms: vec![Algorithm::Sha256],
            opaque: Some("op".into()),
            ..DigestConfig::new(REALM)
        };
        let mut auth = DigestAuth::new(config, [7; 32], base, Box::new(StdRng::seed_from_u64(2)));
        let nonce = auth.issue_nonce(base, CTX);
        let good = || {
            let mut creds = client(
                Algorithm::Sha256,
                "alice",
                "wonderland",
                &nonce,
                Some((1, "c")),
            );
            creds.opaque = Some("op".into());
            creds
        };
        let md5 = Credentials {
            opaque: Some("op".into()),
            ..client(
                Algorithm::Md5,
                "alice",
                "wonderland",
                &nonce,
                Some((1, "c")),
            )
        };
        let other_realm = Credentials {
            realm: "elsewhere".into(),
            ..good()
        };
        let no_opaque = Credentials {
            opaque: None,
            ..good()
        };
        for creds in [md5, other_realm, no_opaque] {
            assert_eq!(
                auth.verify(&creds, &stored(), "REGISTER", CTX, base),
                Verdict::Unusable
            );
        }
        let md5_only = Ha1Set {
            md5: stored().md5,
            sha256: None,
        };
        assert_eq!(
            auth.verify(&good(), &md5_only, "REGISTER", CTX, base),
            Verdict::Unusable
        );
        assert_eq!(
            auth.verify(&good(), &stored(), "REGISTER", CTX, base),
            Verdict::Authenticated
        );
    }

    #[test]
    fn replay_tracking_is_bounded_and_fails_safe() {
        let base = Instant::now();
        let config = DigestConfig {
            replay_capacity: 2,
            ..DigestConfig::new(REALM)
        };
        let mut auth = DigestAuth::new(config, [7; 32], base, Box::new(StdRng::seed_from_u64(3)));
        let nonces: Vec<String> = (0..3)
            .map(|i| auth.issue_nonce(secs(base, i), CTX))
            .collect();
        let use_nonce = |auth: &mut DigestAuth, nonce: &str, count| {
            let creds = client(
                Algorithm::Sha256,
                "alice",
                "wonderland",
                nonce,
                Some((count, "c")),
            );
            auth.verify(&creds, &stored(), "REGISTER", CTX, secs(base, 10))
        };
        assert_eq!(use_nonce(&mut auth, &nonces[0], 1), Verdict::Authenticated);
        assert_eq!(use_nonce(&mut auth, &nonces[1], 1), Verdict::Authenticated);
        // Tracking the third pushes out the oldest.
        assert_eq!(use_nonce(&mut auth, &nonces[2], 1), Verdict::Authenticated);
        assert_eq!(auth.counts.len(), 2);
        // The forgotten nonce's history is unknown, so it is refused even with a new count.
        assert_eq!(use_nonce(&mut auth, &nonces[0], 2), Verdict::Stale);
        assert_eq!(use_nonce(&mut auth, &nonces[2], 2), Verdict::Authenticated);
        // Newer nonces are unaffected, and expired entries make room first.
        let late = auth.issue_nonce(secs(base, 400), CTX);
        let creds = client(
            Algorithm::Sha256,
            "alice",
            "wonderland",
            &late,
            Some((1, "c")),
        );
        assert_eq!(
            auth.verify(&creds, &stored(), "REGISTER", CTX, secs(base, 400)),
            Verdict::Authenticated
        );
        assert_eq!(auth.counts.len(), 1);
    }

    #[test]
    fn ha1_set_debug_hides_hashes() {
        let debug = format!("{:?}", stored());
        assert!(!debug.contains(&stored().md5.unwrap()));
        assert!(debug.contains("redacted"));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
