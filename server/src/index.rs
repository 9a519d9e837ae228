//! The indexing pipeline: walk → read → chunk → store text → embed → store vectors → optimize.
//!
//! Incremental by construction: a file whose size and mtime match the index is not read; one whose
//! content hash matches is not re-chunked; a changed file's chunks are replaced, and those whose
//! text did not change keep their embedding. Files gone from the workspace (or now excluded) are
//! removed. Walking, reading and chunking run on the walker's threads; embedding runs on a blocking
//! thread; the async side only writes.
//!
//! The text of every changed file is stored before any embedding starts, and the full-text index is
//! built right after the first write, so keyword search works while vectors are still computed.
//!
//! Over a shared base (the store's [`Store::base_hashes`]), only what differs from the base is
//! indexed here: a file with the base's content gets a row without chunks (so it is not read again
//! while unchanged), a file gone from the workspace a row with an empty hash (hiding the base's), and
//! an edited file's unchanged chunks take their vectors from the base.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chunk::{self, Chunk, Language};
use crate::embed::{EmbedError, Embedder, Purpose};
use crate::store::{Store, StoreError, StoredFile};
use crate::workspace::{self, SkipReason, WalkItem, WalkOptions};

/// Chunks gathered before one write to the store.
const WRITE_BATCH_CHUNKS: usize = 2_000;
/// Files gathered before one write to the store (many small files).
const WRITE_BATCH_FILES: usize = 500;
/// Chunks embedded between two writes of vectors.
const EMBED_SLICE: usize = 512;
/// A run that writes at least this many chunks optimizes the index at its end, whatever the
/// fragment count says (folds the new rows into the text and vector indexes).
const OPTIMIZE_AFTER_CHUNKS: usize = 1_000;
/// Items in flight between the walker threads and the writer.
const CHANNEL_CAPACITY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot lock the index at {path} for writing: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot clear {path}: {source}")]
    Clear { path: PathBuf, source: std::io::Error },
}

/// Removes everything in an index directory but its writer lock (held by the caller).
pub fn clear(dir: &Path) -> Result<(), IndexError> {
    fn err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
        move |source| IndexError::Clear { path: path.to_owned(), source }
    }
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map_err(err(&path))?.is_dir();
        if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.map_err(err(&path))?;
    }
    Ok(())
}

/// The file whose advisory lock gives one writer at a time the right to change an index.
pub const LOCK_FILE: &str = "writer.lock";

/// The right to write one index, held until dropped: an exclusive advisory lock on
/// `<index>/writer.lock`, which the language server and every CLI command that writes take.
/// A second writer waits for the first (the lock file says who holds it), then sees its work.
pub struct WriterLock {
    _file: std::fs::File,
}

