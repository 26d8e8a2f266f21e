//! The probabilistic rule: comparison levels whose weights are learned from the data
//! given (u from random pairs, m by EM over blocked pairs), published as `_model.json`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The retail pipeline with its hand-weighted rule replaced by a probabilistic one.
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

fn probabilistic_variant(dir: &Path, rule: &str) -> PathBuf {
    pipeline_variant(dir, |t| {
        let start = t.find("    # Same person at the same postcode").expect("the fuzzy rule");
        let end = t.find("\ngolden:").expect("golden section");
        format!("{}{rule}{}", &t[..start], &t[end..])
    })
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
    let lambda = model[0]["lambda"].as_f64().unwrap();
    assert!(lambda > 0.0 && lambda < 1.0, "{lambda}");
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
    assert!(detail.starts_with("prior(") && detail.contains("last_name:"), "{detail}");
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
