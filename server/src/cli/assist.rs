//! The commands that use a model: `ask`, `complete` and `eval`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{Target, index_dir, load_embedder, open_store};
use crate::ask;
use crate::chunk::Language;
use crate::complete::{self, Completer, Retrieval};
use crate::config::{self, Config, Layers};
use crate::generate::{self, Generator};
use crate::paths::Paths;

/// Model selection shared by the commands.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A bundled model (qwen2.5-coder-0.5b, smollm2-135m) or a GGUF path, run with llama.cpp;
    /// default: kenning.toml's `[generation]`, else qwen2.5-coder-0.5b.
    #[arg(long)]
    model: Option<String>,
    /// CPU threads for the model (default: half the cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question.
    question: String,
    /// Workspace root whose index to search.
    #[arg(long, short = 'w', default_value = ".")]
    workspace: PathBuf,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    model: ModelArgs,
    /// Answer without a model: the most relevant places with their citations.
    #[arg(long)]
    no_model: bool,
    /// Keyword search only (no embedding model needed).
    #[arg(long)]
    no_embed: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// Where to complete: FILE:LINE:COLUMN (1-based; the column counts characters).
    at: String,
    /// Workspace root (default: the nearest directory above the file holding .git, else its directory).
    #[arg(long, short = 'w')]
    workspace: Option<PathBuf>,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    model: ModelArgs,
    /// Use only the file itself: no index, no definitions.
    #[arg(long)]
    no_retrieval: bool,
    /// Print the completion, its context and timings as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Tasks, one JSON object per line: {"id", "path", "prefix", "suffix", "expected"}.
    #[arg(long)]
    tasks: PathBuf,
    /// The repository the tasks come from (its index is used for retrieval).
    #[arg(long)]
    workspace: PathBuf,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    no_retrieval: bool,
    /// Only the first N tasks.
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object with the figures.
    #[arg(long)]
    json: bool,
    /// Print each task's prediction to stderr.
    #[arg(long)]
    verbose: bool,
}

/// The workspace's configuration with the command-line overrides applied.
fn config_for(root: &Path, model: &ModelArgs) -> Result<Config> {
    let mut config = Layers::from_workspace(root)?.resolve()?;
    if let Some(name) = &model.model {
        config.generation = config::Generation::Llama {
            model: name.clone(),
            adapter: None,
            threads: model.threads.unwrap_or(0),
            context: 4096,
            family: None,
        };
    } else if let (Some(t), config::Generation::Llama { threads, .. }) = (model.threads, &mut config.generation) {
        *threads = t;
    }
    Ok(config)
}

async fn load_model(paths: &Paths, config: &Config) -> Result<Option<Arc<dyn Generator>>> {
    let generation = config.generation.clone();
    let paths = paths.clone();
    let model = tokio::task::spawn_blocking(move || generate::from_config(&generation, &paths)).await??;
    Ok(model)
}

pub async fn ask_cmd(paths: &Paths, args: AskArgs) -> Result<()> {
    let root = super::workspace_root(&args.workspace)?;
    let dir = index_dir(paths, &args.target, &root);
    if !dir.exists() {
        bail!("no index for {} at {}: run `kenning index {}` first", root.display(), dir.display(), root.display());
    }
    let store = open_store(&dir).await?;
    let config = config_for(&root, &args.model)?;
    let embedder = if args.no_embed || !config.index.embeddings { None } else { Some(load_embedder(paths, 0)?) };
    let generator = if args.no_model {
        None
    } else {
        let model = load_model(paths, &config).await.context("cannot load the model (use --no-model for an extractive answer)")?;
        model.map(|g| (g, config.generation.family()))
    };
    let stream = !args.json;
    let answer = ask::ask(&args.question, &store, embedder, generator, &config.ask, |t| {
        if stream {
            print!("{t}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if answer.extractive || answer.model.is_none() {
        println!("{}", answer.render());
    } else {
        // The text was streamed; the sources follow.
        let rendered = answer.render();
        println!("{}", rendered.strip_prefix(answer.text.as_str()).unwrap_or(&rendered));
    }
    Ok(())
}

/// `FILE:LINE:COLUMN` split from the right (paths may hold colons).
fn parse_at(at: &str) -> Result<(PathBuf, usize, usize)> {
    let mut parts = at.rsplitn(3, ':');
    let (col, line, file) = (parts.next(), parts.next(), parts.next());
    let (Some(col), Some(line), Some(file)) = (col, line, file) else {
        bail!("expected FILE:LINE:COLUMN, got `{at}`");
    };
    let line: usize = line.parse().with_context(|| format!("bad line number in `{at}`"))?;
    let col: usize = col.parse().with_context(|| format!("bad column in `{at}`"))?;
    if line == 0 || col == 0 {
        bail!("lines and columns count from 1 (`{at}`)");
    }
    Ok((PathBuf::from(file), line, col))
}

/// Byte offset of a 1-based line and character column, clamped to the line.
fn offset_of(text: &str, line: usize, col: usize) -> Result<usize> {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => bail!("the file has fewer than {line} lines"),
        }
    }
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_text = &text[start..end];
    Ok(start + line_text.char_indices().nth(col - 1).map_or(line_text.len(), |(i, _)| i))
}

fn find_root(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("/"));
    dir.ancestors().find(|d| d.join(".git").exists()).unwrap_or(dir).to_owned()
}

