//! Phone normalisation to E.164 with libphonenumber's metadata (the `phonenumber` crate).

use phonenumber::metadata::{Database, Descriptor, Metadata};
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
    parse_phone(raw, default_region).map(|(number, _)| number)
}

/// `mobile`, `fixed_line` or `other` for a phone number; `None` when it does not parse.
/// Households share a landline but rarely a mobile, so rules weigh the two differently.
pub fn phone_kind(raw: &str, default_region: &str) -> Option<&'static str> {
    parse_phone(raw, default_region).map(|(_, kind)| kind)
}

/// A phone text's E.164 number and kind (see `normalize_phone` and `phone_kind`), from
/// one parse: staging needs both of every record's phone.
pub fn parse_phone(raw: &str, default_region: &str) -> Option<(String, &'static str)> {
    DATABASE.with(|database| parse_with(database, raw, default_region))
}

/// A parsed number, as the checks below read it.
struct Number<'a> {
    /// The metadata of the number's region (`None`: no region has its country code).
    metadata: Option<&'a Metadata>,
    code: u16,
    /// The national number as E.164 writes it (with an Italian leading zero).
    national: String,
    /// The national number as a value (what the type patterns match).
    value: String,
}

fn parse_with(database: &Database, raw: &str, default_region: &str) -> Option<(String, &'static str)> {
    let trimmed = raw.trim();
    let digits = trimmed.bytes().filter(u8::is_ascii_digit).count();
    if !(6..=17).contains(&digits) {
        return None;
    }
    let region = region_id(default_region)?;
    let number = match plain::number(database, region, trimmed) {
        Some(number) => number,
        None => parse(database, region, trimmed)?,
    };
    // libphonenumber's validity check is this same lookup (the number's region, then
    // its type among the region's patterns) asking whether the type is known, so the
    // type answers both questions with one pass over the patterns.
    let kind = match number_type(number.metadata, &number.value) {
        phonenumber::Type::Unknown => return None,
        phonenumber::Type::Mobile => "mobile",
        phonenumber::Type::FixedLine => "fixed_line",
        phonenumber::Type::FixedLineOrMobile => "fixed_line_or_mobile",
        _ => "other",
    };
    if is_placeholder(&number.national) {
        return None;
    }
    Some((format!("+{}{}", number.code, number.national), kind))
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
fn number_type(metadata: Option<&Metadata>, national: &str) -> phonenumber::Type {
    use phonenumber::Type;
    let Some(metadata) = metadata else { return Type::Unknown };
    let d = metadata.descriptors();
    let is = |descriptor: Option<&Descriptor>| descriptor.is_some_and(|d| matches(d, national));
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

/// The crate's reading of a number (`trimmed`, with 6 to 17 digits).
fn parse<'a>(database: &'a Database, region: country::Id, trimmed: &str) -> Option<Number<'a>> {
    // "0031 6 ..." is the international prefix written out; libphonenumber handles it
    // only for some regions, so rewrite it to "+".
    let cleaned: String = match trimmed.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => trimmed.to_string(),
    };
    let number: PhoneNumber = phonenumber::parse_with(database, Some(region), &cleaned).ok()?;
    Some(Number {
        metadata: number.metadata(database),
        code: number.country().code(),
        // The crate's E.164 formatter writes the country code and this, after looking up
        // the region's national formats for nothing.
        national: number.national().to_string(),
        value: number.national().value().to_string(),
    })
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
fn is_placeholder(national: &str) -> bool {
    let digits = national.as_bytes();
    let last = |n: usize| &digits[digits.len().saturating_sub(n)..];
    let all_same = last(7).iter().all(|b| *b == digits[digits.len() - 1]);
    let ascending = last(8).windows(2).all(|w| w[1] == w[0] + 1);
    all_same || ascending
}

/// The crate's reading of the commonest ways a number is typed, without its parser.
///
/// Parsing with the crate was half of staging's normalisation (1.9 µs a number at
/// 1M people: its parser tries several grammars and regular expressions, and looks
/// country codes up in lists it allocates). Most numbers are typed in one of two plain
/// forms: national (`06-12345678`, `020 624 5518`) or with the default region's country
/// code (`+31 6 12345678`, `0031 612345678`). For those, what the crate does comes down
/// to taking the digits, the country code and the national prefix off; that is done here.
/// Any other text, and any case where the crate would take another turn, goes to the
/// crate (`None`). A test compares the two on every region's example numbers in many
/// spellings.
mod plain {
    use super::Number;
    use phonenumber::country;
    use phonenumber::metadata::{Database, Metadata};

