//! Generation through HTTP servers: Ollama's `/api/generate` (with `raw: true`, so the prompt and its
//! FIM tokens are ours) and OpenAI-compatible `/v1/completions` (llama.cpp server, LM Studio, vLLM,
//! `mlx_lm.server`), both streamed. Stop sequences are applied here as well as sent, since servers
//! differ in how they honour them.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use super::{EngineError, Event, Finish, FinishReason, GenerateError, Generation, Generator, GenerationRequest, Sink, SpecialToken, StopMatcher};
use crate::prompt::{self, Family};

/// Time allowed to connect to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The wire protocol of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Ollama,
    OpenAi,
}

/// A model behind an HTTP server.
pub struct HttpGenerator {
    api: Api,
    base: String,
    model: String,
    api_key: Option<String>,
    family: Family,
    client: reqwest::Client,
}

impl HttpGenerator {
    pub fn new(api: Api, url: &str, model: &str, api_key: Option<String>, family: Family) -> Result<Self, GenerateError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| GenerateError::HttpClient(e.to_string()))?;
        Ok(Self { api, base: url.trim_end_matches('/').to_owned(), model: model.to_owned(), api_key, family, client })
    }

    fn body(&self, request: &GenerationRequest) -> (String, Value) {
        let stop: Vec<&str> = request.stop.iter().map(String::as_str).collect();
        match self.api {
            Api::Ollama => (
                format!("{}/api/generate", self.base),
                json!({
                    "model": self.model,
                    "prompt": request.prompt,
                    "raw": true,
                    "stream": true,
                    "options": {
                        "temperature": request.sampling.temperature,
                        "top_p": request.sampling.top_p,
                        "seed": request.sampling.seed,
                        "num_predict": request.max_tokens,
                        "stop": stop,
                    },
                }),
            ),
            Api::OpenAi => {
                let base = self.base.trim_end_matches("/v1");
                let mut body = json!({
                    "model": self.model,
                    "prompt": request.prompt,
                    "max_tokens": request.max_tokens,
                    "temperature": request.sampling.temperature,
                    "top_p": request.sampling.top_p,
                    "seed": request.sampling.seed,
                    "stream": true,
                });
                // Some servers reject an empty or long stop list; four is the OpenAI limit.
                if !stop.is_empty() {
                    body["stop"] = json!(stop.iter().take(4).collect::<Vec<_>>());
                }
                (format!("{base}/v1/completions"), body)
            }
        }
    }
}

impl Generator for HttpGenerator {
    fn model_name(&self) -> &str {
        &self.model
    }

    fn special(&self, token: SpecialToken) -> Option<String> {
        // Spellings of the families kenning writes prompts for; the server parses them.
        let qwen = self.family == Family::QwenCoder;
        let s = match token {
            SpecialToken::FimPrefix if qwen => "<|fim_prefix|>",
            SpecialToken::FimSuffix if qwen => "<|fim_suffix|>",
            SpecialToken::FimMiddle if qwen => "<|fim_middle|>",
            SpecialToken::RepoName if qwen => "<|repo_name|>",
            SpecialToken::FileSep if qwen => "<|file_sep|>",
            _ => return None,
        };
        Some(s.to_owned())
    }

    fn count_tokens(&self, text: &str) -> Result<usize, GenerateError> {
        Ok(prompt::estimate_tokens(text))
    }

    fn generate(&self, request: GenerationRequest) -> Result<Generation, GenerateError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| GenerateError::NoRuntime)?;
        let (generation, sink) = Generation::channel();
        let (url, body) = self.body(&request);
        let mut http = self.client.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(key);
        }
        let api = self.api;
        runtime.spawn(async move {
            if let Err(e) = stream(api, http, &request, &sink).await {
                sink.send(Event::Error(EngineError::Http { url, reason: e }));
            }
        });
        Ok(generation)
    }
}

