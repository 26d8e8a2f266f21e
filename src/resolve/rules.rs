//! Candidate edges per rule, as SQL over `identity_records`. Each query returns
//! `rid_a < rid_b`, a `score` and a `detail` text that says what was compared.

use std::path::Path;

use datafusion::prelude::SessionContext;

use super::names::LearnedNames;
use super::probabilistic::{self, RuleModel};
use crate::config::{
    ComparisonSpec, Condition, DeterministicRule, ExternalIdRule, FuzzyRule, LevelKind, LevelSpec, ProbabilisticRule,
    RuleSpec,
};
use crate::engine::PASS;
use crate::engine::sql_string;
use crate::tables::IDENTITY_RECORDS;

/// SQL that must hold for a pair not to conflict on an attribute; pairs with a missing
/// value on either side do not conflict. First names this data writes for one person
/// (`learned`) are written into the SQL, so that the query carries all it needs to any
/// engine (a function holding them would live in this process only).
pub(crate) fn no_conflict(attribute: &str, learned: &LearnedNames) -> String {
    // `IS NOT FALSE` where a missing value is no conflict: the engine rewrites
    // `COALESCE(x, true)` into `x IS NOT NULL AND x OR x IS NULL`, which computes `x`
    // (a name comparison per candidate pair) three times.
    match attribute {
        "first_name" => {
            let compatible = "first_names_compatible(l.first_name, r.first_name) IS NOT FALSE";
            if learned.is_empty() {
                return compatible.into();
            }
            let pairs: Vec<String> = learned.keys().map(|k| sql_string(&k)).collect();
            format!(
                "({compatible} OR (concat(least(l.first_name_root, r.first_name_root), '{sep}', \
                 greatest(l.first_name_root, r.first_name_root)) IN ({})) IS TRUE)",
                pairs.join(", "),
                sep = super::names::KEY_SEPARATOR
            )
        }
        "birth_date" => "birth_dates_compatible(l.birth_date, r.birth_date) IS NOT FALSE".into(),
        "last_name" => "(jaro_winkler(l.last_name_core, r.last_name_core) >= 0.8) IS NOT FALSE".into(),
        "house_number" => "(l.house_number = r.house_number) IS NOT FALSE".into(),
        "postcode" => "(l.postcode = r.postcode) IS NOT FALSE".into(),
        other => unreachable!("conflict attribute {other} passed validation"),
    }
}

/// Columns the conflict checks read.
const CONFLICT_COLUMNS: &[&str] = &["first_name", "birth_date", "last_name_core", "house_number", "postcode"];

/// The condition on a pair of `link_only` rules: records of two sources.
pub(crate) fn link_clause(link_only: bool) -> &'static str {
    if link_only { "l.source_system <> r.source_system" } else { "true" }
}

fn conflicts_clause(attributes: &[String], learned: &LearnedNames) -> String {
    if attributes.is_empty() {
        "true".into()
    } else {
        attributes.iter().map(|a| no_conflict(a, learned)).collect::<Vec<_>>().join(" AND ")
    }
}

/// One of the passes a rule's joins run in: pass `index` of `count` takes the records
/// whose identifier (or blocking key) falls in bucket `index`. All records that share a
/// value are in one pass, so the passes together make the same edges as one would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub index: usize,
    pub count: usize,
}

impl Pass {
    /// The `count` passes in order.
    pub fn all(count: usize) -> impl Iterator<Item = Pass> {
        (0..count).map(move |index| Pass { index, count })
    }

    /// SQL of the pass (of `count`) that a record's value of `key` falls in, as the
    /// [`PASS`] column of a table the rule prepares.
    fn of(key: &[String], count: usize) -> String {
        if count <= 1 {
            return format!("CAST(0 AS BIGINT) AS {PASS}");
        }
        let value = key.iter().map(|c| format!("CAST({c} AS VARCHAR)")).collect::<Vec<_>>().join(", ");
        format!("CAST(hash_bucket(concat_ws('|', {value}), {count}) AS BIGINT) AS {PASS}")
    }

    /// SQL that keeps the rows of this pass of a prepared table, aliased `alias`.
    fn keeps(&self, alias: &str) -> String {
        format!("{alias}.{PASS} = {}", self.index)
    }
}

/// A table a rule's queries read, made once before them (see [`RuleSql::prepare`]).
pub struct Prepared {
    pub name: String,
    /// Its SQL, for a number of passes. A table with a [`PASS`] column is written in one
    /// folder per pass, so that each pass reads its own rows only.
    pub sql: Box<dyn Fn(usize) -> String + Send + Sync>,
}

/// A rule as queries: the tables it reads, its candidate edges (of one pass) and what
/// its guardrails left out.
pub struct RuleSql {
    pub tables: Vec<Prepared>,
    pub edges: Box<dyn Fn(Pass) -> String + Send + Sync>,
    /// Values (as text) whose groups break a guardrail, with their record and people counts.
    pub dropped: String,
}

impl RuleSql {
    /// Makes the tables the rule's queries read, as Parquet in `dir` (a folder of this
    /// rule's own), for `passes`.
    pub async fn prepare(&self, ctx: &SessionContext, dir: &Path, passes: usize) -> datafusion::error::Result<()> {
        for table in &self.tables {
            let df = ctx.sql(&(table.sql)(passes)).await?;
            if df.schema().has_column_with_unqualified_name(PASS) {
                crate::engine::materialize_by_pass(ctx, &table.name, df, dir).await?;
            } else {
                crate::engine::materialize(ctx, &table.name, df, dir).await?;
            }
        }
        Ok(())
    }

