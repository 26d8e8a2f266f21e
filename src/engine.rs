//! The embedded DataFusion engine: a session with a memory limit that spills to disk, and
//! klantbeeld's functions registered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::TableParquetOptions;
use datafusion::datasource::MemTable;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryLimit, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};

/// Settings for one session.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Bytes the engine may hold in memory before spilling; unlimited when `None`.
    pub memory_limit: Option<usize>,
    pub target_partitions: Option<usize>,
    pub batch_size: Option<usize>,
    /// DataFusion configuration keys and values, set after the options above.
    pub settings: Vec<(String, String)>,
}

/// A text as an SQL string literal: `O'Brien` becomes `'O''Brien'`.
pub fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A name as an SQL identifier, kept as written: `Klant Id` becomes `"Klant Id"`.
pub fn sql_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// SQL of the first row of each `group` in `order` among the rows of `from` (a table or a
/// parenthesised query), with `columns`: the rows in group order, each group's in `order`,
/// and the first of a group is the one whose group differs from the row before.
/// Numbering the rows per group (`row_number() OVER (PARTITION BY ...)`) keeps a state
/// per group in DataFusion, which costs more than the sort with many small groups (a tenth
/// of golden's time at 200k people).
pub fn first_of_each_group(from: &str, group: &str, order: &str, columns: &str) -> String {
    format!(
        "SELECT {columns} FROM (SELECT *, lag({group}) OVER (ORDER BY {group}, {order}) AS previous_group FROM {from}) \
         WHERE previous_group IS NULL OR previous_group <> {group}"
    )
}

/// Where a run's queries execute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// In this process (DataFusion).
    #[default]
    Embedded,
    /// On an Apache Ballista cluster, through its scheduler at `df://HOST:PORT`.
    Ballista { scheduler: String },
}

/// Rows in a batch, unless the pipeline says otherwise, when the memory pool holds at
/// least `BIG_BATCH_POOL` bytes (DataFusion's default, 8192, below).
const BIG_BATCH_SIZE: usize = 32 * 1024;
const BIG_BATCH_POOL: usize = 1 << 30;

/// A session whose spill files go to `spill_dir`.
pub fn session(options: &EngineOptions, spill_dir: &Path) -> datafusion::error::Result<SessionContext> {
    let mut config = SessionConfig::new().with_information_schema(true);
    // A partial aggregation costs about what the final one does; in one process, moving
    // rows between partitions costs little, so it pays only where it at least halves
    // them. DataFusion keeps it while it removes a fifth (0.8): `email_engagement` at 1M
    // people grouped 12.6M events into 9.2M partial groups (5.7 s), then again (1.7 s).
    // A pipeline's own setting comes after, and wins.
    config.options_mut().execution.skip_partial_aggregation_probe_ratio_threshold = 0.5;
    // Batches of 32k rows rather than 8k where the pool has room for them: the per-batch
    // work of the functions, hash tables and Parquet writers is paid a quarter as often
    // (a 1M-person run: 4 s of CPU less, BENCHMARKS.md), but a sort then needs 4 times
    // the memory to go on. `engine.batch_size` or the setting still choose.
    let config = match options.memory_limit {
        Some(bytes) if bytes < BIG_BATCH_POOL => config,
        _ => config.with_batch_size(BIG_BATCH_SIZE),
    };
    let mut config = configure(config, options)?;
    let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(
        DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill_dir.to_path_buf()])),
    );
    if let Some(bytes) = options.memory_limit {
        // Tracking names the biggest consumers when the pool runs out, which tells the
        // user which stage (and the developer which operator) needs the memory.
        let top = std::num::NonZeroUsize::new(5).expect("5 > 0");
        runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(FairSpillPool::new(bytes), top)));
        // Sorts keep a reserve for merging spilled runs; a tenth of the pool leaves room
        // for the rest (see TECH_NOTES: merges fail when the pool is too tight).
        // A pipeline that sets the reserve itself keeps its value.
        if !options.settings.iter().any(|(k, _)| k.ends_with("sort_spill_reservation_bytes")) {
            config = config.with_sort_spill_reservation_bytes((bytes / 10).max(1 << 20));
        }
    }
    let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
    crate::udf::register(&ctx);
    Ok(ctx)
}

