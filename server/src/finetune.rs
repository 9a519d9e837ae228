//! Fine-tuning a workspace's model, what `kenning train` and `kenning export-gguf` do besides
//! printing: the tokenizer that sizes training examples, running `kenning-train` (the MLX trainer,
//! a binary of its own), choosing the engine an adapter runs on, registering the adapter in the
//! workspace's `kenning.toml`, and pointing a fused model's Modelfile at its GGUF.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use kenning_formats::adapter::{checkpoint_iter, CONFIG_FILE, MOMENTS_FILE, STATE_FILE, WEIGHTS_FILE};

use crate::formats::lora_gguf;
use crate::generate::llama::{LlamaEngine, LlamaOptions};
use crate::generate::{BundledModel, GenerateError, Generator};
use crate::paths::Paths;

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] GenerateError),
    #[error(transparent)]
    Adapter(#[from] lora_gguf::LoraError),
    #[error("running {} (built with `cargo build -p kenning-training`): {error}", path.display())]
    NoTrainer { path: PathBuf, error: std::io::Error },
    #[error("{} failed ({status})", path.display())]
    TrainerFailed { path: PathBuf, status: ExitStatus },
    /// Ctrl-C: the trainer saved its weights and state and stopped (status 130).
    #[error("training was stopped before its last iteration; the same command carries on from where it stopped")]
    TrainerStopped,
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> FinetuneError {
    FinetuneError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// Counts the tokens of a text (`None`: the tokenizer failed on it).
pub type Counter = Box<dyn Fn(&str) -> Option<usize> + Sync>;

/// A model's tokenizer and where it came from: a model directory through its `tokenizer.json`, a
/// bundled model or GGUF file through llama.cpp (only the vocabulary matters). The error says why
/// there is none.
pub fn tokenizer(paths: &Paths, model: &str) -> Result<(Counter, String), FinetuneError> {
    let dir = Path::new(model);
    if dir.is_dir() {
        let file = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&file).map_err(|e| file_error(&file, e))?;
        let counter = move |text: &str| tokenizer.encode(text, false).ok().map(|e| e.len());
        return Ok((Box::new(counter), file.display().to_string()));
    }
    let path = crate::models::resolve(model, paths).map_err(GenerateError::from)?;
    let engine = LlamaEngine::load(&path, LlamaOptions { context: 256, threads: 1, ..LlamaOptions::default() })?;
    let counter = move |text: &str| engine.count_tokens(text).ok();
    Ok((Box::new(counter), path.display().to_string()))
}

/// `kenning-train` beside this binary, else on PATH.
pub fn trainer() -> PathBuf {
    let name = format!("kenning-train{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join(&name))).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(name))
}

/// What one `kenning train` run asks of the trainer.
#[derive(Debug, Clone)]
pub struct TrainRun<'a> {
    pub model: &'a str,
    pub data: &'a Path,
    pub adapter: &'a Path,
    pub iters: usize,
    pub num_layers: u32,
    pub max_seq_length: u32,
    pub learning_rate: f32,
    pub rank: u32,
    pub scale: f32,
    pub grad_checkpoint: bool,
    /// Carry on the run saved in `adapter` when it was asked the same (the trainer checks; else it
    /// starts over).
    pub resume: bool,
}

/// Examples in each of the trainer's batches (`--batch-size`).
pub const BATCH_SIZE: usize = 2;

/// Iterations between the trainer's checkpoints: a stopped or killed `kenning train` loses at most
/// this many when it is run again.
pub const SAVE_EVERY: usize = 20;

/// Runs `trainer` (see [`trainer`]) on a dataset directory; its progress goes to this process's
/// output as it comes.
pub fn run_trainer(trainer: &Path, run: &TrainRun<'_>) -> Result<(), FinetuneError> {
    let mut child = std::process::Command::new(trainer)
        .args(["--model", run.model, "--train", "--test", "--batch-size", &BATCH_SIZE.to_string(), "--steps-per-report", "10", "--steps-per-eval", "50", "--val-batches", "8", "--test-batches", "8"])
        .args(["--iters", &run.iters.to_string(), "--num-layers", &run.num_layers.to_string()])
        .args(["--max-seq-length", &run.max_seq_length.to_string(), "--learning-rate", &run.learning_rate.to_string()])
        .args(["--rank", &run.rank.to_string(), "--scale", &run.scale.to_string()])
        .args(["--warmup", &(run.iters / 20).to_string()])
        .args(["--save-every", &SAVE_EVERY.to_string()])
        .args(run.grad_checkpoint.then_some("--grad-checkpoint"))
        .args(run.resume.then_some("--resume"))
        .arg("--data")
        .arg(run.data)
        .arg("--adapter-path")
        .arg(run.adapter)
        .spawn()
        .map_err(|error| FinetuneError::NoTrainer { path: trainer.to_owned(), error })?;
    let status = {
        // A Ctrl-C in the terminal reaches the trainer too (the same process group): it saves and
        // exits with 130. This process waits for that rather than dying first and leaving the
        // trainer running behind the shell's prompt.
        let _ignoring = IgnoreInterrupts::new();
        child.wait().map_err(|error| FinetuneError::NoTrainer { path: trainer.to_owned(), error })?
    };
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => Err(FinetuneError::TrainerStopped),
        _ => Err(FinetuneError::TrainerFailed { path: trainer.to_owned(), status }),
    }
}

