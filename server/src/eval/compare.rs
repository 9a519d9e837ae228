//! Comparing saved runs (`kenning compare`): two sides, each one or many files written by `kenning
//! eval --save-scores` (on one repository or several), matched task by task, overall and broken
//! down by repository, language and task kind. The statistics are [`paired`]'s, the same as
//! `kenning eval --baseline` and `kenning train`'s measurement. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Figures, Paired, TaskScore, paired};
use crate::chunk::Language;

/// The tasks of one group that both sides ran, compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// `all`, `repository NAME`, `language NAME`, `kind NAME` or `LANGUAGE/KIND`.
    pub label: String,
    /// Mean edit similarity and exact match of each side on those tasks, in points (0–100).
    pub base_similarity: f64,
    pub other_similarity: f64,
    pub base_exact: f64,
    pub other_exact: f64,
    /// The other side against the base (other − base).
    pub paired: Paired,
}

/// A comparison: its groups, and the tasks only one side ran (left out of every group).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub groups: Vec<Group>,
    pub only_base: usize,
    pub only_other: usize,
}

/// One side's tasks by (repository, id), with what a group is chosen by.
struct Task<'a> {
    score: &'a TaskScore,
    repository: &'a str,
    language: &'static str,
}

fn side<'a>(runs: &'a [Figures], which: &str) -> Result<BTreeMap<(&'a str, &'a str), Task<'a>>, String> {
    let mut tasks = BTreeMap::new();
    for run in runs {
        for score in &run.scores {
            let task = Task { score, repository: &run.workspace, language: Language::from_path(&score.path).name() };
            if tasks.insert((run.workspace.as_str(), score.id.as_str()), task).is_some() {
                let of = if run.workspace.is_empty() { String::new() } else { format!(" of {}", run.workspace) };
                return Err(format!("task {}{of} is twice in the {which} runs", score.id));
            }
        }
    }
    Ok(tasks)
}

