//! `scripts/make_eval_tasks.py`, the generator of the public task sets (issue 18), on a small
//! repository: every task is a cut in its file, and none leaks what it expects into its prompt.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::write;

/// The tasks of `kind` the generator makes from `repo`, as JSON values.
fn tasks(repo: &Path, kind: &str) -> Vec<serde_json::Value> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make_eval_tasks.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(repo)
        .arg(out.path())
        .args(["--kind", kind, "--count", "50", "--per-file", "10", "--seed", "0"])
        .output()
        .expect("python3 runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    fs::read_to_string(out.path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn tasks_are_cuts_of_their_files_and_never_leak_the_expected_text() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    write(root, "src/price.rs", "/// Applies a coupon.\npub fn discounted_price(cents: u64, coupon: u64) -> u64 {\n    cents.saturating_sub(coupon)\n}\n");
    // One call appears twice, word for word: the model could copy it from the prompt.
    write(
        root,
        "src/cart.rs",
        "use crate::price;\n\npub fn totals(a: u64, b: u64) -> (u64, u64) {\n    let first = price::discounted_price(a, 10);\n    let again = price::discounted_price(a, 10);\n    let shipped = price::discounted_price(b, 25) + 300;\n    let first = price::discounted_price(a, 10);\n    (first, again + shipped)\n}\n",
    );
    write(root, "app/models.py", "class Basket:\n    def total_with_tax(self, rate):\n        return sum(self.items) * (1 + rate)\n");
    write(root, "app/views.py", "from app.models import Basket\n\n\ndef render(basket, rate):\n    amount = basket.total_with_tax(rate)\n    return f\"{amount:.2f}\"\n");

    let mut seen = 0;
    for kind in ["line", "api", "rest"] {
        for task in tasks(root, kind) {
            let field = |k: &str| task[k].as_str().unwrap().to_owned();
            let (path, prefix, suffix, expected) = (field("path"), field("prefix"), field("suffix"), field("expected"));
            let file = fs::read_to_string(root.join(&path)).unwrap();
            assert!(file.starts_with(&format!("{prefix}{expected}")) && file.ends_with(&suffix), "{kind} {task}");
            let wanted = expected.trim();
            assert!(!wanted.is_empty() && !prefix.contains(wanted) && !suffix.contains(wanted), "{kind} task leaks its answer: {task}");
            assert_ne!(expected.trim(), "let first = price::discounted_price(a, 10);", "{task}");
            seen += 1;
        }
    }
    // The unrepeated calls make tasks of each kind: the filter is not all that passes.
    let lines = tasks(root, "line");
    assert!(lines.iter().any(|t| t["expected"] == "let shipped = price::discounted_price(b, 25) + 300;"), "{lines:?}");
    assert!(lines.iter().any(|t| t["expected"] == "amount = basket.total_with_tax(rate)"), "{lines:?}");
    assert!(seen >= 5, "{seen} tasks");
}

#[test]
fn block_tasks_expect_a_whole_short_body_and_leave_a_docstring_in_the_prompt() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    write(
        root,
        "src/cart.rs",
        "pub struct Cart {\n    items: Vec<u64>,\n}\n\nimpl Cart {\n    pub fn total(&self) -> u64 {\n        let sum: u64 = self.items.iter().sum();\n        sum + 300\n    }\n\n    pub fn is_empty(&self) -> bool {\n        self.items.is_empty()\n    }\n}\n",
    );
    write(
        root,
        "app/tax.py",
        "def with_tax(amount, rate):\n    \"\"\"The amount with tax.\n\n    Rounded to cents.\n    \"\"\"\n    taxed = amount * (1 + rate)\n    return round(taxed, 2)\n\n\ndef rate_for(region):\n    if region == \"eu\":\n        return 0.2\n    return 0.0\n",
    );
    let blocks = tasks(root, "block");
    let expected: Vec<&str> = blocks.iter().map(|t| t["expected"].as_str().unwrap()).collect();
    // Bodies of two lines or more, whole; a one-line body is not a block task.
    assert!(expected.contains(&"let sum: u64 = self.items.iter().sum();\n        sum + 300"), "{expected:?}");
    assert!(expected.contains(&"taxed = amount * (1 + rate)\n    return round(taxed, 2)"), "{expected:?}");
    assert!(expected.contains(&"if region == \"eu\":\n        return 0.2\n    return 0.0"), "{expected:?}");
    assert!(!expected.iter().any(|e| e.contains("is_empty()")), "{expected:?}");
    for task in &blocks {
        let field = |k: &str| task[k].as_str().unwrap().to_owned();
        let file = fs::read_to_string(root.join(field("path"))).unwrap();
        assert_eq!(format!("{}{}{}", field("prefix"), field("expected"), field("suffix")), file, "{task}");
        assert!(!field("prefix").contains(&field("expected")) && !field("suffix").contains(&field("expected")), "{task}");
        // The cursor sits after the first body line's indentation.
        assert!(field("prefix").ends_with("\n    ") || field("prefix").ends_with("\n        "), "{task}");
    }
    assert_eq!(blocks.len(), 3, "{expected:?}");
}

