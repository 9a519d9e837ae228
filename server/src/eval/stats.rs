//! The statistics of an evaluation: the per-task figures (exact match, edit similarity) and paired
//! comparisons of two runs on the same tasks, with 95 % bootstrap intervals clustered by file.
//!
//! Two configurations (with and without retrieval, with and without an adapter) are compared
//! task by task: each task's difference is what one configuration did better on that very line.
//! Tasks of one file are not independent (a model that understands a file gets many of its lines),
//! so the interval resamples whole files, not tasks. Everything here is pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// Bootstrap resamples behind an interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2_000;
/// A task counts as helped (hurt) when its edit similarity moved up (down) by more than this.
const CHANGED: f64 = 1e-9;

/// How one completion scored against the expected text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub id: String,
    /// The task's file: tasks are resampled by file.
    pub path: String,
    pub exact: bool,
    /// 0 to 1.
    pub similarity: f64,
    pub latency_ms: f64,
    /// The task's category (see [`EvalTask::kind`](crate::dataset::EvalTask::kind)); empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Identifier exact match: the completion names the same identifiers in the same order as the
    /// expected text (see [`identifiers`]), whatever its spacing and punctuation. `None` in scores
    /// saved before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifiers: Option<bool>,
    /// The log-probabilities of the completion's first generated tokens (see
    /// [`Finish::logprobs`](crate::generate::Finish::logprobs)): how sure the model was. Empty when
    /// the engine records none, nothing was generated, or in scores saved before they were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<f32>,
    /// What the model wrote (secrets redacted as it would stand in the file:
    /// [`redacted_continuation`](crate::secrets::redacted_continuation)), so that a saved run can be
    /// read task by task: where context helped or hurt, and how. Set by [`crate::eval::run`]; empty
    /// when it wrote nothing, or in scores saved before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub completion: String,
}

impl TaskScore {
    /// Scores `predicted` against `expected` on their first non-empty lines; when `expected` holds
    /// several (a block's body), on all their non-blank lines with their indentation (a Python
    /// line nested one level off is not the same code), but the first line's (the cursor sits
    /// after it).
    pub fn new(id: &str, path: &str, predicted: &str, expected: &str, latency_ms: f64) -> Self {
        let (exact, similarity, same_names) = if code_lines(expected).nth(1).is_some() {
            let (p, e) = (block_lines(predicted), block_lines(expected));
            (p == e, edit_similarity(&p, &e), identifiers(&p).eq(identifiers(&e)))
        } else {
            let (p, e) = (first_line(predicted), first_line(expected));
            (p == e, edit_similarity(p, e), identifiers(p).eq(identifiers(e)))
        };
        Self { id: id.to_owned(), path: path.to_owned(), exact, similarity, latency_ms, kind: String::new(), identifiers: Some(same_names), logprobs: Vec::new(), completion: String::new() }
    }
}

/// A mean difference with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether the whole interval is above zero.
    pub fn above_zero(&self) -> bool {
        self.low > 0.0
    }

    /// Whether the whole interval is below zero.
    pub fn below_zero(&self) -> bool {
        self.high < 0.0
    }
}

/// `b` against `a` on the tasks both ran (B − A), in points (0–100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// Tasks both runs have.
    pub tasks: usize,
    /// Files those tasks come from (the bootstrap's clusters).
    pub files: usize,
    pub edit_similarity: Interval,
    pub exact_match: Interval,
    /// Identifier exact match, when every task of both runs recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier_match: Option<Interval>,
    /// Share of tasks whose edit similarity rose (fell) from `a` to `b`, 0–1.
    pub helped: f64,
    pub hurt: f64,
}

