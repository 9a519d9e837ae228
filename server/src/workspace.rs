//! Walking a workspace: which files kenning may read, and reading them safely.
//!
//! The walk is parallel (`ignore::WalkBuilder::build_parallel`), honours `.gitignore` (even outside
//! a git repository), `.ignore` and `.kenningignore`, skips hidden files and VCS directories, and
//! never yields a file that looks like a secret, is binary, is too large, or looks minified or
//! generated. Every skipped file is reported with its reason, so the CLI can say what it left out.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::{WalkBuilder, WalkState};

/// Files larger than this are skipped by default (1 MiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 20;
/// A NUL byte within this many leading bytes marks a file as binary.
const BINARY_SNIFF_BYTES: usize = 8 * 1024;
/// A file with a line this long is minified or generated, not source worth indexing.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// The per-workspace ignore file, with `.gitignore` syntax.
pub const IGNORE_FILE: &str = ".kenningignore";

/// File names that hold credentials often enough that kenning never reads them.
const SECRET_GLOBS: &[&str] = &[
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "*.gpg",
    "*.asc",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".htpasswd",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "secrets.*",
    "*.secret",
    "*.secrets",
    "service-account*.json",
    "*.tfstate",
    "*.tfstate.*",
    "*.tfvars",
];

/// Files that tools write, not people: lock files and the like. Indexing them only adds noise.
const GENERATED_NAMES: &[&str] = &[
    "Cargo.lock", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb",
    "poetry.lock", "Pipfile.lock", "uv.lock", "pdm.lock", "go.sum", "Gemfile.lock", "composer.lock",
    "flake.lock", "pubspec.lock", "Podfile.lock", "packages.lock.json", "gradle.lockfile", "mix.lock",
];

/// Text that only appears in private key material.
const SECRET_MARKERS: &[&[u8]] = &[b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN OPENSSH PRIVATE KEY-----",
    b"-----BEGIN EC PRIVATE KEY-----", b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN DSA PRIVATE KEY-----",
    b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"-----BEGIN PGP PRIVATE KEY BLOCK-----"];

/// Why a file was left out of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    Secret,
    Binary,
    TooLarge(u64),
    Minified,
    Generated,
    Unreadable(String),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Secret => f.write_str("looks like a secret"),
            SkipReason::Binary => f.write_str("binary"),
            SkipReason::TooLarge(n) => write!(f, "too large ({n} bytes)"),
            SkipReason::Minified => f.write_str("minified or generated (very long lines)"),
            SkipReason::Generated => f.write_str("generated (lock file)"),
            SkipReason::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

/// A file the walk found, before it is read.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// Path relative to the workspace root, with `/` separators: the citation path.
    pub rel_path: String,
    pub abs_path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// A file that passed every filter, with its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub meta: FileMeta,
    /// The text; invalid UTF-8 sequences are replaced (U+FFFD) so line numbers stay true.
    pub text: String,
    /// Whether the bytes were not valid UTF-8.
    pub lossy: bool,
    /// blake3 of the raw bytes, after the content filters' version ([`hash_prefix`]).
    pub hash: String,
    /// Secrets taken out of `text` ([`crate::secrets`]).
    pub redactions: Vec<crate::secrets::Redaction>,
}

/// Changes whenever the content filters (redaction) change what is kept of a file. File hashes
/// start with it ([`hash_prefix`]): a file indexed under another version is read again even when
/// its size and mtime match, and its unchanged chunks keep their vectors.
pub const CONTENT_FILTER_VERSION: u32 = 2;

/// How the hashes of this version's content filters begin.
pub fn hash_prefix() -> String {
    format!("f{CONTENT_FILTER_VERSION}:")
}

/// Options of a walk.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub max_file_bytes: u64,
    pub threads: usize,
}

impl Default for WalkOptions {
    fn default() -> Self {
        Self { max_file_bytes: DEFAULT_MAX_FILE_BYTES, threads: 0 }
    }
}

/// What the walk yields for each candidate file.
#[derive(Debug)]
pub enum WalkItem {
    File(FileMeta),
    Skipped { rel_path: String, reason: SkipReason },
}

fn secret_globs() -> &'static GlobSet {
    static SET: std::sync::OnceLock<GlobSet> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let mut b = GlobSetBuilder::new();
        for g in SECRET_GLOBS {
            b.add(Glob::new(g).expect("secret globs are valid"));
        }
        b.build().expect("secret globs are valid")
    })
}

/// Whether a file name alone marks a likely secret.
pub fn is_secret_name(file_name: &str) -> bool {
    secret_globs().is_match(file_name.to_ascii_lowercase())
}

