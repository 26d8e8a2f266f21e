//! The enrichment models on a tiny hand-made fixture whose answers are worked out by hand,
//! and the failures of the model and test stages.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{BooleanArray, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::pretty::pretty_format_batches;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn micros(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts).unwrap().timestamp_micros()
}

fn write_parquet(path: &Path, batch: RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Three customers. Anna buys on the web and in the shop, reads mail, browses and calls
/// service; Bob only called once; Carla bought once, recently.
fn fixture(dir: &Path) -> PathBuf {
    let d = dir.join("dumps");
    write(
        &d.join("crm/contacts.csv"),
        "klant_id;voornaam;tussenvoegsel;achternaam;email;telefoon;straat;huisnummer;postcode;woonplaats;geboortedatum;gewijzigd_op\n\
         C1;Anna;de;Vries;anna@ziggo.nl;06-11111111;Kerkstraat;1;1234 AB;Utrecht;1980-01-01;2026-01-01T00:00:00\n\
         C2;Bob;;Bakker;;06-28473619;Markt;2;2345 BC;Ede;1970-02-02;2025-06-01T00:00:00\n",
    );
    write(
        &d.join("webshop/accounts.jsonl"),
        "{\"account_id\":\"A1\",\"email\":\"Anna@Ziggo.nl\",\"first_name\":\"Anna\",\"last_name\":\"de Vries\",\"created_at\":\"2025-01-01T00:00:00Z\"}\n\
         {\"account_id\":\"A3\",\"email\":\"carla@gmail.com\",\"first_name\":\"Carla\",\"last_name\":\"Smit\",\"created_at\":\"2026-10-01T00:00:00Z\"}\n",
    );
    let orders = Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, false),
        Field::new("order_ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("amount_eur", DataType::Decimal128(12, 2), false),
        Field::new("category", DataType::Utf8, true),
    ]);
    write_parquet(
        &d.join("webshop/orders.parquet"),
        RecordBatch::try_new(
            Arc::new(orders),
            vec![
                Arc::new(StringArray::from(vec!["O1", "O2", "O3", "O4", "O5"])),
                Arc::new(StringArray::from(vec!["A1", "A1", "A1", "A3", "A3"])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        micros("2026-11-12T12:00:00Z"),
                        micros("2026-10-23T12:00:00Z"),
                        micros("2025-11-22T12:00:00Z"),
                        micros("2026-11-01T12:00:00Z"),
                        micros("2026-11-03T12:00:00Z"),
                    ])
                    .with_timezone("UTC"),
                ),
                // Carla's refund of 100 euro is for an order from before the dump's history.
                Arc::new(
                    Decimal128Array::from(vec![10000, 5000, 3000, 8000, -10000])
                        .with_precision_and_scale(12, 2)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(vec!["kleding", "kleding", "wonen", "sport", "sport"])),
            ],
        )
        .unwrap(),
    );
    write(
        &d.join("pos/loyalty_cards.csv"),
        "card_number,full_name,postcode,phone,enrolled_on\n100,Anna de Vries,1234AB,0611111111,2024-05-01\n",
    );
    // Anna returns something at the till: a refund, not a fifth purchase.
    write(
        &d.join("pos/transactions.csv"),
        "card_number,store_id,ts,amount_eur\n100,W001,2026-11-20 12:00:00,20.00\n100,W001,2026-11-21 10:00:00,-30.00\n",
    );
    write(
        &d.join("service/tickets.jsonl"),
        "{\"ticket_id\":\"T1\",\"caller_name\":\"Anna de Vries\",\"caller_email\":\"anna@ziggo.nl\",\"opened_at\":\"2026-11-15T10:00:00Z\",\"topic\":\"retour\",\"csat\":4}\n\
         {\"ticket_id\":\"T2\",\"caller_name\":\"Bob Bakker\",\"caller_phone\":\"+31628473619\",\"opened_at\":\"2026-01-10T12:00:00Z\",\"topic\":\"levering\"}\n",
    );
    write(
        &d.join("email/subscribers.csv"),
        "subscriber_id,email,first_name,subscribed_at\nS1,anna@ziggo.nl,Anna,2025-03-01T00:00:00\n",
    );
    write(
        &d.join("email/events.csv"),
        "subscriber_id,campaign_id,event,ts\n\
         S1,CMP1,sent,2026-11-01T08:00:00\nS1,CMP1,open,2026-11-02T09:00:00\nS1,CMP1,click,2026-11-02T09:01:00\n\
         S1,CMP2,sent,2026-11-08T08:00:00\n",
    );
    let sessions = Schema::new(vec![
        Field::new("session_id", DataType::Utf8, false),
        Field::new("cookie_id", DataType::Utf8, false),
        Field::new("logged_in_account_id", DataType::Utf8, true),
        Field::new("started_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("viewed_category", DataType::Utf8, true),
        Field::new("downloaded_brochure", DataType::Boolean, false),
        Field::new("requested_demo", DataType::Boolean, false),
    ]);
    write_parquet(
        &d.join("web/sessions.parquet"),
        RecordBatch::try_new(
            Arc::new(sessions),
            vec![
                Arc::new(StringArray::from(vec!["W1", "W2"])),
                Arc::new(StringArray::from(vec!["ck1", "ck2"])),
                Arc::new(StringArray::from(vec![Some("A1"), None])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        micros("2026-11-21T12:00:00Z"),
                        micros("2026-11-21T13:00:00Z"),
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec![Some("kleding"), Some("tuin")])),
                Arc::new(BooleanArray::from(vec![true, true])),
                Arc::new(BooleanArray::from(vec![false, false])),
            ],
        )
        .unwrap(),
    );
    d
}

