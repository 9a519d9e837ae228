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
    /// Whether it claims to honour `avoid`, and what it writes when told to.
    avoids: bool,
    otherwise: Vec<&'static str>,
    /// The requests it was given.
    seen: std::sync::Mutex<Vec<GenerationRequest>>,
    /// Prompts the cache keeps (`Generator::cache_slots`); 0: it does not warm at all.
    slots: usize,
    /// Whether a warm-up reports it got the whole prompt in.
    warm_completes: std::sync::atomic::AtomicBool,
    /// The warm-up prompts it was given.
    warmed: std::sync::Mutex<Vec<String>>,
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
            avoids: false,
            otherwise: Vec::new(),
            seen: std::sync::Mutex::default(),
            slots: 0,
            warm_completes: std::sync::atomic::AtomicBool::new(true),
            warmed: std::sync::Mutex::default(),
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
    fn avoids(&self) -> bool {
        self.avoids
    }
    fn cache_slots(&self) -> usize {
        self.slots.max(1)
    }
    fn warm(&self, prompt: String) -> Result<crate::generate::Warming, GenerateError> {
        if self.slots == 0 {
            return Ok(crate::generate::Warming(None));
        }
        self.warmed.lock().unwrap().push(prompt);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let complete = self.warm_completes.load(Ordering::SeqCst);
        let _ = tx.send(crate::generate::Warmed { cached: 100, computed: 40, complete });
        Ok(crate::generate::Warming(Some(rx)))
    }
    fn generate(&self, request: GenerationRequest) -> Result<Generation, GenerateError> {
        let pieces = if request.avoid.is_empty() { self.pieces.clone() } else { self.otherwise.clone() };
        self.seen.lock().unwrap().push(request);
        self.started.fetch_add(1, Ordering::SeqCst);
        let (generation, sink) = Generation::channel();
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
                logprobs: Vec::new(),
            }));
        });
        Ok(generation)
    }
}

fn request(text: &str) -> CompletionRequest {
    CompletionRequest { repo: "r".into(), path: "a.rs".into(), language: Language::Rust, text: text.into(), offset: text.len(), buffers: Vec::new() }
}

/// A completer that does not speculate (these tests count generations; speculation has its own).
fn completer(generator: Arc<Scripted>) -> Completer {
    Completer::new(generator, Family::QwenCoder, config::CompletionSettings { speculate: false, ..config::CompletionSettings::default() })
}

fn speculating(generator: Arc<Scripted>) -> Completer {
    Completer::new(generator, Family::QwenCoder, config::CompletionSettings::default())
}

/// Waits until `g` has started `n` generations (a speculation starts in the background).
async fn until_started(g: &Scripted, n: usize) {
    for _ in 0..200 {
        if g.started.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} generations started, waited for {n}", g.started.load(Ordering::SeqCst));
}

