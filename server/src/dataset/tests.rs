use std::path::Path;

use expect_test::expect;

use super::*;

const LIB: &str = r#"//! Prices.

pub struct Cart {
    items: Vec<u64>,
}

impl Cart {
    pub fn total(&self) -> u64 {
        let mut sum = 0;
        for item in &self.items {
            sum += item;
        }
        sum
    }

    pub fn discounted(&self, percent: u64) -> u64 {
        self.total() * (100 - percent) / 100
    }
}
"#;

const UTIL: &str = r#"pub fn clamp_percent(value: u64) -> u64 {
    if value > 100 {
        return 100;
    }
    value
}
"#;

const PY: &str = r#"def shipping(weight_kg, express=False):
    base = 4.5 + weight_kg * 1.2
    if express:
        return base * 2
    return base
"#;

const TS: &str = r#"export function formatPrice(cents: number): string {
  const euros = Math.floor(cents / 100);
  return `${euros}.${String(cents % 100).padStart(2, "0")} EUR`;
}
"#;

fn fixture(root: &Path) {
    let files: &[(&str, &str)] = &[
        ("src/lib.rs", LIB),
        ("src/util.rs", UTIL),
        ("vendor/util_copy.rs", UTIL),
        ("app/shipping.py", PY),
        ("web/price.ts", TS),
        ("target/generated.rs", "pub fn generated_code_should_not_appear() {}\n"),
        (".env", "API_KEY=sk-should-not-appear\n"),
        ("deploy/id_rsa", "-----BEGIN PRIVATE KEY-----\n"),
        ("notes.md", "# Notes\nnot code\n"),
        (".gitignore", "target/\n"),
    ];
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn mined(options: &DatasetOptions) -> (tempfile::TempDir, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let dataset = mine(dir.path(), options);
    (dir, dataset)
}

/// The parts of a Qwen FIM example: prefix, suffix, middle.
fn parts(text: &str) -> (&str, &str, &str) {
    let rest = text.strip_prefix("<|fim_prefix|>").expect("starts with the prefix token");
    let (prefix, rest) = rest.split_once("<|fim_suffix|>").unwrap();
    let (suffix, middle) = rest.split_once("<|fim_middle|>").unwrap();
    (prefix, suffix, middle)
}

#[test]
fn ignored_secret_duplicate_and_non_code_files_are_left_out() {
    let (_dir, dataset) = mined(&DatasetOptions::default());
    let files: Vec<&str> = dataset.files.keys().map(String::as_str).collect();
    // The copy in vendor/ has the same bytes as src/util.rs: one of the two is kept.
    assert_eq!(files, vec!["app/shipping.py", "src/lib.rs", "src/util.rs", "web/price.ts"]);
    for e in &dataset.examples {
        assert!(!e.text.contains("should-not-appear") && !e.text.contains("should_not_appear"), "{}", e.text);
        assert!(!e.text.contains("PRIVATE KEY"), "{}", e.text);
    }
}

#[test]
fn every_file_lands_in_exactly_one_split_and_all_splits_are_used() {
    let (_dir, dataset) = mined(&DatasetOptions::default());
    for e in &dataset.examples {
        assert_eq!(dataset.files[&e.path], e.split, "{} in two splits", e.path);
    }
    for split in Split::ALL {
        assert!(dataset.stats(split).files >= 1, "{split:?} is empty");
        assert!(dataset.examples.iter().any(|e| e.split == split), "{split:?} has no examples");
    }
    assert_eq!(dataset.train.files + dataset.valid.files + dataset.test.files, 4);
    // The split is a function of the path: the same again.
    let (_dir, again) = mined(&DatasetOptions::default());
    assert_eq!(again.files, dataset.files);
}

#[test]
fn fim_middles_are_cut_at_syntax_boundaries_of_the_original_file() {
    let options = DatasetOptions { fim_per_kb: 12.0, ..DatasetOptions::default() };
    let (dir, dataset) = mined(&options);
    let mut kinds = HashSet::new();
    for e in dataset.examples.iter().filter(|e| e.span.is_some()) {
        let original = std::fs::read_to_string(dir.path().join(&e.path)).unwrap();
        let (prefix, suffix, middle) = parts(&e.text);
        let whole = format!("{prefix}{middle}{suffix}");
        let at = original.find(&whole).unwrap_or_else(|| panic!("{}: not contiguous in the file:\n{whole}", e.path)) + prefix.len();
        assert!(!middle.trim().is_empty());
        let span = e.span.unwrap();
        kinds.insert(span);
        let language = Language::from_path(&e.path);
        let tree = chunk::parse(language, &original).unwrap();
        let end = at + middle.len();
        match span {
            SpanKind::RestOfLine => {
                assert!(original[end..].starts_with('\n'), "{middle:?} does not run to the end of its line");
                assert!(!middle.contains('\n'));
            }
            SpanKind::FunctionBody => {
                // The inside of a function's braces (or a whole Python block).
                let braces = original[..at].ends_with('{') && original[end..].starts_with('}');
                let node = tree.root_node().descendant_for_byte_range(at, end).unwrap();
                assert!(braces || (node.start_byte(), node.end_byte()) == (at, end), "{middle:?}");
            }
            SpanKind::Statement | SpanKind::Expression => {
                let node = tree.root_node().descendant_for_byte_range(at, end).unwrap();
                assert_eq!((node.start_byte(), node.end_byte()), (at, end), "{middle:?} is not one node");
            }
        }
    }
    assert_eq!(kinds.len(), 4, "every kind of span is mined: {kinds:?}");
}

#[test]
fn examples_fit_the_context_length() {
    let options = DatasetOptions { max_seq_length: 40, fim_per_kb: 8.0, ..DatasetOptions::default() };
    let (_dir, dataset) = mined(&options);
    let budget = (40.0 * BYTES_PER_TOKEN) as usize;
    let markup = "<|fim_prefix|><|fim_suffix|><|fim_middle|>".len();
    for e in &dataset.examples {
        assert!(e.text.len() <= budget + markup, "{} bytes: {}", e.text.len(), e.text);
    }
    // LIB is longer than one window: it is cut into several next-token examples.
    assert!(dataset.examples.iter().filter(|e| e.path == "src/lib.rs" && e.span.is_none()).count() >= 3);
}

/// A stand-in tokenizer, denser than the default estimate: one token per two bytes, and one per
/// FIM marker.
fn two_bytes_a_token(text: &str) -> Option<usize> {
    let markers = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"];
    let plain = markers.iter().fold(text.to_owned(), |t, m| t.replace(m, ""));
    Some(plain.len().div_ceil(2) + (text.len() - plain.len()) / markers[0].len())
}

#[test]
fn with_a_tokenizer_examples_are_sized_and_counted_in_its_tokens() {
    let options = DatasetOptions { max_seq_length: 40, fim_per_kb: 8.0, ..DatasetOptions::default() };
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let mut told = Vec::new();
    let dataset = mine_counted(dir.path(), &options, Some(&two_bytes_a_token), &mut |done, total| told.push((done, total)));
    let files = dataset.files.len();
    assert_eq!(told.first(), Some(&(0, files)), "progress starts at 0 of the files");
    assert_eq!(told.last(), Some(&(files, files)), "and ends with all of them");
    assert!(told.windows(2).all(|w| w[0].0 < w[1].0), "and only goes forward: {told:?}");
    assert!(dataset.tokens_counted);
    assert!((dataset.bytes_per_token - 1.8).abs() < 0.05, "measured {} bytes per token", dataset.bytes_per_token);
    assert!(dataset.examples.iter().any(|e| e.span.is_some()) && dataset.examples.iter().any(|e| e.span.is_none()));
    let mut total = 0;
    for e in &dataset.examples {
        let n = two_bytes_a_token(&e.text).unwrap();
        assert!(n < 40, "{n} tokens (and the end-of-sequence token to come): {:?}", e.text);
        total += n;
    }
    let counted: usize = Split::ALL.iter().map(|&s| dataset.stats(s).tokens).sum();
    assert_eq!(counted, total, "the figures are the examples' counts");
    // The same files under the default 3.5-byte estimate would have made examples of ~70 tokens.
    let estimated = mine(dir.path(), &options);
    assert!(!estimated.tokens_counted);
    assert!(estimated.examples.iter().any(|e| two_bytes_a_token(&e.text).unwrap() > 40));

    // A tokenizer that fails leaves the estimate in place.
    let failing = mine_counted(dir.path(), &options, Some(&|_: &str| None), &mut |_, _| {});
    assert!(!failing.tokens_counted);
    assert_eq!(failing.examples, estimated.examples);
}

#[test]
fn a_window_over_the_limit_is_cut_at_line_ends_until_it_fits() {
    let text: String = (0..30).map(|i| format!("let value_{i} = compute({i});\n")).collect();
    let parts = fit_window(text.clone(), 50, 3.5, &two_bytes_a_token);
    assert!(parts.len() >= 4, "{} parts", parts.len());
    assert_eq!(parts.iter().map(|(t, _)| t.as_str()).collect::<String>(), text, "nothing lost, nothing repeated");
    for (part, n) in &parts {
        assert!(part.ends_with('\n') && *n <= 50 && Some(*n) == two_bytes_a_token(part), "{n}: {part:?}");
    }
    // One long line is cut anywhere, at a character boundary.
    let line = "é".repeat(200);
    let parts = fit_window(line.clone(), 50, 3.5, &two_bytes_a_token);
    assert_eq!(parts.iter().map(|(t, _)| t.as_str()).collect::<String>(), line);
    assert!(parts.iter().all(|(_, n)| *n <= 50));
}

#[test]
fn a_family_without_fim_gets_completions_of_the_code_before_a_middle_that_ends_its_line() {
    let options = DatasetOptions { family: Family::Plain, fim_per_kb: 12.0, ..DatasetOptions::default() };
    let (dir, dataset) = mined(&options);
    let completions: Vec<&Example> = dataset.examples.iter().filter(|e| e.span.is_some()).collect();
    assert!(completions.len() >= 8, "{}", completions.len());
    for e in &completions {
        let original = std::fs::read_to_string(dir.path().join(&e.path)).unwrap();
        let at = e.prompt_len.expect("a completion says where it begins");
        let (prompt, completion) = e.text.split_at(at);
        // The prompt is the file's text just before the completion, from a line start; the
        // completion runs to the end of its line (only blanks after it).
        let start = original.find(&e.text).unwrap_or_else(|| panic!("{}: not in the file:\n{}", e.path, e.text));
        assert!(start == 0 || original[..start].ends_with('\n'), "{prompt:?}");
        assert!(!completion.trim().is_empty());
        let after = &original[start + e.text.len()..];
        assert!(after.split('\n').next().unwrap().trim().is_empty(), "{completion:?} is followed by {after:?}");
    }
    // Windows of whole files are whole texts.
    assert!(dataset.examples.iter().filter(|e| e.span.is_none()).all(|e| e.prompt_len.is_none()));
    let out = dir.path().join("out");
    dataset.write(&out).unwrap();
    let written: Vec<serde_json::Value> = Split::ALL
        .iter()
        .flat_map(|s| std::fs::read_to_string(out.join(format!("{}.jsonl", s.name()))).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>())
        .collect();
    let pairs = written.iter().filter(|v| v.get("prompt").is_some()).count();
    assert_eq!(pairs, completions.len());
    let first = completions[0];
    let line = written.iter().find(|v| v["completion"].as_str().is_some_and(|c| first.text.ends_with(c) && v["prompt"].as_str().is_some_and(|p| first.text.starts_with(p) && p.len() + c.len() == first.text.len())));
    assert!(line.is_some(), "{:?} is not written as its prompt and completion", first.text);
    // With none asked for, only windows.
    let (_dir, windows) = mined(&DatasetOptions { family: Family::Plain, fim_per_kb: 0.0, ..DatasetOptions::default() });
    assert!(!windows.examples.is_empty());
    assert!(windows.examples.iter().all(|e| e.span.is_none() && e.prompt_len.is_none()));
}

#[test]
fn written_files_are_mlx_lm_data_and_a_snapshot_of_one_example() {
    let (dir, dataset) = mined(&DatasetOptions::default());
    let out = dir.path().join("out");
    dataset.write(&out).unwrap();
    let mut lines = 0;
    for split in Split::ALL {
        let text = std::fs::read_to_string(out.join(format!("{}.jsonl", split.name()))).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["text"]);
            lines += 1;
        }
    }
    assert_eq!(lines, dataset.examples.len());
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"]["src/lib.rs"], serde_json::json!(dataset.files["src/lib.rs"].name()));
    let first = dataset.examples.iter().find(|e| e.path == "src/util.rs" && e.span.is_some()).unwrap();
    expect![[r#"
        Some(
            Expression,
        )
        <|fim_prefix|>pub fn clamp_percent(value: u64) -> u64 {
            <|fim_suffix|>
            value
        }
        <|fim_middle|>if value > 100 {
                return 100;
            }"#]]
    .assert_eq(&format!("{:#?}\n{}", first.span, first.text));
}

#[test]
fn split_sizes_follow_the_fractions() {
    let paths: Vec<String> = (0..100).map(|i| format!("src/f{i}.rs")).collect();
    let splits = assign_splits(paths.iter().map(String::as_str), &DatasetOptions::default());
    let count = |s: Split| splits.iter().filter(|&&x| x == s).count();
    assert_eq!((count(Split::Train), count(Split::Valid), count(Split::Test)), (80, 10, 10));
    let small = assign_splits(["a.rs", "b.rs", "c.rs"].into_iter(), &DatasetOptions::default());
    assert_eq!(small.iter().filter(|&&x| x == Split::Train).count(), 1);
}

#[test]
fn eval_tasks_cut_code_lines_of_the_held_out_files_only() {
    let (dir, dataset) = mined(&DatasetOptions::default());
    let test_files: Vec<String> = dataset.files.iter().filter(|(_, s)| **s == Split::Test).map(|(p, _)| p.clone()).collect();
    let tasks = eval_tasks(dir.path(), &test_files, 50, 0);
    assert!(!tasks.is_empty());
    for t in &tasks {
        assert!(test_files.contains(&t.path), "{} is not a test file", t.path);
        let file = std::fs::read_to_string(dir.path().join(&t.path)).unwrap();
        assert_eq!(format!("{}{}{}", t.prefix, t.expected, t.suffix), file, "{}", t.id);
        assert!(!t.expected.contains('\n') && !t.expected.trim().is_empty(), "{:?}", t.expected);
        assert!(t.suffix.is_empty() || t.suffix.starts_with('\n'), "the cut runs to the line's end: {:?}", t.suffix);
        let line = t.prefix.rsplit('\n').next().unwrap().trim_start();
        assert!(!line.starts_with("//") && !line.starts_with('#'), "a comment: {line:?}");
        let number: usize = t.id.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(file.lines().nth(number - 1).unwrap(), format!("{}{}", t.prefix.rsplit('\n').next().unwrap(), t.expected));
    }
    // Deterministic, and a smaller count is a prefix of a larger one.
    assert_eq!(eval_tasks(dir.path(), &test_files, 50, 0), tasks);
    assert_eq!(eval_tasks(dir.path(), &test_files, 2, 0), tasks[..2.min(tasks.len())]);
    let all: Vec<String> = dataset.files.keys().cloned().collect();
    let spread = eval_tasks(dir.path(), &all, 4, 0);
    let paths: std::collections::HashSet<&str> = spread.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(paths.len(), 4, "one task from each file before a second from any: {paths:?}");
}

#[test]
fn file_splits_are_the_splits_mine_assigns() {
    let (dir, dataset) = mined(&DatasetOptions::default());
    assert_eq!(file_splits(dir.path(), &DatasetOptions::default()), dataset.files);
}

#[test]
fn a_share_of_middles_carries_a_completions_context_but_never_a_held_out_file() {
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let root = dir.path();
    let splits = file_splits(dir.path(), &DatasetOptions::default());
    let held_out: Vec<&str> = splits.iter().filter(|(_, s)| **s != Split::Train).map(|(p, _)| p.as_str()).collect();
    assert!(!held_out.is_empty());
    // What retrieval would find: one snippet of every other file (held-out ones included), then a
    // note as the newest.
    let asked: Mutex<Vec<(String, String, usize)>> = Mutex::default();
    let find = |path: &str, text: &str, offset: usize| {
        asked.lock().unwrap().push((path.to_owned(), text.to_owned(), offset));
        let snippet = |path: &str, text: &str| Snippet { path: path.into(), start_line: 1, end_line: 1, text: text.into(), source: crate::prompt::Source::Retrieved };
        let mut found: Vec<Snippet> = splits.keys().filter(|p| p.as_str() != path).map(|p| snippet(p, &format!("fn from_{}() {{}}\n", p.len()))).collect();
        // The index holds the copy the dataset left out: it is src/util.rs.
        found.push(snippet("vendor/util_copy.rs", "pub fn clamp_percent(value: u64) -> u64;\n"));
        // And, under another name, the whole file the example is cut from, its middle included.
        found.push(snippet(&format!("mirror/{path}"), &std::fs::read_to_string(root.join(path)).unwrap()));
        found.push(snippet("notes.md", "# Notes\n"));
        // The newest of all, too big for any example's room: left out, the others still taken.
        found.push(snippet("big.rs", &"fn big() {}\n".repeat(200)));
        found
    };
    let options = DatasetOptions { family: Family::Plain, fim_per_kb: 12.0, max_seq_length: 200, ..DatasetOptions::default() };
    let context = Context { repo: "shop".into(), share: 0.5, snippets: &find };
    let dataset = mine_with(dir.path(), &options, None, Some(&context), &mut |_, _| {});
    let middles: Vec<&Example> = dataset.examples.iter().filter(|e| e.span.is_some()).collect();
    let carrying: Vec<&&Example> = middles.iter().filter(|e| e.text.starts_with("// ") || e.text.starts_with("# ")).collect();
    assert_eq!(carrying.len(), dataset.with_context);
    // About half of them (a hash of the place decides), not all and not none.
    assert!(carrying.len() * 5 >= middles.len() && carrying.len() * 5 <= middles.len() * 4, "{} of {}", carrying.len(), middles.len());
    for e in &carrying {
        let prompt = &e.text[..e.prompt_len.unwrap()];
        // Newest last, within half the room: the note always; never a held-out file.
        let comment = if e.path.ends_with(".py") { "#" } else { "//" };
        assert!(prompt.contains(&format!("{comment} notes.md\n")) && !prompt.contains("big.rs"), "{prompt}");
        for path in held_out.iter().filter(|p| **p != e.path) {
            assert!(!prompt.contains(&format!("{comment} {path}\n")), "{path} shown in {prompt}");
        }
        // A copy of the file itself, or of a held-out file, is that file.
        if e.path == "src/util.rs" || held_out.contains(&"src/util.rs") {
            assert!(!prompt.contains("vendor/util_copy.rs"), "{prompt}");
        }
        // No snippet holding the answer (a middle of 16 bytes or more).
        assert!(e.text.len() - e.prompt_len.unwrap() < 16 || !prompt.contains(&format!("mirror/{}", e.path)), "{prompt}");
        // Then the file's own name and the code before the middle.
        let original = std::fs::read_to_string(dir.path().join(&e.path)).unwrap();
        let own = format!("{comment} {}\n", e.path);
        let code = &e.text[e.text.find(&own).unwrap() + own.len()..];
        assert!(original.contains(code), "{code:?}");
        assert!(e.text.len() <= (200.0 * BYTES_PER_TOKEN) as usize, "{}", e.text.len());
    }
    // Retrieval was asked with the middle taken out of the file, the cursor where it was.
    for (path, text, offset) in asked.lock().unwrap().iter() {
        let original = std::fs::read_to_string(dir.path().join(path)).unwrap();
        assert!(text.len() < original.len() && original.starts_with(&text[..*offset]) && original.ends_with(&text[*offset..]), "{path}:{offset}");
    }
    // The same places carry context in the FIM format, and only these: the middles are drawn as
    // without context (the default's examples do not move).
    let qwen = mine_with(dir.path(), &DatasetOptions { fim_per_kb: 12.0, ..DatasetOptions::default() }, None, Some(&Context { share: 1.0, ..context }), &mut |_, _| {});
    let plain = mine(dir.path(), &DatasetOptions { fim_per_kb: 12.0, ..DatasetOptions::default() });
    let with: Vec<&Example> = qwen.examples.iter().filter(|e| e.span.is_some()).collect();
    // The same middles (the code around them shorter, to leave room for the context).
    let middle = |e: &Example| (e.path.clone(), parts(&e.text[e.text.find("<|fim_prefix|>").unwrap()..]).2.to_owned());
    let middles: std::collections::BTreeSet<(String, String)> = with.iter().map(|e| middle(e)).collect();
    assert_eq!(middles, plain.examples.iter().filter(|e| e.span.is_some()).map(middle).collect());
    assert!(with.iter().all(|e| e.text.starts_with("<|repo_name|>shop\n<|file_sep|>")), "{:?}", with[0].text);
    assert_eq!(qwen.with_context, with.len());
    assert_eq!(plain.with_context, 0);
}