fn run_fixture(pipeline: &Path, input: &Path, output: &Path) -> std::process::Output {
    run_pipeline(pipeline, input, output, &["--var", "run_date=2026-11-22"])
}

#[tokio::test]
async fn models_match_values_worked_out_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture(dir.path());
    let output = dir.path().join("out");
    let out = run_fixture(&retail_yaml(), &input, &output);
    assert!(out.status.success(), "{}", stderr(&out));

    let rows = query(
        &output,
        &["customers_enriched", "customer_xref"],
        "SELECT x.source_record_id AS rec, e.* FROM customers_enriched e \
         JOIN customer_xref x ON x.customer_id = e.customer_id AND x.source_record_id IN ('C1', 'C2', 'A3')",
    )
    .await;
    let text = pretty_format_batches(&rows).unwrap().to_string();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 3, "{text}");
    let get = |rec: &str, col: &str| -> String {
        for b in &rows {
            let recs = datafusion::arrow::compute::cast(b.column_by_name("rec").unwrap(), &DataType::Utf8).unwrap();
            let recs = recs.as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                if recs.value(i) == rec {
                    let c = b.column_by_name(col).unwrap_or_else(|| panic!("no column {col}"));
                    return datafusion::arrow::util::display::array_value_to_string(c, i).unwrap();
                }
            }
        }
        panic!("no record {rec}\n{text}")
    };

    // Anna: four purchases (three web, one shop), 100 + 50 + 30 + 20 euro.
    assert_eq!(get("C1", "frequency"), "4");
    assert_eq!(get("C1", "monetary_eur"), "200.00");
    // ... less the 30 euro refunded.
    assert_eq!(get("C1", "refunds_eur"), "30.00");
    assert_eq!(get("C1", "historical_revenue_eur"), "170.00");
    assert_eq!(get("C1", "average_order_value_eur"), "50.00");
    // Last purchase 2026-11-20 12:00; the run date ends at 2026-11-23 00:00: 2.5 days.
    assert_eq!(get("C1", "recency_days"), "2");
    // Last sign of life: the web session of 2026-11-21 12:00, 1.5 days before.
    assert_eq!(get("C1", "last_sign_of_life_channel"), "web_session");
    assert_eq!(get("C1", "days_since_last_sign_of_life"), "1");
    assert_eq!(get("C1", "churn_risk"), "low");
    assert_eq!(get("C1", "emails_received"), "2");
    assert_eq!(get("C1", "emails_opened"), "1");
    assert_eq!(get("C1", "open_rate"), "0.5");
    assert_eq!(get("C1", "click_rate"), "0.5");
    assert_eq!(get("C1", "unsubscribed"), "false");
    assert_eq!(get("C1", "preferred_channel"), "web");
    assert_eq!(get("C1", "favourite_category"), "kleding");
    assert_eq!(get("C1", "cohort_month"), "2025-11-01");
    assert_eq!(get("C1", "downloaded_brochure_30d"), "true");
    assert_eq!(get("C1", "requested_demo_30d"), "false");
    // CLV: Anna bought last year and this year, so retention is 1, capped at 0.95;
    // q = 0.95 / 1.10; lifetime q / (1 - q); tenure 365.5 days; margin 0.30.
    let q: f64 = 0.95 / 1.10;
    let lifetime = q / (1.0 - q);
    let per_year = 4.0 / (365.5 / 365.0);
    let clv = 50.0 * per_year * 0.30 * lifetime;
    assert_eq!(get("C1", "predicted_clv_eur"), format!("{clv:.2}"));
    assert_eq!(get("C1", "expected_lifetime_years"), format!("{}", (lifetime * 1000.0).round() / 1000.0));
    // Two buyers, so quintile scores are 1 and 2: Anna is the more recent, frequent and
    // higher-spending one.
    assert_eq!(get("C1", "rfm_score"), "222");
    assert_eq!(get("C1", "segment"), "hibernating");

    // Carla: one order on 2026-11-01, her first: new.
    assert_eq!(get("A3", "frequency"), "1");
    assert_eq!(get("A3", "rfm_score"), "111");
    assert_eq!(get("A3", "segment"), "new");
    assert_eq!(get("A3", "cohort_month"), "2026-11-01");
    // Her refund of an older order exceeds what she bought here: revenue is negative, the
    // run publishes, and her order value and predicted value come from purchases only.
    assert_eq!(get("A3", "refunds_eur"), "100.00");
    assert_eq!(get("A3", "historical_revenue_eur"), "-20.00");
    assert_eq!(get("A3", "average_order_value_eur"), "80.00");
    assert!(!get("A3", "predicted_clv_eur").starts_with('-'));

    // Bob: never bought; his only sign of life is a call on 2026-01-10 12:00.
    assert_eq!(get("C2", "frequency"), "0");
    assert_eq!(get("C2", "segment"), "prospect");
    assert_eq!(get("C2", "days_since_last_sign_of_life"), "316");
    assert_eq!(get("C2", "churn_risk"), "high");
    assert_eq!(get("C2", "predicted_clv_eur"), "0.00");

    // The anonymous session is no one's.
    let customers = scalar(&output, &["customers"], "SELECT count(*) FROM customers").await;
    assert_eq!(customers, 3);
}

