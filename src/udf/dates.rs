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
    iso_or_dutch_date(date_part.as_bytes())
        .or_else(|| date_by_formats(date_part))
        .filter(|d| (1880..=2100).contains(&chrono::Datelike::year(d)))
}

fn date_by_formats(date_part: &str) -> Option<NaiveDate> {
    FORMATS.date.iter().find_map(|f| parsed(date_part, f)?.to_naive_date().ok())
}

/// The digits of `text` as a number, when all are ASCII digits.
fn digits(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0u32, |n, b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
}

/// `YYYY-MM-DD` or `DD-MM-YYYY` read directly, which is what nearly every export writes:
/// the same date the first two formats give, without chrono's general format parser
/// (a fifth of the line check's time on timestamp columns). `None` for any other
/// shape, which the formats then try.
fn iso_or_dutch_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 {
        return None;
    }
    let (year, month, day) = if b[4] == b'-' && b[7] == b'-' {
        (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?)
    } else if b[2] == b'-' && b[5] == b'-' {
        (digits(&b[6..10])?, digits(&b[3..5])?, digits(&b[0..2])?)
    } else {
        return None;
    };
    NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
}

/// `YYYY-MM-DD HH:MM:SS` (or with `T`), with or without a fraction and a closing `Z`,
/// read directly: the timestamps most exports write, as the naive and RFC 3339 formats
/// read them. `None` for any other shape (and for leap seconds), which the formats try.
fn iso_timestamp(b: &[u8]) -> Option<NaiveDateTime> {
    if b.len() < 19 || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = iso_or_dutch_date(&b[..10]).filter(|_| b[4] == b'-')?;
    let (hour, minute, second) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    let mut rest = &b[19..];
    let mut nanos = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&fraction[..n])? * 10u32.pow(9 - n as u32);
        rest = &fraction[n..];
    }
    if !(rest.is_empty() || rest == b"Z") || second > 59 {
        return None;
    }
    Some(date.and_time(NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?))
}

/// ISO 8601 / RFC 3339 timestamps with or without zone (no zone means UTC), with `T` or a
/// space, with or without fractions; a bare date is midnight UTC; a Unix epoch in seconds,
/// milliseconds or microseconds.
pub fn parse_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    match iso_timestamp(s.as_bytes()) {
        Some(ts) => Some(Utc.from_utc_datetime(&ts)),
        None => timestamp_by_formats(s),
    }
}

fn timestamp_by_formats(s: &str) -> Option<DateTime<Utc>> {
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

    /// The direct readings of the common shapes give what the general formats give,
    /// on good values and on near misses.
    #[test]
    fn the_common_shapes_read_as_the_formats_read_them() {
        let mut texts = Vec::new();
        for date in [
            "2026-11-22",
            "1980-02-29",
            "1981-02-29",
            "2026-13-01",
            "2026-00-10",
            "0999-01-01",
            "22-11-2026",
            "31-04-1980",
            "2026-1-22",
            "2026/11/22",
            "20261122",
            "2a26-11-22",
        ] {
            texts.push(date.to_string());
            for time in [
                "13:05:00",
                "23:59:59",
                "24:00:00",
                "13:60:00",
                "13:05:60",
                "13:05:00.5",
                "13:05:00.123456789",
                "13:05:00.1234567891",
                "13:05:00.",
                "13:5:00",
                "13:05",
            ] {
                for zone in ["", "Z", "z", "+01:00", "-0200", " "] {
                    for sep in ["T", " ", "t"] {
                        texts.push(format!("{date}{sep}{time}{zone}"));
                    }
                }
            }
        }
        for text in &texts {
            let direct = iso_timestamp(text.as_bytes()).map(|t| Utc.from_utc_datetime(&t));
            if direct.is_some() {
                assert_eq!(direct, timestamp_by_formats(text), "{text}");
            }
            assert_eq!(parse_timestamp(text), timestamp_by_formats(text.trim()), "{text}");
            let date = iso_or_dutch_date(text.as_bytes());
            if date.is_some() {
                assert_eq!(date, date_by_formats(text), "{text}");
            }
        }
    }
}
