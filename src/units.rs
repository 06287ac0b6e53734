//! Small value types written in repository files: calendar dates, durations, rate windows.
//!
//! Parsed by hand rather than with a date crate: the formats are tiny and fixed
//! (`2026-11-01`, `30s`, `60/minute`), and a hand parser gives the exact error text we want.

use std::fmt;
use std::time::Duration;

/// A calendar date (UTC), as written in grants and supplier facts: `YYYY-MM-DD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

/// A calendar-aligned UTC window for quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    Minute,
    Hour,
    Day,
}

/// `N/window`: at most `count` calls per calendar-aligned window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub window: Window,
}

// === impl Date ===

impl Date {
    /// Parses `YYYY-MM-DD`, checking that the day exists in that month.
    pub fn parse(s: &str) -> Result<Date, String> {
        let bad = || format!("invalid date {s:?}: expected YYYY-MM-DD, e.g. 2026-11-01");
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
            let part = &s[r];
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year as i32, month as u8) as u32 {
            return Err(format!("invalid date {s:?}: no such day"));
        }
        Ok(Date { year: year as i32, month: month as u8, day: day as u8 })
    }

    /// Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    pub fn days_since_epoch(self) -> i64 {
        let (y, m, d) = (self.year as i64, self.month as i64, self.day as i64);
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146097 + doe - 719468
    }

    /// The date of a day count since 1970-01-01 (civil_from_days).
    pub fn from_days_since_epoch(z: i64) -> Date {
        let z = z + 719468;
        let era = if z >= 0 { z } else { z - 146096 } / 146097;
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let y = (yoe + era * 400 + if m <= 2 { 1 } else { 0 }) as i32;
        Date { year: y, month: m, day: d }
    }

    /// Today in UTC, from the system clock.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Date::from_days_since_epoch(secs.div_euclid(86_400))
    }

    pub fn add_days(self, n: i64) -> Date {
        Date::from_days_since_epoch(self.days_since_epoch() + n)
    }
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl serde::Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// === impl Window ===

impl Window {
    pub fn parse(s: &str) -> Result<Window, String> {
        match s {
            "minute" => Ok(Window::Minute),
            "hour" => Ok(Window::Hour),
            "day" => Ok(Window::Day),
            _ => Err(format!("invalid window {s:?}: expected minute, hour or day")),
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

// === impl Rate ===

impl Rate {
    /// Parses `N/minute`, `N/hour` or `N/day` with N ≥ 1.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("invalid rate_limit {s:?}: expected N/minute, N/hour or N/day, e.g. 60/minute");
        let (n, w) = s.split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid rate_limit {s:?}: the count must be at least 1 (to block a tool, use action: deny)"));
        }
        let window = Window::parse(w.trim()).map_err(|_| bad())?;
        Ok(Rate { count, window })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.window.as_str())
    }
}

/// RFC 3339 time of `secs` since the epoch, shown at UTC offset `offset_min` (git's author and
/// committer times keep the offset they were made at).
pub fn rfc3339(secs: i64, offset_min: i32) -> String {
    let local = secs + offset_min as i64 * 60;
    let date = Date::from_days_since_epoch(local.div_euclid(86_400));
    let t = local.rem_euclid(86_400);
    let (h, m, s) = (t / 3600, t / 60 % 60, t % 60);
    if offset_min == 0 {
        return format!("{date}T{h:02}:{m:02}:{s:02}Z");
    }
    let sign = if offset_min < 0 { '-' } else { '+' };
    let o = offset_min.abs();
    format!("{date}T{h:02}:{m:02}:{s:02}{sign}{:02}:{:02}", o / 60, o % 60)
}

/// Now, in UTC, with milliseconds: `2026-11-26T07:13:39.123Z`.
pub fn now_rfc3339_ms() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339_ms(d.as_millis() as i64)
}

/// `ms` milliseconds since the epoch as [`now_rfc3339_ms`] writes a time.
pub fn rfc3339_ms(ms: i64) -> String {
    match rfc3339_ms_bytes(ms) {
        Some(b) => b.iter().map(|&c| c as char).collect(),
        None => {
            let base = rfc3339(ms.div_euclid(1000), 0);
            format!("{}.{:03}Z", base.trim_end_matches('Z'), ms.rem_euclid(1000))
        }
    }
}

