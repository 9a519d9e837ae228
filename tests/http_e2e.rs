//! The HTTP generation backends against servers. The OpenAI-compatible backend talks to a real
//! `mlx_lm.server` (Python MLX from PyPI, installed by `scripts/setup`) serving the bundled
//! SmolLM2-135M converted to an MLX directory. Ollama cannot be installed here: its backend is
//! checked against a minimal NDJSON responder that also checks the request it receives.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lsp::Client;
use common::test_cache;
use kenning::generate::http::{Api, HttpGenerator};
use kenning::generate::{Event, FinishReason, Generator, GenerationRequest};
use kenning::prompt::Family;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `mlx_lm.server`, stopped when dropped.
struct MlxServer {
    child: Child,
    url: String,
}

impl Drop for MlxServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn mlx_server() -> MlxServer {
    let tools = kenning::paths::Paths::from_env().cache().join("tools");
    let python = tools.join("mlx/bin/python");
    let model: PathBuf = tools.join("smollm2-135m-mlx");
    assert!(python.is_file() && model.join("config.json").is_file(), "mlx_lm or the MLX model is missing under {}: run scripts/setup", tools.display());
    let port = free_port();
    let child = Command::new(&python)
        .args(["-m", "mlx_lm.server", "--host", "127.0.0.1", "--port", &port.to_string(), "--model"])
        .arg(&model)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = MlxServer { child, url: format!("http://127.0.0.1:{port}") };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(120), "mlx_lm.server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    server
}

async fn collect(generator: &dyn Generator, request: GenerationRequest) -> (Vec<String>, FinishReason) {
    let mut generation = generator.generate(request).unwrap();
    let mut pieces = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), generation.next()).await.expect("in time") {
            Some(Event::Text(t)) => pieces.push(t),
            Some(Event::Done(finish)) => return (pieces, finish.reason),
            Some(Event::Error(e)) => panic!("{e}"),
            None => panic!("stream ended without Done"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openai_backend_streams_from_mlx_lm_server_and_drives_completions() {
    let server = mlx_server();
    let generator = HttpGenerator::new(Api::OpenAi, &server.url, "default_model", None, Family::Plain).unwrap();

    let (pieces, reason) = collect(&generator, GenerationRequest { max_tokens: 8, ..GenerationRequest::new("The capital of France is") }).await;
    let text = pieces.concat();
    assert!(text.contains("Paris"), "{text:?}");
    assert!(pieces.len() > 1, "streamed in pieces: {pieces:?}");
    assert_eq!(reason, FinishReason::Length);

    // Stop sequences are honoured even when the server does not match them itself.
    let request = GenerationRequest { max_tokens: 24, stop: vec!["7".into()], ..GenerationRequest::new("1, 2, 3, 4, 5,") };
    let (pieces, reason) = collect(&generator, request).await;
    let text = pieces.concat();
    assert!(text.contains('6') && !text.contains('7'), "{text:?}");
    assert_eq!(reason, FinishReason::Stop);

    // A bad URL is an error event, not a hang or a panic.
    let nowhere = HttpGenerator::new(Api::OpenAi, &format!("http://127.0.0.1:{}", free_port()), "m", None, Family::Plain).unwrap();
    let mut generation = nowhere.generate(GenerationRequest::new("x")).unwrap();
    match tokio::time::timeout(Duration::from_secs(30), generation.next()).await.unwrap() {
        Some(Event::Error(e)) => assert!(e.to_string().contains("127.0.0.1"), "{e}"),
        other => panic!("{other:?}"),
    }

    // The language server configured for this backend completes through it.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w");
    std::fs::create_dir_all(&root).unwrap();
    let mut client = Client::start(test_cache(&dir.path().join("cache")), &root.canonicalize().unwrap());
    client
        .initialize(
            json!({}),
            json!({"generation": {"backend": "openai", "url": server.url, "model": "default_model"}, "completion": {"debounce_ms": 0, "max_tokens": 12}, "index": {"embeddings": false}}),
        )
        .await;
    let uri = client.open("capitals.txt", "plaintext", "The capital of France is").await;
    let response = client
        .request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": {"line": 0, "character": 24}, "context": {"triggerKind": 1}}),
        )
        .await;
    let text = response["result"][0]["insertText"].as_str().unwrap_or_else(|| panic!("{response}"));
    assert!(text.contains("Paris"), "{text:?}");
}

/// Answers one request with NDJSON lines, after checking what Ollama would be sent.
async fn ollama_responder(listener: tokio::net::TcpListener) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let body = loop {
        let n = socket.read(&mut buf).await.unwrap();
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if body.len() >= length {
                assert!(head.starts_with("POST /api/generate "), "{head}");
                break body.to_owned();
            }
        }
    };
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sent["raw"], true);
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], "qwen2.5-coder:0.5b");
    assert_eq!(sent["options"]["num_predict"], 16);
    assert!(sent["prompt"].as_str().unwrap().starts_with("<|fim_prefix|>"));
    let lines = [
        json!({"response": "a ", "done": false}),
        json!({"response": "+ b", "done": false}),
        json!({"response": "\n}", "done": false}),
        json!({"response": " never", "done": false}),
        json!({"response": "", "done": true, "done_reason": "stop", "prompt_eval_count": 9}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let response = format!("HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    socket.write_all(response.as_bytes()).await.unwrap();
}

#[tokio::test]
async fn ollama_backend_sends_a_raw_prompt_and_reads_ndjson() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let responder = tokio::spawn(ollama_responder(listener));
    let generator = HttpGenerator::new(Api::Ollama, &url, "qwen2.5-coder:0.5b", None, Family::QwenCoder).unwrap();
    let request = GenerationRequest {
        max_tokens: 16,
        stop: vec!["\n}".into()],
        ..GenerationRequest::new("<|fim_prefix|>fn add(a: i32, b: i32) -> i32 {\n    <|fim_suffix|>\n}<|fim_middle|>")
    };
    let (pieces, reason) = collect(&generator, request).await;
    assert_eq!(pieces.concat(), "a + b");
    assert_eq!(reason, FinishReason::Stop);
    responder.await.unwrap();
}
