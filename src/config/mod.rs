//! The pipeline definition: YAML read into serde types that refuse unknown keys, after
//! `${var}` substitution. Every error names the file, line and column, and the key.

mod spec;
mod vars;

pub use spec::*;
pub use vars::{Vars, substitute};

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A configuration error, already located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    At { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

impl ConfigError {
    pub fn at(path: &Path, (line, column): (usize, usize), message: impl Into<String>) -> Self {
        ConfigError::At { path: path.to_path_buf(), line, column, message: message.into() }
    }
}

/// A parsed pipeline with where it came from.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The YAML file, as given.
    pub file: PathBuf,
    /// Folder that relative locations and the SQL folder resolve against.
    pub base_dir: PathBuf,
    /// The YAML after variable substitution (hashed into the manifest).
    pub text: String,
    pub spec: PipelineSpec,
    /// The variables that the file used, with the values they got.
    pub used_vars: Vec<(String, String)>,
    /// The variables given (for the SQL files, which substitute the same way).
    pub vars: Vars,
}

impl Pipeline {
    /// Reads, substitutes and parses a pipeline, then checks what serde cannot (references
    /// between sections).
    pub fn load(file: &Path, vars: &Vars) -> Result<Pipeline, ConfigError> {
        let raw =
            std::fs::read_to_string(file).map_err(|source| ConfigError::Read { path: file.to_path_buf(), source })?;
        Self::from_text(file, &raw, vars)
    }

    pub fn from_text(file: &Path, raw: &str, vars: &Vars) -> Result<Pipeline, ConfigError> {
        let (text, used_vars) = substitute(raw, vars).map_err(|e| ConfigError::at(file, e.at, e.message))?;
        // Read as plain YAML first: a key given twice (a pasted block) is an error there,
        // where typed maps would silently keep the last one.
        serde_yaml::from_str::<serde_yaml::Value>(&text).map_err(|e| match yaml_error(file, &e) {
            ConfigError::At { path, line, column, message } if message.contains("is given twice") => {
                let key = message.split('`').nth(1).unwrap_or_default();
                let (line, column) = locate_repeat(&text, (line, column), key);
                ConfigError::At { path, line, column, message }
            }
            other => other,
        })?;
        let spec: PipelineSpec = serde_yaml::from_str(&text).map_err(|e| match yaml_error(file, &e) {
            // Inside a rule serde_yaml points at the rule's start; the value's own line is
            // the first non-finite number from there.
            ConfigError::At { path, line, column, message } if message.contains("is not a finite number") => {
                let (line, column) = locate_non_finite(&text, line).unwrap_or((line, column));
                ConfigError::At { path, line, column, message }
            }
            other => other,
        })?;
        let base_dir = file
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let pipeline = Pipeline { file: file.to_path_buf(), base_dir, text, spec, used_vars, vars: vars.clone() };
        pipeline.check_references()?;
        Ok(pipeline)
    }

    /// SHA-256 of the substituted YAML (and, through `with_files`, the SQL it runs).
    pub fn config_hash(&self, extra_files: &[(String, String)]) -> String {
        let mut h = Sha256::new();
        h.update(self.text.as_bytes());
        for (name, content) in extra_files {
            h.update(name.as_bytes());
            h.update(content.as_bytes());
        }
        format!("{:x}", h.finalize())
    }

    fn error_at(&self, key_path: &[&str], message: impl Into<String>) -> ConfigError {
        let at = locate_key(&self.text, key_path).unwrap_or((1, 1));
        ConfigError::at(&self.file, at, message)
    }

