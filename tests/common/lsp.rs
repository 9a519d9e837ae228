//! A minimal LSP client for in-process tests: the real server over `tokio::io::duplex`, messages
//! framed with `Content-Length` as on stdio. Server requests (progress creation, registrations)
//! are answered with `null`; notifications are kept for the test to inspect.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, WriteHalf};
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<i64, oneshot::Sender<Value>>>>;

pub struct Client {
    writer: Arc<tokio::sync::Mutex<WriteHalf<DuplexStream>>>,
    pending: Pending,
    next_id: i64,
    notifications: mpsc::UnboundedReceiver<Value>,
    /// Every notification and server request seen so far, in order.
    pub seen: Vec<Value>,
    pub root: PathBuf,
}

pub fn uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

async fn write_message(writer: &tokio::sync::Mutex<WriteHalf<DuplexStream>>, message: &Value) {
    let body = serde_json::to_vec(message).unwrap();
    let mut w = writer.lock().await;
    w.write_all(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes()).await.unwrap();
    w.write_all(&body).await.unwrap();
    w.flush().await.unwrap();
}

/// A message framed as on stdio (`Content-Length: N`, a blank line, the JSON body), for tests
/// that drive `kenning serve` as a child process.
pub fn frame(message: &Value) -> String {
    let body = message.to_string();
    format!("Content-Length: {}\r\n\r\n{body}", body.len())
}

/// The next framed message from a child server's stdout; `None` once it closed its output.
pub fn read_frame(input: &mut impl std::io::BufRead) -> Option<Value> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("Content-Length: ") {
            length = n.parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    input.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).unwrap())
}

impl Client {
    /// Starts a server with `paths` as its cache root, for the workspace `root`.
    pub fn start(paths: kenning::paths::Paths, root: &Path) -> Client {
        let (client_io, server_io) = tokio::io::duplex(1 << 22);
        let (server_read, server_write) = tokio::io::split(server_io);
        tokio::spawn(kenning::lsp::serve(server_read, server_write, kenning::lsp::Options { paths }));

        let (read, write) = tokio::io::split(client_io);
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let pending: Pending = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let pending = Arc::clone(&pending);
            let writer = Arc::clone(&writer);
            tokio::spawn(async move {
                let mut reader = BufReader::new(read);
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(n) = line.strip_prefix("Content-Length: ") {
                            length = n.parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let message: Value = serde_json::from_slice(&body).unwrap();
                    let is_request = message.get("method").is_some() && message.get("id").is_some();
                    if is_request {
                        let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": null});
                        write_message(&writer, &reply).await;
                        let _ = tx.send(message);
                    } else if message.get("method").is_some() {
                        let _ = tx.send(message);
                    } else if let Some(id) = message["id"].as_i64()
                        && let Some(waiter) = pending.lock().unwrap().remove(&id)
                    {
                        let _ = waiter.send(message);
                    }
                }
            });
        }
        Client { writer, pending, next_id: 1, notifications: rx, seen: Vec::new(), root: root.to_owned() }
    }

    /// Sends a request and returns its id and the channel its response arrives on.
    pub async fn send_request(&mut self, method: &str, params: Value) -> (i64, oneshot::Receiver<Value>) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        write_message(&self.writer, &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        (id, rx)
    }

    /// Sends a request and waits for the whole response message (`result` or `error`).
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let (_, rx) = self.send_request(method, params).await;
        tokio::time::timeout(Duration::from_secs(300), rx).await.expect("response in time").expect("server alive")
    }

    pub async fn notify(&mut self, method: &str, params: Value) {
        write_message(&self.writer, &json!({"jsonrpc": "2.0", "method": method, "params": params})).await;
    }

    /// Raw bytes, for malformed-input tests.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await.unwrap();
        w.flush().await.unwrap();
    }

    /// Waits for a notification or server request matching `pred` (also looking at those seen).
    pub async fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|m| pred(m)) {
            return found.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.notifications.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching message within {timeout:?}; seen: {:#?}", self.seen))
                .expect("server alive");
            self.seen.push(message.clone());
            if pred(&message) {
                return message;
            }
        }
    }

    /// Takes every message that has arrived so far.
    pub fn drain(&mut self) {
        while let Ok(m) = self.notifications.try_recv() {
            self.seen.push(m);
        }
    }

    /// `initialize` + `initialized`, returning the initialize result.
    pub async fn initialize(&mut self, capabilities: Value, options: Value) -> Value {
        let root_uri = uri(&self.root);
        let response = self
            .request(
                "initialize",
                json!({
                    "processId": null,
                    "rootUri": root_uri,
                    "capabilities": capabilities,
                    "initializationOptions": options,
                    "workspaceFolders": [{"uri": root_uri, "name": "fixture"}],
                }),
            )
            .await;
        self.notify("initialized", json!({})).await;
        response["result"].clone()
    }

    /// Waits until the background indexing of the workspace has finished.
    pub async fn wait_indexed(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let status = self.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
            let root = &status["result"]["roots"][0];
            if root["indexing"] == json!(false) && root["index"]["chunks"].as_u64().unwrap_or(0) > 0 && root["embedded"] == json!(true) {
                return status["result"].clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "indexing did not finish: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn open(&mut self, rel: &str, language: &str, text: &str) -> String {
        let uri = uri(&self.root.join(rel));
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}),
        )
        .await;
        uri
    }

    /// The server's copy of a document, read back through the code action that quotes a selection.
    pub async fn server_text(&mut self, uri: &str, end_line: u32) -> String {
        let response = self
            .request(
                "textDocument/codeAction",
                json!({
                    "textDocument": {"uri": uri},
                    "range": {"start": {"line": 0, "character": 0}, "end": {"line": end_line, "character": 0}},
                    "context": {"diagnostics": []},
                }),
            )
            .await;
        let question = response["result"][0]["arguments"][0]["question"].as_str().unwrap_or_else(|| panic!("{response}")).to_owned();
        // "Explain what this code does:\n```lang\n<text>\n```"
        let body = question.split_once('\n').unwrap().1;
        let body = body.split_once('\n').unwrap().1;
        body.strip_suffix("\n```").unwrap().to_owned()
    }
}
