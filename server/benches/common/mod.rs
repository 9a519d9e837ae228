//! Helpers shared by the benchmarks.

/// Peak resident memory of this process since start (or the last [`reset_peak_rss`]), in MB.
/// Linux only; 0 elsewhere.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1e3)
}

/// Starts a new peak for [`peak_rss_mb`] (Linux; ignored elsewhere).
#[allow(dead_code)]
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
