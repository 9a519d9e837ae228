//! Line windows: the chunker for text without a grammar, and for syntax leaves too large to fit.
//!
//! Lines are gathered until the next one would pass the budget; the cut then moves back to the
//! last blank line of the window when that leaves at least `min` bytes, so paragraphs and blocks
//! stay whole. A single line longer than the budget becomes a window of its own.

/// Cuts `text[start..end]` into windows of whole lines, returned as byte ranges.
pub fn windows(text: &str, start: usize, end: usize, max: usize, min: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut win_start = start;
    // Byte offset just after the last blank line seen in the current window.
    let mut last_blank: Option<usize> = None;
    let mut pos = start;
    while pos < end {
        let line_end = text[pos..end].find('\n').map_or(end, |i| pos + i + 1);
        if line_end - win_start > max && pos > win_start {
            let cut = match last_blank {
                Some(b) if b - win_start >= min => b,
                _ => pos,
            };
            out.push((win_start, cut));
            win_start = cut;
            last_blank = None;
            // Re-scan from the cut: lines between a blank-line cut and `pos` start the new window.
            pos = cut;
            continue;
        }
        if text[pos..line_end].trim().is_empty() {
            last_blank = Some(line_end);
        }
        pos = line_end;
    }
    if win_start < end {
        out.push((win_start, end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str, max: usize, min: usize) -> Vec<&str> {
        windows(text, 0, text.len(), max, min).into_iter().map(|(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn windows_cover_the_text_exactly_and_prefer_blank_lines() {
        let text = "alpha one\nalpha two\n\nbeta one\nbeta two\nbeta three\n";
        let parts = cut(text, 30, 10);
        assert_eq!(parts.concat(), text);
        assert_eq!(parts, ["alpha one\nalpha two\n\n", "beta one\nbeta two\nbeta three\n"]);
    }

    #[test]
    fn long_lines_stand_alone_and_empty_text_yields_nothing() {
        let long = "x".repeat(50);
        let text = format!("a\n{long}\nb\n");
        let parts = cut(&text, 20, 5);
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().any(|p| p.trim() == long));
        assert!(cut("", 20, 5).is_empty());
    }

    #[test]
    fn no_trailing_newline_and_crlf() {
        let text = "one\r\ntwo\r\nthree";
        let parts = cut(text, 10, 1);
        assert_eq!(parts.concat(), text);
        assert_eq!(parts, ["one\r\ntwo\r\n", "three"]);
    }
}