/// The options' partitions, batch size and settings on a session configuration (the
/// memory limit is the runtime's, see [`session`]).
pub fn configure(mut config: SessionConfig, options: &EngineOptions) -> datafusion::error::Result<SessionConfig> {
    // DataFusion 55 moves struct field reads (`parse_phone(...)['kind']`) towards the scans,
    // and fails to plan ("would be ambiguous") above a projection that swaps two column
    // names, as staging's name unswapping does (apache/datafusion#25446, open).
    config.options_mut().optimizer.enable_leaf_expression_pushdown = false;
    if let Some(n) = options.target_partitions {
        config = config.with_target_partitions(n.max(1));
    }
    if let Some(n) = options.batch_size {
        config = config.with_batch_size(n.max(1));
    }
    for (key, value) in &options.settings {
        config.options_mut().set(key, value)?;
    }
    Ok(config)
}

/// The columns of table `table` (with `schema`) that `queries` read, as the optimiser's
/// scans of it say: a scratch table then holds only those. The queries are planned
/// against an empty stand-in registered under `table`, so nothing runs.
pub async fn columns_read(
    ctx: &SessionContext,
    table: &str,
    schema: SchemaRef,
    queries: &[String],
) -> datafusion::error::Result<BTreeSet<String>> {
    let _ = ctx.deregister_table(table);
    ctx.register_table(table, stand_in(schema)?)?;
    // Planned in a block of its own, so that the stand-in goes whatever the outcome.
    let read = async {
        let mut read = BTreeMap::from([(table.to_string(), BTreeSet::new())]);
        for sql in queries {
            scanned_columns(&ctx.sql(sql).await?.into_optimized_plan()?, &mut read)?;
        }
        Ok(read.remove(table).unwrap_or_default())
    }
    .await;
    ctx.deregister_table(table)?;
    read
}

/// [`columns_read`] as a select list: the columns of `schema` that `queries` read of
/// `table`, in the schema's order (a scratch table then reads like its source), each as
/// `alias.column`.
pub async fn select_read(
    ctx: &SessionContext,
    table: &str,
    schema: SchemaRef,
    queries: &[String],
    alias: &str,
) -> datafusion::error::Result<String> {
    let read = columns_read(ctx, table, schema.clone(), queries).await?;
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .filter(|f| read.contains(f.name()))
        .map(|f| format!("{alias}.{}", sql_identifier(f.name())))
        .collect();
    Ok(columns.join(", "))
}

