//! Context for a completion, from three places: definitions of identifiers near the cursor (looked
//! up by name in the index), windows of other open buffers similar to the code at the cursor, and
//! hybrid search hits for that code. The pure parts (which identifiers, which windows, dedupe) are
//! separate from the store lookups.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::scope;
use crate::chunk::Chunk;
use crate::embed::Embedder;
use crate::prompt::{Snippet, Source};
use crate::retrieve::{self, SearchRequest};
use crate::store::Store;

/// Lines above the cursor searched for identifiers.
const IDENT_LINES_ABOVE: usize = 12;
/// Lines of an open buffer in one window compared with the code at the cursor.
const WINDOW_LINES: usize = 20;
/// Minimum Jaccard similarity of identifier sets for an open-buffer window to be used.
const MIN_SIMILARITY: f64 = 0.08;

/// An open document other than the one being completed.
#[derive(Debug, Clone)]
pub struct Buffer {
    pub path: String,
    pub text: String,
}

/// Words that are never worth looking up.
const KEYWORDS: &[&str] = &[
    "and", "as", "async", "await", "break", "case", "catch", "class", "const", "continue", "crate", "def", "default", "defer",
    "del", "elif", "else", "enum", "except", "export", "extends", "extern", "false", "final", "finally", "fn", "for", "from",
    "func", "function", "go", "if", "impl", "import", "in", "interface", "is", "lambda", "let", "loop", "match", "mod",
    "move", "mut", "new", "nil", "None", "not", "null", "or", "package", "pass", "private", "protected", "pub", "public",
    "raise", "ref", "return", "self", "Self", "static", "struct", "super", "switch", "this", "throw", "trait", "true",
    "True", "False", "try", "type", "typeof", "undefined", "unsafe", "use", "var", "void", "where", "while", "with", "yield",
    "String", "Vec", "Option", "Some", "Ok", "Err", "Result", "Box", "usize", "u8", "u16", "u32", "u64", "i32", "i64",
    "f32", "f64", "bool", "str", "int", "float", "char", "println", "print", "len",
];

fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_alphabetic() || c == b'_' {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                return Some((start, &text[start..i]));
            }
            if c.is_ascii_digit() {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                continue;
            }
            i += 1;
        }
        None
    })
}

/// Where identifiers are looked for: from [`IDENT_LINES_ABOVE`] lines above the cursor to the end
/// of its line (byte range of `text`).
pub fn nearby_range(text: &str, offset: usize) -> std::ops::Range<usize> {
    let mut start = offset;
    for _ in 0..=IDENT_LINES_ABOVE {
        match text[..start].rfind('\n') {
            Some(i) => start = i,
            None => {
                start = 0;
                break;
            }
        }
    }
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    start..end
}

/// Identifiers in the lines around the cursor ([`nearby_range`]), nearest first, without keywords
/// or short words.
pub fn nearby_identifiers(text: &str, offset: usize, max: usize) -> Vec<String> {
    let std::ops::Range { start, end } = nearby_range(text, offset);
    let mut found: Vec<(usize, &str)> = words(&text[start..end])
        .filter(|(_, w)| w.len() >= 3 && !KEYWORDS.contains(w))
        .map(|(at, w)| ((start + at).abs_diff(offset), w))
        .collect();
    found.sort_by_key(|(distance, _)| *distance);
    let mut seen = HashSet::new();
    found.into_iter().filter(|(_, w)| seen.insert(*w)).take(max).map(|(_, w)| w.to_owned()).collect()
}

/// The name a chunk's symbol path defines: `impl Parser > fn parse_expr` → `parse_expr`,
/// `func Store.Get` → `Get`, `namespace geo > fn Circle::area` → `area`.
pub fn defined_name(symbol: &str) -> &str {
    let last = symbol.rsplit(" > ").next().unwrap_or(symbol);
    let name = last.rsplit(' ').next().unwrap_or(last);
    let name = name.rsplit("::").next().unwrap_or(name);
    name.rsplit('.').next().unwrap_or(name)
}

/// Chunks defining one name read at most. A name with this many defining chunks or more (`new`,
/// `fmt`, `run`; an `impl` block counts, so a type with many impls counts too) is ambiguous: no
/// definition of it is offered (any one would be a guess, and an unrelated body in the prompt
/// pulls the model off).
const DEFINITIONS_PER_NAME: usize = 8;

