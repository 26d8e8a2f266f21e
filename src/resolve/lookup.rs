//! The clustering result as SQL functions of the record number: `cluster_of(rid)` and
//! `matched_by_of(rid)` read the arrays union-find left behind. Adding a record's cluster
//! this way is a scan, where a join on `rid` would hold millions of rows in a hash table
//! that cannot spill.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, UInt32Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// Per record (indexed by `rid`): its cluster and the rule that joined it.
#[derive(Debug)]
pub struct ClusterArrays {
    pub cluster: Vec<u32>,
    /// Rule number, 1-based; 0 for a record no rule joined.
    pub rule: Vec<u16>,
    pub rule_names: Vec<String>,
}

impl ClusterArrays {
    /// The name of the rule that joined record `rid`, `none` when no rule did.
    fn matched_by(&self, rid: u32) -> &str {
        match self.rule[rid as usize] {
            0 => "none",
            k => self.rule_names[k as usize - 1].as_str(),
        }
    }

    /// The arrays as a Parquet file of `rid`, `cluster_id`, `matched_by`: what a cluster's
    /// executors join the records with, where the embedded engine calls [`functions`].
    pub fn write_parquet(&self, file: std::fs::File) -> datafusion::parquet::errors::Result<()> {
        use datafusion::arrow::datatypes::{Field, Schema};
        const ROWS: usize = 1 << 20;
        let schema = Arc::new(Schema::new(vec![
            Field::new("rid", DataType::UInt32, false),
            Field::new("cluster_id", DataType::UInt32, false),
            Field::new("matched_by", DataType::Utf8, false),
        ]));
        let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
            file,
            schema.clone(),
            Some(crate::engine::scratch_writer_properties()),
        )?;
        for start in (0..self.cluster.len()).step_by(ROWS) {
            let rids = start as u32..(start + ROWS).min(self.cluster.len()) as u32;
            let columns: Vec<ArrayRef> = vec![
                Arc::new(rids.clone().collect::<UInt32Array>()),
                Arc::new(rids.clone().map(|r| self.cluster[r as usize]).collect::<UInt32Array>()),
                Arc::new(rids.map(|r| Some(self.matched_by(r))).collect::<StringArray>()),
            ];
            writer.write(&datafusion::arrow::array::RecordBatch::try_new(schema.clone(), columns)?)?;
        }
        writer.close().map(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    Cluster,
    MatchedBy,
}

#[derive(Debug)]
struct Lookup {
    arrays: Arc<ClusterArrays>,
    output: Output,
    signature: Signature,
}

// One lookup per name and clustering: equal when they read the same arrays.
impl PartialEq for Lookup {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.arrays, &other.arrays) && self.output == other.output
    }
}

impl Eq for Lookup {}

impl std::hash::Hash for Lookup {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.arrays) as usize).hash(state);
        self.output.hash(state);
    }
}

pub const CLUSTER_OF: &str = "cluster_of";
pub const MATCHED_BY_OF: &str = "matched_by_of";

impl ScalarUDFImpl for Lookup {
    fn name(&self) -> &str {
        match self.output {
            Output::Cluster => CLUSTER_OF,
            Output::MatchedBy => MATCHED_BY_OF,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.output {
            Output::Cluster => DataType::UInt32,
            Output::MatchedBy => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rids = ColumnarValue::values_to_arrays(&args.args)?;
        let rids = rids[0].as_primitive::<UInt32Type>();
        let a = &self.arrays;
        if let Some(bad) = rids.iter().flatten().find(|r| *r as usize >= a.cluster.len()) {
            return exec_err!(
                "{}: record number {bad} is beyond the {} clustered records",
                self.name(),
                a.cluster.len()
            );
        }
        let out: ArrayRef = match self.output {
            Output::Cluster => Arc::new(rids.iter().map(|r| r.map(|r| a.cluster[r as usize])).collect::<UInt32Array>()),
            Output::MatchedBy => Arc::new(rids.iter().map(|r| r.map(|r| a.matched_by(r))).collect::<StringArray>()),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `cluster_of` and `matched_by_of` over one clustering.
pub fn functions(arrays: Arc<ClusterArrays>) -> Vec<ScalarUDF> {
    [Output::Cluster, Output::MatchedBy]
        .into_iter()
        .map(|output| {
            let signature = Signature::exact(vec![DataType::UInt32], Volatility::Immutable);
            ScalarUDF::from(Lookup { arrays: arrays.clone(), output, signature })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn looks_up_cluster_and_rule_by_record_number() {
        let arrays =
            ClusterArrays { cluster: vec![0, 0, 2], rule: vec![0, 1, 0], rule_names: vec!["same_email".into()] };
        let ctx = SessionContext::new();
        for f in functions(Arc::new(arrays)) {
            ctx.register_udf(f);
        }
        let sql = "SELECT cluster_of(rid) AS c, matched_by_of(rid) AS m FROM \
                   (VALUES (arrow_cast(2, 'UInt32')), (arrow_cast(1, 'UInt32'))) t(rid)";
        let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&b).unwrap().to_string();
        assert!(text.contains("| 2 | none       |"), "{text}");
        assert!(text.contains("| 0 | same_email |"), "{text}");
        let err = ctx.sql("SELECT cluster_of(arrow_cast(7, 'UInt32'))").await.unwrap().collect().await.unwrap_err();
        assert!(err.to_string().contains("record number 7 is beyond the 3"), "{err}");
    }
}
