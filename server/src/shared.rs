//! The team's shared index: an index built once (in CI, on a big machine) and published to object
//! storage (S3 or any S3-compatible store, or a directory such as a network share), then pulled by
//! every editor into a local cache and searched under a local overlay (`store.rs`: the base).
//!
//! What is published is the index directory itself, file by file, **content-addressed**:
//! `objects/<blake3>` holds each file's bytes, and one small object, `kenning-shared.json` (a
//! [`Snapshot`]), says which object is which file of the directory, at which version each table
//! was, with which embedding model and from which commit. The snapshot is written last, in one
//! `PUT`, so a reader sees a whole publication or the one before it, never half of one; two
//! publishers cannot overwrite each other's files (equal names hold equal bytes); a publication
//! uploads only the files the previous one lacks; and a reader checks every byte it pulls against
//! its hash.
//!
//! Readers work from a local copy of the last snapshot they pulled (`<cache>/shared/<uri>`): search
//! never waits on the network, and when the store cannot be reached the copy serves (the caller says
//! so). Nothing here knows Lance: the files are opaque bytes to this module.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// The snapshot object's name, under the URI's prefix (and the local copy's, in the cache).
pub const SNAPSHOT: &str = "kenning-shared.json";
/// Where the files' bytes live, under the URI's prefix.
const OBJECTS: &str = "objects";
/// Bumped when the snapshot's layout changes.
const FORMAT: u32 = 1;
/// A request to the store gives up after this long (so that an unreachable store is noticed soon
/// and the cached copy serves).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects no snapshot refers to are deleted by a publication only once they are this old (a
/// reader may be pulling the snapshot before the previous one).
const GARBAGE_AGE: Duration = Duration::from_secs(3600);
/// Files pulled or pushed at once.
const PARALLEL_TRANSFERS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{uri}: {message}")]
    Location { uri: String, message: String },
    #[error("{uri}: the store cannot be reached: {message}")]
    Unreachable { uri: String, message: String },
    #[error("{uri}: access denied ({message}); check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)")]
    Denied { uri: String, message: String },
    #[error("{uri}: the bucket does not exist")]
    NoBucket { uri: String },
    #[error("{uri}: no index has been published there yet (publish one with `kenning index --publish {uri}`)")]
    NothingPublished { uri: String },
    #[error("{uri}: {message}")]
    Invalid { uri: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

type Result<T> = std::result::Result<T, SharedError>;

/// What one publication holds: the snapshot object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub embed_model: String,
    pub dim: usize,
    /// The commit the workspace was at (`git rev-parse HEAD`), if it is a git checkout.
    pub commit: Option<String>,
    /// Seconds since the Unix epoch.
    pub published: u64,
    /// Files of the workspace the index holds.
    #[serde(default)]
    pub indexed_files: usize,
    /// The version of each table, which a reader checks out.
    pub versions: BTreeMap<String, u64>,
    /// Every file of the index directory, by its path there.
    pub files: BTreeMap<String, SnapshotFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub blake3: String,
    pub size: u64,
}

impl Snapshot {
    /// A snapshot of the index directory `dir` (its files hashed), at `versions`.
    pub fn of_dir(dir: &Path, embed_model: &str, dim: usize, commit: Option<String>, versions: BTreeMap<String, u64>) -> Result<Self> {
        let mut files = BTreeMap::new();
        for path in list_dir(dir)? {
            let full = dir.join(&path);
            let io = |source| SharedError::Io { path: full.clone(), source };
            let mut hasher = blake3::Hasher::new();
            let size = std::io::copy(&mut std::fs::File::open(&full).map_err(io)?, &mut hasher).map_err(io)?;
            files.insert(path, SnapshotFile { blake3: hasher.finalize().to_hex().to_string(), size });
        }
        let published = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Self { format: FORMAT, embed_model: embed_model.to_owned(), dim, commit, published, indexed_files: 0, versions, files })
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// When it was published, for people (`2026-12-05 14:03 UTC`).
    pub fn published_text(&self) -> String {
        let secs = self.published as i64;
        let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
    }
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Files of an index directory that a snapshot holds (relative, `/`-separated), sorted: all but
/// the writer's lock and the snapshot copy.
fn list_dir(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &rel, out)?;
            } else if name.ends_with(".partial") || (prefix.is_empty() && (name == crate::index::LOCK_FILE || name == SNAPSHOT)) {
                continue;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out).map_err(|source| SharedError::Io { path: dir.to_owned(), source })?;
    out.sort();
    Ok(out)
}

