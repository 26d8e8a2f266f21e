//! The probabilistic rule (Fellegi-Sunter, in Splink's vocabulary). Every compared pair
//! falls in one level per comparison. `u` (how often a level occurs between two different
//! people) is counted on random pairs of records, `m` (how often between two records of
//! one person) is estimated by expectation-maximisation over the blocked pairs, leaving
//! out, per blocking rule, the comparisons of its own attributes (its pairs agree on them
//! by construction). A level weighs log2(m/u). A pair is scored under the model of the
//! blocking rule that found it: that rule's prior (the share of its pairs that are one
//! person, which already holds the evidence of agreeing on its key) plus the weights of
//! the other comparisons; counting the key's agreement again would count it twice. Exact
//! agreement on a rare value weighs more than on a common one (term frequencies). The counting is SQL (one row per level pattern); only
//! EM over those few patterns runs here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use super::ResolveError;
use super::cluster::Weighing;
use crate::config::{LevelKind, Pipeline, ProbabilisticComparison, ProbabilisticRule, RuleSpec, attribute_of};

/// Records in the random sample that `u` is counted on (their pairs: about 2 million).
const U_SAMPLE_RECORDS: u64 = 1_415;
/// Blocked pairs that EM sees at most, by sampling the left record of each pair.
const M_SAMPLE_PAIRS: u64 = 250_000;
const EM_ITERATIONS: usize = 40;
/// The table of the records in the `m` sample, while it is counted.
const M_SAMPLE: &str = "m_sample";
/// No probability is taken as exactly 0 or 1: a level seen nowhere is rare, not impossible.
const FLOOR: f64 = 1e-6;

/// The match weight of a match probability: log2 of its odds (infinite at 1). A rule's
/// threshold and an edge's score are probabilities; pairs are weighed in bits.
pub fn match_weight(probability: f64) -> f64 {
    (probability / (1.0 - probability)).log2()
}

