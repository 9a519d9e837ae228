//! The MLX engine (feature `mlx`): the model code of the `kenning-training` crate (the only code
//! that knows mlx-rs) on a dedicated thread, behind [`Generator`]. Models are MLX/HF directories
//! (`config.json`, `model.safetensors`, `tokenizer.json`); the bundled SmolLM2 is converted to one
//! by `scripts/setup`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kenning_training::lora::Lora;
use kenning_training::text::{Session, TextModel};

use super::engine::{EngineThread, Job, delegate_generator};
use super::{EngineError, Event, Finish, FinishReason, GenerateError, GenerationRequest, Sampling, Sink, SpecialToken, StopMatcher, Warmed};
use crate::paths::Paths;

/// The directory of a bundled model's MLX conversion, or `model` itself when it is a directory.
pub fn resolve(model: &str, paths: &Paths) -> Result<PathBuf, GenerateError> {
    kenning_training::models::resolve(model, paths.cache())
        .map_err(|reason| GenerateError::Load { path: paths.cache().join("tools").join(format!("{model}-mlx")), reason })
}

/// An MLX model served on its own thread.
pub struct MlxEngine(EngineThread);

impl MlxEngine {
    /// Loads a model directory (with a LoRA adapter directory, if given) and starts the engine thread.
    pub fn load(dir: &Path, adapter: Option<&Path>) -> Result<Self, GenerateError> {
        let thread_dir = dir.to_owned();
        let adapter = adapter.map(Path::to_owned);
        EngineThread::spawn(dir, "kenning-mlx", move |ready, jobs| {
            let loaded = TextModel::load(&thread_dir).and_then(|mut m| {
                if let Some(adapter) = &adapter {
                    let (lora, weights) = Lora::load(adapter, &m.model.config)?;
                    m.model.set_adapter(lora, weights);
                }
                Ok(m)
            });
            let model = match loaded {
                Ok(m) => m,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
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
            let _ = ready.send(Ok(specials));
            // One KV cache across requests: a prompt that starts like the last one reuses it.
            let mut session = Session::default();
            while let Some(job) = jobs.recv() {
                match job {
                    Job::Generate(request, sink) => run(&model, &mut session, &request, &sink),
                    // MLX computes a prompt in one forward pass: a warm-up cannot stop half-way.
                    Job::Warm(prompt, reply) => {
                        let warmed = model.generate_in(&mut session, &prompt, "", 1, Sampling::default(), |_| false).map(|stats| Warmed {
                            cached: stats.prompt_tokens,
                            computed: stats.prompt_tokens - stats.reused_prompt_tokens,
                            complete: true,
                        });
                        let _ = reply.send(warmed.unwrap_or_default());
                    }
                    Job::CountTokens(text, reply) => {
                        let _ = reply.send(model.encode(&text).map_or(0, |ids| ids.len()));
                    }
                }
            }
        })
        .map(Self)
    }
}

// `avoid` is not honoured yet (training/src/text.rs picks its tokens).
delegate_generator!(MlxEngine, true, false, 1);

fn run(model: &TextModel, session: &mut Session, request: &GenerationRequest, sink: &Sink) {
    let started = Instant::now();
    let mut stops = StopMatcher::new(&request.stop);
    let mut reason = FinishReason::Length;
    let result = model.generate_in(session, &request.prompt, &request.heal, request.max_tokens, request.sampling, |piece| {
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
            sink.flush_held(&mut stops, reason);
            sink.send(Event::Done(Finish {
                reason,
                prompt_tokens: stats.prompt_tokens,
                reused_prompt_tokens: stats.reused_prompt_tokens,
                generated_tokens: stats.generated_tokens,
                time_to_first_token: stats.time_to_first_token,
                total: started.elapsed(),
                logprobs: Vec::new(),
            }));
        }
        Err(e) => sink.send(Event::Error(EngineError::Mlx(e.to_string()))),
    }
}
