//! Helpers shared by the integration tests: generated dumps, runs of the real binary,
//! and reading published Parquet back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn retail_yaml() -> PathBuf {
    repo().join("pipelines/retail.yaml")
}

/// Generates demo dumps with the library, as `demo generate` does.
pub fn generate(out: &Path, persons: usize, seed: u64, day2: bool) {
    let args = klantbeeld::demo::GenerateArgs {
        persons,
        seed,
        out: out.to_path_buf(),
        day2,
        as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
    };
    klantbeeld::demo::generate(&args).expect("generate demo data");
}

/// Runs the klantbeeld binary.
pub fn klantbeeld(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args(args)
        .env("KLANTBEELD_LOG", "warn")
        .output()
        .expect("run klantbeeld")
}

/// Runs the retail pipeline from `input` to `output`, asserting success.
pub fn run_retail(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let yaml = retail_yaml();
    let input = format!("input={}", input.display());
    let output_var = format!("output={}", output.display());
    let mut args = vec!["run", yaml.to_str().unwrap(), "--var", &input, "--var", &output_var];
    args.extend_from_slice(extra);
    let out = klantbeeld(&args);
    assert!(
        out.status.success(),
        "run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs SQL over published tables registered by name (`customers` -> `out/customers/`).
pub async fn query(output: &Path, tables: &[&str], sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    for t in tables {
        ctx.register_parquet(*t, &format!("{}/{t}/", output.display()), ParquetReadOptions::default())
            .await
            .unwrap_or_else(|e| panic!("register {t}: {e}"));
    }
    ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")).collect().await.unwrap()
}

/// The single i64 a query returns.
pub async fn scalar(output: &Path, tables: &[&str], sql: &str) -> i64 {
    use datafusion::arrow::array::AsArray;
    let batches = query(output, tables, sql).await;
    let col =
        datafusion::arrow::compute::cast(batches[0].column(0), &datafusion::arrow::datatypes::DataType::Int64).unwrap();
    col.as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0)
}

/// A copy of the pipeline with its text changed, in a temporary folder next to a copy of
/// the SQL models.
pub fn pipeline_variant(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    // The copy lives elsewhere, so the models folder becomes absolute.
    let text = std::fs::read_to_string(retail_yaml())
        .unwrap()
        .replace("  path: ../sql", &format!("  path: {}", repo().join("sql").display()));
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}