    /// What the plain reading needs of a default region, worked out once per thread.
    pub(super) struct Region {
        code: u16,
        /// The international prefix, when it is one fixed text (`00`).
        idd: String,
        national_prefix: Option<String>,
        /// Shortest national number the region's numbers may have (0 when the metadata
        /// lists no lengths: the crate then finds none too short), and its local-only
        /// lengths (the crate's `TooShort` test).
        min_length: usize,
        local_lengths: Vec<u16>,
        /// Every country code in the database.
        codes: Vec<bool>,
    }

    impl Region {
        /// `None` when the crate reads the region's numbers in ways the plain reading
        /// does not follow: a national prefix given as a pattern, an international
        /// prefix that is one, a country code shared with other regions.
        pub(super) fn of(database: &Database, region: country::Id) -> Option<Region> {
            let id: &str = region.as_ref();
            let meta = database.by_id(id)?;
            if meta.national_prefix_for_parsing().is_some() {
                return None;
            }
            let idd = meta.international_prefix()?.as_str().to_string();
            if idd.is_empty() || !idd.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            if database.region(&meta.country_code())? != [id] {
                return None;
            }
            let general = meta.descriptors().general();
            let min_length = general.possible_length().first().map_or(0, |l| usize::from(*l));
            let codes = (0..1000u16).map(|c| database.by_code(&c).is_some()).collect();
            Some(Region {
                code: meta.country_code(),
                idd,
                national_prefix: meta.national_prefix().map(str::to_string),
                min_length,
                local_lengths: general.possible_local_length().to_vec(),
                codes,
            })
        }
    }

    thread_local! {
        /// The last default region read, and its plain reading.
        static REGION: std::cell::RefCell<Option<(country::Id, Option<std::rc::Rc<Region>>)>> =
            const { std::cell::RefCell::new(None) };
    }

    fn region_of(database: &Database, region: country::Id) -> Option<std::rc::Rc<Region>> {
        REGION.with_borrow_mut(|last| match last {
            Some((id, plain)) if *id == region => plain.clone(),
            _ => {
                let plain = Region::of(database, region).map(std::rc::Rc::new);
                *last = Some((region, plain.clone()));
                plain
            }
        })
    }

