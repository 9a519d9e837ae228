//! Training data mined from a repository's own code, in `mlx_lm.lora`'s layout (`train.jsonl`,
//! `valid.jsonl`, `test.jsonl`, one `{"text": ...}` per line), for `kenning-train` or Python
//! `mlx_lm.lora`.
//!
//! - Files come from the same walk as the index (.gitignore, `.kenningignore`, the secret-name filter,
//!   size limit, binary and generated files skipped), limited to languages with a grammar; copies of
//!   one file count once.
//! - Whole files go to one split, by a hash of their path (no leakage between splits).
//! - Fill-in-the-middle examples cut the middle at syntax boundaries (a statement, an expression, a
//!   function body, the rest of a line) and are written in the model family's FIM format; the
//!   trainer puts the loss on the middle only. A family without FIM tokens gets the same middles
//!   that end a line as completions of the code before them (`{"prompt", "completion"}`, the loss
//!   on the completion and the end-of-sequence token after it: where to stop is learnt too).
//!   Next-token examples are windows of whole files. Both
//!   are sized to the context length in bytes at the model's own bytes per token, measured with its
//!   tokenizer on a sample of the files when one is given ([`mine_counted`]); then every example is
//!   counted, windows that still run over are cut again and middles that do are dropped.
//! - A share of the fill-in-the-middle examples can carry the context a completion at their place
//!   would carry ([`Context`]: definitions, signatures, similar code from the index), so that a model
//!   trained on them learns to use it; never a snippet of a held-out file.
//! - Identical examples are written once.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use crate::chunk::{self, Language};
use crate::prompt::{Family, Snippet};
use crate::rng::SplitMix64;
use crate::workspace::{self, SourceFile, WalkItem, WalkOptions};

/// Bytes per token assumed when no tokenizer is at hand (the prompt budget uses the same estimate).
const BYTES_PER_TOKEN: f64 = 3.5;

/// Bytes of the files a tokenizer reads to measure bytes per token.
const SAMPLE_BYTES: usize = 256 * 1024;

/// Counts the tokens of a text with the model's tokenizer (`None` when it cannot).
pub type TokenCounter<'a> = &'a (dyn Fn(&str) -> Option<usize> + Sync);

/// The context some fill-in-the-middle examples carry: what a completion at their place would.
pub struct Context<'a> {
    /// The repository's name, as completion prompts give it (`<repo_name>`).
    pub repo: String,
    /// The share of fill-in-the-middle examples that carry it, from 0 to 1.
    pub share: f64,
    /// The snippets a completion carries in the file `path` whose text (the middle taken out) is
    /// the second argument, at the byte offset given third; oldest first.
    pub snippets: &'a (dyn Fn(&str, &str, usize) -> Vec<Snippet> + Sync),
}

/// [`Context`] with the files it must not show.
struct ContextFor<'a> {
    context: &'a Context<'a>,
    /// Files of the valid and test splits: no example shows them.
    held_out: HashSet<&'a str>,
    /// Files left out of the dataset as copies of another: path → the kept one's (a copy of a
    /// held-out file is held out; a copy of the example's own file is the file itself).
    copies: &'a std::collections::HashMap<String, String>,
}

impl ContextFor<'_> {
    /// Whether the middle `s..e` of `path` is one of the share that carries context (a hash of
    /// the place: the same examples in every run, the random draws of the rest untouched).
    fn chosen(&self, path: &str, s: usize, e: usize) -> bool {
        let draw = hash64(format!("context {path}:{s}:{e}").as_bytes()) as f64 / u64::MAX as f64;
        draw < self.context.share
    }

    /// The snippets for the middle `s..e` of `text`: from the newest on, each that `family` still
    /// renders in at most `room` bytes with those taken before it, in their order; none from a
    /// held-out file.
    fn snippets(&self, family: Family, path: &str, text: &str, (s, e): (usize, usize), room: usize) -> Vec<Snippet> {
        let without = format!("{}{}", &text[..s], &text[e..]);
        let found = (self.context.snippets)(path, &without, s);
        let middle = text[s..e].trim();
        let shown = |n: &Snippet| {
            let file = self.copies.get(&n.path).map_or(n.path.as_str(), String::as_str);
            // Nor the answer itself, whatever file holds it.
            file != path && !self.held_out.contains(file) && !(middle.len() >= 16 && n.text.contains(middle))
        };
        let mut kept: Vec<Snippet> = Vec::new();
        for snippet in found.into_iter().rev().filter(shown) {
            kept.insert(0, snippet);
            let refs: Vec<&Snippet> = kept.iter().collect();
            if family.render(&self.context.repo, path, &refs, "", "").len() > room {
                kept.remove(0);
            }
        }
        kept
    }
}

