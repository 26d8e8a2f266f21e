//! Explain: why two records are one customer (the chain of merges that joins them), or why
//! they are not (no candidate pair, a threshold missed, a conflict, a guardrail). Reads the
//! published crosswalk and edges, and re-stages the inputs to compare the two records
//! rule by rule.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::Error;
use crate::config::{Pipeline, RuleSpec};
use crate::engine::sql_string;
use crate::resolve::probabilistic::RuleModel;
use crate::resolve::rules;
use crate::storage::Location;
use crate::tables::{CUSTOMER_XREF, IDENTITY_RECORDS, MATCH_EDGES};

/// A record named on the command line as `SYSTEM:ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordRef {
    pub system: String,
    pub id: String,
}

impl std::str::FromStr for RecordRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (system, id) = s.split_once(':').ok_or_else(|| format!("`{s}`: expected SYSTEM:ID, e.g. crm:C0001234"))?;
        Ok(RecordRef { system: system.to_string(), id: id.to_string() })
    }
}

impl std::fmt::Display for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.system, self.id)
    }
}

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Vec<String>>, Error> {
    let batches: Vec<RecordBatch> =
        ctx.sql(sql).await.map_err(Error::engine("explain"))?.collect().await.map_err(Error::engine("explain"))?;
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(
                        |c| {
                            if c.is_null(i) {
                                "∅".to_string()
                            } else {
                                array_value_to_string(c, i).unwrap_or_default()
                            }
                        },
                    )
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// One merged edge of the published `match_edges`.
struct Edge {
    a: RecordRef,
    b: RecordRef,
    rule: String,
    score: String,
    detail: String,
}

/// Explains one record (its customer and how it was built) or two records.
pub async fn explain(pipeline: &Pipeline, records: &[RecordRef]) -> Result<String, Error> {
    let output = Location::parse(&pipeline.spec.output, &pipeline.base_dir)?;
    let scratch = tempfile::tempdir().map_err(|e| Error::Other(e.to_string()))?;
    let (ctx, learned) = if records.len() == 2 {
        let ctx = crate::pipeline::staged_session(pipeline, scratch.path()).await?;
        let learned =
            crate::resolve::names::learn(&ctx, scratch.path()).await.map_err(Error::engine("learning first names"))?;
        (ctx, learned)
    } else {
        (crate::pipeline::start_session(pipeline, &Default::default(), scratch.path())?, Default::default())
    };
    let store = crate::storage::store_for(&ctx, &output, &pipeline.spec.storage)?;
    crate::publish::published_manifest(store.as_ref(), &output).await.ok_or_else(|| {
        Error::Usage(format!("{}: no published run to explain (run the pipeline first)", output.display()))
    })?;
    for table in [CUSTOMER_XREF, MATCH_EDGES] {
        ctx.register_parquet(table, &format!("{}/", output.child(table).url()), ParquetReadOptions::default())
            .await
            .map_err(Error::engine(format!("reading published `{table}`")))?;
    }
    let mut customers = Vec::new();
    for r in records {
        let found = rows(
            &ctx,
            &format!(
                "SELECT customer_id, matched_by FROM {CUSTOMER_XREF} WHERE source_system = {} AND source_record_id = {}",
                sql_string(&r.system),
                sql_string(&r.id)
            ),
        )
        .await?;
        let row = found.first().ok_or_else(|| Error::Usage(format!("{r}: not in the published crosswalk")))?;
        customers.push(row[0].clone());
    }
    let mut out = String::new();
    for (r, c) in records.iter().zip(&customers) {
        let members =
            rows(&ctx, &format!("SELECT count(*) FROM {CUSTOMER_XREF} WHERE customer_id = {}", sql_string(c))).await?;
        let _ = writeln!(out, "{r} is customer {c} ({} records)", members[0][0]);
    }
    match records {
        [one] => cluster_story(&ctx, &customers[0], &mut out, one).await?,
        [a, b] if customers[0] == customers[1] => {
            let edges = merged_edges(&ctx, &customers[0]).await?;
            let path = shortest_path(&edges, a, b);
            let _ = writeln!(out, "\n{a} and {b} are one customer through {} merge(s):", path.len());
            for e in path {
                let _ = writeln!(out, "  {} ~ {}  by {} (score {})  {}", e.a, e.b, e.rule, e.score, e.detail);
            }
        }
        [a, b] => {
            let _ = writeln!(out, "\n{a} and {b} are not joined.");
            refused_between(&ctx, &customers[0], &customers[1], &mut out).await?;
            let _ = writeln!(out, "\nrule by rule, for these two records:");
            let models = published_models(store.as_ref(), &output).await;
            for (i, rule) in pipeline.spec.resolve.rules.iter().enumerate() {
                let weighing =
                    Weighing { models: &models, learned: &learned, rule_no: (i + 1) as u16, scratch: scratch.path() };
                let line = compare_pair(&ctx, rule, a, b, &weighing).await?;
                let _ = writeln!(out, "  {}: {line}", rule.name());
            }
        }
        _ => return Err(Error::Usage("explain takes one or two --record".into())),
    }
    Ok(out)
}

async fn merged_edges(ctx: &SessionContext, customer: &str) -> Result<Vec<Edge>, Error> {
    let sql = format!(
        "WITH members AS (SELECT source_system, source_record_id FROM {CUSTOMER_XREF} WHERE customer_id = {c}) \
         SELECT e.source_system_a, e.source_record_id_a, e.source_system_b, e.source_record_id_b, e.rule, e.score, e.detail \
         FROM {MATCH_EDGES} e JOIN members m ON m.source_system = e.source_system_a AND m.source_record_id = e.source_record_id_a \
         WHERE e.decision = 'merged' ORDER BY e.rule, e.source_record_id_a, e.source_record_id_b",
        c = sql_string(customer)
    );
    Ok(rows(ctx, &sql)
        .await?
        .into_iter()
        .map(|r| Edge {
            a: RecordRef { system: r[0].clone(), id: r[1].clone() },
            b: RecordRef { system: r[2].clone(), id: r[3].clone() },
            rule: r[4].clone(),
            score: r[5].clone(),
            detail: r[6].clone(),
        })
        .collect())
}

/// The fewest merges from `a` to `b` (breadth first over the merge tree).
fn shortest_path<'e>(edges: &'e [Edge], a: &RecordRef, b: &RecordRef) -> Vec<&'e Edge> {
    let mut next: HashMap<&RecordRef, Vec<(&RecordRef, &Edge)>> = HashMap::new();
    for e in edges {
        next.entry(&e.a).or_default().push((&e.b, e));
        next.entry(&e.b).or_default().push((&e.a, e));
    }
    let mut came_from: HashMap<&RecordRef, (&RecordRef, &Edge)> = HashMap::new();
    let mut seen: HashSet<&RecordRef> = HashSet::from([a]);
    let mut queue = VecDeque::from([a]);
    while let Some(at) = queue.pop_front() {
        if at == b {
            break;
        }
        for (to, e) in next.get(at).into_iter().flatten() {
            if seen.insert(to) {
                came_from.insert(to, (at, e));
                queue.push_back(to);
            }
        }
    }
    let mut path = Vec::new();
    let mut at = b;
    while let Some((from, e)) = came_from.get(at) {
        path.push(*e);
        at = from;
    }
    path.reverse();
    path
}

