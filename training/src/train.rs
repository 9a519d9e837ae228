//! The LoRA training loop: masked cross-entropy on the adapter's weights only (the base model is a
//! constant of the loss function, so it is frozen by construction), AdamW with linear warmup and
//! cosine decay, gradient accumulation, periodic validation, checkpoints, and a stop flag (Ctrl-C)
//! that ends the run with the last weights saved. A checkpoint carries the run's whole [`State`]
//! (optimizer moments, batch order, iteration), so a stopped or killed run carries on exactly where
//! its last checkpoint was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mlx_rs::error::Exception;
use mlx_rs::{Array, transforms};

use crate::data::{Batch, Example, batches};
use crate::lora::{Lora, sync};
use crate::model::{Adapter, Llama, ModelError};

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    /// Linear warmup, then cosine decay to a tenth of the peak at the last step.
    Cosine,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub iters: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub schedule: Schedule,
    pub warmup: usize,
    pub weight_decay: f32,
    /// Micro-batches whose gradients are averaged into one update.
    pub grad_accumulation: usize,
    /// Checkpoint the adapted layers (see [`crate::checkpoint`]); needs dropout 0.
    pub grad_checkpoint: bool,
    pub steps_per_report: usize,
    pub steps_per_eval: usize,
    /// Validation batches per evaluation (0 = the whole split).
    pub val_batches: usize,
    pub save_every: usize,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            iters: 1000,
            batch_size: 4,
            learning_rate: 1e-5,
            schedule: Schedule::Cosine,
            warmup: 0,
            weight_decay: 0.01,
            grad_accumulation: 1,
            grad_checkpoint: false,
            steps_per_report: 10,
            steps_per_eval: 200,
            val_batches: 25,
            save_every: 100,
            seed: 0,
        }
    }
}

/// What the loop reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Train { iter: usize, loss: f32, learning_rate: f32, iters_per_sec: f32, tokens_per_sec: f32, trained_tokens: usize, peak_memory: usize },
    Val { iter: usize, loss: f32, seconds: f32 },
    Saved { iter: usize, path: PathBuf },
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub iters: usize,
    pub trained_tokens: usize,
    pub seconds: f32,
    pub first_val_loss: Option<f32>,
    pub last_val_loss: Option<f32>,
    pub stopped: bool,
}

/// Masked mean cross-entropy of `model` + adapter on `batch`, and the number of counted tokens.
pub fn loss(model: &Llama, adapter: Adapter<'_>, batch: &BatchArrays) -> Result<(Array, Array), Exception> {
    let logits = model.logits(&batch.inputs, Some(adapter))?;
    let lse = logits.logsumexp_axis(-1, false)?;
    let picked = logits.take_along_axis(batch.targets.expand_dims(-1)?, -1)?.squeeze_axes(&[-1])?;
    let tokens = batch.mask.sum(false)?;
    let total = lse.subtract(&picked)?.multiply(&batch.mask)?.sum(false)?;
    Ok((total.divide(&tokens)?, tokens))
}

/// A [`Batch`] as MLX arrays.
pub struct BatchArrays {
    pub inputs: Array,
    pub targets: Array,
    pub mask: Array,
    pub tokens: usize,
}

impl From<&Batch> for BatchArrays {
    fn from(b: &Batch) -> Self {
        let shape = [b.batch as i32, b.len as i32];
        Self {
            inputs: Array::from_slice(&b.inputs, &shape),
            targets: Array::from_slice(&b.targets, &shape),
            mask: Array::from_slice(&b.mask, &shape),
            tokens: b.tokens,
        }
    }
}

/// Token-weighted mean loss over up to `limit` batches (0 = all), without dropout.
pub fn evaluate(model: &Llama, lora: &Lora, params: &[Array], batches: &[Batch], limit: usize) -> Result<f32, Exception> {
    let take = if limit == 0 { batches.len() } else { limit.min(batches.len()) };
    let (mut sum, mut count) = (0.0f64, 0usize);
    for b in &batches[..take] {
        let arrays = BatchArrays::from(b);
        let (l, _) = loss(model, Adapter { hook: lora, params, dropout: false, checkpoint: false }, &arrays)?;
        l.eval()?;
        sum += f64::from(scalar(&l)?) * b.tokens as f64;
        count += b.tokens;
    }
    Ok(if count == 0 { f32::NAN } else { (sum / count as f64) as f32 })
}

