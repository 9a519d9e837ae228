//! `kenning dataset` (training data from the repository) and `kenning train` (dataset → LoRA
//! fine-tune with `kenning-train` → adapter registered for the workspace).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::assets::Assets;
use crate::dataset::{self, DatasetOptions, Split};
use crate::generate::llama::{LlamaEngine, LlamaOptions};
use crate::generate::{BundledModel, Generator, fused_gguf, lora_gguf};
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
    /// Fill-in-the-middle examples per 1,000 bytes of code.
    #[arg(long, default_value_t = 1.0)]
    fim_per_kb: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_family(s: &str) -> Result<Family, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown family {s:?}: qwen-coder, star-coder2, deepseek-coder, code-llama, codestral, code-gemma, plain"))
}

fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

fn options(family: Family, max_seq_length: usize, fim_per_kb: f64, seed: u64) -> DatasetOptions {
    DatasetOptions { family, max_seq_length, fim_per_kb, seed, ..DatasetOptions::default() }
}

/// A model's tokenizer: a bundled model or GGUF file through llama.cpp (vocabulary only matters),
/// a model directory through its `tokenizer.json`. The error says why there is none.
type Counter = Box<dyn Fn(&str) -> Option<usize> + Sync>;

fn tokenizer(paths: &Paths, model: &str) -> Result<(Counter, String)> {
    let dir = Path::new(model);
    if dir.is_dir() {
        let file = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let counter = move |text: &str| tokenizer.encode(text, false).ok().map(|e| e.len());
        return Ok((Box::new(counter), file.display().to_string()));
    }
    let path = BundledModel::resolve(model, &Assets::new(paths.assets()))?;
    let engine = LlamaEngine::load(&path, LlamaOptions { context: 256, threads: 1, ..LlamaOptions::default() })?;
    let counter = move |text: &str| engine.count_tokens(text).ok();
    Ok((Box::new(counter), path.display().to_string()))
}

/// Mines and writes a dataset, printing counts and a sample. Examples are sized with the model's
/// tokenizer when it is at hand, else at an estimated 3.5 bytes per token.
fn mine_and_report(paths: &Paths, root: &Path, model: &str, out_dir: &Path, options: &DatasetOptions) -> Result<dataset::Dataset> {
    let root = root.canonicalize().with_context(|| format!("{}", root.display()))?;
    let counter = match tokenizer(paths, model) {
        Ok((counter, from)) => {
            out(&format!("tokens counted with {from}"));
            Some(counter)
        }
        Err(e) => {
            out(&format!("no tokenizer for {model} ({e:#}): sizes estimated at {} bytes per token", options.bytes_per_token));
            None
        }
    };
    let data = dataset::mine_counted(&root, options, counter.as_deref().map(|c| c as dataset::TokenCounter));
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
    mine_and_report(paths, &args.path, &args.model, &args.out, &options(family, args.max_seq_length, args.fim_per_kb, args.seed))?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Repository root.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// MLX model to fine-tune: a bundled model's name or a model directory.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    #[arg(long, default_value_t = 200)]
    iters: usize,
    #[arg(long, default_value_t = 8)]
    num_layers: usize,
    #[arg(long, default_value_t = 512)]
    max_seq_length: usize,
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f32,
    /// Write the adapter here (default: next to the workspace's index).
    #[arg(long)]
    adapter_path: Option<PathBuf>,
    /// Do not add the adapter to the workspace's kenning.toml.
    #[arg(long)]
    no_register: bool,
    /// Recompute adapted layers in the backward pass (less memory for long examples, slower).
    #[arg(long)]
    grad_checkpoint: bool,
}

