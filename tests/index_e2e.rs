//! End-to-end indexing tests on real parts: the pinned MiniLM model on ONNX Runtime, a real Lance
//! dataset in a temp dir, the real `kenning` binary. They need the assets that `scripts/setup`
//! installs and fail with its error message when they are missing.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::write;
use kenning::assets::Assets;
use kenning::embed::{Embedder, FastEmbedder, Purpose};
use kenning::index::{IndexOptions, IndexSummary, NoProgress, index_workspace};
use kenning::paths::Paths;
use kenning::retrieve::{SearchRequest, search};
use kenning::store::{Filter, Store};

fn embedder() -> Arc<dyn Embedder> {
    match FastEmbedder::load(&Assets::new(Paths::from_env().assets()), 0) {
        Ok(e) => Arc::new(e),
        Err(e) => panic!("{e}"),
    }
}

/// A small polyglot project with one obvious answer per natural-language question.
fn fixture_repo(root: &Path) {
    write(root, ".gitignore", "build/\n");
    write(
        root,
        "src/config.rs",
        r#"use std::path::Path;

/// Settings of the service.
pub struct Config {
    pub port: u16,
    pub data_dir: String,
}

/// Reads the settings from a TOML file.
pub fn load_config(path: &Path) -> std::io::Result<Config> {
    let text = std::fs::read_to_string(path)?;
    let port = text.lines().find_map(|l| l.strip_prefix("port = ")).and_then(|p| p.parse().ok()).unwrap_or(8080);
    Ok(Config { port, data_dir: "data".into() })
}
"#,
    );
    let mut math = String::from("//! Number theory helpers.\n\n");
    math.push_str("/// Returns true when `n` has no divisor other than 1 and itself.\npub fn is_prime(n: u64) -> bool {\n    if n < 2 {\n        return false;\n    }\n    let mut d = 2;\n    while d * d <= n {\n        if n % d == 0 {\n            return false;\n        }\n        d += 1;\n    }\n    true\n}\n\n");
    for i in 0..12 {
        math.push_str(&format!(
            "/// Scales a value by {i}.\npub fn scale_{i}(values: &mut [f64]) {{\n    for v in values.iter_mut() {{\n        *v *= {i}.0;\n    }}\n}}\n\n"
        ));
    }
    math.push_str("/// Greatest common divisor.\npub fn gcd(a: u64, b: u64) -> u64 {\n    if b == 0 { a } else { gcd(b, a % b) }\n}\n");
    write(root, "src/math.rs", &math);
    write(
        root,
        "src/http.rs",
        "/// Retries a request with exponential backoff.\npub async fn fetch_with_retry(url: &str, attempts: u32) -> Result<String, Error> {\n    let mut delay = 100;\n    for _ in 0..attempts {\n        match get(url).await {\n            Ok(body) => return Ok(body),\n            Err(_) => sleep_ms(delay).await,\n        }\n        delay *= 2;\n    }\n    Err(Error::GaveUp)\n}\n",
    );
    write(
        root,
        "app/users.py",
        "class UserRepository:\n    \"\"\"Stores accounts in the database.\"\"\"\n\n    def __init__(self, db):\n        self.db = db\n\n    def find_by_email(self, email):\n        \"\"\"Returns the account registered with this e-mail address, or None.\"\"\"\n        return self.db.query(\"SELECT * FROM users WHERE email = ?\", email).first()\n",
    );
    write(
        root,
        "web/cart.ts",
        "export interface Item { price: number; quantity: number }\n\n/** Sum of all items in the shopping cart, with sales tax. */\nexport function computeCartTotal(items: Item[], taxRate: number): number {\n  const subtotal = items.reduce((sum, i) => sum + i.price * i.quantity, 0);\n  return subtotal * (1 + taxRate);\n}\n",
    );
    write(
        root,
        "cmd/server/main.go",
        "package main\n\nimport \"net/http\"\n\n// handleHealth answers the load balancer's liveness probe.\nfunc handleHealth(w http.ResponseWriter, r *http.Request) {\n\tw.WriteHeader(http.StatusOK)\n}\n",
    );
    // Never indexed: ignored by .gitignore, or secrets.
    write(root, "build/generated.rs", "fn zzgeneratedtoken() {}\n");
    write(root, ".env", "API_KEY=supersecretvalue123\n");
    write(root, "deploy/server.pem", "supersecretvalue123\n");
    write(root, "deploy/credentials.json", "{\"token\": \"supersecretvalue123\"}\n");
}

