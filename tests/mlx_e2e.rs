//! The MLX engine (feature `mlx`) behind the same `Generator` interface as llama.cpp, on the bundled
//! SmolLM2-135M: the two engines agree on greedy tokens from the same weights (the GGUF for
//! llama.cpp, its MLX conversion for MLX), and the MLX engine streams, stops and cancels.

use std::time::Duration;

use kenning::assets::Assets;
use kenning::generate::llama::{LlamaEngine, LlamaOptions};
use kenning::generate::mlx::{MlxEngine, resolve};
use kenning::generate::{BundledModel, Event, FinishReason, Generator, Request};
use kenning::paths::Paths;

fn mlx() -> MlxEngine {
    let dir = resolve("smollm2-135m", &Paths::from_env()).unwrap_or_else(|e| panic!("{e}"));
    MlxEngine::load(&dir, None).unwrap()
}

#[test]
fn llama_cpp_and_mlx_agree_on_greedy_tokens() {
    let gguf = BundledModel::resolve("smollm2-135m", &Assets::new(Paths::from_env().assets())).unwrap();
    let llama = LlamaEngine::load(&gguf, LlamaOptions { context: 1024, threads: 1, ..LlamaOptions::default() }).unwrap();
    let mlx = mlx();
    for prompt in ["The capital of France is", "fn main() {\n    let numbers = vec![1, 2, 3];\n"] {
        // The first greedy tokens: later ones may part where two logits are within the engines'
        // numeric differences (llama.cpp's quantized kernels against dequantized f32 weights).
        let request = Request { max_tokens: 4, ..Request::new(prompt) };
        let (from_llama, _) = llama.generate(request.clone()).unwrap().collect_blocking().unwrap();
        let (from_mlx, finish) = mlx.generate(request).unwrap().collect_blocking().unwrap();
        assert_eq!(from_mlx, from_llama, "prompt {prompt:?}");
        assert!(!from_mlx.trim().is_empty());
        assert!(finish.prompt_tokens > 3);
    }
    assert_eq!(mlx.count_tokens("The capital of France is").unwrap(), llama.count_tokens("The capital of France is").unwrap());
}

#[test]
fn mlx_streams_stops_and_cancels() {
    let mlx = mlx();
    let mut generation = mlx.generate(Request { max_tokens: 12, ..Request::new("1, 2, 3, 4,") }).unwrap();
    let mut pieces = Vec::new();
    while let Some(event) = generation.next_blocking() {
        match event {
            Event::Text(t) => pieces.push(t),
            Event::Done(f) => {
                assert_eq!(f.reason, FinishReason::Length);
                break;
            }
            Event::Error(e) => panic!("{e}"),
        }
    }
    assert!(pieces.len() > 2, "streamed: {pieces:?}");
    assert!(pieces.concat().contains('5'), "{pieces:?}");

    let (text, finish) = mlx.generate(Request { max_tokens: 24, stop: vec!["7".into()], ..Request::new("1, 2, 3, 4,") }).unwrap().collect_blocking().unwrap();
    assert_eq!(finish.reason, FinishReason::Stop);
    assert!(text.contains('6') && !text.contains('7'), "{text:?}");

    // Dropping a generation frees the engine for the next request.
    drop(mlx.generate(Request { max_tokens: 500, ..Request::new("Once upon a time") }).unwrap());
    let started = std::time::Instant::now();
    let (text, _) = mlx.generate(Request { max_tokens: 3, ..Request::new("The capital of France is") }).unwrap().collect_blocking().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(60), "the dropped generation did not stop");
}
