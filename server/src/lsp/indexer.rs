//! Keeping each workspace folder's index current, in the background: a full (incremental) run on
//! `initialized`, reported with work-done progress; a re-run on save and on watched-file changes,
//! coalesced (a change during a run marks the folder dirty and the run repeats); compaction when
//! idle, never on the request path.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tracing::Instrument;
use tower_lsp_server::ls_types::*;

use super::state::{self, Root, State};
use crate::session;
use crate::config::FILE_NAME;
use crate::index::{self, IndexError, IndexOptions, Progress};
use crate::store::{Store, StoreError};
use crate::workspace::WalkOptions;

/// Quiet time after a re-index before compaction runs.
const IDLE_OPTIMIZE_AFTER: Duration = Duration::from_secs(5);
/// The longest the shared-index watcher sleeps between looks at the configuration.
const WATCH_SHARED_TICK: Duration = Duration::from_secs(30);
/// How often `kenning.toml` is looked at for changes the client did not report.
const CONFIG_POLL: Duration = Duration::from_secs(2);
/// At most one progress report per this interval.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Why an index run did not finish. Its text is what `kenning.status` reports and the user is shown.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    #[error("cannot open the index of {}: {error}", path.display())]
    Open { path: PathBuf, error: Box<StoreError> },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("internal error: {0}")]
    Panicked(String),
    #[error("the index run was cancelled: {0}")]
    Cancelled(String),
}

/// Opens (once) the folder's index.
pub(super) async fn store(state: &State, root: &Root) -> Result<Arc<Store>, RunError> {
    root.store
        .get_or_try_init(|| async {
            let dir = state.paths.index_for(&root.path);
            let shared = state.config().index.shared;
            let (store, shared) = session::open_workspace_index(&state.paths, &dir, shared.as_deref())
                .await
                .map_err(|error| RunError::Open { path: root.path.clone(), error: Box::new(error) })?;
            match &shared {
                Some(Ok(s)) => tracing::info!(
                    "{}: over the shared index {} ({} files, published {}, {:.1} MB pulled){}",
                    root.path.display(),
                    s.uri,
                    s.files,
                    s.published,
                    s.pulled as f64 / 1e6,
                    s.offline.as_deref().map_or_else(String::new, |why| format!("; its cached copy serves: {why}"))
                ),
                Some(Err(e)) => {
                    tracing::warn!("the shared index is not used: {e}");
                    state
                        .client
                        .show_message(MessageType::WARNING, format!("kenning: the shared index is not used (every file is indexed here): {e}"))
                        .await;
                }
                None => {}
            }
            *root.shared.lock().expect("shared lock") = shared.map(|r| r.map_err(|e| e.to_string()));
            if let Some(uri) = state.config().index.shared {
                *root.shared_checked.lock().expect("shared lock") = Some((uri, std::time::Instant::now()));
            }
            // An index completed by an earlier session (or a complete shared one) is searchable by
            // vector at once.
            let base_embedded = match store.base() {
                Some(base) => fully_embedded(base.store()).await,
                None => false,
            };
            if base_embedded || fully_embedded(&store).await {
                root.embedded.store(true, Ordering::Relaxed);
            }
            Ok(Arc::new(store))
        })
        .await
        .cloned()
}

