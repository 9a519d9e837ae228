//! What kenning's two crates both read and write, defined once and with no engine in it: the
//! server converts and loads adapters the trainer writes, and hands the trainer's MLX engine the
//! same sampling options it hands llama.cpp.
//!
//! - [`adapter`]: mlx_lm's LoRA adapter directory (`adapter_config.json`, the tensor names of
//!   `adapters.safetensors`), so adapters of `kenning train` and of `mlx_lm.lora` are one format.
//! - [`Sampling`]: how a generation picks each next token.
//! - [`clock`]: how both print a duration (the trainer's time left, `kenning train`'s phases,
//!   `kenning eval --progress`).
//! - [`try_lock`]: the advisory locks by which their processes keep to one writer (a trainer's
//!   adapter directory, a workspace's training, an evaluation run).

pub mod adapter;

/// `seconds` as `m:ss`, or `h:mm:ss` from an hour, rounded to whole seconds (a negative or NaN
/// estimate shows as `0:00`).
pub fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 { format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) } else { format!("{}:{:02}", s / 60, s % 60) }
}

/// Takes an exclusive advisory lock on the lock file `path` (made if missing, left in place)
/// without waiting: `Ok(None)` while another process (or another handle) holds it. The lock goes
/// with the returned handle, and with the process however it ends: a killed holder never leaves
/// it taken.
pub fn try_lock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    held(std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?)
}

/// [`try_lock`] on the directory `dir` itself, which must exist: no lock file is left in or
/// beside it (a trainer holds its adapter directory so while it writes there).
pub fn try_lock_dir(dir: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    held(std::fs::File::open(dir)?)
}

fn held(handle: std::fs::File) -> std::io::Result<Option<std::fs::File>> {
    match handle.try_lock() {
        Ok(()) => Ok(Some(handle)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
}

impl Default for Sampling {
    /// Greedy: what completions use, so that a prompt always gives the same answer.
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::{clock, try_lock, try_lock_dir};

    #[test]
    fn a_lock_is_held_until_its_handle_goes_on_a_file_and_on_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lock");
        let lock: [(&std::path::Path, fn(&std::path::Path) -> std::io::Result<Option<std::fs::File>>); 2] =
            [(&file, try_lock), (dir.path(), try_lock_dir)];
        for (path, lock) in lock {
            let held = lock(path).unwrap().expect("free at first");
            assert!(lock(path).unwrap().is_none(), "{}: held", path.display());
            drop(held);
            assert!(lock(path).unwrap().is_some(), "{}: free again", path.display());
        }
        assert!(file.is_file(), "the lock file stays");
        assert!(try_lock(&dir.path().join("missing").join("lock")).is_err(), "no directory to make it in");
        // A directory that is not there is not made, nor a file in its place.
        let gone = dir.path().join("gone");
        assert!(try_lock_dir(&gone).is_err() && !gone.exists());
    }

    #[test]
    fn clock_shows_minutes_then_hours() {
        assert_eq!(clock(0.4), "0:00");
        assert_eq!(clock(59.6), "1:00");
        assert_eq!(clock(75.0), "1:15");
        assert_eq!(clock(754.0), "12:34");
        assert_eq!(clock(3599.0), "59:59");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(4559.0), "1:15:59");
        assert_eq!(clock(-3.0), "0:00");
        assert_eq!(clock(f64::NAN), "0:00");
    }
}
