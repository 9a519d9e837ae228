//! Configuration: one typed schema, read from `kenning.toml` in the workspace root, the editor's
//! `initializationOptions` and `workspace/didChangeConfiguration`, in that order of precedence
//! (later wins, key by key).
//!
//! Sources are merged as plain trees first and deserialized once, so an unknown key or a bad value
//! is reported with its full path (`completion.debounce_ms: invalid type ...`) and the source it
//! came from. A config that does not parse is never half-applied: the previous one stays.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::prompt::{Family, Layout};

/// The file read from a workspace root.
pub const FILE_NAME: &str = "kenning.toml";

#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// `kenning.toml`, `initializationOptions`, ...
    pub source_name: String,
    /// Dotted path of the key at fault (empty when the text itself does not parse).
    pub key: String,
    pub message: String,
}

/// Everything kenning can be told.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub generation: Generation,
    pub completion: CompletionSettings,
    pub ask: Ask,
    pub index: Index,
}

/// Which engine generates text, chosen by `backend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum Generation {
    /// llama.cpp in-process (the default everywhere but Apple Silicon).
    Llama {
        /// A bundled model name or a path to a GGUF file.
        #[serde(default = "default_model")]
        model: String,
        /// A LoRA adapter: a llama.cpp GGUF file, or an adapter directory of `kenning train`,
        /// `kenning-train` or `mlx_lm.lora` (converted to `adapter-llama.gguf` inside it on load).
        #[serde(default)]
        adapter: Option<PathBuf>,
        /// CPU threads while generating; 0 = the cores, at most 4.
        #[serde(default)]
        threads: usize,
        /// CPU threads while reading a prompt; 0 = all the cores.
        #[serde(default)]
        prefill_threads: usize,
        /// Keep cached tokens a new prompt repeats elsewhere, moved into place: after a deletion
        /// (context evicted from the ring, the prefix window moving on) and after text typed before
        /// them (the suffix); false = only the common prefix.
        #[serde(default = "yes")]
        shift_cache: bool,
        /// How the weights are held: `auto` (a bundled model re-quantized once to 8 bits, except
        /// on Apple Silicon's GPU; a file given by path as it is), `as-is`, or `q8_0` (any model).
        #[serde(default)]
        weights: Weights,
        /// Context window in tokens.
        #[serde(default = "default_context")]
        context: u32,
        /// Prompt format; detected from the model name when absent.
        #[serde(default)]
        family: Option<Family>,
    },
    /// MLX in-process (builds with the `mlx` feature): an MLX/HF model directory, or a bundled
    /// model converted by `scripts/setup` (smollm2-135m).
    Mlx {
        #[serde(default = "default_mlx_model")]
        model: String,
        /// A LoRA adapter directory (`adapters.safetensors` + `adapter_config.json`, from
        /// `kenning train`, `kenning-train` or `mlx_lm.lora`), applied without fusing.
        #[serde(default)]
        adapter: Option<PathBuf>,
        #[serde(default)]
        family: Option<Family>,
    },
    /// Ollama's `/api/generate` (raw prompt, so FIM tokens are ours).
    Ollama {
        #[serde(default = "default_ollama_url")]
        url: String,
        model: String,
        #[serde(default)]
        family: Option<Family>,
    },
    /// An OpenAI-compatible `/v1/completions` server (llama.cpp server, LM Studio, vLLM, mlx_lm.server).
    Openai {
        url: String,
        model: String,
        /// Environment variable holding the API key, if the server wants one.
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default)]
        family: Option<Family>,
    },
    /// No model: no completions; `ask` answers extractively.
    None,
}

impl Default for Generation {
    fn default() -> Self {
        Generation::Llama {
            model: default_model(),
            adapter: None,
            threads: 0,
            prefill_threads: 0,
            shift_cache: true,
            weights: Weights::Auto,
            context: default_context(),
            family: None,
        }
    }
}

