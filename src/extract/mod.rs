//! Extract: each source becomes a DataFusion table over its files, with `source_system`
//! and `source_record_id` on every row. Text formats are checked line by line first so
//! that a bad row is reported with its file and line, or set aside (quarantine).

mod csv;
mod lint;
mod ndjson;
mod parquet;

pub use lint::{BadRow, RejectedRows};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::{ObjectMeta, ObjectStore};
use serde::Serialize;

use crate::config::{BadRowPolicy, FormatSpec, Pipeline, SourceSpec};
use crate::storage::{self, Location, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("source `{source_name}`: no file matches {location}")]
    NoFiles { source_name: String, location: String },
    #[error(
        "source `{source_name}`: no row of {location} could be read ({rejected} rejected); a required dump \
         with a header only is an export that went wrong (mark the source `optional: true` if it can be empty)"
    )]
    NoRows { source_name: String, location: String, rejected: usize },
    #[error("{file}: file is empty (source `{source_name}`)")]
    EmptyFile { source_name: String, file: String },
    #[error("{file}:{line}: {reason} (source `{source_name}`; set `on_bad_rows: quarantine` to set such rows aside)")]
    BadRow { source_name: String, file: String, line: u64, reason: String },
    #[error("{file}: {reason} (source `{source_name}`)")]
    BadFile { source_name: String, file: String, reason: String },
    #[error("source `{source_name}`: {message}")]
    Source { source_name: String, message: String },
    #[error("source `{source_name}`: {source}")]
    Engine { source_name: String, source: datafusion::error::DataFusionError },
    #[error("{path}: {source}")]
    Scratch { path: PathBuf, source: std::io::Error },
}

impl ExtractError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        use crate::ExitClass;
        match self {
            // A location's syntax is the configuration's; anything else about the files
            // (a dangling link) is the input's.
            ExtractError::Storage(e) if e.exit_class() == ExitClass::Config => ExitClass::Config,
            ExtractError::Scratch { .. } | ExtractError::Engine { .. } => ExitClass::Other,
            _ => ExitClass::Input,
        }
    }
}

/// One input file as the manifest records it.
#[derive(Debug, Clone, Serialize)]
pub struct InputFile {
    pub url: String,
    pub size: u64,
    pub last_modified: String,
}

/// What extraction made of one source.
#[derive(Debug, Clone)]
pub struct ExtractedSource {
    pub name: String,
    pub location: Location,
    pub files: Vec<InputFile>,
    /// Rows set aside, with the reason per row.
    pub rejected: RejectedRows,
    /// Columns of the raw table (before `source_system`/`source_record_id`).
    pub columns: Vec<String>,
    /// Rows read (the rejected ones not counted).
    pub rows: u64,
    /// Records read but set aside by staging (overlong values), written with the rejected.
    pub set_aside: RejectedRows,
}

impl ExtractedSource {
    /// Name of the registered raw table.
    pub fn table(&self) -> String {
        crate::tables::raw(&self.name)
    }
}

/// Folder for this run's temporary files (cleaned copies of dirty inputs).
pub struct Scratch {
    pub dir: PathBuf,
}

