//! One pipeline run, stage after stage: extract, stage, resolve, golden, enrich, check,
//! publish. Every intermediate result lives in a scratch folder that is removed
//! afterwards; nothing is visible at the output until the final swap.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::check;
use crate::config::Pipeline;
use crate::engine::{self, EngineOptions};
use crate::enrich;
use crate::extract::{self, ExtractedSource, Scratch};
use crate::golden;
use crate::manifest::{InputInfo, Manifest};
use crate::progress::{Progress, thousands};
use crate::publish::{self, Staging, TableInfos};
use crate::resolve::{self, MatchSummary, ids};
use crate::stage::{self, StagedCounts};
use crate::storage::{Location, redact};
use crate::tables::{GOLDEN_TABLES, IDENTITY_RECORDS, MATCH_EDGES};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// Options of one run beyond the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the YAML's `engine.memory_limit`.
    pub memory_limit: Option<crate::config::MemoryLimit>,
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

/// Runs a pipeline end to end and publishes its output. Returns the manifest.
pub async fn run(pipeline: &Pipeline, options: &RunOptions) -> Result<Manifest, Error> {
    let started = chrono::Utc::now();
    let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
    let output = Location::parse(&pipeline.spec.output, &pipeline.base_dir)?;
    let scratch_root = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch =
        Scratch::create(&scratch_root).map_err(|e| Error::Other(format!("{}: {e}", scratch_root.display())))?;
    let ctx = match &options.engine {
        engine::Engine::Embedded => {
            let ctx = start_session(pipeline, options, scratch.path())?;
            // The unpartitioned outputs are written once, as published (executors of a
            // cluster write where this process may not copy from).
            let as_written = published_tables(pipeline).into_iter().filter(|(_, by)| by.is_empty());
            engine::publish_as_written(&ctx, as_written.map(|(t, _)| t.to_string()));
            ctx
        }
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
    let run = Run {
        ctx: &ctx,
        pipeline,
        options,
        id: &run_id,
        started,
        output: &output,
        scratch: scratch.path(),
        timer: Progress::new(options.progress),
    };
    match run.stages(&staging).await {
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

/// What the stages of one run share.
struct Run<'a> {
    ctx: &'a SessionContext,
    pipeline: &'a Pipeline,
    options: &'a RunOptions,
    id: &'a str,
    started: chrono::DateTime<chrono::Utc>,
    output: &'a Location,
    scratch: &'a Path,
    timer: Progress,
}

/// What resolution made: the matching summary, and the ids' crosswalks.
struct Resolved {
    summary: MatchSummary,
    previous: Option<Location>,
    high_water: u64,
}

impl Run<'_> {
    /// The stages, in order; the manifest of what they made.
    async fn stages(mut self, staging: &Staging) -> Result<Manifest, Error> {
        // Models and outputs are checked before any data is read: a typo fails in a second.
        let models = enrich::load_models(self.pipeline, &self.pipeline.vars)?;
        publish::check_outputs(self.pipeline, models.iter().map(|m| m.name.as_str()))?;
        resolve::probabilistic::read_pinned(self.pipeline)?;

        let mut extracted = self.extract().await?;
        let counts = self.stage(&mut extracted).await?;
        let resolved = self.resolve().await?;
        self.golden(&models, &extracted, &resolved.summary).await?;
        self.timer.stage("enrich");
        let model_batches = enrich::run_models(self.ctx, &models, self.scratch).await?;
        self.timer.note(&format!("{} models", models.len()));
        self.timer.stage("check");
        let tests = check::run_tests(self.ctx, &check::data_tests(self.pipeline)).await?;
        if tests.iter().any(|o| !o.passed) {
            return Err(Error::DataTests(tests));
        }
        let tables = self.publish(staging, &extracted, &resolved.summary).await?;
        self.timer.finish();

        let spec = &self.pipeline.spec;
        let sql_files: Vec<(String, String)> =
            models.iter().map(|m| (m.path.display().to_string(), m.sql.clone())).collect();
        Ok(Manifest {
            run_id: self.id.to_string(),
            pipeline: spec.name.clone(),
            klantbeeld_version: env!("CARGO_PKG_VERSION").to_string(),
            datafusion_version: datafusion::DATAFUSION_VERSION.to_string(),
            started_at: self.started.to_rfc3339(),
            finished_at: chrono::Utc::now().to_rfc3339(),
            vars: redact_vars(&self.pipeline.used_vars),
            config_hash: self.pipeline.config_hash(&sql_files),
            previous_crosswalk: resolved.previous.map(|p| redact(&p.display())),
            customer_id_high_water: resolved.high_water,
            inputs: input_infos(&extracted, &counts),
            tables,
            model: (!resolved.summary.models.is_empty()).then(|| publish::MODEL_FILE.to_string()),
            match_summary: resolved.summary,
            models: models.iter().map(|m| m.name.clone()).collect(),
            model_batches,
            tests,
            stages: std::mem::take(&mut self.timer.timings),
        })
    }

    /// Reads and checks every source into `raw_<source>`.
    async fn extract(&mut self) -> Result<Vec<ExtractedSource>, Error> {
        self.timer.stage("extract");
        let scratch = Scratch { dir: self.scratch.to_path_buf() };
        let extracted = extract::extract_all(self.ctx, self.pipeline, &scratch, self.options.limit).await?;
        let files: usize = extracted.iter().map(|e| e.files.len()).sum();
        let bytes: u64 = extracted.iter().flat_map(|e| &e.files).map(|f| f.size).sum();
        self.timer.note(&format!("{} sources, {files} files, {} bytes", extracted.len(), thousands(bytes)));
        Ok(extracted)
    }

    /// Normalises the identity sources into `identity_records`; what it sets aside joins
    /// the sources' bad rows.
    async fn stage(&mut self, extracted: &mut [ExtractedSource]) -> Result<StagedCounts, Error> {
        self.timer.stage("stage");
        let present = present(extracted);
        let counts = stage::stage_records(self.ctx, self.pipeline, &present, self.scratch).await?;
        counts.add_set_aside_to(self.pipeline, extracted);
        Ok(counts)
    }

    /// Matches and clusters the records, and gives each cluster its customer id.
    async fn resolve(&mut self) -> Result<Resolved, Error> {
        self.timer.stage("resolve");
        let previous =
            ids::register_previous(self.ctx, self.pipeline, self.options.previous.as_deref(), self.output).await?;
        let records = self.ctx.table(IDENTITY_RECORDS).await.map_err(Error::engine("identity records"))?;
        let records = records.count().await.map_err(Error::engine("identity records"))?;
        self.timer.note(&format!("{} identity records", thousands(records as u64)));
        let summary = resolve::resolve(self.ctx, self.pipeline, self.scratch).await?;
        self.timer.note(&format!(
            "{} records into {} customers",
            thousands(summary.records),
            thousands(summary.customers)
        ));
        let high_water = ids::assign(self.ctx, previous.high_water, self.scratch).await?;
        Ok(Resolved { summary, previous: previous.location, high_water })
    }

    /// The golden tables, the views of the fact sources the models read, the match edges.
    async fn golden(
        &mut self,
        models: &[enrich::Model],
        extracted: &[ExtractedSource],
        summary: &MatchSummary,
    ) -> Result<(), Error> {
        self.timer.stage("golden");
        golden::build_customers(self.ctx, self.pipeline, self.scratch, summary.records).await?;
        let views = golden::source_views(self.ctx, self.pipeline, &present(extracted)).await?;
        let read = sources_read(self.ctx, self.pipeline, models, &views).await;
        golden::register_source_views(self.ctx, views, &read, self.scratch).await?;
        let mut lap = crate::progress::Lap::start("golden");
        resolve::write_match_edges(self.ctx, MATCH_EDGES, summary.records, self.scratch).await?;
        lap.done(MATCH_EDGES);
        Ok(())
    }

    /// Writes the declared outputs, then the golden tables every run publishes, the
    /// rejected rows and the fitted match model into the staging folder.
    async fn publish(
        &mut self,
        staging: &Staging,
        extracted: &[ExtractedSource],
        summary: &MatchSummary,
    ) -> Result<TableInfos, Error> {
        self.timer.stage("publish");
        let mut tables = TableInfos::new();
        for (table, partition_by) in published_tables(self.pipeline) {
            let df = self.ctx.table(table).await.map_err(Error::engine(format!("output `{table}`")))?;
            let written = engine::published_files(self.ctx, table);
            let info = staging.write_table(table, df, partition_by, written.as_deref()).await?;
            self.timer.note(&format!("{table}: {} rows", thousands(info.rows)));
            tables.insert(table.to_string(), info);
        }
        staging.write_rejected(self.ctx, extracted).await?;
        if !summary.models.is_empty() {
            let json = serde_json::to_vec_pretty(&summary.models).expect("models serialise");
            staging.write_file(publish::MODEL_FILE, json).await?;
        }
        Ok(tables)
    }
}

/// The tables a run publishes, with the columns each is partitioned by: the declared
/// outputs, then the golden tables every run publishes.
fn published_tables(pipeline: &Pipeline) -> Vec<(&str, &[String])> {
    let spec = &pipeline.spec;
    let mut outputs: Vec<(&str, &[String])> =
        spec.outputs.iter().map(|(t, o)| (t.as_str(), o.partition_by.as_slice())).collect();
    outputs.extend(GOLDEN_TABLES.iter().filter(|t| !spec.outputs.contains_key(**t)).map(|t| (*t, &[][..])));
    outputs
}

/// The sources the models read, with the columns they read. A source that a data test
/// names keeps every column, as do all when the models' reads cannot be told (a model that
/// does not plan: its own error comes, with its file, when it runs).
async fn sources_read(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    models: &[enrich::Model],
    views: &[(String, datafusion::prelude::DataFrame)],
) -> BTreeMap<String, BTreeSet<String>> {
    let schemas: Vec<_> = views.iter().map(|(name, df)| (name.clone(), df.schema().inner().clone())).collect();
    let every_column = |name: &str| -> BTreeSet<String> {
        let schema = &schemas.iter().find(|(n, _)| n == name).expect("a view's schema").1;
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let mut read = enrich::columns_read(ctx, models, &schemas).await.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "the models' columns could not be told; their sources are kept whole");
        schemas
            .iter()
            .filter(|(name, _)| models.iter().any(|m| m.reads.contains(name)))
            .map(|(name, _)| (name.clone(), every_column(name)))
            .collect()
    });
    let tested: BTreeSet<String> = check::data_tests(pipeline)
        .into_iter()
        .flat_map(|(table, tests)| {
            let to = tests.into_iter().filter_map(|t| match t {
                crate::config::TestSpec::Relationships { to, .. } => Some(to),
                _ => None,
            });
            std::iter::once(table).chain(to).collect::<Vec<_>>()
        })
        .collect();
    for (name, columns) in read.iter_mut() {
        if tested.contains(name) {
            *columns = every_column(name);
        }
    }
    read
}

