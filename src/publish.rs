//! Publish: tables written as Parquet under a staging location, then the manifest, then
//! `_SUCCESS`, then the staging swapped into place.
//!
//! - On a local disk the swap is one atomic `rename(2)` exchange of two folders: readers
//!   see the old output or the new one, and a killed run leaves the old one as it was.
//! - On an object store there is no atomic rename of many objects. The run writes under
//!   `${output}/_staging/<run_id>/`, then writes a commit record there (the commit point),
//!   removes `_SUCCESS`, copies the new objects into place, deletes the old ones, and
//!   writes `_manifest.json` and `_SUCCESS` last. Before the commit point a failure leaves
//!   the old output untouched; after it, the next run (or `klantbeeld run` of any date)
//!   finishes the swap before doing anything else. Readers trust only `_SUCCESS`.
//!
//! One run at a time per output: a lock file held with `flock` locally (freed by the
//! kernel if the process dies), a `_lock` object created with a conditional put on object
//! stores (taken over when older than `storage.lock_timeout_s`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::common::config::TableParquetOptions;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, col};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;

use crate::config::StorageSpec;
use crate::manifest::{self, Published};
use crate::storage::{self, Location};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{location}: {source}")]
    Store { location: String, source: object_store::Error },
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("{location}: another klantbeeld run is publishing to this output{holder}")]
    Locked { location: String, holder: String },
    #[error("writing table `{table}`: {source}")]
    Write { table: String, source: datafusion::error::DataFusionError },
    /// The output location holds something klantbeeld did not write: nothing is touched.
    #[error(
        "{location}: {reason}; klantbeeld publishes only to a new or empty location or over an earlier \
         klantbeeld publish (its `_manifest.json`); nothing was touched"
    )]
    NotOurs { location: String, reason: String },
    #[error("{location}: the output cannot be used: {reason}")]
    Unusable { location: String, reason: String },
}

impl PublishError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        match self {
            PublishError::NotOurs { .. } => crate::ExitClass::Config,
            PublishError::Storage(e) => e.exit_class(),
            _ => crate::ExitClass::Other,
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io { path: path.to_path_buf(), source }
}

