//! Stage: every identity source mapped onto the canonical identity columns, normalised by
//! the klantbeeld UDFs, and all sources stacked into one `identity_records` table with a
//! dense record number (`rid`) that resolution works on.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::ScalarValue;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, col, ident, lit, nullif, trim, upper};

use crate::config::{Attribute, Pipeline, SourceSpec};
use crate::engine;
use crate::extract::{BadRow, ExtractedSource};
use crate::tables::{self, IDENTITY_RECORDS, KEPT_RECORDS, NAME_ROLES, STAGED_RECORDS};
use crate::udf::{Function, call};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{file}:{line}: key `sources.{source_name}.{key}`: {message}")]
    Mapping { file: String, line: usize, source_name: String, key: String, message: String },
    #[error("staging: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
}

impl StageError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        match self {
            StageError::Mapping { .. } => crate::ExitClass::Config,
            StageError::Engine(_) => crate::ExitClass::Other,
        }
    }
}

fn text(e: Expr) -> Expr {
    cast(e, DataType::Utf8)
}

fn null_text() -> Expr {
    cast(lit(ScalarValue::Null), DataType::Utf8)
}

fn blank_to_null(e: Expr) -> Expr {
    nullif(trim(vec![e]), lit(""))
}

/// Parses one mapping expression of a source (under `section.key`: `identity.email`,
/// `external_ids.card`, `attributes.state`) against the raw table as text, so that a wrong
/// column or bad SQL is reported with the YAML key it came from.
fn parse_mapping(
    pipeline: &Pipeline,
    raw: &DataFrame,
    name: &str,
    [section, key]: [&str; 2],
    sql: &str,
) -> Result<Expr, StageError> {
    raw.parse_sql_expr(sql).map(text).map_err(|e| StageError::Mapping {
        file: pipeline.file.display().to_string(),
        line: crate::config::locate_key(&pipeline.text, &["sources", name, section, key]).map_or(1, |(l, _)| l),
        source_name: name.into(),
        key: format!("{section}.{key}"),
        // The engine's hint names the internal raw table (`raw_crm.telefoon`); the user
        // knows the column by its own name.
        message: first_line(&e.to_string()).replace(&format!("{}.", tables::raw(name)), ""),
    })
}