/// The learning rate of update `step` (1-based) out of `total`.
pub fn learning_rate(options: &TrainOptions, step: usize, total: usize) -> f32 {
    let peak = options.learning_rate;
    if options.warmup > 0 && step <= options.warmup {
        return peak * step as f32 / options.warmup as f32;
    }
    match options.schedule {
        Schedule::Constant => peak,
        Schedule::Cosine => {
            let span = total.saturating_sub(options.warmup).max(1) as f32;
            let t = (step.saturating_sub(options.warmup) as f32 / span).min(1.0);
            let floor = peak * 0.1;
            floor + (peak - floor) * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
        }
    }
}

/// AdamW state for a list of parameters.
struct AdamW {
    m: Vec<Array>,
    v: Vec<Array>,
    step: i32,
}

impl AdamW {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(params: &[Array]) -> Result<Self, Exception> {
        let zeros = |p: &Array| Array::zeros::<f32>(p.shape());
        Ok(Self { m: params.iter().map(zeros).collect::<Result<_, _>>()?, v: params.iter().map(zeros).collect::<Result<_, _>>()?, step: 0 })
    }

    fn update(&mut self, params: &mut [Array], grads: &[Array], lr: f32, weight_decay: f32) -> Result<(), Exception> {
        self.step += 1;
        let c1 = 1.0 - Self::B1.powi(self.step);
        let c2 = 1.0 - Self::B2.powi(self.step);
        for (i, g) in grads.iter().enumerate() {
            self.m[i] = self.m[i].multiply(Array::from_f32(Self::B1))?.add(g.multiply(Array::from_f32(1.0 - Self::B1))?)?;
            self.v[i] = self.v[i].multiply(Array::from_f32(Self::B2))?.add(g.square()?.multiply(Array::from_f32(1.0 - Self::B2))?)?;
            let m_hat = self.m[i].divide(Array::from_f32(c1))?;
            let v_hat = self.v[i].divide(Array::from_f32(c2))?;
            let step = m_hat.divide(v_hat.sqrt()?.add(Array::from_f32(Self::EPS))?)?;
            params[i] = params[i].multiply(Array::from_f32(1.0 - lr * weight_decay))?.subtract(step.multiply(Array::from_f32(lr))?)?;
        }
        let mut all: Vec<&Array> = params.iter().collect();
        all.extend(self.m.iter());
        all.extend(self.v.iter());
        transforms::eval(all)
    }
}

/// Where a run stands after an iteration: with the same examples and options, training on from it
/// gives the weights an uninterrupted run would (dropout's masks too: MLX's random state is seeded
/// per iteration).
#[derive(Debug, Clone)]
pub struct State {
    /// Iterations done.
    pub iter: usize,
    /// The batch shuffler's state.
    pub rng: u64,
    /// Batches of this epoch not yet trained on (taken from the end).
    pub order: Vec<usize>,
    /// AdamW's updates so far, and its moments per parameter.
    pub adam_step: i32,
    pub m: Vec<Array>,
    pub v: Vec<Array>,
    /// Gradients summed so far towards the next update (gradient accumulation).
    pub pending: Option<Vec<Array>>,
    pub trained_tokens: usize,
    pub first_val_loss: Option<f32>,
}

// The files of a saved [`State`], in the adapter directory beside the weights.
use kenning_formats::adapter::{MOMENTS_FILE, STATE_FILE};

#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    /// What the run was asked to do ([`State::save`]'s caller decides; a state is resumed only by a
    /// run whose fingerprint is the same).
    fingerprint: String,
    iter: usize,
    rng: u64,
    order: Vec<usize>,
    adam_step: i32,
    parameters: usize,
    pending: bool,
    trained_tokens: usize,
    first_val_loss: Option<f32>,
}

/// A saved [`State`] read as far as its JSON: what it was asked (its fingerprint) and how far it
/// got, so that the caller can load the weights of that iteration before the moments.
pub struct Saved {
    file: StateFile,
}

