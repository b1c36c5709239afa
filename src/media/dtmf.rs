//! Types and tables shared by every DTMF source: the digit event handed to the call
//! logic, the RFC 4733 event-code mapping, the keypad frequency grid and the dBm0
//! level reference. It must not hold per-call state or know about any transport.

/// Digits in RFC 4733 event-code order (codes 0..=15).
pub const DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// Low ("row") group frequencies in Hz.
pub const ROW_FREQS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// High ("column") group frequencies in Hz.
pub const COL_FREQS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// Keypad layout, indexed `[row][col]`.
pub const KEYPAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Peak amplitude of a 0 dBm0 sine in 16-bit linear PCM.
///
/// Reference: G.711 puts the µ-law overload point (a full-scale sine) at +3.17 dBm0;
/// mapping full scale to ±32767 gives 32767 · 10^(−3.17/20) ≈ 22 748 (RMS ≈ 16 085).
/// A-law's +3.14 dBm0 differs by 0.03 dB, which no threshold here is sensitive to.
pub const DBM0_PEAK: f32 = 22_748.0;

/// Peak amplitude of a sine at `level_dbm0`.
pub fn dbm0_to_peak(level_dbm0: f32) -> f32 {
    DBM0_PEAK * 10f32.powf(level_dbm0 / 20.0)
}

/// RFC 4733 event code (0..=15) to digit.
pub fn event_to_digit(code: u8) -> Option<char> {
    DIGITS.get(usize::from(code)).copied()
}

/// Digit to RFC 4733 event code; `a-d` are accepted as `A-D`.
pub fn digit_to_event(digit: char) -> Option<u8> {
    let digit = digit.to_ascii_uppercase();
    DIGITS.iter().position(|&d| d == digit).map(|i| i as u8)
}

/// Keypad position `(row, col)` of a digit.
pub fn digit_position(digit: char) -> Option<(usize, usize)> {
    let digit = digit.to_ascii_uppercase();
    (0..16)
        .map(|i| (i / 4, i % 4))
        .find(|&(r, c)| KEYPAD[r][c] == digit)
}

/// Low and high tone frequencies of a digit, in Hz.
pub fn digit_frequencies(digit: char) -> Option<(f32, f32)> {
    digit_position(digit).map(|(r, c)| (ROW_FREQS[r], COL_FREQS[c]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_round_trip() {
        for code in 0..16u8 {
            let d = event_to_digit(code).expect("codes 0..=15 are digits");
            assert_eq!(digit_to_event(d), Some(code));
        }
        assert_eq!(event_to_digit(10), Some('*'));
        assert_eq!(event_to_digit(11), Some('#'));
        assert_eq!(event_to_digit(15), Some('D'));
        assert_eq!(event_to_digit(16), None);
        assert_eq!(digit_to_event('b'), Some(13));
        assert_eq!(digit_to_event('E'), None);
        assert_eq!(digit_to_event('\u{0660}'), None);
    }

    #[test]
    fn keypad_frequencies() {
        assert_eq!(digit_frequencies('1'), Some((697.0, 1209.0)));
        assert_eq!(digit_frequencies('0'), Some((941.0, 1336.0)));
        assert_eq!(digit_frequencies('#'), Some((941.0, 1477.0)));
        assert_eq!(digit_frequencies('d'), Some((941.0, 1633.0)));
        assert_eq!(digit_frequencies('x'), None);
        for d in DIGITS {
            assert!(digit_position(d).is_some(), "{d}");
        }
    }

    #[test]
    fn level_reference() {
        assert!((dbm0_to_peak(0.0) - DBM0_PEAK).abs() < 0.01);
        // Full scale is +3.17 dBm0.
        assert!((dbm0_to_peak(3.17) - 32767.0).abs() < 5.0);
        assert!((dbm0_to_peak(-20.0) - DBM0_PEAK / 10.0).abs() < 0.01);
    }
}
