//! Check: data tests declared in the YAML (dbt's vocabulary), run as SQL before anything
//! is published. A failing test stops the run; its report shows sample offending rows.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::config::{Bounds, TestSpec};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("data test {test} on `{table}` cannot run: {message}")]
    Sql { table: String, test: String, message: String },
    /// The memory limit, not the test, is at fault: the run exits 1 with a hint.
    #[error("data test {test} on `{table}` cannot run: {source}")]
    Memory { table: String, test: String, source: datafusion::error::DataFusionError },
}

impl CheckError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        // A test that cannot run is a test to fix; running out of memory is classed
        // before this (see `Error::exit_code`).
        crate::ExitClass::Config
    }
}

/// The result of one data test.
#[derive(Debug, Clone, Serialize)]
pub struct TestOutcome {
    pub table: String,
    pub test: String,
    pub passed: bool,
    /// Offending rows (or the measured value for bounds).
    pub failures: u64,
    /// A few offending rows, as a text table.
    pub sample: String,
}

fn bounds_text(b: &Bounds) -> String {
    match (b.min, b.max) {
        (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
        (Some(lo), None) => format!(">= {lo}"),
        (None, Some(hi)) => format!("<= {hi}"),
        (None, None) => "unbounded".into(),
    }
}

/// A short name for a test, as reports show it.
pub fn describe(test: &TestSpec) -> String {
    match test {
        TestSpec::Unique(c) => format!("unique({})", c.list().join(", ")),
        TestSpec::NotNull(c) => format!("not_null({})", c.list().join(", ")),
        TestSpec::AcceptedValues { column, values } => format!("accepted_values({column}: {})", values.join(", ")),
        TestSpec::Relationships { column, to, field } => format!("relationships({column} -> {to}.{field})"),
        TestSpec::Expression(e) => format!("expression({e})"),
        TestSpec::RowCount(b) => format!("row_count {}", bounds_text(b)),
        TestSpec::MatchRate(b) => format!("match_rate {}", bounds_text(b)),
    }
}

/// The condition that makes a row offend a test that looks at each row on its own.
fn offending_row(test: &TestSpec) -> Option<String> {
    Some(match test {
        TestSpec::NotNull(c) => c.list().iter().map(|x| format!("{x} IS NULL")).collect::<Vec<_>>().join(" OR "),
        TestSpec::AcceptedValues { column, values } => format!(
            "{column} IS NOT NULL AND CAST({column} AS VARCHAR) NOT IN ({})",
            values.iter().map(|v| crate::engine::sql_string(v)).collect::<Vec<_>>().join(", ")
        ),
        // Like dbt: rows where the condition is false fail; null is not false.
        TestSpec::Expression(e) => format!("NOT ({e})"),
        _ => return None,
    })
}

/// SQL selecting the offending rows of a row-level test.
fn offending_rows_sql(table: &str, test: &TestSpec) -> Option<String> {
    if let Some(condition) = offending_row(test) {
        return Some(format!("SELECT * FROM {table} WHERE {condition}"));
    }
    Some(match test {
        TestSpec::Unique(c) => {
            let cols = c.list().join(", ");
            format!("SELECT {cols}, count(*) AS occurrences FROM {table} GROUP BY {cols} HAVING count(*) > 1")
        }
        TestSpec::Relationships { column, to, field } => format!(
            "SELECT t.* FROM {table} t LEFT JOIN (SELECT DISTINCT {field} AS k FROM {to}) p ON t.{column} = p.k \
             WHERE t.{column} IS NOT NULL AND p.k IS NULL"
        ),
        _ => return None,
    })
}

/// Which of a table's tests that look at each row on its own (by index in `tests`) find
/// no offending row, counted in one scan of the table: the retail outputs' six such tests
/// each read the enriched table again. `None` when that scan cannot run: the tests then
/// run one by one, so that the error names the test.
async fn passing_row_tests(ctx: &SessionContext, table: &str, tests: &[TestSpec]) -> Option<Vec<usize>> {
    let row_tests: Vec<(usize, String)> =
        tests.iter().enumerate().filter_map(|(i, t)| offending_row(t).map(|c| (i, c))).collect();
    if row_tests.len() < 2 {
        return None;
    }
    let counts: Vec<String> =
        row_tests.iter().map(|(_, c)| format!("CAST(sum(CASE WHEN {c} THEN 1 ELSE 0 END) AS BIGINT)")).collect();
    let batches = collect(ctx, &format!("SELECT {} FROM {table}", counts.join(", "))).await.ok()?;
    let row = batches.iter().find(|b| b.num_rows() > 0)?;
    let passing = row_tests
        .iter()
        .enumerate()
        .filter(|(column, _)| {
            let n = row.column(*column).as_primitive::<Int64Type>();
            n.is_null(0) || n.value(0) == 0
        })
        .map(|(_, (i, _))| *i)
        .collect();
    Some(passing)
}

async fn collect(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

fn first_f64(batches: &[RecordBatch]) -> Option<f64> {
    let b = batches.first()?;
    let c = datafusion::arrow::compute::cast(b.column(0), &DataType::Float64).ok()?;
    let a = c.as_primitive::<Float64Type>();
    (!a.is_empty() && !a.is_null(0)).then(|| a.value(0))
}

fn within(value: f64, b: &Bounds) -> bool {
    b.min.is_none_or(|lo| value >= lo) && b.max.is_none_or(|hi| value <= hi)
}

/// Runs one test against a registered table.
pub async fn run_test(ctx: &SessionContext, table: &str, test: &TestSpec) -> Result<TestOutcome, CheckError> {
    let name = describe(test);
    let err = |e: datafusion::error::DataFusionError| match e.find_root() {
        datafusion::error::DataFusionError::ResourcesExhausted(_) => {
            CheckError::Memory { table: table.into(), test: name.clone(), source: e }
        }
        _ => CheckError::Sql {
            table: table.into(),
            test: name.clone(),
            message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
        },
    };
    let outcome = |passed: bool, failures: u64, sample: String| TestOutcome {
        table: table.into(),
        test: name.clone(),
        passed,
        failures,
        sample,
    };
    if let Some(sql) = offending_rows_sql(table, test) {
        let count = collect(ctx, &format!("SELECT count(*) FROM ({sql})")).await.map_err(err)?;
        let n = count.first().map(|b| b.column(0).as_primitive::<Int64Type>().value(0) as u64).unwrap_or(0);
        if n == 0 {
            return Ok(outcome(true, 0, String::new()));
        }
        let sample = collect(ctx, &format!("SELECT * FROM ({sql}) LIMIT 5")).await.map_err(err)?;
        let text =
            datafusion::arrow::util::pretty::pretty_format_batches(&sample).map(|t| t.to_string()).unwrap_or_default();
        return Ok(outcome(false, n, text));
    }
    let (sql, bounds) = match test {
        TestSpec::RowCount(b) => (format!("SELECT count(*) FROM {table}"), b),
        TestSpec::MatchRate(b) => (
            // Share of records whose customer holds more than one record, from the count
            // per customer (a window over the whole table would hold it in one batch).
            format!(
                "SELECT CAST(sum(CASE WHEN n > 1 THEN n ELSE 0 END) AS DOUBLE) / sum(n) FROM \
                 (SELECT count(*) AS n FROM {table} GROUP BY customer_id)"
            ),
            b,
        ),
        _ => unreachable!("row-level tests handled above"),
    };
    let value = first_f64(&collect(ctx, &sql).await.map_err(err)?).unwrap_or(0.0);
    let passed = within(value, bounds);
    Ok(outcome(passed, if passed { 0 } else { 1 }, format!("measured {value}")))
}

/// Every data test of the pipeline: those of the outputs, then those of the models.
pub fn data_tests(pipeline: &crate::config::Pipeline) -> Vec<(String, Vec<TestSpec>)> {
    let spec = &pipeline.spec;
    let mut tests: Vec<(String, Vec<TestSpec>)> =
        spec.outputs.iter().filter(|(_, o)| !o.tests.is_empty()).map(|(t, o)| (t.clone(), o.tests.clone())).collect();
    if let Some(m) = &spec.models {
        tests.extend(m.tests.iter().map(|(t, v)| (t.clone(), v.clone())));
    }
    tests
}

/// Runs every test; returns all outcomes (failed ones included).
pub async fn run_tests(
    ctx: &SessionContext,
    tests: &[(String, Vec<TestSpec>)],
) -> Result<Vec<TestOutcome>, CheckError> {
    let mut outcomes = Vec::new();
    for (table, specs) in tests {
        let passing = passing_row_tests(ctx, table, specs).await.unwrap_or_default();
        for (i, t) in specs.iter().enumerate() {
            let o = if passing.contains(&i) {
                TestOutcome {
                    table: table.clone(),
                    test: describe(t),
                    passed: true,
                    failures: 0,
                    sample: String::new(),
                }
            } else {
                run_test(ctx, table, t).await?
            };
            if o.passed {
                tracing::info!(table = table.as_str(), test = o.test.as_str(), "data test passed");
            } else {
                tracing::warn!(
                    table = table.as_str(),
                    test = o.test.as_str(),
                    failures = o.failures,
                    "data test failed"
                );
            }
            outcomes.push(o);
        }
    }
    Ok(outcomes)
}

/// The report of failed tests, for the terminal.
pub fn report(outcomes: &[TestOutcome]) -> String {
    let failed: Vec<&TestOutcome> = outcomes.iter().filter(|o| !o.passed).collect();
    let mut out = format!("{} of {} data tests failed\n", failed.len(), outcomes.len());
    for o in failed {
        out.push_str(&format!("\nFAIL {}: {} ({} offending)\n{}\n", o.table, o.test, o.failures, o.sample));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Columns;

    async fn ctx() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.sql("CREATE VIEW t AS SELECT * FROM (VALUES (1, 'a', 10), (2, 'b', NULL), (2, 'x', 5)) AS v(id, kind, n)")
            .await
            .unwrap();
        ctx.sql("CREATE VIEW p AS SELECT * FROM (VALUES (1), (3)) AS v(id)").await.unwrap();
        ctx
    }

    #[tokio::test]
    async fn each_test_kind_finds_its_offenders() {
        let ctx = ctx().await;
        let cases = [
            (TestSpec::Unique(Columns::One("id".into())), false, 1),
            (TestSpec::NotNull(Columns::Many(vec!["id".into(), "n".into()])), false, 1),
            (TestSpec::AcceptedValues { column: "kind".into(), values: vec!["a".into(), "b".into()] }, false, 1),
            (TestSpec::Relationships { column: "id".into(), to: "p".into(), field: "id".into() }, false, 2),
            (TestSpec::Expression("n > 0".into()), true, 0),
            (TestSpec::Expression("n > 6".into()), false, 1),
            (TestSpec::RowCount(Bounds { min: Some(1.0), max: Some(3.0) }), true, 0),
            (TestSpec::RowCount(Bounds { min: Some(4.0), max: None }), false, 1),
        ];
        for (test, passed, failures) in cases {
            let o = run_test(&ctx, "t", &test).await.unwrap();
            assert_eq!((o.passed, o.failures), (passed, failures), "{}", o.test);
            if !passed && !matches!(test, TestSpec::RowCount(_)) {
                assert!(o.sample.contains('|'), "sample rows for {}", o.test);
            }
        }
    }

    /// The tests of a table that look at rows one by one are counted together, with the
    /// outcomes (offending counts and samples) that each gives on its own; one that cannot
    /// run is still the error that names it.
    #[tokio::test]
    async fn row_tests_counted_together_give_each_test_its_own_outcome() {
        let ctx = ctx().await;
        let specs = vec![
            TestSpec::NotNull(Columns::One("id".into())),
            TestSpec::NotNull(Columns::Many(vec!["id".into(), "n".into()])),
            TestSpec::AcceptedValues { column: "kind".into(), values: vec!["a".into(), "b".into(), "x".into()] },
            TestSpec::Expression("n > 6".into()),
            TestSpec::Unique(Columns::One("id".into())),
        ];
        let together = run_tests(&ctx, &[("t".to_string(), specs.clone())]).await.unwrap();
        for (o, spec) in together.iter().zip(&specs) {
            let alone = run_test(&ctx, "t", spec).await.unwrap();
            assert_eq!((o.passed, o.failures, &o.sample), (alone.passed, alone.failures, &alone.sample), "{}", o.test);
        }
        let passed: Vec<bool> = together.iter().map(|o| o.passed).collect();
        assert_eq!(passed, [true, false, true, false, false]);
        let mut wrong = specs.clone();
        wrong.insert(1, TestSpec::Expression("nope > 1".into()));
        let e = run_tests(&ctx, &[("t".to_string(), wrong)]).await.unwrap_err().to_string();
        assert!(e.starts_with("data test expression(nope > 1) on `t` cannot run"), "{e}");
    }

    #[tokio::test]
    async fn match_rate_from_a_crosswalk() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE VIEW x AS SELECT * FROM (VALUES ('K1'), ('K1'), ('K2'), ('K3')) AS v(customer_id)")
            .await
            .unwrap();
        let o = run_test(&ctx, "x", &TestSpec::MatchRate(Bounds { min: Some(0.4), max: Some(0.6) })).await.unwrap();
        // Two of the four records belong to a customer with more than one.
        assert!(o.passed && o.sample == "measured 0.5", "{}", o.sample);
        ctx.sql("CREATE VIEW empty AS SELECT * FROM x WHERE false").await.unwrap();
        let o = run_test(&ctx, "empty", &TestSpec::MatchRate(Bounds { min: None, max: Some(0.6) })).await.unwrap();
        assert!(o.passed && o.sample == "measured 0", "{}", o.sample);
    }

    #[tokio::test]
    async fn a_wrong_column_is_an_error_naming_table_and_test() {
        let ctx = ctx().await;
        let e = run_test(&ctx, "t", &TestSpec::Unique(Columns::One("idd".into()))).await.unwrap_err().to_string();
        assert!(e.starts_with("data test unique(idd) on `t` cannot run"), "{e}");
    }
}
