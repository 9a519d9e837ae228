//! Training data in `mlx_lm.lora`'s layout: a directory with `train.jsonl`, `valid.jsonl` and
//! `test.jsonl`, one object per line: `{"text": ...}` or `{"prompt": ..., "completion": ...}`.
//! Each becomes one example of token ids, ending with the end-of-sequence token. The loss covers a
//! text whole, except in a fill-in-the-middle example (its text holds the family's middle token),
//! where it covers only what follows that token; and of a prompt and its completion it covers only
//! the completion (each tokenized on its own, as a prompt is when a model completes it).

use std::path::{Path, PathBuf};

/// One line of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// `{"text": ...}`.
    Whole(String),
    /// `{"prompt": ..., "completion": ...}`: the loss covers the completion only.
    Completion { prompt: String, completion: String },
}

impl Text {
    pub fn whole(text: impl Into<String>) -> Self {
        Text::Whole(text.into())
    }
}

/// One tokenized example; the loss covers the tokens predicted at positions `offset..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub offset: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
}

/// The texts of one split (`train`, `valid`, `test`); an absent file is `None`.
pub fn read_split(dir: &Path, split: &str) -> Result<Option<Vec<Text>>, DataError> {
    let path = dir.join(format!("{split}.jsonl"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataError::File { path, message: e.to_string() }),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_error = |message: String| DataError::Line { path: path.clone(), line: i + 1, message };
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| line_error(e.to_string()))?;
        let field = |name: &str| value.get(name).and_then(|t| t.as_str());
        match (field("text"), field("prompt"), field("completion")) {
            (Some(t), None, None) => out.push(Text::whole(t)),
            (None, Some(prompt), Some(completion)) => out.push(Text::Completion { prompt: prompt.to_owned(), completion: completion.to_owned() }),
            _ => {
                return Err(line_error(
                    "expected an object with a \"text\" string, or \"prompt\" and \"completion\" strings (kenning dataset \
                     writes these; chat data is not supported yet)"
                        .into(),
                ));
            }
        }
    }
    Ok(Some(out))
}

/// Tokenizes texts into examples: `encode` turns text into ids (special tokens recognized),
/// `eos` is appended when missing, examples are cut to `max_len` tokens, and `middle` (the FIM
/// middle token, when the model has one) starts the loss of a whole text after its first
/// occurrence; a completion's loss starts at its first token.
pub fn tokenize(
    texts: &[Text],
    mut encode: impl FnMut(&str) -> Result<Vec<u32>, String>,
    eos: u32,
    middle: Option<u32>,
    max_len: usize,
) -> Result<(Vec<Example>, usize), String> {
    let mut truncated = 0;
    let mut out = Vec::with_capacity(texts.len());
    for text in texts {
        let (mut tokens, offset) = match text {
            Text::Whole(text) => {
                let tokens = encode(text)?;
                let offset = middle.and_then(|m| tokens.iter().position(|&t| t == m)).unwrap_or(0);
                (tokens, offset)
            }
            Text::Completion { prompt, completion } => {
                let mut tokens = encode(prompt)?;
                // The position whose next token is the completion's first.
                let offset = tokens.len().saturating_sub(1);
                tokens.extend(encode(completion)?);
                (tokens, offset)
            }
        };
        if tokens.last() != Some(&eos) {
            tokens.push(eos);
        }
        if tokens.len() > max_len {
            tokens.truncate(max_len);
            truncated += 1;
        }
        // Too short to predict anything (or the middle was cut away): nothing to learn from.
        if tokens.len() < 2 || offset + 1 >= tokens.len() {
            continue;
        }
        out.push(Example { tokens, offset });
    }
    Ok((out, truncated))
}

/// A padded batch: `inputs`/`targets` are `[batch, len]` row-major, `mask` is 1.0 where a target
/// counts toward the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    /// Targets counted by the mask.
    pub tokens: usize,
}

/// Groups examples into batches of similar length (sorted by length, as mlx_lm does, so padding
/// stays small). Each batch is padded to its longest example.
pub fn batches(examples: &[Example], batch_size: usize) -> Vec<Batch> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].tokens.len());
    order.chunks(batch_size.max(1)).map(|chunk| make_batch(chunk.iter().map(|&i| &examples[i]))).collect()
}

/// `n` of `items` spread evenly from the first to the last (all of them when `n` is 0 or not
/// fewer): a sample of batches sorted by length that covers every length, not only the shortest.
pub fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    if n == 0 || n >= items.len() {
        return items.to_vec();
    }
    if n == 1 {
        return vec![items[items.len() / 2].clone()];
    }
    (0..n).map(|i| items[i * (items.len() - 1) / (n - 1)].clone()).collect()
}