    /// The crate's reading of `trimmed` (which has 6 to 17 digits) with default region
    /// `region`, when it is typed plainly; `None` to ask the crate.
    pub(super) fn number<'a>(database: &'a Database, region: country::Id, trimmed: &str) -> Option<Number<'a>> {
        let plain = region_of(database, region)?;
        // `+` or `00` and the country code, digits and spaces only; or national, digits,
        // spaces and dashes. Both start and end with a digit.
        let (international, body) = match trimmed.strip_prefix('+').or_else(|| trimmed.strip_prefix("00")) {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let allowed = |b: u8| b.is_ascii_digit() || b == b' ' || (!international && b == b'-');
        let bytes = body.as_bytes();
        if !bytes.first()?.is_ascii_digit() || !bytes.last()?.is_ascii_digit() || !bytes.iter().all(|b| allowed(*b)) {
            return None;
        }
        let digits: String = body.chars().filter(char::is_ascii_digit).collect();
        if digits.starts_with(&plain.idd) {
            return None;
        }
        let national = if international {
            // The crate takes the shortest leading digits that are a country code.
            if digits.starts_with('0') {
                return None;
            }
            let length = (1..=3).find(|n| digits[..*n].parse().is_ok_and(|c: usize| plain.codes[c]))?;
            if digits[..length].parse() != Ok(plain.code) {
                return None;
            }
            &digits[length..]
        } else {
            if !digits.starts_with('0') || digits[1..].starts_with('0') {
                return None;
            }
            digits.as_str()
        };
        // The national prefix comes off twice: once as the region's way of parsing,
        // once more after it.
        let mut significant = national;
        for _ in 0..2 {
            if let Some(prefix) = plain.national_prefix.as_deref()
                && significant.starts_with(prefix)
            {
                significant = &significant[prefix.len()..];
            }
        }
        let length = significant.len();
        let too_short = length < plain.min_length && !plain.local_lengths.contains(&(length as u16));
        if too_short || !(2..=17).contains(&length) || significant.starts_with('0') {
            return None;
        }
        let metadata: &Metadata = database.by_id::<str>(region.as_ref())?;
        Some(Number {
            metadata: Some(metadata),
            code: plain.code,
            national: significant.to_string(),
            value: significant.to_string(),
        })
    }
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
                        number_type(number.metadata(crates), &number.national().value().to_string()),
                        number.number_type(crates),
                        "+{} {typed}",
                        region.country_code()
                    );
                    if number.number_type(crates) != phonenumber::Type::Unknown {
                        let e164 = format!("+{}{}", number.country().code(), number.national());
                        assert_eq!(e164, number.format_with(crates).mode(Mode::E164).to_string());
                    }
                    compared += 1;
                }
            }
        }
        assert!(compared > 1500, "{compared} numbers");
    }

    /// The plain reading is the crate's wherever it answers: for every region as the
    /// default, its example numbers and random digits, typed nationally and with country
    /// codes, with spaces, dashes and other marks.
    #[test]
    fn the_plain_reading_is_the_crates() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut compared, mut plain_read) = (0, 0);
        DATABASE.with(|database| {
            for region in database.iter() {
                let Ok(id) = region.id().parse::<country::Id>() else { continue };
                let d = region.descriptors();
                let mut nationals: Vec<String> =
                    [Some(d.general()), d.fixed_line(), d.mobile(), d.toll_free(), d.voip(), d.uan()]
                        .into_iter()
                        .flatten()
                        .filter_map(|desc| desc.example().map(str::to_string))
                        .collect();
                for _ in 0..8 {
                    let length = rng.random_range(5..14);
                    nationals.push((0..length).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect());
                }
                let code = region.country_code();
                let prefix = region.national_prefix().unwrap_or("");
                for national in &nationals {
                    let mut typed = vec![
                        format!("{prefix}{national}"),
                        format!("0{national}"),
                        format!("00{national}"),
                        format!("+{code}{national}"),
                        format!("+{code} {national}"),
                        format!("+{code} {prefix}{national}"),
                        format!("00{code} {national}"),
                        format!("00 {code} {national}"),
                        format!("+{code}-{national}"),
                        format!("+{}{national}", code + 1),
                        format!("+{national}"),
                        format!("{prefix}{national}#"),
                    ];
                    // The same with a space, a dash or another mark somewhere in it, and
                    // with two spaces or dashes.
                    let marked = |text: &str, mark: &str, at: usize| format!("{}{mark}{}", &text[..at], &text[at..]);
                    for i in 0..typed.len() {
                        let text = typed[i].clone();
                        let at = rng.random_range(1..text.len());
                        for mark in [" ", "-", ".", "(", ")", "/", "x"] {
                            typed.push(marked(&text, mark, at));
                        }
                        let once = marked(&text, [" ", "-"][rng.random_range(0..2)], at);
                        let again = rng.random_range(1..once.len());
                        typed.push(marked(&once, [" ", "-"][rng.random_range(0..2)], again));
                    }
                    for text in typed {
                        let trimmed = text.trim();
                        let digits = trimmed.bytes().filter(u8::is_ascii_digit).count();
                        if !(6..=17).contains(&digits) {
                            continue;
                        }
                        compared += 1;
                        if let Some(plain) = plain::number(database, id, trimmed) {
                            plain_read += 1;
                            let crates = parse(database, id, trimmed);
                            let key = |n: &Number| {
                                (n.metadata.map(|m| m.id().to_string()), n.code, n.national.clone(), n.value.clone())
                            };
                            assert_eq!(Some(key(&plain)), crates.as_ref().map(key), "{text:?} in {}", region.id());
                        }
                    }
                }
            }
        });
        assert!(compared > 20_000, "{compared} texts");
        assert!(plain_read > 10_000, "{plain_read} of {compared} read plainly");
    }

    #[test]
    fn dutch_numbers_are_read_plainly() {
        DATABASE.with(|database| {
            let nl: country::Id = "NL".parse().unwrap();
            for typed in
                ["06-12345679", "0612345679", "06 1234 5679", "+31 6 1234 5679", "0031612345679", "020 624 5518"]
            {
                assert!(plain::number(database, nl, typed).is_some(), "{typed}");
            }
        });
    }

    #[test]
    fn unknown_region_is_none() {
        assert_eq!(normalize_phone("0612345679", "XX"), None);
    }
}