async fn retrieval_for(paths: &Paths, target: &Target, root: &Path, config: &Config, enabled: bool) -> Result<Retrieval> {
    if !enabled {
        return Ok(Retrieval::default());
    }
    let dir = index_dir(paths, target, root);
    if !dir.exists() {
        eprintln!("note: {} is not indexed (run `kenning index {}`); completing without retrieval", root.display(), root.display());
        return Ok(Retrieval::default());
    }
    let store = Arc::new(open_store(&dir).await?);
    let embedder = if config.index.embeddings {
        match load_embedder(paths, 0) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("warning: {e:#}; keyword retrieval only");
                None
            }
        }
    } else {
        None
    };
    Ok(Retrieval { store: Some(store), embedder })
}

#[derive(Serialize)]
struct CompleteOutput<'a> {
    file: String,
    offset: usize,
    completion: Option<&'a complete::Completion>,
    latency_ms: f64,
}

pub async fn complete_cmd(paths: &Paths, args: CompleteArgs) -> Result<()> {
    let (file, line, col) = parse_at(&args.at)?;
    let file = file.canonicalize().with_context(|| format!("{} not found", file.display()))?;
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let offset = offset_of(&text, line, col)?;
    let root = match &args.workspace {
        Some(w) => super::workspace_root(w)?,
        None => find_root(&file),
    };
    let config = config_for(&root, &args.model)?;
    let retrieval = retrieval_for(paths, &args.target, &root, &config, !args.no_retrieval).await?;
    let generator = load_model(paths, &config).await?.context("no generation model is configured ([generation] backend = \"none\")")?;
    let completer = Completer::new(generator, config.generation.family(), config.completion.clone());
    let rel = file.strip_prefix(&root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
    let request = complete::Request {
        repo: root.file_name().map_or_else(|| "workspace".into(), |n| n.to_string_lossy().into_owned()),
        language: Language::from_path(&rel),
        path: rel,
        text,
        offset,
        buffers: Vec::new(),
    };
    let started = Instant::now();
    let completion = completer.complete(request, &retrieval).await?;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let out = CompleteOutput { file: file.display().to_string(), offset, completion: completion.as_ref(), latency_ms };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match completion {
        Some(c) => {
            println!("{}", c.text);
            eprintln!(
                "({:?}, {} context snippets, context {:.0} ms, generation {:.0} ms)",
                c.mode,
                c.snippets.len(),
                c.context_ms,
                c.generate_ms
            );
        }
        None => eprintln!("no completion here (mid-line, or the model had nothing to add)"),
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Task {
    id: String,
    path: String,
    prefix: String,
    suffix: String,
    expected: String,
}

#[derive(Debug, Serialize)]
struct EvalFigures {
    tasks: usize,
    exact_match: f64,
    edit_similarity: f64,
    mean_latency_ms: f64,
}

pub async fn eval_cmd(paths: &Paths, args: EvalArgs) -> Result<()> {
    let root = super::workspace_root(&args.workspace)?;
    let file = std::fs::File::open(&args.tasks).with_context(|| format!("cannot open {}", args.tasks.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let task: Task = serde_json::from_str(&line).with_context(|| format!("{}:{}: not a task", args.tasks.display(), i + 1))?;
        tasks.push(task);
    }
    if let Some(n) = args.limit {
        tasks.truncate(n);
    }
    if tasks.is_empty() {
        bail!("{} holds no tasks", args.tasks.display());
    }
    let config = config_for(&root, &args.model)?;
    let retrieval = retrieval_for(paths, &args.target, &root, &config, !args.no_retrieval).await?;
    let generator = load_model(paths, &config).await?.context("no generation model is configured")?;
    let repo = root.file_name().map_or_else(|| "workspace".into(), |n| n.to_string_lossy().into_owned());
    let (mut exact, mut similarity, mut latency) = (0usize, 0.0f64, 0.0f64);
    let (mut building, mut first_token): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for task in &tasks {
        // A fresh completer per task: nothing is reused between tasks.
        let completer = Completer::new(Arc::clone(&generator), config.generation.family(), config.completion.clone());
        let request = complete::Request {
            repo: repo.clone(),
            language: Language::from_path(&task.path),
            path: task.path.clone(),
            text: format!("{}{}", task.prefix, task.suffix),
            offset: task.prefix.len(),
            buffers: Vec::new(),
        };
        let started = Instant::now();
        let completion = completer.complete(request, &retrieval).await?;
        latency += started.elapsed().as_secs_f64() * 1e3;
        if let Some(c) = &completion {
            building.push(c.context_ms + c.prompt_ms);
            first_token.push(c.first_token_ms);
        }
        let predicted = completion.map(|c| c.text).unwrap_or_default();
        let (p, e) = (first_line(&predicted), first_line(&task.expected));
        exact += usize::from(p == e);
        let s = edit_similarity(p, e);
        similarity += s;
        if args.verbose {
            eprintln!("{} sim {s:.2}\n  expected  {e}\n  predicted {p}", task.id);
        }
    }
    let n = tasks.len() as f64;
    let figures =
        EvalFigures { tasks: tasks.len(), exact_match: exact as f64 / n, edit_similarity: similarity / n, mean_latency_ms: latency / n };
    if args.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "tasks {}  exact match {:.1}%  edit similarity {:.1}%  mean latency {:.0} ms  (retrieval {})",
            figures.tasks,
            figures.exact_match * 100.0,
            figures.edit_similarity * 100.0,
            figures.mean_latency_ms,
            if args.no_retrieval { "off" } else { "on" }
        );
        let (b50, b95) = (percentile(&mut building, 0.5), percentile(&mut building, 0.95));
        let (f50, f95) = (percentile(&mut first_token, 0.5), percentile(&mut first_token, 0.95));
        println!("  retrieval + prompt building  p50 {b50:>8.1} ms  p95 {b95:>8.1} ms");
        println!("  time to first token          p50 {f50:>8.1} ms  p95 {f95:>8.1} ms");
        if f50 > 0.0 {
            println!("  retrieval + prompt / first token at p50: {:.1}% (goal < 5%)", b50 / f50 * 100.0);
        }
    }
    Ok(())
}

/// The `p` quantile (nearest rank) of `values`; 0 when empty.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// The first non-empty line, trimmed.
fn first_line(text: &str) -> &str {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
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

    #[test]
    fn similarity() {
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("abc", "abc"), 1.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-9);
        assert!((edit_similarity("é", "e") - 0.0).abs() < 1e-9);
    }

    #[test]
    fn positions() {
        assert_eq!(parse_at("C:/x/a.rs:3:5").unwrap(), (PathBuf::from("C:/x/a.rs"), 3, 5));
        assert!(parse_at("a.rs:3").is_err());
        assert!(parse_at("a.rs:0:1").is_err());
        let text = "ab\néé x\n";
        assert_eq!(offset_of(text, 2, 3).unwrap(), 3 + 4);
        assert_eq!(offset_of(text, 2, 99).unwrap(), 3 + 6);
        assert!(offset_of(text, 9, 1).is_err());
    }

    #[test]
    fn first_non_empty_line() {
        assert_eq!(first_line("\n  \n  foo(x);\nbar"), "foo(x);");
        assert_eq!(first_line(""), "");
    }
}
