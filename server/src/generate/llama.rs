//! The llama.cpp engine (`llama-cpp-2`), in-process. The only module that knows llama-cpp-2.
//!
//! One dedicated thread owns the model and one context, and runs requests one at a time. The
//! context keeps [`SLOTS`] KV-cache sequences, each with the tokens it holds remembered: a request
//! goes to the sequence it shares the most with (successive completions in one file compute only
//! the new tail; two files worked in by turns keep a sequence each), and runs of cached tokens
//! that the new prompt repeats elsewhere are moved into place ([`super::reuse`]): after a deletion
//! (context evicted, the prefix window slid) and after an insertion (text typed before the suffix),
//! through a scratch sequence that holds them while the text before them is computed. A
//! warm-up ([`Job::Warm`]) fills a sequence with no generation, in small batches, and stops as
//! soon as a generation is queued, and never takes the sequence the last generation used: warming a
//! long prompt across several pauses never undoes the short prompt the requests in between are
//! answered from, and they never undo its progress.

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
use super::{EngineError, Event, Finish, FinishReason, GenerateError, GenerationRequest, Sink, SpecialToken, StopMatcher, Utf8Stream, Warmed, reuse};

/// Most tokens llama.cpp takes in one call (the context's batch size).
const MAX_BATCH: u32 = 512;
/// Tokens decoded per call while a warm-up reads a prompt: between calls it gives way to a
/// generation, so this bounds how long a request waits behind one (32 tokens ≈ 0.2 s on 2 cores;
/// at 64 the server's log showed first completions at a new place waiting up to 0.4 s behind a
/// warm-up's batch; README, "8-bit weights").
const WARM_CHUNK: usize = 32;
/// KV-cache sequences kept (each the full context window): the place being typed at and the
/// prompt being warmed for it, or two files worked in by turns.
pub const SLOTS: usize = 2;
/// The sequence id that holds moved runs while the tokens inserted before them are computed
/// (llama.cpp decodes a sequence's tokens only right after its last cached position).
const SCRATCH: usize = SLOTS;

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
    /// Keep cached runs the new prompt repeats elsewhere (after a deletion, or after text typed
    /// before them), moved into place (approximate: see [`super::reuse`]); off = only the common
    /// prefix is kept.
    pub shift_cache: bool,
    /// Tokens decoded per call while a generation reads its prompt. Bigger batches read faster;
    /// between calls a cancelled request stops (what it read stays cached for the next one).
    pub prompt_chunk: usize,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Reading a prompt scales with cores (99 → 188 tok/s from one thread to two, measured);
        // generating a token at a time stops scaling early.
        Self { context: 4096, threads: cores.min(4), prefill_threads: cores, lora: None, lora_scale: 1.0, shift_cache: true, prompt_chunk: 64 }
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

/// The devices llama.cpp can run on in this build (`Vulkan0: AMD Radeon …`, `CPU: …`), and
/// whether it offloads layers to a GPU (then it offloads all of them: llama.cpp's default).
pub fn devices() -> Result<(Vec<String>, bool), String> {
    let backend = backend()?;
    let devices = llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| format!("{} ({}): {}, {} MB", d.name, d.backend, d.description, d.memory_total >> 20))
        .collect();
    Ok((devices, backend.supports_gpu_offload()))
}

