//! Prompt building: fill-in-the-middle templates per model family and answer prompts for `ask`.
//!
//! Everything here is pure: retrieval collects [`Snippet`]s, then [`fim`] or [`ask`] assembles the
//! text within a token budget. Budgets use [`estimate_tokens`] (bytes / 3.5, the usual ratio of code
//! BPE vocabularies) so building a prompt never touches a tokenizer; the engine reports the real
//! prompt size afterwards.

pub mod family;

pub use family::{Family, Layout};

use serde::Serialize;

/// Bytes per token assumed by [`estimate_tokens`].
pub const BYTES_PER_TOKEN: f64 = 3.5;

/// The longest partial word token healing takes back.
const MAX_HEALED_BYTES: usize = 32;

/// Where the word the prefix ends inside starts: the trailing run of identifier characters
/// (ASCII letters, digits, `_`), if there is one of at most 32 bytes; else the prefix's length.
/// Token healing sends the prompt without it.
pub fn partial_word_start(prefix: &str) -> usize {
    let word = prefix.bytes().rev().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    if word > MAX_HEALED_BYTES { prefix.len() } else { prefix.len() - word }
}

/// Share of the budget the prefix may take before snippets are considered.
const PREFIX_SHARE: f64 = 0.5;
/// Share of the budget the suffix may take.
const SUFFIX_SHARE: f64 = 0.15;
/// The suffix of a completion prompt at most, by default (`completion.suffix_tokens`): 15 % of
/// the default budget. The prefix-suffix-middle layout puts the suffix after the text being typed;
/// the engine moves its cache entries past the typed text instead of computing them again
/// (`generate::reuse`), so its length is not paid per keystroke. Measured on 40 tokio tasks: 57.1 %
/// edit similarity with 230, 51.8 % with 80 (README, "Ghost text while typing").
pub const MAX_SUFFIX_TOKENS: usize = 230;
/// Shares of a new place's first-request budget (`completion.first_prompt_tokens`) for the prefix
/// and the suffix ([`Budget::first_request`]); the rest is new context ([`first_context`]).
const FIRST_PREFIX_SHARE: f64 = 0.375;
const FIRST_SUFFIX_SHARE: f64 = 0.094;
/// The prefix is cut at line numbers that are multiples of this (see [`anchored_tail`]).
pub const PREFIX_ANCHOR_LINES: usize = 16;

/// An estimate of a text's size in tokens.
pub fn estimate_tokens(text: &str) -> usize {
    (text.len() as f64 / BYTES_PER_TOKEN).ceil() as usize
}

/// Where a snippet came from (shown in logs and `--json`, used to order and dedupe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A definition of an identifier near the cursor.
    Definition,
    /// The signature of a definition the file imports (its body left out: the text is not the
    /// file's lines verbatim).
    Signature,
    /// A window of another open buffer similar to the code at the cursor.
    OpenBuffer,
    /// A hybrid search hit from the index.
    Retrieved,
}

/// A piece of code from elsewhere in the workspace, with its citation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snippet {
    pub path: String,
    /// 1-based, inclusive.
    pub start_line: u32,
    pub end_line: u32,
    pub text: String,
    pub source: Source,
}

/// What a fill-in-the-middle prompt is built from.
#[derive(Debug, Clone)]
pub struct FimInput<'a> {
    /// The workspace's directory name (Qwen's and StarCoder2's `<repo_name>`).
    pub repo: &'a str,
    /// Workspace-relative path of the file being edited.
    pub path: &'a str,
    pub prefix: &'a str,
    pub suffix: &'a str,
    /// Best first.
    pub snippets: &'a [Snippet],
}

/// A built prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    /// Generation stops before any of these.
    pub stop: Vec<String>,
    /// Indexes into the input snippets that made it into the prompt.
    pub snippets_used: Vec<usize>,
    /// Bytes of prefix and suffix kept (the rest did not fit).
    pub prefix_bytes: usize,
    pub suffix_bytes: usize,
}

