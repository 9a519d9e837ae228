//! The index on disk: an embedded Lance database (the `lancedb` crate). The only module that knows Lance.
//!
//! Three tables live in the index directory:
//! - `chunks`: text and metadata of every chunk, with a BM25 full-text index on `text` (code
//!   tokenizer: `parse_expr` is found by `parse`, `expr` and `parse_expr`). Written first, so
//!   keyword search works before any embedding.
//! - `vectors`: one embedding per chunk id (plus path/language for filtering and the content hash
//!   for reuse), filled as embeddings are computed; an IVF-HNSW-SQ index once it is large enough.
//! - `files`: one row per indexed file with its content hash, size and mtime. A file's row is
//!   written only after its chunks, so it marks the file as done: a run killed half-way leaves files
//!   without rows (or with old hashes), and the next run redoes exactly those.
//!
//! `kenning-index.json` beside the tables records the embedding model; vectors from another model are
//! dropped rather than mixed.
//!
//! An index can also sit on a **base**: a read-only snapshot of the team's shared index (see
//! `shared.rs`), opened at fixed table versions. Then this index is the local *overlay*: it holds only
//! the files that differ here (edited, added; a deleted file as a row without chunks), each
//! shadowing the base's rows of its path, and every search reads both.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::{
    Array, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use globset::GlobMatcher;
use lancedb::index::scalar::{BTreeIndexBuilder, FullTextSearchQuery, InvertedIndexParams};
use lancedb::index::vector::IvfHnswSqIndexBuilder;
use lancedb::index::{Index, IndexType};
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::table::OptimizeAction;
use lancedb::{Connection, DistanceType, Table};
use serde::{Deserialize, Serialize};

use crate::chunk::{Chunk, Language};

const CHUNKS: &str = "chunks";
const VECTORS: &str = "vectors";
const FILES: &str = "files";
const META_FILE: &str = "kenning-index.json";
/// Bumped when the table layout changes; an index of another version is rebuilt.
const FORMAT_VERSION: u32 = 1;
/// Below this many vectors a flat scan is fast enough and an IVF index would be poorly trained.
pub const VECTOR_INDEX_MIN_ROWS: usize = 10_000;
/// Small (uncompacted) fragments in one table that make [`Store::needs_optimize`] true.
const OPTIMIZE_SMALL_FRAGMENTS: usize = 16;
/// Paths per `IN (...)` list in one SQL predicate.
const PATHS_PER_PREDICATE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("index at {path}: {source}")]
    Lance { path: PathBuf, source: lancedb::Error },
    #[error("index at {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("index at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

type Result<T> = std::result::Result<T, StoreError>;

/// What the index knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub path: String,
    pub hash: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub chunks: u32,
}

/// Restricts a search to a language and/or a path glob.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub language: Option<Language>,
    pub path_glob: Option<GlobMatcher>,
}

impl Filter {
    fn sql(&self) -> Option<String> {
        self.language.map(|l| format!("language = '{}'", l.name()))
    }

    fn keeps(&self, path: &str) -> bool {
        self.path_glob.as_ref().is_none_or(|g| g.is_match(path))
    }

    /// How many more rows to ask for so that post-filtering on the glob still leaves `k`.
    fn overfetch(&self, k: usize) -> usize {
        if self.path_glob.is_some() { k * 10 } else { k }
    }
}

/// Sizes of the index.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    pub files: usize,
    pub chunks: usize,
    pub vectors: usize,
    pub bytes_on_disk: u64,
    pub has_text_index: bool,
    pub has_vector_index: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Meta {
    format: u32,
    embed_model: String,
    dim: usize,
}

/// An open index.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    dim: usize,
    chunks: Table,
    vectors: Table,
    files: Table,
    /// Set once the full-text index is known to exist (it is never dropped).
    text_indexed: Arc<AtomicBool>,
    /// The shared snapshot this index overlays, if any. Shared by the handle's clones, and
    /// replaced whole when a newer publication is put under the index ([`Store::set_base`]).
    base: Arc<std::sync::RwLock<Option<Arc<Base>>>>,
    /// Kept alive as long as any clone of the handle (a snapshot's [`crate::shared::Lease`]).
    held: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The read-only snapshot under an overlay, and which of its paths the overlay hides.
pub struct Base {
    store: Store,
    /// The content hash of every file the snapshot holds, by path.
    hashes: Arc<HashMap<String, String>>,
    /// Paths whose snapshot rows are hidden: the overlay has a row for them with another hash
    /// (edited here; a deleted file is a row without chunks and with an empty hash).
    shadowed: std::sync::RwLock<Arc<HashSet<String>>>,
}

impl Base {
    /// The snapshot's own index.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The content hash of each file of the snapshot, by path.
    pub fn hashes(&self) -> &Arc<HashMap<String, String>> {
        &self.hashes
    }

    /// The snapshot's paths the overlay hides.
    pub fn shadowed(&self) -> Arc<HashSet<String>> {
        Arc::clone(&self.shadowed.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Shadowed paths up to which a search of the base excludes them in its SQL predicate; above it,
/// the base is asked for more rows and filtered afterwards.
const SHADOWED_IN_PREDICATE: usize = 512;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).field("dim", &self.dim).finish()
    }
}

fn chunks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("language", DataType::Utf8, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("start_line", DataType::UInt32, false),
        Field::new("end_line", DataType::UInt32, false),
        Field::new("start_byte", DataType::UInt64, false),
        Field::new("end_byte", DataType::UInt64, false),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]))
}