/// Every declared output must be a golden table or a model (checked before any data is
/// read, so that a typo fails in a second).
pub fn check_outputs<'a>(
    pipeline: &crate::config::Pipeline,
    models: impl Iterator<Item = &'a str>,
) -> Result<(), crate::config::ConfigError> {
    let known: Vec<&str> = crate::tables::GOLDEN_TABLES.iter().copied().chain(models).collect();
    for table in pipeline.spec.outputs.keys() {
        if !known.contains(&table.as_str()) {
            let at = crate::config::locate_key(&pipeline.text, &["outputs", table]).unwrap_or((1, 1));
            return Err(crate::config::ConfigError::at(
                &pipeline.file,
                at,
                format!(
                    "key `outputs.{table}`: no golden table or model is called `{table}`{}",
                    crate::config::suggest(table, known.iter().copied())
                ),
            ));
        }
    }
    Ok(())
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

/// Per-table facts for the manifest, by table name.
pub type TableInfos = BTreeMap<String, TableInfo>;

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

/// Bytes read and sent at a time when a table's files are uploaded.
const UPLOAD_CHUNK: usize = 8 << 20;

/// How published tables are written.
pub fn published_parquet() -> TableParquetOptions {
    let mut options = TableParquetOptions::default();
    // Level 1: the retail outputs at 1M people came within 1% of level 3's size
    // (some smaller), and the publish stage took 3.9 s instead of 4.7 s.
    options.global.compression = Some("zstd(1)".into());
    options.global.max_row_group_size = 1 << 20;
    // Readers use the Parquet logical types, not an embedded Arrow schema that could
    // carry view types.
    options.global.skip_arrow_metadata = true;
    options
}

/// An empty Parquet file with a schema: DataFusion writes no file for zero rows, and
/// readers cannot infer a schema from an empty folder.
fn empty_parquet(schema: SchemaRef) -> Result<Vec<u8>, datafusion::parquet::errors::ParquetError> {
    let mut buf = Vec::new();
    let props = datafusion::parquet::file::properties::WriterProperties::builder()
        .set_compression(datafusion::parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let writer = datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    writer.close()?;
    Ok(buf)
}

/// Gives a table folder on a store one schema-only file when it holds none.
pub async fn ensure_schema_file(
    store: &dyn ObjectStore,
    dir: &ObjectPath,
    schema: SchemaRef,
) -> object_store::Result<()> {
    let mut listing = store.list(Some(dir));
    if listing.try_next().await?.is_some() {
        return Ok(());
    }
    let bytes =
        empty_parquet(schema).map_err(|e| object_store::Error::Generic { store: "parquet", source: Box::new(e) })?;
    store.put(&dir.clone().join("part-0.parquet"), PutPayload::from(bytes)).await?;
    Ok(())
}

/// The same for a local folder.
pub fn ensure_local_schema_file(dir: &Path, schema: SchemaRef) -> std::io::Result<()> {
    let has_file = std::fs::read_dir(dir)?.flatten().next().is_some();
    if has_file {
        return Ok(());
    }
    let bytes = empty_parquet(schema).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("part-0.parquet"), bytes)
}

/// Names klantbeeld keeps at an output while it publishes there.
const BOOKKEEPING: &[&str] = &[STAGING, LOCK];

/// Checks, before any work, that a run may publish at `output`: it is new or empty, or
/// holds an earlier klantbeeld publish and nothing that publish did not write. Publishing
/// replaces what is there, so anything else would be lost.
pub async fn check_target(store: &dyn ObjectStore, output: &Location) -> Result<(), PublishError> {
    let not_ours = |reason: String| PublishError::NotOurs { location: output.display(), reason };
    if let Some(dir) = output.local_path() {
        let unusable = |reason: String| PublishError::Unusable { location: output.display(), reason };
        // The nearest existing ancestor must be a folder to create the output under.
        for ancestor in dir.ancestors().skip(1) {
            match std::fs::metadata(ancestor) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => return Err(unusable(format!("`{}` is a file, not a folder", ancestor.display()))),
                Err(_) => continue,
            }
        }
        let meta = match std::fs::metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&dir)(e)),
            Ok(m) => m,
        };
        if !meta.is_dir() {
            return Err(not_ours("it is a file, not a folder".into()));
        }
        let top: BTreeSet<String> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        let manifest = std::fs::read(dir.join(manifest::FILE)).ok();
        return check_entries(&top, manifest.as_deref()).map_err(not_ours);
    }
    let metas: Vec<object_store::ObjectMeta> = match crate::storage::list_all(store, &output.prefix).await {
        Ok(m) => m,
        Err(e) if matches!(e, object_store::Error::NotFound { .. }) || e.to_string().contains("NoSuchBucket") => {
            return Err(PublishError::Unusable {
                location: output.display(),
                reason: format!("bucket `{}` does not exist", output.store_url.as_str()),
            });
        }
        Err(e) => return Err(PublishError::Store { location: output.display(), source: e }),
    };
    let n = output.prefix.as_ref().len();
    let top: BTreeSet<String> = metas
        .iter()
        .filter_map(|m| m.location.as_ref()[n..].trim_start_matches('/').split('/').next().map(str::to_string))
        .collect();
    let manifest = match top.contains(manifest::FILE) {
        true => match store.get(&output.child(manifest::FILE).prefix).await {
            Ok(r) => r.bytes().await.ok().map(|b| b.to_vec()),
            Err(e) => return Err(PublishError::Store { location: output.display(), source: e }),
        },
        false => None,
    };
    check_entries(&top, manifest.as_deref()).map_err(not_ours)
}

