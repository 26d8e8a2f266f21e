//! Bad input: each case gives one clear line on stderr naming the file (and line or
//! record), a non-zero exit, no panic, and leaves the previous published output as it was.

mod common;

use std::path::Path;

use common::*;

/// Generated dumps plus a published first run to protect.
fn published(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (input, output) = (dir.join("data"), dir.join("out"));
    generate(&input, 300, 3, false);
    run_retail(&input.join("dumps"), &output, &[]);
    (input.join("dumps"), output)
}

fn run_id(output: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    m["run_id"].as_str().unwrap().to_string()
}

/// Runs the retail pipeline expecting failure; returns (exit code, stderr).
fn fail(pipeline: &Path, input: &Path, output: &Path) -> (i32, String) {
    let out = run_pipeline(pipeline, input, output, &[]);
    assert!(!out.status.success(), "run should fail");
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line on stderr: {err}");
    (out.status.code().unwrap(), err)
}

fn assert_untouched(output: &Path, before: &str) {
    assert_eq!(run_id(output), before, "previous output was replaced");
    assert!(output.join("_SUCCESS").exists());
    assert!(output.join("customers").is_dir());
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_variant(dir.path(), |t| t.replace("  crm:\n", "  crm: [\n"));
    let out = klantbeeld(&["validate", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("klantbeeld: {}:", p.display())), "{err}");
}

#[test]
fn unknown_key_suggests_the_near_miss() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_variant(dir.path(), |t| t.replacen("    key: klant_id", "    kye: klant_id", 1));
    let out = klantbeeld(&["validate", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unknown key `kye`") && err.contains("did you mean `key`?"), "{err}");
    let line = std::fs::read_to_string(&p).unwrap().lines().position(|l| l.contains("kye:")).unwrap() + 1;
    assert!(err.contains(&format!(":{line}:")), "line {line} in {err}");
}

#[test]
fn unset_variable_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_variant(dir.path(), |t| t.replace("name: retail", "name: retail-${run_date}"));
    let out = klantbeeld(&["validate", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--var run_date="), "{}", stderr(&out));
    let ok = klantbeeld(&["validate", p.to_str().unwrap(), "--var", "run_date=2026-11-22"]);
    assert!(ok.status.success());
}

#[test]
fn missing_input_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (_, output) = published(dir.path());
    let before = run_id(&output);
    let (code, err) = fail(&retail_yaml(), &dir.path().join("nowhere"), &output);
    assert_eq!(code, 3);
    assert!(err.contains("no file matches") && err.contains("nowhere/crm/contacts*.csv"), "{err}");
    assert_untouched(&output, &before);
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn unterminated_quote_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = run_id(&output);
    let file = input.join("crm/contacts_1.csv");
    let line = std::fs::read_to_string(&file).unwrap().lines().count() + 1;
    append(&file, b"C9999999;\"Jan;;Vries;;;;;;;;\n");
    let (code, err) = fail(&retail_yaml(), &input, &output);
    assert_eq!(code, 3);
    assert!(err.contains(&format!("contacts_1.csv:{line}:")) && err.contains("unterminated quote"), "{err}");
    assert_untouched(&output, &before);
}

/// The largest dumps are checked first, but the error a user reads is still the first bad
/// source in the YAML, the same on every run.
#[test]
fn with_two_bad_sources_the_first_in_the_yaml_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = run_id(&output);
    let first = input.join("crm/contacts_1.csv");
    let last = input.join("email/events.csv");
    assert!(std::fs::metadata(&last).unwrap().len() > 2 * std::fs::metadata(&first).unwrap().len());
    let line = std::fs::read_to_string(&first).unwrap().lines().count() + 1;
    append(&first, b"C9999999;\"Jan;;Vries;;;;;;;;\n");
    append(&last, b"E9999999,\"open\n");
    let (code, err) = fail(&retail_yaml(), &input, &output);
    assert_eq!(code, 3);
    assert!(err.contains(&format!("contacts_1.csv:{line}:")), "{err}");
    assert_untouched(&output, &before);
}

#[test]
fn invalid_utf8_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = run_id(&output);
    let file = input.join("email/subscribers.csv");
    let line = std::fs::read_to_string(&file).unwrap().lines().count() + 1;
    append(&file, b"S9999999,jos@ziggo.nl,Jos\xe9,2024-01-01T00:00:00\n");
    let (code, err) = fail(&retail_yaml(), &input, &output);
    assert_eq!(code, 3);
    assert!(err.contains(&format!("subscribers.csv:{line}:")) && err.contains("UTF-8"), "{err}");
    assert_untouched(&output, &before);
}

