//! The Airflow example DAGs load in a real Airflow (installed by scripts/test) without
//! import errors, and run klantbeeld for the logical date.

mod common;

use common::*;

#[test]
fn example_dags_load_in_airflow() {
    let python = tool("KLANTBEELD_TEST_AIRFLOW_PYTHON");
    let out = std::process::Command::new(python)
        .arg(repo().join("tests/support/check_dags.py"))
        .arg(repo().join("examples/airflow"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("dags ok: klantbeeld_retail, klantbeeld_retail_k8s"), "{stdout}");
}
