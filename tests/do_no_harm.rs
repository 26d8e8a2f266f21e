//! Do no harm: klantbeeld never replaces what it did not write, never loses an input row
//! with exit 0, never prints a secret, and names what is wrong. Each test forces its case
//! and asserts what a user would check afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// Generated dumps plus a published first run to protect.
fn published(dir: &Path) -> (PathBuf, PathBuf) {
    let (input, output) = (dir.join("data"), dir.join("out"));
    generate(&input, 300, 3, false);
    run_retail(&input.join("dumps"), &output, &[]);
    (input.join("dumps"), output)
}

fn manifest(output: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(output.join("_manifest.json")).unwrap()).unwrap()
}

/// A failed run: its exit code and its one line on stderr.
fn failed(out: &Output) -> (i32, String) {
    let err = stderr(out);
    assert!(!out.status.success(), "the run should fail");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line on stderr: {err}");
    (out.status.code().unwrap(), err)
}

/// The previous publish is still there, whole and unchanged.
fn assert_untouched(output: &Path, run_id: &serde_json::Value) {
    assert_eq!(&manifest(output)["run_id"], run_id, "the previous output was replaced");
    assert!(output.join("_SUCCESS").exists());
    assert!(output.join("customers").is_dir());
}

/// Hidden staging folders or lock files that a run left beside `path`.
fn leftovers_beside(path: &Path) -> Vec<String> {
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".staging-"))
        .collect()
}

fn quarantine_variant(dir: &Path) -> PathBuf {
    pipeline_variant(dir, |t| t.replacen("    key: klant_id\n", "    key: klant_id\n    on_bad_rows: quarantine\n", 1))
}

#[test]
fn a_folder_of_someone_elses_files_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    generate(&input, 150, 4, false);
    let notes = dir.path().join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("thesis.txt"), "work").unwrap();
    let (code, err) = failed(&run_pipeline(&retail_yaml(), &input.join("dumps"), &notes, &[]));
    assert_eq!(code, 2);
    assert!(err.contains("`thesis.txt`") && err.contains("nothing was touched"), "{err}");
    assert_eq!(std::fs::read_to_string(notes.join("thesis.txt")).unwrap(), "work");
    assert_eq!(std::fs::read_dir(&notes).unwrap().count(), 1);
    assert!(leftovers_beside(&notes).is_empty());

    // A regular file at the output is not moved aside either.
    let file = dir.path().join("report.pdf");
    std::fs::write(&file, "pdf").unwrap();
    let (code, err) = failed(&run_pipeline(&retail_yaml(), &input.join("dumps"), &file, &[]));
    assert_eq!(code, 2);
    assert!(err.contains("is a file, not a folder"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "pdf");
    assert!(leftovers_beside(&file).is_empty());
}

#[test]
fn a_file_added_to_a_publish_is_not_deleted_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = manifest(&output)["run_id"].clone();
    std::fs::write(output.join("README.txt"), "mine").unwrap();
    let (code, err) = failed(&run_pipeline(&retail_yaml(), &input, &output, &[]));
    assert_eq!(code, 2);
    assert!(err.contains("`README.txt`") && err.contains("did not write"), "{err}");
    assert_eq!(std::fs::read_to_string(output.join("README.txt")).unwrap(), "mine");
    assert_untouched(&output, &before);
    // Without the stranger, the publish is replaced as usual.
    std::fs::remove_file(output.join("README.txt")).unwrap();
    run_retail(&input, &output, &[]);
    assert_ne!(manifest(&output)["run_id"], before);
}

