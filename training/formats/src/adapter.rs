//! mlx_lm's LoRA adapter directory, the format `kenning train` writes and the server converts for
//! llama.cpp or loads in MLX:
//!
//! - `adapter_config.json`: `fine_tune_type` (`"lora"`), `num_layers` (adapted layers, counted
//!   from the last), `lora_parameters` (`rank`, `dropout`, `scale`) and the base `model`; mlx_lm
//!   records its training arguments there too, which are kept as they are.
//! - `adapters.safetensors`: per adapted projection `model.layers.{i}.{self_attn|mlp}.{name}.lora_a`
//!   (`[inputs, rank]`) and `….lora_b` (`[rank, outputs]`); the update is `scale · x·A·B`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The configuration file of an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights of an adapter directory.
pub const WEIGHTS_FILE: &str = "adapters.safetensors";
/// The training run's state beside the weights it describes (iteration, losses, what the run was
/// asked to do), written last in a checkpoint, so it is there only with those weights.
pub const STATE_FILE: &str = "trainer_state.json";
/// The training run's AdamW moments, beside [`STATE_FILE`].
pub const MOMENTS_FILE: &str = "trainer_state.safetensors";

/// The file of the weights checkpointed after `iter` iterations: mlx_lm's name, the iteration in
/// seven digits before [`WEIGHTS_FILE`] (`0000050_adapters.safetensors`).
pub fn checkpoint_file(iter: usize) -> String {
    format!("{iter:07}_{WEIGHTS_FILE}")
}

/// The iteration a checkpoint's file name ([`checkpoint_file`]) carries; `None` for any other name.
pub fn checkpoint_iter(name: &str) -> Option<usize> {
    let digits = name.strip_suffix(WEIGHTS_FILE)?.strip_suffix('_')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> FormatError {
    FormatError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// A projection of a transformer layer: what LoRA adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [Projection::Q, Projection::K, Projection::V, Projection::O, Projection::Gate, Projection::Up, Projection::Down];

    /// The module path inside a layer, as Hugging Face and mlx_lm name it.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Q => "self_attn.q_proj",
            Projection::K => "self_attn.k_proj",
            Projection::V => "self_attn.v_proj",
            Projection::O => "self_attn.o_proj",
            Projection::Gate => "mlp.gate_proj",
            Projection::Up => "mlp.up_proj",
            Projection::Down => "mlp.down_proj",
        }
    }

    /// The projection's own name (`q_proj`), without its module.
    pub fn short_name(self) -> &'static str {
        self.name().rsplit('.').next().unwrap_or_default()
    }

    /// The projection [`name`](Self::name) names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Which of a projection's two low-rank factors a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Factor {
    /// `lora_a`, `[inputs, rank]`.
    A,
    /// `lora_b`, `[rank, outputs]`.
    B,
}

/// The tensor name of a factor: `model.layers.{layer}.{projection}.lora_{a|b}`.
pub fn tensor_name(layer: usize, projection: Projection, factor: Factor) -> String {
    let ab = match factor {
        Factor::A => "a",
        Factor::B => "b",
    };
    format!("{}.lora_{ab}", weight_stem(layer, projection))
}

/// `model.layers.{layer}.{projection}`: the stem of the base weight a factor adapts
/// (`{stem}.weight`) and of the factors themselves.
pub fn weight_stem(layer: usize, projection: Projection) -> String {
    format!("model.layers.{layer}.{}", projection.name())
}

/// The layer, projection and factor a tensor name holds; `None` for any other name.
pub fn parse_tensor_name(name: &str) -> Option<(usize, Projection, Factor)> {
    let (stem, factor) = match (name.strip_suffix(".lora_a"), name.strip_suffix(".lora_b")) {
        (Some(stem), _) => (stem, Factor::A),
        (_, Some(stem)) => (stem, Factor::B),
        _ => return None,
    };
    let (layer, module) = stem.strip_prefix("model.layers.")?.split_once('.')?;
    Some((layer.parse().ok()?, Projection::from_name(module)?, factor))
}

/// `lora_parameters` of `adapter_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraParameters {
    pub rank: u32,
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

