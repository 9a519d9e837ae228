//! `kenning dataset` (training data from the repository) and `kenning train` (dataset → LoRA
//! fine-tune with `kenning-train` → adapter registered for the workspace).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use kenning_formats::adapter::STATE_FILE;

use super::assist::EvalProcess;
use crate::dataset::{self, DatasetOptions, Split};
use crate::eval::{self, Condition, Figures};
use crate::finetune::{self, Backend, Registered, TrainRun};
use crate::formats::{fused_gguf, lora_gguf};
use crate::paths::Paths;
use crate::prompt::Family;

#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// Repository root.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Output directory (train.jsonl, valid.jsonl, test.jsonl, dataset.json).
    #[arg(long)]
    out: PathBuf,
    /// Prompt family of the model to train (qwen-coder, star-coder2, …, plain); or give --model.
    #[arg(long, value_parser = parse_family)]
    family: Option<Family>,
    /// The model to train: its family is detected from the name.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Longest example in tokens (counted with the model's tokenizer when it is at hand).
    #[arg(long, default_value_t = 1024)]
    max_seq_length: usize,
    /// Fill-in-the-middle examples per 1,000 bytes of code, up to (for a family without FIM tokens,
    /// completions of the code before a middle that ends its line). Default: 1 for a family with
    /// FIM tokens, 0 for one without, as `kenning train`.
    #[arg(long, value_parser = non_negative)]
    fim_per_kb: Option<f64>,
    /// The share of those examples (0 to 1) that carry the context a completion at their place
    /// carries, from the repository's index (see `kenning train --context-share`).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    context_share: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_family(s: &str) -> Result<Family, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown family {s:?}: qwen-coder, star-coder2, deepseek-coder, code-llama, codestral, code-gemma, plain"))
}

pub(super) fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

fn options(family: Family, max_seq_length: usize, fim_per_kb: f64, seed: u64) -> DatasetOptions {
    DatasetOptions { family, max_seq_length, fim_per_kb, seed, ..DatasetOptions::default() }
}

/// Mines and writes a dataset, printing counts and a sample; `context_share` of the
/// fill-in-the-middle examples carry what a completion at their place would (from the workspace's
/// index). Examples are sized with the model's tokenizer when it is at hand, else at an estimated
/// 3.5 bytes per token. Called on a blocking thread of the runtime (the index is read through it).
fn mine_and_report(paths: &Paths, root: &Path, model: &str, out_dir: &Path, options: &DatasetOptions, context_share: f64) -> Result<dataset::Dataset> {
    if context_share == 0.0 {
        return mine_with_context(paths, root, model, out_dir, options, None);
    }
    let root = root.canonicalize().with_context(|| format!("{}", root.display()))?;
    context_possible(paths, &root, options.fim_per_kb)?;
    let runtime = tokio::runtime::Handle::current();
    let config = crate::config::Layers::from_workspace(&root)?.resolve()?;
    let retrieval = runtime.block_on(super::assist::workspace_retrieval(paths, &root, &config))?;
    let find = |path: &str, text: &str, offset: usize| {
        let request = crate::complete::CompletionRequest {
            repo: String::new(),
            language: crate::chunk::Language::from_path(path),
            path: path.to_owned(),
            text: text.to_owned(),
            offset,
            buffers: Vec::new(),
        };
        runtime.block_on(crate::complete::context_for(&request, &retrieval, &config.completion))
    };
    let context = dataset::Context { repo: crate::session::workspace_name(&root), share: context_share, snippets: &find };
    mine_with_context(paths, &root, model, out_dir, options, Some(&context))
}

