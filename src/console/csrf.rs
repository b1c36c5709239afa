//! CSRF tokens. A logged-in session has its own random token, sent back in a form
//! field or the `X-CSRF-Token` header of every state-changing request. The login form
//! (no session yet) gets a token bound to a random pre-login cookie by an HMAC under
//! a key the server draws at start. Comparisons take constant time. Pure code.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Name of the form field and of the header.
pub const FIELD: &str = "csrf";
pub const HEADER: &str = "x-csrf-token";

/// Whether a presented token equals the expected one (constant time).
pub fn matches(expected: &str, presented: Option<&str>) -> bool {
    match presented {
        Some(p) if !expected.is_empty() => expected.as_bytes().ct_eq(p.as_bytes()).into(),
        _ => false,
    }
}

/// The login form's token for a pre-login cookie value.
pub fn login_token(key: &[u8; 32], pre_login: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(b"hotline console login\0");
    mac.update(pre_login.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether a login form's token belongs to its pre-login cookie.
pub fn login_token_ok(key: &[u8; 32], pre_login: Option<&str>, presented: Option<&str>) -> bool {
    match pre_login {
        Some(pre) if pre.len() >= 32 => matches(&login_token(key, pre), presented),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        assert!(matches("abc", Some("abc")));
        assert!(!matches("abc", Some("abd")));
        assert!(!matches("abc", Some("ab")));
        assert!(!matches("abc", None));
        assert!(
            !matches("", Some("")),
            "an empty expected token never matches"
        );
    }

    #[test]
    fn login_tokens_are_bound_to_cookie_and_key() {
        let key = [7u8; 32];
        let pre = "0123456789abcdef0123456789abcdef";
        let t = login_token(&key, pre);
        assert_eq!(t.len(), 64);
        assert!(login_token_ok(&key, Some(pre), Some(&t)));
        assert!(!login_token_ok(&[8u8; 32], Some(pre), Some(&t)));
        let other = "1123456789abcdef0123456789abcdef";
        assert!(!login_token_ok(&key, Some(other), Some(&t)));
        assert!(!login_token_ok(&key, None, Some(&t)));
        assert!(!login_token_ok(&key, Some(pre), None));
        assert!(!login_token_ok(
            &key,
            Some("short"),
            Some(&login_token(&key, "short"))
        ));
    }
}
