//! The language server in-process, over `tokio::io::duplex`, on real parts: the bundled
//! Qwen2.5-Coder model on llama.cpp, MiniLM embeddings, a Lance index in a temp cache.

mod common;

use std::path::Path;
use std::time::Duration;

use common::lsp::{Client, frame, read_frame, uri};
use common::{test_cache, write};
use serde_json::{Value, json};

/// A small shop whose pricing function has a name no model can guess.
fn shop(root: &Path) {
    write(
        root,
        "src/pricing.rs",
        "//! Prices and discounts.\n\n/// Applies a percentage discount to a total in cents, never going below zero.\npub fn apply_loyalty_discount_cents(total_cents: u64, percent: u8) -> u64 {\n    total_cents - total_cents * u64::from(percent.min(100)) / 100\n}\n\n/// Formats cents as dollars.\npub fn format_cents(cents: u64) -> String {\n    format!(\"${}.{:02}\", cents / 100, cents % 100)\n}\n",
    );
    write(
        root,
        "src/cart.rs",
        "//! The shopping cart.\n\n/// A line of the cart.\npub struct Item {\n    pub name: String,\n    pub cents: u64,\n}\n\n/// Sum of the items, in cents.\npub fn total_cents(items: &[Item]) -> u64 {\n    items.iter().map(|i| i.cents).sum()\n}\n",
    );
    write(root, "README.md", "# shop\n\nA tiny shop used by kenning's tests.\n");
}

/// The function to complete needs `apply_loyalty_discount_cents`, which only `src/pricing.rs` names.
const CHECKOUT: &str = "use crate::cart::{Item, total_cents};\n\n/// What a customer pays for the cart after the loyalty discount, in cents.\npub fn checkout(items: &[Item], percent: u8) -> u64 {\n    let total = total_cents(items);\n    ";

fn fast_options() -> Value {
    json!({"completion": {"debounce_ms": 0, "prompt_tokens": 700, "max_tokens": 24}, "generation": {"backend": "llama", "threads": 1, "context": 2048}})
}

fn progress_capable() -> Value {
    json!({"window": {"workDoneProgress": true}, "general": {"positionEncodings": ["utf-8", "utf-16"]}})
}

