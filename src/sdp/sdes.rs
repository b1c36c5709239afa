//! SDES (RFC 4568): the `a=crypto` lines that carry SRTP master keys in SDP, and what
//! the hotline does with them on a leg, by `rtp.srtp` and by whether the leg's
//! signalling is TLS.
//!
//! Owns reading a peer's crypto lines (hostile input: every length and count is
//! capped, every refusal says why), writing ours, and the offer/answer rules. Pure
//! functions: keys arrive from the caller of these functions (the endpoint's key
//! source, OS randomness in the server). Written by hand because ezk-sdp-types' own
//! crypto parser panics on a lifetime of `2^32` or more (an overflowing `pow` in a
//! debug build) and refuses the whole SDP for one bad line; `sdp::parse` keeps crypto
//! lines away from it.

use crate::call::SrtpMasterKey;
use crate::config::SrtpMode;
use std::fmt::Write as _;

/// The one suite the media layer implements (`media::srtp`).
pub const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
/// Crypto lines read per m-line; an offer with more is refused as a whole.
pub const MAX_CRYPTO_LINES: usize = 16;
/// Longest crypto attribute value read (a real one is about 70 characters).
pub const MAX_CRYPTO_LINE: usize = 256;
/// Smallest key lifetime accepted: we never re-key during a call, and 2^31 packets
/// are more than a year of audio at 50 packets a second.
const MIN_LIFETIME_LOG2: u32 = 31;
/// The tag of the crypto line in our offers.
pub const OUR_TAG: u32 = 1;

/// What a peer's SDP said about SDES on the m-line we use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RemoteCrypto {
    /// No crypto line.
    #[default]
    None,
    /// The first line (in the peer's order of preference) we can use.
    Usable { tag: u32, key: SrtpMasterKey },
    /// Crypto lines, none usable. `our_suite`: one of them named our suite (so the
    /// peer wanted SRTP we support and sent something broken).
    Unusable { why: String, our_suite: bool },
}

/// Reads the crypto attribute values (text after `a=crypto:`) of one m-line.
pub fn read_lines(values: &[String]) -> RemoteCrypto {
    if values.is_empty() {
        return RemoteCrypto::None;
    }
    if values.len() > MAX_CRYPTO_LINES {
        return RemoteCrypto::Unusable {
            why: format!(
                "{} crypto lines (at most {MAX_CRYPTO_LINES} are read)",
                values.len()
            ),
            our_suite: false,
        };
    }
    let mut first_problem: Option<(String, bool)> = None;
    for v in values {
        match read_line(v) {
            Ok((tag, key)) => return RemoteCrypto::Usable { tag, key },
            Err(e) => {
                let ours = e.our_suite;
                // A problem with our suite says more than an unknown suite.
                if first_problem.as_ref().is_none_or(|(_, o)| !o && ours) {
                    first_problem = Some((e.why, ours));
                }
            }
        }
    }
    let (why, our_suite) = first_problem.unwrap_or_default();
    RemoteCrypto::Unusable { why, our_suite }
}

#[derive(Debug)]
struct LineError {
    why: String,
    our_suite: bool,
}

fn refuse(why: impl Into<String>, our_suite: bool) -> LineError {
    LineError {
        why: why.into(),
        our_suite,
    }
}

/// One `tag suite key-params [session-params]` value.
fn read_line(value: &str) -> Result<(u32, SrtpMasterKey), LineError> {
    if value.len() > MAX_CRYPTO_LINE {
        return Err(refuse(
            format!("crypto line of {} bytes", value.len()),
            false,
        ));
    }
    let mut fields = value.split_ascii_whitespace();
    let tag = fields
        .next()
        .filter(|t| (1..=9).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u32>().ok())
        .ok_or_else(|| refuse("crypto line without a numeric tag", false))?;
    let suite = fields.next().unwrap_or_default();
    if suite != SUITE {
        return Err(refuse("no supported crypto suite", false));
    }
    let key_params = fields
        .next()
        .ok_or_else(|| refuse("crypto line without key parameters", true))?;
    if let Some(param) = fields.next() {
        // RFC 4568 §6.3: a line with a session parameter we do not implement must not
        // be used (UNENCRYPTED_SRTP, KDR, FEC, ...).
        let name = shown(param.split('=').next().unwrap_or_default());
        return Err(refuse(
            format!("session parameter {name} not supported"),
            true,
        ));
    }
    let key = parse_inline(key_params).map_err(|why| refuse(why, true))?;
    Ok((tag, key))
}

