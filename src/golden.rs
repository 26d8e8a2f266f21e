//! Golden: one row per customer by survivorship per attribute, and the views that join
//! every source's rows to their customer through the crosswalk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use datafusion::arrow::datatypes::DataType;
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

/// One survivorship choice: the attributes one record gives the golden record (the
/// address parts come from one record), which records may give them, and in what order
/// they are tried.
struct Choice {
    choice: GoldenChoice,
    strategy: Survivorship,
}

impl Choice {
    /// The column that holds, per record, how many of the customer's records share its
    /// value (most-frequent choices only).
    fn freq(&self) -> String {
        format!("freq_{}", self.choice.name())
    }

    /// Survivorship order: the columns the first record in it wins by, with their
    /// directions (`a` ascending, `d` descending, nulls last either way), ending with
    /// the record's own key so that no two records tie.
    fn order(&self) -> Vec<(String, char)> {
        // A full first name beats an initial, a full address a bare postcode, whatever the
        // strategy.
        let mut order: Vec<(String, char)> = match self.choice {
            GoldenChoice::FirstName => vec![("is_initials(first_name)".into(), 'a')],
            GoldenChoice::Address => vec![("full_address".into(), 'd')],
            _ => vec![],
        };
        let (recent, oldest, priority) =
            (("updated_at".into(), 'd'), ("updated_at".into(), 'a'), ("priority".into(), 'a'));
        order.extend(match self.strategy {
            Survivorship::MostRecent => vec![recent, priority],
            Survivorship::SourcePriority => vec![priority, recent],
            Survivorship::MostFrequent => vec![(self.freq(), 'd'), recent, priority],
            Survivorship::FirstNonNull => vec![oldest, priority],
        });
        // Records of two systems may share an id; the record number (unique) settles it.
        order.extend([("source_record_id".into(), 'a'), ("rid".into(), 'a')]);
        order
    }

    /// Per customer, the first of its records that has the choice's key, in the choice's
    /// order, with its values and its record: `pick_value(.., i)` reads the choice's
    /// column `i`, and the record after them.
    fn aggregate(&self) -> String {
        let (columns, directions): (Vec<String>, String) = self.order().into_iter().unzip();
        format!(
            "min(pick_key('{directions}', {}, {}, record)) FILTER (WHERE {} IS NOT NULL) AS pick_{}",
            columns.join(", "),
            self.choice.columns().join(", "),
            self.choice.key_column(),
            self.choice.name()
        )
    }
}

/// The queries that build `customers`.
pub struct GoldenSql {
    /// The view `golden_base`.
    pub base: String,
    choices: Vec<Choice>,
    systems: String,
}

impl GoldenSql {
    /// `customers` for the customers whose cluster falls in share `index` of `count`: per
    /// customer one aggregate over its records, with every survivorship choice, the
    /// record counts and the lineage. `types` gives the golden columns that are not text
    /// their type, to which their values (carried as text) return.
    pub fn customers(&self, index: usize, count: usize, types: &BTreeMap<String, String>) -> String {
        let share = share(index, count);
        // A most-frequent choice counts each value within the customer first, and every
        // record carries its value's count into the order.
        let frequent: Vec<&Choice> = self.choices.iter().filter(|c| c.strategy == Survivorship::MostFrequent).collect();
        let mut with = vec![format!("b AS (SELECT * FROM {GOLDEN_BASE} WHERE {share})")];
        let mut freq_columns = String::new();
        let mut freq_joins = String::new();
        for (i, c) in frequent.iter().enumerate() {
            let key = c.choice.key_column();
            with.push(format!(
                "f{i} AS (SELECT cluster_id, {key} AS v, count(*) AS n FROM b WHERE {key} IS NOT NULL GROUP BY cluster_id, {key})"
            ));
            freq_columns.push_str(&format!(", f{i}.n AS {}", c.freq()));
            freq_joins.push_str(&format!(" LEFT JOIN f{i} ON f{i}.cluster_id = b.cluster_id AND f{i}.v = b.{key}"));
        }
        with.push(format!("r AS (SELECT b.*{freq_columns} FROM b{freq_joins})"));
        let picks: Vec<String> = self.choices.iter().map(Choice::aggregate).collect();
        with.push(format!(
            "g AS (SELECT cluster_id, CAST(count(*) AS BIGINT) AS record_count, \
                   concat_ws(',', {systems}) AS source_systems, \
                   min(updated_at) AS first_seen_at, max(updated_at) AS last_updated_at, {picks} \
                   FROM r GROUP BY cluster_id)",
            systems = self.systems,
            picks = picks.join(", "),
        ));
        let mut values = Vec::new();
        for c in &self.choices {
            let pick = format!("g.pick_{}", c.choice.name());
            for (i, column) in c.choice.columns().iter().enumerate() {
                let value = format!("pick_value({pick}, {i})");
                values.push(match types.get(*column) {
                    Some(t) => format!("arrow_cast({value}, '{t}') AS {column}"),
                    None => format!("{value} AS {column}"),
                });
            }
            values.push(format!("pick_value({pick}, {}) AS record_{}", c.choice.columns().len(), c.choice.name()));
        }
        let lineage: Vec<String> = self
            .choices
            .iter()
            .flat_map(|c| {
                c.choice
                    .columns()
                    .iter()
                    .map(move |a| format!("'{a}', CASE WHEN {a} IS NOT NULL THEN record_{} END", c.choice.name()))
            })
            .collect();
        format!(
            "WITH {with} \
             SELECT customer_id, {columns}, record_count, source_systems, first_seen_at, last_updated_at, \
                    json_object({lineage}) AS lineage \
             FROM (SELECT x.customer_id, {values}, g.record_count, g.source_systems, g.first_seen_at, g.last_updated_at \
                   FROM (SELECT * FROM {CUSTOMER_IDS} WHERE {share}) x JOIN g ON g.cluster_id = x.cluster_id)",
            with = with.join(", "),
            columns = golden_columns().collect::<Vec<_>>().join(", "),
            values = values.join(", "),
            lineage = lineage.join(", "),
        )
    }
}