#[test]
fn value_of_the_wrong_type_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = run_id(&output);
    let file = input.join("service/tickets.jsonl");
    let line = std::fs::read_to_string(&file).unwrap().lines().count() + 1;
    append(&file, b"{\"ticket_id\":\"T9999999\",\"caller_name\":\"Jan\",\"csat\":\"vijf\"}\n");
    let (code, err) = fail(&retail_yaml(), &input, &output);
    assert_eq!(code, 3);
    assert!(err.contains(&format!("tickets.jsonl:{line}:")) && err.contains("`vijf`"), "{err}");
    assert_untouched(&output, &before);
}

#[test]
fn empty_dump_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = run_id(&output);
    std::fs::write(input.join("pos/loyalty_cards.csv"), b"").unwrap();
    let (code, err) = fail(&retail_yaml(), &input, &output);
    assert_eq!(code, 3);
    assert!(err.contains("loyalty_cards.csv: file is empty"), "{err}");
    assert_untouched(&output, &before);
}

#[tokio::test]
async fn quarantine_sets_bad_rows_aside_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    append(&input.join("crm/contacts_1.csv"), b"C9999998;Piet;;Bakker\n;Kees;;Smit;;;;;;;;\n");
    let p = pipeline_variant(dir.path(), |t| {
        t.replacen("    key: klant_id\n", "    key: klant_id\n    on_bad_rows: quarantine\n", 1)
    });
    let out = klantbeeld(&[
        "run",
        p.to_str().unwrap(),
        "--var",
        &format!("input={}", input.display()),
        "--var",
        &format!("output={}", output.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(m["inputs"]["crm"]["rejected_rows"], 2);
    let rejected = query(&output, &["_rejected/crm"], "SELECT reason FROM \"_rejected/crm\" ORDER BY line").await;
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&rejected).unwrap().to_string();
    assert!(text.contains("fields") && text.contains("empty key"), "{text}");
    // The good rows are all there.
    let crm =
        scalar(&output, &["customer_xref"], "SELECT count(*) FROM customer_xref WHERE source_system = 'crm'").await;
    let lines = std::fs::read_to_string(input.join("crm/contacts_1.csv")).unwrap().lines().count()
        + std::fs::read_to_string(input.join("crm/contacts_2.csv")).unwrap().lines().count()
        - 2
        - 2;
    assert_eq!(crm as usize, lines);
}

/// A file whose every row is bad is set aside whole (none of its rows reaches the output,
/// not even through the file itself), while the other files of the source are read.
#[tokio::test]
async fn a_file_with_only_bad_rows_is_set_aside_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let header = std::fs::read_to_string(input.join("crm/contacts_1.csv")).unwrap().lines().next().unwrap().to_string();
    std::fs::write(input.join("crm/contacts_9.csv"), format!("{header}\nC9999998;Piet;;Bakker\n;Kees;;Smit;;;;;;;;\n"))
        .unwrap();
    std::fs::write(input.join("webshop/accounts_9.jsonl"), "{\"account_id\":\"A999\",\n{\"email\":\"x@y.nl\"}\n")
        .unwrap();
    let p = pipeline_variant(dir.path(), |t| {
        t.replace("    key: klant_id\n", "    key: klant_id\n    on_bad_rows: quarantine\n")
            .replace("    key: account_id\n", "    key: account_id\n    on_bad_rows: quarantine\n")
    });
    let out = run_pipeline(&p, &input, &output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(m["inputs"]["crm"]["rejected_rows"], 2);
    assert_eq!(m["inputs"]["webshop"]["rejected_rows"], 2);
    let rows = |file: &str| std::fs::read_to_string(input.join(file)).unwrap().lines().count();
    let crm =
        scalar(&output, &["customer_xref"], "SELECT count(*) FROM customer_xref WHERE source_system = 'crm'").await;
    assert_eq!(crm as usize, rows("crm/contacts_1.csv") + rows("crm/contacts_2.csv") - 2);
    let strays = scalar(
        &output,
        &["customer_xref"],
        "SELECT count(*) FROM customer_xref WHERE source_record_id IN ('C9999998', 'A999', '')",
    )
    .await;
    assert_eq!(strays, 0);
}

/// A source column misspelt under `identity:` is reported at its own YAML line and key,
/// with the engine's hint, not as an internal table's missing field; nothing is published.
#[test]
fn a_misspelt_identity_column_names_its_yaml_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = run_id(&output);
    let p = pipeline_variant(dir.path(), |t| t.replacen("      phone: telefoon\n", "      phone: telefon\n", 1));
    let line = std::fs::read_to_string(&p).unwrap().lines().position(|l| l == "      phone: telefon").unwrap() + 1;
    let (code, err) = fail(&p, &input, &output);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!(":{line}: key `sources.crm.identity.phone`")), "line {line}: {err}");
    // The wrong name, and the right one as the user wrote it in the dump's header.
    assert!(err.contains("telefon.") && err.contains("'telefoon'") && !err.contains("raw_crm"), "{err}");
    assert_untouched(&output, &before);
}

