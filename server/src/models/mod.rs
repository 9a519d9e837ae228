//! Where a llama.cpp model comes from, by the name a user gives it (`--model`, `generation.model`,
//! `ask.model`):
//!
//! - a bundled name (`qwen2.5-coder-0.5b`, `smollm2-135m`): the pinned file `scripts/setup` installed;
//! - a name from the catalogue of recommended models ([`catalogue`]): a hub file pinned by sha256;
//! - a path to a GGUF file;
//! - `hf:OWNER/REPO/FILE.gguf[@REVISION]`: a file of a Hugging Face model repository, from the hub's
//!   cache, downloaded into it the first time ([`hub`]);
//! - `ollama:NAME[:TAG]`: a model already pulled into Ollama, loaded from Ollama's store ([`ollama`]).

pub mod catalogue;
pub mod hub;
pub mod ollama;

use std::path::PathBuf;

use crate::assets::{AssetError, Assets};
use crate::generate::BundledModel;
use crate::paths::Paths;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model `{0}`: give a bundled one ({names}), a recommended one ({recommended}; `kenning models list`), a path to a GGUF file, hf:OWNER/REPO/FILE.gguf[@REVISION] or ollama:NAME[:TAG]", names = BundledModel::names(), recommended = catalogue::entries().into_iter().map(|e| e.name).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    #[error("no such model file: {}", .0.display())]
    NoFile(PathBuf),
    #[error("model `{text}`: {reason}")]
    Syntax { text: String, reason: String },
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    #[error(transparent)]
    Ollama(#[from] ollama::OllamaError),
}

/// A model, by where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Bundled(BundledModel),
    Path(PathBuf),
    /// A hub file, and the sha256 it is pinned to (a catalogue name's).
    Hub(hub::HubFile, Option<String>),
    Ollama(ollama::OllamaName),
}

impl ModelRef {
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let syntax = |reason: String| ModelError::Syntax { text: text.to_owned(), reason };
        let prefixed = |prefix: &str| text.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| &text[prefix.len()..]);
        // A file's address on the hub, as copied from the browser, is taken for its `hf:` name.
        let hub_url = ["https://huggingface.co/", "http://huggingface.co/"].into_iter().find_map(|base| text.strip_prefix(base)).and_then(|rest| {
            let (repo, rest) = rest.split_once("/resolve/").or_else(|| rest.split_once("/blob/"))?;
            let (revision, file) = rest.split_once('/')?;
            Some(format!("{repo}/{}@{revision}", file.split('?').next().unwrap_or(file)))
        });
        if let Some(rest) = prefixed("hf:").map(str::to_owned).or(hub_url) {
            let file = hub::HubFile::parse(&rest).map_err(syntax)?;
            if !file.file.to_ascii_lowercase().ends_with(".gguf") {
                return Err(syntax("llama.cpp loads GGUF files: name a `.gguf` file of the repository".into()));
            }
            // A recommended model's file keeps its pin under its hub name too.
            let pin = catalogue::entries().into_iter().find(|e| {
                let pinned = e.hub_file();
                pinned.repo == file.repo && pinned.file == file.file && pinned.revision() == file.revision()
            });
            return Ok(ModelRef::Hub(file, pin.map(|e| e.sha256)));
        }
        if let Some(rest) = prefixed("ollama:") {
            return ollama::OllamaName::parse(rest).map(ModelRef::Ollama).map_err(syntax);
        }
        if let Some(bundled) = BundledModel::ALL.into_iter().find(|m| m.name() == text) {
            return Ok(ModelRef::Bundled(bundled));
        }
        if let Some(entry) = catalogue::find(text) {
            return Ok(ModelRef::Hub(entry.hub_file(), Some(entry.sha256)));
        }
        let path = PathBuf::from(text);
        if path.is_file() {
            Ok(ModelRef::Path(path))
        } else if text.contains('/') || text.to_ascii_lowercase().ends_with(".gguf") {
            Err(ModelError::NoFile(path))
        } else {
            Err(ModelError::Unknown(text.to_owned()))
        }
    }

    pub fn is_bundled(&self) -> bool {
        matches!(self, ModelRef::Bundled(_))
    }

    /// The GGUF file, downloading a hub file the cache lacks (blocking; `progress` hears about a
    /// download).
    pub fn file(&self, paths: &Paths, progress: hub::Progress) -> Result<PathBuf, ModelError> {
        Ok(match self {
            ModelRef::Bundled(bundled) => Assets::new(paths.assets()).path(bundled.asset())?,
            ModelRef::Path(path) => path.clone(),
            ModelRef::Hub(file, sha256) => hub::Hub::from_env().get(file, sha256.as_deref(), progress)?,
            ModelRef::Ollama(name) => ollama::model_file(&ollama::store_from_env(), name)?,
        })
    }
}