/// An empty table of `schema`: what queries are planned against to learn what they read.
pub fn stand_in(schema: SchemaRef) -> datafusion::error::Result<Arc<MemTable>> {
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// Adds to `read`, for each table it has a key of, the columns that `plan`'s scans of that
/// table read (projected, or named by a filter pushed into the scan).
pub fn scanned_columns(
    plan: &datafusion::logical_expr::LogicalPlan,
    read: &mut BTreeMap<String, BTreeSet<String>>,
) -> datafusion::error::Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(read) = read.get_mut(scan.table_name.table())
        {
            let fields = scan.source.schema();
            match &scan.projection {
                Some(indices) => read.extend(indices.iter().map(|i| fields.field(*i).name().clone())),
                None => read.extend(fields.fields().iter().map(|f| f.name().clone())),
            }
            for filter in &scan.filters {
                read.extend(filter.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// Writes a query's result as Parquet under `dir/name/` and registers it as table `name`
/// in its place: later stages read the file, not the query again.
pub async fn materialize(ctx: &SessionContext, name: &str, df: DataFrame, dir: &Path) -> datafusion::error::Result<()> {
    materialize_parts(ctx, name, vec![df], dir).await
}

/// `materialize` for a table computed in parts (passes, batches), one after the other so
/// that only one part's work is in memory at a time.
pub async fn materialize_parts(
    ctx: &SessionContext,
    name: &str,
    parts: Vec<DataFrame>,
    dir: &Path,
) -> datafusion::error::Result<()> {
    materialize_as(ctx, name, parts, dir, scratch_parquet()).await
}

/// `materialize` for a table that many queries read (the identity records: resolve reads
/// them about fifteen times), with dictionary pages: reading a repeated value from a
/// dictionary page costs less than decoding it in full each time, and building the
/// dictionaries once paid for itself (at 1M people resolve 11.9-13.0 -> 11.2-11.6 s).
pub async fn materialize_for_many_reads(
    ctx: &SessionContext,
    name: &str,
    df: DataFrame,
    dir: &Path,
) -> datafusion::error::Result<()> {
    let mut options = scratch_parquet();
    options.global.dictionary_enabled = Some(true);
    materialize_as(ctx, name, vec![df], dir, options).await
}

/// Writes the parts with `options` (or in the published form, see [`PublishedForm`]) and
/// registers the table.
async fn materialize_as(
    ctx: &SessionContext,
    name: &str,
    parts: Vec<DataFrame>,
    dir: &Path,
    options: TableParquetOptions,
) -> datafusion::error::Result<()> {
    let path = dir.join(name);
    match published_form(ctx).filter(|p| p.tables.contains(name)) {
        Some(published) => {
            let parts = parts.into_iter().map(crate::publish::portable).collect::<Result<Vec<_>, _>>()?;
            write_parts_as(parts, &path, crate::publish::published_parquet()).await?;
            published.written.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), path.clone());
        }
        None => write_parts_as(parts, &path, options).await?,
    }
    let _ = ctx.deregister_table(name);
    ctx.register_parquet(name, &format!("{}/", path.display()), ParquetReadOptions::default()).await
}

/// The tables a run publishes as they are (unpartitioned), which `materialize` writes in
/// the published form (`publish::portable` types, `publish::published_parquet` files):
/// publishing then copies their files instead of reading the table and encoding it
/// again, which was most of the publish stage (3 s of a 1M-person run). Set on a
/// session with [`publish_as_written`].
#[derive(Debug, Default)]
pub struct PublishedForm {
    tables: BTreeSet<String>,
    /// The folders the tables were written to, by table.
    written: std::sync::Mutex<BTreeMap<String, std::path::PathBuf>>,
}

/// Has the session write `tables` in the published form when they are materialised.
pub fn publish_as_written(ctx: &SessionContext, tables: impl IntoIterator<Item = String>) {
    let form = PublishedForm { tables: tables.into_iter().collect(), written: Default::default() };
    ctx.state_ref().write().config_mut().set_extension(Arc::new(form));
}

/// The folder a table was materialised to in the published form, if it was.
pub fn published_files(ctx: &SessionContext, table: &str) -> Option<std::path::PathBuf> {
    let form = published_form(ctx)?;
    form.written.lock().unwrap_or_else(|e| e.into_inner()).get(table).cloned()
}

/// The session's [`PublishedForm`], read in place (`ctx.state()` would copy the state).
fn published_form(ctx: &SessionContext) -> Option<Arc<PublishedForm>> {
    ctx.state_ref().read().config().get_extension::<PublishedForm>()
}

/// Column of a table written by [`materialize_by_pass`]: the pass (a BIGINT) a row is in.
pub const PASS: &str = "kb_pass";

/// `materialize` for a table with a [`PASS`] column, written in one folder per pass
/// (`kb_pass=3/`): a query that keeps one pass (`WHERE kb_pass = 3`) reads that pass's
/// files only, so work done in passes reads the rows once in all rather than once per
/// pass.
pub async fn materialize_by_pass(
    ctx: &SessionContext,
    name: &str,
    df: DataFrame,
    dir: &Path,
) -> datafusion::error::Result<()> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path)?;
    let started = std::time::Instant::now();
    // The files hold every column but the pass; given, the schema also reads a table
    // without rows (no files).
    let schema = df.schema().inner();
    let file_schema = datafusion::arrow::datatypes::Schema::new(
        schema.fields().iter().filter(|f| f.name() != PASS).cloned().collect::<Vec<_>>(),
    );
    let by_pass = datafusion::dataframe::DataFrameWriteOptions::new().with_partition_by(vec![PASS.to_string()]);
    df.write_parquet(&format!("{}/", path.display()), by_pass, Some(scratch_parquet())).await?;
    tracing::debug!(table = %path.display(), seconds = started.elapsed().as_secs_f64(), "table written");
    let _ = ctx.deregister_table(name);
    let options = ParquetReadOptions::default()
        .schema(&file_schema)
        .table_partition_cols(vec![(PASS.to_string(), datafusion::arrow::datatypes::DataType::Int64)]);
    ctx.register_parquet(name, &format!("{}/", path.display()), options).await
}

