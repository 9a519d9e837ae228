//! Code completion: decide the shape, gather context, build a fill-in-the-middle prompt, generate,
//! cut and clean up.
//!
//! Recent generations are kept as slots. A request whose prefix extends a slot's prefix by what
//! the slot predicted (the user typed what the ghost text showed) is answered from that slot, even
//! while it is still generating; the same prefix and suffix is a cache hit. A request that matches
//! no slot cancels the running generations of its file: the newer edit wins.
//!
//! Context from elsewhere in the workspace comes from the [`ring::Ring`], not from a lookup per
//! keystroke: a request renders the ring as it is (stable text first, the changing text last, so
//! the engine computes only what changed since the last keystroke). Context is gathered only when
//! the cursor is somewhere new (another file, or more than [`FAR_LINES`] lines away).
//!
//! A new place's prompt grows in two steps, so the first ghost text there does not wait for the
//! whole prompt: the first requests use a small budget (`completion.first_prompt_tokens`: a short
//! prefix window and suffix, and only the new context that fits [`prompt::first_context`]); when
//! the user pauses, the rest of the context joins the ring and the full prompt is put into the
//! engine's cache by a warm-up. Once that has completed the place is *warm* and requests use the
//! full budget, already cached.

pub mod context;
pub mod ring;
pub mod scope;
pub mod shape;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::chunk::Language;
use crate::config;
use crate::embed::Embedder;
use crate::generate::{EngineError, Event, GenerateError, Generator, GenerationRequest, Sampling};
use crate::prompt::{self, Budget, Family, FimInput, Layout, Snippet};
use crate::store::Store;
use ring::Ring;

pub use context::Buffer;
pub use shape::Mode;
use shape::{Cursor, Limits};

/// Generations remembered for reuse.
const SLOTS: usize = 16;
/// Typed-ahead text longer than this is not matched against a slot.
const MAX_TYPED_AHEAD: usize = 256;
/// Lines of prefix (and suffix) that make the retrieval query.
const QUERY_PREFIX_LINES: usize = 12;
const QUERY_SUFFIX_LINES: usize = 3;
/// Identifiers near the cursor looked up as definitions.
const DEFINITION_LOOKUPS: usize = 6;
/// Hybrid search hits and open-buffer windows offered to the prompt.
const RETRIEVED_SNIPPETS: usize = 4;
const BUFFER_SNIPPETS: usize = 2;
/// A cursor this many lines from where context was last gathered (or in another file) gathers again.
pub const FAR_LINES: usize = 32;
/// A pause this long after a completion lets a new place's full prompt be prepared: pending
/// context joins the ring and the prompt goes into the engine's cache (a warm-up, which gives way
/// to the next keystroke's request).
pub const IDLE: Duration = Duration::from_millis(400);

/// The index, when there is one: BM25 works as soon as text is stored, vectors when embedded.
#[derive(Clone, Default)]
pub struct Retrieval {
    pub store: Option<Arc<Store>>,
    pub embedder: Option<Arc<dyn Embedder>>,
}

/// One completion request, in plain terms.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The workspace's name (the prompt's `<repo_name>`).
    pub repo: String,
    /// Workspace-relative path (`/`-separated) of the document.
    pub path: String,
    pub language: Language,
    /// The whole document as the editor has it.
    pub text: String,
    /// Cursor, as a byte offset into `text`.
    pub offset: usize,
    /// Other open documents.
    pub buffers: Vec<Buffer>,
}

/// Why a completion request has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The request's cursor is not in its document (past the end, or inside a character).
    #[error("cursor offset {0} is not in the document")]
    Position(usize),
    /// A newer request for the same file stopped this one's generation.
    #[error("cancelled by a newer request")]
    Cancelled,
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// How a completion was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reuse {
    /// Generated for this request.
    Fresh,
    /// Same prefix and suffix as an earlier request.
    Cache,
    /// The user typed the start of an earlier (possibly still running) prediction.
    TypedAhead,
}

/// A completion: text to insert at the cursor.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub text: String,
    pub mode: Mode,
    pub reuse: Reuse,
    pub snippets: Vec<Snippet>,
    pub prompt_tokens: usize,
    /// Time spent gathering context (retrieval, definitions, open buffers).
    pub context_ms: f64,
    /// Time spent building the prompt.
    pub prompt_ms: f64,
    /// Time from the start of generation to its (possibly early) end.
    pub generate_ms: f64,
    /// Time from the start of generation to the first generated text.
    pub first_token_ms: f64,
    /// The log-probabilities of the generation's first tokens, once its engine has finished
    /// (after this text, when the completion was cut early). `None` unless the completer records
    /// them ([`Completer::recording_logprobs`]), and for an answer taken from an earlier generation.
    #[serde(skip)]
    pub logprobs: Option<TokenLogprobs>,
}

/// The log-probabilities of a generation's first tokens (see
/// [`Finish::logprobs`](crate::generate::Finish::logprobs)), known once the engine reports it finished.
#[derive(Debug, Clone)]
pub struct TokenLogprobs(watch::Receiver<Option<Arc<[f32]>>>);

