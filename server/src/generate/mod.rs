//! Text generation behind one interface: the [`Generator`] trait, its requests and its streams.
//!
//! An engine runs on a dedicated thread of its own (never on the async runtime) and streams
//! [`Event`]s back. Dropping a [`Generation`] cancels it: the engine notices before the next token.
//! Special tokens are written by name in the prompt text (`<|fim_prefix|>`), and engines parse them
//! as special tokens; [`Generator::special`] gives the spelling a model uses for each role.

mod engine;
pub mod http;
pub mod llama;
#[cfg(feature = "mlx")]
pub mod mlx;
pub mod reuse;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::assets::AssetError;
use crate::formats::lora_gguf;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error("cannot load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error("this build has no MLX engine: build kenning with `--features mlx`")]
    NoMlx,
    #[error("LoRA adapter {path}: {reason}")]
    Adapter { path: PathBuf, reason: String },
    #[error("HTTP generation needs a Tokio runtime")]
    NoRuntime,
    #[error("cannot build an HTTP client: {0}")]
    HttpClient(String),
    /// The engine failed while generating.
    #[error("generation failed: {0}")]
    Engine(#[from] EngineError),
    /// A background task of a generation (loading a model, preparing a completion) died: a panic,
    /// or aborted.
    #[error("a background task stopped: {0}")]
    Task(String),
    #[error("the generation engine has stopped")]
    EngineGone,
}

impl GenerateError {
    /// The hub's part in a failed load, if it was a hub model's download that failed.
    pub fn hub(&self) -> Option<&crate::models::hub::HubError> {
        match self {
            GenerateError::Model(crate::models::ModelError::Hub(e)) => Some(e),
            _ => None,
        }
    }
}

/// Why a running generation failed, as [`Event::Error`] carries it (cloneable: every request
/// waiting on one generation gets it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// llama.cpp refused a batch or a cache operation.
    #[error("llama.cpp: {0}")]
    Llama(String),
    /// MLX raised an exception.
    #[error("MLX: {0}")]
    Mlx(String),
    /// An HTTP model server could not be reached, or answered with an error or unreadable text.
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    /// The engine's events ended without a result (its thread or task is gone).
    #[error("the generation engine stopped")]
    Stopped,
}

/// The models `scripts/setup` installs, by the names users type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundledModel {
    /// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M: fill-in-the-middle tokens, the default for code.
    QwenCoder05b,
    /// SmolLM2-135M-Instruct, Q4_1: tiny and fast, no FIM tokens.
    SmolLm2_135m,
}

impl BundledModel {
    pub const ALL: [BundledModel; 2] = [BundledModel::QwenCoder05b, BundledModel::SmolLm2_135m];

    pub fn name(self) -> &'static str {
        match self {
            BundledModel::QwenCoder05b => "qwen2.5-coder-0.5b",
            BundledModel::SmolLm2_135m => "smollm2-135m",
        }
    }

    /// The asset name in `assets.toml`.
    pub(crate) fn asset(self) -> &'static str {
        self.name()
    }

    pub(crate) fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// Whether `model` names a bundled model (not a path).
    pub fn is_bundled(model: &str) -> bool {
        Self::ALL.into_iter().any(|m| m.name() == model)
    }
}

/// The generator a configuration asks for; `None` when it asks for no model. Loading a local model
/// takes a while: call this off the async runtime. A hub model's download is logged.
pub fn from_config(config: &crate::config::Generation, paths: &crate::paths::Paths) -> Result<Option<Arc<dyn Generator>>, GenerateError> {
    from_config_reporting(config, paths, &mut crate::models::log_progress(config.model().unwrap_or_default()))
}

