//! Model families and their prompt formats: fill-in-the-middle tokens, repository-level context,
//! stop sequences and chat turns.

use serde::{Deserialize, Serialize};

use super::Snippet;

/// Where the suffix goes in a fill-in-the-middle prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Prefix, suffix, middle: the order FIM models are trained on most.
    #[default]
    Psm,
    /// Suffix, prefix, middle: typing at the cursor changes only the end of the prompt, so every
    /// keystroke reuses the cached suffix (Qwen, StarCoder2 and CodeGemma markers; other families
    /// keep their own order).
    Spm,
}

/// A family of code models sharing one prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Qwen2.5-Coder: `<|fim_prefix|>`, repository-level `<|repo_name|>` / `<|file_sep|>`.
    QwenCoder,
    /// StarCoder2: `<fim_prefix>`, `<repo_name>` / `<file_sep>`.
    StarCoder2,
    /// DeepSeek-Coder: `<｜fim▁begin｜>`, `<｜fim▁hole｜>`, `<｜fim▁end｜>`.
    DeepseekCoder,
    /// Code Llama: `<PRE> … <SUF>… <MID>`.
    CodeLlama,
    /// Codestral (Mistral): `[SUFFIX]…[PREFIX]…`.
    Codestral,
    /// CodeGemma: `<|fim_prefix|>`, files separated by `<|file_separator|>`.
    CodeGemma,
    /// No FIM tokens: context and prefix only, the model continues the text.
    Plain,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::QwenCoder,
        Family::StarCoder2,
        Family::DeepseekCoder,
        Family::CodeLlama,
        Family::Codestral,
        Family::CodeGemma,
        Family::Plain,
    ];

    /// Guesses the family from a model's name or file name: of a path, from its last two
    /// components (the file and the directory holding it), not from the directories above them,
    /// which name the user's folders (a workspace called `qwen-coder-tools`), not the model.
    pub fn detect(model: &str) -> Family {
        let mut tail: Vec<&str> = model.rsplit(['/', '\\']).take(2).collect();
        tail.reverse();
        let m = tail.join("/").to_ascii_lowercase();
        if m.contains("qwen") && m.contains("coder") {
            Family::QwenCoder
        } else if m.contains("starcoder") {
            Family::StarCoder2
        } else if m.contains("deepseek") && m.contains("coder") {
            Family::DeepseekCoder
        } else if m.contains("codellama") || m.contains("code-llama") || m.contains("code_llama") {
            Family::CodeLlama
        } else if m.contains("codestral") {
            Family::Codestral
        } else if m.contains("codegemma") {
            Family::CodeGemma
        } else {
            Family::Plain
        }
    }

    /// Whether the format has a suffix slot (otherwise the model only sees the prefix).
    pub fn has_fim(self) -> bool {
        self != Family::Plain
    }

    /// Renders the prompt. `snippets` come in the order they are written (best last).
    pub fn render(self, repo: &str, path: &str, snippets: &[&Snippet], prefix: &str, suffix: &str) -> String {
        self.render_with(Layout::Psm, repo, path, snippets, prefix, suffix)
    }

    /// Renders the prompt with the suffix where `layout` puts it (for the families that can).
    pub fn render_with(self, layout: Layout, repo: &str, path: &str, snippets: &[&Snippet], prefix: &str, suffix: &str) -> String {
        let mut out = String::new();
        let fim = |out: &mut String, (pre, suf, mid): (&str, &str, &str)| match layout {
            Layout::Psm => out.push_str(&format!("{pre}{prefix}{suf}{suffix}{mid}")),
            Layout::Spm => out.push_str(&format!("{suf}{suffix}{pre}{prefix}{mid}")),
        };
        match self {
            Family::QwenCoder | Family::StarCoder2 => {
                let (repo_tok, sep) = if self == Family::QwenCoder {
                    ("<|repo_name|>", "<|file_sep|>")
                } else {
                    ("<repo_name>", "<file_sep>")
                };
                let (pre, suf, mid) = self.fim_tokens();
                if !snippets.is_empty() {
                    out.push_str(&format!("{repo_tok}{repo}\n"));
                    for s in snippets {
                        out.push_str(&format!("{sep}{}\n{}\n", s.path, s.text.trim_end_matches('\n')));
                    }
                    out.push_str(&format!("{sep}{path}\n"));
                }
                fim(&mut out, (pre, suf, mid));
            }
            Family::CodeGemma => {
                for s in snippets {
                    out.push_str(&format!("<|file_separator|>{}\n{}\n", s.path, s.text.trim_end_matches('\n')));
                }
                if !snippets.is_empty() {
                    out.push_str(&format!("<|file_separator|>{path}\n"));
                }
                fim(&mut out, self.fim_tokens());
            }
            Family::DeepseekCoder | Family::CodeLlama => {
                let (pre, suf, mid) = self.fim_tokens();
                let context = commented_context(path, snippets);
                out.push_str(&format!("{pre}{context}{prefix}{suf}{suffix}{mid}"));
            }
            Family::Codestral => {
                let context = commented_context(path, snippets);
                out.push_str(&format!("[SUFFIX]{suffix}[PREFIX]{context}{prefix}"));
            }
            Family::Plain => {
                out.push_str(&commented_context(path, snippets));
                out.push_str(prefix);
            }
        }
        out
    }

    /// Prefix, suffix and middle markers (empty for formats without them).
    fn fim_tokens(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::QwenCoder | Family::CodeGemma => ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
            Family::StarCoder2 => ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
            Family::DeepseekCoder => ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
            Family::CodeLlama => ("<PRE> ", " <SUF>", " <MID>"),
            Family::Codestral | Family::Plain => ("", "", ""),
        }
    }

    /// Text that ends a completion: end-of-text and the format's own markers.
    pub fn stop(self) -> &'static [&'static str] {
        match self {
            Family::QwenCoder => &["<|endoftext|>", "<|file_sep|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|im_end|>"],
            Family::StarCoder2 => &["<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<repo_name>"],
            Family::DeepseekCoder => &["<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|EOT|>"],
            Family::CodeLlama => &["<EOT>", "</s>", "<PRE>", "<SUF>", "<MID>"],
            Family::Codestral => &["</s>", "[SUFFIX]", "[PREFIX]"],
            Family::CodeGemma => &["<|file_separator|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<eos>"],
            Family::Plain => &["<|endoftext|>", "<|im_end|>", "</s>"],
        }
    }

    /// A single-turn chat prompt in the family's instruction format.
    pub fn chat(self, system: &str, user: &str) -> String {
        match self {
            Family::DeepseekCoder => format!("{system}\n### Instruction:\n{user}\n### Response:\n"),
            Family::CodeLlama => format!("<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"),
            Family::Codestral => format!("<s>[INST] {system}\n\n{user} [/INST]"),
            Family::CodeGemma => format!("<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n"),
            Family::StarCoder2 => format!("{system}\n\n### Instruction\n{user}\n\n### Response\n"),
            // Qwen and most small instruct models (SmolLM2 included) speak ChatML.
            Family::QwenCoder | Family::Plain => {
                format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
            }
        }
    }

    /// Text that ends a chat answer.
    pub fn chat_stop(self) -> &'static [&'static str] {
        match self {
            Family::DeepseekCoder => &["<|EOT|>", "<｜end▁of▁sentence｜>", "### Instruction"],
            Family::CodeLlama | Family::Codestral => &["</s>", "[INST]"],
            Family::CodeGemma => &["<end_of_turn>", "<eos>"],
            Family::StarCoder2 => &["<|endoftext|>", "### Instruction"],
            Family::QwenCoder | Family::Plain => &["<|im_end|>", "<|endoftext|>", "<|im_start|>"],
        }
    }
}

/// Snippets as comments naming their files, for formats without a multi-file syntax.
fn commented_context(path: &str, snippets: &[&Snippet]) -> String {
    let comment = line_comment(path);
    let mut out = String::new();
    for s in snippets {
        out.push_str(&format!("{comment} {}\n", s.path));
        for line in s.text.trim_end_matches('\n').lines() {
            if line.is_empty() {
                out.push_str(&format!("{comment}\n"));
            } else {
                out.push_str(&format!("{comment} {line}\n"));
            }
        }
        out.push('\n');
    }
    if !snippets.is_empty() {
        out.push_str(&format!("{comment} {path}\n"));
    }
    out
}

/// The line-comment marker of a file's language.
pub fn line_comment(path: &str) -> &'static str {
    let ext = std::path::Path::new(path).extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "py" | "pyi" | "rb" | "sh" | "bash" | "zsh" | "toml" | "yaml" | "yml" | "r" | "pl" | "ex" | "exs" | "nix" | "cmake" => "#",
        "lua" | "sql" | "hs" | "elm" => "--",
        "lisp" | "clj" | "el" | "scm" => ";",
        "vim" => "\"",
        _ => "//",
    }
}
