//! One pipeline run, stage after stage: extract, stage, resolve, golden, publish. Every
//! intermediate result lives in a scratch folder that is removed afterwards; nothing is
//! visible at the output until the final swap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::check;
use crate::config::{Pipeline, TestSpec};
use crate::engine::{self, EngineOptions};
use crate::enrich;
use crate::extract::{self, ExtractedSource, Scratch};
use crate::golden;
use crate::manifest::{InputInfo, Manifest, Published};
use crate::progress::{Progress, thousands};
use crate::publish::{Staging, TableInfos};
use crate::resolve::{self, ids};
use crate::stage;
use crate::storage::{self, Location};
use crate::tables::{
    CUSTOMER_CHANGES, CUSTOMER_IDS, CUSTOMER_XREF, GOLDEN_TABLES, IDENTITY_RECORDS, KEPT_RECORDS, MATCH_EDGES,
    PREVIOUS_XREF, STAGED_RECORDS,
};
use crate::{Error, storage::redact};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};

/// Options of one run beyond the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the YAML's `engine.memory_limit`.
    pub memory_limit: Option<usize>,
    /// Read at most this many rows per input file (fast iteration on a sample).
    pub limit: Option<usize>,
    /// Previous crosswalk to keep ids from; defaults to the published one at the output.
    pub previous: Option<String>,
    /// Folder for scratch files and spills; the system temp folder when `None`.
    pub work_dir: Option<PathBuf>,
    /// The run id (logs carry it too); a new one when `None`.
    pub run_id: Option<String>,
    /// Take over an object-store output lock whatever its age.
    pub break_lock: bool,
    /// Draw progress on the terminal (plain log lines are written either way).
    pub progress: bool,
    pub engine: engine::Engine,
}

/// A new run id: UTC time plus random bits, sortable and unique.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    format!("{now}-{:08x}", rand::random::<u32>())
}

/// Values of variables whose names suggest a secret are hidden in the manifest.
fn redact_vars(vars: &[(String, String)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            let secret = ["secret", "password", "token", "key", "credential"].iter().any(|s| lower.contains(s));
            (k.clone(), if secret { "***".into() } else { redact(v) })
        })
        .collect()
}

/// Writes a frame to a scratch Parquet folder and registers it under `name`, so later
/// stages read the result instead of recomputing it.
pub async fn materialize(ctx: &SessionContext, name: &str, df: DataFrame, dir: &Path) -> Result<(), Error> {
    engine::materialize(ctx, name, df, dir).await.map_err(Error::engine(format!("computing `{name}`")))
}

/// Where the previous crosswalk comes from: the option, the YAML, or the published output.
async fn previous_location(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    options: &RunOptions,
    output: &Location,
) -> Result<(Option<Location>, Option<Published>), Error> {
    let store = storage::store_for(ctx, output, &pipeline.spec.storage)?;
    let manifest = crate::publish::published_manifest(store.as_ref(), output).await;
    let explicit = options.previous.as_deref().or(pipeline.spec.previous.as_deref());
    if let Some(p) = explicit {
        return Ok((Some(Location::parse(p, &pipeline.base_dir)?), manifest));
    }
    let previous = manifest.is_some().then(|| output.child(CUSTOMER_XREF));
    Ok((previous, manifest))
}

/// Registers the previous crosswalk and returns the highest id sequence used so far.
async fn register_previous(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    previous: Option<&Location>,
    manifest: Option<&Published>,
) -> Result<u64, Error> {
    let Some(loc) = previous else {
        ids::register_empty_previous(ctx).await.map_err(Error::engine("previous crosswalk"))?;
        return Ok(0);
    };
    storage::store_for(ctx, loc, &pipeline.spec.storage)?;
    let url = if loc.glob.is_some() { loc.display() } else { format!("{}/", loc.url().trim_end_matches('/')) };
    let url = if loc.url().ends_with(".parquet") { loc.url() } else { url };
    ctx.register_parquet(PREVIOUS_XREF, &url, ParquetReadOptions::default())
        .await
        .map_err(|e| resolve::ResolveError::Previous { location: loc.display(), message: e.to_string() })?;
    let from_table = ids::high_water(ctx, PREVIOUS_XREF)
        .await
        .map_err(|e| resolve::ResolveError::Previous { location: loc.display(), message: e.to_string() })?;
    let from_manifest = manifest.map_or(0, |m| m.customer_id_high_water);
    Ok(from_table.max(from_manifest))
}

