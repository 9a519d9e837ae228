//! LoRA on the bundled SmolLM2-135M (the MLX directory scripts/setup converts): the layer math,
//! fusing, a short training run on real code, checkpoints, and adapters exchanged with Python mlx_lm
//! in both directions. Needs what `scripts/setup` installs (the converted model, the mlx venv).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use kenning_training::data;
use kenning_training::lora::{Lora, LoraParameters};
use kenning_training::model::{Cache, Llama};
use kenning_training::text::TextModel;
use kenning_training::train::{self, TrainOptions};
use mlx_rs::Array;
use mlx_rs::ops::indexing::IndexOp;

fn tools() -> PathBuf {
    kenning_training::models::cache_root().join("tools")
}

fn model_dir() -> PathBuf {
    let dir = tools().join("smollm2-135m-mlx");
    assert!(dir.join("config.json").is_file(), "run scripts/setup (the MLX SmolLM2 is missing)");
    dir
}

const PROMPT: &str = "fn fibonacci(n: u64) -> u64 {";

/// The last position's logits for `PROMPT`.
fn last_logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let logits = model.forward(ids, &mut Cache::default()).unwrap();
    let last = logits.index((-1, ..));
    last.eval().unwrap();
    last.as_slice::<f32>().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Real code for training: this crate's own sources, cut into 12-line windows.
fn code_windows() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut texts = Vec::new();
    for name in ["lora.rs", "train.rs", "data.rs", "model.rs"] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for chunk in lines.chunks(12) {
            texts.push(chunk.join("\n"));
        }
    }
    texts
}