/// Keeps the shared index under the folder's current, when a check is due (at most every
/// `[index] shared_check_secs` per folder, or at once when the configured store changed): asks the
/// store for its publication, and when it is not the one in use, pulls it and puts it under the
/// index; a store that could not be used at start is tried again. Without a shared index
/// configured any more, the base goes (the next run indexes here what it held). Returns whether
/// the base changed (an index run then brings the overlay in line with it).
pub(super) async fn refresh_shared(state: &State, root: &Root, store: &Store) -> bool {
    let config = state.config().index;
    let Some(uri) = config.shared else {
        if store.base().is_none() {
            // A shared index that never opened is not reported once it is configured away.
            *root.shared.lock().expect("shared lock") = None;
            *root.shared_checked.lock().expect("shared lock") = None;
            return false;
        }
        if let Err(e) = store.set_base(None).await {
            tracing::warn!("cannot take the shared index from under {}: {e}", root.path.display());
            return false;
        }
        tracing::info!("{}: no shared index configured any more: every file is indexed here", root.path.display());
        // Semantic search is complete again once the run has embedded what the base held.
        root.embedded.store(false, Ordering::Relaxed);
        *root.shared.lock().expect("shared lock") = None;
        *root.shared_checked.lock().expect("shared lock") = None;
        return true;
    };
    {
        let mut checked = root.shared_checked.lock().expect("shared lock");
        let due = checked.as_ref().is_none_or(|(u, at)| *u != uri || at.elapsed() >= Duration::from_secs(config.shared_check_secs));
        if !due {
            return false;
        }
        *checked = Some((uri.clone(), std::time::Instant::now()));
    }
    let have = match &*root.shared.lock().expect("shared lock") {
        Some(Ok(s)) if s.uri == uri && store.base().is_some() => Some(Arc::clone(&s.snapshot)),
        _ => None,
    };
    match session::open_shared_newer(&state.paths, &uri, have.as_deref()).await {
        Ok(None) => {
            // Still the current publication; the store answers again if it was out of reach.
            if let Some(Ok(s)) = root.shared.lock().expect("shared lock").as_mut() {
                s.offline = None;
            }
            false
        }
        Ok(Some((base, shared))) => {
            if let Err(e) = store.set_base(Some(base)).await {
                tracing::warn!("the newer shared index {uri} cannot be put under {}: {e}", root.path.display());
                return false;
            }
            tracing::info!(
                "{}: now over the shared index {uri} published {} ({} files, {:.1} MB pulled){}",
                root.path.display(),
                shared.published,
                shared.files,
                shared.pulled as f64 / 1e6,
                shared.offline.as_deref().map_or_else(String::new, |why| format!("; its cached copy serves: {why}"))
            );
            if let Some(base) = store.base()
                && fully_embedded(base.store()).await
            {
                root.embedded.store(true, Ordering::Relaxed);
            }
            *root.shared.lock().expect("shared lock") = Some(Ok(shared));
            true
        }
        Err(e) => {
            tracing::debug!("the shared index {uri} was not refreshed: {e}");
            if let Some(Ok(s)) = root.shared.lock().expect("shared lock").as_mut()
                && have.is_some()
            {
                // The publication in use keeps serving; the status says the store is out of reach.
                s.offline = Some(e.to_string());
                return false;
            }
            *root.shared.lock().expect("shared lock") = Some(Err(e.to_string()));
            // Another store is configured now and cannot be used: the one before goes too.
            if store.base().is_some() {
                if let Err(e) = store.set_base(None).await {
                    tracing::warn!("cannot take the shared index from under {}: {e}", root.path.display());
                    return false;
                }
                root.embedded.store(false, Ordering::Relaxed);
                return true;
            }
            false
        }
    }
}

/// Asks, every `[index] shared_check_secs`, whether the folder's shared index has a newer
/// publication, and re-indexes over it when it has. Ends with the server or the folder.
pub(super) async fn watch_shared(state: Arc<State>, root: Arc<Root>) {
    loop {
        // Woken at least every WATCH_SHARED_TICK, so that a shorter interval, another store or none
        // configured meanwhile is seen soon; the check itself runs when it is due.
        let every = Duration::from_secs(state.config().index.shared_check_secs);
        tokio::time::sleep(every.min(WATCH_SHARED_TICK)).await;
        if state.shutting_down.load(Ordering::Relaxed) || !state.roots().iter().any(|r| Arc::ptr_eq(r, &root)) {
            return;
        }
        let Some(store) = root.store.get().cloned() else { continue };
        // Not beside an index run: the base it classifies against stays the one it started with.
        // A change that came meanwhile (its run found the lock taken and marked the folder
        // dirty) is indexed after.
        let changed = {
            let _running = root.indexing.lock().await;
            refresh_shared(&state, &root, &store).await
        };
        if changed || root.dirty.load(Ordering::Relaxed) {
            run(Arc::clone(&state), Arc::clone(&root), false).await;
        }
    }
}

/// A file's modification time and size (`None`: no file there).
pub(super) type Stamp = Option<(Option<std::time::SystemTime>, u64)>;

pub(super) fn stamp(path: &std::path::Path) -> Stamp {
    std::fs::metadata(path).ok().filter(std::fs::Metadata::is_file).map(|m| (m.modified().ok(), m.len()))
}

