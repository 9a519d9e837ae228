//! Helpers shared by the end-to-end tests (each test crate uses some of them).
#![allow(dead_code)]

pub mod lsp;

use std::path::Path;

/// Writes `content` to `rel` under `root`, making its directories.
pub fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// The cache root for a test: a fresh directory whose `assets` (and `weights`) point at the
/// installed ones.
pub fn test_cache(dir: &Path) -> kenning::paths::Paths {
    let real = kenning::paths::Paths::from_env().assets();
    std::fs::create_dir_all(dir).unwrap();
    let link = dir.join("assets");
    if !link.exists() {
        std::os::unix::fs::symlink(&real, &link).unwrap();
    }
    // The bundled model's 8-bit copy is made once and shared, like the assets.
    let weights = kenning::paths::Paths::from_env().cache().join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    let link = dir.join("weights");
    if !link.exists() {
        std::os::unix::fs::symlink(&weights, &link).unwrap();
    }
    kenning::paths::Paths::with_root(dir)
}
