//! A model with its tokenizer: text in, streamed text out. Greedy or temperature / top-p sampling
//! (on the CPU side: one vocabulary-sized vector per token), stop tokens, a callback that can stop
//! generation (cancellation) after any token.

use std::path::Path;

use mlx_rs::ops::indexing::IndexOp;

use crate::model::{Cache, Llama, ModelError};

pub use kenning_formats::Sampling;

/// What a generation did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the session's cache (not computed again).
    pub reused_prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Stopped on an end-of-sequence token (not on the length limit or the callback).
    pub ended: bool,
    pub time_to_first_token: std::time::Duration,
}

pub struct TextModel {
    pub model: Llama,
    tokenizer: tokenizers::Tokenizer,
    eos: Vec<u32>,
    /// Every token's text (empty for special tokens), read on the first generation that heals.
    pieces: std::sync::OnceLock<Vec<Vec<u8>>>,
}

impl TextModel {
    /// Loads a model directory with `tokenizer.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let model = Llama::load(dir)?;
        let path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::file(&path, e))?;
        let mut eos = Vec::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("config.json"))
            && let Ok(config) = serde_json::from_str::<serde_json::Value>(&text)
        {
            match &config["eos_token_id"] {
                serde_json::Value::Number(n) => eos.extend(n.as_u64().map(|n| n as u32)),
                serde_json::Value::Array(ids) => eos.extend(ids.iter().filter_map(|v| v.as_u64()).map(|n| n as u32)),
                _ => {}
            }
        }
        for name in ["<|endoftext|>", "<|im_end|>", "</s>"] {
            if let Some(id) = tokenizer.token_to_id(name)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }
        Ok(Self { model, tokenizer, eos, pieces: std::sync::OnceLock::new() })
    }

    /// Token ids of `text`; special tokens written by name are recognized.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| ModelError::Load { path: "tokenizer".into(), message: e.to_string() })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The end-of-sequence token training appends (the config's first `eos_token_id`).
    pub fn eos(&self) -> Option<u32> {
        self.eos.first().copied()
    }

    /// The id of a token by its text, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Generates from `prompt`, calling `on_text` with each new piece of text; generation stops when
    /// `on_text` returns false, on an end-of-sequence token, or after `max_tokens`.
    pub fn generate(&self, prompt: &str, max_tokens: usize, sampling: Sampling, on_text: impl FnMut(&str) -> bool) -> Result<Stats, ModelError> {
        self.generate_in(&mut Session::default(), prompt, "", max_tokens, sampling, on_text)
    }

    /// As [`generate`](Self::generate), continuing `session`: the part of the prompt that starts
    /// like the tokens the session's cache holds is not computed again (successive completions in
    /// one file share most of their prompt). The session then holds this prompt and its output.
    ///
    /// `heal` (token healing): text the output must begin with, left out of what `on_text` gets —
    /// the prompt ends before a partial word and the model writes the whole word in its own tokens.
    pub fn generate_in(
        &self,
        session: &mut Session,
        prompt: &str,
        heal: &str,
        max_tokens: usize,
        sampling: Sampling,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Stats, ModelError> {
        let result = self.generate_cached(session, prompt, heal, max_tokens, sampling, on_text);
        if result.is_err() {
            // The cache may be part-way through an update: start the next request afresh.
            *session = Session::default();
        }
        result
    }

    fn generate_cached(
        &self,
        session: &mut Session,
        prompt: &str,
        heal: &str,
        max_tokens: usize,
        sampling: Sampling,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Stats, ModelError> {
        let started = std::time::Instant::now();
        let ids = self.encode(prompt)?;
        let mut stats = Stats { prompt_tokens: ids.len(), ..Stats::default() };
        if ids.is_empty() || max_tokens == 0 {
            return Ok(stats);
        }
        let mut rng = u64::from(sampling.seed).max(1);
        // At least the last prompt token is computed again: its logits pick the first new token.
        let shared = session.tokens.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        session.cache.truncate(shared as i32);
        session.tokens.truncate(shared);
        stats.reused_prompt_tokens = shared;
        let cache = &mut session.cache;
        let mut logits = self.model.forward(&ids[shared..], cache)?;
        session.tokens.extend_from_slice(&ids[shared..]);
        let mut generated: Vec<u32> = Vec::new();
        // The healed text is decoded like the rest but never passed on.
        let mut emitted = heal.len();
        let mut healing = heal.as_bytes();
        for _ in 0..max_tokens {
            let last = logits.index((-1, ..));
            last.eval()?;
            let id = if healing.is_empty() {
                pick(last.as_slice::<f32>(), sampling, &mut rng)
            } else {
                let Some(id) = healing_token(last.as_slice::<f32>(), self.pieces(), healing) else {
                    stats.ended = true;
                    break;
                };
                healing = self.pieces().get(id as usize).and_then(|p| healing.get(p.len()..)).unwrap_or_default();
                id
            };
            if generated.is_empty() {
                stats.time_to_first_token = started.elapsed();
            }
            stats.generated_tokens += 1;
            if self.eos.contains(&id) {
                stats.ended = true;
                break;
            }
            generated.push(id);
            let text = self.tokenizer.decode(&generated, false).map_err(|e| ModelError::Load { path: "tokenizer".into(), message: e.to_string() })?;
            // A multi-byte character split across tokens decodes to U+FFFD until it is complete.
            if !text.ends_with('\u{FFFD}') && text.len() > emitted && text.is_char_boundary(emitted) {
                let keep_going = on_text(&text[emitted..]);
                emitted = text.len();
                if !keep_going {
                    break;
                }
            }
            logits = self.model.forward(&[id], cache)?;
            session.tokens.push(id);
        }
        Ok(stats)
    }
}

impl TextModel {
    fn pieces(&self) -> &[Vec<u8>] {
        self.pieces.get_or_init(|| {
            let n = self.tokenizer.get_vocab_size(true) as u32;
            (0..n).map(|id| self.tokenizer.decode(&[id], true).map(String::into_bytes).unwrap_or_default()).collect()
        })
    }
}

/// The likeliest token whose text agrees with `heal` (a prefix of it, or beginning with all of it).
fn healing_token(logits: &[f32], pieces: &[Vec<u8>], heal: &[u8]) -> Option<u32> {
    let agrees = |p: &[u8]| !p.is_empty() && (heal.starts_with(p) || p.starts_with(heal));
    let best = logits.iter().zip(pieces).enumerate().filter(|(_, (_, p))| agrees(p)).max_by(|a, b| a.1.0.total_cmp(b.1.0));
    best.map(|(i, _)| i as u32)
}

/// A KV cache kept between requests, with the tokens it was computed from.
#[derive(Default)]
pub struct Session {
    cache: Cache,
    tokens: Vec<u32>,
}

/// Greedy, or temperature + nucleus sampling with a small xorshift generator (`state` advances).
fn pick(logits: &[f32], sampling: Sampling, state: &mut u64) -> u32 {
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / sampling.temperature).exp())).collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= sampling.top_p {
            cut = i + 1;
            break;
        }
    }
    probs.truncate(cut);
    let mass: f32 = probs.iter().map(|p| p.1).sum();
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let mut target = (*state >> 11) as f32 / (1u64 << 53) as f32 * mass;
    for (id, p) in &probs {
        if target < *p {
            return *id;
        }
        target -= p;
    }
    probs.last().map_or_else(argmax, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healing_takes_the_likeliest_token_that_agrees_with_the_typed_text() {
        let pieces: Vec<Vec<u8>> = ["pr", "print", "x", "", "prin"].iter().map(|p| p.as_bytes().to_vec()).collect();
        assert_eq!(healing_token(&[1.0, 2.0, 9.0, 10.0, 0.0], &pieces, b"prin"), Some(1));
        assert_eq!(healing_token(&[3.0, 2.0, 9.0, 10.0, 0.0], &pieces, b"prin"), Some(0));
        assert_eq!(healing_token(&[3.0, 2.0, 9.0, 10.0, 0.0], &pieces, b"q"), None);
    }

    #[test]
    fn greedy_takes_the_largest_and_top_p_stays_in_the_nucleus() {
        let logits = [0.0, 5.0, 1.0, 4.9];
        let mut state = 7;
        assert_eq!(pick(&logits, Sampling { temperature: 0.0, top_p: 1.0, seed: 1 }, &mut state), 1);
        for _ in 0..200 {
            let id = pick(&logits, Sampling { temperature: 1.0, top_p: 0.9, seed: 1 }, &mut state);
            assert!(id == 1 || id == 3, "{id}");
        }
    }
}
