//! Stable customer ids. A record keeps its customer id while its cluster keeps it: each
//! previous id goes to the cluster holding most of its records; a cluster that receives
//! several keeps the oldest (ids are numbered, `K0000000001` is older than
//! `K0000000002`) and the others are reported `merged_into`; a cluster that receives none
//! gets a new id, reported `split_from` when its records had an id before, else `new`.

use std::path::Path;

use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::ResolveError;
use crate::config::Pipeline;
use crate::engine;
use crate::storage::{self, Location};
use crate::tables::{CLUSTERED_RECORDS, CUSTOMER_CHANGES, CUSTOMER_IDS, CUSTOMER_XREF, PREVIOUS_XREF};

/// Prefix and width of customer ids.
pub const ID_PREFIX: &str = "K";
pub const ID_DIGITS: usize = 10;

/// Formats a sequence number as a customer id.
pub fn format_id(seq: u64) -> String {
    format!("{ID_PREFIX}{seq:0width$}", width = ID_DIGITS)
}

/// The sequence number of a customer id, if it is one of ours.
pub fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix(ID_PREFIX).filter(|d| d.len() == ID_DIGITS).and_then(|d| d.parse().ok())
}

/// Registers an empty previous crosswalk (first run).
async fn register_empty_previous(ctx: &SessionContext) -> datafusion::error::Result<()> {
    let df = ctx
        .sql(
            "SELECT CAST(NULL AS VARCHAR) AS customer_id, CAST(NULL AS VARCHAR) AS source_system, \
             CAST(NULL AS VARCHAR) AS source_record_id WHERE false",
        )
        .await?;
    ctx.register_table(PREVIOUS_XREF, df.into_view())?;
    Ok(())
}

/// The highest id sequence number in a crosswalk table (`previous_xref`, `customer_xref`).
pub async fn high_water(ctx: &SessionContext, table: &str) -> datafusion::error::Result<u64> {
    let batches = ctx
        .sql(&format!(
            "SELECT max(CAST(substr(customer_id, {start}) AS BIGINT)) FROM {table} \
             WHERE customer_id LIKE '{ID_PREFIX}%' AND length(customer_id) = {len}",
            start = ID_PREFIX.len() + 1,
            len = ID_PREFIX.len() + ID_DIGITS
        ))
        .await?
        .collect()
        .await?;
    use datafusion::arrow::array::{Array, AsArray};
    let v = batches
        .first()
        .map(|b| b.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>())
        .filter(|a| !a.is_empty() && !a.is_null(0))
        .map_or(0, |a| a.value(0) as u64);
    Ok(v)
}

/// SQL of the previous ids' votes as named subqueries: how many of each cluster's records
/// had each previous id (`votes`), the cluster each previous id goes to (`best`), and the
/// id each cluster keeps (`kept`).
fn vote_ctes() -> String {
    format!(
        "cur AS (SELECT cluster_id, source_system, source_record_id, matched_by FROM {CLUSTERED_RECORDS}), \
         votes AS (SELECT cur.cluster_id, p.customer_id, count(*) AS n FROM cur JOIN {PREVIOUS_XREF} p \
                   ON p.source_system = cur.source_system AND p.source_record_id = cur.source_record_id \
                   GROUP BY cur.cluster_id, p.customer_id), \
         best AS ({best}), \
         kept AS (SELECT cluster_id, min(customer_id) AS customer_id FROM best GROUP BY cluster_id)",
        best = engine::first_of_each_group("votes", "customer_id", "n DESC, cluster_id", "customer_id, cluster_id"),
    )
}

/// Each cluster's customer id (for `CUSTOMER_IDS`), given the highest sequence number
/// used, and whether the id is new (`fresh`), which the changes read.
fn customer_ids_sql(high_water: u64) -> String {
    format!(
        "WITH {votes}, \
         keys AS (SELECT cluster_id, min(concat(source_system, ':', source_record_id)) AS first_key FROM cur GROUP BY cluster_id), \
         fresh AS (SELECT k.cluster_id, k.first_key FROM keys k LEFT JOIN kept ON kept.cluster_id = k.cluster_id WHERE kept.cluster_id IS NULL), \
         new_ids AS (SELECT cluster_id, concat('{ID_PREFIX}', lpad(CAST(row_number() OVER (ORDER BY first_key) + {high_water} AS VARCHAR), {ID_DIGITS}, '0')) AS customer_id FROM fresh) \
         SELECT cluster_id, customer_id, false AS fresh FROM kept \
         UNION ALL SELECT cluster_id, customer_id, true AS fresh FROM new_ids",
        votes = vote_ctes(),
    )
}