/// [`mine_and_report`], a share of the fill-in-the-middle examples carrying `context`.
fn mine_with_context(paths: &Paths, root: &Path, model: &str, out_dir: &Path, options: &DatasetOptions, context: Option<&dataset::Context>) -> Result<dataset::Dataset> {
    let root = root.canonicalize().with_context(|| format!("{}", root.display()))?;
    let counter = match finetune::tokenizer(paths, model) {
        Ok((counter, from)) => {
            out(&format!("tokens counted with {from}"));
            Some(counter)
        }
        Err(e) => {
            out(&format!("no tokenizer for {model} ({e:#}): sizes estimated at {} bytes per token", options.bytes_per_token));
            None
        }
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} files, eta {eta}").expect("valid template").progress_chars("=> "));
    bar.set_prefix("mining");
    let data = dataset::mine_with(&root, options, counter.as_deref().map(|c| c as dataset::TokenCounter), context, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    data.write(out_dir).with_context(|| format!("writing {}", out_dir.display()))?;
    out(&format!("dataset {} ({:?} format) from {}", out_dir.display(), options.family, root.display()));
    let tokens = if data.tokens_counted { "tokens" } else { "≈tokens" };
    out(&format!("{:<6} {:>6} {:>8} {:>11} {:>10} {:>9}", "split", "files", "fim", "next-token", "bytes", tokens));
    for split in Split::ALL {
        let s = data.stats(split);
        out(&format!("{:<6} {:>6} {:>8} {:>11} {:>10} {:>9}", split.name(), s.files, s.fim, s.next_token, s.bytes, s.tokens));
    }
    if data.tokens_counted {
        out(&format!(
            "sized at {:.2} bytes per token (measured); every example ≤ {} tokens ({} middles that ran over dropped)",
            data.bytes_per_token, options.max_seq_length, data.too_long_dropped
        ));
    }
    if let Some(c) = context {
        out(&format!("{} fill-in-the-middle examples carry a completion's context ({:.0} % asked for; a place with no snippet found carries none)", data.with_context, c.share * 100.0));
    }
    out(&format!("{} duplicate examples dropped; {} files skipped (ignored, secret, binary, too large)", data.duplicates_dropped, data.skipped_files));
    if !data.redacted.is_empty() {
        out(&format!("{} secrets redacted before any example was made (values replaced by <redacted:KIND>):", data.redacted.len()));
        for (path, line, kind) in &data.redacted {
            out(&format!("  {kind} at {path}:{line}"));
        }
    }
    if let Some(sample) = data.examples.iter().find(|e| e.span.is_some()).or(data.examples.first()) {
        let text: String = sample.text.chars().take(600).collect();
        out(&format!("sample ({}, {:?}):\n{text}{}", sample.path, sample.span, if text.len() < sample.text.len() { "…" } else { "" }));
    }
    if data.train.fim + data.train.next_token == 0 {
        bail!("no training examples: no source files in a language kenning parses under {}", root.display());
    }
    Ok(data)
}

pub fn dataset_cmd(paths: &Paths, args: DatasetArgs) -> Result<()> {
    let family = args.family.unwrap_or_else(|| Family::detect(&args.model));
    let options = options(family, args.max_seq_length, args.fim_per_kb.unwrap_or_else(|| default_fim_per_kb(family)), args.seed);
    mine_and_report(paths, &args.path, &args.model, &args.out, &options, args.context_share)?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Repository root.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// MLX model to fine-tune: a bundled model's name or a model directory. Default: the model
    /// the workspace completes with, when kenning train can fine-tune it (an adapter fits only the
    /// model it was trained on), else smollm2-135m.
    #[arg(long)]
    model: Option<String>,
    /// Training iterations (batches of 2 examples). Default: about half an hour's worth on two
    /// laptop cores (90,000 tokens of SmolLM2-135M, 10,000 of any other model), at most two
    /// passes over the examples.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    iters: Option<u32>,
    /// Layers adapted, counted from the last (all of them when more are asked); every projection
    /// of each carries an adapter.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    num_layers: u32,
    /// Tokens of the longest example (longer ones are cut).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(32..=131_072))]
    max_seq_length: u32,
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true, value_parser = positive)]
    learning_rate: f32,
    /// The adapters' rank.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    rank: u32,
    /// What each adapter's update is multiplied by: mlx_lm's raw `scale` (its default, 20, is hot
    /// next to the usual alpha / rank = 2; a lower scale usually wants a higher --learning-rate).
    #[arg(long, default_value_t = 20.0, allow_negative_numbers = true, value_parser = positive)]
    scale: f32,
    /// Fill-in-the-middle examples per 1,000 bytes of code, beside the windows of whole files. For
    /// a model without FIM tokens (SmolLM2) they are completions of the code before a middle that
    /// ends its line, the loss on the completion and its end. Default: 1 for a model with FIM
    /// tokens, 0 for one without (not yet shown to help it).
    #[arg(long, value_parser = non_negative)]
    fim_per_kb: Option<f64>,
    /// The share of those examples (0 to 1) that carry the context a completion at their place
    /// carries (definitions, signatures and similar code from the workspace's index, as
    /// `[completion]` chooses it; never from a held-out file), so that the adapter learns to use
    /// it. Needs the workspace indexed. Default 0 (not yet shown to help).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    context_share: f64,
    /// Write the adapter here (default: next to the workspace's index).
    #[arg(long)]
    adapter_path: Option<PathBuf>,
    /// A setting over the workspace's kenning.toml, as for `kenning eval` (`--set
    /// generation.model='"smollm2-135m"'`): how an editor whose own settings choose the model says
    /// what it completes with, which is what is fine-tuned by default and measured against;
    /// repeatable. kenning.toml is written only as before.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// When to add the adapter to the workspace's kenning.toml. auto: only when it measurably helps
    /// on lines of the held-out test files: with it, completions beat what the workspace completes
    /// with now (its configured model, else qwen2.5-coder-0.5b, without an adapter; retrieval on
    /// both sides when the workspace is indexed), the whole 95 % interval of the difference in
    /// edit similarity above --min-gain.
    /// Until it passes, the new adapter is kept beside the old one (`<adapter path>.candidate`),
    /// so an adapter in use is replaced only by one that passed.
    #[arg(long, value_enum, default_value_t = RegisterWhen::Auto)]
    register: RegisterWhen,
    /// The same as `--register never`.
    #[arg(long, conflicts_with = "register")]
    no_register: bool,
    /// Held-out tasks the adapter is measured on before `--register auto` decides (more: a
    /// narrower interval and a longer wait; about 1 to 10 s each on a laptop's CPU).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    eval_tasks: u32,
    /// Points of edit similarity the interval's lower end must be above for `--register auto`.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = finite)]
    min_gain: f64,
    /// llama.cpp's CPU threads while measuring (default: the cores, at most 4; MLX chooses its own).
    #[arg(long)]
    eval_threads: Option<usize>,
    /// Recompute adapted layers in the backward pass (less memory for long examples, slower).
    #[arg(long)]
    grad_checkpoint: bool,
    /// Train from the start even when a stopped run of the same data and settings could be carried
    /// on (by default the same command run again continues from its last checkpoint, and a run that
    /// finished is not trained again).
    #[arg(long)]
    fresh: bool,
}

/// The model the workspace completes with in this process (llama.cpp or MLX, as kenning.toml and
/// `--set` resolve it, the default model when they configure none); `None` for a server backend or
/// `backend = "none"`, whose completions an adapter trained here cannot take part in.
fn completing_model(root: &Path, set: &[String]) -> Result<Option<String>> {
    use crate::config::Generation as G;
    let config = super::assist::config_with(root, set).context("reading the workspace's configuration")?;
    Ok(match config.generation {
        G::Llama { model, .. } | G::Mlx { model, .. } => Some(model),
        _ => None,
    })
}

impl TrainArgs {
    fn register_when(&self) -> RegisterWhen {
        if self.no_register { RegisterWhen::Never } else { self.register }
    }
}

/// Whether `kenning train` (MLX) can fine-tune `model`: a bundled model, or a model directory with
/// its config.json. The one test, for what a run trains and for what it suggests training.
fn trainable(model: &str) -> bool {
    crate::generate::BundledModel::is_bundled(model) || Path::new(model).join("config.json").is_file()
}

