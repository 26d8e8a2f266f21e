//! Phone normalisation to E.164 with libphonenumber's metadata (the `phonenumber` crate).

use phonenumber::metadata::Database;
use phonenumber::{Mode, PhoneNumber, country};

/// libphonenumber's metadata, the file the `phonenumber` crate builds its own database
/// from, copied from the crate's `assets/` (version 0.3.10+9.0.33; a test compares
/// the two on every region's example numbers).
const METADATA: &str = include_str!("PhoneNumberMetadata.xml");

/// How many compiled patterns a thread's database keeps. The crate keeps 100, fewer than
/// one number's parse, validation and formatting go through, so every number compiled
/// patterns again: most of staging's time. Only the patterns numbers use are compiled.
const REGEX_CACHE: usize = 2000;

thread_local! {
    /// Each thread parses with a database of its own. The crate's shared one keeps its
    /// compiled patterns behind one process-wide lock that every pattern match takes:
    /// staging's threads spent a fifth of normalising the records waiting on it.
    static DATABASE: Database = {
        let database = Database::parse(METADATA).expect("the embedded phone metadata parses");
        database.cache().lock().expect("a new lock").set_capacity(REGEX_CACHE);
        database
    };
}

/// Parses a phone number as typed (`06-12345678`, `+31 6 1234 5678`, `0031612345678`,
/// `(020) 123 4567`) with `default_region` for numbers without a country prefix. Returns
/// E.164 (`+31612345678`), or `None` when the text is not a valid number or is an obvious
/// placeholder such as `0600000000` or `0612345678`.
pub fn normalize_phone(raw: &str, default_region: &str) -> Option<String> {
    parsed(raw, default_region).map(|(number, _)| number)
}

/// `mobile`, `fixed_line` or `other` for a phone number; `None` when it does not parse.
/// Households share a landline but rarely a mobile, so rules weigh the two differently.
pub fn phone_kind(raw: &str, default_region: &str) -> Option<&'static str> {
    parsed(raw, default_region).map(|(_, kind)| kind)
}

/// A phone text's E.164 number and kind.
type Parsed = Option<(String, &'static str)>;

thread_local! {
    /// Staging asks for a phone's number and then for its kind, batch after batch on one
    /// thread: remembering the texts parsed here parses each once. That halves the work
    /// and the waiting.
    static PARSED: std::cell::RefCell<super::memo::PairMemo<Parsed>> = Default::default();
}

fn parsed(raw: &str, default_region: &str) -> Parsed {
    super::memo::PairMemo::get_or(&PARSED, raw, default_region, || parse_number(raw, default_region))
}

fn parse_number(raw: &str, default_region: &str) -> Parsed {
    DATABASE.with(|database| parse_with(database, raw, default_region))
}

fn parse_with(database: &Database, raw: &str, default_region: &str) -> Parsed {
    parse(database, raw, default_region).and_then(|number| {
        // libphonenumber's validity check is this same lookup (the number's region, then
        // its type among the region's patterns) asking whether the type is known, so the
        // type answers both questions with one pass over the patterns.
        let kind = match number.number_type(database) {
            phonenumber::Type::Unknown => return None,
            phonenumber::Type::Mobile => "mobile",
            phonenumber::Type::FixedLine => "fixed_line",
            phonenumber::Type::FixedLineOrMobile => "fixed_line_or_mobile",
            _ => "other",
        };
        if is_placeholder(&number) {
            return None;
        }
        Some((number.format_with(database).mode(Mode::E164).to_string(), kind))
    })
}

fn parse(database: &Database, raw: &str, default_region: &str) -> Option<PhoneNumber> {
    let trimmed = raw.trim();
    let digits = trimmed.chars().filter(char::is_ascii_digit).count();
    if !(6..=17).contains(&digits) {
        return None;
    }
    // "0031 6 ..." is the international prefix written out; libphonenumber handles it
    // only for some regions, so rewrite it to "+".
    let cleaned: String = match trimmed.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => trimmed.to_string(),
    };
    let region: country::Id = default_region.trim().to_uppercase().parse().ok()?;
    phonenumber::parse_with(database, Some(region), &cleaned).ok()
}

/// A number whose last seven digits are one repeated digit, or whose last eight are a
/// plain ascending run, is a form filler's placeholder, not somebody's phone.
fn is_placeholder(number: &PhoneNumber) -> bool {
    let national = number.national().to_string();
    let digits = national.as_bytes();
    let last = |n: usize| &digits[digits.len().saturating_sub(n)..];
    let all_same = last(7).iter().all(|b| *b == digits[digits.len() - 1]);
    let ascending = last(8).windows(2).all(|w| w[1] == w[0] + 1);
    all_same || ascending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dutch_mobile_in_every_spelling() {
        for typed in [
            "06-12345679",
            "0612345679",
            "06 1234 5679",
            "+31 6 1234 5679",
            "+31 (0)6 12345679",
            "0031612345679",
            "0031-6-12345679",
            " +31612345679 ",
        ] {
            assert_eq!(normalize_phone(typed, "NL").as_deref(), Some("+31612345679"), "{typed:?}");
        }
    }

    #[test]
    fn landlines_and_foreign_numbers() {
        assert_eq!(normalize_phone("020-6245518", "NL").as_deref(), Some("+31206245518"));
        assert_eq!(normalize_phone("(010) 414 2233", "NL").as_deref(), Some("+31104142233"));
        assert_eq!(normalize_phone("+32 470 12 34 56", "NL").as_deref(), Some("+32470123456"));
        assert_eq!(phone_kind("020-6245518", "NL"), Some("fixed_line"));
        assert_eq!(phone_kind("06-12345679", "NL"), Some("mobile"));
    }

    #[test]
    fn placeholders_and_garbage_are_dropped() {
        for bad in ["", "onbekend", "0600000000", "06-00000000", "0612345678", "020-1234567", "123", "06-1234", "x"] {
            assert_eq!(normalize_phone(bad, "NL"), None, "{bad:?}");
        }
    }

    /// The embedded metadata is the crate's own: every region's example numbers of every
    /// kind read the same with both databases (an upgrade of the crate without the file
    /// that came with it fails here).
    #[test]
    fn embedded_metadata_is_the_crates() {
        let crates = &*phonenumber::metadata::DATABASE;
        let compared = DATABASE.with(|ours| {
            let mut compared = 0;
            for region in crates.iter() {
                let d = region.descriptors();
                let examples =
                    [Some(d.general()), d.fixed_line(), d.mobile(), d.toll_free(), d.premium_rate(), d.voip()]
                        .into_iter()
                        .flatten()
                        .filter_map(|desc| desc.example().map(|e| format!("+{} {e}", region.country_code())));
                for typed in examples {
                    assert_eq!(parse_with(ours, &typed, "NL"), parse_with(crates, &typed, "NL"), "{typed}");
                    compared += 1;
                }
            }
            compared
        });
        assert!(compared > 500, "{compared} examples");
    }

    #[test]
    fn unknown_region_is_none() {
        assert_eq!(normalize_phone("0612345679", "XX"), None);
    }
}
