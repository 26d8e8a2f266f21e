//! The retail pipeline end to end on freshly generated dumps: the output contract as a
//! warehouse would check it.

mod common;

use common::*;

#[tokio::test]
async fn retail_run_publishes_the_golden_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 800, 7, false);
    let out = run_retail(&input.join("dumps"), &output, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("published run"));

    assert!(output.join("_SUCCESS").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    for key in ["run_id", "klantbeeld_version", "vars", "config_hash", "inputs", "tables", "stages", "match"] {
        assert!(manifest.get(key).is_some(), "manifest lacks {key}");
    }
    assert_eq!(manifest["inputs"]["crm"]["files"].as_array().unwrap().len(), 2);

    let records = scalar(&output, &["customer_xref"], "SELECT count(*) FROM customer_xref").await;
    let truth_records = {
        let ctx = datafusion::prelude::SessionContext::new();
        let df =
            ctx.read_parquet(input.join("truth/truth.parquet").to_str().unwrap(), Default::default()).await.unwrap();
        df.count().await.unwrap() as i64
    };
    // Every identity record is in the crosswalk exactly once.
    assert_eq!(records, truth_records);
    let distinct = scalar(
        &output,
        &["customer_xref"],
        "SELECT count(DISTINCT concat(source_system, ':', source_record_id)) FROM customer_xref",
    )
    .await;
    assert_eq!(distinct, records);
    // One row per customer, and every crosswalk customer has a golden row.
    let customers = scalar(&output, &["customers"], "SELECT count(*) FROM customers").await;
    let unique = scalar(&output, &["customers"], "SELECT count(DISTINCT customer_id) FROM customers").await;
    assert_eq!(customers, unique);
    let orphans = scalar(
        &output,
        &["customers", "customer_xref"],
        "SELECT count(*) FROM customer_xref x LEFT JOIN customers c ON c.customer_id = x.customer_id WHERE c.customer_id IS NULL",
    )
    .await;
    assert_eq!(orphans, 0);
    assert!(customers < records, "some records must have been merged");
    assert_eq!(manifest["tables"]["customers"]["rows"].as_i64().unwrap(), customers);
    // Record ids are the sources' own keys, unchanged.
    let crm_ids = scalar(
        &output,
        &["customer_xref"],
        "SELECT count(*) FROM customer_xref WHERE source_system = 'crm' AND source_record_id LIKE 'C%' AND length(source_record_id) = 8",
    )
    .await;
    assert!(crm_ids > 0);
    every_table_is_written_for_warehouses(&output, &manifest);
}

/// Every published table's files, whichever way the run wrote them: zstd, no embedded
/// Arrow schema, no type a warehouse cannot read (views, unsigned integers), and as many
/// rows as the manifest says.
fn every_table_is_written_for_warehouses(output: &std::path::Path, manifest: &serde_json::Value) {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let tables = manifest["tables"].as_object().unwrap();
    assert!(tables.len() >= 5, "{tables:?}");
    for (table, info) in tables {
        let mut rows = 0;
        for file in std::fs::read_dir(output.join(table)).unwrap() {
            let path = file.unwrap().path();
            let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            let meta = reader.metadata();
            let file_meta = meta.file_metadata();
            let keys = file_meta.key_value_metadata().map(|kv| kv.iter().map(|k| k.key.clone()).collect::<Vec<_>>());
            assert!(!keys.unwrap_or_default().iter().any(|k| k == "ARROW:schema"), "{}", path.display());
            for group in meta.row_groups() {
                rows += group.num_rows();
                for column in group.columns() {
                    assert!(
                        matches!(column.compression(), datafusion::parquet::basic::Compression::ZSTD(_)),
                        "{} {}: {:?}",
                        path.display(),
                        column.column_path(),
                        column.compression()
                    );
                }
            }
            let schema = datafusion::parquet::arrow::parquet_to_arrow_schema(file_meta.schema_descr(), None).unwrap();
            for field in schema.fields() {
                let unreadable = matches!(
                    field.data_type(),
                    DataType::Utf8View | DataType::BinaryView | DataType::UInt32 | DataType::UInt64
                );
                assert!(!unreadable, "{} {}: {}", path.display(), field.name(), field.data_type());
            }
        }
        assert_eq!(info["rows"].as_i64().unwrap(), rows, "{table}");
    }
}

#[tokio::test]
async fn matching_quality_floors_on_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 3000, 11, false);
    run_retail(&input.join("dumps"), &output, &[]);
    let ctx = datafusion::prelude::SessionContext::new();
    let truth =
        klantbeeld::storage::Location::parse(input.join("truth/truth.parquet").to_str().unwrap(), dir.path()).unwrap();
    let xref =
        klantbeeld::storage::Location::parse(output.join("customer_xref").to_str().unwrap(), dir.path()).unwrap();
    let scratch = dir.path().join("eval_scratch");
    let e = klantbeeld::eval::evaluate(&ctx, &truth, &xref, &scratch).await.unwrap();
    assert!(e.precision >= 0.99, "precision {e}");
    assert!(e.recall >= 0.75, "recall {e}");
    // The CLI prints the same figures.
    let out = klantbeeld(&[
        "eval",
        "--truth",
        input.join("truth/truth.parquet").to_str().unwrap(),
        "--crosswalk",
        output.join("customer_xref").to_str().unwrap(),
        "--json",
    ]);
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["correct_pairs"].as_i64().unwrap(), e.correct_pairs);
}

#[test]
fn plan_shows_sources_with_their_files_models_in_order_and_outputs() {
    let sample = repo().join("examples/retail/dumps");
    let out = klantbeeld(&["plan", retail_yaml().to_str().unwrap(), "--var", &format!("input={}", sample.display())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("stages: extract -> stage -> resolve -> golden -> enrich -> check -> publish"), "{plan}");
    assert!(plan.contains(&format!("file://{}/crm/contacts*.csv -> 2 file(s)", sample.display())), "{plan}");
    assert!(plan.contains("crm/contacts_1.csv") && plan.contains("crm/contacts_2.csv"), "{plan}");
    assert!(plan.contains("orders: facts of webshop via account_id"), "{plan}");
    // Models come after the models they read.
    let at = |m: &str| plan.find(&format!("\n  {m}")).unwrap_or_else(|| panic!("{m} missing in\n{plan}"));
    assert!(at("purchases") < at("rfm") && at("rfm") < at("clv") && at("clv") < at("customers_enriched"));
    assert!(plan.contains("customers_enriched <- clv, email_engagement"), "{plan}");
    assert!(plan.contains("1. same_email"), "{plan}");
}

#[tokio::test]
async fn a_limited_run_reads_a_sample_of_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out");
    let sample = repo().join("examples/retail/dumps");
    run_retail(&sample, &output, &["--limit", "40", "--var", "run_date=2026-11-22"]);
    let records = scalar(&output, &["customer_xref"], "SELECT count(*) FROM customer_xref").await;
    // Five identity sources, the CRM in two files: at most 6 x 40 records.
    assert!(records > 0 && records <= 240, "{records}");
    let enriched = scalar(&output, &["customers_enriched"], "SELECT count(*) FROM customers_enriched").await;
    assert!(enriched > 0);
}