/// [`rfc3339_ms`]'s 24 bytes, written digit by digit (every call record's time is written and
/// checked with it); None outside the years 0 to 9999, which it spells otherwise.
fn rfc3339_ms_bytes(ms: i64) -> Option<[u8; 24]> {
    fn put(out: &mut [u8], mut v: i64) {
        for b in out.iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let secs = ms.div_euclid(1000);
    let date = Date::from_days_since_epoch(secs.div_euclid(86_400));
    if !(0..=9999).contains(&date.year) {
        return None;
    }
    let t = secs.rem_euclid(86_400);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    put(&mut out[0..4], i64::from(date.year));
    put(&mut out[5..7], i64::from(date.month));
    put(&mut out[8..10], i64::from(date.day));
    put(&mut out[11..13], t / 3600);
    put(&mut out[14..16], t / 60 % 60);
    put(&mut out[17..19], t % 60);
    put(&mut out[20..23], ms.rem_euclid(1000));
    Some(out)
}

/// The milliseconds of a time written exactly as [`rfc3339_ms`] writes them (so that they
/// rebuild the same text); None for any other spelling.
pub fn exact_rfc3339_ms(s: &str) -> Option<i64> {
    let ms = parse_rfc3339_ms(s)?;
    (s.len() == 24 && rfc3339_ms_bytes(ms).is_some_and(|b| b == s.as_bytes())).then_some(ms)
}

/// Parses `250ms`, `30s`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected a number with ms, s, m or h, e.g. 30s");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

/// Milliseconds since the epoch of a UTC time as [`now_rfc3339_ms`] writes it
/// (`2026-11-26T07:13:39.123Z`; the fraction of a second may be absent, or of any length).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let date = Date::parse(s.get(..10)?).ok()?;
    let rest = s.get(10..)?.strip_prefix('T')?.strip_suffix('Z')?;
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (parts.next()??, parts.next()??, parts.next()??);
    // A fraction of a second: `.5` is 500 ms, `.123456` 123.
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0i64, |n, b| n * 10 + i64::from(b - b'0'));
    Some(((date.days_since_epoch() * 86_400 + h * 3600 + m * 60 + sec) * 1000) + ms)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_reject_impossible_days() {
        let d = Date::parse("2024-02-29").unwrap();
        assert_eq!(Date::from_days_since_epoch(d.days_since_epoch()), d);
        assert_eq!(Date::parse("1970-01-01").unwrap().days_since_epoch(), 0);
        assert!(Date::parse("2023-02-29").is_err());
        assert!(Date::parse("2026-13-01").is_err());
        assert!(Date::parse("26-11-01").is_err());
        assert_eq!(d.add_days(1).to_string(), "2024-03-01");
    }

    /// The call log stores a ts as its milliseconds when they write it back exactly.
    #[test]
    fn millisecond_times_round_trip() {
        for ms in [0, 1, 999, 1_767_225_600_123, 253_402_300_799_999] {
            let s = rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_ms(&s), Some(ms), "{s}");
            assert_eq!(exact_rfc3339_ms(&s), Some(ms), "{s}");
        }
        assert_eq!(rfc3339_ms(1_767_225_600_007), "2026-01-01T00:00:00.007Z");
        assert_eq!(parse_rfc3339_ms("2026-01-01T00:00:00.5Z"), Some(1_767_225_600_500));
        assert_eq!(parse_rfc3339_ms("2026-01-01T00:00:00.123456Z"), Some(1_767_225_600_123));
        assert_eq!(parse_rfc3339_ms("2026-01-01T00:00:00Z"), Some(1_767_225_600_000));
        for other in ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.1234Z", "t", "", "2026-01-01T24:00:00.000Z"] {
            assert_eq!(exact_rfc3339_ms(other), None, "{other}");
        }
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000, 60), "2023-11-14T23:13:20+01:00");
        assert_eq!(rfc3339(1_700_000_000, -330), "2023-11-14T16:43:20-05:30");
        assert!(now_rfc3339_ms().ends_with('Z'));
    }

    #[test]
    fn times_with_milliseconds_are_written_as_the_formatter_writes_them() {
        let formatted = |ms: i64| format!("{}.{:03}Z", rfc3339(ms.div_euclid(1000), 0).trim_end_matches('Z'), ms.rem_euclid(1000));
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        let mut samples = vec![0, -1, 999, 1_000, 951_782_400_000, 253_402_300_799_999, -62_167_219_200_000];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x.rem_euclid(260_000_000_000_000) - 62_200_000_000_000);
        }
        for ms in samples {
            let text = rfc3339_ms(ms);
            assert_eq!(text, formatted(ms), "{ms}");
            let before = parse_rfc3339_ms(&text).filter(|&ms| text.len() == 24 && formatted(ms) == text);
            assert_eq!(exact_rfc3339_ms(&text), before, "{text}");
        }
        assert_eq!(exact_rfc3339_ms("2026-11-26T07:13:39.12Z"), None);
        assert_eq!(exact_rfc3339_ms("2026-11-26T07:13:39.123+00:00"), None);
    }

    #[test]
    fn rates_and_durations() {
        assert_eq!(Rate::parse("60/minute").unwrap(), Rate { count: 60, window: Window::Minute });
        assert!(Rate::parse("60/minutes").is_err());
        assert!(Rate::parse("0/day").is_err());
        assert!(Rate::parse("sixty/day").is_err());
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
