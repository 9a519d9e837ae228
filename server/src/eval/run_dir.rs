//! A run of several modes on the same tasks kept in a directory as it goes (`kenning eval --all
//! --out DIR`), so that a run of hours can be stopped at any point and carried on.
//!
//! The tasks are cut into chunks of [`CHUNK_TASKS`] in their order (the time split's order already
//! takes one line from each file in turn), and each (chunk, mode) is one unit of work whose scores
//! are written whole when it ends. A run stopped early has every mode on the same first chunks, so
//! what it did compares task by task. The directory is tied to what decides the scores (the tasks,
//! the model, the settings, the adapter's weights): carrying on with anything else changed is
//! refused, naming what changed, instead of mixing two runs into one table.
//!
//! ```text
//! DIR/run.json               what the run is (tasks' hash, what else decides the scores)
//! DIR/lock                   held by the process carrying the run on
//! DIR/chunks/003.jsonl       the tasks of chunk 3
//! DIR/scores/rag-003.json    rag's figures on chunk 3 (written whole)
//! DIR/rag.json               rag's figures on every task, once all its chunks are done
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Condition, Figures};
use crate::dataset::EvalTask;
use crate::paths::write_atomic;

/// Tasks per chunk: at ~2–10 s a task on a laptop's CPU, a few minutes of work lost at most when
/// a run is stopped, and a model load per chunk that is small beside it.
pub const CHUNK_TASKS: usize = 25;

const RUN_FILE: &str = "run.json";
const LOCK_FILE: &str = "lock";

/// What a run is: carrying on is allowed only with the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct About {
    tasks: usize,
    /// [`CHUNK_TASKS`] when the run began: scores are kept per chunk.
    #[serde(default = "first_chunk_tasks")]
    chunk_tasks: usize,
    /// blake3 of the tasks, one JSON line each.
    tasks_hash: String,
    /// Everything else that decides the scores (model, settings, adapter), as the caller names it.
    setup: serde_json::Map<String, serde_json::Value>,
}

/// Runs written before their description named their chunk size had chunks of 25 tasks.
fn first_chunk_tasks() -> usize {
    25
}

/// A run's directory.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    chunks: usize,
    /// Held while the run is open (an exclusive advisory lock on `DIR/lock`).
    _lock: std::fs::File,
}

