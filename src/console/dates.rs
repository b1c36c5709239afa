//! Dates as people on the console mean them: days in the console's time zone
//! (`console.time_zone`, default the system's), turned into the UTC bounds the store
//! filters on, and stored UTC times shown as local wall-clock times. Pure code: the
//! time zone is loaded once at start, and "now" is an argument.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
}

/// The form the store's bounds take: UTC, no zone suffix (see `store::console::CallFilter`).
const BOUND: &str = "%Y-%m-%dT%H:%M:%S";

impl Calendar {
    /// `name` is an IANA zone ("Europe/Kyiv"); empty means the system's zone.
    pub fn load(name: &str) -> Result<Calendar, String> {
        let tz = if name.is_empty() {
            TimeZone::try_system().unwrap_or(TimeZone::UTC)
        } else if name.eq_ignore_ascii_case("UTC") {
            TimeZone::UTC
        } else {
            TimeZone::get(name).map_err(|e| format!("\"{name}\" is not a known time zone ({e})"))?
        };
        Ok(Calendar { tz })
    }

    pub fn utc() -> Calendar {
        Calendar { tz: TimeZone::UTC }
    }

    pub fn zone_name(&self) -> String {
        self.tz.iana_name().unwrap_or("UTC").to_string()
    }

    /// The UTC instant a local day starts at, as a store bound.
    fn start_of(&self, day: Date) -> Result<String, String> {
        let z = day
            .to_zoned(self.tz.clone())
            .map_err(|e| format!("{day}: {e}"))?;
        Ok(z.timestamp().strftime(BOUND).to_string())
    }

    /// Store bounds (since, until) of the local days `from` to `to`, both included.
    pub fn days(&self, from: Date, to: Date) -> Result<(String, String), String> {
        Ok((self.since(from)?, self.until(to)?))
    }

    /// The store bound for "from this local day on".
    pub fn since(&self, from: Date) -> Result<String, String> {
        self.start_of(from)
    }

    /// The store bound for "up to this local day, included".
    pub fn until(&self, to: Date) -> Result<String, String> {
        let after = to.tomorrow().map_err(|e| format!("{to}: {e}"))?;
        self.start_of(after)
    }

    pub fn today(&self, now: SystemTime) -> Date {
        Timestamp::try_from(now)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
            .date()
    }

    /// A stored RFC 3339 time as local `YYYY-MM-DD HH:MM:SS`; unreadable input as is.
    pub fn show(&self, rfc3339: &str) -> String {
        match rfc3339.parse::<Timestamp>() {
            Ok(t) => t
                .to_zoned(self.tz.clone())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string(),
            Err(_) => rfc3339.to_string(),
        }
    }
}

/// A date typed in a filter: `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<Date, String> {
    let s = s.trim();
    if s.len() != 10 {
        return Err(format!("\"{s}\" is not a date like 2024-05-01"));
    }
    s.parse::<Date>()
        .map_err(|_| format!("\"{s}\" is not a date like 2024-05-01"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kyiv_days_in_utc_across_daylight_saving() {
        let c = Calendar::load("Europe/Kyiv").unwrap();
        // Winter: UTC+2.
        let (a, b) = c
            .days(
                parse_date("2024-01-15").unwrap(),
                parse_date("2024-01-15").unwrap(),
            )
            .unwrap();
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("2024-01-14T22:00:00", "2024-01-15T22:00:00")
        );
        // The night clocks go forward (31 March 2024): a 23-hour day.
        let (a, b) = c
            .days(
                parse_date("2024-03-31").unwrap(),
                parse_date("2024-03-31").unwrap(),
            )
            .unwrap();
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("2024-03-30T22:00:00", "2024-03-31T21:00:00")
        );
        // A range includes its last day.
        let (a, b) = c
            .days(
                parse_date("2024-05-01").unwrap(),
                parse_date("2024-05-03").unwrap(),
            )
            .unwrap();
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("2024-04-30T21:00:00", "2024-05-03T21:00:00")
        );
        assert_eq!(
            c.show("2024-05-01T10:00:00.123456789Z"),
            "2024-05-01 13:00:00"
        );
        assert_eq!(c.show("garbage"), "garbage");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_714_510_800); // 2024-04-30T21:00:00Z
        assert_eq!(c.today(t).to_string(), "2024-05-01");
        assert_eq!(Calendar::utc().today(t).to_string(), "2024-04-30");
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        assert!(Calendar::load("Mars/Olympus")
            .unwrap_err()
            .contains("Mars/Olympus"));
        assert!(parse_date("2024-5-1").is_err());
        assert!(parse_date("2024-02-30").is_err());
        assert!(parse_date("../../etc").is_err());
        assert_eq!(
            parse_date(" 2024-02-29 ").unwrap().to_string(),
            "2024-02-29"
        );
    }
}