/// A run's scratch folder under the temp root, removed when dropped. It holds a lock for
/// as long as the run lives, so that the next run can remove the scratch of runs that
/// were killed (their lock is free) without touching those still running.
pub struct ScratchDir {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl ScratchDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Scratch {
    pub fn create(root: &Path) -> std::io::Result<ScratchDir> {
        use rustix::fs::{FlockOperation, flock};
        std::fs::create_dir_all(root)?;
        // Runs starting side by side take turns here: between creating its folder and
        // locking it, a run's folder looks abandoned to the others. The lock is on the
        // root folder itself, so nothing is left behind in it.
        let root_lock = std::fs::File::open(root)?;
        flock(&root_lock, FlockOperation::LockExclusive)?;
        remove_abandoned_scratch(root);
        let dir = tempfile::Builder::new().prefix(SCRATCH_PREFIX).tempdir_in(root)?;
        let lock = std::fs::File::create(dir.path().join(".lock"))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
        Ok(ScratchDir { dir, _lock: lock })
    }
}

const SCRATCH_PREFIX: &str = "klantbeeld-";

fn remove_abandoned_scratch(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) || !e.path().is_dir() {
            continue;
        }
        let Ok(lock) = std::fs::File::open(e.path().join(".lock")) else { continue };
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            tracing::info!(path = %e.path().display(), "removing the scratch folder of a run that was killed");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Lists the files of one source, without reading them: what `plan` shows.
pub async fn list_source(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    name: &str,
    source: &SourceSpec,
) -> Result<(Location, Vec<ObjectMeta>), ExtractError> {
    let location = Location::parse(&source.location, &pipeline.base_dir)?;
    let store = storage::store_for(ctx, &location, &pipeline.spec.storage)?;
    let files = storage::list_files(store.as_ref(), &location).await?;
    let _ = name;
    Ok((location, files))
}

/// Registers every source as `raw_<name>` on the session.
pub async fn extract_all(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    scratch: &Scratch,
    limit: Option<usize>,
) -> Result<Vec<ExtractedSource>, ExtractError> {
    use futures::{StreamExt, TryStreamExt};
    let parallel = ctx.state().config().target_partitions().max(1);
    let sources = &pipeline.spec.sources;
    let listed: Vec<(Location, Vec<ObjectMeta>)> = futures::stream::iter(sources)
        .map(|(name, source)| list_source(ctx, pipeline, name, source))
        .buffered(parallel)
        .try_collect()
        .await?;
    // A required source without files fails the run before any file is read.
    for ((name, source), (location, metas)) in sources.iter().zip(&listed) {
        if metas.is_empty() && !source.optional {
            return Err(ExtractError::NoFiles { source_name: name.clone(), location: location.display() });
        }
    }
    // The sources are checked side by side, each file's line check one thread's work. The
    // largest start first, so that the last to finish is not a big one left on its own.
    let mut order: Vec<usize> = (0..listed.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(listed[i].1.iter().map(|m| m.size).sum::<u64>()));
    let mut checking = futures::stream::iter(order)
        .map(|i| {
            let (name, source) = sources.get_index(i).expect("listed per source");
            let files = &listed[i];
            async move { (i, extract_source(ctx, pipeline, scratch, name, source, files, limit).await) }
        })
        .buffer_unordered(parallel);
    // The error reported is the first failing source in the YAML, the same on every run: a
    // failure waits for the sources before it, not for those after it.
    let mut done: Vec<Option<Result<Option<ExtractedSource>, ExtractError>>> = listed.iter().map(|_| None).collect();
    while let Some((i, result)) = checking.next().await {
        done[i] = Some(result);
        let settled = done.iter().take_while(|r| r.is_some()).count();
        if let Some(first) = done.iter().position(|r| matches!(r, Some(Err(_))))
            && first < settled
        {
            return Err(done.swap_remove(first).and_then(Result::err).expect("an error"));
        }
    }
    let extracted: Vec<Option<ExtractedSource>> = done.into_iter().flatten().collect::<Result<_, _>>()?;
    Ok(extracted.into_iter().flatten().collect())
}

async fn extract_source(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    scratch: &Scratch,
    name: &str,
    source: &SourceSpec,
    (location, metas): &(Location, Vec<ObjectMeta>),
    limit: Option<usize>,
) -> Result<Option<ExtractedSource>, ExtractError> {
    let location = location.clone();
    // Only an optional source gets here without files (extract_all refused the others).
    if metas.is_empty() {
        // An empty table with the declared columns, so that models reading it still run.
        tracing::warn!(source = name, location = %location, "optional source has no files; it is empty");
        let fields: Vec<datafusion::arrow::datatypes::Field> = declared_types(source)
            .into_iter()
            .map(|(c, t)| datafusion::arrow::datatypes::Field::new(c, t, true))
            .collect();
        let empty = datafusion::arrow::array::RecordBatch::new_empty(std::sync::Arc::new(Schema::new(fields)));
        let df = ctx.read_batch(empty).map_err(|e| engine(name, e))?;
        let df = with_record_columns(df, name, source)?;
        ctx.register_table(crate::tables::raw(name), df.into_view()).map_err(|e| engine(name, e))?;
        return Ok(Some(ExtractedSource {
            name: name.into(),
            location,
            files: Vec::new(),
            rejected: RejectedRows::default(),
            columns: Vec::new(),
            rows: 0,
            set_aside: RejectedRows::default(),
        }));
    }
    let store = storage::store_for(ctx, &location, &pipeline.spec.storage)?;
    let files: Vec<InputFile> = metas
        .iter()
        .map(|m| InputFile {
            url: location.object_url(&m.location),
            size: m.size,
            last_modified: m.last_modified.to_rfc3339(),
        })
        .collect();
    let mut rejected = RejectedRows::default();
    let mut usable = Vec::new();
    for (meta, file) in metas.iter().zip(&files) {
        if meta.size == 0 {
            match source.on_bad_rows {
                BadRowPolicy::Fail => {
                    return Err(ExtractError::EmptyFile { source_name: name.into(), file: file.url.clone() });
                }
                BadRowPolicy::Quarantine => {
                    rejected.push(BadRow {
                        file: file.url.clone(),
                        line: 0,
                        reason: "file is empty".into(),
                        record: String::new(),
                    });
                    continue;
                }
            }
        }
        usable.push((meta.clone(), file.url.clone()));
    }
    let ctx_source = SourceCtx { name, spec: source, store: store.clone(), scratch, limit };
    let (df, columns, rows) = match &source.format {
        FormatSpec::Csv { .. } => csv::read(ctx, &ctx_source, &usable, &mut rejected).await?,
        FormatSpec::Ndjson {} => ndjson::read(ctx, &ctx_source, &usable, &mut rejected).await?,
        FormatSpec::Parquet {} => parquet::read(ctx, &ctx_source, &usable, &mut rejected).await?,
    };
    // A required dump that holds no rows (a header only) is an export that went wrong.
    if rows == 0 && !source.optional {
        return Err(ExtractError::NoRows {
            source_name: name.into(),
            location: location.display(),
            rejected: rejected.len(),
        });
    }
    let df = match df {
        Some(df) => df,
        None => {
            return Err(ExtractError::Source {
                source_name: name.into(),
                message: "every file was rejected; nothing to read".into(),
            });
        }
    };
    let df = with_record_columns(df, name, source)?;
    let df = match limit {
        Some(n) => df.limit(0, Some(n)).map_err(|e| engine(name, e))?,
        None => df,
    };
    ctx.register_table(crate::tables::raw(name), df.into_view()).map_err(|e| engine(name, e))?;
    Ok(Some(ExtractedSource {
        name: name.into(),
        location,
        files,
        rejected,
        columns,
        rows,
        set_aside: RejectedRows::default(),
    }))
}

/// After a run failed on data it could not decode, finds the Parquet input that is
/// corrupt: the engine reads Parquet pages lazily, deep inside whichever model touched
/// them first, and its error names neither the file nor the source.
pub async fn find_unreadable_parquet(ctx: &SessionContext, pipeline: &Pipeline) -> Option<ExtractError> {
    use futures::StreamExt;
    for (name, source) in &pipeline.spec.sources {
        if !matches!(source.format, FormatSpec::Parquet {}) {
            continue;
        }
        let Ok((location, metas)) = list_source(ctx, pipeline, name, source).await else { continue };
        for meta in metas {
            let url = location.object_url(&meta.location);
            let read = async {
                let df = ctx.read_parquet(url.as_str(), Default::default()).await?;
                let mut stream = df.execute_stream().await?;
                while let Some(batch) = stream.next().await {
                    batch?;
                }
                Ok::<(), datafusion::error::DataFusionError>(())
            };
            if let Err(e) = read.await {
                let reason = format!("cannot be read: {}", e.find_root());
                return Some(ExtractError::BadFile { source_name: name.clone(), file: url, reason });
            }
        }
    }
    None
}

/// Everything a format reader needs about the source at hand.
pub(crate) struct SourceCtx<'a> {
    pub name: &'a str,
    pub spec: &'a SourceSpec,
    pub store: Arc<dyn ObjectStore>,
    pub scratch: &'a Scratch,
    pub limit: Option<usize>,
}

