//! The llama.cpp engine (`llama-cpp-2`), in-process. The only module that knows llama-cpp-2.
//!
//! One dedicated thread owns the model and one context, and runs requests one at a time. The tokens
//! whose keys and values sit in the context's KV cache are remembered, so a request that shares a
//! prefix with the previous one (successive completions in one file) only computes the new tail;
//! runs of cached tokens that the new prompt repeats after a deletion are shifted into place
//! ([`super::reuse`]). A warm-up ([`Job::Warm`]) fills the cache with no generation, in small
//! batches, and stops as soon as a generation is queued.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use llama_cpp_2::model::RopeType;

use super::engine::{EngineThread, Job, Jobs, Ready, delegate_generator};
use super::{Event, Finish, FinishReason, GenerateError, Request, Sink, SpecialToken, StopMatcher, Utf8Stream, Warmed, reuse};

/// Most tokens llama.cpp takes in one call (the context's batch size).
const MAX_BATCH: u32 = 512;
/// Tokens decoded per call while reading a prompt: between calls a cancelled request stops and a
/// warm-up gives way to a generation, so this bounds how long either waits.
const PROMPT_CHUNK: usize = 64;

/// Options of the llama.cpp engine.
#[derive(Debug, Clone)]
pub struct LlamaOptions {
    /// Context window in tokens (prompt + generation).
    pub context: u32,
    /// CPU threads while generating (one token at a time). Measured on an idle 2-core machine
    /// (Qwen2.5-Coder-0.5B): 29 tok/s on one, 41 on two; on a machine busy with other work fewer
    /// can be faster.
    pub threads: usize,
    /// CPU threads while reading a prompt (batches of tokens: this parallelizes well).
    pub prefill_threads: usize,
    /// A LoRA adapter in llama.cpp's GGUF format, applied at `lora_scale`.
    pub lora: Option<PathBuf>,
    pub lora_scale: f32,
    /// Keep cached runs the new prompt repeats after a deletion, shifted into place (approximate:
    /// see [`super::reuse`]); off = only the common prefix is kept.
    pub shift_cache: bool,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Reading a prompt scales with cores (99 → 188 tok/s from one thread to two, measured);
        // generating a token at a time stops scaling early.
        Self { context: 4096, threads: cores.min(4), prefill_threads: cores, lora: None, lora_scale: 1.0, shift_cache: true }
    }
}

fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A GGUF model served by llama.cpp on its own thread.
pub struct LlamaEngine(EngineThread);

impl LlamaEngine {
    /// Loads `path` and starts the engine thread. Fails (without panicking) on a missing or
    /// unreadable model, a bad adapter, or a context that does not fit.
    pub fn load(path: &Path, options: LlamaOptions) -> Result<Self, GenerateError> {
        if !path.is_file() {
            return Err(GenerateError::Load { path: path.to_owned(), reason: "no such file".into() });
        }
        // llama.cpp aborts the process on these rather than returning an error.
        let bad = |reason: String| Err(GenerateError::Load { path: path.to_owned(), reason });
        if !(crate::config::MIN_CONTEXT..=crate::config::MAX_CONTEXT).contains(&options.context) {
            return bad(format!("a context of {} tokens is out of range ({}..={})", options.context, crate::config::MIN_CONTEXT, crate::config::MAX_CONTEXT));
        }
        if options.threads.max(options.prefill_threads) > crate::config::max_threads() {
            return bad(format!("{} threads is more than 4 per core ({} at most here)", options.threads.max(options.prefill_threads), crate::config::max_threads()));
        }
        let thread_path = path.to_owned();
        EngineThread::spawn(path, "kenning-llama", move |ready, jobs| engine_thread(&thread_path, &options, ready, jobs)).map(Self)
    }
}

delegate_generator!(LlamaEngine, true);