/// What `kenning train` fine-tunes when no `--model` is given and the workspace completes with
/// nothing it can fine-tune.
const FALLBACK_MODEL: &str = "smollm2-135m";

/// What a run fine-tunes and whether it may register the adapter, decided before anything starts.
#[derive(Debug)]
struct Plan {
    model: String,
    /// Why the adapter cannot be registered whatever it measures: the run only trains, as
    /// `--register never` does.
    unregistrable: Option<String>,
    /// What to say first.
    notes: Vec<String>,
}

/// The model a run fine-tunes: the one asked for; else the one the workspace completes with (as
/// kenning.toml and `--set`, an editor's own settings, resolve it) when MLX can train it (a bundled
/// model, or a model directory with its config.json), since an adapter fits only the model it was
/// trained on and `--register auto` measures against what completes now; else [`FALLBACK_MODEL`].
/// An adapter the editor's settings would not use (they choose another model, or a server, over
/// kenning.toml) is only trained; with no `--model`, nothing is (an error says why). Registering
/// that would switch kenning.toml's model is said first too.
fn plan_for(root: &Path, asked: Option<&str>, set: &[String], when: RegisterWhen) -> Result<Plan> {
    // Nothing to choose and nothing to register: nothing read (a kenning.toml that does not parse
    // does not stop it).
    if let (Some(asked), RegisterWhen::Never) = (asked, when) {
        return Ok(Plan { model: asked.to_owned(), unregistrable: None, notes: Vec::new() });
    }
    let alone = completing_model(root, &[])?;
    let editor = if set.is_empty() { alone.clone() } else { completing_model(root, set)? };
    let overridden = match (&alone, &editor) {
        (Some(a), Some(e)) => !same_model(a, e),
        (a, e) => a.is_some() != e.is_some(),
    };
    let (model, why) = match (asked, editor.as_deref()) {
        (Some(asked), _) => (asked.to_owned(), None),
        (None, Some(now)) if trainable(now) => (now.to_owned(), Some("the model the workspace completes with".to_owned())),
        (None, Some(now)) => (FALLBACK_MODEL.to_owned(), Some(format!("kenning train cannot fine-tune {now}, which the workspace completes with"))),
        (None, None) => (FALLBACK_MODEL.to_owned(), Some("the workspace completes through a model server or not at all, which an adapter trained here cannot join".to_owned())),
    };
    let mut notes: Vec<String> = why.iter().map(|why| format!("fine-tuning {model}: {why} (--model to choose)")).collect();
    let unregistrable = (when != RegisterWhen::Never && overridden && !editor.as_deref().is_some_and(|e| same_model(e, &model))).then(|| {
        let chosen = editor.clone().unwrap_or_else(|| "a model server or no model".to_owned());
        format!("the editor's settings (--set) complete with {chosen} over {}, and an adapter for {model} would not reach them", crate::config::FILE_NAME)
    });
    if let Some(why) = &unregistrable {
        if asked.is_none() {
            bail!("{why}: nothing is trained (`kenning train --model {model}` trains it anyway, without registering it)");
        }
        notes.push(format!("note: {why}: it is only trained, as with --register never"));
    } else if let Some(now) = alone.filter(|a| when != RegisterWhen::Never && !same_model(a, &model) && finetune::configured_generation(root).is_none()) {
        // Only where nothing configures generation does registering write kenning.toml.
        let measured = if when == RegisterWhen::Auto && !overridden { format!(", so the adapter is measured against {now}") } else { String::new() };
        notes.push(format!("note: with no [generation] in {}, completions come from {now}; registering this adapter writes one, switching them to {model} with it{measured}", crate::config::FILE_NAME));
    }
    Ok(Plan { model, unregistrable, notes })
}

/// Whether two model names name the same model: equal, or the same file or directory.
fn same_model(a: &str, b: &str) -> bool {
    let canonical = |m: &str| Path::new(m).canonicalize().ok();
    a == b || canonical(a).is_some_and(|p| Some(p) == canonical(b))
}

/// Whether examples of the workspace at `root` can carry context: some are asked for, and there
/// is an index to find it in.
fn context_possible(paths: &Paths, root: &Path, fim_per_kb: f64) -> Result<()> {
    if fim_per_kb == 0.0 {
        bail!("--context-share is for fill-in-the-middle examples, and none are asked for: give --fim-per-kb too");
    }
    if !paths.index_for(root).exists() {
        bail!("--context-share needs the workspace indexed, to find what a completion carries: run `kenning index {}` first", root.display());
    }
    Ok(())
}

/// Fill-in-the-middle examples per 1,000 bytes when none is asked: completions for a family
/// without FIM tokens are not yet shown to help.
fn default_fim_per_kb(family: Family) -> f64 {
    if family.has_fim() { 1.0 } else { 0.0 }
}

fn share(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| (0.0..=1.0).contains(v)).ok_or_else(|| format!("{s:?} is not a share from 0 to 1"))
}

fn positive(s: &str) -> Result<f32, String> {
    s.parse::<f32>().ok().filter(|v| v.is_finite() && *v > 0.0).ok_or_else(|| format!("{s:?} is not a number above 0"))
}

fn non_negative(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| format!("{s:?} is not a number of 0 or more"))
}

fn finite(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| format!("{s:?} is not a number of points"))
}

/// Tokens a default run of `model` trains on: about half an hour of training on two laptop
/// cores, so that mining, training and measuring fit in an hour. SmolLM2-135M trains at about 50
/// tokens a second there (8 layers; 2 AMD EPYC cores, see README); Qwen2.5-Coder-0.5B, with 4.7
/// times the parameters and 3 times the vocabulary, at 6.5 (2 Intel Xeon cores, release build),
/// its validation passes 160 s against 55, and measuring it takes longer too. A model not bundled
/// is taken to be as slow as Qwen.
fn train_tokens(model: &str) -> usize {
    if model == crate::generate::BundledModel::SmolLm2_135m.name() { 90_000 } else { 10_000 }
}

/// Passes over the training examples a default run makes at most: a small repository's few
/// examples are not repeated until they are learnt by heart.
const MAX_EPOCHS: usize = 2;

