//! `kenning models`: the models this machine can run by name, and pulling one from the hub.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::assets::Assets;
use crate::generate::BundledModel;
use crate::models::catalogue::{self, Role};
use crate::models::{ModelRef, hub, ollama};
use crate::paths::Paths;
use super::train::out;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// The models usable by name here (bundled, in the Hugging Face cache, pulled into Ollama), and
    /// the recommended ones, marked where they suit this machine.
    List,
    /// Download a recommended model or hf:OWNER/REPO/FILE.gguf[@REVISION] into the Hugging Face
    /// cache (resumes a cut download; checks sha256). Bundled and Ollama models are checked, not
    /// downloaded.
    Pull(PullArgs),
}

#[derive(Debug, Args)]
struct PullArgs {
    /// The model, as `generation.model` takes it.
    model: String,
    /// The sha256 the file must have (default: a recommended model's pinned hash, else the hub's LFS hash).
    #[arg(long)]
    sha256: Option<String>,
}

pub fn models_cmd(paths: &Paths, args: ModelsArgs) -> Result<()> {
    match args.command {
        ModelsCommand::List => list(paths),
        ModelsCommand::Pull(args) => pull(paths, args),
    }
}

fn pull(paths: &Paths, args: PullArgs) -> Result<()> {
    if let Some(sha) = &args.sha256
        && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("--sha256 {sha}: expected 64 hexadecimal digits");
    }
    let path = match ModelRef::parse(&args.model)? {
        ModelRef::Hub(file, pinned) => {
            let sha256 = args.sha256.clone().or(pinned);
            let hub = hub::Hub::from_env();
            let before = hub.cached_pinned(&file, sha256.as_deref());
            let bar = ProgressBar::new(0);
            bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template").progress_chars("=> "));
            // Nothing is drawn before the hub has said how large the file is.
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            bar.set_message(file.file.clone());
            let terminal = std::io::stderr().is_terminal();
            let path = hub.pull(&file, sha256.as_deref(), &mut |have, total| {
                if let Some(total) = total
                    && bar.length() != Some(total)
                {
                    bar.set_length(total);
                    if terminal {
                        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    }
                }
                bar.set_position(have);
                true
            });
            bar.finish_and_clear();
            let path = path?;
            if before.as_ref() == Some(&path) {
                eprintln!("{}: already in the cache, as the hub has it now", args.model);
            }
            path
        }
        ModelRef::Bundled(bundled) => Assets::new(paths.assets()).path(bundled.asset())?,
        ModelRef::Ollama(name) => ollama::model_file(&ollama::store_from_env(), &name)?,
        ModelRef::Path(path) => path,
    };
    out(&format!("{} {}", args.model, path.display()));
    Ok(())
}

fn list(paths: &Paths) -> Result<()> {
    out("models that load by name here (bundled, in the Hugging Face cache, pulled into Ollama):");
    let assets = Assets::new(paths.assets());
    for bundled in BundledModel::ALL {
        let state = match assets.path(bundled.asset()) {
            Ok(path) => path.display().to_string(),
            Err(_) => "not installed (scripts/setup)".to_owned(),
        };
        out(&format!("{:<60} {state}", bundled.name()));
    }
    let hub = hub::Hub::from_env();
    for (name, path) in hub_files(&hub.cache)? {
        out(&format!("{name:<60} {}", path.display()));
    }
    let store = ollama::store_from_env();
    for (name, path) in ollama_models(&store) {
        out(&format!("{name:<60} {}", path.display()));
    }
    let machine = catalogue::Machine::here();
    let recommended: Vec<String> = [Role::Completion, Role::Ask].into_iter().filter_map(|r| catalogue::recommend(r, machine)).map(|e| e.name).collect();
    out("");
    out(&format!("recommended models (`kenning models pull NAME`, or name one in kenning.toml; * suits this machine: {:.0} GB, {} cores{}):", machine.ram_gb, machine.cores, if machine.gpu { ", GPU" } else { "" }));
    for entry in catalogue::entries() {
        let role = match entry.role {
            Role::Completion => "completion",
            Role::Ask => "ask",
        };
        let pulled = if hub.cached_pinned(&entry.hub_file(), Some(&entry.sha256)).is_some() { ", pulled" } else { "" };
        let star = if recommended.contains(&entry.name) { "*" } else { " " };
        out(&format!("{star} {:<32} {role:<10} {:>4.1} GB, {} GB RAM{pulled}: {}", entry.name, entry.size_gb, entry.min_ram_gb, entry.suits));
    }
    Ok(())
}

/// Every GGUF file in the hub's cache, by the name that loads it (`@COMMIT` unless a ref names it).
fn hub_files(cache: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let Ok(repos) = std::fs::read_dir(cache) else { return Ok(found) };
    for repo in repos.flatten() {
        let dir_name = repo.file_name().to_string_lossy().into_owned();
        let Some(repo_id) = dir_name.strip_prefix("models--").map(|r| r.replacen("--", "/", 1)) else { continue };
        let refs: Vec<(String, String)> = walk(&repo.path().join("refs"))
            .into_iter()
            .filter_map(|p| {
                let name = p.strip_prefix(repo.path().join("refs")).ok()?.to_string_lossy().into_owned();
                Some((std::fs::read_to_string(&p).ok()?.trim().to_owned(), name))
            })
            .collect();
        let snapshots = repo.path().join("snapshots");
        for path in walk(&snapshots) {
            let Ok(relative) = path.strip_prefix(&snapshots) else { continue };
            let mut parts = relative.iter();
            let Some(commit) = parts.next().map(|c| c.to_string_lossy().into_owned()) else { continue };
            let file: PathBuf = parts.collect();
            if !file.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) || !path.is_file() {
                continue;
            }
            let revision = refs.iter().find(|(c, _)| *c == commit).map_or(commit.clone(), |(_, name)| name.clone());
            let revision = if revision == "main" { String::new() } else { format!("@{revision}") };
            found.push((format!("hf:{repo_id}/{}{revision}", file.to_string_lossy()), path));
        }
    }
    found.sort();
    Ok(found)
}

/// Every model pulled into Ollama whose manifest has a GGUF layer that is in place.
fn ollama_models(store: &Path) -> Vec<(String, PathBuf)> {
    let manifests = store.join("manifests");
    let mut found: Vec<(String, PathBuf)> = walk(&manifests)
        .into_iter()
        .filter_map(|p| {
            let relative = p.strip_prefix(&manifests).ok()?;
            let parts: Vec<String> = relative.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let [host, namespace, model, tag] = parts.as_slice() else { return None };
            let name = ollama::OllamaName { host: host.clone(), namespace: namespace.clone(), model: model.clone(), tag: tag.clone() };
            let file = ollama::model_file(store, &name).ok()?;
            Some((format!("ollama:{name}"), file))
        })
        .collect();
    found.sort();
    found
}

/// The files under `dir` (links followed), depth-first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