/// The weights a llama.cpp model runs with (`generation.weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weights {
    /// Bundled models as [`Weights::Q8_0`] where llama.cpp runs on the CPU, anything else as is.
    #[default]
    Auto,
    /// The model file as it is.
    AsIs,
    /// Re-quantized once to 8 bits (Q8_0) and cached: on a CPU prompts are read faster than
    /// with the bundled 4-bit K-quants (~22 % less time), and tokens decoded no slower.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Weights {
    /// Whether a model (bundled or not) is re-quantized to 8 bits.
    pub fn q8_0(self, bundled: bool) -> bool {
        match self {
            Weights::Auto => bundled && !cfg!(all(target_os = "macos", target_arch = "aarch64")),
            Weights::AsIs => false,
            Weights::Q8_0 => true,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_model() -> String {
    "qwen2.5-coder-0.5b".into()
}

fn default_mlx_model() -> String {
    "smollm2-135m".into()
}

fn default_context() -> u32 {
    4096
}

fn default_ollama_url() -> String {
    "http://127.0.0.1:11434".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompletionSettings {
    pub enabled: bool,
    /// Wait this long after a request for newer edits before generating.
    pub debounce_ms: u64,
    /// Token budget of the whole prompt (context + prefix + suffix).
    pub prompt_tokens: usize,
    /// Tokens of the text after the cursor the prompt carries at most (also at most 15 % of
    /// `prompt_tokens`). The llama engine moves the suffix's cache entries past typed text, so a
    /// keystroke does not compute it again (other engines do).
    pub suffix_tokens: usize,
    /// Token budget of the first requests at a new place (another file, or far from the last
    /// one), before its whole prompt is cached: every token is computed before the first ghost
    /// text there. 37.5 % prefix, 9.4 % suffix (each at most what `prompt_tokens` gives), the rest
    /// new context; the whole prompt follows at the first pause.
    pub first_prompt_tokens: usize,
    /// Generated tokens at most, for one line and for a block.
    pub max_tokens: usize,
    pub max_tokens_multiline: usize,
    /// Lines at most in a multi-line completion.
    pub max_lines: usize,
    /// Use the index (hybrid search and definitions); off = prefix/suffix and open buffers only.
    pub retrieval: bool,
    /// With retrieval: also code found by hybrid search for the text at the cursor (similar code);
    /// off = definitions of names near the cursor and open buffers only.
    pub similar_code: bool,
    /// With `similar_code`: also prose and the other files kenning does not parse as code (docs,
    /// READMEs, configuration); off = similar code from source files only (a prose hit is dropped,
    /// not replaced by the next code hit: asking the search for more reorders what it finds).
    pub similar_prose: bool,
    /// With retrieval: also the signatures of what the file imports (Rust `use`, Python `from …
    /// import`, JavaScript/TypeScript and Java `import`), names not used yet first.
    pub imports: bool,
    /// Leave out context that mostly repeats the code around the cursor (identifier sets more than
    /// half alike): such snippets can pull the model into copying a neighbour's line.
    pub drop_local_repeats: bool,
    /// A snippet too long for the room the better ones leave in the ring is cut down to fit
    /// instead of left out: a definition to its first lines (signature and doc), other code to
    /// its window most like the code around the cursor.
    pub trim_to_fit: bool,
    /// `kenning eval` only, an experiment: complete first without context (with the mode's model:
    /// for hybrid, the adapter's), then gather context as if that draft had been typed (its line joins the search query, its names are looked up as
    /// definitions; RepoCoder's iterative retrieval), and complete again with it. Two generations
    /// per task; the editor's ghost text and `kenning complete` do not use it. Left out of the
    /// settings a kept run records (`run.json`) while off, so runs kept before it carry on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub draft_query: bool,
    /// With retrieval: context also for a request at a line's start (only indentation before the
    /// cursor: the whole line is to be guessed). Off = such a request is completed from the local
    /// prefix and suffix alone (its prompt goes to the engine's other cache sequence; the ring is
    /// kept for the requests that follow on the line). With an engine that keeps one cache (HTTP
    /// servers), every line start and the request after it compute their whole prompt.
    pub line_start_context: bool,
    /// After a one-line suggestion, compute the next line's in the background, as if the user
    /// accepted it and pressed Enter: the request there is then answered at once when they do.
    pub speculate: bool,
    /// When an edit arrives somewhere new (another file, or more than 32 lines away), gather
    /// context there and put the first prompt into the engine's cache at once, before the first
    /// request comes. Off by default: on the typing benchmark (2026-12-04, 2 cores) it did not
    /// bring the first ghost text sooner (4.48 s with it, 3.81 s without; README).
    pub prepare_on_edit: bool,
    /// Where the suffix goes in the prompt: `psm` (prefix, suffix, middle) or `spm` (suffix first:
    /// typing reuses the cached suffix).
    pub layout: Layout,
}

impl CompletionSettings {
    /// These settings for one request with no editor after it (`kenning complete`, `kenning
    /// eval`): no speculation on a next line nobody will ask for (it would keep the engine busy
    /// into the next task's time).
    pub fn one_shot(&self) -> Self {
        Self { speculate: false, ..self.clone() }
    }
}

impl Default for CompletionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            debounce_ms: 75,
            prompt_tokens: 1_536,
            suffix_tokens: crate::prompt::MAX_SUFFIX_TOKENS,
            first_prompt_tokens: 512,
            max_tokens: 48,
            max_tokens_multiline: 128,
            max_lines: 12,
            retrieval: true,
            similar_code: true,
            similar_prose: true,
            imports: false,
            drop_local_repeats: false,
            trim_to_fit: false,
            draft_query: false,
            line_start_context: true,
            speculate: true,
            prepare_on_edit: false,
            layout: Layout::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ask {
    /// Sources retrieved for a question.
    pub sources: usize,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// The model that answers, with its own backend (the same keys as `[generation]`): a larger
    /// instruct model for answers beside a small one for fill-in-the-middle. Absent: the
    /// completion model answers too.
    pub generation: Option<Generation>,
}

impl Default for Ask {
    fn default() -> Self {
        Self { sources: 6, prompt_tokens: 2_048, max_tokens: 320, generation: None }
    }
}

impl Ask {
    /// The generation settings questions are answered with.
    pub fn generation<'a>(&'a self, completion: &'a Generation) -> &'a Generation {
        self.generation.as_ref().unwrap_or(completion)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Index {
    /// Compute embeddings (semantic search); off = keyword search only.
    pub embeddings: bool,
    pub max_file_bytes: u64,
    /// The team's shared index (`s3://BUCKET/PREFIX`, `file:///PATH` or an absolute path), published
    /// with `kenning index --publish`: searched under this machine's index, which then holds only
    /// the files that differ here.
    pub shared: Option<String>,
    /// How often (seconds) a running editor asks the shared index's store for a newer publication
    /// (and tries again a store it could not use); a newer one is pulled and put under this index.
    pub shared_check_secs: u64,
}

impl Default for Index {
    fn default() -> Self {
        Self { embeddings: true, max_file_bytes: crate::workspace::WalkOptions::default().max_file_bytes, shared: None, shared_check_secs: 300 }
    }
}

/// Whether `model`, an in-process engine's `model` in the workspace's `kenning.toml`, is a
/// relative path into the workspace: one that is there (a GGUF file, an MLX model's directory), or
/// one that is plainly a path (`.gguf`, `./`, `../`; a missing one is then reported at the
/// workspace's path). Names stay as they are: bundled and catalogued models, `hf:` and `ollama:`
/// references.
fn is_workspace_model_path(root: &Path, model: &str) -> bool {
    let path = Path::new(model);
    if model.is_empty() || !path.is_relative() || model.contains(':') {
        return false;
    }
    if crate::generate::BundledModel::ALL.iter().any(|m| m.name() == model) || crate::models::catalogue::find(model).is_some() {
        return false;
    }
    root.join(path).exists() || model.to_ascii_lowercase().ends_with(".gguf") || model.starts_with("./") || model.starts_with("../")
}

impl Generation {
    /// The model as configured (a name, path or `hf:`/`ollama:` reference); `None` without one.
    pub fn model(&self) -> Option<&str> {
        match self {
            Generation::Llama { model, .. } | Generation::Mlx { model, .. } | Generation::Ollama { model, .. } | Generation::Openai { model, .. } => {
                Some(model)
            }
            Generation::None => None,
        }
    }

    /// The LoRA adapter of an in-process engine, if one is configured.
    pub fn adapter(&self) -> Option<&std::path::Path> {
        match self {
            Generation::Llama { adapter, .. } | Generation::Mlx { adapter, .. } => adapter.as_deref(),
            _ => None,
        }
    }

    /// The prompt family: configured, else detected from the model name.
    pub fn family(&self) -> Family {
        match self {
            Generation::Llama { model, family, .. }
            | Generation::Mlx { model, family, .. }
            | Generation::Ollama { model, family, .. }
            | Generation::Openai { model, family, .. } => {
                family.unwrap_or_else(|| Family::detect(model))
            }
            Generation::None => Family::Plain,
        }
    }
}

/// The configuration sources of one workspace, kept so a later change can be re-merged.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    layers: Vec<(String, Value)>,
}

impl Layers {
    /// Reads `kenning.toml` from `root` if present.
    pub fn from_workspace(root: &Path) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        let path = root.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => layers.set_workspace_toml(root, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConfigError { source_name: path.display().to_string(), key: String::new(), message: e.to_string() }),
        }
        Ok(layers)
    }

    /// Sets (or replaces) the `kenning.toml` layer of the workspace `root` from its text: a relative
    /// adapter or model path there is the workspace's (`adapter = "adapters/mine"`, `model =
    /// "models/team.gguf"`), not the server process's working directory, which the editor chooses.
    pub fn set_workspace_toml(&mut self, root: &Path, text: &str) -> Result<(), ConfigError> {
        let mut value: Value = Self::parse_toml(FILE_NAME, text)?;
        for table in ["/generation", "/ask/generation"] {
            if let Some(Value::String(path)) = value.pointer_mut(&format!("{table}/adapter"))
                && Path::new(path.as_str()).is_relative()
            {
                *path = root.join(path.as_str()).display().to_string();
            }
            // A model server's model is its name, whatever it looks like (`llama-server` names its
            // model after the GGUF file it loaded).
            let served = matches!(value.pointer(&format!("{table}/backend")).and_then(Value::as_str), Some("ollama" | "openai"));
            if let Some(Value::String(model)) = value.pointer_mut(&format!("{table}/model"))
                && !served
                && is_workspace_model_path(root, model)
            {
                *model = root.join(model.as_str()).display().to_string();
            }
        }
        self.set(FILE_NAME, value)
    }

    fn parse_toml(name: &str, text: &str) -> Result<Value, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            source_name: name.to_owned(),
            key: String::new(),
            message: e.message().to_owned() + &e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default(),
        })
    }

    /// Takes a layer out, whether or not the others resolve without it (a removed workspace
    /// folder's `kenning.toml` no longer applies, even when the rest is invalid alone).
    pub fn remove(&mut self, name: &str) {
        self.layers.retain(|(n, _)| n != name);
    }

    /// Sets (or replaces) a layer from TOML text.
    pub fn set_toml(&mut self, name: &str, text: &str) -> Result<(), ConfigError> {
        let value = Self::parse_toml(name, text)?;
        self.set(name, value)
    }

    /// Sets (or replaces) a layer from JSON (LSP settings). `null` removes it. A `kenning` key at
    /// the top is taken alone (`{"kenning": {...}}`, as VS Code and shared settings send it).
    pub fn set(&mut self, name: &str, mut value: Value) -> Result<(), ConfigError> {
        if let Value::Object(map) = &mut value
            && let Some(inner) = map.remove("kenning")
        {
            value = inner;
        }
        if !value.is_null() && !value.is_object() {
            return Err(ConfigError { source_name: name.to_owned(), key: String::new(), message: "expected a table of settings".into() });
        }
        let mut next = self.clone();
        // A layer set again keeps its place: kenning.toml read again (edited, or written by
        // `kenning train`) stays under the editor's settings. A new kenning.toml goes first.
        match next.layers.iter().position(|(n, _)| n == name) {
            Some(i) if value.is_null() => {
                next.layers.remove(i);
            }
            Some(i) => next.layers[i].1 = value,
            None if value.is_null() => {}
            None if name == FILE_NAME => next.layers.insert(0, (name.to_owned(), value)),
            None => next.layers.push((name.to_owned(), value)),
        }
        next.resolve()?;
        *self = next;
        Ok(())
    }

    /// Merges the layers and deserializes the result.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut merged = Value::Object(Default::default());
        for (name, layer) in &self.layers {
            let mut layer = layer.clone();
            fill_backends(&mut layer, &merged);
            // Check each layer alone first so the error names the source at fault; a generation
            // table it changes is checked over the one below (`model` alone over an openai table
            // that has its `url` is whole).
            let mut alone = Value::Object(Default::default());
            for pointer in ["/generation", "/ask/generation"] {
                if let (Some(below), Some(Value::Object(over))) = (merged.pointer(pointer), layer.pointer(pointer))
                    && below.get("backend") == over.get("backend")
                {
                    let mut seeded = Value::Object(Default::default());
                    let keys: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
                    let mut at = &mut seeded;
                    for key in &keys[..keys.len() - 1] {
                        at = at.as_object_mut().expect("built as objects").entry(*key).or_insert_with(|| Value::Object(Default::default()));
                    }
                    at.as_object_mut().expect("built as objects").insert(keys[keys.len() - 1].to_owned(), below.clone());
                    merge(&mut alone, seeded);
                }
            }
            merge(&mut alone, layer.clone());
            parse(name, alone)?;
            merge(&mut merged, layer);
        }
        parse("configuration", merged)
    }
}

