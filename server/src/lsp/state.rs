//! What the language server knows: its workspace folders and their indexes, open documents, the
//! configuration, the loaded model and completer. Handlers and the indexer work on it; nothing here
//! knows about requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tower_lsp_server::Client;
use tower_lsp_server::ls_types::{MessageType, ProgressToken, Uri};

use super::document::{Document, Encoding};
use crate::complete::{Completer, Retrieval};
use crate::config::{self, Config, Layers};
use crate::embed::Embedder;
use crate::generate::{GenerateError, Generator};
use crate::paths::Paths;
use crate::session;
use crate::store::Store;

/// One workspace folder and its index.
pub(super) struct Root {
    pub path: PathBuf,
    pub name: String,
    pub store: tokio::sync::OnceCell<Arc<Store>>,
    /// Serializes index runs of this folder.
    pub indexing: tokio::sync::Mutex<()>,
    /// A change arrived while a run was going: run again when it ends.
    pub dirty: AtomicBool,
    /// Every chunk has its vector (semantic search is complete).
    pub embedded: AtomicBool,
    /// Compaction was skipped on the request path and is due when idle.
    pub optimize_due: AtomicBool,
    /// Why the last index run failed, until one succeeds (shown by `kenning.status`).
    pub error: Mutex<Option<String>>,
    /// The shared index under this one, once opened (or why it is not used).
    pub shared: Mutex<Option<std::result::Result<session::SharedState, String>>>,
    /// The shared index last asked for, and when (a newer publication is looked for at most every
    /// `[index] shared_check_secs`).
    pub shared_checked: Mutex<Option<(String, std::time::Instant)>>,
}

impl Root {
    pub fn new(path: PathBuf) -> Self {
        let name = session::workspace_name(&path);
        Self {
            path,
            name,
            store: tokio::sync::OnceCell::new(),
            indexing: tokio::sync::Mutex::new(()),
            dirty: AtomicBool::new(false),
            embedded: AtomicBool::new(false),
            optimize_due: AtomicBool::new(false),
            error: Mutex::new(None),
            shared: Mutex::new(None),
            shared_checked: Mutex::new(None),
        }
    }
}

/// The loaded model, for the configuration it was loaded with.
pub(super) struct Model {
    pub config: config::Generation,
    /// A load error is kept whole (shared with every caller); it becomes text only in `kenning.status`.
    pub result: std::result::Result<Option<Arc<dyn Generator>>, Arc<GenerateError>>,
    pub completer: Option<Arc<Completer>>,
    /// When the load ended: a hub that could not be reached is tried again after [`RETRY_LOAD_AFTER`].
    pub loaded_at: std::time::Instant,
    /// The adapter's files as they were when the load began (see [`adapter_stamp`]).
    pub adapter_seen: AdapterStamp,
}

/// The modification times and sizes of a configured adapter's files: the file itself, or a
/// directory's weights and `adapter_config.json` (not the directory's own time, which the GGUF
/// export written on load changes). `None` without an adapter.
pub(super) type AdapterStamp = Option<[super::indexer::Stamp; 3]>;

/// `kenning train` replaces an adapter under the path kenning.toml already names, and one named
/// before it exists appears later: the files are looked at again before each use, and a model
/// whose adapter changed on disk is loaded again.
fn adapter_stamp(generation: &config::Generation) -> AdapterStamp {
    use kenning_formats::adapter::{CONFIG_FILE, WEIGHTS_FILE};
    use super::indexer::stamp;
    let path = generation.adapter()?;
    Some([stamp(path), stamp(&path.join(WEIGHTS_FILE)), stamp(&path.join(CONFIG_FILE))])
}

/// A completion waits this long for its model to load (a local file loads in seconds); longer (a
/// hub model downloading), it gets no suggestion and the load goes on.
pub(super) const COMPLETION_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A load that failed because the hub could not be reached is tried again after this long.
const RETRY_LOAD_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl Model {
    /// Whether this slot already answers for `generation`: loaded, or failed for a reason another
    /// try would not change (a network failure is tried again after a while).
    fn answers_for(&self, generation: &config::Generation) -> bool {
        use crate::models::hub::HubError;
        let hub = self.result.as_ref().err().and_then(|e| e.hub());
        // The hub could not be reached, or was busy or failing for a moment (429, 5xx).
        let unreachable = matches!(hub, Some(HubError::Unreachable { .. } | HubError::Status { status: 429 | 500..=599, .. }));
        // A download stopped for a configuration change continues when the model is named again.
        let stopped = matches!(hub, Some(HubError::Stopped { .. }));
        self.config == *generation
            && !stopped
            && !(unreachable && self.loaded_at.elapsed() >= RETRY_LOAD_AFTER)
            && self.adapter_seen == adapter_stamp(generation)
    }
}

