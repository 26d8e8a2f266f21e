//! Golden: one row per customer by survivorship per attribute, and the views that join
//! every source's rows to their customer through the crosswalk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use datafusion::execution::SessionState;
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::{GoldenChoice, Pipeline, Survivorship};
use crate::tables::{self, CLUSTERED_RECORDS, CUSTOMER_IDS, CUSTOMER_XREF, CUSTOMERS, GOLDEN_BASE};

/// The golden record's attribute columns, in column order.
pub fn golden_columns() -> impl Iterator<Item = &'static str> {
    GoldenChoice::ALL.into_iter().flat_map(GoldenChoice::columns).copied()
}

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("golden: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
}

impl GoldenError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        match self {
            GoldenError::Engine(_) => crate::ExitClass::Other,
        }
    }
}

/// Survivorship ordering for one choice: the first row in this order wins.
fn order_by(strategy: Survivorship, choice: GoldenChoice) -> String {
    // A full first name beats an initial, a full address a bare postcode, whatever the
    // strategy.
    let complete = match choice {
        GoldenChoice::FirstName => "is_initials(first_name) ASC NULLS LAST, ",
        GoldenChoice::Address => "full_address DESC, ",
        _ => "",
    };
    let tail = "source_record_id ASC";
    match strategy {
        Survivorship::MostRecent => format!("{complete}updated_at DESC NULLS LAST, priority ASC, {tail}"),
        Survivorship::SourcePriority => format!("{complete}priority ASC, updated_at DESC NULLS LAST, {tail}"),
        Survivorship::MostFrequent => format!("{complete}freq DESC, updated_at DESC NULLS LAST, priority ASC, {tail}"),
        Survivorship::FirstNonNull => format!("{complete}updated_at ASC NULLS LAST, priority ASC, {tail}"),
    }
}

/// One survivorship choice: the attributes one record gives the golden record (the
/// address parts come from one record), which records may give them, and in what order
/// they are tried.
struct Choice {
    choice: GoldenChoice,
    strategy: Survivorship,
}

impl Choice {
    fn table(&self) -> String {
        tables::golden_pick(self.choice.name())
    }

    /// Per customer, the first record in the choice's order with its values and lineage.
    /// A most-frequent choice counts each value within the customer first; the first
    /// record in (count, recency) order carries the most frequent value, and ties go to
    /// the value of the most recent record.
    ///
    /// `share` keeps one share of the customers (see [`share`]).
    fn sql(&self, share: &str) -> String {
        let key = self.choice.key_column();
        let base = format!("(SELECT * FROM {GOLDEN_BASE} WHERE {share})");
        // Counts come from an aggregation joined back (the counts are the build side):
        // `count(*) OVER (PARTITION BY ...)` is an unbounded window, which DataFusion
        // computes over its whole input at once (at 1M people, one 650 MB batch that
        // the next sort could not take in a 2 GB pool).
        let rows = if self.strategy == Survivorship::MostFrequent {
            format!(
                "(SELECT b.*, f.freq FROM \
                  (SELECT cluster_id, {key} AS v, count(*) AS freq FROM {base} GROUP BY cluster_id, {key}) f \
                  JOIN {base} b ON b.cluster_id = f.cluster_id AND b.{key} = f.v)"
            )
        } else {
            base
        };
        let columns: Vec<String> = self
            .choice
            .columns()
            .iter()
            .map(|m| format!("{m}, CASE WHEN {m} IS NOT NULL THEN record END AS lineage_{m}"))
            .collect();
        crate::engine::first_of_each_group(
            &format!("(SELECT * FROM {rows} WHERE {key} IS NOT NULL)"),
            "cluster_id",
            &order_by(self.strategy, self.choice),
            &format!("cluster_id, {}", columns.join(", ")),
        )
    }
}

/// The queries that build `customers`, in the order they run.
pub struct GoldenSql {
    /// The view `golden_base`.
    pub base: String,
    choices: Vec<Choice>,
    systems: String,
}