/// Compares `b` with `a` task by task (matched by id). `None` when they share no task.
pub fn paired(a: &[TaskScore], b: &[TaskScore], seed: u64) -> Option<Paired> {
    let by_id: BTreeMap<&str, &TaskScore> = a.iter().map(|t| (t.id.as_str(), t)).collect();
    // Per file: the differences of its tasks (edit similarity, exact match, identifier match), in points.
    let mut files: BTreeMap<&str, Vec<[f64; 3]>> = BTreeMap::new();
    let (mut helped, mut hurt, mut n, mut names) = (0usize, 0usize, 0usize, true);
    let points = |yes: bool| f64::from(u8::from(yes)) * 100.0;
    for tb in b {
        let Some(ta) = by_id.get(tb.id.as_str()) else { continue };
        let ds = (tb.similarity - ta.similarity) * 100.0;
        let de = points(tb.exact) - points(ta.exact);
        let di = match (ta.identifiers, tb.identifiers) {
            (Some(x), Some(y)) => points(y) - points(x),
            _ => {
                names = false;
                0.0
            }
        };
        helped += usize::from(ds > CHANGED);
        hurt += usize::from(ds < -CHANGED);
        n += 1;
        files.entry(tb.path.as_str()).or_default().push([ds, de, di]);
    }
    if n == 0 {
        return None;
    }
    let clusters: Vec<([f64; 3], usize)> =
        files.values().map(|d| (std::array::from_fn(|k| d.iter().map(|x| x[k]).sum()), d.len())).collect();
    let [similarity, exact, identifiers] = cluster_bootstrap(&clusters, BOOTSTRAP_RESAMPLES, seed);
    Some(Paired {
        tasks: n,
        files: clusters.len(),
        edit_similarity: similarity,
        exact_match: exact,
        identifier_match: names.then_some(identifiers),
        helped: helped as f64 / n as f64,
        hurt: hurt as f64 / n as f64,
    })
}

/// Mean per task of `K` paired differences, with percentile intervals from resampling whole
/// clusters (each: the sums of its tasks' differences, its task count). The same resamples for
/// every difference.
fn cluster_bootstrap<const K: usize>(clusters: &[([f64; K], usize)], resamples: usize, seed: u64) -> [Interval; K] {
    let total = |picked: &mut dyn Iterator<Item = &([f64; K], usize)>| {
        let (mut sums, mut n) = ([0.0; K], 0usize);
        for (s, count) in picked {
            for (sum, x) in sums.iter_mut().zip(s) {
                *sum += x;
            }
            n += count;
        }
        if n == 0 { [0.0; K] } else { sums.map(|s| s / n as f64) }
    };
    let means = total(&mut clusters.iter());
    let mut rng = SplitMix64::new(seed);
    let mut resampled: [Vec<f64>; K] = std::array::from_fn(|_| Vec::with_capacity(resamples));
    for _ in 0..resamples {
        let mut pick = (0..clusters.len()).map(|_| &clusters[rng.below(clusters.len())]);
        for (values, m) in resampled.iter_mut().zip(total(&mut pick)) {
            values.push(m);
        }
    }
    std::array::from_fn(|k| Interval { mean: means[k], low: quantile(&mut resampled[k], 0.025), high: quantile(&mut resampled[k], 0.975) })
}

/// The `p` quantile of `values` by linear interpolation between order statistics; 0 when empty.
pub fn quantile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let at = p.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (at - lo as f64)
}

/// The `p` quantile (nearest rank) of `values`; 0 when empty. For latencies.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// The identifiers of `code` in order: runs of letters, digits and `_` that do not start with a
/// digit (keywords count; literals' digits, punctuation and spacing do not), so `foo(a, b)` and
/// `foo( a,b )` name the same.
pub fn identifiers(code: &str) -> impl Iterator<Item = &str> {
    word_spans(code).map(|(_, w)| w).filter(|w| !w.starts_with(|c: char| c.is_ascii_digit()))
}

/// The words of `code` (runs of letters, digits and `_`, Unicode included) with their byte offsets.
pub fn word_spans(code: &str) -> impl Iterator<Item = (usize, &str)> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at + code[at..].find(is_word)?;
        let end = code[start..].find(|c: char| !is_word(c)).map_or(code.len(), |i| start + i);
        at = end;
        Some((start, &code[start..end]))
    })
}

/// The first non-empty line, trimmed.
pub fn first_line(text: &str) -> &str {
    code_lines(text).next().unwrap_or("")
}

/// A block's non-blank lines, one string: trailing spaces left out, and the first line's indentation.
fn block_lines(text: &str) -> String {
    let mut lines = text.lines().map(str::trim_end).filter(|l| !l.is_empty());
    let first = lines.next().map(str::trim_start).unwrap_or("");
    std::iter::once(first).chain(lines).collect::<Vec<_>>().join("\n")
}