/// A generation table (`generation`, `ask.generation`) that names no `backend` keeps the one the
/// layers below it chose, else llama: `[generation] threads = 2` alone is a llama setting.
fn fill_backends(layer: &mut Value, below: &Value) {
    for pointer in ["/generation", "/ask/generation"] {
        if let Some(Value::Object(table)) = layer.pointer_mut(pointer)
            && !table.contains_key("backend")
        {
            let inherited = below.pointer(pointer).and_then(|t| t.get("backend")).cloned();
            table.insert("backend".into(), inherited.unwrap_or_else(|| Value::String("llama".into())));
        }
    }
}

fn parse(name: &str, value: Value) -> Result<Config, ConfigError> {
    let config: Config = serde_path_to_error::deserialize(value).map_err(|e| ConfigError {
        source_name: name.to_owned(),
        key: e.path().to_string().trim_start_matches('.').to_owned(),
        message: e.into_inner().to_string(),
    })?;
    config.check().map_err(|(key, message)| ConfigError { source_name: name.to_owned(), key: key.to_owned(), message })?;
    Ok(config)
}

/// Smallest context window: llama.cpp asserts when a prompt batch exceeds a smaller one.
pub const MIN_CONTEXT: u32 = 256;
/// Largest context window accepted (the bundled models are trained to 32k).
pub const MAX_CONTEXT: u32 = 131_072;

