//! The YAML schema of a pipeline. Unknown keys are errors everywhere.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use indexmap::IndexMap;
use serde::Deserialize;

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Where published tables go (object-store URL or path).
    pub output: String,
    /// Crosswalk of an earlier run whose ids are kept; defaults to the published one at
    /// `output`.
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub engine: EngineSpec,
    #[serde(default)]
    pub storage: StorageSpec,
    pub sources: IndexMap<String, SourceSpec>,
    #[serde(default)]
    pub resolve: ResolveSpec,
    #[serde(default)]
    pub golden: GoldenSpec,
    #[serde(default)]
    pub models: Option<ModelsSpec>,
    /// Tables to publish, with their data tests. Empty means the golden tables.
    #[serde(default)]
    pub outputs: IndexMap<String, OutputSpec>,
}

impl PipelineSpec {
    /// Sources whose rows are identity records, in file order.
    pub fn identity_sources(&self) -> impl Iterator<Item = (&String, &SourceSpec)> {
        self.sources.iter().filter(|(_, s)| !s.identity.is_empty())
    }
}

/// Engine settings for the embedded DataFusion session.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Memory pool size such as `2GB` or `512MB`, or `auto`; spills to disk beyond it.
    #[serde(default)]
    pub memory_limit: MemoryLimit,
    #[serde(default)]
    pub target_partitions: Option<usize>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Any DataFusion configuration key (`datafusion.optimizer.prefer_hash_join: false`),
    /// applied as given; an unknown key or bad value fails before the run starts.
    #[serde(default)]
    pub settings: IndexMap<String, serde_yaml::Value>,
}

/// The engine's memory pool: a size, or `auto` (the default), half the memory of the
/// machine or of its container, whichever is less ([`crate::engine::auto_memory_limit`]).
/// A fixed size too small for the machine only makes a run spill and take more passes
/// (at 1M people a 2 GB pool ran 7% slower than `auto`'s 11.8 GB on a 23 GB machine);
/// half leaves the other half for what the pool does not count (Parquet buffers, the
/// allocator's pages, the rest of the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum MemoryLimit {
    #[default]
    Auto,
    Size(ByteSize),
}

impl MemoryLimit {
    /// The pool's size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            MemoryLimit::Auto => crate::engine::auto_memory_limit(),
            MemoryLimit::Size(size) => size.0,
        }
    }
}

impl std::str::FromStr for MemoryLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<MemoryLimit, String> {
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(MemoryLimit::Auto);
        }
        text.parse().map(MemoryLimit::Size).map_err(|e| format!("{e}, or `auto`"))
    }
}

impl TryFrom<String> for MemoryLimit {
    type Error = String;

    fn try_from(text: String) -> Result<MemoryLimit, String> {
        text.parse()
    }
}

/// A number of bytes, written `512MB`, `2GB`, `1.5G` or `1000` (units of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ByteSize(pub usize);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let t = text.trim().to_ascii_uppercase();
        let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.trim().parse().map_err(|_| format!("`{text}` is not a size such as 512MB or 2GB"))?;
        let factor: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "K" | "KB" | "KIB" => 1024.0,
            "M" | "MB" | "MIB" => 1024.0 * 1024.0,
            "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
            "T" | "TB" | "TIB" => 1024.0_f64.powi(4),
            _ => return Err(format!("`{text}`: unknown unit (use KB, MB, GB)")),
        };
        if n <= 0.0 {
            return Err(format!("`{text}` must be positive"));
        }
        Ok(ByteSize((n * factor) as usize))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = String;

    fn try_from(text: String) -> Result<ByteSize, String> {
        text.parse()
    }
}

impl EngineSpec {
    /// `settings` as DataFusion's configuration takes them: YAML scalars as text
    /// (`false`, `8`, `zstd(3)`).
    pub fn settings(&self) -> Vec<(String, String)> {
        let text = |value: &serde_yaml::Value| match value {
            serde_yaml::Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
        };
        self.settings.iter().map(|(k, v)| (k.clone(), text(v))).collect()
    }
}

/// Object-store client settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// Retries of a failed request, with exponential backoff.
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    #[serde(default = "default_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Give up retrying a request after this many seconds in all.
    #[serde(default = "default_retry_timeout_s")]
    pub retry_timeout_s: u64,
    /// Per-request timeout.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
    /// An object-store output lock whose run has not renewed it for this long is taken
    /// over (that run died); a live run renews it every quarter of this.
    #[serde(default = "default_lock_timeout_s")]
    pub lock_timeout_s: u64,
}

