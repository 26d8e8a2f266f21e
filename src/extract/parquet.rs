//! Parquet sources: each file's schema is read from its footer, files are grouped by
//! schema, and a column whose type differs between files must be declared.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::{DataFrame, SessionContext};
use indexmap::IndexMap;
use object_store::ObjectMeta;

use super::{ExtractError, SourceCtx, apply_declared, declared_types, listing_frame, union_by_name};

pub(super) async fn read(
    ctx: &SessionContext,
    src: &SourceCtx<'_>,
    files: &[(ObjectMeta, String)],
) -> Result<(Option<DataFrame>, Vec<String>), ExtractError> {
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
        let df = listing_frame(ctx, src.name, &urls, options, schema).await?;
        frames.push(apply_declared(src.name, df, &declared)?);
    }
    let df = union_by_name(src.name, frames)?;
    let columns =
        df.as_ref().map(|d| d.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
    Ok((df, columns))
}

/// Types that read alike (string flavours) compare equal.
fn normalized(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}