/// Walks `root` in parallel, calling `visit` (from several threads) for every regular file that
/// survives the ignore rules, size limit and secret-name filter, and for every file skipped by those.
pub fn walk(root: &Path, opts: &WalkOptions, visit: impl Fn(WalkItem) + Send + Sync) {
    let visit = Arc::new(visit);
    let mut builder = WalkBuilder::new(root);
    builder
        .hidden(true)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(true)
        .ignore(true)
        .parents(true)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .threads(opts.threads)
        .filter_entry(|e| !matches!(e.file_name().to_str(), Some(".git" | ".hg" | ".svn" | ".jj")));
    let max = opts.max_file_bytes;
    builder.build_parallel().run(|| {
        let visit = Arc::clone(&visit);
        Box::new(move |entry| {
            let Ok(entry) = entry else { return WalkState::Continue };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return WalkState::Continue;
            }
            let path = entry.path();
            let rel_path = relative(root, path);
            // A path that is not UTF-8 has no name the index can keep: two such files could map
            // to the same lossy path and replace each other on every run.
            if path.strip_prefix(root).unwrap_or(path).to_str().is_none() {
                visit(WalkItem::Skipped { rel_path, reason: SkipReason::Unreadable("the file name is not valid UTF-8".into()) });
                return WalkState::Continue;
            }
            let name = entry.file_name().to_string_lossy();
            if is_secret_name(&name) {
                visit(WalkItem::Skipped { rel_path, reason: SkipReason::Secret });
                return WalkState::Continue;
            }
            if GENERATED_NAMES.contains(&name.as_ref()) {
                visit(WalkItem::Skipped { rel_path, reason: SkipReason::Generated });
                return WalkState::Continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    visit(WalkItem::Skipped { rel_path, reason: SkipReason::Unreadable(e.to_string()) });
                    return WalkState::Continue;
                }
            };
            if meta.len() > max {
                visit(WalkItem::Skipped { rel_path, reason: SkipReason::TooLarge(meta.len()) });
                return WalkState::Continue;
            }
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            visit(WalkItem::File(FileMeta { rel_path, abs_path: path.to_owned(), size: meta.len(), mtime_ns }));
            WalkState::Continue
        })
    });
}

/// `path` relative to `root` with `/` separators.
pub fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut out = String::new();
    for (i, part) in rel.components().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&part.as_os_str().to_string_lossy());
    }
    out
}

/// Reads a file found by [`walk`] and applies the content filters (binary, secret markers,
/// minified). The size is checked again, since the file may have grown since the walk.
pub fn read_source(meta: FileMeta, max_file_bytes: u64) -> Result<SourceFile, SkipReason> {
    let bytes = fs::read(&meta.abs_path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if bytes.len() as u64 > max_file_bytes {
        return Err(SkipReason::TooLarge(bytes.len() as u64));
    }
    classify_bytes(&bytes)?;
    let hash = format!("{}{}", hash_prefix(), blake3::hash(&bytes).to_hex());
    let (mut text, lossy) = match String::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    };
    // Nothing unredacted goes further: not the index, not a prompt, not a dataset.
    let redactions = crate::secrets::redact(&mut text);
    Ok(SourceFile { meta, text, lossy, hash, redactions })
}

/// Whether a file's bytes look binary (a NUL among the first [`BINARY_SNIFF_BYTES`]).
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0)
}

/// The content filters alone: binary, private-key material, minified.
pub fn classify_bytes(bytes: &[u8]) -> Result<(), SkipReason> {
    if is_binary(bytes) {
        return Err(SkipReason::Binary);
    }
    if SECRET_MARKERS.iter().any(|m| holds_key_block(bytes, m)) {
        return Err(SkipReason::Secret);
    }
    if bytes.split(|&b| b == b'\n').any(|line| line.len() > MAX_LINE_BYTES) {
        return Err(SkipReason::Minified);
    }
    Ok(())
}

