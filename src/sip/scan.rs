//! The one quote-aware scanner of header values: RFC 3261 quoted-strings (with
//! backslash escapes) are opaque, and optionally so is whatever sits between `<` and
//! `>`. Splitting a list at commas, parameters at semicolons, finding a `<` outside a
//! display name and reading a digest parameter's quoted value all go through here.
//!
//! Works on `&str` by byte index; everything the scanner treats specially is ASCII, so
//! indexes always fall on character boundaries.

/// Calls `f(index, char)` for each character outside quoted strings (and outside
/// `<...>` when `angle` is set), stopping early when `f` returns true. Returns whether
/// every quote was closed.
fn scan(s: &str, angle: bool, mut f: impl FnMut(usize, char) -> bool) -> bool {
    let mut in_quote = false;
    let mut escaped = false;
    let mut in_angle = false;
    for (i, c) in s.char_indices() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quote = false;
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '<' if angle => in_angle = true,
            '>' if angle => in_angle = false,
            _ if in_angle => {}
            _ => {
                if f(i, c) {
                    return true;
                }
            }
        }
    }
    !in_quote
}

/// Splits at `sep` outside quoted strings (and outside `<...>` with `angle`).
pub fn split_unquoted(s: &str, sep: char, angle: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    scan(s, angle, |i, c| {
        if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
        false
    });
    out.push(&s[start..]);
    out
}

/// The first `target` outside quoted strings; Err when a quote is left open before it.
pub fn find_unquoted(s: &str, target: char) -> Result<Option<usize>, &'static str> {
    let mut found = None;
    let closed = scan(s, false, |i, c| {
        if c == target {
            found = Some(i);
            return true;
        }
        false
    });
    match (found, closed) {
        (Some(i), _) => Ok(Some(i)),
        (None, true) => Ok(None),
        (None, false) => Err("unterminated quoted string"),
    }
}

/// Index of the quote that closes the quoted string `s` starts with.
pub fn closing_quote(s: &str) -> Option<usize> {
    if !s.starts_with('"') {
        return None;
    }
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some(i);
        }
    }
    None
}

/// The content of a quoted string that makes up all of `s`, escapes removed.
pub fn unquote(s: &str) -> Option<String> {
    if closing_quote(s)? != s.len() - 1 {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s[1..s.len() - 1].chars() {
        if !escaped && c == '\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_angles_hide_separators() {
        assert_eq!(
            split_unquoted("\"a, b\" <sip:x@y;p=1,2>, <sip:z@w>", ',', true),
            vec!["\"a, b\" <sip:x@y;p=1,2>", " <sip:z@w>"]
        );
        assert_eq!(
            split_unquoted("a;b=\"x;y\";c", ';', false),
            vec!["a", "b=\"x;y\"", "c"]
        );
        assert_eq!(
            split_unquoted("a=\"\\\";\";b", ';', false),
            vec!["a=\"\\\";\"", "b"]
        );
        assert_eq!(find_unquoted("\"<x>\" <sip:a>", '<'), Ok(Some(6)));
        assert_eq!(
            find_unquoted("\"<x> <sip:a>", '<'),
            Err("unterminated quoted string")
        );
        assert_eq!(find_unquoted("sip:a", '<'), Ok(None));
        assert_eq!(closing_quote("\"a\\\"b\" c"), Some(5));
        assert_eq!(closing_quote("\"open"), None);
        assert_eq!(unquote("\"a\\\"b\\\\\""), Some("a\"b\\".to_string()));
        assert_eq!(unquote("\"a\" b"), None);
        assert_eq!(
            unquote("\"\u{441}\u{43e}\""),
            Some("\u{441}\u{43e}".to_string())
        );
    }
}