/// The key of an SDES `inline:` parameter: base64 of the 16-byte master key and the
/// 14-byte salt, optionally `|lifetime` (accepted from 2^31 up: we never re-key);
/// an MKI and several keys are refused (we send no MKI in packets).
pub fn parse_inline(key_params: &str) -> Result<SrtpMasterKey, String> {
    if key_params.contains(';') {
        return Err("several keys (with MKIs) not supported".into());
    }
    let b64 = key_params
        .strip_prefix("inline:")
        .ok_or("key method is not inline:")?;
    let mut parts = b64.split('|');
    let b64 = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        (None, _) => {}
        (Some(p), None) if p.contains(':') => return Err("MKI not supported".into()),
        (Some(p), None) => check_lifetime(p)?,
        (Some(_), Some(_)) => return Err("MKI not supported".into()),
    }
    // 30 bytes are 40 characters of base64.
    if b64.len() != 40 {
        return Err(format!(
            "key and salt of {} base64 characters, not 40",
            b64.len().min(999)
        ));
    }
    use base64::Engine;
    let mut raw = [0u8; 30];
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(b64, &mut raw)
        .map_err(|_| "key is not base64".to_string())?;
    if n != 30 {
        return Err(format!("key and salt are {n} bytes, not 30"));
    }
    let key = SrtpMasterKey::from_concatenated(&raw);
    use zeroize::Zeroize;
    raw.zeroize();
    Ok(key)
}

/// A fragment of peer input fit for a reason (it ends up in a log line and in a
/// Warning header's quoted string): a few characters of a harmless set.
fn shown(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '^' | '-'))
        .take(24)
        .collect()
}

fn check_lifetime(p: &str) -> Result<(), String> {
    let q = shown(p);
    let too_short = || format!("key lifetime {q} below 2^{MIN_LIFETIME_LOG2} packets");
    if let Some(exp) = p.strip_prefix("2^") {
        let exp: u32 = exp
            .parse()
            .map_err(|_| format!("key lifetime {q} is not a number"))?;
        return match exp {
            MIN_LIFETIME_LOG2..=64 => Ok(()),
            0..MIN_LIFETIME_LOG2 => Err(too_short()),
            _ => Err(format!("key lifetime {q} is out of range")),
        };
    }
    if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("key lifetime {q} is not a number"));
    }
    match p.parse::<u64>() {
        Ok(n) if n >= 1 << MIN_LIFETIME_LOG2 => Ok(()),
        Ok(_) => Err(too_short()),
        Err(_) => Err(format!("key lifetime {q} is out of range")),
    }
}

/// Our crypto line on a leg: the tag and the key we send with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCrypto {
    pub tag: u32,
    pub key: SrtpMasterKey,
    /// The m-line's profile is RTP/SAVP (else RTP/AVP with a crypto line: "best
    /// effort", as baresip's `mediaenc=srtp` and Asterisk offer it).
    pub savp: bool,
}

impl LocalCrypto {
    /// `a=crypto:...` with its line end.
    pub fn attribute(&self) -> String {
        use base64::Engine;
        let mut raw = [0u8; 30];
        raw[..16].copy_from_slice(self.key.key());
        raw[16..].copy_from_slice(self.key.salt());
        let mut out = String::with_capacity(80);
        let _ = write!(
            out,
            "a=crypto:{} {SUITE} inline:{}\r\n",
            self.tag,
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        use zeroize::Zeroize;
        raw.zeroize();
        out
    }

    pub fn profile(&self) -> &'static str {
        if self.savp {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        }
    }
}