/// The iterations of a default run over `examples` training examples of `tokens` tokens in all:
/// `budget` tokens' worth, at most [`MAX_EPOCHS`] passes, at least one iteration.
fn default_iters(examples: usize, tokens: usize, budget: usize) -> usize {
    let batch = finetune::BATCH_SIZE;
    let per_iter = (tokens * batch).div_ceil(examples.max(1)).max(1);
    let by_tokens = budget.div_ceil(per_iter);
    let by_epochs = (MAX_EPOCHS * examples).div_ceil(batch);
    by_tokens.min(by_epochs).max(1)
}

/// `145350` → `145,350`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Fewest held-out files a measurement decides on: its interval resamples files, and with fewer
/// it says little (with one file, the interval is a single point).
const MIN_HELD_OUT_FILES: usize = 5;

/// When `kenning train` switches its adapter on for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RegisterWhen {
    /// When it measurably helps (see `--eval-tasks`, `--min-gain`).
    Auto,
    /// Whatever it measures (not measured): it replaces the adapter in use.
    Always,
    /// Only trains; an adapter in use stays as it is and the new one stays beside it.
    Never,
}

/// How the adapter did against the completions the workspace gets without it.
struct Measured {
    /// The modes compared: (without, with).
    modes: (Condition, Condition),
    /// The model the workspace completes with now (the baseline's).
    current: String,
    paired: eval::Paired,
    without: Figures,
    with: Figures,
}

/// Completes lines of the held-out test files (the files training did not see) as the workspace
/// completes them now (its configured model, or the default one, without an adapter) and with the
/// trained model and the adapter, each run in a process of its own, and compares them task by
/// task. When the trained model is not the one completions use, registering the adapter would
/// switch models too, so that is what is measured: a small model's adapter that beats the small
/// model but not the model in use must not replace it.
fn measure(paths: &Paths, root: &Path, args: &TrainArgs, model: &str, adapter: &Path, backend: Backend) -> Result<Measured> {
    let test_files = eval::held_out_files(paths, root)?;
    if test_files.len() < MIN_HELD_OUT_FILES {
        bail!(
            "the repository has {} held-out test file(s); a measurement needs at least {MIN_HELD_OUT_FILES} (its interval resamples files)",
            test_files.len()
        );
    }
    let tasks = dataset::eval_tasks(root, &test_files, args.eval_tasks as usize, 0);
    if tasks.is_empty() {
        bail!("the {} held-out test files have no lines to complete", test_files.len());
    }
    let indexed = paths.index_for(root).exists();
    let modes = if indexed { (Condition::Rag, Condition::Hybrid) } else { (Condition::None, Condition::Ft) };
    // A server backend or `backend = "none"`: no adapter of ours can join it (and kenning.toml,
    // which configures it, is not written), so the adapter is measured against its own model.
    let current = completing_model(root, &args.set)?.filter(|m| !same_model(m, model)).unwrap_or_else(|| model.to_owned());
    let with_label = format!("{model} + adapter");
    let without_label = if current == model { format!("{current} without an adapter") } else { format!("{current}, what the workspace completes with now, without an adapter") };
    out(&format!(
        "measuring the adapter: {} lines of {} held-out files, {} ({with_label}) against {} ({without_label}){}",
        tasks.len(),
        test_files.len(),
        modes.1.name(),
        modes.0.name(),
        if indexed { "" } else { " (the workspace is not indexed: without retrieval)" }
    ));
    let dir = tempfile::tempdir()?;
    let tasks_file = dir.path().join("tasks.jsonl");
    let mut lines = String::new();
    for t in &tasks {
        lines.push_str(&serde_json::to_string(t)?);
        lines.push('\n');
    }
    std::fs::write(&tasks_file, lines)?;
    // The trained model, whatever the workspace configures.
    let (asked, set) = match backend {
        Backend::Llama => (Some(model), Vec::new()),
        Backend::Mlx => {
            let family = serde_json::to_value(Family::detect(model))?;
            let family = family.as_str().context("a family is named by a string")?;
            (None, vec!["generation.backend=\"mlx\"".to_owned(), format!("generation.model={}", toml::Value::String(model.to_owned())), format!("generation.family=\"{family}\"")])
        }
    };
    let trained = EvalProcess { paths, root, index_dir: None, model: asked, threads: args.eval_threads, set: &set, typed_before: 0, progress: true };
    // The workspace's own configuration, when it completes with another model.
    let now = if current == model { EvalProcess { ..trained } } else { EvalProcess { model: None, set: &args.set, ..trained } };
    let without = now.run(modes.0, &tasks_file, None).with_context(|| format!("measuring {} ({current})", modes.0.name()))?;
    let with = trained.run(modes.1, &tasks_file, Some(adapter)).with_context(|| format!("measuring {}", modes.1.name()))?;
    let paired = eval::paired(&without.scores, &with.scores, 0).context("the two runs share no task")?;
    Ok(Measured { modes, current, paired, without, with })
}

/// Where a run's time went, phase by phase: printed when it ends, whichever way it ends.
struct Phases {
    started: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn new() -> Self {
        Self { started: std::time::Instant::now(), done: Vec::new() }
    }

    fn time<T>(&mut self, phase: &'static str, work: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let result = work();
        self.done.push((phase, started.elapsed()));
        result
    }

    /// `mining 0:12, training 31:02, measuring 8:30 (total 39:51)`, the total from the start of the
    /// run (what is between phases included); `None` before any phase ran.
    fn summary(&self) -> Option<String> {
        use kenning_formats::clock;
        let phases: Vec<String> = self.done.iter().map(|(name, d)| format!("{name} {}", clock(d.as_secs_f64()))).collect();
        (!phases.is_empty()).then(|| format!("{} (total {})", phases.join(", "), clock(self.started.elapsed().as_secs_f64())))
    }
}

