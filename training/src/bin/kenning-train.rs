//! `kenning-train`: LoRA fine-tuning with mlx_lm.lora's flags and progress lines, `fuse`, and
//! `export` (llama.cpp's adapter format).
//! Data is mlx_lm's layout (`kenning dataset` writes it); adapters are mlx_lm's format.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kenning_formats::adapter::{MOMENTS_FILE, STATE_FILE, WEIGHTS_FILE, checkpoint_file};
use kenning_training::data::{self, Example, Text};
use kenning_training::lora::{Lora, LoraParameters};
use kenning_training::models;
use kenning_training::text::TextModel;
use kenning_training::train::{self, Progress, Schedule, TrainOptions};

#[derive(Parser)]
#[command(name = "kenning-train", version, about = "LoRA fine-tuning on MLX, compatible with mlx_lm's data and adapters")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Merge an adapter into the base weights: a model directory mlx_lm and kenning load, with an
    /// Ollama Modelfile; with --export-gguf also one GGUF file (llama.cpp, Ollama).
    Fuse(FuseArgs),
    /// Write an adapter as llama.cpp's GGUF LoRA adapter (runs `kenning export-adapter`, the
    /// server's converter, found beside this binary or on PATH).
    Export(ExportArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// A model directory (config.json, model.safetensors, tokenizer.json) or a bundled model's name.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Directory with train.jsonl / valid.jsonl / test.jsonl.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Train (otherwise only --test runs).
    #[arg(long)]
    train: bool,
    /// Report the loss on test.jsonl after training.
    #[arg(long)]
    test: bool,
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Layers adapted, counted from the last.
    #[arg(long, alias = "lora-layers", default_value_t = 16)]
    num_layers: usize,
    #[arg(long, default_value_t = 8)]
    rank: u32,
    #[arg(long, default_value_t = 20.0)]
    scale: f32,
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    #[arg(long, default_value_t = 1e-5)]
    learning_rate: f32,
    #[arg(long, value_enum, default_value_t = LrSchedule::Cosine)]
    lr_schedule: LrSchedule,
    /// Warmup steps (linear from 0).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    #[arg(long, default_value_t = 1)]
    grad_accumulation_steps: usize,
    /// Recompute each adapted layer in the backward pass instead of keeping its activations:
    /// less memory for long sequences, about a third more compute.
    #[arg(long)]
    grad_checkpoint: bool,
    #[arg(long, default_value_t = 2048)]
    max_seq_length: usize,
    #[arg(long, default_value = "adapters")]
    adapter_path: PathBuf,
    /// Start from these adapter weights (a checkpoint file of the same shape).
    #[arg(long, conflicts_with = "resume")]
    resume_adapter_file: Option<PathBuf>,
    /// Carry on the run whose last checkpoint is in --adapter-path, exactly where it stopped, when
    /// it was asked to do the same (model, data, iterations and every training setting); otherwise
    /// start over, saying why.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    #[arg(long, default_value_t = 10)]
    steps_per_report: usize,
    #[arg(long, default_value_t = 200)]
    steps_per_eval: usize,
    /// Validation batches per evaluation (-1 or 0: all).
    #[arg(long, default_value_t = 25, allow_negative_numbers = true)]
    val_batches: i64,
    /// Test batches for --test (-1 or 0: all). Batches are sorted by length; a part of them is
    /// taken evenly from the shortest to the longest (mlx_lm takes the shortest).
    #[arg(long, default_value_t = 500, allow_negative_numbers = true)]
    test_batches: i64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum LrSchedule {
    Constant,
    Cosine,
}

#[derive(Args)]
struct FuseArgs {
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    #[arg(long, default_value = "adapters")]
    adapter_path: PathBuf,
    #[arg(long, default_value = "fused_model")]
    save_path: PathBuf,
    /// Also write the fused model as GGUF: the base model's GGUF with the adapted projections
    /// replaced (runs `kenning export-gguf`); the Modelfile then builds from it.
    #[arg(long)]
    export_gguf: bool,
    /// The GGUF file's name inside --save-path.
    #[arg(long, default_value = "model.gguf")]
    gguf_path: PathBuf,
    /// The base model's GGUF (default: the bundled GGUF of --model).
    #[arg(long)]
    gguf_base: Option<String>,
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long, default_value = "adapters")]
    adapter_path: PathBuf,
    /// The base model (a directory or a bundled model's name); default: the one the adapter names.
    #[arg(long)]
    model: Option<String>,
    /// The GGUF file (default: adapter-llama.gguf in the adapter directory).
    #[arg(long)]
    save_path: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Fuse(args)) => fuse(&args),
        Some(Command::Export(args)) => export(&args),
        None => run(&cli.train),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Stopped>() => {
            eprintln!("{e}");
            ExitCode::from(Stopped::EXIT_CODE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A run ended early by Ctrl-C, its weights and state saved: the process exits with status 130 (as
/// a program stopped by SIGINT does), so that a caller (`kenning train`) does not take the
/// adapter for a finished one.
#[derive(Debug, thiserror::Error)]
#[error("training stopped at iteration {iter} of {iters}; run again with --resume (for `kenning train`, the same command) to carry on")]
struct Stopped {
    iter: usize,
    iters: usize,
}

impl Stopped {
    const EXIT_CODE: u8 = 130;
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn load_model(model: &str) -> Result<(PathBuf, TextModel)> {
    let dir = models::resolve(model, &models::cache_root()).map_err(anyhow::Error::msg)?;
    say(&format!("Loading pretrained model {}", dir.display()));
    let text = TextModel::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
    Ok((dir, text))
}

fn examples(model: &TextModel, texts: &[Text], max_len: usize, split: &str) -> Result<Vec<Example>> {
    let eos = model.eos().context("the tokenizer has no end-of-sequence token")?;
    // The token after which a FIM example's completion starts (Codestral has none: its loss covers all).
    let middle = ["<|fim_middle|>", "<fim_middle>", "<｜fim▁end｜>", "<MID>"].iter().find_map(|t| model.token_id(t));
    let (examples, truncated) =
        data::tokenize(texts, |t| model.encode(t).map_err(|e| e.to_string()), eos, middle, max_len).map_err(anyhow::Error::msg)?;
    if truncated > 0 {
        say(&format!("[WARNING] {truncated} {split} examples longer than {max_len} tokens were truncated (--max-seq-length)"));
    }
    Ok(examples)
}

fn run(args: &TrainArgs) -> Result<()> {
    if !args.train && !args.test {
        bail!("nothing to do: pass --train and/or --test");
    }
    // Held while this process runs: a second trainer (one left running by a killed `kenning
    // train`, say) would write its checkpoints between this one's.
    let _writing = if args.train { Some(lock_adapter_dir(&args.adapter_path)?) } else { None };
    let (model_dir, model) = load_model(&args.model)?;
    say("Loading datasets");
    let split = |name: &str| data::read_split(&args.data, name).map_err(anyhow::Error::msg);
    let train_texts = split("train")?.unwrap_or_default();
    let valid_texts = split("valid")?.unwrap_or_default();
    let config = &model.model.config;
    let params = LoraParameters { rank: args.rank, dropout: args.dropout, scale: args.scale };
    let fingerprint = fingerprint(args, &model_dir, &train_texts, &valid_texts)?;
    let resumed = if args.train && args.resume { resumable(&args.adapter_path, &fingerprint, args.iters, config)? } else { None };
    if args.train && !args.resume {
        // A fresh run: a state left by another one is not this run's to carry on.
        remove_if_there(&args.adapter_path.join(STATE_FILE))?;
    }
    let (lora, mut weights, resume) = if let Some((lora, weights, state)) = resumed {
        (lora, weights, Some(state))
    } else if let Some(file) = &args.resume_adapter_file {
        let dir = file.parent().unwrap_or(Path::new("."));
        say(&format!("Loading fine-tuned weights from {}", file.display()));
        let (lora, w) = Lora::load_file(dir, file, config)?;
        (lora, w, None)
    } else if args.train {
        let lora = Lora::new(config, args.num_layers, params);
        mlx_rs::random::seed(args.seed).context("seeding MLX")?;
        let w = lora.init(config)?;
        (lora, w, None)
    } else {
        let (lora, w) = Lora::load(&args.adapter_path, config)?;
        (lora, w, None)
    };
    if args.train {
        if args.grad_checkpoint && args.dropout > 0.0 {
            bail!("--grad-checkpoint with --dropout {}: a recomputed layer would draw new dropout masks; use --dropout 0", args.dropout);
        }
        let train_set = examples(&model, &train_texts, args.max_seq_length, "train")?;
        let valid_set = examples(&model, &valid_texts, args.max_seq_length, "valid")?;
        if train_set.len() < args.batch_size {
            bail!("{} training examples in {}: fewer than --batch-size {}", train_set.len(), args.data.display(), args.batch_size);
        }
        let tokens: usize = train_set.iter().map(|e| e.tokens.len()).sum();
        let trainable: usize = weights.iter().map(|w| w.size()).sum();
        let total = model.model.parameter_count();
        say(&format!(
            "Trainable parameters: {:.3}% ({:.3}M/{:.3}M); {} train examples ({tokens} tokens), {} valid",
            100.0 * trainable as f64 / total as f64,
            trainable as f64 / 1e6,
            total as f64 / 1e6,
            train_set.len(),
            valid_set.len()
        ));
        let options = TrainOptions {
            iters: args.iters,
            batch_size: args.batch_size,
            learning_rate: args.learning_rate,
            schedule: match args.lr_schedule {
                LrSchedule::Constant => Schedule::Constant,
                LrSchedule::Cosine => Schedule::Cosine,
            },
            warmup: args.warmup,
            weight_decay: args.weight_decay,
            grad_accumulation: args.grad_accumulation_steps,
            grad_checkpoint: args.grad_checkpoint,
            steps_per_report: args.steps_per_report,
            steps_per_eval: args.steps_per_eval,
            val_batches: usize::try_from(args.val_batches).unwrap_or(0),
            save_every: args.save_every,
            seed: args.seed,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step (Ctrl-C again to quit without saving)");
        })
        .context("installing the Ctrl-C handler")?;
        let mut extra = serde_json::Map::new();
        extra.insert("model".into(), model_dir.display().to_string().into());
        extra.insert("data".into(), args.data.display().to_string().into());
        extra.insert("iters".into(), args.iters.into());
        extra.insert("batch_size".into(), args.batch_size.into());
        extra.insert("learning_rate".into(), f64::from(args.learning_rate).into());
        extra.insert("max_seq_length".into(), args.max_seq_length.into());
        extra.insert("seed".into(), args.seed.into());
        extra.insert("trainer".into(), "kenning-train".into());
        let adapter_path = args.adapter_path.clone();
        let lora_for_save = lora.clone();
        let save_extra = extra.clone();
        let saved_fingerprint = fingerprint.clone();
        // The numbered weights first, the state that names their iteration last: a state on disk
        // always has its weights.
        let mut checkpoint = move |w: &[mlx_rs::Array], state: &train::State| {
            lora_for_save.save(w, &adapter_path, &checkpoint_file(state.iter), &save_extra)?;
            lora_for_save.save(w, &adapter_path, WEIGHTS_FILE, &save_extra)?;
            state.save(&adapter_path, &saved_fingerprint, &lora_for_save.names())?;
            Ok(adapter_path.join(WEIGHTS_FILE))
        };
        match &resume {
            Some(state) if state.iter >= args.iters => say(&format!("All {} iterations were done already ({}); nothing to train", args.iters, args.adapter_path.display())),
            Some(state) => say(&format!("Resuming training from iteration {} of {} ({})", state.iter, args.iters, args.adapter_path.display())),
            None => say(&format!("Starting training..., iters: {}", args.iters)),
        }
        let splits = train::Splits { train: &train_set, valid: &valid_set };
        let first = resume.as_ref().map_or(0, |s| s.iter);
        let control = train::Control { stop: &stop, checkpoint: &mut checkpoint, resume };
        let started = std::time::Instant::now();
        let outcome = train::train(&model.model, &lora, &mut weights, splits, &options, control, |p| match p {
            Progress::Train { iter, loss, learning_rate, iters_per_sec, tokens_per_sec, trained_tokens, peak_memory } => say(&format!(
                "Iter {iter}: Train loss {loss:.3}, Learning Rate {learning_rate:.3e}, It/sec {iters_per_sec:.3}, \
                 Tokens/sec {tokens_per_sec:.3}, Trained Tokens {trained_tokens}, Peak mem {:.3} GB, {}",
                peak_memory as f64 / 1e9,
                time_left(started.elapsed().as_secs_f64(), iter - first, iter, args.iters)
            )),
            Progress::Val { iter, loss, seconds } => say(&format!("Iter {iter}: Val loss {loss:.3}, Val took {seconds:.3}s")),
            Progress::Saved { iter, path } => say(&format!("Iter {iter}: Saved adapter weights to {}", path.display())),
        })?;
        lora.save(&weights, &args.adapter_path, WEIGHTS_FILE, &extra)?;
        say(&format!(
            "Saved final weights to {} ({} iterations, {} tokens, {:.1}s{})",
            args.adapter_path.join(WEIGHTS_FILE).display(),
            outcome.iters,
            outcome.trained_tokens,
            outcome.seconds,
            if outcome.stopped { ", stopped early" } else { "" }
        ));
        if outcome.stopped {
            return Err(Stopped { iter: outcome.iters, iters: args.iters }.into());
        }
    }
    if args.test {
        let test_texts = split("test")?.with_context(|| format!("no test.jsonl in {}", args.data.display()))?;
        let test_set = examples(&model, &test_texts, args.max_seq_length, "test")?;
        let batches = data::spread(&data::batches(&test_set, args.batch_size), usize::try_from(args.test_batches).unwrap_or(0));
        let loss = train::evaluate(&model.model, &lora, &weights, &batches, 0)?;
        say(&format!("Test loss {loss:.3}, Test ppl {:.3}.", loss.exp()));
    }
    Ok(())
}

/// Where a run stands after `iter` of `iters` iterations, `done` of them in this process in
/// `elapsed` seconds (validation included): the share done and how long the rest takes at that pace.
fn time_left(elapsed: f64, done: usize, iter: usize, iters: usize) -> String {
    let left = elapsed / done.max(1) as f64 * iters.saturating_sub(iter) as f64;
    format!("{:.0}% done, about {} left", 100.0 * iter as f64 / iters.max(1) as f64, kenning_formats::clock(left))
}

/// FNV-1a of texts, each ended by a 0 byte (a prompt by a 1 byte before its completion), and how
/// many there are.
fn texts_hash(texts: &[Text]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let bytes = texts.iter().flat_map(|t| match t {
        Text::Whole(text) => Box::new(text.bytes().chain([0])) as Box<dyn Iterator<Item = u8>>,
        Text::Completion { prompt, completion } => Box::new(prompt.bytes().chain([1]).chain(completion.bytes()).chain([0])),
    });
    for b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}/{}", texts.len())
}

/// What a run is asked to do, as `key=value` lines: a saved state is carried on only by a run with
/// the same lines. The data counts by its content, not its path; the starting weights by the seed
/// that draws them or the content of `--resume-adapter-file`.
fn fingerprint(args: &TrainArgs, model_dir: &Path, train: &[Text], valid: &[Text]) -> Result<String> {
    let schedule = match args.lr_schedule {
        LrSchedule::Constant => "constant",
        LrSchedule::Cosine => "cosine",
    };
    let init = match &args.resume_adapter_file {
        Some(file) => {
            let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            format!("file {}", texts_hash(&[Text::Whole(String::from_utf8_lossy(&bytes).into_owned())]))
        }
        None => "fresh".to_owned(),
    };
    let model = model_dir.canonicalize().unwrap_or_else(|_| model_dir.to_owned());
    Ok([
        format!("model={}", model.display()),
        format!("train_data={}", texts_hash(train)),
        format!("valid_data={}", texts_hash(valid)),
        format!("init={init}"),
        format!("iters={}", args.iters),
        format!("batch_size={}", args.batch_size),
        format!("num_layers={}", args.num_layers),
        format!("rank={}", args.rank),
        format!("scale={}", args.scale),
        format!("dropout={}", args.dropout),
        format!("learning_rate={}", args.learning_rate),
        format!("lr_schedule={schedule}"),
        format!("warmup={}", args.warmup),
        format!("weight_decay={}", args.weight_decay),
        format!("grad_accumulation_steps={}", args.grad_accumulation_steps),
        format!("max_seq_length={}", args.max_seq_length),
        format!("seed={}", args.seed),
    ]
    .join("\n"))
}

/// The lines of two fingerprints that differ, as `key: old -> new`.
fn differences(saved: &str, now: &str) -> Vec<String> {
    let words = |s: &str| s.lines().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<Vec<_>>();
    let (old, new) = (words(saved), words(now));
    let mut out = Vec::new();
    for (k, v) in &new {
        match old.iter().find(|(o, _)| o == k) {
            Some((_, w)) if w == v => {}
            Some((_, w)) => out.push(format!("{k}: {w} -> {v}")),
            None => out.push(format!("{k}: (not recorded) -> {v}")),
        }
    }
    out
}

/// The saved run in `dir` to carry on, with its adapter and the weights of its last checkpoint;
/// `None` (said why) when there is none, it was asked something else, or what was saved does not
/// read (a damaged state is no reason to fail a run: it only costs the iterations it held).
fn resumable(dir: &Path, fingerprint: &str, iters: usize, config: &kenning_training::model::Config) -> Result<Option<(Lora, Vec<mlx_rs::Array>, train::State)>> {
    let start_over = |why: String| -> Result<Option<(Lora, Vec<mlx_rs::Array>, train::State)>> {
        say(&format!("{why}: starting over"));
        remove_if_there(&dir.join(STATE_FILE))?;
        Ok(None)
    };
    let saved = match train::State::read(dir) {
        Ok(Some(saved)) => saved,
        Ok(None) => return start_over(format!("No saved training state in {}", dir.display())),
        Err(e) => return start_over(format!("The training state saved in {} does not read ({e})", dir.display())),
    };
    if saved.fingerprint() != fingerprint {
        return start_over(format!("The run saved in {} was asked something else ({})", dir.display(), differences(saved.fingerprint(), fingerprint).join(", ")));
    }
    let iter = saved.iter();
    // A finished run is whole with its final weights alone (an adapter copied without the
    // checkpoints and the optimizer's moments): no step is left to take, so none is read.
    let finished = iter >= iters && !dir.join(MOMENTS_FILE).is_file();
    let checkpoint = dir.join(checkpoint_file(iter));
    let weights_file = if finished && !checkpoint.is_file() { dir.join(WEIGHTS_FILE) } else { checkpoint };
    let (lora, weights) = match Lora::load_file(dir, &weights_file, config) {
        Ok(loaded) => loaded,
        Err(e) => return start_over(format!("The weights saved with the run in {} do not load ({e})", dir.display())),
    };
    if finished {
        let state = saved.finished(&weights).context("making the finished run's state")?;
        return Ok(Some((lora, weights, state)));
    }
    // The moments by the names of the weights they belong to, whatever order the file lists them in.
    match saved.load(dir, &lora.names()) {
        Ok(state) => Ok(Some((lora, weights, state))),
        Err(e) => start_over(format!("The training state saved in {} does not read ({e})", dir.display())),
    }
}

/// An exclusive advisory lock on the adapter directory `dir` itself (made if missing; no lock file
/// is left in or beside it), released when the returned handle is dropped or the process ends.
fn lock_adapter_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match kenning_formats::try_lock_dir(dir).with_context(|| format!("locking {}", dir.display()))? {
        Some(handle) => Ok(handle),
        None => bail!("another trainer is writing {} (one left running by a stopped kenning train?): stop it, or give another --adapter-path", dir.display()),
    }
}

/// Removes a file; one that is not there is fine.
fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

fn fuse(args: &FuseArgs) -> Result<()> {
    let (model_dir, mut model) = load_model(&args.model)?;
    let (lora, weights) = Lora::load(&args.adapter_path, &model.model.config)?;
    kenning_training::export::fuse(&lora, &weights, &mut model.model)?;
    kenning_training::export::write_model_dir(&model.model, &model_dir, &args.save_path)?;
    say(&format!("Fused {} into {} (with an Ollama Modelfile)", args.adapter_path.display(), args.save_path.display()));
    if args.export_gguf {
        let base = match &args.gguf_base {
            Some(base) => base.clone(),
            None if models::BUNDLED.iter().any(|(n, _)| *n == args.model) => args.model.clone(),
            None => bail!("--export-gguf needs the base model's GGUF (--gguf-base FILE): {} is not a bundled model", args.model),
        };
        let (kenning, mut command) = kenning();
        command.arg("export-gguf").arg(&args.save_path).arg("--adapter").arg(&args.adapter_path).arg("--base").arg(&base);
        command.arg("--out").arg(args.save_path.join(&args.gguf_path));
        let status = command.status().with_context(|| format!("running {} (build it with `cargo build -p kenning`)", kenning.display()))?;
        if !status.success() {
            bail!("{} export-gguf failed ({status})", kenning.display());
        }
    }
    Ok(())
}

/// The `kenning` binary beside this one (else on PATH), and a command running it.
fn kenning() -> (PathBuf, std::process::Command) {
    let name = format!("kenning{}", std::env::consts::EXE_SUFFIX);
    let kenning = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join(&name))).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(&name));
    let command = std::process::Command::new(&kenning);
    (kenning, command)
}