impl GoldenSql {
    /// Per survivorship choice, its table and queries: a most-frequent choice in `shares`
    /// parts (its value counts are a hash join's build side), the others in one (their
    /// sort spills to disk when it must).
    pub fn picks(&self, shares: usize) -> impl Iterator<Item = (String, Vec<String>)> + '_ {
        self.choices.iter().map(move |c| {
            let count = if c.strategy == Survivorship::MostFrequent { shares } else { 1 };
            (c.table(), (0..count).map(|index| c.sql(&share(index, count))).collect())
        })
    }

    /// `customers` for the customers whose cluster falls in share `index` of `count`: the
    /// picks joined on the cluster, with the record counts and the lineage.
    pub fn customers(&self, index: usize, count: usize) -> String {
        let share = share(index, count);
        let joins: String = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(" LEFT JOIN (SELECT * FROM {} WHERE {share}) p{i} ON p{i}.cluster_id = x.cluster_id", c.table())
            })
            .collect();
        let lineage: Vec<String> = golden_columns().map(|a| format!("'{a}', lineage_{a}")).collect();
        format!(
            "WITH counts AS (SELECT cluster_id, CAST(count(*) AS BIGINT) AS record_count, \
                             concat_ws(',', {systems}) AS source_systems, \
                             min(updated_at) AS first_seen_at, max(updated_at) AS last_updated_at \
                             FROM {GOLDEN_BASE} WHERE {share} GROUP BY cluster_id) \
             SELECT x.customer_id, {columns}, record_count, source_systems, first_seen_at, last_updated_at, \
                    json_object({lineage}) AS lineage \
             FROM (SELECT * FROM {CUSTOMER_IDS} WHERE {share}) x JOIN counts c ON c.cluster_id = x.cluster_id{joins}",
            systems = self.systems,
            columns = golden_columns().collect::<Vec<_>>().join(", "),
            lineage = lineage.join(", "),
        )
    }
}

/// The customers in share `index` of `count`, as a condition on `cluster_id`.
fn share(index: usize, count: usize) -> String {
    if count > 1 { format!("cluster_id % {count} = {index}") } else { "true".to_string() }
}

/// Bytes a most-frequent choice's join holds per record in its share: the value counts
/// per customer, about one row per record. Measured at 24.5M records in a 2 GB pool: one
/// share ran out at 2 GB (85 bytes a record and more); 200 keeps a margin.
const BYTES_PER_RECORD_IN_COUNTS: usize = 200;

/// The queries that build `customers` from the crosswalk and the staged records.
pub fn customers_sql(pipeline: &Pipeline) -> GoldenSql {
    let golden = &pipeline.spec.golden;
    let priority = if golden.source_priority.is_empty() {
        "0".to_string()
    } else {
        let whens: String = golden
            .source_priority
            .iter()
            .enumerate()
            .map(|(i, s)| format!(" WHEN {} THEN {i}", crate::engine::sql_string(s)))
            .collect();
        format!("CASE source_system{whens} ELSE {} END", golden.source_priority.len())
    };
    let columns = golden_columns().collect::<Vec<_>>().join(", ");
    let base = format!(
        "SELECT cluster_id, source_system, source_record_id, updated_at, {columns}, {priority} AS priority, \
                concat(source_system, ':', source_record_id) AS record, \
                (street IS NOT NULL AND house_number IS NOT NULL AND postcode IS NOT NULL) AS full_address \
         FROM {CLUSTERED_RECORDS}"
    );
    let choices = GoldenChoice::ALL
        .into_iter()
        .map(|choice| Choice {
            choice,
            strategy: golden.attributes.get(&choice).copied().unwrap_or(Survivorship::MostRecent),
        })
        .collect();
    let identity: Vec<&String> = pipeline.spec.identity_sources().map(|(n, _)| n).collect();
    let systems = identity
        .iter()
        .map(|n| {
            let n = crate::engine::sql_string(n);
            format!("CASE WHEN bool_or(source_system = {n}) THEN {n} END")
        })
        .collect::<Vec<_>>()
        .join(", ");
    GoldenSql { base, choices, systems }
}