/// The mapping of a canonical identity attribute, if the source has one.
fn mapping(
    pipeline: &Pipeline,
    raw: &DataFrame,
    name: &str,
    source: &SourceSpec,
    attribute: Attribute,
) -> Result<Option<Expr>, StageError> {
    let Some(sql) = source.identity.get(&attribute) else { return Ok(None) };
    parse_mapping(pipeline, raw, name, ["identity", attribute.name()], sql).map(Some)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// One identity source's raw values per attribute (`first_raw`, `email_raw`, ...), a
/// record with an overlong value set aside.
fn raw_values(pipeline: &Pipeline, raw: &DataFrame, name: &str, source: &SourceSpec) -> Result<DataFrame, StageError> {
    let get = |a: Attribute| mapping(pipeline, raw, name, source, a);
    let full = get(Attribute::FullName)?;
    let first = match (get(Attribute::FirstName)?, &full) {
        (Some(e), _) => e,
        (None, Some(f)) => call(Function::SplitFirstName, vec![f.clone()]),
        (None, None) => null_text(),
    };
    let last = match (get(Attribute::LastName)?, &full) {
        (Some(e), _) => e,
        (None, Some(f)) => call(Function::SplitLastName, vec![f.clone()]),
        (None, None) => null_text(),
    };
    let or_null = |e: Option<Expr>| e.unwrap_or_else(null_text);
    // Raw text per attribute first, so that each normalisation reads a plain column.
    let mut inner = vec![
        col("source_system"),
        col("source_record_id"),
        or_null(get(Attribute::Email)?).alias("email_raw"),
        or_null(get(Attribute::Phone)?).alias("phone_raw"),
        first.alias("first_raw"),
        last.alias("last_raw"),
        or_null(get(Attribute::BirthDate)?).alias("birth_raw"),
        or_null(get(Attribute::Street)?).alias("street_raw"),
        or_null(get(Attribute::HouseNumber)?).alias("house_raw"),
        or_null(get(Attribute::Postcode)?).alias("postcode_raw"),
        or_null(get(Attribute::City)?).alias("city_raw"),
        or_null(get(Attribute::Country)?).alias("country_raw"),
        or_null(get(Attribute::UpdatedAt)?).alias("updated_raw"),
    ];
    // Every source has every external id and attribute column (NULL where it maps none),
    // so that the sources stack into one table.
    for id in external_id_names(pipeline) {
        let value = match source.external_ids.get(&id) {
            Some(sql) => parse_mapping(pipeline, raw, name, ["external_ids", &id], sql)?,
            None => null_text(),
        };
        inner.push(value.alias(format!("ext_{id}")));
    }
    for attribute in own_attributes(pipeline) {
        let value = match source.attributes.get(&attribute) {
            Some(sql) => parse_mapping(pipeline, raw, name, ["attributes", &attribute], sql)?,
            None => null_text(),
        };
        inner.push(value.alias(own_raw(&attribute)));
    }
    set_aside_overlong(raw.clone().select(inner)?)
}

/// The word a name is counted under: folded, particles dropped (`de Vries` -> `vries`).
fn name_core(e: Expr) -> Expr {
    call(Function::StripParticles, vec![e])
}

/// Counts how often each name is written as a first and as a last name in these records
/// and writes the counts as table `name_roles` under `scratch`: the data says which names
/// are given names.
async fn register_name_roles(ctx: &SessionContext, raw: DataFrame, scratch: &Path) -> Result<(), StageError> {
    use datafusion::functions_aggregate::expr_fn::sum;
    let words = |column: &str, first: i64, last: i64| {
        raw.clone().select(vec![
            name_core(col(column)).alias("name"),
            lit(first).alias("as_first"),
            lit(last).alias("as_last"),
        ])
    };
    let counts =
        words("first_raw", 1, 0)?.union(words("last_raw", 0, 1)?)?.filter(col("name").is_not_null())?.aggregate(
            vec![col("name")],
            vec![sum(col("as_first")).alias("as_first"), sum(col("as_last")).alias("as_last")],
        )?;
    // A file, not a table in memory: the records join it, on whichever engine (Ballista
    // has no in-memory tables).
    Ok(crate::engine::materialize(ctx, NAME_ROLES, counts, scratch).await?)
}

/// Puts first and last name back in their fields where a record has them the wrong way
/// round: its first name is written more than twice as often as a last name in this
/// data, and its last name more than twice as often as a first name. A particle that
/// came along with the given name is dropped from it.
async fn unswap_names(ctx: &SessionContext, raw: DataFrame) -> Result<DataFrame, StageError> {
    use datafusion::logical_expr::{JoinType, when};
    let roles = |side: &str| {
        let ctx = ctx.clone();
        let side = side.to_string();
        async move {
            ctx.table(NAME_ROLES).await?.select(vec![
                col("name").alias(format!("{side}_name")),
                col("as_first").alias(format!("{side}_as_first")),
                col("as_last").alias(format!("{side}_as_last")),
            ])
        }
    };
    let columns: Vec<String> = raw.schema().fields().iter().map(|f| f.name().clone()).collect();
    let joined = raw
        .join_on(roles("f").await?, JoinType::Left, vec![name_core(col("first_raw")).eq(col("f_name"))])?
        .join_on(roles("l").await?, JoinType::Left, vec![name_core(col("last_raw")).eq(col("l_name"))])?;
    let n = |c: &str| datafusion::prelude::coalesce(vec![col(c), lit(0i64)]);
    let swapped = n("f_as_last").gt(lit(2i64) * n("f_as_first")).and(n("l_as_first").gt(lit(2i64) * n("l_as_last")));
    let particles = format!("^(({})\\s+)+", crate::udf::PARTICLES.join("|"));
    let given =
        datafusion::functions::regex::expr_fn::regexp_replace(col("last_raw"), lit(particles), lit(""), Some(lit("i")));
    let exprs: Vec<Expr> = columns
        .iter()
        .map(|c| match c.as_str() {
            "first_raw" => when(swapped.clone(), given.clone()).otherwise(col("first_raw")).map(|e| e.alias(c)),
            "last_raw" => when(swapped.clone(), col("first_raw")).otherwise(col("last_raw")).map(|e| e.alias(c)),
            _ => Ok(ident(c)),
        })
        .collect::<Result<_, _>>()?;
    Ok(joined.select(exprs)?)
}

/// Normalises the raw values into the identity columns.
fn normalise(pipeline: &Pipeline, raw: DataFrame) -> Result<DataFrame, StageError> {
    use datafusion::functions::core::expr_fn::get_field;
    use datafusion::functions::regex::expr_fn::regexp_replace;
    let region = lit(pipeline.spec.resolve.default_region.clone());
    let mut outer = vec![
        col("source_system"),
        col("source_record_id"),
        call(Function::NormalizeEmail, vec![col("email_raw")]).alias("email"),
        // Read off the normalised address (everything before its last `@`, what
        // `email_local_part` gives): the optimiser normalises each address once for both.
        regexp_replace(call(Function::NormalizeEmail, vec![col("email_raw")]), lit("@[^@]*$"), lit(""), None)
            .alias("email_local"),
        // One parse gives both (the optimiser computes the shared call once).
        get_field(call(Function::ParsePhone, vec![col("phone_raw"), region.clone()]), "number").alias("phone"),
        get_field(call(Function::ParsePhone, vec![col("phone_raw"), region]), "kind").alias("phone_kind"),
        blank_to_null(col("first_raw")).alias("first_name"),
        call(Function::FoldName, vec![col("first_raw")]).alias("first_name_key"),
        call(Function::FirstNameRoot, vec![col("first_raw")]).alias("first_name_root"),
        call(Function::NameInitial, vec![col("first_raw")]).alias("first_initial"),
        call(Function::IsKnownFirstName, vec![col("first_raw")]).alias("first_name_known"),
        blank_to_null(col("last_raw")).alias("last_name"),
        call(Function::FoldName, vec![col("last_raw")]).alias("last_name_key"),
        call(Function::StripParticles, vec![col("last_raw")]).alias("last_name_core"),
        call(Function::DutchPhonetic, vec![col("last_raw")]).alias("last_name_phonetic"),
        call(Function::ParseDate, vec![col("birth_raw")]).alias("birth_date"),
        blank_to_null(col("street_raw")).alias("street"),
        call(Function::NormalizeHouseNumber, vec![col("house_raw")]).alias("house_number"),
        call(Function::NormalizePostcode, vec![col("postcode_raw")]).alias("postcode"),
        blank_to_null(col("city_raw")).alias("city"),
        upper(blank_to_null(col("country_raw"))).alias("country"),
        call(Function::ParseTimestamp, vec![col("updated_raw")]).alias("updated_at"),
    ];
    for id in external_id_names(pipeline) {
        let c = format!("ext_{id}");
        outer.push(blank_to_null(col(&c)).alias(&c));
    }
    for attribute in own_attributes(pipeline) {
        outer.push(blank_to_null(ident(own_raw(&attribute))).alias(&attribute));
    }
    Ok(raw.select(outer)?)
}

/// The raw column of an attribute of the pipeline's own.
fn own_raw(attribute: &str) -> String {
    format!("raw_attr_{attribute}")
}

/// Every attribute of the pipeline's own, in file order.
fn own_attributes(pipeline: &Pipeline) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, s) in &pipeline.spec.sources {
        for a in s.attributes.keys() {
            if !names.contains(a) {
                names.push(a.clone());
            }
        }
    }
    names
}