#[derive(Debug, Clone)]
pub struct DatasetOptions {
    pub family: Family,
    /// Longest example, in tokens.
    pub max_seq_length: usize,
    /// Bytes per token used to size examples before they are counted.
    pub bytes_per_token: f64,
    /// Fill-in-the-middle examples (completions, for a family without FIM tokens) per 1,000 bytes
    /// of a file: up to that many (at least one tried per file; none when 0).
    pub fim_per_kb: f64,
    pub valid_fraction: f64,
    pub test_fraction: f64,
    pub seed: u64,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        Self { family: Family::QwenCoder, max_seq_length: 1024, bytes_per_token: BYTES_PER_TOKEN, fim_per_kb: 1.0, valid_fraction: 0.1, test_fraction: 0.1, seed: 0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// How a fill-in-the-middle span was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpanKind {
    Statement,
    Expression,
    FunctionBody,
    RestOfLine,
}

const SPAN_KINDS: [SpanKind; 4] = [SpanKind::Statement, SpanKind::Expression, SpanKind::FunctionBody, SpanKind::RestOfLine];

/// An example as mined from one file, before it is counted.
struct Mined {
    span: Option<SpanKind>,
    text: String,
    prompt_len: Option<usize>,
    with_context: bool,
}

impl Mined {
    fn window(text: String) -> Self {
        Self { span: None, text, prompt_len: None, with_context: false }
    }
}

/// One example, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub path: String,
    pub split: Split,
    /// `None` for a next-token (whole-window) example.
    pub span: Option<SpanKind>,
    pub text: String,
    /// Where the completion begins in `text`, for a completion example (written as `prompt` and
    /// `completion`).
    pub prompt_len: Option<usize>,
}

