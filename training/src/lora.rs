//! Low-rank adapters (LoRA) on the projections of a [`Llama`]: `y = x·W + scale·(x·A)·B`, with `A`
//! (`[in, rank]`) drawn from U(±1/√in) and `B` (`[rank, out]`) zero, so a fresh adapter changes
//! nothing. Saved and loaded in `mlx_lm`'s layout (`adapters.safetensors` with
//! `model.layers.{i}.{self_attn|mlp}.{name}.lora_{a,b}`, F32, plus `adapter_config.json`), so adapters
//! trained here load in `mlx_lm` and the other way round.

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype, random};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Config, Llama, ModelError};

/// A projection LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The module path inside a layer, as Hugging Face and mlx_lm name it.
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// `(in, out)` features of this projection.
    pub fn dims(self, c: &Config) -> (i32, i32) {
        let (hidden, inter, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        match self {
            Target::Q => (hidden, c.num_attention_heads * hd),
            Target::K | Target::V => (hidden, c.num_key_value_heads * hd),
            Target::O => (c.num_attention_heads * hd, hidden),
            Target::Gate | Target::Up => (hidden, inter),
            Target::Down => (inter, hidden),
        }
    }
}

/// `lora_parameters` of `adapter_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraParameters {
    pub rank: i32,
    #[serde(default)]
    pub dropout: f32,
    pub scale: f32,
}

impl Default for LoraParameters {
    /// mlx_lm's defaults.
    fn default() -> Self {
        Self { rank: 8, dropout: 0.0, scale: 20.0 }
    }
}

/// Which projections of which layers carry an adapter, and how it scales. The weights themselves
/// are a flat `Vec<Array>` (`A` then `B` per slot), so that training can differentiate them.
#[derive(Debug, Clone)]
pub struct Lora {
    pub params: LoraParameters,
    /// Adapted layers count from the last one, as mlx_lm's `num_layers`.
    pub num_layers: usize,
    slots: Vec<(usize, Target)>,
    index: HashMap<(usize, Target), usize>,
}

impl Lora {
    /// Every projection of the last `num_layers` layers (all layers if more are asked).
    pub fn new(config: &Config, num_layers: usize, params: LoraParameters) -> Self {
        let total = config.num_hidden_layers;
        let first = total.saturating_sub(num_layers);
        let slots = (first..total).flat_map(|l| Target::ALL.map(|t| (l, t))).collect();
        Self::from_slots(slots, total - first, params)
    }

    fn from_slots(slots: Vec<(usize, Target)>, num_layers: usize, params: LoraParameters) -> Self {
        let index = slots.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        Self { params, num_layers, slots, index }
    }

    /// `(layer, projection)` per adapter slot, in parameter order.
    pub fn slots(&self) -> &[(usize, Target)] {
        &self.slots
    }

    /// Fresh weights: `A` ~ U(±1/√in), `B` = 0 (mlx_lm's initialisation), from MLX's random state.
    pub fn init(&self, config: &Config) -> Result<Vec<Array>, Exception> {
        let rank = self.params.rank;
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for &(_, target) in &self.slots {
            let (inputs, outputs) = target.dims(config);
            let bound = 1.0 / (inputs as f32).sqrt();
            out.push(random::uniform::<_, f32>(-bound, bound, &[inputs, rank], None)?);
            out.push(Array::zeros::<f32>(&[rank, outputs])?);
        }
        mlx_rs::transforms::eval(&out)?;
        Ok(out)
    }