/// `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(default = "lora")]
    pub fine_tune_type: String,
    /// Adapted layers, counted from the last (mlx_lm's `num_layers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<usize>,
    pub lora_parameters: LoraParameters,
    /// The base model the adapter was trained on (mlx_lm and kenning-train record its path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whatever else the writer recorded (mlx_lm: its training arguments), kept as it was.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn lora() -> String {
    "lora".to_owned()
}

impl AdapterConfig {
    /// A LoRA adapter's configuration.
    pub fn lora(lora_parameters: LoraParameters, num_layers: usize) -> Self {
        Self { fine_tune_type: lora(), num_layers: Some(num_layers), lora_parameters, model: None, extra: Map::new() }
    }

    /// Reads `dir`'s `adapter_config.json`; an adapter that is not LoRA is an error.
    pub fn read(dir: &Path) -> Result<Self, FormatError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| file_error(&path, e))?;
        if config.fine_tune_type != "lora" {
            return Err(file_error(&path, format!("fine_tune_type {:?}: only \"lora\" adapters are supported", config.fine_tune_type)));
        }
        Ok(config)
    }

    /// Writes `dir`'s `adapter_config.json` (pretty, as mlx_lm does): aside, flushed, then moved into
    /// place, so that a stop mid-write leaves the old file whole.
    pub fn write(&self, dir: &Path) -> Result<(), FormatError> {
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| file_error(&path, e))?;
        let partial = dir.join(format!(".{CONFIG_FILE}.partial"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&partial)?;
            std::io::Write::write_all(&mut file, (text + "\n").as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)
        };
        write().map_err(|e| file_error(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_carry_their_iteration() {
        assert_eq!(checkpoint_file(50), "0000050_adapters.safetensors");
        for iter in [0, 7, 1_234_567, 99_999_999] {
            assert_eq!(checkpoint_iter(&checkpoint_file(iter)), Some(iter));
        }
        for other in [WEIGHTS_FILE, "_adapters.safetensors", "x_adapters.safetensors", "0000050adapters.safetensors", "0000050_adapters.safetensors.bak", "-1_adapters.safetensors"] {
            assert_eq!(checkpoint_iter(other), None, "{other}");
        }
    }

    #[test]
    fn tensor_names_round_trip_and_reject_other_names() {
        for projection in Projection::ALL {
            for factor in [Factor::A, Factor::B] {
                let name = tensor_name(27, projection, factor);
                assert_eq!(parse_tensor_name(&name), Some((27, projection, factor)), "{name}");
            }
        }
        assert_eq!(tensor_name(3, Projection::Down, Factor::B), "model.layers.3.mlp.down_proj.lora_b");
        assert_eq!(Projection::K.short_name(), "k_proj");
        for other in ["model.layers.0.self_attn.q_proj.weight", "model.layers.x.self_attn.q_proj.lora_a", "model.layers.0.mlp.q_proj.lora_a", "lm_head.lora_a"] {
            assert_eq!(parse_tensor_name(other), None, "{other}");
        }
    }

    #[test]
    fn an_mlx_lm_config_reads_and_keeps_what_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let written = r#"{"fine_tune_type": "lora", "num_layers": 16, "lora_parameters": {"rank": 8, "dropout": 0.0, "scale": 20.0}, "model": "/m", "iters": 600, "learning_rate": 1e-05}"#;
        std::fs::write(dir.path().join(CONFIG_FILE), written).unwrap();
        let config = AdapterConfig::read(dir.path()).unwrap();
        assert_eq!((config.num_layers, config.lora_parameters, config.model.as_deref()), (Some(16), LoraParameters::default(), Some("/m")));
        config.write(dir.path()).unwrap();
        let again: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(written).unwrap());
    }

    #[test]
    fn a_config_that_is_not_lora_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), r#"{"fine_tune_type": "dora", "lora_parameters": {"rank": 8, "scale": 20.0}}"#).unwrap();
        let e = AdapterConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains(CONFIG_FILE) && e.contains("dora"), "{e}");
        std::fs::write(dir.path().join(CONFIG_FILE), r#"{"fine_tune_type": "lora"}"#).unwrap();
        let e = AdapterConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("lora_parameters"), "{e}");
    }
}
