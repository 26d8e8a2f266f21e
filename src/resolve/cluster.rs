//! Clustering: union-find over the edges, strongest rule first, where every merge of two
//! clusters is checked as a whole (Senzing-style): no conflicting birth dates, no first
//! names that cannot be one person, no cluster beyond the size limit. A single false edge
//! can then not chain two people into one customer. An edge of a probabilistic rule
//! weighs a conflict instead (see `Weighing`): evidence that outweighs it still merges.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;

use super::names::LearnedNames;
use crate::config::ClusterCheck;
use crate::udf::{birth_dates_compatible, first_names_compatible};

/// Why a merge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    BirthDate,
    FirstName,
    ClusterSize,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BirthDate => "refused: conflicting birth dates",
            Refusal::FirstName => "refused: conflicting first names",
            Refusal::ClusterSize => "refused: cluster size limit",
        }
    }
}

/// What happened to one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Merged,
    /// Merged although the two clusters conflict: the edge's evidence outweighed it.
    Outweighed(Refusal),
    /// Both records were already in one cluster.
    Redundant,
    Refused(Refusal),
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Merged | Decision::Outweighed(_) => "merged",
            Decision::Redundant => "already joined",
            Decision::Refused(r) => r.as_str(),
        }
    }
}

/// How an edge of a probabilistic rule weighs a conflict between the clusters it would
/// join, instead of refusing on sight: each conflicting attribute costs the rule's
/// weight for disagreeing on it (its lowest level weight, learned from the data), and the
/// merge goes ahead when the edge's match weight still reaches the rule's threshold after
/// that cost. Where the conflict lies between the edge's own two records, the edge has
/// counted the disagreement once already, so it is counted twice: only evidence that
/// overwhelms it merges (a national id, name and address against a birth-date typo). An
/// attribute the rule cannot weigh (`RuleModel::conflict_cost`: not compared, or a model
/// that takes households for persons) has no weight to pay with: its conflict refuses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weighing {
    /// log2 of the threshold's odds: what an edge's match weight must reach.
    pub threshold: f64,
    /// Weight (<= 0) of disagreeing on the birth date; None when the rule cannot weigh it.
    pub birth_date: Option<f64>,
    /// Weight (<= 0) of disagreeing on the first name; None when the rule cannot weigh it.
    pub first_name: Option<f64>,
}

impl Weighing {
    fn cost(&self, refusal: Refusal) -> Option<f64> {
        match refusal {
            Refusal::BirthDate => self.birth_date,
            Refusal::FirstName => self.first_name,
            Refusal::ClusterSize => None,
        }
    }

    /// Whether an edge of match weight `weight` outweighs these conflicts.
    fn outweighs(&self, weight: f64, conflicts: &[Refusal]) -> bool {
        let mut left = weight;
        for c in conflicts {
            match self.cost(*c) {
                Some(cost) => left += cost,
                None => return false,
            }
        }
        left >= self.threshold
    }
}

/// The attributes of one cluster that merges are checked against. Kept small: a handful
/// of distinct values is enough to see a conflict.
#[derive(Debug, Clone, Default)]
struct Summary {
    size: u32,
    birth_dates: Vec<NaiveDate>,
    first_names: Vec<u32>,
}

const MAX_TRACKED: usize = 8;
const NO_NAME: u32 = u32::MAX;

/// Union-find with per-cluster summaries. Singletons are described by the flat per-record
/// vectors; only roots of merged clusters carry a `Summary`, which keeps memory near 20
/// bytes a record.
pub struct Clusters {
    parent: Vec<u32>,
    birth_date: Vec<Option<NaiveDate>>,
    first_name: Vec<u32>,
    summary: foldhash::HashMap<u32, Summary>,
    /// Rule index (1-based) of the first merge a record took part in; 0 for none.
    matched_by: Vec<u16>,
    names: Vec<String>,
    /// Per name in `names`, what the first-name check reads of it, worked out once.
    name_facts: Vec<NameFacts>,
    compatible_cache: foldhash::HashMap<(u32, u32), bool>,
    learned: Arc<LearnedNames>,
    conflicts: Vec<Refusal>,
    max_size: u32,
}