/// Whether the top-level entries of an output may be replaced: klantbeeld's bookkeeping,
/// and, under a klantbeeld manifest, the tables, markers and rejected rows it lists.
fn check_entries(top: &BTreeSet<String>, manifest: Option<&[u8]>) -> Result<(), String> {
    let mut allowed: BTreeSet<String> = BOOKKEEPING.iter().map(|s| s.to_string()).collect();
    let published = manifest.and_then(Published::parse);
    match &published {
        Some(m) => {
            allowed.extend([manifest::FILE, "_SUCCESS", "_rejected", MODEL_FILE].map(String::from));
            allowed.extend(m.tables().filter_map(|t| t.split('/').next()).map(String::from));
        }
        None if top.contains(manifest::FILE) => {
            return Err("its `_manifest.json` is not a klantbeeld manifest".into());
        }
        None => {}
    }
    let foreign: Vec<&String> = top.iter().filter(|n| !allowed.contains(*n)).collect();
    if foreign.is_empty() {
        return Ok(());
    }
    let mut names = foreign.iter().take(5).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if foreign.len() > 5 {
        names.push_str(&format!(" and {} more", foreign.len() - 5));
    }
    Err(match published {
        Some(_) => format!("it holds {names}, which the published run did not write"),
        None => format!("it holds {names} and no klantbeeld publish"),
    })
}

/// Whether a folder is the root of a mount (a volume), which `rename` cannot move.
fn is_mount_point(dir: &Path) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags, statx};
    match statx(rustix::fs::CWD, dir, AtFlags::NO_AUTOMOUNT, StatxFlags::BASIC_STATS) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        // Older kernels: a different device than the parent's.
        Ok(st) => dir
            .parent()
            .and_then(|p| statx(rustix::fs::CWD, p, AtFlags::empty(), StatxFlags::BASIC_STATS).ok())
            .is_some_and(|p| (p.stx_dev_major, p.stx_dev_minor) != (st.stx_dev_major, st.stx_dev_minor)),
        Err(_) => false,
    }
}

/// How the staging location of a run is swapped into place.
enum Swap {
    /// A hidden sibling folder, exchanged with the output folder by one rename.
    Local { output_dir: PathBuf, dir: PathBuf, _lock: std::fs::File },
    /// A prefix under the output on an object store, copied into place.
    Remote { lock: ObjectPath, _heartbeat: Heartbeat },
}

