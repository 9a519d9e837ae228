//! The MLX engine (feature `mlx`) behind the same `Generator` interface as llama.cpp, on the bundled
//! SmolLM2-135M and Qwen2.5-Coder-0.5B: the two engines agree on greedy tokens from the same weights
//! (the GGUF for llama.cpp, its MLX conversion for MLX), the MLX engine streams, stops and cancels, and an
//! adapter directory in mlx_lm's format changes both engines alike (llama.cpp through its GGUF export).

use std::time::Duration;

use kenning::generate::llama::{LlamaEngine, LlamaOptions};
use kenning::generate::mlx::{MlxEngine, resolve};
use kenning::formats::{fused_gguf, lora_gguf};
use kenning::generate::{Event, FinishReason, Generator, GenerationRequest};
use kenning::paths::Paths;
use kenning_training::model::Projection as Target;
use kenning_training::model::Config;

fn mlx() -> MlxEngine {
    let dir = resolve("smollm2-135m", &Paths::from_env()).unwrap_or_else(|e| panic!("{e}"));
    MlxEngine::load(&dir, None).unwrap()
}

#[test]
fn llama_cpp_and_mlx_agree_on_greedy_tokens() {
    let gguf = kenning::models::resolve("smollm2-135m", &Paths::from_env()).unwrap();
    let llama = LlamaEngine::load(&gguf, LlamaOptions { context: 1024, threads: 1, ..LlamaOptions::default() }).unwrap();
    let mlx = mlx();
    for prompt in ["The capital of France is", "fn main() {\n    let numbers = vec![1, 2, 3];\n"] {
        // The first greedy tokens: later ones may part where two logits are within the engines'
        // numeric differences (llama.cpp's quantized kernels against dequantized f32 weights).
        let request = GenerationRequest { max_tokens: 4, ..GenerationRequest::new(prompt) };
        let (from_llama, _) = llama.generate(request.clone()).unwrap().collect_blocking().unwrap();
        let (from_mlx, finish) = mlx.generate(request).unwrap().collect_blocking().unwrap();
        assert_eq!(from_mlx, from_llama, "prompt {prompt:?}");
        assert!(!from_mlx.trim().is_empty());
        assert!(finish.prompt_tokens > 3);
    }
    assert_eq!(mlx.count_tokens("The capital of France is").unwrap(), llama.count_tokens("The capital of France is").unwrap());
}

#[test]
fn qwen_coder_converted_from_its_k_quant_gguf_fills_in_the_middle_as_llama_cpp_does() {
    let paths = Paths::from_env();
    let dir = resolve("qwen2.5-coder-0.5b", &paths).unwrap_or_else(|e| panic!("{e}"));
    let gguf = kenning::models::resolve("qwen2.5-coder-0.5b", &paths).unwrap();
    let llama = LlamaEngine::load(&gguf, LlamaOptions { context: 1024, threads: 2, ..LlamaOptions::default() }).unwrap();
    let mlx = MlxEngine::load(&dir, None).unwrap();
    for prompt in [
        "<|fim_prefix|>def circle_area(radius):\n    return <|fim_suffix|>\n\nprint(circle_area(2.0))\n<|fim_middle|>",
        "<|fim_prefix|>fn is_even(n: u32) -> bool {\n    <|fim_suffix|>\n}\n<|fim_middle|>",
        "<|fim_prefix|>use std::collections::HashMap;\n\nfn count_words(text: &str) -> HashMap<&str, usize> {\n    let mut counts = HashMap::new();\n    for word in text.split_whitespace() {\n        <|fim_suffix|>\n    }\n    counts\n}\n<|fim_middle|>",
    ] {
        // Greedy tokens can part where two logits are nearly tied (llama.cpp's quantized kernels
        // against f32 here; Python mlx_lm in f32 parts from llama.cpp at the same places).
        assert_eq!(mlx.count_tokens(prompt).unwrap(), llama.count_tokens(prompt).unwrap(), "the FIM tokens are single tokens in both: {prompt:?}");
        let request = GenerationRequest { max_tokens: 6, ..GenerationRequest::new(prompt) };
        let (from_llama, _) = llama.generate(request.clone()).unwrap().collect_blocking().unwrap();
        let (from_mlx, _) = mlx.generate(request).unwrap().collect_blocking().unwrap();
        assert_eq!(from_mlx, from_llama, "prompt {prompt:?}");
        assert!(!from_mlx.trim().is_empty());
    }
    // An obvious body, completed to the end of its line.
    let prompt = "<|fim_prefix|>/// Whether `n` is even.\nfn is_even(n: u32) -> bool {\n    <|fim_suffix|>\n}\n<|fim_middle|>";
    let (body, _) = mlx.generate(GenerationRequest { max_tokens: 16, stop: vec!["\n".into()], ..GenerationRequest::new(prompt) }).unwrap().collect_blocking().unwrap();
    assert_eq!(body.trim(), "n % 2 == 0");
}