/// What the first-name check needs of a distinct first name.
#[derive(Debug, Clone, Copy)]
struct NameFacts {
    /// An initial (`J.`), or no name left after normalising: no evidence of its own.
    initial_only: bool,
    /// The letter it starts with.
    initial: Option<char>,
    /// The letter its root starts with (`C` for Kees, whose root is Cornelis).
    root_initial: Option<char>,
}

impl NameFacts {
    fn of(name: &str) -> Self {
        let root = crate::udf::first_name_root(name);
        NameFacts {
            initial_only: root.as_ref().is_none_or(|r| r.len() == 1),
            initial: crate::udf::name_initial(name).and_then(|s| s.chars().next()),
            root_initial: root.and_then(|r| r.chars().next()),
        }
    }
}

/// A record's attributes as clustering sees them.
pub struct RecordAttrs<'a> {
    pub first_name: Option<&'a str>,
    pub birth_date: Option<NaiveDate>,
}

impl Clusters {
    /// `learned`: first names this data writes for one person, besides the built-in ones.
    pub fn new(max_size: usize, conflicts: &[ClusterCheck], learned: Arc<LearnedNames>) -> Self {
        let conflicts = conflicts
            .iter()
            .map(|c| match c {
                ClusterCheck::BirthDate => Refusal::BirthDate,
                ClusterCheck::FirstName => Refusal::FirstName,
            })
            .collect();
        Clusters {
            parent: Vec::new(),
            birth_date: Vec::new(),
            first_name: Vec::new(),
            summary: Default::default(),
            matched_by: Vec::new(),
            names: Vec::new(),
            name_facts: Vec::new(),
            compatible_cache: Default::default(),
            learned,
            conflicts,
            max_size: max_size.min(u32::MAX as usize) as u32,
        }
    }

    /// Adds the next record (its rid is the number of records added before).
    pub fn push(&mut self, attrs: RecordAttrs<'_>, interner: &mut HashMap<String, u32>) {
        let rid = self.parent.len() as u32;
        self.parent.push(rid);
        self.matched_by.push(0);
        self.birth_date.push(attrs.birth_date);
        let name_id = match attrs.first_name.filter(|n| !n.trim().is_empty()) {
            Some(name) => {
                let next = self.names.len() as u32;
                *interner.entry(name.to_string()).or_insert_with(|| {
                    self.names.push(name.to_string());
                    self.name_facts.push(NameFacts::of(name));
                    next
                })
            }
            None => NO_NAME,
        };
        self.first_name.push(name_id);
    }

    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    fn summary_of(&self, root: u32) -> Summary {
        self.summary.get(&root).cloned().unwrap_or_else(|| Summary {
            size: 1,
            birth_dates: self.birth_date[root as usize].into_iter().collect(),
            first_names: Some(self.first_name[root as usize]).filter(|n| *n != NO_NAME).into_iter().collect(),
        })
    }

    fn names_compatible(&mut self, a: u32, b: u32) -> bool {
        let key = (a.min(b), a.max(b));
        if let Some(v) = self.compatible_cache.get(&key) {
            return *v;
        }
        let (x, y) = (&self.names[a as usize], &self.names[b as usize]);
        let v = first_names_compatible(x, y).unwrap_or(true) || self.learned.contains(x, y);
        self.compatible_cache.insert(key, v);
        v
    }

    fn is_initial(&self, name: u32) -> bool {
        self.name_facts[name as usize].initial_only
    }

    fn initial_of(&self, name: u32) -> Option<char> {
        self.name_facts[name as usize].initial
    }

    /// Letters an initial may stand for: the name's own and its root's (`K.` or `C.` for
    /// Kees, whose root is Cornelis).
    fn letters_of(&self, name: u32) -> [Option<char>; 2] {
        let facts = self.name_facts[name as usize];
        [facts.initial, facts.root_initial]
    }

