//! The shape of a completion, decided and enforced by pure functions: whether to complete at all,
//! one line or a block, where generated text stops, and what of it duplicates the suffix.

use crate::chunk::{self, Language};

/// One line or a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    SingleLine,
    MultiLine,
}

/// Characters that may follow the cursor on its line without preventing a completion.
const CLOSERS: &[char] = &[')', ']', '}', '>', ';', ',', '"', '\'', '`', ':'];

/// Node kinds inside which a completion stays on one line even at the start of a line.
const SINGLE_LINE_KINDS: &[&str] = &[
    "arguments",
    "argument_list",
    "parameters",
    "formal_parameters",
    "parameter_list",
    "string_literal",
    "string",
    "template_string",
    "raw_string_literal",
    "array",
    "array_expression",
    "list",
    "tuple_expression",
    "type_arguments",
    "line_comment",
    "comment",
];

/// Node kinds that hold statements or items: a blank line inside one starts a block completion.
fn is_block(kind: &str) -> bool {
    kind.contains("block")
        || kind.ends_with("body")
        || kind.ends_with("_list") && kind.starts_with("declaration")
        || kind == "source_file"
        || kind == "module"
        || kind == "program"
        || kind == "translation_unit"
        || kind == "compound_statement"
        || kind == "statement_block"
}

/// The text around the cursor that decisions look at.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    /// The current line up to the cursor.
    pub line_before: &'a str,
    /// The current line after the cursor.
    pub line_after: &'a str,
    /// Everything after the cursor.
    pub suffix: &'a str,
}

impl<'a> Cursor<'a> {
    pub fn new(text: &'a str, offset: usize) -> Self {
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        let line_after = text[offset..line_end].trim_end_matches('\r');
        Cursor { line_before: &text[line_start..offset], line_after, suffix: &text[offset..] }
    }

    /// Leading whitespace of the cursor's line.
    fn indent(&self) -> &'a str {
        let trimmed = self.line_before.trim_start();
        &self.line_before[..self.line_before.len() - trimmed.len()]
    }
}

/// A document bigger than this is not parsed whole for a decision: a window around the cursor
/// ([`PARSE_BEFORE`] bytes before it, [`PARSE_AFTER`] after, cut at line ends) is. Parsing runs
/// on every request at a line start; a whole 2 MB file would cost half a second each time.
const PARSE_WHOLE_BYTES: usize = 256 * 1024;
const PARSE_BEFORE: usize = 96 * 1024;
const PARSE_AFTER: usize = 32 * 1024;

/// The part of `text` a decision at `offset` parses, and the cursor's offset in it.
fn parse_window(text: &str, offset: usize) -> (&str, usize) {
    if text.len() <= PARSE_WHOLE_BYTES {
        return (text, offset);
    }
    let mut start = offset.saturating_sub(PARSE_BEFORE);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let start = if start == 0 { 0 } else { text[start..offset].find('\n').map_or(start, |i| start + i + 1) };
    let mut end = (offset + PARSE_AFTER).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let end = if end == text.len() { end } else { text[offset..end].rfind('\n').map_or(end, |i| offset + i + 1) };
    (&text[start..end], offset - start)
}

/// Whether and how to complete at `offset` in `text`. `None` in the middle of a line (text other
/// than closing brackets and punctuation follows the cursor).
pub fn decide(language: Language, text: &str, offset: usize) -> Option<Mode> {
    let cursor = Cursor::new(text, offset);
    if cursor.line_after.trim().chars().any(|c| !CLOSERS.contains(&c)) {
        return None;
    }
    if !cursor.line_before.trim().is_empty() {
        return Some(Mode::SingleLine);
    }
    let (text, offset) = parse_window(text, offset);
    let Some(tree) = chunk::parse(language, text) else {
        return Some(Mode::MultiLine);
    };
    let mut node = tree.root_node().descendant_for_byte_range(offset, offset);
    while let Some(n) = node {
        let kind = n.kind();
        if SINGLE_LINE_KINDS.contains(&kind) && n.start_byte() < offset && offset < n.end_byte() {
            return Some(Mode::SingleLine);
        }
        if is_block(kind) {
            return Some(Mode::MultiLine);
        }
        node = n.parent();
    }
    Some(Mode::MultiLine)
}

/// Lines of the prefix looked at to learn the file's indentation unit.
const INDENT_LINES: usize = 200;

