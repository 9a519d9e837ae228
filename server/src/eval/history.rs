//! A time split from git history (issue: fine-tuning that proves itself): the repository as it was
//! at a commit T is what retrieval (and, later, training) may see; the tasks are lines added after
//! T. Unlike held-out files, nothing a task asks for can have been indexed or trained on: a task
//! whose line exists anywhere in the repository at T is refused.
//!
//! Git is run as a command (`git` on the PATH), read-only: the snapshot of T is extracted with
//! `git archive`, the user's repository and its worktrees are never touched.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::chunk::Language;
use crate::dataset::EvalTask;
use crate::rng::SplitMix64;
use super::stats::word_spans;

/// Why a time split cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot run git: {0} (the time split needs git on the PATH)")]
    NoGit(std::io::Error),
    #[error("{0} is not a git repository: use held-out files (`kenning eval` without --split time)")]
    NotARepository(PathBuf),
    #[error("{root} is inside the git repository at {top}: give the repository's top directory (-w {top})")]
    NotTheTop { root: PathBuf, top: PathBuf },
    #[error("{0} is a shallow clone: its history is cut short (run `git fetch --unshallow`, or use held-out files)")]
    Shallow(PathBuf),
    #[error("too little history for a time split: {0}")]
    TooLittle(String),
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no lines added after {split} qualify as tasks ({files} files changed; {leaked} lines refused: they existed at the split)")]
    NoTasks { split: String, files: usize, leaked: usize },
}

/// A time split ready to evaluate: the split, its tasks, the snapshot retrieval reads, and the
/// adapter trained on that snapshot, if `kenning train SNAPSHOT` has been run.
#[derive(Debug)]
pub struct TimeSplit {
    pub split: Split,
    pub tasks: TaskSet,
    /// Files with lines added after the split.
    pub files_changed: usize,
    pub snapshot: PathBuf,
    pub adapter: Option<PathBuf>,
}

/// The time split of `root`: the split commit (`at`, default where the last [`TAIL_SHARE`] of the
/// added lines begin) up to `until` (default HEAD), its snapshot (extracted once, under the cache,
/// named like the repository so that prompts carry the same name), and up to `count` tasks of
/// `kinds` from the lines added after it. Indexing the snapshot is the caller's (a process of its own).
pub fn prepare(paths: &crate::paths::Paths, root: &Path, at: Option<&str>, until: Option<&str>, count: usize, kinds: &[TaskKind]) -> Result<TimeSplit, HistoryError> {
    let split = split_commit(root, at, until)?;
    let snapshot = paths.cache().join("snapshots").join(split.at.short()).join(crate::session::workspace_name(root));
    self::snapshot(root, &split.at, &snapshot)?;
    // Only an adapter trained at the split is fair: one trained on today's code has seen the tasks.
    let trained = paths.training_for(&snapshot).join("adapters");
    let adapter = trained.join(kenning_formats::adapter::WEIGHTS_FILE).is_file().then_some(trained);
    let added = added_lines(root, &split)?;
    let files = files_at(root, &split.until, added.keys().cloned())?;
    let set = tasks(&files, &added, &lines_under(&snapshot), count, 0, kinds);
    if set.tasks.is_empty() {
        return Err(HistoryError::NoTasks { split: split.at.short().to_owned(), files: added.len(), leaked: set.leaked });
    }
    Ok(TimeSplit { split, tasks: set, files_changed: added.len(), snapshot, adapter })
}

/// Share of the history's added lines that come after the default split commit.
pub const TAIL_SHARE: f64 = 0.10;
/// Lines shorter than this (after indentation) are not tasks: `}`, `Ok(())`, `else {`.
const MIN_LINE_CHARS: usize = 10;

/// A commit, full hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit(pub String);

