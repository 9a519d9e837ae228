use super::*;

/// A safetensors file of F32 tensors.
pub(in crate::formats) fn safetensors(tensors: &[(&str, [usize; 2], Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert((*name).to_owned(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "mlx"}));
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}

/// What a GGUF file holds: string and f32 metadata, and per tensor its ggml shape and values.
struct Gguf {
    strings: HashMap<String, String>,
    floats: HashMap<String, f32>,
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        self.at += n;
        &self.bytes[self.at - n..self.at]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
}

fn read_gguf(bytes: &[u8]) -> Gguf {
    let mut c = Cursor { bytes, at: 0 };
    assert_eq!(c.take(4), b"GGUF");
    assert_eq!(c.u32(), 3);
    let (n_tensors, n_kv) = (c.u64(), c.u64());
    let (mut strings, mut floats) = (HashMap::new(), HashMap::new());
    for _ in 0..n_kv {
        let key = c.string();
        match c.u32() {
            8 => {
                strings.insert(key, c.string());
            }
            6 => {
                floats.insert(key, f32::from_le_bytes(c.take(4).try_into().unwrap()));
            }
            t => panic!("metadata type {t}"),
        }
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string();
        let dims = c.u32();
        let ne: Vec<u64> = (0..dims).map(|_| c.u64()).collect();
        assert_eq!(c.u32(), 0, "F32");
        infos.push((name, ne, c.u64() as usize));
    }
    let data_start = c.at.div_ceil(ALIGNMENT) * ALIGNMENT;
    let tensors = infos
        .into_iter()
        .map(|(name, ne, offset)| {
            assert_eq!(offset % ALIGNMENT, 0);
            let count = ne.iter().product::<u64>() as usize;
            let start = data_start + offset;
            let values = bytes[start..start + count * 4].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, ne, values)
        })
        .collect();
    assert_eq!(bytes.len() % ALIGNMENT, 0, "the last tensor is padded too");
    Gguf { strings, floats, tensors }
}

/// An adapter on layer 3's q (4 heads of 4 rows, inputs 3) and down projections, rank 2, in a
/// directory with the base model's config.
fn adapter(dir: &Path, model_type: &str, rope_traditional: bool) -> (Vec<f32>, Vec<f32>) {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(
        base.join("config.json"),
        serde_json::json!({"model_type": model_type, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_traditional": rope_traditional}).to_string(),
    )
    .unwrap();
    let adapter = dir.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        serde_json::json!({"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": {"rank": 2, "scale": 20.0, "dropout": 0.0}, "model": base}).to_string(),
    )
    .unwrap();
    let q_a: Vec<f32> = (0..3 * 2).map(|i| i as f32).collect(); // [inputs 3, rank 2]
    let q_b: Vec<f32> = (0..2 * 16).map(|i| 100.0 + i as f32).collect(); // [rank 2, outputs 16]
    let file = safetensors(&[
        ("model.layers.3.self_attn.q_proj.lora_a", [3, 2], q_a.clone()),
        ("model.layers.3.self_attn.q_proj.lora_b", [2, 16], q_b.clone()),
        ("model.layers.3.mlp.down_proj.lora_a", [5, 2], vec![0.5; 10]),
        ("model.layers.3.mlp.down_proj.lora_b", [2, 3], vec![-1.0; 6]),
    ]);
    std::fs::write(adapter.join("adapters.safetensors"), file).unwrap();
    (q_a, q_b)
}

fn exported(model_type: &str, rope_traditional: bool) -> (Gguf, Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let (q_a, q_b) = adapter(dir.path(), model_type, rope_traditional);
    let out = dir.path().join("out.gguf");
    let summary = export(&dir.path().join("adapter"), None, &out).unwrap();
    assert_eq!((summary.tensors, summary.rank, summary.alpha, summary.architecture.as_str()), (4, 2, 40.0, model_type));
    (read_gguf(&std::fs::read(&out).unwrap()), q_a, q_b)
}

#[test]
fn the_layout_is_llama_cpps() {
    let (gguf, q_a, q_b) = exported("qwen2", false);
    assert_eq!(gguf.strings["general.architecture"], "qwen2");
    assert_eq!(gguf.strings["general.type"], "adapter");
    assert_eq!(gguf.strings["adapter.type"], "lora");
    assert_eq!(gguf.floats["adapter.lora.alpha"], 40.0, "alpha / rank is mlx_lm's scale");
    let names: Vec<&str> = gguf.tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["blk.3.ffn_down.weight.lora_a", "blk.3.ffn_down.weight.lora_b", "blk.3.attn_q.weight.lora_a", "blk.3.attn_q.weight.lora_b"]);
    let (_, a_ne, a) = &gguf.tensors[2];
    let (_, b_ne, b) = &gguf.tensors[3];
    // ggml [inputs, rank] = row-major [rank, inputs]: A transposed.
    assert_eq!(a_ne, &[3, 2]);
    for i in 0..3 {
        for r in 0..2 {
            assert_eq!(a[r * 3 + i], q_a[i * 2 + r]);
        }
    }
    // ggml [rank, outputs] = row-major [outputs, rank]: B transposed, rows in order (Qwen2).
    assert_eq!(b_ne, &[2, 16]);
    for o in 0..16 {
        for r in 0..2 {
            assert_eq!(b[o * 2 + r], q_b[r * 16 + o]);
        }
    }
}

