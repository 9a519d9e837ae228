//! The commands that use a model: `ask`, `complete` and `eval`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{Target, index_dir, load_embedder, open_store};
use crate::ask;
use crate::chunk::Language;
use crate::complete::{self, Completer, Retrieval};
use crate::config::{self, Config, Layers};
use crate::dataset::{self, EvalTask};
use crate::eval::history;
use crate::eval::{self, Figures, Condition, first_line, percentile};
use crate::generate::Generator;
use crate::paths::Paths;
use crate::session;

/// Model selection shared by the commands.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A bundled model (qwen2.5-coder-0.5b, smollm2-135m), a GGUF path, hf:OWNER/REPO/FILE.gguf[@REVISION]
    /// or ollama:NAME[:TAG], run with llama.cpp; default: kenning.toml's `[generation]` (for `ask`,
    /// `[ask.generation]` first), else qwen2.5-coder-0.5b.
    #[arg(long)]
    model: Option<String>,
    /// CPU threads for the model, reading the prompt and generating (default: all the cores
    /// reading, at most 4 generating).
    #[arg(long)]
    threads: Option<usize>,
    /// A configuration setting over kenning.toml's, as KEY=VALUE with a dotted key and a TOML
    /// value (`--set completion.layout='"spm"'`, `--set completion.prompt_tokens=768`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
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
    /// Tasks, one JSON object per line: {"id", "path", "prefix", "suffix", "expected"}. Default:
    /// lines of the repository's held-out test files (the split `kenning train` trained without).
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// The repository the tasks come from (its index is used for retrieval).
    #[arg(long, short = 'w', default_value = ".")]
    workspace: PathBuf,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    model: ModelArgs,
    /// none: the model alone; rag: with retrieved context; ft: with the fine-tuned adapter;
    /// hybrid: both.
    #[arg(long, value_enum, default_value = "rag")]
    mode: Condition,
    /// Run the four modes, each in a process of its own, and print them side by side.
    #[arg(long)]
    all: bool,
    /// With --all: only these modes (comma-separated), e.g. `ft,hybrid` for another adapter, to
    /// compare with a run that has none and rag already (`kenning compare`).
    #[arg(long, value_enum, value_delimiter = ',', requires = "all")]
    modes: Vec<Condition>,
    /// With --all: keep the run in DIR as it goes (chunks of 25 tasks, every mode's scores on each):
    /// stopped at any point, the same command carries on where it was. At the end DIR/MODE.json
    /// holds each mode's scores (for `kenning compare`).
    #[arg(long, value_name = "DIR", requires = "all")]
    out: Option<PathBuf>,
    /// With --all: how many runs at once (each a process of its own, with its share of the cores
    /// unless --threads says).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "all", value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// The adapter for ft and hybrid (default: kenning.toml's, else the one `kenning train` wrote;
    /// with --split time, only the one `kenning train SNAPSHOT` wrote).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The same as --mode none (kept for scripts).
    #[arg(long, hide = true)]
    no_retrieval: bool,
    /// Where tasks come from when --tasks is not given: `files`, lines of held-out files (the
    /// split `kenning train` trained without); `time`, lines added to the git history after a
    /// commit, with retrieval from the repository as it was at that commit (nothing a task asks for
    /// can be in the index).
    #[arg(long, value_enum, default_value = "files")]
    split: SplitKind,
    /// With --split time: the commit to split at (default: where the last 10 % of the history's
    /// added lines begin).
    #[arg(long, value_name = "REV")]
    split_at: Option<String>,
    /// With --split time: the commit whose added lines are the tasks (default HEAD). Pin it (and
    /// --split-at) to ask the same tasks in a later run.
    #[arg(long, value_name = "REV")]
    until: Option<String>,
    /// With --split time: what the tasks ask for, comma-separated: `line` (the whole line after
    /// its indentation), `call` (the rest of the line from the first name it calls), `rest` (the
    /// rest of the line from a word boundary in its middle), `block` (a new function's body, 2 to
    /// 10 lines). Files give one of each in turn. Default: all four.
    #[arg(long, value_enum, value_delimiter = ',')]
    kinds: Option<Vec<history::TaskKind>>,
    /// Only the first N tasks (default: 40 for held-out files, 500 for the time split).
    #[arg(long)]
    limit: Option<usize>,
    /// Ask each task first with its last N bytes not typed yet (the engine's cache then holds that
    /// prompt, as while typing), then as written: compare with `--set generation.shift_cache=false`
    /// to measure the cache entries moved past typed text (at most 24 tokens typed are moved).
    #[arg(long, value_name = "N", default_value_t = 0)]
    typed_before: usize,
    /// Print one JSON object with the figures.
    #[arg(long)]
    json: bool,
    /// Generate nothing (no model is loaded): print, one JSON line per task, the context its prompt
    /// would hold (path, lines and source of each snippet, in prompt order). Two builds or settings
    /// compared this way show which tasks a change of context selection touches.
    #[arg(long, conflicts_with_all = ["all", "save_scores", "baseline", "typed_before"])]
    context_only: bool,
    /// Print each task's prediction to stderr.
    #[arg(long)]
    verbose: bool,
    /// Print to stderr how many tasks are done and an estimate of the time left (`kenning train`
    /// asks its runs for it; `--all` prints a line per chunk done).
    #[arg(long)]
    progress: bool,
    /// Write the figures with every task's score to this file (JSON), to compare a later run with.
    #[arg(long, value_name = "FILE")]
    save_scores: Option<PathBuf>,
    /// Compare this run task by task with one saved by --save-scores: the mean difference in
    /// edit similarity and exact match with 95 % intervals (bootstrap over files), helped / hurt.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitKind {
    Files,
    Time,
}

