//! The dirt of real systems: typing errors, case, phone and postcode spellings.

use chrono::{Datelike, NaiveDate};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

/// How dirty the generated records are: the base rates, or one kind of dirt turned up.
/// The benchmark's robustness matrix runs the matcher under each, so that no change is
/// judged on one sample of reality. `Base` draws exactly what it always drew, so a seed
/// gives the same files as before profiles existed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    #[default]
    Base,
    /// Three times the typing errors in names, birth dates and e-mail domains.
    Typos,
    /// Three times the records without a postcode.
    Postcodes,
    /// Three times the initials and nicknames in place of full first names.
    Nicknames,
    /// One record in eight with first and last name in each other's field.
    Swapped,
    /// Phones and birth dates in other spellings (spaced, international, `YYYYMMDD`, `D/M/YYYY`).
    Formats,
    /// One till transaction and one web order in fifteen refunded (a negative amount).
    Refunds,
}

impl Profile {
    /// Factor on the chance of a typing error.
    pub fn typos(self) -> f64 {
        if self == Profile::Typos { 3.0 } else { 1.0 }
    }

    /// The chance that a value is present, given its base chance: the absent share is
    /// tripled for postcodes under `Postcodes`.
    pub fn postcode_present(self, base: f64) -> f64 {
        if self == Profile::Postcodes { 1.0 - 3.0 * (1.0 - base) } else { base }
    }

    /// Factor on the chance of an initial or a nickname instead of the first name.
    pub fn nicknames(self) -> f64 {
        if self == Profile::Nicknames { 3.0 } else { 1.0 }
    }

    /// The chance that a record's name fields are swapped.
    pub fn swapped(self) -> f64 {
        if self == Profile::Swapped { 0.125 } else { 0.0 }
    }

    /// The share of transactions and orders that are refunds.
    pub fn refunds(self) -> f64 {
        if self == Profile::Refunds { 1.0 / 15.0 } else { 0.0 }
    }
}

/// Lower-case ASCII for building mailbox names (`Müller` -> `muller`).
pub fn ascii_lower(s: &str) -> String {
    deunicode::deunicode(s).to_lowercase().replace(' ', "")
}

pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// One typing error: two letters swapped, one dropped, one doubled, or a neighbour key.
pub fn typo(rng: &mut ChaCha8Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if chars.len() < 4 {
        return s.to_string();
    }
    let i = rng.random_range(1..chars.len() - 1);
    match rng.random_range(0..4) {
        0 => chars.swap(i, i + 1),
        1 => {
            chars.remove(i);
        }
        2 => chars.insert(i, chars[i]),
        _ => {
            let neighbours = "qwertyuiopasdfghjklzxcvbnm";
            chars[i] = neighbours.chars().nth(rng.random_range(0..26)).unwrap_or('e');
        }
    }
    chars.into_iter().collect()
}

/// Mostly as typed, sometimes all capitals or all lower case.
pub fn case_noise(rng: &mut ChaCha8Rng, s: &str) -> String {
    match rng.random_range(0..100) {
        0..4 => s.to_uppercase(),
        4..8 => s.to_lowercase(),
        _ => s.to_string(),
    }
}

/// A national number (`612345678`, `201234567`) the way people type it.
pub fn phone_format(rng: &mut ChaCha8Rng, national: &str) -> String {
    let mobile = national.starts_with('6');
    let (area, rest) = if mobile { national.split_at(1) } else { national.split_at(2) };
    match rng.random_range(0..8) {
        0 => format!("0{area}-{rest}"),
        1 => format!("0{national}"),
        2 => format!("+31 {area} {rest}"),
        3 => format!("+31{national}"),
        4 => format!("0031{national}"),
        5 => format!("0{area} {} {}", &rest[..rest.len() / 2], &rest[rest.len() / 2..]),
        6 => format!("(0{area}) {rest}"),
        _ => format!("+31 (0){area} {rest}"),
    }
}

/// A phone as typed in other conventions than the Dutch one: spaced pairs, the
/// international prefix with a hyphen, or digits only with the country code.
pub fn phone_format_other(rng: &mut ChaCha8Rng, national: &str) -> String {
    let pairs: Vec<String> = national.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    match rng.random_range(0..4) {
        0 => format!("0{}", pairs.join(" ")),
        1 => format!("+31-{}-{}", &national[..1], &national[1..]),
        2 => format!("31{national}"),
        _ => format!("+31 {}", pairs.join(".")),
    }
}

