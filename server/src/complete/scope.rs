//! What is in scope at the cursor and defined elsewhere: the names a file imports, and the part of
//! a definition a caller needs (its signature). Context built from these tells the model which
//! functions and types it may call and how, without code that looks like the line being written
//! (which pulls a small model into copying it). Pure functions over text.

use std::collections::HashSet;

use crate::chunk::Language;

/// Imported names looked up at most.
pub const MAX_IMPORTS: usize = 12;
/// A definition of a type (struct, class, trait, …) at most this many lines long is kept whole.
const WHOLE_TYPE_LINES: usize = 16;
/// Member signatures kept from a longer type.
const MAX_MEMBERS: usize = 12;
/// A signature spans this many lines at most.
const MAX_SIGNATURE_LINES: usize = 8;

/// The names `text` imports from elsewhere, first those not used yet in the file's code (what the
/// next lines are likely to call), then the rest, each once, at most [`MAX_IMPORTS`]: Rust `use`
/// (leaves of the tree; `self` and globs skipped), Python `from … import`, JavaScript/TypeScript
/// `import … from`, Java `import`. Other languages import no names.
pub fn imported_names(language: Language, text: &str) -> Vec<String> {
    let (names, body) = match language {
        Language::Rust => rust_uses(text),
        Language::Python => python_imports(text),
        Language::JavaScript | Language::TypeScript | Language::Tsx => js_imports(text),
        Language::Java => java_imports(text),
        _ => (Vec::new(), String::new()),
    };
    let used = words(&body);
    let mut seen = HashSet::new();
    let mut names: Vec<String> = names.into_iter().filter(|n| n.len() >= 2 && seen.insert(n.clone())).collect();
    // Stable: unused first, each group in import order.
    names.sort_by_key(|n| used.contains(n.as_str()));
    names.truncate(MAX_IMPORTS);
    names
}

fn words(text: &str) -> HashSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$')).filter(|w| !w.is_empty()).collect()
}

/// Statements starting with `keyword` (at a line start) up to `end` (inclusive), and the text that
/// is not such a statement (the code that uses the names).
fn statements(text: &str, starts: &[&str], end: impl Fn(&str) -> bool) -> (Vec<String>, String) {
    let mut found = Vec::new();
    let mut body = String::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if current.is_none() && starts.iter().any(|s| trimmed.starts_with(s)) {
            current = Some(String::new());
        }
        match current.as_mut() {
            Some(statement) => {
                statement.push_str(trimmed);
                statement.push('\n');
                if end(statement) {
                    found.push(current.take().unwrap_or_default());
                }
            }
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
        // An import that never ends (a file cut short) does not swallow the rest of the file.
        if current.as_ref().is_some_and(|s| s.len() > 4_096) {
            current = None;
        }
    }
    (found, body)
}

/// Names a Rust file imports from the standard library (`use std::…`, `core::…`, `alloc::…`):
/// a chunk of the workspace that defines the same name (tokio's own `Context` beside
/// `std::task::Context`) is another item, not the definition the code at the cursor uses. Other
/// languages: none.
pub fn standard_library_names(language: Language, text: &str) -> HashSet<String> {
    if language != Language::Rust {
        return HashSet::new();
    }
    let (uses, _) = statements(text, RUST_USE, |s| s.contains(';'));
    uses.iter()
        .filter(|statement| {
            let tree = statement.split_once("use ").map_or("", |(_, t)| t).trim_start_matches("::");
            matches!(tree.split("::").next().map(str::trim), Some("std" | "core" | "alloc"))
        })
        .flat_map(|statement| {
            let mut names = use_leaves(statement);
            names.extend(self_imports(statement));
            names
        })
        .collect()
}

/// The modules a `use` statement imports with `self` (`io` in `use std::io::{self, Read};`).
fn self_imports(statement: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in statement.match_indices("self") {
        let (before, after) = (statement[..at].trim_end(), statement[at + 4..].trim_start());
        let is_leaf = (before.ends_with('{') || before.ends_with(',')) && (after.starts_with(',') || after.starts_with('}'));
        // The group's `{`, then the path segment before its `::`.
        let Some(open) = is_leaf.then(|| before.rfind('{')).flatten() else { continue };
        let path = statement[..open].trim_end().trim_end_matches("::");
        let module = path.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or("");
        if is_identifier(module) {
            out.push(module.to_owned());
        }
    }
    out
}

