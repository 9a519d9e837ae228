//! The pinned run-time assets (ONNX Runtime, embedding model, generation models).
//!
//! `assets.toml` at the repository root is the single source of truth: `scripts/fetch_assets.py`
//! installs from it and this module, which embeds the same file, checks what it loads against it.
//! A missing or damaged asset is an [`AssetError`] naming the file and the command that fixes it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

const MANIFEST: &str = include_str!("../../assets.toml");

/// The command that installs every asset (printed in errors).
pub const SETUP_HINT: &str = "run `scripts/setup` from the kenning repository (or `python3 scripts/fetch_assets.py`)";

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("asset `{name}` is missing: expected {path}; {SETUP_HINT}")]
    Missing { name: String, path: PathBuf },
    #[error("asset `{name}` at {path} is damaged ({reason}); {SETUP_HINT} to fetch it again")]
    Corrupt { name: String, path: PathBuf, reason: String },
    #[error("no asset `{0}` is pinned for this platform ({platform})", platform = platform())]
    Unknown(String),
}

#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    asset: Vec<AssetSpec>,
}

/// One pinned file.
#[derive(Debug, Clone, Deserialize)]
pub struct AssetSpec {
    pub name: String,
    pub group: String,
    #[serde(default)]
    pub platform: Option<String>,
    pub dest: String,
    pub size: u64,
    pub sha256: String,
}

/// The platform string used in `assets.toml` (`linux-x86_64`, `macos-aarch64`, ...).
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The pinned assets for this platform, rooted at a cache directory.
#[derive(Debug, Clone)]
pub struct Assets {
    root: PathBuf,
    specs: Vec<AssetSpec>,
}

impl Assets {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let manifest: Manifest = toml::from_str(MANIFEST).expect("assets.toml is embedded at build time and parsed in tests");
        let plat = platform();
        let specs = manifest
            .asset
            .into_iter()
            .filter(|a| a.platform.as_deref().is_none_or(|p| p == plat))
            .collect();
        Self { root: root.into(), specs }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn specs(&self) -> &[AssetSpec] {
        &self.specs
    }

    /// The path of asset `name`, after checking it exists with its pinned size and hash.
    ///
    /// The hash is checked once per file version: a verified file gets a `.verified` stamp (the same
    /// one the setup script writes) recording hash, size and modification time.
    pub fn path(&self, name: &str) -> Result<PathBuf, AssetError> {
        let spec = self
            .specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| AssetError::Unknown(name.to_owned()))?;
        let path = self.root.join(&spec.dest);
        verify(spec, &path)?;
        Ok(path)
    }
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}

fn stamp_text(spec: &AssetSpec, meta: &fs::Metadata) -> String {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {} {}\n", spec.sha256, meta.len(), mtime_ns)
}

fn verify(spec: &AssetSpec, path: &Path) -> Result<(), AssetError> {
    let corrupt = |reason: String| AssetError::Corrupt { name: spec.name.clone(), path: path.to_owned(), reason };
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        _ => return Err(AssetError::Missing { name: spec.name.clone(), path: path.to_owned() }),
    };
    if meta.len() != spec.size {
        return Err(corrupt(format!("{} bytes, expected {}", meta.len(), spec.size)));
    }
    let stamp = stamp_text(spec, &meta);
    if fs::read_to_string(stamp_path(path)).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    let actual = sha256_file(path).map_err(|e| corrupt(format!("unreadable: {e}")))?;
    if actual != spec.sha256 {
        return Err(corrupt(format!("sha256 {actual}, expected {}", spec.sha256)));
    }
    // A stamp we cannot write only costs a re-hash next time.
    let _ = fs::write(stamp_path(path), stamp);
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_spec(dir: &Path, content: &[u8]) -> (Assets, PathBuf) {
        let sha: String = Sha256::digest(content).iter().map(|b| format!("{b:02x}")).collect();
        let spec = AssetSpec {
            name: "thing".into(),
            group: "embed".into(),
            platform: None,
            dest: "sub/thing.bin".into(),
            size: content.len() as u64,
            sha256: sha,
        };
        (Assets { root: dir.to_owned(), specs: vec![spec] }, dir.join("sub/thing.bin"))
    }

    #[test]
    fn manifest_parses_and_pins_the_embedding_assets_for_this_platform() {
        let assets = Assets::new("/x");
        for name in ["minilm-model", "minilm-tokenizer", "smollm2-135m", "qwen2.5-coder-0.5b"] {
            assert!(assets.specs().iter().any(|s| s.name == name), "{name} not pinned");
        }
        assert!(assets.specs().iter().all(|s| s.sha256.len() == 64));
    }

    #[test]
    fn missing_truncated_and_altered_files_are_reported_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (assets, path) = fake_spec(dir.path(), b"hello world");

        let err = assets.path("thing").unwrap_err();
        assert!(matches!(err, AssetError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("scripts/setup"));

        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"hello").unwrap();
        let err = assets.path("thing").unwrap_err();
        assert!(err.to_string().contains("5 bytes, expected 11"), "{err}");

        fs::write(&path, b"hello WORLD").unwrap();
        let err = assets.path("thing").unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");

        fs::write(&path, b"hello world").unwrap();
        assert_eq!(assets.path("thing").unwrap(), path);
        assert!(stamp_path(&path).exists());
        assert!(matches!(assets.path("nope"), Err(AssetError::Unknown(_))));
    }
}