/// [`from_config`], telling `download` how a hub model's download goes (bytes so far, of).
pub fn from_config_reporting(
    config: &crate::config::Generation,
    paths: &crate::paths::Paths,
    download: crate::models::hub::Progress,
) -> Result<Option<Arc<dyn Generator>>, GenerateError> {
    use crate::config::Generation as G;
    Ok(Some(match config {
        #[cfg(feature = "mlx")]
        G::Mlx { model, adapter, .. } => Arc::new(mlx::MlxEngine::load(&mlx::resolve(model, paths)?, adapter.as_deref())?),
        #[cfg(not(feature = "mlx"))]
        G::Mlx { .. } => return Err(GenerateError::NoMlx),
        G::Llama { model, adapter, threads, prefill_threads, shift_cache, context, weights, .. } => {
            let reference = crate::models::ModelRef::parse(model)?;
            let source = reference.file(paths, download)?;
            let copy = if weights.q8_0(reference.is_bundled()) {
                match llama::requantized_q8(&source, &paths.cache().join("weights")) {
                    Ok(q8) => Some(q8),
                    // Chosen by default: the weights as they are still work.
                    Err(e) if *weights == crate::config::Weights::Auto => {
                        tracing::warn!("{e}; using the weights as they are");
                        None
                    }
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            // An adapter directory (kenning-train, mlx_lm) is converted to llama.cpp's format first.
            let lora = match adapter.as_deref() {
                Some(path) => Some(lora_gguf::for_llama(path).map_err(|e| GenerateError::Adapter { path: path.to_owned(), reason: e.to_string() })?),
                None => None,
            };
            let mut options = llama::LlamaOptions { context: *context, lora, shift_cache: *shift_cache, ..llama::LlamaOptions::default() };
            if *threads > 0 {
                options.threads = *threads;
            }
            if *prefill_threads > 0 {
                options.prefill_threads = *prefill_threads;
            }
            match copy {
                None => Arc::new(llama::LlamaEngine::load(&source, options)?),
                Some(q8) => match llama::LlamaEngine::load(&q8, options.clone()) {
                    Ok(engine) => Arc::new(engine),
                    // A cached copy that does not load (damaged on disk) is made again next time.
                    Err(e) if *weights == crate::config::Weights::Auto => {
                        tracing::warn!("{e}; removed, using the weights as they are");
                        let _ = std::fs::remove_file(&q8);
                        Arc::new(llama::LlamaEngine::load(&source, options)?)
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        G::Ollama { url, model, .. } => Arc::new(http::HttpGenerator::new(http::Api::Ollama, url, model, None, config.family())?),
        G::Openai { url, model, api_key_env, .. } => {
            let key = api_key_env.as_ref().and_then(|v| std::env::var(v).ok());
            Arc::new(http::HttpGenerator::new(http::Api::OpenAi, url, model, key, config.family())?)
        }
        G::None => return Ok(None),
    }))
}

/// Roles of special tokens a prompt may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialToken {
    FimPrefix,
    FimSuffix,
    FimMiddle,
    FimPad,
    /// Qwen's `<|repo_name|>`.
    RepoName,
    /// Qwen's `<|file_sep|>`.
    FileSep,
    Bos,
    Eos,
}

pub use kenning_formats::Sampling;

/// One generation.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The prompt, with special tokens written by name.
    pub prompt: String,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends before the first occurrence of any of these (not included in the output).
    pub stop: Vec<String>,
    /// Token healing: text the output must begin with, left out of the output. The prompt ends
    /// before a partial word (`is_ca`), and the model writes the whole word in its own tokens
    /// (`is_cancelled`) instead of continuing from the token boundary the cut made. Only engines
    /// whose [`Generator::heals`] is true honour it.
    pub heal: String,
    /// Text the output must not begin with: its first token is the likeliest one that neither
    /// begins this text nor runs past all of it (a start thrown away before, asked for again with
    /// the same prompt: the next-best start). Only engines whose [`Generator::avoids`] is true
    /// honour it, and only without `heal`.
    pub avoid: String,
    /// Record the first generated tokens' log-probabilities ([`Finish::logprobs`]): a softmax over
    /// the whole vocabulary for each, about a millisecond on a laptop's core, so completions in an
    /// editor go without.
    pub logprobs: bool,
}

impl GenerationRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self { prompt: prompt.into(), max_tokens: 128, sampling: Sampling::default(), stop: Vec::new(), heal: String::new(), avoid: String::new(), logprobs: false }
    }
}

/// The most likely token that agrees with `heal`, the text the output must still begin with: its
/// piece is a prefix of `heal` (more tokens follow) or begins with all of it. `None` when no token
/// does (cannot happen with a byte-level vocabulary).
pub fn healing_token(logits: &[f32], pieces: &[Vec<u8>], heal: &[u8]) -> Option<usize> {
    likeliest(logits, pieces, |p| heal.starts_with(p) || p.starts_with(heal))
}

/// The most likely token that does not agree with `avoid` (see [`healing_token`]): the output
/// starts otherwise. Control tokens (empty pieces) are never chosen: something else is wanted,
/// not nothing. `None` when no token qualifies.
pub fn avoiding_token(logits: &[f32], pieces: &[Vec<u8>], avoid: &[u8]) -> Option<usize> {
    likeliest(logits, pieces, |p| !(avoid.starts_with(p) || p.starts_with(avoid)))
}

/// The token of highest logit among those with a piece that `keep` accepts.
fn likeliest(logits: &[f32], pieces: &[Vec<u8>], keep: impl Fn(&[u8]) -> bool) -> Option<usize> {
    logits
        .iter()
        .zip(pieces)
        .enumerate()
        .filter(|(_, (_, p))| !p.is_empty() && keep(p))
        .max_by(|(_, (a, _)), (_, (b, _))| a.total_cmp(b))
        .map(|(i, _)| i)
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    EndOfText,
    /// A stop sequence appeared.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The consumer dropped the generation.
    Cancelled,
}

/// What a finished generation cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache was kept from an earlier request (not computed again).
    pub reused_prompt_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token: Duration,
    pub total: Duration,
    /// The natural log of the probability the model gave each of the first [`LOGPROB_TOKENS`]
    /// generated tokens, in order, before sampling (a token healing chose still counts with its
    /// probability among all tokens), when the request asked ([`GenerationRequest::logprobs`]).
    /// The in-process llama.cpp engine records them; empty from the others.
    #[serde(skip)]
    pub logprobs: Vec<f32>,
}

/// Generated tokens whose log-probability a generation records (the first ones: what a gate on
/// the model's confidence reads).
pub const LOGPROB_TOKENS: usize = 16;

/// The natural log of `token`'s probability under the softmax of `logits`.
pub fn log_probability(logits: &[f32], token: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Each term is at most 1 and the largest is 1: the sum stays exact enough in f32.
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits[token] - max - sum.ln()
}

impl Finish {
    /// Decode speed: the tokens after the first, over the time after the first.
    pub fn decode_tokens_per_second(&self) -> f64 {
        let decode = self.total.saturating_sub(self.time_to_first_token).as_secs_f64();
        self.generated_tokens.saturating_sub(1) as f64 / decode.max(1e-9)
    }
}

/// What a generation streams.
#[derive(Debug, Clone)]
pub enum Event {
    Text(String),
    Done(Finish),
    Error(EngineError),
}

/// A running generation. Dropping it cancels the work.
pub struct Generation {
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Generation {
    /// Creates the pair: the consumer's [`Generation`] and the engine's [`Sink`].
    pub fn channel() -> (Generation, Sink) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        (Generation { events: rx, cancel: Arc::clone(&cancel) }, Sink { events: tx, cancel })
    }

    /// Asks the engine to stop before its next token; the events up to its `Done` still come.
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The next event; `None` after `Done` or `Error`.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event, blocking the thread (CLI, tests).
    pub fn next_blocking(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// Waits for the whole text (blocking).
    pub fn collect_blocking(mut self) -> Result<(String, Finish), GenerateError> {
        let mut text = String::new();
        while let Some(event) = self.next_blocking() {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::Done(finish) => return Ok((text, finish)),
                Event::Error(e) => return Err(e.into()),
            }
        }
        Err(GenerateError::EngineGone)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The engine's end of a [`Generation`].
pub struct Sink {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Sink {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }

    pub fn send(&self, event: Event) {
        // A closed channel means the consumer is gone; `is_cancelled` reports it.
        let _ = self.events.send(event);
    }

    /// At the end of a generation, sends the text `stops` held back (it might have begun a stop
    /// sequence), unless a stop sequence ended the generation or the consumer is gone.
    pub fn flush_held(&self, stops: &mut StopMatcher, reason: FinishReason) {
        if matches!(reason, FinishReason::EndOfText | FinishReason::Length) {
            let rest = stops.finish();
            if !rest.is_empty() {
                self.send(Event::Text(rest));
            }
        }
    }
}

/// A loaded model that generates text.
pub trait Generator: Send + Sync {
    /// Model file name or id, for display.
    fn model_name(&self) -> &str;
    /// The text of a special token, if the model has it.
    fn special(&self, token: SpecialToken) -> Option<String>;
    /// How many tokens `text` is to this model (special tokens written by name count as one).
    fn count_tokens(&self, text: &str) -> Result<usize, GenerateError>;
    /// Starts a generation; events stream on the returned handle.
    fn generate(&self, request: GenerationRequest) -> Result<Generation, GenerateError>;
    /// Whether [`GenerationRequest::heal`] is honoured (the engine sees the logits).
    fn heals(&self) -> bool {
        false
    }
    /// Whether [`GenerationRequest::avoid`] is honoured.
    fn avoids(&self) -> bool {
        false
    }
    /// Puts `prompt` into the engine's cache without generating, so that a later request that
    /// starts with it computes only the rest. Gives way to generations; engines without a cache of
    /// their own (HTTP) do nothing.
    fn warm(&self, _prompt: String) -> Result<Warming, GenerateError> {
        Ok(Warming(None))
    }
    /// Announces a request being prepared (its context gathered, its prompt built): until the
    /// returned guard is dropped, a warm-up in progress gives way at its next batch, as it does
    /// for a queued generation, so that it does not hold the engine when the request's generation
    /// arrives. Engines that do not warm return a guard that does nothing.
    fn request_ahead(&self) -> Ahead {
        Ahead(None)
    }
    /// Prompts the engine's cache keeps at once. With more than one, a warm-up cut short by a
    /// generation keeps its progress for the next one (the generation runs beside it); with one,
    /// the generation replaces it.
    fn cache_slots(&self) -> usize {
        1
    }
}

/// What a warm-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Warmed {
    /// Prompt tokens in the cache now.
    pub cached: usize,
    /// Of those, how many were computed by this warm-up (the rest were there already).
    pub computed: usize,
    /// Whether the whole prompt is in the cache (false: a generation came first).
    pub complete: bool,
}

/// A request being prepared for an engine (see [`Generator::request_ahead`]); dropping it ends
/// the announcement.
#[must_use = "the announcement ends when the guard is dropped"]
pub struct Ahead(pub(crate) Option<Box<dyn FnOnce() + Send>>);

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end();
        }
    }
}

