//! LoRA adapters for llama.cpp: an adapter directory of `kenning-train` or `mlx_lm.lora`
//! (`adapters.safetensors` + `adapter_config.json`) written as llama.cpp's GGUF LoRA file, the way
//! llama.cpp's own `convert_lora_to_gguf.py` lays it out:
//!
//! - metadata `general.architecture` (the base's), `general.type = "adapter"`,
//!   `adapter.type = "lora"`, `adapter.lora.alpha`;
//! - per adapted projection `blk.{layer}.{attn_q|…|ffn_down}.weight.lora_a` with ggml shape
//!   `[inputs, rank]` and `….lora_b` with `[rank, outputs]`, F32.
//!
//! mlx_lm computes `x·A·B·scale` with `A: [inputs, rank]`, `B: [rank, outputs]`; llama.cpp computes
//! `B·A·x·alpha/rank` with row-major `A: [rank, inputs]`, `B: [outputs, rank]`: so both are written
//! transposed and `alpha = scale·rank`. For a Llama base in Hugging Face order, llama.cpp's GGUF
//! permutes the rows of the q/k projections for its rotary embedding; the rows of `B` for q/k get
//! the same permutation. (A base converted from GGUF, `rope_traditional = true`, is already in that
//! order; Qwen2 is never permuted.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kenning_formats::adapter::{AdapterConfig, CONFIG_FILE, Factor, FormatError, Projection, WEIGHTS_FILE, parse_tensor_name, tensor_name};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::gguf;

/// The file written beside the adapter, and refreshed when the adapter changes.
pub const EXPORT_NAME: &str = "adapter-llama.gguf";

const ALIGNMENT: usize = gguf::DEFAULT_ALIGNMENT;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Format(#[from] FormatError),
}

pub(super) fn file_error(path: &Path, message: impl std::fmt::Display) -> LoraError {
    LoraError::File { path: path.to_owned(), message: message.to_string() }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    pub path: PathBuf,
    pub architecture: String,
    pub tensors: usize,
    pub rank: usize,
    pub alpha: f32,
}

/// The adapter llama.cpp should load for `adapter`: the file itself when it is a GGUF; for an
/// adapter directory, its GGUF export (written on first use, again whenever `adapters.safetensors`
/// or `adapter_config.json` is newer than it).
pub fn for_llama(adapter: &Path) -> Result<PathBuf, LoraError> {
    if adapter.is_file() {
        return Ok(adapter.to_owned());
    }
    let out = adapter.join(EXPORT_NAME);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_input = [adapter.join(WEIGHTS_FILE), adapter.join(CONFIG_FILE)].iter().filter_map(|p| modified(p)).max();
    if let (Some(exported), Some(input)) = (modified(&out), newest_input)
        && exported >= input
    {
        return Ok(out);
    }
    export(adapter, None, &out).map(|e| e.path)
}

/// The parts of the base model's `config.json` that decide names and row order.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct BaseConfig {
    pub(super) model_type: String,
    pub(super) num_attention_heads: usize,
    #[serde(default)]
    pub(super) num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub(super) rope_traditional: bool,
}

impl BaseConfig {
    /// The heads whose rows of `projection` go into llama.cpp's rotary order: q and k of a Llama
    /// model in Hugging Face order; `None` when its rows stay as they are.
    pub(super) fn rotary_heads(&self, projection: Projection) -> Option<usize> {
        if self.model_type != "llama" || self.rope_traditional {
            return None;
        }
        match projection {
            Projection::Q => Some(self.num_attention_heads),
            Projection::K => Some(self.num_key_value_heads.unwrap_or(self.num_attention_heads)),
            _ => None,
        }
    }
}

