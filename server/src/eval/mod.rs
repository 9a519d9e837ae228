//! Evaluating completions: which tasks (a task file, or lines of the repository's held-out files),
//! the modes compared (none, rag, ft, hybrid), running a mode's tasks through the completer as
//! one-shot requests, and the figures (exact match, edit similarity, latency, peak memory). The
//! statistics, pure, are in [`stats`]; the CLI parses arguments and prints.

pub mod compare;
pub mod history;
pub mod run_dir;
pub mod stats;

pub use stats::*;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::chunk::Language;
use crate::complete::{self, CompleteError, Completer, Retrieval};
use crate::config;
use crate::dataset::{self, DatasetOptions, EvalTask, Split};
use crate::generate::Generator;
use crate::paths::Paths;
use crate::prompt::Family;

/// What an evaluation runs (`--mode`): the model alone, with retrieved context, with the fine-tuned adapter,
/// or with both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Condition {
    None,
    Rag,
    Ft,
    Hybrid,
}

impl Condition {
    pub const ALL: [Condition; 4] = [Condition::None, Condition::Rag, Condition::Ft, Condition::Hybrid];

    pub fn name(self) -> &'static str {
        match self {
            Condition::None => "none",
            Condition::Rag => "rag",
            Condition::Ft => "ft",
            Condition::Hybrid => "hybrid",
        }
    }

    pub fn retrieval(self) -> bool {
        matches!(self, Condition::Rag | Condition::Hybrid)
    }

    pub fn adapter(self) -> bool {
        matches!(self, Condition::Ft | Condition::Hybrid)
    }
}

/// A run's figures, with every task's score (for paired comparisons with another run).
#[derive(Debug, Serialize, Deserialize)]
pub struct Figures {
    pub mode: String,
    pub tasks: usize,
    pub exact_match: f64,
    pub edit_similarity: f64,
    /// Identifier exact match (0–1), when every score recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier_match: Option<f64>,
    pub mean_latency_ms: f64,
    pub p50_latency_ms: f64,
    /// The process's peak resident memory (model, index, runtime), in MiB.
    pub peak_rss_mib: f64,
    /// The workspace's name: runs on several repositories are compared task by task within each.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workspace: String,
    #[serde(default)]
    pub scores: Vec<TaskScore>,
}

impl Figures {
    /// The figures of `scores` (at least one), with this process's peak memory.
    pub fn new(mode: Condition, scores: Vec<TaskScore>) -> Self {
        Self::with_peak(mode, scores, peak_rss_bytes() as f64 / (1024.0 * 1024.0))
    }

    /// The figures of `scores` (at least one) with the peak memory of the processes that ran them.
    pub fn with_peak(mode: Condition, scores: Vec<TaskScore>, peak_rss_mib: f64) -> Self {
        let n = scores.len() as f64;
        let mut latencies: Vec<f64> = scores.iter().map(|s| s.latency_ms).collect();
        Self {
            mode: mode.name().to_owned(),
            tasks: scores.len(),
            exact_match: scores.iter().filter(|s| s.exact).count() as f64 / n,
            edit_similarity: scores.iter().map(|s| s.similarity).sum::<f64>() / n,
            identifier_match: scores.iter().map(|s| s.identifiers.map(f64::from)).sum::<Option<f64>>().map(|same| same / n),
            mean_latency_ms: latencies.iter().sum::<f64>() / n,
            p50_latency_ms: percentile(&mut latencies, 0.5),
            peak_rss_mib,
            workspace: String::new(),
            scores,
        }
    }
}

/// Where the time of the completions that produced text went, in ms.
#[derive(Debug, Default)]
pub struct Timings {
    /// Gathering context and building the prompt.
    pub building: Vec<f64>,
    /// From the start of generation to its first text.
    pub first_token: Vec<f64>,
}

/// Tasks from a file, one JSON object per line (`{"id", "path", "prefix", "suffix", "expected"}`),
/// the first `limit` of them.
pub fn read_tasks(file: &Path, limit: Option<usize>) -> anyhow::Result<Vec<EvalTask>> {
    let reader = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in std::io::BufReader::new(reader).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        tasks.push(serde_json::from_str(&line).with_context(|| format!("{}:{}: not a task", file.display(), i + 1))?);
    }
    if let Some(n) = limit {
        tasks.truncate(n);
    }
    Ok(tasks)
}

