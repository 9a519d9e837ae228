use super::*;
use crate::formats::lora_gguf::tests::safetensors;

/// A base GGUF: an embedding and a down projection in Q4_0, layer 0's q projection (2 heads of 4
/// rows, 32 inputs) in Q8_0, a norm in F32.
fn base(dir: &Path, architecture: &str) -> PathBuf {
    let bytes = |n: usize, seed: u8| -> Cow<'static, [u8]> { Cow::Owned((0..n).map(|i| (i as u8).wrapping_mul(seed)).collect()) };
    let tensors = vec![
        OutTensor { name: "token_embd.weight".into(), dims: vec![32, 4], ggml_type: 2, data: bytes(4 * 18, 3) },
        OutTensor { name: "blk.0.attn_q.weight".into(), dims: vec![32, 8], ggml_type: 8, data: bytes(8 * 34, 5) },
        OutTensor { name: "blk.0.ffn_down.weight".into(), dims: vec![32, 4], ggml_type: 2, data: bytes(4 * 18, 7) },
        OutTensor { name: "output_norm.weight".into(), dims: vec![32], ggml_type: gguf::F32, data: bytes(128, 11) },
    ];
    let metadata = vec![
        ("general.architecture".to_owned(), gguf::Value::String(architecture.into())),
        ("general.name".to_owned(), gguf::Value::String("tiny".into())),
        ("tokenizer.ggml.tokens".to_owned(), gguf::Value::Array(8, vec![gguf::Value::String("<s>".into())])),
    ];
    let path = dir.join("base.gguf");
    gguf::write(&path, &metadata, &tensors, gguf::DEFAULT_ALIGNMENT).unwrap();
    path
}

/// Row `r`, column `c` of a fused weight: exact in f16.
fn value(r: usize, c: usize) -> f32 {
    r as f32 + c as f32 / 64.0
}

/// A fused directory (q and down projections of layer 0, and the embedding) and an adapter on
/// layer `adapted_layer`'s q projection.
fn fused_and_adapter(dir: &Path, model_type: &str, q_rows: usize, adapted_layer: usize) -> (PathBuf, PathBuf) {
    let fused = dir.join("fused");
    std::fs::create_dir_all(&fused).unwrap();
    let matrix = |rows: usize, cols: usize| (0..rows).flat_map(|r| (0..cols).map(move |c| value(r, c))).collect::<Vec<_>>();
    let weights = safetensors(&[
        ("model.layers.0.self_attn.q_proj.weight", [q_rows, 32], matrix(q_rows, 32)),
        ("model.layers.0.mlp.down_proj.weight", [4, 32], matrix(4, 32)),
        ("model.embed_tokens.weight", [4, 32], matrix(4, 32)),
    ]);
    std::fs::write(fused.join("model.safetensors"), weights).unwrap();
    let config = serde_json::json!({"model_type": model_type, "num_attention_heads": 2, "num_key_value_heads": 2, "rope_traditional": false});
    std::fs::write(fused.join("config.json"), config.to_string()).unwrap();
    let adapter = dir.join("adapters");
    std::fs::create_dir_all(&adapter).unwrap();
    let stem = format!("model.layers.{adapted_layer}.self_attn.q_proj");
    let lora = safetensors(&[(&format!("{stem}.lora_a"), [32, 2], vec![0.5; 64]), (&format!("{stem}.lora_b"), [2, 8], vec![0.25; 16])]);
    std::fs::write(adapter.join("adapters.safetensors"), lora).unwrap();
    (fused, adapter)
}

/// The first value of each row of an F16 tensor of `cols` columns.
fn row_heads(data: &[u8], cols: usize) -> Vec<f32> {
    data.chunks_exact(2 * cols).map(|row| half::f16::from_le_bytes([row[0], row[1]]).to_f32()).collect()
}

