//! Where kenning keeps things on disk: the cache root, the pinned assets, and one index per workspace.
//!
//! The cache root is `$KENNING_CACHE_DIR`, else `$XDG_CACHE_HOME/kenning`, else the platform cache
//! directory (`~/.cache/kenning` on Linux, `~/Library/Caches/kenning` on macOS). `scripts/fetch_assets.py`
//! resolves the same root, so the binary finds what the setup script installed.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the cache root.
pub const CACHE_DIR_ENV: &str = "KENNING_CACHE_DIR";

/// The directories kenning reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    cache: PathBuf,
}

impl Paths {
    /// Resolves the cache root from the environment.
    pub fn from_env() -> Self {
        let cache = std::env::var_os(CACHE_DIR_ENV)
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kenning")))
            .or_else(|| dirs::cache_dir().map(|d| d.join("kenning")))
            .unwrap_or_else(|| PathBuf::from(".kenning-cache"));
        Self { cache }
    }

    /// Uses `cache` as the root (tests, explicit configuration).
    pub fn with_root(cache: impl Into<PathBuf>) -> Self {
        Self { cache: cache.into() }
    }

    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// Where `scripts/setup` installs the pinned assets.
    pub fn assets(&self) -> PathBuf {
        self.cache.join("assets")
    }

    /// The default index directory of a workspace: `indexes/<dir name>-<hash of the canonical path>`,
    /// so two checkouts with the same name never share an index.
    pub fn index_for(&self, workspace: &Path) -> PathBuf {
        let canonical = workspace.canonicalize().unwrap_or_else(|_| workspace.to_path_buf());
        let name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".to_owned());
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        let digest = blake3::hash(canonical.to_string_lossy().as_bytes()).to_hex();
        self.cache.join("indexes").join(format!("{name}-{}", &digest[..12]))
    }

    /// Where `kenning train` works for a workspace (its data, the dataset split, the adapters):
    /// beside the index, `<index dir>-training`.
    pub fn training_for(&self, workspace: &Path) -> PathBuf {
        let index = self.index_for(workspace);
        let name = index.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        index.with_file_name(format!("{name}-training"))
    }
}

/// Writes `bytes` to `path` whole or not at all: into a sibling first, synced, then renamed over it
/// (its directory is created). A reader never sees half a file, and a stopped writer leaves the old one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = unique_sibling(path);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, bytes)?;
        // On disk before the name points at it: a machine that loses power keeps the old file or the new one.
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A command that starts this kenning binary again as a child process. On Linux it runs the
/// running file itself (`/proc/self/exe`): a rebuild or an upgrade that replaces the file at its
/// path during a run of hours leaves that path pointing nowhere (`… (deleted)`), and the children
/// still run the build their parent is (`ps` shows them under the path the parent started from,
/// marked deleted once it is). Elsewhere it runs the file at the binary's path, whatever is there
/// by then.
pub fn this_binary() -> std::io::Result<std::process::Command> {
    let path = std::env::current_exe()?;
    #[cfg(target_os = "linux")]
    {
        let running = Path::new("/proc/self/exe");
        if running.exists() {
            let mut command = std::process::Command::new(running);
            std::os::unix::process::CommandExt::arg0(&mut command, &path);
            return Ok(command);
        }
    }
    Ok(std::process::Command::new(path))
}

/// `PATH.kenning-PID-N`: a name no other writer (process or thread) uses at the same time.
pub fn unique_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".kenning-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_dirs_differ_for_same_named_workspaces() {
        let paths = Paths::with_root("/cache");
        let a = paths.index_for(Path::new("/nonexistent/a/proj"));
        let b = paths.index_for(Path::new("/nonexistent/b/proj"));
        assert_ne!(a, b);
        assert!(a.file_name().unwrap().to_string_lossy().starts_with("proj-"));
        assert!(a.starts_with("/cache/indexes"));
    }
}
