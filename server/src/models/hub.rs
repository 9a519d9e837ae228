//! Model files from the Hugging Face hub, kept in the hub's own cache so a file pulled by
//! `huggingface-cli` (or any other hub client) is used as it is, and one pulled here is theirs too.
//!
//! The cache layout (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`):
//!
//! ```text
//! models--OWNER--REPO/blobs/ETAG                 the file (ETAG is its sha256 for LFS files)
//! models--OWNER--REPO/blobs/ETAG.incomplete      a download in progress, resumed where it stopped
//! models--OWNER--REPO/refs/REVISION              the commit a branch or tag named when pulled
//! models--OWNER--REPO/snapshots/COMMIT/FILE      a relative link to the blob
//! ```
//!
//! A download asks `{HF_ENDPOINT}/{repo}/resolve/{revision}/{file}` for its metadata first (without
//! following the redirect to the file's storage: the hub's headers `X-Repo-Commit`, `X-Linked-Etag`
//! and `X-Linked-Size` are on that first answer), then streams the file into the `.incomplete`
//! blob, continuing with a `Range` request after a cut connection, and checks its sha256 (a
//! pinned value, else the LFS etag) before it becomes the blob. A file that does not match is
//! removed. One process downloads a blob at a time (an advisory lock in `.locks/`, where the hub's
//! own clients keep theirs).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::paths::{unique_sibling, write_atomic};

/// Where the hub is, unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Attempts at one file before a download gives up (each continues where the last one stopped).
const ATTEMPTS: usize = 5;

/// One file of a model repository: `hf:OWNER/REPO/FILE[@REVISION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `OWNER/REPO`.
    pub repo: String,
    /// The file's path inside the repository (may have folders).
    pub file: String,
    /// A branch, tag or commit; `main` when absent.
    pub revision: Option<String>,
}

impl HubFile {
    /// Parses what follows `hf:`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, revision) = match text.rsplit_once('@') {
            // `model@q4.gguf` is a file name with an `@`, not a revision.
            Some((_, rev)) if rev.to_ascii_lowercase().ends_with(".gguf") => (text, None),
            Some((path, rev)) => {
                if rev.is_empty() || rev.contains(|c: char| c.is_whitespace() || c == '\\' || c == ':') || rev.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                    return Err(format!("`{rev}` is not a revision (a branch, tag or commit)"));
                }
                (path, Some(rev.to_owned()))
            }
            None => (text, None),
        };
        let segments: Vec<&str> = path.split('/').collect();
        if segments.len() < 3 {
            return Err("expected OWNER/REPO/FILE (the file's path inside the repository)".into());
        }
        if let Some(bad) = segments.iter().find(|s| s.is_empty() || **s == "." || **s == ".." || s.contains(|c: char| c.is_whitespace() || c == '\\' || c == ':')) {
            return Err(format!("`{bad}` is not a part of a repository path"));
        }
        // A commit is written in lower case in the cache.
        let revision = revision.map(|r| if is_commit(&r) { r.to_ascii_lowercase() } else { r });
        Ok(Self { repo: segments[..2].join("/"), file: segments[2..].join("/"), revision })
    }

    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl std::fmt::Display for HubFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf:{}/{}", self.repo, self.file)?;
        match &self.revision {
            Some(rev) => write!(f, "@{rev}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{file} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: unset it to download the file (`kenning models pull {file}`), or give a path to a GGUF file")]
    Offline { file: String, cache: PathBuf },
    #[error("cannot download {file} from {url}: {reason}; check the network or HF_ENDPOINT, or fetch it where the hub can be reached (`kenning models pull {file}` puts it in {cache}), or give a path to a GGUF file")]
    Unreachable { file: String, url: String, reason: String, cache: PathBuf },
    #[error("{file}: {url} answered {status}{hint}")]
    Status { file: String, url: String, status: u16, hint: String },
    #[error("{file}: the hub's file is now sha256 {actual}, not the pinned {expected}; nothing was downloaded (a recommended model's pin is kenning's: a newer kenning may know the new file; another hf: file can be pinned anew with `kenning models pull … --sha256`)")]
    Changed { file: String, actual: String, expected: String },
    #[error("{file}: the download's sha256 is {actual}, expected {expected}; the downloaded file was removed")]
    Hash { file: String, actual: String, expected: String },
    #[error("{file}: the download has {actual} bytes, the hub said {expected}; the downloaded file was removed")]
    Size { file: String, actual: u64, expected: u64 },
    #[error("{file}: the download was stopped at byte {have} (kept: the next pull continues from there)")]
    Stopped { file: String, have: u64 },
    #[error("{file}: {path}: {source}")]
    Io { file: String, path: PathBuf, source: std::io::Error },
}