    /// Removes the tables `prepare` made from the session.
    pub fn release(&self, ctx: &SessionContext) -> datafusion::error::Result<()> {
        for table in &self.tables {
            ctx.deregister_table(table.name.as_str())?;
        }
        Ok(())
    }

    /// The edges of `pass` and the dropped values as queries that compute the tables they
    /// read in place (common table expressions of the same names): for asking which
    /// columns of the records they read before the tables are made.
    pub fn inlined(&self, pass: Pass) -> [String; 2] {
        let tables: Vec<String> =
            self.tables.iter().map(|t| format!("{} AS ({})", t.name, (t.sql)(pass.count))).collect();
        let with = |sql: String| if tables.is_empty() { sql } else { format!("WITH {} {sql}", tables.join(", ")) };
        [with((self.edges)(pass)), with(self.dropped.clone())]
    }
}

/// The value groups of the deterministic rule being applied, and its records in them.
const RULE_GROUPS: &str = "rule_groups";
const RULE_RECORDS: &str = "rule_records";

/// Records equal on all `on` columns link, unless a guardrail drops the value (too many
/// records or people share it) or the pair conflicts. When a value is shared by more
/// than one person (distinct first names), records without a first name do not link
/// through it: they could be any of them. People are counted by known first names when
/// the group has any, so that a typo (`Wenddy`) does not count as a second person.
pub fn deterministic(rule: &DeterministicRule, learned: &LearnedNames) -> RuleSql {
    let unless = (rule.unless_conflict.as_slice(), learned);
    deterministic_on(&rule.on, unless, rule.max_people, rule.max_group_size, rule.filter.as_deref())
}

fn deterministic_on(
    on: &[String],
    (unless, learned): (&[String], &LearnedNames),
    max_people: Option<usize>,
    max_group: Option<usize>,
    filter: Option<&str>,
) -> RuleSql {
    let mut not_null = on.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" AND ");
    if let Some(f) = filter {
        not_null = format!("{not_null} AND ({f})");
    }
    let join_lr = on.iter().map(|c| format!("l.{c} = r.{c}")).collect::<Vec<_>>().join(" AND ");
    let join_g = on.iter().map(|c| format!("g.{c} = k.{c}")).collect::<Vec<_>>().join(" AND ");
    // Only the columns the rule reads: the keys, the people count, the conflict checks.
    let mut needed: Vec<&str> = vec!["rid", "first_name", "first_name_root", "first_name_known"];
    needed.extend(on.iter().map(String::as_str));
    needed.extend(CONFLICT_COLUMNS.iter().copied());
    needed.sort();
    needed.dedup();
    let projection = needed.join(", ");
    let k_columns = needed.iter().map(|c| format!("k.{c}")).collect::<Vec<_>>().join(", ");
    let cols = on.join(", ");
    let value = on.iter().map(|c| format!("CAST(g.{c} AS VARCHAR)")).collect::<Vec<_>>().join(", ' | ', ");
    let detail = on.iter().map(|c| format!("'{c}=', CAST(l.{c} AS VARCHAR)")).collect::<Vec<_>>().join(", ' ', ");
    let max_group = max_group.map_or(u64::MAX, |n| n as u64);
    let max_people = max_people.map_or(u64::MAX, |n| n as u64);
    // Only records that carry the value (and meet the rule's condition) take part. People
    // are counted in two plain aggregations rather than with COUNT(DISTINCT), whose
    // per-group sets take gigabytes over millions of values. A value on one record makes
    // no pair and breaks no guardrail: it is left out.
    let records = format!("SELECT {projection} FROM {IDENTITY_RECORDS} WHERE {not_null}");
    let groups = format!(
        "WITH k AS ({records}), \
         r0 AS (SELECT {cols}, CASE WHEN length(first_name_root) > 1 THEN first_name_root END AS root, \
                first_name_known AS known_name, count(*) AS c FROM k GROUP BY {cols}, root, known_name), \
         g0 AS (SELECT {cols}, sum(c) AS n, \
                sum(CASE WHEN root IS NOT NULL AND known_name THEN 1 ELSE 0 END) AS known, \
                sum(CASE WHEN root IS NOT NULL AND NOT known_name THEN 1 ELSE 0 END) AS unknown \
                FROM r0 GROUP BY {cols}) \
         SELECT {cols}, n, CASE WHEN known > 0 THEN known ELSE unknown END AS people FROM g0 WHERE n > 1"
    );
    let dropped = format!(
        "SELECT concat({value}) AS value, n AS records, people FROM {RULE_GROUPS} g \
         WHERE n > {max_group} OR people > {max_people}"
    );
    // Groups that break a guardrail are removed before the self-join, so that a value on
    // thousands of records (`info@`) never makes millions of pairs.
    let on = on.to_vec();
    let kept = move |passes: usize| {
        format!(
            "SELECT {k_columns}, g.people AS group_people, {pass} FROM {RULE_GROUPS} g JOIN ({records}) k \
             ON {join_g} WHERE g.n <= {max_group} AND g.people <= {max_people}",
            pass = Pass::of(&on.iter().map(|c| format!("k.{c}")).collect::<Vec<_>>(), passes)
        )
    };
    let conflicts = conflicts_clause(unless, learned);
    let edges = move |pass: Pass| {
        format!(
            "SELECT l.rid AS rid_a, r.rid AS rid_b, CAST(1.0 AS DOUBLE) AS score, concat({detail}) AS detail \
             FROM {RULE_RECORDS} l JOIN {RULE_RECORDS} r ON {join_lr} AND l.rid < r.rid \
             WHERE {} AND {} \
             AND (l.group_people <= 1 OR (l.first_name_root IS NOT NULL AND length(l.first_name_root) > 1 \
              AND r.first_name_root IS NOT NULL AND length(r.first_name_root) > 1)) \
             AND {conflicts}",
            pass.keeps("l"),
            pass.keeps("r"),
        )
    };
    let tables = vec![
        Prepared { name: RULE_GROUPS.into(), sql: Box::new(move |_| groups.clone()) },
        Prepared { name: RULE_RECORDS.into(), sql: Box::new(kept) },
    ];
    RuleSql { tables, edges: Box::new(edges), dropped }
}

