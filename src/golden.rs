//! Golden: one row per customer by survivorship per attribute, and the views that join
//! every source's rows to their customer through the crosswalk.

use datafusion::prelude::SessionContext;

use crate::config::{Pipeline, Survivorship};
use crate::extract::raw_table;
use crate::resolve::CLUSTERED_RECORDS;
use crate::resolve::ids::CUSTOMER_IDS;

pub const CUSTOMERS: &str = "customers";
pub const CUSTOMER_XREF: &str = "customer_xref";
pub const CUSTOMER_CHANGES: &str = "customer_changes";

/// The attributes of the golden record, in column order.
pub const GOLDEN_ATTRIBUTES: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "phone",
    "birth_date",
    "street",
    "house_number",
    "postcode",
    "city",
    "country",
];

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("{file}: key `golden.attributes.{attribute}`: not a golden attribute{hint}")]
    UnknownAttribute { file: String, attribute: String, hint: String },
    #[error("golden: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
}

/// Address parts survive together, from one record, so that a street never lands at
/// another record's postcode. They are configured as one attribute, `address`.
pub const ADDRESS_PARTS: &[&str] = &["street", "house_number", "postcode", "city", "country"];

/// Attribute names the `golden.attributes` section accepts.
pub fn configurable_attributes() -> Vec<&'static str> {
    GOLDEN_ATTRIBUTES.iter().copied().filter(|a| !ADDRESS_PARTS.contains(a)).chain(["address"]).collect()
}

/// Survivorship ordering for one attribute: the first row in this order wins.
fn order_by(strategy: Survivorship, attribute: &str) -> String {
    // A full first name beats an initial, a full address a bare postcode, whatever the
    // strategy.
    let initials = if attribute == "first_name" {
        "is_initials(first_name) ASC NULLS LAST, "
    } else if ADDRESS_PARTS.contains(&attribute) {
        "(street IS NOT NULL AND house_number IS NOT NULL AND postcode IS NOT NULL) DESC, "
    } else {
        ""
    };
    let tail = "source_record_id ASC";
    match strategy {
        Survivorship::MostRecent => format!("{initials}updated_at DESC NULLS LAST, priority ASC, {tail}"),
        Survivorship::SourcePriority => format!("{initials}priority ASC, updated_at DESC NULLS LAST, {tail}"),
        Survivorship::MostFrequent => {
            let freq = if ADDRESS_PARTS.contains(&attribute) { "postcode" } else { attribute };
            format!("{initials}freq_{freq} DESC, updated_at DESC NULLS LAST, priority ASC, {tail}")
        }
        Survivorship::FirstNonNull => format!("{initials}updated_at ASC NULLS LAST, priority ASC, {tail}"),
    }
}