async fn started(dir: &Path, capabilities: Value, options: Value) -> Client {
    let root = dir.join("shop");
    shop(&root);
    let root = root.canonicalize().unwrap();
    let mut client = Client::start(test_cache(&dir.join("cache")), &root);
    let result = client.initialize(capabilities, options).await;
    assert!(result["capabilities"].is_object(), "{result}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn initialize_negotiates_encoding_and_declares_features() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w");
    std::fs::create_dir_all(&root).unwrap();
    let paths = test_cache(&dir.path().join("cache"));

    let mut utf8 = Client::start(paths.clone(), &root);
    let result = utf8.initialize(json!({"general": {"positionEncodings": ["utf-8", "utf-16"]}}), json!({"generation": {"backend": "none"}})).await;
    assert_eq!(result["capabilities"]["positionEncoding"], "utf-8");
    assert_eq!(result["capabilities"]["inlineCompletionProvider"], true);
    assert!(result["capabilities"]["completionProvider"].is_object());
    assert_eq!(result["capabilities"]["executeCommandProvider"]["commands"], json!(["kenning.ask", "kenning.reindex", "kenning.status"]));

    let mut utf16 = Client::start(paths, &root);
    let result = utf16.initialize(json!({}), json!({"generation": {"backend": "none"}})).await;
    assert_eq!(result["capabilities"]["positionEncoding"], "utf-16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_in_utf16_and_utf8_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for (encoding, column) in [("utf-16", 11), ("utf-8", 13)] {
        let root = dir.path().join(encoding);
        std::fs::create_dir_all(&root).unwrap();
        let mut client = Client::start(test_cache(&dir.path().join("cache")), &root);
        client.initialize(json!({"general": {"positionEncodings": [encoding]}}), json!({"generation": {"backend": "none"}})).await;
        // "😀" is 2 UTF-16 units and 4 UTF-8 bytes: the column after it differs by encoding.
        let uri = client.open("a.rs", "rust", "let s = \"😀\";\n").await;
        client
            .notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
                    {"range": {"start": {"line": 0, "character": column}, "end": {"line": 0, "character": column}}, "text": "!"},
                    {"range": {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 0}}, "text": "let t = 1;\n"},
                ]}),
            )
            .await;
        assert_eq!(client.server_text(&uri, 2).await, "let s = \"😀!\";\nlet t = 1;", "{encoding}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_setting_is_reported_with_its_key_and_the_rest_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), json!({}), json!({"completion": {"debounce": 5}, "generation": {"backend": "none"}})).await;
    let message = client.wait_for(Duration::from_secs(30), |m| m["method"] == "window/showMessage").await;
    let text = message["params"]["message"].as_str().unwrap();
    assert!(text.contains("completion.debounce") && text.contains("initializationOptions"), "{text}");
    assert_eq!(message["params"]["type"], 1, "an error");

    client.notify("workspace/didChangeConfiguration", json!({"settings": {"kenning": {"generation": {"backend": "gpt"}}}})).await;
    let message = client
        .wait_for(Duration::from_secs(30), |m| m["method"] == "window/showMessage" && m["params"]["message"].as_str().unwrap().contains("gpt"))
        .await;
    assert!(message["params"]["message"].as_str().unwrap().contains("generation.backend"), "{message}");
    // The server still answers.
    let status = client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
    assert!(status["result"]["roots"].is_array(), "{status}");

    // A kenning.toml that does not parse is reported too.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("kenning.toml"), "[completion\n").unwrap();
    let mut client = Client::start(test_cache(&dir.path().join("cache")), &broken.canonicalize().unwrap());
    client.initialize(json!({}), json!({})).await;
    let message = client.wait_for(Duration::from_secs(30), |m| m["method"] == "window/showMessage").await;
    assert!(message["params"]["message"].as_str().unwrap().contains("kenning.toml"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_editors_settings_apply_beside_a_kenning_toml_that_does_not_parse() {
    // A broken kenning.toml is reported and left out; the editor's settings (here: no model at
    // all) still apply, instead of the defaults, which would load the bundled model.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w");
    write(&root, "kenning.toml", "[completion\n");
    write(&root, "src/a.rs", "fn main() {}\n");
    let mut client = Client::start(test_cache(&dir.path().join("cache")), &root.canonicalize().unwrap());
    client.initialize(json!({}), json!({"generation": {"backend": "none"}})).await;
    let message = client.wait_for(Duration::from_secs(30), |m| m["method"] == "window/showMessage").await;
    let text = message["params"]["message"].as_str().unwrap();
    assert!(text.contains("kenning.toml") && text.contains("the other settings apply"), "{text}");
    let uri = client.open("src/a.rs", "rust", "fn main() {\n    \n}\n").await;
    let complete = json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 1}});
    client.request("textDocument/inlineCompletion", complete).await;
    let status = client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
    assert_eq!(status["result"]["model"], json!({"loaded": null}), "backend none, from the editor's settings: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kenning_toml_written_outside_an_editor_without_a_file_watcher_is_read() {
    // Neovim on Linux reports no file changes; Helix registers a watcher but reports only the
    // files it writes itself: `kenning train` registering an adapter in kenning.toml must still
    // reach the running server, with no message from the client, whatever it declares.
    for (name, capabilities) in [("no watcher", json!({})), ("a watcher", json!({"workspace": {"didChangeWatchedFiles": {"dynamicRegistration": true}}}))] {
        let dir = tempfile::tempdir().unwrap();
        let mut client = started(dir.path(), capabilities, json!({"generation": {"backend": "none"}})).await;
        client.wait_indexed().await;
        std::fs::write(dir.path().join("shop").join("kenning.toml"), "[completion\n").unwrap();
        let message = client
            .wait_for(Duration::from_secs(20), |m| m["method"] == "window/showMessage" && m["params"]["message"].as_str().is_some_and(|t| t.contains("kenning.toml")))
            .await;
        assert!(message["params"]["message"].as_str().unwrap().contains("invalid configuration"), "{name}: {message}");
    }
}

/// What `kenning.status` says of the model after a completion at line 2, column 5 of `uri` (which
/// loads the configured model).
async fn model_after_a_completion(client: &mut Client, uri: &str) -> Value {
    let complete = json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 1}});
    client.request("textDocument/inlineCompletion", complete).await;
    client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await["result"]["model"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_next_folders_kenning_toml_applies_when_the_first_folder_is_removed() {
    // The settings are the first folder's. Once it is removed from the workspace (VS Code's
    // "Remove Folder from Workspace"), its kenning.toml stops applying, even when the next
    // folder's is invalid, and the next folder's is read, and watched.
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("shop"), "kenning.toml", "[generation]\nbackend = \"none\"\n");
    let mut client = started(dir.path(), json!({}), json!({})).await;
    client.wait_indexed().await;
    let other = dir.path().join("other");
    write(&other, "kenning.toml", "[completion]\nmax_tokens = \"many\"\n");
    write(&other, "src/a.rs", "fn main() {}\n");
    let other = other.canonicalize().unwrap();
    client.notify("workspace/didChangeWorkspaceFolders", json!({"event": {"added": [{"uri": uri(&other), "name": "other"}], "removed": []}})).await;
    let status = client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
    assert_eq!(status["result"]["roots"].as_array().map(Vec::len), Some(2), "{status}");

    let shop = dir.path().join("shop").canonicalize().unwrap();
    client.notify("workspace/didChangeWorkspaceFolders", json!({"event": {"added": [], "removed": [{"uri": uri(&shop), "name": "shop"}]}})).await;
    let invalid = |key: &'static str| move |m: &Value| m["method"] == "window/showMessage" && m["params"]["message"].as_str().is_some_and(|t| t.contains("invalid configuration") && t.contains(key));
    let message = client.wait_for(Duration::from_secs(20), invalid("max_tokens")).await;
    assert!(message["params"]["message"].as_str().unwrap().contains("left out"), "{message}");
    // The removed folder's `backend = "none"` no longer applies: a completion loads the default model.
    let uri_a = uri(&other.join("src/a.rs"));
    client.notify("textDocument/didOpen", json!({"textDocument": {"uri": uri_a, "languageId": "rust", "version": 1, "text": "fn main() {\n    \n}\n"}})).await;
    let loaded = model_after_a_completion(&mut client, &uri_a).await;
    assert!(loaded["loaded"].as_str().is_some_and(|m| m.contains("qwen")), "{loaded}");

    // Written outside the editor, with no file watcher: polled as the first folder's was.
    std::fs::write(other.join("kenning.toml"), "[generation]\nbackend = \"none\"\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = model_after_a_completion(&mut client, &uri_a).await;
        if now == json!({"loaded": null}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the next folder's kenning.toml was not read again: {now}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kenning_toml_of_a_project_nested_in_the_folder_is_not_the_folders() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), json!({}), json!({"generation": {"backend": "none"}})).await;
    client.wait_indexed().await;
    let shop = dir.path().join("shop").canonicalize().unwrap();
    write(&shop, "vendor/lib/kenning.toml", "[completion]\nmax_tokens = \"many\"\n");
    write(&shop, "kenning.toml", "[completion]\ndebounce_ms = \"soon\"\n");
    let changes = json!({"changes": [
        {"uri": uri(&shop.join("vendor/lib/kenning.toml")), "type": 1},
        {"uri": uri(&shop.join("kenning.toml")), "type": 1},
    ]});
    client.notify("workspace/didChangeWatchedFiles", changes).await;
    let shown = |m: &Value| m["method"] == "window/showMessage" && m["params"]["message"].as_str().is_some_and(|t| t.contains("invalid configuration"));
    let message = client.wait_for(Duration::from_secs(20), shown).await;
    assert!(message["params"]["message"].as_str().unwrap().contains("debounce_ms"), "the folder's own kenning.toml is read first and only: {message}");
    client.drain();
    assert!(!client.seen.iter().any(|m| shown(m) && m.to_string().contains("max_tokens")), "{:#?}", client.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adapter_replaced_under_the_same_path_is_loaded_again() {
    // `kenning train` writes its adapter where kenning.toml already points (and one named before
    // it is trained appears later): the configuration does not change, the model must still be
    // loaded again with what is now on disk.
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    let mut options = fast_options();
    options["generation"]["model"] = json!("smollm2-135m");
    options["generation"]["adapter"] = json!(adapter);
    let mut client = started(dir.path(), json!({}), options).await;
    let uri = client.open("src/checkout.rs", "rust", &format!("{CHECKOUT}\n}}\n")).await;
    let complete = json!({"textDocument": {"uri": uri}, "position": {"line": 5, "character": 4}, "context": {"triggerKind": 1}});
    let load_error = |m: &Value| m["method"] == "window/showMessage" && m["params"]["message"].as_str().is_some_and(|t| t.contains("cannot load the model"));

    client.request("textDocument/inlineCompletion", complete.clone()).await;
    let missing = client.wait_for(Duration::from_secs(120), load_error).await;
    assert!(missing["params"]["message"].as_str().unwrap().contains("adapter_config.json"), "{missing}");

    // Now there, but of a kind kenning does not load: a different error, from a new load.
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), r#"{"fine_tune_type": "dora", "num_layers": 2, "lora_parameters": {"rank": 2, "scale": 2.0, "dropout": 0.0}}"#).unwrap();
    client.request("textDocument/inlineCompletion", complete.clone()).await;
    let not_lora = |m: &Value| load_error(m) && m["params"]["message"].as_str().is_some_and(|t| t.contains("only \"lora\" adapters"));
    let again = client.wait_for(Duration::from_secs(120), not_lora).await;
    assert!(again["params"]["message"].as_str().unwrap().contains("adapter_config.json"), "{again}");

    // Replaced the way `kenning train` does it: the old one moved aside, a new one renamed in.
    let new = dir.path().join("adapter.new");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("adapter_config.json"), r#"{"fine_tune_type": "full", "lora_parameters": {"rank": 8, "scale": 20.0}}"#).unwrap();
    std::fs::rename(&adapter, dir.path().join("adapter.old")).unwrap();
    std::fs::rename(&new, &adapter).unwrap();
    client.request("textDocument/inlineCompletion", complete).await;
    let full = |m: &Value| load_error(m) && m["params"]["message"].as_str().is_some_and(|t| t.contains("fine_tune_type \"full\""));
    client.wait_for(Duration::from_secs(120), full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_index_that_cannot_be_opened_is_reported_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w");
    shop(&root);
    let paths = test_cache(&dir.path().join("cache"));
    // A file where the index directories go: the index cannot be created.
    std::fs::write(dir.path().join("cache").join("indexes"), "not a directory").unwrap();
    let mut client = Client::start(paths, &root.canonicalize().unwrap());
    client.initialize(json!({}), json!({"generation": {"backend": "none"}})).await;
    let message = client
        .wait_for(Duration::from_secs(60), |m| m["method"] == "window/showMessage" && m["params"]["message"].as_str().unwrap().contains("indexing"))
        .await;
    assert_eq!(message["params"]["type"], 1, "an error: {message}");
    let status = client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
    let root_status = &status["result"]["roots"][0];
    assert_eq!(root_status["indexing"], false, "{status}");
    assert!(root_status["error"].as_str().is_some_and(|e| e.contains("cannot open the index")), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn indexing_reports_progress_and_ask_cites_the_right_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), progress_capable(), json!({"generation": {"backend": "none"}})).await;
    // Work-done progress: created by the server, begun and ended.
    client.wait_for(Duration::from_secs(60), |m| m["method"] == "window/workDoneProgress/create").await;
    client.wait_for(Duration::from_secs(60), |m| m["method"] == "$/progress" && m["params"]["value"]["kind"] == "begin").await;
    client.wait_for(Duration::from_secs(300), |m| m["method"] == "$/progress" && m["params"]["value"]["kind"] == "end").await;
    client.wait_indexed().await;

    // No model configured: an extractive answer that says so, citing the definition.
    let response = client
        .request(
            "workspace/executeCommand",
            json!({"command": "kenning.ask", "arguments": [{"question": "how is the loyalty discount applied to a total in cents?"}]}),
        )
        .await;
    let result = &response["result"];
    assert_eq!(result["extractive"], true, "{response}");
    assert!(result["answer"].as_str().unwrap().contains("No generated answer"), "{result}");
    let first = &result["sources"][0];
    assert_eq!(first["path"], "src/pricing.rs", "{result}");
    let def_line = 4; // `pub fn apply_loyalty_discount_cents` (1-based)
    assert!(first["startLine"].as_u64().unwrap() <= def_line && first["endLine"].as_u64().unwrap() >= def_line, "{first}");
    assert_eq!(first["uri"], uri(&client.root.join("src/pricing.rs")));

    // A file created outside the editor, reported by the client's watcher, is indexed.
    write(&client.root, "src/shipping.rs", "/// Shipping cost of a parcel from its weight in grams.\npub fn parcel_shipping_cost(grams: u32) -> u64 {\n    u64::from(grams) / 10 + 300\n}\n");
    client
        .notify("workspace/didChangeWatchedFiles", json!({"changes": [{"uri": uri(&client.root.join("src/shipping.rs")), "type": 1}]}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let response = client
            .request("workspace/executeCommand", json!({"command": "kenning.ask", "arguments": ["parcel shipping cost from weight in grams"]}))
            .await;
        if response["result"]["sources"][0]["path"] == "src/shipping.rs" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new file was not indexed: {response}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_completion_uses_a_definition_from_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), progress_capable(), fast_options()).await;
    client.wait_indexed().await;
    let uri = client.open("src/checkout.rs", "rust", &format!("{CHECKOUT}\n}}\n")).await;
    let response = client
        .request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": {"line": 5, "character": 4}, "context": {"triggerKind": 1}}),
        )
        .await;
    let items = response["result"].as_array().unwrap_or_else(|| panic!("{response}"));
    assert_eq!(items.len(), 1, "{response}");
    let text = items[0]["insertText"].as_str().unwrap();
    assert!(text.contains("apply_loyalty_discount_cents(total, percent)"), "{text:?}");
    assert!(!CHECKOUT.contains("apply_loyalty"), "the name comes from retrieval only");
    assert_eq!(items[0]["range"]["start"], json!({"line": 5, "character": 4}));

    // Helix's path: a completion item replacing the word before the cursor.
    let response = client
        .request(
            "textDocument/completion",
            json!({"textDocument": {"uri": uri}, "position": {"line": 5, "character": 4}, "context": {"triggerKind": 1}}),
        )
        .await;
    let item = &response["result"]["items"][0];
    assert!(item["textEdit"]["newText"].as_str().unwrap().contains("apply_loyalty_discount_cents("), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_edits_then_a_completion_and_a_cancelled_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), json!({}), fast_options()).await;
    let uri = client.open("src/lib.rs", "rust", "").await;
    // 1,000 one-character edits, typed one after the other.
    let typed: String = "fn add(a: u32, b: u32) -> u32 { a + b }\n".repeat(25);
    assert_eq!(typed.len(), 1_000);
    let (mut line, mut col) = (0u32, 0u32);
    for (i, c) in typed.chars().enumerate() {
        client
            .notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": uri, "version": i + 2}, "contentChanges": [
                    {"range": {"start": {"line": line, "character": col}, "end": {"line": line, "character": col}}, "text": c.to_string()}
                ]}),
            )
            .await;
        if c == '\n' {
            line += 1;
            col = 0;
        } else {
            col += 1;
        }
    }
    assert_eq!(client.server_text(&uri, 25).await, typed.trim_end());

    // A request cancelled right away is answered with RequestCancelled (-32800).
    let (id, rx) = client
        .send_request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": {"line": 25, "character": 0}, "context": {"triggerKind": 2}}),
        )
        .await;
    client.notify("$/cancelRequest", json!({"id": id})).await;
    let cancelled = tokio::time::timeout(Duration::from_secs(60), rx).await.unwrap().unwrap();
    assert_eq!(cancelled["error"]["code"], -32800, "{cancelled}");

    // And the next one completes.
    let response = client
        .request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": {"line": 25, "character": 0}, "context": {"triggerKind": 1}}),
        )
        .await;
    let text = response["result"][0]["insertText"].as_str().unwrap_or_else(|| panic!("{response}"));
    assert!(text.contains("fn "), "{text:?}");
}