pub(super) struct State {
    pub client: Client,
    pub paths: Paths,
    pub encoding: RwLock<Encoding>,
    pub progress_supported: AtomicBool,
    pub watch_registration: AtomicBool,
    /// kenning.toml's modification time and size when it was last read (see `indexer::poll_config`).
    pub config_seen: Mutex<super::indexer::Stamp>,
    pub documents: Mutex<HashMap<Uri, Document>>,
    pub roots: RwLock<Vec<Arc<Root>>>,
    pub layers: Mutex<Layers>,
    pub config: RwLock<Config>,
    /// An error found while reading the configuration before `initialized`.
    pub config_error: Mutex<Option<String>>,
    pub model: tokio::sync::Mutex<Option<Model>>,
    /// The completion model being loaded (a hub model may be downloading), for `kenning.status`,
    /// which must not wait for it.
    pub loading: Mutex<Option<String>>,
    /// The completion model being loaded and the flag that stops its download: a configuration
    /// that names another model sets it, so the new model does not wait for the old download.
    load_stop: Mutex<Option<(config::Generation, Arc<AtomicBool>)>>,
    /// The model questions are answered with when `[ask.generation]` names one of its own.
    pub ask_model: tokio::sync::Mutex<Option<Model>>,
    pub embedder: tokio::sync::OnceCell<Option<Arc<dyn Embedder>>>,
    pub shutting_down: AtomicBool,
}