fn engine_thread(path: &Path, options: &LlamaOptions, ready: &Ready, jobs: &Jobs) {
    let loaded = (|| -> Result<_, String> {
        let backend = backend()?;
        let mut model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| e.to_string())?;
        let adapter = match &options.lora {
            Some(lora) => Some(model.lora_adapter_init(lora).map_err(|e| format!("LoRA adapter {}: {e}", lora.display()))?),
            None => None,
        };
        Ok((backend, model, adapter))
    })();
    let (backend, model, mut adapter) = match loaded {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let threads = i32::try_from(options.threads.max(1)).unwrap_or(1);
    let prefill_threads = i32::try_from(options.prefill_threads.max(1)).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(options.context))
        .with_n_batch(MAX_BATCH.min(options.context))
        .with_n_threads(threads)
        .with_n_threads_batch(prefill_threads);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create a context of {} tokens: {e}", options.context)));
            return;
        }
    };
    if let Some(adapter) = adapter.as_mut()
        && let Err(e) = ctx.lora_adapter_set(adapter, options.lora_scale)
    {
        let _ = ready.send(Err(format!("cannot apply the LoRA adapter: {e}")));
        return;
    }
    let _ = ready.send(Ok(special_tokens(&model)));

    // Shifting positions needs plain RoPE (llama.cpp cannot shift M-RoPE caches).
    let shift = options.shift_cache && matches!(model.rope_type(), Some(RopeType::Norm | RopeType::NeoX));
    let mut session = Session { model: &model, ctx, cached: Vec::new(), pieces: Vec::new(), shift };
    while let Some(job) = jobs.recv() {
        let (request, sink) = match job {
            Job::CountTokens(text, reply) => {
                let _ = reply.send(model.vocab().tokenize(text.as_bytes(), false, true).len());
                continue;
            }
            Job::Warm(prompt, reply) => {
                let warmed = session.warm(&prompt, || jobs.generation_waiting());
                if warmed.is_err() {
                    session.reset();
                }
                let _ = reply.send(warmed.unwrap_or_default());
                continue;
            }
            Job::Generate(request, sink) => (request, sink),
        };
        if sink.is_cancelled() {
            continue;
        }
        match session.run(&request, &sink) {
            Ok(finish) => sink.send(Event::Done(finish)),
            Err(e) => {
                session.reset();
                sink.send(Event::Error(e));
            }
        }
    }
}

fn special_tokens(model: &LlamaModel) -> Vec<(SpecialToken, String)> {
    let vocab = model.vocab();
    let ids = [
        (SpecialToken::FimPrefix, vocab.fim_pre()),
        (SpecialToken::FimSuffix, vocab.fim_suf()),
        (SpecialToken::FimMiddle, vocab.fim_mid()),
        (SpecialToken::FimPad, vocab.fim_pad()),
        (SpecialToken::RepoName, vocab.fim_rep()),
        (SpecialToken::FileSep, vocab.fim_sep()),
        (SpecialToken::Bos, vocab.bos()),
        (SpecialToken::Eos, vocab.eos()),
    ];
    ids.into_iter()
        .filter(|(_, id)| id.0 >= 0)
        .filter_map(|(role, id)| {
            let text = String::from_utf8(vocab.token_to_piece(id, true, None)).ok()?;
            (!text.is_empty()).then_some((role, text))
        })
        .collect()
}

/// The model, its context, and which tokens the context's KV cache holds (sequence 0).
struct Session<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    cached: Vec<LlamaToken>,
    /// Every token's text (empty for control tokens), read on the first request that heals.
    pieces: Vec<Vec<u8>>,
    /// Whether cached runs may be shifted into place ([`reuse::plan`]).
    shift: bool,
}

/// How a prompt went into the cache.
struct Prefilled {
    /// Prompt tokens kept from the cache (the common prefix and shifted runs).
    kept: usize,
    /// Whether every prompt token is in the cache (false: stopped early).
    complete: bool,
    /// Index in the last batch of the last prompt token's logits.
    last_index: i32,
}