pub fn train_cmd(paths: &Paths, args: TrainArgs) -> Result<()> {
    let mut phases = Phases::new();
    let result = train(paths, args, &mut phases);
    if let Some(summary) = phases.summary() {
        out(&format!("time: {summary}"));
    }
    result
}

fn train(paths: &Paths, args: TrainArgs, phases: &mut Phases) -> Result<()> {
    let root = args.path.canonicalize().with_context(|| format!("{}", args.path.display()))?;
    let plan = plan_for(&root, args.model.as_deref(), &args.set, args.register_when())?;
    plan.notes.iter().for_each(|note| out(note));
    let model = &plan.model;
    let work = paths.training_for(&root);
    // Held until this run ends (measuring and registering included): a second run on this
    // workspace would mine into the same data and train into the same candidate.
    let _lock = lock_training(&work, &root)?;
    let data_dir = work.join("data");
    let adapter = args.adapter_path.clone().unwrap_or_else(|| work.join("adapters"));
    let when = if plan.unregistrable.is_some() { RegisterWhen::Never } else { args.register_when() };
    if adapter.file_name().is_none() {
        bail!("--adapter-path {} names no directory of its own: give one, e.g. {}", adapter.display(), Path::new(&adapter).join("adapters").display());
    }
    // Trained beside the adapter and moved over it only at the end (for --register auto, only once
    // it passed): an adapter in use (kenning.toml may name this very directory) is never half
    // replaced, nor replaced by one that was not asked to replace it.
    let trained = candidate_dir(&adapter);
    restore_interrupted_swap(&adapter)?;
    for dir in [&adapter, &trained] {
        match not_an_adapter_file(dir)? {
            Some(other) if &other == dir => bail!("{} is not a directory: give --adapter-path a directory of its own", dir.display()),
            Some(other) => bail!("{} holds {}, which is not an adapter's: give --adapter-path a directory of its own (kenning train replaces it whole)", dir.display(), other.display()),
            None => {}
        }
    }
    if finetune::configured_adapter_is(&root, &trained) {
        bail!(
            "{} completes with {}, where kenning train trains: point it at {} (`kenning train --register always` with the same settings moves the candidate there without training it again)",
            crate::config::FILE_NAME,
            trained.display(),
            adapter.display()
        );
    }
    if when != RegisterWhen::Never
        && finetune::configured_adapter_is(&root, &adapter)
        && let Some(now) = completing_model(&root, &[])?.filter(|m| !same_model(m, model))
    {
        bail!(
            "{} completes with {now} and the adapter in {}; an adapter for {model} cannot replace it. Train --model {now}, or give --adapter-path another directory and point kenning.toml's [generation] at {model} and that directory yourself",
            crate::config::FILE_NAME,
            adapter.display(),
        );
    }
    let family = Family::detect(model);
    let fim_per_kb = args.fim_per_kb.unwrap_or_else(|| default_fim_per_kb(family));
    if args.context_share > 0.0 {
        context_possible(paths, &root, fim_per_kb)?;
    }
    if args.fresh {
        // Not from under a trainer still writing it (one left by a killed run): the directory
        // would come back at its next checkpoint, shared with this run's trainer. The lock is held
        // while removing it, so a trainer starting meanwhile stops instead of writing into it.
        let _held = match kenning_formats::try_lock_dir(&trained) {
            Ok(None) => bail!("a trainer is still writing {} (one left running by a stopped kenning train?): stop it first", trained.display()),
            Ok(Some(lock)) => Some(lock),
            // Not there (nothing to remove), or not a lockable directory: removed as it is.
            Err(_) => None,
        };
        remove_dir_if_there(&trained)?;
    }
    let options = options(family, args.max_seq_length as usize, fim_per_kb, 0);
    let data = phases.time("mining", || mine_and_report(paths, &root, model, &data_dir, &options, args.context_share))?;
    let train = data.stats(Split::Train);
    let iters = match args.iters {
        Some(iters) => iters as usize,
        None => {
            let examples = train.fim + train.next_token;
            let iters = default_iters(examples, train.tokens, train_tokens(model));
            let epochs = (iters * finetune::BATCH_SIZE) as f64 / examples.max(1) as f64;
            let share = if epochs < 0.1 {
                format!("{} of the {} examples", thousands(iters * finetune::BATCH_SIZE), thousands(examples))
            } else {
                format!("{epochs:.1} passes over the examples")
            };
            out(&format!("training {iters} iterations: about {} tokens, {share} (--iters to choose)", thousands(iters * finetune::BATCH_SIZE * train.tokens / examples.max(1))));
            iters
        }
    };
    // Once moved over the adapter, a run is carried on from there: the same command run again
    // does not train again what the adapter already is.
    if !args.fresh && !trained.exists() && adapter.join(STATE_FILE).is_file() {
        link_files(&adapter, &trained)?;
    }
    let trainer = finetune::trainer();
    let run = TrainRun {
        model,
        data: &data_dir,
        adapter: &trained,
        iters,
        num_layers: args.num_layers,
        max_seq_length: args.max_seq_length,
        learning_rate: args.learning_rate,
        rank: args.rank,
        scale: args.scale,
        grad_checkpoint: args.grad_checkpoint,
        resume: !args.fresh,
    };
    phases.time("training", || finetune::run_trainer(&trainer, &run))?;
    let in_use = finetune::configured_adapter_is(&root, &adapter);
    // The trainer found the adapter's own run done: the candidate is the adapter.
    let state = |dir: &Path| std::fs::read(dir.join(STATE_FILE)).ok();
    let same = state(&adapter).is_some() && state(&adapter) == state(&trained);
    if same && (in_use || when == RegisterWhen::Never) {
        remove_dir_if_there(&trained)?;
        let used = if in_use { format!(", which {} completes with,", crate::config::FILE_NAME) } else { String::new() };
        out(&format!(
            "the adapter in {}{used} was trained on this data with these settings already: it is left as it is (--fresh trains it again)",
            adapter.display()
        ));
        return Ok(());
    }
    if when == RegisterWhen::Never {
        if in_use {
            out(&format!(
                "adapter written to {}; {} completes with the adapter in {}, left as it was{}",
                trained.display(),
                crate::config::FILE_NAME,
                adapter.display(),
                if plan.unregistrable.is_some() { "" } else { " (--register always replaces it, --register auto if the new one helps)" }
            ));
        } else {
            replace_dir(&trained, &adapter)?;
            out(&format!("adapter written to {}", adapter.display()));
        }
        return Ok(());
    }
    let backend = Backend::for_model(model);
    // Exported now, so that a problem shows here and the server starts at once.
    let exported = if backend == Backend::Llama { Some(lora_gguf::for_llama(&trained)?) } else { None };
    if when == RegisterWhen::Auto {
        let anyway = |reason: &str| {
            let keep = if in_use { format!("; {} still completes with the adapter in {}", crate::config::FILE_NAME, adapter.display()) } else { String::new() };
            format!(
                "adapter written to {}; not registered: {reason}{keep}. To use it anyway, run the same command with --register always (it is not trained again)",
                trained.display()
            )
        };
        if !in_use && finetune::configured_generation(&root).is_some() {
            out("note: kenning.toml already configures generation, so the adapter will not be registered whatever the measurement says; it only tells whether the adapter helps");
        }
        let measured = match phases.time("measuring", || measure(paths, &root, &args, model, &trained, backend)) {
            Ok(m) => m,
            Err(e) => {
                out(&anyway(&format!("it could not be measured ({e:#})")));
                return Ok(());
            }
        };
        let (a, b) = (measured.modes.0.name(), measured.modes.1.name());
        for (f, who) in [(&measured.without, format!("{} without an adapter", measured.current)), (&measured.with, format!("{model} + adapter"))] {
            out(&format!(
                "{:<7} exact match {:5.1}%  edit similarity {:5.1}%  identifier match {}  ({who})",
                f.mode,
                f.exact_match * 100.0,
                f.edit_similarity * 100.0,
                super::assist::identifier_share(f)
            ));
        }
        let p = &measured.paired;
        let names = p.identifier_match.map_or_else(String::new, |i| format!(", identifier match {:+.1} [{:+.1}, {:+.1}]", i.mean, i.low, i.high));
        out(&format!(
            "{b} - {a}: edit similarity {:+.1} [{:+.1}, {:+.1}], exact match {:+.1} [{:+.1}, {:+.1}]{names} (95 % intervals, bootstrap over {} files), helped {:.0}% hurt {:.0}% of {} tasks",
            p.edit_similarity.mean, p.edit_similarity.low, p.edit_similarity.high, p.exact_match.mean, p.exact_match.low, p.exact_match.high, p.files, p.helped * 100.0, p.hurt * 100.0, p.tasks
        ));
        if p.edit_similarity.low <= args.min_gain {
            if measured.current != *model && p.edit_similarity.below_zero() && trainable(&measured.current) {
                out(&format!(
                    "{0} completes better than {1} with this adapter, so switching to it would make completions worse; an adapter for {0} itself is `kenning train --model {0}` (slower to train)",
                    measured.current, model
                ));
            }
            out(&anyway(&format!("the gain's interval is not above {:+.1} points, so it may not help ({} left as it was)", args.min_gain, crate::config::FILE_NAME)));
            return Ok(());
        }
        out(&format!("the adapter helps: the gain's interval is above {:+.1} points", args.min_gain));
    }
    replace_dir(&trained, &adapter)?;
    if let Some(name) = exported.as_deref().and_then(Path::file_name) {
        out(&format!("llama.cpp adapter: {}", adapter.join(name).display()));
    }
    if in_use {
        out(&format!("{} completes with {}: the new adapter replaced the one there (a running server loads it at its next completion)", crate::config::FILE_NAME, adapter.display()));
        return Ok(());
    }
    match finetune::register(&root, model, &adapter, backend)? {
        Registered::Written { path, needs_mlx } => {
            let note = if needs_mlx { " (the server needs the `mlx` feature to use it)" } else { "" };
            out(&format!("registered the adapter in {}{note}", path.display()));
        }
        Registered::AlreadyConfigured { path, section } => {
            out(&format!("{} already configures generation; to use the adapter, set:\n{section}", path.display()));
        }
    }
    Ok(())
}

