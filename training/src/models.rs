//! Finding an MLX model directory: a path, or a bundled model's name, converted by `scripts/setup`
//! into `<cache>/tools/<name>-mlx`.

use std::path::{Path, PathBuf};

/// The bundled models' names, with the model each is.
pub const BUNDLED: [(&str, &str); 2] =
    [("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1)"), ("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)")];

/// kenning's cache root: `$KENNING_CACHE_DIR`, else `$XDG_CACHE_HOME/kenning`, else `~/.cache/kenning`
/// (`~/Library/Caches/kenning` on macOS) — as the server and `scripts/fetch_assets.py` resolve it.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KENNING_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kenning");
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    if cfg!(target_os = "macos") { home.join("Library/Caches/kenning") } else { home.join(".cache/kenning") }
}

/// The directory of `model`: itself when it holds a `config.json`, else the setup's conversion of
/// the bundled model of that name under `cache`.
pub fn resolve(model: &str, cache: &Path) -> Result<PathBuf, String> {
    let dir = PathBuf::from(model);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let converted = cache.join("tools").join(format!("{model}-mlx"));
    if converted.join("config.json").is_file() {
        return Ok(converted);
    }
    let known = BUNDLED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    Err(if BUNDLED.iter().any(|(n, _)| *n == model) {
        format!("{model}: not converted for MLX yet ({} is missing): run scripts/setup", converted.display())
    } else {
        format!("{model}: not an MLX/HF model directory (config.json + model.safetensors) nor a bundled model ({known})")
    })
}