/// SIGINT ignored in this process while it lives, the previous disposition restored after.
struct IgnoreInterrupts {
    #[cfg(unix)]
    previous: Option<nix::sys::signal::SigAction>,
}

impl IgnoreInterrupts {
    #[allow(unsafe_code)]
    fn new() -> Self {
        #[cfg(unix)]
        {
            use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
            let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
            // SAFETY: SIG_IGN runs no code in this process, so no handler can break async-signal safety.
            let previous = unsafe { sigaction(Signal::SIGINT, &ignore) }.ok();
            Self { previous }
        }
        #[cfg(not(unix))]
        Self {}
    }
}

impl Drop for IgnoreInterrupts {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(previous) = &self.previous {
            // SAFETY: puts back the disposition that was there before `new`.
            let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, previous) };
        }
    }
}

/// The engine a registered adapter runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// llama.cpp with the bundled GGUF of the same model and the adapter's GGUF export.
    Llama,
    /// MLX, the adapter applied as trained (needs a build with the `mlx` feature).
    Mlx,
}

impl Backend {
    /// MLX where it has a GPU (Apple Silicon, in a build with MLX) or for a model kenning does not
    /// bundle as GGUF; elsewhere llama.cpp, which runs the same bundled model faster.
    pub fn for_model(model: &str) -> Self {
        let apple_mlx = cfg!(all(feature = "mlx", target_os = "macos", target_arch = "aarch64"));
        if apple_mlx || BundledModel::ALL.iter().all(|m| m.name() != model) { Backend::Mlx } else { Backend::Llama }
    }
}

/// What [`register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The section was added to `path`; `needs_mlx`: this build cannot run it (no `mlx` feature).
    Written { path: PathBuf, needs_mlx: bool },
    /// `path` already configures generation and was left alone; `section` is what to add.
    AlreadyConfigured { path: PathBuf, section: String },
}

/// The `[generation]` section that completes with `model` and `adapter` on `backend`.
pub fn section(model: &str, adapter: &Path, backend: Backend) -> String {
    format!(
        "[generation]\nbackend = \"{}\"\nmodel = {}\nadapter = {}\n",
        if backend == Backend::Llama { "llama" } else { "mlx" },
        toml::Value::String(model.to_owned()),
        toml::Value::String(adapter.display().to_string())
    )
}

/// The `[generation]` table of the workspace's kenning.toml; `None` when there is none (or the
/// file is not there or not valid TOML: `register` says so when it would write).
pub fn configured_generation(root: &Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(root.join(crate::config::FILE_NAME)).ok()?;
    match toml::from_str::<toml::Table>(&text).ok()?.remove("generation")? {
        toml::Value::Table(t) => Some(t),
        _ => None,
    }
}