#[test]
fn mlx_heals_a_partial_word_as_llama_cpp_does() {
    let paths = Paths::from_env();
    let gguf = kenning::models::resolve("qwen2.5-coder-0.5b", &paths).unwrap();
    let llama = LlamaEngine::load(&gguf, LlamaOptions { context: 1024, threads: 1, ..LlamaOptions::default() }).unwrap();
    let mlx = MlxEngine::load(&resolve("qwen2.5-coder-0.5b", &paths).unwrap_or_else(|e| panic!("{e}")), None).unwrap();
    assert!(llama.heals() && mlx.heals());
    let prompt = "<|fim_prefix|>fn main() {\n    let numbers = vec![3, 1, 2];\n    <|fim_suffix|>\n}\n<|fim_middle|>";
    for typed in ["prin", "asse"] {
        let request = GenerationRequest { max_tokens: 8, heal: typed.into(), ..GenerationRequest::new(prompt) };
        let (from_llama, _) = llama.generate(request.clone()).unwrap().collect_blocking().unwrap();
        let (from_mlx, _) = mlx.generate(request).unwrap().collect_blocking().unwrap();
        assert!(!from_mlx.is_empty() && !from_mlx.starts_with(typed), "{from_mlx:?}");
        assert_eq!(from_mlx, from_llama, "healing {typed:?}");
    }
}

#[test]
fn a_prompt_that_extends_the_last_one_reuses_its_cache_and_writes_the_same() {
    let warm = mlx();
    let first = "fn main() {\n    let numbers = vec![1, 2, 3];\n";
    let second = format!("{first}    let total: i32 = numbers");
    let request = |p: &str| GenerationRequest { max_tokens: 6, ..GenerationRequest::new(p) };
    let (_, cold_first) = warm.generate(request(first)).unwrap().collect_blocking().unwrap();
    assert_eq!(cold_first.reused_prompt_tokens, 0);
    let (text, finish) = warm.generate(request(&second)).unwrap().collect_blocking().unwrap();
    let first_tokens = warm.count_tokens(first).unwrap();
    assert!(finish.reused_prompt_tokens >= first_tokens - 1, "{} of {first_tokens} reused", finish.reused_prompt_tokens);
    // The same prompt on a fresh engine, computed from scratch, writes the same.
    let (fresh, _) = mlx().generate(request(&second)).unwrap().collect_blocking().unwrap();
    assert_eq!(text, fresh);
    // A prompt that parts early keeps only the shared part.
    let (other, finish) = warm.generate(request("fn other() {\n")).unwrap().collect_blocking().unwrap();
    assert!(finish.reused_prompt_tokens < 3, "{}", finish.reused_prompt_tokens);
    assert_eq!(other, mlx().generate(request("fn other() {\n")).unwrap().collect_blocking().unwrap().0);
}

#[test]
fn mlx_streams_stops_and_cancels() {
    let mlx = mlx();
    let mut generation = mlx.generate(GenerationRequest { max_tokens: 12, ..GenerationRequest::new("1, 2, 3, 4,") }).unwrap();
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

    let (text, finish) = mlx.generate(GenerationRequest { max_tokens: 24, stop: vec!["7".into()], ..GenerationRequest::new("1, 2, 3, 4,") }).unwrap().collect_blocking().unwrap();
    assert_eq!(finish.reason, FinishReason::Stop);
    assert!(text.contains('6') && !text.contains('7'), "{text:?}");

    // Dropping a generation frees the engine for the next request.
    drop(mlx.generate(GenerationRequest { max_tokens: 500, ..GenerationRequest::new("Once upon a time") }).unwrap());
    let started = std::time::Instant::now();
    let (text, _) = mlx.generate(GenerationRequest { max_tokens: 3, ..GenerationRequest::new("The capital of France is") }).unwrap().collect_blocking().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(60), "the dropped generation did not stop");
}

