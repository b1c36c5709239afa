//! Reference codes a caller can quote later: 6 random digits and a Damm check digit.
//!
//! The Damm check digit catches every single wrong digit and every swap of two
//! adjacent digits, the two mistakes people make most when they read a number back,
//! so a misheard code is recognised as invalid instead of finding nothing or the
//! wrong call. Seven digits stay speakable.
//!
//! Pure code: randomness comes in as an argument, and the set of codes already given
//! out ([`ReferenceBook`]) is filled by the host from the database. The database
//! enforces uniqueness too (a unique index); the book is what lets the running
//! server avoid handing out a code that is already stored before a caller hears it.
//!
//! Codes written by older versions are 6 random digits without a check digit; they
//! are still looked up as they are ([`Reference::Legacy`]).

use rand::Rng;

/// Digits of a code: the random part and the check digit.
pub const CODE_DIGITS: usize = 7;
const RANDOM_DIGITS: usize = CODE_DIGITS - 1;
/// How many distinct codes exist: one per value of the random part.
pub const CODE_SPACE: u32 = 1_000_000;
/// Length of the codes older versions gave out.
pub const LEGACY_DIGITS: usize = 6;

/// The Damm quasigroup of order 10 (weakly totally anti-symmetric, zero diagonal).
const DAMM: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

/// The interim digit after running `digits` (ASCII 0-9) through the table; a string
/// that ends in its own check digit gives 0.
fn damm_interim(digits: &[u8]) -> u8 {
    digits
        .iter()
        .fold(0, |interim, d| DAMM[interim as usize][(d - b'0') as usize])
}

/// The check digit to append to `digits` (ASCII 0-9 only).
pub fn check_digit(digits: &str) -> Option<char> {
    let bytes = digits.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(char::from(b'0' + damm_interim(bytes)))
}

/// The code for a random part `n` (0..CODE_SPACE).
pub fn code_for(n: u32) -> String {
    let body = format!("{:0width$}", n % CODE_SPACE, width = RANDOM_DIGITS);
    let check = check_digit(&body).unwrap_or('0');
    format!("{body}{check}")
}

/// What a string typed or read back by a person is, as a reference code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A 7-digit code whose check digit holds.
    Valid(String),
    /// A 6-digit code from an older version: no check digit to verify.
    Legacy(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("a reference code has only digits")]
    NotDigits,
    #[error("a reference code has 7 digits (6 in calls before codes were checked), not {0}")]
    WrongLength(usize),
    #[error("the check digit does not match: one digit is wrong or two are swapped")]
    CheckDigit,
}

/// Checks a code as typed: spaces and dashes people use to group digits are allowed.
pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
    let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReferenceError::NotDigits);
    }
    match digits.len() {
        CODE_DIGITS if damm_interim(digits.as_bytes()) == 0 => Ok(Reference::Valid(digits)),
        CODE_DIGITS => Err(ReferenceError::CheckDigit),
        LEGACY_DIGITS => Ok(Reference::Legacy(digits)),
        n => Err(ReferenceError::WrongLength(n)),
    }
}

/// True for a 7-digit code whose check digit holds.
pub fn is_valid(code: &str) -> bool {
    matches!(parse(code), Ok(Reference::Valid(c)) if c == code)
}

/// The valid codes one slip away from a 7-digit code whose check digit fails: one
/// digit changed (the check digit included) or two neighbours swapped. These are the
/// codes a person may have meant; sorted, without repeats. Empty for anything that
/// is not 7 digits with a failing check.
pub fn corrections(input: &str) -> Vec<String> {
    let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !matches!(parse(&digits), Err(ReferenceError::CheckDigit)) {
        return Vec::new();
    }
    let bytes = digits.as_bytes();
    let mut out = std::collections::BTreeSet::new();
    for i in 0..bytes.len() {
        for d in b'0'..=b'9' {
            if d != bytes[i] {
                let mut c = bytes.to_vec();
                c[i] = d;
                if damm_interim(&c) == 0 {
                    out.insert(String::from_utf8(c).unwrap_or_default());
                }
            }
        }
        if i + 1 < bytes.len() && bytes[i] != bytes[i + 1] {
            let mut c = bytes.to_vec();
            c.swap(i, i + 1);
            if damm_interim(&c) == 0 {
                out.insert(String::from_utf8(c).unwrap_or_default());
            }
        }
    }
    out.into_iter().collect()
}