#[test]
fn killed_run_leaves_the_previous_output_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 20_000, 5, false);
    run_retail(&input.join("dumps"), &output, &[]);
    let before = run_id(&output);
    let manifest_before = std::fs::read(output.join("_manifest.json")).unwrap();
    let work = dir.path().join("work");
    // Entries of a folder, none when it does not exist (yet).
    let entries = |d: &std::path::Path| std::fs::read_dir(d).map(|r| r.flatten().count()).unwrap_or(0);
    // Staging folders beside the output that hold something: the publish stage is writing.
    let publishing = |root: &std::path::Path| {
        std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".staging-") && entries(&e.path()) > 0)
    };
    // Killed once while it works (its scratch folder has files) and once while it writes
    // the tables it would publish.
    for moment in ["working", "publishing"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
            .args([
                "-q",
                "run",
                "--work-dir",
                work.to_str().unwrap(),
                retail_yaml().to_str().unwrap(),
                "--var",
                &format!("input={}", input.join("dumps").display()),
                "--var",
                &format!("output={}", output.display()),
            ])
            .spawn()
            .unwrap();
        let reached = |c: &mut std::process::Child| loop {
            if c.try_wait().unwrap().is_some() {
                return false;
            }
            let there = match moment {
                "working" => {
                    std::fs::read_dir(&work).map(|r| r.flatten().any(|e| entries(&e.path()) > 0)).unwrap_or(false)
                }
                _ => publishing(dir.path()),
            };
            if there {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        assert!(reached(&mut child), "the run ended before it was {moment}");
        // SIGKILL: no cleanup of any kind runs.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(output.join("_SUCCESS").exists(), "killed while {moment}");
        assert_eq!(run_id(&output), before, "killed while {moment}");
        assert_eq!(std::fs::read(output.join("_manifest.json")).unwrap(), manifest_before, "killed while {moment}");
        let m: serde_json::Value = serde_json::from_slice(&manifest_before).unwrap();
        for table in m["tables"].as_object().unwrap().keys() {
            assert!(output.join(table).is_dir(), "{table} missing after a kill while {moment}");
        }
    }
    // The lock died with the process: the next run goes through and cleans up, the
    // killed runs' scratch folders included.
    run_retail(&input.join("dumps"), &output, &["-q", "--work-dir", work.to_str().unwrap()]);
    let scratch: Vec<_> = std::fs::read_dir(&work).unwrap().flatten().collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".staging-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_record_twice_in_the_dump_keeps_its_latest_row() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let file = input.join("crm/contacts_1.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(';').collect();
    let row: Vec<String> = text.lines().nth(1).unwrap().split(';').map(String::from).collect();
    let key = row[header.iter().position(|h| *h == "klant_id").unwrap()].clone();
    // The same contact again, changed later, with a new e-mail address.
    let mut newer = row.clone();
    newer[header.iter().position(|h| *h == "email").unwrap()] = "nieuw.adres@ziggo.nl".into();
    newer[header.iter().position(|h| *h == "gewijzigd_op").unwrap()] = "2026-11-21T09:00:00".into();
    append(&file, format!("{}\n", newer.join(";")).as_bytes());
    run_retail(&input, &output, &[]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(m["inputs"]["crm"]["repeated_keys"], 1);
    let n = scalar(
        &output,
        &["customer_xref"],
        &format!("SELECT count(*) FROM customer_xref WHERE source_record_id = '{key}'"),
    )
    .await;
    assert_eq!(n, 1);
    let email = query(
        &output,
        &["customers", "customer_xref"],
        &format!("SELECT c.email FROM customers c JOIN customer_xref x ON x.customer_id = c.customer_id WHERE x.source_record_id = '{key}'"),
    )
    .await;
    let email = datafusion::arrow::util::display::array_value_to_string(email[0].column(0), 0).unwrap();
    assert_eq!(email, "nieuw.adres@ziggo.nl");
}