impl Commit {
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

fn git(root: &Path, args: &[&str]) -> Result<String, HistoryError> {
    git_bytes(root, args).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// [`git`]'s output as bytes.
fn git_bytes(root: &Path, args: &[&str]) -> Result<Vec<u8>, HistoryError> {
    // Paths unquoted, and none of the user's diff settings that change what is printed.
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["-c", "core.quotePath=false", "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(HistoryError::NoGit)?;
    if !output.status.success() {
        return Err(HistoryError::Git { args: args.join(" "), message: String::from_utf8_lossy(&output.stderr).trim().to_owned() });
    }
    Ok(output.stdout)
}

/// The split: the commit retrieval and training see (`at`), and the commit whose lines are asked
/// for (`until`: HEAD unless pinned, so that a later run can ask the same tasks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub at: Commit,
    pub until: Commit,
}

fn resolve(root: &Path, rev: &str) -> Result<Commit, HistoryError> {
    git(root, &["rev-parse", "--verify", "--quiet", "--end-of-options", &format!("{rev}^{{commit}}")])
        .map(|hash| Commit(hash.trim().to_owned()))
        .map_err(|_| HistoryError::TooLittle(format!("{rev} is not a commit of this repository")))
}

/// Checks that `root` is a whole git repository (not shallow) and resolves `until` (default HEAD)
/// and `rev` (default: the commit where the last [`TAIL_SHARE`] of the lines added up to `until`
/// begin).
pub fn split_commit(root: &Path, rev: Option<&str>, until: Option<&str>) -> Result<Split, HistoryError> {
    let top = match git(root, &["rev-parse", "--show-toplevel"]) {
        Ok(out) => PathBuf::from(out.trim()),
        Err(HistoryError::Git { message, .. }) if message.contains("not a git repository") => return Err(HistoryError::NotARepository(root.to_owned())),
        Err(e) => return Err(e),
    };
    // Paths in the diff and the archive are the repository's: the workspace must be its top.
    let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
    if !same(&top, root) {
        return Err(HistoryError::NotTheTop { root: root.to_owned(), top });
    }
    if git(root, &["rev-parse", "--is-shallow-repository"])?.trim() == "true" {
        return Err(HistoryError::Shallow(root.to_owned()));
    }
    if git(root, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]).is_err() {
        return Err(HistoryError::TooLittle("no commits yet".into()));
    }
    let until_name = until.unwrap_or("HEAD");
    let end = resolve(root, until_name)?;
    if let Some(rev) = rev {
        let commit = resolve(root, rev)?;
        if git(root, &["merge-base", "--is-ancestor", &commit.0, &end.0]).is_err() {
            return Err(HistoryError::TooLittle(format!("{rev} is not an ancestor of {until_name}")));
        }
        return Ok(Split { at: commit, until: end });
    }
    // Oldest first: each commit and the lines it added (first parent only: a merged branch's
    // lines count once, at the merge).
    let log = git(root, &["log", "--first-parent", "--diff-merges=first-parent", "--no-renames", "--reverse", "--format=@%H", "--numstat", &end.0])?;
    let mut commits: Vec<(String, u64)> = Vec::new();
    for line in log.lines() {
        if let Some(hash) = line.strip_prefix('@') {
            commits.push((hash.to_owned(), 0));
        } else if let (Some(last), Some(added)) = (commits.last_mut(), line.split('\t').next().and_then(|n| n.parse::<u64>().ok())) {
            last.1 += added;
        }
    }
    pick_split(&commits).map(|h| Split { at: Commit(h.to_owned()), until: end.clone() }).ok_or_else(|| {
        HistoryError::TooLittle(format!("{} commit(s); a split needs at least two with lines added after the first", commits.len()))
    })
}

/// The newest commit with at least [`TAIL_SHARE`] of all added lines after it (pure; `commits`
/// oldest first with the lines each added). `None` if no commit but the last adds anything.
fn pick_split(commits: &[(String, u64)]) -> Option<&str> {
    let total: u64 = commits.iter().map(|c| c.1).sum();
    let mut after = 0u64;
    for i in (0..commits.len().saturating_sub(1)).rev() {
        after += commits[i + 1].1;
        if after > 0 && after as f64 >= total as f64 * TAIL_SHARE {
            return Some(&commits[i].0);
        }
    }
    None
}

/// The repository as it was at `commit`, extracted to `dir` (once: an existing snapshot is
/// reused; a half-extracted one never is, it is written beside and renamed into place).
pub fn snapshot(root: &Path, commit: &Commit, dir: &Path) -> Result<(), HistoryError> {
    if dir.is_dir() {
        return Ok(());
    }
    fn io(path: &Path) -> impl Fn(std::io::Error) -> HistoryError + '_ {
        move |source| HistoryError::Io { path: path.to_owned(), source }
    }
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let archive = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["archive", "--format=tar", &commit.0])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HistoryError::NoGit)?;
    let mut archive = archive;
    let stdout = archive.stdout.take().expect("piped");
    let untar = Command::new("tar").arg("-x").arg("-C").arg(&partial).stdin(stdout).output().map_err(io(Path::new("tar")))?;
    let archived = archive.wait_with_output().map_err(HistoryError::NoGit)?;
    if !archived.status.success() || !untar.status.success() {
        let message = format!("{}{}", String::from_utf8_lossy(&archived.stderr), String::from_utf8_lossy(&untar.stderr));
        return Err(HistoryError::Git { args: format!("archive {}", commit.short()), message: message.trim().to_owned() });
    }
    std::fs::rename(&partial, dir).map_err(io(dir))
}

/// Lines added between the split and its end, by file (the end's path → its 1-based line numbers),
/// in files kenning has a language for.
pub fn added_lines(root: &Path, split: &Split) -> Result<BTreeMap<String, Vec<usize>>, HistoryError> {
    // A renamed file counts as deleted and added: its lines that existed at the split are refused
    // as tasks by the leak check, not here.
    let diff = git(
        root,
        &["diff", "--unified=0", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--src-prefix=a/", "--dst-prefix=b/", "--diff-filter=AM", &split.at.0, &split.until.0],
    )?;
    Ok(parse_added(&diff))
}

/// `git diff --unified=0` → added line numbers per new path (pure). A file's header is read only
/// between its `diff --git` line and its first hunk (an added line can begin with `++ `).
fn parse_added(diff: &str) -> BTreeMap<String, Vec<usize>> {
    let mut added: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut path: Option<String> = None;
    let mut in_header = false;
    for line in diff.lines() {
        if line.starts_with("diff --git ") {
            in_header = true;
            path = None;
        } else if let (true, Some(p)) = (in_header, line.strip_prefix("+++ ")) {
            // Git ends a path holding a space with a tab.
            let p = p.strip_suffix('\t').unwrap_or(p);
            path = p.strip_prefix("b/").map(str::to_owned).filter(|p| Language::from_path(p).grammar().is_some());
        } else if let (Some(p), Some(hunk)) = (&path, line.strip_prefix("@@ ")) {
            in_header = false;
            // "@@ -a,b +c,d @@": d lines added from line c (d omitted = 1).
            let Some(new) = hunk.split(' ').find_map(|f| f.strip_prefix('+')) else { continue };
            let (start, count) = match new.split_once(',') {
                Some((s, c)) => (s.parse::<usize>().ok(), c.parse::<usize>().ok()),
                None => (new.parse::<usize>().ok(), Some(1)),
            };
            if let (Some(start), Some(count)) = (start, count) {
                added.entry(p.clone()).or_default().extend(start..start + count);
            }
        }
    }
    added.retain(|_, lines| !lines.is_empty());
    added
}

/// Every line of every text file under `dir` (trimmed, read as the indexer reads them: invalid
/// UTF-8 replaced), whatever its language: what retrieval could show from the split.
pub fn lines_under(dir: &Path) -> HashSet<String> {
    let mut lines = HashSet::new();
    let walker = ignore::WalkBuilder::new(dir).hidden(false).git_ignore(false).ignore(false).parents(false).build();
    for entry in walker.flatten() {
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else { continue };
        if crate::workspace::is_binary(&bytes) {
            continue;
        }
        lines.extend(String::from_utf8_lossy(&bytes).lines().map(|l| l.trim().to_owned()));
    }
    lines
}

/// What [`tasks`] made, and what it refused.
#[derive(Debug, Default)]
pub struct TaskSet {
    pub tasks: Vec<EvalTask>,
    /// Added lines that existed verbatim somewhere at the split (moved or copied code).
    pub leaked: usize,
    /// Tasks that qualified, before the count cut them (a line gives one per kind it has a place
    /// for).
    pub candidates: usize,
}

/// What a time-split task asks for (`kenning eval --split time --kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskKind {
    /// The cursor after the line's indentation; the whole line expected (RepoEval's line tasks).
    Line,
    /// The cursor before the first name the line calls, with code before it on the line; the rest
    /// of the line expected (CrossCodeEval's API tasks, without their cross-file condition).
    Call,
    /// The cursor at a word boundary inside the line, at least 6 characters from either end of its
    /// code (24 at least); the rest of the line expected: what a user sees most while typing.
    Rest,
    /// A new function's body (2 to 10 lines of code, every one added after the split, none of
    /// 10 characters or more at the split already, nor all of the shorter ones): the cursor after its first line's indentation, the whole body
    /// expected and scored on all its lines (RepoEval's function tasks, cut to what one completion
    /// shows). Named by the function's first line.
    Block,
}