impl State {
    /// Writes the state into `dir`, the moments keyed by the names of the parameters they belong to
    /// (`names`, in parameter order), then the JSON that names the iteration: a state whose JSON is
    /// there is whole. Each file is flushed to the disk before it is moved into place.
    pub fn save(&self, dir: &Path, fingerprint: &str, names: &[String]) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        let mut arrays: Vec<(String, &Array)> = Vec::new();
        for (kind, list) in [("m", Some(&self.m)), ("v", Some(&self.v)), ("pending", self.pending.as_ref())] {
            arrays.extend(list.into_iter().flatten().zip(names).map(|(a, name)| (format!("{kind}.{name}"), a)));
        }
        let moments = dir.join(MOMENTS_FILE);
        let partial = dir.join(format!(".{MOMENTS_FILE}.partial.safetensors"));
        Array::save_safetensors(arrays, None, &partial).map_err(|e| ModelError::file(&partial, e))?;
        sync(&partial)?;
        let json = dir.join(STATE_FILE);
        // The old JSON goes first: a stop between the two renames leaves no state rather than one
        // whose moments belong to another iteration.
        match std::fs::remove_file(&json) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ModelError::file(&json, e)),
            _ => {}
        }
        std::fs::rename(&partial, &moments).map_err(|e| ModelError::file(&moments, e))?;
        let file = StateFile {
            fingerprint: fingerprint.to_owned(),
            iter: self.iter,
            rng: self.rng,
            order: self.order.clone(),
            adam_step: self.adam_step,
            parameters: self.m.len(),
            pending: self.pending.is_some(),
            trained_tokens: self.trained_tokens,
            first_val_loss: self.first_val_loss,
        };
        let text = serde_json::to_string(&file).map_err(|e| ModelError::file(&json, e))?;
        let partial = dir.join(format!(".{STATE_FILE}.partial"));
        std::fs::write(&partial, text).map_err(|e| ModelError::file(&partial, e))?;
        sync(&partial)?;
        std::fs::rename(&partial, &json).map_err(|e| ModelError::file(&json, e))
    }

    /// The JSON of the state saved in `dir`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Saved>, ModelError> {
        let json = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&json) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ModelError::file(&json, e)),
        };
        let file: StateFile = serde_json::from_str(&text).map_err(|e| ModelError::file(&json, e))?;
        Ok(Some(Saved { file }))
    }
}

impl Saved {
    /// What the saved run was asked to do.
    pub fn fingerprint(&self) -> &str {
        &self.file.fingerprint
    }

    /// Iterations it had done.
    pub fn iter(&self) -> usize {
        self.file.iter
    }

    /// The state of a finished run whose moments were not kept: zeros in their place, which no
    /// step reads since none is left. Saved again, it is the state it was.
    pub fn finished(self, params: &[Array]) -> Result<State, Exception> {
        let AdamW { m, v, .. } = AdamW::new(params)?;
        Ok(self.file.into_state(m, v, None))
    }

    /// The whole state, its moments matched to the parameters by `names` (in parameter order).
    pub fn load(self, dir: &Path, names: &[String]) -> Result<State, ModelError> {
        let file = self.file;
        let moments = dir.join(MOMENTS_FILE);
        if names.len() != file.parameters {
            return Err(ModelError::file(&moments, format!("{} parameters saved, {} to train", file.parameters, names.len())));
        }
        let mut tensors: HashMap<String, Array> = Array::load_safetensors(&moments).map_err(|e| ModelError::file(&moments, e))?;
        let mut take = |kind: &str| -> Result<Vec<Array>, ModelError> {
            names
                .iter()
                .map(|name| tensors.remove(&format!("{kind}.{name}")).ok_or_else(|| ModelError::file(&moments, format!("{kind}.{name} is missing"))))
                .collect()
        };
        let (m, v) = (take("m")?, take("v")?);
        let pending = if file.pending { Some(take("pending")?) } else { None };
        Ok(file.into_state(m, v, pending))
    }
}

impl StateFile {
    /// The state it describes, with its moments (and pending gradients) as read or made.
    fn into_state(self, m: Vec<Array>, v: Vec<Array>, pending: Option<Vec<Array>>) -> State {
        State {
            iter: self.iter,
            rng: self.rng,
            order: self.order,
            adam_step: self.adam_step,
            m,
            v,
            pending,
            trained_tokens: self.trained_tokens,
            first_val_loss: self.first_val_loss,
        }
    }
}

/// Where checkpoints go, called with the weights and the run's state after `state.iter`
/// iterations; returns the written path.
pub type Checkpoint<'a> = dyn FnMut(&[Array], &State) -> Result<PathBuf, ModelError> + 'a;