/// Reloads the first folder's `kenning.toml` when its modification time or size differs from
/// when it was last read (written, replaced or removed outside the editor; a save the client
/// reported was read already and is not read twice). Stops at shutdown or when the folder is removed.
async fn poll_config(state: Arc<State>, root: Arc<Root>) {
    let path = root.path.join(FILE_NAME);
    loop {
        tokio::time::sleep(CONFIG_POLL).await;
        if state.shutting_down.load(Ordering::Relaxed) || !state.roots().iter().any(|r| Arc::ptr_eq(r, &root)) {
            return;
        }
        let differs = *state.config_seen.lock().expect("config stamp lock") != stamp(&path);
        if differs && let Some(uri) = Uri::from_file_path(&path) {
            changed(&state, &[uri]).await;
        }
    }
}

/// Whether every chunk of `store` has its vector (and there are chunks): searchable by vector.
async fn fully_embedded(store: &Store) -> bool {
    store.counts().await.is_ok_and(|(chunks, vectors)| chunks > 0 && chunks == vectors)
}

/// Starts the first indexing of every folder and asks the client to report file changes.
pub(super) async fn start(state: Arc<State>) {
    if state.watch_registration.load(Ordering::Relaxed) {
        let client = state.client.clone();
        tokio::spawn(async move {
            let registration = Registration {
                id: "kenning-watch".into(),
                method: "workspace/didChangeWatchedFiles".into(),
                register_options: Some(json!({"watchers": [{"globPattern": "**/*"}]})),
            };
            if let Err(e) = client.register_capability(vec![registration]).await {
                tracing::warn!("the client refused file watching: {e}");
            }
        });
    }
    // Whatever the client declares: Neovim on Linux reports no file changes, and Helix registers
    // a watcher but reports only the files it writes itself, so a kenning.toml that `kenning
    // train` (or anything outside the editor) writes would otherwise wait for a restart.
    if let Some(first) = state.roots().first().cloned() {
        *state.config_seen.lock().expect("config stamp lock") = stamp(&first.path.join(FILE_NAME));
        tokio::spawn(poll_config(Arc::clone(&state), first));
    }
    let roots = state.roots();
    if roots.is_empty() {
        tracing::warn!("no workspace folder: nothing to index");
    }
    for root in &roots {
        tokio::spawn(watch_shared(Arc::clone(&state), Arc::clone(root)));
    }
    for root in roots {
        run(Arc::clone(&state), root, true).await;
    }
}

/// Messages from the indexing threads to the progress reporter.
enum Step {
    Files,
    Chunks(usize),
    TextReady,
    EmbedStart(usize),
    Embedded(usize),
    Optimizing,
}

struct Bridge(tokio::sync::mpsc::UnboundedSender<Step>);

impl Progress for Bridge {
    fn file_done(&self) {
        let _ = self.0.send(Step::Files);
    }
    fn chunks_stored(&self, n: usize) {
        let _ = self.0.send(Step::Chunks(n));
    }
    fn text_searchable(&self) {
        let _ = self.0.send(Step::TextReady);
    }
    fn embedding_started(&self, total: usize) {
        let _ = self.0.send(Step::EmbedStart(total));
    }
    fn embedded(&self, n: usize) {
        let _ = self.0.send(Step::Embedded(n));
    }
    fn optimizing(&self) {
        let _ = self.0.send(Step::Optimizing);
    }
}

/// Indexes `root`; if a run is already going, marks it dirty so that run repeats.
pub(super) async fn run(state: Arc<State>, root: Arc<Root>, report: bool) {
    let Ok(running) = root.indexing.try_lock() else {
        root.dirty.store(true, Ordering::Relaxed);
        return;
    };
    let mut report = report;
    loop {
        root.dirty.store(false, Ordering::Relaxed);
        if state.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        // On its own task, so that a panic deep in a dependency is reported, not a silent stop.
        let task = tokio::spawn({
            let (state, root) = (Arc::clone(&state), Arc::clone(&root));
            let span = tracing::info_span!("index", root = %root.path.display());
            async move { run_once(&state, &root, report).await }.instrument(span)
        });
        let result = task.await.unwrap_or_else(|e| Err(panic_error(e)));
        *root.error.lock().expect("error lock") = result.as_ref().err().map(RunError::to_string);
        if let Err(e) = result {
            tracing::error!("indexing {} failed: {e}", root.path.display());
            // Not indexing any more by the time the client reads the message (and asks for status).
            drop(running);
            state.client.show_message(MessageType::ERROR, format!("kenning: indexing {} failed: {e}", root.path.display())).await;
            return;
        }
        report = false;
        if !root.dirty.load(Ordering::Relaxed) {
            break;
        }
    }
    if root.optimize_due.load(Ordering::Relaxed) {
        tokio::spawn(optimize_when_idle(root.clone()));
    }
}

