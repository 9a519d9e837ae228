//! Models already pulled into Ollama, loaded from its store in place (no second download).
//!
//! Ollama keeps a model as a manifest, `manifests/HOST/NAMESPACE/MODEL/TAG` (JSON: layers with a
//! media type and a `sha256:` digest), and content-addressed blobs, `blobs/sha256-HEX`; the layer of
//! type `application/vnd.ollama.image.model` is the GGUF file itself. The store is
//! `$OLLAMA_MODELS`, else `~/.ollama/models`. Names are written as Ollama's CLI takes them:
//! `qwen2.5-coder:1.5b-base` (the `library` namespace of `registry.ollama.ai`), `user/model:tag`,
//! `hf.co/owner/repo:tag`; the tag is `latest` when absent.

use std::path::{Path, PathBuf};

use serde::Deserialize;

const DEFAULT_HOST: &str = "registry.ollama.ai";
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// `ollama:NAME[:TAG]`, split into the manifest's path parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaName {
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

impl OllamaName {
    /// Parses what follows `ollama:`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, tag) = match text.rsplit_once(':') {
            // A colon before the last slash belongs to a host (`host:port/…`), not a tag.
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (text, "latest"),
        };
        let parts: Vec<&str> = name.split('/').collect();
        // A colon only in a host (`host:port`), the first of three parts.
        let valid = |i: usize, s: &str| {
            let colon = parts.len() == 3 && i == 0;
            !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || (colon && c == ':'))
        };
        if let Some(bad) = parts.iter().copied().chain(std::iter::once(tag)).enumerate().find(|(i, s)| !valid(*i, s)).map(|(_, s)| s) {
            return Err(format!("`{bad}` is not part of an Ollama model name (NAME[:TAG], NAMESPACE/NAME[:TAG] or HOST/NAMESPACE/NAME[:TAG])"));
        }
        let (host, namespace, model) = match parts.as_slice() {
            [model] => (DEFAULT_HOST, "library", *model),
            [namespace, model] => (DEFAULT_HOST, *namespace, *model),
            [host, namespace, model] => (*host, *namespace, *model),
            _ => return Err("expected NAME[:TAG], NAMESPACE/NAME[:TAG] or HOST/NAMESPACE/NAME[:TAG]".into()),
        };
        Ok(Self { host: host.to_owned(), namespace: namespace.to_owned(), model: model.to_owned(), tag: tag.to_owned() })
    }

    fn manifest(&self, store: &Path) -> PathBuf {
        store.join("manifests").join(&self.host).join(&self.namespace).join(&self.model).join(&self.tag)
    }
}

impl std::fmt::Display for OllamaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host != DEFAULT_HOST {
            write!(f, "{}/", self.host)?;
        }
        if self.host != DEFAULT_HOST || self.namespace != "library" {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{}:{}", self.model, self.tag)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OllamaError {
    #[error("Ollama has no model {name} in {store} (looked for {manifest}): pull it with `ollama pull {name}`, or set OLLAMA_MODELS to Ollama's models directory")]
    NotPulled { name: String, store: PathBuf, manifest: PathBuf },
    #[error("Ollama's manifest of {name} ({manifest}) cannot be read: {reason}")]
    Manifest { name: String, manifest: PathBuf, reason: String },
    #[error("Ollama's model {name} has no GGUF layer (only {types}); kenning loads language models Ollama runs from one GGUF file")]
    NoModelLayer { name: String, types: String },
    #[error("Ollama's blob of {name} is missing or incomplete: {blob} ({reason}); pull it again with `ollama pull {name}`")]
    Blob { name: String, blob: PathBuf, reason: String },
}