fn default_lock_timeout_s() -> u64 {
    120
}

fn default_retries() -> usize {
    10
}
fn default_backoff_ms() -> u64 {
    250
}
fn default_max_backoff_ms() -> u64 {
    15_000
}
fn default_retry_timeout_s() -> u64 {
    180
}
fn default_request_timeout_s() -> u64 {
    60
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            max_retries: default_retries(),
            initial_backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            retry_timeout_s: default_retry_timeout_s(),
            request_timeout_s: default_request_timeout_s(),
            lock_timeout_s: default_lock_timeout_s(),
        }
    }
}

/// One source system dump: a glob of files in one format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// URL or path, with a glob in the file name: `${input}/crm/contacts*.csv`.
    pub location: String,
    pub format: FormatSpec,
    /// Column whose value, as text, is the record's `source_record_id`. Required for
    /// identity sources; facts without one (e-mail events) have a null record id.
    #[serde(default)]
    pub key: Option<String>,
    /// Column types that override what is read or inferred (`amount_eur: decimal(18,2)`).
    #[serde(default)]
    pub schema: IndexMap<String, SqlType>,
    /// A source that matches no file is skipped instead of failing the run.
    #[serde(default)]
    pub optional: bool,
    /// What to do with rows that cannot be read.
    #[serde(default)]
    pub on_bad_rows: BadRowPolicy,
    /// Canonical identity attribute -> SQL expression over this source's columns. A
    /// source with a mapping holds identity records.
    #[serde(default)]
    pub identity: IndexMap<Attribute, String>,
    /// Identifiers shared with other systems (`loyalty_card: card_number`): records with
    /// the same name and value are linked by `external_id` rules.
    #[serde(default)]
    pub external_ids: IndexMap<String, String>,
    /// Attributes of your own (`state: upper(state)`, `national_id: bsn`): name -> SQL
    /// expression over this source's columns, staged as text under that name, for rules
    /// to block on and compare (NULL in sources that do not give it).
    #[serde(default)]
    pub attributes: IndexMap<String, String>,
    /// For facts: the identity record each row belongs to.
    #[serde(default)]
    pub belongs_to: Option<BelongsTo>,
}

/// How a fact row finds its identity record: `column` holds the key of a `source` record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BelongsTo {
    pub source: String,
    pub column: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRowPolicy {
    /// Stop the run naming the file and line.
    #[default]
    Fail,
    /// Set the rows aside under `${output}/_rejected/<source>/` and count them.
    Quarantine,
}

/// File format with its options.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FormatSpec {
    Csv {
        #[serde(default = "default_delimiter")]
        delimiter: char,
        #[serde(default = "default_true")]
        header: bool,
        #[serde(default = "default_quote")]
        quote: char,
        #[serde(default)]
        escape: Option<char>,
    },
    Ndjson {},
    Parquet {},
}

fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn default_true() -> bool {
    true
}

/// A column type written the SQL way: `text`, `bigint`, `double`, `boolean`, `date`,
/// `timestamp`, `decimal(18,2)`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SqlType(pub String);

impl SqlType {
    pub fn parse_sql_type(&self) -> Result<DataType, String> {
        let t = self.0.trim().to_lowercase().replace(' ', "");
        Ok(match t.as_str() {
            "text" | "string" | "varchar" | "utf8" => DataType::Utf8,
            "int" | "integer" | "bigint" | "int64" | "long" => DataType::Int64,
            "double" | "float" | "float64" | "real" => DataType::Float64,
            "bool" | "boolean" => DataType::Boolean,
            "date" => DataType::Date32,
            "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            _ => {
                let inner = t.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
                    format!("unknown type `{}` (text, bigint, double, boolean, date, timestamp, decimal(p,s))", self.0)
                })?;
                let (p, s) =
                    inner.split_once(',').ok_or_else(|| format!("`{}`: decimal needs (precision,scale)", self.0))?;
                let p: u8 = p.parse().map_err(|_| format!("`{}`: bad precision", self.0))?;
                let s: i8 = s.parse().map_err(|_| format!("`{}`: bad scale", self.0))?;
                if p == 0 || p > 38 || s < 0 || s as u8 > p {
                    return Err(format!("`{}`: precision 1..38 and scale 0..precision", self.0));
                }
                DataType::Decimal128(p, s)
            }
        })
    }
}