/// Whether `marker` starts a real key block: the marker at the start of a line (after optional
/// quote or indentation), followed by a line of base64 or a PEM header. Code that merely mentions
/// the marker (like this file) does not match.
fn holds_key_block(bytes: &[u8], marker: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = find(&bytes[from..], marker) {
        let at = from + i;
        from = at + marker.len();
        let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if !bytes[line_start..at].iter().all(|b| matches!(b, b' ' | b'\t' | b'"' | b'\'')) {
            continue;
        }
        let rest = &bytes[from..];
        let rest = rest.strip_prefix(b"\r").unwrap_or(rest);
        let Some(rest) = rest.strip_prefix(b"\n") else { continue };
        let next: &[u8] = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let next = next.strip_suffix(b"\r").unwrap_or(next);
        let base64 = next.len() >= 40 && next.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if base64 || next.starts_with(b"Proc-Type:") {
            return true;
        }
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn collect(root: &Path) -> (Vec<String>, Vec<(String, SkipReason)>) {
        let files = Mutex::new(Vec::new());
        let skipped = Mutex::new(Vec::new());
        walk(root, &WalkOptions::default(), |item| match item {
            WalkItem::File(m) => files.lock().unwrap().push(m.rel_path),
            WalkItem::Skipped { rel_path, reason } => skipped.lock().unwrap().push((rel_path, reason)),
        });
        let mut files = files.into_inner().unwrap();
        let mut skipped = skipped.into_inner().unwrap();
        files.sort();
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        (files, skipped)
    }

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn honours_gitignore_ignore_kenningignore_and_skips_vcs_and_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, ".gitignore", b"target/\n*.log\n");
        write(r, ".ignore", b"vendored/\n");
        write(r, IGNORE_FILE, b"fixtures/big_*.rs\n");
        write(r, "src/main.rs", b"fn main() {}\n");
        write(r, "src/lib.rs", b"pub fn f() {}\n");
        write(r, "target/debug/out.rs", b"fn gen() {}\n");
        write(r, "app.log", b"log line\n");
        write(r, "vendored/dep.rs", b"fn dep() {}\n");
        write(r, "fixtures/big_one.rs", b"fn big() {}\n");
        write(r, "fixtures/small.rs", b"fn small() {}\n");
        write(r, ".git/config", b"[core]\n");
        write(r, ".hidden/x.rs", b"fn x() {}\n");
        let (files, skipped) = collect(r);
        assert_eq!(files, ["fixtures/small.rs", "src/lib.rs", "src/main.rs"]);
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[cfg(unix)]
    #[test]
    fn file_names_that_are_not_utf8_are_skipped_and_reported() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for name in [&b"caf\xe9.rs"[..], &b"caf\xe8.rs"[..]] {
            fs::write(r.join(std::ffi::OsStr::from_bytes(name)), "fn x() {}\n").unwrap();
        }
        fs::write(r.join("ok.rs"), "fn ok() {}\n").unwrap();
        let (files, skipped) = collect(r);
        assert_eq!(files, ["ok.rs"]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped.iter().all(|(_, reason)| reason.to_string().contains("not valid UTF-8")), "{skipped:?}");
    }

    #[test]
    fn secret_names_are_never_yielded() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for name in ["config/.env.production", "deploy/server.pem", "keys/id_ed25519", "aws/credentials",
            "gcp/service-account-prod.json", "my.key", "infra/prod.tfvars", "app/secrets.yaml"] {
            write(r, name, b"SECRET=1\n");
        }
        write(r, "src/env.rs", b"fn env() {}\n");
        write(r, "Cargo.lock", b"# generated\n");
        let (files, skipped) = collect(r);
        assert_eq!(files, ["src/env.rs"]);
        assert_eq!(skipped.len(), 8, "{skipped:?}");
        assert_eq!(skipped[0], ("Cargo.lock".to_owned(), SkipReason::Generated));
        assert!(skipped[1..].iter().all(|(_, r)| *r == SkipReason::Secret));
        // `.env.production` is hidden, so the walk never even sees it.
    }

    #[test]
    fn content_filters() {
        assert_eq!(classify_bytes(b"fn main() {}\n"), Ok(()));
        assert_eq!(classify_bytes(b""), Ok(()));
        assert_eq!(classify_bytes(b"\x7fELF\x02\x01\x00\x00"), Err(SkipReason::Binary));
        let key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n";
        assert_eq!(classify_bytes(key), Err(SkipReason::Secret));
        let embedded = b"const KEY: &str = \"\n-----BEGIN RSA PRIVATE KEY-----\r\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\r\n\";\n";
        assert_eq!(classify_bytes(embedded), Err(SkipReason::Secret));
        let encrypted = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n";
        assert_eq!(classify_bytes(encrypted), Err(SkipReason::Secret));
        // Code that only names the marker is code, not a key.
        let mention = b"const MARKERS: &[&[u8]] = &[b\"-----BEGIN PRIVATE KEY-----\", b\"x\"];\n";
        assert_eq!(classify_bytes(mention), Ok(()));
        let minified = format!("var a={};\n", "x".repeat(MAX_LINE_BYTES + 1));
        assert_eq!(classify_bytes(minified.as_bytes()), Err(SkipReason::Minified));
    }

    #[test]
    fn large_files_are_skipped_and_invalid_utf8_is_read_lossily() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "big.txt", &vec![b'a'; (DEFAULT_MAX_FILE_BYTES + 1) as usize]);
        write(r, "latin1.rs", b"// caf\xe9\nfn f() {}\n");
        let (files, skipped) = collect(r);
        assert_eq!(files, ["latin1.rs"]);
        assert_eq!(skipped, [("big.txt".to_owned(), SkipReason::TooLarge(DEFAULT_MAX_FILE_BYTES + 1))]);

        let meta = FileMeta { rel_path: "latin1.rs".into(), abs_path: r.join("latin1.rs"), size: 0, mtime_ns: 0 };
        let src = read_source(meta, DEFAULT_MAX_FILE_BYTES).unwrap();
        assert!(src.lossy);
        assert_eq!(src.text, "// caf\u{fffd}\nfn f() {}\n");
        assert_eq!(src.text.lines().count(), 2);
    }
}