/// `source`'s weights re-quantized to 8 bits (Q8_0) by llama.cpp, written once into `dir` and
/// reused while `source` is unchanged (the name carries a hash of its path, size and modification
/// time; older copies of the same model are removed). On a CPU, llama.cpp reads prompts in 8-bit
/// weights through its matrix-multiplication kernels (llamafile's), which K-quants (the bundled
/// Q4_K_M) do not use: a prompt takes ~22 % less time there and tokens decoded no slower
/// (`scripts/bench-generate --new-place`). Q4_K_M's values fit 8 bits almost exactly.
pub fn requantized_q8(source: &Path, dir: &Path) -> Result<PathBuf, GenerateError> {
    use sha2::{Digest, Sha256};
    let fail = |reason: String| GenerateError::Load { path: source.to_owned(), reason };
    let meta = std::fs::metadata(source).map_err(|e| fail(e.to_string()))?;
    let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned();
    // Which file, and which version of it (a hash that is the same in every build).
    let hash = |text: String| -> u64 {
        let digest = Sha256::digest(text.as_bytes());
        u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
    };
    let file = hash(std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned()).display().to_string());
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let version = hash(format!("{} {mtime}", meta.len()));
    let family = format!("{stem}.q8_0.{file:016x}.");
    let target = dir.join(format!("{family}{version:016x}.gguf"));
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    // Written under a name of its own (per process and call), then renamed: a killed process or a
    // second server doing the same leaves no half-written model under the target's name.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.join(format!(".{family}{version:016x}.{}-{call}.partial", std::process::id()));
    let started = Instant::now();
    let written = quantize_q8(source, &partial).and_then(|()| std::fs::rename(&partial, &target).map_err(|e| e.to_string()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(fail(format!("cannot re-quantize it to 8 bits: {e}")));
    }
    tracing::info!(from = %source.display(), to = %target.display(), seconds = started.elapsed().as_secs_f64(), "re-quantized the model's weights to 8 bits");
    // Copies of earlier versions of the same file, and partial files a killed process left (an
    // hour old: one being written now takes seconds).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_copy = name.starts_with(&family) && name.ends_with(".gguf") && entry.path() != target;
            let old_partial = name.ends_with(".partial")
                && entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(3600));
            if stale_copy || old_partial {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(target)
}

/// llama.cpp's `llama_model_quantize` (which `llama-cpp-2` does not wrap): `source` to Q8_0 at `out`.
#[allow(unsafe_code)]
fn quantize_q8(source: &Path, out: &Path) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    backend()?;
    let c_path = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL byte in its path", p.display()));
    let (source, out) = (c_path(source)?, c_path(out)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: both paths are NUL-terminated strings that outlive the call; the parameters are
    // llama.cpp's defaults with plain fields changed (no pointers set); the call reads `source`,
    // writes `out` and reports failure (a file that is not a model, a full disk) by its result.
    let rc = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0;
        params.allow_requantize = true;
        params.nthread = i32::try_from(threads).unwrap_or(1);
        llama_cpp_sys_2::llama_model_quantize(source.as_ptr(), out.as_ptr(), &params)
    };
    if rc == 0 { Ok(()) } else { Err(format!("llama.cpp could not read or write the model (code {rc})")) }
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

delegate_generator!(LlamaEngine, true, true, SLOTS);

/// What to add when llama.cpp refuses an adapter (it says only "null result"): for kenning's
/// export of an adapter directory, the model the adapter was trained on (its `adapter_config.json`;
/// a bundled model's MLX conversion by its name), since an adapter fits that model only.
fn trained_on(lora: &Path) -> String {
    if lora.file_name().is_none_or(|n| n != crate::formats::lora_gguf::EXPORT_NAME) {
        return String::new();
    }
    let model = lora.parent().and_then(|dir| kenning_formats::adapter::AdapterConfig::read(dir).ok()).and_then(|c| c.model);
    let name = |m: &str| {
        let last = Path::new(m).file_name().and_then(|n| n.to_str()).unwrap_or(m);
        last.strip_suffix("-mlx").filter(|n| crate::generate::BundledModel::is_bundled(n)).map_or_else(|| m.to_owned(), str::to_owned)
    };
    model.map(|m| format!(" (the adapter was trained on {}; an adapter fits only the model it was trained on)", name(&m))).unwrap_or_default()
}

