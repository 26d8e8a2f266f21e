//! Lenient date and timestamp parsing for the formats source systems actually export.

use std::sync::LazyLock;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

const DATE_FORMATS: &[&str] = &["%Y-%m-%d", "%d-%m-%Y", "%d/%m/%Y", "%Y/%m/%d", "%d.%m.%Y", "%Y%m%d"];
const ZONED_FORMATS: &[&str] = &["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"];
const NAIVE_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%d-%m-%Y %H:%M:%S",
    "%d-%m-%Y %H:%M",
];

/// The formats above parsed once. chrono's `parse_from_str` parses its format string on
/// every call, which was the largest single cost of staging (every date and timestamp
/// of every record, several formats each).
struct Formats {
    date: Vec<Vec<Item<'static>>>,
    zoned: Vec<Vec<Item<'static>>>,
    naive: Vec<Vec<Item<'static>>>,
}

static FORMATS: LazyLock<Formats> = LazyLock::new(|| {
    let items = |formats: &[&'static str]| -> Vec<Vec<Item<'static>>> {
        formats.iter().map(|f| StrftimeItems::new(f).parse().expect("valid date format")).collect()
    };
    Formats { date: items(DATE_FORMATS), zoned: items(ZONED_FORMATS), naive: items(NAIVE_FORMATS) }
});

/// `s` read with one pre-parsed format; what `parse_from_str` does, less the format parsing.
fn parsed(s: &str, items: &[Item<'static>]) -> Option<Parsed> {
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, s, items.iter()).ok()?;
    Some(parsed)
}

/// `1980-03-07`, `07-03-1980`, `7/3/1980`, `07.03.1980`, `19800307`, or the date part of a
/// timestamp. Day-first wins for ambiguous Dutch input. Impossible dates are `None`.
pub fn parse_date(raw: &str) -> Option<NaiveDate> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    let date_part = s.split(['T', ' ']).next().unwrap_or(s);
    FORMATS
        .date
        .iter()
        .find_map(|f| parsed(date_part, f)?.to_naive_date().ok())
        .filter(|d| (1880..=2100).contains(&chrono::Datelike::year(d)))
}

/// ISO 8601 / RFC 3339 timestamps with or without zone (no zone means UTC), with `T` or a
/// space, with or without fractions; a bare date is midnight UTC; a Unix epoch in seconds,
/// milliseconds or microseconds.
pub fn parse_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(ts) = DateTime::parse_from_rfc3339(s) {
        return Some(ts.with_timezone(&Utc));
    }
    // Unix epoch in seconds, milliseconds or microseconds, as many exports write it. Eight
    // digits stay a date (`19800307`).
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        return match s.len() {
            9 | 10 => DateTime::from_timestamp(n, 0),
            13 => DateTime::from_timestamp_millis(n),
            16 => DateTime::from_timestamp_micros(n),
            _ => parse_date(s).map(|d| Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN))),
        };
    }
    // Every zoned format puts its offset after a leading `YYYY-MM-DD`: the naive
    // timestamps most exports write skip the zoned formats (three failed parses each).
    let zoned = s.get(10..).is_some_and(|time| time.contains(['+', '-', 'Z', 'z']));
    if let Some(ts) = FORMATS.zoned.iter().filter(|_| zoned).find_map(|f| parsed(s, f)?.to_datetime().ok()) {
        return Some(ts.with_timezone(&Utc));
    }
    let naive = s.trim_end_matches(['Z', 'z']);
    let as_naive =
        |f: &Vec<Item<'static>>| -> Option<NaiveDateTime> { parsed(naive, f)?.to_naive_datetime_with_offset(0).ok() };
    if let Some(ts) = FORMATS.naive.iter().find_map(as_naive) {
        return Some(Utc.from_utc_datetime(&ts));
    }
    parse_date(s).map(|d| Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)))
}