/// The fitted model of one rule, as `_model.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleModel {
    pub rule: String,
    /// Random pairs `u` was counted on.
    pub u_pairs: u64,
    /// Per blocking rule, in the rule's order.
    pub blocking: Vec<BlockingModel>,
    pub comparisons: Vec<ComparisonModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockingModel {
    /// The key: pairs agree on these columns.
    pub key: Vec<String>,
    /// Share of its pairs that are one person: the prior of the pairs it finds.
    pub lambda: f64,
    /// Pairs it makes (blocks within the size limit).
    pub pairs: u64,
    /// Of those, the sample EM saw.
    pub em_pairs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComparisonModel {
    pub name: String,
    pub column: String,
    pub term_frequency: bool,
    /// Records with a value, that term frequencies are shares of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf_total: Option<u64>,
    /// The levels in order, the implicit `else` (disagreement) last.
    pub levels: Vec<LevelModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelModel {
    pub level: String,
    pub m: f64,
    pub u: f64,
    /// log2(m / u), or the weight the YAML gives.
    pub weight: f64,
    /// Whether `weight` comes from the YAML.
    pub fixed: bool,
    /// Whether EM estimated `m` (false when every blocking rule uses this comparison's
    /// column: then `m` keeps its starting value).
    pub m_estimated: bool,
}

impl BlockingModel {
    /// log2 of the prior odds that a pair this blocking rule finds is one person.
    pub fn prior_weight(&self) -> f64 {
        match_weight(self.lambda)
    }

    /// Whether a comparison of `column` is left out of this blocking rule's scores: its
    /// pairs agree on that attribute by construction.
    pub fn covers(&self, column: &str) -> bool {
        self.key.iter().any(|k| attribute_of(k) == attribute_of(column))
    }
}

impl RuleModel {
    /// What disagreeing on `attribute` costs a pair (a weight <= 0: the lowest level weight
    /// of the rule's comparisons of it), where the model can say. Only a model whose
    /// match class is one person on that attribute can: where it finds one person's
    /// records disagreeing on it more often than not (`m` of `else` at least one half, as
    /// when blocking on an address lets a household pass for one person), could not
    /// estimate `m`, or does not compare the attribute, a conflict is refused instead.
    pub fn conflict_cost(&self, attribute: &str) -> Option<f64> {
        let compared: Vec<&ComparisonModel> =
            self.comparisons.iter().filter(|c| attribute_of(&c.column) == attribute).collect();
        let credible = |c: &&ComparisonModel| c.levels.last().is_some_and(|e| e.fixed || (e.m_estimated && e.m < 0.5));
        if compared.is_empty() || !compared.iter().all(credible) {
            return None;
        }
        compared.iter().flat_map(|c| c.levels.iter().map(|l| l.weight)).reduce(f64::min).map(|w| w.min(0.0))
    }

    /// How this rule's edges weigh a conflict between the clusters they join, at the
    /// rule's `threshold` (a match probability).
    pub fn weighing(&self, threshold: f64) -> Weighing {
        Weighing {
            threshold: match_weight(threshold),
            birth_date: self.conflict_cost("birth_date"),
            first_name: self.conflict_cost("first_name"),
        }
    }

    /// Why this model cannot decide for `rule`, if it cannot: it was estimated for other
    /// blocking rules, comparisons or levels.
    fn mismatch(&self, rule: &ProbabilisticRule) -> Option<String> {
        let keys: Vec<&Vec<String>> = self.blocking.iter().map(|b| &b.key).collect();
        if keys != rule.blocking.iter().collect::<Vec<_>>() {
            return Some(format!("its blocking rules are {keys:?}, the rule's are {:?}", rule.blocking));
        }
        let fitted: Vec<(&str, &str)> = self.comparisons.iter().map(|c| (c.name.as_str(), c.column.as_str())).collect();
        let wanted: Vec<(&str, &str)> = rule.comparisons.iter().map(|c| (c.name(), c.column.as_str())).collect();
        if fitted != wanted {
            return Some(format!("its comparisons (name, column) are {fitted:?}, the rule's are {wanted:?}"));
        }
        for (c, spec) in self.comparisons.iter().zip(&rule.comparisons) {
            let fitted: Vec<&str> = c.levels.iter().map(|l| l.level.as_str()).collect();
            let wanted: Vec<String> = spec.levels.iter().map(|l| l.kind.label()).chain(["else".to_string()]).collect();
            if fitted != wanted {
                return Some(format!("comparison `{}` has levels {fitted:?}, the rule has {wanted:?}", c.name));
            }
        }
        None
    }
}

/// The models of `resolve.model`, when the pipeline pins one; each probabilistic rule must
/// have its model there, estimated for the same blocking, comparisons and levels.
pub fn read_pinned(pipeline: &Pipeline) -> Result<Option<(PathBuf, Vec<RuleModel>)>, ResolveError> {
    let Some(file) = &pipeline.spec.resolve.model else { return Ok(None) };
    let path = pipeline.base_dir.join(file);
    let error = |message: String| ResolveError::Model { path: path.clone(), message };
    let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
    let models: Vec<RuleModel> =
        serde_json::from_str(&text).map_err(|e| error(format!("not a model file of `klantbeeld estimate` ({e})")))?;
    for rule in &pipeline.spec.resolve.rules {
        if let RuleSpec::Probabilistic(r) = rule {
            pinned_for(&path, &models, r)?;
        }
    }
    Ok(Some((path, models)))
}

/// The pinned model of a rule, with the weights the YAML fixes applied.
pub fn pinned_for(path: &Path, models: &[RuleModel], rule: &ProbabilisticRule) -> Result<RuleModel, ResolveError> {
    let error = |message: String| ResolveError::Model { path: path.to_path_buf(), message };
    let found = models.iter().find(|m| m.rule == rule.name).ok_or_else(|| {
        let names: Vec<&str> = models.iter().map(|m| m.rule.as_str()).collect();
        error(format!("has no model of rule `{}` (it has {names:?}); run `klantbeeld estimate` again", rule.name))
    })?;
    if let Some(why) = found.mismatch(rule) {
        return Err(error(format!(
            "was estimated for another version of rule `{}`: {why}; run `klantbeeld estimate` again",
            rule.name
        )));
    }
    let mut model = found.clone();
    for (c, spec) in model.comparisons.iter_mut().zip(&rule.comparisons) {
        c.tf_total = None;
        let fixed = spec.levels.iter().map(|l| l.weight).chain([None]);
        for (level, fixed) in c.levels.iter_mut().zip(fixed) {
            level.fixed = fixed.is_some();
            level.weight = fixed.unwrap_or_else(|| (level.m.max(FLOOR) / level.u.max(FLOOR)).log2());
        }
    }
    Ok(model)
}

/// A column as text, for the similarity functions.
fn text(side: &str, column: &str) -> String {
    format!("CAST({side}.{column} AS VARCHAR)")
}

/// The SQL condition of a level over `l.` and `r.`.
pub(crate) fn level_condition(column: &str, kind: &LevelKind) -> String {
    let (l, r) = (text("l", column), text("r", column));
    match kind {
        LevelKind::Exact => format!("l.{column} = r.{column}"),
        LevelKind::Initials => {
            let letters = |side: &str| format!("length(regexp_replace({side}, '[^[:alpha:]]', '', 'g'))");
            format!("(({} = 1 OR {} = 1) AND upper(left({l}, 1)) = upper(left({r}, 1)))", letters(&l), letters(&r))
        }
        LevelKind::JaroWinkler(t) => format!("jaro_winkler({l}, {r}) >= {t}"),
        // The function reads any type as text (dates without making text of them).
        LevelKind::DamerauLevenshtein(d) => format!("damerau_levenshtein(l.{column}, r.{column}, {d}) <= {d}"),
        LevelKind::Sql(sql) => format!("({sql})"),
    }
}

/// SQL giving a comparison's level index: -1 when either value is missing, the number
/// of levels for the implicit `else`. Built-in levels are one `comparison_level` call
/// (one pass over the pairs: the person rule weighs millions); a level written in SQL
/// makes it a `CASE` of the levels' conditions, which means the same.
pub(crate) fn gamma(c: &ProbabilisticComparison) -> String {
    let kinds: Vec<&LevelKind> = c.levels.iter().map(|l| &l.kind).collect();
    if let Some(levels) = crate::udf::levels_text(&kinds) {
        return format!("comparison_level(l.{0}, r.{0}, {1})", c.column, crate::engine::sql_string(&levels));
    }
    gamma_case(c)
}

/// [`gamma`] as a `CASE` of the levels' SQL conditions.
fn gamma_case(c: &ProbabilisticComparison) -> String {
    let mut sql = format!("CASE WHEN l.{0} IS NULL OR r.{0} IS NULL THEN -1", c.column);
    for (i, level) in c.levels.iter().enumerate() {
        sql.push_str(&format!(" WHEN {} THEN {i}", level_condition(&c.column, &level.kind)));
    }
    sql.push_str(&format!(" ELSE {} END", c.levels.len()));
    sql
}

/// The records a rule compares, as SQL.
pub(crate) fn rule_records(rule: &ProbabilisticRule) -> String {
    match &rule.filter {
        Some(f) => format!("(SELECT * FROM {} WHERE {f})", crate::tables::IDENTITY_RECORDS),
        None => crate::tables::IDENTITY_RECORDS.to_string(),
    }
}

/// Level patterns and their pair counts from a query that returns `g0..gN, n`, in the
/// patterns' order: the engine returns groups in any order, and EM's float sums must not
/// depend on it, so that two runs over the same data fit the same model to the last bit.
async fn patterns(ctx: &SessionContext, sql: &str, comparisons: usize) -> Result<Vec<(Vec<i64>, f64)>, ResolveError> {
    let mut out: BTreeMap<Vec<i64>, f64> = BTreeMap::new();
    for b in &ctx.sql(sql).await?.collect().await? {
        let columns: Vec<_> = (0..=comparisons)
            .map(|i| datafusion::arrow::compute::cast(b.column(i), &DataType::Int64))
            .collect::<Result<_, _>>()?;
        for row in 0..b.num_rows() {
            let values: Vec<i64> = columns
                .iter()
                .map(|c| {
                    let a = c.as_primitive::<Int64Type>();
                    if a.is_null(row) { -1 } else { a.value(row) }
                })
                .collect();
            let (levels, n) = values.split_at(comparisons);
            *out.entry(levels.to_vec()).or_default() += n[0] as f64;
        }
    }
    Ok(out.into_iter().collect())
}

/// Starting `m` of a comparison with `levels` levels plus `else`: halving from the first
/// (most exact) level down, so that EM starts from "people mostly agree".
fn starting_m(levels: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..=levels).map(|i| 0.5f64.powi(i as i32)).collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| v / sum).collect()
}