/// Longest identity value read, in characters. A longer one is no name, address or
/// identifier (a pasted text, a blob), and the comparison functions would pay for it.
pub const MAX_VALUE_CHARS: i64 = 256;

/// Column of a staged record that says why it was set aside (NULL: it was not).
pub const SET_ASIDE: &str = "set_aside";

/// Adds `set_aside` (which value is overlong) and blanks every raw value of such a
/// record, so that no normalisation ever sees it.
fn set_aside_overlong(staged: DataFrame) -> Result<DataFrame, StageError> {
    use datafusion::functions::string::expr_fn::concat;
    use datafusion::functions::unicode::expr_fn::character_length;
    use datafusion::logical_expr::when;
    let values: Vec<String> = staged
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != "source_system" && n != "source_record_id")
        .collect();
    let Some((first, rest)) = values.split_first() else { return Ok(staged) };
    let reason = |c: &str| {
        let name = match c {
            "first_raw" => "first_name",
            "last_raw" => "last_name",
            "birth_raw" => "birth_date",
            "house_raw" => "house_number",
            "updated_raw" => "updated_at",
            other => other.strip_prefix("raw_attr_").unwrap_or_else(|| other.trim_end_matches("_raw")),
        };
        concat(vec![
            lit(format!("`{name}` is ")),
            cast(character_length(ident(c)), DataType::Utf8),
            lit(format!(" characters long (at most {MAX_VALUE_CHARS})")),
        ])
    };
    let too_long = |c: &str| character_length(ident(c)).gt(lit(MAX_VALUE_CHARS));
    let mut case = when(too_long(first), reason(first));
    for c in rest {
        case = case.when(too_long(c), reason(c));
    }
    let with_reason = staged.with_column(SET_ASIDE, case.otherwise(null_text())?)?;
    let mut exprs = vec![col("source_system"), col("source_record_id"), col(SET_ASIDE)];
    for c in &values {
        exprs.push(when(col(SET_ASIDE).is_null(), ident(c)).end()?.alias(c));
    }
    Ok(with_reason.select(exprs)?)
}