/// Runs a pipeline end to end and publishes its output. Returns the manifest.
pub async fn run(pipeline: &Pipeline, options: &RunOptions) -> Result<Manifest, Error> {
    let started = chrono::Utc::now();
    let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
    let output = Location::parse(&pipeline.spec.output, &pipeline.base_dir)?;
    let scratch_root = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch_dir =
        Scratch::create(&scratch_root).map_err(|e| Error::Other(format!("{}: {e}", scratch_root.display())))?;
    let ctx = match &options.engine {
        engine::Engine::Embedded => start_session(pipeline, options, scratch_dir.path())?,
        engine::Engine::Ballista { scheduler } => {
            let config = crate::distributed::client_config();
            let config = engine::configure(config, &engine_options(pipeline, options)?)
                .map_err(Error::engine("engine settings"))?;
            crate::distributed::connect(scheduler, config).await?
        }
    };
    let mut storage_spec = pipeline.spec.storage.clone();
    if options.break_lock {
        storage_spec.lock_timeout_s = 0;
    }
    let staging = Staging::new(&ctx, &output, &storage_spec, &run_id).await?;
    let result = run_stages(&ctx, pipeline, options, &run_id, started, &output, &staging, scratch_dir.path()).await;
    match result {
        Ok(manifest) => {
            staging.commit(&manifest).await?;
            tracing::info!(run_id = run_id.as_str(), output = %output, "published");
            Ok(manifest)
        }
        Err(e) => {
            staging.abandon().await;
            if e.is_decoding() {
                return Err(extract::find_unreadable_parquet(&ctx, pipeline).await.map_or(e, Error::from));
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_stages(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    options: &RunOptions,
    run_id: &str,
    started: chrono::DateTime<chrono::Utc>,
    output: &Location,
    staging: &Staging,
    scratch: &Path,
) -> Result<Manifest, Error> {
    let spec = &pipeline.spec;
    // Models and outputs are checked before any data is read: a typo fails in a second.
    let models = enrich::load_models(pipeline, &pipeline.vars)?;
    check_outputs(pipeline, &models)?;
    resolve::probabilistic::read_pinned(pipeline)?;
    let mut timer = Progress::new(options.progress);

    timer.stage("extract");
    let extracted = extract::extract_all(ctx, pipeline, &Scratch { dir: scratch.to_path_buf() }, options.limit).await?;
    let present: Vec<String> = extracted.iter().map(|e| e.name.clone()).collect();
    let files: usize = extracted.iter().map(|e| e.files.len()).sum();
    let bytes: u64 = extracted.iter().flat_map(|e| &e.files).map(|f| f.size).sum();
    timer.note(&format!("{} sources, {files} files, {} bytes", extracted.len(), thousands(bytes)));

    timer.stage("stage");
    let counts = stage_records(ctx, pipeline, &present, scratch).await?;
    let mut extracted = extracted;
    for e in extracted.iter_mut() {
        for (key, reason) in counts.set_aside.get(&e.name).into_iter().flatten() {
            e.set_aside.push(extract::BadRow {
                file: e.location.display(),
                line: 0,
                reason: reason.clone(),
                record: format!("{}={key}", pipeline.spec.sources[&e.name].key.as_deref().unwrap_or("key")),
            });
        }
    }

    timer.stage("resolve");
    let (previous, published) = previous_location(ctx, pipeline, options, output).await?;
    let high_water = register_previous(ctx, pipeline, previous.as_ref(), published.as_ref()).await?;
    timer.note(&format!("{} identity records", thousands(count_rows(ctx, IDENTITY_RECORDS).await?)));
    let match_summary = resolve::resolve(ctx, pipeline, scratch).await?;
    timer.note(&format!(
        "{} records into {} customers",
        thousands(match_summary.records),
        thousands(match_summary.customers)
    ));
    let customer_ids =
        ctx.sql(&ids::customer_ids_sql(high_water)).await.map_err(Error::engine("assigning customer ids"))?;
    materialize(ctx, CUSTOMER_IDS, customer_ids, scratch).await?;
    let xref = ctx.sql(&ids::xref_sql()).await.map_err(Error::engine("customer crosswalk"))?;
    materialize(ctx, CUSTOMER_XREF, xref, scratch).await?;
    let changes = ctx.sql(&ids::changes_sql(high_water)).await.map_err(Error::engine("customer changes"))?;
    materialize(ctx, CUSTOMER_CHANGES, changes, scratch).await?;
    let assigned = ids::high_water(ctx, CUSTOMER_XREF).await.map_err(Error::engine("ids"))?;
    let new_high_water = high_water.max(assigned);

    timer.stage("golden");
    golden::build_customers(ctx, pipeline, scratch, match_summary.passes).await?;
    let read_by_models = models.iter().flat_map(|m| m.reads.iter().map(String::as_str)).collect();
    golden::register_source_views(ctx, pipeline, &present, &read_by_models, scratch).await?;
    resolve::write_match_edges(ctx, MATCH_EDGES, match_summary.passes, scratch).await?;

    timer.stage("enrich");
    let model_batches = enrich::run_models(ctx, &models, scratch).await?;
    timer.note(&format!("{} models", models.len()));

    timer.stage("check");
    let tests = data_tests(pipeline);
    let outcomes = check::run_tests(ctx, &tests).await?;
    if outcomes.iter().any(|o| !o.passed) {
        return Err(Error::DataTests(outcomes));
    }

    timer.stage("publish");
    let mut tables = TableInfos::new();
    // The declared outputs, then the golden tables every run publishes.
    let mut outputs: Vec<(String, Vec<String>)> =
        spec.outputs.iter().map(|(t, o)| (t.clone(), o.partition_by.clone())).collect();
    for t in GOLDEN_TABLES.iter().filter(|t| !spec.outputs.contains_key(**t)) {
        outputs.push((t.to_string(), Vec::new()));
    }
    for (table, partition_by) in outputs {
        let df = ctx.table(table.as_str()).await.map_err(Error::engine(format!("output `{table}`")))?;
        let info = staging.write_table(&table, df, &partition_by).await?;
        timer.note(&format!("{table}: {} rows", thousands(info.rows)));
        tables.insert(table, info);
    }
    write_rejected(ctx, staging, &extracted).await?;
    let model = if match_summary.models.is_empty() {
        None
    } else {
        let json = serde_json::to_vec_pretty(&match_summary.models).expect("models serialise");
        staging.write_file(crate::publish::MODEL_FILE, json).await?;
        Some(crate::publish::MODEL_FILE.to_string())
    };
    timer.finish();

    let inputs = extracted
        .iter()
        .map(|e: &ExtractedSource| {
            (
                e.name.clone(),
                InputInfo {
                    location: redact(&e.location.display()),
                    files: e.files.clone(),
                    rows: e.rows,
                    rejected_rows: e.rejected.len(),
                    set_aside_rows: e.set_aside.len(),
                    repeated_keys: counts.repeated.get(&e.name).copied().unwrap_or(0),
                },
            )
        })
        .collect();
    let sql_files: Vec<(String, String)> =
        models.iter().map(|m| (m.path.display().to_string(), m.sql.clone())).collect();
    Ok(Manifest {
        run_id: run_id.to_string(),
        pipeline: spec.name.clone(),
        klantbeeld_version: env!("CARGO_PKG_VERSION").to_string(),
        datafusion_version: datafusion::DATAFUSION_VERSION.to_string(),
        started_at: started.to_rfc3339(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        vars: redact_vars(&pipeline.used_vars),
        config_hash: pipeline.config_hash(&sql_files),
        previous_crosswalk: previous.map(|p| redact(&p.display())),
        customer_id_high_water: new_high_water,
        inputs,
        tables,
        match_summary,
        model,
        models: models.iter().map(|m| m.name.clone()).collect(),
        model_batches,
        tests: outcomes,
        stages: std::mem::take(&mut timer.timings),
    })
}

/// Runs the data tests against the last published output (`klantbeeld test`). Tests of
/// tables that are not published (models that are not outputs) can only run inside `run`;
/// they are returned apart.
pub async fn test_published(pipeline: &Pipeline) -> Result<(Vec<check::TestOutcome>, Vec<String>), Error> {
    let output = Location::parse(&pipeline.spec.output, &pipeline.base_dir)?;
    let scratch = tempfile::tempdir().map_err(|e| Error::Other(e.to_string()))?;
    let ctx = start_session(pipeline, &RunOptions::default(), scratch.path())?;
    let store = storage::store_for(&ctx, &output, &pipeline.spec.storage)?;
    let manifest = crate::publish::published_manifest(store.as_ref(), &output)
        .await
        .ok_or_else(|| Error::Usage(format!("{}: no published run (no _SUCCESS)", output.display())))?;
    let published: Vec<String> = manifest.tables().map(String::from).collect();
    let mut runnable = Vec::new();
    let mut not_published = Vec::new();
    for (table, tests) in data_tests(pipeline) {
        if published.contains(&table) {
            let url = format!("{}/", output.child(&table).url());
            ctx.register_parquet(table.as_str(), &url, ParquetReadOptions::default())
                .await
                .map_err(Error::engine(format!("reading published `{table}`")))?;
            runnable.push((table, tests));
        } else {
            not_published.push(table);
        }
    }
    Ok((check::run_tests(&ctx, &runnable).await?, not_published))
}

/// Every declared output must be a golden table or a model.
fn check_outputs(pipeline: &Pipeline, models: &[enrich::Model]) -> Result<(), Error> {
    let known: Vec<&str> = GOLDEN_TABLES.iter().copied().chain(models.iter().map(|m| m.name.as_str())).collect();
    for table in pipeline.spec.outputs.keys() {
        if !known.contains(&table.as_str()) {
            let at = crate::config::locate_key(&pipeline.text, &["outputs", table]).unwrap_or((1, 1));
            return Err(Error::Config(crate::config::ConfigError::at(
                &pipeline.file,
                at,
                format!(
                    "key `outputs.{table}`: no golden table or model is called `{table}`{}",
                    crate::config::suggest(table, known.iter().copied())
                ),
            )));
        }
    }
    Ok(())
}

/// Rows of a registered table.
async fn count_rows(ctx: &SessionContext, table: &str) -> Result<u64, Error> {
    let df = ctx.table(table).await.map_err(Error::engine(format!("counting `{table}`")))?;
    Ok(df.count().await.map_err(Error::engine(format!("counting `{table}`")))? as u64)
}

/// Every data test of the pipeline: those of the outputs, then those of the models.
pub fn data_tests(pipeline: &Pipeline) -> Vec<(String, Vec<TestSpec>)> {
    let spec = &pipeline.spec;
    let mut tests: Vec<(String, Vec<TestSpec>)> =
        spec.outputs.iter().filter(|(_, o)| !o.tests.is_empty()).map(|(t, o)| (t.clone(), o.tests.clone())).collect();
    if let Some(m) = &spec.models {
        tests.extend(m.tests.iter().map(|(t, v)| (t.clone(), v.clone())));
    }
    tests
}

/// The engine session of a run (and of `plan`, `test` and `explain`), with the YAML's
/// `engine` options, spilling under `scratch`.
pub fn start_session(pipeline: &Pipeline, options: &RunOptions, scratch: &Path) -> Result<SessionContext, Error> {
    let engine_options = engine_options(pipeline, options)?;
    let spill = scratch.join("spill");
    std::fs::create_dir_all(&spill).map_err(|e| Error::Other(format!("{}: {e}", spill.display())))?;
    engine::session(&engine_options, &spill).map_err(Error::engine("starting the engine"))
}

/// The YAML's `engine` section, with the run's memory limit over it.
fn engine_options(pipeline: &Pipeline, options: &RunOptions) -> Result<EngineOptions, Error> {
    let spec = &pipeline.spec;
    Ok(EngineOptions {
        memory_limit: match options.memory_limit {
            Some(n) => Some(n),
            None => spec.engine.memory_limit.as_deref().map(engine::parse_size).transpose().map_err(Error::Usage)?,
        },
        target_partitions: spec.engine.target_partitions,
        batch_size: spec.engine.batch_size,
        settings: spec.engine.settings(),
    })
}

/// What staging left out, per source.
#[derive(Debug, Default)]
pub struct StagedCounts {
    /// Rows dropped because their record key was repeated (the latest is kept).
    pub repeated: BTreeMap<String, u64>,
    /// Records set aside (an overlong value), with the reason, by source.
    pub set_aside: BTreeMap<String, Vec<(String, String)>>,
}

/// Stages the identity sources present into `identity_records` (materialised). Returns,
/// per source, the rows dropped as repeated keys and the records set aside.
pub async fn stage_records(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    present: &[String],
    scratch: &Path,
) -> Result<StagedCounts, Error> {
    use datafusion::prelude::col;
    let staged = stage::stage_all(ctx, pipeline, present, scratch).await?;
    materialize(ctx, STAGED_RECORDS, staged, scratch).await?;
    let all = ctx.table(STAGED_RECORDS).await.map_err(Error::engine("staged records"))?;
    let set_aside = set_aside_records(all.clone()).await?;
    let kept = all
        .filter(col(stage::SET_ASIDE).is_null())
        .and_then(|df| df.drop_columns(&[stage::SET_ASIDE]))
        .map_err(Error::engine("staged records"))?;
    let _ = ctx.deregister_table(KEPT_RECORDS);
    ctx.register_table(KEPT_RECORDS, kept.into_view()).map_err(Error::engine("staged records"))?;
    let repeated = repeated_keys(ctx, KEPT_RECORDS).await?;
    let mut records = ctx.table(KEPT_RECORDS).await.map_err(Error::engine("staged records"))?;
    if !repeated.is_empty() {
        for (source, n) in &repeated {
            tracing::warn!(
                source = source.as_str(),
                rows = n,
                "keys repeated in the dump; the most recent row of each is kept"
            );
        }
        records = stage::latest_per_key(records)?;
    }
    materialize(ctx, IDENTITY_RECORDS, stage::with_record_numbers(records).await?, scratch).await?;
    Ok(StagedCounts { repeated, set_aside })
}

/// The records staging set aside, as (record key, reason) per source; each is logged.
async fn set_aside_records(all: DataFrame) -> Result<BTreeMap<String, Vec<(String, String)>>, Error> {
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::prelude::col;
    let batches = all
        .filter(col(stage::SET_ASIDE).is_not_null())
        .and_then(|df| df.select(vec![col("source_system"), col("source_record_id"), col(stage::SET_ASIDE)]))
        .map_err(Error::engine("set-aside records"))?
        .collect()
        .await
        .map_err(Error::engine("set-aside records"))?;
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            let get = |c: usize| array_value_to_string(b.column(c), i).unwrap_or_default();
            let (source, key, reason) = (get(0), get(1), get(2));
            tracing::warn!(source = source.as_str(), record = key.as_str(), "record set aside: {reason}");
            out.entry(source).or_default().push((key, reason));
        }
    }
    Ok(out)
}

/// Rows beyond the first of each repeated record key, per source.
async fn repeated_keys(ctx: &SessionContext, table: &str) -> Result<BTreeMap<String, u64>, Error> {
    let batches = ctx
        .sql(&format!(
            "SELECT source_system, CAST(sum(n - 1) AS BIGINT) FROM \
             (SELECT source_system, source_record_id, count(*) AS n FROM {table} GROUP BY source_system, source_record_id \
              HAVING count(*) > 1) GROUP BY source_system"
        ))
        .await
        .map_err(Error::engine("checking keys"))?
        .collect()
        .await
        .map_err(Error::engine("checking keys"))?;
    let mut out = BTreeMap::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            let source = datafusion::arrow::util::display::array_value_to_string(b.column(0), i).unwrap_or_default();
            let n = datafusion::arrow::util::display::array_value_to_string(b.column(1), i).unwrap_or_default();
            out.insert(source, n.parse().unwrap_or(0));
        }
    }
    Ok(out)
}

/// Extracts and stages a pipeline's inputs without resolving or publishing: what
/// `explain` needs to compare two records.
pub async fn staged_session(pipeline: &Pipeline, scratch: &Path) -> Result<SessionContext, Error> {
    let options = RunOptions::default();
    let ctx = start_session(pipeline, &options, scratch)?;
    let extracted = extract::extract_all(&ctx, pipeline, &Scratch { dir: scratch.to_path_buf() }, None).await?;
    let present: Vec<String> = extracted.iter().map(|e| e.name.clone()).collect();
    stage_records(&ctx, pipeline, &present, scratch).await?;
    Ok(ctx)
}

/// Estimates the weights of the pipeline's probabilistic rules from its inputs, as a run
/// would, without resolving or publishing (`klantbeeld estimate`): the model file that
/// `resolve.model` pins.
pub async fn estimate(pipeline: &Pipeline) -> Result<Vec<resolve::probabilistic::RuleModel>, Error> {
    let rules: Vec<&crate::config::ProbabilisticRule> = pipeline
        .spec
        .resolve
        .rules
        .iter()
        .filter_map(|r| match r {
            crate::config::RuleSpec::Probabilistic(p) => Some(p),
            _ => None,
        })
        .collect();
    if rules.is_empty() {
        return Err(Error::Usage("the pipeline has no probabilistic rule: there are no weights to estimate".into()));
    }
    let scratch = tempfile::tempdir().map_err(|e| Error::Other(format!("scratch folder: {e}")))?;
    let ctx = staged_session(pipeline, scratch.path()).await?;
    let mut models = Vec::new();
    for rule in rules {
        models.push(resolve::probabilistic::estimate(&ctx, rule).await?);
    }
    Ok(models)
}

/// Rejected rows of each source under `_rejected/<source>/rejected.parquet`.
async fn write_rejected(ctx: &SessionContext, staging: &Staging, extracted: &[ExtractedSource]) -> Result<(), Error> {
    use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    for e in extracted.iter().filter(|e| !e.rejected.is_empty() || !e.set_aside.is_empty()) {
        let rows: Vec<&extract::BadRow> = e.rejected.rows.iter().chain(&e.set_aside.rows).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("file", DataType::Utf8, false),
            Field::new("line", DataType::UInt64, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("record", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(rows.iter().map(|r| Some(r.file.as_str())).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| Some(r.line)).collect::<UInt64Array>()),
                Arc::new(rows.iter().map(|r| Some(r.reason.as_str())).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| Some(r.record.as_str())).collect::<StringArray>()),
            ],
        )
        .map_err(|err| Error::Other(err.to_string()))?;
        let df = ctx.read_batch(batch).map_err(Error::engine("rejected rows"))?;
        staging.write_table(&format!("_rejected/{}", e.name), df, &[]).await?;
    }
    Ok(())
}