    /// Cross-references: facts point at identity sources, priorities and rules name
    /// sources and attributes that exist.
    fn check_references(&self) -> Result<(), ConfigError> {
        let spec = &self.spec;
        // Locations are checked here so that `validate` catches them (and never prints a
        // secret one holds).
        let locations = [(vec!["output"], Some(&spec.output)), (vec!["previous"], spec.previous.as_ref())]
            .into_iter()
            .chain(spec.sources.iter().map(|(n, s)| (vec!["sources", n.as_str(), "location"], Some(&s.location))));
        for (key, raw) in locations {
            if let Some(Err(e)) = raw.map(|r| crate::storage::Location::parse(r, &self.base_dir)) {
                return Err(self.error_at(&key, format!("key `{}`: {e}", key.join("."))));
            }
        }
        let identity: Vec<&str> = spec.identity_sources().map(|(n, _)| n.as_str()).collect();
        if identity.is_empty() {
            return Err(self.error_at(&["sources"], "no source has an `identity` mapping: nothing to match"));
        }
        for (name, source) in &spec.sources {
            if let Some(b) = &source.belongs_to
                && !identity.contains(&b.source.as_str())
            {
                return Err(self.error_at(
                    &["sources", name, "belongs_to", "source"],
                    format!(
                        "key `sources.{name}.belongs_to.source`: `{}` is not an identity source{}",
                        b.source,
                        suggest(&b.source, identity.iter().copied())
                    ),
                ));
            }
            if !source.identity.is_empty() && source.key.is_none() {
                return Err(self.error_at(
                    &["sources", name],
                    format!("key `sources.{name}.key` is missing: identity records need a key column"),
                ));
            }
            if source.identity.is_empty() && source.belongs_to.is_none() {
                return Err(self.error_at(
                    &["sources", name],
                    format!("key `sources.{name}`: a source needs `identity` (records to match) or `belongs_to` (facts of a record)"),
                ));
            }
            if let Some(Err(message)) =
                source.schema.values().map(|t| t.parse_sql_type().map(|_| ())).find(Result::is_err)
            {
                return Err(
                    self.error_at(&["sources", name, "schema"], format!("key `sources.{name}.schema`: {message}"))
                );
            }
        }
        for (i, src) in spec.golden.source_priority.iter().enumerate() {
            if !identity.contains(&src.as_str()) {
                return Err(self.error_at(
                    &["golden", "source_priority"],
                    format!(
                        "key `golden.source_priority[{i}]`: `{src}` is not an identity source{}",
                        suggest(src, identity.iter().copied())
                    ),
                ));
            }
        }
        let own = self.own_columns()?;
        let mut seen = std::collections::HashSet::new();
        for rule in &spec.resolve.rules {
            if !seen.insert(rule.name()) {
                return Err(self.error_at(&["resolve", "rules"], format!("rule name `{}` is used twice", rule.name())));
            }
            if let Err(message) = rule.check(&own) {
                return Err(self.error_at(&["resolve", "rules"], format!("rule `{}`: {message}", rule.name())));
            }
        }
        let mut engine = datafusion::config::ConfigOptions::new();
        for (key, value) in spec.engine.settings() {
            if let Err(e) = engine.set(&key, &value) {
                return Err(self.error_at(
                    &["engine", "settings", &key],
                    format!("key `engine.settings.{key}`: cannot set it to `{value}`: {}", e.find_root()),
                ));
            }
        }
        let model_tests = spec.models.iter().flat_map(|m| m.tests.iter());
        for (table, tests) in spec.outputs.iter().map(|(t, o)| (t, &o.tests)).chain(model_tests) {
            for test in tests {
                if let Err(message) = test.check() {
                    return Err(
                        self.error_at(&["outputs", table, "tests"], format!("key `outputs.{table}.tests`: {message}"))
                    );
                }
            }
        }
        Ok(())
    }

    /// The staged columns this pipeline adds for rules: its own attributes (checked to be
    /// plain names that no built-in column has) and `ext_<id>` per external id.
    pub fn own_columns(&self) -> Result<Vec<String>, ConfigError> {
        let mut out: Vec<String> = Vec::new();
        for (name, source) in &self.spec.sources {
            for attribute in source.attributes.keys() {
                let plain = attribute.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && attribute.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                let taken = spec::MATCH_COLUMNS.contains(&attribute.as_str())
                    || spec::STAGED_INTERNAL.contains(&attribute.as_str())
                    || attribute.starts_with("ext_")
                    || attribute.ends_with("_raw");
                if !plain || taken {
                    return Err(self.error_at(
                        &["sources", name, "attributes", attribute],
                        format!(
                            "key `sources.{name}.attributes.{attribute}`: {}",
                            if taken {
                                "a built-in column has this name; choose another"
                            } else {
                                "a name is lower-case letters, digits and `_`, starting with a letter"
                            }
                        ),
                    ));
                }
                if !out.contains(attribute) {
                    out.push(attribute.clone());
                }
            }
        }
        out.extend(crate::stage::external_id_names(self).into_iter().map(|id| format!("ext_{id}")));
        Ok(out)
    }

    /// Folder of the SQL models, if the pipeline has one.
    pub fn models_dir(&self) -> Option<PathBuf> {
        self.spec.models.as_ref().map(|m| self.base_dir.join(&m.path))
    }
}