impl State {
    pub fn new(client: Client, paths: Paths) -> Self {
        Self {
            client,
            paths,
            encoding: RwLock::new(Encoding::Utf16),
            progress_supported: AtomicBool::new(false),
            watch_registration: AtomicBool::new(false),
            config_seen: Mutex::new(None),
            documents: Mutex::new(HashMap::new()),
            roots: RwLock::new(Vec::new()),
            layers: Mutex::new(Layers::default()),
            config: RwLock::new(Config::default()),
            config_error: Mutex::new(None),
            model: tokio::sync::Mutex::new(None),
            loading: Mutex::new(None),
            load_stop: Mutex::new(None),
            ask_model: tokio::sync::Mutex::new(None),
            embedder: tokio::sync::OnceCell::new(),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> Config {
        self.config.read().expect("config lock").clone()
    }

    /// Whether an edit should prepare the completion at its place (`completion.enabled` and
    /// `completion.prepare_on_edit`): read on every keystroke, so without copying the configuration.
    pub fn prepares_on_edit(&self) -> bool {
        let config = self.config.read().expect("config lock");
        config.completion.enabled && config.completion.prepare_on_edit
    }

    pub fn encoding(&self) -> Encoding {
        *self.encoding.read().expect("encoding lock")
    }

    /// The workspace folder holding `path` (the deepest one), if any.
    pub fn root_of(&self, path: &Path) -> Option<Arc<Root>> {
        let roots = self.roots.read().expect("roots lock");
        roots.iter().filter(|r| path.starts_with(&r.path)).max_by_key(|r| r.path.as_os_str().len()).cloned()
    }

    pub fn roots(&self) -> Vec<Arc<Root>> {
        self.roots.read().expect("roots lock").clone()
    }

    /// The model of the current configuration, loading it (once) if needed, and its completer.
    pub async fn model(self: &Arc<Self>) -> (std::result::Result<Option<Arc<dyn Generator>>, Arc<GenerateError>>, Option<Arc<Completer>>) {
        self.model_within(None).await
    }

    /// [`State::model`], waiting at most `wait` for a load (`None`: for as long as it takes); a
    /// load still going on then answers with an error and no completer.
    pub async fn model_within(
        self: &Arc<Self>,
        wait: Option<std::time::Duration>,
    ) -> (std::result::Result<Option<Arc<dyn Generator>>, Arc<GenerateError>>, Option<Arc<Completer>>) {
        if !self.ensure_loaded(false, wait).await {
            return (Err(Arc::new(GenerateError::Task("the model is still loading".into()))), None);
        }
        let config = self.config();
        let mut slot = self.model.lock().await;
        let Some(model) = slot.as_mut() else {
            return (Err(Arc::new(GenerateError::Task("loading the model stopped".into()))), None);
        };
        let completer = match &model.result {
            Ok(Some(generator)) => {
                let fresh = model.completer.as_ref().is_none_or(|c| *c.settings() != config.completion);
                if fresh {
                    model.completer = Some(Arc::new(Completer::new(Arc::clone(generator), model.config.family(), config.completion.clone())));
                }
                model.completer.clone()
            }
            _ => None,
        };
        (model.result.clone(), completer)
    }

    /// The model that answers questions and its prompt family: `[ask.generation]`'s, loaded once
    /// per configuration, else (or when it is the same as `[generation]`) the completion model.
    pub async fn ask_model(self: &Arc<Self>) -> (std::result::Result<Option<Arc<dyn Generator>>, Arc<GenerateError>>, crate::prompt::Family) {
        let config = self.config();
        let generation = config.ask.generation.clone().filter(|g| *g != config.generation);
        let Some(generation) = generation else {
            // A model of its own no longer wanted is freed (off the async runtime: dropping an
            // engine waits for its thread); one still loading is freed by a later question.
            let old = self.ask_model.try_lock().ok().and_then(|mut slot| slot.take());
            if old.is_some() {
                let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            }
            return (self.model().await.0, config.generation.family());
        };
        self.ensure_loaded(true, None).await;
        match self.ask_model.lock().await.as_ref() {
            Some(model) => (model.result.clone(), model.config.family()),
            None => (Err(Arc::new(GenerateError::Task("loading the model for questions stopped".into()))), generation.family()),
        }
    }

    /// Makes the completion (or the questions') slot hold the model the configuration names when
    /// the load runs, loading it in a task of its own: a request cancelled while it waits (editors
    /// cancel completions as the user types, and a hub model may be downloading) does not stop the
    /// load, and the next request waits for the same load instead of starting another. False when
    /// `wait` ran out first (the load goes on).
    async fn ensure_loaded(self: &Arc<Self>, ask: bool, wait: Option<std::time::Duration>) -> bool {
        struct Loading<'a>(&'a Mutex<Option<String>>);
        impl Drop for Loading<'_> {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            }
        }
        let state = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut slot = if ask { state.ask_model.lock().await } else { state.model.lock().await };
            // The configuration as it is now, not as it was when the request came: after a change
            // while another load ran, only the newest is loaded.
            let config = state.config();
            let generation = if ask {
                match config.ask.generation.filter(|g| *g != config.generation) {
                    Some(generation) => generation,
                    None => return,
                }
            } else {
                config.generation
            };
            if slot.as_ref().is_some_and(|m| m.answers_for(&generation)) {
                return;
            }
            // Taken before the load: an adapter written while it runs is loaded again next time.
            let adapter_seen = adapter_stamp(&generation);
            // Free the old engine before loading the new one (memory).
            let old = slot.take();
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            let loading = (!ask).then(|| {
                *state.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = generation.model().map(str::to_owned);
                Loading(&state.loading)
            });
            // A hub model's download is shown as work-done progress, once one starts.
            let downloads = state.progress_supported.load(Ordering::Relaxed).then(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(report_download(Arc::clone(&state), generation.model().unwrap_or_default().to_owned(), rx));
                tx
            });
            let stop = Arc::new(AtomicBool::new(false));
            if !ask {
                *state.load_stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((generation.clone(), Arc::clone(&stop)));
            }
            let result = session::load_generator_reporting(&generation, &state.paths, downloads, stop).await.map_err(Arc::new);
            if !ask {
                *state.load_stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            }
            drop(loading);
            let stopped = matches!(result.as_ref().err().and_then(|e| e.hub()), Some(crate::models::hub::HubError::Stopped { .. }));
            if stopped {
                tracing::info!("the download of {} was stopped: the configuration names another model", generation.model().unwrap_or_default());
            } else if let Err(e) = &result {
                let what = if ask { "the model for questions" } else { "the model" };
                state.client.show_message(MessageType::ERROR, format!("kenning: cannot load {what}: {e}")).await;
            }
            *slot = Some(Model { config: generation, result, completer: None, loaded_at: std::time::Instant::now(), adapter_seen });
        });
        let finished = match wait {
            None => Some(task.await),
            Some(wait) => tokio::time::timeout(wait, task).await.ok(),
        };
        if let Some(Err(e)) = &finished {
            tracing::error!("loading the model stopped: {e}");
        }
        finished.is_some()
    }

    /// The completer, if the model is loaded already (never loads it, nor waits for a load).
    pub async fn loaded_completer(&self) -> Option<Arc<Completer>> {
        self.model.try_lock().ok()?.as_ref().and_then(|m| m.completer.clone())
    }

    /// The embedder, loaded once; `None` when embeddings are off or the assets are missing.
    pub async fn embedder(&self) -> Option<Arc<dyn Embedder>> {
        self.embedder
            .get_or_init(|| async {
                if !self.config().index.embeddings {
                    return None;
                }
                let paths = self.paths.clone();
                match tokio::task::spawn_blocking(move || session::load_embedder(&paths, 0)).await {
                    Ok(Ok(e)) => Some(e),
                    Ok(Err(e)) => {
                        self.client
                            .show_message(MessageType::WARNING, format!("kenning: semantic search is off (keyword search works): {e}"))
                            .await;
                        None
                    }
                    Err(_) => None,
                }
            })
            .await
            .clone()
    }

    /// What completions and questions can search in `root` right now.
    pub async fn retrieval(&self, root: Option<&Arc<Root>>) -> Retrieval {
        let Some(root) = root else { return Retrieval::default() };
        let store = root.store.get().cloned();
        let embedder = if root.embedded.load(Ordering::Relaxed) { self.embedder.get().cloned().flatten() } else { None };
        Retrieval { store, embedder }
    }

    /// Applies a configuration layer; a bad one is reported and ignored.
    pub async fn set_config_layer(&self, name: &str, value: Value) {
        let result = {
            let mut layers = self.layers.lock().expect("layers lock");
            layers.set(name, value).and_then(|()| layers.resolve())
        };
        self.apply_config(result).await;
    }

    pub async fn apply_config(&self, result: std::result::Result<Config, config::ConfigError>) {
        match result {
            Ok(config) => {
                // A download for a model the configuration no longer names stops.
                if let Some((loading, stop)) = &*self.load_stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
                    && *loading != config.generation
                {
                    stop.store(true, Ordering::Relaxed);
                }
                *self.config.write().expect("config lock") = config;
            }
            Err(e) => {
                self.client.show_message(MessageType::ERROR, format!("kenning: invalid configuration, keeping the previous one: {e}")).await;
            }
        }
    }
}

