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

/// Answers by one text, for a function whose arguments repeat (names: a few thousand
/// distinct over millions of records). At most `LIMIT` are kept; then all are forgotten.
pub(crate) struct TextMemo<V> {
    answers: foldhash::HashMap<String, V>,
}

impl<V> Default for TextMemo<V> {
    fn default() -> Self {
        TextMemo { answers: Default::default() }
    }
}

impl<V> TextMemo<V> {
    const LIMIT: usize = 1 << 16;

    /// `read` of the answer for `text`, from `answer` the first time: a text seen before
    /// costs one lookup and no allocation.
    pub(crate) fn read<R>(&mut self, text: &str, answer: impl FnOnce(&str) -> V, read: impl FnOnce(&V) -> R) -> R {
        if let Some(found) = self.answers.get(text) {
            return read(found);
        }
        if self.answers.len() >= Self::LIMIT {
            self.answers.clear();
        }
        read(self.answers.entry(text.to_string()).or_insert_with(|| answer(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text seen before is answered from memory; past the limit all is forgotten and
    /// answered afresh, with the same answers.
    #[test]
    fn text_memo_answers_once_per_text_until_full() {
        let mut memo = TextMemo::default();
        let mut calls = 0;
        let mut len = |memo: &mut TextMemo<usize>, text: &str| {
            memo.read(
                text,
                |t| {
                    calls += 1;
                    t.len()
                },
                |n| *n,
            )
        };
        assert_eq!((len(&mut memo, "jan"), len(&mut memo, "jan"), len(&mut memo, "piet")), (3, 3, 4));
        for i in 0..TextMemo::<usize>::LIMIT {
            len(&mut memo, &i.to_string());
        }
        assert_eq!(len(&mut memo, "jan"), 3);
        assert!(memo.answers.len() < 10);
        assert_eq!(calls, 2 + TextMemo::<usize>::LIMIT + 1);
    }
}