/// Builds a fill-in-the-middle prompt of about `budget` tokens.
///
/// The prefix keeps its last lines and the suffix its first lines; snippets fill what is left, best
/// first, and are written furthest-first so the best one sits closest to the cursor.
pub fn fim(family: Family, input: &FimInput<'_>, budget: usize) -> Prompt {
    let prefix = anchored_tail(input.prefix, (budget as f64 * PREFIX_SHARE) as usize);
    let suffix = head_lines(input.suffix, (budget as f64 * SUFFIX_SHARE) as usize);
    let mut left = budget.saturating_sub(estimate_tokens(prefix) + estimate_tokens(suffix) + 16);
    let mut used = Vec::new();
    for (i, s) in input.snippets.iter().enumerate() {
        let cost = estimate_tokens(&s.text) + estimate_tokens(&s.path) + 4;
        if cost <= left {
            left -= cost;
            used.push(i);
        }
    }
    let chosen: Vec<&Snippet> = used.iter().rev().map(|&i| &input.snippets[i]).collect();
    let text = family.render(input.repo, input.path, &chosen, prefix, suffix);
    Prompt {
        text,
        stop: family.stop().iter().map(|s| (*s).to_owned()).collect(),
        snippets_used: used,
        prefix_bytes: prefix.len(),
        suffix_bytes: suffix.len(),
    }
}

/// How a completion prompt's token budget is shared, fixed in advance so that the context part
/// does not grow or shrink with the prefix (which would change the prompt's start as one types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub prefix: usize,
    pub suffix: usize,
    /// What the context ring may hold.
    pub context: usize,
}

impl Budget {
    /// Markers, the repository name and the file's path.
    const OVERHEAD: usize = 24;

    /// Half the total for the prefix, 15 % (at most [`MAX_SUFFIX_TOKENS`]) for the suffix, the
    /// rest for context.
    pub fn split(total: usize) -> Self {
        Self::with_suffix(total, MAX_SUFFIX_TOKENS)
    }

    /// As [`Budget::split`], with the suffix capped at `max_suffix` tokens instead.
    pub fn with_suffix(total: usize, max_suffix: usize) -> Self {
        let prefix = (total as f64 * PREFIX_SHARE) as usize;
        let suffix = ((total as f64 * SUFFIX_SHARE) as usize).min(max_suffix);
        Self { prefix, suffix, context: total.saturating_sub(prefix + suffix + Self::OVERHEAD) }
    }

    /// The context's room at a place: what the prefix and suffix there leave of `total` (a cursor
    /// near the start of a file, or a short file, leaves more), never less than this budget's
    /// fixed share. Set once per place, so it does not move with typing: typing on at that place
    /// grows the prefix towards its window, so the prompt can outgrow `total` by up to the prefix
    /// share (the engine's context window still bounds it, keeping the end).
    pub fn context_at(self, total: usize, prefix: &str, suffix: &str) -> usize {
        let local = estimate_tokens(anchored_tail(prefix, self.prefix)) + estimate_tokens(head_lines(suffix, self.suffix));
        total.saturating_sub(local + Self::OVERHEAD).max(self.context)
    }

    /// The budget of the first requests at a new place, before its full prompt is cached, out of
    /// `first` tokens (`completion.first_prompt_tokens`): a short prefix window and suffix (what a
    /// first ghost text can afford to compute on a CPU). The ring keeps its budget: what it held
    /// before is cached already; what a new place adds is [`first_context`].
    pub fn first_request(self, first: usize) -> Self {
        let prefix = (first as f64 * FIRST_PREFIX_SHARE) as usize;
        let suffix = (first as f64 * FIRST_SUFFIX_SHARE) as usize;
        Self { prefix: self.prefix.min(prefix), suffix: self.suffix.min(suffix), context: self.context }
    }
}

/// The context a new place's first request adds to the ring, out of `first` tokens
/// (`completion.first_prompt_tokens`): what its prefix and suffix shares and the markers leave.
pub fn first_context(first: usize) -> usize {
    let shares = (first as f64 * (FIRST_PREFIX_SHARE + FIRST_SUFFIX_SHARE)) as usize;
    first.saturating_sub(shares + Budget::OVERHEAD)
}