/// An adapter directory in mlx_lm's layout on the last `layers` layers of `model`: `A` and `B`
/// from a fixed pseudo-random sequence, strong enough to change what the model writes.
fn random_adapter(model: &std::path::Path, out: &std::path::Path, layers: usize) {
    let config: Config = serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let rank = 8usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = |bound: f32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    };
    let (mut header, mut data) = (serde_json::Map::new(), Vec::<u8>::new());
    for layer in config.num_hidden_layers - layers..config.num_hidden_layers {
        for target in Target::ALL {
            let (inputs, outputs) = config.projection_dims(target);
            let (inputs, outputs) = (inputs as usize, outputs as usize);
            let bound_a = 1.0 / (inputs as f32).sqrt();
            for (ab, shape, bound) in [("a", [inputs, rank], bound_a), ("b", [rank, outputs], 0.1)] {
                let start = data.len();
                for _ in 0..shape[0] * shape[1] {
                    data.extend(uniform(bound).to_le_bytes());
                }
                header.insert(
                    format!("model.layers.{layer}.{}.lora_{ab}", target.name()),
                    serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
                );
            }
        }
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("adapters.safetensors"), file).unwrap();
    let config = serde_json::json!({
        "fine_tune_type": "lora",
        "num_layers": layers,
        "lora_parameters": {"rank": rank, "scale": 20.0, "dropout": 0.0},
        "model": model,
    });
    std::fs::write(out.join("adapter_config.json"), config.to_string()).unwrap();
}

/// Prompts on which a random adapter's effect is compared across engines and files.
const ADAPTER_PROMPTS: [&str; 2] = ["The capital of France is", "fn main() {\n    let numbers = vec![1, 2, 3];\n"];

/// The first four greedy tokens' text.
fn first_tokens(engine: &dyn Generator, prompt: &str) -> String {
    engine.generate(GenerationRequest { max_tokens: 4, ..GenerationRequest::new(prompt) }).unwrap().collect_blocking().unwrap().0
}

#[test]
fn an_adapter_directory_changes_llama_cpp_as_it_changes_mlx() {
    let paths = Paths::from_env();
    let model = resolve("smollm2-135m", &paths).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    random_adapter(&model, &adapter, 4);

    let gguf = kenning::models::resolve("smollm2-135m", &paths).unwrap();
    let options = LlamaOptions { context: 1024, threads: 1, ..LlamaOptions::default() };
    let base = LlamaEngine::load(&gguf, options.clone()).unwrap();
    let lora = lora_gguf::for_llama(&adapter).unwrap();
    assert_eq!(lora, adapter.join(lora_gguf::EXPORT_NAME));
    let adapted = LlamaEngine::load(&gguf, LlamaOptions { lora: Some(lora.clone()), ..options.clone() }).unwrap();
    // On another model it is refused, by an error that names the model it was trained on.
    let qwen = kenning::models::resolve("qwen2.5-coder-0.5b", &paths).unwrap();
    let refused = LlamaEngine::load(&qwen, LlamaOptions { lora: Some(lora), ..options }).err().expect("a SmolLM2 adapter on Qwen");
    assert!(refused.to_string().contains("the adapter was trained on smollm2-135m; an adapter fits only the model it was trained on"), "{refused}");
    let mlx = MlxEngine::load(&model, Some(&adapter)).unwrap();
    for prompt in ADAPTER_PROMPTS {
        let (from_base, from_llama, from_mlx) = (first_tokens(&base, prompt), first_tokens(&adapted, prompt), first_tokens(&mlx, prompt));
        assert_ne!(from_llama, from_base, "the adapter changes what llama.cpp writes for {prompt:?}");
        assert_eq!(from_llama, from_mlx, "llama.cpp with the exported adapter writes what MLX writes with the adapter, for {prompt:?}");
    }
}

#[test]
fn a_fused_model_written_as_gguf_writes_what_the_base_with_the_adapter_writes() {
    let paths = Paths::from_env();
    let model = resolve("smollm2-135m", &paths).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    random_adapter(&model, &adapter, 4);
    // `kenning-train fuse`: the adapter merged on MLX, written as a Hugging Face directory (f16).
    let mut text = kenning_training::text::TextModel::load(&model).unwrap();
    let (lora, weights) = kenning_training::lora::Lora::load(&adapter, &text.model.config).unwrap();
    kenning_training::export::fuse(&lora, &weights, &mut text.model).unwrap();
    let fused_dir = dir.path().join("fused");
    kenning_training::export::write_model_dir(&text.model, &model, &fused_dir).unwrap();
    drop(text);

    let gguf = kenning::models::resolve("smollm2-135m", &paths).unwrap();
    let written = fused_gguf::write(&gguf, &fused_dir, &adapter, &fused_dir.join("model.gguf")).unwrap();
    assert_eq!(written.replaced, 4 * 7, "q, k, v, o, gate, up, down of the last 4 layers");
    assert!(std::fs::metadata(&written.path).unwrap().len() < 2 * std::fs::metadata(&gguf).unwrap().len(), "the rest stays quantized");

    let options = LlamaOptions { context: 1024, threads: 1, ..LlamaOptions::default() };
    let base = LlamaEngine::load(&gguf, options.clone()).unwrap();
    let adapted = LlamaEngine::load(&gguf, LlamaOptions { lora: Some(lora_gguf::for_llama(&adapter).unwrap()), ..options.clone() }).unwrap();
    let fused = LlamaEngine::load(&written.path, options).unwrap();
    for prompt in ADAPTER_PROMPTS {
        let (from_base, from_adapted, from_fused) = (first_tokens(&base, prompt), first_tokens(&adapted, prompt), first_tokens(&fused, prompt));
        assert_ne!(from_fused, from_base, "the fused model is not the base, for {prompt:?}");
        assert_eq!(from_fused, from_adapted, "the fused GGUF writes what the base with the adapter writes, for {prompt:?}");
    }
}