/// Renews the output's lock while the run lives, so that a lock nobody renews any more
/// is known to be abandoned. Stops when dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(store: Arc<dyn ObjectStore>, lock: ObjectPath, mut info: LockInfo, timeout_s: u64) -> Heartbeat {
        // `--break-lock` sets the timeout to 0; its own lock still renews at a sane pace.
        let every = std::time::Duration::from_secs(if timeout_s == 0 { 30 } else { (timeout_s / 4).max(1) });
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                info.heartbeat = chrono::Utc::now();
                let body = serde_json::to_vec(&info).expect("lock info serialises");
                if let Err(e) = store.put(&lock, PutPayload::from(body)).await {
                    tracing::warn!(error = %e, "could not renew the output lock");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a run writes before it is published.
pub struct Staging {
    output: Location,
    /// The staging location (a local folder, or `${output}/_staging/<run_id>`).
    root: Location,
    store: Arc<dyn ObjectStore>,
    run_id: String,
    swap: Swap,
}

const STAGING: &str = "_staging";
const LOCK: &str = "_lock";
const COMMIT: &str = "_COMMIT";
/// The fitted weights of the probabilistic rules, beside the tables.
pub const MODEL_FILE: &str = "_model.json";

impl Staging {
    /// Takes the output's lock, finishes or cleans up what earlier runs left, and makes a
    /// fresh staging location.
    pub async fn new(
        ctx: &SessionContext,
        output: &Location,
        spec: &StorageSpec,
        run_id: &str,
    ) -> Result<Staging, PublishError> {
        let store = storage::store_for(ctx, output, spec)?;
        check_target(store.as_ref(), output).await?;
        let local_dir = output.local_path();
        // A mount point (a container volume) cannot be renamed: publish inside it, the
        // way object stores are published to.
        let in_place = local_dir.as_deref().is_some_and(is_mount_point);
        if let Some(output_dir) = local_dir.filter(|_| !in_place) {
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
                .map_err(|_| PublishError::Locked { location: output.display(), holder: String::new() })?;
            clean_local_leftovers(&parent, &name);
            let dir = parent.join(format!(".{name}.staging-{run_id}"));
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let root = Location::parse(&dir.to_string_lossy(), Path::new("/"))?;
            return Ok(Staging {
                output: output.clone(),
                root,
                store,
                run_id: run_id.into(),
                swap: Swap::Local { output_dir, dir, _lock: lock },
            });
        }
        let store: Arc<dyn ObjectStore> = if in_place {
            // Empty table folders of the old publish are removed with their last file.
            Arc::new(object_store::local::LocalFileSystem::new().with_automatic_cleanup(true))
        } else {
            store
        };
        let lock = output.child(LOCK).prefix;
        let info = acquire_remote_lock(store.as_ref(), output, &lock, run_id, spec.lock_timeout_s).await?;
        let heartbeat = Heartbeat::start(store.clone(), lock.clone(), info, spec.lock_timeout_s);
        let staging = Staging {
            output: output.clone(),
            root: output.child(&format!("{STAGING}/{run_id}")),
            store,
            run_id: run_id.into(),
            swap: Swap::Remote { lock, _heartbeat: heartbeat },
        };
        if let Err(e) = staging.recover_remote().await {
            staging.release().await;
            return Err(e);
        }
        Ok(staging)
    }

    fn store_err(&self, e: object_store::Error) -> PublishError {
        PublishError::Store { location: self.output.display(), source: e }
    }

    /// Writes one table as zstd Parquet; returns rows written and its schema. A table
    /// the run already wrote in this form (`engine::PublishedForm`, in the folder
    /// `written`) has its files copied instead.
    pub async fn write_table(
        &self,
        table: &str,
        df: DataFrame,
        partition_by: &[String],
        written: Option<&Path>,
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
        let target = self.root.child(table);
        let path = self.output.child(table).url();
        if let Some(files) = written.filter(|_| partition_by.is_empty()) {
            // The table's files hold every row it has: counted from their footers.
            let rows = df.count().await.map_err(werr)? as u64;
            self.copy_files(files, &target).await?;
            return Ok(TableInfo { rows, path, schema });
        }
        let write = DataFrameWriteOptions::new().with_partition_by(partition_by.to_vec());
        if let Some(dir) = target.local_path() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let url = format!("{}/", target.url().trim_end_matches('/'));
        let arrow_schema = df.schema().inner().clone();
        let result = df.write_parquet(&url, write, Some(published_parquet())).await.map_err(werr)?;
        match target.local_path() {
            Some(dir) => ensure_local_schema_file(&dir, arrow_schema).map_err(io(&dir))?,
            None => ensure_schema_file(self.store.as_ref(), &target.prefix, arrow_schema)
                .await
                .map_err(|e| self.store_err(e))?,
        }
        let rows = result
            .first()
            .and_then(|b| {
                use datafusion::arrow::array::AsArray;
                b.column(0).as_primitive_opt::<datafusion::arrow::datatypes::UInt64Type>().map(|a| a.value(0))
            })
            .unwrap_or(0);
        Ok(TableInfo { rows, path, schema })
    }

    /// Copies the files of a local folder into `target`: hard links on the same disk, a
    /// copy on another, an upload in parts to an object store.
    async fn copy_files(&self, files: &Path, target: &Location) -> Result<(), PublishError> {
        use std::io::Read;
        let entries = std::fs::read_dir(files).map_err(io(files))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(files))?;
            if entry.file_type().map_err(io(files))?.is_file() {
                names.push(entry.file_name().to_string_lossy().to_string());
            }
        }
        if let Some(dir) = target.local_path() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            for name in &names {
                let (from, to) = (files.join(name), dir.join(name));
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(io(&to))?;
                }
            }
            return Ok(());
        }
        for name in &names {
            let from = files.join(name);
            let mut file = std::fs::File::open(&from).map_err(io(&from))?;
            let mut upload = object_store::buffered::BufWriter::new(self.store.clone(), target.child(name).prefix);
            loop {
                let mut chunk = Vec::with_capacity(UPLOAD_CHUNK);
                let read = (&mut file).take(UPLOAD_CHUNK as u64).read_to_end(&mut chunk).map_err(io(&from))?;
                if read == 0 {
                    break;
                }
                upload.put(chunk.into()).await.map_err(|e| self.store_err(e))?;
            }
            tokio::io::AsyncWriteExt::shutdown(&mut upload).await.map_err(io(&from))?;
        }
        Ok(())
    }

    /// Writes the rows each source rejected or set aside under
    /// `_rejected/<source>/`, with file, line, reason and the record.
    pub async fn write_rejected(
        &self,
        ctx: &SessionContext,
        extracted: &[crate::extract::ExtractedSource],
    ) -> Result<(), PublishError> {
        use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("file", DataType::Utf8, false),
            Field::new("line", DataType::UInt64, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("record", DataType::Utf8, false),
        ]));
        for e in extracted.iter().filter(|e| !e.rejected.is_empty() || !e.set_aside.is_empty()) {
            let table = format!("_rejected/{}", e.name);
            let werr = |source| PublishError::Write { table: table.clone(), source };
            let rows: Vec<&crate::extract::BadRow> = e.rejected.rows.iter().chain(&e.set_aside.rows).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(rows.iter().map(|r| Some(r.file.as_str())).collect::<StringArray>()),
                    Arc::new(rows.iter().map(|r| Some(r.line)).collect::<UInt64Array>()),
                    Arc::new(rows.iter().map(|r| Some(r.reason.as_str())).collect::<StringArray>()),
                    Arc::new(rows.iter().map(|r| Some(r.record.as_str())).collect::<StringArray>()),
                ],
            )
            .map_err(|err| werr(err.into()))?;
            let df = ctx.read_batch(batch).map_err(werr)?;
            self.write_table(&table, df, &[], None).await?;
        }
        Ok(())
    }

    /// Writes one file of the publish (such as `_model.json`) beside the tables.
    pub async fn write_file(&self, name: &str, bytes: Vec<u8>) -> Result<(), PublishError> {
        self.store.put(&self.root.child(name).prefix, PutPayload::from(bytes)).await.map_err(|e| self.store_err(e))?;
        Ok(())
    }

    /// Writes the manifest and `_SUCCESS`, then swaps the staging location into place.
    pub async fn commit(self, manifest: &impl Serialize) -> Result<(), PublishError> {
        let text = serde_json::to_string_pretty(manifest)
            .map_err(|e| PublishError::Io { path: PathBuf::from(manifest::FILE), source: std::io::Error::other(e) })?;
        match &self.swap {
            Swap::Local { output_dir, dir, .. } => {
                write_durable(&dir.join(manifest::FILE), text.as_bytes())?;
                write_durable(&dir.join("_SUCCESS"), b"")?;
                sync_dir(dir)?;
                swap_local(dir, output_dir)?;
                Ok(())
            }
            Swap::Remote { .. } => {
                let result = self.commit_remote(text).await;
                self.release().await;
                result
            }
        }
    }

    async fn commit_remote(&self, manifest: String) -> Result<(), PublishError> {
        let put = |p: ObjectPath, bytes: Vec<u8>| async move { self.store.put(&p, PutPayload::from(bytes)).await };
        put(self.root.child(manifest::FILE).prefix, manifest.into_bytes()).await.map_err(|e| self.store_err(e))?;
        let staged = self.list(&self.root.prefix).await?;
        let record = CommitRecord { run_id: self.run_id.clone(), objects: staged };
        let json = serde_json::to_vec(&record).expect("commit record serialises");
        // The commit point: from here on the new output will be completed.
        put(self.root.child(COMMIT).prefix, json).await.map_err(|e| self.store_err(e))?;
        self.finish_commit(&record).await
    }

    /// Copies a committed run's objects into place, removes the old ones, and writes
    /// `_manifest.json` and `_SUCCESS`. Safe to repeat.
    async fn finish_commit(&self, record: &CommitRecord) -> Result<(), PublishError> {
        let staging = self.output.child(&format!("{STAGING}/{}", record.run_id));
        let store = self.store.as_ref();
        let err = |e| self.store_err(e);
        match store.delete(&self.output.child("_SUCCESS").prefix).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(e)),
        }
        let new: BTreeSet<String> = record.objects.iter().filter(|o| *o != manifest::FILE).cloned().collect();
        for rel in &new {
            let from = staging.child(rel).prefix;
            let to = self.output.child(rel).prefix;
            match store.copy(&from, &to).await {
                Ok(()) => {}
                // Already copied by an earlier attempt at this commit.
                Err(object_store::Error::NotFound { .. }) if store.head(&to).await.is_ok() => {}
                Err(e) => return Err(err(e)),
            }
        }
        // Old table files: everything of the output that is not the new run's, not
        // staging, not the lock, and not the markers.
        for rel in self.list(&self.output.prefix).await? {
            let top = rel.split('/').next().unwrap_or_default();
            let keep = new.contains(&rel) || [STAGING, LOCK, manifest::FILE, "_SUCCESS"].contains(&top);
            if !keep {
                store.delete(&self.output.child(&rel).prefix).await.map_err(err)?;
            }
        }
        let manifest =
            store.get(&staging.child(manifest::FILE).prefix).await.map_err(err)?.bytes().await.map_err(err)?;
        store.put(&self.output.child(manifest::FILE).prefix, PutPayload::from(manifest)).await.map_err(err)?;
        store.put(&self.output.child("_SUCCESS").prefix, PutPayload::from_static(b"")).await.map_err(err)?;
        for rel in self.list(&staging.prefix).await? {
            let _ = store.delete(&staging.child(&rel).prefix).await;
        }
        Ok(())
    }

    /// Objects under a prefix, as paths relative to it.
    async fn list(&self, prefix: &ObjectPath) -> Result<Vec<String>, PublishError> {
        let metas = crate::storage::list_all(self.store.as_ref(), prefix).await.map_err(|e| self.store_err(e))?;
        let n = prefix.as_ref().len();
        let mut rels: Vec<String> =
            metas.iter().map(|m| m.location.as_ref()[n..].trim_start_matches('/').to_string()).collect();
        rels.sort();
        Ok(rels)
    }

    /// Finishes a committed swap an earlier run did not complete; removes abandoned staging.
    async fn recover_remote(&self) -> Result<(), PublishError> {
        let staging_root = self.output.child(STAGING).prefix;
        for rel in self.list(&staging_root).await? {
            let Some(run) = rel.strip_suffix(&format!("/{COMMIT}")) else { continue };
            let path = self.output.child(&format!("{STAGING}/{rel}")).prefix;
            let bytes = self
                .store
                .get(&path)
                .await
                .map_err(|e| self.store_err(e))?
                .bytes()
                .await
                .map_err(|e| self.store_err(e))?;
            if let Ok(record) = serde_json::from_slice::<CommitRecord>(&bytes) {
                tracing::warn!(run_id = run, "finishing the publish of an earlier run that stopped half-way");
                self.finish_commit(&record).await?;
            }
        }
        for rel in self.list(&staging_root).await? {
            let _ = self.store.delete(&self.output.child(&format!("{STAGING}/{rel}")).prefix).await;
        }
        Ok(())
    }

    async fn release(&self) {
        if let Swap::Remote { lock, .. } = &self.swap {
            let _ = self.store.delete(lock).await;
        }
    }

    /// Removes the staging location of a failed run and frees the output.
    pub async fn abandon(self) {
        match &self.swap {
            Swap::Local { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Swap::Remote { .. } => {
                if let Ok(rels) = self.list(&self.root.prefix).await {
                    for rel in rels {
                        let _ = self.store.delete(&self.root.child(&rel).prefix).await;
                    }
                }
                self.release().await;
            }
        }
    }
}

