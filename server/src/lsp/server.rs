//! Server state and the `LanguageServer` implementation. Methods are thin: they delegate to
//! `handlers` (requests) and `indexer` (keeping indexes current).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer};

use super::commands;
use super::document::{Document, Encoding};
use super::{Options, handlers, indexer};
use crate::assets::Assets;
use crate::complete::{Completer, Retrieval};
use crate::config::{self, Config, Layers};
use crate::embed::Embedder;
use crate::generate::{self, Generator};
use crate::store::Store;

/// Whether a client has asked this process's server to shut down (the exit code of `serve`).
pub static SHUTDOWN_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
}

impl Root {
    pub fn new(path: PathBuf) -> Self {
        let name = path.file_name().map_or_else(|| "workspace".to_owned(), |n| n.to_string_lossy().into_owned());
        Self {
            path,
            name,
            store: tokio::sync::OnceCell::new(),
            indexing: tokio::sync::Mutex::new(()),
            dirty: AtomicBool::new(false),
            embedded: AtomicBool::new(false),
            optimize_due: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }
}

/// The loaded model, for the configuration it was loaded with.
pub(super) struct Model {
    pub config: config::Generation,
    pub result: std::result::Result<Option<Arc<dyn Generator>>, String>,
    pub completer: Option<Arc<Completer>>,
}

pub(super) struct State {
    pub client: Client,
    pub paths: Paths,
    pub encoding: RwLock<Encoding>,
    pub progress_supported: AtomicBool,
    pub watch_registration: AtomicBool,
    pub documents: Mutex<HashMap<Uri, Document>>,
    pub roots: RwLock<Vec<Arc<Root>>>,
    pub layers: Mutex<Layers>,
    pub config: RwLock<Config>,
    /// An error found while reading the configuration before `initialized`.
    pub config_error: Mutex<Option<String>>,
    pub model: tokio::sync::Mutex<Option<Model>>,
    pub embedder: tokio::sync::OnceCell<Option<Arc<dyn Embedder>>>,
    pub shutting_down: AtomicBool,
}

use crate::paths::Paths;

impl State {
    pub fn config(&self) -> Config {
        self.config.read().expect("config lock").clone()
    }

    pub fn encoding(&self) -> Encoding {
        *self.encoding.read().expect("encoding lock")
    }