fn engine_thread(path: &Path, options: &LlamaOptions, ready: &Ready, jobs: &Jobs) {
    let loaded = (|| -> Result<_, String> {
        let backend = backend()?;
        let mut model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| e.to_string())?;
        let adapter = match &options.lora {
            Some(lora) => Some(model.lora_adapter_init(lora).map_err(|e| format!("LoRA adapter {}: {e}{}", lora.display(), trained_on(lora)))?),
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
    // One cache for every sequence (unified): a run can move from a slot's sequence to the scratch
    // one and back without copying (only its cells' sequence ids change). Room for a full window
    // per slot; each sequence attends only to its own cells.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(options.context.saturating_mul(SLOTS as u32)))
        .with_n_seq_max(SLOTS as u32 + 1)
        .with_kv_unified(true)
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
    let window = (ctx.n_ctx() as usize / SLOTS).min(options.context as usize);
    let slots = (0..SLOTS).map(|_| Slot::default()).collect();
    let prompt_chunk = options.prompt_chunk.max(1);
    let mut session = Session { model: &model, ctx, slots, clock: 0, last_generation: None, window, pieces: Vec::new(), shift, prompt_chunk };
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
                sink.send(Event::Error(EngineError::Llama(e)));
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

/// What one KV-cache sequence holds.
#[derive(Default)]
struct Slot {
    /// The tokens at positions 0.. of the sequence.
    cached: Vec<LlamaToken>,
    /// When it was last used (the session's clock).
    used: u64,
    /// For each cached token, how many tokens were inserted before it since it was computed
    /// (text it has not seen; bounded by [`reuse::MAX_INSERTED`]).
    unseen: Vec<usize>,
}

/// What a sequence is chosen for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Generate,
    Warm,
}

/// The model, its context, and which tokens each of the context's KV-cache sequences holds.
struct Session<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    /// Indexed by sequence id.
    slots: Vec<Slot>,
    clock: u64,
    /// The sequence the last generation ran in.
    last_generation: Option<usize>,
    /// Tokens one sequence holds at most.
    window: usize,
    /// Every token's text (empty for control tokens), read on the first request that heals.
    pieces: Vec<Vec<u8>>,
    /// Whether cached runs may be shifted into place ([`reuse::plan`]).
    shift: bool,
    /// Tokens per decode call while a generation reads its prompt ([`LlamaOptions::prompt_chunk`]).
    prompt_chunk: usize,
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
        for slot in &mut self.slots {
            slot.cached.clear();
            slot.unseen.clear();
        }
        self.last_generation = None;
    }

    /// The sequence `prompt` goes to: the one that keeps the most of it (on a tie the least
    /// recently used), except that a warm-up never takes the last generation's sequence: that one
    /// holds the prompt the user is being answered from while the warm-up prepares the next.
    /// Returns the sequence and its plan ([`reuse::plan`]), for [`Session::prefill`].
    fn choose(&mut self, prompt: &[LlamaToken], purpose: Purpose) -> (usize, Vec<reuse::Run>) {
        let mut plans: Vec<Vec<reuse::Run>> = (0..self.slots.len()).map(|seq| self.plan(seq, prompt)).collect();
        let kept: Vec<usize> = plans.iter().map(|runs| reuse::kept(runs)).collect();
        let chosen = choose_slot(&kept, &self.slots.iter().map(|s| s.used).collect::<Vec<_>>(), self.last_generation, purpose == Purpose::Warm);
        self.clock += 1;
        self.slots[chosen].used = self.clock;
        if purpose == Purpose::Generate {
            self.last_generation = Some(chosen);
        }
        (chosen, plans.swap_remove(chosen))
    }

    /// The prompt's tokens, cut to leave `reserve` tokens of the window free (keeping the end: for
    /// completions that is the text next to the cursor).
    fn tokenize(&self, prompt: &str, reserve: usize) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), true);
        if tokens.is_empty() {
            tokens.push(vocab.bos());
        }
        let window = self.window;
        let room = window.saturating_sub(reserve.min(window / 2)).max(1);
        if tokens.len() > room {
            tokens.drain(..tokens.len() - room);
        }
        tokens
    }

    /// What sequence `seq` keeps of `prompt` ([`reuse::plan`]).
    fn plan(&self, seq: usize, prompt: &[LlamaToken]) -> Vec<reuse::Run> {
        let slot = &self.slots[seq];
        reuse::plan(&slot.cached, &slot.unseen, prompt, self.shift, reuse::MIN_SHIFTED_RUN, reuse::MAX_INSERTED)
    }

    /// Brings sequence `seq` to hold `prompt`: keeps the `runs` [`Session::choose`] planned for it,
    /// computes the rest in chunks, asking `stop` between them. With `logits`, the last token's
    /// logits are computed.
    fn prefill(&mut self, seq: usize, runs: &[reuse::Run], prompt: &[LlamaToken], logits: bool, chunk: usize, stop: impl Fn() -> bool) -> Result<Prefilled, String> {
        let id = seq_id(seq)?;
        let scratch = seq_id(SCRATCH)?;
        // The common prefix is the run at 0 that did not move (another unmoved run can be found
        // further on, after as many tokens replaced as were there).
        let common = runs.first().filter(|r| r.from == 0 && r.to == 0).map_or(0, |r| r.len);
        let moved = &runs[usize::from(common > 0)..];
        // Left over only by an error, after which the caller resets the cache; cheap to be sure.
        self.ctx.kv_cache_seq_rm(scratch, None, None).map_err(|e| e.to_string())?;
        // Moved runs wait in the scratch sequence; several are parked past every position the
        // prompt or the cache uses (so that, moved one at a time, one never lands on another). One
        // alone stays where it is: each shift costs a pass over the whole cache's keys. Then the
        // sequence is cut after the common prefix.
        let park = if moved.len() > 1 { self.window.max(self.slots[seq].cached.len()) } else { 0 };
        for run in moved {
            let (from, end) = (to_u32(run.from)?, to_u32(run.from + run.len)?);
            self.ctx.kv_cache_seq_cp(id, scratch, Some(from), Some(end)).map_err(|e| e.to_string())?;
            if park > 0 {
                self.ctx.kv_cache_seq_add(scratch, Some(from), Some(end), to_i32(park)?).map_err(|e| e.to_string())?;
            }
        }
        self.ctx.kv_cache_seq_rm(id, Some(to_u32(common)?), None).map_err(|e| e.to_string())?;
        let slot = &mut self.slots[seq];
        let unseen: Vec<Vec<usize>> = moved.iter().map(|r| (r.from..r.from + r.len).map(|i| slot.unseen.get(i).copied().unwrap_or(0) + r.unseen).collect()).collect();
        slot.cached.truncate(common);
        slot.unseen.truncate(common);

        // In prompt order: the tokens before each moved run are computed, then the run is moved to
        // its place, back in the sequence; then the tokens after the last.
        let chunk_size = chunk.min(self.ctx.n_batch() as usize).max(1);
        let mut batch = LlamaBatch::new(chunk_size, 1);
        let (mut filled, mut kept) = (common, common);
        for (run, unseen) in moved.iter().zip(unseen) {
            if self.decode(seq, &prompt[..run.to], filled, false, (&mut batch, chunk_size), &stop)?.is_none() {
                self.ctx.kv_cache_seq_rm(scratch, None, None).map_err(|e| e.to_string())?;
                return Ok(Prefilled { kept, complete: false, last_index: 0 });
            }
            let (parked, to, end) = (to_u32(run.from + park)?, to_u32(run.to)?, to_u32(run.to + run.len)?);
            let delta = to_i32(run.to)? - to_i32(run.from + park)?;
            self.ctx.kv_cache_seq_add(scratch, Some(parked), Some(parked + to_u32(run.len)?), delta).map_err(|e| e.to_string())?;
            self.ctx.kv_cache_seq_cp(scratch, id, Some(to), Some(end)).map_err(|e| e.to_string())?;
            self.ctx.kv_cache_seq_rm(scratch, Some(to), Some(end)).map_err(|e| e.to_string())?;
            self.slots[seq].cached.extend_from_slice(&prompt[run.to..run.to + run.len]);
            self.slots[seq].unseen.extend(unseen);
            filled = run.to + run.len;
            kept += run.len;
        }
        self.ctx.kv_cache_seq_rm(scratch, None, None).map_err(|e| e.to_string())?;
        match self.decode(seq, prompt, filled, logits, (&mut batch, chunk_size), &stop)? {
            Some(last_index) => Ok(Prefilled { kept, complete: true, last_index }),
            None => Ok(Prefilled { kept, complete: false, last_index: 0 }),
        }
    }

    /// Computes `tokens[from..]` into sequence `seq` (which holds `tokens[..from]`) in batches,
    /// asking `stop` before each; with `logits`, the last token's. `None`: stopped (what was
    /// computed stays cached). Otherwise the index of the last token in its batch.
    fn decode(&mut self, seq: usize, tokens: &[LlamaToken], from: usize, logits: bool, (batch, chunk_size): (&mut LlamaBatch, usize), stop: impl Fn() -> bool) -> Result<Option<i32>, String> {
        let id = seq_id(seq)?;
        let mut filled = from;
        let mut last_index = 0;
        while filled < tokens.len() {
            if stop() {
                return Ok(None);
            }
            let chunk = &tokens[filled..(filled + chunk_size).min(tokens.len())];
            batch.clear();
            for (i, &token) in chunk.iter().enumerate() {
                let pos = filled + i;
                batch.add(token, to_i32(pos)?, &[id], logits && pos == tokens.len() - 1).map_err(|e| e.to_string())?;
            }
            self.ctx.decode(batch).map_err(|e| format!("decoding the prompt: {e}"))?;
            let slot = &mut self.slots[seq];
            slot.cached.extend_from_slice(chunk);
            slot.unseen.resize(slot.cached.len(), 0);
            filled += chunk.len();
            last_index = batch.n_tokens() - 1;
        }
        Ok(Some(last_index))
    }

    /// Prefills `prompt` with no generation, stopping early when `give_way` says so.
    fn warm(&mut self, prompt: &str, give_way: impl Fn() -> bool) -> Result<Warmed, String> {
        // A request is already waiting or announced: the cache is left as it is (choosing a
        // sequence would mark it used and cut it to what the warm-up keeps).
        if give_way() {
            return Ok(Warmed::default());
        }
        let tokens = self.tokenize(prompt, 0);
        let (seq, runs) = self.choose(&tokens, Purpose::Warm);
        let done = self.prefill(seq, &runs, &tokens, false, WARM_CHUNK, give_way)?;
        let cached = self.slots[seq].cached.len();
        Ok(Warmed { cached, computed: cached - done.kept, complete: done.complete })
    }

    fn run(&mut self, request: &GenerationRequest, sink: &Sink) -> Result<Finish, String> {
        let started = Instant::now();
        let model = self.model;
        let vocab = model.vocab();
        let prompt = self.tokenize(&request.prompt, request.max_tokens);
        let (seq, runs) = self.choose(&prompt, Purpose::Generate);
        let id = i32::try_from(seq).map_err(|e| e.to_string())?;
        let prefilled = self.prefill(seq, &runs, &prompt, true, self.prompt_chunk, || sink.is_cancelled())?;
        let common = prefilled.kept;
        if !prefilled.complete {
            return Ok(self.finish(FinishReason::Cancelled, &prompt, common, 0, started, Duration::ZERO, Vec::new()));
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
        let mut logprobs = Vec::new();
        let logprob_tokens = if request.logprobs { super::LOGPROB_TOKENS } else { 0 };
        // Token healing: what the output must still begin with, and how much of it is left out.
        let mut heal = request.heal.as_bytes();
        let mut hidden = heal.len();
        let avoid = if heal.is_empty() { request.avoid.as_bytes() } else { b"" };
        if (!heal.is_empty() || !avoid.is_empty()) && self.pieces.is_empty() {
            self.pieces = (0..model.n_vocab()).map(|i| vocab.token_to_piece(LlamaToken(i), false, None)).collect();
        }
        let reason = loop {
            if generated >= request.max_tokens {
                break FinishReason::Length;
            }
            if sink.is_cancelled() {
                break FinishReason::Cancelled;
            }
            // A token chosen under a constraint (the first one away from `avoid`, or one that
            // agrees with what is left to heal), else the sampler's.
            let forced = if generated == 0 && !avoid.is_empty() {
                Some(super::avoiding_token(self.ctx.get_logits_ith(last_index), &self.pieces, avoid))
            } else if !heal.is_empty() {
                Some(super::healing_token(self.ctx.get_logits_ith(last_index), &self.pieces, heal))
            } else {
                None
            };
            let token = match forced {
                None => sampler.sample(&self.ctx, last_index),
                Some(None) => break FinishReason::EndOfText,
                Some(Some(id)) => {
                    let token = LlamaToken(id as i32);
                    sampler.accept(token);
                    token
                }
            };
            generated += 1;
            first_token.get_or_insert_with(|| started.elapsed());
            if vocab.is_eog(token) {
                self.record_logprob(&mut logprobs, logprob_tokens, last_index, token);
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
            // After the text is on its way (the logits last until the next decode): the times to
            // the first token and to each piece are what an editor would see.
            self.record_logprob(&mut logprobs, logprob_tokens, last_index, token);
            if stopped {
                break FinishReason::Stop;
            }
            batch.clear();
            batch.add(token, self.slots[seq].cached.len() as i32, &[id], true).map_err(|e| e.to_string())?;
            self.ctx.decode(&mut batch).map_err(|e| format!("decoding: {e}"))?;
            self.slots[seq].cached.push(token);
            self.slots[seq].unseen.push(0);
            last_index = 0;
        };
        sink.flush_held(&mut stops, reason);
        Ok(self.finish(reason, &prompt, common, generated, started, first_token.unwrap_or_default(), logprobs))
    }

    /// Adds `token`'s log-probability under the logits of batch position `index` while fewer than
    /// `limit` are recorded (only until the next decode replaces the logits; the limit is 0 unless
    /// the request asked).
    fn record_logprob(&self, logprobs: &mut Vec<f32>, limit: usize, index: i32, token: LlamaToken) {
        if logprobs.len() < limit {
            let logits = self.ctx.get_logits_ith(index);
            if let Some(t) = usize::try_from(token.0).ok().filter(|&t| t < logits.len()) {
                logprobs.push(super::log_probability(logits, t));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(&self, reason: FinishReason, prompt: &[LlamaToken], reused: usize, generated: usize, started: Instant, ttft: Duration, logprobs: Vec<f32>) -> Finish {
        Finish {
            reason,
            prompt_tokens: prompt.len(),
            reused_prompt_tokens: reused,
            generated_tokens: generated,
            time_to_first_token: ttft,
            total: started.elapsed(),
            logprobs,
        }
    }
}

/// Which sequence to use, given how many prompt tokens each would keep, when each was last used,
/// and which one the last generation ran in (pure: see [`Session::choose`]).
fn choose_slot(kept: &[usize], used: &[u64], last_generation: Option<usize>, warm: bool) -> usize {
    (0..kept.len())
        .filter(|&i| !(warm && kept.len() > 1 && last_generation == Some(i)))
        .max_by_key(|&i| (kept[i], std::cmp::Reverse(used[i])))
        .unwrap_or(0)
}

fn to_u32(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("position {n} out of range"))
}

fn to_i32(n: usize) -> Result<i32, String> {
    i32::try_from(n).map_err(|_| format!("position {n} out of range"))
}

fn seq_id(seq: usize) -> Result<i32, String> {
    i32::try_from(seq).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::choose_slot;

    #[test]
    fn the_sequence_that_keeps_most_is_chosen() {
        assert_eq!(choose_slot(&[10, 300], &[5, 1], Some(0), false), 1);
        assert_eq!(choose_slot(&[300, 10], &[5, 1], None, true), 0);
        assert_eq!(choose_slot(&[0, 0], &[5, 3], None, false), 1, "a tie: the least recently used");
    }

    #[test]
    fn a_warm_up_never_takes_the_last_generations_sequence() {
        // The short prompt at a new place shares more with the full one (its context) than an old
        // place's prompt does; it is still left alone.
        assert_eq!(choose_slot(&[300, 40], &[3, 5], Some(0), true), 1);
        assert_eq!(choose_slot(&[40, 300], &[5, 3], Some(1), true), 0);
        assert_eq!(choose_slot(&[40], &[5], Some(0), true), 0, "with one sequence there is no choice");
    }
}