async fn stream(api: Api, http: reqwest::RequestBuilder, request: &GenerationRequest, sink: &Sink) -> Result<(), String> {
    let started = Instant::now();
    let response = http.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("{status}: {}", text.chars().take(300).collect::<String>()));
    }
    let mut body = response.bytes_stream();
    let mut pending = Vec::<u8>::new();
    let mut stops = StopMatcher::new(&request.stop);
    let mut generated = 0usize;
    let mut first: Option<Duration> = None;
    let mut prompt_tokens = 0usize;
    let mut reason = FinishReason::Length;
    'read: while let Some(bytes) = body.next().await {
        if sink.is_cancelled() {
            reason = FinishReason::Cancelled;
            break;
        }
        pending.extend_from_slice(&bytes.map_err(|e| e.to_string())?);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(chunk) = parse_line(api, line.trim()) else { continue };
            let chunk = chunk?;
            if let Some(n) = chunk.prompt_tokens {
                prompt_tokens = n;
            }
            if !chunk.text.is_empty() {
                first.get_or_insert_with(|| started.elapsed());
                generated += 1;
                let (out, stopped) = stops.push(&chunk.text);
                if !out.is_empty() {
                    sink.send(Event::Text(out));
                }
                if stopped {
                    reason = FinishReason::Stop;
                    break 'read;
                }
            }
            if let Some(done) = chunk.done {
                reason = done;
                break 'read;
            }
        }
    }
    sink.flush_held(&mut stops, reason);
    sink.send(Event::Done(Finish {
        reason,
        prompt_tokens,
        reused_prompt_tokens: 0,
        generated_tokens: generated,
        time_to_first_token: first.unwrap_or_else(|| started.elapsed()),
        total: started.elapsed(),
        logprobs: Vec::new(),
    }));
    Ok(())
}

/// One streamed piece of a response.
#[derive(Debug, PartialEq)]
struct Chunk {
    text: String,
    done: Option<FinishReason>,
    prompt_tokens: Option<usize>,
}

/// Parses one line of a streamed response; `None` for lines that carry nothing (blank, comments).
fn parse_line(api: Api, line: &str) -> Option<Result<Chunk, String>> {
    let json = match api {
        Api::Ollama => line,
        Api::OpenAi => {
            let data = line.strip_prefix("data:")?.trim();
            if data == "[DONE]" {
                return Some(Ok(Chunk { text: String::new(), done: Some(FinishReason::EndOfText), prompt_tokens: None }));
            }
            data
        }
    };
    if json.is_empty() {
        return None;
    }
    let value: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return Some(Err(format!("unreadable response line ({e}): {}", json.chars().take(200).collect::<String>()))),
    };
    if let Some(error) = value.get("error") {
        return Some(Err(error.as_str().map_or_else(|| error.to_string(), str::to_owned)));
    }
    // Both APIs say "stop" for an end-of-text token and for a stop sequence alike.
    let reason = |r: &str| match r {
        "length" => FinishReason::Length,
        "stop" => FinishReason::Stop,
        _ => FinishReason::EndOfText,
    };
    Some(Ok(match api {
        Api::Ollama => Chunk {
            text: value["response"].as_str().unwrap_or_default().to_owned(),
            done: value["done"].as_bool().unwrap_or(false).then(|| reason(value["done_reason"].as_str().unwrap_or("stop"))),
            prompt_tokens: value["prompt_eval_count"].as_u64().map(|n| n as usize),
        },
        Api::OpenAi => {
            let choice = &value["choices"][0];
            Chunk {
                text: choice["text"].as_str().unwrap_or_default().to_owned(),
                done: choice["finish_reason"].as_str().map(reason),
                prompt_tokens: value["usage"]["prompt_tokens"].as_u64().map(|n| n as usize),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_lines() {
        let chunk = parse_line(Api::Ollama, r#"{"model":"m","response":"fn ","done":false}"#).unwrap().unwrap();
        assert_eq!(chunk, Chunk { text: "fn ".into(), done: None, prompt_tokens: None });
        let last = parse_line(Api::Ollama, r#"{"response":"","done":true,"done_reason":"length","prompt_eval_count":12}"#).unwrap().unwrap();
        assert_eq!(last, Chunk { text: String::new(), done: Some(FinishReason::Length), prompt_tokens: Some(12) });
        assert!(parse_line(Api::Ollama, r#"{"error":"model 'x' not found"}"#).unwrap().unwrap_err().contains("not found"));
    }

    #[test]
    fn openai_server_sent_events() {
        assert_eq!(parse_line(Api::OpenAi, ": keep-alive"), None);
        assert_eq!(parse_line(Api::OpenAi, ""), None);
        let chunk = parse_line(Api::OpenAi, r#"data: {"choices":[{"text":"x + y","finish_reason":null}]}"#).unwrap().unwrap();
        assert_eq!(chunk.text, "x + y");
        assert_eq!(chunk.done, None);
        let done = parse_line(Api::OpenAi, "data: [DONE]").unwrap().unwrap();
        assert_eq!(done.done, Some(FinishReason::EndOfText));
        assert!(parse_line(Api::OpenAi, "data: {not json").unwrap().is_err());
    }
}