#[tokio::test]
async fn after_a_suggestion_the_next_line_is_computed_and_answers_the_user_pressing_enter() {
    let g = Scripted::new(vec!["compute_total(items);"], 1);
    let c = speculating(Arc::clone(&g));
    let head = "fn main() {\n    let total = ";
    let tail = "\n}\n";
    let mut r = request(&format!("{head}{tail}"));
    r.offset = head.len();
    let shown = c.complete(r, &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!(shown.text, "compute_total(items);");
    until_started(&g, 2).await;
    {
        let seen = g.seen.lock().unwrap();
        let spec = &seen[1].prompt;
        assert!(spec.contains("let total = compute_total(items);\n    <|fim_suffix|>"), "{spec}");
    }
    // The user accepts and presses Enter: the request at the new line's indentation is answered
    // from the speculation, and so is one typing on into what it predicted.
    let accepted = format!("{head}compute_total(items);\n    ");
    let mut r = request(&format!("{accepted}{tail}"));
    r.offset = accepted.len();
    let next = c.complete(r, &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!(next.reuse, Reuse::Cache);
    // That suggestion was shown too: the line after it is computed next.
    until_started(&g, 3).await;
    let mut r = request(&format!("{accepted}comp{tail}"));
    r.offset = accepted.len() + 4;
    let typed = c.complete(r, &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!((typed.text.as_str(), typed.reuse), ("ute_total(items);", Reuse::TypedAhead));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(g.started.load(Ordering::SeqCst), 3, "one generation per line shown, none for typing on");
    assert!(g.seen.lock().unwrap().iter().all(|r| !r.logprobs), "an editor's generations, speculations too, record no log-probabilities");
    assert!(shown.logprobs.is_none() && next.logprobs.is_none());
}

#[tokio::test]
async fn any_fresh_request_cancels_a_speculation_and_off_means_off() {
    // Slow enough that the speculation is still running when the next request comes.
    let g = Scripted::new(vec!["a", "b", "c", "d", "e", "f", "g", "h;"], 40);
    let c = speculating(Arc::clone(&g));
    c.complete(request("    let x = "), &Retrieval::default()).await.unwrap().unwrap();
    until_started(&g, 2).await;
    // A request elsewhere (another file): the engine is needed there, the speculation stops.
    let elsewhere = CompletionRequest { path: "b.rs".into(), ..request("    let y = ") };
    let other = c.complete(elsewhere, &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!(other.reuse, Reuse::Fresh);
    assert!(g.cancelled.load(Ordering::SeqCst) >= 1, "the speculation was stopped");
    {
        let seen = g.seen.lock().unwrap();
        assert!(seen[1].prompt.contains("let x = abcdefgh;\n    <|fim_suffix|>"), "{}", seen[1].prompt);
        assert_eq!(seen[1].max_tokens, config::CompletionSettings::default().max_tokens, "a speculation is one line");
    }

    let g = Scripted::new(vec!["a;"], 1);
    let c = completer(Arc::clone(&g));
    c.complete(request("    let x = "), &Retrieval::default()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(g.started.load(Ordering::SeqCst), 1, "completion.speculate = false");
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
async fn a_line_completed_as_the_one_after_it_is_asked_again_starting_otherwise() {
    // A field being inserted between two others: the likeliest start is the next field, which the
    // suffix has (nothing to show); the engine is asked once more to start otherwise.
    let text = "struct S {\n    a: u8,\n    \n    c: u8,\n    d: u8,\n}\n";
    let at = |text: &str| CompletionRequest { offset: text.find("    \n").unwrap() + 4, ..request(text) };
    let first = vec!["c: u8,\n", "    d: u8,\n", "}"];
    let g = Arc::new(Scripted { avoids: true, otherwise: vec!["b: u8,\n", "    d: u8,\n", "}"], ..Scripted::unshared(first.clone(), 1) });
    let c = completer(Arc::clone(&g));
    let done = c.complete(at(text), &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!(done.text, "b: u8,", "up to where it copies `d: u8,`");
    {
        let seen = g.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].avoid.as_str(), seen[1].avoid.as_str()), ("", "c: u8,"));
        assert_eq!(seen[0].prompt, seen[1].prompt, "the same prompt, in the engine's cache");
    }
    // Asked again at the same place: the second start is reused, and shows the same.
    let again = c.complete(at(text), &Retrieval::default()).await.unwrap().unwrap();
    assert_eq!((again.text.as_str(), again.reuse), ("b: u8,", Reuse::Cache));
    assert_eq!(g.started.load(Ordering::SeqCst), 2);

    // A second start that copies a line that follows from its first line: nothing.
    let copies = Arc::new(Scripted { avoids: true, otherwise: vec!["d: u8,\n"], ..Scripted::unshared(first.clone(), 1) });
    assert!(completer(Arc::clone(&copies)).complete(at(text), &Retrieval::default()).await.unwrap().is_none());
    assert_eq!(copies.started.load(Ordering::SeqCst), 2);
    // An engine that cannot be told: nothing, after one generation.
    let plain = Arc::new(Scripted { otherwise: vec!["b: u8,"], ..Scripted::unshared(first, 1) });
    assert!(completer(Arc::clone(&plain)).complete(at(text), &Retrieval::default()).await.unwrap().is_none());
    assert_eq!(plain.started.load(Ordering::SeqCst), 1);
    // Something shown the first time: no second generation.
    let fine = Arc::new(Scripted { avoids: true, otherwise: vec!["x"], ..Scripted::unshared(vec!["b: u8,"], 1) });
    assert_eq!(completer(Arc::clone(&fine)).complete(at(text), &Retrieval::default()).await.unwrap().unwrap().text, "b: u8,");
    assert_eq!(fine.started.load(Ordering::SeqCst), 1);
    // Text after the cursor on its line (here the closer the model wrote too): not a line being
    // inserted, no second generation.
    let closing = Arc::new(Scripted { avoids: true, otherwise: vec!["x"], ..Scripted::unshared(vec![")"], 1) });
    let text = "fn f() {\n    g()\n}\n";
    let before_closer = CompletionRequest { offset: text.find("g()").unwrap() + 2, ..request(text) };
    assert!(completer(Arc::clone(&closing)).complete(before_closer, &Retrieval::default()).await.unwrap().is_none());
    assert_eq!(closing.started.load(Ordering::SeqCst), 1);
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

/// A request in `src/cart.rs` with an open buffer whose code the cursor's code uses.
fn request_with_buffer(text: &str) -> CompletionRequest {
    let buffer = Buffer {
        path: "src/price.rs".into(),
        text: "pub fn discounted_price(item: &Item, coupon: &Coupon) -> u64 {\n    item.cents - coupon.cents\n}\n".into(),
    };
    CompletionRequest { path: "src/cart.rs".into(), buffers: vec![buffer], ..request(text) }
}

/// The part of a Qwen prompt before the current file.
fn context_part(prompt: &str) -> &str {
    &prompt[..prompt.find("<|file_sep|>src/cart.rs").unwrap_or(0)]
}

#[tokio::test]
async fn the_ring_order_survives_keystrokes() {
    let g = Scripted::new(vec!["x"], 1);
    let c = completer(Arc::clone(&g));
    let start = "fn total(item: &Item, coupon: &Coupon) -> u64 {\n    let price = ";
    c.prepare(&request_with_buffer(start), &Retrieval::default()).await;
    assert_eq!(c.ring_snippets().len(), 1, "the open buffer's window joined the ring");
    for typed in ["d", "disc", "discounted_price(", "discounted_price(item, "] {
        c.complete(request_with_buffer(&format!("{start}{typed}")), &Retrieval::default()).await.unwrap();
    }
    let seen = g.seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    let first = context_part(&seen[0].prompt);
    assert!(first.contains("<|file_sep|>src/price.rs\npub fn discounted_price"), "{}", seen[0].prompt);
    for r in seen.iter() {
        assert_eq!(context_part(&r.prompt), first, "every keystroke's prompt starts with the same context");
    }
}

/// `completion.line_start_context = false`: a request with only indentation before the cursor is
/// completed from the local text alone (the prompt a completer without context builds); one
/// further on the line keeps the ring, which the line-start request left as it was.
#[tokio::test]
async fn without_line_start_context_a_line_start_gets_the_local_prompt_and_the_ring_stays() {
    let g = Scripted::new(vec!["x"], 1);
    let settings = config::CompletionSettings { speculate: false, line_start_context: false, ..config::CompletionSettings::default() };
    let c = Completer::new(Arc::clone(&g) as Arc<dyn Generator>, Family::QwenCoder, settings.clone());
    let bare = Completer::new(Arc::clone(&g) as Arc<dyn Generator>, Family::QwenCoder, settings);
    let start = "fn total(item: &Item, coupon: &Coupon) -> u64 {\n";
    c.prepare(&request_with_buffer(&format!("{start}    let price = ")), &Retrieval::default()).await;
    assert_eq!(c.ring_snippets().len(), 1, "the open buffer's window joined the ring");
    for text in [format!("{start}    "), format!("{start}\t"), format!("{start}    let price = ")] {
        c.complete(request_with_buffer(&text), &Retrieval::default()).await.unwrap();
    }
    // The same line start, with no context to be had.
    bare.complete(CompletionRequest { path: "src/cart.rs".into(), ..request(&format!("{start}    ")) }, &Retrieval::default()).await.unwrap();
    let seen = g.seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for r in &seen[..2] {
        assert!(!r.prompt.contains("discounted_price"), "a line start carries no context: {}", r.prompt);
    }
    assert_eq!(seen[0].prompt, seen[3].prompt, "the prompt of a completer without context");
    assert!(context_part(&seen[2].prompt).contains("pub fn discounted_price"), "further on the line the ring is back: {}", seen[2].prompt);
    assert_eq!(c.ring_snippets().len(), 1);
}

#[tokio::test]
async fn the_first_request_at_a_new_place_carries_its_context_and_later_ones_keep_it() {
    let g = Scripted::new(vec!["x"], 1);
    let c = completer(Arc::clone(&g));
    let start = "fn total(item: &Item, coupon: &Coupon) -> u64 {\n    let price = ";
    c.complete(request_with_buffer(&format!("{start}d")), &Retrieval::default()).await.unwrap();
    c.complete(request_with_buffer(&format!("{start}di")), &Retrieval::default()).await.unwrap();
    // Far below (another place in the file): gathered again, appended after what was there.
    let far: String = (0..40).map(|i| format!("    let filler_{i} = {i};\n")).collect();
    let other = Buffer { path: "src/tax.rs".into(), text: "pub fn filler_tax(filler_39: u64, filler_38: u64) -> u64 {\n    filler_39 / 5 + filler_38\n}\n".into() };
    let mut r = request_with_buffer(&format!("{start}discounted_price(item, coupon);\n{far}    let tax = filler_tax(fil"));
    r.buffers.push(other);
    c.complete(r, &Retrieval::default()).await.unwrap();
    let seen = g.seen.lock().unwrap();
    assert!(context_part(&seen[0].prompt).contains("<|file_sep|>src/price.rs"), "{}", seen[0].prompt);
    assert_eq!(context_part(&seen[0].prompt), context_part(&seen[1].prompt), "the same place keeps its context");
    let third = context_part(&seen[2].prompt);
    assert!(third.starts_with(context_part(&seen[0].prompt)), "appended, not reordered: {third}");
    assert!(third.contains("src/tax.rs"), "{third}");
}

#[tokio::test]
async fn an_edit_at_a_new_place_warms_the_prompt_its_first_request_begins_with() {
    let mut g = Scripted::unshared(vec!["x"], 1);
    g.slots = 2;
    let g = Arc::new(g);
    let settings = config::CompletionSettings { speculate: false, prepare_on_edit: true, ..config::CompletionSettings::default() };
    let c = Completer::new(Arc::clone(&g) as Arc<dyn Generator>, Family::QwenCoder, settings);
    let start = "fn total(item: &Item, coupon: &Coupon) -> u64 {\n    let price = ";
    c.edited(request_with_buffer(&format!("{start}d")), &Retrieval::default()).await;
    let warmed = g.warmed.lock().unwrap().clone();
    assert_eq!(warmed.len(), 1, "the first edit at a new place warms");
    assert!(warmed[0].contains("<|file_sep|>src/price.rs\npub fn discounted_price"), "with the context gathered there: {}", warmed[0]);
    // Typing on at that place warms nothing more.
    c.edited(request_with_buffer(&format!("{start}di")), &Retrieval::default()).await;
    assert_eq!(g.warmed.lock().unwrap().len(), 1);
    // The request that follows carries the same context and extends what was warmed up to the edit.
    c.complete(request_with_buffer(&format!("{start}dis")), &Retrieval::default()).await.unwrap();
    let prompt = g.seen.lock().unwrap()[0].prompt.clone();
    assert_eq!(context_part(&prompt), context_part(&warmed[0]));
    let shared = prompt.bytes().zip(warmed[0].bytes()).take_while(|(a, b)| a == b).count();
    assert!(shared >= warmed[0].find("let price = ").unwrap(), "the warm-up is the request's prompt up to the typing: {shared} bytes shared");
    // An edit far away is a new place again.
    let far: String = (0..40).map(|i| format!("    let filler_{i} = {i};\n")).collect();
    c.edited(request_with_buffer(&format!("{start}dis;\n{far}    let t")), &Retrieval::default()).await;
    assert_eq!(g.warmed.lock().unwrap().len(), 2);
    assert!(c.is_new_place("src/other.rs", 0) && !c.is_new_place("src/cart.rs", 42));
}

#[tokio::test]
async fn hostile_documents_get_a_bounded_prompt_or_nothing() {
    let g = Scripted::new(vec!["x"], 1);
    let c = completer(Arc::clone(&g));
    let budget = config::CompletionSettings::default().prompt_tokens;
    // A huge file and a 10,000-character line: the prompt stays within its budget.
    let huge: String = (0..50_000).map(|i| format!("let v{i} = {i};\n")).collect();
    let long_line = format!("let s = \"{}\";\nlet t = ", "y".repeat(10_000));
    for text in [huge, long_line] {
        let before = g.seen.lock().unwrap().len();
        c.complete(request(&text), &Retrieval::default()).await.unwrap();
        let seen = g.seen.lock().unwrap();
        assert_eq!(seen.len(), before + 1);
        let tokens = prompt::estimate_tokens(&seen[before].prompt);
        assert!(tokens <= budget, "{tokens} estimated tokens");
    }
    // Offset 0 of an empty document, and past the end of one.
    assert!(c.complete(request(""), &Retrieval::default()).await.is_ok());
    let mut r = request("fn main() {}\n");
    r.offset = 10_000;
    assert!(c.complete(r, &Retrieval::default()).await.is_err());
}

#[tokio::test]
async fn a_new_place_starts_with_a_short_prompt_and_gets_the_full_one_after_a_pause() {
    let g = Scripted::new(vec!["x"], 1);
    let c = completer(Arc::clone(&g));
    let text: String = (0..200).map(|i| format!("let value_{i} = {i};\n")).collect();
    c.complete(request(&format!("{text}let a = ")), &Retrieval::default()).await.unwrap();
    c.complete(request(&format!("{text}let a = 1 + ")), &Retrieval::default()).await.unwrap();
    tokio::time::sleep(IDLE + Duration::from_millis(300)).await;
    c.complete(request(&format!("{text}let a = 1 + 2 * ")), &Retrieval::default()).await.unwrap();
    let seen = g.seen.lock().unwrap();
    let lens: Vec<usize> = seen.iter().map(|r| r.prompt.len()).collect();
    assert!(lens[0] < 1_000 && lens[1] < 1_000, "first requests are short: {lens:?}");
    assert!(lens[2] > 2 * lens[1], "after a pause the full prompt: {lens:?}");
}

#[tokio::test]
async fn a_warm_up_cut_short_leaves_the_short_prompt_and_the_ring_alone_until_one_completes() {
    // An engine with two cache slots whose first warm-up is stopped by a keystroke.
    let mut g = Scripted::unshared(vec!["x"], 1);
    g.slots = 2;
    g.warm_completes = std::sync::atomic::AtomicBool::new(false);
    let g = Arc::new(g);
    let c = completer(Arc::clone(&g));
    let text: String = (0..200).map(|i| format!("let value_{i} = {i};\n")).collect();
    c.complete(request(&format!("{text}let a = ")), &Retrieval::default()).await.unwrap();
    tokio::time::sleep(IDLE + Duration::from_millis(300)).await;
    c.complete(request(&format!("{text}let a = 1 + ")), &Retrieval::default()).await.unwrap();
    assert_eq!(g.warmed.lock().unwrap().len(), 1, "the pause warmed the full prompt");
    // The next pause warms again; this time it completes, and the place moves to the full prompt.
    g.warm_completes.store(true, Ordering::SeqCst);
    tokio::time::sleep(IDLE + Duration::from_millis(300)).await;
    c.complete(request(&format!("{text}let a = 1 + 2 * ")), &Retrieval::default()).await.unwrap();
    let seen = g.seen.lock().unwrap();
    let lens: Vec<usize> = seen.iter().map(|r| r.prompt.len()).collect();
    assert!(lens[1] < 1_000, "after a warm-up cut short, still the short prompt: {lens:?}");
    assert_eq!(g.warmed.lock().unwrap().len(), 2, "warmed again at the next pause");
    assert!(lens[2] > 2 * lens[1], "after a complete warm-up, the full prompt: {lens:?}");
    assert!(g.warmed.lock().unwrap()[1].len() > 2 * lens[1], "what was warmed is the full prompt");
}

#[test]
fn the_local_region_of_a_big_file_gives_the_prompt_of_the_whole_file() {
    // 20,000 lines: the prefix window cut from the region is the one cut from the whole prefix,
    // anchored at the same line, for any budget that fits the region.
    let text: String = (0..20_000).map(|i| format!("    let value_{i} = compute({i});\n")).collect();
    for (cut_line, tokens) in [(12_345, 768), (19_999, 192), (40, 768), (17, 4_000)] {
        let offset = text.match_indices('\n').nth(cut_line).unwrap().0 + 1;
        let prefix = &text[..offset];
        let region = prefix_region(prefix, (tokens as f64 * prompt::BYTES_PER_TOKEN) as usize * 2 + LOCAL_MARGIN_BYTES);
        assert!(prefix.ends_with(region));
        assert_eq!(prompt::anchored_tail(region, tokens), prompt::anchored_tail(prefix, tokens), "line {cut_line}, {tokens} tokens");
        let suffix = &text[offset..];
        let head = suffix_region(suffix, 80 * 7 + LOCAL_MARGIN_BYTES);
        assert!(suffix.starts_with(head) && (head.ends_with('\n') || head.len() == suffix.len()));
        assert_eq!(prompt::head_lines(head, 80), prompt::head_lines(suffix, 80));
    }
}

#[tokio::test]
async fn context_repeating_the_code_at_the_cursor_is_left_out_when_asked() {
    // An open buffer holding a near-copy of the lines being written, beside a useful definition.
    let copy = Buffer {
        path: "src/other_cart.rs".into(),
        text: "fn total(order: &Order, coupon: &Coupon) -> u64 {\n    let sum = order.items.iter().map(|item| item.cents).sum();\n    sum - coupon.cents\n}\n".into(),
    };
    let text = "fn total(cart: &Cart, coupon: &Coupon) -> u64 {\n    let sum = cart.items.iter().map(|item| item.cents).sum();\n    ";
    let request = CompletionRequest { path: "src/cart.rs".into(), buffers: vec![copy], ..request(text) };
    for (drop_local_repeats, kept) in [(false, 1), (true, 0)] {
        let settings = config::CompletionSettings { drop_local_repeats, ..config::CompletionSettings::default() };
        let c = Completer::new(Scripted::new(vec!["x"], 1), Family::QwenCoder, settings);
        c.prepare(&request, &Retrieval::default()).await;
        assert_eq!(c.ring_snippets().len(), kept, "drop_local_repeats = {drop_local_repeats}");
    }
}

/// A real (keyword-only) index of `files` in a temp dir.
async fn indexed(files: &[(&str, &str)]) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "test-model", 4).await.unwrap();
    for (path, text) in files {
        let chunks = crate::chunk::chunk_file(path, Language::from_path(path), text);
        let file = crate::store::StoredFile { path: (*path).into(), hash: (*path).into(), size: 1, mtime_ns: 1, chunks: chunks.len() as u32 };
        store.replace_files(&[file], &chunks).await.unwrap();
    }
    assert!(store.ensure_text_index().await.unwrap());
    (dir, Arc::new(store))
}

#[tokio::test]
async fn imported_definitions_reach_the_ring_as_signatures_only_when_asked() {
    let body: String = (0..30).map(|i| format!("    let step_{i} = total_cents * {i};\n")).collect();
    let price = format!(
        "/// Applies the loyalty discount.\npub fn apply_loyalty_discount_cents(total_cents: u64, percent: u8) -> u64 {{\n{body}    total_cents\n}}\n"
    );
    let (_dir, store) = indexed(&[("src/price.rs", &price), ("src/cart.rs", "pub struct Cart {\n    pub cents: u64,\n}\n")]).await;
    let retrieval = Retrieval { store: Some(store), embedder: None };
    // The imports are further up than the identifiers looked up as definitions.
    let notes = "// (a note)\n".repeat(14);
    let text = format!("use crate::price::apply_loyalty_discount_cents;\nuse crate::cart::Cart;\n{notes}\npub fn checkout(cart: &Cart, percent: u8) -> u64 {{\n    ");
    let request = CompletionRequest { path: "src/checkout.rs".into(), ..request(&text) };
    let settings = |imports| config::CompletionSettings { imports, similar_code: false, ..config::CompletionSettings::default() };

    let c = Completer::new(Scripted::new(vec!["x"], 1), Family::QwenCoder, settings(true));
    c.prepare(&request, &retrieval).await;
    let ring = c.ring_snippets();
    let signature = ring.iter().find(|s| s.path == "src/price.rs").expect("the imported function's signature");
    assert_eq!(signature.source, prompt::Source::Signature);
    assert_eq!(signature.text, "pub fn apply_loyalty_discount_cents(total_cents: u64, percent: u8) -> u64 {\n    // …\n}\n");
    // `Cart` is used in the file already: its definition comes as a nearby identifier's, whole.
    assert!(ring.iter().any(|s| s.path == "src/cart.rs" && s.text.contains("pub cents: u64")), "{ring:?}");

    let c = Completer::new(Scripted::new(vec!["x"], 1), Family::QwenCoder, settings(false));
    c.prepare(&request, &retrieval).await;
    assert!(c.ring_snippets().iter().all(|s| s.path != "src/price.rs"), "{:?}", c.ring_snippets());
}

/// `completion.similar_prose = false`: similar code comes from source files only, not from the
/// docs that mention the same words.
#[tokio::test]
async fn similar_prose_is_left_out_of_the_similar_code_when_asked() {
    let guide = "# Shipping\n\nThe shipping fee is added to the cart total at checkout: `add_shipping_fee(cart, fee_cents)`.\nFree shipping above the threshold.\n";
    let code = "pub fn add_shipping_fee(cart: &mut Cart, fee_cents: u64) {\n    if cart.total_cents < FREE_SHIPPING_THRESHOLD {\n        cart.total_cents += fee_cents;\n    }\n}\n";
    let (_dir, store) = indexed(&[("docs/shipping.md", guide), ("src/shipping.rs", code)]).await;
    let retrieval = Retrieval { store: Some(store), embedder: None };
    let text = "pub fn checkout(cart: &mut Cart, fee_cents: u64) {\n    // shipping fee added to the cart total at checkout\n    ";
    let request = CompletionRequest { path: "src/checkout.rs".into(), ..request(text) };
    let mut rings = Vec::new();
    for prose in [true, false] {
        let settings = config::CompletionSettings { similar_prose: prose, ..config::CompletionSettings::default() };
        let c = Completer::new(Scripted::new(vec!["x"], 1), Family::QwenCoder, settings);
        c.prepare(&request, &retrieval).await;
        rings.push(c.ring_snippets().into_iter().map(|s| s.path).collect::<Vec<_>>());
    }
    let (with, without) = (&rings[0], &rings[1]);
    assert!(with.iter().any(|p| p == "docs/shipping.md") && with.iter().any(|p| p == "src/shipping.rs"), "{with:?}");
    assert!(without.iter().all(|p| p != "docs/shipping.md") && without.iter().any(|p| p == "src/shipping.rs"), "{without:?}");
}

/// What `kenning eval --context-only` and the training data's context read ([`context_for`]) is what
/// an editor's completion carries: the ring [`Completer::prepare`] fills, in its order, and the
/// prompt's context part is those snippets. Near a file's start and deep in one (the room differs),
/// at two prompt sizes, one too small for all of it.
#[tokio::test]
async fn context_for_is_what_a_prepared_completion_carries() {
    let helper = |i: usize| format!("/// Helper {i}.\npub fn helper_{i}(x: u64) -> u64 {{\n{}    x + {i}\n}}\n", "    let _pad = x * 3; // padding to make the body longer\n".repeat(8));
    let mut buffers: Vec<Buffer> = (0..8).map(|i| Buffer { path: format!("src/h{i}.rs"), text: helper(i) }).collect();
    buffers.push(Buffer { path: "src/price.rs".into(), text: "pub fn discounted_price(item: &Item, coupon: &Coupon) -> u64 {\n    item.cents - coupon.cents\n}\n".into() });
    let calls: String = (0..8).map(|i| format!("    let v{i} = helper_{i}(total);\n")).collect();
    let near_start = format!("fn total(item: &Item, coupon: &Coupon) -> u64 {{\n{calls}    let price = ");
    let filler: String = (0..300).map(|i| format!("// line {i} of a long file\n")).collect();
    let deep = format!("{filler}{near_start}");
    let mut counts = Vec::new();
    for prompt_tokens in [384, 2048] {
        let settings = config::CompletionSettings { speculate: false, prompt_tokens, ..config::CompletionSettings::default() };
        for text in [&near_start, &deep] {
            let request = CompletionRequest { path: "src/cart.rs".into(), buffers: buffers.clone(), ..request(text) };
            let chosen = context_for(&request, &Retrieval::default(), &settings).await;
            assert!(!chosen.is_empty(), "the open buffers' code is chosen");
            counts.push(chosen.len());

            let g = Scripted::new(vec!["x"], 1);
            let c = Completer::new(Arc::clone(&g) as Arc<dyn Generator>, Family::QwenCoder, settings.clone());
            c.prepare(&request, &Retrieval::default()).await;
            assert_eq!(c.ring_snippets(), chosen, "the ring a completion reads holds what context_for chose ({prompt_tokens} tokens)");
            c.complete(request, &Retrieval::default()).await.unwrap();
            let prompt = g.seen.lock().unwrap()[0].prompt.clone();
            let written: String = chosen.iter().map(|s| format!("<|file_sep|>{}\n{}\n", s.path, s.text.trim_end_matches('\n'))).collect();
            assert_eq!(context_part(&prompt), format!("<|repo_name|>r\n{written}"), "the prompt carries them, in that order");
        }
    }
    assert!(counts[1] < counts[3], "deep in a file, a small prompt's room keeps fewer snippets: {counts:?}");
}

/// `completion.draft_query`: context gathered around a draft finds the definition of what the
/// draft calls, which nothing before the cursor names; the draft itself is not in the request the
/// prompt is built from.
#[tokio::test]
async fn context_gathered_around_a_draft_holds_what_the_draft_calls() {
    let price = "/// Applies the loyalty discount.\npub fn apply_loyalty_discount_cents(total_cents: u64, percent: u8) -> u64 {\n    total_cents - total_cents * percent as u64 / 100\n}\n";
    let (_dir, store) = indexed(&[("src/price.rs", price), ("src/cart.rs", "pub struct Cart {\n    pub cents: u64,\n}\n")]).await;
    let retrieval = Retrieval { store: Some(store), embedder: None };
    let text = "pub fn checkout(basket: u64, share: u8) -> u64 {\n    let reduced = ";
    let request = CompletionRequest { path: "src/checkout.rs".into(), ..request(text) };
    let settings = config::CompletionSettings { similar_code: false, speculate: false, ..config::CompletionSettings::default() };

    let plain = Completer::new(Scripted::new(vec!["x"], 1), Family::QwenCoder, settings.clone());
    plain.prepare(&request, &retrieval).await;
    assert!(plain.ring_snippets().iter().all(|s| s.path != "src/price.rs"), "{:?}", plain.ring_snippets());

    let draft = drafted(&request, "apply_loyalty_discount_cents(basket, share);");
    assert_eq!(draft.text, format!("{text}apply_loyalty_discount_cents(basket, share);"));
    assert_eq!(&draft.text[..draft.offset], draft.text, "the cursor is after the draft");
    let g = Scripted::new(vec!["x"], 1);
    let around = Completer::new(Arc::clone(&g) as Arc<dyn Generator>, Family::QwenCoder, settings);
    around.prepare_around(&request, &draft, &retrieval).await;
    assert!(around.ring_snippets().iter().any(|s| s.path == "src/price.rs" && s.text.contains("pub fn apply_loyalty_discount_cents")), "{:?}", around.ring_snippets());
    around.complete(request, &retrieval).await.unwrap();
    let prompt = g.seen.lock().unwrap()[0].prompt.clone();
    assert!(prompt.contains("let reduced = ") && !prompt.contains("(basket, share);"), "the prompt is the request's, not the draft's: {prompt}");
}

/// `kenning eval` with `completion.draft_query`: each task is completed twice, first with no
/// context at all (the draft), then with the context gathered around the draft; off, once.
#[tokio::test]
async fn eval_with_a_draft_completes_without_context_then_with_what_the_draft_called() {
    let price = "/// Applies the loyalty discount.\npub fn apply_loyalty_discount_cents(total_cents: u64, percent: u8) -> u64 {\n    total_cents - total_cents * percent as u64 / 100\n}\n";
    let (_dir, store) = indexed(&[("src/price.rs", price), ("src/cart.rs", "pub struct Cart {\n    pub cents: u64,\n}\n")]).await;
    let retrieval = Retrieval { store: Some(store), embedder: None };
    let task = crate::dataset::EvalTask {
        id: "src/checkout.rs:2".into(),
        path: "src/checkout.rs".into(),
        prefix: "pub fn checkout(basket: u64, share: u8) -> u64 {\n    let reduced = ".into(),
        suffix: "\n    reduced\n}\n".into(),
        expected: "apply_loyalty_discount_cents(basket, share);".into(),
        kind: String::new(),
    };
    for draft_query in [false, true] {
        let g = Scripted::new(vec!["apply_loyalty_discount_cents(basket, share);"], 1);
        let settings = config::CompletionSettings { similar_code: false, draft_query, ..config::CompletionSettings::default() };
        let setup = crate::eval::Setup { generator: Arc::clone(&g) as Arc<dyn Generator>, family: Family::QwenCoder, settings: &settings, retrieval: &retrieval, repo: "r", typed_before: 0 };
        let (figures, _) = crate::eval::run(crate::eval::Condition::Rag, &setup, std::slice::from_ref(&task), |_, _, _| {}).await.unwrap();
        assert_eq!(figures.exact_match, 1.0);
        let prompts: Vec<String> = g.seen.lock().unwrap().iter().map(|r| r.prompt.clone()).collect();
        let asked: Vec<bool> = g.seen.lock().unwrap().iter().map(|r| r.logprobs).collect();
        assert_eq!(asked.last(), Some(&true), "the task's generation records its log-probabilities");
        let holds_definition = |p: &String| p.contains("<|file_sep|>src/price.rs");
        if draft_query {
            assert_eq!(asked[0], false, "the draft's does not");
            assert_eq!(prompts.len(), 2, "a draft, then the task");
            assert!(!prompts[0].contains("<|file_sep|>src/"), "the draft has no context: {}", prompts[0]);
            assert!(holds_definition(&prompts[1]), "the task's prompt holds what the draft called: {}", prompts[1]);
        } else {
            assert_eq!(prompts.len(), 1);
            assert!(!holds_definition(&prompts[0]), "nothing near the cursor names it: {}", prompts[0]);
        }
    }
}