/// Writes each part's result as new Parquet files in the folder `dir`, one part after the
/// other. An empty result still leaves a file with the schema, for readers of the folder.
pub async fn write_parts(parts: Vec<DataFrame>, dir: &Path) -> datafusion::error::Result<()> {
    write_parts_as(parts, dir, scratch_parquet()).await
}

/// `write_parts` with the files' Parquet `options`.
async fn write_parts_as(
    parts: Vec<DataFrame>,
    dir: &Path,
    options: TableParquetOptions,
) -> datafusion::error::Result<()> {
    std::fs::create_dir_all(dir)?;
    let started = std::time::Instant::now();
    let mut schema = None;
    for df in parts {
        schema.get_or_insert_with(|| df.schema().inner().clone());
        if tracing::enabled!(tracing::Level::TRACE) {
            log_analyzed_plan(&dir.display().to_string(), df.clone()).await?;
        }
        df.write_parquet(&format!("{}/", dir.display()), Default::default(), Some(options.clone())).await?;
    }
    if let Some(schema) = schema {
        crate::publish::ensure_local_schema_file(dir, schema)?;
    }
    // Which intermediate table costs what: the first thing to read when a run is slow.
    tracing::debug!(table = %dir.display(), seconds = started.elapsed().as_secs_f64(), "table written");
    Ok(())
}

/// Runs a query (a scratch table's, or a rule's candidate edges: `what`) once more under
/// `EXPLAIN ANALYZE` and logs the plan with its metrics (`KLANTBEELD_LOG=klantbeeld=trace`):
/// which operator of a slow step costs what, rows and spills included. The query then
/// runs twice, so only for diagnosis.
pub async fn log_analyzed_plan(what: &str, df: DataFrame) -> datafusion::error::Result<()> {
    let batches = df.explain(false, true)?.collect().await?;
    let plan = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
    tracing::trace!(table = what, "plan with metrics:\n{plan}");
    Ok(())
}

/// The pool `memory_limit: auto` gives: half the memory of the machine or of its
/// container, whichever is less (DuckDB's default takes 80%); 2 GB where neither can be
/// read. The other half is for what the pool does not count: Parquet writers, the
/// union-find arrays, the allocator's pages (at 10M people, 3 GB beside a 2 GB pool).
pub fn auto_memory_limit() -> usize {
    usable_memory().map_or(2 << 30, |bytes| bytes / 2)
}

/// The machine's memory (`/proc/meminfo`), or its container's limit when lower (cgroup v2
/// `memory.max`, v1 `memory.limit_in_bytes`; "max" and v1's huge "unlimited" stay above).
fn usable_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let total = total.trim().trim_end_matches("kB").trim().parse::<usize>().ok()? * 1024;
    let container = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok()?.trim().parse::<usize>().ok())
        .min();
    Some(container.map_or(total, |c| c.min(total)))
}

/// Scratch tables are written once and read once or twice on local disk: LZ4 costs a
/// fraction of the CPU of the published files' zstd (measured: zstd compression was 2% of
/// a whole run's CPU at 200k people), and no dictionaries: building them (the writer's
/// interner) was 4.6% of a run's CPU, for files that live a few seconds. Statistics per
/// column chunk only, which is what the optimiser reads (row counts, sizes, min and max):
/// the page index, which no scratch query prunes by, cost about 2 s of a 1M-person run.
fn scratch_parquet() -> TableParquetOptions {
    let mut options = TableParquetOptions::default();
    options.global.compression = Some("lz4_raw".into());
    options.global.dictionary_enabled = Some(false);
    options.global.statistics_enabled = Some("chunk".into());
    options
}

/// `scratch_parquet` for the scratch files klantbeeld writes batch by batch itself.
pub fn scratch_writer_properties() -> datafusion::parquet::file::properties::WriterProperties {
    datafusion::parquet::file::properties::WriterProperties::builder()
        .set_compression(datafusion::parquet::basic::Compression::LZ4_RAW)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(datafusion::parquet::file::properties::EnabledStatistics::Chunk)
        .build()
}

