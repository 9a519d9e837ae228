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
