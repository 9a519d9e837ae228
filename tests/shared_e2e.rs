//! The team's shared index on a real S3-compatible server (moto, from the pinned venv that
//! `scripts/setup` installs) on loopback, driven through the real `kenning` binary as a CI job and
//! two developers' machines would: one publishes, another opens a copy of the repository with
//! files edited, added and deleted, searches, and keeps searching when the store goes away.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::write;
use serde_json::Value;

const BUCKET: &str = "team-bucket";

/// moto's S3 in server mode on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// `enforce_auth`: moto checks every request's access key (none is known: all are refused).
    fn start(enforce_auth: bool) -> Self {
        let moto = kenning::paths::Paths::from_env().cache().join("tools/s3/bin/moto_server");
        assert!(moto.exists(), "{} is missing: run scripts/setup", moto.display());
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(moto);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
        if enforce_auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = command.spawn().expect("moto_server starts");
        let server = S3Server { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// One plain HTTP request (moto takes unsigned requests unless told otherwise): the status.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", self.port, body.len());
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn create_bucket(&self, name: &str) {
        assert_eq!(self.request("PUT", &format!("/{name}"), b""), 200);
    }

    /// Deletes an object, signed as any S3 client would (with the venv's boto3).
    fn delete(&self, bucket: &str, key: &str) {
        let python = kenning::paths::Paths::from_env().cache().join("tools/s3/bin/python");
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='testing', \
             aws_secret_access_key='testing', region_name='us-east-1').delete_object(Bucket='{bucket}', Key='{key}')",
            self.port
        );
        let status = Command::new(python).args(["-c", &script]).status().unwrap();
        assert!(status.success(), "boto3 could not delete {key}");
    }
}

/// A developer's (or CI's) machine: its own kenning cache, AWS settings pointing at `s3`.
struct Machine {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Machine {
    fn new(s3: &S3Server) -> Self {
        let dir = tempfile::tempdir().unwrap();
        common::test_cache(&dir.path().join("kenning"));
        Machine { dir, endpoint: format!("http://127.0.0.1:{}", s3.port) }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("kenning")
    }

    fn kenning(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kenning"))
            .args(args)
            .env("KENNING_CACHE_DIR", self.cache())
            .env("HOME", self.dir.path())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .output()
            .unwrap()
    }

