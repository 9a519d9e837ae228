//! Open documents: text in a rope, edits applied in order, positions converted in the negotiated
//! encoding (UTF-8 when the client offers it, else UTF-16).
//!
//! Lines end at `\n`, `\r\n` or `\r`, as in LSP (ropey's `cr_lines`, without `unicode_lines`, so
//! U+2028 or a form feed is not a line break). Positions past the end of a line or the document are
//! clamped, as the protocol asks.

use ropey::Rope;
use tower_lsp_server::ls_types::{Position, Range, TextDocumentContentChangeEvent};

/// How `Position::character` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf16,
}

/// One open document.
#[derive(Debug, Clone)]
pub struct Document {
    rope: Rope,
    pub version: i32,
    pub language_id: String,
    /// Byte offset of the end of the last edit's new text: where the cursor is after typing (or
    /// pasting) it. `None` until the first edit.
    pub edited_at: Option<usize>,
}

impl Document {
    pub fn new(text: &str, version: i32, language_id: impl Into<String>) -> Self {
        Self { rope: Rope::from_str(text), version, language_id: language_id.into(), edited_at: None }
    }

    pub fn text(&self) -> String {
        self.rope.to_string()
    }

    /// Whether `position` names a line of the document (a character past the line's end is
    /// clamped, as LSP says; a line past the last one is not a place to complete).
    pub fn has_line(&self, position: Position) -> bool {
        (position.line as usize) < self.rope.len_lines()
    }

    pub fn len_bytes(&self) -> usize {
        self.rope.len_bytes()
    }

    /// Applies one `didChange` notification. Changes with a version not newer than the current one
    /// are stale (a replay) and rejected, leaving the document as it was.
    pub fn apply(&mut self, version: i32, changes: &[TextDocumentContentChangeEvent], encoding: Encoding) -> Result<(), String> {
        if version <= self.version {
            return Err(format!("stale change: version {version} after {}", self.version));
        }
        for change in changes {
            match change.range {
                None => {
                    let new = Rope::from_str(&change.text);
                    self.edited_at = Some(end_of_difference(&self.rope, &new));
                    self.rope = new;
                }
                Some(range) => {
                    let start = self.offset(range.start, encoding);
                    let end = self.offset(range.end, encoding).max(start);
                    self.edited_at = Some(start + change.text.len());
                    let (start, end) = (self.rope.byte_to_char(start), self.rope.byte_to_char(end));
                    self.rope.remove(start..end);
                    self.rope.insert(start, &change.text);
                }
            }
        }
        self.version = version;
        Ok(())
    }

    /// The line (from 0) of a byte offset (clamped to the document).
    pub fn line_of(&self, byte: usize) -> usize {
        self.rope.byte_to_line(byte.min(self.rope.len_bytes()))
    }

    /// Byte offset of a position (clamped to the line's end and the document's end).
    pub fn offset(&self, position: Position, encoding: Encoding) -> usize {
        let line = position.line as usize;
        if line >= self.rope.len_lines() {
            return self.rope.len_bytes();
        }
        let line_start = self.rope.line_to_byte(line);
        let content_end = line_start + line_content_len(&self.rope, line);
        match encoding {
            Encoding::Utf8 => {
                let target = (line_start + position.character as usize).min(content_end);
                // Round down to a character boundary.
                self.rope.char_to_byte(self.rope.byte_to_char(target))
            }
            Encoding::Utf16 => {
                let first = self.rope.char_to_utf16_cu(self.rope.byte_to_char(line_start));
                let last = self.rope.char_to_utf16_cu(self.rope.byte_to_char(content_end));
                let target = (first + position.character as usize).min(last);
                self.rope.char_to_byte(self.rope.utf16_cu_to_char(target))
            }
        }
    }

    /// Position of a byte offset (clamped to the document).
    pub fn position(&self, offset: usize, encoding: Encoding) -> Position {
        let offset = offset.min(self.rope.len_bytes());
        let line = self.rope.byte_to_line(offset);
        let line_start = self.rope.line_to_byte(line);
        let character = match encoding {
            Encoding::Utf8 => offset - line_start,
            Encoding::Utf16 => {
                self.rope.char_to_utf16_cu(self.rope.byte_to_char(offset)) - self.rope.char_to_utf16_cu(self.rope.byte_to_char(line_start))
            }
        };
        Position::new(line as u32, character as u32)
    }

    /// The text of a range.
    pub fn slice(&self, range: Range, encoding: Encoding) -> String {
        let start = self.offset(range.start, encoding);
        let end = self.offset(range.end, encoding).max(start);
        self.rope.byte_slice(start..end).to_string()
    }
}

/// Bytes of a line without its line ending.
fn line_content_len(rope: &Rope, line: usize) -> usize {
    let slice = rope.line(line);
    let mut len = slice.len_bytes();
    if len > 0 && slice.byte(len - 1) == b'\n' {
        len -= 1;
    }
    if len > 0 && slice.byte(len - 1) == b'\r' {
        len -= 1;
    }
    len
}

