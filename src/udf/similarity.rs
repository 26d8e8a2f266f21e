//! String similarity measures for comparison levels.

/// Jaro-Winkler similarity in [0, 1]; 1 for equal strings.
///
/// ASCII text is compared on its bytes: `strsim` on `str` decodes the second text again
/// for every letter of the first, and this runs for millions of candidate pairs.
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    if a.is_ascii() && b.is_ascii() {
        strsim::generic_jaro_winkler(&Bytes(a.as_bytes()), &Bytes(b.as_bytes()))
    } else {
        strsim::jaro_winkler(a, b)
    }
}

/// Text as its bytes, for `strsim`'s measures over any sequence.
struct Bytes<'a>(&'a [u8]);

impl<'b> IntoIterator for &Bytes<'b> {
    type Item = u8;
    type IntoIter = std::iter::Copied<std::slice::Iter<'b, u8>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().copied()
    }
}

/// Edit distance counting a swap of two neighbouring letters as one edit (`Jnasen`).
///
/// ASCII text (dates, postcodes, most names, e-mail domains) is measured on its bytes
/// with the table on the stack: `strsim` keeps the last row of each letter in a hash map
/// allocated per call, and this runs for millions of candidate pairs (2% of a run's CPU
/// plus its allocations).
///
/// What two texts share at the start and at the end costs no edit, and is left out first:
/// two birth dates that differ in one digit leave one letter each to measure.
pub fn damerau_levenshtein(a: &str, b: &str) -> i64 {
    if a.is_ascii() && b.is_ascii() {
        let (a, b) = without_common_ends(a.as_bytes(), b.as_bytes());
        if (a.len() + 2) * (b.len() + 2) <= STACK_CELLS {
            return ascii_damerau_levenshtein(a, b) as i64;
        }
    }
    strsim::damerau_levenshtein(a, b) as i64
}

/// `damerau_levenshtein(a, b)` when it is at most `max`, else `max + 1`: all that a
/// comparison level `distance <= max` asks. Like PostgreSQL's `levenshtein_less_equal`,
/// it stops once the answer is known: texts whose lengths differ by more than `max` are
/// not measured, and for `max` 1 (the usual level) what is left once the shared ends are
/// left out is one letter, two swapped letters or more than one edit, without a table.
pub fn damerau_levenshtein_within(a: &str, b: &str, max: u32) -> i64 {
    let beyond = i64::from(max) + 1;
    if a.is_ascii() && b.is_ascii() {
        let (a, b) = without_common_ends(a.as_bytes(), b.as_bytes());
        if a.len().abs_diff(b.len()) > max as usize {
            return beyond;
        }
        match (max, a, b) {
            (_, [], []) => return 0,
            (0, _, _) => return beyond,
            (1, [_] | [], [_] | []) => return 1,
            // Both ends differ (they were left out otherwise), so only a swap is one edit.
            (1, [x, y], [p, q]) => return if x == q && y == p { 1 } else { beyond },
            (1, _, _) => return beyond,
            _ => {}
        }
    }
    damerau_levenshtein(a, b).min(beyond)
}

/// `a` and `b` without the bytes they share at the start and at the end.
fn without_common_ends<'a, 'b>(a: &'a [u8], b: &'b [u8]) -> (&'a [u8], &'b [u8]) {
    let start = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[start..], &b[start..]);
    let end = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
    (&a[..a.len() - end], &b[..b.len() - end])
}

/// Cells of the distance table kept on the stack (two 30-letter words).
const STACK_CELLS: usize = 32 * 32;

/// Cells of the small table: two dates, or two words of up to ten letters. A call clears
/// only the table it uses, and most pairs (birth dates, names that differ) fit this one.
const SMALL_CELLS: usize = 12 * 12;

/// The unrestricted Damerau-Levenshtein distance that `strsim` computes (here by
/// Lowrance-Wagner's full table, `strsim` by Zhao-Sahni's linear space), over bytes below 128.
fn ascii_damerau_levenshtein(a: &[u8], b: &[u8]) -> u32 {
    if (a.len() + 2) * (b.len() + 2) <= SMALL_CELLS {
        distance_table::<SMALL_CELLS>(a, b)
    } else {
        distance_table::<STACK_CELLS>(a, b)
    }
}

