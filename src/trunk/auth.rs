//! Digest authentication, client side (RFC 3261 §22.2-22.4, RFC 2617 qop=auth, RFC 8760
//! SHA-256): reading a provider's `WWW-Authenticate` / `Proxy-Authenticate` challenges
//! and answering the one we prefer. The hashes are `sip::digest`'s, so both sides of
//! the hotline compute the same thing.

use crate::sip::digest::{self, Algorithm, QopAuth};
use crate::sip::scan;

/// Longest challenge looked at; a provider never needs more.
const MAX_CHALLENGE_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered qop=auth (answered with nc and cnonce).
    pub qop_auth: bool,
    /// The previous credentials were right but their nonce had expired.
    pub stale: bool,
    /// From a 407 (answered in `Proxy-Authorization`).
    pub proxy: bool,
}

/// One challenge header value; None when it is not Digest, is malformed, or asks for
/// what we cannot do (another algorithm, only qop=auth-int, the `-sess` variants).
pub fn parse_challenge(value: &str, proxy: bool) -> Option<Challenge> {
    if value.len() > MAX_CHALLENGE_LEN {
        return None;
    }
    let value = value.trim_start();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let (mut realm, mut nonce, mut opaque, mut algorithm, mut qop, mut stale) =
        (None, None, None, None, None, false);
    for element in scan::split_unquoted(rest, ',', false) {
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let (name, raw) = element.split_once('=')?;
        let raw = raw.trim();
        let value = if raw.starts_with('"') {
            scan::unquote(raw)?
        } else {
            raw.to_string()
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "nonce" => nonce = Some(value),
            "opaque" => opaque = Some(value),
            "algorithm" => algorithm = Some(value),
            "qop" => qop = Some(value),
            "stale" => stale = value.eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    let algorithm = match algorithm {
        None => Algorithm::Md5,
        Some(a) => Algorithm::from_token(&a)?,
    };
    let qop_auth = match qop {
        None => false,
        Some(q) => {
            // A list such as "auth,auth-int": we answer auth if it is there.
            if !q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                return None;
            }
            true
        }
    };
    let nonce = nonce?;
    if nonce.is_empty() || nonce.contains(['\r', '\n', '"']) {
        return None;
    }
    Some(Challenge {
        realm: realm?,
        nonce,
        opaque,
        algorithm,
        qop_auth,
        stale,
        proxy,
    })
}

/// The challenge to answer among all of a response's: SHA-256 before MD5.
pub fn preferred(challenges: impl IntoIterator<Item = Challenge>) -> Option<Challenge> {
    challenges
        .into_iter()
        .max_by_key(|c| matches!(c.algorithm, Algorithm::Sha256))
}

/// The header name and value answering `ch` for `method` on `uri`.
pub fn authorization(
    ch: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> (&'static str, String) {
    let ha1 = digest::ha1(ch.algorithm, user, &ch.realm, password);
    let qop = ch.qop_auth.then(|| QopAuth {
        nc: format!("{nc:08x}"),
        count: nc,
        cnonce: cnonce.to_string(),
    });
    let response =
        digest::expected_response(ch.algorithm, &ha1, method, uri, &ch.nonce, qop.as_ref());
    let mut v = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm={}",
        quote(user),
        quote(&ch.realm),
        quote(&ch.nonce),
        quote(uri),
        ch.algorithm.as_str()
    );
    if let Some(q) = &qop {
        v.push_str(&format!(
            ", qop=auth, nc={}, cnonce={}",
            q.nc,
            quote(&q.cnonce)
        ));
    }
    if let Some(o) = &ch.opaque {
        v.push_str(&format!(", opaque={}", quote(o)));
    }
    let name = if ch.proxy {
        "Proxy-Authorization"
    } else {
        "Authorization"
    };
    (name, v)
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| !matches!(c, '\r' | '\n')) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_challenges_and_prefers_sha256() {
        let md5 = parse_challenge(
            "Digest realm=\"sip.example.net\", nonce=\"abc,def\", qop=\"auth,auth-int\", opaque=\"xy\"",
            false,
        )
        .unwrap();
        assert_eq!(md5.realm, "sip.example.net");
        assert_eq!(md5.nonce, "abc,def");
        assert_eq!(md5.algorithm, Algorithm::Md5);
        assert!(md5.qop_auth && !md5.stale);
        let sha = parse_challenge(
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256, qop=\"auth\", stale=TRUE",
            true,
        )
        .unwrap();
        assert!(sha.stale && sha.proxy);
        assert_eq!(preferred([md5.clone(), sha.clone()]), Some(sha));
        for bad in [
            "Basic realm=\"r\"",
            "Digest realm=\"r\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256",
            "Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"",
            "Digest realm=\"r, nonce=\"n\"",
            "Digest",
        ] {
            assert!(parse_challenge(bad, false).is_none(), "{bad}");
        }
    }

    /// The answer verifies against the server side of `sip::digest`, for both
    /// algorithms, with and without qop.
    #[test]
    fn answers_verify_against_the_server_side() {
        for (alg, qop) in [
            (Algorithm::Md5, true),
            (Algorithm::Md5, false),
            (Algorithm::Sha256, true),
        ] {
            let ch = Challenge {
                realm: "sip.example.net".into(),
                nonce: "n0nce".into(),
                opaque: Some("op".into()),
                algorithm: alg,
                qop_auth: qop,
                stale: false,
                proxy: false,
            };
            let (name, value) = authorization(
                &ch,
                "hotline",
                "s3cret",
                "REGISTER",
                "sip:sip.example.net",
                2,
                "c1",
            );
            assert_eq!(name, "Authorization");
            let creds = digest::parse_authorization(&value).unwrap();
            assert_eq!(creds.username, "hotline");
            assert_eq!(creds.opaque.as_deref(), Some("op"));
            assert_eq!(creds.qop.as_ref().map(|q| q.count), qop.then_some(2));
            let ha1 = digest::ha1(alg, "hotline", "sip.example.net", "s3cret");
            let expected = digest::expected_response(
                alg,
                &ha1,
                "REGISTER",
                &creds.uri,
                &creds.nonce,
                creds.qop.as_ref(),
            );
            assert_eq!(creds.response, expected);
        }
    }
}