/// What a download reports as it goes: bytes so far, and the whole size when known. Answering
/// false stops it ([`HubError::Stopped`]; the bytes so far are kept for the next pull).
pub type Progress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) -> bool + Send);

/// The hub and its cache, as the environment sets them (`HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`,
/// `HF_TOKEN`, `HF_HUB_OFFLINE`), like the hub's own clients.
#[derive(Debug, Clone)]
pub struct Hub {
    pub endpoint: String,
    pub cache: PathBuf,
    token: Option<String>,
    pub offline: bool,
}

impl Hub {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| fs::read_to_string(home.join("token")).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()).trim_end_matches('/').to_owned();
        Self { endpoint, cache, token, offline }
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The file in the cache for `file`'s revision, without asking the hub: the snapshot its ref
    /// names (or the snapshot named after the revision, from a server that names no commit).
    pub fn cached(&self, file: &HubFile) -> Option<PathBuf> {
        let dir = self.repo_dir(&file.repo);
        let revision = file.revision();
        let commit = if is_commit(revision) { Some(revision.to_owned()) } else { fs::read_to_string(dir.join("refs").join(revision)).ok().map(|c| c.trim().to_owned()) };
        let snapshot = |name: &str| Some(dir.join("snapshots").join(name).join(&file.file)).filter(|p| p.is_file());
        commit.and_then(|c| snapshot(&c)).or_else(|| snapshot(revision))
    }

    /// [`Hub::cached`], and with a pin only the pinned blob (blobs are named by their sha256: the
    /// snapshot's link says which one it is).
    pub fn cached_pinned(&self, file: &HubFile, sha256: Option<&str>) -> Option<PathBuf> {
        self.cached(file).filter(|path| match sha256 {
            Some(pin) => fs::read_link(path).ok().and_then(|target| target.file_name().map(|n| n.eq_ignore_ascii_case(pin))).unwrap_or(false),
            None => true,
        })
    }

    /// The file, from the cache when it is there (and, with a pin, is the pinned blob), else
    /// downloaded (blocking; from any thread).
    pub fn get(&self, file: &HubFile, sha256: Option<&str>, progress: Progress) -> Result<PathBuf, HubError> {
        match self.cached_pinned(file, sha256) {
            Some(path) => Ok(path),
            None => self.pull(file, sha256, progress),
        }
    }

    /// Asks the hub for the file's current version at its revision and downloads it unless the
    /// cache has it (blocking; from any thread).
    pub fn pull(&self, file: &HubFile, sha256: Option<&str>, progress: Progress) -> Result<PathBuf, HubError> {
        // Offline, the cache answers (as the hub's own clients do).
        if self.offline {
            return self.cached_pinned(file, sha256).ok_or_else(|| HubError::Offline { file: file.to_string(), cache: self.cache.clone() });
        }
        // A runtime of its own on a thread of its own: callable from a blocking task of the
        // server's runtime and from plain threads alike.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| self.io(file, &self.cache, e))?;
                    runtime.block_on(self.pull_async(file, sha256, progress))
                })
                .join()
                .unwrap_or_else(|_| Err(self.io(file, &self.cache, std::io::Error::other("the download thread panicked"))))
        })
    }

    fn io(&self, file: &HubFile, path: &Path, source: std::io::Error) -> HubError {
        HubError::Io { file: file.to_string(), path: path.to_owned(), source }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`, the revision one encoded segment (`refs/pr/1`
    /// → `refs%2Fpr%2F1`, as the hub's own clients send it).
    fn url(&self, file: &HubFile) -> Result<reqwest::Url, String> {
        if !self.endpoint.starts_with("http://") && !self.endpoint.starts_with("https://") {
            return Err(format!("HF_ENDPOINT {} must start with http:// or https://", self.endpoint));
        }
        let mut url = reqwest::Url::parse(&self.endpoint).map_err(|e| format!("HF_ENDPOINT {}: {e}", self.endpoint))?;
        url.path_segments_mut()
            .map_err(|()| format!("HF_ENDPOINT {} cannot be a base URL", self.endpoint))?
            .pop_if_empty()
            .extend(file.repo.split('/'))
            .push("resolve")
            .push(file.revision())
            .extend(file.file.split('/'));
        Ok(url)
    }

    /// The token goes only to the hub itself, never to the storage it redirects to.
    fn authorize(&self, request: reqwest::RequestBuilder, url: &reqwest::Url) -> reqwest::RequestBuilder {
        let hub = reqwest::Url::parse(&self.endpoint).ok();
        let same_host = hub.is_some_and(|hub| hub.host_str() == url.host_str() && hub.port_or_known_default() == url.port_or_known_default());
        match &self.token {
            Some(token) if same_host => request.bearer_auth(token),
            _ => request,
        }
    }

    async fn pull_async(&self, file: &HubFile, sha256: Option<&str>, progress: Progress<'_>) -> Result<PathBuf, HubError> {
        let name = file.to_string();
        let url = self.url(file).map_err(|reason| HubError::Unreachable { file: name.clone(), url: self.endpoint.clone(), reason, cache: self.cache.clone() })?;
        let unreachable = |reason: String| HubError::Unreachable { file: name.clone(), url: url.to_string(), reason, cache: self.cache.clone() };
        let client = reqwest::Client::builder()
            .user_agent(concat!("kenning/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            // Redirects are followed by hand: the token must not travel with them.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| unreachable(e.to_string()))?;

        // The metadata: which commit the revision names, the file's etag and size, and where the
        // bytes are. The hub answers for an LFS file with a redirect to its storage carrying these
        // headers; a redirect within the hub (a renamed repository) is followed.
        let mut at = url.clone();
        let head = loop {
            let head = self.authorize(client.head(at.clone()), &at).send().await.map_err(|e| unreachable(error_chain(&e)))?;
            let relative = head.headers().get("location").and_then(|l| l.to_str().ok()).filter(|l| l.starts_with('/')).map(str::to_owned);
            match relative {
                Some(location) if head.status().is_redirection() && head.headers().get("x-linked-etag").is_none() && at.path() != location => {
                    at = at.join(&location).map_err(|e| unreachable(format!("bad redirect {location}: {e}")))?;
                }
                _ => break head,
            }
        };
        let status = head.status();
        let header = |name: &str| head.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if !(status.is_success() || status.is_redirection()) {
            let hint = match status.as_u16() {
                401 | 403 if self.token.is_some() => ": the token (HF_TOKEN, or $HF_HOME/token) was sent and refused; or no such repository",
                401 | 403 => ": no such repository, or it is private or gated: set HF_TOKEN (or log in with `huggingface-cli login`)",
                404 => ": no such repository, file or revision",
                _ => "",
            };
            let message = header("x-error-message").map(|m| format!(" ({m})")).unwrap_or_default();
            return Err(HubError::Status { file: name.clone(), url: url.to_string(), status: status.as_u16(), hint: format!("{message}{hint}") });
        }
        let commit = header("x-repo-commit").filter(|c| is_commit(c)).or_else(|| is_commit(file.revision()).then(|| file.revision().to_owned())).map(|c| c.to_ascii_lowercase());
        let etag = header("x-linked-etag").or_else(|| header("etag")).map(|e| normalize_etag(&e)).filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        // reqwest reports a HEAD's length as 0: read the header itself.
        let size = header("x-linked-size").or_else(|| status.is_success().then(|| header("content-length")).flatten()).and_then(|s| s.parse::<u64>().ok());
        let location = match header("location") {
            Some(loc) if status.is_redirection() => at.join(&loc).map_err(|e| unreachable(format!("bad redirect {loc}: {e}")))?,
            _ => at.clone(),
        };
        // What the bytes must hash to: a pinned value, else the LFS etag (the file's sha256).
        let pinned = sha256.map(str::to_ascii_lowercase);
        if let (Some(pinned), Some(etag)) = (&pinned, &etag)
            && is_sha256(etag)
            && etag != pinned
        {
            return Err(HubError::Changed { file: name.clone(), actual: etag.clone(), expected: pinned.clone() });
        }
        let expected = pinned.or_else(|| etag.clone().filter(|e| is_sha256(e)));

        let dir = self.repo_dir(&file.repo);
        let blobs = dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(|e| self.io(file, &blobs, e))?;
        // Without an etag the blob is named after the content, known once it is downloaded.
        let part_name = etag.clone().unwrap_or_else(|| format!("kenning-{}", &hex(&Sha256::digest(location.as_str().as_bytes()))[..16]));
        // Where huggingface_hub keeps its locks, so the two never download a blob at once. Lock
        // files stay: removing one another process waits on would let a third lock a new one.
        let locks = self.cache.join(".locks").join(dir.file_name().unwrap_or_default());
        fs::create_dir_all(&locks).map_err(|e| self.io(file, &locks, e))?;
        let lock_path = locks.join(format!("{part_name}.lock"));
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| self.io(file, &lock_path, e))?;
        let lock = match lock.try_lock() {
            Ok(()) => lock,
            Err(_) => {
                tracing::info!("{name}: waiting for another download of it ({})", lock_path.display());
                tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
                    .await
                    .map_err(|e| self.io(file, &lock_path, std::io::Error::other(e)))?
                    .map_err(|e| self.io(file, &lock_path, e))?
            }
        };

        let blob_name = match etag.as_ref().map(|e| blobs.join(e)) {
            Some(blob) if blob.is_file() && size.is_none_or(|s| fs::metadata(&blob).is_ok_and(|m| m.len() == s)) => etag.clone().unwrap_or_default(),
            _ => {
                let part = blobs.join(format!("{part_name}.incomplete"));
                let (actual, len) = self.download(&client, file, &location, &part, size, progress, &unreachable).await?;
                let fail = |err: HubError| {
                    let _ = fs::remove_file(&part);
                    Err(err)
                };
                if let Some(expected_len) = size
                    && len != expected_len
                {
                    return fail(HubError::Size { file: name.clone(), actual: len, expected: expected_len });
                }
                if let Some(expected) = &expected
                    && actual != *expected
                {
                    return fail(HubError::Hash { file: name.clone(), actual, expected: expected.clone() });
                }
                let blob_name = etag.clone().unwrap_or(actual);
                let blob = blobs.join(&blob_name);
                fs::rename(&part, &blob).map_err(|e| self.io(file, &blob, e))?;
                blob_name
            }
        };
        drop(lock);

        // The snapshot's link, and the ref naming its commit. A server that names no commit gets
        // the revision's name as the snapshot (a mirror without the hub's headers).
        let commit = commit.unwrap_or_else(|| file.revision().to_owned());
        let target = dir.join("snapshots").join(&commit).join(&file.file);
        link_blob(&target, &file.file, &blob_name).map_err(|e| self.io(file, &target, e))?;
        if commit != file.revision() {
            let refs = dir.join("refs").join(file.revision());
            write_atomic(&refs, commit.as_bytes()).map_err(|e| self.io(file, &refs, e))?;
        }
        Ok(target)
    }

    /// Streams `url` into `part`, continuing what is there; returns its sha256 and length.
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        client: &reqwest::Client,
        file: &HubFile,
        url: &reqwest::Url,
        part: &Path,
        size: Option<u64>,
        progress: Progress<'_>,
        unreachable: &dyn Fn(String) -> HubError,
    ) -> Result<(String, u64), HubError> {
        let io = |e: std::io::Error| self.io(file, part, e);
        let mut out = OpenOptions::new().create(true).append(true).read(true).open(part).map_err(io)?;
        // What is already there counts towards the hash.
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        {
            let mut reader = File::open(part).map_err(io)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                have += n as u64;
            }
        }
        let restart = |out: &mut File, hasher: &mut Sha256, have: &mut u64| -> Result<(), HubError> {
            out.set_len(0).map_err(io)?;
            *hasher = Sha256::new();
            *have = 0;
            Ok(())
        };
        if size.is_some_and(|s| have > s) {
            restart(&mut out, &mut hasher, &mut have)?;
        }
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            if size == Some(have) {
                break;
            }
            if attempt > 0 {
                tracing::info!("{file}: {last_error}; continuing at byte {have}");
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
            }
            let mut request = self.authorize(client.get(url.clone()), url);
            if have > 0 {
                request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    last_error = error_chain(&e);
                    continue;
                }
            };
            let status = response.status().as_u16();
            match status {
                // The rest, from where we are (anything else is started again).
                206 => {
                    let from = response.headers().get("content-range").and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes ")).and_then(|r| r.split('-').next()).and_then(|s| s.parse::<u64>().ok());
                    if from != Some(have) {
                        restart(&mut out, &mut hasher, &mut have)?;
                        last_error = format!("the server sent a range from byte {from:?}");
                        continue;
                    }
                }
                // The whole file again (a server that ignores ranges): start over.
                200 => restart(&mut out, &mut hasher, &mut have)?,
                // Nothing after what we have: whole if the server's length is ours, else start over.
                416 => {
                    let total = response.headers().get("content-range").and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes */")).and_then(|s| s.parse::<u64>().ok());
                    if total == Some(have) || (total.is_none() && size.is_none() && have > 0) {
                        break;
                    }
                    restart(&mut out, &mut hasher, &mut have)?;
                    last_error = "the server has no bytes after the partial file's; starting again".into();
                    continue;
                }
                // Busy or failing for a moment: try again.
                429 | 500..=599 => {
                    last_error = format!("the server answered {status}");
                    continue;
                }
                status => {
                    return Err(HubError::Status { file: file.to_string(), url: self.url(file).map(|u| u.to_string()).unwrap_or_default(), status, hint: " while downloading".into() });
                }
            }
            if !progress(have, size) {
                return Err(HubError::Stopped { file: file.to_string(), have });
            }
            let mut stream = response.bytes_stream();
            let mut cut = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        out.write_all(&bytes).map_err(io)?;
                        hasher.update(&bytes);
                        have += bytes.len() as u64;
                        if !progress(have, size) {
                            out.flush().map_err(io)?;
                            return Err(HubError::Stopped { file: file.to_string(), have });
                        }
                    }
                    Err(e) => {
                        cut = Some(error_chain(&e));
                        break;
                    }
                }
            }
            out.flush().map_err(io)?;
            match cut {
                Some(reason) => last_error = format!("connection lost ({reason})"),
                // Without a size from the hub, a stream that ends cleanly is the whole file.
                None if size.is_none() => break,
                None => {
                    if size.is_some_and(|s| have < s) {
                        last_error = format!("the connection closed at byte {have}");
                    }
                }
            }
        }
        if size.is_some_and(|s| have < s) || (size.is_none() && have == 0) {
            return Err(unreachable(format!("{last_error} (after {ATTEMPTS} attempts; the {have} bytes so far are kept and the next pull continues from there)")));
        }
        out.sync_all().map_err(io)?;
        Ok((hex(&hasher.finalize()), have))
    }
}

/// Creates `snapshots/COMMIT/FILE` as a relative link to `blobs/NAME` (a copy where links are not
/// available), made beside it under a name of its own and renamed into place, so two processes
/// linking the same file do not trip over each other.
fn link_blob(target: &Path, file: &str, blob_name: &str) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    // snapshots/COMMIT/a/b/FILE -> ../../../../blobs/NAME
    let depth = file.split('/').count() + 1;
    let relative: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(blob_name);
    let tmp = unique_sibling(target);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&relative, &tmp)?;
    #[cfg(not(unix))]
    fs::copy(target.parent().unwrap_or(Path::new(".")).join(&relative), &tmp)?;
    fs::rename(&tmp, target).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}


fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `W/"abc"` and `"abc"` → `abc`.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error with its causes (reqwest's own message is often just "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_files_parse_with_folders_and_revisions() {
        let f = HubFile::parse("Qwen/Qwen2.5-Coder-1.5B-GGUF/qwen2.5-coder-1.5b-q8_0.gguf@main").unwrap();
        assert_eq!(f.repo, "Qwen/Qwen2.5-Coder-1.5B-GGUF");
        assert_eq!(f.file, "qwen2.5-coder-1.5b-q8_0.gguf");
        assert_eq!(f.revision(), "main");
        let f = HubFile::parse("o/r/sub/dir/m.gguf").unwrap();
        assert_eq!((f.file.as_str(), f.revision.as_deref()), ("sub/dir/m.gguf", None));
        assert_eq!(f.to_string(), "hf:o/r/sub/dir/m.gguf");
        let f = HubFile::parse("o/r/model@q4.gguf").unwrap();
        assert_eq!((f.file.as_str(), f.revision.as_deref()), ("model@q4.gguf", None));
        let f = HubFile::parse("o/r/m.gguf@0123456789ABCDEF0123456789abcdef01234567").unwrap();
        assert_eq!(f.revision(), "0123456789abcdef0123456789abcdef01234567");
        let hub = Hub { endpoint: "http://h:1/mirror/".into(), cache: PathBuf::new(), token: None, offline: false };
        let url = hub.url(&HubFile::parse("o/r/sub/m.gguf@refs/pr/1").unwrap()).unwrap();
        assert_eq!(url.as_str(), "http://h:1/mirror/o/r/resolve/refs%2Fpr%2F1/sub/m.gguf");
        for bad in ["o/r", "o//m.gguf", "o/r/../m.gguf", "o/r/m.gguf@", "o/r/m.gguf@../x", "/r/m.gguf", "o/r/m.gguf@a\\b", "o/r/C:m.gguf", "o/r/m.gguf@c:x"] {
            assert!(HubFile::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_cached_file_is_found_through_its_ref_without_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub { endpoint: "http://127.0.0.1:9".into(), cache: dir.path().to_owned(), token: None, offline: true };
        let file = HubFile::parse("o/r/sub/m.gguf").unwrap();
        assert_eq!(hub.cached(&file), None);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = dir.path().join("models--o--r");
        fs::create_dir_all(repo.join("blobs")).unwrap();
        fs::write(repo.join("blobs/abc"), b"gguf").unwrap();
        link_blob(&repo.join("snapshots").join(commit).join("sub/m.gguf"), "sub/m.gguf", "abc").unwrap();
        // The snapshot alone is found by commit, not by branch until a ref names it.
        assert_eq!(hub.cached(&HubFile { revision: Some(commit.into()), ..file.clone() }).map(|p| fs::read(p).unwrap()), Some(b"gguf".to_vec()));
        assert_eq!(hub.cached(&file), None);
        write_atomic(&repo.join("refs/main"), commit.as_bytes()).unwrap();
        assert_eq!(hub.cached(&file).map(|p| fs::read(p).unwrap()), Some(b"gguf".to_vec()));
        // Offline and not cached: the error names the file and the command.
        let other = HubFile::parse("o/r/other.gguf").unwrap();
        let err = hub.get(&other, None, &mut |_, _| true).unwrap_err().to_string();
        assert!(err.contains("kenning models pull hf:o/r/other.gguf") && err.contains("HF_HUB_OFFLINE"), "{err}");
    }
}