/// The kinds a time split asks for unless told: each of the four.
pub const DEFAULT_KINDS: &[TaskKind] = &[TaskKind::Line, TaskKind::Call, TaskKind::Rest, TaskKind::Block];

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Line => "line",
            Self::Call => "call",
            Self::Rest => "rest",
            Self::Block => "block",
        }
    }

    /// Where in `line` (its indentation `indent` bytes) this kind puts the cursor, if the line has
    /// such a place; `pick` chooses among a rest task's places. A block's cursor is not on the line
    /// that opens it: see [`block_at`].
    fn cursor(self, line: &str, indent: usize, pick: &mut SplitMix64) -> Option<usize> {
        let end = line.trim_end().len();
        match self {
            Self::Block => None,
            Self::Line => Some(indent),
            Self::Call => {
                if defines(&line[indent..end]) {
                    return None;
                }
                called_names(&line[..end]).find(|&at| at > indent && line[at..end].chars().count() >= MIN_CALL_REST)
            }
            Self::Rest => {
                let code = &line[indent..end];
                if code.chars().count() < MIN_REST_LINE {
                    return None;
                }
                let cuts: Vec<usize> = word_boundaries(line)
                    .filter(|&at| at > indent && at < end && line[indent..at].chars().count() >= MIN_REST_SIDE && line[at..end].chars().count() >= MIN_REST_SIDE)
                    .collect();
                (!cuts.is_empty()).then(|| cuts[pick.below(cuts.len())])
            }
        }
    }
}

/// Characters: a call task leaves at least this much of its line to complete; a rest task's line
/// has this much code at least and its cut leaves this much on either side.
const MIN_CALL_REST: usize = 8;
const MIN_REST_LINE: usize = 24;
const MIN_REST_SIDE: usize = 6;
/// Words of 3 characters or more that a `(` follows in code without being calls (control flow,
/// operators).
const NOT_CALLED: &[&str] = &["while", "for", "match", "switch", "return", "catch", "elif", "and", "not", "with", "assert", "sizeof", "typeof", "await", "yield"];
/// Words that begin a definition or an attribute: such a line is no call task (`fn name(`, `func (r
/// *T) Name(`, `struct W(u64);`, `#[derive(Debug)]`).
const DEFINES: &[&str] = &["fn", "def", "func", "function", "fun", "class", "struct", "enum", "trait", "impl", "type", "interface", "macro_rules"];
/// Words that may come before a definition's keyword.
const MODIFIERS: &[&str] = &["pub", "crate", "super", "self", "in", "async", "unsafe", "const", "extern", "export", "default", "static", "public", "private", "protected", "abstract"];

/// Whether `code` (a line without its indentation) begins a definition or is an attribute.
fn defines(code: &str) -> bool {
    if code.starts_with("#[") || code.starts_with("#![") || code.starts_with('@') {
        return true;
    }
    word_spans(code).map(|(_, w)| w).find(|w| !MODIFIERS.contains(w)).is_some_and(|w| DEFINES.contains(&w))
}

/// Byte offsets of the names in `line` that a call's `(` follows (`name(`; `name::<T>(` is not
/// one), of 3 characters or more, that are not a definition's (`fn name(`) or a keyword.
fn called_names(line: &str) -> impl Iterator<Item = usize> + '_ {
    let mut previous = "";
    word_spans(line).filter_map(move |(at, word)| {
        let before = std::mem::replace(&mut previous, word);
        let called = line[at + word.len()..].starts_with('(')
            && word.len() >= 3
            && !word.starts_with(|c: char| c.is_ascii_digit())
            && !NOT_CALLED.contains(&word)
            && !matches!(before, "fn" | "def" | "func" | "function");
        called.then_some(at)
    })
}

/// A block task's body: code lines at least and at most, lines from its first to its last code
/// line at most (one completion shows at most `completion.max_lines`, 12), and characters at most
/// (about `completion.max_tokens_multiline`, 128 tokens), as `scripts/make_eval_tasks.py` cuts them.
const MIN_BODY: usize = 2;
const MAX_BODY: usize = 10;
const MAX_BODY_SPAN: usize = 12;
const MAX_BODY_CHARS: usize = 400;
/// Words that begin a function's definition.
const FUNCTIONS: &[&str] = &["fn", "def", "func", "function", "fun"];
/// Words that begin a statement a `(…) {` line may open, not a method (`if (ready) {`).
const STATEMENTS: &[&str] = &["if", "else", "for", "while", "switch", "catch", "return", "match", "do", "try", "new", "await"];

/// How a line opens a function's body, if it does: with `{` at its end (`fn`, `func`, `function`,
/// a TypeScript or JavaScript method `name(…) {`), or with `:` (Python's `def`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opens {
    Braces,
    Indented,
}

fn opens_body(code: &str, language: Language) -> Option<Opens> {
    let mut words = word_spans(code).filter(|(_, w)| !MODIFIERS.contains(w));
    let (at, first) = words.next()?;
    if FUNCTIONS.contains(&first) {
        return if code.ends_with('{') && first != "def" {
            Some(Opens::Braces)
        } else if code.ends_with(':') && first == "def" {
            Some(Opens::Indented)
        } else {
            None
        };
    }
    // A method in a class: `name(…) {` or `name(…): Type {`.
    let method = matches!(language, Language::TypeScript | Language::Tsx | Language::JavaScript)
        && code.ends_with('{')
        && code[at + first.len()..].starts_with('(')
        && !STATEMENTS.contains(&first)
        && !NOT_CALLED.contains(&first);
    method.then_some(Opens::Braces)
}

