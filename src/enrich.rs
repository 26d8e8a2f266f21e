//! Enrich: the SQL files of the models folder, each one SELECT that defines a table named
//! after its file. The run order follows their table references, read with DataFusion's
//! SQL parser; each model is materialised in order so later models read its result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::prelude::{DataFrame, SessionContext, ident, lit};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::config::{BatchSpec, Pipeline, Vars, substitute};
use crate::udf::Function;

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Sql { path: PathBuf, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    Var { path: PathBuf, line: usize, column: usize, message: String },
    #[error("--var run_date=`{value}`: not a date; give it as YYYY-MM-DD")]
    RunDate { value: String },
    #[error("models form a cycle: {}", .files.join(" -> "))]
    Cycle { files: Vec<String> },
    #[error("{path}: model `{name}` cannot have this name: {reason}")]
    Reserved { path: PathBuf, name: String, reason: String },
    #[error("models.batched: `{name}` is not a model (no {name}.sql in {dir})")]
    UnknownBatched { name: String, dir: PathBuf },
    #[error("{path}: batched by `{by}`, a column none of its tables has ({tables})")]
    BatchKey { path: PathBuf, by: String, tables: String },
    /// A model that plans but fails while running (memory, a bad cast in the data).
    #[error("{}: {source}", .path.display())]
    Run { path: PathBuf, source: DataFusionError },
}

impl EnrichError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        match self {
            EnrichError::Run { .. } => crate::ExitClass::Other,
            _ => crate::ExitClass::Config,
        }
    }
}

/// One SQL model.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    /// The SQL after `${var}` substitution.
    pub sql: String,
    /// Other models this one reads.
    pub depends_on: Vec<String>,
    /// Every table it reads.
    pub reads: Vec<String>,
    /// Built in batches of a key (`models.batched`).
    pub batch: Option<BatchSpec>,
}

/// Variables for SQL files: the pipeline's, plus `run_date` (today, UTC) when not given.
pub fn sql_vars(vars: &Vars) -> Result<Vars, EnrichError> {
    let mut v = vars.clone();
    let run_date = v.given.entry("run_date".into()).or_insert_with(|| chrono::Utc::now().date_naive().to_string());
    // The models put it in date literals, where a wrong value fails far from its cause.
    if chrono::NaiveDate::parse_from_str(run_date, "%Y-%m-%d").is_err() {
        return Err(EnrichError::RunDate { value: run_date.clone() });
    }
    Ok(v)
}

/// Reads and orders the models of a pipeline. Nothing runs yet: `plan` uses this too.
pub fn load_models(pipeline: &Pipeline, vars: &Vars) -> Result<Vec<Model>, EnrichError> {
    let Some(dir) = pipeline.models_dir() else { return Ok(Vec::new()) };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| EnrichError::Read { path: dir.clone(), source })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let vars = sql_vars(vars)?;
    let mut models = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| EnrichError::Read { path: path.clone(), source })?;
        let (sql, _) = substitute(&text, &vars).map_err(|e| EnrichError::Var {
            path: path.clone(),
            line: e.at.0,
            column: e.at.1,
            message: e.message,
        })?;
        let name = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
        if let Some(reason) = crate::tables::reserved_reason(pipeline, &name) {
            return Err(EnrichError::Reserved { path, name, reason });
        }
        let reads = table_references(&path, &sql)?;
        let batch = pipeline.spec.models.as_ref().and_then(|m| m.batched.get(&name)).cloned();
        models.push(Model { name, path, sql, depends_on: Vec::new(), reads, batch });
    }
    let batched = pipeline.spec.models.iter().flat_map(|m| m.batched.keys());
    if let Some(name) = batched.into_iter().find(|b| !models.iter().any(|m| &m.name == *b)) {
        return Err(EnrichError::UnknownBatched { name: name.clone(), dir });
    }
    let names: BTreeSet<String> = models.iter().map(|m| m.name.clone()).collect();
    for m in &mut models {
        m.depends_on = m.reads.iter().filter(|r| names.contains(*r) && **r != m.name).cloned().collect();
        if m.reads.contains(&m.name) {
            return Err(EnrichError::Cycle { files: vec![display(&m.path), display(&m.path)] });
        }
    }
    order(models)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// The tables one SQL text reads, from DataFusion's parser. CTE names are not tables.
