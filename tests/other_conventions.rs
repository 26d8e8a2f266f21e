//! The same people exported by another tool in the SOURCES.md layout: the retail pipeline
//! must read its conventions unchanged and come to the same golden table.

mod common;

use common::*;

#[tokio::test]
async fn another_exporters_conventions_give_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, 600, 11, false);
    let (ours, theirs) = (data.join("dumps"), dir.path().join("theirs"));
    let script = repo().join("tests/support/other_conventions.py");
    python(&format!(
        "import runpy, sys; sys.argv = ['x', {:?}, {:?}]; runpy.run_path({:?})",
        ours.display().to_string(),
        theirs.display().to_string(),
        script.display().to_string()
    ));
    // The rewrite really changed the conventions it claims to.
    let crm = std::fs::read(theirs.join("crm/contacts_part1.csv")).unwrap();
    assert!(crm.starts_with(b"\xEF\xBB\xBF") && crm.windows(2).any(|w| w == b"\r\n"));
    let tills = std::fs::read_to_string(theirs.join("pos/transactions.csv")).unwrap();
    assert!(tills.lines().any(|l| l.contains(",\"") && l.ends_with('"')), "no decimal commas written");

    let (out_ours, out_theirs) = (dir.path().join("out_ours"), dir.path().join("out_theirs"));
    run_retail(&ours, &out_ours, &[]);
    let out = run_retail(&theirs, &out_theirs, &[]);
    assert!(out.status.success());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_theirs.join("_manifest.json")).unwrap()).unwrap();
    for (source, input) in manifest["inputs"].as_object().unwrap() {
        assert_eq!(input["rejected_rows"], 0, "{source} rejected rows");
    }

    // Same records, same grouping, same money, same dates.
    let summary = "SELECT count(*) AS customers, sum(historical_revenue_eur) AS revenue, \
                   count(DISTINCT birth_date) AS births, max(last_sign_of_life_at) AS seen, sum(to_unixtime(first_seen_at)) AS first, max(last_updated_at) AS updated, avg(m_score) AS m FROM customers_enriched";
    let tables = ["customers_enriched"];
    let a = datafusion::arrow::util::pretty::pretty_format_batches(&query(&out_ours, &tables, summary).await).unwrap();
    let b =
        datafusion::arrow::util::pretty::pretty_format_batches(&query(&out_theirs, &tables, summary).await).unwrap();
    assert_eq!(a.to_string(), b.to_string());
    let pairs = "SELECT count(*) FROM customer_xref a JOIN customer_xref b ON a.customer_id = b.customer_id \
                 AND a.source_record_id < b.source_record_id";
    assert_eq!(
        scalar(&out_ours, &["customer_xref"], pairs).await,
        scalar(&out_theirs, &["customer_xref"], pairs).await
    );
}
