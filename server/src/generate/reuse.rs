//! Which cached tokens a new prompt can keep (pure; the engines apply the plan to their KV caches).
//!
//! Beyond the common prefix, a run of at least [`MIN_SHIFTED_RUN`] tokens that the new prompt
//! repeats from elsewhere in the cache is kept too, moved to its new position (llama-server's
//! `--cache-reuse`, and further): when a context chunk is evicted from the front of the prompt, or
//! the prefix window slides past its first lines, what follows moves towards the start; when the
//! user types before the suffix (the prefix-suffix-middle layout puts it after the typed text), the
//! suffix moves towards the end, and only the typed tokens are computed. A moved run's keys and
//! values were computed with other text before them, so they are approximate: text deleted before a
//! run is still "seen" by it, text inserted before it is not. Insertions are bounded
//! ([`MAX_INSERTED`] tokens since the run was last computed): past that the run is computed again.
//! Measured in `tests/generate_e2e.rs` and the README.

/// Shorter runs are computed again: a short match is likely a coincidence, and every shift costs
/// a pass over the cache.
pub const MIN_SHIFTED_RUN: usize = 32;

/// A run that reaches the prompt's end (all of it but the last token) is kept from this length on:
/// the first prompt at a new place has a short suffix (at most 9.4 % of 512 tokens), which would
/// otherwise be computed again on every keystroke there.
pub const MIN_TAIL_RUN: usize = 16;

/// Tokens that may be inserted before a kept run, in all, before it is computed again (a run moved
/// past inserted text has not seen it). About a line of typing.
pub const MAX_INSERTED: usize = 24;

/// After an insertion, the first tokens of the run that follows are computed again: they sit next
/// to the new text, and the model reads from them where the text before them ends. The suffix's
/// marker kept as it was computed (before `sum += ` was typed) made the model write `sum += ` again;
/// computing 4 or more agreed with the cold prompt. On 40 tokio tasks with 64 characters typed
/// before the suffix: edit similarity −0.1 [−0.8, +0.4] points against cold prompts with 8 (README).
pub const FRESH_AFTER_INSERT: usize = 8;

/// Cached positions `from..from + len` hold what the prompt needs at `to..to + len`; `unseen`
/// tokens were inserted before them by this plan (text their entries were computed without).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub from: usize,
    pub to: usize,
    pub len: usize,
    pub unseen: usize,
}

impl Run {
    pub fn shift(&self) -> isize {
        self.to as isize - self.from as isize
    }
}