/// What a committed run published, written at the commit point.
#[derive(Debug, Serialize, serde::Deserialize)]
struct CommitRecord {
    run_id: String,
    objects: Vec<String>,
}

/// The lock object's content.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct LockInfo {
    run_id: String,
    since: chrono::DateTime<chrono::Utc>,
    /// Last renewal; a lock from before renewals existed counts from `since`.
    #[serde(default = "chrono::Utc::now")]
    heartbeat: chrono::DateTime<chrono::Utc>,
}

/// Takes the output's lock: creates it, or replaces one whose run stopped renewing it.
/// The replacement is conditional on the stale lock's version where the store supports
/// that, so that of two runs taking over at once only one wins.
async fn acquire_remote_lock(
    store: &dyn ObjectStore,
    output: &Location,
    lock: &ObjectPath,
    run_id: &str,
    timeout_s: u64,
) -> Result<LockInfo, PublishError> {
    let now = chrono::Utc::now();
    let info = LockInfo { run_id: run_id.into(), since: now, heartbeat: now };
    let body = PutPayload::from(serde_json::to_vec(&info).expect("lock info serialises"));
    let store_err = |e| PublishError::Store { location: output.display(), source: e };
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    match store.put_opts(lock, body.clone(), create).await {
        Ok(_) => return Ok(info),
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
        Err(object_store::Error::NotFound { .. }) => {
            return Err(PublishError::Unusable {
                location: output.display(),
                reason: format!("bucket `{}` does not exist", output.store_url.as_str()),
            });
        }
        Err(e) => return Err(store_err(e)),
    }
    let current = store.get(lock).await.map_err(store_err)?;
    let version =
        object_store::UpdateVersion { e_tag: current.meta.e_tag.clone(), version: current.meta.version.clone() };
    let held = current.bytes().await.ok().and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok());
    let silent_s = held.as_ref().map_or(i64::MAX, |h| (chrono::Utc::now() - h.heartbeat).num_seconds());
    if let Some(h) = held.as_ref().filter(|_| silent_s < timeout_s as i64) {
        return Err(PublishError::Locked {
            location: output.display(),
            holder: format!(
                " (run {} since {}, renewed {silent_s}s ago; a lock not renewed for {timeout_s}s is taken over, \
                 or pass --break-lock if that run is dead)",
                h.run_id,
                h.since.to_rfc3339()
            ),
        });
    }
    tracing::warn!(output = %output, "taking over a lock its run stopped renewing");
    let update = PutOptions { mode: PutMode::Update(version), ..Default::default() };
    match store.put_opts(lock, body.clone(), update).await {
        Ok(_) => Ok(info),
        // A store without conditional updates: replace it plainly.
        Err(object_store::Error::NotImplemented { .. }) => {
            store.put(lock, body).await.map_err(store_err)?;
            Ok(info)
        }
        Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
            Err(PublishError::Locked {
                location: output.display(),
                holder: " (another run took the lock over first)".into(),
            })
        }
        Err(e) => Err(store_err(e)),
    }
}