/// Records carrying the same external id link (no people guard: these are system keys).
pub fn external_id(rule: &ExternalIdRule, ids: &[String], learned: &LearnedNames) -> Vec<RuleSql> {
    ids.iter()
        .filter(|id| rule.id.as_ref().is_none_or(|wanted| wanted == *id))
        .map(|id| deterministic_on(&[format!("ext_{id}")], (&rule.unless_conflict, learned), None, None, None))
        .collect()
}

/// The SQL condition of one comparison level over `l.` and `r.`.
fn level_condition(column: &str, level: &LevelSpec) -> String {
    let text = |side: &str, c: &str| format!("CAST({side}.{c} AS VARCHAR)");
    match &level.condition {
        Condition::EitherNull => format!("(l.{column} IS NULL OR r.{column} IS NULL)"),
        Condition::Exact(on) => {
            let c = on.as_deref().unwrap_or(column);
            format!("l.{c} = r.{c}")
        }
        Condition::JaroWinkler(t) => format!("jaro_winkler({}, {}) >= {t}", text("l", column), text("r", column)),
        Condition::DamerauLevenshtein(d) => format!("damerau_levenshtein(l.{column}, r.{column}, {d}) <= {d}"),
        Condition::Sql(sql) => format!("({sql})"),
        Condition::Else => "true".into(),
    }
}

fn level_label(level: &LevelSpec) -> String {
    match &level.condition {
        Condition::EitherNull => "null".into(),
        Condition::Exact(Some(c)) => format!("exact({c})"),
        Condition::Exact(None) => "exact".into(),
        Condition::JaroWinkler(t) => format!("jaro_winkler>={t}"),
        Condition::DamerauLevenshtein(d) => format!("damerau_levenshtein<={d}"),
        Condition::Sql(_) => "sql".into(),
        Condition::Else => "else".into(),
    }
}

/// `CASE` over a comparison's levels giving its weight, and one giving its label.
pub(crate) fn comparison_cases(c: &ComparisonSpec) -> (String, String) {
    let mut weight = String::from("CASE");
    let mut label = String::from("CASE");
    for level in &c.levels {
        let cond = level_condition(&c.column, level);
        weight.push_str(&format!(" WHEN {cond} THEN {:.6}", level.weight));
        label.push_str(&format!(
            " WHEN {cond} THEN {}",
            sql_string(&format!("{}:{}({:+})", c.name(), level_label(level), level.weight))
        ));
    }
    weight.push_str(" ELSE 0.0 END");
    label.push_str(&format!(" ELSE {} END", sql_string(&format!("{}:none(+0)", c.name()))));
    (weight, label)
}

/// Candidate pairs from the blocking keys (blocks above the size limit are skipped),
/// scored by the comparisons; pairs at or above the threshold are edges. A pair that
/// shares several blocking keys comes once per key; the caller keeps one.
pub fn fuzzy(rule: &FuzzyRule, learned: &LearnedNames) -> RuleSql {
    let records = match &rule.filter {
        Some(f) => format!("(SELECT * FROM {IDENTITY_RECORDS} WHERE {f})"),
        None => IDENTITY_RECORDS.to_string(),
    };
    let cases: Vec<(String, String)> = rule.comparisons.iter().map(comparison_cases).collect();
    let score = cases.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(" + ");
    let detail = cases.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(", ");
    let conflicts = format!("{} AND {}", conflicts_clause(&rule.unless_conflict, learned), link_clause(rule.link_only));
    let each_pair = PairScore {
        columns: format!("{score} AS w0, concat_ws(' ', {detail}) AS d0"),
        weight: "w0".into(),
        detail: "d0".into(),
        bound: "true".into(),
    };
    let scoring = Scoring {
        pairs: vec![each_pair; rule.blocking.len()],
        conflicts,
        conflict_cost: "0.0".into(),
        min_weight: rule.threshold,
        score: "w".into(),
    };
    let tables = blocked_records(&records, &rule.blocking, rule.max_block_size);
    let blocking = rule.blocking.clone();
    let edges = move |pass: Pass| scored_pairs(&blocking, pass, &scoring);
    let skipped = skipped_blocks(&rule.blocking, rule.max_block_size);
    RuleSql { tables, edges: Box::new(edges), dropped: skipped }
}

/// The table of the block sizes of blocking rule `i` of the rule being applied: per key
/// value, how many records hold it (see [`register_block_sizes`]).
pub(crate) fn block_sizes_table(i: usize) -> String {
    format!("rule_block_sizes_{i}")
}

