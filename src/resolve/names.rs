//! First names this data writes for one person: two names count as one person's when
//! e-mail addresses and mobile numbers that carry exactly those two names are common
//! next to how often the rarer name occurs (Jo and Johanna, Janny and Adriana). The
//! built-in nickname list knows one region's names; these pairs come from the data, so
//! the first-name checks do not refuse a merge for a nickname the list does not know.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::prelude::SessionContext;

use crate::tables::IDENTITY_RECORDS;

/// Between the two roots of a pair in [`LearnedNames::keys`].
pub const KEY_SEPARATOR: char = '|';

/// The scratch table of which first names each identifier carries, while they are learned.
const CARRIED: &str = "carried_first_names";

/// Identifiers that must carry a pair of names together before it counts.
const MIN_IDENTIFIERS: i64 = 3;
/// Share of the rarer name's identifiers that must carry the other name too: households
/// sharing a mailbox spread over many name combinations, a nickname keeps to its name.
const MIN_SHARE: f64 = 0.2;

/// Pairs of first-name roots (the smaller first) that this data writes for one person.
#[derive(Debug, Default)]
pub struct LearnedNames {
    pairs: HashSet<(String, String)>,
}

impl LearnedNames {
    /// Whether two first names (as written) are a learned pair.
    pub fn contains(&self, a: &str, b: &str) -> bool {
        let (Some(a), Some(b)) = (crate::udf::first_name_root(a), crate::udf::first_name_root(b)) else {
            return false;
        };
        self.contains_roots(&a, &b)
    }

    fn contains_roots(&self, a: &str, b: &str) -> bool {
        let key = if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        self.pairs.contains(&key)
    }

    /// Every pair as `smaller|larger`, sorted: what the rules' SQL compares against.
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        let mut keys: Vec<String> = self.pairs.iter().map(|(a, b)| format!("{a}{KEY_SEPARATOR}{b}")).collect();
        keys.sort();
        keys.into_iter()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Learns the pairs from the staged identity records. An identifier that carries
/// exactly two names gives its pair as the smaller and the larger of them, in one
/// aggregation rather than a self-join of the identifiers.
pub async fn learn(ctx: &SessionContext, work_dir: &Path) -> Result<Arc<LearnedNames>> {
    // The names each identifier carries are counted twice below (per identifier and per
    // name): made once, rather than grouped again for each.
    let carried = format!(
        "WITH ids AS ( \
           SELECT email AS v, first_name_root AS root FROM {IDENTITY_RECORDS} \
             WHERE email IS NOT NULL AND length(first_name_root) > 1 \
           UNION ALL \
           SELECT phone, first_name_root FROM {IDENTITY_RECORDS} \
             WHERE phone IS NOT NULL AND (phone_kind IS DISTINCT FROM 'fixed_line') AND length(first_name_root) > 1) \
         SELECT v, root FROM ids GROUP BY v, root"
    );
    crate::engine::materialize(ctx, CARRIED, ctx.sql(&carried).await?, work_dir).await?;
    let sql = format!(
        "WITH names AS (SELECT min(root) AS a, max(root) AS b, count(*) AS n FROM {CARRIED} GROUP BY v), \
         together AS (SELECT a, b, count(*) AS n FROM names WHERE n = 2 GROUP BY a, b), \
         alone AS (SELECT root, count(*) AS n FROM {CARRIED} GROUP BY root) \
         SELECT t.a, t.b FROM together t JOIN alone x ON x.root = t.a JOIN alone y ON y.root = t.b \
         WHERE t.n >= {MIN_IDENTIFIERS} AND t.n >= {MIN_SHARE} * least(x.n, y.n)"
    );
    // Planned and run in a block of its own, so that the scratch table goes whatever the outcome.
    let batches = async { ctx.sql(&sql).await?.collect().await }.await;
    ctx.deregister_table(CARRIED)?;
    let mut pairs = HashSet::new();
    for batch in batches? {
        let columns: Vec<ArrayRef> = (0..2)
            .map(|i| datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        let (a, b) = (columns[0].as_string::<i32>(), columns[1].as_string::<i32>());
        for i in 0..batch.num_rows() {
            pairs.insert((a.value(i).to_string(), b.value(i).to_string()));
        }
    }
    Ok(Arc::new(LearnedNames { pairs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three mailboxes carry Jo and Johanna together, of the four that carry Jo: a pair.
    /// One family mailbox carries Jan and Marie, of many that carry each: no pair.
    #[tokio::test]
    async fn names_that_share_identifiers_often_are_learned() {
        let ctx = SessionContext::new();
        let mut rows = Vec::new();
        for (i, names) in [["jo", "johanna"], ["jo", "johanna"], ["jo", "johanna"], ["jo", "piet"]].iter().enumerate() {
            for n in names {
                rows.push(format!("('m{i}@x.nl', '{n}', CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR))"));
            }
        }
        rows.push("('fam@x.nl', 'jan', NULL, NULL)".into());
        rows.push("('fam@x.nl', 'marie', NULL, NULL)".into());
        for i in 0..20 {
            rows.push(format!("('jan{i}@x.nl', 'jan', NULL, NULL)"));
            rows.push(format!("('marie{i}@x.nl', 'marie', NULL, NULL)"));
        }
        let sql = format!(
            "SELECT column1 AS email, column2 AS first_name_root, column3 AS phone, column4 AS phone_kind FROM (VALUES {})",
            rows.join(", ")
        );
        let df = ctx.sql(&sql).await.unwrap();
        ctx.register_table(IDENTITY_RECORDS, df.into_view()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let learned = learn(&ctx, dir.path()).await.unwrap();
        assert!(learned.contains_roots("johanna", "jo") && learned.contains_roots("jo", "johanna"));
        assert!(!learned.contains_roots("jan", "marie") && !learned.contains_roots("jo", "piet"));
        assert_eq!(learned.keys().collect::<Vec<_>>(), ["jo|johanna"]);
    }
}