    pub fn assets(&self) -> Assets {
        Assets::new(self.paths.assets())
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
    pub async fn model(&self) -> (std::result::Result<Option<Arc<dyn Generator>>, String>, Option<Arc<Completer>>) {
        let config = self.config();
        let mut slot = self.model.lock().await;
        let stale = slot.as_ref().is_none_or(|m| m.config != config.generation);
        if stale {
            // Free the old engine before loading the new one (memory), off the async runtime:
            // dropping an engine waits for its thread.
            let old = slot.take();
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            let generation = config.generation.clone();
            let paths = self.paths.clone();
            let result = tokio::task::spawn_blocking(move || generate::from_config(&generation, &paths))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            if let Err(e) = &result {
                self.client.show_message(MessageType::ERROR, format!("kenning: cannot load the model: {e}")).await;
            }
            *slot = Some(Model { config: config.generation.clone(), result, completer: None });
        }
        let model = slot.as_mut().expect("just set");
        let completer = match &model.result {
            Ok(Some(generator)) => {
                let fresh = model.completer.as_ref().is_none_or(|c| *c.settings() != config.completion);
                if fresh {
                    model.completer =
                        Some(Arc::new(Completer::new(Arc::clone(generator), config.generation.family(), config.completion.clone())));
                }
                model.completer.clone()
            }
            _ => None,
        };
        (model.result.clone(), completer)
    }

    /// The completer, if the model is loaded already (never loads it).
    pub async fn loaded_completer(&self) -> Option<Arc<Completer>> {
        self.model.lock().await.as_ref().and_then(|m| m.completer.clone())
    }

    /// The embedder, loaded once; `None` when embeddings are off or the assets are missing.
    pub async fn embedder(&self) -> Option<Arc<dyn Embedder>> {
        self.embedder
            .get_or_init(|| async {
                if !self.config().index.embeddings {
                    return None;
                }
                let assets = self.assets();
                match tokio::task::spawn_blocking(move || crate::embed::FastEmbedder::load(&assets, 0)).await {
                    Ok(Ok(e)) => Some(Arc::new(e) as Arc<dyn Embedder>),
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
            Ok(config) => *self.config.write().expect("config lock") = config,
            Err(e) => {
                self.client.show_message(MessageType::ERROR, format!("kenning: invalid configuration, keeping the previous one: {e}")).await;
            }
        }
    }
}

/// The language server.
pub struct Server {
    state: Arc<State>,
}

impl Server {
    pub fn new(client: Client, options: Options) -> Self {
        let state = State {
            client,
            paths: options.paths,
            encoding: RwLock::new(Encoding::Utf16),
            progress_supported: AtomicBool::new(false),
            watch_registration: AtomicBool::new(false),
            documents: Mutex::new(HashMap::new()),
            roots: RwLock::new(Vec::new()),
            layers: Mutex::new(Layers::default()),
            config: RwLock::new(Config::default()),
            config_error: Mutex::new(None),
            model: tokio::sync::Mutex::new(None),
            embedder: tokio::sync::OnceCell::new(),
            shutting_down: AtomicBool::new(false),
        };
        Self { state: Arc::new(state) }
    }

    /// `textDocument/inlineCompletion` (LSP 3.18), registered as a custom method.
    pub async fn inline_completion(&self, params: InlineCompletionParams) -> Result<Option<InlineCompletionResponse>> {
        handlers::inline_completion(&self.state, params).await
    }

    /// What a request that was not a valid JSON-RPC request became (see `transport`): answered
    /// with an `InvalidRequest` error that says what was wrong.
    pub async fn invalid_request(&self, params: super::transport::InvalidRequestParams) -> Result<()> {
        Err(tower_lsp_server::jsonrpc::Error { code: tower_lsp_server::jsonrpc::ErrorCode::InvalidRequest, message: params.problem.into(), data: None })
    }
}

impl LanguageServer for Server {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let state = &self.state;
        let utf8 = params
            .capabilities
            .general
            .as_ref()
            .and_then(|g| g.position_encodings.as_ref())
            .is_some_and(|encodings| encodings.contains(&PositionEncodingKind::UTF8));
        *state.encoding.write().expect("encoding lock") = if utf8 { Encoding::Utf8 } else { Encoding::Utf16 };
        let window = params.capabilities.window.as_ref();
        state.progress_supported.store(window.and_then(|w| w.work_done_progress).unwrap_or(false), Ordering::Relaxed);
        let watch = params
            .capabilities
            .workspace
            .as_ref()
            .and_then(|w| w.did_change_watched_files.as_ref())
            .and_then(|d| d.dynamic_registration)
            .unwrap_or(false);
        state.watch_registration.store(watch, Ordering::Relaxed);

        let mut folders: Vec<PathBuf> =
            params.workspace_folders.unwrap_or_default().iter().filter_map(|f| f.uri.to_file_path().map(|p| p.into_owned())).collect();
        #[allow(deprecated)]
        if folders.is_empty()
            && let Some(path) = params.root_uri.as_ref().and_then(|u| u.to_file_path())
        {
            folders.push(path.into_owned());
        }
        let folders: Vec<PathBuf> = folders.into_iter().map(|p| p.canonicalize().unwrap_or(p)).collect();
        *state.roots.write().expect("roots lock") = folders.iter().cloned().map(|p| Arc::new(Root::new(p))).collect();

        // kenning.toml of the first folder, then initializationOptions.
        let mut layers = match folders.first() {
            Some(root) => Layers::from_workspace(root),
            None => Ok(Layers::default()),
        };
        if let (Ok(l), Some(options)) = (&mut layers, params.initialization_options) {
            layers = l.set("initializationOptions", options).map(|()| l.clone());
        }
        match layers.and_then(|l| l.resolve().map(|c| (l, c))) {
            Ok((layers, config)) => {
                *state.layers.lock().expect("layers lock") = layers;
                *state.config.write().expect("config lock") = config;
            }
            Err(e) => *state.config_error.lock().expect("config error lock") = Some(e.to_string()),
        }

        Ok(InitializeResult {
            server_info: Some(ServerInfo { name: "kenning".into(), version: Some(env!("CARGO_PKG_VERSION").into()) }),
            capabilities: ServerCapabilities {
                position_encoding: Some(if utf8 { PositionEncodingKind::UTF8 } else { PositionEncodingKind::UTF16 }),
                text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
                    open_close: Some(true),
                    change: Some(TextDocumentSyncKind::INCREMENTAL),
                    save: Some(TextDocumentSyncSaveOptions::Supported(true)),
                    ..TextDocumentSyncOptions::default()
                })),
                completion_provider: Some(CompletionOptions {
                    resolve_provider: Some(false),
                    trigger_characters: Some(vec![".".into(), "(".into(), " ".into()]),
                    ..CompletionOptions::default()
                }),
                inline_completion_provider: Some(OneOf::Left(true)),
                code_action_provider: Some(CodeActionProviderCapability::Simple(true)),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: commands::ALL.iter().map(|c| (*c).to_owned()).collect(),
                    work_done_progress_options: WorkDoneProgressOptions { work_done_progress: Some(true) },
                }),
                workspace: Some(WorkspaceServerCapabilities {
                    workspace_folders: Some(WorkspaceFoldersServerCapabilities {
                        supported: Some(true),
                        change_notifications: Some(OneOf::Left(true)),
                    }),
                    file_operations: None,
                }),
                ..ServerCapabilities::default()
            },
            offset_encoding: None,
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let state = Arc::clone(&self.state);
        let error = state.config_error.lock().expect("config error lock").take();
        if let Some(e) = error {
            state.client.show_message(MessageType::ERROR, format!("kenning: invalid configuration, using defaults: {e}")).await;
        }
        // Never await the client here: a client that does not answer would hang the server.
        tokio::spawn(indexer::start(state));
    }

