//! What a scheduler relies on: JSON logs carrying the run id, no secret in logs or the
//! manifest, documented exit codes, idempotent re-runs of one date.

mod common;

use common::*;

#[test]
fn json_logs_carry_the_run_id_and_no_secret_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 200, 2, false);
    let p =
        pipeline_variant(dir.path(), |t| t.replace("description: Golden", "description: token ${api_token} Golden"));
    let secret_key = "verysecret-key-0123456789";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args([
            "--log-format",
            "json",
            "run",
            p.to_str().unwrap(),
            "--var",
            &format!("input={}", input.join("dumps").display()),
            "--var",
            &format!("output={}", output.display()),
            "--var",
            "api_token=hush-hush-42",
        ])
        .env("KLANTBEELD_LOG", "debug")
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest_text = std::fs::read_to_string(output.join("_manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest_text).unwrap();
    let run_id = manifest["run_id"].as_str().unwrap();
    let log = stderr(&out);
    let mut ours = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        // Every line names the run, the engine's own lines included.
        assert_eq!(v["run_id"], run_id, "{line}");
        if v["span"]["run_id"] == run_id {
            ours += 1;
        }
    }
    assert!(ours > 5, "{log}");
    for secret in [secret_key, "hush-hush-42"] {
        assert!(!log.contains(secret), "secret in the log");
        assert!(!manifest_text.contains(secret), "secret in the manifest");
    }
    assert_eq!(manifest["vars"]["api_token"], "***");
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 150, 6, false);
    let run = |output: &std::path::Path| run_pipeline(&retail_yaml(), &input.join("dumps"), output, &[]);
    assert_eq!(run(&output).status.code(), Some(0));
    // 1: anything else, here an output that cannot be written (a file is in the way).
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let out = run(&blocker.join("out"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("blocked"), "{}", stderr(&out));
    // 1 as well: a memory limit the work does not fit in, with a hint what to change; the
    // output published above stays.
    let before = std::fs::read_to_string(output.join("_manifest.json")).unwrap();
    let out = run_pipeline(&retail_yaml(), &input.join("dumps"), &output, &["--memory-limit", "64KB"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint: raise `engine.memory_limit`"), "{}", stderr(&out));
    // ... and which operators held the memory, so that the user sees the step that needs it.
    assert!(stderr(&out).contains("top memory consumers"), "{}", stderr(&out));
    assert!(stderr(&out).lines().any(|l| l.contains("consumed")), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(output.join("_manifest.json")).unwrap(), before);
    // 2: configuration.
    assert_eq!(klantbeeld(&["validate", "/nonexistent/pipeline.yaml"]).status.code(), Some(2));
    assert_eq!(klantbeeld(&["run", retail_yaml().to_str().unwrap(), "--var", "broken"]).status.code(), Some(2));
    // 3: input.
    let out = klantbeeld(&[
        "run",
        retail_yaml().to_str().unwrap(),
        "--var",
        "input=/nonexistent",
        "--var",
        &format!("output={}", output.display()),
    ]);
    assert_eq!(out.status.code(), Some(3));
}

/// Two runs of one date over the same dumps publish the same tables, down to the edges'
/// scores and the fitted model (the engine returns groups in any order).
#[tokio::test]
async fn rerunning_a_date_gives_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let (input, first, second) = (dir.path().join("data"), dir.path().join("first"), dir.path().join("second"));
    generate(&input, 1500, 12, false);
    let args = ["--var", "run_date=2026-11-22"];
    run_retail(&input.join("dumps"), &first, &args);
    run_retail(&input.join("dumps"), &second, &args);
    assert_same_tables(&first, &second, &["customer_xref", "customers_enriched", "match_edges"]).await;
    let model = |dir: &std::path::Path| std::fs::read_to_string(dir.join("_model.json")).unwrap();
    assert_eq!(model(&first), model(&second));
    // Rerun into the same output: nothing changes for any customer.
    run_retail(&input.join("dumps"), &first, &args);
    assert_eq!(scalar(&first, &["customer_changes"], "SELECT count(*) FROM customer_changes").await, 0);
}

#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 100, 7, false);
    // stderr is a pipe here, as it is for cron or a redirected log file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args(["run", retail_yaml().to_str().unwrap()])
        .args(["--var", &format!("input={}", input.join("dumps").display())])
        .args(["--var", &format!("output={}", output.display())])
        .env("KLANTBEELD_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("stage finished"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape codes in a log file: {err}");
}

#[test]
fn test_uses_the_engine_options_of_the_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 300, 8, false);
    run_retail(&input.join("dumps"), &output, &[]);
    let out_var = format!("output={}", output.display());
    let ok = klantbeeld(&["test", retail_yaml().to_str().unwrap(), "--var", &out_var]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // The same tests in a memory limit they cannot fit: `test` runs in the YAML's engine.
    let tiny = klantbeeld(&["test", retail_yaml().to_str().unwrap(), "--var", &out_var, "--var", "memory_limit=16KB"]);
    assert_eq!(tiny.status.code(), Some(1), "{}", stderr(&tiny));
    assert!(stderr(&tiny).contains("hint: raise `engine.memory_limit`"), "{}", stderr(&tiny));
}