/// The document as it would be after the user accepts `shown` (one line, completing the cursor's
/// line) and presses Enter, with the cursor on the new line where an editor's auto-indent puts it:
/// the line's indentation, one unit deeper after an opening bracket (or a colon in Python). The
/// text and the new cursor offset; `None` when `shown` is not one line, or text follows the cursor
/// on its line (accepting would not leave the cursor at the line's end).
pub fn after_accepting(language: Language, text: &str, offset: usize, shown: &str) -> Option<(String, usize)> {
    if shown.trim().is_empty() || shown.contains('\n') {
        return None;
    }
    let cursor = Cursor::new(text, offset);
    if !cursor.line_after.trim().is_empty() {
        return None;
    }
    let mut indent = cursor.indent().to_owned();
    let line = format!("{}{shown}", cursor.line_before);
    let line = line.trim_end();
    let opens = line.ends_with(['{', '(', '['])
        || (language == Language::Python && line.ends_with(':') && !line.trim_start().starts_with('#'));
    if opens {
        indent.push_str(&indent_unit(&text[..offset]));
    }
    // The line break the editor inserts is the document's own.
    let newline = if cursor.suffix.starts_with("\r\n") || (!cursor.suffix.starts_with('\n') && text.contains("\r\n")) { "\r\n" } else { "\n" };
    let next = format!("{}{shown}{newline}{indent}", &text[..offset]);
    let at = next.len();
    Some((next + &text[offset..], at))
}

/// The file's indentation unit, learnt from the prefix's last lines: a tab if indentation uses
/// tabs, else the smallest step between the indentations of consecutive lines (4 when unknown).
fn indent_unit(prefix: &str) -> String {
    // Comment continuation lines (` * …` in a `/** */` block) are indented by one space: not a step.
    let lines: Vec<&str> = prefix
        .lines()
        .rev()
        .take(INDENT_LINES)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('*') && !l.trim_start().starts_with("//") && !l.trim_start().starts_with('#'))
        .collect();
    if lines.iter().any(|l| l.starts_with('\t')) {
        return "\t".into();
    }
    let widths: Vec<usize> = lines.iter().map(|l| l.len() - l.trim_start_matches(' ').len()).collect();
    let step = widths.windows(2).filter_map(|w| w[0].checked_sub(w[1]).filter(|d| *d > 0)).min().unwrap_or(4);
    " ".repeat(step.min(8))
}

/// Limits of a completion's shape.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_lines: usize,
}

/// Cuts generated text where the completion should end. Returns the kept text and whether the
/// cut happened (generation can stop).
pub fn cut(mode: Mode, raw: &str, cursor: &Cursor<'_>, limits: Limits) -> (String, bool) {
    // A model caught in a loop (`a, a, a, a, …`) is stopped after the first copy: the rest would
    // cost decoding time and be deleted by the user anyway.
    if let Some(end) = repetition_start(raw) {
        let (kept, _) = cut(mode, &raw[..end], cursor, limits);
        return (kept, true);
    }
    match mode {
        Mode::SingleLine => {
            // A completion that starts by breaking the line is not a one-line completion.
            match raw.find('\n') {
                Some(i) => (raw[..i].trim_end_matches('\r').to_owned(), true),
                None => (raw.to_owned(), false),
            }
        }
        Mode::MultiLine => {
            let base = cursor.indent().len();
            let first_suffix_line = cursor.suffix.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            let mut kept = String::new();
            let mut lines = 0;
            let mut rest = raw;
            // Only complete lines are judged; the last, partial line waits for more text.
            while let Some(nl) = rest.find('\n') {
                let line = &rest[..nl];
                let judged_line = line.trim_end_matches('\r');
                let is_first = lines == 0;
                if !is_first && !judged_line.trim().is_empty() {
                    let indent = judged_line.len() - judged_line.trim_start().len();
                    if indent < base || (judged_line.trim() == first_suffix_line && !first_suffix_line.is_empty()) {
                        return (kept.trim_end().to_owned(), true);
                    }
                }
                kept.push_str(&rest[..=nl]);
                rest = &rest[nl + 1..];
                lines += 1;
                if lines >= limits.max_lines {
                    return (kept.trim_end().to_owned(), true);
                }
            }
            // The partial last line counts if it already closes the block.
            if lines > 0 && !rest.trim().is_empty() {
                let indent = rest.len() - rest.trim_start().len();
                if indent < base || rest.trim() == first_suffix_line {
                    return (kept.trim_end().to_owned(), true);
                }
            }
            kept.push_str(rest);
            (kept, false)
        }
    }
}