/// `--split time`: the split commit, its snapshot (extracted once, indexed once), and the tasks
/// from the lines added after it.
fn time_split(paths: &Paths, root: &Path, args: &EvalArgs, mode: Condition) -> Result<history::TimeSplit> {
    if args.tasks.is_some() {
        bail!("--split time makes its own tasks: give either --tasks or --split time");
    }
    if args.target.index_dir.is_some() {
        bail!("--split time searches an index of the split commit, which it builds itself: leave out --index-dir");
    }
    let wanted = args.limit.unwrap_or(500);
    let prepared = history::prepare(paths, root, args.split_at.as_deref(), args.until.as_deref(), wanted, args.kinds.as_deref().unwrap_or(history::DEFAULT_KINDS))?;
    let (commit, snapshot, set) = (&prepared.split.at, &prepared.snapshot, &prepared.tasks);
    if mode.adapter() && prepared.adapter.is_none() && args.adapter.is_none() {
        bail!(
            "ft and hybrid with --split time need an adapter trained at the split: run `kenning train {}` first (or give --adapter DIR, trained without the lines added after {})",
            snapshot.display(),
            commit.short()
        );
    }
    if !args.json {
        eprintln!(
            "{} tasks from lines added after {} up to {}, in {} of the {} files with added lines ({} candidate tasks; {} lines refused: the line existed at the split){}",
            set.tasks.len(),
            commit.short(),
            prepared.split.until.short(),
            set.tasks.iter().map(|t| t.path.as_str()).collect::<std::collections::HashSet<_>>().len(),
            prepared.files_changed,
            set.candidates,
            set.leaked,
            if set.tasks.len() < wanted { format!("; fewer than the {wanted} asked for") } else { String::new() },
        );
        eprintln!("retrieval reads the repository as it was at {}: {}", commit.short(), snapshot.display());
    }
    if mode.retrieval() || args.all {
        // Incremental: a finished index is checked and kept, an interrupted one completed.
        let mut command = crate::paths::this_binary().context("cannot find this kenning binary")?;
        if !args.json {
            eprintln!("indexing the snapshot (once; later runs only check it)…");
        }
        let status = command.arg("--cache-dir").arg(paths.cache()).arg("index").arg(snapshot).stdout(std::process::Stdio::null()).status()?;
        if !status.success() {
            bail!("indexing {} failed ({status})", snapshot.display());
        }
    }
    Ok(prepared)
}

/// The workspace's configuration with the command-line overrides applied.
fn config_for(root: &Path, model: &ModelArgs) -> Result<Config> {
    let mut config = config_with(root, &model.set)?;
    with_model(&mut config.generation, model.model.as_deref(), model.threads);
    Ok(config)
}

/// The workspace's configuration with `--set KEY=VALUE` settings (TOML values) over it.
pub(super) fn config_with(root: &Path, set: &[String]) -> Result<Config> {
    let mut layers = Layers::from_workspace(root)?;
    if !set.is_empty() {
        // Grouped by table: TOML allows each table header once.
        let mut tables: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
        for setting in set {
            let (key, value) = setting.split_once('=').with_context(|| format!("--set {setting}: expected KEY=VALUE"))?;
            let (table, key) = key.trim().rsplit_once('.').unwrap_or(("", key.trim()));
            tables.entry(table).or_default().push_str(&format!("{key} = {}\n", value.trim()));
        }
        let text: String = tables.iter().map(|(t, lines)| if t.is_empty() { lines.clone() } else { format!("[{t}]\n{lines}") }).collect();
        layers.set_toml("--set", &text)?;
    }
    Ok(layers.resolve()?)
}