/// The held-out test files of `root`: the split of the last `kenning train` (its `dataset.json`),
/// else the split a default `kenning train` would make.
pub fn held_out_files(paths: &Paths, root: &Path) -> anyhow::Result<Vec<String>> {
    let recorded = paths.training_for(root).join("data").join("dataset.json");
    let files: BTreeMap<String, Split> = match std::fs::read_to_string(&recorded) {
        Ok(text) => {
            let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", recorded.display()))?;
            serde_json::from_value(value["files"].clone()).with_context(|| format!("{}: no file split", recorded.display()))?
        }
        Err(_) => dataset::file_splits(root, &DatasetOptions::default()),
    };
    let test: Vec<String> = files.into_iter().filter(|(_, s)| *s == Split::Test).map(|(p, _)| p).collect();
    if test.is_empty() {
        bail!("{} has no held-out test files (too few source files)", root.display());
    }
    Ok(test)
}

/// Everything a run of tasks completes with.
pub struct Setup<'a> {
    pub generator: Arc<dyn Generator>,
    pub family: Family,
    pub settings: &'a config::CompletionSettings,
    pub retrieval: &'a Retrieval,
    /// The workspace's name (the prompt's `<repo_name>`).
    pub repo: &'a str,
    /// Ask each task first with its last this many bytes not typed yet (back to a character
    /// boundary), then as written: the engine's cache holds the earlier prompt, as it does while a
    /// user types (what `generation.shift_cache` reuses of it is then measured). A task whose
    /// earlier cursor has nothing to complete runs cold. 0: every task cold.
    pub typed_before: usize,
}

/// Completes every task as a one-shot request (a fresh completer per task, its context gathered
/// first: nothing is reused between tasks) and scores it. `on_task` sees each score with what was
/// predicted.
pub async fn run(mode: Condition, setup: &Setup<'_>, tasks: &[EvalTask], mut on_task: impl FnMut(&EvalTask, &TaskScore, &str)) -> Result<(Figures, Timings), CompleteError> {
    let mut scores = Vec::with_capacity(tasks.len());
    let mut timings = Timings::default();
    for task in tasks {
        let completer = Completer::new(Arc::clone(&setup.generator), setup.family, setup.settings.one_shot()).recording_logprobs();
        let request = task_request(setup, task);
        // `completion.draft_query`: the draft is what this model completes without context at a
        // warm place (what `none` completes; for hybrid, what `ft` does). Its time counts in the
        // task's latency, not in retrieval and prompt building.
        let drafting = Instant::now();
        let gather_at = if setup.settings.draft_query && setup.retrieval.store.is_some() {
            let drafter = Completer::new(Arc::clone(&setup.generator), setup.family, setup.settings.one_shot());
            drafter.prepare(&request, &Retrieval::default()).await;
            let draft = drafter.complete(request.clone(), &Retrieval::default()).await?.map(|c| c.text).unwrap_or_default();
            complete::drafted(&request, &draft)
        } else {
            request.clone()
        };
        let draft_ms = drafting.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        completer.prepare_around(&request, &gather_at, setup.retrieval).await;
        let gathered_ms = started.elapsed().as_secs_f64() * 1e3;
        if setup.typed_before > 0 {
            let mut cut = task.prefix.len().saturating_sub(setup.typed_before);
            while !task.prefix.is_char_boundary(cut) {
                cut -= 1;
            }
            let before = complete::CompletionRequest { text: format!("{}{}", &task.prefix[..cut], task.suffix), offset: cut, ..request.clone() };
            completer.complete(before, setup.retrieval).await?;
            // The answer is not reused as a suggestion being typed into: only the engine's cache is.
            completer.forget_suggestions();
        }
        let started = Instant::now();
        let completion = completer.complete(request, setup.retrieval).await?;
        let latency_ms = draft_ms + gathered_ms + started.elapsed().as_secs_f64() * 1e3;
        if let Some(c) = &completion {
            timings.building.push(gathered_ms + c.context_ms + c.prompt_ms);
            timings.first_token.push(c.first_token_ms);
        }
        let logprobs = match completion.as_ref().and_then(|c| c.logprobs.clone()) {
            Some(logprobs) => logprobs.wait().await,
            None => Vec::new(),
        };
        let predicted = completion.map(|c| c.text).unwrap_or_default();
        let score = TaskScore {
            kind: task.kind.clone(),
            logprobs,
            completion: crate::secrets::redacted_continuation(&task.prefix, &predicted),
            ..TaskScore::new(&task.id, &task.path, &predicted, &task.expected, latency_ms)
        };
        on_task(task, &score, &predicted);
        scores.push(score);
    }
    Ok((Figures { workspace: setup.repo.to_owned(), ..Figures::new(mode, scores) }, timings))
}

