//! Turning text into vectors: the [`Embedder`] trait and its fastembed (ONNX Runtime) implementation.
//!
//! Only this module knows fastembed and ort. ONNX Runtime is loaded dynamically from the pinned
//! library (see `assets.toml`), or from `ORT_DYLIB_PATH` when set; a missing library is an error,
//! never a panic. Documents are embedded in length-sorted batches, so each batch pads to texts of
//! similar length instead of to the longest text overall.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::assets::{AssetError, Assets};

/// Texts per ONNX Runtime call. Throughput barely changes with batch size; memory does: indexing
/// peaked at 3.5 GB with 32 (arena on), 1.5 GB with 16 and 1.1 GB with 8 (arena off).
pub const BATCH_SIZE: usize = 8;
/// Tokens the embedding model sees per text; longer texts are truncated.
pub const MAX_TOKENS: usize = 512;

/// What a text is embedded for. Models trained with instructions (e5, nomic, bge) prefix queries
/// and documents differently; MiniLM does not, and gets no prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Query,
    Document,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Runtime { path: PathBuf, reason: String },
    #[error("cannot read the embedding model files: {0}")]
    Io(#[from] std::io::Error),
    #[error("embedding failed: {0}")]
    Model(String),
}

/// Something that turns texts into unit vectors of a fixed dimension.
pub trait Embedder: Send + Sync {
    /// Identifies model and preprocessing: vectors from different ids are not comparable.
    fn model_id(&self) -> &str;
    fn dim(&self) -> usize;
    /// Embeds `texts`, returning one vector per text in the same order.
    fn embed(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// all-MiniLM-L6-v2 (int8) through fastembed, on the pinned ONNX Runtime.
pub struct FastEmbedder {
    model: Mutex<fastembed::TextEmbedding>,
}

/// The one ONNX Runtime environment of this process (ort allows only one).
static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn ort_environment(library: &Path) -> Result<ort::environment::Environment, EmbedError> {
    let env = ORT_ENV.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder.with_name("kenning").build().map_err(|e| e.to_string())
    });
    env.clone().map_err(|reason| EmbedError::Runtime { path: library.to_owned(), reason })
}

impl FastEmbedder {
    pub const MODEL_ID: &'static str = "all-MiniLM-L6-v2-int8";
    pub const DIM: usize = 384;

    /// Loads the pinned model. `threads` = 0 lets ONNX Runtime use every core.
    pub fn load(assets: &Assets, threads: usize) -> Result<Self, EmbedError> {
        let library = match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) => PathBuf::from(p),
            None => assets.path("onnxruntime")?,
        };
        let environment = ort_environment(&library)?;
        let read = |name: &str| -> Result<Vec<u8>, EmbedError> { Ok(std::fs::read(assets.path(name)?)?) };
        let tokenizer_files = fastembed::TokenizerFiles {
            tokenizer_file: read("minilm-tokenizer")?,
            config_file: read("minilm-config")?,
            special_tokens_map_file: read("minilm-special-tokens")?,
            tokenizer_config_file: read("minilm-tokenizer-config")?,
        };
        let model = fastembed::UserDefinedEmbeddingModel::new(read("minilm-model")?, tokenizer_files)
            .with_pooling(fastembed::Pooling::Mean);
        // ONNX Runtime's CPU arena grows by powers of two and never shrinks; with a new input shape
        // per batch it held several GB for a few hundred chunks. Plain allocation costs little here.
        let cpu = ort::ep::CPU::default().with_arena_allocator(false).build();
        let mut options = fastembed::InitOptionsUserDefined::new()
            .with_environment(environment)
            .with_execution_providers(vec![cpu])
            .with_max_length(MAX_TOKENS);
        if threads > 0 {
            options = options.with_intra_threads(threads);
        }
        let model = fastembed::TextEmbedding::try_new_from_user_defined(model, options)
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        Ok(Self { model: Mutex::new(model) })
    }
}

impl FastEmbedder {
    /// fastembed called directly on `texts` in their order, one batch, without kenning's length
    /// sorting: the baseline of the indexing benchmark. Returns how many vectors it made.
    pub fn embed_unsorted(&self, texts: &[&str]) -> Result<usize, EmbedError> {
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let vectors = model.embed(texts, Some(texts.len())).map_err(|e| EmbedError::Model(e.to_string()))?;
        Ok(vectors.len())
    }
}

impl Embedder for FastEmbedder {
    fn model_id(&self) -> &str {
        Self::MODEL_ID
    }

    fn dim(&self) -> usize {
        Self::DIM
    }

    fn embed(&self, texts: &[&str], _purpose: Purpose) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        embed_sorted(texts, |batch| {
            let vectors = model.embed(batch, Some(batch.len())).map_err(|e| EmbedError::Model(e.to_string()))?;
            Ok(vectors.into_iter().map(normalized).collect())
        })
    }
}

/// Embeds `texts` in batches of similar length and returns the vectors in the original order.
pub fn embed_sorted(
    texts: &[&str],
    mut embed_batch: impl FnMut(&[&str]) -> Result<Vec<Vec<f32>>, EmbedError>,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    for batch in order.chunks(BATCH_SIZE) {
        let batch_texts: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
        let vectors = embed_batch(&batch_texts)?;
        if vectors.len() != batch.len() {
            return Err(EmbedError::Model(format!("{} vectors for {} texts", vectors.len(), batch.len())));
        }
        for (&i, v) in batch.iter().zip(vectors) {
            out[i] = Some(v);
        }
    }
    Ok(out.into_iter().map(|v| v.expect("every index is in exactly one batch")).collect())
}

/// Scales `v` to unit length (cosine similarity becomes a dot product).
pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Dot product of two vectors of equal length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_batches_keep_the_callers_order() {
        let texts: Vec<String> = (0..100).map(|i| "x".repeat((i * 37) % 101)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut batch_sizes = Vec::new();
        let out = embed_sorted(&refs, |batch| {
            batch_sizes.push(batch.len());
            // Within a batch, lengths are sorted.
            assert!(batch.windows(2).all(|w| w[0].len() <= w[1].len()));
            Ok(batch.iter().map(|t| vec![t.len() as f32]).collect())
        })
        .unwrap();
        let mut expected = vec![BATCH_SIZE; 100 / BATCH_SIZE];
        if 100 % BATCH_SIZE > 0 {
            expected.push(100 % BATCH_SIZE);
        }
        assert_eq!(batch_sizes, expected);
        for (t, v) in texts.iter().zip(&out) {
            assert_eq!(v[0], t.len() as f32);
        }
    }

    #[test]
    fn normalization() {
        let v = normalized(vec![3.0, 4.0]);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-6);
        assert_eq!(normalized(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