/// An exclusive advisory lock on the workspace's training directory `work` (released when the
/// file is dropped, or the process ends however it ends); a clear error while another run has it.
fn lock_training(work: &Path, root: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let path = work.join("lock");
    match kenning_formats::try_lock(&path).with_context(|| format!("locking {}", path.display()))? {
        Some(file) => Ok(file),
        None => bail!("another kenning train is running on {} (in {}): wait for it to end, or stop it", root.display(), work.display()),
    }
}

/// The suffix of where `replace_dir` sets the adapter it replaces aside.
const SWAP: &str = ".kenning-swap";

/// Where `kenning train` trains before the adapter is moved over `adapter`: beside it.
fn candidate_dir(adapter: &Path) -> PathBuf {
    beside(adapter, ".candidate")
}

/// `path` with `suffix` added to its last component.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map_or_else(|| "adapters".into(), |n| n.to_os_string());
    name.push(suffix);
    path.with_file_name(name)
}

/// The first entry of the directory `dir` that an adapter directory does not hold (kenning train
/// replaces the directory whole); `None` when there is none or the directory is not there.
fn not_an_adapter_file(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(Some(dir.to_owned())),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        if !(entry.file_type()?.is_file() && entry.file_name().to_str().is_some_and(finetune::is_adapter_file)) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Moves the directory `from` over `to`: `to` is first renamed aside (`<to>.kenning-swap`, a name
/// no one else picks: the next run removes it), so that at every moment one whole adapter is at
/// `to` or aside, never a half-removed one;
/// `restore_interrupted_swap` puts the old one back if the process was stopped in between.
fn replace_dir(from: &Path, to: &Path) -> Result<()> {
    let old = beside(to, SWAP);
    remove_dir_if_there(&old)?;
    match std::fs::rename(to, &old) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("moving {} aside", to.display())),
        _ => {}
    }
    std::fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    remove_dir_if_there(&old)
}