fn panic_error(e: tokio::task::JoinError) -> RunError {
    match e.try_into_panic() {
        Ok(payload) => {
            let text = payload.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| payload.downcast_ref::<String>().cloned());
            RunError::Panicked(text.unwrap_or_else(|| "a panic without a message".into()))
        }
        Err(e) => RunError::Cancelled(e.to_string()),
    }
}

async fn run_once(state: &Arc<State>, root: &Arc<Root>, report: bool) -> Result<(), RunError> {
    tracing::info!("indexing {}", root.path.display());
    let store = store(state, root).await?;
    // First the newest publication, so that this run takes from it what it holds.
    refresh_shared(state, root, &store).await;
    let embedder = state.embedder().await;
    let config = state.config();
    let options = IndexOptions {
        walk: WalkOptions { max_file_bytes: config.index.max_file_bytes, ..WalkOptions::default() },
        defer_optimize: !report,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = if report && state.progress_supported.load(Ordering::Relaxed) {
        Some(tokio::spawn(report_progress(state.clone(), root.name.clone(), rx)))
    } else {
        None
    };
    let result = index::index_workspace(&root.path, &store, embedder.clone(), &options, Arc::new(Bridge(tx))).await;
    if let Some(reporter) = reporter {
        // The sender was moved into the bridge, dropped with the run: the reporter ends.
        let _ = reporter.await;
    }
    let summary = result?;
    if embedder.is_some() {
        root.embedded.store(true, Ordering::Relaxed);
    }
    if summary.optimize_due {
        root.optimize_due.store(true, Ordering::Relaxed);
    }
    tracing::info!(
        "indexed {}: {} changed, {} removed, {} chunks, {} vectors in {:.2} s",
        root.path.display(),
        summary.files_changed,
        summary.files_removed,
        summary.chunks_written,
        summary.vectors_computed,
        summary.total.as_secs_f64()
    );
    Ok(())
}

async fn report_progress(state: Arc<State>, name: String, mut rx: tokio::sync::mpsc::UnboundedReceiver<Step>) {
    let token = ProgressToken::String(state::progress_token("index"));
    if state.client.create_work_done_progress(token.clone()).await.is_err() {
        while rx.recv().await.is_some() {}
        return;
    }
    let progress = state.client.progress(token, format!("kenning: indexing {name}")).with_percentage(0).begin().await;
    let (mut files, mut chunks, mut embed_total, mut embedded) = (0usize, 0usize, 0usize, 0usize);
    let mut phase = "reading";
    let mut last = std::time::Instant::now();
    while let Some(step) = rx.recv().await {
        match step {
            Step::Files => files += 1,
            Step::Chunks(n) => chunks += n,
            Step::TextReady => phase = "keyword search ready; embedding",
            Step::EmbedStart(n) => embed_total = n,
            Step::Embedded(n) => embedded += n,
            Step::Optimizing => phase = "compacting",
        }
        if last.elapsed() >= REPORT_EVERY {
            last = std::time::Instant::now();
            let percent = if embed_total > 0 { (embedded * 100 / embed_total.max(1)) as u32 } else { 0 };
            let message = if embed_total > 0 {
                format!("{phase}: {embedded}/{embed_total} chunks")
            } else {
                format!("{phase}: {files} files, {chunks} chunks")
            };
            progress.report_with_message(message, percent.min(100)).await;
        }
    }
    progress.finish_with_message(format!("{files} files, {chunks} new chunks")).await;
}

/// Compacts the index once nothing has been indexed for a while.
async fn optimize_when_idle(root: Arc<Root>) {
    tokio::time::sleep(IDLE_OPTIMIZE_AFTER).await;
    let Ok(_running) = root.indexing.try_lock() else { return };
    if !root.optimize_due.swap(false, Ordering::Relaxed) {
        return;
    }
    let optimized = match root.store.get() {
        Some(store) => match crate::index::WriterLock::acquire(store.dir(), |_| {}).await {
            Ok(_lock) => match store.refresh().await {
                Ok(()) => store.optimize().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
        None => Ok(()),
    };
    if let Err(e) = optimized
    {
        tracing::warn!("compacting the index of {} failed: {e}", root.path.display());
        root.optimize_due.store(true, Ordering::Relaxed);
    }
}

/// Files changed (saved, or reported by the client's watcher): re-index their folders, reload
/// `kenning.toml` if it changed.
pub(super) async fn changed(state: &Arc<State>, uris: &[Uri]) {
    let mut roots: Vec<Arc<Root>> = Vec::new();
    for uri in uris {
        let Some(path) = uri.to_file_path().map(|p| p.into_owned()) else { continue };
        let path = path.canonicalize().unwrap_or(path);
        let Some(root) = state.root_of(&path) else { continue };
        // The first folder's own kenning.toml, not one of a project nested in it.
        if path == root.path.join(FILE_NAME) && state.roots().first().is_some_and(|r| r.path == root.path) {
            reload_config(state, Some(&root.path), false).await;
        }
        if !roots.iter().any(|r| Arc::ptr_eq(r, &root)) {
            roots.push(root);
        }
    }
    for root in roots {
        tokio::spawn(run(Arc::clone(state), root, false));
    }
}

/// Reads the first folder's `kenning.toml` into the configuration (`None`: no folder is left).
/// Stamped before it is read: a write in between is seen by the next poll. A missing file is an
/// empty one. `folder_changed`: the first folder is another one now, so the old folder's file is
/// taken out first and stays out even if this one is invalid (an edit that does not parse keeps
/// the last good one instead).
async fn reload_config(state: &State, first: Option<&std::path::Path>, folder_changed: bool) {
    let text = first.map(|root| {
        let path = root.join(FILE_NAME);
        *state.config_seen.lock().expect("config stamp lock") = stamp(&path);
        std::fs::read_to_string(&path).unwrap_or_default()
    });
    let (result, left_out) = {
        let mut layers = state.layers.lock().expect("layers lock");
        if folder_changed {
            layers.remove(FILE_NAME);
        }
        match (first, text) {
            (Some(root), Some(text)) => match layers.set_workspace_toml(root, &text) {
                Ok(()) => (layers.resolve(), None),
                Err(e) if folder_changed => (layers.resolve(), Some(e)),
                Err(e) => (Err(e), None),
            },
            _ => (layers.resolve(), None),
        }
    };
    if let Some(e) = left_out {
        state.client.show_message(MessageType::ERROR, format!("kenning: invalid configuration, left out (the other settings apply): {e}")).await;
    }
    state.apply_config(result).await;
}

/// Workspace folders added or removed.
pub(super) async fn folders_changed(state: &Arc<State>, event: WorkspaceFoldersChangeEvent) {
    let removed: Vec<std::path::PathBuf> = event.removed.iter().filter_map(|f| f.uri.to_file_path().map(|p| p.into_owned())).collect();
    let added: Vec<Arc<Root>> = event
        .added
        .iter()
        .filter_map(|f| f.uri.to_file_path().map(|p| p.into_owned()))
        .map(|p| Arc::new(Root::new(p.canonicalize().unwrap_or(p))))
        .collect();
    let (was_first, first) = {
        let mut roots = state.roots.write().expect("roots lock");
        let was_first = roots.first().cloned();
        roots.retain(|r| !removed.iter().any(|p| p.canonicalize().unwrap_or_else(|_| p.clone()) == r.path));
        roots.extend(added.iter().cloned());
        (was_first, roots.first().cloned())
    };
    // The settings are the first folder's: when it is removed, its kenning.toml stops applying and
    // the next folder's is read, and watched from now on (the old folder's poll ends by itself).
    let same = match (&was_first, &first) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (a, b) => a.is_none() && b.is_none(),
    };
    if !same {
        reload_config(state, first.as_ref().map(|r| r.path.as_path()), true).await;
        if let Some(first) = first {
            tokio::spawn(poll_config(Arc::clone(state), first));
        }
    }
    for root in added {
        tokio::spawn(watch_shared(Arc::clone(state), Arc::clone(&root)));
        tokio::spawn(run(Arc::clone(state), root, true));
    }
}