/// How to answer an offer's crypto.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerPlan {
    Plain,
    /// Answer with our own key under the offer's tag; the peer sends with `remote`.
    Srtp {
        tag: u32,
        remote: SrtpMasterKey,
    },
    /// 488, with why.
    Refuse(String),
}

/// The answer to an offer on a leg. `secure_link`: the offer came over TLS. Callers
/// are never refused for offering no SRTP ("require" is about operators).
pub fn plan_answer(
    offer_savp: bool,
    crypto: &RemoteCrypto,
    secure_link: bool,
    mode: SrtpMode,
) -> AnswerPlan {
    if !secure_link || mode == SrtpMode::Off {
        if offer_savp {
            let why = if mode == SrtpMode::Off {
                "RTP/SAVP offered but SRTP is off here"
            } else {
                "RTP/SAVP offered without TLS: SDES keys need TLS signalling"
            };
            return AnswerPlan::Refuse(why.into());
        }
        return AnswerPlan::Plain;
    }
    match crypto {
        RemoteCrypto::Usable { tag, key } => AnswerPlan::Srtp {
            tag: *tag,
            remote: key.clone(),
        },
        RemoteCrypto::Unusable { why, our_suite } if offer_savp || *our_suite => {
            AnswerPlan::Refuse(why.clone())
        }
        RemoteCrypto::Unusable { .. } => AnswerPlan::Plain,
        RemoteCrypto::None if offer_savp => {
            AnswerPlan::Refuse("RTP/SAVP offered without a crypto line".into())
        }
        RemoteCrypto::None => AnswerPlan::Plain,
    }
}

/// What we offer on a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OfferPlan {
    #[default]
    Plain,
    /// RTP/AVP with a crypto line; a plain answer is accepted.
    BestEffort,
    /// RTP/SAVP with a crypto line; a plain answer ends the call.
    Required,
    /// SRTP is required but the leg is not TLS: no offer may be made.
    Impossible,
}

/// The offer to an operator's phone.
pub fn plan_operator_offer(secure_link: bool, mode: SrtpMode) -> OfferPlan {
    match (mode, secure_link) {
        (SrtpMode::Off, _) => OfferPlan::Plain,
        (SrtpMode::Offer, false) => OfferPlan::Plain,
        (SrtpMode::Offer, true) => OfferPlan::BestEffort,
        (SrtpMode::Require, true) => OfferPlan::Required,
        (SrtpMode::Require, false) => OfferPlan::Impossible,
    }
}

/// The offer in our 200 to a caller's INVITE without SDP: best effort at most.
pub fn plan_caller_offer(secure_link: bool, mode: SrtpMode) -> OfferPlan {
    if secure_link && mode != SrtpMode::Off {
        OfferPlan::BestEffort
    } else {
        OfferPlan::Plain
    }
}

