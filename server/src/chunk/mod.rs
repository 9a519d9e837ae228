//! Cutting files into chunks that follow the syntax.
//!
//! A file is parsed with tree-sitter and cut top-down: siblings are merged greedily while they fit
//! the budget ([`MAX_CHUNK_BYTES`]); a node too large to fit is split on its own children, and a
//! leaf too large (a huge string, say) falls back to line windows. Comments, attributes and
//! decorators stay with the definition after them. Each chunk records its symbol path
//! (`impl Parser > fn parse_expr`) from the definitions that enclose or make it up.
//!
//! Files in languages without a grammar are cut into line windows that prefer blank lines as
//! boundaries ([`fallback`]).

pub mod fallback;
pub mod lang;

use std::cell::RefCell;
use std::collections::HashMap;

pub use lang::Language;
use tree_sitter::{Node, Parser};

/// The most bytes of syntax a chunk holds unless a single node or line is longer (the chunk also
/// takes the whitespace that completes its first and last lines). About 300–400 tokens of code for
/// the MiniLM tokenizer, which keeps nearly every chunk inside the embedding model's window.
pub const MAX_CHUNK_BYTES: usize = 1200;
/// Neighbouring chunks smaller than this are merged when the result still fits.
pub const MIN_CHUNK_BYTES: usize = 250;
/// Most definitions named in the symbol of a chunk that holds several.
const MAX_LABELS: usize = 3;
/// Most characters of a symbol path (longer ones are cut with `…`).
const MAX_SYMBOL_CHARS: usize = 160;

/// How large chunks may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: usize,
    pub min: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self { max: MAX_CHUNK_BYTES, min: MIN_CHUNK_BYTES }
    }
}

/// A piece of a file, ready to be stored and embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Stable id: hash of path, first line and text.
    pub id: String,
    /// Workspace-relative path with `/` separators.
    pub path: String,
    pub language: Language,
    /// Byte range in the file, end exclusive.
    pub start_byte: usize,
    pub end_byte: usize,
    /// Line range, 1-based and inclusive (what citations show).
    pub start_line: u32,
    pub end_line: u32,
    /// Enclosing definitions, outermost first (`impl Parser > fn parse_expr`); may be empty.
    pub symbol: String,
    pub text: String,
    /// Hash of the text alone: an unchanged chunk keeps its embedding when lines shift.
    pub content_hash: String,
}

/// A byte range with its symbol, before it becomes a [`Chunk`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    symbol: String,
}

thread_local! {
    static PARSERS: RefCell<HashMap<Language, Parser>> = RefCell::new(HashMap::new());
}

/// Syntax trees deeper than this are not used: the code that walks them (the chunker's split,
/// for one) recurses per level, and a user's file can nest without limit (100,000 parentheses, a
/// chain of 100,000 `+`). Such a file is cut into line windows instead.
pub const MAX_TREE_DEPTH: usize = 256;

/// Parses `text` with the grammar of `language`, reusing one parser per language and thread.
/// `None` for a language without a grammar, or a tree deeper than [`MAX_TREE_DEPTH`].
pub fn parse(language: Language, text: &str) -> Option<tree_sitter::Tree> {
    let grammar = language.grammar()?;
    let tree = PARSERS.with(|parsers| {
        let mut parsers = parsers.borrow_mut();
        let parser = parsers.entry(language).or_insert_with(|| {
            let mut p = Parser::new();
            p.set_language(&grammar).expect("bundled grammars match the tree-sitter ABI");
            p
        });
        parser.parse(text, None)
    })?;
    (tree_depth(&tree, MAX_TREE_DEPTH) <= MAX_TREE_DEPTH).then_some(tree)
}

/// The depth of a tree (the root alone is 1), counted without recursion; stops counting past
/// `limit`.
pub fn tree_depth(tree: &tree_sitter::Tree, limit: usize) -> usize {
    let mut cursor = tree.walk();
    let (mut depth, mut deepest) = (1usize, 1usize);
    loop {
        if depth <= limit && cursor.goto_first_child() {
            depth += 1;
            deepest = deepest.max(depth);
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return deepest;
            }
            depth -= 1;
        }
    }
}