/// Names `window` reaches through a path from the standard library: with `std_names` what the
/// file imports from it ([`standard_library_names`]), `Context` and `Ready` in
/// `cx: &mut task::Context<'_>` and `Poll::Ready(..)` after `use std::task::{self, Poll}`, `Result`
/// in `std::io::Result`. Rust only; other languages: none.
pub fn standard_library_paths(language: Language, window: &str, std_names: &HashSet<String>) -> HashSet<String> {
    let mut out = HashSet::new();
    if language != Language::Rust {
        return out;
    }
    let bytes = window.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    // Whether the identifier before the `::` being read names the standard library.
    let mut from_std = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &window[start..i];
            let qualified = start >= 2 && &bytes[start - 2..start] == b"::";
            if qualified && from_std {
                out.insert(word.to_owned());
            } else {
                from_std = !qualified && (matches!(word, "std" | "core" | "alloc") || std_names.contains(word));
            }
        } else if bytes[i..].starts_with(b"::") {
            i += 2;
        } else {
            from_std = false;
            i += 1;
        }
    }
    out
}

/// Snake-case names `window` binds itself (Rust): `let` and `for` bindings, `Some(x)` / `Ok(x)` /
/// `Err(x)` patterns, closure and function parameters, struct fields written `name: value`. A local
/// `handle` is not tokio's `fn handle`: looking such a name up puts an unrelated body in the
/// prompt. Other languages: none.
pub fn locally_bound(language: Language, window: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    if language != Language::Rust {
        return out;
    }
    let bytes = window.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let snake = |w: &str| w.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    // Identifiers with the text just before and just after each.
    let mut words: Vec<(&str, &str, &str)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            words.push((window[..start].trim_end(), &window[start..i], window[i..].trim_start()));
        } else {
            i += 1;
        }
    }
    // `before` ends with the word `w` (not with a longer identifier ending so).
    let ends_with_word = |before: &str, w: &str| before.strip_suffix(w).is_some_and(|rest| !rest.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
    for (before, word, after) in words {
        if !snake(word) || matches!(word, "mut" | "ref" | "self") {
            continue;
        }
        let after_mut = before.strip_suffix("mut").filter(|rest| !rest.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')).map(str::trim_end);
        // `Some(x)` binds `x` in a pattern; `Some(spawn(..))` calls `spawn`.
        let wrapped = after.starts_with(')') || after.starts_with(',');
        let pattern = |b: &str| ["let", "for"].iter().any(|w| ends_with_word(b, w)) || (wrapped && ["Some(", "Ok(", "Err("].iter().any(|w| ends_with_word(b, w)));
        let bound = pattern(before)
            || after_mut.is_some_and(pattern)
            || (before.ends_with('|') && (after.starts_with('|') || after.starts_with(',') || after.starts_with(':')))
            || (after.starts_with(':') && !after.starts_with("::"));
        if bound {
            out.insert(word.to_owned());
        }
    }
    out
}

/// How a Rust `use` statement starts.
const RUST_USE: &[&str] = &["use ", "pub use ", "pub(crate) use ", "pub(super) use "];

fn rust_uses(text: &str) -> (Vec<String>, String) {
    let (uses, body) = statements(text, RUST_USE, |s| s.contains(';'));
    (uses.iter().flat_map(|statement| use_leaves(statement)).collect(), body)
}

/// The names one `use` statement imports: the leaves of its tree (`self` and globs skipped).
fn use_leaves(statement: &str) -> Vec<String> {
    let tree = statement.split_once("use ").map_or("", |(_, t)| t);
    let tree = tree.split(';').next().unwrap_or("");
    // Leaves: split on braces and commas; each leaf is a path whose last segment is the name
    // (`a::b as c` imports b under the name c: the definition is b's).
    tree.split(['{', '}', ','])
        .filter_map(|leaf| {
            let path = leaf.trim().split(" as ").next().unwrap_or("").trim();
            let last = path.rsplit("::").next().unwrap_or("").trim();
            (!last.is_empty() && last != "self" && last != "*" && last != "super" && last != "crate" && is_identifier(last)).then(|| last.to_owned())
        })
        .collect()
}

fn python_imports(text: &str) -> (Vec<String>, String) {
    let balanced = |s: &str| !s.contains('(') || s.contains(')');
    let ends = |s: &str| balanced(s) && !s.trim_end().ends_with('\\');
    let (imports, body) = statements(text, &["from "], ends);
    let mut names = Vec::new();
    for statement in imports {
        let Some((_, list)) = statement.split_once(" import ") else { continue };
        for item in list.split([',', '(', ')', '\\', '\n']) {
            let name = item.split(" as ").next().unwrap_or("").trim();
            if is_identifier(name) && name != "*" {
                names.push(name.to_owned());
            }
        }
    }
    (names, body)
}

fn js_imports(text: &str) -> (Vec<String>, String) {
    let (imports, body) = statements(text, &["import "], |s| s.contains(" from ") || s.contains(';') || s.contains('\''));
    let mut names = Vec::new();
    for statement in imports {
        let Some((clause, _)) = statement.split_once(" from ") else { continue };
        let clause = clause.trim_start_matches("import").trim().trim_start_matches("type ");
        if clause.starts_with('*') {
            continue;
        }
        for item in clause.split([',', '{', '}', '\n']) {
            let name = item.trim().trim_start_matches("type ").split(" as ").next().unwrap_or("").trim();
            if is_identifier(name) {
                names.push(name.to_owned());
            }
        }
    }
    (names, body)
}

fn java_imports(text: &str) -> (Vec<String>, String) {
    let (imports, body) = statements(text, &["import "], |s| s.contains(';'));
    let names = imports
        .iter()
        .filter(|s| !s.contains("import static"))
        .filter_map(|s| s.trim_end().trim_end_matches(';').rsplit('.').next().map(str::trim).map(str::to_owned))
        .filter(|n| is_identifier(n))
        .collect();
    (names, body)
}

fn is_identifier(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// What a caller needs of the definition of `name` in `text` (a chunk): a function's signature (up
/// to where its body starts, the body left as `…`), a short type whole, a long one's declaration
/// with its members' signatures. Comments, doc lines and attributes before it are left out.
/// `None` if `text` has no line defining `name`.
pub fn signature(language: Language, text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| defines(l, name))?;
    let first = lines[at].trim_start();
    let is_type = ["struct ", "enum ", "trait ", "class ", "interface ", "union ", "type "]
        .iter()
        .any(|k| first.starts_with(k) || first.split_once(' ').is_some_and(|(vis, rest)| is_visibility(vis) && rest.starts_with(k)));
    let rest = &lines[at..];
    if is_type && rest.len() <= WHOLE_TYPE_LINES {
        return Some(rest.join("\n"));
    }
    let declaration = signature_lines(language, rest);
    let mut out: Vec<String> = declaration.iter().map(|l| (*l).to_owned()).collect();
    if is_type {
        // Members one level in: fields and variants as they are, functions as their signatures.
        let indent = |l: &str| l.len() - l.trim_start().len();
        let base = indent(rest[0]);
        let member = |l: &str| !l.trim().is_empty() && !is_comment(l.trim_start());
        let member_indent = rest[out.len()..].iter().filter(|l| member(l)).map(|l| indent(l)).find(|&i| i > base);
        let mut members = 0;
        let mut i = out.len();
        while let Some(level) = member_indent
            && i < rest.len()
            && members < MAX_MEMBERS
        {
            let line = rest[i];
            if !member(line) || indent(line) != level {
                i += 1;
                continue;
            }
            members += 1;
            if starts_function(line.trim_start()) {
                let sig = signature_lines(language, &rest[i..]);
                i += sig.len();
                out.extend(sig.iter().map(|l| (*l).to_owned()));
                out.extend(body_marker(language, &sig));
            } else {
                out.push(line.to_owned());
                i += 1;
            }
        }
        if language != Language::Python {
            out.push(format!("{}}}", " ".repeat(base)));
        }
    } else {
        out.extend(body_marker(language, &declaration));
    }
    Some(out.join("\n"))
}

/// The lines of the declaration starting `lines`, up to where its body opens.
fn signature_lines<'a>(language: Language, lines: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for line in lines.iter().take(MAX_SIGNATURE_LINES) {
        out.push(*line);
        let t = line.trim_end();
        let opens = match language {
            Language::Python => t.ends_with(':'),
            _ => t.ends_with('{') || t.ends_with(';') || t.ends_with("=>"),
        };
        if opens {
            break;
        }
    }
    out
}