impl WriterLock {
    /// Takes the lock of the index in `dir`, waiting for another holder; `waiting` is told who
    /// holds it before the wait starts.
    pub async fn acquire(dir: &Path, waiting: impl FnOnce(&str)) -> Result<Self, IndexError> {
        use std::io::Write;
        let path = dir.join(LOCK_FILE);
        let err = |source| IndexError::Lock { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                waiting(if holder.trim().is_empty() { "another kenning process" } else { holder.trim() });
                let waiter = file.try_clone().map_err(err)?;
                tokio::task::spawn_blocking(move || waiter.lock())
                    .await
                    .map_err(|e| err(std::io::Error::other(e.to_string())))?
                    .map_err(err)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        // Who holds it, for the next one who waits (best effort).
        let _ = file.set_len(0).and_then(|()| write!(file, "kenning (pid {})", std::process::id()));
        Ok(Self { _file: file })
    }
}

/// Options of one indexing run.
#[derive(Debug, Clone, Default)]
pub struct IndexOptions {
    pub walk: WalkOptions,
    /// Leave compaction to the caller ([`IndexSummary::optimize_due`] says when it is due): the
    /// language server re-indexes a saved file on the request path and optimizes when idle.
    pub defer_optimize: bool,
}

/// Callbacks for progress reporting (CLI bars, LSP `$/progress`). All default to nothing.
pub trait Progress: Send + Sync {
    fn file_done(&self) {}
    fn chunks_stored(&self, _n: usize) {}
    fn text_searchable(&self) {}
    fn embedding_started(&self, _total: usize) {}
    fn embedded(&self, _n: usize) {}
    fn optimizing(&self) {}
    /// Another process holds the index's writer lock; the run waits for it.
    fn waiting_for_lock(&self, holder: &str) {
        tracing::info!("{holder} is writing this index: waiting for it to finish");
    }
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IndexSummary {
    pub files_seen: usize,
    pub files_changed: usize,
    pub files_unchanged: usize,
    pub files_removed: usize,
    /// Files with the content the shared base holds: searched there, not indexed here.
    pub files_from_base: usize,
    pub files_lossy_utf8: usize,
    pub skipped: Vec<(String, String)>,
    pub chunks_written: usize,
    pub vectors_computed: usize,
    pub vectors_reused: usize,
    /// From the start of the run until keyword search covered every changed file.
    pub text_ready: Duration,
    /// From the start of the run until every chunk had its vector.
    pub vectors_ready: Duration,
    pub total: Duration,
    pub languages: Vec<(String, usize)>,
    /// The run skipped an optimize it would have done ([`IndexOptions::defer_optimize`]).
    pub optimize_due: bool,
    /// Secrets taken out of changed files before anything was stored: path, line, kind.
    pub redacted: Vec<(String, u32, &'static str)>,
}

/// What the walker threads hand to the writer.
enum Work {
    Unchanged(String),
    /// Same content, new mtime: only the file row changes.
    Touched(StoredFile),
    Changed { file: StoredFile, chunks: Vec<Chunk>, lossy: bool, redactions: Vec<crate::secrets::Redaction> },
    /// The base holds this content: a row without chunks here (and none of this index's chunks).
    /// `fresh`: the row is new or its chunks have to go (else the row is kept as it is).
    FromBase { file: StoredFile, fresh: bool },
    Skipped(String, SkipReason),
}

/// The text embedded for a chunk: where it lives, what it defines, then the code.
pub fn embedding_text(chunk: &Chunk) -> String {
    if chunk.symbol.is_empty() {
        format!("{}\n{}", chunk.path, chunk.text)
    } else {
        format!("{} {}\n{}", chunk.path, chunk.symbol, chunk.text)
    }
}

/// Indexes `root` into `store`. Without an embedder only text (BM25) is indexed.
pub async fn index_workspace(
    root: &Path,
    store: &Store,
    embedder: Option<Arc<dyn Embedder>>,
    options: &IndexOptions,
    progress: Arc<dyn Progress>,
) -> Result<IndexSummary, IndexError> {
    let started = Instant::now();
    if !root.is_dir() {
        return Err(IndexError::NotADirectory(root.to_owned()));
    }
    // One writer at a time; once it is ours, read what an earlier holder committed.
    let _lock = WriterLock::acquire(store.dir(), |holder| progress.waiting_for_lock(holder)).await?;
    store.refresh().await?;
    let known = Arc::new(store.files().await?);
    let base: Option<Arc<HashMap<String, String>>> = store.base().map(|b| Arc::clone(b.hashes()));
    let mut summary = IndexSummary::default();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Work>(CHANNEL_CAPACITY);
    let walker = {
        let root = root.to_owned();
        let known = Arc::clone(&known);
        let base = base.clone();
        let walk_options = options.walk.clone();
        let progress = Arc::clone(&progress);
        tokio::task::spawn_blocking(move || {
            workspace::walk(&root, &walk_options, |item| {
                let work = classify(item, &known, base.as_deref(), walk_options.max_file_bytes);
                progress.file_done();
                // A closed channel means the writer failed; its error is reported, not this one.
                let _ = tx.blocking_send(work);
            });
        })
    };

    let mut seen: HashSet<String> = HashSet::new();
    let mut languages: HashMap<Language, usize> = HashMap::new();
    let mut pending = Batch::default();
    let mut touched: Vec<StoredFile> = Vec::new();
    let mut from_base: Vec<StoredFile> = Vec::new();
    let mut text_indexed = false;
    // Chunks written by this run that still need a vector.
    let mut fresh: Vec<Chunk> = Vec::new();
    while let Some(work) = rx.recv().await {
        match work {
            Work::Unchanged(path) => {
                summary.files_unchanged += 1;
                seen.insert(path);
            }
            Work::Touched(file) => {
                summary.files_unchanged += 1;
                seen.insert(file.path.clone());
                touched.push(file);
            }
            Work::Changed { file, chunks, lossy, redactions } => {
                summary.files_changed += 1;
                summary.redacted.extend(redactions.into_iter().map(|r| (file.path.clone(), r.line, r.kind)));
                summary.files_lossy_utf8 += usize::from(lossy);
                for c in &chunks {
                    *languages.entry(c.language).or_default() += 1;
                }
                seen.insert(file.path.clone());
                pending.add(file, chunks);
                if pending.is_full() {
                    summary.chunks_written += pending.write(store, embedder.is_some(), &known, &progress, &mut summary.vectors_reused, &mut fresh).await?;
                    if !text_indexed {
                        text_indexed = store.ensure_text_index().await?;
                    }
                }
            }
            Work::FromBase { file, fresh } => {
                summary.files_from_base += 1;
                seen.insert(file.path.clone());
                if fresh {
                    from_base.push(file);
                }
            }
            Work::Skipped(path, reason) => summary.skipped.push((path, reason.to_string())),
        }
    }
    walker.await.expect("the walker thread does not panic");
    summary.chunks_written += pending.write(store, embedder.is_some(), &known, &progress, &mut summary.vectors_reused, &mut fresh).await?;
    if !touched.is_empty() {
        store.record_files(&touched).await?;
    }

    // A file of the base that is not here (deleted, ignored, filtered out) hides the base's rows:
    // a row with an empty hash, written once.
    let in_base = |p: &str| base.as_ref().is_some_and(|b| b.contains_key(p));
    if let Some(base) = &base {
        from_base.extend(
            base.keys()
                .filter(|p| !seen.contains(*p) && known.get(*p).is_none_or(|k| !k.hash.is_empty()))
                .map(|p| StoredFile { path: p.clone(), hash: String::new(), size: 0, mtime_ns: 0, chunks: 0 }),
        );
    }
    if !from_base.is_empty() {
        store.replace_files(&from_base, &[]).await?;
    }
    // Anything indexed before but not seen now is gone (deleted, ignored, or now filtered out),
    // including chunks an interrupted run left for files it never recorded.
    let mut stale: Vec<String> = known.keys().filter(|p| !seen.contains(*p) && !in_base(p.as_str())).cloned().collect();
    stale.extend(store.chunk_paths().await?.into_iter().filter(|p| !seen.contains(p) && !known.contains_key(p) && !in_base(p.as_str())));
    if !stale.is_empty() {
        let refs: Vec<&str> = stale.iter().map(String::as_str).collect();
        store.remove_paths(&refs).await?;
    }
    summary.files_removed = stale.len() + from_base.iter().filter(|f| f.hash.is_empty()).count();
    store.refresh_overlay().await?;
    store.ensure_text_index().await?;
    summary.text_ready = started.elapsed();
    progress.text_searchable();

    if let Some(embedder) = embedder {
        summary.vectors_computed = embed_missing(store, embedder, fresh, &progress).await?;
    }
    summary.vectors_ready = started.elapsed();

    if summary.vectors_computed > 0 {
        store.ensure_vector_index().await?;
        store.ensure_id_index().await?;
    }
    let wrote = summary.files_changed + summary.files_removed + touched.len() + from_base.len() + summary.vectors_computed > 0;
    if summary.chunks_written >= OPTIMIZE_AFTER_CHUNKS || (wrote && store.needs_optimize().await?) {
        if options.defer_optimize {
            summary.optimize_due = true;
        } else {
            progress.optimizing();
            store.optimize().await?;
        }
    }
    summary.files_seen = seen.len() + summary.skipped.len();
    summary.skipped.sort();
    let mut languages: Vec<(String, usize)> = languages.into_iter().map(|(l, n)| (l.name().to_owned(), n)).collect();
    languages.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    summary.languages = languages;
    summary.total = started.elapsed();
    Ok(summary)
}

/// Decides, on a walker thread, what a walked file needs (`base`: the hashes of the shared base).
fn classify(item: WalkItem, known: &HashMap<String, StoredFile>, base: Option<&HashMap<String, String>>, max_file_bytes: u64) -> Work {
    let meta = match item {
        WalkItem::Skipped { rel_path, reason } => return Work::Skipped(rel_path, reason),
        WalkItem::File(meta) => meta,
    };
    let previous = known.get(&meta.rel_path);
    let base_hash = base.and_then(|b| b.get(&meta.rel_path));
    // A row without chunks for a file that has content is a file a base held when it was recorded;
    // if the base now holds other content, or there is no base any more (not configured, or it
    // cannot be opened), the file is chunked here after all. (A file whose content yields no chunk
    // is read again on each run: whitespace alone, rare and small.)
    let lacks_chunks = |p: &StoredFile| p.chunks == 0 && p.size > 0 && base_hash != Some(&p.hash);
    // Same size and mtime, read under the same content filters: not read again.
    if let Some(p) = previous
        && p.size == meta.size
        && p.mtime_ns == meta.mtime_ns
        && p.hash.starts_with(&workspace::hash_prefix())
        && !lacks_chunks(p)
    {
        return match base_hash {
            // The base caught up with this file: its chunks here go.
            Some(h) if *h == p.hash && p.chunks > 0 => Work::FromBase { file: StoredFile { chunks: 0, ..p.clone() }, fresh: true },
            Some(h) if *h == p.hash => Work::FromBase { file: p.clone(), fresh: false },
            _ => Work::Unchanged(meta.rel_path),
        };
    }
    let rel_path = meta.rel_path.clone();
    let source = match workspace::read_source(meta, max_file_bytes) {
        Ok(s) => s,
        Err(reason) => return Work::Skipped(rel_path, reason),
    };
    let file = StoredFile {
        path: source.meta.rel_path.clone(),
        hash: source.hash.clone(),
        size: source.meta.size,
        mtime_ns: source.meta.mtime_ns,
        chunks: 0,
    };
    if base_hash == Some(&file.hash) {
        return Work::FromBase { file, fresh: true };
    }
    if let Some(p) = previous
        && p.hash == source.hash
        && !lacks_chunks(p)
    {
        return Work::Touched(StoredFile { chunks: p.chunks, ..file });
    }
    let language = Language::from_path(&file.path);
    // A bug in the chunker must cost one file, not the run (and never the server).
    let chunked = std::panic::catch_unwind(|| chunk::chunk_file(&file.path, language, &source.text));
    match chunked {
        // Read again only to find it still has no chunk (whitespace alone): nothing changes.
        Ok(chunks) if chunks.is_empty() && previous.is_some_and(|p| p.hash == file.hash && p.chunks == 0) => {
            let p = previous.expect("checked above");
            if p.size == file.size && p.mtime_ns == file.mtime_ns { Work::Unchanged(file.path) } else { Work::Touched(file) }
        }
        Ok(chunks) => Work::Changed { file: StoredFile { chunks: chunks.len() as u32, ..file }, chunks, lossy: source.lossy, redactions: source.redactions },
        Err(_) => Work::Skipped(file.path, SkipReason::Unreadable("internal error while chunking".into())),
    }
}

/// Changed files waiting to be written together.
#[derive(Default)]
struct Batch {
    files: Vec<StoredFile>,
    chunks: Vec<Chunk>,
}

impl Batch {
    fn add(&mut self, file: StoredFile, chunks: Vec<Chunk>) {
        self.files.push(file);
        self.chunks.extend(chunks);
    }

    fn is_full(&self) -> bool {
        self.chunks.len() >= WRITE_BATCH_CHUNKS || self.files.len() >= WRITE_BATCH_FILES
    }

    /// Writes the batch, carrying over the vectors of chunks whose text did not change.
    async fn write(
        &mut self,
        store: &Store,
        reuse_vectors: bool,
        known: &HashMap<String, StoredFile>,
        progress: &Arc<dyn Progress>,
        reused: &mut usize,
        fresh: &mut Vec<Chunk>,
    ) -> Result<usize, StoreError> {
        if self.files.is_empty() {
            return Ok(0);
        }
        let previously: Vec<&str> =
            self.files.iter().map(|f| f.path.as_str()).filter(|p| known.contains_key(*p)).collect();
        let mut old_vectors = if reuse_vectors && !previously.is_empty() {
            store.vectors_by_content(&previously).await?
        } else {
            HashMap::new()
        };
        // An edited file of the shared base keeps the base's vectors of the chunks it did not change.
        if let (true, Some(base)) = (reuse_vectors, store.base()) {
            let in_base: Vec<&str> = self.files.iter().map(|f| f.path.as_str()).filter(|p| base.hashes().contains_key(*p)).collect();
            if !in_base.is_empty() {
                for (hash, vector) in base.store().vectors_by_content(&in_base).await? {
                    old_vectors.entry(hash).or_insert(vector);
                }
            }
        }
        store.replace_files(&self.files, &self.chunks).await?;
        let (keep, vectors): (Vec<&Chunk>, Vec<Vec<f32>>) = self
            .chunks
            .iter()
            .filter_map(|c| old_vectors.get(&c.content_hash).map(|v| (c, v.clone())))
            .unzip();
        store.add_vectors(&keep, &vectors).await?;
        *reused += keep.len();
        let written = self.chunks.len();
        progress.chunks_stored(written);
        self.files.clear();
        fresh.extend(self.chunks.drain(..).filter(|c| !old_vectors.contains_key(&c.content_hash)));
        Ok(written)
    }
}

/// Embeds every chunk that has no vector yet; returns how many were embedded.
///
/// Vectors only ever exist for stored chunks, so when the row counts differ by exactly the chunks
/// this run wrote, those are the missing ones. Otherwise an earlier run was interrupted and the
/// chunk table is compared with the vector table.
async fn embed_missing(
    store: &Store,
    embedder: Arc<dyn Embedder>,
    fresh: Vec<Chunk>,
    progress: &Arc<dyn Progress>,
) -> Result<usize, IndexError> {
    let (chunks, vectors) = store.counts().await?;
    let missing = if chunks.checked_sub(vectors) == Some(fresh.len()) {
        fresh
    } else {
        store.chunks_missing_vectors().await?
    };
    progress.embedding_started(missing.len());
    let missing = Arc::new(missing);
    let mut total = 0;
    for start in (0..missing.len()).step_by(EMBED_SLICE) {
        let end = (start + EMBED_SLICE).min(missing.len());
        let vectors = {
            let missing = Arc::clone(&missing);
            let embedder = Arc::clone(&embedder);
            tokio::task::spawn_blocking(move || {
                let texts: Vec<String> = missing[start..end].iter().map(embedding_text).collect();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                embedder.embed(&refs, Purpose::Document)
            })
            .await
            .expect("the embedding thread does not panic")?
        };
        let chunks: Vec<&Chunk> = missing[start..end].iter().collect();
        store.add_vectors(&chunks, &vectors).await?;
        total += chunks.len();
        progress.embedded(chunks.len());
    }
    Ok(total)
}
