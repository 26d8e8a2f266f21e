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

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Float64Type;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::ColumnarValue;

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
///
/// The person rule's join filter calls this on every candidate pair (11.5M per 200k people
/// in one block), so the row loop reads bitmaps and typed arrays, not `dyn Array` calls
/// and boxed iterators (those were a third of the candidate-edge step's CPU).
pub fn comparison_levels(name: &str, l: &ArrayRef, r: &ArrayRef, levels: &str) -> Result<ArrayRef> {
    let levels = parse_levels(name, levels)?;
    let (missing, equal) = missing_and_equal(l, r)?;
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
    let (left, right) = match needs_text {
        true => (Some(super::Texts::of(name, &lt)?), Some(super::Texts::of(name, &rt)?)),
        false => (None, None),
    };
    let text_pair = |row: usize| match (&left, &right) {
        (Some(a), Some(b)) => a.get(row).zip(b.get(row)),
        _ => None,
    };
    let out: Vec<i64> = (0..l.len())
        .map(|row| {
            if missing.as_ref().is_some_and(|m| m.is_null(row)) {
                return -1;
            }
            // Computed once for the pair, whatever the number of thresholds.
            let mut similarity = None;
            let reached = levels.iter().position(|kind| match kind {
                LevelKind::Exact => equal.value(row),
                LevelKind::DamerauLevenshtein(d) => {
                    distances.is_some_and(|dist| dist.is_valid(row) && dist.value(row) <= i64::from(*d))
                }
                LevelKind::JaroWinkler(t) => text_pair(row)
                    .is_some_and(|(x, y)| *similarity.get_or_insert_with(|| super::jaro_winkler(x, y)) >= *t),
                LevelKind::Initials => text_pair(row).is_some_and(|(x, y)| initials(x, y)),
                LevelKind::Sql(_) => false,
            });
            reached.unwrap_or(levels.len()) as i64
        })
        .collect();
    Ok(Arc::new(Int64Array::from(out)))
}

/// Where either value of a pair is missing, and where the two are equal: the engine's own
/// equality, as `l.c = r.c` (dates as dates, text as bytes), to be read only where both
/// values are present. The `exact` level and `equality_weight` both mean this.
fn missing_and_equal(l: &ArrayRef, r: &ArrayRef) -> Result<(Option<NullBuffer>, BooleanBuffer)> {
    let missing = NullBuffer::union(l.logical_nulls().as_ref(), r.logical_nulls().as_ref());
    Ok((missing, datafusion::arrow::compute::kernels::cmp::eq(l, r)?.values().clone()))
}

/// `equality_weight(l1, r1, if_equal1, if_not1, l2, r2, ...)`: per row, the sum over the
/// groups of four of 0 where either value is missing, `if_equal` where the two are equal
/// (the engine's `=`, as the `exact` level) and `if_not` elsewhere. The weights are
/// numbers or columns of them; a missing weight counts 0.
///
/// The person rule's weight bound is such a sum; as `CASE`s over `comparison_level` it
/// was half the CPU of the join that finds the candidate pairs.
pub fn equality_weights(name: &str, args: &[ColumnarValue], rows: usize) -> Result<ArrayRef> {
    if args.is_empty() || !args.len().is_multiple_of(4) {
        return exec_err!(
            "{name}: expects groups of four arguments (left, right, if equal, if not), got {}",
            args.len()
        );
    }
    let weight = |value: &ColumnarValue| -> Result<Weight> {
        Ok(match value {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Float64)? {
                ScalarValue::Float64(w) => Weight::Constant(w.unwrap_or(0.0)),
                other => return exec_err!("{name}: a weight must be a number, got {other}"),
            },
            ColumnarValue::Array(a) => {
                let a = datafusion::arrow::compute::cast(a, &DataType::Float64)?;
                Weight::PerRow(a.as_primitive::<Float64Type>().clone())
            }
        })
    };
    let mut sum = vec![0.0; rows];
    for group in args.chunks_exact(4) {
        let (l, r) = (group[0].to_array(rows)?, group[1].to_array(rows)?);
        let (missing, equal) = missing_and_equal(&l, &r)?;
        let (if_equal, if_not) = (weight(&group[2])?, weight(&group[3])?);
        for (row, total) in sum.iter_mut().enumerate() {
            if missing.as_ref().is_some_and(|m| m.is_null(row)) {
                continue;
            }
            *total += if equal.value(row) { if_equal.at(row) } else { if_not.at(row) };
        }
    }
    Ok(Arc::new(Float64Array::from(sum)))
}

/// A weight of `equality_weight`: one number, or one per row.
enum Weight {
    Constant(f64),
    PerRow(Float64Array),
}

impl Weight {
    fn at(&self, row: usize) -> f64 {
        match self {
            Weight::Constant(w) => *w,
            Weight::PerRow(a) if a.is_valid(row) => a.value(row),
            Weight::PerRow(_) => 0.0,
        }
    }
}

/// The `initials` level's SQL, `(length(regexp_replace(x, '[^[:alpha:]]', '', 'g')) = 1 OR
/// (the same of y)) AND upper(left(x, 1)) = upper(left(y, 1))`: one value has a single
/// ASCII letter (the pattern's class), and both begin with the same character.
fn initials(x: &str, y: &str) -> bool {
    let letters = |s: &str| s.chars().filter(char::is_ascii_alphabetic).count();
    let first_upper = |s: &str| s.chars().next().map(|c| c.to_uppercase().collect::<String>()).unwrap_or_default();
    (letters(x) == 1 || letters(y) == 1) && first_upper(x) == first_upper(y)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    use datafusion::prelude::SessionContext;

    /// Missing values weigh nothing, equal and unequal ones their weight, constant or per
    /// row; the sum is over every group, and dates compare as dates.
    #[tokio::test]
    async fn equality_weight_sums_the_weight_of_each_pair_of_values() {
        let ctx = SessionContext::new();
        crate::udf::register(&ctx);
        let sql = "SELECT equality_weight(a, b, 2.0, -1, d1, d2, w, 0.5) AS s FROM (VALUES \
             ('x', 'x', DATE '2000-01-01', DATE '2000-01-01', 10.0), \
             ('x', 'y', DATE '2000-01-01', DATE '2000-01-02', 20.0), \
             (NULL, 'y', DATE '2000-01-01', NULL, 30.0), \
             ('x', 'x', DATE '2000-01-01', DATE '2000-01-01', NULL)) t(a, b, d1, d2, w)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let sums: Vec<f64> = batches[0].column(0).as_primitive::<Float64Type>().values().to_vec();
        assert_eq!(sums, [12.0, -0.5, 0.0, 2.0]);
        assert!(ctx.sql("SELECT equality_weight('a', 'b', 1.0)").await.unwrap().collect().await.is_err());
    }
}