/// The sources that have data in this run.
fn present(extracted: &[ExtractedSource]) -> Vec<String> {
    extracted.iter().map(|e| e.name.clone()).collect()
}

/// What the manifest says about each input.
fn input_infos(extracted: &[ExtractedSource], counts: &StagedCounts) -> BTreeMap<String, InputInfo> {
    extracted
        .iter()
        .map(|e| {
            let info = InputInfo {
                location: redact(&e.location.display()),
                files: e.files.clone(),
                rows: e.rows,
                rejected_rows: e.rejected.len(),
                set_aside_rows: e.set_aside.len(),
                repeated_keys: counts.repeated.get(&e.name).copied().unwrap_or(0),
            };
            (e.name.clone(), info)
        })
        .collect()
}

/// Runs the data tests against the last published output (`klantbeeld test`). Tests of
/// tables that are not published (models that are not outputs) can only run inside `run`;
/// they are returned apart.
pub async fn test_published(pipeline: &Pipeline) -> Result<(Vec<check::TestOutcome>, Vec<String>), Error> {
    let output = Location::parse(&pipeline.spec.output, &pipeline.base_dir)?;
    let scratch = tempfile::tempdir().map_err(|e| Error::Other(e.to_string()))?;
    let ctx = start_session(pipeline, &RunOptions::default(), scratch.path())?;
    let store = crate::storage::store_for(&ctx, &output, &pipeline.spec.storage)?;
    let manifest = publish::published_manifest(store.as_ref(), &output)
        .await
        .ok_or_else(|| Error::Usage(format!("{}: no published run (no _SUCCESS)", output.display())))?;
    let published: Vec<String> = manifest.tables().map(String::from).collect();
    let mut runnable = Vec::new();
    let mut not_published = Vec::new();
    for (table, tests) in check::data_tests(pipeline) {
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
        memory_limit: Some(options.memory_limit.unwrap_or(spec.engine.memory_limit).bytes()),
        target_partitions: spec.engine.target_partitions,
        batch_size: spec.engine.batch_size,
        settings: spec.engine.settings(),
    })
}

/// Extracts and stages a pipeline's inputs without resolving or publishing: what
/// `explain` needs to compare two records.
pub async fn staged_session(pipeline: &Pipeline, scratch: &Path) -> Result<SessionContext, Error> {
    let options = RunOptions::default();
    let ctx = start_session(pipeline, &options, scratch)?;
    let extracted = extract::extract_all(&ctx, pipeline, &Scratch { dir: scratch.to_path_buf() }, None).await?;
    stage::stage_records(&ctx, pipeline, &present(&extracted), scratch).await?;
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
    for (i, rule) in rules.into_iter().enumerate() {
        let (records, dir) =
            (resolve::probabilistic::rule_records(rule), scratch.path().join(format!("block_sizes_{i}")));
        let engine = || Error::engine(format!("rule `{}`", rule.name));
        resolve::rules::register_block_sizes(&ctx, &records, &rule.blocking, &dir).await.map_err(engine())?;
        models.push(resolve::probabilistic::estimate(&ctx, rule).await?);
        resolve::rules::release_block_sizes(&ctx, &rule.blocking).map_err(engine())?;
    }
    Ok(models)
}
