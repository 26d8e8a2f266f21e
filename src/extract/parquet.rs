//! Parquet sources: each file's schema is read from its footer, files are grouped by
//! schema, and a column whose type differs between files must be declared.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, col, lit, trim};

use crate::config::BadRowPolicy;
use indexmap::IndexMap;
use object_store::ObjectMeta;

use super::lint::{BadRow, RejectedRows};
use super::{ExtractError, SourceCtx, apply_declared, declared_types, listing_frame, typed_expr, union_by_name};

pub(super) async fn read(
    ctx: &SessionContext,
    src: &SourceCtx<'_>,
    files: &[(ObjectMeta, String)],
    rejected: &mut RejectedRows,
) -> Result<(Option<DataFrame>, Vec<String>, u64), ExtractError> {
    let declared = declared_types(src.spec);
    let format = ParquetFormat::default();
    let state = ctx.state();
    let mut groups: IndexMap<SchemaRef, Vec<String>> = IndexMap::new();
    // Column name -> (type, first file with it), to name both files on a conflict.
    let mut seen: IndexMap<String, (DataType, String)> = IndexMap::new();
    for (meta, url) in files {
        let schema = format.infer_schema(&state, &src.store, std::slice::from_ref(meta)).await.map_err(|e| {
            ExtractError::BadFile {
                source_name: src.name.into(),
                file: url.clone(),
                reason: format!("not a readable Parquet file: {e}"),
            }
        })?;
        if let Some(key) = &src.spec.key
            && schema.field_with_name(key).is_err()
        {
            return Err(ExtractError::BadFile {
                source_name: src.name.into(),
                file: url.clone(),
                reason: format!("no key column `{key}` in this file"),
            });
        }
        for field in schema.fields() {
            if declared.iter().any(|(c, _)| c == field.name()) {
                continue;
            }
            let t = normalized(field.data_type());
            match seen.get(field.name()) {
                Some((other, first)) if *other != t => {
                    return Err(ExtractError::BadFile {
                        source_name: src.name.into(),
                        file: url.clone(),
                        reason: format!(
                            "column `{}` is {} here but {} in {first}; declare its type under `schema:`",
                            field.name(),
                            field.data_type(),
                            other
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    seen.insert(field.name().clone(), (t, url.clone()));
                }
            }
        }
        groups.entry(schema).or_default().push(url.clone());
    }
    let mut frames = Vec::new();
    for (schema, urls) in groups {
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension("");
        let checks = row_checks(&schema, src.spec.key.as_deref(), &declared);
        let df = listing_frame(ctx, src.name, &urls, options.clone(), schema.clone()).await?;
        if !any_fails(src, &df, &checks).await? {
            frames.push(apply_declared(src.name, df, &declared)?);
            continue;
        }
        // A row that would be lost (an empty key, a value that would turn into NULL)
        // fails the run or is set aside, named by its file: the files are read one by one.
        for url in urls {
            let df = listing_frame(ctx, src.name, std::slice::from_ref(&url), options.clone(), schema.clone()).await?;
            let df = set_aside_failing_rows(src, &url, df, &checks, rejected).await?;
            frames.push(apply_declared(src.name, df, &declared)?);
        }
    }
    let df = union_by_name(src.name, frames)?;
    let columns =
        df.as_ref().map(|d| d.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
    // From the footers' statistics: nothing is scanned.
    let rows = match &df {
        Some(d) => d.clone().count().await.map_err(|e| super::engine(src.name, e))? as u64,
        None => 0,
    };
    Ok((df, columns, rows))
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

/// A condition on the rows of a Parquet file that would lose a row or a value silently.
struct RowCheck {
    column: String,
    /// True for a row that fails the check.
    fails: Expr,
    /// Why, after the column name and value; `None` for the key check.
    what: Option<String>,
}

impl RowCheck {
    fn reason(&self, value: &str) -> String {
        match &self.what {
            Some(what) => format!("column `{}`: `{value}` {what}", self.column),
            None => format!("empty key `{}`", self.column),
        }
    }
}

/// For a file schema: an empty record key, and text in a column declared as another type
/// that does not read as that type (it would become NULL).
fn row_checks(schema: &SchemaRef, key: Option<&str>, declared: &[(String, DataType)]) -> Vec<RowCheck> {
    let mut checks: Vec<RowCheck> = key
        .map(|k| {
            let v = col(format!("\"{k}\""));
            let text = cast(v.clone(), DataType::Utf8);
            RowCheck { column: k.to_string(), fails: v.is_null().or(trim(vec![text]).eq(lit(""))), what: None }
        })
        .into_iter()
        .collect();
    for (c, t) in declared {
        if is_text(t) || !schema.field_with_name(c).is_ok_and(|f| is_text(f.data_type())) {
            continue;
        }
        let raw = col(format!("\"{c}\""));
        let typed = typed_expr(c, &DataType::Utf8, t).unalias();
        let fails = raw.clone().is_not_null().and(trim(vec![raw]).not_eq(lit(""))).and(typed.is_null());
        checks.push(RowCheck { column: c.clone(), fails, what: Some(format!("is not a valid {t}")) });
    }
    checks
}

/// Whether any row of the frame fails a check (one scan of the checked columns).
async fn any_fails(src: &SourceCtx<'_>, df: &DataFrame, checks: &[RowCheck]) -> Result<bool, ExtractError> {
    let Some(any) = checks.iter().map(|c| c.fails.clone()).reduce(Expr::or) else { return Ok(false) };
    let engine = |e| super::engine(src.name, e);
    let found =
        df.clone().filter(any).and_then(|d| d.limit(0, Some(1))).map_err(engine)?.count().await.map_err(engine)?;
    Ok(found > 0)
}

/// Fails on the first row of a file that a check finds, or (quarantine) sets those rows
/// aside, each named by its file.
async fn set_aside_failing_rows(
    src: &SourceCtx<'_>,
    url: &str,
    df: DataFrame,
    checks: &[RowCheck],
    rejected: &mut RejectedRows,
) -> Result<DataFrame, ExtractError> {
    let engine = |e| super::engine(src.name, e);
    let any = checks.iter().map(|c| c.fails.clone()).reduce(Expr::or).expect("at least one check");
    let mut shown: Vec<Expr> =
        checks.iter().enumerate().map(|(i, c)| c.fails.clone().is_true().alias(format!("failed_{i}"))).collect();
    shown.extend(
        checks
            .iter()
            .enumerate()
            .map(|(i, c)| cast(col(format!("\"{}\"", c.column)), DataType::Utf8).alias(format!("value_{i}"))),
    );
    let batches = df
        .clone()
        .filter(any.clone())
        .and_then(|d| d.select(shown))
        .map_err(engine)?
        .collect()
        .await
        .map_err(engine)?;
    let mut found = Vec::new();
    for batch in &batches {
        let n = checks.len();
        for row in 0..batch.num_rows() {
            let text = |i: usize| array_value_to_string(batch.column(i), row).unwrap_or_default();
            let Some(i) = (0..n).find(|i| text(*i) == "true") else { continue };
            let values: Vec<String> = (0..n).map(|j| text(n + j)).collect();
            found.push(BadRow {
                file: url.to_string(),
                line: 0,
                reason: checks[i].reason(&values[i]),
                record: values.join(", "),
            });
        }
    }
    if found.is_empty() {
        return Ok(df);
    }
    let count = found.len();
    if src.spec.on_bad_rows == BadRowPolicy::Fail {
        let first = found.swap_remove(0);
        return Err(ExtractError::BadFile {
            source_name: src.name.into(),
            file: url.to_string(),
            reason: format!("{} ({count} such rows; set `on_bad_rows: quarantine` to set them aside)", first.reason),
        });
    }
    rejected.rows.extend(found);
    df.filter(any.is_not_true()).map_err(engine)
}

/// Types that read alike (string flavours) compare equal.
fn normalized(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}