/// SQL of the block sizes of `key` over the records `from`: per key value, its records.
pub(crate) fn block_sizes_sql(from: &str, key: &[String]) -> String {
    let cols = key.join(", ");
    let not_null = key.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" AND ");
    format!("SELECT {cols}, count(*) AS n FROM {from} WHERE {not_null} GROUP BY {cols}")
}

/// Writes the block sizes of each blocking rule over `from` under `dir` and registers them
/// as [`block_sizes_table`]s: the weights, the blocked records and the skipped blocks all
/// read them. Each counted the blocks itself before, four aggregations of every record per
/// blocking rule (at 1M people, 2.45M records and two blocking rules).
pub async fn register_block_sizes(
    ctx: &SessionContext,
    from: &str,
    blocking: &[Vec<String>],
    dir: &Path,
) -> datafusion::error::Result<()> {
    for (i, key) in blocking.iter().enumerate() {
        let df = ctx.sql(&block_sizes_sql(from, key)).await?;
        crate::engine::materialize(ctx, &block_sizes_table(i), df, dir).await?;
    }
    Ok(())
}

/// Removes the tables `register_block_sizes` made from the session.
pub fn release_block_sizes(ctx: &SessionContext, blocking: &[Vec<String>]) -> datafusion::error::Result<()> {
    for i in 0..blocking.len() {
        ctx.deregister_table(block_sizes_table(i).as_str())?;
    }
    Ok(())
}

/// The SQL of blocks: `k` the records of `from` with the key, `kb` those in blocks within
/// the size limit (a block of one record makes no pair: it is left out), by the block sizes
/// `sizes` (a table or a parenthesised query). The block sizes are the join's first side,
/// which the engine keeps in a hash table: it cannot tell the size of an aggregate, and at
/// 10M records the records themselves outgrew a 2 GB pool there.
pub(crate) fn blocks_sql(from: &str, key: &[String], max: usize, sizes: &str) -> String {
    let not_null = key.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" AND ");
    let join_b = key.iter().map(|c| format!("b.{c} = k.{c}")).collect::<Vec<_>>().join(" AND ");
    format!(
        "k AS (SELECT * FROM {from} WHERE {not_null}), \
         kb AS (SELECT k.* FROM {sizes} b JOIN k ON {join_b} WHERE b.n > 1 AND b.n <= {max})"
    )
}

/// The prepared tables of a rule with blocking rules: per blocking rule, the records in
/// blocks within the size limit with their pass.
fn blocked_records(from: &str, blocking: &[Vec<String>], max: usize) -> Vec<Prepared> {
    blocking
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let (from, key) = (from.to_string(), key.clone());
            let sql = move |passes: usize| {
                let kb_key: Vec<String> = key.iter().map(|c| format!("kb.{c}")).collect();
                // In the key's order, so that the self-join reads neighbouring rows for
                // neighbouring pairs (at 200k people the surname-sound + initial blocks
                // give 11.5M pairs: 4.2 s on records in any order, 2.7-3.2 s in this
                // order). Only the blocked records are sorted: sorting every record of the
                // rule before blocking took 2 s at 1M people, most of it one writer.
                format!(
                    "WITH {} SELECT kb.*, {} FROM kb ORDER BY {}",
                    blocks_sql(&from, &key, max, &block_sizes_table(i)),
                    Pass::of(&kb_key, passes),
                    kb_key.join(", ")
                )
            };
            Prepared { name: blocked_table(i), sql: Box::new(sql) }
        })
        .collect()
}

/// The table of the records blocking rule `i` (of the rule being applied) puts in blocks.
fn blocked_table(i: usize) -> String {
    format!("rule_blocks_{i}")
}

/// How a pair of records is scored, in two steps: `columns` over the two records `l.`
/// and `r.` (the comparisons' levels), then the weight and its explanation over those
/// columns. The explanation is only built for the pairs that are kept.
#[derive(Debug, Clone)]
pub(crate) struct PairScore {
    columns: String,
    weight: String,
    detail: String,
    /// A condition over `l.` and `r.` that every pair reaching the threshold meets, made of
    /// equality tests only (see [`weight_bound`]); `true` when there is none.
    bound: String,
}

impl PairScore {
    /// `rid_a`, `rid_b`, the weight `w` and `detail` of the pairs `l`, `r` that `pairs`
    /// (a FROM clause with its conditions) gives, where `keep` (over `w`) holds.
    pub(crate) fn query(&self, pairs: &str, keep: &str) -> String {
        self.query_weighing(pairs, "0.0", keep)
    }

    /// `query` where a pair also pays `conflict_cost` (SQL over `l.` and `r.`, <= 0) for
    /// the conflicts it has: `keep` may read `w + conflict_cost`, and `detail` shows it.
    ///
    /// `w` is made by `after_join`, which the optimizer cannot see through: left to it, it
    /// moved `keep` into the join's filter, and the join then gathered every column the
    /// weight reads for each pair of a block (11.5M pairs at 200k people), not only for
    /// the pairs that pass the bound and the conflicts (candidate edges 1.4 -> 1.1 s).
    pub(crate) fn query_weighing(&self, pairs: &str, conflict_cost: &str, keep: &str) -> String {
        format!(
            "SELECT rid_a, rid_b, w, concat_ws(' ', {detail}, CASE WHEN conflict_cost < 0 THEN \
             concat('conflict(', CAST(round(conflict_cost, 2) AS VARCHAR), ')') END) AS detail FROM (\
             SELECT *, after_join(CAST({weight} AS DOUBLE)) AS w FROM (\
             SELECT l.rid AS rid_a, r.rid AS rid_b, {columns}, CAST({conflict_cost} AS DOUBLE) AS conflict_cost \
             {pairs})) WHERE {keep}",
            detail = self.detail,
            weight = self.weight,
            columns = self.columns,
        )
    }
}