/// The canonical identity attributes a source can map its columns to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Email,
    Phone,
    FirstName,
    LastName,
    /// First and last name in one field; split when `first_name`/`last_name` are absent.
    FullName,
    BirthDate,
    Street,
    HouseNumber,
    Postcode,
    City,
    Country,
    UpdatedAt,
}

impl Attribute {
    pub const ALL: [Attribute; 12] = [
        Attribute::Email,
        Attribute::Phone,
        Attribute::FirstName,
        Attribute::LastName,
        Attribute::FullName,
        Attribute::BirthDate,
        Attribute::Street,
        Attribute::HouseNumber,
        Attribute::Postcode,
        Attribute::City,
        Attribute::Country,
        Attribute::UpdatedAt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attribute::Email => "email",
            Attribute::Phone => "phone",
            Attribute::FirstName => "first_name",
            Attribute::LastName => "last_name",
            Attribute::FullName => "full_name",
            Attribute::BirthDate => "birth_date",
            Attribute::Street => "street",
            Attribute::HouseNumber => "house_number",
            Attribute::Postcode => "postcode",
            Attribute::City => "city",
            Attribute::Country => "country",
            Attribute::UpdatedAt => "updated_at",
        }
    }
}

/// Identity resolution: the rules that link records and the guardrails that stop them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveSpec {
    /// Region for phone numbers written without a country prefix.
    #[serde(default = "default_region")]
    pub default_region: String,
    #[serde(default)]
    pub guardrails: GuardrailSpec,
    #[serde(default = "default_rules")]
    pub rules: Vec<RuleSpec>,
    /// In how many passes each rule's joins run, each over a share of the identifier
    /// values: `auto` picks enough for the engine's memory limit.
    #[serde(default)]
    pub passes: AutoCount,
    /// A model file (`klantbeeld estimate`, or a run's `_model.json`) whose weights the
    /// probabilistic rules use instead of estimating afresh, relative to the YAML's folder:
    /// nightly runs then decide the same way.
    #[serde(default)]
    pub model: Option<std::path::PathBuf>,
}

/// `auto` or a fixed count of at least 1 (passes, batches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_yaml::Value")]
pub struct AutoCount(pub Option<usize>);

impl TryFrom<serde_yaml::Value> for AutoCount {
    type Error = String;

    fn try_from(value: serde_yaml::Value) -> Result<Self, String> {
        let text = match &value {
            serde_yaml::Value::String(s) => s.trim().to_string(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match text.as_str() {
            "auto" => Ok(AutoCount(None)),
            t => match t.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(AutoCount(Some(n))),
                _ => Err(format!("expected `auto` or a number of at least 1, got `{}`", text_of(&value))),
            },
        }
    }
}

fn text_of(value: &serde_yaml::Value) -> String {
    serde_yaml::to_string(value).unwrap_or_default().trim().to_string()
}

fn default_region() -> String {
    "NL".into()
}

fn default_rules() -> Vec<RuleSpec> {
    vec![RuleSpec::Deterministic(DeterministicRule {
        name: "same_email".into(),
        on: vec!["email".into()],
        unless_conflict: vec!["first_name".into()],
        max_people: Some(3),
        max_group_size: Some(50),
        filter: None,
    })]
}

impl Default for ResolveSpec {
    fn default() -> Self {
        ResolveSpec {
            default_region: default_region(),
            guardrails: GuardrailSpec::default(),
            rules: default_rules(),
            passes: AutoCount::default(),
            model: None,
        }
    }
}

/// Limits that keep shared identifiers and chains from over-merging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSpec {
    /// No customer grows beyond this many records; larger merges are refused.
    #[serde(default = "default_max_cluster")]
    pub max_cluster_size: usize,
    /// Attributes that may not disagree inside one customer.
    #[serde(default = "default_conflicts")]
    pub conflicting: Vec<ClusterCheck>,
}

/// An attribute that clustering checks over whole customers before a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterCheck {
    /// Two birth dates that are no typo of each other.
    BirthDate,
    /// More distinct first names than one person goes by.
    FirstName,
}

fn default_max_cluster() -> usize {
    50
}
fn default_conflicts() -> Vec<ClusterCheck> {
    vec![ClusterCheck::BirthDate, ClusterCheck::FirstName]
}

impl Default for GuardrailSpec {
    fn default() -> Self {
        GuardrailSpec { max_cluster_size: default_max_cluster(), conflicting: default_conflicts() }
    }
}