async fn index(root: &Path, store: &Store, embedder: &Arc<dyn Embedder>) -> IndexSummary {
    index_workspace(root, store, Some(Arc::clone(embedder)), &IndexOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap()
}

async fn top_path(store: &Store, embedder: &Arc<dyn Embedder>, query: &str) -> String {
    let hits = search(store, Some(Arc::clone(embedder)), &SearchRequest::new(query)).await.unwrap();
    hits.first().map(|h| h.citation.path.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_code_by_meaning_and_stays_incremental() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    fixture_repo(root);
    let index_dir = tempfile::tempdir().unwrap();
    let embedder = embedder();
    let store = Store::open(index_dir.path(), embedder.model_id(), embedder.dim()).await.unwrap();

    let first = index(root, &store, &embedder).await;
    assert_eq!(first.files_changed, 6, "{first:?}");
    assert_eq!(first.vectors_computed, first.chunks_written);
    assert!(first.skipped.iter().any(|(p, r)| p == "deploy/server.pem" && r.contains("secret")), "{:?}", first.skipped);

    // Natural-language questions whose words mostly do not appear in the code.
    for (question, expected) in [
        ("read the service settings from a file", "src/config.rs"),
        ("check whether a number is prime", "src/math.rs"),
        ("look up an account by its e-mail address", "app/users.py"),
        ("add up the price of everything in the shopping basket", "web/cart.ts"),
        ("liveness probe endpoint", "cmd/server/main.go"),
    ] {
        assert_eq!(top_path(&store, &embedder, question).await, expected, "query: {question}");
    }
    // The vector side alone ranks the right chunk first (the fusion is not carried by keywords).
    let q = embedder.embed(&["is this integer prime"], Purpose::Query).unwrap();
    let nearest = store.search_vector(&q[0], 1, &Filter::default()).await.unwrap();
    assert!(nearest[0].0.symbol.contains("fn is_prime"), "{:?}", nearest[0].0.symbol);
    let cited = &nearest[0].0;
    assert!(cited.start_line <= 4 && 4 <= cited.end_line, "`fn is_prime` is on line 4: {cited:?}");

    // Ignored and secret files never reach the index.
    for secret in ["zzgeneratedtoken", "supersecretvalue123", "API_KEY"] {
        let hits = search(&store, None, &SearchRequest::new(secret)).await.unwrap();
        assert!(hits.iter().all(|h| !h.text.contains(secret)), "{secret} found: {hits:?}");
    }
    let files = store.files().await.unwrap();
    assert!(files.keys().all(|p| !p.starts_with("build/") && !p.starts_with("deploy/") && p != ".env"), "{files:?}");

    // Nothing changed: nothing is read again.
    let again = index(root, &store, &embedder).await;
    assert_eq!((again.files_changed, again.files_unchanged, again.vectors_computed), (0, 6, 0), "{again:?}");

    // Edit the end of a multi-chunk file: only its changed chunks are embedded again.
    let math = fs::read_to_string(root.join("src/math.rs")).unwrap();
    write(root, "src/math.rs", math.replace("gcd(b, a % b)", "gcd(b, a.rem_euclid(b))"));
    let edited = index(root, &store, &embedder).await;
    assert_eq!(edited.files_changed, 1, "{edited:?}");
    assert!(edited.vectors_reused >= 1 && edited.vectors_computed >= 1, "{edited:?}");
    assert!(edited.vectors_computed < edited.chunks_written, "{edited:?}");
    let hits = search(&store, None, &SearchRequest::new("rem_euclid")).await.unwrap();
    assert_eq!(hits[0].citation.path, "src/math.rs");

    // A touched file (same content, new mtime) is hashed but not re-chunked.
    let config = fs::read(root.join("src/config.rs")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    write(root, "src/config.rs", &config);
    let touched = index(root, &store, &embedder).await;
    assert_eq!((touched.files_changed, touched.chunks_written), (0, 0), "{touched:?}");

    // A deleted file disappears.
    fs::remove_file(root.join("src/http.rs")).unwrap();
    let removed = index(root, &store, &embedder).await;
    assert_eq!(removed.files_removed, 1);
    let hits = search(&store, None, &SearchRequest::new("fetch_with_retry")).await.unwrap();
    assert!(hits.iter().all(|h| h.citation.path != "src/http.rs"), "{hits:?}");

    let stats = store.stats().await.unwrap();
    assert_eq!(stats.files, 5);
    assert_eq!(stats.chunks, stats.vectors, "every chunk has its vector");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_skipped_or_read_safely() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    write(root, "blob.bin", b"\x00\x01\x02binary\x00data");
    write(root, "image.rs", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR");
    write(root, "latin1.rs", b"// caf\xe9 cr\xe8me\nfn latin_function() {}\n");
    write(root, "crlf.rs", "// header\r\n\r\nfn first() {}\r\n\r\nfn crlf_function() -> u32 {\r\n    42\r\n}\r\n");
    write(root, "empty.rs", "");
    write(root, "blank.py", "\n   \n\n");
    write(root, "huge.txt", vec![b'a'; 50 * 1024 * 1024]);
    write(root, "minified.js", format!("var a={};\n", "1,".repeat(10_000)));
    write(root, "ok.rs", "fn fine() {}\n");

    let index_dir = tempfile::tempdir().unwrap();
    let embedder = embedder();
    let store = Store::open(index_dir.path(), embedder.model_id(), embedder.dim()).await.unwrap();
    let summary = index(root, &store, &embedder).await;

    let reason = |path: &str| summary.skipped.iter().find(|(p, _)| p == path).map(|(_, r)| r.as_str());
    assert_eq!(reason("blob.bin"), Some("binary"));
    assert_eq!(reason("image.rs"), Some("binary"));
    assert_eq!(reason("huge.txt"), Some("too large (52428800 bytes)"));
    assert!(reason("minified.js").is_some_and(|r| r.contains("minified")));
    assert_eq!(summary.files_lossy_utf8, 1);

    let files = store.files().await.unwrap();
    let mut indexed: Vec<&str> = files.keys().map(String::as_str).collect();
    indexed.sort();
    assert_eq!(indexed, ["blank.py", "crlf.rs", "empty.rs", "latin1.rs", "ok.rs"]);
    assert_eq!((files["empty.rs"].chunks, files["blank.py"].chunks), (0, 0));

    // CRLF lines are counted like the editor counts them.
    let hits = search(&store, None, &SearchRequest::new("crlf_function")).await.unwrap();
    assert_eq!(hits[0].citation.path, "crlf.rs");
    assert_eq!(hits[0].citation.start_line, 1);
    assert!(hits[0].text.contains("crlf_function() -> u32 {\r\n"));
    let hits = search(&store, None, &SearchRequest::new("latin_function")).await.unwrap();
    assert!(hits[0].text.contains("caf\u{fffd}"));
}

/// `kenning index` killed with SIGKILL while embedding leaves a readable index; the next run
/// completes it without redoing the stored text.
#[test]
fn a_killed_index_run_is_completed_by_the_next() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    for i in 0..300 {
        write(
            root,
            &format!("src/m{i:03}.rs"),
            format!("/// Module {i}.\npub fn handler_{i}(input: &str) -> usize {{\n    input.len() * {i}\n}}\n"),
        );
    }
    let index_dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_kenning");
    let kenning = |args: &[&str]| {
        let mut cmd = Command::new(bin);
        cmd.args(args).arg("--index-dir").arg(index_dir.path());
        cmd
    };
    let status = || -> serde_json::Value {
        let out = kenning(&["status", "--json", "-w", root.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let mut child = kenning(&["index", "--embed-threads", "1"]).arg(root).spawn().unwrap();
    // Wait until the text of every file is stored (the `files` table has data), then kill.
    let files_data = index_dir.path().join("files.lance").join("data");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !files_data.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline, "indexing never stored anything");
        assert!(child.try_wait().unwrap().is_none(), "index finished before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let killed = status();
    let chunks = killed["index"]["chunks"].as_u64().unwrap();
    let vectors = killed["index"]["vectors"].as_u64().unwrap();
    assert_eq!(chunks, 300, "{killed}");
    assert!(vectors < chunks, "the run was killed too late to test anything: {killed}");
    // Keyword search already works on the interrupted index.
    let out = kenning(&["search", "--no-embed", "--json", "-k", "1", "handler_42", "-w", root.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits[0]["citation"]["path"], "src/m042.rs", "{hits}");

    let out = kenning(&["index", "--json"]).arg(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["files_changed"], 0, "{summary}");
    assert_eq!(summary["vectors_computed"].as_u64().unwrap(), chunks - vectors, "{summary}");
    let done = status();
    assert_eq!(done["index"]["vectors"], done["index"]["chunks"], "{done}");

    let out = kenning(&["search", "--json", "-k", "1", "handler_123", "-w", root.to_str().unwrap()]).output().unwrap();
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits[0]["citation"]["path"], "src/m123.rs", "{hits}");
}

/// Two `kenning index` processes on one workspace at once (an editor's server and a terminal) end
/// with exactly the counts of one run; the second waits for the first's lock, then sees its work.
#[test]
fn two_index_processes_at_once_leave_the_counts_of_one() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    for i in 0..18 {
        let body: String = (0..12).map(|j| format!("/// Step {j}.\npub fn step_{i}_{j}(x: u64) -> u64 {{\n    x * {j} + {i}\n}}\n\n")).collect();
        write(root, &format!("src/m{i:02}.rs"), body);
    }
    let single_dir = tempfile::tempdir().unwrap();
    let shared_dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_kenning");
    let index = |dir: &Path| {
        let mut cmd = Command::new(bin);
        cmd.args(["index", "--no-embed", "--json", "--index-dir"]).arg(dir).arg(root);
        cmd
    };
    let stats = |dir: &Path| -> (u64, u64) {
        let out = Command::new(bin).args(["status", "--json", "--index-dir"]).arg(dir).args(["-w", root.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["index"]["files"].as_u64().unwrap(), v["index"]["chunks"].as_u64().unwrap())
    };
    assert!(index(single_dir.path()).output().unwrap().status.success());
    let one_run = stats(single_dir.path());
    assert_eq!(one_run.0, 18);

    let children: Vec<_> = (0..2)
        .map(|_| index(shared_dir.path()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    let mut changed = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        changed.push(summary["files_changed"].as_u64().unwrap());
    }
    changed.sort();
    assert_eq!(changed, [0, 18], "one run did the work, the other found it done");
    assert_eq!(stats(shared_dir.path()), one_run);
}

/// Secrets in a source file (issue 13): the index, search results, `kenning dataset`'s files and
/// its printed sample never hold them; the lines around them are still there, and both commands
/// say what they took out.
#[test]
fn secrets_never_reach_search_results_or_training_data() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    let secrets = [
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "MIIEowIBAAKCAQEA7bq98W3nlqmQxyZ",
    ];
    let config = format!(
        "\"\"\"Service settings.\"\"\"\n\nAWS_ACCESS_KEY_ID = \"{}\"\nAWS_SECRET_ACCESS_KEY = \"{}\"\nGITHUB_TOKEN = \"{}\"\nSTRIPE_KEY = \"{}\"\nSIGNING_KEY = \"\"\"-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\"\"\"\n\n\ndef billing_endpoint(region):\n    \"\"\"Where invoices are sent for a region.\"\"\"\n    return f\"https://billing.{{region}}.example.com/v2/invoices\"\n",
        secrets[0], secrets[1], secrets[2], secrets[3], secrets[4]
    );
    write(root, "app/config.py", &config);
    for i in 0..6 {
        write(root, &format!("app/handler_{i}.py"), format!("def handle_{i}(request):\n    \"\"\"Answers request kind {i}.\"\"\"\n    return request.body * {i}\n"));
    }
    let index_dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_kenning");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = index_dir.path().to_str().unwrap();
    let printed = run(&["index", "--no-embed", "--verbose", "--index-dir", dir, root.to_str().unwrap()]);
    assert!(printed.contains("5 secrets redacted"), "{printed}");
    assert!(printed.contains("redacted github-token at app/config.py:5"), "{printed}");
    for query in ["AWS_SECRET_ACCESS_KEY GITHUB_TOKEN STRIPE_KEY", "billing endpoint invoices"] {
        let hits = run(&["search", "--no-embed", "--json", "--index-dir", dir, "-w", root.to_str().unwrap(), query]);
        assert!(hits.contains("app/config.py"), "{hits}");
        assert!(hits.contains("<redacted:"), "{hits}");
        for s in secrets {
            assert!(!hits.contains(s), "{s} in search results: {hits}");
        }
    }
    // A k that would overflow the candidate count, and a 120 KB query: answered, bounded.
    let hits = run(&["search", "--no-embed", "--json", "-k", "6148914691236517206", "--index-dir", dir, "-w", root.to_str().unwrap(), "handle request"]);
    assert!(hits.contains("handler_"), "{hits}");
    let huge = format!("billing endpoint {}", "x ".repeat(60_000));
    let hits = run(&["search", "--no-embed", "--json", "--index-dir", dir, "-w", root.to_str().unwrap(), &huge]);
    assert!(hits.contains("app/config.py"), "{hits}");
    let out = tempfile::tempdir().unwrap();
    let printed = run(&["dataset", root.to_str().unwrap(), "--out", out.path().to_str().unwrap(), "--family", "qwen-coder", "--fim-per-kb", "8"]);
    assert!(printed.contains("5 secrets redacted"), "{printed}");
    let mut written = printed.clone();
    for split in ["train", "valid", "test"] {
        written.push_str(&std::fs::read_to_string(out.path().join(format!("{split}.jsonl"))).unwrap_or_default());
    }
    assert!(written.contains("billing_endpoint"), "the rest of the file is still there");
    for s in secrets {
        assert!(!written.contains(s), "{s} reached the dataset");
    }
}

/// A damaged index (issue 13): a truncated data file, a deleted `_versions`, deleted `_indices`.
/// `kenning status` says what is wrong instead of "healthy", and `kenning index` rebuilds it,
/// saying why, to the counts of a clean run.
#[test]
fn a_damaged_index_is_reported_and_rebuilt() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    for i in 0..12 {
        write(root, &format!("src/m{i:02}.rs"), format!("/// Part {i}.\npub fn part_{i}(x: u32) -> u32 {{\n    x + {i}\n}}\n"));
    }
    let bin = env!("CARGO_BIN_EXE_kenning");
    let run = |args: &[&str], dir: &Path| {
        let out = Command::new(bin).args(args).arg("--index-dir").arg(dir).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let status = |dir: &Path| -> serde_json::Value { serde_json::from_str(&run(&["status", "--json", "-w", root.to_str().unwrap()], dir).0).unwrap() };
    let damages: [(&str, fn(&Path)); 3] = [
        ("a truncated data file", |dir| {
            let data = std::fs::read_dir(dir.join("chunks.lance/data")).unwrap().next().unwrap().unwrap().path();
            let len = std::fs::metadata(&data).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len / 2).unwrap();
        }),
        ("a deleted _versions", |dir| std::fs::remove_dir_all(dir.join("files.lance/_versions")).unwrap()),
        ("deleted _indices", |dir| std::fs::remove_dir_all(dir.join("chunks.lance/_indices")).unwrap()),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        run(&["index", "--no-embed", root.to_str().unwrap()], dir.path());
        let clean = status(dir.path());
        assert_eq!(clean["problems"], serde_json::json!([]), "{clean}");
        damage(dir.path());
        let damaged = status(dir.path());
        assert!(damaged["problems"].as_array().is_some_and(|p| !p.is_empty()), "{what}: status reports nothing: {damaged}");
        let (_, said) = run(&["index", "--no-embed", root.to_str().unwrap()], dir.path());
        assert!(said.contains("rebuilding the index"), "{what}: {said}");
        let rebuilt = status(dir.path());
        assert_eq!(rebuilt["problems"], serde_json::json!([]), "{what}: {rebuilt}");
        assert_eq!((rebuilt["index"]["files"].as_u64(), rebuilt["index"]["chunks"].as_u64()), (clean["index"]["files"].as_u64(), clean["index"]["chunks"].as_u64()), "{what}");
    }
}

/// Issue 14: `kenning eval --split time` on a real git history. The tasks are lines added after the
/// split commit (none of them existing at it); ft without an adapter trained on the split's
/// snapshot is refused, naming the command that trains one; a directory without git is a clear
/// error.
#[test]
fn eval_split_time_asks_for_lines_added_after_the_split_and_only_fair_adapters() {
    let git = |dir: &Path, args: &[&str]| {
        let status = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=kenning", "-c", "user.email=kenning@example.invalid", "-c", "commit.gpgsign=false"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("shop");
    let prices: String = (0..5).map(|i| format!("pub fn price_{i}(cents: u64) -> u64 {{\n    cents * {i}\n}}\n\n")).collect();
    write(&repo, "src/price.rs", &prices);
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "prices"]);
    let cart = "use crate::price::price_3;\n\npub fn total(items: &[u64]) -> u64 {\n    let subtotal: u64 = items.iter().sum();\n    let discounted = price_3(subtotal) / 4;\n    discounted.saturating_sub(items.len() as u64)\n}\n";
    write(&repo, "src/cart.rs", cart);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "cart"]);

    // A cache of its own (the snapshot and its training go there), with the installed models.
    let cache = tempfile::tempdir().unwrap();
    let cache_paths = common::test_cache(cache.path());
    let bin = env!("CARGO_BIN_EXE_kenning");
    let eval = |args: &[&str], dir: &Path| Command::new(bin).arg("--cache-dir").arg(cache.path()).args(["eval", "--split", "time", "-w"]).arg(dir).args(args).output().unwrap();

    let out = eval(&["--mode", "ft"], &repo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("kenning train") && stderr.contains("snapshots"), "{stderr}");

    let out = eval(&["--mode", "none", "--kinds", "line", "--model", "smollm2-135m", "--threads", "1", "--json", "--verbose"], &repo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<&str> = figures["scores"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    // The new file's lines of code: not the blank one, not the closing brace (too short).
    assert_eq!(ids, ["src/cart.rs:1", "src/cart.rs:3", "src/cart.rs:4", "src/cart.rs:5", "src/cart.rs:6"]);
    // Each score keeps how sure the model was of its first tokens (llama.cpp records them).
    let logprobs: Vec<Vec<f64>> = figures["scores"].as_array().unwrap().iter().filter_map(|s| s.get("logprobs")).map(|p| p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    assert!(!logprobs.is_empty(), "{figures}");
    assert!(logprobs.iter().all(|p| !p.is_empty() && p.len() <= 16 && p.iter().all(|x| *x <= 0.0)), "{logprobs:?}");
    // And what the model wrote: the lines --verbose printed as predicted.
    let completions: Vec<&str> = figures["scores"].as_array().unwrap().iter().filter_map(|s| s.get("completion")).map(|c| c.as_str().unwrap()).collect();
    assert!(!completions.is_empty(), "{figures}");
    for completion in completions {
        let line = completion.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
        assert!(stderr.contains(&format!("predicted {line}")), "{line:?} not in {stderr}");
    }
    let snapshot = fs::read_dir(cache.path().join("snapshots")).unwrap().next().unwrap().unwrap().path().join("shop");
    assert!(snapshot.join("src/price.rs").is_file() && !snapshot.join("src/cart.rs").exists(), "the snapshot is the split commit");

    // rag: retrieval searches an index of the snapshot, built for it; the live repository is never indexed.
    let out = eval(&["--mode", "rag", "--model", "smollm2-135m", "--threads", "1", "--limit", "2", "--json"], &repo);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cache_paths.index_for(&snapshot).is_dir(), "the snapshot is indexed");
    assert!(!cache_paths.index_for(&repo).exists(), "today's code is never indexed for the time split");
    // --context-only chooses each task's context without a model: one that does not exist is never
    // loaded, and the called function's definition comes from the snapshot's index. By default the
    // tasks are of all four kinds: the whole line, from the called name, from a cut inside the
    // line, and the new function's body.
    let out = eval(&["--mode", "rag", "--context-only", "--model", "no-such-model"], &repo);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let contexts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut kinds: Vec<&str> = contexts.iter().map(|c| c["id"].as_str().unwrap()).filter(|id| !id.ends_with(":line") && !id.ends_with(":rest")).collect();
    kinds.sort();
    assert_eq!(kinds, ["src/cart.rs:3:block", "src/cart.rs:4:call", "src/cart.rs:5:call", "src/cart.rs:6:call"]);
    assert_eq!(contexts.len(), 2 * ids.len() + kinds.len(), "one line per task: a line and a rest task of each line");
    let call = contexts.iter().find(|c| c["id"] == "src/cart.rs:5:call").expect("the call of price_3");
    // price_3 is lines 13 to 15 of src/price.rs.
    let holds_price_3 = |s: &serde_json::Value| s["path"] == "src/price.rs" && s["start_line"].as_u64() <= Some(13) && s["end_line"].as_u64() >= Some(15);
    assert!(call["context"].as_array().unwrap().iter().any(holds_price_3), "{call}");
    // What would let today's code in is refused.
    for extra in [&["--index-dir", "/tmp/anywhere"][..], &["--tasks", "/tmp/tasks.jsonl"][..]] {
        let out = eval(&[&["--mode", "none"][..], extra].concat(), &repo);
        assert!(!out.status.success(), "{extra:?} was accepted");
    }

    let plain = work.path().join("plain");
    write(&plain, "src/a.rs", "fn a() {}\n");
    let out = eval(&["--mode", "none"], &plain);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a git repository"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An index over a shared base, in-process and without the network (the store's side of issue 16;
/// `shared_e2e` drives the same through S3): only what differs is indexed, and search sees the
/// overlay's version of a path, never the base's, nor a file deleted here.
#[tokio::test(flavor = "multi_thread")]
async fn an_overlay_indexes_only_what_differs_from_its_base_and_hides_the_rest() {
    let (team, base_dir, local_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(team.path(), "src/alpha.rs", "pub fn alpha_unchanged_marker() -> u32 {\n    1\n}\n");
    write(team.path(), "src/beta.rs", "pub fn beta_original_marker() -> u32 {\n    2\n}\n");
    write(team.path(), "src/gamma.rs", "pub fn gamma_deleted_marker() -> u32 {\n    3\n}\n");
    let embedder = embedder();
    let base = Store::open(base_dir.path(), embedder.model_id(), embedder.dim()).await.unwrap();
    index(team.path(), &base, &embedder).await;
    let versions = base.versions().await.unwrap();
    // A snapshot sees the versions it was opened at, whatever is written later.
    base.remove_paths(&["src/alpha.rs"]).await.unwrap();
    let snapshot = Store::open_snapshot(base_dir.path(), embedder.model_id(), embedder.dim(), &versions).await.unwrap();
    assert_eq!(snapshot.files().await.unwrap().len(), 3);
    let refused = Store::open_snapshot(base_dir.path(), "another-model", 768, &versions).await.unwrap_err().to_string();
    assert!(refused.contains("another-model"), "{refused}");

    let mine = tempfile::tempdir().unwrap();
    write(mine.path(), "src/alpha.rs", "pub fn alpha_unchanged_marker() -> u32 {\n    1\n}\n");
    write(mine.path(), "src/beta.rs", "pub fn beta_edited_marker() -> u32 {\n    2 + 2\n}\n");
    write(mine.path(), "src/delta.rs", "pub fn delta_added_marker() -> u32 {\n    4\n}\n");
    let local = Store::open(local_dir.path(), embedder.model_id(), embedder.dim()).await.unwrap().with_base(snapshot).await.unwrap();
    let first = index(mine.path(), &local, &embedder).await;
    assert_eq!((first.files_changed, first.files_from_base, first.files_removed), (2, 1, 1), "{first:?}");
    assert_eq!(first.vectors_computed, first.chunks_written, "{first:?}");
    let again = index(mine.path(), &local, &embedder).await;
    assert_eq!((again.files_changed, again.files_unchanged, again.files_from_base, again.files_removed), (0, 2, 1, 0), "{again:?}");

    let found = |query: &'static str| {
        let local = local.clone();
        // (BM25 matches any of the identifier's parts: keep the chunks with the whole name.)
        async move { local.search_text(query, 10, &Filter::default()).await.unwrap().into_iter().map(|(c, _)| c.text).filter(|t| t.contains(query)).collect::<Vec<_>>() }
    };
    assert_eq!(found("alpha_unchanged_marker").await.len(), 1, "from the base");
    assert_eq!(found("beta_edited_marker").await.len(), 1, "from the overlay");
    assert!(found("beta_original_marker").await.is_empty(), "the base's version of an edited file is hidden");
    assert!(found("gamma_deleted_marker").await.is_empty(), "a file deleted here is hidden");
    assert_eq!(found("delta_added_marker").await.len(), 1);
    let q = embedder.embed(&["beta marker"], Purpose::Query).unwrap();
    let paths: Vec<String> = local.search_vector(&q[0], 10, &Filter::default()).await.unwrap().into_iter().map(|(c, _)| c.path).collect();
    assert_eq!(paths.iter().filter(|p| *p == "src/beta.rs").count(), 1, "{paths:?}");
    assert!(!paths.iter().any(|p| p == "src/gamma.rs"), "{paths:?}");
    assert_eq!(local.definitions_named("alpha_unchanged_marker", 8).await.unwrap().len(), 1);
    assert!(local.definitions_named("gamma_deleted_marker", 8).await.unwrap().is_empty());

    // The file edited back to the base's content is served by the base again.
    write(mine.path(), "src/beta.rs", "pub fn beta_original_marker() -> u32 {\n    2\n}\n");
    let back = index(mine.path(), &local, &embedder).await;
    assert_eq!((back.files_changed, back.files_from_base), (0, 2), "{back:?}");
    assert_eq!(found("beta_original_marker").await.len(), 1);
    assert!(found("beta_edited_marker").await.is_empty());
}

/// Issue 18, context chosen for what the line needs, in each language: with the cursor (`$0`)
/// after a receiver whose type another file defines, the context holds that type's definition,
/// found as a definition (search for similar code and imported signatures are off here, so no
/// other route brings it), and nothing of the file being written (its own text is the prompt's).
/// The type is named in the receiver's declaration: a receiver whose type would have to be
/// inferred (`let c = load(); c.`) is not resolved. Go is not among the cases: a small Go file
/// (`type Cart struct` with its methods) is one chunk whose symbol (`type Cart, func Cart.Total`)
/// defines only its last item by name, so the type is found there only by search (ARCHITECTURE,
/// known gaps).
#[tokio::test(flavor = "multi_thread")]
async fn the_receivers_type_defined_elsewhere_is_in_the_context_in_rust_python_and_typescript() {
    use kenning::chunk::Language;
    use kenning::complete::{Completer, CompletionRequest, Retrieval};

    struct Case {
        language: Language,
        type_file: (&'static str, &'static str),
        noise_file: (&'static str, &'static str),
        current: (&'static str, &'static str),
        definition: &'static str,
    }
    let cases = [
        Case {
            language: Language::Rust,
            type_file: ("src/cart.rs", "/// A shopping cart.\npub struct Cart {\n    pub items: Vec<u64>,\n}\n\nimpl Cart {\n    /// Adds an item's price in cents.\n    pub fn add_item(&mut self, cents: u64) {\n        self.items.push(cents);\n    }\n}\n"),
            noise_file: ("src/report.rs", "/// Prints a line of the monthly report.\npub fn print_report_line(month: u32, total: u64) {\n    println!(\"{month}: {total}\");\n}\n"),
            current: ("src/checkout.rs", "use crate::cart::Cart;\n\n/// Adds the shipping fee to the cart.\npub fn add_shipping(cart: &mut Cart, cents: u64) {\n    cart.$0\n}\n"),
            definition: "pub struct Cart",
        },
        Case {
            language: Language::Python,
            type_file: ("shop/basket.py", "class Basket:\n    \"\"\"A customer's basket.\"\"\"\n\n    def __init__(self):\n        self.items = []\n\n    def total_with_tax(self, rate):\n        return sum(self.items) * (1 + rate)\n"),
            noise_file: ("shop/report.py", "def print_report_line(month, total):\n    print(f\"{month}: {total}\")\n"),
            current: ("shop/views.py", "from shop.basket import Basket\n\n\ndef render(basket: Basket, rate):\n    return basket.$0\n"),
            definition: "class Basket",
        },
        Case {
            language: Language::TypeScript,
            type_file: ("web/cart.ts", "/** A shopping cart. */\nexport class ShoppingCart {\n  items: number[] = [];\n\n  totalWithTax(rate: number): number {\n    return this.items.reduce((a, b) => a + b, 0) * (1 + rate);\n  }\n}\n"),
            noise_file: ("web/report.ts", "export function printReportLine(month: number, total: number): void {\n  console.log(`${month}: ${total}`);\n}\n"),
            current: ("web/view.ts", "import { ShoppingCart } from './cart';\n\nexport function render(cart: ShoppingCart): string {\n  return cart.$0\n}\n"),
            definition: "class ShoppingCart",
        },
    ];
    let embedder = embedder();
    let model = kenning::models::resolve("qwen2.5-coder-0.5b", &Paths::from_env()).unwrap_or_else(|e| panic!("{e}"));
    let engine: Arc<dyn kenning::generate::Generator> = Arc::new(kenning::generate::llama::LlamaEngine::load(&model, kenning::generate::llama::LlamaOptions::default()).unwrap());
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let index_dir = tempfile::tempdir().unwrap();
        let (current_path, marked) = case.current;
        let offset = marked.find("$0").unwrap();
        let text = marked.replace("$0", "");
        for (path, body) in [case.type_file, case.noise_file, (current_path, text.as_str())] {
            write(dir.path(), path, body);
        }
        let store = Store::open(index_dir.path(), embedder.model_id(), embedder.dim()).await.unwrap();
        index(dir.path(), &store, &embedder).await;
        let settings = kenning::config::CompletionSettings { similar_code: false, imports: false, ..Default::default() };
        let completer = Completer::new(Arc::clone(&engine), kenning::prompt::Family::QwenCoder, settings);
        let request = CompletionRequest { repo: "shop".into(), path: current_path.into(), language: case.language, text: text.clone(), offset, buffers: Vec::new() };
        completer.prepare(&request, &Retrieval { store: Some(Arc::new(store)), embedder: Some(Arc::clone(&embedder)) }).await;
        let ring = completer.ring_snippets();
        let shown: Vec<String> = ring.iter().map(|s| format!("{}:{}-{} {:?}", s.path, s.start_line, s.end_line, s.source)).collect();
        assert!(
            ring.iter().any(|s| s.path == case.type_file.0 && s.source == kenning::prompt::Source::Definition && s.text.contains(case.definition)),
            "{:?}: the receiver's type ({}) is not in the context: {shown:?}",
            case.language,
            case.definition
        );
        assert!(ring.iter().all(|s| s.path != current_path), "{:?}: the file being written is the prompt's, not context: {shown:?}", case.language);
    }
}