#[derive(Debug, Deserialize)]
struct Manifest {
    layers: Vec<Layer>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layer {
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
}

/// Ollama's models directory: `$OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn store_from_env() -> PathBuf {
    std::env::var_os("OLLAMA_MODELS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs::home_dir().unwrap_or_default().join(".ollama").join("models"))
}

/// The GGUF file of a pulled model: its model layer's blob, checked against the manifest's size
/// (Ollama checked the digest when it pulled the blob).
pub fn model_file(store: &Path, name: &OllamaName) -> Result<PathBuf, OllamaError> {
    let manifest_path = name.manifest(store);
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OllamaError::NotPulled { name: name.to_string(), store: store.to_owned(), manifest: manifest_path });
        }
        Err(e) => return Err(OllamaError::Manifest { name: name.to_string(), manifest: manifest_path, reason: e.to_string() }),
    };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| OllamaError::Manifest { name: name.to_string(), manifest: manifest_path.clone(), reason: e.to_string() })?;
    let Some(layer) = manifest.layers.iter().find(|l| l.media_type == MODEL_LAYER) else {
        let types = manifest.layers.iter().map(|l| l.media_type.as_str()).collect::<Vec<_>>().join(", ");
        return Err(OllamaError::NoModelLayer { name: name.to_string(), types });
    };
    if manifest.layers.iter().any(|l| l.media_type == "application/vnd.ollama.image.adapter") {
        tracing::warn!("Ollama's model {name} carries a LoRA adapter layer; kenning loads the base model only (set generation.adapter for an adapter)");
    }
    let hex = layer.digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(hex) = hex else {
        return Err(OllamaError::Manifest { name: name.to_string(), manifest: manifest_path, reason: format!("`{}` is not a sha256 digest", layer.digest) });
    };
    let blob = store.join("blobs").join(format!("sha256-{hex}"));
    let blob_error = |reason: String| OllamaError::Blob { name: name.to_string(), blob: blob.clone(), reason };
    let meta = std::fs::metadata(&blob).map_err(|e| blob_error(e.to_string()))?;
    if let Some(size) = layer.size
        && meta.len() != size
    {
        return Err(blob_error(format!("{} bytes, the manifest says {size}", meta.len())));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_ollamas_cli_takes_them() {
        let n = OllamaName::parse("qwen2.5-coder:1.5b-base").unwrap();
        assert_eq!((n.host.as_str(), n.namespace.as_str(), n.model.as_str(), n.tag.as_str()), ("registry.ollama.ai", "library", "qwen2.5-coder", "1.5b-base"));
        assert_eq!(n.to_string(), "qwen2.5-coder:1.5b-base");
        let n = OllamaName::parse("someone/model").unwrap();
        assert_eq!((n.namespace.as_str(), n.tag.as_str()), ("someone", "latest"));
        assert_eq!(n.to_string(), "someone/model:latest");
        let n = OllamaName::parse("hf.co/bartowski/Some-GGUF:Q8_0").unwrap();
        assert_eq!((n.host.as_str(), n.namespace.as_str(), n.model.as_str(), n.tag.as_str()), ("hf.co", "bartowski", "Some-GGUF", "Q8_0"));
        let n = OllamaName::parse("localhost:5000/ns/m").unwrap();
        assert_eq!((n.host.as_str(), n.tag.as_str()), ("localhost:5000", "latest"));
        for bad in ["", "../x", "a/b/c/d", "m:", "m:../t", "a b"] {
            assert!(OllamaName::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_manifest_without_the_model_or_with_a_short_blob_is_refused() {
        let store = tempfile::tempdir().unwrap();
        let name = OllamaName::parse("m:t").unwrap();
        let err = model_file(store.path(), &name).unwrap_err().to_string();
        assert!(err.contains("ollama pull m:t"), "{err}");
        let manifest = name.manifest(store.path());
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        std::fs::write(&manifest, r#"{"layers":[{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:00","size":1}]}"#).unwrap();
        let err = model_file(store.path(), &name).unwrap_err().to_string();
        assert!(err.contains("no GGUF layer"), "{err}");
        let hex = "ab".repeat(32);
        std::fs::write(&manifest, format!(r#"{{"layers":[{{"mediaType":"{MODEL_LAYER}","digest":"sha256:{hex}","size":10}}]}}"#)).unwrap();
        std::fs::create_dir_all(store.path().join("blobs")).unwrap();
        std::fs::write(store.path().join(format!("blobs/sha256-{hex}")), b"short").unwrap();
        let err = model_file(store.path(), &name).unwrap_err().to_string();
        assert!(err.contains("5 bytes, the manifest says 10"), "{err}");
        std::fs::write(store.path().join(format!("blobs/sha256-{hex}")), b"0123456789").unwrap();
        assert_eq!(model_file(store.path(), &name).unwrap(), store.path().join(format!("blobs/sha256-{hex}")));
    }
}