/// Turns a serde_yaml error into one located line, with a "did you mean" for unknown keys
/// and values.
fn yaml_error(file: &Path, e: &serde_yaml::Error) -> ConfigError {
    let at = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
    let full = e.to_string();
    // serde_yaml appends " at line L column C"; we print the location up front instead.
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let message = improve_unknown(&message);
    let duplicate = message
        .split_once("duplicate entry with key \"")
        .and_then(|(_, k)| k.split_once('"'))
        .or_else(|| message.split_once("duplicate field `").and_then(|(_, k)| k.split_once('`')))
        .map(|(key, _)| key.to_string());
    match duplicate {
        Some(key) => ConfigError::at(file, at, format!("key `{key}` is given twice at the same level; keep one")),
        None => ConfigError::at(file, at, message),
    }
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into
/// "unknown key `x` at `path`, did you mean `a`?".
fn improve_unknown(message: &str) -> String {
    let (path, rest) = match message.split_once(": ") {
        Some((p, r)) if !p.contains(' ') => (Some(p), r),
        _ => (None, message),
    };
    for (what, noun) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        if let Some(after) = rest.strip_prefix(what) {
            let Some((name, expected)) = after.split_once('`') else { continue };
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let place = path.map(|p| format!(" in `{p}`")).unwrap_or_default();
            let hint = suggest(name, candidates.iter().copied());
            let hint = if hint.is_empty() && !candidates.is_empty() {
                format!(
                    " (expected one of {})",
                    candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                )
            } else {
                hint
            };
            return format!("unknown {noun} `{name}`{place}{hint}");
        }
    }
    match path {
        Some(p) => format!("key `{p}`: {rest}"),
        None => rest.to_string(),
    }
}

/// ", did you mean `x`?" for the closest candidate, or nothing when none is close.
pub fn suggest<'a>(wrong: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    // Close means a couple of edits (typos, swapped letters) or a similar spelling.
    let closeness = |c: &str| {
        let edits = strsim::damerau_levenshtein(wrong, c);
        let allowed = (wrong.len().max(c.len()) / 3).max(1);
        let by_edits = if edits <= allowed { 1.0 - edits as f64 / (allowed as f64 + 1.0) } else { 0.0 };
        by_edits.max(strsim::jaro_winkler(wrong, c) - 0.2)
    };
    candidates
        .map(|c| (closeness(c), c))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(", did you mean `{c}`?"))
        .unwrap_or_default()
}

/// The first line at or after `from` whose value is YAML's `.nan` or `.inf`.
fn locate_non_finite(text: &str, from: usize) -> Option<(usize, usize)> {
    text.lines().enumerate().skip(from.saturating_sub(1)).find_map(|(i, line)| {
        let code = line.split(" #").next().unwrap_or_default().to_ascii_lowercase();
        // A value after `key:`, in block style or inside a flow map (`{weight: .nan}`).
        code.match_indices(':').find_map(|(at, _)| {
            let value = code[at + 1..].trim_start().trim_start_matches(['-', '+']);
            let word = value.split([',', '}', ']', ' ']).next().unwrap_or_default();
            (word == ".nan" || word == ".inf").then(|| (i + 1, code.len() - code[at + 1..].trim_start().len() + 1))
        })
    })
}

/// The second occurrence of `key` in the mapping that starts at `start` (where serde_yaml
/// reports a repeated key), so that the error points at the copy.
fn locate_repeat(text: &str, start: (usize, usize), key: &str) -> (usize, usize) {
    let indent = start.1.saturating_sub(1);
    let mut seen = 0;
    for (i, line) in text.lines().enumerate().skip(start.0.saturating_sub(1)) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = line.len() - trimmed.len();
        if at < indent {
            break;
        }
        let name = trimmed.split(':').next().unwrap_or_default().trim().trim_matches(['"', '\'']);
        if at == indent && name == key {
            seen += 1;
            if seen == 2 {
                return (i + 1, at + 1);
            }
        }
    }
    start
}