/// The examples of a run.
#[derive(Clone, Copy)]
pub struct Splits<'a> {
    pub train: &'a [Example],
    pub valid: &'a [Example],
}

/// How the caller steers a run: a stop flag (Ctrl-C), where checkpoints go, and the state of an
/// earlier run of the same examples and options to carry on from (`params` then being the weights
/// saved with it).
pub struct Control<'a, 'b> {
    pub stop: &'a AtomicBool,
    pub checkpoint: &'a mut Checkpoint<'b>,
    pub resume: Option<State>,
}

/// Trains `params` (the adapter's weights) in place. A checkpoint is written every
/// `save_every` iterations, at the last one, and when the stop flag ends the run.
pub fn train(
    model: &Llama,
    lora: &Lora,
    params: &mut [Array],
    splits: Splits<'_>,
    options: &TrainOptions,
    control: Control<'_, '_>,
    mut report: impl FnMut(Progress),
) -> Result<Outcome, ModelError> {
    let Control { stop, checkpoint, resume } = control;
    let (train_set, valid_set) = (splits.train, splits.valid);
    let train_batches = batches(train_set, options.batch_size);
    let valid_batches = batches(valid_set, options.batch_size);
    if train_batches.is_empty() {
        return Err(ModelError::Load { path: "train.jsonl".into(), message: "no training examples".into() });
    }
    let mut rng = options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut order: Vec<usize> = Vec::new();
    let accumulation = options.grad_accumulation.max(1);
    let updates = options.iters.div_ceil(accumulation);
    let mut optimizer = AdamW::new(params)?;
    let mut outcome = Outcome::default();
    let mut pending: Option<Vec<Array>> = None;
    let mut start = 1;
    if let Some(state) = resume {
        let fits = |arrays: &[Array]| arrays.len() == params.len() && arrays.iter().zip(params.iter()).all(|(a, p)| a.shape() == p.shape());
        if !fits(&state.m) || !fits(&state.v) || state.pending.as_deref().is_some_and(|p| !fits(p)) || state.order.iter().any(|&i| i >= train_batches.len())
        {
            return Err(ModelError::Load { path: STATE_FILE.into(), message: "the saved state does not fit this adapter and these examples".into() });
        }
        (rng, order, pending) = (state.rng, state.order, state.pending);
        optimizer = AdamW { m: state.m, v: state.v, step: state.adam_step };
        outcome.trained_tokens = state.trained_tokens;
        outcome.first_val_loss = state.first_val_loss;
        outcome.iters = state.iter;
        start = state.iter + 1;
    }
    let started = Instant::now();
    let mut window = (Instant::now(), 0.0f64, 0usize, 0usize); // (since, loss·steps, steps, tokens)
    let evaluate_at = |iter: usize, params: &[Array], outcome: &mut Outcome| -> Result<Option<Progress>, ModelError> {
        if valid_batches.is_empty() {
            return Ok(None);
        }
        let t = Instant::now();
        let val = evaluate(model, lora, params, &valid_batches, options.val_batches)?;
        outcome.first_val_loss.get_or_insert(val);
        outcome.last_val_loss = Some(val);
        Ok(Some(Progress::Val { iter, loss: val, seconds: t.elapsed().as_secs_f32() }))
    };
    if options.steps_per_eval > 0
        && start == 1
        && let Some(p) = evaluate_at(0, params, &mut outcome)?
    {
        report(p);
    }
    for iter in start..=options.iters {
        // Dropout's masks come from MLX's random state, seeded per iteration: a resumed run draws
        // the masks the uninterrupted one would have.
        mlx_rs::random::seed(options.seed.wrapping_add(iter as u64))?;
        if order.is_empty() {
            order = (0..train_batches.len()).collect();
            shuffle(&mut order, &mut rng);
        }
        let batch = &train_batches[order.pop().unwrap_or(0)];
        let arrays = BatchArrays::from(batch);
        let (value, grads) = {
            let step = |p: &[Array]| -> Result<Vec<Array>, Exception> {
                let (l, n) = loss(model, Adapter { hook: lora, params: p, dropout: true, checkpoint: options.grad_checkpoint }, &arrays)?;
                Ok(vec![l, n])
            };
            let argnums: Vec<i32> = (0..params.len() as i32).collect();
            let mut value_and_grad = transforms::value_and_grad_with_argnums(step, argnums.as_slice());
            value_and_grad(params)?
        };
        let grads = match pending.take() {
            Some(sum) => sum.iter().zip(&grads).map(|(a, b)| a.add(b)).collect::<Result<Vec<_>, _>>()?,
            None => grads,
        };
        let lr = learning_rate(options, iter.div_ceil(accumulation), updates);
        if iter % accumulation == 0 || iter == options.iters {
            let micro = if iter % accumulation == 0 { accumulation } else { iter % accumulation };
            let grads = if micro > 1 {
                grads.iter().map(|g| g.divide(Array::from_f32(micro as f32))).collect::<Result<Vec<_>, _>>()?
            } else {
                grads
            };
            optimizer.update(params, &grads, lr, options.weight_decay)?;
        } else {
            transforms::eval(&grads)?;
            pending = Some(grads);
        }
        value[0].eval()?;
        let l = scalar(&value[0])?;
        window.1 += f64::from(l);
        window.2 += 1;
        window.3 += batch.tokens;
        outcome.trained_tokens += batch.tokens;
        outcome.iters = iter;
        // A stop asked during the last iteration ends the run as it would have ended anyway.
        let stopping = stop.load(Ordering::Relaxed) && iter < options.iters;
        if iter % options.steps_per_report.max(1) == 0 || iter == options.iters || stopping {
            let secs = window.0.elapsed().as_secs_f32().max(1e-6);
            report(Progress::Train {
                iter,
                loss: (window.1 / window.2 as f64) as f32,
                learning_rate: lr,
                iters_per_sec: window.2 as f32 / secs,
                tokens_per_sec: window.3 as f32 / secs,
                trained_tokens: outcome.trained_tokens,
                peak_memory: mlx_rs::memory::peak_memory().unwrap_or(0),
            });
            window = (Instant::now(), 0.0, 0, 0);
        }
        if options.steps_per_eval > 0 && (iter % options.steps_per_eval == 0 || iter == options.iters) && !stopping {
            if let Some(p) = evaluate_at(iter, params, &mut outcome)? {
                report(p);
            }
            window.0 = Instant::now();
        }
        if stopping || iter == options.iters || (options.save_every > 0 && iter % options.save_every == 0) {
            let state = State {
                iter,
                rng,
                order: order.clone(),
                adam_step: optimizer.step,
                m: optimizer.m.clone(),
                v: optimizer.v.clone(),
                pending: pending.clone(),
                trained_tokens: outcome.trained_tokens,
                first_val_loss: outcome.first_val_loss,
            };
            let path = checkpoint(params, &state)?;
            report(Progress::Saved { iter, path });
            window.0 = Instant::now();
        }
        if stopping {
            outcome.stopped = true;
            break;
        }
    }
    outcome.seconds = started.elapsed().as_secs_f32();
    Ok(outcome)
}