/// Builds `customers`. Each survivorship choice is one query that sorts the records of
/// each customer and keeps the first: a table of one row per customer, built one after
/// the other so that each sort has the memory to itself. `customers` then joins them, in
/// `shares` parts so that the joins' hash tables hold one share of the customers.
///
/// Ordered `first_value` aggregates did the same in one query, but DataFusion keeps every
/// group's ordering keys as scalar values: 16 s of a 200k-person run, against about 1 s
/// for the sorts.
pub async fn build_customers(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    scratch: &Path,
    shares: usize,
    records: u64,
) -> Result<(), GoldenError> {
    let mut lap = crate::progress::Lap::start("golden");
    let sql = customers_sql(pipeline);
    ctx.register_table(GOLDEN_BASE, ctx.sql(&sql.base).await?.into_view())?;
    let count_shares = crate::engine::shares_for_memory(
        ctx,
        usize::try_from(records).unwrap_or(usize::MAX).saturating_mul(BYTES_PER_RECORD_IN_COUNTS),
        4,
    );
    for (table, queries) in sql.picks(count_shares) {
        let mut parts = Vec::new();
        for query in &queries {
            parts.push(ctx.sql(query).await?);
        }
        crate::engine::materialize_parts(ctx, &table, parts, scratch).await?;
        lap.done(&table);
    }
    let mut parts = Vec::new();
    for index in 0..shares {
        parts.push(ctx.sql(&sql.customers(index, shares)).await?);
    }
    crate::engine::materialize_parts(ctx, CUSTOMERS, parts, scratch).await?;
    lap.done(CUSTOMERS);
    Ok(())
}

/// For every source present, a frame named after it with the source's rows and their
/// `customer_id`: identity sources through their own record id, facts through the record
/// they belong to. Unlinked facts (anonymous web sessions) keep a null customer id.
pub async fn source_views(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    present: &[String],
) -> Result<Vec<(String, DataFrame)>, GoldenError> {
    let state = broadcast_crosswalk(ctx);
    let mut views = Vec::new();
    for (name, source) in &pipeline.spec.sources {
        if !present.contains(name) {
            continue;
        }
        let raw = tables::raw(name);
        let (owner, key) = match &source.belongs_to {
            Some(b) => (b.source.clone(), format!("CAST(f.\"{}\" AS VARCHAR)", b.column)),
            None => (name.clone(), "f.source_record_id".to_string()),
        };
        // The owner's crosswalk rows (narrow, one per record) are the hash join's build
        // side; the facts, often many times more, stream past it.
        let sql = format!(
            "SELECT x.customer_id, f.* FROM \
             (SELECT customer_id, source_record_id FROM {CUSTOMER_XREF} WHERE source_system = '{owner}') x \
             RIGHT JOIN {raw} f ON x.source_record_id = {key}"
        );
        views.push((name.clone(), DataFrame::new(state.clone(), state.create_logical_plan(&sql).await?)));
    }
    Ok(views)
}

/// Registers the [`source_views`] under their names. Those in `read` (the sources that
/// models read, with the columns they read) are written once to scratch Parquet with
/// those columns and `customer_id`: as views, every model reading one parsed the dump and
/// joined the crosswalk again (six retail models read `orders`; this made the enrichment
/// three times slower at 200k people), and the columns no model reads (the facts' own ids,
/// at 1M people 12.6M e-mail events and 10M web sessions) cost writing only. The others
/// stay views, for user SQL that may read them.
pub async fn register_source_views(
    ctx: &SessionContext,
    views: Vec<(String, DataFrame)>,
    read: &BTreeMap<String, BTreeSet<String>>,
    scratch: &Path,
) -> Result<(), GoldenError> {
    let mut lap = crate::progress::Lap::start("golden");
    for (name, df) in views {
        match read.get(&name) {
            Some(columns) => {
                let kept: Vec<datafusion::prelude::Expr> = df
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| f.name() == "customer_id" || columns.contains(f.name()))
                    .map(|f| datafusion::prelude::ident(f.name()))
                    .collect();
                crate::engine::materialize(ctx, &name, df.select(kept)?, scratch).await?;
                lap.done(&name);
            }
            None => {
                ctx.register_table(name.as_str(), df.into_view())?;
            }
        }
    }
    Ok(())
}