fn write_data(dir: &Path, train: &[String], valid: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, texts) in [("train", train), ("valid", valid), ("test", valid)] {
        let lines: Vec<String> = texts.iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
        std::fs::write(dir.join(format!("{name}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
}

/// Python of the mlx venv, with OpenBLAS in front of the wheel's reference BLAS when present (as
/// kenning's own binaries link it), so the Python side is not needlessly slow.
fn python() -> Command {
    let python = tools().join("mlx/bin/python");
    assert!(python.is_file(), "run scripts/setup (the mlx venv is missing)");
    let mut cmd = Command::new(python);
    for lib in ["/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0"] {
        if Path::new(lib).exists() && cfg!(target_os = "linux") {
            cmd.env("LD_PRELOAD", lib);
        }
    }
    cmd
}

/// mlx_lm's logits for `PROMPT` with the adapter in `adapter` (and the prompt's ids).
fn mlx_lm_logits(adapter: &Path) -> (Vec<u32>, Vec<f32>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mlx_reference.py");
    let out = python().arg(script).arg(model_dir()).arg(PROMPT).arg("1").arg(adapter).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let logits = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    (ids, logits)
}

fn tokenized(model: &TextModel, texts: &[String]) -> Vec<data::Example> {
    let texts: Vec<data::Text> = texts.iter().map(data::Text::whole).collect();
    data::tokenize(&texts, |t| model.encode(t).map_err(|e| e.to_string()), model.eos().unwrap(), None, 64).unwrap().0
}

fn options(iters: usize, learning_rate: f32) -> TrainOptions {
    TrainOptions { iters, batch_size: 2, learning_rate, warmup: 0, steps_per_report: 1, steps_per_eval: iters, val_batches: 0, save_every: 0, ..TrainOptions::default() }
}

/// Trains `iters` steps; returns the adapter and its weights, and the validation losses.
fn train_run(model: &TextModel, lora: &Lora, weights: &mut [Array], iters: usize, lr: f32) -> (f32, f32, Vec<f32>) {
    let texts = code_windows();
    let (valid, train_texts) = texts.split_at(6);
    let train_set = tokenized(model, train_texts);
    let valid_set = tokenized(model, valid);
    let mut losses = Vec::new();
    let mut no_checkpoint = |_: &[Array], state: &train::State| -> Result<PathBuf, kenning_training::model::ModelError> {
        assert_eq!(state.iter, iters, "save_every is 0: only the last iteration is checkpointed");
        Ok(PathBuf::new())
    };
    let splits = train::Splits { train: &train_set, valid: &valid_set };
    let stop = AtomicBool::new(false);
    let control = train::Control { stop: &stop, checkpoint: &mut no_checkpoint, resume: None };
    let outcome = train::train(&model.model, lora, weights, splits, &options(iters, lr), control, |p| {
        if let train::Progress::Train { loss, .. } = p {
            losses.push(loss);
        }
    })
    .unwrap();
    (outcome.first_val_loss.unwrap(), outcome.last_val_loss.unwrap(), losses)
}

#[test]
fn a_fresh_adapter_changes_nothing_and_fusing_equals_the_unfused_forward() {
    let mut model = Llama::load(&model_dir()).unwrap();
    let ids = [100, 200, 300, 400, 500];
    let base = last_logits(&model, &ids);
    let lora = Lora::new(&model.config, 2, LoraParameters { rank: 4, dropout: 0.0, scale: 20.0 });
    let fresh = lora.init(&model.config).unwrap();
    assert_eq!(lora.slots().len(), 14, "7 projections in each of the last 2 layers");
    model.set_adapter(lora.clone(), fresh.clone());
    assert_eq!(last_logits(&model, &ids), base, "B = 0 leaves the outputs unchanged");

    // Non-zero B: the adapter now matters, and merging it into W gives the same function.
    let weights: Vec<Array> = fresh
        .iter()
        .enumerate()
        .map(|(i, w)| if i % 2 == 1 { mlx_rs::random::normal::<f32>(w.shape(), 0.0, 0.02, None).unwrap() } else { w.clone() })
        .collect();
    model.set_adapter(lora.clone(), weights.clone());
    let adapted = last_logits(&model, &ids);
    assert!(max_diff(&adapted, &base) > 0.5, "the adapter should change the logits");
    let mut fused = Llama::load(&model_dir()).unwrap();
    kenning_training::export::fuse(&lora, &weights, &mut fused).unwrap();
    let merged = last_logits(&fused, &ids);
    assert!(max_diff(&merged, &adapted) < 1e-3, "fused vs unfused: {}", max_diff(&merged, &adapted));

    // The fused model written to disk (f16, Hugging Face q/k order) loads and computes the same.
    let out = tempfile::tempdir().unwrap();
    kenning_training::export::write_model_dir(&fused, &model_dir(), out.path()).unwrap();
    let reloaded = Llama::load(out.path()).unwrap();
    assert!(!reloaded.config.rope_traditional);
    let exported = last_logits(&reloaded, &ids);
    assert!(max_diff(&exported, &merged) < 0.15, "exported (f16) vs fused: {}", max_diff(&exported, &merged));
    assert!(out.path().join("Modelfile").is_file() && out.path().join("tokenizer.json").is_file());
}

#[test]
fn training_on_real_code_lowers_the_loss_and_checkpoints_resume() {
    let model = TextModel::load(&model_dir()).unwrap();
    let lora = Lora::new(&model.model.config, 4, LoraParameters { rank: 8, dropout: 0.0, scale: 20.0 });
    mlx_rs::random::seed(7).unwrap();
    let mut weights = lora.init(&model.model.config).unwrap();
    let (first, last, losses) = train_run(&model, &lora, &mut weights, 16, 2e-4);
    assert!(last < first - 0.05, "validation loss {first} -> {last} (train losses {losses:?})");

    // A checkpoint holds exactly the weights; loading it resumes from them.
    let dir = tempfile::tempdir().unwrap();
    let name = kenning_formats::adapter::checkpoint_file(16);
    lora.save(&weights, dir.path(), &name, &serde_json::Map::new()).unwrap();
    let (again, loaded) = Lora::load_file(dir.path(), &dir.path().join(&name), &model.model.config).unwrap();
    assert_eq!(again.slots(), lora.slots());
    for (a, b) in weights.iter().zip(&loaded) {
        assert_eq!(a.as_slice::<f32>(), b.as_slice::<f32>());
    }
    let texts = code_windows();
    let valid = tokenized(&model, &texts[..6]);
    let batches = data::batches(&valid, 2);
    let resumed = train::evaluate(&model.model, &again, &loaded, &batches, 0).unwrap();
    assert!((resumed - last).abs() < 1e-4, "resumed weights evaluate to {resumed}, trained to {last}");
}

/// Trains `iters` iterations of batches of 2 from `weights` (and `resume`'s state), with gradient
/// accumulation over 2 micro-batches; stops after `stop_after` iterations when given (the flag is
/// read after each iteration, before its report: it is raised at the report of the one before).
/// Returns the weights and the state of the last checkpoint.
fn run_to(model: &TextModel, lora: &Lora, mut weights: Vec<Array>, iters: usize, stop_after: Option<usize>, resume: Option<train::State>) -> (Vec<Array>, train::State) {
    let texts = code_windows();
    let train_set = tokenized(model, &texts[6..14]);
    let options = TrainOptions { grad_accumulation: 2, warmup: 2, steps_per_eval: 0, ..options(iters, 2e-4) };
    let mut last = None;
    let mut checkpoint = |_: &[Array], state: &train::State| -> Result<PathBuf, kenning_training::model::ModelError> {
        last = Some(state.clone());
        Ok(PathBuf::new())
    };
    let stop = AtomicBool::new(false);
    let control = train::Control { stop: &stop, checkpoint: &mut checkpoint, resume };
    train::train(&model.model, lora, &mut weights, train::Splits { train: &train_set, valid: &[] }, &options, control, |p| {
        if let train::Progress::Train { iter, .. } = p
            && Some(iter + 1) == stop_after
        {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    (weights, last.expect("a checkpoint at the end"))
}

#[test]
fn a_stopped_run_resumed_from_its_saved_state_ends_with_the_weights_of_an_uninterrupted_one() {
    let model = TextModel::load(&model_dir()).unwrap();
    // Dropout on: its masks must be drawn again the same way after the stop.
    let lora = Lora::new(&model.model.config, 2, LoraParameters { rank: 4, dropout: 0.05, scale: 20.0 });
    mlx_rs::random::seed(3).unwrap();
    let fresh = lora.init(&model.model.config).unwrap();
    // 9 iterations over 4 batches (8 examples, 2 a batch): epochs end and reshuffle inside the run,
    // and a stop after iteration 5 falls in the middle of an accumulated update.
    let (straight, _) = run_to(&model, &lora, fresh.clone(), 9, None, None);

    let (stopped, state) = run_to(&model, &lora, fresh.clone(), 9, Some(5), None);
    assert_eq!(state.iter, 5, "the stop is checkpointed");
    assert!(state.pending.is_some(), "iteration 5 is half of an update of 2 micro-batches");
    let dir = tempfile::tempdir().unwrap();
    lora.save(&stopped, dir.path(), "0000005_adapters.safetensors", &serde_json::Map::new()).unwrap();
    state.save(dir.path(), "same run", &lora.names()).unwrap();
    let saved = train::State::read(dir.path()).unwrap().expect("a saved state");
    assert_eq!((saved.fingerprint(), saved.iter()), ("same run", 5));
    // As kenning-train resumes: the adapter and weights from the checkpoint file, the moments by name.
    let (again, weights) = Lora::load_file(dir.path(), &dir.path().join("0000005_adapters.safetensors"), &model.model.config).unwrap();
    let loaded = saved.load(dir.path(), &again.names()).unwrap();
    assert_eq!((loaded.iter, loaded.rng, &loaded.order, loaded.adam_step), (state.iter, state.rng, &state.order, state.adam_step));
    let (resumed, end) = run_to(&model, &again, weights.clone(), 9, None, Some(loaded.clone()));
    assert_eq!(end.iter, 9);
    let mut moved = 0.0f32;
    for ((a, b), f) in straight.iter().zip(&resumed).zip(&fresh) {
        let (a, b, f) = (a.as_slice::<f32>(), b.as_slice::<f32>(), f.as_slice::<f32>());
        assert!(max_diff(a, b) < 1e-6, "resumed vs uninterrupted: {}", max_diff(a, b));
        moved = moved.max(max_diff(a, f));
    }
    assert!(moved > 1e-4, "training moved the weights ({moved})");

    // The moments matter: the same weights, batch order and schedule with a fresh optimizer end elsewhere.
    let zeros = |list: &[Array]| list.iter().map(|a| Array::zeros::<f32>(a.shape()).unwrap()).collect::<Vec<_>>();
    let forgetful = train::State { m: zeros(&loaded.m), v: zeros(&loaded.v), adam_step: 0, ..loaded };
    let (other, _) = run_to(&model, &again, weights, 9, None, Some(forgetful));
    let apart = straight.iter().zip(&other).map(|(a, b)| max_diff(a.as_slice::<f32>(), b.as_slice::<f32>())).fold(0.0, f32::max);
    assert!(apart > 1e-5, "without the optimizer's moments the run should end elsewhere ({apart})");
    assert!(train::State::read(&dir.path().join("elsewhere")).unwrap().is_none());

    // Damaged (a cut write, a hand edit): an error to say, not a state to train on.
    let moments = dir.path().join("trainer_state.safetensors");
    let bytes = std::fs::read(&moments).unwrap();
    std::fs::write(&moments, &bytes[..bytes.len() / 2]).unwrap();
    let saved = train::State::read(dir.path()).unwrap().expect("the JSON is whole");
    assert!(saved.load(dir.path(), &again.names()).is_err(), "half the moments");
    std::fs::write(dir.path().join(kenning_formats::adapter::STATE_FILE), "{\"iter\": ").unwrap();
    assert!(train::State::read(dir.path()).is_err(), "cut JSON");
}

#[test]
fn adapters_trained_here_load_in_mlx_lm_and_mlx_lm_adapters_load_here() {
    let model = TextModel::load(&model_dir()).unwrap();
    let ids = model.encode(PROMPT).unwrap();
    let base = last_logits(&model.model, &ids);

    // Rust → mlx_lm: a few steps at a high learning rate, so the adapter visibly moves the logits
    // (the data is this crate's sources: enough steps that an edit to them keeps it visible).
    let lora = Lora::new(&model.model.config, 2, LoraParameters { rank: 4, dropout: 0.0, scale: 20.0 });
    mlx_rs::random::seed(3).unwrap();
    let mut weights = lora.init(&model.model.config).unwrap();
    train_run(&model, &lora, &mut weights, 8, 1e-3);
    let dir = tempfile::tempdir().unwrap();
    let ours_dir = dir.path().join("kenning");
    lora.save(&weights, &ours_dir, "adapters.safetensors", &serde_json::Map::new()).unwrap();
    let mut adapted = Llama::load(&model_dir()).unwrap();
    let (l, w) = Lora::load(&ours_dir, &adapted.config).unwrap();
    adapted.set_adapter(l, w);
    let ours = last_logits(&adapted, &ids);
    assert!(max_diff(&ours, &base) > 0.5, "the trained adapter should move the logits: {}", max_diff(&ours, &base));
    let (py_ids, theirs) = mlx_lm_logits(&ours_dir);
    assert_eq!(py_ids, ids);
    // Same tolerance as the base model's parity (quantized kernels there, f32 here).
    assert!(max_diff(&ours, &theirs) < 0.15, "kenning vs mlx_lm with kenning's adapter: {}", max_diff(&ours, &theirs));

    // mlx_lm → Rust: mlx_lm.lora trains an adapter on the same data; kenning loads it.
    let data_dir = dir.path().join("data");
    let texts = code_windows();
    write_data(&data_dir, &texts[6..], &texts[..6]);
    let theirs_dir = dir.path().join("mlx_lm");
    let out = python()
        .args(["-m", "mlx_lm", "lora", "--train", "--model"])
        .arg(model_dir())
        .arg("--data")
        .arg(&data_dir)
        .arg("--adapter-path")
        .arg(&theirs_dir)
        .args(["--iters", "3", "--batch-size", "2", "--num-layers", "2", "--learning-rate", "1e-3", "--max-seq-length", "64"])
        .args(["--steps-per-eval", "100", "--val-batches", "1", "--steps-per-report", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "mlx_lm.lora failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut loaded = Llama::load(&model_dir()).unwrap();
    let (l, w) = Lora::load(&theirs_dir, &loaded.config).unwrap();
    assert_eq!(l.num_layers, 2);
    loaded.set_adapter(l, w);
    let ours = last_logits(&loaded, &ids);
    let (_, theirs) = mlx_lm_logits(&theirs_dir);
    assert!(max_diff(&theirs, &base) > 0.05, "mlx_lm's adapter should move the logits");
    assert!(max_diff(&ours, &theirs) < 0.15, "kenning vs mlx_lm with mlx_lm's adapter: {}", max_diff(&ours, &theirs));
}

/// The loss and its gradients with respect to every adapter weight, on one batch of real code.
fn loss_and_gradients(model: &TextModel, lora: &Lora, weights: &[Array], checkpoint: bool) -> (f32, Vec<Vec<f32>>) {
    let batch = data::batches(&tokenized(model, &code_windows()[..4]), 4).remove(0);
    let arrays = train::BatchArrays::from(&batch);
    let step = |p: &[Array]| -> Result<Vec<Array>, mlx_rs::error::Exception> {
        let adapter = kenning_training::model::Adapter { hook: lora, params: p, dropout: false, checkpoint };
        let (loss, _) = train::loss(&model.model, adapter, &arrays)?;
        Ok(vec![loss])
    };
    let argnums: Vec<i32> = (0..weights.len() as i32).collect();
    let (value, grads) = mlx_rs::transforms::value_and_grad_with_argnums(step, argnums.as_slice())(weights).unwrap();
    mlx_rs::transforms::eval(value.iter().chain(grads.iter())).unwrap();
    (value[0].item_exact::<f32>(), grads.iter().map(|g| g.as_slice::<f32>().to_vec()).collect())
}

#[test]
fn checkpointed_layers_give_the_same_loss_and_gradients() {
    let model = TextModel::load(&model_dir()).unwrap();
    let lora = Lora::new(&model.model.config, 3, LoraParameters { rank: 4, dropout: 0.0, scale: 20.0 });
    mlx_rs::random::seed(11).unwrap();
    // B ≠ 0, so that the gradients of A are not zero either.
    let weights: Vec<Array> = lora
        .init(&model.model.config)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, w)| if i % 2 == 1 { mlx_rs::random::normal::<f32>(w.shape(), 0.0, 0.02, None).unwrap() } else { w.clone() })
        .collect();
    let (loss, grads) = loss_and_gradients(&model, &lora, &weights, false);
    let (loss_c, grads_c) = loss_and_gradients(&model, &lora, &weights, true);
    assert!((loss - loss_c).abs() < 1e-5, "loss {loss} vs {loss_c} checkpointed");
    assert_eq!(grads.len(), grads_c.len());
    for (i, (g, gc)) in grads.iter().zip(&grads_c).enumerate() {
        let scale = g.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "gradient {i} is zero");
        assert!(max_diff(g, gc) <= 1e-3 * scale, "gradient {i}: {} apart (largest {scale})", max_diff(g, gc));
    }
}
