//! The context ring: code from elsewhere in the workspace that completion prompts carry, kept in a
//! stable order so that the engine's KV cache stays valid from one keystroke to the next.
//!
//! Snippets are gathered on events (a file is completed in for the first time, the cursor moved
//! far, a file was opened or saved), not per keystroke. New ones are appended; the oldest are
//! evicted when the ring is over its token budget; a snippet overlapping or nearly copying one
//! already there is dropped, and so is one that mostly repeats the code at the cursor (it pulls
//! the model into copying it). Prompts render the ring in its order, oldest first, so appending
//! costs only what follows, and an eviction from the front is a deletion the engine shifts over
//! ([`crate::generate::reuse`]).

use std::collections::HashSet;

use crate::prompt::{self, Snippet, Source};

use super::context;

/// Snippets whose identifier sets are more alike than this (Jaccard) count as repeats: of a
/// snippet already in the ring, or of the code around the cursor (llama.vim drops context chunks
/// more than half similar to the cursor's text).
pub const MAX_SIMILARITY: f64 = 0.5;
/// Snippets more alike than this to one already in the ring are near-copies of it and dropped.
/// Only near-copies: parallel code (`read_to_end`, `read_to_string`, `read_until` beside the
/// `read_exact` being written) shares most identifiers and is the example that helps most; at
/// [`MAX_SIMILARITY`] such siblings were dropped as copies of each other.
pub const MAX_RING_SIMILARITY: f64 = 0.9;
/// Lines around the cursor that make "the code at the cursor" for [`MAX_SIMILARITY`].
const LOCAL_LINES: usize = 20;

/// A snippet cut to fit keeps at least this many lines (fewer is not worth its place).
const MIN_TRIMMED_LINES: usize = 3;

/// What the ring does with the code around the cursor that [`Ring::add`] is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Leave out a snippet whose identifiers are more than [`MAX_SIMILARITY`] alike to it.
    pub drop_local_repeats: bool,
    /// Cut a snippet too long for the room left down to fit (see [`trimmed`]) instead of leaving it out.
    pub trim_to_fit: bool,
}

impl Policy {
    /// Whether [`Ring::add`] reads the code around the cursor it is given (otherwise it can be empty).
    pub fn reads_local(self) -> bool {
        self.drop_local_repeats || self.trim_to_fit
    }
}

/// The ring itself: snippets oldest first, within a budget of estimated tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ring {
    chunks: Vec<Snippet>,
    budget: usize,
    policy: Policy,
}

impl Ring {
    pub fn new(budget: usize) -> Self {
        Self::with_policy(budget, Policy::default())
    }

    pub fn with_policy(budget: usize, policy: Policy) -> Self {
        Self { chunks: Vec::new(), budget, policy }
    }

    /// The snippets in prompt order (oldest first), without those of `path` (the file being
    /// completed is in the prompt already, newer).
    pub fn snippets_for(&self, path: &str) -> Vec<Snippet> {
        self.chunks.iter().filter(|s| s.path != path).cloned().collect()
    }

    /// Sets the token budget (the room a place's prompt leaves for context), evicting the oldest
    /// snippets if the ring is over it.
    pub fn resize(&mut self, budget: usize) {
        self.budget = budget;
        self.evict();
    }