/// Places an editor can send that are no place to complete (issue 12): a 2.3 MB file, a
/// 10,000-character line, the cursor at offset 0 and past the end, a document reopened as another
/// language. Each gets an answer (an empty one where nothing fits), never an error or a hang, and
/// the engine completes normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_places_get_clear_answers_and_the_engine_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), json!({}), fast_options()).await;
    let inline = |uri: &str, line: u32, character: u32| {
        json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 1}})
    };
    let answered = |response: &Value| {
        assert!(response.get("error").is_none() && response["result"].is_array(), "{response}");
        response["result"].as_array().unwrap().len()
    };

    let filler = "fn filler(a: u32) -> u32 {\n    a + 1\n}\n".repeat(60_000);
    let huge = client.open("src/huge.rs", "rust", &format!("{filler}fn main() {{\n    let x = \n}}\n")).await;
    let started_at = std::time::Instant::now();
    answered(&client.request("textDocument/inlineCompletion", inline(&huge, 180_001, 12)).await);
    assert_eq!(answered(&client.request("textDocument/inlineCompletion", inline(&huge, 999_999, 0)).await), 0, "past the end");
    eprintln!("huge file: two requests in {:?}", started_at.elapsed());

    let long = client.open("src/long.rs", "rust", &format!("const S: &str = \"{}\";\n", "x".repeat(10_000))).await;
    assert_eq!(answered(&client.request("textDocument/inlineCompletion", inline(&long, 0, 0)).await), 0, "offset 0, mid-line");
    answered(&client.request("textDocument/inlineCompletion", inline(&long, 0, 20_000)).await);
    answered(&client.request("textDocument/inlineCompletion", inline(&long, 1, 0)).await);

    // The same document closed and reopened as Python.
    let uri = client.open("src/switch.py", "rust", "fn main() {\n    \n}\n").await;
    answered(&client.request("textDocument/inlineCompletion", inline(&uri, 1, 4)).await);
    client.notify("textDocument/didClose", json!({"textDocument": {"uri": uri}})).await;
    client
        .notify("textDocument/didOpen", json!({"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "def main():\n    \n"}}))
        .await;
    answered(&client.request("textDocument/inlineCompletion", inline(&uri, 1, 4)).await);

    // And the engine is not stuck.
    let uri = client.open("src/checkout.rs", "rust", &format!("{CHECKOUT}\n}}\n")).await;
    let response = client.request("textDocument/inlineCompletion", inline(&uri, 5, 4)).await;
    assert_eq!(answered(&response), 1, "{response}");
    assert!(!response["result"][0]["insertText"].as_str().unwrap().is_empty(), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ask_with_the_model_answers_with_numbered_citations() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), json!({}), json!({"generation": {"threads": 1, "context": 2048}, "ask": {"max_tokens": 60, "sources": 3}})).await;
    client.wait_indexed().await;
    let response = client
        .request(
            "workspace/executeCommand",
            json!({"command": "kenning.ask", "arguments": ["Which function applies the loyalty discount?"]}),
        )
        .await;
    let result = &response["result"];
    assert_eq!(result["extractive"], false, "{response}");
    let answer = result["answer"].as_str().unwrap();
    assert!(answer.contains("apply_loyalty_discount_cents"), "{answer}");
    assert_eq!(result["sources"][0]["path"], "src/pricing.rs", "{result}");
    assert!(result["rendered"].as_str().unwrap().contains("[1] src/pricing.rs:"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn questions_are_answered_by_their_own_model_and_completions_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let options = json!({
        "generation": {"threads": 1, "context": 2048},
        "ask": {"max_tokens": 24, "sources": 2, "generation": {"backend": "llama", "model": "smollm2-135m", "threads": 1, "context": 2048}},
    });
    let mut client = started(dir.path(), json!({}), options).await;
    client.wait_indexed().await;
    let response = client
        .request("workspace/executeCommand", json!({"command": "kenning.ask", "arguments": ["Which function applies the loyalty discount?"]}))
        .await;
    let result = &response["result"];
    assert_eq!(result["extractive"], false, "{response}");
    let model = result["model"].as_str().unwrap_or_else(|| panic!("{response}")).to_ascii_lowercase();
    assert!(model.contains("smollm2"), "{response}");

    let uri = client.open("src/checkout.rs", "rust", &format!("{CHECKOUT}\n}}\n")).await;
    let response = client
        .request("textDocument/inlineCompletion", json!({"textDocument": {"uri": uri}, "position": {"line": 5, "character": 4}, "context": {"triggerKind": 1}}))
        .await;
    assert!(response["result"].is_array(), "{response}");
    let status = client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
    let loaded = status["result"]["model"].to_string().to_ascii_lowercase();
    assert!(loaded.contains("qwen") && !loaded.contains("smollm"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_do_not_kill_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), json!({}), json!({"generation": {"backend": "none"}})).await;
    client.send_raw(b"Content-Length: 12\r\n\r\n{not json!!}").await;
    // Unknown document, bad params: errors or empty answers, never a crash.
    let response = client
        .request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": "file:///nowhere.rs"}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}}),
        )
        .await;
    assert!(response.get("result").is_some() || response.get("error").is_some(), "{response}");
    let response = client.request("workspace/executeCommand", json!({"command": "kenning.ask", "arguments": [{"nope": 1}]})).await;
    assert_eq!(response["error"]["code"], -32602, "{response}");
    let status = client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
    assert!(status["result"].is_object(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helix_gets_completion_items_and_the_ask_code_action() {
    // The snippet users copy parses and starts kenning as `kenning serve`.
    let snippet: toml::Value = toml::from_str(include_str!("../editors/helix/languages.toml")).unwrap();
    assert_eq!(snippet["language-server"]["kenning"]["command"].as_str(), Some("kenning"));
    assert_eq!(snippet["language-server"]["kenning"]["args"][0].as_str(), Some("serve"));
    let config = snippet["language-server"]["kenning"]["config"].clone();

    // What Helix 25 declares: UTF-8/32/16 positions, work-done progress, no inline completion.
    let helix = json!({
        "general": {"positionEncodings": ["utf-8", "utf-32", "utf-16"]},
        "window": {"workDoneProgress": true},
        "textDocument": {"completion": {"completionItem": {"snippetSupport": true}}},
        "workspace": {"executeCommand": {}, "workspaceFolders": true},
    });
    let mut options: Value = serde_json::to_value(config).unwrap();
    options["generation"] = json!({"threads": 1, "context": 2048});
    options["completion"]["prompt_tokens"] = json!(700);
    options["ask"] = json!({"max_tokens": 40, "sources": 3});
    let dir = tempfile::tempdir().unwrap();
    let mut client = started(dir.path(), helix, options).await;
    client.wait_indexed().await;
    let uri = client.open("src/checkout.rs", "rust", &format!("{CHECKOUT}\n}}\n")).await;
    // Helix asks after an idle timeout with triggerKind 1 (invoked).
    let response = client
        .request(
            "textDocument/completion",
            json!({"textDocument": {"uri": uri}, "position": {"line": 5, "character": 4}, "context": {"triggerKind": 1}}),
        )
        .await;
    let item = &response["result"]["items"][0];
    assert_eq!(item["detail"], "kenning", "{response}");
    assert!(item["textEdit"]["newText"].as_str().unwrap().contains("apply_loyalty_discount_cents("), "{response}");
    assert_eq!(item["textEdit"]["range"]["end"], json!({"line": 5, "character": 4}));

    // Code action on a selection → kenning.ask, answered with a message Helix shows.
    let response = client
        .request(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": uri}, "range": {"start": {"line": 3, "character": 0}, "end": {"line": 5, "character": 0}}, "context": {"diagnostics": []}}),
        )
        .await;
    let action = &response["result"][0];
    assert_eq!(action["command"], "kenning.ask", "{response}");
    let response =
        client.request("workspace/executeCommand", json!({"command": "kenning.ask", "arguments": action["arguments"].clone()})).await;
    assert!(response["result"]["sources"].as_array().is_some_and(|s| !s.is_empty()), "{response}");
    let shown = client.wait_for(Duration::from_secs(60), |m| m["method"] == "window/showMessage" && m["params"]["type"] == 3).await;
    assert!(shown["params"]["message"].as_str().unwrap().contains("src/"), "{shown}");
}

/// The real `kenning serve` over stdio (issue 13): broken frames — a body sent without a header, a
/// header without a length, a body shorter than its length — lose only themselves, a request
/// with an unusable id or bad params gets an InvalidRequest error (with `id: null` when the id is
/// the problem), and `exit` ends the process: 0 after `shutdown`, 1 without.
#[test]
fn serve_over_stdio_survives_broken_frames_and_exits_on_exit() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let paths = test_cache(&dir.path().join("cache"));
    let root = dir.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_kenning"))
            .args(["--cache-dir", paths.cache().to_str().unwrap(), "serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    fn read_reply(out: &mut impl BufRead, id: impl Into<Value>) -> Value {
        let id = id.into();
        loop {
            let v = read_frame(out).expect("the server closed its output");
            if v["id"] == id && v.get("method").is_none() {
                return v;
            }
        }
    }
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"processId": null, "rootUri": uri(&root), "capabilities": {}, "initializationOptions": {"generation": {"backend": "none"}}}});

    let mut child = spawn();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(frame(&initialize).as_bytes()).unwrap();
    assert!(read_reply(&mut out, 1)["result"]["capabilities"].is_object());
    let status = |id: i64| frame(&json!({"jsonrpc": "2.0", "id": id, "method": "workspace/executeCommand", "params": {"command": "kenning.status", "arguments": []}}));
    // A body with no header; a header with no length and its body; a body shorter than declared.
    let lost = json!({"jsonrpc": "2.0", "id": 90, "method": "shutdown"}).to_string();
    write!(stdin, "{lost}{}", status(2)).unwrap();
    stdin.flush().unwrap();
    assert!(read_reply(&mut out, 2)["result"].is_object(), "answered after a body without a header");
    write!(stdin, "Content-Type: x\r\n\r\n{lost}{}", status(3)).unwrap();
    stdin.flush().unwrap();
    assert!(read_reply(&mut out, 3)["result"].is_object(), "answered after a header without a length");
    write!(stdin, "Content-Length: 400\r\n\r\n{{\"jsonrpc\":\"2.0\"}}{}", status(4)).unwrap();
    stdin.flush().unwrap();
    assert!(read_reply(&mut out, 4)["result"].is_object(), "answered after a body shorter than its length");
    // Requests that are not valid JSON-RPC requests are answered with an error, and the session goes on.
    write!(stdin, "{}", frame(&json!({"jsonrpc": "2.0", "id": 1.5, "method": "workspace/executeCommand", "params": {"command": "kenning.status"}}))).unwrap();
    stdin.flush().unwrap();
    let reply = read_reply(&mut out, Value::Null);
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("1.5"), "{reply}");
    write!(stdin, "{}", frame(&json!({"jsonrpc": "2.0", "id": 6, "method": "workspace/executeCommand", "params": 3}))).unwrap();
    stdin.flush().unwrap();
    let reply = read_reply(&mut out, 6);
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    stdin.write_all(status(7).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(read_reply(&mut out, 7)["result"].is_object(), "answered after invalid requests");

    stdin.write_all(frame(&json!({"jsonrpc": "2.0", "id": 5, "method": "shutdown"})).as_bytes()).unwrap();
    read_reply(&mut out, 5);
    stdin.write_all(frame(&json!({"jsonrpc": "2.0", "method": "exit"})).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let wait = |child: &mut std::process::Child| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(wait(&mut child), Some(0), "exit after shutdown");
    drop(stdin);

    let mut child = spawn();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(frame(&initialize).as_bytes()).unwrap();
    read_reply(&mut out, 1);
    stdin.write_all(frame(&json!({"jsonrpc": "2.0", "method": "exit"})).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert_eq!(wait(&mut child), Some(1), "exit without shutdown");
}

/// Publishes the index of `team` to `store` (`kenning index --publish`) from a machine whose cache
/// is `cache`.
fn publish(team: &Path, store: &Path, cache: &Path) {
    test_cache(cache);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kenning"))
        .args(["index", team.to_str().unwrap(), "--publish", store.to_str().unwrap(), "--json"])
        .env("KENNING_CACHE_DIR", cache)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A workspace over the team's shared index (a directory store here; `shared_e2e` drives S3): the
/// server pulls it when the folder opens, indexes only what differs, answers from both, and says
/// which publication it uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_index_serves_the_unchanged_files_and_the_status_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team");
    shop(&team);
    let store = dir.path().join("store");
    publish(&team, &store, &dir.path().join("publisher-cache"));

    // This machine's checkout: the cart edited.
    let root = dir.path().join("shop");
    shop(&root);
    write(&root, "src/cart.rs", "//! The shopping cart.\n\n/// Removes every item whose name matches.\npub fn remove_items_named(items: &mut Vec<String>, name: &str) {\n    items.retain(|i| i != name);\n}\n");
    let root = root.canonicalize().unwrap();
    let mut client = Client::start(test_cache(&dir.path().join("cache")), &root);
    client.initialize(progress_capable(), json!({"generation": {"backend": "none"}, "index": {"shared": store.to_str().unwrap()}})).await;
    let status = client.wait_indexed().await;
    let shared = &status["roots"][0]["shared"];
    assert_eq!(shared["uri"], store.to_str().unwrap(), "{status}");
    assert_eq!((shared["files"].as_u64(), shared["offline"].clone()), (Some(3), Value::Null), "{status}");
    assert!(shared["pulled"].as_u64().unwrap() > 0, "{status}");

    // The unchanged pricing file is answered from the shared index, the edited cart from here.
    for (question, path, text) in [
        ("how is the loyalty discount applied to a total in cents?", "src/pricing.rs", "apply_loyalty_discount_cents"),
        ("remove the items with a given name from the cart", "src/cart.rs", "remove_items_named"),
    ] {
        let response = client.request("workspace/executeCommand", json!({"command": "kenning.ask", "arguments": [question]})).await;
        let sources = response["result"]["sources"].as_array().unwrap();
        assert_eq!(sources[0]["path"], path, "{response}");
        assert!(response["result"]["answer"].as_str().unwrap().contains(text), "{response}");
        assert!(!response.to_string().contains("total_cents(items: &[Item])"), "the shared version of the edited cart: {response}");
    }
}

/// A running editor follows the team's shared index: a store with nothing published yet is tried
/// again (every file is indexed here meanwhile), a publication that appears is put under the index
/// (the files it holds as they are here leave the local index), a newer one replaces it (a file the
/// developer pulled is taken from it, not indexed here), and a shared index configured away leaves
/// every file to the local index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_editor_follows_the_shared_index_as_it_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team");
    shop(&team);
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // Each publication from a CI machine of its own (a fresh cache): the second one pulls the
    // first before it publishes over it.
    let publish = |machine: &str| publish(&team, &store, &dir.path().join(machine));
    let root = dir.path().join("shop");
    shop(&root);
    let root = root.canonicalize().unwrap();
    let mut client = Client::start(test_cache(&dir.path().join("cache")), &root);
    let options = json!({"generation": {"backend": "none"}, "index": {"shared": store.to_str().unwrap(), "shared_check_secs": 1}});
    client.initialize(progress_capable(), options).await;

    // Polls the status until `done` holds for the folder (not indexing).
    async fn until(client: &mut Client, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let status = client.request("workspace/executeCommand", json!({"command": "kenning.status", "arguments": []})).await;
            let folder = status["result"]["roots"][0].clone();
            if folder["indexing"] == json!(false) && done(&folder) {
                return folder;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let chunks = |folder: &Value| folder["index"]["chunks"].as_u64().unwrap_or(0);

    // Nothing published yet: the store is named with why it is not used, every file is indexed here.
    let folder = until(&mut client, "nothing published: a local index", |f| chunks(f) > 0 && f["embedded"] == json!(true)).await;
    assert!(folder["shared"]["error"].as_str().is_some_and(|e| e.contains("publish")), "{folder}");

    // Published: within seconds it is under the index, and this checkout's files, all as published,
    // leave the local index (their rows stay, without chunks).
    publish("ci-1");
    let folder = until(&mut client, "the first publication under the index", |f| f["shared"]["files"] == json!(3) && chunks(f) == 0).await;
    assert_eq!(folder["shared"]["offline"], Value::Null, "{folder}");
    let ask = async |client: &mut Client, question: &str| {
        let response = client.request("workspace/executeCommand", json!({"command": "kenning.ask", "arguments": [question]})).await;
        (response["result"]["sources"][0]["path"].as_str().unwrap_or_default().to_owned(), response["result"]["answer"].as_str().unwrap_or_default().to_owned())
    };
    let (path, answer) = ask(&mut client, "how is the loyalty discount applied to a total in cents?").await;
    assert_eq!(path, "src/pricing.rs");
    assert!(answer.contains("apply_loyalty_discount_cents"), "{answer}");

    // The team adds refunds and publishes; this developer pulls the same change: the new file is
    // taken from the newer publication, not embedded here.
    let refunds = "//! Refunds.\n\n/// Refunds part of a paid total, in cents, keeping a restocking fee.\npub fn refund_minus_restocking_fee_cents(paid_cents: u64, fee_cents: u64) -> u64 {\n    paid_cents.saturating_sub(fee_cents)\n}\n";
    write(&team, "src/refunds.rs", refunds);
    publish("ci-2");
    write(&root, "src/refunds.rs", refunds);
    client.notify("workspace/didChangeWatchedFiles", json!({"changes": [{"uri": uri(&root.join("src/refunds.rs")), "type": 1}]})).await;
    let folder = until(&mut client, "the newer publication under the index", |f| f["shared"]["files"] == json!(4) && f["index"]["files"] == json!(4) && chunks(f) == 0).await;
    assert!(folder["shared"]["pulled"].as_u64().unwrap() > 0, "{folder}");
    let (path, answer) = ask(&mut client, "refund a paid total but keep the restocking fee").await;
    assert_eq!(path, "src/refunds.rs");
    assert!(answer.contains("refund_minus_restocking_fee_cents"), "{answer}");

    // The shared index configured away: every file is indexed here again.
    client.notify("workspace/didChangeConfiguration", json!({"settings": {"index": {"shared": null}}})).await;
    let folder = until(&mut client, "no shared index any more", |f| f["shared"].is_null() && chunks(f) > 0 && f["embedded"] == json!(true)).await;
    assert_eq!(folder["index"]["files"], json!(4), "{folder}");
    let (path, _) = ask(&mut client, "refund a paid total but keep the restocking fee").await;
    assert_eq!(path, "src/refunds.rs");
}