async fn cluster_story(
    ctx: &SessionContext,
    customer: &str,
    out: &mut String,
    record: &RecordRef,
) -> Result<(), Error> {
    let members = rows(
        ctx,
        &format!(
            "SELECT source_system, source_record_id, matched_by FROM {CUSTOMER_XREF} WHERE customer_id = {} \
             ORDER BY source_system, source_record_id",
            sql_string(customer)
        ),
    )
    .await?;
    let _ = writeln!(out, "\nrecords of {customer}:");
    for m in &members {
        let mark = if m[0] == record.system && m[1] == record.id { " <-" } else { "" };
        let _ = writeln!(out, "  {}:{}  (joined by {}){mark}", m[0], m[1], m[2]);
    }
    let edges = merged_edges(ctx, customer).await?;
    if !edges.is_empty() {
        let _ = writeln!(out, "\nmerges:");
        for e in &edges {
            let _ = writeln!(out, "  {} ~ {}  by {} (score {})  {}", e.a, e.b, e.rule, e.score, e.detail);
        }
    }
    Ok(())
}

async fn refused_between(ctx: &SessionContext, c1: &str, c2: &str, out: &mut String) -> Result<(), Error> {
    let sql = format!(
        "WITH m AS (SELECT customer_id, source_system, source_record_id FROM {CUSTOMER_XREF} WHERE customer_id IN ({a}, {b})) \
         SELECT e.source_system_a, e.source_record_id_a, e.source_system_b, e.source_record_id_b, e.rule, e.decision, e.detail \
         FROM {MATCH_EDGES} e \
         JOIN m ma ON ma.source_system = e.source_system_a AND ma.source_record_id = e.source_record_id_a \
         JOIN m mb ON mb.source_system = e.source_system_b AND mb.source_record_id = e.source_record_id_b \
         WHERE ma.customer_id <> mb.customer_id ORDER BY e.rule",
        a = sql_string(c1),
        b = sql_string(c2)
    );
    let refused = rows(ctx, &sql).await?;
    if refused.is_empty() {
        let _ = writeln!(out, "no candidate edge joins their customers.");
    } else {
        let _ = writeln!(out, "edges between their customers that were refused:");
        for r in refused {
            let _ = writeln!(out, "  {}:{} ~ {}:{}  by {}: {}  {}", r[0], r[1], r[2], r[3], r[4], r[5], r[6]);
        }
    }
    Ok(())
}