/// A date as `CAST(date AS VARCHAR)` writes it (`1985-03-02`), without allocating, for
/// the years 0 to 9999; `None` for the others (written with a sign).
pub(crate) fn date_text(date: NaiveDate) -> Option<[u8; 10]> {
    use chrono::Datelike;
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let mut text = *b"0000-00-00";
    for (at, value, width) in [(0, year, 4), (5, date.month(), 2), (8, date.day(), 2)] {
        let mut v = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    Some(text)
}

/// Whether two birth dates can be one person's: equal, day and month swapped, or one
/// typed digit apart. Household members and namesakes differ by more.
pub fn birth_dates_compatible(a: NaiveDate, b: NaiveDate) -> bool {
    if a == b {
        return true;
    }
    use chrono::Datelike;
    if a.year() == b.year() && a.month() == b.day() && a.day() == b.month() {
        return true;
    }
    // The eight digits of YYYYMMDD, compared place by place without formatting text.
    let digits = |d: NaiveDate| d.year() as i64 * 10_000 + d.month() as i64 * 100 + d.day() as i64;
    let (mut x, mut y) = (digits(a), digits(b));
    let mut differing = 0;
    for _ in 0..8 {
        differing += usize::from(x % 10 != y % 10);
        x /= 10;
        y /= 10;
    }
    differing == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(y, m, day)
    }

    #[test]
    fn dates_in_dutch_and_iso_order() {
        assert_eq!(parse_date("1980-03-07"), d(1980, 3, 7));
        assert_eq!(parse_date("07-03-1980"), d(1980, 3, 7));
        assert_eq!(parse_date("7/3/1980"), d(1980, 3, 7));
        assert_eq!(parse_date("07.03.1980"), d(1980, 3, 7));
        assert_eq!(parse_date("19800307"), d(1980, 3, 7));
        assert_eq!(parse_date("1980-03-07T00:00:00Z"), d(1980, 3, 7));
        assert_eq!(parse_date("31-02-1980"), None);
        assert_eq!(parse_date("0001-01-01"), None);
        assert_eq!(parse_date("onbekend"), None);
    }

    #[test]
    fn birth_date_typos_are_compatible_other_dates_conflict() {
        let p = |s| parse_date(s).unwrap();
        assert!(birth_dates_compatible(p("1980-03-07"), p("1980-07-03")));
        assert!(birth_dates_compatible(p("1980-03-07"), p("1980-03-08")));
        assert!(birth_dates_compatible(p("1980-03-07"), p("1981-03-07")));
        assert!(!birth_dates_compatible(p("1980-03-07"), p("1954-11-21")));
        assert!(!birth_dates_compatible(p("1980-03-07"), p("1980-04-08")));
    }

    #[test]
    fn timestamps_with_and_without_zone() {
        let want = Utc.with_ymd_and_hms(2026, 11, 22, 13, 5, 0).single();
        assert_eq!(parse_timestamp("2026-11-22T13:05:00Z"), want);
        assert_eq!(parse_timestamp("2026-11-22T14:05:00+01:00"), want);
        assert_eq!(parse_timestamp("2026-11-22 13:05:00"), want);
        for zoned in ["2026-11-22 14:05:00+0100", "2026-11-22T14:05:00+0100", "2026-11-22 12:05:00-01:00"] {
            assert_eq!(parse_timestamp(zoned), want, "{zoned}");
        }
        assert_eq!(parse_timestamp("2026-11-22 13:05"), want);
        assert_eq!(parse_timestamp("2026-11-22T13:05:00.000"), want);
        assert_eq!(parse_timestamp("2026-11-22"), Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).single());
        assert_eq!(parse_timestamp("gisteren"), None);
        let epoch = Utc.with_ymd_and_hms(2026, 11, 22, 13, 5, 0).unwrap().timestamp();
        assert_eq!(parse_timestamp(&epoch.to_string()), want);
        assert_eq!(parse_timestamp(&(epoch * 1000).to_string()), want);
        assert_eq!(parse_timestamp(&(epoch * 1_000_000).to_string()), want);
        assert_eq!(parse_timestamp("20261122"), Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).single());
        assert_eq!(parse_timestamp("12345"), None);
    }
}
