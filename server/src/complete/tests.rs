//! The completer's reuse and cancellation logic, with a scripted generator standing in for a model
//! (the real model is exercised by the end-to-end tests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::generate::{Finish, FinishReason, Generation, SpecialToken};

/// Streams a fixed answer one piece at a time, slowly, and counts its generations and cancels.
struct Scripted {
    pieces: Vec<&'static str>,
    delay: Duration,
    started: AtomicUsize,
    cancelled: Arc<AtomicUsize>,
    /// Whether it claims to honour token healing.
    heals: bool,
    /// The requests it was given.
    seen: std::sync::Mutex<Vec<GenRequest>>,
}

impl Scripted {
    fn new(pieces: Vec<&'static str>, delay_ms: u64) -> Arc<Self> {
        Arc::new(Self::unshared(pieces, delay_ms))
    }

    fn unshared(pieces: Vec<&'static str>, delay_ms: u64) -> Self {
        Self {
            pieces,
            delay: Duration::from_millis(delay_ms),
            started: AtomicUsize::new(0),
            cancelled: Arc::default(),
            heals: false,
            seen: std::sync::Mutex::default(),
        }
    }
}

impl Generator for Scripted {
    fn model_name(&self) -> &str {
        "scripted"
    }
    fn special(&self, _: SpecialToken) -> Option<String> {
        None
    }
    fn count_tokens(&self, text: &str) -> Result<usize, GenerateError> {
        Ok(text.len())
    }
    fn heals(&self) -> bool {
        self.heals
    }
    fn generate(&self, request: GenRequest) -> Result<Generation, GenerateError> {
        self.seen.lock().unwrap().push(request);
        self.started.fetch_add(1, Ordering::SeqCst);
        let (generation, sink) = Generation::channel();
        let pieces = self.pieces.clone();
        let delay = self.delay;
        let cancelled = Arc::clone(&self.cancelled);
        tokio::spawn(async move {
            for p in pieces {
                tokio::time::sleep(delay).await;
                if sink.is_cancelled() {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                sink.send(Event::Text(p.to_owned()));
            }
            sink.send(Event::Done(Finish {
                reason: FinishReason::EndOfText,
                prompt_tokens: 1,
                reused_prompt_tokens: 0,
                generated_tokens: 1,
                time_to_first_token: Duration::ZERO,
                total: Duration::ZERO,
            }));
        });
        Ok(generation)
    }
}

fn request(text: &str) -> Request {
    Request { repo: "r".into(), path: "a.rs".into(), language: Language::Rust, text: text.into(), offset: text.len(), buffers: Vec::new() }
}

fn completer(generator: Arc<Scripted>) -> Completer {
    Completer::new(generator, Family::QwenCoder, config::Completion::default())
}

#[tokio::test]
async fn the_same_request_twice_is_a_cache_hit() {
    let g = Scripted::new(vec!["a + ", "b;"], 1);
    let c = completer(Arc::clone(&g));
    let first = c.complete(request("let x = "), &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!((first.text.as_str(), first.reuse), ("a + b;", Reuse::Fresh));
    let again = c.complete(request("let x = "), &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!((again.text.as_str(), again.reuse), ("a + b;", Reuse::Cache));
    assert_eq!(g.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn typing_what_was_predicted_reuses_the_running_generation() {
    let g = Scripted::new(vec!["compute", "_total(", "items);"], 30);
    let c = Arc::new(completer(Arc::clone(&g)));
    let first = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.complete(request("let total = "), &Retrieval::default()).await })
    };
    // The user types the first predicted characters while the model is still generating.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let typed = c.complete(request("let total = comp"), &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!((typed.text.as_str(), typed.reuse), ("ute_total(items);", Reuse::TypedAhead));
    assert_eq!(first.await.unwrap().unwrap().unwrap().text, "compute_total(items);");
    assert_eq!(g.started.load(Ordering::SeqCst), 1, "one generation served both");
}

#[tokio::test]
async fn typing_something_else_cancels_the_running_generation() {
    let g = Scripted::new(vec!["compute", "_total(", "items);", " // more", " text"], 40);
    let c = Arc::new(completer(Arc::clone(&g)));
    let first = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.complete(request("let total = "), &Retrieval::default()).await })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    let other = c.complete(request("let total = sum"), &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!(other.reuse, Reuse::Fresh);
    assert_eq!(g.started.load(Ordering::SeqCst), 2);
    assert!(first.await.unwrap().is_err(), "the older request ends as cancelled");
    assert_eq!(g.cancelled.load(Ordering::SeqCst), 1, "the engine saw the cancel");
}

#[tokio::test]
async fn a_partial_word_at_the_cursor_is_healed_when_the_engine_can() {
    // The scripted engine stands for one that heals: it writes what follows the typed "comp".
    let g = Arc::new(Scripted { heals: true, ..Scripted::unshared(vec!["ute_total(", "items);"], 1) });
    let c = completer(Arc::clone(&g));
    let done = c.complete(request("let total = comp"), &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!(done.text, "ute_total(items);");
    {
        let seen = g.seen.lock().unwrap();
        assert_eq!(seen[0].heal, "comp");
        assert!(seen[0].prompt.contains("let total = <|fim_suffix|>"), "the prompt stops before the word: {}", seen[0].prompt);
    }
    // An engine that cannot heal gets the whole prefix.
    let plain = Scripted::new(vec!["ute_total(items);"], 1);
    completer(Arc::clone(&plain)).complete(request("let total = comp"), &Retrieval::default()).await.unwrap();
    let seen = plain.seen.lock().unwrap();
    assert_eq!(seen[0].heal, "");
    assert!(seen[0].prompt.contains("let total = comp<|fim_suffix|>"), "{}", seen[0].prompt);
}

#[tokio::test]
async fn mid_line_and_bad_offsets_give_nothing_or_an_error() {
    let g = Scripted::new(vec!["x"], 1);
    let c = completer(Arc::clone(&g));
    let mut r = request("let x = foo;");
    r.offset = 8;
    assert!(c.complete(r, &Retrieval::default()).await.unwrap().is_none());
    let mut r = request("é");
    r.offset = 1;
    assert!(c.complete(r, &Retrieval::default()).await.is_err());
    assert_eq!(g.started.load(Ordering::SeqCst), 0);
}