/// Shows a model's download as `$/progress` (created at its first report, ended when the load
/// ends and the channel closes).
async fn report_download(state: Arc<State>, model: String, mut rx: tokio::sync::mpsc::UnboundedReceiver<(u64, Option<u64>)>) {
    let Some(first) = rx.recv().await else { return };
    let token = ProgressToken::String(progress_token("download"));
    // A client that never answers does not keep this task (and the state) alive.
    let created = tokio::time::timeout(std::time::Duration::from_secs(5), state.client.create_work_done_progress(token.clone())).await;
    if !matches!(created, Ok(Ok(()))) {
        while rx.recv().await.is_some() {}
        return;
    }
    let progress = state.client.progress(token, format!("kenning: downloading {model}")).with_percentage(0).begin().await;
    let mut next = Some(first);
    let mut last = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let mut have_mb = 0;
    while let Some((have, total)) = next {
        have_mb = have >> 20;
        if last.elapsed() >= std::time::Duration::from_millis(500) {
            last = std::time::Instant::now();
            let percent = total.filter(|t| *t > 0).map_or(0, |t| (have * 100 / t) as u32);
            let of = total.map(|t| format!(" of {} MB", t >> 20)).unwrap_or_default();
            progress.report_with_message(format!("{have_mb} MB{of}"), percent.min(100)).await;
        }
        next = rx.recv().await;
    }
    progress.finish_with_message(format!("{have_mb} MB")).await;
}

/// A progress token unique in this process: `kenning/<kind>/<pid>-<n>`.
pub(super) fn progress_token(kind: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("kenning/{kind}/{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
