//! Which cached tokens a new prompt can keep (pure; the engines apply the plan to their KV caches).
//!
//! Beyond the common prefix, a run of at least [`MIN_SHIFTED_RUN`] tokens that the new prompt
//! repeats from further on in the cache is kept too, moved to its new position (llama-server's
//! `--cache-reuse`): when a context chunk is evicted from the front of the prompt, or the prefix
//! window slides past its first lines, what follows is shifted instead of computed again. Only
//! moves towards the start are planned (text was deleted): the kept cells stay contiguous from
//! position 0, which llama.cpp requires of a sequence. A shifted run's keys and values were
//! computed with the deleted text before them, so they are approximate (measured in
//! `tests/generate_e2e.rs` and the README).

/// Shorter runs are computed again: a short match is likely a coincidence, and every shift costs
/// a pass over the cache.
pub const MIN_SHIFTED_RUN: usize = 32;

/// Cached positions `from..from + len` hold what the prompt needs at `to..to + len` (`to <= from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub from: usize,
    pub to: usize,
    pub len: usize,
}

impl Run {
    pub fn shift(&self) -> isize {
        self.to as isize - self.from as isize
    }
}

/// The runs to keep, in order, contiguous from position 0 in the new prompt: the common prefix
/// (`from == to`), then shifted runs when `shift` is allowed. The prompt's last token is never kept
/// (its logits are needed). Everything from the end of the last run on is computed.
pub fn plan<T: PartialEq>(cached: &[T], prompt: &[T], shift: bool, min_run: usize) -> Vec<Run> {
    let limit = prompt.len().saturating_sub(1);
    let common = cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(limit);
    let mut runs = Vec::new();
    if common > 0 {
        runs.push(Run { from: 0, to: 0, len: common });
    }
    if !shift {
        return runs;
    }
    let (mut head_c, mut head_p) = (common, common);
    while head_c < cached.len() && head_p < limit {
        let n = cached[head_c..].iter().zip(&prompt[head_p..limit]).take_while(|(a, b)| a == b).count();
        if n >= min_run.max(1) {
            runs.push(Run { from: head_c, to: head_p, len: n });
            head_c += n;
            head_p += n;
        } else {
            head_c += 1;
        }
    }
    runs
}

/// Prompt tokens the plan keeps.
pub fn kept(runs: &[Run]) -> usize {
    runs.iter().map(|r| r.len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn a_common_prefix_is_kept_in_place() {
        let runs = plan(&toks("abcdef"), &toks("abcxyz"), true, 2);
        assert_eq!(runs, vec![Run { from: 0, to: 0, len: 3 }]);
    }

    #[test]
    fn the_last_prompt_token_is_always_computed() {
        let runs = plan(&toks("abcdef"), &toks("abc"), true, 2);
        assert_eq!(runs, vec![Run { from: 0, to: 0, len: 2 }]);
        assert!(plan(&toks("a"), &toks("a"), true, 1).is_empty());
    }

    #[test]
    fn text_deleted_in_the_middle_shifts_what_follows() {
        // "[one]" evicted from between the header and the rest.
        let cached = toks("HEAD[one][two][three]local");
        let prompt = toks("HEAD[two][three]localX");
        let runs = plan(&cached, &prompt, true, 4);
        // "HEAD[" is common; "two][three]local" is found 5 tokens further on in the cache.
        assert_eq!(runs, vec![Run { from: 0, to: 0, len: 5 }, Run { from: 10, to: 5, len: 16 }]);
        assert_eq!(runs[1].shift(), -5);
        assert_eq!(kept(&runs), 21, "only the new last token is computed");
        for r in &runs {
            assert_eq!(cached[r.from..r.from + r.len], prompt[r.to..r.to + r.len]);
        }
    }

    #[test]
    fn short_matches_and_disabled_shifting_keep_only_the_prefix() {
        let cached = toks("HEAD[one]ab[two]");
        let prompt = toks("HEADab!");
        assert_eq!(plan(&cached, &prompt, true, 3), vec![Run { from: 0, to: 0, len: 4 }]);
        let prompt = toks("HEAD[two]!");
        assert_eq!(plan(&cached, &prompt, false, 3), vec![Run { from: 0, to: 0, len: 5 }]);
        assert_eq!(plan(&cached, &prompt, true, 3).len(), 2);
    }

    #[test]
    fn inserted_text_ends_reuse() {
        let cached = toks("HEADlocal-text");
        let prompt = toks("HEAD[new]local-text!");
        assert_eq!(plan(&cached, &prompt, true, 3), vec![Run { from: 0, to: 0, len: 4 }]);
    }

    #[test]
    fn an_empty_cache_or_prompt_keeps_nothing() {
        assert!(plan::<char>(&[], &toks("abc"), true, 1).is_empty());
        assert!(plan(&toks("abc"), &[], true, 1).is_empty());
    }
}