    /// Whether the first names of two clusters can be one person's. Each cluster's full
    /// names are already linked by compatibility (Willem ~ Wim); the union stays one
    /// person when some full name of one side is compatible with some full name of the
    /// other (Willem ~ Willlem links the typo to the nickname). Initials carry no such
    /// evidence: they only have to match the first letter of a full name.
    fn names_can_be_one_person(&mut self, a: &[u32], b: &[u32]) -> bool {
        let (a_full, a_init): (Vec<u32>, Vec<u32>) = a.iter().partition(|n| !self.is_initial(**n));
        let (b_full, b_init): (Vec<u32>, Vec<u32>) = b.iter().partition(|n| !self.is_initial(**n));
        if !a_full.is_empty() && !b_full.is_empty() {
            let linked = a_full.iter().any(|x| b_full.iter().any(|y| self.names_compatible(*x, *y)));
            if !linked {
                return false;
            }
        }
        let full: Vec<u32> = a_full.iter().chain(&b_full).copied().collect();
        let letters: Vec<Option<char>> = full.iter().flat_map(|n| self.letters_of(*n)).collect();
        let initials: Vec<Option<char>> = a_init.iter().chain(&b_init).map(|n| self.initial_of(*n)).collect();
        if letters.is_empty() {
            initials.windows(2).all(|w| w[0] == w[1])
        } else {
            initials.iter().all(|i| letters.contains(i))
        }
    }

    /// The attributes on which two clusters cannot be one person.
    fn conflicts(&mut self, a: &Summary, b: &Summary) -> Vec<Refusal> {
        let mut found = Vec::new();
        for refusal in self.conflicts.clone() {
            let clash = match refusal {
                Refusal::BirthDate => {
                    a.birth_dates.iter().any(|x| b.birth_dates.iter().any(|y| !birth_dates_compatible(*x, *y)))
                }
                Refusal::FirstName => !self.names_can_be_one_person(&a.first_names, &b.first_names),
                Refusal::ClusterSize => false,
            };
            if clash {
                found.push(refusal);
            }
        }
        found
    }