impl Session<'_> {
    /// After a failed decode the cache contents are unknown: start clean.
    fn reset(&mut self) {
        self.ctx.clear_kv_cache();
        self.cached.clear();
    }

    /// The prompt's tokens, cut to leave `reserve` tokens of the window free (keeping the end: for
    /// completions that is the text next to the cursor).
    fn tokenize(&self, prompt: &str, reserve: usize) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), true);
        if tokens.is_empty() {
            tokens.push(vocab.bos());
        }
        let window = self.ctx.n_ctx() as usize;
        let room = window.saturating_sub(reserve.min(window / 2)).max(1);
        if tokens.len() > room {
            tokens.drain(..tokens.len() - room);
        }
        tokens
    }

    /// Brings the cache to hold `prompt`: keeps what [`reuse::plan`] allows, computes the rest in
    /// chunks, asking `stop` between them. With `logits`, the last token's logits are computed.
    fn prefill(&mut self, prompt: &[LlamaToken], logits: bool, stop: impl Fn() -> bool) -> Result<Prefilled, String> {
        let runs = reuse::plan(&self.cached, prompt, self.shift, reuse::MIN_SHIFTED_RUN);
        // Runs are contiguous from 0 in the new prompt and only move towards the start: drop the
        // gap before each, shift it down, then drop whatever is left after the last.
        let mut filled = 0usize;
        for run in &runs {
            if run.from != run.to {
                self.ctx.kv_cache_seq_rm(0, Some(to_u32(filled)?), Some(to_u32(run.from)?)).map_err(|e| e.to_string())?;
                let delta = i32::try_from(run.shift()).map_err(|e| e.to_string())?;
                self.ctx.kv_cache_seq_add(0, Some(to_u32(run.from)?), Some(to_u32(run.from + run.len)?), delta).map_err(|e| e.to_string())?;
            }
            filled = run.to + run.len;
        }
        self.ctx.kv_cache_seq_rm(0, Some(to_u32(filled)?), None).map_err(|e| e.to_string())?;
        self.cached.clear();
        self.cached.extend_from_slice(&prompt[..filled]);

        let kept = filled;
        let chunk_size = PROMPT_CHUNK.min(self.ctx.n_batch() as usize).max(1);
        let mut batch = LlamaBatch::new(chunk_size, 1);
        let mut last_index = 0;
        while filled < prompt.len() {
            if stop() {
                return Ok(Prefilled { kept, complete: false, last_index });
            }
            let chunk = &prompt[filled..(filled + chunk_size).min(prompt.len())];
            batch.clear();
            for (i, &token) in chunk.iter().enumerate() {
                let pos = filled + i;
                batch.add(token, pos as i32, &[0], logits && pos == prompt.len() - 1).map_err(|e| e.to_string())?;
            }
            self.ctx.decode(&mut batch).map_err(|e| format!("decoding the prompt: {e}"))?;
            self.cached.extend_from_slice(chunk);
            filled += chunk.len();
            last_index = batch.n_tokens() - 1;
        }
        Ok(Prefilled { kept, complete: true, last_index })
    }

    /// Prefills `prompt` with no generation, stopping early when `give_way` says so.
    fn warm(&mut self, prompt: &str, give_way: impl Fn() -> bool) -> Result<Warmed, String> {
        let tokens = self.tokenize(prompt, 0);
        let done = self.prefill(&tokens, false, give_way)?;
        Ok(Warmed { cached: self.cached.len(), computed: self.cached.len() - done.kept, complete: done.complete })
    }

    fn run(&mut self, request: &Request, sink: &Sink) -> Result<Finish, String> {
        let started = Instant::now();
        let model = self.model;
        let vocab = model.vocab();
        let prompt = self.tokenize(&request.prompt, request.max_tokens);
        let prefilled = self.prefill(&prompt, true, || sink.is_cancelled())?;
        let common = prefilled.kept;
        if !prefilled.complete {
            return Ok(self.finish(FinishReason::Cancelled, &prompt, common, 0, started, Duration::ZERO));
        }
        let mut last_index = prefilled.last_index;
        let mut batch = LlamaBatch::new(1, 1);

        let mut sampler = if request.sampling.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([
                LlamaSampler::top_p(request.sampling.top_p.clamp(0.0, 1.0), 1),
                LlamaSampler::temp(request.sampling.temperature),
                LlamaSampler::dist(request.sampling.seed),
            ])
        };
        let mut utf8 = Utf8Stream::default();
        let mut stops = StopMatcher::new(&request.stop);
        let mut first_token = None;
        let mut generated = 0;
        // Token healing: what the output must still begin with, and how much of it is left out.
        let mut heal = request.heal.as_bytes();
        let mut hidden = heal.len();
        if !heal.is_empty() && self.pieces.is_empty() {
            self.pieces = (0..model.n_vocab()).map(|i| vocab.token_to_piece(LlamaToken(i), false, None)).collect();
        }
        let reason = loop {
            if generated >= request.max_tokens {
                break FinishReason::Length;
            }
            if sink.is_cancelled() {
                break FinishReason::Cancelled;
            }
            let token = if heal.is_empty() {
                sampler.sample(&self.ctx, last_index)
            } else {
                let Some(id) = super::healing_token(self.ctx.get_logits_ith(last_index), &self.pieces, heal) else {
                    break FinishReason::EndOfText;
                };
                let token = LlamaToken(id as i32);
                sampler.accept(token);
                token
            };
            generated += 1;
            first_token.get_or_insert_with(|| started.elapsed());
            if vocab.is_eog(token) {
                break FinishReason::EndOfText;
            }
            let piece = vocab.token_to_piece(token, false, None);
            heal = heal.get(piece.len()..).unwrap_or_default();
            let skip = hidden.min(piece.len());
            hidden -= skip;
            let text = utf8.push(&piece[skip..]);
            let (shown, stopped) = stops.push(&text);
            if !shown.is_empty() {
                sink.send(Event::Text(shown));
            }
            if stopped {
                break FinishReason::Stop;
            }
            batch.clear();
            batch.add(token, self.cached.len() as i32, &[0], true).map_err(|e| e.to_string())?;
            self.ctx.decode(&mut batch).map_err(|e| format!("decoding: {e}"))?;
            self.cached.push(token);
            last_index = 0;
        };
        sink.flush_held(&mut stops, reason);
        Ok(self.finish(reason, &prompt, common, generated, started, first_token.unwrap_or_default()))
    }

    fn finish(&self, reason: FinishReason, prompt: &[LlamaToken], reused: usize, generated: usize, started: Instant, ttft: Duration) -> Finish {
        Finish {
            reason,
            prompt_tokens: prompt.len(),
            reused_prompt_tokens: reused,
            generated_tokens: generated,
            time_to_first_token: ttft,
            total: started.elapsed(),
        }
    }
}

fn to_u32(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("position {n} out of range"))
}