/// Looks each identifier up in the index and keeps the chunks that define it elsewhere than
/// `current` (none when `current` defines it), the nearest to `current` first ([`nearest_definitions`]).
pub async fn definitions(store: &Store, identifiers: &[String], current: &str, per_name: usize) -> Vec<Snippet> {
    let lookups = identifiers.iter().map(|name| async move {
        let found = store.definitions_named(name, DEFINITIONS_PER_NAME).await.unwrap_or_default();
        let found: Vec<Chunk> = found.into_iter().filter(|c| defined_name(&c.symbol) == name.as_str()).collect();
        nearest_definitions(found, current, per_name)
            .into_iter()
            .map(|c| Snippet { text: c.text, path: c.path, start_line: c.start_line, end_line: c.end_line, source: Source::Definition })
            .collect::<Vec<_>>()
    });
    futures::future::join_all(lookups).await.into_iter().flatten().collect()
}

/// Of the chunks defining one name, the `per_name` a file at `current` most likely means: none if
/// the name is ambiguous ([`DEFINITIONS_PER_NAME`] defining chunks or more) or if `current` defines
/// it (the file means its own: tokio's `fs/open_options.rs` has an `enum Kind`, and the runtime
/// builder's `Kind` in the prompt is another type), none in test code unless `current` is test code
/// (code outside tests cannot call it), and the rest by how many leading directories their path
/// shares with `current` (a module's neighbours first: tokio's multi-thread scheduler means its own
/// `Handle`), then in the order given.
pub fn nearest_definitions(found: Vec<Chunk>, current: &str, per_name: usize) -> Vec<Chunk> {
    // An `impl` block is not a definition of its type: `impl Display for Handle` here leaves
    // `struct Handle` to be found elsewhere.
    let defines_here = |c: &Chunk| c.path == current && !c.symbol.rsplit(" > ").next().unwrap_or("").starts_with("impl ");
    if found.len() >= DEFINITIONS_PER_NAME || found.iter().any(defines_here) {
        return Vec::new();
    }
    let in_tests = is_test_path(current);
    let mut kept: Vec<Chunk> = found.into_iter().filter(|c| c.path != current && (in_tests || !is_test_path(&c.path))).collect();
    kept.sort_by_key(|c| std::cmp::Reverse(shared_dirs(&c.path, current)));
    kept.truncate(per_name);
    kept
}

/// Leading directories two `/`-separated paths share.
fn shared_dirs(a: &str, b: &str) -> usize {
    let (a, b) = (a.rsplit_once('/').map_or("", |(d, _)| d), b.rsplit_once('/').map_or("", |(d, _)| d));
    a.split('/').zip(b.split('/')).take_while(|(x, y)| !x.is_empty() && x == y).count()
}

/// Whether a workspace path is test code: under a `tests`, `test`, `testing` or `__tests__`
/// directory, or named like a test file (Rust's `tests.rs`, `test_*.py`, `*_test.go`, `*.test.ts`,
/// `*_spec.rb`).
pub fn is_test_path(path: &str) -> bool {
    let mut parts = path.split('/').rev();
    let file = parts.next().unwrap_or("");
    let stem = file.split('.').next().unwrap_or(file);
    parts.any(|d| matches!(d, "tests" | "test" | "testing" | "__tests__"))
        || matches!(stem, "tests" | "test")
        || stem.starts_with("test_")
        || stem.ends_with("_test")
        || stem.ends_with("_tests")
        || stem.ends_with("_spec")
        || file.contains(".test.")
        || file.contains(".spec.")
}

/// The signatures of `names` (imported by the file at `current`) from their definitions in the
/// index ([`scope::signature`]), one per name, in the order given.
pub async fn signatures(store: &Store, names: &[String], current: &str) -> Vec<Snippet> {
    let lookups = names.iter().map(|name| async move {
        let found = store.definitions_named(name, DEFINITIONS_PER_NAME).await.unwrap_or_default();
        found.into_iter().filter(|c| c.path != current && defined_name(&c.symbol) == name.as_str()).find_map(|c| {
            let text = scope::signature(c.language, &c.text, name)?;
            Some(Snippet { text: text + "\n", path: c.path, start_line: c.start_line, end_line: c.end_line, source: Source::Signature })
        })
    });
    futures::future::join_all(lookups).await.into_iter().flatten().collect()
}