    /// Tries to join the clusters of two records on the evidence of rule `rule` (1-based).
    /// `weighed`: the edge's match weight and how its rule weighs conflicts; without it
    /// (deterministic and hand-weighted rules) a conflict refuses.
    pub fn union(&mut self, a: u32, b: u32, rule: u16, weighed: Option<(f64, &Weighing)>) -> Decision {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return Decision::Redundant;
        }
        let (sa, sb) = (self.summary_of(ra), self.summary_of(rb));
        if sa.size + sb.size > self.max_size {
            return Decision::Refused(Refusal::ClusterSize);
        }
        let conflicts = self.conflicts(&sa, &sb);
        let decision = match conflicts.first() {
            None => Decision::Merged,
            Some(first) if weighed.is_some_and(|(w, how)| how.outweighs(w, &conflicts)) => Decision::Outweighed(*first),
            Some(first) => return Decision::Refused(*first),
        };
        // The larger cluster's root stays root; the merged summary keeps a few values.
        let (root, child, mut merged, other) = if sa.size >= sb.size { (ra, rb, sa, sb) } else { (rb, ra, sb, sa) };
        self.parent[child as usize] = root;
        merged.size += other.size;
        for d in other.birth_dates {
            if !merged.birth_dates.contains(&d) && merged.birth_dates.len() < MAX_TRACKED {
                merged.birth_dates.push(d);
            }
        }
        for n in other.first_names {
            if !merged.first_names.contains(&n) && merged.first_names.len() < MAX_TRACKED {
                merged.first_names.push(n);
            }
        }
        self.summary.remove(&child);
        self.summary.insert(root, merged);
        for r in [a, b] {
            if self.matched_by[r as usize] == 0 {
                self.matched_by[r as usize] = rule;
            }
        }
        decision
    }

    /// Rule index (1-based, 0 = none) that first joined a record.
    pub fn matched_by(&self, rid: u32) -> u16 {
        self.matched_by[rid as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters(records: &[(Option<&str>, Option<&str>)]) -> Clusters {
        let mut c = Clusters::new(4, &[ClusterCheck::BirthDate, ClusterCheck::FirstName], Default::default());
        let mut interner = HashMap::new();
        for (name, date) in records {
            c.push(RecordAttrs { first_name: *name, birth_date: date.and_then(crate::udf::parse_date) }, &mut interner);
        }
        c
    }

    #[test]
    fn chain_through_a_shared_record_is_refused() {
        // Jan and Marie share a household record without a name: it may join one of them.
        let mut c = clusters(&[(Some("Jan"), None), (None, None), (Some("Marie"), None)]);
        assert_eq!(c.union(0, 1, 1, None), Decision::Merged);
        assert_eq!(c.union(1, 2, 1, None), Decision::Refused(Refusal::FirstName));
        assert_ne!(c.find(0), c.find(2));
        assert_eq!(c.matched_by(2), 0);
        assert_eq!(c.matched_by(1), 1);
    }

    #[test]
    fn namesakes_with_other_birth_dates_stay_apart() {
        let mut c = clusters(&[(Some("Jan"), Some("1950-01-01")), (Some("Jan"), Some("1985-06-30"))]);
        assert_eq!(c.union(0, 1, 1, None), Decision::Refused(Refusal::BirthDate));
    }

    #[test]
    fn nicknames_initials_and_typo_dates_merge() {
        let mut c =
            clusters(&[(Some("Johannes"), Some("1980-03-07")), (Some("Hans"), None), (Some("J."), Some("1980-07-03"))]);
        assert_eq!(c.union(0, 1, 1, None), Decision::Merged);
        assert_eq!(c.union(1, 2, 2, None), Decision::Merged);
        assert_eq!(c.union(0, 2, 2, None), Decision::Redundant);
    }

    #[test]
    fn a_typo_joins_through_the_name_it_is_a_typo_of() {
        let mut c =
            clusters(&[(Some("Willem"), None), (Some("Wim"), None), (Some("Willlem"), None), (Some("Marie"), None)]);
        assert_eq!(c.union(0, 1, 1, None), Decision::Merged);
        assert_eq!(c.union(1, 2, 1, None), Decision::Merged);
        assert_eq!(c.union(2, 3, 1, None), Decision::Refused(Refusal::FirstName));
    }

    #[test]
    fn an_initial_stands_for_the_nickname_root_too() {
        let mut c = clusters(&[(Some("C."), None), (Some("Kees"), None)]);
        assert_eq!(c.union(0, 1, 1, None), Decision::Merged);
    }

    #[test]
    fn an_initial_does_not_bridge_two_names() {
        let mut c = clusters(&[(Some("Jan"), None), (Some("J."), None), (Some("Johanna"), None), (Some("M."), None)]);
        assert_eq!(c.union(0, 1, 1, None), Decision::Merged);
        assert_eq!(c.union(1, 2, 1, None), Decision::Refused(Refusal::FirstName));
        assert_eq!(c.union(0, 3, 1, None), Decision::Refused(Refusal::FirstName));
    }

    const WEIGHING: Weighing = Weighing { threshold: 6.6, birth_date: Some(-4.0), first_name: Some(-9.0) };

    #[test]
    fn overwhelming_evidence_outweighs_a_conflict() {
        // One person with a birth-date typo of two digits, found on an id, name and address.
        let mut c = clusters(&[(Some("Mitchell"), Some("1956-04-09")), (Some("Mitchell"), Some("1965-04-19"))]);
        assert_eq!(c.union(0, 1, 1, Some((30.0, &WEIGHING))), Decision::Outweighed(Refusal::BirthDate));
        assert_eq!(c.find(0), c.find(1));
    }

    #[test]
    fn a_conflict_costs_its_weight_again() {
        // The edge reached its threshold, but not by the conflict's weight more: refused.
        let mut c = clusters(&[(Some("Jan"), Some("1950-01-01")), (Some("Marie"), Some("1985-06-30"))]);
        assert_eq!(c.union(0, 1, 1, Some((15.0, &WEIGHING))), Decision::Refused(Refusal::BirthDate));
        // Both conflicts are paid for: 20 - 4 - 9 = 7 reaches 6.6.
        assert_eq!(c.union(0, 1, 1, Some((20.0, &WEIGHING))), Decision::Outweighed(Refusal::BirthDate));
    }

    #[test]
    fn a_conflict_the_rule_does_not_weigh_refuses() {
        let weighing = Weighing { first_name: None, ..WEIGHING };
        let mut c = clusters(&[(Some("Jan"), None), (Some("Marie"), None)]);
        assert_eq!(c.union(0, 1, 1, Some((f64::INFINITY, &weighing))), Decision::Refused(Refusal::FirstName));
    }

    #[test]
    fn size_limit() {
        let mut c = clusters(&[(None, None); 5]);
        for i in 1..4 {
            assert_eq!(c.union(0, i, 1, None), Decision::Merged);
        }
        assert_eq!(c.union(0, 4, 1, None), Decision::Refused(Refusal::ClusterSize));
    }
}
