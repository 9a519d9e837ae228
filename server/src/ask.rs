//! "Ask the codebase": hybrid retrieval for the question, then an answer generated from the
//! numbered sources, which the answer cites as `[n]`. Without a model the answer is extractive:
//! the best places, each with its citation, and a sentence saying so.

use std::sync::Arc;

use serde::Serialize;

use crate::config;
use crate::embed::Embedder;
use crate::generate::{Event, GenerateError, Generator, GenerationRequest, Sampling};
use crate::prompt::{self, Family};
use crate::retrieve::{self, Citation, Hit, SearchError, SearchRequest};
use crate::store::Store;

/// Lines of each source shown in an extractive answer.
const EXTRACT_LINES: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("the question is empty")]
    Empty,
}

/// One numbered source of an answer.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// The `n` in `[n]`.
    pub number: usize,
    #[serde(flatten)]
    pub citation: Citation,
    pub symbol: String,
    /// Whether the generated answer cites it.
    pub cited: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub question: String,
    pub text: String,
    pub sources: Vec<Source>,
    /// No model was used: `text` lists the best places.
    pub extractive: bool,
    pub model: Option<String>,
}

/// Answers `question` from the index. `on_text` receives the answer as it is generated.
pub async fn ask(
    question: &str,
    store: &Store,
    embedder: Option<Arc<dyn Embedder>>,
    generator: Option<(Arc<dyn Generator>, Family)>,
    settings: &config::Ask,
    mut on_text: impl FnMut(&str) + Send,
) -> Result<Answer, AskError> {
    let question = question.trim();
    if question.is_empty() {
        return Err(AskError::Empty);
    }
    // A question may take a quarter of the prompt: a pasted file must leave room for sources (and
    // the search gets the same part).
    let question = prompt::ask_question(question, settings.prompt_tokens);
    let mut request = SearchRequest::new(question);
    request.k = settings.sources;
    let hits = retrieve::search(store, embedder, &request).await?;
    let Some((generator, family)) = generator else {
        return Ok(extractive(question, &hits, "no generation model is configured"));
    };
    if hits.is_empty() {
        return Ok(Answer {
            question: question.to_owned(),
            text: "Nothing in the index matches this question (is the workspace indexed?).".into(),
            sources: Vec::new(),
            extractive: false,
            model: Some(generator.model_name().to_owned()),
        });
    }
    let sources: Vec<(String, &str)> = hits.iter().map(|h| (h.citation.to_string(), h.text.as_str())).collect();
    let (prompt, used) = prompt::ask(family, question, &sources, settings.prompt_tokens);
    let hits = &hits[..used];
    let request = GenerationRequest {
        prompt,
        max_tokens: settings.max_tokens,
        sampling: Sampling::default(),
        stop: family.chat_stop().iter().map(|s| (*s).to_owned()).collect(),
        heal: String::new(),
        avoid: String::new(),
        logprobs: false,
    };
    let mut generation = generator.generate(request)?;
    let mut text = String::new();
    loop {
        match generation.next().await {
            Some(Event::Text(t)) => {
                text.push_str(&t);
                on_text(&t);
            }
            Some(Event::Done(_)) => break,
            Some(Event::Error(e)) => return Err(GenerateError::from(e).into()),
            None => return Err(GenerateError::EngineGone.into()),
        }
    }
    let text = text.trim().to_owned();
    let sources = hits
        .iter()
        .enumerate()
        .map(|(i, h)| Source {
            number: i + 1,
            citation: h.citation.clone(),
            symbol: h.symbol.clone(),
            cited: text.contains(&format!("[{}]", i + 1)),
        })
        .collect();
    Ok(Answer { question: question.to_owned(), text, sources, extractive: false, model: Some(generator.model_name().to_owned()) })
}

/// The best places for the question, with their citations, and why there is no generated answer.
pub fn extractive(question: &str, hits: &[Hit], why: &str) -> Answer {
    let mut text = format!("No generated answer ({why}); the most relevant places in the code:\n");
    for (i, h) in hits.iter().enumerate() {
        let symbol = if h.symbol.is_empty() { String::new() } else { format!(" ({})", h.symbol) };
        text.push_str(&format!("\n[{}] {}{symbol}\n", i + 1, h.citation));
        for line in h.text.lines().take(EXTRACT_LINES) {
            text.push_str(&format!("    {line}\n"));
        }
        if h.text.lines().count() > EXTRACT_LINES {
            text.push_str("    ...\n");
        }
    }
    if hits.is_empty() {
        text.push_str("\n(nothing in the index matches; is the workspace indexed?)\n");
    }
    Answer {
        question: question.to_owned(),
        text,
        sources: hits
            .iter()
            .enumerate()
            .map(|(i, h)| Source { number: i + 1, citation: h.citation.clone(), symbol: h.symbol.clone(), cited: true })
            .collect(),
        extractive: true,
        model: None,
    }
}

impl Answer {
    /// The answer followed by its numbered sources, as the CLI and `showMessage` print it.
    pub fn render(&self) -> String {
        let mut out = self.text.clone();
        if !self.extractive && !self.sources.is_empty() {
            out.push_str("\n\nSources:\n");
            for s in &self.sources {
                let symbol = if s.symbol.is_empty() { String::new() } else { format!(" ({})", s.symbol) };
                out.push_str(&format!("[{}] {}{symbol}\n", s.number, s.citation));
            }
        }
        out
    }
}