/// Columns of the staged identity table that rules can use.
pub const MATCH_COLUMNS: &[&str] = &[
    "email",
    "email_local",
    "phone",
    "phone_kind",
    "first_name",
    "first_name_key",
    "first_name_root",
    "first_initial",
    "first_name_known",
    "last_name",
    "last_name_key",
    "last_name_core",
    "last_name_phonetic",
    "birth_date",
    "street",
    "house_number",
    "postcode",
    "city",
    "country",
];

/// Columns of a staged record besides the ones rules use: no attribute of a pipeline's own
/// may take these names.
pub const STAGED_INTERNAL: &[&str] =
    &["rid", "source_system", "source_record_id", "set_aside", "updated_at", "cluster_id", "matched_by"];

/// The identity attribute a staged column is derived from (`last_name_phonetic` ->
/// `last_name`): columns of one attribute agree together, so a blocking rule on one of
/// them says nothing about a comparison of another.
pub fn attribute_of(column: &str) -> &str {
    match column {
        "email_local" => "email",
        "phone_kind" => "phone",
        "first_name_key" | "first_name_root" | "first_initial" | "first_name_known" => "first_name",
        "last_name_key" | "last_name_core" | "last_name_phonetic" => "last_name",
        other => other,
    }
}

/// Attributes whose disagreement can block a link.
pub const CONFLICT_ATTRIBUTES: &[&str] = &["first_name", "last_name", "birth_date", "house_number", "postcode"];

/// What is wrong with a rule, and the text in the rule it is about (to find its line).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRule {
    pub message: String,
    pub token: String,
}

impl BadRule {
    fn at(token: &str, message: String) -> BadRule {
        BadRule { message, token: token.to_string() }
    }
}