/// A warm-up under way; `None` inside for engines that do not warm.
pub struct Warming(pub(crate) Option<tokio::sync::oneshot::Receiver<Warmed>>);

impl Warming {
    /// Waits for the outcome; `None` when the warm-up was superseded by a newer one. An engine
    /// that does not warm reports a complete warm-up of nothing.
    pub async fn done(self) -> Option<Warmed> {
        match self.0 {
            Some(rx) => rx.await.ok(),
            None => Some(Warmed { complete: true, ..Warmed::default() }),
        }
    }

    /// The same, blocking the thread (CLI, tests).
    pub fn done_blocking(self) -> Option<Warmed> {
        match self.0 {
            Some(rx) => rx.blocking_recv().ok(),
            None => Some(Warmed { complete: true, ..Warmed::default() }),
        }
    }
}

/// Turns streamed bytes into whole UTF-8 characters (a token may end inside one).
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes, returns the text that is complete so far.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let out = s.to_owned();
                self.pending.clear();
                out
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // An invalid sequence (not just an unfinished one) is replaced, never kept forever.
                let keep_from = if e.error_len().is_some() { self.pending.len() } else { valid };
                let out = String::from_utf8_lossy(&self.pending[..keep_from]).into_owned();
                self.pending.drain(..keep_from);
                out
            }
        }
    }
}

