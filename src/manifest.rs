//! `_manifest.json`: what a published run read, did and wrote ([`Manifest`]), and the
//! part of it later commands read back ([`Published`]): which tables a publish holds (so
//! that the next run replaces only those), and the highest customer id handed out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check;
use crate::extract::InputFile;
use crate::progress::StageTiming;
use crate::publish::TableInfos;
use crate::resolve::MatchSummary;

/// The file name at the output.
pub const FILE: &str = "_manifest.json";

/// One input source in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct InputInfo {
    pub location: String,
    pub files: Vec<InputFile>,
    /// Rows read; with `rejected_rows` they make up the rows of the input.
    pub rows: u64,
    pub rejected_rows: usize,
    /// Records read but set aside by staging (an overlong identity value).
    pub set_aside_rows: usize,
    /// Rows dropped because their record key was repeated (the most recent row is kept).
    pub repeated_keys: u64,
}

/// `_manifest.json`: what a published run read, did and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub run_id: String,
    pub pipeline: String,
    pub klantbeeld_version: String,
    pub datafusion_version: String,
    pub started_at: String,
    pub finished_at: String,
    pub vars: BTreeMap<String, String>,
    pub config_hash: String,
    pub previous_crosswalk: Option<String>,
    pub customer_id_high_water: u64,
    pub inputs: BTreeMap<String, InputInfo>,
    pub tables: TableInfos,
    #[serde(rename = "match")]
    pub match_summary: MatchSummary,
    /// The fitted weights of the probabilistic rules (`_model.json`), when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Models in the order they ran.
    pub models: Vec<String>,
    /// Models built in batches (`models.batched`), with the number of batches.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_batches: BTreeMap<String, usize>,
    pub tests: Vec<check::TestOutcome>,
    pub stages: Vec<StageTiming>,
}

/// What later commands read of an earlier run's manifest. Its fields are [`Manifest`]'s,
/// under the same names; a file without `run_id` and `klantbeeld_version` is not ours.
#[derive(Debug, Clone, Deserialize)]
pub struct Published {
    pub run_id: String,
    pub klantbeeld_version: String,
    /// The published tables, by name.
    tables: BTreeMap<String, serde::de::IgnoredAny>,
    #[serde(default)]
    pub customer_id_high_water: u64,
}

impl Published {
    /// The manifest in `bytes`, when they are one of klantbeeld's.
    pub fn parse(bytes: &[u8]) -> Option<Published> {
        serde_json::from_slice(bytes).ok()
    }

    /// The names of the tables the run published.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a run writes is what the next one reads.
    #[test]
    fn published_reads_what_a_run_writes() {
        let mut tables = TableInfos::new();
        let info = crate::publish::TableInfo { rows: 2, path: "customers".into(), schema: Vec::new() };
        tables.insert("customers".into(), info);
        let manifest = Manifest {
            run_id: "20261202T000000Z-1".into(),
            pipeline: "retail".into(),
            klantbeeld_version: "0.1.0".into(),
            datafusion_version: "55".into(),
            started_at: String::new(),
            finished_at: String::new(),
            vars: BTreeMap::new(),
            config_hash: String::new(),
            previous_crosswalk: None,
            customer_id_high_water: 41,
            inputs: BTreeMap::new(),
            tables,
            match_summary: Default::default(),
            model: None,
            models: Vec::new(),
            model_batches: BTreeMap::new(),
            tests: Vec::new(),
            stages: Vec::new(),
        };
        let read = Published::parse(&serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert_eq!(read.run_id, manifest.run_id);
        assert_eq!(read.customer_id_high_water, 41);
        assert_eq!(read.tables().collect::<Vec<_>>(), ["customers"]);
        assert!(Published::parse(br#"{"tables": {}}"#).is_none(), "not klantbeeld's");
    }
}