fn vectors_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("language", DataType::Utf8, false),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim as i32),
            false,
        ),
    ]))
}

fn files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("hash", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("mtime_ns", DataType::Int64, false),
        Field::new("chunks", DataType::UInt32, false),
    ]))
}

/// Both predicates (either may be absent).
fn and(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("({a}) AND ({b})")),
        (a, b) => a.or(b),
    }
}

/// The predicate leaving out the `hidden` paths, when they are few enough to list.
fn hidden_sql(hidden: Option<&HashSet<String>>) -> Option<String> {
    let hidden = hidden.filter(|h| !h.is_empty() && h.len() <= SHADOWED_IN_PREDICATE)?;
    let list: Vec<String> = hidden.iter().map(|p| quote(p)).collect();
    Some(format!("path NOT IN ({})", list.join(", ")))
}

/// More rows to ask for when the `hidden` paths are filtered out after the query.
fn hidden_overfetch(hidden: Option<&HashSet<String>>, k: usize) -> usize {
    if hidden.is_some_and(|h| h.len() > SHADOWED_IN_PREDICATE) { 2 * k } else { 0 }
}

/// Quotes a string for a SQL predicate.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn in_list<'a>(column: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<String> = values.into_iter().map(quote).collect();
    format!("{column} IN ({})", list.join(", "))
}

impl Store {
    /// Opens the index in `dir`, creating it if needed. Vectors made by another embedding model
    /// (or of another dimension) are dropped; an index of another format version is rebuilt.
    pub async fn open(dir: &Path, embed_model: &str, dim: usize) -> Result<Self> {
        let io = |source| StoreError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let meta_path = dir.join(META_FILE);
        let wanted = Meta { format: FORMAT_VERSION, embed_model: embed_model.to_owned(), dim };
        let existing: Option<Meta> = std::fs::read(&meta_path).ok().and_then(|b| serde_json::from_slice(&b).ok());

        let uri = dir.to_str().ok_or_else(|| StoreError::Invalid {
            path: dir.to_owned(),
            message: "the index path is not valid UTF-8".into(),
        })?;
        let lance = |source| StoreError::Lance { path: dir.to_owned(), source };
        let db = lancedb::connect(uri).execute().await.map_err(lance)?;
        let names = db.table_names().execute().await.map_err(lance)?;

        let rebuild_all = existing.as_ref().is_some_and(|m| m.format != FORMAT_VERSION);
        let rebuild_vectors = rebuild_all || existing.as_ref().is_some_and(|m| *m != wanted);
        for (name, drop) in [(CHUNKS, rebuild_all), (FILES, rebuild_all), (VECTORS, rebuild_vectors)] {
            if drop && names.iter().any(|n| n == name) {
                db.drop_table(name, &[]).await.map_err(lance)?;
            }
        }
        let names = db.table_names().execute().await.map_err(lance)?;
        let chunks = open_or_create(&db, &names, CHUNKS, chunks_schema()).await.map_err(lance)?;
        let vectors = open_or_create(&db, &names, VECTORS, vectors_schema(dim)).await.map_err(lance)?;
        let files = open_or_create(&db, &names, FILES, files_schema()).await.map_err(lance)?;
        if existing.as_ref() != Some(&wanted) {
            let json = serde_json::to_vec_pretty(&wanted).expect("meta serializes");
            std::fs::write(&meta_path, json).map_err(io)?;
        }
        Ok(Self { dir: dir.to_owned(), dim, chunks, vectors, files, text_indexed: Arc::new(AtomicBool::new(false)), base: Default::default(), held: None })
    }

