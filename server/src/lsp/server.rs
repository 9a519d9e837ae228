//! The `LanguageServer` implementation. Methods are thin: they delegate to `handlers` (requests)
//! and `indexer` (keeping indexes current); what they share is [`State`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer};

use super::commands;
use super::document::{Document, Encoding};
use super::state::{Root, State};
use super::{Options, handlers, indexer};
use crate::config::Layers;

/// Whether a client has asked this process's server to shut down (the exit code of `serve`).
pub static SHUTDOWN_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The language server.
pub struct Server {
    state: Arc<State>,
}

impl Server {
    pub fn new(client: Client, options: Options) -> Self {
        let state = State::new(client, options.paths);
        Self { state: Arc::new(state) }
    }

    /// `textDocument/inlineCompletion` (LSP 3.18), registered as a custom method.
    pub async fn inline_completion(&self, params: InlineCompletionParams) -> Result<Option<InlineCompletionResponse>> {
        guarded("textDocument/inlineCompletion", &self.state, handlers::inline_completion(&self.state, params)).await
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

        // kenning.toml of the first folder, then initializationOptions. A source that is invalid is
        // left out and reported; the others apply, and stay in place for a later fix of it.
        let mut layers = Layers::default();
        let mut errors = Vec::new();
        if let Some(root) = folders.first() {
            match Layers::from_workspace(root) {
                Ok(workspace) => layers = workspace,
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Some(options) = params.initialization_options
            && let Err(e) = layers.set("initializationOptions", options)
        {
            errors.push(e.to_string());
        }
        // Every layer was checked as it was set: this merge does not fail.
        match layers.resolve() {
            Ok(config) => {
                *state.layers.lock().expect("layers lock") = layers;
                *state.config.write().expect("config lock") = config;
            }
            Err(e) => errors.push(e.to_string()),
        }
        if !errors.is_empty() {
            *state.config_error.lock().expect("config error lock") = Some(errors.join("; "));
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
            state.client.show_message(MessageType::ERROR, format!("kenning: invalid configuration, left out (the other settings apply): {e}")).await;
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
        noted("textDocument/didOpen", &self.state, async {
            let doc = params.text_document;
            let document = Document::new(&doc.text, doc.version, doc.language_id);
            self.state.documents.lock().expect("documents lock").insert(doc.uri, document);
        })
        .await;
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        // Applied synchronously under the lock (the first poll), in the order the notifications
        // were dispatched.
        noted("textDocument/didChange", &self.state, async {
            let encoding = self.state.encoding();
            let mut documents = self.state.documents.lock().expect("documents lock");
            let uri = params.text_document.uri;
            match documents.get_mut(&uri) {
                Some(doc) => match doc.apply(params.text_document.version, &params.content_changes, encoding) {
                    // Off the notification path: it may gather context and warm the engine.
                    Ok(()) if self.state.prepares_on_edit() => drop(tokio::spawn(handlers::edited(Arc::clone(&self.state), uri))),
                    Ok(()) => {}
                    Err(e) => tracing::warn!("{}: {e}", uri.as_str()),
                },
                None => tracing::warn!("change to a document that is not open: {}", uri.as_str()),
            }
        })
        .await;
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        noted("textDocument/didClose", &self.state, async {
            self.state.documents.lock().expect("documents lock").remove(&params.text_document.uri);
        })
        .await;
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        noted("textDocument/didSave", &self.state, async {
            handlers::saved(&self.state, &params.text_document.uri).await;
            indexer::changed(&self.state, &[params.text_document.uri]).await;
        })
        .await;
    }

    async fn did_change_watched_files(&self, params: DidChangeWatchedFilesParams) {
        noted("workspace/didChangeWatchedFiles", &self.state, async {
            let uris: Vec<Uri> = params.changes.into_iter().map(|c| c.uri).collect();
            indexer::changed(&self.state, &uris).await;
        })
        .await;
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        noted("workspace/didChangeConfiguration", &self.state, self.state.set_config_layer("workspace/didChangeConfiguration", params.settings)).await;
    }

    async fn did_change_workspace_folders(&self, params: DidChangeWorkspaceFoldersParams) {
        noted("workspace/didChangeWorkspaceFolders", &self.state, indexer::folders_changed(&self.state, params.event)).await;
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        guarded("textDocument/completion", &self.state, handlers::completion(&self.state, params)).await
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        guarded("textDocument/codeAction", &self.state, async { Ok(handlers::code_actions(&self.state, params)) }).await
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LSPAny>> {
        let method = if params.command == commands::ASK { "kenning.ask" } else { "workspace/executeCommand" };
        guarded(method, &self.state, handlers::execute_command(&self.state, params)).await
    }
}

/// Runs a request's handler inside a tracing span (the method and how long it took), behind a
/// panic boundary: a handler that panics answers with an internal error; the server goes on.
async fn guarded<T>(method: &'static str, state: &State, handler: impl Future<Output = Result<T>>) -> Result<T> {
    caught(method, state, handler).await.unwrap_or_else(|message| {
        Err(tower_lsp_server::jsonrpc::Error {
            code: tower_lsp_server::jsonrpc::ErrorCode::InternalError,
            message: format!("kenning: {method} failed inside the server: {message}").into(),
            data: None,
        })
    })
}

/// The same boundary for a notification (a panic there would otherwise stop the whole server: the
/// transport polls every handler on its own task). There is no reply to carry the error: it is
/// logged.
async fn noted(method: &'static str, state: &State, handler: impl Future<Output = ()>) {
    let _ = caught(method, state, handler).await;
}

/// Runs `handler` in a tracing span, timed; a panic inside becomes `Err(its message)`, logged.
/// A panic that poisoned the open documents' lock (while editing or reading a document) drops
/// every open document, whose text is no longer known, and clears the lock: until the editor opens
/// them again they get no completions (a change to a document that is not open is ignored).
async fn caught<T>(method: &'static str, state: &State, handler: impl Future<Output = T>) -> std::result::Result<T, String> {
    use futures::FutureExt;
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let outcome = std::panic::AssertUnwindSafe(handler).catch_unwind().instrument(tracing::debug_span!("request", method)).await;
    tracing::debug!(method, ms = started.elapsed().as_secs_f64() * 1e3, "handled");
    outcome.map_err(|panic| {
        let message = panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        tracing::error!(method, "the handler panicked: {message}");
        if state.documents.is_poisoned() {
            state.documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
            state.documents.clear_poison();
            tracing::error!("the open documents were dropped: reopen them for completions");
        }
        message
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state of a server built as the transport builds it (no client connected).
    fn test_state() -> Arc<State> {
        let mut captured = None;
        let (_service, _socket) = tower_lsp_server::LspService::new(|client| {
            let server = Server::new(client, crate::lsp::Options { paths: crate::paths::Paths::with_root(std::env::temp_dir()) });
            captured = Some(Arc::clone(&server.state));
            server
        });
        captured.expect("the service built its server")
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_an_error_reply() {
        let state = test_state();
        let handler = async {
            let offset: Option<u32> = None;
            offset.expect("boom at offset 7");
            Ok(())
        };
        let failed: Result<()> = guarded("test/panic", &state, handler).await;
        let error = failed.unwrap_err();
        assert_eq!(error.code, tower_lsp_server::jsonrpc::ErrorCode::InternalError);
        assert!(error.message.contains("test/panic") && error.message.contains("boom at offset 7"), "{}", error.message);
        assert_eq!(guarded("test/ok", &state, async { Ok(3) }).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_panicking_notification_is_logged_and_leaves_a_usable_document_table() {
        let state = test_state();
        let uri: Uri = "file:///tmp/a.rs".parse().unwrap();
        state.documents.lock().unwrap().insert(uri.clone(), Document::new("fn a() {}\n", 1, "rust"));
        // A handler that panics while holding the documents' lock (a bug in applying an edit).
        noted("textDocument/didChange", &state, async {
            let _documents = state.documents.lock().expect("documents lock");
            panic!("boom inside an edit");
        })
        .await;
        // The server goes on: the lock is usable, the document whose text is unknown is gone.
        assert!(!state.documents.is_poisoned());
        assert!(state.documents.lock().expect("usable again").is_empty());
        // A notification that does not panic changes nothing of that.
        noted("textDocument/didClose", &state, async {}).await;
        assert!(!state.documents.is_poisoned());
        // Nor does a request that panics while holding it stop the documents from being usable.
        state.documents.lock().unwrap().insert(uri.clone(), Document::new("fn a() {}\n", 1, "rust"));
        let failed: Result<()> = guarded("textDocument/completion", &state, async {
            let _documents = state.documents.lock().expect("documents lock");
            panic!("boom inside a completion");
        })
        .await;
        assert!(failed.is_err());
        assert!(!state.documents.is_poisoned() && state.documents.lock().unwrap().is_empty());
    }
}