    async fn shutdown(&self) -> Result<()> {
        self.state.shutting_down.store(true, Ordering::Relaxed);
        SHUTDOWN_REQUESTED.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let doc = params.text_document;
        let document = Document::new(&doc.text, doc.version, doc.language_id);
        self.state.documents.lock().expect("documents lock").insert(doc.uri, document);
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        // Applied synchronously under the lock, in the order the notifications were dispatched.
        let encoding = self.state.encoding();
        let mut documents = self.state.documents.lock().expect("documents lock");
        let uri = params.text_document.uri;
        match documents.get_mut(&uri) {
            Some(doc) => {
                if let Err(e) = doc.apply(params.text_document.version, &params.content_changes, encoding) {
                    tracing::warn!("{}: {e}", uri.as_str());
                }
            }
            None => tracing::warn!("change to a document that is not open: {}", uri.as_str()),
        }
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.state.documents.lock().expect("documents lock").remove(&params.text_document.uri);
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        handlers::saved(&self.state, &params.text_document.uri).await;
        indexer::changed(&self.state, &[params.text_document.uri]).await;
    }

    async fn did_change_watched_files(&self, params: DidChangeWatchedFilesParams) {
        let uris: Vec<Uri> = params.changes.into_iter().map(|c| c.uri).collect();
        indexer::changed(&self.state, &uris).await;
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        self.state.set_config_layer("workspace/didChangeConfiguration", params.settings).await;
    }

    async fn did_change_workspace_folders(&self, params: DidChangeWorkspaceFoldersParams) {
        indexer::folders_changed(&self.state, params.event).await;
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        handlers::completion(&self.state, params).await
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        Ok(handlers::code_actions(&self.state, params))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LSPAny>> {
        handlers::execute_command(&self.state, params).await
    }
}