/// `ascii_damerau_levenshtein` in a table of `CELLS` cells, at least `(a + 2) * (b + 2)`.
fn distance_table<const CELLS: usize>(a: &[u8], b: &[u8]) -> u32 {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return (n + m) as u32;
    }
    let width = m + 2;
    let max = (n + m) as u32;
    let mut d = [0u32; CELLS];
    d[0] = max;
    for i in 0..=n {
        d[(i + 1) * width] = max;
        d[(i + 1) * width + 1] = i as u32;
    }
    for j in 0..=m {
        d[j + 1] = max;
        d[width + j + 1] = j as u32;
    }
    // Per letter, the last row of `a` it was seen in (rows fit in 16 bits: the table
    // has at most `STACK_CELLS` cells).
    let mut last_row = [0u16; 128];
    for i in 1..=n {
        // The last column of this row where `b` had `a`'s letter.
        let mut last_match = 0usize;
        for j in 1..=m {
            let k = last_row[b[j - 1] as usize] as usize;
            let l = last_match;
            let cost = if a[i - 1] == b[j - 1] {
                last_match = j;
                0
            } else {
                1
            };
            let substitution = d[i * width + j] + cost;
            let insertion = d[(i + 1) * width + j] + 1;
            let deletion = d[i * width + j + 1] + 1;
            let transposition = d[k * width + l] + (i - k - 1) as u32 + 1 + (j - l - 1) as u32;
            d[(i + 1) * width + j + 1] = substitution.min(insertion).min(deletion).min(transposition);
        }
        last_row[a[i - 1] as usize] = i as u16;
    }
    d[(n + 1) * width + m + 1]
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

    /// The stack table gives `strsim`'s distance, and Jaro-Winkler on bytes its
    /// similarity, on every pair of a set of short words with repeats, swaps and shared
    /// letters (and on dates written as text).
    #[test]
    fn ascii_distance_is_strsims() {
        let long = "x".repeat(40);
        let words = [
            "",
            "a",
            "ab",
            "ba",
            "abc",
            "ca",
            "acb",
            "bca",
            "abcd",
            "badc",
            "jansen",
            "jnasen",
            "janssen",
            "jansne",
            "1985-03-02",
            "1985-02-03",
            "1958-03-02",
            "1985-03-20",
            "aaaa",
            "aaab",
            "abab",
            "baba",
            "de vries",
            "devries",
            // Either side of the small table's size.
            "abcdefghij",
            "jihgfedcba",
            "abcdefghijk",
            "bacdefghikj",
            "kjihgfedcbal",
        ];
        for a in words {
            for b in words {
                assert_eq!(
                    ascii_damerau_levenshtein(a.as_bytes(), b.as_bytes()) as usize,
                    strsim::damerau_levenshtein(a, b),
                    "{a:?} {b:?}"
                );
                // Jaro-Winkler on bytes: strsim's value to the last bit.
                assert_eq!(jaro_winkler(a, b).to_bits(), strsim::jaro_winkler(a, b).to_bits(), "{a:?} {b:?}");
            }
        }
        // Long texts that differ in a few letters fit the stack table once their shared
        // ends are left out; beyond it and outside ASCII, strsim measures.
        assert_eq!(damerau_levenshtein(&format!("{long}ab"), &format!("{long}ba")), 1);
        assert_eq!(damerau_levenshtein(&long, "xy"), 39);
        assert_eq!(damerau_levenshtein("jösé", "jsöé"), 1);
    }

    /// The bounded distance is the distance capped at `max + 1`, for every bound up to
    /// three, on every pair of words up to four letters over three letters and on the
    /// word list (dates, swaps, texts outside ASCII).
    #[test]
    fn bounded_distance_is_capped_distance() {
        let mut words = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            last = last.iter().flat_map(|w| ["a", "b", "c"].map(|c| format!("{w}{c}"))).collect();
            words.extend(last.iter().cloned());
        }
        let listed =
            ["jansen", "jnasen", "janssen", "1985-03-02", "1985-02-03", "1958-03-02", "1985-03-20", "jösé", "jsöé"];
        words.extend(listed.map(String::from));
        for a in &words {
            for b in &words {
                let distance = damerau_levenshtein(a, b);
                for max in 0..=3u32 {
                    let capped = distance.min(i64::from(max) + 1);
                    assert_eq!(damerau_levenshtein_within(a, b, max), capped, "{a:?} {b:?} within {max}");
                }
            }
        }
    }

    /// Leaving out the shared start and end does not change the distance: every pair of
    /// words up to five letters over three letters (where swaps and repeats meet the
    /// shared ends most often) measures as `strsim` measures it (Jaro-Winkler too).
    #[test]
    fn shared_ends_change_nothing() {
        let mut words = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..5 {
            last = last.iter().flat_map(|w| ["a", "b", "c"].map(|c| format!("{w}{c}"))).collect();
            words.extend(last.iter().cloned());
        }
        for a in &words {
            for b in &words {
                assert_eq!(damerau_levenshtein(a, b) as usize, strsim::damerau_levenshtein(a, b), "{a:?} {b:?}");
                assert_eq!(jaro_winkler(a, b).to_bits(), strsim::jaro_winkler(a, b).to_bits(), "{a:?} {b:?}");
            }
        }
    }
}
