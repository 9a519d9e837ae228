//! Generation benchmark: per bundled model on the llama.cpp engine (or, built with `--features mlx`,
//! `--engine mlx`), load time, time to first token at prompt lengths 256 / 1024 / 2048, decode speed,
//! peak RSS, and the time to first token of a second completion that shares the first one's prefix
//! (the KV cache reuse), as a ratio to the cold one. On MLX, Python `mlx_lm.generate` runs the same
//! prompts on the same model directory in the same run (`MLX_PYTHON`, the mlx venv's python; `OPENBLAS`,
//! preloaded into it as kenning links it), and the ratios are printed.
//!
//! With `--new-place` (llama.cpp only), instead: the first prompt at a new place, with the model's
//! weights as they are beside their 8-bit copy (`generation.weights`).
//!
//! `cargo bench -p kenning --bench generate -- [--engine llama|mlx] [--threads N] [--models a,b] [--new-place]`
#![allow(clippy::print_stdout)]

mod common;

use std::time::{Duration, Instant};

use kenning::generate::llama::{LlamaEngine, LlamaOptions};
use kenning::generate::{Generator, GenerationRequest};
use kenning::paths::Paths;

use common::peak_rss_mb;

const PROMPT_LENGTHS: [usize; 3] = [256, 1024, 2048];
const DECODE_TOKENS: usize = 64;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// Source text to build prompts from: some of this crate's own code.
fn corpus() -> String {
    let mut text = String::new();
    for file in ["src/index.rs", "src/store.rs", "src/chunk/mod.rs", "src/retrieve.rs", "src/workspace.rs"] {
        text.push_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + file).unwrap());
    }
    text
}

/// A prompt of about `tokens` tokens, starting with `tag` (distinct first words keep prompts from
/// sharing a prefix).
fn prompt_of(engine: &dyn Generator, corpus: &str, tag: &str, tokens: usize) -> (String, usize) {
    let (mut lo, mut hi) = (0usize, corpus.len());
    let build = |n: usize| {
        let mut end = n.min(corpus.len());
        while !corpus.is_char_boundary(end) {
            end -= 1;
        }
        format!("{tag}\n{}", &corpus[..end])
    };
    while lo + 16 < hi {
        let mid = (lo + hi) / 2;
        if engine.count_tokens(&build(mid)).unwrap() < tokens { lo = mid } else { hi = mid }
    }
    let prompt = build(hi);
    let n = engine.count_tokens(&prompt).unwrap();
    (prompt, n)
}

fn run(engine: &dyn Generator, prompt: &str, max_tokens: usize) -> (Duration, f64, usize) {
    let (_, finish) = engine.generate(GenerationRequest { max_tokens, ..GenerationRequest::new(prompt) }).unwrap().collect_blocking().unwrap();
    (finish.time_to_first_token, finish.decode_tokens_per_second(), finish.reused_prompt_tokens)
}