#[test]
fn llama_q_rows_follow_the_gguf_rotary_order_unless_already_in_it() {
    let (hf, _, q_b) = exported("llama", false);
    let b = &hf.tensors[3].2;
    // 4 heads of 4 rows: per head, rows [0 1 | 2 3] become [0 2 1 3].
    for (to, from) in [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15].into_iter().enumerate() {
        for r in 0..2 {
            assert_eq!(b[to * 2 + r], q_b[r * 16 + from], "row {to}");
        }
    }
    // down_proj is never permuted.
    assert_eq!(hf.tensors[1].2, vec![-1.0; 6]);

    let (traditional, _, _) = exported("llama", true);
    let b = &traditional.tensors[3].2;
    for o in 0..16 {
        assert_eq!(b[o * 2], q_b[o]);
    }
}

#[test]
fn the_export_is_reused_until_the_adapter_changes() {
    let dir = tempfile::tempdir().unwrap();
    adapter(dir.path(), "llama", true);
    let adapter_dir = dir.path().join("adapter");
    let path = for_llama(&adapter_dir).unwrap();
    assert_eq!(path, adapter_dir.join(EXPORT_NAME));
    let first = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert_eq!(for_llama(&adapter_dir).unwrap(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), first, "not rewritten");
    // A GGUF adapter is used as it is.
    assert_eq!(for_llama(&path).unwrap(), path);
    // A newer adapter is exported again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let weights = adapter_dir.join("adapters.safetensors");
    std::fs::write(&weights, std::fs::read(&weights).unwrap()).unwrap();
    for_llama(&adapter_dir).unwrap();
    assert!(std::fs::metadata(&path).unwrap().modified().unwrap() > first);
}

#[test]
fn bad_adapters_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    adapter(dir.path(), "llama", false);
    let adapter_dir = dir.path().join("adapter");
    let out = dir.path().join("x.gguf");

    std::fs::write(adapter_dir.join("adapters.safetensors"), b"junk").unwrap();
    let e = export(&adapter_dir, None, &out).unwrap_err().to_string();
    assert!(e.contains("adapters.safetensors") && e.contains("safetensors"), "{e}");

    std::fs::write(adapter_dir.join("adapters.safetensors"), safetensors(&[("model.layers.0.self_attn.q_proj.lora_a", [3, 2], vec![0.0; 6])])).unwrap();
    let e = export(&adapter_dir, None, &out).unwrap_err().to_string();
    assert!(e.contains("q_proj.lora_b is missing"), "{e}");

    std::fs::write(
        adapter_dir.join("adapters.safetensors"),
        safetensors(&[("model.layers.0.self_attn.q_proj.lora_a", [3, 4], vec![0.0; 12]), ("model.layers.0.self_attn.q_proj.lora_b", [4, 16], vec![0.0; 64])]),
    )
    .unwrap();
    let e = export(&adapter_dir, None, &out).unwrap_err().to_string();
    assert!(e.contains("rank 4/4, the config says 2"), "{e}");

    std::fs::remove_file(dir.path().join("base").join("config.json")).unwrap();
    let e = export(&adapter_dir, None, &out).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("base model"), "{e}");
    assert!(!out.exists(), "nothing half-written");
}