/// Hybrid search for the code at the cursor, without hits from `current`.
pub async fn retrieved(store: &Store, embedder: Option<Arc<dyn Embedder>>, query: &str, current: &str, k: usize, prose: bool) -> Vec<Snippet> {
    let mut request = SearchRequest::new(query);
    // Room for the current file's hit and a prose one left out (asking for more changes the
    // fused ranking of the rest).
    request.k = k + 2;
    request.per_file = 1;
    let text = crate::chunk::Language::Text.name();
    match retrieve::search(store, embedder, &request).await {
        Ok(hits) => hits
            .into_iter()
            .filter(|h| h.citation.path != current && (prose || h.language != text))
            .take(k)
            .map(|h| Snippet {
                path: h.citation.path,
                start_line: h.citation.start_line,
                end_line: h.citation.end_line,
                text: h.text,
                source: Source::Retrieved,
            })
            .collect(),
        Err(e) => {
            tracing::warn!("retrieval for a completion failed: {e}");
            Vec::new()
        }
    }
}

pub(crate) fn identifier_set(text: &str) -> HashSet<&str> {
    words(text).map(|(_, w)| w).filter(|w| w.len() >= 2).collect()
}

/// The window of each open buffer most similar to `query` (Jaccard similarity of identifier sets),
/// best first, at most `max`.
pub fn similar_windows(query: &str, buffers: &[Buffer], max: usize) -> Vec<Snippet> {
    let wanted = identifier_set(query);
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut best: Vec<(f64, Snippet)> = Vec::new();
    for buffer in buffers {
        let lines: Vec<&str> = buffer.text.lines().collect();
        let step = WINDOW_LINES / 2;
        let mut top: Option<(f64, usize)> = None;
        let mut start = 0;
        while start < lines.len().max(1) {
            let end = (start + WINDOW_LINES).min(lines.len());
            let window = lines[start..end].join("\n");
            let have = identifier_set(&window);
            let union = wanted.union(&have).count();
            let score = if union == 0 { 0.0 } else { wanted.intersection(&have).count() as f64 / union as f64 };
            if top.is_none_or(|(s, _)| score > s) {
                top = Some((score, start));
            }
            if end == lines.len() {
                break;
            }
            start += step;
        }
        if let Some((score, start)) = top
            && score >= MIN_SIMILARITY
        {
            let end = (start + WINDOW_LINES).min(lines.len());
            best.push((
                score,
                Snippet {
                    path: buffer.path.clone(),
                    start_line: start as u32 + 1,
                    end_line: end as u32,
                    text: lines[start..end].join("\n") + "\n",
                    source: Source::OpenBuffer,
                },
            ));
        }
    }
    best.sort_by(|a, b| b.0.total_cmp(&a.0));
    best.into_iter().take(max).map(|(_, s)| s).collect()
}