/// `kenning-train` beside this binary, else on PATH.
fn trainer() -> PathBuf {
    let name = format!("kenning-train{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join(&name))).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(name))
}

pub fn train_cmd(paths: &Paths, args: TrainArgs) -> Result<()> {
    let root = args.path.canonicalize().with_context(|| format!("{}", args.path.display()))?;
    let work = paths.training_for(&root);
    let data_dir = work.join("data");
    let adapter = args.adapter_path.clone().unwrap_or_else(|| work.join("adapters"));
    let family = Family::detect(&args.model);
    mine_and_report(paths, &root, &args.model, &data_dir, &options(family, args.max_seq_length, 1.0, 0))?;
    let trainer = trainer();
    let status = std::process::Command::new(&trainer)
        .args(["--model", &args.model, "--train", "--test", "--batch-size", "2", "--steps-per-report", "10", "--steps-per-eval", "50", "--val-batches", "8"])
        .args(["--iters", &args.iters.to_string(), "--num-layers", &args.num_layers.to_string()])
        .args(["--max-seq-length", &args.max_seq_length.to_string(), "--learning-rate", &args.learning_rate.to_string()])
        .args(["--warmup", &(args.iters / 20).to_string()])
        .args(args.grad_checkpoint.then_some("--grad-checkpoint"))
        .arg("--data")
        .arg(&data_dir)
        .arg("--adapter-path")
        .arg(&adapter)
        .status()
        .with_context(|| format!("running {} (built with `cargo build -p kenning-training`)", trainer.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", trainer.display());
    }
    if args.no_register {
        out(&format!("adapter written to {}", adapter.display()));
        return Ok(());
    }
    // MLX where it has a GPU; elsewhere llama.cpp runs the same bundled model faster.
    let apple_mlx = cfg!(all(feature = "mlx", target_os = "macos", target_arch = "aarch64"));
    let backend = if apple_mlx || BundledModel::ALL.iter().all(|m| m.name() != args.model) {
        Backend::Mlx
    } else {
        // Exported now, so that a problem shows here and the server starts at once.
        let exported = lora_gguf::for_llama(&adapter)?;
        out(&format!("llama.cpp adapter: {}", exported.display()));
        Backend::Llama
    };
    register(&root, &args.model, &adapter, backend)
}

/// The engine a registered adapter runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// llama.cpp with the bundled GGUF of the same model and the adapter's GGUF export.
    Llama,
    /// MLX, the adapter applied as trained (needs a build with the `mlx` feature).
    Mlx,
}

/// Points the workspace's `kenning.toml` at the adapter, unless it already configures generation:
/// then it says what to add.
fn register(root: &Path, model: &str, adapter: &Path, backend: Backend) -> Result<()> {
    let path = root.join("kenning.toml");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let section = format!(
        "[generation]\nbackend = \"{}\"\nmodel = {}\nadapter = {}\n",
        if backend == Backend::Llama { "llama" } else { "mlx" },
        toml::Value::String(model.to_owned()),
        toml::Value::String(adapter.display().to_string())
    );
    let parsed: toml::Table = toml::from_str(&existing).with_context(|| format!("{} is not valid TOML", path.display()))?;
    if parsed.contains_key("generation") {
        out(&format!("{} already configures generation; to use the adapter, set:\n{section}", path.display()));
        return Ok(());
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("\n# Added by `kenning train`: completions from {model} with the repository's adapter.\n{section}"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let note = if backend == Backend::Mlx && !cfg!(feature = "mlx") { " (the server needs the `mlx` feature to use it)" } else { "" };
    out(&format!("registered the adapter in {}{note}", path.display()));
    Ok(())
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
    let base = BundledModel::resolve(&args.base, &Assets::new(paths.assets()))?;
    let path = args.out.unwrap_or_else(|| args.fused.join("model.gguf"));
    let written = fused_gguf::write(&base, &args.fused, &args.adapter, &path)?;
    out(&format!("{} ({}: {} fused projections in F16, {} tensors as in {})", written.path.display(), written.architecture, written.replaced, written.copied, base.display()));
    if let Some(line) = point_modelfile_at(&path)? {
        out(&line);
    }
    Ok(())
}

/// A Modelfile beside `gguf` (kenning-train fuse writes one) that builds from its directory
/// (`FROM .`) is made to build from the GGUF; returns what changed.
fn point_modelfile_at(gguf: &Path) -> Result<Option<String>> {
    let (Some(dir), Some(name)) = (gguf.parent(), gguf.file_name()) else { return Ok(None) };
    let modelfile = dir.join("Modelfile");
    let Ok(text) = std::fs::read_to_string(&modelfile) else { return Ok(None) };
    if !text.lines().any(|l| l == "FROM .") {
        return Ok(None);
    }
    let from = format!("FROM ./{}", name.to_string_lossy());
    let lines: Vec<&str> = text.lines().map(|l| if l == "FROM ." { from.as_str() } else { l }).collect();
    std::fs::write(&modelfile, lines.join("\n") + "\n").with_context(|| format!("writing {}", modelfile.display()))?;
    Ok(Some(format!("{}: {from}", modelfile.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Generation, Layers};

    #[test]
    fn registering_writes_a_generation_section_the_server_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kenning.toml"), "[completion]\ndebounce_ms = 50").unwrap();
        let adapter = dir.path().join("my adapters").join("run \"1\"");
        register(dir.path(), "smollm2-135m", &adapter, Backend::Llama).unwrap();
        let config = Layers::from_workspace(dir.path()).unwrap().resolve().unwrap();
        match &config.generation {
            Generation::Llama { model, adapter: Some(a), .. } => assert_eq!((model.as_str(), a.as_path()), ("smollm2-135m", adapter.as_path())),
            other => panic!("not registered: {other:?}"),
        }
        assert_eq!(config.completion.debounce_ms, 50, "the existing settings stay");

        // A workspace that already chose its generation keeps it.
        let before = std::fs::read_to_string(dir.path().join("kenning.toml")).unwrap();
        register(dir.path(), "other-model", &adapter, Backend::Mlx).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("kenning.toml")).unwrap(), before);

        let other = tempfile::tempdir().unwrap();
        register(other.path(), "/models/mine", &adapter, Backend::Mlx).unwrap();
        let config = Layers::from_workspace(other.path()).unwrap().resolve().unwrap();
        match &config.generation {
            Generation::Mlx { model, adapter: Some(a), .. } => assert_eq!((model.as_str(), a.as_path()), ("/models/mine", adapter.as_path())),
            other => panic!("not registered: {other:?}"),
        }
    }

    #[test]
    fn the_modelfile_beside_a_fused_gguf_builds_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("model.gguf");
        assert_eq!(point_modelfile_at(&gguf).unwrap(), None, "no Modelfile: nothing to do");
        std::fs::write(dir.path().join("Modelfile"), "# comment\nFROM .\nTEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n").unwrap();
        assert!(point_modelfile_at(&gguf).unwrap().is_some());
        let text = std::fs::read_to_string(dir.path().join("Modelfile")).unwrap();
        assert_eq!(text, "# comment\nFROM ./model.gguf\nTEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n");
        // Done once: a second export leaves it as it is.
        assert_eq!(point_modelfile_at(&gguf).unwrap(), None);
        assert_eq!(std::fs::read_to_string(dir.path().join("Modelfile")).unwrap(), text);
    }

    #[test]
    fn an_invalid_kenning_toml_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kenning.toml"), "[completion\n").unwrap();
        assert!(register(dir.path(), "smollm2-135m", Path::new("/a"), Backend::Llama).is_err());
        assert_eq!(std::fs::read_to_string(dir.path().join("kenning.toml")).unwrap(), "[completion\n");
    }
}