/// Every code already given out, so a new one is never a repeat. One bit per
/// possible code (125 kB).
#[derive(Clone)]
pub struct ReferenceBook {
    used: Vec<u64>,
    count: u32,
}

impl Default for ReferenceBook {
    fn default() -> Self {
        ReferenceBook {
            used: vec![0; CODE_SPACE.div_ceil(64) as usize],
            count: 0,
        }
    }
}

impl std::fmt::Debug for ReferenceBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReferenceBook({} of {CODE_SPACE} used)", self.count)
    }
}

impl ReferenceBook {
    /// A book of the codes in `stored`; anything that is not a valid 7-digit code
    /// (legacy codes included) cannot collide with a new one and is skipped.
    pub fn from_stored<'a>(stored: impl IntoIterator<Item = &'a str>) -> Self {
        let mut book = ReferenceBook::default();
        for code in stored {
            if is_valid(code) {
                if let Ok(n) = code[..RANDOM_DIGITS].parse::<u32>() {
                    book.mark(n);
                }
            }
        }
        book
    }

    pub fn used(&self) -> u32 {
        self.count
    }

    fn is_used(&self, n: u32) -> bool {
        self.used[(n / 64) as usize] & (1 << (n % 64)) != 0
    }

    fn mark(&mut self, n: u32) {
        if !self.is_used(n) {
            self.used[(n / 64) as usize] |= 1 << (n % 64);
            self.count += 1;
        }
    }

    /// A code never given out before, now marked as given; `None` once every code is
    /// taken. Random probes first; when the book is nearly full, the first free code
    /// after a random start, so the cost stays bounded.
    pub fn allocate(&mut self, rng: &mut impl Rng) -> Option<String> {
        if self.count >= CODE_SPACE {
            return None;
        }
        for _ in 0..32 {
            let n = rng.gen_range(0..CODE_SPACE);
            if !self.is_used(n) {
                self.mark(n);
                return Some(code_for(n));
            }
        }
        // A word at a time: 64 codes per step.
        let words = self.used.len();
        let start = rng.gen_range(0..words);
        let (index, word) = (0..words)
            .map(|i| (start + i) % words)
            .map(|i| (i, self.used[i]))
            .find(|(_, w)| *w != u64::MAX)?;
        let n = index as u32 * 64 + word.trailing_ones();
        if n >= CODE_SPACE {
            return None;
        }
        self.mark(n);
        Some(code_for(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn known_damm_values() {
        // The worked example of Damm's algorithm: 572 -> check digit 4.
        assert_eq!(check_digit("572"), Some('4'));
        assert_eq!(damm_interim(b"5724"), 0);
        assert_eq!(check_digit(""), None);
        assert_eq!(check_digit("12a"), None);
        assert_eq!(code_for(0), "0000000");
        assert_eq!(code_for(57_200).len(), CODE_DIGITS);
    }

    /// 100,000 codes from one book: all distinct and all valid; every single-digit
    /// error and every swap of two different adjacent digits is refused.
    #[test]
    fn a_hundred_thousand_codes_are_unique_and_every_slip_is_caught() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let mut book = ReferenceBook::default();
        let mut seen = HashSet::new();
        let (mut single, mut swaps) = (0u64, 0u64);
        for _ in 0..100_000 {
            let code = book.allocate(&mut rng).expect("codes left");
            assert_eq!(code.len(), CODE_DIGITS);
            assert_eq!(parse(&code), Ok(Reference::Valid(code.clone())));
            let bytes = code.as_bytes().to_vec();
            for i in 0..CODE_DIGITS {
                for d in b'0'..=b'9' {
                    if d == bytes[i] {
                        continue;
                    }
                    let mut typo = bytes.clone();
                    typo[i] = d;
                    let typo = String::from_utf8(typo).unwrap();
                    assert_eq!(
                        parse(&typo),
                        Err(ReferenceError::CheckDigit),
                        "{code} -> {typo}"
                    );
                    single += 1;
                }
                if i + 1 < CODE_DIGITS && bytes[i] != bytes[i + 1] {
                    let mut swapped = bytes.clone();
                    swapped.swap(i, i + 1);
                    let swapped = String::from_utf8(swapped).unwrap();
                    assert_eq!(
                        parse(&swapped),
                        Err(ReferenceError::CheckDigit),
                        "{code} -> {swapped}"
                    );
                    swaps += 1;
                }
            }
            assert!(seen.insert(code), "a code was given twice");
        }
        assert_eq!(book.used(), 100_000);
        assert_eq!(single, 100_000 * 63);
        assert!(swaps > 100_000 * 5, "{swaps} swaps checked");
    }

    #[test]
    fn a_book_from_the_database_never_repeats_a_stored_code() {
        // Half the space already stored: every new code is outside it.
        let stored: Vec<String> = (0..CODE_SPACE).step_by(2).map(code_for).collect();
        let mut book = ReferenceBook::from_stored(stored.iter().map(String::as_str).chain([
            "123456",  // legacy: ignored
            "1234567", // wrong check digit: ignored
            "",
        ]));
        assert_eq!(book.used(), CODE_SPACE / 2);
        let stored: HashSet<String> = stored.into_iter().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let code = book.allocate(&mut rng).unwrap();
            assert!(!stored.contains(&code), "{code} was already stored");
        }
    }

    #[test]
    fn a_full_book_gives_no_code_and_a_nearly_full_one_finds_the_last() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let last = 765_432;
        let mut book = ReferenceBook::from_stored(
            (0..CODE_SPACE)
                .filter(|&n| n != last)
                .map(code_for)
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        );
        assert_eq!(book.allocate(&mut rng), Some(code_for(last)));
        assert_eq!(book.allocate(&mut rng), None);
    }

    #[test]
    fn typed_codes() {
        let code = code_for(482_113);
        let spaced = format!("{} {}-{}", &code[..3], &code[3..5], &code[5..]);
        assert_eq!(parse(&spaced), Ok(Reference::Valid(code)));
        assert_eq!(parse("482113"), Ok(Reference::Legacy("482113".into())));
        assert_eq!(parse("48211"), Err(ReferenceError::WrongLength(5)));
        assert_eq!(parse("48211345"), Err(ReferenceError::WrongLength(8)));
        assert_eq!(parse("48a1134"), Err(ReferenceError::NotDigits));
        assert_eq!(parse(""), Err(ReferenceError::NotDigits));
        assert_eq!(parse("４８２１１３４"), Err(ReferenceError::NotDigits));
    }

    #[test]
    fn corrections_find_the_meant_code() {
        let code = code_for(482_113);
        assert!(corrections(&code).is_empty(), "a valid code needs none");
        assert!(
            corrections("123456").is_empty(),
            "legacy codes have no check"
        );
        assert!(corrections("12a4567").is_empty());
        let b = code.as_bytes();
        for i in 0..7 {
            for d in b'0'..=b'9' {
                if d == b[i] {
                    continue;
                }
                let mut typo = b.to_vec();
                typo[i] = d;
                let typo = String::from_utf8(typo).unwrap();
                let found = corrections(&typo);
                assert!(found.contains(&code), "{typo} -> {found:?}");
                // Each candidate is valid and one change or swap away.
                assert!(found.iter().all(|c| is_valid(c)));
                assert!(found.len() <= 7 * 9 + 6);
            }
        }
        let mut swapped = b.to_vec();
        let i = (0..6).find(|&i| b[i] != b[i + 1]).unwrap();
        swapped.swap(i, i + 1);
        let swapped = String::from_utf8(swapped).unwrap();
        assert!(corrections(&swapped).contains(&code));
        // Grouping typed by people is accepted.
        let spaced = format!("{} {}", &swapped[..3], &swapped[3..]);
        assert!(corrections(&spaced).contains(&code));
    }
}