/// Where a shared index lives, and a client for it.
#[derive(Debug, Clone)]
pub struct Remote {
    uri: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl Remote {
    /// `s3://BUCKET[/PREFIX]` (credentials, region and endpoint from the usual AWS environment and
    /// profile files; `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for an S3-compatible server), or a
    /// directory: `file:///PATH` or an absolute path.
    pub fn open(uri: &str) -> Result<Self> {
        let location = |message: String| SharedError::Location { uri: uri.to_owned(), message };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(location("no bucket: expected s3://BUCKET/PREFIX".into()));
            }
            use object_store::ClientConfigKey;
            use object_store::aws::AmazonS3ConfigKey;
            // Set key by key: the client options the environment gave (AWS_ALLOW_HTTP) stay.
            let timeout = |key, value: Duration| (AmazonS3ConfigKey::Client(key), format!("{}s", value.as_secs()));
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in [timeout(ClientConfigKey::Timeout, REQUEST_TIMEOUT), timeout(ClientConfigKey::ConnectTimeout, CONNECT_TIMEOUT)] {
                builder = builder.with_config(key, value);
            }
            builder = aws_profile(builder);
            let retry = object_store::RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(20), ..Default::default() };
            let store = builder.with_retry(retry).build().map_err(|e| location(e.to_string()))?;
            return Ok(Self { uri: uri.to_owned(), store: Arc::new(store), prefix: ObjectPath::from(prefix.trim_matches('/')) });
        }
        let dir = uri.strip_prefix("file://").unwrap_or(uri);
        if !Path::new(dir).is_absolute() {
            return Err(location("expected s3://BUCKET/PREFIX, file:///PATH or an absolute path".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| location(format!("cannot create the directory: {e}")))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| location(e.to_string()))?;
        Ok(Self { uri: uri.to_owned(), store: Arc::new(store), prefix: ObjectPath::default() })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn key(&self, name: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in name.split('/') {
            key = key.join(part);
        }
        key
    }

    fn object(&self, file: &SnapshotFile) -> ObjectPath {
        self.key(&format!("{OBJECTS}/{}", file.blake3))
    }

    /// What an error from the store means for a user.
    fn explain(&self, error: object_store::Error) -> SharedError {
        let uri = self.uri.clone();
        let text = error.to_string();
        match error {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => SharedError::Denied { uri, message: text },
            _ if text.contains("NoSuchBucket") => SharedError::NoBucket { uri },
            _ if ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden"].iter().any(|s| text.contains(s)) => {
                SharedError::Denied { uri, message: first_line(&text) }
            }
            object_store::Error::Generic { .. } => {
                let text = text.split_once(" error: ").map_or(text.as_str(), |(_, rest)| rest);
                SharedError::Unreachable { uri, message: first_line(text) }
            }
            _ => SharedError::Invalid { uri, message: text },
        }
    }

    /// The current snapshot; `None` when nothing was published (the bucket exists but has none).
    pub async fn snapshot(&self) -> Result<Option<Snapshot>> {
        let bytes = match self.store.get(&self.key(SNAPSHOT)).await {
            Ok(got) => got.bytes().await.map_err(|e| self.explain(e))?,
            Err(object_store::Error::NotFound { .. }) => {
                // An absent bucket also reads as "not found" on some servers: a listing tells.
                self.store.list(Some(&self.prefix)).next().await.transpose().map_err(|e| self.explain(e))?;
                return Ok(None);
            }
            Err(e) => return Err(self.explain(e)),
        };
        let snapshot: Snapshot = serde_json::from_slice(&bytes)
            .map_err(|e| SharedError::Invalid { uri: self.uri.clone(), message: format!("{SNAPSHOT} is not a kenning snapshot: {e}") })?;
        if snapshot.format != FORMAT {
            return Err(SharedError::Invalid {
                uri: self.uri.clone(),
                message: format!("published in format {} (this kenning reads {FORMAT}): update kenning", snapshot.format),
            });
        }
        Ok(Some(snapshot))
    }

    /// Makes `dir` hold exactly the files of `snapshot` (downloading those it lacks, each checked
    /// against its hash), then writes the snapshot there last. Files that neither this snapshot,
    /// the one `dir` held before, nor a live [`Lease`] names are removed. Returns the bytes
    /// downloaded and this process's lease on the snapshot (hold it while reading the copy).
    ///
    /// One process pulls into `dir` at a time (an advisory lock on `<dir>.pull.lock`): an editor
    /// and a `kenning` command on one machine share the copy.
    pub async fn pull(&self, snapshot: &Snapshot, dir: &Path) -> Result<(u64, Lease)> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let _lock = pull_lock(dir).await?;
        let before = local_snapshot(dir);
        let wanted: Vec<(PathBuf, SnapshotFile)> = snapshot
            .files
            .iter()
            .filter(|&(path, file)| !before.as_ref().is_some_and(|b| b.files.get(path) == Some(file) && size_of(&dir.join(path)) == Some(file.size)))
            .map(|(path, file)| (dir.join(path), file.clone()))
            .collect();
        let downloaded: Vec<u64> = futures::stream::iter(wanted)
            .map(|(to, file)| async move { self.download(&file, to).await })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .try_collect()
            .await?;
        // Keep what the previous snapshot needs, and what any process still reading an older one
        // has claimed (everything, when a claim cannot be read).
        if let Some(claimed) = claimed_files(dir) {
            let keep: HashSet<&String> = snapshot.files.keys().chain(before.iter().flat_map(|b| b.files.keys())).chain(&claimed).collect();
            for path in list_dir(dir)? {
                if !keep.contains(&path) {
                    let _ = std::fs::remove_file(dir.join(&path));
                }
            }
        }
        write_atomically(&dir.join(SNAPSHOT), &serde_json::to_vec_pretty(snapshot).expect("a snapshot serializes"))?;
        Ok((downloaded.iter().sum(), Lease::take(dir, snapshot)?))
    }

    async fn download(&self, file: &SnapshotFile, to: PathBuf) -> Result<u64> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|source| SharedError::Io { path: parent.to_owned(), source })?;
        }
        let partial = PathBuf::from(format!("{}.partial", to.display()));
        let io = |source| SharedError::Io { path: partial.clone(), source };
        let got = match self.store.get(&self.object(file)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(SharedError::Invalid {
                    uri: self.uri.clone(),
                    message: format!("the published index is incomplete: the object of {} is missing (publish again)", to.display()),
                });
            }
            Err(e) => return Err(self.explain(e)),
        };
        let mut out = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let mut stream = got.into_stream();
        let mut size = 0u64;
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(|e| self.explain(e))?;
            hasher.update(&bytes);
            size += bytes.len() as u64;
            out.write_all(&bytes).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        drop(out);
        if hasher.finalize().to_hex().as_str() != file.blake3 || size != file.size {
            let _ = std::fs::remove_file(&partial);
            return Err(SharedError::Invalid {
                uri: self.uri.clone(),
                message: format!("the object of {} does not have the published content (blake3 {})", to.display(), file.blake3),
            });
        }
        std::fs::rename(&partial, &to).map_err(io)?;
        Ok(size)
    }

    /// Publishes the index in `dir` as `snapshot` (made from it): uploads the objects `previous`
    /// (the snapshot published before, if any) does not already hold, then the snapshot, then
    /// deletes objects that neither, nor the store's publication at the start, names and that are
    /// older than an hour. Returns the bytes uploaded.
    ///
    /// Another publisher's collection keeps only what its own and the one it started from name,
    /// and objects younger than an hour. So when the store's publication is no longer `previous`,
    /// the objects taken from `previous` are treated as new ones: written again unless they are
    /// there and recent, and then no collection can take them before this snapshot names them.
    pub async fn push(&self, dir: &Path, snapshot: &Snapshot, previous: Option<&Snapshot>) -> Result<u64> {
        let current = self.snapshot().await?;
        let moved_on = current.as_ref() != previous;
        let had: HashSet<&str> = previous.iter().flat_map(|p| p.files.values().map(|f| f.blake3.as_str())).collect();
        let mut uploads: HashMap<&str, (PathBuf, SnapshotFile)> = HashMap::new();
        for (path, file) in &snapshot.files {
            if moved_on || !had.contains(file.blake3.as_str()) {
                uploads.entry(file.blake3.as_str()).or_insert_with(|| (dir.join(path), file.clone()));
            }
        }
        let uploads: Vec<(PathBuf, SnapshotFile)> = uploads.into_values().collect();
        let uploaded: Vec<u64> = futures::stream::iter(uploads)
            .map(|(from, file)| async move { self.upload(from, &file).await })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .try_collect()
            .await?;
        let json = serde_json::to_vec_pretty(snapshot).expect("a snapshot serializes");
        self.store.put(&self.key(SNAPSHOT), PutPayload::from(json)).await.map_err(|e| self.explain(e))?;

        let live: HashSet<String> =
            [Some(snapshot), previous, current.as_ref()].into_iter().flatten().flat_map(|p| p.files.values()).map(|f| f.blake3.clone()).collect();
        let objects = self.key(OBJECTS);
        let now = chrono_now();
        let garbage: Vec<ObjectPath> = self
            .store
            .list(Some(&objects))
            .try_filter(|meta| {
                let old = now.saturating_sub(meta.last_modified.timestamp().max(0) as u64) >= GARBAGE_AGE.as_secs();
                let name = meta.location.filename().unwrap_or_default();
                std::future::ready(old && !live.contains(name))
            })
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.explain(e))?;
        for key in garbage {
            self.store.delete(&key).await.map_err(|e| self.explain(e))?;
        }
        Ok(uploaded.iter().sum())
    }

    /// Uploads `file` unless the store has it, written less than half an hour ago (a publication
    /// cut short). An older one is written again, which makes it new: another publisher's
    /// collection could take it before this publication names it.
    async fn upload(&self, from: PathBuf, file: &SnapshotFile) -> Result<u64> {
        let key = self.object(file);
        let fresh = |meta: &object_store::ObjectMeta| chrono_now().saturating_sub(meta.last_modified.timestamp().max(0) as u64) < GARBAGE_AGE.as_secs() / 2;
        if self.store.head(&key).await.is_ok_and(|meta| meta.size == file.size && fresh(&meta)) {
            return Ok(0);
        }
        let mut reader = tokio::fs::File::open(&from).await.map_err(|source| SharedError::Io { path: from.clone(), source })?;
        let mut writer = object_store::buffered::BufWriter::new(Arc::clone(&self.store), key);
        // The writer's errors are the store's, wrapped in I/O errors; the reader's are the file's.
        let failed = |e: std::io::Error| {
            if !e.get_ref().is_some_and(|inner| inner.is::<object_store::Error>()) {
                return SharedError::Io { path: from.clone(), source: e };
            }
            match e.into_inner().map(|inner| inner.downcast::<object_store::Error>()) {
                Some(Ok(store_error)) => self.explain(*store_error),
                Some(Err(other)) => SharedError::Io { path: from.clone(), source: std::io::Error::other(other) },
                None => SharedError::Io { path: from.clone(), source: std::io::Error::other("unknown") },
            }
        };
        tokio::io::copy(&mut reader, &mut writer).await.map_err(failed)?;
        writer.shutdown().await.map_err(failed)?;
        Ok(file.size)
    }
}

