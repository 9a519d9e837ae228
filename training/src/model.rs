//! A Llama-family transformer (SmolLM2; Qwen2 adds q/k/v biases) on MLX, from an HF/MLX model
//! directory (`config.json` + `model.safetensors`, MLX-quantized weights dequantized to f32 at load:
//! MLX's quantized kernels are slow on a CPU). Written with MLX's fused ops (RMSNorm, RoPE, scaled
//! dot-product attention), with a KV cache for generation.

use std::path::Path;

use mlx_rs::error::Exception;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::indexing::{IndexOp, argmax_axis};
use mlx_rs::ops;
use mlx_rs::{Array, Dtype};
use serde::Deserialize;

pub use kenning_formats::adapter::Projection;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Load { path: String, message: String },
    #[error("missing tensor {0}")]
    Missing(String),
    #[error(transparent)]
    Mlx(#[from] mlx_rs::error::Exception),
}

impl ModelError {
    /// A file that could not be read or understood.
    pub fn file(path: &Path, message: impl std::fmt::Display) -> Self {
        ModelError::Load { path: path.display().to_string(), message: message.to_string() }
    }
}

/// The fields of `config.json` the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i32,
    pub num_key_value_heads: i32,
    #[serde(default)]
    pub head_dim: Option<i32>,
    pub rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    pub vocab_size: i32,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub quantization: Option<Quantization>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Quantization {
    pub group_size: i32,
    pub bits: i32,
}

fn default_theta() -> f32 {
    10_000.0
}

fn default_true() -> bool {
    true
}

impl Config {
    pub fn head_dim(&self) -> i32 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// `(in, out)` features of a projection.
    pub fn projection_dims(&self, projection: Projection) -> (i32, i32) {
        let (hidden, inter, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        match projection {
            Projection::Q => (hidden, self.num_attention_heads * hd),
            Projection::K | Projection::V => (hidden, self.num_key_value_heads * hd),
            Projection::O => (self.num_attention_heads * hd, hidden),
            Projection::Gate | Projection::Up => (hidden, inter),
            Projection::Down => (inter, hidden),
        }
    }
}

/// What a forward pass asks of an adapter, which changes the output of some projections (LoRA
/// implements it, in `lora`): the model knows this interface, not the adapters.
pub trait Hook {
    /// Indices into the adapter's weights of those layer `layer` uses (empty when it adapts none
    /// of the layer's projections).
    fn layer_params(&self, layer: usize) -> Vec<usize>;

    /// `y`, the output of `projection` of layer `layer` for the input `x`, as the adapter with
    /// weights `params` changes it (`dropout`: training's random masks on).
    fn apply(&self, params: &[Array], layer: usize, projection: Projection, x: &Array, y: Array, dropout: bool) -> Result<Array, Exception>;
}

/// An adapter in use by a forward pass: what it is, its weights, whether dropout is on (training)
/// and whether adapted layers are checkpointed (training: recomputed in the backward pass).
#[derive(Clone, Copy)]
pub struct Adapter<'a> {
    pub hook: &'a dyn Hook,
    pub params: &'a [Array],
    pub dropout: bool,
    pub checkpoint: bool,
}

impl Adapter<'_> {
    fn apply(&self, layer: usize, projection: Projection, x: &Array, y: Array) -> Result<Array, Exception> {
        self.hook.apply(self.params, layer, projection, x, y, self.dropout)
    }
}

struct Layer {
    input_norm: Array,
    post_norm: Array,
    /// Projections stored transposed (`[in, out]`), ready for `x @ w`.
    q: Array,
    k: Array,
    v: Array,
    o: Array,
    q_bias: Option<Array>,
    k_bias: Option<Array>,
    v_bias: Option<Array>,
    gate: Array,
    up: Array,
    down: Array,
}

/// Keys and values of the tokens seen so far, per layer.
#[derive(Default)]
pub struct Cache {
    layers: Vec<(Array, Array)>,
    len: i32,
}

impl Cache {
    pub fn len(&self) -> i32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `n` positions (a prompt prefix the next request shares) and drops the rest.
    pub fn truncate(&mut self, n: i32) {
        if n <= 0 {
            *self = Self::default();
            return;
        }
        if n >= self.len {
            return;
        }
        for (k, v) in &mut self.layers {
            *k = k.index((.., .., ..n, ..));
            *v = v.index((.., .., ..n, ..));
        }
        self.len = n;
    }
}