/// The columns an SQL condition names, as `(Some("l"), "birth_date")` for `l.birth_date`
/// and `(None, "phone_kind")` for a plain name; unquoted names folded to lower case as the
/// engine does.
pub fn sql_columns(sql: &str) -> Result<Vec<(Option<String>, String)>, String> {
    use datafusion::sql::sqlparser::ast::{Expr, Ident, visit_expressions};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use datafusion::sql::sqlparser::tokenizer::Token;
    let not_sql = |e: &dyn std::fmt::Display| format!("`{sql}` is not an SQL condition: {e}");
    let mut parser = Parser::new(&GenericDialect {}).try_with_sql(sql).map_err(|e| not_sql(&e))?;
    let expr = parser.parse_expr().map_err(|e| not_sql(&e))?;
    if parser.peek_token().token != Token::EOF {
        return Err(not_sql(&format!("unexpected `{}`", parser.peek_token().token)));
    }
    let name = |i: &Ident| if i.quote_style.is_some() { i.value.clone() } else { i.value.to_lowercase() };
    let mut out = Vec::new();
    let _ = visit_expressions(&expr, |e| {
        match e {
            Expr::Identifier(i) => out.push((None, name(i))),
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => out.push((Some(name(&parts[0])), name(&parts[1]))),
            _ => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Ok(out)
}

/// A named rule; its name is recorded on every link it makes.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleSpec {
    /// Records equal on all `on` columns (after normalisation) are one person.
    Deterministic(DeterministicRule),
    /// Candidate pairs from blocking keys, scored by comparison levels.
    Fuzzy(FuzzyRule),
    /// Records carrying the same external id (`external_ids` in the sources).
    ExternalId(ExternalIdRule),
    /// Candidate pairs from blocking keys, scored by comparison levels whose weights are
    /// estimated from the data (Fellegi-Sunter, as Splink does).
    Probabilistic(ProbabilisticRule),
}

impl RuleSpec {
    pub fn name(&self) -> &str {
        match self {
            RuleSpec::Deterministic(r) => &r.name,
            RuleSpec::Fuzzy(r) => &r.name,
            RuleSpec::ExternalId(r) => &r.name,
            RuleSpec::Probabilistic(r) => &r.name,
        }
    }

    /// Checks the rule's columns against what staging gives: the built-in columns and
    /// `extra` (the pipeline's own attributes and `ext_<id>` external ids), those in its
    /// SQL (`where`, `sql:` levels) included.
    pub fn check(&self, extra: &[String]) -> Result<(), BadRule> {
        let known: Vec<&str> = MATCH_COLUMNS.iter().copied().chain(extra.iter().map(String::as_str)).collect();
        let column = |c: &String| -> Result<(), BadRule> {
            if known.contains(&c.as_str()) {
                Ok(())
            } else {
                Err(BadRule::at(
                    c,
                    format!(
                        "unknown column `{c}`{} (columns: {})",
                        super::suggest(c, known.iter().copied()),
                        known.join(", ")
                    ),
                ))
            }
        };
        let conflict = |c: &String| -> Result<(), BadRule> {
            if CONFLICT_ATTRIBUTES.contains(&c.as_str()) {
                Ok(())
            } else {
                Err(BadRule::at(
                    c,
                    format!("`{c}` cannot be a conflict{}", super::suggest(c, CONFLICT_ATTRIBUTES.iter().copied())),
                ))
            }
        };
        // A rule's `where` reads one record: plain column names.
        let filter = |sql: &Option<String>| -> Result<(), BadRule> {
            let Some(sql) = sql else { return Ok(()) };
            for (side, c) in sql_columns(sql).map_err(|m| BadRule::at(sql, m))? {
                if let Some(side) = side {
                    return Err(BadRule::at(
                        sql,
                        format!("`where`: `{side}.{c}`: a condition on one record names plain columns"),
                    ));
                }
                if !STAGED_INTERNAL.contains(&c.as_str()) {
                    column(&c).map_err(|e| BadRule::at(sql, format!("`where`: {}", e.message)))?;
                }
            }
            Ok(())
        };
        // A level reads a pair: `l.<column>` and `r.<column>`.
        let level_sql = |sql: &str| -> Result<(), BadRule> {
            for (side, c) in sql_columns(sql).map_err(|m| BadRule::at(sql, m))? {
                if side.is_none() {
                    return Err(BadRule::at(
                        sql,
                        format!("`{c}`: a level names the pair's columns as `l.{c}` and `r.{c}`"),
                    ));
                }
                column(&c).map_err(|e| BadRule::at(sql, e.message))?;
            }
            Ok(())
        };
        let blocking = |keys: &Vec<Vec<String>>| -> Result<(), BadRule> {
            if keys.is_empty() || keys.iter().any(Vec::is_empty) {
                return Err(BadRule::at("blocking", "`blocking` needs at least one non-empty list of columns".into()));
            }
            keys.iter().flatten().try_for_each(column)
        };
        match self {
            RuleSpec::Deterministic(r) => {
                if r.on.is_empty() {
                    return Err(BadRule::at("on", "`on` needs at least one column".into()));
                }
                r.on.iter().try_for_each(column)?;
                r.unless_conflict.iter().try_for_each(conflict)?;
                filter(&r.filter)
            }
            RuleSpec::Fuzzy(r) => {
                blocking(&r.blocking)?;
                r.unless_conflict.iter().try_for_each(conflict)?;
                filter(&r.filter)?;
                for c in &r.comparisons {
                    column(&c.column)?;
                    if c.levels.is_empty() {
                        return Err(BadRule::at(&c.column, format!("comparison `{}` has no levels", c.name())));
                    }
                    for level in &c.levels {
                        match &level.condition {
                            Condition::Sql(sql) => level_sql(sql)?,
                            Condition::Exact(Some(other)) => column(other)?,
                            _ => {}
                        }
                    }
                }
                Ok(())
            }
            RuleSpec::ExternalId(r) => r.unless_conflict.iter().try_for_each(conflict),
            RuleSpec::Probabilistic(r) => {
                blocking(&r.blocking)?;
                r.unless_conflict.iter().try_for_each(conflict)?;
                filter(&r.filter)?;
                if r.comparisons.is_empty() {
                    return Err(BadRule::at("comparisons", "`comparisons` needs at least one comparison".into()));
                }
                for c in &r.comparisons {
                    column(&c.column)?;
                    if c.levels.is_empty() {
                        return Err(BadRule::at(&c.column, format!("comparison `{}` has no levels", c.name())));
                    }
                    for level in &c.levels {
                        if let LevelKind::Sql(sql) = &level.kind {
                            level_sql(sql)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeterministicRule {
    pub name: String,
    pub on: Vec<String>,
    /// Pairs that disagree on any of these do not link (household members sharing a
    /// mailbox have different first names).
    #[serde(default)]
    pub unless_conflict: Vec<String>,
    /// Guardrail: a value carried by more distinct people (first names) than this is not
    /// evidence at all; with more than one, records without a first name do not link
    /// through it.
    #[serde(default)]
    pub max_people: Option<usize>,
    /// Guardrail: a value on more records than this (`info@`, a shop's own phone) is not
    /// evidence.
    #[serde(default)]
    pub max_group_size: Option<usize>,
    /// SQL condition on a record for it to take part (`phone_kind = 'mobile'`).
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuzzyRule {
    pub name: String,
    /// Each list is a blocking key: only records equal on all its columns are compared.
    pub blocking: Vec<Vec<String>>,
    pub comparisons: Vec<ComparisonSpec>,
    /// Minimum total weight for a link.
    #[serde(deserialize_with = "finite")]
    pub threshold: f64,
    #[serde(default)]
    pub unless_conflict: Vec<String>,
    /// Guardrail: blocks with more records than this are skipped (and counted).
    #[serde(default = "default_max_block")]
    pub max_block_size: usize,
    /// SQL condition on a record for it to take part.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// Only pairs of records from two different sources (linking, not deduplicating:
    /// each system is known to hold a person once).
    #[serde(default)]
    pub link_only: bool,
}

fn default_max_block() -> usize {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticRule {
    pub name: String,
    /// Each list is a blocking rule: records equal on all its columns are compared.
    pub blocking: Vec<Vec<String>>,
    pub comparisons: Vec<ProbabilisticComparison>,
    /// Match probability at or above which a pair links.
    #[serde(deserialize_with = "probability")]
    pub threshold: f64,
    #[serde(default)]
    pub unless_conflict: Vec<String>,
    /// Guardrail: blocks with more records than this are skipped (and counted), so that
    /// a common value never makes pairs quadratic.
    #[serde(default = "default_max_block")]
    pub max_block_size: usize,
    /// SQL condition on a record for it to take part.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// Only pairs of records from two different sources (linking, not deduplicating:
    /// each system is known to hold a person once).
    #[serde(default)]
    pub link_only: bool,
}

/// One attribute compared in levels: the first level a pair meets is its level; a pair
/// with either value missing has none (no evidence either way), one that meets no level
/// is in the implicit last level, disagreement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticComparison {
    /// Display name; the column when absent.
    #[serde(default)]
    pub name: Option<String>,
    pub column: String,
    pub levels: Vec<Level>,
    /// Exact agreement on a rare value weighs more than on a common one (`de Jong`).
    #[serde(default)]
    pub term_frequency: bool,
}

impl ProbabilisticComparison {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.column)
    }
}

/// A comparison level: a kind of agreement, and optionally a weight that replaces the
/// estimated one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawLevel")]
pub struct Level {
    pub kind: LevelKind,
    pub weight: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LevelKind {
    /// Equal values.
    Exact,
    /// One value is a single letter, the other starts with it (`K.` and `Kees`).
    Initials,
    /// Jaro-Winkler similarity at least this.
    JaroWinkler(f64),
    /// Damerau-Levenshtein distance at most this.
    DamerauLevenshtein(u32),
    /// Any SQL condition over `l.<column>` and `r.<column>`.
    Sql(String),
}

impl LevelKind {
    pub fn label(&self) -> String {
        match self {
            LevelKind::Exact => "exact".into(),
            LevelKind::Initials => "initials".into(),
            LevelKind::JaroWinkler(t) => format!("jaro_winkler>={t}"),
            LevelKind::DamerauLevenshtein(d) => format!("damerau_levenshtein<={d}"),
            LevelKind::Sql(_) => "sql".into(),
        }
    }
}

/// A level as written: a word (`exact`, `initials`) or a one-kind map with an optional
/// `weight`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawLevel {
    Word(String),
    Map(RawLevelMap),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevelMap {
    #[serde(default)]
    exact: Option<bool>,
    #[serde(default)]
    initials: Option<bool>,
    #[serde(default)]
    jaro_winkler: Option<f64>,
    #[serde(default)]
    damerau_levenshtein: Option<u32>,
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    weight: Option<f64>,
}

const LEVEL_KINDS: &str = "`exact`, `initials`, `{jaro_winkler: 0.9}`, `{damerau_levenshtein: 1}` or `{sql: ...}`";

impl TryFrom<RawLevel> for Level {
    type Error = String;

    fn try_from(raw: RawLevel) -> Result<Level, String> {
        let m = match raw {
            RawLevel::Word(w) => match w.as_str() {
                "exact" => return Ok(Level { kind: LevelKind::Exact, weight: None }),
                "initials" => return Ok(Level { kind: LevelKind::Initials, weight: None }),
                other => return Err(format!("unknown level `{other}`: a level is {LEVEL_KINDS}")),
            },
            RawLevel::Map(m) => m,
        };
        let mut kinds = Vec::new();
        if m.exact == Some(true) {
            kinds.push(LevelKind::Exact);
        }
        if m.initials == Some(true) {
            kinds.push(LevelKind::Initials);
        }
        if let Some(t) = m.jaro_winkler {
            if !(0.0..=1.0).contains(&t) {
                return Err(format!("jaro_winkler: `{t}` is not a similarity between 0 and 1"));
            }
            kinds.push(LevelKind::JaroWinkler(t));
        }
        if let Some(d) = m.damerau_levenshtein {
            kinds.push(LevelKind::DamerauLevenshtein(d));
        }
        if let Some(sql) = m.sql {
            kinds.push(LevelKind::Sql(sql));
        }
        if let Some(w) = m.weight.filter(|w| !w.is_finite()) {
            return Err(format!("weight: `{w}` is not a finite number"));
        }
        match kinds.len() {
            1 => Ok(Level { kind: kinds.remove(0), weight: m.weight }),
            0 => Err(format!("a level needs one kind: {LEVEL_KINDS}")),
            _ => Err(format!("a level has one kind, this one has {}: split it into levels", kinds.len())),
        }
    }
}

/// A match probability: strictly between 0 and 1.
fn probability<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("`{v}` is not a match probability (between 0 and 1, such as 0.99)")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIdRule {
    pub name: String,
    /// Which external id (a key under the sources' `external_ids`); all when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub unless_conflict: Vec<String>,
}

/// One attribute compared in levels, first matching level wins (Splink's vocabulary).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonSpec {
    /// Display name; the column when absent.
    #[serde(default)]
    pub name: Option<String>,
    pub column: String,
    pub levels: Vec<LevelSpec>,
}

impl ComparisonSpec {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.column)
    }
}

/// A comparison level of a hand-weighted rule: one condition on the pair and the weight
/// it adds.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawLevelSpec")]
pub struct LevelSpec {
    pub condition: Condition,
    pub weight: f64,
}

/// What a pair must meet for a level of a hand-weighted rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Either side null (`null` itself is a YAML keyword, hence the name).
    EitherNull,
    /// Equal on the comparison's own column (`None`) or on another one.
    Exact(Option<String>),
    /// Jaro-Winkler similarity at least this.
    JaroWinkler(f64),
    /// Damerau-Levenshtein distance at most this.
    DamerauLevenshtein(u32),
    /// Any SQL condition over `l.<column>` and `r.<column>`.
    Sql(String),
    /// Everything else.
    Else,
}

/// A level as written: one of the conditions, and a weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevelSpec {
    #[serde(default)]
    either_null: bool,
    #[serde(default)]
    exact: Option<ExactOn>,
    #[serde(default, deserialize_with = "finite_opt")]
    jaro_winkler: Option<f64>,
    #[serde(default)]
    damerau_levenshtein: Option<u32>,
    #[serde(default)]
    sql: Option<String>,
    #[serde(default, rename = "else")]
    otherwise: bool,
    #[serde(deserialize_with = "finite")]
    weight: f64,
}

const CONDITIONS: &str = "`either_null: true`, `exact: true` (or a column), `jaro_winkler: 0.9`, `damerau_levenshtein: 1`, `sql: ...` \
     or `else: true`";

impl TryFrom<RawLevelSpec> for LevelSpec {
    type Error = String;

    fn try_from(raw: RawLevelSpec) -> Result<LevelSpec, String> {
        let mut conditions = Vec::new();
        if raw.either_null {
            conditions.push(Condition::EitherNull);
        }
        match raw.exact {
            Some(ExactOn::Own(true)) => conditions.push(Condition::Exact(None)),
            Some(ExactOn::Column(c)) => conditions.push(Condition::Exact(Some(c))),
            Some(ExactOn::Own(false)) | None => {}
        }
        if let Some(t) = raw.jaro_winkler {
            conditions.push(Condition::JaroWinkler(t));
        }
        if let Some(d) = raw.damerau_levenshtein {
            conditions.push(Condition::DamerauLevenshtein(d));
        }
        if let Some(sql) = raw.sql {
            conditions.push(Condition::Sql(sql));
        }
        if raw.otherwise {
            conditions.push(Condition::Else);
        }
        match conditions.len() {
            1 => Ok(LevelSpec { condition: conditions.remove(0), weight: raw.weight }),
            0 => Err(format!("a level needs one condition: {CONDITIONS}")),
            n => Err(format!("a level has one condition, this one has {n}: split it into levels")),
        }
    }
}

/// A number that SQL can compare with: YAML's `.nan` and `.inf` are refused at their key.
fn finite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() { Ok(v) } else { Err(serde::de::Error::custom(format!("`{v}` is not a finite number"))) }
}

fn finite_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    finite(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ExactOn {
    Own(bool),
    Column(String),
}

/// Survivorship: which record's value each golden attribute takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSpec {
    /// Identity sources from most to least trusted.
    #[serde(default)]
    pub source_priority: Vec<String>,
    /// Per attribute; `most_recent` for those not listed.
    #[serde(default)]
    pub attributes: IndexMap<GoldenChoice, Survivorship>,
}

/// What `golden.attributes` configures: the golden record's attributes, each surviving
/// from one record. The address parts survive together, so that a street never lands at
/// another record's postcode: they are one choice, `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoldenChoice {
    FirstName,
    LastName,
    Email,
    Phone,
    BirthDate,
    Address,
}

impl GoldenChoice {
    /// In the golden table's column order.
    pub const ALL: [GoldenChoice; 6] = [
        GoldenChoice::FirstName,
        GoldenChoice::LastName,
        GoldenChoice::Email,
        GoldenChoice::Phone,
        GoldenChoice::BirthDate,
        GoldenChoice::Address,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GoldenChoice::Address => "address",
            other => other.columns()[0],
        }
    }

    /// The golden columns this choice fills.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            GoldenChoice::FirstName => &["first_name"],
            GoldenChoice::LastName => &["last_name"],
            GoldenChoice::Email => &["email"],
            GoldenChoice::Phone => &["phone"],
            GoldenChoice::BirthDate => &["birth_date"],
            GoldenChoice::Address => &["street", "house_number", "postcode", "city", "country"],
        }
    }

    /// The column whose value a record must have to be chosen, and that `most_frequent`
    /// counts: an address is known by its postcode.
    pub fn key_column(self) -> &'static str {
        match self {
            GoldenChoice::Address => "postcode",
            other => other.columns()[0],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Survivorship {
    SourcePriority,
    MostRecent,
    MostFrequent,
    FirstNonNull,
}

/// The SQL models folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSpec {
    /// Folder of `*.sql` files, relative to the pipeline file.
    pub path: String,
    /// Data tests per model (published or not), as under `outputs`.
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub tests: IndexMap<String, Vec<TestSpec>>,
    /// Models built in batches of a key's values, so that their joins hold one share of
    /// their tables at a time (like dbt's microbatch models, by key instead of time).
    #[serde(default)]
    pub batched: IndexMap<String, BatchSpec>,
}