/// Builds a fill-in-the-middle prompt whose context is the ring's snippets, all of them, in the
/// order given (oldest first: the ring already keeps within `budget.context`). The prefix keeps its
/// last lines from an anchored line ([`anchored_tail`]), the suffix its first lines.
pub fn fim_stable(family: Family, layout: Layout, input: &FimInput<'_>, budget: Budget) -> Prompt {
    let prefix = anchored_tail(input.prefix, budget.prefix);
    let suffix = head_lines(input.suffix, budget.suffix);
    let chosen: Vec<&Snippet> = input.snippets.iter().collect();
    let text = family.render_with(layout, input.repo, input.path, &chosen, prefix, suffix);
    Prompt {
        text,
        stop: family.stop().iter().map(|s| (*s).to_owned()).collect(),
        snippets_used: (0..input.snippets.len()).collect(),
        prefix_bytes: prefix.len(),
        suffix_bytes: suffix.len(),
    }
}

/// The longest tail of `text` made of whole lines (or, if one line is already too long, its tail
/// cut at a char boundary) within `tokens`.
pub fn tail_lines(text: &str, tokens: usize) -> &str {
    let max = (tokens as f64 * BYTES_PER_TOKEN) as usize;
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    match text[start..].find('\n') {
        Some(nl) if start + nl + 1 < text.len() => &text[start + nl + 1..],
        _ => &text[start..],
    }
}

/// Like [`tail_lines`], but the cut only ever falls on a line whose number is a multiple of
/// [`PREFIX_ANCHOR_LINES`]. While the user types, the prefix grows at its end; a cut that moved
/// with every keystroke would change the start of the prompt each time and defeat the engine's
/// KV-cache reuse. Anchored, the prompt's beginning stays put for that many lines of typing.
pub fn anchored_tail(text: &str, tokens: usize) -> &str {
    let tail = tail_lines(text, tokens);
    let start = text.len() - tail.len();
    if start == 0 {
        return text;
    }
    let line = text[..start].matches('\n').count();
    let skip = (PREFIX_ANCHOR_LINES - line % PREFIX_ANCHOR_LINES) % PREFIX_ANCHOR_LINES;
    let mut at = start;
    for _ in 0..skip {
        match text[at..].find('\n') {
            Some(nl) if at + nl + 1 < text.len() => at += nl + 1,
            _ => break,
        }
    }
    &text[at..]
}

/// The longest head of `text` made of whole lines within `tokens` (or a cut first line).
pub fn head_lines(text: &str, tokens: usize) -> &str {
    let max = (tokens as f64 * BYTES_PER_TOKEN) as usize;
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind('\n') {
        Some(nl) if nl > 0 => &text[..=nl],
        _ => &text[..end],
    }
}

/// Share of an ask prompt's budget the question may take: a pasted file must leave room for the
/// sources that answer it.
const QUESTION_SHARE: usize = 4;

/// The part of `question` an ask prompt of `budget` tokens takes: its first lines, within a
/// quarter of the budget.
pub fn ask_question(question: &str, budget: usize) -> &str {
    head_lines(question, budget / QUESTION_SHARE)
}

/// Builds the chat prompt that answers `question` from numbered sources (best first), within
/// `budget` tokens (the question cut by [`ask_question`]). Returns the prompt and how many sources
/// it holds.
pub fn ask(family: Family, question: &str, sources: &[(String, &str)], budget: usize) -> (String, usize) {
    let question = ask_question(question, budget);
    let mut left = budget.saturating_sub(estimate_tokens(question) + 120);
    let mut context = String::new();
    let mut n = 0;
    for (i, (citation, text)) in sources.iter().enumerate() {
        let block = format!("[{}] {citation}\n```\n{}\n```\n\n", i + 1, text.trim_end());
        let cost = estimate_tokens(&block);
        if cost > left {
            break;
        }
        left -= cost;
        context.push_str(&block);
        n += 1;
    }
    let system = "You answer questions about a code repository using only the numbered sources given. \
                  Cite the sources you use as [1], [2]. If the sources do not answer the question, say so.";
    let user = format!("Sources:\n\n{context}Question: {question}");
    (family.chat(system, &user), n)
}

#[cfg(test)]
mod tests;