/// Holds back streamed text that may be the start of a stop sequence.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds text; returns what can be shown now and whether a stop sequence was reached.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that is a prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        (out, false)
    }

    /// The text still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_probability_is_taken_under_the_softmax_and_stays_finite_for_large_logits() {
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() < 1e-6;
        assert!(close(log_probability(&[0.0, 3f32.ln()], 1), 0.75f64.ln()));
        assert!(close(log_probability(&[0.0, 3f32.ln()], 0), 0.25f64.ln()));
        assert!(close(log_probability(&[1000.0, 1000.0, -1000.0], 0), 0.5f64.ln()));
        assert!(log_probability(&[1000.0, 1000.0, -1000.0], 2) < -1000.0);
    }

    #[test]
    fn healing_picks_the_likeliest_token_that_agrees_with_the_typed_text() {
        let pieces: Vec<Vec<u8>> = ["is", "is_c", "is_cancel", "lled", "is_ca", "x", ""].iter().map(|p| p.as_bytes().to_vec()).collect();
        // "x" is likeliest but does not agree; the empty control token never does.
        let logits = [1.0, 2.0, 3.0, 9.0, 0.5, 10.0, 11.0];
        assert_eq!(healing_token(&logits, &pieces, b"is_ca"), Some(2), "a piece that runs past the typed text");
        assert_eq!(healing_token(&[1.0, 2.0, 0.0, 9.0, 0.5, 10.0, 11.0], &pieces, b"is_ca"), Some(1), "a piece inside it");
        assert_eq!(healing_token(&logits, &pieces, b"zz"), None);
    }

    #[test]
    fn avoiding_picks_the_likeliest_token_that_starts_otherwise() {
        // The output that was thrown away began `imports: false,`.
        let pieces: Vec<Vec<u8>> = ["imports", "im", "similar", "", "imports: false, // x", "s", "in"].iter().map(|p| p.as_bytes().to_vec()).collect();
        let avoid = b"imports: false,";
        assert_eq!(avoiding_token(&[9.0, 8.0, 5.0, 10.0, 7.0, 6.0, 1.0], &pieces, avoid), Some(5), "not a start of it, not past all of it, not a control token");
        assert_eq!(avoiding_token(&[9.0, 8.0, 5.0, 10.0, 7.0, 1.0, 6.0], &pieces, avoid), Some(6), "`in` is not a start of `imports`");
        let pieces: Vec<Vec<u8>> = ["a", ""].iter().map(|p| p.as_bytes().to_vec()).collect();
        assert_eq!(avoiding_token(&[1.0, 2.0], &pieces, b"a"), None);
    }

    #[test]
    fn utf8_split_across_tokens() {
        let mut s = Utf8Stream::default();
        let bytes = "é🦀".as_bytes();
        assert_eq!(s.push(&bytes[..1]), "");
        assert_eq!(s.push(&bytes[1..3]), "é");
        assert_eq!(s.push(&bytes[3..]), "🦀");
        assert_eq!(s.push(b"\xff!"), "\u{fffd}!");
    }

    #[test]
    fn stop_sequences_are_held_back_and_cut() {
        let mut m = StopMatcher::new(&["\n\n".into(), "<|endoftext|>".into()]);
        assert_eq!(m.push("a + b"), ("a + b".into(), false));
        assert_eq!(m.push("\n"), ("".into(), false));
        assert_eq!(m.push("x"), ("\nx".into(), false));
        assert_eq!(m.push("<|end"), ("".into(), false));
        assert_eq!(m.push("oftext|>tail"), ("".into(), true));

        let mut m = StopMatcher::new(&["}".into()]);
        assert_eq!(m.push("x }"), ("x ".into(), true));
        let mut m = StopMatcher::new(&["END".into()]);
        assert_eq!(m.push("abcE"), ("abc".into(), false));
        assert_eq!(m.finish(), "E");
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("anything"), ("anything".into(), false));
    }

    #[test]
    fn dropping_a_generation_cancels_it() {
        let (generation, sink) = Generation::channel();
        assert!(!sink.is_cancelled());
        drop(generation);
        assert!(sink.is_cancelled());
    }

    #[test]
    fn unknown_models_name_the_bundled_ones() {
        let paths = crate::paths::Paths::with_root("/nonexistent");
        let err = crate::models::resolve("gpt-17", &paths).unwrap_err();
        assert!(err.to_string().contains("qwen2.5-coder-0.5b, smollm2-135m"), "{err}");
        let err = crate::models::resolve("smollm2-135m", &paths).unwrap_err();
        assert!(err.to_string().contains("scripts/setup"), "{err}");
    }
}
