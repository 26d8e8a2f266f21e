//! The probabilistic rule: comparison levels whose weights are learned from the data
//! given (u from random pairs, m by EM over blocked pairs), published as `_model.json`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The retail pipeline with its probabilistic rule replaced by this one (the same, with
/// a veto on conflicting first names and birth dates).
const RULE: &str = "    # The same person, by weights learned from this data.
    - name: person
      type: probabilistic
      blocking:
        - [postcode]
        - [last_name_phonetic, first_initial]
        - [first_name_key, last_name_key]
      unless_conflict: [first_name, birth_date]
      comparisons:
        - { column: first_name_key, name: first_name, levels: [exact, {jaro_winkler: 0.92}, {jaro_winkler: 0.8}, initials] }
        - { column: last_name_core, name: last_name, levels: [exact, {jaro_winkler: 0.9}], term_frequency: true }
        - { column: birth_date, levels: [exact, {damerau_levenshtein: 1}] }
        - { column: postcode, levels: [exact] }
        - { column: house_number, levels: [exact] }
        - { column: email, levels: [exact] }
        - { column: phone, levels: [exact] }
      threshold: 0.99
";

/// The pipeline text with its probabilistic rule replaced by `rule`.
fn with_rule(t: &str, rule: &str) -> String {
    let start = t.find("    # The same person without a shared identifier").expect("the probabilistic rule");
    let end = t.find("\ngolden:").expect("golden section");
    format!("{}{rule}{}", &t[..start], &t[end..])
}

fn probabilistic_variant(dir: &Path, rule: &str) -> PathBuf {
    pipeline_variant(dir, |t| with_rule(&t, rule))
}

fn level_weight(model: &serde_json::Value, comparison: &str, level: &str) -> f64 {
    let c = model[0]["comparisons"].as_array().unwrap().iter().find(|c| c["name"] == comparison).unwrap();
    let l = c["levels"].as_array().unwrap().iter().find(|l| l["level"] == level).unwrap();
    l["weight"].as_f64().unwrap()
}

