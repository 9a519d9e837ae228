//! LSP values made from kenning's: completion items, ranges, command results (pure).

use std::path::Path;

use tower_lsp_server::ls_types::*;

use super::ext::{AskResult, AskSource};
use crate::ask::Answer;

/// Ghost text: `text` replacing `range` (the cursor, or the selected menu item's range).
pub fn inline_item(text: String, range: Range) -> InlineCompletionItem {
    InlineCompletionItem { insert_text: text, filter_text: None, range: Some(range), command: None, insert_text_format: Some(InsertTextFormat::PLAIN_TEXT) }
}

/// A completion-menu item (for clients without ghost text) that replaces `word` — the word before
/// the cursor, over `range` — with that word plus `completion`, so clients filtering by the typed
/// word keep it. The label is the first line (with `…` when there are more).
pub fn completion_item(language_id: &str, word: &str, completion: &str, range: Range) -> CompletionItem {
    let new_text = format!("{word}{completion}");
    let first_line = new_text.lines().next().unwrap_or_default().trim().to_owned();
    let multi = completion.contains('\n');
    CompletionItem {
        label: if multi { format!("{first_line} …") } else { first_line.clone() },
        kind: Some(CompletionItemKind::SNIPPET),
        detail: Some("kenning".into()),
        documentation: Some(Documentation::MarkupContent(MarkupContent {
            kind: MarkupKind::Markdown,
            value: format!("```{language_id}\n{new_text}\n```"),
        })),
        sort_text: Some("0".into()),
        filter_text: Some(first_line),
        preselect: Some(true),
        insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
        text_edit: Some(CompletionTextEdit::Edit(TextEdit { range, new_text })),
        ..CompletionItem::default()
    }
}

/// Lines `start..=end` (1-based) as an LSP range: from the first line's start to the line after.
pub fn lines_range(start: u32, end: u32) -> Range {
    Range::new(Position::new(start.saturating_sub(1), 0), Position::new(end, 0))
}

/// `kenning.ask`'s result for `answer`, its sources located under `root`.
pub fn ask_result(answer: &Answer, root: &Path) -> AskResult {
    let sources = answer
        .sources
        .iter()
        .map(|s| AskSource {
            number: s.number,
            path: s.citation.path.clone(),
            start_line: s.citation.start_line,
            end_line: s.citation.end_line,
            symbol: s.symbol.clone(),
            cited: s.cited,
            uri: Uri::from_file_path(root.join(&s.citation.path)).map(|u| u.as_str().to_owned()),
            range: lines_range(s.citation.start_line, s.citation.end_line),
        })
        .collect();
    AskResult {
        question: answer.question.clone(),
        answer: answer.text.clone(),
        rendered: answer.render(),
        extractive: answer.extractive,
        model: answer.model.clone(),
        sources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_completion_is_labelled_by_its_first_line_and_keeps_the_typed_word() {
        let range = Range::new(Position::new(1, 4), Position::new(1, 7));
        let item = completion_item("rust", "let", " x = 1;\nlet y = 2;", range);
        assert_eq!(item.label, "let x = 1; …");
        assert_eq!(item.filter_text.as_deref(), Some("let x = 1;"));
        let Some(CompletionTextEdit::Edit(edit)) = item.text_edit else { panic!("an edit") };
        assert_eq!((edit.range, edit.new_text.as_str()), (range, "let x = 1;\nlet y = 2;"));
        assert_eq!(completion_item("rust", "", "a()", range).label, "a()");
    }

    #[test]
    fn source_lines_become_a_zero_based_range_ending_at_the_next_line() {
        assert_eq!(lines_range(3, 6), Range::new(Position::new(2, 0), Position::new(6, 0)));
        assert_eq!(lines_range(0, 0), Range::new(Position::new(0, 0), Position::new(0, 0)));
    }
}
