//! Low-rank adapters (LoRA) on the projections of a [`Llama`]: `y = x·W + scale·(x·A)·B`, with `A`
//! (`[in, rank]`) drawn from U(±1/√in) and `B` (`[rank, out]`) zero, so a fresh adapter changes
//! nothing. Saved and loaded in `mlx_lm`'s layout ([`kenning_formats::adapter`]: F32 weights in
//! `adapters.safetensors`, plus `adapter_config.json`), so adapters trained here load in `mlx_lm`
//! and the other way round. The model applies them through its [`Hook`] interface; fusing one into
//! the weights is `export::fuse`.

use std::collections::HashMap;
use std::path::Path;

use kenning_formats::adapter::{self, AdapterConfig, Factor};
pub use kenning_formats::adapter::LoraParameters;
use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype, random};
use serde_json::Value;

use crate::model::{Config, Hook, ModelError, Projection};

/// Which projections of which layers carry an adapter, and how it scales. The weights themselves
/// are a flat `Vec<Array>` (`A` then `B` per slot), so that training can differentiate them.
#[derive(Debug, Clone)]
pub struct Lora {
    pub params: LoraParameters,
    /// Adapted layers count from the last one, as mlx_lm's `num_layers`.
    pub num_layers: usize,
    slots: Vec<(usize, Projection)>,
    index: HashMap<(usize, Projection), usize>,
}

impl Lora {
    /// Every projection of the last `num_layers` layers (all layers if more are asked).
    pub fn new(config: &Config, num_layers: usize, params: LoraParameters) -> Self {
        let total = config.num_hidden_layers;
        let first = total.saturating_sub(num_layers);
        let slots = (first..total).flat_map(|l| Projection::ALL.map(|p| (l, p))).collect();
        Self::from_slots(slots, total - first, params)
    }

    fn from_slots(slots: Vec<(usize, Projection)>, num_layers: usize, params: LoraParameters) -> Self {
        let index = slots.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        Self { params, num_layers, slots, index }
    }

    /// `(layer, projection)` per adapter slot, in parameter order.
    pub fn slots(&self) -> &[(usize, Projection)] {
        &self.slots
    }

    /// Fresh weights: `A` ~ U(±1/√in), `B` = 0 (mlx_lm's initialisation), from MLX's random state.
    pub fn init(&self, config: &Config) -> Result<Vec<Array>, Exception> {
        let rank = self.params.rank as i32;
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for &(_, projection) in &self.slots {
            let (inputs, outputs) = config.projection_dims(projection);
            let bound = 1.0 / (inputs as f32).sqrt();
            out.push(random::uniform::<_, f32>(-bound, bound, &[inputs, rank], None)?);
            out.push(Array::zeros::<f32>(&[rank, outputs])?);
        }
        mlx_rs::transforms::eval(&out)?;
        Ok(out)
    }