/// Counts per split.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SplitStats {
    pub files: usize,
    pub fim: usize,
    pub next_token: usize,
    pub bytes: usize,
    /// Counted with the model's tokenizer when [`Dataset::tokens_counted`], else estimated.
    pub tokens: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Dataset {
    #[serde(skip)]
    pub examples: Vec<Example>,
    pub family: Family,
    pub train: SplitStats,
    pub valid: SplitStats,
    pub test: SplitStats,
    /// Files per split (relative paths): what the held-out evaluation uses.
    pub files: std::collections::BTreeMap<String, Split>,
    pub duplicates_dropped: usize,
    pub skipped_files: usize,
    /// Bytes per token the examples were sized with (measured when a tokenizer was given).
    pub bytes_per_token: f64,
    pub tokens_counted: bool,
    /// Fill-in-the-middle examples longer than `max_seq_length` tokens, dropped.
    pub too_long_dropped: usize,
    /// Fill-in-the-middle examples that carry a completion's context ([`Context`]).
    pub with_context: usize,
    /// Secrets taken out of the files before any example was made: path, line, kind.
    pub redacted: Vec<(String, u32, &'static str)>,
}

impl Dataset {
    pub fn stats(&self, split: Split) -> &SplitStats {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    fn stats_mut(&mut self, split: Split) -> &mut SplitStats {
        match split {
            Split::Train => &mut self.train,
            Split::Valid => &mut self.valid,
            Split::Test => &mut self.test,
        }
    }

    /// Writes `train.jsonl`, `valid.jsonl`, `test.jsonl` and `dataset.json` (counts and the file
    /// split) into `out`.
    pub fn write(&self, out: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(out)?;
        for split in Split::ALL {
            let mut text = String::new();
            for e in self.examples.iter().filter(|e| e.split == split) {
                let line = match e.prompt_len {
                    Some(n) => serde_json::json!({ "prompt": e.text[..n], "completion": e.text[n..] }),
                    None => serde_json::json!({ "text": e.text }),
                };
                text.push_str(&line.to_string());
                text.push('\n');
            }
            std::fs::write(out.join(format!("{}.jsonl", split.name())), text)?;
        }
        std::fs::write(out.join("dataset.json"), serde_json::to_string_pretty(self).unwrap_or_default() + "\n")
    }
}

/// The files a dataset is made of.
struct SourceFiles {
    /// The index's walk, languages with a grammar, identical files once; sorted by path.
    files: Vec<SourceFile>,
    /// Files skipped (ignored, secret, binary, too large, not UTF-8).
    skipped: usize,
    /// A file left out as a copy of another (the index holds both): its path → the kept one's.
    copies: std::collections::HashMap<String, String>,
}

/// The files the dataset is made of.
fn source_files(root: &Path) -> SourceFiles {
    let found = Mutex::new(Vec::new());
    let skipped = Mutex::new(0usize);
    workspace::walk(root, &WalkOptions::default(), |item| match item {
        WalkItem::File(meta) if Language::from_path(&meta.rel_path).grammar().is_some() => match workspace::read_source(meta, workspace::DEFAULT_MAX_FILE_BYTES) {
            Ok(file) if !file.lossy => found.lock().unwrap_or_else(|e| e.into_inner()).push(file),
            _ => *skipped.lock().unwrap_or_else(|e| e.into_inner()) += 1,
        },
        WalkItem::File(_) => {}
        WalkItem::Skipped { .. } => *skipped.lock().unwrap_or_else(|e| e.into_inner()) += 1,
    });
    let mut files = found.into_inner().unwrap_or_else(|e| e.into_inner());
    // Walk order is not deterministic; the dataset is.
    files.sort_by(|a, b| a.meta.rel_path.cmp(&b.meta.rel_path));
    let mut kept: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut copies = std::collections::HashMap::new();
    files.retain(|f| match kept.get(&f.hash) {
        Some(first) => {
            copies.insert(f.meta.rel_path.clone(), first.clone());
            false
        }
        None => {
            kept.insert(f.hash.clone(), f.meta.rel_path.clone());
            true
        }
    });
    SourceFiles { files, skipped: skipped.into_inner().unwrap_or_else(|e| e.into_inner()), copies }
}

/// The split each file of `root` goes to, as [`mine`] assigns it, without mining examples.
pub fn file_splits(root: &Path, options: &DatasetOptions) -> std::collections::BTreeMap<String, Split> {
    let files = source_files(root).files;
    let paths: Vec<&str> = files.iter().map(|f| f.meta.rel_path.as_str()).collect();
    let splits = assign_splits(paths.iter().copied(), options);
    paths.into_iter().map(str::to_owned).zip(splits).collect()
}

/// Mines the dataset, sizing examples at `options.bytes_per_token`.
pub fn mine(root: &Path, options: &DatasetOptions) -> Dataset {
    mine_counted(root, options, None, &mut |_, _| {})
}

/// Mines the dataset with the model's tokenizer: bytes per token measured on a sample of the
/// files, every example counted, none longer than `max_seq_length` tokens with the end-of-sequence
/// token the trainer appends. `progress` is told the files mined so far of how many, as it goes.
pub fn mine_counted(root: &Path, options: &DatasetOptions, counter: Option<TokenCounter>, progress: &mut dyn FnMut(usize, usize)) -> Dataset {
    mine_with(root, options, counter, None, progress)
}

/// [`mine_counted`], a share of the fill-in-the-middle examples carrying `context`.
pub fn mine_with(root: &Path, options: &DatasetOptions, counter: Option<TokenCounter>, context: Option<&Context>, progress: &mut dyn FnMut(usize, usize)) -> Dataset {
    let SourceFiles { files, skipped, copies } = source_files(root);
    let measured = counter.and_then(|count| measure_bytes_per_token(files.iter().map(|f| f.text.as_str()), count));
    let options = &DatasetOptions { bytes_per_token: measured.unwrap_or(options.bytes_per_token), ..options.clone() };
    let counter = counter.filter(|_| measured.is_some());
    let splits = assign_splits(files.iter().map(|f| f.meta.rel_path.as_str()), options);
    let mut dataset = Dataset {
        examples: Vec::new(),
        family: options.family,
        train: SplitStats::default(),
        valid: SplitStats::default(),
        test: SplitStats::default(),
        files: std::collections::BTreeMap::new(),
        duplicates_dropped: 0,
        skipped_files: skipped,
        bytes_per_token: options.bytes_per_token,
        tokens_counted: counter.is_some(),
        too_long_dropped: 0,
        with_context: 0,
        redacted: files.iter().flat_map(|f| f.redactions.iter().map(|r| (f.meta.rel_path.clone(), r.line, r.kind))).collect(),
    };
    // The trainer appends an end-of-sequence token.
    let limit = options.max_seq_length.saturating_sub(1).max(1);
    let mut seen = HashSet::new();
    let context = context.filter(|c| c.share > 0.0).map(|context| ContextFor {
        context,
        held_out: files.iter().zip(&splits).filter(|(_, s)| **s != Split::Train).map(|(f, _)| f.meta.rel_path.as_str()).collect(),
        copies: &copies,
    });
    for (done, (file, split)) in files.iter().zip(splits.iter().copied()).enumerate() {
        progress(done, files.len());
        dataset.files.insert(file.meta.rel_path.clone(), split);
        let language = Language::from_path(&file.meta.rel_path);
        let mut examples: Vec<Mined> = next_token_examples(&file.text, options).into_iter().map(Mined::window).collect();
        let mut rng = SplitMix64::new(options.seed ^ hash64(file.meta.rel_path.as_bytes()));
        if options.fim_per_kb > 0.0 {
            examples.extend(fim_examples(&file.meta.rel_path, language, &file.text, options, context.as_ref(), &mut rng));
        }
        dataset.stats_mut(split).files += 1;
        let mut counted = Vec::with_capacity(examples.len());
        for mined in examples {
            let Some(count) = counter else {
                let tokens = (mined.text.len() as f64 / options.bytes_per_token).ceil() as usize;
                counted.push((mined, tokens));
                continue;
            };
            match mined.span {
                None => counted.extend(fit_window(mined.text, limit, options.bytes_per_token, count).into_iter().map(|(t, n)| (Mined::window(t), n))),
                // The trainer reads a prompt and its completion each on its own.
                Some(_) => match mined.prompt_len.map_or_else(|| count(&mined.text), |p| Some(count(&mined.text[..p])? + count(&mined.text[p..])?)) {
                    Some(n) if n > limit => dataset.too_long_dropped += 1,
                    n => {
                        let n = n.unwrap_or_else(|| (mined.text.len() as f64 / options.bytes_per_token).ceil() as usize);
                        counted.push((mined, n));
                    }
                },
            }
        }
        for (Mined { span, text, prompt_len, with_context }, tokens) in counted {
            if !seen.insert(blake3::hash(text.as_bytes())) {
                dataset.duplicates_dropped += 1;
                continue;
            }
            dataset.with_context += usize::from(with_context);
            let stats = dataset.stats_mut(split);
            match span {
                Some(_) => stats.fim += 1,
                None => stats.next_token += 1,
            }
            stats.bytes += text.len();
            stats.tokens += tokens;
            dataset.examples.push(Example { path: file.meta.rel_path.clone(), split, span, text, prompt_len });
        }
    }
    progress(files.len(), files.len());
    dataset
}

/// A completion task: a file with the rest of one line taken out; `expected` is that rest, and
/// `prefix + expected + suffix` is the file. `kenning eval` reads and writes these as JSON lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalTask {
    pub id: String,
    pub path: String,
    pub prefix: String,
    pub suffix: String,
    pub expected: String,
    /// The task's category when its maker gave one (`scripts/make_eval_tasks.py`: line, api,
    /// rest, block): comparisons are also broken down by it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// Whether a line's code (indentation taken off) begins like a comment or a docstring in one of the
/// languages kenning reads (`#` includes Rust attributes: callers that want them say so).
pub(crate) fn starts_as_comment(code: &str) -> bool {
    ["//", "#", "/*", "*", "--", "\"\"\"", "'''"].iter().any(|c| code.starts_with(c))
}

/// Up to `count` completion tasks from `files` (paths relative to `root`; the held-out test files):
/// lines of code (not comments), cut where the training data cuts "the rest of a line", taken in
/// turn from each file. Deterministic for the same files, count and seed.
pub fn eval_tasks(root: &Path, files: &[String], count: usize, seed: u64) -> Vec<EvalTask> {
    // (path, text, candidate cuts in a shuffled order)
    type FileCuts = (String, String, Vec<(usize, usize)>);
    let mut per_file: Vec<FileCuts> = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(root.join(path)) else { continue };
        let language = Language::from_path(path);
        let [.., rest_of_line] = candidates(language, &text);
        let mut lines: Vec<(usize, usize)> = rest_of_line
            .into_iter()
            .filter(|&(s, _)| {
                let line = text[..s].rfind('\n').map_or(0, |i| i + 1);
                let code = text[line..].trim_start();
                !starts_as_comment(code)
            })
            .collect();
        let mut rng = SplitMix64::new(seed ^ hash64(path.as_bytes()));
        // A shuffled order per file (Fisher–Yates), taken from the front.
        for i in (1..lines.len()).rev() {
            lines.swap(i, rng.below_by_remainder(i + 1));
        }
        if !lines.is_empty() {
            per_file.push((path.clone(), text, lines));
        }
    }
    let mut tasks = Vec::new();
    let mut round = 0;
    while tasks.len() < count && per_file.iter().any(|(_, _, l)| round < l.len()) {
        for (path, text, lines) in &per_file {
            if tasks.len() >= count {
                break;
            }
            if let Some(&(s, e)) = lines.get(round) {
                tasks.push(EvalTask {
                    id: format!("{path}:{}", text[..s].matches('\n').count() + 1),
                    path: path.clone(),
                    prefix: text[..s].to_owned(),
                    suffix: text[e..].to_owned(),
                    expected: text[s..e].to_owned(),
                    kind: String::new(),
                });
            }
        }
        round += 1;
    }
    tasks
}

/// Splits files by a hash of their path: the highest hashes are the test files, the next the
/// validation files (each at least one once there are three files), the rest train.
pub fn assign_splits<'a>(paths: impl Iterator<Item = &'a str>, options: &DatasetOptions) -> Vec<Split> {
    let paths: Vec<&str> = paths.collect();
    let n = paths.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (hash64(paths[i].as_bytes()) ^ options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), i));
    let at_least_one = |f: f64| if n >= 3 && f > 0.0 { ((n as f64 * f).round() as usize).max(1) } else { (n as f64 * f).round() as usize };
    let test = at_least_one(options.test_fraction);
    let valid = at_least_one(options.valid_fraction).min(n.saturating_sub(test + 1));
    let mut out = vec![Split::Train; n];
    for (rank, &i) in order.iter().rev().enumerate() {
        out[i] = if rank < test {
            Split::Test
        } else if rank < test + valid {
            Split::Valid
        } else {
            Split::Train
        };
    }
    out
}