/// A copy of the SQL models in a temporary folder, changed, and a pipeline pointing at it.
fn with_models(dir: &Path, change: impl Fn(&Path)) -> PathBuf {
    let sql = dir.join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    for e in std::fs::read_dir(repo().join("sql")).unwrap().flatten() {
        std::fs::copy(e.path(), sql.join(e.file_name())).unwrap();
    }
    change(&sql);
    let sql_path = sql.display().to_string();
    let repo_sql = format!("  path: {}", repo().join("sql").display());
    pipeline_variant(dir, move |t| t.replace(&repo_sql, &format!("  path: {sql_path}")))
}

fn published_fixture(dir: &Path) -> (PathBuf, PathBuf, String) {
    let input = fixture(dir);
    let output = dir.join("out");
    assert!(run_fixture(&retail_yaml(), &input, &output).status.success());
    let manifest = std::fs::read_to_string(output.join("_manifest.json")).unwrap();
    (input, output, manifest)
}

#[test]
fn a_cycle_names_its_files_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output, manifest) = published_fixture(dir.path());
    let p = with_models(dir.path(), |sql| {
        std::fs::write(sql.join("aa.sql"), "SELECT * FROM bb").unwrap();
        std::fs::write(sql.join("bb.sql"), "SELECT * FROM aa").unwrap();
    });
    let out = run_fixture(&p, &input, &output);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("models form a cycle:") && err.contains("aa.sql ->") && err.contains("bb.sql ->"), "{err}");
    assert_eq!(std::fs::read_to_string(output.join("_manifest.json")).unwrap(), manifest);
    let plan = klantbeeld(&["plan", p.to_str().unwrap()]);
    assert_eq!(plan.status.code(), Some(2));
}

