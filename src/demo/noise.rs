//! The dirt of real systems: typing errors, case, phone and postcode spellings.

use chrono::{Datelike, NaiveDate};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

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

/// The same mailbox typed differently: case, Gmail dots and `+tags`, spaces around.
pub fn email_variant(rng: &mut ChaCha8Rng, email: &str) -> String {
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
    let domain = if rng.random_bool(0.015) { typo(rng, domain) } else { domain.to_string() };
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
    fn email_variants_normalise_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..200 {
            let v = email_variant(&mut rng, "jan.devries@gmail.com");
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