/// The byte budget of one example.
fn budget(options: &DatasetOptions) -> usize {
    (options.max_seq_length as f64 * options.bytes_per_token) as usize
}

/// Bytes per token of up to [`SAMPLE_BYTES`] of `texts` (whole lines, taken evenly from each),
/// a little under the mean so that denser files still fit; `None` without a count.
fn measure_bytes_per_token<'a>(texts: impl ExactSizeIterator<Item = &'a str>, count: TokenCounter) -> Option<f64> {
    let per_text = (SAMPLE_BYTES / texts.len().max(1)).max(1024);
    let (mut bytes, mut tokens) = (0usize, 0usize);
    for text in texts {
        if bytes >= SAMPLE_BYTES {
            break;
        }
        let end = line_end_before(text, 0, per_text.min(text.len()));
        let part = if end == 0 { &text[..floor_char(text, per_text)] } else { &text[..end] };
        if part.trim().is_empty() {
            continue;
        }
        tokens += count(part)?;
        bytes += part.len();
    }
    (tokens > 0).then(|| (bytes as f64 / tokens as f64 * 0.9).clamp(1.0, 8.0))
}

/// A next-token window, cut in two at a line end (or anywhere, for one long line) until each part
/// has at most `max` tokens; with each part's count.
fn fit_window(text: String, max: usize, bytes_per_token: f64, count: TokenCounter) -> Vec<(String, usize)> {
    let Some(tokens) = count(&text) else {
        let estimate = (text.len() as f64 / bytes_per_token).ceil() as usize;
        return vec![(text, estimate)];
    };
    if tokens <= max || text.len() < 2 {
        return vec![(text, tokens)];
    }
    let half = floor_char(&text, text.len() / 2);
    let cut = match text[..half].rfind('\n') {
        Some(i) if i > 0 => i + 1,
        _ if half > 0 => half,
        _ => text.char_indices().nth(1).map_or(text.len(), |(i, _)| i),
    };
    let (a, b) = text.split_at(cut);
    let mut out = Vec::new();
    for part in [a, b] {
        if part.trim().len() >= 16 {
            out.extend(fit_window(part.to_owned(), max, bytes_per_token, count));
        }
    }
    out
}