impl TokenLogprobs {
    /// Waits for the generation to finish; empty when it was stopped without finishing, or its
    /// engine records none.
    pub async fn wait(mut self) -> Vec<f32> {
        match self.0.wait_for(Option::is_some).await {
            Ok(found) => found.as_deref().map(<[f32]>::to_vec).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// What a slot's generation has produced so far.
#[derive(Debug, Clone)]
enum SlotState {
    Running(String),
    Done(Result<String, EngineError>),
}

struct Slot {
    repo: String,
    path: String,
    prefix: String,
    suffix: String,
    mode: Mode,
    state: watch::Receiver<SlotState>,
    task: tokio::task::AbortHandle,
    /// When the first text arrived, after the generation started.
    first_token: Arc<std::sync::OnceLock<Duration>>,
    /// The generation's log-probabilities, sent when its engine reports it finished.
    logprobs: watch::Receiver<Option<Arc<[f32]>>>,
    /// Filled in by the request that started the slot.
    snippets: Vec<Snippet>,
    /// Started by [`Completer::speculate`], not by a request: any fresh request stops it.
    speculative: bool,
    /// A second start (its request had `avoid`): what it shows stops where it copies the lines
    /// that follow, reused as when fresh.
    second_start: bool,
}

impl Slot {
    /// What this slot's finished text `raw` shows at `cursor`: cleaned up, and for a second start
    /// cut where it copies the lines that follow (fresh or reused alike).
    fn shown(&self, mode: Mode, raw: &str, cursor: &Cursor<'_>) -> String {
        let text = shape::finish(mode, raw, cursor);
        if self.second_start { shape::before_suffix_lines(&text, cursor.suffix) } else { text }
    }

    /// Still generating (not finished, not aborted).
    fn running(&self) -> bool {
        matches!(*self.state.borrow(), SlotState::Running(_)) && !self.task.is_finished()
    }

    /// Has an answer, or is still working on one.
    fn alive(&self) -> bool {
        matches!(*self.state.borrow(), SlotState::Done(Ok(_))) || self.running()
    }
}

/// The context ring, and what is known about the place being completed.
#[derive(Default)]
struct ContextState {
    /// What prompts carry.
    ring: Ring,
    /// Where context was last gathered: path and line.
    gathered_at: Option<(String, usize)>,
    /// Whether the engine's cache holds the full prompt for this place (its context joined the
    /// ring and was warmed); until then requests use the first-request budget.
    place_warm: bool,
    /// Gathered for this place, not in the ring yet.
    pending: Vec<Snippet>,
    /// The lines around the cursor `pending` was gathered for.
    pending_local: String,
    /// Counts requests; an idle warm-up runs only if none came after the one it follows.
    requests: u64,
}

/// The completion engine of one workspace.
pub struct Completer {
    generator: Arc<dyn Generator>,
    family: Family,
    settings: config::CompletionSettings,
    /// Generations record their first tokens' log-probabilities (see [`Self::recording_logprobs`]).
    logprobs: bool,
    slots: Arc<Mutex<Vec<Arc<Slot>>>>,
    context: Arc<Mutex<ContextState>>,
    /// Counts completion requests as they arrive (before anything else): a speculation started
    /// for an older one stops itself.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Held while context for a new place is gathered: a request there waits for it rather than
    /// build its prompt from a ring about to change.
    gathering: tokio::sync::Mutex<()>,
}

impl Completer {
    pub fn new(generator: Arc<dyn Generator>, family: Family, settings: config::CompletionSettings) -> Self {
        let context = ContextState { ring: Ring::with_policy(full_budget(&settings).context, ring_policy(&settings)), ..ContextState::default() };
        Self { generator, family, settings, logprobs: false, slots: Arc::default(), context: Arc::new(Mutex::new(context)), epoch: Arc::default(), gathering: tokio::sync::Mutex::new(()) }
    }

    /// Has each fresh generation record its first tokens' log-probabilities
    /// ([`Completion::logprobs`]; `kenning eval` keeps them with its scores). They cost a softmax
    /// over the vocabulary per token, so an editor's completer goes without.
    pub fn recording_logprobs(self) -> Self {
        Self { logprobs: true, ..self }
    }

    /// Gathers context for `request` and puts it in the ring at once (no waiting for a pause):
    /// what an editor's ring would hold after the user had been here a moment. For one-shot
    /// completions (`kenning complete`, `kenning eval`).
    pub async fn prepare(&self, request: &CompletionRequest, retrieval: &Retrieval) {
        self.prepare_around(request, request, retrieval).await
    }

    /// [`Completer::prepare`] with context gathered at `gather_at` (the request with a draft
    /// typed in, [`drafted`]) while the ring's room and what it must not repeat are `request`'s.
    pub async fn prepare_around(&self, request: &CompletionRequest, gather_at: &CompletionRequest, retrieval: &Retrieval) {
        let snippets = gather(gather_at, retrieval, &self.settings).await;
        let local = local_for_filter(&self.settings, &request.text, request.offset);
        let room = context_room(&self.settings, request);
        let mut state = self.context.lock().expect("context lock");
        state.ring.resize(room);
        state.ring.add(snippets, &local);
        state.gathered_at = Some((request.path.clone(), line_of(&request.text, request.offset)));
        state.place_warm = true;
        state.pending.clear();
    }

    /// Forgets the suggestions made so far (none is continued as the user types into it).
    pub fn forget_suggestions(&self) {
        self.slots.lock().expect("slots lock").clear();
    }

    /// The ring's snippets, oldest first (for status and tests).
    pub fn ring_snippets(&self) -> Vec<Snippet> {
        self.context.lock().expect("context lock").ring.snippets_for("")
    }

    /// An edited or saved document: ring snippets from it that no longer match are dropped.
    pub fn document_changed(&self, path: &str, text: &str) {
        self.context.lock().expect("context lock").ring.refresh_file(path, text);
    }

    /// How prompts are built: the full budget once the place is warm, else the first-request one.
    fn prompt_shape(&self, warm: bool) -> PromptShape {
        let budget = full_budget(&self.settings);
        PromptShape {
            family: self.family,
            layout: self.settings.layout,
            budget: if warm { budget } else { budget.first_request(self.settings.first_prompt_tokens) },
            heals: self.generator.heals(),
        }
    }

    pub fn settings(&self) -> &config::CompletionSettings {
        &self.settings
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn generator(&self) -> &Arc<dyn Generator> {
        &self.generator
    }

    /// Completes at the cursor. `Ok(None)`: nothing to complete here (mid-line) or nothing useful.
    pub async fn complete(&self, request: CompletionRequest, retrieval: &Retrieval) -> Result<Option<Completion>, CompleteError> {
        if request.offset > request.text.len() || !request.text.is_char_boundary(request.offset) {
            return Err(CompleteError::Position(request.offset));
        }
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let request = Arc::new(request);
        let mode = {
            let r = Arc::clone(&request);
            tokio::task::spawn_blocking(move || shape::decide(r.language, &r.text, r.offset))
                .await
                .map_err(|e| GenerateError::Task(e.to_string()))?
        };
        let Some(mode) = mode else { return Ok(None) };
        let prefix = &request.text[..request.offset];
        let suffix = &request.text[request.offset..];

        if let Some(found) = self.reuse(&request.repo, &request.path, prefix, suffix, mode).await {
            let found = found?;
            if !found.text.is_empty() {
                self.speculate(&request, &found.text);
            }
            return Ok(Some(found).filter(|c| !c.text.is_empty()));
        }
        self.cancel_running(&request.repo, &request.path);
        // A warm-up under way gives way now, not once this request's generation is queued after
        // its context is gathered (up to a batch of the warm-up saved at a new place).
        let ahead = self.generator.request_ahead();

        let started = Instant::now();
        // At a new place the local part of the prompt is computed afresh anyway: context for it is
        // gathered now (unless the edit that brought the cursor here did) and joins the ring in
        // the same prompt.
        {
            let _gathering = self.gathering.lock().await;
            if self.new_place(&request) && (retrieval.store.is_some() || !request.buffers.is_empty()) {
                self.gather_for_place(&request, retrieval).await;
            }
        }
        let (mut snippets, warm) = self.ring_for(&request.path);
        if !self.settings.line_start_context && at_line_start(&request.text, request.offset) {
            snippets.clear();
        }
        let shape = self.prompt_shape(warm);
        let local = Local::new(&request, &shape);
        let context_ms = ms(started.elapsed());
        tracing::debug!(context_ms, warm, snippets = snippets.len(), "context for a completion");

        let started = Instant::now();
        let built = shape.build(&request, &local, &snippets);
        let heal = local.heal.as_str();
        let used = snippets;
        let prompt_tokens = prompt::estimate_tokens(&built.text);
        let prompt_ms = ms(started.elapsed());

        let max_tokens = match mode {
            Mode::SingleLine => self.settings.max_tokens,
            Mode::MultiLine => self.settings.max_tokens_multiline,
        };
        let gen_request = GenerationRequest {
            prompt: built.text,
            max_tokens,
            sampling: Sampling::default(),
            stop: built.stop,
            heal: heal.to_owned(),
            avoid: String::new(),
            logprobs: self.logprobs,
        };
        let started = Instant::now();
        let mut slot = self.start(&request, mode, gen_request.clone(), used.clone())?;
        drop(ahead);
        let raw = wait(&slot).await;
        self.after_request(&request);
        let raw = raw?;
        let cursor = Cursor::new(&request.text, request.offset);
        let mut text = shape::finish(mode, &raw, &cursor);
        let mut first_token_ms = slot.first_token.get().map(|d| ms(*d));
        if let Some(avoid) = self.insertion_retry(&raw, &text, heal, &cursor) {
            // A line being written between two others, completed as the one after it (which the
            // suffix has, so nothing was left to show): once more with the same prompt, starting
            // otherwise, and kept only up to where it too turns to copying the lines that follow.
            // The engine has the prompt in its cache: this costs the decoding only.
            let before = ms(started.elapsed());
            slot = self.start(&request, mode, GenerationRequest { avoid, ..gen_request }, used.clone())?;
            text = slot.shown(mode, &wait(&slot).await?, &cursor);
            first_token_ms = slot.first_token.get().map(|d| before + ms(*d));
        }
        let generate_ms = ms(started.elapsed());
        if text.is_empty() {
            return Ok(None);
        }
        self.speculate(&request, &text);
        let first_token_ms = first_token_ms.unwrap_or(generate_ms);
        let logprobs = self.logprobs.then(|| TokenLogprobs(slot.logprobs.clone()));
        Ok(Some(Completion { text, mode, reuse: Reuse::Fresh, snippets: used, prompt_tokens, context_ms, prompt_ms, generate_ms, first_token_ms, logprobs }))
    }

    /// What a second generation must not begin with when the first one's output (`raw`) came to
    /// nothing (`shown` empty) only because it repeated the lines after the cursor, at the end of a
    /// line (a line being inserted): the thrown-away start's first line with code. Every first token
    /// that begins it is ruled out, so a line that starts the same (`pub c: u8,` avoided, `pub b:
    /// u8,` wanted) is out of reach too: a coarse rule, for a case that showed nothing at all before.
    /// `None` otherwise (something was shown, the cursor is mid-line or inside a word, or the
    /// engine cannot be told).
    fn insertion_retry(&self, raw: &str, shown: &str, heal: &str, cursor: &Cursor<'_>) -> Option<String> {
        if !shown.is_empty() || !heal.is_empty() || !cursor.line_after.trim().is_empty() || !self.generator.avoids() {
            return None;
        }
        // Without the whitespace before it: avoiding that would push the indentation off instead.
        let code = raw.find(|c: char| !c.is_whitespace())?;
        let end = raw[code..].find('\n').map_or(raw.len(), |n| code + n);
        Some(raw[code..end].trim_end().to_owned())
    }

    /// Whether line `line` of `path` is somewhere context was not gathered for (see
    /// [`new_place`](Self::new_place)), without remembering it.
    pub fn is_new_place(&self, path: &str, line: usize) -> bool {
        let state = self.context.lock().expect("context lock");
        state.gathered_at.as_ref().is_none_or(|(p, at)| p != path || at.abs_diff(line) > FAR_LINES)
    }

    /// An edit that ends at `request`'s cursor. At a new place the user is about to be asked for
    /// ghost text, typically within a word: its context is gathered now and the first-request
    /// prompt there goes into the engine's cache (a warm-up, which gives way to any request), so
    /// that the first request pays only for what was typed meanwhile. Elsewhere nothing happens.
    pub async fn edited(&self, request: CompletionRequest, retrieval: &Retrieval) {
        if !self.settings.prepare_on_edit || request.offset > request.text.len() || !request.text.is_char_boundary(request.offset) {
            return;
        }
        let prompt = {
            let _gathering = self.gathering.lock().await;
            if !self.new_place(&request) {
                return;
            }
            if retrieval.store.is_some() || !request.buffers.is_empty() {
                self.gather_for_place(&request, retrieval).await;
            }
            let snippets = self.context.lock().expect("context lock").ring.snippets_for(&request.path);
            let shape = self.prompt_shape(false);
            shape.build(&request, &Local::new(&request, &shape), &snippets).text
        };
        match self.generator.warm(prompt) {
            Ok(warming) => {
                tracing::debug!(path = request.path, line = line_of(&request.text, request.offset), "warming the first prompt of a new place");
                drop(warming); // the engine goes on: its outcome is not needed
            }
            Err(e) => tracing::debug!("no warm-up at a new place: {e}"),
        }
    }

    /// Whether the cursor is somewhere context was not gathered for (another file, or more than
    /// [`FAR_LINES`] lines away); if so, the place is remembered, not yet warm.
    fn new_place(&self, request: &CompletionRequest) -> bool {
        let line = line_of(&request.text, request.offset);
        let mut state = self.context.lock().expect("context lock");
        let far = match &state.gathered_at {
            Some((path, at)) => *path != request.path || at.abs_diff(line) > FAR_LINES,
            None => true,
        };
        if far {
            state.gathered_at = Some((request.path.clone(), line));
            state.place_warm = false;
            state.pending.clear();
        }
        far
    }

    /// Gathers context for a new place: what fits in [`prompt::first_context`] (best first) joins
    /// the ring at once, the rest waits as pending for the next pause. Every token of it is
    /// computed before the first ghost text there.
    async fn gather_for_place(&self, request: &CompletionRequest, retrieval: &Retrieval) {
        let found = gather(request, retrieval, &self.settings).await;
        let local = local_for_filter(&self.settings, &request.text, request.offset);
        let (now, later) = ring::split_allowance(found, prompt::first_context(self.settings.first_prompt_tokens));
        let room = context_room(&self.settings, request);
        let mut state = self.context.lock().expect("context lock");
        state.ring.resize(room);
        state.ring.add(now, &local);
        state.pending = later;
        state.pending_local = local;
    }

    /// The ring's snippets for a prompt in `path`, and whether the place is warm (the full
    /// budget applies).
    fn ring_for(&self, path: &str) -> (Vec<Snippet>, bool) {
        let mut state = self.context.lock().expect("context lock");
        state.requests += 1;
        (state.ring.snippets_for(path), state.place_warm)
    }

    /// After a request at a place that is not warm yet: once the user pauses ([`IDLE`]), the full
    /// prompt for the request — the ring with the pending context added, the full budget — is put
    /// into the engine's cache; when that completes, the pending context joins the ring and the
    /// place is warm (requests use the full budget). Until then requests keep the short prompt and
    /// the ring they had, so a warm-up cut short by a keystroke costs the next request nothing.
    fn after_request(&self, request: &Arc<CompletionRequest>) {
        let requests = {
            let state = self.context.lock().expect("context lock");
            if state.place_warm {
                return;
            }
            state.requests
        };
        let context = Arc::clone(&self.context);
        let generator = Arc::clone(&self.generator);
        let request = Arc::clone(request);
        let shape = self.prompt_shape(true);
        let single_cache = self.generator.cache_slots() < 2;
        let place = (request.path.clone(), line_of(&request.text, request.offset));
        let here = move |state: &ContextState| state.gathered_at.as_ref().is_some_and(|(p, l)| *p == place.0 && l.abs_diff(place.1) <= FAR_LINES);
        tokio::spawn(async move {
            tokio::time::sleep(IDLE).await;
            let (prompt, before, after) = {
                let state = context.lock().expect("context lock");
                if state.requests != requests || state.place_warm || !here(&state) {
                    return;
                }
                let mut after = state.ring.clone();
                after.add(state.pending.clone(), &state.pending_local);
                let snippets = after.snippets_for(&request.path);
                (shape.build(&request, &Local::new(&request, &shape), &snippets).text, state.ring.clone(), after)
            };
            let Ok(warming) = generator.warm(prompt) else { return };
            let Some(warmed) = warming.done().await else { return };
            tracing::debug!(cached = warmed.cached, computed = warmed.computed, complete = warmed.complete, "warmed the full prompt of a new place");
            // An engine with one cache: a warm-up stopped part-way by a keystroke has still replaced
            // the short prompt, so from here the full prompt is the cheaper one (it pays only the
            // rest, once). With several, the short prompt stays cached beside the warm-up's
            // progress, and the next pause goes on warming until the whole full prompt is in.
            if warmed.complete || (single_cache && warmed.computed > 0) {
                let mut state = context.lock().expect("context lock");
                // Unless the place or the ring changed meanwhile (then the next pause starts over).
                if here(&state) && state.ring == before {
                    state.ring = after;
                    state.pending.clear();
                    state.place_warm = true;
                }
            }
        });
    }

    /// After `shown` was suggested for `request`: the next line's completion, computed in the
    /// background as if the user accepted `shown` and pressed Enter (`completion.speculate`). It is
    /// an ordinary slot: the request at the new line (or one typing on from there) is answered from
    /// it, and any other request cancels it as it cancels every running slot of the file.
    fn speculate(&self, request: &Arc<CompletionRequest>, shown: &str) {
        if !self.settings.speculate {
            return;
        }
        let Some((text, offset)) = shape::after_accepting(request.language, &request.text, request.offset, shown) else { return };
        let (prefix, suffix) = text.split_at(offset);
        // Already there: a slot at that place, or one whose prediction runs into it.
        let covered = self.slots.lock().expect("slots lock").iter().any(|s| {
            s.repo == request.repo
                && s.path == request.path
                && s.suffix == suffix
                && s.alive()
                && (s.prefix == prefix || prefix.strip_prefix(s.prefix.as_str()).is_some_and(|typed| slot_predicts(s, typed)))
        });
        if covered {
            return;
        }
        let epoch = self.epoch.load(std::sync::atomic::Ordering::SeqCst);
        // Open buffers are not in a prompt (the ring is): the copy leaves them out.
        let next = CompletionRequest { text, offset, buffers: Vec::new(), repo: request.repo.clone(), path: request.path.clone(), language: request.language };
        let (generator, slots, context, current) =
            (Arc::clone(&self.generator), Arc::clone(&self.slots), Arc::clone(&self.context), Arc::clone(&self.epoch));
        let settings = self.settings.clone();
        let shape = self.prompt_shape(true);
        tokio::spawn(async move {
            let next = tokio::task::spawn_blocking(move || shape::decide(next.language, &next.text, next.offset).map(|_| next)).await;
            let Ok(Some(next)) = next else { return };
            let newer = || current.load(std::sync::atomic::Ordering::SeqCst) != epoch;
            if newer() {
                return; // a request came meanwhile: it decides what runs next
            }
            let (mut snippets, warm) = {
                let state = context.lock().expect("context lock");
                (state.ring.snippets_for(&next.path), state.place_warm)
            };
            // The next line is asked for at its start: the same context the request there gets.
            if !settings.line_start_context && at_line_start(&next.text, next.offset) {
                snippets.clear();
            }
            let shape = PromptShape { budget: if warm { shape.budget } else { shape.budget.first_request(settings.first_prompt_tokens) }, ..shape };
            let local = Local::new(&next, &shape);
            let built = shape.build(&next, &local, &snippets);
            // One line, whatever the place would get: it is what the user is likely to take next, and
            // a block would keep the engine busy for text nobody may want.
            let gen_request = GenerationRequest { prompt: built.text, max_tokens: settings.max_tokens, sampling: Sampling::default(), stop: built.stop, heal: local.heal, avoid: String::new(), logprobs: false };
            let limits = Limits { max_lines: settings.max_lines };
            match start_slot(&generator, &slots, limits, &next, Mode::SingleLine, gen_request, snippets, true) {
                // A request that came while this started may have missed it: it is stopped then.
                Ok(slot) if newer() => slot.task.abort(),
                Ok(_) => tracing::debug!(line = line_of(&next.text, next.offset), "speculating on the next line"),
                Err(e) => tracing::debug!("speculation not started: {e}"),
            }
        });
    }

    /// A completion from a remembered slot, if the request continues one.
    /// `Some(Err(Cancelled))` when the slot this request was waiting on was stopped by a newer one.
    async fn reuse(&self, repo: &str, path: &str, prefix: &str, suffix: &str, mode: Mode) -> Option<Result<Completion, CompleteError>> {
        let slot = {
            let slots = self.slots.lock().expect("slots lock");
            slots
                .iter()
                .rev()
                .find(|s| {
                    s.repo == repo
                        && s.path == path
                        && s.suffix == suffix
                        && prefix.starts_with(s.prefix.as_str())
                        && prefix.len() - s.prefix.len() <= MAX_TYPED_AHEAD
                        && (prefix.len() == s.prefix.len() || s.mode == mode || mode == Mode::SingleLine)
                })
                .cloned()?
        };
        let typed = &prefix[slot.prefix.len()..];
        // Give up early if what is already predicted contradicts what was typed.
        let mut state = slot.state.clone();
        let raw = loop {
            let current = state.borrow_and_update().clone();
            match current {
                SlotState::Done(Ok(raw)) => break raw,
                SlotState::Done(Err(_)) => return None,
                SlotState::Running(sofar) => {
                    let common = sofar.len().min(typed.len());
                    if sofar.as_bytes()[..common] != typed.as_bytes()[..common] {
                        return None;
                    }
                    // One line is wanted and the slot (a block) has already written it whole.
                    if mode == Mode::SingleLine && sofar.len() > typed.len() && sofar[typed.len()..].contains('\n') {
                        break sofar;
                    }
                }
            }
            if state.changed().await.is_err() {
                // Aborted while running: a newer request took over.
                return matches!(*state.borrow(), SlotState::Running(_)).then_some(Err(CompleteError::Cancelled));
            }
        };
        let rest = raw.strip_prefix(typed)?;
        let text_now = format!("{prefix}{suffix}");
        let cursor = Cursor::new(&text_now, prefix.len());
        let (cut, _) = shape::cut(mode, rest, &cursor, Limits { max_lines: self.settings.max_lines });
        let text = slot.shown(mode, &cut, &cursor);
        Some(Ok(Completion {
            text,
            mode,
            reuse: if typed.is_empty() { Reuse::Cache } else { Reuse::TypedAhead },
            snippets: slot.snippets.clone(),
            prompt_tokens: 0,
            context_ms: 0.0,
            prompt_ms: 0.0,
            generate_ms: 0.0,
            first_token_ms: 0.0,
            logprobs: None,
        }))
    }

    /// Cancels the running generations of `path` (a newer, different request arrived), and every
    /// running speculation (in any file: the engine is needed for this request).
    fn cancel_running(&self, repo: &str, path: &str) {
        let slots = self.slots.lock().expect("slots lock");
        for s in slots.iter().filter(|s| s.speculative || (s.repo == repo && s.path == path)) {
            if matches!(*s.state.borrow(), SlotState::Running(_)) {
                s.task.abort();
            }
        }
    }

    /// Starts a generation in a slot task (see [`start_slot`]).
    fn start(&self, request: &CompletionRequest, mode: Mode, gen_request: GenerationRequest, snippets: Vec<Snippet>) -> Result<Arc<Slot>, GenerateError> {
        start_slot(&self.generator, &self.slots, Limits { max_lines: self.settings.max_lines }, request, mode, gen_request, snippets, false)
    }
}

/// Starts a generation in a task of its own (it outlives a cancelled request, for reuse) and
/// remembers it among `slots`.
#[allow(clippy::too_many_arguments)]
fn start_slot(
    generator: &Arc<dyn Generator>,
    slots: &Mutex<Vec<Arc<Slot>>>,
    limits: Limits,
    request: &CompletionRequest,
    mode: Mode,
    gen_request: GenerationRequest,
    snippets: Vec<Snippet>,
    speculative: bool,
) -> Result<Arc<Slot>, GenerateError> {
    let started = Instant::now();
    let second_start = !gen_request.avoid.is_empty();
    let mut generation = generator.generate(gen_request)?;
    let (tx, rx) = watch::channel(SlotState::Running(String::new()));
    let text = request.text.clone();
    let offset = request.offset;
    let first_token = Arc::new(std::sync::OnceLock::new());
    let first = Arc::clone(&first_token);
    let (logprobs_tx, logprobs) = watch::channel(None);
    let task = tokio::spawn(async move {
        let cursor = Cursor::new(&text, offset);
        let mut raw = String::new();
        let log = |finish: &crate::generate::Finish| {
            logprobs_tx.send_replace(Some(Arc::from(finish.logprobs.as_slice())));
            tracing::debug!(
                prompt_tokens = finish.prompt_tokens,
                computed = finish.prompt_tokens - finish.reused_prompt_tokens,
                generated = finish.generated_tokens,
                first_token_ms = ms(finish.time_to_first_token),
                // From the request to its first text: the engine's first token, and before it
                // the wait for the engine (a warm-up or speculation giving way).
                first_text_ms = first.get().map(|d| ms(*d)),
                decode_ms = ms(finish.total.saturating_sub(finish.time_to_first_token)),
                reason = ?finish.reason,
                "generation finished"
            );
        };
        let mut finished = false;
        let result = loop {
            match generation.next().await {
                Some(Event::Text(t)) => {
                    let _ = first.set(started.elapsed());
                    raw.push_str(&t);
                    let (kept, done) = shape::cut(mode, &raw, &cursor, limits);
                    if done {
                        break Ok(kept);
                    }
                    tx.send_replace(SlotState::Running(raw.clone()));
                }
                Some(Event::Done(finish)) => {
                    log(&finish);
                    finished = true;
                    break Ok(shape::cut(mode, &raw, &cursor, limits).0);
                }
                Some(Event::Error(e)) => break Err(e),
                None => break Err(EngineError::Stopped),
            }
        };
        tx.send_replace(SlotState::Done(result));
        // Cut early: the engine stops before its next token and reports what it cost.
        if !finished {
            generation.stop();
            while let Some(event) = generation.next().await {
                if let Event::Done(finish) = event {
                    log(&finish);
                }
            }
        }
    });
    let slot = Arc::new(Slot {
        repo: request.repo.clone(),
        path: request.path.clone(),
        prefix: request.text[..request.offset].to_owned(),
        suffix: request.text[request.offset..].to_owned(),
        mode,
        state: rx,
        task: task.abort_handle(),
        first_token,
        logprobs,
        snippets,
        speculative,
        second_start,
    });
    let mut slots = slots.lock().expect("slots lock");
    slots.push(Arc::clone(&slot));
    if slots.len() > SLOTS {
        slots.remove(0);
    }
    Ok(slot)
}

/// Whether `slot`'s text so far (or in full) begins with `typed`: the user typing it is on its path.
fn slot_predicts(slot: &Slot, typed: &str) -> bool {
    match &*slot.state.borrow() {
        SlotState::Running(sofar) => sofar.starts_with(typed) || typed.starts_with(sofar.as_str()),
        SlotState::Done(Ok(text)) => text.starts_with(typed),
        SlotState::Done(Err(_)) => false,
    }
}

/// Waits for a slot's final text.
async fn wait(slot: &Slot) -> Result<String, CompleteError> {
    let mut state = slot.state.clone();
    let finished = loop {
        if let SlotState::Done(result) = &*state.borrow_and_update() {
            break result.clone();
        }
        if state.changed().await.is_err() {
            // The task was aborted (a newer request) or panicked.
            match &*state.borrow() {
                SlotState::Done(result) => break result.clone(),
                SlotState::Running(_) => return Err(CompleteError::Cancelled),
            }
        }
    };
    finished.map_err(|e| GenerateError::from(e).into())
}

/// Definitions of names near the cursor first, then the signatures of what the file imports
/// (`settings.imports`), open buffers, search hits (unless `settings.similar_code` is off);
/// overlaps removed.
async fn gather(request: &CompletionRequest, retrieval: &Retrieval, settings: &config::CompletionSettings) -> Vec<Snippet> {
    let prefix = &request.text[..request.offset];
    let suffix = &request.text[request.offset..];
    let query_start = nth_line_from_end(prefix, QUERY_PREFIX_LINES);
    let query_end = suffix.match_indices('\n').nth(QUERY_SUFFIX_LINES - 1).map_or(suffix.len(), |(i, _)| i);
    let query = format!("{}{}", &prefix[query_start..], &suffix[..query_end]);
    let buffers = context::similar_windows(&query, &request.buffers, BUFFER_SNIPPETS);
    let (definitions, retrieved) = match &retrieval.store {
        Some(store) => {
            // A name the file takes from the standard library is not looked up: the workspace's
            // chunk of the same name is another item (tokio's `Context` for `cx: &mut Context`,
            // or `task::Context` after `use std::task`). Nor is a name the code binds itself (a
            // local `handle` is not a `fn handle` elsewhere).
            let mut external = scope::standard_library_names(request.language, &request.text[..request.offset]);
            let window = &request.text[context::nearby_range(&request.text, request.offset)];
            external.extend(scope::standard_library_paths(request.language, window, &external));
            external.extend(scope::locally_bound(request.language, window));
            let identifiers: Vec<String> =
                context::nearby_identifiers(&request.text, request.offset, DEFINITION_LOOKUPS + external.len()).into_iter().filter(|n| !external.contains(n)).take(DEFINITION_LOOKUPS).collect();
            let similar = async {
                if settings.similar_code {
                    context::retrieved(store, retrieval.embedder.clone(), &query, &request.path, RETRIEVED_SNIPPETS, settings.similar_prose).await
                } else {
                    Vec::new()
                }
            };
            let imported = async {
                if settings.imports {
                    let names = scope::imported_names(request.language, &request.text[..request.offset]);
                    context::signatures(store, &names, &request.path).await
                } else {
                    Vec::new()
                }
            };
            let (mut definitions, imported, similar) =
                tokio::join!(context::definitions(store, &identifiers, &request.path, 1), imported, similar);
            definitions.extend(imported);
            (definitions, similar)
        }
        None => (Vec::new(), Vec::new()),
    };
    // An open buffer is newer than the index: a hit in one shows the buffer's lines instead (a
    // signature is not the file's lines verbatim: it stays as the index has it).
    let overlay = |mut s: Snippet| {
        if s.source != prompt::Source::Signature
            && let Some(b) = request.buffers.iter().find(|b| b.path == s.path)
        {
            let lines: Vec<&str> = b.text.lines().skip(s.start_line as usize - 1).take((s.end_line - s.start_line + 1) as usize).collect();
            s.text = lines.join("\n") + "\n";
        }
        s
    };
    let mut all: Vec<Snippet> = definitions.into_iter().map(overlay).collect();
    all.extend(buffers);
    all.extend(retrieved.into_iter().map(overlay));
    // Open buffers are the editor's text, not the index's: secrets are taken out here.
    for s in &mut all {
        crate::secrets::redact(&mut s.text);
    }
    context::dedupe(all)
}

/// `request` as if `draft` had been typed at its cursor (the cursor after it): where
/// `completion.draft_query` gathers context, so the search query holds the line the model expects
/// and the names it would call are the ones nearest the cursor.
pub fn drafted(request: &CompletionRequest, draft: &str) -> CompletionRequest {
    let (prefix, suffix) = request.text.split_at(request.offset);
    CompletionRequest { text: format!("{prefix}{draft}{suffix}"), offset: request.offset + draft.len(), ..request.clone() }
}

/// What the ring does with the code around the cursor under `settings`.
fn ring_policy(settings: &config::CompletionSettings) -> ring::Policy {
    ring::Policy { drop_local_repeats: settings.drop_local_repeats, trim_to_fit: settings.trim_to_fit }
}

/// The code around the cursor as the ring sees it: what it must not repeat
/// (`completion.drop_local_repeats`, llama.vim's rule) and what a snippet cut to fit keeps the
/// window most like (`completion.trim_to_fit`); empty when the ring reads neither. Dropping repeats,
/// measured on the tokio API tasks (40, cursor before a cross-file call): edit similarity
/// 47.7 % with it, 50.8 % without.
fn local_for_filter(settings: &config::CompletionSettings, text: &str, offset: usize) -> String {
    if ring_policy(settings).reads_local() { ring::local_window(text, offset).to_owned() } else { String::new() }
}

/// The ring's budget at `request`'s place: what the full prompt's prefix and suffix leave
/// there ([`Budget::context_at`]). On the tokio API tasks (40, 31 of them less than 768 tokens
/// into their file) the fixed share alone (664 tokens) gave 47.9 % edit similarity, this 52.3 %
/// (README, "Completions").
fn context_room(settings: &config::CompletionSettings, request: &CompletionRequest) -> usize {
    let (prefix, suffix) = request.text.split_at(request.offset);
    full_budget(settings).context_at(settings.prompt_tokens, prefix, suffix)
}

/// The context a completion at `request` carries once its place is warm (what
/// [`Completer::prepare`] puts in a new completer's ring), oldest first; no model is needed. For
/// training examples that carry what the completion prompt carries.
pub async fn context_for(request: &CompletionRequest, retrieval: &Retrieval, settings: &config::CompletionSettings) -> Vec<Snippet> {
    let snippets = gather(request, retrieval, settings).await;
    let mut ring = Ring::with_policy(context_room(settings, request), ring_policy(settings));
    ring.add(snippets, &local_for_filter(settings, &request.text, request.offset));
    ring.snippets_for("")
}

/// The budget of a warm place's prompt under `settings`.
fn full_budget(settings: &config::CompletionSettings) -> Budget {
    Budget::with_suffix(settings.prompt_tokens, settings.suffix_tokens)
}

/// How this completer's prompts are built (copied into background tasks).
#[derive(Debug, Clone, Copy)]
struct PromptShape {
    family: Family,
    layout: Layout,
    budget: Budget,
    heals: bool,
}

/// The text at the cursor as the prompt takes it: secrets redacted, the partial word taken back
/// for token healing.
struct Local {
    /// The prefix without the healed word.
    kept: String,
    suffix: String,
    /// The partial word the engine must begin with.
    heal: String,
}

impl Local {
    fn new(request: &CompletionRequest, shape: &PromptShape) -> Self {
        let heals = shape.heals;
        // Only the text near the cursor can reach the prompt: that region is cut first (twice the
        // budget, and a margin so that a secret spanning the cut is still seen whole), then
        // redacted, so a keystroke in a big file does not scan the whole file.
        let budget_bytes = |tokens: usize| (tokens as f64 * prompt::BYTES_PER_TOKEN) as usize * 2 + LOCAL_MARGIN_BYTES;
        let prefix = prefix_region(&request.text[..request.offset], budget_bytes(shape.budget.prefix));
        let suffix = suffix_region(&request.text[request.offset..], budget_bytes(shape.budget.suffix));
        // Secrets in the editor's text never reach the model (line breaks are kept, so the prefix
        // window's anchor stays where it was).
        let (prefix, _) = crate::secrets::redacted(prefix);
        let (suffix, _) = crate::secrets::redacted(suffix);
        // Token healing: a prefix that ends inside a word goes to the model without that part, and
        // the model writes the whole word in its own tokens (the part typed is left out of its output).
        let cut = if heals { prompt::partial_word_start(&prefix) } else { prefix.len() };
        Self { kept: prefix[..cut].to_owned(), heal: prefix[cut..].to_owned(), suffix: suffix.into_owned() }
    }
}

/// Beyond twice its budget, the text the prompt's prefix and suffix are cut from keeps this much
/// more (a private-key block is at most ~3.3 KB).
const LOCAL_MARGIN_BYTES: usize = 16 * 1024;

/// The end of `prefix` from a line whose number is a multiple of the prompt's anchor (so the
/// prefix window is cut where it would be in the whole text), at least `bytes` long when the
/// prefix is.
fn prefix_region(prefix: &str, bytes: usize) -> &str {
    if prefix.len() <= bytes {
        return prefix;
    }
    let mut at = prefix.len() - bytes;
    while !prefix.is_char_boundary(at) {
        at -= 1;
    }
    // Back to a line start, then back to an anchored line.
    let mut start = prefix[..at].rfind('\n').map_or(0, |i| i + 1);
    let mut line = prefix.as_bytes()[..start].iter().filter(|&&b| b == b'\n').count();
    while start > 0 && line % prompt::PREFIX_ANCHOR_LINES != 0 {
        start = prefix[..start - 1].rfind('\n').map_or(0, |i| i + 1);
        line -= 1;
    }
    &prefix[start..]
}

/// The start of `suffix`, at least `bytes` long when the suffix is, ended at a line end.
fn suffix_region(suffix: &str, bytes: usize) -> &str {
    if suffix.len() <= bytes {
        return suffix;
    }
    let mut at = bytes;
    while !suffix.is_char_boundary(at) {
        at += 1;
    }
    suffix[at..].find('\n').map_or(suffix, |i| &suffix[..at + i + 1])
}

impl PromptShape {
    /// The prompt for `request` with the ring's `snippets` (pure).
    fn build(&self, request: &CompletionRequest, local: &Local, snippets: &[Snippet]) -> prompt::Prompt {
        let input = FimInput { repo: &request.repo, path: &request.path, prefix: &local.kept, suffix: &local.suffix, snippets };
        prompt::fim_stable(self.family, self.layout, &input, self.budget)
    }
}


/// Whether only indentation comes before `offset` on its line (the whole line is to be guessed).
fn at_line_start(text: &str, offset: usize) -> bool {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    text[start..offset].chars().all(|c| c == ' ' || c == '\t')
}

/// The 0-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count()
}

/// Byte offset where the last `n` lines of `text` start.
fn nth_line_from_end(text: &str, n: usize) -> usize {
    text.rmatch_indices('\n').nth(n).map_or(0, |(i, _)| i + 1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests;