fn make_batch<'a>(examples: impl Iterator<Item = &'a Example> + Clone) -> Batch {
    let batch = examples.clone().count();
    let len = examples.clone().map(|e| e.tokens.len() - 1).max().unwrap_or(0);
    let (mut inputs, mut targets, mut mask) = (vec![0; batch * len], vec![0; batch * len], vec![0.0; batch * len]);
    let mut tokens = 0;
    for (row, e) in examples.enumerate() {
        for (i, pair) in e.tokens.windows(2).enumerate() {
            inputs[row * len + i] = pair[0];
            targets[row * len + i] = pair[1];
            if i >= e.offset {
                mask[row * len + i] = 1.0;
                tokens += 1;
            }
        }
    }
    Batch { batch, len, inputs, targets, mask, tokens }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_sample_runs_from_the_first_to_the_last() {
        let items: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&items, 4), [0, 3, 6, 9]);
        assert_eq!(spread(&items, 2), [0, 9]);
        assert_eq!(spread(&items, 1), [5]);
        assert_eq!(spread(&items, 0), items);
        assert_eq!(spread(&items, 10), items);
        assert_eq!(spread(&items, 25), items);
        assert!(spread::<usize>(&[], 3).is_empty());
    }

    fn chars(text: &str) -> Result<Vec<u32>, String> {
        Ok(text.chars().map(|c| if c == '|' { 1 } else { c as u32 }).collect())
    }

    #[test]
    fn eos_is_appended_and_the_loss_starts_after_the_middle_token() {
        let texts = vec![Text::whole("ab|cd"), Text::whole("xy")];
        let (examples, truncated) = tokenize(&texts, chars, 0, Some(1), 100).unwrap();
        assert_eq!(truncated, 0);
        assert_eq!(examples[0], Example { tokens: vec![97, 98, 1, 99, 100, 0], offset: 2 });
        assert_eq!(examples[1], Example { tokens: vec![120, 121, 0], offset: 0 });
        // Position 2 of the first example predicts `c` from `|`: the first counted target.
        let b = batches(&examples[..1], 1);
        assert_eq!(b[0].targets, vec![98, 1, 99, 100, 0]);
        assert_eq!(b[0].mask, vec![0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b[0].tokens, 3);
    }

    #[test]
    fn long_examples_are_cut_and_useless_ones_dropped() {
        let texts = vec![Text::whole("abcdefgh"), Text::whole("abcdef|gh"), Text::whole("")];
        let (examples, truncated) = tokenize(&texts, chars, 0, Some(1), 4).unwrap();
        assert_eq!(truncated, 2);
        // The FIM example lost its middle to the cut: dropped; the empty text is just EOS: dropped.
        assert_eq!(examples, vec![Example { tokens: vec![97, 98, 99, 100], offset: 0 }]);
    }

    #[test]
    fn a_completion_is_the_loss_after_its_prompt_tokenized_on_its_own() {
        // Tokens that span the boundary: "ab" is one token when read together.
        let pairs = |text: &str| -> Result<Vec<u32>, String> { Ok(text.as_bytes().chunks(2).map(|c| c.iter().map(|&b| u32::from(b)).sum()).collect()) };
        let texts = vec![
            Text::Completion { prompt: "xa".into(), completion: "bc".into() },
            // An empty prompt: every token after the first counts, as in a whole text.
            Text::Completion { prompt: String::new(), completion: "a|b".into() },
        ];
        // The FIM middle token (`|` here) means nothing in a completion: the loss starts after the
        // prompt wherever it is.
        let marked = vec![Text::Completion { prompt: "a|b".into(), completion: "c|d".into() }];
        let (e, _) = tokenize(&marked, chars, 0, Some(1), 100).unwrap();
        assert_eq!(e, [Example { tokens: vec![97, 1, 98, 99, 1, 100, 0], offset: 2 }]);
        let (examples, truncated) = tokenize(&texts, pairs, 0, Some(1), 100).unwrap();
        assert_eq!(truncated, 0);
        // "xa" and "bc" each one token: the one read after the prompt is the first counted.
        assert_eq!(examples[0], Example { tokens: vec![120 + 97, 98 + 99, 0], offset: 0 });
        assert_eq!(examples[1], Example { tokens: vec![97 + 124, 98, 0], offset: 0 });
        let b = batches(&examples[..1], 1);
        assert_eq!((b[0].mask.clone(), b[0].tokens), (vec![1.0, 1.0], 2));
    }

    #[test]
    fn batches_group_by_length_and_pad() {
        let ex = |n: usize| Example { tokens: (1..=n as u32).collect(), offset: 0 };
        let examples = vec![ex(5), ex(2), ex(4), ex(3)];
        let b = batches(&examples, 2);
        assert_eq!((b[0].batch, b[0].len, b[1].len), (2, 2, 4));
        assert_eq!(b[0].inputs, vec![1, 0, 1, 2]);
        assert_eq!(b[0].mask, vec![1.0, 0.0, 1.0, 1.0]);
        assert_eq!(b[1].tokens, 3 + 4);
    }

    #[test]
    fn a_line_without_text_is_an_error_naming_the_line() {
        let dir = std::env::temp_dir().join(format!("kenning-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.jsonl"), "{\"text\": \"a\"}\n\n{\"prompt\": \"b\", \"completion\": \"c\"}\n{\"prompt\": \"b\"}\n").unwrap();
        let err = read_split(&dir, "train").unwrap_err().to_string();
        assert!(err.contains("train.jsonl:4:"), "{err}");
        std::fs::write(dir.join("train.jsonl"), "{\"text\": \"a\"}\n\n{\"prompt\": \"b\", \"completion\": \"c\"}\n").unwrap();
        assert_eq!(read_split(&dir, "train").unwrap().unwrap(), [Text::whole("a"), Text::Completion { prompt: "b".into(), completion: "c".into() }]);
        assert!(read_split(&dir, "valid").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
