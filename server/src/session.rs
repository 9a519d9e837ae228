//! Opening a workspace, the same way for both front-ends (the CLI and the language server): its
//! name, its index, the embedding model and the generation model. Each is loaded by one function
//! here; the front-ends decide when (the server lazily, once per folder or configuration) and how
//! to report a failure.

use std::path::Path;
use std::sync::Arc;

use crate::assets::Assets;
use crate::config;
use crate::embed::{EmbedError, Embedder, FastEmbedder};
use crate::generate::{self, GenerateError, Generator};
use crate::index::{self, IndexError, WriterLock};
use crate::paths::Paths;
use crate::store::{Store, StoreError};

/// The workspace's name, as prompts show it (`<repo_name>`): its folder's name.
pub fn workspace_name(root: &Path) -> String {
    root.file_name().map_or_else(|| "workspace".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Opens (or creates) the index at `dir`, for the embedding model kenning bundles.
pub async fn open_index(dir: &Path) -> Result<Store, StoreError> {
    Store::open(dir, FastEmbedder::MODEL_ID, FastEmbedder::DIM).await
}

/// Opens the index at `dir` for a full indexing run, rebuilt from scratch when it is damaged or
/// `rebuild` is asked: returns why it was rebuilt (empty: it was kept as it is). Judged under the
/// writer lock (`waiting` hears who holds it), so that another process creating or writing the
/// index is not taken for damage. The lock is released before returning.
pub async fn open_index_repaired(dir: &Path, rebuild: bool, waiting: impl FnOnce(&str)) -> Result<(Store, Vec<String>), IndexError> {
    let problems = {
        let _lock = WriterLock::acquire(dir, waiting).await?;
        let problems = match open_index(dir).await {
            Ok(_) if rebuild => vec!["--rebuild was given".to_owned()],
            Ok(store) => store.verify().await,
            Err(e) => vec![e.to_string()],
        };
        if !problems.is_empty() {
            index::clear(dir)?;
        }
        problems
    };
    Ok((open_index(dir).await?, problems))
}

/// The team's shared index under a workspace's own (`[index] shared`), as this process found it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedState {
    pub uri: String,
    /// The commit the shared index was built from.
    pub commit: Option<String>,
    pub published: String,
    pub files: usize,
    pub bytes: u64,
    /// Bytes this process downloaded to bring its copy up to date.
    pub pulled: u64,
    /// Why the copy in the cache serves rather than the store's current version (`None`: current).
    pub offline: Option<String>,
    /// The publication itself (what a later check compares the store's current one with).
    #[serde(skip)]
    pub snapshot: Arc<crate::shared::Snapshot>,
}

/// Opening the shared index failed: the store's error, or its copy cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SharedOpenError {
    #[error(transparent)]
    Shared(#[from] crate::shared::SharedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Brings the local copy of the shared index at `uri` up to date (the current publication; when
/// the store cannot be read, the copy pulled last serves and the state says why) and opens it.
pub async fn open_shared(paths: &Paths, uri: &str) -> Result<(Store, SharedState), SharedOpenError> {
    Ok(open_shared_newer(paths, uri, None).await?.expect("without a publication in use, one is opened or an error returned"))
}

/// [`open_shared`] for a process that already uses the publication `have`: `None` when it is still
/// the store's current one (nothing is pulled or opened). With `have`, a store out of reach is an
/// error (the base in use keeps serving); without, the copy pulled last serves.
pub async fn open_shared_newer(paths: &Paths, uri: &str, have: Option<&crate::shared::Snapshot>) -> Result<Option<(Store, SharedState)>, SharedOpenError> {
    use crate::shared::{self, Remote, SharedError};
    let copy = shared::cache_dir(paths.cache(), uri);
    let remote = Remote::open(uri)?;
    let current = async {
        let snapshot = remote.snapshot().await?.ok_or_else(|| SharedError::NothingPublished { uri: uri.to_owned() })?;
        if have == Some(&snapshot) {
            return Ok(None);
        }
        if snapshot.embed_model != FastEmbedder::MODEL_ID || snapshot.dim != FastEmbedder::DIM {
            return Err(SharedError::Invalid {
                uri: uri.to_owned(),
                message: format!(
                    "built with the embedding model {} ({} dimensions); this kenning embeds with {} ({}): its vectors cannot be searched with this machine's",
                    snapshot.embed_model,
                    snapshot.dim,
                    FastEmbedder::MODEL_ID,
                    FastEmbedder::DIM
                ),
            });
        }
        let (pulled, lease) = remote.pull(&snapshot, &copy).await?;
        Ok(Some((snapshot, pulled, lease)))
    };
    let (snapshot, pulled, offline, lease) = match current.await {
        Ok(Some((snapshot, pulled, lease))) => (snapshot, pulled, None, Some(lease)),
        Ok(None) => return Ok(None),
        // The copy pulled last serves while the store is out of reach (a model mismatch or an
        // empty store is a configuration to fix, not an outage).
        Err(e @ (SharedError::Unreachable { .. } | SharedError::Io { .. })) if have.is_none() => match shared::lease_local(&copy).await {
            Ok(Some((snapshot, lease))) => (snapshot, 0, Some(e.to_string()), Some(lease)),
            Ok(None) => return Err(e.into()),
            // A copy that cannot be claimed (a read-only cache) still serves, unclaimed.
            Err(claim) => match shared::local_snapshot(&copy) {
                Some(snapshot) => {
                    tracing::warn!("the shared index's copy serves without a claim on its files: {claim}");
                    (snapshot, 0, Some(e.to_string()), None)
                }
                None => return Err(e.into()),
            },
        },
        Err(e) => return Err(e.into()),
    };
    // The lease lives as long as the snapshot's store (searches hold it through the overlay's
    // base): other processes' pulls keep these files meanwhile.
    let store = Store::open_snapshot(&copy, FastEmbedder::MODEL_ID, FastEmbedder::DIM, &snapshot.versions).await?.holding(lease);
    let state = SharedState {
        uri: uri.to_owned(),
        commit: snapshot.commit.clone(),
        published: snapshot.published_text(),
        files: snapshot.indexed_files,
        bytes: snapshot.bytes(),
        pulled,
        offline,
        snapshot: Arc::new(snapshot),
    };
    Ok(Some((store, state)))
}

/// Opens the workspace's index at `dir`: over the shared index at `shared` when one is configured
/// (this index then holds only what differs here). A shared index that cannot be opened is
/// returned as the error beside a plain local index, which then indexes everything.
pub async fn open_workspace_index(paths: &Paths, dir: &Path, shared: Option<&str>) -> Result<(Store, Option<Result<SharedState, SharedOpenError>>), StoreError> {
    let local = open_index(dir).await?;
    let Some(uri) = shared else { return Ok((local, None)) };
    match open_shared(paths, uri).await {
        Ok((base, state)) => Ok((local.with_base(base).await?, Some(Ok(state)))),
        Err(e) => Ok((local, Some(Err(e)))),
    }
}

/// Loads the embedding model from the installed assets (`threads` 0: all cores).
pub fn load_embedder(paths: &Paths, threads: usize) -> Result<Arc<dyn Embedder>, EmbedError> {
    Ok(Arc::new(FastEmbedder::load(&Assets::new(paths.assets()), threads)?))
}

/// Loads the configured generation model (`None`: generation is off), off the async runtime.
pub async fn load_generator(generation: &config::Generation, paths: &Paths) -> Result<Option<Arc<dyn Generator>>, GenerateError> {
    load_generator_reporting(generation, paths, None, Arc::default()).await
}

/// [`load_generator`]; a hub model's download is logged, and its progress (bytes so far, of) also
/// sent to `downloads` at each whole percent. Setting `stop` stops a download (the bytes so far
/// are kept for the next try).
pub async fn load_generator_reporting(
    generation: &config::Generation,
    paths: &Paths,
    downloads: Option<tokio::sync::mpsc::UnboundedSender<(u64, Option<u64>)>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Option<Arc<dyn Generator>>, GenerateError> {
    let (generation, paths) = (generation.clone(), paths.clone());
    tokio::task::spawn_blocking(move || {
        let name = generation.model().unwrap_or_default().to_owned();
        let mut log = crate::models::log_progress(&name);
        let mut last_percent: Option<Option<u64>> = None;
        let mut report = |have: u64, total: Option<u64>| {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            log(have, total);
            // Each whole percent, or each MB when the size is not known.
            let percent = Some(total.filter(|t| *t > 0).map_or(have >> 20, |t| have * 100 / t));
            if let Some(tx) = &downloads
                && last_percent != Some(percent)
            {
                last_percent = Some(percent);
                let _ = tx.send((have, total));
            }
            true
        };
        generate::from_config_reporting(&generation, &paths, &mut report)
    })
    .await
    .map_err(|e| GenerateError::Task(format!("loading the model: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_is_named_by_its_folder() {
        assert_eq!(workspace_name(Path::new("/home/me/shop")), "shop");
        assert_eq!(workspace_name(Path::new("/")), "workspace");
    }
}