fn chrono_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().chars().take(300).collect()
}

fn size_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// The snapshot a local copy holds, if it is complete (written last by [`Remote::pull`]).
pub fn local_snapshot(dir: &Path) -> Option<Snapshot> {
    std::fs::read(dir.join(SNAPSHOT)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// The snapshot the copy in `dir` holds, with a lease on it (`None`: no complete copy): for a
/// process that reads the copy without pulling (the store is out of reach).
pub async fn lease_local(dir: &Path) -> Result<Option<(Snapshot, Lease)>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let _lock = pull_lock(dir).await?;
    match local_snapshot(dir) {
        Some(snapshot) => {
            let lease = Lease::take(dir, &snapshot)?;
            Ok(Some((snapshot, lease)))
        }
        None => Ok(None),
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SharedError {
    let path = path.to_owned();
    move |source| SharedError::Io { path, source }
}

/// Waits for, then holds, the copy's pull lock (`<dir>.pull.lock`).
async fn pull_lock(dir: &Path) -> Result<std::fs::File> {
    let path = PathBuf::from(format!("{}.pull.lock", dir.display()));
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_at(&path))?;
    tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| SharedError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?
        .map_err(io_at(&path))
}

/// Where the processes reading a copy claim their snapshots: `<dir>.readers/`.
fn readers_dir(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.readers", dir.display()))
}

/// A process's claim on the files of the snapshot it reads from a local copy. A pull into the
/// copy, by any process, keeps every file a live claim names, however many publications later it
/// comes (without claims it keeps only the snapshot before its own, and an editor open for days
/// would find its files gone). The claim is a file naming the snapshot, under an advisory lock
/// that the system releases when the process ends, however it ends; the next pull removes a
/// claim nobody holds. Dropping the lease ends the claim. The copy is meant for a local file
/// system (the cache): where locks are emulated (NFS, SMB), a claim whose lock cannot be told
/// keeps its files.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    _held: std::fs::File,
}

/// This process's claims, by path, with the files each names: a pull here never opens them
/// (closing any handle on a file drops the process's lock where locks are per process).
static OWN_CLAIMS: std::sync::Mutex<BTreeMap<PathBuf, Vec<String>>> = std::sync::Mutex::new(BTreeMap::new());

impl Lease {
    /// Claims `snapshot` in the copy `dir`. Called under the copy's pull lock, so that no pull
    /// sees the claim before it is locked. The name is new (another machine or container sharing
    /// the cache may have the same process id): no one else's claim is ever opened for writing.
    fn take(dir: &Path, snapshot: &Snapshot) -> Result<Self> {
        static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let readers = readers_dir(dir);
        std::fs::create_dir_all(&readers).map_err(io_at(&readers))?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let (path, mut file) = loop {
            let n = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = readers.join(format!("{}-{n}-{nanos:09}.json", std::process::id()));
            match std::fs::OpenOptions::new().create_new(true).write(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_at(&path)(e)),
            }
        };
        let lock_error = |e: std::fs::TryLockError| SharedError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) };
        if let Err(e) = file.try_lock() {
            let _ = std::fs::remove_file(&path);
            return Err(lock_error(e));
        }
        if let Err(e) = std::io::Write::write_all(&mut file, &serde_json::to_vec(snapshot).expect("a snapshot serializes")) {
            let _ = std::fs::remove_file(&path);
            return Err(io_at(&path)(e));
        }
        OWN_CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).insert(path.clone(), snapshot.files.keys().cloned().collect());
        Ok(Self { path, _held: file })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        OWN_CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The files that live claims in the copy `dir` name (see [`Lease`]); claims whose holder is gone