/// Every external id name used by any source, in file order.
pub fn external_id_names(pipeline: &Pipeline) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, s) in &pipeline.spec.sources {
        for id in s.external_ids.keys() {
            if !names.contains(id) {
                names.push(id.clone());
            }
        }
    }
    names
}

/// Every identity source present in this run, its raw values stacked.
async fn raw_values_all(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    present: &[String],
) -> Result<DataFrame, StageError> {
    let mut all: Option<DataFrame> = None;
    for (name, source) in pipeline.spec.identity_sources() {
        if present.contains(name) {
            let raw = ctx.table(tables::raw(name)).await?;
            let values = raw_values(pipeline, &raw, name, source)?;
            all = Some(match all {
                None => values,
                Some(df) => df.union(values)?,
            });
        }
    }
    Ok(all.ok_or_else(|| datafusion::error::DataFusionError::Plan("no identity source has data".into()))?)
}

/// Keeps one row per record key, the most recently updated: a dump that holds a record
/// twice (an export artefact) must not give one record two customers.
pub fn latest_per_key(all: DataFrame) -> Result<DataFrame, StageError> {
    let rank = row_number()
        .partition_by(vec![col("source_system"), col("source_record_id")])
        .order_by(vec![
            col("updated_at").sort(false, false),
            col("email").sort(true, false),
            col("phone").sort(true, false),
            col("last_name_key").sort(true, false),
        ])
        .build()?;
    let names: Vec<Expr> = all.schema().fields().iter().map(|f| col(format!("\"{}\"", f.name()))).collect();
    let mut with_rank = names.clone();
    with_rank.push(rank.alias("key_rank"));
    Ok(all.select(with_rank)?.filter(col("key_rank").eq(lit(1u64)))?.select(names)?)
}

/// Numbers the records by `(source_system, source_record_id)`, so that a record's `rid`
/// only depends on the data. Each source is numbered on its own, after the sources before
/// it in name order: one sort of all records' wide rows would have to merge in a single
/// partition, which is what runs out of memory first on large inputs.
pub async fn with_record_numbers(all: DataFrame) -> Result<DataFrame, StageError> {
    let counts = all
        .clone()
        .aggregate(
            vec![col("source_system")],
            vec![datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("n")],
        )?
        .sort(vec![col("source_system").sort(true, true)])?
        .collect()
        .await?;
    let mut offset = 0i64;
    let mut offsets = datafusion::logical_expr::case(col("source_system"));
    for batch in &counts {
        let names = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)
            .map_err(datafusion::error::DataFusionError::from)?;
        let names = names.as_string::<i32>();
        let n = batch.column(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            offsets = offsets.when(lit(names.value(i).to_string()), lit(offset));
            offset += n.value(i);
        }
    }
    let offsets = offsets.otherwise(lit(0i64))?;
    let within = row_number()
        .partition_by(vec![col("source_system")])
        .order_by(vec![col("source_record_id").sort(true, true)])
        .build()?;
    let rid = cast(offsets + cast(within, DataType::Int64) - lit(1i64), DataType::UInt32);
    let mut exprs = vec![rid.alias("rid")];
    exprs.extend(all.schema().fields().iter().map(|f| col(format!("\"{}\"", f.name()))));
    Ok(all.select(exprs)?)
}

/// What staging left out, per source.
#[derive(Debug, Default)]
pub struct StagedCounts {
    /// Rows dropped because their record key was repeated (the latest is kept).
    pub repeated: BTreeMap<String, u64>,
    /// Records set aside (an overlong value), with the reason, by source.
    pub set_aside: BTreeMap<String, Vec<(String, String)>>,
}

impl StagedCounts {
    /// Adds the records set aside to their source's bad rows, so that they are counted in
    /// the manifest and written under `_rejected/` like the rows extract rejected.
    pub fn add_set_aside_to(&self, pipeline: &Pipeline, extracted: &mut [ExtractedSource]) {
        for e in extracted.iter_mut() {
            let key_column = pipeline.spec.sources[&e.name].key.as_deref().unwrap_or("key");
            for (key, reason) in self.set_aside.get(&e.name).into_iter().flatten() {
                e.set_aside.push(BadRow {
                    file: e.location.display(),
                    line: 0,
                    reason: reason.clone(),
                    record: format!("{key_column}={key}"),
                });
            }
        }
    }
}