/// Whether a record meets a rule's `where` condition.
async fn meets(ctx: &SessionContext, filter: &Option<String>, rec: &RecordRef) -> Result<bool, Error> {
    let Some(f) = filter else { return Ok(true) };
    let r = rows(
        ctx,
        &format!(
            "SELECT COALESCE(({f}), false) FROM {IDENTITY_RECORDS} WHERE source_system = {} AND source_record_id = {}",
            sql_string(&rec.system),
            sql_string(&rec.id)
        ),
    )
    .await?;
    Ok(r.first().is_some_and(|r| r[0] == "true"))
}

/// The fitted models the published run decided with (`_model.json`), if any.
async fn published_models(store: &dyn object_store::ObjectStore, output: &Location) -> Vec<RuleModel> {
    use object_store::ObjectStoreExt;
    let path = output.child(crate::publish::MODEL_FILE).prefix;
    let Ok(found) = store.get(&path).await else { return Vec::new() };
    let Ok(bytes) = found.bytes().await else { return Vec::new() };
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// What a rule is checked with in an explanation: the published models, the first names
/// learned from the data, and where to count the term frequencies.
struct Weighing<'a> {
    models: &'a [RuleModel],
    learned: &'a crate::resolve::names::LearnedNames,
    rule_no: u16,
    scratch: &'a std::path::Path,
}