/// are removed. `None` when a claim is held but cannot be read (a newer kenning's, or a lock that
/// cannot be told): nothing may be removed then. Called under the pull lock.
fn claimed_files(dir: &Path) -> Option<HashSet<String>> {
    let own = OWN_CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut files: HashSet<String> = HashSet::new();
    let Ok(entries) = std::fs::read_dir(readers_dir(dir)) else { return Some(files) };
    for path in entries.flatten().map(|e| e.path()) {
        if let Some(names) = own.get(&path) {
            files.extend(names.iter().cloned());
            continue;
        }
        // Read and write: an exclusive lock emulated over byte ranges needs a writable handle.
        let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&path) else { continue };
        match file.try_lock() {
            // Nobody holds it: its process ended.
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let snapshot: Snapshot = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok())?;
                files.extend(snapshot.files.into_keys());
            }
            Err(std::fs::TryLockError::Error(_)) => return None,
        }
    }
    Some(files)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| SharedError::Io { path: path.to_owned(), source };
    let tmp = PathBuf::from(format!("{}.partial", path.display()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Fills in what the AWS environment lacks from the shared profile files, as the AWS tools do:
/// `AWS_PROFILE` (else `default`) in `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`) for the
/// keys and `~/.aws/config` (`AWS_CONFIG_FILE`) for the region and an `endpoint_url`.
fn aws_profile(mut builder: object_store::aws::AmazonS3Builder) -> object_store::aws::AmazonS3Builder {
    use object_store::aws::AmazonS3ConfigKey as Key;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let home = dirs::home_dir().unwrap_or_default();
    let credentials = env("AWS_SHARED_CREDENTIALS_FILE").map_or_else(|| home.join(".aws/credentials"), PathBuf::from);
    let config = env("AWS_CONFIG_FILE").map_or_else(|| home.join(".aws/config"), PathBuf::from);
    if env("AWS_ACCESS_KEY_ID").is_none() {
        let section = ini_section(&credentials, &profile);
        for (key, name) in [(Key::AccessKeyId, "aws_access_key_id"), (Key::SecretAccessKey, "aws_secret_access_key"), (Key::Token, "aws_session_token")] {
            if let Some(value) = section.get(name) {
                builder = builder.with_config(key, value);
            }
        }
    }
    let section_name = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let section = ini_section(&config, &section_name);
    if env("AWS_REGION").is_none()
        && env("AWS_DEFAULT_REGION").is_none()
        && let Some(region) = section.get("region")
    {
        builder = builder.with_region(region);
    }
    if env("AWS_ENDPOINT_URL").is_none()
        && env("AWS_ENDPOINT").is_none()
        && let Some(endpoint) = section.get("endpoint_url")
    {
        builder = builder.with_endpoint(endpoint);
    }
    builder
}

/// The `key = value` lines of `[section]` in an INI file (empty if absent).
fn ini_section(path: &Path, section: &str) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
    let mut inside = false;
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

/// The local copy of the shared index at `uri`: `<cache>/shared/<name>-<hash>`.
pub fn cache_dir(cache: &Path, uri: &str) -> PathBuf {
    let name: String = uri
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("shared")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let digest = blake3::hash(uri.as_bytes()).to_hex();
    cache.join("shared").join(format!("{name}-{}", &digest[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_for_people() {
        let mut s = Snapshot { format: FORMAT, embed_model: "m".into(), dim: 1, commit: None, published: 0, indexed_files: 0, versions: BTreeMap::new(), files: BTreeMap::new() };
        assert_eq!(s.published_text(), "1970-01-01 00:00 UTC");
        s.published = 1_796_440_980; // 2026-12-05 03:23 UTC
        assert_eq!(s.published_text(), "2026-12-05 03:23 UTC");
        s.published = 951_782_400; // a leap day
        assert_eq!(s.published_text(), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn profile_files_are_read_by_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "[default]\naws_access_key_id = A\n\n[profile team]\nregion=eu-west-1\n  endpoint_url = http://x\n").unwrap();
        assert_eq!(ini_section(&path, "default").get("aws_access_key_id").map(String::as_str), Some("A"));
        let team = ini_section(&path, "profile team");
        assert_eq!((team.get("region").map(String::as_str), team.get("endpoint_url").map(String::as_str)), (Some("eu-west-1"), Some("http://x")));
        assert!(ini_section(&path, "other").is_empty() && ini_section(&dir.path().join("none"), "default").is_empty());
    }

    #[test]
    fn uris_that_cannot_work_are_refused_with_the_reason() {
        for (uri, says) in [("s3://", "no bucket"), ("relative/dir", "absolute path"), ("gs://b/p", "absolute path")] {
            let e = Remote::open(uri).unwrap_err().to_string();
            assert!(e.starts_with(uri) && e.contains(says), "{uri}: {e}");
        }
    }

    /// Publishing a directory and pulling it elsewhere gives the same bytes; a second publication
    /// uploads only what changed; a damaged object is refused, not installed.
    #[tokio::test]
    async fn push_then_pull_through_a_directory_store() {
        let (src, store, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir_all(src.path().join("t.lance/data")).unwrap();
        std::fs::write(src.path().join("t.lance/data/a.lance"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.path().join("kenning-index.json"), b"{}").unwrap();
        std::fs::write(src.path().join(crate::index::LOCK_FILE), b"pid").unwrap();
        let remote = Remote::open(store.path().to_str().unwrap()).unwrap();
        assert_eq!(remote.snapshot().await.unwrap(), None);

        let first = Snapshot::of_dir(src.path(), "m", 4, Some("abc".into()), BTreeMap::from([("t".into(), 3)])).unwrap();
        assert_eq!(first.files.keys().collect::<Vec<_>>(), ["kenning-index.json", "t.lance/data/a.lance"], "the lock is not published");
        assert_eq!(remote.push(src.path(), &first, None).await.unwrap(), 100_002);
        assert_eq!(remote.snapshot().await.unwrap().as_ref(), Some(&first));
        assert_eq!(remote.pull(&first, copy.path()).await.unwrap().0, 100_002);
        assert_eq!(std::fs::read(copy.path().join("t.lance/data/a.lance")).unwrap(), vec![7u8; 100_000]);
        assert_eq!(local_snapshot(copy.path()).as_ref(), Some(&first));
        assert_eq!(remote.pull(&first, copy.path()).await.unwrap().0, 0, "nothing to pull twice");

        std::fs::write(src.path().join("t.lance/data/b.lance"), b"new").unwrap();
        let second = Snapshot::of_dir(src.path(), "m", 4, None, BTreeMap::from([("t".into(), 4)])).unwrap();
        assert_eq!(remote.push(src.path(), &second, Some(&first)).await.unwrap(), 3, "only the new file");
        assert_eq!(remote.pull(&second, copy.path()).await.unwrap().0, 3);

        // An object whose bytes are not the published ones is refused and leaves no file behind.
        let b = &second.files["t.lance/data/b.lance"];
        std::fs::write(store.path().join(OBJECTS).join(&b.blake3), b"bad").unwrap();
        let other = tempfile::tempdir().unwrap();
        let e = remote.pull(&second, other.path()).await.unwrap_err().to_string();
        assert!(e.contains("does not have the published content"), "{e}");
        assert!(!other.path().join("t.lance/data/b.lance").exists() && local_snapshot(other.path()).is_none());
        // A missing one says the publication is incomplete.
        std::fs::remove_file(store.path().join(OBJECTS).join(&b.blake3)).unwrap();
        let e = remote.pull(&second, other.path()).await.unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
    }

    /// Two publishers: what one takes from the publication it started from is uploaded again when
    /// the other's collection removed it meanwhile, and an old object no publication names (left
    /// by one cut short) is written again rather than trusted to outlive the next collection.
    #[tokio::test]
    async fn a_publisher_does_not_rely_on_objects_another_may_collect() {
        let (src, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let remote = Remote::open(store.path().to_str().unwrap()).unwrap();
        let data = src.path().join("t.lance/data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("a.lance"), b"kept from the first publication").unwrap();
        let first = Snapshot::of_dir(src.path(), "m", 4, None, BTreeMap::from([("t".into(), 1)])).unwrap();
        remote.push(src.path(), &first, None).await.unwrap();
        let object = |f: &SnapshotFile| store.path().join(OBJECTS).join(&f.blake3);

        // Meanwhile another publisher published, and its collection took `a.lance`'s object.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("t.lance/data")).unwrap();
        std::fs::write(other.path().join("t.lance/data/z.lance"), b"theirs").unwrap();
        let theirs = Snapshot::of_dir(other.path(), "m", 4, None, BTreeMap::from([("t".into(), 9)])).unwrap();
        remote.push(other.path(), &theirs, Some(&first)).await.unwrap();
        std::fs::remove_file(object(&first.files["t.lance/data/a.lance"])).unwrap();

        // This publisher started from the first publication, and adds `b.lance`, whose object a
        // publication cut short two hours ago left behind.
        std::fs::write(data.join("b.lance"), b"new here").unwrap();
        let second = Snapshot::of_dir(src.path(), "m", 4, None, BTreeMap::from([("t".into(), 2)])).unwrap();
        let b = &second.files["t.lance/data/b.lance"];
        std::fs::write(object(b), b"new here").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options().write(true).open(object(b)).unwrap().set_modified(two_hours_ago).unwrap();
        let uploaded = remote.push(src.path(), &second, Some(&first)).await.unwrap();
        assert_eq!(uploaded, 31 + 8, "the collected object and the old one, both written");
        let copy = tempfile::tempdir().unwrap();
        remote.pull(&second, copy.path()).await.expect("the publication is whole");
    }

    /// A process reading an old snapshot keeps its files however many publications other
    /// processes pull into the copy meanwhile; once it ends (here: killed) they go.
    #[tokio::test]
    async fn a_reader_keeps_its_snapshot_while_others_pull_newer_ones() {
        let (src, store, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let copy = copy.path().join("copy");
        let remote = Remote::open(store.path().to_str().unwrap()).unwrap();
        let data = src.path().join("t.lance/data");
        std::fs::create_dir_all(&data).unwrap();
        // Publication n holds only the file `n.lance`.
        let mut snapshots: Vec<Snapshot> = Vec::new();
        for n in 0..4u64 {
            if n > 0 {
                std::fs::remove_file(data.join(format!("{}.lance", n - 1))).unwrap();
            }
            std::fs::write(data.join(format!("{n}.lance")), format!("version {n}")).unwrap();
            let snapshot = Snapshot::of_dir(src.path(), "m", 4, None, BTreeMap::from([("t".into(), n)])).unwrap();
            remote.push(src.path(), &snapshot, snapshots.last()).await.unwrap();
            snapshots.push(snapshot);
        }
        let file = |n: usize| copy.join(format!("t.lance/data/{n}.lance"));

        // This process reads publication 0; another process reads publication 1.
        let (_, reader) = remote.pull(&snapshots[0], &copy).await.unwrap();
        drop(remote.pull(&snapshots[1], &copy).await.unwrap());
        let mut other = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "shared::tests::hold_a_claim_until_killed", "--nocapture"])
            .env(HOLD_CLAIM_ON, &copy)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        let mut out = std::io::BufReader::new(other.stdout.take().unwrap());
        while !said.contains("claimed") {
            assert!(std::io::BufRead::read_line(&mut out, &mut said).unwrap() > 0, "the other process ended: {said}");
        }
        remote.pull(&snapshots[2], &copy).await.unwrap();
        remote.pull(&snapshots[3], &copy).await.unwrap();
        assert!(file(0).exists() && file(1).exists(), "both readers still read their files");
        assert!(file(2).exists() && file(3).exists(), "the copy's previous and current publications");

        other.kill().unwrap();
        other.wait().unwrap();
        remote.pull(&snapshots[3], &copy).await.unwrap();
        assert!(!file(1).exists() && file(0).exists(), "the killed reader's claim keeps nothing; this one's still does");
        assert_eq!(std::fs::read_dir(copy.with_extension("readers")).unwrap().count(), 1, "the killed reader's claim is removed");

        drop(reader);
        remote.pull(&snapshots[3], &copy).await.unwrap();
        assert!(!file(0).exists(), "once its reader is gone, publication 0's file goes");
        let (snapshot, _lease) = lease_local(&copy).await.unwrap().expect("a complete copy");
        assert_eq!(snapshot, snapshots[3]);
        assert!(lease_local(&copy.join("nothing")).await.unwrap().is_none());
    }

    /// Where [`hold_a_claim_until_killed`] claims the copy.
    const HOLD_CLAIM_ON: &str = "KENNING_TEST_HOLD_CLAIM_ON";

    /// The other process of the test above (run by it, in a process of its own).
    #[tokio::test]
    #[ignore = "run by a_reader_keeps_its_snapshot_while_others_pull_newer_ones in a process of its own"]
    async fn hold_a_claim_until_killed() {
        let copy = std::env::var_os(HOLD_CLAIM_ON).expect("run by the test above");
        let (_, _lease) = lease_local(Path::new(&copy)).await.unwrap().expect("a complete copy");
        // Told to the test above on stdout (the lint against printing is for the program).
        let mut out = std::io::stdout();
        std::io::Write::write_all(&mut out, b"claimed\n").unwrap();
        std::io::Write::flush(&mut out).unwrap();
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
}
