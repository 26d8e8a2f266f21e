//! Phone normalisation to E.164 with libphonenumber's metadata (the `phonenumber` crate).

use phonenumber::metadata::{Database, Descriptor};
use phonenumber::{PhoneNumber, country};

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
        let kind = match number_type(database, &number) {
            phonenumber::Type::Unknown => return None,
            phonenumber::Type::Mobile => "mobile",
            phonenumber::Type::FixedLine => "fixed_line",
            phonenumber::Type::FixedLineOrMobile => "fixed_line_or_mobile",
            _ => "other",
        };
        if is_placeholder(&number) {
            return None;
        }
        Some((e164(&number), kind))
    })
}

thread_local! {
    /// Each number type pattern of the thread's database, compiled once, by the address of
    /// its descriptor in that database (which lives as long as the thread).
    static PATTERNS: std::cell::RefCell<foldhash::HashMap<usize, Option<regex::Regex>>> = Default::default();
}

/// The number's type, as `PhoneNumber::number_type` answers it (libphonenumber's order:
/// the general pattern, then premium rate, toll free, ..., fixed line, mobile).
/// The crate looks each pattern up in a shared cache, under a lock and by hashing the
/// pattern's text, and its patterns read `\d` as any Unicode digit: that lookup and the
/// larger automata were half of a number's parse. Here each pattern is compiled once per
/// thread with ASCII digits (the metadata's meaning: it is written for Java, whose `\d`
/// is `[0-9]`), and the numbers matched are ASCII digits anyway.
fn number_type(database: &Database, number: &PhoneNumber) -> phonenumber::Type {
    use phonenumber::Type;
    let Some(metadata) = number.metadata(database) else { return Type::Unknown };
    let national = number.national().value().to_string();
    let d = metadata.descriptors();
    let is = |descriptor: Option<&Descriptor>| descriptor.is_some_and(|d| matches(d, &national));
    if !is(Some(d.general())) {
        return Type::Unknown;
    }
    let others = [
        (d.premium_rate(), Type::PremiumRate),
        (d.toll_free(), Type::TollFree),
        (d.shared_cost(), Type::SharedCost),
        (d.voip(), Type::Voip),
        (d.personal_number(), Type::PersonalNumber),
        (d.pager(), Type::Pager),
        (d.uan(), Type::Uan),
        (d.voicemail(), Type::Voicemail),
    ];
    if let Some((_, kind)) = others.into_iter().find(|(descriptor, _)| is(*descriptor)) {
        return kind;
    }
    match (is(d.fixed_line()), is(d.mobile())) {
        (true, true) => Type::FixedLineOrMobile,
        (true, false) if same_pattern(d.fixed_line(), d.mobile()) => Type::FixedLineOrMobile,
        (true, false) => Type::FixedLine,
        (false, true) => Type::Mobile,
        (false, false) => Type::Unknown,
    }
}

/// A number in E.164 form, `+` country code national number, as the crate's formatter
/// writes it (which first looks up the region's national formats, for nothing here).
fn e164(number: &PhoneNumber) -> String {
    format!("+{}{}", number.country().code(), number.national())
}

/// Whether two descriptors have one pattern (a region whose fixed and mobile numbers
/// cannot be told apart).
fn same_pattern(a: Option<&Descriptor>, b: Option<&Descriptor>) -> bool {
    a.map(|d| d.national_number().as_str()) == b.map(|d| d.national_number().as_str())
}

/// Whether a national number is of a descriptor's type: one of its possible lengths (when
/// it lists them), and its pattern matches from the first digit, as `Descriptor::is_match`.
fn matches(descriptor: &Descriptor, national: &str) -> bool {
    let lengths = descriptor.possible_length();
    if !lengths.is_empty() && !lengths.contains(&(national.len() as u16)) {
        return false;
    }
    let key = descriptor as *const Descriptor as usize;
    PATTERNS.with_borrow_mut(|patterns| {
        let compiled = patterns.entry(key).or_insert_with(|| {
            regex::RegexBuilder::new(&format!("^(?:{})", descriptor.national_number().as_str()))
                .ignore_whitespace(true)
                .unicode(false)
                .build()
                .ok()
        });
        match compiled {
            Some(pattern) => pattern.is_match(national),
            // A pattern only the Unicode syntax reads: the crate's own match.
            None => descriptor.is_match(national),
        }
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
    let region = region_id(default_region)?;
    phonenumber::parse_with(database, Some(region), &cleaned).ok()
}

thread_local! {
    /// The last default region read, and its id: every number of a column has the same.
    static REGION: std::cell::RefCell<Option<(String, Option<country::Id>)>> = const { std::cell::RefCell::new(None) };
}

/// The region `NL` (or `nl`, ` NL `) as the crate's id; `None` for an unknown region.
fn region_id(region: &str) -> Option<country::Id> {
    REGION.with_borrow_mut(|last| match last {
        Some((text, id)) if text == region => *id,
        _ => {
            let id = region.trim().to_uppercase().parse().ok();
            *last = Some((region.to_string(), id));
            id
        }
    })
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
    use phonenumber::Mode;

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

    /// The number type read with the patterns compiled here is the crate's (and so is the
    /// E.164 form of a valid number), for every
    /// region's example number of every type, and for those numbers one digit shorter and
    /// longer (other types, or none).
    #[test]
    fn number_types_are_the_crates() {
        let crates = &*phonenumber::metadata::DATABASE;
        let mut compared = 0;
        for region in crates.iter() {
            let d = region.descriptors();
            let examples = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.voip(),
                d.personal_number(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|desc| desc.example());
            for example in examples {
                for typed in [example.to_string(), format!("{example}1"), example[..example.len() - 1].to_string()] {
                    let Ok(number) = phonenumber::parse(None, format!("+{} {typed}", region.country_code())) else {
                        continue;
                    };
                    assert_eq!(
                        number_type(crates, &number),
                        number.number_type(crates),
                        "+{} {typed}",
                        region.country_code()
                    );
                    if number.number_type(crates) != phonenumber::Type::Unknown {
                        assert_eq!(e164(&number), number.format_with(crates).mode(Mode::E164).to_string());
                    }
                    compared += 1;
                }
            }
        }
        assert!(compared > 1500, "{compared} numbers");
    }

    #[test]
    fn unknown_region_is_none() {
        assert_eq!(normalize_phone("0612345679", "XX"), None);
    }
}