/// The peer's key from an answer to our offer (`ours` is what we offered, None for a
/// plain offer); Ok(None) is plain RTP.
pub fn check_answer(
    answer_savp: bool,
    crypto: &RemoteCrypto,
    ours: Option<&LocalCrypto>,
    required: bool,
) -> Result<Option<SrtpMasterKey>, String> {
    let Some(ours) = ours else {
        if answer_savp {
            return Err("RTP/SAVP answer to a plain offer".into());
        }
        return Ok(None);
    };
    match crypto {
        RemoteCrypto::Usable { tag, key } if *tag == ours.tag => Ok(Some(key.clone())),
        RemoteCrypto::Usable { tag, .. } => Err(format!(
            "answer's crypto tag {tag} was not offered (offered {})",
            ours.tag
        )),
        RemoteCrypto::Unusable { why, .. } => Err(format!("answer's crypto line: {why}")),
        RemoteCrypto::None if required => {
            Err("the phone answered without SRTP (rtp.srtp = \"require\")".into())
        }
        RemoteCrypto::None if answer_savp => Err("RTP/SAVP answer without a crypto line".into()),
        RemoteCrypto::None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 bytes 01..1e.
    const KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e";

    fn line(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    fn master() -> SrtpMasterKey {
        let all: Vec<u8> = (1..=30).collect();
        SrtpMasterKey::from_concatenated(&all.try_into().unwrap())
    }

    #[test]
    fn a_usual_line_is_read() {
        let c = read_lines(&line(&format!("1 {SUITE} inline:{KEY}")));
        assert_eq!(
            c,
            RemoteCrypto::Usable {
                tag: 1,
                key: master()
            }
        );
        // Lifetimes a call cannot outlive are accepted.
        for lt in ["|2^31", "|2^48", "|4294967296"] {
            let c = read_lines(&line(&format!("7 {SUITE} inline:{KEY}{lt}")));
            assert!(matches!(c, RemoteCrypto::Usable { tag: 7, .. }), "{lt}");
        }
    }

    #[test]
    fn the_first_usable_line_wins_and_unknown_suites_are_skipped() {
        let c = read_lines(&[
            format!("1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}{KEY}"),
            format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"),
            format!("3 {SUITE} inline:{KEY}"),
            format!("4 {SUITE} inline:{KEY}"),
        ]);
        assert!(matches!(c, RemoteCrypto::Usable { tag: 3, .. }), "{c:?}");
        let c = read_lines(&line(&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}")));
        assert_eq!(
            c,
            RemoteCrypto::Unusable {
                why: "no supported crypto suite".into(),
                our_suite: false
            }
        );
    }

    #[test]
    fn hostile_lines_are_refused_with_a_reason() {
        let long = "A".repeat(5000);
        for (bad, expect) in [
            (format!("1 {SUITE} inline:AQID"), "not 40"),
            (format!("1 {SUITE} inline:{long}"), "crypto line of"),
            (
                format!("1 {SUITE} inline:!!!!BAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e"),
                "not base64",
            ),
            (format!("1 {SUITE} inline:{KEY}|2^20"), "below 2^31"),
            (
                format!("1 {SUITE} inline:{KEY}|2^4000000000"),
                "out of range",
            ),
            (format!("1 {SUITE} inline:{KEY}|2^x"), "not a number"),
            (format!("1 {SUITE} inline:{KEY}|2^99"), "out of range"),
            (format!("1 {SUITE} inline:{KEY}|1048576"), "below 2^31"),
            (
                format!("1 {SUITE} inline:{KEY}|99999999999999999999999"),
                "not a number",
            ),
            (format!("1 {SUITE} inline:{KEY}|1:4"), "MKI"),
            (format!("1 {SUITE} inline:{KEY}|2^31|1:4"), "MKI"),
            (
                format!("1 {SUITE} inline:{KEY};inline:{KEY}"),
                "several keys",
            ),
            (format!("1 {SUITE} uri:https://example.net/k"), "not inline"),
            (
                format!("1 {SUITE} inline:{KEY} UNENCRYPTED_SRTP"),
                "UNENCRYPTED_SRTP",
            ),
            (format!("1 {SUITE} inline:{KEY} KDR=1"), "KDR"),
            (format!("1 {SUITE}"), "without key parameters"),
            (format!("x {SUITE} inline:{KEY}"), "numeric tag"),
            (format!("1234567890 {SUITE} inline:{KEY}"), "numeric tag"),
            ("".to_string(), "numeric tag"),
            (format!("1 {SUITE} inline:"), "not 40"),
            (format!("1 {SUITE} inline:{}", "=".repeat(40)), "not base64"),
        ] {
            match read_lines(&line(&bad)) {
                RemoteCrypto::Unusable { why, .. } => {
                    assert!(why.contains(expect), "{bad:.80}: {why}")
                }
                other => panic!("{bad:.80}: {other:?}"),
            }
        }
    }

    #[test]
    fn many_lines_are_refused_as_a_whole() {
        let many: Vec<String> = (1..=17)
            .map(|i| format!("{i} {SUITE} inline:{KEY}"))
            .collect();
        assert!(matches!(
            read_lines(&many),
            RemoteCrypto::Unusable {
                our_suite: false,
                ..
            }
        ));
        assert!(matches!(
            read_lines(&many[..16]),
            RemoteCrypto::Usable { tag: 1, .. }
        ));
    }

    #[test]
    fn our_line_reads_back() {
        let ours = LocalCrypto {
            tag: 1,
            key: master(),
            savp: false,
        };
        let a = ours.attribute();
        assert_eq!(a, format!("a=crypto:1 {SUITE} inline:{KEY}\r\n"));
        let value = a.trim_end().strip_prefix("a=crypto:").unwrap();
        assert_eq!(
            read_lines(&line(value)),
            RemoteCrypto::Usable {
                tag: 1,
                key: master()
            }
        );
        assert!(
            !format!("{:?}", master()).contains('1'),
            "keys are not printed"
        );
    }

    #[test]
    fn answers_follow_link_mode_and_offer() {
        let usable = RemoteCrypto::Usable {
            tag: 5,
            key: master(),
        };
        let broken = RemoteCrypto::Unusable {
            why: "key is not base64".into(),
            our_suite: true,
        };
        let foreign = RemoteCrypto::Unusable {
            why: "no supported crypto suite".into(),
            our_suite: false,
        };
        use SrtpMode::*;
        // TLS, SRTP on: the offered key is used.
        for mode in [Offer, Require] {
            assert_eq!(
                plan_answer(false, &usable, true, mode),
                AnswerPlan::Srtp {
                    tag: 5,
                    remote: master()
                }
            );
            assert!(matches!(
                plan_answer(true, &usable, true, mode),
                AnswerPlan::Srtp { .. }
            ));
            // A plain caller is never refused.
            assert_eq!(
                plan_answer(false, &RemoteCrypto::None, true, mode),
                AnswerPlan::Plain
            );
            assert!(matches!(
                plan_answer(true, &RemoteCrypto::None, true, mode),
                AnswerPlan::Refuse(_)
            ));
            assert!(matches!(
                plan_answer(false, &broken, true, mode),
                AnswerPlan::Refuse(w) if w.contains("base64")
            ));
            assert_eq!(plan_answer(false, &foreign, true, mode), AnswerPlan::Plain);
            assert!(matches!(
                plan_answer(true, &foreign, true, mode),
                AnswerPlan::Refuse(_)
            ));
        }
        // Not TLS, or off: never a crypto line; RTP/SAVP cannot be answered.
        for (secure, mode) in [(false, Offer), (false, Require), (true, Off), (false, Off)] {
            assert_eq!(plan_answer(false, &usable, secure, mode), AnswerPlan::Plain);
            assert!(matches!(
                plan_answer(true, &usable, secure, mode),
                AnswerPlan::Refuse(_)
            ));
        }
    }

    #[test]
    fn offers_and_their_answers() {
        use SrtpMode::*;
        assert_eq!(plan_operator_offer(true, Off), OfferPlan::Plain);
        assert_eq!(plan_operator_offer(false, Offer), OfferPlan::Plain);
        assert_eq!(plan_operator_offer(true, Offer), OfferPlan::BestEffort);
        assert_eq!(plan_operator_offer(true, Require), OfferPlan::Required);
        assert_eq!(plan_operator_offer(false, Require), OfferPlan::Impossible);
        assert_eq!(plan_caller_offer(true, Require), OfferPlan::BestEffort);
        assert_eq!(plan_caller_offer(false, Require), OfferPlan::Plain);

        let ours = LocalCrypto {
            tag: OUR_TAG,
            key: master(),
            savp: true,
        };
        let answer = RemoteCrypto::Usable {
            tag: 1,
            key: master(),
        };
        assert_eq!(
            check_answer(true, &answer, Some(&ours), true),
            Ok(Some(master()))
        );
        assert_eq!(
            check_answer(false, &RemoteCrypto::None, Some(&ours), false),
            Ok(None)
        );
        assert!(check_answer(false, &RemoteCrypto::None, Some(&ours), true)
            .unwrap_err()
            .contains("require"));
        let wrong_tag = RemoteCrypto::Usable {
            tag: 2,
            key: master(),
        };
        assert!(check_answer(true, &wrong_tag, Some(&ours), true).is_err());
        assert!(check_answer(true, &RemoteCrypto::None, None, false).is_err());
        assert_eq!(check_answer(false, &answer, None, false), Ok(None));
    }
}