/// What stands for the left-out body of the declaration `signature` (its lines), indented one
/// level below its first line; `None` for a declaration without a body (`fn f();`).
fn body_marker(language: Language, signature: &[&str]) -> Option<String> {
    let first = signature.first()?;
    let indent = &first[..first.len() - first.trim_start().len()];
    match language {
        Language::Python => Some(format!("{indent}    ...")),
        _ if signature.last()?.trim_end().ends_with(';') => None,
        _ => Some(format!("{indent}    // …\n{indent}}}")),
    }
}

fn is_visibility(word: &str) -> bool {
    matches!(word, "pub" | "export" | "public" | "private" | "protected" | "static" | "abstract" | "final") || word.starts_with("pub(")
}

fn starts_function(line: &str) -> bool {
    let line = line.split_whitespace().skip_while(|w| is_visibility(w) || matches!(*w, "async" | "const" | "unsafe" | "extern")).collect::<Vec<_>>();
    matches!(line.first().copied(), Some("fn" | "def" | "function" | "func"))
}

/// Comments, doc lines, attributes, decorators, docstrings (`line` trimmed at its start).
fn is_comment(t: &str) -> bool {
    t.starts_with("//") || t.starts_with('#') || t.starts_with('*') || t.starts_with('@') || t.starts_with("/*") || t.starts_with("\"\"\"")
}

