//! Evaluate: pairwise precision, recall and F1 of a crosswalk against ground truth,
//! computed from cluster sizes (never by listing pairs), with over-merged customers and
//! split persons.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::Serialize;

use crate::Error;
use crate::storage::Location;

/// Scores of a crosswalk.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    /// Records present in both the truth and the crosswalk.
    pub records: i64,
    pub true_pairs: i64,
    pub predicted_pairs: i64,
    pub correct_pairs: i64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Customers holding records of more than one person.
    pub over_merged_customers: i64,
    /// Persons whose records are spread over more than one customer.
    pub split_persons: i64,
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "records            {}", self.records)?;
        writeln!(f, "true pairs         {}", self.true_pairs)?;
        writeln!(f, "predicted pairs    {}", self.predicted_pairs)?;
        writeln!(f, "correct pairs      {}", self.correct_pairs)?;
        writeln!(f, "precision          {:.4}", self.precision)?;
        writeln!(f, "recall             {:.4}", self.recall)?;
        writeln!(f, "f1                 {:.4}", self.f1)?;
        writeln!(f, "over-merged        {} customers", self.over_merged_customers)?;
        write!(f, "split              {} persons", self.split_persons)
    }
}

/// A table URL for a Parquet file or folder.
fn parquet_url(loc: &Location) -> String {
    if loc.glob.is_some() || loc.url().ends_with(".parquet") {
        loc.display()
    } else {
        format!("{}/", loc.url().trim_end_matches('/'))
    }
}

/// Scores the crosswalk at `crosswalk` against `truth` (both Parquet).
/// Scores `crosswalk` against `truth`; `scratch` holds an intermediate table.
pub async fn evaluate(
    ctx: &SessionContext,
    truth: &Location,
    crosswalk: &Location,
    scratch: &std::path::Path,
) -> Result<Evaluation, Error> {
    let storage = crate::config::StorageSpec::default();
    for loc in [truth, crosswalk] {
        crate::storage::store_for(ctx, loc, &storage)?;
    }
    ctx.register_parquet("eval_truth", &parquet_url(truth), ParquetReadOptions::default())
        .await
        .map_err(Error::engine(format!("truth {}", truth.display())))?;
    ctx.register_parquet("eval_xref", &parquet_url(crosswalk), ParquetReadOptions::default())
        .await
        .map_err(Error::engine(format!("crosswalk {}", crosswalk.display())))?;
    // Records per (person, customer), computed once and kept on disk; every figure follows
    // from it by plain aggregation (no COUNT(DISTINCT), whose per-group sets take
    // gigabytes at millions of records).
    let both = ctx
        .sql(
            "SELECT CAST(t.person_id AS VARCHAR) AS person, x.customer_id AS customer, count(*) AS n \
             FROM eval_xref x JOIN eval_truth t \
             ON CAST(t.source_system AS VARCHAR) = x.source_system AND CAST(t.source_record_id AS VARCHAR) = x.source_record_id \
             GROUP BY 1, 2",
        )
        .await
        .map_err(Error::engine("evaluating"))?;
    crate::engine::materialize(ctx, "eval_both", both, scratch).await.map_err(Error::engine("evaluating"))?;
    let sql = "WITH by_person AS (SELECT person, sum(n) AS n, count(*) AS customers FROM eval_both GROUP BY person), \
               by_customer AS (SELECT customer, sum(n) AS n, count(*) AS persons FROM eval_both GROUP BY customer) \
               SELECT (SELECT COALESCE(sum(n), 0) FROM eval_both) AS records, \
                      (SELECT COALESCE(sum(n * (n - 1) / 2), 0) FROM by_person) AS true_pairs, \
                      (SELECT COALESCE(sum(n * (n - 1) / 2), 0) FROM by_customer) AS predicted_pairs, \
                      (SELECT COALESCE(sum(n * (n - 1) / 2), 0) FROM eval_both) AS correct_pairs, \
                      (SELECT count(*) FROM by_customer WHERE persons > 1) AS over_merged, \
                      (SELECT count(*) FROM by_person WHERE customers > 1) AS split";
    let batches = ctx
        .sql(sql)
        .await
        .map_err(Error::engine("evaluating"))?
        .collect()
        .await
        .map_err(Error::engine("evaluating"))?;
    let b = batches.first().ok_or_else(|| Error::Other("evaluation returned nothing".into()))?;
    let v = |i: usize| -> Result<i64, Error> {
        let c = datafusion::arrow::compute::cast(b.column(i), &datafusion::arrow::datatypes::DataType::Int64)
            .map_err(|e| Error::Other(e.to_string()))?;
        let a = c.as_primitive::<Int64Type>();
        Ok(if a.is_null(0) { 0 } else { a.value(0) })
    };
    let (records, true_pairs, predicted_pairs, correct_pairs) = (v(0)?, v(1)?, v(2)?, v(3)?);
    let ratio = |a: i64, b: i64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let precision = ratio(correct_pairs, predicted_pairs);
    let recall = ratio(correct_pairs, true_pairs);
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Ok(Evaluation {
        records,
        true_pairs,
        predicted_pairs,
        correct_pairs,
        precision,
        recall,
        f1,
        over_merged_customers: v(4)?,
        split_persons: v(5)?,
    })
}