/// The crosswalk: every identity record with its customer id and the rule that joined it.
/// The customer ids (one row per cluster) are the join's build side, the records stream.
fn xref_sql() -> String {
    format!(
        "SELECT a.customer_id, r.source_system, r.source_record_id, r.matched_by \
         FROM {CUSTOMER_IDS} a JOIN {CLUSTERED_RECORDS} r ON a.cluster_id = r.cluster_id"
    )
}

/// Changes against the previous crosswalk: new, merged_into, split_from, deleted. The new
/// ids are read from `CUSTOMER_IDS`, not numbered again (at 1M people that was half a
/// second).
fn changes_sql() -> String {
    format!(
        "WITH {votes}, \
         split_votes AS ({split_votes}) \
         SELECT n.customer_id, CASE WHEN s.customer_id IS NULL THEN 'new' ELSE 'split_from' END AS change, s.customer_id AS related_customer_id \
           FROM (SELECT cluster_id, customer_id FROM {CUSTOMER_IDS} WHERE fresh) n LEFT JOIN split_votes s ON s.cluster_id = n.cluster_id \
         UNION ALL \
         SELECT b.customer_id, 'merged_into' AS change, k.customer_id AS related_customer_id \
           FROM best b JOIN kept k ON k.cluster_id = b.cluster_id WHERE b.customer_id <> k.customer_id \
         UNION ALL \
         SELECT DISTINCT p.customer_id, 'deleted' AS change, CAST(NULL AS VARCHAR) AS related_customer_id \
           FROM {PREVIOUS_XREF} p WHERE p.customer_id NOT IN (SELECT customer_id FROM votes)",
        votes = vote_ctes(),
        split_votes =
            engine::first_of_each_group("votes", "cluster_id", "n DESC, customer_id", "cluster_id, customer_id"),
    )
}

/// The crosswalk a run keeps customer ids from.
pub struct Previous {
    /// `None` on a first run (nothing published, none named).
    pub location: Option<Location>,
    /// The highest id sequence number used so far: new customers are numbered after it.
    pub high_water: u64,
}

/// Registers the previous crosswalk as `previous_xref`: the one named (`--previous`, the
/// YAML's `previous`), else the one published at the output, else an empty one.
pub async fn register_previous(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    named: Option<&str>,
    output: &Location,
) -> Result<Previous, ResolveError> {
    let store = storage::store_for(ctx, output, &pipeline.spec.storage)?;
    let published = crate::publish::published_manifest(store.as_ref(), output).await;
    let location = match named.or(pipeline.spec.previous.as_deref()) {
        Some(p) => Some(Location::parse(p, &pipeline.base_dir)?),
        None => published.is_some().then(|| output.child(CUSTOMER_XREF)),
    };
    let Some(loc) = &location else {
        register_empty_previous(ctx).await?;
        return Ok(Previous { location, high_water: 0 });
    };
    storage::store_for(ctx, loc, &pipeline.spec.storage)?;
    let url = if loc.url().ends_with(".parquet") {
        loc.url()
    } else if loc.glob.is_some() {
        loc.display()
    } else {
        format!("{}/", loc.url().trim_end_matches('/'))
    };
    let previous_error = |e: datafusion::error::DataFusionError| ResolveError::Previous {
        location: loc.display(),
        message: e.to_string(),
    };
    ctx.register_parquet(PREVIOUS_XREF, &url, ParquetReadOptions::default()).await.map_err(previous_error)?;
    let from_table = high_water(ctx, PREVIOUS_XREF).await.map_err(previous_error)?;
    // Ids of customers deleted since are not in the table, and must not come back.
    let from_manifest = published.map_or(0, |m| m.customer_id_high_water);
    Ok(Previous { high_water: from_table.max(from_manifest), location })
}

/// Gives every cluster its customer id and materialises `customer_ids`, the crosswalk
/// (`customer_xref`) and the changes against the previous one. Returns the new high water.
pub async fn assign(ctx: &SessionContext, previous_high_water: u64, scratch: &Path) -> Result<u64, ResolveError> {
    let customer_ids = ctx.sql(&customer_ids_sql(previous_high_water)).await?;
    engine::materialize(ctx, CUSTOMER_IDS, customer_ids, scratch).await?;
    let xref = ctx.sql(&xref_sql()).await?;
    engine::materialize(ctx, CUSTOMER_XREF, xref, scratch).await?;
    let changes = ctx.sql(&changes_sql()).await?;
    engine::materialize(ctx, CUSTOMER_CHANGES, changes, scratch).await?;
    Ok(previous_high_water.max(high_water(ctx, CUSTOMER_XREF).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_age() {
        assert_eq!(format_id(42), "K0000000042");
        assert_eq!(parse_id("K0000000042"), Some(42));
        assert_eq!(parse_id("X0000000042"), None);
        assert!(format_id(9) < format_id(10));
    }
}
