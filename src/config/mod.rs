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
            // Inside a level list serde_yaml keeps no places at all; a non-finite number's
            // own line is the first one from the rule's start.
            ConfigError::At { path, line, column, message } if message.contains("is not a finite number") => {
                let (line, column) = locate_non_finite(&text, line).unwrap_or((line, column));
                ConfigError::At { path, line, column, message }
            }
            ConfigError::At { line, message, .. } if message.contains("resolve.rules") => {
                rule_error(file, &text, line).unwrap_or_else(|| yaml_error(file, &e))
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
            if let Err(bad) = rule.check(&own) {
                let at = locate_in_rule(&self.text, rule.name(), &bad.token)
                    .or_else(|| locate_key(&self.text, &["resolve", "rules"]))
                    .unwrap_or((1, 1));
                return Err(ConfigError::at(&self.file, at, format!("rule `{}`: {}", rule.name(), bad.message)));
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

/// The error in the rule that starts at `line`, located at its own key or value.
/// serde_yaml reads a rule through its `type` and then reports every error at the rule's
/// first line; reading the rule's block again as that type gives the line at fault.
fn rule_error(file: &Path, text: &str, line: usize) -> Option<ConfigError> {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(line.checked_sub(1)?)?;
    let item = first.trim_start().strip_prefix("- ")?;
    let indent = first.len() - first.trim_start().len();
    // The rule's lines, as a mapping of their own (`- ` becomes two spaces, so columns
    // stay), without the `type` key the concrete types do not have.
    let mut block = vec![format!("{}  {item}", " ".repeat(indent))];
    for l in &lines[line..] {
        let t = l.trim_start();
        if !t.is_empty() && !t.starts_with('#') && l.len() - t.len() <= indent {
            break;
        }
        block.push(l.to_string());
    }
    let (mut kind, mut name) = (None, None);
    for l in block.iter_mut() {
        let t = l.trim_start();
        let value = |key: &str| t[key.len()..].split(" #").next().map(|v| v.trim().to_string());
        if l.len() - t.len() == indent + 2 && t.starts_with("name:") {
            name = value("name:");
        }
        if l.len() - t.len() == indent + 2 && t.starts_with("type:") {
            kind = value("type:");
            l.clear();
        }
    }
    let rule = name.map_or_else(|| format!("the rule at line {line}"), |n| format!("rule `{n}`"));
    let block = block.join("\n");
    let e = match kind?.as_str() {
        "deterministic" => serde_yaml::from_str::<DeterministicRule>(&block).err(),
        "fuzzy" => serde_yaml::from_str::<FuzzyRule>(&block).err(),
        "external_id" => serde_yaml::from_str::<ExternalIdRule>(&block).err(),
        "probabilistic" => serde_yaml::from_str::<ProbabilisticRule>(&block).err(),
        _ => None,
    }?;
    let at = e.location()?;
    match yaml_error(file, &e) {
        ConfigError::At { path, message, .. } => Some(ConfigError::At {
            path,
            line: line + at.line() - 1,
            column: at.column(),
            message: format!("{rule}: {message}"),
        }),
        other => Some(other),
    }
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

/// Where `token` is written in the rule named `rule`: the first line from the rule's
/// `name:` on that holds it.
fn locate_in_rule(text: &str, rule: &str, token: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        t.strip_prefix("name:")
            .is_some_and(|v| v.split(" #").next().unwrap_or_default().trim().trim_matches(['"', '\'']) == rule)
    })?;
    let first = token.lines().next().unwrap_or(token);
    lines.iter().enumerate().skip(start).find_map(|(i, l)| l.find(first).map(|c| (i + 1, c + 1)))
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
    fn a_memory_limit_is_a_size_read_at_load() {
        let with = |size: &str| load(&format!("{MINIMAL}engine:\n  memory_limit: {size}\n"));
        assert_eq!(with("1.5G").unwrap().spec.engine.memory_limit, MemoryLimit::Size(ByteSize(3 << 29)));
        assert_eq!(with("Auto").unwrap().spec.engine.memory_limit, MemoryLimit::Auto);
        assert_eq!(load(MINIMAL).unwrap().spec.engine.memory_limit, MemoryLimit::Auto);
        let err = with("veel").unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:11:") && err.contains("`veel` is not a size such as 512MB"), "{err}");
        assert!(err.contains("or `auto`"), "{err}");
        let sizes = ["512MB", "2gb", "1000"].map(|t| t.parse::<ByteSize>().map(|b| b.0));
        assert_eq!(sizes, [Ok(512 << 20), Ok(2 << 30), Ok(1000)]);
        for bad in ["10XB", "0MB", ""] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
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
    fn an_unknown_golden_attribute_is_refused_at_its_line() {
        let text = format!("{MINIMAL}golden:\n  attributes:\n    email: most_frequent\n    adres: source_priority\n");
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("p.yaml:13:") && err.contains("`adres`") && err.contains("did you mean `address`?"),
            "{err}"
        );
        let err = load(&text.replace("adres", "street")).unwrap_err().to_string();
        assert!(err.contains("`street`") && err.contains("`address`"), "{err}");
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
    fn a_hand_weighted_level_has_exactly_one_condition() {
        let rule = |level: &str| {
            format!(
                "{MINIMAL}resolve:\n  rules:\n    - name: p\n      type: fuzzy\n      blocking: [[email]]\n      \
                 threshold: 1\n      comparisons:\n        - column: email\n          levels:\n            - {level}\n"
            )
        };
        let p = load(&rule("{ jaro_winkler: 0.9, weight: 2 }")).unwrap();
        let RuleSpec::Fuzzy(f) = &p.spec.resolve.rules[0] else { panic!("not fuzzy") };
        assert_eq!(f.comparisons[0].levels[0].condition, Condition::JaroWinkler(0.9));
        assert_eq!(f.comparisons[0].levels[0].weight, 2.0);
        let err = load(&rule("{ exact: true, jaro_winkler: 0.9, weight: 2 }")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:19:") && err.contains("this one has 2: split it into levels"), "{err}");
        let err = load(&rule("{ weight: 2 }")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:19:") && err.contains("a level needs one condition"), "{err}");
        // A wrong key deep in a rule is reported at its own line, not the rule's first.
        let err = load(&rule("{ exact: true, weight: 2 }").replace("threshold", "treshold")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:15:7: rule `p`: unknown key `treshold`"), "{err}");
        assert!(err.contains("did you mean `threshold`?"), "{err}");
    }

    #[test]
    fn columns_in_a_rules_sql_are_checked_at_their_line() {
        let rule = |filter: &str, level: &str| {
            format!(
                "{MINIMAL}resolve:\n  rules:\n    - name: p\n      type: probabilistic\n      \
                 blocking: [[email]]\n      where: \"{filter}\"\n      comparisons:\n        - column: email\n          \
                 levels:\n            - exact\n            - {{ sql: \"{level}\" }}\n      threshold: 0.99\n"
            )
        };
        let ok = load(&rule("phone_kind <> 'fixed_line'", "jaro_winkler(l.email, r.email) > 0.9"));
        assert!(ok.is_ok(), "{}", ok.unwrap_err());
        let err = load(&rule("phone_kind <> 'x'", "l.soc_sec_id = r.soc_sec_id")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:20:") && err.contains("unknown column `soc_sec_id`"), "{err}");
        assert!(err.contains("(columns: email, "), "{err}");
        let err = load(&rule("phone_knd <> 'x'", "l.email = r.email")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:15:") && err.contains("did you mean `phone_kind`?"), "{err}");
        let err = load(&rule("true", "email = r.email")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:20:") && err.contains("as `l.email` and `r.email`"), "{err}");
        let err = load(&rule("true", "l.email = = r.email")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:20:") && err.contains("is not an SQL condition"), "{err}");
    }

    #[test]
    fn locate_nested_keys() {
        let text = "a:\n  b:\n    c: 1\n  d:\n    c: 2\n";
        assert_eq!(locate_key(text, &["a", "d", "c"]), Some((5, 5)));
        assert_eq!(locate_key(text, &["a", "b"]), Some((2, 3)));
        assert_eq!(locate_key(text, &["x"]), None);
    }
}
