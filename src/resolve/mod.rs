//! Resolve: rules make candidate edges between identity records (SQL), clustering joins
//! them under guardrails (union-find in Rust), and stable customer ids are assigned
//! against the previous crosswalk (SQL).

mod cluster;
pub mod ids;
mod lookup;
pub mod names;
pub mod probabilistic;
pub(crate) mod rules;

pub use cluster::{Clusters, Decision, RecordAttrs, Refusal, Weighing};

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Date32Array, Float64Array, RecordBatch, StringArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::config::{Pipeline, ProbabilisticRule, RuleSpec};
use crate::stage::external_id_names;
use crate::tables::{CLUSTERED_RECORDS, EDGE_DECISIONS, EDGES_WITH_A, IDENTITY_RECORDS, RECORD_CLUSTERS};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("rule `{rule}`: {source}")]
    Rule { rule: String, source: datafusion::error::DataFusionError },
    #[error("resolve: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
    #[error("resolve: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("resolve: writing {path}: {source}")]
    Write { path: PathBuf, source: datafusion::parquet::errors::ParquetError },
    #[error("resolve: {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("resolve: previous crosswalk {location}: {message}")]
    Previous { location: String, message: String },
    /// The pinned model (`resolve.model`) cannot be read or does not fit the rules.
    #[error("resolve.model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl ResolveError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        match self {
            ResolveError::Rule { .. } | ResolveError::Model { .. } => crate::ExitClass::Config,
            ResolveError::Storage(e) => e.exit_class(),
            _ => crate::ExitClass::Other,
        }
    }
}

/// An identifier value a guardrail kept from being evidence.
#[derive(Debug, Clone, Serialize)]
pub struct DroppedValue {
    pub value: String,
    pub records: i64,
    pub people: i64,
}

/// What one rule did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleSummary {
    pub rule: String,
    pub candidate_edges: u64,
    pub merged: u64,
    pub already_joined: u64,
    pub refused: BTreeMap<String, u64>,
    /// Merges whose evidence outweighed a conflict between the two clusters (probabilistic
    /// rules), by the conflict.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outweighed: BTreeMap<String, u64>,
    /// Identifier values (or blocks) left out by the rule's guardrails.
    pub dropped_values: u64,
    pub dropped_records: u64,
    pub dropped_examples: Vec<DroppedValue>,
    /// Probabilistic rules: the pairs each blocking rule makes, by its key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked_pairs: BTreeMap<String, u64>,
}

/// The match summary the manifest carries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MatchSummary {
    pub records: u64,
    pub customers: u64,
    /// Share of records that were joined with at least one other record.
    pub merged_record_share: f64,
    /// Passes the rules' joins ran in (see `resolve.passes`).
    pub passes: usize,
    pub rules: Vec<RuleSummary>,
    /// Cluster size -> number of customers with that many records.
    pub cluster_sizes: BTreeMap<u32, u64>,
    /// Pairs of first names learned to be one person's (see `resolve::names`).
    pub learned_first_name_pairs: usize,
    /// The fitted models of the probabilistic rules (published as `_model.json`).
    #[serde(skip)]
    pub models: Vec<probabilistic::RuleModel>,
}

fn edge_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rid_a", DataType::UInt32, false),
        Field::new("rid_b", DataType::UInt32, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("score", DataType::Float64, true),
        Field::new("detail", DataType::Utf8, true),
        Field::new("decision", DataType::Utf8, false),
    ]))
}

fn rule_error(rule: &str) -> impl Fn(datafusion::error::DataFusionError) -> ResolveError + '_ {
    move |source| ResolveError::Rule { rule: rule.into(), source }
}

