//! The `kenning` command line: `serve` (the default), `index`, `search`, `status`, `ask`, `complete`,
//! `eval`, `generate`, `dataset`, `train`, `export-adapter`.
//!
//! Results go to stdout (human-readable, or JSON with `--json`); progress bars and warnings go to
//! stderr, so `kenning search --json ... | jq` works.
#![allow(clippy::print_stdout)]

mod assist;
mod models;
mod train;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::assets::Assets;
use crate::chunk::Language;
use crate::embed::{Embedder, FastEmbedder};
use crate::index::{self, IndexOptions, Progress};
use crate::paths::Paths;
use crate::retrieve::{self, SearchRequest};
use crate::store::{Filter, Store};
use crate::workspace::WalkOptions;

#[derive(Debug, Parser)]
#[command(name = "kenning", version, about = "A language server that knows the repository it runs in")]
pub struct Cli {
    /// Cache root for assets and indexes (default: ~/.cache/kenning).
    #[arg(long, global = true, env = "KENNING_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the language server on stdin/stdout (what editors start; the default with no command).
    Serve,
    /// Ask a question about the code: an answer with numbered citations.
    Ask(assist::AskArgs),
    /// Complete at FILE:LINE:COLUMN with the retrieved context, as the editor would.
    Complete(assist::CompleteArgs),
    /// Measure completion quality on tasks (exact match, edit similarity, latency).
    Eval(assist::EvalArgs),
    /// Compare runs saved by `kenning eval --save-scores` task by task (one or many repositories):
    /// overall and per repository, language and task kind, with 95 % intervals.
    Compare(assist::CompareArgs),
    /// Index a workspace (incremental: only changed files are re-read and re-embedded).
    Index(IndexArgs),
    /// Search the index: keyword (BM25) and semantic (vector) results, fused.
    Search(SearchArgs),
    /// Show what the index holds and whether the assets are in place.
    Status(StatusArgs),
    /// The models usable by name here, and pulling one from the Hugging Face hub.
    Models(models::ModelsArgs),
    /// Generate text with a local model, streamed to stdout (like `mlx_lm.generate`).
    Generate(GenerateArgs),
    /// Mine fill-in-the-middle and next-token training data from the repository (mlx_lm's layout).
    Dataset(train::DatasetArgs),
    /// Fine-tune a LoRA adapter on the repository (dataset → kenning-train) and register it.
    Train(train::TrainArgs),
    /// Write an adapter directory (kenning-train, mlx_lm.lora) as llama.cpp's GGUF LoRA adapter.
    ExportAdapter(train::ExportArgs),
    /// Write a fused model (kenning-train fuse, mlx_lm.fuse) as one GGUF file for llama.cpp and Ollama.
    ExportGguf(train::ExportGgufArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    /// llama.cpp, in-process (GGUF models).
    Llama,
    /// MLX through mlx-rs (builds with `--features mlx`; MLX/HF model directories).
    Mlx,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Inference engine.
    #[arg(long, value_enum, default_value = "llama")]
    engine: Engine,
    /// A bundled model (qwen2.5-coder-0.5b, smollm2-135m), a path to a GGUF file,
    /// hf:OWNER/REPO/FILE.gguf[@REVISION] (downloaded into the Hugging Face cache) or ollama:NAME[:TAG].
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// The prompt, or `-` to read it from stdin. Special tokens are written by name (`<|fim_prefix|>`).
    #[arg(long, short = 'p')]
    prompt: String,
    #[arg(long, short = 'm', default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Token healing (llama.cpp): the output must begin with this text, which is left out of it;
    /// the prompt ends just before it (e.g. a partial word).
    #[arg(long, default_value = "")]
    heal: String,
    /// LoRA adapter: an adapter directory of kenning train / kenning-train / mlx_lm.lora (both
    /// engines; llama.cpp gets its GGUF export), or a llama.cpp GGUF adapter (--engine llama).
    #[arg(long)]
    adapter_path: Option<PathBuf>,
    /// CPU threads while generating (default: the cores, at most 4).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU threads while reading the prompt (default: all the cores).
    #[arg(long)]
    prefill_threads: Option<usize>,
    /// Context window in tokens.
    #[arg(long, default_value_t = 4096)]
    context: u32,
    /// Print timing figures to stderr at the end.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Default, Args)]
struct Target {
    /// Index directory (default: a per-workspace directory under the cache root).
    #[arg(long)]
    index_dir: Option<PathBuf>,
    /// The team's shared index to search under this one (`s3://BUCKET/PREFIX` or a directory;
    /// default: kenning.toml's `[index] shared`; `none` for none).
    #[arg(long, value_name = "URI")]
    shared: Option<String>,
}

impl Target {
    /// The shared index to use: `--shared`, else the workspace's configuration's.
    fn shared(&self, root: &Path) -> Option<String> {
        match self.shared.as_deref() {
            Some("none") => None,
            Some(uri) => Some(uri.to_owned()),
            None => crate::config::Layers::from_workspace(root).and_then(|l| l.resolve()).ok().and_then(|c| c.index.shared),
        }
    }
}

#[derive(Debug, Args)]
struct IndexArgs {
    /// Workspace root.
    #[arg(default_value = ".")]
    path: PathBuf,
    #[command(flatten)]
    target: Target,
    /// Store text only (keyword search); skip embeddings.
    #[arg(long)]
    no_embed: bool,
    /// Throw the index away and build it again (done on its own when the index is damaged).
    #[arg(long)]
    rebuild: bool,
    /// Skip files larger than this many bytes.
    #[arg(long, default_value_t = crate::workspace::DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Threads for ONNX Runtime (0 = all cores).
    #[arg(long, default_value_t = 0)]
    embed_threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// List every skipped file with its reason.
    #[arg(long)]
    verbose: bool,
    /// Publish the whole index of PATH as the team's shared index at URI (`s3://BUCKET/PREFIX` or a
    /// directory), incrementally from the publication there (only changed files are embedded).
    #[arg(long, value_name = "URI")]
    publish: Option<String>,
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// What to look for: words, identifiers, or a question.
    query: String,
    /// Workspace root whose index to search.
    #[arg(long, short = 'w', default_value = ".")]
    workspace: PathBuf,
    #[command(flatten)]
    target: Target,
    /// Number of results.
    #[arg(long, short = 'k', default_value_t = 10)]
    k: usize,
    /// Only this language (rust, python, javascript, typescript, tsx, go, java, c, cpp, text).
    #[arg(long)]
    lang: Option<String>,
    /// Only paths matching this glob (e.g. 'src/**/*.rs').
    #[arg(long)]
    path: Option<String>,
    /// At most this many results from one file.
    #[arg(long, default_value_t = 2)]
    per_file: usize,
    /// Keyword search only (no embedding model needed).
    #[arg(long)]
    no_embed: bool,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Workspace root.
    #[arg(long, short = 'w', default_value = ".")]
    workspace: PathBuf,
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    json: bool,
}

/// Parses arguments and runs the command.
pub async fn run() -> Result<()> {
    let cli = Cli::parse();
    let paths = cli.cache_dir.map(Paths::with_root).unwrap_or_else(Paths::from_env);
    let command = cli.command.unwrap_or(Command::Serve);
    if !matches!(command, Command::Serve) {
        // A hub model a command downloads shows its progress here (the server logs it).
        crate::models::show_downloads_on_stderr();
    }
    match command {
        Command::Serve => serve(paths).await,
        Command::Ask(args) => assist::ask_cmd(&paths, args).await,
        Command::Complete(args) => assist::complete_cmd(&paths, args).await,
        Command::Eval(args) => assist::eval_cmd(&paths, args).await,
        Command::Compare(args) => assist::compare_cmd(args),
        Command::Index(args) => index_cmd(&paths, args).await,
        Command::Search(args) => search_cmd(&paths, args).await,
        Command::Status(args) => status_cmd(&paths, args).await,
        Command::Models(args) => tokio::task::spawn_blocking(move || models::models_cmd(&paths, args)).await?,
        Command::Generate(args) => tokio::task::spawn_blocking(move || generate_cmd(&paths, args)).await?,
        Command::Dataset(args) => tokio::task::spawn_blocking(move || train::dataset_cmd(&paths, args)).await?,
        Command::Train(args) => tokio::task::spawn_blocking(move || train::train_cmd(&paths, args)).await?,
        Command::ExportAdapter(args) => train::export_cmd(args),
        Command::ExportGguf(args) => tokio::task::spawn_blocking(move || train::export_gguf_cmd(&paths, args)).await?,
    }
}

/// The language server; logs go to stderr (`KENNING_LOG=debug` for more), stdout is the protocol.
async fn serve(paths: Paths) -> ! {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KENNING_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kenning=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
    crate::lsp::serve_stdio(crate::lsp::Options { paths }).await
}

fn workspace_root(path: &Path) -> Result<PathBuf> {
    let root = path.canonicalize().with_context(|| format!("workspace {} not found", path.display()))?;
    if !root.is_dir() {
        bail!("workspace {} is not a directory", root.display());
    }
    Ok(root)
}

fn index_dir(paths: &Paths, target: &Target, root: &Path) -> PathBuf {
    target.index_dir.clone().unwrap_or_else(|| paths.index_for(root))
}

fn load_embedder(paths: &Paths, threads: usize) -> Result<Arc<dyn Embedder>> {
    crate::session::load_embedder(paths, threads).context("cannot load the embedding model (use --no-embed for keyword search only)")
}

/// Opens the workspace's index, over the shared index when one is configured (a shared index that
/// cannot be opened is a warning: the local index alone answers).
async fn open_store(paths: &Paths, target: &Target, root: &Path, dir: &Path) -> Result<Store> {
    let shared = target.shared(root);
    let (store, state) = crate::session::open_workspace_index(paths, dir, shared.as_deref())
        .await
        .with_context(|| format!("cannot open the index at {}", dir.display()))?;
    match state {
        Some(Ok(state)) if state.offline.is_some() => {
            eprintln!("note: the shared index's copy of {} serves ({})", state.published, state.offline.unwrap_or_default());
        }
        Some(Err(e)) => eprintln!("warning: the shared index is not used: {e}"),
        _ => {}
    }
    Ok(store)
}

async fn index_cmd(paths: &Paths, args: IndexArgs) -> Result<()> {
    let root = workspace_root(&args.path)?;
    if let Some(uri) = &args.publish {
        return publish_cmd(paths, &args, &root, uri).await;
    }
    let dir = index_dir(paths, &args.target, &root);
    let embedder = if args.no_embed { None } else { Some(load_embedder(paths, args.embed_threads)?) };
    // A damaged index (or --rebuild) is rebuilt from scratch, saying what was wrong.
    let waiting = |holder: &str| eprintln!("kenning: {holder} is writing this index: waiting for it to finish");
    let (store, problems) = crate::session::open_index_repaired(&dir, args.rebuild, waiting).await.with_context(|| format!("cannot open the index at {}", dir.display()))?;
    if !problems.is_empty() {
        eprintln!("kenning: rebuilding the index at {} ({})", dir.display(), problems.join("; "));
    }
    let store = match args.target.shared(&root) {
        Some(uri) => match crate::session::open_shared(paths, &uri).await {
            Ok((base, state)) => {
                let serving = state.offline.as_deref().map_or_else(String::new, |why| format!("; the copy in the cache serves: {why}"));
                eprintln!("kenning: over the shared index {uri} ({} files, published {}{serving}): only what differs is indexed here", state.files, state.published);
                store.with_base(base).await?
            }
            Err(e) => {
                eprintln!("warning: the shared index is not used ({e}): every file is indexed here");
                store
            }
        },
        None => store,
    };
    let bars = Arc::new(Bars::new(!args.json));
    let options = IndexOptions { walk: WalkOptions { max_file_bytes: args.max_file_bytes, ..WalkOptions::default() }, ..IndexOptions::default() };
    let summary = index::index_workspace(&root, &store, embedder, &options, bars.clone()).await?;
    bars.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let stats = store.stats().await?;
    println!("indexed {} into {}", root.display(), dir.display());
    println!(
        "  files: {} seen, {} changed, {} unchanged, {} removed, {} skipped",
        summary.files_seen,
        summary.files_changed,
        summary.files_unchanged,
        summary.files_removed,
        summary.skipped.len()
    );
    if summary.files_from_base > 0 {
        println!("  {} files as the shared index has them (searched there)", summary.files_from_base);
    }
    println!(
        "  chunks: {} written; vectors: {} embedded, {} reused",
        summary.chunks_written, summary.vectors_computed, summary.vectors_reused
    );
    if !summary.languages.is_empty() {
        let langs: Vec<String> = summary.languages.iter().map(|(l, n)| format!("{l} {n}")).collect();
        println!("  new chunks by language: {}", langs.join(", "));
    }
    println!(
        "  index: {} files, {} chunks, {} vectors, {:.1} MB on disk",
        stats.files,
        stats.chunks,
        stats.vectors,
        stats.bytes_on_disk as f64 / 1e6
    );
    println!(
        "  time: keyword search ready after {:.2}s, vectors after {:.2}s, total {:.2}s",
        summary.text_ready.as_secs_f64(),
        summary.vectors_ready.as_secs_f64(),
        summary.total.as_secs_f64()
    );
    if summary.files_lossy_utf8 > 0 {
        println!("  {} files were not valid UTF-8 and were read with replacement characters", summary.files_lossy_utf8);
    }
    if !summary.redacted.is_empty() {
        println!("  {} secrets redacted before indexing (values replaced by <redacted:KIND>; --verbose lists them)", summary.redacted.len());
    }
    if args.verbose {
        for (path, reason) in &summary.skipped {
            println!("  skipped {path}: {reason}");
        }
        for (path, line, kind) in &summary.redacted {
            println!("  redacted {kind} at {path}:{line}");
        }
    }
    Ok(())
}

/// `kenning index PATH --publish URI`: the working copy of the publication at URI (in the cache) is
/// brought to the workspace's state by an ordinary incremental run, compacted, and its files that
/// the publication lacks are uploaded, the snapshot last.
async fn publish_cmd(paths: &Paths, args: &IndexArgs, root: &Path, uri: &str) -> Result<()> {
    use crate::shared::{self, Remote, Snapshot};
    let remote = Remote::open(uri)?;
    let previous = remote.snapshot().await?;
    if let Some(p) = &previous
        && (p.embed_model != FastEmbedder::MODEL_ID || p.dim != FastEmbedder::DIM)
    {
        bail!(
            "{uri}: the index there was built with the embedding model {}; this kenning embeds with {}: publish to another prefix",
            p.embed_model,
            FastEmbedder::MODEL_ID
        );
    }
    let work = PathBuf::from(format!("{}-publish", shared::cache_dir(paths.cache(), uri).display()));
    // One publisher per working copy on this machine (the index run takes the copy's own lock).
    let lock_dir = PathBuf::from(format!("{}.lock", work.display()));
    let _lock = index::WriterLock::acquire(&lock_dir, |holder| eprintln!("kenning: {holder} is publishing to {uri}: waiting for it to finish")).await?;
    // The copy must hold the current publication (plus, after a publication cut short, this
    // machine's changes on top of it); a copy of anything else starts again from the current one.
    let copy = shared::local_snapshot(&work);
    let fresh_copy = match (&previous, &copy) {
        (Some(p), Some(c)) => p != c,
        (Some(_), None) => true,
        (None, c) => c.is_some(),
    };
    if fresh_copy && work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    if fresh_copy && let Some(p) = &previous {
        // Nobody else reads the publisher's copy: no claim on it is kept.
        let (pulled, _) = remote.pull(p, &work).await?;
        eprintln!("kenning: pulled the publication of {} ({:.1} MB)", p.published_text(), pulled as f64 / 1e6);
    }
    let store = crate::session::open_index(&work).await.with_context(|| format!("cannot open {}", work.display()))?;
    let embedder = if args.no_embed { None } else { Some(load_embedder(paths, args.embed_threads)?) };
    let bars = Arc::new(Bars::new(!args.json));
    let options = IndexOptions { walk: WalkOptions { max_file_bytes: args.max_file_bytes, ..WalkOptions::default() }, defer_optimize: true };
    let summary = index::index_workspace(root, &store, embedder, &options, bars.clone()).await?;
    bars.finish();
    // Compacted for readers (few fragments, new rows in the text and vector indexes) when the run
    // made that due, as on any index ([`IndexSummary::optimize_due`]). Not after a small change:
    // compaction rewrites the tables and their indexes, and every reader would download the whole
    // index again (tokio, one file edited: 12.7 of 12.7 MB uploaded). The few rows of a small
    // change are searched outside the indexes until then.
    if summary.optimize_due {
        store.optimize().await?;
    } else {
        store.prune().await?;
    }
    let commit = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let stats = store.stats().await?;
    let mut snapshot = Snapshot::of_dir(&work, FastEmbedder::MODEL_ID, FastEmbedder::DIM, commit, store.versions().await?)?;
    snapshot.indexed_files = stats.files;
    let uploaded = remote.push(&work, &snapshot, previous.as_ref()).await?;
    // The copy now holds what is published.
    std::fs::write(work.join(shared::SNAPSHOT), serde_json::to_vec_pretty(&snapshot)?)?;
    if args.json {
        let json = serde_json::json!({
            "uri": uri, "commit": snapshot.commit, "published": snapshot.published_text(),
            "files": stats.files, "chunks": stats.chunks, "vectors": stats.vectors,
            "bytes": snapshot.bytes(), "uploaded": uploaded, "index": summary,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("published {} to {uri}", root.display());
    println!(
        "  files: {} changed, {} removed, {} unchanged since the last publication; vectors: {} embedded, {} reused",
        summary.files_changed, summary.files_removed, summary.files_unchanged, summary.vectors_computed, summary.vectors_reused
    );
    println!(
        "  index: {} files, {} chunks, {} vectors, {:.1} MB, {:.1} MB of it uploaded; commit {}",
        stats.files,
        stats.chunks,
        stats.vectors,
        snapshot.bytes() as f64 / 1e6,
        uploaded as f64 / 1e6,
        snapshot.commit.as_deref().unwrap_or("(not a git checkout)")
    );
    println!("  editors with `[index] shared = \"{uri}\"` pull it when they open the workspace");
    Ok(())
}

async fn search_cmd(paths: &Paths, args: SearchArgs) -> Result<()> {
    let root = workspace_root(&args.workspace)?;
    let dir = index_dir(paths, &args.target, &root);
    if !dir.exists() && args.target.shared(&root).is_none() {
        bail!("no index for {} at {}: run `kenning index {}` first", root.display(), dir.display(), root.display());
    }
    let language = match &args.lang {
        Some(l) => Some(Language::from_name(l).with_context(|| format!("unknown language `{l}` (--lang)"))?),
        None => None,
    };
    let path_glob = match &args.path {
        Some(g) => Some(globset::Glob::new(g).with_context(|| format!("invalid glob `{g}` (--path)"))?.compile_matcher()),
        None => None,
    };
    let store = open_store(paths, &args.target, &root, &dir).await?;
    let embedder = if args.no_embed {
        None
    } else {
        match load_embedder(paths, 0) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("warning: {e:#}; showing keyword results only");
                None
            }
        }
    };
    let request = SearchRequest {
        query: args.query.clone(),
        k: args.k,
        per_file: args.per_file.max(1),
        filter: Filter { language, path_glob },
    };
    let hits = retrieve::search(&store, embedder, &request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("no results for {:?}", args.query);
    }
    for (i, hit) in hits.iter().enumerate() {
        let found_by: Vec<String> = [("keyword", hit.text_rank), ("vector", hit.vector_rank)]
            .into_iter()
            .filter_map(|(name, rank)| rank.map(|r| format!("{name} #{r}")))
            .collect();
        println!("{}. {}  {}  [{}]", i + 1, hit.citation, hit.symbol, found_by.join(", "));
        for line in hit.text.lines().filter(|l| !l.trim().is_empty()).take(4) {
            println!("     {line}");
        }
    }
    Ok(())
}

/// What `kenning status` says of the shared index at `uri`: the copy in the cache, and whether the
/// store can be read and holds a newer publication (one small request; nothing is downloaded).
async fn shared_status(paths: &Paths, uri: &str) -> serde_json::Value {
    use crate::shared::{self, Remote};
    let copy = shared::local_snapshot(&shared::cache_dir(paths.cache(), uri));
    let remote = match Remote::open(uri) {
        Ok(remote) => remote.snapshot().await,
        Err(e) => Err(e),
    };
    let describe = |s: &shared::Snapshot| {
        format!("{} files indexed, {:.1} MB, published {}, commit {}", s.indexed_files, s.bytes() as f64 / 1e6, s.published_text(), s.commit.as_deref().map_or("unknown", |c| &c[..c.len().min(12)]))
    };
    let mut lines = Vec::new();
    match &copy {
        Some(c) => lines.push(format!("copy here: {}", describe(c))),
        None => lines.push("no copy here yet: the editor (or `kenning index`) pulls it".to_owned()),
    }
    let (reachable, error) = match &remote {
        Ok(Some(r)) if copy.as_ref() == Some(r) => (true, None),
        Ok(Some(r)) => {
            lines.push(format!("newer publication there: {} (pulled when the workspace is opened again)", describe(r)));
            (true, None)
        }
        Ok(None) => {
            lines.push(format!("nothing published there yet: `kenning index --publish {uri}`"));
            (true, None)
        }
        Err(e) => {
            lines.push(match &copy {
                Some(_) => format!("OFFLINE: the copy here serves ({e})"),
                None => format!("UNUSABLE: {e}"),
            });
            (false, Some(e.to_string()))
        }
    };
    serde_json::json!({
        "uri": uri,
        "copy": copy.as_ref().map(|c| serde_json::json!({"published": c.published_text(), "commit": c.commit, "files": c.indexed_files, "bytes": c.bytes()})),
        "reachable": reachable,
        "error": error,
        "lines": lines,
    })
}

async fn status_cmd(paths: &Paths, args: StatusArgs) -> Result<()> {
    let root = workspace_root(&args.workspace)?;
    let dir = index_dir(paths, &args.target, &root);
    let assets = Assets::new(paths.assets());
    let asset_state: Vec<(String, bool, String)> = assets
        .specs()
        .iter()
        .map(|s| match assets.path(&s.name) {
            Ok(p) => (s.name.clone(), true, p.display().to_string()),
            Err(e) => (s.name.clone(), false, e.to_string()),
        })
        .collect();
    let (stats, problems) = if dir.exists() {
        match crate::session::open_index(&dir).await {
            Ok(store) => {
                let problems = store.verify().await;
                (store.stats().await.ok(), problems)
            }
            Err(e) => (None, vec![e.to_string()]),
        }
    } else {
        (None, Vec::new())
    };
    let shared = match args.target.shared(&root) {
        Some(uri) => Some(shared_status(paths, &uri).await),
        None => None,
    };
    // The models the workspace's configuration names, and whether each is here.
    let config = crate::config::Layers::from_workspace(&root).and_then(|l| l.resolve());
    let models: Vec<(&str, String, bool, String)> = match &config {
        Ok(config) => {
            let mut models = vec![("generation", &config.generation)];
            if let Some(ask) = config.ask.generation.as_ref().filter(|g| **g != config.generation) {
                models.push(("ask.generation", ask));
            }
            models
                .into_iter()
                .filter_map(|(key, g)| {
                    let model = g.model()?.to_owned();
                    let (ok, state) = match g {
                        crate::config::Generation::Llama { .. } => match crate::models::locate(&model, paths) {
                            Ok(path) => (true, path.display().to_string()),
                            Err(why) => (false, why),
                        },
                        crate::config::Generation::Mlx { .. } => (true, "MLX model (checked when loaded)".to_owned()),
                        _ => (true, "served by the configured server".to_owned()),
                    };
                    Some((key, model, ok, state))
                })
                .collect()
        }
        Err(_) => Vec::new(),
    };
    if args.json {
        let json = serde_json::json!({
            "workspace": root, "index_dir": dir, "index": stats, "problems": problems,
            "assets": asset_state.iter().map(|(n, ok, s)| serde_json::json!({"name": n, "ok": ok, "state": s})).collect::<Vec<_>>(),
            "models": models.iter().map(|(k, m, ok, s)| serde_json::json!({"key": k, "model": m, "ok": ok, "state": s})).collect::<Vec<_>>(),
            "config_error": config.as_ref().err().map(|e| e.to_string()),
            "shared": shared,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("workspace: {}", root.display());
    println!("index:     {}", dir.display());
    match stats {
        Some(s) => println!(
            "           {} files, {} chunks, {} vectors ({}), {:.1} MB; keyword index: {}, vector index: {}",
            s.files,
            s.chunks,
            s.vectors,
            FastEmbedder::MODEL_ID,
            s.bytes_on_disk as f64 / 1e6,
            if s.has_text_index { "yes" } else { "no" },
            if s.has_vector_index { "yes" } else { "no (flat scan)" }
        ),
        None if problems.is_empty() => println!("           not indexed yet: run `kenning index {}`", root.display()),
        None => {}
    }
    if !problems.is_empty() {
        println!("           DAMAGED: {}", problems.join("; "));
        println!("           `kenning index {}` rebuilds it", root.display());
    }
    if let Some(shared) = &shared {
        println!("shared:    {}", shared["uri"].as_str().unwrap_or_default());
        for line in shared["lines"].as_array().into_iter().flatten() {
            println!("           {}", line.as_str().unwrap_or_default());
        }
    }
    println!("assets:    {}", assets.root().display());
    for (name, _, state) in asset_state {
        println!("  {name:<24} {state}");
    }
    match &config {
        Ok(_) => {
            println!("models:    as configured");
            for (key, model, _, state) in &models {
                println!("  [{key}] {model}: {state}");
            }
        }
        Err(e) => println!("config:    {e}"),
    }
    match crate::generate::llama::devices() {
        Ok((devices, gpu)) => {
            let offload = if gpu { "all layers offloaded to the GPU" } else { "CPU only (a GPU build: --features cuda or vulkan; Metal on Apple Silicon)" };
            println!("llama.cpp: {offload}");
            for device in devices {
                println!("  {device}");
            }
        }
        Err(e) => println!("llama.cpp: {e}"),
    }
    use crate::models::catalogue::{self, Role};
    let machine = catalogue::Machine::here();
    println!("suggested: for this machine ({:.0} GB, {} cores{}), from `kenning models list`:", machine.ram_gb, machine.cores, if machine.gpu { ", GPU" } else { "" });
    for (role, key) in [(Role::Completion, "[generation] model"), (Role::Ask, "[ask.generation] model")] {
        match catalogue::recommend(role, machine) {
            Some(e) => println!("  {key:<24} {} ({:.1} GB; {})", e.name, e.size_gb, e.suits),
            None => println!("  {key:<24} none fits; the bundled qwen2.5-coder-0.5b is the smallest"),
        }
    }
    Ok(())
}

fn generate_cmd(paths: &Paths, args: GenerateArgs) -> Result<()> {
    use std::io::{Read, Write};

    use crate::generate::llama::{LlamaEngine, LlamaOptions};
    use crate::generate::{Event, Generator, GenerationRequest, Sampling};

    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the prompt from stdin")?;
        text
    } else {
        args.prompt
    };
    let loading = std::time::Instant::now();
    let engine: Box<dyn Generator> = match args.engine {
        Engine::Llama => {
            let model = crate::models::resolve(&args.model, paths)?;
            let lora = args.adapter_path.as_deref().map(crate::formats::lora_gguf::for_llama).transpose()?;
            let mut options = LlamaOptions { context: args.context, lora, ..LlamaOptions::default() };
            if let Some(threads) = args.threads {
                options.threads = threads;
            }
            if let Some(threads) = args.prefill_threads {
                options.prefill_threads = threads;
            }
            Box::new(LlamaEngine::load(&model, options)?)
        }
        #[cfg(feature = "mlx")]
        Engine::Mlx => {
            let model = if args.model == "qwen2.5-coder-0.5b" { "smollm2-135m".to_owned() } else { args.model.clone() };
            let dir = crate::generate::mlx::resolve(&model, paths)?;
            Box::new(crate::generate::mlx::MlxEngine::load(&dir, args.adapter_path.as_deref())?)
        }
        #[cfg(not(feature = "mlx"))]
        Engine::Mlx => bail!("this build has no MLX engine: build kenning with `--features mlx` (see training/README.md)"),
    };
    let load_time = loading.elapsed();
    let request = GenerationRequest {
        prompt,
        max_tokens: args.max_tokens,
        sampling: Sampling { temperature: args.temp, top_p: args.top_p, seed: args.seed },
        stop: args.stop,
        heal: args.heal,
        avoid: String::new(),
        logprobs: false,
    };
    if !request.heal.is_empty() && !engine.heals() {
        bail!("--heal needs the llama.cpp engine");
    }
    let mut generation = engine.generate(request)?;
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = generation.next_blocking() {
        match event {
            Event::Text(text) => {
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
            }
            Event::Done(finish) => {
                writeln!(stdout)?;
                if args.verbose {
                    eprintln!(
                        "{}: load {:.2}s, prompt {} tokens, first token {:.3}s, {} tokens at {:.1} tok/s, stop: {:?}",
                        engine.model_name(),
                        load_time.as_secs_f64(),
                        finish.prompt_tokens,
                        finish.time_to_first_token.as_secs_f64(),
                        finish.generated_tokens,
                        finish.decode_tokens_per_second(),
                        finish.reason
                    );
                }
                return Ok(());
            }
            Event::Error(e) => bail!("generation failed: {e}"),
        }
    }
    bail!("the generation engine stopped unexpectedly")
}

/// Progress bars on stderr for `kenning index`.
struct Bars {
    multi: MultiProgress,
    files: ProgressBar,
    chunks: ProgressBar,
    embed: ProgressBar,
}

impl Bars {
    fn new(visible: bool) -> Self {
        let multi = MultiProgress::new();
        if !visible {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let spinner = |prefix: &str| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(ProgressStyle::with_template("{prefix:>10} {spinner} {pos} {msg}").expect("valid template"));
            bar.set_prefix(prefix.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        };
        let files = spinner("files");
        let chunks = spinner("chunks");
        let embed = multi.add(ProgressBar::new(0));
        embed.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        embed.set_prefix("embeddings");
        Self { multi, files, chunks, embed }
    }

    fn finish(&self) {
        for bar in [&self.files, &self.chunks, &self.embed] {
            bar.finish();
        }
        let _ = self.multi.clear();
    }
}

impl Progress for Bars {
    fn file_done(&self) {
        self.files.inc(1);
    }
    fn chunks_stored(&self, n: usize) {
        self.chunks.inc(n as u64);
    }
    fn text_searchable(&self) {
        self.files.set_message("done");
        self.chunks.set_message("stored, keyword search ready");
    }
    fn embedding_started(&self, total: usize) {
        self.embed.set_length(total as u64);
    }
    fn embedded(&self, n: usize) {
        self.embed.inc(n as u64);
    }
    fn optimizing(&self) {
        self.embed.set_message("optimizing the index");
    }
    fn waiting_for_lock(&self, holder: &str) {
        let _ = self.multi.println(format!("{holder} is writing this index: waiting for it to finish"));
    }
}
