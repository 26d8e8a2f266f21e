//! String similarity measures for comparison levels.

/// Jaro-Winkler similarity in [0, 1]; 1 for equal strings.
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    strsim::jaro_winkler(a, b)
}

/// Edit distance counting a swap of two neighbouring letters as one edit (`Jnasen`).
pub fn damerau_levenshtein(a: &str, b: &str) -> i64 {
    strsim::damerau_levenshtein(a, b) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarities() {
        assert_eq!(jaro_winkler("jansen", "jansen"), 1.0);
        assert!(jaro_winkler("jansen", "janssen") > 0.95);
        assert!(jaro_winkler("bakker", "visser") < 0.7);
        assert_eq!(damerau_levenshtein("jansen", "jnasen"), 1);
        assert_eq!(damerau_levenshtein("", "abc"), 3);
    }
}
