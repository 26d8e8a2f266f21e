//! `comparison_level(l, r, levels)`: which level of a probabilistic comparison a pair of
//! values reaches, in one pass over the pairs.
//!
//! The same level as SQL is a `CASE` with a condition per level, which the engine
//! evaluates level after level on the pairs left over, casting the columns to text for
//! each condition and computing a Jaro-Winkler similarity once per threshold. The person
//! rule weighs millions of pairs per run, so its levels are compiled to this function
//! when they are all built-in kinds (`resolve::probabilistic::gamma`); a level written in
//! SQL keeps the `CASE`. Each level here means exactly what its SQL condition means.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, Int64Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};

use crate::config::LevelKind;

/// The third argument: the levels, most exact first, as [`levels_text`] writes them.
pub fn levels_text(levels: &[&LevelKind]) -> Option<String> {
    let words: Option<Vec<String>> = levels
        .iter()
        .map(|kind| match kind {
            LevelKind::Exact => Some("exact".to_string()),
            LevelKind::Initials => Some("initials".to_string()),
            LevelKind::JaroWinkler(t) => Some(format!("jaro_winkler:{t}")),
            LevelKind::DamerauLevenshtein(d) => Some(format!("damerau_levenshtein:{d}")),
            LevelKind::Sql(_) => None,
        })
        .collect();
    words.map(|w| w.join(";"))
}

fn parse_levels(name: &str, text: &str) -> Result<Vec<LevelKind>> {
    text.split(';')
        .map(|word| {
            let parsed = match word.split_once(':') {
                None if word == "exact" => Some(LevelKind::Exact),
                None if word == "initials" => Some(LevelKind::Initials),
                Some(("jaro_winkler", t)) => t.parse().ok().map(LevelKind::JaroWinkler),
                Some(("damerau_levenshtein", d)) => d.parse().ok().map(LevelKind::DamerauLevenshtein),
                _ => None,
            };
            match parsed {
                Some(kind) => Ok(kind),
                None => exec_err!(
                    "{name}: `{word}` is not a level (exact, initials, jaro_winkler:<0..1>, damerau_levenshtein:<n>)"
                ),
            }
        })
        .collect()
}

/// The level index of each pair: -1 when either value is missing, the index of the first
/// level the pair reaches, or the number of levels when it reaches none.
pub fn comparison_levels(name: &str, l: &ArrayRef, r: &ArrayRef, levels: &str) -> Result<ArrayRef> {
    let levels = parse_levels(name, levels)?;
    let exact: Option<BooleanArray> = match levels.contains(&LevelKind::Exact) {
        // The engine's own equality, as `l.c = r.c` (dates as dates, text as bytes).
        true => Some(datafusion::arrow::compute::kernels::cmp::eq(l, r)?),
        false => None,
    };
    // The largest distance asked for: a distance capped there answers every smaller one.
    let bound =
        levels.iter().filter_map(|k| if let LevelKind::DamerauLevenshtein(d) = k { Some(*d) } else { None }).max();
    let distances = match bound {
        Some(max) => Some(super::edit_distances(name, l, r, Some(max))?),
        None => None,
    };
    let distances = distances.as_ref().map(|d| d.as_any().downcast_ref::<Int64Array>().expect("edit distances"));
    let needs_text = levels.iter().any(|k| matches!(k, LevelKind::Initials | LevelKind::JaroWinkler(_)));
    let as_text = |array: &ArrayRef| -> Result<ArrayRef> {
        Ok(match array.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => array.clone(),
            _ => datafusion::arrow::compute::cast(array, &DataType::Utf8)?,
        })
    };
    let (lt, rt) = if needs_text { (as_text(l)?, as_text(r)?) } else { (l.clone(), r.clone()) };
    let mut left = needs_text.then(|| super::texts(name, &lt)).transpose()?;
    let mut right = needs_text.then(|| super::texts(name, &rt)).transpose()?;
    let mut out = Int64Builder::with_capacity(l.len());
    for row in 0..l.len() {
        let (x, y) = match (&mut left, &mut right) {
            (Some(a), Some(b)) => (a.next().flatten(), b.next().flatten()),
            _ => (None, None),
        };
        if l.is_null(row) || r.is_null(row) {
            out.append_value(-1);
            continue;
        }
        // Computed once for the pair, whatever the number of thresholds.
        let mut similarity = None;
        let reached = levels.iter().position(|kind| match kind {
            LevelKind::Exact => exact.as_ref().is_some_and(|e| e.is_valid(row) && e.value(row)),
            LevelKind::DamerauLevenshtein(d) => {
                distances.is_some_and(|dist| dist.is_valid(row) && dist.value(row) <= i64::from(*d))
            }
            LevelKind::JaroWinkler(t) => match (x, y) {
                (Some(x), Some(y)) => *similarity.get_or_insert_with(|| super::jaro_winkler(x, y)) >= *t,
                _ => false,
            },
            LevelKind::Initials => match (x, y) {
                (Some(x), Some(y)) => initials(x, y),
                _ => false,
            },
            LevelKind::Sql(_) => false,
        });
        out.append_value(reached.unwrap_or(levels.len()) as i64);
    }
    Ok(Arc::new(out.finish()))
}

/// The `initials` level's SQL, `(length(regexp_replace(x, '[^[:alpha:]]', '', 'g')) = 1 OR
/// (the same of y)) AND upper(left(x, 1)) = upper(left(y, 1))`: one value has a single
/// ASCII letter (the pattern's class), and both begin with the same character.
fn initials(x: &str, y: &str) -> bool {
    let letters = |s: &str| s.chars().filter(char::is_ascii_alphabetic).count();
    let first_upper = |s: &str| s.chars().next().map(|c| c.to_uppercase().collect::<String>()).unwrap_or_default();
    (letters(x) == 1 || letters(y) == 1) && first_upper(x) == first_upper(y)
}