/// Most CPU threads accepted: a multiple of the machine's cores (llama.cpp aborts the process
/// when it cannot start the threads it is told to).
pub fn max_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * 4
}

impl Config {
    /// Bounds on the numbers the engines would abort or hang on: the key at fault and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        fn within<T: PartialOrd + std::fmt::Display>(key: &'static str, value: T, min: T, max: T) -> Result<(), (&'static str, String)> {
            if value < min || value > max { Err((key, format!("{value} is out of range: between {min} and {max}"))) } else { Ok(()) }
        }
        let generations = [
            (Some(&self.generation), ["generation.context", "generation.threads", "generation.prefill_threads"]),
            (self.ask.generation.as_ref(), ["ask.generation.context", "ask.generation.threads", "ask.generation.prefill_threads"]),
        ];
        for (generation, [context_key, threads_key, prefill_key]) in generations {
            if let Some(Generation::Llama { threads, prefill_threads, context, .. }) = generation {
                within(context_key, *context, MIN_CONTEXT, MAX_CONTEXT)?;
                within(threads_key, *threads, 0, max_threads())?;
                within(prefill_key, *prefill_threads, 0, max_threads())?;
            }
        }
        let c = &self.completion;
        within("completion.debounce_ms", c.debounce_ms, 0, 10_000)?;
        within("completion.prompt_tokens", c.prompt_tokens, 64, MAX_CONTEXT as usize)?;
        within("completion.suffix_tokens", c.suffix_tokens, 0, MAX_CONTEXT as usize)?;
        within("completion.first_prompt_tokens", c.first_prompt_tokens, 64, MAX_CONTEXT as usize)?;
        within("completion.max_tokens", c.max_tokens, 1, 4_096)?;
        within("completion.max_tokens_multiline", c.max_tokens_multiline, 1, 4_096)?;
        within("completion.max_lines", c.max_lines, 1, 1_000)?;
        within("ask.sources", self.ask.sources, 1, 100)?;
        within("ask.prompt_tokens", self.ask.prompt_tokens, 64, MAX_CONTEXT as usize)?;
        within("ask.max_tokens", self.ask.max_tokens, 1, 8_192)?;
        within("index.shared_check_secs", self.index.shared_check_secs, 1, 86_400)?;
        Ok(())
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces. A table whose
/// `backend` changes replaces the whole table (settings of one backend mean nothing to another).
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let backend_changes = o.get("backend").is_some_and(|nb| b.get("backend").is_some_and(|ob| ob != nb));
            if backend_changes {
                b.clear();
            }
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_use_the_bundled_coder_model_with_llama() {
        let config = Layers::default().resolve().unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.generation.family(), Family::QwenCoder);
    }

    /// A kept run records the completion settings it ran with and carries on only with the same:
    /// a setting added later must not appear while off, or every older run would be refused.
    #[test]
    fn draft_query_is_recorded_only_when_on() {
        let off = serde_json::to_value(CompletionSettings::default()).unwrap();
        assert!(off.get("draft_query").is_none(), "{off}");
        assert!(off.get("trim_to_fit").is_some(), "the others are recorded");
        let on = serde_json::to_value(CompletionSettings { draft_query: true, ..CompletionSettings::default() }).unwrap();
        assert_eq!(on["draft_query"], true);
        let read: CompletionSettings = serde_json::from_value(off).unwrap();
        assert_eq!(read, CompletionSettings::default());
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[completion]\ndebounce_ms = 10\nmax_lines = 3\n").unwrap();
        layers.set("initializationOptions", serde_json::json!({"completion": {"debounce_ms": 20}})).unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!(config.completion.debounce_ms, 20);
        assert_eq!(config.completion.max_lines, 3);
    }

    #[test]
    fn backends_are_typed_and_switching_backend_drops_the_old_keys() {
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[generation]\nbackend = \"llama\"\nthreads = 2\n").unwrap();
        layers
            .set("initializationOptions", serde_json::json!({"kenning": {"generation": {"backend": "ollama", "model": "qwen2.5-coder:1.5b"}}}))
            .unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!(
            config.generation,
            Generation::Ollama { url: "http://127.0.0.1:11434".into(), model: "qwen2.5-coder:1.5b".into(), family: None }
        );
        assert_eq!(config.generation.family(), Family::QwenCoder);
    }

    /// kenning.toml read again while the server runs (edited, or written by `kenning train`) stays
    /// under the editor's settings, as does one that appears only after them.
    #[test]
    fn kenning_toml_read_again_stays_under_the_editor_settings() {
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[completion]\ndebounce_ms = 10\n").unwrap();
        layers.set("initializationOptions", serde_json::json!({"completion": {"debounce_ms": 20}})).unwrap();
        layers.set_toml(FILE_NAME, "[completion]\ndebounce_ms = 30\nmax_lines = 3\n").unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!((config.completion.debounce_ms, config.completion.max_lines), (20, 3));
        layers.set(FILE_NAME, Value::Null).unwrap();
        layers.set_toml(FILE_NAME, "[completion]\ndebounce_ms = 40\n").unwrap();
        assert_eq!(layers.resolve().unwrap().completion.debounce_ms, 20);
    }

    #[test]
    fn a_relative_adapter_in_kenning_toml_is_the_workspaces() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "[generation]\nadapter = \"adapters/mine\"\n[ask.generation]\nbackend = \"llama\"\nadapter = \"/abs/a\"\n",
        )
        .unwrap();
        let config = Layers::from_workspace(dir.path()).unwrap().resolve().unwrap();
        assert_eq!(config.generation.adapter(), Some(dir.path().join("adapters/mine").as_path()));
        assert_eq!(config.ask.generation.as_ref().and_then(Generation::adapter), Some(Path::new("/abs/a")), "an absolute path stays");
        // Another layer (`--set`, an editor's settings) is not the file's: left as it is.
        let mut layers = Layers::default();
        layers.set_toml("--set", "[generation]\nadapter = \"rel\"\n").unwrap();
        assert_eq!(layers.resolve().unwrap().generation.adapter(), Some(Path::new("rel")));
    }

    #[test]
    fn a_relative_model_path_in_kenning_toml_is_the_workspaces_and_names_stay_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("models/mlx-model")).unwrap();
        std::fs::write(dir.path().join("models/team.gguf"), b"GGUF").unwrap();
        let model = |toml: &str| {
            let mut layers = Layers::default();
            layers.set_workspace_toml(dir.path(), toml).unwrap();
            layers.resolve().unwrap().generation.model().map(str::to_owned)
        };
        let inside = |p: &str| Some(dir.path().join(p).display().to_string());
        assert_eq!(model("[generation]\nmodel = \"models/team.gguf\"\n"), inside("models/team.gguf"));
        assert_eq!(model("[generation]\nbackend = \"mlx\"\nmodel = \"models/mlx-model\"\n"), inside("models/mlx-model"));
        assert_eq!(model("[generation]\nmodel = \"not-yet/there.GGUF\"\n"), inside("not-yet/there.GGUF"), "reported at the workspace's path");
        for name in ["qwen2.5-coder-0.5b", "/abs/model.gguf", "hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q8_0.gguf"] {
            assert_eq!(model(&format!("[generation]\nmodel = \"{name}\"\n")).as_deref(), Some(name));
        }
        for (backend, name) in [("ollama", "qwen2.5-coder:0.5b"), ("openai", "gpt-4o-mini"), ("openai", "models/team.gguf")] {
            let toml = format!("[generation]\nbackend = \"{backend}\"\nurl = \"http://127.0.0.1:11434\"\nmodel = \"{name}\"\n");
            assert_eq!(model(&toml).as_deref(), Some(name), "a server's model name, even one that looks like a path");
        }
        assert_eq!(model("[generation]\nbackend = \"mlx\"\nmodel = \"./not-yet\"\n"), inside("./not-yet"));
        let mut layers = Layers::default();
        layers.set_workspace_toml(dir.path(), "[ask.generation]\nbackend = \"llama\"\nmodel = \"models/team.gguf\"\n").unwrap();
        let ask = layers.resolve().unwrap().ask.generation.unwrap();
        assert_eq!(ask.model().map(str::to_owned), inside("models/team.gguf"));
    }

    /// What VS Code sends when no backend is chosen there: kenning.toml's table holds, adapter and
    /// all (`kenning train` registers `backend = "mlx"` on Apple Silicon), under the editor's keys.
    #[test]
    fn an_editor_layer_without_a_backend_keeps_the_one_below_and_its_adapter() {
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[generation]\nbackend = \"mlx\"\nmodel = \"smollm2-135m\"\nadapter = \"/a\"\n").unwrap();
        layers.set("initializationOptions", serde_json::json!({"generation": {}, "completion": {"enabled": true}})).unwrap();
        let mlx = Generation::Mlx { model: "smollm2-135m".into(), adapter: Some("/a".into()), family: None };
        assert_eq!(layers.resolve().unwrap().generation, mlx);
        layers.set("initializationOptions", serde_json::json!({"generation": {"model": "/m"}})).unwrap();
        assert_eq!(layers.resolve().unwrap().generation, Generation::Mlx { model: "/m".into(), adapter: Some("/a".into()), family: None });
        // A backend chosen there replaces the table, adapter included.
        layers.set("initializationOptions", serde_json::json!({"generation": {"backend": "llama"}})).unwrap();
        assert_eq!(layers.resolve().unwrap().generation, Generation::default());
    }

    #[test]
    fn errors_name_the_source_and_the_key() {
        let mut layers = Layers::default();
        let e = layers.set_toml(FILE_NAME, "[completion]\ndebounce_ms = \"fast\"\n").unwrap_err();
        assert_eq!(e.source_name, FILE_NAME);
        assert_eq!(e.key, "completion.debounce_ms");
        let e = layers.set("workspace/didChangeConfiguration", serde_json::json!({"completion": {"debounce": 1}})).unwrap_err();
        assert_eq!(e.key, "completion.debounce");
        assert!(e.to_string().contains("unknown field `debounce`"), "{e}");
        let e = layers.set("x", serde_json::json!({"generation": {"backend": "gpt5"}})).unwrap_err();
        assert_eq!(e.key, "generation.backend");
        assert!(e.to_string().contains("gpt5"), "{e}");
        let e = layers.set_toml(FILE_NAME, "[completion\n").unwrap_err();
        assert!(e.key.is_empty() && e.to_string().starts_with("kenning.toml: "), "{e}");
        // Nothing bad was kept.
        assert_eq!(layers.resolve().unwrap(), Config::default());
    }

    #[test]
    fn the_readme_example_is_the_default_configuration() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Configuration").expect("README has a configuration section")..];
        let start = section.find("```toml\n").expect("with a TOML example") + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, example).unwrap();
        assert_eq!(layers.resolve().unwrap(), Config::default());
    }

    #[test]
    fn questions_may_have_their_own_model_and_backend() {
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[ask.generation]\nbackend = \"ollama\"\nmodel = \"qwen2.5-coder:7b-instruct\"\n").unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!(config.generation, Generation::default(), "completions keep their model");
        assert!(matches!(config.ask.generation(&config.generation), Generation::Ollama { model, .. } if model == "qwen2.5-coder:7b-instruct"));
        assert_eq!(Config::default().ask.generation(&Config::default().generation), &Generation::default());
        let mut layers = Layers::default();
        let options = serde_json::json!({"generation": {"threads": 1, "context": 2048}, "ask": {"max_tokens": 24, "sources": 2, "generation": {"backend": "llama", "model": "smollm2-135m", "threads": 1, "context": 2048}}});
        layers.set("initializationOptions", options).unwrap();
        assert!(matches!(layers.resolve().unwrap().ask.generation, Some(Generation::Llama { model, .. }) if model == "smollm2-135m"));
    }

    #[test]
    fn a_generation_table_without_a_backend_keeps_the_one_below() {
        let mut layers = Layers::default();
        layers.set("initializationOptions", serde_json::json!({"generation": {"threads": 1}})).unwrap();
        assert!(matches!(layers.resolve().unwrap().generation, Generation::Llama { threads: 1, .. }));
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[generation]\nbackend = \"ollama\"\nmodel = \"a\"\n").unwrap();
        layers.set("workspace/didChangeConfiguration", serde_json::json!({"generation": {"model": "b"}})).unwrap();
        assert!(matches!(layers.resolve().unwrap().generation, Generation::Ollama { model, .. } if model == "b"));
        // A model alone over an openai table that has its url.
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[generation]\nbackend = \"openai\"\nurl = \"http://h\"\nmodel = \"a\"\n").unwrap();
        layers.set("workspace/didChangeConfiguration", serde_json::json!({"generation": {"model": "b"}})).unwrap();
        assert!(matches!(layers.resolve().unwrap().generation, Generation::Openai { model, url, .. } if model == "b" && url == "http://h"));
        // An Ollama key under the default llama backend is still an error, named.
        let err = Layers::default().set("x", serde_json::json!({"generation": {"url": "http://h"}})).unwrap_err();
        assert!(err.key == "generation" && err.to_string().contains("unknown field `url`"), "{err}");
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let e = Layers::default().set("x", serde_json::json!({"generation": {"backend": "openai", "url": "http://h"}})).unwrap_err();
        assert!(e.to_string().contains("missing field `model`"), "{e}");
    }

    #[test]
    fn numbers_the_engines_would_abort_on_are_errors_naming_the_key() {
        for (toml, key) in [
            ("[generation]\nbackend = \"llama\"\ncontext = 128\n", "generation.context"),
            ("[generation]\nbackend = \"llama\"\nthreads = 100000\n", "generation.threads"),
            ("[completion]\nmax_lines = 0\n", "completion.max_lines"),
            ("[completion]\nprompt_tokens = 10\n", "completion.prompt_tokens"),
            ("[ask]\nsources = 0\n", "ask.sources"),
            ("[ask.generation]\nbackend = \"llama\"\ncontext = 128\n", "ask.generation.context"),
        ] {
            let mut layers = Layers::default();
            let err = layers.set_toml(FILE_NAME, toml).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().contains("out of range"), "{err}");
            assert_eq!(layers.resolve().unwrap(), Config::default(), "a refused layer changes nothing");
        }
        let mut layers = Layers::default();
        layers.set_toml(FILE_NAME, "[generation]\nbackend = \"llama\"\ncontext = 256\nthreads = 2\n").unwrap();
    }
}