/// The runs to keep, in prompt order: the common prefix (`from == to`), then, when `shift` is
/// allowed, runs found further on in the cache (text deleted before them) or further on in the
/// prompt (text inserted before them). `unseen[i]` (missing = 0) counts the tokens inserted before
/// cached token `i` since it was computed; a token is kept only while that count, with this plan's
/// insertions before it, stays within `max_inserted`. Between runs and after the last, the prompt's
/// tokens are computed. The prompt's last token is never kept (its logits are needed). The nearest
/// run is taken: the fewest inserted tokens first, then the fewest deleted.
pub fn plan<T: PartialEq>(cached: &[T], unseen: &[usize], prompt: &[T], shift: bool, min_run: usize, max_inserted: usize) -> Vec<Run> {
    let limit = prompt.len().saturating_sub(1);
    let common = cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(limit);
    let mut runs = Vec::new();
    if common > 0 {
        runs.push(Run { from: 0, to: 0, len: common, unseen: 0 });
    }
    if !shift {
        return runs;
    }
    let min_run = min_run.max(1);
    let unseen_at = |i: usize| unseen.get(i).copied().unwrap_or(0);
    // The nearest run from cached position `head_c` and prompt position `head_p` on.
    let nearest = |head_c: usize, head_p: usize, inserted: usize| {
        let last_p = (head_p + max_inserted.saturating_sub(inserted)).min(limit - 1);
        (head_p..=last_p).find_map(|p| {
            let before = inserted + (p - head_p);
            (head_c..cached.len()).find_map(|c| {
                let n = cached[c..]
                    .iter()
                    .zip(&prompt[p..limit])
                    .enumerate()
                    .take_while(|(i, (a, b))| a == b && unseen_at(c + i) + before <= max_inserted)
                    .count();
                // After an insertion, the run's first tokens are computed again.
                let fresh = if p > head_p { FRESH_AFTER_INSERT.min(n) } else { 0 };
                // A run that is the whole rest of the prompt (the suffix after typed text) may be
                // shorter: it is no coincidence, and without it that rest is computed anyway.
                let enough = n - fresh >= min_run || (p + n == limit && n - fresh >= min_run.min(MIN_TAIL_RUN));
                enough.then_some(Run { from: c + fresh, to: p + fresh, len: n - fresh, unseen: before })
            })
        })
    };
    let (mut head_c, mut head_p, mut inserted) = (common, common, 0);
    while head_c < cached.len() && head_p < limit {
        let Some(run) = nearest(head_c, head_p, inserted) else { break };
        head_c = run.from + run.len;
        head_p = run.to + run.len;
        inserted = run.unseen;
        runs.push(run);
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

    fn assert_runs_match(cached: &[char], prompt: &[char], runs: &[Run]) {
        let mut end = 0;
        for r in runs {
            assert_eq!(cached[r.from..r.from + r.len], prompt[r.to..r.to + r.len], "{r:?}");
            assert!(r.to >= end, "runs overlap or go backwards: {runs:?}");
            end = r.to + r.len;
        }
        assert!(end < prompt.len(), "the last prompt token is kept: {runs:?}");
    }

    #[test]
    fn a_common_prefix_is_kept_in_place() {
        let runs = plan(&toks("abcdef"), &[], &toks("abcxyz"), true, 2, 4);
        assert_eq!(runs, vec![Run { from: 0, to: 0, len: 3, unseen: 0 }]);
    }

    #[test]
    fn the_last_prompt_token_is_always_computed() {
        let runs = plan(&toks("abcdef"), &[], &toks("abc"), true, 2, 4);
        assert_eq!(runs, vec![Run { from: 0, to: 0, len: 2, unseen: 0 }]);
        assert!(plan(&toks("a"), &[], &toks("a"), true, 1, 4).is_empty());
    }

    #[test]
    fn text_deleted_in_the_middle_shifts_what_follows() {
        // "[one]" evicted from between the header and the rest.
        let cached = toks("HEAD[one][two][three]local");
        let prompt = toks("HEAD[two][three]localX");
        let runs = plan(&cached, &[], &prompt, true, 4, 0);
        // "HEAD[" is common; "two][three]local" is found 5 tokens further on in the cache.
        assert_eq!(runs, vec![Run { from: 0, to: 0, len: 5, unseen: 0 }, Run { from: 10, to: 5, len: 16, unseen: 0 }]);
        assert_eq!(runs[1].shift(), -5);
        assert_eq!(kept(&runs), 21, "only the new last token is computed");
        assert_eq!(runs.last().unwrap().unseen, 0);
        assert_runs_match(&cached, &prompt, &runs);
    }

    #[test]
    fn text_typed_before_the_suffix_moves_the_suffix_and_only_the_typed_text_is_computed() {
        // The prefix-suffix-middle layout: typing "le" at the cursor inserts before the suffix.
        let suffix = "<S>\n}\n\nfn other() -> u32 {\n    42\n}\n";
        let cached = toks(&format!("<P>fn main() {{\n    {suffix}<M>generated"));
        let prompt = toks(&format!("<P>fn main() {{\n    le{suffix}<M>"));
        let runs = plan(&cached, &[], &prompt, true, 8, 4);
        let common = "<P>fn main() {\n    ".len();
        let fresh = FRESH_AFTER_INSERT;
        assert_eq!(runs[0], Run { from: 0, to: 0, len: common, unseen: 0 });
        // The suffix (and the "<M" before the last token) moves by two, but its first tokens are
        // computed again next to the typed ones.
        assert_eq!(runs[1], Run { from: common + fresh, to: common + 2 + fresh, len: suffix.len() + 2 - fresh, unseen: 2 });
        assert_eq!(runs[1].shift(), 2);
        assert_eq!(runs.last().unwrap().unseen, 2, "the typed tokens");
        assert_eq!(prompt.len() - kept(&runs), 2 + fresh + 1, "the typed tokens, the suffix's first ones and the last");
        assert_runs_match(&cached, &prompt, &runs);
    }

    #[test]
    fn insertions_are_bounded_in_all() {
        let cached = toks("HEAD|suffix-text-here!");
        let prompt = toks("HEADtyped|suffix-text-here!");
        assert_eq!(plan(&cached, &[], &prompt, true, 6, 5).len(), 2, "five typed tokens fit in five");
        assert_eq!(plan(&cached, &[], &prompt, true, 6, 4), vec![Run { from: 0, to: 0, len: 4, unseen: 0 }], "not in four");
        assert_eq!(plan(&cached, &[], &prompt, true, 6, 0), vec![Run { from: 0, to: 0, len: 4, unseen: 0 }]);
        // Two insertions count together.
        let cached = toks("HEAD|first-run-of-text|second-run-of-text!");
        let prompt = toks("HEADab|first-run-of-text|cdsecond-run-of-text!");
        let runs = plan(&cached, &[], &prompt, true, 6, 4);
        assert_eq!(runs.len(), 3, "{runs:?}");
        assert_eq!(runs.last().unwrap().unseen, 4);
        assert_runs_match(&cached, &prompt, &runs);
        assert_eq!(plan(&cached, &[], &prompt, true, 6, 3).len(), 2, "the second insertion is over the bound");
    }

    #[test]
    fn a_cached_token_is_kept_only_while_what_it_has_not_seen_stays_within_the_bound() {
        let cached = toks("HEAD|suffix-text-here!");
        let prompt = toks("HEADab|suffix-text-here!");
        // Every suffix token has not seen 20 inserted tokens: two more fit in 24, not in 21.
        let unseen = vec![20; cached.len()];
        let runs = plan(&cached, &unseen, &prompt, true, 6, 24);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[1].unseen, 2);
        assert_eq!(plan(&cached, &unseen, &prompt, true, 6, 21).len(), 1);
        // Only the end of the suffix is too stale: the run stops there.
        let mut unseen = vec![0; cached.len()];
        unseen[18..].fill(23);
        let runs = plan(&cached, &unseen, &prompt, true, 6, 24);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[1].from + runs[1].len, 18, "{runs:?}");
    }

    #[test]
    fn a_slid_window_and_typed_text_together() {
        // The prefix lost its first line (deleted) and gained typed text (inserted) at once.
        let cached = toks("CTX|line-one\nline-two-is-long\ncursor<S>suffix-is-long-too<M>");
        let prompt = toks("CTX|line-two-is-long\ncursorXY<S>suffix-is-long-too<M>");
        let runs = plan(&cached, &[], &prompt, true, 8, 4);
        assert_eq!(runs.len(), 3, "{runs:?}");
        assert!(runs[1].shift() < 0 && runs[2].shift() > runs[1].shift());
        assert_eq!(runs.last().unwrap().unseen, 2);
        assert_runs_match(&cached, &prompt, &runs);
    }

    #[test]
    fn short_matches_and_disabled_shifting_keep_only_the_prefix() {
        let cached = toks("HEAD[one]ab[two]");
        let prompt = toks("HEADab!");
        assert_eq!(plan(&cached, &[], &prompt, true, 3, 4), vec![Run { from: 0, to: 0, len: 4, unseen: 0 }]);
        let prompt = toks("HEAD[two]!");
        assert_eq!(plan(&cached, &[], &prompt, false, 3, 4), vec![Run { from: 0, to: 0, len: 5, unseen: 0 }]);
        assert_eq!(plan(&cached, &[], &prompt, true, 3, 0).len(), 2);
    }

    #[test]
    fn tokens_replaced_at_the_start_keep_what_follows_where_it_was() {
        // No common prefix, and what follows the replaced token is at the same place: a run that
        // does not move, but is not the common prefix (the engine must move it like any other).
        let cached = toks("X|the-rest-of-the-cached-prompt");
        let prompt = toks("Y|the-rest-of-the-cached-prompt!");
        let runs = plan(&cached, &[], &prompt, true, 8, 4);
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(runs[0].from == runs[0].to && runs[0].from > 0, "{runs:?}");
        assert_runs_match(&cached, &prompt, &runs);
    }

    #[test]
    fn a_short_run_is_kept_only_when_it_is_the_rest_of_the_prompt() {
        // Eleven tokens after the eight computed again: under the tail minimum.
        let cached = toks("HEAD|0123456789abcdefgh!");
        let prompt = toks("HEADxy|0123456789abcdefgh!");
        let runs = plan(&cached, &[], &prompt, true, 32, 4);
        assert_eq!(runs.len(), 1, "under MIN_TAIL_RUN: {runs:?}");
        let cached = toks("HEAD|0123456789abcdefghijklmnopq!");
        let prompt = toks("HEADxy|0123456789abcdefghijklmnopq!");
        let runs = plan(&cached, &[], &prompt, true, 32, 4);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[1].len, "|0123456789abcdefghijklmnopq".len() - FRESH_AFTER_INSERT);
        assert!(runs[1].len >= MIN_TAIL_RUN && runs[1].len < 32);
        // The same run followed by more prompt is not the end: not kept.
        let prompt = toks("HEADxy|0123456789abcdefghijklmnopqRS!");
        assert_eq!(plan(&cached, &[], &prompt, true, 32, 4).len(), 1);
    }

    #[test]
    fn an_empty_cache_or_prompt_keeps_nothing() {
        assert!(plan::<char>(&[], &[], &toks("abc"), true, 1, 4).is_empty());
        assert!(plan(&toks("abc"), &[], &[], true, 1, 4).is_empty());
    }
}