impl RunDir {
    /// Opens `dir` for `tasks` under `setup`: a new run is written there; a run already there
    /// carries on when it is the same, and is refused otherwise (naming what differs).
    pub fn open(dir: &Path, tasks: &[EvalTask], setup: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        let lines: Vec<String> = tasks.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        let about = About { tasks: tasks.len(), chunk_tasks: CHUNK_TASKS, tasks_hash: blake3::hash(lines.join("\n").as_bytes()).to_hex().to_string(), setup };
        let run_file = dir.join(RUN_FILE);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // One process carries a run on at a time: a second would do the same work again.
        let lock_path = dir.join(LOCK_FILE);
        let Some(lock) = kenning_formats::try_lock(&lock_path).with_context(|| format!("locking {}", lock_path.display()))? else {
            bail!("another kenning eval is carrying on the run in {} (wait for it, or stop it)", dir.display())
        };
        match std::fs::read_to_string(&run_file) {
            Ok(text) => {
                let was: About = serde_json::from_str(&text).with_context(|| format!("{} is not a run's description", run_file.display()))?;
                if let Some(difference) = difference(&was, &about) {
                    bail!("{} holds another run ({difference}): carry it on with what it was run with, or give another --out", dir.display());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::read_dir(dir)?.flatten().any(|e| e.file_name() != LOCK_FILE) {
                    bail!("{} is not empty and holds no run: give a new or empty directory to --out", dir.display());
                }
                // First: a run stopped while writing its chunks is still this run, carried on.
                write_atomic(&run_file, serde_json::to_string_pretty(&about)?.as_bytes()).with_context(|| format!("writing {}", run_file.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", run_file.display())),
        }
        let run = Self { dir: dir.to_owned(), chunks: tasks.len().div_ceil(CHUNK_TASKS), _lock: lock };
        // Written at every start (they follow from the tasks): none is ever missing or damaged.
        for (i, chunk) in lines.chunks(CHUNK_TASKS).enumerate() {
            let file = run.chunk_file(i);
            write_atomic(&file, (chunk.join("\n") + "\n").as_bytes()).with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(run)
    }

    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The tasks of chunk `i`, one JSON object a line (what `kenning eval --tasks` reads).
    pub fn chunk_file(&self, i: usize) -> PathBuf {
        self.dir.join("chunks").join(format!("{i:03}.jsonl"))
    }

    fn scores_file(&self, mode: Condition, i: usize) -> PathBuf {
        self.dir.join("scores").join(format!("{}-{i:03}.json", mode.name()))
    }

    /// `mode`'s figures on chunk `i`, when a run has finished it.
    pub fn done(&self, mode: Condition, i: usize) -> Option<Figures> {
        let text = std::fs::read_to_string(self.scores_file(mode, i)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Keeps `mode`'s figures on chunk `i` (whole or not at all).
    pub fn save(&self, mode: Condition, i: usize, figures: &Figures) -> Result<()> {
        let file = self.scores_file(mode, i);
        write_atomic(&file, serde_json::to_string(figures)?.as_bytes()).with_context(|| format!("writing {}", file.display()))
    }

    /// `mode`'s figures on the chunks done so far, in task order, and how many chunks that is
    /// (`None`: none). Peak memory is the largest of its processes'. Once every chunk is done they
    /// are also written to `DIR/<mode>.json` (a `--save-scores` file, for `kenning compare`).
    pub fn merged(&self, mode: Condition) -> Result<Option<(Figures, usize)>> {
        let done: Vec<Figures> = (0..self.chunks).filter_map(|i| self.done(mode, i)).collect();
        let Some(first) = done.first() else { return Ok(None) };
        let workspace = first.workspace.clone();
        let peak = done.iter().map(|f| f.peak_rss_mib).fold(0.0, f64::max);
        let chunks = done.len();
        let scores = done.into_iter().flat_map(|f| f.scores).collect();
        let figures = Figures { workspace, ..Figures::with_peak(mode, scores, peak) };
        if chunks == self.chunks {
            let file = self.dir.join(format!("{}.json", mode.name()));
            write_atomic(&file, serde_json::to_string(&figures)?.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(Some((figures, chunks)))
    }
}

/// What differs between the run on disk and the one asked for, said for a person.
fn difference(was: &About, now: &About) -> Option<String> {
    if was.tasks != now.tasks {
        return Some(format!("{} tasks, not {}", was.tasks, now.tasks));
    }
    if was.tasks_hash != now.tasks_hash {
        return Some("other tasks".into());
    }
    if was.chunk_tasks != now.chunk_tasks {
        return Some(format!("chunks of {} tasks, not {} (another kenning)", was.chunk_tasks, now.chunk_tasks));
    }
    let keys: std::collections::BTreeSet<&String> = was.setup.keys().chain(now.setup.keys()).collect();
    keys.into_iter().find_map(|k| {
        let (a, b) = (was.setup.get(k), now.setup.get(k));
        let show = |v: Option<&serde_json::Value>| v.map_or_else(|| "nothing".to_owned(), serde_json::Value::to_string);
        (a != b).then(|| format!("{k}: {} then, {} now", show(a), show(b)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::TaskScore;

    fn task(i: usize) -> EvalTask {
        EvalTask { id: format!("f{}.rs:{i}", i % 7), path: format!("f{}.rs", i % 7), prefix: "let x = ".into(), suffix: ";\n".into(), expected: format!("{i}"), kind: String::new() }
    }

    fn setup(model: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({"model": model, "adapter": null}).as_object().unwrap().clone()
    }

    fn figures(mode: Condition, tasks: &[EvalTask], peak: f64) -> Figures {
        let scores = tasks.iter().map(|t| TaskScore::new(&t.id, &t.path, if t.expected.len() > 1 { &t.expected } else { "x" }, &t.expected, 10.0)).collect();
        Figures { workspace: "repo".into(), ..Figures::with_peak(mode, scores, peak) }
    }

    #[test]
    fn a_run_carries_on_only_as_it_was_and_merges_its_chunks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let tasks: Vec<EvalTask> = (0..CHUNK_TASKS * 2 + 3).map(task).collect();
        let run = RunDir::open(&out, &tasks, setup("smollm2-135m")).unwrap();
        assert_eq!(run.chunks(), 3);
        let files: Vec<PathBuf> = (0..3).map(|i| run.chunk_file(i)).collect();
        let chunk = |i: usize| crate::eval::read_tasks(&files[i], None).unwrap();
        assert_eq!(chunk(2).len(), 3);
        assert_eq!(chunk(1)[0].id, tasks[CHUNK_TASKS].id, "chunks keep the tasks' order");
        assert!(run.merged(Condition::Rag).unwrap().is_none(), "nothing done yet");

        // Chunks 0 and 2 done, 1 not (a run stopped, or a worker still on it).
        run.save(Condition::Rag, 2, &figures(Condition::Rag, &chunk(2), 900.0)).unwrap();
        run.save(Condition::Rag, 0, &figures(Condition::Rag, &chunk(0), 700.0)).unwrap();
        let (partial, done) = run.merged(Condition::Rag).unwrap().unwrap();
        assert_eq!((done, partial.tasks, partial.peak_rss_mib), (2, CHUNK_TASKS + 3, 900.0));
        assert!(!out.join("rag.json").exists(), "written only when every chunk is done");

        // While one process carries the run on, a second is refused; the same command afterwards
        // carries on, and what was done is still there.
        let error = RunDir::open(&out, &tasks, setup("smollm2-135m")).unwrap_err().to_string();
        assert!(error.contains("another kenning eval is carrying on"), "{error}");
        drop(run);
        let again = RunDir::open(&out, &tasks, setup("smollm2-135m")).unwrap();
        assert!(again.done(Condition::Rag, 0).is_some() && again.done(Condition::Rag, 1).is_none());
        again.save(Condition::Rag, 1, &figures(Condition::Rag, &chunk(1), 800.0)).unwrap();
        let (whole, done) = again.merged(Condition::Rag).unwrap().unwrap();
        assert_eq!(done, 3);
        assert_eq!(whole.scores.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>());
        assert_eq!((whole.workspace.as_str(), whole.mode.as_str()), ("repo", "rag"));
        // Tasks 10 and up predicted right (two digits), the rest not.
        let right = tasks.iter().filter(|t| t.expected.len() > 1).count() as f64;
        assert!((whole.exact_match - right / tasks.len() as f64).abs() < 1e-12);
        let saved: Figures = serde_json::from_str(&std::fs::read_to_string(out.join("rag.json")).unwrap()).unwrap();
        assert_eq!(saved.tasks, tasks.len());

        drop(again);

        // Anything that decides the scores changed: refused, saying what.
        let error = RunDir::open(&out, &tasks, setup("qwen2.5-coder-0.5b")).unwrap_err().to_string();
        assert!(error.contains(r#"model: "smollm2-135m" then, "qwen2.5-coder-0.5b" now"#), "{error}");
        let error = RunDir::open(&out, &tasks[1..], setup("smollm2-135m")).unwrap_err().to_string();
        assert!(error.contains("53 tasks, not 52"), "{error}");
        let mut other = tasks.clone();
        other[4].expected = "changed".into();
        assert!(RunDir::open(&out, &other, setup("smollm2-135m")).unwrap_err().to_string().contains("other tasks"));
        let reopened = RunDir::open(&out, &tasks, setup("smollm2-135m")).unwrap();
        assert_eq!(reopened.merged(Condition::Rag).unwrap().unwrap().1, 3, "a refused run touches nothing");

        // A directory holding something else is not taken over.
        let busy = dir.path().join("busy");
        std::fs::create_dir_all(&busy).unwrap();
        std::fs::write(busy.join("notes.txt"), "mine").unwrap();
        assert!(RunDir::open(&busy, &tasks, setup("m")).unwrap_err().to_string().contains("not empty"));
    }
}
