//! Request handlers: LSP params in, plain calls to `complete` and `ask`, LSP results out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::ls_types::*;

use super::document::{Document, Encoding};
use super::ext::{ModelStatus, RootStatus, Started, Status};
use super::state::{self, Root, State};
use super::{commands, indexer, to_proto};
use crate::ask;
use crate::chunk::Language;
use crate::complete::{self, Buffer};

/// Open buffers larger than this are not offered as completion context.
const MAX_BUFFER_BYTES: usize = 512 * 1024;
/// Other open buffers considered per completion.
const MAX_BUFFERS: usize = 16;
/// How often a streamed answer is reported.
const ASK_REPORT_EVERY: Duration = Duration::from_millis(150);

fn internal(message: impl Into<String>) -> Error {
    Error { code: ErrorCode::InternalError, message: message.into().into(), data: None }
}

/// A document's path relative to its workspace folder (`/`-separated), or its file name.
pub(super) fn relative(root: Option<&Arc<Root>>, path: &Path) -> String {
    let rel = root.and_then(|r| path.strip_prefix(&r.path).ok()).unwrap_or_else(|| Path::new(path.file_name().unwrap_or_default()));
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn file_path(uri: &Uri) -> Option<PathBuf> {
    uri.to_file_path().map(|p| p.into_owned())
}

/// A completion placed in the document: the text to insert over `range`.
struct Placed {
    range: Range,
    text: String,
    /// The document as it was completed (a newer edit may have arrived since).
    doc: Document,
}

/// Runs a completion at `position`. With `selected`, the completion continues the item selected
/// in the client's completion menu (its text replaces its range first).
async fn run_completion(
    state: &Arc<State>,
    uri: &Uri,
    position: Position,
    selected: Option<&SelectedCompletionInfo>,
    debounce: bool,
) -> Option<Placed> {
    let config = state.config();
    if !config.completion.enabled {
        return None;
    }
    let snapshot = |state: &State| state.documents.lock().expect("documents lock").get(uri).cloned();
    let doc = snapshot(state)?;
    if !doc.has_line(position) {
        return None; // past the end of the document: nothing to complete
    }
    if debounce && config.completion.debounce_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.completion.debounce_ms)).await;
        if snapshot(state).is_none_or(|d| d.version != doc.version) {
            return None; // a newer edit: its own request follows
        }
    }
    let (_, completer) = state.model_within(Some(state::COMPLETION_LOAD_WAIT)).await;
    let completer = completer?;
    let encoding = state.encoding();
    let mut text = doc.text();
    let mut offset = doc.offset(position, encoding);
    let mut range = Range::new(position, position);
    let mut lead = String::new();
    if let Some(selected) = selected {
        let start = doc.offset(selected.range.start, encoding);
        let end = doc.offset(selected.range.end, encoding).max(start);
        text.replace_range(start..end, &selected.text);
        offset = start + selected.text.len();
        range = selected.range;
        lead = selected.text.clone();
    }
    let (request, retrieval) = completion_request(state, uri, &doc, text, offset).await;
    match completer.complete(request, &retrieval).await {
        Ok(Some(completion)) => Some(Placed { range, text: lead + &completion.text, doc }),
        Ok(None) => None,
        Err(complete::CompleteError::Cancelled) => None, // a newer request took over
        Err(e) => {
            tracing::warn!("completion failed: {e}");
            None
        }
    }
}

/// What the completer is asked at `offset` of `text` (the document `doc` at `uri`, maybe with a
/// selected item applied), and the index it may search.
async fn completion_request(state: &Arc<State>, uri: &Uri, doc: &Document, text: String, offset: usize) -> (complete::CompletionRequest, complete::Retrieval) {
    let path = file_path(uri);
    let root = path.as_deref().and_then(|p| state.root_of(p));
    let rel = path.as_deref().map_or_else(|| uri.as_str().to_owned(), |p| relative(root.as_ref(), p));
    let language = match Language::from_path(&rel) {
        Language::Text => Language::from_name(&doc.language_id).unwrap_or(Language::Text),
        l => l,
    };
    let buffers = other_buffers(state, uri, root.as_ref());
    let retrieval = if state.config().completion.retrieval { state.retrieval(root.as_ref()).await } else { complete::Retrieval::default() };
    let request = complete::CompletionRequest {
        repo: root.as_ref().map_or_else(|| "workspace".to_owned(), |r| r.name.clone()),
        path: rel,
        language,
        text,
        offset,
        buffers,
    };
    (request, retrieval)
}

/// A document was edited: where the edit ends is where the user is, and at a new place the
/// completer prepares the first prompt there before the first request comes
/// ([`complete::Completer::edited`], `completion.prepare_on_edit`, checked by the caller:
/// [`State::prepares_on_edit`]). Nothing while its model is not loaded.
pub(super) async fn edited(state: Arc<State>, uri: Uri) {
    let Some(completer) = state.loaded_completer().await else { return };
    let Some(doc) = state.documents.lock().expect("documents lock").get(&uri).cloned() else { return };
    let Some(offset) = doc.edited_at else { return };
    // Most edits are at the place of the last one: that is known before anything is copied.
    let path = file_path(&uri);
    let root = path.as_deref().and_then(|p| state.root_of(p));
    let rel = path.as_deref().map_or_else(|| uri.as_str().to_owned(), |p| relative(root.as_ref(), p));
    if !completer.is_new_place(&rel, doc.line_of(offset)) {
        return;
    }
    let (request, retrieval) = completion_request(&state, &uri, &doc, doc.text(), offset).await;
    completer.edited(request, &retrieval).await;
}

