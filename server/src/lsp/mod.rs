//! The language server: the only module that knows LSP types.
//!
//! `server` is the `LanguageServer` implementation (each method one line into a handler); `state`
//! what the handlers share (folders, documents, configuration, model); `handlers` turns requests
//! into calls of [`crate::complete`] and [`crate::ask`]; `to_proto` makes LSP values of kenning's;
//! `ext` types the results of kenning's commands (`docs/lsp-extensions.md` is checked against
//! them); `indexer` keeps each workspace folder's index current in the background; `document`
//! keeps open buffers. Imports go one way: server → handlers → indexer → state.

mod document;
mod ext;
mod handlers;
mod indexer;
mod server;
mod state;
mod to_proto;
mod transport;

pub use document::{Document, Encoding};
pub use server::Server;

use tower_lsp_server::{ClientSocket, LspService};

use crate::paths::Paths;

/// Commands the server executes (`workspace/executeCommand`).
pub mod commands {
    /// Ask a question about the code: `[{"question": "...", "uri"?: "...", "show"?: bool}]` or `["..."]`.
    pub const ASK: &str = "kenning.ask";
    /// Re-index every workspace folder now.
    pub const REINDEX: &str = "kenning.reindex";
    /// What the index holds and what the server is doing.
    pub const STATUS: &str = "kenning.status";
    pub const ALL: [&str; 3] = [ASK, REINDEX, STATUS];
}

/// How a server instance is set up (tests point it at their own cache).
#[derive(Debug, Clone)]
pub struct Options {
    pub paths: Paths,
}

/// Builds the service (for a transport, or for in-process tests over `tokio::io::duplex`).
pub fn service(options: Options) -> (LspService<Server>, ClientSocket) {
    LspService::build(|client| Server::new(client, options))
        .custom_method("textDocument/inlineCompletion", Server::inline_completion)
        .custom_method(transport::INVALID_REQUEST, Server::invalid_request)
        .finish()
}

/// Serves LSP over a byte stream pair until the client says `exit` or the input ends. Malformed
/// messages are dropped before they reach the protocol layer (see `transport`).
pub async fn serve(
    input: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    output: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
    options: Options,
) {
    let (service, socket) = service(options);
    tower_lsp_server::Server::new(transport::sanitize(input), output, socket).serve(service).await;
}

/// Serves LSP over stdin/stdout, then ends the process: 0 after `shutdown` and `exit`, 1 when the
/// client exits without `shutdown` or the input ends (the LSP rule). The process exits here rather
/// than returning: stdin's reader thread and background work would keep the runtime alive.
pub async fn serve_stdio(options: Options) -> ! {
    serve(tokio::io::stdin(), tokio::io::stdout(), options).await;
    let code = i32::from(!server::SHUTDOWN_REQUESTED.load(std::sync::atomic::Ordering::SeqCst));
    std::process::exit(code)
}