/// Cuts a file into chunks. Never fails: text that cannot be parsed is cut into line windows.
pub fn chunk_file(path: &str, language: Language, text: &str) -> Vec<Chunk> {
    chunk_file_with(path, language, text, Budget::default())
}

/// [`chunk_file`] with an explicit budget.
pub fn chunk_file_with(path: &str, language: Language, text: &str, budget: Budget) -> Vec<Chunk> {
    let lines = LineIndex::new(text);
    let spans = match parse(language, text) {
        Some(tree) => {
            let mut cutter = Cutter { language, text, budget, spans: Vec::new() };
            cutter.split(tree.root_node(), &[], None);
            let spans = fill_gaps(align_to_lines(cutter.spans, text), text, budget);
            merge_small(spans, text, budget)
        }
        None => fallback::windows(text, 0, text.len(), budget.max, budget.min)
            .into_iter()
            .map(|(start, end)| Span { start, end, symbol: String::new() })
            .collect(),
    };
    spans
        .into_iter()
        .filter(|s| !text[s.start..s.end].trim().is_empty())
        .map(|s| make_chunk(path, language, text, &lines, s))
        .collect()
}

fn make_chunk(path: &str, language: Language, text: &str, lines: &LineIndex, span: Span) -> Chunk {
    let body = &text[span.start..span.end];
    let start_line = lines.line_of(span.start) + 1;
    let end_line = lines.line_of(span.end.saturating_sub(1).max(span.start)) + 1;
    let content_hash = blake3::hash(body.as_bytes()).to_hex()[..32].to_owned();
    let mut id = blake3::Hasher::new();
    id.update(path.as_bytes());
    id.update(&[0]);
    id.update(&start_line.to_le_bytes());
    id.update(content_hash.as_bytes());
    Chunk {
        id: id.finalize().to_hex()[..32].to_owned(),
        path: path.to_owned(),
        language,
        start_byte: span.start,
        end_byte: span.end,
        start_line,
        end_line,
        symbol: span.symbol,
        text: body.to_owned(),
        content_hash,
    }
}

/// Byte offset → line number.
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    /// 0-based line containing `byte`.
    pub fn line_of(&self, byte: usize) -> u32 {
        (self.starts.partition_point(|&s| s <= byte) - 1) as u32
    }
}

struct Cutter<'a> {
    language: Language,
    text: &'a str,
    budget: Budget,
    spans: Vec<Span>,
}

