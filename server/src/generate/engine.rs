//! A model served on a thread of its own, shared by the in-process engines (llama.cpp, MLX): the
//! thread loads the model, reports its special tokens (or why it could not load), then serves jobs
//! one at a time until the queue closes. Dropping the engine closes the queue and waits for the
//! thread, so the model is freed before the process can exit (llama.cpp can crash when torn down
//! from under its own threads).

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use super::{Ahead, GenerateError, Generation, Generator, GenerationRequest, Sink, SpecialToken, Warmed, Warming};

/// What an engine thread is asked to do.
pub(super) enum Job {
    Generate(GenerationRequest, Sink),
    /// Prefill only: the prompt's keys and values go into the cache, so that a request starting
    /// with it computes only the rest. Gives way to any generation that arrives meanwhile.
    Warm(String, tokio::sync::oneshot::Sender<Warmed>),
    CountTokens(String, Sender<usize>),
}

/// The engine thread's end of the queue. Generations go before a warm-up; of several warm-ups
/// queued, only the newest is done.
pub(super) struct Jobs {
    rx: Receiver<Job>,
    /// Generations sent and not yet received, and requests announced ([`Generator::request_ahead`]):
    /// a warm-up checks it between batches.
    waiting: Arc<AtomicUsize>,
    /// A warm-up put aside for a generation that arrived behind it.
    held: Cell<Option<Job>>,
}

impl Jobs {
    /// The next job; `None` when the engine is being dropped.
    pub(super) fn recv(&self) -> Option<Job> {
        let mut job = match self.held.take() {
            Some(job) => job,
            None => self.rx.recv().ok()?,
        };
        while matches!(job, Job::Warm(..)) {
            match self.rx.try_recv() {
                // The older warm-up's reply is dropped: its caller sees it was superseded.
                Ok(next @ Job::Warm(..)) => job = next,
                Ok(next) => {
                    self.held.set(Some(job));
                    job = next;
                }
                Err(_) => break,
            }
        }
        if matches!(job, Job::Generate(..)) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        Some(job)
    }

    /// Whether a generation is queued or a request announced (a warm-up in progress stops for it).
    pub(super) fn generation_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

/// How an engine thread reports that loading finished: the model's special tokens, or the reason
/// it failed.
pub(super) type Ready = Sender<Result<Vec<(SpecialToken, String)>, String>>;

pub struct EngineThread {
    name: String,
    specials: Vec<(SpecialToken, String)>,
    /// `None` only while dropping.
    jobs: Option<Sender<Job>>,
    /// Shared with [`Jobs::generation_waiting`].
    waiting: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl EngineThread {
    /// Starts `serve` on a thread named `thread_name` and waits until it has loaded the model at
    /// `path` (`serve` sends on `ready` once, then reads jobs until the receiver closes).
    pub(super) fn spawn(
        path: &Path,
        thread_name: &str,
        serve: impl FnOnce(&Ready, &Jobs) + Send + 'static,
    ) -> Result<Self, GenerateError> {
        let load_error = |reason: String| GenerateError::Load { path: path.to_owned(), reason };
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let queue = Jobs { rx: job_rx, waiting: Arc::clone(&waiting), held: Cell::new(None) };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || serve(&ready_tx, &queue))
            .map_err(|e| load_error(e.to_string()))?;
        let specials = ready_rx.recv().map_err(|_| load_error("the engine thread died while loading".into()))?.map_err(load_error)?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, specials, jobs: Some(jobs), waiting, thread: Some(thread) })
    }

    fn queue(&self) -> Result<&Sender<Job>, GenerateError> {
        self.jobs.as_ref().ok_or(GenerateError::EngineGone)
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Generator for EngineThread {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn special(&self, token: SpecialToken) -> Option<String> {
        self.specials.iter().find(|(t, _)| *t == token).map(|(_, s)| s.clone())
    }

    fn count_tokens(&self, text: &str) -> Result<usize, GenerateError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.queue()?.send(Job::CountTokens(text.to_owned(), tx)).map_err(|_| GenerateError::EngineGone)?;
        rx.recv().map_err(|_| GenerateError::EngineGone)
    }

    fn generate(&self, request: GenerationRequest) -> Result<Generation, GenerateError> {
        let (generation, sink) = Generation::channel();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if self.queue()?.send(Job::Generate(request, sink)).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(GenerateError::EngineGone);
        }
        Ok(generation)
    }

    fn request_ahead(&self) -> Ahead {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Arc::clone(&self.waiting);
        Ahead(Some(Box::new(move || {
            waiting.fetch_sub(1, Ordering::SeqCst);
        })))
    }

    fn warm(&self, prompt: String) -> Result<Warming, GenerateError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue()?.send(Job::Warm(prompt, tx)).map_err(|_| GenerateError::EngineGone)?;
        Ok(Warming(Some(rx)))
    }
}

/// Implements [`Generator`] for a newtype over [`EngineThread`] by delegation.
macro_rules! delegate_generator {
    ($engine:ty) => {
        delegate_generator!($engine, false, false, 1);
    };
    ($engine:ty, $heals:expr, $avoids:expr, $slots:expr) => {
        impl $crate::generate::Generator for $engine {
            fn heals(&self) -> bool {
                $heals
            }
            fn avoids(&self) -> bool {
                $avoids
            }
            fn cache_slots(&self) -> usize {
                $slots
            }
            fn model_name(&self) -> &str {
                self.0.model_name()
            }
            fn special(&self, token: $crate::generate::SpecialToken) -> Option<String> {
                self.0.special(token)
            }
            fn count_tokens(&self, text: &str) -> Result<usize, $crate::generate::GenerateError> {
                self.0.count_tokens(text)
            }
            fn generate(&self, request: $crate::generate::GenerationRequest) -> Result<$crate::generate::Generation, $crate::generate::GenerateError> {
                self.0.generate(request)
            }
            fn warm(&self, prompt: String) -> Result<$crate::generate::Warming, $crate::generate::GenerateError> {
                self.0.warm(prompt)
            }
            fn request_ahead(&self) -> $crate::generate::Ahead {
                self.0.request_ahead()
            }
        }
    };
}
pub(super) use delegate_generator;
