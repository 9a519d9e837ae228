//! Models by name, as a user gives them: `hf:` files pulled from a hub on loopback
//! (`tests/hub_server.py`: the hub's URL layout, redirect and headers, with faults on demand) into a
//! Hugging Face cache, and `ollama:` models read from an Ollama store built here. The model is the
//! bundled SmolLM2-135M GGUF; what it generates through each name is compared with the bundled name.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const REPO: &str = "test-owner/SmolLM2-135M-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const COMMIT: &str = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";

fn bundled_model() -> PathBuf {
    kenning::models::resolve("smollm2-135m", &kenning::paths::Paths::from_env()).expect("the bundled SmolLM2 model: run scripts/setup")
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The hub on loopback, stopped when dropped.
struct HubServer {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for HubServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HubServer {
    /// Serves the bundled model as `REPO/FILE`.
    fn start(faults: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("root").join(REPO);
        std::fs::create_dir_all(&repo).unwrap();
        std::os::unix::fs::symlink(bundled_model(), repo.join(FILE)).unwrap();
        let port_file = dir.path().join("port");
        let log = dir.path().join("requests.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hub_server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(faults)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the hub server");
        let start = Instant::now();
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the hub server did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        HubServer { child, url: format!("http://127.0.0.1:{port}"), log, _dir: dir }
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

/// A user's machine: a kenning cache with the assets, a Hugging Face home and an Ollama store.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        common::test_cache(&dir.path().join("kenning"));
        Machine { dir }
    }

    fn hf_home(&self) -> PathBuf {
        self.dir.path().join("huggingface")
    }

    fn ollama(&self) -> PathBuf {
        self.dir.path().join("ollama")
    }

    /// `kenning ARGS` on this machine: its caches and stores, `hub` as the endpoint (none: one that
    /// cannot be reached), and nothing from the developer's own Hugging Face settings.
    fn command(&self, hub: Option<&HubServer>, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kenning"));
        command
            .args(args)
            .env("KENNING_CACHE_DIR", self.dir.path().join("kenning"))
            .env("HF_HOME", self.hf_home())
            .env("OLLAMA_MODELS", self.ollama())
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            // Nothing listens on port 9 (discard): a hub that cannot be reached.
            .env("HF_ENDPOINT", hub.map_or("http://127.0.0.1:9".to_owned(), |h| h.url.clone()));
        command
    }

    fn kenning(&self, hub: Option<&HubServer>, args: &[&str]) -> Output {
        self.command(hub, args).output().unwrap()
    }

    fn blob_dir(&self) -> PathBuf {
        self.hf_home().join("hub").join(format!("models--{}", REPO.replace('/', "--"))).join("blobs")
    }
}

fn text(output: &Output) -> String {
    format!("status {}\nstdout: {}\nstderr: {}", output.status, String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn generate(machine: &Machine, hub: Option<&HubServer>, model: &str, extra_env: &[(&str, &str)]) -> Output {
    let mut command = machine.command(hub, &["generate", "--model", model, "--max-tokens", "12", "--threads", "2", "-p", "The capital of France is"]);
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn a_hub_file_is_pulled_into_the_hub_cache_once_and_runs_offline() {
    let hub = HubServer::start(&[]);
    let machine = Machine::new();
    let name = format!("hf:{REPO}/{FILE}");
    // `kenning status` says where the configured model is, without fetching it.
    let ws = machine.dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("kenning.toml"), format!("[generation]\nmodel = \"{name}\"\n")).unwrap();
    let status = |machine: &Machine| {
        let out = machine.kenning(None, &["status", "-w", ws.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["models"][0].clone()
    };
    let before = status(&machine);
    assert!(before["ok"] == false && before["state"].as_str().unwrap().contains(&format!("kenning models pull {name}")), "{before}");
    assert!(hub.requests().is_empty(), "status asked the hub: {:?}", hub.requests());
    let pulled = machine.kenning(Some(&hub), &["models", "pull", &name]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    let after = status(&machine);
    assert!(after["ok"] == true && after["state"].as_str().unwrap().ends_with(FILE), "{after}");

    // The hub's cache layout: the blob named by its sha256, the snapshot linking to it, the ref.
    let sha = sha256(&bundled_model());
    let repo = machine.hf_home().join("hub").join(format!("models--{}", REPO.replace('/', "--")));
    assert_eq!(sha256(&repo.join("blobs").join(&sha)), sha);
    let snapshot = repo.join("snapshots").join(COMMIT).join(FILE);
    assert_eq!(std::fs::read_link(&snapshot).unwrap(), Path::new("../../blobs").join(&sha));
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), COMMIT);
    assert!(String::from_utf8_lossy(&pulled.stdout).contains(&snapshot.display().to_string()), "{}", text(&pulled));
    let downloads = |hub: &HubServer| hub.requests().iter().filter(|r| r.starts_with("GET /lfs/")).count();
    assert_eq!(downloads(&hub), 1, "{:?}", hub.requests());

    // A second pull asks the hub what `main` is, and downloads nothing.
    let again = machine.kenning(Some(&hub), &["models", "pull", &name]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in the cache"), "{}", text(&again));
    assert_eq!(downloads(&hub), 1, "{:?}", hub.requests());

    // Offline, a pull of a cached file answers from the cache.
    let offline_pull = machine.command(None, &["models", "pull", &name]).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(offline_pull.status.success() && offline_pull.stdout == again.stdout, "{}", text(&offline_pull));

    // Generation through the hub name, offline, matches the bundled name (greedy, same file).
    let asked_before = hub.requests().len();
    let by_hub = generate(&machine, Some(&hub), &name, &[("HF_HUB_OFFLINE", "1")]);
    assert!(by_hub.status.success(), "{}", text(&by_hub));
    let by_commit = generate(&machine, None, &format!("{name}@{COMMIT}"), &[]);
    assert!(by_commit.status.success(), "{}", text(&by_commit));
    let bundled = generate(&machine, None, "smollm2-135m", &[]);
    assert!(bundled.status.success(), "{}", text(&bundled));
    assert!(!bundled.stdout.is_empty());
    assert_eq!(by_hub.stdout, bundled.stdout);
    assert_eq!(by_commit.stdout, bundled.stdout);
    assert_eq!(hub.requests().len(), asked_before, "a cached file is used without asking the hub");

    // A command that needs a model the cache lacks downloads it and says so on stderr.
    let fresh = Machine::new();
    let by_name = generate(&fresh, Some(&hub), &name, &[]);
    assert!(by_name.status.success(), "{}", text(&by_name));
    assert_eq!(by_name.stdout, bundled.stdout);
    let err = String::from_utf8_lossy(&by_name.stderr);
    assert!(err.contains(&format!("downloading {name}: 93 of 93 MB")), "{}", text(&by_name));

    // `kenning models list` names it as it loads.
    let list = machine.kenning(None, &["models", "list"]);
    assert!(list.status.success(), "{}", text(&list));
    assert!(String::from_utf8_lossy(&list.stdout).lines().any(|l| l.starts_with(&format!("{name} "))), "{}", text(&list));
}

#[test]
fn a_cut_download_continues_where_it_stopped() {
    // Within one pull: the connection closes after 3 MB, the next request asks for the rest.
    let cut = 3 << 20;
    let hub = HubServer::start(&["--cut-after", &cut.to_string()]);
    let machine = Machine::new();
    let name = format!("hf:{REPO}/{FILE}");
    let pulled = machine.kenning(Some(&hub), &["models", "pull", &name]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    let ranges: Vec<String> = hub.requests().into_iter().filter(|r| r.starts_with("GET /lfs/")).collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges[0].ends_with(" - auth=no") && ranges[1].ends_with(&format!(" bytes={cut}- auth=no")), "{ranges:?}");
    let sha = sha256(&bundled_model());
    assert_eq!(sha256(&machine.blob_dir().join(&sha)), sha);

    // Across processes: a partial file left by a killed pull is continued, not started again.
    let hub = HubServer::start(&[]);
    let machine = Machine::new();
    std::fs::create_dir_all(machine.blob_dir()).unwrap();
    let head = 1 << 20;
    std::fs::write(machine.blob_dir().join(format!("{sha}.incomplete")), &std::fs::read(bundled_model()).unwrap()[..head]).unwrap();
    let pulled = machine.kenning(Some(&hub), &["models", "pull", &name]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    let ranges: Vec<String> = hub.requests().into_iter().filter(|r| r.starts_with("GET /lfs/")).collect();
    assert_eq!(ranges, vec![format!("GET /lfs/{sha} bytes={head}- auth=no")]);
    assert_eq!(sha256(&machine.blob_dir().join(&sha)), sha);
    assert!(!machine.blob_dir().join(format!("{sha}.incomplete")).exists());

    // A server that ignores Range sends the whole file again: it is started over, not appended.
    let hub = HubServer::start(&["--cut-after", &cut.to_string(), "--no-range"]);
    let machine = Machine::new();
    let pulled = machine.kenning(Some(&hub), &["models", "pull", &name]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    let ranges: Vec<String> = hub.requests().into_iter().filter(|r| r.starts_with("GET /lfs/")).collect();
    assert!(ranges.len() == 2 && ranges[1].contains(&format!("bytes={cut}-")), "{ranges:?}");
    assert_eq!(sha256(&machine.blob_dir().join(&sha)), sha);
}

#[test]
fn two_pulls_at_once_download_the_file_once() {
    // About 3 s for the file, so that the second pull starts while the first is downloading.
    let hub = HubServer::start(&["--slow-ms", "30"]);
    let machine = Machine::new();
    let name = format!("hf:{REPO}/{FILE}");
    let spawn = || machine.command(Some(&hub), &["models", "pull", &name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let first = spawn();
    let start = Instant::now();
    while !hub.requests().iter().any(|r| r.starts_with("GET /lfs/")) {
        assert!(start.elapsed() < Duration::from_secs(60), "the first pull did not start downloading");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = spawn();
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(first.status.success(), "{}", text(&first));
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(first.stdout, second.stdout, "both name the same file");
    assert_eq!(hub.requests().iter().filter(|r| r.starts_with("GET /lfs/")).count(), 1, "{:?}", hub.requests());
    let sha = sha256(&bundled_model());
    assert_eq!(sha256(&machine.blob_dir().join(&sha)), sha);
}

#[test]
fn a_download_with_the_wrong_hash_is_refused_and_removed() {
    let name = format!("hf:{REPO}/{FILE}");
    let sha = sha256(&bundled_model());
    let nothing_left = |machine: &Machine| {
        let left: Vec<String> = std::fs::read_dir(machine.blob_dir()).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
        assert!(!machine.hf_home().join("hub").join(format!("models--{}", REPO.replace('/', "--"))).join("snapshots").exists());
    };

    // The bytes differ from the hub's LFS hash.
    let hub = HubServer::start(&["--corrupt"]);
    let machine = Machine::new();
    let pulled = machine.kenning(Some(&hub), &["models", "pull", &name]);
    assert!(!pulled.status.success(), "{}", text(&pulled));
    let err = String::from_utf8_lossy(&pulled.stderr);
    assert!(err.contains(&format!("expected {sha}")) && err.contains("removed"), "{}", text(&pulled));
    nothing_left(&machine);
    // Loading by that name fails the same way, and generates nothing.
    let by_name = generate(&machine, Some(&hub), &name, &[]);
    assert!(!by_name.status.success() && by_name.stdout.is_empty(), "{}", text(&by_name));
    nothing_left(&machine);

    // The hub's file is not the pinned one: refused before a byte is downloaded.
    let hub = HubServer::start(&[]);
    let pinned = "0".repeat(64);
    let pulled = machine.kenning(Some(&hub), &["models", "pull", &name, "--sha256", &pinned]);
    assert!(!pulled.status.success(), "{}", text(&pulled));
    assert!(String::from_utf8_lossy(&pulled.stderr).contains(&format!("now sha256 {sha}, not the pinned {pinned}")), "{}", text(&pulled));
    assert!(!hub.requests().iter().any(|r| r.starts_with("GET ")), "{:?}", hub.requests());
    nothing_left(&machine);
    // Pulled, then asked for under another pin: the cached file is not taken for it.
    assert!(machine.kenning(Some(&hub), &["models", "pull", &name]).status.success());
    let pulled = machine.kenning(Some(&hub), &["models", "pull", &name, "--sha256", &pinned]);
    assert!(!pulled.status.success(), "{}", text(&pulled));
}

#[test]
fn without_the_hub_the_error_names_the_file_and_the_command() {
    let machine = Machine::new();
    let name = format!("hf:{REPO}/{FILE}");
    // Offline by choice.
    let offline = generate(&machine, None, &name, &[("HF_HUB_OFFLINE", "1")]);
    assert!(!offline.status.success(), "{}", text(&offline));
    let err = String::from_utf8_lossy(&offline.stderr);
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains(&format!("kenning models pull {name}")), "{}", text(&offline));
    // Offline because nothing answers.
    let unreachable = generate(&machine, None, &name, &[]);
    assert!(!unreachable.status.success(), "{}", text(&unreachable));
    let err = String::from_utf8_lossy(&unreachable.stderr);
    assert!(err.contains("cannot download") && err.contains(&format!("kenning models pull {name}")), "{}", text(&unreachable));
    // A gated repository without a token; with one, it goes to the hub, not to the storage the
    // hub redirects to (another host name).
    let hub = HubServer::start(&["--token", "secret-token", "--lfs-host", "localhost"]);
    let denied = machine.kenning(Some(&hub), &["models", "pull", &name]);
    assert!(!denied.status.success(), "{}", text(&denied));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401") && String::from_utf8_lossy(&denied.stderr).contains("HF_TOKEN"), "{}", text(&denied));
    let allowed = machine.command(Some(&hub), &["models", "pull", &name]).env("HF_TOKEN", "secret-token").output().unwrap();
    assert!(allowed.status.success(), "{}", text(&allowed));
    // A wrong token: the error says it was sent and refused.
    let refused = machine.command(Some(&hub), &["models", "pull", &format!("hf:{REPO}/other.gguf")]).env("HF_TOKEN", "wrong-token").output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("was sent and refused"), "{}", text(&refused));
    let requests = hub.requests();
    assert!(requests.iter().any(|r| r.starts_with("HEAD ") && r.ends_with("auth=yes")), "{requests:?}");
    let downloads: Vec<&String> = requests.iter().filter(|r| r.starts_with("GET /lfs/")).collect();
    assert!(!downloads.is_empty() && downloads.iter().all(|r| r.ends_with("auth=no")), "{requests:?}");
}

#[test]
fn an_ollama_model_loads_from_ollamas_store_by_name() {
    let machine = Machine::new();
    let store = machine.ollama();
    let model = bundled_model();
    let sha = sha256(&model);
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    std::fs::create_dir_all(store.join("manifests/registry.ollama.ai/library/smollm2")).unwrap();
    let blob = store.join(format!("blobs/sha256-{sha}"));
    if std::fs::hard_link(&model, &blob).is_err() {
        std::fs::copy(&model, &blob).unwrap();
    }
    let size = std::fs::metadata(&model).unwrap().len();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 485},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{sha}"), "size": size},
            {"mediaType": "application/vnd.ollama.image.template", "digest": format!("sha256:{}", "d".repeat(64)), "size": 100},
        ]
    });
    std::fs::write(store.join("manifests/registry.ollama.ai/library/smollm2/135m"), manifest.to_string()).unwrap();

    let by_ollama = generate(&machine, None, "ollama:smollm2:135m", &[]);
    assert!(by_ollama.status.success(), "{}", text(&by_ollama));
    let bundled = generate(&machine, None, "smollm2-135m", &[]);
    assert!(!bundled.stdout.is_empty());
    assert_eq!(by_ollama.stdout, bundled.stdout);

    let list = machine.kenning(None, &["models", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).lines().any(|l| l.starts_with("ollama:smollm2:135m ")), "{}", text(&list));

    // A tag that was never pulled: the error says how to pull it.
    let missing = generate(&machine, None, "ollama:smollm2:360m", &[]);
    assert!(!missing.status.success(), "{}", text(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ollama pull smollm2:360m"), "{}", text(&missing));
}

/// `kenning serve` on stdio as an editor drives it: requests the server sends (progress tokens)
/// are answered, `$/progress` notifications kept, replies kept by id and waited for with a deadline.
struct Lsp {
    child: Child,
    stdin: std::sync::Arc<std::sync::Mutex<std::process::ChildStdin>>,
    replies: std::sync::mpsc::Receiver<serde_json::Value>,
    kept: std::collections::HashMap<i64, serde_json::Value>,
    progress: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Lsp {
    fn start(machine: &Machine, hub: &HubServer, log: &Path) -> Self {
        use std::io::BufReader;
        let mut child = machine
            .command(Some(hub), &["serve"])
            .env("KENNING_LOG", "kenning=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let stdin = std::sync::Arc::new(std::sync::Mutex::new(child.stdin.take().unwrap()));
        let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, replies) = std::sync::mpsc::channel::<serde_json::Value>();
        let stdout = child.stdout.take().unwrap();
        let (server_stdin, seen_progress) = (std::sync::Arc::clone(&stdin), std::sync::Arc::clone(&progress));
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            while let Some(v) = common::lsp::read_frame(&mut out) {
                match (v["method"].as_str(), v.get("id")) {
                    (Some(_), Some(id)) => write_frame(&server_stdin, serde_json::json!({"jsonrpc": "2.0", "id": id, "result": null})),
                    (Some("$/progress"), None) => seen_progress.lock().unwrap().push(v),
                    (Some(_), None) => {}
                    (None, _) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Lsp { child, stdin, replies, kept: std::collections::HashMap::new(), progress }
    }

    fn send(&self, v: serde_json::Value) {
        write_frame(&self.stdin, v);
    }

    fn reply(&mut self, id: i64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(v) = self.kept.remove(&id) {
                return v;
            }
            let v = self.replies.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| panic!("no reply {id} within 300 s"));
            if let Some(got) = v["id"].as_i64() {
                self.kept.insert(got, v);
            }
        }
    }

    fn request(&mut self, id: i64, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.send(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.reply(id)
    }

    fn stop(mut self) {
        self.request(1000, "shutdown", serde_json::Value::Null);
        self.send(serde_json::json!({"jsonrpc": "2.0", "method": "exit"}));
        let _ = self.child.wait();
    }
}

fn write_frame(stdin: &std::sync::Mutex<std::process::ChildStdin>, v: serde_json::Value) {
    use std::io::Write;
    let mut stdin = stdin.lock().unwrap();
    stdin.write_all(common::lsp::frame(&v).as_bytes()).unwrap();
    stdin.flush().unwrap();
}

/// Waits until the hub has been asked for the file's bytes.
fn wait_for_download(hub: &HubServer) {
    let start = Instant::now();
    while !hub.requests().iter().any(|r| r.starts_with("GET /lfs/")) {
        assert!(start.elapsed() < Duration::from_secs(60), "the server did not start the download");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_language_server_downloads_a_hub_model_it_is_configured_with_and_completes() {
    // About 3 s for the 94 MB file: long enough to ask the server what it is doing meanwhile.
    let hub = HubServer::start(&["--slow-ms", "30"]);
    let machine = Machine::new();
    let root = machine.dir.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("add.py"), "def add(a, b):\n    return a + b\n").unwrap();
    let log = machine.dir.path().join("server.log");
    let mut lsp = Lsp::start(&machine, &hub, &log);
    let root_uri = format!("file://{}", root.canonicalize().unwrap().display());
    let model = format!("hf:{REPO}/{FILE}");
    let options = serde_json::json!({
        "generation": {"model": model, "threads": 1, "context": 1024},
        "completion": {"retrieval": false, "debounce_ms": 0, "max_tokens": 8},
        "index": {"embeddings": false},
    });
    let capabilities = serde_json::json!({"window": {"workDoneProgress": true}});
    let init = lsp.request(1, "initialize", serde_json::json!({"processId": null, "rootUri": root_uri, "capabilities": capabilities, "initializationOptions": options}));
    assert!(init["result"]["capabilities"].is_object());
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    let uri = format!("{root_uri}/add.py");
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "def add(a, b):\n    return "}}}));
    let inline = serde_json::json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 11}, "context": {"triggerKind": 1}});
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "textDocument/inlineCompletion", "params": inline}));
    // While the model downloads, the status answers at once and says so.
    wait_for_download(&hub);
    let status = lsp.request(3, "workspace/executeCommand", serde_json::json!({"command": "kenning.status", "arguments": []}));
    assert_eq!(status["result"]["model"], serde_json::json!({"loading": model}), "{status}");
    // The editor cancels that request as the user types on, and asks again: the download goes on,
    // once, and the new request is answered when it is in.
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}}));
    let completion = lsp.request(6, "textDocument/inlineCompletion", inline);
    assert!(completion["result"].is_array(), "{completion}");
    let status = lsp.request(5, "workspace/executeCommand", serde_json::json!({"command": "kenning.status", "arguments": []}));
    assert!(status["result"]["model"]["loaded"].as_str().is_some_and(|m| m.contains("SmolLM2")), "{status}");
    let progress = std::sync::Arc::clone(&lsp.progress);

    // Downloaded by the server into the Hugging Face cache, with its progress in the log.
    let sha = sha256(&bundled_model());
    assert_eq!(sha256(&machine.blob_dir().join(&sha)), sha);
    assert_eq!(hub.requests().iter().filter(|r| r.starts_with("GET /lfs/")).count(), 1, "{:?}", hub.requests());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains(&format!("downloading {model}")), "{log}");
    // The editor showed it: a `$/progress` begun for the download, reported, and ended.
    let start = Instant::now();
    while !progress.lock().unwrap().iter().any(|p| p["params"]["value"]["kind"] == "end" && p["params"]["value"]["message"].as_str().is_some_and(|m| m.ends_with(" MB"))) {
        assert!(start.elapsed() < Duration::from_secs(30), "no end of the download's progress: {:?}", progress.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    lsp.stop();
    let progress = progress.lock().unwrap();
    let begin = progress.iter().find(|p| {
        let v = &p["params"]["value"];
        v["kind"] == "begin" && v["title"].as_str().is_some_and(|t| t.contains(&format!("downloading {model}")))
    });
    let token = &begin.unwrap_or_else(|| panic!("{progress:?}"))["params"]["token"];
    let values: Vec<&serde_json::Value> = progress.iter().filter(|p| p["params"]["token"] == *token).map(|p| &p["params"]["value"]).collect();
    assert!(values.iter().any(|v| v["kind"] == "report" && v["message"].as_str().is_some_and(|m| m.ends_with(" of 93 MB"))), "{values:?}");
    assert_eq!(values.last().map(|v| &v["kind"]), Some(&serde_json::json!("end")), "{values:?}");
}

#[test]
fn a_download_stops_when_the_configuration_names_another_model() {
    // About 19 s for the file: the switch comes long before it could end.
    let hub = HubServer::start(&["--slow-ms", "200"]);
    let machine = Machine::new();
    let root = machine.dir.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    let log = machine.dir.path().join("server.log");
    let mut lsp = Lsp::start(&machine, &hub, &log);
    let root_uri = format!("file://{}", root.canonicalize().unwrap().display());
    let model = format!("hf:{REPO}/{FILE}");
    let options = serde_json::json!({
        "generation": {"model": model, "threads": 1, "context": 1024},
        "completion": {"retrieval": false, "debounce_ms": 0, "max_tokens": 4},
        "index": {"embeddings": false},
    });
    lsp.request(1, "initialize", serde_json::json!({"processId": null, "rootUri": root_uri, "capabilities": {}, "initializationOptions": options}));
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    let uri = format!("{root_uri}/add.py");
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "def add(a, b):\n    return "}}}));
    let inline = serde_json::json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 11}, "context": {"triggerKind": 1}});
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "textDocument/inlineCompletion", "params": inline}));
    wait_for_download(&hub);

    // The user picks the bundled model instead: it loads without waiting for the download.
    let switched = Instant::now();
    lsp.send(serde_json::json!({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", "params": {"settings": {"generation": {"model": "qwen2.5-coder-0.5b"}}}}));
    lsp.request(3, "textDocument/inlineCompletion", inline);
    let status = lsp.request(4, "workspace/executeCommand", serde_json::json!({"command": "kenning.status", "arguments": []}));
    assert!(status["result"]["model"]["loaded"].as_str().is_some_and(|m| m.contains("qwen2.5-coder")), "{status}");
    assert!(switched.elapsed() < Duration::from_secs(12), "the new model waited for the old download: {:?}", switched.elapsed());
    lsp.stop();

    // The partial file is kept for the next pull; no blob was made.
    let sha = sha256(&bundled_model());
    let partial = std::fs::metadata(machine.blob_dir().join(format!("{sha}.incomplete"))).map(|m| m.len()).unwrap_or(0);
    assert!(partial > 0 && partial < std::fs::metadata(bundled_model()).unwrap().len(), "partial: {partial}");
    assert!(!machine.blob_dir().join(&sha).exists());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("was stopped: the configuration names another model"), "{log}");
}