pub(crate) fn engine(source: &str, e: datafusion::error::DataFusionError) -> ExtractError {
    ExtractError::Engine { source_name: source.into(), source: e }
}

/// Adds `source_system` and `source_record_id` in front of the source's own columns.
fn with_record_columns(df: DataFrame, name: &str, source: &SourceSpec) -> Result<DataFrame, ExtractError> {
    use datafusion::common::ScalarValue;
    use datafusion::prelude::{cast, col, lit};
    let Some(key) = &source.key else {
        let mut exprs = vec![
            lit(name.to_string()).alias("source_system"),
            cast(lit(ScalarValue::Null), DataType::Utf8).alias("source_record_id"),
        ];
        exprs.extend(df.schema().fields().iter().map(|f| col(format!("\"{}\"", f.name()))));
        return df.select(exprs).map_err(|e| engine(name, e));
    };
    if df.schema().field_with_unqualified_name(key).is_err() {
        let names: Vec<&str> = df.schema().fields().iter().map(|f| f.name().as_str()).collect();
        return Err(ExtractError::Source {
            source_name: name.into(),
            message: format!(
                "key column `{key}` is not in the data{} (columns: {})",
                crate::config::suggest(key, names.iter().copied()),
                names.join(", ")
            ),
        });
    }
    let mut exprs = vec![
        lit(name.to_string()).alias("source_system"),
        cast(col(format!("\"{key}\"")), DataType::Utf8).alias("source_record_id"),
    ];
    exprs.extend(df.schema().fields().iter().map(|f| col(format!("\"{}\"", f.name()))));
    df.select(exprs).map_err(|e| engine(name, e))
}

/// Builds a listing table over explicit files with a known schema, as a DataFrame.
pub(crate) async fn listing_frame(
    ctx: &SessionContext,
    source: &str,
    urls: &[String],
    options: ListingOptions,
    schema: SchemaRef,
) -> Result<DataFrame, ExtractError> {
    let paths =
        urls.iter().map(ListingTableUrl::parse).collect::<Result<Vec<_>, _>>().map_err(|e| engine(source, e))?;
    let config = ListingTableConfig::new_with_multi_paths(paths).with_listing_options(options).with_schema(schema);
    let table = ListingTable::try_new(config).map_err(|e| engine(source, e))?;
    ctx.read_table(Arc::new(table)).map_err(|e| engine(source, e))
}