fn swap_local(dir: &Path, output_dir: &Path) -> Result<(), PublishError> {
    if output_dir.exists() {
        // One atomic step: old and new trade places; the old one is then removed.
        rustix::fs::renameat_with(rustix::fs::CWD, dir, rustix::fs::CWD, output_dir, rustix::fs::RenameFlags::EXCHANGE)
            .map_err(|e| PublishError::Io { path: output_dir.to_path_buf(), source: e.into() })?;
        if let Some(parent) = output_dir.parent() {
            sync_dir(parent)?;
        }
        let _ = std::fs::remove_dir_all(dir);
    } else {
        std::fs::rename(dir, output_dir).map_err(io(output_dir))?;
        if let Some(parent) = output_dir.parent() {
            sync_dir(parent)?;
        }
    }
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
fn clean_local_leftovers(parent: &Path, name: &str) {
    let prefix = format!(".{name}.staging-");
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The manifest of the run published at `output`, if there is one (`_SUCCESS` present).
pub async fn published_manifest(store: &dyn ObjectStore, output: &Location) -> Option<Published> {
    store.head(&output.child("_SUCCESS").prefix).await.ok()?;
    let bytes = store.get(&output.child(manifest::FILE).prefix).await.ok()?.bytes().await.ok()?;
    Published::parse(&bytes)
}