/// The value of a one-element f32 array (evaluated).
fn scalar(a: &Array) -> Result<f32, Exception> {
    a.eval()?;
    a.try_item_exact::<f32>().map_err(|e| Exception::custom(e.to_string()))
}

/// Fisher–Yates with a xorshift generator: the batch order of an epoch.
fn shuffle(order: &mut [usize], state: &mut u64) {
    for i in (1..order.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        order.swap(i, (*state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_a_tenth() {
        let options = TrainOptions { learning_rate: 1.0, warmup: 10, iters: 110, ..TrainOptions::default() };
        assert!((learning_rate(&options, 5, 110) - 0.5).abs() < 1e-6);
        assert!((learning_rate(&options, 10, 110) - 1.0).abs() < 1e-6);
        assert!((learning_rate(&options, 60, 110) - 0.55).abs() < 1e-6);
        assert!((learning_rate(&options, 110, 110) - 0.1).abs() < 1e-6);
        let constant = TrainOptions { schedule: Schedule::Constant, warmup: 0, ..options };
        assert_eq!(learning_rate(&constant, 77, 110), 1.0);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut order: Vec<usize> = (0..50).collect();
        let mut state = 12345;
        shuffle(&mut order, &mut state);
        assert_ne!(order, (0..50).collect::<Vec<_>>());
        order.sort_unstable();
        assert_eq!(order, (0..50).collect::<Vec<_>>());
    }
}