/// The non-empty lines, trimmed.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// 1 − Levenshtein distance / longer length, over characters (1 for two empty strings).
pub fn edit_similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    1.0 - row[b.len()] as f64 / longest as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(id: usize, path: &str, similarity: f64, exact: bool) -> TaskScore {
        TaskScore { id: id.to_string(), path: path.into(), exact, similarity, latency_ms: 0.0, kind: String::new(), identifiers: None, logprobs: Vec::new(), completion: String::new() }
    }

    #[test]
    fn similarity() {
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("abc", "abc"), 1.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-9);
        assert!((edit_similarity("é", "e") - 0.0).abs() < 1e-9);
    }

    #[test]
    fn a_line_is_scored_on_its_first_line_and_a_block_on_all_of_its_lines() {
        // One expected line: what follows the predicted line does not count.
        let line = TaskScore::new("t", "a.rs", "total(cart)\n}\nfn next() {}", "total(cart)", 0.0);
        assert!(line.exact && line.similarity == 1.0);
        // A body: indentation and blank lines aside, every line counts.
        let body = "let sum = a + b;\n\n        sum * 2";
        let same = TaskScore::new("t", "a.rs", "  let sum = a + b;  \n        sum * 2\n\n", body, 0.0);
        assert!(same.exact, "{same:?}");
        // Python: a line one level off is other code.
        let nested = "if x:\n            return 1\n        return 0";
        let moved = TaskScore::new("t", "a.py", "if x:\n            return 1\n            return 0", nested, 0.0);
        assert!(!moved.exact && moved.similarity < 1.0, "{moved:?}");
        let short = TaskScore::new("t", "a.rs", "let sum = a + b;", body, 0.0);
        assert!(!short.exact && short.similarity < 0.7, "{short:?}");
        let longer = TaskScore::new("t", "a.rs", "let sum = a + b;\nsum * 2\nprintln!()", body, 0.0);
        assert!(!longer.exact && longer.similarity < 1.0, "{longer:?}");
    }

    #[test]
    fn scores_saved_before_completions_were_kept_still_read() {
        let old: TaskScore = serde_json::from_str(r#"{"id":"t","path":"a.rs","exact":false,"similarity":0.5,"latency_ms":1.0}"#).unwrap();
        assert!(old.completion.is_empty() && old.logprobs.is_empty() && old.identifiers.is_none());
        assert!(!serde_json::to_string(&old).unwrap().contains("completion"), "an empty one is not written");
        let kept = TaskScore { completion: "total(cart)".into(), ..old };
        assert!(serde_json::to_string(&kept).unwrap().contains(r#""completion":"total(cart)""#));
    }

    #[test]
    fn identifier_match_ignores_spacing_punctuation_and_numbers_but_not_names_or_their_order() {
        assert_eq!(identifiers("let x2 = foo::bar(a, 42, \"é_t\");").collect::<Vec<_>>(), ["let", "x2", "foo", "bar", "a", "é_t"]);
        let names = |predicted: &str, expected: &str| TaskScore::new("t", "a.rs", predicted, expected, 0.0).identifiers;
        assert_eq!(names("foo( a,b ) ;", "foo(a, b);"), Some(true));
        assert_eq!(names("foo(a, 1)", "foo(a, 2)"), Some(true), "a literal's digits are not names");
        assert_eq!(names("foo(b, a)", "foo(a, b)"), Some(false));
        assert_eq!(names("foo(a)", "foo(a, b)"), Some(false));
        // A block: every line's names.
        assert_eq!(names("let s = a+b;\n s*2", "let s = a + b;\n    s * 2"), Some(true));
        assert_eq!(names("let s = a+b;", "let s = a + b;\n    s * 2"), Some(false));
    }

    #[test]
    fn identifier_match_is_compared_only_when_both_runs_recorded_it() {
        let with = |id: usize, path: &str, same: bool| TaskScore { identifiers: Some(same), ..score(id, path, 0.5, false) };
        let a = vec![with(1, "a.rs", false), with(2, "a.rs", false), with(3, "b.rs", true), with(4, "c.rs", false)];
        let b = vec![with(1, "a.rs", true), with(2, "a.rs", true), with(3, "b.rs", true), with(4, "c.rs", false)];
        let i = paired(&a, &b, 0).unwrap().identifier_match.expect("both recorded it");
        assert!((i.mean - 50.0).abs() < 1e-9 && i.low <= i.mean && i.mean <= i.high, "{i:?}");
        // A run saved before identifiers were recorded: no figure rather than a wrong one.
        let old: Vec<TaskScore> = a.iter().map(|t| TaskScore { identifiers: None, ..t.clone() }).collect();
        assert_eq!(paired(&old, &b, 0).unwrap().identifier_match, None);
        // The other figures are the same with or without it (the same resamples).
        assert_eq!(paired(&old, &b, 0).unwrap().edit_similarity, paired(&a, &b, 0).unwrap().edit_similarity);
    }

    #[test]
    fn first_non_empty_line() {
        assert_eq!(first_line("\n  \n  foo(x);\nbar"), "foo(x);");
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn independent_tasks_give_the_normal_interval() {
        // One task per file, differences drawn from a fixed pseudo-random sample: the bootstrap's
        // 95 % interval is the mean ± 1.96 standard errors, within a tenth of its half-width.
        let mut rng = SplitMix64::new(7);
        let n = 400;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut diffs = Vec::new();
        for i in 0..n {
            let base = (rng.next() % 1000) as f64 / 1000.0;
            let delta = ((rng.next() % 1000) as f64 / 1000.0 - 0.4) * 0.5;
            let other = (base + delta).clamp(0.0, 1.0);
            diffs.push((other - base) * 100.0);
            a.push(score(i, &format!("f{i}.rs"), base, false));
            b.push(score(i, &format!("f{i}.rs"), other, false));
        }
        let p = paired(&a, &b, 1).unwrap();
        let mean = diffs.iter().sum::<f64>() / n as f64;
        let sd = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let half = 1.96 * sd / (n as f64).sqrt();
        assert!((p.edit_similarity.mean - mean).abs() < 1e-9);
        assert!((p.edit_similarity.low - (mean - half)).abs() < 0.1 * half, "{:?} vs ±{half}", p.edit_similarity);
        assert!((p.edit_similarity.high - (mean + half)).abs() < 0.1 * half, "{:?} vs ±{half}", p.edit_similarity);
        assert_eq!((p.tasks, p.files), (n, n));
        assert!(p.edit_similarity.above_zero(), "{:?}", p.edit_similarity);
    }

    #[test]
    fn clustered_tasks_widen_the_interval_and_shares_count_tasks() {
        // Ten files of ten tasks: in five files every task gains 20 points, in five none does.
        // Resampling files, the interval is as wide as ten observations allow, not a hundred.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..100 {
            let path = format!("f{}.rs", i / 10);
            a.push(score(i, &path, 0.5, false));
            b.push(score(i, &path, if i / 10 < 5 { 0.7 } else { 0.5 }, i / 10 < 5));
        }
        let p = paired(&a, &b, 3).unwrap();
        assert!((p.edit_similarity.mean - 10.0).abs() < 1e-9);
        assert!((p.exact_match.mean - 50.0).abs() < 1e-9);
        // A file-level sample of 10 with p = 0.5: standard error ≈ 10 × 0.158 = 1.58 × 2 points.
        let width = p.edit_similarity.high - p.edit_similarity.low;
        assert!(width > 8.0 && width < 16.0, "{:?}", p.edit_similarity);
        assert!((p.helped - 0.5).abs() < 1e-9 && p.hurt == 0.0);
        assert_eq!(p.files, 10);
    }

    #[test]
    fn only_shared_tasks_are_compared() {
        let a = vec![score(1, "a.rs", 0.2, false), score(2, "a.rs", 0.4, false)];
        let b = vec![score(2, "a.rs", 0.1, false), score(3, "b.rs", 1.0, true)];
        let p = paired(&a, &b, 0).unwrap();
        assert_eq!(p.tasks, 1);
        assert!((p.edit_similarity.mean + 30.0).abs() < 1e-9);
        assert!(p.edit_similarity.below_zero() || p.edit_similarity.low == p.edit_similarity.high);
        assert_eq!(p.hurt, 1.0);
        assert!(paired(&a, &[score(9, "z.rs", 0.0, false)], 0).is_none());
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&mut [], 0.5), 0.0);
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&mut [0.0, 10.0], 0.25), 2.5);
        assert_eq!(percentile(&mut [5.0, 1.0, 3.0], 0.5), 3.0);
    }
}
