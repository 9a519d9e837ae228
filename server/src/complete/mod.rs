//! Code completion: decide the shape, gather context, build a fill-in-the-middle prompt, generate,
//! cut and clean up.
//!
//! Recent generations are kept as slots. A request whose prefix extends a slot's prefix by what
//! the slot predicted (the user typed what the ghost text showed) is answered from that slot, even
//! while it is still generating; the same prefix and suffix is a cache hit. A request that matches
//! no slot cancels the running generations of its file: the newer edit wins.

pub mod context;
pub mod shape;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::chunk::Language;
use crate::config;
use crate::embed::Embedder;
use crate::generate::{Event, GenerateError, Generator, Request as GenRequest, Sampling};
use crate::prompt::{self, Family, FimInput, Snippet};
use crate::store::Store;

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

/// The index, when there is one: BM25 works as soon as text is stored, vectors when embedded.
#[derive(Clone, Default)]
pub struct Retrieval {
    pub store: Option<Arc<Store>>,
    pub embedder: Option<Arc<dyn Embedder>>,
}

/// One completion request, in plain terms.
#[derive(Debug, Clone)]
pub struct Request {
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
}

/// What a slot's generation has produced so far.
#[derive(Debug, Clone)]
enum SlotState {
    Running(String),
    Done(Result<String, String>),
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
    /// Filled in by the request that started the slot.
    snippets: Vec<Snippet>,
}

/// The completion engine of one workspace.
pub struct Completer {
    generator: Arc<dyn Generator>,
    family: Family,
    settings: config::Completion,
    slots: Mutex<Vec<Arc<Slot>>>,
}

impl Completer {
    pub fn new(generator: Arc<dyn Generator>, family: Family, settings: config::Completion) -> Self {
        Self { generator, family, settings, slots: Mutex::new(Vec::new()) }
    }

    pub fn settings(&self) -> &config::Completion {
        &self.settings
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn generator(&self) -> &Arc<dyn Generator> {
        &self.generator
    }

    /// Completes at the cursor. `Ok(None)`: nothing to complete here (mid-line) or nothing useful.
    pub async fn complete(&self, request: Request, retrieval: &Retrieval) -> Result<Option<Completion>, GenerateError> {
        if request.offset > request.text.len() || !request.text.is_char_boundary(request.offset) {
            return Err(GenerateError::Failed(format!("cursor offset {} is not in the document", request.offset)));
        }
        let request = Arc::new(request);
        let mode = {
            let r = Arc::clone(&request);
            tokio::task::spawn_blocking(move || shape::decide(r.language, &r.text, r.offset))
                .await
                .map_err(|e| GenerateError::Failed(e.to_string()))?
        };
        let Some(mode) = mode else { return Ok(None) };
        let prefix = &request.text[..request.offset];
        let suffix = &request.text[request.offset..];

        if let Some(found) = self.reuse(&request.repo, &request.path, prefix, suffix, mode).await {
            return Ok(Some(found).filter(|c| !c.text.is_empty()));
        }
        self.cancel_running(&request.repo, &request.path);

        let started = Instant::now();
        let snippets = if retrieval.store.is_some() || !request.buffers.is_empty() {
            gather(&request, retrieval).await
        } else {
            Vec::new()
        };
        let context_ms = ms(started.elapsed());

        let started = Instant::now();
        // Token healing: a prefix that ends inside a word goes to the model without that part, and
        // the model writes the whole word in its own tokens (the part typed is left out of its output).
        let (kept, heal) = if self.generator.heals() { prefix.split_at(prompt::partial_word_start(prefix)) } else { (prefix, "") };
        let input = FimInput { repo: &request.repo, path: &request.path, prefix: kept, suffix, snippets: &snippets };
        let built = prompt::fim(self.family, &input, self.settings.prompt_tokens);
        let used: Vec<Snippet> = built.snippets_used.iter().map(|&i| snippets[i].clone()).collect();
        let prompt_tokens = prompt::estimate_tokens(&built.text);
        let prompt_ms = ms(started.elapsed());

        let max_tokens = match mode {
            Mode::SingleLine => self.settings.max_tokens,
            Mode::MultiLine => self.settings.max_tokens_multiline,
        };
        let gen_request = GenRequest { prompt: built.text, max_tokens, sampling: Sampling::default(), stop: built.stop, heal: heal.to_owned() };
        let started = Instant::now();
        let slot = self.start(&request, mode, gen_request, used.clone())?;
        let raw = wait(&slot).await?;
        let generate_ms = ms(started.elapsed());
        let cursor = Cursor::new(&request.text, request.offset);
        let text = shape::finish(mode, &raw, &cursor);
        if text.is_empty() {
            return Ok(None);
        }
        let first_token_ms = slot.first_token.get().map_or(generate_ms, |d| ms(*d));
        Ok(Some(Completion { text, mode, reuse: Reuse::Fresh, snippets: used, prompt_tokens, context_ms, prompt_ms, generate_ms, first_token_ms }))
    }

    /// A completion from a remembered slot, if the request continues one.
    async fn reuse(&self, repo: &str, path: &str, prefix: &str, suffix: &str, mode: Mode) -> Option<Completion> {
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
                }
            }
            if state.changed().await.is_err() {
                return None;
            }
        };
        let rest = raw.strip_prefix(typed)?;
        let text_now = format!("{prefix}{suffix}");
        let cursor = Cursor::new(&text_now, prefix.len());
        let (cut, _) = shape::cut(mode, rest, &cursor, Limits { max_lines: self.settings.max_lines });
        let text = shape::finish(mode, &cut, &cursor);
        Some(Completion {
            text,
            mode,
            reuse: if typed.is_empty() { Reuse::Cache } else { Reuse::TypedAhead },
            snippets: slot.snippets.clone(),
            prompt_tokens: 0,
            context_ms: 0.0,
            prompt_ms: 0.0,
            generate_ms: 0.0,
            first_token_ms: 0.0,
        })
    }

    /// Cancels the running generations of `path` (a newer, different request arrived).
    fn cancel_running(&self, repo: &str, path: &str) {
        let slots = self.slots.lock().expect("slots lock");
        for s in slots.iter().filter(|s| s.repo == repo && s.path == path) {
            if matches!(*s.state.borrow(), SlotState::Running(_)) {
                s.task.abort();
            }
        }
    }

    /// Starts a generation in a task of its own (it outlives a cancelled request, for reuse).
    fn start(&self, request: &Request, mode: Mode, gen_request: GenRequest, snippets: Vec<Snippet>) -> Result<Arc<Slot>, GenerateError> {
        let started = Instant::now();
        let mut generation = self.generator.generate(gen_request)?;
        let (tx, rx) = watch::channel(SlotState::Running(String::new()));
        let text = request.text.clone();
        let offset = request.offset;
        let limits = Limits { max_lines: self.settings.max_lines };
        let first_token = Arc::new(std::sync::OnceLock::new());
        let first = Arc::clone(&first_token);
        let task = tokio::spawn(async move {
            let cursor = Cursor::new(&text, offset);
            let mut raw = String::new();
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
                    Some(Event::Done(_)) => break Ok(shape::cut(mode, &raw, &cursor, limits).0),
                    Some(Event::Error(e)) => break Err(e),
                    None => break Err("the generation engine stopped".to_owned()),
                }
            };
            drop(generation);
            tx.send_replace(SlotState::Done(result));
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
            snippets,
        });
        let mut slots = self.slots.lock().expect("slots lock");
        slots.push(Arc::clone(&slot));
        if slots.len() > SLOTS {
            slots.remove(0);
        }
        Ok(slot)
    }
}

