//! What kenning's two crates both read and write, defined once and with no engine in it: the
//! server converts and loads adapters the trainer writes, and hands the trainer's MLX engine the
//! same sampling options it hands llama.cpp.
//!
//! - [`adapter`]: mlx_lm's LoRA adapter directory (`adapter_config.json`, the tensor names of
//!   `adapters.safetensors`), so adapters of `kenning train` and of `mlx_lm.lora` are one format.
//! - [`Sampling`]: how a generation picks each next token.
//! - [`clock`]: how both print a duration (the trainer's time left, `kenning train`'s phases).

pub mod adapter;

/// `m:ss`, or `h:mm:ss` from an hour, of whole seconds (rounded).
pub fn clock(duration: std::time::Duration) -> String {
    let s = duration.as_secs_f64().round() as u64;
    if s >= 3600 { format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) } else { format!("{}:{:02}", s / 60, s % 60) }
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn clock_shows_minutes_then_hours() {
        assert_eq!(super::clock(Duration::from_millis(59_600)), "1:00");
        assert_eq!(super::clock(Duration::from_secs(754)), "12:34");
        assert_eq!(super::clock(Duration::from_secs(3599)), "59:59");
        assert_eq!(super::clock(Duration::from_secs(4559)), "1:15:59");
    }
}