/// Where the new text stops differing from the old one, from the end: the byte offset in `new`
/// after the replaced part, as a whole-document change (no range) hides it. Typing `x` before
/// `rest` gives the offset after the `x`. Rounded down to a character boundary.
fn end_of_difference(old: &Rope, new: &Rope) -> usize {
    let common_prefix = old.bytes().zip(new.bytes()).take_while(|(a, b)| a == b).count();
    let most = old.len_bytes().min(new.len_bytes()) - common_prefix;
    let common_suffix = old.bytes_at(old.len_bytes()).reversed().zip(new.bytes_at(new.len_bytes()).reversed()).take(most).take_while(|(a, b)| a == b).count();
    let end = new.len_bytes() - common_suffix;
    new.char_to_byte(new.byte_to_char(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(sl: u32, sc: u32, el: u32, ec: u32, text: &str) -> TextDocumentContentChangeEvent {
        TextDocumentContentChangeEvent {
            range: Some(Range::new(Position::new(sl, sc), Position::new(el, ec))),
            range_length: None,
            text: text.into(),
        }
    }

    #[test]
    fn utf16_positions_count_surrogate_pairs() {
        // "😀" is 4 bytes, 2 UTF-16 units, 1 char.
        let mut doc = Document::new("let s = \"😀\";\nx\n", 1, "rust");
        assert_eq!(doc.offset(Position::new(0, 11), Encoding::Utf16), 13);
        assert_eq!(doc.position(13, Encoding::Utf16), Position::new(0, 11));
        doc.apply(2, &[edit(0, 11, 0, 11, "!")], Encoding::Utf16).unwrap();
        assert_eq!(doc.text(), "let s = \"😀!\";\nx\n");
    }

    #[test]
    fn utf8_positions_count_bytes() {
        let mut doc = Document::new("é = 1\n", 1, "python");
        doc.apply(2, &[edit(0, 2, 0, 2, "x")], Encoding::Utf8).unwrap();
        assert_eq!(doc.text(), "éx = 1\n");
        // Inside a character: rounded down.
        assert_eq!(doc.offset(Position::new(0, 1), Encoding::Utf8), 0);
    }

    #[test]
    fn positions_past_the_end_are_clamped() {
        let doc = Document::new("ab\r\ncd", 1, "text");
        assert_eq!(doc.offset(Position::new(0, 99), Encoding::Utf16), 2);
        assert_eq!(doc.offset(Position::new(1, 1), Encoding::Utf16), 5);
        assert_eq!(doc.offset(Position::new(7, 0), Encoding::Utf8), 6);
    }

    #[test]
    fn only_lsp_line_breaks_count() {
        let doc = Document::new("a\u{2028}b\u{c}c\rd\n", 1, "text");
        assert_eq!(doc.offset(Position::new(1, 0), Encoding::Utf8), "a\u{2028}b\u{c}c\r".len());
    }

    #[test]
    fn edits_apply_in_order_and_stale_versions_are_rejected() {
        let mut doc = Document::new("fn main() {}\n", 1, "rust");
        let changes = [edit(0, 11, 0, 11, "\n    let x = 1;\n"), edit(1, 12, 1, 13, "2")];
        doc.apply(2, &changes, Encoding::Utf16).unwrap();
        assert_eq!(doc.text(), "fn main() {\n    let x = 2;\n}\n");
        assert!(doc.apply(2, &[edit(0, 0, 0, 0, "x")], Encoding::Utf16).is_err());
        assert_eq!(doc.version, 2);
        // Versions may jump (Neovim's changedtick).
        doc.apply(9, &[TextDocumentContentChangeEvent { range: None, range_length: None, text: "new".into() }], Encoding::Utf16).unwrap();
        assert_eq!(doc.text(), "new");
    }

    #[test]
    fn reversed_ranges_do_not_panic() {
        let mut doc = Document::new("abc", 1, "text");
        doc.apply(2, &[edit(0, 2, 0, 1, "X")], Encoding::Utf8).unwrap();
        assert_eq!(doc.text(), "abXc");
    }

    #[test]
    fn the_last_edit_is_where_its_new_text_ends() {
        let change = |range: Option<Range>, text: &str| TextDocumentContentChangeEvent { range, range_length: None, text: text.into() };
        let mut doc = Document::new("fn a() {\n    \n}\n", 1, "rust");
        assert_eq!(doc.edited_at, None);
        // A whole-document change (no range): found by comparing the texts.
        doc.apply(2, &[change(None, "fn a() {\n    le\n}\n")], Encoding::Utf8).unwrap();
        assert_eq!(doc.edited_at, Some("fn a() {\n    le".len()));
        // Typing the letter the cursor is after again.
        doc.apply(3, &[change(None, "fn a() {\n    lee\n}\n")], Encoding::Utf8).unwrap();
        assert_eq!(doc.edited_at, Some("fn a() {\n    lee".len()));
        // A ranged change: its start plus its text.
        doc.apply(4, &[change(Some(Range::new(Position::new(1, 7), Position::new(1, 7))), "t é")], Encoding::Utf8).unwrap();
        assert_eq!(doc.text(), "fn a() {\n    leet é\n}\n");
        assert_eq!(doc.edited_at, Some("fn a() {\n    leet é".len()));
        // Deleting: the cursor is where the deleted text was.
        doc.apply(5, &[change(None, "fn a() {\n    l\n}\n")], Encoding::Utf8).unwrap();
        assert_eq!(doc.edited_at, Some("fn a() {\n    l".len()));
    }
}