/// `--model NAME` runs NAME with llama.cpp in place of the configured model (the llama.cpp settings
/// of kenning.toml and `--set` still hold; its adapter and prompt format do not); `--threads N` is
/// the model's threads both reading the prompt and generating, as llama.cpp's `-t` (a prompt read
/// on more threads than the process was given would spin against the other processes' threads).
fn with_model(generation: &mut config::Generation, model: Option<&str>, threads: Option<usize>) {
    if let Some(name) = model {
        if !matches!(generation, config::Generation::Llama { .. }) {
            *generation = config::Generation::default();
        }
        if let config::Generation::Llama { model, adapter, family, .. } = generation {
            name.clone_into(model);
            *adapter = None;
            *family = None;
        }
    }
    if let (Some(t), config::Generation::Llama { threads, prefill_threads, .. }) = (threads, generation) {
        *threads = t;
        *prefill_threads = t;
    }
}

async fn load_model(paths: &Paths, config: &Config) -> Result<Option<Arc<dyn Generator>>> {
    Ok(session::load_generator(&config.generation, paths).await?)
}

pub async fn ask_cmd(paths: &Paths, args: AskArgs) -> Result<()> {
    let root = super::workspace_root(&args.workspace)?;
    let dir = index_dir(paths, &args.target, &root);
    if !dir.exists() && args.target.shared(&root).is_none() {
        bail!("no index for {} at {}: run `kenning index {}` first", root.display(), dir.display(), root.display());
    }
    let store = open_store(paths, &args.target, &root, &dir).await?;
    let config = config_for(&root, &args.model)?;
    let embedder = if args.no_embed || !config.index.embeddings { None } else { Some(load_embedder(paths, 0)?) };
    let generator = if args.no_model {
        None
    } else {
        // `--model` answers; else `[ask.generation]`, else the completion model.
        let generation = if args.model.model.is_some() { &config.generation } else { config.ask.generation(&config.generation) };
        let model = session::load_generator(generation, paths).await.context("cannot load the model (use --no-model for an extractive answer)")?;
        model.map(|g| (g, generation.family()))
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

/// Retrieval from the workspace's own index (none when it is not indexed, said on stderr).
pub(super) async fn workspace_retrieval(paths: &Paths, root: &Path, config: &Config) -> Result<Retrieval> {
    retrieval_for(paths, &Target::default(), root, config, true).await
}

async fn retrieval_for(paths: &Paths, target: &Target, root: &Path, config: &Config, enabled: bool) -> Result<Retrieval> {
    if !enabled {
        return Ok(Retrieval::default());
    }
    let dir = index_dir(paths, target, root);
    if !dir.exists() && target.shared(root).is_none() {
        eprintln!("note: {} is not indexed (run `kenning index {}`); completing without retrieval", root.display(), root.display());
        return Ok(Retrieval::default());
    }
    let store = Arc::new(open_store(paths, target, root, &dir).await?);
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
    let completer = Completer::new(generator, config.generation.family(), config.completion.one_shot());
    let rel = file.strip_prefix(&root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
    let request = complete::CompletionRequest {
        repo: session::workspace_name(&root),
        language: Language::from_path(&rel),
        path: rel,
        text,
        offset,
        buffers: Vec::new(),
    };
    let started = Instant::now();
    // One request, no editor session before it: the context an editor's ring would hold is
    // gathered first.
    completer.prepare(&request, &retrieval).await;
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

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The runs compared against (files written by `kenning eval --save-scores`; any number, on
    /// one or many repositories).
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    base: Vec<PathBuf>,
    /// The runs compared with them, task by task (matched by repository and task id).
    #[arg(long = "with", required = true, num_args = 1.., value_name = "FILE")]
    other: Vec<PathBuf>,
    /// Print one JSON object with every group.
    #[arg(long)]
    json: bool,
}

pub fn compare_cmd(args: CompareArgs) -> Result<()> {
    let read = |files: &[PathBuf]| files.iter().map(|f| read_saved(f)).collect::<Result<Vec<Figures>>>();
    let (base, other) = (read(&args.base)?, read(&args.other)?);
    let c = eval::compare::compare(&base, &other, 0).map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    let mode = |runs: &[Figures]| runs.iter().map(|f| f.mode.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join("+");
    let (a, b) = match (mode(&base), mode(&other)) {
        (a, b) if a == b => ("base".to_owned(), "other".to_owned()),
        ab => ab,
    };
    println!("{b} against {a}: differences in points with 95 % intervals (bootstrap over files)");
    // The label column fits the longest label (a repository's directory name can be long).
    let w = c.groups.iter().map(|g| g.label.chars().count()).max().unwrap_or(0).max(22);
    // Identifier exact match: a column when the runs recorded it (scores saved before did not).
    let names = c.groups.iter().all(|g| g.paired.identifier_match.is_some());
    let (names_head, names_sub) = if names { (format!(" {:<22}", "identifier match"), format!(" {:<22}", format!("{b} - {a}"))) } else { Default::default() };
    println!("{:<w$} {:>5} {:>5} {:>6} {:>6}  {:<22} {:<22}{names_head} {:>6} {:>5}", "", "tasks", "files", "ES", "ES", "edit similarity", "exact match", "helped", "hurt");
    println!("{:<w$} {:>5} {:>5} {:>6} {:>6}  {:<22} {:<22}{names_sub}", "", "", "", a, b, format!("{b} - {a}"), format!("{b} - {a}"));
    for g in &c.groups {
        let p = &g.paired;
        let interval = |i: &eval::Interval| format!("{:+5.1} [{:+5.1}, {:+5.1}]", i.mean, i.low, i.high);
        let names_cell = p.identifier_match.filter(|_| names).map_or_else(String::new, |i| format!(" {:<22}", interval(&i)));
        println!(
            "{:<w$} {:>5} {:>5} {:>6.1} {:>6.1}  {:<22} {:<22}{names_cell} {:>5.0}% {:>4.0}%",
            g.label,
            p.tasks,
            p.files,
            g.base_similarity,
            g.other_similarity,
            interval(&p.edit_similarity),
            interval(&p.exact_match),
            p.helped * 100.0,
            p.hurt * 100.0
        );
    }
    if c.only_base + c.only_other > 0 {
        println!("left out: {} tasks only the base ran, {} only the other", c.only_base, c.only_other);
    }
    Ok(())
}

/// A run written by `kenning eval --save-scores`.
fn read_saved(file: &Path) -> Result<Figures> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a file written by `kenning eval --save-scores`", file.display()))
}

/// A run's identifier exact match as a percentage, `-` for scores saved before it was recorded.
pub(super) fn identifier_share(f: &Figures) -> String {
    f.identifier_match.map_or_else(|| "-".to_owned(), |m| format!("{:.1}%", m * 100.0))
}

/// One line of a paired comparison: `b` against `a`.
fn print_paired(label: &str, p: &eval::Paired) {
    let verdict = |i: &eval::Interval| if i.above_zero() { "better" } else if i.below_zero() { "worse" } else { "no clear difference" };
    let names = p.identifier_match.map_or_else(String::new, |i| format!("  identifier match {:+5.1} [{:+5.1}, {:+5.1}]", i.mean, i.low, i.high));
    println!(
        "{label:<16} edit similarity {:+5.1} [{:+5.1}, {:+5.1}] ({})  exact match {:+5.1} [{:+5.1}, {:+5.1}]{names}  helped {:.0}% hurt {:.0}%  ({} tasks, {} files)",
        p.edit_similarity.mean,
        p.edit_similarity.low,
        p.edit_similarity.high,
        verdict(&p.edit_similarity),
        p.exact_match.mean,
        p.exact_match.low,
        p.exact_match.high,
        p.helped * 100.0,
        p.hurt * 100.0,
        p.tasks,
        p.files,
    );
}

/// The evaluation tasks: `--tasks`, else lines of the held-out test files.
fn eval_tasks(paths: &Paths, root: &Path, args: &EvalArgs) -> Result<Vec<EvalTask>> {
    let tasks = match &args.tasks {
        Some(file) => eval::read_tasks(file, args.limit)?,
        None => {
            let test_files = eval::held_out_files(paths, root)?;
            let tasks = dataset::eval_tasks(root, &test_files, args.limit.unwrap_or(40), 0);
            if !args.json {
                eprintln!("{} tasks from {} held-out test files of {}", tasks.len(), test_files.len(), root.display());
            }
            tasks
        }
    };
    if tasks.is_empty() {
        bail!("no tasks to evaluate");
    }
    Ok(tasks)
}

/// The adapter for ft/hybrid: `--adapter`, else the configured one, else `kenning train`'s output.
fn eval_adapter(paths: &Paths, root: &Path, config: &Config, args: &EvalArgs) -> Option<PathBuf> {
    use config::Generation as G;
    if let Some(a) = &args.adapter {
        return Some(a.clone());
    }
    if let G::Llama { adapter: Some(a), .. } | G::Mlx { adapter: Some(a), .. } = &config.generation {
        return Some(a.clone());
    }
    let trained = paths.training_for(root).join("adapters");
    trained.join(kenning_formats::adapter::WEIGHTS_FILE).is_file().then_some(trained)
}

pub async fn eval_cmd(paths: &Paths, args: EvalArgs) -> Result<()> {
    use config::Generation as G;
    let root = super::workspace_root(&args.workspace)?;
    let mode = if args.no_retrieval { Condition::None } else { args.mode };
    if (args.split_at.is_some() || args.until.is_some() || args.kinds.is_some()) && args.split != SplitKind::Time {
        bail!("--split-at, --until and --kinds are for --split time");
    }
    let split = if args.split == SplitKind::Time { Some(time_split(paths, &root, &args, mode)?) } else { None };
    let tasks = match &split {
        Some(s) => s.tasks.tasks.clone(),
        None => eval_tasks(paths, &root, &args)?,
    };
    // Retrieval reads the snapshot at the split (the configuration stays the repository's own).
    let searched = split.as_ref().map_or_else(|| root.clone(), |s| s.snapshot.clone());
    let searched_index = split.as_ref().map(|s| paths.index_for(&s.snapshot));
    let mut config = config_for(&root, &args.model)?;
    let adapter = match &split {
        // Never the configured adapter: it may have been trained on the lines the tasks ask for.
        Some(s) => args.adapter.clone().or_else(|| s.adapter.clone()),
        None => eval_adapter(paths, &root, &config, &args),
    };
    if args.all {
        return eval_all(paths, &root, searched_index.as_deref(), &args, &config, &tasks, adapter.as_deref());
    }
    let wanted = if mode.adapter() && !args.context_only {
        Some(adapter.clone().context("ft and hybrid need an adapter: run `kenning train`, or give --adapter DIR")?)
    } else {
        None
    };
    match &mut config.generation {
        G::Llama { adapter, .. } | G::Mlx { adapter, .. } => *adapter = wanted,
        _ if mode.adapter() && !args.context_only => bail!("ft and hybrid need an in-process engine (llama or mlx) to apply the adapter"),
        _ => {}
    }
    let retrieval = retrieval_for(paths, &args.target, &searched, &config, mode.retrieval()).await?;
    let repo = session::workspace_name(&root);
    if args.context_only {
        if config.completion.draft_query && mode.retrieval() {
            bail!("completion.draft_query gathers context around the model's draft: --context-only cannot show it without the model");
        }
        // The context is chosen without the model, so none is loaded.
        eval::contexts(&config.completion, &retrieval, &repo, &tasks, |task, snippets| {
            let context: Vec<serde_json::Value> = snippets
                .iter()
                .map(|s| serde_json::json!({"path": s.path, "start_line": s.start_line, "end_line": s.end_line, "source": s.source}))
                .collect();
            println!("{}", serde_json::json!({"id": task.id, "context": context}));
        })
        .await;
        return Ok(());
    }
    let generator = load_model(paths, &config).await?.context("no generation model is configured")?;
    let setup = eval::Setup { generator, family: config.generation.family(), settings: &config.completion, retrieval: &retrieval, repo: &repo, typed_before: args.typed_before };
    let verbose = args.verbose;
    // A line rewritten in place would run into the --verbose lines.
    let mut progress = args.progress.then(|| Progress::new(mode.name(), tasks.len(), !verbose));
    let (figures, timings) = eval::run(mode, &setup, &tasks, |task, score, predicted| {
        if verbose {
            eprintln!("{} sim {:.2}\n  expected  {}\n  predicted {}", task.id, score.similarity, first_line(&task.expected), first_line(predicted));
        }
        if let Some(p) = &mut progress {
            p.done_one();
        }
    })
    .await?;
    let (mut building, mut first_token) = (timings.building, timings.first_token);
    if let Some(file) = &args.save_scores {
        std::fs::write(file, serde_json::to_string(&figures)?).with_context(|| format!("writing {}", file.display()))?;
    }
    let baseline = match &args.baseline {
        Some(file) => {
            let saved = read_saved(file)?;
            Some(eval::paired(&saved.scores, &figures.scores, 0).with_context(|| format!("{} has none of these tasks", file.display()))?)
        }
        None => None,
    };
    if args.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "tasks {}  exact match {:.1}%  edit similarity {:.1}%  identifier match {}  mean latency {:.0} ms  peak RSS {:.0} MiB  (mode {})",
            figures.tasks,
            figures.exact_match * 100.0,
            figures.edit_similarity * 100.0,
            identifier_share(&figures),
            figures.mean_latency_ms,
            figures.peak_rss_mib,
            figures.mode,
        );
        let (b50, b95) = (percentile(&mut building, 0.5), percentile(&mut building, 0.95));
        let (f50, f95) = (percentile(&mut first_token, 0.5), percentile(&mut first_token, 0.95));
        println!("  retrieval + prompt building  p50 {b50:>8.1} ms  p95 {b95:>8.1} ms");
        println!("  time to first token          p50 {f50:>8.1} ms  p95 {f95:>8.1} ms");
        if f50 > 0.0 {
            println!("  retrieval + prompt / first token at p50: {:.1}% (goal < 5%)", b50 / f50 * 100.0);
        }
        if let Some(p) = &baseline {
            print_paired("vs the baseline", p);
        }
    }
    Ok(())
}

/// Tasks done and the time left, on stderr: one line rewritten on a terminal, else a line at every
/// tenth of the tasks (logs).
struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    started: std::time::Instant,
    terminal: bool,
}

impl Progress {
    /// `rewrite`: rewrite one line in place when stderr is a terminal.
    fn new(label: &'static str, total: usize, rewrite: bool) -> Self {
        use std::io::IsTerminal;
        Self { label, total, done: 0, started: std::time::Instant::now(), terminal: rewrite && std::io::stderr().is_terminal() }
    }

    fn done_one(&mut self) {
        self.done += 1;
        let step = self.total.div_ceil(10).max(1);
        if !self.terminal && !self.done.is_multiple_of(step) && self.done != self.total {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = elapsed / self.done as f64 * (self.total - self.done) as f64;
        let line = format!("{}: {}/{} tasks, {} elapsed, about {} left", self.label, self.done, self.total, kenning_formats::clock(elapsed), kenning_formats::clock(left));
        if self.terminal {
            eprint!("\r{line}   {}", if self.done == self.total { "\n" } else { "" });
        } else {
            eprintln!("{line}");
        }
    }
}

impl Drop for Progress {
    /// A run cut short leaves its line ended, so what follows (an error) starts a line of its own.
    fn drop(&mut self) {
        if self.terminal && self.done < self.total {
            eprintln!();
        }
    }
}

/// `kenning eval --json` on a task file in a process of its own, so that each mode's peak memory
/// is its own (`--all`, and `kenning train` measuring its adapter).
pub(super) struct EvalProcess<'a> {
    pub paths: &'a Paths,
    pub root: &'a Path,
    /// The index retrieval reads, when not the workspace's own.
    pub index_dir: Option<&'a Path>,
    /// `--model` (default: the workspace's configuration).
    pub model: Option<&'a str>,
    pub threads: Option<usize>,
    /// `--set KEY=VALUE` settings.
    pub set: &'a [String],
    pub typed_before: usize,
    /// Ask the run for its progress on stderr.
    pub progress: bool,
}

impl EvalProcess<'_> {
    /// The figures of `mode` on the tasks in `tasks_file`; its progress and errors go to stderr.
    pub fn run(&self, mode: Condition, tasks_file: &Path, adapter: Option<&Path>) -> Result<Figures> {
        let mut command = crate::paths::this_binary().context("cannot find this kenning binary")?;
        command.arg("--cache-dir").arg(self.paths.cache()).arg("eval").arg("--json").arg("--mode").arg(mode.name());
        command.arg("--tasks").arg(tasks_file).arg("--workspace").arg(self.root);
        if let Some(d) = self.index_dir {
            command.arg("--index-dir").arg(d);
        }
        if let Some(m) = self.model {
            command.arg("--model").arg(m);
        }
        if let Some(t) = self.threads {
            command.arg("--threads").arg(t.to_string());
        }
        for setting in self.set {
            command.arg("--set").arg(setting);
        }
        if self.typed_before > 0 {
            command.arg("--typed-before").arg(self.typed_before.to_string());
        }
        if let Some(a) = adapter {
            command.arg("--adapter").arg(a);
        }
        if self.progress {
            command.arg("--progress");
        }
        let output = command.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("starting {} in a process of its own", std::env::current_exe().unwrap_or_default().display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match (output.status.success(), stdout.lines().last().and_then(|l| serde_json::from_str::<Figures>(l).ok())) {
            (true, Some(f)) => Ok(f),
            _ => bail!("failed ({})", output.status),
        }
    }
}

/// What decides an `--all` run's scores besides its tasks: carrying on a run kept with `--out` is
/// refused when any of it changed. Threads are left out (they change the time, not the text).
fn run_setup(config: &Config, adapter: Option<&Path>, index: Option<&Path>, typed_before: usize) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut generation = serde_json::to_value(&config.generation)?;
    if let Some(g) = generation.as_object_mut() {
        g.remove("threads");
        g.remove("prefill_threads");
    }
    let weights = match adapter {
        Some(a) => {
            let file = if a.is_dir() { a.join(kenning_formats::adapter::WEIGHTS_FILE) } else { a.to_owned() };
            let bytes = std::fs::read(&file).with_context(|| format!("reading the adapter {}", file.display()))?;
            Some(blake3::hash(&bytes).to_hex().to_string())
        }
        None => None,
    };
    let setup = serde_json::json!({
        "generation": generation,
        "completion": config.completion,
        "index_settings": config.index,
        "adapter": adapter,
        "adapter_weights": weights,
        "index": index,
        "typed_before": typed_before,
    });
    Ok(setup.as_object().cloned().unwrap_or_default())
}