/// Leading whitespace of `line`, in bytes.
fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The body of the function `lines[i]` opens (indices into `lines`, blank ones included, a Python
/// docstring left out): up to the `}` at the opener's indentation, or the lines indented deeper (and
/// Python comments at any indentation).
/// Empty when the body does not close where it should.
fn body_of(lines: &[&str], i: usize, opens: Opens) -> Vec<usize> {
    let indent = indent_of(lines[i]);
    let mut body = Vec::new();
    let mut closed = false;
    for (j, line) in lines.iter().enumerate().skip(i + 1) {
        let comment = opens == Opens::Indented && line.trim_start().starts_with('#');
        if line.trim().is_empty() || indent_of(line) > indent || comment {
            body.push(j);
            continue;
        }
        closed = indent_of(line) == indent && matches!(line.trim(), "}" | "};" | "},");
        break;
    }
    if opens == Opens::Braces && !closed {
        return Vec::new();
    }
    while body.last().is_some_and(|&j| lines[j].trim().is_empty()) {
        body.pop();
    }
    if opens == Opens::Indented {
        // A docstring stays in the prompt: the body begins after the line that closes it.
        let first = body.iter().position(|&j| !lines[j].trim().is_empty());
        if let Some(k) = first {
            let code = lines[body[k]].trim().trim_start_matches(['r', 'b', 'u', 'R', 'B', 'U']);
            if let Some(quote) = ["\"\"\"", "'''"].into_iter().find(|q| code.starts_with(q)) {
                let closed = if code[3..].contains(quote) { Some(k) } else { (k + 1..body.len()).find(|&m| lines[body[m]].contains(quote)) };
                body = closed.map_or_else(Vec::new, |m| body[m + 1..].to_vec());
            }
        }
    }
    body
}

/// Whether `text` closes every bracket it opens and every multi-line string it begins (a body cut
/// inside a string literal is not a block).
fn balanced(text: &str) -> bool {
    if ["\"\"\"", "'''", "`"].iter().any(|q| text.matches(q).count() % 2 == 1) {
        return false;
    }
    let mut open = Vec::new();
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let wanted = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(wanted) {
                    return false;
                }
            }
            _ => {}
        }
    }
    open.is_empty()
}

/// The block task the function opening on line `n` (1-based) of `text` (its `lines`, each
/// beginning at its `starts`) gives, as the byte range of
/// its expected body (from its first line's code to its last line's end), if it is one: a short
/// body, balanced, every code line of it added after the split (`added`), none of its lines of
/// [`MIN_LINE_CHARS`] or more and not all of its shorter ones existing at it (`before`: a moved
/// function is no task), and not found elsewhere in the file (at any indentation).
fn block_at(text: &str, starts: &[usize], lines: &[&str], n: usize, language: Language, added: &HashSet<usize>, before: &HashSet<String>) -> Option<(usize, usize)> {
    let i = n.checked_sub(1)?;
    let opens = opens_body(lines.get(i)?.trim(), language)?;
    let body = body_of(lines, i, opens);
    let code: Vec<usize> = body.into_iter().filter(|&j| !lines[j].trim().is_empty()).collect();
    let (&first, &last) = (code.first()?, code.last()?);
    if !(MIN_BODY..=MAX_BODY).contains(&code.len()) || last - first >= MAX_BODY_SPAN {
        return None;
    }
    let fresh = |j: &usize| {
        let line = lines[*j].trim();
        added.contains(&(j + 1)) && (line.chars().count() < MIN_LINE_CHARS || !before.contains(line))
    };
    // Short lines are common everywhere (`}`, `Ok(())`), but a body made only of old lines was moved.
    let moved = code.iter().all(|&j| before.contains(lines[j].trim()));
    if moved || !code.iter().all(fresh) || crate::dataset::starts_as_comment(lines[first].trim()) {
        return None;
    }
    let (cursor, end) = (starts[first] + indent_of(lines[first]), starts[last] + lines[last].trim_end().len());
    let expected = &text[cursor..end];
    // The same body elsewhere in the file, at any indentation, would be copied, not written.
    let want: Vec<&str> = code.iter().map(|&j| lines[j].trim()).collect();
    let others: Vec<(usize, &str)> = lines.iter().map(|l| l.trim()).enumerate().filter(|(_, l)| !l.is_empty()).collect();
    let copied = text[..cursor].contains(expected)
        || text[end..].contains(expected)
        || others.windows(want.len()).any(|w| w[0].0 != first && w.iter().map(|(_, l)| *l).eq(want.iter().copied()));
    (expected.chars().count() <= MAX_BODY_CHARS && balanced(expected) && !copied).then_some((cursor, end))
}

/// Byte offsets in `line` where a word begins or ends (regex's `\b`).
fn word_boundaries(line: &str) -> impl Iterator<Item = usize> + '_ {
    word_spans(line).flat_map(|(at, word)| [at, at + word.len()])
}