/// Unions frames of one source by column name (files may order their columns differently).
pub(crate) fn union_by_name(source: &str, frames: Vec<DataFrame>) -> Result<Option<DataFrame>, ExtractError> {
    let mut iter = frames.into_iter();
    let Some(mut df) = iter.next() else { return Ok(None) };
    for next in iter {
        df = df.union_by_name(next).map_err(|e| engine(source, e))?;
    }
    Ok(Some(df))
}

/// All-text schema from header names: CSV is read as text and typed afterwards, so that a
/// phone column never turns numeric in one file and textual in another.
pub(crate) fn text_schema(columns: &[String]) -> Schema {
    Schema::new(
        columns.iter().map(|c| datafusion::arrow::datatypes::Field::new(c, DataType::Utf8, true)).collect::<Vec<_>>(),
    )
}

/// A column turned into its declared type. Text goes through the same parsers the lint
/// checked the values with; other types are cast.
pub(crate) fn typed_expr(column: &str, from: &DataType, to: &DataType) -> datafusion::prelude::Expr {
    use crate::udf::{Function, call};
    use datafusion::prelude::{cast, col};
    let c = col(format!("\"{column}\""));
    let text = matches!(from, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
    match to {
        t if t == from => c,
        DataType::Date32 if text => call(Function::ParseDate, vec![c]),
        DataType::Timestamp(_, _) if text => call(Function::ParseTimestamp, vec![c]),
        DataType::Float64 | DataType::Decimal128(_, _) if text => {
            cast(call(Function::NormalizeNumber, vec![c]), to.clone())
        }
        other if text => cast(datafusion::prelude::trim(vec![c]), other.clone()),
        other => cast(c, other.clone()),
    }
    .alias(column)
}

/// Applies the declared types to a frame: present columns are converted, absent ones are
/// added as nulls (a JSON key no record carries, a column a file lacks).
pub(crate) fn apply_declared(
    source: &str,
    df: DataFrame,
    declared: &[(String, DataType)],
) -> Result<DataFrame, ExtractError> {
    use datafusion::common::ScalarValue;
    use datafusion::prelude::{cast, col, lit};
    let mut exprs: Vec<datafusion::prelude::Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| match declared.iter().find(|(c, _)| c == f.name()) {
            Some((c, t)) => typed_expr(c, f.data_type(), t),
            None => col(format!("\"{}\"", f.name())),
        })
        .collect();
    for (c, t) in declared {
        if df.schema().field_with_unqualified_name(c).is_err() {
            exprs.push(cast(lit(ScalarValue::Null), t.clone()).alias(c));
        }
    }
    df.select(exprs).map_err(|e| engine(source, e))
}

/// The source's declared column types.
pub(crate) fn declared_types(spec: &SourceSpec) -> Vec<(String, DataType)> {
    spec.schema.iter().filter_map(|(c, t)| t.parse_sql_type().ok().map(|t| (c.clone(), t))).collect()
}

/// Path of a scratch copy for an input file.
pub(crate) fn scratch_copy_path(scratch: &Scratch, source: &str, index: usize, url: &str) -> PathBuf {
    let file = Path::new(url).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    scratch.dir.join("inputs").join(source).join(format!("{index:05}-{file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs that start at the same moment in one temp root each keep their scratch folder:
    /// none takes another's fresh folder for a killed run's and removes it.
    #[test]
    fn scratch_folders_created_side_by_side_all_survive() {
        let root = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let root = root.path().to_path_buf();
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        let scratch = Scratch::create(&root).unwrap();
                        std::fs::write(scratch.path().join("part.parquet"), b"x").unwrap();
                        std::thread::yield_now();
                        assert!(scratch.path().join("part.parquet").exists(), "{} removed", scratch.path().display());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Each run removed its own folder when done.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_scratch_of_a_killed_run_is_removed_by_the_next() {
        let root = tempfile::tempdir().unwrap();
        // A killed run leaves its folder with a lock file nobody holds.
        let killed = root.path().join(format!("{SCRATCH_PREFIX}killed"));
        std::fs::create_dir(&killed).unwrap();
        std::fs::write(killed.join(".lock"), b"").unwrap();
        std::fs::write(killed.join("part.parquet"), b"x").unwrap();
        let running = Scratch::create(root.path()).unwrap();
        assert!(!killed.exists());
        // A run still going keeps its folder when the next one starts.
        let next = Scratch::create(root.path()).unwrap();
        assert!(running.path().exists() && next.path().exists());
    }
}
