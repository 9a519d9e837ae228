//! The results of kenning's own commands (`workspace/executeCommand`), typed: what goes over the
//! wire is these types serialized, and `docs/lsp-extensions.md` shows them (a test below checks
//! that the documented shapes have exactly these fields).

use std::path::PathBuf;

use serde::Serialize;
use tower_lsp_server::ls_types::Range;

use crate::store::StoreStats;

/// `kenning.ask`.
#[derive(Debug, Clone, Serialize)]
pub struct AskResult {
    pub question: String,
    pub answer: String,
    /// The answer followed by one line per source.
    pub rendered: String,
    /// No model was used: `answer` lists the best places.
    pub extractive: bool,
    pub model: Option<String>,
    pub sources: Vec<AskSource>,
}

/// One numbered source of an answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AskSource {
    /// The `n` in `[n]`.
    pub number: usize,
    pub path: String,
    /// 1-based, inclusive.
    pub start_line: u32,
    pub end_line: u32,
    pub symbol: String,
    /// Whether the answer cites it.
    pub cited: bool,
    pub uri: Option<String>,
    /// The lines as an LSP range (0-based), for `window/showDocument` or a quickfix list.
    pub range: Range,
}

/// `kenning.reindex`.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    pub started: bool,
}

/// `kenning.status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub roots: Vec<RootStatus>,
    /// `null` until a completion or a question loaded the model.
    pub model: Option<ModelStatus>,
    /// `utf-8` or `utf-16`: how positions are counted.
    pub encoding: &'static str,
}

/// One workspace folder in `kenning.status`. (Its field names are snake_case, as clients read them.)
#[derive(Debug, Clone, Serialize)]
pub struct RootStatus {
    pub path: PathBuf,
    pub indexing: bool,
    /// Every chunk has its vector.
    pub embedded: bool,
    pub index: Option<StoreStats>,
    /// Reading the figures failed (it can be transient, during compaction).
    pub index_error: Option<String>,
    /// Why the last index run failed, until one succeeds.
    pub error: Option<String>,
    /// The team's shared index under this one (`[index] shared`): where, which publication, and
    /// whether its cached copy serves because the store is out of reach; `{"error": ...}` when it
    /// cannot be used; absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<serde_json::Value>,
}

/// The model in `kenning.status`: `{"loaded": name}` (`null` without a model), `{"loading": model}`
/// while it loads (a hub model may be downloading), or `{"error": message}`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ModelStatus {
    Loaded { loaded: Option<String> },
    Loading { loading: String },
    Error { error: String },
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;
    use tower_lsp_server::ls_types::Position;

    use super::*;

    fn keys(value: &Value) -> BTreeSet<String> {
        value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }

    /// The JSON block of `docs/lsp-extensions.md` under the heading `### {command}`.
    fn documented(command: &str) -> Value {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/lsp-extensions.md")).unwrap();
        let section = doc.split(&format!("### `{command}`")).nth(1).unwrap_or_else(|| panic!("no section for {command}"));
        let block = section.split("```json\n").nth(1).and_then(|b| b.split("\n```").next()).unwrap_or_else(|| panic!("no JSON for {command}"));
        serde_json::from_str(block).unwrap_or_else(|e| panic!("{command}'s documented JSON: {e}"))
    }

    #[test]
    fn the_documented_results_have_exactly_the_fields_of_the_types() {
        let source = AskSource {
            number: 1,
            path: "src/a.rs".into(),
            start_line: 3,
            end_line: 6,
            symbol: "fn a".into(),
            cited: true,
            uri: None,
            range: Range::new(Position::new(2, 0), Position::new(6, 0)),
        };
        let ask = AskResult {
            question: "q".into(),
            answer: "a".into(),
            rendered: "a".into(),
            extractive: false,
            model: None,
            sources: vec![source],
        };
        let ask = serde_json::to_value(ask).unwrap();
        let doc = documented("kenning.ask");
        assert_eq!(keys(&doc), keys(&ask));
        assert_eq!(keys(&doc["sources"][0]), keys(&ask["sources"][0]));

        let stats = StoreStats { files: 1, chunks: 2, vectors: 2, bytes_on_disk: 10, has_text_index: true, has_vector_index: false };
        let root = RootStatus {
            path: "/w".into(),
            indexing: false,
            embedded: true,
            index: Some(stats),
            index_error: None,
            error: None,
            shared: None,
        };
        let status = Status { roots: vec![root], model: Some(ModelStatus::Loaded { loaded: Some("m".into()) }), encoding: "utf-16" };
        let status = serde_json::to_value(status).unwrap();
        let doc = documented("kenning.status");
        assert_eq!(keys(&doc), keys(&status));
        assert_eq!(keys(&doc["roots"][0]), keys(&status["roots"][0]));
        assert_eq!(keys(&doc["roots"][0]["index"]), keys(&status["roots"][0]["index"]));
        assert_eq!(keys(&doc["model"]), keys(&status["model"]));
        let failed = serde_json::to_value(ModelStatus::Error { error: "no file".into() }).unwrap();
        assert_eq!(failed, serde_json::json!({"error": "no file"}));

        let started = serde_json::to_value(Started { started: true }).unwrap();
        assert_eq!(keys(&documented("kenning.reindex")), keys(&started));
    }
}