fn export(args: &ExportArgs) -> Result<()> {
    let (kenning, mut command) = kenning();
    command.arg("export-adapter").arg(&args.adapter_path);
    if let Some(model) = &args.model {
        command.arg("--base").arg(models::resolve(model, &models::cache_root()).map_err(anyhow::Error::msg)?);
    }
    if let Some(path) = &args.save_path {
        command.arg("--out").arg(path);
    }
    let status = command.status().with_context(|| format!("running {} (build it with `cargo build -p kenning`)", kenning.display()))?;
    if !status.success() {
        bail!("{} export-adapter failed ({status})", kenning.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trainer_writes_an_adapter_directory_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("adapters.candidate");
        let held = lock_adapter_dir(&adapter).unwrap();
        let second = lock_adapter_dir(&adapter).unwrap_err().to_string();
        assert!(second.contains("another trainer is writing"), "{second}");
        drop(held);
        lock_adapter_dir(&adapter).expect("free again once the first trainer ends");
        assert_eq!(std::fs::read_dir(&adapter).unwrap().count(), 0, "no lock file in the adapter directory");
    }

    #[test]
    fn what_changed_between_two_runs_is_named() {
        let args = Cli::parse_from(["kenning-train", "--train", "--iters", "200"]).train;
        let texts = [Text::whole("fn a() {}")];
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("my model");
        std::fs::create_dir(&model).unwrap();
        let print = |args: &TrainArgs, train: &[Text], valid: &[Text]| fingerprint(args, &model, train, valid).unwrap();
        let saved = print(&args, &texts, &[]);
        assert_eq!(saved, print(&args, &texts, &[]), "the same run, the same lines");
        assert!(differences(&saved, &saved).is_empty());
        // The same directory spelt otherwise is the same model (a path with a space reads whole).
        let spelt = fingerprint(&args, &model.join("..").join("my model"), &texts, &[]).unwrap();
        assert!(differences(&saved, &spelt).is_empty(), "{:?}", differences(&saved, &spelt));
        let other = Cli::parse_from(["kenning-train", "--train", "--iters", "300", "--learning-rate", "2e-4"]).train;
        assert_eq!(differences(&saved, &print(&other, &texts, &[])), ["iters: 200 -> 300", "learning_rate: 0.00001 -> 0.0002"]);
        // Other data, even the same texts split otherwise, is another run.
        let moved = differences(&saved, &print(&args, &[], &texts));
        assert!(moved.len() == 2 && moved[0].starts_with("train_data: ") && moved[1].starts_with("valid_data: "), "{moved:?}");
        let split = |a: &[&str], b: &[&str]| print(&args, &a.iter().map(|&s| Text::whole(s)).collect::<Vec<_>>(), &b.iter().map(|&s| Text::whole(s)).collect::<Vec<_>>());
        assert_ne!(split(&["x"], &["y", ""]), split(&["x", "", "y"], &[]));
        // Where a prompt ends is part of the data.
        let cut = |at: usize| print(&args, &[Text::Completion { prompt: "abcd"[..at].into(), completion: "abcd"[at..].into() }], &[]);
        assert_ne!(cut(1), cut(2));
        assert_ne!(cut(2), print(&args, &[Text::whole("abcd")], &[]));
        // Other starting weights too.
        let file = dir.path().join("start.safetensors");
        std::fs::write(&file, b"weights").unwrap();
        let from_file = Cli::parse_from(["kenning-train", "--train", "--iters", "200", "--resume-adapter-file", file.to_str().unwrap()]).train;
        assert_eq!(differences(&saved, &print(&from_file, &texts, &[])).len(), 1);
        assert!(differences(&saved, &print(&from_file, &texts, &[]))[0].starts_with("init: fresh -> file "));
    }

    #[test]
    fn the_time_left_is_the_pace_of_this_process_times_the_iterations_left() {
        assert_eq!(time_left(30.0, 10, 10, 100), "10% done, about 4:30 left");
        // Resumed at 50: 10 iterations here in 20 s, 40 left.
        assert_eq!(time_left(20.0, 10, 60, 100), "60% done, about 1:20 left");
        assert_eq!(time_left(3600.0, 1, 1, 3), "33% done, about 2:00:00 left");
        assert_eq!(time_left(5.0, 0, 0, 0), "0% done, about 0:00 left");
    }
}