/// How the pairs of blocked records are scored.
struct Scoring {
    /// Per blocking rule.
    pairs: Vec<PairScore>,
    /// Pairs for which this is false (over `l.` and `r.`) are no candidates.
    conflicts: String,
    /// What a pair pays for the conflicts a probabilistic rule weighs (SQL, <= 0).
    conflict_cost: String,
    /// Pairs below this weight (after their conflicts' cost) are no edges.
    min_weight: f64,
    /// The edge's `score`, from `w`.
    score: String,
}

/// The candidate edges of one pass over every blocking rule. The pairs are scored straight
/// from the two blocked records: no lookups by rid. A pair that shares several blocking
/// keys comes once per key; the caller keeps one.
fn scored_pairs(blocking: &[Vec<String>], pass: Pass, s: &Scoring) -> String {
    blocking
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let join_lr = key.iter().map(|c| format!("l.{c} = r.{c}")).collect::<Vec<_>>().join(" AND ");
            let blocked = blocked_table(i);
            let pairs = format!(
                "FROM {blocked} l JOIN {blocked} r ON {join_lr} AND l.rid < r.rid WHERE {} AND {} AND {} AND {}",
                pass.keeps("l"),
                pass.keeps("r"),
                s.pairs[i].bound,
                s.conflicts
            );
            format!(
                "SELECT rid_a, rid_b, {score} AS score, detail FROM ({scored})",
                score = s.score,
                scored = s.pairs[i].query_weighing(
                    &pairs,
                    &s.conflict_cost,
                    &format!("w + conflict_cost >= {}", s.min_weight)
                ),
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// SQL of what one blocking rule makes, from its block sizes `sizes` (a table or a
/// parenthesised query): its pairs (in blocks within the size limit), and the blocks and
/// records the limit leaves out.
pub(crate) fn block_counts_sql(sizes: &str, max: usize) -> String {
    format!(
        "SELECT CAST(COALESCE(sum(CASE WHEN n <= {max} THEN n * (n - 1) / 2 END), 0) AS BIGINT), \
                CAST(COALESCE(sum(CASE WHEN n > {max} THEN 1 END), 0) AS BIGINT), \
                CAST(COALESCE(sum(CASE WHEN n > {max} THEN n END), 0) AS BIGINT) FROM {sizes}"
    )
}

/// The records a rule with blocking rules compares, its blocking rules and their size
/// limit; `None` for rules without blocking.
pub(crate) fn blocking_of(rule: &RuleSpec) -> Option<(String, &[Vec<String>], usize)> {
    let records = |filter: &Option<String>| match filter {
        Some(f) => format!("(SELECT * FROM {IDENTITY_RECORDS} WHERE {f})"),
        None => IDENTITY_RECORDS.to_string(),
    };
    match rule {
        RuleSpec::Fuzzy(r) => Some((records(&r.filter), &r.blocking, r.max_block_size)),
        RuleSpec::Probabilistic(r) => Some((records(&r.filter), &r.blocking, r.max_block_size)),
        _ => None,
    }
}

/// What a blocking rule's size limit left out: one row per skipped block.
fn skipped_blocks(blocking: &[Vec<String>], max: usize) -> String {
    blocking
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let value = key.iter().map(|c| format!("CAST({c} AS VARCHAR)")).collect::<Vec<_>>().join(", ' | ', ");
            format!(
                "SELECT concat({value}) AS value, n AS records, CAST(0 AS BIGINT) AS people FROM {} WHERE n > {max}",
                block_sizes_table(i)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Column of a record with how many records share its value of a term-frequency
/// comparison (`tf_<i>`), and the table of records that carries them.
pub(crate) fn tf_column(comparison: usize) -> String {
    format!("tf_{comparison}")
}

/// Candidate pairs of a probabilistic rule from its blocking rules, each scored with the
/// model of the blocking rule that found it: its prior plus the level weight of every
/// comparison of another attribute (exact agreement on a term-frequency comparison weighs
/// log2(m / share of records with that value)). Pairs whose match probability reaches the
/// threshold are edges; `score` is that probability. `from` holds the records, with the
/// `tf_<i>` counts where needed.
///
/// `unless_conflict` weighs where the model can (`RuleModel::conflict_cost`): a pair that
/// conflicts pays the attribute's disagreement weight again, on top of what its comparison
/// counted, and links only if it still reaches the threshold; elsewhere it is a veto.
pub fn probabilistic(rule: &ProbabilisticRule, model: &RuleModel, from: &str, learned: &LearnedNames) -> RuleSql {
    let (mut vetoed, mut costs) = (Vec::new(), Vec::new());
    for attribute in &rule.unless_conflict {
        match model.conflict_cost(attribute) {
            Some(cost) => {
                costs.push(format!("CASE WHEN {} THEN 0.0 ELSE {cost:.6} END", no_conflict(attribute, learned)))
            }
            None => vetoed.push(attribute.clone()),
        }
    }
    let conflicts = format!("{} AND {}", conflicts_clause(&vetoed, learned), link_clause(rule.link_only));
    let threshold = probabilistic::match_weight(rule.threshold);
    let scoring = Scoring {
        pairs: probabilistic_scores(rule, model),
        conflicts,
        conflict_cost: if costs.is_empty() { "0.0".into() } else { costs.join(" + ") },
        min_weight: threshold,
        score: "1.0 / (1.0 + power(2.0, -w))".into(),
    };
    let tables = blocked_records(from, &rule.blocking, rule.max_block_size);
    let dropped = skipped_blocks(&rule.blocking, rule.max_block_size);
    let blocking = rule.blocking.clone();
    let edges = move |pass: Pass| scored_pairs(&blocking, pass, &scoring);
    RuleSql { tables, edges: Box::new(edges), dropped }
}

/// Per blocking rule of a probabilistic rule, how a pair of records (with their `tf_<i>`
/// counts) is scored: each comparison's level once (`g<i>`), then the match weight (the
/// blocking rule's prior plus the level weights of the other attributes) and what it is
/// made of. The resolve stage and `explain` both score with this, so an explanation
/// cannot disagree with a decision.
pub(crate) fn probabilistic_scores(rule: &ProbabilisticRule, model: &RuleModel) -> Vec<PairScore> {
    let threshold = probabilistic::match_weight(rule.threshold);
    let mut weights = Vec::new();
    let mut labels = Vec::new();
    // Per comparison, for blocking rules that cover it: how much more (or less) exact
    // agreement on this value says than agreement on an average value (log2 of the
    // level's u over the value's share). The prior holds the average.
    let mut adjustments: Vec<Option<(String, String)>> = Vec::new();
    let mut bounds: Vec<Option<ComparisonBound>> = Vec::new();
    for (i, (c, fitted)) in rule.comparisons.iter().zip(&model.comparisons).enumerate() {
        let (g, tf) = (format!("g{i}"), tf_column(i));
        let total = fitted.tf_total.unwrap_or(1).max(1);
        // The share of records with this value, standing in for an average u.
        let tf_weight_of = |p: f64, tf: &str| format!("log2({p} / greatest(CAST({tf} AS DOUBLE) / {total}, 1e-9))");
        let tf_weight = |p: f64| tf_weight_of(p, &tf);
        let shown_tf =
            |label: String, w: &str| format!("concat({}, CAST(round({w}, 2) AS VARCHAR), ')')", sql_string(&label));
        let mut weight = format!("CASE {g} WHEN -1 THEN 0.0");
        let mut label = format!("CASE {g} WHEN -1 THEN {}", sql_string(&format!("{}:null(+0)", c.name())));
        let mut adjustment = None;
        for (l, (level, lm)) in c.levels.iter().zip(&fitted.levels).enumerate() {
            if c.term_frequency && level.kind == LevelKind::Exact && !lm.fixed {
                let w = tf_weight(lm.m);
                weight.push_str(&format!(" WHEN {l} THEN {w}"));
                label.push_str(&format!(" WHEN {l} THEN {}", shown_tf(format!("{}:{}(tf:", c.name(), lm.level), &w)));
                let adjust = tf_weight(lm.u.max(1e-9));
                adjustment.get_or_insert((
                    format!("CASE WHEN {g} = {l} THEN {adjust} ELSE 0.0 END"),
                    format!(
                        "CASE WHEN {g} = {l} THEN {} END",
                        shown_tf(format!("{}:tf_adjustment(", c.name()), &adjust)
                    ),
                ));
            } else {
                weight.push_str(&format!(" WHEN {l} THEN {:.6}", lm.weight));
                label.push_str(&format!(
                    " WHEN {l} THEN {}",
                    sql_string(&format!("{}:{}({:+.2})", c.name(), lm.level, lm.weight))
                ));
            }
        }
        let otherwise = fitted.levels.last().expect("else level");
        weight.push_str(&format!(" ELSE {:.6} END", otherwise.weight));
        label.push_str(&format!(" ELSE {} END", sql_string(&format!("{}:else({:+.2})", c.name(), otherwise.weight))));
        weights.push(weight);
        labels.push(label);
        adjustments.push(adjustment);
        bounds.push(weight_bound(c, fitted, &|p| tf_weight_of(p, &format!("l.{tf}"))));
    }
    model
        .blocking
        .iter()
        .map(|block| {
            let prior = block.prior_weight();
            let (mut columns, mut sum, mut shown) = (Vec::new(), Vec::new(), Vec::new());
            let mut bound_terms = Vec::new();
            for (i, c) in rule.comparisons.iter().enumerate() {
                let (w, label) = if !block.covers(&c.column) {
                    bound_terms.push(bounds[i].as_ref().map(|b| b.weight.clone()));
                    (&weights[i], &labels[i])
                } else if let Some((w, label)) = &adjustments[i] {
                    bound_terms.push(bounds[i].as_ref().and_then(|b| b.adjustment.clone()));
                    (w, label)
                } else {
                    continue;
                };
                columns.push(format!("{} AS g{i}", probabilistic::gamma(c)));
                if c.term_frequency {
                    columns.push(format!("l.{0} AS {0}", tf_column(i)));
                }
                sum.push(w.as_str());
                shown.push(label.as_str());
            }
            if columns.is_empty() {
                columns.push("0 AS g".into());
            }
            let head = sql_string(&format!("prior({prior:+.2}) blocked_on:{}", block.key.join(",")));
            PairScore {
                columns: columns.join(", "),
                weight: format!("{prior:.6} + {}", if sum.is_empty() { "0.0".to_string() } else { sum.join(" + ") }),
                bound: match bound_terms.into_iter().collect::<Option<Vec<_>>>() {
                    Some(terms) if !terms.is_empty() => bound_condition(prior, &terms, threshold),
                    _ => "true".into(),
                },
                detail: format!(
                    "concat_ws(' ', {head}{}{})",
                    if shown.is_empty() { "" } else { ", " },
                    shown.join(", ")
                ),
            }
        })
        .collect()
}

/// The most a comparison can add to a pair's weight, knowing only whether the two values
/// are missing or equal.
struct ComparisonBound {
    /// Bounds the comparison's weight.
    weight: BoundTerm,
    /// Bounds its term-frequency adjustment (for blocking rules on its column).
    adjustment: Option<BoundTerm>,
}

/// One term of a pair's weight bound.
#[derive(Clone)]
enum BoundTerm {
    Constant(f64),
    /// `if_equal` (SQL over `l.`) where `l.column = r.column`, `if_not` where they differ,
    /// 0 where either is missing: `equality_weight`'s four arguments.
    ByEquality {
        column: String,
        if_equal: String,
        if_not: f64,
    },
}

/// A comparison's [`ComparisonBound`], or `None` when a level that is not the first
/// weighs by term frequency (its weight then has no bound without the level itself).
/// Equality is what `comparison_level` tests for `exact`, so a pair whose values are equal
/// is at level 0 when `exact` comes first, and at some later level when they differ.
/// Blocks of common surnames make millions of candidate pairs of which a few hundredth
/// reach the threshold; pairs that cannot are left out before the similarity functions
/// run (a join filter evaluates `a AND b` as `b` over the rows where `a` holds).
fn weight_bound(
    c: &crate::config::ProbabilisticComparison,
    fitted: &probabilistic::ComparisonModel,
    tf_weight: &dyn Fn(f64) -> String,
) -> Option<ComparisonBound> {
    let by_tf = |l: usize| {
        c.term_frequency
            && c.levels.get(l).is_some_and(|level| level.kind == LevelKind::Exact)
            && !fitted.levels[l].fixed
    };
    if (1..fitted.levels.len()).any(by_tf) {
        return None;
    }
    let most = |levels: &[probabilistic::LevelModel]| levels.iter().map(|l| l.weight).fold(f64::NEG_INFINITY, f64::max);
    if c.levels.first().is_some_and(|l| l.kind == LevelKind::Exact) {
        let first = &fitted.levels[0];
        let by_equality =
            |if_equal: String, if_not: f64| BoundTerm::ByEquality { column: c.column.clone(), if_equal, if_not };
        let w0 = if by_tf(0) { tf_weight(first.m) } else { format!("{:.6}", first.weight) };
        let adjustment = by_tf(0).then(|| by_equality(tf_weight(first.u.max(1e-9)), 0.0));
        return Some(ComparisonBound { weight: by_equality(w0, most(&fitted.levels[1..])), adjustment });
    }
    Some(ComparisonBound { weight: BoundTerm::Constant(most(&fitted.levels).max(0.0)), adjustment: None })
}

/// The condition that a pair's weight, from `prior` and the bound's terms, can reach
/// `threshold`: one `equality_weight` call over every column the terms compare.
fn bound_condition(prior: f64, terms: &[BoundTerm], threshold: f64) -> String {
    let mut constant = prior;
    let mut by_equality = Vec::new();
    for term in terms {
        match term {
            BoundTerm::Constant(w) => constant += w,
            BoundTerm::ByEquality { column, if_equal, if_not } => {
                by_equality.push(format!("l.{column}, r.{column}, {if_equal}, {if_not:.6}"))
            }
        }
    }
    // A hair below the threshold: the bound's terms are the weight's own literals, so only
    // rounding could put a pair between the two.
    let threshold = threshold - 1e-6;
    match by_equality.is_empty() {
        true => format!("{constant:.6} >= {threshold:.9}"),
        false => format!("{constant:.6} + equality_weight({}) >= {threshold:.9}", by_equality.join(", ")),
    }
}

/// Per rule: the edge query and the query of what its guardrails left out. A
/// probabilistic rule needs its fitted model and the table of its records.
pub fn rule_queries(
    rule: &RuleSpec,
    external_ids: &[String],
    fitted: Option<(&RuleModel, &str)>,
    learned: &LearnedNames,
) -> Vec<RuleSql> {
    match rule {
        RuleSpec::Deterministic(r) => vec![deterministic(r, learned)],
        RuleSpec::ExternalId(r) => external_id(r, external_ids, learned),
        RuleSpec::Fuzzy(r) => vec![fuzzy(r, learned)],
        RuleSpec::Probabilistic(r) => {
            let (model, from) = fitted.expect("a probabilistic rule is estimated before its queries");
            vec![probabilistic(r, model, from, learned)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::probabilistic::{BlockingModel, ComparisonModel, LevelModel};
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    /// The bound never leaves out a pair that reaches the threshold, and does leave out
    /// pairs: every pair of 60 records (common and rare surnames with their counts, typos,
    /// missing values) scored both ways, under each blocking rule's scores.
    #[tokio::test]
    async fn the_weight_bound_keeps_every_pair_that_reaches_the_threshold() {
        let rule: ProbabilisticRule = serde_yaml::from_str(
            "name: person
blocking: [[postcode], [last_name_core]]
threshold: 0.99
comparisons:
  - { column: first_name_key, levels: [exact, {jaro_winkler: 0.92}, {jaro_winkler: 0.8}, initials] }
  - { column: last_name_core, levels: [exact, {jaro_winkler: 0.9}], term_frequency: true }
  - { column: birth_date, levels: [exact, {damerau_levenshtein: 1}] }
  - { column: postcode, levels: [exact] }
  - { column: house_number, levels: [{damerau_levenshtein: 1}, exact] }",
        )
        .unwrap();
        let weights: [&[f64]; 5] =
            [&[3.5, 1.3, -0.1, 2.8, -0.4], &[8.0, 1.8, -2.4], &[11.8, 2.9, -0.7], &[16.0, -5.0], &[2.0, 6.0, -9.0]];
        let comparisons = rule
            .comparisons
            .iter()
            .zip(weights)
            .map(|(c, w)| ComparisonModel {
                name: c.name().into(),
                column: c.column.clone(),
                term_frequency: c.term_frequency,
                tf_total: c.term_frequency.then_some(60),
                levels: w
                    .iter()
                    .map(|&weight| LevelModel {
                        level: "l".into(),
                        m: 0.8,
                        u: 0.01,
                        weight,
                        fixed: false,
                        m_estimated: true,
                    })
                    .collect(),
            })
            .collect();
        let blocking = rule
            .blocking
            .iter()
            .zip([0.02, 0.002])
            .map(|(key, lambda)| BlockingModel { key: key.clone(), lambda, pairs: 100, em_pairs: 100 })
            .collect();
        let model = RuleModel { rule: "person".into(), u_pairs: 1000, blocking, comparisons };
        let ctx = SessionContext::new();
        crate::udf::register(&ctx);
        let records = "SELECT value AS rid, \
             make_array('jan', 'jan', 'janneke', 'j', 'piet', 'pieter', NULL)[value % 7 + 1] AS first_name_key, \
             make_array('jansen', 'janssen', 'de vries', 'bakker', 'zwart', NULL)[value % 6 + 1] AS last_name_core, \
             CAST(make_array('1980-01-02', '1980-01-02', '1980-01-20', NULL)[value % 4 + 1] AS DATE) AS birth_date, \
             make_array('1011AB', '1011AB', '2022CD', NULL)[value % 4 + 1] AS postcode, \
             make_array('1', '1', '12', NULL, '2')[value % 5 + 1] AS house_number, \
             CAST(value % 9 + 1 AS BIGINT) AS tf_1 \
             FROM generate_series(1, 60) t(value)";
        ctx.register_table("t", ctx.sql(records).await.unwrap().into_view()).unwrap();
        let threshold = probabilistic::match_weight(rule.threshold);
        for score in probabilistic_scores(&rule, &model) {
            assert!(score.bound.contains(">="), "{}", score.bound);
            let sql = format!(
                "SELECT count(*), sum(CASE WHEN NOT b THEN 1 ELSE 0 END), sum(CASE WHEN w >= {threshold} THEN 1 ELSE 0 END), \
                 sum(CASE WHEN NOT b AND w >= {threshold} THEN 1 ELSE 0 END) FROM (\
                 SELECT b, CAST({weight} AS DOUBLE) AS w FROM (\
                 SELECT {bound} AS b, {columns} FROM t l JOIN t r ON l.rid < r.rid))",
                weight = score.weight,
                bound = score.bound,
                columns = score.columns,
            );
            let b = &ctx.sql(&sql).await.unwrap().collect().await.unwrap()[0];
            let int = |i: usize| b.column(i).as_primitive::<Int64Type>().value(0);
            let (pairs, left_out, reaching, lost) = (int(0), int(1), int(2), int(3));
            assert_eq!(pairs, 60 * 59 / 2);
            assert!(reaching > 0 && left_out > pairs / 4, "{reaching} reach, {left_out} left out: {}", score.bound);
            assert_eq!(lost, 0, "pairs that reach the threshold were left out: {}", score.bound);
        }
    }

    /// The weight is computed over the pairs the join lets through, not inside the join's
    /// filter: the join gathers no column that only the weight reads. The pairs kept are
    /// those whose weight reaches the threshold.
    #[tokio::test]
    async fn the_weight_is_kept_out_of_the_join() {
        let ctx = SessionContext::new();
        crate::udf::register(&ctx);
        let records = "SELECT value AS rid, value % 3 AS k, concat('naam', CAST(value % 7 AS VARCHAR)) AS name \
             FROM generate_series(1, 60) t(value)";
        ctx.register_table("t", ctx.sql(records).await.unwrap().into_view()).unwrap();
        let score = PairScore {
            columns: "jaro_winkler(l.name, r.name) AS s".into(),
            weight: "s * 10".into(),
            detail: "'d'".into(),
            bound: "true".into(),
        };
        let pairs = "FROM t l JOIN t r ON l.k = r.k AND l.rid < r.rid WHERE l.rid % 2 = r.rid % 2";
        let df = ctx.sql(&score.query_weighing(pairs, "0.0", "w + conflict_cost >= 10")).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let plan = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        let join = plan.lines().find(|l| l.contains("HashJoinExec")).expect("a hash join");
        assert!(!join.contains("jaro_winkler"), "{plan}");
        assert!(plan.contains("FilterExec: w@"), "{plan}");
        let kept = df.count().await.unwrap();
        let expected = ctx
            .sql(
                "SELECT count(*) FROM t l JOIN t r ON l.k = r.k AND l.rid < r.rid \
                  WHERE l.rid % 2 = r.rid % 2 AND l.name = r.name",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let expected = expected[0].column(0).as_primitive::<Int64Type>().value(0) as usize;
        assert!(expected > 0);
        assert_eq!(kept, expected);
    }
}
