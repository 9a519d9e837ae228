//! Writing a (fused) model as a Hugging Face / MLX directory: `model.safetensors` (f16), `config.json`
//! without quantization, the tokenizer files, and an Ollama `Modelfile`. Weights converted from a
//! GGUF keep llama.cpp's interleaved q/k rows (`rope_traditional`); they are put back in Hugging
//! Face order here, so the export is a standard checkpoint (Ollama, transformers) and not only
//! something MLX reads.

use std::path::Path;

use mlx_rs::{Array, Dtype};
use serde_json::Value;

use crate::lora::Lora;
use crate::model::{Llama, ModelError};

/// Merges an adapter into `model`'s weights (after which the model no longer needs it).
pub fn fuse(lora: &Lora, params: &[Array], model: &mut Llama) -> Result<(), mlx_rs::error::Exception> {
    for (layer, projection, delta) in lora.deltas(params)? {
        model.add_to_projection(layer, projection, &delta)?;
    }
    Ok(())
}

/// Rows of a q/k projection (`[heads·head_dim, in]`) from llama.cpp's rotary layout back to
/// Hugging Face's: the inverse of the permutation `convert_hf_to_gguf.py` applies.
pub fn unpermute_rows(w: &Array, heads: i32) -> Result<Array, mlx_rs::error::Exception> {
    let (out, inputs) = (w.shape()[0], w.shape()[1]);
    w.reshape(&[heads, out / heads / 2, 2, inputs])?.swap_axes(1, 2)?.reshape(&[out, inputs])
}

/// Writes `model` (its current weights: fuse an adapter first) into `out`, taking the config and
/// tokenizer files from `source` (the directory it was loaded from).
pub fn write_model_dir(model: &Llama, source: &Path, out: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e))?;
    let config_path = source.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::file(&config_path, e))?;
    let mut config: Value = serde_json::from_str(&text).map_err(|e| ModelError::file(&config_path, e))?;
    let traditional = config.get("rope_traditional").and_then(Value::as_bool).unwrap_or(false);
    let c = &model.config;
    let mut weights = Vec::new();
    for (name, w) in model.weights()? {
        let w = if traditional && name.ends_with("self_attn.q_proj.weight") {
            unpermute_rows(&w, c.num_attention_heads)?
        } else if traditional && name.ends_with("self_attn.k_proj.weight") {
            unpermute_rows(&w, c.num_key_value_heads)?
        } else {
            w
        };
        weights.push((name, w.as_dtype(Dtype::Float16)?));
    }
    let path = out.join("model.safetensors");
    let metadata = std::collections::HashMap::from([("format".to_owned(), "mlx".to_owned())]);
    Array::save_safetensors(weights.iter().map(|(n, w)| (n.as_str(), w)), &metadata, &path).map_err(|e| ModelError::file(&path, e))?;
    if let Some(map) = config.as_object_mut() {
        map.remove("quantization");
        map.remove("quantization_config");
        map.insert("rope_traditional".into(), false.into());
        map.insert("torch_dtype".into(), "float16".into());
    }
    let path = out.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap_or_default() + "\n").map_err(|e| ModelError::file(&path, e))?;
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
        let from = source.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name)).map_err(|e| ModelError::file(&from, e))?;
        }
    }
    let path = out.join("Modelfile");
    std::fs::write(&path, modelfile(&out.join("tokenizer.json"))).map_err(|e| ModelError::file(&path, e))?;
    Ok(())
}

/// An Ollama `Modelfile` for the directory: `FROM .`, a template that passes kenning's raw prompts
/// through (or builds a fill-in-the-middle prompt from Ollama's `suffix`), the stop tokens.
pub fn modelfile(tokenizer_json: &Path) -> String {
    let vocabulary = std::fs::read_to_string(tokenizer_json).unwrap_or_default();
    let has = |t: &str| vocabulary.contains(&format!("\"{t}\""));
    let fim = [("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")]
        .into_iter()
        .find(|(p, s, m)| has(p) && has(s) && has(m));
    let template = match fim {
        Some((p, s, m)) => format!("{{{{- if .Suffix }}}}{p}{{{{ .Prompt }}}}{s}{{{{ .Suffix }}}}{m}{{{{- else }}}}{{{{ .Prompt }}}}{{{{- end }}}}"),
        None => "{{ .Prompt }}".to_owned(),
    };
    let mut out = format!("# Written by kenning-train fuse. Create the model with: ollama create NAME -f Modelfile\nFROM .\nTEMPLATE \"\"\"{template}\"\"\"\n");
    for stop in ["<|endoftext|>", "<|im_end|>", "<|file_sep|>", "<file_sep>", "</s>"] {
        if has(stop) {
            out.push_str(&format!("PARAMETER stop \"{stop}\"\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_gguf_permutation() {
        // Two heads of head_dim 4 over 3 inputs: rows 0..8 with values = row index.
        let rows: Vec<f32> = (0..8).flat_map(|r| [r as f32; 3]).collect();
        let hf = Array::from_slice(&rows, &[8, 3]);
        // convert_hf_to_gguf's permute: reshape(heads, 2, d/2, in).swapaxes(1, 2).
        let gguf = hf.reshape(&[2, 2, 2, 3]).unwrap().swap_axes(1, 2).unwrap().reshape(&[8, 3]).unwrap();
        let gguf_rows: Vec<f32> = gguf.as_slice::<f32>().iter().step_by(3).copied().collect();
        assert_eq!(gguf_rows, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        let back = unpermute_rows(&gguf, 2).unwrap();
        assert_eq!(back.as_slice::<f32>(), hf.as_slice::<f32>());
    }

    #[test]
    fn modelfile_uses_the_vocabulary_fim_tokens() {
        let dir = std::env::temp_dir().join(format!("kenning-modelfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, r#"{"added_tokens":[{"content":"<|fim_prefix|>"},{"content":"<|fim_suffix|>"},{"content":"<|fim_middle|>"},{"content":"<|endoftext|>"}]}"#).unwrap();
        let text = modelfile(&path);
        assert!(text.contains("TEMPLATE \"\"\"{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>{{- else }}{{ .Prompt }}{{- end }}\"\"\""), "{text}");
        assert!(text.contains("PARAMETER stop \"<|endoftext|>\"\n") && !text.contains("</s>"), "{text}");
        std::fs::write(&path, r#"{"added_tokens":[{"content":"<|endoftext|>"}]}"#).unwrap();
        assert!(modelfile(&path).contains("TEMPLATE \"\"\"{{ .Prompt }}\"\"\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