#[test]
fn output_dot_is_the_current_folder() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    generate(&input, 150, 4, false);
    // The pipeline's own folder is not an empty output: refused, the YAML stays.
    let yaml_dir = dir.path().join("pipelines");
    std::fs::create_dir_all(&yaml_dir).unwrap();
    let p = pipeline_variant(&yaml_dir, |t| t);
    let run_in = |cwd: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
            .current_dir(cwd)
            .args(["run", p.to_str().unwrap(), "--var", &format!("input={}", input.join("dumps").display())])
            .args(["--var", "output=."])
            .env("KLANTBEELD_LOG", "warn")
            .output()
            .unwrap()
    };
    let (code, err) = failed(&run_in(&yaml_dir));
    assert_eq!(code, 2, "{err}");
    assert!(p.exists());
    // From an empty folder elsewhere, `.` publishes there, not beside the YAML.
    let here = dir.path().join("here");
    std::fs::create_dir_all(&here).unwrap();
    let out = run_in(&here);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(here.join("_SUCCESS").exists() && here.join("customers").is_dir());
    assert!(!yaml_dir.join("_SUCCESS").exists());
}

#[test]
fn a_mount_point_is_published_into_without_moving_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    generate(&input, 150, 4, false);
    let (volume, output) = (dir.path().join("volume"), dir.path().join("out"));
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::create_dir_all(&output).unwrap();
    // A private mount namespace: the bind mount (a container volume) lives as long as the
    // script, and the files land in `volume`.
    let bin = env!("CARGO_BIN_EXE_klantbeeld");
    let run = format!(
        "{bin} run {} --var input={} --var output={}",
        retail_yaml().display(),
        input.join("dumps").display(),
        output.display()
    );
    let script = format!(
        "set -e\nmount --bind {} {}\nmountpoint -q {}\n{run}\ncat {}/_manifest.json > {}/first.json\n{run}\n",
        volume.display(),
        output.display(),
        output.display(),
        output.display(),
        dir.path().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("KLANTBEELD_LOG", "warn")
        .output()
        .expect("unshare (util-linux) runs the mount test");
    assert!(out.status.success(), "{}", stderr(&out));
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("first.json")).unwrap()).unwrap();
    let second = manifest(&volume);
    assert_ne!(first["run_id"], second["run_id"], "the second run did not publish");
    assert!(volume.join("_SUCCESS").exists() && volume.join("customers").is_dir());
    // Nothing of the publishing is left behind in the volume.
    let mut names: Vec<String> =
        std::fs::read_dir(&volume).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert!(!names.iter().any(|n| n == "_staging" || n == "_lock"), "{names:?}");
    let mut expected: Vec<String> = second["tables"].as_object().unwrap().keys().cloned().collect();
    expected.extend(["_SUCCESS".to_string(), "_manifest.json".to_string()]);
    expected.extend(second["model"].as_str().map(String::from));
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn an_unterminated_quote_under_quarantine_fails_instead_of_swallowing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = manifest(&output)["run_id"].clone();
    let file = input.join("crm/contacts_1.csv");
    let mut lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(String::from).collect();
    lines[19] = lines[19].replacen(';', ";\"", 1);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let p = quarantine_variant(dir.path());
    let (code, err) = failed(&run_pipeline(&p, &input, &output, &[]));
    assert_eq!(code, 3);
    assert!(err.contains("contacts_1.csv: line 20: unterminated quote"), "{err}");
    assert_untouched(&output, &before);
}

#[test]
fn a_file_without_the_key_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = manifest(&output)["run_id"].clone();
    let file = input.join("crm/contacts_2.csv");
    let text = std::fs::read_to_string(&file).unwrap().replacen("klant_id", "klantnummer", 1);
    std::fs::write(&file, text).unwrap();
    for pipeline in [retail_yaml(), quarantine_variant(dir.path())] {
        let (code, err) = failed(&run_pipeline(&pipeline, &input, &output, &[]));
        assert_eq!(code, 3);
        assert!(err.contains("contacts_2.csv") && err.contains("no key column `klant_id`"), "{err}");
        assert_untouched(&output, &before);
    }
}