impl Cutter<'_> {
    /// Splits the children of `node` into spans. `path` holds the labels of the enclosing
    /// definitions; `lead` is where leading comments/attributes of `node` start, if they were
    /// held back for it by the caller.
    fn split(&mut self, node: Node<'_>, path: &[String], lead: Option<usize>) {
        let mut cursor = node.walk();
        let children: Vec<Node<'_>> = node.children(&mut cursor).collect();
        if children.is_empty() {
            let start = lead.unwrap_or(node.start_byte());
            for (s, e) in fallback::windows(self.text, start, node.end_byte(), self.budget.max, self.budget.min) {
                self.spans.push(Span { start: s, end: e, symbol: join_path(path, &[]) });
            }
            return;
        }

        let mut group: Vec<Node<'_>> = Vec::new();
        let mut group_start = lead;
        for child in children {
            let child_size = child.end_byte() - child.start_byte();
            let start = group_start.or(group.first().map(Node::start_byte)).unwrap_or(child.start_byte());
            if child_size > self.budget.max {
                // Comments/attributes right before the big child go down with it.
                let held = self.take_trailing_attached(&mut group);
                let group_bytes = group.last().map_or(0, |last| {
                    last.end_byte() - group_start.unwrap_or(group[0].start_byte()).min(group[0].start_byte())
                });
                let child_lead = if group.is_empty() {
                    group_start.or(held)
                } else if group_bytes < self.budget.min {
                    // A small header (`impl Parser`, `class Repo:`) leads into the first piece of
                    // the child instead of standing alone.
                    let lead = group_start.unwrap_or(group[0].start_byte()).min(group[0].start_byte());
                    group.clear();
                    Some(lead)
                } else {
                    self.flush(&mut group, group_start, path);
                    held
                };
                let mut inner = path.to_vec();
                if let Some(label) = self.definition_label(child) {
                    inner.push(label);
                }
                self.split(child, &inner, child_lead);
                group_start = None;
                continue;
            }
            let header_only = group.last().is_some_and(|last| last.end_byte() - start < self.budget.min);
            let fits = child.end_byte() - start <= self.budget.max
                || (header_only && child.end_byte() - start <= self.budget.max + self.budget.min);
            if !fits && !group.is_empty() {
                let held = self.take_trailing_attached(&mut group);
                if group.is_empty() {
                    // The group was only comments: keep them with this child even if it overflows.
                    group_start = group_start.or(held);
                } else {
                    self.flush(&mut group, group_start, path);
                    group_start = held;
                }
            }
            group.push(child);
        }
        self.flush(&mut group, group_start, path);
    }

    /// Removes the attach-forward nodes (comments, attributes) at the end of `group` and returns
    /// where they start.
    fn take_trailing_attached(&self, group: &mut Vec<Node<'_>>) -> Option<usize> {
        let mut start = None;
        while let Some(last) = group.last() {
            if !self.language.attaches_forward(last.kind()) {
                break;
            }
            start = Some(last.start_byte());
            group.pop();
        }
        start
    }

    fn flush(&mut self, group: &mut Vec<Node<'_>>, lead: Option<usize>, path: &[String]) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return;
        };
        let start = lead.map_or(first.start_byte(), |l| l.min(first.start_byte()));
        let labels: Vec<String> = group.iter().filter_map(|n| self.definition_label(*n)).collect();
        self.spans.push(Span { start, end: last.end_byte(), symbol: join_path(path, &labels) });
        group.clear();
    }

    /// `fn parse_expr`, `impl Display for Parser`, ... for definition nodes (looking through
    /// wrappers such as decorators, `export` and templates).
    fn definition_label(&self, node: Node<'_>) -> Option<String> {
        let node = unwrap_definition(node);
        let label = self.language.definition_label(node.kind())?;
        let name = self.definition_name(node);
        Some(if name.is_empty() { label.to_owned() } else { format!("{label} {name}") })
    }

    fn definition_name(&self, node: Node<'_>) -> String {
        let text = |n: Node<'_>| squash(&self.text[n.byte_range()]);
        match (self.language, node.kind()) {
            (Language::Rust, "impl_item") => {
                let ty = node.child_by_field_name("type").map(text).unwrap_or_default();
                match node.child_by_field_name("trait") {
                    Some(tr) => format!("{} for {ty}", text(tr)),
                    None => ty,
                }
            }
            (Language::Go, "method_declaration") => {
                let name = node.child_by_field_name("name").map(text).unwrap_or_default();
                let receiver = node
                    .child_by_field_name("receiver")
                    .map(text)
                    .unwrap_or_default();
                let ty = receiver
                    .trim_matches(|c| c == '(' || c == ')')
                    .split_whitespace()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches('*')
                    .to_owned();
                if ty.is_empty() { name } else { format!("{ty}.{name}") }
            }
            (Language::C | Language::Cpp, "function_definition") => {
                declarator_name(node).map(text).unwrap_or_default()
            }
            _ => node.child_by_field_name("name").map(text).unwrap_or_default(),
        }
    }
}