/// A run saved by `kenning eval --save-scores` on `workspace`: (id, path, kind, edit similarity).
fn saved_run(dir: &Path, name: &str, workspace: &str, tasks: &[(&str, &str, &str, f64)]) -> std::path::PathBuf {
    let scores: Vec<serde_json::Value> = tasks
        .iter()
        .map(|&(id, path, kind, similarity)| serde_json::json!({"id": id, "path": path, "kind": kind, "exact": similarity == 1.0, "similarity": similarity, "latency_ms": 1.0}))
        .collect();
    let run = serde_json::json!({"mode": "rag", "tasks": tasks.len(), "exact_match": 0.0, "edit_similarity": 0.0, "mean_latency_ms": 1.0,
        "p50_latency_ms": 1.0, "peak_rss_mib": 1.0, "workspace": workspace, "scores": scores});
    let path = dir.join(name);
    fs::write(&path, run.to_string()).unwrap();
    path
}

/// `kenning compare` on runs saved in pieces on two repositories: one table, per repository,
/// language and kind; and its output cut short by a reader that went away is not a crash.
#[test]
fn saved_runs_of_several_repositories_compare_task_by_task() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = [
        saved_run(d, "a-none.json", "alpha", &[("lib.rs:1:line", "lib.rs", "line", 0.5), ("lib.rs:2:api", "lib.rs", "api", 0.5)]),
        saved_run(d, "b-none.json", "beta", &[("lib.rs:1:line", "lib.rs", "line", 0.2), ("m.py:3:api", "m.py", "api", 0.4)]),
    ];
    let other = [
        saved_run(d, "a-rag.json", "alpha", &[("lib.rs:1:line", "lib.rs", "line", 1.0), ("lib.rs:2:api", "lib.rs", "api", 0.3)]),
        saved_run(d, "b-rag.json", "beta", &[("lib.rs:1:line", "lib.rs", "line", 0.4), ("m.py:3:api", "m.py", "api", 0.4)]),
    ];
    let compare = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kenning"));
        c.arg("compare").arg("--base").args(&base).arg("--with").args(&other);
        c
    };
    let run = compare().output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8(run.stdout).unwrap();
    let row = |label: &str| text.lines().find(|l| l.split("  ").next() == Some(label)).unwrap_or_else(|| panic!("no row {label:?} in\n{text}")).to_owned();
    // (+50 − 20 + 20 + 0) / 4 tasks, from 3 files (each repository's lib.rs is its own).
    let all: Vec<String> = row("all").split_whitespace().map(str::to_owned).collect();
    assert_eq!(&all[1..5], ["4", "3", "40.0", "52.5"], "{text}");
    assert_eq!(all[5], "+12.5", "{text}");
    assert!(row("repository beta").contains("+10.0"), "{text}");
    assert!(row("language python").split_whitespace().nth(2) == Some("1"), "{text}");
    assert!(row("kind api").contains("-10.0"), "{text}");

    // The reader is gone before anything is printed.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let cut = compare().stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&cut.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(cut.status.code(), Some(141), "{stderr}");

    let missing = compare().arg("--with").arg(d.join("nowhere.json")).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nowhere.json"));
}