/// How a model is built in batches: each batch reads the rows of its tables whose `by`
/// column hashes into that batch. Only right for a model whose rows for one key come
/// from that key's rows alone (joins and GROUP BY on the key, no ranking over all keys).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    pub by: String,
    /// `auto`: enough batches for the engine's memory limit.
    #[serde(default)]
    pub batches: AutoCount,
}

/// A published table and its data tests.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Hive-style partition columns.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Each test is a one-key map (`- unique: customer_id`), as in dbt.
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub tests: Vec<TestSpec>,
}

/// A data test; a failure stops the run before publishing.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TestSpec {
    Unique(Columns),
    NotNull(Columns),
    AcceptedValues {
        column: String,
        values: Vec<String>,
    },
    Relationships {
        column: String,
        to: String,
        field: String,
    },
    /// An SQL condition every row must satisfy.
    Expression(String),
    RowCount(Bounds),
    /// Share of identity records that were merged with at least one other record.
    MatchRate(Bounds),
}

impl TestSpec {
    pub fn check(&self) -> Result<(), String> {
        match self {
            TestSpec::RowCount(b) | TestSpec::MatchRate(b) if b.min.is_none() && b.max.is_none() => {
                Err("bounds need `min` or `max`".into())
            }
            TestSpec::AcceptedValues { values, .. } if values.is_empty() => {
                Err("`accepted_values` needs values".into())
            }
            _ => Ok(()),
        }
    }
}

/// One column or a list of columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    One(String),
    Many(Vec<String>),
}

impl Columns {
    pub fn list(&self) -> Vec<String> {
        match self {
            Columns::One(c) => vec![c.clone()],
            Columns::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}