/// Looks through nodes that wrap a definition without being one.
fn unwrap_definition(node: Node<'_>) -> Node<'_> {
    let inner = match node.kind() {
        "decorated_definition" => node.child_by_field_name("definition"),
        "export_statement" => node.child_by_field_name("declaration"),
        "template_declaration" | "ambient_declaration" => node.named_child(node.named_child_count().saturating_sub(1) as u32),
        "type_declaration" => node.named_child(0).filter(|c| c.kind() == "type_spec"),
        _ => None,
    };
    inner.map_or(node, unwrap_definition)
}

/// The identifier inside a C/C++ declarator chain (`int *(*f)(void)` → `f`).
fn declarator_name(node: Node<'_>) -> Option<Node<'_>> {
    let mut current = node.child_by_field_name("declarator")?;
    loop {
        match current.kind() {
            "identifier" | "field_identifier" | "qualified_identifier" | "destructor_name" | "operator_name"
            | "type_identifier" => return Some(current),
            _ => current = current.child_by_field_name("declarator")?,
        }
    }
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn join_path(path: &[String], labels: &[String]) -> String {
    let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
    let tail;
    match labels {
        [] => {}
        [one] => parts.push(one),
        many => {
            tail = if many.len() > MAX_LABELS {
                format!("{} (+{} more)", many[..MAX_LABELS].join(", "), many.len() - MAX_LABELS)
            } else {
                many.join(", ")
            };
            parts.push(&tail);
        }
    }
    let joined = parts.join(" > ");
    if joined.chars().count() > MAX_SYMBOL_CHARS {
        let cut: String = joined.chars().take(MAX_SYMBOL_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// Widens spans to whole lines where only whitespace lies between them and the line edge, so
/// chunks start at indentation and end with their newline.
fn align_to_lines(mut spans: Vec<Span>, text: &str) -> Vec<Span> {
    let bytes = text.as_bytes();
    for span in &mut spans {
        let mut s = span.start;
        while s > 0 && matches!(bytes[s - 1], b' ' | b'\t') {
            s -= 1;
        }
        if s == 0 || bytes[s - 1] == b'\n' {
            span.start = s;
        }
        let mut e = span.end;
        while e < bytes.len() && matches!(bytes[e], b' ' | b'\t' | b'\r') {
            e += 1;
        }
        if e < bytes.len() && bytes[e] == b'\n' {
            span.end = e + 1;
        } else if e == bytes.len() {
            span.end = e;
        }
    }
    // Widening never makes spans overlap: clamp if a previous one reaches past the next start.
    for i in 1..spans.len() {
        if spans[i].start < spans[i - 1].end {
            spans[i].start = spans[i - 1].end.min(spans[i].end);
        }
    }
    spans
}

/// Covers what no span covers (text tree-sitter left outside every node, such as what follows an
/// unterminated comment: found by fuzzing) with line windows, so every non-blank line is in a chunk.
fn fill_gaps(spans: Vec<Span>, text: &str, budget: Budget) -> Vec<Span> {
    let mut out = Vec::with_capacity(spans.len());
    let mut at = 0;
    let gap = |from: usize, to: usize, out: &mut Vec<Span>| {
        if from < to && !text[from..to].trim().is_empty() {
            for (s, e) in fallback::windows(text, from, to, budget.max, budget.min) {
                out.push(Span { start: s, end: e, symbol: String::new() });
            }
        }
    };
    for span in spans {
        gap(at, span.start.max(at), &mut out);
        at = at.max(span.end);
        out.push(span);
    }
    gap(at, text.len(), &mut out);
    out
}

/// Merges neighbours when one is small and together they still fit the budget.
///
/// A small piece may take its neighbour up to `max + min` bytes rather than stand alone: a lone
/// `package app;` or closing `}` is a poor search result. A piece with no word characters (only
/// punctuation) lends no name to the merged symbol.
fn merge_small(spans: Vec<Span>, text: &str, budget: Budget) -> Vec<Span> {
    let named = |s: &Span| text[s.start..s.end].chars().any(char::is_alphanumeric);
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        if let Some(prev) = out.last_mut() {
            let (prev_len, len) = (prev.end - prev.start, span.end - span.start);
            let small = prev_len < budget.min || len < budget.min;
            let limit = if small { budget.max + budget.min } else { budget.max };
            if small && span.end - prev.start <= limit {
                prev.symbol = match (named(prev), named(&span)) {
                    (true, false) => std::mem::take(&mut prev.symbol),
                    (false, true) => span.symbol,
                    _ => merge_symbols(&prev.symbol, &span.symbol),
                };
                prev.end = span.end;
                continue;
            }
        }
        out.push(span);
    }
    out
}

fn merge_symbols(a: &str, b: &str) -> String {
    if a.is_empty() || b.starts_with(a) {
        b.to_owned()
    } else if b.is_empty() || a.starts_with(b) {
        a.to_owned()
    } else {
        format!("{a}; {b}")
    }
}

#[cfg(test)]
mod tests;