/// What one rule makes of the pair, in words.
async fn compare_pair(
    ctx: &SessionContext,
    rule: &RuleSpec,
    a: &RecordRef,
    b: &RecordRef,
    weighing: &Weighing<'_>,
) -> Result<String, Error> {
    let pair_in = |table: &str| {
        format!(
            "FROM {table} l, {table} r WHERE l.source_system = {} AND l.source_record_id = {} \
             AND r.source_system = {} AND r.source_record_id = {}",
            sql_string(&a.system),
            sql_string(&a.id),
            sql_string(&b.system),
            sql_string(&b.id)
        )
    };
    let pair = pair_in(IDENTITY_RECORDS);
    let conflicts = |attrs: &[String]| -> String {
        if attrs.is_empty() {
            "'none'".into()
        } else {
            let cases: Vec<String> = attrs
                .iter()
                .map(|x| format!("CASE WHEN NOT ({}) THEN '{x}' END", rules::no_conflict(x, weighing.learned)))
                .collect();
            format!("COALESCE(NULLIF(concat_ws(', ', {}), ''), 'none')", cases.join(", "))
        }
    };
    match rule {
        RuleSpec::Deterministic(d) => {
            let values: Vec<String> = d.on.iter().map(|c| format!("concat('{c}=', COALESCE(CAST(l.{c} AS VARCHAR), '∅'), ' / ', COALESCE(CAST(r.{c} AS VARCHAR), '∅'))")).collect();
            let equal: Vec<String> = d.on.iter().map(|c| format!("COALESCE(l.{c} = r.{c}, false)")).collect();
            let sql = format!(
                "SELECT concat_ws(', ', {}), {}, {} {pair}",
                values.join(", "),
                equal.join(" AND "),
                conflicts(&d.unless_conflict),
            );
            let r = rows(ctx, &sql).await?;
            let Some(r) = r.first() else { return Ok("records not staged".into()) };
            if r[1] != "true" {
                return Ok(format!("no value in common ({})", r[0]));
            }
            if !(meets(ctx, &d.filter, a).await? && meets(ctx, &d.filter, b).await?) {
                return Ok(format!("equal ({}), but a record does not meet the rule's `where`", r[0]));
            }
            if r[2] != "none" {
                return Ok(format!("equal ({}), but they conflict on {}", r[0], r[2]));
            }
            let queries = rules::deterministic(d, weighing.learned);
            let dir = weighing.scratch.join(format!("prepared_{}", weighing.rule_no));
            queries.prepare(ctx, &dir, 1).await.map_err(crate::resolve::ResolveError::from)?;
            let dropped = rows(
                ctx,
                &format!(
                    "SELECT count(*) FROM ({}) WHERE value = (SELECT concat({}) {pair})",
                    queries.dropped,
                    d.on.iter().map(|c| format!("CAST(l.{c} AS VARCHAR)")).collect::<Vec<_>>().join(", ' | ', ")
                ),
            )
            .await?;
            if dropped.first().is_some_and(|r| r[0] != "0") {
                return Ok(format!(
                    "equal ({}), but the value is shared by too many records or people (guardrail)",
                    r[0]
                ));
            }
            Ok(format!("equal ({}): a candidate edge; see its decision in match_edges", r[0]))
        }
        RuleSpec::Fuzzy(f) => {
            let keys = shared_block(&f.blocking);
            let cases: Vec<(String, String)> = f.comparisons.iter().map(rules::comparison_cases).collect();
            let score = cases.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(" + ");
            let detail = cases.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT ({}), CAST({score} AS DOUBLE), concat_ws(' ', {detail}), {} {pair}",
                keys.join(") OR ("),
                conflicts(&f.unless_conflict),
            );
            let r = rows(ctx, &sql).await?;
            let Some(r) = r.first() else { return Ok("records not staged".into()) };
            let blocks = f.blocking.iter().map(|k| k.join("+")).collect::<Vec<_>>().join(", ");
            if r[0] != "true" {
                return Ok(format!("no candidate pair: they share no blocking key ({blocks})"));
            }
            if !(meets(ctx, &f.filter, a).await? && meets(ctx, &f.filter, b).await?) {
                return Ok("a record does not meet the rule's `where`".into());
            }
            if r[3] != "none" {
                return Ok(format!("candidate pair, but they conflict on {}", r[3]));
            }
            let score: f64 = r[1].parse().unwrap_or(f64::NAN);
            if score < f.threshold {
                return Ok(format!("score {score} below threshold {}: {}", f.threshold, r[2]));
            }
            Ok(format!(
                "score {score} reaches threshold {} ({}); unless its block exceeds {} records, see match_edges",
                f.threshold, r[2], f.max_block_size
            ))
        }
        RuleSpec::ExternalId(_) => Ok("external ids: compare the ext_* columns of the two records".into()),
        RuleSpec::Probabilistic(p) => {
            let r = rows(ctx, &format!("SELECT ({}) {pair}", shared_block(&p.blocking).join(") OR ("))).await?;
            let Some(r) = r.first() else { return Ok("records not staged".into()) };
            if r[0] != "true" {
                let blocks = p.blocking.iter().map(|k| k.join("+")).collect::<Vec<_>>().join(", ");
                return Ok(format!("no candidate pair: they share no blocking key ({blocks})"));
            }
            if !(meets(ctx, &p.filter, a).await? && meets(ctx, &p.filter, b).await?) {
                return Ok("a record does not meet the rule's `where`".into());
            }
            if p.link_only && a.system == b.system {
                return Ok(
                    "both records are from one source, and the rule only links across sources (`link_only`)".into()
                );
            }
            let Some(model) = weighing.models.iter().find(|m| m.rule == p.name) else {
                return Ok("a candidate pair; the published output has no model of this rule to weigh it".into());
            };
            let mut model = model.clone();
            let from =
                crate::resolve::term_frequencies(ctx, p, &mut model, weighing.rule_no, weighing.scratch, None).await?;
            let pairs = pair_in(&from);
            let flags =
                format!("SELECT {}, {} {pairs}", shared_block(&p.blocking).join(", "), conflicts(&p.unless_conflict));
            let flags = rows(ctx, &flags).await?;
            let Some(flags) = flags.first() else { return Ok("records not staged".into()) };
            // The best score over the blocking rules that find the pair, as the run keeps.
            let mut best: Option<(f64, String)> = None;
            for (_, score) in
                rules::probabilistic_scores(p, &model).iter().enumerate().filter(|(i, _)| flags[*i] == "true")
            {
                if let Some(r) = rows(ctx, &score.query(&pairs, "true")).await?.first() {
                    let weight = r[2].parse::<f64>().unwrap_or(f64::NEG_INFINITY);
                    if best.as_ref().is_none_or(|(w, _)| weight > *w) {
                        best = Some((weight, r[3].clone()));
                    }
                }
            }
            let Some((weight, detail)) = best else { return Ok("no candidate pair".into()) };
            let probability = 1.0 / (1.0 + (-weight).exp2());
            let verdict = if probability >= p.threshold { "reaches" } else { "is below" };
            let conflict = &flags[p.blocking.len()];
            let mut line = format!(
                "match weight {weight:+.2}, probability {probability:.4} {verdict} the threshold {}\n      {}",
                p.threshold,
                detail.replace(' ', "\n      ")
            );
            if conflict != "none" {
                // As the run decides: a conflict the model can weigh costs its weight
                // again; one it cannot is a veto.
                match model.conflict_cost(conflict) {
                    Some(cost) => {
                        let left = weight + cost;
                        let verdict = if left >= crate::resolve::probabilistic::match_weight(p.threshold) {
                            "reaches"
                        } else {
                            "is below"
                        };
                        line.push_str(&format!(
                            "\n      they conflict on {conflict}, which costs {cost:+.2} again: {left:+.2} {verdict} the threshold"
                        ));
                    }
                    None => line.push_str(&format!(
                        "\n      but they conflict on {conflict} (a veto: the model cannot weigh it)"
                    )),
                }
            }
            Ok(line)
        }
    }
}