fn table_references(path: &Path, sql: &str) -> Result<Vec<String>, EnrichError> {
    let err = |message: String| EnrichError::Sql { path: path.to_path_buf(), message };
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|e| err(e.to_string()))?;
    if statements.len() != 1 {
        return Err(err(format!("a model is one SELECT statement, found {}", statements.len())));
    }
    let statement = &statements[0];
    let is_query = matches!(statement, Statement::Statement(s) if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)));
    if !is_query {
        return Err(err("a model is one SELECT statement (dbt style); found another kind of statement".into()));
    }
    let state = SessionContext::new().state();
    let refs = state.resolve_table_references(statement).map_err(|e| err(e.to_string()))?;
    let mut names: Vec<String> = refs.iter().map(|r| r.table().to_string()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Topological order, alphabetical among equals; a cycle names its files.
fn order(models: Vec<Model>) -> Result<Vec<Model>, EnrichError> {
    let mut pending: BTreeMap<String, Model> = models.into_iter().map(|m| (m.name.clone(), m)).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .values()
            .filter(|m| m.depends_on.iter().all(|d| done.contains(d)))
            .map(|m| m.name.clone())
            .collect();
        if ready.is_empty() {
            return Err(EnrichError::Cycle { files: find_cycle(&pending) });
        }
        for name in ready {
            let m = pending.remove(&name).expect("ready model is pending");
            done.insert(name);
            out.push(m);
        }
    }
    Ok(out)
}

/// Walks dependencies from any pending model until a model repeats.
fn find_cycle(pending: &BTreeMap<String, Model>) -> Vec<String> {
    let Some(start) = pending.keys().next() else { return Vec::new() };
    let mut path: Vec<String> = vec![start.clone()];
    loop {
        let current = &pending[path.last().expect("non-empty")];
        let next = current.depends_on.iter().find(|d| pending.contains_key(*d)).cloned().unwrap_or_default();
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[i..].iter().map(|n| display(&pending[n].path)).collect();
            cycle.push(display(&pending[&next].path));
            return cycle;
        }
        path.push(next);
    }
}

/// Runs the models in order, each materialised under `scratch` and registered by name.
/// Returns the batched models with the number of batches each took.
pub async fn run_models(
    ctx: &SessionContext,
    models: &[Model],
    scratch: &Path,
) -> Result<BTreeMap<String, usize>, EnrichError> {
    let mut batched = BTreeMap::new();
    for m in models {
        let sql_err = |e: DataFusionError| EnrichError::Sql { path: m.path.clone(), message: one_line(&e.to_string()) };
        // A model that plans but fails while running is an engine error of that file,
        // not a configuration error.
        let run_err = |source: DataFusionError| EnrichError::Run { path: m.path.clone(), source };
        let parts = match &m.batch {
            None => vec![ctx.sql(&m.sql).await.map_err(sql_err)?],
            Some(batch) => {
                let inputs = batch_inputs(ctx, m, &batch.by).await?;
                let count = match batch.batches.0 {
                    Some(n) => n,
                    None => auto_batches(ctx, &inputs).await.map_err(run_err)?,
                };
                let mut parts = Vec::new();
                if count == 1 {
                    // One batch holds every row: a filter on the key's bucket would only
                    // copy them (1.4 s of `customers_enriched` at 1M people).
                    parts.push(ctx.sql(&m.sql).await.map_err(sql_err)?);
                } else {
                    for index in 0..count {
                        let part = Batch { index, count };
                        let batch_ctx = batch_context(ctx, &inputs, &batch.by, part).map_err(run_err)?;
                        parts.push(batch_ctx.sql(&m.sql).await.map_err(sql_err)?);
                    }
                }
                tracing::info!(
                    model = m.name.as_str(),
                    batches = count,
                    by = batch.by.as_str(),
                    "model runs in batches"
                );
                batched.insert(m.name.clone(), count);
                parts
            }
        };
        crate::engine::materialize_parts(ctx, &m.name, parts, scratch).await.map_err(run_err)?;
        tracing::info!(model = m.name.as_str(), "model built");
    }
    Ok(batched)
}

/// A table a batched model reads, and whether it has the batch key.
struct BatchInput {
    name: String,
    df: DataFrame,
    keyed: bool,
}

/// One batch of a model: the key values whose hash falls in bucket `index` of `count`.
#[derive(Debug, Clone, Copy)]
struct Batch {
    index: usize,
    count: usize,
}