/// Bytes of the memory limit a source's crosswalk rows may take as the build side that
/// every partition shares (1/16 of it), and bytes a crosswalk row is reckoned at.
const BROADCAST_SHARE: usize = 16;
const BYTES_PER_CROSSWALK_ROW: usize = 64;

/// The session's state, with joins whose build side is a share of the memory limit built
/// once for all partitions (`CollectLeft`). A source's crosswalk rows are few next to its
/// facts (500k against 12.6M e-mail events at 1M people): the default threshold (128k
/// rows) splits both sides by hash instead, and moving the facts between partitions was a
/// quarter of the view's time.
fn broadcast_crosswalk(ctx: &SessionContext) -> SessionState {
    let mut state = ctx.state();
    if let MemoryLimit::Finite(limit) = ctx.runtime_env().memory_pool.memory_limit() {
        let optimizer = &mut state.config_mut().options_mut().optimizer;
        let bytes = limit / BROADCAST_SHARE;
        optimizer.hash_join_single_partition_threshold = optimizer.hash_join_single_partition_threshold.max(bytes);
        optimizer.hash_join_single_partition_threshold_rows =
            optimizer.hash_join_single_partition_threshold_rows.max(bytes / BYTES_PER_CROSSWALK_ROW);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a memory limit, a crosswalk of a sixteenth of it is joined as one shared build
    /// side; without one, DataFusion's thresholds stay.
    #[test]
    fn the_crosswalk_is_broadcast_within_a_share_of_the_memory_limit() {
        let options = crate::engine::EngineOptions { memory_limit: Some(1 << 30), ..Default::default() };
        let limited = crate::engine::session(&options, &std::env::temp_dir()).unwrap();
        let optimizer = broadcast_crosswalk(&limited).config().options().optimizer.clone();
        assert_eq!(optimizer.hash_join_single_partition_threshold, (1 << 30) / 16);
        assert_eq!(optimizer.hash_join_single_partition_threshold_rows, (1 << 30) / 16 / 64);
        let unlimited = SessionContext::new();
        let defaults = unlimited.state().config().options().optimizer.clone();
        let optimizer = broadcast_crosswalk(&unlimited).config().options().optimizer.clone();
        assert_eq!(optimizer.hash_join_single_partition_threshold, defaults.hash_join_single_partition_threshold);
        assert_eq!(
            optimizer.hash_join_single_partition_threshold_rows,
            defaults.hash_join_single_partition_threshold_rows
        );
    }

    /// A most-frequent pick in shares of the customers picks what it picks in one.
    #[tokio::test]
    async fn a_pick_in_shares_is_the_pick_in_one() {
        let ctx = SessionContext::new();
        // Per customer (cluster), last names with counts and recency that decide.
        let rows: String = (0..40)
            .map(|i| {
                let name = ["Jansen", "Janssen", "de Vries", "Vries"][(i * 7 % 11) % 4];
                format!(
                    "({}, '{name}', 's:{i}', '{i:03}', TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{} days', {})",
                    i % 9,
                    i % 5,
                    i % 3
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let base = format!(
            "SELECT CAST(column1 AS BIGINT) AS cluster_id, column2 AS last_name, column3 AS record, \
             column4 AS source_record_id, column5 AS updated_at, column6 AS priority FROM (VALUES {rows})"
        );
        ctx.register_table(GOLDEN_BASE, ctx.sql(&base).await.unwrap().into_view()).unwrap();
        let choice = Choice { choice: GoldenChoice::LastName, strategy: Survivorship::MostFrequent };
        let picked = |count: usize| {
            let ctx = ctx.clone();
            let queries: Vec<String> = (0..count).map(|index| choice.sql(&share(index, count))).collect();
            async move {
                let mut rows = Vec::new();
                for q in queries {
                    let batches = ctx.sql(&format!("{q} ORDER BY cluster_id")).await.unwrap().collect().await.unwrap();
                    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
                    rows.extend(text.lines().filter(|l| l.starts_with("| ")).skip(1).map(str::to_string));
                }
                rows.sort();
                rows
            }
        };
        let one = picked(1).await;
        assert_eq!(one.len(), 9, "{one:?}");
        assert_eq!(one, picked(4).await);
    }
}