#[test]
fn eval_all_compares_the_four_modes_on_held_out_lines() {
    let model = resolve("smollm2-135m", &Paths::from_env()).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for (i, name) in ["cart", "pricing", "shipping", "tax", "stock", "orders"].iter().enumerate() {
        let path = repo.join("src").join(format!("{name}.rs"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = format!(
            "/// The {name} total for `items`, in cents.\npub fn {name}_total(items: &[u64]) -> u64 {{\n    let base: u64 = items.iter().sum();\n    base * {} / 100\n}}\n",
            100 + i
        );
        std::fs::write(path, text).unwrap();
    }
    let adapter = dir.path().join("adapter");
    random_adapter(&model, &adapter, 2);
    let (index, repo_arg) = (dir.path().join("index"), repo.to_str().unwrap());
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_kenning")).args(args).arg("--index-dir").arg(&index).output().unwrap();
    let kenning = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "kenning {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    kenning(&["index", repo_arg]);
    let common = ["eval", "--json", "--model", "smollm2-135m", "--threads", "1", "--limit", "3", "-w", repo_arg];
    let out = kenning(&[&common[..], &["--all", "--adapter", adapter.to_str().unwrap()]].concat());
    let parse = |out: &str| -> Vec<serde_json::Value> { serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}")) };
    let rows = parse(&out);
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["none", "rag", "ft", "hybrid"]);
    for row in &rows {
        assert_eq!(row["tasks"], 3, "{row}");
        let (exact, similarity) = (row["exact_match"].as_f64().unwrap(), row["edit_similarity"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&exact) && (0.0..=1.0).contains(&similarity) && exact <= similarity, "{row}");
        assert!(row["p50_latency_ms"].as_f64().unwrap() > 0.0, "{row}");
        // The model alone is ≈ 100 MiB; each mode measures its own process.
        assert!(row["peak_rss_mib"].as_f64().unwrap() > 60.0, "{row}");
    }

    // Kept with --out, two runs at a time, and stopped with one mode's chunk not done: the same
    // command carries on, runs only what is missing, and ends with the figures of a whole run.
    let kept = dir.path().join("kept");
    let with_out = [&common[..], &["--all", "--adapter", adapter.to_str().unwrap(), "--out", kept.to_str().unwrap(), "--jobs", "2"]].concat();
    let same = |a: &[serde_json::Value], b: &[serde_json::Value]| {
        let key = |r: &serde_json::Value| (r["mode"].to_string(), r["tasks"].to_string(), r["exact_match"].to_string(), r["edit_similarity"].to_string());
        assert_eq!(a.iter().map(key).collect::<Vec<_>>(), b.iter().map(key).collect::<Vec<_>>());
    };
    same(&parse(&kenning(&with_out)), &rows);
    std::fs::remove_file(kept.join("scores").join("rag-000.json")).unwrap();
    // On Linux, carried on by a build whose file is replaced while it runs (a rebuild, an
    // upgrade): the processes it starts for each mode are still that build.
    let again = if cfg!(target_os = "linux") {
        let replaced = dir.path().join("bin").join("kenning");
        std::fs::create_dir_all(replaced.parent().unwrap()).unwrap();
        std::fs::hard_link(env!("CARGO_BIN_EXE_kenning"), &replaced).or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_kenning"), &replaced).map(drop)).unwrap();
        let child = std::process::Command::new(&replaced)
            .args([&with_out[..], &["--progress"]].concat())
            .arg("--index-dir")
            .arg(&index)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::fs::remove_file(&replaced).unwrap();
        child.wait_with_output().unwrap()
    } else {
        run(&[&with_out[..], &["--progress"]].concat())
    };
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && stderr.contains("(3 runs already done)") && stderr.contains("rag on chunk 1/1"), "{stderr}");
    assert!(!stderr.contains("none on chunk"), "what was done is not run again: {stderr}");
    same(&parse(&String::from_utf8_lossy(&again.stdout)), &rows);
    let compared = std::process::Command::new(env!("CARGO_BIN_EXE_kenning")).arg("compare").arg("--base").arg(kept.join("none.json")).arg("--with").arg(kept.join("hybrid.json")).arg("--json").output().unwrap();
    let compared = String::from_utf8_lossy(&compared.stdout);
    assert!(compared.contains("\"tasks\":3"), "{compared}");
    // Only some modes: those alone, from what the run has.
    let two = parse(&kenning(&[&with_out[..], &["--modes", "ft,none"]].concat()));
    assert_eq!(two.iter().map(|r| r["mode"].as_str().unwrap()).collect::<Vec<_>>(), ["none", "ft"]);
    same(&two, &[rows[0].clone(), rows[2].clone()]);
    // Carrying on with a setting changed would mix two runs: refused, saying what changed.
    let other = run(&[&with_out[..], &["--set", "completion.prompt_tokens=512"]].concat());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && stderr.contains("holds another run") && stderr.contains("completion"), "{stderr}");

    // ft without an adapter anywhere is a clear error, before any model loads.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kenning"))
        .args(["--cache-dir", dir.path().join("empty-cache").to_str().unwrap()])
        .args(&common[..])
        .args(["--mode", "ft"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("need an adapter") && stderr.contains("kenning train"), "{stderr}");
}

