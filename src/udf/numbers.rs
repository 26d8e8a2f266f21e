//! Lenient number parsing for amounts as source systems export them: Dutch exports write
//! `12,50` and `1.234,56`, others `1,234.56`, some with a currency sign.

/// The number as plain text (`-1234.56`) that a cast to a float or decimal accepts, or
/// `None` when it is no number. With both separators the last one is the decimal mark; a
/// single comma is a decimal comma (Dutch), repeated ones group thousands, and so do
/// repeated dots.
pub fn normalize_number(raw: &str) -> Option<String> {
    let s: String = raw
        .trim()
        .trim_start_matches('€')
        .trim_start_matches("EUR")
        .trim_end_matches('€')
        .trim_end_matches("EUR")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '\'')
        .collect();
    if s.is_empty() {
        return None;
    }
    let (commas, dots) = (s.matches(',').count(), s.matches('.').count());
    let plain = match (commas, dots) {
        (0, _) if dots > 1 => s.replace('.', ""),
        (_, 0) if commas > 1 => s.replace(',', ""),
        (1, 0) => s.replace(',', "."),
        (0, _) => s,
        _ if s.rfind(',') > s.rfind('.') => s.replace('.', "").replace(',', "."),
        _ => s.replace(',', ""),
    };
    plain.parse::<f64>().ok().filter(|v| v.is_finite())?;
    Some(plain)
}

#[cfg(test)]
mod tests {
    use super::normalize_number;

    #[test]
    fn amounts_in_the_formats_exports_use() {
        let n = |s: &str| normalize_number(s);
        assert_eq!(n("12.50").as_deref(), Some("12.50"));
        assert_eq!(n(" 12,50 ").as_deref(), Some("12.50"));
        assert_eq!(n("1.234,56").as_deref(), Some("1234.56"));
        assert_eq!(n("1,234.56").as_deref(), Some("1234.56"));
        assert_eq!(n("1.234.567").as_deref(), Some("1234567"));
        assert_eq!(n("€ 7,95").as_deref(), Some("7.95"));
        assert_eq!(n("-3,00").as_deref(), Some("-3.00"));
        assert_eq!(n("1 234,50").as_deref(), Some("1234.50"));
        assert_eq!(n("42").as_deref(), Some("42"));
        assert_eq!(n("twaalf"), None);
        assert_eq!(n("NaN"), None);
        assert_eq!(n("1,2,3.4.5"), None);
        assert_eq!(n(""), None);
    }
}