/// The customers in share `index` of `count`, as a condition on `cluster_id`.
fn share(index: usize, count: usize) -> String {
    if count > 1 { format!("cluster_id % {count} = {index}") } else { "true".to_string() }
}

/// Bytes the golden aggregate holds per record in its share: per customer, each choice's
/// key (the order columns and the values), and the most-frequent choices' value counts
/// (about one row per record). Customers are fewer than records.
const BYTES_PER_RECORD_IN_GOLDEN: usize = 600;

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
        "SELECT cluster_id, rid, source_system, source_record_id, updated_at, {columns}, {priority} AS priority, \
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

/// Builds `customers`: one aggregate per customer picks every attribute (see
/// `udf/pick.rs`), in as many parts as the memory limit needs, so that the aggregate and
/// the value counts hold one share of the customers. Each part reads every record: the
/// rules' passes, which are about the rules' joins, would read them four times at 1M
/// people for nothing.
///
/// Before, each choice sorted all records and kept each customer's first (six sorts of
/// every record), and ordered `first_value` aggregates were slower still: DataFusion keeps
/// every group's ordering keys as scalar values (16 s of a 200k-person run).
pub async fn build_customers(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    scratch: &Path,
    records: u64,
) -> Result<(), GoldenError> {
    let mut lap = crate::progress::Lap::start("golden");
    let sql = customers_sql(pipeline);
    let base = ctx.sql(&sql.base).await?;
    let types: BTreeMap<String, String> = base
        .schema()
        .fields()
        .iter()
        .filter(|f| !matches!(f.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8))
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    ctx.register_table(GOLDEN_BASE, base.into_view())?;
    let bytes = usize::try_from(records).unwrap_or(usize::MAX).saturating_mul(BYTES_PER_RECORD_IN_GOLDEN);
    let shares = crate::engine::shares_for_memory(ctx, bytes, 4);
    // The value counts are joined back to the records as shared build sides: joined by
    // hash partition, every record (a wide row) was moved between the partitions once
    // per most-frequent choice before the aggregate moved it again by customer. At 1M
    // people `customers` took 4.8-5.3 s against 4.9-6.1 s (same tables).
    let mut state = ctx.state();
    state.config_mut().options_mut().optimizer.repartition_joins = false;
    let mut parts = Vec::new();
    for index in 0..shares {
        let plan = state.create_logical_plan(&sql.customers(index, shares, &types)).await?;
        parts.push(DataFrame::new(state.clone(), plan));
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

    /// The customers' picks follow survivorship: the most frequent last name, ties to the
    /// most recent record, then source priority, then record id; the birth date by
    /// source priority keeps its type. In shares of the customers, the same rows.
    #[tokio::test]
    async fn picks_follow_survivorship_in_one_share_or_several() {
        let ctx = SessionContext::new();
        crate::udf::register(&ctx);
        let names = ["Jansen", "Janssen", "de Vries", "Vries"];
        // (cluster, last name, days after 2026-01-01, priority, record id)
        let rows: Vec<(i64, &str, i64, i64, String)> =
            (0..40).map(|i| (i % 9, names[((i * 7 % 11) % 4) as usize], i % 5, i % 3, format!("{i:03}"))).collect();
        let values: Vec<String> = rows
            .iter()
            .map(|(c, name, days, priority, id)| {
                format!(
                    "({c}, '{name}', '{id}', TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{days} days', {priority}, \
                     DATE '1980-01-01' + INTERVAL '{priority} days')"
                )
            })
            .collect();
        let base = format!(
            "SELECT CAST(column1 AS BIGINT) AS cluster_id, CAST(column3 AS BIGINT) AS rid, 's' AS source_system, column3 AS source_record_id, \
                    column4 AS updated_at, CAST(NULL AS VARCHAR) AS first_name, column2 AS last_name, \
                    CAST(NULL AS VARCHAR) AS email, CAST(NULL AS VARCHAR) AS phone, CAST(column6 AS DATE) AS birth_date, \
                    CAST(NULL AS VARCHAR) AS street, CAST(NULL AS VARCHAR) AS house_number, \
                    CAST(NULL AS VARCHAR) AS postcode, CAST(NULL AS VARCHAR) AS city, CAST(NULL AS VARCHAR) AS country, \
                    column5 AS priority, concat('s:', column3) AS record, false AS full_address \
             FROM (VALUES {})",
            values.join(", ")
        );
        ctx.register_table(GOLDEN_BASE, ctx.sql(&base).await.unwrap().into_view()).unwrap();
        let ids =
            "SELECT DISTINCT cluster_id, concat('C', CAST(cluster_id AS VARCHAR)) AS customer_id FROM golden_base";
        ctx.register_table(CUSTOMER_IDS, ctx.sql(ids).await.unwrap().into_view()).unwrap();
        let strategies = [
            (GoldenChoice::LastName, Survivorship::MostFrequent),
            (GoldenChoice::BirthDate, Survivorship::SourcePriority),
        ];
        let sql = GoldenSql {
            base: String::new(),
            choices: GoldenChoice::ALL
                .into_iter()
                .map(|choice| Choice {
                    choice,
                    strategy: strategies.iter().find(|(c, _)| *c == choice).map_or(Survivorship::MostRecent, |s| s.1),
                })
                .collect(),
            systems: "'s'".to_string(),
        };
        let types = BTreeMap::from([("birth_date".to_string(), "Date32".to_string())]);
        let picked = |count: usize| {
            let queries: Vec<String> = (0..count).map(|index| sql.customers(index, count, &types)).collect();
            let ctx = ctx.clone();
            async move {
                let mut rows = Vec::new();
                for q in queries {
                    let q = format!("SELECT customer_id, last_name, birth_date, lineage FROM ({q})");
                    let batches = ctx.sql(&q).await.unwrap().collect().await.unwrap();
                    assert!(batches.iter().all(|b| b.schema().field(2).data_type() == &DataType::Date32));
                    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
                    rows.extend(text.lines().filter(|l| l.starts_with("| ")).skip(1).map(str::to_string));
                }
                rows.sort();
                rows
            }
        };
        let one = picked(1).await;
        let expected: Vec<String> = (0..9)
            .map(|cluster| {
                let members: Vec<_> = rows.iter().filter(|r| r.0 == cluster).collect();
                let freq = |name: &str| members.iter().filter(|r| r.1 == name).count();
                let first = members
                    .iter()
                    .min_by_key(|r| (std::cmp::Reverse(freq(r.1)), std::cmp::Reverse(r.2), r.3, r.4.clone()))
                    .unwrap();
                let by_priority = members.iter().min_by_key(|r| (r.3, std::cmp::Reverse(r.2), r.4.clone())).unwrap();
                (format!("C{cluster}"), first.1.to_string(), format!("1980-01-0{}", 1 + by_priority.3), first.4.clone())
            })
            .map(|(id, name, born, record)| format!("{id} {name} {born} s:{record}"))
            .collect();
        let got: Vec<String> = one
            .iter()
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
                let lineage: serde_json::Value = serde_json::from_str(cells[3]).unwrap();
                format!("{} {} {} {}", cells[0], cells[1], cells[2], lineage["last_name"].as_str().unwrap())
            })
            .collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(got, expected);
        assert_eq!(one, picked(4).await);
    }
}