/// Whole-file windows of at most the budget, cut at line ends.
fn next_token_examples(text: &str, options: &DatasetOptions) -> Vec<String> {
    let max = budget(options).max(64);
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = floor_char(text, (start + max).min(text.len()));
        if end < text.len()
            && let Some(nl) = text[start..end].rfind('\n')
            && nl > 0
        {
            end = start + nl + 1;
        }
        let window = &text[start..end];
        if window.trim().len() >= 16 {
            out.push(window.to_owned());
        }
        start = end;
    }
    out
}

/// Candidate middles of one file: byte ranges per kind.
fn candidates(language: Language, text: &str) -> [Vec<(usize, usize)>; 4] {
    let mut found: [Vec<(usize, usize)>; 4] = Default::default();
    let max_middle = 1200;
    if let Some(tree) = chunk::parse(language, text) {
        let mut cursor = tree.walk();
        let mut stack = vec![tree.root_node()];
        while let Some(node) = stack.pop() {
            let (s, e) = (node.start_byte(), node.end_byte());
            let kind = node.kind();
            let parent = node.parent().map(|p| p.kind()).unwrap_or("");
            let len = e - s;
            if node.is_named() && !node.has_error() && (8..=max_middle).contains(&len) && !text[s..e].trim().is_empty() {
                if kind.ends_with("statement") || kind == "let_declaration" || kind == "return_statement" {
                    found[0].push((s, e));
                } else if kind.contains("expression") && !kind.contains("statement") && len >= 12 {
                    found[1].push((s, e));
                } else if (kind == "block" || kind == "statement_block" || kind == "compound_statement" || kind == "constructor_body")
                    && (parent.contains("function") || parent.contains("method") || parent.contains("constructor"))
                {
                    // The inside of the braces (a Python block has none: all of it).
                    let inner = text[s..e].strip_prefix('{').and_then(|t| t.strip_suffix('}'));
                    match inner {
                        Some(inner) if !inner.trim().is_empty() => found[2].push((s + 1, e - 1)),
                        Some(_) => {}
                        None => found[2].push((s, e)),
                    }
                }
            }
            for child in node.children(&mut cursor) {
                stack.push(child);
            }
        }
    }
    // The rest of a line: from a point after the indentation to the line's end.
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start().len();
        if body.trim().len() >= 12 {
            let start = indent + body.trim().len() / 3;
            let start = (start..body.len()).find(|&i| body.is_char_boundary(i)).unwrap_or(body.len());
            if start < body.len() {
                found[3].push((offset + start, offset + body.len()));
            }
        }
        offset += line.len();
    }
    for list in &mut found {
        list.sort_unstable();
        list.dedup();
    }
    found
}