async fn batch_inputs(ctx: &SessionContext, m: &Model, by: &str) -> Result<Vec<BatchInput>, EnrichError> {
    let mut inputs = Vec::new();
    for name in &m.reads {
        // A table that does not exist fails in the model's own SQL, with its name.
        if let Ok(df) = ctx.table(name.as_str()).await {
            let keyed = df.schema().has_column_with_unqualified_name(by);
            inputs.push(BatchInput { name: name.clone(), df, keyed });
        }
    }
    if !inputs.iter().any(|i| i.keyed) {
        return Err(EnrichError::BatchKey { path: m.path.clone(), by: by.to_string(), tables: m.reads.join(", ") });
    }
    Ok(inputs)
}

/// Bytes a batched model's joins hold per cell (row x column) of its keyed tables: the
/// hash tables of every joined table at once. On 1M people in a 600 MB pool the retail
/// `customers_enriched` ran out in 2 batches and fit in 4; 40 bytes gives 6 there, and 6
/// at 10M records in 2 GB (BENCHMARKS.md).
const BYTES_PER_CELL_IN_BATCH: usize = 40;

/// Enough batches for the keyed tables' cells to take at most half the memory limit. Row
/// counts come from the tables' statistics (Parquet footers), not from a scan; a table
/// without them counts as empty.
async fn auto_batches(ctx: &SessionContext, inputs: &[BatchInput]) -> Result<usize, DataFusionError> {
    let mut cells = 0usize;
    for input in inputs.iter().filter(|i| i.keyed) {
        let plan = input.df.clone().create_physical_plan().await?;
        let stats = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new())?;
        let rows = stats.num_rows.get_value().copied().unwrap_or(0);
        cells = cells.saturating_add(rows.saturating_mul(input.df.schema().fields().len()));
    }
    Ok(crate::engine::shares_for_memory(ctx, cells.saturating_mul(BYTES_PER_CELL_IN_BATCH), 2))
}

/// A context whose tables hold one batch: the keyed tables only the rows whose key hashes
/// into the batch, the others all their rows. It shares the memory pool, settings and
/// functions of `ctx`; only its catalog is its own.
fn batch_context(
    ctx: &SessionContext,
    inputs: &[BatchInput],
    by: &str,
    batch: Batch,
) -> Result<SessionContext, DataFusionError> {
    let batch_ctx = without_tables(ctx)?;
    let in_batch =
        crate::udf::call(Function::HashBucket, vec![ident(by), lit(batch.count as i64)]).eq(lit(batch.index as i64));
    for input in inputs {
        let df = if input.keyed { input.df.clone().filter(in_batch.clone())? } else { input.df.clone() };
        batch_ctx.register_table(input.name.as_str(), df.into_view())?;
    }
    Ok(batch_ctx)
}

/// A session with `ctx`'s settings and functions and no tables of its own.
fn without_tables(ctx: &SessionContext) -> Result<SessionContext, DataFusionError> {
    let state = ctx.state();
    let names = state.config().options().catalog.clone();
    let catalog = MemoryCatalogProvider::new();
    catalog.register_schema(&names.default_schema, Arc::new(MemorySchemaProvider::new()))?;
    let catalogs = MemoryCatalogProviderList::new();
    catalogs.register_catalog(names.default_catalog, Arc::new(catalog));
    let state = SessionStateBuilder::new_from_existing(state).with_catalog_list(Arc::new(catalogs)).build();
    Ok(SessionContext::new_with_state(state))
}

