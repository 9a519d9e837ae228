//! The MLX model against Python mlx_lm on the same weights (the bundled SmolLM2-135M, converted to an
//! MLX directory by scripts/setup): same logits for a prompt within tolerance, same greedy tokens.
//! Needs the mlx venv and the converted model that `scripts/setup` installs.

use std::path::PathBuf;
use std::process::Command;

use kenning_training::model::{Cache, Llama};

fn tools() -> PathBuf {
    kenning_training::models::cache_root().join("tools")
}

#[test]
fn smollm2_logits_and_greedy_tokens_match_mlx_lm() {
    let model_dir = tools().join("smollm2-135m-mlx");
    let python = tools().join("mlx/bin/python");
    assert!(model_dir.join("config.json").is_file() && python.is_file(), "run scripts/setup (the MLX model and mlx_lm are missing)");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/mlx_reference.py");
    let out = Command::new(&python).arg(&script).arg(&model_dir).arg("fn fibonacci(n: u64) -> u64 {").arg("8").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = reference["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let expected: Vec<f32> = reference["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let greedy: Vec<u32> = reference["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();

    let model = Llama::load(&model_dir).unwrap();
    let logits = model.forward(&ids, &mut Cache::default()).unwrap();
    let last = logits.index((-1, ..));
    last.eval().unwrap();
    let ours = last.as_slice::<f32>();
    assert_eq!(ours.len(), expected.len());
    let diffs: Vec<f32> = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).collect();
    let max_diff = diffs.iter().copied().fold(0.0f32, f32::max);
    let mean_diff = diffs.iter().sum::<f32>() / diffs.len() as f32;
    // mlx_lm multiplies with quantized kernels, we with the same weights dequantized to f32: logits
    // of magnitude ~30 agree to about 0.2 %.
    assert!(max_diff < 0.1 && mean_diff < 0.02, "logit differences: largest {max_diff}, mean {mean_diff}");
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(argmax(ours), argmax(&expected));

    let ours = model.greedy(&ids, greedy.len(), &[2]).unwrap();
    assert_eq!(ours, greedy, "greedy continuation");
}

use mlx_rs::ops::indexing::IndexOp;