#[test]
fn a_sql_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output, manifest) = published_fixture(dir.path());
    let p = with_models(dir.path(), |sql| {
        std::fs::write(sql.join("rfm.sql"), "SELECT customer_id, no_such_column FROM purchases").unwrap();
    });
    let out = run_fixture(&p, &input, &output);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("rfm.sql: ") && err.contains("no_such_column"), "{err}");
    assert_eq!(std::fs::read_to_string(output.join("_manifest.json")).unwrap(), manifest);
}

#[test]
fn a_failing_data_test_reports_offending_rows_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output, manifest) = published_fixture(dir.path());
    let p = pipeline_variant(dir.path(), |t| {
        t.replace("  path: ../sql", &format!("  path: {}", repo().join("sql").display())).replace(
            "      - expression: predicted_clv_eur >= 0 AND refunds_eur >= 0",
            "      - expression: frequency >= 1",
        )
    });
    let out = run_fixture(&p, &input, &output);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("1 of ") && err.contains("customers_enriched: expression(frequency >= 1)"), "{err}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("FAIL customers_enriched: expression(frequency >= 1) (1 offending)"), "{report}");
    assert!(report.contains("Bakker"), "the sample shows Bob's row: {report}");
    assert_eq!(std::fs::read_to_string(output.join("_manifest.json")).unwrap(), manifest);
    // `klantbeeld test` runs the same tests on what is published: it was fine then, and
    // the changed test now fails on it too.
    let ok = klantbeeld(&["test", retail_yaml().to_str().unwrap(), "--var", &format!("output={}", output.display())]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bad = klantbeeld(&["test", p.to_str().unwrap(), "--var", &format!("output={}", output.display())]);
    assert_eq!(bad.status.code(), Some(4));
}

/// The sources that models read are kept with only the columns models read, and a
/// data test on such a source still sees all of its columns: a test of the orders' own id,
/// which no model reads, runs and passes, and one that fails on it names its rows.
#[test]
fn a_data_test_on_a_source_sees_every_column_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture(dir.path());
    let tested = |test: &'static str| {
        move |t: String| t.replace("  tests:\n    rfm:", &format!("  tests:\n    orders:\n      - {test}\n    rfm:"))
    };
    let p = pipeline_variant(
        dir.path(),
        tested("expression: order_id LIKE 'O%' AND account_id = 'A1' OR order_id IN ('O4', 'O5')"),
    );
    let out = run_fixture(&p, &input, &dir.path().join("out"));
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(dir.path().join("out/_manifest.json")).unwrap();
    assert!(
        manifest.contains("expression(order_id LIKE 'O%' AND account_id = 'A1' OR order_id IN ('O4', 'O5'))"),
        "{manifest}"
    );
    let p = pipeline_variant(dir.path(), tested("expression: order_id <> 'O4'"));
    let out = run_fixture(&p, &input, &dir.path().join("out2"));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("FAIL orders: expression(order_id <> 'O4') (1 offending)"), "{report}");
}

#[tokio::test]
async fn a_model_built_in_batches_equals_the_model_built_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, 1500, 9, false);
    let (one, four) = (dir.path().join("one"), dir.path().join("four"));
    run_retail(&data.join("dumps"), &one, &["--var", "model_batches=1"]);
    run_retail(&data.join("dumps"), &four, &["--var", "model_batches=4"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(four.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model_batches"]["customers_enriched"], 4);
    assert_same_tables(&one, &four, &["customers_enriched"]).await;
    // Every batch holds some customers: the key spreads, no batch is the whole table.
    let files = std::fs::read_dir(four.join("customers_enriched")).unwrap().count();
    assert!(files >= 4, "{files} files");
}

#[test]
fn a_batched_model_must_exist_and_read_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output, manifest) = published_fixture(dir.path());
    let unknown = pipeline_variant(dir.path(), |t| {
        t.replace("customers_enriched: { by: customer_id", "customer_enriched: { by: customer_id")
    });
    let out = run_fixture(&unknown, &input, &output);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("models.batched: `customer_enriched` is not a model"), "{}", stderr(&out));
    let no_key = pipeline_variant(dir.path(), |t| t.replace("{ by: customer_id", "{ by: klant_nummer"));
    let out = run_fixture(&no_key, &input, &output);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("customers_enriched.sql: batched by `klant_nummer`, a column none of its tables has"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(output.join("_manifest.json")).unwrap(), manifest);
}