pub struct Llama {
    pub config: Config,
    embed: Array,
    /// The output projection, transposed (`[hidden, vocab]`).
    head: Array,
    norm: Array,
    layers: Vec<Layer>,
    /// The adapter `forward` applies, with its weights (inference with an adapter, unfused).
    adapter: Option<(Box<dyn Hook>, Vec<Array>)>,
}

impl Llama {
    /// Loads a model directory.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::file(&config_path, e))?;
        let config: Config = serde_json::from_str(&text).map_err(|e| ModelError::file(&config_path, e))?;
        let weights_path = dir.join("model.safetensors");
        let mut raw = Array::load_safetensors(&weights_path).map_err(|e| ModelError::file(&weights_path, e))?;
        let mut take = |name: &str| -> Result<Array, ModelError> {
            let weight = raw.remove(&format!("{name}.weight")).ok_or_else(|| ModelError::Missing(format!("{name}.weight")))?;
            let weight = match (raw.remove(&format!("{name}.scales")), &config.quantization) {
                (Some(scales), Some(q)) => {
                    let biases = raw.remove(&format!("{name}.biases"));
                    // Bits per tensor from the shapes: a GGUF may keep some tensors at 8 bits
                    // (SmolLM2's Q4_1 file has an 8-bit embedding).
                    let (packed, groups) = (weight.shape()[1], scales.shape()[1]);
                    let bits = packed * 32 / (groups * q.group_size);
                    ops::dequantize(&weight, &scales, biases.as_ref(), q.group_size, bits)?
                }
                _ => weight,
            };
            Ok(weight.as_dtype(Dtype::Float32)?)
        };
        let transposed = |a: Array| a.transpose_axes(&[1, 0]);
        let embed = take("model.embed_tokens")?;
        let head = if config.tie_word_embeddings { transposed(embed.clone())? } else { transposed(take("lm_head")?)? };
        let norm = take("model.norm")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: take(&format!("{p}.input_layernorm"))?,
                post_norm: take(&format!("{p}.post_attention_layernorm"))?,
                q: transposed(take(&format!("{p}.self_attn.q_proj"))?)?,
                k: transposed(take(&format!("{p}.self_attn.k_proj"))?)?,
                v: transposed(take(&format!("{p}.self_attn.v_proj"))?)?,
                o: transposed(take(&format!("{p}.self_attn.o_proj"))?)?,
                q_bias: None,
                k_bias: None,
                v_bias: None,
                gate: transposed(take(&format!("{p}.mlp.gate_proj"))?)?,
                up: transposed(take(&format!("{p}.mlp.up_proj"))?)?,
                down: transposed(take(&format!("{p}.mlp.down_proj"))?)?,
            });
        }
        // Qwen2 has biases on q/k/v (the only biases in the family).
        for (i, layer) in layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}.self_attn");
            layer.q_bias = raw.remove(&format!("{p}.q_proj.bias"));
            layer.k_bias = raw.remove(&format!("{p}.k_proj.bias"));
            layer.v_bias = raw.remove(&format!("{p}.v_proj.bias"));
        }
        let model = Self { config, embed, head, norm, layers, adapter: None };
        // Materialize the dequantized weights once, not on the first forward pass.
        let mut all: Vec<&Array> = vec![&model.embed, &model.head, &model.norm];
        for l in &model.layers {
            all.extend([&l.input_norm, &l.post_norm, &l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]);
        }
        mlx_rs::transforms::eval(all)?;
        Ok(model)
    }

    /// Logits (`[tokens, vocab]`, f32) for `tokens` following what `cache` holds; extends the cache.
    /// The attached adapter, if any, is applied.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Array, ModelError> {
        let n = tokens.len() as i32;
        let ids = Array::from_slice(tokens, &[1, n]);
        let adapter = self.adapter.as_ref().map(|(hook, params)| Adapter { hook: hook.as_ref(), params, dropout: false, checkpoint: false });
        Ok(self.run(&ids, Some(cache), adapter)?.reshape(&[n, self.config.vocab_size])?)
    }

    /// Logits (`[batch, tokens, vocab]`) for a batch of token ids (`[batch, tokens]`) from the start,
    /// with `adapter`'s low-rank updates (the training path: no cache).
    pub fn logits(&self, ids: &Array, adapter: Option<Adapter<'_>>) -> Result<Array, Exception> {
        self.run(ids, None, adapter)
    }

    /// Number of weights (after dequantization).
    pub fn parameter_count(&self) -> usize {
        let mut n = self.embed.size() + self.norm.size();
        if !self.config.tie_word_embeddings {
            n += self.head.size();
        }
        for l in &self.layers {
            n += [&l.input_norm, &l.post_norm, &l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().map(|a| a.size()).sum::<usize>();
            n += [&l.q_bias, &l.k_bias, &l.v_bias].iter().filter_map(|b| b.as_ref()).map(|a| a.size()).sum::<usize>();
        }
        n
    }

    /// Attaches an adapter and its weights, applied by [`forward`](Self::forward) from now on.
    pub fn set_adapter(&mut self, hook: impl Hook + 'static, params: Vec<Array>) {
        self.adapter = Some((Box::new(hook), params));
    }

    /// The projection weight of `projection` in layer `layer`, as stored (`[in, out]`).
    pub fn projection(&self, layer: usize, projection: Projection) -> &Array {
        let l = &self.layers[layer];
        match projection {
            Projection::Q => &l.q,
            Projection::K => &l.k,
            Projection::V => &l.v,
            Projection::O => &l.o,
            Projection::Gate => &l.gate,
            Projection::Up => &l.up,
            Projection::Down => &l.down,
        }
    }

    /// Every weight of the model under its Hugging Face name, in Hugging Face orientation
    /// (`[out, in]` for projections), f32: what a fused export writes.
    pub fn weights(&self) -> Result<Vec<(String, Array)>, Exception> {
        let t = |a: &Array| a.transpose_axes(&[1, 0]);
        let mut out = vec![("model.embed_tokens.weight".to_owned(), self.embed.clone()), ("model.norm.weight".to_owned(), self.norm.clone())];
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_owned(), t(&self.head)?));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), l.input_norm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.post_norm.clone()));
            for projection in Projection::ALL {
                out.push((format!("{p}.{}.weight", projection.name()), t(self.projection(i, projection))?));
            }
            for (name, bias) in [("q_proj", &l.q_bias), ("k_proj", &l.k_bias), ("v_proj", &l.v_bias)] {
                if let Some(b) = bias {
                    out.push((format!("{p}.self_attn.{name}.bias"), b.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Adds `delta` (`[in, out]`) to a projection: fusing an adapter into the base weights.
    pub fn add_to_projection(&mut self, layer: usize, projection: Projection, delta: &Array) -> Result<(), Exception> {
        let l = &mut self.layers[layer];
        let w = match projection {
            Projection::Q => &mut l.q,
            Projection::K => &mut l.k,
            Projection::V => &mut l.v,
            Projection::O => &mut l.o,
            Projection::Gate => &mut l.gate,
            Projection::Up => &mut l.up,
            Projection::Down => &mut l.down,
        };
        *w = w.add(delta)?;
        w.eval()
    }

    fn run(&self, ids: &Array, mut cache: Option<&mut Cache>, adapter: Option<Adapter<'_>>) -> Result<Array, Exception> {
        let c = &self.config;
        let (batch, n) = (ids.shape()[0], ids.shape()[1]);
        let mut x = self.embed.take_axis(&ids.reshape(&[-1])?, 0)?.reshape(&[batch, n, c.hidden_size])?;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        for i in 0..self.layers.len() {
            x = match &adapter {
                // Training with checkpoints: the layer's input and adapter weights go in, the layer
                // is computed again in the backward pass.
                Some(a) if a.checkpoint && cache.is_none() && !a.hook.layer_params(i).is_empty() => {
                    let slots = a.hook.layer_params(i);
                    let mut inputs = vec![x];
                    inputs.extend(slots.iter().map(|&p| a.params[p].clone()));
                    // Owned: the weights the transform passes in live only for the forward pass.
                    let params = a.params.to_vec();
                    let (hook, dropout) = (a.hook, a.dropout);
                    let body = move |inputs: &[Array]| -> Result<Vec<Array>, Exception> {
                        let mut params = params.clone();
                        for (&p, weight) in slots.iter().zip(&inputs[1..]) {
                            params[p] = weight.clone();
                        }
                        let adapter = Adapter { hook, params: &params, dropout, checkpoint: false };
                        Ok(vec![self.layer(i, &inputs[0], None, Some(&adapter), 0)?])
                    };
                    // SAFETY: the body owns its arrays and borrows only the model and the adapter's
                    // layout, which the differentiated function borrows from outside the transform.
                    #[allow(unsafe_code)]
                    let out = unsafe { crate::checkpoint::checkpointed(body, &inputs)? };
                    out.into_iter().next().ok_or_else(|| Exception::custom("a checkpointed layer returned nothing"))?
                }
                _ => self.layer(i, &x, cache.as_deref_mut(), adapter.as_ref(), offset)?,
            };
        }
        if let Some(cache) = cache {
            cache.len += n;
        }
        let x = fast::rms_norm(&x, Some(&self.norm), c.rms_norm_eps)?;
        x.matmul(&self.head)
    }

    /// Transformer layer `i` on `x` (`[batch, tokens, hidden]`) at position `offset`, reading and
    /// extending `cache` when there is one.
    fn layer(&self, i: usize, x: &Array, cache: Option<&mut Cache>, adapter: Option<&Adapter<'_>>, offset: i32) -> Result<Array, Exception> {
        let c = &self.config;
        let layer = &self.layers[i];
        let (batch, n) = (x.shape()[0], x.shape()[1]);
        let (heads, kv_heads, head_dim) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let scale = 1.0 / (head_dim as f32).sqrt();
        // x · W (+ bias) (+ scale · (x · A) · B when the adapter covers this projection).
        let project = |x: &Array, projection: Projection, bias: Option<&Array>| -> Result<Array, Exception> {
            let mut y = x.matmul(self.projection(i, projection))?;
            if let Some(b) = bias {
                y = y.add(b)?;
            }
            if let Some(adapter) = adapter {
                y = adapter.apply(i, projection, x, y)?;
            }
            Ok(y)
        };
        let h = fast::rms_norm(x, Some(&layer.input_norm), c.rms_norm_eps)?;
        let split = |a: Array, heads: i32| a.reshape(&[batch, n, heads, head_dim])?.transpose_axes(&[0, 2, 1, 3]);
        let q = split(project(&h, Projection::Q, layer.q_bias.as_ref())?, heads)?;
        let k = split(project(&h, Projection::K, layer.k_bias.as_ref())?, kv_heads)?;
        let v = split(project(&h, Projection::V, layer.v_bias.as_ref())?, kv_heads)?;
        let q = fast::rope(&q, head_dim, c.rope_traditional, c.rope_theta, 1.0, offset, None)?;
        let k = fast::rope(&k, head_dim, c.rope_traditional, c.rope_theta, 1.0, offset, None)?;
        let (k, v) = match cache.as_ref().and_then(|c| c.layers.get(i)) {
            Some((ck, cv)) => (ops::concatenate(&[ck, &k], 2)?, ops::concatenate(&[cv, &v], 2)?),
            None => (k, v),
        };
        let mask = (n > 1).then_some(ScaledDotProductAttentionMask::Causal);
        let attended = fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None)?;
        if let Some(cache) = cache {
            if i < cache.layers.len() {
                cache.layers[i] = (k, v);
            } else {
                cache.layers.push((k, v));
            }
        }
        let attended = attended.transpose_axes(&[0, 2, 1, 3])?.reshape(&[batch, n, heads * head_dim])?;
        let x = x.add(project(&attended, Projection::O, None)?)?;
        let h = fast::rms_norm(&x, Some(&layer.post_norm), c.rms_norm_eps)?;
        let gate = project(&h, Projection::Gate, None)?;
        let activated = gate.multiply(ops::sigmoid(&gate)?)?.multiply(project(&h, Projection::Up, None)?)?;
        x.add(project(&activated, Projection::Down, None)?)
    }

    /// Greedy continuation of `prompt`: up to `max_tokens` ids, stopping after any of `stop_ids`.
    pub fn greedy(&self, prompt: &[u32], max_tokens: usize, stop_ids: &[u32]) -> Result<Vec<u32>, ModelError> {
        let mut cache = Cache::default();
        let mut logits = self.forward(prompt, &mut cache)?;
        let mut out = Vec::new();
        for _ in 0..max_tokens {
            let last = logits.index((-1, ..));
            let next = argmax_axis(&last, -1, None)?;
            next.eval()?;
            let id = next.try_item_cast::<u32>().map_err(|e| ModelError::Load { path: "argmax".into(), message: e.to_string() })?;
            out.push(id);
            if stop_ids.contains(&id) {
                break;
            }
            logits = self.forward(&[id], &mut cache)?;
        }
        Ok(out)
    }
}