/// Fill-in-the-middle examples of one file in the family's format; for a family without FIM
/// tokens, completions of the code before a middle that ends its line (the code after it is not
/// in such a prompt), with where the completion begins.
fn fim_examples(
    path: &str,
    language: Language,
    text: &str,
    options: &DatasetOptions,
    context: Option<&ContextFor>,
    rng: &mut SplitMix64,
) -> Vec<Mined> {
    let fim = options.family.has_fim();
    let found = candidates(language, text);
    let wanted = ((text.len() as f64 / 1000.0) * options.fim_per_kb).ceil().max(1.0) as usize;
    let budget = budget(options);
    let mut out = Vec::new();
    let mut used = HashSet::new();
    for _ in 0..wanted * 3 {
        if out.len() >= wanted {
            break;
        }
        let kind = rng.below_by_remainder(4);
        let list = &found[kind];
        if list.is_empty() {
            continue;
        }
        let (s, e) = list[rng.below_by_remainder(list.len())];
        if !used.insert((s, e)) || e - s > budget / 2 || (!fim && !ends_its_line(text, e)) {
            continue;
        }
        let rest = budget - (e - s);
        // Context takes at most half the room; the code around the middle the rest.
        let snippets = match context {
            Some(c) if c.chosen(path, s, e) => c.snippets(options.family, path, text, (s, e), rest / 2),
            _ => Vec::new(),
        };
        let (repo, snippets): (&str, Vec<&Snippet>) = match context {
            Some(c) if !snippets.is_empty() => (&c.context.repo, snippets.iter().collect()),
            _ => ("", Vec::new()),
        };
        let taken = options.family.render(repo, path, &snippets, "", "").len() - options.family.render("", path, &[], "", "").len();
        let rest = rest.saturating_sub(taken);
        let before = if fim { rest * 3 / 4 } else { rest };
        let prefix = &text[next_line_start(text, s.saturating_sub(before)).min(s)..s];
        let suffix = if fim { &text[e..line_end_before(text, e, e + rest / 4)] } else { "" };
        let prompt = options.family.render(repo, path, &snippets, prefix, suffix);
        let prompt_len = (!fim).then_some(prompt.len());
        out.push(Mined { span: Some(SPAN_KINDS[kind]), text: format!("{prompt}{}", &text[s..e]), prompt_len, with_context: !snippets.is_empty() });
    }
    out
}

/// Whether only blanks are left of the line after byte `at`.
fn ends_its_line(text: &str, at: usize) -> bool {
    text[at..].split('\n').next().is_some_and(|rest| rest.trim().is_empty())
}

/// The first line start at or after byte `at`.
fn next_line_start(text: &str, at: usize) -> usize {
    let at = floor_char(text, at);
    if at == 0 || text[..at].ends_with('\n') {
        return at;
    }
    text[at..].find('\n').map_or(text.len(), |i| at + i + 1)
}

/// The last line end (just after a newline, or the text's end) in `from..=at`; `from` if none.
fn line_end_before(text: &str, from: usize, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    let at = floor_char(text, at).max(from);
    text[from..at].rfind('\n').map_or(from, |i| from + i + 1)
}

fn floor_char(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests;