/// Level shares among pattern counts, per comparison, with one pseudo-count per level so
/// that none is zero.
fn level_shares(patterns: &[(Vec<i64>, f64)], sizes: &[usize]) -> Vec<Vec<f64>> {
    sizes
        .iter()
        .enumerate()
        .map(|(c, &size)| {
            let mut counts = vec![1.0; size];
            for (levels, n) in patterns {
                if let Ok(l) = usize::try_from(levels[c]) {
                    counts[l] += n;
                }
            }
            let total: f64 = counts.iter().sum();
            counts.iter().map(|v| v / total).collect()
        })
        .collect()
}

/// Expectation-maximisation of `m` and the prior over pattern counts, with `u` fixed.
/// Comparisons with `free[c] == false` stay out of the likelihood (a blocking rule's own
/// columns). Returns `m` per comparison and the prior.
pub(crate) fn em(
    patterns: &[(Vec<i64>, f64)],
    u: &[Vec<f64>],
    free: &[bool],
    m_start: &[Vec<f64>],
    lambda_start: f64,
) -> (Vec<Vec<f64>>, f64) {
    let mut m = m_start.to_vec();
    let mut lambda = lambda_start;
    let total: f64 = patterns.iter().map(|(_, n)| n).sum();
    if total == 0.0 {
        return (m, lambda);
    }
    for _ in 0..EM_ITERATIONS {
        let mut m_counts: Vec<Vec<f64>> = u.iter().map(|levels| vec![0.0; levels.len()]).collect();
        let mut matches = 0.0;
        for (levels, n) in patterns {
            let (mut pm, mut pu) = (lambda, 1.0 - lambda);
            for (c, &g) in levels.iter().enumerate() {
                if let (true, Ok(l)) = (free[c], usize::try_from(g)) {
                    pm *= m[c][l];
                    pu *= u[c][l];
                }
            }
            let p = pm / (pm + pu);
            matches += p * n;
            for (c, &g) in levels.iter().enumerate() {
                if let Ok(l) = usize::try_from(g) {
                    m_counts[c][l] += p * n;
                }
            }
        }
        lambda = (matches / total).clamp(FLOOR, 1.0 - FLOOR);
        for (c, counts) in m_counts.iter().enumerate() {
            let sum: f64 = counts.iter().sum();
            if free[c] && sum > 0.0 {
                m[c] = counts.iter().map(|v| (v / sum).max(FLOOR)).collect();
            }
        }
    }
    (m, lambda)
}