/// `mlx_lm.generate` on the same model directory and prompt: (prompt tokens/s, decode tokens/s).
fn mlx_lm_rates(model_dir: &std::path::Path, prompt: &str) -> Option<(f64, f64)> {
    let python = std::env::var_os("MLX_PYTHON")?;
    let mut command = std::process::Command::new(python);
    command.args(["-m", "mlx_lm", "generate", "--temp", "0", "--ignore-chat-template", "--max-tokens"]);
    command.arg(DECODE_TOKENS.to_string()).arg("--model").arg(model_dir).arg("--prompt").arg(prompt);
    if let Some(openblas) = std::env::var_os("OPENBLAS").filter(|v| !v.is_empty()) {
        command.env("LD_PRELOAD", openblas);
    }
    let out = command.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = |label: &str| {
        let line = text.lines().find(|l| l.starts_with(label))?;
        line.split(", ").nth(1)?.split_whitespace().next()?.parse::<f64>().ok()
    };
    Some((rate("Prompt:")?, rate("Generation:")?))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads").map_or(1, |t| t.parse().expect("--threads takes a number"));
    let models = arg(&args, "--models").unwrap_or_else(|| "qwen2.5-coder-0.5b,smollm2-135m".into());
    let mlx = match arg(&args, "--engine").as_deref() {
        None | Some("llama") => false,
        Some("mlx") if cfg!(feature = "mlx") => true,
        Some("mlx") => panic!("--engine mlx needs a build with --features mlx"),
        Some(other) => panic!("unknown engine {other} (llama, mlx)"),
    };
    let paths = Paths::from_env();
    let corpus = corpus();
    if mlx {
        println!("kenning generation benchmark (MLX engine, CPU, greedy; mlx_lm.generate on the same model and prompts)");
    } else {
        println!("kenning generation benchmark (llama.cpp engine, {threads} thread(s), greedy)");
    }
    for name in models.split(',') {
        if args.iter().any(|a| a == "--new-place") {
            new_place(name, &paths, threads, &corpus);
            continue;
        }
        let t = Instant::now();
        let (engine, model_dir): (Box<dyn Generator>, Option<std::path::PathBuf>) = if mlx {
            load_mlx(name, &paths)
        } else {
            let path = kenning::models::resolve(name, &paths).unwrap_or_else(|e| panic!("{e}"));
            (Box::new(LlamaEngine::load(&path, LlamaOptions { context: 4096, threads, ..LlamaOptions::default() }).unwrap()), None)
        };
        let engine = engine.as_ref();
        println!("\n{name}: loaded in {:.2} s", t.elapsed().as_secs_f64());
        let mut decode_rates = Vec::new();
        for (i, &target) in PROMPT_LENGTHS.iter().enumerate() {
            let tag = ["Alpha", "Bravo", "Charlie"][i];
            let (prompt, n) = prompt_of(engine, &corpus, tag, target);
            let (ttft, rate, reused) = run(engine, &prompt, DECODE_TOKENS);
            assert!(reused <= 1, "a cold prompt shares at most the BOS token, not {reused}");
            decode_rates.push(rate);
            println!("  prompt {n:>5} tokens: time to first token {:>7.3} s, decode {rate:>6.1} tok/s", ttft.as_secs_f64());
            if let Some(dir) = &model_dir {
                match mlx_lm_rates(dir, &prompt) {
                    Some((prefill, decode)) => {
                        let ours = n as f64 / ttft.as_secs_f64();
                        println!(
                            "    mlx_lm.generate: prompt {prefill:>7.1} tok/s, decode {decode:>6.1} tok/s; kenning {ours:.1} / {rate:.1}: {:.2}x prompt, {:.2}x decode (goal >= 1.0x)",
                            ours / prefill,
                            rate / decode
                        );
                    }
                    None => println!("    mlx_lm.generate: not run (set MLX_PYTHON; scripts/bench-generate does)"),
                }
            }
        }
        // Second completion in the same file: same prefix, a few tokens changed at the end.
        let (prompt, n) = prompt_of(engine, &corpus, "Delta", 2048);
        let (cold, _, _) = run(engine, &prompt, 1);
        let edited = format!("{prompt}\n    let edited = 1;\n");
        let (warm, _, reused) = run(engine, &edited, 1);
        println!(
            "  second completion sharing a {n}-token prefix: first token {:.3} s vs {:.3} s cold = {:.1}x faster (goal >= 5x), {reused} tokens reused",
            warm.as_secs_f64(),
            cold.as_secs_f64(),
            cold.as_secs_f64() / warm.as_secs_f64()
        );
        if !mlx {
            // How a generation reads its prompt: tokens per decode call. 64 was the only size
            // before; each size on its own engine, the same prompts (best of two runs).
            let path = kenning::models::resolve(name, &paths).unwrap_or_else(|e| panic!("{e}"));
            let mut line = String::from("  prompt read in chunks of");
            for chunk in [64, 128, 256, 512] {
                let engine = LlamaEngine::load(&path, LlamaOptions { context: 4096, threads, prompt_chunk: chunk, ..LlamaOptions::default() }).unwrap();
                let mut cells = Vec::new();
                for (tag, target) in [("Echo", 512), ("Foxtrot", 1024)] {
                    // A different first line each run: nothing is reused from the cache.
                    let best = (0..2).map(|i| run(&engine, &prompt_of(&engine, &corpus, &format!("{tag} {chunk} {i}"), target).0, 1).0).min().unwrap();
                    cells.push(format!("{:.3} s at {target}", best.as_secs_f64()));
                }
                line.push_str(&format!(" {chunk}: {};", cells.join(", ")));
            }
            println!("{line} (time to first token)");
        }
        println!("  peak RSS so far {:.0} MB", peak_rss_mb());
    }
}

/// The first prompt at a new place (nothing of it cached), with the model's weights as they are
/// and re-quantized to 8 bits (`generation.weights`), on an engine whose sequences are empty and
/// on one where both already hold long prompts of other places; each on a fresh engine, best of
/// three prompts, with the decode speed of 32 tokens after it.
fn new_place(name: &str, paths: &Paths, threads: usize, corpus: &str) {
    let source = kenning::models::resolve(name, paths).unwrap_or_else(|e| panic!("{e}"));
    let q8 = kenning::generate::llama::requantized_q8(&source, &paths.cache().join("weights")).unwrap();
    // Each prompt from its own part of the corpus: nothing of it is cached anywhere.
    let part = |k: usize| {
        let mut start = (k * 7919) % (corpus.len() / 2);
        while !corpus.is_char_boundary(start) {
            start += 1;
        }
        &corpus[start..]
    };
    println!("\n{name}: the first prompt at a new place (400 tokens)");
    for (weights, path) in [("as they are", &source), ("8-bit (q8_0)", &q8)] {
        for held in [0usize, 1500] {
            let engine = LlamaEngine::load(path, LlamaOptions { threads, ..LlamaOptions::default() }).unwrap();
            let (mut best, mut rates) = (Duration::MAX, Vec::new());
            for i in 0..3 {
                if held > 0 {
                    for k in 0..2 {
                        run(&engine, &prompt_of(&engine, part(10 * i + k + 1), "Held", held).0, 1);
                    }
                }
                let (prompt, _) = prompt_of(&engine, part(10 * i + 5), "New place", 400);
                let (ttft, rate, _) = run(&engine, &prompt, 32);
                best = best.min(ttft);
                rates.push(rate);
            }
            println!(
                "  weights {weights:<12}, other sequences holding {held:>4} tokens: first token {:.3} s, decode {:.1} tok/s",
                best.as_secs_f64(),
                rates.iter().sum::<f64>() / rates.len() as f64
            );
        }
    }
}

#[cfg(feature = "mlx")]
fn load_mlx(name: &str, paths: &Paths) -> (Box<dyn Generator>, Option<std::path::PathBuf>) {
    let dir = kenning::generate::mlx::resolve(name, paths).unwrap_or_else(|e| panic!("{e}"));
    (Box::new(kenning::generate::mlx::MlxEngine::load(&dir, None).unwrap()), Some(dir))
}

#[cfg(not(feature = "mlx"))]
fn load_mlx(_: &str, _: &Paths) -> (Box<dyn Generator>, Option<std::path::PathBuf>) {
    unreachable!("checked when the arguments are read")
}