#[test]
fn a_required_dump_with_a_header_only_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = manifest(&output)["run_id"].clone();
    for name in ["contacts_1.csv", "contacts_2.csv"] {
        let file = input.join("crm").join(name);
        let header = std::fs::read_to_string(&file).unwrap().lines().next().unwrap().to_string();
        std::fs::write(&file, header + "\n").unwrap();
    }
    let (code, err) = failed(&run_pipeline(&retail_yaml(), &input, &output, &[]));
    assert_eq!(code, 3);
    assert!(err.contains("source `crm`") && err.contains("no row"), "{err}");
    assert_untouched(&output, &before);
}

#[test]
fn a_dangling_symlink_among_the_inputs_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = manifest(&output)["run_id"].clone();
    std::os::unix::fs::symlink(dir.path().join("gone.csv"), input.join("crm/contacts_3.csv")).unwrap();
    let (code, err) = failed(&run_pipeline(&retail_yaml(), &input, &output, &[]));
    assert_eq!(code, 3);
    assert!(err.contains("contacts_3.csv") && err.contains("symbolic link"), "{err}");
    assert_untouched(&output, &before);
}

/// Rewrites the orders Parquet file with the amount as text, one value not a number.
async fn orders_with_text_amount(input: &Path) -> String {
    use datafusion::prelude::*;
    let file = input.join("webshop/orders_1.parquet");
    let ctx = SessionContext::new();
    ctx.register_parquet("orders", file.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
    let bad_id = ctx
        .sql("SELECT min(order_id) FROM orders")
        .await
        .unwrap()
        .collect()
        .await
        .map(|b| datafusion::arrow::util::display::array_value_to_string(b[0].column(0), 0).unwrap())
        .unwrap();
    let rewritten = input.join("webshop/orders_2.parquet");
    let sql = format!(
        "COPY (SELECT * EXCLUDE (amount_eur), CASE WHEN order_id = '{bad_id}' THEN 'twaalf' \
         ELSE CAST(amount_eur AS VARCHAR) END AS amount_eur FROM orders) TO '{}' STORED AS PARQUET",
        rewritten.display()
    );
    ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    std::fs::remove_file(&file).unwrap();
    bad_id
}

#[tokio::test]
async fn text_that_is_no_number_in_a_parquet_column_is_never_a_silent_null() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = manifest(&output)["run_id"].clone();
    let rows_before = manifest(&output)["inputs"]["orders"]["rows"].as_u64().unwrap();
    orders_with_text_amount(&input).await;
    let (code, err) = failed(&run_pipeline(&retail_yaml(), &input, &output, &[]));
    assert_eq!(code, 3);
    assert!(err.contains("orders_2.parquet") && err.contains("`amount_eur`: `twaalf`"), "{err}");
    assert_untouched(&output, &before);
    // Under quarantine the row is set aside and counted: read + rejected = the input.
    let p = pipeline_variant(dir.path(), |t| {
        t.replacen("    key: order_id\n", "    key: order_id\n    on_bad_rows: quarantine\n", 1)
    });
    let out = run_pipeline(&p, &input, &output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let orders = &manifest(&output)["inputs"]["orders"];
    assert_eq!(orders["rejected_rows"], 1);
    assert_eq!(orders["rows"].as_u64().unwrap() + 1, rows_before);
}

#[test]
fn a_corrupt_parquet_page_is_blamed_on_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let before = manifest(&output)["run_id"].clone();
    // Garble the data pages, keep the footer: the file opens, its values do not decode.
    let file = input.join("webshop/orders_1.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    let footer = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let data_end = bytes.len() - 8 - footer;
    for b in &mut bytes[4..data_end] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(&file, bytes).unwrap();
    let (code, err) = failed(&run_pipeline(&retail_yaml(), &input, &output, &[]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("orders_1.parquet") && err.contains("source `orders`"), "{err}");
    assert_untouched(&output, &before);
}

#[tokio::test]
async fn an_overlong_name_is_set_aside_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = published(dir.path());
    let file = input.join("crm/contacts_1.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut fields: Vec<String> = lines[5].split(';').map(String::from).collect();
    let key = fields[0].clone();
    fields[1] = "Jan".repeat(7_000);
    lines[5] = fields.join(";");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    run_retail(&input, &output, &[]);
    let crm = &manifest(&output)["inputs"]["crm"];
    assert_eq!(crm["set_aside_rows"], 1);
    let reasons = query(&output, &["_rejected/crm"], "SELECT reason, record FROM \"_rejected/crm\"").await;
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&reasons).unwrap().to_string();
    assert!(text.contains("`first_name` is 21000 characters long") && text.contains(&key), "{text}");
    let n = scalar(
        &output,
        &["customer_xref"],
        &format!("SELECT count(*) FROM customer_xref WHERE source_record_id = '{key}'"),
    )
    .await;
    assert_eq!(n, 0);
    // Every CRM row is accounted for: in the crosswalk or set aside.
    let in_xref =
        scalar(&output, &["customer_xref"], "SELECT count(*) FROM customer_xref WHERE source_system = 'crm'").await;
    assert_eq!(crm["rows"].as_i64().unwrap(), in_xref + 1);
}

#[test]
fn credentials_in_a_url_are_refused_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret_output = "output=s3://AKIAEXAMPLEKEY:wJalrXUtnFEMI%2FK7MDENG@golden/retail";
    for command in ["validate", "plan", "run"] {
        let out = klantbeeld(&[command, retail_yaml().to_str().unwrap(), "--var", secret_output]);
        let (code, err) = failed(&out);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(!err.contains("AKIAEXAMPLEKEY") && !err.contains("wJalrXUtnFEMI"), "{command} printed it: {err}");
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("wJalrXUtnFEMI"));
    }
    let p = pipeline_variant(dir.path(), |t| {
        t.replace("${input:-../examples/retail/dumps}/crm", "s3://AKIAEXAMPLEKEY:se/cret@dumps/crm")
    });
    let (code, err) = failed(&klantbeeld(&["validate", p.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(
        !err.contains("AKIAEXAMPLEKEY") && !err.contains("se/cret") && err.contains("sources.crm.location"),
        "{err}"
    );
}

#[test]
fn a_key_given_twice_is_a_config_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_variant(dir.path(), |t| {
        let start = t.find("  crm:\n").unwrap();
        let end = t.find("  webshop:\n").unwrap();
        let block = t[start..end].to_string();
        format!("{}{block}{}", &t[..end], &t[end..])
    });
    let second =
        std::fs::read_to_string(&p).unwrap().lines().enumerate().filter(|(_, l)| *l == "  crm:").nth(1).unwrap().0 + 1;
    let (code, err) = failed(&klantbeeld(&["validate", p.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(err.contains("`crm` is given twice") && err.contains(&format!(":{second}:")), "line {second}: {err}");
}

#[test]
fn messages_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    generate(&input, 150, 4, false);
    let output = dir.path().join("out");
    let dumps = input.join("dumps");

    let (code, err) = failed(&run_pipeline(&retail_yaml(), &dumps, &output, &["--var", "run_date=notadate"]));
    assert_eq!(code, 2);
    assert!(err.contains("run_date=`notadate`") && err.contains("YYYY-MM-DD"), "{err}");

    let p = pipeline_variant(dir.path(), |t| {
        t.replace("{damerau_levenshtein: 1}", "{damerau_levenshtein: 1, weight: .nan}")
    });
    let line = std::fs::read_to_string(&p).unwrap().lines().position(|l| l.contains("weight: .nan")).unwrap() + 1;
    let (code, err) = failed(&klantbeeld(&["validate", p.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(err.contains("not a finite number") && err.contains(&format!(":{line}:")), "{err}");

    // A usage error, in clap's words (with its usage lines).
    let out = run_pipeline(&retail_yaml(), &dumps, &output, &["--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--limit") && stderr(&out).contains("at least 1"), "{}", stderr(&out));

    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let (_, err) = failed(&run_pipeline(&retail_yaml(), &dumps, &blocker.join("out"), &[]));
    assert!(err.contains(&format!("`{}` is a file, not a folder", blocker.display())), "{err}");
    assert!(!output.exists(), "no run should have published");
}
