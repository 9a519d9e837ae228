//! The MLX engine (feature `mlx`): the model code of the `kenning-training` crate (the only code
//! that knows mlx-rs) on a dedicated thread, behind [`Generator`]. Models are MLX/HF directories
//! (`config.json`, `model.safetensors`, `tokenizer.json`); the bundled SmolLM2 is converted to one
//! by `scripts/setup`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kenning_training::text::{Sampling as MlxSampling, TextModel};

use super::{Event, Finish, FinishReason, GenerateError, Generation, Generator, Request, Sink, SpecialToken, StopMatcher};
use crate::paths::Paths;

/// The directory of a bundled model's MLX conversion, or `model` itself when it is a directory.
pub fn resolve(model: &str, paths: &Paths) -> Result<PathBuf, GenerateError> {
    let dir = PathBuf::from(model);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let converted = paths.cache().join("tools").join(format!("{model}-mlx"));
    if converted.join("config.json").is_file() {
        return Ok(converted);
    }
    Err(GenerateError::Load {
        path: converted,
        reason: format!(
            "no MLX model `{model}`: give an MLX/HF model directory, or smollm2-135m (converted by scripts/setup); \
             Qwen2.5-Coder's K-quant GGUF is not readable by MLX and is not converted yet"
        ),
    })
}

enum Job {
    Generate(Request, Sink),
    CountTokens(String, std::sync::mpsc::Sender<usize>),
}

/// An MLX model served on its own thread.
pub struct MlxEngine {
    name: String,
    specials: Vec<(SpecialToken, String)>,
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MlxEngine {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl MlxEngine {
    /// Loads a model directory and starts the engine thread.
    pub fn load(dir: &Path) -> Result<Self, GenerateError> {
        let load_error = |reason: String| GenerateError::Load { path: dir.to_owned(), reason };
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vec<(SpecialToken, String)>, String>>();
        let thread_dir = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("kenning-mlx".into())
            .spawn(move || {
                let model = match TextModel::load(&thread_dir) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let named = [
                    (SpecialToken::FimPrefix, "<|fim_prefix|>"),
                    (SpecialToken::FimSuffix, "<|fim_suffix|>"),
                    (SpecialToken::FimMiddle, "<|fim_middle|>"),
                    (SpecialToken::FimPad, "<|fim_pad|>"),
                    (SpecialToken::RepoName, "<|repo_name|>"),
                    (SpecialToken::FileSep, "<|file_sep|>"),
                    (SpecialToken::Eos, "<|endoftext|>"),
                ];
                let specials = named.iter().filter(|(_, t)| model.token_id(t).is_some()).map(|(r, t)| (*r, (*t).to_owned())).collect();
                let _ = ready_tx.send(Ok(specials));
                while let Ok(job) = job_rx.recv() {
                    match job {
                        Job::Generate(request, sink) => run(&model, &request, &sink),
                        Job::CountTokens(text, reply) => {
                            let _ = reply.send(model.encode(&text).map_or(0, |ids| ids.len()));
                        }
                    }
                }
            })
            .map_err(|e| load_error(e.to_string()))?;
        let specials = ready_rx.recv().map_err(|_| load_error("the engine thread died while loading".into()))?.map_err(load_error)?;
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, specials, jobs: Some(jobs), thread: Some(thread) })
    }

    fn queue(&self) -> Result<&std::sync::mpsc::Sender<Job>, GenerateError> {
        self.jobs.as_ref().ok_or(GenerateError::EngineGone)
    }
}

fn run(model: &TextModel, request: &Request, sink: &Sink) {
    let started = Instant::now();
    let mut stops = StopMatcher::new(&request.stop);
    let mut reason = FinishReason::Length;
    let sampling = MlxSampling {
        temperature: request.sampling.temperature,
        top_p: request.sampling.top_p,
        seed: u64::from(request.sampling.seed),
    };
    let result = model.generate(&request.prompt, request.max_tokens, sampling, |piece| {
        if sink.is_cancelled() {
            reason = FinishReason::Cancelled;
            return false;
        }
        let (out, stopped) = stops.push(piece);
        if !out.is_empty() {
            sink.send(Event::Text(out));
        }
        if stopped {
            reason = FinishReason::Stop;
        }
        !stopped
    });
    match result {
        Ok(stats) => {
            if stats.ended {
                reason = FinishReason::EndOfText;
            }
            if reason != FinishReason::Stop {
                let rest = stops.finish();
                if !rest.is_empty() {
                    sink.send(Event::Text(rest));
                }
            }
            sink.send(Event::Done(Finish {
                reason,
                prompt_tokens: stats.prompt_tokens,
                reused_prompt_tokens: 0,
                generated_tokens: stats.generated_tokens,
                time_to_first_token: stats.time_to_first_token,
                total: started.elapsed(),
            }));
        }
        Err(e) => sink.send(Event::Error(e.to_string())),
    }
}

impl Generator for MlxEngine {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn special(&self, token: SpecialToken) -> Option<String> {
        self.specials.iter().find(|(t, _)| *t == token).map(|(_, s)| s.clone())
    }

    fn count_tokens(&self, text: &str) -> Result<usize, GenerateError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.queue()?.send(Job::CountTokens(text.to_owned(), tx)).map_err(|_| GenerateError::EngineGone)?;
        rx.recv().map_err(|_| GenerateError::EngineGone)
    }

    fn generate(&self, request: Request) -> Result<Generation, GenerateError> {
        let (generation, sink) = Generation::channel();
        self.queue()?.send(Job::Generate(request, sink)).map_err(|_| GenerateError::EngineGone)?;
        Ok(generation)
    }
}