/// Waits for a slot's final text.
async fn wait(slot: &Slot) -> Result<String, GenerateError> {
    let mut state = slot.state.clone();
    loop {
        if let SlotState::Done(result) = &*state.borrow_and_update() {
            return result.clone().map_err(GenerateError::Failed);
        }
        if state.changed().await.is_err() {
            // The task was aborted (a newer request) or panicked.
            return match &*state.borrow() {
                SlotState::Done(result) => result.clone().map_err(GenerateError::Failed),
                SlotState::Running(_) => Err(GenerateError::Failed("cancelled by a newer request".into())),
            };
        }
    }
}

/// Definitions first, then open buffers, then search hits; overlaps removed.
async fn gather(request: &Request, retrieval: &Retrieval) -> Vec<Snippet> {
    let prefix = &request.text[..request.offset];
    let suffix = &request.text[request.offset..];
    let query_start = nth_line_from_end(prefix, QUERY_PREFIX_LINES);
    let query_end = suffix.match_indices('\n').nth(QUERY_SUFFIX_LINES - 1).map_or(suffix.len(), |(i, _)| i);
    let query = format!("{}{}", &prefix[query_start..], &suffix[..query_end]);
    let buffers = context::similar_windows(&query, &request.buffers, BUFFER_SNIPPETS);
    let (definitions, retrieved) = match &retrieval.store {
        Some(store) => {
            let identifiers = context::nearby_identifiers(&request.text, request.offset, DEFINITION_LOOKUPS);
            tokio::join!(
                context::definitions(store, &identifiers, &request.path, 1),
                context::retrieved(store, retrieval.embedder.clone(), &query, &request.path, RETRIEVED_SNIPPETS)
            )
        }
        None => (Vec::new(), Vec::new()),
    };
    // An open buffer is newer than the index: a hit in one shows the buffer's lines instead.
    let overlay = |mut s: Snippet| {
        if let Some(b) = request.buffers.iter().find(|b| b.path == s.path) {
            let lines: Vec<&str> = b.text.lines().skip(s.start_line as usize - 1).take((s.end_line - s.start_line + 1) as usize).collect();
            s.text = lines.join("\n") + "\n";
        }
        s
    };
    let mut all: Vec<Snippet> = definitions.into_iter().map(overlay).collect();
    all.extend(buffers);
    all.extend(retrieved.into_iter().map(overlay));
    context::dedupe(all)
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