/// The columns of each of `tables` (name and schema; they need not be registered yet)
/// that the models read, as their optimised plans' scans say; tables no model reads are
/// left out. The models are planned in order against empty stand-ins of the tables they
/// read, each model's result standing in for it in the models after: nothing runs.
pub async fn columns_read(
    ctx: &SessionContext,
    models: &[Model],
    tables: &[(String, SchemaRef)],
) -> Result<BTreeMap<String, BTreeSet<String>>, DataFusionError> {
    let sandbox = without_tables(ctx)?;
    let mut read: BTreeMap<String, BTreeSet<String>> = tables
        .iter()
        .filter(|(name, _)| models.iter().any(|m| m.reads.contains(name)))
        .map(|(name, _)| (name.clone(), BTreeSet::new()))
        .collect();
    for m in models {
        for table in &m.reads {
            if sandbox.table_exist(table.as_str())? {
                continue;
            }
            let schema = match tables.iter().find(|(name, _)| name == table) {
                Some((_, schema)) => schema.clone(),
                None => ctx.table(table.as_str()).await?.schema().inner().clone(),
            };
            sandbox.register_table(table.as_str(), crate::engine::stand_in(schema)?)?;
        }
        let plan = sandbox.sql(&m.sql).await?.into_optimized_plan()?;
        crate::engine::scanned_columns(&plan, &mut read)?;
        sandbox.register_table(m.name.as_str(), crate::engine::stand_in(plan.schema().inner().clone())?)?;
    }
    Ok(read)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, deps: &[&str]) -> Model {
        Model {
            name: name.into(),
            path: PathBuf::from(format!("sql/{name}.sql")),
            sql: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            reads: Vec::new(),
            batch: None,
        }
    }

    #[test]
    fn references_come_from_the_parser_not_ctes() {
        let refs = table_references(
            Path::new("m.sql"),
            "WITH recent AS (SELECT * FROM orders WHERE x > 1) SELECT r.*, c.id FROM recent r JOIN customers c ON true \
             WHERE r.customer_id IN (SELECT customer_id FROM rfm)",
        )
        .unwrap();
        assert_eq!(refs, ["customers", "orders", "rfm"]);
    }

    #[test]
    fn a_model_may_not_take_the_name_of_a_table_the_run_makes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sql")).unwrap();
        let text = "name: t\noutput: out\nmodels: {path: sql}\nsources:\n  crm:\n    location: crm/*.csv\n    \
                    format: {type: csv}\n    key: id\n    identity:\n      email: email\n";
        let pipeline = Pipeline::from_text(&dir.path().join("p.yaml"), text, &Vars::default()).unwrap();
        for (file, reason) in [("name_roles", "a table klantbeeld makes"), ("stg_orders", "names starting with `stg_`")]
        {
            let sql = dir.path().join("sql").join(format!("{file}.sql"));
            std::fs::write(&sql, "SELECT 1 AS x").unwrap();
            let e = load_models(&pipeline, &Vars::default()).unwrap_err().to_string();
            assert!(e.contains(&format!("model `{file}` cannot have this name")) && e.contains(reason), "{e}");
            std::fs::remove_file(sql).unwrap();
        }
        std::fs::write(dir.path().join("sql").join("rfm.sql"), "SELECT 1 AS x").unwrap();
        assert_eq!(load_models(&pipeline, &Vars::default()).unwrap().len(), 1);
    }

    #[test]
    fn only_one_select_per_file() {
        assert!(table_references(Path::new("m.sql"), "SELECT 1; SELECT 2").is_err());
        let e = table_references(Path::new("m.sql"), "INSERT INTO t VALUES (1)").unwrap_err().to_string();
        assert!(e.starts_with("m.sql: a model is one SELECT"), "{e}");
        let e = table_references(Path::new("m.sql"), "SELEC 1").unwrap_err().to_string();
        assert!(e.starts_with("m.sql: "), "{e}");
    }

    /// A session with the UDFs and a memory limit, holding `keyed` (200k customers, three
    /// columns) and `other` (no customer_id, 10 rows).
    async fn batch_session(dir: &Path, limit: Option<usize>) -> (SessionContext, Vec<BatchInput>) {
        let options = crate::engine::EngineOptions { memory_limit: limit, ..Default::default() };
        let ctx = crate::engine::session(&options, dir).unwrap();
        for (name, sql) in [
            (
                "keyed",
                "SELECT concat('K', value) AS customer_id, value AS a, value * 2 AS b FROM generate_series(1, 200000)",
            ),
            ("other", "SELECT value AS n FROM generate_series(1, 10)"),
        ] {
            let df = ctx.sql(sql).await.unwrap();
            let schema = df.schema().inner().clone();
            let table = datafusion::datasource::MemTable::try_new(schema, vec![df.collect().await.unwrap()]).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        let m = Model { reads: vec!["keyed".into(), "other".into()], ..model("enriched", &[]) };
        let inputs = batch_inputs(&ctx, &m, "customer_id").await.unwrap();
        (ctx, inputs)
    }

    #[tokio::test]
    async fn auto_batches_follow_the_rows_and_the_memory_limit() {
        let dir = tempfile::tempdir().unwrap();
        // 600k cells of 40 bytes: 24 MB, in half of an 8 MB pool.
        let (ctx, inputs) = batch_session(dir.path(), Some(8 << 20)).await;
        assert_eq!(
            inputs.iter().map(|i| (i.name.as_str(), i.keyed)).collect::<Vec<_>>(),
            [("keyed", true), ("other", false)]
        );
        assert_eq!(auto_batches(&ctx, &inputs).await.unwrap(), 6);
        let (ctx, inputs) = batch_session(dir.path(), Some(64 << 20)).await;
        assert_eq!(auto_batches(&ctx, &inputs).await.unwrap(), 1);
        let (ctx, inputs) = batch_session(dir.path(), None).await;
        assert_eq!(auto_batches(&ctx, &inputs).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn batches_split_the_keyed_tables_and_keep_the_others_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, inputs) = batch_session(dir.path(), None).await;
        let mut seen = 0;
        for index in 0..3 {
            let batch_ctx = batch_context(&ctx, &inputs, "customer_id", Batch { index, count: 3 }).unwrap();
            let count = |sql: &'static str| {
                let batch_ctx = batch_ctx.clone();
                async move { batch_ctx.sql(sql).await.unwrap().count().await.unwrap() }
            };
            let rows = count("SELECT * FROM keyed").await;
            assert!(rows > 50_000 && rows < 80_000, "batch {index}: {rows} rows");
            seen += rows;
            assert_eq!(count("SELECT * FROM other").await, 10);
            // The UDFs come along; the tables of `ctx` that the model does not read do not.
            assert_eq!(count("SELECT hash_bucket('a', 2) FROM other").await, 10);
            assert!(batch_ctx.table("customers").await.is_err());
        }
        assert_eq!(seen, 200_000, "every customer is in exactly one batch");
    }

    /// Each source's columns that some model reads, through models that read models (a
    /// model's own columns are not a source's), filters and CTEs; a source no model reads
    /// is left out, one read by `count(*)` only reads no column. Nothing is left behind
    /// in the session.
    #[tokio::test]
    async fn columns_read_follow_the_models_in_order() {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE customers AS SELECT 'C1' AS customer_id, 'Anna' AS first_name").await.unwrap();
        let schema = |columns: &[&str]| {
            Arc::new(Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>()))
        };
        let tables = vec![
            ("orders".to_string(), schema(&["customer_id", "order_id", "amount", "category", "note"])),
            ("sessions".to_string(), schema(&["customer_id", "session_id", "page"])),
            ("events".to_string(), schema(&["customer_id", "event_id"])),
            ("tickets".to_string(), schema(&["customer_id", "ticket_id"])),
        ];
        let model = |name: &str, sql: &str| Model {
            name: name.into(),
            path: PathBuf::from(format!("sql/{name}.sql")),
            sql: sql.into(),
            depends_on: Vec::new(),
            reads: table_references(Path::new(name), sql).unwrap(),
            batch: None,
        };
        let models = [
            model(
                "spend",
                "WITH o AS (SELECT * FROM orders WHERE note IS NULL) SELECT customer_id, sum(CAST(amount AS DOUBLE)) AS total FROM o GROUP BY customer_id",
            ),
            model(
                "top",
                "SELECT s.customer_id, s.total, c.first_name, o.category FROM spend s JOIN customers c USING (customer_id) JOIN orders o USING (customer_id)",
            ),
            model("visits", "SELECT count(*) AS n FROM sessions"),
            model(
                "ticketed",
                "SELECT customer_id FROM customers WHERE customer_id IN (SELECT customer_id FROM tickets)",
            ),
        ];
        let read = columns_read(&ctx, &models, &tables).await.unwrap();
        let read: Vec<(&str, Vec<&str>)> =
            read.iter().map(|(t, c)| (t.as_str(), c.iter().map(String::as_str).collect())).collect();
        assert_eq!(
            read,
            [
                ("orders", vec!["amount", "category", "customer_id", "note"]),
                ("sessions", vec![]),
                ("tickets", vec!["customer_id"]),
            ]
        );
        assert!(ctx.table("orders").await.is_err() && ctx.table("spend").await.is_err());
        assert!(ctx.table("customers").await.is_ok());
    }

    #[test]
    fn order_follows_dependencies() {
        let ordered =
            order(vec![model("segments", &["rfm", "clv"]), model("rfm", &[]), model("clv", &["rfm"])]).unwrap();
        let names: Vec<&str> = ordered.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["rfm", "clv", "segments"]);
    }

    #[test]
    fn cycle_names_its_files() {
        let e = order(vec![model("a", &["b"]), model("b", &["c"]), model("c", &["a"]), model("d", &[])]).unwrap_err();
        assert_eq!(e.to_string(), "models form a cycle: sql/a.sql -> sql/b.sql -> sql/c.sql -> sql/a.sql");
    }
}