/// Where a configured model is on this machine, without downloading anything: its file, or why it
/// is not here yet (a hub file is fetched on first use, or by `kenning models pull`).
pub fn locate(text: &str, paths: &Paths) -> Result<PathBuf, String> {
    match ModelRef::parse(text).map_err(|e| e.to_string())? {
        ModelRef::Hub(file, pin) => {
            let hub = hub::Hub::from_env();
            hub.cached_pinned(&file, pin.as_deref()).ok_or_else(|| format!("not downloaded yet: it is downloaded on first use, or now with `kenning models pull {text}` (into {})", hub.cache.display()))
        }
        reference => reference.file(paths, &mut |_, _| true).map_err(|e| e.to_string()),
    }
}

/// The GGUF file a model name stands for (see the module's documentation); a hub download's
/// progress goes to the log.
pub fn resolve(text: &str, paths: &Paths) -> Result<PathBuf, ModelError> {
    ModelRef::parse(text)?.file(paths, &mut log_progress(text))
}

/// Whether downloads are shown on stderr (a CLI command) rather than logged (the server).
static ON_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Shows downloads on stderr from now on: a progress bar on a terminal, else a line every 10 %.
/// The CLI's commands call it; the language server logs them (and reports `$/progress`).
pub fn show_downloads_on_stderr() {
    ON_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A progress callback for a download: logged every 10 %, or shown on stderr (see
/// [`show_downloads_on_stderr`]).
pub fn log_progress(name: &str) -> impl FnMut(u64, Option<u64>) -> bool + Send + '_ {
    use std::io::IsTerminal;
    let on_stderr = ON_STDERR.load(std::sync::atomic::Ordering::Relaxed);
    let bar = (on_stderr && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
        );
        bar.set_message(format!("downloading {name}"));
        bar
    });
    let mut last_tenth = None;
    move |have, total| {
        if let Some(bar) = &bar {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(have);
            if total == Some(have) {
                bar.finish_and_clear();
            }
            return true;
        }
        let Some(total) = total.filter(|t| *t > 0) else { return true };
        let tenth = have * 10 / total;
        if last_tenth != Some(tenth) {
            last_tenth = Some(tenth);
            if on_stderr {
                eprintln!("downloading {name}: {} of {} MB", have >> 20, total >> 20);
            } else {
                tracing::info!("downloading {name}: {} of {} MB", have >> 20, total >> 20);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_parse_by_their_prefix() {
        assert_eq!(ModelRef::parse("qwen2.5-coder-0.5b").unwrap(), ModelRef::Bundled(BundledModel::QwenCoder05b));
        assert!(matches!(ModelRef::parse("hf:Qwen/Qwen2.5-Coder-1.5B-GGUF/qwen2.5-coder-1.5b-q8_0.gguf@abc").unwrap(), ModelRef::Hub(f, None) if f.revision.as_deref() == Some("abc")));
        let pinned = ModelRef::parse("qwen2.5-coder-1.5b-base").unwrap();
        assert!(matches!(&pinned, ModelRef::Hub(f, Some(sha)) if f.repo == "ikw/Qwen2.5-Coder-1.5B-GGUF" && sha.len() == 64), "{pinned:?}");
        assert!(matches!(ModelRef::parse("ollama:qwen2.5-coder:1.5b-base").unwrap(), ModelRef::Ollama(n) if n.tag == "1.5b-base"));
        let err = ModelRef::parse("hf:o/r/model.safetensors").unwrap_err().to_string();
        assert!(err.contains("GGUF"), "{err}");
        let err = ModelRef::parse("gpt-17").unwrap_err().to_string();
        assert!(err.contains("qwen2.5-coder-0.5b") && err.contains("hf:OWNER/REPO") && err.contains("ollama:NAME"), "{err}");
        let err = ModelRef::parse("/nowhere/model.gguf").unwrap_err().to_string();
        assert_eq!(err, "no such model file: /nowhere/model.gguf");
        // A hub address copied from the browser, and a recommended model's file by its hub name,
        // which keeps the pin.
        let url = ModelRef::parse("https://huggingface.co/ikw/Qwen2.5-Coder-1.5B-GGUF/blob/main/qwen2.5-coder-1.5b-q8_0.gguf").unwrap();
        assert_eq!(url, pinned, "{url:?}");
        assert!(matches!(ModelRef::parse("HF:o/r/m.gguf").unwrap(), ModelRef::Hub(f, None) if f.repo == "o/r"));
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(ModelRef::parse(file.path().to_str().unwrap()).unwrap(), ModelRef::Path(file.path().to_owned()));
    }
}
