//! End-to-end generation tests with the bundled GGUF models on llama.cpp, in-process. They need the
//! `generate` assets that `scripts/setup` installs and fail with its message when they are missing.

use std::sync::OnceLock;
use std::time::Duration;

use kenning::assets::Assets;
use kenning::generate::llama::{LlamaEngine, LlamaOptions};
use kenning::generate::{BundledModel, Event, FinishReason, GenerateError, Generator, Request, SpecialToken};
use kenning::paths::Paths;

fn load(model: &str) -> LlamaEngine {
    let path = BundledModel::resolve(model, &Assets::new(Paths::from_env().assets())).unwrap_or_else(|e| panic!("{e}"));
    LlamaEngine::load(&path, LlamaOptions { context: 2048, threads: 1, ..LlamaOptions::default() }).unwrap()
}

/// One Qwen engine for the tests that only read from it (loading takes a second).
fn qwen() -> &'static LlamaEngine {
    static ENGINE: OnceLock<LlamaEngine> = OnceLock::new();
    ENGINE.get_or_init(|| load("qwen2.5-coder-0.5b"))
}

fn fim(engine: &dyn Generator, prefix: &str, suffix: &str) -> String {
    let s = |t| engine.special(t).expect("the model has FIM tokens");
    format!("{}{prefix}{}{suffix}{}", s(SpecialToken::FimPrefix), s(SpecialToken::FimSuffix), s(SpecialToken::FimMiddle))
}

#[test]
fn greedy_fim_completes_an_obvious_rust_body() {
    let engine = qwen();
    let prompt = fim(engine, "/// Returns the larger of two numbers.\nfn max(a: i32, b: i32) -> i32 {\n    ", "\n}\n");
    let request = Request { max_tokens: 40, stop: vec!["\n}".into()], ..Request::new(prompt) };
    let (text, finish) = engine.generate(request).unwrap().collect_blocking().unwrap();
    let code: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        code.starts_with("if a > b { a } else { b }") || code.starts_with("a.max(b)") || code.contains("std::cmp::max(a, b)"),
        "{text:?}"
    );
    assert_eq!(finish.reason, FinishReason::Stop, "the stop sequence ends it: {text:?}");
    assert!(!text.contains("fn main"), "{text:?}");
}

#[test]
fn healing_makes_the_output_begin_with_the_typed_part_of_a_word_and_leaves_it_out() {
    let engine = qwen();
    assert!(engine.heals());
    let prompt = fim(engine, "fn main() {\n    let numbers = vec![3, 1, 2];\n    ", "\n}\n");
    let greedy = |heal: &str| {
        let request = Request { max_tokens: 10, heal: heal.into(), ..Request::new(prompt.clone()) };
        engine.generate(request).unwrap().collect_blocking().unwrap().0
    };
    let free = greedy("");
    for (typed, word) in [("prin", "println!("), ("asse", "assert")] {
        assert!(!free.trim_start().starts_with(typed), "left alone the model writes something else here: {free:?}");
        let healed = greedy(typed);
        assert!(!healed.starts_with(typed), "the typed part is not repeated: {healed:?}");
        assert!(format!("{typed}{healed}").starts_with(word), "{typed:?} + {healed:?} should write {word:?}");
    }
}

#[test]
fn qwen_names_its_fim_and_repo_tokens_and_smollm_has_none() {
    let engine = qwen();
    assert_eq!(engine.special(SpecialToken::FimPrefix).as_deref(), Some("<|fim_prefix|>"));
    assert_eq!(engine.special(SpecialToken::FimMiddle).as_deref(), Some("<|fim_middle|>"));
    assert_eq!(engine.special(SpecialToken::RepoName).as_deref(), Some("<|repo_name|>"));
    assert_eq!(engine.special(SpecialToken::FileSep).as_deref(), Some("<|file_sep|>"));
    assert_eq!(engine.count_tokens("<|fim_prefix|>").unwrap(), 1);
    assert_eq!(engine.count_tokens("").unwrap(), 0);
    assert!(engine.count_tokens("fn main() { println!(\"hello\"); }").unwrap() > 5);

    let small = load("smollm2-135m");
    assert_eq!(small.special(SpecialToken::FimPrefix), None);
    let (text, finish) = small
        .generate(Request { max_tokens: 8, ..Request::new("The capital of France is") })
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!((finish.reason, finish.generated_tokens), (FinishReason::Length, 8));
}

#[test]
fn a_shared_prefix_is_not_computed_again_and_gives_the_same_tokens() {
    // A private engine: the cache state must not depend on other tests.
    let engine = load("qwen2.5-coder-0.5b");
    let body: String = (0..40).map(|i| format!("fn helper_{i}(x: u32) -> u32 {{ x + {i} }}\n")).collect();
    let first = fim(&engine, &format!("{body}/// The smaller of two numbers.\nfn min(a: u32, b: u32) -> u32 {{\n    "), "\n}\n");
    let second = fim(&engine, &format!("{body}/// The larger of two numbers.\nfn max(a: u32, b: u32) -> u32 {{\n    "), "\n}\n");
    let request = |p: &str| Request { max_tokens: 12, ..Request::new(p) };

    let (_, cold) = engine.generate(request(&first)).unwrap().collect_blocking().unwrap();
    assert_eq!(cold.reused_prompt_tokens, 0);
    let (warm_text, warm) = engine.generate(request(&second)).unwrap().collect_blocking().unwrap();
    assert!(
        warm.reused_prompt_tokens * 10 >= warm.prompt_tokens * 9,
        "reused {} of {} prompt tokens",
        warm.reused_prompt_tokens,
        warm.prompt_tokens
    );
    // Reusing the cache changes nothing in the output. (On a prompt whose top two next tokens nearly
    // tie, llama.cpp's batch-size-dependent kernels can tip greedy decoding either way; this prompt
    // has one clear answer, and broken cache positions would turn it into garbage.)
    let fresh = load("qwen2.5-coder-0.5b");
    let (fresh_text, _) = fresh.generate(request(&second)).unwrap().collect_blocking().unwrap();
    assert_eq!(warm_text, fresh_text);
}

#[test]
fn dropping_a_generation_frees_the_engine() {
    let engine = load("smollm2-135m");
    let mut endless = engine.generate(Request { max_tokens: 1_000_000, ..Request::new("Count: 1, 2, 3,") }).unwrap();
    assert!(matches!(endless.next_blocking(), Some(Event::Text(_))));
    drop(endless);
    // If the first generation went on, this one would wait for a million tokens.
    let next = engine.generate(Request { max_tokens: 4, ..Request::new("Hello") }).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(next.collect_blocking()));
    let (_, finish) = rx.recv_timeout(Duration::from_secs(120)).expect("the engine is still busy").unwrap();
    assert_eq!(finish.generated_tokens, 4);
}

#[test]
fn a_missing_or_broken_model_is_an_error() {
    let err = LlamaEngine::load(std::path::Path::new("/nonexistent/model.gguf"), LlamaOptions::default()).err().unwrap();
    assert!(matches!(err, GenerateError::Load { .. }) && err.to_string().contains("no such file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    let err = LlamaEngine::load(&junk, LlamaOptions::default()).err().unwrap();
    assert!(err.to_string().contains("junk.gguf"), "{err}");
}
