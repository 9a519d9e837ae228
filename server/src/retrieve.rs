//! Hybrid retrieval: BM25 and vector k-NN from the store, fused by reciprocal rank, at most a few
//! hits per file, each with its citation.
//!
//! Fusion is a pure function ([`fuse`]): the store collects ranked lists, this module merges them.
//! Without an embedder (or before any vector is stored) the keyword list alone is returned.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::chunk::Chunk;
use crate::embed::{EmbedError, Embedder, Purpose};
use crate::store::{Filter, Store, StoreError};

/// Reciprocal rank fusion constant (Cormack et al.; Tabby uses the same).
pub const RRF_K: f32 = 60.0;
/// Candidates fetched from each list per requested hit.
const CANDIDATES_PER_HIT: usize = 3;
/// Hits asked for at most (a larger `k` is served as this).
pub const MAX_K: usize = 1_000;
/// Bytes of a query searched at most (a pasted file as a question searches by its start).
const MAX_QUERY_BYTES: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// Where a hit comes from: what a user opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Citation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
}

impl std::fmt::Display for Citation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}-{}", self.path, self.start_line, self.end_line)
    }
}

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub citation: Citation,
    pub symbol: String,
    pub language: String,
    pub text: String,
    /// Fused score (sum of 1 / (RRF_K + rank) over the lists that found it).
    pub score: f32,
    /// 1-based rank in the keyword list, if it was there.
    pub text_rank: Option<usize>,
    /// 1-based rank in the vector list, if it was there.
    pub vector_rank: Option<usize>,
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub k: usize,
    pub per_file: usize,
    pub filter: Filter,
}

impl SearchRequest {
    pub fn new(query: impl Into<String>) -> Self {
        Self { query: query.into(), k: 10, per_file: 2, filter: Filter::default() }
    }
}

/// Runs keyword and vector search and fuses them.
pub async fn search(store: &Store, embedder: Option<Arc<dyn Embedder>>, request: &SearchRequest) -> Result<Vec<Hit>, SearchError> {
    let mut cut = request.query.len().min(MAX_QUERY_BYTES);
    while !request.query.is_char_boundary(cut) {
        cut -= 1;
    }
    let query = &request.query[..cut];
    let candidates = request.k.min(MAX_K).saturating_mul(CANDIDATES_PER_HIT);
    let text = store.search_text(query, candidates, &request.filter);
    let vector = async {
        let Some(embedder) = embedder else { return Ok(Vec::new()) };
        let query = query.to_owned();
        // A join error: the runtime is shutting down (or the embedder panicked): no vector hits.
        let Ok(v) = tokio::task::spawn_blocking(move || embedder.embed(&[&query], Purpose::Query)).await else {
            return Ok(Vec::new());
        };
        let v = v?;
        match v.into_iter().next() {
            Some(v) => Ok::<_, SearchError>(store.search_vector(&v, candidates, &request.filter).await?),
            None => Ok(Vec::new()),
        }
    };
    let (text, vector) = tokio::join!(text, vector);
    let (text, vector) = (text?, vector?);
    let text: Vec<Chunk> = text.into_iter().map(|(c, _)| c).collect();
    let vector: Vec<Chunk> = vector.into_iter().map(|(c, _)| c).collect();
    Ok(fuse(&text, &vector, request.k.min(MAX_K), request.per_file))
}

/// Reciprocal rank fusion of a keyword list and a vector list (each best first), keeping at most
/// `per_file` hits per path and `k` in all. Ties keep the keyword list's order.
pub fn fuse(text: &[Chunk], vector: &[Chunk], k: usize, per_file: usize) -> Vec<Hit> {
    let mut by_id: HashMap<&str, Hit> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (list, is_text) in [(text, true), (vector, false)] {
        for (i, chunk) in list.iter().enumerate() {
            let rank = i + 1;
            let hit = by_id.entry(&chunk.id).or_insert_with(|| {
                order.push(&chunk.id);
                Hit {
                    citation: Citation { path: chunk.path.clone(), start_line: chunk.start_line, end_line: chunk.end_line },
                    symbol: chunk.symbol.clone(),
                    language: chunk.language.name().to_owned(),
                    text: chunk.text.clone(),
                    score: 0.0,
                    text_rank: None,
                    vector_rank: None,
                }
            });
            let slot = if is_text { &mut hit.text_rank } else { &mut hit.vector_rank };
            if slot.is_none() {
                *slot = Some(rank);
                hit.score += 1.0 / (RRF_K + rank as f32);
            }
        }
    }
    let mut hits: Vec<(usize, Hit)> = order.iter().enumerate().map(|(i, id)| (i, by_id.remove(id).unwrap())).collect();
    hits.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
    let mut per_path: HashMap<String, usize> = HashMap::new();
    hits.into_iter()
        .map(|(_, h)| h)
        .filter(|h| {
            let n = per_path.entry(h.citation.path.clone()).or_default();
            *n += 1;
            *n <= per_file
        })
        .take(k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Language;

    fn chunk(id: &str, path: &str) -> Chunk {
        Chunk {
            id: id.into(),
            path: path.into(),
            language: Language::Rust,
            start_byte: 0,
            end_byte: 1,
            start_line: 1,
            end_line: 2,
            symbol: String::new(),
            text: "x".into(),
            content_hash: id.into(),
        }
    }

    fn ids(hits: &[Hit]) -> Vec<String> {
        hits.iter().map(|h| format!("{}@{}", h.citation.path, h.text)).collect()
    }

    #[test]
    fn found_by_both_lists_ranks_first() {
        let text = [chunk("a", "a.rs"), chunk("b", "b.rs"), chunk("c", "c.rs")];
        let vector = [chunk("c", "c.rs"), chunk("d", "d.rs")];
        let hits = fuse(&text, &vector, 10, 5);
        let order: Vec<&str> = hits.iter().map(|h| h.citation.path.as_str()).collect();
        // b (keyword #2) and d (vector #2) tie; the keyword list's order breaks the tie.
        assert_eq!(order, ["c.rs", "a.rs", "b.rs", "d.rs"]);
        assert_eq!((hits[0].text_rank, hits[0].vector_rank), (Some(3), Some(1)));
        assert!((hits[0].score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-6);
    }

    #[test]
    fn per_file_cap_and_k() {
        let text: Vec<Chunk> = (0..5).map(|i| chunk(&format!("s{i}"), "same.rs")).collect();
        let vector = [chunk("o", "other.rs")];
        let hits = fuse(&text, &vector, 10, 2);
        assert_eq!(hits.len(), 3);
        assert_eq!(hits.iter().filter(|h| h.citation.path == "same.rs").count(), 2);
        assert_eq!(fuse(&text, &vector, 1, 2).len(), 1);
        assert!(fuse(&[], &[], 5, 2).is_empty());
        assert_eq!(ids(&fuse(&text, &[], 10, 1)).len(), 1);
    }

    #[test]
    fn citation_format() {
        let c = Citation { path: "src/a.rs".into(), start_line: 3, end_line: 9 };
        assert_eq!(c.to_string(), "src/a.rs:3-9");
    }
}