/// Shortest repeated unit looked for, and how many copies in a row make a loop.
const MIN_LOOP_UNIT: usize = 3;
const LOOP_COPIES: usize = 4;

/// Where a loop at the end of `text` begins to repeat: the end of its first copy, if the text ends
/// with [`LOOP_COPIES`] copies of one unit of at least [`MIN_LOOP_UNIT`] bytes (whitespace-only
/// units, such as blank lines, do not count).
fn repetition_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let longest = bytes.len() / LOOP_COPIES;
    (MIN_LOOP_UNIT..=longest).find_map(|unit| {
        let start = bytes.len() - unit * LOOP_COPIES;
        let first = &bytes[start..start + unit];
        let repeats = (1..LOOP_COPIES).all(|k| &bytes[start + k * unit..start + (k + 1) * unit] == first);
        (repeats && !first.iter().all(u8::is_ascii_whitespace) && text.is_char_boundary(start + unit)).then_some(start + unit)
    })
}

/// Final clean-up of a finished completion: trailing whitespace, closing brackets the rest of the
/// line already has, and trailing lines the suffix already has.
pub fn finish(mode: Mode, text: &str, cursor: &Cursor<'_>) -> String {
    let mut out = text.trim_end().to_owned();
    if mode == Mode::MultiLine {
        out = drop_suffix_lines(&out, cursor.suffix);
    }
    let after = cursor.line_after.trim_start();
    let unmatched = unmatched_closers_at_end(&out);
    if !unmatched.is_empty() {
        // Strip the longest run of the unmatched closers that the line after the cursor repeats.
        let tail = &out[out.len() - unmatched.len()..];
        for start in 0..tail.len() {
            if tail.is_char_boundary(start) && after.starts_with(&tail[start..]) {
                let keep = out.len() - (tail.len() - start);
                out.truncate(keep);
                break;
            }
        }
    }
    // A completion that only repeats what follows the cursor adds nothing.
    if !after.is_empty() && out.trim() == after.trim() {
        out.clear();
    }
    out.trim_end().to_owned()
}

/// `text` up to its first line that is one of the suffix's next lines (after the cursor's) with a
/// word in it (a closing `}` or `});` is every block's, not a copy): what a second start writes
/// once it turns to copying the code that follows. Used only for the second start (see
/// `Completer::complete`), whose first start was that code already.
pub fn before_suffix_lines(text: &str, suffix: &str) -> String {
    let next: Vec<&str> = following_lines(suffix).filter(|l| l.chars().any(char::is_alphanumeric)).take(8).collect();
    let kept: Vec<&str> = text.lines().take_while(|l| !next.contains(&l.trim())).collect();
    kept.join("\n").trim_end().to_owned()
}

/// The lines after the cursor's own, trimmed.
fn following_lines(suffix: &str) -> impl Iterator<Item = &str> {
    suffix.lines().skip(1).map(str::trim)
}

/// Lines at the end of `text` that the suffix starts with (after blank lines), removed.
fn drop_suffix_lines(text: &str, suffix: &str) -> String {
    let suffix_lines: Vec<&str> = following_lines(suffix).filter(|l| !l.is_empty()).take(8).collect();
    let lines: Vec<&str> = text.lines().collect();
    for n in (1..=lines.len().min(suffix_lines.len())).rev() {
        let tail: Vec<&str> = lines[lines.len() - n..].iter().map(|l| l.trim()).collect();
        if tail.iter().all(|l| !l.is_empty()) && tail[..] == suffix_lines[..n] {
            return lines[..lines.len() - n].join("\n").trim_end().to_owned();
        }
    }
    text.to_owned()
}

/// The closing brackets at the end of `text` that close nothing opened in `text` (quotes and
/// string contents are not parsed: a heuristic for code).
fn unmatched_closers_at_end(text: &str) -> &str {
    let mut depth: Vec<char> = Vec::new();
    let mut first_unmatched: Option<usize> = None;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => depth.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if depth.last() == Some(&open) {
                    depth.pop();
                } else if first_unmatched.is_none() {
                    first_unmatched = Some(i);
                }
            }
            _ => {}
        }
    }
    let Some(start) = first_unmatched else { return "" };
    // Only a run of closers (and punctuation) reaching the end counts.
    let tail = &text[start..];
    if tail.chars().all(|c| CLOSERS.contains(&c) || c.is_whitespace()) { tail } else { "" }
}

#[cfg(test)]
mod tests;