/// Reads what clustering checks per record, in rid order.
async fn load_records(ctx: &SessionContext, clusters: &mut Clusters) -> Result<(), ResolveError> {
    let df = ctx.sql(&format!("SELECT rid, first_name, birth_date FROM {IDENTITY_RECORDS} ORDER BY rid")).await?;
    let mut stream = df.execute_stream().await?;
    let mut interner = HashMap::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let rid = batch.column(0).as_primitive::<UInt32Type>();
        let names = datafusion::arrow::compute::cast(batch.column(1), &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let dates = batch
            .column(2)
            .as_any()
            .downcast_ref::<Date32Array>()
            .cloned()
            .unwrap_or_else(|| Date32Array::new_null(batch.num_rows()));
        for i in 0..batch.num_rows() {
            debug_assert_eq!(rid.value(i) as usize, clusters.len());
            let birth_date = (!dates.is_null(i)).then(|| dates.value_as_date(i)).flatten();
            let first_name = (!names.is_null(i)).then(|| names.value(i));
            clusters.push(RecordAttrs { first_name, birth_date }, &mut interner);
        }
    }
    Ok(())
}

/// Runs every rule, clusters, and registers `clustered_records` and `edge_decisions`.
pub async fn resolve(ctx: &SessionContext, pipeline: &Pipeline, work_dir: &Path) -> Result<MatchSummary, ResolveError> {
    let spec = &pipeline.spec.resolve;
    let mut lap = crate::progress::Lap::start("resolve");
    let learned = names::learn(ctx, work_dir).await?;
    lap.done("learn first names");
    if !learned.is_empty() {
        tracing::info!(
            pairs = learned.len(),
            "first names this data writes for one person (learned from shared e-mail and mobile)"
        );
    }
    let learned_first_name_pairs = learned.len();
    let mut clusters = Clusters::new(spec.guardrails.max_cluster_size, &spec.guardrails.conflicting, learned.clone());
    load_records(ctx, &mut clusters).await?;
    lap.done("load records");
    let edges_path = work_dir.join("edge_decisions.parquet");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ResolveError::Io { path: path.clone(), source }
    };
    let file = File::create(&edges_path).map_err(io(&edges_path))?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ResolveError::Write { path: path.clone(), source }
    };
    let writer = ArrowWriter::try_new(file, edge_schema(), Some(crate::engine::scratch_writer_properties()))
        .map_err(write_err(&edges_path))?;
    let mut writer = DecisionWriter::start(writer, edges_path.clone());
    let external_ids = external_id_names(pipeline);
    let passes = spec.passes.0.unwrap_or_else(|| auto_passes(clusters.len(), ctx));
    if passes > 1 {
        tracing::info!(passes, "rules run in passes to stay within the memory limit");
    }
    let mut summaries = Vec::new();
    let mut models = Vec::new();
    let pinned = probabilistic::read_pinned(pipeline)?;
    for (index, rule) in spec.rules.iter().enumerate() {
        let rule_no = (index + 1) as u16;
        let name = rule.name();
        let mut summary = RuleSummary { rule: name.into(), ..Default::default() };
        let blocks = rules::blocking_of(rule);
        if let Some((records, blocking, _)) = &blocks {
            let dir = work_dir.join(format!("block_sizes_{rule_no}"));
            rules::register_block_sizes(ctx, records, blocking, &dir).await.map_err(rule_error(name))?;
            lap.done(&format!("{name}: block sizes"));
        }
        let fitted = match rule {
            RuleSpec::Probabilistic(r) => {
                let mut model = match &pinned {
                    Some((path, models)) => {
                        tracing::info!(rule = name, model = %path.display(), "weights from the pinned model");
                        probabilistic::pinned_for(path, models, r)?
                    }
                    None => probabilistic::estimate(ctx, r).await?,
                };
                lap.done(&format!("{name}: weights"));
                let reads = |model: &probabilistic::RuleModel, from: &str| {
                    rules::rule_queries(rule, &external_ids, Some((model, from)), &learned)
                        .into_iter()
                        .flat_map(|q| q.inlined(rules::Pass { index: 0, count: passes }))
                        .collect()
                };
                let from = term_frequencies(ctx, r, &mut model, rule_no, work_dir, Some(&reads)).await?;
                Some((model, from))
            }
            _ => None,
        };
        lap.done(&format!("{name}: term frequencies"));
        if let Some((model, _)) = &fitted {
            summary.blocked_pairs = model.blocking.iter().map(|b| (b.key.join("+"), b.pairs)).collect();
        }
        let weighing = match (rule, &fitted) {
            (RuleSpec::Probabilistic(r), Some((model, _))) => Some(model.weighing(r.threshold)),
            _ => None,
        };
        let repeats = matches!(rule, RuleSpec::Fuzzy(_));
        // A deterministic or external-id rule makes each pair once, so its edges are in
        // one order by score and pair alone; the others also sort by the detail text,
        // which a pair found under two keys differs in.
        let unique_pairs = matches!(rule, RuleSpec::Deterministic(_) | RuleSpec::ExternalId(_));
        let queries = rules::rule_queries(rule, &external_ids, fitted.as_ref().map(|(m, f)| (m, f.as_str())), &learned);
        models.extend(fitted.map(|(m, _)| m));
        for (part, queries) in queries.into_iter().enumerate() {
            let prepared = work_dir.join(format!("prepared_{rule_no}_{part}"));
            queries.prepare(ctx, &prepared, passes).await.map_err(rule_error(name))?;
            count_dropped(ctx, name, &queries.dropped, &mut summary).await?;
            lap.done(&format!("{name}: dropped values"));
            // In one pass the edges stream from their query into the decisions; in
            // several, each pass's edges are written first and sorted together after.
            let edges = if passes == 1 {
                ctx.sql(&(queries.edges)(rules::Pass { index: 0, count: 1 })).await.map_err(rule_error(name))?
            } else {
                let dir = work_dir.join(format!("edges_{rule_no}_{part}"));
                write_candidate_edges(ctx, name, &queries, passes, &dir).await?;
                lap.done(&format!("{name}: candidate edges"));
                ctx.read_parquet(format!("{}/", dir.display()), ParquetReadOptions::default())
                    .await
                    .map_err(rule_error(name))?
            };
            // Edges in one order whatever the passes, so that the guardrails decide alike.
            // Only a fuzzy rule repeats an edge (a pair blocked by two keys, scored alike
            // under each).
            let mut order = vec![
                datafusion::prelude::col("score").sort(false, true),
                datafusion::prelude::col("rid_a").sort(true, true),
                datafusion::prelude::col("rid_b").sort(true, true),
            ];
            if !unique_pairs {
                order.push(datafusion::prelude::col("detail").sort(true, true));
            }
            let df = (if repeats { edges.distinct() } else { Ok(edges) })
                .and_then(|df| df.sort(order))
                .map_err(rule_error(name))?;
            if tracing::enabled!(tracing::Level::TRACE) {
                let what = format!("{name}: candidate edges");
                crate::engine::log_analyzed_plan(&what, df.clone()).await.map_err(rule_error(name))?;
            }
            let mut stream = df.execute_stream().await.map_err(rule_error(name))?;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(rule_error(name))?;
                let out = decide(&mut clusters, &batch, name, rule_no, weighing.as_ref(), &mut summary)?;
                writer.write(out)?;
            }
            queries.release(ctx)?;
        }
        if let Some((_, blocking, _)) = &blocks {
            rules::release_block_sizes(ctx, blocking)?;
        }
        lap.done(&format!("{name}: decisions"));
        tracing::info!(rule = name, edges = summary.candidate_edges, merged = summary.merged, "rule applied");
        summaries.push(summary);
    }
    writer.finish()?;
    ctx.register_parquet(EDGE_DECISIONS, edges_path.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
    let arrays = Arc::new(cluster_arrays(&mut clusters, spec));
    let sizes = size_histogram(&arrays.cluster);
    let records = clusters.len() as u64;
    drop(clusters);
    if crate::distributed::is_distributed(ctx) {
        // Executors cannot call into this process: the clusters go to them as a table,
        // joined to the records once.
        let path = work_dir.join("record_clusters.parquet");
        let file = File::create(&path).map_err(io(&path))?;
        arrays.write_parquet(file).map_err(write_err(&path))?;
        ctx.register_parquet(RECORD_CLUSTERS, path.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
        let clustered = format!(
            "SELECT c.cluster_id, c.matched_by, r.* FROM {IDENTITY_RECORDS} r JOIN {RECORD_CLUSTERS} c ON c.rid = r.rid"
        );
        let df = ctx.sql(&clustered).await?;
        crate::engine::materialize(ctx, CLUSTERED_RECORDS, df, work_dir).await?;
    } else {
        // A view: each reader looks the cluster up as it scans the records. Writing the
        // records again with their cluster was 2.4 s of a 1M-person run, and the lookups
        // cost an array index per row read.
        for f in lookup::functions(arrays) {
            ctx.register_udf(f);
        }
        let clustered = format!(
            "SELECT {}(rid) AS cluster_id, {}(rid) AS matched_by, * FROM {IDENTITY_RECORDS}",
            lookup::CLUSTER_OF,
            lookup::MATCHED_BY_OF
        );
        ctx.register_table(CLUSTERED_RECORDS, ctx.sql(&clustered).await?.into_view())?;
    }
    lap.done("clustered records");
    let customers: u64 = sizes.values().sum();
    let merged_records: u64 = sizes.iter().filter(|(s, _)| **s > 1).map(|(s, n)| *s as u64 * n).sum();
    Ok(MatchSummary {
        records,
        customers,
        merged_record_share: if records == 0 { 0.0 } else { merged_records as f64 / records as f64 },
        passes,
        rules: summaries,
        cluster_sizes: sizes,
        learned_first_name_pairs,
        models,
    })
}

/// The edge decisions' Parquet file, encoded on a thread of its own: the decisions are
/// made on one core, in edge order, and encoding their batches on the same core was
/// about a third of that serial time.
struct DecisionWriter {
    batches: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    encoder: Option<std::thread::JoinHandle<Result<(), datafusion::parquet::errors::ParquetError>>>,
    path: PathBuf,
}

impl DecisionWriter {
    fn start(mut writer: ArrowWriter<File>, path: PathBuf) -> Self {
        // A few batches in flight: the decisions wait rather than hold many in memory.
        let (batches, received) = std::sync::mpsc::sync_channel::<RecordBatch>(4);
        let encoder = std::thread::spawn(move || {
            for batch in received {
                writer.write(&batch)?;
            }
            writer.close().map(|_| ())
        });
        DecisionWriter { batches: Some(batches), encoder: Some(encoder), path }
    }

    fn write(&mut self, batch: RecordBatch) -> Result<(), ResolveError> {
        if self.batches.as_ref().is_some_and(|b| b.send(batch).is_ok()) {
            return Ok(());
        }
        // The encoder only stops taking batches when it failed: its error says why.
        self.finish()?;
        Err(ResolveError::Io { path: self.path.clone(), source: std::io::Error::other("the writer stopped early") })
    }

    /// Waits for the file to be complete.
    fn finish(&mut self) -> Result<(), ResolveError> {
        self.batches = None;
        let Some(encoder) = self.encoder.take() else {
            return Err(ResolveError::Io { path: self.path.clone(), source: std::io::Error::other("already closed") });
        };
        match encoder.join() {
            Ok(written) => written.map_err(|source| ResolveError::Write { path: self.path.clone(), source }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The queries that will read a probabilistic rule's records, given its model and the
/// records' table name.
pub(crate) type QueriesOver<'a> = &'a dyn Fn(&probabilistic::RuleModel, &str) -> Vec<String>;

/// The records a probabilistic rule compares, written as one table with `tf_<i>` for its
/// term-frequency comparisons: how many records share the value (and the model gets the
/// totals those counts are shares of). The counts are joined per value, not counted by a
/// window, which would sort the records by each value.
///
/// The table is in the order of the blocking key that makes the most pairs: that key's
/// self-join then reads neighbouring rows for neighbouring pairs. Measured at 200k people
/// (5.7M pairs on the surname's sound and initial): candidate edges 4.2 s on records in
/// any order, 2.7-3.2 s in this order or the surname's.
///
/// With `reads` (the queries that will read the table, given the model and the table's
/// name), the table holds only the columns those read: the retail person rule reads 10 of
/// the records' 23 columns, and writing the rest cost half of this step.
pub(crate) async fn term_frequencies(
    ctx: &SessionContext,
    rule: &ProbabilisticRule,
    model: &mut probabilistic::RuleModel,
    rule_no: u16,
    work_dir: &Path,
    reads: Option<QueriesOver<'_>>,
) -> Result<String, ResolveError> {
    let records = probabilistic::rule_records(rule);
    let mut columns = vec!["r.*".to_string()];
    let mut joins = String::new();
    for (i, c) in rule.comparisons.iter().enumerate().filter(|(_, c)| c.term_frequency) {
        let (c, counts) = (&c.column, crate::tables::tf_counts(rule_no, i));
        let df =
            ctx.sql(&format!("SELECT {c}, count(*) AS n FROM {records} WHERE {c} IS NOT NULL GROUP BY {c}")).await?;
        crate::engine::materialize(ctx, &counts, df, work_dir).await?;
        let b = ctx.sql(&format!("SELECT CAST(COALESCE(sum(n), 0) AS BIGINT) FROM {counts}")).await?.collect().await?;
        let total =
            b.first().map_or(0, |b| b.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0));
        model.comparisons[i].tf_total = Some(total as u64);
        columns.push(format!("t{i}.n AS {}", rules::tf_column(i)));
        joins.push_str(&format!(" LEFT JOIN {counts} t{i} ON r.{c} = t{i}.{c}"));
    }
    let name = crate::tables::tf_records(rule_no);
    let all = format!("SELECT {} FROM {records} r{joins}", columns.join(", "));
    let kept = match reads {
        Some(reads) => {
            let schema = ctx.sql(&all).await?.schema().inner().clone();
            crate::engine::select_read(ctx, &name, schema, &reads(model, &name), "r").await?
        }
        None => "r.*".to_string(),
    };
    let df = ctx.sql(&format!("SELECT {kept} FROM ({all}) r")).await?;
    crate::engine::materialize(ctx, &name, df, work_dir).await?;
    Ok(name)
}

/// Writes the edge decisions with each side's source system and record id as table
/// `name`. Each side is joined in passes over buckets of the record number, so that a
/// join holds one share of the `records` (two joins of every record do not fit the memory
/// limit at 10M records). The passes are this join's own: its hash table holds a
/// record's number and keys, far less than a rule's joins (every pass reads all edges).
pub async fn write_match_edges(
    ctx: &SessionContext,
    name: &str,
    records: u64,
    work_dir: &Path,
) -> Result<(), ResolveError> {
    let records_bytes = usize::try_from(records).unwrap_or(usize::MAX).saturating_mul(BYTES_PER_RECORD_KEYS);
    let passes = crate::engine::shares_for_memory(ctx, records_bytes, 4);
    let records = |k: usize| {
        format!("(SELECT rid, source_system, source_record_id FROM {IDENTITY_RECORDS} WHERE rid % {passes} = {k})")
    };
    let with_a = |k: usize| {
        format!(
            "SELECT e.*, a.source_system AS source_system_a, a.source_record_id AS source_record_id_a \
             FROM {EDGE_DECISIONS} e JOIN {} a ON a.rid = e.rid_a WHERE e.rid_a % {passes} = {k}",
            records(k)
        )
    };
    // In one pass both joins run in one query (two hash tables, each within a quarter of
    // the limit): writing the first join's result and reading it back cost about a
    // second at 1M people.
    let edges_with_a = if passes == 1 {
        format!("({})", with_a(0))
    } else {
        let mut parts = Vec::new();
        for k in 0..passes {
            parts.push(ctx.sql(&with_a(k)).await?);
        }
        crate::engine::materialize_parts(ctx, EDGES_WITH_A, parts, work_dir).await?;
        EDGES_WITH_A.to_string()
    };
    let mut edges = Vec::new();
    for k in 0..passes {
        let sql = format!(
            "SELECT e.source_system_a, e.source_record_id_a, \
             b.source_system AS source_system_b, b.source_record_id AS source_record_id_b, \
             e.rule, e.score, e.detail, e.decision \
             FROM {edges_with_a} e JOIN {} b ON b.rid = e.rid_b WHERE e.rid_b % {passes} = {k}",
            records(k)
        );
        edges.push(ctx.sql(&sql).await?);
    }
    crate::engine::materialize_parts(ctx, name, edges, work_dir).await?;
    if passes > 1 {
        ctx.deregister_table(EDGES_WITH_A)?;
    }
    Ok(())
}

/// Bytes a record's number, source system and record id take in a hash table: measured
/// at 1M people, 45 MB for 613k records (74 bytes); twice that keeps a margin.
const BYTES_PER_RECORD_KEYS: usize = 150;

/// Records one pass of a rule's joins may hold: the joins keep a few hundred bytes per
/// record of the pass in memory. Measured at 10M records in a 2 GB pool: one pass runs
/// out, 12 and 23 passes fit (600 and 1200 bytes here); 800 keeps a margin between.
const BYTES_PER_RECORD_IN_PASS: usize = 800;

/// Enough passes for a rule's joins to take at most a quarter of the memory limit.
fn auto_passes(records: usize, ctx: &SessionContext) -> usize {
    crate::engine::shares_for_memory(ctx, records.saturating_mul(BYTES_PER_RECORD_IN_PASS), 4)
}

/// Writes a rule's candidate edges, pass by pass, as Parquet files under `dir`.
async fn write_candidate_edges(
    ctx: &SessionContext,
    rule: &str,
    queries: &rules::RuleSql,
    passes: usize,
    dir: &Path,
) -> Result<(), ResolveError> {
    let mut parts = Vec::new();
    for pass in rules::Pass::all(passes) {
        parts.push(ctx.sql(&(queries.edges)(pass)).await.map_err(rule_error(rule))?);
    }
    crate::engine::write_parts(parts, dir).await.map_err(rule_error(rule))
}

/// How many dropped values the manifest shows, the largest groups first.
const DROPPED_EXAMPLES: usize = 20;

/// Counts what a rule's guardrails dropped, keeping the largest groups as examples for the
/// manifest. The query is not ordered: the examples are picked as its rows stream past. (An
/// ordered union of block sizes was a plan a Ballista executor could not run: a sort over
/// one of the union's inputs came with no partition, and DataFusion's top-k filter asserts
/// at least one.)
async fn count_dropped(
    ctx: &SessionContext,
    rule: &str,
    sql: &str,
    summary: &mut RuleSummary,
) -> Result<(), ResolveError> {
    let df = ctx
        .sql(&format!(
            "SELECT value, CAST(records AS BIGINT) AS records, CAST(people AS BIGINT) AS people FROM ({sql})"
        ))
        .await
        .map_err(rule_error(rule))?;
    let mut stream = df.execute_stream().await.map_err(rule_error(rule))?;
    // The examples so far, the smallest (fewest records, then the last value) on top.
    let mut examples: std::collections::BinaryHeap<(std::cmp::Reverse<i64>, String, i64)> = Default::default();
    while let Some(b) = stream.next().await {
        let b = b.map_err(rule_error(rule))?;
        let value = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let value = value.as_string::<i32>();
        let records = b.column(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let people = b.column(2).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            summary.dropped_values += 1;
            summary.dropped_records += records.value(i) as u64;
            examples.push((std::cmp::Reverse(records.value(i)), value.value(i).to_string(), people.value(i)));
            if examples.len() > DROPPED_EXAMPLES {
                examples.pop();
            }
        }
    }
    summary.dropped_examples.extend(
        examples.into_sorted_vec().into_iter().map(|(std::cmp::Reverse(records), value, people)| DroppedValue {
            value,
            records,
            people,
        }),
    );
    Ok(())
}

/// Applies one batch of edges and returns their decisions as a batch to keep.
/// `weighing`: a probabilistic rule's, whose edges' scores are match probabilities.
fn decide(
    clusters: &mut Clusters,
    batch: &RecordBatch,
    rule: &str,
    rule_no: u16,
    weighing: Option<&Weighing>,
    summary: &mut RuleSummary,
) -> Result<RecordBatch, ResolveError> {
    let a = datafusion::arrow::compute::cast(batch.column(0), &DataType::UInt32)?;
    let b = datafusion::arrow::compute::cast(batch.column(1), &DataType::UInt32)?;
    let (a, b) = (a.as_primitive::<UInt32Type>(), b.as_primitive::<UInt32Type>());
    let score = datafusion::arrow::compute::cast(batch.column(2), &DataType::Float64)?;
    let detail = datafusion::arrow::compute::cast(batch.column(3), &DataType::Utf8)?;
    let mut decisions = StringBuilder::with_capacity(batch.num_rows(), batch.num_rows() * 8);
    let scores = score.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    for i in 0..batch.num_rows() {
        // The match weight back from the probability (infinite when it rounds to 1).
        let weighed =
            weighing.filter(|_| scores.is_valid(i)).map(|how| (probabilistic::match_weight(scores.value(i)), how));
        let d = clusters.union(a.value(i), b.value(i), rule_no, weighed);
        summary.candidate_edges += 1;
        match d {
            Decision::Merged => summary.merged += 1,
            Decision::Outweighed(r) => {
                summary.merged += 1;
                *summary.outweighed.entry(r.as_str().trim_start_matches("refused: ").to_string()).or_default() += 1;
            }
            Decision::Redundant => summary.already_joined += 1,
            Decision::Refused(r) => *summary.refused.entry(r.as_str().to_string()).or_default() += 1,
        }
        decisions.append_value(d.as_str());
    }
    let rules: StringArray = std::iter::repeat_n(Some(rule), batch.num_rows()).collect();
    Ok(RecordBatch::try_new(
        edge_schema(),
        vec![
            Arc::new(a.clone()),
            Arc::new(b.clone()),
            Arc::new(rules),
            Arc::new(
                score
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .cloned()
                    .unwrap_or_else(|| Float64Array::new_null(batch.num_rows())),
            ),
            detail,
            Arc::new(decisions.finish()),
        ],
    )?)
}

/// Every record's cluster (its union-find root) and the rule that joined it.
fn cluster_arrays(clusters: &mut Clusters, spec: &crate::config::ResolveSpec) -> lookup::ClusterArrays {
    let n = clusters.len() as u32;
    lookup::ClusterArrays {
        cluster: (0..n).map(|r| clusters.find(r)).collect(),
        rule: (0..n).map(|r| clusters.matched_by(r)).collect(),
        rule_names: spec.rules.iter().map(|r| r.name().to_string()).collect(),
    }
}

/// Cluster size -> number of clusters of that size.
fn size_histogram(cluster_of: &[u32]) -> BTreeMap<u32, u64> {
    let mut size_of_root: HashMap<u32, u32> = HashMap::new();
    for root in cluster_of {
        *size_of_root.entry(*root).or_default() += 1;
    }
    let mut sizes = BTreeMap::new();
    for s in size_of_root.values() {
        *sizes.entry(*s).or_default() += 1;
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineOptions, session};

    /// The decisions written on the encoder's thread make the file; a batch the file
    /// cannot take fails the resolve with the file's name, not later or never.
    #[test]
    fn decisions_are_written_by_the_encoder_and_its_failure_is_reported() {
        use datafusion::arrow::array::{ArrayRef, UInt32Array};
        let dir = tempfile::tempdir().unwrap();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(vec![1, 2])),
            Arc::new(UInt32Array::from(vec![3, 4])),
            Arc::new(StringArray::from(vec!["r", "r"])),
            Arc::new(Float64Array::from(vec![Some(1.0), None])),
            Arc::new(StringArray::from(vec![Some("d"), None])),
            Arc::new(StringArray::from(vec!["merged", "refused"])),
        ];
        let batch = RecordBatch::try_new(edge_schema(), columns).unwrap();
        let open = |name: &str| {
            let path = dir.path().join(name);
            let writer = ArrowWriter::try_new(File::create(&path).unwrap(), edge_schema(), None).unwrap();
            (path.clone(), DecisionWriter::start(writer, path))
        };
        let (path, mut good) = open("good.parquet");
        for _ in 0..10 {
            good.write(batch.clone()).unwrap();
        }
        good.finish().unwrap();
        let file = File::open(&path).unwrap();
        let rows: usize = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 20);

        let (path, mut bad) = open("bad.parquet");
        let wrong = RecordBatch::try_from_iter([("x", Arc::new(UInt32Array::from(vec![1])) as ArrayRef)]).unwrap();
        let mut failed = None;
        for _ in 0..10 {
            if let Err(e) = bad.write(wrong.clone()) {
                failed = Some(e);
                break;
            }
        }
        let error = match failed {
            Some(e) => e,
            None => bad.finish().unwrap_err(),
        };
        assert!(matches!(&error, ResolveError::Write { path: p, .. } if *p == path), "{error}");
    }

    #[test]
    fn auto_passes_follow_the_memory_limit() {
        let dir = tempfile::tempdir().unwrap();
        let with_limit = |bytes: Option<usize>| {
            session(&EngineOptions { memory_limit: bytes, ..Default::default() }, dir.path()).unwrap()
        };
        let two_gb = with_limit(Some(2 << 30));
        assert_eq!(auto_passes(100_000, &two_gb), 1);
        // 10M records in 2 GB: each pass holds at most a quarter of the pool.
        let passes = auto_passes(10_000_000, &two_gb);
        assert!(passes * (2 << 30) / 4 / BYTES_PER_RECORD_IN_PASS >= 10_000_000, "{passes}");
        assert!(passes > 1 && passes < 40, "{passes}");
        assert!(auto_passes(10_000_000, &with_limit(Some(8 << 30))) < passes);
        assert_eq!(auto_passes(10_000_000, &with_limit(None)), 1);
    }

    /// Match edges joined in several passes (a small memory limit) are those of one pass.
    #[tokio::test]
    async fn match_edges_in_passes_are_those_of_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let edges_of = |limit: Option<usize>| {
            let dir = dir.path().join(format!("{limit:?}"));
            async move {
                std::fs::create_dir_all(&dir).unwrap();
                let ctx = session(&EngineOptions { memory_limit: limit, ..Default::default() }, &dir).unwrap();
                let records = ctx
                    .sql(
                        "SELECT CAST(value AS INT UNSIGNED) AS rid, CASE WHEN value % 3 = 0 THEN 'crm' ELSE 'pos' END \
                         AS source_system, concat('K', value) AS source_record_id FROM generate_series(0, 29999) t(value)",
                    )
                    .await
                    .unwrap();
                ctx.register_table(IDENTITY_RECORDS, records.into_view()).unwrap();
                let edges = ctx
                    .sql(
                        "SELECT CAST(value AS INT UNSIGNED) AS rid_a, CAST((value * 7 + 3) % 30000 AS INT UNSIGNED) \
                         AS rid_b, 'r' AS rule, 0.5 AS score, 'd' AS detail, 'merged' AS decision \
                         FROM generate_series(0, 29999) t(value)",
                    )
                    .await
                    .unwrap();
                ctx.register_table(EDGE_DECISIONS, edges.into_view()).unwrap();
                let passes = crate::engine::shares_for_memory(&ctx, 30_000 * BYTES_PER_RECORD_KEYS, 4);
                write_match_edges(&ctx, "m", 30_000, &dir).await.unwrap();
                // Read back outside the small pool, which is for the joins.
                let read = SessionContext::new();
                read.register_parquet("m", dir.join("m").to_string_lossy().as_ref(), ParquetReadOptions::default())
                    .await
                    .unwrap();
                let sql = "SELECT * FROM m ORDER BY source_record_id_a, source_record_id_b";
                let rows = read.sql(sql).await.unwrap().collect().await.unwrap();
                (passes, datafusion::arrow::util::pretty::pretty_format_batches(&rows).unwrap().to_string())
            }
        };
        let (one, whole) = edges_of(None).await;
        let (several, in_passes) = edges_of(Some(4 << 20)).await;
        assert_eq!((one, several), (1, 5));
        assert_eq!(whole.lines().count(), 30_004);
        assert_eq!(whole, in_passes);
    }

    #[test]
    fn cluster_sizes_are_counted_per_root() {
        let sizes = size_histogram(&[0, 0, 2, 3, 3, 3]);
        assert_eq!(sizes, BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    }
}