/// Stages the identity sources present into `identity_records` (materialised): all
/// records normalised, those with an overlong value set aside, one row per record key.
/// Returns, per source, the rows dropped as repeated keys and the records set aside.
///
/// The dumps are parsed once, into `staged_records` (their raw values, narrow text):
/// the name counts, the records set aside, the repeated keys and the normalised records
/// all read that, and only `identity_records` holds the normalised, numbered rows.
pub async fn stage_records(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    present: &[String],
    scratch: &Path,
) -> Result<StagedCounts, StageError> {
    let mut lap = crate::progress::Lap::start("stage");
    engine::materialize(ctx, STAGED_RECORDS, raw_values_all(ctx, pipeline, present).await?, scratch).await?;
    lap.done("raw values");
    register_name_roles(ctx, ctx.table(STAGED_RECORDS).await?, scratch).await?;
    lap.done("name roles");
    let all = ctx.table(STAGED_RECORDS).await?;
    let set_aside = set_aside_records(all.clone()).await?;
    let kept = all.filter(col(SET_ASIDE).is_null())?.drop_columns(&[SET_ASIDE])?;
    let _ = ctx.deregister_table(KEPT_RECORDS);
    ctx.register_table(KEPT_RECORDS, kept.into_view())?;
    let repeated = repeated_keys(ctx, KEPT_RECORDS).await?;
    let mut records = normalise(pipeline, unswap_names(ctx, ctx.table(KEPT_RECORDS).await?).await?)?;
    if !repeated.is_empty() {
        for (source, n) in &repeated {
            tracing::warn!(
                source = source.as_str(),
                rows = n,
                "keys repeated in the dump; the most recent row of each is kept"
            );
        }
        records = latest_per_key(records)?;
    }
    lap.done("set aside and repeated keys");
    // The Parquet reader applies the `set_aside` filter itself: as a `FilterExec` it kept
    // every row yet copied every batch (DataFusion 55 coalesces a filter's output), 0.9-1.8
    // s of CPU at 1M people.
    let (mut state, plan) = with_record_numbers(records).await?.into_parts();
    state.config_mut().options_mut().execution.parquet.pushdown_filters = true;
    engine::materialize_for_many_reads(ctx, IDENTITY_RECORDS, DataFrame::new(state, plan), scratch).await?;
    lap.done("identity records");
    register_staged_views(ctx, pipeline, present).await?;
    Ok(StagedCounts { repeated, set_aside })
}

/// `stg_<source>`: each source's staged records, for models to read.
async fn register_staged_views(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    present: &[String],
) -> Result<(), StageError> {
    let records = ctx.table(IDENTITY_RECORDS).await?.drop_columns(&["rid"])?;
    for (name, _) in pipeline.spec.identity_sources().filter(|(n, _)| present.contains(n)) {
        let staged = records.clone().filter(col("source_system").eq(lit(name.as_str())))?;
        let _ = ctx.deregister_table(tables::staged(name));
        ctx.register_table(tables::staged(name), staged.into_view())?;
    }
    Ok(())
}

/// The records staging set aside, as (record key, reason) per source; each is logged.
async fn set_aside_records(all: DataFrame) -> Result<BTreeMap<String, Vec<(String, String)>>, StageError> {
    let batches = all
        .filter(col(SET_ASIDE).is_not_null())?
        .select(vec![col("source_system"), col("source_record_id"), col(SET_ASIDE)])?
        .collect()
        .await?;
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            let get = |c: usize| array_value_to_string(b.column(c), i).unwrap_or_default();
            let (source, key, reason) = (get(0), get(1), get(2));
            tracing::warn!(source = source.as_str(), record = key.as_str(), "record set aside: {reason}");
            out.entry(source).or_default().push((key, reason));
        }
    }
    Ok(out)
}

/// Rows beyond the first of each repeated record key, per source.
async fn repeated_keys(ctx: &SessionContext, table: &str) -> Result<BTreeMap<String, u64>, StageError> {
    let batches = ctx
        .sql(&format!(
            "SELECT source_system, CAST(sum(n - 1) AS BIGINT) FROM \
             (SELECT source_system, source_record_id, count(*) AS n FROM {table} GROUP BY source_system, source_record_id \
              HAVING count(*) > 1) GROUP BY source_system"
        ))
        .await?
        .collect()
        .await?;
    let mut out = BTreeMap::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            let source = array_value_to_string(b.column(0), i).unwrap_or_default();
            let n = array_value_to_string(b.column(1), i).unwrap_or_default();
            out.insert(source, n.parse().unwrap_or(0));
        }
    }
    Ok(out)
}