/// In how many shares (passes, batches) work of `bytes` fits in `1/fraction` of the
/// memory limit: 1 when the limit is not set.
pub fn shares_for_memory(ctx: &SessionContext, bytes: usize, fraction: usize) -> usize {
    match ctx.runtime_env().memory_pool.memory_limit() {
        MemoryLimit::Finite(limit) => bytes.div_ceil((limit / fraction).max(1)).max(1),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn columns_read_are_those_the_plans_scan() {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(
            ["rid", "a", "b", "c", "unused"].map(|n| Field::new(n, DataType::Utf8, true)).to_vec(),
        ));
        let queries = [
            "WITH k AS (SELECT * FROM t WHERE c IS NOT NULL) SELECT l.rid, r.rid FROM k l JOIN k r ON l.a = r.a"
                .to_string(),
            "SELECT b, count(*) FROM t WHERE rid IN (SELECT rid FROM t WHERE \"unused\" = 'x') GROUP BY b".to_string(),
        ];
        let read = columns_read(&ctx, "t", schema.clone(), &queries).await.unwrap();
        assert_eq!(read.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "rid", "unused"]);
        let read = columns_read(&ctx, "t", schema.clone(), &queries[..1]).await.unwrap();
        assert_eq!(read.into_iter().collect::<Vec<_>>(), ["a", "c", "rid"]);
        // The stand-in is gone, and a query over a column the table lacks is an error.
        assert!(ctx.table("t").await.is_err());
        assert!(columns_read(&ctx, "t", schema, &["SELECT nope FROM t".into()]).await.is_err());
    }

    /// On Linux the machine's memory is read, and `auto` is half of it (or of the
    /// container's limit): never more than the machine has, never nothing.
    #[test]
    #[cfg(target_os = "linux")]
    fn auto_memory_limit_is_half_the_usable_memory() {
        let usable = usable_memory().expect("/proc/meminfo is readable on Linux");
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total_kb: usize = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(usable > 0 && usable <= total_kb * 1024);
        assert_eq!(auto_memory_limit(), usable / 2);
    }

    #[test]
    fn identifiers_keep_their_spelling() {
        assert_eq!(sql_identifier("Klant \"Id\""), "\"Klant \"\"Id\"\"\"");
    }

    /// A table written by pass has one folder per pass, a query of one pass reads that
    /// pass's rows (and only its folder), and a table without rows still reads.
    #[tokio::test]
    async fn a_table_by_pass_reads_one_pass_at_a_time() {
        let ctx = SessionContext::new();
        let dir = tempfile::tempdir().unwrap();
        let sql = |rows: usize| {
            format!(
                "SELECT value AS rid, CAST(value % 3 AS BIGINT) AS {PASS} FROM generate_series(1, {rows}) t(value) \
                 WHERE {rows} > 0"
            )
        };
        materialize_by_pass(&ctx, "t", ctx.sql(&sql(30)).await.unwrap(), dir.path()).await.unwrap();
        let folders = std::fs::read_dir(dir.path().join("t")).unwrap().count();
        assert_eq!(folders, 3);
        let scan = ctx.sql(&format!("SELECT rid FROM t WHERE {PASS} = 2")).await.unwrap();
        let plan = scan.create_physical_plan().await.unwrap();
        let plan = format!("{}", datafusion::physical_plan::displayable(plan.as_ref()).indent(true));
        assert!(plan.contains("kb_pass=2") && !plan.contains("kb_pass=0"), "{plan}");
        let rids = ctx.sql(&format!("SELECT sum(rid), count(*) FROM t WHERE {PASS} = 2")).await.unwrap();
        let b = &rids.collect().await.unwrap()[0];
        let int =
            |i: usize| b.column(i).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap().value(0);
        assert_eq!((int(0), int(1)), ((2..=29).step_by(3).sum::<i64>(), 10));
        materialize_by_pass(&ctx, "empty", ctx.sql(&sql(0)).await.unwrap(), dir.path()).await.unwrap();
        assert_eq!(ctx.table("empty").await.unwrap().count().await.unwrap(), 0);
    }
}