#[test]
fn adapted_projections_are_replaced_and_everything_else_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = base(dir.path(), "llama");
    let (fused, adapter) = fused_and_adapter(dir.path(), "llama", 8, 0);
    let out = dir.path().join("model.gguf");
    let written = write(&base_path, &fused, &adapter, &out).unwrap();
    assert_eq!((written.replaced, written.copied, written.architecture.as_str()), (1, 3, "llama"));

    let (base_bytes, bytes) = (std::fs::read(&base_path).unwrap(), std::fs::read(&out).unwrap());
    let (before, after) = (Gguf::read(&base_bytes).unwrap(), Gguf::read(&bytes).unwrap());
    assert_eq!(after.get("general.name").and_then(gguf::Value::as_str), Some("tiny + adapters"));
    assert_eq!(after.metadata.iter().filter(|(k, _)| k != "general.name").collect::<Vec<_>>(), before.metadata.iter().filter(|(k, _)| k != "general.name").collect::<Vec<_>>());
    assert_eq!(after.tensors.iter().map(|t| &t.name).collect::<Vec<_>>(), before.tensors.iter().map(|t| &t.name).collect::<Vec<_>>());
    for (i, t) in after.tensors.iter().enumerate() {
        let data = after.tensor_data(&bytes, i).unwrap();
        if t.name == "blk.0.attn_q.weight" {
            assert_eq!((t.ggml_type, t.dims.as_slice()), (gguf::F16, [32, 8].as_slice()));
            // Per head, rows [a0 a1 | b0 b1] of Hugging Face's order interleave as a0 b0 a1 b1.
            assert_eq!(row_heads(data, 32), vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
            let row = |r: usize| -> Vec<f32> { data[r * 64..(r + 1) * 64].chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect() };
            assert_eq!(row(1), (0..32).map(|c| value(2, c)).collect::<Vec<_>>());
        } else {
            // Not adapted (the down projection has a fused weight too): the base's bytes and type.
            assert_eq!((t.ggml_type, data), (before.tensors[i].ggml_type, before.tensor_data(&base_bytes, i).unwrap()), "{}", t.name);
        }
    }
}

#[test]
fn qwen2_rows_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = base(dir.path(), "qwen2");
    let (fused, adapter) = fused_and_adapter(dir.path(), "qwen2", 8, 0);
    let out = dir.path().join("model.gguf");
    write(&base_path, &fused, &adapter, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let gguf = Gguf::read(&bytes).unwrap();
    let q = gguf.tensors.iter().position(|t| t.name == "blk.0.attn_q.weight").unwrap();
    assert_eq!(row_heads(gguf.tensor_data(&bytes, q).unwrap(), 32), (0..8).map(|r| r as f32).collect::<Vec<_>>());
}

#[test]
fn a_base_that_does_not_match_is_an_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.gguf");
    let cases: [(&str, &str, usize, usize, &str); 4] = [
        ("qwen2", "llama", 8, 0, "a \"qwen2\" model"),
        ("llama", "llama", 6, 0, "not the same model"),
        ("llama", "llama", 8, 1, "has no blk.1.attn_q.weight"),
        ("llama", "gemma", 8, 0, "a \"llama\" model"),
    ];
    for (base_arch, fused_arch, q_rows, layer, message) in cases {
        let case = tempfile::tempdir().unwrap();
        let base_path = base(case.path(), base_arch);
        let (fused, adapter) = fused_and_adapter(case.path(), fused_arch, q_rows, layer);
        let error = write(&base_path, &fused, &adapter, &out).unwrap_err().to_string();
        assert!(error.contains(message), "{error}");
    }
    let case = tempfile::tempdir().unwrap();
    let (fused, adapter) = fused_and_adapter(case.path(), "llama", 8, 0);
    std::fs::write(case.path().join("junk.gguf"), b"GGUF\x03\0\0\0").unwrap();
    assert!(write(&case.path().join("junk.gguf"), &fused, &adapter, &out).is_err());
    // A fused model that stayed quantized (mlx_lm.fuse without --de-quantize): packed U32 weights.
    let header = br#"{"model.layers.0.self_attn.q_proj.weight":{"dtype":"U32","shape":[8,4],"data_offsets":[0,128]}}"#;
    let mut packed = (header.len() as u64).to_le_bytes().to_vec();
    packed.extend_from_slice(header);
    packed.extend_from_slice(&[0; 128]);
    std::fs::write(fused.join("model.safetensors"), packed).unwrap();
    let error = write(&base(case.path(), "llama"), &fused, &adapter, &out).unwrap_err().to_string();
    assert!(error.contains("U32") && error.contains("--de-quantize"), "{error}");
    std::fs::remove_file(fused.join("model.safetensors")).unwrap();
    assert!(write(&base(case.path(), "llama"), &fused, &adapter, &out).unwrap_err().to_string().contains("model.safetensors"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no output, no partial file");
}
