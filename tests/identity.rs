//! Identity resolution end to end: the traps built by hand, and stable ids from day one to
//! day two.

mod common;

use std::path::Path;

use common::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Only the identity sources; the facts are optional here.
fn identity_only(dir: &Path) -> std::path::PathBuf {
    pipeline_variant(dir, |t| {
        let mut out = String::new();
        for line in t.lines() {
            out.push_str(line);
            out.push('\n');
            if line.contains("belongs_to:") {
                out.push_str("    optional: true\n");
            }
        }
        out.replace("      - match_rate: { min: 0.2, max: 0.95 }\n", "")
    })
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
    assert!(
        apart.contains("name_and_postcode: candidate pair, but they conflict on first_name, birth_date"),
        "{apart}"
    );
    let one = explain(&["crm:C5"]);
    assert!(one.contains("records of") && one.contains("webshop:A2"), "{one}");
    // Every edge is explained in match_edges, with its decision.
    let edges = scalar(&output, &["match_edges"], "SELECT count(*) FROM match_edges WHERE decision = 'merged'").await;
    assert!(edges >= 4);
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