/// What each task's prompt would hold as context (the ring after the one-shot gathering of
/// [`run`]); no model is needed.
pub async fn contexts(settings: &config::CompletionSettings, retrieval: &Retrieval, repo: &str, tasks: &[EvalTask], mut on_task: impl FnMut(&EvalTask, &[crate::prompt::Snippet])) {
    for task in tasks {
        on_task(task, &complete::context_for(&request_for(repo, task), retrieval, settings).await);
    }
}

fn task_request(setup: &Setup<'_>, task: &EvalTask) -> complete::CompletionRequest {
    request_for(setup.repo, task)
}

/// The completion request a task makes: the file as the task holds it, the cursor at the prefix's end.
fn request_for(repo: &str, task: &EvalTask) -> complete::CompletionRequest {
    complete::CompletionRequest {
        repo: repo.to_owned(),
        language: Language::from_path(&task.path),
        path: task.path.clone(),
        text: format!("{}{}", task.prefix, task.suffix),
        offset: task.prefix.len(),
        buffers: Vec::new(),
    }
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss_bytes() -> u64 {
    let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) else { return 0 };
    let max = u64::try_from(usage.max_rss()).unwrap_or(0);
    // Kilobytes on Linux, bytes on macOS.
    if cfg!(target_os = "macos") { max } else { max * 1024 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(id: &str, exact: bool, similarity: f64, latency_ms: f64) -> TaskScore {
        TaskScore { id: id.into(), path: "a.rs".into(), exact, similarity, latency_ms, kind: String::new(), identifiers: None, logprobs: Vec::new(), completion: String::new() }
    }

    #[test]
    fn figures_are_the_means_of_the_scores() {
        let f = Figures::new(Condition::Rag, vec![score("1", true, 1.0, 100.0), score("2", false, 0.5, 300.0), score("3", false, 0.0, 200.0)]);
        assert_eq!((f.mode.as_str(), f.tasks), ("rag", 3));
        assert!((f.exact_match - 1.0 / 3.0).abs() < 1e-12);
        assert!((f.edit_similarity - 0.5).abs() < 1e-12);
        assert!((f.mean_latency_ms - 200.0).abs() < 1e-12);
        assert!((f.p50_latency_ms - 200.0).abs() < 1e-12);
        assert!(f.peak_rss_mib > 0.0, "this process has a resident set");
    }

    #[test]
    fn task_files_skip_blank_lines_and_name_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tasks.jsonl");
        let task = r#"{"id": "t1", "path": "a.rs", "prefix": "let x = ", "suffix": ";\n", "expected": "1"}"#;
        std::fs::write(&file, format!("{task}\n\n{}\n", task.replace("t1", "t2"))).unwrap();
        let tasks = read_tasks(&file, None).unwrap();
        assert_eq!(tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t1", "t2"]);
        assert_eq!(read_tasks(&file, Some(1)).unwrap().len(), 1);
        std::fs::write(&file, format!("{task}\nnot json\n")).unwrap();
        let error = read_tasks(&file, None).unwrap_err().to_string();
        assert!(error.contains("tasks.jsonl:2"), "{error}");
    }
}
