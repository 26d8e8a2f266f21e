//! Identity resolution end to end: the traps built by hand, and stable ids from day one to
//! day two.

mod common;

use std::path::Path;

use common::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The retail pipeline without the match-rate test (the trap fixtures are tiny); the
/// facts are optional in it, and these fixtures have none.
fn identity_only(dir: &Path) -> std::path::PathBuf {
    pipeline_variant(dir, |t| t.replace("      - match_rate: { min: 0.2, max: 0.95 }\n", ""))
}

/// One unrelated record in each of the POS, e-mail and service dumps (every required
/// source has rows), for fixtures about CRM and webshop records.
fn unrelated_other_systems(d: &Path) {
    write(
        &d.join("pos/loyalty_cards.csv"),
        "card_number,full_name,postcode,phone,enrolled_on\n100,Kees Jansen,1000AA,,2024-05-01\n",
    );
    write(
        &d.join("email/subscribers.csv"),
        "subscriber_id,email,first_name,subscribed_at\nS1,kees@jansen.nl,Kees,2025-03-01T00:00:00\n",
    );
    write(&d.join("service/tickets.jsonl"), "{\"ticket_id\":\"T1\",\"caller_name\":\"Kees Jansen\"}\n");
}

/// Records built to fall into the classic traps.
fn traps(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("dumps");
    write(
        &d.join("crm/contacts.csv"),
        "klant_id;voornaam;tussenvoegsel;achternaam;email;telefoon;straat;huisnummer;postcode;woonplaats;geboortedatum;gewijzigd_op\n\
         C1;Jan;de;Vries;fam.devries@ziggo.nl;020-6245518;Kerkstraat;1;1234 AB;Utrecht;1961-04-12;2026-01-01T00:00:00\n\
         C2;Marie;de;Vries;fam.devries@ziggo.nl;020-6245518;Kerkstraat;1;1234 AB;Utrecht;1963-09-30;2026-01-01T00:00:00\n\
         C3;Jan;de;Vries;jan.devries@gmail.com;;Markt;9;9711 AA;Groningen;1950-01-01;2026-01-01T00:00:00\n\
         C4;Jan;de;Vries;jdv1985@hotmail.com;;Dorpsstraat;4;5611 BB;Eindhoven;1985-06-30;2026-01-01T00:00:00\n\
         C5;Petra;;Smit;petra.smit@kpnmail.nl;06-48213957;Lindelaan;3;3512 CC;Utrecht;1977-03-03;2026-01-01T00:00:00\n",
    );
    write(
        &d.join("webshop/accounts.jsonl"),
        "{\"account_id\":\"A1\",\"email\":\"FAM.DEVRIES@ziggo.nl\",\"first_name\":\"Marie\",\"last_name\":\"de Vries\"}\n\
         {\"account_id\":\"A2\",\"email\":\"p.smit@werk.nl\",\"first_name\":\"Petra\",\"last_name\":\"Smit\",\"phone\":\"+31 6 48213957\"}\n\
         {\"account_id\":\"A3\",\"email\":\"jan.devries@gmail.com\",\"first_name\":\"Jan\",\"last_name\":\"de Vries\"}\n",
    );
    write(
        &d.join("pos/loyalty_cards.csv"),
        "card_number,full_name,postcode,phone,enrolled_on\n100,J. de Vries,1234AB,0206245518,2024-05-01\n",
    );
    write(
        &d.join("service/tickets.jsonl"),
        "{\"ticket_id\":\"T1\",\"caller_name\":\"Jan de Vries\",\"caller_phone\":\"020 624 55 18\"}\n",
    );
    write(
        &d.join("email/subscribers.csv"),
        "subscriber_id,email,first_name,subscribed_at\nS1,fam.devries@ziggo.nl,,2025-03-01T00:00:00\nS2,jdv1985@hotmail.com,Jan,2025-03-01T00:00:00\n",
    );
    d
}

