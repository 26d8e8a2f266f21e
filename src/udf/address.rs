//! Address parts: Dutch postcodes and house numbers with additions.

/// `1234 ab`, `1234AB`, ` 1234-ab ` -> `1234AB`. Anything else (a foreign postcode) comes
/// back upper-cased without spaces or dashes; empty text is `None`.
pub fn normalize_postcode(raw: &str) -> Option<String> {
    let compact: String = raw.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    (!compact.is_empty()).then_some(compact)
}

/// Whether a normalised postcode has the Dutch `9999XX` form.
pub fn is_dutch_postcode(normalized: &str) -> bool {
    let b = normalized.as_bytes();
    b.len() == 6 && b[0] != b'0' && b[..4].iter().all(u8::is_ascii_digit) && b[4..].iter().all(u8::is_ascii_uppercase)
}

/// `12`, `12a`, `12 A`, `12-a`, `12 bis` -> `12A`, `12BIS`; the number and its addition
/// without separators, upper case.
pub fn normalize_house_number(raw: &str) -> Option<String> {
    let compact: String = raw.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    (!compact.is_empty()).then_some(compact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postcodes() {
        for typed in ["1234 ab", "1234AB", " 1234-ab ", "1234  Ab"] {
            assert_eq!(normalize_postcode(typed).as_deref(), Some("1234AB"));
        }
        assert!(is_dutch_postcode("1234AB"));
        assert!(!is_dutch_postcode("0234AB"));
        assert!(!is_dutch_postcode("B-1000"));
        assert_eq!(normalize_postcode("SW1A 1AA").as_deref(), Some("SW1A1AA"));
        assert_eq!(normalize_postcode(" - "), None);
    }

    #[test]
    fn house_numbers() {
        assert_eq!(normalize_house_number("12 a").as_deref(), Some("12A"));
        assert_eq!(normalize_house_number("12-A"), normalize_house_number("12a"));
        assert_eq!(normalize_house_number(""), None);
    }
}