/// A document was saved: context-ring snippets of it that no longer match its text are dropped
/// (the next place gathers them again from the re-indexed file).
pub(super) async fn saved(state: &Arc<State>, uri: &Uri) {
    let Some(completer) = state.loaded_completer().await else { return };
    let Some(text) = state.documents.lock().expect("documents lock").get(uri).map(Document::text) else { return };
    let Some(path) = file_path(uri) else { return };
    let root = state.root_of(&path);
    completer.document_changed(&relative(root.as_ref(), &path), &text);
}

fn other_buffers(state: &State, uri: &Uri, root: Option<&Arc<Root>>) -> Vec<Buffer> {
    let documents = state.documents.lock().expect("documents lock");
    documents
        .iter()
        .filter(|(u, d)| *u != uri && d.len_bytes() <= MAX_BUFFER_BYTES)
        .filter_map(|(u, d)| {
            let path = file_path(u)?;
            let same_root = state.root_of(&path);
            // Buffers of other workspace folders are other projects: not context.
            if root.map(|r| &r.path) != same_root.as_ref().map(|r| &r.path) {
                return None;
            }
            Some(Buffer { path: relative(root, &path), text: d.text() })
        })
        .take(MAX_BUFFERS)
        .collect()
}

pub(super) async fn inline_completion(state: &Arc<State>, params: InlineCompletionParams) -> Result<Option<InlineCompletionResponse>> {
    let at = params.text_document_position;
    let automatic = params.context.trigger_kind == InlineCompletionTriggerKind::AUTOMATIC;
    let selected = params.context.selected_completion_info.as_ref();
    let Some(placed) = run_completion(state, &at.text_document.uri, at.position, selected, automatic).await else {
        return Ok(Some(InlineCompletionResponse::Array(Vec::new())));
    };
    Ok(Some(InlineCompletionResponse::Array(vec![to_proto::inline_item(placed.text, placed.range)])))
}

/// `textDocument/completion`: one item holding the generated text (Helix has no ghost text). The
/// item replaces the word before the cursor with that word plus the completion, so clients that
/// filter by the typed word keep it.
pub(super) async fn completion(state: &Arc<State>, params: CompletionParams) -> Result<Option<CompletionResponse>> {
    let at = params.text_document_position;
    let invoked = params.context.as_ref().is_some_and(|c| c.trigger_kind == CompletionTriggerKind::INVOKED);
    let Some(placed) = run_completion(state, &at.text_document.uri, at.position, None, !invoked).await else {
        return Ok(Some(CompletionResponse::List(CompletionList { is_incomplete: true, items: Vec::new() })));
    };
    let doc = &placed.doc;
    let encoding = state.encoding();
    let cursor = doc.offset(at.position, encoding);
    let text = doc.text();
    let word_start = text[..cursor].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + text[i..].chars().next().map_or(1, char::len_utf8));
    let word = &text[word_start.min(cursor)..cursor];
    let range = Range::new(doc.position(word_start, encoding), at.position);
    let item = to_proto::completion_item(&doc.language_id, word, &placed.text, range);
    Ok(Some(CompletionResponse::List(CompletionList { is_incomplete: true, items: vec![item] })))
}

/// Code actions on a selection: ask kenning to explain it, or where it is used.
pub(super) fn code_actions(state: &Arc<State>, params: CodeActionParams) -> Option<CodeActionResponse> {
    if params.range.start == params.range.end {
        return None;
    }
    let doc: Document = state.documents.lock().expect("documents lock").get(&params.text_document.uri).cloned()?;
    let selection = doc.slice(params.range, state.encoding());
    if selection.trim().is_empty() {
        return None;
    }
    let uri = params.text_document.uri.as_str().to_owned();
    let action = |title: &str, question: String| {
        CodeActionOrCommand::Command(Command {
            title: title.into(),
            command: commands::ASK.into(),
            arguments: Some(vec![json!({"question": question, "uri": uri, "show": true})]),
        })
    };
    let fenced = format!("```{}\n{}\n```", doc.language_id, selection.trim_end());
    Some(vec![
        action("Explain this code (kenning)", format!("Explain what this code does:\n{fenced}")),
        action("Ask kenning about this selection", format!("Where is this used, and what does it depend on?\n{fenced}")),
    ])
}

#[derive(Debug, Deserialize)]
struct AskArgs {
    question: String,
    #[serde(default)]
    uri: Option<String>,
    /// Also show the answer with `window/showMessage`.
    #[serde(default)]
    show: bool,
}