/// After a `replace_dir` that was stopped: the adapter back at its place when only the copy set
/// aside is there, the copy removed when the new one was moved in.
fn restore_interrupted_swap(adapter: &Path) -> Result<()> {
    let old = beside(adapter, SWAP);
    if !old.exists() {
        return Ok(());
    }
    if adapter.exists() {
        return remove_dir_if_there(&old);
    }
    std::fs::rename(&old, adapter).with_context(|| format!("moving {} back to {}", old.display(), adapter.display()))
}

/// Links the files of the adapter directory `from` into a new directory `to` (copies them where
/// the file system has no hard links), made aside and renamed into place, so that a stopped copy
/// is never taken for a run to carry on. Linking is safe: kenning-train and the llama.cpp export
/// write every file aside and rename it over the old one, never into it.
fn link_files(from: &Path, to: &Path) -> Result<()> {
    let part = beside(to, ".part");
    remove_dir_if_there(&part)?;
    std::fs::create_dir_all(&part).with_context(|| format!("creating {}", part.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let (source, target) = (entry.path(), part.join(entry.file_name()));
            if std::fs::hard_link(&source, &target).is_err() {
                std::fs::copy(&source, &target).with_context(|| format!("copying {}", source.display()))?;
            }
        }
    }
    std::fs::rename(&part, to).with_context(|| format!("moving {} to {}", part.display(), to.display()))
}