/// The SELECT that builds `customers` from the crosswalk and the staged records.
pub fn customers_sql(pipeline: &Pipeline) -> Result<String, GoldenError> {
    let golden = &pipeline.spec.golden;
    let allowed = configurable_attributes();
    for attribute in golden.attributes.keys() {
        if !allowed.contains(&attribute.as_str()) {
            return Err(GoldenError::UnknownAttribute {
                file: pipeline.file.display().to_string(),
                attribute: attribute.clone(),
                hint: crate::config::suggest(attribute, allowed.iter().copied()),
            });
        }
    }
    let strategy = |a: &str| {
        let key = if ADDRESS_PARTS.contains(&a) { "address" } else { a };
        golden.attributes.get(key).copied().unwrap_or(Survivorship::MostRecent)
    };
    let priority = if golden.source_priority.is_empty() {
        "0".to_string()
    } else {
        let whens: String = golden
            .source_priority
            .iter()
            .enumerate()
            .map(|(i, s)| format!(" WHEN '{}' THEN {i}", s.replace('\'', "''")))
            .collect();
        format!("CASE r.source_system{whens} ELSE {} END", golden.source_priority.len())
    };
    // A most-frequent attribute is picked in two aggregations: per (cluster, value) its
    // count and best record, then per cluster the value with the highest count. No join
    // back to the records, whose hash table would hold every record in memory.
    let counted: Vec<&str> = GOLDEN_ATTRIBUTES
        .iter()
        .copied()
        .filter(|a| strategy(a) == Survivorship::MostFrequent && !ADDRESS_PARTS.contains(a))
        .collect();
    // Addresses survive as a whole record, counted by postcode: their counts are joined
    // to the records (keyed by the numeric cluster, the count table is the build side).
    let joined: Vec<&str> = ["postcode"].into_iter().filter(|a| strategy(a) == Survivorship::MostFrequent).collect();
    let mut freq_ctes = String::new();
    let mut last = "base0".to_string();
    for a in &joined {
        freq_ctes.push_str(&format!(
            ", f_{a} AS (SELECT cluster_id, {a} AS v, count(*) AS n FROM base0 WHERE {a} IS NOT NULL GROUP BY cluster_id, {a}), \
             with_{a} AS (SELECT b.*, COALESCE(f.n, 0) AS freq_{a} FROM f_{a} f RIGHT JOIN {last} b \
             ON f.cluster_id = b.cluster_id AND f.v = b.{a})"
        ));
        last = format!("with_{a}");
    }
    let within = "updated_at DESC NULLS LAST, priority ASC, source_record_id ASC";
    let mut pick_joins = String::new();
    for a in &counted {
        let initials = if *a == "first_name" { "is_initials(v) ASC NULLS LAST, " } else { "" };
        let across = format!("{initials}n DESC, u DESC NULLS LAST, pr ASC, srid ASC");
        freq_ctes.push_str(&format!(
            ", v_{a} AS (SELECT cluster_id, {a} AS v, count(*) AS n, \
               first_value(concat(source_system, ':', source_record_id) ORDER BY {within}) AS rec, \
               first_value(updated_at ORDER BY {within}) AS u, first_value(priority ORDER BY {within}) AS pr, \
               first_value(source_record_id ORDER BY {within}) AS srid \
               FROM base0 WHERE {a} IS NOT NULL GROUP BY cluster_id, {a}), \
             p_{a} AS (SELECT cluster_id, first_value(v ORDER BY {across}) AS {a}, \
               first_value(rec ORDER BY {across}) AS lineage_{a} FROM v_{a} GROUP BY cluster_id)"
        ));
        pick_joins.push_str(&format!(" LEFT JOIN p_{a} ON p_{a}.cluster_id = picked.cluster_id"));
    }
    let identity: Vec<&String> = pipeline.spec.identity_sources().map(|(n, _)| n).collect();
    let systems = identity
        .iter()
        .map(|n| {
            let n = n.replace('\'', "''");
            format!("CASE WHEN bool_or(source_system = '{n}') THEN '{n}' END")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut picks = Vec::new();
    let mut lineage = Vec::new();
    for a in GOLDEN_ATTRIBUTES {
        lineage.push(format!(
            "CASE WHEN lineage_{a} IS NOT NULL THEN concat('\"{a}\":\"', replace(replace(lineage_{a}, '\\\\', '\\\\\\\\'), '\"', '\\\\\"'), '\"') END"
        ));
        if counted.contains(a) {
            continue;
        }
        let order = order_by(strategy(a), a);
        // Address parts share one filter: the record must have an address at all.
        let filter =
            if ADDRESS_PARTS.contains(a) { "postcode IS NOT NULL".to_string() } else { format!("{a} IS NOT NULL") };
        picks.push(format!("first_value({a} ORDER BY {order}) FILTER (WHERE {filter}) AS {a}"));
        picks.push(format!(
            "first_value(concat(source_system, ':', source_record_id) ORDER BY {order}) FILTER (WHERE {filter} AND {a} IS NOT NULL) AS lineage_{a}"
        ));
    }
    let columns = GOLDEN_ATTRIBUTES.join(", ");
    let columns_r = GOLDEN_ATTRIBUTES.iter().map(|a| format!("r.{a}")).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "WITH base0 AS (SELECT x.customer_id, r.cluster_id, r.source_system, r.source_record_id, r.updated_at, {columns_r}, \
                        {priority} AS priority \
                        FROM {CUSTOMER_IDS} x JOIN {CLUSTERED_RECORDS} r ON r.cluster_id = x.cluster_id){freq_ctes}, \
         base AS (SELECT * FROM {last}), \
         picked AS (SELECT customer_id, cluster_id, {picks}, \
                    CAST(count(*) AS BIGINT) AS record_count, \
                    concat_ws(',', {systems}) AS source_systems, \
                    min(updated_at) AS first_seen_at, max(updated_at) AS last_updated_at \
                    FROM base GROUP BY customer_id, cluster_id) \
         SELECT picked.customer_id, {columns}, record_count, source_systems, first_seen_at, last_updated_at, \
                concat('{{', concat_ws(',', {lineage}), '}}') AS lineage \
         FROM picked{pick_joins}",
        picks = picks.join(", "),
        lineage = lineage.join(", ")
    ))
}

/// Registers, for every source, a view named after it with the source's rows and their
/// `customer_id`: identity sources through their own record id, facts through the record
/// they belong to. Unlinked facts (anonymous web sessions) keep a null customer id.
pub async fn register_source_views(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    present: &[String],
) -> Result<(), GoldenError> {
    for (name, source) in &pipeline.spec.sources {
        if !present.contains(name) {
            continue;
        }
        let raw = raw_table(name);
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
        let df = ctx.sql(&sql).await?;
        ctx.register_table(name.as_str(), df.into_view())?;
    }
    Ok(())
}