/// A birth date as other systems write it.
pub fn date_format_other(rng: &mut ChaCha8Rng, d: NaiveDate) -> String {
    match rng.random_range(0..3) {
        0 => d.format("%Y%m%d").to_string(),
        1 => d.format("%-d/%-m/%Y").to_string(),
        _ => d.format("%d.%m.%Y").to_string(),
    }
}

/// The same mailbox typed differently: case, Gmail dots and `+tags`, spaces around.
pub fn email_variant(rng: &mut ChaCha8Rng, email: &str, typo_factor: f64) -> String {
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    let mut local = local.to_string();
    if domain == "gmail.com" && rng.random_bool(0.15) {
        local = local.replace('.', "");
        if local.len() > 3 {
            let at = rng.random_range(1..local.len() - 1);
            local.insert(at, '.');
        }
    }
    if rng.random_bool(0.04) {
        local = format!("{local}+{}", ["shop", "nieuwsbrief", "korting", "2024"].choose(rng).expect("tags"));
    }
    // A slip of the finger in the domain (`hotmial.com`, `zigo.nl`).
    let domain = if rng.random_bool(0.015 * typo_factor) { typo(rng, domain) } else { domain.to_string() };
    let out = format!("{local}@{domain}");
    match rng.random_range(0..100) {
        0..8 => capitalize(&out),
        8..11 => out.to_uppercase(),
        11..13 => format!(" {out} "),
        _ => out,
    }
}

pub fn postcode_format(rng: &mut ChaCha8Rng, pc: &str) -> String {
    let (digits, letters) = pc.split_at(4);
    match rng.random_range(0..10) {
        0..5 => format!("{digits} {letters}"),
        5..8 => pc.to_string(),
        8 => format!("{digits}{}", letters.to_lowercase()),
        _ => format!("{digits} {}", letters.to_lowercase()),
    }
}

pub fn house_number(rng: &mut ChaCha8Rng, number: u16, addition: Option<char>) -> String {
    match addition {
        None => number.to_string(),
        Some(a) => match rng.random_range(0..4) {
            0 => format!("{number}{a}"),
            1 => format!("{number} {}", a.to_ascii_uppercase()),
            2 => format!("{number}-{a}"),
            _ => format!("{number}{}", a.to_ascii_uppercase()),
        },
    }
}

/// A mistyped birth date: day and month swapped, or one digit off.
pub fn date_typo(rng: &mut ChaCha8Rng, d: NaiveDate) -> NaiveDate {
    let swapped = NaiveDate::from_ymd_opt(d.year(), d.day(), d.month());
    match swapped {
        Some(s) if rng.random_bool(0.5) && s != d => s,
        _ => d.with_day(((d.day() % 28) + 1).min(28)).unwrap_or(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_phone_spelling_normalises_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let typed = phone_format(&mut rng, "612345679");
            assert_eq!(crate::udf::normalize_phone(&typed, "NL").as_deref(), Some("+31612345679"), "{typed}");
            let typed = phone_format(&mut rng, "206245518");
            assert_eq!(crate::udf::normalize_phone(&typed, "NL").as_deref(), Some("+31206245518"), "{typed}");
        }
    }

    #[test]
    fn other_phone_and_date_spellings_read_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let birth = NaiveDate::from_ymd_opt(1984, 3, 7).unwrap();
        for _ in 0..50 {
            let typed = phone_format_other(&mut rng, "612345679");
            assert_eq!(crate::udf::normalize_phone(&typed, "NL").as_deref(), Some("+31612345679"), "{typed}");
            let typed = date_format_other(&mut rng, birth);
            assert_eq!(crate::udf::parse_date(&typed), Some(birth), "{typed}");
        }
    }

    #[test]
    fn email_variants_normalise_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..200 {
            let v = email_variant(&mut rng, "jan.devries@gmail.com", 1.0);
            assert_eq!(crate::udf::normalize_email(&v).as_deref(), Some("jandevries@gmail.com"), "{v}");
        }
    }

    #[test]
    fn typos_change_one_thing() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let t = typo(&mut rng, "Jansen");
            assert!(strsim::damerau_levenshtein(&t, "Jansen") <= 1, "{t}");
        }
    }
}
