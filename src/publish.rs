//! Publish: tables written as Parquet under a staging location, then the manifest, then
//! `_SUCCESS`, then the whole folder swapped into place. On a local disk the swap is one
//! atomic `rename(2)` exchange, so readers see the old output or the new one, never a mix,
//! and a killed run leaves the old output as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::config::TableParquetOptions;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, Expr, cast, col};
use serde::Serialize;

use crate::storage::Location;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{location}: output must be a local folder for now (object stores land with the operations work)")]
    Unsupported { location: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: another klantbeeld run is publishing to this output")]
    Locked { path: PathBuf },
    #[error("writing table `{table}`: {source}")]
    Write { table: String, source: datafusion::error::DataFusionError },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io { path: path.to_path_buf(), source }
}

/// One column of a published table, as the manifest describes it.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// A published table in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub rows: u64,
    pub path: String,
    pub schema: Vec<ColumnInfo>,
}

/// Casts every column to a type all warehouses read without help: text as `Utf8` (not
/// views), timestamps in microseconds UTC, unsigned integers as signed.
pub fn portable(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    let exprs: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let c = col(format!("\"{}\"", f.name()));
            let target = match f.data_type() {
                DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Utf8),
                DataType::BinaryView | DataType::LargeBinary => Some(DataType::Binary),
                DataType::Timestamp(unit, tz) if *unit != TimeUnit::Microsecond || tz.as_deref() != Some("UTC") => {
                    Some(DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())))
                }
                DataType::UInt8 | DataType::UInt16 => Some(DataType::Int32),
                DataType::UInt32 | DataType::UInt64 => Some(DataType::Int64),
                DataType::Float16 => Some(DataType::Float32),
                DataType::Dictionary(_, v) => Some(v.as_ref().clone()),
                _ => None,
            };
            match target {
                Some(t) => cast(c, t).alias(f.name()),
                None => c,
            }
        })
        .collect();
    df.select(exprs)
}

/// Where a run writes before it is published. Holds an exclusive lock on the output for
/// the whole run: a second run on the same output fails at once instead of racing, and
/// the kernel drops the lock when a process dies, so a killed run never blocks the next.
pub struct Staging {
    pub output: Location,
    pub output_dir: PathBuf,
    pub dir: PathBuf,
    _lock: std::fs::File,
}

impl Staging {
    /// A hidden sibling of the output folder, so the final rename stays on one filesystem.
    pub fn new(output: &Location, run_id: &str) -> Result<Staging, PublishError> {
        let output_dir = output.local_path().ok_or_else(|| PublishError::Unsupported { location: output.display() })?;
        let parent = output_dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = output_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| PublishError::Locked { path: output_dir.clone() })?;
        clean_leftovers(&parent, &name);
        let dir = parent.join(format!(".{name}.staging-{run_id}"));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Staging { output: output.clone(), output_dir, dir, _lock: lock })
    }

    fn table_dir(&self, table: &str) -> PathBuf {
        self.dir.join(table)
    }

    /// Writes one table as zstd Parquet; returns rows written and its schema.
    pub async fn write_table(
        &self,
        table: &str,
        df: DataFrame,
        partition_by: &[String],
    ) -> Result<TableInfo, PublishError> {
        let werr = |source| PublishError::Write { table: table.into(), source };
        let df = portable(df).map_err(werr)?;
        let schema = df
            .schema()
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect();
        let dir = self.table_dir(table);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut options = TableParquetOptions::default();
        options.global.compression = Some("zstd(3)".into());
        options.global.max_row_group_size = 1 << 20;
        // Readers use the Parquet logical types, not an embedded Arrow schema that could
        // carry view types.
        options.global.skip_arrow_metadata = true;
        let write = DataFrameWriteOptions::new().with_partition_by(partition_by.to_vec());
        let url = format!("{}/", dir.display());
        let arrow_schema = df.schema().inner().clone();
        let result = df.write_parquet(&url, write, Some(options)).await.map_err(werr)?;
        ensure_schema_file(&dir, arrow_schema).map_err(|source| PublishError::Io { path: dir.clone(), source })?;
        let rows = result
            .first()
            .and_then(|b| {
                use datafusion::arrow::array::AsArray;
                b.column(0).as_primitive_opt::<datafusion::arrow::datatypes::UInt64Type>().map(|a| a.value(0))
            })
            .unwrap_or(0);
        Ok(TableInfo { rows, path: self.output.child(table).url(), schema })
    }

    /// A file inside the staging folder (rejected rows, the manifest).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes the manifest and `_SUCCESS`, then swaps the staging folder into place.
    pub fn commit(self, manifest: &impl Serialize) -> Result<(), PublishError> {
        let manifest_path = self.dir.join("_manifest.json");
        let text = serde_json::to_string_pretty(manifest)
            .map_err(|e| PublishError::Io { path: manifest_path.clone(), source: std::io::Error::other(e) })?;
        write_durable(&manifest_path, text.as_bytes())?;
        write_durable(&self.dir.join("_SUCCESS"), b"")?;
        sync_dir(&self.dir)?;
        if self.output_dir.exists() {
            // One atomic step: old and new trade places; the old one is then removed.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &self.dir,
                rustix::fs::CWD,
                &self.output_dir,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| PublishError::Io { path: self.output_dir.clone(), source: e.into() })?;
            if let Some(parent) = self.output_dir.parent() {
                sync_dir(parent)?;
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            std::fs::rename(&self.dir, &self.output_dir).map_err(io(&self.output_dir))?;
            if let Some(parent) = self.output_dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// Removes the staging folder of a failed run.
    pub fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An empty table still gets one Parquet file with its schema: DataFusion writes no file
/// for zero rows, and readers cannot infer a schema from an empty folder.
pub fn ensure_schema_file(dir: &Path, schema: datafusion::arrow::datatypes::SchemaRef) -> std::io::Result<()> {
    let has_file = std::fs::read_dir(dir)?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".parquet") || e.path().is_dir());
    if has_file {
        return Ok(());
    }
    let file = std::fs::File::create(dir.join("part-0.parquet"))?;
    let props = datafusion::parquet::file::properties::WriterProperties::builder()
        .set_compression(datafusion::parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).map_err(std::io::Error::other)?;
    writer.close().map_err(std::io::Error::other)?;
    Ok(())
}

fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Staging folders of runs that were killed are invisible to readers; remove them.
fn clean_leftovers(parent: &Path, name: &str) {
    let prefix = format!(".{name}.staging-");
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Reads a published manifest, if the output holds a published run.
pub fn read_published_manifest(output: &Location) -> Option<serde_json::Value> {
    let dir = output.local_path()?;
    if !dir.join("_SUCCESS").exists() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("_manifest.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Per-table facts for the manifest, by table name.
pub type TableInfos = BTreeMap<String, TableInfo>;
