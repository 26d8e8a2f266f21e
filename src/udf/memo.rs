//! Answers a thread remembers for pairs of texts, for functions that staging and the rules
//! call for every row over far fewer distinct values.

/// Answers by the first text, then the second: looking one up allocates nothing. At most
/// `LIMIT` are kept; then all are forgotten, so that memory stays small.
pub(crate) struct PairMemo<V> {
    answers: foldhash::HashMap<String, foldhash::HashMap<String, V>>,
    count: usize,
}

impl<V> Default for PairMemo<V> {
    fn default() -> Self {
        PairMemo { answers: Default::default(), count: 0 }
    }
}

impl<V: Clone> PairMemo<V> {
    const LIMIT: usize = 1 << 16;

    /// The answer for (`a`, `b`), from `answer` the first time.
    pub(crate) fn get_or(
        memo: &'static std::thread::LocalKey<std::cell::RefCell<Self>>,
        a: &str,
        b: &str,
        answer: impl FnOnce() -> V,
    ) -> V {
        if let Some(found) = memo.with_borrow(|m| m.answers.get(a).and_then(|m| m.get(b)).cloned()) {
            return found;
        }
        let found = answer();
        memo.with_borrow_mut(|m| {
            if m.count >= Self::LIMIT {
                m.answers.clear();
                m.count = 0;
            }
            m.count += 1;
            m.answers.entry(a.to_string()).or_default().insert(b.to_string(), found.clone());
        });
        found
    }
}