/// Up to `count` tasks of `kinds` (see [`TaskKind`]) from the lines added after the split, read
/// from the end's files in `files` (path → text). A line that exists anywhere in `before` (the
/// code at the split, trimmed) is refused; comments and short lines are not line tasks (a block's
/// opening line may be short; its body is checked, see [`block_at`]). Files give
/// their tasks in turn (each file's in an order chosen by `seed`), one of each kind per turn: no
/// file gives a second task of a kind before every file gave one, so one big new file does not
/// make the whole set; a file gives more than the others only when they have run out. With
/// `kinds` = line alone, tasks are named `PATH:LINE` with no kind (as before kinds existed, so
/// such runs carry on); otherwise `PATH:LINE:KIND`, with their kind.
pub fn tasks(files: &BTreeMap<String, String>, added: &BTreeMap<String, Vec<usize>>, before: &HashSet<String>, count: usize, seed: u64, kinds: &[TaskKind]) -> TaskSet {
    let mut set = TaskSet::default();
    let mut distinct = Vec::with_capacity(kinds.len());
    for kind in kinds {
        if !distinct.contains(kind) {
            distinct.push(*kind);
        }
    }
    let kinds = distinct.as_slice();
    let named = kinds != [TaskKind::Line];
    // Per file, per kind: its tasks in a seeded order.
    let mut per_file: Vec<Vec<Vec<EvalTask>>> = Vec::new();
    for (path, numbers) in added {
        let Some(text) = files.get(path) else { continue };
        let starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let mut found: Vec<Vec<EvalTask>> = vec![Vec::new(); kinds.len()];
        let blocks = kinds.contains(&TaskKind::Block);
        let added_here: HashSet<usize> = if blocks { numbers.iter().copied().collect() } else { HashSet::new() };
        let lines: Vec<&str> = if blocks { text.split('\n').collect() } else { Vec::new() };
        let language = Language::from_path(path);
        for &n in numbers {
            let Some(&start) = starts.get(n - 1) else { continue };
            let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            let line = &text[start..end];
            let code = line.trim();
            if crate::dataset::starts_as_comment(code) && !code.starts_with("#[") {
                continue;
            }
            // A line task's line is long enough and new; a block's opening line need be neither
            // (`fn new() -> Self {`): its body is checked instead.
            let long = code.chars().count() >= MIN_LINE_CHARS;
            let existed = long && before.contains(code);
            set.leaked += usize::from(existed);
            let indent = indent_of(line);
            let expected_end = start + line.trim_end().len();
            let mut pick = SplitMix64::new(seed ^ crate::dataset::hash64(format!("{path}:{n}").as_bytes()));
            for (kind, found) in kinds.iter().zip(&mut found) {
                let place = match kind {
                    TaskKind::Block => block_at(text, &starts, &lines, n, language, &added_here, before),
                    _ if !long || existed => None,
                    _ => kind.cursor(line, indent, &mut pick).map(|c| (start + c, expected_end)),
                };
                let Some((cursor, expected_end)) = place else { continue };
                found.push(EvalTask {
                    id: if named { format!("{path}:{n}:{}", kind.name()) } else { format!("{path}:{n}") },
                    path: path.clone(),
                    prefix: text[..cursor].to_owned(),
                    suffix: text[expected_end..].to_owned(),
                    expected: text[cursor..expected_end].to_owned(),
                    kind: if named { kind.name().to_owned() } else { String::new() },
                });
            }
        }
        for (kind, found) in kinds.iter().zip(&mut found) {
            set.candidates += found.len();
            let salt = if *kind == TaskKind::Line { 0 } else { crate::dataset::hash64(kind.name().as_bytes()) };
            SplitMix64::new(seed ^ crate::dataset::hash64(path.as_bytes()) ^ salt).shuffle(found);
        }
        per_file.push(found);
    }
    // In turn from each file (in a seeded order: not the first paths alphabetically), so that a
    // small count still spreads over files.
    SplitMix64::new(seed).shuffle(&mut per_file);
    let mut round = 0;
    while set.tasks.len() < count && per_file.iter().flatten().any(|f| round < f.len()) {
        for task in per_file.iter().flat_map(|kinds| kinds.iter().filter_map(|f| f.get(round))) {
            if set.tasks.len() < count {
                set.tasks.push(task.clone());
            }
        }
        round += 1;
    }
    set
}

