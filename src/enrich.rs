//! Enrich: the SQL files of the models folder, each one SELECT that defines a table named
//! after its file. The run order follows their table references, read with DataFusion's
//! SQL parser; each model is materialised in order so later models read its result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::config::{Pipeline, Vars, substitute};

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Sql { path: PathBuf, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    Var { path: PathBuf, line: usize, column: usize, message: String },
    #[error("models form a cycle: {}", .files.join(" -> "))]
    Cycle { files: Vec<String> },
    #[error("{path}: model `{name}` has the name of a table klantbeeld makes")]
    Reserved { path: PathBuf, name: String },
}

/// One SQL model.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    /// The SQL after `${var}` substitution.
    pub sql: String,
    /// Other models this one reads.
    pub depends_on: Vec<String>,
    /// Every table it reads.
    pub reads: Vec<String>,
}

/// Variables for SQL files: the pipeline's, plus `run_date` (today, UTC) when not given.
pub fn sql_vars(vars: &Vars) -> Vars {
    let mut v = vars.clone();
    v.given.entry("run_date".into()).or_insert_with(|| chrono::Utc::now().date_naive().to_string());
    v
}

/// Reads and orders the models of a pipeline. Nothing runs yet: `plan` uses this too.
pub fn load_models(pipeline: &Pipeline, vars: &Vars, reserved: &[String]) -> Result<Vec<Model>, EnrichError> {
    let Some(dir) = pipeline.models_dir() else { return Ok(Vec::new()) };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| EnrichError::Read { path: dir.clone(), source })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let vars = sql_vars(vars);
    let mut models = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| EnrichError::Read { path: path.clone(), source })?;
        let (sql, _) = substitute(&text, &vars).map_err(|e| EnrichError::Var {
            path: path.clone(),
            line: e.at.0,
            column: e.at.1,
            message: e.message,
        })?;
        let name = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
        if reserved.contains(&name) {
            return Err(EnrichError::Reserved { path, name });
        }
        let reads = table_references(&path, &sql)?;
        models.push(Model { name, path, sql, depends_on: Vec::new(), reads });
    }
    let names: BTreeSet<String> = models.iter().map(|m| m.name.clone()).collect();
    for m in &mut models {
        m.depends_on = m.reads.iter().filter(|r| names.contains(*r) && **r != m.name).cloned().collect();
        if m.reads.contains(&m.name) {
            return Err(EnrichError::Cycle { files: vec![display(&m.path), display(&m.path)] });
        }
    }
    order(models)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// The tables one SQL text reads, from DataFusion's parser. CTE names are not tables.
fn table_references(path: &Path, sql: &str) -> Result<Vec<String>, EnrichError> {
    let err = |message: String| EnrichError::Sql { path: path.to_path_buf(), message };
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|e| err(e.to_string()))?;
    if statements.len() != 1 {
        return Err(err(format!("a model is one SELECT statement, found {}", statements.len())));
    }
    let statement = &statements[0];
    let is_query = matches!(statement, Statement::Statement(s) if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)));
    if !is_query {
        return Err(err("a model is one SELECT statement (dbt style); found another kind of statement".into()));
    }
    let state = SessionContext::new().state();
    let refs = state.resolve_table_references(statement).map_err(|e| err(e.to_string()))?;
    let mut names: Vec<String> = refs.iter().map(|r| r.table().to_string()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Topological order, alphabetical among equals; a cycle names its files.
fn order(models: Vec<Model>) -> Result<Vec<Model>, EnrichError> {
    let mut pending: BTreeMap<String, Model> = models.into_iter().map(|m| (m.name.clone(), m)).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .values()
            .filter(|m| m.depends_on.iter().all(|d| done.contains(d)))
            .map(|m| m.name.clone())
            .collect();
        if ready.is_empty() {
            return Err(EnrichError::Cycle { files: find_cycle(&pending) });
        }
        for name in ready {
            let m = pending.remove(&name).expect("ready model is pending");
            done.insert(name);
            out.push(m);
        }
    }
    Ok(out)
}

/// Walks dependencies from any pending model until a model repeats.
fn find_cycle(pending: &BTreeMap<String, Model>) -> Vec<String> {
    let Some(start) = pending.keys().next() else { return Vec::new() };
    let mut path: Vec<String> = vec![start.clone()];
    loop {
        let current = &pending[path.last().expect("non-empty")];
        let next = current.depends_on.iter().find(|d| pending.contains_key(*d)).cloned().unwrap_or_default();
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[i..].iter().map(|n| display(&pending[n].path)).collect();
            cycle.push(display(&pending[&next].path));
            return cycle;
        }
        path.push(next);
    }
}

/// Runs the models in order, each materialised under `scratch` and registered by name.
pub async fn run_models(ctx: &SessionContext, models: &[Model], scratch: &Path) -> Result<(), crate::Error> {
    for m in models {
        let sql_err = |e: datafusion::error::DataFusionError| {
            crate::Error::Enrich(EnrichError::Sql { path: m.path.clone(), message: one_line(&e.to_string()) })
        };
        let df = ctx.sql(&m.sql).await.map_err(sql_err)?;
        // A model that plans but fails while running (memory, a bad cast in the data) is
        // an engine error of that file, not a configuration error.
        crate::pipeline::materialize(ctx, &m.name, df, scratch).await.map_err(|e| match e {
            crate::Error::Engine { source, .. } => {
                crate::Error::Engine { context: m.path.display().to_string(), source }
            }
            other => other,
        })?;
        tracing::info!(model = m.name.as_str(), "model built");
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, deps: &[&str]) -> Model {
        Model {
            name: name.into(),
            path: PathBuf::from(format!("sql/{name}.sql")),
            sql: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            reads: Vec::new(),
        }
    }

    #[test]
    fn references_come_from_the_parser_not_ctes() {
        let refs = table_references(
            Path::new("m.sql"),
            "WITH recent AS (SELECT * FROM orders WHERE x > 1) SELECT r.*, c.id FROM recent r JOIN customers c ON true \
             WHERE r.customer_id IN (SELECT customer_id FROM rfm)",
        )
        .unwrap();
        assert_eq!(refs, ["customers", "orders", "rfm"]);
    }

    #[test]
    fn only_one_select_per_file() {
        assert!(table_references(Path::new("m.sql"), "SELECT 1; SELECT 2").is_err());
        let e = table_references(Path::new("m.sql"), "INSERT INTO t VALUES (1)").unwrap_err().to_string();
        assert!(e.starts_with("m.sql: a model is one SELECT"), "{e}");
        let e = table_references(Path::new("m.sql"), "SELEC 1").unwrap_err().to_string();
        assert!(e.starts_with("m.sql: "), "{e}");
    }

    #[test]
    fn order_follows_dependencies() {
        let ordered =
            order(vec![model("segments", &["rfm", "clv"]), model("rfm", &[]), model("clv", &["rfm"])]).unwrap();
        let names: Vec<&str> = ordered.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["rfm", "clv", "segments"]);
    }

    #[test]
    fn cycle_names_its_files() {
        let e = order(vec![model("a", &["b"]), model("b", &["c"]), model("c", &["a"]), model("d", &[])]).unwrap_err();
        assert_eq!(e.to_string(), "models form a cycle: sql/a.sql -> sql/b.sql -> sql/c.sql -> sql/a.sql");
    }
}
