//! The names of the tables a run registers in its session, in one place: what each stage
//! hands the next, and the names a model may therefore not take.

use crate::config::Pipeline;

/// The golden customer records (`golden`).
pub const CUSTOMERS: &str = "customers";
/// Every identity record with its customer id (`resolve`).
pub const CUSTOMER_XREF: &str = "customer_xref";
/// What changed per customer id since the previous publish (`resolve`).
pub const CUSTOMER_CHANGES: &str = "customer_changes";
/// Every candidate edge with its rule, score, comparison detail and decision (`resolve`).
pub const MATCH_EDGES: &str = "match_edges";
/// The tables every run publishes, whatever the outputs list.
pub const GOLDEN_TABLES: &[&str] = &[CUSTOMERS, CUSTOMER_XREF, CUSTOMER_CHANGES, MATCH_EDGES];

/// Every staged identity record, numbered (`rid`): what matching reads (`stage`).
pub const IDENTITY_RECORDS: &str = "identity_records";
/// Every identity source's raw values as text, stacked, before records set aside and
/// repeated keys are taken out: the dumps parsed once (`stage`).
pub const STAGED_RECORDS: &str = "staged_records";
/// The staged records that were not set aside (`stage`).
pub const KEPT_RECORDS: &str = "kept_records";
/// How often each name is written as a first and as a last name (`stage`).
pub const NAME_ROLES: &str = "name_roles";
/// The identity records with their cluster and the rule that merged them (`resolve`).
pub const CLUSTERED_RECORDS: &str = "clustered_records";
/// Every candidate edge with the guardrails' decision (`resolve`).
pub const EDGE_DECISIONS: &str = "edge_decisions";
/// `rid, cluster_id, matched_by`, for engines that cannot call into this process (`resolve`).
pub const RECORD_CLUSTERS: &str = "record_clusters";
/// Decided edges with the first record's details, half way to `match_edges` (`resolve`).
pub const EDGES_WITH_A: &str = "edges_with_a";
/// The customer id of each cluster (`resolve`).
pub const CUSTOMER_IDS: &str = "customer_ids";
/// The crosswalk of the previous publish (`resolve`).
pub const PREVIOUS_XREF: &str = "previous_xref";
/// The clustered records with what survivorship orders them by (`golden`).
pub const GOLDEN_BASE: &str = "golden_base";

/// A source's rows as read from its dump (`extract`).
pub fn raw(source: &str) -> String {
    format!("{RAW_PREFIX}{source}")
}

/// A source's records normalised into the identity columns (`stage`).
pub fn staged(source: &str) -> String {
    format!("{STAGED_PREFIX}{source}")
}

/// The records a probabilistic rule compares, with term frequencies (`resolve`).
pub fn tf_records(rule_no: u16) -> String {
    format!("{TF_RECORDS_PREFIX}{rule_no}")
}

/// How many of a probabilistic rule's records share each value of one of its
/// term-frequency comparisons (`resolve`).
pub fn tf_counts(rule_no: u16, comparison: usize) -> String {
    format!("{TF_RECORDS_PREFIX}{rule_no}_{comparison}")
}

const RAW_PREFIX: &str = "raw_";
const STAGED_PREFIX: &str = "stg_";
const TF_RECORDS_PREFIX: &str = "tf_records_";

/// Why a model may not be called `name`, if it may not: klantbeeld registers a table of
/// that name in the run (or may, for another source, rule or attribute), and the model
/// would hide it from the stages and models that read it.
pub fn reserved_reason(pipeline: &Pipeline, name: &str) -> Option<String> {
    let fixed = [
        IDENTITY_RECORDS,
        STAGED_RECORDS,
        KEPT_RECORDS,
        NAME_ROLES,
        CLUSTERED_RECORDS,
        EDGE_DECISIONS,
        RECORD_CLUSTERS,
        EDGES_WITH_A,
        CUSTOMER_IDS,
        PREVIOUS_XREF,
        GOLDEN_BASE,
    ];
    if GOLDEN_TABLES.contains(&name) || fixed.contains(&name) {
        return Some(format!("`{name}` is a table klantbeeld makes"));
    }
    if pipeline.spec.sources.contains_key(name) {
        return Some(format!("`{name}` is a source"));
    }
    [RAW_PREFIX, STAGED_PREFIX, TF_RECORDS_PREFIX]
        .iter()
        .find(|p| name.starts_with(**p))
        .map(|p| format!("names starting with `{p}` are klantbeeld's"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_a_run_registers_is_reserved() {
        let text = "name: t\noutput: out\nsources:\n  crm:\n    location: crm/*.csv\n    format: {type: csv}\n    \
                    key: id\n    identity:\n      email: email\n";
        let pipeline = Pipeline::from_text(std::path::Path::new("p.yaml"), text, &Default::default()).unwrap();
        for name in ["customers", "name_roles", "staged_records", "golden_base", "crm"] {
            assert!(reserved_reason(&pipeline, name).is_some(), "{name}");
        }
        for name in [raw("orders"), staged("crm"), tf_records(3), tf_counts(3, 1)] {
            assert!(reserved_reason(&pipeline, &name).is_some(), "{name}");
        }
        assert_eq!(reserved_reason(&pipeline, "rfm"), None);
    }
}