/// Finds the line and column of a nested key in YAML text by following indentation:
/// enough to point at `sources.crm.belongs_to` for errors serde cannot locate.
pub fn locate_key(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut depth_indent: Option<usize> = None;
    let mut found = None;
    let mut want = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        // Leaving the block of the last key found means the next one is not in it.
        if let Some(d) = depth_indent
            && want > 0
            && indent < d
        {
            break;
        }
        let key = trimmed.trim_start_matches("- ").split(':').next().unwrap_or("").trim().trim_matches('"');
        if want < path.len() && key == path[want] && depth_indent.is_none_or(|d| indent > d) {
            found = Some((i + 1, indent + 1));
            depth_indent = Some(indent);
            want += 1;
            if want == path.len() {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: t\noutput: out\nsources:\n  crm:\n    location: crm/*.csv\n    format: {type: csv, delimiter: \";\"}\n    key: klant_id\n    identity:\n      email: email\n";

    fn load(text: &str) -> Result<Pipeline, ConfigError> {
        Pipeline::from_text(Path::new("p.yaml"), text, &Vars::default())
    }

    #[test]
    fn minimal_pipeline_parses() {
        let p = load(MINIMAL).unwrap();
        assert_eq!(p.spec.name, "t");
        assert!(p.spec.sources["crm"].identity.contains_key(&Attribute::Email));
        assert_eq!(p.spec.sources["crm"].key.as_deref(), Some("klant_id"));
    }

    #[test]
    fn engine_settings_and_passes_are_checked_before_the_run() {
        let with = |engine: &str| format!("{MINIMAL}engine:\n  settings:\n{engine}");
        let p = load(&with("    datafusion.optimizer.prefer_hash_join: false\n")).unwrap();
        assert_eq!(p.spec.engine.settings(), vec![("datafusion.optimizer.prefer_hash_join".into(), "false".into())]);
        let err = load(&with("    datafusion.optimizer.prefer_hash_jion: false\n")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:12:"), "{err}");
        assert!(err.contains("engine.settings.datafusion.optimizer.prefer_hash_jion"), "{err}");
        let err = load(&with("    datafusion.execution.batch_size: veel\n")).unwrap_err().to_string();
        assert!(err.contains("cannot set it to `veel`"), "{err}");
        assert_eq!(load(&format!("{MINIMAL}resolve:\n  passes: 6\n")).unwrap().spec.resolve.passes, AutoCount(Some(6)));
        assert_eq!(load(&format!("{MINIMAL}resolve:\n  passes: auto\n")).unwrap().spec.resolve.passes, AutoCount(None));
        let err = load(&format!("{MINIMAL}resolve:\n  passes: 0\n")).unwrap_err().to_string();
        assert!(err.contains("expected `auto` or a number of at least 1"), "{err}");
    }

    #[test]
    fn unknown_top_level_key_is_located_with_suggestion() {
        let text = MINIMAL.replace("sources:", "sourcez:");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:"), "{err}");
        assert!(err.contains("unknown key `sourcez`"), "{err}");
        assert!(err.contains("did you mean `sources`?"), "{err}");
    }

    #[test]
    fn unknown_nested_key_names_line_and_path() {
        let text = MINIMAL.replace("    key: klant_id", "    kye: klant_id");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:7:"), "{err}");
        assert!(err.contains("`sources.crm`"), "{err}");
        assert!(err.contains("did you mean `key`?"), "{err}");
    }

    #[test]
    fn unknown_attribute_is_a_value_error() {
        let text = MINIMAL.replace("      email: email", "      emial: email");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("`emial`") && err.contains("did you mean `email`?"), "{err}");
    }

    #[test]
    fn malformed_yaml_is_located() {
        let err = load("name: t\nsources: [\n").unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = MINIMAL.replace("    key: klant_id", "    key: klant_id\n    optional: misschien");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("sources.crm.optional"), "{err}");
    }

    #[test]
    fn bad_reference_is_located() {
        let text = format!(
            "{MINIMAL}  orders:\n    location: o/*.parquet\n    format: {{type: parquet}}\n    belongs_to: {{source: webshp, column: account_id}}\n"
        );
        let err = load(&text).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:13:"), "{err}");
        assert!(err.contains("`webshp` is not an identity source"), "{err}");
    }

    #[test]
    fn a_key_given_twice_is_an_error_at_its_line() {
        let text = format!(
            "{MINIMAL}  crm:\n    location: other/*.csv\n    format: {{type: csv}}\n    key: id\n    identity:\n      email: email\n"
        );
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("`crm`") && err.contains("twice"), "{err}");
        assert!(err.starts_with("p.yaml:10:"), "{err}");
        let err =
            load(&MINIMAL.replace("    key: klant_id\n", "    key: klant_id\n    key: id\n")).unwrap_err().to_string();
        assert!(err.contains("`key`") && err.contains("twice") && err.starts_with("p.yaml:8:"), "{err}");
    }

    #[test]
    fn an_unknown_cluster_check_is_refused_at_its_line() {
        let text = format!("{MINIMAL}resolve:\n  guardrails:\n    conflicting: [birthdate, last_name]\n");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:12:"), "{err}");
        assert!(err.contains("`birthdate`") && err.contains("did you mean `birth_date`?"), "{err}");
    }

    #[test]
    fn locate_nested_keys() {
        let text = "a:\n  b:\n    c: 1\n  d:\n    c: 2\n";
        assert_eq!(locate_key(text, &["a", "d", "c"]), Some((5, 5)));
        assert_eq!(locate_key(text, &["a", "b"]), Some((2, 3)));
        assert_eq!(locate_key(text, &["x"]), None);
    }
}