/// Estimates a rule's model from the identity records, whose block sizes are registered
/// ([`super::rules::register_block_sizes`]).
pub async fn estimate(ctx: &SessionContext, rule: &ProbabilisticRule) -> Result<RuleModel, ResolveError> {
    let mut lap = crate::progress::Lap::start("resolve");
    let records = rule_records(rule);
    let n: u64 = {
        let b = ctx.sql(&format!("SELECT count(*) FROM {records}")).await?.collect().await?;
        b.first().map_or(0, |b| b.column(0).as_primitive::<Int64Type>().value(0) as u64)
    };
    let gammas: Vec<String> =
        rule.comparisons.iter().enumerate().map(|(i, c)| format!("{} AS g{i}", gamma(c))).collect();
    let group: Vec<String> = (0..rule.comparisons.len()).map(|i| format!("g{i}")).collect();
    let (gammas, group) = (gammas.join(", "), group.join(", "));
    let k = rule.comparisons.len();
    let sizes: Vec<usize> = rule.comparisons.iter().map(|c| c.levels.len() + 1).collect();

    // u: every pair of a seeded random sample of records (the sample is the same on every
    // run over the same records).
    let buckets = (n / U_SAMPLE_RECORDS).max(1);
    let u_sql = format!(
        "WITH s AS (SELECT * FROM {records} WHERE hash_bucket(concat('u:', CAST(rid AS VARCHAR)), {buckets}) = 0) \
         SELECT {gammas}, count(*) AS n FROM s l JOIN s r ON l.rid < r.rid WHERE {link} GROUP BY {group}",
        link = super::rules::link_clause(rule.link_only)
    );
    let u_patterns = patterns(ctx, &u_sql, k).await?;
    let u_pairs = u_patterns.iter().map(|(_, n)| *n as u64).sum();
    let u = level_shares(&u_patterns, &sizes);
    lap.done(&format!("{}: u pairs", rule.name));

    // m: EM over each blocking rule's pairs (a sample of them), its own columns left out.
    let m_start: Vec<Vec<f64>> = sizes.iter().map(|s| starting_m(s - 1)).collect();
    let mut m_sum: Vec<Vec<f64>> = sizes.iter().map(|s| vec![0.0; *s]).collect();
    let mut m_runs = vec![0usize; k];
    let mut blocking = Vec::new();
    for (i, key) in rule.blocking.iter().enumerate() {
        let sizes = super::rules::block_sizes_table(i);
        let join_lr = key.iter().map(|c| format!("l.{c} = r.{c}")).collect::<Vec<_>>().join(" AND ");
        let pairs: u64 = {
            let b = ctx.sql(&super::rules::block_counts_sql(&sizes, rule.max_block_size)).await?.collect().await?;
            b.first().map_or(0, |b| b.column(0).as_primitive::<Int64Type>().value(0) as u64)
        };
        let share = (pairs / M_SAMPLE_PAIRS).max(1);
        let m_sql = format!(
            "SELECT {gammas}, count(*) AS n FROM {M_SAMPLE} l JOIN {records} r ON {join_lr} AND l.rid < r.rid \
             WHERE {link} GROUP BY {group}",
            link = super::rules::link_clause(rule.link_only)
        );
        // The sample is of the pairs' left records. It is held in memory, where the
        // engine knows its size: joined with the records, it is the side the join keeps
        // in a hash table (in one query, the engine could not tell and kept all records,
        // which at 10M records outgrew a 2 GB pool). At most about `4 * M_SAMPLE_PAIRS` records,
        // with only the columns the pairs read (the records carry some twenty more).
        let sample_sql = |columns: &str| {
            format!(
                "WITH {blocks} SELECT {columns} FROM kb WHERE hash_bucket(concat('m:', CAST(rid AS VARCHAR)), {share}) = 0",
                blocks = super::rules::blocks_sql(&records, key, rule.max_block_size, &sizes)
            )
        };
        let schema = ctx.sql(&sample_sql("*")).await?.schema().inner().clone();
        let read = crate::engine::select_read(ctx, M_SAMPLE, schema, std::slice::from_ref(&m_sql), "kb").await?;
        let sample = ctx.sql(&sample_sql(&read)).await?.cache().await?;
        ctx.register_table(M_SAMPLE, sample.into_view())?;
        lap.done(&format!("{}: m sample by {}", rule.name, key.join("+")));
        let pats = patterns(ctx, &m_sql, k).await;
        ctx.deregister_table(M_SAMPLE)?;
        let pats = pats?;
        lap.done(&format!("{}: m pairs by {}", rule.name, key.join("+")));
        let seen: f64 = pats.iter().map(|(_, n)| n).sum();
        let mut fitted = BlockingModel { key: key.clone(), lambda: 0.1, pairs, em_pairs: seen as u64 };
        let free: Vec<bool> = rule.comparisons.iter().map(|c| !fitted.covers(&c.column)).collect();
        let (m, lambda) = em(&pats, &u, &free, &m_start, fitted.lambda);
        fitted.lambda = lambda;
        blocking.push(fitted);
        for c in (0..k).filter(|c| free[*c] && seen > 0.0) {
            m_runs[c] += 1;
            for (sum, v) in m_sum[c].iter_mut().zip(&m[c]) {
                *sum += v;
            }
        }
    }
    let comparisons = rule
        .comparisons
        .iter()
        .enumerate()
        .map(|(c, spec)| {
            let estimated = m_runs[c] > 0;
            if !estimated {
                tracing::warn!(
                    rule = rule.name.as_str(),
                    comparison = spec.name(),
                    "every blocking rule uses this column, so its m cannot be estimated; it keeps its starting value"
                );
            }
            let labels = spec.levels.iter().map(|l| (l.kind.label(), l.weight)).chain([("else".to_string(), None)]);
            let levels = labels
                .enumerate()
                .map(|(l, (label, fixed))| {
                    let m = if estimated { m_sum[c][l] / m_runs[c] as f64 } else { m_start[c][l] };
                    let u = u[c][l];
                    LevelModel {
                        level: label,
                        m,
                        u,
                        weight: fixed.unwrap_or_else(|| (m.max(FLOOR) / u.max(FLOOR)).log2()),
                        fixed: fixed.is_some(),
                        m_estimated: estimated,
                    }
                })
                .collect();
            ComparisonModel {
                name: spec.name().to_string(),
                column: spec.column.clone(),
                term_frequency: spec.term_frequency,
                tf_total: None,
                levels,
            }
        })
        .collect();
    tracing::info!(
        rule = rule.name.as_str(),
        u_pairs,
        "estimated the weights afresh from this data (pin them with `klantbeeld estimate` and resolve.model)"
    );
    Ok(RuleModel { rule: rule.name.clone(), u_pairs, blocking, comparisons })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level `comparison_level` gives is the one the levels' SQL `CASE` gives, for
    /// text (names with initials, accents, empty text, missing values) and for dates.
    #[tokio::test]
    async fn compiled_levels_are_the_sql_levels() {
        use crate::config::Level;
        let ctx = datafusion::prelude::SessionContext::new();
        crate::udf::register(&ctx);
        let names = [
            "jan",
            "jan",
            "janneke",
            "j.",
            "J",
            "kees",
            "k",
            "",
            "élise",
            "Élise",
            "elise",
            "jan-willem",
            "jw",
            "j w",
            "johannes",
            "johanna",
            "piet",
            "pieter",
            "ørjan",
            "1",
        ];
        let values = |side: &str| {
            let mut rows = Vec::new();
            for (i, a) in names.iter().enumerate() {
                for (j, b) in names.iter().enumerate() {
                    let v = if side == "l" { a } else { b };
                    let day = if side == "l" { (i * 37) % 400 } else { (j * 37) % 400 };
                    rows.push(format!("({}, '{v}', DATE '1970-01-01' + INTERVAL '{day} days')", i * 100 + j));
                }
            }
            rows.push(format!("(99999, {}, NULL)", if side == "l" { "NULL" } else { "'jan'" }));
            format!(
                "SELECT column1 AS id, column2 AS name, CAST(column3 AS DATE) AS birth FROM (VALUES {})",
                rows.join(", ")
            )
        };
        ctx.register_table("l", ctx.sql(&values("l")).await.unwrap().into_view()).unwrap();
        ctx.register_table("r", ctx.sql(&values("r")).await.unwrap().into_view()).unwrap();
        let level = |kind: LevelKind| Level { kind, weight: None };
        let comparisons = [
            (
                "name",
                vec![LevelKind::Exact, LevelKind::JaroWinkler(0.92), LevelKind::JaroWinkler(0.8), LevelKind::Initials],
            ),
            ("name", vec![LevelKind::Initials, LevelKind::DamerauLevenshtein(2), LevelKind::Exact]),
            ("birth", vec![LevelKind::Exact, LevelKind::DamerauLevenshtein(1), LevelKind::DamerauLevenshtein(2)]),
        ];
        for (column, kinds) in comparisons {
            let c = ProbabilisticComparison {
                name: None,
                column: column.into(),
                levels: kinds.into_iter().map(level).collect(),
                term_frequency: false,
            };
            let (compiled, case) = (gamma(&c), gamma_case(&c));
            assert!(compiled.starts_with("comparison_level("), "{compiled}");
            let sql = format!(
                "SELECT count(*), count(DISTINCT {compiled}), sum(CASE WHEN {compiled} = {case} THEN 1 ELSE 0 END) \
                 FROM l JOIN r ON l.id = r.id"
            );
            let b = &ctx.sql(&sql).await.unwrap().collect().await.unwrap()[0];
            let int = |i: usize| datafusion::arrow::compute::cast(b.column(i), &DataType::Int64).unwrap();
            let int = |i: usize| int(i).as_primitive::<Int64Type>().value(0);
            assert_eq!(int(0), int(2), "{column}: levels differ from the SQL's");
            assert!(int(1) >= 3, "{column}: the pairs reach too few levels to tell");
        }
        // A level in SQL keeps the CASE.
        let c = ProbabilisticComparison {
            name: None,
            column: "name".into(),
            levels: vec![level(LevelKind::Sql("l.name = r.name".into()))],
            term_frequency: false,
        };
        assert!(gamma(&c).starts_with("CASE"));
    }

    /// Two comparisons, two levels each (agree / else). Matches agree on both 90% of the
    /// time, non-matches 10%: EM recovers m and the share of matches.
    #[test]
    fn em_recovers_m_and_the_prior_from_pattern_counts() {
        let (matches, others) = (1_000.0, 9_000.0);
        let (m, u) = (0.9, 0.1);
        let mut patterns = Vec::new();
        for a in 0..2i64 {
            for b in 0..2i64 {
                let p = |agree: bool, x: f64| if agree { x } else { 1.0 - x };
                let n = matches * p(a == 0, m) * p(b == 0, m) + others * p(a == 0, u) * p(b == 0, u);
                patterns.push((vec![a, b], n));
            }
        }
        let u_levels = vec![vec![u, 1.0 - u]; 2];
        let (m_fit, lambda) = em(&patterns, &u_levels, &[true, true], &[starting_m(1), starting_m(1)], 0.3);
        assert!((lambda - 0.1).abs() < 0.01, "{lambda}");
        assert!((m_fit[0][0] - 0.9).abs() < 0.02 && (m_fit[1][0] - 0.9).abs() < 0.02, "{m_fit:?}");
    }

    #[test]
    fn a_comparison_left_out_keeps_its_starting_m_and_missing_values_are_no_evidence() {
        let patterns = vec![(vec![0, -1], 50.0), (vec![1, 0], 50.0)];
        let start = vec![starting_m(1), starting_m(1)];
        let (m, _) = em(&patterns, &[vec![0.1, 0.9], vec![0.1, 0.9]], &[true, false], &start, 0.5);
        assert_eq!(m[1], start[1]);
        assert!(m[0].iter().all(|v| *v > 0.0 && *v < 1.0));
    }

    fn comparison(column: &str, else_m: f64, weights: &[f64]) -> ComparisonModel {
        let levels = weights
            .iter()
            .enumerate()
            .map(|(i, w)| LevelModel {
                level: if i + 1 == weights.len() { "else".into() } else { format!("level{i}") },
                m: if i + 1 == weights.len() { else_m } else { 0.5 },
                u: 0.5,
                weight: *w,
                fixed: false,
                m_estimated: true,
            })
            .collect();
        ComparisonModel { name: column.into(), column: column.into(), term_frequency: false, tf_total: None, levels }
    }

    #[test]
    fn a_conflict_is_weighed_only_where_the_model_is_one_of_persons() {
        let model = RuleModel {
            rule: "person".into(),
            u_pairs: 1000,
            blocking: Vec::new(),
            comparisons: vec![
                // A person's records mostly agree on the first name: its weights count.
                comparison("first_name_key", 0.2, &[3.0, 1.0, -2.4]),
                // A household passes for one person on the birth date: no weighing.
                comparison("birth_date", 0.6, &[11.0, -0.7]),
            ],
        };
        let w = model.weighing(0.99);
        assert!((w.threshold - (0.99f64 / 0.01).log2()).abs() < 1e-12);
        assert_eq!(w.first_name, Some(-2.4));
        assert_eq!(w.birth_date, None);
        let no_names = RuleModel { comparisons: vec![comparison("postcode", 0.1, &[9.0, -4.0])], ..model };
        assert_eq!(no_names.weighing(0.99).first_name, None);
    }

    #[test]
    fn level_shares_never_give_zero() {
        let shares = level_shares(&[(vec![0], 10.0)], &[3]);
        assert!(shares[0].iter().all(|v| *v > 0.0));
        assert!((shares[0].iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