/// Whether a file named `name` belongs in an adapter directory: the weights and their numbered
/// checkpoints, the config, the training state, llama.cpp's export, and the half-written copies
/// of these that a stopped writer leaves (hidden `.….partial…` files, `adapter-llama.gguf.partial`).
pub fn is_adapter_file(name: &str) -> bool {
    let known = [WEIGHTS_FILE, CONFIG_FILE, STATE_FILE, MOMENTS_FILE, lora_gguf::EXPORT_NAME];
    let checkpoint = checkpoint_iter(name).is_some();
    let partial = (name.starts_with('.') && name.contains(".partial")) || name.strip_suffix(".partial") == Some(lora_gguf::EXPORT_NAME);
    known.contains(&name) || checkpoint || partial
}

/// Whether the workspace's `kenning.toml` completes with the adapter at `adapter` (its
/// `[generation]` names that directory).
pub fn configured_adapter_is(root: &Path, adapter: &Path) -> bool {
    let Some(generation) = configured_generation(root) else { return false };
    let Some(named) = generation.get("adapter").and_then(|a| a.as_str()) else { return false };
    let same = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    same(&root.join(named)) == same(adapter)
}

/// Points the workspace's `kenning.toml` at the adapter, unless it already configures generation.
/// An invalid `kenning.toml` is an error and is left as it is.
pub fn register(root: &Path, model: &str, adapter: &Path, backend: Backend) -> Result<Registered, FinetuneError> {
    let path = root.join(crate::config::FILE_NAME);
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let section = section(model, adapter, backend);
    let parsed: toml::Table = toml::from_str(&existing).map_err(|e| file_error(&path, format!("not valid TOML: {e}")))?;
    if parsed.contains_key("generation") {
        return Ok(Registered::AlreadyConfigured { path, section });
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("\n# Added by `kenning train`: completions from {model} with the repository's adapter.\n{section}"));
    std::fs::write(&path, text).map_err(|e| file_error(&path, e))?;
    Ok(Registered::Written { path, needs_mlx: backend == Backend::Mlx && !cfg!(feature = "mlx") })
}

/// A Modelfile beside `gguf` (kenning-train fuse writes one) that builds from its directory
/// (`FROM .`) is made to build from the GGUF; returns what changed.
pub fn point_modelfile_at(gguf: &Path) -> Result<Option<String>, FinetuneError> {
    let (Some(dir), Some(name)) = (gguf.parent(), gguf.file_name()) else { return Ok(None) };
    let modelfile = dir.join("Modelfile");
    let Ok(text) = std::fs::read_to_string(&modelfile) else { return Ok(None) };
    if !text.lines().any(|l| l == "FROM .") {
        return Ok(None);
    }
    let from = format!("FROM ./{}", name.to_string_lossy());
    let lines: Vec<&str> = text.lines().map(|l| if l == "FROM ." { from.as_str() } else { l }).collect();
    std::fs::write(&modelfile, lines.join("\n") + "\n").map_err(|e| file_error(&modelfile, e))?;
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
        assert!(configured_generation(dir.path()).is_none() && !configured_adapter_is(dir.path(), &adapter));
        register(dir.path(), "smollm2-135m", &adapter, Backend::Llama).unwrap();
        let config = Layers::from_workspace(dir.path()).unwrap().resolve().unwrap();
        match &config.generation {
            Generation::Llama { model, adapter: Some(a), .. } => assert_eq!((model.as_str(), a.as_path()), ("smollm2-135m", adapter.as_path())),
            other => panic!("not registered: {other:?}"),
        }
        assert_eq!(config.completion.debounce_ms, 50, "the existing settings stay");
        assert!(configured_generation(dir.path()).is_some_and(|g| g.get("model").and_then(|m| m.as_str()) == Some("smollm2-135m")));
        assert!(configured_adapter_is(dir.path(), &adapter) && !configured_adapter_is(dir.path(), &dir.path().join("elsewhere")));

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