    /// Opens, read-only, the index in `dir` with each table at the version `versions` names (a
    /// snapshot pulled from a shared index: later versions in the directory are not seen). An index
    /// of another embedding model or format is refused, never changed.
    pub async fn open_snapshot(dir: &Path, embed_model: &str, dim: usize, versions: &BTreeMap<String, u64>) -> Result<Self> {
        let invalid = |message: String| StoreError::Invalid { path: dir.to_owned(), message };
        let meta: Meta = std::fs::read(dir.join(META_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid(format!("no readable {META_FILE}: not a kenning index")))?;
        if meta.format != FORMAT_VERSION {
            return Err(invalid(format!("index format {} (this kenning reads {FORMAT_VERSION})", meta.format)));
        }
        if meta.embed_model != embed_model || meta.dim != dim {
            return Err(invalid(format!(
                "built with the embedding model {} ({} dimensions); this kenning embeds with {embed_model} ({dim}): \
                 its vectors cannot be searched together with this machine's",
                meta.embed_model, meta.dim
            )));
        }
        let uri = dir.to_str().ok_or_else(|| invalid("the index path is not valid UTF-8".into()))?;
        let lance = |source| StoreError::Lance { path: dir.to_owned(), source };
        let db = lancedb::connect(uri).execute().await.map_err(lance)?;
        let mut tables = Vec::new();
        for name in [CHUNKS, VECTORS, FILES] {
            let version = *versions.get(name).ok_or_else(|| invalid(format!("no version of the {name} table")))?;
            let table = db.open_table(name).execute().await.map_err(lance)?;
            table.checkout(version).await.map_err(lance)?;
            tables.push(table);
        }
        let [chunks, vectors, files]: [Table; 3] = tables.try_into().map_err(|_| invalid("three tables".into()))?;
        Ok(Self { dir: dir.to_owned(), dim, chunks, vectors, files, text_indexed: Arc::new(AtomicBool::new(false)), base: Default::default(), held: None })
    }

    /// This handle and its clones keep `what` alive (a snapshot keeps its lease on the copy's files).
    pub fn holding(mut self, what: impl std::any::Any + Send + Sync) -> Self {
        self.held = Some(Arc::new(what));
        self
    }

    /// The version of each table as it is now (what a snapshot of this index pins).
    pub async fn versions(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (name, table) in [(CHUNKS, &self.chunks), (VECTORS, &self.vectors), (FILES, &self.files)] {
            out.insert(name.to_owned(), table.version().await.map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// Makes this index the overlay of `base` (a snapshot from [`Store::open_snapshot`]): searches
    /// read both, and the base's rows of every path this index holds with another hash are hidden.
    pub async fn with_base(self, base: Store) -> Result<Self> {
        self.set_base(Some(base)).await?;
        Ok(self)
    }

    /// Puts `base` under this index in place of the one it had (`None`: none), for every clone of
    /// the handle. A search already running finishes on the base it started with. An index run
    /// then brings this index's rows in line with the new base (a file this index took from the
    /// old base is indexed here if the new one holds other content); until it has, such a file is
    /// found in neither.
    pub async fn set_base(&self, base: Option<Store>) -> Result<()> {
        let base = match base {
            Some(store) => {
                let hashes: HashMap<String, String> = store.files().await?.into_values().map(|f| (f.path, f.hash)).collect();
                let base = Base { store, hashes: Arc::new(hashes), shadowed: Default::default() };
                *base.shadowed.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(self.hidden_in(&base.hashes).await?);
                Some(Arc::new(base))
            }
            None => None,
        };
        *self.base.write().unwrap_or_else(|e| e.into_inner()) = base;
        Ok(())
    }

    /// The base under this index (`None` without one).
    pub fn base(&self) -> Option<Arc<Base>> {
        self.base.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Recomputes which of the base's paths this index hides (after a run changed its files).
    pub async fn refresh_overlay(&self) -> Result<()> {
        let Some(base) = self.base() else { return Ok(()) };
        let hidden = self.hidden_in(&base.hashes).await?;
        *base.shadowed.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(hidden);
        Ok(())
    }

    /// The paths of a base holding `hashes` that this index hides: those it records with other
    /// content (edited here; an empty hash: deleted here). That includes a file taken from an
    /// earlier base that the new one holds in another version: what is found is what is on disk,
    /// so it is found again once an index run has indexed it here.
    async fn hidden_in(&self, hashes: &HashMap<String, String>) -> Result<HashSet<String>> {
        Ok(self.files().await?.into_values().filter(|f| hashes.get(&f.path).is_some_and(|h| *h != f.hash)).map(|f| f.path).collect())
    }

    /// Makes this handle see what other handles and processes have committed since it was opened
    /// (tables are not re-read on their own). Called by a writer once it holds the index's lock.
    pub async fn refresh(&self) -> Result<()> {
        let lance = |source| StoreError::Lance { path: self.dir.clone(), source };
        for table in [&self.chunks, &self.vectors, &self.files] {
            table.checkout_latest().await.map_err(lance)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, source: lancedb::Error) -> StoreError {
        StoreError::Lance { path: self.dir.clone(), source }
    }

    /// Runs `query` and reads every batch it returns.
    async fn fetch(&self, query: &impl ExecutableQuery) -> Result<Vec<RecordBatch>> {
        let stream = query.execute().await.map_err(|e| self.err(e))?;
        stream.try_collect().await.map_err(|e| self.err(e))
    }

    /// Column `name` of `batch` as an array of type `T`; a column that is missing or of another
    /// type (a damaged or foreign index) is an error, never a panic.
    fn column<'b, T: Array + 'static>(&self, batch: &'b RecordBatch, name: &str) -> Result<&'b T> {
        batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).ok_or_else(|| StoreError::Invalid {
            path: self.dir.clone(),
            message: format!("column `{name}` is missing or of the wrong type"),
        })
    }

    /// The chunks of `batches` (rows of the chunks table).
    fn read_chunks(&self, batches: &[RecordBatch]) -> Result<Vec<Chunk>> {
        let mut out = Vec::new();
        for b in batches {
            let s = |name: &str| self.column::<StringArray>(b, name);
            let (id, path, language, symbol, hash, text) = (s("id")?, s("path")?, s("language")?, s("symbol")?, s("content_hash")?, s("text")?);
            let (start_line, end_line) = (self.column::<UInt32Array>(b, "start_line")?, self.column::<UInt32Array>(b, "end_line")?);
            let (start_byte, end_byte) = (self.column::<UInt64Array>(b, "start_byte")?, self.column::<UInt64Array>(b, "end_byte")?);
            out.extend((0..b.num_rows()).map(|i| Chunk {
                id: id.value(i).to_owned(),
                path: path.value(i).to_owned(),
                language: Language::from_name(language.value(i)).unwrap_or(Language::Text),
                start_byte: start_byte.value(i) as usize,
                end_byte: end_byte.value(i) as usize,
                start_line: start_line.value(i),
                end_line: end_line.value(i),
                symbol: symbol.value(i).to_owned(),
                text: text.value(i).to_owned(),
                content_hash: hash.value(i).to_owned(),
            }));
        }
        Ok(out)
    }

    /// Each row's `key` column with its vector (`vector`), of `batches`.
    fn read_vectors(&self, batches: &[RecordBatch], key: &str) -> Result<Vec<(String, Vec<f32>)>> {
        let mut out = Vec::new();
        for b in batches {
            let keys = self.column::<StringArray>(b, key)?;
            let vectors = self.column::<FixedSizeListArray>(b, "vector")?;
            for i in 0..b.num_rows() {
                let v = vectors.value(i);
                let v = v.as_any().downcast_ref::<Float32Array>().ok_or_else(|| StoreError::Invalid {
                    path: self.dir.clone(),
                    message: "vectors are not 32-bit floats".into(),
                })?;
                out.push((keys.value(i).to_owned(), v.values().to_vec()));
            }
        }
        Ok(out)
    }

    /// Every file the index holds, by path.
    pub async fn files(&self) -> Result<HashMap<String, StoredFile>> {
        let batches = self.fetch(&self.files.query()).await?;
        let mut out = HashMap::new();
        for b in &batches {
            let path = self.column::<StringArray>(b, "path")?;
            let hash = self.column::<StringArray>(b, "hash")?;
            let size = self.column::<UInt64Array>(b, "size")?;
            let mtime = self.column::<Int64Array>(b, "mtime_ns")?;
            let chunks = self.column::<UInt32Array>(b, "chunks")?;
            for i in 0..b.num_rows() {
                let f = StoredFile {
                    path: path.value(i).to_owned(),
                    hash: hash.value(i).to_owned(),
                    size: size.value(i),
                    mtime_ns: mtime.value(i),
                    chunks: chunks.value(i),
                };
                out.insert(f.path.clone(), f);
            }
        }
        Ok(out)
    }

    /// Paths that have chunks (including leftovers of an interrupted run).
    pub async fn chunk_paths(&self) -> Result<HashSet<String>> {
        let batches = self.fetch(&self.chunks.query().select(Select::columns(&["path"]))).await?;
        let mut out = HashSet::new();
        for b in &batches {
            let path = self.column::<StringArray>(b, "path")?;
            out.extend((0..b.num_rows()).map(|i| path.value(i).to_owned()));
        }
        Ok(out)
    }

    /// Replaces everything stored for `files` with `chunks`, then records the files as done.
    pub async fn replace_files(&self, files: &[StoredFile], chunks: &[Chunk]) -> Result<()> {
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        self.delete_paths(&[&self.chunks, &self.vectors], &paths).await?;
        if !chunks.is_empty() {
            self.chunks.add(chunk_batch(chunks)).execute().await.map_err(|e| self.err(e))?;
        }
        self.delete_paths(&[&self.files], &paths).await?;
        if !files.is_empty() {
            self.files.add(files_batch(files)).execute().await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Records files whose chunks are already stored (content unchanged, new mtime).
    pub async fn record_files(&self, files: &[StoredFile]) -> Result<()> {
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        self.delete_paths(&[&self.files], &paths).await?;
        self.files.add(files_batch(files)).execute().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes every trace of `paths`.
    pub async fn remove_paths(&self, paths: &[&str]) -> Result<()> {
        self.delete_paths(&[&self.chunks, &self.vectors, &self.files], paths).await
    }

    async fn delete_paths(&self, tables: &[&Table], paths: &[&str]) -> Result<()> {
        for group in paths.chunks(PATHS_PER_PREDICATE) {
            let predicate = in_list("path", group.iter().copied());
            for table in tables {
                table.delete(predicate.as_str()).await.map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Embeddings already stored for chunks of `paths`, by content hash (reused when a file
    /// changes but most of its chunks do not).
    pub async fn vectors_by_content(&self, paths: &[&str]) -> Result<HashMap<String, Vec<f32>>> {
        let mut out = HashMap::new();
        for group in paths.chunks(PATHS_PER_PREDICATE) {
            let query = self.vectors.query().only_if(in_list("path", group.iter().copied())).select(Select::columns(&["content_hash", "vector"]));
            out.extend(self.read_vectors(&self.fetch(&query).await?, "content_hash")?);
        }
        Ok(out)
    }

    /// Stores one vector per chunk.
    pub async fn add_vectors(&self, chunks: &[&Chunk], vectors: &[Vec<f32>]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        if let Some(bad) = vectors.iter().find(|v| v.len() != self.dim) {
            return Err(StoreError::Invalid {
                path: self.dir.clone(),
                message: format!("vector of dimension {}, index expects {}", bad.len(), self.dim),
            });
        }
        let batch = vector_batch(chunks, vectors, self.dim);
        self.vectors.add(batch).execute().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Chunks that have no vector yet (new, or left by an interrupted run).
    pub async fn chunks_missing_vectors(&self) -> Result<Vec<Chunk>> {
        let mut have = HashSet::new();
        for b in &self.fetch(&self.vectors.query().select(Select::columns(&["id"]))).await? {
            let id = self.column::<StringArray>(b, "id")?;
            have.extend((0..b.num_rows()).map(|i| id.value(i).to_owned()));
        }
        let chunks = self.read_chunks(&self.fetch(&self.chunks.query()).await?)?;
        Ok(chunks.into_iter().filter(|c| !have.contains(&c.id)).collect())
    }

    /// Builds the full-text index if it does not exist yet (later rows are merged by [`optimize`]
    /// and searched unindexed until then).
    ///
    /// [`optimize`]: Store::optimize
    pub async fn ensure_text_index(&self) -> Result<bool> {
        if self.has_text_index().await? {
            return Ok(false);
        }
        if self.chunks.count_rows(None).await.map_err(|e| self.err(e))? == 0 {
            return Ok(false);
        }
        self.chunks
            .create_index(&["text"], Index::FTS(InvertedIndexParams::code().split_identifiers(true)))
            .replace(true)
            .execute()
            .await
            .map_err(|e| self.err(e))?;
        self.text_indexed.store(true, Ordering::Relaxed);
        Ok(true)
    }

    async fn has_text_index(&self) -> Result<bool> {
        if self.text_indexed.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let has = self.has_index(&self.chunks, IndexType::FTS).await?;
        self.text_indexed.store(has, Ordering::Relaxed);
        Ok(has)
    }

    /// Row counts of the chunk and vector tables (equal when every chunk has its vector).
    pub async fn counts(&self) -> Result<(usize, usize)> {
        let chunks = self.chunks.count_rows(None).await.map_err(|e| self.err(e))?;
        let vectors = self.vectors.count_rows(None).await.map_err(|e| self.err(e))?;
        Ok((chunks, vectors))
    }

    /// Whether enough small appends have piled up in some table to be worth an [`optimize`].
    ///
    /// [`optimize`]: Store::optimize
    pub async fn needs_optimize(&self) -> Result<bool> {
        for table in [&self.chunks, &self.vectors, &self.files] {
            let stats = table.stats().await.map_err(|e| self.err(e))?;
            if stats.fragment_stats.num_small_fragments >= OPTIMIZE_SMALL_FRAGMENTS {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Builds the vector index once there are enough vectors to train it.
    pub async fn ensure_vector_index(&self) -> Result<bool> {
        if self.has_index(&self.vectors, IndexType::IvfHnswSq).await? {
            return Ok(false);
        }
        let rows = self.vectors.count_rows(None).await.map_err(|e| self.err(e))?;
        if rows < VECTOR_INDEX_MIN_ROWS {
            return Ok(false);
        }
        let partitions = ((rows as f64).sqrt() / 4.0).clamp(1.0, 256.0) as u32;
        let builder = IvfHnswSqIndexBuilder::default()
            .distance_type(DistanceType::Cosine)
            .num_partitions(partitions);
        self.vectors
            .create_index(&["vector"], Index::IvfHnswSq(builder))
            .replace(true)
            .execute()
            .await
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Builds a B-tree on `chunks.id` once the table is large enough for a scan to cost more than
    /// the index: vector hits are joined back to their chunks by id.
    pub async fn ensure_id_index(&self) -> Result<bool> {
        if self.has_index(&self.chunks, IndexType::BTree).await? {
            return Ok(false);
        }
        if self.chunks.count_rows(None).await.map_err(|e| self.err(e))? < VECTOR_INDEX_MIN_ROWS {
            return Ok(false);
        }
        self.chunks
            .create_index(&["id"], Index::BTree(BTreeIndexBuilder::default()))
            .replace(true)
            .execute()
            .await
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    async fn has_index(&self, table: &Table, kind: IndexType) -> Result<bool> {
        let indices = table.list_indices().await.map_err(|e| self.err(e))?;
        Ok(indices.iter().any(|i| i.index_type == kind))
    }

    /// Compacts small appends, folds new rows into the indexes and deletes old versions.
    pub async fn optimize(&self) -> Result<()> {
        for table in [&self.chunks, &self.vectors, &self.files] {
            table.optimize(OptimizeAction::All).await.map_err(|e| self.err(e))?;
        }
        self.prune().await
    }

    /// Deletes the files only versions before the current one need (no compaction: the data and
    /// index files of the current version stay as they are).
    pub async fn prune(&self) -> Result<()> {
        for table in [&self.chunks, &self.vectors, &self.files] {
            table
                .optimize(OptimizeAction::Prune {
                    older_than: Some(lancedb::table::optimize::Duration::zero()),
                    delete_unverified: Some(true),
                    error_if_tagged_old_versions: Some(false),
                })
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// BM25 search over chunk text (this index's and its base's, best first). Empty if there is no
    /// text index yet.
    ///
    /// The two indexes' scores are merged as they are: each has its own term statistics, so a word
    /// rare in a small overlay scores higher there than in the base (the files edited here come
    /// first among equals, which is where the user works).
    pub async fn search_text(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<(Chunk, f32)>> {
        let mut out = self.search_text_here(query, k, filter, None).await?;
        if let Some(base) = self.base() {
            let shadowed = base.shadowed();
            out.extend(base.store.search_text_here(query, k, filter, Some(&*shadowed)).await?);
            out.sort_by(|a, b| b.1.total_cmp(&a.1));
            out.truncate(k);
        }
        Ok(out)
    }

    /// [`Store::search_text`] in this index alone, leaving out the paths `hidden` names.
    async fn search_text_here(&self, query: &str, k: usize, filter: &Filter, hidden: Option<&HashSet<String>>) -> Result<Vec<(Chunk, f32)>> {
        if query.trim().is_empty() || !self.has_text_index().await? {
            return Ok(Vec::new());
        }
        let mut q = self
            .chunks
            .query()
            .full_text_search(FullTextSearchQuery::new(query.to_owned()))
            .limit(filter.overfetch(k) + hidden_overfetch(hidden, k));
        if let Some(sql) = and(filter.sql(), hidden_sql(hidden)) {
            q = q.only_if(sql);
        }
        let batches = self.fetch(&q).await?;
        let mut out = Vec::new();
        for b in &batches {
            let scores = self.column::<Float32Array>(b, "_score").ok();
            for (i, chunk) in self.read_chunks(std::slice::from_ref(b))?.into_iter().enumerate() {
                if filter.keeps(&chunk.path) && hidden.is_none_or(|h| !h.contains(&chunk.path)) {
                    out.push((chunk, scores.as_ref().map_or(0.0, |s| s.value(i))));
                }
            }
        }
        out.truncate(k);
        Ok(out)
    }

    /// Chunks whose symbol path ends with a definition named `name` (`fn name`, `class name`,
    /// `Type::name`, `Type.name`), at most `k`, in storage order. A filtered scan of the symbol
    /// column, which finds a definition however common its name is in other chunks' text (a
    /// keyword search ranks those first). `name` must be an identifier (else nothing is found).
    /// With a base: this index's first, then the base's.
    pub async fn definitions_named(&self, name: &str, k: usize) -> Result<Vec<Chunk>> {
        let mut out = self.definitions_named_here(name, k, None).await?;
        if let Some(base) = self.base()
            && out.len() < k
        {
            let shadowed = base.shadowed();
            out.extend(base.store.definitions_named_here(name, k - out.len(), Some(&*shadowed)).await?);
        }
        Ok(out)
    }

    async fn definitions_named_here(&self, name: &str, k: usize, hidden: Option<&HashSet<String>>) -> Result<Vec<Chunk>> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            return Ok(Vec::new());
        }
        let sql = format!("(symbol LIKE '% {name}' OR symbol LIKE '%::{name}' OR symbol LIKE '%.{name}' OR symbol = '{name}')");
        let sql = and(Some(sql), hidden_sql(hidden)).unwrap_or_default();
        let q = self.chunks.query().only_if(sql).limit(k + hidden_overfetch(hidden, k));
        let mut found = self.read_chunks(&self.fetch(&q).await?)?;
        found.retain(|c| hidden.is_none_or(|h| !h.contains(&c.path)));
        found.truncate(k);
        Ok(found)
    }

    /// Nearest chunks to `vector` by cosine similarity (1 = identical direction), in this index and
    /// its base.
    pub async fn search_vector(&self, vector: &[f32], k: usize, filter: &Filter) -> Result<Vec<(Chunk, f32)>> {
        let mut out = self.search_vector_here(vector, k, filter, None).await?;
        if let Some(base) = self.base() {
            let shadowed = base.shadowed();
            out.extend(base.store.search_vector_here(vector, k, filter, Some(&*shadowed)).await?);
            out.sort_by(|a, b| b.1.total_cmp(&a.1));
            out.truncate(k);
        }
        Ok(out)
    }

    async fn search_vector_here(&self, vector: &[f32], k: usize, filter: &Filter, hidden: Option<&HashSet<String>>) -> Result<Vec<(Chunk, f32)>> {
        let mut q = self
            .vectors
            .query()
            .nearest_to(vector)
            .map_err(|e| self.err(e))?
            .distance_type(DistanceType::Cosine)
            .select(Select::columns(&["id", "path"]))
            .limit(filter.overfetch(k) + hidden_overfetch(hidden, k));
        if let Some(sql) = and(filter.sql(), hidden_sql(hidden)) {
            q = q.only_if(sql);
        }
        let batches = self.fetch(&q).await?;
        let mut ranked: Vec<(String, f32)> = Vec::new();
        for b in &batches {
            let ids = self.column::<StringArray>(b, "id")?;
            let paths = self.column::<StringArray>(b, "path")?;
            let dist = self.column::<Float32Array>(b, "_distance")?;
            for i in 0..b.num_rows() {
                if filter.keeps(paths.value(i)) && hidden.is_none_or(|h| !h.contains(paths.value(i))) {
                    ranked.push((ids.value(i).to_owned(), 1.0 - dist.value(i)));
                }
            }
        }
        ranked.truncate(k);
        let mut by_id = self.chunks_by_id(ranked.iter().map(|(id, _)| id.as_str())).await?;
        Ok(ranked.into_iter().filter_map(|(id, score)| by_id.remove(&id).map(|c| (c, score))).collect())
    }

    async fn chunks_by_id<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<HashMap<String, Chunk>> {
        let ids: Vec<&str> = ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let chunks = self.read_chunks(&self.fetch(&self.chunks.query().only_if(in_list("id", ids))).await?)?;
        Ok(chunks.into_iter().map(|c| (c.id.clone(), c)).collect())
    }

    /// Every stored vector with its chunk id (for the brute-force baseline of the benchmark).
    pub async fn all_vectors(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.read_vectors(&self.fetch(&self.vectors.query().select(Select::columns(&["id", "vector"]))).await?, "id")
    }

    /// Reads every table through and checks that they agree; returns what is wrong, in words
    /// (empty: healthy). Catches truncated or missing data files, missing indexes (searches that
    /// fail), and more vectors than chunks.
    pub async fn verify(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut scanned = [0usize; 3];
        for (i, (name, table, column)) in [("chunks", &self.chunks, "path"), ("vectors", &self.vectors, "id"), ("files", &self.files, "path")].into_iter().enumerate() {
            let counted = match table.count_rows(None).await {
                Ok(n) => n,
                Err(e) => {
                    problems.push(format!("the {name} table cannot be read: {e}"));
                    continue;
                }
            };
            match self.fetch(&table.query().select(Select::columns(&[column]))).await {
                Ok(batches) => scanned[i] = batches.iter().map(RecordBatch::num_rows).sum(),
                Err(e) => problems.push(format!("the {name} table's data cannot be read: {e}")),
            }
            if problems.is_empty() && scanned[i] != counted {
                problems.push(format!("the {name} table says {counted} rows but holds {}", scanned[i]));
            }
        }
        if !problems.is_empty() {
            return problems;
        }
        // (Chunks without a files row are normal after an interrupted run: the next run completes
        // them. Vectors without chunks are not: vectors are only written for stored chunks.)
        if scanned[1] > scanned[0] {
            problems.push(format!("{} vectors for {} chunks", scanned[1], scanned[0]));
        }
        if let Err(e) = self.search_text("fn", 1, &Filter::default()).await {
            problems.push(format!("keyword search fails: {e}"));
        }
        if scanned[1] > 0
            && let Err(e) = self.search_vector(&vec![0.5; self.dim], 1, &Filter::default()).await
        {
            problems.push(format!("vector search fails: {e}"));
        }
        problems
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        let (chunks, vectors) = self.counts().await?;
        Ok(StoreStats {
            files: self.files.count_rows(None).await.map_err(|e| self.err(e))?,
            chunks,
            vectors,
            bytes_on_disk: dir_size(&self.dir),
            has_text_index: self.has_text_index().await?,
            has_vector_index: self.has_index(&self.vectors, IndexType::IvfHnswSq).await?,
        })
    }
}

async fn open_or_create(db: &Connection, names: &[String], name: &str, schema: SchemaRef) -> lancedb::Result<Table> {
    if names.iter().any(|n| n == name) {
        return db.open_table(name).execute().await;
    }
    match db.create_empty_table(name, schema).execute().await {
        Ok(table) => Ok(table),
        // Another process created it meanwhile (two first runs at once): use theirs.
        Err(created) => db.open_table(name).execute().await.map_err(|_| created),
    }
}

fn chunk_batch(chunks: &[Chunk]) -> RecordBatch {
    let strings = |f: fn(&Chunk) -> &str| Arc::new(StringArray::from_iter_values(chunks.iter().map(f))) as Arc<dyn Array>;
    RecordBatch::try_new(
        chunks_schema(),
        vec![
            strings(|c| &c.id),
            strings(|c| &c.path),
            strings(|c| c.language.name()),
            strings(|c| &c.symbol),
            Arc::new(UInt32Array::from_iter_values(chunks.iter().map(|c| c.start_line))),
            Arc::new(UInt32Array::from_iter_values(chunks.iter().map(|c| c.end_line))),
            Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.start_byte as u64))),
            Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.end_byte as u64))),
            strings(|c| &c.content_hash),
            strings(|c| &c.text),
        ],
    )
    .expect("chunk columns match the schema")
}

fn files_batch(files: &[StoredFile]) -> RecordBatch {
    RecordBatch::try_new(
        files_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.path.as_str()))),
            Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.hash.as_str()))),
            Arc::new(UInt64Array::from_iter_values(files.iter().map(|f| f.size))),
            Arc::new(Int64Array::from_iter_values(files.iter().map(|f| f.mtime_ns))),
            Arc::new(UInt32Array::from_iter_values(files.iter().map(|f| f.chunks))),
        ],
    )
    .expect("file columns match the schema")
}

fn vector_batch(chunks: &[&Chunk], vectors: &[Vec<f32>], dim: usize) -> RecordBatch {
    let flat: Float32Array = vectors.iter().flatten().copied().collect();
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let list = FixedSizeListArray::try_new(item, dim as i32, Arc::new(flat), None).expect("vectors have the index dimension");
    let strings = |f: fn(&Chunk) -> &str| Arc::new(StringArray::from_iter_values(chunks.iter().map(|c| f(c)))) as Arc<dyn Array>;
    RecordBatch::try_new(
        vectors_schema(dim),
        vec![strings(|c| &c.id), strings(|c| &c.path), strings(|c| c.language.name()), strings(|c| &c.content_hash), Arc::new(list)],
    )
    .expect("vector columns match the schema")
}

/// Total size of the files below `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_file;

    const DIM: usize = 4;

    fn chunks(path: &str, text: &str) -> Vec<Chunk> {
        chunk_file(path, Language::from_path(path), text)
    }

    fn file(path: &str, hash: &str, chunks: &[Chunk]) -> StoredFile {
        StoredFile { path: path.into(), hash: hash.into(), size: 1, mtime_ns: 2, chunks: chunks.len() as u32 }
    }

    /// A deterministic unit vector per text: enough to test storage and ranking, not semantics.
    fn vector_of(text: &str) -> Vec<f32> {
        let h = blake3::hash(text.as_bytes());
        crate::embed::normalized(h.as_bytes()[..DIM].iter().map(|&b| b as f32 + 1.0).collect())
    }

    async fn add_with_vectors(store: &Store, path: &str, text: &str) -> Vec<Chunk> {
        let cs = chunks(path, text);
        store.replace_files(&[file(path, text, &cs)], &cs).await.unwrap();
        let refs: Vec<&Chunk> = cs.iter().collect();
        let vs: Vec<Vec<f32>> = cs.iter().map(|c| vector_of(&c.text)).collect();
        store.add_vectors(&refs, &vs).await.unwrap();
        cs
    }

    #[tokio::test]
    async fn a_column_missing_or_of_another_type_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test-model", DIM).await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("path", DataType::UInt32, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(UInt32Array::from(vec![7u32])) as Arc<dyn Array>]).unwrap();
        assert!(matches!(store.column::<StringArray>(&batch, "path"), Err(StoreError::Invalid { .. })));
        assert!(matches!(store.column::<StringArray>(&batch, "hash"), Err(StoreError::Invalid { .. })));
        assert_eq!(store.column::<UInt32Array>(&batch, "path").unwrap().value(0), 7);
        let error = store.read_chunks(&[batch]).unwrap_err().to_string();
        assert!(error.contains("column `id`"), "{error}");
    }

    #[tokio::test]
    async fn insert_search_replace_delete_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test-model", DIM).await.unwrap();
        let parser = add_with_vectors(&store, "src/parser.rs", "fn parse_expression(tokens: &[Token]) -> Expr {\n    todo!()\n}\n").await;
        add_with_vectors(&store, "src/lexer.rs", "fn tokenize(input: &str) -> Vec<Token> {\n    Vec::new()\n}\n").await;
        add_with_vectors(&store, "web/app.py", "def render_page(request):\n    return template.render(request)\n").await;

        // Keyword search needs the text index, and finds identifiers split by the code tokenizer.
        assert!(store.search_text("parse", 5, &Filter::default()).await.unwrap().is_empty());
        assert!(store.ensure_text_index().await.unwrap());
        let hits = store.search_text("expression", 5, &Filter::default()).await.unwrap();
        assert_eq!(hits.first().map(|(c, _)| c.path.as_str()), Some("src/parser.rs"), "{hits:?}");
        assert_eq!(hits[0].0, parser[0]);

        // Definitions by name, from the symbol column (a name is an identifier or nothing is found).
        let named = store.definitions_named("parse_expression", 5).await.unwrap();
        assert_eq!(named.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(), ["src/parser.rs"]);
        assert!(store.definitions_named("parse", 5).await.unwrap().is_empty(), "a whole name, not a part");
        assert!(store.definitions_named("x' OR '1'='1", 5).await.unwrap().is_empty());

        // Filters: language in SQL, path glob afterwards.
        let rust_only = Filter { language: Some(Language::Rust), path_glob: None };
        let hits = store.search_text("render page tokenize", 5, &rust_only).await.unwrap();
        assert!(hits.iter().all(|(c, _)| c.language == Language::Rust) && !hits.is_empty());
        let web_only = Filter { language: None, path_glob: Some(globset::Glob::new("web/**").unwrap().compile_matcher()) };
        let hits = store.search_text("render page tokenize", 5, &web_only).await.unwrap();
        assert_eq!(hits.iter().map(|(c, _)| c.path.as_str()).collect::<Vec<_>>(), ["web/app.py"]);

        // Vector search returns the exact chunk for its own vector, with similarity ~1.
        let hits = store.search_vector(&vector_of(&parser[0].text), 3, &Filter::default()).await.unwrap();
        assert_eq!(hits[0].0.id, parser[0].id);
        assert!((hits[0].1 - 1.0).abs() < 1e-4, "{}", hits[0].1);

        // Replacing a file drops its old chunks and vectors.
        let new = chunks("src/parser.rs", "fn parse_statement() {}\n");
        store.replace_files(&[file("src/parser.rs", "v2", &new)], &new).await.unwrap();
        let missing = store.chunks_missing_vectors().await.unwrap();
        assert_eq!(missing, new);
        assert!(store.search_text("expression", 5, &Filter::default()).await.unwrap().is_empty());
        assert_eq!(store.files().await.unwrap()["src/parser.rs"].hash, "v2");

        // Deleting a path removes every trace.
        store.remove_paths(&["web/app.py"]).await.unwrap();
        assert!(!store.files().await.unwrap().contains_key("web/app.py"));
        assert!(!store.chunk_paths().await.unwrap().contains("web/app.py"));

        store.optimize().await.unwrap();
        drop(store);
        let store = Store::open(dir.path(), "test-model", DIM).await.unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.files, stats.chunks, stats.vectors), (2, 2, 1));
        assert!(stats.has_text_index);
        let hits = store.search_text("statement", 5, &Filter::default()).await.unwrap();
        assert_eq!(hits.len(), 1);
    }

    #[tokio::test]
    async fn another_embedding_model_drops_vectors_but_keeps_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "model-a", DIM).await.unwrap();
        add_with_vectors(&store, "a.rs", "fn a() {}\n").await;
        drop(store);
        let store = Store::open(dir.path(), "model-b", 8).await.unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.chunks, stats.vectors), (1, 0));
        assert_eq!(store.chunks_missing_vectors().await.unwrap().len(), 1);
        let err = store.add_vectors(&[&chunks("a.rs", "fn a() {}\n")[0]], &[vec![0.0; DIM]]).await.unwrap_err();
        assert!(err.to_string().contains("dimension 4, index expects 8"), "{err}");
    }

    #[tokio::test]
    async fn quotes_in_paths_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "m", DIM).await.unwrap();
        add_with_vectors(&store, "it's/o'clock.rs", "fn quoted() {}\n").await;
        assert_eq!(store.vectors_by_content(&["it's/o'clock.rs"]).await.unwrap().len(), 1);
        store.remove_paths(&["it's/o'clock.rs"]).await.unwrap();
        assert_eq!(store.stats().await.unwrap().chunks, 0);
    }
}
