//! A fused model as one GGUF file, for llama.cpp and Ollama (`FROM ./model.gguf`): the base model's
//! own GGUF — its metadata, tokenizer and every tensor the adapter did not touch, byte for byte in
//! their quantization — with each adapted projection replaced by its fused weight, as F16, from the
//! directory `kenning-train fuse` (or `mlx_lm.fuse`) wrote.
//!
//! A fused directory is in Hugging Face row order; for a Llama base the q/k rows go back into
//! llama.cpp's rotary order, as in the adapter export (Qwen2 is never permuted).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use kenning_formats::adapter::{Factor, WEIGHTS_FILE, parse_tensor_name, weight_stem};

use super::gguf::{self, Gguf, OutTensor};
use super::lora_gguf::{BaseConfig, LoraError, file_error, gguf_projection, permute_rows, read_safetensors, shape2};

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedGguf {
    pub path: PathBuf,
    pub architecture: String,
    /// Projections written with their fused weights.
    pub replaced: usize,
    /// Tensors copied from the base as they were.
    pub copied: usize,
}

/// Writes `out`: the GGUF `base` with the projections `adapter` adapts replaced by their weights in
/// `fused` (`model.safetensors` + `config.json`). Nothing is left at `out` on an error.
pub fn write(base: &Path, fused: &Path, adapter: &Path, out: &Path) -> Result<FusedGguf, LoraError> {
    let config_path = fused.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e))?;
    let config: BaseConfig = serde_json::from_str(&text).map_err(|e| file_error(&config_path, e))?;
    let adapter_path = adapter.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&adapter_path).map_err(|e| file_error(&adapter_path, e))?;
    let lora = read_safetensors(&bytes, |n| n.ends_with(".lora_a")).map_err(|e| file_error(&adapter_path, e))?;
    // GGUF name → (the fused weight's name, the heads its rows are permuted by, if any).
    let mut wanted: HashMap<String, (String, Option<usize>)> = HashMap::new();
    for name in lora.keys() {
        let Some((layer, projection, Factor::A)) = parse_tensor_name(name) else {
            return Err(file_error(&adapter_path, format!("{name}: not a projection of a layer")));
        };
        let gguf_name = gguf_projection(projection);
        wanted.insert(format!("blk.{layer}.{gguf_name}.weight"), (format!("{}.weight", weight_stem(layer, projection)), config.rotary_heads(projection)));
    }
    if wanted.is_empty() {
        return Err(file_error(&adapter_path, "holds no LoRA weights (…lora_a / …lora_b)"));
    }

    let weights_path = fused.join("model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|e| file_error(&weights_path, e))?;
    let names: HashSet<&str> = wanted.values().map(|(n, _)| n.as_str()).collect();
    let weights = read_safetensors(&bytes, |n| names.contains(n)).map_err(|e| {
        let hint = if e.contains("dtype") { " (a quantized fused model: mlx_lm.fuse writes float weights with --de-quantize)" } else { "" };
        file_error(&weights_path, format!("{e}{hint}"))
    })?;
    drop(bytes);

    let base_bytes = std::fs::read(base).map_err(|e| file_error(base, e))?;
    let header = Gguf::read(&base_bytes).map_err(|e| file_error(base, e))?;
    let architecture = header.get("general.architecture").and_then(gguf::Value::as_str).unwrap_or_default().to_owned();
    if architecture != config.model_type {
        return Err(LoraError::Invalid(format!("the base GGUF is a {architecture:?} model, the fused model a {:?} one", config.model_type)));
    }

    let mut tensors = Vec::with_capacity(header.tensors.len());
    let mut replaced = 0;
    for (i, info) in header.tensors.iter().enumerate() {
        let Some((name, heads)) = wanted.remove(&info.name) else {
            let data = header.tensor_data(&base_bytes, i).map_err(|e| file_error(base, e))?;
            tensors.push(OutTensor { name: info.name.clone(), dims: info.dims.clone(), ggml_type: info.ggml_type, data: Cow::Borrowed(data) });
            continue;
        };
        let tensor = weights.get(&name).ok_or_else(|| file_error(&weights_path, format!("{name} is missing")))?;
        let [rows, cols] = shape2(tensor, "weight")?;
        if info.dims != [cols as u64, rows as u64] {
            return Err(LoraError::Invalid(format!("{}: {:?} in the base, [{cols}, {rows}] fused: not the same model", info.name, info.dims)));
        }
        let permuted;
        let values = match heads {
            Some(heads) => {
                permuted = permute_rows(&tensor.data, rows, cols, heads)
                    .ok_or_else(|| LoraError::Invalid(format!("{name}: {rows} rows do not split into {heads} heads of even size")))?;
                &permuted
            }
            None => &tensor.data,
        };
        let data: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        tensors.push(OutTensor { name: info.name.clone(), dims: info.dims.clone(), ggml_type: gguf::F16, data: Cow::Owned(data) });
        replaced += 1;
    }
    if let Some(missing) = wanted.keys().min() {
        return Err(LoraError::Invalid(format!("the base GGUF has no {missing}: not the model the adapter was trained on")));
    }

    let mut metadata = header.metadata.clone();
    let label = adapter.file_name().map_or_else(|| "adapter".to_owned(), |n| n.to_string_lossy().into_owned());
    match metadata.iter_mut().find(|(k, _)| k == "general.name") {
        Some((_, gguf::Value::String(name))) => *name = format!("{name} + {label}"),
        _ => metadata.push(("general.name".to_owned(), gguf::Value::String(label))),
    }
    let partial = out.with_extension("gguf.partial");
    let written = gguf::write(&partial, &metadata, &tensors, header.alignment).map_err(|e| file_error(&partial, e));
    if let Err(e) = written.and_then(|()| std::fs::rename(&partial, out).map_err(|e| file_error(out, e))) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    Ok(FusedGguf { path: out.to_owned(), architecture, replaced, copied: tensors.len() - replaced })
}

#[cfg(test)]
mod tests;