/// Removes the directory `dir` with what it holds; one that is not there is fine.
fn remove_dir_if_there(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", dir.display())),
        _ => Ok(()),
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The adapter directory (adapters.safetensors + adapter_config.json).
    adapter: PathBuf,
    /// The base model's directory (its config.json); default: the model adapter_config.json names.
    #[arg(long)]
    base: Option<PathBuf>,
    /// The GGUF file to write (default: adapter-llama.gguf in the adapter directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn export_cmd(args: ExportArgs) -> Result<()> {
    let path = args.out.unwrap_or_else(|| args.adapter.join(lora_gguf::EXPORT_NAME));
    let e = lora_gguf::export(&args.adapter, args.base.as_deref(), &path)?;
    out(&format!("{} ({}, {} tensors, rank {}, alpha {})", e.path.display(), e.architecture, e.tensors, e.rank, e.alpha));
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportGgufArgs {
    /// The fused model's directory (model.safetensors + config.json).
    fused: PathBuf,
    /// The adapter that was fused in: its projections are the tensors replaced.
    #[arg(long)]
    adapter: PathBuf,
    /// The base model's GGUF: a bundled model's name or a file.
    #[arg(long)]
    base: String,
    /// The GGUF file to write (default: model.gguf in the fused directory, and its Modelfile then
    /// says `FROM ./model.gguf`).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn export_gguf_cmd(paths: &Paths, args: ExportGgufArgs) -> Result<()> {
    let base = crate::models::resolve(&args.base, paths)?;
    let path = args.out.unwrap_or_else(|| args.fused.join("model.gguf"));
    let written = fused_gguf::write(&base, &args.fused, &args.adapter, &path)?;
    out(&format!("{} ({}: {} fused projections in F16, {} tensors as in {})", written.path.display(), written.architecture, written.replaced, written.copied, base.display()));
    if let Some(line) = finetune::point_modelfile_at(&path)? {
        out(&line);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_trained_is_the_one_completing_and_an_adapter_the_editor_would_not_use_is_not_registered() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let set = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let auto = RegisterWhen::Auto;
        // Nothing configured: the default model, Qwen; VS Code's defaults (the backend alone) too.
        for editor in [set(&[]), set(&["generation.backend=\"llama\""])] {
            let p = plan_for(root, None, &editor, auto).unwrap();
            assert_eq!((p.model.as_str(), p.unregistrable.is_none()), ("qwen2.5-coder-0.5b", true), "{editor:?}");
            assert!(p.notes.iter().any(|n| n.contains("the model the workspace completes with")), "{p:?}");
        }
        // SmolLM2 asked for: registering would switch kenning.toml's model, and it is measured against Qwen.
        let p = plan_for(root, Some("smollm2-135m"), &[], auto).unwrap();
        assert!(p.notes.iter().any(|n| n.contains("switching them to smollm2-135m") && n.contains("measured against qwen2.5-coder-0.5b")), "{p:?}");
        // An editor choosing SmolLM2: SmolLM2, measured against itself there; registering switches
        // kenning.toml's model for other clients, said.
        let smol = set(&["generation.model=\"smollm2-135m\""]);
        let p = plan_for(root, None, &smol, auto).unwrap();
        assert_eq!((p.model.as_str(), p.unregistrable.is_none()), ("smollm2-135m", true));
        assert!(p.notes.iter().any(|n| n.contains("switching them to smollm2-135m") && !n.contains("measured against")), "{p:?}");
        // Another model than the editor's: only trained.
        let p = plan_for(root, Some("qwen2.5-coder-0.5b"), &smol, auto).unwrap();
        assert!(p.unregistrable.as_deref().is_some_and(|w| w.contains("complete with smollm2-135m")), "{p:?}");
        assert!(plan_for(root, Some("qwen2.5-coder-0.5b"), &smol, RegisterWhen::Never).unwrap().unregistrable.is_none());
        // An editor on a model server, or on a model MLX cannot train: nothing to fine-tune for it.
        for editor in [set(&["generation.backend=\"ollama\"", "generation.model=\"q\""]), set(&["generation.model=\"/m/q.gguf\""])] {
            let err = plan_for(root, None, &editor, auto).unwrap_err().to_string();
            assert!(err.contains("would not reach them: nothing is trained"), "{err}");
        }
        // kenning.toml configures SmolLM2: that is trained, and nothing is switched.
        std::fs::write(root.join("kenning.toml"), "[generation]\nmodel = \"smollm2-135m\"\n").unwrap();
        let p = plan_for(root, None, &[], auto).unwrap();
        assert_eq!(p.model, "smollm2-135m");
        assert!(!p.notes.iter().any(|n| n.contains("switch")), "{p:?}");
        // A kenning.toml that does not parse stops only a run that has to read it.
        std::fs::write(root.join("kenning.toml"), "[generation\n").unwrap();
        assert!(plan_for(root, Some("smollm2-135m"), &[], RegisterWhen::Never).is_ok());
        assert!(plan_for(root, None, &[], auto).is_err());
    }

    #[test]
    fn a_default_run_trains_a_token_budget_or_two_passes_whichever_is_less() {
        let budget = train_tokens("smollm2-135m");
        // flask 3.0.3: 357 examples, about 130,000 tokens: 124 iterations of about 729 tokens.
        let iters = default_iters(357, 130_000, budget);
        assert_eq!(iters, budget.div_ceil(729));
        assert!((iters * 729).abs_diff(budget) < 729);
        // A small repository: two passes, not the budget.
        assert_eq!(default_iters(30, 9_000, budget), 30);
        assert_eq!(default_iters(1, 10, budget), 1);
        assert_eq!(default_iters(0, 0, budget), 1);
        // A large one: the budget, whatever its size.
        assert_eq!(default_iters(100_000, 40_000_000, budget), budget.div_ceil(800));
        // Qwen trains about 7 times slower than SmolLM2, and so does a model kenning does not know.
        for slower in ["qwen2.5-coder-0.5b", "/models/mine"] {
            assert!(train_tokens(slower) * 5 < budget, "{slower}");
        }
        assert_eq!(thousands(145_350), "145,350");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn the_time_summary_names_every_phase_in_order() {
        let mut phases = Phases::new();
        assert_eq!(phases.summary(), None);
        let mined = phases.time("mining", || 7);
        assert_eq!(mined, 7);
        phases.time("training", || ());
        phases.done[1].1 = std::time::Duration::from_secs(3 * 3600 + 62);
        phases.done[0].1 = std::time::Duration::from_millis(12_600);
        let summary = phases.summary().unwrap();
        assert!(summary.starts_with("mining 0:13, training 3:01:02 (total 0:0"), "{summary}");
    }

    #[test]
    fn one_training_run_at_a_time_per_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("training").join("w");
        let held = lock_training(&work, Path::new("/w")).unwrap();
        let second = lock_training(&work, Path::new("/w")).unwrap_err().to_string();
        assert!(second.contains("another kenning train is running on /w"), "{second}");
        drop(held);
        lock_training(&work, Path::new("/w")).expect("free again once the first run ends");
    }

    #[test]
    fn a_candidate_sits_beside_the_adapter() {
        assert_eq!(candidate_dir(Path::new("/w/adapters")), Path::new("/w/adapters.candidate"));
        assert_eq!(candidate_dir(Path::new("out/mine")), Path::new("out/mine.candidate"));
    }

    #[test]
    fn only_an_adapter_s_files_are_taken_for_an_adapter_directory() {
        for name in ["adapters.safetensors", "adapter_config.json", "0000020_adapters.safetensors", "trainer_state.json", "trainer_state.safetensors", "adapter-llama.gguf", ".adapters.safetensors.partial.safetensors", ".trainer_state.json.partial"] {
            assert!(finetune::is_adapter_file(name), "{name}");
        }
        for name in ["notes.txt", "_adapters.safetensors", "x_adapters.safetensors", "main.rs", "adapters.safetensors.bak"] {
            assert!(!finetune::is_adapter_file(name), "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("adapters");
        assert_eq!(not_an_adapter_file(&adapter).unwrap(), None, "a directory that is not there holds nothing");
        std::fs::create_dir(&adapter).unwrap();
        std::fs::write(adapter.join("adapters.safetensors"), "w").unwrap();
        assert_eq!(not_an_adapter_file(&adapter).unwrap(), None);
        std::fs::create_dir(adapter.join("sub")).unwrap();
        assert_eq!(not_an_adapter_file(&adapter).unwrap(), Some(adapter.join("sub")));
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert_eq!(not_an_adapter_file(&dir.path().join("file")).unwrap(), Some(dir.path().join("file")));
    }

    #[test]
    fn a_stopped_replacement_leaves_one_whole_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let (adapter, candidate, old) = (dir.path().join("adapters"), dir.path().join("adapters.candidate"), dir.path().join("adapters.kenning-swap"));
        let write = |d: &Path, text: &str| {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("adapters.safetensors"), text).unwrap();
        };
        let read = |d: &Path| std::fs::read_to_string(d.join("adapters.safetensors")).unwrap();
        write(&adapter, "old");
        write(&candidate, "new");
        replace_dir(&candidate, &adapter).unwrap();
        assert_eq!(read(&adapter), "new");
        assert!(!candidate.exists() && !old.exists());
        // Stopped after the old one was set aside: it is put back.
        std::fs::rename(&adapter, &old).unwrap();
        restore_interrupted_swap(&adapter).unwrap();
        assert_eq!(read(&adapter), "new");
        assert!(!old.exists());
        // Stopped after the new one was moved in: the set-aside copy goes.
        write(&old, "older");
        restore_interrupted_swap(&adapter).unwrap();
        assert_eq!(read(&adapter), "new");
        assert!(!old.exists());
        // Linked back into a candidate: the same files, and the adapter is untouched when the
        // candidate's are replaced (as the trainer replaces them: written aside, renamed over).
        link_files(&adapter, &candidate).unwrap();
        assert_eq!(read(&candidate), "new");
        std::fs::write(candidate.join("next"), "newer").unwrap();
        std::fs::rename(candidate.join("next"), candidate.join("adapters.safetensors")).unwrap();
        assert_eq!(read(&adapter), "new");
    }

    #[test]
    fn a_gain_must_be_a_finite_number() {
        assert_eq!(finite("-2.5"), Ok(-2.5));
        assert!(finite("nan").is_err() && finite("inf").is_err() && finite("x").is_err());
    }
}