    /// `kenning ARGS --json`, which must succeed: its JSON.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let output = self.kenning(&args);
        assert!(output.status.success(), "kenning {args:?}\n{}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&output)))
    }
}

fn text(output: &Output) -> String {
    format!("status {}\nstdout: {}\nstderr: {}", output.status, String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A project with one distinctive word per file, so that what a search finds tells where it came from.
fn project(root: &Path) {
    write(root, "src/billing.rs", "/// Charges the customer's card.\npub fn charge_card(amount_cents: u64) -> Result<Receipt, Declined> {\n    let receipt = gateway_submit(amount_cents)?;\n    Ok(receipt)\n}\n");
    write(root, "src/shipping.rs", "/// Picks the courier for a parcel.\npub fn choose_courier(weight_grams: u32) -> Courier {\n    if weight_grams > 30_000 { Courier::Freight } else { Courier::Post }\n}\n");
    write(root, "src/ledger.rs", "/// Books a transaction into the general ledger.\npub fn post_journal_entry(debit: Account, credit: Account, amount: i64) {\n    journal().append(debit, credit, amount);\n}\n");
    write(root, "src/audit.rs", "/// Writes an audit trail record.\npub fn record_audit_event(actor: &str, action: &str) {\n    audit_log().push(format!(\"{actor} {action}\"));\n}\n");
    for i in 0..6 {
        write(root, &format!("src/util_{i}.rs"), format!("/// Helper number {i}.\npub fn helper_{i}(x: u32) -> u32 {{\n    x.wrapping_mul({i}) + 7\n}}\n"));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The paths of the hits of `kenning search QUERY` in `workspace`, with the text of the first.
fn search(machine: &Machine, workspace: &Path, query: &str) -> (Vec<String>, String) {
    let hits = machine.json(&["search", query, "-w", workspace.to_str().unwrap(), "-k", "20"]);
    let hits = hits.as_array().unwrap();
    let paths = hits.iter().map(|h| h["citation"]["path"].as_str().unwrap().to_owned()).collect();
    (paths, hits.first().map(|h| h["text"].as_str().unwrap().to_owned()).unwrap_or_default())
}

#[test]
fn published_once_searched_with_a_local_overlay_and_offline() {
    let s3 = S3Server::start(false);
    s3.create_bucket(BUCKET);
    let uri = format!("s3://{BUCKET}/acme/shop");

    // CI publishes the repository.
    let ci = Machine::new(&s3);
    let repo = tempfile::tempdir().unwrap();
    project(repo.path());
    let published = ci.json(&["index", repo.path().to_str().unwrap(), "--publish", &uri]);
    assert_eq!(published["index"]["files_changed"], 10, "{published}");
    assert_eq!(published["vectors"], published["chunks"], "every chunk has its vector: {published}");
    let total = published["bytes"].as_u64().unwrap();
    // Everything, once per distinct content (files with equal bytes are one object).
    let uploaded = published["uploaded"].as_u64().unwrap();
    assert!(uploaded <= total && uploaded * 10 > total * 9, "the first publication uploads everything: {published}");

    // A developer's checkout: two files edited, one deleted, one added.
    let dev = Machine::new(&s3);
    let work = tempfile::tempdir().unwrap();
    copy_dir(repo.path(), work.path());
    write(work.path(), "src/billing.rs", "/// Refunds a card payment.\npub fn refund_payment(receipt: Receipt) -> Result<(), Declined> {\n    gateway_refund(receipt)\n}\n");
    write(work.path(), "src/shipping.rs", "/// Picks the courier for a parcel, drones for light ones.\npub fn choose_courier(weight_grams: u32) -> Courier {\n    if weight_grams < 500 { Courier::Drone } else { Courier::Post }\n}\n");
    std::fs::remove_file(work.path().join("src/ledger.rs")).unwrap();
    write(work.path(), "src/loyalty.rs", "/// Awards loyalty points for a purchase.\npub fn award_loyalty_points(customer: CustomerId, cents: u64) -> u32 {\n    (cents / 100) as u32\n}\n");
    write(work.path(), "kenning.toml", format!("[index]\nshared = \"{uri}\"\n"));

    let overlay = dev.json(&["index", work.path().to_str().unwrap()]);
    // kenning.toml itself is a new file of the checkout too.
    assert_eq!(overlay["files_changed"], 4, "two edited and two added files are indexed here: {overlay}");
    assert_eq!(overlay["files_from_base"], 7, "the other seven are searched in the shared index: {overlay}");
    assert_eq!(overlay["files_removed"], 1, "the deleted file hides the shared one: {overlay}");

    // The edited text comes from the overlay, the old text of an edited file is gone, the deleted
    // file is not found, and unchanged files are found in the shared index.
    let (paths, first) = search(&dev, work.path(), "refund_payment");
    assert_eq!(paths.first().map(String::as_str), Some("src/billing.rs"), "{paths:?}");
    assert!(first.contains("gateway_refund"), "{first}");
    let (paths, first) = search(&dev, work.path(), "charge_card gateway_submit");
    assert!(!first.contains("charge_card"), "the old text of an edited file: {paths:?} {first}");
    let (paths, _) = search(&dev, work.path(), "post_journal_entry general ledger");
    assert!(!paths.iter().any(|p| p == "src/ledger.rs"), "the deleted file: {paths:?}");
    let (paths, first) = search(&dev, work.path(), "record_audit_event audit trail");
    assert_eq!(paths.first().map(String::as_str), Some("src/audit.rs"), "{paths:?}");
    assert!(first.contains("audit_log"), "{first}");
    let (paths, _) = search(&dev, work.path(), "Courier");
    assert_eq!(paths.iter().filter(|p| *p == "src/shipping.rs").count(), 1, "one version of an edited file: {paths:?}");
    // Semantic search reaches the shared vectors (no keyword in common).
    let (paths, _) = search(&dev, work.path(), "which delivery company takes a heavy box");
    assert!(paths.iter().take(3).any(|p| p == "src/shipping.rs"), "{paths:?}");

    // CI publishes a change: only that file is embedded, and less than everything uploaded.
    write(repo.path(), "src/audit.rs", "/// Writes an audit trail record with a timestamp.\npub fn record_audit_event(actor: &str, action: &str, at: Timestamp) {\n    audit_log().push(format!(\"{at} {actor} {action}\"));\n}\n");
    let again = ci.json(&["index", repo.path().to_str().unwrap(), "--publish", &uri]);
    assert_eq!(again["index"]["files_changed"], 1, "{again}");
    assert_eq!(again["index"]["files_unchanged"], 9, "{again}");
    let embedded = again["index"]["vectors_computed"].as_u64().unwrap();
    assert!((1..=2).contains(&embedded), "only the changed file's chunks are embedded: {again}");
    // Not compacted after a small change: what is new is uploaded, not a rewritten index.
    assert!(again["uploaded"].as_u64().unwrap() * 4 < again["bytes"].as_u64().unwrap(), "{again}");

    // Until the developer has that change too, their own version of the file shadows the new one
    // (the next index run puts it in the overlay); once they pull it, the shared index serves it.
    let (paths, first) = search(&dev, work.path(), "record_audit_event audit trail");
    assert!(!first.contains("Timestamp"), "not the developer's version: {paths:?} {first}");
    std::fs::copy(repo.path().join("src/audit.rs"), work.path().join("src/audit.rs")).unwrap();
    let overlay = dev.json(&["index", work.path().to_str().unwrap()]);
    assert_eq!((overlay["files_changed"].as_u64(), overlay["files_from_base"].as_u64()), (Some(0), Some(7)), "{overlay}");
    let (_, first) = search(&dev, work.path(), "record_audit_event audit trail");
    assert!(first.contains("Timestamp"), "the new publication: {first}");
    let status = dev.json(&["status", "-w", work.path().to_str().unwrap()]);
    assert_eq!(status["shared"]["reachable"], true, "{status}");

    // The store goes away: search answers from the copy, and status says so.
    drop(s3);
    let output = dev.kenning(&["search", "record_audit_event", "-w", work.path().to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("copy"), "{}", text(&output));
    let hits: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(hits[0]["citation"]["path"], "src/audit.rs", "{hits}");
    let status = dev.kenning(&["status", "-w", work.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("OFFLINE"), "{}", text(&status));
}

#[test]
fn bad_stores_are_clear_errors_and_leave_the_local_index_alone() {
    let s3 = S3Server::start(false);
    s3.create_bucket(BUCKET);
    let machine = Machine::new(&s3);
    let repo = tempfile::tempdir().unwrap();
    project(repo.path());
    let root = repo.path().to_str().unwrap();
    // The local index, which nothing below may touch.
    let local = machine.json(&["index", root]);
    assert_eq!(local["files_changed"], 10, "{local}");

    let fails = |args: &[&str], says: &str| {
        let output = machine.kenning(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "kenning {args:?} should say `{says}`\n{}", text(&output));
    };
    fails(&["index", root, "--publish", "s3://no-such-bucket/x"], "the bucket does not exist");
    fails(&["index", root, "--publish", "relative/dir"], "absolute path");

    // An index of another embedding model is refused by a publisher and not used by a reader.
    let foreign = br#"{"format":1,"embed_model":"another-model","dim":768,"commit":null,"published":0,"versions":{},"files":{}}"#;
    assert_eq!(s3.request("PUT", &format!("/{BUCKET}/foreign/kenning-shared.json"), foreign), 200);
    let foreign_uri = format!("s3://{BUCKET}/foreign");
    fails(&["index", root, "--publish", &foreign_uri], "another-model");
    let output = machine.kenning(&["search", "charge_card", "-w", root, "--shared", &foreign_uri, "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("another-model"), "{}", text(&output));
    let hits: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(hits[0]["citation"]["path"], "src/billing.rs", "the local index answers: {hits}");

    // A publication whose objects are not all there: a reader without a copy says so.
    let uri = format!("s3://{BUCKET}/damaged");
    machine.json(&["index", root, "--publish", &uri]);
    let copy = format!("{}-publish", kenning::shared::cache_dir(&machine.cache(), &uri).display());
    let snapshot = kenning::shared::local_snapshot(Path::new(&copy)).expect("the publisher's copy");
    let (_, file) = snapshot.files.iter().find(|(p, _)| p.ends_with(".lance")).expect("a data file");
    s3.delete(BUCKET, &format!("damaged/objects/{}", file.blake3));
    let reader = Machine::new(&s3);
    let output = reader.kenning(&["search", "charge_card", "-w", root, "--shared", &uri, "--json"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("incomplete"), "{}", text(&output));

    // A store that refuses the credentials.
    let strict = S3Server::start(true);
    let refused = Machine::new(&strict);
    let output = refused.kenning(&["index", root, "--publish", &format!("s3://{BUCKET}/x")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("access denied") && stderr.contains("AWS_ACCESS_KEY_ID"), "{}", text(&output));

    // After all that, the local index is as it was.
    let again = machine.json(&["index", root]);
    assert_eq!((again["files_changed"].as_u64(), again["files_unchanged"].as_u64()), (Some(0), Some(10)), "{again}");
    let (paths, _) = search(&machine, repo.path(), "charge_card");
    assert_eq!(paths.first().map(String::as_str), Some("src/billing.rs"));
}