/// Compares `other` with `base` task by task: overall, then per repository, language and kind
/// where the tasks have more than one (and per language and kind together when both vary).
/// `Err` when a side holds a task twice, or the sides share none.
pub fn compare(base: &[Figures], other: &[Figures], seed: u64) -> Result<Comparison, String> {
    let (a, b) = (side(base, "base")?, side(other, "other")?);
    let both: Vec<(&(&str, &str), &Task, &Task)> = a.iter().filter_map(|(k, ta)| b.get(k).map(|tb| (k, ta, tb))).collect();
    if both.is_empty() {
        return Err("the two sides share no task (tasks are matched by repository and id)".into());
    }
    let kind = |ta: &Task, tb: &Task| if ta.score.kind.is_empty() { tb.score.kind.clone() } else { ta.score.kind.clone() };
    let distinct = |f: &dyn Fn(&Task, &Task) -> String| both.iter().map(|(_, ta, tb)| f(ta, tb)).collect::<BTreeSet<String>>();
    let repositories = distinct(&|ta, _| ta.repository.to_owned());
    let languages = distinct(&|ta, _| ta.language.to_owned());
    let kinds = distinct(&|ta, tb| kind(ta, tb));

    let mut groups = Vec::new();
    let mut group = |label: String, keep: &dyn Fn(&Task, &Task) -> bool| {
        // Paths carry the repository: two repositories' `src/lib.rs` are two files to resample.
        let key = |t: &Task| TaskScore {
            id: format!("{}\n{}", t.repository, t.score.id),
            path: format!("{}/{}", t.repository, t.score.path),
            ..t.score.clone()
        };
        let (sa, sb): (Vec<TaskScore>, Vec<TaskScore>) = both.iter().filter(|(_, ta, tb)| keep(ta, tb)).map(|(_, ta, tb)| (key(ta), key(tb))).unzip();
        let mean = |s: &[TaskScore], f: &dyn Fn(&TaskScore) -> f64| s.iter().map(f).sum::<f64>() / s.len() as f64 * 100.0;
        if let Some(p) = paired(&sa, &sb, seed) {
            groups.push(Group {
                label,
                base_similarity: mean(&sa, &|t| t.similarity),
                other_similarity: mean(&sb, &|t| t.similarity),
                base_exact: mean(&sa, &|t| f64::from(u8::from(t.exact))),
                other_exact: mean(&sb, &|t| f64::from(u8::from(t.exact))),
                paired: p,
            });
        }
    };
    group("all".into(), &|_, _| true);
    if repositories.len() > 1 {
        for r in &repositories {
            group(format!("repository {r}"), &|ta, _| ta.repository == r);
        }
    }
    if languages.len() > 1 {
        for l in &languages {
            group(format!("language {l}"), &|ta, _| ta.language == l);
        }
    }
    if kinds.len() > 1 {
        for k in &kinds {
            group(format!("kind {}", if k.is_empty() { "-" } else { k }), &|ta, tb| kind(ta, tb) == *k);
        }
    }
    if languages.len() > 1 && kinds.len() > 1 {
        for l in &languages {
            for k in &kinds {
                group(format!("{l}/{}", if k.is_empty() { "-" } else { k }), &|ta, tb| ta.language == l && kind(ta, tb) == *k);
            }
        }
    }
    Ok(Comparison { groups, only_base: a.len() - both.len(), only_other: b.len() - both.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Condition;

    fn run(workspace: &str, tasks: &[(&str, &str, &str, f64)]) -> Figures {
        let scores = tasks
            .iter()
            .map(|&(id, path, kind, similarity)| TaskScore { id: id.into(), path: path.into(), exact: similarity == 1.0, similarity, latency_ms: 0.0, kind: kind.into(), identifiers: None, logprobs: Vec::new(), completion: String::new() })
            .collect();
        Figures { workspace: workspace.into(), ..Figures::new(Condition::None, scores) }
    }

    #[test]
    fn runs_on_several_repositories_are_matched_within_each_and_broken_down() {
        // The same id in two repositories is two tasks; files of two repositories are two clusters.
        let base = [
            run("alpha", &[("lib.rs:1:line", "lib.rs", "line", 0.5), ("lib.rs:2:api", "lib.rs", "api", 0.5)]),
            run("beta", &[("lib.rs:1:line", "lib.rs", "line", 0.2), ("m.py:3:line", "m.py", "line", 0.4), ("m.py:9:api", "m.py", "api", 0.0)]),
        ];
        let other = [
            run("beta", &[("lib.rs:1:line", "lib.rs", "line", 0.4), ("m.py:3:line", "m.py", "line", 0.4)]),
            run("alpha", &[("lib.rs:1:line", "lib.rs", "line", 1.0), ("lib.rs:2:api", "lib.rs", "api", 0.3)]),
        ];
        let c = compare(&base, &other, 0).unwrap();
        assert_eq!((c.only_base, c.only_other), (1, 0), "beta's m.py:9 ran on the base side only");
        let g = |label: &str| c.groups.iter().find(|g| g.label == label).unwrap_or_else(|| panic!("no group {label}: {:?}", c.groups));
        let all = g("all");
        assert_eq!((all.paired.tasks, all.paired.files), (4, 3));
        // (+50 − 20 + 20 + 0) / 4
        assert!((all.paired.edit_similarity.mean - 12.5).abs() < 1e-9);
        assert!((all.base_similarity - 40.0).abs() < 1e-9 && (all.other_similarity - 52.5).abs() < 1e-9);
        assert!((all.other_exact - 25.0).abs() < 1e-9 && all.base_exact == 0.0);
        assert_eq!(g("repository alpha").paired.tasks, 2);
        assert!((g("repository beta").paired.edit_similarity.mean - 10.0).abs() < 1e-9);
        assert_eq!(g("language python").paired.tasks, 1);
        assert!((g("kind api").paired.edit_similarity.mean + 20.0).abs() < 1e-9);
        assert_eq!(g("rust/line").paired.tasks, 2);
        assert!(c.groups.iter().all(|g| g.label != "python/api"), "a group with no task both ran is left out");
    }

    #[test]
    fn one_repository_without_kinds_is_one_group() {
        let base = [run("", &[("a.rs:1", "a.rs", "", 0.5), ("b.rs:1", "b.rs", "", 0.5)])];
        let other = [run("", &[("a.rs:1", "a.rs", "", 0.7), ("b.rs:1", "b.rs", "", 0.5)])];
        let c = compare(&base, &other, 0).unwrap();
        assert_eq!(c.groups.iter().map(|g| g.label.as_str()).collect::<Vec<_>>(), ["all"]);
        assert!((c.groups[0].paired.helped - 0.5).abs() < 1e-9 && c.groups[0].paired.hurt == 0.0);
    }

    #[test]
    fn a_task_twice_on_one_side_or_no_shared_task_is_an_error() {
        let twice = [run("r", &[("a.rs:1", "a.rs", "", 0.5)]), run("r", &[("a.rs:1", "a.rs", "", 0.6)])];
        let once = [run("r", &[("a.rs:1", "a.rs", "", 0.5)])];
        assert!(compare(&twice, &once, 0).unwrap_err().contains("twice in the base runs"));
        assert!(compare(&once, &[run("s", &[("a.rs:1", "a.rs", "", 0.5)])], 0).unwrap_err().contains("share no task"));
    }
}