    /// The `(A, B)` of a projection, if it is adapted.
    pub fn pair<'p>(&self, params: &'p [Array], layer: usize, target: Target) -> Option<(&'p Array, &'p Array)> {
        let i = *self.index.get(&(layer, target))?;
        Some((&params[2 * i], &params[2 * i + 1]))
    }

    /// Indices into the parameters of layer `layer`'s `A`s and `B`s (empty when it is not adapted).
    pub fn layer_params(&self, layer: usize) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, (l, _))| *l == layer).flat_map(|(i, _)| [2 * i, 2 * i + 1]).collect()
    }

    /// The tensor names of the parameters, in order (`…lora_a`, `…lora_b` per slot).
    pub fn names(&self) -> Vec<String> {
        self.slots
            .iter()
            .flat_map(|(l, t)| ["a", "b"].map(|ab| format!("model.layers.{l}.{}.lora_{ab}", t.name())))
            .collect()
    }

    /// Writes `adapters.safetensors` (or `file_name`) and `adapter_config.json` into `dir`; `extra`
    /// adds fields to the config (mlx_lm records its training arguments there too).
    pub fn save(&self, params: &[Array], dir: &Path, file_name: &str, extra: &serde_json::Map<String, Value>) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        let weights = dir.join(file_name);
        let partial = dir.join(format!(".{file_name}.partial.safetensors"));
        let arrays: Vec<(String, &Array)> = self.names().into_iter().zip(params).collect();
        Array::save_safetensors(arrays, None, &partial).map_err(|e| ModelError::file(&partial, e))?;
        std::fs::rename(&partial, &weights).map_err(|e| ModelError::file(&weights, e))?;
        let mut config = extra.clone();
        config.insert("fine_tune_type".into(), "lora".into());
        config.insert("num_layers".into(), self.num_layers.into());
        config.insert("lora_parameters".into(), serde_json::to_value(self.params).unwrap_or_default());
        let path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).unwrap_or_default();
        std::fs::write(&path, text + "\n").map_err(|e| ModelError::file(&path, e))
    }

    /// Loads an adapter directory (`adapter_config.json` + `adapters.safetensors`) written by kenning
    /// or by `mlx_lm.lora`. The adapted projections are the ones the file holds.
    pub fn load(dir: &Path, config: &Config) -> Result<(Self, Vec<Array>), ModelError> {
        Self::load_file(dir, &dir.join("adapters.safetensors"), config)
    }

    /// As [`load`](Self::load), with the weights from `weights` (a checkpoint of the same adapter).
    pub fn load_file(dir: &Path, weights: &Path, config: &Config) -> Result<(Self, Vec<Array>), ModelError> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::file(&config_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::file(&config_path, e))?;
        let kind = json.get("fine_tune_type").and_then(Value::as_str).unwrap_or("lora");
        if kind != "lora" {
            return Err(ModelError::file(&config_path, format!("fine_tune_type {kind:?}: only \"lora\" adapters are supported")));
        }
        let params: LoraParameters = serde_json::from_value(json.get("lora_parameters").cloned().unwrap_or(Value::Null))
            .map_err(|e| ModelError::file(&config_path, format!("lora_parameters: {e}")))?;
        let mut tensors = Array::load_safetensors(weights).map_err(|e| ModelError::file(weights, e))?;
        let mut slots = Vec::new();
        for name in tensors.keys() {
            let Some(module) = name.strip_suffix(".lora_a") else { continue };
            let parsed = module.strip_prefix("model.layers.").and_then(|rest| {
                let (layer, target) = rest.split_once('.')?;
                Some((layer.parse::<usize>().ok()?, Target::from_name(target)?))
            });
            match parsed {
                Some((layer, target)) if layer < config.num_hidden_layers => slots.push((layer, target)),
                _ => return Err(ModelError::file(weights, format!("{name}: not a projection of this model"))),
            }
        }
        if slots.is_empty() {
            return Err(ModelError::file(weights, "no LoRA weights (…lora_a / …lora_b) in the file"));
        }
        slots.sort_by_key(|(l, t)| (*l, Target::ALL.iter().position(|x| x == t)));
        let first = slots[0].0;
        let lora = Self::from_slots(slots, config.num_hidden_layers - first, params);
        let mut out = Vec::with_capacity(lora.slots.len() * 2);
        for (name, &(_, target)) in lora.names().chunks(2).zip(&lora.slots) {
            let (inputs, outputs) = target.dims(config);
            for (name, shape) in name.iter().zip([[inputs, params.rank], [params.rank, outputs]]) {
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
    pub fn deltas(&self, params: &[Array]) -> Result<Vec<(usize, Target, Array)>, Exception> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, &(layer, target))| Ok((layer, target, params[2 * i].matmul(&params[2 * i + 1])?.multiply(Array::from_f32(self.params.scale))?)))
            .collect()
    }

    /// Merges the adapter into `model`'s weights (after which the model no longer needs it).
    pub fn fuse_into(&self, params: &[Array], model: &mut Llama) -> Result<(), Exception> {
        for (layer, target, delta) in self.deltas(params)? {
            model.add_to_projection(layer, target, &delta)?;
        }
        Ok(())
    }
}

/// An adapter in use by a forward pass: its shape, its weights, whether dropout is on (training)
/// and whether adapted layers are checkpointed (training: recomputed in the backward pass).
#[derive(Clone, Copy)]
pub struct Adapter<'a> {
    pub lora: &'a Lora,
    pub params: &'a [Array],
    pub dropout: bool,
    pub checkpoint: bool,
}

impl Adapter<'_> {
    /// `y + scale · (dropout(x)·A)·B` when `(layer, target)` is adapted, else `y`.
    pub(crate) fn apply(&self, layer: usize, target: Target, x: &Array, y: Array) -> Result<Array, Exception> {
        let Some((a, b)) = self.lora.pair(self.params, layer, target) else { return Ok(y) };
        let p = self.lora.params.dropout;
        let z = if self.dropout && p > 0.0 {
            let keep = random::bernoulli(&Array::from_f32(1.0 - p), x.shape(), None)?;
            x.multiply(keep.as_dtype(Dtype::Float32)?)?.multiply(Array::from_f32(1.0 / (1.0 - p)))?.matmul(a)?.matmul(b)?
        } else {
            x.matmul(a)?.matmul(b)?
        };
        y.add(z.multiply(Array::from_f32(self.lora.params.scale))?)
    }
}