#[tokio::test]
async fn weights_are_learned_from_the_data_and_published_with_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 3000, 11, false);
    let p = probabilistic_variant(dir.path(), RULE);
    let out = run_pipeline(&p, &input.join("dumps"), &output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"], "_model.json");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_model.json")).unwrap()).unwrap();
    assert_eq!(model[0]["rule"], "person");
    // A prior per blocking rule: the share of the pairs it finds that are one person.
    let blocking = model[0]["blocking"].as_array().unwrap();
    assert_eq!(blocking.len(), 3);
    for b in blocking {
        let lambda = b["lambda"].as_f64().unwrap();
        assert!(lambda > 0.0 && lambda < 1.0 && b["em_pairs"].as_u64().unwrap() > 0, "{b}");
        assert!(b["pairs"].as_u64().unwrap() >= b["em_pairs"].as_u64().unwrap(), "{b}");
    }
    // The manifest gives the pairs each blocking rule made.
    let rule = manifest["match"]["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "person").unwrap();
    assert_eq!(rule["blocked_pairs"]["postcode"], blocking[0]["pairs"], "{rule}");
    // `plan --pairs` counts the same pairs before a run.
    let input_var = format!("input={}", input.join("dumps").display());
    let out = klantbeeld(&["plan", p.to_str().unwrap(), "--var", &input_var, "--pairs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planned = String::from_utf8_lossy(&out.stdout).to_string();
    for (b, key) in
        blocking.iter().zip(["postcode", "last_name_phonetic, first_initial", "first_name_key, last_name_key"])
    {
        let pairs = klantbeeld::progress::thousands(b["pairs"].as_u64().unwrap());
        assert!(planned.contains(&format!("blocking [{key}]: {pairs} pairs;")), "{key} {pairs}: {planned}");
    }
    assert!(model[0]["u_pairs"].as_u64().unwrap() > 100_000);
    // Agreement is evidence for, disagreement against; a near match in between.
    for (comparison, near) in [("last_name", "jaro_winkler>=0.9"), ("birth_date", "damerau_levenshtein<=1")] {
        let (exact, near, other) = (
            level_weight(&model, comparison, "exact"),
            level_weight(&model, comparison, near),
            level_weight(&model, comparison, "else"),
        );
        assert!(exact > near && near > other && exact > 0.0 && other < 0.0, "{comparison}: {exact} {near} {other}");
    }
    // Every level's m and u were estimated from this data (no blocking rule uses the
    // birth date, so its m comes from EM, not from the start).
    let birth = model[0]["comparisons"].as_array().unwrap().iter().find(|c| c["name"] == "birth_date").unwrap();
    assert!(birth["levels"].as_array().unwrap().iter().all(|l| l["m_estimated"] == true));
    // Its edges carry the probability and the weights that made it.
    let edges = query(
        &output,
        &["match_edges"],
        "SELECT min(score), count(*) FROM match_edges WHERE rule = 'person' AND decision = 'merged'",
    )
    .await;
    let min = datafusion::arrow::util::display::array_value_to_string(edges[0].column(0), 0).unwrap();
    assert!(min.parse::<f64>().unwrap() >= 0.99, "{min}");
    let detail = query(&output, &["match_edges"], "SELECT detail FROM match_edges WHERE rule = 'person' LIMIT 1").await;
    let detail = datafusion::arrow::util::display::array_value_to_string(detail[0].column(0), 0).unwrap();
    assert!(detail.starts_with("prior(") && detail.contains("blocked_on:"), "{detail}");
    // And the matching holds on this data.
    let ctx = datafusion::prelude::SessionContext::new();
    let truth =
        klantbeeld::storage::Location::parse(input.join("truth/truth.parquet").to_str().unwrap(), dir.path()).unwrap();
    let xref =
        klantbeeld::storage::Location::parse(output.join("customer_xref").to_str().unwrap(), dir.path()).unwrap();
    let e = klantbeeld::eval::evaluate(&ctx, &truth, &xref, &dir.path().join("eval")).await.unwrap();
    // Sanity floors (measured: P 0.965, R 0.928); quality is judged in the benchmark.
    assert!(e.precision >= 0.95 && e.recall >= 0.85, "{e}");
}

#[test]
fn a_level_is_checked_when_the_pipeline_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    for (wrong, says) in [
        ("[exakt]", "unknown level `exakt`"),
        ("[{jaro_winkler: 0.9, exact: true}]", "a level has one kind"),
        ("[{jaro_winkler: 1.5}]", "not a similarity between 0 and 1"),
    ] {
        let rule = RULE.replace("levels: [exact, {jaro_winkler: 0.9}]", &format!("levels: {wrong}"));
        let p = probabilistic_variant(dir.path(), &rule);
        let out = klantbeeld(&["validate", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{wrong}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{wrong}: {}", stderr(&out));
    }
    let p = probabilistic_variant(dir.path(), &RULE.replace("threshold: 0.99", "threshold: 6"));
    let out = klantbeeld(&["validate", p.to_str().unwrap()]);
    assert!(stderr(&out).contains("not a match probability"), "{}", stderr(&out));
}

/// The levels' m and u of a model file, in order.
fn m_and_u(path: &Path) -> Vec<(f64, f64)> {
    let model: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for c in model[0]["comparisons"].as_array().unwrap() {
        for l in c["levels"].as_array().unwrap() {
            out.push((l["m"].as_f64().unwrap(), l["u"].as_f64().unwrap()));
        }
    }
    out
}

/// `estimate` writes the model file; `resolve.model` pins it, so that a later run on other
/// data decides with those weights instead of estimating afresh; a pinned model that no
/// longer fits the rule is a configuration error.
#[tokio::test]
async fn a_model_estimated_once_decides_later_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (day1, day2) = (dir.path().join("day1"), dir.path().join("day2"));
    generate(&day1, 1500, 5, false);
    generate(&day2, 1500, 6, false);
    let p = probabilistic_variant(dir.path(), RULE);
    let model = dir.path().join("model.json");
    let input = format!("input={}", day1.join("dumps").display());
    let out = klantbeeld(&["estimate", p.to_str().unwrap(), "--var", &input, "--out", model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote the model of 1 rule(s)"));
    let estimated = m_and_u(&model);

    // Unpinned, the other day's data gives other estimates; pinned, the same weights.
    let (free, pinned) = (dir.path().join("free"), dir.path().join("pinned"));
    let out = run_pipeline(&p, &day2.join("dumps"), &free, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(m_and_u(&free.join("_model.json")), estimated);
    let p =
        pipeline_variant(dir.path(), |t| with_rule(&t.replace("resolve:\n", "resolve:\n  model: model.json\n"), RULE));
    let out = run_pipeline(&p, &day2.join("dumps"), &pinned, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(m_and_u(&pinned.join("_model.json")), estimated);

    // A rule changed since the estimate: the model does not fit it.
    let changed = std::fs::read_to_string(&p).unwrap().replace("{damerau_levenshtein: 1}", "{damerau_levenshtein: 2}");
    std::fs::write(&p, changed).unwrap();
    let out = klantbeeld(&["validate", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("another version of rule `person`"), "{}", stderr(&out));
    assert!(stderr(&out).contains("damerau_levenshtein<=2"), "{}", stderr(&out));
}

/// `explain` of two records that a probabilistic rule compared but did not join shows the
/// weighing: the prior of the blocking rule that found them, each level with its weight,
/// and the match probability against the threshold.
#[tokio::test]
async fn explain_weighs_a_pair_the_way_the_run_did() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 1500, 12, false);
    let p = probabilistic_variant(dir.path(), RULE);
    let out = run_pipeline(&p, &input.join("dumps"), &output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Two CRM records at one postcode that are two customers: a household.
    let ctx = datafusion::prelude::SessionContext::new();
    let crm = datafusion::prelude::CsvReadOptions::new().delimiter(b';').file_extension(".csv");
    ctx.register_csv("crm", &format!("{}/", input.join("dumps/crm").display()), crm).await.unwrap();
    ctx.register_parquet(
        "xref",
        &format!("{}/", output.join("customer_xref").display()),
        datafusion::prelude::ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    let pairs = ctx
        .sql(
            "WITH c AS (SELECT klant_id, upper(replace(postcode, ' ', '')) AS pc, x.customer_id FROM crm \
             JOIN xref x ON x.source_system = 'crm' AND x.source_record_id = klant_id WHERE postcode IS NOT NULL) \
             SELECT a.klant_id, b.klant_id FROM c a JOIN c b ON a.pc = b.pc AND a.klant_id < b.klant_id \
             WHERE a.customer_id <> b.customer_id ORDER BY 1, 2 LIMIT 1",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = |i: usize| datafusion::arrow::util::display::array_value_to_string(pairs[0].column(i), 0).unwrap();
    let (a, b) = (format!("crm:{}", text(0)), format!("crm:{}", text(1)));
    let output_var = format!("output={}", output.display());
    let input_var = format!("input={}", input.join("dumps").display());
    let out = klantbeeld(&[
        "explain",
        p.to_str().unwrap(),
        "--var",
        &input_var,
        "--var",
        &output_var,
        "--record",
        &a,
        "--record",
        &b,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let line = said.lines().skip_while(|l| !l.trim_start().starts_with("person:")).collect::<Vec<_>>().join("\n");
    assert!(line.contains("match weight") && line.contains("the threshold 0.99"), "{said}");
    assert!(line.contains("prior(") && line.contains("blocked_on:") && line.contains("first_name:"), "{said}");
    assert!(line.contains("is below the threshold") || line.contains("but they conflict on"), "{said}");
}

/// An attribute of the pipeline's own (`place`, from the CRM's town) is staged under its
/// name, and a probabilistic rule blocks on it and compares it like a built-in one; a
/// misspelt column or a name that a built-in column has is a configuration error.
#[tokio::test]
async fn attributes_of_your_own_block_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 1500, 13, false);
    let own = |attribute: &str, column: &str| {
        let rule = RULE
            .replace("        - [postcode]\n", &format!("        - [postcode]\n        - [{column}, last_name_phonetic]\n"))
            .replace(
                "        - { column: email, levels: [exact] }\n",
                &format!("        - {{ column: {column}, levels: [exact] }}\n        - {{ column: email, levels: [exact] }}\n"),
            );
        pipeline_variant(dir.path(), |t| {
            let t = t.replacen(
                "    identity:\n      first_name: voornaam\n",
                &format!(
                    "    attributes:\n      {attribute}: upper(woonplaats)\n    identity:\n      first_name: voornaam\n"
                ),
                1,
            );
            with_rule(&t, &rule)
        })
    };
    let p = own("place", "place");
    let out = run_pipeline(&p, &input.join("dumps"), &output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_model.json")).unwrap()).unwrap();
    let place = model[0]["comparisons"].as_array().unwrap().iter().find(|c| c["name"] == "place").unwrap();
    assert!(place["levels"].as_array().unwrap().iter().all(|l| l["m_estimated"] == true), "{place}");
    assert!(level_weight(&model, "place", "exact") > 0.0);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    let rule = manifest["match"]["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "person").unwrap();
    assert!(rule["blocked_pairs"]["place+last_name_phonetic"].as_u64().unwrap() > 0, "{rule}");

    let p = own("place", "plaats");
    let out = klantbeeld(&["validate", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown column `plaats`") && stderr(&out).contains("place"), "{}", stderr(&out));
    let p = own("first_name", "first_name");
    let out = klantbeeld(&["validate", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("attributes.first_name") && stderr(&out).contains("built-in column"),
        "{}",
        stderr(&out)
    );
}

/// `link_only: true` compares records of two different sources only: the CRM's own
/// duplicates, which the same rule joins without it, are left alone.
#[tokio::test]
async fn link_only_pairs_records_of_two_sources() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    generate(&input, 1500, 14, false);
    let same_source = "SELECT count(*) FROM match_edges WHERE rule = 'person' AND source_system_a = source_system_b";
    let mut counts = Vec::new();
    for (name, rule) in [
        ("dedupe", RULE.to_string()),
        ("link", RULE.replace("      threshold: 0.99\n", "      threshold: 0.99\n      link_only: true\n")),
    ] {
        let output = dir.path().join(name);
        let p = probabilistic_variant(dir.path(), &rule);
        let out = run_pipeline(&p, &input.join("dumps"), &output, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        counts.push(scalar(&output, &["match_edges"], same_source).await);
    }
    assert!(counts[0] > 0, "the fixture has no same-source pairs to leave alone");
    assert_eq!(counts[1], 0);
}