/// Drops snippets overlapping an earlier one in the same file (earlier = more important).
pub fn dedupe(snippets: Vec<Snippet>) -> Vec<Snippet> {
    let mut kept: Vec<Snippet> = Vec::new();
    let mut by_path: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    for s in snippets {
        let ranges = by_path.entry(s.path.clone()).or_default();
        if ranges.iter().any(|&(a, b)| s.start_line <= b && a <= s.end_line) {
            continue;
        }
        ranges.push((s.start_line, s.end_line));
        kept.push(s);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Language;

    #[test]
    fn identifiers_nearest_the_cursor_come_first() {
        let text = "use crate::cart::Cart;\nfn total(cart: &Cart) -> u64 {\n    let sum = price_of(cart.items);\n    sum";
        let ids = nearby_identifiers(text, text.len(), 4);
        assert_eq!(ids, vec!["sum", "items", "cart", "price_of"]);
    }

    #[test]
    fn defined_names_come_from_symbol_paths() {
        assert_eq!(defined_name("impl Parser > fn parse_expr"), "parse_expr");
        assert_eq!(defined_name("struct Cart"), "Cart");
        assert_eq!(defined_name("func Store.Get"), "Get");
        assert_eq!(defined_name("namespace geo > fn Circle::area"), "area");
        assert_eq!(defined_name(""), "");
    }

    #[test]
    fn the_most_similar_window_of_each_buffer_is_found() {
        let mut other = String::new();
        for i in 0..60 {
            other.push_str(&format!("let unrelated_{i} = {i};\n"));
        }
        other.push_str("fn apply_discount(cart: &Cart, coupon: Coupon) -> u64 {\n    cart.total() - coupon.amount\n}\n");
        let buffers = [Buffer { path: "src/discount.rs".into(), text: other }, Buffer { path: "empty.rs".into(), text: String::new() }];
        let found = similar_windows("let price = apply_discount(cart, coupon);", &buffers, 3);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "src/discount.rs");
        assert!(found[0].text.contains("fn apply_discount"));
        assert!(found[0].end_line >= 61 && found[0].start_line <= 61, "{:?}", (found[0].start_line, found[0].end_line));
    }

    fn chunk(path: &str) -> Chunk {
        let text = "pub struct Handle;".to_owned();
        let (id, content_hash) = (path.to_owned(), String::new());
        Chunk { id, path: path.into(), language: Language::Rust, start_byte: 0, end_byte: text.len(), start_line: 1, end_line: 1, symbol: "struct Handle".into(), text, content_hash }
    }

    #[test]
    fn the_definition_nearest_the_file_is_chosen_and_ambiguous_or_test_ones_are_not() {
        let current = "src/runtime/scheduler/multi_thread/trace.rs";
        let found = vec![
            chunk("src/runtime/handle.rs"),
            chunk("tests/support/handle.rs"),
            chunk("src/runtime/scheduler/multi_thread/handle.rs"),
            chunk("src/runtime/scheduler/current_thread/mod.rs"),
        ];
        let paths = |v: Vec<Chunk>| v.into_iter().map(|c| c.path).collect::<Vec<_>>();
        assert_eq!(paths(nearest_definitions(found.clone(), current, 1)), ["src/runtime/scheduler/multi_thread/handle.rs"]);
        assert_eq!(
            paths(nearest_definitions(found.clone(), current, 9)),
            ["src/runtime/scheduler/multi_thread/handle.rs", "src/runtime/scheduler/current_thread/mod.rs", "src/runtime/handle.rs"],
            "test code is left out, ties keep their order"
        );
        assert_eq!(paths(nearest_definitions(found.clone(), "tests/rt_common.rs", 1)), ["tests/support/handle.rs"]);
        let everywhere: Vec<Chunk> = (0..DEFINITIONS_PER_NAME).map(|i| chunk(&format!("src/m{i}.rs"))).collect();
        assert!(nearest_definitions(everywhere, current, 1).is_empty(), "a name defined everywhere is a guess");
        assert!(nearest_definitions(vec![chunk(current)], current, 1).is_empty());
        let mut own = found.clone();
        own.push(chunk(current));
        assert!(nearest_definitions(own, current, 9).is_empty(), "a name the file defines means the file's own");
        let mut implemented = found.clone();
        implemented.push(Chunk { symbol: "impl fmt::Display for Handle".into(), ..chunk(current) });
        assert_eq!(nearest_definitions(implemented, current, 1).len(), 1, "an impl block here is not the type's definition");
    }

    #[test]
    fn test_paths_are_recognised() {
        for p in ["tests/rt.rs", "pkg/test/a.py", "test_cli.py", "src/app_test.go", "web/a.test.ts", "spec/x_spec.rb", "src/__tests__/a.js", "src/prompt/tests.rs"] {
            assert!(is_test_path(p), "{p}");
        }
        for p in ["src/testing_utils_helper.rs", "src/latest.rs", "contest/a.rs", "src/attest.py"] {
            assert!(!is_test_path(p), "{p}");
        }
    }

    #[test]
    fn overlapping_snippets_keep_the_first() {
        let s = |path: &str, a, b, source| Snippet { path: path.into(), start_line: a, end_line: b, text: String::new(), source };
        let kept = dedupe(vec![
            s("a.rs", 10, 20, Source::Definition),
            s("a.rs", 15, 30, Source::Retrieved),
            s("a.rs", 21, 30, Source::Retrieved),
            s("b.rs", 15, 30, Source::Retrieved),
        ]);
        let got: Vec<(&str, u32)> = kept.iter().map(|s| (s.path.as_str(), s.start_line)).collect();
        assert_eq!(got, vec![("a.rs", 10), ("a.rs", 21), ("b.rs", 15)]);
    }
}