/// A repository of `n` small Rust files, each a function of its own (enough for a held-out split).
fn small_repo(root: &std::path::Path, n: usize) {
    for i in 0..n {
        let path = root.join("src").join(format!("part{i}.rs"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = format!(
            "/// The total of part {i} for `items`, in cents.\npub fn part{i}_total(items: &[u64]) -> u64 {{\n    let base: u64 = items.iter().sum();\n    let fee = base / {};\n    base * {} / 100 + fee\n}}\n",
            7 + i,
            100 + i
        );
        std::fs::write(path, text).unwrap();
    }
}

#[test]
fn kenning_train_switches_the_adapter_on_only_when_it_measurably_helps() {
    let kenning = std::path::Path::new(env!("CARGO_BIN_EXE_kenning"));
    let trainer = kenning.with_file_name(format!("kenning-train{}", std::env::consts::EXE_SUFFIX));
    assert!(trainer.is_file(), "{} is missing: `cargo build -p kenning-training` first (scripts/test does)", trainer.display());
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // 60 files: 6 held out (the split hashes paths), enough for a measurement to decide on.
    small_repo(&repo, 60);
    let config = repo.join("kenning.toml");
    let paths = Paths::from_env();
    let root = repo.canonicalize().unwrap();
    let adapter = paths.training_for(&root).join("adapters");
    let candidate = paths.training_for(&root).join("adapters.candidate");
    let train = |extra: &[&str]| {
        let out = std::process::Command::new(kenning)
            .arg("train")
            .arg(&repo)
            .args(["--model", "smollm2-135m", "--num-layers", "2", "--max-seq-length", "64", "--eval-tasks", "6", "--eval-threads", "1"])
            .args(if extra.contains(&"--iters") { &[][..] } else { &["--iters", "2"][..] })
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "kenning train {extra:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };

    // A run expected to be refused before anything is trained: its stdout and stderr, once it
    // failed. (Fast settings where a regression would train: it then fails rather than trains Qwen
    // for real.)
    let refused = |args: &[&str]| {
        let run = std::process::Command::new(kenning).arg("train").arg(&repo).args(args).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout).into_owned(), String::from_utf8_lossy(&run.stderr).into_owned());
        assert!(!run.status.success(), "kenning train {args:?} was not refused: {stdout}\n{stderr}");
        (stdout, stderr)
    };
    let fast = ["--iters", "1", "--num-layers", "1", "--max-seq-length", "64", "--eval-tasks", "6"];

    // Without --model, the model the workspace completes with is fine-tuned: here the default,
    // Qwen, with FIM examples, whose context needs an index (refused before anything is mined).
    let (stdout, stderr) = refused(&["--context-share", "0.5"]);
    assert!(stdout.contains("fine-tuning qwen2.5-coder-0.5b: the model the workspace completes with"), "{stdout}");
    assert!(stderr.contains("needs the workspace indexed"), "{stderr}");
    // An editor whose own settings choose SmolLM2 passes them on (`--set`, as the VS Code extension
    // does): SmolLM2 is fine-tuned, with no FIM examples by default, so context is refused for that.
    let (stdout, stderr) = refused(&["--context-share", "0.5", "--set", "generation.model=\"smollm2-135m\""]);
    assert!(stdout.contains("fine-tuning smollm2-135m: the model the workspace completes with"), "{stdout}");
    assert!(stderr.contains("give --fim-per-kb too"), "{stderr}");

    // A gain no adapter can show (100 points): measured without retrieval (nothing is indexed),
    // reported, and not switched on; the adapter stays beside where it would go.
    // Registering it would switch completions from the default model to SmolLM2 with the adapter,
    // so that is what is measured against what completes now.
    let out = train(&["--min-gain", "100"]);
    assert!(out.contains("ft - none: edit similarity") && out.contains(", identifier match ") && out.contains("not registered"), "{out}");
    assert!(out.contains("ft (smollm2-135m + adapter) against none (qwen2.5-coder-0.5b, what the workspace completes with now, without an adapter)"), "{out}");
    assert!(out.contains("note: with no [generation] in kenning.toml, completions come from qwen2.5-coder-0.5b; registering this adapter writes one, switching them to smollm2-135m with it"), "{out}");
    assert!(!config.exists(), "kenning.toml was written although the adapter did not pass: {out}");
    assert!(candidate.join("adapters.safetensors").is_file() && !adapter.exists(), "{out}");

    // A bar every adapter passes: the same measurement, with retrieval now that the repository is
    // indexed, switches it on.
    let index = std::process::Command::new(kenning).arg("index").arg(&repo).output().unwrap();
    assert!(index.status.success(), "{}", String::from_utf8_lossy(&index.stderr));
    // The same data and training settings as the candidate left there: it is not trained again.
    let out = train(&["--min-gain", "-100"]);
    assert!(out.contains("All 2 iterations were done already"), "{out}");
    assert!(out.contains("hybrid - rag: edit similarity") && out.contains("registered the adapter"), "{out}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("[generation]") && written.contains(&format!("adapter = {:?}", adapter.display().to_string())), "{written}");
    let in_use = std::fs::read(adapter.join("adapters.safetensors")).unwrap();
    assert!(!candidate.exists(), "the candidate that passed became the adapter");

    // The same command again: the adapter in use is that run's result, so nothing is trained or
    // measured again.
    let out = train(&["--min-gain", "-100"]);
    assert!(out.contains("was trained on this data with these settings already: it is left as it is"), "{out}");
    assert!(!out.contains("Starting training") && !out.contains("hybrid - rag"), "{out}");
    assert!(!candidate.exists() && std::fs::read(adapter.join("adapters.safetensors")).unwrap() == in_use, "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);

    // Trained again (another learning rate: other weights), an adapter that does not pass replaces
    // neither the configuration nor the adapter it names.
    // Measured against the model in use, SmolLM2 now, without an adapter.
    let out = train(&["--min-gain", "100", "--learning-rate", "0.001"]);
    assert!(out.contains("not registered") && out.contains("still completes with"), "{out}");
    assert!(out.contains("hybrid (smollm2-135m + adapter) against rag (smollm2-135m without an adapter)"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
    assert!(std::fs::read(adapter.join("adapters.safetensors")).unwrap() == in_use, "the adapter in use was replaced");

    // An adapter for another model cannot replace the one in use (kenning.toml would then pair
    // SmolLM2 with it): refused before anything is trained.
    let (stdout, stderr) = refused(&[&["--model", "qwen2.5-coder-0.5b"][..], &fast].concat());
    assert!(stderr.contains("an adapter for qwen2.5-coder-0.5b cannot replace it"), "{stderr}");
    assert!(!stdout.contains("Starting training"), "trained before refusing");
    assert!(std::fs::read(adapter.join("adapters.safetensors")).unwrap() == in_use);
    // Nor when an editor's own settings choose Qwen (the default is then Qwen): kenning.toml pairs
    // the adapter in use with SmolLM2 still.
    let (_, stderr) = refused(&[&["--set", "generation.model=\"qwen2.5-coder-0.5b\""][..], &fast].concat());
    assert!(stderr.contains("kenning.toml completes with smollm2-135m and the adapter in"), "{stderr}");
    assert!(stderr.contains("an adapter for qwen2.5-coder-0.5b cannot replace it"), "{stderr}");
    assert!(std::fs::read(adapter.join("adapters.safetensors")).unwrap() == in_use);

    // A run saved with other settings is not carried on: it starts over and says what changed.
    // `--register never` leaves the adapter in use as it is: the new one stays beside it.
    let out = train(&["--register", "never", "--iters", "3", "--learning-rate", "0.001"]);
    assert!(out.contains("asked something else (iters: 2 -> 3)") && out.contains("Starting training"), "{out}");
    assert!(out.contains("left as it was") && candidate.join("adapters.safetensors").is_file(), "{out}");
    assert!(std::fs::read(adapter.join("adapters.safetensors")).unwrap() == in_use, "--register never replaced the adapter in use: {out}");
    // --fresh trains again what was done already.
    let out = train(&["--register", "never", "--iters", "3", "--learning-rate", "0.001", "--fresh"]);
    assert!(!out.contains("done already") && out.contains("Starting training"), "{out}");
    // --register always replaces it without a measurement.
    let out = train(&["--register", "always", "--iters", "3", "--learning-rate", "0.001"]);
    assert!(out.contains("All 3 iterations were done already") && !out.contains("hybrid - rag"), "{out}");
    assert!(out.contains("the new adapter replaced the one there") && !candidate.exists(), "{out}");
    let replaced = std::fs::read(adapter.join("adapters.safetensors")).unwrap();
    assert!(replaced != in_use, "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
    // And once more: carried on from the adapter itself, which is that run's result.
    let out = train(&["--register", "always", "--iters", "3", "--learning-rate", "0.001"]);
    assert!(out.contains("it is left as it is") && !candidate.exists(), "{out}");
    assert!(std::fs::read(adapter.join("adapters.safetensors")).unwrap() == replaced, "{out}");

    // Completions (a prompt, the loss on what follows it) for SmolLM2, which has no FIM tokens:
    // mined, written in mlx_lm's completion format and trained on.
    let other = dir.path().join("completions");
    let out = train(&["--register", "never", "--fim-per-kb", "4", "--adapter-path", other.to_str().unwrap()]);
    let train_rows = out.lines().find(|l| l.starts_with("train ")).unwrap_or_else(|| panic!("no counts: {out}"));
    let fim: usize = train_rows.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(fim > 0 && out.contains("Starting training") && other.join("adapters.safetensors").is_file(), "{out}");
    let data = std::fs::read_to_string(paths.training_for(&root).join("data").join("train.jsonl")).unwrap();
    let pairs: Vec<serde_json::Value> = data.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v.get("prompt").is_some()).collect();
    assert_eq!(pairs.len(), fim, "{out}");
    assert!(pairs.iter().all(|v| v["completion"].as_str().is_some_and(|c| !c.trim().is_empty())), "{pairs:?}");
    // The test loss covers the held-out completions (and windows): a number.
    let test_loss: f64 = out.lines().find_map(|l| l.strip_prefix("Test loss ")?.split(',').next()?.parse().ok()).unwrap_or_else(|| panic!("no test loss: {out}"));
    assert!(test_loss.is_finite() && test_loss > 0.0, "{out}");
    // All of them carrying the context a completion there carries, from the index (no held-out
    // file in it); asked without completions to carry it, refused.
    // (Examples long enough for a snippet beside the code.)
    let run = std::process::Command::new(kenning)
        .arg("train")
        .arg(&repo)
        .args(["--model", "smollm2-135m", "--num-layers", "2", "--max-seq-length", "256", "--iters", "2", "--register", "never"])
        .args(["--fim-per-kb", "4", "--context-share", "1", "--adapter-path", other.to_str().unwrap()])
        .args(["--rank", "4", "--scale", "2.5"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{out}\n{}", String::from_utf8_lossy(&run.stderr));
    // The adapter's rank and scale are the ones asked for.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(other.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["lora_parameters"]["rank"].as_u64(), config["lora_parameters"]["scale"].as_f64()), (Some(4), Some(2.5)), "{config}");
    let carrying: usize = out.lines().find_map(|l| l.split(" fill-in-the-middle examples carry").next().filter(|n| n.len() < l.len())?.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert!(carrying > 0 && out.contains("Starting training"), "{out}");
    let split: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(paths.training_for(&root).join("data").join("dataset.json")).unwrap()).unwrap();
    let held_out: Vec<&str> = split["files"].as_object().unwrap().iter().filter(|(_, s)| s.as_str() != Some("train")).map(|(p, _)| p.as_str()).collect();
    let prompts = |split: &str| -> Vec<String> {
        let data = std::fs::read_to_string(paths.training_for(&root).join("data").join(format!("{split}.jsonl"))).unwrap();
        data.lines().filter_map(|l| Some(serde_json::from_str::<serde_json::Value>(l).ok()?["prompt"].as_str()?.to_owned())).collect()
    };
    let all: Vec<String> = ["train", "valid", "test"].into_iter().flat_map(prompts).collect();
    assert_eq!(all.iter().filter(|p| p.starts_with("// src/")).count(), carrying, "{all:?}");
    // A snippet is commented, its file named first: no training prompt names a held-out file.
    assert!(prompts("train").iter().all(|p| held_out.iter().all(|h| !p.contains(&format!("// {h}\n")))), "a held-out file in a prompt");
    // Now that kenning.toml completes with SmolLM2, that is what is fine-tuned without --model: it
    // has no FIM tokens, so no FIM examples by default, and context for them is refused.
    let (stdout, stderr) = refused(&["--context-share", "0.5"]);
    assert!(stdout.contains("fine-tuning smollm2-135m: the model the workspace completes with"), "{stdout}");
    assert!(stderr.contains("give --fim-per-kb too"), "{stderr}");
    // An editor whose own settings complete with Qwen over kenning.toml's SmolLM2: a SmolLM2 adapter
    // is written but not registered (kenning.toml's model would not reach that editor).
    let editor = dir.path().join("editor");
    let run = std::process::Command::new(kenning)
        .arg("train")
        .arg(&repo)
        .args(["--model", "smollm2-135m", "--num-layers", "2", "--max-seq-length", "64", "--iters", "2", "--register", "always"])
        .args(["--set", "generation.model=\"qwen2.5-coder-0.5b\"", "--adapter-path", editor.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.contains("note: the editor's settings (--set) complete with qwen2.5-coder-0.5b over kenning.toml, and an adapter for smollm2-135m would not reach them: it is only trained"), "{out}");
    assert!(out.contains(&format!("adapter written to {}", editor.display())) && !out.contains("registered the adapter") && !out.contains("hybrid - rag"), "{out}");
    assert!(editor.join("adapters.safetensors").is_file(), "{out}");
    assert_eq!(std::fs::read_to_string(repo.join("kenning.toml")).unwrap(), written);
    for (flag, value) in [("--rank", "0"), ("--scale", "-1"), ("--learning-rate", "0"), ("--num-layers", "0"), ("--max-seq-length", "16")] {
        let (_, stderr) = refused(&["--iters", "1", flag, value]);
        assert!(stderr.contains(&format!("invalid value '{value}' for '{flag}")), "{flag} {value}: {stderr}");
    }

    // A directory that holds more than an adapter is not taken for one (it would be replaced whole).
    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let (_, stderr) = refused(&["--adapter-path", mine.to_str().unwrap()]);
    assert!(stderr.contains("which is not an adapter's"), "{stderr}");
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "mine");

    // What the runs left in the cache (the index and the training directory of a temporary repository).
    for left in [paths.index_for(&root), paths.training_for(&root)] {
        let _ = std::fs::remove_dir_all(left);
    }
}

#[cfg(unix)]
#[test]
fn kenning_train_stopped_with_ctrl_c_carries_on_when_run_again() {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::CommandExt;
    let kenning = std::path::Path::new(env!("CARGO_BIN_EXE_kenning"));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    small_repo(&repo, 20);
    let root = repo.canonicalize().unwrap();
    let paths = Paths::from_env();
    let command = || {
        let mut c = std::process::Command::new(kenning);
        c.arg("train").arg(&repo).args(["--model", "smollm2-135m", "--iters", "60", "--num-layers", "2", "--max-seq-length", "64", "--register", "never"]);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        c
    };

    // As a terminal does: Ctrl-C sends SIGINT to the whole foreground process group (kenning and
    // its trainer), here once the trainer has reported iteration 10.
    let mut child = command().process_group(0).spawn().unwrap();
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.starts_with("Iter 10: Train loss") {
            nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
        }
        line.clear();
    }
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.code() == Some(130) && seen.contains("stopped early"), "the status of an interrupted command: {status}\n{seen}\n{stderr}");
    assert!(stderr.contains("training was stopped") && stderr.contains("carries on"), "kenning waited for its trainer and said so: {stderr}");
    assert!(!seen.contains("adapter written to"), "a stopped run is not reported as an adapter: {seen}");

    let again = command().output().unwrap();
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{out}\n{}", String::from_utf8_lossy(&again.stderr));
    let from: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("Resuming training from iteration ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("not resumed: {out}"));
    assert!((10..60).contains(&from), "resumed from iteration {from}: {out}");
    assert!(out.contains("(60 iterations,") && !out.contains("Iter 10: Train loss"), "iteration 10 is not trained again: {out}");
    let adapter = paths.training_for(&root).join("adapters");
    assert!(out.contains("adapter written to") && adapter.join("adapters.safetensors").is_file(), "{out}");
    assert!(!paths.training_for(&root).join("adapters.candidate").exists(), "the finished run was moved over the adapter: {out}");

    // The adapter copied elsewhere without its checkpoints and optimizer moments (as
    // training/measurements keeps one) is still the finished run: nothing is trained again.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for file in ["adapters.safetensors", "adapter_config.json", "trainer_state.json"] {
        std::fs::copy(adapter.join(file), copy.join(file)).unwrap();
    }
    let weights = std::fs::read(copy.join("adapters.safetensors")).unwrap();
    let kept = command().arg("--adapter-path").arg(&copy).output().unwrap();
    let out = String::from_utf8_lossy(&kept.stdout);
    assert!(kept.status.success(), "{out}\n{}", String::from_utf8_lossy(&kept.stderr));
    assert!(out.contains("was trained on this data with these settings already") && !out.contains("Train loss"), "{out}");
    assert_eq!(std::fs::read(copy.join("adapters.safetensors")).unwrap(), weights, "the copy is left as it was");
    assert!(!dir.path().join("copy.candidate").exists(), "{out}");
    let _ = std::fs::remove_dir_all(paths.training_for(&root));
}