    /// The `(A, B)` of a projection, if it is adapted.
    pub fn pair<'p>(&self, params: &'p [Array], layer: usize, projection: Projection) -> Option<(&'p Array, &'p Array)> {
        let i = *self.index.get(&(layer, projection))?;
        Some((&params[2 * i], &params[2 * i + 1]))
    }

    /// Indices into the parameters of layer `layer`'s `A`s and `B`s (empty when it is not adapted).
    pub fn layer_params(&self, layer: usize) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, (l, _))| *l == layer).flat_map(|(i, _)| [2 * i, 2 * i + 1]).collect()
    }

    /// The tensor names of the parameters, in order (`…lora_a`, `…lora_b` per slot).
    pub fn names(&self) -> Vec<String> {
        self.slots.iter().flat_map(|&(l, p)| [Factor::A, Factor::B].map(|f| adapter::tensor_name(l, p, f))).collect()
    }

    /// Writes `adapters.safetensors` (or `file_name`) and `adapter_config.json` into `dir`; `extra`
    /// adds fields to the config (mlx_lm records its training arguments there too).
    pub fn save(&self, params: &[Array], dir: &Path, file_name: &str, extra: &serde_json::Map<String, Value>) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        let weights = dir.join(file_name);
        let partial = dir.join(format!(".{file_name}.partial.safetensors"));
        let arrays: Vec<(String, &Array)> = self.names().into_iter().zip(params).collect();
        Array::save_safetensors(arrays, None, &partial).map_err(|e| ModelError::file(&partial, e))?;
        sync(&partial)?;
        std::fs::rename(&partial, &weights).map_err(|e| ModelError::file(&weights, e))?;
        let mut config = AdapterConfig::lora(self.params, self.num_layers);
        config.extra = extra.clone();
        config.model = config.extra.remove("model").and_then(|m| m.as_str().map(str::to_owned));
        config.write(dir).map_err(|e| ModelError::file(dir, e))
    }

    /// Loads an adapter directory (`adapter_config.json` + `adapters.safetensors`) written by kenning
    /// or by `mlx_lm.lora`. The adapted projections are the ones the file holds.
    pub fn load(dir: &Path, config: &Config) -> Result<(Self, Vec<Array>), ModelError> {
        Self::load_file(dir, &dir.join(adapter::WEIGHTS_FILE), config)
    }

    /// As [`load`](Self::load), with the weights from `weights` (a checkpoint of the same adapter).
    pub fn load_file(dir: &Path, weights: &Path, config: &Config) -> Result<(Self, Vec<Array>), ModelError> {
        let params = AdapterConfig::read(dir).map_err(|e| ModelError::file(dir, e))?.lora_parameters;
        let mut tensors = Array::load_safetensors(weights).map_err(|e| ModelError::file(weights, e))?;
        let mut slots = Vec::new();
        for name in tensors.keys() {
            match adapter::parse_tensor_name(name) {
                Some((layer, projection, Factor::A)) if layer < config.num_hidden_layers => slots.push((layer, projection)),
                _ if !name.ends_with(".lora_a") => {}
                _ => return Err(ModelError::file(weights, format!("{name}: not a projection of this model"))),
            }
        }
        if slots.is_empty() {
            return Err(ModelError::file(weights, "no LoRA weights (…lora_a / …lora_b) in the file"));
        }
        slots.sort();
        let first = slots[0].0;
        let lora = Self::from_slots(slots, config.num_hidden_layers - first, params);
        let mut out = Vec::with_capacity(lora.slots.len() * 2);
        let rank = params.rank as i32;
        for (name, &(_, projection)) in lora.names().chunks(2).zip(&lora.slots) {
            let (inputs, outputs) = config.projection_dims(projection);
            for (name, shape) in name.iter().zip([[inputs, rank], [rank, outputs]]) {
                let a = tensors.remove(name).ok_or_else(|| ModelError::file(weights, format!("{name} is missing")))?;
                if a.shape() != shape {
                    return Err(ModelError::file(weights, format!("{name}: shape {:?}, expected {shape:?}", a.shape())));
                }
                out.push(a.as_dtype(Dtype::Float32)?);
            }
        }
        mlx_rs::transforms::eval(&out)?;
        Ok((lora, out))
    }

    /// The weight change of each adapted projection, `scale · A·B` (`[in, out]`).
    pub fn deltas(&self, params: &[Array]) -> Result<Vec<(usize, Projection, Array)>, Exception> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, &(layer, projection))| Ok((layer, projection, params[2 * i].matmul(&params[2 * i + 1])?.multiply(Array::from_f32(self.params.scale))?)))
            .collect()
    }
}

impl Hook for Lora {
    fn layer_params(&self, layer: usize) -> Vec<usize> {
        Lora::layer_params(self, layer)
    }

    /// `y + scale · (dropout(x)·A)·B` when `(layer, projection)` is adapted, else `y`.
    fn apply(&self, params: &[Array], layer: usize, projection: Projection, x: &Array, y: Array, dropout: bool) -> Result<Array, Exception> {
        let Some((a, b)) = self.pair(params, layer, projection) else { return Ok(y) };
        let p = self.params.dropout;
        let z = if dropout && p > 0.0 {
            let keep = random::bernoulli(&Array::from_f32(1.0 - p), x.shape(), None)?;
            x.multiply(keep.as_dtype(Dtype::Float32)?)?.multiply(Array::from_f32(1.0 / (1.0 - p)))?.matmul(a)?.matmul(b)?
        } else {
            x.matmul(a)?.matmul(b)?
        };
        y.add(z.multiply(Array::from_f32(self.params.scale))?)
    }
}

/// Flushes a written file to the disk, so that a rename after it never names a file whose content
/// a power loss took (the adapter's weights here, the training state in `train`).
pub(crate) fn sync(path: &Path) -> Result<(), ModelError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| ModelError::file(path, e))
}
