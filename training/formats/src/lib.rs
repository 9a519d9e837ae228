//! What kenning's two crates both read and write, defined once and with no engine in it: the
//! server converts and loads adapters the trainer writes, and hands the trainer's MLX engine the
//! same sampling options it hands llama.cpp.
//!
//! - [`adapter`]: mlx_lm's LoRA adapter directory (`adapter_config.json`, the tensor names of
//!   `adapters.safetensors`), so adapters of `kenning train` and of `mlx_lm.lora` are one format.
//! - [`Sampling`]: how a generation picks each next token.

pub mod adapter;

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
}

impl Default for Sampling {
    /// Greedy: what completions use, so that a prompt always gives the same answer.
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}