/// Per blocking rule, SQL that is true when the pair `l`, `r` shares its key.
fn shared_block(blocking: &[Vec<String>]) -> Vec<String> {
    blocking
        .iter()
        .map(|key| key.iter().map(|c| format!("COALESCE(l.{c} = r.{c}, false)")).collect::<Vec<_>>().join(" AND "))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RecordRef {
        s.parse().unwrap()
    }

    #[test]
    fn record_refs() {
        assert_eq!(r("crm:C0001"), RecordRef { system: "crm".into(), id: "C0001".into() });
        assert_eq!(r("pos:26:00").id, "26:00");
        assert!("C0001".parse::<RecordRef>().is_err());
    }

    #[test]
    fn path_through_the_merge_tree() {
        let e =
            |a: &str, b: &str| Edge { a: r(a), b: r(b), rule: "x".into(), score: "1".into(), detail: String::new() };
        let edges = vec![e("crm:1", "web:2"), e("web:2", "pos:3"), e("crm:1", "mail:4")];
        let path = shortest_path(&edges, &r("mail:4"), &r("pos:3"));
        let hops: Vec<String> = path.iter().map(|e| format!("{}~{}", e.a, e.b)).collect();
        assert_eq!(hops, ["crm:1~mail:4", "crm:1~web:2", "web:2~pos:3"]);
    }
}