pub(super) async fn execute_command(state: &Arc<State>, params: ExecuteCommandParams) -> Result<Option<Value>> {
    match params.command.as_str() {
        commands::ASK => {
            let arg = params.arguments.into_iter().next().ok_or_else(|| {
                Error::invalid_params("kenning.ask needs a question: select code and use the code action, or run `kenning ask` in a terminal")
            })?;
            let args: AskArgs = match arg {
                Value::String(question) => AskArgs { question, uri: None, show: false },
                other => serde_json::from_value(other).map_err(|e| Error::invalid_params(format!("kenning.ask: {e}")))?,
            };
            let token = params.work_done_progress_params.work_done_token;
            to_value(ask_command(state, args, token).await?).map(Some)
        }
        commands::REINDEX => {
            for root in state.roots() {
                tokio::spawn(indexer::run(Arc::clone(state), root, false));
            }
            to_value(Started { started: true }).map(Some)
        }
        commands::STATUS => to_value(status(state).await).map(Some),
        other => Err(Error::invalid_params(format!("unknown command {other}"))),
    }
}

async fn ask_command(state: &Arc<State>, args: AskArgs, token: Option<ProgressToken>) -> Result<super::ext::AskResult> {
    let root = match args.uri.as_deref().and_then(|u| u.parse::<Uri>().ok()).and_then(|u| file_path(&u)) {
        Some(path) => state.root_of(&path),
        None => state.roots().into_iter().next(),
    }
    .ok_or_else(|| Error::invalid_params("kenning.ask: no workspace folder to search"))?;
    let store = indexer::store(state, &root).await.map_err(|e| internal(e.to_string()))?;
    let retrieval = state.retrieval(Some(&root)).await;
    let (model, family) = state.ask_model().await;
    let config = state.config();
    let generator = model.ok().flatten().map(|g| (g, family));

    let token = match token {
        Some(t) => Some(t),
        None if state.progress_supported.load(Ordering::Relaxed) => {
            let t = ProgressToken::String(state::progress_token("ask"));
            state.client.create_work_done_progress(t.clone()).await.ok().map(|()| t)
        }
        None => None,
    };
    let progress = match token {
        Some(t) => Some(state.client.progress(t, "kenning").with_message("searching").begin().await),
        None => None,
    };
    // The answer streams through a channel to a reporter that sends the text so far.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reporter = async {
        let mut sofar = String::new();
        let mut last = std::time::Instant::now() - ASK_REPORT_EVERY;
        while let Some(piece) = rx.recv().await {
            sofar.push_str(&piece);
            if let Some(p) = &progress
                && last.elapsed() >= ASK_REPORT_EVERY
            {
                p.report(sofar.clone()).await;
                last = std::time::Instant::now();
            }
        }
    };
    let asking = async {
        let result = ask::ask(&args.question, &store, retrieval.embedder, generator, &config.ask, |t| {
            let _ = tx.send(t.to_owned());
        })
        .await;
        drop(tx);
        result
    };
    let (answer, ()) = tokio::join!(asking, reporter);
    if let Some(p) = progress {
        p.finish_with_message("done").await;
    }
    let answer = answer.map_err(|e| internal(e.to_string()))?;
    if args.show {
        state.client.show_message(MessageType::INFO, answer.render()).await;
    }
    Ok(to_proto::ask_result(&answer, &root.path))
}

async fn status(state: &Arc<State>) -> Status {
    let mut roots = Vec::new();
    for root in state.roots() {
        let error = root.error.lock().expect("error lock").clone();
        // A failed read of the figures (it may be transient, during compaction) is not a failed run.
        let (index, index_error) = match root.store.get() {
            Some(store) => match store.stats().await {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            },
            None => (None, None),
        };
        roots.push(RootStatus {
            path: root.path.clone(),
            indexing: root.indexing.try_lock().is_err(),
            embedded: root.embedded.load(Ordering::Relaxed),
            index,
            index_error,
            error,
            shared: root.shared.lock().expect("shared lock").as_ref().map(|s| match s {
                Ok(state) => serde_json::to_value(state).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e }),
            }),
        });
    }
    // A model being loaded (or downloaded) holds the lock for as long as that takes: the status
    // says so rather than wait.
    let loading = state.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let model = match loading {
        Some(loading) => Some(ModelStatus::Loading { loading }),
        None => match tokio::time::timeout(std::time::Duration::from_millis(250), state.model.lock()).await {
            Ok(model) => model.as_ref().map(|m| match &m.result {
                Ok(generator) => ModelStatus::Loaded { loaded: generator.as_ref().map(|g| g.model_name().to_owned()) },
                Err(e) => ModelStatus::Error { error: e.to_string() },
            }),
            Err(_) => Some(ModelStatus::Loading { loading: state.config().generation.model().unwrap_or("the model").to_owned() }),
        },
    };
    Status { roots, model, encoding: if state.encoding() == Encoding::Utf8 { "utf-8" } else { "utf-16" } }
}

/// A command's typed result as the JSON it is sent as.
fn to_value(result: impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(result).map_err(|e| internal(format!("kenning: the result cannot be sent: {e}")))
}