    fn evict(&mut self) {
        while self.tokens() > self.budget && !self.chunks.is_empty() {
            self.chunks.remove(0);
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Estimated tokens of the ring as a prompt renders it.
    pub fn tokens(&self) -> usize {
        self.chunks.iter().map(cost).sum()
    }

    /// Adds `candidates` (best first) gathered for the cursor in `local` (the lines around it):
    /// each that fits in the budget beside the better ones taken before it (one that does not is
    /// skipped, or cut to fit under [`Policy::trim_to_fit`], and a smaller one after it may still
    /// fit); older snippets are evicted for them. Returns whether the ring changed.
    ///
    /// Taking every candidate and evicting down to the budget instead dropped the last ones
    /// whole, the code found by search (gathered after the definitions), when one long
    /// definition did not fit: on the tokio API tasks that code held the expected line in three
    /// of the tasks lost against the pipeline before the ring (README, "Completions").
    pub fn add(&mut self, candidates: Vec<Snippet>, local: &str) -> bool {
        let local_ids = identifiers(local);
        let mut added = Vec::new();
        let mut room = self.budget;
        for snippet in candidates {
            let snippet = if cost(&snippet) <= room {
                snippet
            } else if let Some(cut) = self.policy.trim_to_fit.then(|| trimmed(&snippet, room, &local_ids)).flatten() {
                cut
            } else {
                continue;
            };
            let c = cost(&snippet);
            let ids = identifiers(&snippet.text);
            let repeats_local = self.policy.drop_local_repeats && jaccard(&ids, &local_ids) > MAX_SIMILARITY;
            let known = self.chunks.iter().chain(&added).any(|c: &Snippet| {
                (c.path == snippet.path && c.start_line <= snippet.end_line && snippet.start_line <= c.end_line)
                    || jaccard(&identifiers(&c.text), &ids) > MAX_RING_SIMILARITY
            });
            if !repeats_local && !known {
                room -= c;
                added.push(snippet);
            }
        }
        if added.is_empty() {
            return false;
        }
        // Best first among the new ones is written last, nearest the cursor.
        added.reverse();
        self.chunks.extend(added);
        self.evict();
        true
    }

    /// Drops the snippets of `path` whose lines no longer match `text` (the file was edited or
    /// saved); returns whether any was dropped. A signature (not the lines verbatim) stays while
    /// its first line is still in its range.
    pub fn refresh_file(&mut self, path: &str, text: &str) -> bool {
        let lines: Vec<&str> = text.lines().collect();
        let before = self.chunks.len();
        self.chunks.retain(|s| {
            if s.path != path {
                return true;
            }
            let (a, b) = (s.start_line as usize - 1, s.end_line as usize);
            if b > lines.len() || a >= b {
                return false;
            }
            if s.source == Source::Signature {
                let first = s.text.lines().next();
                return lines[a..b].iter().any(|l| Some(*l) == first);
            }
            lines[a..b].join("\n").trim_end() == s.text.trim_end()
        });
        self.chunks.len() != before
    }
}

/// Splits gathered snippets (best first) into those that fit `tokens` and the rest, order kept.
pub fn split_allowance(snippets: Vec<Snippet>, tokens: usize) -> (Vec<Snippet>, Vec<Snippet>) {
    let mut left = tokens;
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for s in snippets {
        let c = cost(&s);
        if c <= left {
            left -= c;
            now.push(s);
        } else {
            later.push(s);
        }
    }
    (now, later)
}

/// The lines around `offset` in `text` (the code the ring must not repeat).
pub fn local_window(text: &str, offset: usize) -> &str {
    let mut start = offset.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = start;
    for _ in 0..LOCAL_LINES {
        start = text[..start.saturating_sub(1)].rfind('\n').map_or(0, |i| i + 1);
    }
    for _ in 0..LOCAL_LINES / 2 {
        end = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
    }
    &text[start..end]
}

/// `snippet` cut down to at most `room` tokens, or `None` if fewer than [`MIN_TRIMMED_LINES`]
/// lines would fit: a definition or signature keeps its first lines (the signature and doc come
/// first), other code the window of lines sharing the most identifiers with `local` (the first
/// such window; its first lines when `local` is empty).
fn trimmed(snippet: &Snippet, room: usize, local: &HashSet<&str>) -> Option<Snippet> {
    let lines: Vec<&str> = snippet.text.lines().collect();
    let fixed = prompt::estimate_tokens(&snippet.path) + 4;
    // The text ends in a newline: a token more, at most.
    let fits = |a: usize, b: usize| fixed + prompt::estimate_tokens(&lines[a..b].join("\n")) < room;
    let head = matches!(snippet.source, Source::Definition | Source::Signature) || local.is_empty();
    let starts = if head { 0..lines.len().min(1) } else { 0..lines.len() };
    let mut best: Option<(usize, usize, usize)> = None; // (shared identifiers, start, end)
    for start in starts {
        let mut end = start;
        while end < lines.len() && fits(start, end + 1) {
            end += 1;
        }
        if end - start < MIN_TRIMMED_LINES {
            continue;
        }
        let shared = if head { 0 } else { identifiers(&lines[start..end].join("\n")).intersection(local).count() };
        if best.is_none_or(|(s, _, _)| shared > s) {
            best = Some((shared, start, end));
        }
    }
    let (_, start, end) = best?;
    let text = lines[start..end].join("\n") + "\n";
    Some(Snippet { start_line: snippet.start_line + start as u32, end_line: snippet.start_line + end as u32 - 1, text, ..snippet.clone() })
}

fn cost(s: &Snippet) -> usize {
    prompt::estimate_tokens(&s.text) + prompt::estimate_tokens(&s.path) + 4
}

fn identifiers(text: &str) -> HashSet<&str> {
    context::identifier_set(text)
}

fn jaccard(a: &HashSet<&str>, b: &HashSet<&str>) -> f64 {
    let union = a.union(b).count();
    if union == 0 { 0.0 } else { a.intersection(b).count() as f64 / union as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snippet(path: &str, start: u32, text: &str) -> Snippet {
        let end = start + text.lines().count().max(1) as u32 - 1;
        Snippet { path: path.into(), start_line: start, end_line: end, text: text.into(), source: Source::Retrieved }
    }

    fn paths(ring: &Ring) -> Vec<String> {
        ring.snippets_for("").iter().map(|s| format!("{}:{}", s.path, s.start_line)).collect()
    }

    #[test]
    fn new_snippets_are_appended_best_last_and_the_order_is_kept() {
        let mut ring = Ring::new(1_000);
        assert!(ring.add(vec![snippet("a.rs", 1, "fn alpha() {}"), snippet("b.rs", 1, "fn beta() {}")], ""));
        assert_eq!(paths(&ring), ["b.rs:1", "a.rs:1"]);
        assert!(ring.add(vec![snippet("c.rs", 1, "fn gamma() {}")], ""));
        assert_eq!(paths(&ring), ["b.rs:1", "a.rs:1", "c.rs:1"], "older snippets keep their places");
        assert!(!ring.add(vec![snippet("a.rs", 1, "fn alpha() {}")], ""), "a snippet already there changes nothing");
    }

    #[test]
    fn the_oldest_are_evicted_over_budget() {
        // Each costs about 18 estimated tokens: two fit in 40.
        let mut ring = Ring::new(40);
        ring.add(vec![snippet("a.rs", 1, "fn first_one() { let apple = pick(tree); }")], "");
        ring.add(vec![snippet("b.rs", 1, "fn second_one() { let bread = bake(flour); }")], "");
        assert_eq!(paths(&ring), ["a.rs:1", "b.rs:1"]);
        ring.add(vec![snippet("c.rs", 1, "fn third_one() { let cheese = age(milk); }")], "");
        assert!(ring.tokens() <= 40, "{}", ring.tokens());
        assert_eq!(paths(&ring), ["b.rs:1", "c.rs:1"]);
    }

    #[test]
    fn a_candidate_that_does_not_fit_beside_better_ones_is_skipped_not_the_rest() {
        // About 18 estimated tokens each, the long one about 35: the first and the third fit in 40.
        let mut ring = Ring::new(40);
        let best = snippet("a.rs", 1, "fn first_one() { let apple = pick(tree); }");
        let long = snippet("b.rs", 1, "fn second_one() { let bread = bake(flour); let jam = boil(fruit, sugar); }");
        let found = snippet("c.rs", 1, "fn third_one() { let cheese = age(milk); }");
        assert!(ring.add(vec![best, long, found], ""));
        assert_eq!(paths(&ring), ["c.rs:1", "a.rs:1"], "the best nearest the cursor, the long one left out");
        assert!(ring.tokens() <= 40, "{}", ring.tokens());
    }

    #[test]
    fn a_snippet_too_long_for_the_room_left_is_cut_to_fit_under_the_policy() {
        let body: Vec<String> = (0..30).map(|i| format!("    let step_{i} = stage_{i}(input);")).collect();
        let long = format!("fn pipeline(input: Input) -> Output {{\n{}\n    finish(step_29)\n}}", body.join("\n"));
        let local = "let cached = stage_17(input);\nlet more = stage_18(cached);";
        // Without the policy the long one does not fit and is left out.
        let mut ring = Ring::new(120);
        assert!(!ring.add(vec![snippet("p.rs", 100, &long)], local));
        // With it, the window sharing the most names with the cursor's code stays, its lines cited.
        let mut ring = Ring::with_policy(120, Policy { trim_to_fit: true, ..Policy::default() });
        assert!(ring.add(vec![snippet("p.rs", 100, &long)], local));
        let kept = &ring.snippets_for("")[0];
        assert!(ring.tokens() <= 120, "{}", ring.tokens());
        assert!(kept.text.contains("stage_17(input)") && kept.text.contains("stage_18(input)"), "{}", kept.text);
        assert!(!kept.text.contains("fn pipeline"), "{}", kept.text);
        let first = long.lines().position(|l| kept.text.starts_with(l)).unwrap() as u32;
        assert_eq!((kept.start_line, kept.end_line), (100 + first, 100 + first + kept.text.lines().count() as u32 - 1));
        // A definition keeps its head: the signature (and doc) come first.
        let mut ring = Ring::with_policy(120, Policy { trim_to_fit: true, ..Policy::default() });
        let definition = Snippet { source: Source::Definition, ..snippet("p.rs", 100, &long) };
        assert!(ring.add(vec![definition], local));
        let kept = &ring.snippets_for("")[0];
        assert!(kept.text.starts_with("fn pipeline(input: Input) -> Output {\n"), "{}", kept.text);
        assert_eq!(kept.start_line, 100);
        // Too little room for three lines: left out.
        let mut ring = Ring::with_policy(14, Policy { trim_to_fit: true, ..Policy::default() });
        assert!(!ring.add(vec![snippet("p.rs", 100, &long)], local));
    }

    #[test]
    fn near_copies_of_the_cursor_code_and_of_ring_snippets_are_dropped() {
        let local = "let total = cart.items.iter().map(|item| item.price * item.quantity).sum();";
        let copy = "let total = order.items.iter().map(|item| item.price * item.quantity).sum();";
        let useful = "pub struct Cart { pub items: Vec<Item>, pub coupon: Option<Coupon> }";
        let mut ring = Ring::new(1_000);
        ring.add(vec![snippet("other.rs", 10, copy), snippet("cart.rs", 1, useful)], local);
        assert_eq!(paths(&ring), ["cart.rs:1", "other.rs:10"], "repeats of the cursor code are kept unless the policy drops them");
        let mut ring = Ring::with_policy(1_000, Policy { drop_local_repeats: true, ..Policy::default() });
        ring.add(vec![snippet("other.rs", 10, copy), snippet("cart.rs", 1, useful)], local);
        assert_eq!(paths(&ring), ["cart.rs:1"]);
        let renamed = "pub struct Cart { pub items: Vec<Item>, pub coupon: Option<Coupon>, }";
        assert!(!ring.add(vec![snippet("cart_copy.rs", 1, renamed)], ""), "a near-duplicate of a ring snippet");
        let sibling = "pub struct Order { pub items: Vec<Item>, pub coupon: Option<Coupon> }";
        assert!(ring.add(vec![snippet("order.rs", 1, sibling)], ""), "parallel code is an example, not a copy");
    }

    #[test]
    fn the_current_file_is_left_out_and_stale_snippets_are_dropped() {
        let mut ring = Ring::new(1_000);
        ring.add(vec![snippet("a.rs", 2, "fn alpha() {}"), snippet("b.rs", 1, "fn beta() {}")], "");
        assert_eq!(ring.snippets_for("a.rs").len(), 1);
        assert!(!ring.refresh_file("a.rs", "// header\nfn alpha() {}\n"));
        assert!(ring.refresh_file("a.rs", "// header\nfn alpha_renamed() {}\n"));
        assert_eq!(paths(&ring), ["b.rs:1"]);
    }

    #[test]
    fn the_local_window_surrounds_the_cursor() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let at = text.find("line 50").unwrap();
        let window = local_window(&text, at);
        assert!(window.starts_with("line 30\n"), "{window}");
        assert!(window.ends_with("line 59\n"), "{window}");
        assert_eq!(local_window("", 0), "");
        assert_eq!(local_window("é", 1), "é");
    }
}