/// `--all`: each mode on the same tasks, in chunks, each chunk of each mode in a process of its own
/// (so peak memory is each mode's), `--jobs` of them at once; with `--out`, kept as it goes and
/// carried on. `index`: the index retrieval reads (the time split's snapshot), else `--index-dir` or
/// the workspace's own.
fn eval_all(paths: &Paths, root: &Path, index: Option<&Path>, args: &EvalArgs, config: &Config, tasks: &[EvalTask], adapter: Option<&Path>) -> Result<()> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let index_dir = index.or(args.target.index_dir.as_deref());
    let temporary;
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::tempdir()?;
            temporary.path().join("run")
        }
    };
    let run = eval::run_dir::RunDir::open(&out, tasks, run_setup(config, adapter, index_dir, args.typed_before)?)?;
    let jobs = usize::from(args.jobs);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let process = EvalProcess {
        paths,
        root,
        index_dir,
        model: args.model.model.as_deref(),
        threads: args.model.threads.or((jobs > 1).then(|| (cores / jobs).max(1))),
        set: &args.model.set,
        typed_before: args.typed_before,
        progress: false,
    };
    let asked: Vec<Condition> = Condition::ALL.into_iter().filter(|m| args.modes.is_empty() || args.modes.contains(m)).collect();
    let modes: Vec<Condition> = asked.iter().copied().filter(|m| !m.adapter() || adapter.is_some()).collect();
    // Chunk by chunk, every mode on each: a run stopped early has all of them on the same tasks.
    let units: Vec<(usize, Condition)> = (0..run.chunks()).flat_map(|i| modes.iter().map(move |&m| (i, m))).filter(|&(i, m)| run.done(m, i).is_none()).collect();
    let show = args.progress || !args.json;
    if show {
        let already = run.chunks() * modes.len() - units.len();
        let kept = args.out.as_ref().map_or_else(String::new, |d| format!(", kept in {}", d.display()));
        eprintln!(
            "{} tasks in {} chunks × {} modes{kept}{}; {} job(s)",
            tasks.len(),
            run.chunks(),
            modes.len(),
            if already > 0 { format!(" ({already} runs already done)") } else { String::new() },
            jobs
        );
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<std::collections::BTreeMap<&'static str, String>> = Mutex::default();
    let finished = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(&(i, mode)) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(mode.name()) {
                        continue;
                    }
                    let ran = Instant::now();
                    let result = process.run(mode, &run.chunk_file(i), adapter.filter(|_| mode.adapter())).and_then(|f| run.save(mode, i, &f).map(|()| f));
                    let done = finished.fetch_add(1, Ordering::Relaxed) + 1;
                    match result {
                        Ok(f) if show => {
                            let elapsed = started.elapsed().as_secs_f64();
                            let left = elapsed / done as f64 * (units.len() - done) as f64;
                            eprintln!(
                                "{} on chunk {}/{}: {:.1} % edit similarity ({} tasks in {}); {done}/{} runs, {} elapsed, about {} left",
                                mode.name(),
                                i + 1,
                                run.chunks(),
                                f.edit_similarity * 100.0,
                                f.tasks,
                                kenning_formats::clock(ran.elapsed().as_secs_f64()),
                                units.len(),
                                kenning_formats::clock(elapsed),
                                kenning_formats::clock(left),
                            );
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let message = format!("chunk {}/{}: {e:#}", i + 1, run.chunks());
                            eprintln!("{}: {message}", mode.name());
                            failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(mode.name(), message);
                        }
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut rows = Vec::new();
    for mode in asked {
        if mode.adapter() && adapter.is_none() {
            let train = if index.is_some() { "`kenning train` on the snapshot named above".to_owned() } else { format!("`kenning train {}`", root.display()) };
            rows.push(Err(format!("{}: no adapter (run {train}, or give --adapter DIR)", mode.name())));
        } else if let Some(message) = failed.get(mode.name()) {
            rows.push(Err(format!("{}: {message}", mode.name())));
        } else {
            match run.merged(mode)? {
                Some((f, _)) => rows.push(Ok(f)),
                None => rows.push(Err(format!("{}: no chunk done", mode.name()))),
            }
        }
    }
    if args.json {
        let figures: Vec<&Figures> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    println!("{} tasks; adapter {}", tasks.len(), adapter.map_or_else(|| "none".to_owned(), |a| a.display().to_string()));
    println!("{:<8} {:>12} {:>16} {:>12} {:>13} {:>14} {:>14}", "mode", "exact match", "edit similarity", "identifiers", "p50 latency", "mean latency", "peak RSS");
    for row in &rows {
        match row {
            Ok(f) => println!(
                "{:<8} {:>11.1}% {:>15.1}% {:>12} {:>10.0} ms {:>11.0} ms {:>10.0} MiB",
                f.mode,
                f.exact_match * 100.0,
                f.edit_similarity * 100.0,
                identifier_share(f),
                f.p50_latency_ms,
                f.mean_latency_ms,
                f.peak_rss_mib
            ),
            Err(e) => println!("{e}"),
        }
    }
    // Paired, on the same tasks: each mode against the model alone, and both against retrieval.
    let find = |name: &str| rows.iter().filter_map(|r| r.as_ref().ok()).find(|f| f.mode == name);
    let pairs = [("rag", "none"), ("ft", "none"), ("hybrid", "none"), ("hybrid", "rag")];
    let mut header = false;
    for (b, a) in pairs {
        if let (Some(fa), Some(fb)) = (find(a), find(b))
            && let Some(p) = eval::paired(&fa.scores, &fb.scores, 0)
        {
            if !header {
                println!("paired differences, points, 95% intervals (bootstrap over files):");
                header = true;
            }
            print_paired(&format!("{b} - {a}"), &p);
        }
    }
    if rows.iter().all(Result::is_err) {
        bail!("no mode ran");
    }
    if !failed.is_empty() {
        let kept = if args.out.is_some() { "run the same command again to retry what failed" } else { "see the errors above" };
        bail!("{} mode(s) failed on a chunk (their rows above say where): {kept}", failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn model_and_threads_from_the_command_line() {
        use config::Generation;
        // A named model keeps the llama.cpp settings given, not the configured adapter or format.
        let mut g = Generation::Llama {
            model: "a.gguf".into(),
            adapter: Some("adapters".into()),
            threads: 3,
            prefill_threads: 0,
            shift_cache: false,
            weights: config::Weights::AsIs,
            context: 2048,
            family: Some(crate::prompt::Family::QwenCoder),
        };
        with_model(&mut g, Some("smollm2-135m"), Some(1));
        let Generation::Llama { model, adapter, threads, prefill_threads, shift_cache, weights, context, family } = g else { panic!("{g:?}") };
        assert_eq!((model.as_str(), adapter, family), ("smollm2-135m", None, None));
        assert_eq!((threads, prefill_threads), (1, 1), "--threads is the prompt's threads too");
        assert_eq!((shift_cache, weights, context), (false, config::Weights::AsIs, 2048));
        // Another backend is replaced by llama.cpp's defaults; without --threads they stay 0 (auto).
        let mut g = Generation::None;
        with_model(&mut g, Some("smollm2-135m"), None);
        assert!(matches!(&g, Generation::Llama { model, threads: 0, prefill_threads: 0, context: 4096, .. } if model == "smollm2-135m"), "{g:?}");
        // Without --model the configured model stays and only the threads change.
        let mut g = Generation::default();
        with_model(&mut g, None, Some(2));
        assert!(matches!(&g, Generation::Llama { threads: 2, prefill_threads: 2, .. }), "{g:?}");
        let mut g = Generation::None;
        with_model(&mut g, None, Some(2));
        assert_eq!(g, Generation::None);
    }
}
