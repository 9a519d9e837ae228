//! The LoRA training loop: masked cross-entropy on the adapter's weights only (the base model is a
//! constant of the loss function, so it is frozen by construction), AdamW with linear warmup and
//! cosine decay, gradient accumulation, periodic validation, checkpoints, and a stop flag (Ctrl-C)
//! that ends the run with the last weights saved.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mlx_rs::error::Exception;
use mlx_rs::{Array, transforms};

use crate::data::{Batch, Example, batches};
use crate::lora::Lora;
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

/// Where checkpoints go, called with the iteration and the weights; returns the written path.
pub type Checkpoint<'a> = dyn FnMut(usize, &[Array]) -> Result<PathBuf, ModelError> + 'a;

/// The examples of a run.
#[derive(Clone, Copy)]
pub struct Splits<'a> {
    pub train: &'a [Example],
    pub valid: &'a [Example],
}

/// How the caller steers a run: a stop flag (Ctrl-C) and where checkpoints go.
pub struct Control<'a, 'b> {
    pub stop: &'a AtomicBool,
    pub checkpoint: &'a mut Checkpoint<'b>,
}

/// Trains `params` (the adapter's weights) in place.
pub fn train(
    model: &Llama,
    lora: &Lora,
    params: &mut [Array],
    splits: Splits<'_>,
    options: &TrainOptions,
    control: Control<'_, '_>,
    mut report: impl FnMut(Progress),
) -> Result<Outcome, ModelError> {
    let Control { stop, checkpoint } = control;
    let (train_set, valid_set) = (splits.train, splits.valid);
    let train_batches = batches(train_set, options.batch_size);
    let valid_batches = batches(valid_set, options.batch_size);
    if train_batches.is_empty() {
        return Err(ModelError::Load { path: "train.jsonl".into(), message: "no training examples".into() });
    }
    mlx_rs::random::seed(options.seed)?;
    let mut rng = options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut order: Vec<usize> = Vec::new();
    let accumulation = options.grad_accumulation.max(1);
    let updates = options.iters.div_ceil(accumulation);
    let mut optimizer = AdamW::new(params)?;
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let mut window = (Instant::now(), 0.0f64, 0usize, 0usize); // (since, loss·steps, steps, tokens)
    let mut pending: Option<Vec<Array>> = None;
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
        && let Some(p) = evaluate_at(0, params, &mut outcome)?
    {
        report(p);
    }
    for iter in 1..=options.iters {
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
        let stopping = stop.load(Ordering::Relaxed);
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
        if stopping || (options.save_every > 0 && iter % options.save_every == 0) {
            let path = checkpoint(iter, params)?;
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