/// The text at `commit` (the split's end) of each path that the indexer would take (the
/// workspace walk's ignore rules, size limit and secret names; not binary, minified or holding a
/// key block) and that holds no secret the redactor finds: task text reaches task files and logs.
pub fn files_at(root: &Path, commit: &Commit, paths: impl IntoIterator<Item = String>) -> Result<BTreeMap<String, String>, HistoryError> {
    let walked = std::sync::Mutex::new(HashSet::new());
    crate::workspace::walk(root, &crate::workspace::WalkOptions::default(), |item| {
        if let crate::workspace::WalkItem::File(meta) = item {
            walked.lock().expect("walk lock").insert(meta.rel_path);
        }
    });
    let walked = walked.into_inner().expect("walk lock");
    let mut files = BTreeMap::new();
    for path in paths.into_iter().filter(|p| walked.contains(p)) {
        let bytes = match git_bytes(root, &["show", &format!("{}:{path}", commit.0)]) {
            Ok(bytes) => bytes,
            Err(HistoryError::Git { .. }) => continue,
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 > crate::workspace::DEFAULT_MAX_FILE_BYTES || crate::workspace::classify_bytes(&bytes).is_err() {
            continue;
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if crate::secrets::redact(&mut text).is_empty() {
            files.insert(path, text);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_the_newest_commit_with_a_tenth_of_the_lines_after_it() {
        let commits: Vec<(String, u64)> = [("a", 500), ("b", 300), ("c", 150), ("d", 40), ("e", 10)].iter().map(|(h, n)| ((*h).to_owned(), *n)).collect();
        // 1000 lines: after c come 50 (5 %), after b 200 (20 %).
        assert_eq!(pick_split(&commits), Some("b"));
        assert_eq!(pick_split(&commits[..1]), None, "one commit cannot be split");
        let nothing_later: Vec<(String, u64)> = vec![("a".into(), 10), ("b".into(), 0)];
        assert_eq!(pick_split(&nothing_later), None);
    }

    #[test]
    fn added_lines_are_read_from_a_zero_context_diff() {
        let diff = "diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -3,0 +4,2 @@ fn x\n+let a = 1;\n+++ b/src/fake.rs\n@@ -9 +11 @@\n-old\n+new\ndiff --git a/notes.txt b/notes.txt\n--- /dev/null\n+++ b/notes.txt\n@@ -0,0 +1,3 @@\n+x\n+y\n+z\n@@ -5,2 +7,0 @@\ndiff --git a/my file.rs b/my file.rs\n--- /dev/null\n+++ b/my file.rs\t\n@@ -0,0 +1 @@\n+fn spaced() {}\n";
        let added = parse_added(diff);
        assert_eq!(added.get("src/a.rs"), Some(&vec![4, 5, 11]), "an added line that looks like a header is a line");
        assert!(!added.contains_key("src/fake.rs"));
        assert!(!added.contains_key("notes.txt"), "no language for a .txt file");
        assert_eq!(added.get("my file.rs"), Some(&vec![1]), "a path with a space (git ends it with a tab)");
    }

    /// Runs git in `dir` with a fixed identity and dates (the tests make their own history).
    fn run(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=kenning", "-c", "user.email=kenning@example.invalid", "-c", "commit.gpgsign=false"])
            .args(args)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    fn commit(dir: &Path, files: &[(&str, &str)], message: &str) {
        for (path, text) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        run(dir, &["add", "-A"]);
        run(dir, &["commit", "-q", "-m", message]);
    }

    /// A real repository: three commits; the split falls before the third, whose new lines are the
    /// tasks, except one copied from a line that existed before.
    #[test]
    fn a_real_history_splits_snapshots_and_never_leaks() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("shop");
        std::fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "-q"]);
        let base: String = (0..40).map(|i| format!("pub fn price_{i}(cents: u64) -> u64 {{ cents * {i} }}\n")).collect();
        commit(&repo, &[("src/price.rs", &base)], "prices");
        commit(&repo, &[("src/cart.rs", "pub struct Cart { items: Vec<u64> }\n")], "cart");
        let cart = "pub struct Cart { items: Vec<u64> }\n\nimpl Cart {\n    pub fn total(&self) -> u64 {\n        let sum: u64 = self.items.iter().sum();\n        crate::price::price_3(sum)\n    }\n    pub fn double(cents: u64) -> u64 { cents * 2 }\n}\n";
        commit(&repo, &[("src/cart.rs", cart), ("README.md", "# shop\nA shop that sells things to people.\n")], "total");

        let split = split_commit(&repo, None, None).unwrap();
        let second = git(&repo, &["rev-parse", "HEAD~1"]).unwrap();
        assert_eq!(split.at.0, second.trim(), "the last commit adds the last 10 % of the lines");

        let snap = dir.path().join("snap").join("shop");
        snapshot(&repo, &split.at, &snap).unwrap();
        let old = std::fs::read_to_string(snap.join("src/cart.rs")).unwrap();
        assert_eq!(old, "pub struct Cart { items: Vec<u64> }\n", "the snapshot is the repository at the split");
        assert!(!snap.join("README.md").exists() && !snap.with_extension("partial").exists());

        let added = added_lines(&repo, &split).unwrap();
        assert_eq!(added.keys().collect::<Vec<_>>(), ["src/cart.rs"], "the README has no language");
        let files = files_at(&repo, &split.until, added.keys().cloned()).unwrap();
        let before = lines_under(&snap);
        assert!(before.contains("pub fn price_3(cents: u64) -> u64 { cents * 3 }"));
        // A line copied from the split's code: refused.
        std::fs::write(snap.join("src/extra.rs"), "        crate::price::price_3(sum)\n").unwrap();
        let set = tasks(&files, &added, &lines_under(&snap), 500, 0, &[TaskKind::Line]);
        std::fs::remove_file(snap.join("src/extra.rs")).unwrap();
        let expected: HashSet<&str> = set.tasks.iter().map(|t| t.expected.as_str()).collect();
        assert_eq!(set.leaked, 1);
        assert!(!expected.contains("crate::price::price_3(sum)"), "{expected:?}");
        assert!(expected.contains("let sum: u64 = self.items.iter().sum();"), "{expected:?}");
        for task in &set.tasks {
            assert!(!before.contains(task.expected.trim()), "{} leaked", task.id);
            assert_eq!(format!("{}{}{}", task.prefix, task.expected, task.suffix), files["src/cart.rs"]);
        }
        // Pinned to its end: commits made after it change nothing of the tasks.
        let pinned = split_commit(&repo, None, Some("HEAD")).unwrap();
        commit(&repo, &[("src/later.rs", "pub fn later_addition(x: u64) -> u64 { x + 1 }\n")], "later");
        let again = split_commit(&repo, Some(&pinned.at.0), Some(&pinned.until.0)).unwrap();
        assert_eq!(again, pinned);
        assert_eq!(added_lines(&repo, &again).unwrap(), added);
        assert!(added_lines(&repo, &split_commit(&repo, Some(&pinned.at.0), None).unwrap()).unwrap().contains_key("src/later.rs"));
        // An explicit split: the end itself leaves nothing to ask; a non-commit is an error.
        let at_head = split_commit(&repo, Some("HEAD"), None).unwrap();
        assert!(added_lines(&repo, &at_head).unwrap().is_empty());
        let error = split_commit(&repo, Some("HEAD"), Some("HEAD~1")).unwrap_err();
        assert!(error.to_string().contains("not an ancestor of HEAD~1"), "{error}");
        let error = split_commit(&repo, Some("no-such-branch"), None).unwrap_err();
        assert!(error.to_string().contains("no-such-branch is not a commit"), "{error}");
        // A directory inside the repository is not its top: its paths would not match the diff's.
        let error = split_commit(&repo.join("src"), None, None).unwrap_err();
        assert!(matches!(error, HistoryError::NotTheTop { .. }), "{error}");
    }

    #[test]
    fn no_repository_a_shallow_clone_and_a_single_commit_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let error = split_commit(&plain, None, None).unwrap_err();
        assert!(matches!(error, HistoryError::NotARepository(_)), "{error}");

        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "-q"]);
        commit(&repo, &[("a.rs", "fn a() {}\n")], "one");
        let error = split_commit(&repo, None, None).unwrap_err();
        assert!(matches!(error, HistoryError::TooLittle(_)), "{error}");
        commit(&repo, &[("a.rs", "fn a() {}\nfn b() {}\n")], "two");
        assert!(split_commit(&repo, None, None).is_ok());

        let url = format!("file://{}", repo.display());
        run(dir.path(), &["clone", "-q", "--depth", "1", &url, "shallow"]);
        let error = split_commit(&dir.path().join("shallow"), None, None).unwrap_err();
        assert!(error.to_string().contains("shallow clone"), "{error}");
    }

    #[test]
    fn a_task_whose_line_existed_at_the_split_is_refused() {
        let text = "fn main() {\n    let total = compute_total(&items);\n    println!(\"{total}\");\n    // a comment that is long enough\n}\n";
        let files = BTreeMap::from([("src/main.rs".to_owned(), text.to_owned())]);
        let added = BTreeMap::from([("src/main.rs".to_owned(), vec![2, 3, 4, 5, 99])]);
        let before: HashSet<String> = HashSet::from(["println!(\"{total}\");".to_owned()]);
        let set = tasks(&files, &added, &before, 10, 0, &[TaskKind::Line]);
        assert_eq!(set.leaked, 1);
        assert_eq!(set.tasks.len(), 1, "{:?}", set.tasks);
        let task = &set.tasks[0];
        assert_eq!((task.id.as_str(), task.expected.as_str()), ("src/main.rs:2", "let total = compute_total(&items);"));
        assert_eq!(format!("{}{}{}", task.prefix, task.expected, task.suffix), text);
        assert!(task.prefix.ends_with("{\n    "));
    }

    #[test]
    fn files_give_their_lines_in_turn_and_a_big_one_more_only_when_the_others_ran_out() {
        let file = |n: usize| (1..=n).map(|i| format!("    let value_{i} = compute_{i}(input);\n")).collect::<String>();
        let files = BTreeMap::from([("big.rs".to_owned(), file(40)), ("a.rs".to_owned(), file(3)), ("b.rs".to_owned(), file(5))]);
        let added: BTreeMap<String, Vec<usize>> = files.iter().map(|(p, t)| (p.clone(), (1..=t.lines().count()).collect())).collect();
        let count = |set: &TaskSet, path: &str| set.tasks.iter().filter(|t| t.path == path).count();
        let set = tasks(&files, &added, &HashSet::new(), 9, 7, &[TaskKind::Line]);
        assert_eq!((count(&set, "big.rs"), count(&set, "a.rs"), count(&set, "b.rs")), (3, 3, 3), "three rounds of three files");
        assert_eq!(set.candidates, 48);
        let set = tasks(&files, &added, &HashSet::new(), 30, 7, &[TaskKind::Line]);
        assert_eq!((count(&set, "big.rs"), count(&set, "a.rs"), count(&set, "b.rs")), (22, 3, 5), "the big file fills in once the others are out");
        let ids: HashSet<&str> = set.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids.len(), 30, "no line twice");
        assert_eq!(tasks(&files, &added, &HashSet::new(), 500, 7, &[TaskKind::Line]).tasks.len(), 48, "fewer than asked when that is all there is");
    }

    #[test]
    fn each_kind_cuts_the_line_where_it_says_and_names_its_tasks() {
        let text = "fn helper_function(a: u64) -> u64 {\n    let total = compute_total(&items, a);\n    compute_all(a, total, 3);\n    while(ready) { self.items.push(total); }\n    #[derive(Debug)] struct Wrapped(u64);\n}\n";
        let files = BTreeMap::from([("src/a.rs".to_owned(), text.to_owned())]);
        let added = BTreeMap::from([("src/a.rs".to_owned(), vec![1, 2, 3, 4, 5])]);
        let kinds = [TaskKind::Line, TaskKind::Call, TaskKind::Rest, TaskKind::Call];
        let set = tasks(&files, &added, &HashSet::new(), 100, 3, &kinds);
        for t in &set.tasks {
            assert_eq!(format!("{}{}{}", t.prefix, t.expected, t.suffix), text, "{t:?}");
            assert!(t.id.ends_with(&format!(":{}", t.kind)), "{t:?}");
        }
        let of = |kind: &str| -> Vec<(&str, &str)> { set.tasks.iter().filter(|t| t.kind == kind).map(|t| (t.id.as_str(), t.expected.as_str())).collect::<Vec<_>>() };
        let mut lines = of("line");
        lines.sort();
        assert_eq!(lines.len(), 5, "{lines:?}");
        let mut calls = of("call");
        calls.sort();
        // Not a definition's name, not a call the line begins with, not `while(`, not an attribute.
        assert_eq!(calls, [("src/a.rs:2:call", "compute_total(&items, a);"), ("src/a.rs:4:call", "push(total); }")]);
        let rests = of("rest");
        assert_eq!(rests.len(), 5, "every line has 24 characters of code: {rests:?}");
        for t in set.tasks.iter().filter(|t| t.kind == "rest") {
            let line_start = t.prefix.rfind('\n').map_or(0, |i| i + 1);
            let before = t.prefix[line_start..].trim_start();
            assert!(before.len() >= MIN_REST_SIDE && t.expected.len() >= MIN_REST_SIDE, "{t:?}");
            let (a, b) = (before.chars().last().unwrap(), t.expected.chars().next().unwrap());
            let word = |c: char| c.is_alphanumeric() || c == '_';
            assert!(word(a) != word(b), "a cut at a word boundary: {t:?}");
        }
        assert_eq!(set.candidates, 12, "a kind asked twice counts once");
        let again = tasks(&files, &added, &HashSet::new(), 100, 3, &kinds);
        assert_eq!(again.tasks.iter().map(|t| &t.id).collect::<Vec<_>>(), set.tasks.iter().map(|t| &t.id).collect::<Vec<_>>(), "the same seed, the same tasks");
    }

    #[test]
    fn a_block_is_a_new_short_body_and_nothing_else() {
        let rust = concat!(
            "impl Cart {\n",
            "    pub fn total(&self) -> u64 {\n",
            "        let sum: u64 = self.items.iter().sum();\n",
            "\n",
            "        crate::price::with_tax(sum)\n",
            "    }\n",
            "    fn moved(&self) -> u64 {\n",
            "        let old_line_here = self.items.len() as u64;\n",
            "        old_line_here * 2\n",
            "    }\n",
            "    fn one_line(&self) -> bool {\n",
            "        self.items.is_empty()\n",
            "    }\n",
            "    fn half_new(&self) -> usize {\n",
            "        let count_of_items = self.items.len();\n",
            "        count_of_items + self.extra\n",
            "    }\n",
            "}\n",
        );
        let python = concat!(
            "class Cart:\n",
            "    def total(self):\n",
            "        \"\"\"The sum,\n",
            "        with tax.\"\"\"\n",
            "        subtotal = sum(self.items)\n",
            "        return with_tax(subtotal)\n",
            "\n",
            "    def empty(self): return not self.items\n",
        );
        let typescript = "export class Cart {\n  total(tax: number): number {\n    const sum = this.items.reduce((a, b) => a + b, 0);\n    return sum * (1 + tax);\n  }\n  if (ready) {\n    start();\n    go();\n  }\n}\n";
        let go = "func (c *Cart) Total() int {\n\tsum := c.Sum()\n\treturn withTax(sum)\n}\n";
        let files = BTreeMap::from([
            ("src/cart.rs".to_owned(), rust.to_owned()),
            ("cart.py".to_owned(), python.to_owned()),
            ("cart.ts".to_owned(), typescript.to_owned()),
            ("cart.go".to_owned(), go.to_owned()),
        ]);
        let every = |text: &str| (1..=text.lines().count()).collect::<Vec<_>>();
        let mut added: BTreeMap<String, Vec<usize>> = files.iter().map(|(p, t)| (p.clone(), every(t))).collect();
        // half_new's first body line is old: it is not a new body.
        added.get_mut("src/cart.rs").unwrap().retain(|&n| n != 15);
        let before: HashSet<String> = HashSet::from(["let old_line_here = self.items.len() as u64;".to_owned()]);
        let set = tasks(&files, &added, &before, 100, 0, &[TaskKind::Block]);
        let mut got: Vec<(&str, &str)> = set.tasks.iter().map(|t| (t.id.as_str(), t.expected.as_str())).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("cart.go:1:block", "sum := c.Sum()\n\treturn withTax(sum)"),
                ("cart.py:2:block", "subtotal = sum(self.items)\n        return with_tax(subtotal)"),
                ("cart.ts:2:block", "const sum = this.items.reduce((a, b) => a + b, 0);\n    return sum * (1 + tax);"),
                ("src/cart.rs:2:block", "let sum: u64 = self.items.iter().sum();\n\n        crate::price::with_tax(sum)"),
            ],
            "not a body that existed at the split, one line long, partly old, a one-line def, or an `if`"
        );
        for t in &set.tasks {
            assert_eq!(format!("{}{}{}", t.prefix, t.expected, t.suffix), files[&t.path], "{t:?}");
            assert_eq!(t.kind, "block");
        }
        // A body that occurs elsewhere in its file would be copied, not written: no task.
        let twice = format!("{go}func (c *Cart) Again() int {{\n\tsum := c.Sum()\n\treturn withTax(sum)\n}}\n");
        let files = BTreeMap::from([("cart.go".to_owned(), twice.clone())]);
        let added = BTreeMap::from([("cart.go".to_owned(), every(&twice))]);
        assert!(tasks(&files, &added, &HashSet::new(), 10, 0, &[TaskKind::Block]).tasks.is_empty());
        // Nor the same body at another indentation (a method copied to a free function), nor a
        // body of short lines that all existed at the split.
        let method = "impl Cart {\n    fn total(&self) -> u64 {\n        let sum = self.sum();\n        with_tax(sum)\n    }\n}\n";
        let free = format!("{method}fn total(cart: &Cart) -> u64 {{\n    let sum = self.sum();\n    with_tax(sum)\n}}\n");
        let files = BTreeMap::from([("cart.rs".to_owned(), free.clone())]);
        let added = BTreeMap::from([("cart.rs".to_owned(), every(&free))]);
        assert!(tasks(&files, &added, &HashSet::new(), 10, 0, &[TaskKind::Block]).tasks.is_empty());
        let short = "fn go() {\n    a();\n    b();\n}\n";
        let files = BTreeMap::from([("go.rs".to_owned(), short.to_owned())]);
        let added = BTreeMap::from([("go.rs".to_owned(), every(short))]);
        assert_eq!(tasks(&files, &added, &HashSet::new(), 10, 0, &[TaskKind::Block]).tasks.len(), 1, "new short lines make a block");
        let old: HashSet<String> = HashSet::from(["a();".to_owned(), "b();".to_owned()]);
        assert!(tasks(&files, &added, &old, 10, 0, &[TaskKind::Block]).tasks.is_empty(), "all of them old: moved");
        // A Python comment at the left margin does not end the body; a .tsx method is a method.
        let commented = "def total(items):\n    subtotal = sum(items)\n# TODO: taxes\n    return subtotal * 2\n";
        let component = "class Cart {\n  render(): Element {\n    const rows = this.rows();\n    return <ul>{rows}</ul>;\n  }\n}\n";
        let files = BTreeMap::from([("cart.py".to_owned(), commented.to_owned()), ("cart.tsx".to_owned(), component.to_owned())]);
        let added: BTreeMap<String, Vec<usize>> = files.iter().map(|(p, t)| (p.clone(), every(t))).collect();
        let mut got: Vec<(String, String)> = tasks(&files, &added, &HashSet::new(), 10, 0, &[TaskKind::Block]).tasks.into_iter().map(|t| (t.id, t.expected)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("cart.py:1:block".to_owned(), "subtotal = sum(items)\n# TODO: taxes\n    return subtotal * 2".to_owned()),
                ("cart.tsx:2:block".to_owned(), "const rows = this.rows();\n    return <ul>{rows}</ul>;".to_owned()),
            ]
        );
        // Unclosed, or cut inside a string: no task.
        assert!(body_of(&["fn a() {", "    x();", "    y();"], 0, Opens::Braces).is_empty());
        assert!(!balanced("let q = `select\n  *;"));
        assert!(balanced("f(a[0], { b })"));
        assert!(!balanced("f(a[0)]"));
    }

    #[test]
    fn a_rest_cut_counts_characters_not_bytes() {
        let line = "    let größe = berechne_größe(&daten, ü);";
        for seed in 0..50 {
            let at = TaskKind::Rest.cursor(line, 4, &mut SplitMix64::new(seed)).expect("a long line has a cut");
            assert!(line[4..at].chars().count() >= MIN_REST_SIDE && line[at..].trim_end().chars().count() >= MIN_REST_SIDE, "{seed}: {at}");
        }
        assert_eq!(TaskKind::Call.cursor(line, 4, &mut SplitMix64::new(0)), Some(line.find("berechne").unwrap()));
        assert_eq!(TaskKind::Call.cursor("    pub async fn größe(x: u8) {", 4, &mut SplitMix64::new(0)), None, "a definition");
    }
}