#[tokio::test]
async fn traps_do_not_merge_different_people() {
    let dir = tempfile::tempdir().unwrap();
    let input = traps(dir.path());
    let output = dir.path().join("out");
    let p = identity_only(dir.path());
    let out = klantbeeld(&[
        "run",
        p.to_str().unwrap(),
        "--var",
        &format!("input={}", input.display()),
        "--var",
        &format!("output={}", output.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let customer = |system: &'static str, id: &'static str| {
        let output = output.clone();
        async move {
            let rows = query(
                &output,
                &["customer_xref"],
                &format!("SELECT customer_id FROM customer_xref WHERE source_system = '{system}' AND source_record_id = '{id}'"),
            )
            .await;
            datafusion::arrow::util::display::array_value_to_string(rows[0].column(0), 0).unwrap()
        }
    };
    // A household mailbox and landline shared by Jan and Marie: never one customer.
    assert_ne!(customer("crm", "C1").await, customer("crm", "C2").await);
    // Marie's webshop account on the family mailbox goes with Marie.
    assert_eq!(customer("webshop", "A1").await, customer("crm", "C2").await);
    // A named ticket on the landline goes with Jan.
    assert_eq!(customer("service", "T1").await, customer("crm", "C1").await);
    // A nameless subscriber on the family mailbox could be either: joined to neither.
    let s1 = customer("email", "S1").await;
    assert_ne!(s1, customer("crm", "C1").await);
    assert_ne!(s1, customer("crm", "C2").await);
    // Three different Jan de Vries, born in 1961, 1950 and 1985: three customers.
    let jans = [customer("crm", "C1").await, customer("crm", "C3").await, customer("crm", "C4").await];
    assert!(jans[0] != jans[1] && jans[1] != jans[2] && jans[0] != jans[2], "{jans:?}");
    // ...each with his own records.
    assert_eq!(customer("webshop", "A3").await, jans[1]);
    assert_eq!(customer("email", "S2").await, jans[2]);
    // One person with two e-mail addresses, linked by her mobile.
    assert_eq!(customer("crm", "C5").await, customer("webshop", "A2").await);
    // The manifest counts what the rules did.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    let rules = m["match"]["rules"].as_array().unwrap();
    assert_eq!(rules[0]["rule"], "same_email");
    assert!(rules.iter().any(|r| r["merged"].as_u64().unwrap() > 0));
    assert!(m["match"]["cluster_sizes"].as_object().unwrap().contains_key("1"));
    // Explain: the chain that joins Marie's account to her CRM record...
    let explain = |records: &[&str]| {
        let mut args = vec!["explain".to_string(), p.display().to_string()];
        for v in [format!("input={}", input.display()), format!("output={}", output.display())] {
            args.extend(["--var".to_string(), v]);
        }
        for r in records {
            args.extend(["--record".to_string(), r.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = klantbeeld(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let joined = explain(&["webshop:A1", "crm:C2"]);
    assert!(joined.contains("are one customer through 1 merge(s)") && joined.contains("same_email"), "{joined}");
    // ...and why Jan and Marie, on one mailbox and one landline, are not one customer.
    let apart = explain(&["crm:C1", "crm:C2"]);
    assert!(apart.contains("are not joined"), "{apart}");
    assert!(
        apart.contains("same_email: equal (email=fam.devries@ziggo.nl") && apart.contains("conflict on first_name"),
        "{apart}"
    );
    // The probabilistic rule weighs them (other first names and birth dates count against).
    assert!(apart.contains("person: match weight") && apart.contains("first_name:else"), "{apart}");
    let one = explain(&["crm:C5"]);
    assert!(one.contains("records of") && one.contains("webshop:A2"), "{one}");
    // Every edge is explained in match_edges, with its decision.
    let edges = scalar(&output, &["match_edges"], "SELECT count(*) FROM match_edges WHERE decision = 'merged'").await;
    assert!(edges >= 4);
}

/// A previous crosswalk that this run's clusters merge, split, keep and drop.
#[tokio::test]
async fn ids_survive_merges_and_splits_as_documented() {
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let input = traps(dir.path());
    let output = dir.path().join("out");
    let previous = dir.path().join("previous.parquet");
    let rows = [
        ("K0000000001", "crm", "C1"),
        ("K0000000002", "service", "T1"), // Jan's ticket was a customer of its own
        ("K0000000003", "crm", "C3"),     // two different Jans were wrongly one customer
        ("K0000000003", "webshop", "A3"),
        ("K0000000003", "crm", "C4"),
        ("K0000000005", "crm", "C2"),
        ("K0000000005", "webshop", "A1"),
        ("K0000000009", "crm", "C99"), // gone today
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("source_system", DataType::Utf8, false),
        Field::new("source_record_id", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&previous).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let p = identity_only(dir.path());
    let out = klantbeeld(&[
        "run",
        p.to_str().unwrap(),
        "--var",
        &format!("input={}", input.display()),
        "--var",
        &format!("output={}", output.display()),
        "--previous",
        previous.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = |system: &'static str, rec: &'static str| {
        let output = output.clone();
        async move {
            let sql = format!(
                "SELECT customer_id FROM customer_xref WHERE source_system = '{system}' AND source_record_id = '{rec}'"
            );
            let rows = query(&output, &["customer_xref"], &sql).await;
            datafusion::arrow::util::display::array_value_to_string(rows[0].column(0), 0).unwrap()
        }
    };
    // Unchanged: Marie keeps her id.
    assert_eq!(id("crm", "C2").await, "K0000000005");
    // Merge: Jan's CRM record and ticket are one now; the older id survives.
    assert_eq!(id("crm", "C1").await, "K0000000001");
    assert_eq!(id("service", "T1").await, "K0000000001");
    // Split: the larger part keeps the id, the other part gets a new one.
    assert_eq!(id("crm", "C3").await, "K0000000003");
    let split = id("crm", "C4").await;
    assert!(split.as_str() > "K0000000009", "{split}");
    let changes = query(
        &output,
        &["customer_changes"],
        "SELECT customer_id, change, COALESCE(related_customer_id, '') FROM customer_changes ORDER BY customer_id, change",
    )
    .await;
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&changes).unwrap().to_string();
    assert!(text.contains("| K0000000002 | merged_into | K0000000001"), "{text}");
    assert!(text.contains(&format!("| {split} | split_from  | K0000000003")), "{text}");
    assert!(text.contains("| K0000000009 | deleted"), "{text}");
    assert!(text.contains("| new "), "{text}");
    // Ids never come back: new ones start above the highest id ever issued.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    assert!(m["customer_id_high_water"].as_u64().unwrap() > 9);
}

#[tokio::test]
async fn day_two_keeps_the_ids_of_unchanged_people() {
    let dir = tempfile::tempdir().unwrap();
    let (data, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&data, 3000, 21, true);
    run_retail(&data.join("dumps"), &output, &["--var", "run_date=2026-11-22"]);
    let day1 = dir.path().join("day1_xref");
    copy_dir(&output.join("customer_xref"), &day1);
    std::fs::copy(data.join("truth/truth.parquet"), dir.path().join("truth1.parquet")).unwrap();
    // Day two reads day one's crosswalk from the published output.
    run_retail(&data.join("day2/dumps"), &output, &["--var", "run_date=2026-11-23"]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    assert!(m["previous_crosswalk"].as_str().unwrap().ends_with("customer_xref"));

    let ctx = datafusion::prelude::SessionContext::new();
    let opts = datafusion::prelude::ParquetReadOptions::default;
    ctx.register_parquet("x1", &format!("{}/", day1.display()), opts()).await.unwrap();
    ctx.register_parquet("x2", &format!("{}/customer_xref/", output.display()), opts()).await.unwrap();
    ctx.register_parquet("t1", dir.path().join("truth1.parquet").to_str().unwrap(), opts()).await.unwrap();
    ctx.register_parquet("t2", data.join("day2/truth/truth.parquet").to_str().unwrap(), opts()).await.unwrap();
    ctx.register_parquet("changes", &format!("{}/customer_changes/", output.display()), opts()).await.unwrap();
    // Unchanged people: the same records on both days.
    let sql = "WITH r1 AS (SELECT person_id, string_agg(concat(source_system, ':', source_record_id), ',' ORDER BY source_system, source_record_id) AS recs FROM t1 GROUP BY person_id), \
               r2 AS (SELECT person_id, string_agg(concat(source_system, ':', source_record_id), ',' ORDER BY source_system, source_record_id) AS recs FROM t2 GROUP BY person_id), \
               same AS (SELECT r1.person_id FROM r1 JOIN r2 ON r1.person_id = r2.person_id AND r1.recs = r2.recs), \
               recs AS (SELECT t1.source_system, t1.source_record_id FROM t1 JOIN same ON same.person_id = t1.person_id) \
               SELECT count(*) AS records, sum(CASE WHEN x1.customer_id = x2.customer_id THEN 1 ELSE 0 END) AS kept \
               FROM recs JOIN x1 ON x1.source_system = recs.source_system AND x1.source_record_id = recs.source_record_id \
               JOIN x2 ON x2.source_system = recs.source_system AND x2.source_record_id = recs.source_record_id";
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let get = |i: usize| {
        let c = datafusion::arrow::compute::cast(batches[0].column(i), &datafusion::arrow::datatypes::DataType::Int64)
            .unwrap();
        use datafusion::arrow::array::AsArray;
        c.as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0)
    };
    let (records, kept) = (get(0), get(1));
    assert!(records > 3000, "{records}");
    let share = kept as f64 / records as f64;
    assert!(share >= 0.999, "only {kept} of {records} records of unchanged people kept their id ({share})");
    // New people got new ids; deleted records' customers are reported.
    let new = ctx.sql("SELECT count(*) FROM changes WHERE change = 'new'").await.unwrap().collect().await.unwrap();
    let new = datafusion::arrow::util::display::array_value_to_string(new[0].column(0), 0).unwrap();
    assert!(new.parse::<i64>().unwrap() > 0);
    // A second run of the same day changes nothing.
    let before = std::fs::read_to_string(output.join("_manifest.json")).unwrap();
    run_retail(&data.join("day2/dumps"), &output, &["--var", "run_date=2026-11-23"]);
    let rerun = scalar(&output, &["customer_changes"], "SELECT count(*) FROM customer_changes").await;
    assert_eq!(rerun, 0, "re-running day two must not change any id");
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(after["tables"]["customers"]["rows"], before["tables"]["customers"]["rows"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// External ids: the CRM stores the webshop account a contact belongs to, and that links
/// the two records even without any shared e-mail or phone.
#[tokio::test]
async fn external_ids_link_records_across_systems() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("crm.csv"), "id;naam;account\nC1;Jan Bakker;A7\nC2;Piet Smit;\n");
    write(&d.join("shop.csv"), "account_id,name,email\nA7,J. Bakker,jb@ziggo.nl\nA8,P. Smit,ps@ziggo.nl\n");
    let yaml = d.join("p.yaml");
    write(
        &yaml,
        "name: ext\noutput: out\nsources:\n  crm:\n    location: crm.csv\n    format: {type: csv, delimiter: \";\"}\n    key: id\n    identity: {full_name: naam}\n    external_ids: {webshop_account: account}\n  shop:\n    location: shop.csv\n    format: {type: csv}\n    key: account_id\n    identity: {full_name: name, email: email}\n    external_ids: {webshop_account: account_id}\nresolve:\n  rules:\n    - name: shop_account\n      type: external_id\n      id: webshop_account\n      unless_conflict: [first_name]\n",
    );
    let out = klantbeeld(&["run", yaml.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let output = d.join("out");
    let joined = scalar(
        &output,
        &["customer_xref"],
        "SELECT count(DISTINCT customer_id) FROM customer_xref WHERE source_record_id IN ('C1', 'A7')",
    )
    .await;
    assert_eq!(joined, 1);
    let rule =
        query(&output, &["customer_xref"], "SELECT matched_by FROM customer_xref WHERE source_record_id = 'C1'").await;
    assert_eq!(datafusion::arrow::util::display::array_value_to_string(rule[0].column(0), 0).unwrap(), "shop_account");
    let apart = scalar(
        &output,
        &["customer_xref"],
        "SELECT count(DISTINCT customer_id) FROM customer_xref WHERE source_record_id IN ('C2', 'A8')",
    )
    .await;
    assert_eq!(apart, 2);
}

/// Running the rules in passes (to fit a memory limit) must give the same fitted model,
/// customers, crosswalk and edges as one pass.
#[tokio::test]
async fn passes_give_the_same_result_as_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, 1500, 8, false);
    let (one, four) = (dir.path().join("one"), dir.path().join("four"));
    run_retail(&data.join("dumps"), &one, &["--var", "passes=1"]);
    run_retail(&data.join("dumps"), &four, &["--var", "passes=4"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(four.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["match"]["passes"], 4);
    let model = |out: &Path| std::fs::read_to_string(out.join("_model.json")).unwrap();
    assert_eq!(model(&one), model(&four), "the model estimated in four passes differs");
    assert_same_tables(&one, &four, &["customer_xref", "match_edges", "customers"]).await;
}

/// A record with first and last name the wrong way round (`Vries` / `Jan`) is read the
/// right way round when the data itself writes those names mostly in the other field: it
/// joins its person's record on the shared mailbox, and the golden record says Jan.
#[tokio::test]
async fn swapped_name_fields_are_read_the_right_way_round() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dumps");
    write(
        &d.join("crm/contacts.csv"),
        "klant_id;voornaam;tussenvoegsel;achternaam;email;telefoon;straat;huisnummer;postcode;woonplaats;geboortedatum;gewijzigd_op\n\
         C1;Jan;de;Vries;jan.devries@gmail.com;;Kerkstraat;1;1234 AB;Utrecht;1961-04-12;2026-01-01T00:00:00\n\
         C2;Piet;de;Vries;piet@vries.nl;;Markt;9;9711 AA;Groningen;1950-01-01;2026-01-01T00:00:00\n\
         C3;Anna;de;Vries;anna@vries.nl;;Dorpsstraat;4;5611 BB;Eindhoven;1985-06-30;2026-01-01T00:00:00\n\
         C4;Jan;;Smit;jan@smit.nl;;Lindelaan;3;3512 CC;Utrecht;1977-03-03;2026-01-01T00:00:00\n\
         C5;Jan;;Bakker;jan@bakker.nl;;Laan;5;3512 CD;Utrecht;1979-03-03;2026-01-01T00:00:00\n",
    );
    write(
        &d.join("webshop/accounts.jsonl"),
        "{\"account_id\":\"A1\",\"email\":\"jan.devries@gmail.com\",\"first_name\":\"Vries\",\"last_name\":\"Jan\"}\n",
    );
    unrelated_other_systems(&d);
    let p = identity_only(dir.path());
    let output = dir.path().join("out");
    let out = run_pipeline(&p, &d, &output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let joined = query(
        &output,
        &["customer_xref", "customers"],
        "SELECT c.first_name, c.last_name, count(*) FROM customer_xref x JOIN customers c USING (customer_id) \
         WHERE x.source_record_id IN ('C1', 'A1') GROUP BY 1, 2",
    )
    .await;
    let text = |i: usize| datafusion::arrow::util::display::array_value_to_string(joined[0].column(i), 0).unwrap();
    assert_eq!(joined[0].num_rows(), 1, "C1 and A1 are not one customer");
    assert_eq!((text(0), text(2)), ("Jan".to_string(), "2".to_string()));
}

/// A nickname the built-in list does not know (Janny for Adriana) joins its person's
/// record when this data writes the two names together on several mailboxes: the
/// first-name checks learn the pair from the data instead of refusing the merge.
#[tokio::test]
async fn nicknames_the_data_teaches_do_not_block_a_merge() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dumps");
    let surnames = ["Kok", "Bos", "Vos", "Mol"];
    let mut crm = String::from(
        "klant_id;voornaam;tussenvoegsel;achternaam;email;telefoon;straat;huisnummer;postcode;woonplaats;geboortedatum;gewijzigd_op\n",
    );
    let mut accounts = String::new();
    for (i, s) in surnames.iter().enumerate() {
        let mail = format!("{}{i}@mail.nl", s.to_lowercase());
        crm.push_str(&format!("C{i};Adriana;;{s};{mail};;Laan;{i};{}00 AA;Utrecht;;2026-01-01T00:00:00\n", 1000 + i));
        accounts.push_str(&format!(
            "{{\"account_id\":\"A{i}\",\"email\":\"{mail}\",\"first_name\":\"Janny\",\"last_name\":\"{s}\"}}\n"
        ));
    }
    write(&d.join("crm/contacts.csv"), &crm);
    write(&d.join("webshop/accounts.jsonl"), &accounts);
    unrelated_other_systems(&d);
    let p = identity_only(dir.path());
    let output = dir.path().join("out");
    let out = run_pipeline(&p, &d, &output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let joined = scalar(
        &output,
        &["customer_xref"],
        "SELECT count(*) FROM customer_xref a JOIN customer_xref b ON a.customer_id = b.customer_id \
         WHERE a.source_system = 'crm' AND b.source_system = 'webshop' \
         AND substr(a.source_record_id, 2) = substr(b.source_record_id, 2)",
    )
    .await;
    assert_eq!(joined, 4);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(m["match"]["learned_first_name_pairs"], 1);
}
