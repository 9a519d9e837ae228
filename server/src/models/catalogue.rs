//! The models kenning recommends (`catalogue.toml`): hub files pinned by sha256, with their size,
//! the memory they need and the machines they suit; and which of them suit this machine.

use serde::Deserialize;

use super::hub::HubFile;

const CATALOGUE: &str = include_str!("catalogue.toml");

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Fill in the middle: ghost text (a base model).
    Completion,
    /// Answers with citations (an instruct model).
    Ask,
}

/// One recommended model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub role: Role,
    /// `hf:OWNER/REPO/FILE.gguf@REVISION`.
    pub file: String,
    pub sha256: String,
    pub size_gb: f64,
    pub min_ram_gb: u32,
    /// Too slow for ghost text on a laptop CPU: wants Apple Silicon or a GPU build.
    pub gpu: bool,
    pub suits: String,
}

impl Entry {
    pub fn hub_file(&self) -> HubFile {
        HubFile::parse(self.file.strip_prefix("hf:").unwrap_or(&self.file)).expect("catalogue files are checked by a test")
    }
}

#[derive(Debug, Deserialize)]
struct Catalogue {
    model: Vec<Entry>,
}

/// Every entry, in the file's order.
pub fn entries() -> Vec<Entry> {
    toml::from_str::<Catalogue>(CATALOGUE).expect("catalogue.toml is embedded and parsed in tests").model
}

pub fn find(name: &str) -> Option<Entry> {
    entries().into_iter().find(|e| e.name == name)
}

/// What the machine offers a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub ram_gb: f64,
    pub cores: usize,
    /// Apple Silicon (Metal), or a CUDA / Vulkan build of llama.cpp.
    pub gpu: bool,
}

impl Machine {
    /// This machine: its memory, its cores, and whether llama.cpp runs on a GPU here.
    pub fn here() -> Self {
        Self {
            ram_gb: total_ram_bytes().map_or(0.0, |b| b as f64 / f64::from(1u32 << 30)),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            gpu: cfg!(any(all(target_os = "macos", target_arch = "aarch64"), feature = "cuda", feature = "vulkan")),
        }
    }
}

/// The largest model of `role` this machine can afford, by the catalogue's figures: its memory at
/// least `min_ram_gb`, a GPU for the models that want one, and for completion on a CPU, eight
/// cores for anything above the smallest (ghost text must keep up with typing).
pub fn recommend(role: Role, machine: Machine) -> Option<Entry> {
    entries()
        .into_iter()
        .filter(|e| e.role == role && f64::from(e.min_ram_gb) <= machine.ram_gb + 0.5)
        .filter(|e| machine.gpu || !e.gpu)
        .filter(|e| machine.gpu || role != Role::Completion || e.size_gb < 1.0 || machine.cores >= 8)
        .max_by(|a, b| a.size_gb.total_cmp(&b.size_gb))
}

/// Total memory in bytes (Linux: /proc/meminfo; macOS: sysctl hw.memsize).
fn total_ram_bytes() -> Option<u64> {
    if cfg!(target_os = "macos") {
        let out = std::process::Command::new("sysctl").args(["-n", "hw.memsize"]).output().ok()?;
        return String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_names_a_gguf_hub_file_at_a_revision_with_its_hash() {
        let entries = entries();
        assert!(entries.iter().any(|e| e.role == Role::Completion) && entries.iter().any(|e| e.role == Role::Ask));
        let mut names = std::collections::HashSet::new();
        for e in &entries {
            assert!(names.insert(e.name.clone()), "{} twice", e.name);
            let model = super::super::ModelRef::parse(&e.file).unwrap_or_else(|err| panic!("{}: {err}", e.name));
            // Its hub name keeps the pin.
            assert!(matches!(&model, super::super::ModelRef::Hub(_, Some(pin)) if *pin == e.sha256), "{}", e.name);
            assert!(e.hub_file().revision.is_some(), "{}: no revision", e.name);
            assert!(e.sha256.len() == 64 && e.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{}: {}", e.name, e.sha256);
            assert!(e.size_gb > 0.0 && e.min_ram_gb as f64 > e.size_gb && !e.suits.is_empty(), "{}", e.name);
            // A catalogue name is not also a bundled one (the bundled name would win).
            assert!(!crate::generate::BundledModel::is_bundled(&e.name), "{}", e.name);
        }
    }

    #[test]
    fn recommendations_follow_memory_cores_and_gpu() {
        let name = |role, ram_gb, cores, gpu| recommend(role, Machine { ram_gb, cores, gpu }).map(|e| e.name);
        // A 2-core laptop: the smallest completion model, whatever its memory.
        assert_eq!(name(Role::Completion, 16.0, 2, false).as_deref(), Some("qwen2.5-coder-0.5b-base"));
        assert_eq!(name(Role::Completion, 64.0, 16, false).as_deref(), Some("qwen2.5-coder-1.5b-base"));
        assert_eq!(name(Role::Completion, 16.0, 8, true).as_deref(), Some("qwen2.5-coder-3b-base"));
        assert_eq!(name(Role::Completion, 64.0, 8, true).as_deref(), Some("qwen2.5-coder-7b-base"));
        assert_eq!(name(Role::Ask, 8.0, 2, false).as_deref(), Some("qwen2.5-coder-1.5b-instruct"));
        assert_eq!(name(Role::Ask, 4.0, 2, false).as_deref(), Some("qwen2.5-coder-0.5b-instruct-q8"));
        assert_eq!(name(Role::Completion, 2.0, 2, false), None);
    }
}
