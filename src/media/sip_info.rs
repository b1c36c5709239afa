//! DTMF carried in SIP INFO bodies (`application/dtmf-relay` and `application/dtmf`).
//! It parses a body that the SIP layer has already extracted; it must not build
//! responses or track dialogs (the SIP layer answers 415 on
//! [`DtmfInfoError::UnsupportedContentType`] and 400 on the other errors).

use super::dtmf::event_to_digit;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfInfoError {
    /// Not a DTMF content type.
    UnsupportedContentType,
    /// A dtmf-relay body without a `Signal=` line, or an empty body.
    MissingSignal,
    /// The signal is not a DTMF digit or event code 0..=15.
    InvalidSignal,
}

impl fmt::Display for DtmfInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnsupportedContentType => "unsupported content type for DTMF INFO",
            Self::MissingSignal => "DTMF INFO body has no signal",
            Self::InvalidSignal => "DTMF INFO signal is not a DTMF digit",
        })
    }
}

impl std::error::Error for DtmfInfoError {}

/// Parses an INFO body into the digit and, when the body gives one, its duration
/// in milliseconds. `content_type` is the header value; case and parameters are
/// ignored.
pub fn parse_dtmf_info(
    content_type: &str,
    body: &[u8],
) -> Result<(char, Option<u32>), DtmfInfoError> {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("application/dtmf-relay") {
        parse_relay(body)
    } else if media_type.eq_ignore_ascii_case("application/dtmf") {
        let value = body.trim_ascii();
        if value.is_empty() {
            return Err(DtmfInfoError::MissingSignal);
        }
        // Some phones send a dtmf-relay style body under this type.
        if value.contains(&b'=') {
            return parse_relay(body);
        }
        parse_signal(value).map(|d| (d, None))
    } else {
        Err(DtmfInfoError::UnsupportedContentType)
    }
}

/// `Signal=<digit>` and optional `Duration=<ms>` lines, separated by CRLF or LF.
fn parse_relay(body: &[u8]) -> Result<(char, Option<u32>), DtmfInfoError> {
    let mut signal = None;
    let mut duration = None;
    for line in body.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (line[..eq].trim_ascii(), line[eq + 1..].trim_ascii());
        if key.eq_ignore_ascii_case(b"signal") && signal.is_none() {
            signal = Some(parse_signal(value)?);
        } else if key.eq_ignore_ascii_case(b"duration") && duration.is_none() {
            // A malformed duration should not cost the caller the digit.
            duration = parse_u32(value);
        }
    }
    signal
        .map(|d| (d, duration))
        .ok_or(DtmfInfoError::MissingSignal)
}

/// A keypad character, or an RFC 4733 event code (`10` is `*`, `11` is `#`).
fn parse_signal(value: &[u8]) -> Result<char, DtmfInfoError> {
    match value {
        [] => Err(DtmfInfoError::MissingSignal),
        [c] => match c.to_ascii_uppercase() {
            c @ (b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D') => Ok(char::from(c)),
            _ => Err(DtmfInfoError::InvalidSignal),
        },
        _ => parse_u32(value)
            .and_then(|code| u8::try_from(code).ok())
            .and_then(event_to_digit)
            .ok_or(DtmfInfoError::InvalidSignal),
    }
}

fn parse_u32(value: &[u8]) -> Option<u32> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "application/dtmf-relay";

    #[test]
    fn dtmf_relay_bodies() {
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=5\r\nDuration=160\r\n"),
            Ok(('5', Some(160)))
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal= *\r\nDuration= 250"),
            Ok(('*', Some(250)))
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"signal=#\nduration=100\n"),
            Ok(('#', Some(100)))
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"  SIGNAL  =  b \r\n"),
            Ok(('B', None))
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=10\r\nDuration=80"),
            Ok(('*', Some(80)))
        );
        assert_eq!(parse_dtmf_info(RELAY, b"Signal=11"), Ok(('#', None)));
        assert_eq!(parse_dtmf_info(RELAY, b"Signal=15"), Ok(('D', None)));
        assert_eq!(parse_dtmf_info(RELAY, b"Signal=05"), Ok(('5', None)));
        assert_eq!(
            parse_dtmf_info(RELAY, b"Duration=160\r\nSignal=0\r\n"),
            Ok(('0', Some(160)))
        );
        // A bad duration keeps the digit.
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=1\r\nDuration=-5"),
            Ok(('1', None))
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=1\r\nDuration=99999999999"),
            Ok(('1', None))
        );
    }

    #[test]
    fn dtmf_relay_errors() {
        assert_eq!(
            parse_dtmf_info(RELAY, b""),
            Err(DtmfInfoError::MissingSignal)
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Duration=160"),
            Err(DtmfInfoError::MissingSignal)
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=\r\n"),
            Err(DtmfInfoError::MissingSignal)
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=16"),
            Err(DtmfInfoError::InvalidSignal)
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=E"),
            Err(DtmfInfoError::InvalidSignal)
        );
        assert_eq!(
            parse_dtmf_info(RELAY, b"Signal=12a"),
            Err(DtmfInfoError::InvalidSignal)
        );
        assert_eq!(
            parse_dtmf_info(RELAY, "Signal=٣".as_bytes()),
            Err(DtmfInfoError::InvalidSignal)
        );
    }

    #[test]
    fn plain_dtmf_bodies() {
        let ct = "application/dtmf";
        assert_eq!(parse_dtmf_info(ct, b"7"), Ok(('7', None)));
        assert_eq!(parse_dtmf_info(ct, b" #\r\n"), Ok(('#', None)));
        assert_eq!(parse_dtmf_info(ct, b"11"), Ok(('#', None)));
        assert_eq!(parse_dtmf_info(ct, b"a"), Ok(('A', None)));
        assert_eq!(
            parse_dtmf_info(ct, b"Signal=3\nDuration=100"),
            Ok(('3', Some(100)))
        );
        assert_eq!(parse_dtmf_info(ct, b""), Err(DtmfInfoError::MissingSignal));
        assert_eq!(
            parse_dtmf_info(ct, b"77"),
            Err(DtmfInfoError::InvalidSignal)
        );
    }

    #[test]
    fn content_type_matching() {
        let body = b"Signal=9";
        assert_eq!(
            parse_dtmf_info("Application/DTMF-Relay", body),
            Ok(('9', None))
        );
        assert_eq!(
            parse_dtmf_info(" application/dtmf-relay ; charset=utf-8", body),
            Ok(('9', None))
        );
        assert_eq!(
            parse_dtmf_info("APPLICATION/DTMF;x=1", b"9"),
            Ok(('9', None))
        );
        for ct in [
            "application/sdp",
            "text/plain",
            "",
            "application/dtmf-relayx",
            ";",
        ] {
            assert_eq!(
                parse_dtmf_info(ct, body),
                Err(DtmfInfoError::UnsupportedContentType),
                "{ct}"
            );
        }
    }

    #[test]
    fn random_bodies_do_not_panic() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Bias towards bytes that matter to the parser.
        const ALPHABET: &[u8] = b"Signal=Duration=0123456789*#ABCDabcdE \t\r\n=;\xff\xc3";
        let mut ok = 0;
        for _ in 0..50_000 {
            let len = (next() % 40) as usize;
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r & 1 == 0 {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    } else {
                        (r >> 8) as u8
                    }
                })
                .collect();
            for ct in [RELAY, "application/dtmf"] {
                ok += usize::from(parse_dtmf_info(ct, &body).is_ok());
            }
        }
        assert!(ok > 0);
    }
}
