//! What kenning's two crates both read and write, defined once and with no engine in it: the
//! server converts and loads adapters the trainer writes, and hands the trainer's MLX engine the
//! same sampling options it hands llama.cpp.
//!
//! - [`adapter`]: mlx_lm's LoRA adapter directory (`adapter_config.json`, the tensor names of
//!   `adapters.safetensors`), so adapters of `kenning train` and of `mlx_lm.lora` are one format.
//! - [`Sampling`]: how a generation picks each next token.
//! - [`clock`]: how both print a duration (the trainer's time left, `kenning train`'s phases,
//!   `kenning eval --progress`).

pub mod adapter;

/// `seconds` as `m:ss`, or `h:mm:ss` from an hour, rounded to whole seconds (a negative or NaN
/// estimate shows as `0:00`).
pub fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
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
    use super::clock;

    #[test]
    fn clock_shows_minutes_then_hours() {
        assert_eq!(clock(0.4), "0:00");
        assert_eq!(clock(59.6), "1:00");
        assert_eq!(clock(75.0), "1:15");
        assert_eq!(clock(754.0), "12:34");
        assert_eq!(clock(3599.0), "59:59");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(4559.0), "1:15:59");
        assert_eq!(clock(-3.0), "0:00");
        assert_eq!(clock(f64::NAN), "0:00");
    }
}