/// Writes the adapter in `dir` as a GGUF LoRA file at `out`. `base` is the base model's directory
/// (its `config.json`); by default the `model` that `adapter_config.json` records.
pub fn export(dir: &Path, base: Option<&Path>, out: &Path) -> Result<Exported, LoraError> {
    let config = AdapterConfig::read(dir)?;
    let config_path = dir.join(CONFIG_FILE);
    let base_dir = match (base, &config.model) {
        (Some(b), _) => b.to_owned(),
        (None, Some(m)) => PathBuf::from(m),
        (None, None) => {
            return Err(file_error(&config_path, "does not name its base model: give the base model's directory"));
        }
    };
    let base_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&base_path)
        .map_err(|e| file_error(&base_path, format!("{e} (the base model's config.json, needed to convert the adapter)")))?;
    let base: BaseConfig = serde_json::from_str(&text).map_err(|e| file_error(&base_path, e))?;
    if !matches!(base.model_type.as_str(), "llama" | "qwen2") {
        return Err(LoraError::Invalid(format!("a {} base model: llama.cpp adapters are written for llama and qwen2", base.model_type)));
    }

    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| file_error(&weights_path, e))?;
    let tensors = read_safetensors(&bytes, |_| true).map_err(|e| file_error(&weights_path, e))?;
    let rank = config.lora_parameters.rank as usize;
    let alpha = config.lora_parameters.scale * rank as f32;

    let mut pairs: Vec<(usize, Projection, &Tensor, &Tensor)> = Vec::new();
    for (name, a) in &tensors {
        let Some((layer, projection, Factor::A)) = parse_tensor_name(name) else {
            if name.ends_with(".lora_a") {
                return Err(file_error(&weights_path, format!("{name}: not a projection of a layer")));
            }
            continue;
        };
        let b_name = tensor_name(layer, projection, Factor::B);
        let b = tensors.get(&b_name).ok_or_else(|| file_error(&weights_path, format!("{b_name} is missing")))?;
        pairs.push((layer, projection, a, b));
    }
    if pairs.is_empty() {
        return Err(file_error(&weights_path, "holds no LoRA weights (…lora_a / …lora_b)"));
    }
    pairs.sort_by_key(|(layer, projection, ..)| (*layer, projection.short_name()));

    let mut out_tensors = Vec::with_capacity(pairs.len() * 2);
    for (layer, projection, a, b) in pairs {
        let gguf = gguf_projection(projection);
        let ([inputs, a_rank], [b_rank, outputs]) = (shape2(a, "lora_a")?, shape2(b, "lora_b")?);
        let projection_name = projection.short_name();
        if a_rank != rank || b_rank != rank {
            return Err(file_error(&weights_path, format!("layer {layer} {projection_name}: rank {a_rank}/{b_rank}, the config says {rank}")));
        }
        // Row-major [rank, inputs] and [outputs, rank]: ggml's [inputs, rank] and [rank, outputs].
        let a_t = transpose(&a.data, inputs, rank);
        let mut b_t = transpose(&b.data, rank, outputs);
        if let Some(heads) = base.rotary_heads(projection) {
            b_t = permute_rows(&b_t, outputs, rank, heads).ok_or_else(|| {
                LoraError::Invalid(format!("layer {layer} {projection_name}: {outputs} rows do not split into {heads} heads of even size"))
            })?;
        }
        out_tensors.push((format!("blk.{layer}.{gguf}.weight.lora_a"), [inputs as u64, rank as u64], a_t));
        out_tensors.push((format!("blk.{layer}.{gguf}.weight.lora_b"), [rank as u64, outputs as u64], b_t));
    }

    let metadata = [
        ("general.architecture", base.model_type.clone()),
        ("general.type", "adapter".to_owned()),
        ("adapter.type", "lora".to_owned()),
        ("general.name", dir.file_name().map_or_else(|| "adapter".to_owned(), |n| n.to_string_lossy().into_owned())),
    ];
    // A name of this writer's own: two processes loading the same adapter (`kenning eval --all
    // --jobs`) each write a whole file and rename it; neither reads nor renames the other's half.
    let partial = crate::paths::unique_sibling(out);
    write_gguf(&partial, &metadata, alpha, &out_tensors).map_err(|e| file_error(&partial, e))?;
    std::fs::rename(&partial, out).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        file_error(out, e)
    })?;
    Ok(Exported { path: out.to_owned(), architecture: base.model_type, tensors: out_tensors.len(), rank, alpha })
}

/// llama.cpp's name of a projection (`blk.{layer}.{name}.weight`).
pub(super) fn gguf_projection(projection: Projection) -> &'static str {
    match projection {
        Projection::Q => "attn_q",
        Projection::K => "attn_k",
        Projection::V => "attn_v",
        Projection::O => "attn_output",
        Projection::Gate => "ffn_gate",
        Projection::Up => "ffn_up",
        Projection::Down => "ffn_down",
    }
}

pub(super) fn shape2(t: &Tensor, what: &str) -> Result<[usize; 2], LoraError> {
    match t.shape[..] {
        [r, c] => Ok([r, c]),
        _ => Err(LoraError::Invalid(format!("a {what} of shape {:?}: two dimensions expected", t.shape))),
    }
}

/// Row-major `[rows, cols]` → row-major `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// llama.cpp's q/k row order: per head, rows `[first half | second half]` become interleaved
/// pairs (`new[h][i][s] = old[h][s][i]`). `None` when the rows do not split into heads of even size.
pub(super) fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Option<Vec<f32>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    let head = rows / heads;
    let half = head / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let from = h * head + s * half + i;
                let to = h * head + i * 2 + s;
                out[to * cols..(to + 1) * cols].copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    Some(out)
}

pub(super) struct Tensor {
    pub(super) shape: Vec<usize>,
    pub(super) data: Vec<f32>,
}

/// The tensors of a safetensors file that `keep` names, as f32 (F32, F16 and BF16 are read).
pub(super) fn read_safetensors(bytes: &[u8], keep: impl Fn(&str) -> bool) -> Result<HashMap<String, Tensor>, String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let mut out = HashMap::new();
    for (name, view) in file.iter() {
        if !keep(name) {
            continue;
        }
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(format!("{name}: dtype {other} (F32, F16 or BF16 expected)")),
        };
        out.insert(name.to_owned(), Tensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// GGUF with string metadata, `adapter.lora.alpha`, and F32 tensors of two dimensions.
fn write_gguf(path: &Path, metadata: &[(&str, String)], alpha: f32, tensors: &[(String, [u64; 2], Vec<f32>)]) -> std::io::Result<()> {
    let mut meta: Vec<(String, gguf::Value)> = metadata.iter().map(|(k, v)| ((*k).to_owned(), gguf::Value::String(v.clone()))).collect();
    meta.push(("adapter.lora.alpha".to_owned(), gguf::Value::F32(alpha)));
    let tensors: Vec<gguf::OutTensor> = tensors
        .iter()
        .map(|(name, ne, data)| gguf::OutTensor {
            name: name.clone(),
            dims: ne.to_vec(),
            ggml_type: gguf::F32,
            data: data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
        })
        .collect();
    gguf::write(path, &meta, &tensors, ALIGNMENT)
}

#[cfg(test)]
pub(super) mod tests;