/// Whether `line` is the line of a definition of `name` (a declaration keyword before the name, not
/// a comment or an attribute).
fn defines(line: &str, name: &str) -> bool {
    let t = line.trim_start();
    if is_comment(t) {
        return false;
    }
    let mut before_name = None;
    let mut previous = "";
    for word in t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '!')) {
        if word.is_empty() {
            continue;
        }
        if word == name {
            before_name = Some(previous);
            break;
        }
        previous = word;
    }
    matches!(
        before_name,
        Some(
            "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "union" | "macro_rules!" | "def" | "class"
                | "interface" | "function" | "func" | "let" | "var" | "mod"
        )
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_imported_from_the_standard_library_are_told_apart() {
        let text = "use std::task::{Context, Poll};\nuse core::pin::Pin;\nuse crate::runtime::Handle;\nuse tokio_util::sync::CancellationToken;\n\nfn f() {}\n";
        let names = super::standard_library_names(Language::Rust, text);
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort();
        assert_eq!(names, ["Context", "Pin", "Poll"]);
        assert!(super::standard_library_names(Language::Python, "from os import path\n").is_empty());
    }

    use super::*;

    #[test]
    fn names_reached_through_standard_library_paths() {
        let file = "use std::{\n    pin::Pin,\n    task::{self, ready, Poll},\n};\nuse crate::io::{self, ReadBuf};\n";
        let std_names = standard_library_names(Language::Rust, file);
        assert!(std_names.contains("task") && std_names.contains("Poll") && !std_names.contains("io"), "{std_names:?}");
        let window = "    fn poll_read(cx: &mut task::Context<'_>) -> Poll<std::io::Result<()>> {\n        crate::runtime::Handle::current();\n        return Poll::Ready(Ok(()));\n";
        let mut found: Vec<String> = standard_library_paths(Language::Rust, window, &std_names).into_iter().collect();
        found.sort();
        assert_eq!(found, ["Context", "Ready", "Result", "io"]);
        assert!(standard_library_paths(Language::Python, window, &std_names).is_empty());
    }

    #[test]
    fn names_the_code_binds_itself() {
        let window = "fn open(path: &Path, opts: Options) {\n    if let Ok(handle) = crate::runtime::Handle::try_current() {\n        let mut driver_handle = handle.inner.driver();\n        for entry in read_dir(path) {\n            items.iter().map(|item| item.size).sum::<u64>();\n            Config { depth: 2, ..Default::default() };\n            return Ok(parse_header(buf)?);\n        }\n    }\n    Err(invalid_data(path))\n";
        let mut found: Vec<String> = locally_bound(Language::Rust, window).into_iter().collect();
        found.sort();
        assert_eq!(found, ["depth", "driver_handle", "entry", "handle", "item", "opts", "path"]);
    }

    fn check_imports(language: Language, text: &str, expect: &[&str]) {
        assert_eq!(imported_names(language, text), expect, "{text}");
    }

    #[test]
    fn rust_use_trees_give_their_leaves_unused_first() {
        check_imports(
            Language::Rust,
            "use crate::cart::{Item, total_cents};\nuse std::collections::HashMap;\nuse crate::price::{self, discount as cut, tax::{vat, *}};\n\nfn f(i: Item) -> HashMap<u8, u8> {\n    HashMap::new()\n}\n",
            &["total_cents", "discount", "vat", "Item", "HashMap"],
        );
        check_imports(Language::Rust, "pub use crate::{\n    parse::Parser,\n    hir::Hir,\n};\n", &["Parser", "Hir"]);
    }

    #[test]
    fn python_javascript_and_java_imports() {
        check_imports(Language::Python, "import os\nfrom .core import (\n    Context,\n    echo as say,\n)\nfrom x import *\n\nsay(1)\n", &["Context", "echo"]);
        check_imports(Language::TypeScript, "import Default, { parse, type Node as N } from './ast';\nimport * as fs from 'fs';\n", &["Default", "parse", "Node"]);
        check_imports(Language::Java, "import java.util.List;\nimport static org.junit.Assert.assertEquals;\n", &["List"]);
        check_imports(Language::Go, "import \"fmt\"\n", &[]);
    }

    #[test]
    fn an_unterminated_import_does_not_swallow_the_file() {
        let text = format!("use crate::{{a,\n{}", "fn body() {}\n".repeat(1_000));
        assert!(imported_names(Language::Rust, &text).is_empty());
    }

    fn check_signature(language: Language, text: &str, name: &str, expect: &str) {
        assert_eq!(signature(language, text, name).as_deref(), Some(expect), "{text}");
    }

    #[test]
    fn functions_keep_their_signature_only() {
        check_signature(
            Language::Rust,
            "/// Parses it.\n#[inline]\npub fn parse_expr(\n    input: &str,\n    depth: u32,\n) -> Result<Expr, Error> {\n    let x = 1;\n    todo!()\n}\n",
            "parse_expr",
            "pub fn parse_expr(\n    input: &str,\n    depth: u32,\n) -> Result<Expr, Error> {\n    // …\n}",
        );
        check_signature(Language::Python, "def echo(message=None, file=None):\n    \"\"\"Prints.\"\"\"\n    pass\n", "echo", "def echo(message=None, file=None):\n    ...");
        check_signature(Language::Rust, "    fn len(&self) -> usize;\n", "len", "    fn len(&self) -> usize;");
    }

    #[test]
    fn short_types_stay_whole_and_long_ones_keep_member_signatures() {
        check_signature(Language::Rust, "/// A line.\npub struct Item {\n    pub cents: u64,\n}\n", "Item", "pub struct Item {\n    pub cents: u64,\n}");
        let mut class = String::from("class Context:\n    \"\"\"The context.\"\"\"\n\n    def __init__(self, command, parent=None):\n");
        class.push_str(&"        self.x = 1\n".repeat(20));
        class.push_str("    def invoke(self, callback, *args):\n        return callback(*args)\n");
        check_signature(
            Language::Python,
            &class,
            "Context",
            "class Context:\n    def __init__(self, command, parent=None):\n        ...\n    def invoke(self, callback, *args):\n        ...",
        );
    }

    #[test]
    fn a_chunk_without_the_definition_gives_none() {
        assert_eq!(signature(Language::Rust, "// fn parse_expr is below\nlet parse_expr = 1;\n", "parse"), None);
        assert_eq!(signature(Language::Rust, "// fn parse_expr() {}\n", "parse_expr"), None);
    }
}
